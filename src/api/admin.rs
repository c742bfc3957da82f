//! The policy admins' surface, `/admin/v1/...` (role `policy-admin`, through
//! an admin app): list versions, propose a change, approve it (four eyes: a
//! different admin than the author), reject it, roll back, diff two
//! versions grant by grant, and simulate what a grant would release. Every
//! call is an audit event (`kind: admin`) with the facts of the action.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::StatusCode;
use hyper::Response;
use serde::Deserialize;
use serde_json::{json, Value};

use super::problem::ApiError;
use super::request::{check_text, parse_json_or_empty, query_param, Caller, Trail};
use crate::audit::checkpoint::Signer;
use crate::policy::diff::diff;
use crate::policy::signature::{self, StoredVersion};
use crate::policy::store::PolicyStore;
use crate::policy::{self, Operation, PolicyFiles, PolicySet};
use crate::server::{json_response, Body};
use crate::warehouse::policies::StoreRefusal;
use crate::warehouse::Warehouse;

/// What the admin surface uses: the active snapshot's store, the
/// warehouse's policy versions, and this instance's key to sign the
/// versions it activates.
pub struct AdminApi {
    pub policy: Arc<PolicyStore>,
    pub warehouse: Warehouse,
    pub signer: Arc<Signer>,
    pub instance_id: String,
    /// How long a freeze by one admin lasts unless a second confirms it.
    pub freeze_confirm_within: std::time::Duration,
}

/// Longest accepted reason, in characters.
const MAX_REASON_CHARS: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminOp {
    List,
    Propose,
    Approve(u64),
    Reject(u64),
    Rollback,
    Diff(u64),
    Simulate,
    Version(u64),
    Freeze,
    ConfirmFreeze(u64),
}

impl AdminOp {
    pub fn name(&self) -> &'static str {
        match self {
            AdminOp::List => "list",
            AdminOp::Propose => "propose",
            AdminOp::Approve(_) => "approve",
            AdminOp::Reject(_) => "reject",
            AdminOp::Rollback => "rollback",
            AdminOp::Diff(_) => "diff",
            AdminOp::Simulate => "simulate",
            AdminOp::Version(_) => "version",
            AdminOp::Freeze => "freeze",
            AdminOp::ConfirmFreeze(_) => "confirm-freeze",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProposeBody {
    reason: String,
    #[serde(default)]
    files: BTreeMap<String, String>,
    #[serde(default)]
    delete: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    version: u64,
    reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimulateBody {
    /// The version judged by (a proposal included); the active one by default.
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    app: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    operation: Option<Operation>,
    #[serde(default)]
    purpose: Option<String>,
    /// A national-database `CongDan` record.
    #[serde(default)]
    record: Option<Value>,
    /// The officer's ward, for `officer-unit` grants.
    #[serde(default)]
    unit: Option<u32>,
    /// Replays the audited requests of a window instead.
    #[serde(default)]
    replay: Option<ReplayWindow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayWindow {
    /// RFC 3339, inclusive.
    from: String,
    /// RFC 3339, exclusive.
    to: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FreezeBody {
    app: String,
    /// Only this purpose's grants; the whole app without it.
    #[serde(default)]
    purpose: Option<String>,
    reason: String,
}

/// What each call's body takes, for error details.
const TAKES_PROPOSAL: &str =
    "the body takes reason (a string), files (an object of file path to TOML text) and delete (a list of file paths)";
const TAKES_DECISION: &str = "the body is empty or takes reason (a string)";
const TAKES_ROLLBACK: &str = "the body takes version (a number) and reason (a string)";
const TAKES_SIMULATE: &str = "the body takes version (a number, optional), then either app, role, operation, purpose (strings), record (a national-database CongDan object) and unit (a ward code number, optional), or replay ({\"from\", \"to\"}: RFC 3339 times)";
const TAKES_FREEZE: &str = "the body takes app, reason and purpose (optional), all strings";

fn reason(text: &str) -> Result<String, ApiError> {
    let t = text.trim();
    if t.is_empty() || t.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::InvalidRequest(format!(
            "reason must be 1 to {MAX_REASON_CHARS} characters"
        )));
    }
    check_text("reason", t)?;
    Ok(t.to_owned())
}

fn refusal(r: StoreRefusal) -> ApiError {
    match r {
        StoreRefusal::NoSuchVersion(_) => ApiError::NotFound(r.to_string()),
        StoreRefusal::SelfApproval => ApiError::Forbidden(r.to_string()),
        StoreRefusal::NotProposed(..)
        | StoreRefusal::Stale(..)
        | StoreRefusal::NeverActive(..)
        | StoreRefusal::NotAFreeze(..) => ApiError::Conflict(r.to_string()),
    }
}

/// Whether `path` may name a policy file.
fn valid_path(path: &str) -> bool {
    match path.strip_prefix("apps/").and_then(|n| n.strip_suffix(".toml")) {
        Some(name) => {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        }
        None => path == "fields.toml" || path == "purposes.toml",
    }
}

impl AdminApi {
    /// Serves one admin operation for `caller`; `policy` is this request's
    /// snapshot.
    pub async fn handle(
        &self,
        op: AdminOp,
        policy: &PolicySet,
        caller: &Caller<'_>,
        parts: &http::request::Parts,
        body: &[u8],
        trail: &mut Trail,
    ) -> Result<Response<Body>, ApiError> {
        let store = &self.warehouse;
        match op {
            AdminOp::List => {
                let versions = store.policy_versions().await?;
                let active = versions
                    .iter()
                    .find(|v| v.state == "active")
                    .map(|v| v.version)
                    .unwrap_or(policy.version);
                let files = store.policy_files(active).await?.unwrap_or_default();
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "active_version": active, "files": files, "versions": versions }),
                ))
            }
            AdminOp::Propose => {
                let b: ProposeBody = parse_json_or_empty(body, TAKES_PROPOSAL)?;
                let why = reason(&b.reason)?;
                // File names are the caller's text: named by position, never repeated.
                for (n, path) in b.files.keys().enumerate() {
                    if !valid_path(path) {
                        return Err(ApiError::InvalidRequest(format!(
                        "file name {} of 'files' (in sorted order) is not a policy file: use fields.toml, purposes.toml or apps/NAME.toml (NAME in a-z, 0-9, -)",
                        n + 1
                    )));
                    }
                }
                let mut files: PolicyFiles = store.policy_files(policy.version).await?.unwrap_or_default();
                for (n, path) in b.delete.iter().enumerate() {
                    if !valid_path(path) || files.remove(path).is_none() {
                        return Err(ApiError::InvalidRequest(format!(
                            "delete[{n}] is not a file of the active version; nothing to delete"
                        )));
                    }
                }
                for (path, text) in &b.files {
                    files.insert(path.clone(), text.clone());
                }
                if let Err(problems) = policy::parse(&files, policy.province) {
                    return Err(ApiError::InvalidPolicy(
                        problems.0.iter().map(ToString::to_string).collect(),
                    ));
                }
                let version = store
                    .propose_policy(&files, &caller.officer_id, &why, policy.version)
                    .await?;
                trail.details = Some(json!({
                    "version": version, "based_on": policy.version, "reason": why,
                    "changed": b.files.keys().collect::<Vec<_>>(), "deleted": b.delete,
                }));
                Ok(json_response(
                    StatusCode::CREATED,
                    &json!({
                        "version": version, "state": "proposed", "based_on": policy.version,
                        "warnings": policy::warnings(&files).iter().map(ToString::to_string).collect::<Vec<_>>(),
                    }),
                ))
            }
            AdminOp::Approve(version) => {
                let b: DecisionBody = parse_json_or_empty(body, TAKES_DECISION)?;
                let sign = |v: &StoredVersion| signature::sign(v, &self.instance_id, &self.signer);
                store
                    .approve_policy(version, &caller.officer_id, &sign)
                    .await?
                    .map_err(refusal)?;
                trail.details = Some(json!({ "version": version, "reason": b.reason }));
                self.activate_locally(version).await?;
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "version": version, "state": "active" }),
                ))
            }
            AdminOp::Reject(version) => {
                let b: DecisionBody = parse_json_or_empty(body, TAKES_DECISION)?;
                store
                    .reject_policy(version, &caller.officer_id)
                    .await?
                    .map_err(refusal)?;
                trail.details = Some(json!({ "version": version, "reason": b.reason }));
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "version": version, "state": "rejected" }),
                ))
            }
            AdminOp::Rollback => {
                let b: RollbackBody = parse_json_or_empty(body, TAKES_ROLLBACK)?;
                let why = reason(&b.reason)?;
                let version = store
                    .rollback_policy(b.version, &caller.officer_id, &why)
                    .await?
                    .map_err(refusal)?;
                trail.details = Some(json!({ "version": version, "copy_of": b.version, "reason": why }));
                Ok(json_response(
                    StatusCode::CREATED,
                    &json!({ "version": version, "state": "proposed", "copy_of": b.version, "based_on": policy.version }),
                ))
            }
            AdminOp::Diff(version) => {
                let against = match query_param(parts.uri.query(), "against") {
                    Some(v) => v
                        .parse::<u64>()
                        .map_err(|_| ApiError::InvalidRequest("against must be a version number".into()))?,
                    None => version.saturating_sub(1),
                };
                let load = |v: u64| async move {
                    store
                        .policy_files(v)
                        .await?
                        .ok_or_else(|| ApiError::NotFound(format!("policy version {v} does not exist")))
                };
                let (to_files, from_files) = (load(version).await?, load(against).await?);
                let parse_set = |files: &PolicyFiles, v: u64| {
                    policy::parse(files, policy.province)
                        .map_err(|_| ApiError::Conflict(format!("stored version {v} no longer parses")))
                };
                let (to, from) = (parse_set(&to_files, version)?, parse_set(&from_files, against)?);
                Ok(json_response(
                    StatusCode::OK,
                    &diff(against, &from_files, &from, version, &to_files, &to),
                ))
            }
            AdminOp::Simulate => {
                let b: SimulateBody = parse_json_or_empty(body, TAKES_SIMULATE)?;
                let judged = match b.version {
                    None => Arc::new(policy.clone()),
                    Some(v) => Arc::new(self.parsed(v, policy.province).await?),
                };
                if let Some(window) = &b.replay {
                    let (from, to) = (
                        time_of(&window.from, "replay.from")?,
                        time_of(&window.to, "replay.to")?,
                    );
                    trail.details = Some(
                        json!({ "version": judged.version, "replay": { "from": window.from, "to": window.to } }),
                    );
                    let report = self.replay(&judged, from, to).await?;
                    return Ok(json_response(StatusCode::OK, &report));
                }
                let (Some(app), Some(role), Some(operation), Some(purpose), Some(record)) =
                    (&b.app, &b.role, b.operation, &b.purpose, &b.record)
                else {
                    return Err(ApiError::InvalidRequest(format!("a simulation needs app, role, operation, purpose and record, or replay; {TAKES_SIMULATE}")));
                };
                trail.details = Some(
                    json!({ "version": judged.version, "app": app, "role": role, "operation": operation.as_str(), "purpose": purpose }),
                );
                Ok(json_response(
                    StatusCode::OK,
                    &simulate(&judged, app, role, operation, purpose, record, b.unit),
                ))
            }
            AdminOp::Version(version) => {
                let v =
                    self.warehouse.version(version).await?.ok_or_else(|| {
                        ApiError::NotFound(format!("policy version {version} does not exist"))
                    })?;
                let info = store
                    .policy_versions()
                    .await?
                    .into_iter()
                    .find(|i| i.version == version);
                let refused = self.policy.refusal_of(&v);
                Ok(json_response(
                    StatusCode::OK,
                    &json!({
                        "version": version,
                        "state": info.as_ref().map(|i| i.state.clone()),
                        "files": v.files,
                        "author": v.author,
                        "approver": v.approver,
                        "reason": v.reason,
                        "based_on": v.based_on,
                        "copy_of": info.as_ref().and_then(|i| i.copy_of),
                        "emergency": v.emergency,
                        "expires_at": info.as_ref().and_then(|i| i.expires_at.clone()),
                        "created_at": info.as_ref().map(|i| i.created_at.clone()),
                        "activated_at": info.as_ref().and_then(|i| i.activated_at.clone()),
                        "signed_by": v.signature.as_ref().map(|s| s.instance.clone()),
                        "signature_valid": refused.is_none() && v.signature.is_some(),
                        "refused": refused,
                    }),
                ))
            }
            AdminOp::Freeze => {
                let b: FreezeBody = parse_json_or_empty(body, TAKES_FREEZE)?;
                let why = reason(&b.reason)?;
                let mut files = store.policy_files(policy.version).await?.unwrap_or_default();
                // The file that declares the app (its name need not be the id).
                let path = files
                    .iter()
                    .find(|(path, text)| {
                        path.starts_with("apps/")
                            && toml::from_str::<toml::Table>(text)
                                .ok()
                                .is_some_and(|t| t.get("id").and_then(|v| v.as_str()) == Some(b.app.as_str()))
                    })
                    .map(|(path, _)| path.clone())
                    .ok_or_else(|| {
                        ApiError::InvalidRequest("app is not an app of the active version".into())
                    })?;
                match &b.purpose {
                    None => {
                        files.remove(&path);
                    }
                    Some(purpose) => {
                        let text = files.get(&path).cloned().unwrap_or_default();
                        let narrowed = without_grants_for(&text, purpose).ok_or_else(|| {
                            ApiError::InvalidRequest(
                                "the app has no grant for this purpose to suspend".into(),
                            )
                        })?;
                        files.insert(path.clone(), narrowed);
                    }
                }
                let frozen = policy::parse(&files, policy.province).map_err(|problems| {
                    ApiError::InvalidPolicy(problems.0.iter().map(ToString::to_string).collect())
                })?;
                // A freeze only narrows: what it suspends is gone from the set.
                let suspended = match (&b.purpose, frozen.apps.get(&b.app)) {
                    (_, None) => true,
                    (Some(p), Some(app)) => app.grants.iter().all(|g| &g.purpose != p),
                    (None, Some(_)) => false,
                };
                if !suspended {
                    return Err(ApiError::Conflict(
                        "the freeze would not suspend what it names".into(),
                    ));
                }
                let expires = time::OffsetDateTime::now_utc()
                    + time::Duration::try_from(self.freeze_confirm_within).unwrap_or(time::Duration::DAY);
                let sign = |v: &StoredVersion| signature::sign(v, &self.instance_id, &self.signer);
                let label = match &b.purpose {
                    None => format!("emergency freeze: app {} suspended: {why}", b.app),
                    Some(p) => format!(
                        "emergency freeze: app {}'s grants for {p} suspended: {why}",
                        b.app
                    ),
                };
                let version = store
                    .freeze_policy(&files, &caller.officer_id, &label, expires, &sign)
                    .await?;
                trail.details = Some(json!({
                    "version": version, "emergency": true, "app": b.app, "purpose": b.purpose,
                    "reason": why, "expires_at": rfc3339(expires),
                }));
                self.activate_locally(version).await?;
                Ok(json_response(
                    StatusCode::CREATED,
                    &json!({ "version": version, "state": "active", "emergency": true, "expires_at": rfc3339(expires) }),
                ))
            }
            AdminOp::ConfirmFreeze(version) => {
                let sign = |v: &StoredVersion| signature::sign(v, &self.instance_id, &self.signer);
                store
                    .confirm_freeze(version, &caller.officer_id, &sign)
                    .await?
                    .map_err(refusal)?;
                trail.details = Some(json!({ "version": version, "emergency": true, "confirmed": true }));
                self.activate_locally(version).await?;
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "version": version, "state": "active", "emergency": true, "confirmed": true }),
                ))
            }
        }
    }

    /// Swaps this instance to `version` at once; the others follow the
    /// store's notification.
    async fn activate_locally(&self, version: u64) -> Result<(), ApiError> {
        let v = self
            .warehouse
            .version(version)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("policy version {version} does not exist")))?;
        self.policy.activate(&v).map_err(ApiError::Conflict)
    }

    /// Any stored version, parsed (a proposal included).
    async fn parsed(&self, version: u64, province: u16) -> Result<PolicySet, ApiError> {
        let files = self
            .warehouse
            .policy_files(version)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("policy version {version} does not exist")))?;
        let mut set = policy::parse(&files, province)
            .map_err(|_| ApiError::Conflict(format!("stored version {version} no longer parses")))?;
        set.version = version;
        Ok(set)
    }

    /// The audited granted requests of `[from, to)` judged again by
    /// `judged`: per app and purpose, how many requests there were, which
    /// fields they would gain or lose (and in how many requests), and how
    /// many would be denied. Uses the audit log only — no citizen data.
    async fn replay(
        &self,
        judged: &PolicySet,
        from: time::OffsetDateTime,
        to: time::OffsetDateTime,
    ) -> Result<Value, ApiError> {
        let requests = self.warehouse.granted_requests(from, to, MAX_REPLAY).await?;
        let mut then: BTreeMap<u64, Option<PolicySet>> = BTreeMap::new();
        let mut by_key: BTreeMap<(String, String), Replayed> = BTreeMap::new();
        for r in &requests {
            // The roles the request was granted under, by the version it
            // was judged by.
            if let std::collections::btree_map::Entry::Vacant(slot) = then.entry(r.policy_version) {
                slot.insert(self.parsed(r.policy_version, judged.province).await.ok());
            }
            let roles: Vec<String> = then
                .get(&r.policy_version)
                .and_then(Option::as_ref)
                .and_then(|set| set.apps.get(&r.app))
                .and_then(|app| {
                    app.grants
                        .iter()
                        .find(|g| g.purpose == r.purpose && g.operations.contains(&r.operation))
                })
                .map(|g| g.roles.clone())
                .unwrap_or_default();
            let entry = by_key.entry((r.app.clone(), r.purpose.clone())).or_default();
            entry.requests += 1;
            let grant = judged
                .apps
                .get(&r.app)
                .and_then(|app| judged.authorize(app, &roles, r.operation, &r.purpose).ok());
            let Some(grant) = grant else {
                entry.denied += 1;
                continue;
            };
            let covered = |f: &str| {
                grant.fields.iter().any(|g| {
                    g == f
                        || f.strip_prefix(g.as_str())
                            .is_some_and(|rest| rest.starts_with('.'))
                })
            };
            for f in r.fields.iter().filter(|f| !covered(f)) {
                *entry.lose.entry(f.clone()).or_default() += 1;
            }
            for g in grant.fields.iter().filter(|g| !r.fields.contains(g)) {
                *entry.gain.entry(g.clone()).or_default() += 1;
            }
        }
        let rows: Vec<Value> = by_key
            .into_iter()
            .map(|((app, purpose), r)| {
                json!({
                    "app": app, "purpose": purpose, "requests": r.requests, "would_be_denied": r.denied,
                    "would_lose": r.lose, "would_gain": r.gain,
                })
            })
            .collect();
        Ok(json!({
            "version": judged.version,
            "replayed": requests.len(),
            "truncated": requests.len() as i64 >= MAX_REPLAY,
            "by_app_and_purpose": rows,
        }))
    }
}

/// What a replay found for one app and purpose.
#[derive(Default)]
struct Replayed {
    requests: u64,
    denied: u64,
    /// Field → requests that released it but would not now.
    lose: BTreeMap<String, u64>,
    /// Field → requests that did not release it but could now.
    gain: BTreeMap<String, u64>,
}

/// Most requests one replay reads.
const MAX_REPLAY: i64 = 100_000;

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn time_of(text: &str, name: &str) -> Result<time::OffsetDateTime, ApiError> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(|_| {
        ApiError::InvalidRequest(format!(
            "{name} must be an RFC 3339 time such as 2026-12-01T08:00:00+07:00"
        ))
    })
}

/// An app file's text without its grants for `purpose`; `None` when it has
/// none. (The freeze's version keeps the rest of the file, comments aside.)
fn without_grants_for(text: &str, purpose: &str) -> Option<String> {
    let mut doc: toml::Table = toml::from_str(text).ok()?;
    let grants = doc.get_mut("grant")?.as_array_mut()?;
    let before = grants.len();
    grants.retain(|g| g.get("purpose").and_then(|p| p.as_str()) != Some(purpose));
    if grants.len() == before {
        return None;
    }
    toml::to_string(&doc).ok()
}

fn simulate(
    policy: &PolicySet,
    app: &str,
    role: &str,
    operation: Operation,
    purpose: &str,
    record: &Value,
    unit: Option<u32>,
) -> Value {
    let Some(app) = policy.apps.get(app) else {
        return json!({ "decision": "denied", "reason": "no app of this id in the policy version simulated" });
    };
    let grant = match policy.authorize(app, &[role.to_owned()], operation, purpose) {
        Ok(g) => g,
        Err(denial) => return json!({ "decision": "denied", "reason": denial.to_string() }),
    };
    let mapped = policy.catalog.map_record(record);
    let residence = policy.residence_check(grant, &mapped, unit);
    let inside = residence.is_ok();
    let (released, fields) = policy.release(grant, &mapped);
    json!({
        "decision": if inside { "granted" } else { "denied" },
        "reason": residence.err().map(|d| d.to_string()),
        "policy_version": policy.version,
        "within_jurisdiction": inside,
        "case_ref_required": grant.case_ref_required,
        "fields": fields,
        "released": if inside { Value::Object(released) } else { Value::Null },
        "stored_in_warehouse": grant.store,
    })
}
