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
pub mod oidc;
pub mod session;
mod views;

use std::sync::Arc;

use askama::Template;
use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};

use crate::api::request::{AUDITOR_ROLE, POLICY_ADMIN_ROLE};
use crate::api::{Api, Official};
use crate::clock::Clock;
use crate::policy::App;
use crate::server::{Body, Peer};
use oidc::Oidc;
use session::{
    cookie, same_secret, set_cookie, Found, Lang, Session, Sessions, LANG_COOKIE, LOGIN_COOKIE,
    SESSION_COOKIE,
};

/// The app id the console's actions are recorded under.
pub const CONSOLE_APP_ID: &str = "console";

const CONSOLE_CSS: &str = include_str!("../../templates/console/console.css");
const LETTER_CSS: &str = include_str!("../../templates/letter.css");
/// The largest form the console reads (a policy file is the largest).
const MAX_FORM_BYTES: usize = 512 * 1024;

/// The console's handler.
pub struct WebConsole {
    api: Arc<Api>,
    app: App,
    sessions: Sessions,
    oidc: Oidc,
    clock: Clock,
}

/// A notice at the top of a page.
pub struct Notice {
    pub kind: &'static str,
    pub text: String,
}

/// What every page's frame shows: who is signed in, in which language,
/// the CSRF token for its forms.
pub struct Chrome {
    pub lang: Lang,
    pub user: Option<String>,
    pub role_label: String,
    pub csrf: String,
    pub is_admin: bool,
    pub is_auditor: bool,
    /// This page's path, for the language switch to come back to.
    pub path: String,
    pub notices: Vec<Notice>,
}

impl Chrome {
    /// The label in the page's language.
    pub fn t<'a>(&self, vi: &'a str, en: &'a str) -> &'a str {
        match self.lang {
            Lang::Vi => vi,
            Lang::En => en,
        }
    }

    fn anonymous(lang: Lang, path: &str) -> Chrome {
        Chrome {
            lang,
            user: None,
            role_label: String::new(),
            csrf: String::new(),
            is_admin: false,
            is_auditor: false,
            path: path.to_owned(),
            notices: Vec::new(),
        }
    }

    fn error(mut self, text: impl Into<String>) -> Chrome {
        self.notices.push(Notice {
            kind: "error",
            text: text.into(),
        });
        self
    }
}

/// A refusal or failure of the admin or audit code, as the page shows it.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub detail: String,
}

#[derive(Template)]
#[template(path = "console/landing.html")]
struct Landing {
    title: String,
    c: Chrome,
}

#[derive(Template)]
#[template(path = "console/message.html")]
struct Message {
    title: String,
    c: Chrome,
    text: String,
    detail: Option<String>,
}

/// The parsed fields of a POSTed form.
pub struct Form(Vec<(String, String)>);

impl Form {
    fn parse(bytes: &[u8]) -> Form {
        Form(
            form_urlencoded::parse(bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }
    /// The field's value, trimmed; "" when absent.
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.trim())
    }
    /// The field's value untrimmed (file text).
    pub fn raw(&self, name: &str) -> &str {
        self.0.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v)
    }
    /// The field, when not empty.
    pub fn opt(&self, name: &str) -> Option<String> {
        Some(self.get(name)).filter(|v| !v.is_empty()).map(str::to_owned)
    }
}

/// A signed-in request.
pub struct Visit {
    pub session: Session,
    pub lang: Lang,
    pub path: String,
}

impl Visit {
    pub fn chrome(&self) -> Chrome {
        let o = &self.session.official;
        let is_admin = o.roles.iter().any(|r| r == POLICY_ADMIN_ROLE);
        let is_auditor = o.roles.iter().any(|r| r == AUDITOR_ROLE);
        let role_label = match (is_admin, is_auditor, self.lang) {
            (true, _, Lang::Vi) => "Quản trị viên chính sách",
            (true, _, Lang::En) => "Policy admin",
            (_, true, Lang::Vi) => "Kiểm tra viên",
            (_, true, Lang::En) => "Auditor",
            (_, _, _) => "",
        };
        Chrome {
            lang: self.lang,
            user: Some(if o.name.is_empty() {
                o.id.clone()
            } else {
                o.name.clone()
            }),
            role_label: role_label.to_owned(),
            csrf: self.session.csrf.clone(),
            is_admin,
            is_auditor,
            path: self.path.clone(),
            notices: Vec::new(),
        }
    }
}

/// Renders a page with `status`.
pub fn html(status: StatusCode, page: &impl Template) -> Response<Body> {
    match page.render() {
        Ok(text) => with_type(status, "text/html; charset=utf-8", Bytes::from(text)),
        Err(error) => {
            tracing::error!(%error, "console page not rendered");
            with_type(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                Bytes::from_static(b"the page could not be rendered"),
            )
        }
    }
}

fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A `303 See Other` to `to` (a path of the console).
pub fn redirect(to: &str) -> Response<Body> {
    let mut resp = with_type(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", Bytes::new());
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
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
            // Browsers ask for it on every site; nothing to show.
            (&Method::GET, "/favicon.ico") => {
                return with_type(StatusCode::NO_CONTENT, "image/x-icon", Bytes::new())
            }
            (&Method::GET, "/login") => return self.begin_sign_in(lang).await,
            (&Method::GET, "/auth/callback") => return self.finish_sign_in(&parts, lang).await,
            (&Method::GET, p) if p.starts_with("/lang/") => {
                let to = Lang::from_code(&p["/lang/".len()..]).unwrap_or_default();
                let back = crate::api::request::query_param(parts.uri.query(), "back")
                    .map(|b| {
                        form_urlencoded::parse(format!("b={b}").as_bytes())
                            .next()
                            .map(|(_, v)| v.into_owned())
                            .unwrap_or_default()
                    })
                    .unwrap_or_default();
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
    pub fn message(
        &self,
        visit: &Visit,
        status: StatusCode,
        text: &str,
        detail: Option<String>,
    ) -> Response<Body> {
        let c = visit.chrome();
        html(
            status,
            &Message {
                title: if status.is_success() {
                    "popgate".to_owned()
                } else {
                    c.t("Không thực hiện được", "Not done").to_owned()
                },
                c,
                text: text.to_owned(),
                detail,
            },
        )
    }

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
        let param = |name: &str| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
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

    /// Calls the admin or audit surface as the visit's official; the JSON
    /// answer, or the problem's detail.
    pub async fn call(
        &self,
        visit: &Visit,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Problem> {
        let resp = self.raw_call(visit, method, path, "application/json", body).await;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            Ok(value)
        } else {
            Err(Problem {
                status,
                detail: value["detail"]
                    .as_str()
                    .or(value["title"].as_str())
                    .unwrap_or("the request failed")
                    .to_owned(),
            })
        }
    }

    /// As [`WebConsole::call`], the answer as it is (downloads, the letter).
    pub async fn raw_call(
        &self,
        visit: &Visit,
        method: Method,
        path: &str,
        accept: &str,
        body: Option<Value>,
    ) -> Response<Body> {
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        self.api
            .console_call(&self.app, &visit.session.official, method, path, accept, body)
            .await
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
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

/// The app the console acts as: no grants, no certificate of its own.
pub fn console_app() -> App {
    App {
        id: CONSOLE_APP_ID.to_owned(),
        name: "Bảng điều khiển web popgate".to_owned(),
        certificate_uri: String::new(),
        grants: Vec::new(),
    }
}

/// The style block of the citizen's letter, replaced by a link to the same
/// sheet served here (the console allows no inline style).
pub fn letter_for_console(html: &str) -> String {
    match (html.find("<style>"), html.find("</style>")) {
        (Some(a), Some(b)) if a < b => format!(
            "{}<link rel=\"stylesheet\" href=\"/static/letter.css\">{}",
            &html[..a],
            &html[b + "</style>".len()..]
        ),
        _ => html.to_owned(),
    }
}
