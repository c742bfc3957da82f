//! The HTTP surfaces of the gateway: the router and the request frame of
//! the mTLS listener ([`Api`]), the surfaces it dispatches to — apps
//! ([`citizens`]), policy admins ([`admin`]), auditors ([`auditor`]) — and
//! the ops listener ([`ops`]). Every surface sits on the frame
//! ([`request`]) and none knows another; [`problem`] turns every error
//! into an RFC 9457 document. Nothing here starts anything: see
//! [`crate::gateway`].

pub mod admin;
pub mod auditor;
pub mod citizens;
pub mod ops;
pub mod problem;
pub mod request;
pub mod status;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use hyper::body::Incoming;
use hyper::{Request, Response};

use admin::{AdminApi, AdminOp};
use auditor::{AuditApi, AuditOp};
use citizens::CitizensApi;
use problem::{problem_response, ApiError};
use request::{bearer_token, read_request, AuditRecorder, Caller, Console, ConsoleAccess, Trail};

use crate::audit::event::EventKind;
use crate::auth::token::TokenVerifier;
use crate::limits::RateLimits;
use crate::metrics::{AuditWait, Metrics};
use crate::policy::store::PolicyStore;
use crate::policy::{App, Operation, PolicySet};
use crate::server::{Body, Peer};
use crate::tls::revocation::RevocationError;
use crate::tls::ActiveServerTls;

/// The mTLS listener's handler: the frame every request goes through
/// (identify the app, check revocation, authenticate the officer, the app's
/// and officer's limits, route), then one surface, then the outcome event.
pub struct Api {
    pub policy: Arc<PolicyStore>,
    pub tokens: Arc<TokenVerifier>,
    pub limits: Arc<RateLimits>,
    /// The listener's TLS snapshot, whose revocation lists every request checks.
    pub tls: ActiveServerTls,
    pub metrics: Arc<Metrics>,
    pub recorder: AuditRecorder,
    pub console: ConsoleAccess,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub citizens: CitizensApi,
    pub admin: AdminApi,
    pub audit: AuditApi,
    /// Pipelines still running (the gateway's stop waits for them).
    pub in_flight: InFlight,
    /// Where request traces go (nowhere unless `[telemetry]` says).
    pub tracer: crate::telemetry::Tracer,
}

/// Counts the request pipelines that are running, so that a stopping
/// gateway can wait for their outcome events before it closes the journal.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

/// Held by one running pipeline.
pub struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InFlight {
    pub fn enter(&self) -> Running {
        self.0.fetch_add(1, Ordering::AcqRel);
        Running(self.0.clone())
    }

    /// Waits until no pipeline runs, or `deadline`; returns how many still do.
    pub async fn drained(&self, deadline: tokio::time::Instant) -> usize {
        loop {
            let running = self.0.load(Ordering::Acquire);
            if running == 0 || tokio::time::Instant::now() >= deadline {
                return running;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Api {
    /// Entry point for every request on the mTLS listener. Every request is
    /// audited; its answer is released only once the outcome event is
    /// durable, else the caller gets 503 and nothing else.
    ///
    /// The pipeline runs in a task of its own: a client that goes away
    /// drops this future (hyper does so when the connection closes), never
    /// the pipeline, which runs on to its outcome event — `abandoned` when
    /// the client left before the answer.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: Arc<Peer>) -> Response<Body> {
        let (present, client) = tokio::sync::oneshot::channel::<std::convert::Infallible>();
        let api = self.clone();
        let resp = self
            .detached(async move { api.serve(req, peer, client).await })
            .await;
        // Held until here: dropped early, it tells the pipeline the client left.
        drop(present);
        resp
    }

    /// The whole life of one request; `client` closes when the client has
    /// gone.
    async fn serve(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Arc<Peer>,
        mut client: tokio::sync::oneshot::Receiver<std::convert::Infallible>,
    ) -> Response<Body> {
        let started = std::time::Instant::now();
        let traceparent = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let trace = crate::telemetry::RequestTrace::start(traceparent.as_deref(), &self.tracer);
        let mut trail = Trail {
            audit_id: uuid::Uuid::now_v7().to_string(),
            request_id: uuid::Uuid::now_v7().to_string(),
            trace_id: trace.audit_trace_id(),
            trace,
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
                let run = self.run(route, req, &peer, &mut trail);
                match tokio::time::timeout(self.request_timeout, run).await {
                    Ok(result) => result,
                    Err(_) => Err(ApiError::RequestTimeout),
                }
            }
        };
        // The client left before the answer: nothing is released to anyone.
        let gone = matches!(
            client.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed)
        );
        self.conclude(trail, result, gone, started).await
    }

    /// The end of every request: the problem document of an error, the
    /// outcome (or admin) event made durable before anything is released,
    /// the trace, the log line and the metrics.
    async fn conclude(
        &self,
        mut trail: Trail,
        result: Result<Response<Body>, ApiError>,
        client_gone: bool,
        started: std::time::Instant,
    ) -> Response<Body> {
        let (resp, mut decision, mut reason) = match result {
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
        // (An admin or audit action took effect whether or not its caller
        // saw the answer: its decision stands.)
        let abandoned = !trail.console && client_gone;
        if abandoned {
            decision = "abandoned";
            reason = Some(match reason {
                Some(r) => format!("the client left before the answer (which would have been: {r})"),
                None => "the client left before the answer".to_owned(),
            });
            trail.released.clear();
            trail.released_digest = None;
            trail.warehouse.clear();
            trail.subjects.clear();
        }
        let kind = if trail.console {
            EventKind::Admin
        } else {
            EventKind::Outcome
        };
        let mut event = trail.event(kind, &trail.audit_id, decision, reason);
        event.http_status = (!abandoned).then(|| resp.status().as_u16());
        event.released_digest = trail
            .released_digest
            .take()
            .filter(|_| resp.status() == StatusCode::OK);
        let warehouse = std::mem::take(&mut trail.warehouse);
        let waited = std::time::SystemTime::now();
        let recorded = self.recorder.record(AuditWait::Outcome, event, warehouse).await;
        trail.step("journal wait", waited, recorded.is_err());
        let resp = match recorded {
            Ok(_) => resp,
            Err(e) => {
                tracing::error!(request_id = %trail.request_id, error = %e, "answer withheld: audit not durable");
                problem_response(&ApiError::AuditUnavailable, &trail.request_id, None)
            }
        };
        let status = resp.status().as_u16();
        trail.trace.finish(
            &self.tracer,
            "request",
            || {
                vec![
                    (
                        "popgate.operation",
                        serde_json::Value::from(trail.operation.clone()),
                    ),
                    (
                        "popgate.app",
                        serde_json::Value::from(trail.app_id.clone().unwrap_or_default()),
                    ),
                    (
                        "popgate.policy_version",
                        serde_json::Value::from(trail.policy_version.unwrap_or(0)),
                    ),
                    ("http.response.status_code", serde_json::Value::from(status)),
                    (
                        "popgate.request_id",
                        serde_json::Value::from(trail.request_id.clone()),
                    ),
                ]
            },
            status >= 500,
        );
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

    /// One action of the web console by an official signed in there: the
    /// same surfaces, role checks and audit events as the API, with the
    /// console as the app and the official as the officer. `path` may carry
    /// a query; `accept` is the representation asked for.
    ///
    /// It runs in a task of its own, as every request of the mTLS listener
    /// does: a browser that goes away does not stop an action between its
    /// effect and its audit event.
    pub async fn console_call(
        self: &Arc<Self>,
        console_app: &App,
        official: &Official,
        method: Method,
        path: &str,
        accept: &str,
        body: Vec<u8>,
    ) -> Response<Body> {
        let (api, app, official) = (self.clone(), console_app.clone(), official.clone());
        let (path, accept) = (path.to_owned(), accept.to_owned());
        self.detached(async move {
            api.console_pipeline(&app, &official, method, &path, &accept, body)
                .await
        })
        .await
    }

    /// Runs `work` (a request's pipeline) in a task of its own, counted
    /// among the pipelines a stopping gateway waits for.
    ///
    /// The pipeline's state is some kilobytes: it is boxed once, where it
    /// is made, so that neither the task nor the future hyper holds for
    /// the request carries it by value (each move of a task's future, its
    /// stages and its output copied all of it).
    fn detached(
        &self,
        work: impl std::future::Future<Output = Response<Body>> + Send + 'static,
    ) -> impl std::future::Future<Output = Response<Body>> + Send + 'static {
        let in_flight = self.in_flight.enter();
        let work = Box::pin(work);
        let task = tokio::spawn(async move {
            let _in_flight = in_flight;
            work.await
        });
        async move {
            match task.await {
                Ok(resp) => resp,
                Err(error) => {
                    tracing::error!(%error, "request pipeline failed");
                    let request_id = uuid::Uuid::now_v7().to_string();
                    finish(
                        problem_response(&ApiError::AuditUnavailable, &request_id, None),
                        &request_id,
                    )
                }
            }
        }
    }

    async fn console_pipeline(
        &self,
        console_app: &App,
        official: &Official,
        method: Method,
        path: &str,
        accept: &str,
        body: Vec<u8>,
    ) -> Response<Body> {
        let started = std::time::Instant::now();
        let mut trail = self.console_trail(console_app, official);
        let result = async {
            let parts = Request::builder()
                .method(method.clone())
                .uri(path)
                .header(http::header::ACCEPT, accept)
                .body(())
                .map_err(|_| ApiError::NoRoute)?
                .into_parts()
                .0;
            let route = route(&method, parts.uri.path());
            trail.operation = route.as_ref().map_or_else(|_| "none".to_owned(), Route::name);
            let run = self.run_console(route?, console_app, official, parts, &body, &mut trail);
            match tokio::time::timeout(self.request_timeout, run).await {
                Ok(result) => result,
                Err(_) => Err(ApiError::RequestTimeout),
            }
        }
        .await;
        self.conclude(trail, result, false, started).await
    }

    /// Records a console event of the console's own (a sign-in, refused or
    /// not; a sign-out) as an admin event; the answer is the event's status.
    pub async fn console_event(
        self: &Arc<Self>,
        console_app: &App,
        official: &Official,
        operation: &str,
        outcome: Result<serde_json::Value, ApiError>,
    ) -> Response<Body> {
        let started = std::time::Instant::now();
        let mut trail = self.console_trail(console_app, official);
        trail.operation = format!("console.{operation}");
        trail.policy_version = Some(self.policy.snapshot().version);
        let result = outcome.map(|details| {
            trail.details = Some(details);
            crate::server::json_response(StatusCode::OK, &serde_json::json!({}))
        });
        let api = self.clone();
        self.detached(async move { api.conclude(trail, result, false, started).await })
            .await
    }

    fn console_trail(&self, console_app: &App, official: &Official) -> Trail {
        let trace = crate::telemetry::RequestTrace::start(None, &self.tracer);
        Trail {
            console: true,
            audit_id: uuid::Uuid::now_v7().to_string(),
            request_id: uuid::Uuid::now_v7().to_string(),
            trace_id: trace.audit_trace_id(),
            trace,
            app_id: Some(console_app.id.clone()),
            officer_id: Some(official.id.clone()),
            ..Trail::default()
        }
    }

    async fn run_console(
        &self,
        route: Route,
        console_app: &App,
        official: &Official,
        parts: http::request::Parts,
        body: &[u8],
        trail: &mut Trail,
    ) -> Result<Response<Body>, ApiError> {
        let policy = self.policy.snapshot();
        trail.policy_version = Some(policy.version);
        let caller = Caller {
            app: console_app,
            officer_id: official.id.clone(),
            roles: official.roles.clone(),
            unit: None,
        };
        self.limits
            .check_caller(&console_app.id, &caller.officer_id)
            .await
            .map_err(ApiError::RateLimited)?;
        match route {
            Route::App(_) => Err(ApiError::Forbidden(
                "the console does not look up citizens: apps do, for a purpose".into(),
            )),
            Route::Admin(op) => {
                self.console.require(&caller, Console::Admin)?;
                self.admin.handle(op, &policy, &caller, &parts, body, trail).await
            }
            Route::Audit(op) => {
                self.console.require(&caller, Console::Audit)?;
                self.audit.handle(op, &policy, &caller, &parts, body, trail).await
            }
        }
    }

    async fn run(
        &self,
        route: Route,
        req: Request<Incoming>,
        peer: &Peer,
        trail: &mut Trail,
    ) -> Result<Response<Body>, ApiError> {
        // One snapshot for the whole request: a reload mid-request does not
        // change the rules this request is judged by.
        let policy = self.policy.snapshot();
        trail.policy_version = Some(policy.version);
        let t = std::time::SystemTime::now();
        let app = identify_app(&policy, peer).and_then(|app| self.check_revocation(peer).map(|()| app));
        trail.step("identify", t, app.is_err());
        let app = app?;
        trail.app_id = Some(app.id.clone());
        let t = std::time::SystemTime::now();
        let caller = self.authenticate_officer(&req, peer, app).await;
        trail.step("authenticate", t, caller.is_err());
        let caller = caller?;
        trail.officer_id = Some(caller.officer_id.clone());
        trail.officer_unit = caller.unit.map(|u| format!("{u:05}"));
        let t = std::time::SystemTime::now();
        let limited = self.limits.check_caller(&app.id, &caller.officer_id).await;
        trail.step("limit", t, limited.is_err());
        limited.map_err(ApiError::RateLimited)?;
        match route {
            Route::App(op) => {
                let (_, body) = read_request(req, self.max_body_bytes).await?;
                self.citizens.handle(op, &policy, &caller, &body, trail).await
            }
            Route::Admin(op) => {
                self.console.require(&caller, Console::Admin)?;
                let (parts, body) = read_request(req, self.max_body_bytes).await?;
                self.admin
                    .handle(op, &policy, &caller, &parts, &body, trail)
                    .await
            }
            Route::Audit(op) => {
                self.console.require(&caller, Console::Audit)?;
                let (parts, body) = read_request(req, self.max_body_bytes).await?;
                self.audit
                    .handle(op, &policy, &caller, &parts, &body, trail)
                    .await
            }
        }
    }

    /// Step: the certificate is not revoked by the current CRLs (checked on
    /// every request, so a revocation reaches keep-alive connections too,
    /// by the identity read from the certificate when it connected).
    fn check_revocation(&self, peer: &Peer) -> Result<(), ApiError> {
        if peer.client_thumbprint.is_none() {
            return Err(ApiError::UnknownApp);
        }
        let revocations = &self.tls.load().revocations;
        revocations
            .check_id(peer.client_id.as_ref())
            .map_err(|e| match e {
                RevocationError::Revoked => ApiError::Forbidden(e.to_string()),
                RevocationError::Stale => ApiError::RevocationUnknown,
            })
    }

    /// Step: the officer, from a token bound to the app's certificate.
    async fn authenticate_officer<'a>(
        &self,
        req: &Request<Incoming>,
        peer: &Peer,
        app: &'a App,
    ) -> Result<Caller<'a>, ApiError> {
        let token = bearer_token(req).map_err(ApiError::Unauthorized)?;
        let cert = peer.client_thumbprint.as_ref().ok_or(ApiError::UnknownApp)?;
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
}

/// An official signed in to the web console (from the identity
/// provider's ID token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Official {
    pub id: String,
    pub name: String,
    pub roles: Vec<String>,
}

/// Every route of the mTLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    App(Operation),
    Admin(AdminOp),
    Audit(AuditOp),
}

impl Route {
    /// The operation name recorded in audit events.
    pub fn name(&self) -> String {
        match self {
            Route::App(op) => op.as_str().to_owned(),
            Route::Admin(op) => format!("admin.{}", op.name()),
            Route::Audit(op) => format!("audit.{}", op.name()),
        }
    }
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
    ("GET", "/admin/v1/policies/versions/{n}"),
    ("GET", "/admin/v1/policies/versions/{n}/diff"),
    ("POST", "/admin/v1/policies/versions/{n}/confirm"),
    ("POST", "/admin/v1/policies/freeze"),
    ("POST", "/admin/v1/policies/simulate"),
    ("POST", "/audit/v1/events/search"),
    ("POST", "/audit/v1/events/export"),
    ("GET", "/audit/v1/events/{audit_id}"),
    ("POST", "/audit/v1/citizens/accesses"),
    ("GET", "/audit/v1/verify"),
    ("GET", "/audit/v1/checkpoints/latest"),
    ("GET", "/audit/v1/alerts"),
    ("POST", "/audit/v1/alerts/{alert_id}/resolve"),
    ("GET", "/audit/v1/holds"),
    ("POST", "/audit/v1/holds"),
    ("POST", "/audit/v1/holds/{hold_id}/approve"),
    ("POST", "/audit/v1/holds/{hold_id}/extend"),
    ("POST", "/audit/v1/holds/{hold_id}/lift"),
    ("GET", "/audit/v1/watchlist"),
    ("POST", "/audit/v1/watchlist"),
    ("POST", "/audit/v1/watchlist/remove"),
    ("POST", "/audit/v1/evidence"),
    ("GET", "/audit/v1/stats"),
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
pub fn route(method: &Method, path: &str) -> Result<Route, ApiError> {
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
    let id = || {
        param
            .and_then(|s| s.parse::<uuid::Uuid>().ok())
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
        "/admin/v1/policies/versions/{n}" => Route::Admin(AdminOp::Version(number()?)),
        "/admin/v1/policies/versions/{n}/confirm" => Route::Admin(AdminOp::ConfirmFreeze(number()?)),
        "/admin/v1/policies/freeze" => Route::Admin(AdminOp::Freeze),
        "/admin/v1/policies/simulate" => Route::Admin(AdminOp::Simulate),
        "/audit/v1/events/search" => Route::Audit(AuditOp::Search),
        "/audit/v1/events/export" => Route::Audit(AuditOp::Export),
        "/audit/v1/events/{audit_id}" => Route::Audit(AuditOp::Get(
            param.and_then(|s| s.parse().ok()).ok_or(ApiError::NoRoute)?,
        )),
        "/audit/v1/citizens/accesses" => Route::Audit(AuditOp::CitizenAccesses),
        "/audit/v1/verify" => Route::Audit(AuditOp::Verify),
        "/audit/v1/checkpoints/latest" => Route::Audit(AuditOp::LatestCheckpoints),
        "/audit/v1/alerts" => Route::Audit(AuditOp::Alerts),
        "/audit/v1/alerts/{alert_id}/resolve" => Route::Audit(AuditOp::ResolveAlert(id()?)),
        "/audit/v1/holds" if method == Method::GET => Route::Audit(AuditOp::Holds),
        "/audit/v1/holds" => Route::Audit(AuditOp::CreateHold),
        "/audit/v1/holds/{hold_id}/approve" => Route::Audit(AuditOp::ApproveHold(id()?)),
        "/audit/v1/holds/{hold_id}/extend" => Route::Audit(AuditOp::ExtendHold(id()?)),
        "/audit/v1/holds/{hold_id}/lift" => Route::Audit(AuditOp::LiftHold(id()?)),
        "/audit/v1/watchlist" if method == Method::GET => Route::Audit(AuditOp::WatchList),
        "/audit/v1/watchlist" => Route::Audit(AuditOp::Watch),
        "/audit/v1/watchlist/remove" => Route::Audit(AuditOp::Unwatch),
        "/audit/v1/evidence" => Route::Audit(AuditOp::Evidence),
        "/audit/v1/stats" => Route::Audit(AuditOp::Stats),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_in_the_inventory_is_routed() {
        for (method, template) in ROUTES {
            let path = template
                .replace("{id}", "7")
                .replace("{n}", "3")
                .replace("{audit_id}", "6f9619ff-8b86-d011-b42d-00c04fc964ff")
                .replace("{alert_id}", "0190f6a4-3c1e-7d2a-9b7f-1a2b3c4d5e6f")
                .replace("{hold_id}", "0190f6a4-3c1e-7d2a-9b7f-1a2b3c4d5e70");
            let method: Method = method.parse().expect("method");
            assert!(route(&method, &path).is_ok(), "{method} {path}");
            let other = if method == Method::GET {
                Method::POST
            } else {
                Method::GET
            };
            if ROUTES.contains(&(other.as_str(), template)) {
                continue;
            }
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
}
