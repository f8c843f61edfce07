//! Debian's `mosquitto` for the end-to-end tests: one process per broker,
//! on a free port, with a config of our own (bridges included), that a
//! test can stop and start again on the same port; and a subscriber whose
//! messages arrive on a channel.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use crate::TempDir;

/// An upper bound for a broker to listen or a message to arrive, generous
/// for a loaded two-core machine; never a synchronisation.
pub const BOUND: Duration = Duration::from_secs(30);

fn binary() -> Result<PathBuf> {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("mosquitto is not installed (.ci/run installs it)")
}

/// A free TCP port on the loopback.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One mosquitto process, killed on drop.
pub struct Broker {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Config lines after the listener (a bridge, persistence).
    extra: String,
    dir: TempDir,
    child: Option<Child>,
}

impl Broker {
    /// Starts a broker with `extra` config lines.
    pub fn start(extra: &str) -> Result<Self> {
        let mut b = Self {
            port: free_port()?,
            extra: extra.to_string(),
            dir: TempDir::new("mosquitto"),
            child: None,
        };
        b.spawn()?;
        Ok(b)
    }

    /// Starts it (again) on its port and waits until it listens.
    pub fn spawn(&mut self) -> Result<()> {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\n{}\n",
                self.port, self.extra
            ),
        )?;
        let log = std::fs::File::create(self.dir.path().join("mosquitto.log"))?;
        let child = Command::new(binary()?)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start mosquitto")?;
        self.child = Some(child);
        let deadline = Instant::now() + BOUND;
        // A process gives no event when its socket listens: try to connect.
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                bail!("mosquitto did not listen on {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills it (SIGKILL: no goodbye to anyone).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// What it logged (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A subscriber: every message it receives arrives on a channel.
pub struct Subscriber {
    rx: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Connects to `port` and subscribes to `filters` (again after any
    /// reconnection), returning once the broker acknowledged them.
    pub async fn connect(port: u16, id: &str, filters: &[&str]) -> Result<Self> {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 22, 1 << 22);
        let (client, mut el) = AsyncClient::new(o, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, mut ready) = mpsc::unbounded_channel();
        let filters: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for f in &filters {
                            let _ = client.try_subscribe(f.clone(), QoS::AtLeastOnce);
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(BOUND, ready.recv())
            .await
            .context("subscribed in time")?;
        Ok(Self { rx, task })
    }

    /// The next message for which `pick` says yes (others are dropped).
    pub async fn until<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&str, &serde_json::Value) -> Option<T>,
    ) -> Result<T> {
        tokio::time::timeout(BOUND, async {
            loop {
                let (t, p) = self.rx.recv().await.context("subscriber alive")?;
                let v = serde_json::from_slice(&p).unwrap_or(serde_json::Value::Null);
                if let Some(x) = pick(&t, &v) {
                    return Ok(x);
                }
            }
        })
        .await
        .with_context(|| format!("waiting for {what}"))?
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}
