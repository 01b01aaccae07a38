//! The web console: server-rendered HTML at `/ui/` from the one binary,
//! with its stylesheet and a small script embedded (no CDN, no build step).
//!
//! Sign-in takes a user's API token and opens a session: an HttpOnly,
//! SameSite=Strict cookie naming a random session id, kept in memory for
//! [`SESSION_LIFE`]. The token is checked again on every request, so a
//! revoked token or removed user loses the console at once. Every form that
//! changes something carries the session's CSRF token and is refused
//! without it. Pages call the application layer as the signed-in user, so
//! the server enforces roles exactly as for the API; a viewer is shown no
//! action buttons, and is refused if it posts anyway.
//!
//! Sessions live in this process: behind several servers, send a browser
//! to the same one (sticky sessions), or sign in again.

mod pages;
mod plots;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use convoy_domain::Role;
use serde::Deserialize;

use crate::auth::{self, Caller, User};
use crate::state::AppState;

/// How long a sign-in lasts.
pub const SESSION_LIFE: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once; the oldest go first.
const MAX_SESSIONS: usize = 10_000;
/// Most sessions of one user; that user's oldest goes first (so no user
/// can push the others' sessions out).
const MAX_USER_SESSIONS: usize = 20;
const COOKIE: &str = "convoy_session";

const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(pages::deployments))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/deployments/{id}", get(pages::deployment))
        .route("/ui/deployments/{id}/live", get(pages::deployment_live))
        .route("/ui/deployments/{id}/stream", get(pages::deployment_stream))
        .route("/ui/deployments/{id}/act", post(pages::act))
        .route("/ui/targets", get(pages::targets))
        .route("/ui/targets/{id}", get(pages::target))
        .route("/ui/releases", get(pages::releases))
        .route("/ui/releases/{app}/{version}", get(pages::release))
        .route("/ui/approvals", get(pages::approvals))
        .route("/ui/audit", get(pages::audit))
        .route("/ui/assets/console.css", get(|| async { asset("text/css; charset=utf-8", CSS) }))
        .route("/ui/assets/console.js", get(|| async { asset("text/javascript; charset=utf-8", JS) }))
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

/// A signed-in browser.
struct Session {
    user: String,
    token: String,
    csrf: String,
    expires: Instant,
}

#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Session>>);

impl Sessions {
    fn open(&self, user: &str, token: String) -> (String, String) {
        let id = convoy_store::new_secret();
        let csrf = convoy_store::new_secret();
        let mut m = self.0.lock().expect("sessions lock");
        let now = Instant::now();
        m.retain(|_, s| s.expires > now);
        let oldest_of = |m: &HashMap<String, Session>, mine: bool| {
            m.iter().filter(|(_, s)| !mine || s.user == user).min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone())
        };
        if m.values().filter(|s| s.user == user).count() >= MAX_USER_SESSIONS {
            if let Some(k) = oldest_of(&m, true) {
                m.remove(&k);
            }
        }
        if m.len() >= MAX_SESSIONS {
            if let Some(k) = oldest_of(&m, false) {
                m.remove(&k);
            }
        }
        let session = Session { user: user.to_owned(), token, csrf: csrf.clone(), expires: now + SESSION_LIFE };
        m.insert(id.clone(), session);
        (id, csrf)
    }

    fn get(&self, id: &str) -> Option<(String, String)> {
        let m = self.0.lock().expect("sessions lock");
        m.get(id).filter(|s| s.expires > Instant::now()).map(|s| (s.token.clone(), s.csrf.clone()))
    }

    fn close(&self, id: &str) {
        self.0.lock().expect("sessions lock").remove(id);
    }
}

/// The signed-in operator of a request.
pub struct Viewer {
    pub user: User,
    pub csrf: String,
    /// The session's id (a live stream looks it up again every tick).
    pub session: String,
}

impl Viewer {
    pub fn may(&self, role: Role) -> bool {
        self.user.role >= role
    }
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|c| {
        c.split(';')
            .map(str::trim)
            .find_map(|kv| kv.strip_prefix(COOKIE).and_then(|r| r.strip_prefix('=')))
            .map(str::to_owned)
    })
}

/// The session's operator, or a redirect to sign in.
pub async fn viewer(st: &AppState, headers: &HeaderMap) -> Result<Viewer, Response> {
    let to_login = || Redirect::to("/ui/login").into_response();
    let Some(id) = session_id(headers) else { return Err(to_login()) };
    match session_user(st, &id).await {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(to_login()),
        Err(e) => Err(error_page(e.status, &e.message)),
    }
}

/// The operator a session stands for now: `None` once it was closed, ran
/// out, or its token was revoked or its user removed (the session is then
/// closed). A database that cannot answer is an error, not a sign-out.
pub async fn session_user(st: &AppState, id: &str) -> Result<Option<Viewer>, crate::error::ApiError> {
    let Some((token, csrf)) = st.sessions.get(id) else { return Ok(None) };
    match auth::authenticate_token(st, &token).await {
        Ok(Caller::Operator(user)) => Ok(Some(Viewer { user, csrf, session: id.to_owned() })),
        Ok(_) => {
            st.sessions.close(id);
            Ok(None)
        }
        Err(e) if e.status == StatusCode::UNAUTHORIZED => {
            st.sessions.close(id);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A POST must come from the console's own pages: a browser's
/// `Sec-Fetch-Site` (when sent) must not say cross-site, and an `Origin`
/// (when sent) must name this host. Sign-in included, so no other site can
/// sign a browser in as someone else.
pub fn foreign_post(headers: &HeaderMap) -> Option<Response> {
    let refuse = || Some(error_page(StatusCode::FORBIDDEN, "This form was sent from another site; it is refused."));
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return refuse();
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let origin_host = origin.split_once("://").map_or("", |(_, h)| h);
        if origin_host != host {
            return refuse();
        }
    }
    None
}

/// A state-changing form's CSRF token must be the session's: `Some`
/// refusal when it is not.
pub fn csrf_refusal(v: &Viewer, given: &str) -> Option<Response> {
    let (a, b) = (v.csrf.as_bytes(), given.as_bytes());
    let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    (!same).then(|| {
        error_page(
            StatusCode::FORBIDDEN,
            "This form is stale or did not come from the console (missing or wrong CSRF token). Reload the page and try again.",
        )
    })
}

/// HTML-escapes text for element content and quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A whole page: header with navigation, the signed-in user and sign-out,
/// and `body` in `<main>`.
pub fn page(v: Option<&Viewer>, active: &str, title: &str, body: &str) -> Response {
    let nav = match v {
        None => String::new(),
        Some(v) => {
            let links = [
                ("deployments", "/ui/", "Deployments"),
                ("approvals", "/ui/approvals", "Approvals"),
                ("targets", "/ui/targets", "Fleet"),
                ("releases", "/ui/releases", "Releases"),
                ("audit", "/ui/audit", "Audit log"),
            ];
            let items: String = links
                .iter()
                .map(|(key, href, label)| {
                    let current = if *key == active { " aria-current=\"page\"" } else { "" };
                    format!("<li><a href=\"{href}\"{current}>{label}</a></li>")
                })
                .collect();
            format!(
                "<nav aria-label=\"Main\"><ul>{items}</ul></nav>\
                 <form class=\"signout\" method=\"post\" action=\"/ui/logout\">\
                 <span class=\"who\">{} <span class=\"role\">({})</span></span>\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <button type=\"submit\">Sign out</button></form>",
                esc(&v.user.name),
                v.user.role,
                esc(&v.csrf)
            )
        }
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · convoy</title><link rel=\"stylesheet\" href=\"/ui/assets/console.css\">\
         <script src=\"/ui/assets/console.js\" defer></script></head><body>\
         <a class=\"skip\" href=\"#main\">Skip to content</a>\
         <header><a class=\"brand\" href=\"/ui/\">convoy</a>{nav}</header>\
         <main id=\"main\" tabindex=\"-1\">{body}</main></body></html>",
        esc(title)
    );
    let mut resp = Html(html).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // `same-origin`, not `no-referrer`: with that, browsers send `Origin: null`
    // on the console's own form posts, which `foreign_post` refuses
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub fn error_page(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<h1>{}</h1><p class=\"error\" role=\"alert\">{}</p><p><a href=\"/ui/\">Back to deployments</a></p>",
        status.canonical_reason().unwrap_or("Error"),
        esc(message)
    );
    let mut r = page(None, "", "Error", &body);
    *r.status_mut() = status;
    r
}

async fn login_page(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if viewer(&st, &headers).await.is_ok() {
        return Redirect::to("/ui/").into_response();
    }
    login_form(None)
}

fn login_form(error: Option<&str>) -> Response {
    let err = error
        .map(|e| format!("<p class=\"error\" role=\"alert\" id=\"login-error\">{}</p>", esc(e)))
        .unwrap_or_default();
    let body = format!(
        "<h1>Sign in</h1>{err}<form method=\"post\" action=\"/ui/login\" class=\"login\">\
         <label for=\"token\">API token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required \
         aria-describedby=\"token-help\"{}>\
         <p id=\"token-help\" class=\"help\">Your convoy API token (`convoy users add` prints it; an admin rotates it with \
         `convoy users token NAME --rotate`). It stays on the server; the browser keeps only a session cookie.</p>\
         <button type=\"submit\">Sign in</button></form>",
        if error.is_some() { " aria-invalid=\"true\"" } else { "" }
    );
    let mut r = page(None, "", "Sign in", &body);
    if error.is_some() {
        *r.status_mut() = StatusCode::UNAUTHORIZED;
    }
    r
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(st): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if let Some(r) = foreign_post(&headers) {
        return r;
    }
    let Ok(Form(f)) = form else { return login_form(Some("Give your API token.")) };
    let token = f.token.trim().to_owned();
    match auth::authenticate_token(&st, &token).await {
        Ok(Caller::Operator(user)) => {
            let (id, _) = st.sessions.open(&user.name, token);
            tracing::info!(user = %user.name, "console sign-in");
            let cookie = format!(
                "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
                SESSION_LIFE.as_secs(),
                if st.tls { "; Secure" } else { "" }
            );
            let mut r = Redirect::to("/ui/").into_response();
            r.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("cookie is ASCII"));
            r
        }
        Ok(_) => login_form(Some("That is an agent or enrolment token; sign in with a user's API token.")),
        Err(e) => login_form(Some(&format!("Not signed in: {}", e.message))),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(st): State<AppState>, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    if let Some(r) = foreign_post(&headers) {
        return r;
    }
    let v = match viewer(&st, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Some(r) = csrf_refusal(&v, &f.csrf) {
        return r;
    }
    if let Some(id) = session_id(&headers) {
        st.sessions.close(&id);
    }
    let mut r = Redirect::to("/ui/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("convoy_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

/// Unix ms as `2026-11-28 21:55:04 UTC`.
pub fn time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map_or_else(|_| "-".into(), |t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
}

/// How long ago, roughly.
pub fn ago(ms: i64) -> String {
    let s = (crate::state::now_ms() - ms).max(0) / 1000;
    match s {
        0..=90 => format!("{s} s ago"),
        91..=5_399 => format!("{} min ago", s / 60),
        5_400..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn posts_from_another_site_are_refused() {
        let ok = |h: &[(&'static str, &'static str)]| super::foreign_post(&headers(h)).is_none();
        assert!(ok(&[("host", "convoy:7420")]), "no browser headers (a CLI, a test client)");
        assert!(ok(&[("host", "convoy:7420"), ("origin", "http://convoy:7420"), ("sec-fetch-site", "same-origin")]));
        assert!(!ok(&[("host", "convoy:7420"), ("origin", "https://evil.example")]));
        assert!(!ok(&[("host", "convoy:7420"), ("origin", "null")]));
        assert!(!ok(&[("host", "convoy:7420"), ("sec-fetch-site", "cross-site")]));
        assert!(!ok(&[("host", "convoy:7420"), ("sec-fetch-site", "same-site")]));
    }

    #[test]
    fn one_user_cannot_push_out_the_others_sessions() {
        let s = super::Sessions::default();
        let (alice, _) = s.open("alice", "token-a".into());
        let mallory: Vec<String> = (0..100).map(|_| s.open("mallory", "token-m".into()).0).collect();
        assert!(s.get(&alice).is_some(), "alice keeps her session");
        let kept = mallory.iter().filter(|id| s.get(id).is_some()).count();
        assert_eq!(kept, super::MAX_USER_SESSIONS, "mallory keeps only her newest sessions");
        assert!(s.get(mallory.last().unwrap()).is_some());
        s.close(&alice);
        assert!(s.get(&alice).is_none());
    }
}
