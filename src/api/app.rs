//! The app surface, `/v1/...` on the mTLS listener: the request pipeline as
//! named steps — identify the app, read and validate the body, authorise,
//! ask the national database, check jurisdiction, release the granted
//! fields — each a function that can be read alone.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Method, StatusCode};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::admin::AdminOp;
use super::auditor::AuditOp;
use super::problem::{problem_response, ApiError};
use super::status::GatewayStatus;
use crate::audit::event::{digest_hex, AuditEvent, EventKind, Pseudonymiser};
use crate::audit::journal::{Appended, Journal, JournalError};
use crate::audit::WarehouseRecord;
use crate::auth::token::{TokenError, TokenVerifier};
use crate::limits::RateLimits;
use crate::metrics::AuditWait;
use crate::personal_id::PersonalId;
use crate::policy::{App, Denial, Grant, Operation, PolicySet};
use crate::server::{self, Body, BodyError, Peer};
use crate::upstream::{NationalDb, QueryKind, UpstreamAnswer, UpstreamError, UpstreamQuery};
use crate::warehouse::Warehouse;

/// Longest accepted case reference, in characters.
pub const MAX_CASE_REF_CHARS: usize = 64;
/// Longest accepted purpose id and full name, in characters.
const MAX_SHORT_TEXT_CHARS: usize = 200;

/// Shared state of the app surface.
pub struct AppApi {
    pub policy: Arc<ArcSwap<PolicySet>>,
    pub upstream: Arc<dyn NationalDb>,
    pub tokens: Arc<TokenVerifier>,
    pub limits: Arc<RateLimits>,
    pub journal: Journal,
    pub pseudonyms: Pseudonymiser,
    pub warehouse: Warehouse,
    pub breaker: Arc<crate::upstream::breaker::CircuitBreaker>,
    pub revocations: Arc<ArcSwap<crate::tls::revocation::Revocations>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub console: ConsoleAccess,
    pub trusted_keys: Option<crate::audit::verify::TrustedKeys>,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub status: Arc<GatewayStatus>,
}

/// Who is calling, once identified.
pub(super) struct Caller<'a> {
    pub(super) app: &'a App,
    pub(super) officer_id: String,
    pub(super) roles: Vec<String>,
    pub(super) unit: Option<u32>,
}

/// The two consoles and who may use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Console {
    Admin,
    Audit,
}

/// Which apps and roles may use the admin and audit surfaces.
#[derive(Debug, Clone)]
pub struct ConsoleAccess {
    pub admin_apps: Vec<String>,
    pub audit_apps: Vec<String>,
}

/// The role that may change policy, and the role that may read the log.
pub const POLICY_ADMIN_ROLE: &str = "policy-admin";
pub const AUDITOR_ROLE: &str = "auditor";

impl ConsoleAccess {
    /// Separation of duties: policy admins only change policy, auditors only
    /// read the log, officers neither; each through its own client app.
    pub(super) fn require(&self, caller: &Caller<'_>, console: Console) -> Result<(), ApiError> {
        let (apps, role, what) = match console {
            Console::Admin => (&self.admin_apps, POLICY_ADMIN_ROLE, "policy administration"),
            Console::Audit => (&self.audit_apps, AUDITOR_ROLE, "the audit log"),
        };
        if !caller.roles.iter().any(|r| r == role) {
            return Err(ApiError::Forbidden(format!("{what} requires the role '{role}'")));
        }
        if !apps.contains(&caller.app.id) {
            return Err(ApiError::Forbidden(format!(
                "{what} is not available through this app"
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LookupBody {
    personal_id: String,
    purpose: String,
    #[serde(default)]
    case_ref: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    personal_id: String,
    full_name: String,
    date_of_birth: String,
    purpose: String,
    #[serde(default)]
    case_ref: Option<String>,
}

/// What a request has established so far, for its audit events.
#[derive(Debug, Default)]
pub(super) struct Trail {
    /// An admin or audit console request (recorded as `kind: admin`).
    pub(super) console: bool,
    /// Facts of a console action (versions, reasons, filters).
    pub(super) details: Option<Value>,
    pub(super) audit_id: String,
    pub(super) request_id: String,
    pub(super) operation: String,
    pub(super) intent_id: Option<String>,
    pub(super) app_id: Option<String>,
    pub(super) officer_id: Option<String>,
    pub(super) officer_unit: Option<String>,
    pub(super) purpose: Option<String>,
    pub(super) case_ref: Option<String>,
    pub(super) citizen_key: Option<String>,
    pub(super) policy_version: Option<u64>,
    pub(super) upstream_status: Option<String>,
    pub(super) upstream_ms: Option<u64>,
    pub(super) upstream_digest: Option<String>,
    pub(super) released: Vec<String>,
    pub(super) released_digest: Option<String>,
    pub(super) warehouse: Option<WarehouseRecord>,
}

impl Trail {
    fn event(&self, kind: EventKind, audit_id: &str, decision: &str, reason: Option<String>) -> AuditEvent {
        AuditEvent {
            audit_id: audit_id.to_owned(),
            instance_id: String::new(),
            seq: 0,
            ts: String::new(),
            kind,
            request_id: self.request_id.clone(),
            intent_id: self.intent_id.clone(),
            app_id: self.app_id.clone(),
            officer_id: self.officer_id.clone(),
            officer_unit: self.officer_unit.clone(),
            operation: self.operation.clone(),
            purpose: self.purpose.clone(),
            case_ref: self.case_ref.clone(),
            decision: decision.to_owned(),
            reason,
            citizen_key: self.citizen_key.clone(),
            fields: self.released.clone(),
            policy_version: self.policy_version,
            http_status: None,
            upstream_status: self.upstream_status.clone(),
            upstream_ms: self.upstream_ms,
            upstream_digest: self.upstream_digest.clone(),
            released_digest: None,
            details: self.details.clone(),
        }
    }
}

impl AppApi {
    /// Entry point for every request on the mTLS listener. Every request is
    /// audited; its answer is released only once the outcome event is
    /// durable, else the caller gets 503 and nothing else.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: Arc<Peer>) -> Response<Body> {
        let started = std::time::Instant::now();
        let mut trail = Trail {
            audit_id: uuid::Uuid::now_v7().to_string(),
            request_id: uuid::Uuid::now_v7().to_string(),
            ..Trail::default()
        };
        let result = match route(req.method(), req.uri().path()) {
            Err(e) => {
                trail.operation = "none".to_owned();
                Err(e)
            }
            Ok(route) => {
                trail.operation = route.name();
                trail.console = !matches!(route, Route::App(_));
                let run = self.clone().run(route, req, &peer, &mut trail);
                match tokio::time::timeout(self.request_timeout, run).await {
                    Ok(result) => result,
                    Err(_) => Err(ApiError::RequestTimeout),
                }
            }
        };
        let (resp, decision, reason) = match result {
            Ok(resp) => (resp, "granted", None),
            Err(e) => {
                let decision = match e.status() {
                    s if s.is_server_error() => "error",
                    _ => "denied",
                };
                (
                    problem_response(&e, &trail.request_id, Some(&trail.audit_id)),
                    decision,
                    Some(e.to_string()),
                )
            }
        };
        let kind = if trail.console {
            EventKind::Admin
        } else {
            EventKind::Outcome
        };
        let mut event = trail.event(kind, &trail.audit_id, decision, reason);
        event.http_status = Some(resp.status().as_u16());
        event.released_digest = trail
            .released_digest
            .take()
            .filter(|_| resp.status() == StatusCode::OK);
        let warehouse = trail.warehouse.take();
        let resp = match self.record(AuditWait::Outcome, event, warehouse).await {
            Ok(_) => resp,
            Err(e) => {
                tracing::error!(request_id = %trail.request_id, error = %e, "answer withheld: audit not durable");
                problem_response(&ApiError::AuditUnavailable, &trail.request_id, None)
            }
        };
        tracing::info!(
            request_id = %trail.request_id,
            audit_id = %trail.audit_id,
            app = trail.app_id.as_deref().unwrap_or("-"),
            operation = %trail.operation,
            status = resp.status().as_u16(),
            "request"
        );
        self.metrics.observe_request(
            trail.app_id.as_deref().unwrap_or("unknown"),
            &trail.operation,
            resp.status().as_u16(),
            started.elapsed(),
        );
        finish(resp, &trail.request_id)
    }

    async fn run(
        self: Arc<Self>,
        route: Route,
        req: Request<Incoming>,
        peer: &Peer,
        trail: &mut Trail,
    ) -> Result<Response<Body>, ApiError> {
        // One snapshot for the whole request: a reload mid-request does not
        // change the rules this request is judged by.
        let policy = self.policy.load_full();
        trail.policy_version = Some(policy.version);
        let app = identify_app(&policy, peer)?;
        trail.app_id = Some(app.id.clone());
        self.check_revocation(peer)?;
        let caller = self.authenticate_officer(&req, peer, app).await?;
        trail.officer_id = Some(caller.officer_id.clone());
        trail.officer_unit = caller.unit.map(|u| format!("{u:05}"));
        self.limits.check_app(&app.id).map_err(ApiError::RateLimited)?;
        self.limits
            .check_officer(&app.id, &caller.officer_id)
            .map_err(ApiError::RateLimited)?;
        let op = match route {
            Route::App(op) => op,
            Route::Admin(op) => {
                self.console.require(&caller, Console::Admin)?;
                let (parts, body) = self.console_request(req).await?;
                return super::admin::handle(&self, op, &policy, &caller, &parts, body, trail).await;
            }
            Route::Audit(op) => {
                self.console.require(&caller, Console::Audit)?;
                let (parts, body) = self.console_request(req).await?;
                return super::auditor::handle(&self, op, &caller, &parts, body, trail).await;
            }
        };
        check_content_type(&req)?;
        let body = read_body(req, self.max_body_bytes).await?;
        match op {
            Operation::Lookup | Operation::Household => {
                let b: LookupBody = parse_json(&body)?;
                let pid = self.validate_subject(&b.personal_id, &b.purpose, &b.case_ref, trail)?;
                let grant = authorize(&policy, &caller, op, &b.purpose, b.case_ref.as_deref())?;
                self.check_grant_limits(&caller, grant, &pid)?;
                let kind = if op == Operation::Lookup {
                    QueryKind::Lookup
                } else {
                    QueryKind::Household
                };
                let answer = self.ask_upstream(&caller, pid, kind, trail).await?;
                let (key, released) = release(&policy, grant, &caller, answer, trail)?;
                Ok(envelope(trail, policy.version, key, &released))
            }
            Operation::Verify => {
                let b: VerifyBody = parse_json(&body)?;
                let pid = self.validate_subject(&b.personal_id, &b.purpose, &b.case_ref, trail)?;
                let full_name = validate_full_name(&b.full_name)?;
                let date_of_birth = validate_date(&b.date_of_birth)?;
                let grant = authorize(&policy, &caller, op, &b.purpose, b.case_ref.as_deref())?;
                self.check_grant_limits(&caller, grant, &pid)?;
                let kind = QueryKind::Verify {
                    full_name,
                    date_of_birth,
                };
                match self.ask_upstream(&caller, pid, kind, trail).await? {
                    UpstreamAnswer::Match(m) => {
                        trail.released = vec!["match".to_owned()];
                        Ok(envelope(trail, policy.version, "match", &Value::Bool(m)))
                    }
                    _ => Err(ApiError::UpstreamFailed),
                }
            }
        }
    }

    /// Step: who the question is about and why — the personal ID, purpose
    /// and case reference every operation carries, recorded as validated.
    fn validate_subject(
        &self,
        personal_id: &str,
        purpose: &str,
        case_ref: &Option<String>,
        trail: &mut Trail,
    ) -> Result<PersonalId, ApiError> {
        let pid = validate_personal_id(personal_id)?;
        trail.citizen_key = Some(self.pseudonyms.citizen_key(&pid));
        validate_purpose(purpose)?;
        trail.purpose = Some(purpose.to_owned());
        validate_case_ref(case_ref.as_deref())?;
        trail.case_ref.clone_from(case_ref);
        Ok(pid)
    }

    /// Step: the certificate is not revoked by the current CRLs (checked on
    /// every request, so a revocation reaches keep-alive connections too).
    fn check_revocation(&self, peer: &Peer) -> Result<(), ApiError> {
        let cert = peer.client_cert.as_ref().ok_or(ApiError::UnknownApp)?;
        self.revocations.load().check(cert).map_err(|e| match e {
            crate::tls::revocation::RevocationError::Revoked => ApiError::Forbidden(e.to_string()),
            crate::tls::revocation::RevocationError::Stale => ApiError::RevocationUnknown,
        })
    }

    /// The head and (for POST) the JSON body of a console request.
    async fn console_request(
        &self,
        req: Request<Incoming>,
    ) -> Result<(http::request::Parts, bytes::Bytes), ApiError> {
        if req.method() == Method::POST {
            check_content_type(&req)?;
        }
        let (parts, body) = req.into_parts();
        let body = read_body(Request::from_parts(parts.clone(), body), self.max_body_bytes).await?;
        Ok((parts, body))
    }

    /// Step: the officer, from a token bound to the app's certificate.
    async fn authenticate_officer<'a>(
        &self,
        req: &Request<Incoming>,
        peer: &Peer,
        app: &'a App,
    ) -> Result<Caller<'a>, ApiError> {
        let token = bearer_token(req).map_err(ApiError::Unauthorized)?;
        let cert = peer.client_cert.as_ref().ok_or(ApiError::UnknownApp)?;
        let officer = self.tokens.verify(token, cert, &app.id).await.map_err(|e| {
            tracing::info!(app = %app.id, reason = %e, "officer token refused");
            ApiError::Unauthorized(e)
        })?;
        Ok(Caller {
            app,
            officer_id: officer.id,
            roles: officer.roles,
            unit: officer.unit,
        })
    }

    /// The grant's own rate, the officer's distinct-citizen cap, and the
    /// province's quota at the national database, in that order.
    fn check_grant_limits(
        &self,
        caller: &Caller<'_>,
        grant: &Grant,
        citizen: &PersonalId,
    ) -> Result<(), ApiError> {
        let app = &caller.app.id;
        self.limits
            .check_grant(app, &grant.purpose, grant.limits.per_minute)
            .map_err(ApiError::RateLimited)?;
        self.limits
            .check_distinct(app, &caller.officer_id, citizen)
            .map_err(ApiError::RateLimited)?;
        self.limits.check_upstream().map_err(ApiError::RateLimited)
    }

    /// Appends `event` to the journal and times the wait for it to be
    /// durable (`popgate_journal_wait_seconds`).
    async fn record(
        &self,
        wait: AuditWait,
        event: AuditEvent,
        warehouse: Option<WarehouseRecord>,
    ) -> Result<Appended, JournalError> {
        let started = std::time::Instant::now();
        let recorded = self.journal.append(event, warehouse).await;
        self.metrics.observe_journal_wait(wait, started.elapsed());
        recorded
    }

    /// Step: the national database — only after an intent event naming the
    /// question is durable, so no question is ever asked unrecorded.
    async fn ask_upstream(
        &self,
        caller: &Caller<'_>,
        personal_id: PersonalId,
        kind: QueryKind,
        trail: &mut Trail,
    ) -> Result<UpstreamAnswer, ApiError> {
        self.breaker.allow().map_err(ApiError::CircuitOpen)?;
        let intent_id = uuid::Uuid::now_v7().to_string();
        let intent = trail.event(EventKind::Intent, &intent_id, "pending", None);
        self.record(AuditWait::Intent, intent, None).await.map_err(|e| {
            tracing::error!(request_id = %trail.request_id, error = %e, "upstream call not made: intent not durable");
            ApiError::AuditUnavailable
        })?;
        trail.intent_id = Some(intent_id);
        let query = UpstreamQuery {
            request_id: trail.request_id.clone(),
            officer: caller.officer_id.clone(),
            personal_id,
            kind,
        };
        let started = std::time::Instant::now();
        let result = self.upstream.query(query).await;
        trail.upstream_ms = Some(started.elapsed().as_millis() as u64);
        self.metrics.observe_upstream(started.elapsed());
        self.breaker
            .record(matches!(result, Ok(_) | Err(UpstreamError::NotFound)));
        self.status.record_upstream(&result);
        match result {
            Ok(answered) => {
                trail.upstream_status = Some("ok".to_owned());
                trail.upstream_digest = Some(answered.digest);
                Ok(answered.answer)
            }
            Err(e) => {
                trail.upstream_status = Some(
                    match &e {
                        UpstreamError::NotFound => "not-found",
                        UpstreamError::Timeout => "timeout",
                        UpstreamError::Failed(_) => "failed",
                    }
                    .to_owned(),
                );
                Err(match e {
                    UpstreamError::NotFound => ApiError::CitizenNotFound,
                    UpstreamError::Timeout => ApiError::UpstreamTimeout,
                    UpstreamError::Failed(why) => {
                        tracing::warn!(request_id = %trail.request_id, why, "upstream failed");
                        ApiError::UpstreamFailed
                    }
                })
            }
        }
    }
}

/// The 200 answer: audit and request ids, policy version and the answer
/// under `key`, keys in the order a JSON map would sort them. Its digest
/// goes into the outcome event as evidence of what was released.
fn envelope(trail: &mut Trail, policy_version: u64, key: &str, answer: &Value) -> Response<Body> {
    fn put(out: &mut Vec<u8>, before: &str, value: &impl serde::Serialize) {
        out.extend_from_slice(before.as_bytes());
        // Plain data written into a Vec: this cannot fail.
        let _ = serde_json::to_writer(out, value);
    }
    let mut out = Vec::with_capacity(1024);
    put(&mut out, "{\"audit_id\":", &trail.audit_id);
    put(&mut out, ",", &key);
    put(&mut out, ":", answer);
    put(&mut out, ",\"policy_version\":", &policy_version);
    put(&mut out, ",\"request_id\":", &trail.request_id);
    out.push(b'}');
    trail.released_digest = Some(digest_hex(&out));
    server::json_bytes_response(StatusCode::OK, out)
}

/// Every route of the mTLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    App(Operation),
    Admin(AdminOp),
    Audit(AuditOp),
}

impl Route {
    /// The operation name recorded in audit events.
    pub(super) fn name(&self) -> String {
        match self {
            Route::App(op) => op.as_str().to_owned(),
            Route::Admin(op) => format!("admin.{}", op.name()),
            Route::Audit(op) => format!("audit.{}", op.name()),
        }
    }
}

/// Parses and validates an app request body as the pipeline does, without
/// the rest of the pipeline. Peer-controlled input: fuzzed
/// (`fuzz/fuzz_targets/request_body.rs`).
pub fn check_request_body(op: Operation, body: &[u8]) -> Result<(), ApiError> {
    let (personal_id, purpose, case_ref) = match op {
        Operation::Lookup | Operation::Household => {
            let b: LookupBody = parse_json(body)?;
            (b.personal_id, b.purpose, b.case_ref)
        }
        Operation::Verify => {
            let b: VerifyBody = parse_json(body)?;
            validate_full_name(&b.full_name)?;
            validate_date(&b.date_of_birth)?;
            (b.personal_id, b.purpose, b.case_ref)
        }
    };
    validate_personal_id(&personal_id)?;
    validate_purpose(&purpose)?;
    validate_case_ref(case_ref.as_deref())
}

/// Every endpoint of the mTLS listener: method and path template. The
/// router matches against this table, so it is the route inventory
/// (`docs/openapi.yaml` must list exactly these).
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/citizens/lookup"),
    ("POST", "/v1/citizens/verify"),
    ("POST", "/v1/households/lookup"),
    ("GET", "/admin/v1/policies"),
    ("POST", "/admin/v1/policies/proposals"),
    ("POST", "/admin/v1/policies/proposals/{id}/approve"),
    ("POST", "/admin/v1/policies/proposals/{id}/reject"),
    ("POST", "/admin/v1/policies/rollback"),
    ("GET", "/admin/v1/policies/versions/{n}/diff"),
    ("POST", "/admin/v1/policies/simulate"),
    ("POST", "/audit/v1/events/search"),
    ("POST", "/audit/v1/events/export"),
    ("GET", "/audit/v1/events/{audit_id}"),
    ("POST", "/audit/v1/citizens/accesses"),
    ("GET", "/audit/v1/verify"),
];

/// Whether `path` fits `template`; the placeholder's value, if the
/// template has one (none has more).
fn match_template<'a>(template: &str, path: &'a str) -> Option<Option<&'a str>> {
    let (mut t, mut p) = (template.split('/'), path.split('/'));
    let mut param = None;
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(param),
            (Some(ts), Some(ps)) if ts.starts_with('{') && !ps.is_empty() => param = Some(ps),
            (Some(ts), Some(ps)) if ts == ps && !ts.starts_with('{') => {}
            _ => return None,
        }
    }
}

/// Matches a request to a route. Paths match exactly, literal segments
/// before placeholders: no normalisation, so `..`, `//`, `%2e` and the like
/// name no route.
pub(super) fn route(method: &Method, path: &str) -> Result<Route, ApiError> {
    let matching = |literal: bool| {
        ROUTES
            .iter()
            .filter(move |(_, t)| t.contains('{') != literal)
            .filter_map(move |(m, t)| match_template(t, path).map(|param| (*m, *t, param)))
    };
    // A literal path (`/events/search`) is never read as a placeholder value.
    let literal = matching(true).next().is_some();
    let Some((_, template, param)) = matching(literal).find(|(m, _, _)| *m == method.as_str()) else {
        return Err(match matching(literal).next() {
            Some((m, _, _)) => ApiError::MethodNotAllowed(if m == "GET" { "GET" } else { "POST" }),
            None => ApiError::NoRoute,
        });
    };
    let number = || {
        param
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|n| *n > 0)
            .ok_or(ApiError::NoRoute)
    };
    Ok(match template {
        "/v1/citizens/lookup" => Route::App(Operation::Lookup),
        "/v1/citizens/verify" => Route::App(Operation::Verify),
        "/v1/households/lookup" => Route::App(Operation::Household),
        "/admin/v1/policies" => Route::Admin(AdminOp::List),
        "/admin/v1/policies/proposals" => Route::Admin(AdminOp::Propose),
        "/admin/v1/policies/proposals/{id}/approve" => Route::Admin(AdminOp::Approve(number()?)),
        "/admin/v1/policies/proposals/{id}/reject" => Route::Admin(AdminOp::Reject(number()?)),
        "/admin/v1/policies/rollback" => Route::Admin(AdminOp::Rollback),
        "/admin/v1/policies/versions/{n}/diff" => Route::Admin(AdminOp::Diff(number()?)),
        "/admin/v1/policies/simulate" => Route::Admin(AdminOp::Simulate),
        "/audit/v1/events/search" => Route::Audit(AuditOp::Search),
        "/audit/v1/events/export" => Route::Audit(AuditOp::Export),
        "/audit/v1/events/{audit_id}" => Route::Audit(AuditOp::Get(
            param.and_then(|s| s.parse().ok()).ok_or(ApiError::NoRoute)?,
        )),
        "/audit/v1/citizens/accesses" => Route::Audit(AuditOp::CitizenAccesses),
        "/audit/v1/verify" => Route::Audit(AuditOp::Verify),
        _ => return Err(ApiError::NoRoute),
    })
}

fn finish(mut resp: Response<Body>, request_id: &str) -> Response<Body> {
    let headers = resp.headers_mut();
    if let Ok(v) = http::HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", v);
    }
    // Citizen data must not linger in any cache on the way.
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

/// Step: the app, from the verified client certificate.
fn identify_app<'a>(policy: &'a PolicySet, peer: &Peer) -> Result<&'a App, ApiError> {
    // No certificate, no URIs: an unknown app.
    peer.client_uris
        .iter()
        .find_map(|uri| policy.app_by_certificate_uri(uri))
        .ok_or(ApiError::UnknownApp)
}

/// The bearer token of the `Authorization` header.
fn bearer_token(req: &Request<Incoming>) -> Result<&str, TokenError> {
    let value = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .ok_or(TokenError::Missing)?;
    let value = value.to_str().map_err(|_| TokenError::Malformed)?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
            Ok(token.trim())
        }
        _ => Err(TokenError::Missing),
    }
}

fn check_content_type(req: &Request<Incoming>) -> Result<(), ApiError> {
    let ok = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if ok {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<bytes::Bytes, ApiError> {
    server::read_body(req, limit).await.map_err(|e| match e {
        BodyError::TooLarge => ApiError::BodyTooLarge(limit),
        BodyError::Io => ApiError::BodyUnreadable,
    })
}

/// Parses a JSON body; the error says where and what, never echoing values.
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::InvalidRequest(describe_json_error(&e)))
}

pub(super) fn describe_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let msg = e.to_string();
    let at = format!("line {} column {}", e.line(), e.column());
    match e.classify() {
        Category::Data
            if msg.starts_with("unknown field")
                || msg.starts_with("missing field")
                || msg.starts_with("duplicate field") =>
        {
            // serde names the key (ours or the caller's), never a value.
            let what = msg.split(" at line").next().unwrap_or(&msg);
            format!("{what}; the body takes personal_id, purpose and case_ref (verify also full_name and date_of_birth)")
        }
        Category::Data => format!("a value has the wrong type at {at}; all values are JSON strings"),
        Category::Syntax | Category::Eof => format!("the body is not valid JSON ({at})"),
        Category::Io => "the body could not be read".to_owned(),
    }
}

fn validate_personal_id(s: &str) -> Result<PersonalId, ApiError> {
    PersonalId::parse(s, time::OffsetDateTime::now_utc().year())
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))
}

fn validate_purpose(s: &str) -> Result<(), ApiError> {
    if s.is_empty() || s.chars().count() > MAX_SHORT_TEXT_CHARS {
        return Err(ApiError::InvalidRequest(
            "purpose must name one of the purposes of the policy".into(),
        ));
    }
    Ok(())
}

fn validate_case_ref(s: Option<&str>) -> Result<(), ApiError> {
    match s {
        Some(c) if c.trim().is_empty() => Err(ApiError::InvalidRequest(
            "case_ref must not be empty when given".into(),
        )),
        Some(c) if c.chars().count() > MAX_CASE_REF_CHARS => Err(ApiError::InvalidRequest(format!(
            "case_ref must be at most {MAX_CASE_REF_CHARS} characters"
        ))),
        Some(c) if c.chars().any(char::is_control) => Err(ApiError::InvalidRequest(
            "case_ref must not contain control characters".into(),
        )),
        _ => Ok(()),
    }
}

fn validate_full_name(s: &str) -> Result<String, ApiError> {
    let n = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if n.is_empty() || n.chars().count() > MAX_SHORT_TEXT_CHARS || n.chars().any(char::is_control) {
        return Err(ApiError::InvalidRequest(format!(
            "full_name must be 1 to {MAX_SHORT_TEXT_CHARS} characters of text"
        )));
    }
    Ok(n)
}

fn validate_date(s: &str) -> Result<String, ApiError> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, format)
        .map(|_| s.to_owned())
        .map_err(|_| ApiError::InvalidRequest("date_of_birth must be a real date written YYYY-MM-DD".into()))
}

/// Step 2: the grant for this app, role, operation and purpose.
fn authorize<'a>(
    policy: &'a PolicySet,
    caller: &Caller<'a>,
    op: Operation,
    purpose: &str,
    case_ref: Option<&str>,
) -> Result<&'a Grant, ApiError> {
    let grant = policy
        .authorize(caller.app, &caller.roles, op, purpose)
        .map_err(ApiError::Denied)?;
    if grant.case_ref_required && case_ref.is_none() {
        return Err(ApiError::InvalidRequest(format!(
            "{}; send the reference of the case this lookup serves",
            Denial::CaseRefRequired(purpose.to_owned())
        )));
    }
    Ok(grant)
}

/// Step: jurisdiction, then the granted fields only, masks applied; the
/// warehouse copy of what the grant allows to store. Returns the answer's
/// key in the envelope and the answer.
fn release(
    policy: &PolicySet,
    grant: &Grant,
    caller: &Caller<'_>,
    answer: UpstreamAnswer,
    trail: &mut Trail,
) -> Result<(&'static str, Value), ApiError> {
    let outside = || ApiError::Denied(Denial::OutsideJurisdiction);
    match answer {
        UpstreamAnswer::Citizen { record, as_of } => {
            let mapped = policy.catalog.map_json(&record);
            if !policy.within_jurisdiction(grant, &mapped, caller.unit) {
                return Err(outside());
            }
            let (doc, released) = policy.release(grant, &mapped);
            trail.released = released;
            trail.warehouse = warehouse_record(policy, grant, &mapped, &doc, as_of, trail);
            Ok(("citizen", Value::Object(doc)))
        }
        UpstreamAnswer::Household { head, members, .. } => {
            let head = policy.catalog.map_json(&head);
            if !policy.within_jurisdiction(grant, &head, caller.unit) {
                return Err(outside());
            }
            let (head_doc, released) = policy.release(grant, &head);
            trail.released = released;
            let members: Vec<Value> = members
                .iter()
                .map(|m| Value::Object(policy.release(grant, &policy.catalog.map_json(m)).0))
                .collect();
            let household = Map::from_iter([
                ("head".to_owned(), Value::Object(head_doc)),
                ("members".to_owned(), Value::Array(members)),
            ]);
            Ok(("household", Value::Object(household)))
        }
        UpstreamAnswer::Match(_) => Err(ApiError::UpstreamFailed),
    }
}

/// The enriched warehouse copy of a released citizen, when the grant lets
/// the warehouse store any of the released fields.
fn warehouse_record(
    policy: &PolicySet,
    grant: &Grant,
    mapped: &Map<String, Value>,
    released: &Map<String, Value>,
    as_of: Option<String>,
    trail: &Trail,
) -> Option<WarehouseRecord> {
    if grant.store.is_empty() {
        return None;
    }
    let mut fields = Map::new();
    for path in &grant.store {
        let value = match path.split_once('.') {
            None => released.get(path).cloned(),
            Some((parent, child)) => released.get(parent).and_then(|p| p.get(child)).cloned(),
        };
        if let Some(v) = value {
            fields.insert(path.clone(), v);
        }
    }
    let ward_code = ["current_address", "permanent_address"]
        .iter()
        .find_map(|f| {
            mapped
                .get(*f)
                .and_then(|a| a.get("ward_code"))
                .and_then(Value::as_str)
        })
        .map(str::to_owned);
    let units = crate::units::Units::get();
    let ward = ward_code
        .as_deref()
        .and_then(|w| w.parse::<u32>().ok())
        .and_then(|w| units.ward(w));
    let province = ward.and_then(|w| units.province(w.province_code));
    let now = time::OffsetDateTime::now_utc();
    let birth_year = mapped
        .get("date_of_birth")
        .and_then(Value::as_str)
        .and_then(|d| d.get(..4))
        .and_then(|y| y.parse::<i32>().ok());
    let retention_days = policy
        .purposes
        .get(&grant.purpose)
        .map_or(0, |p| p.retention_days);
    let rfc3339 = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    Some(WarehouseRecord {
        citizen_key: trail.citizen_key.clone()?,
        app_id: trail.app_id.clone()?,
        purpose: grant.purpose.clone(),
        policy_version: policy.version,
        released_at: rfc3339(now),
        data_as_of: as_of,
        ward_code,
        ward_name: ward.map(|w| w.name.to_owned()),
        province_code: province.map(|p| format!("{:02}", p.code)),
        province_name: province.map(|p| p.name.to_owned()),
        age_band: birth_year.and_then(|y| crate::audit::age_band(y, now.year())),
        fields,
        retain_until: rfc3339(now + time::Duration::days(i64::from(retention_days))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_never_echo_values() {
        let e = serde_json::from_slice::<LookupBody>(br#"{"personal_id": 79203001234, "purpose": "x"}"#)
            .expect_err("bad");
        let d = describe_json_error(&e);
        assert!(!d.contains("79203001234"), "{d}");
        assert!(d.contains("wrong type"), "{d}");
        let e = serde_json::from_slice::<LookupBody>(br#"{"personal_id": "1", "purpose": "x", "extra": 1}"#)
            .expect_err("bad");
        assert!(describe_json_error(&e).starts_with("unknown field `extra`"));
        let e = serde_json::from_slice::<LookupBody>(b"{").expect_err("bad");
        assert!(describe_json_error(&e).contains("not valid JSON"));
    }

    #[test]
    fn every_route_in_the_inventory_is_routed() {
        for (method, template) in ROUTES {
            let path = template
                .replace("{id}", "7")
                .replace("{n}", "3")
                .replace("{audit_id}", "6f9619ff-8b86-d011-b42d-00c04fc964ff");
            let method: Method = method.parse().expect("method");
            assert!(route(&method, &path).is_ok(), "{method} {path}");
            let other = if method == Method::GET {
                Method::POST
            } else {
                Method::GET
            };
            assert!(
                matches!(route(&other, &path), Err(ApiError::MethodNotAllowed(_))),
                "{other} {path}"
            );
        }
        assert!(matches!(
            route(&Method::POST, "/admin/v1/policies/proposals/x/approve"),
            Err(ApiError::NoRoute)
        ));
        assert!(matches!(
            route(&Method::GET, "/audit/v1/events/not-a-uuid"),
            Err(ApiError::NoRoute)
        ));
        assert!(matches!(
            route(&Method::POST, "/v1//citizens/lookup"),
            Err(ApiError::NoRoute)
        ));
        assert!(matches!(
            route(&Method::POST, "/v1/citizens/lookup/"),
            Err(ApiError::NoRoute)
        ));
    }

    #[test]
    fn routes_and_methods() {
        assert_eq!(
            route(&Method::POST, "/v1/citizens/lookup").ok(),
            Some(Route::App(Operation::Lookup))
        );
        assert!(matches!(
            route(&Method::GET, "/v1/citizens/lookup"),
            Err(ApiError::MethodNotAllowed(_))
        ));
        assert!(matches!(
            route(&Method::POST, "/v1/citizens/../lookup"),
            Err(ApiError::NoRoute)
        ));
    }

    #[test]
    fn case_ref_and_dates_are_checked() {
        assert!(validate_case_ref(Some(&"x".repeat(65))).is_err());
        assert!(validate_case_ref(Some("HS-2026-001")).is_ok());
        assert!(validate_case_ref(Some("a\u{0}")).is_err());
        assert!(validate_date("2003-02-30").is_err());
        assert!(validate_date("2003-02-28").is_ok());
    }
}
