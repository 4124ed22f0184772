//! The uniform JSON error body every Tollgate filter sends:
//! `{"error": "...", "message": "...", "request_id": "..."}`.

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

    #[test]
    fn body_is_escaped_json() {
        let body = ErrorBody { error: "unauthorized", message: "say \"hi\"", request_id: "r-1" };
        let v: serde_json::Value = serde_json::from_slice(&body.to_json()).unwrap();
        assert_eq!(v["error"], "unauthorized");
        assert_eq!(v["message"], "say \"hi\"");
        assert_eq!(v["request_id"], "r-1");
    }
}
