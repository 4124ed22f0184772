//! What every filter's configuration shares: the error that names the bad field, JSON parsing
//! into raw serde types (the field path of a serde error becomes the error's field), and small
//! checks used by several schemas.

use serde::de::DeserializeOwned;

/// A configuration error: which filter, which field (a path such as `rules[2].limits[0].per`),
/// for rule-based configs which rule, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub filter: &'static str,
    pub field: String,
    pub rule: Option<String>,
    pub message: String,
}

impl ConfigError {
    pub fn new(filter: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { filter, field: field.into(), rule: None, message: message.into() }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid {} config: ", self.filter)?;
        if let Some(rule) = &self.rule {
            write!(f, "rule `{rule}`: ")?;
        }
        write!(f, "`{}`: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Deserializes `json` into `T`; a serde error names the field it is about (`<root>` for the
/// document itself).
pub fn parse_json<T: DeserializeOwned>(filter: &'static str, json: &[u8]) -> Result<T, ConfigError> {
    let de = &mut serde_json::Deserializer::from_slice(json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "<root>".to_owned() } else { path };
        ConfigError::new(filter, field, strip_position(&e.inner().to_string()))
    })
}

/// serde_json appends " at line 1 column 42"; the field path already says where.
pub fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Whether `name` is an HTTP header name (an RFC 9110 token).
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `name` lower-cased if it is a header name, else an error about `field`.
pub fn check_header_name(filter: &'static str, field: &str, name: &str) -> Result<String, ConfigError> {
    if is_header_name(name) {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(ConfigError::new(filter, field, format!("`{name}` is not a valid header name")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        #[allow(dead_code)]
        inner: Inner,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[allow(dead_code)]
        n: u32,
    }

    #[test]
    fn serde_errors_name_the_field_without_a_position() {
        let e = parse_json::<Raw>("demo", br#"{"inner": {"n": "x"}}"#).unwrap_err();
        assert_eq!(e.field, "inner.n");
        assert!(!e.message.contains("line"), "{e}");
        assert!(e.to_string().starts_with("invalid demo config: `inner.n`: "), "{e}");
        assert_eq!(parse_json::<Raw>("demo", b"[").unwrap_err().field, "<root>");
    }

    #[test]
    fn a_rule_is_named_when_known() {
        let e = ConfigError { rule: Some("v1".into()), ..ConfigError::new("transform", "rules[0].x", "bad") };
        assert_eq!(e.to_string(), "invalid transform config: rule `v1`: `rules[0].x`: bad");
    }

    #[test]
    fn header_names_are_tokens() {
        assert!(is_header_name("x-api-key"));
        assert!(!is_header_name("bad header"));
        assert!(!is_header_name(""));
        assert!(!is_header_name("x:y"));
    }
}
