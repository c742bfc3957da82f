//! Shipper throughput into a real PostgreSQL (the embedded cluster, on the
//! local disk): events per second delivered from the journal to
//! `popgate.audit_events`, with the enriched records of the outcomes, their
//! checkpoints and the watermark, exactly as the gateway ships them.
//!
//! Two paths are measured: live shipping, where durable frames are handed
//! over in memory, and catching up on a backlog read back from the segment
//! files (after a restart or a warehouse outage). Each request of the
//! gateway writes an intent and an outcome event; so does this benchmark.
//!
//! `cargo bench --bench shipper`

use std::sync::Arc;
use std::time::{Duration, Instant};

use popgate::audit::checkpoint::Signer;
use popgate::audit::journal::Journal;
use popgate::audit::shipper::{Shipper, ShipperSettings};
use popgate::config::DEFAULT_SHIP_BATCH;
use popgate::warehouse::embedded::EmbeddedPostgres;
use popgate::warehouse::Warehouse;

// The gateway's allocator (src/main.rs), so that this measures the code as
// the gateway runs it rather than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "sample/mod.rs"]
mod sample;

/// Requests per round of the live measurement (two events each); the
/// frames of one round fit in the journal's in-memory handoff.
const LIVE_REQUESTS: u64 = 2_500;
const LIVE_ROUNDS: u64 = 8;
/// Requests written while nothing ships, then delivered from disk.
const BACKLOG_REQUESTS: u64 = 50_000;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench());
}

async fn bench() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("pg-home");
    let pg = EmbeddedPostgres::start_provisioned(&home)
        .await
        .expect("postgres");
    popgate::warehouse::migrate(&pg.admin_url())
        .await
        .expect("migrate");

    let (journal, _) = Journal::open(
        sample::journal_settings(&dir.path().join("journal")),
        Arc::new(Signer::generate().expect("key")),
    )
    .expect("journal");
    let mut shipper = Shipper::new(
        ShipperSettings {
            dir: dir.path().join("journal"),
            instance_id: "bench".into(),
            batch: std::env::var("SHIP_BATCH")
                .ok()
                .and_then(|b| b.parse().ok())
                .unwrap_or(DEFAULT_SHIP_BATCH),
            retention: Duration::from_secs(3600),
        },
        journal.state.clone(),
        Warehouse::new(&pg.gateway_url()).expect("warehouse"),
    );
    println!("shipper: batches of {DEFAULT_SHIP_BATCH} events into PostgreSQL (embedded, local disk)");

    let mut shipped = 0;
    let mut busy = Duration::ZERO;
    for round in 0..LIVE_ROUNDS {
        append(&journal, round * LIVE_REQUESTS, LIVE_REQUESTS).await;
        let started = Instant::now();
        shipped += drain(&mut shipper, &journal).await;
        busy += started.elapsed();
    }
    report("live (frames from memory)", shipped, busy);

    let first = LIVE_ROUNDS * LIVE_REQUESTS;
    append(&journal, first, BACKLOG_REQUESTS).await;
    let started = Instant::now();
    let shipped = drain(&mut shipper, &journal).await;
    report("backlog (frames from disk)", shipped, started.elapsed());
    drop(pg);
}

/// `n` requests' intent and outcome events, appended concurrently as the
/// gateway's requests would.
async fn append(journal: &Journal, first: u64, n: u64) {
    let tasks: Vec<_> = (first..first + n)
        .map(|i| {
            let j = journal.clone();
            tokio::spawn(async move {
                j.append(sample::intent(i), Vec::new()).await.expect("intent");
                j.append(sample::event(i), vec![sample::record(i)])
                    .await
                    .expect("outcome");
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("join");
    }
}

/// Ships until everything durable is delivered; returns the events shipped.
async fn drain(shipper: &mut Shipper, journal: &Journal) -> usize {
    let mut n = 0;
    loop {
        let durable = journal
            .state
            .durable_seq
            .load(std::sync::atomic::Ordering::Acquire);
        let delivered = journal
            .state
            .delivered_seq
            .load(std::sync::atomic::Ordering::Acquire);
        if delivered >= durable {
            return n;
        }
        n += shipper.ship_available().await.expect("ship");
    }
}

fn report(what: &str, events: usize, took: Duration) {
    println!(
        "shipper: {what:<28} {events:>7} events in {:>6.2} s = {:>7.0} events/s (target 30,000)",
        took.as_secs_f64(),
        events as f64 / took.as_secs_f64()
    );
}
