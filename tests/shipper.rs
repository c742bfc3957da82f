//! The shipper against a real PostgreSQL: full batches go to the warehouse
//! two at a time, on two connections, and still commit in order — a batch
//! whose predecessor failed is rolled back, so the watermark never passes
//! an event that is not there.

mod common;

#[path = "../benches/sample/mod.rs"]
mod sample;

use std::sync::Arc;
use std::time::Duration;

use popgate::audit::checkpoint::Signer;
use popgate::audit::journal::Journal;
use popgate::audit::shipper::{Shipper, ShipperSettings};
use popgate::warehouse::Warehouse;

const BATCH: usize = 10;

/// Refuses the insertion of the event with `seq`, as a broken row would.
async fn refuse_seq(admin: &tokio_postgres::Client, seq: i64) {
    admin
        .batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION popgate.test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.seq = {seq} THEN RAISE EXCEPTION 'refused by the test'; END IF;
                 RETURN NEW;
             END $$;
             DROP TRIGGER IF EXISTS test_refuse ON popgate.audit_events;
             CREATE TRIGGER test_refuse BEFORE INSERT ON popgate.audit_events
                 FOR EACH ROW EXECUTE FUNCTION popgate.test_refuse();"
        ))
        .await
        .expect("trigger");
}

/// Events in the warehouse: how many, the highest seq, and the watermark.
async fn stored(admin: &tokio_postgres::Client) -> (i64, i64, i64) {
    let row = admin
        .query_one(
            "SELECT count(*), coalesce(max(seq), 0),
                    coalesce((SELECT delivered FROM popgate.shipper_watermarks WHERE instance_id = 'bench'), 0)
             FROM popgate.audit_events",
            &[],
        )
        .await
        .expect("count");
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_shipped_at_once_commit_in_order() {
    let (pg, _home) = common::external_pg().await;
    popgate::warehouse::migrate(&pg.admin_url())
        .await
        .expect("migrate");
    let admin = popgate::warehouse::connect(&pg.admin_url()).await.expect("admin");

    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = Journal::open(
        sample::journal_settings(dir.path()),
        Arc::new(Signer::generate().expect("key")),
    )
    .expect("journal");
    // Forty events, one after another: event n has seq n.
    for i in 0..20 {
        journal
            .append(sample::intent(i), Vec::new())
            .await
            .expect("intent");
        journal
            .append(sample::event(i), vec![sample::record(i)])
            .await
            .expect("outcome");
    }
    let mut shipper = Shipper::new(
        ShipperSettings {
            dir: dir.path().to_owned(),
            instance_id: "bench".into(),
            batch: BATCH,
            retention: Duration::from_secs(3600),
        },
        journal.state.clone(),
        Warehouse::new(&pg.gateway_url()).expect("warehouse"),
    );

    // The first round is 1..=10 and 11..=20; the second batch fails and
    // the first commits.
    refuse_seq(&admin, 15).await;
    let error = shipper.ship_available().await.expect_err("seq 15 is refused");
    assert!(format!("{error:#}").contains("refused by the test"), "{error:#}");
    assert_eq!(stored(&admin).await, (10, 10, 10));

    // Now the round is 11..=20 and 21..=30 and its first batch fails: the
    // second has its rows written, but must roll back rather than commit
    // past the gap.
    refuse_seq(&admin, 11).await;
    let error = shipper.ship_available().await.expect_err("seq 11 is refused");
    assert!(format!("{error:#}").contains("refused by the test"), "{error:#}");
    assert_eq!(
        stored(&admin).await,
        (10, 10, 10),
        "nothing after the failed batch committed"
    );

    // Once the warehouse takes them, everything arrives exactly once.
    admin
        .batch_execute("DROP TRIGGER test_refuse ON popgate.audit_events")
        .await
        .expect("drop trigger");
    assert_eq!(shipper.ship_available().await.expect("ships"), 30);
    assert_eq!(stored(&admin).await, (40, 40, 40));
    let records: i64 = admin
        .query_one("SELECT count(*) FROM popgate.citizen_records", &[])
        .await
        .expect("records")
        .get(0);
    assert_eq!(records, 20, "one record per outcome");
}
