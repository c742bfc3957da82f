//! Server-side sessions of the console: a random id in an `HttpOnly;
//! Secure; SameSite=Strict` cookie, a fresh id at every sign-in (no
//! fixation), an idle timeout, a CSRF token per session, and the sign-ins
//! under way (state, nonce, PKCE verifier) kept here, never in the browser.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::oidc::Attempt;
use crate::api::Official;
use crate::auth::secret::random_secret;

/// The session cookie and the sign-in cookie.
pub const SESSION_COOKIE: &str = "popgate_session";
pub const LOGIN_COOKIE: &str = "popgate_login";
pub const LANG_COOKIE: &str = "popgate_lang";

/// How long a sign-in may take at the provider.
const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Bounds on what unauthenticated visitors can make the console hold.
const MAX_PENDING: usize = 10_000;
const MAX_SESSIONS: usize = 10_000;

/// The language of the pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    #[default]
    Vi,
    En,
}

impl Lang {
    pub fn from_code(code: &str) -> Option<Lang> {
        match code {
            "vi" => Some(Lang::Vi),
            "en" => Some(Lang::En),
            _ => None,
        }
    }
    pub fn code(self) -> &'static str {
        match self {
            Lang::Vi => "vi",
            Lang::En => "en",
        }
    }
}

/// One signed-in official.
#[derive(Debug, Clone)]
pub struct Session {
    pub official: Official,
    pub csrf: String,
    last_seen: Instant,
}

/// Every session and sign-in of this console.
pub struct Sessions {
    idle: Duration,
    active: Mutex<HashMap<String, Session>>,
    pending: Mutex<HashMap<String, (Attempt, Instant)>>,
}

/// What a session lookup found.
#[derive(Debug)]
pub enum Found {
    Active(String, Session),
    Expired,
    None,
}

impl Sessions {
    pub fn new(idle: Duration) -> Sessions {
        Sessions {
            idle,
            active: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps a sign-in under way; the returned id goes into the sign-in cookie.
    pub fn begin(&self, attempt: Attempt) -> String {
        let id = random_secret();
        if let Ok(mut p) = self.pending.lock() {
            p.retain(|_, (_, t)| t.elapsed() < LOGIN_TTL);
            if p.len() >= MAX_PENDING {
                p.clear();
            }
            p.insert(id.clone(), (attempt, Instant::now()));
        }
        id
    }

    /// Takes the sign-in of the cookie `id` (once).
    pub fn take_attempt(&self, id: &str) -> Option<Attempt> {
        let (attempt, at) = self.pending.lock().ok()?.remove(id)?;
        (at.elapsed() < LOGIN_TTL).then_some(attempt)
    }

    /// A new session for `official`, under a new id: whatever id the
    /// browser had before is never promoted.
    pub fn open(&self, official: Official) -> (String, Session) {
        let id = random_secret();
        let session = Session {
            official,
            csrf: random_secret(),
            last_seen: Instant::now(),
        };
        if let Ok(mut a) = self.active.lock() {
            let idle = self.idle;
            a.retain(|_, s| s.last_seen.elapsed() < idle);
            if a.len() >= MAX_SESSIONS {
                // Oldest first would be fairer; a full table means attack.
                a.clear();
            }
            a.insert(id.clone(), session.clone());
        }
        (id, session)
    }

    /// The session of `id`, its idle clock restarted; an idle one is over.
    pub fn touch(&self, id: &str) -> Found {
        let Ok(mut a) = self.active.lock() else {
            return Found::None;
        };
        match a.get_mut(id) {
            None => Found::None,
            Some(s) if s.last_seen.elapsed() >= self.idle => {
                a.remove(id);
                Found::Expired
            }
            Some(s) => {
                s.last_seen = Instant::now();
                Found::Active(id.to_owned(), s.clone())
            }
        }
    }

    pub fn close(&self, id: &str) {
        if let Ok(mut a) = self.active.lock() {
            a.remove(id);
        }
    }
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: always `Secure; HttpOnly`; `same_site` Strict for
/// the session, Lax for the sign-in (it must come back from the provider).
pub fn set_cookie(name: &str, value: &str, path: &str, same_site: &str, max_age: Option<u64>) -> String {
    let age = max_age.map(|s| format!("; Max-Age={s}")).unwrap_or_default();
    format!("{name}={value}; Path={path}; Secure; HttpOnly; SameSite={same_site}{age}")
}

/// Equal, in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    crate::auth::secret::constant_time_eq(a.as_bytes(), b.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn official() -> Official {
        Official {
            id: "qtv-01".into(),
            name: "Quản trị viên".into(),
            roles: vec!["policy-admin".into()],
        }
    }

    #[test]
    fn an_idle_session_is_over_and_a_sign_in_gets_a_new_id() {
        let sessions = Sessions::new(Duration::from_millis(80));
        let (first, _) = sessions.open(official());
        let (second, _) = sessions.open(official());
        assert_ne!(first, second, "every sign-in gets a fresh id");
        assert!(matches!(sessions.touch(&first), Found::Active(..)));
        std::thread::sleep(Duration::from_millis(120));
        assert!(matches!(sessions.touch(&first), Found::Expired));
        assert!(matches!(sessions.touch(&first), Found::None), "gone once expired");
        assert!(matches!(sessions.touch("made-up"), Found::None));
    }

    #[test]
    fn a_sign_in_attempt_is_taken_once() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let id = sessions.begin(Attempt {
            state: "s".into(),
            nonce: "n".into(),
            verifier: "v".into(),
        });
        assert_eq!(sessions.take_attempt(&id).map(|a| a.state), Some("s".to_owned()));
        assert!(sessions.take_attempt(&id).is_none());
    }

    #[test]
    fn cookies_are_read_by_name_and_set_secure() {
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::COOKIE,
            "a=1; popgate_session=abc".parse().expect("header"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "b"), None);
        let set = set_cookie(SESSION_COOKIE, "x", "/", "Strict", None);
        assert!(set.contains("Secure") && set.contains("HttpOnly") && set.contains("SameSite=Strict"));
    }
}
