//! What every page of the console is made with: the console itself and its
//! calls into the admin and audit surfaces, the page frame ([`Chrome`]: who
//! is signed in, the language, the CSRF token), a signed-in request
//! ([`Visit`]), POSTed forms, and the answers (pages, redirects).

use std::sync::Arc;

use askama::Template;
use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::Response;
use serde_json::Value;

use crate::api::request::{AUDITOR_ROLE, POLICY_ADMIN_ROLE};
use crate::api::Api;
use crate::clock::Clock;
use crate::console::oidc::Oidc;
use crate::console::session::{Lang, Session, Sessions};
use crate::policy::App;
use crate::server::Body;

/// The app id the console's actions are recorded under.
pub const CONSOLE_APP_ID: &str = "console";

/// The console's handler.
pub struct WebConsole {
    pub api: Arc<Api>,
    /// The app its actions are recorded under.
    pub app: App,
    pub sessions: Sessions,
    pub oidc: Oidc,
    pub clock: Clock,
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

    pub fn anonymous(lang: Lang, path: &str) -> Chrome {
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

    pub fn error(mut self, text: impl Into<String>) -> Chrome {
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

impl Problem {
    /// The problem document `body` of an answer with `status`.
    pub fn of(status: StatusCode, body: &[u8]) -> Problem {
        let doc: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        Problem {
            status,
            detail: doc["detail"]
                .as_str()
                .or(doc["title"].as_str())
                .unwrap_or("the request failed")
                .to_owned(),
        }
    }
}

/// An answer's status and whole body.
pub async fn whole(resp: Response<Body>) -> (StatusCode, Bytes) {
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (status, bytes)
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
pub struct Form(pub Vec<(String, String)>);

impl Form {
    pub fn parse(bytes: &[u8]) -> Form {
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

pub fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// The decoded value of `name` in a URL query.
pub fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A `303 See Other` to `to` (a path of the console).
pub fn redirect(to: &str) -> Response<Body> {
    let mut resp = with_type(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", Bytes::new());
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

impl WebConsole {
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
        let (status, bytes) = whole(resp).await;
        if status.is_success() {
            Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
        } else {
            Err(Problem::of(status, &bytes))
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
