//! The webhook outbox against a real HTTP receiver on loopback, which
//! checks every signature with its own HMAC (not the daemon's): a failing
//! receiver is retried with growing gaps read back from the store, then
//! disabled with its queue kept, then enabled again and sent everything,
//! in log order, each delivery under one id on every attempt.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use hmac::{Hmac, Mac};
use microfactoryd::commerce::webhooks::model::{DeliveryState, ReceiverState};
use microfactoryd::commerce::webhooks::schedule::RetryPolicy;
use microfactoryd::commerce::webhooks::{ReceiverInput, Webhooks};
use microfactoryd::core::events::DomainEvent;
use microfactoryd::core::machine::{MachineState, StateReason};
use microfactoryd::mqtt::backoff::Backoff;
use microfactoryd::store::{Batch, Store};
use tokio::sync::mpsc;

const SECRET: &str = "test-secret-0123456789";

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Seen {
    delivery: String,
    timestamp: u64,
    signature_ok: bool,
    body: serde_json::Value,
    answered: u16,
}

#[derive(Clone)]
struct Receiver {
    answer: Arc<AtomicU16>,
    seen: Arc<Mutex<Vec<Seen>>>,
    tx: mpsc::UnboundedSender<Seen>,
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let answered = r.answer.load(Ordering::SeqCst);
    let seen = Seen {
        delivery: h("x-microfactory-delivery"),
        timestamp: h("x-microfactory-timestamp").parse().unwrap_or(0),
        signature_ok: h("x-microfactory-signature") == expected,
        body: serde_json::from_slice(&body).unwrap_or_default(),
        answered,
    };
    r.seen.lock().unwrap().push(seen.clone());
    let _ = r.tx.send(seen);
    StatusCode::from_u16(answered).unwrap()
}

async fn receiver() -> (String, Receiver, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let r = Receiver {
        answer: Arc::new(AtomicU16::new(503)),
        seen: Arc::default(),
        tx,
    };
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), r, rx)
}

fn machine_event(i: usize) -> DomainEvent {
    DomainEvent::MachineState {
        machine_id: format!("p{i}"),
        state: MachineState::Idle,
        reason: StateReason::None,
        job_id: None,
    }
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("mfd-webhooks-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Commits events at `at_ms` and makes them durable, as the factory does.
async fn commit_events(
    store: &Store,
    events: Vec<DomainEvent>,
    at_ms: u64,
) -> Vec<std::sync::Arc<microfactoryd::core::events::LogRecord>> {
    let recs = store
        .commit(
            &Batch {
                events,
                ..Batch::default()
            },
            at_ms,
        )
        .unwrap();
    store.flush().await.unwrap();
    recs
}

/// Waits for the next request the receiver saw.
async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("the receiver heard nothing for 30 s")
        .expect("receiver gone")
}

/// Waits until `f` holds for the stored state (the deliverer stores an
/// outcome just after the receiver answered).
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_is_retried_with_growing_gaps_disabled_then_enabled_and_sent_everything_in_order()
 {
    let dir = temp_dir("retry");
    let store = Store::open(&dir).unwrap();
    let policy = RetryPolicy {
        backoff: Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
        },
        disable_after: 4,
        timeout: Duration::from_secs(5),
    };
    let (url, rcv, mut rx) = receiver().await;
    let w = Webhooks::new(store.clone(), &[], policy).await.unwrap();
    let created = w
        .create(ReceiverInput {
            id: Some("erp".into()),
            url,
            secret: Some(SECRET.into()),
            topics: vec!["machine_state".into()],
        })
        .await
        .unwrap();
    assert_eq!(created.secret, SECRET);
    w.start();

    // Three events, plus one nobody subscribed to.
    let recs = commit_events(
        &store,
        vec![
            machine_event(1),
            DomainEvent::FileDeleted {
                file_id: "f".into(),
            },
            machine_event(2),
            machine_event(3),
        ],
        1_000,
    )
    .await;
    let seqs: Vec<u64> = recs
        .iter()
        .filter(|r| matches!(r.event, DomainEvent::MachineState { .. }))
        .map(|r| r.seq)
        .collect();

    // Four failures of the oldest delivery only, then disabled.
    for _ in 0..4 {
        let s = next(&mut rx).await;
        assert_eq!(s.delivery, format!("erp:{}", seqs[0]));
        assert!(s.signature_ok, "{s:?}");
    }
    until("the receiver is disabled", || {
        w.get("erp").unwrap().state == ReceiverState::Disabled
    })
    .await;
    let view = w.get("erp").unwrap();
    assert_eq!(view.consecutive_failures, 4);
    assert_eq!(view.pending, 3, "nothing is dropped while disabled");
    assert_eq!(view.next_attempt_ms, None);
    assert!(
        view.last_error.as_deref().unwrap_or("").contains("503"),
        "{view:?}"
    );
    let first = store.delivery("erp", seqs[0]).unwrap().unwrap();
    let at: Vec<u64> = first.attempts.iter().map(|a| a.at_ms).collect();
    assert_eq!(at.len(), 4);
    // Each gap is at least the schedule's floor for it (half of 100 ms,
    // 200 ms, 400 ms): the gaps grow, whatever the jitter and the load.
    for (i, pair) in at.windows(2).enumerate() {
        let floor = 50u64 << i;
        assert!(pair[1] - pair[0] >= floor, "gap {i}: {at:?}");
    }
    for seq in &seqs[1..] {
        let d = store.delivery("erp", *seq).unwrap().unwrap();
        assert_eq!(d.attempt_count, 0, "only the oldest is retried");
    }

    // The receiver recovers; an operator enables it.
    rcv.answer.store(200, Ordering::SeqCst);
    let view = w.enable("erp").await.unwrap();
    assert_eq!(view.state, ReceiverState::Active);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next(&mut rx).await);
    }
    until("nothing is pending", || w.get("erp").unwrap().pending == 0).await;
    let ids: Vec<String> = got.iter().map(|s| s.delivery.clone()).collect();
    let want: Vec<String> = seqs.iter().map(|s| format!("erp:{s}")).collect();
    assert_eq!(ids, want, "in log order");
    for (s, seq) in got.iter().zip(&seqs) {
        assert!(s.signature_ok && s.answered == 200, "{s:?}");
        assert_eq!(s.body["id"], s.delivery.as_str());
        assert_eq!(s.body["seq"], *seq);
        assert_eq!(s.body["topic"], "machine_state");
        assert_eq!(s.body["at"], 1_000);
        assert!(s.timestamp > 1_600_000_000, "{s:?}");
    }
    // The same id and body on every attempt of the first delivery.
    let all = rcv.seen.lock().unwrap().clone();
    let of_first: Vec<&Seen> = all.iter().filter(|s| s.delivery == want[0]).collect();
    assert_eq!(of_first.len(), 5);
    assert!(of_first.iter().all(|s| s.body == of_first[0].body));
    let d = store.delivery("erp", seqs[0]).unwrap().unwrap();
    assert_eq!((d.state, d.attempt_count), (DeliveryState::Delivered, 5));
    assert_eq!(d.attempts.last().unwrap().status, Some(200));
    let listed = w.deliveries("erp", None, 10).unwrap();
    assert_eq!(listed.len(), 3);
    assert!(
        listed.windows(2).all(|p| p[0].seq > p[1].seq),
        "newest first"
    );
    assert!(w.get("erp").unwrap().last_success_ms.is_some());
    w.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_added_later_gets_only_new_events_and_a_removed_one_gets_nothing_more() {
    let dir = temp_dir("later");
    let store = Store::open(&dir).unwrap();
    let (url, rcv, mut rx) = receiver().await;
    rcv.answer.store(204, Ordering::SeqCst);
    let w = Webhooks::new(store.clone(), &[], RetryPolicy::default())
        .await
        .unwrap();
    w.start();
    commit_events(&store, vec![machine_event(1)], 1).await;
    // The outbox has read that record (nobody wanted it) once its cursor
    // is past it.
    until("the outbox read the first record", || {
        store.cursor("webhooks").unwrap() >= 1
    })
    .await;
    let input = |id: &str| ReceiverInput {
        id: Some(id.into()),
        url: url.clone(),
        secret: Some(SECRET.into()),
        topics: vec!["*".into()],
    };
    w.create(input("late")).await.unwrap();
    let dup = w.create(input("late")).await.unwrap_err();
    assert!(dup.to_string().contains("exists already"), "{dup}");
    let recs = commit_events(&store, vec![machine_event(2)], 2).await;
    let s = next(&mut rx).await;
    assert_eq!(s.delivery, format!("late:{}", recs[0].seq));
    assert!(s.signature_ok);
    // One more, held back by a failing answer, is dropped with its receiver.
    rcv.answer.store(500, Ordering::SeqCst);
    let more = commit_events(&store, vec![machine_event(3)], 3).await;
    assert_eq!(
        next(&mut rx).await.delivery,
        format!("late:{}", more[0].seq)
    );
    w.delete("late").await.unwrap();
    assert!(w.get("late").is_err());
    let d = store.delivery("late", more[0].seq).unwrap().unwrap();
    assert_eq!(d.state, DeliveryState::Dropped);
    assert_eq!(store.pending_count("late").unwrap(), 0);
    assert!(w.list().unwrap().is_empty());
    w.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_hangs_delays_no_other_receiver() {
    let dir = temp_dir("hang");
    let store = Store::open(&dir).unwrap();
    // This one holds every request until the test lets go.
    let (release, open) = tokio::sync::watch::channel(false);
    let held = Arc::new(AtomicU16::new(0));
    let app = Router::new().route(
        "/hook",
        post({
            let held = Arc::clone(&held);
            move || async move {
                held.fetch_add(1, Ordering::SeqCst);
                let _ = open.clone().wait_for(|open| *open).await;
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (fast_url, fast, mut rx) = receiver().await;
    fast.answer.store(200, Ordering::SeqCst);
    let w = Webhooks::new(store.clone(), &[], RetryPolicy::default())
        .await
        .unwrap();
    for (id, url) in [("slow", slow_url), ("fast", fast_url)] {
        w.create(ReceiverInput {
            id: Some(id.into()),
            url,
            secret: Some(SECRET.into()),
            topics: vec!["*".into()],
        })
        .await
        .unwrap();
    }
    w.start();
    commit_events(&store, (1..=3).map(machine_event).collect(), 7).await;
    for _ in 0..3 {
        let s = next(&mut rx).await;
        assert!(s.delivery.starts_with("fast:") && s.signature_ok, "{s:?}");
    }
    // All three reached the fast receiver while the slow one holds its
    // first (and only) request, which may arrive after them.
    until("the slow receiver holds its first request", || {
        held.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert_eq!(held.load(Ordering::SeqCst), 1);
    assert_eq!(w.get("slow").unwrap().pending, 3);
    release.send_replace(true);
    until("the slow receiver got everything", || {
        w.get("slow").unwrap().pending == 0
    })
    .await;
    w.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_receivers_follow_the_file_across_restarts_keeping_their_queue() {
    let dir = temp_dir("config");
    let store = Store::open(&dir).unwrap();
    let hook = |secret: &str| microfactoryd::config::WebhookConfig {
        id: None,
        // Nobody listens: every attempt fails, so deliveries stay queued.
        url: "http://127.0.0.1:9/hook".into(),
        secret: secret.into(),
        topics: vec!["machine_state".into()],
    };
    let slow = RetryPolicy {
        backoff: Backoff {
            base: Duration::from_secs(3600),
            cap: Duration::from_secs(3600),
        },
        ..RetryPolicy::default()
    };
    let w = Webhooks::new(store.clone(), &[hook(SECRET)], slow)
        .await
        .unwrap();
    let id = w.list().unwrap()[0].id.clone();
    assert!(id.starts_with("config-"), "{id}");
    let e = w.delete(&id).await.unwrap_err();
    assert!(e.to_string().contains("configuration file"), "{e}");
    w.start();
    let recs = commit_events(&store, vec![machine_event(1)], 1).await;
    until("the delivery was tried once", || {
        store
            .delivery(&id, recs[0].seq)
            .unwrap()
            .is_some_and(|d| d.attempt_count == 1)
    })
    .await;
    w.shutdown().await;
    drop(w);

    // Same URL, new secret: the same receiver, its queue and schedule kept.
    let w = Webhooks::new(store.clone(), &[hook("another-secret-0123")], slow)
        .await
        .unwrap();
    let views = w.list().unwrap();
    assert_eq!((views.len(), views[0].id.as_str()), (1, id.as_str()));
    assert_eq!(views[0].pending, 1);
    assert_eq!(views[0].consecutive_failures, 1);
    let tried = store.delivery(&id, recs[0].seq).unwrap().unwrap().attempts[0].at_ms;
    assert!(
        views[0].next_attempt_ms.unwrap() >= tried + 1_800_000,
        "the stored schedule (at least half an hour later) survives: {views:?}"
    );
    drop(w);

    // Gone from the file: removed, its queue dropped.
    let w = Webhooks::new(store.clone(), &[], slow).await.unwrap();
    assert!(w.list().unwrap().is_empty());
    let d = store.delivery(&id, recs[0].seq).unwrap().unwrap();
    assert_eq!(d.state, DeliveryState::Dropped);
    let _ = std::fs::remove_dir_all(&dir);
}
