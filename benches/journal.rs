//! Audit journal throughput: appends from many concurrent requests made
//! durable with group commit (one fdatasync per batch), on the local disk.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use popgate::audit::checkpoint::Signer;
use popgate::audit::event::{AuditEvent, EventKind};
use popgate::audit::journal::{Journal, JournalSettings};

fn event(i: u64) -> AuditEvent {
    AuditEvent {
        audit_id: uuid::Uuid::new_v4().to_string(),
        instance_id: String::new(),
        seq: 0,
        ts: String::new(),
        kind: EventKind::Outcome,
        request_id: format!("req-{i}"),
        intent_id: Some(uuid::Uuid::new_v4().to_string()),
        app_id: Some("mot-cua".into()),
        officer_id: Some("canbo-01".into()),
        officer_unit: Some("26734".into()),
        operation: "lookup".into(),
        purpose: Some("administrative-procedure".into()),
        case_ref: Some("HS-2026-000123".into()),
        decision: "granted".into(),
        reason: None,
        citizen_key: Some("9f".repeat(32)),
        fields: vec![
            "full_name".into(),
            "date_of_birth".into(),
            "sex".into(),
            "permanent_address".into(),
        ],
        policy_version: Some(1),
        http_status: Some(200),
        upstream_status: Some("ok".into()),
        upstream_ms: Some(3),
        upstream_digest: Some("ab".repeat(32)),
        released_digest: Some("cd".repeat(32)),
        details: None,
    }
}

fn group_commit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = rt.block_on(async {
        let settings = JournalSettings {
            dir: dir.path().to_owned(),
            instance_id: "bench".into(),
            segment_bytes: 256 * 1024 * 1024,
            checkpoint_every: 10_000,
            checkpoint_interval: Duration::from_secs(10),
            max_backlog_events: u64::MAX,
            max_backlog_age: Duration::from_secs(u64::MAX / 4),
            fail_writes: None,
        };
        let (journal, _) =
            Journal::open(settings, Arc::new(Signer::generate().expect("key"))).expect("journal");
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
                        tokio::spawn(async move { j.append(event(i), None).await })
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
