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
//!   kept, for [`SESSION_LIFETIME`]: in memory alone on a SQLite store (a
//!   restart signs everyone out), in the store when coordinators share it
//!   (any of them serves the session). A new admin or viewer token ends
//!   the sessions the old one opened: each records its token's generation.
//! - **What the browser may do.** Every `/ui/` answer carries a strict
//!   Content-Security-Policy ([`CSP`]): scripts, styles and requests from
//!   the coordinator's own origin only, nothing inline, no frames.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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
use crate::credentials::Credentials;
use crate::secrets::{digest_secret, SecretDigest};
use crate::store::sessions::StoredSession;
use crate::store::{now_ms, Store, StoreError};

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

/// Who is signed in. Alone on its store a coordinator keeps its sessions
/// in memory, by the digest of their id; beside others on a shared store
/// they are kept there ([`crate::store::sessions`]), so that a browser
/// signed in on one replica is signed in on all of them, and signed out of
/// all of them at once.
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<SecretDigest, Session>>,
    shared: Option<Arc<Store>>,
}

#[derive(Debug, Clone)]
struct Session {
    /// The token it was opened with (the session itself only reads).
    opened_by: Role,
    /// That token's generation then ([`Credentials::token_generation`]).
    generation: String,
    /// When it ends.
    until: Instant,
}

/// A role as the store names it.
fn role_name(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::Viewer => "viewer",
    }
}

impl Sessions {
    /// Sessions kept in `shared` (a store other coordinators share), or
    /// in memory.
    pub fn new(shared: Option<Arc<Store>>) -> Sessions {
        Sessions {
            open: Mutex::default(),
            shared,
        }
    }

    /// Opens a session for a user signed in with `opened_by`'s token of
    /// `generation`; returns its id, the cookie's value.
    pub fn open(&self, opened_by: Role, generation: String) -> Result<String, StoreError> {
        let id = hex::encode(rand::random::<[u8; 32]>());
        let digest = digest_secret(&id);
        if let Some(store) = &self.shared {
            let session = StoredSession {
                role: role_name(opened_by).to_owned(),
                generation,
            };
            let expires_at = now_ms() + SESSION_LIFETIME.as_millis() as i64;
            store.open_console_session(&hex::encode(digest), &session, expires_at)?;
            return Ok(id);
        }
        let now = Instant::now();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, s| s.until > now);
        if open.len() >= MAX_SESSIONS {
            if let Some(oldest) = open.iter().min_by_key(|(_, s)| s.until).map(|(k, _)| *k) {
                open.remove(&oldest);
            }
        }
        open.insert(
            digest,
            Session {
                opened_by,
                generation,
                until: now + SESSION_LIFETIME,
            },
        );
        Ok(id)
    }

    /// The role of the token that opened the session in `headers`' cookie,
    /// if the session is open and that token is still `credentials`' own:
    /// a new token ends the sessions its predecessor opened.
    pub fn role(
        &self,
        headers: &HeaderMap,
        credentials: &Credentials,
    ) -> Result<Option<Role>, StoreError> {
        let Some(id) = session_id(headers) else {
            return Ok(None);
        };
        let digest = digest_secret(id);
        let (role, generation) = match &self.shared {
            Some(store) => {
                let stored = store.console_session(&hex::encode(digest))?;
                let Some(stored) = stored else {
                    return Ok(None);
                };
                let role = [Role::Admin, Role::Viewer]
                    .into_iter()
                    .find(|r| role_name(*r) == stored.role);
                match role {
                    Some(role) => (role, stored.generation),
                    None => return Ok(None),
                }
            }
            None => {
                let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
                match open.get(&digest).filter(|s| s.until > Instant::now()) {
                    Some(session) => (session.opened_by, session.generation.clone()),
                    None => return Ok(None),
                }
            }
        };
        let current = credentials.token_generation(role);
        Ok((current.as_deref() == Some(generation.as_str())).then_some(role))
    }

    /// Ends the session in `headers`' cookie.
    pub fn close(&self, headers: &HeaderMap) -> Result<(), StoreError> {
        let Some(id) = session_id(headers) else {
            return Ok(());
        };
        let digest = digest_secret(id);
        match &self.shared {
            Some(store) => store.close_console_session(&hex::encode(digest)),
            None => {
                let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
                open.remove(&digest);
                Ok(())
            }
        }
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

/// The page shown when the store holding the sessions cannot be reached:
/// whether the user is signed in is not known, so neither page is right.
fn store_away(error: &StoreError) -> Response {
    if !error.is_unavailable() {
        tracing::error!(%error, "console sessions cannot be read");
    }
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        assets::login_page(Some(
            "The store cannot be reached now, so sessions cannot be checked. Try again in a moment.",
        )),
    )
}

/// `GET /ui/`: the app, for a signed-in user; the sign-in page otherwise.
async fn index(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match state.sessions.role(&headers, &state.credentials) {
        Ok(Some(_)) => html(StatusCode::OK, assets::INDEX_HTML.to_owned()),
        Ok(None) => Redirect::to("/ui/login").into_response(),
        Err(error) => store_away(&error),
    }
}

/// `GET /ui/login`: the sign-in page, or the app for a signed-in user.
async fn login_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match state.sessions.role(&headers, &state.credentials) {
        Ok(Some(_)) => Redirect::to("/ui/").into_response(),
        Ok(None) => html(StatusCode::OK, assets::login_page(None)),
        Err(error) => store_away(&error),
    }
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
    let generation = state.credentials.token_generation(role).unwrap_or_default();
    let id = match state.sessions.open(role, generation) {
        Ok(id) => id,
        Err(error) => return store_away(&error),
    };
    let mut response = Redirect::to("/ui/").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session_cookie(Some(&id)));
    response
}

/// `POST /ui/logout`: ends the session.
async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(error) = state.sessions.close(&headers) {
        return store_away(&error);
    }
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

    /// The admin token of a fresh data dir, and the sessions beside it.
    fn credentials() -> (tempfile::TempDir, Credentials) {
        let dir = tempfile::tempdir().unwrap();
        let credentials = Credentials::open(dir.path(), None).unwrap();
        (dir, credentials)
    }

    fn open(sessions: &Sessions, credentials: &Credentials, role: Role) -> HeaderMap {
        let generation = credentials.token_generation(role).unwrap();
        let id = sessions.open(role, generation).unwrap();
        with_cookie(&format!("{SESSION_COOKIE}={id}"))
    }

    /// A session opens, is found by its cookie among others, and closes;
    /// a made-up id is no session.
    #[test]
    fn sessions_open_and_close() {
        let (_dir, credentials) = credentials();
        let sessions = Sessions::default();
        let generation = credentials.token_generation(Role::Admin).unwrap();
        let id = sessions.open(Role::Admin, generation).unwrap();
        let headers = with_cookie(&format!("theme=dark; {SESSION_COOKIE}={id}; x=y"));
        assert_eq!(
            sessions.role(&headers, &credentials).unwrap(),
            Some(Role::Admin)
        );
        let made_up = with_cookie(&format!("{SESSION_COOKIE}={}", "0".repeat(64)));
        assert_eq!(sessions.role(&made_up, &credentials).unwrap(), None);
        sessions.close(&headers).unwrap();
        assert_eq!(sessions.role(&headers, &credentials).unwrap(), None);
    }

    /// A new token ends the sessions its predecessor opened, and only
    /// those.
    #[test]
    fn a_new_token_ends_its_sessions() {
        let (_dir, credentials) = credentials();
        credentials.issue_viewer_token().unwrap();
        let sessions = Sessions::default();
        let admin = open(&sessions, &credentials, Role::Admin);
        let viewer = open(&sessions, &credentials, Role::Viewer);
        credentials.issue_viewer_token().unwrap();
        assert_eq!(sessions.role(&viewer, &credentials).unwrap(), None);
        assert_eq!(
            sessions.role(&admin, &credentials).unwrap(),
            Some(Role::Admin)
        );
        credentials.rotate_admin_token().unwrap();
        assert_eq!(sessions.role(&admin, &credentials).unwrap(), None);
    }

    /// Sessions kept in the store are found there, by any holder of the
    /// store, and end there.
    #[test]
    fn sessions_in_the_store() {
        let (_dir, credentials) = credentials();
        let store = Arc::new(Store::open_in_memory().unwrap());
        let one = Sessions::new(Some(store.clone()));
        let other = Sessions::new(Some(store));
        let headers = open(&one, &credentials, Role::Admin);
        assert_eq!(
            other.role(&headers, &credentials).unwrap(),
            Some(Role::Admin)
        );
        other.close(&headers).unwrap();
        assert_eq!(one.role(&headers, &credentials).unwrap(), None);
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
        let (_dir, credentials) = credentials();
        let sessions = Sessions::default();
        let first = open(&sessions, &credentials, Role::Admin);
        for _ in 0..MAX_SESSIONS {
            open(&sessions, &credentials, Role::Admin);
        }
        assert_eq!(sessions.role(&first, &credentials).unwrap(), None);
        assert_eq!(sessions.open.lock().unwrap().len(), MAX_SESSIONS);
    }
}
