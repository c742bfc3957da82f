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
use crate::policy::diff::diff;
use crate::policy::store::PolicyStore;
use crate::policy::{self, Operation, PolicyFiles, PolicySet};
use crate::server::{json_response, Body};
use crate::warehouse::policies::StoreRefusal;
use crate::warehouse::Warehouse;

/// What the admin surface uses: the active snapshot's store and the
/// warehouse's policy versions.
pub struct AdminApi {
    pub policy: Arc<PolicyStore>,
    pub warehouse: Warehouse,
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
    app: String,
    role: String,
    operation: Operation,
    purpose: String,
    /// A national-database `CongDan` record.
    record: Value,
    /// The officer's ward, for `officer-unit` grants.
    #[serde(default)]
    unit: Option<u32>,
}

/// What each call's body takes, for error details.
const TAKES_PROPOSAL: &str =
    "the body takes reason (a string), files (an object of file path to TOML text) and delete (a list of file paths)";
const TAKES_DECISION: &str = "the body is empty or takes reason (a string)";
const TAKES_ROLLBACK: &str = "the body takes version (a number) and reason (a string)";
const TAKES_SIMULATE: &str = "the body takes app, role, operation, purpose (strings), record (a national-database CongDan object) and unit (a ward code number, optional)";

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
        StoreRefusal::NotProposed(..) | StoreRefusal::Stale(..) => ApiError::Conflict(r.to_string()),
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
                store
                    .approve_policy(version, &caller.officer_id)
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
                self.activate_locally(version).await?;
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "version": version, "state": "active", "copy_of": b.version }),
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
                trail.details = Some(
                    json!({ "app": b.app, "role": b.role, "operation": b.operation.as_str(), "purpose": b.purpose }),
                );
                Ok(json_response(StatusCode::OK, &simulate(policy, &b)))
            }
        }
    }

    /// Swaps this instance to `version` at once; the others follow the
    /// store's notification.
    async fn activate_locally(&self, version: u64) -> Result<(), ApiError> {
        let files = self
            .warehouse
            .policy_files(version)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("policy version {version} does not exist")))?;
        self.policy
            .activate(&files, version)
            .map_err(|_| ApiError::Conflict(format!("policy version {version} does not parse")))
    }
}

fn simulate(policy: &PolicySet, b: &SimulateBody) -> Value {
    let Some(app) = policy.apps.get(&b.app) else {
        return json!({ "decision": "denied", "reason": "no app of this id in the policy version simulated" });
    };
    let grant = match policy.authorize(app, std::slice::from_ref(&b.role), b.operation, &b.purpose) {
        Ok(g) => g,
        Err(denial) => return json!({ "decision": "denied", "reason": denial.to_string() }),
    };
    let mapped = policy.catalog.map_record(&b.record);
    let inside = policy.within_jurisdiction(grant, &mapped, b.unit);
    let (released, fields) = policy.release(grant, &mapped);
    json!({
        "decision": if inside { "granted" } else { "denied" },
        "reason": (!inside).then_some("the citizen resides outside the jurisdiction of this grant"),
        "policy_version": policy.version,
        "within_jurisdiction": inside,
        "case_ref_required": grant.case_ref_required,
        "fields": fields,
        "released": if inside { Value::Object(released) } else { Value::Null },
        "stored_in_warehouse": grant.store,
    })
}
