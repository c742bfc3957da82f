//! Traces of the request pipeline, exported over OTLP/HTTP (JSON encoding)
//! when `[telemetry] otlp_endpoint` is set: one span per request and one
//! per step (identify, authenticate, limit, authorize, journal wait,
//! upstream, release). A W3C `traceparent` from the app is continued; its
//! trace id is recorded in the request's audit events. Attributes name the
//! app, the operation, the policy version and the status, never a citizen.
//!
//! The exporter is ours (a bounded queue and a task that POSTs batches):
//! `opentelemetry-otlp` 0.31 brings gRPC (tonic, prost) even for HTTP/JSON,
//! some forty crates for what is here a few structs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// A finished span.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub name: &'static str,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Value)>,
    pub error: bool,
}

/// Where spans go: nowhere (the default), or an exporter's queue.
#[derive(Debug, Clone, Default)]
pub struct Tracer {
    queue: Option<mpsc::Sender<Span>>,
}

/// Spans waiting for the exporter beyond this are dropped (and counted in
/// the log): tracing never holds a request up.
const QUEUE: usize = 8192;
const BATCH: usize = 512;
const FLUSH_EVERY: Duration = Duration::from_secs(1);

impl Tracer {
    /// A tracer that exports to `endpoint` (`http://HOST:PORT/v1/traces`)
    /// as `service`, and the task that does it.
    pub fn otlp(
        endpoint: http::Uri,
        service: String,
        instance: String,
    ) -> (Tracer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(export(rx, endpoint, service, instance));
        (Tracer { queue: Some(tx) }, task)
    }

    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    fn submit(&self, span: Span) {
        if let Some(q) = &self.queue {
            if q.try_send(span).is_err() {
                tracing::debug!("trace queue full: a span was dropped");
            }
        }
    }
}

/// The trace of one request: its ids, and its step spans as they end.
#[derive(Debug, Clone, Default)]
pub struct RequestTrace {
    pub trace_id: [u8; 16],
    /// The request's own span.
    pub span_id: [u8; 8],
    /// The caller's span, from `traceparent`.
    pub remote_parent: Option<[u8; 8]>,
    pub started: Option<SystemTime>,
    /// Steps are recorded only when spans are exported.
    pub recording: bool,
    pub steps: Vec<Span>,
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
    b
}

/// A W3C `traceparent` (`00-TRACEID-PARENTID-FLAGS`): the trace and the
/// caller's span, when well formed and not all zeros.
pub fn parse_traceparent(header: &str) -> Option<([u8; 16], [u8; 8])> {
    let mut parts = header.trim().split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || flags.len() != 2 || trace.len() != 32 || parent.len() != 16 {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let lower = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !(lower(version) && lower(trace) && lower(parent) && lower(flags)) {
        return None;
    }
    let bytes = crate::audit::event::unhex(trace)?;
    let span = crate::audit::event::unhex(parent)?;
    let (trace, span): ([u8; 16], [u8; 8]) = (bytes.try_into().ok()?, span.try_into().ok()?);
    (trace != [0; 16] && span != [0; 8]).then_some((trace, span))
}

impl RequestTrace {
    /// A new trace, continuing the caller's when `traceparent` says so;
    /// it records its steps when `tracer` exports them.
    pub fn start(traceparent: Option<&str>, tracer: &Tracer) -> RequestTrace {
        let (trace_id, remote_parent) = match traceparent.and_then(parse_traceparent) {
            Some((t, p)) => (t, Some(p)),
            None if tracer.enabled() => (random(), None),
            None => ([0; 16], None),
        };
        RequestTrace {
            trace_id,
            span_id: if tracer.enabled() { random() } else { [0; 8] },
            remote_parent,
            started: Some(SystemTime::now()),
            recording: tracer.enabled(),
            steps: Vec::new(),
        }
    }

    /// The trace id (hex) to record in audit events: one the app sent, or
    /// one that is exported; `None` otherwise.
    pub fn audit_trace_id(&self) -> Option<String> {
        (self.recording || self.remote_parent.is_some()).then(|| crate::audit::event::hex(&self.trace_id))
    }

    /// Records a step that began at `start` and ends now.
    pub fn step(&mut self, name: &'static str, start: SystemTime, error: bool) {
        if !self.recording {
            return;
        }
        self.steps.push(Span {
            trace_id: self.trace_id,
            span_id: random(),
            parent: Some(self.span_id),
            name,
            start,
            end: SystemTime::now(),
            attributes: Vec::new(),
            error,
        });
    }

    /// Ends the request's span and hands every span to `tracer`.
    pub fn finish(
        &mut self,
        tracer: &Tracer,
        name: &'static str,
        attributes: impl FnOnce() -> Vec<(&'static str, Value)>,
        error: bool,
    ) {
        if !self.recording {
            return;
        }
        let attributes = attributes();
        for s in self.steps.drain(..) {
            tracer.submit(s);
        }
        tracer.submit(Span {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent: self.remote_parent,
            name,
            start: self.started.unwrap_or_else(SystemTime::now),
            end: SystemTime::now(),
            attributes,
            error,
        });
    }
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        .to_string()
}

fn any_value(v: &Value) -> Value {
    match v {
        Value::Bool(b) => json!({ "boolValue": b }),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({ "intValue": n.to_string() }),
        Value::Number(n) => json!({ "doubleValue": n }),
        other => json!({ "stringValue": other.as_str().map_or_else(|| other.to_string(), str::to_owned) }),
    }
}

/// The OTLP/JSON `ExportTraceServiceRequest` of `spans`.
pub fn encode(spans: &[Span], service: &str, instance: &str) -> Value {
    let hex = crate::audit::event::hex;
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            json!({
                "traceId": hex(&s.trace_id),
                "spanId": hex(&s.span_id),
                "parentSpanId": s.parent.map(|p| hex(&p)).unwrap_or_default(),
                "name": s.name,
                "kind": if s.parent.is_none() || s.name == "request" { 2 } else { 1 },
                "startTimeUnixNano": nanos(s.start),
                "endTimeUnixNano": nanos(s.end),
                "attributes": s.attributes.iter().map(|(k, v)| json!({ "key": k, "value": any_value(v) })).collect::<Vec<_>>(),
                "status": { "code": if s.error { 2 } else { 1 } },
            })
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": { "attributes": [
                { "key": "service.name", "value": { "stringValue": service } },
                { "key": "service.instance.id", "value": { "stringValue": instance } },
            ]},
            "scopeSpans": [{ "scope": { "name": "popgate", "version": env!("CARGO_PKG_VERSION") }, "spans": spans }],
        }]
    })
}

async fn export(mut rx: mpsc::Receiver<Span>, endpoint: http::Uri, service: String, instance: String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut batch: Vec<Span> = Vec::with_capacity(BATCH);
    let mut failing = false;
    loop {
        let flush = tokio::time::sleep(FLUSH_EVERY);
        tokio::pin!(flush);
        loop {
            tokio::select! {
                span = rx.recv() => match span {
                    Some(s) => {
                        batch.push(s);
                        if batch.len() >= BATCH { break; }
                    }
                    None => {
                        if !batch.is_empty() {
                            let _ = post(&client, &endpoint, &encode(&batch, &service, &instance)).await;
                        }
                        return;
                    }
                },
                _ = &mut flush => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let body = encode(&batch, &service, &instance);
        batch.clear();
        match post(&client, &endpoint, &body).await {
            Ok(()) => failing = false,
            Err(why) => {
                if !failing {
                    tracing::warn!(%why, endpoint = %endpoint, "traces cannot be exported; dropping them until the collector answers");
                }
                failing = true;
            }
        }
    }
}

async fn post(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    endpoint: &http::Uri,
    body: &Value,
) -> Result<(), String> {
    let req = http::Request::post(endpoint.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| "no answer within 5 s".to_owned())?
        .map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("the collector answered {}", resp.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_read_as_w3c_says() {
        let (t, p) =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("valid");
        assert_eq!(crate::audit::event::hex(&t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(crate::audit::event::hex(&p), "00f067aa0ba902b7");
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}
