//! Scale-out benchmark: `popgate demo` with one instance (limits local)
//! against `popgate demo --instances 2` (limits shared in the demo's Redis,
//! requests spread over both instances), each as a child process, under the
//! same closed-loop load of mTLS lookups by varied officers and citizens.
//! Prints req/s and p50/p99 latency of each, and the ratios of the second
//! to the first, measured in one run. On a two-core machine both instances,
//! the simulator, PostgreSQL, Redis and the load generator share the cores,
//! so the ratio shows what sharing costs here, not what a second machine
//! would add.
//!
//! `cargo bench --bench scale_out` (a release build of the binary).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use popgate::tls::https_client::{https_client, ClientOptions, HttpVersions, HttpsClient};
use serde_json::{json, Value};

const CONCURRENCY: usize = 32;
const WARMUP_SECS: u64 = 3;
const RUN_SECS: u64 = 10;
const OFFICERS: usize = 50;

struct Demo {
    child: Child,
    ready: Value,
    dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// Waited for in `Demo`'s drop.
#[allow(clippy::zombie_processes)]
fn start(instances: u16) -> Demo {
    let dir = tempfile::tempdir().expect("tempdir");
    let child = Command::new(env!("CARGO_BIN_EXE_popgate"))
        .args([
            "demo",
            "--limit-scale",
            "1000000",
            "--instances",
            &instances.to_string(),
            "--dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("demo");
    let path = dir.path().join("ready.json");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(ready) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
        {
            return Demo { child, ready, dir };
        }
        assert!(Instant::now() < deadline, "the demo did not become ready");
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Load {
    clients: Vec<(HttpsClient, String)>,
    tokens: Vec<String>,
    bodies: Vec<Bytes>,
}

fn load_for(demo: &Demo) -> Load {
    let r = &demo.ready;
    let s = |v: &Value| v.as_str().expect("a string").to_owned();
    let tls = popgate::tls::mutual_client_config(
        Path::new(&s(&r["ca_cert"])),
        Path::new(&s(&r["apps"]["mot-cua"]["cert"])),
        Path::new(&s(&r["apps"]["mot-cua"]["key"])),
        &[],
    )
    .expect("tls");
    let clients = r["gateway_urls"]
        .as_array()
        .expect("gateway_urls")
        .iter()
        .map(|u| {
            let client = https_client(
                tls.clone(),
                &ClientOptions {
                    versions: HttpVersions::Http1,
                    ..ClientOptions::default()
                },
            );
            (client, format!("{}/v1/citizens/lookup", s(u)))
        })
        .collect();
    let tokens = (0..OFFICERS)
        .map(|i| {
            let out = Command::new(env!("CARGO_BIN_EXE_popgate"))
                .args(["token", "--dir"])
                .arg(demo.dir.path())
                .args([
                    "--app",
                    "mot-cua",
                    "--sub",
                    &format!("bench-{i}"),
                    "--role",
                    "officer",
                ])
                .output()
                .expect("token");
            format!("Bearer {}", String::from_utf8_lossy(&out.stdout).trim())
        })
        .collect();
    let bodies = r["sample_personal_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|id| {
            Bytes::from(
                json!({ "personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000123" })
                    .to_string(),
            )
        })
        .collect();
    Load {
        clients,
        tokens,
        bodies,
    }
}

/// Closed loop for `secs`: (answers, latencies of the 200s and 403s).
async fn run(load: Arc<Load>, secs: u64) -> (usize, Vec<Duration>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..CONCURRENCY {
        let (load, stop) = (load.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut i) = (Vec::new(), w);
            while !stop.load(Ordering::Relaxed) {
                let (client, url) = &load.clients[i % load.clients.len()];
                let req = http::Request::post(url)
                    .header("content-type", "application/json")
                    .header("authorization", &load.tokens[i % load.tokens.len()])
                    .body(Full::new(load.bodies[i % load.bodies.len()].clone()))
                    .expect("request");
                let sent = Instant::now();
                if let Ok(resp) = client.request(req).await {
                    let answered = matches!(resp.status().as_u16(), 200 | 403);
                    let _ = resp.into_body().collect().await;
                    if answered {
                        lat.push(sent.elapsed());
                    }
                }
                i += CONCURRENCY;
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("worker"));
    }
    all.sort();
    (all.len(), all)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut results = Vec::new();
    for instances in [1u16, 2] {
        let demo = start(instances);
        let load = Arc::new(load_for(&demo));
        let (n, lat) = rt.block_on(async {
            let _ = run(load.clone(), WARMUP_SECS).await;
            run(load, RUN_SECS).await
        });
        let rate = n as f64 / RUN_SECS as f64;
        println!(
            "{instances} instance(s){}: {rate:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
            if instances > 1 {
                ", limits in Redis"
            } else {
                ", limits local"
            },
            pct(&lat, 0.50).as_secs_f64() * 1e3,
            pct(&lat, 0.99).as_secs_f64() * 1e3
        );
        results.push((rate, pct(&lat, 0.99)));
        drop(demo);
    }
    let (one, two) = (results[0], results[1]);
    println!(
        "two instances with Redis / one without: throughput {:.2}x, p99 {:.2}x",
        two.0 / one.0.max(1.0),
        two.1.as_secs_f64() / one.1.as_secs_f64().max(1e-9)
    );
}
