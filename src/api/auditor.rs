//! The auditors' surface, `/audit/v1/...` (role `auditor`, through an audit
//! app): search events, read one, export them (CSV or JSON Lines, streamed
//! page by page), answer a citizen's "who accessed my data", and verify the
//! log. A personal ID given by an auditor is turned into its pseudonym
//! before any query; none is ever stored or logged.

use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http_body_util::BodyExt;
use hyper::Response;
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::problem::ApiError;
use super::request::{parse_json, parse_json_or_empty, Trail};
use crate::audit::event::Pseudonymiser;
use crate::audit::journal::Journal;
use crate::audit::verify::TrustedKeys;
use crate::personal_id::PersonalId;
use crate::policy::PolicySet;
use crate::server::{json_response, Body, ChannelBody};
use crate::warehouse::audit_queries::{EventFilter, EventKey, StoredEvent};
use crate::warehouse::Warehouse;

/// What the audit surface uses.
pub struct AuditApi {
    pub warehouse: Warehouse,
    pub pseudonyms: Pseudonymiser,
    /// Checkpoint keys `verify` pins; `None`: those the warehouse records.
    pub trusted_keys: Option<TrustedKeys>,
    /// This instance's journal: its newest signed checkpoint is an anchor
    /// the database cannot rewrite.
    pub journal: Journal,
}

/// What each call's body takes, for error details.
const TAKES_SEARCH: &str = "the body takes personal_id, app, officer, purpose, case_ref, decision, kind, from, to, cursor (strings) and limit (a number), all optional";
const TAKES_CITIZEN: &str = "the body takes personal_id (a string)";

const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 500;
const EXPORT_PAGE: i64 = 1000;
const MAX_ACCESSES: i64 = 1000;
/// How long `verify` waits for the checkpoint it asked for to be delivered.
const ANCHOR_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditOp {
    Search,
    Get(uuid::Uuid),
    Export,
    CitizenAccesses,
    Verify,
    LatestCheckpoints,
}

impl AuditOp {
    pub fn name(&self) -> &'static str {
        match self {
            AuditOp::Search => "search",
            AuditOp::Get(_) => "get",
            AuditOp::Export => "export",
            AuditOp::CitizenAccesses => "citizen-accesses",
            AuditOp::Verify => "verify",
            AuditOp::LatestCheckpoints => "checkpoints-latest",
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    personal_id: Option<String>,
    app: Option<String>,
    officer: Option<String>,
    purpose: Option<String>,
    case_ref: Option<String>,
    decision: Option<String>,
    kind: Option<String>,
    /// RFC 3339, inclusive.
    from: Option<String>,
    /// RFC 3339, exclusive.
    to: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CitizenBody {
    personal_id: String,
}

fn bad(detail: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest(detail.into())
}

fn timestamp(s: &Option<String>, name: &str) -> Result<Option<OffsetDateTime>, ApiError> {
    s.as_deref()
        .map(|t| {
            OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).map_err(|_| {
                bad(format!(
                    "{name} must be an RFC 3339 time such as 2026-11-27T08:00:00+07:00"
                ))
            })
        })
        .transpose()
}

fn encode_cursor(key: &EventKey) -> String {
    let ts = key
        .ts
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json!([ts, key.instance_id, key.seq]).to_string())
}

fn decode_cursor(s: &str) -> Result<EventKey, ApiError> {
    let invalid = || bad("cursor is not one this API returned");
    let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| invalid())?;
    let (ts, instance_id, seq): (String, String, i64) =
        serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    let ts =
        OffsetDateTime::parse(&ts, &time::format_description::well_known::Rfc3339).map_err(|_| invalid())?;
    Ok(EventKey { ts, instance_id, seq })
}

impl AuditApi {
    /// Signs a checkpoint of this instance's head and waits (briefly) for
    /// the shipper to deliver it, so that a verify right after traffic
    /// (this auditor's own requests included) finds every event anchored.
    async fn anchor_now(&self) {
        self.journal.checkpoint().await;
        let state = &self.journal.state;
        let wanted = state.checkpoint_seq.load(Ordering::Acquire);
        let deadline = tokio::time::Instant::now() + ANCHOR_WAIT;
        while state.delivered_checkpoint.load(Ordering::Acquire) < wanted
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// This instance's newest durable checkpoint, as a list.
    fn latest_checkpoint(&self) -> Vec<crate::audit::checkpoint::Checkpoint> {
        self.journal
            .state
            .latest_checkpoint
            .lock()
            .map(|cp| cp.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn pseudonym_of(&self, personal_id: &str) -> Result<String, ApiError> {
        let pid = PersonalId::parse(personal_id, OffsetDateTime::now_utc().year())
            .map_err(|e| bad(e.to_string()))?;
        Ok(self.pseudonyms.citizen_key(&pid))
    }

    fn filter(&self, b: &SearchBody) -> Result<EventFilter, ApiError> {
        Ok(EventFilter {
            citizen_key: b
                .personal_id
                .as_deref()
                .map(|p| self.pseudonym_of(p))
                .transpose()?,
            app: b.app.clone(),
            officer: b.officer.clone(),
            purpose: b.purpose.clone(),
            case_ref: b.case_ref.clone(),
            decision: b.decision.clone(),
            kind: b.kind.clone(),
            from: timestamp(&b.from, "from")?,
            to: timestamp(&b.to, "to")?,
        })
    }
}

fn event_json(e: &StoredEvent) -> Value {
    let mut body = e.body.clone();
    body["prev_hash"] = json!(e.prev_hash);
    body["hash"] = json!(e.hash);
    body
}

impl AuditApi {
    /// Serves one audit operation; `policy` (this request's snapshot) names
    /// apps, purposes and fields in citizen reports.
    pub async fn handle(
        &self,
        op: AuditOp,
        policy: &PolicySet,
        parts: &http::request::Parts,
        body: &[u8],
        trail: &mut Trail,
    ) -> Result<Response<Body>, ApiError> {
        let api = self;
        match op {
            AuditOp::Search => {
                let b: SearchBody = parse_json_or_empty(body, TAKES_SEARCH)?;
                let limit = b.limit.unwrap_or(DEFAULT_PAGE);
                if !(1..=MAX_PAGE).contains(&limit) {
                    return Err(bad(format!("limit must be 1 to {MAX_PAGE}")));
                }
                let filter = api.filter(&b)?;
                trail.citizen_key.clone_from(&filter.citizen_key);
                trail.details = Some(search_details(&b));
                let cursor = b.cursor.as_deref().map(decode_cursor).transpose()?;
                let page = api
                    .warehouse
                    .search_events(&filter, cursor.as_ref(), limit)
                    .await?;
                let next = (page.len() as i64 == limit)
                    .then(|| page.last().map(|e| encode_cursor(&e.key)))
                    .flatten();
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "events": page.iter().map(event_json).collect::<Vec<_>>(), "next_cursor": next }),
                ))
            }
            AuditOp::Get(id) => {
                let event = api.warehouse.event_by_id(&id).await?;
                let event = event.ok_or_else(|| {
                    ApiError::NotFound("no audit event with this id has reached the warehouse".into())
                })?;
                Ok(json_response(StatusCode::OK, &event_json(&event)))
            }
            AuditOp::Export => {
                let b: SearchBody = parse_json_or_empty(body, TAKES_SEARCH)?;
                if b.cursor.is_some() || b.limit.is_some() {
                    return Err(bad(
                        "export takes the search filters only (no limit or cursor): it returns every match",
                    ));
                }
                let csv = wants_csv(parts)?;
                let filter = api.filter(&b)?;
                trail.citizen_key.clone_from(&filter.citizen_key);
                trail.details = Some(search_details(&b));
                Ok(export(api.warehouse.clone(), filter, csv))
            }
            AuditOp::CitizenAccesses => {
                let b: CitizenBody = parse_json(body, TAKES_CITIZEN)?;
                let key = api.pseudonym_of(&b.personal_id)?;
                trail.citizen_key = Some(key.clone());
                let vietnamese = parts
                    .headers
                    .get(http::header::ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("vi"));
                Ok(json_response(
                    StatusCode::OK,
                    &accesses(api, policy, key, vietnamese).await?,
                ))
            }
            AuditOp::LatestCheckpoints => Ok(json_response(
                StatusCode::OK,
                &json!({ "checkpoints": api.latest_checkpoint() }),
            )),
            AuditOp::Verify => {
                api.anchor_now().await;
                let client = api.warehouse.client().await?;
                let anchors = api.latest_checkpoint();
                let report =
                    crate::audit::verify::verify_anchored(&client, api.trusted_keys.as_ref(), &anchors)
                        .await?;
                trail.details =
                    Some(json!({ "whole": report.is_whole(), "findings": report.findings.len() }));
                Ok(json_response(
                    StatusCode::OK,
                    &json!({
                        "whole": report.is_whole(),
                        "summary": report.summary(),
                        "events": report.events,
                        "checkpoints": report.checkpoints,
                        "keys_pinned": report.keys_pinned,
                        "findings": report.findings.iter().map(|f| json!({ "instance": f.instance, "seq": f.seq, "what": f.what })).collect::<Vec<_>>(),
                        "unanchored": report.unanchored.iter().map(|(i, a, b)| json!({ "instance": i, "from": a, "to": b })).collect::<Vec<_>>(),
                    "anchors": report.anchors,
                    }),
                ))
            }
        }
    }
}

/// The filters of a search, for its audit event (never the personal ID).
fn search_details(b: &SearchBody) -> Value {
    json!({
        "by_citizen": b.personal_id.is_some(), "app": b.app, "officer": b.officer, "purpose": b.purpose,
        "case_ref": b.case_ref, "decision": b.decision, "kind": b.kind, "from": b.from, "to": b.to,
    })
}

fn wants_csv(parts: &http::request::Parts) -> Result<bool, ApiError> {
    let accept = parts
        .headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("*/*");
    for kind in accept
        .split(',')
        .map(|k| k.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
    {
        match kind.as_str() {
            "text/csv" => return Ok(true),
            "application/x-ndjson"
            | "application/jsonl"
            | "application/json-lines"
            | "*/*"
            | "application/*" => return Ok(false),
            _ => {}
        }
    }
    Err(ApiError::NotAcceptable("text/csv or application/x-ndjson"))
}

const CSV_HEADER: &str = "ts,audit_id,instance_id,seq,kind,app_id,officer_id,operation,purpose,case_ref,decision,http_status,citizen_key,fields,policy_version,reason,legal_basis,roles\n";

fn csv_cell(v: &Value) -> String {
    let text = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(";"),
        other => other.to_string(),
    };
    // Spreadsheet formula injection: a leading =, +, - or @ is neutralised.
    let text = if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

fn csv_row(e: &StoredEvent) -> String {
    let b = &e.body;
    let cells: Vec<String> = [
        "ts",
        "audit_id",
        "instance_id",
        "seq",
        "kind",
        "app_id",
        "officer_id",
        "operation",
        "purpose",
        "case_ref",
        "decision",
        "http_status",
        "citizen_key",
        "fields",
        "policy_version",
        "reason",
        "legal_basis",
    ]
    .iter()
    .map(|k| csv_cell(&b[*k]))
    .chain(std::iter::once(csv_cell(&roles(b))))
    .collect();
    format!("{}\n", cells.join(","))
}

/// The roles of the people an event's answer carried (`citizen`, `head`,
/// `member`, …), once each.
fn roles(body: &Value) -> Value {
    let mut roles: Vec<&str> = Vec::new();
    for role in body["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["role"].as_str())
    {
        if !roles.contains(&role) {
            roles.push(role);
        }
    }
    json!(roles)
}

/// Streams every matching event, a page at a time, as it is read.
fn export(warehouse: Warehouse, filter: EventFilter, csv: bool) -> Response<Body> {
    let (body, tx) = ChannelBody::new(4);
    tokio::spawn(async move {
        if csv && tx.send(Bytes::from_static(CSV_HEADER.as_bytes())).await.is_err() {
            return;
        }
        let mut cursor: Option<EventKey> = None;
        loop {
            let page = match warehouse
                .search_events(&filter, cursor.as_ref(), EXPORT_PAGE)
                .await
            {
                Ok(p) => p,
                Err(error) => {
                    // The stream ends early; the client sees a truncated body
                    // (chunked encoding without its last chunk).
                    tracing::error!(%error, "export aborted");
                    return;
                }
            };
            let mut chunk = String::with_capacity(page.len() * 400);
            for e in &page {
                if csv {
                    chunk.push_str(&csv_row(e));
                } else {
                    chunk.push_str(&event_json(e).to_string());
                    chunk.push('\n');
                }
            }
            if !chunk.is_empty() && tx.send(Bytes::from(chunk)).await.is_err() {
                return;
            }
            if (page.len() as i64) < EXPORT_PAGE {
                return;
            }
            cursor = page.last().map(|e| e.key.clone());
        }
    });
    let mut resp = Response::new(body.boxed());
    let kind = if csv {
        "text/csv; charset=utf-8"
    } else {
        "application/x-ndjson"
    };
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static(kind));
    resp
}

/// Who accessed this citizen's data: time, app, purpose, case reference and
/// fields — not the officer.
async fn accesses(
    api: &AuditApi,
    policy: &PolicySet,
    key: String,
    vietnamese: bool,
) -> Result<Value, ApiError> {
    let filter = EventFilter {
        citizen_key: Some(key.clone()),
        decision: Some("granted".to_owned()),
        kind: Some("outcome".to_owned()),
        ..EventFilter::default()
    };
    let events = api.warehouse.search_events(&filter, None, MAX_ACCESSES).await?;
    let list: Vec<Value> = events
        .iter()
        .map(|e| {
            let b = &e.body;
            let app = b["app_id"].as_str().unwrap_or_default();
            let purpose = b["purpose"].as_str().unwrap_or_default();
            // This citizen's part of the answer: as which person, which
            // fields (events before subjects were recorded: the citizen).
            let subject = b["subjects"]
                .as_array()
                .and_then(|list| list.iter().find(|s| s["key"].as_str() == Some(key.as_str())));
            let role = subject.and_then(|s| s["role"].as_str()).unwrap_or("citizen");
            let fields: Vec<Value> = subject
                .map_or(&b["fields"], |s| &s["fields"])
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(|f| {
                            let parent = f.split('.').next().unwrap_or(f);
                            let label = policy.catalog.get(parent).map(|d| d.label.clone());
                            if vietnamese {
                                json!({ "id": f, "label": label })
                            } else {
                                json!({ "id": f })
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut entry = json!({
                "time": b["ts"],
                "app": app,
                "operation": b["operation"],
                "purpose": purpose,
                "case_ref": b["case_ref"],
                "legal_basis": b["legal_basis"],
                "role": role,
                "fields": fields,
                "audit_id": b["audit_id"],
            });
            if vietnamese {
                entry["app_name"] = json!(policy.apps.get(app).map(|a| a.name.clone()));
                entry["purpose_label"] = json!(policy.purposes.get(purpose).map(|p| p.label.clone()));
            }
            entry
        })
        .collect();
    Ok(json!({ "accesses": list, "count": list.len() }))
}
