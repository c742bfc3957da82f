//! `popgate demo` as a user runs it: a real child process started outside
//! any checkout (from `/`, on the sample policies built into the binary),
//! ready.json, a lookup with the printed certificate paths, then SIGTERM
//! and a clean exit.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestClient;
use serde_json::{json, Value};

/// Waits for the demo's ready.json; when it does not come, or the demo
/// exits first, fails with the end of what the demo wrote to `stderr_path`.
fn wait_for_ready(child: &mut std::process::Child, path: &Path, stderr_path: &Path) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if let Some(ready) = wait_for(path, Duration::from_millis(200)) {
            return ready;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the demo exited with {status} before ready.json:\n{}",
                tail(stderr_path)
            );
        }
    }
    let _ = child.kill();
    panic!(
        "no ready.json within 90 s; the demo wrote:\n{}",
        tail(stderr_path)
    );
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn wait_for(path: &Path, timeout: Duration) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(v) = serde_json::from_str(&text) {
                return Some(v);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_writes_ready_json_serves_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let demo_dir = dir.path().join("demo");
    let stderr_path = dir.path().join("demo.stderr");
    // From `/`, where there is no policies/ directory: as an installed
    // binary is run.
    let mut child = Command::new(env!("CARGO_BIN_EXE_popgate"))
        .args(["demo", "--population", "50000", "--dir"])
        .arg(&demo_dir)
        .current_dir("/")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("spawn demo");
    let ready_path = demo_dir.join("ready.json");
    let ready = wait_for_ready(&mut child, &ready_path, &stderr_path);
    assert_eq!(ready["pid"], json!(child.id()));

    // A second demo on the same directory refuses to start, and leaves the
    // first one's journal and PostgreSQL alone (the lookups below prove it).
    let second = Command::new(env!("CARGO_BIN_EXE_popgate"))
        .args(["demo", "--population", "50000", "--dir"])
        .arg(&demo_dir)
        .current_dir("/")
        .output()
        .expect("second demo");
    assert!(!second.status.success(), "a second demo on one directory started");
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("in use by another popgate process"), "{said}");
    assert_eq!(
        wait_for(&ready_path, Duration::from_secs(1)).map(|r| r["pid"].clone()),
        Some(json!(child.id())),
        "the first demo's ready.json stays"
    );
    for key in [
        "gateway_url",
        "ops_url",
        "upstream_url",
        "warehouse_url",
        "ca_cert",
        "upstream_ca",
        "warehouse_admin_url",
        "audit_anchor",
    ] {
        assert!(ready[key].as_str().is_some_and(|s| !s.is_empty()), "{key}");
    }
    for app in ["mot-cua", "y-te", "admin-cli", "audit-cli"] {
        assert!(
            Path::new(ready["apps"][app]["cert"].as_str().expect("cert")).exists(),
            "{app}"
        );
    }
    let built_in = popgate::policy::read_dir(&demo_dir.join("policies")).expect("the sample policies");
    assert_eq!(
        built_in,
        popgate::policy::read_dir(&common::policies_dir()).expect("policies/"),
        "the demo imports the sample set built into the binary"
    );
    let ids: Vec<String> = serde_json::from_value(ready["sample_personal_ids"].clone()).expect("ids");
    assert!(ids.len() >= 20);

    let ca = Path::new(ready["ca_cert"].as_str().expect("ca"));
    let cert = Path::new(ready["apps"]["mot-cua"]["cert"].as_str().expect("cert"));
    let key = Path::new(ready["apps"]["mot-cua"]["key"].as_str().expect("key"));
    let client = TestClient::new(ca, Some((cert, key)));
    // The officer token, minted as the README says.
    let out = Command::new(env!("CARGO_BIN_EXE_popgate"))
        .args([
            "token",
            "--app",
            "mot-cua",
            "--sub",
            "canbo-test",
            "--role",
            "officer",
            "--dir",
        ])
        .arg(&demo_dir)
        .output()
        .expect("popgate token");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).expect("utf8").trim().to_owned();
    assert_eq!(token.split('.').count(), 3);
    let url = format!(
        "{}/v1/citizens/lookup",
        ready["gateway_url"].as_str().expect("url")
    );
    let mut statuses = Vec::new();
    for id in &ids {
        let body =
            json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000900"});
        let r = client
            .post(&url, Some(&token), &body.to_string())
            .await
            .expect("response");
        statuses.push(r.status);
        if r.status == 200 {
            assert!(r.body["citizen"]["full_name"].as_str().is_some());
        }
    }
    // Residents are released; citizens living elsewhere are out of jurisdiction.
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(statuses.contains(&403), "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 403), "{statuses:?}");

    // Admins and auditors work from the command line against the demo.
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_popgate"))
            .args(args)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    };
    let d = demo_dir.to_str().expect("path");
    let listed = cli(&["admin", "--dir", d, "--as", "admin-an", "list"]);
    assert!(listed.starts_with("active version: 1"), "{listed}");
    // The shipper delivers within moments.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = cli(&[
            "audit",
            "--dir",
            d,
            "--as",
            "thanh-tra",
            "--json",
            "search",
            "--app",
            "mot-cua",
            "--kind",
            "outcome",
        ]);
        let v: Value = serde_json::from_str(&found).expect("json");
        if v["events"].as_array().is_some_and(|e| e.len() == ids.len()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "search never showed the lookups: {found}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let report = cli(&[
        "audit",
        "--dir",
        d,
        "--as",
        "thanh-tra",
        "accesses",
        "--personal-id",
        &ids[0],
        "--vi",
    ]);
    assert!(report.contains("Giải quyết thủ tục hành chính"), "{report}");
    // The printable letter, and an evidence bundle of the case, written
    // readable by their owner only.
    let letter = demo_dir.join("letter.html");
    let bundle = demo_dir.join("case.json");
    let l = letter.to_str().expect("path");
    cli(&[
        "audit",
        "--dir",
        d,
        "--as",
        "thanh-tra",
        "accesses",
        "--personal-id",
        &ids[0],
        "--out",
        l,
    ]);
    let html = std::fs::read_to_string(&letter).expect("letter");
    assert!(
        html.contains("THÔNG BÁO") && html.contains("HS-2026-000900"),
        "{html}"
    );
    let b = bundle.to_str().expect("path");
    cli(&[
        "audit",
        "--dir",
        d,
        "--as",
        "thanh-tra",
        "bundle",
        "--case",
        "HS-2026-000900",
        "--out",
        b,
    ]);
    {
        use std::os::unix::fs::PermissionsExt;
        for f in [&letter, &bundle] {
            let mode = std::fs::metadata(f).expect("file").permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is readable by its owner only", f.display());
        }
    }
    let keys = demo_dir.join("audit-trusted-keys.json");

    // Revocation the demo can show: the one-stop-shop's certificate is
    // revoked, and the same client, on its kept-alive connection, is refused
    // within seconds; a new certificate works again.
    let ask =
        json!({"personal_id": ids[0], "purpose": "administrative-procedure", "case_ref": "HS-2026-000901"})
            .to_string();
    assert_eq!(
        client
            .post(&url, Some(&token), &ask)
            .await
            .expect("before")
            .status,
        200
    );
    let said = cli(&["certs", "revoke", "--dir", d, "--app", "mot-cua"]);
    assert!(said.contains("revoked mot-cua"), "{said}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = client.post(&url, Some(&token), &ask).await.expect("after");
        if r.status == 403 {
            assert!(
                r.body["detail"].as_str().unwrap_or("").contains("revoked"),
                "{}",
                r.body
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still served after revocation: {}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    cli(&["certs", "issue", "--dir", d, "--app", "mot-cua"]);
    let renewed = TestClient::new(ca, Some((cert, key)));
    let fresh = cli(&[
        "token",
        "--app",
        "mot-cua",
        "--sub",
        "canbo-test",
        "--role",
        "officer",
        "--dir",
        d,
    ]);
    let r = renewed
        .post(&url, Some(fresh.trim()), &ask)
        .await
        .expect("renewed");
    assert_eq!(r.status, 200, "{}", r.body);

    // The demo supervises its PostgreSQL: killed, it is started again and
    // the gateway serves on.
    let postmaster = demo_dir.join("pg/data/postmaster.pid");
    let pid = std::fs::read_to_string(&postmaster).expect("postmaster.pid");
    let pid = pid.lines().next().expect("pid").trim().to_owned();
    assert!(Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .expect("kill")
        .success());
    let ops = ready["ops_url"]
        .as_str()
        .expect("ops")
        .trim_start_matches("http://")
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let restarted = std::fs::read_to_string(&postmaster)
            .ok()
            .and_then(|t| t.lines().next().map(|l| l.trim().to_owned()))
            .is_some_and(|p| p != pid);
        if restarted && readyz(&ops).contains("\"warehouse\":\"up\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "PostgreSQL was not started again: {}",
            readyz(&ops)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let again =
        json!({"personal_id": ids[0], "purpose": "administrative-procedure", "case_ref": "HS-2026-000902"})
            .to_string();
    assert_eq!(
        renewed
            .post(&url, Some(fresh.trim()), &again)
            .await
            .expect("after")
            .status,
        200
    );

    // The demo directory is under the system temp dir, so the cluster lives
    // inside it.
    let pg_pid_file = demo_dir.join("pg/data/postmaster.pid");
    assert!(pg_pid_file.exists(), "PostgreSQL runs in the demo directory");
    let exit = terminate(&mut child);
    assert!(exit.success(), "{exit}");
    assert!(!ready_path.exists(), "ready.json removed on shutdown");
    assert!(!pg_pid_file.exists(), "PostgreSQL stopped");
    // With the demo stopped: no database, no network.
    let check = Command::new(env!("CARGO_BIN_EXE_popgate"))
        .args(["audit", "verify-bundle"])
        .arg(&bundle)
        .arg("--trusted-keys")
        .arg(&keys)
        .output()
        .expect("verify-bundle");
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{said}");
    assert!(
        said.contains("bundle whole") && said.contains("keys pinned"),
        "{said}"
    );
    let mut stdout = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read");
    assert!(stdout.contains("curl -sS --cacert"), "{stdout}");
}

/// `GET /readyz` on the ops listener at `addr`, as text.
fn readyz(addr: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ =
        s.write_all(format!("GET /readyz HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_two_instances_serves_through_both_on_one_warehouse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let demo_dir = dir.path().join("demo");
    let stderr_path = dir.path().join("demo.stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_popgate"))
        .args(["demo", "--instances", "2", "--population", "20000", "--dir"])
        .arg(&demo_dir)
        .current_dir("/")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("spawn demo");
    let ready = wait_for_ready(&mut child, &demo_dir.join("ready.json"), &stderr_path);
    let urls: Vec<String> = serde_json::from_value(ready["gateway_urls"].clone()).expect("gateway_urls");
    assert_eq!(urls.len(), 2, "{ready}");
    assert_eq!(ready["gateway_url"], urls[0].as_str());
    // The limits are shared in the demo's own Redis, which stops with it.
    let redis_url = ready["redis_url"].as_str().expect("redis_url").to_owned();
    let redis_port: u16 = redis_url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .expect("redis port");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", redis_port)).is_ok(),
        "{redis_url}"
    );
    let ops = ready["ops_urls"][1]
        .as_str()
        .expect("ops url")
        .trim_start_matches("http://")
        .to_owned();
    let said = readyz(&ops);
    assert!(said.contains(r#""rate_limits":"shared""#), "{said}");
    let ca = Path::new(ready["ca_cert"].as_str().expect("ca"));
    let cert = Path::new(ready["apps"]["mot-cua"]["cert"].as_str().expect("cert"));
    let key = Path::new(ready["apps"]["mot-cua"]["key"].as_str().expect("key"));
    let client = TestClient::new(ca, Some((cert, key)));
    let d = demo_dir.to_str().expect("path");
    let out = Command::new(env!("CARGO_BIN_EXE_popgate"))
        .args([
            "token", "--app", "mot-cua", "--sub", "canbo-2", "--role", "officer", "--dir", d,
        ])
        .output()
        .expect("token");
    let token = String::from_utf8(out.stdout).expect("utf8").trim().to_owned();
    let id = ready["sample_personal_ids"][0].as_str().expect("id").to_owned();
    let body =
        json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000930"})
            .to_string();
    for url in &urls {
        let r = client
            .post(&format!("{url}/v1/citizens/lookup"), Some(&token), &body)
            .await
            .expect("lookup");
        assert!(r.status == 200 || r.status == 403, "{url}: {}", r.body);
        assert_eq!(r.body["policy_version"], 1, "both serve the one policy version");
    }
    // Both chains reach the one warehouse and verify against the pinned keys.
    let keys = ready["audit_trusted_keys"].as_str().expect("keys").to_owned();
    let warehouse = ready["warehouse_admin_url"].as_str().expect("url").to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_popgate"))
            .args([
                "audit",
                "verify",
                "--warehouse",
                &warehouse,
                "--trusted-keys",
                &keys,
            ])
            .output()
            .expect("verify");
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && said.contains("audit log whole: 2 instance(s)") {
            break;
        }
        assert!(Instant::now() < deadline, "{said}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let exit = terminate(&mut child);
    assert!(exit.success(), "{exit}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", redis_port)).is_err(),
        "the demo's Redis outlived it"
    );
}

/// SIGTERM, then the demo's exit status (within a minute).
fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        assert!(Instant::now() < deadline, "demo did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
}
