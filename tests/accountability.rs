//! Every disclosure accounted for: the journal's files are its owner's
//! only, and one process owns a journal.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::TestEnv;
use rand::SeedableRng;
use serde_json::json;

const LOOKUP: &str = "/v1/citizens/lookup";

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_is_readable_by_its_owner_only_and_has_one_process() {
    let env = TestEnv::start().await;
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let body =
        json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000907"})
            .to_string();
    let r = env.call("mot-cua", LOOKUP, &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    env.settle().await;

    // Released names, dates of birth and addresses live in these files.
    let journal = env.dir.path().join("data/journal");
    assert_eq!(mode(&journal), 0o700, "journal directory");
    let mut files = 0;
    for entry in std::fs::read_dir(&journal).expect("journal") {
        let path = entry.expect("entry").path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        files += 1;
    }
    assert!(files >= 2, "a segment and the checkpoint log at least");

    // A second gateway on the same journal refuses to start ...
    let second = popgate::gateway::Gateway::start(&env.config).await;
    let error = format!(
        "{:#}",
        second.err().expect("a second gateway on one journal started")
    );
    assert!(error.contains("in use by another popgate process"), "{error}");
    // ... and the first one serves on, its warehouse untouched.
    let r = env.call("mot-cua", LOOKUP, &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    env.settle().await;
    env.stop().await;
}

/// The byte offsets of the frames of a segment, in order.
fn frame_offsets(segment: &std::path::Path) -> Vec<u64> {
    let mut reader = popgate::audit::journal::FrameReader::open(segment).expect("segment");
    let mut out = Vec::new();
    while let Some((_, at)) = reader.next_frame().expect("read") {
        out.push(at);
    }
    out
}

fn popgate(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_popgate"))
        .args(args)
        .output()
        .expect("popgate");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_inside_the_journal_stops_the_start_until_it_is_salvaged() {
    let mut env = TestEnv::start().await;
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let body =
        json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000907"})
            .to_string();
    for _ in 0..10 {
        assert_eq!(env.call("mot-cua", LOOKUP, &body).await.status, 200);
    }
    env.settle().await;
    env.gateway.take().expect("running").stop().await;
    let journal = env.dir.path().join("data/journal");
    let (_, segment) = popgate::audit::journal::list_segments(&journal)
        .expect("segments")
        .pop()
        .expect("a segment");

    // An interrupted write at the very end is cut, and the gateway starts.
    let whole = std::fs::read(&segment).expect("segment");
    let mut torn = whole.clone();
    torn.extend_from_slice(&whole[..40]);
    std::fs::write(&segment, &torn).expect("write");
    let gateway = popgate::gateway::Gateway::start(&env.config)
        .await
        .expect("starts past a torn tail");
    gateway.stop().await;
    assert_eq!(
        std::fs::read(&segment).expect("segment"),
        whole,
        "only the torn tail was cut"
    );
    // So is a zero-filled end, as a power loss may leave one.
    let mut zeroed = whole.clone();
    zeroed.extend_from_slice(&[0u8; 4096]);
    std::fs::write(&segment, &zeroed).expect("write");
    let gateway = popgate::gateway::Gateway::start(&env.config)
        .await
        .expect("starts past a zero-filled end");
    gateway.stop().await;
    assert_eq!(
        std::fs::read(&segment).expect("segment"),
        whole,
        "only the zeros were cut"
    );

    // One flipped bit in a frame in the middle: the gateway refuses to start
    // and says where, and what to do.
    let offsets = frame_offsets(&segment);
    assert!(offsets.len() > 10, "{offsets:?}");
    let at = offsets[5];
    let mut flipped = whole.clone();
    flipped[at as usize + 40] ^= 0x04;
    std::fs::write(&segment, &flipped).expect("write");
    let refused = popgate::gateway::Gateway::start(&env.config).await;
    let error = format!("{:#}", refused.err().expect("started on a damaged journal"));
    let name = segment.file_name().expect("name").to_string_lossy().into_owned();
    assert!(error.contains(&name), "{error}");
    assert!(error.contains(&format!("at byte {at}")), "{error}");
    assert!(error.contains("popgate audit journal salvage --dir"), "{error}");
    assert_eq!(
        std::fs::read(&segment).expect("segment"),
        flipped,
        "nothing was cut"
    );

    let dir = journal.to_str().expect("path");
    let (ok, said) = popgate(&["audit", "journal", "inspect", "--dir", dir]);
    assert!(
        !ok && said.contains("DAMAGED") && said.contains(&format!("at byte {at}")),
        "{said}"
    );
    let (ok, said) = popgate(&["audit", "journal", "salvage", "--dir", dir]);
    assert!(ok && said.contains("moved"), "{said}");
    let quarantined: Vec<_> = std::fs::read_dir(&journal)
        .expect("journal")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("quarantine-"))
        .collect();
    assert_eq!(quarantined.len(), 1, "the damaged tail is kept aside");
    let kept = std::fs::read_dir(quarantined[0].path())
        .expect("quarantine")
        .count();
    assert_eq!(kept, 1, "the damaged segment's tail");
    let (ok, said) = popgate(&["audit", "journal", "inspect", "--dir", dir]);
    assert!(ok && said.contains("the journal opens"), "{said}");
    env.gateway = Some(
        popgate::gateway::Gateway::start(&env.config)
            .await
            .expect("starts once salvaged"),
    );
    env.stop().await;
}

/// Sends `body` to the lookup over a fresh connection, then goes away
/// after `wait` without reading the answer.
async fn ask_and_leave(env: &TestEnv, body: &str, wait: std::time::Duration) {
    use tokio::io::AsyncWriteExt;
    let token = env.token("mot-cua", "officer-1");
    let mut tls = env.raw_tls("mot-cua", b"http/1.1").await;
    let request = format!(
        "POST {LOOKUP} HTTP/1.1\r\nhost: popgate\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await.expect("write");
    tls.flush().await.expect("flush");
    tokio::time::sleep(wait).await;
    // Reset rather than close, as a killed client would.
    let (tcp, _) = tls.into_inner();
    let _ = tcp.set_zero_linger();
    drop(tcp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_question_asked_is_audited_to_its_outcome_whatever_the_client_does() {
    use rand::Rng;
    let faults = popgate::sim::Faults {
        latency: std::time::Duration::from_millis(15),
        jitter: std::time::Duration::from_millis(10),
        ..Default::default()
    };
    let env = std::sync::Arc::new(
        TestEnv::start_on_faulty_link(faults, |_, c| c.rate_limits.scale = 100.0, Default::default()).await,
    );
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let body =
        json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000907"})
            .to_string();
    let mut clients = Vec::new();
    for worker in 0..10 {
        let (env, body) = (env.clone(), body.clone());
        clients.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(worker);
            for _ in 0..10 {
                // From at once (before the answer) to after it.
                let wait = std::time::Duration::from_millis(rng.gen_range(0..45));
                ask_and_leave(&env, &body, wait).await;
            }
        }));
    }
    for c in clients {
        c.await.expect("client");
    }
    // Pipelines run on after their clients are gone: wait for them.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    env.settle().await;
    let db = env.admin_db().await;
    let rows = db
        .query(
            "SELECT audit_id::text, kind, decision, intent_id::text FROM popgate.audit_events
             WHERE app_id = 'mot-cua'",
            &[],
        )
        .await
        .expect("events");
    let intents: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<_, Option<String>>(1).as_deref() == Some("intent"))
        .map(|r| r.get(0))
        .collect();
    let outcomes: Vec<(String, String, Option<String>)> = rows
        .iter()
        .filter(|r| r.get::<_, Option<String>>(1).as_deref() == Some("outcome"))
        .map(|r| (r.get(0), r.get(2), r.get(3)))
        .collect();
    assert!(intents.len() >= 50, "{} questions asked of 100", intents.len());
    for intent in &intents {
        assert!(
            outcomes
                .iter()
                .any(|(_, _, of)| of.as_deref() == Some(intent.as_str())),
            "intent {intent} has no outcome"
        );
    }
    let abandoned = outcomes.iter().filter(|(_, d, _)| d == "abandoned").count();
    let granted: Vec<&String> = outcomes
        .iter()
        .filter(|(_, d, _)| d == "granted")
        .map(|(a, _, _)| a)
        .collect();
    assert!(abandoned > 0, "no client left before its answer: {outcomes:?}");
    // What was released is in the warehouse; what was abandoned is not.
    for audit_id in &granted {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM popgate.citizen_records WHERE audit_id = $1::text::uuid",
                &[audit_id],
            )
            .await
            .expect("records")
            .get(0);
        assert_eq!(n, 1, "granted {audit_id} has no warehouse record");
    }
    let abandoned_records: i64 = db
        .query_one(
            "SELECT count(*) FROM popgate.citizen_records r JOIN popgate.audit_events e ON e.audit_id = r.audit_id
             WHERE e.decision = 'abandoned'",
            &[],
        )
        .await
        .expect("records")
        .get(0);
    assert_eq!(abandoned_records, 0);
    match std::sync::Arc::try_unwrap(env) {
        Ok(env) => env.stop().await,
        Err(_) => panic!("the test still holds the environment"),
    }
}

/// A household whose head's current ward differs from the ward where some
/// member lives: `(head, a member living elsewhere, the head's current ward)`.
fn split_household(
    env: &TestEnv,
) -> (
    popgate::sim::population::Citizen,
    popgate::sim::population::Citizen,
    u32,
    Vec<popgate::sim::population::Citizen>,
) {
    let ward = |c: &popgate::sim::population::Citizen, address: &str| -> u32 {
        c.to_c06()[address]["MaPhuongXa"]
            .as_str()
            .and_then(|w| w.parse().ok())
            .expect("ward")
    };
    let p = env.sim.population();
    for i in 0..common::POPULATION {
        let c = p.citizen(i);
        let members = p.household(&c);
        let head = members[0].clone();
        if members.len() < 3 || head.index() != i || head.residence_province() != 79 {
            continue;
        }
        let unit = ward(&head, "NoiOHienTai");
        if unit == ward(&head, "ThuongTru") {
            continue;
        }
        let elsewhere = members[1..]
            .iter()
            .find(|m| ward(m, "NoiOHienTai") != unit && ward(m, "ThuongTru") != unit);
        if let Some(m) = elsewhere {
            return (head, m.clone(), unit, members);
        }
    }
    panic!("the test population has no household split across wards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_household_answer_accounts_for_every_person_it_carries() {
    // IOC keeps a warehouse copy of names here, so that each released
    // person's record can be seen.
    let policies = tempfile::tempdir().expect("tempdir");
    for (path, text) in popgate::policy::samples::files() {
        let text = if path == "apps/ioc.toml" {
            text.replace(
                "store = []",
                "store = [\"full_name\", \"household_head.full_name\"]",
            )
        } else {
            text
        };
        let file = policies.path().join(&path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("dir");
        std::fs::write(file, text).expect("write");
    }
    let dir = policies.path().to_owned();
    let env = TestEnv::start_with(move |c| c.gateway.policies = dir).await;
    let (head, elsewhere, unit, members) = split_household(&env);
    let token = env.token_with("ioc", "ioc-officer-1", &["officer"], Some(unit));
    let client = env.client("ioc");
    let ask = |path: &'static str, who: &popgate::sim::population::Citizen| {
        let body = json!({"personal_id": who.personal_id().as_str(), "purpose": "emergency-response", "case_ref": "SOS-2026-1"});
        let (client, token, url) = (&client, &token, env.url(path));
        async move {
            client
                .post(&url, Some(token), &body.to_string())
                .await
                .expect("response")
        }
    };

    // A member who lives outside the officer's ward: refused as a citizen,
    // and refused as the one a household lookup asks about.
    assert_eq!(ask(LOOKUP, &elsewhere).await.status, 403);
    let r = ask("/v1/households/lookup", &elsewhere).await;
    assert_eq!(
        r.status, 403,
        "the household of a citizen outside the jurisdiction: {}",
        r.body
    );

    // The head's household: members outside the ward are withheld, counted.
    let r = ask("/v1/households/lookup", &head).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let household = &r.body["household"];
    let withheld = household["withheld"].as_u64().expect("withheld");
    let released = household["members"].as_array().expect("members").len() as u64;
    assert!(withheld >= 1, "{household}");
    assert_eq!(released + withheld + 1, members.len() as u64, "{household}");
    let text = household.to_string();
    assert!(
        !text.contains(&elsewhere.full_name()),
        "a withheld member's name left"
    );
    let audit_id = r.body["audit_id"].as_str().expect("audit id").to_owned();
    env.settle().await;

    // The outcome names every person whose data left, each in their role.
    let db = env.admin_db().await;
    let row = db
        .query_one(
            "SELECT subjects, legal_basis, subject_keys FROM popgate.audit_events WHERE audit_id = $1::text::uuid",
            &[&audit_id],
        )
        .await
        .expect("outcome");
    let subjects: serde_json::Value = row.get(0);
    let legal_basis: Option<String> = row.get(1);
    let subject_keys: Vec<String> = row.get(2);
    assert!(legal_basis.is_some_and(|b| b.contains("Luật Bảo vệ dữ liệu cá nhân 2025")));
    let subjects = subjects.as_array().expect("subjects");
    let roles: Vec<&str> = subjects.iter().filter_map(|s| s["role"].as_str()).collect();
    assert_eq!(roles.iter().filter(|r| **r == "head").count(), 1, "{roles:?}");
    assert_eq!(
        roles.iter().filter(|r| **r == "member").count() as u64,
        released,
        "{roles:?}"
    );
    assert_eq!(subject_keys.len(), subjects.len());

    // Each released person's own access report shows this access; the
    // withheld member's does not.
    let report = |who: &popgate::sim::population::Citizen| {
        let body = json!({"personal_id": who.personal_id().as_str()}).to_string();
        let env = &env;
        async move {
            env.call_as(
                "audit-cli",
                "inspector-1",
                "auditor",
                "/audit/v1/citizens/accesses",
                Some(&body),
            )
            .await
            .body
        }
    };
    let seen = |report: &serde_json::Value| {
        report["accesses"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["audit_id"] == audit_id.as_str()))
    };
    assert!(seen(&report(&head).await), "the head's report");
    let released_members: Vec<_> = members[1..]
        .iter()
        .filter(|m| text.contains(&m.full_name()))
        .collect();
    assert_eq!(released_members.len() as u64, released);
    for m in &released_members {
        let r = report(m).await;
        assert!(seen(&r), "a released member's report: {r}");
        let entry = r["accesses"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["audit_id"] == audit_id.as_str()))
            .expect("entry")
            .clone();
        assert_eq!(entry["role"], "member", "{entry}");
        assert!(entry["legal_basis"].as_str().is_some(), "{entry}");
    }
    assert!(!seen(&report(&elsewhere).await), "a withheld member's report");

    // Each released person has their own warehouse copy.
    let records = db
        .query_one(
            "SELECT count(DISTINCT citizen_key), count(*) FROM popgate.citizen_records WHERE audit_id = $1::text::uuid",
            &[&audit_id],
        )
        .await
        .expect("records");
    let (people, rows): (i64, i64) = (records.get(0), records.get(1));
    assert_eq!(people as u64, released + 1);
    assert_eq!(rows, people, "one record per person");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legal_basis_is_on_the_record_and_case_references_have_a_shape() {
    let env = TestEnv::start().await;
    let citizen = env.citizen(true);
    let id = citizen.personal_id().as_str().to_owned();
    let ask = |case_ref: &str| {
        json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": case_ref}).to_string()
    };

    // A case reference must have the purpose's form; "x" is not a dossier.
    let r = env.call("mot-cua", LOOKUP, &ask("x")).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let detail = r.body["detail"].as_str().expect("detail");
    assert!(detail.contains("does not have the form"), "{detail}");
    // Text that reverses itself in an auditor's table is refused.
    let r = env.call("mot-cua", LOOKUP, &ask("HS-2026-\u{202e}000123")).await;
    assert_eq!(r.status, 400, "{}", r.body);
    // A key of the caller's own (here a personal ID) is never repeated back,
    // nor written into the audit log.
    let smuggled = format!(r#"{{"personal_id": "{id}", "purpose": "administrative-procedure", "{id}": 1}}"#);
    let r = env.call("mot-cua", LOOKUP, &smuggled).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(!r.body.to_string().contains(&id), "{}", r.body);
    let refused_audit_id = r.body["audit_id"].as_str().expect("audited").to_owned();

    let r = env.call("mot-cua", LOOKUP, &ask("HS-2026-000123")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let audit_id = r.body["audit_id"].as_str().expect("audit id").to_owned();
    env.settle().await;
    let db = env.admin_db().await;
    let reason: Option<String> = db
        .query_one(
            "SELECT reason FROM popgate.audit_events WHERE audit_id = $1::text::uuid",
            &[&refused_audit_id],
        )
        .await
        .expect("refusal")
        .get(0);
    assert!(reason.as_deref().is_some_and(|r| !r.contains(&id)), "{reason:?}");
    let legal_basis: Option<String> = db
        .query_one(
            "SELECT legal_basis FROM popgate.audit_events WHERE audit_id = $1::text::uuid",
            &[&audit_id],
        )
        .await
        .expect("outcome")
        .get(0);
    assert!(
        legal_basis
            .as_deref()
            .is_some_and(|b| b.contains("Nghị định 104/2022/NĐ-CP")),
        "{legal_basis:?}"
    );
    // The citizen's report says on which basis.
    let body = json!({"personal_id": id}).to_string();
    let report = env
        .call_as(
            "audit-cli",
            "inspector-1",
            "auditor",
            "/audit/v1/citizens/accesses",
            Some(&body),
        )
        .await
        .body;
    let entry = report["accesses"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["audit_id"] == audit_id.as_str()))
        .cloned()
        .expect("the access is reported");
    assert_eq!(entry["legal_basis"].as_str(), legal_basis.as_deref(), "{entry}");
    assert_eq!(entry["role"], "citizen");
    env.stop().await;

    // `policy check` warns where a repealed decree is still cited.
    let policies = tempfile::tempdir().expect("tempdir");
    for (path, text) in popgate::policy::samples::files() {
        let text = text.replace(
            "Luật Bảo vệ dữ liệu cá nhân 2025; Nghị định 356/2025/NĐ-CP",
            "Nghị định 13/2023/NĐ-CP",
        );
        let file = policies.path().join(&path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("dir");
        std::fs::write(file, text).expect("write");
    }
    let (ok, said) = popgate(&["policy", "check", policies.path().to_str().expect("path")]);
    assert!(ok, "{said}");
    assert!(
        said.contains("purposes.toml:") && said.contains("warning: 13/2023/NĐ-CP is cited"),
        "{said}"
    );
    let (ok, said) = popgate(&["policy", "check", &common::policies_dir().display().to_string()]);
    assert!(
        ok && !said.contains("warning"),
        "the sample set cites the law in force: {said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_after_the_last_checkpoint_are_not_yet_anchored_not_whole() {
    let env = TestEnv::start_with(|c| {
        c.audit.checkpoint_every = 1_000_000;
        c.audit.checkpoint_interval = std::time::Duration::from_secs(3600);
    })
    .await;
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let body =
        json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000123"})
            .to_string();
    for _ in 0..3 {
        assert_eq!(env.call("mot-cua", LOOKUP, &body).await.status, 200);
    }
    let state = &env.gateway().journal.state;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while state.backlog() > 0 {
        assert!(std::time::Instant::now() < deadline, "not shipped");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let db = env.admin_db().await;
    let report = popgate::audit::verify::verify(&db, None).await.expect("verify");
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert!(!report.is_whole(), "unanchored events verified as whole");
    assert!(
        report
            .summary()
            .starts_with("audit log not yet anchored (6 events)"),
        "{}",
        report.summary()
    );
    let (ok, said) = popgate(&[
        "audit",
        "verify",
        "--warehouse",
        &env.gateway().warehouse_admin_url,
    ]);
    assert!(!ok && said.contains("not yet anchored (6 events)"), "{said}");
    env.settle().await;
    let report = popgate::audit::verify::verify(&db, None).await.expect("verify");
    assert!(report.is_whole(), "{}", report.summary());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warehouse_is_reached_over_verified_tls() {
    use popgate::config::WarehouseTlsMode;
    // A warehouse that accepts TLS logins only, with a certificate for
    // 127.0.0.1 from a CA of its own.
    let (mut pg, _home) = common::external_pg().await;
    let certs = tempfile::tempdir().expect("tempdir");
    let db_pki = popgate::tls::pki::init(certs.path(), &[], false).expect("pki");
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).expect("pem");
    let (cert, key) = (read(db_pki.layout.sim_cert()), read(db_pki.layout.sim_key()));
    tokio::task::block_in_place(|| pg.require_tls(&cert, &key)).expect("tls on");
    let ca = db_pki.layout.national_ca_cert();
    let tls = popgate::warehouse::WarehouseTls::verify_full(&ca).expect("ca");
    // The restarted server may still be starting up: wait for a TLS login,
    // then check that a login in clear is refused.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let db = loop {
        match popgate::warehouse::connect_with(&pg.admin_url(), &tls).await {
            Ok(db) => break db,
            Err(e) if std::time::Instant::now() < deadline && format!("{e:?}").contains("starting up") => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => panic!("tls login: {e:?}"),
        }
    };
    assert!(
        popgate::warehouse::connect(&pg.admin_url()).await.is_err(),
        "the warehouse still takes logins in clear"
    );

    let (gateway_url, admin_url) = (pg.gateway_url(), pg.admin_url());
    let ca_file = ca.clone();
    let env = TestEnv::start_with(move |c| {
        c.warehouse.url = Some(gateway_url);
        c.warehouse.admin_url = Some(admin_url);
        c.warehouse.tls = Some(WarehouseTlsMode::VerifyFull);
        c.warehouse.ca = Some(ca_file);
    })
    .await;
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let body =
        json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000123"})
            .to_string();
    let r = env.call("mot-cua", LOOKUP, &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let audit_id = r.body["audit_id"].as_str().expect("audit id").to_owned();
    env.settle().await;
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM popgate.audit_events WHERE audit_id = $1::text::uuid",
            &[&audit_id],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1, "the event travelled over TLS");

    // A certificate from another CA is refused, and so is clear text.
    let mut wrong = env.config.clone();
    wrong.gateway.data_dir = env.dir.path().join("other");
    wrong.gateway.instance_id = "test-2".into();
    wrong.warehouse.ca = Some(env.pki.layout.apps_ca_cert());
    let refused = popgate::gateway::Gateway::start(&wrong).await;
    assert!(
        refused.is_err(),
        "a warehouse certificate from an untrusted CA was accepted"
    );
    let mut clear = wrong.clone();
    clear.warehouse.tls = Some(WarehouseTlsMode::Disable);
    assert!(popgate::gateway::Gateway::start(&clear).await.is_err());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_person_of_a_household_counts_toward_the_distinct_citizen_cap() {
    let env = TestEnv::start_with(|c| c.rate_limits.distinct_citizens_per_officer_per_hour = 2).await;
    // A household of three or more, all registered in the head's ward.
    let p = env.sim.population();
    let ward = |c: &popgate::sim::population::Citizen| -> u32 {
        c.to_c06()["ThuongTru"]["MaPhuongXa"]
            .as_str()
            .and_then(|w| w.parse().ok())
            .expect("ward")
    };
    let members = (0..common::POPULATION)
        .map(|i| p.household(&p.citizen(i)))
        .find(|m| m.len() >= 3 && m[0].residence_province() == 79)
        .expect("a household of three");
    let head = &members[0];
    let token = env.token_with("ioc", "ioc-officer-2", &["officer"], Some(ward(head)));
    let body = json!({"personal_id": head.personal_id().as_str(), "purpose": "emergency-response", "case_ref": "SOS-2026-2"});
    let r = env
        .client("ioc")
        .post(&env.url("/v1/households/lookup"), Some(&token), &body.to_string())
        .await
        .expect("response");
    // One request, but three people: over a cap of two.
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.body["household"].is_null(), "{}", r.body);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officer_unit_grant_with_a_token_without_a_unit_names_the_claim() {
    let env = TestEnv::start().await;
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let body =
        json!({"personal_id": id, "purpose": "emergency-response", "case_ref": "SOS-2026-3"}).to_string();
    let token = env.token_with("ioc", "ioc-officer-3", &["officer"], None);
    let r = env
        .client("ioc")
        .post(&env.url(LOOKUP), Some(&token), &body)
        .await
        .expect("response");
    assert_eq!(r.status, 403, "{}", r.body);
    let detail = r.body["detail"].as_str().expect("detail");
    assert!(detail.contains("'unit' claim"), "{detail}");
    assert!(!detail.contains("outside the jurisdiction"), "{detail}");
    assert_eq!(env.sim.served(), 0, "the national database was not asked");
    env.stop().await;
}
