//! Audit journal throughput: appends from many concurrent requests made
//! durable with group commit (one fdatasync per batch), on the local disk.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use popgate::audit::checkpoint::Signer;
use popgate::audit::journal::Journal;

// The gateway's allocator (src/main.rs), so that this measures the code as
// the gateway runs it rather than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "sample/mod.rs"]
mod sample;
use sample::event;

fn group_commit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = rt.block_on(async {
        let (journal, _) = Journal::open(
            sample::journal_settings(dir.path()),
            Arc::new(Signer::generate().expect("key")),
        )
        .expect("journal");
        // Nothing ships in this benchmark: count everything as delivered.
        journal.state.mark_delivered(u64::MAX / 2);
        journal
    });
    const CONCURRENT: u64 = 1000;
    let mut group = c.benchmark_group("journal");
    group.throughput(Throughput::Elements(CONCURRENT));
    group.sample_size(20);
    group.bench_function("append_1000_concurrent_group_commit", |b| {
        b.iter(|| {
            rt.block_on(async {
                let handles: Vec<_> = (0..CONCURRENT)
                    .map(|i| {
                        let j = journal.clone();
                        tokio::spawn(async move { j.append(event(i), Vec::new()).await })
                    })
                    .collect();
                for h in handles {
                    h.await.expect("join").expect("durable");
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, group_commit);
criterion_main!(benches);
