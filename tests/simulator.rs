//! The simulator over real mTLS, through the gateway's own upstream client:
//! the three operations, refusal of a client without the province's
//! certificate, and its fault flags (errors, latency).

mod common;

use std::sync::Arc;
use std::time::Duration;

use popgate::personal_id::PersonalId;
use popgate::sim::{Faults, RunningSimulator, SimSettings, Simulator};
use popgate::tls;
use popgate::tls::pki::{self, PkiLayout};
use popgate::upstream::{
    HttpNationalDb, HttpSettings, NationalDb, QueryKind, UpstreamAnswer, UpstreamError, UpstreamQuery,
};
use serde_json::Value;

/// A simulator and its URL; it serves while the third value lives.
async fn start(l: &PkiLayout, faults: Faults) -> (Arc<Simulator>, String, RunningSimulator) {
    let settings = SimSettings {
        seed: 3,
        population: 5000,
        province: 79,
        faults,
        legacy_address_share: 0.15,
    };
    let running = Simulator::spawn(&settings, l).await.expect("simulator");
    (running.sim.clone(), format!("https://{}", running.addr), running)
}

fn client(
    l: &PkiLayout,
    url: &str,
    timeout: Duration,
    cert: (&std::path::Path, &std::path::Path),
) -> HttpNationalDb {
    pooled_client(l, url, timeout, cert, None)
}

fn pooled_client(
    l: &PkiLayout,
    url: &str,
    timeout: Duration,
    cert: (&std::path::Path, &std::path::Path),
    http1_connections: Option<usize>,
) -> HttpNationalDb {
    let tls = tls::mutual_client_config(&l.national_ca_cert(), cert.0, cert.1, &[]).expect("tls");
    HttpNationalDb::new(
        tls,
        HttpSettings {
            base_url: url.parse().expect("url"),
            timeout,
            connect_timeout: Duration::from_secs(1),
            max_response_bytes: 1 << 20,
            service_code: "T".into(),
            integration_code: "T".into(),
            http1_connections: http1_connections.and_then(std::num::NonZeroUsize::new),
        },
    )
    .expect("client")
}

fn query(id: &PersonalId, kind: QueryKind) -> UpstreamQuery {
    UpstreamQuery {
        request_id: "r".into(),
        officer: "o".into(),
        personal_id: id.clone(),
        kind,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_the_three_operations_in_the_c06_shape() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pki::init(dir.path(), &[], false).expect("pki");
    let l = &p.layout;
    let (sim, url, _stop) = start(l, Faults::default()).await;
    let db = client(
        l,
        &url,
        Duration::from_secs(2),
        (&l.upstream_client_cert(), &l.upstream_client_key()),
    );
    let c = sim.population().citizen(42);
    let answer = db
        .query(query(c.personal_id(), QueryKind::Lookup))
        .await
        .expect("lookup");
    let UpstreamAnswer::Citizen { record, as_of } = answer.answer else {
        panic!("not a citizen")
    };
    let record: Value = serde_json::from_str(record.get()).expect("record");
    assert_eq!(record["SoDinhDanh"], c.personal_id().as_str());
    for key in [
        "HoVaTen",
        "NgayThangNamSinh",
        "GioiTinh",
        "DanToc",
        "TonGiao",
        "ThuongTru",
        "NoiOHienTai",
        "Cha",
        "Me",
        "ChuHo",
        "SoSoHoKhau",
    ] {
        assert!(record.get(key).is_some(), "{key}");
    }
    assert!(as_of.is_some_and(|t| t.ends_with("+07:00")));
    assert_eq!(answer.digest.len(), 64);
    let verify = QueryKind::Verify {
        full_name: c.full_name().to_uppercase(),
        date_of_birth: c.date_of_birth(),
    };
    assert!(matches!(
        db.query(query(c.personal_id(), verify))
            .await
            .expect("verify")
            .answer,
        UpstreamAnswer::Match(true)
    ));
    let UpstreamAnswer::Household { head, members, .. } = db
        .query(query(c.personal_id(), QueryKind::Household))
        .await
        .expect("household")
        .answer
    else {
        panic!("not a household")
    };
    let head: Value = serde_json::from_str(head.get()).expect("head");
    assert_eq!(head["ChuHo"]["QuanHe"], "Chủ hộ");
    assert!(members.len() <= 3);
    let nobody = PersonalId::parse("001085999999", 2026).expect("id");
    assert_eq!(
        db.query(query(&nobody, QueryKind::Lookup)).await.err(),
        Some(UpstreamError::NotFound)
    );

    // Without the province's certificate from the national CA: refused.
    let other = tempfile::tempdir().expect("tempdir");
    let rogue = pki::init(other.path(), &[], false).expect("pki");
    let stranger = client(
        l,
        &url,
        Duration::from_secs(2),
        (
            &rogue.layout.upstream_client_cert(),
            &rogue.layout.upstream_client_key(),
        ),
    );
    assert!(matches!(
        stranger.query(query(c.personal_id(), QueryKind::Lookup)).await,
        Err(UpstreamError::Failed(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_flags_inject_errors_and_latency() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pki::init(dir.path(), &[], false).expect("pki");
    let l = &p.layout;
    let cert = (l.upstream_client_cert(), l.upstream_client_key());
    let (sim, url, _stop) = start(
        l,
        Faults {
            error_rate: 1.0,
            ..Faults::default()
        },
    )
    .await;
    let id = sim.population().citizen(1).personal_id().clone();
    let db = client(l, &url, Duration::from_secs(2), (&cert.0, &cert.1));
    assert_eq!(
        db.query(query(&id, QueryKind::Lookup)).await.err(),
        Some(UpstreamError::Failed("HTTP 500 Internal Server Error".into()))
    );

    let (_, url, _stop2) = start(
        l,
        Faults {
            latency: Duration::from_millis(400),
            ..Faults::default()
        },
    )
    .await;
    let impatient = client(l, &url, Duration::from_millis(150), (&cert.0, &cert.1));
    let started = std::time::Instant::now();
    assert_eq!(
        impatient.query(query(&id, QueryKind::Lookup)).await.err(),
        Some(UpstreamError::Timeout)
    );
    assert!(started.elapsed() < Duration::from_millis(390));
    let patient = client(l, &url, Duration::from_secs(2), (&cert.0, &cert.1));
    assert!(patient.query(query(&id, QueryKind::Lookup)).await.is_ok());
}

/// The upstream leg both ways: by default one HTTP/2 connection carries
/// every query; with `http1_connections = 2`, HTTP/1.1 over two keep-alive
/// connections, twenty-four concurrent queries waiting their turn for one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_leg_is_one_h2_connection_or_a_bounded_http1_pool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pki::init(dir.path(), &[], false).expect("pki");
    let l = &p.layout;
    let (sim, url, _stop) = start(l, Faults::default()).await;
    let id = sim.population().citizen(42).personal_id().clone();
    let cert = (l.upstream_client_cert(), l.upstream_client_key());
    let concurrently = |db: HttpNationalDb| {
        let id = id.clone();
        async move {
            let answers =
                futures_util::future::join_all((0..24).map(|_| db.query(query(&id, QueryKind::Lookup))))
                    .await;
            answers.iter().filter(|a| a.is_ok()).count()
        }
    };

    let h2 = client(l, &url, Duration::from_secs(5), (&cert.0, &cert.1));
    assert_eq!(concurrently(h2).await, 24);
    let seen = sim.connections();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].1, http::Version::HTTP_2);

    let pool = pooled_client(l, &url, Duration::from_secs(5), (&cert.0, &cert.1), Some(2));
    assert_eq!(concurrently(pool).await, 24);
    let http1: Vec<_> = sim
        .connections()
        .into_iter()
        .filter(|(_, v)| *v == http::Version::HTTP_11)
        .collect();
    assert!((1..=2).contains(&http1.len()), "HTTP/1.1 connections: {http1:?}");
}
