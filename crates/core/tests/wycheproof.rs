//! The JWS verifier against Wycheproof vectors (`vectors/wycheproof-jws-subset.json`, an
//! extract of google/wycheproof, Apache-2.0; its `source` field names the commit).
//!
//! - ECDSA P-256 in IEEE P1363 encoding (the JWS encoding of ES256): the edge-case signatures
//!   Wycheproof marks invalid are refused; the valid ones whose key the extract carries verify.
//! - ES256 special cases: signatures of the wrong size, or with `r` or `s` zero, one, `n - 1` or
//!   `n`, are refused.
//! - RS256: PKCS #1 v1.5 encoded messages with a malformed `DigestInfo` (long-form or overflowing
//!   lengths, garbage, wrong OID or NULL, trailing bytes) are refused even when the RSA
//!   arithmetic is right.
#![cfg(feature = "jwt")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rsa::traits::PrivateKeyParts as _;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tollgate_core::jwt::jws::{self, Alg};
use tollgate_core::jwt::keys::KeySet;
use tollgate_core::jwt::{Deny, b64, jwk};

const VECTORS: &str = include_str!("vectors/wycheproof-jws-subset.json");

/// The message Wycheproof's ECDSA test groups sign ("123400").
const P1363_MESSAGE: &str = "123400";

/// The valid P1363 vectors whose key is among the extract's `p1363_keys` (test case, key
/// index): the others come from Wycheproof groups with keys of their own, which the extract
/// does not carry.
const KEYED_VALID: [(u64, usize); 3] = [(1, 0), (115, 1), (120, 2)];

fn vectors() -> Value {
    serde_json::from_str(VECTORS).unwrap()
}

fn hex(v: &Value) -> Vec<u8> {
    ::hex::decode(v.as_str().unwrap()).unwrap()
}

fn b64url(v: &Value) -> Vec<u8> {
    b64::decode(v.as_str().unwrap().as_bytes()).unwrap()
}

fn key_set(jwk: &str) -> KeySet {
    let keys = jwk::parse_jwks(format!(r#"{{"keys":[{jwk}]}}"#).as_bytes(), jwk::Limits::default()).unwrap();
    KeySet::compile(&keys).unwrap()
}

fn ec_key(x: &[u8], y: &[u8]) -> KeySet {
    key_set(&format!(r#"{{"kty":"EC","crv":"P-256","x":"{}","y":"{}"}}"#, b64::encode(x), b64::encode(y)))
}

/// A parsed token of `alg` over a fixed header and payload, signed by `sign`.
fn token(alg: Alg, sign: impl Fn(&[u8]) -> Vec<u8>) -> jws::Jws {
    let input = format!(
        "{}.{}",
        b64::encode(format!(r#"{{"alg":"{}"}}"#, alg.name()).as_bytes()),
        b64::encode(br#"{"sub":"wycheproof"}"#)
    );
    let text = format!("{input}.{}", b64::encode(&sign(input.as_bytes())));
    jws::parse(&text, 1 << 16).unwrap()
}

/// The verifier on its own: a signing input and a signature, as `jws::parse` hands them on.
fn detached(alg: Alg, input: &str, signature: Vec<u8>) -> jws::Jws {
    let mut jws = token(alg, |_| vec![0]);
    jws.signing_input = input.to_owned();
    jws.signature = signature;
    jws
}

#[test]
fn p1363_edge_cases_verify_exactly_as_wycheproof_says() {
    let v = vectors();
    let keys: Vec<KeySet> =
        v["p1363_keys"].as_array().unwrap().iter().map(|k| ec_key(&hex(&k["x"]), &hex(&k["y"]))).collect();
    let valid = v["p1363_valid"].as_array().unwrap();
    for (tc, key) in KEYED_VALID {
        let case = valid.iter().find(|c| c["tc"] == tc).unwrap();
        let sig = [hex(&case["r"]), hex(&case["s"])].concat();
        let jws = detached(Alg::ES256, P1363_MESSAGE, sig);
        assert_eq!(keys[key].verify(&jws, &[Alg::ES256]), Ok(()), "tc {tc}: {}", case["comment"]);
    }
    let invalid = v["p1363_invalid"].as_array().unwrap();
    assert_eq!(invalid.len(), 59);
    for case in invalid {
        let key = usize::try_from(case["key"].as_u64().unwrap()).unwrap();
        let jws = detached(Alg::ES256, P1363_MESSAGE, hex(&case["sig"]));
        assert_eq!(
            keys[key].verify(&jws, &[Alg::ES256]),
            Err(Deny::BadSignature),
            "tc {}: {}",
            case["tc"],
            case["comment"]
        );
    }
}

#[test]
fn es256_tokens_with_malformed_or_out_of_range_signatures_are_refused() {
    use p256::ecdsa::signature::Signer as _;
    let v = vectors();
    let k = &v["jws_es256_key"];
    let keys = ec_key(&b64url(&k["x"]), &b64url(&k["y"]));
    let signing = p256::ecdsa::SigningKey::from_slice(&b64url(&k["d"])).unwrap();
    let good = token(Alg::ES256, |input| {
        let sig: p256::ecdsa::Signature = signing.sign(input);
        sig.to_bytes().to_vec()
    });
    assert_eq!(keys.verify(&good, &[Alg::ES256]), Ok(()), "the key and the token are right");
    // The extract has no signing input for these cases, so they are refused whatever the
    // message; the trailing-bytes cases also on a signature that is right for this token.
    for extra in [&[0u8, 0][..], &[0], &[1]] {
        let mut longer = good.clone();
        longer.signature.extend_from_slice(extra);
        assert_eq!(keys.verify(&longer, &[Alg::ES256]), Err(Deny::BadSignature), "{extra:?}");
    }
    let cases = v["jws_es256_special"].as_array().unwrap();
    assert_eq!(cases.len(), 23);
    for case in cases {
        let jws = token(Alg::ES256, |_| b64url(&case["sig"]));
        assert_eq!(
            keys.verify(&jws, &[Alg::ES256]),
            Err(Deny::BadSignature),
            "tc {}: {}",
            case["tc"],
            case["comment"]
        );
    }
}

/// `0001[ff*201]00…` with the repeats written out.
fn expand(pattern: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('[') {
        out.extend(::hex::decode(&rest[..open]).unwrap());
        let close = rest[open..].find(']').unwrap() + open;
        let (byte, times) = rest[open + 1..close].split_once('*').unwrap();
        out.extend(std::iter::repeat_n(u8::from_str_radix(byte, 16).unwrap(), times.parse().unwrap()));
        rest = &rest[close + 1..];
    }
    out.extend(::hex::decode(rest).unwrap());
    out
}

#[test]
fn rs256_signatures_over_malformed_pkcs1_paddings_are_refused() {
    let v = vectors();
    let k = &v["jws_rs256_key"];
    let keys = key_set(&format!(
        r#"{{"kty":"RSA","n":"{}","e":"{}"}}"#,
        k["n"].as_str().unwrap(),
        k["e"].as_str().unwrap()
    ));
    let int = |name: &str| rsa::BigUint::from_bytes_be(&b64url(&k[name]));
    let private = rsa::RsaPrivateKey::from_components(int("n"), int("e"), int("d"), vec![]).unwrap();
    let size = b64url(&k["n"]).len();
    // The raw RSA signature of an encoded message, em^d mod n (by the Chinese remainder
    // theorem, as the primes are recovered), left-padded to the modulus size.
    let (p, q) = (&private.primes()[0], &private.primes()[1]);
    let (dp, dq, q_inv) = (private.dp().unwrap(), private.dq().unwrap(), private.crt_coefficient().unwrap());
    let sign = |em: &[u8]| {
        assert_eq!(em.len(), size, "the encoded message fills the modulus");
        let m = rsa::BigUint::from_bytes_be(em);
        let (s_p, s_q) = (m.modpow(dp, p), m.modpow(dq, q));
        let h = (&q_inv * (&s_p + p - &s_q % p)) % p;
        let s = (s_q + h * q).to_bytes_be();
        [vec![0; size - s.len()], s].concat()
    };
    let well_formed = format!("0001[ff*{}]003031300d060960864801650304020105000420", size - 3 - 19 - 32);
    let good =
        token(Alg::RS256, |input| sign(&[expand(&well_formed), Sha256::digest(input).to_vec()].concat()));
    assert_eq!(keys.verify(&good, &[Alg::RS256]), Ok(()), "the key and the padding are right");
    let cases = v["jws_rs256_padding"].as_array().unwrap();
    assert_eq!(cases.len(), 26);
    for case in cases {
        let jws = token(Alg::RS256, |input| {
            let before = expand(case["em_before"].as_str().unwrap());
            let after = ::hex::decode(case["em_after"].as_str().unwrap()).unwrap();
            sign(&[before, Sha256::digest(input).to_vec(), after].concat())
        });
        assert_eq!(
            keys.verify(&jws, &[Alg::RS256]),
            Err(Deny::BadSignature),
            "tc {}: {}",
            case["tc"],
            case["comment"]
        );
    }
}
