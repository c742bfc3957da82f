//! A W3C WebDriver client for the console's browser test: the dozen calls
//! the test makes (session, navigate, find, click, type, read, screenshot,
//! browser log), as JSON over HTTP to a local ChromeDriver. (A crate such
//! as fantoccini would bring some 45 crates — url, icu, webdriver — into
//! the build for these.)
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// The key of an element reference in W3C WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A ChromeDriver process on a loopback port, killed on drop.
pub struct Driver {
    child: Child,
    pub url: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser session.
pub struct Browser {
    driver: Driver,
    session: String,
}

impl Driver {
    pub async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(CHROMEDRIVER)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".to_owned()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: Client::builder(TokioExecutor::new()).build_http(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(v) = driver.send("GET", "/status", None).await {
                if v["value"]["ready"] == true {
                    return driver;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .map_err(|e| e.to_string())?;
        let resp = self.http.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(v)
        } else {
            Err(format!("{method} {path}: {status}: {}", v["value"]["message"]))
        }
    }

    /// A headless Chromium session, started as this machine's Chromium
    /// must be (no sandbox as root, no background networking); downloads
    /// go to `downloads`.
    pub async fn browser(self, profile: &Path, downloads: &Path) -> Browser {
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "acceptInsecureCerts": true,
                "goog:loggingPrefs": { "browser": "ALL" },
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                        "--window-size=1280,900",
                        format!("--user-data-dir={}", profile.display()),
                    ],
                    "prefs": {
                        "download.default_directory": downloads.display().to_string(),
                        "download.prompt_for_download": false,
                    },
                },
            }}
        });
        let v = self
            .send("POST", "/session", Some(caps))
            .await
            .expect("a browser session");
        let session = v["value"]["sessionId"].as_str().expect("session id").to_owned();
        let browser = Browser {
            driver: self,
            session,
        };
        // Headless Chromium saves downloads only when told so.
        let _ = browser
            .cmd(
                "POST",
                "/chromium/send_command",
                json!({ "cmd": "Page.setDownloadBehavior", "params": { "behavior": "allow", "downloadPath": downloads.display().to_string() } }),
            )
            .await;
        browser
    }
}

impl Browser {
    async fn cmd(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        let body = if method == "GET" { None } else { Some(body) };
        self.driver
            .send(method, &format!("/session/{}{path}", self.session), body)
            .await
            .map(|v| v["value"].clone())
    }

    pub async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url }))
            .await
            .expect("navigate");
    }

    pub async fn url(&self) -> String {
        self.cmd("GET", "/url", json!({}))
            .await
            .expect("url")
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    pub async fn source(&self) -> String {
        self.cmd("GET", "/source", json!({}))
            .await
            .expect("source")
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    pub async fn title(&self) -> String {
        self.cmd("GET", "/title", json!({}))
            .await
            .expect("title")
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Every element matching `css` now.
    pub async fn find_all(&self, css: &str) -> Vec<String> {
        self.cmd(
            "POST",
            "/elements",
            json!({ "using": "css selector", "value": css }),
        )
        .await
        .map(|v| {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e[ELEMENT].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
    }

    /// The first element matching `css`, waiting up to 15 s for it.
    pub async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(e) = self.find_all(css).await.into_iter().next() {
                return e;
            }
            if Instant::now() > deadline {
                panic!(
                    "no element '{css}' on {} :\n{}",
                    self.url().await,
                    self.source().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the first element matching `css` (found again if the page
    /// replaced it meanwhile).
    pub async fn click(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let e = self.find(css).await;
            match self.cmd("POST", &format!("/element/{e}/click"), json!({})).await {
                Ok(_) => return,
                Err(error) if error.contains("stale element") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(error) => panic!("click {css}: {error}"),
            }
        }
    }

    /// Clears the field `css` and types `text` into it.
    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd("POST", &format!("/element/{e}/clear"), json!({}))
            .await
            .expect("clear");
        self.cmd("POST", &format!("/element/{e}/value"), json!({ "text": text }))
            .await
            .expect("type");
    }

    /// The text of the first element matching `css` (found again if the
    /// page replaced it meanwhile).
    pub async fn text(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let e = self.find(css).await;
            match self.cmd("GET", &format!("/element/{e}/text"), json!({})).await {
                Ok(v) => return v.as_str().unwrap_or("").to_owned(),
                Err(error) if error.contains("stale element") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(error) => panic!("text of {css}: {error}"),
            }
        }
    }

    /// Waits (up to 15 s) until the text of `css` contains `needle`, as a
    /// page that is still loading gets there; the text.
    pub async fn wait_for_text(&self, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text = self.text(css).await;
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "'{css}' says {text:?}, not {needle:?}, on {}",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let v = self
            .cmd("GET", "/screenshot", json!({}))
            .await
            .expect("screenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or(""))
            .expect("base64 PNG");
        std::fs::write(path, png).expect("write screenshot");
    }

    /// The browser's console messages since the last call (level, text).
    pub async fn console_log(&self) -> Vec<(String, String)> {
        self.cmd("POST", "/se/log", json!({ "type": "browser" }))
            .await
            .map(|v| {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        (
                            e["level"].as_str().unwrap_or("").to_owned(),
                            e["message"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The value of the browser's cookie `name` (HttpOnly ones included).
    pub async fn cookie(&self, name: &str) -> Option<String> {
        self.cmd("GET", &format!("/cookie/{name}"), json!({}))
            .await
            .ok()
            .and_then(|v| v["value"].as_str().map(str::to_owned))
    }

    pub async fn delete_cookies(&self) {
        let _ = self.cmd("DELETE", "/cookie", json!({})).await;
    }

    pub async fn quit(self) {
        let _ = self
            .driver
            .send("DELETE", &format!("/session/{}", self.session), None)
            .await;
    }
}
