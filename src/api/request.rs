//! The request frame every surface shares: who is calling ([`Caller`]),
//! what the request has established for its audit events ([`Trail`]), the
//! journal writes that make those events durable ([`AuditRecorder`]), and
//! the body helpers. Nothing here knows a surface.

use std::sync::Arc;

use http::Method;
use hyper::body::Incoming;
use hyper::Request;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::problem::ApiError;
use crate::audit::event::{AuditEvent, EventKind, Subject};
use crate::audit::journal::{Appended, Journal, JournalError};
use crate::audit::WarehouseRecord;
use crate::auth::token::TokenError;
use crate::metrics::{AuditWait, Metrics};
use crate::policy::App;
use crate::server::{self, BodyError};

/// The role that may change policy, and the role that may read the log.
pub const POLICY_ADMIN_ROLE: &str = "policy-admin";
pub const AUDITOR_ROLE: &str = "auditor";

/// Who is calling, once identified.
pub struct Caller<'a> {
    pub app: &'a App,
    pub officer_id: String,
    pub roles: Vec<String>,
    pub unit: Option<u32>,
}

/// The two consoles and who may use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Console {
    Admin,
    Audit,
}

/// Which apps and roles may use the admin and audit surfaces.
#[derive(Debug, Clone)]
pub struct ConsoleAccess {
    pub admin_apps: Vec<String>,
    pub audit_apps: Vec<String>,
}

impl ConsoleAccess {
    /// Separation of duties: policy admins only change policy, auditors only
    /// read the log, officers neither; each through its own client app.
    pub fn require(&self, caller: &Caller<'_>, console: Console) -> Result<(), ApiError> {
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

/// What a request has established so far, for its audit events.
#[derive(Debug, Default)]
pub struct Trail {
    /// An admin or audit console request (recorded as `kind: admin`).
    pub console: bool,
    /// Facts of a console action (versions, reasons, filters).
    pub details: Option<Value>,
    pub audit_id: String,
    pub request_id: String,
    pub operation: String,
    pub intent_id: Option<String>,
    pub app_id: Option<String>,
    pub officer_id: Option<String>,
    pub officer_unit: Option<String>,
    pub purpose: Option<String>,
    pub case_ref: Option<String>,
    pub citizen_key: Option<String>,
    pub policy_version: Option<u64>,
    pub upstream_status: Option<String>,
    pub upstream_ms: Option<u64>,
    pub upstream_digest: Option<String>,
    pub released: Vec<String>,
    pub released_digest: Option<String>,
    /// What the release relied on (purpose's and grant's legal basis).
    pub legal_basis: Option<String>,
    /// Every person the answer carries.
    pub subjects: Vec<Subject>,
    /// The warehouse copies, one per released person whose fields may be stored.
    pub warehouse: Vec<WarehouseRecord>,
    /// The request's trace and its step spans.
    pub trace: crate::telemetry::RequestTrace,
    /// Recorded in the events: the trace the app continued, or the one
    /// exported.
    pub trace_id: Option<String>,
}

impl Trail {
    /// An event of `kind` with what the trail holds.
    pub fn event(
        &self,
        kind: EventKind,
        audit_id: &str,
        decision: &str,
        reason: Option<String>,
    ) -> AuditEvent {
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
            legal_basis: self.legal_basis.clone(),
            subjects: self.subjects.clone(),
            trace_id: self.trace_id.clone(),
        }
    }

    /// Records a pipeline step that began at `start` (a span when traces
    /// are exported).
    pub fn step(&mut self, name: &'static str, start: std::time::SystemTime, error: bool) {
        self.trace.step(name, start, error);
    }
}

/// Appends audit events to the journal and times each wait for
/// durability (`popgate_journal_wait_seconds`).
#[derive(Clone)]
pub struct AuditRecorder {
    pub journal: Journal,
    pub metrics: Arc<Metrics>,
}

impl AuditRecorder {
    pub async fn record(
        &self,
        wait: AuditWait,
        event: AuditEvent,
        warehouse: Vec<WarehouseRecord>,
    ) -> Result<Appended, JournalError> {
        let started = std::time::Instant::now();
        let recorded = self.journal.append(event, warehouse).await;
        self.metrics.observe_journal_wait(wait, started.elapsed());
        recorded
    }
}

/// The bearer token of the `Authorization` header.
pub fn bearer_token<B>(req: &Request<B>) -> Result<&str, TokenError> {
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

pub fn check_content_type<B>(req: &Request<B>) -> Result<(), ApiError> {
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

/// The head and the whole body of a request, the body's content type
/// checked when it is a POST.
pub async fn read_request(
    req: Request<Incoming>,
    limit: usize,
) -> Result<(http::request::Parts, bytes::Bytes), ApiError> {
    if req.method() == Method::POST {
        check_content_type(&req)?;
    }
    let (parts, body) = req.into_parts();
    let body = server::read_body(Request::from_parts(parts.clone(), body), limit)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => ApiError::BodyTooLarge(limit),
            BodyError::Io => ApiError::BodyUnreadable,
        })?;
    Ok((parts, body))
}

/// Parses a JSON body; the error says where and what, never echoing
/// values, and `takes` tells the caller what the body of this call takes.
pub fn parse_json<T: DeserializeOwned>(body: &[u8], takes: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::InvalidRequest(describe_json_error(&e, takes)))
}

/// As [`parse_json`], an empty body read as `{}`.
pub fn parse_json_or_empty<T: DeserializeOwned>(body: &[u8], takes: &str) -> Result<T, ApiError> {
    let body = if body.is_empty() { b"{}".as_slice() } else { body };
    parse_json(body, takes)
}

/// `takes` describes the body of the call (its keys and their types).
pub fn describe_json_error(e: &serde_json::Error, takes: &str) -> String {
    use serde_json::error::Category;
    let msg = e.to_string();
    let at = format!("line {} column {}", e.line(), e.column());
    match e.classify() {
        // An unknown key is the caller's text (a personal ID sent as a key
        // would land in the answer and the audit log): never repeated.
        Category::Data if msg.starts_with("unknown field") => {
            format!("the body has a key this call does not take ({at}); {takes}")
        }
        Category::Data if msg.starts_with("missing field") || msg.starts_with("duplicate field") => {
            // serde names one of this call's own keys here, never a value.
            let what = msg.split(" at line").next().unwrap_or(&msg);
            format!("{what}; {takes}")
        }
        Category::Data => format!("a value has the wrong type at {at}; {takes}"),
        Category::Syntax | Category::Eof => format!("the body is not valid JSON ({at})"),
        Category::Io => "the body could not be read".to_owned(),
    }
}

/// Characters that reorder or hide text where people read it (auditors'
/// tables, CSV exports, letters): the Unicode bidirectional controls.
const BIDI_CONTROLS: &[char] = &[
    '\u{061c}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}',
    '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
];

/// Refuses text with control or bidirectional-control characters; `name`
/// is the key of the value (ours, never the caller's).
pub fn check_text(name: &str, value: &str) -> Result<(), ApiError> {
    if value
        .chars()
        .any(|c| c.is_control() || BIDI_CONTROLS.contains(&c))
    {
        return Err(ApiError::InvalidRequest(format!(
            "{name} must not contain control or bidirectional-control characters"
        )));
    }
    Ok(())
}

/// The value of `name` in a URL query string.
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
}
