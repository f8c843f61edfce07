//! The MQTT link against a real broker: Debian's `mosquitto`, started by
//! each test on a free port in a temporary folder and killed on drop. The
//! daemon runs in-process (`cli::serve::start`) with machines that report
//! over MQTT; a second client plays the machines and the consumers. The
//! TLS tests give the broker a second listener with a throwaway CA and
//! certificates made by the `openssl` command (.ci/run installs it).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use microfactoryd::cli::serve::{Running, start};
use microfactoryd::config::Config;
use microfactoryd::core::events::DomainEvent;
use microfactoryd::core::machine::MachineState;
use microfactoryd::core::model::Event as FactoryEvent;
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One mosquitto process; restartable on the same port.
struct Broker {
    port: u16,
    dir: PathBuf,
    persistent: bool,
    /// A second listener that speaks TLS: its port and its configuration
    /// lines.
    tls: Option<(u16, String)>,
    child: Option<Child>,
}

impl Broker {
    fn start(name: &str, persistent: bool) -> Self {
        let mut b = Self {
            port: free_port(),
            dir: temp_dir(name),
            persistent,
            tls: None,
            child: None,
        };
        b.spawn();
        b
    }

    /// A broker with a plain listener (for test peers) and a TLS one
    /// with `pki`'s server certificate; with `require_certificate`, TLS
    /// clients must show a certificate of `pki`'s CA.
    fn start_tls(name: &str, pki: &Pki, require_certificate: bool) -> Self {
        let port = free_port();
        let lines = format!(
            "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {require_certificate}\n",
            pki.file("ca.pem").display(),
            pki.file("server.pem").display(),
            pki.file("server.key").display(),
        );
        let mut b = Self {
            port: free_port(),
            dir: temp_dir(name),
            persistent: false,
            tls: Some((port, lines)),
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
        if let Some((_, lines)) = &self.tls {
            text.push_str(lines);
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
        for port in std::iter::once(self.port).chain(self.tls.as_ref().map(|t| t.0)) {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "mosquitto did not listen on {port}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
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

    fn tls_url(&self) -> String {
        let (port, _) = self.tls.as_ref().expect("a TLS listener");
        format!("mqtts://127.0.0.1:{port}")
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
    daemon_with(name, broker, "").await
}

/// The test daemon with `extra` configuration at the end.
async fn daemon_with(name: &str, broker: &Broker, extra: &str) -> (Running, PathBuf) {
    daemon_at(name, &broker.url(), "", extra).await
}

/// The test daemon connecting to `url`, with `mqtt_keys` in its `[mqtt]`
/// table and `extra` configuration at the end.
async fn daemon_at(name: &str, url: &str, mqtt_keys: &str, extra: &str) -> (Running, PathBuf) {
    let dir = temp_dir(&format!("{name}-daemon"));
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            r#"listen = "127.0.0.1:0"
data_dir = "data"
[mqtt]
broker = "{url}"
site = "t"
keep_alive_secs = 5
max_payload_bytes = 1024
progress_interval_ms = 300
{mqtt_keys}
[apc."hook-1".fdm]
mttr_hours_max = 1.0
[[mqtt.machine]]
id = "esp-mill"
profile = "grbl-3018"
adapter = "report"
[[mqtt.machine]]
id = "octo"
profile = "prusa-mk3s"
adapter = "octoprint"
base = "octoPrint"
class = "fdm"
[[mqtt.machine]]
id = "voron"
profile = "prusa-mk3s"
adapter = "moonraker"
base = "voron-1"
[[mqtt.machine]]
id = "bambu"
profile = "prusa-mk3s"
adapter = "bambu"
serial = "01S00A123456789"
{extra}"#
        ),
    )
    .expect("config");
    let checked = Config::load(&path).expect("valid config");
    let store = Store::open(&checked.config.data_dir).expect("store");
    (start(checked, store).await.expect("daemon starts"), dir)
}

async fn health_until(r: &Running, pred: impl Fn(&MqttHealth) -> bool) -> MqttHealth {
    let mut w = r.mqtt().expect("mqtt configured").watch_health();
    tokio::time::timeout(BOUND, w.wait_for(|h| pred(h)))
        .await
        .expect("health reached the condition in time")
        .expect("client alive")
        .clone()
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

/// `GET /api/v1/health` over a plain socket: its JSON body.
async fn http_health(d: &Running) -> serde_json::Value {
    http_health_at(d.addr).await
}

/// `GET /api/v1/health` of the daemon at `addr`.
async fn http_health_at(addr: std::net::SocketAddr) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut answer = String::new();
    c.read_to_string(&mut answer).await.expect("answer");
    let body = answer.split("\r\n\r\n").nth(1).expect("a body");
    serde_json::from_str(body).expect("JSON")
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
    let h = http_health(&d).await;
    assert_eq!(h["mqtt"]["connected"], true, "{h}");
    assert_eq!(h["mqtt"]["broker"], broker.url(), "{h}");
    peer.publish(
        "microfactory/t/machines/esp-mill/report",
        r#"{"state":"running","job":"plate.nc","progress":12.5}"#,
    )
    .await;
    let p = peer
        .until(|t, p| state_of(t, p, "esp-mill").filter(|s| s.state == MachineState::Producing))
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
    peer.publish(
        "microfactory/t/machines/esp-mill/report",
        r#"{"state":"idle"}"#,
    )
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
    let mut peer = Peer::connect(
        &broker,
        "octoprint",
        false,
        &["microfactory/t/machines/+/state"],
    )
    .await;
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
async fn moonraker_and_bambu_printers_that_send_only_what_changed_run_through_a_print() {
    let broker = Broker::start("merge", false);
    let (d, dir) = daemon("merge", &broker).await;
    let mut peer = Peer::connect(
        &broker,
        "hosts",
        false,
        &["microfactory/t/machines/+/state"],
    )
    .await;
    health_until(&d, |h| h.connected).await;
    // Moonraker: the server's retained online, a full status, then only
    // the fields that change, on both the combined and the split topics.
    peer.publish("voron-1/moonraker/status", r#"{"server": "online"}"#)
        .await;
    peer.publish(
        "voron-1/klipper/status",
        r#"{"eventtime": 10.0, "status": {"webhooks": {"state": "ready"}, "print_stats": {"state": "standby", "filename": ""}, "extruder": {"temperature": 24.0, "target": 0.0}}}"#,
    )
    .await;
    peer.until(|t, p| state_of(t, p, "voron").filter(|s| s.state == MachineState::Idle))
        .await;
    peer.publish(
        "voron-1/klipper/status",
        r#"{"eventtime": 11.0, "status": {"print_stats": {"state": "printing", "filename": "hook.gcode"}}}"#,
    )
    .await;
    peer.until(|t, p| state_of(t, p, "voron").filter(|s| s.state == MachineState::Producing))
        .await;
    let mut events = d.factory.subscribe();
    peer.publish(
        "voron-1/klipper/state/virtual_sdcard/progress",
        r#"{"eventtime": 12.0, "value": 0.4}"#,
    )
    .await;
    // Only a field changed: the merged picture keeps the file's name.
    let status = tokio::time::timeout(BOUND, async {
        loop {
            if let Ok(FactoryEvent::Machine { machine }) = events.recv().await
                && machine.id == "voron"
                && machine
                    .status
                    .job
                    .as_ref()
                    .is_some_and(|j| j.percent == 40.0)
            {
                return machine.status;
            }
        }
    })
    .await
    .expect("the progress reached the machine in time");
    assert_eq!(status.job.map(|j| j.job_id), Some("hook.gcode".into()));
    peer.publish(
        "voron-1/klipper/status",
        r#"{"eventtime": 13.0, "status": {"print_stats": {"state": "complete"}}}"#,
    )
    .await;
    peer.until(|t, p| state_of(t, p, "voron").filter(|s| s.state == MachineState::Idle))
        .await;
    // Bambu: a full push_status, then a partial one that says it paused.
    peer.publish(
        "device/01S00A123456789/report",
        r#"{"print": {"command": "push_status", "gcode_state": "RUNNING", "mc_percent": 5, "mc_remaining_time": 80, "subtask_name": "bracket", "nozzle_temper": 220.0, "nozzle_target_temper": 220, "bed_temper": 55.0, "bed_target_temper": 55}}"#,
    )
    .await;
    peer.until(|t, p| state_of(t, p, "bambu").filter(|s| s.state == MachineState::Producing))
        .await;
    peer.publish(
        "device/01S00A123456789/report",
        r#"{"print": {"gcode_state": "PAUSE"}}"#,
    )
    .await;
    peer.until(|t, p| state_of(t, p, "bambu").filter(|s| s.state == MachineState::Paused))
        .await;
    peer.publish(
        "device/01S00A123456789/report",
        r#"{"print": {"gcode_state": "FINISH", "mc_percent": 100}}"#,
    )
    .await;
    peer.until(|t, p| {
        state_of(t, p, "bambu")
            .filter(|s| s.state != MachineState::Paused && s.state != MachineState::Producing)
    })
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
    peer.publish(
        "microfactory/t/machines/esp-mill/report",
        r#"{"state":"paused"}"#,
    )
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
    let s = late.until(|t, p| state_of(t, p, "esp-mill")).await;
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

/// Every machine state seq in the log after `after`.
fn state_seqs(d: &Running, after: u64) -> Vec<u64> {
    d.factory
        .store()
        .log_after(after, 10_000)
        .expect("log")
        .iter()
        .filter(|r| matches!(r.event, DomainEvent::MachineState { .. }))
        .map(|r| r.seq)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_no_transition_made_while_it_was_down() {
    let mut broker = Broker::start("restart", true);
    let (d, dir) = daemon("restart", &broker).await;
    let mut consumer = Peer::connect(&broker, "consumer", true, &["microfactory/t/#"]).await;
    let machine = Peer::connect(&broker, "machine", false, &[]).await;
    health_until(&d, |h| h.connected).await;
    machine
        .publish(
            "microfactory/t/machines/esp-mill/report",
            r#"{"state":"running"}"#,
        )
        .await;
    let producing = logged(&d, "esp-mill", MachineState::Producing, 0).await;
    health_until(&d, |h| h.published_seq >= producing).await;

    broker.stop(true);
    health_until(&d, |h| !h.connected).await;
    // While the broker is down: the machine is unseen (offline), and an
    // operator takes the other one out of service.
    let offline = logged(&d, "esp-mill", MachineState::Offline, producing).await;
    d.factory
        .set_machine("octo", None, Some(true))
        .await
        .expect("disabled");
    let down = logged(&d, "octo", MachineState::PlannedDown, producing).await;
    let during = state_seqs(&d, producing);
    assert!(during.contains(&offline) && during.contains(&down));

    broker.spawn();
    let last = *during.iter().max().expect("some");
    health_until(&d, |h| h.connected && h.published_seq >= last).await;
    // The consumer's session survived the restart: it gets every
    // transition, in any order and perhaps twice, never fewer.
    let mut seen = std::collections::BTreeSet::new();
    let want: std::collections::BTreeSet<u64> = during.iter().copied().collect();
    while !want.is_subset(&seen) {
        let p = consumer
            .until(|t, p| {
                t.ends_with("/state")
                    .then(|| serde_json::from_slice::<MachineStatePayload>(p).ok())
                    .flatten()
            })
            .await;
        seen.insert(p.seq);
    }
    d.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_forgot_everything_gets_every_machines_state_again() {
    let mut broker = Broker::start("forgetful", false);
    let (d, dir) = daemon("forgetful", &broker).await;
    health_until(&d, |h| h.connected).await;
    health_until(&d, |h| h.published_seq > 0).await;
    broker.stop(false);
    health_until(&d, |h| !h.connected).await;
    broker.spawn();
    health_until(&d, |h| h.connected && h.since_ms.is_some()).await;
    let mut late = Peer::connect(&broker, "late", false, &["microfactory/t/#"]).await;
    let mut machines = std::collections::BTreeMap::new();
    while machines.len() < 2 {
        let p = late
            .until(|t, p| {
                t.ends_with("/state")
                    .then(|| serde_json::from_slice::<MachineStatePayload>(p).ok())
                    .flatten()
            })
            .await;
        machines.insert(p.machine_id.clone(), p.seq);
    }
    for (id, seq) in &machines {
        let last = d
            .factory
            .machine_states(id, 0, u64::MAX)
            .expect("states")
            .last()
            .map(|c| c.seq);
        assert_eq!(Some(*seq), last, "{id}: the retained state is its latest");
    }
    d.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_payloads_is_counted_creates_nothing_and_the_daemon_stays_healthy() {
    let broker = Broker::start("flood", false);
    let (d, dir) = daemon("flood", &broker).await;
    let peer = Peer::connect(&broker, "flooder", false, &[]).await;
    health_until(&d, |h| h.connected).await;
    let before = *d.factory.store().log_tip().borrow();
    let report = "microfactory/t/machines/esp-mill/report";
    for i in 0..300 {
        let bad = match i % 5 {
            0 => "{".to_string(),
            1 => r#"{"state":"dancing"}"#.into(),
            2 => r#"{"state":"running","progress":1e308}"#.into(),
            3 => format!(
                r#"{{"state":"idle","heaters":[{{"name":"{}","actual":1}}]}}"#,
                "x".repeat(200)
            ),
            _ => "\u{0}\u{1}".into(),
        };
        peer.publish(report, bad).await;
    }
    for _ in 0..100 {
        peer.publish(report, vec![b' '; 2048]).await;
        peer.publish(
            "microfactory/t/machines/ghost/report",
            r#"{"state":"idle"}"#,
        )
        .await;
    }
    for _ in 0..50 {
        peer.publish("octoPrint/progress/printing", r#"{"progress":"most"}"#)
            .await;
    }
    let h = health_until(&d, |h| h.malformed + h.oversized + h.unknown_machine >= 550).await;
    assert_eq!(
        (h.malformed, h.oversized, h.unknown_machine),
        (350, 100, 100)
    );
    assert_eq!(h.accepted, 0);
    assert!(h.connected && h.failures == 0, "{h:?}");
    assert!(
        state_seqs(&d, before).is_empty(),
        "refused payloads created records"
    );
    // Still listening.
    peer.publish(report, r#"{"state":"idle"}"#).await;
    logged(&d, "esp-mill", MachineState::Idle, before).await;
    d.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_back_off_exponentially_instead_of_storming_a_broker_that_is_down() {
    let mut broker = Broker::start("backoff", false);
    let (d, dir) = daemon("backoff", &broker).await;
    health_until(&d, |h| h.connected).await;
    broker.stop(false);
    let mut w = d.mqtt().expect("mqtt").watch_health();
    let mut waits = Vec::new();
    tokio::time::timeout(BOUND, async {
        while waits.len() < 4 {
            w.changed().await.expect("client alive");
            let h = w.borrow_and_update().clone();
            if let Some(r) = h.retry_in_ms
                && h.failures as usize > waits.len()
            {
                waits.push(r);
            }
        }
    })
    .await
    .expect("four failed attempts in time");
    // Equal jitter over doubling ceilings (500 ms first): each wait is at
    // least the one before, and the fourth at least 2 s.
    assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
    assert!(waits[0] >= 250 && waits[3] >= 2000, "{waits:?}");
    d.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_jobs_progress_and_temperatures_reach_its_retained_state_throttled() {
    let broker = Broker::start("live", false);
    let (d, dir) = daemon("live", &broker).await;
    let mut peer =
        Peer::connect(&broker, "peer", false, &["microfactory/t/machines/+/state"]).await;
    health_until(&d, |h| h.connected).await;
    let report = |p: f64| {
        format!(
            r#"{{"state":"running","job":"plate.nc","progress":{p},
               "heaters":[{{"name":"T0","actual":201.04,"target":210}}]}}"#
        )
    };
    peer.publish("microfactory/t/machines/esp-mill/report", report(12.5))
        .await;
    let first = peer
        .until(|t, p| {
            state_of(t, p, "esp-mill")
                .filter(|s| s.live.as_ref().and_then(|l| l.progress) == Some(12.5))
        })
        .await;
    assert_eq!(first.state, MachineState::Producing);
    let live = first.live.clone().expect("readings");
    assert_eq!(live.job.as_deref(), Some("plate.nc"));
    assert_eq!(live.heaters[0].actual, 201.0, "rounded to a tenth");
    for p in [20.0, 30.0, 40.0] {
        peer.publish("microfactory/t/machines/esp-mill/report", report(p))
            .await;
    }
    let last = peer
        .until(|t, p| {
            state_of(t, p, "esp-mill")
                .filter(|s| s.live.as_ref().and_then(|l| l.progress) == Some(40.0))
        })
        .await;
    // Same state record, newer readings, at least the interval apart.
    assert_eq!(last.seq, first.seq);
    let gap = last.live.expect("readings").updated_ms - live.updated_ms;
    assert!(gap >= 300, "readings {gap} ms apart");
    // Retained: a late subscriber gets the readings at once.
    let mut late = Peer::connect(
        &broker,
        "late",
        false,
        &["microfactory/t/machines/esp-mill/state"],
    )
    .await;
    let kept = late.until(|t, p| state_of(t, p, "esp-mill")).await;
    assert_eq!(kept.live.and_then(|l| l.progress), Some(40.0));
    d.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_levels_and_apc_verdicts_are_retained_and_follow_the_units_made() {
    use microfactoryd::core::model::QcState;
    use microfactoryd::metering::model::Unit;
    use microfactoryd::mqtt::schema::InventoryPayload;
    use microfactoryd::store::Batch;
    let broker = Broker::start("stock", false);
    let (d, dir) = daemon("stock", &broker).await;
    let mut peer = Peer::connect(
        &broker,
        "peer",
        false,
        &["microfactory/t/inventory/#", "microfactory/t/apc/#"],
    )
    .await;
    health_until(&d, |h| h.connected).await;
    let apc = |t: &str, p: &[u8]| {
        (t == "microfactory/t/apc/hook-1/fdm")
            .then(|| serde_json::from_slice::<serde_json::Value>(p).ok())
            .flatten()
    };
    // The verdict is published at connection, before any unit.
    let before = peer.until(apc).await;
    assert_eq!(before["units_produced"], 0, "{before}");
    // Metering's record of two units made on the class's machine, as its
    // log reader writes them: commerce then counts them in stock.
    let unit = |n: u32, qc: QcState| Unit {
        serial: format!("MF-T-{n}"),
        sku: "hook-1".into(),
        order_id: 1,
        job_id: 1,
        attempt: 1,
        index: n,
        machine_id: "octo".into(),
        gcode_sha256: "0".repeat(64),
        started_ms: Some(microfactoryd::clock::now_ms() - 60_000),
        ended_ms: microfactoryd::clock::now_ms(),
        planned_runtime_ms: 30_000,
        credited_runtime_ms: 30_000,
        qc,
        first_pass: (qc == QcState::Pass).then_some(true),
        reworked: false,
        qc_history: Vec::new(),
    };
    let units = vec![unit(1, QcState::Pass), unit(2, QcState::Pending)];
    let events = units
        .iter()
        .map(|u| DomainEvent::UnitMade {
            serial: u.serial.clone(),
            sku: u.sku.clone(),
            order_id: 1,
            job_id: 1,
            attempt: 1,
            machine_id: u.machine_id.clone(),
            qc: u.qc,
        })
        .collect();
    let store = d.factory.store();
    let mut batch = Batch {
        events,
        ..Batch::default()
    };
    // Metrics and APC read units through metering's hour and day records,
    // written with the units.
    d.metering()
        .count_units(&units, &[], &mut batch)
        .expect("counted");
    batch.units = units;
    store
        .commit(&batch, microfactoryd::clock::now_ms())
        .expect("commit");
    store.flush().await.expect("flush");
    // Either may come first: commerce reads the units from the log too.
    let (mut levels, mut after) = (None::<InventoryPayload>, None::<serde_json::Value>);
    while levels.is_none() || after.is_none() {
        let (t, p) = peer.until(|t, p| Some((t.to_string(), p.to_vec()))).await;
        if t == "microfactory/t/inventory/hook-1" {
            let l: InventoryPayload = serde_json::from_slice(&p).expect("levels decode");
            if l.on_hand == 2 {
                levels = Some(l);
            }
        } else if let Some(v) = apc(&t, &p).filter(|v| v["units_produced"] == 2) {
            after = Some(v);
        }
    }
    let (levels, after) = (levels.expect("levels"), after.expect("verdict"));
    assert_eq!((levels.available, levels.unavailable), (1, 1));
    let seq = levels.seq.expect("from the log");
    let log = store.log_after(seq - 1, 1).expect("log");
    assert!(matches!(&log[0].event, DomainEvent::StockChanged { sku, .. } if sku == "hook-1"));
    let now = d
        .metering()
        .apc(microfactoryd::metering::oee::Window {
            from_ms: 0,
            to_ms: u64::MAX,
        })
        .expect("apc");
    let expected = serde_json::to_value(now[0].evaluation.verdict).expect("verdict");
    assert_eq!(after["verdict"], expected, "{after}");
    // Both are retained for a late subscriber.
    let mut late = Peer::connect(
        &broker,
        "late",
        false,
        &[
            "microfactory/t/inventory/hook-1",
            "microfactory/t/apc/hook-1/fdm",
        ],
    )
    .await;
    let mut seen = (false, false);
    while seen != (true, true) {
        let (t, _) = late.until(|t, p| Some((t.to_string(), p.to_vec()))).await;
        seen.0 |= t.ends_with("inventory/hook-1");
        seen.1 |= t.ends_with("apc/hook-1/fdm");
    }
    d.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Waits for the first log record after `after` that `pick` accepts.
async fn log_until<T>(d: &Running, after: u64, pick: impl Fn(&DomainEvent) -> Option<T>) -> T {
    let mut tip = d.factory.store().log_tip();
    tokio::time::timeout(BOUND, async {
        loop {
            let log = d.factory.store().log_after(after, 10_000).expect("log");
            if let Some(v) = log.iter().find_map(|r| pick(&r.event)) {
                return v;
            }
            tip.changed().await.expect("store alive");
        }
    })
    .await
    .expect("the record was logged in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_print_of_a_products_file_finished_on_an_octoprint_printer_makes_the_orders_units() {
    use microfactoryd::core::model::JobState;
    // A serial printer (never connected) lets the order queue its job;
    // the OctoPrint printer's host then prints that file.
    let broker = Broker::start("units", false);
    let (d, dir) = daemon_with(
        "units",
        &broker,
        "[[machine]]\nid = \"mk3\"\nprofile = \"prusa-mk3s\"\nport = \"/nonexistent/mk3\"\n",
    )
    .await;
    let mut peer = Peer::connect(&broker, "peer", false, &["microfactory/t/events/#"]).await;
    health_until(&d, |h| h.connected).await;
    let mut up = d.factory.upload().expect("upload");
    up.push(b"G28\nG1 X10 Y10 F3000\nG1 X20 E1\n")
        .expect("bytes");
    let (file, _) = d
        .factory
        .add_file(up, "hook.gcode".into())
        .await
        .expect("file");
    d.metering()
        .create_product(
            serde_json::from_value(serde_json::json!({
                "sku": "hook-1", "name": "Hook", "file_id": file.id, "units_per_job": 2
            }))
            .expect("product input"),
        )
        .await
        .expect("product");
    let order = d
        .metering()
        .create_order(
            serde_json::from_value(serde_json::json!({"sku": "hook-1", "quantity": 2}))
                .expect("order input"),
        )
        .await
        .expect("order");
    let tip = *d.factory.store().log_tip().borrow();
    // Its host prints a file of another name first: nothing is adopted.
    peer.publish(
        "octoPrint/event/PrintStarted",
        r#"{"name":"bracket.gcode"}"#,
    )
    .await;
    let busy = logged(&d, "octo", MachineState::Producing, tip).await;
    peer.publish("octoPrint/event/PrintDone", r#"{"name":"bracket.gcode"}"#)
        .await;
    logged(&d, "octo", MachineState::Idle, busy).await;
    // Then the product's file, under the path OctoPrint gives it.
    peer.publish(
        "octoPrint/event/PrintStarted",
        r#"{"name":"hook.gcode","path":"jobs/hook.gcode"}"#,
    )
    .await;
    let job = log_until(&d, tip, |e| match e {
        DomainEvent::JobState {
            job_id,
            state: JobState::Running,
            machine_id: Some(m),
            ..
        } if m == "octo" => Some(*job_id),
        _ => None,
    })
    .await;
    assert_eq!(order.queued[0].id, job, "the order's queued job");
    peer.publish("octoPrint/event/PrintDone", r#"{"name":"hook.gcode"}"#)
        .await;
    // Two units of the order, made on the OctoPrint printer, also on the
    // broker as events.
    let mut serials = Vec::new();
    while serials.len() < 2 {
        let v: serde_json::Value = peer
            .until(|t, p| {
                (t == "microfactory/t/events/unit_made")
                    .then(|| serde_json::from_slice(p).ok())
                    .flatten()
            })
            .await;
        assert_eq!(
            (v["machine_id"].as_str(), v["job_id"].as_u64()),
            (Some("octo"), Some(job)),
            "{v}"
        );
        assert_eq!(v["sku"], "hook-1", "{v}");
        serials.push(v["serial"].as_str().expect("serial").to_string());
    }
    let j = d.factory.job(job).expect("job");
    assert_eq!(j.state, JobState::Completed);
    let unit = d.metering().unit(&serials[0]).expect("unit");
    assert_eq!(
        (unit.order_id, unit.machine_id.as_str()),
        (order.view.order.id, "octo")
    );
    // No job was made of the other file's print.
    let log = d.factory.store().log_after(tip, 10_000).expect("log");
    let adopted = log
        .iter()
        .filter(|r| {
            matches!(
                &r.event,
                DomainEvent::JobState {
                    state: JobState::Running,
                    ..
                }
            )
        })
        .count();
    assert_eq!(adopted, 1);
    d.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

// ------------------------------------------------------------------ TLS

/// A throwaway PKI for one test, made by the `openssl` command: a CA
/// (`ca.pem`) that signed the broker's certificate (`server.pem`, for
/// 127.0.0.1 and localhost) and a client certificate (`client.pem`), and
/// a second CA (`other-ca.pem`) that signed nothing of the broker's. Keys
/// are PKCS#8 PEM (`openssl req` writes that form).
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Self {
        let dir = temp_dir(&format!("{name}-pki"));
        let pki = Self { dir };
        const EC: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        for ca in ["ca", "other-ca"] {
            pki.openssl(&format!(
                "req -x509 {EC} -days 2 -subj /CN=mfd-test-{ca} -keyout {ca}.key -out {ca}.pem"
            ));
        }
        for (leaf, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
            std::fs::write(
                pki.file(&format!("{leaf}.ext")),
                format!(
                    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n\
                     extendedKeyUsage={usage}\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
                ),
            )
            .expect("extensions");
            pki.openssl(&format!(
                "req -new {EC} -subj /CN=mfd-test-{leaf} -keyout {leaf}.key -out {leaf}.csr"
            ));
            pki.openssl(&format!(
                "x509 -req -days 2 -in {leaf}.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                 -extfile {leaf}.ext -out {leaf}.pem"
            ));
        }
        // mosquitto started as root reads its key as the mosquitto user
        // (it drops privileges first); openssl wrote it for root alone.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(
            pki.file("server.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        pki
    }

    /// Runs `openssl` with `args` (split at spaces) in the PKI's folder.
    fn openssl(&self, args: &str) {
        let out = Command::new("openssl")
            .args(args.split_whitespace())
            .current_dir(&self.dir)
            .output()
            .expect("the openssl command is installed (.ci/run installs it)");
        assert!(
            out.status.success(),
            "openssl {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `[mqtt]` lines naming these files.
    fn keys(&self, ca: &str, client: bool) -> String {
        let mut k = format!("ca_file = {:?}\n", self.file(ca));
        if client {
            k.push_str(&format!(
                "client_cert_file = {:?}\nclient_key_file = {:?}\n",
                self.file("client.pem"),
                self.file("client.key")
            ));
        }
        k
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn site_online(topic: &str, p: &[u8]) -> Option<SiteStatus> {
    (topic == "microfactory/t/status")
        .then(|| serde_json::from_slice::<SiteStatus>(p).ok())
        .flatten()
        .filter(|s| s.online)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_daemon_connects_and_a_subscriber_sees_its_retained_online_status() {
    let pki = Pki::new("tls-ok");
    let broker = Broker::start_tls("tls-ok", &pki, false);
    let (d, dir) = daemon_at("tls-ok", &broker.tls_url(), &pki.keys("ca.pem", false), "").await;
    let h = health_until(&d, |h| h.connected).await;
    assert_eq!(h.broker, broker.tls_url());
    // A peer on the broker's plain listener: the status the daemon sent
    // through the TLS listener is retained for it.
    let mut peer = Peer::connect(&broker, "peer", false, &["microfactory/t/status"]).await;
    let status = peer.until(site_online).await;
    assert_eq!(status.machines, Some(4));
    let h = http_health(&d).await;
    assert_eq!(h["mqtt"]["connected"], true, "{h}");
    assert_eq!(h["mqtt"]["broker"], broker.tls_url(), "{h}");
    d.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_of_another_ca_is_refused_with_the_reason_in_health_and_backoff() {
    let pki = Pki::new("tls-wrong-ca");
    let broker = Broker::start_tls("tls-wrong-ca", &pki, false);
    let (d, dir) = daemon_at(
        "tls-wrong-ca",
        &broker.tls_url(),
        &pki.keys("other-ca.pem", false),
        "",
    )
    .await;
    let h = health_until(&d, |h| h.failures >= 2).await;
    assert!(!h.connected, "{h:?}");
    let error = h.last_error.clone().unwrap_or_default();
    assert!(error.contains("certificate verify failed"), "{error}");
    // Still waiting between attempts: the second wait is at least 500 ms.
    assert!(h.retry_in_ms.is_some_and(|r| r >= 500), "{h:?}");
    // The daemon serves on, and says why over HTTP too.
    let json = http_health(&d).await;
    assert_eq!(json["mqtt"]["connected"], false, "{json}");
    assert!(
        json["mqtt"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("certificate verify failed")),
        "{json}"
    );
    d.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_requires_a_client_certificate_takes_ours_and_refuses_a_daemon_without() {
    let pki = Pki::new("tls-mutual");
    let broker = Broker::start_tls("tls-mutual", &pki, true);
    let (with, with_dir) = daemon_at(
        "tls-mutual-with",
        &broker.tls_url(),
        &pki.keys("ca.pem", true),
        "",
    )
    .await;
    health_until(&with, |h| h.connected).await;
    let mut peer = Peer::connect(&broker, "peer", false, &["microfactory/t/status"]).await;
    peer.until(site_online).await;
    with.stop().await;
    let (without, without_dir) = daemon_at(
        "tls-mutual-without",
        &broker.tls_url(),
        &pki.keys("ca.pem", false),
        "",
    )
    .await;
    let h = health_until(&without, |h| h.failures >= 1).await;
    assert!(!h.connected, "{h:?}");
    // The broker resets the connection after the handshake (TLS 1.3):
    // health says what that most likely means.
    let error = h.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("set mqtt.client_cert_file and mqtt.client_key_file"),
        "{error}"
    );
    assert!(h.since_ms.is_none(), "{h:?}");
    without.stop().await;
    let _ = std::fs::remove_dir_all(with_dir);
    let _ = std::fs::remove_dir_all(without_dir);
}

/// `microfactoryd check-config` on `[mqtt]` with `mqtt_keys`: exit code
/// and what it printed.
fn check_config(name: &str, mqtt_keys: &str) -> (Option<i32>, String) {
    let dir = temp_dir(name);
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = \"data\"\n[mqtt]\nbroker = \"mqtts://127.0.0.1:8883\"\nsite = \"t\"\n{mqtt_keys}"
        ),
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_microfactoryd"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("runs");
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code(),
        text.replace(&dir.display().to_string(), "<dir>"),
    )
}

#[test]
fn check_config_names_a_missing_ca_file_by_its_key_and_path() {
    let (code, text) = check_config("tls-check-missing", "ca_file = \"certs/ca.pem\"\n");
    assert_eq!(code, Some(78), "{text}");
    assert!(
        text.contains("mqtt.ca_file '<dir>/certs/ca.pem': cannot read it: No such file"),
        "{text}"
    );
}

#[test]
fn check_config_reads_the_tls_files_and_refuses_a_key_that_is_not_the_certificates() {
    let pki = Pki::new("tls-check");
    let (code, text) = check_config("tls-check-good", &pki.keys("ca.pem", true));
    assert_eq!(code, Some(0), "{text}");
    let said = format!(
        "mqtt: site 't' on mqtts://127.0.0.1:8883 (TLS, trusting {}; client certificate {})",
        pki.file("ca.pem").display(),
        pki.file("client.pem").display()
    );
    assert!(text.contains(&said), "{said} in {text}");
    let swapped = format!(
        "ca_file = {:?}\nclient_cert_file = {:?}\nclient_key_file = {:?}\n",
        pki.file("ca.pem"),
        pki.file("client.pem"),
        pki.file("server.key")
    );
    let (code, text) = check_config("tls-check-swapped", &swapped);
    assert_eq!(code, Some(78), "{text}");
    assert!(text.contains("is the key the certificate's?"), "{text}");
    let credentials = format!(
        "username = \"u\"\npassword = \"p\"\n{}",
        pki.keys("ca.pem", false)
    );
    let (code, text) = check_config("tls-check-credentials", &credentials);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        !text.contains("in clear"),
        "TLS carries credentials: {text}"
    );
}

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_publishes_over_tls_to_a_broker_that_the_systems_roots_trust() {
    let pki = Pki::new("tls-demo");
    let broker = Broker::start_tls("tls-demo", &pki, false);
    let mut peer = Peer::connect(&broker, "peer", false, &["microfactory/demo/status"]).await;
    let data = temp_dir("tls-demo-data");
    let demo = Killed(
        Command::new(env!("CARGO_BIN_EXE_microfactoryd"))
            .args(["--demo", "--listen", "127.0.0.1:0", "--mqtt"])
            .arg(broker.tls_url())
            .arg("--data-dir")
            .arg(&data)
            // OpenSSL's own variable for the system's roots, honoured as by
            // any OpenSSL program: the throwaway CA stands in for them.
            .env("SSL_CERT_FILE", pki.file("ca.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the demo starts"),
    );
    let status = peer
        .until(|t, p| {
            (t == "microfactory/demo/status")
                .then(|| serde_json::from_slice::<SiteStatus>(p).ok())
                .flatten()
                .filter(|s| s.online)
        })
        .await;
    // Three simulated machines and one per MQTT adapter.
    assert_eq!(status.machines, Some(7), "{status:?}");
    drop(demo);
    let _ = std::fs::remove_dir_all(data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_replaces_the_systems_roots_instead_of_adding_to_them() {
    use std::io::BufRead as _;
    let pki = Pki::new("tls-pinned");
    let broker = Broker::start_tls("tls-pinned", &pki, false);
    let dir = temp_dir("tls-pinned-daemon");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n[mqtt]\nbroker = \"{}\"\nsite = \"t\"\n{}",
            broker.tls_url(),
            pki.keys("other-ca.pem", false)
        ),
    )
    .expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_microfactoryd"))
        .arg("--config")
        .arg(&config)
        // The broker's CA among the system's roots: trusted by the demo
        // above, but not here, where ca_file names another CA.
        .env("SSL_CERT_FILE", pki.file("ca.pem"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the daemon starts");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the daemon prints its address");
    let _daemon = Killed(child);
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("an address in {line:?}"));
    // Another process: its health is read over HTTP until it has failed.
    let h = tokio::time::timeout(BOUND, async {
        loop {
            let h = http_health_at(addr).await;
            if h["mqtt"]["failures"].as_u64() >= Some(1) {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a failed attempt in time");
    assert_eq!(h["mqtt"]["connected"], false, "{h}");
    assert!(
        h["mqtt"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("certificate verify failed")),
        "{h}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
