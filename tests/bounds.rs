//! The remaining bounds on clients, each shown: the TLS handshake deadline,
//! the deadline for a first request after it, the total connection cap, the
//! header limit (431), the whole-request timeout, no version banner, and
//! certificate reload under load without a failed request.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestEnv;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOOKUP: &str = "/v1/citizens/lookup";

/// Waits (at most 5 s) for the server to close a connection the client
/// keeps silent on; how long that took.
async fn closed_by_the_server(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    started.elapsed()
}

/// The health app looks up a resident: a request that must be served.
async fn health_lookup(env: &TestEnv) -> common::TestResponse {
    let id = env.citizen(true).personal_id().as_str().to_owned();
    env.call(
        "y-te",
        LOOKUP,
        &json!({"personal_id": id, "purpose": "health-insurance"}).to_string(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tcp_client_is_dropped_at_the_handshake_deadline() {
    let env = TestEnv::start_with(|c| c.limits.handshake_timeout = Duration::from_millis(500)).await;
    let mut tcp = tokio::net::TcpStream::connect(env.gateway().gateway_addr)
        .await
        .expect("tcp");
    let waited = closed_by_the_server(&mut tcp).await;
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    env.stop().await;
}

/// A client that completes the TLS handshake and then says nothing must
/// not hold its connection (and its share of the certificate's cap) for
/// ever: it has the header deadline to start a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_sends_no_request_is_dropped_at_the_header_deadline() {
    let env = TestEnv::start_with(|c| c.limits.header_read_timeout = Duration::from_millis(800)).await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut s = env.raw_tls("mot-cua", alpn).await;
        let waited = closed_by_the_server(&mut s).await;
        assert!(
            waited >= Duration::from_millis(600) && waited < Duration::from_secs(3),
            "closed after {waited:?}"
        );
    }
    // One that speaks at once is served as before.
    let r = health_lookup(&env).await;
    assert_eq!(r.status, 200);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_refused() {
    let env = TestEnv::start_with(|c| c.limits.max_connections = 4).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            tokio::net::TcpStream::connect(env.gateway().gateway_addr)
                .await
                .expect("tcp"),
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fifth = tokio::net::TcpStream::connect(env.gateway().gateway_addr)
        .await
        .expect("tcp");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(2), fifth.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the fifth connection must be closed: {read:?}"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = health_lookup(&env).await;
    assert_eq!(r.status, 200, "served again once connections are free");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431_and_no_banner_is_sent() {
    let env = TestEnv::start().await;
    let mut s = env.raw_tls("mot-cua", b"http/1.1").await;
    let big = "a".repeat(40 * 1024);
    let req =
        format!("POST /v1/citizens/lookup HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\ncontent-length: 0\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    let r = health_lookup(&env).await;
    assert_eq!(r.status, 200);
    assert!(
        !r.headers.contains_key("server"),
        "no version banner: {:?}",
        r.headers.get("server")
    );
    assert!(!r.headers.contains_key("x-powered-by"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_takes_too_long_is_ended_with_503() {
    // An upstream that accepts and never answers, a patient upstream timeout,
    // and an impatient whole-request timeout: the latter decides.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let env = TestEnv::start_with(|c| {
        c.upstream.url = url.parse().expect("url");
        c.upstream.timeout = Duration::from_secs(10);
        c.limits.request_timeout = Duration::from_millis(700);
    })
    .await;
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let started = Instant::now();
    let body =
        json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000913"})
            .to_string();
    let r = env.call("mot-cua", LOOKUP, &body).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["type"], "urn:popgate:problem:request-timeout");
    assert!(r.body["audit_id"].is_string());
    assert!(started.elapsed() < Duration::from_secs(3));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_under_load_without_a_failed_request() {
    let env = Arc::new(TestEnv::start_with(|c| c.rate_limits.scale = 1000.0).await);
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..3u32 {
        let (env, stop) = (env.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let token = env.token("y-te", &format!("doctor-{w}"));
            let id = env.citizen(true).personal_id().as_str().to_owned();
            let body = json!({"personal_id": id, "purpose": "health-insurance"}).to_string();
            let mut done = 0;
            while !stop.load(Ordering::Relaxed) {
                // A new client (and connection) every few requests, so that
                // handshakes happen across the reloads.
                let client = env.client("y-te");
                for _ in 0..3 {
                    let r = client
                        .post(&env.url(LOOKUP), Some(&token), &body)
                        .await
                        .expect("no request may fail");
                    assert_eq!(r.status, 200, "{}", r.body);
                    done += 1;
                }
            }
            done
        }));
    }
    let l = env.pki.layout.clone();
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let issued = env
            .pki
            .apps_ca
            .issue_server(&format!("popgate gateway {i}"))
            .expect("issue");
        // Written to a side file and renamed, as certificate tooling does.
        let (cert_tmp, key_tmp) = (
            l.gateway_cert().with_extension("new"),
            l.gateway_key().with_extension("newkey"),
        );
        issued.write(&cert_tmp, &key_tmp).expect("write");
        std::fs::rename(&key_tmp, l.gateway_key()).expect("rename key");
        std::fs::rename(&cert_tmp, l.gateway_cert()).expect("rename cert");
        env.gateway().reload_tls().expect("reload");
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        total += w.await.expect("worker");
    }
    assert!(total > 20, "{total}");
    match Arc::try_unwrap(env) {
        Ok(env) => env.stop().await,
        Err(_) => panic!("environment still shared"),
    }
}
