//! A misbehaving national database — dripping, stalling, resetting, lying
//! about its length, answering huge or deeply nested JSON — gives apps a
//! clean, audited 502/504, and leaves no file descriptors behind.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestEnv;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOOKUP: &str = "/v1/citizens/lookup";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Drip,
    Stall,
    Reset,
    WrongLength,
    Huge,
    Deep,
    /// `CongDan` as an object keyed "0" rather than a list.
    WrongShape,
    /// A JSON array where an object belongs.
    NotAnObject,
    /// A 404 page that is not the national database's JSON (a wrong path,
    /// a proxy): a failure, not "no such citizen".
    NotFoundPage,
    /// A proper answer: a minimal citizen living in province 79.
    Good,
}

/// Reads one request head and body, then misbehaves as `mode` says.
async fn misbehave(mut s: tokio_rustls::server::TlsStream<tokio::net::TcpStream>, mode: Mode) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = s.read(&mut chunk).await else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                break;
            }
        }
    }
    let ok = |body_len: usize| {
        format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {body_len}\r\n\r\n")
    };
    match mode {
        Mode::Drip => {
            let body = "{\"MaYeuCau\": \"x\"}";
            let _ = s.write_all(ok(body.len()).as_bytes()).await;
            for b in body.bytes() {
                if s.write_all(&[b]).await.is_err() {
                    return;
                }
                let _ = s.flush().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        Mode::Stall => tokio::time::sleep(Duration::from_secs(30)).await,
        Mode::Reset => {}
        Mode::WrongLength => {
            let _ = s.write_all(ok(1000).as_bytes()).await;
            let _ = s.write_all(b"{\"CongdanCollection\"").await;
        }
        Mode::Huge => {
            let body = format!("{{\"x\": \"{}\"}}", "a".repeat(2 << 20));
            let _ = s.write_all(ok(body.len()).as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
        }
        Mode::Good => {
            let body = json!({"MaYeuCau": "x", "CongdanCollection": {"CongDan": [{
                "SoDinhDanh": "079203001234", "HoVaTen": {"Ho": "Trần", "ChuDem": "Thị", "Ten": "Mai"},
                "ThuongTru": {"MaTinhThanh": "79", "MaPhuongXa": "25747", "ChiTiet": "Số 1"}
            }]}})
            .to_string();
            let _ = s.write_all(ok(body.len()).as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
        }
        Mode::Deep => {
            let body = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
            let _ = s.write_all(ok(body.len()).as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
        }
        Mode::NotFoundPage => {
            let body = "<html><body>404 Not Found</body></html>";
            let head = format!(
                "HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
        }
        Mode::WrongShape | Mode::NotAnObject => {
            let body = if mode == Mode::WrongShape {
                json!({"CongdanCollection": {"CongDan": {"0": {"SoDinhDanh": "079203001234"}}}}).to_string()
            } else {
                json!([{"CongdanCollection": {"CongDan": [{"SoDinhDanh": "079203001234"}]}}]).to_string()
            };
            let _ = s.write_all(ok(body.len()).as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
        }
    }
    let _ = s.shutdown().await;
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_upstream_gets_clean_audited_errors() {
    let mode = Arc::new(std::sync::Mutex::new(Mode::Reset));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let env = TestEnv::start_prepared(
        |pki, c| {
            c.upstream.url = url.parse().expect("url");
            c.upstream.timeout = Duration::from_secs(1);
            // The circuit must stay closed for this test to see each failure.
            c.upstream.circuit_failures = 1_000;
            let mut tls = popgate::sim::server_tls(&pki.layout).expect("tls");
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
            let mode = mode.clone();
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    let mode = *mode.lock().expect("mode");
                    tokio::spawn(async move {
                        if let Ok(s) = acceptor.accept(tcp).await {
                            misbehave(s, mode).await;
                        }
                    });
                }
            });
        },
        popgate::gateway::StartOptions::default(),
    )
    .await;
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let body =
        json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000921"})
            .to_string();
    // Warm up the client pool and the allocator before counting descriptors.
    env.call("mot-cua", LOOKUP, &body).await;
    let fds_before = open_fds();
    let rss_before = resident_kib();
    let expectations = [
        (Mode::Drip, 504),
        (Mode::Stall, 504),
        (Mode::Reset, 502),
        (Mode::WrongLength, 502),
        (Mode::Huge, 502),
        (Mode::Deep, 502),
        (Mode::WrongShape, 502),
        (Mode::NotAnObject, 502),
        (Mode::NotFoundPage, 502),
    ];
    for round in 0..3 {
        for (m, status) in expectations {
            *mode.lock().expect("mode") = m;
            let started = std::time::Instant::now();
            let r = env.call("mot-cua", LOOKUP, &body).await;
            assert_eq!(r.status, status, "{m:?} (round {round}): {}", r.body);
            assert!(r.body["audit_id"].is_string(), "{m:?} is audited");
            assert!(r.body.get("citizen").is_none());
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{m:?} took {:?}",
                started.elapsed()
            );
        }
    }
    // Nothing piles up: connections to the bad upstream are closed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds_after = open_fds();
    assert!(
        fds_after <= fds_before + 8,
        "file descriptors grew from {fds_before} to {fds_after}"
    );
    // Huge answers are refused at the cap, not buffered: 27 hostile answers
    // (some of them 2 MiB, or 50,000 levels deep) leave the process about as big.
    let rss_after = resident_kib();
    assert!(
        rss_after < rss_before + 32 * 1024,
        "resident memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    env.settle().await;
    let db = env.admin_db().await;
    let failures: i64 = db
        .query_one(
            "SELECT count(*) FROM popgate.audit_events WHERE kind = 'outcome' AND decision = 'error'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    // Twenty-seven failures and the warm-up call (which met a resetting upstream).
    assert_eq!(failures, 28, "every failure is an audit event");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_reads_are_retried_once_within_a_budget() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let connections = Arc::new(AtomicUsize::new(0));
    let always_reset = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let (count, reset) = (connections.clone(), always_reset.clone());
    let env = TestEnv::start_prepared(
        move |pki, c| {
            c.upstream.url = url.parse().expect("url");
            c.upstream.circuit_failures = 1_000;
            let mut tls = popgate::sim::server_tls(&pki.layout).expect("tls");
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    // Every other connection resets; with `reset` set, all do.
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let mode = if reset.load(Ordering::SeqCst) || n % 2 == 0 {
                        Mode::Reset
                    } else {
                        Mode::Good
                    };
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        if let Ok(s) = acceptor.accept(tcp).await {
                            misbehave(s, mode).await;
                        }
                    });
                }
            });
        },
        popgate::gateway::StartOptions::default(),
    )
    .await;
    let body = json!({"personal_id": "079203001234", "purpose": "administrative-procedure", "case_ref": "HS-2026-000903"})
        .to_string();
    // The first connection resets; the retry's connection answers.
    let r = env.call("mot-cua", LOOKUP, &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["citizen"]["full_name"], "Trần Thị Mai");
    assert_eq!(connections.load(Ordering::SeqCst), 2);

    // A national database that always fails gets about one retry in ten.
    always_reset.store(true, Ordering::SeqCst);
    let before = connections.load(Ordering::SeqCst);
    for _ in 0..30 {
        assert_eq!(env.call("mot-cua", LOOKUP, &body).await.status, 502);
    }
    let made = connections.load(Ordering::SeqCst) - before;
    assert!((30..=34).contains(&made), "30 requests made {made} connections");
    env.stop().await;
}
