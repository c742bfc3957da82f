//! Test builder: a real gateway on 127.0.0.1:0 with a fresh development PKI,
//! a real simulator over mTLS and a private PostgreSQL cluster per test.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use popgate::config::Config;
use popgate::gateway::{Gateway, StartOptions};
use popgate::sim::{Faults, RunningSimulator, SimSettings, Simulator};
use popgate::tls;
use popgate::tls::https_client::{https_client, ClientOptions, HttpVersions, HttpsClient};
use popgate::tls::pki::{self, DevPki, SAMPLE_APPS};

pub const POPULATION: u32 = 20_000;

/// A PostgreSQL cluster of the test's own, outside any gateway (for tests
/// that stop and restart it), provisioned; keep the directory alive with it.
pub async fn external_pg() -> (popgate::warehouse::embedded::EmbeddedPostgres, tempfile::TempDir) {
    let home = tempfile::tempdir().expect("tempdir");
    let pg = popgate::warehouse::embedded::EmbeddedPostgres::start_provisioned(home.path())
        .await
        .expect("pg");
    (pg, home)
}

/// The simulator the tests use: seed 11, province 79, `POPULATION` people.
pub fn sim_settings(faults: Faults) -> SimSettings {
    SimSettings {
        seed: 11,
        population: POPULATION,
        province: 79,
        faults,
        // Residences coded both ways, as the national database answers.
        legacy_address_share: 0.15,
    }
}

/// Points a config at an external cluster.
pub fn use_warehouse(config: &mut Config, pg: &popgate::warehouse::embedded::EmbeddedPostgres) {
    config.warehouse.url = Some(pg.gateway_url());
    config.warehouse.admin_url = Some(pg.admin_url());
}

pub type RawTls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub pki: DevPki,
    pub sim: Arc<Simulator>,
    pub sim_addr: SocketAddr,
    simulator: RunningSimulator,
    pub gateway: Option<Gateway>,
    /// The config the gateway runs with.
    pub config: Config,
}

pub fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

impl TestEnv {
    pub async fn start() -> TestEnv {
        Self::start_with(|_| {}).await
    }

    /// Starts with the default test config changed by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestEnv {
        Self::start_full(adjust, StartOptions::default()).await
    }

    /// Starts with a changed config and test seams.
    pub async fn start_full(adjust: impl FnOnce(&mut Config), options: StartOptions) -> TestEnv {
        Self::start_prepared(|_, c| adjust(c), options).await
    }

    /// Starts after `prepare` has seen the fresh PKI and changed the config
    /// (for files that must be signed by the test CAs before start).
    pub async fn start_prepared(
        prepare: impl FnOnce(&DevPki, &mut Config),
        options: StartOptions,
    ) -> TestEnv {
        Self::start_on_faulty_link(Faults::default(), prepare, options).await
    }

    /// Starts with a simulator that misbehaves as `faults` says.
    pub async fn start_on_faulty_link(
        faults: Faults,
        prepare: impl FnOnce(&DevPki, &mut Config),
        options: StartOptions,
    ) -> TestEnv {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = pki::init(&dir.path().join("certs"), SAMPLE_APPS, false).expect("pki");
        let l = &pki.layout;
        let simulator = Simulator::spawn(&sim_settings(faults), l)
            .await
            .expect("simulator");
        let mut config = Config::development(l, simulator.url(), policies_dir(), dir.path().join("data"));
        config.gateway.instance_id = "test-1".into();
        config.upstream.timeout = std::time::Duration::from_secs(3);
        config.upstream.connect_timeout = std::time::Duration::from_secs(1);
        config.tokens.jwks_refetch = std::time::Duration::ZERO;
        prepare(&pki, &mut config);
        let gateway = Gateway::start_with(&config, options)
            .await
            .expect("gateway starts");
        TestEnv {
            dir,
            pki,
            sim: simulator.sim.clone(),
            sim_addr: simulator.addr,
            simulator,
            gateway: Some(gateway),
            config,
        }
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{}", self.gateway().gateway_addr, path)
    }

    /// An HTTPS client presenting `app`'s certificate.
    pub fn client(&self, app: &str) -> TestClient {
        let l = &self.pki.layout;
        TestClient::new(&l.apps_ca_cert(), Some((&l.app_cert(app), &l.app_key(app))))
    }

    /// A raw TLS connection to the gateway with `app`'s certificate,
    /// offering `alpn` (for tests that speak HTTP by hand).
    pub async fn raw_tls(&self, app: &str, alpn: &[u8]) -> RawTls {
        let l = &self.pki.layout;
        let mut config = tls::mutual_client_config(&l.apps_ca_cert(), &l.app_cert(app), &l.app_key(app), &[])
            .expect("tls");
        config.alpn_protocols = vec![alpn.to_vec()];
        let tcp = tokio::net::TcpStream::connect(self.gateway().gateway_addr)
            .await
            .expect("tcp");
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(
                rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name"),
                tcp,
            )
            .await
            .expect("handshake")
    }

    /// The config of a second instance `test-2` on this one's warehouse,
    /// with the gateway's role only and a data directory of its own,
    /// trusting this instance's signatures of policy versions.
    pub fn second_instance_config(&self) -> Config {
        let mut second = self.config.clone();
        second.warehouse.url = Some(self.gateway().warehouse_url.clone());
        second.warehouse.admin_url = None;
        second.gateway.instance_id = "test-2".into();
        second.gateway.data_dir = self.dir.path().join("second");
        let key = popgate::audit::checkpoint::Signer::from_file(&self.pki.layout.audit_signing_key())
            .expect("key")
            .public_key();
        let trusted = self.dir.path().join("trusted-keys.json");
        std::fs::write(&trusted, serde_json::json!({ "test-1": [key] }).to_string()).expect("keys");
        second.audit.trusted_keys = Some(trusted);
        second
    }

    /// A demo-IdP token for `officer` of `app` with role `officer`.
    pub fn token(&self, app: &str, officer: &str) -> String {
        self.token_with(app, officer, &["officer"], None)
    }

    pub fn token_with(&self, app: &str, officer: &str, roles: &[&str], unit: Option<u32>) -> String {
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        pki::mint_demo_token(&self.pki.layout, app, officer, &roles, unit, 600).expect("token")
    }

    /// POSTs `body` to `path` as officer "officer-1" of `app`.
    pub async fn call(&self, app: &str, path: &str, body: &str) -> TestResponse {
        let token = self.token(app, "officer-1");
        self.client(app)
            .post(&self.url(path), Some(&token), body)
            .await
            .expect("response")
    }

    /// Calls `path` as `officer` of `app` with `role`: POST with `body`, or
    /// GET when `body` is `None`.
    pub async fn call_as(
        &self,
        app: &str,
        officer: &str,
        role: &str,
        path: &str,
        body: Option<&str>,
    ) -> TestResponse {
        let token = self.token_with(app, officer, &[role], None);
        let client = self.client(app);
        match body {
            Some(b) => client
                .post(&self.url(path), Some(&token), b)
                .await
                .expect("response"),
            None => client
                .get(&self.url(path), Some(&token), &[])
                .await
                .expect("response"),
        }
    }

    /// A simulated citizen living in (or outside) province 79, whose
    /// residence is coded in 2025 units (tests that read the record's codes
    /// as they are; `tests/addresses.rs` takes the old-coded ones).
    pub fn citizen(&self, inside: bool) -> popgate::sim::population::Citizen {
        let p = self.sim.population();
        (0..POPULATION)
            .map(|i| p.citizen(i))
            .find(|c| (c.residence_province() == 79) == inside && !c.legacy_coded())
            .expect("a citizen")
    }

    /// Anchors the journal and waits until the warehouse holds every event.
    pub async fn settle(&self) {
        let g = self.gateway();
        g.journal.checkpoint().await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        // Every event delivered, and the checkpoint that anchors them.
        let anchored = g
            .journal
            .state
            .checkpoint_seq
            .load(std::sync::atomic::Ordering::Acquire);
        while g.journal.state.backlog() > 0
            || g.journal
                .state
                .delivered_checkpoint
                .load(std::sync::atomic::Ordering::Acquire)
                < anchored
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the shipper did not catch up"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The newest signed checkpoint this gateway keeps outside the
    /// database, as a verifier's anchor.
    pub fn anchor(&self) -> Vec<popgate::audit::checkpoint::Checkpoint> {
        self.gateway()
            .journal
            .state
            .latest_checkpoint
            .lock()
            .expect("lock")
            .iter()
            .cloned()
            .collect()
    }

    /// GET `path` on the ops listener: status and body text.
    pub async fn ops_get(&self, path: &str) -> (u16, String) {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<Full<Bytes>>();
        let url = format!("http://{}{path}", self.gateway().ops_addr);
        let resp = client.get(url.parse().expect("uri")).await.expect("get");
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A superuser connection to the warehouse.
    pub async fn admin_db(&self) -> tokio_postgres::Client {
        popgate::warehouse::connect(&self.gateway().warehouse_admin_url)
            .await
            .expect("admin connection")
    }

    pub async fn stop_sim(&mut self) {
        self.simulator.stop().await;
    }

    pub async fn stop(mut self) {
        self.stop_sim().await;
        if let Some(g) = self.gateway.take() {
            g.stop().await;
        }
    }
}

pub struct TestClient {
    client: HttpsClient,
}

pub struct TestResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Value,
}

impl TestClient {
    pub fn new(ca: &Path, identity: Option<(&Path, &Path)>) -> TestClient {
        Self::with_versions(ca, identity, true, true)
    }

    pub fn with_versions(ca: &Path, identity: Option<(&Path, &Path)>, h1: bool, h2: bool) -> TestClient {
        let config = match identity {
            Some((cert, key)) => tls::mutual_client_config(ca, cert, key, &[]).expect("client tls"),
            None => tls::server_auth_client_config(ca).expect("client tls"),
        };
        let versions = match (h1, h2) {
            (true, true) => HttpVersions::Both,
            (false, true) => HttpVersions::Http2,
            _ => HttpVersions::Http1,
        };
        TestClient {
            client: https_client(
                config,
                &ClientOptions {
                    versions,
                    ..ClientOptions::default()
                },
            ),
        }
    }

    pub async fn post(&self, url: &str, token: Option<&str>, body: &str) -> Result<TestResponse, String> {
        let mut req = http::Request::post(url).header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        self.send(
            req.body(Full::new(Bytes::from(body.to_owned())))
                .expect("request"),
        )
        .await
    }

    pub async fn get(
        &self,
        url: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<TestResponse, String> {
        let mut req = http::Request::get(url);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(Full::new(Bytes::new())).expect("request"))
            .await
    }

    /// POSTs and returns the status and the raw body text (for exports).
    pub async fn post_raw(
        &self,
        url: &str,
        token: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (u16, http::HeaderMap, String) {
        let mut req = http::Request::post(url)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .client
            .request(
                req.body(Full::new(Bytes::from(body.to_owned())))
                    .expect("request"),
            )
            .await
            .expect("response");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, headers, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Sends `req`; a request still unanswered after a minute is an error,
    /// so that a request the client never wakes again (seen once in
    /// `tests/crash.rs`, after a gateway was killed) fails rather than
    /// hanging the test.
    pub async fn send(&self, req: http::Request<Full<Bytes>>) -> Result<TestResponse, String> {
        let resp = tokio::time::timeout(std::time::Duration::from_secs(60), self.client.request(req))
            .await
            .map_err(|_| "no answer within 60 s".to_owned())?
            .map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(TestResponse {
            status,
            headers,
            body,
        })
    }
}

/// A receiver on `listener` (over TLS when `tls` is given) that answers
/// every POST with `{}` and hands on the JSON bodies POSTed to `path`: a
/// stand-in for a security operations webhook or a trace collector.
pub fn json_receiver(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    path: &'static str,
) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (tx, tls) = (tx.clone(), tls.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let wanted = req.uri().path() == path;
                            let bytes = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            if let Some(v) = wanted
                                .then(|| serde_json::from_slice::<Value>(&bytes).ok())
                                .flatten()
                            {
                                let _ = tx.send(v);
                            }
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"{}"),
                            )))
                        }
                    });
                let http = hyper::server::conn::http1::Builder::new();
                let _ = match tls {
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(stream) => {
                            http.serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await
                        }
                        Err(_) => return,
                    },
                    None => {
                        http.serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                            .await
                    }
                };
            });
        }
    });
    rx
}
