//! The web console at `/ui/`: a read-only view of the fleet for people,
//! served by the coordinator itself.
//!
//! - **What it is.** Four static files built into the binary
//!   ([`assets`]): a sign-in page, an app shell, one script and one style
//!   sheet. Plain HTML, CSS and a little JavaScript, with no build step and
//!   nothing fetched from elsewhere: coordinators often have no internet,
//!   and the binary and its build stay as they are.
//! - **What it reads.** The admin API's JSON (`/v1/status`,
//!   `/v1/clusters`, `/v1/nodes`, a node, its events and names,
//!   `/v1/dns/status`, `/v1/fleet/history`), polled every 2 s. Short
//!   polling, not server-sent events: a poll is an ordinary request on a
//!   kept-alive connection, so it passes the API's idle and per-source
//!   connection limits like any client, works through any proxy, and a
//!   console left open costs nothing between polls.
//! - **Who may see it.** Sign-in takes the admin token or the viewer token
//!   (`admin viewer-token`). Either opens a session that only reads: the
//!   cookie never authorises a write, so a page elsewhere cannot make a
//!   signed-in browser change anything. The session id is 256 random bits
//!   in an `HttpOnly; Secure; SameSite=Strict` cookie; only its digest is
//!   kept, in memory, for [`SESSION_LIFETIME`]. A restart signs everyone
//!   out; a new admin or viewer token ends the sessions the old one opened.
//! - **What the browser may do.** Every `/ui/` answer carries a strict
//!   Content-Security-Policy ([`CSP`]): scripts, styles and requests from
//!   the coordinator's own origin only, nothing inline, no frames.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use muster_proto::status::Role;
use serde::Deserialize;

use super::guards::token_role;
use super::AppState;
use crate::secrets::{digest_secret, SecretDigest};

mod assets;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "muster_session";
/// How long a session lasts from sign-in.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; past it the oldest goes.
pub const MAX_SESSIONS: usize = 1024;

/// The Content-Security-Policy of every console answer.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

/// The console's routes, under `/ui`.
pub(super) fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/assets/{file}", get(asset))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(state)
}

/// Who is signed in, by the digest of their session id.
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<SecretDigest, Session>>,
}

#[derive(Debug, Clone, Copy)]
struct Session {
    /// The token it was opened with (the session itself only reads).
    opened_by: Role,
    /// When it ends.
    until: Instant,
}

impl Sessions {
    /// Opens a session for a user signed in with `opened_by`'s token;
    /// returns its id, the cookie's value.
    pub fn open(&self, opened_by: Role) -> String {
        let id = hex::encode(rand::random::<[u8; 32]>());
        let now = Instant::now();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, s| s.until > now);
        if open.len() >= MAX_SESSIONS {
            if let Some(oldest) = open.iter().min_by_key(|(_, s)| s.until).map(|(k, _)| *k) {
                open.remove(&oldest);
            }
        }
        open.insert(
            digest_secret(&id),
            Session {
                opened_by,
                until: now + SESSION_LIFETIME,
            },
        );
        id
    }

    /// The role of the token that opened the session in `headers`' cookie,
    /// if it is open.
    pub fn role(&self, headers: &HeaderMap) -> Option<Role> {
        let id = session_id(headers)?;
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&digest_secret(id))
            .filter(|s| s.until > Instant::now())
            .map(|s| s.opened_by)
    }

    /// Ends the session in `headers`' cookie.
    pub fn close(&self, headers: &HeaderMap) {
        if let Some(id) = session_id(headers) {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            open.remove(&digest_secret(id));
        }
    }

    /// Ends every session opened with `role`'s token (it was replaced).
    pub fn close_all(&self, role: Role) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, s| s.opened_by != role);
    }
}

/// The session id in the `Cookie` headers, if there is one.
fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
}

/// `Set-Cookie` for session `id`, or, with none, one that ends it.
fn session_cookie(id: Option<&str>) -> HeaderValue {
    let cookie = match id {
        Some(id) => format!(
            "{SESSION_COOKIE}={id}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
            SESSION_LIFETIME.as_secs()
        ),
        None => format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict"),
    };
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Every console answer: the CSP, no sniffing, no framing, no referrer.
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// An HTML page.
fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// `GET /ui/`: the app, for a signed-in user; the sign-in page otherwise.
async fn index(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if state.sessions.role(&headers).is_none() {
        return Redirect::to("/ui/login").into_response();
    }
    html(StatusCode::OK, assets::INDEX_HTML.to_owned())
}

/// `GET /ui/login`: the sign-in page, or the app for a signed-in user.
async fn login_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if state.sessions.role(&headers).is_some() {
        return Redirect::to("/ui/").into_response();
    }
    html(StatusCode::OK, assets::login_page(None))
}

/// The sign-in form.
#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

/// `POST /ui/login`: a token in, a session cookie out; a wrong token gets
/// the page again with why, and no cookie.
async fn login(
    State(state): State<AppState>,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return html(
            StatusCode::BAD_REQUEST,
            assets::login_page(Some("The form was not understood; send the token field.")),
        );
    };
    let Some(role) = token_role(&state, form.token.trim()) else {
        tracing::warn!(
            "console sign-in refused: the token is neither the admin nor the viewer token"
        );
        return html(
            StatusCode::UNAUTHORIZED,
            assets::login_page(Some(
                "That token is not valid here. Use the admin token or a viewer token (muster-coordinator admin viewer-token).",
            )),
        );
    };
    let id = state.sessions.open(role);
    let mut response = Redirect::to("/ui/").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session_cookie(Some(&id)));
    response
}

/// `POST /ui/logout`: ends the session.
async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    state.sessions.close(&headers);
    let mut response = Redirect::to("/ui/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session_cookie(None));
    response
}

/// `GET /ui/assets/{file}`: the script and the style sheet.
async fn asset(Path(file): Path<String>) -> Response {
    match assets::asset(&file) {
        Some((content_type, body)) => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
        None => super::ApiError::new(muster_proto::ErrorCode::NotFound, "no such console file")
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(value).unwrap());
        headers
    }

    /// A session opens, is found by its cookie among others, and closes;
    /// a made-up id is no session.
    #[test]
    fn sessions_open_and_close() {
        let sessions = Sessions::default();
        let id = sessions.open(Role::Viewer);
        let headers = with_cookie(&format!("theme=dark; {SESSION_COOKIE}={id}; x=y"));
        assert_eq!(sessions.role(&headers), Some(Role::Viewer));
        assert_eq!(
            sessions.role(&with_cookie(&format!(
                "{SESSION_COOKIE}={}",
                "0".repeat(64)
            ))),
            None
        );
        sessions.close(&headers);
        assert_eq!(sessions.role(&headers), None);
    }

    /// A new token ends the sessions its predecessor opened, and only
    /// those.
    #[test]
    fn a_new_token_ends_its_sessions() {
        let sessions = Sessions::default();
        let admin = with_cookie(&format!("{SESSION_COOKIE}={}", sessions.open(Role::Admin)));
        let viewer = with_cookie(&format!("{SESSION_COOKIE}={}", sessions.open(Role::Viewer)));
        sessions.close_all(Role::Viewer);
        assert_eq!(sessions.role(&viewer), None);
        assert_eq!(sessions.role(&admin), Some(Role::Admin));
    }

    /// The cookie is HttpOnly, Secure and SameSite=Strict, and ending it
    /// says so too.
    #[test]
    fn the_cookie_is_strict() {
        for id in [Some("abc"), None] {
            let cookie = session_cookie(id);
            let cookie = cookie.to_str().unwrap();
            for part in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
                assert!(cookie.contains(part), "{cookie}");
            }
        }
    }

    /// Past the cap, the oldest session goes.
    #[test]
    fn sessions_are_capped() {
        let sessions = Sessions::default();
        let first = with_cookie(&format!("{SESSION_COOKIE}={}", sessions.open(Role::Viewer)));
        for _ in 0..MAX_SESSIONS {
            sessions.open(Role::Viewer);
        }
        assert_eq!(sessions.role(&first), None);
        assert_eq!(sessions.open.lock().unwrap().len(), MAX_SESSIONS);
    }
}
