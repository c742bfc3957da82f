//! The national population database simulator (`popgate sim`).
//!
//! It answers the three C06 operations that provincial integrators call, in
//! their shape (Vietnamese keys), over mTLS that requires the province's
//! client certificate from the national CA. The population is synthetic and
//! deterministic for a seed (see [`population`]). Latency, jitter, errors and
//! stalls are injected on request so that tests and benchmarks can exercise
//! the gateway's handling of a slow or failing upstream.
//!
//! The simulator must never be pointed at, or mistaken for, real data: every
//! citizen it returns is generated.

pub mod idp;
pub mod names;
pub mod population;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use hyper::body::Incoming;
use hyper::{Request, Response};
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::personal_id::PersonalId;
use crate::server::{self, json_response, Body, Peer, ServerLimits};
use population::Population;

/// Paths of the three operations.
pub const PATH_LOOKUP: &str = "/c06/v1/TraCuuThongTinCongDan";
pub const PATH_VERIFY: &str = "/c06/v1/XacThucThongTinCongDan";
pub const PATH_HOUSEHOLD: &str = "/c06/v1/CungCapThongTinHoGiaDinh";

const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// Injected behaviour of the simulated link.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Base latency added to every answer.
    pub latency: Duration,
    /// Uniform extra latency in [0, jitter).
    pub jitter: Duration,
    /// Fraction (0–1) of requests answered with HTTP 500.
    pub error_rate: f64,
    /// Fraction (0–1) of requests that stall for `stall` before answering.
    pub stall_rate: f64,
    pub stall: Duration,
}

#[derive(Debug, Clone)]
pub struct SimSettings {
    pub seed: u64,
    pub population: u32,
    pub province: u16,
    pub faults: Faults,
    /// The share of residences coded as before the 2025 reform (0 to 1).
    pub legacy_address_share: f64,
}

/// The simulator's TLS from a development PKI: its server certificate, and
/// only client certificates from the national CA.
pub fn server_tls(layout: &crate::tls::pki::PkiLayout) -> Result<rustls::ServerConfig, crate::tls::TlsError> {
    crate::tls::mutual_server_config(&crate::tls::MutualServerFiles {
        cert: &layout.sim_cert(),
        key: &layout.sim_key(),
        client_ca: &layout.national_ca_cert(),
        allow_tls12: false,
        alpn: crate::tls::ALPN_H2_H1,
        crls: Vec::new(),
    })
}

/// How many connections [`Simulator::connections`] reports at most.
const REMEMBERED_CONNECTIONS: usize = 4096;

/// The simulator's state, shared by its connections.
pub struct Simulator {
    population: Population,
    faults: Faults,
    served: AtomicU64,
    /// Each connection a request came over, with its HTTP version (the
    /// first [`REMEMBERED_CONNECTIONS`]).
    connections: std::sync::Mutex<std::collections::HashMap<std::net::SocketAddr, http::Version>>,
}

impl Simulator {
    pub fn new(settings: &SimSettings) -> Simulator {
        Simulator {
            population: Population::new(settings.seed, settings.population, settings.province)
                .with_legacy_share(settings.legacy_address_share),
            faults: settings.faults.clone(),
            served: AtomicU64::new(0),
            connections: Default::default(),
        }
    }

    pub fn population(&self) -> &Population {
        &self.population
    }

    /// Requests answered so far (any outcome).
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// The connections requests have come over so far, and their HTTP
    /// versions (how a client's pool is seen from the server).
    pub fn connections(&self) -> Vec<(std::net::SocketAddr, http::Version)> {
        let seen = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter().map(|(a, v)| (*a, *v)).collect()
    }

    /// Serves on `listener` with `tls` (which must require client certs).
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        shutdown: watch::Receiver<bool>,
    ) {
        let handler = move |req: Request<Incoming>, peer: Arc<Peer>| {
            let sim = self.clone();
            {
                let mut seen = sim.connections.lock().unwrap_or_else(|p| p.into_inner());
                if seen.len() < REMEMBERED_CONNECTIONS {
                    seen.entry(peer.addr).or_insert(req.version());
                }
            }
            async move { sim.handle(req).await }
        };
        let tls = Arc::new(arc_swap::ArcSwap::from_pointee(crate::tls::ServerTls {
            config: tls,
            revocations: Default::default(),
        }));
        server::serve(listener, Some(tls), ServerLimits::default(), handler, shutdown).await;
    }

    /// Starts a simulator with `settings` on a free loopback port, with the
    /// TLS of the development PKI in `layout`: what the demo, the tests and
    /// the benchmarks each bring up.
    pub async fn spawn(
        settings: &SimSettings,
        layout: &crate::tls::pki::PkiLayout,
    ) -> anyhow::Result<RunningSimulator> {
        Simulator::spawn_with_tls(settings, server_tls(layout)?).await
    }

    /// As [`Simulator::spawn`], with a TLS config of the caller's.
    pub async fn spawn_with_tls(
        settings: &SimSettings,
        tls: rustls::ServerConfig,
    ) -> anyhow::Result<RunningSimulator> {
        let sim = Arc::new(Simulator::new(settings));
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(sim.clone().run(listener, Arc::new(tls), stop_rx));
        Ok(RunningSimulator {
            sim,
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }
}

/// A simulator serving on a loopback port until [`RunningSimulator::stop`]
/// (or its drop, which stops accepting without waiting).
pub struct RunningSimulator {
    pub sim: Arc<Simulator>,
    pub addr: std::net::SocketAddr,
    stop: Option<watch::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningSimulator {
    /// The base URL the gateway's `upstream.url` takes.
    pub fn url(&self) -> http::Uri {
        let text = format!("https://{}", self.addr);
        // An IP address and a port always make a valid URI.
        text.parse().unwrap_or_default()
    }

    /// Stops accepting and waits for open connections to drain.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RunningSimulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
    }
}

impl Simulator {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        self.served.fetch_add(1, Ordering::Relaxed);
        if req.method() != Method::POST {
            return c06_error(StatusCode::METHOD_NOT_ALLOWED, "405", "Chỉ hỗ trợ POST");
        }
        let path = req.uri().path().to_owned();
        let body = match server::read_body(req, MAX_REQUEST_BYTES).await {
            Ok(b) => b,
            Err(_) => return c06_error(StatusCode::PAYLOAD_TOO_LARGE, "413", "Yêu cầu quá lớn"),
        };
        self.inject_delay().await;
        if self.faults.error_rate > 0.0 && rand::thread_rng().gen_bool(self.faults.error_rate.min(1.0)) {
            return c06_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "500",
                "Lỗi hệ thống (mô phỏng)",
            );
        }
        let request: C06Request = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(_) => return c06_error(StatusCode::BAD_REQUEST, "400", "Dữ liệu yêu cầu không hợp lệ"),
        };
        let Ok(id) = PersonalId::parse(&request.so_dinh_danh, current_year()) else {
            return c06_error(StatusCode::BAD_REQUEST, "401", "Số định danh không hợp lệ");
        };
        let Some(citizen) = self.population.find(&id) else {
            return c06_error(StatusCode::NOT_FOUND, "404", "Không tìm thấy công dân");
        };
        let ma_yeu_cau = request.ma_yeu_cau.unwrap_or_default();
        match path.as_str() {
            PATH_LOOKUP => json_response(
                StatusCode::OK,
                &json!({
                    "MaYeuCau": ma_yeu_cau,
                    "ThoiDiemDuLieu": data_timestamp(),
                    "CongdanCollection": { "CongDan": [citizen.to_c06()] },
                }),
            ),
            PATH_VERIFY => {
                let name_matches = request
                    .ho_va_ten
                    .as_deref()
                    .is_some_and(|n| normalise_name(n) == normalise_name(&citizen.full_name()));
                let dob_matches = request
                    .ngay_thang_nam_sinh
                    .as_deref()
                    .is_some_and(|d| d.replace('-', "") == citizen.date_of_birth().replace('-', ""));
                json_response(
                    StatusCode::OK,
                    &json!({ "MaYeuCau": ma_yeu_cau, "TonTai": name_matches && dob_matches }),
                )
            }
            PATH_HOUSEHOLD => {
                let members = self.population.household(&citizen);
                let head = members.first().map(|m| m.to_c06().clone());
                let rest: Vec<Value> = members.iter().skip(1).map(|m| m.to_c06().clone()).collect();
                json_response(
                    StatusCode::OK,
                    &json!({
                        "MaYeuCau": ma_yeu_cau,
                        "ThoiDiemDuLieu": data_timestamp(),
                        "HoGiaDinh": {
                            "SoSoHoKhau": citizen.to_c06()["SoSoHoKhau"],
                            "ChuHo": head,
                            "ThanhVien": rest,
                        },
                    }),
                )
            }
            _ => c06_error(StatusCode::NOT_FOUND, "404", "Không có dịch vụ này"),
        }
    }

    async fn inject_delay(&self) {
        let f = &self.faults;
        let mut delay = f.latency;
        if !f.jitter.is_zero() {
            delay += f.jitter.mul_f64(rand::thread_rng().gen::<f64>());
        }
        if f.stall_rate > 0.0 && rand::thread_rng().gen_bool(f.stall_rate.min(1.0)) {
            delay += f.stall;
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

/// The request keys common to the three operations; others are ignored as
/// the national service does.
#[derive(Debug, Deserialize)]
struct C06Request {
    #[serde(rename = "MaYeuCau")]
    ma_yeu_cau: Option<String>,
    #[serde(rename = "SoDinhDanh")]
    so_dinh_danh: String,
    #[serde(rename = "HoVaTen")]
    ho_va_ten: Option<String>,
    #[serde(rename = "NgayThangNamSinh")]
    ngay_thang_nam_sinh: Option<String>,
}

fn c06_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json_response(status, &json!({ "MaLoi": code, "MoTaLoi": message }))
}

/// Case and spacing do not matter when names are compared.
fn normalise_name(name: &str) -> String {
    name.split_whitespace()
        .map(|w| w.to_lowercase())
        .collect::<Vec<_>>()
        .join(" ")
}

fn current_year() -> i32 {
    time::OffsetDateTime::now_utc().year()
}

/// The as-of time of the data, in Vietnam's time zone.
fn data_timestamp() -> String {
    let offset = time::UtcOffset::from_hms(7, 0, 0).unwrap_or(time::UtcOffset::UTC);
    time::OffsetDateTime::now_utc()
        .to_offset(offset)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
