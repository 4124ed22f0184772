//! Rules together: config errors, matching, order, heads and bodies.

use serde_json::json;

use super::config::{Config, ConfigError, OnInvalidJson, OnOversize};
use super::*;

fn config(rules: serde_json::Value) -> Config {
    Config::from_json(json!({ "rules": rules }).to_string().as_bytes()).unwrap()
}

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
    let mut all = vec![
        (":method".to_owned(), method.to_owned()),
        (":path".to_owned(), path.to_owned()),
        (":authority".to_owned(), "api.example".to_owned()),
    ];
    all.extend(headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Request::from_headers(all)
}

fn set(name: &str, value: &str) -> HeaderEdit {
    HeaderEdit::Set(name.to_owned(), value.to_owned())
}

#[test]
fn versioned_path_rewrite_keeps_the_query_and_feeds_templates() {
    let c = config(json!([{
        "name": "v1-to-v2",
        "match": {"path_regex": "^/api/v1/(?P<rest>.*)$"},
        "request": {
            "path": {"regex": "^/api/v1/(.*)$", "replace": "/v2/$1"},
            "headers": [{"op": "set", "name": "x-original-resource", "value": "{path.rest}"}]
        }
    }]));
    let req = request("GET", "/api/v1/users/7?page=2", &[]);
    let matched = c.matching(&req);
    assert_eq!(matched.len(), 1);
    let change = request_head(&c, &req, &matched);
    assert_eq!(change.edits, vec![set("x-original-resource", "users/7"), set(":path", "/v2/users/7?page=2")]);
    assert!(change.errors.is_empty());
    assert!(c.matching(&request("GET", "/api/v2/users", &[])).is_empty());
}

#[test]
fn match_conditions_all_hold() {
    let c = config(json!([{
        "match": {"route_name": "r", "path_prefix": "/a", "methods": ["post"], "headers_present": ["X-Flag"]},
        "request": {"method": "PUT"}
    }]));
    let mut req = request("POST", "/a/b", &[("x-flag", "1")]);
    assert!(c.matching(&req).is_empty(), "route name not known yet");
    req.route_name = Some("r".into());
    assert_eq!(c.matching(&req).len(), 1);
    assert_eq!(request_head(&c, &req, &c.matching(&req)).edits, vec![set(":method", "PUT")]);
    let mut other = request("GET", "/a/b", &[("x-flag", "1")]);
    other.route_name = Some("r".into());
    assert!(c.matching(&other).is_empty());
    let mut no_header = request("POST", "/a/b", &[]);
    no_header.route_name = Some("r".into());
    assert!(c.matching(&no_header).is_empty());
    assert!(c.uses_route_name());
}

#[test]
fn rules_run_in_order_and_all_matching_rules_apply() {
    let c = config(json!([
        {"name": "first", "request": {"headers": [{"op": "set", "name": "x-order", "value": "1"}]}},
        {"name": "second", "match": {"path_prefix": "/nope"}, "request": {"headers": [{"op": "append", "name": "x-order", "value": "skipped"}]}},
        {"name": "third", "request": {"headers": [{"op": "append", "name": "x-order", "value": "3"}, {"op": "rename", "name": "x-order", "to": "x-final"}]}}
    ]));
    let req = request("GET", "/p", &[]);
    let matched = c.matching(&req);
    assert_eq!(matched.iter().map(|m| m.rule).collect::<Vec<_>>(), vec![0, 2]);
    let change = request_head(&c, &req, &matched);
    let mut h = Headers::new(vec![]);
    for e in &change.edits {
        match e {
            HeaderEdit::Set(n, v) => h.set(n, v),
            HeaderEdit::Add(n, v) => h.add(n, v),
            HeaderEdit::Remove(n) => h.remove(n),
        }
    }
    assert_eq!(h.get_all("x-final"), vec!["1", "3"]);
    assert!(!h.has("x-order"));
}

#[test]
fn query_method_and_host_edits() {
    let c = config(json!([{
        "request": {
            "query": [{"op": "remove", "name": "debug"}, {"op": "add", "name": "client", "value": "{header.x-client}"}],
            "method": "post",
            "host": "backend-{header.x-client}.internal"
        }
    }]));
    let req = request("GET", "/p?debug=1&a=b", &[("x-client", "web")]);
    let change = request_head(&c, &req, &c.matching(&req));
    assert_eq!(
        change.edits,
        vec![
            set(":path", "/p?a=b&client=web"),
            set(":method", "POST"),
            set(":authority", "backend-web.internal")
        ]
    );
    // Nothing to change → no edits at all.
    let quiet = config(json!([{"request": {"query": [{"op": "remove", "name": "debug"}], "method": "GET"}}]));
    let req = request("GET", "/p?a=1", &[]);
    assert!(request_head(&quiet, &req, &quiet.matching(&req)).edits.is_empty());
}

#[test]
fn identity_template_and_missing_identity() {
    let c = config(json!([{"name": "id", "request": {"headers": [
        {"op": "set", "name": "x-consumer", "value": "{identity.consumer_id}"},
        {"op": "set", "name": "x-sub", "value": "{identity.claims.sub}"}
    ]}}]));
    let mut req = request("GET", "/", &[]);
    let matched = c.matching(&req);
    assert_eq!(
        c.properties(&matched),
        vec![vec!["tollgate.consumer_id".to_owned()], vec!["tollgate.claims.sub".to_owned()]]
    );
    assert!(request_head(&c, &req, &matched).edits.is_empty());
    req.properties.insert(vec!["tollgate.consumer_id".into()], "alice".into());
    assert_eq!(request_head(&c, &req, &matched).edits, vec![set("x-consumer", "alice")]);
}

#[test]
fn response_status_mapping_and_headers() {
    let c = config(json!([{
        "response": {
            "status": {"404": 200, "500": 503},
            "headers": [{"op": "remove", "name": "server"}, {"op": "set", "name": "x-served-for", "value": "{method} {path}"}]
        }
    }]));
    let req = request("GET", "/p", &[]);
    let matched = c.matching(&req);
    let resp = vec![("server".to_owned(), "up".to_owned())];
    let change = response_head(&c, &req, &matched, Some(404), resp.clone());
    assert_eq!(
        change.edits,
        vec![set(":status", "200"), HeaderEdit::Remove("server".into()), set("x-served-for", "GET /p")]
    );
    let unmapped = response_head(&c, &req, &matched, Some(201), resp);
    assert_eq!(unmapped.edits.first(), Some(&HeaderEdit::Remove("server".into())));
    assert!(c.has_response_ops(&matched));
}

#[test]
fn json_bodies_change_and_invalid_json_is_reported() {
    let c = config(json!([{
        "name": "body",
        "request": {"body": [
            {"op": "set", "path": "meta.consumer", "value": "{identity.consumer_id}"},
            {"op": "set", "path": "/meta/count", "value": "{header.x-count}", "type": "number"},
            {"op": "remove", "path": "password"},
            {"op": "set", "path": "bad.under", "value": 1}
        ]},
        "response": {"body": [{"op": "remove", "path": "internal"}]}
    }]));
    let mut req = request("POST", "/p", &[("x-count", "3")]);
    req.properties.insert(vec!["tollgate.consumer_id".into()], "alice".into());
    let matched = c.matching(&req);
    assert!(c.wants_request_body(&matched) && c.wants_response_body(&matched));
    let out = request_body(&c, &req, &matched, br#"{"password": "x", "bad": "scalar", "keep": [1, 2]}"#);
    let BodyOutcome::Changed(bytes) = out.outcome else { panic!("expected a change: {out:?}") };
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(doc, json!({"meta": {"consumer": "alice", "count": 3}, "bad": "scalar", "keep": [1, 2]}));
    assert_eq!(out.errors.len(), 1);
    assert!(out.errors[0].starts_with("body: "), "{:?}", out.errors);

    let invalid = request_body(&c, &req, &matched, br#"{"truncated": "#);
    assert_eq!(invalid.outcome, BodyOutcome::Invalid);
    assert_eq!(request_body(&c, &req, &matched, b"  ").outcome, BodyOutcome::Unchanged);
    let untouched = response_body(&c, &req, &matched, br#"{"public": 1}"#);
    assert_eq!(untouched.outcome, BodyOutcome::Unchanged);
    let trimmed = response_body(&c, &req, &matched, br#"{"public": 1, "internal": {"x": 1}}"#);
    assert_eq!(trimmed.outcome, BodyOutcome::Changed(br#"{"public":1}"#.to_vec()));
}

#[test]
fn body_plan_buffers_only_json_within_the_cap() {
    assert_eq!(body_plan(Some("application/json"), None, Some("10"), 100), BodyPlan::Buffer);
    assert_eq!(body_plan(Some("application/problem+json; charset=utf-8"), None, None, 100), BodyPlan::Buffer);
    assert_eq!(body_plan(Some("Application/JSON"), Some("identity"), None, 100), BodyPlan::Buffer);
    assert_eq!(body_plan(Some("application/json"), None, Some("101"), 100), BodyPlan::TooLarge);
    assert_eq!(body_plan(Some("text/event-stream"), None, None, 100), BodyPlan::NotJson);
    assert_eq!(body_plan(Some("text/plain"), None, Some("5"), 100), BodyPlan::NotJson);
    assert_eq!(body_plan(None, None, None, 100), BodyPlan::NotJson);
    assert_eq!(body_plan(Some("application/json"), Some("gzip"), None, 100), BodyPlan::NotJson);
    assert!(!is_json("application/jsonx"));
}

#[test]
fn defaults_and_failure_modes() {
    let c = config(json!([]));
    assert_eq!(c.max_body_bytes, config::DEFAULT_MAX_BODY_BYTES);
    assert_eq!((c.on_oversize, c.on_invalid_json), (OnOversize::Pass, OnInvalidJson::Pass));
    assert_eq!(oversize_status(&c), None);
    assert_eq!(invalid_json_status(&c), None);
    let strict = Config::from_json(
        br#"{"max_body_bytes": 1024, "on_oversize": "reject", "on_invalid_json": "reject", "rules": []}"#,
    )
    .unwrap();
    assert_eq!(oversize_status(&strict), Some(413));
    assert_eq!(invalid_json_status(&strict), Some(400));
    assert_eq!(strict.max_body_bytes, 1024);
}

fn refuse(json: &str) -> ConfigError {
    Config::from_json(json.as_bytes()).unwrap_err()
}

#[test]
fn errors_name_the_rule_and_field() {
    let cases: &[(&str, Option<&str>, &str, &str)] = &[
        (
            r#"{"rules": [{"name": "bad-re", "match": {"path_regex": "(["}}]}"#,
            Some("bad-re"),
            "rules[0].match.path_regex",
            "invalid regex",
        ),
        (
            r#"{"rules": [{"request": {"path": {"regex": "^/v1/(.*)", "replace": "/v2/$2"}}}]}"#,
            Some("rules[0]"),
            "rules[0].request.path.replace",
            "not a group",
        ),
        (
            r#"{"rules": [{"request": {"path": {"regex": "^/v1/(.*)", "replace": "/v2/$1x"}}}]}"#,
            Some("rules[0]"),
            "rules[0].request.path.replace",
            "${1}x",
        ),
        (
            r#"{"rules": [{"request": {"path": {"regex": "^/v1/(.*)", "replace": "v2/$1"}}}]}"#,
            Some("rules[0]"),
            "rules[0].request.path.replace",
            "start with",
        ),
        (
            r#"{"rules": [{"name": "t", "request": {"headers": [{"op": "set", "name": "x", "value": "{nope}"}]}}]}"#,
            Some("t"),
            "rules[0].request.headers[0].value",
            "unknown placeholder",
        ),
        (
            r#"{"rules": [{"request": {"headers": [{"op": "set", "name": ":path", "value": "/"}]}}]}"#,
            Some("rules[0]"),
            "rules[0].request.headers[0].name",
            "pseudo-header",
        ),
        (
            r#"{"rules": [{"request": {"headers": [{"op": "set", "name": "content-length", "value": "1"}]}}]}"#,
            Some("rules[0]"),
            "rules[0].request.headers[0].name",
            "cannot be changed",
        ),
        (
            r#"{"rules": [{"request": {"headers": [{"op": "set", "name": "x"}]}}]}"#,
            Some("rules[0]"),
            "rules[0].request.headers[0]",
            "missing field `value`",
        ),
        (
            r#"{"rules": [{"request": {"headers": [{"op": "remove", "name": "x", "value": "v"}]}}]}"#,
            Some("rules[0]"),
            "rules[0].request.headers[0].value",
            "takes no",
        ),
        (
            r#"{"rules": [{"request": {"headers": [{"op": "rename", "name": "x"}]}}]}"#,
            Some("rules[0]"),
            "rules[0].request.headers[0]",
            "missing field `to`",
        ),
        (
            r#"{"rules": [{"request": {"headers": [{"op": "set", "name": "x", "to": "y", "value": "v"}]}}]}"#,
            Some("rules[0]"),
            "rules[0].request.headers[0].to",
            "only `rename`",
        ),
        (
            r#"{"rules": [{"name": "n", "request": {"headers": [{"op": "upsert", "name": "x"}]}}]}"#,
            Some("n"),
            "rules[0].request.headers[0].op",
            "unknown variant",
        ),
        (
            r#"{"rules": [{"request": {"query": [{"op": "set", "path": "a", "value": "v"}]}}]}"#,
            Some("rules[0]"),
            "rules[0].request.query[0].path",
            "take `name`",
        ),
        (
            r#"{"rules": [{"request": {"body": [{"op": "set", "path": "a..b", "value": 1}]}}]}"#,
            Some("rules[0]"),
            "rules[0].request.body[0].path",
            "not a field path",
        ),
        (
            r#"{"rules": [{"request": {"body": [{"op": "set", "path": "a", "value": "x", "type": "number"}]}}]}"#,
            Some("rules[0]"),
            "rules[0].request.body[0].value",
            "not a number",
        ),
        (
            r#"{"rules": [{"request": {"body": [{"op": "set", "path": "a", "value": 1, "type": "number"}]}}]}"#,
            Some("rules[0]"),
            "rules[0].request.body[0].type",
            "string `value`",
        ),
        (
            r#"{"rules": [{"request": {"body": [{"op": "set", "name": "a", "value": 1}]}}]}"#,
            Some("rules[0]"),
            "rules[0].request.body[0].name",
            "take `path`",
        ),
        (
            r#"{"rules": [{"request": {"method": "GE T"}}]}"#,
            Some("rules[0]"),
            "rules[0].request.method",
            "not an HTTP method",
        ),
        (
            r#"{"rules": [{"request": {"host": "a b"}}]}"#,
            Some("rules[0]"),
            "rules[0].request.host",
            "not a host",
        ),
        (
            r#"{"rules": [{"response": {"status": {"abc": 200}}}]}"#,
            Some("rules[0]"),
            "rules[0].response.status.abc",
            "not an HTTP status",
        ),
        (
            r#"{"rules": [{"response": {"status": {"404": 99}}}]}"#,
            Some("rules[0]"),
            "rules[0].response.status.404",
            "not an HTTP status",
        ),
        (
            r#"{"rules": [{"match": {"path_prefix": "api"}}]}"#,
            Some("rules[0]"),
            "rules[0].match.path_prefix",
            "start with",
        ),
        (r#"{"rules": [{"name": "a"}, {"name": "a"}]}"#, Some("a"), "rules[1].name", "another rule"),
        (
            r#"{"rules": [{"name": "x", "requests": {}}]}"#,
            Some("x"),
            "rules[0].requests",
            "unknown field `requests`",
        ),
        (r#"{"rules": [], "max_body_bytes": 0}"#, None, "max_body_bytes", "between"),
        (r#"{"rules": [], "on_oversize": "drop"}"#, None, "on_oversize", "unknown variant"),
        (r#"{}"#, None, "<root>", "missing field `rules`"),
        ("not json", None, "<root>", "expected"),
    ];
    for (json, rule, field, text) in cases {
        let e = refuse(json);
        assert_eq!(e.field, *field, "{json}: {e}");
        assert_eq!(e.rule.as_deref(), *rule, "{json}: {e}");
        assert!(e.message.contains(text), "{json}: {e}");
        let shown = e.to_string();
        assert!(shown.contains(field), "{shown}");
        if let Some(rule) = rule {
            assert!(shown.contains(&format!("rule `{rule}`")), "{shown}");
        }
    }
}
