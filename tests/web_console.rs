//! The web console in a real browser: headless Chromium over WebDriver,
//! against `popgate demo` as a child process (its identity provider, its
//! console, its gateway). Two admins make a change under four eyes and the
//! gateway's answers change; an auditor searches, opens an event, downloads
//! the CSV and opens a citizen's report; an officer is refused; every value
//! is escaped; and the browser reports no CSP violation or script error.
//! Screenshots of each page go to `target/console-screenshots/`.

mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestClient;
use serde_json::{json, Value};
use webdriver::{Browser, Driver};

struct Demo {
    child: Child,
    ready: Value,
    dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
    }
}

// Waited for in `Demo`'s drop.
#[allow(clippy::zombie_processes)]
fn start_demo() -> Demo {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("demo.log");
    let log = std::fs::File::create(&log_path).expect("demo log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_popgate"))
        .args(["demo", "--population", "50000", "--dir"])
        .arg(dir.path())
        .args(["--policies"])
        .arg(common::policies_dir())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("demo starts");
    let path = dir.path().join("ready.json");
    let deadline = Instant::now() + Duration::from_secs(180);
    let why = |what: &str| {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("{what}; the demo's last log lines:\n{}", tail.join("\n"))
    };
    loop {
        if let Some(ready) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
        {
            return Demo { child, ready, dir };
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{}",
                why(&format!("the demo exited ({status}) before it was ready"))
            );
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{}", why("the demo did not become ready in 180 s"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn account<'a>(ready: &'a Value, name: &str) -> (&'a str, &'a str) {
    let a = ready["console_accounts"]
        .as_array()
        .and_then(|l| l.iter().find(|a| a["name"] == name))
        .expect("demo account");
    (
        a["name"].as_str().unwrap_or(""),
        a["password"].as_str().unwrap_or(""),
    )
}

/// Chromium and ChromeDriver, or why not.
fn browser_missing() -> Option<String> {
    [webdriver::CHROMIUM, webdriver::CHROMEDRIVER]
        .iter()
        .find(|p| !Path::new(p).exists())
        .map(|p| {
            format!("{p} is missing: install the Debian packages chromium and chromium-driver (.ci/run does)")
        })
}

struct Shots {
    dir: PathBuf,
    n: usize,
}

impl Shots {
    async fn take(&mut self, b: &Browser, name: &str) {
        self.n += 1;
        b.screenshot(&self.dir.join(format!("{:02}-{name}.png", self.n)))
            .await;
    }
}

/// Messages of the browser's console that are a defect: a CSP violation,
/// a script error. (Chromium also logs every non-2xx document, such as the
/// refusal pages the test asks for; those are expected.)
fn defects(log: &[(String, String)]) -> Vec<String> {
    log.iter()
        .filter(|(_, m)| !m.contains("Failed to load resource"))
        .filter(|(level, m)| {
            level == "SEVERE"
                || m.contains("Content Security Policy")
                || m.contains("Refused to")
                || m.contains("Uncaught")
        })
        .map(|(l, m)| format!("{l}: {m}"))
        .collect()
}

async fn sign_in(b: &Browser, console: &str, (name, password): (&str, &str)) {
    b.delete_cookies().await;
    b.goto(console).await;
    b.click("#sign-in").await;
    b.type_into("#username", name).await;
    b.type_into("#password", password).await;
    b.click("#login").await;
}

async fn lookup(ready: &Value, app: &str, token: &str, body: Value) -> Value {
    let apps = &ready["apps"][app];
    let client = TestClient::new(
        Path::new(ready["ca_cert"].as_str().unwrap_or("")),
        Some((
            Path::new(apps["cert"].as_str().unwrap_or("")),
            Path::new(apps["key"].as_str().unwrap_or("")),
        )),
    );
    let url = format!(
        "{}/v1/citizens/lookup",
        ready["gateway_url"].as_str().unwrap_or("")
    );
    let resp = client
        .post(&url, Some(token), &body.to_string())
        .await
        .expect("lookup");
    resp.body
}

fn token(dir: &Path, app: &str, sub: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_popgate"))
        .args(["token", "--dir"])
        .arg(dir)
        .args(["--app", app, "--sub", sub, "--role", "officer"])
        .output()
        .expect("popgate token");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_and_auditors_work_in_a_real_browser() {
    if let Some(why) = browser_missing() {
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("SKIPPED, NOT PASSED: {why}");
        return;
    }
    let demo = start_demo();
    let ready = &demo.ready;
    let console = ready["console_url"].as_str().expect("console_url").to_owned();
    let shots_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&shots_dir).expect("screenshot dir");
    let mut shots = Shots { dir: shots_dir, n: 0 };
    let profile = tempfile::tempdir().expect("profile");
    let downloads = tempfile::tempdir().expect("downloads");
    let b = Driver::start()
        .await
        .browser(profile.path(), downloads.path())
        .await;
    let mut log = Vec::new();

    // Traffic to look at: the health app sees blood types; one of its
    // case references carries markup.
    let id = ready["sample_personal_ids"][0]
        .as_str()
        .expect("sample id")
        .to_owned();
    let yte = token(demo.dir.path(), "y-te", "bacsi-01");
    let before = lookup(
        ready,
        "y-te",
        &yte,
        json!({ "personal_id": id, "purpose": "health-insurance" }),
    )
    .await;
    assert!(before["citizen"].get("blood_type").is_some(), "{before}");
    let hostile = "<script>alert(1)</script>";
    let r = lookup(
        ready,
        "y-te",
        &yte,
        json!({ "personal_id": id, "purpose": "health-insurance", "case_ref": hostile }),
    )
    .await;
    assert!(r["citizen"].is_object(), "{r}");

    // The first admin proposes: a mistake is shown at its line, then the
    // change goes in; approving it is not offered to its author.
    sign_in(&b, &console, account(ready, "qtv-01")).await;
    b.wait_for_text("#who", "Nguyễn Văn An").await;
    // The API's description is linked from every page: the same document.
    let doc = TestClient::new(Path::new(ready["ca_cert"].as_str().unwrap_or("")), None)
        .send(
            http::Request::get(format!("{console}/openapi.yaml"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("openapi");
    assert_eq!(doc.status, 200);
    assert!(
        doc.headers["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("application/yaml"),
        "{:?}",
        doc.headers
    );
    assert!(!b.find_all("a#api-doc[href='/openapi.yaml']").await.is_empty());
    shots.take(&b, "admin-home").await;
    b.click("#nav-policies").await;
    b.find("#versions").await;
    shots.take(&b, "policies").await;
    b.goto(&format!("{console}/policies/propose?file=apps%2Fy-te.toml"))
        .await;
    let original = std::fs::read_to_string(common::policies_dir().join("apps/y-te.toml")).expect("y-te.toml");
    b.type_into("#text", &format!("{original}\nbogus_key = 1\n"))
        .await;
    b.click("#check").await;
    b.wait_for_text("#annotated li.bad", "bogus_key").await;
    shots.take(&b, "proposal-problem").await;
    let changed = original.replace("  \"blood_type\",\n", "");
    assert_ne!(changed, original);
    b.type_into("#text", &changed).await;
    b.type_into("#proposal-reason", hostile).await;
    b.click("#submit").await;
    b.find("#own-proposal").await;
    assert!(
        b.find_all("#approve").await.is_empty(),
        "approve is offered to the proposal's author"
    );
    assert_eq!(b.text("#reason").await, hostile, "the reason is shown as text");
    assert!(
        !b.source().await.contains(hostile),
        "the reason reached the page unescaped"
    );
    let version_url = b.url().await;
    shots.take(&b, "own-proposal").await;
    log.extend(b.console_log().await);
    b.click("#logout").await;

    // The second admin sees the diff and the replay, and approves.
    sign_in(&b, &console, account(ready, "qtv-02")).await;
    b.find("#who").await;
    b.goto(&version_url).await;
    let diff = b.text("#diff").await;
    assert!(diff.contains("blood_type"), "{diff}");
    assert!(
        !b.find_all("#diff li.del").await.is_empty(),
        "a removed field is marked as removed"
    );
    let replay = b.text("#replay").await;
    assert!(
        replay.contains("y-te") && replay.contains("blood_type"),
        "{replay}"
    );
    shots.take(&b, "review-diff-replay").await;
    b.click("#approve").await;
    b.wait_for_text("#state", "đang áp dụng").await;
    log.extend(b.console_log().await);
    b.click("#logout").await;

    // The gateway answers by the approved version.
    let after = lookup(
        ready,
        "y-te",
        &yte,
        json!({ "personal_id": id, "purpose": "health-insurance" }),
    )
    .await;
    assert!(after["citizen"].is_object(), "{after}");
    assert!(after["citizen"].get("blood_type").is_none(), "{after}");

    // The auditor: charts, a search by personal ID, an event, the CSV, a
    // citizen's report; in English too.
    sign_in(&b, &console, account(ready, "kiemtra-01")).await;
    b.find("#chart-accesses svg").await;
    shots.take(&b, "auditor-home").await;
    // A forged form (another site posting with the official's cookie, but
    // without the page's CSRF token) is refused before anything is done.
    let session = b.cookie("popgate_session").await.expect("session cookie");
    let forged = TestClient::new(Path::new(ready["ca_cert"].as_str().unwrap_or("")), None)
        .send(
            http::Request::post(format!("{console}/audit/holds"))
                .header("cookie", format!("popgate_session={session}"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    b"case_ref=HS-2026-000999&until=2027-01-01&reason=x&legal_basis=y",
                )))
                .expect("request"),
        )
        .await
        .expect("forged post");
    assert_eq!(forged.status, 403);
    b.click("#nav-holds").await;
    assert!(
        !b.text("#holds").await.contains("HS-2026-000999"),
        "the forged form made a hold"
    );
    b.click("#nav-search").await;
    b.type_into("#personal_id", &id).await;
    b.click("#do-search").await;
    b.find("#results a.event").await;
    assert!(!b.url().await.contains(&id), "a personal ID in a URL");
    let results = b.text("#results").await;
    assert!(
        results.contains(hostile),
        "the case reference is shown as text: {results}"
    );
    assert!(
        !b.source().await.contains(hostile),
        "the case reference reached the page unescaped"
    );
    shots.take(&b, "search").await;
    b.click("#export").await;
    let csv = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = std::fs::read_dir(downloads.path())
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "csv"));
            // The file may be there before Chromium has written all of it.
            let text = found
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default();
            if text.lines().count() >= 3 || Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert!(csv.lines().count() >= 3, "{csv}");
    b.click("#results a.event").await;
    b.find("#chain").await;
    assert!(!b.text("#seq").await.is_empty());
    shots.take(&b, "event").await;
    b.click("#lang").await;
    b.wait_for_text("h1", "Audit event").await;
    b.click("#lang").await;
    b.click("#nav-citizen").await;
    b.type_into("#citizen-id", &id).await;
    b.click("#open-report").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !b.source().await.contains("THÔNG BÁO") {
        assert!(Instant::now() < deadline, "no letter: {}", b.source().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(b.source().await.contains("/static/letter.css"));
    shots.take(&b, "citizen-report").await;
    log.extend(b.console_log().await);

    // An officer is refused the console.
    sign_in(&b, &console, account(ready, "canbo-01")).await;
    b.wait_for_text(".notice.error", "chỉ dành cho").await;
    assert!(b.find_all("#who").await.is_empty());
    shots.take(&b, "officer-refused").await;
    log.extend(b.console_log().await);

    assert!(
        defects(&log).is_empty(),
        "the browser reported: {:#?}",
        defects(&log)
    );
    b.quit().await;
}
