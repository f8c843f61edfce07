//! Running the daemon: from a configuration file or as the self-contained
//! demo factory, until SIGTERM or SIGINT.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use microfactory_machines::driver::{DriverConfig, DriverHandle};
use sd_notify::NotifyState;
use tokio::net::TcpListener;
use tracing::info;

use crate::commerce::service::Commerce;
use crate::commerce::shopify::Shopify;
use crate::commerce::webhooks::Webhooks;
use crate::config::{Adapter, Checked};
use crate::factory::Factory;
use crate::factory::link::MachineLink;
use crate::http::api::{self, AppState};
use crate::metering::Metering;
use crate::mqtt::Mqtt;
use crate::mqtt::link::MqttLink;
use crate::store::Store;

/// Driver settings for each configured serial machine (MQTT machines
/// have no driver: see `links`).
pub fn driver_configs(checked: &Checked) -> Vec<DriverConfig> {
    checked
        .machines
        .iter()
        .filter(|m| !m.config.read_only)
        .map(|m| {
            let mut d = m.profile.driver_config(&m.config.id, &m.config.port);
            if let Some(b) = m.config.baud {
                d.baud = b;
            }
            if let Some(f) = m.config.flow {
                d.flow = f;
            }
            d
        })
        .collect()
}

/// What is up and running; `stop` shuts it down cleanly.
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    /// The factory.
    pub factory: Arc<Factory>,
    metering: Arc<Metering>,
    commerce: Arc<Commerce>,
    webhooks: Arc<Webhooks>,
    mqtt: Option<Arc<Mqtt>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("addr", &self.addr).finish()
    }
}

/// Machines with their links, as the factory holds them.
type Linked = Vec<(crate::config::Machine, Arc<dyn MachineLink>)>;

/// Every machine's link in configuration order: a serial driver, or the
/// MQTT link its reports feed (also returned apart, for the MQTT client).
/// Links are matched to machines by id, never by position.
fn links(checked: &Checked) -> (Linked, Vec<(Arc<MqttLink>, Adapter)>) {
    let mut drivers: HashMap<String, DriverConfig> = driver_configs(checked)
        .into_iter()
        .map(|d| (d.id.clone(), d))
        .collect();
    let mut mqtt: HashMap<String, (Arc<MqttLink>, Adapter)> = checked
        .config
        .mqtt
        .as_ref()
        .map(crate::mqtt::client::links)
        .unwrap_or_default()
        .into_iter()
        .map(|(l, a)| (l.id().to_string(), (l, a)))
        .collect();
    let mut mqtt_links = Vec::new();
    let mut all = Vec::new();
    for m in &checked.machines {
        let id = &m.config.id;
        let link: Option<Arc<dyn MachineLink>> = if m.config.read_only {
            mqtt.remove(id).map(|(l, a)| {
                mqtt_links.push((Arc::clone(&l), a));
                l as Arc<dyn MachineLink>
            })
        } else {
            drivers
                .remove(id)
                .map(|d| Arc::new(DriverHandle::spawn(d)) as Arc<dyn MachineLink>)
        };
        match link {
            Some(l) => all.push((m.clone(), l)),
            None => tracing::error!(machine = %id, "no link for a configured machine"),
        }
    }
    (all, mqtt_links)
}

/// Opens the store, recovers, starts drivers, the MQTT client, the
/// scheduler and the HTTP server.
pub async fn start(checked: Checked, store: Store) -> anyhow::Result<Running> {
    let (machines, mqtt_links) = links(&checked);
    let factory = Factory::with_links(
        store,
        machines,
        checked.config.max_upload_bytes,
        checked.config.keep_ended_jobs,
    )
    .await
    .context("cannot open the factory")?;
    factory.run();
    let metering = Metering::new(
        Arc::clone(&factory),
        &checked.machines,
        checked.config.apc.clone(),
        checked.config.costs.clone(),
    );
    metering.start();
    let commerce = Commerce::new(
        factory.store().clone(),
        Arc::clone(&metering),
        &checked.config.commerce.make_to_order,
        checked.config.shop.clone(),
    )
    .context("cannot read the commerce records")?;
    commerce.start();
    let mqtt = match &checked.config.mqtt {
        Some(cfg) => Some(Arc::new(
            Mqtt::start(
                cfg,
                factory.store().clone(),
                checked
                    .machines
                    .iter()
                    .map(|m| m.config.id.clone())
                    .collect(),
                mqtt_links,
                crate::mqtt::client::Feeds {
                    factory: Some(Arc::clone(&factory)),
                    metering: Some(Arc::clone(&metering)),
                    commerce: Some(Arc::clone(&commerce)),
                },
            )
            .context("cannot start the MQTT client")?,
        )),
        None => None,
    };
    let webhooks = Webhooks::new(
        factory.store().clone(),
        &checked.config.webhooks,
        (&checked.config.webhook_retry).into(),
    )
    .await
    .context("cannot start the webhook outbox")?;
    webhooks.start();
    // Shopify's callbacks answer from commerce's finished goods and
    // shipments.
    let shopify = Arc::new(Shopify::new(
        &checked.config.shopify,
        factory.store().clone(),
        Arc::clone(&commerce) as Arc<dyn crate::commerce::shopify::FulfillmentSource>,
    ));
    let listener = TcpListener::bind(checked.config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", checked.config.listen))?;
    let addr = listener.local_addr()?;
    let http = &checked.config.http;
    let app = api::router(
        AppState::new(
            Arc::clone(&factory),
            Arc::clone(&metering),
            Arc::clone(&commerce),
            http.into(),
        )
        .with_mqtt(mqtt.clone())
        .with_commerce(Arc::clone(&webhooks), shopify),
    );
    let limits = crate::http::server::Limits::from(http);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::http::server::serve(
        listener,
        app,
        limits,
        async move {
            let _ = stopped.await;
        },
    ));
    info!(%addr, "listening");
    Ok(Running {
        addr,
        factory,
        metering,
        commerce,
        webhooks,
        mqtt,
        server,
        stop,
    })
}

impl Running {
    /// Production metering (the demo defines products and orders).
    pub fn metering(&self) -> &Arc<Metering> {
        &self.metering
    }

    /// Finished goods, sales orders and shipments.
    pub fn commerce(&self) -> &Arc<Commerce> {
        &self.commerce
    }

    /// The MQTT client, when `[mqtt]` is configured.
    pub fn mqtt(&self) -> Option<&Arc<Mqtt>> {
        self.mqtt.as_ref()
    }

    /// Stops taking requests, stops every machine at a safe point and
    /// stores the state of interrupted jobs.
    pub async fn stop(self) {
        self.factory.begin_shutdown();
        let _ = self.stop.send(());
        // Open event streams never end on their own; do not wait forever.
        let mut server = self.server;
        if tokio::time::timeout(std::time::Duration::from_secs(3), &mut server)
            .await
            .is_err()
        {
            // Still serving someone after its grace: no request may reach
            // a factory that is stopping.
            server.abort();
        }
        // Before the factory: the reader may be queuing an order's jobs.
        // What the factory records while stopping is read at the next start.
        self.commerce.shutdown().await;
        self.metering.shutdown().await;
        self.webhooks.shutdown().await;
        self.factory.shutdown().await;
        // Last, so the machines' final states (interrupted jobs) are in
        // the log it publishes before its goodbye.
        if let Some(m) = &self.mqtt {
            m.shutdown().await;
        }
    }
}

/// Waits for SIGTERM or SIGINT.
pub async fn signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `microfactoryd --config PATH`.
pub async fn run_config(path: PathBuf) -> anyhow::Result<()> {
    let checked = crate::config::Config::load(&path)?;
    for w in &checked.warnings {
        tracing::warn!("{w}");
    }
    let store = Store::open(&checked.config.data_dir)
        .with_context(|| format!("cannot open {}", checked.config.data_dir.display()))?;
    let running = start(checked, store).await?;
    // Tests and scripts read this line to find a port chosen by the OS.
    println!("listening on http://{}", running.addr);
    // Type=notify: ready once the store is open, the machines started and
    // the listener bound, so units ordered after this one find it serving.
    notify(&[
        NotifyState::Ready,
        NotifyState::Status(&format!("listening on {}", running.addr)),
    ]);
    let watchdog = sd_notify::watchdog_enabled().map(|every| {
        info!(?every, "systemd watchdog enabled");
        tokio::spawn(async move {
            // Twice per period, as sd_watchdog_enabled(3) advises; a stuck
            // runtime stops the pings and systemd restarts the daemon.
            let mut tick = tokio::time::interval(every / 2);
            loop {
                tick.tick().await;
                notify(&[NotifyState::Watchdog]);
            }
        })
    });
    signal().await;
    info!("shutting down");
    notify(&[NotifyState::Stopping]);
    running.stop().await;
    if let Some(w) = watchdog {
        w.abort();
    }
    Ok(())
}

/// Tells systemd about the daemon's state; a no-op outside systemd (no
/// `NOTIFY_SOCKET`).
fn notify(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}
