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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_escaped_json() {
        let body = ErrorBody { error: "unauthorized", message: "say \"hi\"", request_id: "r-1" };
        let v: serde_json::Value = serde_json::from_slice(&body.to_json()).unwrap();
        assert_eq!(v["error"], "unauthorized");
        assert_eq!(v["message"], "say \"hi\"");
        assert_eq!(v["request_id"], "r-1");
    }
}
