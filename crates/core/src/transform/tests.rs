//! Rules together: config errors, matching, order, heads and bodies.

use serde_json::json;

use super::config::{Config, ConfigError, OnInvalidJson, OnOversize};
use super::*;

fn config(rules: serde_json::Value) -> Config {
    Config::from_json(json!({ "rules": rules }).to_string().as_bytes()).unwrap()
}

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
    let mut all: Vec<(String, Vec<u8>)> = vec![
        (":method".to_owned(), method.into()),
        (":path".to_owned(), path.into()),
        (":authority".to_owned(), "api.example".into()),
    ];
    all.extend(headers.iter().map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())));
    Request::from_headers(all)
}

fn set(name: &str, value: &str) -> HeaderEdit {
    HeaderEdit::Set(name.to_owned(), value.as_bytes().to_vec())
}

/// The rules that match (the path is never refused in these tests).
fn matching(c: &Config, req: &Request) -> Vec<Matched> {
    c.matching(req).unwrap()
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
    let matched = matching(&c, &req);
    assert_eq!(matched.len(), 1);
    let change = request_head(&c, &req, &matched);
    assert_eq!(change.edits, vec![set("x-original-resource", "users/7"), set(":path", "/v2/users/7?page=2")]);
    assert!(change.errors.is_empty());
    assert!(matching(&c, &request("GET", "/api/v2/users", &[])).is_empty());
}

#[test]
fn match_conditions_all_hold() {
    let c = config(json!([{
        "match": {"route_name": "r", "path_prefix": "/a", "methods": ["post"], "headers_present": ["X-Flag"]},
        "request": {"method": "PUT"}
    }]));
    let mut req = request("POST", "/a/b", &[("x-flag", "1")]);
    assert!(matching(&c, &req).is_empty(), "route name not known yet");
    req.route_name = Some("r".into());
    assert_eq!(matching(&c, &req).len(), 1);
    assert_eq!(request_head(&c, &req, &matching(&c, &req)).edits, vec![set(":method", "PUT")]);
    let mut other = request("GET", "/a/b", &[("x-flag", "1")]);
    other.route_name = Some("r".into());
    assert!(matching(&c, &other).is_empty());
    let mut no_header = request("POST", "/a/b", &[]);
    no_header.route_name = Some("r".into());
    assert!(matching(&c, &no_header).is_empty());
    assert!(c.matches_route_name());
}

#[test]
fn rules_run_in_order_and_all_matching_rules_apply() {
    let c = config(json!([
        {"name": "first", "request": {"headers": [{"op": "set", "name": "x-order", "value": "1"}]}},
        {"name": "second", "match": {"path_prefix": "/nope"}, "request": {"headers": [{"op": "append", "name": "x-order", "value": "skipped"}]}},
        {"name": "third", "request": {"headers": [{"op": "append", "name": "x-order", "value": "3"}, {"op": "rename", "name": "x-order", "to": "x-final"}]}}
    ]));
    let req = request("GET", "/p", &[]);
    let matched = matching(&c, &req);
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
    assert_eq!(h.get_all("x-final"), vec![b"1", b"3"]);
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
    let change = request_head(&c, &req, &matching(&c, &req));
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
    assert!(request_head(&quiet, &req, &matching(&quiet, &req)).edits.is_empty());
}

#[test]
fn identity_template_and_missing_identity() {
    let c = config(json!([{"name": "id", "request": {"headers": [
        {"op": "set", "name": "x-consumer", "value": "{identity.consumer_id}"},
        {"op": "set", "name": "x-sub", "value": "{identity.claims.sub}"}
    ]}}]));
    let mut req = request("GET", "/", &[]);
    let matched = matching(&c, &req);
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
    let matched = matching(&c, &req);
    let resp = vec![("server".to_owned(), b"up".to_vec())];
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
    let matched = matching(&c, &req);
    assert!(c.wants_request_body(&matched) && c.wants_response_body(&matched));
    let out = request_body(&c, &req, &matched, br#"{"password": "x", "bad": "scalar", "keep": [1, 2]}"#);
    let BodyOutcome::Changed(bytes) = out.outcome else { panic!("expected a change: {out:?}") };
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        r#"{ "bad": "scalar", "keep": [1, 2], "meta": {"consumer":"alice","count":3}}"#
    );
    assert_eq!(out.errors.len(), 1);
    assert!(out.errors[0].starts_with("body: "), "{:?}", out.errors);

    let invalid = request_body(&c, &req, &matched, br#"{"truncated": "#);
    assert_eq!(invalid.outcome, BodyOutcome::Invalid);
    assert_eq!(request_body(&c, &req, &matched, b"  ").outcome, BodyOutcome::Unchanged);
    let untouched = response_body(&c, &req, &matched, br#"{"public": 1}"#);
    assert_eq!(untouched.outcome, BodyOutcome::Unchanged);
    let trimmed = response_body(&c, &req, &matched, br#"{"public": 1, "internal": {"x": 1}}"#);
    assert_eq!(trimmed.outcome, BodyOutcome::Changed(br#"{"public": 1}"#.to_vec()));
}

#[test]
fn fields_no_rule_touches_pass_byte_for_byte() {
    let c = config(
        json!([{"request": {"body": [{"op": "set", "path": "owner", "value": "{identity.consumer_id}"}]}}]),
    );
    let mut req = request("POST", "/p", &[]);
    req.properties.insert(vec!["tollgate.consumer_id".into()], "alice".into());
    let matched = matching(&c, &req);
    let body = "{\"id\": 18446744073709551617, \"price\": 1E2, \"tiny\": 1e-400, \"huge\": 1e400,\n \"name\": \"\\u00e9\\ud800\\/\", \"owner\": \"mallory\"}";
    let out = request_body(&c, &req, &matched, body.as_bytes());
    let BodyOutcome::Changed(bytes) = out.outcome else { panic!("expected a change: {out:?}") };
    assert_eq!(String::from_utf8(bytes).unwrap(), body.replace("mallory", "alice"));
    assert!(out.errors.is_empty());
}

#[test]
fn valid_json_the_old_parser_refused_is_transformed() {
    // Each of these once made the rule skip silently: the client kept its own `owner`.
    let c = config(
        json!([{"request": {"body": [{"op": "set", "path": "owner", "value": "{identity.consumer_id}"}]}}]),
    );
    let mut req = request("POST", "/p", &[]);
    req.properties.insert(vec!["tollgate.consumer_id".into()], "alice".into());
    let matched = matching(&c, &req);
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    for extra in ["1e400", r#""\ud800""#, deep.as_str()] {
        let body = format!(r#"{{"owner": "mallory", "x": {extra}}}"#);
        let out = request_body(&c, &req, &matched, body.as_bytes());
        assert_eq!(
            out.outcome,
            BodyOutcome::Changed(body.replace("mallory", "alice").into_bytes()),
            "{extra:.20}"
        );
    }
}

#[test]
fn literal_values_are_written_as_the_config_spells_them() {
    let c = Config::from_json(
        br#"{"rules": [{"request": {"body": [
            {"op": "set", "path": "big", "value": 18446744073709551617},
            {"op": "set", "path": "obj", "value": {"b": 1.50, "a": [ 1E2 ]}}
        ]}}]}"#,
    )
    .unwrap();
    let req = request("POST", "/", &[]);
    let out = request_body(&c, &req, &matching(&c, &req), b"{}");
    assert_eq!(
        out.outcome,
        BodyOutcome::Changed(br#"{"big":18446744073709551617,"obj":{"b": 1.50, "a": [ 1E2 ]}}"#.to_vec())
    );
}

#[test]
fn rules_match_the_normalised_path() {
    let c = config(json!([
        {"name": "admin", "match": {"path_prefix": "/admin"}, "request": {"headers": [{"op": "set", "name": "x-admin", "value": "1"}]}},
        {"name": "users", "match": {"path_regex": "^/users/(?P<id>[0-9]+)$"}, "request": {"headers": [{"op": "set", "name": "x-id", "value": "{path.id}"}]}}
    ]));
    for spelling in ["/admin", "//admin", "/./admin", "/%61dmin", "/x/../admin", "/admin/./x"] {
        let m = matching(&c, &request("GET", spelling, &[]));
        assert_eq!(m.iter().map(|m| m.rule).collect::<Vec<_>>(), vec![0], "{spelling}");
    }
    let req = request("GET", "/users/./%37", &[]);
    assert_eq!(request_head(&c, &req, &matching(&c, &req)).edits, vec![set("x-id", "7")]);
    // An encoded slash: a rule that looks at the path cannot tell whether it applies.
    assert_eq!(c.matching(&request("GET", "/admin%2Fx", &[])), Err(crate::route::PathRefused::EncodedSlash));
    assert_eq!(Refusal::BadPath.status(), 400);
    // Rules that do not look at the path still decide.
    let quiet = config(json!([{"match": {"methods": ["POST"]}, "request": {"method": "PUT"}}]));
    assert_eq!(quiet.matching(&request("GET", "/a%2Fb", &[])), Ok(vec![]));
    // A rule whose other conditions fail never refuses.
    let posts =
        config(json!([{"match": {"path_prefix": "/a", "methods": ["POST"]}, "request": {"method": "PUT"}}]));
    assert_eq!(posts.matching(&request("GET", "/a%2Fb", &[])), Ok(vec![]));
    assert!(posts.matching(&request("POST", "/a%2Fb", &[])).is_err());
}

#[test]
fn the_path_is_rewritten_from_the_spelling_the_rule_matched() {
    let c = config(json!([{
        "match": {"path_prefix": "/api/v1/"},
        "request": {"path": {"regex": "^/api/v1/(.*)$", "replace": "/v2/$1"}}
    }]));
    for spelling in
        ["/api/v1/users?x=1", "/api//v1/./users?x=1", "/api/%761/users?x=1", "/api/x/../v1/users?x=1"]
    {
        let req = request("GET", spelling, &[]);
        assert_eq!(
            request_head(&c, &req, &matching(&c, &req)).edits,
            vec![set(":path", "/v2/users?x=1")],
            "{spelling}"
        );
    }
}

#[test]
fn a_rewrite_that_is_not_a_path_or_host_refuses_the_request() {
    let c = config(json!([{
        "match": {"path_regex": "^/r/(.*)$"},
        "request": {"path": {"regex": "^/r/(.*)$", "replace": "/s/$1"}, "host": "{header.x-backend}"}
    }]));
    for (host, ok) in [
        ("backend.internal", true),
        ("backend.internal:8080", true),
        ("10.0.0.1:80", true),
        ("[2001:db8::1]:443", true),
        ("[::1]", true),
        ("good.example@evil.example", false),
        ("a/../admin", false),
        ("a?b#c", false),
        ("a b", false),
        ("a:99999", false),
        ("a:", false),
        (":80", false),
        ("[::1", false),
        ("a\tb", false),
    ] {
        let req = request("GET", "/r/x", &[("x-backend", host)]);
        let change = request_head(&c, &req, &matching(&c, &req));
        assert_eq!(change.refuse.is_none(), ok, "{host}: {change:?}");
        if !ok {
            assert_eq!(change.refuse, Some(Refusal::CannotRewrite));
            assert!(change.errors.iter().all(|e| !e.bytes().any(|b| b < 0x20)), "{:?}", change.errors);
        }
    }
    // A path rewrite whose captures are not path characters.
    let req = request("GET", "/r/a\"b", &[("x-backend", "ok")]);
    let change = request_head(&c, &req, &matching(&c, &req));
    assert_eq!(change.refuse, Some(Refusal::CannotRewrite), "{change:?}");
}

#[test]
fn log_text_is_escaped_and_cut() {
    assert_eq!(shown(b"a\r\nb\x00\x1b\\`"), r"a\r\nb\u{0}\u{1b}\\\u{60}");
    assert_eq!(shown(b"caf\xc3\xa9 \xff"), "caf\u{e9} \\u{fffd}");
    assert_eq!(shown("x".repeat(500).as_bytes()).chars().count(), 129);
}

#[test]
fn route_name_is_needed_by_matchers_or_templates() {
    let by_template = config(
        json!([{"request": {"headers": [{"op": "set", "name": "x-route", "value": "{route_name}"}]}}]),
    );
    let req = request("GET", "/", &[]);
    assert!(!by_template.matches_route_name());
    assert!(by_template.reads_route_name(&matching(&by_template, &req)));
    let mut named = req.clone();
    named.route_name = Some("orders".into());
    assert_eq!(
        request_head(&by_template, &named, &matching(&by_template, &named)).edits,
        vec![set("x-route", "orders")]
    );
    let plain =
        config(json!([{"request": {"headers": [{"op": "set", "name": "x-a", "value": "{method}"}]}}]));
    assert!(!plain.reads_route_name(&matching(&plain, &req)));
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
    for side in [Side::Request, Side::Response] {
        assert_eq!(oversize(&c, side), None);
        assert_eq!(invalid_json(&c, side), None);
    }
    let strict = Config::from_json(
        br#"{"max_body_bytes": 1024, "on_oversize": "reject", "on_invalid_json": "reject", "rules": []}"#,
    )
    .unwrap();
    assert_eq!(oversize(&strict, Side::Request).map(Refusal::status), Some(413));
    assert_eq!(oversize(&strict, Side::Response).map(Refusal::status), Some(502));
    assert_eq!(invalid_json(&strict, Side::Request).map(Refusal::status), Some(400));
    assert_eq!(invalid_json(&strict, Side::Response).map(Refusal::status), Some(502));
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
            r#"{"rules": [{"request": {"host": "good.example@evil.example"}}]}"#,
            Some("rules[0]"),
            "rules[0].request.host",
            "`good.example@evil.example` is not a host",
        ),
        (
            r#"{"rules": [{"name": "h", "request": {"method": "head"}}]}"#,
            Some("h"),
            "rules[0].request.method",
            "`HEAD` changes how the response is framed",
        ),
        (
            r#"{"rules": [{"request": {"method": "CONNECT"}}]}"#,
            Some("rules[0]"),
            "rules[0].request.method",
            "`CONNECT` changes how the response is framed",
        ),
        (
            r#"{"rules": [{"name": "s", "response": {"status": {"200": 103}}}]}"#,
            Some("s"),
            "rules[0].response.status.200",
            "`103` is informational: the client would wait for a final response that never comes",
        ),
        (
            r#"{"rules": [{"response": {"status": {"100": 200}}}]}"#,
            Some("rules[0]"),
            "rules[0].response.status.100",
            "`100` is informational: it never reaches this filter",
        ),
        (
            r#"{"rules": [{"response": {"status": {"200": 204}}}]}"#,
            Some("rules[0]"),
            "rules[0].response.status.200",
            "`204` has no body: the upstream's `200` does",
        ),
        (
            r#"{"rules": [{"response": {"status": {"404": 304}}}]}"#,
            Some("rules[0]"),
            "rules[0].response.status.404",
            "`304` has no body",
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
