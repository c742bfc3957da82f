//! Four eyes that cannot be bypassed: a rollback is a proposal, a version
//! written into the database changes no answer, an emergency freeze by one
//! admin only narrows and is flagged, and a reviewer can replay what a
//! proposal would have done to the audited requests of a window.

mod common;

use std::time::Duration;

use common::TestEnv;
use serde_json::{json, Value};

const LOOKUP: &str = "/v1/citizens/lookup";

async fn admin(env: &TestEnv, who: &str, path: &str, body: Option<Value>) -> common::TestResponse {
    let body = body.map(|b| b.to_string());
    env.call_as("admin-cli", who, "policy-admin", path, body.as_deref())
        .await
}

/// The active version's text of `path`.
async fn active_file(env: &TestEnv, path: &str) -> String {
    let listed = admin(env, "admin-an", "/admin/v1/policies", None).await;
    listed.body["files"][path].as_str().expect("file").to_owned()
}

/// Admin An proposes y-te without the blood type; returns the version.
async fn propose_without_blood_type(env: &TestEnv) -> u64 {
    let yte = active_file(env, "apps/y-te.toml")
        .await
        .replace("  \"blood_type\",\n", "");
    let r = admin(
        env,
        "admin-an",
        "/admin/v1/policies/proposals",
        Some(json!({"reason": "nhóm máu chỉ khi cấp cứu", "files": {"apps/y-te.toml": yte}})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["version"].as_u64().expect("version")
}

async fn blood_type_released(env: &TestEnv) -> bool {
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let r = env
        .call(
            "y-te",
            LOOKUP,
            &json!({"personal_id": id, "purpose": "health-insurance"}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["citizen"].get("blood_type").is_some()
}

fn trusted(env: &TestEnv) -> popgate::audit::verify::TrustedKeys {
    let signer =
        popgate::audit::checkpoint::Signer::from_file(&env.pki.layout.audit_signing_key()).expect("key");
    [("test-1".to_owned(), vec![signer.public_key()])]
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_is_a_proposal_and_a_rejected_version_cannot_come_back() {
    let env = TestEnv::start().await;
    let v2 = propose_without_blood_type(&env).await;
    let r = admin(
        &env,
        "admin-binh",
        &format!("/admin/v1/policies/proposals/{v2}/approve"),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!blood_type_released(&env).await);

    // A proposal the second admin rejected can never be rolled back to.
    let p = json!({"reason": "thêm tôn giáo", "delete": ["apps/dia-chi-so.toml"]});
    let v3 = admin(&env, "admin-an", "/admin/v1/policies/proposals", Some(p))
        .await
        .body["version"]
        .as_u64()
        .expect("version");
    let r = admin(
        &env,
        "admin-binh",
        &format!("/admin/v1/policies/proposals/{v3}/reject"),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin(
        &env,
        "admin-an",
        "/admin/v1/policies/rollback",
        Some(json!({"version": v3, "reason": "x"})),
    )
    .await;
    assert_eq!(r.status, 409, "rollback to a rejected version: {}", r.body);
    assert!(
        r.body["detail"].as_str().unwrap_or("").contains("never active"),
        "{}",
        r.body
    );

    // One admin's rollback to version 1 changes nothing until a second
    // admin approves it.
    let r = admin(
        &env,
        "admin-an",
        "/admin/v1/policies/rollback",
        Some(json!({"version": 1, "reason": "khôi phục"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["state"], "proposed");
    let v4 = r.body["version"].as_u64().expect("version");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.gateway().policy.version(), v2);
    assert!(
        !blood_type_released(&env).await,
        "a single admin's rollback took effect"
    );
    let r = admin(
        &env,
        "admin-an",
        &format!("/admin/v1/policies/proposals/{v4}/approve"),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = admin(
        &env,
        "admin-binh",
        &format!("/admin/v1/policies/proposals/{v4}/approve"),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(env.gateway().policy.version(), v4);
    assert!(blood_type_released(&env).await);
    // The version says what it is, in full.
    let r = admin(
        &env,
        "admin-binh",
        &format!("/admin/v1/policies/versions/{v4}"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.body["copy_of"].as_u64(), r.body["approver"].as_str()),
        (Some(1), Some("admin-binh"))
    );
    assert_eq!(r.body["signature_valid"], true, "{}", r.body);
    assert!(r.body["files"]["apps/y-te.toml"]
        .as_str()
        .is_some_and(|t| t.contains("blood_type")));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_written_into_the_database_changes_no_answer_and_is_reported() {
    let env = TestEnv::start().await;
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let ask = json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000123"})
        .to_string();
    let r = env.call("mot-cua", LOOKUP, &ask).await;
    assert!(r.body["citizen"].get("religion").is_none());

    // The database superuser makes a version of their own active: religion
    // and ethnicity for the one-stop-shop, "approved" by a name of theirs.
    let forged = active_file(&env, "apps/mot-cua.toml").await.replace(
        "  \"marital_status\",\n",
        "  \"marital_status\",\n  \"religion\",\n  \"ethnicity\",\n",
    );
    let mut files: serde_json::Map<String, Value> =
        admin(&env, "admin-an", "/admin/v1/policies", None).await.body["files"]
            .as_object()
            .expect("files")
            .clone();
    files.insert("apps/mot-cua.toml".into(), Value::String(forged));
    let db = env.admin_db().await;
    db.batch_execute("UPDATE popgate.policy_versions SET state = 'superseded' WHERE state = 'active'")
        .await
        .expect("supersede");
    db.execute(
        "INSERT INTO popgate.policy_versions (version, state, files, author, approver, reason, activated_at)
         VALUES (99, 'active', $1, 'admin-an', 'admin-binh', 'routine', now())",
        &[&Value::Object(files)],
    )
    .await
    .expect("forged row");
    db.batch_execute("NOTIFY popgate_policy, '99'")
        .await
        .expect("notify");
    tokio::time::sleep(Duration::from_secs(6)).await;

    assert_eq!(
        env.gateway().policy.version(),
        1,
        "the forged version was applied"
    );
    let r = env.call("mot-cua", LOOKUP, &ask).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["citizen"].get("religion").is_none(), "{}", r.body);
    assert_eq!(r.body["policy_version"], 1);
    // It is reported: readiness, metrics, the version's own page, verify.
    let ready: Value = serde_json::from_str(&env.ops_get("/readyz").await.1).expect("json");
    assert!(
        ready["policy"]
            .as_str()
            .is_some_and(|p| p.contains("refused version 99")),
        "{ready}"
    );
    assert!(env
        .ops_get("/metrics")
        .await
        .1
        .contains("popgate_policy_versions_refused 1"));
    let r = admin(&env, "admin-binh", "/admin/v1/policies/versions/99", None).await;
    assert_eq!(r.body["signature_valid"], false, "{}", r.body);
    // ... and an alert for the auditors.
    let alerts = env
        .call_as(
            "audit-cli",
            "inspector-1",
            "auditor",
            "/audit/v1/alerts?rule=policy-signature",
            None,
        )
        .await;
    let list = alerts.body["alerts"].as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 1, "{}", alerts.body);
    assert!(
        list[0]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("version 99")),
        "{}",
        alerts.body
    );
    let report = popgate::audit::verify::verify(&db, Some(&trusted(&env)))
        .await
        .expect("verify");
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.instance == "policy" && f.seq == 99 && f.what.contains("not signed")),
        "{:?}",
        report.findings
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emergency_freeze_by_one_admin_narrows_at_once_and_is_flagged() {
    let env = TestEnv::start_with(|c| c.gateway.freeze_confirm_within = Duration::from_secs(1)).await;
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let ask = json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000123"})
        .to_string();
    assert_eq!(env.call("mot-cua", LOOKUP, &ask).await.status, 200);

    // One admin suspends the one-stop-shop's administrative-procedure grant.
    let r = admin(
        &env,
        "admin-an",
        "/admin/v1/policies/freeze",
        Some(json!({"app": "mot-cua", "purpose": "administrative-procedure", "reason": "nghi lộ chứng thư"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["emergency"], true);
    let frozen = r.body["version"].as_u64().expect("version");
    let r = env.call("mot-cua", LOOKUP, &ask).await;
    assert_eq!(r.status, 403, "the freeze did not narrow at once: {}", r.body);
    assert!(blood_type_released(&env).await, "other apps are untouched");
    let listed = admin(&env, "admin-binh", "/admin/v1/policies", None).await;
    let entry = listed.body["versions"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["version"] == frozen))
        .cloned()
        .expect("listed");
    assert_eq!(
        (entry["emergency"].as_bool(), entry["state"].as_str()),
        (Some(true), Some("active")),
        "{entry}"
    );
    assert!(entry["expires_at"].is_string(), "{entry}");

    // Nobody confirms: it ends by itself and the version before is back.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while env.gateway().policy.version() == frozen {
        assert!(
            std::time::Instant::now() < deadline,
            "the unconfirmed freeze never ended"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(env.gateway().policy.version(), 1);
    assert_eq!(env.call("mot-cua", LOOKUP, &ask).await.status, 200);

    // A freeze a second admin confirms stays (its author may not confirm it).
    let r = admin(
        &env,
        "admin-an",
        "/admin/v1/policies/freeze",
        Some(json!({"app": "y-te", "reason": "sự cố"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let frozen = r.body["version"].as_u64().expect("version");
    let confirm = format!("/admin/v1/policies/versions/{frozen}/confirm");
    assert_eq!(
        admin(&env, "admin-an", &confirm, Some(json!({}))).await.status,
        403
    );
    let r = admin(&env, "admin-binh", &confirm, Some(json!({}))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(env.gateway().policy.version(), frozen, "a confirmed freeze ended");
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let r = env
        .call(
            "y-te",
            LOOKUP,
            &json!({"personal_id": id, "purpose": "health-insurance"}).to_string(),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);

    // The freeze and its confirmation are audit events, flagged.
    env.settle().await;
    let db = env.admin_db().await;
    let flagged: i64 = db
        .query_one(
            "SELECT count(*) FROM popgate.audit_events WHERE operation IN ('admin.freeze', 'admin.confirm-freeze')
             AND decision = 'granted' AND details->>'emergency' = 'true'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(flagged, 3);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_shows_what_a_proposal_would_have_done_to_the_audited_requests() {
    let env = TestEnv::start().await;
    let started = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    for _ in 0..3 {
        assert!(blood_type_released(&env).await);
    }
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let ask = json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000123"})
        .to_string();
    for _ in 0..2 {
        assert_eq!(env.call("mot-cua", LOOKUP, &ask).await.status, 200);
    }
    env.settle().await;
    let rfc = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .expect("time")
    };
    let window = json!({"from": rfc(started), "to": rfc(time::OffsetDateTime::now_utc() + time::Duration::minutes(1))});

    let v2 = propose_without_blood_type(&env).await;
    let r = admin(
        &env,
        "admin-binh",
        "/admin/v1/policies/simulate",
        Some(json!({"version": v2, "replay": window})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["replayed"], 5, "{}", r.body);
    let row = |app: &str| {
        r.body["by_app_and_purpose"]
            .as_array()
            .and_then(|rows| rows.iter().find(|x| x["app"] == app))
            .cloned()
            .unwrap_or_else(|| panic!("no row for {app}: {}", r.body))
    };
    let yte = row("y-te");
    assert_eq!(yte["requests"], 3);
    assert_eq!(yte["would_lose"], json!({"blood_type": 3}), "{yte}");
    assert_eq!(yte["would_be_denied"], 0);
    let motcua = row("mot-cua");
    assert_eq!(
        (motcua["would_lose"].clone(), motcua["would_be_denied"].clone()),
        (json!({}), json!(0))
    );

    // A proposal that removes the one-stop-shop would deny its requests.
    let p = json!({"reason": "ngừng", "delete": ["apps/mot-cua.toml"]});
    let v3 = admin(&env, "admin-an", "/admin/v1/policies/proposals", Some(p))
        .await
        .body["version"]
        .as_u64()
        .expect("version");
    let r = admin(
        &env,
        "admin-binh",
        "/admin/v1/policies/simulate",
        Some(json!({"version": v3, "replay": window})),
    )
    .await;
    let motcua = r.body["by_app_and_purpose"]
        .as_array()
        .and_then(|rows| rows.iter().find(|x| x["app"] == "mot-cua"))
        .cloned()
        .expect("row");
    assert_eq!(motcua["would_be_denied"], 2, "{motcua}");
    // Nothing of this changed the active version.
    assert_eq!(env.gateway().policy.version(), 1);
    env.stop().await;
}
