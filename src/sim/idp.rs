//! The demo identity provider: what the console's OpenID Connect sign-in
//! needs from a provider, offline — a discovery document, an authorize
//! endpoint with a plain login page for the demo accounts, a token
//! endpoint (authorization code with PKCE, S256 only, codes used once and
//! within a minute), and the key set. Logins are limited per account and
//! per address, so a password cannot be guessed at speed.
//!
//! A stand-in for the province's real provider (VNeID or the province's
//! own), as the simulator stands in for the national database: it signs
//! with the demo's identity-provider key and knows only demo accounts.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use askama::Template;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{header, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::secret::{constant_time_eq, random_secret};
use crate::server::{self, json_response, parse_form, Body, Peer, ServerLimits};

/// A demo official who may sign in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    /// The login name, also the `sub` of the ID token.
    pub name: String,
    /// The name shown in the console.
    pub display_name: String,
    /// `policy-admin`, `auditor` or `officer`.
    pub role: String,
    pub password: String,
}

/// The one client the provider knows: the console.
#[derive(Debug, Clone)]
pub struct RegisteredClient {
    pub id: String,
    pub secret: String,
    pub redirect_url: String,
}

/// What the provider signs with and whom it knows.
pub struct IdpSettings {
    /// ES256 PKCS#8 PEM.
    pub key_pem: Vec<u8>,
    pub kid: String,
    /// The public key set (served at `/jwks`).
    pub jwks: serde_json::Value,
    pub accounts: Vec<Account>,
    pub client: RegisteredClient,
    /// Wrong passwords a minute, per account and per address tenfold.
    pub attempts_per_minute: u32,
}

/// How long an authorization code may wait for its exchange.
const CODE_TTL: Duration = Duration::from_secs(60);
/// Lifetime of the ID tokens it issues.
const ID_TOKEN_TTL_SECS: u64 = 300;
const MAX_FORM_BYTES: usize = 16 * 1024;
const LOGIN_CSS: &str = "body{font-family:sans-serif;max-width:26rem;margin:4rem auto;color:#1b1b1b}\
form{display:grid;gap:.6rem}input,button{font-size:1rem;padding:.4rem}\
.error{color:#a40000;font-weight:bold}footer{margin-top:2rem;color:#555;font-size:.85rem}";

struct Pending {
    account: String,
    redirect_uri: String,
    nonce: Option<String>,
    challenge: String,
    issued: Instant,
}

struct Idp {
    issuer: String,
    settings: IdpSettings,
    codes: Mutex<HashMap<String, Pending>>,
    per_account: DefaultKeyedRateLimiter<String>,
    per_address: DefaultKeyedRateLimiter<IpAddr>,
}

/// The provider serving on a loopback port until [`RunningIdp::stop`].
pub struct RunningIdp {
    pub addr: SocketAddr,
    stop: Option<watch::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningIdp {
    /// Starts the provider on `listener` with `tls`; its issuer is
    /// `https://ADDR`.
    pub fn spawn(
        listener: TcpListener,
        tls: rustls::ServerConfig,
        settings: IdpSettings,
    ) -> anyhow::Result<RunningIdp> {
        let addr = listener.local_addr()?;
        let quota = |n: u32| Quota::per_minute(NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN));
        let idp = Arc::new(Idp {
            issuer: format!("https://{addr}"),
            per_account: RateLimiter::keyed(quota(settings.attempts_per_minute)),
            per_address: RateLimiter::keyed(quota(settings.attempts_per_minute.saturating_mul(10))),
            settings,
            codes: Mutex::new(HashMap::new()),
        });
        let (stop, stop_rx) = watch::channel(false);
        let tls = crate::tls::fixed(tls);
        let task = tokio::spawn(server::serve(
            listener,
            Some(tls),
            ServerLimits::default(),
            move |req, peer| idp.clone().handle(req, peer),
            stop_rx,
        ));
        Ok(RunningIdp {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The issuer URL (`iss` of its tokens).
    pub fn issuer(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

#[derive(Template)]
#[template(path = "idp_login.html")]
struct LoginPage<'a> {
    params: &'a AuthorizeParams,
    error: Option<&'static str>,
    name: &'a str,
}

/// The query of `GET /authorize`, carried in the login form.
#[derive(Debug, Default, Deserialize)]
struct AuthorizeParams {
    #[serde(default)]
    response_type: String,
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    redirect_uri: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    code_challenge: String,
    #[serde(default)]
    code_challenge_method: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

#[derive(Debug, Default, Deserialize)]
struct TokenForm {
    #[serde(default)]
    grant_type: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    redirect_uri: String,
    #[serde(default)]
    code_verifier: String,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
}

#[derive(Serialize)]
struct IdClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    azp: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
    name: &'a str,
    roles: [&'a str; 1],
}

fn page(status: StatusCode, html: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(html)).boxed());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        "text/html; charset=utf-8"
            .parse()
            .unwrap_or(header::HeaderValue::from_static("text/html")),
    );
    h.insert(
        "content-security-policy",
        header::HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
    );
    h.insert("x-frame-options", header::HeaderValue::from_static("DENY"));
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    let mut resp = json_response(
        status,
        &json!({ "error": error, "error_description": description }),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

impl Idp {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: Arc<Peer>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/.well-known/openid-configuration") => json_response(
                StatusCode::OK,
                &json!({
                    "issuer": self.issuer,
                    "authorization_endpoint": format!("{}/authorize", self.issuer),
                    "token_endpoint": format!("{}/token", self.issuer),
                    "jwks_uri": format!("{}/jwks", self.issuer),
                    "response_types_supported": ["code"],
                    "grant_types_supported": ["authorization_code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["ES256"],
                    "code_challenge_methods_supported": ["S256"],
                    "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                    "scopes_supported": ["openid", "profile", "roles"],
                    "claims_supported": ["sub", "name", "roles", "nonce"],
                }),
            ),
            (Method::GET, "/favicon.ico") => {
                let mut resp = Response::new(Full::new(Bytes::new()).boxed());
                *resp.status_mut() = StatusCode::NO_CONTENT;
                resp
            }
            (Method::GET, "/jwks") => json_response(StatusCode::OK, &self.settings.jwks),
            (Method::GET, "/login.css") => {
                let mut resp = Response::new(Full::new(Bytes::from_static(LOGIN_CSS.as_bytes())).boxed());
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/css; charset=utf-8"),
                );
                resp
            }
            (Method::GET, "/authorize") => {
                let params: AuthorizeParams = parse_form(req.uri().query().unwrap_or("").as_bytes());
                match self.check_request(&params) {
                    Err(why) => page(StatusCode::BAD_REQUEST, why.to_owned()),
                    Ok(()) => self.login_page(StatusCode::OK, &params, None),
                }
            }
            (Method::POST, "/authorize") => {
                let Some(form) = read_form(req).await else {
                    return page(StatusCode::PAYLOAD_TOO_LARGE, "the form is too large".to_owned());
                };
                let params: AuthorizeParams = parse_form(&form);
                self.login(&params, peer.addr.ip())
            }
            (Method::POST, "/token") => {
                let basic = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Basic "))
                    .and_then(|b| STANDARD.decode(b.trim()).ok())
                    .and_then(|b| String::from_utf8(b).ok());
                let Some(form) = read_form(req).await else {
                    return oauth_error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "invalid_request",
                        "the form is too large",
                    );
                };
                self.token(&parse_form(&form), basic)
            }
            _ => page(StatusCode::NOT_FOUND, "not found".to_owned()),
        }
    }

    /// A request names the registered client, its exact redirect URL, and
    /// a PKCE challenge; else it is refused here (never redirected).
    fn check_request(&self, p: &AuthorizeParams) -> Result<(), &'static str> {
        let c = &self.settings.client;
        if p.client_id != c.id || p.redirect_uri != c.redirect_url {
            return Err("unknown client or redirect URL");
        }
        if p.response_type != "code" || !p.scope.split(' ').any(|s| s == "openid") {
            return Err("only the authorization code flow with scope openid is offered");
        }
        if p.code_challenge_method != "S256" || !(43..=128).contains(&p.code_challenge.len()) {
            return Err("a PKCE code challenge (S256) is required");
        }
        if p.state.is_empty() || p.state.len() > 256 {
            return Err("a state is required");
        }
        Ok(())
    }

    fn login_page(
        &self,
        status: StatusCode,
        params: &AuthorizeParams,
        error: Option<&'static str>,
    ) -> Response<Body> {
        let html = LoginPage {
            params,
            error,
            name: &params.username,
        }
        .render()
        .unwrap_or_else(|_| "the login page could not be rendered".to_owned());
        page(status, html)
    }

    fn login(&self, params: &AuthorizeParams, address: IpAddr) -> Response<Body> {
        if let Err(why) = self.check_request(params) {
            return page(StatusCode::BAD_REQUEST, why.to_owned());
        }
        // Every attempt counts, good or bad: a guesser gets a few a minute.
        if self.per_address.check_key(&address).is_err()
            || self.per_account.check_key(&params.username).is_err()
        {
            tracing::info!("demo identity provider: sign-in attempts over the limit");
            return self.login_page(
                StatusCode::TOO_MANY_REQUESTS,
                params,
                Some("Quá nhiều lần đăng nhập sai. Vui lòng thử lại sau một phút. (Too many attempts: try again in a minute.)"),
            );
        }
        let account = self.settings.accounts.iter().find(|a| {
            a.name == params.username && constant_time_eq(a.password.as_bytes(), params.password.as_bytes())
        });
        let Some(account) = account else {
            return self.login_page(
                StatusCode::UNAUTHORIZED,
                params,
                Some("Tên đăng nhập hoặc mật khẩu không đúng. (Wrong name or password.)"),
            );
        };
        let code = random_secret();
        if let Ok(mut codes) = self.codes.lock() {
            codes.retain(|_, p| p.issued.elapsed() < CODE_TTL);
            codes.insert(
                code.clone(),
                Pending {
                    account: account.name.clone(),
                    redirect_uri: params.redirect_uri.clone(),
                    nonce: params.nonce.clone(),
                    challenge: params.code_challenge.clone(),
                    issued: Instant::now(),
                },
            );
        }
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("code", &code)
            .append_pair("state", &params.state)
            .finish();
        let mut resp = Response::new(Full::new(Bytes::new()).boxed());
        *resp.status_mut() = StatusCode::SEE_OTHER;
        if let Ok(v) = format!("{}?{query}", params.redirect_uri).parse() {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        resp
    }

    fn token(&self, form: &TokenForm, basic: Option<String>) -> Response<Body> {
        let c = &self.settings.client;
        let (id, secret) = match basic.as_deref().and_then(|b| b.split_once(':')) {
            Some((id, secret)) => (Some(id.to_owned()), Some(secret.to_owned())),
            None => (form.client_id.clone(), form.client_secret.clone()),
        };
        let authenticated = id.as_deref() == Some(c.id.as_str())
            && secret.is_some_and(|s| constant_time_eq(s.as_bytes(), c.secret.as_bytes()));
        if !authenticated {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            );
        }
        if form.grant_type != "authorization_code" {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only authorization_code",
            );
        }
        // A code is good once, whatever the outcome of its exchange.
        let pending = self
            .codes
            .lock()
            .ok()
            .and_then(|mut codes| codes.remove(&form.code));
        let Some(p) = pending.filter(|p| p.issued.elapsed() < CODE_TTL) else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "unknown, used or expired code",
            );
        };
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(form.code_verifier.as_bytes()));
        if p.redirect_uri != form.redirect_uri
            || !constant_time_eq(challenge.as_bytes(), p.challenge.as_bytes())
        {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "redirect_uri or code_verifier does not match",
            );
        }
        let Some(account) = self.settings.accounts.iter().find(|a| a.name == p.account) else {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "the account is gone");
        };
        let now = jsonwebtoken::get_current_timestamp();
        let claims = IdClaims {
            iss: &self.issuer,
            sub: &account.name,
            aud: &c.id,
            azp: &c.id,
            iat: now,
            exp: now + ID_TOKEN_TTL_SECS,
            nonce: p.nonce.as_deref(),
            name: &account.display_name,
            roles: [&account.role],
        };
        let signed = jsonwebtoken::EncodingKey::from_ec_pem(&self.settings.key_pem).and_then(|key| {
            let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
            h.kid = Some(self.settings.kid.clone());
            h.typ = Some("JWT".to_owned());
            jsonwebtoken::encode(&h, &claims, &key)
        });
        match signed {
            Ok(id_token) => {
                let mut resp = json_response(
                    StatusCode::OK,
                    &json!({
                        "access_token": random_secret(),
                        "token_type": "Bearer",
                        "expires_in": ID_TOKEN_TTL_SECS,
                        "id_token": id_token,
                    }),
                );
                resp.headers_mut().insert(
                    header::CACHE_CONTROL,
                    header::HeaderValue::from_static("no-store"),
                );
                resp
            }
            Err(error) => {
                tracing::error!(%error, "demo identity provider: cannot sign");
                oauth_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "cannot sign the ID token",
                )
            }
        }
    }
}

async fn read_form(req: Request<Incoming>) -> Option<Vec<u8>> {
    server::read_body(req, MAX_FORM_BYTES)
        .await
        .ok()
        .map(|b| b.to_vec())
}
