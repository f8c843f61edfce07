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

#[tokio::test]
async fn a_read_is_answered_only_once_what_it_could_show_is_durable() {
    let dir = std::env::temp_dir().join(format!("mfd-http-settle-{}", std::process::id()));
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
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(
        format!(
            "GET /api/v1/jobs HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\
             Connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        *store.log_tip().borrow(),
        tip + 1,
        "answered before the commit it could show was durable"
    );
    let _ = stop.send(());
    server.await.expect("join").expect("serve");
    let _ = std::fs::remove_dir_all(&dir);
}
