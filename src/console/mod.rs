//! The web console of policy admins and auditors (`[console]`): HTTPS with
//! the gateway's certificate, sign-in by OpenID Connect ([`oidc`]),
//! server-side sessions with CSRF tokens ([`session`]), and pages rendered
//! by compile-time templates (`templates/console/`), Vietnamese first.
//!
//! Every page reads and acts through [`Api::console_call`]: the same
//! surfaces, role checks and audit events as `/admin/v1` and `/audit/v1`,
//! with the console as the app and the official as the officer. No page
//! runs a script; every response carries `Content-Security-Policy:
//! default-src 'self'` with `frame-ancestors 'none'`. A personal ID only
//! ever travels in a POSTed form, never in a URL.

pub mod charts;
pub mod frame;
pub mod oidc;
pub mod session;
mod views;

use std::sync::Arc;

use askama::Template;
use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};

use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::json;

use crate::api::request::{AUDITOR_ROLE, POLICY_ADMIN_ROLE};
use crate::api::{Api, Official};
use crate::clock::Clock;

use crate::server::{Body, Peer};
use oidc::Oidc;
use session::{
    cookie, same_secret, set_cookie, Found, Lang, Sessions, LANG_COOKIE, LOGIN_COOKIE, SESSION_COOKIE,
};

pub use frame::{console_app, Chrome, WebConsole, CONSOLE_APP_ID};
use frame::{html, query_value, redirect, with_type, Form, Visit};

const CONSOLE_CSS: &str = include_str!("../../templates/console/console.css");
const LETTER_CSS: &str = include_str!("../../templates/letter.css");
/// The largest form the console reads (a policy file is the largest).
const MAX_FORM_BYTES: usize = 512 * 1024;

#[derive(Template)]
#[template(path = "console/landing.html")]
struct Landing {
    title: String,
    c: Chrome,
}

/// A path of this console to come back to: relative, one leading slash.
fn local_path(p: &str) -> &str {
    if p.starts_with('/') && !p.starts_with("//") && !p.contains('\\') {
        p
    } else {
        "/"
    }
}

/// The headers every answer of the console carries.
fn secure(resp: &mut Response<Body>) {
    let h = resp.headers_mut();
    let set = |h: &mut http::HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'",
    );
    set(h, "x-frame-options", "DENY");
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "no-referrer");
    set(h, "cross-origin-opener-policy", "same-origin");
    set(h, "strict-transport-security", "max-age=31536000");
    set(h, "cache-control", "no-store");
}

impl WebConsole {
    pub fn new(api: Arc<Api>, oidc: Oidc, idle: std::time::Duration, clock: Clock) -> WebConsole {
        WebConsole {
            api,
            app: console_app(),
            sessions: Sessions::new(idle),
            oidc,
            clock,
        }
    }

    /// Entry point for every request on the console listener.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, _peer: Arc<Peer>) -> Response<Body> {
        let mut resp = self.serve(req).await;
        secure(&mut resp);
        resp
    }

    async fn serve(&self, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let lang = cookie(&parts.headers, LANG_COOKIE)
            .and_then(Lang::from_code)
            .unwrap_or_default();
        let path = parts.uri.path().to_owned();
        match (&parts.method, path.as_str()) {
            (&Method::GET, "/static/console.css") => {
                return with_type(
                    StatusCode::OK,
                    "text/css; charset=utf-8",
                    Bytes::from_static(CONSOLE_CSS.as_bytes()),
                )
            }
            (&Method::GET, "/static/letter.css") => {
                return with_type(
                    StatusCode::OK,
                    "text/css; charset=utf-8",
                    Bytes::from_static(LETTER_CSS.as_bytes()),
                )
            }
            // The API's description, as the ops listener serves it.
            (&Method::GET, "/openapi.yaml") => return crate::api::ops::openapi(),
            // Browsers ask for it on every site; nothing to show.
            (&Method::GET, "/favicon.ico") => {
                return with_type(StatusCode::NO_CONTENT, "image/x-icon", Bytes::new())
            }
            (&Method::GET, "/login") => return self.begin_sign_in(lang).await,
            (&Method::GET, "/auth/callback") => return self.finish_sign_in(&parts, lang).await,
            (&Method::GET, p) if p.starts_with("/lang/") => {
                let to = Lang::from_code(&p["/lang/".len()..]).unwrap_or_default();
                let back = query_value(parts.uri.query(), "back").unwrap_or_default();
                let mut resp = redirect(local_path(&back));
                let c = format!(
                    "{LANG_COOKIE}={}; Path=/; Secure; SameSite=Strict; Max-Age=31536000",
                    to.code()
                );
                if let Ok(v) = HeaderValue::from_str(&c) {
                    resp.headers_mut().append(header::SET_COOKIE, v);
                }
                return resp;
            }
            _ => {}
        }
        let found = cookie(&parts.headers, SESSION_COOKIE)
            .map(|id| self.sessions.touch(id))
            .unwrap_or(Found::None);
        let (session_id, session) = match found {
            Found::Active(id, s) => (id, s),
            Found::Expired => {
                let c = Chrome::anonymous(lang, &path).error(match lang {
                    Lang::Vi => "Phiên làm việc đã hết hạn do không hoạt động. Vui lòng đăng nhập lại.",
                    Lang::En => "Your session ended after a while without use. Please sign in again.",
                });
                return self.landing(StatusCode::UNAUTHORIZED, c);
            }
            Found::None => {
                let status = if path == "/" {
                    StatusCode::OK
                } else {
                    StatusCode::UNAUTHORIZED
                };
                return self.landing(status, Chrome::anonymous(lang, "/"));
            }
        };
        let visit = Visit {
            session,
            lang,
            path: path.clone(),
        };
        if parts.method == Method::POST {
            let bytes = match crate::server::read_body(
                Request::from_parts(parts.clone(), body),
                MAX_FORM_BYTES,
            )
            .await
            {
                Ok(b) => b,
                Err(_) => {
                    return self.message(
                        &visit,
                        StatusCode::PAYLOAD_TOO_LARGE,
                        visit.chrome().t("Biểu mẫu quá lớn", "The form is too large"),
                        None,
                    )
                }
            };
            let form = Form::parse(&bytes);
            if !same_secret(form.get("csrf"), &visit.session.csrf) {
                return self.message(
                    &visit,
                    StatusCode::FORBIDDEN,
                    visit.chrome().t(
                        "Biểu mẫu không hợp lệ (thiếu mã chống giả mạo). Hãy mở lại trang và thử lại.",
                        "The form is not valid (its anti-forgery token is missing or stale). Open the page again and retry.",
                    ),
                    None,
                );
            }
            if path == "/logout" {
                self.sessions.close(&session_id);
                let _ = self
                    .api
                    .console_event(&self.app, &visit.session.official, "sign-out", Ok(json!({})))
                    .await;
                let mut resp = redirect("/");
                if let Ok(v) = HeaderValue::from_str(&set_cookie(SESSION_COOKIE, "", "/", "Strict", Some(0)))
                {
                    resp.headers_mut().append(header::SET_COOKIE, v);
                }
                return resp;
            }
            return views::post(self, &visit, &path, &form).await;
        }
        if parts.method != Method::GET {
            return self.message(&visit, StatusCode::METHOD_NOT_ALLOWED, "GET, POST", None);
        }
        views::get(self, &visit, &path, parts.uri.query()).await
    }

    fn landing(&self, status: StatusCode, c: Chrome) -> Response<Body> {
        html(
            status,
            &Landing {
                title: c.t("Đăng nhập", "Sign in").to_owned(),
                c,
            },
        )
    }

    /// A page that says one thing (a refusal, a failure).
    async fn begin_sign_in(&self, lang: Lang) -> Response<Body> {
        match self.oidc.begin().await {
            Ok((attempt, url)) => {
                let id = self.sessions.begin(attempt);
                let mut resp = redirect(&url);
                if let Ok(v) =
                    HeaderValue::from_str(&set_cookie(LOGIN_COOKIE, &id, "/auth", "Lax", Some(600)))
                {
                    resp.headers_mut().append(header::SET_COOKIE, v);
                }
                resp
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "console sign-in: the identity provider is not reachable");
                let c = Chrome::anonymous(lang, "/").error(match lang {
                    Lang::Vi => "Không kết nối được nhà cung cấp định danh. Vui lòng thử lại sau.",
                    Lang::En => "The identity provider cannot be reached. Please try again later.",
                });
                self.landing(StatusCode::BAD_GATEWAY, c)
            }
        }
    }

    async fn finish_sign_in(&self, parts: &http::request::Parts, lang: Lang) -> Response<Body> {
        let q = parts.uri.query().unwrap_or("");
        let param = |name: &str| query_value(Some(q), name);
        let attempt = cookie(&parts.headers, LOGIN_COOKIE).and_then(|id| self.sessions.take_attempt(id));
        let refuse = |status: StatusCode, vi: &str, en: &str| {
            let text = match lang {
                Lang::Vi => vi,
                Lang::En => en,
            };
            self.landing(status, Chrome::anonymous(lang, "/").error(text))
        };
        let (Some(attempt), Some(code), Some(state)) = (attempt, param("code"), param("state")) else {
            return refuse(
                StatusCode::BAD_REQUEST,
                "Phiên đăng nhập không hợp lệ hoặc đã hết hạn. Vui lòng đăng nhập lại.",
                "This sign-in is not valid or has expired. Please sign in again.",
            );
        };
        if !same_secret(&state, &attempt.state) {
            return refuse(
                StatusCode::BAD_REQUEST,
                "Phiên đăng nhập không khớp. Vui lòng đăng nhập lại.",
                "This sign-in does not match the one started here. Please sign in again.",
            );
        }
        let id = match self.oidc.finish(&attempt, &code).await {
            Ok(id) => id,
            Err(error) => {
                tracing::warn!(%error, "console sign-in refused");
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "Nhà cung cấp định danh không xác nhận được lần đăng nhập này.",
                    "The identity provider did not confirm this sign-in.",
                );
            }
        };
        let official = Official {
            id: id.sub,
            name: id.name.unwrap_or_default(),
            roles: id.roles,
        };
        let allowed = official
            .roles
            .iter()
            .any(|r| r == POLICY_ADMIN_ROLE || r == AUDITOR_ROLE);
        if !allowed {
            let _ = self
                .api
                .console_event(
                    &self.app,
                    &official,
                    "sign-in",
                    Err(crate::api::problem::ApiError::Forbidden(
                        "the console is for policy admins and auditors".into(),
                    )),
                )
                .await;
            return refuse(
                StatusCode::FORBIDDEN,
                "Bảng điều khiển chỉ dành cho quản trị viên chính sách và kiểm tra viên.",
                "The console is for policy admins and auditors only.",
            );
        }
        let recorded = self
            .api
            .console_event(
                &self.app,
                &official,
                "sign-in",
                Ok(json!({ "roles": official.roles })),
            )
            .await;
        if !recorded.status().is_success() {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "Không ghi được nhật ký nên chưa thể đăng nhập. Vui lòng thử lại sau.",
                "The sign-in could not be recorded in the audit log, so it is refused. Please try again later.",
            );
        }
        let (sid, _) = self.sessions.open(official);
        // A page, not a redirect: the Strict session cookie is then sent
        // with the next request, which this site itself starts.
        let c = Chrome::anonymous(lang, "/");
        let mut resp = html(
            StatusCode::OK,
            &SignedIn {
                title: c.t("Đã đăng nhập", "Signed in").to_owned(),
                c,
            },
        );
        for cookie in [
            set_cookie(SESSION_COOKIE, &sid, "/", "Strict", None),
            set_cookie(LOGIN_COOKIE, "", "/auth", "Lax", Some(0)),
        ] {
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
        }
        resp
    }
}

#[derive(Template)]
#[template(
    source = r#"{% extends "console/base.html" %}{% block head %}<meta http-equiv="refresh" content="0;url=/">{% endblock %}
{% block content %}<h1>{{ title }}</h1><p><a id="continue" href="/">{{ c.t("Tiếp tục", "Continue") }}</a></p>{% endblock %}"#,
    ext = "html"
)]
struct SignedIn {
    title: String,
    c: Chrome,
}
