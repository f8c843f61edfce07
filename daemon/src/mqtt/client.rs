//! The MQTT client task: one connection to the broker (rumqttc, plain
//! TCP or TLS through [`super::tls`]), kept up with our own backoff; a
//! publisher that follows the domain log by cursor; and the ingest of
//! machine reports into [`MqttLink`]s.
//!
//! Delivery is at least once. The publisher sends a chunk of log records
//! with QoS 1 and moves its cursor only when the broker has acknowledged
//! every message of the chunk in the same connection; a connection lost
//! on the way (or a restart) sends the chunk again from the cursor. Each
//! connection attempt has a client of its own (a fresh rumqttc request
//! channel), so nothing queued for a lost connection is sent on the next
//! one, where its acknowledgements would be counted for messages they do
//! not acknowledge.
//! Every connection starts with the retained site status and every
//! machine's last state, since a broker restarted without persistence has
//! forgotten them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration,
    Transport,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use utoipa::ToSchema;

use super::adapters::{self, IngestError};
use super::backoff::{Backoff, jitter};
use super::link::MqttLink;
use super::schema::{
    self, InventoryPayload, MachineStatePayload, Message, SiteStatus, Throttle, Topics,
};
use crate::clock::now_ms;
use crate::commerce::service::Commerce;
use crate::config::{Adapter, MqttConfig, parse_broker};
use crate::core::events::{DomainEvent, LogRecord};
use crate::core::machine::{MachineState, StateReason};
use crate::factory::Factory;
use crate::metering::Metering;
use crate::metering::apc::Evaluation;
use crate::metering::oee::Window;
use crate::store::{Store, StoreError};

/// The publisher's cursor name.
pub const CURSOR: &str = "mqtt";

/// Most log records in one acknowledged chunk.
const CHUNK: usize = 256;

/// Requests rumqttc buffers between us and the socket: a chunk's messages
/// plus the connection's own, so publishing a chunk never waits on it.
const REQUEST_CAPACITY: usize = 2 * CHUNK + 64;

/// Largest packet rumqttc reads; a larger one drops the connection (then
/// the backoff applies). Payloads over `max_payload_bytes` but under this
/// are counted and dropped without losing the connection.
const MAX_PACKET: usize = 4 * 1024 * 1024;

/// How long a storage error waits before the publisher tries again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How long shutdown waits for the goodbye to reach the broker.
const GOODBYE: Duration = Duration::from_secs(2);

/// The broker link as `GET /api/v1/health` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MqttHealth {
    /// The broker's URL, `mqtt://host:port` or `mqtts://host:port` (TLS).
    pub broker: String,
    /// Connected now (a ConnAck was received and nothing failed since).
    pub connected: bool,
    /// When the current connection began, ms since the Unix epoch.
    pub since_ms: Option<u64>,
    /// Connection attempts that failed or connections lost, in total.
    pub failures: u64,
    /// The last connection error (a refused TLS handshake says why, e.g.
    /// `certificate verify failed`).
    pub last_error: Option<String>,
    /// The wait before the next attempt, while disconnected, ms.
    pub retry_in_ms: Option<u64>,
    /// The last log record the broker acknowledged.
    pub published_seq: u64,
    /// Machine messages applied.
    pub accepted: u64,
    /// Messages refused: not the documented shape.
    pub malformed: u64,
    /// Messages refused: over `max_payload_bytes`.
    pub oversized: u64,
    /// Messages on a machine topic of no configured machine.
    pub unknown_machine: u64,
}

impl MqttHealth {
    /// The link's figures for `GET /metrics`.
    pub fn exposition(&self) -> crate::metering::exposition::BrokerLink {
        crate::metering::exposition::BrokerLink {
            connected: self.connected,
            failures: self.failures,
            published_seq: self.published_seq,
            messages: vec![
                ("accepted", self.accepted),
                ("malformed", self.malformed),
                ("oversized", self.oversized),
                ("unknown_machine", self.unknown_machine),
            ],
        }
    }
}

/// What the publisher reads besides the log, each through its public,
/// read-only calls: the machines' live readings (progress, temperatures,
/// position), the APC verdicts, and the inventory levels to send again
/// at each new connection. Any may be absent (tests, tools).
#[derive(Clone, Default)]
pub struct Feeds {
    /// Live readings, throttled into each machine's retained state.
    pub factory: Option<Arc<Factory>>,
    /// APC verdicts, recomputed when units or machine states changed.
    pub metering: Option<Arc<Metering>>,
    /// Inventory levels, sent again at each connection.
    pub commerce: Option<Arc<Commerce>>,
}

impl std::fmt::Debug for Feeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feeds")
            .field("factory", &self.factory.is_some())
            .field("metering", &self.metering.is_some())
            .field("commerce", &self.commerce.is_some())
            .finish()
    }
}

/// Connection generations and acknowledgements, for the publisher.
#[derive(Debug, Clone, Default)]
struct Session {
    /// Bumped at every ConnAck.
    generation: u64,
    /// The client of this connection, while it is up.
    client: Option<AsyncClient>,
    /// PubAcks received in this generation.
    acked: u64,
}

impl Session {
    fn connected(&self) -> bool {
        self.client.is_some()
    }
}

/// Why the client could not start.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The broker URL (already checked by the configuration).
    #[error("mqtt.broker: {0}")]
    Broker(String),
    /// The TLS files (already checked by the configuration).
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
    /// The payload of the last will.
    #[error("cannot encode the last will: {0}")]
    Encode(#[from] serde_json::Error),
    /// The publisher's cursor could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Inner {
    options: MqttOptions,
    /// Over TLS, what a connection closed before its ConnAck most likely
    /// means (see [`explain`]).
    tls_hint: Option<&'static str>,
    topics: Topics,
    store: Store,
    machines: Vec<String>,
    links: HashMap<String, (Arc<MqttLink>, Adapter)>,
    /// Machines whose messages arrive under a topic base: the base with
    /// its final `/`, the adapter, the link.
    bases: Vec<(String, Adapter, Arc<MqttLink>)>,
    /// What each merging source (Moonraker, Bambu) said last, by machine.
    seen: std::sync::Mutex<HashMap<String, adapters::Seen>>,
    max_payload: usize,
    feeds: Feeds,
    /// Least time between two readings of a machine, and between two APC
    /// recomputations.
    interval: Duration,
    health: watch::Sender<MqttHealth>,
    session: watch::Sender<Session>,
    refused: AtomicU64,
    /// Stops the publisher (first, at shutdown).
    stop_publishing: CancellationToken,
    /// Stops the connection.
    stop: CancellationToken,
}

/// The running MQTT client.
pub struct Mqtt {
    inner: Arc<Inner>,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Mqtt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mqtt")
            .field("site", &self.inner.topics)
            .finish_non_exhaustive()
    }
}

/// One link per `[[mqtt.machine]]`, made before the factory opens so that
/// it can hold them like any other machine link.
pub fn links(config: &MqttConfig) -> Vec<(Arc<MqttLink>, Adapter)> {
    config
        .machines
        .iter()
        .map(|m| (Arc::new(MqttLink::new(&m.id)), m.adapter))
        .collect()
}

impl Mqtt {
    /// Connects to the broker (retrying with backoff until shutdown) and
    /// starts publishing the log of `store` for `machines` (with what
    /// `feeds` tell) and feeding `links` from their topics.
    pub fn start(
        config: &MqttConfig,
        store: Store,
        machines: Vec<String>,
        links: Vec<(Arc<MqttLink>, Adapter)>,
        feeds: Feeds,
    ) -> Result<Self, MqttError> {
        let url = parse_broker(&config.broker).map_err(MqttError::Broker)?;
        let published_seq = store.cursor(CURSOR)?;
        let topics = Topics::new(&config.site);
        let client_id = config
            .client_id
            .clone()
            .unwrap_or_else(|| format!("microfactoryd-{}", config.site));
        let mut opts = MqttOptions::new(client_id, url.host, url.port);
        let tls_hint = url.tls.then_some(if config.client_cert_file.is_some() {
            "the broker closed the TLS connection before its ConnAck: does it trust the CA of mqtt.client_cert_file?"
        } else {
            "the broker closed the TLS connection before its ConnAck: if it requires client certificates, set mqtt.client_cert_file and mqtt.client_key_file"
        });
        if url.tls {
            // Built once: every reconnect shares the same roots and identity.
            let connector = super::tls::connector(config)?;
            opts.set_transport(Transport::tls_with_config(
                TlsConfiguration::NativeConnector(connector),
            ));
        }
        opts.set_keep_alive(Duration::from_secs(config.keep_alive_secs))
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_last_will(LastWill::new(
                topics.status(),
                serde_json::to_vec(&SiteStatus {
                    online: false,
                    version: None,
                    since_ms: None,
                    machines: None,
                })?,
                QoS::AtLeastOnce,
                true,
            ));
        if let Some(u) = &config.username {
            opts.set_credentials(u, config.password.clone().unwrap_or_default());
        }
        // Links are found by machine id, never by position.
        let by_id: HashMap<&str, &Arc<MqttLink>> = links.iter().map(|(l, _)| (l.id(), l)).collect();
        let bases = config
            .machines
            .iter()
            .filter_map(|m| {
                let link = by_id.get(m.id.as_str())?;
                Some((format!("{}/", m.topic_base()?), m.adapter, Arc::clone(link)))
            })
            .collect();
        let inner = Arc::new(Inner {
            options: opts,
            tls_hint,
            topics,
            store,
            machines,
            links: links
                .into_iter()
                .map(|(l, a)| (l.id().to_string(), (l, a)))
                .collect(),
            bases,
            seen: std::sync::Mutex::default(),
            max_payload: config.max_payload_bytes,
            feeds,
            interval: Duration::from_millis(config.progress_interval_ms),
            health: watch::Sender::new(MqttHealth {
                broker: config.broker.clone(),
                published_seq,
                ..MqttHealth::default()
            }),
            session: watch::Sender::new(Session::default()),
            refused: AtomicU64::new(0),
            stop_publishing: CancellationToken::new(),
            stop: CancellationToken::new(),
        });
        let tasks = TaskTracker::new();
        let i = Arc::clone(&inner);
        tasks.spawn(async move { i.connection().await });
        let i = Arc::clone(&inner);
        tasks.spawn(async move { i.publisher().await });
        tasks.close();
        Ok(Self { inner, tasks })
    }

    /// The link as it is now.
    pub fn health(&self) -> MqttHealth {
        self.inner.health.borrow().clone()
    }

    /// A watch of the link, for tests and the health route.
    pub fn watch_health(&self) -> watch::Receiver<MqttHealth> {
        self.inner.health.subscribe()
    }

    /// Publishes what the log holds by now (briefly: the rest goes at the
    /// next start), says goodbye (the retained status becomes
    /// `{"online": false}`, as the will would), and disconnects. Call it
    /// after the factory stopped, so its last states are in the log.
    pub async fn shutdown(&self) {
        let tip = *self.inner.store.log_tip().borrow();
        let mut health = self.inner.health.subscribe();
        let _ = tokio::time::timeout(
            GOODBYE,
            health.wait_for(|h| h.published_seq >= tip || !h.connected),
        )
        .await;
        self.inner.stop_publishing.cancel();
        let client = self.inner.session.borrow().client.clone();
        if let Some(client) = client {
            let bye = serde_json::to_vec(&SiteStatus {
                online: false,
                version: None,
                since_ms: None,
                machines: None,
            })
            .unwrap_or_default();
            let _ = client.try_publish(self.inner.topics.status(), QoS::AtLeastOnce, true, bye);
            let _ = client.try_disconnect();
            if tokio::time::timeout(GOODBYE, self.tasks.wait())
                .await
                .is_err()
            {
                warn!("the MQTT broker did not take the goodbye in time");
            }
        }
        self.inner.stop.cancel();
        self.tasks.wait().await;
    }
}

impl Inner {
    // --------------------------------------------------------- connection

    /// Connects, and after every failure waits (see `backoff`) and
    /// connects again with a fresh client: rumqttc alone would reconnect on
    /// the next poll, at once.
    async fn connection(self: Arc<Self>) {
        let backoff = Backoff::default();
        let mut attempt = 0u32;
        loop {
            let (client, eventloop) = AsyncClient::new(self.options.clone(), REQUEST_CAPACITY);
            let mut acked = false;
            match self.connected(&client, eventloop, &mut acked).await {
                Ok(()) => return,
                Err(e) => {
                    self.disconnected();
                    // A connection that got as far as a ConnAck starts
                    // the schedule again.
                    if acked {
                        attempt = 0;
                    }
                    let wait = backoff.delay(attempt, jitter());
                    attempt = attempt.saturating_add(1);
                    let e = explain(&e, acked, self.tls_hint);
                    warn!(error = %e, retry_in = ?wait, "MQTT broker connection failed");
                    self.health.send_modify(|h| {
                        h.failures += 1;
                        h.last_error = Some(e);
                        h.retry_in_ms = Some(wait.as_millis() as u64);
                    });
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.stop.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Polls one connection until it fails (`Err`) or ends by our goodbye
    /// or shutdown (`Ok`); `acked` tells whether the broker accepted it.
    async fn connected(
        &self,
        client: &AsyncClient,
        mut eventloop: EventLoop,
        acked: &mut bool,
    ) -> Result<(), rumqttc::ConnectionError> {
        loop {
            let ev = tokio::select! {
                ev = eventloop.poll() => ev,
                () = self.stop.cancelled() => return Ok(()),
            };
            match ev? {
                Event::Incoming(Packet::ConnAck(_)) => {
                    *acked = true;
                    info!(broker = %self.health.borrow().broker, "connected to the MQTT broker");
                    // Subscriptions do not survive a clean session: every
                    // ConnAck subscribes again.
                    for f in self.filters() {
                        if let Err(e) = client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
                            warn!(topic = %f, error = %e, "could not subscribe");
                        }
                    }
                    self.session.send_modify(|s| {
                        s.generation += 1;
                        s.client = Some(client.clone());
                        s.acked = 0;
                    });
                    self.health.send_modify(|h| {
                        h.connected = true;
                        h.since_ms = Some(now_ms());
                        h.retry_in_ms = None;
                    });
                }
                Event::Incoming(Packet::PubAck(_)) => {
                    self.session.send_modify(|s| s.acked += 1);
                }
                Event::Incoming(Packet::Publish(p)) => self.ingest(&p.topic, &p.payload),
                Event::Outgoing(Outgoing::Disconnect) => {
                    // Our goodbye is on the wire.
                    self.disconnected();
                    return Ok(());
                }
                _ => {}
            }
        }
    }

    fn disconnected(&self) {
        self.session.send_modify(|s| s.client = None);
        self.health.send_modify(|h| {
            h.connected = false;
            h.since_ms = None;
        });
        for (l, _) in self.links.values() {
            l.lost();
        }
    }

    /// Every subscription: all reports of the site (configured machines or
    /// not, so that strangers are counted) and each OctoPrint base.
    fn filters(&self) -> Vec<String> {
        let mut v = vec![self.topics.report_filter()];
        for (base, adapter, _) in &self.bases {
            let base = base.trim_end_matches('/');
            match adapter {
                Adapter::Octoprint => v.extend(adapters::octoprint_filters(base)),
                Adapter::Moonraker => v.extend(adapters::moonraker_filters(base)),
                Adapter::Bambu => v.push(format!("{base}/report")),
                Adapter::Report => {}
            }
        }
        v
    }

    // ------------------------------------------------------------- ingest

    /// One incoming message: checked, routed to its machine's adapter,
    /// counted. Never panics, never writes a record itself: a machine's
    /// state changes only through its link's status, as a serial one's.
    fn ingest(&self, topic: &str, payload: &[u8]) {
        let result = if payload.len() > self.max_payload {
            Err(IngestError::Oversized {
                size: payload.len(),
                limit: self.max_payload,
            })
        } else if let Some(id) = self.topics.report_machine(topic) {
            match self.links.get(id) {
                Some((link, Adapter::Report)) => {
                    link.update(|s| adapters::apply_report(s, payload))
                }
                _ => Err(IngestError::UnknownMachine(topic.to_string())),
            }
        } else if let Some((rel, adapter, link)) = self
            .bases
            .iter()
            .find_map(|(base, a, l)| topic.strip_prefix(base.as_str()).map(|rel| (rel, *a, l)))
        {
            match adapter {
                Adapter::Octoprint => link.update(|s| adapters::apply_octoprint(s, rel, payload)),
                Adapter::Moonraker | Adapter::Bambu => {
                    let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
                    let seen = seen.entry(link.id().to_string()).or_default();
                    link.update(|s| match adapter {
                        Adapter::Moonraker => adapters::apply_moonraker(s, seen, rel, payload),
                        _ if rel == "report" => adapters::apply_bambu(s, seen, payload),
                        _ => Err(IngestError::UnknownMachine(topic.to_string())),
                    })
                }
                Adapter::Report => Err(IngestError::UnknownMachine(topic.to_string())),
            }
        } else {
            Err(IngestError::UnknownMachine(topic.to_string()))
        };
        self.health.send_modify(|h| match &result {
            Ok(()) => h.accepted += 1,
            Err(IngestError::Malformed(_)) => h.malformed += 1,
            Err(IngestError::Oversized { .. }) => h.oversized += 1,
            Err(IngestError::UnknownMachine(_)) => h.unknown_machine += 1,
        });
        if let Err(e) = result {
            // A flood must not flood the log: the first few, then one in
            // a thousand (the counts are in the health answer).
            let n = self.refused.fetch_add(1, Ordering::Relaxed);
            if n < 20 || n.is_multiple_of(1000) {
                warn!(%topic, error = %e, refused = n + 1, "MQTT message refused");
            } else {
                debug!(%topic, error = %e, "MQTT message refused");
            }
        }
    }

    // ---------------------------------------------------------- publisher

    /// Follows the log by cursor, one connection at a time.
    async fn publisher(self: Arc<Self>) {
        let mut session = self.session.subscribe();
        let mut tip = self.store.log_tip();
        // The generation whose connection ended under us: wait for a newer
        // one, not for the connection task to notice.
        let mut ended = 0;
        loop {
            // Wait for a connection.
            let (generation, client) = loop {
                {
                    let s = session.borrow_and_update();
                    if let Some(c) = &s.client
                        && s.generation > ended
                    {
                        break (s.generation, c.clone());
                    }
                }
                tokio::select! {
                    r = session.changed() => if r.is_err() { return },
                    () = self.stop_publishing.cancelled() => return,
                }
            };
            match self
                .connection_session(&client, generation, &mut session, &mut tip)
                .await
            {
                Ok(Ended::Stopped) => return,
                Ok(Ended::Reconnect) => ended = generation,
                Err(e) => {
                    warn!(error = %e, "MQTT publisher could not read the log; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY_AFTER) => {}
                        () = self.stop_publishing.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Publishes within one connection generation until it ends.
    async fn connection_session(
        &self,
        client: &AsyncClient,
        generation: u64,
        session: &mut watch::Receiver<Session>,
        tip: &mut watch::Receiver<u64>,
    ) -> Result<Ended, StoreError> {
        let mut issued = 0u64;
        let mut p = Published::new(self.interval);
        let first = self.first_messages(&mut p).await?;
        if let Some(end) = self.send(client, &first, &mut issued).await {
            return Ok(end);
        }
        if let Some(end) = self.acknowledged(generation, issued, session).await {
            return Ok(end);
        }
        // Four looks per interval: a change waits at most a quarter of
        // the interval past it (the throttle keeps each machine's updates
        // at least the interval apart).
        let mut ticker = tokio::time::interval((self.interval / 4).max(Duration::from_millis(25)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Read once: only this loop moves it.
        let mut cursor = self.store.cursor(CURSOR)?;
        loop {
            let durable = *tip.borrow_and_update();
            if cursor < durable {
                let records: Vec<Arc<LogRecord>> = self
                    .store
                    .log_after(cursor, CHUNK)?
                    .into_iter()
                    .take_while(|r| r.seq <= durable)
                    .collect();
                let Some(last) = records.last().map(|r| r.seq) else {
                    continue;
                };
                let mut out = Vec::new();
                for r in &records {
                    p.saw(r);
                    match schema::messages(&self.topics, r) {
                        Ok(m) => out.extend(m),
                        Err(e) => warn!(seq = r.seq, error = %e, "cannot encode a log record"),
                    }
                }
                if let Some(end) = self.send(client, &out, &mut issued).await {
                    return Ok(end);
                }
                if let Some(end) = self.acknowledged(generation, issued, session).await {
                    return Ok(end);
                }
                // A lost cursor write only sends the chunk again.
                self.store.set_cursor(CURSOR, last)?;
                cursor = last;
                self.health.send_modify(|h| h.published_seq = last);
                continue;
            }
            tokio::select! {
                r = tip.changed() => if r.is_err() { return Ok(Ended::Stopped) },
                r = session.changed() => {
                    if r.is_err() { return Ok(Ended::Stopped) }
                    let ended = {
                        let s = session.borrow_and_update();
                        s.generation != generation || !s.connected()
                    };
                    if ended { return Ok(Ended::Reconnect) }
                }
                _ = ticker.tick() => {
                    let out = self.refresh(&mut p).await;
                    if out.is_empty() { continue }
                    if let Some(end) = self.send(client, &out, &mut issued).await {
                        return Ok(end);
                    }
                    if let Some(end) = self.acknowledged(generation, issued, session).await {
                        return Ok(end);
                    }
                }
                () = self.stop_publishing.cancelled() => return Ok(Ended::Stopped),
            }
        }
    }

    /// What a new connection sends first: the site's status, every
    /// machine's last state, every product's levels and every APC verdict
    /// (a broker restarted without persistence has forgotten them all).
    async fn first_messages(&self, p: &mut Published) -> Result<Vec<Message>, StoreError> {
        let mut first = vec![Message {
            topic: self.topics.status(),
            payload: serde_json::to_vec(&SiteStatus {
                online: true,
                version: Some(env!("CARGO_PKG_VERSION").into()),
                since_ms: self.health.borrow().since_ms,
                machines: Some(self.machines.len()),
            })
            .unwrap_or_default(),
            retain: true,
        }];
        for id in &self.machines {
            if let Some(c) = self.store.last_machine_state(id)? {
                let state = MachineStatePayload::from_change(id, &c);
                first.push(Message {
                    topic: self.topics.machine_state(id),
                    payload: serde_json::to_vec(&state).unwrap_or_default(),
                    retain: true,
                });
                p.states.insert(id.clone(), state);
            }
        }
        if let Some(commerce) = &self.feeds.commerce {
            let snap = commerce.snapshot();
            let at_ms = now_ms();
            for (version, i) in &snap.items {
                let levels = InventoryPayload {
                    seq: None,
                    at_ms,
                    sku: i.sku.clone(),
                    on_hand: i.on_hand,
                    committed: i.committed,
                    unavailable: i.unavailable,
                    available: i.available,
                    version: *version,
                };
                match schema::inventory_message(&self.topics, &levels) {
                    Ok(m) => first.push(m),
                    Err(e) => warn!(sku = %i.sku, error = %e, "cannot encode stock levels"),
                }
            }
        }
        p.apc_dirty = true;
        first.extend(self.apc_messages(p).await);
        Ok(first)
    }

    /// At each tick: machines' changed readings (throttled), and the APC
    /// verdicts that changed if units or states were recorded since the
    /// last look.
    async fn refresh(&self, p: &mut Published) -> Vec<Message> {
        let mut out = Vec::new();
        if let Some(factory) = &self.feeds.factory {
            let now = now_ms();
            for m in factory.machines() {
                let Some(state) = p.states.get(&m.id) else {
                    continue;
                };
                if !describes(state, (m.machine_state, m.reason)) {
                    continue;
                }
                let live = schema::Live::from_status(&m.status);
                if let Some(live) = p.throttle.due(&m.id, &live, now) {
                    let payload = MachineStatePayload {
                        live: Some(live),
                        ..state.clone()
                    };
                    match serde_json::to_vec(&payload) {
                        Ok(b) => out.push(Message {
                            topic: self.topics.machine_state(&m.id),
                            payload: b,
                            retain: true,
                        }),
                        Err(e) => warn!(machine = %m.id, error = %e, "cannot encode readings"),
                    }
                }
            }
        }
        out.extend(self.apc_messages(p).await);
        out
    }

    /// The APC verdicts whose evaluation changed since last sent, when
    /// something that counts was recorded. Computed on the blocking pool:
    /// over a long history it reads the store for tens of ms, which the
    /// runtime's workers (shared with the machines' drivers) must not wait
    /// out.
    async fn apc_messages(&self, p: &mut Published) -> Vec<Message> {
        let Some(metering) = self.feeds.metering.clone() else {
            return Vec::new();
        };
        // At most once per interval, however often units are made.
        if !p.apc_dirty || p.apc_at.is_some_and(|t| t.elapsed() < self.interval) {
            return Vec::new();
        }
        p.apc_at = Some(std::time::Instant::now());
        let computed = tokio::task::spawn_blocking(move || {
            metering
                .apc(Window {
                    from_ms: 0,
                    to_ms: u64::MAX,
                })
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let results = match computed {
            Ok(r) => r,
            Err(e) => {
                // Still dirty: tried again next interval.
                warn!(error = %e, "cannot compute the APC verdicts to publish");
                return Vec::new();
            }
        };
        p.apc_dirty = false;
        let at_ms = now_ms();
        let mut out = Vec::new();
        for r in &results {
            let key = (r.sku.clone(), r.class.clone());
            if p.apc.get(&key) == Some(&r.evaluation) {
                continue;
            }
            match schema::apc_message(&self.topics, r, at_ms) {
                Ok(m) => {
                    out.push(m);
                    p.apc.insert(key, r.evaluation.clone());
                }
                Err(e) => warn!(sku = %r.sku, error = %e, "cannot encode an APC verdict"),
            }
        }
        out
    }

    async fn send(
        &self,
        client: &AsyncClient,
        messages: &[Message],
        issued: &mut u64,
    ) -> Option<Ended> {
        for m in messages {
            tokio::select! {
                r = client.publish(m.topic.clone(), QoS::AtLeastOnce, m.retain, m.payload.clone()) => {
                    // This connection's client is gone with it.
                    if r.is_err() { return Some(Ended::Reconnect) }
                }
                () = self.stop_publishing.cancelled() => return Some(Ended::Stopped),
            }
            *issued += 1;
        }
        None
    }

    /// Waits until the broker acknowledged `issued` messages of generation
    /// `generation`; `Some` if the connection ended first.
    async fn acknowledged(
        &self,
        generation: u64,
        issued: u64,
        session: &mut watch::Receiver<Session>,
    ) -> Option<Ended> {
        loop {
            {
                let s = session.borrow_and_update();
                if s.generation != generation || !s.connected() {
                    return Some(Ended::Reconnect);
                }
                if s.acked >= issued {
                    return None;
                }
            }
            tokio::select! {
                r = session.changed() => if r.is_err() { return Some(Ended::Stopped) },
                () = self.stop_publishing.cancelled() => return Some(Ended::Stopped),
            }
        }
    }
}

/// Whether `state`, the machine's last state message, is the state the
/// factory holds now. The factory changes a state before the change's log
/// record is durable; until this publisher reads that record, readings
/// would go out under the state before (a print's progress under
/// "offline"), so they wait for it.
fn describes(state: &MachineStatePayload, now: (MachineState, StateReason)) -> bool {
    (state.state, state.reason) == now
}

enum Ended {
    Stopped,
    Reconnect,
}

/// A connection error as health shows it. A TLS broker that refuses the
/// client's certificate (or its absence) does so after the handshake, in
/// TLS 1.3: the client sees only its connection reset while waiting for
/// the ConnAck, which says nothing; `hint` says what it most likely means.
/// A reset after a ConnAck, or an error of the TCP connect or of the
/// handshake itself, speaks for itself.
fn explain(e: &rumqttc::ConnectionError, acked: bool, hint: Option<&str>) -> String {
    match (e, hint) {
        (rumqttc::ConnectionError::MqttState(_), Some(hint)) if !acked => format!("{e} ({hint})"),
        _ => e.to_string(),
    }
}

/// What one connection has published beyond the log's messages.
struct Published {
    /// Each machine's last state message, to which readings are added.
    states: HashMap<String, MachineStatePayload>,
    throttle: Throttle,
    /// Each (SKU, class)'s last evaluation sent.
    apc: HashMap<(String, String), Evaluation>,
    /// Units or states were recorded since the verdicts were computed.
    apc_dirty: bool,
    /// When they were computed last.
    apc_at: Option<std::time::Instant>,
}

impl Published {
    fn new(interval: Duration) -> Self {
        Self {
            states: HashMap::new(),
            throttle: Throttle::new(u64::try_from(interval.as_millis()).unwrap_or(u64::MAX)),
            apc: HashMap::new(),
            apc_dirty: false,
            apc_at: None,
        }
    }

    /// Notes what a log record changes: a machine's state replaces its
    /// retained message (readings go out again at the next tick); units,
    /// attempts and states may change a verdict.
    fn saw(&mut self, r: &LogRecord) {
        if let Some(p) = schema::machine_state(r) {
            self.throttle.replaced(&p.machine_id);
            self.states.insert(p.machine_id.clone(), p);
            self.apc_dirty = true;
            return;
        }
        match &r.event {
            DomainEvent::UnitMade { .. }
            | DomainEvent::UnitInspected { .. }
            | DomainEvent::AttemptEnded { .. } => self.apc_dirty = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_connection_closed_before_its_connack_gets_the_hint_and_nothing_else_does() {
        let reset = || {
            rumqttc::ConnectionError::MqttState(rumqttc::StateError::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset,
            )))
        };
        let hint = Some("set mqtt.client_cert_file");
        assert!(explain(&reset(), false, hint).ends_with("(set mqtt.client_cert_file)"));
        // After a ConnAck, or over plain TCP, or when the TCP connect
        // itself failed: the error alone.
        assert_eq!(explain(&reset(), true, hint), reset().to_string());
        assert_eq!(explain(&reset(), false, None), reset().to_string());
        let refused = rumqttc::ConnectionError::Io(std::io::ErrorKind::ConnectionRefused.into());
        assert_eq!(explain(&refused, false, hint), refused.to_string());
    }

    #[test]
    fn readings_wait_for_the_log_record_of_the_state_they_belong_to() {
        let change = crate::core::machine::StateChange {
            seq: 9,
            at_ms: 1_000,
            state: MachineState::Offline,
            reason: StateReason::Disconnected,
            job_id: None,
        };
        let published = MachineStatePayload::from_change("m1", &change);
        assert!(describes(
            &published,
            (MachineState::Offline, StateReason::Disconnected)
        ));
        // The factory has moved on; its log record is not read yet.
        assert!(!describes(
            &published,
            (MachineState::Producing, StateReason::None)
        ));
        assert!(!describes(
            &published,
            (MachineState::Offline, StateReason::Connecting)
        ));
    }

    #[test]
    fn the_link_goes_into_the_metrics_exposition_before_its_end() {
        let h = MqttHealth {
            connected: true,
            failures: 3,
            published_seq: 42,
            malformed: 7,
            ..MqttHealth::default()
        };
        let text = crate::metering::exposition::render(crate::metering::exposition::Scrape {
            broker: Some(h.exposition()),
            ..Default::default()
        })
        .expect("render");
        assert!(text.ends_with("# EOF\n"), "{text}");
        for line in [
            "microfactory_mqtt_connected 1\n",
            "microfactory_mqtt_failures_total 3\n",
            "microfactory_mqtt_published_seq 42\n",
            "microfactory_mqtt_messages_total{result=\"malformed\"} 7\n",
            "microfactory_mqtt_messages_total{result=\"accepted\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
