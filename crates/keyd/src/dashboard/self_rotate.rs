//! Self-rotation for a key's owner: `POST /api/v1/self/rotate` with the key in `X-API-Key` or
//! `Authorization: Bearer …`. Served on the dashboard's listener, meant to be routed through the
//! gateway (see the README): the key service checks the key itself, so the route needs no other
//! authentication.
//!
//! Answers JSON: `200 {"key_id", "secret", "display_prefix", "previous_display_prefix",
//! "previous_expires_at", "picked_up"}`; errors are `{"error", "message", "request_id"}` with
//! 400 (no key, or more than one), 401 (not a valid key), 409 (a replaced secret with nothing to
//! pick up), 503 (the store is unavailable) or 500.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::Error;

/// Where the key service serves self-rotation.
pub const PATH: &str = "/api/v1/self/rotate";

fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    (status, [(axum::http::header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn error(status: StatusCode, code: &str, message: &str, request_id: &str) -> Response {
    let body = serde_json::json!({ "error": code, "message": message, "request_id": request_id });
    let mut response = json(status, &body);
    if status == StatusCode::UNAUTHORIZED
        && let Ok(value) = "Bearer realm=\"tollgate\"".parse()
    {
        response.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, value);
    }
    response
}

/// The presented key: exactly one `X-API-Key`, or one `Authorization: Bearer` when there is none.
fn presented(headers: &HeaderMap) -> Result<String, &'static str> {
    let api_keys: Vec<_> = headers.get_all("x-api-key").iter().collect();
    let authorizations: Vec<_> = headers.get_all(axum::http::header::AUTHORIZATION).iter().collect();
    match (api_keys.as_slice(), authorizations.as_slice()) {
        ([one], []) => one.to_str().map(|v| v.trim().to_owned()).map_err(|_| "the API key is not text"),
        ([], [one]) => {
            let value = one.to_str().map_err(|_| "the Authorization header is not text")?;
            match value.split_once(' ') {
                Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") => Ok(key.trim().to_owned()),
                _ => Err("Authorization must be Bearer <key>"),
            }
        }
        ([], []) => Err("send the key in X-API-Key or Authorization: Bearer"),
        _ => Err("send exactly one key"),
    }
}

/// Any method but POST.
pub(crate) async fn wrong_method(headers: HeaderMap) -> Response {
    let mut response =
        error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use POST", &request_id(&headers));
    if let Ok(value) = "POST".parse() {
        response.headers_mut().insert(axum::http::header::ALLOW, value);
    }
    response
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| crate::secrets::random_base62(16).unwrap_or_default())
}

pub(crate) async fn rotate(State(state): State<super::State>, headers: HeaderMap) -> Response {
    let request_id = request_id(&headers);
    let key = match presented(&headers) {
        Ok(key) => key,
        Err(message) => return error(StatusCode::BAD_REQUEST, "bad_request", message, &request_id),
    };
    match state.0.service.self_rotate(&key).await {
        Ok(done) => {
            let body = serde_json::json!({
                "key_id": done.key.id,
                "secret": done.secret,
                "display_prefix": done.key.display_prefix,
                "previous_display_prefix": done.key.previous_display_prefix,
                "previous_expires_at": crate::webhooks::rfc3339(done.key.previous_expires_at),
                "picked_up": done.picked_up,
            });
            json(StatusCode::OK, &body)
        }
        Err(Error::Unauthenticated(message)) => {
            error(StatusCode::UNAUTHORIZED, "unauthorized", message, &request_id)
        }
        Err(Error::FailedPrecondition(message)) => {
            error(StatusCode::CONFLICT, "conflict", &message, &request_id)
        }
        Err(Error::Unavailable(detail)) => {
            tracing::warn!(error = %detail, "self-rotation: store unavailable");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the key service cannot answer now",
                &request_id,
            )
        }
        Err(err) => {
            tracing::warn!(error = %err, "self-rotation failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the key could not be rotated", &request_id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_key_comes_from_exactly_one_header() {
        assert_eq!(presented(&headers(&[("x-api-key", " tgk_a ")])), Ok("tgk_a".to_owned()));
        assert_eq!(presented(&headers(&[("authorization", "bearer tgk_b")])), Ok("tgk_b".to_owned()));
        assert!(presented(&headers(&[("authorization", "Basic abc")])).is_err());
        assert!(presented(&headers(&[])).is_err());
        assert_eq!(
            presented(&headers(&[("x-api-key", "a"), ("x-api-key", "b")])),
            Err("send exactly one key")
        );
        assert_eq!(
            presented(&headers(&[("x-api-key", "a"), ("authorization", "Bearer b")])),
            Err("send exactly one key")
        );
    }
}
