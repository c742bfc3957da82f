//! The policy admins' surface, `/admin/v1/...` (role `policy-admin`, through
//! an admin app): list versions, propose a change, approve it (four eyes: a
//! different admin than the author), reject it, roll back, diff two
//! versions grant by grant, and simulate what a grant would release. Every
//! call is an audit event (`kind: admin`) with the facts of the action.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use http::StatusCode;
use hyper::Response;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::app::{AppApi, Caller, Trail};
use super::problem::ApiError;
use crate::policy::{self, Grant, Operation, PolicyFiles, PolicySet};
use crate::server::{json_response, Body};
use crate::warehouse::policies::StoreRefusal;

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

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.is_empty() { b"{}".as_slice() } else { body };
    serde_json::from_slice(body).map_err(|e| ApiError::InvalidRequest(super::app::describe_json_error(&e)))
}

fn reason(text: &str) -> Result<String, ApiError> {
    let t = text.trim();
    if t.is_empty() || t.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::InvalidRequest(format!(
            "reason must be 1 to {MAX_REASON_CHARS} characters"
        )));
    }
    Ok(t.to_owned())
}

fn store_error(e: anyhow::Error) -> ApiError {
    tracing::error!(error = %e, "policy store unavailable");
    ApiError::WarehouseUnavailable
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

pub(super) async fn handle(
    api: &Arc<AppApi>,
    op: AdminOp,
    policy: &PolicySet,
    caller: &Caller<'_>,
    parts: &http::request::Parts,
    body: bytes::Bytes,
    trail: &mut Trail,
) -> Result<Response<Body>, ApiError> {
    let store = &api.warehouse;
    match op {
        AdminOp::List => {
            let versions = store.policy_versions().await.map_err(store_error)?;
            let active = versions
                .iter()
                .find(|v| v.state == "active")
                .map(|v| v.version)
                .unwrap_or(policy.version);
            let files = store
                .policy_files(active)
                .await
                .map_err(store_error)?
                .unwrap_or_default();
            Ok(json_response(
                StatusCode::OK,
                &json!({ "active_version": active, "files": files, "versions": versions }),
            ))
        }
        AdminOp::Propose => {
            let b: ProposeBody = parse(&body)?;
            let why = reason(&b.reason)?;
            for path in b.files.keys().chain(b.delete.iter()) {
                if !valid_path(path) {
                    return Err(ApiError::InvalidRequest(format!(
                        "'{path}' is not a policy file: use fields.toml, purposes.toml or apps/NAME.toml (NAME in a-z, 0-9, -)"
                    )));
                }
            }
            let mut files: PolicyFiles = store
                .policy_files(policy.version)
                .await
                .map_err(store_error)?
                .unwrap_or_default();
            for path in &b.delete {
                if files.remove(path).is_none() {
                    return Err(ApiError::InvalidRequest(format!(
                        "'{path}' is not in the active version; nothing to delete"
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
                .await
                .map_err(store_error)?;
            trail.details = Some(json!({
                "version": version, "based_on": policy.version, "reason": why,
                "changed": b.files.keys().collect::<Vec<_>>(), "deleted": b.delete,
            }));
            Ok(json_response(
                StatusCode::CREATED,
                &json!({ "version": version, "state": "proposed", "based_on": policy.version }),
            ))
        }
        AdminOp::Approve(version) => {
            let b: DecisionBody = parse(&body)?;
            store
                .approve_policy(version, &caller.officer_id)
                .await
                .map_err(store_error)?
                .map_err(refusal)?;
            trail.details = Some(json!({ "version": version, "reason": b.reason }));
            activate_locally(api, version, policy.province).await?;
            Ok(json_response(
                StatusCode::OK,
                &json!({ "version": version, "state": "active" }),
            ))
        }
        AdminOp::Reject(version) => {
            let b: DecisionBody = parse(&body)?;
            store
                .reject_policy(version, &caller.officer_id)
                .await
                .map_err(store_error)?
                .map_err(refusal)?;
            trail.details = Some(json!({ "version": version, "reason": b.reason }));
            Ok(json_response(
                StatusCode::OK,
                &json!({ "version": version, "state": "rejected" }),
            ))
        }
        AdminOp::Rollback => {
            let b: RollbackBody = parse(&body)?;
            let why = reason(&b.reason)?;
            let version = store
                .rollback_policy(b.version, &caller.officer_id, &why)
                .await
                .map_err(store_error)?
                .map_err(refusal)?;
            trail.details = Some(json!({ "version": version, "copy_of": b.version, "reason": why }));
            activate_locally(api, version, policy.province).await?;
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
                    .await
                    .map_err(store_error)?
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
            let b: SimulateBody = parse(&body)?;
            trail.details = Some(
                json!({ "app": b.app, "role": b.role, "operation": b.operation.as_str(), "purpose": b.purpose }),
            );
            Ok(json_response(StatusCode::OK, &simulate(policy, &b)))
        }
    }
}

/// Swaps this instance to `version` at once; the others follow the store's
/// notification.
async fn activate_locally(api: &AppApi, version: u64, province: u16) -> Result<(), ApiError> {
    let files = api
        .warehouse
        .policy_files(version)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::NotFound(format!("policy version {version} does not exist")))?;
    let mut set = policy::parse(&files, province)
        .map_err(|_| ApiError::Conflict(format!("policy version {version} does not parse")))?;
    set.version = version;
    api.policy.store(Arc::new(set));
    tracing::info!(version, "policy version activated");
    Ok(())
}

pub(super) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
}

fn simulate(policy: &PolicySet, b: &SimulateBody) -> Value {
    let Some(app) = policy.apps.get(&b.app) else {
        return json!({ "decision": "denied", "reason": format!("no app '{}' in the active policy", b.app) });
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

fn set_diff<T: Ord + Clone + serde::Serialize>(from: &BTreeSet<T>, to: &BTreeSet<T>) -> (Vec<T>, Vec<T>) {
    (
        to.difference(from).cloned().collect(),
        from.difference(to).cloned().collect(),
    )
}

fn grant_key(g: &Grant) -> String {
    let mut roles = g.roles.clone();
    roles.sort();
    format!("{} [{}]", g.purpose, roles.join(","))
}

fn grant_summary(g: &Grant) -> Value {
    json!({
        "purpose": g.purpose,
        "roles": g.roles,
        "operations": g.operations.iter().map(|o| o.as_str()).collect::<Vec<_>>(),
        "fields": g.fields,
        "masks": g.masks.iter().map(|(k, m)| (k.clone(), Value::from(m.as_str()))).collect::<Map<_, _>>(),
        "jurisdiction": format!("{:?}", g.jurisdiction),
        "case_ref_required": g.case_ref_required,
        "store": g.store,
    })
}

fn grant_changes(from: &Grant, to: &Grant) -> Option<Value> {
    let set = |v: &[String]| v.iter().cloned().collect::<BTreeSet<_>>();
    let ops = |g: &Grant| {
        g.operations
            .iter()
            .map(|o| o.as_str().to_owned())
            .collect::<BTreeSet<_>>()
    };
    let (fields_added, fields_removed) = set_diff(&set(&from.fields), &set(&to.fields));
    let (ops_added, ops_removed) = set_diff(&ops(from), &ops(to));
    let (store_added, store_removed) = set_diff(&set(&from.store), &set(&to.store));
    let mut masks = Map::new();
    let paths: BTreeSet<&String> = from.masks.keys().chain(to.masks.keys()).collect();
    for p in paths {
        let (a, b) = (
            from.masks.get(p).map(|m| m.as_str()),
            to.masks.get(p).map(|m| m.as_str()),
        );
        if a != b {
            masks.insert(p.clone(), json!({ "from": a, "to": b }));
        }
    }
    let mut out = Map::new();
    let mut put = |k: &str, v: Value, changed: bool| {
        if changed {
            out.insert(k.to_owned(), v);
        }
    };
    put("fields_added", json!(fields_added), !fields_added.is_empty());
    put(
        "fields_removed",
        json!(fields_removed),
        !fields_removed.is_empty(),
    );
    put("operations_added", json!(ops_added), !ops_added.is_empty());
    put("operations_removed", json!(ops_removed), !ops_removed.is_empty());
    put("store_added", json!(store_added), !store_added.is_empty());
    put("store_removed", json!(store_removed), !store_removed.is_empty());
    put("masks", Value::Object(masks.clone()), !masks.is_empty());
    put(
        "jurisdiction",
        json!({ "from": format!("{:?}", from.jurisdiction), "to": format!("{:?}", to.jurisdiction) }),
        from.jurisdiction != to.jurisdiction,
    );
    put(
        "case_ref_required",
        json!({ "from": from.case_ref_required, "to": to.case_ref_required }),
        from.case_ref_required != to.case_ref_required,
    );
    put(
        "limits_per_minute",
        json!({ "from": from.limits.per_minute, "to": to.limits.per_minute }),
        from.limits.per_minute != to.limits.per_minute,
    );
    put(
        "legal_basis",
        json!({ "from": from.legal_basis, "to": to.legal_basis }),
        from.legal_basis != to.legal_basis,
    );
    (!out.is_empty()).then_some(Value::Object(out))
}

/// What changed from one version to another: files, catalog, purposes, and
/// for each app grant by grant, field by field.
fn diff(
    from_v: u64,
    from_files: &PolicyFiles,
    from: &PolicySet,
    to_v: u64,
    to_files: &PolicyFiles,
    to: &PolicySet,
) -> Value {
    let keys = |f: &PolicyFiles| f.keys().cloned().collect::<BTreeSet<_>>();
    let (files_added, files_removed) = set_diff(&keys(from_files), &keys(to_files));
    let files_changed: Vec<&String> = to_files
        .iter()
        .filter(|(k, v)| from_files.get(*k).is_some_and(|old| old != *v))
        .map(|(k, _)| k)
        .collect();
    let ids = |s: &PolicySet| {
        s.catalog
            .fields
            .iter()
            .map(|f| f.id.clone())
            .collect::<BTreeSet<_>>()
    };
    let (fields_added, fields_removed) = set_diff(&ids(from), &ids(to));
    let purposes = |s: &PolicySet| s.purposes.keys().cloned().collect::<BTreeSet<_>>();
    let (purposes_added, purposes_removed) = set_diff(&purposes(from), &purposes(to));
    let mut apps = Vec::new();
    let app_ids: BTreeSet<&String> = from.apps.keys().chain(to.apps.keys()).collect();
    for id in app_ids {
        match (from.apps.get(id), to.apps.get(id)) {
            (None, Some(a)) => apps.push(json!({ "app": id, "change": "added", "grants": a.grants.iter().map(grant_summary).collect::<Vec<_>>() })),
            (Some(_), None) => apps.push(json!({ "app": id, "change": "removed" })),
            (Some(a), Some(b)) => {
                let old: BTreeMap<String, &Grant> = a.grants.iter().map(|g| (grant_key(g), g)).collect();
                let new: BTreeMap<String, &Grant> = b.grants.iter().map(|g| (grant_key(g), g)).collect();
                let mut grants = Vec::new();
                let all: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
                for key in all {
                    match (old.get(key), new.get(key)) {
                        (None, Some(g)) => grants.push(json!({ "grant": key, "change": "added", "now": grant_summary(g) })),
                        (Some(g), None) => grants.push(json!({ "grant": key, "change": "removed", "was": grant_summary(g) })),
                        (Some(x), Some(y)) => {
                            if let Some(changes) = grant_changes(x, y) {
                                grants.push(json!({ "grant": key, "change": "changed", "changes": changes }));
                            }
                        }
                        (None, None) => {}
                    }
                }
                if !grants.is_empty() || a.certificate_uri != b.certificate_uri {
                    apps.push(json!({ "app": id, "change": "changed", "certificate_uri_changed": a.certificate_uri != b.certificate_uri, "grants": grants }));
                }
            }
            (None, None) => {}
        }
    }
    json!({
        "from": from_v,
        "to": to_v,
        "files": { "added": files_added, "removed": files_removed, "changed": files_changed },
        "catalog": { "fields_added": fields_added, "fields_removed": fields_removed },
        "purposes": { "added": purposes_added, "removed": purposes_removed },
        "apps": apps,
    })
}
