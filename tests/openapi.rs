//! `docs/openapi.yaml` and the router agree: every path and method in the
//! document is answered by a running gateway, and every route the gateway
//! answers is in the document.

mod common;

use std::collections::BTreeSet;

use common::TestEnv;
use popgate::api::ROUTES;

/// The document, parsed as YAML (as every OpenAPI tool reads it).
fn document() -> serde_yaml::Value {
    let text =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.yaml"))
            .expect("docs/openapi.yaml");
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("docs/openapi.yaml is not valid YAML: {e}"))
}

/// `(METHOD, /path)` pairs of the document's `paths`.
fn documented() -> BTreeSet<(String, String)> {
    let doc = document();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")),
        "an OpenAPI 3.1 document"
    );
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_mapping().expect("paths") {
        let path = path.as_str().expect("a path").to_owned();
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn the_document_lists_exactly_the_routes() {
    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let doc = documented();
    assert_eq!(doc.len(), ROUTES.len(), "{doc:?}");
    let missing: Vec<_> = routes.difference(&doc).collect();
    let extra: Vec<_> = doc.difference(&routes).collect();
    assert!(missing.is_empty(), "routes not in docs/openapi.yaml: {missing:?}");
    assert!(extra.is_empty(), "documented but not routed: {extra:?}");
}

/// Every request body, and every JSON body of a success, has a schema and
/// an example an integrator can start from.
#[test]
fn every_body_has_a_schema_and_an_example() {
    let doc = document();
    let mut missing = Vec::new();
    for (path, item) in doc["paths"].as_mapping().expect("paths") {
        let path = path.as_str().unwrap_or_default();
        for (method, op) in item.as_mapping().into_iter().flatten() {
            let method = method.as_str().unwrap_or_default();
            let bodies = op["requestBody"]["content"]
                .as_mapping()
                .into_iter()
                .flatten()
                .map(|(kind, c)| {
                    (
                        "request".to_owned(),
                        kind.as_str().unwrap_or_default().to_owned(),
                        c,
                    )
                });
            let answers = op["responses"]
                .as_mapping()
                .into_iter()
                .flatten()
                .filter(|(code, _)| code.as_str().is_some_and(|c| c.starts_with('2')))
                .flat_map(|(code, r)| {
                    r["content"]
                        .as_mapping()
                        .into_iter()
                        .flatten()
                        .map(move |(kind, c)| {
                            (
                                format!("response {}", code.as_str().unwrap_or_default()),
                                kind.as_str().unwrap_or_default().to_owned(),
                                c,
                            )
                        })
                });
            for (what, kind, content) in bodies.chain(answers) {
                let json = kind.ends_with("json") && !kind.contains("problem");
                let named = content["schema"].get("$ref").is_some();
                if content.get("schema").is_none() {
                    missing.push(format!("{method} {path} {what} {kind}: no schema"));
                } else if json && content.get("example").is_none() && !named {
                    missing.push(format!("{method} {path} {what} {kind}: no example"));
                }
            }
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_path_is_answered() {
    let env = TestEnv::start().await;
    for (method, path) in documented() {
        let (app, role) = match path.split('/').nth(1) {
            Some("admin") => ("admin-cli", "policy-admin"),
            Some("audit") => ("audit-cli", "auditor"),
            _ => ("mot-cua", "officer"),
        };
        let concrete = path
            .replace("{id}", "1")
            .replace("{n}", "1")
            .replace("{audit_id}", "6f9619ff-8b86-d011-b42d-00c04fc964ff")
            .replace("{alert_id}", "0190f6a4-3c1e-7d2a-9b7f-1a2b3c4d5e6f")
            .replace("{hold_id}", "0190f6a4-3c1e-7d2a-9b7f-1a2b3c4d5e70");
        let body = (method == "POST").then_some("{}");
        let r = env.call_as(app, "probe", role, &concrete, body).await;
        assert_ne!(r.status, 405, "{method} {path}: {}", r.body);
        assert_ne!(
            r.body["type"], "urn:popgate:problem:no-route",
            "{method} {path} is not routed"
        );
        assert!(r.headers.contains_key("x-request-id"));
    }
    // And a path outside the inventory is not.
    let r = env
        .call_as(
            "mot-cua",
            "probe",
            "officer",
            "/v1/citizens/../citizens/lookup",
            Some("{}"),
        )
        .await;
    assert_eq!(r.body["type"], "urn:popgate:problem:no-route");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_listener_serves_the_document_as_shipped() {
    use http_body_util::BodyExt;
    let env = TestEnv::start().await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let url = format!("http://{}/openapi.yaml", env.gateway().ops_addr);
    let resp = client.get(url.parse().expect("uri")).await.expect("get");
    assert_eq!(resp.status(), 200);
    let served = resp.into_body().collect().await.expect("body").to_bytes();
    let file = std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.yaml"))
        .expect("file");
    assert_eq!(served.as_ref(), file.as_slice());
    env.stop().await;
}

/// What the OpenAPI 3.1 schema requires of a document, and what generators
/// rely on, checked on the parsed document: `info` with title and version;
/// operations only under HTTP methods, each with responses whose every
/// entry has a description; each path template's placeholders declared as
/// required path parameters (and nothing else in the path); parameters
/// with `name`, a valid `in` and a schema; every `$ref` resolving inside
/// the document.
#[test]
fn the_document_keeps_the_rules_of_openapi_3_1() {
    let doc = document();
    let mut problems = Vec::new();
    for key in ["title", "version"] {
        if !doc["info"][key].is_string() {
            problems.push(format!("info.{key} is missing"));
        }
    }
    // Every $ref resolves to a node of the document.
    fn refs(v: &serde_yaml::Value, out: &mut Vec<String>) {
        match v {
            serde_yaml::Value::Mapping(m) => {
                for (k, v) in m {
                    if k.as_str() == Some("$ref") {
                        out.extend(v.as_str().map(str::to_owned));
                    } else {
                        refs(v, out);
                    }
                }
            }
            serde_yaml::Value::Sequence(s) => s.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty(), "the document uses $ref");
    for r in &all {
        let Some(pointer) = r.strip_prefix("#/") else {
            problems.push(format!("$ref {r} leaves the document"));
            continue;
        };
        let mut node = &doc;
        for part in pointer.split('/') {
            node = &node[part.replace("~1", "/").replace("~0", "~").as_str()];
        }
        if node.is_null() {
            problems.push(format!("$ref {r} resolves to nothing"));
        }
    }
    const METHODS: &[&str] = &[
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    for (path, item) in doc["paths"].as_mapping().expect("paths") {
        let path = path.as_str().unwrap_or_default();
        if !path.starts_with('/') {
            problems.push(format!("path {path} does not start with /"));
        }
        let placeholders: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        for (method, op) in item.as_mapping().into_iter().flatten() {
            let method = method.as_str().unwrap_or_default();
            if !METHODS.contains(&method) && method != "parameters" && method != "summary" {
                problems.push(format!("{path}: {method} is not an HTTP method"));
                continue;
            }
            if method == "parameters" || method == "summary" {
                continue;
            }
            let responses = op["responses"].as_mapping();
            if responses.is_none_or(|r| r.is_empty()) {
                problems.push(format!("{method} {path}: no responses"));
            }
            for (code, r) in responses.into_iter().flatten() {
                if r.get("$ref").is_none() && !r["description"].is_string() {
                    problems.push(format!(
                        "{method} {path} {code:?}: a response without a description"
                    ));
                }
            }
            let mut declared = BTreeSet::new();
            let shared = item["parameters"].as_sequence().into_iter().flatten();
            for p in op["parameters"].as_sequence().into_iter().flatten().chain(shared) {
                let name = p["name"].as_str().unwrap_or_default();
                let place = p["in"].as_str().unwrap_or_default();
                if name.is_empty() || !["query", "header", "path", "cookie"].contains(&place) {
                    problems.push(format!(
                        "{method} {path}: a parameter without name or a valid 'in'"
                    ));
                }
                if p.get("schema").is_none() && p.get("content").is_none() {
                    problems.push(format!("{method} {path}: parameter {name} has no schema"));
                }
                if place == "path" {
                    if p["required"].as_bool() != Some(true) {
                        problems.push(format!(
                            "{method} {path}: path parameter {name} is not required: true"
                        ));
                    }
                    declared.insert(name.to_owned());
                }
            }
            let wanted: BTreeSet<String> = placeholders.iter().map(|s| s.to_string()).collect();
            if declared != wanted {
                problems.push(format!(
                    "{method} {path}: path parameters {declared:?}, placeholders {wanted:?}"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The document reads as a typed OpenAPI 3.1 model (the `oas3` crate's,
/// as client generators read it): every operation, parameter, request
/// body and response in the shapes the specification gives them.
#[test]
fn the_document_is_an_openapi_3_1_model() {
    let json = serde_json::to_string(&document()).expect("as JSON");
    let spec = oas3::from_json(json).unwrap_or_else(|e| panic!("not an OpenAPI 3.1 document: {e}"));
    assert!(spec.openapi.starts_with("3.1"), "{}", spec.openapi);
    let operations = spec.operations().count();
    assert_eq!(
        operations,
        ROUTES.len(),
        "every route is an operation of the model"
    );
}
