//! RFC 9421 Appendix B and RFC 9530 vectors, and the verification policy.

use super::base::{self, Message, SignatureParams};
use super::digest::{self, DigestAlg, DigestError};
use super::replay::{self, Probe, ReplayEntry};
use super::sf::{self, BareItem};
use super::verify::{self, Deny, DigestPolicy, Policy};

const REQUEST_DIGEST: &str =
    "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";
const RESPONSE_DIGEST: &str =
    "sha-512=:mEWXIS7MaLRuGgxOBdODa3xqM1XdEvxoYhvlCFJ41QJgJc4GTsPp29l5oGX69wWdXymyU0rjJuahq4l5aGgfLQ==:";
const REQUEST_BODY: &[u8] = br#"{"hello": "world"}"#;

/// The test-request of RFC 9421 Appendix B.2.
fn test_request() -> Message {
    Message {
        method: "POST".into(),
        scheme: "https".into(),
        authority: "example.com".into(),
        target: "/foo?param=Value&Pet=dog".into(),
        status: None,
        headers: vec![
            ("Host".into(), "example.com".into()),
            ("Date".into(), "Tue, 20 Apr 2021 02:07:55 GMT".into()),
            ("Content-Type".into(), "application/json".into()),
            ("Content-Digest".into(), REQUEST_DIGEST.into()),
            ("Content-Length".into(), "18".into()),
        ],
    }
}

/// The test-response of RFC 9421 Appendix B.2.
fn test_response() -> Message {
    Message {
        status: Some(200),
        headers: vec![
            ("Date".into(), "Tue, 20 Apr 2021 02:07:56 GMT".into()),
            ("Content-Type".into(), "application/json".into()),
            ("Content-Digest".into(), RESPONSE_DIGEST.into()),
            ("Content-Length".into(), "23".into()),
        ],
        ..Message::default()
    }
}

/// The signature base, as text (every RFC example is ASCII).
fn base_text(message: &Message, params: &SignatureParams) -> String {
    String::from_utf8(base::signature_base(message, params).unwrap()).unwrap()
}

fn params_of(input: &str, label: &str) -> SignatureParams {
    let dict = sf::parse_dictionary(input).unwrap();
    let member = &dict.iter().find(|(l, _)| l == label).unwrap().1;
    SignatureParams::from_member(member).unwrap()
}

#[test]
fn b21_minimal_signature_base_matches_rfc() {
    let input = r#"sig-b21=();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd""#;
    let base = base_text(&test_request(), &params_of(input, "sig-b21"));
    assert_eq!(
        base,
        r#""@signature-params": ();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd""#
    );
}

#[test]
fn b22_selective_signature_base_matches_rfc() {
    let input = r#"sig-b22=("@authority" "content-digest" "@query-param";name="Pet");created=1618884473;keyid="test-key-rsa-pss";tag="header-example""#;
    let base = base_text(&test_request(), &params_of(input, "sig-b22"));
    let expected = format!(
        "\"@authority\": example.com\n\"content-digest\": {REQUEST_DIGEST}\n\"@query-param\";name=\"Pet\": dog\n\
         \"@signature-params\": (\"@authority\" \"content-digest\" \"@query-param\";name=\"Pet\")\
         ;created=1618884473;keyid=\"test-key-rsa-pss\";tag=\"header-example\""
    );
    assert_eq!(base, expected);
}

#[test]
fn b23_full_coverage_signature_base_matches_rfc() {
    let input = r#"sig-b23=("date" "@method" "@path" "@query" "@authority" "content-type" "content-digest" "content-length");created=1618884473;keyid="test-key-rsa-pss""#;
    let base = base_text(&test_request(), &params_of(input, "sig-b23"));
    let expected = format!(
        "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\
         \"@query\": ?param=Value&Pet=dog\n\"@authority\": example.com\n\"content-type\": application/json\n\
         \"content-digest\": {REQUEST_DIGEST}\n\"content-length\": 18\n\
         \"@signature-params\": (\"date\" \"@method\" \"@path\" \"@query\" \"@authority\" \"content-type\" \
         \"content-digest\" \"content-length\");created=1618884473;keyid=\"test-key-rsa-pss\""
    );
    assert_eq!(base, expected);
}

#[test]
fn b24_response_signature_base_matches_rfc() {
    let input = r#"sig-b24=("@status" "content-type" "content-digest" "content-length");created=1618884473;keyid="test-key-ecc-p256""#;
    let base = base_text(&test_response(), &params_of(input, "sig-b24"));
    let expected = format!(
        "\"@status\": 200\n\"content-type\": application/json\n\"content-digest\": {RESPONSE_DIGEST}\n\
         \"content-length\": 23\n\"@signature-params\": (\"@status\" \"content-type\" \"content-digest\" \
         \"content-length\");created=1618884473;keyid=\"test-key-ecc-p256\""
    );
    assert_eq!(base, expected);
}

#[test]
fn b25_and_b26_signature_bases_match_rfc() {
    let b25 = params_of(
        r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#,
        "sig-b25",
    );
    assert_eq!(
        base_text(&test_request(), &b25),
        "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@authority\": example.com\n\"content-type\": application/json\n\
         \"@signature-params\": (\"date\" \"@authority\" \"content-type\");created=1618884473;keyid=\"test-shared-secret\""
    );
    let b26 = params_of(
        r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#,
        "sig-b26",
    );
    assert_eq!(
        base_text(&test_request(), &b26),
        "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\"@authority\": example.com\n\
         \"content-type\": application/json\n\"content-length\": 18\n\"@signature-params\": (\"date\" \"@method\" \
         \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\""
    );
}

#[test]
fn rfc9530_digest_examples() {
    assert_eq!(digest::content_digest(DigestAlg::Sha512, REQUEST_BODY), REQUEST_DIGEST);
    assert_eq!(
        digest::content_digest(DigestAlg::Sha256, REQUEST_BODY),
        "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    );
    assert_eq!(digest::content_digest(DigestAlg::Sha512, br#"{"message": "good dog"}"#), RESPONSE_DIGEST);
    assert_eq!(digest::verify_content_digest(REQUEST_DIGEST, REQUEST_BODY), Ok(()));
    assert_eq!(
        digest::verify_content_digest(REQUEST_DIGEST, br#"{"hello": "world!"}"#),
        Err(DigestError::Mismatch)
    );
    assert_eq!(
        digest::verify_content_digest("md5=:AAAA:", REQUEST_BODY),
        Err(DigestError::NoSupportedAlgorithm)
    );
    assert_eq!(digest::verify_content_digest("sha-256=abc", REQUEST_BODY), Err(DigestError::Malformed));
}

#[test]
fn derived_components_follow_section_2_2() {
    let mut m = test_request();
    m.authority = "Example.COM:443".into();
    let value =
        |name: &str| String::from_utf8(base::component_value(&m, &base::component(name)).unwrap()).unwrap();
    assert_eq!(value("@authority"), "example.com");
    assert_eq!(value("@scheme"), "https");
    assert_eq!(value("@target-uri"), "https://example.com/foo?param=Value&Pet=dog");
    assert_eq!(value("@request-target"), "/foo?param=Value&Pet=dog");
    assert_eq!(value("@query"), "?param=Value&Pet=dog");
    m.target = "/".into();
    assert_eq!(base::component_value(&m, &base::component("@query")).unwrap(), b"?");
    // Section 2.2.8 example: decoded, then re-encoded with %20 for spaces.
    m.target = "/path?param=value&foo=bar&baz=batman&qux=&q=a+b%2Fc".into();
    let qp = |name: &str| {
        base::component_value(
            &m,
            &base::component_with("@query-param", vec![("name".into(), BareItem::String(name.into()))]),
        )
    };
    assert_eq!(qp("baz").unwrap(), b"batman");
    assert_eq!(qp("qux").unwrap(), b"");
    assert_eq!(qp("q").unwrap(), b"a%20b%2Fc");
    assert!(matches!(qp("missing"), Err(base::BaseError::Missing(_))));
}

/// `@query-param` values are re-encoded with the form-urlencoded set, space as `%20`
/// (RFC 9421 §2.2.8): only ASCII letters, digits and `*-._` stay as they are.
#[test]
fn query_param_values_are_re_encoded_with_the_form_set() {
    let mut m = test_request();
    for b in 0..=255u8 {
        m.target = format!("/p?v=%{b:02X}&v%{b:02x}=x");
        let kept = b.is_ascii_alphanumeric() || b"*-._".contains(&b);
        let want = if kept { char::from(b).to_string() } else { format!("%{b:02X}") };
        let value = |name: &str| {
            let id =
                base::component_with("@query-param", vec![("name".into(), BareItem::String(name.into()))]);
            base::component_value(&m, &id).map(|v| String::from_utf8(v).unwrap())
        };
        assert_eq!(value("v").unwrap(), want);
        assert_eq!(value(&format!("v{want}")).unwrap(), "x", "names are compared re-encoded");
    }
}

/// `@query-param` parses the query as `application/x-www-form-urlencoded` (RFC 9421 §2.2.8):
/// a `%` that starts no escape is a literal `%`, never a refusal.
#[test]
fn query_param_decoding_is_form_urlencoded() {
    let mut m = test_request();
    m.target = "/p?a=%zz&b=%4&c=%&d=%+1&e=%2b+%41&f=%FF&g%20h=1&i+j=2&k=%%41&l=%41%".into();
    let qp = |name: &str| {
        let id = base::component_with("@query-param", vec![("name".into(), BareItem::String(name.into()))]);
        String::from_utf8(base::component_value(&m, &id).unwrap()).unwrap()
    };
    assert_eq!(qp("a"), "%25zz");
    assert_eq!(qp("b"), "%254");
    assert_eq!(qp("c"), "%25");
    assert_eq!(qp("d"), "%25%201");
    assert_eq!(qp("e"), "%2B%20A");
    assert_eq!(qp("f"), "%FF");
    assert_eq!(qp("g%20h"), "1");
    assert_eq!(qp("i%20j"), "2");
    assert_eq!(qp("k"), "%25A");
    assert_eq!(qp("l"), "A%25");
}

#[test]
fn header_fields_combine_and_support_sf_key_and_bs() {
    let mut m = test_request();
    m.headers.push(("Example-Dict".into(), " a=1,    b=2;x=1;y=2,   c=(a   b   c)".into()));
    m.headers.push(("X-Multi".into(), "one ".into()));
    m.headers.push(("x-multi".into(), " two".into()));
    let with =
        |name: &str, params: sf::Params| base::component_value(&m, &base::component_with(name, params));
    assert_eq!(with("x-multi", vec![]).unwrap(), b"one, two");
    assert_eq!(
        with("example-dict", vec![("sf".into(), BareItem::Boolean(true))]).unwrap(),
        b"a=1, b=2;x=1;y=2, c=(a b c)"
    );
    assert_eq!(with("example-dict", vec![("key".into(), BareItem::String("c".into()))]).unwrap(), b"(a b c)");
    assert_eq!(with("x-multi", vec![("bs".into(), BareItem::Boolean(true))]).unwrap(), b":b25l:, :dHdv:");
    assert!(matches!(with("x-missing", vec![]), Err(base::BaseError::Missing(_))));
    assert!(matches!(
        with("x-multi", vec![("req".into(), BareItem::Boolean(true))]),
        Err(base::BaseError::Unsupported(_))
    ));
}

/// RFC 9421 section 2.1.3: with `bs`, two field lines and one line holding the same text
/// have different component values.
#[test]
fn bs_wraps_each_field_line_as_in_section_2_1_3() {
    let bs = base::component_with("example-header", vec![("bs".into(), BareItem::Boolean(true))]);
    let mut m = test_request();
    m.headers.push(("Example-Header".into(), "value, with, lots".into()));
    m.headers.push(("Example-Header".into(), "of, commas".into()));
    assert_eq!(base::component_value(&m, &bs).unwrap(), b":dmFsdWUsIHdpdGgsIGxvdHM=:, :b2YsIGNvbW1hcw==:");
    let mut one = test_request();
    one.headers.push(("Example-Header".into(), "value, with, lots, of, commas".into()));
    assert_eq!(base::component_value(&one, &bs).unwrap(), b":dmFsdWUsIHdpdGgsIGxvdHMsIG9mLCBjb21tYXM=:");
    // Without `bs` both messages give the same value: the collision `bs` exists to prevent.
    let plain = base::component("example-header");
    assert_eq!(base::component_value(&m, &plain).unwrap(), base::component_value(&one, &plain).unwrap());
}

/// Header values are bytes: obs-text is carried exactly, with `bs` (base64 of the bytes) and
/// without (the raw bytes in the base), so two different invalid UTF-8 sequences never give the
/// same component value. Structured-field parameters refuse such a value.
#[test]
fn header_bytes_that_are_not_utf8_are_kept_exactly() {
    let with = |bytes: &[u8], params: sf::Params| {
        let mut m = test_request();
        m.headers.push(("X-Bin".into(), bytes.to_vec()));
        base::component_value(&m, &base::component_with("x-bin", params))
    };
    let bs = || vec![("bs".to_owned(), BareItem::Boolean(true))];
    assert_eq!(with(&[0xff, 0xfe], bs()).unwrap(), b"://4=:");
    assert_eq!(with(&[0xfe, 0xff], bs()).unwrap(), b":/v8=:");
    assert_eq!(with(&[0xff, 0xfe], vec![]).unwrap(), vec![0xff, 0xfe]);
    assert_ne!(with(&[0xff, 0xfe], vec![]).unwrap(), with(&[0xfe, 0xff], vec![]).unwrap());
    assert_eq!(with(b" \xe9t\xe9 ", vec![]).unwrap(), b"\xe9t\xe9", "trimmed, not decoded");
    assert!(matches!(
        with(&[0xff], vec![("sf".into(), BareItem::Boolean(true))]),
        Err(base::BaseError::Unsupported(_))
    ));
    // The base holds the raw bytes.
    let mut m = test_request();
    m.headers.push(("x-bin".into(), vec![0xff, 0xfe]));
    let params = params_of(r#"s=("x-bin" "@method");created=1;keyid="k""#, "s");
    let base = base::signature_base(&m, &params).unwrap();
    assert!(base.starts_with(b"\"x-bin\": \xff\xfe\n\"@method\": POST\n"));
}

#[test]
fn field_lines_are_combined_and_empty_values_kept() {
    let mut m = test_request();
    m.headers.push(("x-a".into(), " one\t".into()));
    m.headers.push(("X-A".into(), "two".into()));
    m.headers.push(("x-empty".into(), "".into()));
    assert_eq!(m.field_value("x-a").unwrap(), b"one, two");
    assert_eq!(m.field_value("x-empty").unwrap(), b"");
    assert_eq!(m.field_value("x-none"), None);
    let params = params_of(r#"s=("x-empty");created=1;keyid="k""#, "s");
    assert!(base_text(&m, &params).starts_with("\"x-empty\": \n"));
}

#[test]
fn duplicate_components_and_newlines_are_refused() {
    let params = params_of(r#"s=("@method" "@method");created=1;keyid="k""#, "s");
    assert!(matches!(base::signature_base(&test_request(), &params), Err(base::BaseError::Duplicate(_))));
    for bad in [&b"a\nb"[..], b"a\rb", b"a\x00b"] {
        let mut m = test_request();
        m.headers.push(("x-bad".into(), bad.to_vec()));
        let params = params_of(r#"s=("x-bad");created=1;keyid="k""#, "s");
        assert!(matches!(base::signature_base(&m, &params), Err(base::BaseError::Unsupported(_))), "{bad:?}");
    }
}

fn policy() -> Policy {
    Policy {
        label: None,
        required_components: vec!["@method".into(), "@authority".into(), "@path".into()],
        content_digest: DigestPolicy::WithBody,
        clock_skew_s: 30,
        max_age_s: 300,
        require_expires: false,
        require_nonce: false,
        tag: None,
    }
}

const NOW: i64 = 1_618_884_480;

fn input(params: &str) -> String {
    format!(r#"sig1=("@method" "@authority" "@path" "content-digest"){params}"#)
}

const SIG: &str = "sig1=:AAAA:";

#[test]
fn policy_checks_created_expires_nonce_tag_and_components() {
    let p = policy();
    let select = |input: &str, p: &Policy| verify::select(Some(input), Some(SIG), p, true, NOW);
    assert!(select(&input(r#";created=1618884473;keyid="k""#), &p).is_ok());
    assert_eq!(select(&input(r#";keyid="k""#), &p), Err(Deny::MissingCreated));
    assert_eq!(select(&input(";created=1618884473"), &p), Err(Deny::MissingKeyId));
    assert_eq!(select(&input(r#";created=1618884000;keyid="k""#), &p), Err(Deny::TooOld));
    assert_eq!(select(&input(r#";created=1618884600;keyid="k""#), &p), Err(Deny::CreatedInFuture));
    assert_eq!(select(&input(r#";created=1618884473;expires=1618884400;keyid="k""#), &p), Err(Deny::Expired));
    assert_eq!(
        select(&input(r#";created=1618884473;keyid="k";alg="rsa-pss-sha512""#), &p),
        Err(Deny::UnsupportedAlgorithm)
    );
    let strict = Policy { require_nonce: true, require_expires: true, tag: Some("app".into()), ..policy() };
    assert_eq!(select(&input(r#";created=1618884473;keyid="k""#), &strict), Err(Deny::MissingExpires));
    assert_eq!(
        select(&input(r#";created=1618884473;expires=1618884600;keyid="k""#), &strict),
        Err(Deny::MissingNonce)
    );
    assert_eq!(
        select(&input(r#";created=1618884473;expires=1618884600;nonce="n";keyid="k";tag="x""#), &strict),
        Err(Deny::TagMismatch)
    );
    assert!(
        select(&input(r#";created=1618884473;expires=1618884600;nonce="n";keyid="k";tag="app""#), &strict)
            .is_ok()
    );
    let no_digest = r#"sig1=("@method" "@authority" "@path");created=1618884473;keyid="k""#;
    assert_eq!(select(no_digest, &p), Err(Deny::MissingDigest));
    assert!(verify::select(Some(no_digest), Some(SIG), &p, false, NOW).is_ok());
    let no_path = r#"sig1=("@method" "@authority" "content-digest");created=1618884473;keyid="k""#;
    assert_eq!(select(no_path, &p), Err(Deny::MissingComponent));
}

#[test]
fn label_selection_takes_configured_or_first_acceptable() {
    let inputs = format!(
        r#"old=("@method");created=1618884473;keyid="k", {}"#,
        &input(r#";created=1618884473;keyid="k2""#)[..]
    );
    let sigs = "old=:AAAA:, sig1=:AQID:";
    let chosen = verify::select(Some(&inputs), Some(sigs), &policy(), true, NOW).unwrap();
    assert_eq!((chosen.label.as_str(), chosen.key_id.as_str()), ("sig1", "k2"));
    assert_eq!(chosen.signature, vec![1, 2, 3]);
    let only_old = Policy { label: Some("old".into()), ..policy() };
    assert_eq!(verify::select(Some(&inputs), Some(sigs), &only_old, true, NOW), Err(Deny::MissingComponent));
    let absent = Policy { label: Some("nope".into()), ..policy() };
    assert_eq!(verify::select(Some(&inputs), Some(sigs), &absent, true, NOW), Err(Deny::LabelNotFound));
    assert_eq!(verify::select(None, Some(sigs), &policy(), true, NOW), Err(Deny::MissingSignature));
    assert_eq!(
        verify::select(Some("sig1=("), Some(sigs), &policy(), true, NOW),
        Err(Deny::MalformedSignature)
    );
    assert_eq!(
        verify::select(
            Some(&input(r#";created=1618884473;keyid="k""#)),
            Some("sig1=\"text\""),
            &policy(),
            true,
            NOW
        ),
        Err(Deny::MalformedSignature)
    );
}

/// `Signature-Input` and `Signature` sent as several field lines are one dictionary each.
#[test]
fn signature_fields_on_several_lines_are_combined() {
    let p = policy();
    let mut m = test_request();
    m.headers.push(("Signature-Input".into(), r#"old=("@method");created=1618884473;keyid="k""#.into()));
    m.headers.push(("signature-input".into(), input(r#";created=1618884473;keyid="k2""#).into()));
    m.headers.push(("Signature".into(), "old=:AAAA:".into()));
    m.headers.push(("signature".into(), "sig1=:AQID:".into()));
    let chosen = verify::select_in(&m, &p, true, NOW).unwrap();
    assert_eq!((chosen.label.as_str(), chosen.key_id.as_str()), ("sig1", "k2"));
    assert_eq!(chosen.signature, vec![1, 2, 3]);
    // Not ASCII: not a structured field.
    m.headers.push(("signature".into(), vec![0xff]));
    assert_eq!(verify::select_in(&m, &p, true, NOW), Err(Deny::MalformedSignature));
    assert_eq!(verify::select_in(&test_request(), &p, true, NOW), Err(Deny::MissingSignature));
}

/// The content is checked whenever `Content-Digest` is present or covered, an empty body
/// included; otherwise there is nothing to check.
#[test]
fn content_is_checked_whenever_the_digest_is_present_or_covered() {
    let covered =
        verify::select(Some(&input(r#";created=1618884473;keyid="k""#)), Some(SIG), &policy(), true, NOW)
            .unwrap();
    let uncovered = verify::select(
        Some(r#"sig1=("@method" "@authority" "@path");created=1618884473;keyid="k""#),
        Some(SIG),
        &policy(),
        false,
        NOW,
    )
    .unwrap();
    let m = test_request();
    assert!(verify::binds_content(&m, &covered) && verify::binds_content(&m, &uncovered));
    assert_eq!(verify::check_content(&m, &covered, REQUEST_BODY), Ok(()));
    assert_eq!(verify::check_content(&m, &covered, b""), Err(Deny::DigestMismatch), "a stripped body");
    assert_eq!(verify::check_content(&m, &uncovered, b""), Err(Deny::DigestMismatch), "present, not covered");
    let mut no_digest = test_request();
    no_digest.headers.retain(|(n, _)| n != "Content-Digest");
    assert!(!verify::binds_content(&no_digest, &uncovered));
    assert_eq!(verify::check_content(&no_digest, &uncovered, b"anything"), Ok(()));
    assert_eq!(verify::check_content(&no_digest, &covered, b""), Err(Deny::MissingDigest));
    // The digest of the empty body holds for an empty body.
    let mut empty = no_digest.clone();
    empty.headers.push(("content-digest".into(), digest::content_digest(DigestAlg::Sha256, b"").into()));
    assert_eq!(verify::check_content(&empty, &covered, b""), Ok(()));
    // Two field lines are one dictionary: every supported member must match.
    let mut two = no_digest;
    two.headers
        .push(("content-digest".into(), digest::content_digest(DigestAlg::Sha256, REQUEST_BODY).into()));
    two.headers.push(("content-digest".into(), digest::content_digest(DigestAlg::Sha512, b"other").into()));
    assert_eq!(verify::check_content(&two, &covered, REQUEST_BODY), Err(Deny::DigestMismatch));
}

#[test]
fn replay_table_detects_seen_ids_and_fails_closed_when_full() {
    let id = replay::replay_id("key_1", None, b"sig");
    assert_ne!(id, replay::replay_id("key_1", Some("n"), b"sig"));
    assert_ne!(id, replay::replay_id("key_2", None, b"sig"));
    let now = 10_000;
    let other = |n: u8, until_ms| Some(ReplayEntry { id: [n; 16], until_ms, writer: 9 });
    assert_eq!(replay::probe(&[None, None, None, None], &id, now), Probe::Free(0));
    let mine = ReplayEntry { id, until_ms: now + 1, writer: 1 };
    assert_eq!(replay::probe(&[other(1, now + 5), Some(mine), None, None], &id, now), Probe::Seen);
    // A lapsed entry may be evicted: its signature is too old to be accepted anyway.
    assert_eq!(replay::probe(&[other(1, now + 5), other(2, now), None, None], &id, now), Probe::Free(1));
    let full = [other(1, now + 5), other(2, now + 5), other(3, now + 5), other(4, now + 5)];
    assert_eq!(replay::probe(&full, &id, now), Probe::Full);
    // Two writers raced with the same signature into different slots: neither is confirmed.
    let theirs = ReplayEntry { writer: 2, ..mine };
    assert!(!replay::confirmed(&[Some(mine), Some(theirs), None, None], &mine, now));
    assert!(!replay::confirmed(&[Some(theirs), None, None, None], &mine, now));
    assert!(replay::confirmed(&[Some(mine), other(3, now + 5), None, None], &mine, now));
    assert_eq!(ReplayEntry::decode(&mine.encode()), Some(mine));
    assert_eq!(replay::probe_slots(&id, 8192).len(), replay::PROBES as usize);
}

#[test]
fn config_defaults_and_errors_name_the_field() {
    use super::config::Config;
    let ok = Config::from_json(br#"{"key_service":{"cluster":"keyd","token":"t"}}"#).unwrap();
    assert_eq!(ok.policy.required_components, vec!["@method", "@authority", "@path", "@query"]);
    assert_eq!(ok.policy.content_digest, DigestPolicy::WithBody);
    assert_eq!((ok.policy.max_age_s, ok.policy.clock_skew_s, ok.max_body_bytes), (300, 30, 1 << 20));
    assert!(!format!("{ok:?}").contains("\"t\""));
    let e = |json: &str| Config::from_json(json.as_bytes()).unwrap_err();
    assert_eq!(e(r#"{"key_service":{"cluster":"k","token":"t"},"bogus":1}"#).field, "bogus");
    let bad = e(r#"{"key_service":{"cluster":"k","token":"t"},"policy":{"required_components":["@nope"]}}"#);
    assert_eq!(bad.field, "policy.required_components[0]");
    let bad = e(r#"{"key_service":{"cluster":"k","token":"t"},"routes":[{"policy":{"max_age":"2d"}}]}"#);
    assert_eq!(bad.field, "routes[0].policy.max_age");
    let bad = e(r#"{"key_service":{"cluster":"k","token":"t"},"routes":[{"methods":["PO ST"]}]}"#);
    assert_eq!(bad.field, "routes[0].methods[0]");
    assert!(bad.message.contains("not an HTTP method"), "{bad}");
    assert_eq!(
        e(r#"{"key_service":{"cluster":"k","token":"t"},"max_body_bytes":0}"#).field,
        "max_body_bytes"
    );
    assert_eq!(e(r#"{"key_service":{"cluster":"","token":"t"}}"#).field, "key_service.cluster");
    let routed = Config::from_json(
        br#"{"key_service":{"cluster":"k","token":"t"},"policy":{"max_age":"60s"},
            "routes":[{"path_prefix":"/pay","policy":{"require_nonce":true,"required_components":["\"@query-param\";name=\"id\"","content-type"]}}]}"#,
    )
    .unwrap();
    let facts = crate::route::RequestFacts { route_name: None, path: "/pay/x", method: "POST" };
    let p = routed.policy_for(&facts);
    assert!(p.require_nonce);
    assert_eq!(p.max_age_s, 60);
    assert_eq!(p.required_components, vec!["\"@query-param\";name=\"id\"", "content-type"]);
}

#[test]
fn material_cache_entries_round_trip_and_expire() {
    use super::cache::{self, MaterialEntry, MaterialState};
    use super::verify::KeyMaterial;
    use std::time::Duration;
    let entry = MaterialEntry {
        key_id: "key_1".into(),
        state: MaterialState::Valid,
        material: Some(KeyMaterial::Hmac(vec![7; 32])),
        consumer_id: "con_1".into(),
        expires_at_s: 100,
        fetched_at_ms: 1_000,
        feed_seq: 5,
    };
    assert_eq!(MaterialEntry::decode(&entry.encode()), Some(entry.clone()));
    assert!(!format!("{entry:?}").contains("7, 7"));
    assert_eq!(entry.usable_at(99), MaterialState::Valid);
    assert_eq!(entry.usable_at(100), MaterialState::Expired);
    let ttl = Duration::from_secs(60);
    let f = crate::feed::Freshness::default();
    assert!(cache::fresh(Some(entry.clone()), "key_1", 2_000, f, ttl, ttl).is_some());
    assert!(cache::fresh(Some(entry.clone()), "key_2", 2_000, f, ttl, ttl).is_none());
    assert!(cache::fresh(Some(entry.clone()), "key_1", 70_000, f, ttl, ttl).is_none());
    let revoked_later = crate::feed::Freshness { epoch: 0, invalidated_at: 6, base: 0 };
    assert!(cache::fresh(Some(entry), "key_1", 2_000, revoked_later, ttl, ttl).is_none());
}

#[cfg(feature = "signature")]
mod crypto {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    use super::*;
    use crate::signature::crypto::SigningMaterial;
    use crate::signature::verify::KeyMaterial;

    const SHARED_SECRET: &str =
        "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";
    /// The PKCS#8 body of test-key-ed25519 (RFC 9421 B.1.4); the seed is its last 32 bytes.
    const ED25519_PKCS8: &str = "MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF";
    const ED25519_SPKI: &str = "MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=";

    fn ed25519_seed() -> [u8; 32] {
        let der = STANDARD.decode(ED25519_PKCS8).unwrap();
        der[der.len() - 32..].try_into().unwrap()
    }

    fn ed25519_public() -> [u8; 32] {
        let der = STANDARD.decode(ED25519_SPKI).unwrap();
        der[der.len() - 32..].try_into().unwrap()
    }

    const B25_INPUT: &str =
        r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#;
    const B25_SIG: &str = "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:";
    const B26_INPUT: &str = r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#;
    const B26_SIG: &str =
        "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:";

    fn rfc_policy() -> Policy {
        Policy {
            required_components: vec![],
            content_digest: DigestPolicy::Never,
            max_age_s: 86_400,
            ..policy()
        }
    }

    #[test]
    fn b25_hmac_sha256_produces_the_rfc_signature() {
        let secret = STANDARD.decode(SHARED_SECRET).unwrap();
        let base = base::signature_base(&test_request(), &params_of(B25_INPUT, "sig-b25")).unwrap();
        let tag = SigningMaterial::Hmac(secret.clone()).sign(&base);
        assert_eq!(format!("sig-b25=:{}:", STANDARD.encode(&tag)), B25_SIG);
        let c = verify::select(Some(B25_INPUT), Some(B25_SIG), &rfc_policy(), false, NOW).unwrap();
        assert_eq!(verify::verify(&c, &test_request(), &KeyMaterial::Hmac(secret)), Ok(()));
    }

    #[test]
    fn b26_ed25519_produces_the_rfc_signature() {
        let signer = SigningMaterial::Ed25519(ed25519_seed());
        assert_eq!(signer.verifying(), KeyMaterial::Ed25519(ed25519_public()));
        let base = base::signature_base(&test_request(), &params_of(B26_INPUT, "sig-b26")).unwrap();
        let sig = signer.sign(&base);
        assert_eq!(format!("sig-b26=:{}:", STANDARD.encode(&sig)), B26_SIG);
        let c = verify::select(Some(B26_INPUT), Some(B26_SIG), &rfc_policy(), false, NOW).unwrap();
        assert_eq!(verify::verify(&c, &test_request(), &KeyMaterial::Ed25519(ed25519_public())), Ok(()));
    }

    type Tamper = Box<dyn Fn(&mut Message)>;

    #[test]
    fn tampering_with_any_covered_component_is_rejected() {
        let key = KeyMaterial::Ed25519(ed25519_public());
        let c = verify::select(Some(B26_INPUT), Some(B26_SIG), &rfc_policy(), false, NOW).unwrap();
        let tampers: Vec<(&str, Tamper)> = vec![
            ("date", Box::new(|m| m.headers[1].1 = "Tue, 20 Apr 2021 02:07:56 GMT".into())),
            ("@method", Box::new(|m| m.method = "PUT".into())),
            ("@path", Box::new(|m| m.target = "/bar?param=Value&Pet=dog".into())),
            ("@authority", Box::new(|m| m.authority = "evil.example".into())),
            ("content-type", Box::new(|m| m.headers[2].1 = "text/plain".into())),
            ("content-length", Box::new(|m| m.headers[4].1 = "19".into())),
        ];
        for (name, tamper) in tampers {
            let mut m = test_request();
            tamper(&mut m);
            assert_eq!(verify::verify(&c, &m, &key), Err(Deny::BadSignature), "tampered {name}");
        }
        // Removing a covered header is a missing component, not a pass.
        let mut m = test_request();
        m.headers.retain(|(n, _)| n != "Date");
        assert_eq!(verify::verify(&c, &m, &key), Err(Deny::MissingComponent));
        // The signature parameters are covered too.
        let moved = B26_INPUT.replace("1618884473", "1618884474");
        let c2 = verify::select(Some(&moved), Some(B26_SIG), &rfc_policy(), false, NOW).unwrap();
        assert_eq!(verify::verify(&c2, &test_request(), &key), Err(Deny::BadSignature));
        // HMAC tags: one flipped bit fails.
        let secret = STANDARD.decode(SHARED_SECRET).unwrap();
        let mut c3 = verify::select(Some(B25_INPUT), Some(B25_SIG), &rfc_policy(), false, NOW).unwrap();
        c3.signature[0] ^= 1;
        assert_eq!(verify::verify(&c3, &test_request(), &KeyMaterial::Hmac(secret)), Err(Deny::BadSignature));
    }

    #[test]
    fn alg_parameter_must_match_the_key() {
        let with_alg =
            B26_INPUT.replace(r#"keyid="test-key-ed25519""#, r#"keyid="test-key-ed25519";alg="hmac-sha256""#);
        let c = verify::select(Some(&with_alg), Some(B26_SIG), &rfc_policy(), false, NOW).unwrap();
        let key = KeyMaterial::Ed25519(ed25519_public());
        assert_eq!(verify::verify(&c, &test_request(), &key), Err(Deny::AlgorithmMismatch));
    }
}
