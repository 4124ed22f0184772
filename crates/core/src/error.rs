//! The uniform JSON error every Tollgate filter sends:
//! `{"error": "...", "message": "...", "request_id": "..."}`, and the local reply that carries it
//! with the headers a client needs (`WWW-Authenticate`, `Retry-After`).

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorBody<'a> {
    /// A stable machine-readable code, e.g. `unauthorized`.
    pub error: &'a str,
    /// A human-readable message. Never contains a secret or the precise internal reason.
    pub message: &'a str,
    /// Envoy's `x-request-id`, so a client report can be matched to the logs.
    pub request_id: &'a str,
}

impl ErrorBody<'_> {
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a struct of strings cannot fail; fall back to a fixed body all the same.
        serde_json::to_vec(self)
            .unwrap_or_else(|_| br#"{"error":"internal","message":"error","request_id":""}"#.to_vec())
    }
}

/// A local reply: what a filter answers instead of the upstream. The glue sends it as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The uniform JSON error: `status`, `content-type: application/json` and the body.
    pub fn error(status: u32, error: &str, message: &str, request_id: &str) -> Self {
        let body = ErrorBody { error, message, request_id }.to_json();
        Self { status, headers: vec![("content-type", "application/json".to_owned())], body }
    }

    /// Adds the `WWW-Authenticate` challenge (RFC 9110 §11.6.1).
    pub fn with_challenge(self, challenge: String) -> Self {
        self.with_header("www-authenticate", challenge)
    }

    /// Adds `Retry-After` in whole seconds, at least one (RFC 9110 §10.2.3).
    pub fn with_retry_after(self, secs: u64) -> Self {
        self.with_header("retry-after", secs.max(1).to_string())
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// Why a filter refuses a request: what the client is told (status, code, message) and the
/// precise reason that operators get in logs and in the `denied.<reason>` stat.
pub trait Denial: Copy + 'static {
    /// Every reason, for defining one stat each up front.
    fn all() -> &'static [Self];
    fn status(self) -> u32;
    /// The `error` field of the JSON body.
    fn code(self) -> &'static str;
    /// What the client is told: never a secret nor the precise reason.
    fn message(self) -> &'static str;
    /// The stat and log reason.
    fn reason(self) -> &'static str;
    /// Whether the reply carries the filter's `WWW-Authenticate` challenge: by default a 401
    /// does (RFC 9110 §15.5.2), and nothing else.
    fn challenges(self) -> bool {
        self.status() == 401
    }
}

/// Implements [`Denial`] for a reason enum whose inherent `status`, `code`, `message` and `reason`
/// functions and `ALL` list already say everything; `challenges = path` names a
/// `fn(Self) -> bool` that replaces the default rule.
#[macro_export]
macro_rules! impl_denial {
    ($ty:ty $(, challenges = $challenges:path)?) => {
        impl $crate::error::Denial for $ty {
            fn all() -> &'static [Self] {
                &<$ty>::ALL
            }
            fn status(self) -> u32 {
                <$ty>::status(self)
            }
            fn code(self) -> &'static str {
                <$ty>::code(self)
            }
            fn message(self) -> &'static str {
                <$ty>::message(self)
            }
            fn reason(self) -> &'static str {
                <$ty>::reason(self)
            }
            $(
                fn challenges(self) -> bool {
                    $challenges(self)
                }
            )?
        }
    };
}

/// The reply to a refusal: the uniform JSON error, the filter's `challenge` when the refusal
/// [challenges](Denial::challenges), and `Retry-After: 1` on a 503 (the filter could not decide
/// now: the client may try again).
pub fn denial_reply<D: Denial>(deny: D, request_id: &str, challenge: impl FnOnce() -> String) -> Reply {
    let mut reply = Reply::error(deny.status(), deny.code(), deny.message(), request_id);
    if deny.challenges() {
        reply = reply.with_challenge(challenge());
    }
    if deny.status() == 503 {
        reply = reply.with_retry_after(1);
    }
    reply
}

/// A value from the request (a request id, a key id from a signature) as one `key=value` field of
/// a log line: kept as it is when it is a plain token, else quoted with every quote, backslash and
/// control character escaped, so a client can neither break the line nor forge another field. At
/// most 128 characters are kept.
pub fn log_field(text: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 128;
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_.:/+=@".contains(c);
    if !text.is_empty() && text.len() <= MAX && text.chars().all(plain) {
        return std::borrow::Cow::Borrowed(text);
    }
    let cut: String = text.chars().take(MAX).collect();
    let more = if cut.len() < text.len() { "…" } else { "" };
    std::borrow::Cow::Owned(format!("{cut:?}{more}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_fields_cannot_break_a_line_or_forge_a_field() {
        assert_eq!(log_field("0f6c2b9e-11aa-4c1e-9a7b-3e1f"), "0f6c2b9e-11aa-4c1e-9a7b-3e1f");
        assert_eq!(log_field("abc reason=ok"), "\"abc reason=ok\"");
        assert_eq!(log_field("a\r\nkey-auth: allowed"), "\"a\\r\\nkey-auth: allowed\"");
        assert_eq!(log_field("q\"x\\"), "\"q\\\"x\\\\\"");
        assert_eq!(log_field("\u{1b}[31m"), "\"\\u{1b}[31m\"");
        assert_eq!(log_field(""), "\"\"");
        let long = "x".repeat(300);
        assert_eq!(log_field(&long).chars().count(), 128 + 3);
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Refused {
        NoKey,
        Forbidden,
        Down,
    }

    impl Denial for Refused {
        fn all() -> &'static [Self] {
            &[Self::NoKey, Self::Forbidden, Self::Down]
        }
        fn status(self) -> u32 {
            match self {
                Self::NoKey => 401,
                Self::Forbidden => 403,
                Self::Down => 503,
            }
        }
        fn code(self) -> &'static str {
            "code"
        }
        fn message(self) -> &'static str {
            "message"
        }
        fn reason(self) -> &'static str {
            "reason"
        }
    }

    #[test]
    fn a_denial_is_challenged_on_401_and_asked_to_retry_on_503() {
        let header =
            |r: &Reply, name: &str| r.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
        let r = denial_reply(Refused::NoKey, "r-1", || "ApiKey realm=\"x\"".to_owned());
        assert_eq!(r.status, 401);
        assert_eq!(header(&r, "content-type").as_deref(), Some("application/json"));
        assert_eq!(header(&r, "www-authenticate").as_deref(), Some("ApiKey realm=\"x\""));
        assert_eq!(header(&r, "retry-after"), None);
        let r = denial_reply(Refused::Forbidden, "r-1", || unreachable!("403 carries no challenge"));
        assert_eq!((r.status, r.headers.len()), (403, 1));
        let r = denial_reply(Refused::Down, "r-1", || unreachable!("503 carries no challenge"));
        assert_eq!(header(&r, "retry-after").as_deref(), Some("1"));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!((v["error"].as_str(), v["request_id"].as_str()), (Some("code"), Some("r-1")));
        assert_eq!(Reply::error(429, "e", "m", "r").with_retry_after(0).headers[1].1, "1");
    }

    #[test]
    fn body_is_escaped_json() {
        let body = ErrorBody { error: "unauthorized", message: "say \"hi\"", request_id: "r-1" };
        let v: serde_json::Value = serde_json::from_slice(&body.to_json()).unwrap();
        assert_eq!(v["error"], "unauthorized");
        assert_eq!(v["message"], "say \"hi\"");
        assert_eq!(v["request_id"], "r-1");
    }
}
