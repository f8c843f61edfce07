//! What the outbox stores and sends: receivers, deliveries, topics, the
//! body and its signature. Pure: no I/O, no clock.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::ToSchema;

use crate::core::events::{DomainEvent, LogRecord};

/// Every topic a receiver may subscribe to, plus `*` for all of them.
/// Commerce adds `inventory_changed`, `order_accepted`, `order_shipped`
/// and `order_cancelled` here and in [`topic_of`].
pub const TOPICS: &[&str] = &["unit_made", "unit_inspected", "job_ended", "machine_state"];

/// Subscribes to every topic, including those added later.
pub const ALL_TOPICS: &str = "*";

/// The topic a log record is published under, if any. One arm per topic,
/// so adding a topic is one line here and one in [`TOPICS`].
pub fn topic_of(event: &DomainEvent) -> Option<&'static str> {
    match event {
        DomainEvent::UnitMade { .. } => Some("unit_made"),
        DomainEvent::UnitInspected { .. } => Some("unit_inspected"),
        DomainEvent::AttemptEnded { .. } => Some("job_ended"),
        DomainEvent::MachineState { .. } => Some("machine_state"),
        _ => None,
    }
}

/// Where a receiver was configured: the configuration file's receivers
/// follow the file at every start and cannot be deleted through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `[[webhooks]]` in the configuration file.
    Config,
    /// `POST /api/v1/webhooks`.
    Api,
}

/// Whether deliveries are being attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReceiverState {
    /// Deliveries are attempted as they fall due.
    Active,
    /// Too many consecutive failures: deliveries queue up until an
    /// operator enables the receiver again (nothing is dropped).
    Disabled,
}

/// A receiver of webhooks as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receiver {
    /// `[a-z0-9_-]`, 1 to 32 characters; part of every delivery id.
    pub id: String,
    /// `http://` URL the deliveries are POSTed to; nothing else ever is.
    pub url: String,
    /// HMAC key; never shown by the API.
    pub secret: String,
    /// Subscribed topics (or `*`).
    pub topics: Vec<String>,
    /// Config file or API.
    pub source: Source,
    /// When it was first stored, ms since the Unix epoch.
    pub created_ms: u64,
    /// Delivery health.
    pub state: ReceiverState,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// When it was disabled.
    pub disabled_ms: Option<u64>,
    /// The last failure, in words.
    pub last_error: Option<String>,
    /// The last successful delivery.
    pub last_success_ms: Option<u64>,
}

impl Receiver {
    /// Whether this receiver wants events of `topic`.
    pub fn wants(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| t == topic || t == ALL_TOPICS)
    }
}

/// A receiver as the API shows it: everything but the secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReceiverView {
    /// Id.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// Config file or API.
    pub source: Source,
    /// `active`, or `disabled` after repeated failures.
    pub state: ReceiverState,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// When it was disabled, ms since the Unix epoch.
    pub disabled_ms: Option<u64>,
    /// The last failure, in words.
    pub last_error: Option<String>,
    /// The last successful delivery, ms since the Unix epoch.
    pub last_success_ms: Option<u64>,
    /// Deliveries waiting (the oldest is the one being retried).
    pub pending: u64,
    /// When the next attempt is due, if one is waiting and the receiver
    /// is active.
    pub next_attempt_ms: Option<u64>,
}

/// How a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not yet acknowledged by the receiver with a 2xx.
    Pending,
    /// Acknowledged.
    Delivered,
    /// Its receiver was removed before it was acknowledged.
    Dropped,
}

/// One attempt to deliver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AttemptRecord {
    /// When it was sent, ms since the Unix epoch.
    pub at_ms: u64,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<u16>,
    /// What went wrong, when it did.
    pub error: Option<String>,
}

/// Attempts kept per delivery (the count goes on).
pub const KEPT_ATTEMPTS: usize = 32;

/// One event for one receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    /// `<receiver>:<log seq>`: the same on every attempt, so a receiver
    /// can drop duplicates.
    pub id: String,
    /// Receiver id.
    pub receiver: String,
    /// The log record's sequence number.
    pub seq: u64,
    /// Topic.
    pub topic: String,
    /// The exact body sent (and signed) on every attempt.
    pub body: String,
    /// When the outbox made it, ms since the Unix epoch.
    pub created_ms: u64,
    /// Pending, delivered or dropped.
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempt_count: u32,
    /// The latest attempts, oldest first (at most [`KEPT_ATTEMPTS`]).
    pub attempts: Vec<AttemptRecord>,
    /// When the next attempt is due (pending only), ms since the Unix
    /// epoch; stored so the schedule survives a restart.
    pub next_attempt_ms: u64,
}

impl Delivery {
    /// Records an attempt, keeping the latest [`KEPT_ATTEMPTS`].
    pub fn record(&mut self, attempt: AttemptRecord) {
        self.attempt_count = self.attempt_count.saturating_add(1);
        self.attempts.push(attempt);
        if self.attempts.len() > KEPT_ATTEMPTS {
            let extra = self.attempts.len() - KEPT_ATTEMPTS;
            self.attempts.drain(..extra);
        }
    }
}

/// The id of the delivery of log record `seq` to `receiver`.
pub fn delivery_id(receiver: &str, seq: u64) -> String {
    format!("{receiver}:{seq}")
}

/// The body of a delivery: `{"id", "topic", "seq", "at", "event"}`, with
/// `at` the commit time of the event in ms since the Unix epoch.
pub fn body(id: &str, topic: &str, record: &LogRecord) -> String {
    serde_json::json!({
        "id": id,
        "topic": topic,
        "seq": record.seq,
        "at": record.at_ms,
        "event": record.event,
    })
    .to_string()
}

/// The delivery of `record` to `receiver`, due at once; `None` when the
/// receiver does not subscribe to its topic (or it has none).
pub fn delivery_for(receiver: &Receiver, record: &LogRecord, now_ms: u64) -> Option<Delivery> {
    let topic = topic_of(&record.event)?;
    if !receiver.wants(topic) {
        return None;
    }
    let id = delivery_id(&receiver.id, record.seq);
    Some(Delivery {
        body: body(&id, topic, record),
        id,
        receiver: receiver.id.clone(),
        seq: record.seq,
        topic: topic.to_string(),
        created_ms: now_ms,
        state: DeliveryState::Pending,
        attempt_count: 0,
        attempts: Vec::new(),
        next_attempt_ms: now_ms,
    })
}

type HmacSha256 = Hmac<Sha256>;

/// base64(HMAC-SHA256(secret, body)): the `X-Microfactory-Signature` we
/// send and the form of Shopify's `X-Shopify-Hmac-Sha256`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    use base64::Engine;
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `signature` (base64) is HMAC-SHA256(secret, body), compared in
/// constant time (`verify_slice`), so a forger learns nothing from timing.
pub fn verify(secret: &[u8], body: &[u8], signature: &str) -> bool {
    use base64::Engine;
    let Ok(sent) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sent).is_ok()
}

/// Shortest secret accepted: 16 characters is 96+ bits from a password
/// generator; shorter keys are guessable offline from one signed body.
pub const MIN_SECRET: usize = 16;

/// A receiver's problems, each a sentence naming the field: the same
/// checks for `[[webhooks]]` (check-config) and `POST /api/v1/webhooks`.
pub fn check_receiver(id: &str, url: &str, secret: &str, topics: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    if !crate::config::valid_id(id) {
        problems.push(format!(
            "id '{id}' must be 1 to 32 characters of a-z, 0-9, '-' or '_'"
        ));
    }
    if let Err(e) = check_url(url) {
        problems.push(e);
    }
    if secret.chars().count() < MIN_SECRET {
        problems.push(format!(
            "secret must be at least {MIN_SECRET} characters (a random string from a password generator)"
        ));
    }
    if topics.is_empty() {
        problems.push(format!(
            "topics is empty: name one or more of {}, or \"*\" for all",
            TOPICS.join(", ")
        ));
    }
    for t in topics {
        if t != ALL_TOPICS && !TOPICS.contains(&t.as_str()) {
            problems.push(format!(
                "topic '{t}' is unknown (known: {}, or \"*\" for all)",
                TOPICS.join(", ")
            ));
        }
    }
    problems
}

/// Only plain `http://` URLs with a host: this build has no TLS client
/// (docs/webhooks.md says why and what to do instead).
pub fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("url '{url}' is not a URL: {e}"))?;
    match parsed.scheme() {
        "http" => {}
        "https" => {
            return Err(format!(
                "url '{url}' uses https, but this build sends webhooks over plain http only \
                 (no TLS client is built in); point it at a local TLS proxy such as \
                 stunnel or nginx, or at an http receiver on your network"
            ));
        }
        s => return Err(format!("url '{url}' must start with http:// (not {s}://)")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("url '{url}' has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "url '{url}' carries credentials; receivers authenticate us by the signature"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::machine::{MachineState, StateReason};

    fn record(seq: u64, event: DomainEvent) -> LogRecord {
        LogRecord {
            seq,
            at_ms: 1_700_000_000_000,
            event,
        }
    }

    fn receiver(topics: &[&str]) -> Receiver {
        Receiver {
            id: "erp".into(),
            url: "http://127.0.0.1:9/hook".into(),
            secret: "0123456789abcdef".into(),
            topics: topics.iter().map(|t| (*t).to_string()).collect(),
            source: Source::Api,
            created_ms: 0,
            state: ReceiverState::Active,
            consecutive_failures: 0,
            disabled_ms: None,
            last_error: None,
            last_success_ms: None,
        }
    }

    fn machine_state() -> DomainEvent {
        DomainEvent::MachineState {
            machine_id: "p1".into(),
            state: MachineState::Idle,
            reason: StateReason::None,
            job_id: None,
        }
    }

    #[test]
    fn every_topic_that_an_event_maps_to_is_a_known_topic() {
        let events = [
            machine_state(),
            DomainEvent::FileDeleted {
                file_id: "f".into(),
            },
        ];
        for e in &events {
            if let Some(t) = topic_of(e) {
                assert!(TOPICS.contains(&t), "{t}");
            }
        }
        assert_eq!(topic_of(&events[1]), None);
    }

    #[test]
    fn a_delivery_goes_only_to_receivers_of_its_topic_with_an_id_of_receiver_and_seq() {
        let rec = record(42, machine_state());
        assert!(delivery_for(&receiver(&["unit_made"]), &rec, 5).is_none());
        let d = delivery_for(&receiver(&["machine_state"]), &rec, 5).expect("wanted");
        assert_eq!(d.id, "erp:42");
        assert_eq!(d.next_attempt_ms, 5);
        let body: serde_json::Value = serde_json::from_str(&d.body).expect("json");
        assert_eq!(body["topic"], "machine_state");
        assert_eq!(body["seq"], 42);
        assert_eq!(body["at"], 1_700_000_000_000u64);
        assert_eq!(body["id"], "erp:42");
        assert_eq!(body["event"]["machine_id"], "p1");
        let all = delivery_for(&receiver(&["*"]), &rec, 5).expect("all topics");
        assert_eq!(
            all.body, d.body,
            "the body does not depend on the subscription"
        );
    }

    #[test]
    fn a_signature_verifies_only_with_the_same_secret_and_body() {
        // RFC 4231 test case 2.
        let sig = sign(b"Jefe", b"what do ya want for nothing?");
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&sig)
            .expect("base64");
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify(b"Jefe", b"what do ya want for nothing?", &sig));
        assert!(!verify(b"Jefx", b"what do ya want for nothing?", &sig));
        assert!(!verify(b"Jefe", b"what do ya want for nothing!", &sig));
        assert!(!verify(
            b"Jefe",
            b"what do ya want for nothing?",
            "not base64"
        ));
        assert!(!verify(b"Jefe", b"what do ya want for nothing?", ""));
    }

    #[test]
    fn a_receiver_is_refused_with_every_problem_named() {
        let p = check_receiver("Bad Id", "https://example.com/x", "short", &["nope".into()]);
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p[0].contains("id 'Bad Id'"));
        assert!(p[1].contains("https") && p[1].contains("TLS"));
        assert!(p[2].contains("secret"));
        assert!(p[3].contains("topic 'nope'"));
        assert!(
            check_receiver(
                "erp",
                "http://10.0.0.2:8080/h",
                "0123456789abcdef",
                &["*".into()]
            )
            .is_empty()
        );
        assert!(
            !check_receiver("erp", "http://u:p@h/", "0123456789abcdef", &["*".into()]).is_empty()
        );
        assert!(!check_receiver("erp", "ftp://h/", "0123456789abcdef", &["*".into()]).is_empty());
        assert!(!check_receiver("erp", "http://h/", "0123456789abcdef", &[]).is_empty());
    }

    #[test]
    fn a_delivery_keeps_its_latest_attempts_and_counts_them_all() {
        let mut d = delivery_for(&receiver(&["*"]), &record(1, machine_state()), 0).expect("d");
        for i in 0..(KEPT_ATTEMPTS as u64 + 5) {
            d.record(AttemptRecord {
                at_ms: i,
                status: Some(500),
                error: None,
            });
        }
        assert_eq!(d.attempt_count as usize, KEPT_ATTEMPTS + 5);
        assert_eq!(d.attempts.len(), KEPT_ATTEMPTS);
        assert_eq!(d.attempts[0].at_ms, 5);
    }
}
