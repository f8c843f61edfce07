//! The API's route guard, served for real on a loopback socket.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::api::{AppState, router};
use super::limits::Settings;
use super::server::{Limits, serve};
use crate::commerce::service::Commerce;
use crate::core::events::DomainEvent;
use crate::core::model::Role;
use crate::factory::Factory;
use crate::metering::Metering;
use crate::store::{Batch, Store};

/// The daemon's application served on a loopback socket, as `serve` runs
/// it, with one viewer token.
struct Served {
    addr: std::net::SocketAddr,
    store: Store,
    token: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    dir: std::path::PathBuf,
}

impl Served {
    async fn start(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mfd-http-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).expect("store");
        let f = Factory::with_links(store.clone(), Vec::new(), 1 << 20, 10)
            .await
            .expect("factory");
        let m = Metering::new(Arc::clone(&f), &[], BTreeMap::new(), None);
        let c = Commerce::new(store.clone(), Arc::clone(&m), &[], None).expect("commerce");
        let token = crate::auth::create_token(&store, Role::Viewer, "reader").expect("token");
        let app = router(AppState::new(f, m, c, Settings::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let limits = Limits {
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            max_connections: 8,
        };
        let server = tokio::spawn(serve(listener, app, limits, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            store,
            token,
            stop,
            server,
            dir,
        }
    }

    /// Sends `head` and then each of `pieces` as its own write, and reads
    /// the answer to the end (the request must say `Connection: close`).
    async fn exchange(&self, head: &str, pieces: &[&[u8]]) -> String {
        let mut conn = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        conn.write_all(head.as_bytes()).await.expect("write");
        for p in pieces {
            conn.write_all(p).await.expect("write");
            conn.flush().await.expect("flush");
        }
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.expect("read");
        answer
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.server.await.expect("join").expect("serve");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One chunk of a `Transfer-Encoding: chunked` body.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut v = format!("{:x}\r\n", data.len()).into_bytes();
    v.extend_from_slice(data);
    v.extend_from_slice(b"\r\n");
    v
}

#[tokio::test]
async fn a_body_that_arrives_in_pieces_is_read_whole_and_bounded_as_a_whole() {
    let s = Served::start("pieces").await;
    let head = "POST /api/v1/session HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let body = format!("{{\"token\":\"{}\"}}", s.token);
    let (a, rest) = body.as_bytes().split_at(5);
    let (b, c) = rest.split_at(rest.len() / 2);
    let pieces = [chunk(a), chunk(b), chunk(c), b"0\r\n\r\n".to_vec()];
    let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
    let answer = s.exchange(head, &pieces).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert!(answer.contains("\"name\":\"reader\""), "{answer}");

    // Each piece is under the route's limit; together they are over it.
    let piece = vec![b' '; crate::http::policy::JSON_BODY_BYTES / 2 + 1];
    let pieces = [chunk(&piece), chunk(&piece), b"0\r\n\r\n".to_vec()];
    let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
    let answer = s.exchange(head, &pieces).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    s.stop().await;
}

#[tokio::test]
async fn a_read_is_answered_only_once_what_it_could_show_is_durable() {
    let s = Served::start("settle").await;
    let store = &s.store;
    // A commit whose flush has not run: a handler reading memory could
    // show what a crash would still lose.
    store.flush().await.expect("flush");
    let tip = *store.log_tip().borrow();
    store
        .commit(
            &Batch {
                events: vec![DomainEvent::FileDeleted {
                    file_id: "x".into(),
                }],
                ..Batch::default()
            },
            1,
        )
        .expect("commit");
    assert_eq!(*store.log_tip().borrow(), tip, "not durable yet");
    let head = format!(
        "GET /api/v1/jobs HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\
         Connection: close\r\n\r\n",
        s.token
    );
    let answer = s.exchange(&head, &[]).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        *store.log_tip().borrow(),
        tip + 1,
        "answered before the commit it could show was durable"
    );
    s.stop().await;
}
