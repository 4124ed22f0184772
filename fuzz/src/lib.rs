//! The checks behind the fuzz targets, one function per target.
//!
//! Each function takes the raw fuzz input, feeds it to a parser of `tollgate-core` that sees
//! untrusted bytes, and asserts what must hold beyond "no panic": round trips of the shared-data
//! encodings, parse → serialize → parse stability of structured fields, a key check that agrees
//! with an independent checksum, signatures accepted only within the policy, and so on. A failed
//! assertion is a finding, just like a panic inside the parser.
//!
//! The fuzz targets (`fuzz_targets/*.rs`) are one line each; `tests/corpus.rs` calls the same
//! functions on every committed corpus and regression input, on stable, without libFuzzer.

use std::sync::OnceLock;

use arbitrary::Unstructured;
use serde_json::Value;

use tollgate_core::feed;
use tollgate_core::identity;
use tollgate_core::jwt::{self, b64, claims, introspection, jwk, jws, keys::KeySet};
use tollgate_core::key;
use tollgate_core::key_auth::{self, cache as ka_cache};
use tollgate_core::rate_limit::{self, bucket, descriptor};
use tollgate_core::route::{self, RequestFacts};
use tollgate_core::signature::{base, cache as sig_cache, digest, replay, sf, verify};
use tollgate_core::transform::{self, doc, json as tjson, query, template::Template};

pub mod seeds;

/// Every target: its name (the file in `fuzz_targets/`, the folder in `corpus/`) and its check.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("b64url", b64url),
    ("jws", jws),
    ("jwks", jwks),
    ("introspection", introspection),
    ("sf", sf),
    ("signature_base", signature_base),
    ("content_digest", content_digest),
    ("key_format", key_format),
    ("shared_data", shared_data),
    ("request_fields", request_fields),
    ("template", template),
    ("json_path", json_path),
    ("config_key_auth", config_key_auth),
    ("config_rate_limit", config_rate_limit),
    ("config_jwt_auth", config_jwt_auth),
    ("config_transform", config_transform),
    ("config_request_signing", config_request_signing),
];

/// The longest token the jwt-auth filter accepts by default.
const MAX_TOKEN: usize = 8192;

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// Splits off the first line (without its `\n`).
fn first_line(s: &str) -> (&str, &str) {
    s.split_once('\n').unwrap_or((s, ""))
}

// ---------------------------------------------------------------------------------------------
// JWT: base64url, compact JWS, claims, key sets, introspection and discovery answers.

/// Strict base64url: every byte string has exactly one encoding, and it decodes back.
pub fn b64url(data: &[u8]) {
    if let Some(bytes) = b64::decode(data) {
        assert_eq!(b64::encode(&bytes).as_bytes(), data, "a second encoding of the same bytes was accepted");
    }
    let encoded = b64::encode(data);
    assert_eq!(b64::decode(encoded.as_bytes()).as_deref(), Some(data));
}

/// RFC 7515 A.1 (HS256), A.3 (ES256), RFC 7520 (RSA) and RFC 8037 A.2 (Ed25519) public keys.
pub const TEST_JWKS: &str = r#"{"keys":[
{"kty":"oct","kid":"hs","k":"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"},
{"kty":"EC","kid":"es","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
{"kty":"RSA","kid":"bilbo.baggins@hobbiton.example","use":"sig","n":"n4EPtAOCc9AlkeQHPzHStgAbgs7bTZLwUBZdR8_KuKPEHLd4rHVTeT-O-XV2jRojdNhxJWTDvNd7nqQ0VEiZQHz_AJmSCpMaJMRBSFKrKb2wqVwGU_NsYOYL-QtiWN2lbzcEe6XC0dApr5ydQLrHqkHHig3RBordaZ6Aj-oBHqFEHYpPe7Tpe-OfVfHd1E6cS6M1FZcD1NNLYD5lFHpPI9bTwJlsde3uhGqC0ZCuEHg8lhzwOHrtIQbS0FVbb9k3-tVTU4fg_3L_vniUFAKwuCLqKnS2BYwdq_mzSnbLY7h_qixoR7jig3__kRhuaxwUkRz5iaiQkqgc5gHdrNP5zw","e":"AQAB"},
{"kty":"OKP","kid":"ed","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
]}"#;

fn test_keys() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| {
        let parsed = jwk::parse_jwks(TEST_JWKS.as_bytes(), jwk::Limits::default()).expect("test JWKS parses");
        KeySet::compile(&parsed).expect("test JWKS compiles")
    })
}

/// A compact JWS as the jwt-auth filter sees it: parsed, verified against fixed keys, its
/// claims checked. A parsed token is three strict base64url segments; claim text never holds
/// control characters (it may become a header value).
pub fn jws(data: &[u8]) {
    let Some(token) = text(data) else { return };
    let Ok(parsed) = jws::parse(token, MAX_TOKEN) else {
        return;
    };
    assert!(token.len() <= MAX_TOKEN);
    assert!(introspection::looks_like_jwt(token), "parsed a token that is not three base64url segments");
    let input = &parsed.signing_input;
    assert!(token.starts_with(input.as_str()) && token[input.len()..].starts_with('.'));
    assert_eq!(token.matches('.').count(), 2);
    assert!(!parsed.signature.is_empty());
    assert_eq!(b64::encode(&parsed.signature), token[input.len() + 1..]);

    let _ = test_keys().verify(&parsed, &jws::Alg::ALL);

    let rules = claims::ClaimRules {
        issuer: "joe".into(),
        audiences: vec!["api".into()],
        require_exp: false,
        clock_skew_s: 60,
        max_lifetime_s: Some(3600),
        typ: Some("JWT".into()),
        require_subject: false,
    };
    for now in [0, 1_300_819_379, 1_700_000_000, i64::MAX, i64::MIN] {
        if let Ok(identity) = claims::check(&parsed.claims, parsed.typ.as_deref(), &rules, now) {
            assert_eq!(identity.issuer, "joe");
            if let Some(exp) = identity.expires_at_s {
                assert!(now < exp.saturating_add(rules.clock_skew_s), "an expired token passed");
            }
            let req = claims::Requirements {
                scopes: vec!["read".into()],
                claims: vec![("role".into(), "admin".into())],
            };
            let _ = claims::check_requirements(&parsed.claims, &identity, &req);
        }
    }
    let _ = claims::scopes(&parsed.claims);
    for value in parsed.claims.values() {
        if let Some(text) = claims::claim_text(value) {
            assert!(!text.chars().any(char::is_control), "claim text with a control character: {text:?}");
        }
    }
}

/// A JWKS document (remote or inline): parsed within limits, unique `kid`s, each key's `alg`
/// fitting its type, and compiled into verifying keys.
pub fn jwks(data: &[u8]) {
    let limits = jwk::Limits { max_bytes: 64 * 1024, max_keys: 8 };
    match jwk::parse_jwks(data, limits) {
        Ok(keys) => {
            assert!(!keys.is_empty() && keys.len() <= limits.max_keys);
            for (i, k) in keys.iter().enumerate() {
                if let Some(alg) = k.alg {
                    assert!(k.material.fits(alg), "key {i} kept with an alg that does not fit it");
                }
                if k.kid.is_some() {
                    assert!(keys[..i].iter().all(|other| other.kid != k.kid), "duplicate kid kept");
                }
            }
            if let Ok(set) = KeySet::compile(&keys) {
                assert_eq!(set.len(), keys.len());
                for k in &keys {
                    if let Some(kid) = &k.kid {
                        assert!(set.has_kid(kid));
                    }
                }
                let _ = format!("{set:?}");
            }
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
        }
    }
}

/// Token introspection answers (RFC 7662) and OpenID discovery documents from a provider.
/// A discovered path never leaves the configured authority.
pub fn introspection(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 3 {
        0 => {
            if let Ok(introspection::Answer::Active(claims)) = introspection::parse_answer(body) {
                assert!(!claims.contains_key("active"));
            }
        }
        1 => {
            if let Ok(found) = introspection::parse_discovery(body, "idp.example") {
                assert!(found.jwks_path.starts_with('/') && !found.jwks_path.contains('#'));
                let doc: Value = serde_json::from_slice(body).expect("discovery parsed as JSON");
                let uri = doc["jwks_uri"].as_str().expect("jwks_uri is a string").to_ascii_lowercase();
                let rest = uri.split_once("://").map_or("", |(_, r)| r);
                let host = rest.split('/').next().unwrap_or_default();
                assert!(
                    ["idp.example", "idp.example:443", "idp.example:80"].contains(&host),
                    "discovery accepted a jwks_uri on `{host}`"
                );
                if let Some(p) = found.introspection_path {
                    assert!(p.starts_with('/'));
                }
            }
        }
        _ => {
            let Some(token) = text(body) else { return };
            let encoded = introspection::form_encode(token);
            assert!(
                encoded.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._*%+".contains(&b)),
                "form encoding left a reserved byte: {encoded:?}"
            );
            let _ = introspection::form_body(token);
            let _ = introspection::looks_like_jwt(token);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP message signatures: structured fields, signature bases, Content-Digest.

/// RFC 8941 dictionaries, lists and items: whatever parses serializes to a canonical form that
/// parses back to the same value and serializes identically.
pub fn sf(data: &[u8]) {
    let Some(s) = text(data) else { return };
    if let Ok(dict) = sf::parse_dictionary(s) {
        let once = sf::serialize_dictionary(&dict);
        let again = sf::parse_dictionary(&once).unwrap_or_else(|e| panic!("{once:?} does not parse: {e}"));
        assert_eq!(again, dict, "dictionary changed through {once:?}");
        assert_eq!(sf::serialize_dictionary(&again), once);
    }
    if let Ok(list) = sf::parse_list(s) {
        let once = sf::serialize_list(&list);
        let again = sf::parse_list(&once).unwrap_or_else(|e| panic!("{once:?} does not parse: {e}"));
        assert_eq!(again, list, "list changed through {once:?}");
        assert_eq!(sf::serialize_list(&again), once);
    }
    if let Ok(item) = sf::parse_item(s) {
        let mut once = String::new();
        sf::serialize_item(&item, &mut once);
        let again = sf::parse_item(&once).unwrap_or_else(|e| panic!("{once:?} does not parse: {e}"));
        assert_eq!(again, item, "item changed through {once:?}");
    }
}

/// The fuzz input of the message targets: a tiny HTTP/1-like text.
///
/// ```text
/// POST https://example.com/foo?param=Value&Pet=dog     (request line: method and URI)
/// 200                                                   (or a response: the status alone)
/// name: value                                           (headers, one per line)
///                                                       (an empty line)
/// body
/// ```
pub fn parse_message(s: &str) -> (base::Message, &str) {
    let (head, body) = s.split_once("\n\n").unwrap_or((s, ""));
    let mut lines = head.split('\n');
    let start = lines.next().unwrap_or_default();
    let mut message = base::Message::default();
    if let Ok(status) = start.trim().parse::<u16>() {
        message.status = Some(status);
    } else {
        let (method, uri) = start.split_once(' ').unwrap_or((start, ""));
        message.method = method.to_owned();
        let (scheme, rest) = uri.split_once("://").unwrap_or(("https", uri));
        message.scheme = scheme.to_owned();
        let split = rest.find('/').unwrap_or(rest.len());
        message.authority = rest[..split].to_owned();
        message.target = rest[split..].to_owned();
    }
    for line in lines {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        message.headers.push((name.to_owned(), value.trim_start().as_bytes().to_vec()));
    }
    (message, body)
}

/// RFC 9421 B.1.4: the `test-shared-secret` HMAC key.
const TEST_HMAC_KEY: &str =
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";

fn test_hmac_key() -> verify::KeyMaterial {
    use base64::Engine as _;
    let secret = base64::engine::general_purpose::STANDARD.decode(TEST_HMAC_KEY).expect("RFC 9421 key");
    verify::KeyMaterial::Hmac(secret)
}

/// `created` of the RFC 9421 examples, plus a little: their signatures are fresh at this time.
pub const SIGNATURE_NOW: i64 = 1_618_884_475;

/// Choosing a signature (`Signature-Input`/`Signature`) under two policies, building its
/// signature base and verifying it: a chosen signature satisfies the policy, and the base has
/// one line per covered component and ends with `@signature-params`.
pub fn signature_base(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let (message, body) = parse_message(s);
    let lenient = verify::Policy {
        label: None,
        required_components: vec![],
        content_digest: verify::DigestPolicy::Never,
        clock_skew_s: 30,
        max_age_s: 86_400,
        require_expires: false,
        require_nonce: false,
        tag: None,
    };
    let strict = verify::Policy {
        label: Some("sig-b21".into()),
        required_components: ["@method", "@authority", "@path", "@query"].map(str::to_owned).to_vec(),
        content_digest: verify::DigestPolicy::WithBody,
        clock_skew_s: 0,
        max_age_s: 300,
        require_expires: true,
        require_nonce: true,
        tag: Some("app-123".into()),
    };
    for policy in [&lenient, &strict] {
        let Ok(candidate) = verify::select_in(&message, policy, !body.is_empty(), SIGNATURE_NOW) else {
            continue;
        };
        assert!(!candidate.key_id.is_empty());
        assert!(candidate.created <= SIGNATURE_NOW + policy.clock_skew_s, "created in the future");
        assert!(SIGNATURE_NOW - candidate.created <= policy.max_age_s, "too old");
        if let Some(label) = &policy.label {
            assert_eq!(&candidate.label, label);
        }
        if policy.require_nonce {
            assert!(candidate.nonce.as_deref().is_some_and(|n| !n.is_empty()));
        }
        for required in &policy.required_components {
            assert!(candidate.params.covers(required));
        }
        for alg in [verify::Algorithm::HmacSha256, verify::Algorithm::Ed25519] {
            if let Ok(base) = verify::prepare(&candidate, &message, alg) {
                check_base(&base, &candidate.params);
            }
        }
        let _ = verify::verify(&candidate, &message, &test_hmac_key());
    }
    // Every member's base, whatever the policy says.
    let input = message.field_value("signature-input").unwrap_or_default();
    if let Ok(dict) = sf::parse_dictionary(&String::from_utf8_lossy(&input)) {
        for (_, member) in &dict {
            if let Some(params) = base::SignatureParams::from_member(member)
                && let Ok(base) = base::signature_base(&message, &params)
            {
                check_base(&base, &params);
            }
        }
    }
    for (name, _) in message.headers.iter().take(8) {
        let _ = base::component_value(&message, &base::component(&name.to_ascii_lowercase()));
    }
}

fn check_base(base: &[u8], params: &base::SignatureParams) {
    // The fuzzer's messages are text, so their bases are too.
    let base = String::from_utf8_lossy(base);
    let lines: Vec<&str> = base.split('\n').collect();
    assert_eq!(lines.len(), params.components.len() + 1, "a component value spans lines: {base:?}");
    assert!(!base.contains('\r'));
    for (line, component) in lines.iter().zip(&params.components) {
        let id = base::identifier_text(component);
        assert!(line.starts_with(&format!("{id}: ")), "{line:?} is not the line of {id}");
    }
    assert_eq!(
        lines.last().copied(),
        Some(format!("\"@signature-params\": {}", params.serialize()).as_str())
    );
}

/// `Content-Digest` checking (RFC 9530): the first line is the field value, the rest the body.
/// A digest we compute verifies; a verified body changed by one bit no longer does.
pub fn content_digest(data: &[u8]) {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let (header, body) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    for alg in [digest::DigestAlg::Sha256, digest::DigestAlg::Sha512] {
        assert_eq!(digest::verify_content_digest(&digest::content_digest(alg, body), body), Ok(()));
    }
    let Some(header) = text(header) else { return };
    if digest::verify_content_digest(header, body).is_ok() {
        let mut changed = body.to_vec();
        match changed.first_mut() {
            Some(b) => *b ^= 1,
            None => changed.push(0),
        }
        assert_eq!(
            digest::verify_content_digest(header, &changed),
            Err(digest::DigestError::Mismatch),
            "a digest matched two bodies"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// API keys.

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The checksum of a key body, computed here from its definition (CRC32 in 6 base62 digits)
/// rather than by the code under test.
fn oracle_checksum(body: &[u8]) -> [u8; 6] {
    let mut n = crc32fast::hash(body);
    let mut out = [0u8; 6];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// The API key format check agrees with an independent oracle: it accepts exactly the
/// `tgk_` + 30 + 6 base62 strings whose checksum is right. Generated keys always check, and
/// changing any checksum character makes them fail.
pub fn key_format(data: &[u8]) {
    if let Some(s) = text(data) {
        let b = s.as_bytes();
        let expected = b.len() == key::KEY_LEN
            && b.starts_with(key::KEY_PREFIX.as_bytes())
            && b[4..].iter().all(u8::is_ascii_alphanumeric)
            && oracle_checksum(&b[..34]) == b[34..];
        let got = key::check_format(s);
        assert_eq!(got.is_ok(), expected, "check_format({s:?}) = {got:?}");
        let shown = key::display_prefix(s);
        if expected {
            assert_eq!(shown, &s[..key::DISPLAY_LEN]);
        } else {
            assert_eq!(shown, "<malformed>");
        }
    }
    if let Some(k) = key::key_from_entropy(data) {
        assert_eq!(k.len(), key::KEY_LEN);
        assert_eq!(key::check_format(&k), Ok(()));
        let mut bytes = k.clone().into_bytes();
        for i in 34..key::KEY_LEN {
            let original = bytes[i];
            bytes[i] = if original == b'0' { b'1' } else { b'0' };
            let changed = std::str::from_utf8(&bytes).expect("ASCII");
            assert_eq!(key::check_format(changed), Err(key::KeyFormatError::BadChecksum));
            bytes[i] = original;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared-data and filter-state encodings.

/// Decoding of every record the filters keep in Envoy shared data or filter state, selected
/// by the first byte. Whatever decodes re-encodes to a value that decodes to the same record;
/// records built from the input survive encode → decode unchanged.
pub fn shared_data(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else { return };
    let mut u = Unstructured::new(rest);
    match which % 8 {
        0 => {
            if let Some(entry) = ka_cache::Entry::decode(rest) {
                assert_eq!(ka_cache::Entry::decode(&entry.encode()).as_ref(), Some(&entry), "key-auth entry");
                let _ = entry.usable_at(1_700_000_000);
                let _ = entry.has_scopes(&["read".to_owned()]);
                let cfg = key_auth_cache_config();
                let hash = entry.hash;
                for now_ms in [0, entry.fetched_at_ms, u64::MAX] {
                    for epoch in [0, entry.epoch, entry.epoch.saturating_add(1)] {
                        let fresh = feed::Freshness { epoch, invalidated_at: 3, base: 2 };
                        let _ = ka_cache::classify(Some(entry.clone()), &hash, now_ms, fresh, &cfg);
                    }
                }
            }
        }
        1 => {
            let Ok(entry) = arbitrary_key_entry(&mut u) else { return };
            assert_eq!(ka_cache::Entry::decode(&entry.encode()).as_ref(), Some(&entry), "key-auth entry");
        }
        2 => {
            if let Some(state) = feed::FeedState::decode(rest) {
                assert_eq!(state.encode().as_slice(), rest);
                let changes: Vec<feed::FeedChange> = (0..4)
                    .map_while(|i| {
                        let seq = u.arbitrary::<u64>().ok()?;
                        let mark = u.arbitrary::<u64>().ok()?;
                        Some(feed::FeedChange { seq, key_id: format!("key_{i}"), mark })
                    })
                    .collect();
                let head = u.arbitrary::<u64>().unwrap_or(0);
                let step = feed::feed_step(state, &changes, head);
                assert!(step.next.started);
                assert!(step.next.epoch >= state.epoch, "the feed epoch never goes back");
                for (slot, _) in &step.invalidate {
                    assert!(*slot < feed::INVALIDATION_SLOTS);
                }
            }
        }
        3 => {
            if let Some(entry) = jwt::cache::Entry::decode(rest) {
                assert_eq!(entry.encode().as_slice(), rest);
                let _ = jwt::cache::Entry::lookup(rest, &entry.hash, entry.valid_until_s.saturating_sub(1));
                assert!(jwt::cache::slot(&entry.hash, 8192) < 8192);
            }
        }
        4 => {
            if let Some((entry, epoch)) = sig_cache::decode_slot(rest) {
                assert_eq!(
                    sig_cache::decode_slot(&sig_cache::encode_slot(&entry, epoch)),
                    Some((entry.clone(), epoch))
                );
                let _ = entry.usable_at(1_700_000_000);
                let ttl = std::time::Duration::from_secs(60);
                let slot = Some((entry.clone(), epoch));
                let newer = feed::Freshness::epoch_only(epoch.saturating_add(1));
                let later = sig_cache::fresh_in_epoch(slot, &entry.key_id, 0, newer, ttl, ttl);
                assert!(epoch == u64::MAX || later.is_none(), "material of an older epoch was used");
            }
        }
        5 => {
            let Some((slots, entries)) = rest.split_at_checked(4) else { return };
            let slots = u32::from_le_bytes(slots.try_into().expect("4 bytes")) % (1 << 20) + 1;
            let decoded: Vec<Option<replay::ReplayEntry>> = entries
                .chunks(replay::ENTRY_LEN)
                .take(replay::PROBES as usize)
                .map(replay::ReplayEntry::decode)
                .collect();
            for entry in decoded.iter().flatten() {
                assert_eq!(replay::ReplayEntry::decode(&entry.encode()), Some(*entry));
                let probe_slots = replay::probe_slots(&entry.id, slots);
                assert!(probe_slots.iter().all(|s| *s < slots));
            }
            if let Some(Some(first)) = decoded.first()
                && first.until_ms > 0
            {
                let now = first.until_ms - 1;
                if replay::probe(&decoded, &first.id, now) != replay::Probe::Seen {
                    panic!("a live remembered signature was not seen");
                }
                let _ = replay::confirmed(&decoded, first, now);
            }
        }
        6 => {
            let Some((state, rest)) =
                rest.split_at_checked(rest.len().min(1 + 8 + 1 + 8 * bucket::MAX_LIMITS))
            else {
                return;
            };
            let state = bucket::State::decode(state);
            if let Some(state) = &state {
                assert_eq!(bucket::State::decode(&state.encode()).as_ref(), Some(state));
            }
            let mut u = Unstructured::new(rest);
            let limits: Vec<bucket::Limit> = (0..3)
                .filter_map(|_| {
                    let (rate, period, burst) = u.arbitrary::<(u64, u64, u64)>().ok()?;
                    bucket::Limit::new(rate, period, burst)
                })
                .collect();
            let now = u.arbitrary::<u64>().unwrap_or(1_700_000_000_000_000_000);
            let class = match u.arbitrary::<Option<u8>>() {
                Ok(Some(p)) => bucket::Class::Normal { reserve_percent: p },
                _ => bucket::Class::Critical,
            };
            let decision = bucket::take(state.as_ref(), 7, &limits, class, now);
            assert_eq!(decision.status.len(), limits.len());
            assert!(decision.retry_after_secs >= 1);
            if !decision.allowed {
                assert!(decision.next.is_none(), "a refused request changed the bucket");
            }
        }
        _ => {
            // `tollgate.rate_limit` filter state: key-auth writes it, rate-limit reads it.
            let Some(s) = text(rest) else { return };
            if let Some(limits) = identity::parse_limits(s) {
                let again = identity::format_limits(&limits);
                assert_eq!(identity::parse_limits(&again).as_deref(), Some(limits.as_slice()), "{again:?}");
                let _ = rate_limit::config::compile_key_limits(&limits);
            }
        }
    }
}

fn key_auth_cache_config() -> key_auth::config::CacheConfig {
    key_auth::config::CacheConfig {
        ttl: std::time::Duration::from_secs(60),
        negative_ttl: std::time::Duration::from_secs(5),
        stale_window: std::time::Duration::from_secs(300),
        slots: 8192,
    }
}

/// A key-auth cache entry within the encoding's limits (strings ≤ 1024 bytes, lists ≤ 256).
fn arbitrary_key_entry(u: &mut Unstructured<'_>) -> arbitrary::Result<ka_cache::Entry> {
    fn short(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
        let s: String = u.arbitrary()?;
        let mut end = s.len().min(1024);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        Ok(s[..end].to_owned())
    }
    let state = match u.int_in_range(0..=3)? {
        0 => ka_cache::KeyState::Valid,
        1 => ka_cache::KeyState::NotFound,
        2 => ka_cache::KeyState::Revoked,
        _ => ka_cache::KeyState::Expired,
    };
    let n_scopes = u.int_in_range(0..=8)?;
    let n_limits = u.int_in_range(0..=4)?;
    Ok(ka_cache::Entry {
        hash: u.arbitrary()?,
        state,
        fetched_at_ms: u.arbitrary()?,
        expires_at_s: u.arbitrary()?,
        feed_seq: u.arbitrary()?,
        epoch: u.arbitrary()?,
        key_id: short(u)?,
        consumer_id: short(u)?,
        display_prefix: short(u)?,
        scopes: (0..n_scopes).map(|_| short(u)).collect::<arbitrary::Result<_>>()?,
        tier: short(u)?,
        limits: (0..n_limits)
            .map(|_| {
                Ok(ka_cache::Limit {
                    rate: u.arbitrary()?,
                    period_secs: u.arbitrary()?,
                    burst: u.arbitrary()?,
                })
            })
            .collect::<arbitrary::Result<_>>()?,
        previous_secret: u.arbitrary()?,
    })
}

// ---------------------------------------------------------------------------------------------
// Request fields every filter reads: query strings, cookies, client addresses, credentials.

/// Query strings, cookies, `X-Forwarded-For`, client addresses and credential lookup. Lines:
/// query string, header value, parameter/cookie name.
pub fn request_fields(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let (q, rest) = first_line(s);
    let (value, name) = first_line(rest);
    let name = first_line(name).0;

    let once = query::Query::parse(q).to_query_string();
    assert_eq!(query::Query::parse(&once).to_query_string(), once);
    let _ = query::first_value(q, name);
    let removed = route::remove_query_param(q, name);
    assert_eq!(route::remove_query_param(&removed, name), removed);
    if !name.is_empty() {
        // (An empty name matches the empty pair of an empty query; configs never name one.)
        assert!(route::query_param(&removed, name).is_empty(), "{name:?} still in {removed:?}");
    }
    let (path, query_part) = route::split_path(value);
    assert!(value.starts_with(path) && value.ends_with(query_part));

    if let Some(ip) = descriptor::client_ip(value.as_bytes()) {
        // One spelling per address: the address parsed from its own text is itself.
        assert_eq!(descriptor::client_ip(ip.to_string().as_bytes()), Some(ip), "{value:?}");
    }
    assert_eq!(descriptor::forwarded_for_hop(value.as_bytes(), 0), None);
    for hop in [1, 2, 255] {
        if let Some(ip) = descriptor::forwarded_for_hop(value.as_bytes(), hop) {
            assert_eq!(descriptor::client_ip(ip.to_string().as_bytes()), Some(ip), "{value:?}");
        }
    }
    let _ = jwt::cookie_values(value, name);

    let headers = vec![
        ("authorization".to_owned(), value.to_owned()),
        ("x-api-key".to_owned(), name.to_owned()),
        ("cookie".to_owned(), value.to_owned()),
    ];
    let jwt_sources = [
        jwt::config::Source::Header { name: "authorization".into(), prefix: Some("Bearer ".into()) },
        jwt::config::Source::Query { name: "access_token".into() },
        jwt::config::Source::Cookie { name: "token".into() },
    ];
    if let Ok(token) = jwt::find_token(&jwt_sources, &headers, q) {
        assert!(!token.is_empty());
    }
    let key_sources = [
        key_auth::config::Source::Header { name: "x-api-key".into(), prefix: None },
        key_auth::config::Source::Header { name: "authorization".into(), prefix: Some("Bearer ".into()) },
        key_auth::config::Source::Query { name: "api_key".into() },
    ];
    if let Ok(k) = key_auth::find_key(&key_sources, &headers, q) {
        assert_eq!(key::check_format(&k), Ok(()), "find_key returned a malformed key");
    }
}

// ---------------------------------------------------------------------------------------------
// Transform: templates and JSON paths.

/// The transform test request: templates render over it.
fn transform_request(extra: &str) -> transform::Request {
    let mut req = transform::Request::from_headers(vec![
        (":method".into(), b"POST".to_vec()),
        (
            ":path".into(),
            format!("/v1/users/42?page=2&q=a%20b&{}", extra.replace(['\n', '#'], "")).into_bytes(),
        ),
        (":authority".into(), b"api.example".to_vec()),
        ("content-type".into(), b"application/json".to_vec()),
        ("x-user".into(), b"bob".to_vec()),
        ("x-extra".into(), extra.as_bytes().to_vec()),
    ]);
    req.route_name = Some("users".into());
    req.properties.insert(vec!["tollgate.consumer_id".into()], b"alice".to_vec());
    req.properties.insert(vec!["source".into(), "address".into()], b"[::1]:5555".to_vec());
    req
}

/// Unescapes `{{` and `}}` the way the template syntax defines them; `None` at a lone brace.
fn unescape_braces(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '{' || c == '}' {
            if chars.next() != Some(c) {
                return None;
            }
        }
        out.push(c);
    }
    Some(out)
}

/// Transform value templates: compiled, then rendered over a request. A template without a
/// placeholder is its text with `{{`/`}}` unescaped, and renders to exactly that.
pub fn template(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let req = transform_request(s);
    let captures = transform::Captures::from_parts(
        vec![Some("/v1/users/42".into()), Some("42".into()), None],
        vec![("id".into(), 1), ("none".into(), 2)],
    );
    let Ok(t) = Template::parse(s) else { return };
    match t.as_literal() {
        Some(literal) => {
            assert_eq!(Some(&literal), unescape_braces(s).as_ref(), "literal of {s:?}");
            assert_eq!(t.render(&req, &captures), Some(literal.into_bytes()));
        }
        None => {
            assert!(t.vars().next().is_some());
            for v in t.vars() {
                let _ = v.property_path();
            }
            let _ = t.render(&req, &captures);
        }
    }
}

/// JSON bodies edited in place: first line a field path, second line a value to coerce, the
/// rest the document. Checked against serde_json as an independent parser:
///
/// - whatever serde_json reads, the editor accepts (it must never skip a rule on valid JSON);
/// - a document no operation changed is written back byte for byte;
/// - after `remove`, `set` or `append`, the document is still one valid JSON text, the value
///   written is found at its path, a removed value is gone, and serde_json reads the result as
///   the same edit applied to its own tree (for documents without duplicate names).
pub fn json_path(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let (path, rest) = first_line(s);
    let (value_line, doc_text) = first_line(rest);
    for ty in [
        tjson::ValueType::String,
        tjson::ValueType::Number,
        tjson::ValueType::Boolean,
        tjson::ValueType::Json,
    ] {
        if let Ok(v) = ty.coerce(value_line.as_bytes()) {
            assert!(doc::validate(v.as_bytes()).is_ok(), "{ty:?} coerced {value_line:?} to invalid JSON");
            match ty {
                tjson::ValueType::String => assert_eq!(
                    serde_json::from_slice::<String>(v.as_bytes()).ok().as_deref(),
                    Some(value_line)
                ),
                tjson::ValueType::Number => assert!(doc::is_number(v.as_bytes())),
                tjson::ValueType::Boolean => assert!(matches!(v.as_bytes(), b"true" | b"false")),
                tjson::ValueType::Json => {}
            }
        }
    }
    let serde: Option<Value> = serde_json::from_str(doc_text).ok();
    if serde.is_some() {
        assert!(
            doc::validate(doc_text.as_bytes()).is_ok(),
            "serde_json reads {doc_text:?}, the editor refused it"
        );
    }
    let Ok(p) = tjson::JsonPath::parse(path) else { return };
    let segs = p.segments();
    let fallback = br#"{"a": {"b": [1, 2, {"c": null}]}, "n": 18446744073709551617}"#;
    let (body, serde) = match doc::Doc::parse(doc_text.as_bytes().to_vec()) {
        Ok(_) => (doc_text.as_bytes().to_vec(), serde),
        Err(_) => (fallback.to_vec(), serde_json::from_slice(fallback).ok()),
    };
    let open = |b: &[u8]| doc::Doc::parse(b.to_vec()).expect("validated above");
    // Looking changes nothing a reader can see: the text stays as it was, byte for byte.
    let mut looked = open(&body);
    let found = looked.text_at(segs);
    if !looked.changed() {
        assert_eq!(looked.to_bytes(), body, "a document nobody changed was rewritten");
    }
    let unique = serde.as_ref().is_some_and(|v| no_duplicate_names(&body, v));

    let mut removed = open(&body);
    assert_eq!(removed.remove(segs), found.is_some(), "remove and text_at disagree on {path:?}");
    let after = removed.to_bytes();
    assert!(doc::validate(&after).is_ok(), "remove left invalid JSON: {}", String::from_utf8_lossy(&after));
    // (From an array, the next element moves into the index.)
    let in_object = open(&body).kind_at(&segs[..segs.len() - 1]) == Some(doc::Kind::Object);
    assert!(
        !in_object || !unique || open(&after).kind_at(segs).is_none(),
        "{path:?} still there after remove"
    );
    if let (true, Some(mut tree)) = (unique && found.is_some(), serde.clone()) {
        pointer_remove(&mut tree, segs);
        assert_eq!(serde_json::from_slice::<Value>(&after).ok(), Some(tree), "remove of {path:?}");
    }

    let marker = transform::doc::JsonText::string(path);
    let mut written = open(&body);
    if written.set(segs, &marker).is_ok() {
        let after = written.to_bytes();
        assert!(doc::validate(&after).is_ok(), "set left invalid JSON: {}", String::from_utf8_lossy(&after));
        if segs.last().map(String::as_str) != Some("-") {
            assert_eq!(
                open(&after).text_at(segs).as_deref(),
                Some(marker.as_bytes()),
                "set then get on {path:?}"
            );
        }
    }
    let mut appended = open(&body);
    if appended.append(segs, &marker).is_ok() {
        let after = appended.to_bytes();
        assert!(
            doc::validate(&after).is_ok(),
            "append left invalid JSON: {}",
            String::from_utf8_lossy(&after)
        );
    }
}

/// Whether serde_json's tree holds every name the text holds (no object names a field twice).
fn no_duplicate_names(body: &[u8], tree: &Value) -> bool {
    fn count(v: &Value) -> usize {
        match v {
            Value::Object(m) => m.len() + m.values().map(count).sum::<usize>(),
            Value::Array(a) => a.iter().map(count).sum(),
            _ => 0,
        }
    }
    // Every name in the text is a string followed by `:`; serde_json keeps one per distinct
    // name per object, so equal counts mean no duplicates.
    let mut names = 0;
    let mut in_string = false;
    let mut escaped = false;
    let mut string_end = false;
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => {
                    in_string = false;
                    string_end = true;
                    continue;
                }
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b':' if string_end => names += 1,
            b' ' | b'\t' | b'\n' | b'\r' => continue,
            _ => {}
        }
        string_end = false;
    }
    names == count(tree)
}

/// Removes what `segs` names from serde_json's tree, as the editor's `remove` does.
fn pointer_remove(tree: &mut Value, segs: &[String]) {
    let Some((last, parents)) = segs.split_last() else { return };
    let mut node = tree;
    for seg in parents {
        node = match node {
            Value::Object(m) => match m.get_mut(seg) {
                Some(n) => n,
                None => return,
            },
            Value::Array(a) => match seg.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                Some(n) => n,
                None => return,
            },
            _ => return,
        };
    }
    match node {
        Value::Object(m) => {
            m.remove(last);
        }
        Value::Array(a) => {
            if let Some(i) = last.parse::<usize>().ok().filter(|i| *i < a.len()) {
                a.remove(i);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Filter configurations. An invalid configuration is refused with an error naming a field; a
// valid one is used the way the filter uses it.

fn check_config_error(e: &tollgate_core::config::ConfigError, filter: &str) {
    // The field is a path such as `rules[2].limits[0].per`, `<root>` for the document, or the
    // name of an unknown field, which may be the empty string.
    assert!(
        !e.field.is_empty() || e.message.starts_with("unknown field ``"),
        "config error without a field: {e}"
    );
    assert!(!e.message.is_empty(), "config error without a message: {e}");
    assert!(e.to_string().starts_with(&format!("invalid {filter} config: ")), "{e}");
}

const FACTS: [RequestFacts<'static>; 3] = [
    RequestFacts { route_name: Some("api"), path: "/admin/users", method: "POST" },
    RequestFacts { route_name: None, path: "/", method: "GET" },
    RequestFacts { route_name: Some(""), path: "", method: "" },
];

pub fn config_key_auth(data: &[u8]) {
    match key_auth::config::Config::from_json(data) {
        Ok(cfg) => {
            assert!(cfg.cache.negative_ttl <= cfg.cache.ttl, "negative_ttl above ttl");
            assert!((1..=key_auth::config::MAX_SLOTS).contains(&cfg.cache.slots));
            assert!(!cfg.sources.is_empty());
            let _ = format!("{cfg:?}");
            let hash = [7u8; 32];
            let entry = ka_cache::Entry::not_found(hash, 0, 0, 0);
            for now_ms in [0, u64::MAX] {
                let _ =
                    ka_cache::classify(Some(entry.clone()), &hash, now_ms, Default::default(), &cfg.cache);
            }
            assert!(ka_cache::cache_slot(&hash, cfg.cache.slots) < cfg.cache.slots);
        }
        Err(e) => check_config_error(&e, "key-auth"),
    }
}

pub fn config_rate_limit(data: &[u8]) {
    match rate_limit::config::Config::from_json(data) {
        Ok(cfg) => {
            for facts in &FACTS {
                let _ = cfg.matching_rules(facts).count();
            }
            let _ = format!("{cfg:?}");
        }
        Err(e) => check_config_error(&e, "rate-limit"),
    }
}

pub fn config_jwt_auth(data: &[u8]) {
    match jwt::config::Config::from_json(data) {
        Ok(cfg) => {
            assert!(!cfg.providers.is_empty());
            for facts in &FACTS {
                let _ = cfg.rule(facts);
            }
            let _ = format!("{cfg:?}");
        }
        Err(e) => check_config_error(&e, "jwt-auth"),
    }
}

pub fn config_transform(data: &[u8]) {
    match transform::config::Config::from_json(data) {
        Ok(cfg) => {
            let req = transform_request("x=1");
            let matched = cfg.matching(&req).unwrap_or_default();
            let _ = cfg.properties(&matched);
            let _ = transform::request_head(&cfg, &req, &matched);
            let _ = transform::response_head(
                &cfg,
                &req,
                &matched,
                Some(200),
                vec![("x-a".into(), b"1".to_vec())],
            );
            let body = br#"{"a":{"b":[1,2,3]},"user":"x","n":1.5}"#;
            for change in [
                transform::request_body(&cfg, &req, &matched, body),
                transform::response_body(&cfg, &req, &matched, body),
            ] {
                if let transform::BodyOutcome::Changed(out) = change.outcome {
                    assert!(doc::validate(&out).is_ok(), "a body rule wrote invalid JSON");
                }
            }
            for side in [transform::Side::Request, transform::Side::Response] {
                let _ = transform::oversize(&cfg, side);
                let _ = transform::invalid_json(&cfg, side);
            }
        }
        Err(e) => check_config_error(&e, "transform"),
    }
}

pub fn config_request_signing(data: &[u8]) {
    match tollgate_core::signature::config::Config::from_json(data) {
        Ok(cfg) => {
            assert!(cfg.max_replay_window_s() > 0);
            for facts in &FACTS {
                let policy = cfg.policy_for(facts);
                assert!(policy.max_age_s > 0 && policy.clock_skew_s >= 0);
            }
            assert!(cfg.cache_slots >= 1 && cfg.replay_slots >= 1);
            let _ = format!("{cfg:?}");
        }
        Err(e) => check_config_error(&e, "request-signing"),
    }
}
