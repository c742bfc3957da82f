//! The data path end to end over real mTLS, a real simulator and a real
//! PostgreSQL: what apps get, and how the gateway refuses what it must.

mod common;

use common::{TestClient, TestEnv};
use popgate::tls::pki::{self, app_uri};
use serde_json::json;

const LOOKUP: &str = "/v1/citizens/lookup";

fn lookup_body(id: &str, purpose: &str, case_ref: Option<&str>) -> String {
    let mut b = json!({ "personal_id": id, "purpose": purpose });
    if let Some(c) = case_ref {
        b["case_ref"] = json!(c);
    }
    b.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_returns_the_granted_fields_of_the_mapped_record() {
    let env = TestEnv::start().await;
    let citizen = env.citizen(true);
    let id = citizen.personal_id().as_str().to_owned();
    let r = env
        .call(
            "mot-cua",
            LOOKUP,
            &lookup_body(&id, "administrative-procedure", Some("HS-2026-000907")),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.headers.contains_key("x-request-id"));
    assert_eq!(
        r.body["request_id"].as_str(),
        r.headers["x-request-id"].to_str().ok()
    );
    assert_eq!(r.headers["cache-control"], "no-store");
    assert_eq!(r.body["policy_version"], 1);
    let c = &r.body["citizen"];
    assert_eq!(c["full_name"], json!(citizen.full_name()));
    assert_eq!(c["date_of_birth"], json!(citizen.date_of_birth()));
    // Masked as granted: only the last four digits survive.
    assert_eq!(c["personal_id"], json!(format!("********{}", &id[8..])));
    assert_eq!(c["permanent_address"]["province_code"], "79");
    assert!(c["household_head"]["relation"].as_str().is_some());
    assert!(c["household_head"].get("personal_id").is_none());
    // Not granted to mot-cua: never released.
    for absent in [
        "blood_type",
        "religion",
        "ethnicity",
        "father",
        "mother",
        "old_id_number",
    ] {
        assert!(c.get(absent).is_none(), "{absent} leaked");
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_app_and_purpose_gets_another_field_set_over_http2() {
    let env = TestEnv::start().await;
    let citizen = env.citizen(true);
    let id = citizen.personal_id().as_str();
    let l = &env.pki.layout;
    let h2 = TestClient::with_versions(
        &l.apps_ca_cert(),
        Some((&l.app_cert("y-te"), &l.app_key("y-te"))),
        false,
        true,
    );
    let token = env.token("y-te", "doctor-1");
    let r = h2
        .post(
            &env.url(LOOKUP),
            Some(&token),
            &lookup_body(id, "health-insurance", None),
        )
        .await
        .expect("h2");
    assert_eq!(r.status, 200, "{}", r.body);
    let c = &r.body["citizen"];
    assert!(c["blood_type"].as_str().is_some());
    assert_eq!(c["personal_id"], json!(id));
    // ward-only mask: codes kept, street detail dropped.
    assert!(c["current_address"]["ward_code"].as_str().is_some());
    assert!(c["current_address"].get("detail").is_none());
    assert!(c.get("hometown").is_none());
    // y-te is not granted the one-stop-shop's purpose.
    let body = lookup_body(id, "administrative-procedure", Some("HS-2026-000932"));
    let r = h2.post(&env.url(LOOKUP), Some(&token), &body).await.expect("h2");
    assert_eq!(r.status, 403);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_household_go_through_the_same_pipeline() {
    let env = TestEnv::start().await;
    let citizen = env.citizen(true);
    let id = citizen.personal_id().as_str();
    let body = |name: &str| {
        json!({"personal_id": id, "full_name": name, "date_of_birth": citizen.date_of_birth(),
               "purpose": "administrative-procedure", "case_ref": "HS-2026-000906"})
        .to_string()
    };
    let r = env
        .call("mot-cua", "/v1/citizens/verify", &body(&citizen.full_name()))
        .await;
    assert_eq!((r.status, &r.body["match"]), (200, &json!(true)), "{}", r.body);
    assert!(r.body.get("citizen").is_none());
    let r = env
        .call("mot-cua", "/v1/citizens/verify", &body("Người Khác Hẳn"))
        .await;
    assert_eq!((r.status, &r.body["match"]), (200, &json!(false)));
    // mot-cua has no household grant.
    let hh = lookup_body(id, "administrative-procedure", Some("HS-2026-000908"));
    let r = env.call("mot-cua", "/v1/households/lookup", &hh).await;
    assert_eq!(r.status, 403, "{}", r.body);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn citizens_outside_the_province_are_refused() {
    let env = TestEnv::start().await;
    let outsider = env.citizen(false);
    let body = lookup_body(
        outsider.personal_id().as_str(),
        "administrative-procedure",
        Some("HS-2026-000909"),
    );
    let r = env.call("mot-cua", LOOKUP, &body).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body["detail"].as_str().unwrap_or("").contains("jurisdiction"));
    assert!(r.body.get("citizen").is_none());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_400_that_says_what_to_fix_without_echoing_it() {
    let env = TestEnv::start().await;
    let cases = [
        (
            lookup_body("07920300123", "administrative-procedure", Some("A")),
            "12 digits",
        ),
        (
            lookup_body("003203001234", "administrative-procedure", Some("A")),
            "province code",
        ),
        (
            lookup_body("079299001234", "administrative-procedure", Some("A")),
            "birth year",
        ),
        (
            r#"{"personal_id": "079203001234", "purpose": "administrative-procedure", "sex": "x"}"#
                .to_owned(),
            "a key this call does not take",
        ),
        (
            r#"{"personal_id": 79203001234, "purpose": "administrative-procedure"}"#.to_owned(),
            "wrong type",
        ),
        ("{not json".to_owned(), "not valid JSON"),
        (
            lookup_body("079203001234", "administrative-procedure", None),
            "requires a case_ref",
        ),
        (
            lookup_body("079203001234", "administrative-procedure", Some(&"x".repeat(65))),
            "at most 64",
        ),
    ];
    for (body, expected) in cases {
        let r = env.call("mot-cua", LOOKUP, &body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let detail = r.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(expected), "{body}: {detail}");
        assert!(!detail.contains("203001234"), "{detail}");
        // A key the caller made up is never repeated back.
        assert!(!detail.contains("sex"), "{detail}");
        assert_eq!(r.body["status"], 400);
        assert!(r.body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:popgate:problem:")));
        assert!(r.body["request_id"].as_str().is_some());
    }
    let r = env.call("mot-cua", LOOKUP, &"x".repeat(64 * 1024)).await;
    assert_eq!(r.status, 413);
    let r = env.call("mot-cua", "/v1/nothing", "{}").await;
    assert_eq!(r.status, 404);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_citizen_is_404_and_a_dead_upstream_is_502() {
    let mut env = TestEnv::start().await;
    // Structurally valid but not one of the simulated population.
    let r = env
        .call(
            "mot-cua",
            LOOKUP,
            &lookup_body("001085999999", "administrative-procedure", Some("HS-2026-000910")),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.body["type"], "urn:popgate:problem:citizen-not-found");
    env.stop_sim().await;
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let r = env
        .call(
            "mot-cua",
            LOOKUP,
            &lookup_body(&id, "administrative-procedure", Some("HS-2026-000911")),
        )
        .await;
    assert_eq!(r.status, 502, "{}", r.body);
    // Four more failures open the circuit: apps are told to come back later at once.
    for _ in 0..4 {
        let r = env
            .call(
                "mot-cua",
                LOOKUP,
                &lookup_body(&id, "administrative-procedure", Some("HS-2026-000911")),
            )
            .await;
        assert_eq!(r.status, 502, "{}", r.body);
    }
    let r = env
        .call(
            "mot-cua",
            LOOKUP,
            &lookup_body(&id, "administrative-procedure", Some("HS-2026-000911")),
        )
        .await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["type"], "urn:popgate:problem:upstream-circuit-open");
    let wait: u64 = r.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("secs");
    assert!((1..=10).contains(&wait));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_registered_apps_with_certificates_from_the_apps_ca_get_in() {
    let env = TestEnv::start().await;
    let l = &env.pki.layout;
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let body = lookup_body(&id, "administrative-procedure", Some("HS-2026-000912"));
    let token = env.token("mot-cua", "officer-1");
    let url = env.url(LOOKUP);

    // No client certificate: the handshake is refused.
    let anonymous = TestClient::new(&l.apps_ca_cert(), None);
    assert!(anonymous.post(&url, Some(&token), &body).await.is_err());

    // A certificate from another CA, even naming a registered app: refused.
    let other = tempfile::tempdir().expect("tempdir");
    let rogue = pki::init(other.path(), &["mot-cua"], false).expect("pki");
    let rl = &rogue.layout;
    let client = TestClient::new(
        &l.apps_ca_cert(),
        Some((&rl.app_cert("mot-cua"), &rl.app_key("mot-cua"))),
    );
    assert!(client.post(&url, Some(&token), &body).await.is_err());

    // A valid certificate from the apps CA for an app the policy does not know: 403.
    let issued = env
        .pki
        .apps_ca
        .issue_client("ghost", Some(&app_uri("ghost")))
        .expect("issue");
    let (cert, key) = (other.path().join("ghost.pem"), other.path().join("ghost.key"));
    issued.write(&cert, &key).expect("write");
    let ghost = TestClient::new(&l.apps_ca_cert(), Some((&cert, &key)));
    let r = ghost.post(&url, Some(&token), &body).await.expect("response");
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.body["type"], "urn:popgate:problem:unknown-app");

    // The same CA's certificate without any app URI: 403 as well.
    let issued = env.pki.apps_ca.issue_client("no-uri", None).expect("issue");
    issued.write(&cert, &key).expect("write");
    let bare = TestClient::new(&l.apps_ca_cert(), Some((&cert, &key)));
    let r = bare.post(&url, Some(&token), &body).await.expect("response");
    assert_eq!(r.status, 403);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_listener_reports_readiness() {
    let env = TestEnv::start().await;
    let ops = format!("http://{}", env.gateway().ops_addr);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let r = env
        .call(
            "mot-cua",
            LOOKUP,
            &lookup_body(&id, "administrative-procedure", Some("HS-2026-000931")),
        )
        .await;
    assert_eq!(r.status, 200);
    for (path, want) in [
        ("/healthz", 200),
        ("/readyz", 200),
        ("/metrics", 200),
        ("/nope", 404),
    ] {
        let resp = client
            .get(format!("{ops}{path}").parse().expect("uri"))
            .await
            .expect("ops");
        assert_eq!(resp.status().as_u16(), want, "{path}");
        use http_body_util::BodyExt;
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        if path == "/readyz" {
            let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(v["ready"], true);
            assert_eq!(v["warehouse"], "up");
            assert_eq!(v["policy_version"], 1);
        }
        if path == "/metrics" {
            let text = String::from_utf8(body.to_vec()).expect("utf8");
            assert!(
                text.contains(
                    "popgate_requests_total{app=\"mot-cua\",operation=\"lookup\",status=\"200\"} 1"
                ),
                "{text}"
            );
            assert!(text.contains("popgate_upstream_duration_seconds_count 1"));
            assert!(
                text.contains("popgate_journal_wait_seconds_count{event=\"intent\"} 1"),
                "{text}"
            );
            assert!(text.contains("popgate_journal_wait_seconds_count{event=\"outcome\"}"));
            assert!(text.contains("popgate_journal_durable_seq"));
            assert!(!text.contains(&id));
        }
    }
    env.stop().await;
}
