//! Officer token verification: header, key lookup, ES256 signature, claims
//! and certificate binding — the work every request does before policy.

use criterion::{criterion_group, criterion_main, Criterion};
use popgate::auth::token::{JwksSource, TokenVerifier, VerifierSettings};
use popgate::tls::pki::{self, DEMO_TOKEN_AUDIENCE, DEMO_TOKEN_ISSUER};

// The gateway's allocator (src/main.rs), so that this measures the code as
// the gateway runs it rather than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn verification(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki::init(dir.path(), &["mot-cua"], false).expect("pki");
    let l = &pki.layout;
    let token = pki::mint_demo_token(l, "mot-cua", "canbo-01", &["officer".into()], Some(26734), 3600)
        .expect("token");
    let cert = popgate::tls::load_certs(&l.app_cert("mot-cua"))
        .expect("cert")
        .remove(0);
    let thumbprint = popgate::auth::token::CertThumbprint::of(&cert);
    let verifier = rt
        .block_on(TokenVerifier::new(VerifierSettings {
            source: JwksSource::File(l.jwks()),
            issuer: DEMO_TOKEN_ISSUER.into(),
            audience: DEMO_TOKEN_AUDIENCE.into(),
            algorithms: vec![jsonwebtoken::Algorithm::ES256],
            leeway_secs: 30,
            max_token_bytes: 8192,
            refetch_interval: std::time::Duration::from_secs(30),
        }))
        .expect("verifier");
    c.bench_function("token_verify_es256_bound_cold", |b| {
        b.iter(|| {
            rt.block_on(verifier.verify_uncached(&token, &thumbprint, "mot-cua"))
                .expect("valid")
        })
    });
    c.bench_function("token_verify_es256_bound_cached", |b| {
        b.iter(|| {
            rt.block_on(verifier.verify(&token, &thumbprint, "mot-cua"))
                .expect("valid")
        })
    });
}

criterion_group!(benches, verification);
criterion_main!(benches);
