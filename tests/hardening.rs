//! Hostile input and orderly stops: JSON bombs are refused with a clear 400
//! (or 413) and release nothing; a gateway stopped under load finishes every
//! request it accepted.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::TestEnv;
use serde_json::json;

const LOOKUP: &str = "/v1/citizens/lookup";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_bombs_are_refused_without_releasing_anything() {
    let env = TestEnv::start().await;
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let huge_number = format!(r#"{{"personal_id": {}, "purpose": "x"}}"#, "9".repeat(10_000));
    let cases: Vec<(String, u16, &str)> = vec![
        (deep, 413, "limited"),
        (
            format!(
                r#"{{"personal_id": "{id}", "purpose": {}"x"{}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            ),
            400,
            "wrong type",
        ),
        (huge_number, 400, "not valid JSON"),
        (
            format!(
                r#"{{"personal_id": "{id}", "purpose": "{}"}}"#,
                "a".repeat(12_000)
            ),
            400,
            "purpose",
        ),
        (
            format!(
                r#"{{"personal_id": "{id}", "personal_id": "{id}", "purpose": "administrative-procedure", "case_ref": "HS-2026-000922"}}"#
            ),
            400,
            "duplicate field",
        ),
        (
            "{\"personal_id\": \"\u{0}\", \"purpose\": \"x\"}".to_owned(),
            400,
            "not valid JSON",
        ),
    ];
    for (body, status, needle) in cases {
        let r = env.call("mot-cua", LOOKUP, &body).await;
        assert_eq!(r.status, status, "{}: {}", &body[..body.len().min(60)], r.body);
        let detail = r.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(needle), "expected '{needle}' in '{detail}'");
        assert!(r.body.get("citizen").is_none());
    }
    // A 10 MB string never gets buffered: 413 from the declared length.
    let r = env
        .call(
            "mot-cua",
            LOOKUP,
            &format!(r#"{{"personal_id": "{}"}}"#, "1".repeat(10 << 20)),
        )
        .await;
    assert_eq!(r.status, 413);
    // Invalid UTF-8.
    let token = env.token("mot-cua", "officer-1");
    let req = http::Request::post(env.url(LOOKUP))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"{\"personal_id\": \"\xff\xfe\", \"purpose\": \"x\"}",
        )))
        .expect("request");
    let r = env.client("mot-cua").send(req).await.expect("response");
    assert_eq!(r.status, 400, "{}", r.body);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_under_load_completes_every_accepted_request() {
    let (pg, _pg_home) = common::external_pg().await;
    let mut env = TestEnv::start_with(|c| {
        common::use_warehouse(c, &pg);
        c.rate_limits.scale = 1000.0;
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4u32 {
        let stop = stop.clone();
        let client = env.client("y-te");
        let token = env.token("y-te", &format!("doctor-{w}"));
        let target = env.url(LOOKUP);
        let ids: Vec<String> = (0..200u32)
            .map(|i| {
                env.sim
                    .population()
                    .citizen((i * 4 + w) * 13)
                    .personal_id()
                    .as_str()
                    .to_owned()
            })
            .collect();
        workers.push(tokio::spawn(async move {
            let (mut answered, mut refused) = (Vec::new(), 0usize);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let body =
                    json!({"personal_id": ids[i % ids.len()], "purpose": "health-insurance"}).to_string();
                match client.post(&target, Some(&token), &body).await {
                    Ok(r) => {
                        assert!(r.status == 200 || r.status == 403, "{}: {}", r.status, r.body);
                        answered.push(r.body["audit_id"].as_str().expect("audit id").to_owned());
                    }
                    // Refused once the listener is closed: never accepted.
                    Err(_) => refused += 1,
                }
                i += 1;
            }
            (answered, refused)
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Stop the gateway while the load runs: it drains what it accepted,
    // anchors its journal and delivers it.
    env.gateway.take().expect("gateway").stop().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answered = Vec::new();
    let mut refused = 0;
    for w in workers {
        let (a, r) = w.await.expect("worker");
        answered.extend(a);
        refused += r;
    }
    assert!(
        answered.len() > 20 && refused > 0,
        "{} answered, {refused} refused",
        answered.len()
    );
    let db = popgate::warehouse::connect(&pg.admin_url()).await.expect("db");
    let outcomes: i64 = db
        .query_one(
            "SELECT count(*) FROM popgate.audit_events WHERE kind = 'outcome'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    // Every request the gateway decided on was answered: none was dropped.
    assert_eq!(outcomes as usize, answered.len());
    let report = popgate::audit::verify::verify(&db, None).await.expect("verify");
    assert!(
        report.is_whole() && report.unanchored.is_empty(),
        "{:?} {:?}",
        report.findings,
        report.unanchored
    );
    env.stop().await;
    drop(pg);
}

/// Every process of the cluster whose server is `pid`: it and its children.
fn cluster_processes(pid: u32) -> Vec<String> {
    let children = std::process::Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .expect("pgrep");
    std::iter::once(pid.to_string())
        .chain(
            String::from_utf8_lossy(&children.stdout)
                .split_whitespace()
                .map(str::to_owned),
        )
        .collect()
}

fn signal(signal: &str, pids: &[String]) {
    let status = std::process::Command::new("kill")
        .arg(signal)
        .args(pids)
        .status()
        .expect("kill");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_warehouse_is_reported_down_within_seconds_and_up_again() {
    let (pg, _home) = common::external_pg().await;
    let env = common::TestEnv::start_with(|c| {
        common::use_warehouse(c, &pg);
        c.audit.shipper_stuck_after = std::time::Duration::from_secs(2);
    })
    .await;
    let warehouse = |body: &str| -> String {
        serde_json::from_str::<serde_json::Value>(body).expect("json")["warehouse"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(warehouse(&env.ops_get("/readyz").await.1), "up");
    let pids = cluster_processes(pg.pid().expect("running"));
    signal("-STOP", &pids);
    let frozen = std::time::Instant::now();
    loop {
        let (_, body) = env.ops_get("/readyz").await;
        if warehouse(&body) == "down" {
            break;
        }
        assert!(
            frozen.elapsed() < std::time::Duration::from_secs(5),
            "still up: {body}"
        );
    }
    // A request while it is frozen: its events wait in the journal, and a
    // shipper that cannot deliver them is reported stuck.
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let body =
        json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000919"});
    assert_eq!(
        env.call("mot-cua", "/v1/citizens/lookup", &body.to_string())
            .await
            .status,
        200
    );
    let shipper = |body: &str| -> String {
        serde_json::from_str::<serde_json::Value>(body).expect("json")["shipper"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, body) = env.ops_get("/readyz").await;
        if shipper(&body).starts_with("stuck") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never stuck: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    signal("-CONT", &pids);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, body) = env.ops_get("/readyz").await;
        if warehouse(&body) == "up" && shipper(&body) == "ok" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not up again: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    env.stop().await;
}

/// The config of `env` with another warehouse and a data directory of its
/// own, written to a file for `popgate serve`.
fn config_with_warehouse(env: &TestEnv, url: &str) -> std::path::PathBuf {
    let mut config = env.config.clone();
    config.warehouse.url = Some(url.to_owned());
    config.warehouse.admin_url = None;
    config.gateway.data_dir = env.dir.path().join("other-data");
    let file = env
        .dir
        .path()
        .join(format!("serve-{}.toml", rand::random::<u32>()));
    std::fs::write(&file, config.to_toml()).expect("config");
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warehouse_that_cannot_be_reached_is_named_with_its_cause_once() {
    let env = TestEnv::start().await;
    // A wrong password: refused at once, naming the role and the address.
    let port = url_port(&env.gateway().warehouse_url);
    let wrong = format!("postgres://popgate_gateway:not-the-password@127.0.0.1:{port}/popgate");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_popgate"))
        .args(["serve", "--config"])
        .arg(config_with_warehouse(&env, &wrong))
        .output()
        .expect("serve");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("popgate: "), "{stderr}");
    assert!(last.contains("password authentication failed"), "{last}");
    assert!(
        last.contains(&format!("127.0.0.1:{port}")) && last.contains("role popgate_gateway"),
        "{last}"
    );
    assert!(!last.contains("not-the-password"), "{last}");
    assert_eq!(
        last.matches("password authentication failed").count(),
        1,
        "the cause once: {last}"
    );

    // Nothing listening: retried with backoff, logged once, then the cause.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let refused_port = closed.local_addr().expect("addr").port();
    drop(closed);
    let refused = format!("postgres://popgate_gateway@127.0.0.1:{refused_port}/popgate");
    let out = tokio::task::spawn_blocking({
        let file = config_with_warehouse(&env, &refused);
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_popgate"))
                .args(["serve", "--config"])
                .arg(file)
                .output()
                .expect("serve")
        }
    })
    .await
    .expect("join");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let retries = stderr
        .lines()
        .filter(|l| l.contains("warehouse not ready"))
        .count();
    assert_eq!(retries, 1, "one line per state, not per attempt: {stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("popgate: ") && last.contains(&format!("127.0.0.1:{refused_port}")),
        "{stderr}"
    );
    assert!(last.to_lowercase().contains("refused"), "{last}");

    // A database that is not there, and a TLS login that cannot be made:
    // each named as what to fix.
    let url = &env.gateway().warehouse_url;
    let missing = format!(
        "{}/no_such_db",
        url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base)
    );
    let no_tls = {
        let mut config = env.config.clone();
        config.warehouse.url = Some(url.clone());
        config.warehouse.admin_url = None;
        config.warehouse.tls = Some(popgate::config::WarehouseTlsMode::VerifyFull);
        // A CA that did not sign the warehouse's certificate (when it has
        // one), or TLS asked of a server without it: either is a TLS failure.
        let other = env.dir.path().join("other-pki");
        let other = popgate::tls::pki::init(&other, &[], false).expect("pki");
        config.warehouse.ca = Some(other.layout.national_ca_cert());
        config.gateway.data_dir = env.dir.path().join("tls-data");
        let file = env.dir.path().join("serve-tls.toml");
        std::fs::write(&file, config.to_toml()).expect("config");
        file
    };
    for (file, what) in [
        (
            config_with_warehouse(&env, &missing),
            "database \"no_such_db\" does not exist",
        ),
        (no_tls, "TLS"),
    ] {
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_popgate"))
                .args(["serve", "--config"])
                .arg(file)
                .output()
                .expect("serve")
        })
        .await
        .expect("join");
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("popgate: ") && last.contains(what),
            "{what}: {stderr}"
        );
        assert!(last.contains(&format!("127.0.0.1:{port}")), "{last}");
    }
    env.stop().await;
}

fn url_port(url: &str) -> u16 {
    url.parse::<tokio_postgres::Config>()
        .ok()
        .and_then(|c| c.get_ports().first().copied())
        .expect("port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_starts_with_the_gateway_role_only() {
    let env = TestEnv::start().await;
    // Another instance on the same warehouse, with no DDL rights at all,
    // trusting the first instance's signatures of policy versions.
    let second = env.second_instance_config();
    let gateway = tokio::time::timeout(Duration::from_secs(20), popgate::gateway::Gateway::start(&second))
        .await
        .expect("starts at once, without retrying")
        .expect("the second instance starts");
    assert_eq!(gateway.policy.version(), env.gateway().policy.version());
    gateway.stop().await;
    env.stop().await;
}
