//! Audit over real processes and a real PostgreSQL: every answer's event
//! reaches the warehouse exactly once, rewrites of any kind are named by the
//! verifier, a PostgreSQL outage loses nothing, and a journal that cannot be
//! written releases nothing.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::TestEnv;
use popgate::audit::verify::{self, TrustedKeys};
use serde_json::{json, Value};

const LOOKUP: &str = "/v1/citizens/lookup";

fn lookup(id: &str) -> String {
    json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000916"})
        .to_string()
}

fn trusted(env: &TestEnv) -> TrustedKeys {
    let signer =
        popgate::audit::checkpoint::Signer::from_file(&env.pki.layout.audit_signing_key()).expect("key");
    [("test-1".to_owned(), vec![signer.public_key()])]
        .into_iter()
        .collect()
}

/// Makes a mix of granted and refused requests; returns the audit ids.
async fn traffic(env: &TestEnv, n: usize) -> Vec<String> {
    let p = env.sim.population();
    let mut ids = Vec::new();
    for i in 0..n {
        let citizen = p.citizen((i as u32 * 37) % common::POPULATION);
        let body = match i % 5 {
            4 => r#"{"personal_id": "12", "purpose": "administrative-procedure"}"#.to_owned(),
            _ => lookup(citizen.personal_id().as_str()),
        };
        let r = env.call("mot-cua", LOOKUP, &body).await;
        let audit_id = r.body["audit_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no audit_id: {}", r.body));
        ids.push(audit_id.to_owned());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_is_in_the_warehouse_once_and_the_log_verifies() {
    let env = TestEnv::start().await;
    let ids = traffic(&env, 40).await;
    env.settle().await;
    let db = env.admin_db().await;
    for id in &ids {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM popgate.audit_events WHERE audit_id = $1::text::uuid",
                &[id],
            )
            .await
            .expect("query")
            .get(0);
        assert_eq!(n, 1, "audit_id {id}");
    }
    // Upstream calls have their intent; refusals have none.
    let intents: i64 = db
        .query_one(
            "SELECT count(*) FROM popgate.audit_events WHERE kind = 'intent'",
            &[],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(intents, 32, "one intent per upstream call");
    // Granted lookups of mot-cua leave an enriched warehouse record.
    let rows = db
        .query(
            "SELECT r.fields, r.ward_name, r.province_name, r.age_band, r.retain_until > now() + interval '1000 days'
             FROM popgate.citizen_records r JOIN popgate.audit_events e ON e.audit_id = r.audit_id
             WHERE e.decision = 'granted' AND r.citizen_key = e.citizen_key",
            &[],
        )
        .await
        .expect("records");
    assert!(!rows.is_empty());
    for row in &rows {
        let fields: Value = row.get(0);
        let keys: Vec<&String> = fields.as_object().expect("object").keys().collect();
        assert!(
            keys.iter()
                .all(|k| ["full_name", "date_of_birth", "sex", "permanent_address"].contains(&k.as_str())),
            "{keys:?}"
        );
        assert!(row.get::<_, Option<String>>(1).is_some() && row.get::<_, Option<String>>(3).is_some());
        assert_eq!(
            row.get::<_, Option<String>>(2).as_deref(),
            Some("Thành phố Hồ Chí Minh")
        );
        assert!(row.get::<_, bool>(4), "retention from the purpose (1825 days)");
    }
    // No raw personal ID anywhere in the audit log.
    let p = env.sim.population();
    let dump: String = db
        .query_one("SELECT string_agg(e::text, ' ') FROM popgate.audit_events e", &[])
        .await
        .expect("dump")
        .get(0);
    for i in 0..40u32 {
        let id = p
            .citizen((i * 37) % common::POPULATION)
            .personal_id()
            .as_str()
            .to_owned();
        assert!(!dump.contains(&id), "a personal ID leaked into the audit log");
    }

    let report = verify::verify(&db, Some(&trusted(&env))).await.expect("verify");
    assert!(report.is_whole(), "{:?}", report.findings);
    assert_eq!(report.events, 72);
    assert!(report.checkpoints >= 1);
    assert!(report.unanchored.is_empty(), "{:?}", report.unanchored);
    assert!(
        report.summary().starts_with("audit log whole"),
        "{}",
        report.summary()
    );

    // The command line says the same.
    let keys = env.dir.path().join("trusted.json");
    std::fs::write(&keys, serde_json::to_string(&trusted(&env)).expect("json")).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_popgate"))
        .args([
            "audit",
            "verify",
            "--warehouse",
            &env.gateway().warehouse_admin_url,
            "--trusted-keys",
        ])
        .arg(&keys)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("audit log whole") && stdout.contains("keys pinned"),
        "{stdout}"
    );
    env.stop().await;
}

/// How many of `audit_ids` are in the warehouse.
async fn shipped(db: &tokio_postgres::Client, audit_ids: &[String]) -> i64 {
    db.query_one(
        "SELECT count(*) FROM popgate.audit_events WHERE audit_id = ANY($1::text[]::uuid[])",
        &[&audit_ids],
    )
    .await
    .expect("count")
    .get(0)
}

/// Gives the events that match `which` (an SQL condition) their hashed
/// body beside their columns, as warehouses kept them before schema
/// version 10.
async fn keep_bodies(db: &tokio_postgres::Client, which: &str) {
    let rows = db
        .query(
            &format!(
                "SELECT {} FROM popgate.audit_events WHERE {which}",
                popgate::warehouse::stored::EVENT_COLUMNS
            ),
            &[],
        )
        .await
        .expect("events");
    for row in &rows {
        let body = popgate::warehouse::stored::rebuilt_body(row);
        db.execute(
            "UPDATE popgate.audit_events SET body = $1 WHERE instance_id = $2 AND seq = $3",
            &[
                &body,
                &row.get::<_, String>("instance_id"),
                &row.get::<_, i64>("seq"),
            ],
        )
        .await
        .expect("keep the body");
    }
}

async fn findings(db: &tokio_postgres::Client, keys: &TrustedKeys) -> Vec<String> {
    verify::verify(db, Some(keys))
        .await
        .expect("verify")
        .findings
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// A row already in the warehouse where the shipper's next event belongs
/// (another process writing under this instance's id, a restored backup, a
/// forged insert) is a fork: shipping stops, `/readyz` and a metric say so,
/// the answers go on being journaled, and the verifier, holding the chain
/// against the gateway's own anchor, names what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_planted_ahead_of_the_shipper_is_a_fork_that_stops_shipping_and_is_named() {
    let env = TestEnv::start().await;
    traffic(&env, 4).await;
    env.settle().await;
    let keys = trusted(&env);
    let db = env.admin_db().await;
    let next = env.gateway().journal.state.durable_seq.load(Ordering::Acquire) as i64 + 1;
    db.execute(
        "INSERT INTO popgate.audit_events (instance_id, seq, audit_id, ts, request_id, operation, decision, kind, prev_hash, hash)
         VALUES ('test-1', $1, gen_random_uuid(), now(), 'planted', 'lookup', 'granted', 'outcome', 'x', 'y')",
        &[&next],
    )
    .await
    .expect("plant");
    let ids = traffic(&env, 5).await;
    assert_eq!(ids.len(), 5, "answers are still given: the journal holds them");
    env.gateway().journal.checkpoint().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let ready = loop {
        let (status, text) = env.ops_get("/readyz").await;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if body["shipper"] == "chain fork" {
            break (status, body);
        }
        assert!(std::time::Instant::now() < deadline, "no fork reported: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ready.0, 503, "{}", ready.1);
    let (_, metrics) = env.ops_get("/metrics").await;
    assert!(metrics.contains("popgate_audit_chain_fork 1"), "{metrics}");
    // Nothing of the journal's own chain was written over or after the row.
    let rows: i64 = db
        .query_one(
            "SELECT count(*) FROM popgate.audit_events WHERE instance_id = 'test-1' AND seq >= $1",
            &[&next],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 1, "only the planted row");
    let anchor = env.anchor();
    let report = verify::verify_anchored(&db, Some(&keys), &anchor)
        .await
        .expect("verify");
    let found: Vec<String> = report.findings.iter().map(ToString::to_string).collect();
    assert!(
        found.iter().any(|f| f.contains(&format!("seq {next}: altered"))),
        "{found:#?}"
    );
    assert!(found.iter().any(|f| f.contains("missing tail")), "{found:#?}");
    assert!(
        found
            .iter()
            .any(|f| f.contains(&format!("seq {next}: chain fork"))),
        "{found:#?}"
    );
    assert!(!report.is_whole());
}

/// A warehouse of schema version 1 kept event bodies as `jsonb`; upgrading
/// it to `json` bodies keeps every hash verifiable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_warehouse_upgrades_and_still_verifies() {
    let env = TestEnv::start().await;
    traffic(&env, 10).await;
    env.settle().await;
    let keys = trusted(&env);
    let db = env.admin_db().await;
    let body_type = "SELECT data_type FROM information_schema.columns
                     WHERE table_schema = 'popgate' AND table_name = 'audit_events' AND column_name = 'body'";
    let column: String = db.query_one(body_type, &[]).await.expect("type").get(0);
    assert_eq!(column, "json");
    // Back to version 1: bodies re-encoded by jsonb, the migration not yet run.
    db.batch_execute(
        "ALTER TABLE popgate.audit_events ALTER COLUMN body TYPE jsonb USING body::jsonb;
         DELETE FROM popgate.schema_migrations WHERE version = 2",
    )
    .await
    .expect("downgrade");
    assert!(findings(&db, &keys).await.is_empty(), "version 1 verifies");
    popgate::warehouse::migrate(&env.gateway().warehouse_admin_url)
        .await
        .expect("migrate");
    let column: String = db.query_one(body_type, &[]).await.expect("type").get(0);
    assert_eq!(column, "json");
    assert!(findings(&db, &keys).await.is_empty(), "upgraded bodies verify");
    // And the gateway ships into the upgraded table as before.
    let more = traffic(&env, 5).await;
    env.settle().await;
    assert_eq!(shipped(&db, &more).await, 5);
    assert!(findings(&db, &keys).await.is_empty());
}

/// A warehouse of schema version 9 kept every event twice, as columns and
/// again as the hashed body. Upgraded, its events get their kind and the
/// fields only the body held as columns, keep their bodies, and verify
/// beside the events shipped after, which are their columns alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_9_warehouse_upgrades_to_one_column_per_field_and_still_verifies() {
    let env = TestEnv::start().await;
    let before = traffic(&env, 10).await;
    env.settle().await;
    let keys = trusted(&env);
    let db = env.admin_db().await;
    let lean: i64 = db
        .query_one(
            "SELECT count(*) FROM popgate.audit_events WHERE body IS NOT NULL",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(lean, 0, "events are stored once, as columns");
    // Back to version 9: every row with its body, the newer columns gone.
    db.batch_execute("SET session_replication_role = replica")
        .await
        .expect("bypass triggers");
    keep_bodies(&db, "true").await;
    db.batch_execute(
        "ALTER TABLE popgate.audit_events DROP COLUMN kind, DROP COLUMN http_status, DROP COLUMN intent_id,
             DROP COLUMN trace_id, DROP COLUMN details, ALTER COLUMN body SET NOT NULL;
         DROP INDEX popgate.audit_events_subjects;
         CREATE INDEX audit_events_subjects ON popgate.audit_events USING gin (subject_keys);
         DROP INDEX popgate.citizen_records_retain;
         CREATE INDEX citizen_records_retain ON popgate.citizen_records (retain_until);
         DELETE FROM popgate.schema_migrations WHERE version = 10;
         RESET session_replication_role",
    )
    .await
    .expect("downgrade");
    popgate::warehouse::migrate(&env.gateway().warehouse_admin_url)
        .await
        .expect("migrate");
    let count = |sql: &'static str| {
        let db = &db;
        let before = &before;
        async move {
            db.query_one(sql, &[before])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .get::<_, i64>(0)
        }
    };
    assert_eq!(
        count("SELECT count(*) FROM popgate.audit_events WHERE kind = 'outcome' AND audit_id = ANY($1::text[]::uuid[])").await,
        10,
        "the outcomes' kind came out of their bodies"
    );
    assert_eq!(
        count("SELECT count(*) FROM popgate.audit_events WHERE kind = 'outcome' AND http_status IS NULL AND audit_id = ANY($1::text[]::uuid[])").await,
        0,
        "and their HTTP status"
    );
    assert_eq!(
        count("SELECT count(*) FROM popgate.audit_events e WHERE kind = 'intent' AND EXISTS (SELECT 1 FROM popgate.audit_events o WHERE o.intent_id = e.audit_id AND o.audit_id = ANY($1::text[]::uuid[]))").await,
        8,
        "each granted outcome still names its intent"
    );
    assert!(findings(&db, &keys).await.is_empty(), "upgraded events verify");
    let more = traffic(&env, 5).await;
    env.settle().await;
    assert_eq!(shipped(&db, &more).await, 5);
    let with_body: i64 = db
        .query_one(
            "SELECT count(*) FROM popgate.audit_events WHERE body IS NOT NULL AND audit_id = ANY($1::text[]::uuid[])",
            &[&more],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        with_body, 0,
        "events shipped after the upgrade are their columns alone"
    );
    assert!(findings(&db, &keys).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_tampering_is_named_by_the_verifier() {
    let env = TestEnv::start().await;
    traffic(&env, 20).await;
    env.settle().await;
    let keys = trusted(&env);
    let db = env.admin_db().await;
    assert!(findings(&db, &keys).await.is_empty());
    // An attacker with the superuser's rights switches the append-only triggers off.
    db.batch_execute("SET session_replication_role = replica")
        .await
        .expect("bypass triggers");
    // One outcome as a warehouse before schema version 10 kept it: with the
    // hashed body beside its columns. It verifies as it is.
    let outcome_before = |seq: &str| {
        format!("(SELECT max(seq) FROM popgate.audit_events WHERE kind = 'outcome' AND seq < {seq})")
    };
    let legacy = outcome_before("(SELECT max(seq) FROM popgate.audit_events)");
    keep_bodies(&db, &format!("seq = {legacy}")).await;
    assert!(
        findings(&db, &keys).await.is_empty(),
        "a row with its body verifies"
    );
    let snapshot = "CREATE TEMP TABLE saved AS SELECT * FROM popgate.audit_events;
                    CREATE TEMP TABLE saved_cp AS SELECT * FROM popgate.audit_checkpoints";
    db.batch_execute(snapshot).await.expect("snapshot");
    let restore = "DELETE FROM popgate.audit_events; INSERT INTO popgate.audit_events SELECT * FROM saved;
                   DELETE FROM popgate.audit_checkpoints; INSERT INTO popgate.audit_checkpoints SELECT * FROM saved_cp";

    let cases: Vec<(&str, &str)> = vec![
        (
            "UPDATE popgate.audit_events SET decision = 'denied' WHERE seq = 5",
            "seq 5: altered: the event's content does not match its hash",
        ),
        (
            "UPDATE popgate.audit_events SET body = json_build_object('decision', 'denied') WHERE seq = 6",
            "seq 6: altered: the event's content does not match its hash",
        ),
        ("DELETE FROM popgate.audit_events WHERE seq = 7", "seq 7: missing: event 7 is absent"),
        (
            "CREATE TEMP TABLE copied AS SELECT * FROM popgate.audit_events WHERE seq = 3;
             UPDATE copied SET seq = seq + 1000, audit_id = gen_random_uuid();
             INSERT INTO popgate.audit_events SELECT * FROM copied;
             DROP TABLE copied",
            "seq 1003: altered: the event's content does not match its hash",
        ),
        (
            "UPDATE popgate.audit_events a SET body = b.body, prev_hash = b.prev_hash, hash = b.hash,
                audit_id = gen_random_uuid()
             FROM saved b WHERE (a.seq, b.seq) IN ((8, 9), (9, 8))",
            "seq 8: inserted or reordered",
        ),
        (
            "UPDATE popgate.audit_checkpoints SET head_hash = (SELECT hash FROM popgate.audit_events WHERE seq = 2)",
            "forged checkpoint: the signature does not match its content",
        ),
    ];
    // Every stored column, changed on its own, is caught: a row without a
    // body of its own no longer matches its hash, and one that kept its
    // body names the column that differs from it.
    let columns: [(&str, &str); 26] = [
        ("ts", "ts + interval '1 hour'"),
        ("request_id", "'r'"),
        ("app_id", "'y-te'"),
        ("officer_id", "'someone-else'"),
        ("officer_unit", "'00001'"),
        ("operation", "'verify'"),
        ("purpose", "'health-insurance'"),
        ("case_ref", "'HS-2026-999999'"),
        ("decision", "'denied'"),
        ("reason", "'changed'"),
        ("citizen_key", "'k'"),
        ("fields", "'{full_name}'"),
        ("policy_version", "99"),
        ("upstream_status", "'failed'"),
        ("upstream_ms", "12345"),
        ("upstream_digest", "'00'"),
        ("released_digest", "'00'"),
        ("legal_basis", "'none'"),
        ("subjects", "'[]'"),
        ("subject_keys", "'{k}'"),
        ("audit_id", "gen_random_uuid()"),
        ("kind", "'admin'"),
        ("http_status", "599"),
        ("intent_id", "gen_random_uuid()"),
        ("trace_id", "'0af7651916cd43dd8448eb211c80319c'"),
        ("details", "'{\"emergency\": true}'"),
    ];
    let lean = outcome_before(&legacy);
    let changes: Vec<(String, String)> = columns
        .iter()
        .flat_map(|(column, value)| {
            let unhashed = if *column == "subject_keys" {
                "altered: column subject_keys differs".to_owned()
            } else {
                "altered: the event's content does not match its hash".to_owned()
            };
            [
                (
                    format!("UPDATE popgate.audit_events SET {column} = {value} WHERE seq = {lean}"),
                    unhashed,
                ),
                (
                    format!("UPDATE popgate.audit_events SET {column} = {value} WHERE seq = {legacy}"),
                    format!("altered: column {column} differs"),
                ),
            ]
        })
        .collect();
    let cases: Vec<(&str, &str)> = cases
        .into_iter()
        .chain(changes.iter().map(|(t, e)| (t.as_str(), e.as_str())))
        .chain([
            // The tail and the checkpoints that anchored it, deleted: the
            // shipper's watermark still knows.
            (
                "DELETE FROM popgate.audit_events WHERE seq > (SELECT max(seq) - 3 FROM popgate.audit_events);
                 DELETE FROM popgate.audit_checkpoints",
                "missing tail: the shipper delivered events up to",
            ),
            // A checkpoint of one instance replayed as another's.
            (
                "INSERT INTO popgate.audit_checkpoints SELECT 'test-2', seq, head_hash, ts, signed_ts, public_key, signature
                 FROM popgate.audit_checkpoints LIMIT 1",
                "instance test-2 seq",
            ),
        ])
        .collect();
    for (tamper, expected) in cases {
        db.batch_execute(tamper)
            .await
            .unwrap_or_else(|e| panic!("{tamper}: {e}"));
        let found = findings(&db, &keys).await;
        assert!(
            found.iter().any(|f| f.contains(expected)),
            "{tamper}\nexpected: {expected}\nfound: {found:#?}"
        );
        db.batch_execute(restore).await.expect("restore");
        assert!(findings(&db, &keys).await.is_empty(), "restored after: {tamper}");
    }
    // A checkpoint signed with the attacker's own key is caught when keys are pinned.
    let rogue = popgate::audit::checkpoint::Signer::generate().expect("key");
    let max: i64 = db
        .query_one("SELECT max(seq) FROM popgate.audit_events", &[])
        .await
        .expect("max")
        .get(0);
    let head: String = db
        .query_one("SELECT hash FROM popgate.audit_events WHERE seq = $1", &[&max])
        .await
        .expect("head")
        .get(0);
    let forged = rogue.sign("test-1", max as u64 + 10, &head, "2026-11-27T00:00:00.000000Z");
    db.execute(
        "INSERT INTO popgate.audit_checkpoints VALUES ('test-1', $1, $2, now(), $3, $4, $5)",
        &[
            &(max + 10),
            &forged.head_hash,
            &forged.ts,
            &forged.public_key,
            &forged.signature,
        ],
    )
    .await
    .expect("insert");
    let found = findings(&db, &keys).await;
    assert!(
        found.iter().any(|f| f.contains("not signed by a trusted key")),
        "{found:#?}"
    );
    db.batch_execute(restore).await.expect("restore");

    // Everything emptied, the watermarks too: the anchor the gateway keeps
    // outside the database still knows what should be there.
    let anchor = env.anchor();
    assert_eq!(anchor.len(), 1);
    let anchored = verify::verify_anchored(&db, Some(&keys), &anchor)
        .await
        .expect("verify");
    assert!(
        anchored.is_whole(),
        "{:?} {:?}",
        anchored.findings,
        anchored.unanchored
    );
    db.batch_execute(
        "DELETE FROM popgate.audit_events; DELETE FROM popgate.audit_checkpoints; DELETE FROM popgate.shipper_watermarks",
    )
    .await
    .expect("empty");
    let report = verify::verify(&db, Some(&keys)).await.expect("verify");
    assert!(!report.is_whole());
    assert!(
        report.findings.iter().any(|f| f.what.contains("emptied log")),
        "{:?}",
        report.findings
    );
    let report = verify::verify_anchored(&db, Some(&keys), &anchor)
        .await
        .expect("verify");
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.instance == "test-1" && f.what.contains("missing tail")),
        "{:?}",
        report.findings
    );
    // An anchor with a forged signature is no anchor.
    let mut forged = anchor[0].clone();
    forged.seq += 1;
    let report = verify::verify_anchored(&db, Some(&keys), &[forged])
        .await
        .expect("verify");
    assert!(
        report.findings.iter().any(|f| f.what.contains("forged anchor")),
        "{:?}",
        report.findings
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_that_cannot_be_written_releases_nothing_and_recovers() {
    let fail = Arc::new(AtomicBool::new(false));
    let options = popgate::gateway::StartOptions {
        journal_fail_writes: Some(fail.clone()),
        ..Default::default()
    };
    let env = TestEnv::start_full(|_| {}, options).await;
    let id = env.citizen(true).personal_id().as_str().to_owned();
    assert_eq!(env.call("mot-cua", LOOKUP, &lookup(&id)).await.status, 200);

    fail.store(true, Ordering::SeqCst);
    let served = env.sim.served();
    let r = env.call("mot-cua", LOOKUP, &lookup(&id)).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["type"], "urn:popgate:problem:audit-unavailable");
    assert!(r.body.get("citizen").is_none());
    assert_eq!(
        env.sim.served(),
        served,
        "no question may reach the national database unrecorded"
    );
    let ops = format!("http://{}/readyz", env.gateway().ops_addr);
    let ready = reqwest_like_get(&ops).await;
    assert_eq!(ready.0, 503);
    assert_eq!(ready.1["journal"], "degraded");

    fail.store(false, Ordering::SeqCst);
    let r = env.call("mot-cua", LOOKUP, &lookup(&id)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(reqwest_like_get(&ops).await.0, 200);
    env.settle().await;
    let report = verify::verify(&env.admin_db().await, Some(&trusted(&env)))
        .await
        .expect("verify");
    assert!(report.is_whole(), "{:?}", report.findings);
    env.stop().await;
}

async fn reqwest_like_get(url: &str) -> (u16, Value) {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let resp = client.get(url.parse().expect("uri")).await.expect("get");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_outage_under_load_loses_and_duplicates_nothing() {
    let (pg, _pg_home) = common::external_pg().await;
    let env = Arc::new(
        TestEnv::start_with(|c| {
            common::use_warehouse(c, &pg);
            c.rate_limits.scale = 1000.0;
            // Small batches: the backlog spans many of them, so the shipper
            // reads batches ahead while the warehouse is down (the read-ahead
            // is dropped with the failed delivery) and after it returns.
            c.audit.ship_batch = 20;
        })
        .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..3u32 {
        let (env, stop) = (env.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let c = env.sim.population().citizen((i * 131) % common::POPULATION);
                let r = env
                    .call("mot-cua", LOOKUP, &lookup(c.personal_id().as_str()))
                    .await;
                assert!(r.status == 200 || r.status == 403, "{}: {}", r.status, r.body);
                ids.push(r.body["audit_id"].as_str().expect("audit_id").to_owned());
                i += 3;
            }
            ids
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut pg = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.stop();
        pg
    })
    .await
    .expect("stop pg");
    // Requests keep succeeding while the warehouse is away.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        env.gateway().journal.state.backlog() > 0,
        "events wait in the journal"
    );
    pg = tokio::task::spawn_blocking(move || {
        pg.restart().expect("restart");
        pg
    })
    .await
    .expect("restart pg");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut ids = Vec::new();
    for w in workers {
        ids.extend(w.await.expect("worker"));
    }
    assert!(ids.len() > 20, "{}", ids.len());
    env.settle().await;
    let db = popgate::warehouse::connect(&pg.admin_url()).await.expect("db");
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len());
    let outcomes: i64 = db
        .query_one(
            "SELECT count(*) FROM popgate.audit_events WHERE kind = 'outcome'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(outcomes as usize, ids.len(), "each answer's event exactly once");
    let stored: HashSet<String> = db
        .query("SELECT audit_id::text FROM popgate.audit_events", &[])
        .await
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(ids.iter().all(|id| stored.contains(id)));
    let report = verify::verify(&db, Some(&trusted(&env))).await.expect("verify");
    assert!(report.is_whole(), "{:?}", report.findings);
    match Arc::try_unwrap(env) {
        Ok(env) => env.stop().await,
        Err(_) => panic!("environment still shared"),
    }
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_warehouse_records_are_purged_and_the_purge_is_audited() {
    let env = TestEnv::start_with(|c| c.audit.purge_interval = Duration::from_secs(1)).await;
    let db = env.admin_db().await;
    db.execute(
        "INSERT INTO popgate.citizen_records (audit_id, citizen_key, app_id, purpose, policy_version, released_at, released_month, fields, retain_until)
         VALUES (gen_random_uuid(), 'k', 'mot-cua', 'administrative-procedure', 1, now() - interval '6 years', date_trunc('month', now() - interval '6 years')::date, '{}', now() - interval '1 day'),
                (gen_random_uuid(), 'k', 'mot-cua', 'administrative-procedure', 1, now(), date_trunc('month', now())::date, '{}', now() + interval '5 years')",
        &[],
    )
    .await
    .expect("insert");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = db
            .query_one("SELECT count(*) FROM popgate.citizen_records", &[])
            .await
            .expect("count")
            .get(0);
        if left == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "expired record not purged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The purge's event follows its DELETE (and the partition upkeep).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let row = loop {
        env.settle().await;
        let row = db
            .query_opt(
                "SELECT details->>'deleted_records' FROM popgate.audit_events WHERE kind = 'purge'",
                &[],
            )
            .await
            .expect("purge event");
        if let Some(row) = row {
            break row;
        }
        assert!(std::time::Instant::now() < deadline, "the purge was not audited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("1"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_backlog_limit_the_gateway_fails_closed_until_the_warehouse_returns() {
    let (pg, _pg_home) = common::external_pg().await;
    let env = TestEnv::start_with(|c| {
        common::use_warehouse(c, &pg);
        c.audit.max_backlog_events = 6;
    })
    .await;
    let id = env.citizen(true).personal_id().as_str().to_owned();
    assert_eq!(env.call("mot-cua", LOOKUP, &lookup(&id)).await.status, 200);
    env.settle().await;
    let mut pg = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.stop();
        pg
    })
    .await
    .expect("stop");
    // Each lookup journals an intent and an outcome: three fit, then no more.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(env.call("mot-cua", LOOKUP, &lookup(&id)).await.status);
    }
    assert_eq!(
        statuses,
        vec![200, 200, 200, 503, 503],
        "fail closed past the backlog limit"
    );
    let r = env.call("mot-cua", LOOKUP, &lookup(&id)).await;
    assert_eq!(r.body["type"], "urn:popgate:problem:audit-unavailable");
    pg = tokio::task::spawn_blocking(move || {
        pg.restart().expect("restart");
        pg
    })
    .await
    .expect("restart");
    env.settle().await;
    assert_eq!(env.call("mot-cua", LOOKUP, &lookup(&id)).await.status, 200);
    env.stop().await;
    drop(pg);
}
