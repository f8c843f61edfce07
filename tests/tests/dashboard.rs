//! The operator dashboard in a real headless Chromium (over CDP), against
//! the real daemon with simulated machines: what an operator does, done the
//! way an operator does it, through the page alone.
//!
//! Every wait polls the page for a DOM condition with a deadline; nothing
//! sleeps for a fixed time to let something happen. Screenshots of each
//! view at desktop and phone width go to `target/screenshots/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::dom::SetFileInputFilesParams;
use chromiumoxide::cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams;
use chromiumoxide::cdp::browser_protocol::log::{
    EnableParams as LogEnable, EventEntryAdded, LogEntryLevel, LogEntrySource,
};
use chromiumoxide::cdp::js_protocol::runtime::{
    ConsoleApiCalledType, EnableParams as RuntimeEnable, EventConsoleApiCalled,
    EventExceptionThrown,
};
use chromiumoxide::page::{Page, ScreenshotParams};
use futures_util::StreamExt;
use microfactory_e2e::{Factory, MachineSpec, TempDir, daemon_bin, data};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::json;

/// Browsers are heavy on a two-core machine: one test at a time.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long any one DOM condition may take to come true.
const WAIT: Duration = Duration::from_secs(60);

const CHROMIUM: &str = "/usr/bin/chromium";

/// A browser tab on the dashboard, collecting JavaScript errors.
struct Ui {
    browser: Browser,
    page: Page,
    handler: tokio::task::JoinHandle<()>,
    listeners: Vec<tokio::task::JoinHandle<()>>,
    errors: Arc<Mutex<Vec<String>>>,
    /// Path endings whose error answers are expected.
    allowed_api_errors: Arc<Mutex<Vec<String>>>,
    _profile: TempDir,
}

impl Ui {
    async fn open(base: &str) -> Result<Self> {
        let profile = TempDir::new("chromium");
        let config = BrowserConfig::builder()
            .chrome_executable(CHROMIUM)
            .disable_default_args()
            .with_head() // `--headless` is in `args`, as CI's flags are listed
            .args([
                "headless",
                "no-sandbox",
                "disable-gpu",
                "no-first-run",
                "disable-background-networking",
                "disable-component-update",
                "disable-sync",
            ])
            .user_data_dir(profile.path())
            .window_size(1280, 800)
            .viewport(None)
            .request_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| anyhow!("browser config: {e}"))?;
        let (browser, mut handler) = Browser::launch(config)
            .await
            .context("launch chromium (apt-get install chromium)")?;
        // The handler drives the CDP connection; unknown events of a newer
        // Chromium come out as errors that do not matter here.
        let handler = tokio::spawn(async move { while handler.next().await.is_some() {} });
        let page = browser.new_page("about:blank").await?;
        page.execute(RuntimeEnable::default()).await?;
        page.execute(LogEnable::default()).await?;

        let errors = Arc::new(Mutex::new(Vec::new()));
        let mut listeners = Vec::new();
        let mut exceptions = page.event_listener::<EventExceptionThrown>().await?;
        let e = Arc::clone(&errors);
        listeners.push(tokio::spawn(async move {
            while let Some(ev) = exceptions.next().await {
                let d = &ev.exception_details;
                let what = d
                    .exception
                    .as_ref()
                    .and_then(|x| x.description.clone())
                    .unwrap_or_else(|| d.text.clone());
                e.lock().unwrap().push(format!("exception: {what}"));
            }
        }));
        let mut console = page.event_listener::<EventConsoleApiCalled>().await?;
        let e = Arc::clone(&errors);
        listeners.push(tokio::spawn(async move {
            while let Some(ev) = console.next().await {
                if ev.r#type == ConsoleApiCalledType::Error {
                    let args: Vec<String> = ev
                        .args
                        .iter()
                        .map(|a| {
                            a.value
                                .as_ref()
                                .map(|v| v.to_string())
                                .or_else(|| a.description.clone())
                                .unwrap_or_default()
                        })
                        .collect();
                    e.lock()
                        .unwrap()
                        .push(format!("console.error: {}", args.join(" ")));
                }
            }
        }));
        let mut log = page.event_listener::<EventEntryAdded>().await?;
        let e = Arc::clone(&errors);
        // Before signing in the page asks who is signed in (401), and a
        // wrong token is refused (401): the API working as it should.
        let allowed = Arc::new(Mutex::new(vec!["/api/v1/session".to_string()]));
        let allowed_api_errors = Arc::clone(&allowed);
        listeners.push(tokio::spawn(async move {
            while let Some(ev) = log.next().await {
                let entry = &ev.entry;
                if entry.level != LogEntryLevel::Error {
                    continue;
                }
                // An API error status is logged by Chromium as a failed
                // resource; those the test provokes on purpose (and checks
                // the page explains) are allowed by path.
                let expected = entry.source == LogEntrySource::Network
                    && entry.url.as_deref().is_some_and(|u| {
                        allowed
                            .lock()
                            .unwrap()
                            .iter()
                            .any(|a| u.ends_with(a.as_str()))
                    });
                if !expected {
                    e.lock().unwrap().push(format!(
                        "log ({:?}): {} {}",
                        entry.source,
                        entry.text,
                        entry.url.as_deref().unwrap_or("")
                    ));
                }
            }
        }));

        let ui = Self {
            browser,
            page,
            handler,
            listeners,
            errors,
            allowed_api_errors,
            _profile: profile,
        };
        ui.desktop().await?;
        ui.page.goto(format!("{base}/")).await?;
        ui.wait("document.readyState === 'complete'", "the page to load")
            .await?;
        Ok(ui)
    }

    async fn desktop(&self) -> Result<()> {
        self.page
            .execute(SetDeviceMetricsOverrideParams::new(1280, 800, 1.0, false))
            .await?;
        Ok(())
    }

    async fn phone(&self) -> Result<()> {
        self.page
            .execute(SetDeviceMetricsOverrideParams::new(375, 812, 2.0, true))
            .await?;
        Ok(())
    }

    /// Evaluates an expression and returns its JSON value.
    async fn eval<T: DeserializeOwned>(&self, js: &str) -> Result<T> {
        let v = self
            .page
            .evaluate(js)
            .await
            .with_context(|| format!("evaluate {js}"))?;
        v.into_value().with_context(|| format!("the value of {js}"))
    }

    /// Polls until the expression is true; fails naming `what` otherwise,
    /// with the page's visible text to show where it stood.
    async fn wait(&self, cond: &str, what: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let js =
            format!("(() => {{ try {{ return !!({cond}); }} catch (e) {{ return false; }} }})()");
        loop {
            if self.eval::<bool>(&js).await.unwrap_or(false) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let text: String = self
                    .eval("document.body.innerText")
                    .await
                    .unwrap_or_default();
                let errors = self.errors.lock().unwrap().join("\n");
                bail!(
                    "timed out waiting for {what} ({cond}); the page shows:\n{text}\nerrors:\n{errors}"
                );
            }
            // The polling interval of the wait, not a synchronisation.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Text of the first element matching `sel` ("" when there is none).
    async fn text(&self, sel: &str) -> Result<String> {
        self.eval(&format!(
            "document.querySelector({})?.textContent ?? ''",
            js_str(sel)
        ))
        .await
    }

    /// Clicks like a person: the mouse at the element's centre.
    async fn click(&self, sel: &str) -> Result<()> {
        self.wait(
            &format!(
                "(() => {{ const e = document.querySelector({}); return e && !e.disabled && e.offsetParent !== null; }})()",
                js_str(sel)
            ),
            &format!("{sel} to be clickable"),
        )
        .await?;
        self.page
            .find_element(sel)
            .await
            .with_context(|| format!("find {sel}"))?
            .click()
            .await
            .with_context(|| format!("click {sel}"))?;
        Ok(())
    }

    async fn type_into(&self, sel: &str, text: &str) -> Result<()> {
        let el = self.page.find_element(sel).await?;
        el.click().await?;
        el.type_str(text).await?;
        Ok(())
    }

    async fn press_enter(&self, sel: &str) -> Result<()> {
        self.page
            .find_element(sel)
            .await?
            .press_key("Enter")
            .await?;
        Ok(())
    }

    /// Chooses a file in a file input, as the file picker would.
    async fn choose_file(&self, sel: &str, path: &Path) -> Result<()> {
        // Chromium reads the file itself and wants a plain absolute path.
        let path = &path
            .canonicalize()
            .with_context(|| format!("{}", path.display()))?;
        self.wait(
            &format!("document.querySelector({})", js_str(sel)),
            &format!("{sel} to exist"),
        )
        .await?;
        let el = self
            .page
            .find_element(sel)
            .await
            .with_context(|| format!("find {sel}"))?;
        self.page
            .execute(
                SetFileInputFilesParams::builder()
                    .file(path.display().to_string())
                    .backend_node_id(el.backend_node_id)
                    .build()
                    .map_err(|e| anyhow!("{e}"))?,
            )
            .await
            .with_context(|| format!("choose {} in {sel}", path.display()))?;
        Ok(())
    }

    async fn go(&self, hash: &str) -> Result<()> {
        self.eval::<String>(&format!("location.hash = {}", js_str(hash)))
            .await?;
        Ok(())
    }

    /// Saves `NAME-desktop.png` and `NAME-phone.png` (whole page).
    async fn screenshots(&self, name: &str) -> Result<()> {
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir)?;
        for (suffix, phone) in [("desktop", false), ("phone", true)] {
            if phone {
                self.phone().await?;
            } else {
                self.desktop().await?;
            }
            // Let layout settle for the new width: two animation frames.
            self.eval::<bool>(
                "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))",
            )
            .await?;
            let png = self
                .page
                .screenshot(ScreenshotParams::builder().full_page(true).build())
                .await?;
            std::fs::write(dir.join(format!("{name}-{suffix}.png")), png)?;
        }
        self.desktop().await
    }

    /// The test is about to provoke an error answer from `path`.
    fn allow_api_error(&self, path: &str) {
        self.allowed_api_errors
            .lock()
            .unwrap()
            .push(path.to_string());
    }

    fn assert_no_js_errors(&self) {
        let errors = self.errors.lock().unwrap();
        assert!(
            errors.is_empty(),
            "JavaScript errors on the page:\n{}",
            errors.join("\n")
        );
    }

    async fn sign_in(&self, token: &str) -> Result<()> {
        self.wait(
            "document.querySelector('#signin-token')",
            "the sign-in form",
        )
        .await?;
        self.type_into("#signin-token", token).await?;
        self.press_enter("#signin-token").await?;
        self.wait(
            "document.querySelector('#conn')?.dataset.conn === 'live'",
            "the live event stream",
        )
        .await
    }

    async fn close(mut self) {
        let _ = self.browser.close().await;
        let _ = self.browser.wait().await;
        self.handler.abort();
        for l in &self.listeners {
            l.abort();
        }
    }
}

fn js_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn screenshot_dir() -> PathBuf {
    // target/debug/microfactoryd -> target/screenshots
    daemon_bin()
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("screenshots"))
        .unwrap_or_else(|| PathBuf::from("target/screenshots"))
}

fn card(id: &str) -> String {
    format!("document.querySelector('.card[data-machine=\"{id}\"]')")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_with_a_message_and_the_right_one_signs_in() -> Result<()> {
    let _one = ONE_BROWSER.lock().await;
    let f = Factory::start(&[MachineSpec::printer("mk3-a", "prusa-mk3s")]).await?;
    let ui = Ui::open(&f.base).await?;

    ui.wait(
        "document.querySelector('#signin-token')",
        "the sign-in form",
    )
    .await?;
    ui.screenshots("sign-in").await?;
    ui.type_into("#signin-token", "not-a-token").await?;
    ui.click("#signin-submit").await?;
    ui.wait(
        "document.querySelector('#signin-error').textContent.includes('not known')",
        "the wrong-token message",
    )
    .await?;
    ui.screenshots("sign-in-error").await?;
    assert_eq!(
        ui.eval::<String>("document.activeElement.id").await?,
        "signin-token",
        "focus goes back to the token field"
    );

    // Clear the field and sign in with the right token from the keyboard.
    ui.eval::<String>("document.querySelector('#signin-token').value = ''")
        .await?;
    ui.sign_in(&f.token).await?;
    ui.wait(
        &format!("{}?.dataset.state === 'idle'", card("mk3-a")),
        "the printer's card, idle",
    )
    .await?;
    assert_eq!(ui.text("#who-name").await?, "test operator");

    // The machine's chart starts with the daemon's history, sampled before
    // this page signed in (the page's own samples carry its own times).
    let first = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let (_, hist) = f.get("/machines/mk3-a/temperatures").await?;
            if let Some(t) = hist["at_ms"][0].as_u64() {
                assert_eq!(
                    hist["heaters"][0]["actual"].as_array().map(Vec::len),
                    Some(hist["at_ms"].as_array().map_or(0, Vec::len))
                );
                return anyhow::Ok(t);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await??;
    ui.go("#/machine/mk3-a").await?;
    ui.wait(
        "document.querySelector('#temp-chart svg')?.dataset.first",
        "the temperature chart",
    )
    .await?;
    ui.wait(
        &format!("Number(document.querySelector('#temp-chart svg').dataset.first) === {first}"),
        "the chart to start with the daemon's first sample",
    )
    .await?;

    // Seventeen ended jobs: the queue shows the newest fifteen, and "Show
    // older" pages back to the other two, oldest last, then says that is all.
    let (s, _) = f.post("/machines/mk3-a/disable", json!({})).await?;
    assert_eq!(s, StatusCode::OK);
    let file = f.upload(&data("bracket_petg.gcode")).await?;
    let ids = f
        .submit(json!({"file_id": file, "kind": "printer", "copies": 17}))
        .await?;
    for id in &ids {
        let (s, v) = f.post(&format!("/jobs/{id}/cancel"), json!({})).await?;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    ui.go("#/queue").await?;
    ui.wait(
        "document.querySelectorAll('#jobs-ended li').length === 15 \
         && document.querySelector('#jobs-older-btn').offsetParent !== null",
        "fifteen recent jobs and the Show older button",
    )
    .await?;
    ui.click("#jobs-older-btn").await?;
    ui.wait(
        "document.querySelectorAll('#jobs-older li').length === 2 \
         && document.querySelector('#jobs-older-end').offsetParent !== null \
         && document.querySelector('#jobs-older-btn').offsetParent === null",
        "the two oldest jobs and the end of the history",
    )
    .await?;
    let older: Vec<u64> = ui
        .eval(
            "[...document.querySelectorAll('#jobs-older li')].map((li) => Number(li.dataset.job))",
        )
        .await?;
    assert_eq!(older, vec![ids[1], ids[0]]);
    ui.screenshots("queue-older").await?;

    // Signing out returns to the sign-in form, and a reload stays out.
    ui.click("#sign-out").await?;
    ui.wait(
        "document.querySelector('#signin-token')",
        "the sign-in form",
    )
    .await?;
    ui.page.reload().await?;
    ui.wait(
        "document.readyState === 'complete' && document.querySelector('#signin-token')",
        "the sign-in form after reload",
    )
    .await?;

    ui.assert_no_js_errors();
    ui.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_with_a_malformed_escape_shows_not_found_instead_of_loading_forever() -> Result<()> {
    let _one = ONE_BROWSER.lock().await;
    let f = Factory::start(&[MachineSpec::printer("mk3-a", "prusa-mk3s")]).await?;
    let ui = Ui::open(&f.base).await?;
    ui.sign_in(&f.token).await?;
    ui.wait(
        &format!("{}?.dataset.state === 'idle'", card("mk3-a")),
        "the printer's card",
    )
    .await?;
    for link in ["#/job/%E0%A4%A", "#/machine/%ZZ"] {
        ui.go("#/machines").await?;
        ui.wait("!document.querySelector('#not-found')", "the machines page")
            .await?;
        ui.go(link).await?;
        ui.wait(
            "document.querySelector('#not-found h2')?.textContent === 'Not found'",
            link,
        )
        .await?;
        assert_eq!(
            ui.eval::<String>("document.title").await?,
            "Not found · microfactory"
        );
        assert!(
            !ui.eval::<bool>("!!document.querySelector('main .loading')")
                .await?,
            "{link}: still loading"
        );
    }
    // A good link after a bad one works.
    ui.go("#/machine/mk3-a").await?;
    ui.wait(
        "!document.querySelector('#not-found') && !!document.querySelector('#temp-chart')",
        "the machine page",
    )
    .await?;
    ui.assert_no_js_errors();
    ui.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mill_job_runs_from_upload_to_bed_cleared_and_a_drill_file_shows_its_findings()
-> Result<()> {
    let _one = ONE_BROWSER.lock().await;
    let mut mill = MachineSpec::mill("mill-1");
    // Slow enough (about 5 s) to watch the progress bar move.
    mill.time_scale = 20.0;
    mill.require_bed_clear = true;
    let f = Factory::start(&[MachineSpec::printer("mk3-a", "prusa-mk3s"), mill]).await?;
    let ui = Ui::open(&f.base).await?;
    ui.sign_in(&f.token).await?;
    ui.wait(
        &format!(
            "{}?.dataset.state === 'idle' && {}?.dataset.state === 'idle'",
            card("mill-1"),
            card("mk3-a")
        ),
        "both machines idle",
    )
    .await?;
    ui.screenshots("machines-idle").await?;

    // Upload through the file input and read the analysis.
    ui.click("a[data-view=queue]").await?;
    ui.choose_file("#file-input", &data("pcb_outline_inch.nc"))
        .await?;
    ui.wait(
        "document.querySelector('#analysis h2')?.textContent.includes('pcb_outline_inch.nc')",
        "the analysis of pcb_outline_inch.nc",
    )
    .await?;
    let time = ui.text("#analysis-facts [data-fact=time]").await?;
    assert!(
        time.contains("min") || time.ends_with(" s"),
        "estimated time: {time}"
    );
    let bounds = ui.text("#analysis-facts [data-fact=bounds]").await?;
    assert!(bounds.contains("mm"), "bounds: {bounds}");
    assert!(
        ui.eval::<bool>(
            "!!document.querySelector('#analysis-fits li.fit-ok[data-machine=\"mill-1\"]')"
        )
        .await?,
        "the mill can run it"
    );
    assert!(
        ui.eval::<bool>(
            "!!document.querySelector('#analysis-fits li.fit-no[data-machine=\"mk3-a\"]')"
        )
        .await?,
        "the printer cannot"
    );
    assert_eq!(
        ui.eval::<String>("document.querySelector('#q-target').value")
            .await?,
        "machine:mill-1",
        "the only machine that fits is preselected"
    );
    ui.screenshots("queue-analysis").await?;

    ui.click("#queue-submit").await?;
    ui.wait(
        "document.querySelector('#queue-ok').textContent.startsWith('Queued job #')",
        "the job to be queued",
    )
    .await?;

    // Watch it on the machine's card: running with a progress bar, then
    // 100 % and waiting for the bed to be cleared.
    ui.click("a[data-view=machines]").await?;
    let c = card("mill-1");
    ui.wait(
        &format!("{c}.dataset.state === 'running'"),
        "the mill to run",
    )
    .await?;
    ui.wait(
        &format!("{c}.querySelector('.job-progress').value > 0"),
        "progress",
    )
    .await?;
    ui.screenshots("machines-running").await?;
    ui.wait(
        &format!(
            "{c}.dataset.state === 'awaiting_clear' && {c}.querySelector('.job').dataset.jobState === 'completed'"
        ),
        "the job to complete",
    )
    .await?;
    assert_eq!(
        ui.eval::<f64>(&format!("{c}.querySelector('.job-progress').value"))
            .await?,
        100.0
    );
    assert_eq!(
        ui.text(".card[data-machine=\"mill-1\"] .job-percent")
            .await?,
        "100 %"
    );
    assert_eq!(
        ui.text(".card[data-machine=\"mill-1\"] .state").await?,
        "Waiting for bed clearance"
    );
    ui.screenshots("machines-awaiting-clear").await?;
    ui.click(".card[data-machine=\"mill-1\"] .act-clear")
        .await?;
    ui.wait(&format!("{c}.dataset.state === 'idle'"), "the mill idle")
        .await?;

    // A drill file with canned cycles and a tool change: GRBL refuses it
    // as it is; the page lists each finding with its line number.
    ui.click("a[data-view=queue]").await?;
    ui.choose_file("#file-input", &data("pcb_drill_toolchange_inch.nc"))
        .await?;
    ui.wait(
        "document.querySelector('#analysis h2')?.textContent.includes('pcb_drill_toolchange_inch.nc')",
        "the analysis of the drill file",
    )
    .await?;
    let lines: Vec<u64> = ui
        .eval(
            "[...document.querySelectorAll('#findings-grbl tr.finding')].map(r => Number(r.dataset.line))",
        )
        .await?;
    assert!(!lines.is_empty(), "GRBL findings are listed");
    assert!(lines.iter().all(|l| *l > 0), "line numbers: {lines:?}");
    let first_line_cell = ui.text("#findings-grbl tr.finding td").await?;
    assert_eq!(first_line_cell, lines[0].to_string());
    let kinds: Vec<String> = ui
        .eval(
            "[...document.querySelectorAll('#findings-grbl tr.finding')].map(r => r.dataset.kind)",
        )
        .await?;
    assert!(
        kinds
            .iter()
            .any(|k| k == "canned_cycle" || k == "tool_change"),
        "{kinds:?}"
    );
    assert!(
        ui.eval::<bool>("document.querySelector('#q-expand')?.checked === true")
            .await?,
        "the canned-cycle expansion is offered and chosen"
    );
    ui.screenshots("queue-preflight").await?;

    // The ended job's detail: its history from queued to completed.
    ui.go("#/job/1").await?;
    ui.wait(
        "document.querySelectorAll('#job-history tbody tr').length >= 3",
        "the job's history",
    )
    .await?;
    assert!(ui.text("#job-facts").await?.contains("Completed"));
    ui.screenshots("job-detail").await?;

    ui.assert_no_js_errors();
    ui.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_print_pauses_resumes_and_cancels_from_its_card() -> Result<()> {
    let _one = ONE_BROWSER.lock().await;
    let f = Factory::start(&[
        MachineSpec::printer("mk3-a", "prusa-mk3s"),
        MachineSpec::mill("mill-1"),
    ])
    .await?;
    let ui = Ui::open(&f.base).await?;
    ui.sign_in(&f.token).await?;
    ui.wait(
        &format!("{}?.dataset.state === 'idle'", card("mk3-a")),
        "the printer idle",
    )
    .await?;

    // A long print (about a minute of serial link time): queue it.
    ui.go("#/queue").await?;
    ui.choose_file("#file-input", &data("bracket_petg.gcode"))
        .await?;
    ui.wait(
        "document.querySelector('#analysis h2')?.textContent.includes('bracket_petg.gcode')",
        "the analysis of the print",
    )
    .await?;
    let filament = ui.text("#analysis-facts [data-fact=filament]").await?;
    assert!(filament.ends_with(" m"), "filament: {filament}");
    let layers: u64 = ui
        .text("#analysis-facts [data-fact=layers]")
        .await?
        .parse()?;
    assert!(layers > 100, "layers: {layers}");
    ui.wait(
        "document.querySelector('#q-target').value === 'machine:mk3-a'",
        "the printer preselected",
    )
    .await?;
    ui.click("#queue-submit").await?;
    ui.wait(
        "document.querySelector('#queue-ok').textContent.startsWith('Queued')",
        "the print to be queued",
    )
    .await?;
    ui.wait(
        "document.querySelector('#jobs-active li[data-state=running]')",
        "the print in the running list",
    )
    .await?;
    ui.screenshots("queue-running").await?;

    let c = card("mk3-a");
    let sel = |s: &str| format!(".card[data-machine=\"mk3-a\"] {s}");
    ui.go("#/machines").await?;
    ui.wait(&format!("{c}.dataset.state === 'running'"), "printing")
        .await?;
    assert!(
        ui.eval::<bool>(&format!(
            "{c}.querySelector('.act-estop').offsetParent !== null"
        ))
        .await?,
        "emergency stop is visible while running"
    );
    ui.click(&sel(".act-pause")).await?;
    ui.wait(&format!("{c}.dataset.state === 'paused'"), "paused")
        .await?;
    assert_eq!(ui.text(&sel(".state")).await?, "Paused");
    ui.screenshots("machines-paused").await?;
    ui.click(&sel(".act-resume")).await?;
    ui.wait(&format!("{c}.dataset.state === 'running'"), "running again")
        .await?;
    let before: f64 = ui
        .eval(&format!("{c}.querySelector('.job-progress').value"))
        .await?;
    ui.wait(
        &format!("{c}.querySelector('.job-progress').value > {before}"),
        "progress after resuming",
    )
    .await?;

    // The machine's page: temperature chart, and the console, which
    // answers between the job's lines and shows the daemon's reason when it
    // refuses a command.
    ui.click(".card[data-machine=\"mk3-a\"] h3 a").await?;
    ui.wait(
        "document.querySelectorAll('#temp-chart polyline.actual').length >= 2",
        "the temperature chart",
    )
    .await?;
    ui.type_into("#console-input", "M105").await?;
    ui.press_enter("#console-input").await?;
    ui.wait(
        "document.querySelector('#console-log').textContent.includes('T:')",
        "the firmware's answer to M105",
    )
    .await?;
    // The serial log shows the command going out and the firmware's words
    // coming back, job lines included.
    ui.wait(
        "(() => { const t = document.querySelector('#serial-log').textContent; \
         return t.includes(' M105') && t.includes('< ok') && t.includes('> N'); })()",
        "the serial log with the console command and the firmware's answers",
    )
    .await?;
    ui.allow_api_error("/api/v1/machines/mk3-a/console");
    ui.type_into("#console-input", &"G4 P0 ".repeat(40)).await?;
    ui.press_enter("#console-input").await?;
    ui.wait(
        "document.querySelector('#console-error').textContent.includes('200 characters')",
        "the daemon's reason for refusing an overlong command",
    )
    .await?;
    ui.screenshots("machine-detail-printing").await?;

    // Cancel from the card, through the confirmation.
    ui.click(&sel(".act-cancel")).await?;
    ui.wait(
        "document.querySelector('#confirm').open",
        "the confirmation",
    )
    .await?;
    ui.click("#confirm-yes").await?;
    // A cancelled part is half made: the printer waits for the operator.
    ui.wait(
        &format!("{c}.dataset.state === 'awaiting_clear' && {c}.querySelector('.job').dataset.jobState === 'cancelled'"),
        "the print cancelled and the printer waiting for the operator",
    )
    .await?;
    assert_eq!(
        ui.text(&sel(".state")).await?,
        "Job cancelled: clear the bed"
    );
    ui.click(&sel(".act-clear")).await?;
    ui.wait(&format!("{c}.dataset.state === 'idle'"), "the printer idle")
        .await?;
    ui.wait(
        "document.querySelector('#machine-history tr[data-state=cancelled]')",
        "the cancelled job in the machine's history",
    )
    .await?;

    ui.screenshots("machine-detail").await?;

    ui.assert_no_js_errors();
    ui.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_says_so_when_the_daemon_goes_away() -> Result<()> {
    let _one = ONE_BROWSER.lock().await;
    let mut f = Factory::start(&[MachineSpec::mill("mill-1")]).await?;
    let ui = Ui::open(&f.base).await?;
    ui.sign_in(&f.token).await?;
    ui.wait(
        &format!("{}?.dataset.state === 'idle'", card("mill-1")),
        "the mill idle",
    )
    .await?;
    ui.assert_no_js_errors();

    f.kill9().await;
    ui.wait(
        "document.querySelector('#conn').dataset.conn === 'reconnecting'",
        "the disconnected state",
    )
    .await?;
    assert!(ui.text("#conn").await?.contains("reconnecting"));
    ui.screenshots("disconnected").await?;
    // The daemon comes back on the same address: the page reconnects on
    // its own and shows live data again.
    f.relaunch_same_port().await?;
    ui.wait(
        "document.querySelector('#conn').dataset.conn === 'live'",
        "the page back to live after the daemon restarted",
    )
    .await?;
    ui.close().await;
    Ok(())
}

/// Whether the card's emergency stop is alone on the card's last row, away
/// from Pause and Resume, where it always is (`card` is a card's JS).
fn estop_at_the_foot(card: &str) -> String {
    format!(
        "(() => {{ const c = {card}; const b = c.querySelector('.act-estop'); \
         return b.offsetParent !== null && b.parentElement === c.lastElementChild \
           && b.parentElement.querySelectorAll('button').length === 1; }})()"
    )
}

/// A card's element under `.card[data-machine=ID]`.
fn on_card(id: &str, sel: &str) -> String {
    format!(".card[data-machine=\"{id}\"] {sel}")
}

/// Whether `sel` is shown (exists and laid out).
fn shown(sel: &str) -> String {
    format!(
        "(document.querySelector({}) ?.offsetParent ?? null) !== null",
        js_str(sel)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_and_an_emergency_stopped_mill_come_back_from_the_card_and_run_the_next_job()
-> Result<()> {
    let _one = ONE_BROWSER.lock().await;
    let mut mill = MachineSpec::mill("mill-1");
    // Slow enough to cancel and stop mid-way.
    mill.time_scale = 2.0;
    let f = Factory::start(&[mill]).await?;
    let ui = Ui::open(&f.base).await?;
    ui.sign_in(&f.token).await?;
    let c = card("mill-1");
    ui.wait(&format!("{c}?.dataset.state === 'idle'"), "the mill idle")
        .await?;
    // Nothing to unlock on an idle mill, and no M999 on GRBL: 409s that say why.
    let (s, v) = f
        .post("/machines/mill-1/recover", json!({"action": "unlock"}))
        .await?;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v.to_string().contains("not in alarm"), "{v}");
    let (s, v) = f
        .post(
            "/machines/mill-1/recover",
            json!({"action": "firmware_restart"}),
        )
        .await?;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v.to_string().contains("unlock"), "{v}");
    let (s, _) = f
        .post("/machines/mill-1/recover", json!({"action": "melt"}))
        .await?;
    assert!(s.is_client_error() && s != StatusCode::CONFLICT, "{s}");

    let file = f.upload(&data("pcb_outline_inch.nc")).await?;
    let ids = f
        .submit(json!({"file_id": file, "machine_id": "mill-1", "copies": 3}))
        .await?;
    ui.wait(
        &format!("{c}.dataset.state === 'running'"),
        "the first job running",
    )
    .await?;
    ui.wait(
        &format!("{c}.querySelector('.job-progress').value > 0"),
        "progress",
    )
    .await?;

    // Cancel: the mill waits for the operator and the next job does not
    // start on its own (it used to start a millisecond later and fail).
    ui.click(&on_card("mill-1", ".act-cancel")).await?;
    ui.wait(
        "document.querySelector('#confirm').open",
        "the confirmation",
    )
    .await?;
    ui.click("#confirm-yes").await?;
    // After the reset that ends a cancel, GRBL is either idle or (reset
    // while moving) in alarm; wait for its first report after the reset.
    let grbl_state = format!("{c}.querySelector('.readings [data-key=grbl-state] dd').textContent");
    ui.wait(
        &format!(
            "({c}.dataset.state === 'error' && {grbl_state} === 'Alarm') \
             || ({c}.dataset.state === 'awaiting_clear' && {grbl_state} === 'Idle')"
        ),
        "the mill waiting for the operator after the cancel",
    )
    .await?;
    if ui
        .eval::<bool>(&shown(&on_card("mill-1", ".act-unlock")))
        .await?
    {
        // The reset after the hold left GRBL in alarm: unlock it here.
        ui.click(&on_card("mill-1", ".act-unlock")).await?;
    }
    ui.wait(
        &format!("{c}.dataset.state === 'awaiting_clear'"),
        "the mill waiting for the operator",
    )
    .await?;
    let (_, job2) = f.get(&format!("/jobs/{}", ids[1])).await?;
    assert_eq!(job2["state"], "queued", "the next job waits: {job2}");
    assert_eq!(
        ui.text(&on_card("mill-1", ".act-clear")).await?,
        "Checked: ready for the next job"
    );
    ui.screenshots("mill-cancelled-waiting").await?;
    ui.click(&on_card("mill-1", ".act-clear")).await?;
    ui.wait(
        &format!("{c}.dataset.state === 'running' && {c}.querySelector('.job-name').textContent.startsWith('#{}')", ids[1]),
        "the next job running after the operator confirmed",
    )
    .await?;
    ui.wait(
        &format!("{c}.querySelector('.job-progress').value > 0"),
        "progress of the next job",
    )
    .await?;

    // Emergency stop: its own row, never next to Pause.
    let estop_alone: bool = ui
        .eval(&format!(
            "(() => {{ const b = {c}.querySelector('.act-estop'); \
             return b.parentElement.classList.contains('estop-row') \
               && !b.parentElement.querySelector('.act-pause, .act-resume'); }})()"
        ))
        .await?;
    assert!(estop_alone, "emergency stop is alone on its row");
    assert!(
        ui.eval::<bool>(&estop_at_the_foot(&c)).await?,
        "emergency stop at the foot of the card"
    );
    ui.click(&on_card("mill-1", ".act-estop")).await?;
    ui.wait(
        &format!("{c}.dataset.state === 'error'"),
        "the mill in alarm after the emergency stop",
    )
    .await?;
    ui.wait(
        &format!(
            "{c}.querySelector('.state').textContent === 'Alarm: check the mill, then unlock'"
        ),
        "the card to say the mill is in alarm",
    )
    .await?;
    ui.wait(
        &shown(&on_card("mill-1", ".act-unlock")),
        "the Unlock button",
    )
    .await?;
    ui.screenshots("mill-alarm").await?;
    let (_, job2) = f.get(&format!("/jobs/{}", ids[1])).await?;
    assert_eq!(job2["state"], "failed", "{job2}");
    ui.click(&on_card("mill-1", ".act-unlock")).await?;
    ui.wait(
        &format!(
            "{c}.dataset.state === 'awaiting_clear' \
             && {c}.querySelector('.readings [data-key=grbl-state] dd').textContent === 'Idle'"
        ),
        "GRBL idle after $X, the mill waiting for the operator",
    )
    .await?;
    ui.screenshots("mill-unlocked").await?;
    let (_, job3) = f.get(&format!("/jobs/{}", ids[2])).await?;
    assert_eq!(job3["state"], "queued", "{job3}");
    ui.click(&on_card("mill-1", ".act-clear")).await?;
    ui.wait(
        &format!("{c}.dataset.state === 'running'"),
        "the third job running",
    )
    .await?;
    ui.assert_no_js_errors();
    ui.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_printer_shows_stale_readings_and_recovers_from_its_card() -> Result<()> {
    let _one = ONE_BROWSER.lock().await;
    let f = Factory::start(&[MachineSpec::printer("mk3-a", "prusa-mk3s")]).await?;
    let ui = Ui::open(&f.base).await?;
    ui.sign_in(&f.token).await?;
    let c = card("mk3-a");
    ui.wait(
        &format!("{c}?.dataset.state === 'idle' && {c}.dataset.stale === 'false'"),
        "the printer idle with live readings",
    )
    .await?;
    let (s, v) = f
        .post("/machines/mk3-a/recover", json!({"action": "unlock"}))
        .await?;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, _) = f.post("/machines/mk3-a/estop", json!({})).await?;
    assert_eq!(s, StatusCode::OK);
    ui.wait(&format!("{c}.dataset.state === 'error'"), "halted")
        .await?;
    assert_eq!(
        ui.text(&on_card("mk3-a", ".state")).await?,
        "Halted: recover it"
    );
    // The halted firmware reads nothing: a command is refused at once.
    let t = std::time::Instant::now();
    let (s, v) = f
        .post("/machines/mk3-a/console", json!({"command": "M105"}))
        .await?;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v.to_string().contains("halted"), "{v}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    ui.wait(
        &format!("{c}.dataset.stale === 'true'"),
        "the readings marked stale",
    )
    .await?;
    ui.wait(
        &shown(&on_card("mk3-a", ".act-firmware-restart")),
        "Restart firmware",
    )
    .await?;
    assert!(
        ui.eval::<bool>(&shown(&on_card("mk3-a", ".act-reconnect")))
            .await?
    );
    assert!(
        !ui.eval::<bool>(&shown(&on_card("mk3-a", ".act-unlock")))
            .await?
    );
    ui.screenshots("printer-halted").await?;
    ui.go("#/machine/mk3-a").await?;
    ui.wait(&shown("#chart-stale"), "the chart says it is not live")
        .await?;

    // Restart the firmware: M999, and the port is opened again. The
    // simulator models no DTR reset, so a person power-cycles the board
    // (the simulator hangs up and comes back); the page follows.
    ui.click(&on_card("mk3-a", ".act-firmware-restart")).await?;
    ui.wait(
        &format!("{c}.dataset.state !== 'error'"),
        "the session reopened",
    )
    .await?;
    f.sims[0].handle.disconnect();
    ui.wait(
        &format!("{c}.dataset.state === 'awaiting_clear' && {c}.dataset.stale === 'false'"),
        "the printer back, live, waiting for the operator",
    )
    .await?;
    assert_eq!(
        ui.text(&on_card("mk3-a", ".state")).await?,
        "Halted: check the machine, then confirm"
    );
    ui.screenshots("printer-recovered").await?;
    ui.click(&on_card("mk3-a", ".act-clear")).await?;
    ui.wait(&format!("{c}.dataset.state === 'idle'"), "idle")
        .await?;
    ui.assert_no_js_errors();
    ui.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_change_pause_says_which_tool_and_what_to_do_before_resume() -> Result<()> {
    let _one = ONE_BROWSER.lock().await;
    let mut mill = MachineSpec::mill("mill-1");
    mill.time_scale = 20.0;
    let f = Factory::start(&[mill]).await?;
    let ui = Ui::open(&f.base).await?;
    ui.sign_in(&f.token).await?;
    let c = card("mill-1");
    ui.wait(&format!("{c}?.dataset.state === 'idle'"), "the mill idle")
        .await?;
    let dir = TempDir::new("toolchange");
    let prog = dir.path().join("two_tools.nc");
    std::fs::write(
        &prog,
        "G20\nG90\nM3 S10000\nG0 Z0.1\nG1 Z-0.01 F5\nG1 X0.2 F20\nG0 Z0.1\nM5\nM6 T1\nM3 S10000\nG1 Z-0.01 F5\nG1 X0 F20\nG0 Z0.1\nM5\n",
    )?;
    let file = f.upload(&prog).await?;
    f.submit(json!({"file_id": file, "machine_id": "mill-1", "expand_canned_cycles": true}))
        .await?;
    ui.wait(
        &format!("{c}.dataset.state === 'paused'"),
        "the tool-change pause",
    )
    .await?;
    ui.wait(
        &format!("{c}.querySelector('.pause-note').textContent.includes('T01')"),
        "the tool-change note",
    )
    .await?;
    let badge = ui.text(&on_card("mill-1", ".state")).await?;
    assert!(badge.contains("T01"), "badge: {badge}");
    let note = ui.text(&on_card("mill-1", ".pause-note")).await?;
    assert!(
        note.contains("line 9")
            && note.contains("T01")
            && note.contains("zero Z")
            && note.contains("Resume"),
        "note: {note}"
    );
    ui.screenshots("mill-tool-change").await?;
    // Paused, Resume shows: the emergency stop is still alone at the foot.
    assert!(
        ui.eval::<bool>(&shown(&on_card("mill-1", ".act-resume")))
            .await?
    );
    assert!(
        ui.eval::<bool>(&estop_at_the_foot(&c)).await?,
        "emergency stop alone at the foot of the card while paused"
    );
    // The machine's page says the same above its Resume button.
    ui.go("#/machine/mill-1").await?;
    ui.wait(
        &format!(
            "{}?.textContent.includes('T01')",
            "document.querySelector('.pause-note')"
        ),
        "the note on the machine's page",
    )
    .await?;
    ui.screenshots("machine-detail-tool-change").await?;
    ui.click(&on_card("mill-1", ".act-resume")).await?;
    ui.wait(
        &format!("{c}.querySelector('.job').dataset.jobState === 'completed'"),
        "the job completed after the tool change",
    )
    .await?;
    ui.assert_no_js_errors();
    ui.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pla_file_goes_to_the_pla_printer_and_the_form_warns_before_a_mismatch() -> Result<()> {
    let _one = ONE_BROWSER.lock().await;
    let mut petg = MachineSpec::printer("mk3-petg", "prusa-mk3s");
    petg.tags = vec!["material:PETG"];
    petg.name = Some("Prusa PETG");
    let mut pla = MachineSpec::printer("mk3-pla", "prusa-mk3s");
    pla.tags = vec!["material:PLA"];
    pla.name = Some("Prusa PLA");
    // Slow enough to still be running for the pictures.
    pla.time_scale = 20.0;
    // The PETG printer comes first: without the material rule it would
    // take the job.
    let f = Factory::start(&[petg, pla]).await?;
    let ui = Ui::open(&f.base).await?;
    ui.sign_in(&f.token).await?;
    ui.wait(
        &format!(
            "{}?.dataset.state === 'idle' && {}?.dataset.state === 'idle'",
            card("mk3-petg"),
            card("mk3-pla")
        ),
        "both printers idle",
    )
    .await?;
    assert_eq!(
        ui.text(&on_card("mk3-petg", ".tags")).await?,
        "material:PETG",
        "the card shows the machine's tags"
    );
    ui.go("#/queue").await?;
    ui.choose_file("#file-input", &data("coupling_pla.gcode"))
        .await?;
    ui.wait(
        "document.querySelector('#analysis-facts [data-fact=material]')?.textContent === 'PLA'",
        "the file's material in the analysis",
    )
    .await?;
    assert!(
        ui.eval::<bool>(
            "document.querySelector('#analysis-fits li.fit-no[data-machine=\"mk3-petg\"]')?.textContent.includes('sliced for PLA')"
        )
        .await?
    );
    assert!(
        ui.eval::<bool>(
            "!!document.querySelector('#analysis-fits li.fit-ok[data-machine=\"mk3-pla\"]')"
        )
        .await?
    );
    // Choosing the PETG printer says so before queueing.
    ui.eval::<bool>(
        "(() => { const s = document.querySelector('#q-target'); s.value = 'machine:mk3-petg'; \
         s.dispatchEvent(new Event('change')); return true; })()",
    )
    .await?;
    ui.wait(
        "document.querySelector('#material-warning').dataset.mismatch === 'true' \
         && document.querySelector('#material-warning').textContent.includes('material:PETG')",
        "the mismatch warning",
    )
    .await?;
    ui.screenshots("queue-material-mismatch").await?;
    // Any printer: it goes to the PLA one.
    ui.eval::<bool>(
        "(() => { const s = document.querySelector('#q-target'); s.value = 'kind:printer'; \
         s.dispatchEvent(new Event('change')); return true; })()",
    )
    .await?;
    ui.click("#queue-submit").await?;
    ui.wait(
        "document.querySelector('#queue-ok').textContent.startsWith('Queued job #')",
        "queued",
    )
    .await?;
    ui.go("#/machines").await?;
    ui.wait(
        &format!("{}.dataset.state === 'running'", card("mk3-pla")),
        "the PLA printer running it",
    )
    .await?;
    assert_eq!(
        ui.eval::<String>(&format!("{}.dataset.state", card("mk3-petg")))
            .await?,
        "idle"
    );
    // Cards say the name; the queue says the name with the id.
    assert_eq!(ui.text(&on_card("mk3-pla", "h3")).await?, "Prusa PLA");
    ui.screenshots("material-routed").await?;
    ui.go("#/queue").await?;
    ui.wait(
        "document.querySelector('#jobs-active li[data-state=running]')?.textContent.includes('on Prusa PLA (mk3-pla)')",
        "the running job named by its machine's name and id",
    )
    .await?;
    ui.go("#/machines").await?;
    // The API says the same, and the override queues it anyway.
    let file = f.upload(&data("coupling_pla.gcode")).await?;
    let (s, v) = f
        .post("/jobs", json!({"file_id": file, "machine_id": "mk3-petg"}))
        .await?;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v.to_string().contains("sliced for PLA"), "{v}");
    let (s, v) = f
        .post(
            "/jobs",
            json!({"file_id": file, "machine_id": "mk3-petg", "any_material": true}),
        )
        .await?;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    ui.assert_no_js_errors();
    ui.close().await;
    Ok(())
}

/// README's pictures: the factory at work (three machines busy, a
/// temperature chart with history), taken here so they stay true.
/// `UPDATE_DOCS=1` copies them into `docs/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_pictures_show_the_factory_at_work() -> Result<()> {
    let _one = ONE_BROWSER.lock().await;
    let slow = |id: &'static str, profile: &'static str| {
        let mut m = MachineSpec::printer(id, profile);
        // Long enough to still be running when the pictures are taken.
        m.time_scale = 20.0;
        m
    };
    let f = Factory::start(&[
        slow("mk3-a", "prusa-mk3s"),
        slow("ender-b", "creality-ender3"),
        slow("mill-1", "grbl-3018"),
    ])
    .await?;
    for (file, machine) in [
        ("bracket_petg.gcode", "mk3-a"),
        ("coupling_pla.gcode", "ender-b"),
        ("pcb_isolation_and_drill_inch.nc", "mill-1"),
    ] {
        let id = f.upload(&data(file)).await?;
        let mut body = json!({"file_id": id, "machine_id": machine});
        if machine == "mill-1" {
            body["expand_canned_cycles"] = json!(true);
        }
        f.submit(body).await?;
    }
    let ui = Ui::open(&f.base).await?;
    ui.sign_in(&f.token).await?;
    for m in ["mk3-a", "ender-b", "mill-1"] {
        ui.wait(
            &format!("{}?.dataset.state === 'running'", card(m)),
            &format!("{m} at work"),
        )
        .await?;
    }
    // A print's card says its layer and height.
    ui.wait(
        "/^Layer \\d+ of \\d+ · Z \\d+\\.\\d\\d mm$/.test(document.querySelector('#m-mk3-a-layer')?.textContent ?? '') \
         && document.querySelector('#m-mk3-a-layer').offsetParent !== null",
        "the layer and Z of the print",
    )
    .await?;
    ui.go("#/machine/mk3-a").await?;
    // The sampler records once a second: wait for 15 s of history.
    ui.wait(
        "[...document.querySelectorAll('#temp-chart polyline.actual')].some(p => p.getAttribute('points').trim().split(/\\s+/).length >= 15)",
        "a chart with history",
    )
    .await?;
    ui.screenshots("readme-machine").await?;
    ui.go("#/machines").await?;
    ui.wait(
        &format!("{}?.dataset.state === 'running'", card("mill-1")),
        "the cards",
    )
    .await?;
    ui.screenshots("readme-machines").await?;
    ui.assert_no_js_errors();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        let dir = screenshot_dir();
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        std::fs::copy(
            dir.join("readme-machine-desktop.png"),
            docs.join("dashboard.png"),
        )?;
        std::fs::copy(
            dir.join("readme-machines-phone.png"),
            docs.join("dashboard-phone.png"),
        )?;
    }
    ui.close().await;
    Ok(())
}

/// A plate of two small tiles for the Production view.
const TILE: &str =
    "G28\nG90\nM83\nG1 Z0.2 F3000\nG1 X10 Y10 E1 F1500\nG1 X40 Y10 E2\nG1 Z5 F3000\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_production_view_clears_the_qc_queue_with_a_tap_each_and_links_the_certification_report()
-> Result<()> {
    let _one = ONE_BROWSER.lock().await;
    let mut printer = MachineSpec::printer("mk3-a", "prusa-mk3s");
    printer.time_scale = 5000.0;
    // The finished plate waits for clearance: setup time in the Pareto.
    printer.require_bed_clear = true;
    let f = Factory::start_with(
        &[printer],
        "[apc.tile.fdm_printer]\nwindow = { min_units = 2 }\nquality_ratio_min = 0.9\n",
    )
    .await?;
    let (s, file) = f
        .upload_bytes("tile.gcode", TILE.as_bytes().to_vec())
        .await?;
    assert_eq!(s, StatusCode::CREATED, "{file}");
    let (s, p) = f
        .post(
            "/products",
            json!({"sku": "tile", "name": "Tile", "file_id": file["id"], "units_per_job": 2}),
        )
        .await?;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let (s, o) = f
        .post("/production-orders", json!({"sku": "tile", "quantity": 2}))
        .await?;
    assert_eq!(s, StatusCode::CREATED, "{o}");
    let order = o["id"].as_u64().unwrap();
    f.order_until(order, WAIT, |o| o["progress"]["produced"] == 2)
        .await?;

    let ui = Ui::open(&f.base).await?;
    ui.sign_in(&f.token).await?;
    ui.click("#nav a[data-view='production']").await?;
    ui.wait(
        "document.querySelectorAll('#qc-queue .qc-item').length === 2",
        "two units waiting for QC",
    )
    .await?;
    ui.wait(
        "document.querySelector('#verdicts .verdict .report-link')",
        "the verdict with its report link",
    )
    .await?;
    assert!(
        ui.text("#orders").await?.contains("0 of 2 good"),
        "{}",
        ui.text("#orders").await?
    );
    ui.screenshots("production").await?;

    // Phone width, as at the machine: one tap passes, a reason and a tap
    // fails.
    ui.phone().await?;
    ui.click("#qc-queue li[data-key='U000000001'] .qc-pass")
        .await?;
    ui.wait(
        "!document.querySelector(\"#qc-queue li[data-key='U000000001']\")",
        "the passed unit to leave the queue",
    )
    .await?;
    ui.eval::<bool>(
        "(() => { const s = document.querySelector(\"#qc-queue li[data-key='U000000002'] select\"); \
         s.value = 'layer_shift'; return true; })()",
    )
    .await?;
    ui.click("#qc-queue li[data-key='U000000002'] .qc-fail")
        .await?;
    ui.wait(
        "!document.querySelector(\"#qc-queue li[data-key='U000000002']\")",
        "the failed unit to leave the queue",
    )
    .await?;
    ui.desktop().await?;
    let (_, u1) = f.get("/units/U000000001").await?;
    let (_, u2) = f.get("/units/U000000002").await?;
    assert_eq!(u1["qc"], "pass", "{u1}");
    assert_eq!(
        (&u2["qc"], &u2["qc_history"][0]["reason"]),
        (&json!("fail"), &json!("layer_shift")),
        "{u2}"
    );
    ui.wait(
        "document.querySelector('#orders').textContent.includes('1 scrap')",
        "the order's progress to count the scrap",
    )
    .await?;
    ui.wait(
        "document.querySelector('#pareto-scrap').textContent.includes('layer_shift')",
        "the scrap Pareto",
    )
    .await?;
    ui.wait(
        "document.querySelector('#pareto-downtime').textContent.includes('awaiting operator: bed clear')",
        "the downtime Pareto to show the plate waiting for clearance",
    )
    .await?;
    assert!(
        ui.text("#pareto-scrap")
            .await?
            .contains("1 unit · 100 % cumulative"),
        "{}",
        ui.text("#pareto-scrap").await?
    );
    ui.screenshots("production-after-qc").await?;

    // The Paretos as the API serves them, against the state log and the
    // units read independently: the downtime total is every span that is
    // not producing, idle or planned down, clipped to the window.
    let to = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let (s, losses) = f.get(&format!("/metrics/losses?from=0&to={to}")).await?;
    assert_eq!(s, StatusCode::OK, "{losses}");
    assert_eq!(
        (&losses["scrap"], &losses["scrap_total"]),
        (
            &json!([{"reason": "layer_shift", "units": 1, "share": 1.0, "cumulative_share": 1.0}]),
            &json!(1)
        ),
        "{losses}"
    );
    let (_, states) = f
        .get(&format!("/machines/mk3-a/states?from=0&to={to}"))
        .await?;
    let states = states.as_array().expect("a state list");
    let mut expected = 0;
    for (i, c) in states.iter().enumerate() {
        let end = states
            .get(i + 1)
            .map_or(to, |n| n["at_ms"].as_u64().expect("at_ms"));
        if !["producing", "idle", "planned_down"].contains(&c["state"].as_str().expect("state")) {
            expected += end - c["at_ms"].as_u64().expect("at_ms");
        }
    }
    assert!(expected > 0, "the plate waited for clearance: {states:?}");
    assert_eq!(losses["downtime_total_ms"], json!(expected), "{losses}");
    let (s, bad) = f.get("/metrics/losses?scope=class").await?;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");

    // The report link opens a printable page with its charts inline.
    let href: String = ui
        .eval("document.querySelector('#verdicts .report-link').getAttribute('href')")
        .await?;
    let page: String = ui
        .eval(&format!(
            "fetch({}).then(r => r.ok && r.headers.get('content-type').startsWith('text/html') ? r.text() : '')",
            js_str(&href)
        ))
        .await?;
    assert!(
        page.contains("<svg") && page.contains("U000000002") && page.contains("quality_ratio_min"),
        "{page}"
    );
    ui.assert_no_js_errors();
    ui.close().await;
    Ok(())
}

/// A small print: home, a first layer of a few moves.
const PLATE: &str = "G28\nG90\nM83\nG1 Z0.2 F3000\nG1 X10 Y10 E1 F1500\nG1 X40 Y10 E2\n\
G1 X40 Y40 E2\nG1 X10 Y40 E2\nG1 X10 Y10 E2\nG1 Z5 F3000\n";

/// A mill program that pauses at a tool change (`M6 T1`) at line 9.
const TWO_TOOLS: &str = "G20\nG90\nM3 S10000\nG0 Z0.1\nG1 Z-0.01 F5\nG1 X0.2 F20\nG0 Z0.1\nM5\n\
M6 T1\nM3 S10000\nG1 Z-0.01 F5\nG1 X0 F20\nG0 Z0.1\nM5\n";

fn attention_item(kind: &str, machine: Option<&str>) -> String {
    match machine {
        Some(m) => format!(
            "document.querySelector('#attention-list li[data-kind=\"{kind}\"][data-machine=\"{m}\"]')"
        ),
        None => format!("document.querySelector('#attention-list li[data-kind=\"{kind}\"]')"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_needs_the_operator_is_listed_counted_in_the_header_and_the_tab_and_leaves_when_done()
-> Result<()> {
    let _one = ONE_BROWSER.lock().await;
    let mut mill = MachineSpec::mill("mill-1");
    mill.time_scale = 20.0;
    let f = Factory::start(&[mill, MachineSpec::printer("mk3-a", "prusa-mk3s")]).await?;
    let ui = Ui::open(&f.base).await?;
    ui.sign_in(&f.token).await?;
    ui.wait(
        &format!(
            "{}?.dataset.state === 'idle' && {}?.dataset.state === 'idle'",
            card("mill-1"),
            card("mk3-a")
        ),
        "both machines idle",
    )
    .await?;
    // Nothing needs anyone: no panel, no count, a plain title.
    assert!(!ui.eval::<bool>(&shown("#attention")).await?);
    assert_eq!(ui.text("#attention-count").await?, "");
    assert_eq!(
        ui.eval::<String>("document.title").await?,
        "Machines · microfactory"
    );
    // The operator asks for a sound on new items (a setting of this browser).
    ui.go("#/attention").await?;
    ui.wait(
        "document.querySelector('#attention-empty')?.offsetParent !== null",
        "the empty attention page",
    )
    .await?;
    ui.click("#attention-notify").await?;
    ui.wait(
        "localStorage.getItem('microfactory.notify') === '1'",
        "the setting kept",
    )
    .await?;
    ui.go("#/machines").await?;

    // A unit made by a production order waits for inspection.
    let (s, file) = f
        .upload_bytes("tile.gcode", PLATE.as_bytes().to_vec())
        .await?;
    assert!(s.is_success(), "{file}");
    let (s, v) = f
        .post(
            "/products",
            json!({"sku": "tile", "name": "Test tile", "file_id": file["id"], "units_per_job": 1}),
        )
        .await?;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = f
        .post("/production-orders", json!({"sku": "tile", "quantity": 1}))
        .await?;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    ui.wait(
        &format!(
            "{}?.textContent.includes('1 unit of tile awaiting inspection')",
            attention_item("awaiting_qc", None)
        ),
        "the unit awaiting inspection",
    )
    .await?;

    // Two mill jobs: the first pauses at its tool change; the card says
    // which job runs next there.
    let prog = f
        .upload_bytes("two_tools.nc", TWO_TOOLS.as_bytes().to_vec())
        .await?
        .1;
    let ids = f
        .submit(json!({"file_id": prog["id"], "machine_id": "mill-1", "copies": 2, "expand_canned_cycles": true}))
        .await?;
    ui.wait(
        &format!(
            "{}.querySelector('.next-job')?.dataset.job === '{}' && {0}.querySelector('.next-job').offsetParent !== null",
            card("mill-1"),
            ids[1]
        ),
        "the mill's next job on its card",
    )
    .await?;
    let next = ui.text(&on_card("mill-1", ".next-job")).await?;
    assert!(
        next.starts_with(&format!("Next: #{} two_tools.nc — starts about ", ids[1]))
            && next.contains("done about"),
        "{next}"
    );
    ui.wait(
        &format!(
            "{}?.textContent.includes('T01')",
            attention_item("paused", Some("mill-1"))
        ),
        "the tool change on the list",
    )
    .await?;

    // The printer halts: it goes first, the most urgent.
    let (s, _) = f.post("/machines/mk3-a/estop", json!({})).await?;
    assert_eq!(s, StatusCode::OK);
    ui.wait(
        "document.querySelector('#attention-list li')?.dataset.kind === 'faulted' \
         && document.querySelector('#attention-list li').dataset.machine === 'mk3-a'",
        "the halted printer first",
    )
    .await?;
    assert_eq!(ui.text("#attention-count").await?, "3");
    assert!(
        ui.eval::<String>("document.title")
            .await?
            .starts_with("(3) Machines"),
        "the tab title counts them"
    );
    assert!(
        ui.eval::<u32>("Number(document.documentElement.dataset.announced ?? 0)")
            .await?
            >= 2,
        "new items were announced"
    );
    ui.screenshots("attention").await?;
    if std::env::var_os("UPDATE_DOCS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        std::fs::copy(
            screenshot_dir().join("attention-desktop.png"),
            docs.join("dashboard-attention.png"),
        )?;
    }
    ui.go("#/attention").await?;
    ui.wait(&shown("#attention-list li"), "the attention page")
        .await?;
    ui.screenshots("attention-page").await?;
    ui.click("#attention-list li[data-kind=\"faulted\"] a")
        .await?;
    ui.wait(
        "location.hash === '#/machine/mk3-a' && !!document.querySelector('.card[data-machine=\"mk3-a\"]')",
        "the halted printer's page",
    )
    .await?;

    // The tool is changed: Resume, and the item leaves the list.
    ui.go("#/machines").await?;
    ui.click(&on_card("mill-1", ".act-resume")).await?;
    // (The second job pauses at its own tool change later: a new item.)
    ui.wait(
        &format!(
            "!document.querySelector('#attention-list li[data-kind=\"paused\"][data-job=\"{}\"]')",
            ids[0]
        ),
        "the first job's tool change gone from the list",
    )
    .await?;
    let (_, items) = f.get("/attention").await?;
    assert!(
        items.as_array().is_some_and(|a| a
            .iter()
            .all(|i| !(i["kind"] == "paused" && i["job_id"] == ids[0]))),
        "{items}"
    );
    ui.assert_no_js_errors();
    ui.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_phone_the_queue_comes_first_the_header_is_one_row_and_moves_keep_focus_and_say_priority()
-> Result<()> {
    let _one = ONE_BROWSER.lock().await;
    let f = Factory::start(&[MachineSpec::printer("mk3-a", "prusa-mk3s")]).await?;
    // A disabled printer: the jobs stay queued.
    let (s, _) = f.post("/machines/mk3-a/disable", json!({})).await?;
    assert_eq!(s, StatusCode::OK);
    let (_, file) = f
        .upload_bytes("tile.gcode", PLATE.as_bytes().to_vec())
        .await?;
    let (_, spare) = f
        .upload_bytes("spare.gcode", format!("{PLATE}G1 X1\n").into_bytes())
        .await?;
    let urgent = f
        .submit(json!({"file_id": file["id"], "priority": 5}))
        .await?[0];
    let plain = f
        .submit(json!({"file_id": file["id"], "copies": 2}))
        .await?;
    let (_, list) = f.get("/files").await?;
    assert!(
        list.as_array().is_some_and(|a| a.len() == 2
            && a.iter()
                .all(|x| x.get("analysis").is_none() && x["name"].is_string())),
        "the list has summaries: {list}"
    );

    let ui = Ui::open(&f.base).await?;
    ui.sign_in(&f.token).await?;
    ui.wait(
        &format!("{}?.dataset.state === 'disabled'", card("mk3-a")),
        "the card",
    )
    .await?;
    // The list of files was fetched once, at sign-in.
    let fetched: u32 = ui
        .eval("performance.getEntriesByType('resource').filter((e) => e.name.endsWith('/api/v1/files')).length")
        .await?;
    assert_eq!(fetched, 1, "GET /files at sign-in");

    ui.phone().await?;
    ui.go("#/queue").await?;
    ui.wait(
        &format!("document.querySelectorAll('#jobs-queued li').length === 3 && document.querySelector('#jobs-queued li').dataset.job === '{urgent}'"),
        "three queued jobs, the urgent one first",
    )
    .await?;
    let queue_first: bool = ui
        .eval("document.querySelector('#queue-panel').getBoundingClientRect().top < document.querySelector('.q-add').getBoundingClientRect().top \
               && document.querySelector('.q-add').getBoundingClientRect().top < document.querySelector('.q-ended').getBoundingClientRect().top")
        .await?;
    assert!(
        queue_first,
        "on a phone, the queue comes before the upload form"
    );
    let one_row: bool = ui
        .eval("(() => { const tops = [...document.querySelectorAll('.top > *')].filter((e) => e.offsetParent !== null) \
               .map((e) => e.getBoundingClientRect()); return tops.every((r) => r.top < tops[0].bottom && r.bottom > tops[0].top); })()")
        .await?;
    assert!(one_row, "the header is one row at phone width");
    ui.screenshots("queue-phone-order").await?;
    if std::env::var_os("UPDATE_DOCS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        std::fs::copy(
            screenshot_dir().join("queue-phone-order-phone.png"),
            docs.join("dashboard-queue-phone.png"),
        )?;
    }
    ui.phone().await?;

    // Move up within the same priority: no question, focus stays.
    let up = |id: u64| format!("#jobs-queued li[data-job=\"{id}\"] .act-up");
    ui.click(&up(plain[1])).await?;
    ui.wait(
        &format!("[...document.querySelectorAll('#jobs-queued li')].map((li) => li.dataset.job).join() === '{urgent},{},{}'", plain[1], plain[0]),
        "the second copy moved up",
    )
    .await?;
    ui.wait(
        &format!("document.activeElement?.closest('li')?.dataset.job === '{}' && document.activeElement.classList.contains('act-up')", plain[1]),
        "focus on the moved job's Move up",
    )
    .await?;
    // Above a higher priority: it says the priority changes, and asks.
    ui.click(&up(plain[1])).await?;
    ui.wait("document.querySelector('#confirm').open", "the question")
        .await?;
    let q = ui.text("#confirm-text").await?;
    assert!(q.contains("changes its priority from 0 to 5"), "{q}");
    ui.click("#confirm-yes").await?;
    ui.wait(
        &format!(
            "document.querySelector('#jobs-queued li').dataset.job === '{}'",
            plain[1]
        ),
        "moved to the top",
    )
    .await?;
    ui.wait(
        &format!("document.activeElement?.closest('li')?.dataset.job === '{}' && document.activeElement.classList.contains('act-down')", plain[1]),
        "focus on the moved job's Move down (Move up is disabled at the top)",
    )
    .await?;
    let (_, moved) = f.get(&format!("/jobs/{}", plain[1])).await?;
    assert_eq!(moved["priority"], 5, "{moved}");
    ui.desktop().await?;

    // The job page names the file and the machine.
    ui.go(&format!("#/job/{urgent}")).await?;
    ui.wait(
        "document.querySelector('#job-facts [data-fact=file]')?.textContent.startsWith('tile.gcode ')",
        "the file's name on the job page",
    )
    .await?;
    assert_eq!(
        ui.text("#job-facts [data-fact=machine]").await?,
        "—",
        "not yet on a machine"
    );

    // Files are deleted from the page; one in use is refused with why.
    ui.go("#/queue").await?;
    ui.wait(
        "document.querySelectorAll('#stored-file option').length === 2",
        "the stored files",
    )
    .await?;
    let in_use = file["id"].as_str().unwrap();
    ui.allow_api_error(&format!("/api/v1/files/{in_use}"));
    for (id, expect, says) in [
        (in_use, "#stored-error", "tile.gcode was not deleted"),
        (
            spare["id"].as_str().unwrap(),
            "#stored-ok",
            "Deleted spare.gcode.",
        ),
    ] {
        ui.eval::<bool>(&format!(
            "(() => {{ document.querySelector('#stored-file').value = {}; return true; }})()",
            js_str(id)
        ))
        .await?;
        ui.click("#stored-delete").await?;
        ui.wait("document.querySelector('#confirm').open", "the question")
            .await?;
        ui.click("#confirm-yes").await?;
        ui.wait(
            &format!("document.querySelector('{expect}').textContent !== ''"),
            expect,
        )
        .await?;
        let text = ui.text(expect).await?;
        assert!(text.contains(says), "{expect}: {text}");
    }
    ui.wait(
        "document.querySelectorAll('#stored-file option').length === 1",
        "the spare file gone from the list",
    )
    .await?;
    let (s, _) = f
        .get(&format!("/files/{}", spare["id"].as_str().unwrap()))
        .await?;
    assert_eq!(s, StatusCode::NOT_FOUND);
    ui.assert_no_js_errors();
    ui.close().await;
    Ok(())
}

/// Where the daemon of `f` keeps file `id`'s content.
fn blob_of(f: &Factory, id: &str) -> PathBuf {
    let name = format!("{id}.gcode");
    ["data/files", "files"]
        .iter()
        .map(|d| f.dir.path().join(d).join(&name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no blob {name} under {}", f.dir.path().display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_file_vanished_stays_on_the_attention_list_through_a_restart_until_dismissed()
-> Result<()> {
    let _one = ONE_BROWSER.lock().await;
    let mut f = Factory::start(&[MachineSpec::printer("mk3-a", "prusa-mk3s")]).await?;
    // Queued while the printer is out of service, then the file's content
    // goes (removed by hand, an older backup restored).
    let (s, _) = f.post("/machines/mk3-a/disable", json!({})).await?;
    assert_eq!(s, StatusCode::OK);
    let (_, file) = f
        .upload_bytes("plate.gcode", PLATE.as_bytes().to_vec())
        .await?;
    let id = f
        .submit(json!({"file_id": file["id"], "machine_id": "mk3-a"}))
        .await?[0];
    std::fs::remove_file(blob_of(&f, file["id"].as_str().unwrap()))?;
    // Nothing to acknowledge yet: a queued job, an unknown one.
    let (s, v) = f
        .post(&format!("/jobs/{id}/acknowledge"), json!({}))
        .await?;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v.to_string().contains("only an ended job"), "{v}");
    let (s, v) = f.post("/jobs/999/acknowledge", json!({})).await?;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");

    let ui = Ui::open(&f.base).await?;
    ui.sign_in(&f.token).await?;
    ui.wait(
        &format!("{}?.dataset.state === 'disabled'", card("mk3-a")),
        "the printer out of service",
    )
    .await?;
    assert_eq!(ui.text("#attention-count").await?, "");
    ui.click(&on_card("mk3-a", ".act-enable")).await?;
    let item = format!(
        "document.querySelector('#attention-list li[data-kind=\"job_failed\"][data-job=\"{id}\"]')"
    );
    ui.wait(
        &format!("{item}?.textContent.includes('missing from the store')"),
        "the failed job on the attention list",
    )
    .await?;
    // No machine holds for it: the printer is free, not stuck retrying.
    ui.wait(
        &format!("{}.dataset.state === 'idle'", card("mk3-a")),
        "the printer idle",
    )
    .await?;
    assert!(ui.eval::<bool>(&format!("!{item}.dataset.machine")).await?);
    assert_eq!(ui.text("#attention-count").await?, "1");
    assert!(
        ui.eval::<String>("document.title")
            .await?
            .starts_with("(1) "),
        "the tab title counts it"
    );
    let (_, job) = f.get(&format!("/jobs/{id}")).await?;
    assert_eq!(
        (&job["state"], &job["awaiting_ack"]),
        (&json!("failed"), &json!(true)),
        "{job}"
    );
    ui.screenshots("attention-job-failed").await?;

    // It survives the daemon's death: the page reconnects and still says so.
    f.kill9().await;
    ui.wait(
        "document.querySelector('#conn').dataset.conn === 'reconnecting'",
        "the page noticing",
    )
    .await?;
    f.relaunch_same_port().await?;
    ui.wait(
        "document.querySelector('#conn').dataset.conn === 'live'",
        "the page live again",
    )
    .await?;
    ui.wait(&format!("{item} !== null"), "the item after the restart")
        .await?;
    // The outage's refused connections were logged by Chromium as errors;
    // they are the test's doing, not the page's.
    ui.errors.lock().unwrap().clear();

    // Dismissed: gone from the list, the count and the title, for good.
    ui.click(&format!(
        "#attention-list li[data-job=\"{id}\"] .act-dismiss"
    ))
    .await?;
    ui.wait(&format!("{item} === null"), "the item gone")
        .await?;
    assert_eq!(ui.text("#attention-count").await?, "");
    let (_, job) = f.get(&format!("/jobs/{id}")).await?;
    assert_eq!(
        (&job["state"], &job["awaiting_ack"]),
        (&json!("failed"), &json!(false)),
        "{job}"
    );
    let (_, items) = f.get("/attention").await?;
    assert_eq!(items, json!([]));
    ui.assert_no_js_errors();
    ui.close().await;
    Ok(())
}

/// Every visible control on the page smaller than a finger (44 × 44 CSS
/// px, WCAG 2.5.5): buttons, fields, the header's links, and the labels
/// that carry a checkbox (the label is the target).
async fn small_targets(ui: &Ui) -> Result<Vec<String>> {
    ui.eval(
        "[...document.querySelectorAll('button, select, input:not([type=checkbox]):not([type=hidden]), \
           nav a, label.check, summary')] \
         .filter((e) => e.offsetParent !== null && e.getClientRects().length > 0) \
         .map((e) => [e.getBoundingClientRect(), e]) \
         .filter(([r]) => r.width < 43.5 || r.height < 43.5) \
         .map(([r, e]) => `${Math.round(r.width)}x${Math.round(r.height)} ${e.outerHTML.slice(0, 90)}`)",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_phone_every_control_is_at_least_a_finger_wide() -> Result<()> {
    let _one = ONE_BROWSER.lock().await;
    let mut printer = MachineSpec::printer("mk3-a", "prusa-mk3s");
    // Long enough to be running throughout.
    printer.time_scale = 20.0;
    let f = Factory::start(&[printer, MachineSpec::mill("mill-1")]).await?;
    let ui = Ui::open(&f.base).await?;
    ui.phone().await?;
    ui.wait(
        "document.querySelector('#signin-token')",
        "the sign-in form",
    )
    .await?;
    let mut small = Vec::new();
    for s in small_targets(&ui).await? {
        small.push(format!("sign-in: {s}"));
    }
    ui.sign_in(&f.token).await?;
    let file = f.upload(&data("bracket_petg.gcode")).await?;
    f.submit(json!({"file_id": file, "machine_id": "mk3-a"}))
        .await?;
    ui.wait(
        &format!("{}?.dataset.state === 'running'", card("mk3-a")),
        "the print running",
    )
    .await?;
    // Each view as an operator meets it on a phone; the queue with a file
    // chosen, so its form and analysis show.
    for (hash, ready) in [
        ("#/machines", shown(&on_card("mk3-a", ".act-estop"))),
        ("#/attention", shown("#attention-notify")),
        ("#/machine/mk3-a", shown("#console-input")),
        ("#/queue", shown("#jobs-active li")),
    ] {
        ui.go(hash).await?;
        ui.wait(&ready, hash).await?;
        if hash == "#/queue" {
            ui.choose_file("#file-input", &data("coupling_pla.gcode"))
                .await?;
            ui.wait(&shown("#queue-submit"), "the queue form").await?;
        }
        for s in small_targets(&ui).await? {
            small.push(format!("{hash}: {s}"));
        }
    }
    ui.go("#/machines").await?;
    ui.click(&on_card("mk3-a", ".act-cancel")).await?;
    ui.wait(
        "document.querySelector('#confirm').open",
        "the confirmation",
    )
    .await?;
    for s in small_targets(&ui).await? {
        small.push(format!("confirmation: {s}"));
    }
    assert!(
        small.is_empty(),
        "smaller than 44 x 44 px:\n{}",
        small.join("\n")
    );
    ui.click("#confirm-no").await?;
    ui.assert_no_js_errors();
    ui.close().await;
    Ok(())
}

/// A webhook receiver that answers 500 until told to be healthy, then 200;
/// counts the 200s in a watch the test awaits.
#[derive(Clone)]
struct FlakyHook {
    healthy: Arc<std::sync::atomic::AtomicBool>,
    delivered: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for FlakyHook {
    fn default() -> Self {
        Self {
            healthy: Arc::default(),
            delivered: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }
}

async fn flaky_hook() -> (String, FlakyHook) {
    use std::sync::atomic::Ordering;
    let hook = FlakyHook::default();
    let state = hook.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let s = state.clone();
            async move {
                if s.healthy.load(Ordering::SeqCst) {
                    s.delivered.send_modify(|n| *n += 1);
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), hook)
}

/// A storefront order for `tile`.
fn sales_order(external_id: &str, quantity: u32, when_short: &str) -> serde_json::Value {
    json!({"channel": "web", "external_id": external_id,
        "lines": [{"sku": "tile", "quantity": quantity}],
        "ship_to": {"name": "Ada Lovelace", "street1": "12 Market St", "street2": null,
            "city": "San Francisco", "region": "CA", "postal_code": "94105", "country": "US",
            "phone": null, "email": null},
        "service": "standard", "when_short": when_short})
}

fn sales_order_item(id: u64) -> String {
    format!("document.querySelector('#order-groups li.sales-order[data-key=\"{id}\"]')")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_goes_from_allocated_to_shipped_through_the_orders_page_printing_its_label()
-> Result<()> {
    use std::sync::atomic::Ordering;
    let _one = ONE_BROWSER.lock().await;
    let (hook_url, hook) = flaky_hook().await;
    let mut printer = MachineSpec::printer("mk3-a", "prusa-mk3s");
    printer.time_scale = 5000.0;
    let config = format!(
        "[shop]\nname = \"Ada's Couplings\"\n[shop.address]\nname = \"Ada's Workshop\"\n\
         street1 = \"200 Industrial Way\"\ncity = \"Oakland\"\nregion = \"CA\"\n\
         postal_code = \"94607\"\ncountry = \"US\"\n\
         [[webhooks]]\nid = \"erp\"\nurl = \"{hook_url}\"\nsecret = \"0123456789abcdef\"\n\
         topics = [\"*\"]\n[webhook_retry]\nbase_ms = 50\ncap_ms = 100\ndisable_after = 2\n\
         [[shopify]]\nshop = \"ada.myshopify.com\"\nsecret = \"shpss_dashboard\"\n"
    );
    let mut f = Factory::start_with(&[printer], &config).await?;
    f.terminate().await?;
    let shop = Factory::token_create(f.dir.path(), "storefront")?;
    f.launch().await?;

    let (s, file) = f
        .upload_bytes("tile.gcode", TILE.as_bytes().to_vec())
        .await?;
    assert_eq!(s, StatusCode::CREATED, "{file}");
    let (s, p) = f
        .post(
            "/products",
            json!({"sku": "tile", "name": "Tile", "file_id": file["id"],
                "units_per_job": 2, "auto_pass": true, "weight_g": 35.0}),
        )
        .await?;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let (s, o) = f
        .post("/production-orders", json!({"sku": "tile", "quantity": 2}))
        .await?;
    assert_eq!(s, StatusCode::CREATED, "{o}");
    f.order_until(o["id"].as_u64().unwrap(), WAIT, |o| {
        o["progress"]["good"] == 2
    })
    .await?;
    // Finished goods follow QC through the log reader (no live event).
    let deadline = tokio::time::Instant::now() + WAIT;
    while f.get("/inventory/tile").await?.1["available"] != 2 {
        assert!(tokio::time::Instant::now() < deadline, "stock never came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let place = |body: serde_json::Value, key: &str| {
        f.http
            .post(format!("{}/api/v1/orders", f.base))
            .bearer_auth(&shop)
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let res = place(sales_order("1001", 1, "reject"), "k1").await?;
    assert_eq!(res.status(), StatusCode::CREATED);
    let order: serde_json::Value = res.json().await?;
    let id = order["id"].as_u64().unwrap();
    let serial = order["lines"][0]["allocated"][0]
        .as_str()
        .unwrap()
        .to_string();
    // Shopify pings that a fulfillment order waits (signed with the
    // shop's secret).
    let ping = r#"{"kind":"FULFILLMENT_REQUEST"}"#;
    let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(b"shpss_dashboard")?;
    hmac::Mac::update(&mut mac, ping.as_bytes());
    let signature = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        hmac::Mac::finalize(mac).into_bytes(),
    );
    let res = f
        .http
        .post(format!("{}/shopify/fulfillment_order_notification", f.base))
        .header("content-type", "application/json")
        .header("x-shopify-shop-domain", "ada.myshopify.com")
        .header("x-shopify-hmac-sha256", signature)
        .body(ping)
        .send()
        .await?;
    assert_eq!(res.status(), StatusCode::OK);
    // A second order waits for stock that is not there.
    let res = place(sales_order("1002", 5, "backorder"), "k2").await?;
    assert_eq!(res.status(), StatusCode::CREATED);

    let ui = Ui::open(&f.base).await?;
    ui.sign_in(&f.token).await?;
    ui.click("#nav a[data-view='orders']").await?;
    let item = sales_order_item(id);
    ui.wait(
        &format!("{item}?.closest('[data-group]')?.dataset.group === 'allocated'"),
        "the order under To pick",
    )
    .await?;
    assert!(
        ui.eval::<String>(&format!("{item}.textContent"))
            .await?
            .contains(&serial),
        "the reserved serial is shown"
    );
    ui.wait(
        "document.querySelector('#order-groups [data-group=\"received\"] .sales-order')",
        "the back-order under Waiting for stock",
    )
    .await?;
    ui.wait(
        &format!(
            "document.querySelector('#picklist-table tr[data-sku=\"tile\"]')?.textContent.includes('{serial}')"
        ),
        "the pick list naming the unit",
    )
    .await?;
    // Levels: two on hand, both committed (the back-order took the second
    // unit); the trend has the changes so far.
    ui.wait(
        "(() => { const c = document.querySelector('#inventory-rows tr[data-key=\"tile\"]')?.children; \
         return c && c[1].textContent === '2' && c[2].textContent === '2' && c[4].textContent === '0' \
         && Number(c[5].dataset.points) >= 2 && c[5].querySelector('svg polyline'); })()",
        "the tile's levels and trend",
    )
    .await?;
    // The receiver failed twice in a row: disabled, with the way back.
    ui.wait(
        "document.querySelector('#webhook-rows tr[data-key=\"erp\"][data-state=\"disabled\"] .hook-enable')",
        "the disabled receiver with Re-enable",
    )
    .await?;
    ui.wait(
        "document.querySelector('#shopify-notifications')?.textContent.includes('FULFILLMENT_REQUEST from ada.myshopify.com')",
        "Shopify's ping shown to the operator",
    )
    .await?;
    ui.screenshots("orders").await?;

    // One button per step; the order moves to the next group each time.
    for (button, group, what) in [
        ("so-pick", "picked", "the order under To pack"),
        ("so-pack", "packed", "the order under To label"),
        ("so-label", "labelled", "the order under To ship"),
    ] {
        ui.click(&format!("#order-groups li[data-key='{id}'] .{button}"))
            .await?;
        ui.wait(
            &format!("{item}?.closest('[data-group]')?.dataset.group === '{group}'"),
            what,
        )
        .await?;
    }
    // The click opened the label in a tab of its own.
    let label: String = ui
        .eval("document.querySelector('#orders-view').dataset.lastLabel")
        .await?;
    assert!(label.ends_with("/label.pdf"), "{label}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut urls = Vec::new();
        let mut opened = None;
        for p in ui.browser.pages().await? {
            let url = p.url().await?.unwrap_or_default();
            if url.ends_with(&label) {
                opened = Some(p);
            }
            urls.push(url);
        }
        if let Some(tab) = opened {
            // Back to the dashboard: a page in the background gets no
            // animation frames.
            tab.close().await?;
            ui.page.bring_to_front().await?;
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no tab opened {label}: {urls:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The label and packing slip the page links are PDFs.
    for sel in [".so-label-pdf", ".so-slip"] {
        let kind: String = ui
            .eval(&format!(
                "fetch(document.querySelector(\"#order-groups li[data-key='{id}'] {sel}\").href)\
                 .then(async r => r.headers.get('content-type') + ' ' + (await r.text()).slice(0, 5))"
            ))
            .await?;
        assert_eq!(kind, "application/pdf %PDF-", "{sel}");
    }
    ui.screenshots("orders-labelled").await?;

    ui.click(&format!("#order-groups li[data-key='{id}'] .so-ship"))
        .await?;
    ui.wait(
        &format!(
            "document.querySelector('#orders-done li[data-key=\"{id}\"][data-state=\"shipped\"]')"
        ),
        "the order among the finished, shipped",
    )
    .await?;
    ui.wait(
        "document.querySelector('#inventory-rows tr[data-key=\"tile\"]')?.children[1].textContent === '1'",
        "one unit left on hand",
    )
    .await?;
    let (_, o) = f.get(&format!("/orders/{id}")).await?;
    assert_eq!(o["state"], "shipped", "{o}");

    // The receiver is back: re-enabled from the page, it is delivered to.
    hook.healthy.store(true, Ordering::SeqCst);
    ui.click("#webhook-rows tr[data-key='erp'] .hook-enable")
        .await?;
    ui.wait(
        "document.querySelector('#webhook-rows tr[data-key=\"erp\"]')?.dataset.state === 'active'",
        "the receiver active again",
    )
    .await?;
    let mut delivered = hook.delivered.subscribe();
    tokio::time::timeout(WAIT, delivered.wait_for(|&n| n > 0))
        .await
        .expect("a delivery within the wait")
        .expect("the receiver lives");
    ui.assert_no_js_errors();
    ui.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_shows_the_broker_link_and_says_so_when_the_broker_is_down() -> Result<()> {
    let _one = ONE_BROWSER.lock().await;
    let mut broker = microfactory_e2e::mosquitto::Broker::start("")?;
    let f = Factory::start_with(
        &[MachineSpec::mill("mill-1")],
        &format!("[mqtt]\nbroker = \"{}\"\nsite = \"ui\"\n", broker.url()),
    )
    .await?;
    let ui = Ui::open(&f.base).await?;
    ui.sign_in(&f.token).await?;
    ui.wait(
        "document.querySelector('#broker').dataset.conn === 'live'",
        "the broker badge connected",
    )
    .await?;
    assert_eq!(ui.text("#broker").await?, "Broker");
    // The link in /metrics too.
    let metrics = f
        .http
        .get(format!("{}/metrics", f.base))
        .bearer_auth(&f.token)
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("microfactory_mqtt_connected 1\n"),
        "{metrics}"
    );
    broker.kill();
    ui.wait(
        "document.querySelector('#broker').dataset.conn === 'reconnecting'",
        "the broker badge down",
    )
    .await?;
    assert_eq!(ui.text("#broker").await?, "Broker down");
    ui.screenshots("broker-down").await?;
    ui.assert_no_js_errors();
    ui.close().await;
    Ok(())
}
