//! Officer tokens: JWTs from the province's identity provider, verified
//! against its JWKS and bound to the app's client certificate (RFC 8705).
//!
//! What a token must satisfy, in order: at most `max_token_bytes`; a header
//! with an allowed asymmetric algorithm, a `typ` of `JWT` or `at+jwt`, and a
//! `kid` found in the JWKS (refetched once per interval on an unknown kid);
//! a key whose type and algorithm match the header; a valid signature;
//! `iss`, `aud`, `exp`, `iat`, `sub`, `azp` and `roles` present, `exp` and
//! `nbf` honoured and `iat` not in the future, with a small leeway; `azp`
//! naming the app identified by the certificate; and `cnf.x5t#S256` equal to
//! the presented certificate's SHA-256 thumbprint, compared in constant
//! time. Headers `jku`, `x5u`, `jwk` and `x5c` are never followed.
//!
//! Error messages name the failure without echoing the token.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::tls::https_client::{https_client, ClientOptions, HttpVersions};
use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::secret::constant_time_eq;

/// The officer acting through an app, from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Officer {
    pub id: String,
    /// Ward code of the officer's unit, when the token names one.
    pub unit: Option<u32>,
    pub roles: Vec<String>,
}

/// Why a token was refused; the text goes into the 401's `detail`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token: send 'Authorization: Bearer <token>' with the officer's token")]
    Missing,
    #[error("the token is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's signing algorithm is not allowed")]
    AlgorithmNotAllowed,
    #[error("the token's typ header must be JWT or at+jwt")]
    WrongType,
    #[error("the token names no key id (kid)")]
    NoKeyId,
    #[error("the token's key id is not in the identity provider's key set")]
    UnknownKey,
    #[error("the token's key does not match its algorithm")]
    KeyMismatch,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token was issued by an untrusted issuer")]
    WrongIssuer,
    #[error("the token is not meant for this gateway (aud)")]
    WrongAudience,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's issue time (iat) is in the future")]
    IssuedInFuture,
    #[error("the token lacks the required claim '{0}'")]
    MissingClaim(&'static str),
    #[error("the token is not bound to this client certificate (cnf.x5t#S256)")]
    NotBound,
    #[error("the token was issued to another app (azp)")]
    WrongApp,
    #[error("the ID token answers another sign-in (nonce)")]
    WrongNonce,
    #[error("the token's unit is not a ward code")]
    BadUnit,
}

/// Algorithms that may ever be configured: asymmetric only, so an HMAC
/// token "signed" with a public key can never verify.
pub const ASYMMETRIC_ALGORITHMS: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// The largest leeway the verifier accepts for clock skew.
pub const MAX_LEEWAY_SECS: u64 = 30;

/// Where the identity provider's keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    File(PathBuf),
    Url { url: String, ca: Option<PathBuf> },
}

#[derive(Debug, Clone)]
pub struct VerifierSettings {
    pub source: JwksSource,
    pub issuer: String,
    pub audience: String,
    pub algorithms: Vec<Algorithm>,
    pub leeway_secs: u64,
    pub max_token_bytes: usize,
    pub refetch_interval: Duration,
}

/// Verifies officer tokens; cheap to share.
pub struct TokenVerifier {
    settings: VerifierSettings,
    keys: ArcSwap<JwkSet>,
    last_fetch: tokio::sync::Mutex<Instant>,
    cache: std::sync::Mutex<TokenCache>,
}

/// Most verified tokens kept; a full cache is cleared of expired entries,
/// then of everything (verification is only slower, never wrong).
const TOKEN_CACHE_CAPACITY: usize = 10_000;

/// Tokens already verified, keyed by the SHA-256 of the token *and* of the
/// presenting certificate and app, so that a cached token is still useless
/// from any other app; an entry lives until the token's `exp`.
#[derive(Default)]
struct TokenCache {
    entries: std::collections::HashMap<[u8; 32], (Officer, u64)>,
}

impl TokenCache {
    fn key(token: &str, cert: &CertThumbprint, app: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(Sha256::digest(token.as_bytes()));
        h.update(cert.0);
        h.update(app.as_bytes());
        h.finalize().into()
    }

    fn get(&mut self, key: &[u8; 32], now: u64) -> Option<Officer> {
        match self.entries.get(key) {
            Some((officer, exp)) if *exp > now => Some(officer.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn put(&mut self, key: [u8; 32], officer: Officer, exp: u64, now: u64) {
        if self.entries.len() >= TOKEN_CACHE_CAPACITY {
            self.entries.retain(|_, (_, e)| *e > now);
            if self.entries.len() >= TOKEN_CACHE_CAPACITY {
                self.entries.clear();
            }
        }
        self.entries.insert(key, (officer, exp));
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    exp: u64,
    sub: Option<String>,
    azp: Option<String>,
    iat: Option<u64>,
    roles: Option<Vec<String>>,
    unit: Option<String>,
    cnf: Option<Confirmation>,
}

#[derive(Debug, Deserialize)]
struct IdClaims {
    sub: Option<String>,
    iat: Option<u64>,
    nonce: Option<String>,
    name: Option<String>,
    roles: Option<Vec<String>>,
}

/// What the console takes from a verified ID token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdToken {
    pub sub: String,
    pub name: Option<String>,
    pub roles: Vec<String>,
}

/// RFC 8705 confirmation claim.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Confirmation {
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: Option<String>,
}

/// base64url(SHA-256(DER)) of a certificate: the RFC 8705 thumbprint.
pub fn certificate_thumbprint(cert: &CertificateDer<'_>) -> String {
    CertThumbprint::of(cert).encoded()
}

/// SHA-256 of a certificate's DER, taken once when a connection is
/// accepted: tokens are bound to it (RFC 8705) and connections are counted
/// by it, so the certificate itself need not be kept for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertThumbprint(pub [u8; 32]);

impl CertThumbprint {
    pub fn of(cert: &CertificateDer<'_>) -> CertThumbprint {
        CertThumbprint(Sha256::digest(cert.as_ref()).into())
    }

    /// As `cnf.x5t#S256` carries it: base64url without padding.
    pub fn encoded(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }
}

impl TokenVerifier {
    /// Loads the key set once; start-up fails if it cannot be read.
    pub async fn new(settings: VerifierSettings) -> anyhow::Result<TokenVerifier> {
        let keys = fetch_jwks(&settings.source).await?;
        Ok(TokenVerifier {
            settings,
            keys: ArcSwap::from_pointee(keys),
            last_fetch: tokio::sync::Mutex::new(Instant::now()),
            cache: std::sync::Mutex::new(TokenCache::default()),
        })
    }

    /// Number of keys currently trusted.
    pub fn key_count(&self) -> usize {
        self.keys.load().keys.len()
    }

    /// Tokens held in the verified-token cache (a metric).
    pub fn cached(&self) -> usize {
        self.cache.lock().map(|c| c.entries.len()).unwrap_or(0)
    }

    /// Verifies `token` as presented by `app` with the certificate whose
    /// thumbprint is `cert`; a token verified before for the same
    /// certificate and app is taken from the cache until its expiry.
    pub async fn verify(&self, token: &str, cert: &CertThumbprint, app: &str) -> Result<Officer, TokenError> {
        if token.len() > self.settings.max_token_bytes {
            return Err(TokenError::TooLarge(self.settings.max_token_bytes));
        }
        let now = jsonwebtoken::get_current_timestamp();
        let key = TokenCache::key(token, cert, app);
        if let Some(officer) = self.cache.lock().ok().and_then(|mut c| c.get(&key, now)) {
            return Ok(officer);
        }
        let (officer, exp) = self.verify_uncached(token, cert, app).await?;
        if let Ok(mut c) = self.cache.lock() {
            c.put(key, officer.clone(), exp, now);
        }
        Ok(officer)
    }

    /// The full verification, bypassing the cache (the benchmark's "cold"
    /// case); returns the officer and the token's `exp`.
    pub async fn verify_uncached(
        &self,
        token: &str,
        cert: &CertThumbprint,
        app: &str,
    ) -> Result<(Officer, u64), TokenError> {
        let (claims, leeway) = self.decode::<Claims>(token).await?;
        let exp = claims.exp;

        let now = jsonwebtoken::get_current_timestamp();
        let iat = claims.iat.ok_or(TokenError::MissingClaim("iat"))?;
        if iat > now + leeway {
            return Err(TokenError::IssuedInFuture);
        }
        let sub = claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(TokenError::MissingClaim("sub"))?;
        let azp = claims.azp.ok_or(TokenError::MissingClaim("azp"))?;
        let roles = claims.roles.ok_or(TokenError::MissingClaim("roles"))?;
        let bound = claims
            .cnf
            .and_then(|c| c.x5t_s256)
            .ok_or(TokenError::MissingClaim("cnf"))?;
        if !constant_time_eq(bound.as_bytes(), cert.encoded().as_bytes()) {
            return Err(TokenError::NotBound);
        }
        if azp != app {
            return Err(TokenError::WrongApp);
        }
        let unit = match claims.unit {
            None => None,
            Some(u) => Some(u.parse::<u32>().map_err(|_| TokenError::BadUnit)?),
        };
        Ok((Officer { id: sub, unit, roles }, exp))
    }

    /// The checks every token of this issuer takes (an allowed asymmetric
    /// algorithm, a known key of the matching type, the signature, `iss`,
    /// `aud`, `exp`, `nbf`), then its claims; with the leeway applied.
    async fn decode<C: serde::de::DeserializeOwned>(&self, token: &str) -> Result<(C, u64), TokenError> {
        if token.len() > self.settings.max_token_bytes {
            return Err(TokenError::TooLarge(self.settings.max_token_bytes));
        }
        let header = parse_token_header(token)?;
        if !self.settings.algorithms.contains(&header.alg) {
            return Err(TokenError::AlgorithmNotAllowed);
        }
        let kid = header.kid.as_deref().ok_or(TokenError::NoKeyId)?;
        let jwk = match self.keys.load().find(kid) {
            Some(jwk) => jwk.clone(),
            None => self.refetch_for(kid).await.ok_or(TokenError::UnknownKey)?,
        };
        if !key_matches(&jwk, header.alg) {
            return Err(TokenError::KeyMismatch);
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| TokenError::KeyMismatch)?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.settings.leeway_secs.min(MAX_LEEWAY_SECS);
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<C>(token, &key, &validation).map_err(map_jwt_error)?;
        Ok((data.claims, validation.leeway))
    }

    /// Verifies an OpenID Connect ID token of the console's sign-in: this
    /// issuer, the console's client id as `aud`, the `nonce` of the sign-in
    /// that asked for it, and `roles`.
    pub async fn verify_id_token(&self, token: &str, nonce: &str) -> Result<IdToken, TokenError> {
        let (claims, leeway) = self.decode::<IdClaims>(token).await?;
        let now = jsonwebtoken::get_current_timestamp();
        if claims.iat.ok_or(TokenError::MissingClaim("iat"))? > now + leeway {
            return Err(TokenError::IssuedInFuture);
        }
        let sent = claims.nonce.ok_or(TokenError::MissingClaim("nonce"))?;
        if !constant_time_eq(sent.as_bytes(), nonce.as_bytes()) {
            return Err(TokenError::WrongNonce);
        }
        let sub = claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(TokenError::MissingClaim("sub"))?;
        Ok(IdToken {
            sub,
            name: claims.name,
            roles: claims.roles.ok_or(TokenError::MissingClaim("roles"))?,
        })
    }

    /// Reloads the key set if the last load is older than the refetch
    /// interval, and looks `kid` up again.
    async fn refetch_for(&self, kid: &str) -> Option<Jwk> {
        let mut last = self.last_fetch.lock().await;
        if let Some(jwk) = self.keys.load().find(kid) {
            return Some(jwk.clone()); // another request refetched meanwhile
        }
        if last.elapsed() < self.settings.refetch_interval {
            return None;
        }
        *last = Instant::now();
        match fetch_jwks(&self.settings.source).await {
            Ok(keys) => {
                tracing::info!(keys = keys.keys.len(), "reloaded the identity provider's keys");
                self.keys.store(Arc::new(keys));
            }
            Err(error) => tracing::warn!(%error, "cannot reload the identity provider's keys"),
        }
        self.keys.load().find(kid).cloned()
    }
}

/// Parses a token's header and applies the checks that need no key: an
/// asymmetric algorithm and a `JWT`/`at+jwt` type. Peer-controlled input:
/// fuzzed (`fuzz/fuzz_targets/token_header.rs`).
pub fn parse_token_header(token: &str) -> Result<jsonwebtoken::Header, TokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| header_error(token))?;
    if !ASYMMETRIC_ALGORITHMS.contains(&header.alg) {
        return Err(TokenError::AlgorithmNotAllowed);
    }
    match header.typ.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("jwt" | "at+jwt" | "application/at+jwt") => Ok(header),
        _ => Err(TokenError::WrongType),
    }
}

/// Why a header did not parse: an `alg` the library does not even know
/// (such as `none`, in any case) is an algorithm refusal, not garbage.
fn header_error(token: &str) -> TokenError {
    let alg_named = token
        .split('.')
        .next()
        .and_then(|h| URL_SAFE_NO_PAD.decode(h.trim_end_matches('=')).ok())
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|h| h.get("alg").is_some_and(serde_json::Value::is_string));
    if alg_named {
        TokenError::AlgorithmNotAllowed
    } else {
        TokenError::Malformed
    }
}

fn key_matches(jwk: &Jwk, alg: Algorithm) -> bool {
    if let Some(declared) = jwk.common.key_algorithm {
        if declared.to_string() != format!("{alg:?}") {
            return false;
        }
    }
    match (&jwk.algorithm, alg) {
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => ec.curve == EllipticCurve::P256,
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) => ec.curve == EllipticCurve::P384,
        (AlgorithmParameters::OctetKeyPair(okp), Algorithm::EdDSA) => okp.curve == EllipticCurve::Ed25519,
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => true,
        _ => false,
    }
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => TokenError::BadSignature,
        K::ExpiredSignature => TokenError::Expired,
        K::ImmatureSignature => TokenError::NotYetValid,
        K::InvalidIssuer => TokenError::WrongIssuer,
        K::InvalidAudience => TokenError::WrongAudience,
        K::InvalidAlgorithm | K::InvalidAlgorithmName => TokenError::AlgorithmNotAllowed,
        K::MissingRequiredClaim(c) => TokenError::MissingClaim(match c.as_str() {
            "exp" => "exp",
            "iss" => "iss",
            "aud" => "aud",
            _ => "sub",
        }),
        K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::InvalidEddsaKey | K::InvalidKeyFormat => {
            TokenError::KeyMismatch
        }
        _ => TokenError::Malformed,
    }
}

/// Reads the key set from its source.
pub async fn fetch_jwks(source: &JwksSource) -> anyhow::Result<JwkSet> {
    use anyhow::Context;
    let bytes = match source {
        JwksSource::File(path) => tokio::fs::read(path)
            .await
            .with_context(|| format!("cannot read the JWKS file {}", path.display()))?,
        JwksSource::Url { url, ca } => fetch_url(url, ca.as_deref()).await?,
    };
    let set: JwkSet = serde_json::from_slice(&bytes).context("the JWKS is not a valid JWK set")?;
    Ok(set)
}

async fn fetch_url(url: &str, ca: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    use http_body_util::{BodyExt, Limited};
    const MAX_JWKS_BYTES: usize = 256 * 1024;
    let ca = ca.context("tokens.jwks_ca is required with tokens.jwks_url")?;
    let tls = crate::tls::server_auth_client_config(ca)?;
    let client = https_client(
        tls,
        &ClientOptions {
            versions: HttpVersions::Http1,
            ..ClientOptions::default()
        },
    );
    let uri: http::Uri = url.parse().context("tokens.jwks_url is not a URL")?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.get(uri))
        .await
        .context("the JWKS URL did not answer in time")??;
    anyhow::ensure!(
        resp.status().is_success(),
        "the JWKS URL answered HTTP {}",
        resp.status()
    );
    let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the JWKS: {e}"))?;
    Ok(body.to_bytes().to_vec())
}

/// What a demo or test identity provider puts in a token.
#[derive(Debug, Clone, Serialize)]
pub struct MintClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub azp: String,
    pub roles: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub cnf: Confirmation,
}

/// Signs `claims` with an ES256 key (PKCS#8 PEM) under `kid`.
pub fn mint(key_pem: &[u8], kid: &str, claims: &MintClaims) -> anyhow::Result<String> {
    let key = jsonwebtoken::EncodingKey::from_ec_pem(key_pem)?;
    let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    header.typ = Some("at+jwt".to_owned());
    Ok(jsonwebtoken::encode(&header, claims, &key)?)
}

/// The JWK set publishing an ES256 public key (uncompressed SEC1 point).
pub fn es256_jwks(kid: &str, public_point: &[u8]) -> serde_json::Value {
    let (x, y) = public_point
        .get(1..)
        .unwrap_or_default()
        .split_at(public_point.len().saturating_sub(1) / 2);
    serde_json::json!({
        "keys": [{
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
            "kid": kid,
            "alg": "ES256",
            "use": "sig",
        }]
    })
}
