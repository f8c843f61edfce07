//! Outgoing webhooks from a persisted outbox.
//!
//! The outbox ([`outbox`]) reads the durable domain log by cursor and
//! turns each record whose topic ([`model::topic_of`]) a receiver wants
//! into a stored delivery, in the same commit that moves its cursor: a
//! crash either keeps both or neither. The deliverer ([`deliver`]) POSTs
//! each receiver's oldest pending delivery, signed, and stores the
//! outcome and the next attempt's time ([`schedule`], pure) before trying
//! again, so the schedule survives a restart. A delivery's id is its
//! receiver and log seq, the same on every attempt: receivers deduplicate
//! on it (delivery is at least once).
//!
//! Receivers come from `[[webhooks]]` (synchronised at every start) and
//! from the API; deliveries only ever go to a stored receiver's URL.

pub mod deliver;
pub mod model;
pub mod outbox;
pub mod schedule;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use utoipa::ToSchema;

use crate::clock::now_ms;
use crate::config::WebhookConfig;
use crate::store::{Batch, Store, StoreError};
use model::{Delivery, DeliveryState, Receiver, ReceiverState, ReceiverView, Source};
use schedule::RetryPolicy;

/// Why a webhook request was refused; each maps to one HTTP status.
#[derive(Debug, Error)]
pub enum WebhooksError {
    /// No such receiver.
    #[error("{0}")]
    NotFound(String),
    /// The receiver's fields are wrong: every problem, each a sentence.
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    /// The receiver's state or origin does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// The HTTP client could not be built.
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T> = std::result::Result<T, WebhooksError>;

/// `POST /api/v1/webhooks`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiverInput {
    /// `[a-z0-9_-]`, 1 to 32 characters; generated when absent.
    pub id: Option<String>,
    /// `http://` URL.
    pub url: String,
    /// HMAC key, 16 characters or more; generated (and shown once) when
    /// absent.
    pub secret: Option<String>,
    /// Topics, or `["*"]`.
    pub topics: Vec<String>,
}

/// The answer to `POST /api/v1/webhooks`: the receiver and its secret,
/// shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReceiverCreated {
    /// The receiver.
    #[serde(flatten)]
    pub receiver: ReceiverView,
    /// The HMAC key.
    pub secret: String,
}

/// The outbox, the deliverer and the receivers' API.
#[derive(Debug)]
pub struct Webhooks {
    store: Store,
    policy: RetryPolicy,
    /// Serialises every read-modify-write of receivers and deliveries
    /// (outbox, deliverer, API), so none undoes another's change.
    lock: Mutex<()>,
    /// Wakes the deliverer: new deliveries, a receiver enabled or added,
    /// an attempt finished.
    wake: Notify,
    /// Receivers with an attempt in flight (one at a time each).
    in_flight: std::sync::Mutex<std::collections::HashSet<String>>,
    client: reqwest::Client,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Webhooks {
    /// Stores the configured receivers (keeping each one's delivery
    /// state; a receiver gone from the file is removed with its pending
    /// deliveries), without starting anything.
    pub async fn new(
        store: Store,
        configured: &[WebhookConfig],
        policy: RetryPolicy,
    ) -> Result<Arc<Self>> {
        let client = reqwest::Client::builder()
            // Deliveries go to configured URLs only: no redirects, and no
            // proxy taken from the environment.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("microfactoryd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WebhooksError::Client(e.to_string()))?;
        let w = Arc::new(Self {
            store,
            policy,
            lock: Mutex::new(()),
            wake: Notify::new(),
            in_flight: std::sync::Mutex::default(),
            client,
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        w.sync_config(configured).await?;
        Ok(w)
    }

    /// Starts the outbox and the deliverer.
    pub fn start(self: &Arc<Self>) {
        let w = Arc::clone(self);
        self.tasks.spawn(async move { w.read_log().await });
        let w = Arc::clone(self);
        self.tasks.spawn(async move { w.deliver().await });
    }

    /// Stops both; an attempt in flight is abandoned and made again at the
    /// next start (same delivery id).
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    async fn commit(&self, batch: &Batch) -> Result<()> {
        self.store.commit(batch, now_ms())?;
        self.store.flush().await?;
        Ok(())
    }

    async fn sync_config(&self, configured: &[WebhookConfig]) -> Result<()> {
        let _g = self.lock.lock().await;
        let stored = self.store.webhooks()?;
        let now = now_ms();
        let mut batch = Batch::default();
        if stored.is_empty() && self.store.cursor(outbox::CURSOR)? == 0 {
            // The first receivers ever: they get what happens from now
            // on, not the factory's whole history.
            batch
                .cursors
                .push((outbox::CURSOR, *self.store.log_tip().borrow()));
        }
        for c in configured {
            let id = c.id();
            let mut r = match stored.iter().find(|r| r.id == id) {
                Some(r) => r.clone(),
                None => new_receiver(
                    id,
                    c.url.clone(),
                    c.secret.clone(),
                    Vec::new(),
                    Source::Config,
                    now,
                ),
            };
            r.url.clone_from(&c.url);
            r.secret.clone_from(&c.secret);
            r.topics.clone_from(&c.topics);
            r.source = Source::Config;
            if stored.iter().all(|s| *s != r) {
                batch.webhooks.push(r);
            }
        }
        for r in &stored {
            if r.source == Source::Config && !configured.iter().any(|c| c.id() == r.id) {
                tracing::info!(receiver = %r.id, "webhook receiver left the configuration: removed");
                batch.removed_webhooks.push(r.id.clone());
                batch.deliveries.extend(self.dropped(&r.id)?);
            }
        }
        self.commit(&batch).await
    }

    fn view(&self, r: &Receiver) -> Result<ReceiverView> {
        let head = self.store.pending_head(&r.id)?;
        Ok(ReceiverView {
            id: r.id.clone(),
            url: r.url.clone(),
            topics: r.topics.clone(),
            source: r.source,
            state: r.state,
            consecutive_failures: r.consecutive_failures,
            disabled_ms: r.disabled_ms,
            last_error: r.last_error.clone(),
            last_success_ms: r.last_success_ms,
            pending: self.store.pending_count(&r.id)?,
            next_attempt_ms: head
                .filter(|_| r.state == ReceiverState::Active)
                .map(|d| d.next_attempt_ms),
        })
    }

    fn receiver(&self, id: &str) -> Result<Receiver> {
        self.store.webhook(id)?.ok_or_else(|| {
            WebhooksError::NotFound(format!(
                "no webhook receiver '{id}'; GET /api/v1/webhooks lists them"
            ))
        })
    }

    /// Every receiver with its delivery status.
    pub fn list(&self) -> Result<Vec<ReceiverView>> {
        self.store
            .webhooks()?
            .iter()
            .map(|r| self.view(r))
            .collect()
    }

    /// One receiver.
    pub fn get(&self, id: &str) -> Result<ReceiverView> {
        self.view(&self.receiver(id)?)
    }

    /// Adds a receiver; it gets the events committed from now on.
    pub async fn create(&self, input: ReceiverInput) -> Result<ReceiverCreated> {
        let id = match input.id {
            Some(id) => id,
            None => format!("wh-{}", random_hex(4)?),
        };
        let secret = match input.secret {
            Some(s) => s,
            None => random_hex(24)?,
        };
        let problems = model::check_receiver(&id, &input.url, &secret, &input.topics);
        if !problems.is_empty() {
            return Err(WebhooksError::Invalid(problems));
        }
        let _g = self.lock.lock().await;
        if self.store.webhook(&id)?.is_some() {
            return Err(WebhooksError::Conflict(format!(
                "a webhook receiver '{id}' exists already; choose another id"
            )));
        }
        let r = new_receiver(
            id,
            input.url,
            secret.clone(),
            input.topics,
            Source::Api,
            now_ms(),
        );
        self.commit(&Batch {
            webhooks: vec![r.clone()],
            ..Batch::default()
        })
        .await?;
        tracing::info!(receiver = %r.id, url = %r.url, "webhook receiver added");
        Ok(ReceiverCreated {
            receiver: self.view(&r)?,
            secret,
        })
    }

    /// Removes a receiver added through the API, with its pending
    /// deliveries (its delivered ones stay on record).
    pub async fn delete(&self, id: &str) -> Result<()> {
        let _g = self.lock.lock().await;
        let r = self.receiver(id)?;
        if r.source == Source::Config {
            return Err(WebhooksError::Conflict(format!(
                "webhook receiver '{id}' comes from the configuration file; remove it there and restart"
            )));
        }
        let batch = Batch {
            removed_webhooks: vec![id.to_string()],
            deliveries: self.dropped(id)?,
            ..Batch::default()
        };
        self.commit(&batch).await?;
        tracing::info!(receiver = %id, "webhook receiver removed");
        Ok(())
    }

    /// A removed receiver's pending deliveries, marked dropped, so their
    /// records say why they never arrived.
    fn dropped(&self, id: &str) -> Result<Vec<Delivery>> {
        let mut out = Vec::new();
        let mut before = u64::MAX;
        loop {
            let page = self.store.deliveries(id, before, 256)?;
            let Some(last) = page.last() else {
                return Ok(out);
            };
            before = last.seq;
            out.extend(
                page.into_iter()
                    .filter(|d| d.state == DeliveryState::Pending)
                    .map(|mut d| {
                        d.state = DeliveryState::Dropped;
                        d
                    }),
            );
        }
    }

    /// Enables a receiver again; its oldest waiting delivery is due now.
    pub async fn enable(&self, id: &str) -> Result<ReceiverView> {
        let _g = self.lock.lock().await;
        let mut r = self.receiver(id)?;
        let mut head = self.store.pending_head(id)?;
        schedule::enable(&mut r, head.as_mut(), now_ms());
        self.commit(&Batch {
            webhooks: vec![r.clone()],
            deliveries: head.into_iter().collect(),
            ..Batch::default()
        })
        .await?;
        tracing::info!(receiver = %id, "webhook receiver enabled");
        self.wake.notify_one();
        self.view(&r)
    }

    /// A receiver's latest deliveries, newest first, before `before` (a
    /// log seq) when given.
    pub fn deliveries(&self, id: &str, before: Option<u64>, limit: usize) -> Result<Vec<Delivery>> {
        self.receiver(id)?;
        Ok(self
            .store
            .deliveries(id, before.unwrap_or(u64::MAX), limit)?)
    }
}

fn new_receiver(
    id: String,
    url: String,
    secret: String,
    topics: Vec<String>,
    source: Source,
    now: u64,
) -> Receiver {
    Receiver {
        id,
        url,
        secret,
        topics,
        source,
        created_ms: now,
        state: ReceiverState::Active,
        consecutive_failures: 0,
        disabled_ms: None,
        last_error: None,
        last_success_ms: None,
    }
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut raw = vec![0u8; bytes];
    getrandom::fill(&mut raw)
        .map_err(|e| WebhooksError::Store(StoreError::Io(std::io::Error::other(e.to_string()))))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}
