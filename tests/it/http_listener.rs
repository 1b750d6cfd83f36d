//! The HTTP backend's listener semantics: reconnect with backoff after the
//! server goes away, readiness while a required listener is down, and
//! auth failures that fail fast instead of retrying.

use crate::support::*;
use bus_containers::broker::{Broker, BrokerError, SubscribeSpec};
use bus_containers::contract::{Envelope, Publication};
use futures::StreamExt;
use serde_json::json;
use std::time::Duration;

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        actix_rt::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never happened: {what}");
}

#[actix_rt::test]
async fn listener_reconnects_and_readiness_follows_it() {
    let first = EventsServer::start().await;
    let addr = first.addr.to_string();
    let token = mint("svc", ADMIN);
    let client = first.retrying_client(&token);
    let mut stream = client
        .subscribe(SubscribeSpec::broadcast("app.retry"))
        .await
        .unwrap();
    assert!(client.ready().is_ok());

    first.handle.stop(false).await;
    drop(first);
    // The stream notices (EOF) and reconnection fails while nothing listens.
    let pending = actix_rt::spawn(async move {
        let next = stream.next().await;
        (next, stream)
    });
    wait_until("readiness drops", || client.ready().is_err()).await;
    let err = client.ready().unwrap_err();
    assert!(
        matches!(err, BrokerError::Unavailable(ref m) if m.contains("app.retry")),
        "{err}"
    );

    // The server comes back on the same port: the listener reconnects.
    let second = EventsServer::start_at(&addr, EventsOpts::default()).await;
    wait_until("readiness recovers", || client.ready().is_ok()).await;
    let publisher = second.client(&token);
    publisher
        .publish(Envelope::stamp(
            Publication::new("app.retry", json!({"after": "restart"})),
            "x",
            true,
        ))
        .await
        .unwrap();
    let (next, _stream) = within(10, "event after reconnect", pending).await.unwrap();
    assert_eq!(next.unwrap().unwrap().payload["after"], "restart");
}

#[actix_rt::test]
async fn auth_failures_are_not_retried() {
    let srv = EventsServer::start().await;
    let client = srv.retrying_client("not-a-token");
    let err = within(
        5,
        "fail fast",
        client.subscribe(SubscribeSpec::broadcast("app.x")),
    )
    .await
    .err()
    .expect("401 fails the subscription");
    assert!(matches!(err, BrokerError::Auth(_)), "{err}");
    let user = srv.retrying_client(&mint("u", "events:listen"));
    let err = within(
        5,
        "fail fast",
        user.subscribe(SubscribeSpec::broadcast("bus.docker.x")),
    )
    .await
    .err()
    .expect("403 fails the subscription");
    assert!(matches!(err, BrokerError::Forbidden(_)), "{err}");
}

#[actix_rt::test]
async fn without_retry_a_lost_stream_ends_with_an_error() {
    let srv = EventsServer::start().await;
    let client = srv.client(&mint("svc", ADMIN));
    let mut stream = client
        .subscribe(SubscribeSpec::broadcast("app.once"))
        .await
        .unwrap();
    srv.handle.stop(false).await;
    let item = within(10, "the stream ends", stream.next()).await;
    assert!(
        matches!(item, Some(Err(BrokerError::Closed(_)))),
        "{item:?}"
    );
    assert!(within(5, "then nothing", stream.next()).await.is_none());
}
