//! The embedded PostgreSQL cluster starts (as an unprivileged user when we
//! are root) on the warehouse's settings, accepts the gateway's restricted
//! login, and stops.

use std::time::Duration;

use popgate::warehouse::{self, embedded::EmbeddedPostgres};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_migrates_restricts_and_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().to_owned();
    let mut pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&home))
        .await
        .expect("join")
        .expect("start");
    pg.provision().await.expect("provision");
    warehouse::migrate(&pg.admin_url()).await.expect("migrate");
    // Applying the migrations again is a no-op.
    warehouse::migrate(&pg.admin_url()).await.expect("migrate twice");

    let gw = warehouse::connect(&pg.gateway_url())
        .await
        .expect("gateway login");
    gw.execute(
        "INSERT INTO popgate.audit_events (instance_id, seq, audit_id, ts, request_id, operation, decision, kind, prev_hash, hash)
         VALUES ('t', 1, gen_random_uuid(), now(), 'r', 'lookup', 'granted', 'outcome', '00', '11')",
        &[],
    )
    .await
    .expect("the gateway may insert audit events");
    let update = gw
        .execute("UPDATE popgate.audit_events SET decision = 'denied'", &[])
        .await;
    assert!(update.is_err(), "the gateway must not update audit events");
    let delete = gw.execute("DELETE FROM popgate.audit_events", &[]).await;
    assert!(delete.is_err(), "the gateway must not delete audit events");
    // Not even the superuser rewrites history without disabling the trigger.
    let admin = warehouse::connect(&pg.admin_url()).await.expect("admin login");
    let err = admin
        .execute("DELETE FROM popgate.audit_events", &[])
        .await
        .expect_err("trigger");
    assert!(
        err.to_string().contains("append-only") || format!("{err:?}").contains("append-only"),
        "{err:?}"
    );
    // Bodies compress with lz4 (migration 9), and the cluster runs on the
    // settings chosen for the warehouse's workload.
    let lz4: Vec<String> = admin
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attcompression = 'l'
             AND attrelid IN ('popgate.audit_events'::regclass, 'popgate.citizen_records'::regclass) ORDER BY 1",
            &[],
        )
        .await
        .expect("columns")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(lz4, ["body", "details", "fields", "subjects"]);
    for (setting, value) in [
        ("jit", "off"),
        ("checkpoint_timeout", "15min"),
        ("max_connections", "200"),
    ] {
        let shown: String = admin
            .query_one(&format!("SHOW {setting}"), &[])
            .await
            .expect("show")
            .get(0);
        assert_eq!(shown, value, "{setting}");
    }
    drop((gw, admin));

    let port = pg.port();
    if is_root() {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(pg.data_dir()).expect("data dir").uid();
        assert_ne!(owner, 0, "the cluster must not be owned by root");
    }
    let mut pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .expect("stop");
    assert!(!pg.is_running());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port closed after stop"
    );
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}
