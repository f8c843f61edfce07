//! Running the daemon: from a configuration file or as the self-contained
//! demo factory, until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use microfactory_machines::driver::DriverConfig;
use tokio::net::TcpListener;
use tracing::info;

use crate::config::Checked;
use crate::factory::Factory;
use crate::http::api::{self, AppState};
use crate::metering::Metering;
use crate::store::Store;

/// Driver settings for each configured machine.
pub fn driver_configs(checked: &Checked) -> Vec<DriverConfig> {
    checked
        .machines
        .iter()
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
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("addr", &self.addr).finish()
    }
}

/// Opens the store, recovers, starts drivers, scheduler and HTTP server.
pub async fn start(checked: Checked, store: Store) -> anyhow::Result<Running> {
    let drivers = driver_configs(&checked);
    let factory = Factory::open(
        store,
        checked.machines.clone(),
        drivers,
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
    );
    metering.start();
    let listener = TcpListener::bind(checked.config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", checked.config.listen))?;
    let addr = listener.local_addr()?;
    let http = &checked.config.http;
    let app = api::router(AppState::new(
        Arc::clone(&factory),
        Arc::clone(&metering),
        http.into(),
    ));
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
        server,
        stop,
    })
}

impl Running {
    /// Stops taking requests, stops every machine at a safe point and
    /// stores the state of interrupted jobs.
    pub async fn stop(self) {
        self.factory.begin_shutdown();
        let _ = self.stop.send(());
        // Open event streams never end on their own; do not wait forever.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), self.server).await;
        // Before the factory: the reader may be queuing an order's jobs.
        // What the factory records while stopping is read at the next start.
        self.metering.shutdown().await;
        self.factory.shutdown().await;
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
    signal().await;
    info!("shutting down");
    running.stop().await;
    Ok(())
}
