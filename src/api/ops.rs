//! The ops listener (plain HTTP, loopback by default): `/healthz` says the
//! process is alive, `/readyz` whether it should receive traffic and the
//! state of what it depends on, `/metrics` for Prometheus, `/openapi.yaml`
//! the API's document. No citizen data is ever served here.

use std::sync::Arc;

use http::{Method, StatusCode};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::json;

use super::problem::{problem_response, ApiError};
use super::status::GatewayStatus;
use crate::audit::journal::JournalState;
use crate::policy::store::PolicyStore;
use crate::server::{json_response, Body, Peer};
use crate::warehouse::Warehouse;

pub struct OpsApi {
    pub metrics: Arc<crate::metrics::Metrics>,
    pub breaker: Arc<crate::upstream::breaker::CircuitBreaker>,
    pub limits: Arc<crate::limits::RateLimits>,
    pub tokens: Arc<crate::auth::token::TokenVerifier>,
    pub status: Arc<GatewayStatus>,
    pub journal: Arc<JournalState>,
    pub policy: Arc<PolicyStore>,
    pub warehouse: Warehouse,
    pub instance_id: String,
    /// No delivery for this long with a backlog: the shipper is stuck.
    pub shipper_stuck_after: std::time::Duration,
}

/// The API's OpenAPI 3.1 document, as shipped with this build.
const OPENAPI: &str = include_str!("../../docs/openapi.yaml");

/// The document as an answer (the ops listener's and the console's
/// `/openapi.yaml`).
pub fn openapi() -> Response<Body> {
    let mut resp = Response::new(http_body_util::BodyExt::boxed(http_body_util::Full::new(
        bytes::Bytes::from_static(OPENAPI.as_bytes()),
    )));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/yaml; charset=utf-8"),
    );
    resp
}

impl OpsApi {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, _peer: Arc<Peer>) -> Response<Body> {
        let request_id = uuid::Uuid::now_v7().to_string();
        if req.method() != Method::GET {
            return problem_response(&ApiError::MethodNotAllowed("GET"), &request_id, None);
        }
        match req.uri().path() {
            "/healthz" => json_response(StatusCode::OK, &json!({ "status": "alive" })),
            "/readyz" => self.readyz().await,
            "/metrics" => self.metrics(),
            "/openapi.yaml" => openapi(),
            _ => problem_response(&ApiError::NoRoute, &request_id, None),
        }
    }

    fn metrics(&self) -> Response<Body> {
        use std::sync::atomic::Ordering;
        let j = &self.journal;
        let text = self.metrics.render(&crate::metrics::Gauges {
            policy_version: self.policy.version(),
            journal_durable_seq: j.durable_seq.load(Ordering::Acquire),
            journal_delivered_seq: j.delivered_seq.load(Ordering::Acquire),
            journal_backlog: j.backlog(),
            shipper_lag_seconds: j.backlog_age().as_secs(),
            journal_degraded: j.degraded.load(Ordering::Acquire),
            chain_fork: j.fork.load(Ordering::Acquire),
            policy_refusals: self.policy.refusals(),
            unresolved_addresses: crate::units::unresolved_addresses(),
            upstream_circuit_open: self.breaker.is_open(),
            limiter_keys: self.limits.tracked_keys(),
            token_cache_entries: self.tokens.cached(),
            limits_shared: self.limits.mode() == crate::limits::LimitsMode::Shared,
            limits_fallbacks: self.limits.fallbacks(),
            live_instances: self.limits.live_instances(),
        });
        let mut resp = Response::new(http_body_util::BodyExt::boxed(http_body_util::Full::new(
            bytes::Bytes::from(text),
        )));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        resp
    }

    async fn readyz(&self) -> Response<Body> {
        let listening = self.status.is_listening();
        let policy_version = self.policy.version();
        let warehouse = if self.warehouse.is_up().await {
            "up"
        } else {
            "down"
        };
        let journal_ok = !self.journal.degraded.load(std::sync::atomic::Ordering::Acquire);
        let fork = self.journal.fork.load(std::sync::atomic::Ordering::Acquire);
        let refused = self.policy.refused();
        let (backlog, age) = (self.journal.backlog(), self.journal.backlog_age());
        let shipper = if fork {
            "chain fork".to_owned()
        } else if backlog > 0 && age >= self.shipper_stuck_after {
            format!(
                "stuck: nothing delivered for {} s while {backlog} events wait",
                age.as_secs()
            )
        } else {
            "ok".to_owned()
        };
        // A refused version leaves this instance serving on the last good
        // one: it says so, and stays ready (an attacker who can write a row
        // must not be able to take every instance out).
        let ready = listening && policy_version > 0 && journal_ok && !fork;
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_response(
            status,
            &json!({
                "ready": ready,
                "instance_id": self.instance_id,
                "listener": if listening { "up" } else { "down" },
                "policy_version": policy_version,
                "policy": match &refused {
                    None => "ok".to_owned(),
                    Some((v, _)) => format!("refused version {v}: not signed by a trusted instance (see the log)"),
                },
                "journal": if journal_ok { "ok" } else { "degraded" },
                "shipper": shipper,
                "audit_backlog": self.journal.backlog(),
                "audit_backlog_age_secs": self.journal.backlog_age().as_secs(),
                "warehouse": warehouse,
                "upstream": self.status.upstream_state(),
                "upstream_circuit": if self.breaker.is_open() { "open" } else { "closed" },
                "rate_limits": self.limits.mode().as_str(),
                "live_instances": self.limits.live_instances(),
            }),
        )
    }
}
