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
