//! The MQTT link against a real broker: Debian's `mosquitto`, started by
//! each test on a free port in a temporary folder and killed on drop. The
//! daemon runs in-process (`cli::serve::start`) with machines that report
//! over MQTT; a second client plays the machines and the consumers.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use microfactoryd::cli::serve::{Running, start};
use microfactoryd::config::Config;
use microfactoryd::core::events::DomainEvent;
use microfactoryd::core::machine::MachineState;
use microfactoryd::mqtt::MqttHealth;
use microfactoryd::mqtt::schema::{MachineStatePayload, SiteStatus};
use microfactoryd::store::Store;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// An upper bound for things that take milliseconds, generous for a
/// loaded two-core machine; never a synchronisation.
const BOUND: Duration = Duration::from_secs(20);

fn mosquitto() -> PathBuf {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("mosquitto is installed (.ci/run installs it)")
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mfd-mqtt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// One mosquitto process; restartable on the same port.
struct Broker {
    port: u16,
    dir: PathBuf,
    persistent: bool,
    child: Option<Child>,
}

impl Broker {
    fn start(name: &str, persistent: bool) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut b = Self {
            port,
            dir: temp_dir(name),
            persistent,
            child: None,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let conf = self.dir.join("mosquitto.conf");
        let mut text = format!("listener {} 127.0.0.1\nallow_anonymous true\n", self.port);
        if self.persistent {
            text.push_str(&format!(
                "persistence true\npersistence_location {}/\n",
                self.dir.display()
            ));
        }
        std::fs::write(&conf, text).expect("config");
        let child = Command::new(mosquitto())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + BOUND;
        // A process gives no event when its socket listens: try to connect.
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "mosquitto did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (a persistent broker saves its sessions) or SIGKILL.
    fn stop(&mut self, graceful: bool) {
        if let Some(mut c) = self.child.take() {
            if graceful {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(c.id().to_string())
                    .status();
            } else {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop(false);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A test client: what it receives arrives on a channel.
struct Peer {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    task: tokio::task::JoinHandle<()>,
}

impl Peer {
    /// Connects; `persistent` keeps its session (and queued QoS 1
    /// messages) across its own and the broker's restarts.
    async fn connect(broker: &Broker, id: &str, persistent: bool, subscribe: &[&str]) -> Self {
        let mut o = MqttOptions::new(id, "127.0.0.1", broker.port);
        o.set_clean_session(!persistent)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 22, 1 << 22);
        let (client, mut el) = AsyncClient::new(o, 1024);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, mut ready) = mpsc::unbounded_channel();
        let topics: Vec<String> = subscribe.iter().map(|s| s.to_string()).collect();
        let c = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for t in &topics {
                            let _ = c.try_subscribe(t.clone(), QoS::AtLeastOnce);
                        }
                        if topics.is_empty() {
                            let _ = ready_tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    // The broker restarts in some tests: try again soon.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(BOUND, ready.recv())
            .await
            .expect("connected and subscribed in time");
        Self { client, rx, task }
    }

    async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("queued");
    }

    /// The next message on a topic for which `pick` says yes.
    async fn until<T>(&mut self, mut pick: impl FnMut(&str, &[u8]) -> Option<T>) -> T {
        tokio::time::timeout(BOUND, async {
            loop {
                let (t, p) = self.rx.recv().await.expect("peer alive");
                if let Some(v) = pick(&t, &p) {
                    return v;
                }
            }
        })
        .await
        .expect("the awaited message came in time")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn daemon(name: &str, broker: &Broker) -> (Running, PathBuf) {
    let dir = temp_dir(&format!("{name}-daemon"));
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            r#"listen = "127.0.0.1:0"
data_dir = "data"
[mqtt]
broker = "{}"
site = "t"
keep_alive_secs = 5
max_payload_bytes = 1024
[[mqtt.machine]]
id = "esp-mill"
profile = "grbl-3018"
adapter = "report"
[[mqtt.machine]]
id = "octo"
profile = "prusa-mk3s"
adapter = "octoprint"
base = "octoPrint"
"#,
            broker.url()
        ),
    )
    .expect("config");
    let checked = Config::load(&path).expect("valid config");
    let store = Store::open(&checked.config.data_dir).expect("store");
    (start(checked, store).await.expect("daemon starts"), dir)
}

async fn health_until(r: &Running, pred: impl Fn(&MqttHealth) -> bool) -> MqttHealth {
    let mut w = r.mqtt().expect("mqtt configured").watch_health();
    let h = tokio::time::timeout(BOUND, w.wait_for(|h| pred(h)))
        .await
        .expect("health reached the condition in time")
        .expect("client alive")
        .clone();
    h
}

/// Waits for the log to record `machine` entering `state` after `after`;
/// its seq.
async fn logged(d: &Running, machine: &str, state: MachineState, after: u64) -> u64 {
    let mut tip = d.factory.store().log_tip();
    tokio::time::timeout(BOUND, async {
        loop {
            let log = d.factory.store().log_after(after, 10_000).expect("log");
            if let Some(r) = log.iter().find(|r| {
                matches!(&r.event, DomainEvent::MachineState { machine_id, state: s, .. }
                    if machine_id == machine && *s == state)
            }) {
                return r.seq;
            }
            tip.changed().await.expect("store alive");
        }
    })
    .await
    .expect("the state was logged in time")
}

fn state_of(topic: &str, p: &[u8], machine: &str) -> Option<MachineStatePayload> {
    (topic == format!("microfactory/t/machines/{machine}/state"))
        .then(|| serde_json::from_slice(p).ok())
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_of_our_schema_makes_a_machine_produce_and_its_state_is_published_with_the_logs_seq()
 {
    let broker = Broker::start("roundtrip", false);
    let (d, dir) = daemon("roundtrip", &broker).await;
    let mut peer = Peer::connect(&broker, "peer", false, &["microfactory/t/#"]).await;
    health_until(&d, |h| h.connected).await;
    peer.publish(
        "microfactory/t/machines/esp-mill/report",
        r#"{"state":"running","job":"plate.nc","progress":12.5}"#,
    )
    .await;
    let p = peer
        .until(|t, p| {
            state_of(t, p, "esp-mill").filter(|s| s.state == MachineState::Producing)
        })
        .await;
    let log = d.factory.store().log_after(0, 1000).expect("log");
    let rec = log
        .iter()
        .find(|r| r.seq == p.seq)
        .expect("the payload's seq is a log record");
    assert!(matches!(
        &rec.event,
        DomainEvent::MachineState { machine_id, state: MachineState::Producing, .. }
            if machine_id == "esp-mill"
    ));
    let view = d.factory.machine("esp-mill").expect("view");
    assert_eq!(view.machine_state, MachineState::Producing);
    // Read-only: a command answers with an error that says so.
    let err = d
        .factory
        .console("esp-mill", "?")
        .await
        .expect_err("read-only");
    assert!(err.to_string().contains("read-only"), "{err}");
    peer.publish("microfactory/t/machines/esp-mill/report", r#"{"state":"idle"}"#)
        .await;
    peer.until(|t, p| state_of(t, p, "esp-mill").filter(|s| s.state == MachineState::Idle))
        .await;
    d.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn octoprint_plugin_messages_drive_a_machine_through_a_print() {
    let broker = Broker::start("octo", false);
    let (d, dir) = daemon("octo", &broker).await;
    let mut peer = Peer::connect(&broker, "octoprint", false, &["microfactory/t/machines/+/state"]).await;
    health_until(&d, |h| h.connected).await;
    peer.publish("octoPrint/mqtt", "connected").await;
    peer.publish(
        "octoPrint/event/PrintStarted",
        r#"{"_timestamp": 1517190629, "_event": "PrintStarted", "origin": "local", "file": "/home/pi/.octoprint/uploads/case.gco", "filename": "case.gco"}"#,
    )
    .await;
    peer.until(|t, p| state_of(t, p, "octo").filter(|s| s.state == MachineState::Producing))
        .await;
    peer.publish("octoPrint/event/PrintDone", r#"{"filename": "case.gco"}"#)
        .await;
    peer.until(|t, p| state_of(t, p, "octo").filter(|s| s.state == MachineState::Idle))
        .await;
    d.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_subscriber_sees_the_site_online_and_every_machines_retained_state() {
    let broker = Broker::start("late", false);
    let (d, dir) = daemon("late", &broker).await;
    let peer = Peer::connect(&broker, "machine", false, &[]).await;
    health_until(&d, |h| h.connected).await;
    peer.publish("microfactory/t/machines/esp-mill/report", r#"{"state":"paused"}"#)
        .await;
    let paused_seq = logged(&d, "esp-mill", MachineState::Paused, 0).await;
    health_until(&d, |h| h.published_seq >= paused_seq).await;
    let mut late = Peer::connect(&broker, "late", false, &["microfactory/t/#"]).await;
    let status = late
        .until(|t, p| {
            (t == "microfactory/t/status")
                .then(|| serde_json::from_slice::<SiteStatus>(p).ok())
                .flatten()
        })
        .await;
    assert!(status.online);
    let s = late
        .until(|t, p| state_of(t, p, "esp-mill"))
        .await;
    assert_eq!((s.state, s.seq), (MachineState::Paused, paused_seq));
    d.stop().await;
    // The goodbye replaces the retained status.
    let mut after = Peer::connect(&broker, "after", false, &["microfactory/t/status"]).await;
    let status = after
        .until(|_, p| serde_json::from_slice::<SiteStatus>(p).ok())
        .await;
    assert!(!status.online);
    let _ = std::fs::remove_dir_all(dir);
}
