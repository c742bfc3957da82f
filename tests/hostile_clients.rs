//! Hostile clients over raw TLS sockets (with a valid app certificate, as a
//! compromised app would have): request smuggling attempts are refused with
//! 400 and the connection closed, and slowloris connections neither starve
//! legitimate requests nor stay open past the header timeout.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestEnv;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Tls = common::RawTls;

async fn connect(env: &TestEnv, app: &str) -> Tls {
    env.raw_tls(app, b"http/1.1").await
}

/// Sends raw bytes; returns everything read until the server closes (or 5 s).
async fn exchange(stream: &mut Tls, request: &[u8]) -> String {
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_get_400_and_a_closed_connection() {
    let env = TestEnv::start().await;
    let token = env.token("mot-cua", "officer-1");
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let body =
        json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000914"})
            .to_string();
    let head = |extra: &str| {
        format!(
            "POST /v1/citizens/lookup HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\n{extra}"
        )
    };
    let smuggled = "GET /v1/citizens/lookup HTTP/1.1\r\nhost: x\r\n\r\n";
    let corpus: Vec<(&str, String)> = vec![
        (
            "CL+TE",
            format!(
                "{}content-length: {}\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
                head(""),
                5
            ),
        ),
        (
            "duplicate CL",
            format!(
                "{}content-length: {}\r\ncontent-length: 5\r\n\r\n{body}",
                head(""),
                body.len()
            ),
        ),
        (
            "bad chunk size",
            format!(
                "{}transfer-encoding: chunked\r\n\r\nzz\r\n{body}\r\n0\r\n\r\n",
                head("")
            ),
        ),
        (
            "obs-fold",
            format!(
                "{}x-folded: a\r\n b\r\ncontent-length: {}\r\n\r\n{body}",
                head(""),
                body.len()
            ),
        ),
        (
            "TE with vertical tab",
            format!("{}transfer-encoding: \x0bchunked\r\n\r\n0\r\n\r\n", head("")),
        ),
        (
            "TE not chunked",
            format!("{}transfer-encoding: gzip\r\n\r\n{body}", head("")),
        ),
        (
            "bare CR",
            "POST /v1/citizens/lookup HTTP/1.1\rhost: 127.0.0.1\r\n\r\n".to_owned(),
        ),
        (
            "space before colon",
            format!("{}content-length : {}\r\n\r\n{body}", head(""), body.len()),
        ),
    ];
    let served_before = env.sim.served();
    for (name, request) in corpus {
        let mut stream = connect(&env, "mot-cua").await;
        let answer = exchange(&mut stream, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{name}: {answer}");
        assert_eq!(
            answer.matches("HTTP/1.1").count(),
            1,
            "{name}: one answer, nothing smuggled: {answer}"
        );
    }
    assert_eq!(
        env.sim.served(),
        served_before,
        "no smuggled request reached the national database"
    );
    // Bare LF line ends are accepted as RFC 9112 §2.2 allows a recipient to;
    // the gateway ends HTTP here (upstream calls are new requests), so this
    // cannot desynchronise anything: still exactly one request, one answer.
    let mut stream = connect(&env, "mot-cua").await;
    let bare_lf = format!("POST /v1/citizens/lookup HTTP/1.1\nhost: 127.0.0.1\nconnection: close\ncontent-length: {}\n\n{body}{smuggled}", body.len());
    let answer = exchange(&mut stream, bare_lf.as_bytes()).await;
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "bare LF: {answer}");
    assert!(
        answer.starts_with("HTTP/1.1 401"),
        "no token, so refused: {answer}"
    );
    // The same socket path works for a well-formed request.
    let mut stream = connect(&env, "mot-cua").await;
    let ok = format!(
        "{}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        head(""),
        body.len()
    );
    let answer = exchange(&mut stream, ok.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(env.sim.served(), served_before + 1);
    // The national database saw exactly the questions the journal recorded.
    env.settle().await;
    let intents: i64 = env
        .admin_db()
        .await
        .query_one(
            "SELECT count(*) FROM popgate.audit_events WHERE kind = 'intent'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(intents as u64, env.sim.served());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_neither_starves_others_nor_holds_connections() {
    let env =
        Arc::new(TestEnv::start_with(|c| c.limits.header_read_timeout = Duration::from_millis(1500)).await);
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = connect(&env, "mot-cua").await;
        s.write_all(b"POST /v1/citizens/lookup HTTP/1.1\r\nhost: 127.0.0.1\r\n")
            .await
            .expect("write");
        slow.push(s);
    }
    let trickle = tokio::spawn(async move {
        let mut write_failed = vec![false; slow.len()];
        for round in 0..10 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            for (i, s) in slow.iter_mut().enumerate() {
                if !write_failed[i]
                    && s.write_all(format!("x-slow-{round}: 1\r\n").as_bytes())
                        .await
                        .is_err()
                {
                    write_failed[i] = true;
                }
            }
        }
        // Past the header timeout the server has dropped them all: a write
        // failed, or a read ends (EOF, an error, or a 408) instead of waiting.
        let mut closed = 0;
        let mut buf = [0u8; 256];
        for (i, s) in slow.iter_mut().enumerate() {
            let gone = write_failed[i]
                || match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => true,
                    Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
                    Err(_) => false, // still open and silent
                };
            closed += usize::from(gone);
        }
        closed
    });
    // Meanwhile legitimate requests go through.
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let body =
        json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000915"})
            .to_string();
    for _ in 0..10 {
        let started = Instant::now();
        let r = env.call("mot-cua", "/v1/citizens/lookup", &body).await;
        assert_eq!(r.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a legitimate request waited {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let closed = trickle.await.expect("trickle");
    assert_eq!(closed, 200, "slow connections still open: {}", 200 - closed);
    match Arc::try_unwrap(env) {
        Ok(env) => env.stop().await,
        Err(_) => panic!("environment still shared"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_certificate_cannot_take_every_connection() {
    let env = TestEnv::start_with(|c| c.limits.max_connections_per_certificate = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&env, "mot-cua").await);
    }
    // Give the server a moment to register the three.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fourth = connect(&env, "mot-cua").await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(2), fourth.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the fourth connection must be closed: {read:?}"
    );
    // Another app is not affected.
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let r = env
        .call(
            "y-te",
            "/v1/citizens/lookup",
            &json!({"personal_id": id, "purpose": "health-insurance"}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200);
    // Once one closes, the app may connect again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = connect(&env, "mot-cua").await;
    let answer = exchange(
        &mut again,
        b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_is_cut_off_while_others_are_served() {
    let env = TestEnv::start().await;
    let stream = env.raw_tls("mot-cua", b"h2").await;
    let (mut sender, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    let driver = tokio::spawn(connection);
    let token = env.token("mot-cua", "officer-1");
    let mut sent = 0;
    let started = Instant::now();
    // Open streams and reset them at once, as fast as the connection allows.
    for _ in 0..10_000 {
        let ready = match tokio::time::timeout(Duration::from_secs(2), sender.clone().ready()).await {
            Ok(Ok(s)) => s,
            _ => break,
        };
        sender = ready;
        let req = http::Request::post(env.url("/v1/citizens/lookup"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(())
            .expect("request");
        match sender.send_request(req, false) {
            Ok((_response, mut body)) => {
                body.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
            Err(_) => break,
        }
    }
    // The client still holds its side open: only the server can have ended
    // the connection, which it does when resets pile up (however many the
    // client managed to queue before the GOAWAY arrived).
    let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
    assert!(ended.is_ok(), "the connection survived {sent} resets");
    drop(sender);
    assert!(started.elapsed() < Duration::from_secs(10));
    // Everyone else is served.
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let r = env
        .call(
            "y-te",
            "/v1/citizens/lookup",
            &json!({"personal_id": id, "purpose": "health-insurance"}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200);
    env.stop().await;
}

/// An HTTP/2 client that sends more than the body limit gets 413 with a
/// problem document. One that goes on uploading its whole body may finish
/// it (the refused body is read and dropped, so clients such as curl 7.88,
/// which fail when the stream is reset under their upload, still see the
/// 413); one that never ends its body has its stream reset with `NO_ERROR`
/// after the complete response (RFC 9113 §8.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_body_over_the_limit_gets_413_then_a_no_error_reset() {
    use std::future::poll_fn;
    let env = TestEnv::start().await;
    let stream = env.raw_tls("mot-cua", b"h2").await;
    let (sender, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    let driver = tokio::spawn(connection);
    let token = env.token("mot-cua", "officer-1");
    let chunk = bytes::Bytes::from(vec![b' '; 16 * 1024]);
    // (declared length, chunks, ends its body): 3 MiB is more than the
    // stream's flow-control window, so the upload needs the server to read.
    for (declared, chunks, ends) in [(true, 192, true), (false, 192, true), (false, 256, false)] {
        let case = format!("declared={declared} chunks={chunks} ends={ends}");
        let mut sender = sender.clone().ready().await.expect("ready");
        let mut req = http::Request::post(env.url("/v1/citizens/lookup"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json");
        if declared {
            req = req.header("content-length", (chunks * chunk.len()).to_string());
        }
        let (response, mut body) = sender
            .send_request(req.body(()).expect("request"), false)
            .expect("stream opens");
        // Upload while waiting for the answer, which may come at once.
        let sending = async {
            let mut sent = 0;
            for k in 1..=chunks {
                body.reserve_capacity(chunk.len());
                match poll_fn(|cx| body.poll_capacity(cx)).await {
                    Some(Ok(_)) => {}
                    _ => break,
                }
                if body.send_data(chunk.clone(), ends && k == chunks).is_err() {
                    break;
                }
                sent = k;
            }
            (body, sent)
        };
        let (response, (mut body, sent)) =
            tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(response, sending) })
                .await
                .unwrap_or_else(|_| panic!("{case}: an answer within 10 s"));
        let response = response.unwrap_or_else(|e| panic!("{case}: no response: {e}"));
        assert_eq!(response.status(), 413, "{case}");
        let mut answer = response.into_body();
        let mut text = Vec::new();
        while let Some(part) = answer.data().await {
            text.extend_from_slice(
                &part.unwrap_or_else(|e| panic!("{case}: the problem document is cut: {e}")),
            );
        }
        let text = String::from_utf8_lossy(&text);
        assert!(text.contains("body-too-large"), "{case}: {text}");
        if ends {
            assert_eq!(sent, chunks, "{case}: the upload was cut off");
        } else {
            let reason = tokio::time::timeout(
                popgate::server::REFUSED_BODY_DRAIN_TIME + Duration::from_secs(5),
                poll_fn(|cx| body.poll_reset(cx)),
            )
            .await
            .unwrap_or_else(|_| panic!("{case}: the stream is reset"))
            .expect("a reset reason");
            assert_eq!(reason, h2::Reason::NO_ERROR, "{case}");
        }
    }
    drop(sender);
    let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
    env.stop().await;
}
