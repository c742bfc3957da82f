//! Policies as admins meet them: `policy check` pinpoints every problem, each
//! sample app sees what its grant says, and a reload under load swaps the
//! whole set atomically without failing a request.

mod common;

use std::path::Path;
use std::process::Command;

use common::TestEnv;
use serde_json::json;

fn copy_policies(to: &Path) {
    let from = common::policies_dir();
    std::fs::create_dir_all(to.join("apps")).expect("mkdir");
    for name in ["fields.toml", "purposes.toml"] {
        std::fs::copy(from.join(name), to.join(name)).expect("copy");
    }
    for entry in std::fs::read_dir(from.join("apps")).expect("apps") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, to.join("apps").join(path.file_name().expect("name"))).expect("copy");
    }
}

#[test]
fn policy_check_reports_every_problem_with_its_location() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_policies(dir.path());
    std::fs::write(
        dir.path().join("apps/bad.toml"),
        r#"id = "bad"
name = "Broken app"
certificate_uri = "urn:popgate:app:mot-cua"

[[grant]]
operations = ["lookup"]
roles = ["officer"]
purpose = "fishing"
fields = ["full_name", "shoe_size", "religion"]
masks = { full_name = "year-only" }
jurisdiction = "province"
store = ["blood_type"]
"#,
    )
    .expect("write");
    std::fs::write(
        dir.path().join("apps/twin.toml"),
        "id = \"y-te\"\nname = \"Twin\"\ncertificate_uri = \"urn:popgate:app:twin\"\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("apps/typo.toml"), "id = \"typo\"\nnmae = \"x\"\n").expect("write");

    let out = Command::new(env!("CARGO_BIN_EXE_popgate"))
        .args(["policy", "check"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let d = dir.path().display();
    let expected = [
        format!("{d}/apps/bad.toml:8:11: unknown purpose 'fishing'"),
        format!("{d}/apps/bad.toml:9:24: unknown field 'shoe_size'"),
        format!("{d}/apps/bad.toml:5:1: this grant releases a sensitive field and needs a legal_basis"),
        format!("{d}/apps/bad.toml:10:23: mask 'year-only' does not apply to field 'full_name'"),
        format!("{d}/apps/bad.toml:12:10: store names 'blood_type', which this grant does not release"),
        // Files are read in name order: the later of two claimants is reported.
        format!("{d}/apps/mot-cua.toml:4:19: certificate_uri is already the identity of app 'bad'"),
        format!("{d}/apps/y-te.toml:2:6: app 'y-te' is defined in another file too"),
        format!("{d}/apps/typo.toml:2:1: unknown field `nmae`"),
    ];
    for line in &expected {
        assert!(
            text.lines().any(|l| l.starts_with(line.as_str())),
            "missing: {line}\n--- got:\n{text}"
        );
    }
    assert_eq!(text.lines().count(), expected.len(), "{text}");

    let ok = Command::new(env!("CARGO_BIN_EXE_popgate"))
        .args(["policy", "check"])
        .arg(common::policies_dir())
        .output()
        .expect("run");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_registry_sees_initials_and_addresses_only() {
    let env = TestEnv::start().await;
    let citizen = env.citizen(true);
    let body = json!({"personal_id": citizen.personal_id().as_str(), "purpose": "address-verification"});
    let r = env
        .call("dia-chi-so", "/v1/citizens/lookup", &body.to_string())
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let c = r.body["citizen"].as_object().expect("object");
    let mut keys: Vec<&str> = c.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["current_address", "full_name", "permanent_address"]);
    let initials = c["full_name"].as_str().expect("name");
    assert!(
        initials
            .split(' ')
            .all(|w| w.chars().count() == 2 && w.ends_with('.')),
        "{initials}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_change_under_load_swaps_atomically_and_sighup_changes_no_policy() {
    // The handler is ours before anything sends the signal: a SIGHUP never
    // takes this test process down.
    let mut hangups =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).expect("SIGHUP handler");
    let policies = tempfile::tempdir().expect("tempdir");
    copy_policies(policies.path());
    let dir = policies.path().to_owned();
    let env = std::sync::Arc::new(
        TestEnv::start_with(|c| {
            c.gateway.policies = dir.clone();
            c.rate_limits.scale = 1000.0;
        })
        .await,
    );
    let citizen = env.citizen(true);
    let body =
        json!({"personal_id": citizen.personal_id().as_str(), "purpose": "health-insurance"}).to_string();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for n in 0..4 {
        let (env, body, stop) = (env.clone(), body.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let client = env.client("y-te");
            let token = env.token("y-te", &format!("doctor-{n}"));
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || seen.len() < 5 {
                let r = client
                    .post(&env.url("/v1/citizens/lookup"), Some(&token), &body)
                    .await
                    .expect("response");
                assert_eq!(r.status, 200, "{}", r.body);
                let version = r.body["policy_version"].as_u64().expect("version");
                let has_blood = r.body["citizen"].get("blood_type").is_some();
                // Each answer is wholly one version: v1 releases the blood type, v2 does not.
                assert_eq!(
                    has_blood,
                    version == 1,
                    "mixed versions in one answer: {}",
                    r.body
                );
                seen.push(version);
            }
            seen
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let gateway = env.gateway.as_ref().expect("gateway");
    let admin = |who: &'static str, path: &'static str, body: serde_json::Value| {
        let env = env.clone();
        async move {
            env.call_as("admin-cli", who, "policy-admin", path, Some(&body.to_string()))
                .await
        }
    };

    // Editing the policy directory and sending SIGHUP changes no policy:
    // SIGHUP reloads certificates only.
    let app = dir.join("apps/y-te.toml");
    let edited = std::fs::read_to_string(&app)
        .expect("read")
        .replace("  \"blood_type\",\n", "");
    std::fs::write(&app, &edited).expect("write");
    let (stop_serving, served) = tokio::sync::oneshot::channel::<()>();
    let serving = {
        let env = env.clone();
        tokio::spawn(async move {
            let gateway = env.gateway.as_ref().expect("gateway");
            gateway
                .run_until(async {
                    let _ = served.await;
                })
                .await
                .expect("run");
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    hangups.recv().await.expect("the signal arrived");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(gateway.policy.version(), 1, "SIGHUP changed the policy");
    let listed = env
        .call_as(
            "admin-cli",
            "admin-an",
            "policy-admin",
            "/admin/v1/policies",
            None,
        )
        .await;
    assert_eq!(listed.body["active_version"], 1, "{}", listed.body);
    assert_eq!(listed.body["versions"].as_array().map(Vec::len), Some(1));
    drop(stop_serving);
    serving.await.expect("served");

    // The same change as a proposal, approved by a second admin, swaps
    // while requests run: each answer is wholly one version.
    let r = admin(
        "admin-an",
        "/admin/v1/policies/proposals",
        json!({"reason": "nhóm máu", "files": {"apps/y-te.toml": edited}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = admin("admin-binh", "/admin/v1/policies/proposals/2/approve", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(gateway.policy.version(), 2);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    // An invalid proposal is refused; version 2 stays active.
    let r = admin(
        "admin-an",
        "/admin/v1/policies/proposals",
        json!({"reason": "hỏng", "files": {"apps/broken.toml": "id = 1\n"}}),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body["problems"].to_string().contains("broken.toml:1:6"),
        "{}",
        r.body
    );
    assert_eq!(gateway.policy.version(), 2);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut versions = Vec::new();
    for w in workers {
        versions.extend(w.await.expect("worker"));
    }
    assert!(versions.contains(&1) && versions.contains(&2), "{versions:?}");
    assert_eq!(versions.last(), Some(&2));
    match std::sync::Arc::try_unwrap(env) {
        Ok(env) => env.stop().await,
        Err(_) => panic!("workers still hold the environment"),
    }
}

#[test]
fn a_closed_pipe_ends_a_command_quietly_never_with_a_panic() {
    // `popgate policy check | head -0`: the reader is gone before popgate
    // writes its answer.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_popgate"))
        .args(["policy", "check"])
        .arg(common::policies_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        matches!(out.status.code(), Some(0 | 141)),
        "{:?}: {stderr}",
        out.status
    );
}
