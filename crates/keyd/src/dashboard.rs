//! The web dashboard: server-rendered HTML on its own HTTP listener (`--http-listen`).
//!
//! Pages: overview, consumers, keys (paginated), key detail, create key, audit log; rotate and
//! revoke on the key page. Changes go through the same [`KeyServiceImpl`] the gRPC clients call,
//! so validation, the transaction, the change feed and the audit entry are the ones an admin-token
//! RPC makes (actor `admin-token`). Reads use the store directly.
//!
//! Security:
//! - Login with the admin token or the viewer token (compared as SHA-256 digests in constant
//!   time). A session is a cookie the service signs ([`session`]): HttpOnly, SameSite=Strict,
//!   Path=/, 8 hours. A missing, tampered, expired or logged-out cookie leads to the login page.
//! - Every form that changes something carries a CSRF token derived from the session; a request
//!   without the right one gets 403 and changes nothing. Viewer sessions get 403 for every change
//!   and are not shown the forms.
//! - Every response carries [`CONTENT_SECURITY_POLICY`], `X-Content-Type-Options: nosniff`,
//!   `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer` and `Cache-Control: no-store` (a
//!   page showing a new secret is never cached). Pages have no inline script or style; every
//!   value from the store is HTML-escaped ([`html::esc`]).

pub mod html;
mod pages;
pub mod self_rotate;
pub mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::header::{self, HeaderValue};
use axum::http::request::Parts;
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::{Code, Status};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::secrets::Token;
use crate::service::KeyServiceImpl;
use crate::store::Store;
use session::{Role, Session, Signer};

/// The dashboard's Content-Security-Policy: its own origin only; no plugins, no framing, forms
/// post only to itself.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The style sheet, served from the binary.
pub const STYLE_CSS: &str = include_str!("dashboard/style.css");

/// Everything the handlers share.
#[derive(Clone)]
pub struct State(Arc<Inner>);

struct Inner {
    service: KeyServiceImpl,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    admin: [u8; 32],
    viewer: [u8; 32],
    signer: Signer,
    /// Sessions logged out before their expiry (cookie value → expiry), refused until then.
    ended: Mutex<HashMap<String, i64>>,
}

impl State {
    /// The dashboard over `service` (changes) and `store` (reads), accepting the admin and
    /// viewer tokens. Draws the session-signing key.
    pub fn new(
        service: KeyServiceImpl,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        admin: &Token,
        viewer: &Token,
    ) -> Result<Self> {
        Ok(Self(Arc::new(Inner {
            service,
            store,
            clock,
            admin: admin.digest(),
            viewer: viewer.digest(),
            signer: Signer::random()?,
            ended: Mutex::new(HashMap::new()),
        })))
    }

    /// Ends `session` now: its cookie is refused from here on, wherever it was copied to.
    fn end(&self, session: &Session) {
        let now = self.0.clock.now();
        if let Ok(mut ended) = self.0.ended.lock() {
            ended.retain(|_, expires_at| *expires_at > now);
            ended.insert(session.value().to_owned(), session.expires_at);
        }
    }

    /// Whether `session` was logged out (a poisoned lock counts as logged out: fail closed).
    fn has_ended(&self, session: &Session) -> bool {
        self.0.ended.lock().map_or(true, |ended| ended.contains_key(session.value()))
    }

    /// The role a presented token logs in as, compared in constant time with both tokens.
    fn role_of(&self, presented: &str) -> Option<Role> {
        let presented = Token::new(presented.trim()).ok()?.digest();
        let admin = tollgate_core::key::secrets_equal(&presented, &self.0.admin);
        let viewer = tollgate_core::key::secrets_equal(&presented, &self.0.viewer);
        match (admin, viewer) {
            (true, _) => Some(Role::Admin),
            (false, true) => Some(Role::Viewer),
            (false, false) => None,
        }
    }
}

/// Serves the dashboard on `listener` until `stop` turns `true`.
pub async fn serve(listener: TcpListener, state: State, mut stop: watch::Receiver<bool>) {
    let shutdown = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    if let Err(err) = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await {
        tracing::warn!(error = %err, "dashboard server stopped with an error");
    }
}

/// Every page and form of the dashboard.
pub fn router(state: State) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/consumers", get(pages::consumers))
        .route("/keys", get(pages::keys).post(pages::create_key))
        .route("/keys/new", get(pages::new_key))
        .route("/keys/{id}", get(pages::key_detail))
        .route("/keys/{id}/rotate", post(pages::rotate_key))
        .route("/keys/{id}/revoke", post(pages::revoke_key))
        .route("/audit", get(pages::audit))
        .route(self_rotate::PATH, post(self_rotate::rotate).fallback(self_rotate::wrong_method))
        .route("/static/style.css", get(pages::style))
        .fallback(pages::not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// A request with a valid session, and the CSRF token of that session.
pub(crate) struct Authed {
    session: Session,
    csrf: String,
}

impl Authed {
    fn can_change(&self) -> bool {
        self.session.role == Role::Admin
    }

    fn frame<'a>(&'a self, title: &'a str) -> html::Frame<'a> {
        html::Frame {
            title,
            role: Some(self.session.role.as_str()),
            can_change: self.can_change(),
            csrf: &self.csrf,
        }
    }
}

impl FromRequestParts<State> for Authed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &State) -> std::result::Result<Self, Response> {
        let now = state.0.clock.now();
        let cookies = parts.headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok());
        let values = session::cookie_values(cookies);
        let mut valid = values.iter().filter_map(|value| state.0.signer.verify(value, now));
        match valid.find(|session| !state.has_ended(session)) {
            Some(session) => Ok(Self { csrf: state.0.signer.csrf_token(&session), session }),
            None => Err(to_login(!values.is_empty())),
        }
    }
}

/// 303 to the login page; removes a cookie that did not verify (tampered, expired, or from
/// before a restart).
fn to_login(clear: bool) -> Response {
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response();
    if clear && let Ok(value) = HeaderValue::from_str(&session::clear_cookie(false)) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Whether the session may make a change with the CSRF token it presented: admins with the right
/// token only.
fn may_change(state: &State, authed: &Authed, csrf: &str) -> std::result::Result<(), PageError> {
    if authed.session.role != Role::Admin {
        return Err(PageError::Forbidden("A viewer session cannot change anything."));
    }
    if !state.0.signer.check_csrf(&authed.session, csrf) {
        return Err(PageError::Forbidden(
            "The form's CSRF token is missing or wrong: nothing was changed. Reload the page and try again.",
        ));
    }
    Ok(())
}

/// Why a page could not be shown; each becomes a page with its status.
#[derive(Debug)]
pub(crate) enum PageError {
    BadRequest(String),
    Forbidden(&'static str),
    NotFound(String),
    Internal,
}

impl From<Status> for PageError {
    fn from(status: Status) -> Self {
        match status.code() {
            Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists | Code::OutOfRange => {
                Self::BadRequest(status.message().to_owned())
            }
            Code::NotFound => Self::NotFound(status.message().to_owned()),
            _ => Self::Internal,
        }
    }
}

impl From<Error> for PageError {
    fn from(err: Error) -> Self {
        // The one mapping of domain errors (it logs internal details and hides them).
        Status::from(err).into()
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, message) = match self {
            Self::BadRequest(message) => (StatusCode::BAD_REQUEST, "Bad request", message),
            Self::Forbidden(message) => (StatusCode::FORBIDDEN, "Forbidden", message.to_owned()),
            Self::NotFound(message) => (StatusCode::NOT_FOUND, "Not found", message),
            Self::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Error",
                "The key service could not do this; its log says why.".to_owned(),
            ),
        };
        let body = format!(
            "<p class=\"error\" id=\"error\">{}</p><p><a href=\"/\">Back to the overview</a></p>",
            html::esc(&message)
        );
        let frame = html::Frame { title, role: None, can_change: false, csrf: "" };
        (status, axum::response::Html(html::page(&frame, &body))).into_response()
    }
}
