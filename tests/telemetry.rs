//! Request traces over OTLP/HTTP: an in-process collector receives the
//! spans of one lookup, named after the pipeline's steps, continuing the
//! app's `traceparent`, with no citizen data in any attribute; the audit
//! events record the trace id.

mod common;

use std::time::Duration;

use common::TestEnv;
use serde_json::{json, Value};

/// A collector on loopback that keeps every trace batch it is POSTed.
async fn collector() -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/v1/traces", listener.local_addr().expect("addr"));
    (url, common::json_receiver(listener, None, "/v1/traces"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_is_traced_step_by_step_without_citizen_data() {
    let (url, mut received) = collector().await;
    let endpoint = url.parse().expect("url");
    let env = TestEnv::start_with(move |c| c.telemetry.otlp_endpoint = Some(endpoint)).await;
    let citizen = env.citizen(true);
    let id = citizen.personal_id().as_str().to_owned();
    let body =
        json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000920"});
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let token = env.token("mot-cua", "officer-1");
    let (status, _, answer) = env
        .client("mot-cua")
        .post_raw(
            &env.url("/v1/citizens/lookup"),
            &token,
            &body.to_string(),
            &[("traceparent", &format!("00-{trace}-{parent}-01"))],
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let audit_id = serde_json::from_str::<Value>(&answer).expect("json")["audit_id"]
        .as_str()
        .expect("audit id")
        .to_owned();

    // The spans of this trace, as the collector received them.
    let mut spans: Vec<Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !spans.iter().any(|s| s["name"] == "request") {
        let got = tokio::time::timeout_at(deadline, received.recv())
            .await
            .expect("the collector received the trace")
            .expect("a batch");
        let text = got.to_string();
        assert!(!text.contains(&id), "no personal ID in any span");
        assert!(!text.contains(&citizen.full_name()), "no name in any span");
        let resource = &got["resourceSpans"][0];
        assert!(resource["resource"]["attributes"].to_string().contains("popgate"));
        for s in resource["scopeSpans"][0]["spans"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if s["traceId"] == trace {
                spans.push(s.clone());
            }
        }
    }
    let names: Vec<&str> = spans.iter().filter_map(|s| s["name"].as_str()).collect();
    for step in [
        "identify",
        "authenticate",
        "limit",
        "authorize",
        "journal wait",
        "upstream",
        "release",
        "request",
    ] {
        assert!(names.contains(&step), "{step} in {names:?}");
    }
    let root = spans.iter().find(|s| s["name"] == "request").expect("root");
    assert_eq!(root["parentSpanId"], parent, "the app's span is the parent");
    for s in spans.iter().filter(|s| s["name"] != "request") {
        assert_eq!(s["parentSpanId"], root["spanId"], "{s}");
    }
    assert!(root["attributes"].to_string().contains("mot-cua"));

    // The audit event names the trace.
    env.settle().await;
    let event = env
        .call_as(
            "audit-cli",
            "inspector-1",
            "auditor",
            &format!("/audit/v1/events/{audit_id}"),
            None,
        )
        .await;
    assert_eq!(event.body["trace_id"], trace, "{}", event.body);
    env.stop().await;
}
