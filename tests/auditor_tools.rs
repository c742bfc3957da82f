//! The auditor's tools, black-box over real HTTPS and a real PostgreSQL:
//! alert rules on crafted bursts and on ordinary traffic, disclosure holds
//! under an injected clock, evidence bundles verified offline by the
//! binary, and a citizen report that pages through 2,000 accesses and
//! prints as a Vietnamese letter.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestEnv;
use popgate::audit::alerts::{Engine, Rules};
use popgate::warehouse::Warehouse;
use serde_json::{json, Value};
use unicode_normalization::UnicodeNormalization;

const LOOKUP: &str = "/v1/citizens/lookup";

fn lookup(id: &str, case: &str) -> String {
    json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": case}).to_string()
}

/// Distinct citizens living in (or outside) the province.
fn citizens(env: &TestEnv, inside: bool, n: usize) -> Vec<String> {
    let p = env.sim.population();
    (0..common::POPULATION)
        .map(|i| p.citizen(i))
        .filter(|c| (c.residence_province() == 79) == inside)
        .take(n)
        .map(|c| c.personal_id().as_str().to_owned())
        .collect()
}

async fn as_officer(env: &TestEnv, officer: &str, id: &str, case: &str) -> u16 {
    env.call_as("mot-cua", officer, "officer", LOOKUP, Some(&lookup(id, case)))
        .await
        .status
}

async fn auditor(env: &TestEnv, who: &str, path: &str, body: Option<Value>) -> common::TestResponse {
    let body = body.map(|b| b.to_string());
    env.call_as("audit-cli", who, "auditor", path, body.as_deref())
        .await
}

/// A rules engine of its own over the gateway's warehouse.
fn engine(env: &TestEnv, rules: &str) -> Engine {
    let file = env
        .dir
        .path()
        .join(format!("alerts-{}.toml", rand::random::<u32>()));
    std::fs::write(&file, rules).expect("rules file");
    let rules = Rules::load(&file).expect("rules");
    let warehouse = Warehouse::new(&env.gateway().warehouse_admin_url).expect("warehouse");
    Engine::new(rules, warehouse, Arc::default()).expect("engine")
}

/// An HTTPS endpoint of the security operations that requires the
/// province's client certificate (issued by the national CA in the dev
/// PKI) and collects what it is sent.
async fn webhook_receiver(
    listener: tokio::net::TcpListener,
    env: &TestEnv,
) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
    let layout = &env.pki.layout;
    let config = popgate::tls::mutual_server_config(&popgate::tls::MutualServerFiles {
        cert: &layout.sim_cert(),
        key: &layout.sim_key(),
        client_ca: &layout.national_ca_cert(),
        allow_tls12: false,
        alpn: &[b"http/1.1"],
        crls: Vec::new(),
    })
    .expect("tls");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    common::json_receiver(listener, Some(acceptor), "/alerts")
}

fn alerts_of<'a>(list: &'a Value, rule: &str) -> Vec<&'a Value> {
    list["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["rule"] == rule)
        .collect()
}

const TEST_RULES: &str = r#"
[distinct_citizens]
min_citizens = 12
factor = 3.0
[repeated_denials]
count = 4
within = "10m"
[case_spread]
citizens = 5
within = "1d"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_alert_rule_fires_on_a_crafted_burst_and_not_on_ordinary_traffic() {
    // The gateway runs no rules of its own here (it still raises its own
    // alerts and sends them on): this test drives the ticks itself, with
    // rules of its choosing.
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hook_url = format!(
        "https://127.0.0.1:{}/alerts",
        hook.local_addr().expect("addr").port()
    );
    let env = TestEnv::start_with(|c| {
        c.alerts.enabled = false;
        c.alerts.webhook_url = Some(hook_url.parse().expect("url"));
        c.alerts.webhook_ca = Some(c.upstream.ca.clone());
        c.rate_limits.scale = 100.0;
    })
    .await;
    let mut sent = webhook_receiver(hook, &env).await;
    let inside = citizens(&env, true, 40);
    let outside = citizens(&env, false, 6);
    let watched = inside[39].clone();
    let r = auditor(
        &env,
        "inspector-1",
        "/audit/v1/watchlist",
        Some(json!({"personal_id": watched, "reason": "bảo vệ nhân chứng"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);

    // Ordinary traffic: a few citizens, one refusal, one case per citizen.
    for (i, id) in inside[..3].iter().enumerate() {
        assert_eq!(
            as_officer(&env, "officer-1", id, &format!("HS-2026-00010{i}")).await,
            200
        );
    }
    assert_eq!(
        as_officer(&env, "officer-1", &outside[0], "HS-2026-000109").await,
        403
    );
    // Bursts: 15 distinct citizens in an hour; 4 refusals; one dossier for 6
    // citizens; a look-up of the watched citizen.
    for (i, id) in inside[3..18].iter().enumerate() {
        assert_eq!(
            as_officer(&env, "officer-burst", id, &format!("HS-2026-0002{i:02}")).await,
            200
        );
    }
    for id in &outside[1..5] {
        assert_eq!(
            as_officer(&env, "officer-denied", id, "HS-2026-000300").await,
            403
        );
    }
    for id in &inside[20..26] {
        assert_eq!(as_officer(&env, "officer-case", id, "HS-2026-000777").await, 200);
    }
    assert_eq!(
        as_officer(&env, "officer-watch", &watched, "HS-2026-000400").await,
        200
    );
    env.settle().await;

    let day = engine(&env, &format!("{TEST_RULES}[off_hours]\nstart = \"00:00\"\nend = \"24:00\"\ndays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\n"));
    assert!(day.tick().await.expect("tick") > 0);
    let list = auditor(&env, "inspector-1", "/audit/v1/alerts?limit=500", None).await;
    assert_eq!(list.status, 200, "{}", list.body);
    let body = &list.body;

    let distinct = alerts_of(body, "distinct-citizens");
    assert_eq!(distinct.len(), 1, "{body}");
    assert_eq!(distinct[0]["officer_id"], "officer-burst");
    assert_eq!(distinct[0]["audit_ids"].as_array().map(Vec::len), Some(15));
    let denials = alerts_of(body, "repeated-denials");
    assert_eq!(denials.len(), 1, "{body}");
    assert_eq!(denials[0]["officer_id"], "officer-denied");
    assert_eq!(denials[0]["audit_ids"].as_array().map(Vec::len), Some(4));
    let cases = alerts_of(body, "case-spread");
    assert_eq!(cases.len(), 1, "{body}");
    assert!(cases[0]["summary"]
        .as_str()
        .unwrap_or("")
        .contains("HS-2026-000777"));
    let watch = alerts_of(body, "watch-list");
    assert_eq!(watch.len(), 1, "{body}");
    assert_eq!(watch[0]["officer_id"], "officer-watch");
    assert!(
        alerts_of(body, "off-hours").is_empty(),
        "working hours all day: {body}"
    );
    // The ordinary officer raised nothing, and no alert carries citizen data.
    assert!(!body.to_string().contains("officer-1\""), "{body}");
    for id in inside.iter().chain(&outside) {
        assert!(!body.to_string().contains(id.as_str()));
    }

    // Read again (only the auditors' own requests are new): nothing twice.
    env.settle().await;
    day.tick().await.expect("tick");
    let again = auditor(&env, "inspector-1", "/audit/v1/alerts?limit=500", None).await;
    assert_eq!(
        again.body["alerts"].as_array().map(Vec::len),
        body["alerts"].as_array().map(Vec::len)
    );

    // Outside working hours (none at all): only the new access counts.
    assert_eq!(
        as_officer(&env, "officer-night", &inside[30], "HS-2026-000500").await,
        200
    );
    env.settle().await;
    let night = engine(
        &env,
        &format!("{TEST_RULES}[off_hours]\nstart = \"00:00\"\nend = \"00:00\"\n"),
    );
    night.tick().await.expect("tick");
    let list = auditor(&env, "inspector-1", "/audit/v1/alerts?rule=off-hours", None).await;
    let late = alerts_of(&list.body, "off-hours");
    assert_eq!(late.len(), 1, "{}", list.body);
    assert_eq!(late[0]["officer_id"], "officer-night");

    // A fork the shipper recorded.
    let db = env.admin_db().await;
    db.execute(
        "INSERT INTO popgate.audit_forks (instance_id, seq, warehouse_hash, journal_hash) VALUES ('test-9', 7, 'aa', 'bb')",
        &[],
    )
    .await
    .expect("fork");
    night.tick().await.expect("tick");
    let forks = auditor(&env, "inspector-1", "/audit/v1/alerts?rule=chain-fork", None).await;
    assert_eq!(alerts_of(&forks.body, "chain-fork").len(), 1, "{}", forks.body);

    // A failed verify is an alert of the gateway's own, counted in /metrics.
    db.batch_execute("SET session_replication_role = replica")
        .await
        .expect("replica");
    db.execute(
        "UPDATE popgate.audit_events SET purpose = 'emergency-response' WHERE instance_id = 'test-1' AND seq = 3",
        &[],
    )
    .await
    .expect("tamper");
    let v = auditor(&env, "inspector-1", "/audit/v1/verify", None).await;
    assert_eq!(v.body["whole"], false, "{}", v.body);
    let failed = auditor(&env, "inspector-1", "/audit/v1/alerts?rule=verify-failure", None).await;
    assert_eq!(
        alerts_of(&failed.body, "verify-failure").len(),
        1,
        "{}",
        failed.body
    );
    // The gateway sent it to the security operations' webhook, over mTLS.
    // Those the test's own engines raised went along (none was sent yet).
    let mut rules = std::collections::BTreeSet::new();
    while !rules.contains("verify-failure") {
        let got = tokio::time::timeout(Duration::from_secs(10), sent.recv())
            .await
            .expect("the webhook got the alerts")
            .expect("alert");
        assert_eq!(got["instance_id"], "test-1");
        rules.insert(got["alert"]["rule"].as_str().expect("rule").to_owned());
    }
    for rule in [
        "distinct-citizens",
        "repeated-denials",
        "case-spread",
        "watch-list",
        "off-hours",
        "chain-fork",
    ] {
        assert!(rules.contains(rule), "{rule} sent: {rules:?}");
    }
    let (_, metrics) = env.ops_get("/metrics").await;
    assert!(
        metrics.contains("popgate_alerts_total{rule=\"verify-failure\"} 1"),
        "{metrics}"
    );

    // Resolved with a note, once; the resolution is itself audited.
    let id = distinct[0]["id"].as_str().expect("id").to_owned();
    let path = format!("/audit/v1/alerts/{id}/resolve");
    let r = auditor(
        &env,
        "inspector-2",
        &path,
        Some(json!({"note": "đã xác minh: đợt cấp đổi hàng loạt"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["state"], "resolved");
    assert_eq!(r.body["resolved_by"], "inspector-2");
    assert_eq!(
        auditor(&env, "inspector-2", &path, Some(json!({"note": "again"})))
            .await
            .status,
        409
    );
    let open = auditor(
        &env,
        "inspector-1",
        "/audit/v1/alerts?rule=distinct-citizens&state=open",
        None,
    )
    .await;
    assert!(alerts_of(&open.body, "distinct-citizens").is_empty());
    env.settle().await;
    let events = auditor(
        &env,
        "inspector-1",
        "/audit/v1/events/search",
        Some(json!({"officer": "inspector-2", "kind": "admin"})),
    )
    .await;
    assert!(
        events.body["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["operation"] == "audit.alert-resolve"),
        "{}",
        events.body
    );
    // Bad filters are named.
    let bad = auditor(&env, "inspector-1", "/audit/v1/alerts?rule=nonsense", None).await;
    assert_eq!(bad.status, 400);
    assert!(bad.body["detail"]
        .as_str()
        .unwrap_or("")
        .contains("distinct-citizens"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_hides_a_case_from_the_report_until_its_date_and_never_from_search() {
    let clock = popgate::clock::Clock::default();
    let options = popgate::gateway::StartOptions {
        clock: clock.clone(),
        ..Default::default()
    };
    let env = TestEnv::start_full(|_| {}, options).await;
    let id = citizens(&env, true, 1).remove(0);
    assert_eq!(as_officer(&env, "officer-1", &id, "HS-2026-000111").await, 200);
    assert_eq!(as_officer(&env, "officer-1", &id, "HS-2026-000222").await, 200);
    env.settle().await;

    let today = clock.today();
    let until = (today + time::Duration::days(10)).to_string();
    let hold = json!({"case_ref": "HS-2026-000111", "until": until, "reason": "điều tra vụ án", "legal_basis": "Bộ luật Tố tụng hình sự 2015, Điều 88"});
    let r = auditor(&env, "inspector-1", "/audit/v1/holds", Some(hold)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["in_force"], true);
    let hold_id = r.body["id"].as_str().expect("id").to_owned();

    let held = report(&env, &id).await;
    assert_eq!(held["count"], 1, "{held}");
    assert_eq!(held["accesses"][0]["case_ref"], "HS-2026-000222");
    assert!(
        !held.to_string().contains("000111"),
        "no hint of the held case: {held}"
    );
    // Search and export still show both.
    let search = auditor(
        &env,
        "inspector-1",
        "/audit/v1/events/search",
        Some(json!({"personal_id": id, "kind": "outcome"})),
    )
    .await;
    let cases: Vec<&str> = search.body["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["case_ref"].as_str())
        .collect();
    assert!(
        cases.contains(&"HS-2026-000111") && cases.contains(&"HS-2026-000222"),
        "{cases:?}"
    );

    // After its date the access is reported again, by itself.
    clock.advance(Duration::from_secs(11 * 86_400));
    let after = report(&env, &id).await;
    assert_eq!(after["count"], 2, "{after}");

    // A hold longer than the limit is capped until a second auditor approves.
    let today = clock.today();
    let long = (today + time::Duration::days(200)).to_string();
    let r = auditor(
        &env,
        "inspector-1",
        "/audit/v1/holds",
        Some(json!({"app": "mot-cua", "purpose": "administrative-procedure", "until": long, "reason": "thanh tra chuyên đề", "legal_basis": "Luật Thanh tra 2022"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["needs_approval"], true);
    assert_eq!(
        r.body["in_force_until"],
        (today + time::Duration::days(90)).to_string()
    );
    let long_id = r.body["id"].as_str().expect("id").to_owned();
    let approve = format!("/audit/v1/holds/{long_id}/approve");
    assert_eq!(
        auditor(&env, "inspector-1", &approve, Some(json!({})))
            .await
            .status,
        403
    );
    let r = auditor(&env, "inspector-2", &approve, Some(json!({}))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["in_force_until"], long);
    assert_eq!(
        report(&env, &id).await["count"],
        0,
        "the app's whole purpose is held"
    );

    // Lifting ends it at once; the list says who did what.
    let r = auditor(
        &env,
        "inspector-2",
        &format!("/audit/v1/holds/{long_id}/lift"),
        Some(json!({"reason": "kết thúc thanh tra"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(report(&env, &id).await["count"], 2);
    let list = auditor(&env, "inspector-1", "/audit/v1/holds", None).await;
    assert_eq!(
        list.body["holds"].as_array().map(Vec::len),
        Some(2),
        "{}",
        list.body
    );
    // Bad input is named.
    let r = auditor(
        &env,
        "inspector-1",
        "/audit/v1/holds",
        Some(json!({"until": "2020-01-01", "reason": "x", "legal_basis": "y", "case_ref": "HS-2026-000111"})),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body["detail"].as_str().unwrap_or("").contains("after today"),
        "{}",
        r.body
    );
    let r = auditor(
        &env,
        "inspector-1",
        "/audit/v1/holds",
        Some(json!({"until": long, "reason": "x", "legal_basis": "y"})),
    )
    .await;
    assert_eq!(r.status, 400);
    // Each change is an audit event.
    env.settle().await;
    let events = auditor(
        &env,
        "inspector-1",
        "/audit/v1/events/search",
        Some(json!({"kind": "admin", "limit": 500})),
    )
    .await;
    let ops: Vec<&str> = events.body["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["operation"].as_str())
        .collect();
    for op in ["audit.hold-create", "audit.hold-approve", "audit.hold-lift"] {
        assert!(ops.contains(&op), "{op} in {ops:?}");
    }
    let _ = hold_id;
    env.stop().await;
}

async fn report(env: &TestEnv, id: &str) -> Value {
    auditor(
        env,
        "inspector-1",
        "/audit/v1/citizens/accesses",
        Some(json!({"personal_id": id})),
    )
    .await
    .body
}

fn verify_bundle(file: &std::path::Path, keys: &std::path::Path) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_popgate"))
        .args(["audit", "verify-bundle"])
        .arg(file)
        .arg("--trusted-keys")
        .arg(keys)
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_verifies_offline_after_the_gateway_stops_and_names_an_altered_event() {
    let env = TestEnv::start().await;
    for id in citizens(&env, true, 3) {
        assert_eq!(as_officer(&env, "officer-1", &id, "HS-2026-000333").await, 200);
        // Other traffic between them.
        assert_eq!(as_officer(&env, "officer-2", &id, "HS-2026-000444").await, 200);
    }
    env.settle().await;
    let r = auditor(
        &env,
        "inspector-1",
        "/audit/v1/evidence",
        Some(json!({"case_ref": "HS-2026-000333"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let bundle = r.body.clone();
    // Three intents and three outcomes.
    assert_eq!(bundle["matched"].as_array().map(Vec::len), Some(6), "{bundle}");
    let signer =
        popgate::audit::checkpoint::Signer::from_file(&env.pki.layout.audit_signing_key()).expect("key");
    let dir = tempfile::tempdir().expect("dir");
    let keys = dir.path().join("keys.json");
    std::fs::write(&keys, json!({"test-1": [signer.public_key()]}).to_string()).expect("keys");
    let file = dir.path().join("bundle.json");
    std::fs::write(&file, serde_json::to_vec(&bundle).expect("json")).expect("bundle");
    env.stop().await;

    // No gateway, no database.
    let (code, out) = verify_bundle(&file, &keys);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("bundle whole: 6 matching events"), "{out}");

    // One character of one event changed: that event is named.
    let mut altered = bundle.clone();
    let event = &mut altered["segments"][0]["events"][1];
    let seq = event["seq"].as_u64().expect("seq");
    let audit_id = event["audit_id"].as_str().expect("id").to_owned();
    let officer = event["officer_id"].as_str().expect("officer").to_owned();
    event["officer_id"] = json!(officer.replace('1', "7").replace('2', "8"));
    std::fs::write(&file, serde_json::to_vec(&altered).expect("json")).expect("bundle");
    let (code, out) = verify_bundle(&file, &keys);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("seq {seq} (audit id {audit_id}): altered")),
        "{out}"
    );

    // An event taken out is missing; a key not pinned is refused.
    let mut cut = bundle.clone();
    let events = cut["segments"][0]["events"].as_array_mut().expect("events");
    if events.len() > 2 {
        events.remove(1);
    }
    std::fs::write(&file, serde_json::to_vec(&cut).expect("json")).expect("bundle");
    let (code, out) = verify_bundle(&file, &keys);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("missing"), "{out}");
    std::fs::write(&file, serde_json::to_vec(&bundle).expect("json")).expect("bundle");
    let other = dir.path().join("other.json");
    let stranger = popgate::audit::checkpoint::Signer::generate().expect("key");
    std::fs::write(&other, json!({"test-1": [stranger.public_key()]}).to_string()).expect("keys");
    let (code, out) = verify_bundle(&file, &other);
    assert_eq!(code, 1, "{out}");
    // The policy versions in force travel with their signatures: files
    // changed, or a version signed by a key nobody trusts, are named.
    let mut policy = bundle.clone();
    let files = policy["policy_versions"][0]["files"]
        .as_object_mut()
        .expect("files");
    let first = files.keys().next().expect("a file").clone();
    files.insert(first, json!("# emptied"));
    std::fs::write(&file, serde_json::to_vec(&policy).expect("json")).expect("bundle");
    let (code, out) = verify_bundle(&file, &keys);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not match its files"), "{out}");
    let mut forged = bundle.clone();
    forged["policy_versions"][0]["public_key"] = json!(stranger.public_key());
    std::fs::write(&file, serde_json::to_vec(&forged).expect("json")).expect("bundle");
    let (code, out) = verify_bundle(&file, &keys);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not trusted for instance test-1"), "{out}");
    assert!(
        out.contains("not trusted") || out.contains("not signed by a trusted key"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_citizen_report_pages_through_2000_accesses_and_prints_a_vietnamese_letter() {
    let env = TestEnv::start_with(|c| c.rate_limits.scale = 1000.0).await;
    let id = citizens(&env, true, 1).remove(0);
    let env = Arc::new(env);
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let env = env.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..250 {
                let case = format!("HS-2026-{:06}", worker * 1000 + i);
                assert_eq!(
                    as_officer(&env, &format!("officer-{worker}"), &id, &case).await,
                    200
                );
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    env.settle().await;

    let mut seen = std::collections::HashSet::new();
    let mut body = json!({"personal_id": id, "limit": 500});
    let mut pages = 0;
    loop {
        let r = auditor(
            &env,
            "inspector-1",
            "/audit/v1/citizens/accesses",
            Some(body.clone()),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        pages += 1;
        for a in r.body["accesses"].as_array().expect("accesses") {
            assert!(a["time"].as_str().is_some_and(|t| t.ends_with("+07:00")), "{a}");
            assert!(a.get("officer_id").is_none());
            seen.insert(a["audit_id"].as_str().expect("id").to_owned());
        }
        match r.body["next_cursor"].as_str() {
            Some(c) => body["cursor"] = json!(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), 2000);
    assert!(pages >= 4);

    // The printable letter: every access, in Vietnamese, NFC, no officer.
    let token = env.token_with("audit-cli", "inspector-1", &["auditor"], None);
    let (status, headers, html) = env
        .client("audit-cli")
        .post_raw(
            &env.url("/audit/v1/citizens/accesses"),
            &token,
            &json!({"personal_id": id}).to_string(),
            &[("accept", "text/html")],
        )
        .await;
    assert_eq!(status, 200, "{html}");
    assert!(headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html")));
    assert_eq!(html.nfc().collect::<String>(), html, "the letter is NFC");
    for text in [
        "THÔNG BÁO",
        "Thành phố Hồ Chí Minh",
        "Giải quyết thủ tục hành chính",
        "Họ, chữ đệm và tên",
        "Luật Bảo vệ dữ liệu cá nhân",
        "Căn cứ pháp lý",
    ] {
        assert!(html.contains(text), "{text} in the letter");
    }
    assert_eq!(html.matches("<tr><td>").count(), 2000);
    assert!(!html.contains("officer-"), "never the officer");
    assert!(!html.contains(&id), "no personal ID in the letter");
    // `from` bounds it.
    let future = json!({"personal_id": id, "from": "2999-01-01T00:00:00+07:00"});
    let r = auditor(&env, "inspector-1", "/audit/v1/citizens/accesses", Some(future)).await;
    assert_eq!(r.body["count"], 0, "{}", r.body);
    let env = Arc::try_unwrap(env).ok().expect("one owner");
    env.stop().await;
}

/// The distinct-citizens and case-spread rules count each tick's new events
/// on top of what they counted before, and when another instance's engine
/// judged in between they read the hour (the case's window) again instead
/// of trusting their own count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_distinct_citizens_count_carries_over_ticks_and_instances() {
    let env = TestEnv::start_with(|c| {
        c.alerts.enabled = false;
        c.rate_limits.scale = 100.0;
    })
    .await;
    let people = citizens(&env, true, 15);
    // The case-spread rule at the distinct-citizens rule's 12.
    let rules = TEST_RULES.replace("citizens = 5", "citizens = 12");
    let (a, b) = (engine(&env, &rules), engine(&env, &rules));
    let mut asked = 0;
    let mut ask = |n: usize| {
        let ids = people[asked..asked + n].to_vec();
        asked += n;
        let env = &env;
        async move {
            for id in ids {
                assert_eq!(
                    as_officer(env, "officer-steady", &id, "HS-2026-000500").await,
                    200
                );
            }
            env.settle().await;
        }
    };
    // 8 people: below the rule's 12; this engine now counts the hour.
    ask(8).await;
    a.tick().await.expect("tick");
    assert_eq!(distinct_alert_size(&env).await, None);
    assert_eq!(case_alert_count(&env).await, None);
    // 3 more, judged by another instance's engine: 11, still below.
    ask(3).await;
    b.tick().await.expect("tick");
    assert_eq!(distinct_alert_size(&env).await, None);
    assert_eq!(case_alert_count(&env).await, None);
    // 2 more: 13 in all. The first engine must not count 8 + 2.
    ask(2).await;
    a.tick().await.expect("tick");
    assert_eq!(
        distinct_alert_size(&env).await,
        Some(13),
        "the other engine's 3 were missed"
    );
    assert_eq!(
        case_alert_count(&env).await,
        Some(13),
        "the case's citizens the other engine judged were missed"
    );
    // 2 more, counted on top of its 13 (the alert of the hour grows).
    ask(2).await;
    a.tick().await.expect("tick");
    assert_eq!(distinct_alert_size(&env).await, Some(15));
    assert_eq!(case_alert_count(&env).await, Some(15));
    env.stop().await;
}

/// How many distinct citizens the case-spread alert's summary names, if
/// there is one.
async fn case_alert_count(env: &TestEnv) -> Option<usize> {
    let list = auditor(env, "inspector-1", "/audit/v1/alerts?rule=case-spread", None).await;
    assert_eq!(list.status, 200, "{}", list.body);
    let summary = alerts_of(&list.body, "case-spread").first()?["summary"]
        .as_str()?
        .to_owned();
    let n = summary.split(" about ").nth(1)?.split(' ').next()?;
    Some(n.parse().expect("a count in the summary"))
}

/// The number of requests the distinct-citizens alert names, if there is one.
async fn distinct_alert_size(env: &TestEnv) -> Option<usize> {
    let list = auditor(
        env,
        "inspector-1",
        "/audit/v1/alerts?rule=distinct-citizens",
        None,
    )
    .await;
    assert_eq!(list.status, 200, "{}", list.body);
    alerts_of(&list.body, "distinct-citizens")
        .first()
        .map(|a| a["audit_ids"].as_array().map_or(0, Vec::len))
}

/// The rules read an instance's chain in bounded windows of its places; a
/// place the warehouse lacks (here 5,000 of them, more than a window) is
/// stepped over, never where the rules stop for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_read_past_places_the_warehouse_lacks() {
    let env = TestEnv::start_with(|c| c.alerts.enabled = false).await;
    for id in citizens(&env, true, 3) {
        assert_eq!(as_officer(&env, "officer-gap", &id, "HS-2026-000501").await, 200);
    }
    env.settle().await;
    let db = env.admin_db().await;
    // Every event again, 5,000 places further along the chain.
    db.batch_execute(
        "CREATE TEMP TABLE later AS SELECT * FROM popgate.audit_events;
         UPDATE later SET seq = seq + 5000, audit_id = gen_random_uuid();
         INSERT INTO popgate.audit_events SELECT * FROM later",
    )
    .await
    .expect("events beyond a gap");
    let (events, last): (i64, i64) = {
        let r = db
            .query_one("SELECT count(*), max(seq) FROM popgate.audit_events", &[])
            .await
            .expect("count");
        (r.get(0), r.get(1))
    };
    assert!(last > 5000, "{last}");
    let read = engine(&env, TEST_RULES).tick().await.expect("tick");
    assert!(read as i64 >= events, "read {read} of {events} events");
    let judged: i64 = db
        .query_one("SELECT max(seq) FROM popgate.alert_watermarks", &[])
        .await
        .expect("watermark")
        .get(0);
    assert!(judged >= last, "the rules stopped at seq {judged}, before {last}");
    env.stop().await;
}
