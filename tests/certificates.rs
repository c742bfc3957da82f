//! Client certificates that must not get in — revoked (even on a
//! keep-alive connection opened before the revocation), expired, not yet
//! valid, for servers only, or a CA posing as a leaf — and certificates,
//! CA and CRLs reloaded without a restart.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestClient, TestEnv};
use popgate::tls::pki::{app_uri, Issued};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use serde_json::json;
use time::OffsetDateTime;

const LOOKUP: &str = "/v1/citizens/lookup";

fn serial_of(issued: &Issued) -> Vec<u8> {
    use x509_parser::prelude::FromDer;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("pem");
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der.as_ref()).expect("der");
    cert.raw_serial().to_vec()
}

fn client_params(
    app: &str,
    from: OffsetDateTime,
    to: OffsetDateTime,
    eku: ExtendedKeyUsagePurpose,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, app);
    p.subject_alt_names = vec![SanType::URI(app_uri(app).try_into().expect("uri"))];
    p.extended_key_usages = vec![eku];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = from;
    p.not_after = to;
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_at_once_even_on_a_live_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crl_path = dir.path().join("apps-ca.crl");
    let now = OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let crl = |ca: &popgate::tls::pki::Authority, revoked: &[Vec<u8>]| {
        ca.crl(revoked, now - day, now + day).expect("crl")
    };
    // An empty CRL from the environment's apps CA, in place before start.
    let path = crl_path.clone();
    let env = TestEnv::start_prepared(
        move |pki, c| {
            std::fs::write(&path, crl(&pki.apps_ca, &[])).expect("write crl");
            c.tls.crls = vec![path.clone()];
        },
        popgate::gateway::StartOptions::default(),
    )
    .await;
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let body =
        json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000904"})
            .to_string();
    let client = env.client("mot-cua");
    let token = env.token("mot-cua", "officer-1");
    assert_eq!(
        client
            .post(&env.url(LOOKUP), Some(&token), &body)
            .await
            .expect("first")
            .status,
        200
    );

    // The app's certificate is revoked: a new CRL is published.
    let cert_pem = std::fs::read_to_string(env.pki.layout.app_cert("mot-cua")).expect("cert");
    let revoked = Issued {
        cert_pem,
        key_pem: String::new(),
    };
    std::fs::write(&crl_path, crl(&env.pki.apps_ca, &[serial_of(&revoked)])).expect("write crl");
    env.gateway().reload_tls().expect("reload");
    // Same keep-alive connection: the next request is refused.
    let r = client
        .post(&env.url(LOOKUP), Some(&token), &body)
        .await
        .expect("same connection");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body["detail"].as_str().unwrap_or("").contains("revoked"));
    // A new connection does not even complete the handshake.
    assert!(env
        .client("mot-cua")
        .post(&env.url(LOOKUP), Some(&token), &body)
        .await
        .is_err());
    // Other apps are unaffected.
    let health = json!({"personal_id": id, "purpose": "health-insurance"}).to_string();
    assert_eq!(env.call("y-te", LOOKUP, &health).await.status, 200);

    // A stale CRL is refused; the active one stays.
    std::fs::write(
        &crl_path,
        env.pki.apps_ca.crl(&[], now - day - day, now - day).expect("crl"),
    )
    .expect("write");
    let err = env.gateway().reload_tls().expect_err("stale");
    assert!(err.to_string().contains("stale"), "{err}");
    assert_eq!(env.call("y-te", LOOKUP, &health).await.status, 200);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_premature_server_only_and_ca_certificates_are_refused() {
    let env = TestEnv::start().await;
    let ca = &env.pki.apps_ca;
    let now = OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let mut ca_leaf = client_params(
        "mot-cua",
        now - day,
        now + day,
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    ca_leaf.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_leaf.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let cases = [
        (
            "expired",
            client_params(
                "mot-cua",
                now - day - day,
                now - day,
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
        ),
        (
            "not yet valid",
            client_params(
                "mot-cua",
                now + day,
                now + day + day,
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
        ),
        (
            "server-only EKU",
            client_params(
                "mot-cua",
                now - day,
                now + day,
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
        ),
        ("CA as leaf", ca_leaf),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let body =
        json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000905"})
            .to_string();
    let token = env.token("mot-cua", "officer-1");
    for (name, params) in cases {
        let issued = ca.issue_as_is(params).expect("issue");
        let (cert, key) = (
            dir.path().join(format!("{name}.pem")),
            dir.path().join(format!("{name}.key")),
        );
        issued.write(&cert, &key).expect("write");
        let client = TestClient::new(&env.pki.layout.apps_ca_cert(), Some((&cert, &key)));
        assert!(
            client.post(&env.url(LOOKUP), Some(&token), &body).await.is_err(),
            "{name} must be refused"
        );
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_server_certificate_is_picked_up_from_the_files() {
    let env = TestEnv::start().await;
    let l = &env.pki.layout;
    let served = || async {
        let tls = popgate::tls::mutual_client_config(
            &l.apps_ca_cert(),
            &l.app_cert("mot-cua"),
            &l.app_key("mot-cua"),
            &[],
        )
        .expect("tls");
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let tcp = tokio::net::TcpStream::connect(env.gateway().gateway_addr)
            .await
            .expect("tcp");
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let stream = connector.connect(name, tcp).await.expect("handshake");
        stream.get_ref().1.peer_certificates().expect("certs")[0].to_vec()
    };
    let before = served().await;
    env.pki
        .apps_ca
        .issue_server("popgate gateway (renewed)")
        .expect("issue")
        .write(&l.gateway_cert(), &l.gateway_key())
        .expect("write");
    // The file watcher notices within a few seconds; no signal, no restart.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now_served = served().await;
        if now_served != before {
            let expected = rustls_pki_types::CertificateDer::from_pem_file(l.gateway_cert()).expect("pem");
            assert_eq!(now_served, expected.to_vec());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.stop().await;
}

/// The gateway prefers the hybrid post-quantum key exchange X25519MLKEM768
/// when the app offers it (our own client does, first), and still accepts
/// an app that offers only classical X25519; TLS 1.3 with an AEAD suite
/// either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_negotiates_hybrid_post_quantum_key_exchange() {
    use rustls::NamedGroup;
    let env = TestEnv::start().await;
    let l = &env.pki.layout;
    let addr = env.gateway().gateway_addr;
    let handshake = |config: rustls::ClientConfig| async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(
                rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name"),
                tcp,
            )
            .await
            .expect("handshake");
        let (_, conn) = tls.get_ref();
        (
            conn.negotiated_key_exchange_group().map(|g| g.name()),
            conn.protocol_version(),
            conn.negotiated_cipher_suite().map(|s| s.suite()),
        )
    };
    let ours = popgate::tls::mutual_client_config(
        &l.apps_ca_cert(),
        &l.app_cert("mot-cua"),
        &l.app_key("mot-cua"),
        &[],
    )
    .expect("tls");
    let (group, version, suite) = handshake(ours).await;
    assert_eq!(group, Some(NamedGroup::X25519MLKEM768));
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert!(
        matches!(
            suite,
            Some(
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                    | rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
                    | rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
            )
        ),
        "{suite:?}"
    );
    // An app whose TLS stack knows only X25519.
    let classical = rustls::crypto::CryptoProvider {
        kx_groups: vec![rustls::crypto::aws_lc_rs::kx_group::X25519],
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let certs = popgate::tls::load_certs(&l.app_cert("mot-cua")).expect("cert");
    let key = popgate::tls::load_key(&l.app_key("mot-cua")).expect("key");
    let mut roots = rustls::RootCertStore::empty();
    for ca in popgate::tls::load_certs(&l.apps_ca_cert()).expect("ca") {
        roots.add(ca).expect("root");
    }
    let old = rustls::ClientConfig::builder_with_provider(Arc::new(classical))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .expect("client cert");
    let (group, ..) = handshake(old).await;
    assert_eq!(group, Some(NamedGroup::X25519));
    env.stop().await;
}
