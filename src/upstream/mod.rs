//! The national population database, behind an adapter trait so that the
//! real protocol can be plugged in beside the simulator's. [`HttpNationalDb`]
//! speaks the C06 JSON operations over mTLS with the province's client
//! certificate: through hyper's pooled client, one HTTP/2 connection when
//! the server offers h2 (keep-alive HTTP/1.1 otherwise); or, when
//! `upstream.http1_connections` is set, HTTP/1.1 over a pool of at most that
//! many keep-alive connections (`pool.rs`).
//!
//! Answers are size-capped before they are parsed and never logged.

pub mod breaker;
mod pool;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::Full;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::personal_id::PersonalId;
use crate::sim::{PATH_HOUSEHOLD, PATH_LOOKUP, PATH_VERIFY};
use crate::tls::https_client::{https_client, ClientOptions, HttpsClient};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One question to the national database.
#[derive(Debug, Clone)]
pub struct UpstreamQuery {
    pub request_id: String,
    /// The officer on whose behalf the province asks (`MaCanBo`).
    pub officer: String,
    pub personal_id: PersonalId,
    pub kind: QueryKind,
}

#[derive(Debug, Clone)]
pub enum QueryKind {
    Lookup,
    Verify {
        full_name: String,
        date_of_birth: String,
    },
    Household,
}

/// An answer with the evidence of what was received.
#[derive(Debug, Clone)]
pub struct Answered {
    pub answer: UpstreamAnswer,
    /// SHA-256 (hex) of the answer's body as received.
    pub digest: String,
}

/// What the national database answered. Citizen records are kept as the
/// JSON text of their `CongDan` objects, which the field catalog reads.
#[derive(Debug, Clone)]
pub enum UpstreamAnswer {
    Citizen {
        record: Box<RawValue>,
        as_of: Option<String>,
    },
    Match(bool),
    Household {
        head: Box<RawValue>,
        members: Vec<Box<RawValue>>,
        as_of: Option<String>,
    },
}

/// The envelope of the three C06 answers, read in one pass with the
/// records inside kept as JSON text. A lookup's list of citizens must have
/// its shape; the other members are kept as text, so that a value of an
/// unexpected type reads as absent.
#[derive(Deserialize)]
struct C06Answer<'a> {
    #[serde(rename = "ThoiDiemDuLieu", borrow, default)]
    as_of: Option<&'a RawValue>,
    #[serde(rename = "CongdanCollection", borrow, default)]
    collection: Option<Citizens<'a>>,
    #[serde(rename = "TonTai", borrow, default)]
    exists: Option<&'a RawValue>,
    #[serde(rename = "HoGiaDinh", borrow, default)]
    household: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Citizens<'a> {
    #[serde(rename = "CongDan", borrow, default)]
    list: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct Household<'a> {
    #[serde(rename = "ChuHo", borrow, default)]
    head: Option<&'a RawValue>,
    #[serde(rename = "ThanhVien", borrow, default)]
    members: Option<&'a RawValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("the national database has no such citizen")]
    NotFound,
    #[error("the national database did not answer in time")]
    Timeout,
    #[error("the national database failed: {0}")]
    Failed(String),
}

/// The adapter every national-database client implements.
pub trait NationalDb: Send + Sync {
    fn query(&self, q: UpstreamQuery) -> BoxFuture<'_, Result<Answered, UpstreamError>>;
}

/// Settings of the HTTP adapter.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub base_url: Uri,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_response_bytes: usize,
    /// `MaDVC`: the province's service code at the national database.
    pub service_code: String,
    /// `MaTichHop`: the integration code issued to the province.
    pub integration_code: String,
    /// HTTP/1.1 over at most this many connections instead of HTTP/2.
    pub http1_connections: Option<std::num::NonZeroUsize>,
}

/// The C06 JSON-over-HTTPS client.
pub struct HttpNationalDb {
    transport: Transport,
    settings: HttpSettings,
    budget: RetryBudget,
    /// The three operations' addresses, built once.
    uris: OperationUris,
}

/// How queries reach the national database.
enum Transport {
    /// hyper's pooled client: one HTTP/2 connection when offered.
    Shared(HttpsClient),
    /// HTTP/1.1 over a bounded number of connections.
    Http1(pool::Http1Pool),
}

struct OperationUris {
    lookup: Uri,
    household: Uri,
    verify: Uri,
}

impl OperationUris {
    fn new(base: &Uri) -> Result<OperationUris, http::uri::InvalidUri> {
        let base = base.to_string();
        let at = |path: &str| format!("{}{path}", base.trim_end_matches('/')).parse::<Uri>();
        Ok(OperationUris {
            lookup: at(PATH_LOOKUP)?,
            household: at(PATH_HOUSEHOLD)?,
            verify: at(PATH_VERIFY)?,
        })
    }
}

/// Retries allowed as a share of requests: each request earns a tenth of a
/// retry, up to ten saved, so retries stay near 10 % of traffic and never
/// multiply the load on a national database that is struggling.
#[derive(Debug)]
pub struct RetryBudget {
    tokens: std::sync::Mutex<f64>,
}

const RETRY_SHARE: f64 = 0.1;
const RETRY_RESERVE: f64 = 10.0;

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            tokens: std::sync::Mutex::new(1.0),
        }
    }
}

impl RetryBudget {
    pub fn deposit(&self) {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        *t = (*t + RETRY_SHARE).min(RETRY_RESERVE);
    }

    /// Takes one retry if the budget has it.
    pub fn withdraw(&self) -> bool {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if *t >= 1.0 {
            *t -= 1.0;
            true
        } else {
            false
        }
    }
}

impl HttpNationalDb {
    pub fn new(tls: rustls::ClientConfig, settings: HttpSettings) -> anyhow::Result<HttpNationalDb> {
        let uris = OperationUris::new(&settings.base_url)
            .map_err(|e| anyhow::anyhow!("national database address {}: {e}", settings.base_url))?;
        let transport = match settings.http1_connections {
            Some(n) => Transport::Http1(
                pool::Http1Pool::new(tls, &settings.base_url, n, settings.connect_timeout)
                    .map_err(|e| anyhow::anyhow!("national database address {}: {e}", settings.base_url))?,
            ),
            None => Transport::Shared(https_client(
                tls,
                &ClientOptions {
                    connect_timeout: Some(settings.connect_timeout),
                    ..ClientOptions::default()
                },
            )),
        };
        Ok(HttpNationalDb {
            transport,
            settings,
            budget: RetryBudget::default(),
            uris,
        })
    }

    async fn post(&self, uri: &Uri, body: Bytes) -> Result<(StatusCode, Bytes), UpstreamError> {
        let req = Request::post(uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| UpstreamError::Failed(format!("bad request: {e}")))?;
        let exchange = self.transport.exchange(req, self.settings.max_response_bytes);
        tokio::time::timeout(self.settings.timeout, exchange)
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }
}

impl Transport {
    /// Sends `req` and reads at most `limit` bytes of the answer.
    async fn exchange(
        &self,
        req: Request<Full<Bytes>>,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), UpstreamError> {
        let failed = |why: &'static str| UpstreamError::Failed(why.into());
        match self {
            Transport::Shared(client) => {
                let resp = client
                    .request(req)
                    .await
                    .map_err(|e| UpstreamError::Failed(connect_error_text(&e)))?;
                let status = resp.status();
                let bytes = pool::read_limited(resp.into_body(), limit)
                    .await
                    .map_err(failed)?;
                Ok((status, bytes))
            }
            Transport::Http1(pool) => pool.exchange(req, limit).await.map_err(failed),
        }
    }
}

/// Reads a 200 answer to the operation `kind` (public for the benchmarks).
pub fn read_answer(kind: &QueryKind, bytes: &[u8]) -> Result<UpstreamAnswer, UpstreamError> {
    let failed = |what: &str| UpstreamError::Failed(what.to_owned());
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(failed("answer is not a JSON object"));
    }
    let answer: C06Answer<'_> =
        serde_json::from_slice(bytes).map_err(|_| failed("answer is not JSON of the C06 shape"))?;
    let as_of = answer
        .as_of
        .and_then(|t| serde_json::from_str::<String>(t.get()).ok());
    match kind {
        QueryKind::Lookup => answer
            .collection
            .and_then(|c| c.list.first().copied())
            .filter(|r| r.get().starts_with('{'))
            .map(|r| UpstreamAnswer::Citizen {
                record: r.to_owned(),
                as_of,
            })
            .ok_or_else(|| failed("answer has no CongDan")),
        QueryKind::Verify { .. } => match answer.exists.map(RawValue::get) {
            Some("true") => Ok(UpstreamAnswer::Match(true)),
            Some("false") => Ok(UpstreamAnswer::Match(false)),
            _ => Err(failed("answer has no TonTai")),
        },
        QueryKind::Household => {
            let household = answer
                .household
                .and_then(|h| serde_json::from_str::<Household<'_>>(h.get()).ok());
            let head = household
                .as_ref()
                .and_then(|h| h.head)
                .filter(|h| h.get().starts_with('{'))
                .ok_or_else(|| failed("answer has no ChuHo"))?;
            let members = household
                .and_then(|h| h.members)
                .and_then(|m| serde_json::from_str::<Vec<&RawValue>>(m.get()).ok())
                .unwrap_or_default();
            Ok(UpstreamAnswer::Household {
                head: head.to_owned(),
                members: members.into_iter().map(ToOwned::to_owned).collect(),
                as_of,
            })
        }
    }
}

fn connect_error_text(e: &hyper_util::client::legacy::Error) -> String {
    if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "connection failed".to_owned()
    }
}

/// A question as the national database takes it, its keys in the order
/// they have always been sent (sorted); the name and date of birth only
/// for a verification.
#[derive(Serialize)]
struct Question<'a> {
    #[serde(rename = "HoVaTen", skip_serializing_if = "Option::is_none")]
    full_name: Option<&'a str>,
    #[serde(rename = "MaCanBo")]
    officer: &'a str,
    #[serde(rename = "MaDVC")]
    service_code: &'a str,
    #[serde(rename = "MaTichHop")]
    integration_code: &'a str,
    #[serde(rename = "MaYeuCau")]
    request_id: &'a str,
    #[serde(rename = "NgayThangNamSinh", skip_serializing_if = "Option::is_none")]
    date_of_birth: Option<String>,
    #[serde(rename = "SoDinhDanh")]
    personal_id: &'a str,
}

impl NationalDb for HttpNationalDb {
    fn query(&self, q: UpstreamQuery) -> BoxFuture<'_, Result<Answered, UpstreamError>> {
        Box::pin(async move {
            let s = &self.settings;
            let mut question = Question {
                full_name: None,
                officer: &q.officer,
                service_code: &s.service_code,
                integration_code: &s.integration_code,
                request_id: &q.request_id,
                date_of_birth: None,
                personal_id: q.personal_id.as_str(),
            };
            let uri = match &q.kind {
                QueryKind::Lookup => &self.uris.lookup,
                QueryKind::Household => &self.uris.household,
                QueryKind::Verify {
                    full_name,
                    date_of_birth,
                } => {
                    question.full_name = Some(full_name);
                    question.date_of_birth = Some(date_of_birth.replace('-', ""));
                    &self.uris.verify
                }
            };
            let body = Bytes::from(
                serde_json::to_vec(&question)
                    .map_err(|e| UpstreamError::Failed(format!("cannot write the question: {e}")))?,
            );
            self.budget.deposit();
            let mut attempt = self.post(uri, body.clone()).await;
            // The three operations are reads, so a failed connection or a
            // gateway error upstream may be retried once, within the budget.
            let retryable = match &attempt {
                Err(UpstreamError::Failed(_)) => true,
                Ok((status, _)) => {
                    *status == StatusCode::BAD_GATEWAY || *status == StatusCode::SERVICE_UNAVAILABLE
                }
                _ => false,
            };
            if retryable && self.budget.withdraw() {
                tracing::debug!("retrying a failed national-database read");
                attempt = self.post(uri, body).await;
            }
            let (status, bytes) = attempt?;
            match status {
                StatusCode::OK => {}
                // The national database says "no such citizen" in JSON; a
                // 404 page of anything else (a wrong path, a proxy) is a
                // failure, not an answer about a citizen.
                StatusCode::NOT_FOUND if serde_json::from_slice::<IgnoredAny>(&bytes).is_ok() => {
                    return Err(UpstreamError::NotFound)
                }
                other => return Err(UpstreamError::Failed(format!("HTTP {other}"))),
            }
            let answer = read_answer(&q.kind, &bytes)?;
            let digest = crate::audit::event::digest_hex(&bytes);
            Ok(Answered { answer, digest })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_budget_allows_about_one_retry_in_ten() {
        let b = RetryBudget::default();
        let mut retries = 0;
        for _ in 0..1000 {
            b.deposit();
            if b.withdraw() {
                retries += 1;
            }
        }
        assert!((100..=102).contains(&retries), "{retries}");
        let idle = RetryBudget::default();
        for _ in 0..1000 {
            idle.deposit();
        }
        let burst = (0..100).filter(|_| idle.withdraw()).count();
        assert_eq!(burst, 10, "the reserve caps a burst of retries");
    }

    #[test]
    fn questions_keep_their_wire_form() {
        let mut q = Question {
            full_name: None,
            officer: "canbo-01",
            service_code: "1.000001",
            integration_code: "popgate",
            request_id: "r-1",
            date_of_birth: None,
            personal_id: "079090001234",
        };
        // What the national database has always been sent: sorted keys.
        let lookup = serde_json::json!({
            "MaCanBo": "canbo-01", "MaDVC": "1.000001", "MaTichHop": "popgate",
            "MaYeuCau": "r-1", "SoDinhDanh": "079090001234",
        });
        assert_eq!(serde_json::to_string(&q).expect("question"), lookup.to_string());
        q.full_name = Some("Nguyễn Văn \"An\"");
        q.date_of_birth = Some("19900101".into());
        let mut verify = lookup;
        verify["HoVaTen"] = "Nguyễn Văn \"An\"".into();
        verify["NgayThangNamSinh"] = "19900101".into();
        assert_eq!(serde_json::to_string(&q).expect("question"), verify.to_string());
    }
}
