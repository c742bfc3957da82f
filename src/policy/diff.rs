//! What changed from one policy version to another, for the reviewing
//! admin: files, the field catalog, purposes, and for each app grant by
//! grant, field by field.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use super::{Grant, PolicyFiles, PolicySet};

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
pub fn diff(
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
