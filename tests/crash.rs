//! The gateway as a real child process, killed with SIGKILL at random
//! moments under load and restarted on the same journal: every audit id a
//! client received is in the warehouse exactly once, the chain has no gap,
//! `audit verify` passes, and the gateway's logs never contain a personal ID
//! or a name.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use popgate::config::Config;
use popgate::sim::{Faults, SimSettings, Simulator};
use popgate::tls::pki::{self, SAMPLE_APPS};
use popgate::warehouse::embedded::{free_port, EmbeddedPostgres};
use rand::Rng;
use serde_json::{json, Value};

const KILLS: usize = 10;

async fn ready(ops: &str, timeout: Duration) -> Option<Value> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(resp) = client.get(format!("{ops}/readyz").parse().expect("uri")).await {
            let ok = resp.status().as_u16() == 200;
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if ok {
                return serde_json::from_slice(&body).ok();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn spawn_gateway(config: &std::path::Path, log: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log");
    Command::new(env!("CARGO_BIN_EXE_popgate"))
        .args(["serve", "--config"])
        .arg(config)
        .env(
            "POPGATE_LOG",
            "debug,tokio_postgres=info,hyper=info,h2=info,rustls=info",
        )
        .env("POPGATE_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn gateway")
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_audit_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki::init(&dir.path().join("certs"), SAMPLE_APPS, false).expect("pki");
    let l = pki.layout.clone();

    let pg_home = dir.path().join("pg-home");
    let pg = EmbeddedPostgres::start_provisioned(&pg_home).await.expect("pg");

    let settings = SimSettings {
        seed: 5,
        ..common::sim_settings(Faults::default())
    };
    let mut sim = Simulator::spawn(&settings, &l).await.expect("simulator");

    let gateway_port = free_port().expect("port");
    let ops_port = free_port().expect("port");
    let mut config = Config::development(&l, sim.url(), common::policies_dir(), dir.path().join("data"));
    config.gateway.listen = ([127, 0, 0, 1], gateway_port).into();
    config.gateway.ops_listen = ([127, 0, 0, 1], ops_port).into();
    config.gateway.instance_id = "crash-1".into();
    config.audit.checkpoint_every = 50;
    // Small segments, so that each round rotates into segments prepared
    // ahead (written full of zeros) and is killed inside one.
    config.audit.segment_bytes = 64 * 1024;
    config.rate_limits.scale = 1000.0;
    config.warehouse.url = Some(pg.gateway_url());
    config.warehouse.admin_url = Some(pg.admin_url());
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, config.to_toml()).expect("config");
    let log_path = dir.path().join("gateway.log");
    let ops = format!("http://127.0.0.1:{ops_port}");
    let url = format!("https://127.0.0.1:{gateway_port}/v1/citizens/lookup");

    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let asked: Arc<Mutex<HashSet<u32>>> = Arc::default();
    let mut rng = rand::thread_rng();
    let journal = dir.path().join("data/journal");
    let mut killed_in_prepared = 0;
    for round in 0..=KILLS {
        let mut child = spawn_gateway(&config_path, &log_path);
        assert!(
            ready(&ops, Duration::from_secs(60)).await.is_some(),
            "gateway did not become ready (round {round})"
        );
        if round == KILLS {
            // Last round: a graceful stop that anchors and delivers everything.
            signal(&child, "-TERM");
            let status = tokio::task::spawn_blocking(move || child.wait())
                .await
                .expect("join")
                .expect("wait");
            assert!(status.success(), "{status}");
            break;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for w in 0..3u32 {
            let (stop, received, asked, url) = (stop.clone(), received.clone(), asked.clone(), url.clone());
            let client = common::TestClient::new(
                &l.apps_ca_cert(),
                Some((&l.app_cert("mot-cua"), &l.app_key("mot-cua"))),
            );
            let token = pki::mint_demo_token(
                &l,
                "mot-cua",
                &format!("officer-{w}"),
                &["officer".into()],
                None,
                600,
            )
            .expect("token");
            let sim = sim.sim.clone();
            workers.push(tokio::spawn(async move {
                let mut i = w + round as u32 * 1000;
                while !stop.load(Ordering::Relaxed) {
                    let index = (i * 7919) % 20_000;
                    let id = sim.population().citizen(index).personal_id().as_str().to_owned();
                    asked.lock().expect("lock").insert(index);
                    let body =
                        json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000920"})
                            .to_string();
                    if let Ok(r) = client.post(&url, Some(&token), &body).await {
                        if let Some(a) = r.body["audit_id"].as_str() {
                            received.lock().expect("lock").push(a.to_owned());
                        }
                    }
                    i += 3;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(150..700))).await;
        signal(&child, "-KILL");
        let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        // Killed inside a segment prepared ahead: it still has its full
        // length of zeros beyond the frames.
        let newest = popgate::audit::journal::list_segments(&journal)
            .expect("segments")
            .pop()
            .expect("a segment");
        if std::fs::metadata(&newest.1).expect("segment").len() == config.audit.segment_bytes {
            killed_in_prepared += 1;
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.await.expect("worker");
        }
    }

    assert!(
        killed_in_prepared > 0,
        "no round was killed inside a prepared segment"
    );
    let received = received.lock().expect("lock").clone();
    assert!(received.len() > 100, "too little load: {}", received.len());
    let db = popgate::warehouse::connect(&pg.admin_url()).await.expect("db");
    let mut counts: HashMap<String, i64> = HashMap::new();
    for row in db
        .query(
            "SELECT audit_id::text, count(*) OVER (PARTITION BY audit_id) FROM popgate.audit_events",
            &[],
        )
        .await
        .expect("query")
    {
        counts.insert(row.get(0), row.get(1));
    }
    for id in &received {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "audit_id {id} must be in the warehouse exactly once"
        );
    }
    let (n, max): (i64, i64) = {
        let row = db
            .query_one(
                "SELECT count(*), max(seq) FROM popgate.audit_events WHERE instance_id = 'crash-1'",
                &[],
            )
            .await
            .expect("query");
        (row.get(0), row.get(1))
    };
    assert_eq!(n, max, "the chain has no gap");
    let signer = popgate::audit::checkpoint::Signer::from_file(&l.audit_signing_key()).expect("key");
    let keys = [("crash-1".to_owned(), vec![signer.public_key()])]
        .into_iter()
        .collect();
    let report = popgate::audit::verify::verify(&db, Some(&keys))
        .await
        .expect("verify");
    assert!(report.is_whole(), "{:?}", report.findings);
    assert!(
        report.unanchored.is_empty(),
        "a graceful stop anchors the head: {:?}",
        report.unanchored
    );

    // The logs of all those runs never name a citizen.
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(log.contains("request"), "the gateway logged its requests");
    for line in log.lines().filter(|l| l.starts_with('{')) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{line}");
    }
    let structured = log.lines().filter(|l| l.contains("\"request_id\"")).count();
    assert!(
        structured * 2 > received.len(),
        "structured request logs: {structured} of {}",
        received.len()
    );
    for index in asked.lock().expect("lock").iter() {
        let c = sim.sim.population().citizen(*index);
        assert!(
            !log.contains(c.personal_id().as_str()),
            "a personal ID is in the gateway's log"
        );
        assert!(
            !log.contains(&c.full_name()),
            "a citizen's name is in the gateway's log"
        );
    }
    sim.stop().await;
    drop(pg);
}
