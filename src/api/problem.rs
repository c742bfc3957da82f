//! Every error the gateway answers, and the one function that turns an
//! error into an HTTP status and an RFC 9457 problem document. Details say
//! what the caller should fix; they never carry citizen data or internals.

use http::{HeaderValue, StatusCode};
use hyper::Response;
use serde_json::json;

use crate::auth::token::TokenError;
use crate::limits::Limited;
use crate::policy::Denial;
use crate::server::{json_response, Body};
use crate::warehouse::WarehouseError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no route")]
    NoRoute,
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    #[error("client certificate names no registered app")]
    UnknownApp,
    #[error("body too large")]
    BodyTooLarge(usize),
    #[error("body unreadable")]
    BodyUnreadable,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("unauthorized: {0}")]
    Unauthorized(TokenError),
    #[error("rate limited")]
    RateLimited(Limited),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("denied: {0}")]
    Denied(Denial),
    #[error("citizen not found")]
    CitizenNotFound,
    #[error("upstream failed")]
    UpstreamFailed,
    #[error("upstream timed out")]
    UpstreamTimeout,
    #[error("request timed out")]
    RequestTimeout,
    #[error("audit journal unavailable")]
    AuditUnavailable,
    #[error("not permitted: {0}")]
    Forbidden(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid policy set ({} problems)", .0.len())]
    InvalidPolicy(Vec<String>),
    #[error("warehouse unavailable")]
    Warehouse(#[from] WarehouseError),
    #[error("not acceptable")]
    NotAcceptable(&'static str),
    #[error("upstream circuit open")]
    CircuitOpen(std::time::Duration),
    #[error("revocation status unknown")]
    RevocationUnknown,
    /// A fault of the gateway itself; the detail is for the operator's log.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str, String) {
        use ApiError::*;
        match self {
            NoRoute => (StatusCode::NOT_FOUND, "no-route", "No such endpoint",
                "This path is not part of the popgate API; see docs/api.md for the endpoints.".into()),
            MethodNotAllowed(allow) => (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed",
                format!("This endpoint accepts {allow} only.")),
            UnknownApp => (StatusCode::FORBIDDEN, "unknown-app", "Unknown application",
                "The client certificate is valid but names no app registered in the active policy; ask the data office to register the app's certificate identity.".into()),
            BodyTooLarge(limit) => (StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", "Request body too large",
                format!("Request bodies are limited to {limit} bytes.")),
            BodyUnreadable => (StatusCode::BAD_REQUEST, "invalid-request", "Invalid request",
                "The request body could not be read completely.".into()),
            UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported media type",
                "Send the body as JSON with content-type: application/json.".into()),
            Unauthorized(e) => (StatusCode::UNAUTHORIZED, "invalid-token", "Officer token refused",
                format!("{}.", e.to_string().trim_end_matches('.'))),
            RateLimited(l) => (StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Rate limit reached",
                format!("Over {}; retry after {} seconds.", l.kind.describe(), l.retry_after_secs())),
            InvalidRequest(detail) => (StatusCode::BAD_REQUEST, "invalid-request", "Invalid request", detail.clone()),
            Denied(denial) => (StatusCode::FORBIDDEN, "forbidden", "Access denied by policy",
                format!("{denial}.")),
            CitizenNotFound => (StatusCode::NOT_FOUND, "citizen-not-found", "Citizen not found",
                "The national population database has no citizen with this personal ID; check the number with the citizen.".into()),
            UpstreamFailed => (StatusCode::BAD_GATEWAY, "upstream-failed", "National database failed",
                "The national population database could not answer; retry later.".into()),
            UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream-timeout", "National database timed out",
                "The national population database did not answer in time; retry later.".into()),
            RequestTimeout => (StatusCode::SERVICE_UNAVAILABLE, "request-timeout", "Request took too long",
                "The gateway could not complete the request in time; retry later.".into()),
            Forbidden(detail) => (StatusCode::FORBIDDEN, "forbidden", "Not permitted", format!("{detail}.")),
            NotFound(what) => (StatusCode::NOT_FOUND, "not-found", "Not found", format!("{what}.")),
            Conflict(detail) => (StatusCode::CONFLICT, "conflict", "Conflict", format!("{detail}.")),
            InvalidPolicy(problems) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-policy", "The resulting policy set is invalid",
                format!("{} problem(s) in the policy set this proposal would make; see 'problems' (FILE:LINE:COL: message).", problems.len())),
            CircuitOpen(wait) => (StatusCode::SERVICE_UNAVAILABLE, "upstream-circuit-open", "National database suspended",
                format!("The national population database has been failing; calls resume in about {} seconds.", wait.as_secs().max(1))),
            RevocationUnknown => (StatusCode::SERVICE_UNAVAILABLE, "revocation-unknown", "Certificate status unknown",
                "The gateway's certificate revocation list is out of date, so it trusts no certificate until a fresh one is loaded; retry later.".into()),
            Warehouse(_) => (StatusCode::SERVICE_UNAVAILABLE, "warehouse-unavailable", "Warehouse unavailable",
                "The provincial warehouse cannot be reached right now; retry later.".into()),
            NotAcceptable(offer) => (StatusCode::NOT_ACCEPTABLE, "not-acceptable", "Not acceptable",
                format!("This endpoint answers {offer}; set the accept header to one of them.")),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal-error", "Internal error",
                "The gateway could not complete this request because of a fault of its own; the operator's log says which. Retry later.".into()),
            AuditUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "audit-unavailable", "Audit record could not be written",
                "The gateway releases no data it cannot audit, and its audit journal cannot be written right now; retry later.".into()),
        }
    }
}

/// The problem document for `err`, with the request id (and the audit id
/// of the event that records it, when there is one).
pub fn problem_response(err: &ApiError, request_id: &str, audit_id: Option<&str>) -> Response<Body> {
    if let ApiError::Warehouse(e) = err {
        // The cause is for the operator; the caller is told to retry.
        tracing::error!(%request_id, error = %e, "warehouse unavailable");
    }
    if let ApiError::Internal(e) = err {
        tracing::error!(%request_id, error = %e, "internal error");
    }
    let (status, slug, title, detail) = err.parts();
    let mut doc = json!({
        "type": format!("urn:popgate:problem:{slug}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
        "request_id": request_id,
    });
    if let Some(id) = audit_id {
        doc["audit_id"] = json!(id);
    }
    if let ApiError::InvalidPolicy(problems) = err {
        doc["problems"] = json!(problems);
    }
    let mut resp = json_response(status, &doc);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    let headers = resp.headers_mut();
    match err {
        ApiError::MethodNotAllowed(allow) => {
            headers.insert(http::header::ALLOW, HeaderValue::from_static(allow));
        }
        // RFC 6750 §3: no error code when no credentials were sent.
        ApiError::Unauthorized(TokenError::Missing) => {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"popgate\""),
            );
        }
        ApiError::Unauthorized(_) => {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"popgate\", error=\"invalid_token\""),
            );
        }
        ApiError::RateLimited(l) => {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(l.retry_after_secs()));
        }
        ApiError::CircuitOpen(wait) => {
            headers.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(wait.as_secs().max(1)),
            );
        }
        _ => {}
    }
    resp
}
