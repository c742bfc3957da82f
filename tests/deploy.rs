//! The deployment files: the systemd unit verifies and is hardened; the
//! migration command brings a warehouse to this build's schema.

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn the_systemd_unit_is_hardened_and_verifies() {
    let unit = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/popgate.service"))
        .expect("deploy/popgate.service");
    for directive in [
        "User=popgate",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "StateDirectory=popgate",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "UMask=0077",
        "CapabilityBoundingSet=",
    ] {
        assert!(unit.lines().any(|l| l.trim() == directive), "{directive}");
    }
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("systemd-analyze is not on this machine: the unit's syntax is not verified here");
        return;
    }
    // The unit as installed, pointing at this build's binary.
    let dir = tempfile::tempdir().expect("dir");
    let copy = dir.path().join("popgate.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/popgate", env!("CARGO_BIN_EXE_popgate")),
    )
    .expect("unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("verify");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warehouse_migrate_reports_the_schema_version() {
    let env = common::TestEnv::start().await;
    let out = Command::new(env!("CARGO_BIN_EXE_popgate"))
        .args([
            "warehouse",
            "migrate",
            "--admin-url",
            &env.gateway().warehouse_admin_url,
        ])
        .output()
        .expect("migrate");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let latest = popgate::warehouse::MIGRATIONS.last().map_or(0, |m| m.0);
    assert!(said.contains(&format!("schema version {latest}")), "{said}");
    assert!(!said.contains("password"), "{said}");
    env.stop().await;
}

/// `deploy/roles.sql` as a province would run it, on a cluster of its own:
/// the owner migrates, an instance runs as the gateway's role alone, and
/// the auditor's read-only role verifies the log; the schema keeps no
/// foreign key and its primary keys carry the columns a distributed
/// warehouse would shard by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_roles_script_gives_each_role_what_it_needs() {
    use popgate::warehouse::embedded::EmbeddedPostgres;
    let home = tempfile::tempdir().expect("home");
    let pg = {
        let home = home.path().to_owned();
        tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&home))
            .await
            .expect("join")
            .expect("cluster")
    };
    let port = pg.port();
    let superuser = pg.admin_url();
    let (base, _) = superuser.rsplit_once('/').expect("url");
    let on_postgres = format!("{base}/postgres");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let root = loop {
        match popgate::warehouse::connect(&on_postgres).await {
            Ok(c) => break c,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    root.batch_execute("CREATE DATABASE popgate")
        .await
        .expect("database");
    let script = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/roles.sql"))
        .expect("roles.sql");
    let db = popgate::warehouse::connect(&superuser).await.expect("superuser");
    db.batch_execute(&script).await.expect("roles.sql runs");

    let url = |role: &str, password: &str| format!("postgres://{role}:{password}@127.0.0.1:{port}/popgate");
    let out = Command::new(env!("CARGO_BIN_EXE_popgate"))
        .args([
            "warehouse",
            "migrate",
            "--admin-url",
            &url("popgate_owner", "change-me-owner"),
        ])
        .output()
        .expect("migrate");
    assert!(
        out.status.success(),
        "the owner migrates: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The auditor's grants, as the script says to run them after the first migration.
    let grants: String = script
        .lines()
        .skip_while(|l| !l.contains("After the first migration"))
        .skip(1)
        .filter_map(|l| l.strip_prefix("--"))
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(grants.contains("GRANT SELECT"), "{grants}");
    db.batch_execute(&grants).await.expect("the auditor's grants");

    // An instance with the gateway's role only serves and audits.
    let gateway_url = url("popgate_gateway", "change-me-gateway");
    let env = common::TestEnv::start_with(move |c| {
        c.warehouse.url = Some(gateway_url);
        c.warehouse.admin_url = None;
    })
    .await;
    let citizen = env.citizen(true);
    let body = serde_json::json!({
        "personal_id": citizen.personal_id().as_str(), "purpose": "administrative-procedure",
        "case_ref": "HS-2026-000456",
    });
    let r = env
        .call("mot-cua", "/v1/citizens/lookup", &body.to_string())
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    env.settle().await;
    let out = Command::new(env!("CARGO_BIN_EXE_popgate"))
        .args([
            "audit",
            "verify",
            "--warehouse",
            &url("popgate_auditor", "change-me-auditor"),
        ])
        .output()
        .expect("verify");
    assert!(
        out.status.success(),
        "the auditor verifies: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The auditor reads and cannot write.
    let auditor = popgate::warehouse::connect(&url("popgate_auditor", "change-me-auditor"))
        .await
        .expect("auditor");
    assert!(auditor
        .batch_execute("DELETE FROM popgate.audit_events")
        .await
        .is_err());

    // Ready to distribute: no foreign key anywhere, and the shard columns
    // in the primary keys (audit events by instance, records by pseudonym).
    let fks: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
             WHERE n.nspname = 'popgate' AND c.contype = 'f'",
            &[],
        )
        .await
        .expect("constraints")
        .get(0);
    assert_eq!(fks, 0, "a foreign key would cross shards");
    let pk = |table: &'static str| {
        let db = &db;
        async move {
            let rows = db
                .query(
                    "SELECT a.attname FROM pg_index i
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                     WHERE i.indrelid = $1::text::regclass AND i.indisprimary",
                    &[&format!("popgate.{table}")],
                )
                .await
                .expect("primary key");
            rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>()
        }
    };
    assert!(pk("audit_events").await.contains(&"instance_id".to_owned()));
    // The migrations made the records a partitioned table, with partitions.
    let kind: String = db
        .query_one(
            "SELECT relkind::text FROM pg_class WHERE oid = 'popgate.citizen_records'::regclass",
            &[],
        )
        .await
        .expect("relkind")
        .get(0);
    assert_eq!(kind, "p", "citizen_records is partitioned");
    let parts: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'popgate.citizen_records'::regclass",
            &[],
        )
        .await
        .expect("partitions")
        .get(0);
    assert!(parts >= 1, "a partition to write into");
    let records = pk("citizen_records").await;
    assert!(
        records.contains(&"citizen_key".to_owned()) && records.contains(&"released_month".to_owned()),
        "{records:?}"
    );
    env.stop().await;
    drop(pg);
}
