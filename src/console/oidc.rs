//! The console's side of OpenID Connect: the authorization code flow with
//! PKCE (S256), `state` and `nonce`, the code exchanged with the client
//! secret over TLS, and the ID token verified against the provider's key
//! set (issuer, audience, expiry, nonce). The provider's discovery document
//! is read on the first sign-in, so the gateway starts without it.

use std::time::Duration;

use anyhow::Context;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::auth::secret::random_secret;
use crate::auth::token::{IdToken, JwksSource, TokenError, TokenVerifier, VerifierSettings};
use crate::config::OidcSection;
use crate::tls::https_client::{https_client, ClientOptions, HttpVersions, HttpsClient};

/// How long the provider may take to answer.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_PROVIDER_BYTES: usize = 256 * 1024;

/// What the console reads of the discovery document.
#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

struct Discovered {
    discovery: Discovery,
    verifier: TokenVerifier,
}

/// A sign-in under way: what the callback must match.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
}

/// The console's OpenID Connect client.
pub struct Oidc {
    settings: OidcSection,
    secret: String,
    http: HttpsClient,
    ca: std::path::PathBuf,
    discovered: OnceCell<Discovered>,
}

impl Oidc {
    pub fn new(settings: &OidcSection) -> anyhow::Result<Oidc> {
        let secret = std::fs::read_to_string(&settings.client_secret_file)
            .with_context(|| {
                format!(
                    "cannot read the console's client secret {}",
                    settings.client_secret_file.display()
                )
            })?
            .trim()
            .to_owned();
        anyhow::ensure!(!secret.is_empty(), "the console's client secret file is empty");
        let tls = crate::tls::server_auth_client_config(&settings.ca)?;
        let http = https_client(
            tls,
            &ClientOptions {
                versions: HttpVersions::Http1,
                connect_timeout: Some(PROVIDER_TIMEOUT),
                ..ClientOptions::default()
            },
        );
        Ok(Oidc {
            settings: settings.clone(),
            secret,
            http,
            ca: settings.ca.clone(),
            discovered: OnceCell::new(),
        })
    }

    async fn discovered(&self) -> anyhow::Result<&Discovered> {
        self.discovered
            .get_or_try_init(|| async {
                let issuer = self.settings.issuer.to_string();
                let issuer = issuer.trim_end_matches('/');
                let url = format!("{issuer}/.well-known/openid-configuration");
                let body = self
                    .fetch(http::Request::get(&url).body(Full::new(Bytes::new()))?)
                    .await?;
                let discovery: Discovery = serde_json::from_slice(&body)
                    .context("the provider's discovery document is not valid")?;
                anyhow::ensure!(
                    discovery.issuer.trim_end_matches('/') == issuer,
                    "the provider's discovery document names another issuer"
                );
                let verifier = TokenVerifier::new(VerifierSettings {
                    source: JwksSource::Url {
                        url: discovery.jwks_uri.clone(),
                        ca: Some(self.ca.clone()),
                    },
                    issuer: discovery.issuer.clone(),
                    audience: self.settings.client_id.clone(),
                    algorithms: crate::auth::token::ASYMMETRIC_ALGORITHMS.to_vec(),
                    leeway_secs: 30,
                    max_token_bytes: 16 * 1024,
                    refetch_interval: Duration::from_secs(60),
                })
                .await?;
                Ok(Discovered { discovery, verifier })
            })
            .await
    }

    async fn fetch(&self, req: http::Request<Full<Bytes>>) -> anyhow::Result<Vec<u8>> {
        let resp = tokio::time::timeout(PROVIDER_TIMEOUT, self.http.request(req))
            .await
            .context("the identity provider did not answer in time")?
            .context("cannot reach the identity provider")?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_PROVIDER_BYTES)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot read the identity provider's answer: {e}"))?
            .to_bytes();
        anyhow::ensure!(
            status.is_success(),
            "the identity provider answered HTTP {status}"
        );
        Ok(body.to_vec())
    }

    /// A new sign-in and the provider URL that the browser is sent to.
    pub async fn begin(&self) -> anyhow::Result<(Attempt, String)> {
        let d = self.discovered().await?;
        let attempt = Attempt {
            state: random_secret(),
            nonce: random_secret(),
            verifier: random_secret(),
        };
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(attempt.verifier.as_bytes()));
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.settings.client_id)
            .append_pair("redirect_uri", &self.settings.redirect_url.to_string())
            .append_pair("scope", "openid profile roles")
            .append_pair("state", &attempt.state)
            .append_pair("nonce", &attempt.nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        let sep = if d.discovery.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        Ok((
            attempt,
            format!("{}{sep}{query}", d.discovery.authorization_endpoint),
        ))
    }

    /// Exchanges the callback's code and verifies the ID token.
    pub async fn finish(&self, attempt: &Attempt, code: &str) -> Result<IdToken, SignInError> {
        let d = self.discovered().await.map_err(SignInError::Provider)?;
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", &self.settings.redirect_url.to_string())
            .append_pair("code_verifier", &attempt.verifier)
            .finish();
        let basic = STANDARD.encode(format!(
            "{}:{}",
            form_urlencoded::byte_serialize(self.settings.client_id.as_bytes()).collect::<String>(),
            form_urlencoded::byte_serialize(self.secret.as_bytes()).collect::<String>()
        ));
        let req = http::Request::post(&d.discovery.token_endpoint)
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(http::header::AUTHORIZATION, format!("Basic {basic}"))
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| SignInError::Provider(e.into()))?;
        let body = self.fetch(req).await.map_err(SignInError::Provider)?;
        #[derive(Deserialize)]
        struct TokenAnswer {
            id_token: String,
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| SignInError::Provider(anyhow::anyhow!("the token answer has no id_token")))?;
        d.verifier
            .verify_id_token(&answer.id_token, &attempt.nonce)
            .await
            .map_err(SignInError::Token)
    }
}

/// Why a sign-in failed.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("the identity provider: {0:#}")]
    Provider(anyhow::Error),
    #[error("the ID token: {0}")]
    Token(TokenError),
}
