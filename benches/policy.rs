//! Policy evaluation on the hot path: reading a national-database answer
//! and mapping its C06 record onto the catalog, releasing the granted
//! fields with masks, and serialising the answer — for the one-stop-shop's
//! grant (ten fields, one mask).

use std::path::Path;

use criterion::{black_box, criterion_group, Criterion};
use popgate::audit::record::{RecordOf, WarehouseRecord};
use popgate::policy::{self, Grant, Operation, PolicySet};
use popgate::sim::population::Population;
use popgate::upstream::{read_answer, QueryKind, UpstreamAnswer};

// The gateway's allocator (src/main.rs), so that this measures the code as
// the gateway runs it rather than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The shipped policies, and one synthetic citizen's record and the
/// national database's answer that carries it.
fn fixture() -> (PolicySet, serde_json::Value, Vec<u8>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let set = policy::load_dir(&dir, 79).expect("policies");
    let population = Population::new(1, 100_000, 79);
    let record = population.citizen(4242).to_c06().clone();
    let answer = serde_json::to_vec(&serde_json::json!({
        "MaYeuCau": "bench",
        "ThoiDiemDuLieu": "2026-11-28T08:00:00+07:00",
        "CongdanCollection": { "CongDan": [record] },
    }))
    .expect("json");
    (set, record, answer)
}

/// The one-stop-shop's lookup grant.
fn lookup_grant(set: &PolicySet) -> &Grant {
    set.authorize(
        &set.apps["mot-cua"],
        &["officer".to_owned()],
        Operation::Lookup,
        "administrative-procedure",
    )
    .expect("granted")
}

/// A lookup's answer as the gateway handles it once the national database
/// has answered: read and mapped, released person by person, each person's
/// warehouse copy made, and the app's document written.
#[inline(never)]
fn lookup_answer(set: &PolicySet, grant: &Grant, answer: &[u8]) -> (Vec<u8>, Vec<WarehouseRecord>) {
    let Ok(UpstreamAnswer::Citizen { record, as_of }) = read_answer(&QueryKind::Lookup, answer) else {
        panic!("the answer holds a citizen")
    };
    let mapped = set.catalog.map_json(&record);
    let released = set
        .release_citizen(grant, mapped, None)
        .expect("inside the jurisdiction");
    let records = released
        .people
        .iter()
        .map(|person| {
            WarehouseRecord::enrich(
                set,
                grant,
                RecordOf {
                    citizen_key: "bench",
                    app_id: "mot-cua",
                    paths: &person.fields,
                    mapped: &person.mapped,
                    released: &person.released,
                    as_of: as_of.clone(),
                    legal_basis: None,
                    household_size: None,
                    household_role: None,
                },
            )
        })
        .collect();
    (serde_json::to_vec(&released.into_doc()).expect("json"), records)
}

fn evaluation(c: &mut Criterion) {
    let (set, record, answer) = fixture();
    let app = &set.apps["mot-cua"];
    let grant = lookup_grant(&set);

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
    c.bench_function("lookup_answer", |b| {
        b.iter(|| lookup_answer(&set, grant, black_box(&answer)))
    });
}

criterion_group!(benches, evaluation);

fn main() {
    // For callgrind (docs/PERFORMANCE.md, "Method"): with
    // `POLICY_BENCH_ANSWERS=N`, handle N lookup answers and nothing else,
    // so that instructions per answer can be counted, unaffected by
    // whatever else the machine is doing.
    if let Some(n) = std::env::var("POLICY_BENCH_ANSWERS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
    {
        let (set, _, answer) = fixture();
        let grant = lookup_grant(&set);
        for _ in 0..n {
            black_box(lookup_answer(&set, grant, black_box(&answer)));
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
