//! The app surface, `/v1/...` on the mTLS listener (role `officer`): look
//! up a citizen, verify a citizen's name and date of birth, look up a
//! household. The pipeline after the frame has identified the caller, as
//! named steps — read and validate the body, authorise, apply the grant's
//! limits, ask the national database, check jurisdiction, release the
//! granted fields — each a function that can be read alone.

use std::sync::Arc;

use http::StatusCode;
use hyper::Response;
use serde::Deserialize;
use serde_json::Value;

use super::problem::ApiError;
use super::request::{check_text, parse_json, AuditRecorder, Caller, Trail};
use super::status::GatewayStatus;
use crate::audit::event::{digest_hex, EventKind, Pseudonymiser, Subject};
use crate::audit::record::{RecordOf, WarehouseRecord};
use crate::limits::RateLimits;
use crate::metrics::{AuditWait, Metrics};
use crate::personal_id::PersonalId;
use crate::policy::release::{Released, Role};
use crate::policy::{Denial, Grant, Operation, PolicySet};
use crate::server::{self, Body};
use crate::upstream::breaker::CircuitBreaker;
use crate::upstream::{NationalDb, QueryKind, UpstreamAnswer, UpstreamError, UpstreamQuery};

/// Longest accepted case reference, in characters.
pub const MAX_CASE_REF_CHARS: usize = 64;
/// Longest accepted purpose id and full name, in characters.
const MAX_SHORT_TEXT_CHARS: usize = 200;

/// What the bodies of this surface take, for error details.
const TAKES: &str = "the body takes personal_id, purpose and case_ref (verify also full_name and date_of_birth), all JSON strings";

/// What the app surface uses.
pub struct CitizensApi {
    pub upstream: Arc<dyn NationalDb>,
    pub pseudonyms: Pseudonymiser,
    pub limits: Arc<RateLimits>,
    pub breaker: Arc<CircuitBreaker>,
    pub status: Arc<GatewayStatus>,
    pub metrics: Arc<Metrics>,
    pub recorder: AuditRecorder,
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

impl CitizensApi {
    /// Serves one app operation for `caller`, judged by `policy`.
    pub async fn handle(
        &self,
        op: Operation,
        policy: &PolicySet,
        caller: &Caller<'_>,
        body: &[u8],
        trail: &mut Trail,
    ) -> Result<Response<Body>, ApiError> {
        match op {
            Operation::Lookup | Operation::Household => {
                let b: LookupBody = parse_json(body, TAKES)?;
                let pid = self.validate_subject(&b.personal_id, &b.purpose, &b.case_ref, trail)?;
                let t = std::time::SystemTime::now();
                let grant = match authorize(policy, caller, op, &b.purpose, b.case_ref.as_deref(), trail) {
                    Ok(g) => self.check_grant_limits(caller, g, trail).await.map(|()| g),
                    Err(e) => Err(e),
                };
                trail.step("authorize", t, grant.is_err());
                let grant = grant?;
                let kind = if op == Operation::Lookup {
                    QueryKind::Lookup
                } else {
                    QueryKind::Household
                };
                let asked = pid.as_str().to_owned();
                let answer = self.ask_upstream(caller, pid, kind, trail).await?;
                let t = std::time::SystemTime::now();
                let released = self.release(policy, grant, caller, &asked, answer, trail).await;
                trail.step("release", t, released.is_err());
                let (key, released) = released?;
                Ok(envelope(trail, policy.version, key, &released))
            }
            Operation::Verify => {
                let b: VerifyBody = parse_json(body, TAKES)?;
                let pid = self.validate_subject(&b.personal_id, &b.purpose, &b.case_ref, trail)?;
                let full_name = validate_full_name(&b.full_name)?;
                let date_of_birth = validate_date(&b.date_of_birth)?;
                let t = std::time::SystemTime::now();
                let grant = match authorize(policy, caller, op, &b.purpose, b.case_ref.as_deref(), trail) {
                    Ok(g) => self.check_grant_limits(caller, g, trail).await.map(|()| g),
                    Err(e) => Err(e),
                };
                trail.step("authorize", t, grant.is_err());
                let grant = grant?;
                let kind = QueryKind::Verify {
                    full_name,
                    date_of_birth,
                };
                match self.ask_upstream(caller, pid, kind, trail).await? {
                    UpstreamAnswer::Match(m) => {
                        trail.released = vec!["match".to_owned()];
                        trail.subjects = vec![Subject {
                            fields: trail.released.clone(),
                            key: trail.citizen_key.clone(),
                            role: "citizen".to_owned(),
                        }];
                        // A verify answer releases no record: its warehouse
                        // copy says who asked, why and when.
                        if let Some(key) = trail.citizen_key.clone() {
                            let none = serde_json::Map::new();
                            let record = WarehouseRecord::enrich(
                                policy,
                                grant,
                                RecordOf {
                                    citizen_key: &key,
                                    app_id: &caller.app.id,
                                    paths: &trail.released,
                                    mapped: &none,
                                    released: &none,
                                    as_of: None,
                                    legal_basis: trail.legal_basis.clone(),
                                    household_size: None,
                                    household_role: None,
                                },
                            );
                            trail.warehouse = vec![record];
                        }
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

    /// The grant's own rate, the officer's distinct-citizen cap, and the
    /// province's quota at the national database, in that order.
    async fn check_grant_limits(
        &self,
        caller: &Caller<'_>,
        grant: &Grant,
        trail: &Trail,
    ) -> Result<(), ApiError> {
        self.limits
            .check_release(
                &caller.app.id,
                &caller.officer_id,
                &grant.purpose,
                grant.limits.per_minute,
                trail.citizen_key.as_deref(),
            )
            .await
            .map_err(ApiError::RateLimited)
    }

    /// Step: every person of the answer — jurisdiction (the citizen asked
    /// about refused outside it, other household members withheld), the
    /// granted fields only, masks applied — recorded as subjects, each
    /// counted toward the officer's distinct-citizen cap and copied to the
    /// warehouse as far as the grant allows. Returns the answer's key in the
    /// envelope and the answer.
    async fn release(
        &self,
        policy: &PolicySet,
        grant: &Grant,
        caller: &Caller<'_>,
        asked: &str,
        answer: UpstreamAnswer,
        trail: &mut Trail,
    ) -> Result<(&'static str, Value), ApiError> {
        let (key, released, as_of) = match answer {
            UpstreamAnswer::Citizen { record, as_of } => {
                let mapped = policy.catalog.map_json(&record);
                let released = policy.release_citizen(grant, mapped, caller.unit);
                ("citizen", released, as_of)
            }
            UpstreamAnswer::Household { head, members, as_of } => {
                let head = policy.catalog.map_json(&head);
                let members = members.iter().map(|m| policy.catalog.map_json(m)).collect();
                let released = policy.release_household(grant, head, members, asked, caller.unit);
                ("household", released, as_of)
            }
            UpstreamAnswer::Match(_) => return Err(ApiError::UpstreamFailed),
        };
        let released: Released = released.map_err(ApiError::Denied)?;
        trail.released = released.fields();
        let app_id = caller.app.id.clone();
        let mut subjects = Vec::with_capacity(released.people.len());
        let mut records: Vec<WarehouseRecord> = Vec::new();
        let household_size = (key == "household").then(|| {
            let in_household = released
                .people
                .iter()
                .filter(|p| matches!(p.role, Role::Head | Role::Member))
                .count();
            u32::try_from(in_household + released.withheld).unwrap_or(u32::MAX)
        });
        let keys: Vec<Option<String>> = released
            .people
            .iter()
            .map(|person| {
                person
                    .personal_id
                    .as_deref()
                    .and_then(|id| PersonalId::parse(id, time::OffsetDateTime::now_utc().year()).ok())
                    .map(|id| self.pseudonyms.citizen_key(&id))
            })
            .collect();
        // Each person counts, not each request: all of them at once.
        let counted: Vec<String> = keys.iter().flatten().cloned().collect();
        self.limits
            .check_subjects(&app_id, &caller.officer_id, &counted)
            .await
            .map_err(ApiError::RateLimited)?;
        for (person, key) in released.people.iter().zip(keys) {
            if let Some(key) = &key {
                let household_role = match person.role {
                    Role::Head => Some("head"),
                    Role::Member => Some("member"),
                    _ => None,
                };
                let record = WarehouseRecord::enrich(
                    policy,
                    grant,
                    RecordOf {
                        citizen_key: key,
                        app_id: &app_id,
                        paths: &person.fields,
                        mapped: &person.mapped,
                        released: &person.released,
                        as_of: as_of.clone(),
                        legal_basis: trail.legal_basis.clone(),
                        household_size: household_size.filter(|_| household_role.is_some()),
                        household_role,
                    },
                );
                // One record per person: a head named again as a member's
                // household head adds to the head's record.
                match records.iter_mut().find(|r| r.citizen_key == record.citizen_key) {
                    Some(same) => same.fields.extend(record.fields),
                    None => records.push(record),
                }
            }
            subjects.push(Subject {
                fields: person.fields.clone(),
                key,
                role: person.role.as_str().to_owned(),
            });
        }
        trail.subjects = subjects;
        trail.warehouse = records;
        Ok((key, released.into_doc()))
    }

    /// Appends `event` to the journal and times the wait.
    async fn record(&self, wait: AuditWait, event: crate::audit::event::AuditEvent) -> Result<(), ApiError> {
        self.recorder
            .record(wait, event, Vec::new())
            .await
            .map(|_| ())
            .map_err(|e| {
                tracing::error!(error = %e, "upstream call not made: intent not durable");
                ApiError::AuditUnavailable
            })
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
        let t = std::time::SystemTime::now();
        let recorded = self.record(AuditWait::Intent, intent).await;
        trail.step("journal wait", t, recorded.is_err());
        recorded?;
        trail.intent_id = Some(intent_id);
        let query = UpstreamQuery {
            request_id: trail.request_id.clone(),
            officer: caller.officer_id.clone(),
            personal_id,
            kind,
        };
        let started = std::time::Instant::now();
        let span = std::time::SystemTime::now();
        let result = self.upstream.query(query).await;
        trail.step(
            "upstream",
            span,
            matches!(result, Err(UpstreamError::Timeout | UpstreamError::Failed(_))),
        );
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

/// Parses and validates an app request body as the pipeline does, without
/// the rest of the pipeline. Peer-controlled input: fuzzed
/// (`fuzz/fuzz_targets/request_body.rs`).
pub fn check_request_body(op: Operation, body: &[u8]) -> Result<(), ApiError> {
    let (personal_id, purpose, case_ref) = match op {
        Operation::Lookup | Operation::Household => {
            let b: LookupBody = parse_json(body, TAKES)?;
            (b.personal_id, b.purpose, b.case_ref)
        }
        Operation::Verify => {
            let b: VerifyBody = parse_json(body, TAKES)?;
            validate_full_name(&b.full_name)?;
            validate_date(&b.date_of_birth)?;
            (b.personal_id, b.purpose, b.case_ref)
        }
    };
    validate_personal_id(&personal_id)?;
    validate_purpose(&purpose)?;
    validate_case_ref(case_ref.as_deref())
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
    check_text("purpose", s)
}

fn validate_case_ref(s: Option<&str>) -> Result<(), ApiError> {
    match s {
        Some(c) if c.trim().is_empty() => Err(ApiError::InvalidRequest(
            "case_ref must not be empty when given".into(),
        )),
        Some(c) if c.chars().count() > MAX_CASE_REF_CHARS => Err(ApiError::InvalidRequest(format!(
            "case_ref must be at most {MAX_CASE_REF_CHARS} characters"
        ))),
        Some(c) => check_text("case_ref", c),
        None => Ok(()),
    }
}

fn validate_full_name(s: &str) -> Result<String, ApiError> {
    let n = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if n.is_empty() || n.chars().count() > MAX_SHORT_TEXT_CHARS {
        return Err(ApiError::InvalidRequest(format!(
            "full_name must be 1 to {MAX_SHORT_TEXT_CHARS} characters of text"
        )));
    }
    check_text("full_name", &n)?;
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
    trail: &mut Trail,
) -> Result<&'a Grant, ApiError> {
    let grant = policy
        .authorize(caller.app, &caller.roles, op, purpose)
        .map_err(ApiError::Denied)?;
    let defined = policy.purposes.get(&grant.purpose);
    trail.legal_basis = Some(
        match (
            defined.map(|p| p.legal_basis.as_str()),
            grant.legal_basis.as_deref(),
        ) {
            (Some(of_purpose), Some(of_grant)) => format!("{of_purpose}; {of_grant}"),
            (Some(only), None) | (None, Some(only)) => only.to_owned(),
            (None, None) => String::new(),
        },
    )
    .filter(|b| !b.is_empty());
    if grant.jurisdiction == crate::policy::Jurisdiction::OfficerUnit && caller.unit.is_none() {
        // The fix is the token, not the citizen: say so, before anyone is asked.
        return Err(ApiError::Forbidden(
            "this grant is limited to the officer's own ward, and the officer's token carries no 'unit' claim; \
             ask the identity provider to issue the token with the officer's ward code as 'unit'"
                .into(),
        ));
    }
    if grant.case_ref_required && case_ref.is_none() {
        return Err(ApiError::InvalidRequest(format!(
            "{}; send the reference of the case this lookup serves",
            Denial::CaseRefRequired(purpose.to_owned())
        )));
    }
    if let (Some(case_ref), Some(pattern)) = (case_ref, defined.and_then(|p| p.case_ref_pattern.as_ref())) {
        if !pattern.is_match(case_ref) {
            return Err(ApiError::InvalidRequest(format!(
                "case_ref does not have the form the purpose '{purpose}' requires (the pattern {} of purposes.toml)",
                pattern.as_str().trim_start_matches("^(?:").trim_end_matches(")$")
            )));
        }
    }
    Ok(grant)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_never_echo_values() {
        let e = serde_json::from_slice::<LookupBody>(br#"{"personal_id": 79203001234, "purpose": "x"}"#)
            .expect_err("bad");
        let d = super::super::request::describe_json_error(&e, TAKES);
        assert!(!d.contains("79203001234"), "{d}");
        assert!(d.contains("wrong type"), "{d}");
        let e = serde_json::from_slice::<LookupBody>(br#"{"personal_id": "1", "purpose": "x", "extra": 1}"#)
            .expect_err("bad");
        let d = super::super::request::describe_json_error(&e, TAKES);
        assert!(d.starts_with("the body has a key this call does not take"), "{d}");
        assert!(!d.contains("extra"), "{d}");
        let e = serde_json::from_slice::<LookupBody>(b"{").expect_err("bad");
        assert!(super::super::request::describe_json_error(&e, TAKES).contains("not valid JSON"));
    }

    #[test]
    fn case_ref_and_dates_are_checked() {
        assert!(validate_case_ref(Some(&"x".repeat(65))).is_err());
        assert!(validate_case_ref(Some("HS-2026-001")).is_ok());
        assert!(validate_case_ref(Some("a\u{0}")).is_err());
        assert!(validate_case_ref(Some("HS-\u{202e}1")).is_err());
        assert!(validate_date("2003-02-30").is_err());
        assert!(validate_date("2003-02-28").is_ok());
    }
}
