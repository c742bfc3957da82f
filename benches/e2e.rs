//! End-to-end load benchmark: the full pipeline (mTLS, officer token, rate
//! limits, policy, upstream over mTLS, audit journal with group commit,
//! shipping to PostgreSQL) driven over mTLS with varied officers and
//! citizens. The gateway runs as its own process with one worker thread,
//! pinned to core 0 when `taskset` exists; the load generator and the
//! simulator share the other core.
//!
//! `cargo bench --bench e2e` prints req/s and latency percentiles at
//! saturation over 64 and over 256 connections, then at fixed rates of 25,
//! 50 and 75 % of the lower of the two proxies' saturations and at 1,000
//! req/s (a province's peak several times over), each with the latency
//! the proxy adds over calling the simulator directly at the same rate
//! (measured just before each proxied run). For
//! every run it prints the CPU per request of the proxy, of the load
//! generator with the simulator and of the warehouse, each core's busy
//! share and the rate that the busier core allows at those costs; after
//! each saturation run, the proxy's connections to the national database;
//! from the gateway's own metrics, where its requests' time went (the
//! national database, the waits for the audit journal); and its peak RSS.
//! When nginx is installed, the same load (same client certificate,
//! connections and residents) runs against nginx configured as an mTLS
//! reverse proxy to the same simulator, pinned the same way, and the ratios
//! popgate / nginx are printed.
//!
//! `E2E_NO_NGINX=1` skips nginx. `E2E_PG_SHM=1` puts the warehouse's data
//! directory on tmpfs (`/dev/shm`), as if the warehouse had storage of its
//! own, as it does in production: its writes then no longer queue on the
//! disk where the gateway's journal waits for `fdatasync`. The journal
//! stays on the disk either way, unless `E2E_JOURNAL_SHM=1` puts it on
//! tmpfs too (its `fdatasync` then costs nothing: what the disk's syncs
//! cost the gateway, not a setting to run with). `E2E_UPSTREAM_HTTP1=N` has the gateway
//! reach the national database over HTTP/1.1 with N keep-alive connections
//! instead of one HTTP/2 connection. `E2E_SCALE_ONLY=1` runs the scale checks
//! alone (idle connections and many officers), on a gateway that has not
//! been loaded before. `E2E_CALLGRIND=1` runs each proxy under valgrind's
//! callgrind, counting instructions only during its saturation run, and
//! prints the instructions per request (user space, every thread) instead
//! of the timed figures; the counts repeat from run to run where timings
//! do not. The profiles are left in `target/e2e-callgrind/`.
//! `E2E_PG_STATEMENTS=1` loads `pg_stat_statements` into the warehouse and
//! prints, after popgate's saturation runs, the statements that took most
//! of its time.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use popgate::config::Config;
use popgate::sim::{Faults, SimSettings, Simulator};
use popgate::tls::https_client::{https_client, ClientOptions, HttpVersions, HttpsClient};
use popgate::tls::pki::{self, SAMPLE_APPS};
use popgate::warehouse::embedded::{free_port, EmbeddedPostgres};

// The load generator and the simulator allocate on every request, as the
// gateway does; they get the gateway's allocator so that glibc's malloc does
// not take the core they share.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONCURRENCY: usize = 64;
/// The second saturation run's connections: enough requests in flight that
/// the proxy's CPU, not its waits, sets the rate.
const WIDE: usize = 256;
/// The rate of a province's busiest hour several times over, at which the
/// latency a proxy adds is read (when both proxies carry it).
const PROVINCE_PEAK: f64 = 1_000.0;
const SATURATION_SECS: u64 = 10;
const FIXED_SECS: u64 = 6;
const OFFICERS: usize = 100;
const IDLE_CONNECTIONS: usize = 10_000;
const MANY_OFFICERS: usize = 10_000;

/// One server under load: where to send, as whom, and what.
struct Target {
    client: HttpsClient,
    url: String,
    /// `Authorization` values of officer tokens (empty for servers that take none).
    tokens: Vec<http::HeaderValue>,
    bodies: Vec<Bytes>,
    /// Keep the `audit_id` of every answer, for the completeness check.
    audit_ids: Option<Mutex<Vec<uuid::Uuid>>>,
}

impl Target {
    async fn one(&self, i: usize) -> Option<()> {
        let mut req = http::Request::post(&self.url).header("content-type", "application/json");
        if !self.tokens.is_empty() {
            req = req.header("authorization", self.tokens[i % self.tokens.len()].clone());
        }
        let req = req
            .body(Full::new(self.bodies[i % self.bodies.len()].clone()))
            .ok()?;
        let resp = self.client.request(req).await.ok()?;
        let ok = resp.status() == http::StatusCode::OK;
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        if let (true, Some(ids)) = (ok, &self.audit_ids) {
            if let Some(id) = audit_id_of(&body) {
                ids.lock().expect("lock").push(id);
            }
        }
        ok.then_some(())
    }
}

/// The `audit_id` of a popgate answer, without parsing the whole record
/// (kept as 16 bytes: the load generator's own bookkeeping should cost little
/// on the core it shares with the simulator).
fn audit_id_of(body: &[u8]) -> Option<uuid::Uuid> {
    const KEY: &[u8] = b"\"audit_id\":\"";
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = body[at..].iter().position(|&b| b == b'"')?;
    uuid::Uuid::try_parse_ascii(&body[at..at + len]).ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A process as `/proc/PID/stat` gives it.
struct ProcStat {
    comm: String,
    ppid: u32,
    /// CPU time, user + system, in ticks of [`CLK_TCK`].
    ticks: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, tail) = stat.rsplit_once(')')?;
    let f: Vec<&str> = tail.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat {
        comm: head.split_once('(')?.1.to_owned(),
        ppid: u32::try_from(field(1)?).ok()?,
        ticks: field(11).unwrap_or(0) + field(12).unwrap_or(0),
    })
}

fn cpu_ticks(pid: u32) -> u64 {
    proc_stat(pid).map_or(0, |p| p.ticks)
}

/// Where the machine's CPU time went, read from `/proc`: each core's busy
/// and total time, and the CPU time of the proxy, of this process (the load
/// generator and the simulator) and of the warehouse (every PostgreSQL
/// process this bench started).
struct CpuSample {
    cores: Vec<(u64, u64)>,
    proxy: u64,
    bench: u64,
    warehouse: u64,
}

impl CpuSample {
    fn now(proxy: u32) -> CpuSample {
        // Per core: busy (user, nice, system, irq, softirq, steal) and all.
        let cores = std::fs::read_to_string("/proc/stat")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .map(|l| {
                let f: Vec<u64> = l
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|n| n.parse().ok())
                    .collect();
                let busy = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
                (busy, f.iter().take(8).sum())
            })
            .collect();
        // PostgreSQL runs under a wrapper that drops root, so its processes
        // are found among this process's descendants by name.
        let processes: Vec<(u32, ProcStat)> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| Some((pid, proc_stat(pid)?)))
            .collect();
        let mut family = vec![std::process::id()];
        let mut i = 0;
        while i < family.len() {
            let parent = family[i];
            family.extend(processes.iter().filter(|p| p.1.ppid == parent).map(|p| p.0));
            i += 1;
        }
        let warehouse = processes
            .iter()
            .filter(|(pid, p)| p.comm == "postgres" && family.contains(pid))
            .map(|(_, p)| p.ticks)
            .sum();
        CpuSample {
            cores,
            proxy: cpu_ticks(proxy),
            bench: cpu_ticks(std::process::id()),
            warehouse,
        }
    }

    /// The run since `before`, which answered `requests`.
    fn since(&self, before: &CpuSample, requests: usize) -> CpuAccount {
        let us = |after: u64, before: u64| {
            after.saturating_sub(before) as f64 / CLK_TCK * 1e6 / requests.max(1) as f64
        };
        CpuAccount {
            busy: self
                .cores
                .iter()
                .zip(&before.cores)
                .map(|(a, b)| a.0.saturating_sub(b.0) as f64 / a.1.saturating_sub(b.1).max(1) as f64)
                .collect(),
            proxy: us(self.proxy, before.proxy),
            bench: us(self.bench, before.bench),
            warehouse: us(self.warehouse, before.warehouse),
        }
    }
}

/// One run's CPU: each core's busy share, and CPU microseconds per request
/// of the proxy, of the load generator with the simulator, and of the
/// warehouse. Kernel work charged to no process (interrupts) is left out.
struct CpuAccount {
    busy: Vec<f64>,
    proxy: f64,
    bench: f64,
    warehouse: f64,
}

impl CpuAccount {
    /// The most requests per second the machine could carry at these costs,
    /// and what sets it. Pinned, the proxy has core 0 and the rest core 1;
    /// otherwise all share every core. Work left out of the account only
    /// lowers the true bound.
    fn ceiling(&self, pinned: bool) -> (f64, &'static str) {
        let rest = self.bench + self.warehouse;
        let (us, by) = if !pinned {
            (
                (self.proxy + rest) / self.busy.len().max(1) as f64,
                "the whole machine",
            )
        } else if self.proxy >= rest {
            (self.proxy, "core 0 (the proxy)")
        } else {
            (rest, "core 1 (load generator, simulator and warehouse)")
        };
        (1e6 / us.max(1e-9), by)
    }

    fn report(&self, name: &str, pinned: bool) {
        let busy: Vec<String> = self.busy.iter().map(|b| format!("{:.0} %", b * 100.0)).collect();
        let (ceiling, by) = self.ceiling(pinned);
        println!(
            "{name}: CPU µs per request: {name} {:.0}, load generator and simulator {:.0}, warehouse {:.0}; \
             cores busy {}; at these costs {by} caps the run at {ceiling:.0} req/s",
            self.proxy,
            self.bench,
            self.warehouse,
            busy.join(" / "),
        );
    }
}

/// An account of no CPU at all (a run not made).
fn cpu_of_nothing() -> CpuAccount {
    CpuAccount {
        busy: Vec::new(),
        proxy: 0.0,
        bench: 0.0,
        warehouse: 0.0,
    }
}

/// Linux's USER_HZ: the unit of the times in `/proc`.
const CLK_TCK: f64 = 100.0;

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).map(str::to_owned))
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
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn p(&mut self, q: f64) -> Duration {
        self.latencies.sort_unstable();
        percentile(&self.latencies, q)
    }

    fn report(&mut self, name: &str, cpu_us_per_req: Option<f64>) {
        let (p50, p99, p999) = (self.p(0.50), self.p(0.99), self.p(0.999));
        println!(
            "{name:<30} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  failed {}{}",
            self.rate(),
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            p999.as_secs_f64() * 1e3,
            self.failed,
            cpu_us_per_req
                .map(|c| format!("  CPU {c:.0} µs/req"))
                .unwrap_or_default()
        );
    }
}

/// Closed loop: `connections` requests in flight for `secs`.
async fn saturate(target: Arc<Target>, secs: u64, connections: usize) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..connections {
        let (target, stop) = (target.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut failed, mut i) = (Vec::new(), 0, w);
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                match target.one(i).await {
                    Some(()) => lat.push(sent.elapsed()),
                    None => failed += 1,
                }
                i += connections;
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

/// Open loop at a fixed rate over the same `CONCURRENCY` connections (as
/// wrk2 does): each worker owns every `CONCURRENCY`-th slot of the
/// schedule, and a request is timed from the moment it was due, so a
/// worker that falls behind shows as latency instead of a lower rate.
async fn offered(target: Arc<Target>, rate: f64, secs: u64) -> Run {
    let started = tokio::time::Instant::now();
    let total = (rate * secs as f64) as usize;
    let mut tasks = Vec::new();
    for w in 0..CONCURRENCY {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut failed) = (Vec::new(), 0);
            for i in (w..total).step_by(CONCURRENCY) {
                let due = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due).await;
                match target.one(i).await {
                    Some(()) => lat.push(due.elapsed()),
                    None => failed += 1,
                }
            }
            (lat, failed)
        }));
    }
    let mut run = Run {
        ok: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for t in tasks {
        let (lat, failed) = t.await.expect("worker");
        run.ok += lat.len();
        run.failed += failed;
        run.latencies.extend(lat);
    }
    run.elapsed = started.elapsed();
    run
}

fn main() {
    // The load generator, the simulator and PostgreSQL share core 1; the
    // proxy under test gets core 0 to itself.
    let pinned = pin(std::process::id(), "1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench(pinned));
}

fn pin(pid: u32, cores: &str) -> bool {
    Command::new("taskset")
        .args(["-a", "-p", "-c", cores, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn mtls_client(ca: &std::path::Path, cert: &std::path::Path, key: &std::path::Path) -> HttpsClient {
    let tls = popgate::tls::mutual_client_config(ca, cert, key, &[]).expect("tls");
    https_client(
        tls,
        &ClientOptions {
            versions: HttpVersions::Http1,
            max_idle_per_host: WIDE,
            ..ClientOptions::default()
        },
    )
}

/// A proxy's figures at saturation, over `CONCURRENCY` and `WIDE`
/// connections.
struct Measured {
    saturation: f64,
    cpu: CpuAccount,
    wide: f64,
    wide_cpu: CpuAccount,
}

/// The established TCP connections of process `pid` to `port` on
/// loopback: the proxy's connections to the national database.
fn upstream_connections(pid: u32, port: u16) -> usize {
    let inodes: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let remote_port = f
                .get(2)
                .and_then(|r| r.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            let inode = f.get(9).and_then(|i| i.parse::<u64>().ok());
            f.get(3) == Some(&"01") && remote_port == Some(port) && inode.is_some_and(|i| inodes.contains(&i))
        })
        .count()
}

/// Saturation of one proxy. `metrics` is the gateway's ops port, from
/// whose histograms its own account of a request's time is printed.
async fn measure(
    name: &str,
    target: Arc<Target>,
    pid: u32,
    metrics: Option<u16>,
    pinned: bool,
    upstream_port: u16,
) -> Measured {
    // Warm-up: tokens cached, pools filled; valgrind runs the proxy some
    // thirty times slower, so it needs longer to see every officer once.
    let callgrind = callgrind_dir();
    let _ = saturate(
        target.clone(),
        if callgrind.is_some() { 10 } else { 2 },
        CONCURRENCY,
    )
    .await;
    if callgrind.is_some() {
        callgrind_control(pid, &["--instr=on"]);
    }
    // Under callgrind the figures are instructions, and reading the
    // gateway's metrics would be counted with them.
    let scraped = Scraped::now(metrics.filter(|_| callgrind.is_none())).await;
    let cpu_before = CpuSample::now(pid);
    let mut sat = saturate(target.clone(), SATURATION_SECS, CONCURRENCY).await;
    let cpu = CpuSample::now(pid).since(&cpu_before, sat.ok);
    let upstream = upstream_connections(pid, upstream_port);
    let inside = scraped.since().await;
    if let Some(dir) = callgrind {
        callgrind_control(pid, &["--instr=off"]);
        callgrind_control(pid, &["--dump"]);
        let total = callgrind_total(&dir, pid);
        println!(
            "{name}: {} requests under callgrind, {:.0} instructions per request",
            sat.ok,
            total as f64 / sat.ok.max(1) as f64
        );
    } else {
        sat.report(&format!("{name}: saturation"), Some(cpu.proxy));
        cpu.report(name, pinned);
        println!("{name}: {upstream} connections to the national database");
        if let Some(inside) = inside {
            inside.report(&format!("{name} at saturation"));
        }
    }
    // Under callgrind the count above is the figure; a second run would
    // only take another several minutes.
    let (wide, wide_cpu) = if callgrind_dir().is_some() {
        (sat.rate(), cpu_of_nothing())
    } else {
        let before = CpuSample::now(pid);
        let mut wide = saturate(target.clone(), SATURATION_SECS, WIDE).await;
        let wide_cpu = CpuSample::now(pid).since(&before, wide.ok);
        wide.report(&format!("{name}: saturation, {WIDE} conn."), Some(wide_cpu.proxy));
        wide_cpu.report(name, pinned);
        println!(
            "{name}: {} connections to the national database",
            upstream_connections(pid, upstream_port)
        );
        (wide.rate(), wide_cpu)
    };
    Measured {
        saturation: sat.rate(),
        cpu,
        wide,
        wide_cpu,
    }
}

/// The gateway's `/metrics` text, or nothing if it cannot be read.
async fn scrape_metrics(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut out = Vec::new();
    if let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
        let asked = conn
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await;
        if asked.is_ok() {
            let _ = conn.read_to_end(&mut out).await;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A gateway's metrics as read before a run (nothing for a proxy without).
struct Scraped(Option<(u16, String)>);

impl Scraped {
    async fn now(metrics: Option<u16>) -> Scraped {
        match metrics {
            Some(port) => Scraped(Some((port, scrape_metrics(port).await))),
            None => Scraped(None),
        }
    }

    /// The gateway's own account of the run since.
    async fn since(&self) -> Option<Inside> {
        let (port, before) = self.0.as_ref()?;
        Some(Inside::between(before, &scrape_metrics(*port).await))
    }
}

/// Where a request's time went by the gateway's own histograms, as mean
/// milliseconds over one run: the whole request (from its
/// headers to its answer), the national database, and the two waits for
/// the audit journal.
struct Inside {
    request: Option<f64>,
    upstream: Option<f64>,
    intent: Option<f64>,
    outcome: Option<f64>,
}

impl Inside {
    fn between(before: &str, after: &str) -> Inside {
        let mean = |series: &str| {
            let value = |text: &str, part: &str| -> Option<f64> {
                let (name, labels) = series.split_once('{').unwrap_or((series, ""));
                let key = if labels.is_empty() {
                    format!("{name}_{part} ")
                } else {
                    format!("{name}_{part}{{{labels} ")
                };
                text.lines()
                    .find_map(|l| l.strip_prefix(&key))
                    .and_then(|v| v.trim().parse().ok())
            };
            let sum = value(after, "sum")? - value(before, "sum").unwrap_or(0.0);
            let count = value(after, "count")? - value(before, "count").unwrap_or(0.0);
            (count > 0.0).then(|| sum / count * 1e3)
        };
        Inside {
            request: mean("popgate_request_duration_seconds{operation=\"lookup\"}"),
            upstream: mean("popgate_upstream_duration_seconds"),
            intent: mean("popgate_journal_wait_seconds{event=\"intent\"}"),
            outcome: mean("popgate_journal_wait_seconds{event=\"outcome\"}"),
        }
    }

    fn report(&self, run: &str) {
        let (Some(request), Some(upstream), Some(intent), Some(outcome)) =
            (self.request, self.upstream, self.intent, self.outcome)
        else {
            println!("{run}: inside the gateway: its metrics could not be read");
            return;
        };
        println!(
            "{run}, inside the gateway: mean per request {request:.2} ms: national database {upstream:.2} ms, \
             audit journal {intent:.2} ms (intent) + {outcome:.2} ms (outcome), the rest {:.2} ms",
            request - upstream - intent - outcome
        );
    }
}

fn nginx_binary() -> Option<std::path::PathBuf> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

/// nginx as the province would otherwise deploy it: mTLS from the apps,
/// mTLS with the province's certificate to the national database, a
/// keep-alive pool upstream, no access log.
fn nginx_config(dir: &std::path::Path, l: &pki::PkiLayout, port: u16, sim: std::net::SocketAddr) -> String {
    let d = dir.display();
    format!(
        r#"worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  upstream national {{ server {sim}; keepalive {WIDE}; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{port} ssl;
    keepalive_requests 1000000;
    ssl_protocols TLSv1.3;
    ssl_certificate {gc};
    ssl_certificate_key {gk};
    ssl_client_certificate {ca};
    ssl_verify_client on;
    location / {{
      proxy_pass https://national;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_certificate {uc};
      proxy_ssl_certificate_key {uk};
      proxy_ssl_trusted_certificate {nca};
      proxy_ssl_verify on;
      proxy_ssl_name localhost;
      proxy_ssl_session_reuse on;
    }}
  }}
}}
"#,
        gc = l.gateway_cert().display(),
        gk = l.gateway_key().display(),
        ca = l.apps_ca_cert().display(),
        uc = l.upstream_client_cert().display(),
        uk = l.upstream_client_key().display(),
        nca = l.national_ca_cert().display(),
    )
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spawn_pinned(pinned: bool, program: &std::path::Path) -> Command {
    let mut c = if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]);
        c
    } else {
        Command::new("env")
    };
    if let Some(dir) = callgrind_dir() {
        std::fs::create_dir_all(&dir).expect("callgrind dir");
        let name = program.file_name().and_then(|n| n.to_str()).unwrap_or("proxy");
        c.args(["valgrind", "--tool=callgrind", "--instr-atstart=no"])
            .arg(format!("--callgrind-out-file={}/{name}.%p.out", dir.display()));
    }
    c.arg(program);
    c
}

/// Where callgrind's profiles go, when `E2E_CALLGRIND` is set.
fn callgrind_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("E2E_CALLGRIND")
        .map(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/e2e-callgrind"))
}

/// Runs `callgrind_control` with `args` against the process `pid`.
fn callgrind_control(pid: u32, args: &[&str]) {
    let status = Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .status()
        .expect("callgrind_control");
    assert!(status.success(), "callgrind_control {args:?} failed");
}

/// The instructions counted in the newest profile of process `pid`.
fn callgrind_total(dir: &std::path::Path, pid: u32) -> u64 {
    let newest = std::fs::read_dir(dir)
        .expect("callgrind dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(&format!(".{pid}.out")))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .expect("a callgrind profile");
    let text = std::fs::read_to_string(newest.path()).expect("profile");
    text.lines()
        .find_map(|l| l.strip_prefix("totals: "))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .expect("totals in the profile")
}

fn statements_wanted() -> bool {
    std::env::var_os("E2E_PG_STATEMENTS").is_some()
}

/// Restarts the warehouse with `pg_stat_statements` loaded, counting from
/// an empty table.
async fn load_statement_statistics(pg: &mut EmbeddedPostgres) {
    admin_sql(
        &pg.admin_url(),
        "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'",
    )
    .await;
    pg.stop();
    pg.restart().expect("warehouse restarted");
    admin_sql(
        &pg.admin_url(),
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset()",
    )
    .await;
}

/// Runs `statements` in the warehouse as its superuser.
async fn admin_sql(admin_url: &str, statements: &str) {
    popgate::warehouse::connect(admin_url)
        .await
        .expect("warehouse")
        .batch_execute(statements)
        .await
        .expect(statements);
}

/// The statements that took most of the warehouse's time so far, with
/// their calls and rows (statement texts only: parameters are not shown).
async fn print_statement_statistics(admin_url: &str) {
    let db = popgate::warehouse::connect(admin_url).await.expect("warehouse");
    let rows = db
        .query(
            "SELECT calls, total_exec_time::float8, rows,
                    100 * total_exec_time / sum(total_exec_time) OVER (),
                    left(regexp_replace(query, '\\s+', ' ', 'g'), 110)
             FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 8",
            &[],
        )
        .await
        .expect("pg_stat_statements");
    println!("warehouse: statements by time so far (pg_stat_statements):");
    for r in rows {
        let (calls, ms, n, share, text): (i64, f64, i64, f64, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        println!("  {share:5.1} %  {ms:9.0} ms  {calls:7} calls  {n:9} rows  {text}");
    }
}

/// Waits for the shipper to bring every acknowledged answer's audit event
/// into the warehouse, then counts the missing ones.
async fn audit_completeness(admin_url: &str, ids: Vec<uuid::Uuid>) -> (usize, usize) {
    let db = popgate::warehouse::connect(admin_url).await.expect("warehouse");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let found: i64 = db
            .query_one(
                "SELECT count(*) FROM popgate.audit_events WHERE audit_id = ANY($1)",
                &[&ids],
            )
            .await
            .expect("count")
            .get(0);
        let missing = ids.len() - found as usize;
        if missing == 0 || Instant::now() > deadline {
            return (ids.len(), missing);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn bench(pinned: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki::init(&dir.path().join("certs"), SAMPLE_APPS, false).expect("pki");
    let l = pki.layout.clone();
    // The warehouse on tmpfs when asked (see the top of this file).
    let shm = std::env::var_os("E2E_PG_SHM").map(|_| tempfile::tempdir_in("/dev/shm").expect("shm"));
    let pg_home = shm.as_ref().map_or(dir.path(), |d| d.path()).join("pg-home");
    let mut pg = EmbeddedPostgres::start_provisioned(&pg_home).await.expect("pg");
    if statements_wanted() {
        load_statement_statistics(&mut pg).await;
    }

    let simulator = Simulator::spawn(
        &SimSettings {
            seed: 1,
            population: 1_000_000,
            province: 79,
            faults: Faults::default(),
            legacy_address_share: popgate::demo::DEMO_LEGACY_ADDRESS_SHARE,
        },
        &l,
    )
    .await
    .expect("simulator");
    let (sim, sim_addr) = (simulator.sim.clone(), simulator.addr);

    let population = sim.population();
    let residents: Vec<String> = (0..20_000u32)
        .map(|i| population.citizen((i * 7919) % 1_000_000))
        .filter(|c| c.residence_province() == 79)
        .map(|c| c.personal_id().as_str().to_owned())
        .collect();
    let gateway_bodies: Vec<Bytes> = residents
        .iter()
        .map(|id| {
            Bytes::from(
                serde_json::json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000923"})
                    .to_string(),
            )
        })
        .collect();
    // What a proxy that adds nothing would forward: the C06 question itself.
    let c06_bodies: Vec<Bytes> = residents
        .iter()
        .enumerate()
        .map(|(i, id)| {
            Bytes::from(
                serde_json::json!({"MaYeuCau": format!("bench-{i}"), "MaDVC": "BENCH", "MaTichHop": "BENCH",
                    "MaCanBo": format!("canbo-{}", i % OFFICERS), "SoDinhDanh": id})
                .to_string(),
            )
        })
        .collect();
    let app_client = || mtls_client(&l.apps_ca_cert(), &l.app_cert("mot-cua"), &l.app_key("mot-cua"));

    println!(
        "popgate e2e ({CONCURRENCY} keep-alive mTLS connections; proxies with 1 worker{}; {} residents, {OFFICERS} officers)",
        if pinned { ", pinned to core 0, load generator and simulator on core 1" } else { ", not pinned" },
        residents.len()
    );

    // nginx first, when installed: its saturation sets the common rate at
    // which the latency each proxy adds is compared.
    let scale_only = std::env::var_os("E2E_SCALE_ONLY").is_some();
    let nginx = match nginx_binary().filter(|_| std::env::var_os("E2E_NO_NGINX").is_none() && !scale_only) {
        None => {
            println!("nginx: not installed, or E2E_NO_NGINX or E2E_SCALE_ONLY set: no comparison (apt-get install nginx)");
            None
        }
        Some(bin) => {
            let ndir = dir.path().join("nginx");
            std::fs::create_dir_all(&ndir).expect("nginx dir");
            let port = free_port().expect("port");
            std::fs::write(ndir.join("nginx.conf"), nginx_config(&ndir, &l, port, sim_addr))
                .expect("nginx.conf");
            let child = spawn_pinned(pinned, &bin)
                .arg("-p")
                .arg(&ndir)
                .arg("-c")
                .arg(ndir.join("nginx.conf"))
                .args(["-g", "daemon off; master_process off;"])
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("nginx");
            wait_for_port(port);
            let target = Arc::new(Target {
                client: app_client(),
                url: format!("https://127.0.0.1:{port}{}", popgate::sim::PATH_LOOKUP),
                tokens: Vec::new(),
                bodies: c06_bodies.clone(),
                audit_ids: None,
            });
            let m = measure("nginx", target.clone(), child.id(), None, pinned, sim_addr.port()).await;
            Some((ChildGuard(child), target, m))
        }
    };

    let port = free_port().expect("port");
    let ops = free_port().expect("port");
    let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut config = Config::development(&l, simulator.url(), policies, dir.path().join("data"));
    config.gateway.listen = ([127, 0, 0, 1], port).into();
    config.gateway.ops_listen = ([127, 0, 0, 1], ops).into();
    config.gateway.instance_id = "bench-1".into();
    config.rate_limits.scale = 1_000_000.0;
    let journal_shm =
        std::env::var_os("E2E_JOURNAL_SHM").map(|_| tempfile::tempdir_in("/dev/shm").expect("shm"));
    if let Some(d) = &journal_shm {
        config.audit.journal_dir = Some(d.path().to_path_buf());
    }
    // Room for the scale check's 10,000 idle connections of one app.
    config.limits.max_connections = IDLE_CONNECTIONS + 1_000;
    config.limits.max_connections_per_certificate = IDLE_CONNECTIONS + 1_000;
    config.warehouse.url = Some(pg.gateway_url());
    config.warehouse.admin_url = Some(pg.admin_url());
    // E2E_NO_ALERTS: without the alert rules, to see what they cost.
    config.alerts.enabled = std::env::var_os("E2E_NO_ALERTS").is_none();
    // E2E_UPSTREAM_HTTP1=N: HTTP/1.1 over N connections instead of one h2.
    config.upstream.http1_connections = std::env::var("E2E_UPSTREAM_HTTP1")
        .ok()
        .and_then(|n| n.parse().ok());
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, config.to_toml()).expect("config");
    let gateway = spawn_pinned(pinned, std::path::Path::new(env!("CARGO_BIN_EXE_popgate")))
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("POPGATE_WORKER_THREADS", "1")
        .env("POPGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("gateway");
    let pid = gateway.id();
    let gateway = ChildGuard(gateway);
    wait_for_port(port);

    let tokens = officer_tokens(&l, "canbo", OFFICERS);
    let target = Arc::new(Target {
        client: app_client(),
        url: format!("https://127.0.0.1:{port}/v1/citizens/lookup"),
        tokens,
        bodies: gateway_bodies,
        audit_ids: Some(Mutex::new(Vec::new())),
    });
    if scale_only {
        scale_checks(&l, port, pid, &target).await;
        return;
    }
    let popgate = measure("popgate", target.clone(), pid, Some(ops), pinned, sim_addr.port()).await;
    if callgrind_dir().is_some() {
        return;
    }
    if statements_wanted() {
        print_statement_statistics(&pg.admin_url()).await;
    }
    let rss_busy = rss_kib(pid, "VmHWM:");
    // Let the shipper catch up before the latency runs, and count what
    // saturation lost on the way.
    let drained = Instant::now();
    let ids = target
        .audit_ids
        .as_ref()
        .expect("ids")
        .lock()
        .expect("lock")
        .clone();
    let (acknowledged, missing) = audit_completeness(&pg.admin_url(), ids).await;
    println!(
        "popgate: audit after saturation: {acknowledged} answers acknowledged, {missing} of their events missing from the warehouse (shipped {:.1} s after the load stopped)",
        drained.elapsed().as_secs_f64()
    );
    // Saturation leaves the warehouse some 190,000 new rows, whose pages
    // PostgreSQL writes out in the minutes after. Those writes share the
    // disk with the journal, whose `fdatasync`s would then time the
    // warehouse's catching up rather than the gateway. A checkpoint gets
    // them written before the latency runs.
    let flushed = Instant::now();
    admin_sql(&pg.admin_url(), "CHECKPOINT").await;
    println!(
        "warehouse: checkpoint after saturation took {:.1} s",
        flushed.elapsed().as_secs_f64()
    );

    // The same offered loads for each proxy and for the simulator called
    // directly: 25/50/75 % of the lower saturation (so that no proxy runs
    // overloaded), and a province's peak when both carry it. The latency a
    // proxy adds is its percentile less the simulator's at the same rate,
    // measured just before it.
    let direct = Arc::new(Target {
        client: mtls_client(
            &l.national_ca_cert(),
            &l.upstream_client_cert(),
            &l.upstream_client_key(),
        ),
        url: format!("https://{sim_addr}{}", popgate::sim::PATH_LOOKUP),
        tokens: Vec::new(),
        bodies: c06_bodies,
        audit_ids: None,
    });
    let mut proxies = Vec::new();
    if let Some((guard, t, _)) = &nginx {
        proxies.push(("nginx", t.clone(), None, guard.0.id()));
    }
    proxies.push(("popgate", target.clone(), Some(ops), pid));
    let base = nginx
        .as_ref()
        .map_or(popgate.saturation, |n| n.2.saturation.min(popgate.saturation));
    let mut rates: Vec<(String, f64)> = [0.25, 0.50, 0.75]
        .iter()
        .map(|share| (format!("{:.0} %", share * 100.0), base * share))
        .collect();
    if PROVINCE_PEAK < base * 0.9 {
        rates.push(("province peak".into(), PROVINCE_PEAK));
    }
    let _ = saturate(direct.clone(), 1, CONCURRENCY).await;
    for (name, t, metrics, proxy_pid) in proxies {
        for (label, rate) in &rates {
            // The simulator alone at the same rate, just before: what the
            // disk and core 1 are doing drifts over the minutes of a run.
            let mut alone = offered(direct.clone(), *rate, FIXED_SECS).await;
            alone.report(&format!("simulator direct: {label}, before {name}"), None);
            let (d50, d99) = (alone.p(0.50), alone.p(0.99));
            let scraped = Scraped::now(metrics).await;
            let before = CpuSample::now(proxy_pid);
            let mut run = offered(t.clone(), *rate, FIXED_SECS).await;
            let cpu = CpuSample::now(proxy_pid).since(&before, run.ok);
            run.report(&format!("{name}: {label} ({rate:.0} req/s)"), Some(cpu.proxy));
            cpu.report(name, pinned);
            if let Some(inside) = scraped.since().await {
                inside.report(&format!("{name} at {label}"));
            }
            let ms = |a: Duration, b: &Duration| (a.as_secs_f64() - b.as_secs_f64()) * 1e3;
            println!(
                "{name}: added at {label}: p50 {:.2} ms, p99 {:.2} ms",
                ms(run.p(0.50), &d50),
                ms(run.p(0.99), &d99)
            );
        }
    }

    println!("popgate: peak RSS under load {} MiB", rss_busy / 1024);
    if let Some((_, _, n)) = &nginx {
        compare("", (popgate.saturation, &popgate.cpu), (n.saturation, &n.cpu));
        // How far this machine lets popgate go at the costs just measured,
        // whatever the order of its waits: the bound of its busiest core.
        let (ceiling, by) = popgate.cpu.ceiling(pinned);
        println!(
            "popgate: at its measured CPU costs, {by} caps it at {ceiling:.0} req/s, {:.2}× nginx's saturation",
            ceiling / n.saturation
        );
        compare(
            &format!(" over {WIDE} connections"),
            (popgate.wide, &popgate.wide_cpu),
            (n.wide, &n.wide_cpu),
        );
    }
    scale_checks(&l, port, pid, &target).await;

    let ids = std::mem::take(&mut *target.audit_ids.as_ref().expect("ids").lock().expect("lock"));
    let (acknowledged, missing) = audit_completeness(&pg.admin_url(), ids).await;
    println!("popgate: audit in all: {acknowledged} answers acknowledged, {missing} of their events missing from the warehouse");
    drop(gateway);
    drop(nginx);
    drop(pg);
}

/// popgate's saturation rate and CPU against nginx's, as ratios.
fn compare(runs: &str, (rate, cpu): (f64, &CpuAccount), (nginx_rate, nginx): (f64, &CpuAccount)) {
    let per_nginx = nginx.proxy.max(1e-9);
    println!(
        "popgate / nginx{runs}: {:.2}× throughput ({rate:.0} vs {nginx_rate:.0} req/s); CPU per request {:.0} vs {:.0} µs ({:.1}×); warehouse {:.0} µs ({:.2}× nginx's CPU)",
        rate / nginx_rate,
        cpu.proxy,
        nginx.proxy,
        cpu.proxy / per_nginx,
        cpu.warehouse,
        cpu.warehouse / per_nginx,
    );
}

/// `Authorization` headers carrying the tokens of `n` officers of the
/// `mot-cua` app, named `{prefix}-{i}`.
fn officer_tokens(l: &pki::PkiLayout, prefix: &str, n: usize) -> Vec<http::HeaderValue> {
    (0..n)
        .map(|o| {
            pki::mint_demo_token(
                l,
                "mot-cua",
                &format!("{prefix}-{o}"),
                &["officer".into()],
                None,
                3600,
            )
            .expect("token")
        })
        .map(|t| http::HeaderValue::try_from(format!("Bearer {t}")).expect("header"))
        .collect()
}

/// Memory at scale: many idle mTLS connections held open, then many
/// distinct officers (each a new token to verify and new limiter keys).
async fn scale_checks(l: &pki::PkiLayout, port: u16, pid: u32, target: &Arc<Target>) {
    let tls = Arc::new(
        popgate::tls::mutual_client_config(
            &l.apps_ca_cert(),
            &l.app_cert("mot-cua"),
            &l.app_key("mot-cua"),
            &[],
        )
        .expect("tls"),
    );
    let before = rss_kib(pid, "VmRSS:");
    let open = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut handshakes = Vec::new();
    for _ in 0..IDLE_CONNECTIONS {
        let (tls, open) = (tls.clone(), open.clone());
        handshakes.push(tokio::spawn(async move {
            let _slot = open.acquire_owned().await.ok()?;
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
            let name = rustls_pki_types::ServerName::try_from("localhost").ok()?;
            tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .ok()
        }));
    }
    let mut held = Vec::new();
    for h in handshakes {
        if let Ok(Some(conn)) = h.await {
            held.push(conn);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let with_idle = rss_kib(pid, "VmRSS:");
    println!(
        "popgate: {} idle mTLS connections held: RSS {} MiB (was {} MiB; {:.1} KiB per connection)",
        held.len(),
        with_idle / 1024,
        before / 1024,
        (with_idle.saturating_sub(before)) as f64 / held.len().max(1) as f64
    );
    drop(held);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let tokens = officer_tokens(l, "scale", MANY_OFFICERS);
    let many = Arc::new(Target {
        client: target.client.clone(),
        url: target.url.clone(),
        tokens,
        bodies: target.bodies.clone(),
        audit_ids: None,
    });
    let before = rss_kib(pid, "VmRSS:");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CONCURRENCY {
        let many = many.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for i in (w..MANY_OFFICERS).step_by(CONCURRENCY) {
                ok += usize::from(many.one(i).await.is_some());
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap_or(0);
    }
    let after = rss_kib(pid, "VmRSS:");
    println!(
        "popgate: {MANY_OFFICERS} distinct officers, one request each ({ok} answered in {:.1} s): RSS {} MiB (was {} MiB; {:.2} KiB per officer)",
        started.elapsed().as_secs_f64(),
        after / 1024,
        before / 1024,
        after.saturating_sub(before) as f64 / MANY_OFFICERS as f64
    );
}

/// Stops a child process (SIGTERM, then wait) when dropped.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}
