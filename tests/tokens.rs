//! Officer tokens over real mTLS: every way a token can be wrong gets a 401
//! that names it (without echoing the token), a valid one and a rotated key
//! get in, and roles and units drive authorisation.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::TestEnv;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use popgate::auth::token::certificate_thumbprint;
use popgate::tls::pki::{self, DEMO_TOKEN_AUDIENCE, DEMO_TOKEN_ISSUER, DEMO_TOKEN_KID};
use serde_json::{json, Value};

const LOOKUP: &str = "/v1/citizens/lookup";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims of a valid token for an officer of `app` bound to `app`'s cert.
fn claims(env: &TestEnv, app: &str) -> Value {
    let cert = popgate::tls::load_certs(&env.pki.layout.app_cert(app)).expect("cert");
    json!({
        "iss": DEMO_TOKEN_ISSUER, "aud": DEMO_TOKEN_AUDIENCE, "sub": "officer-7", "azp": app,
        "roles": ["officer"], "iat": now(), "nbf": now(), "exp": now() + 300,
        "cnf": { "x5t#S256": certificate_thumbprint(&cert[0]) },
    })
}

fn sign_es256(key_pem: &[u8], kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    header.typ = Some("at+jwt".to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_pem(key_pem).expect("key")).expect("sign")
}

fn idp_key(env: &TestEnv) -> Vec<u8> {
    std::fs::read(env.pki.layout.idp_key()).expect("idp key")
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

async fn lookup_with(env: &TestEnv, app: &str, token: Option<&str>) -> common::TestResponse {
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let body =
        json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000917"})
            .to_string();
    env.client(app)
        .post(&env.url(LOOKUP), token, &body)
        .await
        .expect("response")
}

fn assert_401(r: &common::TestResponse, needle: &str, token: Option<&str>) {
    assert_eq!(r.status, 401, "{needle}: {}", r.body);
    let detail = r.body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(needle), "expected '{needle}' in '{detail}'");
    assert!(r.headers.contains_key("www-authenticate"), "{needle}");
    if let Some(t) = token {
        let tail = &t[t.len().saturating_sub(20)..];
        assert!(!detail.contains(tail), "the token is echoed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_token_is_refused_with_401() {
    let env = TestEnv::start().await;
    let key = idp_key(&env);
    let good = claims(&env, "mot-cua");

    let r = lookup_with(&env, "mot-cua", None).await;
    assert_401(&r, "no bearer token", None);
    assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"popgate\"");

    let mut cases: Vec<(String, &str)> = vec![("garbage".into(), "well-formed")];
    // alg "none" in any case: no signature can make it acceptable.
    for alg in ["none", "None", "NONE", "nOnE"] {
        let t = format!(
            "{}.{}.",
            b64(&json!({"alg": alg, "typ": "JWT", "kid": DEMO_TOKEN_KID})),
            b64(&good)
        );
        cases.push((t, "algorithm"));
    }
    // HS256 "signed" with the identity provider's public key.
    let public = std::fs::read(env.pki.layout.jwks()).expect("jwks");
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(DEMO_TOKEN_KID.into());
    let forged = jsonwebtoken::encode(&hs, &good, &EncodingKey::from_secret(&public)).expect("hs256");
    cases.push((forged, "algorithm"));
    // Unknown kid; a key that is not in the JWKS under the known kid.
    cases.push((sign_es256(&key, "no-such-key", &good), "key id"));
    let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    cases.push((
        sign_es256(stranger.serialize_pem().as_bytes(), DEMO_TOKEN_KID, &good),
        "signature",
    ));

    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        sign_es256(&key, DEMO_TOKEN_KID, &c)
    };
    cases.push((with(&|c| c["iss"] = json!("https://evil.example")), "issuer"));
    cases.push((with(&|c| c["aud"] = json!("urn:other")), "aud"));
    cases.push((with(&|c| c["exp"] = json!(now() - 120)), "expired"));
    cases.push((with(&|c| c["nbf"] = json!(now() + 600)), "not valid yet"));
    cases.push((with(&|c| c["iat"] = json!(now() + 600)), "in the future"));
    cases.push((with(&|c| drop(c.as_object_mut().map(|o| o.remove("cnf")))), "cnf"));
    cases.push((
        with(&|c| drop(c.as_object_mut().map(|o| o.remove("roles")))),
        "roles",
    ));
    cases.push((with(&|c| drop(c.as_object_mut().map(|o| o.remove("azp")))), "azp"));
    cases.push((with(&|c| drop(c.as_object_mut().map(|o| o.remove("iat")))), "iat"));
    // Bound to another app's certificate.
    let y_te_cnf = claims(&env, "y-te")["cnf"].clone();
    cases.push((with(&|c| c["cnf"] = y_te_cnf.clone()), "not bound"));
    // A 16 KiB token.
    let big = "A".repeat(16 * 1024);
    cases.push((with(&|c| c["pad"] = json!(big)), "larger than"));

    for (token, needle) in &cases {
        let r = lookup_with(&env, "mot-cua", Some(token)).await;
        assert_401(&r, needle, Some(token));
        if *needle != "no bearer token" {
            assert!(r.headers["www-authenticate"]
                .to_str()
                .unwrap_or("")
                .contains("invalid_token"));
        }
    }

    // App A's token presented with app B's certificate: not bound, and azp
    // differs — even after it was verified (and cached) for app A.
    let a_token = env.token("mot-cua", "officer-1");
    assert_eq!(lookup_with(&env, "mot-cua", Some(&a_token)).await.status, 200);
    let r = lookup_with(&env, "y-te", Some(&a_token)).await;
    assert_401(&r, "not bound", Some(&a_token));
    // Bound to B's certificate but issued to A: refused by azp.
    let mut c = claims(&env, "y-te");
    c["azp"] = json!("mot-cua");
    let t = sign_es256(&key, DEMO_TOKEN_KID, &c);
    assert_401(
        &lookup_with(&env, "y-te", Some(&t)).await,
        "another app",
        Some(&t),
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_and_a_rotated_key_are_accepted() {
    let env = TestEnv::start().await;
    let key = idp_key(&env);
    let good = sign_es256(&key, DEMO_TOKEN_KID, &claims(&env, "mot-cua"));
    assert_eq!(lookup_with(&env, "mot-cua", Some(&good)).await.status, 200);

    // The identity provider rotates: a second key is published beside the first.
    let next = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut jwks: Value =
        serde_json::from_slice(&std::fs::read(env.pki.layout.jwks()).expect("jwks")).expect("json");
    let added = popgate::auth::token::es256_jwks("demo-idp-2", next.public_key_raw());
    jwks["keys"]
        .as_array_mut()
        .expect("keys")
        .push(added["keys"][0].clone());
    std::fs::write(env.pki.layout.jwks(), jwks.to_string()).expect("write");
    let rotated = sign_es256(
        next.serialize_pem().as_bytes(),
        "demo-idp-2",
        &claims(&env, "mot-cua"),
    );
    let r = lookup_with(&env, "mot-cua", Some(&rotated)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The old key still works while it is published.
    assert_eq!(lookup_with(&env, "mot-cua", Some(&good)).await.status, 200);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_officer_units_drive_authorisation() {
    let env = TestEnv::start().await;
    // An auditor's token cannot look citizens up.
    let auditor = env.token_with("mot-cua", "auditor-1", &["auditor"], None);
    let r = lookup_with(&env, "mot-cua", Some(&auditor)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body["detail"].as_str().unwrap_or("").contains("role"));

    // The operations centre's grant is limited to the officer's own ward.
    let citizen = env.citizen(true);
    let ward: u32 = citizen.to_c06()["ThuongTru"]["MaPhuongXa"]
        .as_str()
        .expect("ward")
        .parse()
        .expect("code");
    let body = json!({"personal_id": citizen.personal_id().as_str(), "purpose": "emergency-response",
                      "case_ref": "HS-2026-000918"})
    .to_string();
    let ioc = env.client("ioc");
    let here = env.token_with("ioc", "ioc-1", &["officer"], Some(ward));
    let r = ioc
        .post(&env.url(LOOKUP), Some(&here), &body)
        .await
        .expect("response");
    assert_eq!(r.status, 200, "{}", r.body);
    // year-only mask on the date of birth.
    assert_eq!(r.body["citizen"]["date_of_birth"].as_str().map(str::len), Some(4));
    let elsewhere = env.token_with(
        "ioc",
        "ioc-2",
        &["officer"],
        Some(if ward == 26734 { 26737 } else { 26734 }),
    );
    let r = ioc
        .post(&env.url(LOOKUP), Some(&elsewhere), &body)
        .await
        .expect("response");
    assert_eq!(r.status, 403, "{}", r.body);
    let nowhere = env.token_with("ioc", "ioc-3", &["officer"], None);
    let r = ioc
        .post(&env.url(LOOKUP), Some(&nowhere), &body)
        .await
        .expect("response");
    assert_eq!(r.status, 403);
    // The fix is the token, not the citizen: the answer names the claim.
    let detail = r.body["detail"].as_str().unwrap_or("");
    assert!(detail.contains("'unit' claim"), "{detail}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_rate_limit_is_429_with_retry_after_naming_the_limit() {
    let env = TestEnv::start_with(|c| {
        c.rate_limits.per_officer_per_minute = 2;
        c.rate_limits.distinct_citizens_per_officer_per_hour = 1;
    })
    .await;
    let first = env.token("mot-cua", "busy-officer");
    assert_eq!(lookup_with(&env, "mot-cua", Some(&first)).await.status, 200);
    assert_eq!(lookup_with(&env, "mot-cua", Some(&first)).await.status, 200);
    let r = lookup_with(&env, "mot-cua", Some(&first)).await;
    assert_eq!(r.status, 429, "{}", r.body);
    let retry: u64 = r.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=30).contains(&retry), "{retry}");
    assert!(r.body["detail"]
        .as_str()
        .unwrap_or("")
        .contains("officer's request rate"));
    // Another officer is not affected, until they look up a second citizen.
    let other = env.token("mot-cua", "curious-officer");
    assert_eq!(lookup_with(&env, "mot-cua", Some(&other)).await.status, 200);
    let second = env.citizen(true);
    let mut id = second.personal_id().as_str().to_owned();
    let p = env.sim.population();
    for i in 1..1000 {
        let c = p.citizen(i);
        if c.residence_province() == 79 && c.personal_id() != second.personal_id() {
            id = c.personal_id().as_str().to_owned();
            break;
        }
    }
    let body =
        json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000919"})
            .to_string();
    let r = env
        .client("mot-cua")
        .post(&env.url(LOOKUP), Some(&other), &body)
        .await
        .expect("response");
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.body["detail"]
        .as_str()
        .unwrap_or("")
        .contains("distinct citizens"));
    env.stop().await;
}

#[test]
fn popgate_token_refuses_an_unknown_app() {
    let dir = tempfile::tempdir().expect("tempdir");
    pki::init(dir.path(), &["mot-cua"], false).expect("pki");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_popgate"))
        .args([
            "token", "--app", "nope", "--sub", "x", "--role", "officer", "--dir",
        ])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no certificate for app 'nope'"), "{err}");
    assert!(!err.contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_can_come_from_an_https_jwks_url() {
    use std::sync::Arc;
    // The identity provider's JWKS served over HTTPS (any server cert the
    // gateway is told to trust).
    let idp_dir = tempfile::tempdir().expect("tempdir");
    let idp = pki::init(idp_dir.path(), &[], false).expect("pki");
    let jwks_file = idp.layout.jwks();
    let mut server_tls = rustls::ServerConfig::builder_with_provider(popgate::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            popgate::tls::load_certs(&idp.layout.gateway_cert()).expect("cert"),
            popgate::tls::load_key(&idp.layout.gateway_key()).expect("key"),
        )
        .expect("tls");
    server_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!(
        "https://127.0.0.1:{}/jwks.json",
        listener.local_addr().expect("addr").port()
    );
    let (stop, rx) = tokio::sync::watch::channel(false);
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(popgate::server::serve(
        listener,
        Some(popgate::tls::fixed(server_tls)),
        popgate::server::ServerLimits::default(),
        move |_req, _peer| {
            let file = jwks_file.clone();
            let count = count.clone();
            async move {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let bytes = std::fs::read(file).expect("jwks");
                popgate::server::json_bytes_response(http::StatusCode::OK, bytes)
            }
        },
        rx,
    ));

    let idp_key = std::fs::read(idp.layout.idp_key()).expect("key");
    let ca = idp.layout.apps_ca_cert();
    let env = TestEnv::start_with(|c| {
        c.tokens.jwks = None;
        c.tokens.jwks_url = Some(url.parse().expect("url"));
        c.tokens.jwks_ca = Some(ca.clone());
    })
    .await;
    assert_eq!(
        served.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "fetched once at start"
    );
    // A token signed by the URL's key is accepted ...
    let token = sign_es256(&idp_key, DEMO_TOKEN_KID, &claims(&env, "mot-cua"));
    assert_eq!(lookup_with(&env, "mot-cua", Some(&token)).await.status, 200);
    // ... one signed by the test PKI's own identity provider is not.
    let other = env.token("mot-cua", "officer-1");
    assert_eq!(lookup_with(&env, "mot-cua", Some(&other)).await.status, 401);
    env.stop().await;
    let _ = stop.send(true);
}
