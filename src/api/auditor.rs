//! The auditors' surface, `/audit/v1/...` (role `auditor`, through an audit
//! app): search events, read one, export them (CSV or JSON Lines, streamed
//! page by page), answer a citizen's "who accessed my data" (JSON pages or
//! a printable letter), verify the log, act on alerts, keep a watch list,
//! hold disclosures for investigations and make evidence bundles. A
//! personal ID given by an auditor is turned into its pseudonym before any
//! query; none is ever stored or logged.

use std::sync::atomic::Ordering;
use std::sync::Arc;
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
use super::request::{check_text, parse_json, parse_json_or_empty, query_param, Caller, Trail};
use crate::audit::alerts::{Engine as AlertEngine, VERIFY_FAILURE};
use crate::audit::checkpoint::Signer;
use crate::audit::event::Pseudonymiser;
use crate::audit::journal::Journal;
use crate::audit::report::{access, vietnam_time, Letter};
use crate::audit::verify::TrustedKeys;
use crate::clock::Clock;
use crate::personal_id::PersonalId;
use crate::policy::PolicySet;
use crate::server::{json_response, Body, ChannelBody};
use crate::warehouse::alerts::{AlertFilter, NewAlert};
use crate::warehouse::audit_queries::{EventFilter, EventKey, StoredEvent};
use crate::warehouse::holds::Hold;
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
    /// Signs evidence bundles.
    pub signer: Arc<Signer>,
    pub instance_id: String,
    /// Today, for holds and reports.
    pub clock: Clock,
    /// A hold longer than this needs a second auditor's approval.
    pub hold_without_approval: Duration,
    /// The province's name, at the top of a citizen's letter.
    pub province_name: String,
    /// The alert rules (a failed verify raises an alert).
    pub alerts: Arc<AlertEngine>,
}

/// What each call's body takes, for error details.
const TAKES_SEARCH: &str = "the body takes personal_id, app, officer, purpose, case_ref, decision, kind, from, to, cursor (strings) and limit (a number), all optional";
const TAKES_CITIZEN: &str =
    "the body takes personal_id (a string), and optionally from, to, cursor (strings) and limit (a number)";
const TAKES_HOLD: &str = "the body takes until (a date, YYYY-MM-DD), reason and legal_basis (strings), and case_ref, or app and purpose (strings)";
const TAKES_EXTEND: &str = "the body takes until (a date, YYYY-MM-DD) and reason (a string)";
const TAKES_NOTE: &str = "the body takes note (a string)";
const TAKES_REASON: &str = "the body takes reason (a string)";
const TAKES_WATCH: &str = "the body takes personal_id and reason (strings)";
const TAKES_UNWATCH: &str = "the body takes personal_id (a string)";
const TAKES_EVIDENCE: &str = "the body takes case_ref or personal_id, and optionally from and to (strings)";

const DEFAULT_PAGE: i64 = 50;
/// Officers the distinct-citizens chart names.
const STATS_TOP_OFFICERS: i64 = 10;
const MAX_PAGE: i64 = 500;
const EXPORT_PAGE: i64 = 1000;
/// A citizen report's page, by default and at most.
const REPORT_PAGE: i64 = 100;
/// The printable letter holds at most this many accesses.
const LETTER_MAX: usize = 5000;
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
    Alerts,
    ResolveAlert(uuid::Uuid),
    Holds,
    CreateHold,
    ApproveHold(uuid::Uuid),
    ExtendHold(uuid::Uuid),
    LiftHold(uuid::Uuid),
    WatchList,
    Watch,
    Unwatch,
    Evidence,
    Stats,
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
            AuditOp::Alerts => "alerts",
            AuditOp::ResolveAlert(_) => "alert-resolve",
            AuditOp::Holds => "holds",
            AuditOp::CreateHold => "hold-create",
            AuditOp::ApproveHold(_) => "hold-approve",
            AuditOp::ExtendHold(_) => "hold-extend",
            AuditOp::LiftHold(_) => "hold-lift",
            AuditOp::WatchList => "watch-list",
            AuditOp::Watch => "watch",
            AuditOp::Unwatch => "unwatch",
            AuditOp::Evidence => "evidence",
            AuditOp::Stats => "stats",
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
    from: Option<String>,
    to: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldBody {
    case_ref: Option<String>,
    app: Option<String>,
    purpose: Option<String>,
    until: String,
    reason: String,
    legal_basis: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendBody {
    until: String,
    reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteBody {
    note: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchBody {
    personal_id: String,
    reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnwatchBody {
    personal_id: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EvidenceBody {
    case_ref: Option<String>,
    personal_id: Option<String>,
    from: Option<String>,
    to: Option<String>,
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

fn date(s: &str, name: &str) -> Result<time::Date, ApiError> {
    time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
        .map_err(|_| bad(format!("{name} must be a date such as 2027-03-31")))
}

/// A non-empty, printable text field.
fn required_text(name: &str, value: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(bad(format!("{name} must not be empty")));
    }
    check_text(name, value)
}

/// A query parameter, with the escapes a time needs (`%2B`, `%3A`) undone.
fn query_text(parts: &http::request::Parts, name: &str) -> Option<String> {
    query_param(parts.uri.query(), name).map(|v| {
        v.replace("%2B", "+")
            .replace("%2b", "+")
            .replace("%3A", ":")
            .replace("%3a", ":")
    })
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
        caller: &Caller<'_>,
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
                let window = (timestamp(&b.from, "from")?, timestamp(&b.to, "to")?);
                let cursor = b.cursor.as_deref().map(decode_cursor).transpose()?;
                let limit = b.limit.unwrap_or(REPORT_PAGE);
                if !(1..=MAX_PAGE).contains(&limit) {
                    return Err(bad(format!("limit must be 1 to {MAX_PAGE}")));
                }
                trail.details = Some(json!({ "from": b.from, "to": b.to, "page": b.cursor.is_some() }));
                if wants_html(parts) {
                    if cursor.is_some() || b.limit.is_some() {
                        return Err(bad("the printable letter takes personal_id, from and to only (it holds every access of the period)"));
                    }
                    return api.letter(policy, &key, window).await;
                }
                let today = api.clock.today();
                let page = api
                    .warehouse
                    .citizen_accesses(&key, window, cursor.as_ref(), today, limit)
                    .await?;
                let next = (page.len() as i64 == limit)
                    .then(|| page.last().map(|(e, _)| encode_cursor(&e.key)))
                    .flatten();
                let list: Vec<_> = page
                    .iter()
                    .map(|(e, r)| access(policy, &key, e, r.as_ref()))
                    .collect();
                Ok(json_response(
                    StatusCode::OK,
                    &json!({
                        "province": api.province_name,
                        "generated_at": vietnam_time(&api.clock.now()),
                        "from": b.from, "to": b.to,
                        "accesses": list, "count": list.len(), "next_cursor": next,
                    }),
                ))
            }
            AuditOp::Alerts => {
                let filter = AlertFilter {
                    rule: query_text(parts, "rule"),
                    state: query_text(parts, "state"),
                    from: timestamp(&query_text(parts, "from"), "from")?,
                    to: timestamp(&query_text(parts, "to"), "to")?,
                };
                if let Some(state) = &filter.state {
                    if state != "open" && state != "resolved" {
                        return Err(bad("state must be open or resolved"));
                    }
                }
                if let Some(rule) = &filter.rule {
                    if !crate::audit::alerts::RULES.contains(&rule.as_str()) {
                        return Err(bad(format!(
                            "rule must be one of {}",
                            crate::audit::alerts::RULES.join(", ")
                        )));
                    }
                }
                let limit = match query_text(parts, "limit") {
                    None => DEFAULT_PAGE,
                    Some(l) => l
                        .parse()
                        .ok()
                        .filter(|l| (1..=MAX_PAGE).contains(l))
                        .ok_or_else(|| bad(format!("limit must be 1 to {MAX_PAGE}")))?,
                };
                let cursor = query_text(parts, "cursor")
                    .as_deref()
                    .map(decode_alert_cursor)
                    .transpose()?;
                let page = api.warehouse.alerts(&filter, cursor, limit).await?;
                let next = (page.len() as i64 == limit)
                    .then(|| page.last().map(|a| encode_alert_cursor(a.raised_at, a.id)))
                    .flatten();
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "alerts": page, "next_cursor": next }),
                ))
            }
            AuditOp::ResolveAlert(id) => {
                let b: NoteBody = parse_json(body, TAKES_NOTE)?;
                required_text("note", &b.note)?;
                trail.details = Some(json!({ "alert": id, "note": b.note }));
                match api
                    .warehouse
                    .resolve_alert(&id, &caller.officer_id, &b.note)
                    .await?
                {
                    None => Err(ApiError::NotFound("no alert with this id".into())),
                    Some((_, false)) => Err(ApiError::Conflict("this alert is already resolved".into())),
                    Some((alert, true)) => Ok(json_response(StatusCode::OK, &json!(alert))),
                }
            }
            AuditOp::Holds => {
                let today = api.clock.today();
                let holds: Vec<Value> = api
                    .warehouse
                    .holds()
                    .await?
                    .iter()
                    .map(|h| hold_json(h, today))
                    .collect();
                Ok(json_response(StatusCode::OK, &json!({ "holds": holds })))
            }
            AuditOp::CreateHold => {
                let b: HoldBody = parse_json(body, TAKES_HOLD)?;
                let hold = api.new_hold(policy, caller, b)?;
                trail.case_ref.clone_from(&hold.case_ref);
                trail.details = Some(hold_details(&hold));
                api.warehouse.insert_hold(&hold).await?;
                Ok(json_response(
                    StatusCode::CREATED,
                    &hold_json(&hold, api.clock.today()),
                ))
            }
            AuditOp::ApproveHold(id) | AuditOp::ExtendHold(id) | AuditOp::LiftHold(id) => {
                let mut hold = api
                    .warehouse
                    .hold(&id)
                    .await?
                    .ok_or_else(|| ApiError::NotFound("no hold with this id".into()))?;
                if hold.lifted_at.is_some() {
                    return Err(ApiError::Conflict("this hold was lifted; make a new one".into()));
                }
                let today = api.clock.today();
                let now = api.clock.now();
                let who = caller.officer_id.clone();
                match op {
                    AuditOp::ApproveHold(_) => {
                        if hold.requested_by == who {
                            return Err(ApiError::Forbidden(
                                "a hold is approved by a second auditor, not by the one who asked for it"
                                    .into(),
                            ));
                        }
                        if hold.in_force_until == hold.until {
                            return Err(ApiError::Conflict(
                                "this hold is already in force for its whole length".into(),
                            ));
                        }
                        hold.approved_by = Some(who);
                        hold.approved_at = Some(now);
                        hold.in_force_until = hold.until;
                    }
                    AuditOp::ExtendHold(_) => {
                        let b: ExtendBody = parse_json(body, TAKES_EXTEND)?;
                        required_text("reason", &b.reason)?;
                        let until = date(&b.until, "until")?;
                        if until <= hold.until {
                            return Err(bad(format!(
                                "until must be after the hold's current end, {}",
                                hold.until
                            )));
                        }
                        let cap = today + time::Duration::days(api.hold_days());
                        hold.until = until;
                        hold.requested_by = who;
                        hold.approved_by = None;
                        hold.approved_at = None;
                        hold.in_force_until = hold.in_force_until.max(until.min(cap));
                        trail.details = Some(json!({ "reason": b.reason }));
                    }
                    _ => {
                        let b: ReasonBody = parse_json(body, TAKES_REASON)?;
                        required_text("reason", &b.reason)?;
                        hold.lifted_by = Some(who);
                        hold.lifted_at = Some(now);
                        hold.lift_reason = Some(b.reason);
                    }
                }
                let mut details = hold_details(&hold);
                if let (Some(Value::Object(extra)), Value::Object(d)) = (trail.details.take(), &mut details) {
                    d.extend(extra);
                }
                trail.case_ref.clone_from(&hold.case_ref);
                trail.details = Some(details);
                api.warehouse.update_hold(&hold).await?;
                Ok(json_response(StatusCode::OK, &hold_json(&hold, today)))
            }
            AuditOp::WatchList => {
                let list = api.warehouse.watch_list().await?;
                let entries: Vec<Value> = list
                    .iter()
                    .map(|(reason, by, at)| json!({ "reason": reason, "added_by": by, "added_at": vietnam_time(at) }))
                    .collect();
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "count": entries.len(), "entries": entries }),
                ))
            }
            AuditOp::Watch => {
                let b: WatchBody = parse_json(body, TAKES_WATCH)?;
                required_text("reason", &b.reason)?;
                let key = api.pseudonym_of(&b.personal_id)?;
                trail.citizen_key = Some(key.clone());
                trail.details = Some(json!({ "reason": b.reason }));
                let added = api.warehouse.watch(&key, &b.reason, &caller.officer_id).await?;
                let status = if added {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                Ok(json_response(status, &json!({ "watched": true, "added": added })))
            }
            AuditOp::Unwatch => {
                let b: UnwatchBody = parse_json(body, TAKES_UNWATCH)?;
                let key = api.pseudonym_of(&b.personal_id)?;
                trail.citizen_key = Some(key.clone());
                if !api.warehouse.unwatch(&key).await? {
                    return Err(ApiError::NotFound("this citizen is not on the watch list".into()));
                }
                Ok(json_response(StatusCode::OK, &json!({ "watched": false })))
            }
            AuditOp::Evidence => {
                let b: EvidenceBody = parse_json(body, TAKES_EVIDENCE)?;
                if b.case_ref.is_none() == b.personal_id.is_none() {
                    return Err(bad("an evidence bundle is of one case (case_ref) or one citizen (personal_id): give exactly one"));
                }
                let filter = EventFilter {
                    citizen_key: b
                        .personal_id
                        .as_deref()
                        .map(|p| api.pseudonym_of(p))
                        .transpose()?,
                    case_ref: b.case_ref.clone(),
                    from: timestamp(&b.from, "from")?,
                    to: timestamp(&b.to, "to")?,
                    ..EventFilter::default()
                };
                trail.citizen_key.clone_from(&filter.citizen_key);
                trail.case_ref.clone_from(&b.case_ref);
                let query = json!({ "case_ref": b.case_ref, "by_citizen": b.personal_id.is_some(), "from": b.from, "to": b.to });
                // Every event so far is anchored by a signed checkpoint.
                api.anchor_now().await;
                let bundle = crate::audit::bundle::build(
                    &api.warehouse,
                    crate::audit::bundle::Request {
                        filter,
                        query: query.clone(),
                        created_by: json!({ "officer": caller.officer_id, "app": caller.app.id }),
                        created_at: vietnam_time(&api.clock.now()),
                    },
                    &api.signer,
                    &api.instance_id,
                )
                .await?;
                trail.details = Some(json!({ "query": query, "events": bundle.matched.len() }));
                Ok(json_response(StatusCode::OK, &json!(bundle)))
            }
            AuditOp::Stats => {
                let days = match query_param(parts.uri.query(), "days") {
                    None => 14,
                    Some(d) => d
                        .parse::<i64>()
                        .ok()
                        .filter(|d| (1..=90).contains(d))
                        .ok_or_else(|| bad("days must be a whole number of days, 1 to 90"))?,
                };
                let now = api.clock.now();
                let stats = api
                    .warehouse
                    .access_stats(
                        now - time::Duration::days(days),
                        now - time::Duration::days(7),
                        STATS_TOP_OFFICERS,
                    )
                    .await?;
                trail.details = Some(json!({ "days": days }));
                Ok(json_response(
                    StatusCode::OK,
                    &json!({
                        "days": days,
                        "accesses_by_day_and_app": stats.accesses_by_day_and_app.iter()
                            .map(|(day, app, n)| json!({ "day": day, "app": app, "count": n })).collect::<Vec<_>>(),
                        "denials_by_day_and_reason": stats.denials_by_day_and_reason.iter()
                            .map(|(day, reason, n)| json!({ "day": day, "reason": reason, "count": n })).collect::<Vec<_>>(),
                        "officers_by_distinct_citizens_7d": stats.officers_by_distinct_citizens.iter()
                            .map(|(app, officer, n)| json!({ "app": app, "officer": officer, "citizens": n })).collect::<Vec<_>>(),
                    }),
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
                if !report.is_whole() {
                    api.raise_verify_failure(&report.summary(), report.findings.len())
                        .await;
                }
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
    .chain(std::iter::once(csv_cell(&json!(crate::audit::event::roles_of(
        b
    )))))
    .collect();
    format!("{}\n", cells.join(","))
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

fn wants_html(parts: &http::request::Parts) -> bool {
    parts
        .headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.split(',').any(|k| {
                k.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("text/html")
            })
        })
}

fn encode_alert_cursor(ts: OffsetDateTime, id: uuid::Uuid) -> String {
    let ts = ts
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json!([ts, id]).to_string())
}

fn decode_alert_cursor(s: &str) -> Result<(OffsetDateTime, uuid::Uuid), ApiError> {
    let invalid = || bad("cursor is not one this API returned");
    let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| invalid())?;
    let (ts, id): (String, uuid::Uuid) = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    let ts =
        OffsetDateTime::parse(&ts, &time::format_description::well_known::Rfc3339).map_err(|_| invalid())?;
    Ok((ts, id))
}

/// A hold as the API shows it: the row, and whether it is in force today.
fn hold_json(h: &Hold, today: time::Date) -> Value {
    let mut v = json!(h);
    v["in_force"] = json!(h.lifted_at.is_none() && h.in_force_until > today);
    v["needs_approval"] = json!(h.lifted_at.is_none() && h.in_force_until < h.until);
    v
}

/// What a hold's audit event records.
fn hold_details(h: &Hold) -> Value {
    json!({
        "hold": h.id, "case_ref": h.case_ref, "app": h.app, "purpose": h.purpose,
        "until": h.until.to_string(), "in_force_until": h.in_force_until.to_string(),
        "reason": h.reason, "legal_basis": h.legal_basis,
        "approved_by": h.approved_by, "lifted": h.lifted_at.is_some(), "lift_reason": h.lift_reason,
    })
}

impl AuditApi {
    fn hold_days(&self) -> i64 {
        i64::try_from(self.hold_without_approval.as_secs() / 86_400).unwrap_or(i64::MAX / 2)
    }

    /// A new hold from its request, checked.
    fn new_hold(&self, policy: &PolicySet, caller: &Caller<'_>, b: HoldBody) -> Result<Hold, ApiError> {
        required_text("reason", &b.reason)?;
        required_text("legal_basis", &b.legal_basis)?;
        for (name, v) in [
            ("case_ref", &b.case_ref),
            ("app", &b.app),
            ("purpose", &b.purpose),
        ] {
            if let Some(v) = v {
                required_text(name, v)?;
            }
        }
        if b.case_ref.is_none() && (b.app.is_none() || b.purpose.is_none()) {
            return Err(bad("a hold names a case_ref, or an app and a purpose"));
        }
        if let Some(app) = &b.app {
            if !policy.apps.contains_key(app) {
                return Err(bad(format!("app '{app}' is not an app of the active policy")));
            }
        }
        if let Some(purpose) = &b.purpose {
            if !policy.purposes.contains_key(purpose) {
                return Err(bad(format!(
                    "purpose '{purpose}' is not a purpose of the active policy"
                )));
            }
        }
        let today = self.clock.today();
        let until = date(&b.until, "until")?;
        if until <= today {
            return Err(bad(format!("until must be after today ({today}, Vietnam time)")));
        }
        let cap = today + time::Duration::days(self.hold_days());
        Ok(Hold {
            id: uuid::Uuid::now_v7(),
            case_ref: b.case_ref,
            app: b.app,
            purpose: b.purpose,
            until,
            in_force_until: until.min(cap),
            reason: b.reason,
            legal_basis: b.legal_basis,
            created_by: caller.officer_id.clone(),
            created_at: self.clock.now(),
            requested_by: caller.officer_id.clone(),
            approved_by: None,
            approved_at: None,
            lifted_by: None,
            lifted_at: None,
            lift_reason: None,
        })
    }

    /// The printable letter: every access of the window, newest first.
    async fn letter(
        &self,
        policy: &PolicySet,
        key: &str,
        window: (Option<OffsetDateTime>, Option<OffsetDateTime>),
    ) -> Result<Response<Body>, ApiError> {
        let today = self.clock.today();
        let mut all = Vec::new();
        let mut cursor: Option<EventKey> = None;
        let mut truncated = false;
        loop {
            let page = self
                .warehouse
                .citizen_accesses(key, window, cursor.as_ref(), today, MAX_PAGE)
                .await?;
            let full = page.len() as i64 == MAX_PAGE;
            cursor = page.last().map(|(e, _)| e.key.clone());
            all.extend(page.iter().map(|(e, r)| access(policy, key, e, r.as_ref())));
            if all.len() >= LETTER_MAX {
                truncated = full || all.len() > LETTER_MAX;
                all.truncate(LETTER_MAX);
                break;
            }
            if !full {
                break;
            }
        }
        let letter = Letter::new(self.province_name.clone(), today, window, &all, truncated);
        let html = askama::Template::render(&letter)
            .map_err(|e| ApiError::Internal(format!("the letter cannot be rendered: {e}")))?;
        let mut resp = Response::new(
            http_body_util::Full::new(Bytes::from(html))
                .map_err(|never| match never {})
                .boxed(),
        );
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        h.insert(
            http::header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
        );
        Ok(resp)
    }

    async fn raise_verify_failure(&self, summary: &str, findings: usize) {
        let engine = &self.alerts;
        let digest = crate::audit::event::digest_hex(summary.as_bytes());
        let alert = NewAlert {
            rule: VERIFY_FAILURE,
            dedup_key: format!("{VERIFY_FAILURE}:{}:{}", self.clock.today(), &digest[..16]),
            officer_id: None,
            app_id: None,
            instance_id: Some(self.instance_id.clone()),
            summary: format!("audit verify found {findings} problems: {summary}"),
            audit_ids: Vec::new(),
        };
        if let Err(error) = engine.raise(alert).await {
            tracing::error!(%error, "cannot store the verify-failure alert");
        }
    }
}
