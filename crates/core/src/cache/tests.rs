use super::conditional::not_modified;
use super::config::Config;
use super::control::{MAX_DELTA, RequestDirectives, ResponseDirectives, parse_request, parse_response};
use super::date::parse_http_date;
use super::key::{NoKey, QueryRule, normalize_query, primary_key, vary_values};
use super::policy::{
    Freshness, NotStored, StaleLimits, Usable, current_age, storable, usable, usable_on_error, vary_names,
};
use super::store::{Object, Store};
use super::*;

fn h(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect()
}

const LIMITS: StaleLimits = StaleLimits { while_revalidate: 600, if_error: 600 };
const NOW: i64 = 1_700_000_000;

#[test]
fn response_directives_table() {
    let rd = ResponseDirectives::default;
    let cases: Vec<(&str, ResponseDirectives)> = vec![
        ("max-age=60", ResponseDirectives { max_age: Some(60), ..rd() }),
        ("MAX-AGE=60", ResponseDirectives { max_age: Some(60), ..rd() }),
        ("max-age=\"60\"", ResponseDirectives { max_age: Some(60), ..rd() }),
        ("public, max-age=10", ResponseDirectives { public: true, max_age: Some(10), ..rd() }),
        ("max-age=60, max-age=5", ResponseDirectives { max_age: Some(5), ..rd() }),
        ("max-age=5, max-age=60", ResponseDirectives { max_age: Some(5), ..rd() }),
        ("max-age=abc", ResponseDirectives { max_age: Some(0), ..rd() }),
        ("max-age=-1", ResponseDirectives { max_age: Some(0), ..rd() }),
        ("max-age", ResponseDirectives { max_age: Some(0), ..rd() }),
        ("max-age=99999999999999999999999", ResponseDirectives { max_age: Some(MAX_DELTA), ..rd() }),
        ("max-age=4294967296", ResponseDirectives { max_age: Some(MAX_DELTA), ..rd() }),
        ("no-store", ResponseDirectives { no_store: true, ..rd() }),
        ("no-cache=\"set-cookie, x-a\"", ResponseDirectives { no_cache: true, ..rd() }),
        ("private=\"x\", max-age=5", ResponseDirectives { private: true, max_age: Some(5), ..rd() }),
        ("s-maxage=30, max-age=5", ResponseDirectives { s_maxage: Some(30), max_age: Some(5), ..rd() }),
        (
            "max-age=1, stale-while-revalidate=30, stale-if-error=60",
            ResponseDirectives {
                max_age: Some(1),
                stale_while_revalidate: Some(30),
                stale_if_error: Some(60),
                ..rd()
            },
        ),
        (
            "must-revalidate, proxy-revalidate",
            ResponseDirectives { must_revalidate: true, proxy_revalidate: true, ..rd() },
        ),
        ("", rd()),
        (",,, ,", rd()),
        ("foo=bar, ext", rd()),
        ("max age=5, =5, max-age=7", ResponseDirectives { max_age: Some(7), ..rd() }),
        ("\u{00e9}t\u{00e9}=1, max-age=3", ResponseDirectives { max_age: Some(3), ..rd() }),
        ("x=\"a, max-age=1\", max-age=9", ResponseDirectives { max_age: Some(9), ..rd() }),
    ];
    for (input, want) in cases {
        assert_eq!(parse_response(&[input.as_bytes()]), Ok(want), "{input:?}");
    }
    // Several field lines are one list.
    let got = parse_response(&[b"max-age=10", b"no-store"]);
    assert_eq!(got, Ok(ResponseDirectives { max_age: Some(10), no_store: true, ..rd() }));
    assert!(parse_response(&[b"max-age=10\xff"]).is_err());
}

#[test]
fn request_directives_table() {
    let rd = RequestDirectives::default;
    let cases: Vec<(&str, RequestDirectives)> = vec![
        ("no-cache", RequestDirectives { no_cache: true, ..rd() }),
        ("only-if-cached", RequestDirectives { only_if_cached: true, ..rd() }),
        ("max-age=0", RequestDirectives { max_age: Some(0), ..rd() }),
        ("max-age=x", RequestDirectives { max_age: Some(0), ..rd() }),
        ("max-stale", RequestDirectives { max_stale: Some(None), ..rd() }),
        ("max-stale=5", RequestDirectives { max_stale: Some(Some(5)), ..rd() }),
        ("max-stale, max-stale=5", RequestDirectives { max_stale: Some(Some(5)), ..rd() }),
        ("max-stale=9, max-stale=5", RequestDirectives { max_stale: Some(Some(5)), ..rd() }),
        ("max-stale=oops", RequestDirectives { max_stale: Some(Some(0)), ..rd() }),
        ("min-fresh=5, min-fresh=10", RequestDirectives { min_fresh: Some(10), ..rd() }),
        ("min-fresh=garbage", RequestDirectives { min_fresh: Some(MAX_DELTA), ..rd() }),
    ];
    for (input, want) in cases {
        assert_eq!(parse_request(&[input.as_bytes()], &[]), Ok(want), "{input:?}");
    }
    assert_eq!(parse_request(&[], &[b"no-cache"]), Ok(RequestDirectives { no_cache: true, ..rd() }));
    // Cache-Control wins over Pragma.
    assert_eq!(
        parse_request(&[b"max-age=5"], &[b"no-cache"]),
        Ok(RequestDirectives { max_age: Some(5), ..rd() })
    );
}

#[test]
fn storability_table() {
    type Case<'a> = (&'a str, bool, bool, u32, Vec<(&'a str, &'a str)>, Result<u64, NotStored>);
    let cases: Vec<Case> = vec![
        ("plain max-age", true, false, 200, vec![("cache-control", "max-age=60")], Ok(60)),
        ("s-maxage wins", true, false, 200, vec![("cache-control", "max-age=5, s-maxage=50")], Ok(50)),
        ("404 cacheable", true, false, 404, vec![("cache-control", "max-age=5")], Ok(5)),
        ("method", false, false, 200, vec![("cache-control", "max-age=5")], Err(NotStored::Method)),
        ("500 never", true, false, 500, vec![("cache-control", "max-age=5")], Err(NotStored::Status)),
        ("206 never", true, false, 206, vec![("cache-control", "max-age=5")], Err(NotStored::Status)),
        (
            "no-store",
            true,
            false,
            200,
            vec![("cache-control", "max-age=5, no-store")],
            Err(NotStored::NoStore),
        ),
        ("private", true, false, 200, vec![("cache-control", "private, max-age=5")], Err(NotStored::Private)),
        ("auth", true, true, 200, vec![("cache-control", "max-age=5")], Err(NotStored::Authorization)),
        ("auth public", true, true, 200, vec![("cache-control", "public, max-age=5")], Ok(5)),
        ("auth s-maxage", true, true, 200, vec![("cache-control", "s-maxage=7")], Ok(7)),
        (
            "auth must-revalidate",
            true,
            true,
            200,
            vec![("cache-control", "must-revalidate, max-age=3")],
            Ok(3),
        ),
        (
            "vary star",
            true,
            false,
            200,
            vec![("cache-control", "max-age=5"), ("vary", "accept, *")],
            Err(NotStored::VaryStar),
        ),
        (
            "set-cookie",
            true,
            false,
            200,
            vec![("cache-control", "max-age=5"), ("set-cookie", "a=b")],
            Err(NotStored::SetCookie),
        ),
        (
            "no-cache",
            true,
            false,
            200,
            vec![("cache-control", "no-cache, max-age=5")],
            Err(NotStored::NoCache),
        ),
        (
            "no-cache with an etag: stored, always validated",
            true,
            false,
            200,
            vec![("cache-control", "no-cache, max-age=5"), ("etag", "\"v1\"")],
            Ok(0),
        ),
        (
            "no-cache with last-modified",
            true,
            false,
            200,
            vec![("cache-control", "no-cache"), ("last-modified", "Tue, 14 Nov 2023 22:13:20 GMT")],
            Ok(0),
        ),
        ("nothing", true, false, 200, vec![], Err(NotStored::NoFreshness)),
        (
            "expires - date",
            true,
            false,
            200,
            vec![("date", "Tue, 14 Nov 2023 22:13:20 GMT"), ("expires", "Tue, 14 Nov 2023 22:14:20 GMT")],
            Ok(60),
        ),
        ("invalid expires", true, false, 200, vec![("expires", "0")], Err(NotStored::NoFreshness)),
        (
            "max-age=0 with a window",
            true,
            false,
            200,
            vec![("cache-control", "max-age=0, stale-if-error=60")],
            Ok(0),
        ),
        (
            "garbled max-age",
            true,
            false,
            200,
            vec![("cache-control", "max-age=abc")],
            Err(NotStored::NoFreshness),
        ),
        (
            "max-age beats expires",
            true,
            false,
            200,
            vec![("cache-control", "max-age=9"), ("expires", "Tue, 14 Nov 2023 22:14:20 GMT")],
            Ok(9),
        ),
        (
            "absurd max-age",
            true,
            false,
            200,
            vec![("cache-control", "max-age=184467440737095516160")],
            Ok(MAX_DELTA),
        ),
    ];
    for (name, method_ok, auth, status, headers, want) in cases {
        let got = storable(method_ok, auth, status, &h(&headers), NOW, LIMITS).map(|f| f.lifetime);
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn non_utf8_fields_are_not_cacheable() {
    for field in ["cache-control", "vary", "date", "expires", "age"] {
        let headers = vec![
            ("cache-control".to_owned(), b"max-age=5".to_vec()),
            (field.to_owned(), b"\xff\xfe".to_vec()),
        ];
        assert_eq!(
            storable(true, false, 200, &headers, NOW, LIMITS).map(|f| f.lifetime),
            Err(NotStored::NotText),
            "{field}"
        );
    }
    assert_eq!(stored_headers(&[("x".to_owned(), b"\x80".to_vec())]), None);
    assert_eq!(
        vary_values(&[("accept".to_owned(), b"\x80".to_vec())], &["accept".to_owned()]),
        Err(NoKey::Malformed)
    );
    assert!(!not_modified(None, Some("\u{fffd}"), None, Some("Tue, 14 Nov 2023 22:13:20 GMT")));
}

#[test]
fn huge_vary_lists_are_not_stored() {
    let many: Vec<String> = (0..40).map(|i| format!("x-h{i}")).collect();
    let headers = h(&[("vary", &many.join(", "))]);
    assert_eq!(vary_names(&headers), Err(NotStored::VaryTooLong));
    let lines: Vec<(String, Vec<u8>)> =
        (0..1000).map(|i| ("vary".to_owned(), format!("x-{i}").into_bytes())).collect();
    assert_eq!(vary_names(&lines), Err(NotStored::VaryTooLong));
    assert_eq!(
        vary_names(&h(&[("vary", "Accept, accept-encoding, ACCEPT")])),
        Ok(vec!["accept".to_owned(), "accept-encoding".to_owned()])
    );
}

#[test]
fn stale_windows_are_clamped_and_revalidation_forbids_them() {
    let headers = h(&[("cache-control", "max-age=1, stale-while-revalidate=99999, stale-if-error=5")]);
    let f = storable(true, false, 200, &headers, NOW, StaleLimits { while_revalidate: 30, if_error: 60 })
        .unwrap();
    assert_eq!((f.stale_while_revalidate, f.stale_if_error), (30, 5));
    let headers =
        h(&[("cache-control", "max-age=1, must-revalidate, stale-while-revalidate=30, stale-if-error=5")]);
    let f = storable(true, false, 200, &headers, NOW, LIMITS).unwrap();
    assert_eq!((f.stale_while_revalidate, f.stale_if_error), (0, 0));
}

fn fresh(lifetime: u64, swr: u64, sie: u64) -> Freshness {
    Freshness {
        lifetime,
        date: NOW,
        age_value: 0,
        stale_while_revalidate: swr,
        stale_if_error: sie,
        must_revalidate: false,
        s_maxage: false,
    }
}

#[test]
fn age_calculation_table() {
    // (date, age header, request time, response time, now) -> age
    let cases = [
        ((NOW, 0), (NOW, NOW, NOW), 0),
        ((NOW, 0), (NOW, NOW, NOW + 10), 10),
        ((NOW, 5), (NOW, NOW, NOW + 10), 15),
        // The origin's clock is 20 s behind: the apparent age counts.
        ((NOW - 20, 0), (NOW, NOW, NOW), 20),
        // The response took 3 s: the delay is added to the Age value.
        ((NOW, 4), (NOW - 3, NOW, NOW), 7),
        // A Date in the future never makes the age negative.
        ((NOW + 100, 0), (NOW, NOW, NOW + 1), 1),
    ];
    for ((date, age_value), (req, resp, now), want) in cases {
        let f = Freshness { date, age_value, ..fresh(60, 0, 0) };
        assert_eq!(current_age(&f, req, resp, now), want, "{date} {age_value} {req} {resp} {now}");
    }
}

#[test]
fn usability_table() {
    let rd = RequestDirectives::default;
    let cases: Vec<(&str, Freshness, u64, RequestDirectives, Usable)> = vec![
        ("fresh", fresh(60, 0, 0), 10, rd(), Usable::Fresh),
        ("just expired", fresh(60, 0, 0), 60, rd(), Usable::Stale),
        (
            "no-cache fresh",
            fresh(60, 0, 0),
            10,
            RequestDirectives { no_cache: true, ..rd() },
            Usable::NotForRequest,
        ),
        (
            "client max-age",
            fresh(60, 0, 0),
            10,
            RequestDirectives { max_age: Some(5), ..rd() },
            Usable::NotForRequest,
        ),
        (
            "client max-age ok",
            fresh(60, 0, 0),
            10,
            RequestDirectives { max_age: Some(10), ..rd() },
            Usable::Fresh,
        ),
        (
            "min-fresh",
            fresh(60, 0, 0),
            50,
            RequestDirectives { min_fresh: Some(20), ..rd() },
            Usable::NotForRequest,
        ),
        (
            "max-stale any",
            fresh(60, 0, 0),
            600,
            RequestDirectives { max_stale: Some(None), ..rd() },
            Usable::StaleAllowed,
        ),
        (
            "max-stale 5 ok",
            fresh(60, 0, 0),
            64,
            RequestDirectives { max_stale: Some(Some(5)), ..rd() },
            Usable::StaleAllowed,
        ),
        (
            "max-stale 5 over",
            fresh(60, 0, 0),
            66,
            RequestDirectives { max_stale: Some(Some(5)), ..rd() },
            Usable::Stale,
        ),
        (
            "max-stale vs must-revalidate",
            Freshness { must_revalidate: true, ..fresh(60, 0, 0) },
            61,
            RequestDirectives { max_stale: Some(None), ..rd() },
            Usable::Stale,
        ),
        (
            "max-stale vs s-maxage",
            Freshness { s_maxage: true, ..fresh(60, 0, 0) },
            61,
            RequestDirectives { max_stale: Some(None), ..rd() },
            Usable::Stale,
        ),
        ("swr inside", fresh(60, 30, 0), 80, rd(), Usable::StaleWhileRevalidate),
        ("swr past", fresh(60, 30, 0), 91, rd(), Usable::Stale),
        (
            "swr and no-cache",
            fresh(60, 30, 0),
            80,
            RequestDirectives { no_cache: true, ..rd() },
            Usable::Stale,
        ),
    ];
    for (name, f, age, req, want) in cases {
        assert_eq!(usable(&f, age, &req), want, "{name}");
    }
    assert!(usable_on_error(&fresh(60, 0, 30), 80));
    assert!(!usable_on_error(&fresh(60, 0, 30), 91));
    assert!(!usable_on_error(&fresh(60, 0, 0), 61));
}

#[test]
fn cache_key_table() {
    let none = QueryRule::default();
    let include = QueryRule { include: vec!["a".into(), "b".into()], exclude: vec![] };
    let exclude = QueryRule { include: vec![], exclude: vec!["utm".into()] };
    let k = |m: &str, a: &str, p: &str, r: &QueryRule, c: Option<&str>| primary_key(m, a, p, r, c);
    assert_eq!(k("HEAD", "a.example", "/x", &none, None), k("GET", "a.example", "/x", &none, None));
    assert_eq!(k("GET", "A.Example", "/x", &none, None), k("GET", "a.example", "/x", &none, None));
    assert_eq!(k("GET", "h", "/a/../x", &none, None), k("GET", "h", "/x", &none, None));
    assert_eq!(k("GET", "h", "//x", &none, None), k("GET", "h", "/x", &none, None));
    assert_eq!(k("GET", "h", "/x?b=2&a=1", &none, None), k("GET", "h", "/x?a=1&b=2", &none, None));
    assert_ne!(k("GET", "h", "/x?a=1", &none, None), k("GET", "h", "/x?a=2", &none, None));
    assert_eq!(k("GET", "h", "/x?a=1&z=9", &include, None), k("GET", "h", "/x?a=1", &include, None));
    assert_eq!(k("GET", "h", "/x?utm=1&a=1", &exclude, None), k("GET", "h", "/x?a=1", &exclude, None));
    assert_ne!(k("GET", "h", "/x", &none, Some("alice")), k("GET", "h", "/x", &none, Some("bob")));
    assert_ne!(k("GET", "h", "/x", &none, Some("alice")), k("GET", "h", "/x", &none, None));
    assert_ne!(k("GET", "h1", "/x", &none, None), k("GET", "h2", "/x", &none, None));
    assert_eq!(k("GET", "h", "/a%2Fb", &none, None), Err(NoKey::BadPath));
    assert_eq!(normalize_query("&&b=1&&a", &none), "a&b=1");
}

#[test]
fn vary_values_join_lines() {
    let req = h(&[("accept", "a/b"), ("accept", "c/d ,  e/f")]);
    assert_eq!(
        vary_values(&req, &["accept".into(), "x".into()]),
        Ok(vec![Some("a/b, c/d, e/f".into()), None])
    );
}

#[test]
fn conditional_table() {
    let lm = Some("Tue, 14 Nov 2023 22:13:20 GMT");
    type Case<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>, Option<&'a str>, bool);
    let cases: Vec<Case> = vec![
        (Some("\"v1\""), None, Some("\"v1\""), None, true),
        (Some("W/\"v1\""), None, Some("\"v1\""), None, true),
        (Some("\"v1\""), None, Some("W/\"v1\""), None, true),
        (Some("\"v0\", \"v1\""), None, Some("\"v1\""), None, true),
        (Some("\"v2\""), None, Some("\"v1\""), None, false),
        (Some("*"), None, Some("\"v1\""), None, true),
        (Some("\"v1\""), None, None, None, false),
        (Some("garbage"), None, Some("\"v1\""), None, false),
        // If-None-Match present: If-Modified-Since is ignored.
        (Some("\"v2\""), Some("Wed, 15 Nov 2023 00:00:00 GMT"), Some("\"v1\""), lm, false),
        (None, Some("Wed, 15 Nov 2023 00:00:00 GMT"), None, lm, true),
        (None, Some("Tue, 14 Nov 2023 22:13:20 GMT"), None, lm, true),
        (None, Some("Mon, 13 Nov 2023 00:00:00 GMT"), None, lm, false),
        (None, Some("yesterday"), None, lm, false),
        (None, None, Some("\"v1\""), lm, false),
    ];
    for (inm, ims, etag, last_modified, want) in cases {
        assert_eq!(not_modified(inm, ims, etag, last_modified), want, "{inm:?} {ims:?} {etag:?}");
    }
}

#[test]
fn http_dates() {
    assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
    assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
    assert_eq!(parse_http_date("Tue, 14 Nov 2023 22:13:20 GMT"), Some(NOW));
    for bad in [
        "",
        "0",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 06 Foo 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 25:49:37 GMT",
    ] {
        assert_eq!(parse_http_date(bad), None, "{bad:?}");
    }
}

fn object(body: usize, vary: &[&str]) -> Object {
    Object {
        status: 200,
        headers: vec![("content-type".into(), "text/plain".into())],
        body: vec![b'x'; body],
        freshness: fresh(60, 0, 0),
        request_time: NOW,
        response_time: NOW,
        vary: vary.iter().map(|s| s.to_string()).collect(),
        tags: Vec::new(),
        request_ms: 1_000,
    }
}

#[test]
fn store_evicts_least_recently_used_and_counts_bytes() {
    let mut store = Store::new(3000);
    assert!(store.insert("a", &[], object(800, &[])).stored);
    assert!(store.insert("b", &[], object(800, &[])).stored);
    assert!(store.insert("c", &[], object(800, &[])).stored);
    assert!(store.get(&store::full_key("a", &[])).is_some()); // a is now the most recent
    let done = store.insert("d", &[], object(800, &[]));
    assert_eq!(done, store::Inserted { stored: true, evicted: 1 });
    assert!(store.get(&store::full_key("b", &[])).is_none());
    assert!(store.get(&store::full_key("a", &[])).is_some());
    assert!(store.bytes() <= 3000);
    // Larger than the whole store: not stored, nothing evicted.
    assert_eq!(store.insert("e", &[], object(5000, &[])), store::Inserted::default());
    assert_eq!(store.len(), 3);
    // Invalidation drops every variant and gives the bytes back.
    let before = store.bytes();
    store.insert("v", &[Some("en".into())], object(10, &["accept-language"]));
    store.insert("v", &[Some("fr".into())], object(10, &["accept-language"]));
    assert_eq!(store.vary_of("v"), Some(&["accept-language".to_owned()][..]));
    assert_eq!(store.invalidate("v"), 2);
    assert!(store.bytes() <= before);
    assert_eq!(store.vary_of("v"), None);
}

#[test]
fn store_replaces_variants_when_vary_changes() {
    let mut store = Store::new(100_000);
    store.insert("p", &[Some("en".into())], object(10, &["accept-language"]));
    store.insert("p", &[Some("gzip".into())], object(10, &["accept-encoding"]));
    assert_eq!(store.len(), 1);
    assert!(store.get(&store::full_key("p", &[Some("en".into())])).is_none());
    // Storing the same variant again replaces it, bytes stay counted once.
    let bytes = store.bytes();
    store.insert("p", &[Some("gzip".into())], object(10, &["accept-encoding"]));
    assert_eq!(store.bytes(), bytes);
}

#[test]
fn headers_to_store_and_streams() {
    let headers = h(&[
        (":status", "200"),
        ("content-type", "text/plain"),
        ("content-length", "5"),
        ("connection", "x-hop"),
        ("x-hop", "1"),
        ("transfer-encoding", "chunked"),
        ("age", "3"),
        ("etag", "\"v\""),
    ]);
    assert_eq!(
        stored_headers(&headers),
        Some(vec![("content-type".into(), "text/plain".into()), ("etag".into(), "\"v\"".into())])
    );
    let streamed = Err(NotStored::Streamed);
    let too_large = Err(NotStored::TooLarge);
    assert_eq!(
        body_storable(200, &h(&[("content-type", "text/event-stream; charset=utf-8")]), 100),
        streamed
    );
    assert_eq!(body_storable(200, &h(&[("content-type", "TEXT/EVENT-STREAM")]), 100), streamed);
    assert_eq!(body_storable(101, &[], 100), streamed);
    assert_eq!(body_storable(200, &h(&[("upgrade", "websocket")]), 100), streamed);
    assert_eq!(body_storable(200, &h(&[("content-length", "101")]), 100), too_large);
    assert_eq!(body_storable(200, &h(&[("content-length", "nope")]), 100), too_large);
    assert_eq!(body_storable(200, &h(&[("content-length", "100")]), 100), Ok(()));
    assert_eq!(body_storable(200, &h(&[("transfer-encoding", "chunked")]), 100), Ok(()));
}

#[test]
fn cache_status_renders() {
    assert_eq!(Status::Hit { ttl: 5, detail: None, collapsed: false }.render(), "tollgate; hit; ttl=5");
    assert_eq!(
        Status::Forward { fwd: "miss", stored: true, detail: None }.render(),
        "tollgate; fwd=miss; stored"
    );
    assert_eq!(
        Status::Hit { ttl: -3, detail: Some("stale-while-revalidate"), collapsed: false }.render(),
        "tollgate; hit; ttl=-3; detail=stale-while-revalidate"
    );
}

#[test]
fn config_example_parses_and_bad_configs_name_the_field() {
    let example = include_bytes!("../../../../filters/cache/config.example.json");
    let config = Config::from_json(example).unwrap();
    assert_eq!(config.methods, ["GET", "HEAD"]);
    assert!(config.origin.is_some());
    let shared = Config::from_json(br#"{"shared": {"slots": 256, "max_bytes": 1048576}}"#).unwrap().shared;
    assert_eq!(shared.map(|s| (s.slots, s.slot_bytes)), Some((256, 4096)));
    assert!(Config::from_json(br#"{"shared": {"slots": 0}}"#).unwrap().shared.is_none());
    assert_eq!(Config::from_json(b"{}").unwrap().shared.map(|s| s.slots), Some(1024));
    let cases = [
        (r#"{"max_object_bytes": 0}"#, "`max_object_bytes`"),
        (r#"{"max_object_bytes": 2048, "max_memory_bytes": 1024}"#, "`max_memory_bytes`"),
        (r#"{"default_methods": ["POST"]}"#, "`default_methods[0]`"),
        (r#"{"default_methods": []}"#, "`default_methods`"),
        (r#"{"query": {"include": ["a=b"]}}"#, "`query.include[0]`"),
        (r#"{"query": {"include": ["a"], "exclude": ["b"]}}"#, "`query`"),
        (r#"{"stale_while_revalidate_max": "5"}"#, "`stale_while_revalidate_max`"),
        (r#"{"origin_authority": "x"}"#, "`origin_authority`"),
        (r#"{"origin_cluster": ""}"#, "`origin_cluster`"),
        (r#"{"lock_timeout": "2m"}"#, "`lock_timeout`"),
        (r#"{"shared": {"slots": 70000}}"#, "`shared.slots`"),
        (r#"{"shared": {"slots": 1024, "max_bytes": 4096}}"#, "`shared.max_bytes`"),
        (r#"{"shared": {"size": 1}}"#, "size"),
        (r#"{"key_service": {"cluster": "", "token": "t"}}"#, "`key_service.cluster`"),
        (
            r#"{"key_service": {"cluster": "k", "token": "t", "poll_interval": "1ms"}}"#,
            "`key_service.poll_interval`",
        ),
        (r#"{"surprise": 1}"#, "surprise"),
    ];
    for (json, field) in cases {
        let e = Config::from_json(json.as_bytes()).unwrap_err().to_string();
        assert!(e.starts_with("invalid cache config: ") && e.contains(field), "{json}: {e}");
    }
}

#[test]
fn a_304_freshens_the_stored_headers() {
    let stored = vec![
        ("cache-control".to_owned(), "max-age=1".to_owned()),
        ("etag".to_owned(), "\"v1\"".to_owned()),
        ("link".to_owned(), "<a>".to_owned()),
        ("link".to_owned(), "<b>".to_owned()),
        ("content-type".to_owned(), "text/plain".to_owned()),
    ];
    let not_modified = h(&[
        (":status", "304"),
        ("cache-control", "max-age=60"),
        ("link", "<c>"),
        ("content-length", "0"),
        ("date", "Tue, 14 Nov 2023 22:13:20 GMT"),
    ]);
    let got = freshened_headers(&stored, &not_modified);
    assert_eq!(
        got,
        h(&[
            ("etag", "\"v1\""),
            ("content-type", "text/plain"),
            ("cache-control", "max-age=60"),
            ("link", "<c>"),
            ("date", "Tue, 14 Nov 2023 22:13:20 GMT"),
        ])
    );
}

mod purges {
    use super::*;
    use crate::cache::purge::{Log, Purge, Target, Verdict, tags_of};
    use crate::cache::shared::{Entry, Lock, decode_entry, encode_entry, slot_of};

    const P: &str = "GET\napi.example.com\n/products/7\na=1&b=2";
    const P_CONSUMER: &str = "GET\napi.example.com\n/products/7\na=1&b=2\nc_1";

    fn purge(target: Target, soft: bool, at_ms: u64) -> Purge {
        Purge { target, soft, at_ms }
    }

    fn tag(t: &str) -> Target {
        Target::Tag(t.into())
    }

    #[test]
    fn targets_match_by_tag_prefix_url_and_host() {
        let tags = vec!["product-7".to_owned(), "catalog".to_owned()];
        let cases: Vec<(Target, &str, bool)> = vec![
            (Target::All, P, true),
            (tag("catalog"), P, true),
            (tag("product-8"), P, false),
            (tag("catalo"), P, false),
            (Target::Prefix { host: None, prefix: "/products/".into() }, P, true),
            (Target::Prefix { host: None, prefix: "/products/7?a=1".into() }, P, true),
            (Target::Prefix { host: None, prefix: "/products/7?b".into() }, P, false),
            (Target::Prefix { host: None, prefix: "/orders/".into() }, P, false),
            (Target::Prefix { host: Some("API.example.com".into()), prefix: "/".into() }, P, true),
            (Target::Prefix { host: Some("other.example.com".into()), prefix: "/".into() }, P, false),
            (Target::Url { host: None, url: "/products/7?a=1&b=2".into() }, P, true),
            (Target::Url { host: None, url: "/products/7?a=1&b=2".into() }, P_CONSUMER, true),
            (Target::Url { host: None, url: "/products/7".into() }, P, false),
            (Target::Url { host: None, url: "/products/7?a=1".into() }, P, false),
            (Target::Url { host: Some("other".into()), url: "/products/7?a=1&b=2".into() }, P, false),
            (Target::Url { host: None, url: "/products/7?a=1&b=2".into() }, "garbage", false),
        ];
        for (target, primary, expected) in cases {
            assert_eq!(target.matches(primary, &tags), expected, "{target:?} on {primary:?}");
        }
    }

    #[test]
    fn a_purge_applies_to_responses_fetched_at_or_before_it_and_never_after() {
        let mut log = Log::default();
        log.push(purge(tag("a"), false, 5_000));
        let tagged = vec!["a".to_owned()];
        assert_eq!(log.verdict(P, &tagged, 4_999), Verdict::Gone);
        assert_eq!(log.verdict(P, &tagged, 5_000), Verdict::Gone, "fetched in the same ms");
        assert_eq!(log.verdict(P, &tagged, 5_001), Verdict::Keep, "fetched after the purge");
        assert_eq!(log.verdict(P, &[], 1), Verdict::Keep, "another tag");
        log.push(purge(tag("b"), true, 6_000));
        let both = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(log.verdict(P, &both, 5_500), Verdict::StaleSince(6_000));
        assert_eq!(log.verdict(P, &both, 4_000), Verdict::Gone, "a hard purge wins over a soft one");
        assert_eq!(log.seq, 2);
    }

    #[test]
    fn times_only_grow_and_a_hard_purge_of_everything_clears_the_log() {
        let mut log = Log::default();
        log.push(purge(tag("a"), false, 9_000));
        log.push(purge(tag("b"), false, 3_000)); // a clock that went back
        assert_eq!(log.records.last().map(|r| r.at_ms), Some(9_000));
        log.push(purge(Target::All, true, 10_000));
        assert_eq!(log.verdict(P, &[], 9_500), Verdict::StaleSince(10_000), "soft: kept, stale");
        log.push(purge(Target::All, false, 11_000));
        assert!(log.records.is_empty());
        assert_eq!(log.floor_ms, 11_000);
        assert_eq!(log.verdict(P, &[], 11_000), Verdict::Gone);
        assert_eq!(log.verdict(P, &[], 11_001), Verdict::Keep);
    }

    #[test]
    fn a_full_log_drops_its_oldest_records_into_the_floor_purging_more_never_less() {
        let mut log = Log::default();
        for i in 0..(crate::cache::purge::MAX_RECORDS as u64 + 10) {
            log.push(purge(tag(&format!("t{i}")), true, 1_000 + i));
        }
        assert_eq!(log.records.len(), crate::cache::purge::MAX_RECORDS);
        assert_eq!(log.floor_ms, 1_009);
        // t0 was dropped: an untagged response fetched before it is now gone too.
        assert_eq!(log.verdict(P, &[], 1_000), Verdict::Gone);
        assert_eq!(log.verdict(P, &[], 1_010), Verdict::Keep);
    }

    #[test]
    fn the_log_round_trips_and_garbage_is_refused() {
        let mut log = Log::default();
        log.push(purge(tag("a"), false, 1));
        log.push(purge(Target::Prefix { host: Some("h".into()), prefix: "/p".into() }, true, 2));
        log.push(purge(Target::Url { host: None, url: "/u?x=1".into() }, false, 3));
        log.push(purge(Target::All, true, 4));
        assert_eq!(Log::decode(&log.encode()), Some(log.clone()));
        let bytes = log.encode();
        for cut in [1, 8, 17, bytes.len() - 1] {
            assert_eq!(Log::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut bad_kind = Log::default().encode();
        bad_kind.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 9, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Log::decode(&bad_kind), None);
    }

    #[test]
    fn tags_come_from_cache_tag_and_surrogate_key() {
        let headers = vec![
            ("cache-tag".to_owned(), "product-7, catalog,,".to_owned()),
            ("surrogate-key".to_owned(), "catalog  homepage".to_owned()),
            ("x-other".to_owned(), "nope".to_owned()),
        ];
        assert_eq!(tags_of(&headers), vec!["product-7", "catalog", "homepage"]);
        let many =
            vec![("cache-tag".to_owned(), (0..100).map(|i| format!("t{i}")).collect::<Vec<_>>().join(","))];
        assert_eq!(tags_of(&many).len(), 64);
    }

    #[test]
    fn entries_round_trip_through_the_shared_tier_and_garbage_is_a_miss() {
        let mut o = object(100, &["accept-encoding"]);
        o.tags = vec!["t".into()];
        o.freshness.must_revalidate = true;
        let bytes = encode_entry(P, "full", &o);
        let entry = Entry { primary: P.into(), full: "full".into(), object: o };
        assert_eq!(decode_entry(&bytes), Some(entry));
        for cut in [0, 1, 5, bytes.len() / 2, bytes.len() - 1] {
            assert_eq!(decode_entry(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_entry(&longer), None);
        assert_eq!(decode_entry(&[1, 0xff, 0xff, 0xff, 0xff]), None, "a length past the end");
        assert!(slot_of(P, 1024) < 1024);
        assert_eq!(slot_of(P, 0), 0);
    }

    #[test]
    fn locks_round_trip_and_anything_else_is_released() {
        let lock = Lock { key: 7, owner: 9, until_ms: 1_000 };
        assert_eq!(Lock::decode(Some(&lock.encode())), lock);
        assert!(lock.held(999));
        assert!(!lock.held(1_000));
        assert_eq!(Lock::decode(Some(b"short")), Lock::default());
        assert_eq!(Lock::decode(None), Lock::default());
    }
}
