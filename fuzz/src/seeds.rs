//! The hand-picked seeds of every corpus: RFC examples, real tokens and keys, the example
//! configurations, and records encoded by the code that writes them. `tests/corpus.rs`
//! (`write_seeds`, ignored by default) writes them to `corpus/<target>/seed-<name>`.

use hmac::Mac as _;
use serde_json::json;
use sha2::Sha256;

use tollgate_core::feed;
use tollgate_core::jwt::b64;
use tollgate_core::key;
use tollgate_core::key_auth::cache as ka_cache;
use tollgate_core::rate_limit::bucket;
use tollgate_core::signature::{cache as sig_cache, digest, replay, verify::KeyMaterial};

/// One seed: target, name, bytes.
pub type Seed = (&'static str, String, Vec<u8>);

/// RFC 7515 A.1 (HS256).
const RFC7515_A1: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
/// RFC 7515 A.3 (ES256).
const RFC7515_A3: &str = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
/// RFC 7515 A.5 (unsecured).
const RFC7515_A5: &str = "eyJhbGciOiJub25lIn0.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.";
/// RFC 7520 4.1 (RS256 over a non-JSON payload).
const RFC7520_RS256: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImJpbGJvLmJhZ2dpbnNAaG9iYml0b24uZXhhbXBsZSJ9.SXTigJlzIGEgZGFuZ2Vyb3VzIGJ1c2luZXNzLCBGcm9kbywgZ29pbmcgb3V0IHlvdXIgZG9vci4gWW91IHN0ZXAgb250byB0aGUgcm9hZCwgYW5kIGlmIHlvdSBkb24ndCBrZWVwIHlvdXIgZmVldCwgdGhlcmXigJlzIG5vIGtub3dpbmcgd2hlcmUgeW91IG1pZ2h0IGJlIHN3ZXB0IG9mZiB0by4.MRjdkly7_-oTPTS3AXP41iQIGKa80A0ZmTuV5MEaHoxnW2e5CZ5NlKtainoFmKZopdHM1O2U4mwzJdQx996ivp83xuglII7PNDi84wnB-BDkoBwA78185hX-Es4JIwmDLJK3lfWRa-XtL0RnltuYv746iYTh_qHRD68BNt1uSNCrUCTJDt5aAE6x8wW1Kt9eRo4QPocSadnHXFxnt8Is9UzpERV0ePPQdLuW3IS_de3xyIrDaLGdjluPxUAhb6L2aXic1U12podGU0KLUQSE_oI-ZnmKJ3F4uOZDnd6QZWJushZ41Axf_fcIe8u9ipH84ogoree7vjbU5y18kDquDg";
/// The RFC 7515 A.1 HMAC key.
const RFC7515_A1_KEY: &str =
    "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";

fn hs256(header: &str, claims: &str) -> String {
    let key = b64::decode(RFC7515_A1_KEY.as_bytes()).expect("RFC key");
    let input = format!("{}.{}", b64::encode(header.as_bytes()), b64::encode(claims.as_bytes()));
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(input.as_bytes());
    format!("{input}.{}", b64::encode(&mac.finalize().into_bytes()))
}

/// RFC 9421 B.2 test request and response.
const B2_REQUEST: &str = "POST https://example.com/foo?param=Value&Pet=dog
Host: example.com
Date: Tue, 20 Apr 2021 02:07:55 GMT
Content-Type: application/json
Content-Digest: sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:
Content-Length: 18";
const B2_RESPONSE: &str = "200
Date: Tue, 20 Apr 2021 02:07:56 GMT
Content-Type: application/json
Content-Digest: sha-512=:mEWXIS7MaLRuGgxOBdODa3xqM1XdEvxoYhvlCFJ41QJgJc4GTsPp29l5oGX69wWdXymyU0rjJuahq4l5aGgfLQ==:
Content-Length: 23";
const B2_BODY: &str = r#"{"hello": "world"}"#;

/// RFC 9421 B.2.1–B.2.6 `Signature-Input` members, with the `Signature` of B.2.5 (HMAC) and
/// B.2.6 (Ed25519); the RSA and ECDSA signatures of B.2.1–B.2.4 are stood in for by a short
/// placeholder (no such key is ever configured here).
const B2_SIGNATURES: [(&str, &str, &str); 6] = [
    (
        "b21",
        r#"sig-b21=();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd""#,
        "sig-b21=:AAAA:",
    ),
    (
        "b22",
        r#"sig-b22=("@authority" "content-digest" "@query-param";name="Pet");created=1618884473;keyid="test-key-rsa-pss";tag="header-example""#,
        "sig-b22=:AAAA:",
    ),
    (
        "b23",
        r#"sig-b23=("date" "@method" "@path" "@query" "@authority" "content-type" "content-digest" "content-length");created=1618884473;keyid="test-key-rsa-pss""#,
        "sig-b23=:AAAA:",
    ),
    (
        "b24",
        r#"sig-b24=("@status" "content-type" "content-digest" "content-length");created=1618884473;keyid="test-key-ecc-p256""#,
        "sig-b24=:AAAA:",
    ),
    (
        "b25",
        r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#,
        "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:",
    ),
    (
        "b26",
        r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#,
        "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:",
    ),
];

fn seed(target: &'static str, name: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Seed {
    (target, name.into(), bytes.into())
}

fn tagged(target: &'static str, name: &str, tag: u8, bytes: &[u8]) -> Seed {
    let mut out = vec![tag];
    out.extend_from_slice(bytes);
    seed(target, name, out)
}

/// Seeds of the targets whose inputs are built here. Configuration seeds come from the
/// example configurations and the docs (see `tests/corpus.rs`).
pub fn generated() -> Vec<Seed> {
    let mut out = Vec::new();

    // b64url
    for (name, text) in [
        ("signature", "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
        ("header", "eyJhbGciOiJFUzI1NiJ9"),
        ("short", "-_8"),
        ("stray-bits", "QR"),
        ("padded", "QQ=="),
    ] {
        out.push(seed("b64url", name, text));
    }

    // jws
    for (name, token) in [
        ("rfc7515-a1", RFC7515_A1.to_owned()),
        ("rfc7515-a3", RFC7515_A3.to_owned()),
        ("rfc7515-a5-none", RFC7515_A5.to_owned()),
        ("rfc7520-rs256", RFC7520_RS256.to_owned()),
        (
            "hs256-claims",
            hs256(
                r#"{"alg":"HS256","typ":"JWT","kid":"hs"}"#,
                r#"{"iss":"joe","aud":["api","other"],"sub":"alice","exp":1700000600,"iat":1700000000,"nbf":1699999990,"scope":"read write","role":["admin","user"],"n":1.5}"#,
            ),
        ),
        ("crit", hs256(r#"{"alg":"HS256","crit":["exp"]}"#, r#"{"iss":"joe"}"#)),
        ("embedded-jwk", hs256(r#"{"alg":"RS256","jwk":{"kty":"RSA"}}"#, "{}")),
        ("es512", hs256(r#"{"alg":"ES512","kid":"es"}"#, r#"{"iss":"joe","exp":1.5e9}"#)),
    ] {
        out.push(seed("jws", name, token));
    }

    // jwks
    out.push(seed("jwks", "test-keys", crate::TEST_JWKS));
    out.push(seed(
        "jwks",
        "rfc7517-a1",
        r#"{"keys":[{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YilurN5XfdYUg3ot2M1WtL2cvuXkX3T_So","use":"enc","kid":"1"},{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}]}"#,
    ));
    out.push(seed(
        "jwks",
        "alg-mismatch",
        r#"{"keys":[{"kty":"oct","k":"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ","alg":"RS256"}]}"#,
    ));
    out.push(seed(
        "jwks",
        "duplicate-kid",
        r#"{"keys":[{"kty":"oct","kid":"a","k":"AQID"},{"kty":"oct","kid":"a","k":"AQID"}]}"#,
    ));
    out.push(seed(
        "jwks",
        "p384-ed448",
        r#"{"keys":[{"kty":"EC","crv":"P-384","x":"AA","y":"AA"},{"kty":"OKP","crv":"Ed448","x":"AA"}]}"#,
    ));

    // introspection
    out.push(tagged(
        "introspection",
        "active",
        0,
        br#"{"active":true,"scope":"read write","sub":"z","exp":5,"aud":["api"]}"#,
    ));
    out.push(tagged("introspection", "inactive", 0, br#"{"active":false}"#));
    out.push(tagged(
        "introspection",
        "discovery",
        1,
        br#"{"issuer":"https://idp.example","jwks_uri":"https://idp.example/.well-known/jwks.json","introspection_endpoint":"https://IDP.example:443/oauth/introspect#x"}"#,
    ));
    out.push(tagged(
        "introspection",
        "discovery-elsewhere",
        1,
        br#"{"jwks_uri":"http://idp.example.evil/jwks"}"#,
    ));
    out.push(tagged("introspection", "form", 2, "a b+c/=é*".as_bytes()));

    // sf
    for (name, text) in [
        ("sig-b22", B2_SIGNATURES[1].1),
        ("sig-b25-signature", B2_SIGNATURES[4].2),
        ("digest", "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:, md5=:AAAA:"),
        ("rfc8941-dict", "en=\"Applepie\", da=:w4ZibGV0w6ZydGU=:, a=?0, b, c; foo=bar"),
        ("rfc8941-inner", "a=(1 2), b=3, c=4;aa=bb, d=(5 6);valid"),
        ("rfc8941-list", "sugar, tea, rum, (\"foo\" \"bar\");lvl=5, (\"baz\");lvl=1"),
        ("rfc8941-item", "4.5;x=-0.25;y=*tok/en:x"),
        ("numbers", "-999999999999999, 999999999999.999, -0.5, ?1;a=\"\\\\q\\\"\""),
    ] {
        out.push(seed("sf", name, text));
    }

    // signature_base
    for (label, input, signature) in B2_SIGNATURES {
        let head = if label == "b24" { B2_RESPONSE } else { B2_REQUEST };
        let body = if label == "b24" { r#"{"message": "good dog"}"# } else { B2_BODY };
        let text = format!("{head}\nSignature-Input: {input}\nSignature: {signature}\n\n{body}");
        out.push(seed("signature_base", format!("rfc9421-{label}"), text));
    }
    out.push(seed(
        "signature_base",
        "strict-policy",
        format!(
            "GET https://example.com/foo?param=Value&Pet=dog&Pet=cat\nSignature-Input: sig-b21=(\"@method\" \"@authority\" \"@path\" \"@query\" \"@query-param\";name=\"Pet\" \"@target-uri\" \"@scheme\" \"@request-target\" \"x-h\";sf \"content-digest\";key=\"sha-512\" \"x-b\";bs);created=1618884470;expires=1618884480;keyid=\"k\";nonce=\"n\";tag=\"app-123\";alg=\"hmac-sha256\"\nSignature: sig-b21=:AAAA:\nX-H: a=1,  b=2\nx-b: raw\nx-b: two\nContent-Digest: {}\n\n",
            &B2_REQUEST[B2_REQUEST.find("sha-512").unwrap_or(0)..B2_REQUEST.find("\nContent-Length").unwrap_or(0)]
        ),
    ));

    // content_digest
    let body = B2_BODY.as_bytes();
    let both = format!(
        "{}, {}, md5=:AAAA:",
        digest::content_digest(digest::DigestAlg::Sha256, body),
        digest::content_digest(digest::DigestAlg::Sha512, body)
    );
    out.push(seed("content_digest", "rfc9530-both", format!("{both}\n{B2_BODY}")));
    out.push(seed("content_digest", "unknown-only", format!("md5=:AAAA:, sha-256=(:AAAA:)\n{B2_BODY}")));
    out.push(seed(
        "content_digest",
        "empty-body",
        format!("{}\n", digest::content_digest(digest::DigestAlg::Sha256, b"")),
    ));

    // key_format
    let entropy: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
    let good = key::key_from_entropy(&entropy).expect("64 bytes of entropy");
    out.push(seed("key_format", "entropy", entropy));
    out.push(seed("key_format", "good-key", good.clone()));
    let mut bad = good.clone().into_bytes();
    bad[39] = if bad[39] == b'A' { b'B' } else { b'A' };
    out.push(seed("key_format", "bad-checksum", bad));
    out.push(seed("key_format", "wrong-prefix", format!("tgx_{}", &good[4..])));
    out.push(seed("key_format", "short", &good[..39]));
    out.push(seed("key_format", "non-ascii", format!("{}é", &good[..38])));

    // shared_data
    let entry = ka_cache::Entry {
        hash: [0x5a; 32],
        state: ka_cache::KeyState::Valid,
        fetched_at_ms: 1_700_000_000_000,
        expires_at_s: 1_800_000_000,
        feed_seq: 42,
        epoch: 1,
        key_id: "key_01".into(),
        consumer_id: "alice".into(),
        display_prefix: "tgk_4QdLk0".into(),
        scopes: vec!["read".into(), "write".into()],
        tier: "gold".into(),
        limits: vec![ka_cache::Limit { rate: 10, period_secs: 1, burst: 20 }],
        previous_secret: false,
    };
    out.push(tagged("shared_data", "key-auth-entry", 0, &entry.encode()));
    out.push(tagged(
        "shared_data",
        "key-auth-not-found",
        0,
        &ka_cache::Entry::not_found([1; 32], 5, 6, 0).encode(),
    ));
    out.push(tagged("shared_data", "key-auth-arbitrary", 1, &entry.encode()));
    let feed_state = feed::FeedState {
        started: true,
        cursor: 7,
        base: 3,
        epoch: 1,
        mark: 5,
        busy_until_ms: 1_700_000_000_000,
    };
    out.push(tagged(
        "shared_data",
        "feed-state",
        2,
        &[feed_state.encode().as_slice(), &9u64.to_le_bytes()].concat(),
    ));
    let jwt_entry = tollgate_core::jwt::cache::Entry {
        hash: [3; 32],
        valid_until_s: 1_700_000_600,
        provider: 1,
        payload: br#"{"iss":"joe","sub":"alice"}"#.to_vec(),
    };
    out.push(tagged("shared_data", "jwt-entry", 3, &jwt_entry.encode()));
    let material = sig_cache::MaterialEntry {
        key_id: "test-shared-secret".into(),
        state: sig_cache::MaterialState::Valid,
        material: Some(KeyMaterial::Ed25519([9; 32])),
        consumer_id: "alice".into(),
        expires_at_s: 0,
        fetched_at_ms: 1_700_000_000_000,
        feed_seq: 4,
    };
    out.push(tagged("shared_data", "signing-material", 4, &sig_cache::encode_slot(&material, 1)));
    let hmac_material = sig_cache::MaterialEntry {
        material: Some(KeyMaterial::Hmac(b"secret".to_vec())),
        ..material.clone()
    };
    out.push(tagged("shared_data", "signing-material-hmac", 4, &sig_cache::encode_slot(&hmac_material, 0)));
    let id = replay::replay_id("k", Some("nonce"), b"sig");
    let remembered = replay::ReplayEntry { id, until_ms: 1_700_000_300_000, writer: 77 };
    let mut slots = 4096u32.to_le_bytes().to_vec();
    slots.extend_from_slice(&remembered.encode());
    slots.extend_from_slice(&[0u8; 32]);
    out.push(tagged("shared_data", "replay-entries", 5, &slots));
    let state = bucket::State { owner: 99, tats: vec![1_700_000_000_000_000_000, 5] };
    let mut bucket_input = state.encode();
    bucket_input
        .extend_from_slice(&[10, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0]);
    out.push(tagged("shared_data", "bucket", 6, &bucket_input));
    out.push(tagged("shared_data", "limits-property", 7, b"10/1/20,1000/86400/1000"));

    // request_fields
    out.push(seed(
        "request_fields",
        "credentials",
        format!("page=2&api_key={good}&access_token=eyJh.eyJi.c2ln&api_key=%74gk_x\nBearer {good}\napi_key"),
    ));
    out.push(seed(
        "request_fields",
        "forwarded-for",
        "a=1&&b&c=%zz&d=%4\n203.0.113.9, 198.51.100.7 ,10.0.0.1\na",
    ));
    out.push(seed("request_fields", "v6-address", "x=%2B\n[::1]:8080\nx"));
    out.push(seed("request_fields", "cookies", "\na=1; token=\"abc\"; token=def\ntoken"));
    out.push(seed("request_fields", "path", "q\n/v1/users?x=1?y=2\nq"));

    // template
    for (name, text) in [
        ("request", "{method} {path} {host}"),
        ("header", "u={header.X-User}"),
        ("query", "{query.page}/{query.q}"),
        ("captures", "{path.1}={path.id}:{path.none}:{path.9}"),
        ("client-ip", "{client_ip}"),
        ("identity", "{identity.consumer_id}:{identity.claims.sub}"),
        ("filter-state", "{filter_state.tollgate.consumer_id}@{route_name}"),
        ("braces", "{{literal}} }}{{ {method}"),
        ("bad", "{nope} {header.} a}b {method"),
    ] {
        out.push(seed("template", name, text));
    }

    // json_path
    let doc =
        json!({"a": {"b": [1, 2, {"c": null}]}, "a/b": {"~c": true}, "user": {"name": "bob"}}).to_string();
    for (name, path, value) in [
        ("pointer", "/a/b/2/c", "42"),
        ("append", "a.b.-", "true"),
        ("escapes", "/a~1b/~0c", "{\"x\":1}"),
        ("dotted", "user.name", "alice"),
        ("new-parent", "x.y.z", " 1.5e3 "),
        ("index-end", "/a/b/3", "FALSE"),
        ("leading-zero", "a.b.01", "[1,2]"),
        ("root-pointer", "/", "null"),
    ] {
        out.push(seed("json_path", name, format!("{path}\n{value}\n{doc}")));
    }
    // Valid JSON that a tree parser refuses or rewrites: every byte must survive, rules must apply.
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    for (name, path, doc) in [
        ("huge-exponent", "owner", r#"{"n": 1e400, "owner": "mallory"}"#.to_owned()),
        ("big-integer", "owner", r#"{"n": 18446744073709551617, "m": 1E2, "owner": "x"}"#.to_owned()),
        ("lone-surrogate", "owner", r#"{"s": "\ud800", "owner": "x"}"#.to_owned()),
        ("deep-nesting", "/0/0/0", deep),
        ("duplicate-names", "a.b", r#"{"a": {"b": 1}, "a": {"b": 2, "c": 3}}"#.to_owned()),
        ("whitespace-and-escapes", "k", "\t{ \"k\" :\r\n \"v\\u00e9\" , \"z\": [ ] }\n".to_owned()),
        ("byte-order-mark", "k", "\u{feff}{\"k\": 1}".to_owned()),
    ] {
        out.push(seed("json_path", name, format!("{path}\nalice\n{doc}")));
    }

    out
}
