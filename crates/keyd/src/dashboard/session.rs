//! Dashboard sessions: a cookie the service signs (HMAC-SHA256 under a 64-byte key drawn at random when
//! the process starts), holding the role and the expiry; and the CSRF token derived from it.
//!
//! Cookie value: `v1.<role>.<expires_at>.<nonce>.<mac>`, the MAC (base64url) over everything
//! before it. A restart draws a new key, so every session ends with the process. The CSRF token is
//! HMAC-SHA256 over the whole cookie value (under the same key, with its own label), so it is
//! worth nothing without the session it was issued for, and nothing stored is needed to check it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::digest::KeyInit;
use hmac::digest::generic_array::GenericArray;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::Result;
use crate::secrets;

/// The session cookie's name.
pub const COOKIE: &str = "tollgate_session";

/// How long a session lasts: 8 hours.
pub const LIFETIME: i64 = 8 * 3_600;

const VERSION: &str = "v1";

/// The signing key's length: SHA-256's block size.
pub const KEY_LEN: usize = 64;

/// What a session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything, with the admin token's authority (audit actor `admin-token`).
    Admin,
    /// Read every page, change nothing.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Viewer => "viewer",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Self::Admin, Self::Viewer].into_iter().find(|r| r.as_str() == text)
    }
}

/// A verified session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub role: Role,
    pub expires_at: i64,
    /// The cookie value it came from (the CSRF token is derived from it).
    value: String,
}

impl Session {
    /// The cookie value: the session's identity (the logged-out list holds it).
    pub fn value(&self) -> &str {
        &self.value
    }
}

/// Issues and checks session cookies and CSRF tokens.
pub struct Signer {
    key: [u8; KEY_LEN],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

impl Signer {
    /// A signer with a fresh random key.
    pub fn random() -> Result<Self> {
        Ok(Self { key: secrets::random_bytes::<KEY_LEN>()? })
    }

    /// A signer with a given key (tests).
    pub fn with_key(key: [u8; KEY_LEN]) -> Self {
        Self { key }
    }

    fn mac(&self, label: &[u8], data: &[u8]) -> Hmac<Sha256> {
        // A key of exactly SHA-256's block size: HMAC uses it as it is.
        let mut mac = <Hmac<Sha256> as KeyInit>::new(GenericArray::from_slice(&self.key));
        mac.update(label);
        mac.update(&[0]);
        mac.update(data);
        mac
    }

    /// A new session cookie value for `role`, valid for [`LIFETIME`] from `now`.
    pub fn issue(&self, role: Role, now: i64) -> Result<String> {
        let nonce = hex::encode(secrets::random_bytes::<16>()?);
        let body = format!("{VERSION}.{}.{}.{nonce}", role.as_str(), now.saturating_add(LIFETIME));
        let tag = self.mac(b"session", body.as_bytes()).finalize().into_bytes();
        Ok(format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag)))
    }

    /// The session in `value` when its MAC is right (checked in constant time) and it has not
    /// expired at `now`.
    pub fn verify(&self, value: &str, now: i64) -> Option<Session> {
        let (body, tag) = value.rsplit_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.mac(b"session", body.as_bytes()).verify_slice(&tag).ok()?;
        let mut parts = body.split('.');
        let (version, role, expires_at) = (parts.next()?, parts.next()?, parts.next()?);
        let (_nonce, rest) = (parts.next()?, parts.next());
        if version != VERSION || rest.is_some() {
            return None;
        }
        let role = Role::parse(role)?;
        let expires_at: i64 = expires_at.parse().ok()?;
        // Expired, or from a clock far ahead: refused either way.
        if now >= expires_at || expires_at > now.saturating_add(LIFETIME) {
            return None;
        }
        Some(Session { role, expires_at, value: value.to_owned() })
    }

    /// The CSRF token of `session`.
    pub fn csrf_token(&self, session: &Session) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(b"csrf", session.value.as_bytes()).finalize().into_bytes())
    }

    /// Whether `presented` is `session`'s CSRF token (compared in constant time).
    pub fn check_csrf(&self, session: &Session, presented: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(presented.trim()) else {
            return false;
        };
        self.mac(b"csrf", session.value.as_bytes()).verify_slice(&tag).is_ok()
    }
}

/// The `Set-Cookie` value that stores a session: HttpOnly, SameSite=Strict, Path=/, for
/// [`LIFETIME`] (and `Secure` when the dashboard is served over TLS by a proxy in front).
pub fn set_cookie(value: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={LIFETIME}{secure}")
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

/// The values of every session cookie in `Cookie` header values (a browser may send several).
pub fn cookie_values<'a>(headers: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    headers
        .into_iter()
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn signer() -> Signer {
        Signer::with_key([7; KEY_LEN])
    }

    #[test]
    fn an_issued_session_verifies_with_its_role_until_it_expires() {
        let s = signer();
        for role in [Role::Admin, Role::Viewer] {
            let value = s.issue(role, NOW).unwrap();
            let session = s.verify(&value, NOW).unwrap();
            assert_eq!(session.role, role);
            assert_eq!(session.expires_at, NOW + LIFETIME);
            assert!(s.verify(&value, NOW + LIFETIME - 1).is_some());
            assert!(s.verify(&value, NOW + LIFETIME).is_none(), "expired at its expiry");
            assert!(s.verify(&value, NOW + 10 * LIFETIME).is_none());
        }
    }

    #[test]
    fn each_session_is_new() {
        let s = signer();
        assert_ne!(s.issue(Role::Admin, NOW).unwrap(), s.issue(Role::Admin, NOW).unwrap());
    }

    #[test]
    fn a_tampered_cookie_is_refused() {
        let s = signer();
        let value = s.issue(Role::Viewer, NOW).unwrap();
        // The role changed with the MAC kept.
        assert!(s.verify(&value.replacen(".viewer.", ".admin.", 1), NOW).is_none());
        // A later expiry.
        let (body, tag) = value.rsplit_once('.').unwrap();
        let parts: Vec<&str> = body.split('.').collect();
        let later = format!("{}.{}.{}.{}.{tag}", parts[0], parts[1], NOW + LIFETIME + 100, parts[3]);
        assert!(s.verify(&later, NOW).is_none());
        // Each character of the value flipped in turn.
        for i in 0..value.len() {
            let mut bytes = value.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let Ok(changed) = String::from_utf8(bytes) else { continue };
            if changed != value {
                assert!(s.verify(&changed, NOW).is_none(), "accepted {changed}");
            }
        }
        // Truncated, empty, extra parts, another key.
        assert!(s.verify(&value[..value.len() - 1], NOW).is_none());
        assert!(s.verify("", NOW).is_none());
        assert!(s.verify(&format!("x.{value}"), NOW).is_none());
        assert!(Signer::with_key([8; KEY_LEN]).verify(&value, NOW).is_none());
    }

    #[test]
    fn a_session_signed_with_a_correct_mac_but_unknown_shape_is_refused() {
        let s = signer();
        let sign = |body: &str| {
            let tag = s.mac(b"session", body.as_bytes()).finalize().into_bytes();
            format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag))
        };
        let until = NOW + 60;
        assert!(s.verify(&sign(&format!("v1.admin.{until}.n")), NOW).is_some());
        assert!(s.verify(&sign(&format!("v2.admin.{until}.n")), NOW).is_none());
        assert!(s.verify(&sign(&format!("v1.root.{until}.n")), NOW).is_none());
        assert!(s.verify(&sign(&format!("v1.admin.{until}.n.extra")), NOW).is_none());
        assert!(s.verify(&sign("v1.admin.soon.n"), NOW).is_none());
        // A CSRF token is no session: the labels differ.
        let session = s.verify(&s.issue(Role::Admin, NOW).unwrap(), NOW).unwrap();
        let csrf = s.csrf_token(&session);
        assert!(s.verify(&format!("v1.admin.{until}.n.{csrf}"), NOW).is_none());
    }

    #[test]
    fn the_csrf_token_belongs_to_its_session() {
        let s = signer();
        let a = s.verify(&s.issue(Role::Admin, NOW).unwrap(), NOW).unwrap();
        let b = s.verify(&s.issue(Role::Admin, NOW).unwrap(), NOW).unwrap();
        let token = s.csrf_token(&a);
        assert!(s.check_csrf(&a, &token));
        assert!(!s.check_csrf(&b, &token), "another session's token");
        assert!(!s.check_csrf(&a, ""));
        assert!(!s.check_csrf(&a, "not base64!"));
        assert!(!s.check_csrf(&a, &token[..token.len() - 2]));
        let mut flipped = token.clone().into_bytes();
        flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
        assert!(!s.check_csrf(&a, &String::from_utf8(flipped).unwrap()));
        assert!(!Signer::with_key([9; KEY_LEN]).check_csrf(&a, &token), "another process's key");
    }

    #[test]
    fn cookies_are_http_only_strict_and_found_among_others() {
        let set = set_cookie("v", false);
        assert_eq!(set, "tollgate_session=v; Path=/; HttpOnly; SameSite=Strict; Max-Age=28800");
        assert!(set_cookie("v", true).ends_with("; Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
        assert_eq!(
            cookie_values(["a=1; tollgate_session=x.y", "tollgate_session= z ;b=2", "tollgate_sessionx=no"]),
            ["x.y", "z"]
        );
        assert!(cookie_values(["other=1"]).is_empty());
    }
}
