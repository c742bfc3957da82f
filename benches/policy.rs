//! Policy evaluation on the hot path: reading a national-database answer
//! and mapping its C06 record onto the catalog, releasing the granted
//! fields with masks, and serialising the answer — for the one-stop-shop's
//! grant (ten fields, one mask).

use std::path::Path;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use popgate::policy::{self, Operation};
use popgate::sim::population::Population;
use popgate::upstream::{read_answer, QueryKind, UpstreamAnswer};

// The gateway's allocator (src/main.rs), so that this measures the code as
// the gateway runs it rather than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn evaluation(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let set = policy::load_dir(&dir, 79).expect("policies");
    let app = &set.apps["mot-cua"];
    let grant = set
        .authorize(
            app,
            &["officer".to_owned()],
            Operation::Lookup,
            "administrative-procedure",
        )
        .expect("granted");
    let population = Population::new(1, 100_000, 79);
    let record = population.citizen(4242).to_c06().clone();
    let answer = serde_json::to_vec(&serde_json::json!({
        "MaYeuCau": "bench",
        "ThoiDiemDuLieu": "2026-11-28T08:00:00+07:00",
        "CongdanCollection": { "CongDan": [record] },
    }))
    .expect("json");

    c.bench_function("c06_to_catalog", |b| {
        b.iter(|| set.catalog.map_record(black_box(&record)))
    });
    // From the bytes the national database sent to the mapped record, as
    // the gateway reads every lookup's answer.
    c.bench_function("c06_answer_to_catalog", |b| {
        b.iter(|| {
            let Ok(UpstreamAnswer::Citizen { record, .. }) =
                read_answer(&QueryKind::Lookup, black_box(&answer))
            else {
                panic!("the answer holds a citizen")
            };
            set.catalog.map_json(&record)
        })
    });
    // For comparison: parsing the same answer into a `serde_json::Value`
    // tree, as answers were read before (and then mapped from the tree).
    c.bench_function("c06_answer_as_value_tree", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&answer)).expect("json"))
    });
    let mapped = set.catalog.map_record(&record);
    c.bench_function("authorize_release_serialise", |b| {
        b.iter(|| {
            let grant = set
                .authorize(
                    app,
                    &["officer".to_owned()],
                    Operation::Lookup,
                    "administrative-procedure",
                )
                .expect("granted");
            let inside = set.within_jurisdiction(grant, &mapped, None);
            let (doc, _) = set.release(grant, black_box(&mapped));
            (inside, serde_json::to_vec(&doc).expect("json"))
        })
    });
    c.bench_function("full_record_pipeline", |b| {
        b.iter(|| {
            let mapped = set.catalog.map_record(black_box(&record));
            let (doc, _) = set.release(grant, &mapped);
            serde_json::to_vec(&doc).expect("json")
        })
    });
}

criterion_group!(benches, evaluation);
criterion_main!(benches);
