//! End-to-end load benchmark: the full pipeline (mTLS, officer token, rate
//! limits, policy, upstream over mTLS, audit journal with group commit,
//! shipping to PostgreSQL) driven over mTLS with varied officers and
//! citizens. The gateway runs as its own process with one worker thread,
//! pinned to core 0 when `taskset` exists; the load generator and the
//! simulator share the other core.
//!
//! `cargo bench --bench e2e` prints req/s and latency percentiles at
//! saturation and at 25/50/75 % of it, the gateway's CPU time per request
//! and its peak RSS. The nginx comparison of the performance issue is not
//! part of it yet.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use popgate::config::Config;
use popgate::sim::{Faults, SimSettings, Simulator};
use popgate::tls::pki::{self, SAMPLE_APPS};
use popgate::warehouse::embedded::{free_port, EmbeddedPostgres};

const CONCURRENCY: usize = 64;
const SATURATION_SECS: u64 = 10;
const FIXED_SECS: u64 = 6;
const OFFICERS: usize = 100;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

struct Target {
    client: HttpsClient,
    url: String,
    tokens: Vec<String>,
    bodies: Vec<Bytes>,
}

impl Target {
    async fn one(&self, i: usize) -> Option<Duration> {
        let req = http::Request::post(&self.url)
            .header("content-type", "application/json")
            .header(
                "authorization",
                format!("Bearer {}", self.tokens[i % self.tokens.len()]),
            )
            .body(Full::new(self.bodies[i % self.bodies.len()].clone()))
            .ok()?;
        let started = Instant::now();
        let resp = self.client.request(req).await.ok()?;
        let ok = resp.status() == http::StatusCode::OK;
        resp.into_body().collect().await.ok()?;
        ok.then(|| started.elapsed())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

struct Run {
    ok: usize,
    failed: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn report(&mut self, name: &str, cpu_us_per_req: Option<f64>) {
        self.latencies.sort_unstable();
        let l = &self.latencies;
        println!(
            "{name:<22} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  failed {}{}",
            self.ok as f64 / self.elapsed.as_secs_f64(),
            percentile(l, 0.50).as_secs_f64() * 1e3,
            percentile(l, 0.99).as_secs_f64() * 1e3,
            percentile(l, 0.999).as_secs_f64() * 1e3,
            self.failed,
            cpu_us_per_req
                .map(|c| format!("  gateway CPU {c:.0} µs/req"))
                .unwrap_or_default()
        );
    }
}

/// Closed loop: `CONCURRENCY` requests in flight for `secs`.
async fn saturate(target: Arc<Target>, secs: u64) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CONCURRENCY {
        let (target, stop) = (target.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut failed, mut i) = (Vec::new(), 0, w);
            while !stop.load(Ordering::Relaxed) {
                match target.one(i).await {
                    Some(d) => lat.push(d),
                    None => failed += 1,
                }
                i += CONCURRENCY;
            }
            (lat, failed)
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut run = Run {
        ok: 0,
        failed: 0,
        elapsed: started.elapsed(),
        latencies: Vec::new(),
    };
    for t in tasks {
        let (lat, failed) = t.await.expect("worker");
        run.ok += lat.len();
        run.failed += failed;
        run.latencies.extend(lat);
    }
    run
}

/// Open loop: requests started at a fixed rate, whatever the latency.
async fn offered(target: Arc<Target>, rate: f64, secs: u64) -> Run {
    let results = Arc::new(Mutex::new((Vec::new(), 0usize)));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut i = 0;
    let mut tasks = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        let (target, results) = (target.clone(), results.clone());
        tasks.push(tokio::spawn(async move {
            let r = target.one(i).await;
            let mut g = results.lock().expect("lock");
            match r {
                Some(d) => g.0.push(d),
                None => g.1 += 1,
            }
        }));
        i += 1;
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed();
    let (latencies, failed) = std::mem::take(&mut *results.lock().expect("lock"));
    Run {
        ok: latencies.len(),
        failed,
        elapsed,
        latencies,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench());
}

async fn bench() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki::init(&dir.path().join("certs"), SAMPLE_APPS, false).expect("pki");
    let l = pki.layout.clone();
    let pg_home = dir.path().join("pg-home");
    let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&pg_home))
        .await
        .expect("join")
        .expect("pg");
    pg.provision().await.expect("provision");

    let sim = Arc::new(Simulator::new(&SimSettings {
        seed: 1,
        population: 1_000_000,
        province: 79,
        faults: Faults::default(),
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let sim_addr = listener.local_addr().expect("addr");
    let (_sim_stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(
        sim.clone()
            .run(listener, Arc::new(popgate::sim::server_tls(&l).expect("tls")), rx),
    );

    let port = free_port().expect("port");
    let ops = free_port().expect("port");
    let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut config = Config::development(
        &l,
        format!("https://{sim_addr}"),
        policies,
        dir.path().join("data"),
    );
    config.gateway.listen = ([127, 0, 0, 1], port).into();
    config.gateway.ops_listen = ([127, 0, 0, 1], ops).into();
    config.gateway.instance_id = "bench-1".into();
    config.rate_limits.scale = 1_000_000.0;
    config.warehouse.url = Some(pg.gateway_url());
    config.warehouse.admin_url = Some(pg.admin_url());
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, config.to_toml()).expect("config");

    let pinned = Command::new("taskset")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut cmd = if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(env!("CARGO_BIN_EXE_popgate"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_popgate"))
    };
    let mut gateway = cmd
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("POPGATE_WORKER_THREADS", "1")
        .env("POPGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("gateway");
    let pid = gateway.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "gateway did not start");
        std::thread::sleep(Duration::from_millis(100));
    }

    let tls = popgate::tls::mutual_client_config(
        &l.apps_ca_cert(),
        &l.app_cert("mot-cua"),
        &l.app_key("mot-cua"),
        &[],
    )
    .expect("tls");
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CONCURRENCY * 2)
        .build(https);
    let tokens: Vec<String> = (0..OFFICERS)
        .map(|o| {
            pki::mint_demo_token(
                &l,
                "mot-cua",
                &format!("canbo-{o}"),
                &["officer".into()],
                None,
                3600,
            )
            .expect("token")
        })
        .collect();
    let population = sim.population();
    let bodies: Vec<Bytes> = (0..20_000u32)
        .map(|i| population.citizen((i * 7919) % 1_000_000))
        .filter(|c| c.residence_province() == 79)
        .map(|c| {
            Bytes::from(
                serde_json::json!({"personal_id": c.personal_id().as_str(), "purpose": "administrative-procedure", "case_ref": "BENCH"})
                    .to_string(),
            )
        })
        .collect();
    let target = Arc::new(Target {
        client,
        url: format!("https://127.0.0.1:{port}/v1/citizens/lookup"),
        tokens,
        bodies,
    });

    println!(
        "popgate e2e (gateway: 1 worker thread{}; {CONCURRENCY} connections)",
        if pinned { ", pinned to core 0" } else { "" }
    );
    let _ = saturate(target.clone(), 2).await; // warm-up: tokens cached, pools filled
    let ticks_before = cpu_ticks(pid);
    let mut sat = saturate(target.clone(), SATURATION_SECS).await;
    let ticks = cpu_ticks(pid) - ticks_before;
    let clk_tck = 100.0; // Linux USER_HZ
    let cpu_us = ticks as f64 / clk_tck * 1e6 / sat.ok.max(1) as f64;
    let rate = sat.ok as f64 / sat.elapsed.as_secs_f64();
    sat.report("saturation", Some(cpu_us));
    for share in [0.25, 0.50, 0.75] {
        let mut run = offered(target.clone(), rate * share, FIXED_SECS).await;
        run.report(&format!("{:.0} % of saturation", share * 100.0), None);
    }
    println!("gateway peak RSS {} MiB", peak_rss_kib(pid) / 1024);
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = gateway.wait();
    drop(pg);
}
