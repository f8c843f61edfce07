//! Harness for the end-to-end tests: the real `microfactoryd` binary as a
//! child process, serving simulated machines that run in the test process
//! on real pseudo-terminals, with a temporary data directory and a port
//! chosen by the OS.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use microfactory_machines::profile::Profile;
use microfactory_machines::sim::{self, FirmwareKind, SimConfig, SimHandle};
use microfactory_protocol::framing::clean_line;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub mod mosquitto;

/// The daemon binary under test: `MICROFACTORYD_BIN` if set, otherwise the
/// one `cargo build --workspace --bin microfactoryd` makes, built once per
/// test process.
///
/// Why build it here: this crate cannot depend on a binary, so `cargo test
/// -p microfactory-e2e` alone builds no `microfactoryd`, and whatever an
/// older build left in `target/` would be tested instead of the current
/// source. Cargo releases its build lock before it runs tests, so the
/// nested build does not wait for the outer one; it is a no-op when the
/// binary is fresh (e.g. under `cargo test --workspace`). The profile is
/// the test binary's own (its directory name under `target/`).
pub fn daemon_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("MICROFACTORYD_BIN") {
            return p.into();
        }
        build_daemon().unwrap_or_else(|e| panic!("building microfactoryd for the tests: {e:#}"))
    })
    .clone()
}

fn build_daemon() -> Result<PathBuf> {
    // target/<profile>/deps/<test binary>
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .context("test binary is not under target/<profile>/deps")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    // `--workspace` resolves features as `cargo test --workspace` does, so
    // after it this build is a no-op rather than a second set of crates.
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "--workspace",
        "--bin",
        "microfactoryd",
        "--message-format=json-render-diagnostics",
    ]);
    if profile_dir != "debug" {
        cmd.args(["--profile", profile_dir]);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("run cargo build")?;
    if !out.status.success() {
        bail!("cargo build -p microfactoryd failed: {}", out.status);
    }
    // The artifact message names the executable, wherever the target
    // directory is.
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["name"] == "microfactoryd"
            && let Some(exe) = msg["executable"].as_str()
        {
            return Ok(exe.into());
        }
    }
    bail!("cargo build reported no microfactoryd executable")
}

/// A file of the repository's real G-code (`tests/data/gcode`).
pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/gcode")
        .join(name)
}

/// The commands of a G-code file as a firmware log records them.
pub fn source_commands(path: &Path) -> Vec<String> {
    commands_of(&std::fs::read_to_string(path).expect("read source"))
}

/// The commands of G-code text as a firmware log records them.
pub fn commands_of(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut clean = String::new();
    for raw in text.lines() {
        clean_line(raw, 256, &mut clean).expect("clean");
        if !clean.is_empty() {
            out.push(clean.clone());
        }
    }
    out
}

/// What the simulator executed for jobs, without the host's own commands
/// (handshake, polling, completion checks).
pub fn executed(log: &Path) -> Vec<String> {
    const HOST: [&str; 7] = ["M110", "M115", "M155", "M105", "M400", "$I", "$$"];
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            !HOST
                .iter()
                .any(|p| *l == *p || l.starts_with(&format!("{p} ")))
        })
        .map(str::to_string)
        .collect()
}

/// Waits until the simulator's log satisfies `pred`. The log is a file the
/// simulator appends to as it executes; there is no event to await, so it
/// is polled, with a deadline.
pub async fn wait_log(
    log: &Path,
    limit: Duration,
    pred: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let lines = executed(log);
        if pred(&lines) {
            return lines;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "log {} never matched; tail: {:?}",
                log.display(),
                &lines[lines.len().saturating_sub(10)..]
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory.
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "mfd-e2e-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A machine to simulate.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    /// Id in the daemon's configuration.
    pub id: &'static str,
    /// Built-in profile.
    pub profile: &'static str,
    /// Tags.
    pub tags: Vec<&'static str>,
    /// Name shown to operators (the id when `None`).
    pub name: Option<&'static str>,
    /// Needs "bed cleared" after each job.
    pub require_bed_clear: bool,
    /// Simulated time speed-up.
    pub time_scale: f64,
    /// Extra simulator settings.
    pub tweak: fn(&mut SimConfig),
}

impl MachineSpec {
    /// A printer with a given profile.
    pub fn printer(id: &'static str, profile: &'static str) -> Self {
        Self {
            id,
            profile,
            tags: vec![],
            name: None,
            require_bed_clear: false,
            time_scale: 200.0,
            tweak: |_| {},
        }
    }

    /// A GRBL mill.
    pub fn mill(id: &'static str) -> Self {
        Self::printer(id, "grbl-3018")
    }

    fn firmware(&self) -> FirmwareKind {
        if self.profile.starts_with("grbl") {
            FirmwareKind::Grbl
        } else {
            FirmwareKind::Marlin
        }
    }
}

/// A simulated machine and its executed-lines log.
pub struct Sim {
    /// Its spec.
    pub spec: MachineSpec,
    /// The running simulator.
    pub handle: SimHandle,
    /// Ground truth of executed commands.
    pub log: PathBuf,
}

/// The daemon under test with its machines.
pub struct Factory {
    /// Data directory, config and logs.
    pub dir: TempDir,
    /// The simulators.
    pub sims: Vec<Sim>,
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub base: String,
    /// An operator token.
    pub token: String,
    /// A viewer token.
    pub viewer: String,
    child: Option<Child>,
    /// HTTP client.
    pub http: reqwest::Client,
}

impl Factory {
    /// Starts simulators and the daemon.
    pub async fn start(specs: &[MachineSpec]) -> Result<Self> {
        Self::start_with(specs, "").await
    }

    /// Starts simulators and the daemon with extra top-level config lines.
    pub async fn start_with(specs: &[MachineSpec], extra: &str) -> Result<Self> {
        let dir = TempDir::new("factory");
        let mut sims = Vec::new();
        let mut config = format!("listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n{extra}\n");
        for spec in specs {
            let log = dir.path().join(format!("{}.log", spec.id));
            let link = dir.path().join(format!("{}.tty", spec.id));
            let mut cfg = SimConfig::new(spec.firmware());
            cfg.name = spec.id.into();
            cfg.time_scale = spec.time_scale;
            cfg.log = Some(log.clone());
            cfg.link = Some(link.clone());
            cfg.rx_buffer = Profile::builtin(spec.profile)?.rx_buffer;
            (spec.tweak)(&mut cfg);
            let handle = sim::spawn(cfg).await.context("sim")?;
            config.push_str(&format!(
                "[[machine]]\nid = \"{}\"\nprofile = \"{}\"\nport = \"{}\"\ntags = {:?}\nrequire_bed_clear = {}\n",
                spec.id,
                spec.profile,
                link.display(),
                spec.tags,
                spec.require_bed_clear
            ));
            if let Some(name) = spec.name {
                config.push_str(&format!("name = {name:?}\n"));
            }
            sims.push(Sim {
                spec: spec.clone(),
                handle,
                log,
            });
        }
        std::fs::write(dir.path().join("config.toml"), config)?;
        let token = Self::token_create(dir.path(), "operator")?;
        let viewer = Self::token_create(dir.path(), "viewer")?;
        let mut f = Self {
            dir,
            sims,
            base: String::new(),
            token,
            viewer,
            child: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
        };
        f.launch().await?;
        Ok(f)
    }

    /// Creates a token of `role` with `microfactoryd token create` for the
    /// factory in `dir`. sled allows one process at a time, so this works
    /// only while the daemon is stopped (before `launch`, after `terminate`).
    pub fn token_create(dir: &Path, role: &str) -> Result<String> {
        let out = std::process::Command::new(daemon_bin())
            .args(["token", "create", "--role", role, "--name"])
            .arg(format!("test {role}"))
            .arg("--config")
            .arg(dir.join("config.toml"))
            .output()?;
        if !out.status.success() {
            bail!("token create: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    /// Starts (or restarts) the daemon process.
    pub async fn launch(&mut self) -> Result<()> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))?;
        let mut child = Command::new(daemon_bin())
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .env("MICROFACTORYD_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .context("spawn microfactoryd")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("daemon did not start within 30 s")??
            .ok_or_else(|| anyhow!("daemon exited: see {}", self.dir.path().display()))?;
        self.base = line
            .strip_prefix("listening on ")
            .ok_or_else(|| anyhow!("unexpected first line: {line}"))?
            .to_string();
        // Keep draining stdout so the daemon never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
        Ok(())
    }

    /// Starts the daemon again on the address it had, as a restart by
    /// systemd would, so open pages can reconnect.
    pub async fn relaunch_same_port(&mut self) -> Result<()> {
        let addr = self
            .base
            .strip_prefix("http://")
            .context("base")?
            .to_string();
        let path = self.dir.path().join("config.toml");
        let text = std::fs::read_to_string(&path)?;
        let text = text.replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{addr}\""),
            1,
        );
        std::fs::write(&path, text)?;
        self.launch().await
    }

    /// `kill -9`.
    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    /// SIGTERM and wait for the exit status.
    pub async fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let mut c = self.child.take().context("not running")?;
        let pid = c.id().context("pid")?;
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        Ok(tokio::time::timeout(Duration::from_secs(30), c.wait()).await??)
    }

    /// The simulator of machine `id`.
    pub fn sim(&self, id: &str) -> &Sim {
        self.sims.iter().find(|s| s.spec.id == id).expect("sim")
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    /// GET as the operator.
    pub async fn get(&self, path: &str) -> Result<(StatusCode, Value)> {
        self.send(self.http.get(self.url(path)), Some(&self.token))
            .await
    }

    /// POST JSON as the operator.
    pub async fn post(&self, path: &str, body: Value) -> Result<(StatusCode, Value)> {
        self.send(
            self.http.post(self.url(path)).json(&body),
            Some(&self.token),
        )
        .await
    }

    /// Any request with an optional bearer token; the body parsed as JSON
    /// (`null` when empty).
    pub async fn send(
        &self,
        req: reqwest::RequestBuilder,
        token: Option<&str>,
    ) -> Result<(StatusCode, Value)> {
        let req = match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let res = req.send().await?;
        let status = res.status();
        let bytes = res.bytes().await?;
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&bytes)))?
        };
        Ok((status, v))
    }

    /// A request builder for `method path`.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path))
    }

    /// Uploads a file; returns status and body.
    pub async fn upload_bytes(&self, name: &str, bytes: Vec<u8>) -> Result<(StatusCode, Value)> {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(name.to_string());
        let form = reqwest::multipart::Form::new().part("file", part);
        self.send(
            self.http.post(self.url("/files")).multipart(form),
            Some(&self.token),
        )
        .await
    }

    /// Uploads a file from disk and returns its id.
    pub async fn upload(&self, path: &Path) -> Result<String> {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (status, v) = self.upload_bytes(&name, std::fs::read(path)?).await?;
        if !status.is_success() {
            bail!("upload {name}: {status} {v}");
        }
        Ok(v["id"].as_str().context("id")?.to_string())
    }

    /// Submits a job; returns the created jobs' ids.
    pub async fn submit(&self, body: Value) -> Result<Vec<u64>> {
        let (status, v) = self.post("/jobs", body).await?;
        if status != StatusCode::CREATED {
            bail!("submit: {status} {v}");
        }
        Ok(v["jobs"]
            .as_array()
            .context("jobs")?
            .iter()
            .filter_map(|j| j["id"].as_u64())
            .collect())
    }

    /// Follows the durable log from `after` (long-polling `GET /log?wait=`)
    /// until an entry satisfies `pred`; returns it. For what the daemon's
    /// log readers make (units, allocations), which no live event shows.
    pub async fn await_log(
        &self,
        mut after: u64,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (status, entries) = self
                .get(&format!("/log?after={after}&wait=5&limit=1000"))
                .await?;
            if status != StatusCode::OK {
                bail!("GET /log answered {status}: {entries}");
            }
            for e in entries.as_array().into_iter().flatten() {
                if pred(e) {
                    return Ok(e.clone());
                }
                after = after.max(e["seq"].as_u64().unwrap_or(after));
            }
            if tokio::time::Instant::now() > deadline {
                bail!("no log entry as awaited after {limit:?} (read up to {after})");
            }
        }
    }

    /// The last durable log sequence number, as `GET /log` says it in its
    /// `X-Log-Tip` header.
    pub async fn log_tip(&self) -> Result<u64> {
        let res = self
            .http
            .get(self.url("/log?limit=0"))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let tip = res
            .headers()
            .get("x-log-tip")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        tip.ok_or_else(|| anyhow!("GET /log answered {} without X-Log-Tip", res.status()))
    }

    /// The last log sequence number, found by reading the whole log.
    pub async fn last_logged(&self) -> Result<u64> {
        let mut after = 0;
        loop {
            let (_, entries) = self.get(&format!("/log?after={after}&limit=1000")).await?;
            match entries.as_array().and_then(|a| a.last()) {
                Some(e) => after = e["seq"].as_u64().unwrap_or(after),
                None => return Ok(after),
            }
        }
    }

    /// Opens the live event stream.
    pub async fn events(&self) -> Result<Events> {
        let res = self
            .http
            .get(self.url("/events"))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(3600))
            .send()
            .await?;
        if res.status() != StatusCode::OK {
            bail!("events: {}", res.status());
        }
        Ok(Events {
            res,
            buf: String::new(),
        })
    }

    /// Waits until every job in `ids` has ended (as seen on the event
    /// stream, checked against `GET /jobs/{id}` so no event can be missed
    /// between submission and subscription); returns the final jobs.
    pub async fn wait_ended(
        &self,
        events: &mut Events,
        ids: &[u64],
        limit: Duration,
    ) -> Result<Vec<Value>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let mut done = Vec::new();
            for id in ids {
                let (_, j) = self.get(&format!("/jobs/{id}")).await?;
                if ["completed", "failed", "cancelled", "interrupted"]
                    .contains(&j["state"].as_str().unwrap_or(""))
                {
                    done.push(j);
                }
            }
            if done.len() == ids.len() {
                return Ok(done);
            }
            // Wait for the next job transition, then re-check.
            tokio::time::timeout_at(deadline, events.next_of("job"))
                .await
                .with_context(|| format!("jobs {ids:?} did not end in {limit:?}"))??;
        }
    }

    /// Reads production order `id` until `pred` holds (or `limit`
    /// passes). Units are made by the daemon's log reader, which publishes
    /// no live event: there is nothing to await, so this polls.
    pub async fn order_until(
        &self,
        id: u64,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (s, o) = self.get(&format!("/production-orders/{id}")).await?;
            if s != StatusCode::OK {
                bail!("GET /production-orders/{id}: {s} {o}");
            }
            if pred(&o) {
                return Ok(o);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("order {id} never got there in {limit:?}: {o}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Milliseconds since the Unix epoch, as the daemon's clock reads them.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A Server-Sent Events reader.
pub struct Events {
    res: reqwest::Response,
    buf: String,
}

impl Events {
    /// The next event as (name, data).
    pub async fn next(&mut self) -> Result<(String, Value)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // keep-alive comment
                }
                return Ok((name, serde_json::from_str(&data).unwrap_or(json!(data))));
            }
            let chunk = self
                .res
                .chunk()
                .await?
                .ok_or_else(|| anyhow!("event stream ended"))?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next event named `name`.
    pub async fn next_of(&mut self, name: &str) -> Result<Value> {
        loop {
            let (n, v) = self.next().await?;
            if n == name {
                return Ok(v);
            }
        }
    }
}
