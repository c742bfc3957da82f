//! The admin and audit consoles: the policy lifecycle across two running
//! instances, precise refusal of invalid proposals, search/export/report
//! over events from real requests, stable pagination, and the role matrix.

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

async fn auditor(env: &TestEnv, path: &str, body: Option<Value>) -> common::TestResponse {
    let body = body.map(|b| b.to_string());
    env.call_as("audit-cli", "inspector-1", "auditor", path, body.as_deref())
        .await
}

async fn wait_for_version(env: &TestEnv, version: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while env.gateway().policy.version() != version {
        assert!(
            std::time::Instant::now() < deadline,
            "instance did not switch to version {version}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_lifecycle_with_four_eyes_across_two_instances() {
    // Each instance signs the versions it activates; each trusts the
    // other's key (`audit.trusted_keys`, re-read when a new key appears).
    let keys = tempfile::tempdir().expect("tempdir");
    let (a_trusts, b_trusts) = (keys.path().join("a.json"), keys.path().join("b.json"));
    std::fs::write(&a_trusts, "{}").expect("write");
    let trusts = a_trusts.clone();
    let a = TestEnv::start_with(move |c| c.audit.trusted_keys = Some(trusts)).await;
    let key_of = |env: &TestEnv| {
        popgate::audit::checkpoint::Signer::from_file(&env.pki.layout.audit_signing_key())
            .expect("key")
            .public_key()
    };
    std::fs::write(&b_trusts, json!({"test-1": [key_of(&a)]}).to_string()).expect("write");
    let (url, admin_url) = (
        a.gateway().warehouse_url.clone(),
        a.gateway().warehouse_admin_url.clone(),
    );
    let trusts = b_trusts.clone();
    let b = TestEnv::start_with(move |c| {
        c.warehouse.url = Some(url.clone());
        c.warehouse.admin_url = Some(admin_url.clone());
        c.gateway.instance_id = "test-2".into();
        c.audit.trusted_keys = Some(trusts);
    })
    .await;
    std::fs::write(&a_trusts, json!({"test-2": [key_of(&b)]}).to_string()).expect("write");
    assert_eq!(b.gateway().policy.version(), 1);

    let listed = admin(&a, "admin-an", "/admin/v1/policies", None).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.body["active_version"], 1);
    let yte = listed.body["files"]["apps/y-te.toml"]
        .as_str()
        .expect("y-te")
        .to_owned();

    // Admin An proposes to stop releasing the blood type to the health app.
    let proposal = json!({ "reason": "Nhóm máu chỉ cấp khi cấp cứu", "files": { "apps/y-te.toml": yte.replace("  \"blood_type\",\n", "") } });
    let r = admin(&a, "admin-an", "/admin/v1/policies/proposals", Some(proposal)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.body["version"].as_u64().expect("version");
    assert_eq!(v, 2);
    // Nothing changes before approval.
    assert_eq!(a.gateway().policy.version(), 1);
    // An cannot approve An's own proposal.
    let r = admin(
        &a,
        "admin-an",
        &format!("/admin/v1/policies/proposals/{v}/approve"),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body["detail"]
        .as_str()
        .unwrap_or("")
        .contains("another policy admin"));
    // The diff shows the change grant by grant.
    let r = admin(
        &a,
        "admin-binh",
        &format!("/admin/v1/policies/versions/{v}/diff?against=1"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let apps = r.body["apps"].as_array().expect("apps");
    assert_eq!(apps.len(), 1, "{}", r.body);
    assert_eq!(apps[0]["app"], "y-te");
    assert_eq!(
        apps[0]["grants"][0]["changes"]["fields_removed"],
        json!(["blood_type"])
    );
    // Binh approves: both instances switch.
    let r = admin(
        &a,
        "admin-binh",
        &format!("/admin/v1/policies/proposals/{v}/approve"),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for_version(&a, 2).await;
    wait_for_version(&b, 2).await;
    let citizen = b.citizen(true);
    let body =
        json!({"personal_id": citizen.personal_id().as_str(), "purpose": "health-insurance"}).to_string();
    let r = b.call("y-te", LOOKUP, &body).await;
    assert_eq!((r.status, r.body["policy_version"].as_u64()), (200, Some(2)));
    assert!(r.body["citizen"].get("blood_type").is_none());
    // Approving twice is a conflict.
    let r = admin(
        &a,
        "admin-binh",
        &format!("/admin/v1/policies/proposals/{v}/approve"),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 409);

    // Rollback to version 1 proposes version 3, a copy of 1: nothing changes
    // until a second admin approves it, then both instances follow.
    let r = admin(
        &b,
        "admin-an",
        "/admin/v1/policies/rollback",
        Some(json!({"version": 1, "reason": "khôi phục"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        (r.body["version"].as_u64(), r.body["state"].as_str()),
        (Some(3), Some("proposed"))
    );
    assert_eq!(r.body["copy_of"], 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        (a.gateway().policy.version(), b.gateway().policy.version()),
        (2, 2)
    );
    let r = admin(
        &b,
        "admin-an",
        "/admin/v1/policies/proposals/3/approve",
        Some(json!({})),
    )
    .await;
    assert_eq!(
        r.status, 403,
        "the author of a rollback cannot approve it: {}",
        r.body
    );
    let r = admin(
        &b,
        "admin-binh",
        "/admin/v1/policies/proposals/3/approve",
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for_version(&a, 3).await;
    wait_for_version(&b, 3).await;
    let r = b.call("y-te", LOOKUP, &body).await;
    assert!(r.body["citizen"].get("blood_type").is_some(), "{}", r.body);

    // A rejected proposal never becomes active.
    let p = json!({ "reason": "thử", "delete": ["apps/dia-chi-so.toml"] });
    let r = admin(&a, "admin-an", "/admin/v1/policies/proposals", Some(p)).await;
    let v4 = r.body["version"].as_u64().expect("version");
    let r = admin(
        &a,
        "admin-binh",
        &format!("/admin/v1/policies/proposals/{v4}/reject"),
        Some(json!({"reason": "không cần"})),
    )
    .await;
    assert_eq!(r.status, 200);
    let listed = admin(&a, "admin-an", "/admin/v1/policies", None).await;
    let states: Vec<(u64, String)> = listed.body["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap_or(0),
                v["state"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![
            (4, "rejected".into()),
            (3, "active".into()),
            (2, "superseded".into()),
            (1, "superseded".into())
        ]
    );
    let r = admin(
        &a,
        "admin-binh",
        &format!("/admin/v1/policies/proposals/{v4}/approve"),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 409);

    // Every admin action is an audit event with its facts.
    a.settle().await;
    let db = a.admin_db().await;
    let rows = db
        .query(
            "SELECT operation, decision, details FROM popgate.audit_events WHERE kind = 'admin' AND operation LIKE 'admin.%' ORDER BY ts",
            &[],
        )
        .await
        .expect("events");
    let ops: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(ops.contains(&("admin.propose".into(), "granted".into())));
    assert!(
        ops.contains(&("admin.approve".into(), "denied".into())),
        "the refused self-approval is recorded"
    );
    assert!(ops.contains(&("admin.approve".into(), "granted".into())));
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_proposals_get_422_with_exact_problems_and_simulate_previews() {
    let env = TestEnv::start().await;
    let bad = "id = \"y-te\"\nname = \"Y tế\"\ncertificate_uri = \"urn:popgate:app:y-te\"\n\n[[grant]]\noperations = [\"lookup\"]\nroles = [\"officer\"]\npurpose = \"health-insurance\"\nfields = [\"blood_typo\"]\njurisdiction = \"province\"\n";
    let r = admin(
        &env,
        "admin-an",
        "/admin/v1/policies/proposals",
        Some(json!({"reason": "x", "files": {"apps/y-te.toml": bad}})),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(
        r.body["problems"],
        json!(["apps/y-te.toml:9:11: unknown field 'blood_typo'"])
    );
    let r = admin(
        &env,
        "admin-an",
        "/admin/v1/policies/proposals",
        Some(json!({"reason": "x", "files": {"../etc/passwd": ""}})),
    )
    .await;
    assert_eq!(r.status, 400);
    let r = admin(
        &env,
        "admin-an",
        "/admin/v1/policies/proposals",
        Some(json!({"reason": "", "files": {}})),
    )
    .await;
    assert_eq!(r.status, 400);
    let r = admin(
        &env,
        "admin-an",
        "/admin/v1/policies/proposals",
        Some(json!({"reason": "x", "delete": ["fields.toml"]})),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);

    let record = env.citizen(true).to_c06().clone();
    let sim = json!({"app": "y-te", "role": "officer", "operation": "lookup", "purpose": "health-insurance", "record": record});
    let r = admin(&env, "admin-an", "/admin/v1/policies/simulate", Some(sim)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["decision"], "granted");
    assert!(r.body["released"]["blood_type"].is_string());
    assert!(r.body["released"].get("religion").is_none());
    let sim = json!({"app": "y-te", "role": "officer", "operation": "household", "purpose": "health-insurance", "record": {}});
    let r = admin(&env, "admin-an", "/admin/v1/policies/simulate", Some(sim)).await;
    assert_eq!(r.body["decision"], "denied");

    // A malformed body is told what the body of *this* call takes.
    let r = admin(
        &env,
        "admin-an",
        "/admin/v1/policies/rollback",
        Some(json!({"version": 1})),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let detail = r.body["detail"].as_str().expect("detail");
    assert!(detail.contains("missing field `reason`"), "{detail}");
    assert!(detail.contains("version (a number) and reason"), "{detail}");
    assert!(!detail.contains("personal_id"), "{detail}");
    let r = auditor(&env, "/audit/v1/events/search", Some(json!({"limit": "5"}))).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let detail = r.body["detail"].as_str().expect("detail");
    assert!(detail.contains("limit (a number)"), "{detail}");
    assert!(!detail.contains("all values are JSON strings"), "{detail}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditors_search_export_and_answer_a_citizen() {
    let env = TestEnv::start().await;
    let citizen = env.citizen(true);
    let id = citizen.personal_id().as_str().to_owned();
    let lookup =
        json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000901"})
            .to_string();
    let mut granted = Vec::new();
    for _ in 0..3 {
        let r = env.call("mot-cua", LOOKUP, &lookup).await;
        assert_eq!(r.status, 200);
        granted.push(r.body["audit_id"].as_str().expect("id").to_owned());
    }
    let health = json!({"personal_id": id, "purpose": "health-insurance"}).to_string();
    let r = env.call("y-te", LOOKUP, &health).await;
    granted.push(r.body["audit_id"].as_str().expect("id").to_owned());
    // Someone else's lookups and a refusal.
    let other = env.citizen(false);
    let r = env.call("mot-cua", LOOKUP, &json!({"personal_id": other.personal_id().as_str(), "purpose": "administrative-procedure", "case_ref": "HS-2026-000902"}).to_string()).await;
    assert_eq!(r.status, 403);
    env.settle().await;

    // Search by citizen: the pseudonym is computed server-side.
    let r = auditor(
        &env,
        "/audit/v1/events/search",
        Some(json!({"personal_id": id, "kind": "outcome"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let found: Vec<String> = r.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["audit_id"].as_str().unwrap_or("").to_owned())
        .collect();
    let mut expected = granted.clone();
    expected.reverse();
    assert_eq!(found, expected, "newest first");
    assert!(!r.body.to_string().contains(&id), "no personal ID in the answer");

    // One event by id, with its chain hashes.
    let r = auditor(&env, &format!("/audit/v1/events/{}", granted[0]), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["case_ref"], "HS-2026-000901");
    assert_eq!(r.body["hash"].as_str().map(str::len), Some(64));

    // The citizen's report: apps, purposes, fields, labels in Vietnamese; no officer.
    let token = env.token_with("audit-cli", "inspector-1", &["auditor"], None);
    let r = env
        .client("audit-cli")
        .post(
            &env.url("/audit/v1/citizens/accesses"),
            Some(&token),
            &json!({"personal_id": id}).to_string(),
        )
        .await
        .expect("report");
    assert_eq!(r.body["count"], 4, "{}", r.body);
    let first = &r.body["accesses"][0];
    assert_eq!(first["app"], "y-te");
    assert!(first.get("officer_id").is_none() && !r.body.to_string().contains("officer-1"));
    let (status, headers, text) = env
        .client("audit-cli")
        .post_raw(
            &env.url("/audit/v1/citizens/accesses"),
            &token,
            &json!({"personal_id": id}).to_string(),
            &[("accept-language", "vi")],
        )
        .await;
    assert_eq!(status, 200, "{headers:?}");
    let vi: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        vi["accesses"][0]["purpose_label"],
        "Khám chữa bệnh, bảo hiểm y tế"
    );
    assert_eq!(vi["accesses"][3]["fields"][0]["label"], "Số định danh cá nhân");

    // Export as CSV and JSON Lines: the same events.
    let filter = json!({"app": "mot-cua"}).to_string();
    let (status, headers, csv) = env
        .client("audit-cli")
        .post_raw(
            &env.url("/audit/v1/events/export"),
            &token,
            &filter,
            &[("accept", "text/csv")],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/csv; charset=utf-8");
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("ts,audit_id,"));
    assert!(
        lines[0].ends_with(
            ",case_ref,decision,http_status,citizen_key,fields,policy_version,reason,legal_basis,roles"
        ),
        "{}",
        lines[0]
    );
    assert!(
        csv.contains("HS-2026-000901")
            && csv.contains("Nghị định 104/2022/NĐ-CP")
            && csv.contains(",citizen"),
        "{csv}"
    );
    // Searched by the case reference the accesses served.
    let by_case = auditor(
        &env,
        "/audit/v1/events/search",
        Some(json!({"case_ref": "HS-2026-000901", "kind": "outcome"})),
    )
    .await;
    assert_eq!(
        by_case.body["events"].as_array().map(Vec::len),
        Some(3),
        "{}",
        by_case.body
    );
    let none = auditor(
        &env,
        "/audit/v1/events/search",
        Some(json!({"case_ref": "HS-2026-999999"})),
    )
    .await;
    assert_eq!(
        none.body["events"].as_array().map(Vec::len),
        Some(0),
        "{}",
        none.body
    );
    let (_, _, jsonl) = env
        .client("audit-cli")
        .post_raw(&env.url("/audit/v1/events/export"), &token, &filter, &[])
        .await;
    let rows: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(rows.len(), lines.len() - 1);
    assert!(rows.iter().all(|r| r["app_id"] == "mot-cua"));
    // mot-cua: 3 granted + 1 refused outcomes and 4 intents.
    assert_eq!(rows.len(), 8, "{jsonl}");

    // Verify over the API.
    let r = auditor(&env, "/audit/v1/verify", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["whole"], true, "{}", r.body);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_is_stable_while_events_keep_arriving() {
    let env = TestEnv::start_with(|c| c.rate_limits.scale = 1000.0).await;
    let p = env.sim.population();
    for i in 0..25u32 {
        let c = p.citizen(i * 11);
        env.call(
            "y-te",
            LOOKUP,
            &json!({"personal_id": c.personal_id().as_str(), "purpose": "health-insurance"}).to_string(),
        )
        .await;
    }
    env.settle().await;
    let filter = json!({"app": "y-te", "kind": "outcome", "limit": 7});
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut body = filter.clone();
        if let Some(c) = &cursor {
            body["cursor"] = json!(c);
        }
        let r = auditor(&env, "/audit/v1/events/search", Some(body)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        seen.extend(
            r.body["events"]
                .as_array()
                .expect("events")
                .iter()
                .map(|e| e["audit_id"].as_str().unwrap_or("").to_owned()),
        );
        pages += 1;
        // New events arrive between pages; they are newer than the cursor and never shift it.
        for i in 0..3u32 {
            let c = p.citizen(5000 + pages * 10 + i);
            env.call(
                "y-te",
                LOOKUP,
                &json!({"personal_id": c.personal_id().as_str(), "purpose": "health-insurance"}).to_string(),
            )
            .await;
        }
        env.settle().await;
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 25, "each of the first 25 events exactly once");
    let unique: std::collections::HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), 25);
    let r = auditor(
        &env,
        "/audit/v1/events/search",
        Some(json!({"cursor": "garbage"})),
    )
    .await;
    assert_eq!(r.status, 400);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_matrix_separates_duties_and_audits_each_refusal() {
    let env = TestEnv::start().await;
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let lookup =
        json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000903"});
    let ops: Vec<(&str, Option<Value>, &str)> = vec![
        (LOOKUP, Some(lookup.clone()), "officer"),
        ("/admin/v1/policies", None, "policy-admin"),
        (
            "/admin/v1/policies/simulate",
            Some(
                json!({"app": "y-te", "role": "officer", "operation": "lookup", "purpose": "health-insurance", "record": {}}),
            ),
            "policy-admin",
        ),
        ("/audit/v1/events/search", Some(json!({})), "auditor"),
        (
            "/audit/v1/citizens/accesses",
            Some(json!({"personal_id": id})),
            "auditor",
        ),
        ("/audit/v1/verify", None, "auditor"),
    ];
    let combos = [
        ("mot-cua", "officer"),
        ("admin-cli", "policy-admin"),
        ("audit-cli", "auditor"),
        ("mot-cua", "policy-admin"),
        ("mot-cua", "auditor"),
        ("admin-cli", "auditor"),
        ("audit-cli", "policy-admin"),
        ("admin-cli", "officer"),
        ("audit-cli", "officer"),
    ];
    let mut refused = 0;
    for (app, role) in combos {
        for (path, body, needs) in &ops {
            let body = body.as_ref().map(|b| b.to_string());
            let r = env.call_as(app, "person-1", role, path, body.as_deref()).await;
            let home_app = match *needs {
                "officer" => "mot-cua",
                "policy-admin" => "admin-cli",
                _ => "audit-cli",
            };
            if role == *needs && app == home_app {
                assert_eq!(r.status, 200, "{app}/{role} {path}: {}", r.body);
            } else {
                assert_eq!(r.status, 403, "{app}/{role} {path} must be refused: {}", r.body);
                assert!(r.body["audit_id"].is_string());
                refused += 1;
            }
        }
    }
    env.settle().await;
    let db = env.admin_db().await;
    let denied: i64 = db
        .query_one(
            "SELECT count(*) FROM popgate.audit_events WHERE decision = 'denied' AND http_status = 403",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(denied, refused, "each refusal is an audit event");
    env.stop().await;
}
