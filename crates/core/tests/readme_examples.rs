//! The configuration examples in the README are real: each one parses with its filter's schema.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap()
}

/// The first ```json block after `marker`.
fn json_block_after(text: &str, marker: &str) -> String {
    let start = text.find(marker).unwrap_or_else(|| panic!("README has no `{marker}`"));
    let rest = &text[start..];
    let open = rest.find("```json\n").unwrap() + "```json\n".len();
    let close = rest[open..].find("```").unwrap();
    rest[open..open + close].to_owned()
}

#[test]
fn key_auth_example_parses() {
    let json = json_block_after(&readme(), "### Configuration");
    tollgate_core::key_auth::config::Config::from_json(json.as_bytes()).unwrap();
}

#[test]
fn rate_limit_example_parses() {
    let json = json_block_after(&readme(), "**rate-limit**");
    tollgate_core::rate_limit::config::Config::from_json(json.as_bytes()).unwrap();
}

#[test]
fn jwt_auth_example_parses() {
    let json = json_block_after(&readme(), "**jwt-auth**");
    tollgate_core::jwt::config::Config::from_json(json.as_bytes()).unwrap();
}

#[test]
fn transform_example_parses() {
    let json = json_block_after(&readme(), "**transform**");
    tollgate_core::transform::config::Config::from_json(json.as_bytes()).unwrap();
}

#[test]
fn request_signing_example_parses() {
    let json = json_block_after(&readme(), "**request-signing**");
    tollgate_core::signature::config::Config::from_json(json.as_bytes()).unwrap();
}

#[test]
fn cache_example_parses() {
    let json = json_block_after(&readme(), "**cache**");
    tollgate_core::cache::config::Config::from_json(json.as_bytes()).unwrap();
}
