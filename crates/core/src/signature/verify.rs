//! Choosing a signature from `Signature-Input`/`Signature` and checking it against a policy,
//! then against the key. Every refusal is a [`Deny`] whose reason goes to logs and stats.

use super::base::{self, Message, SignatureParams};
use super::sf::{self, BareItem, Member};
use super::{CONTENT_DIGEST, SIGNATURE, SIGNATURE_INPUT, digest};

/// The algorithms a key can be bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    HmacSha256,
    Ed25519,
}

impl Algorithm {
    /// The name in the HTTP Signature Algorithms registry (the `alg` parameter).
    pub fn name(self) -> &'static str {
        match self {
            Self::HmacSha256 => "hmac-sha256",
            Self::Ed25519 => "ed25519",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "hmac-sha256" => Some(Self::HmacSha256),
            "ed25519" => Some(Self::Ed25519),
            _ => None,
        }
    }
}

/// Key material for verifying. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    Hmac(Vec<u8>),
    Ed25519([u8; 32]),
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Hmac(_) => f.write_str("Hmac(<redacted>)"),
            Self::Ed25519(key) => write!(f, "Ed25519({})", hex::encode(key)),
        }
    }
}

impl KeyMaterial {
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::Hmac(_) => Algorithm::HmacSha256,
            Self::Ed25519(_) => Algorithm::Ed25519,
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deny {
    MissingSignature,
    MalformedSignature,
    LabelNotFound,
    MissingKeyId,
    MissingCreated,
    CreatedInFuture,
    TooOld,
    Expired,
    MissingExpires,
    MissingNonce,
    TagMismatch,
    MissingComponent,
    UnsupportedComponent,
    UnsupportedAlgorithm,
    AlgorithmMismatch,
    BadSignature,
    MissingDigest,
    DigestMismatch,
    UnknownKey,
    RevokedKey,
    ExpiredKey,
    Replayed,
    ReplayStoreFull,
    BodyTooLarge,
    KeyServiceUnavailable,
    /// The path cannot be matched against the route rules (see [`crate::route::normalize_path`]).
    BadPath,
}

impl Deny {
    /// Stable reason, for logs and the `denied.<reason>` stat.
    pub fn reason(self) -> &'static str {
        match self {
            Self::MissingSignature => "missing_signature",
            Self::MalformedSignature => "malformed_signature",
            Self::LabelNotFound => "label_not_found",
            Self::MissingKeyId => "missing_keyid",
            Self::MissingCreated => "missing_created",
            Self::CreatedInFuture => "created_in_future",
            Self::TooOld => "signature_too_old",
            Self::Expired => "signature_expired",
            Self::MissingExpires => "missing_expires",
            Self::MissingNonce => "missing_nonce",
            Self::TagMismatch => "tag_mismatch",
            Self::MissingComponent => "missing_component",
            Self::UnsupportedComponent => "unsupported_component",
            Self::UnsupportedAlgorithm => "unsupported_algorithm",
            Self::AlgorithmMismatch => "algorithm_mismatch",
            Self::BadSignature => "bad_signature",
            Self::MissingDigest => "missing_digest",
            Self::DigestMismatch => "digest_mismatch",
            Self::UnknownKey => "unknown_key",
            Self::RevokedKey => "revoked_key",
            Self::ExpiredKey => "expired_key",
            Self::Replayed => "replayed",
            Self::ReplayStoreFull => "replay_store_full",
            Self::BodyTooLarge => "body_too_large",
            Self::KeyServiceUnavailable => "key_service_unavailable",
            Self::BadPath => "bad_path",
        }
    }

    /// Every reason, for defining stats.
    pub const ALL: [Deny; 26] = [
        Self::MissingSignature,
        Self::MalformedSignature,
        Self::LabelNotFound,
        Self::MissingKeyId,
        Self::MissingCreated,
        Self::CreatedInFuture,
        Self::TooOld,
        Self::Expired,
        Self::MissingExpires,
        Self::MissingNonce,
        Self::TagMismatch,
        Self::MissingComponent,
        Self::UnsupportedComponent,
        Self::UnsupportedAlgorithm,
        Self::AlgorithmMismatch,
        Self::BadSignature,
        Self::MissingDigest,
        Self::DigestMismatch,
        Self::UnknownKey,
        Self::RevokedKey,
        Self::ExpiredKey,
        Self::Replayed,
        Self::ReplayStoreFull,
        Self::BodyTooLarge,
        Self::KeyServiceUnavailable,
        Self::BadPath,
    ];

    pub fn status(self) -> u32 {
        match self {
            Self::BodyTooLarge => 413,
            Self::KeyServiceUnavailable | Self::ReplayStoreFull => 503,
            Self::BadPath => crate::route::PATH_REFUSED_STATUS,
            _ => 401,
        }
    }

    pub fn code(self) -> &'static str {
        match self.status() {
            400 => "bad_request",
            413 => "payload_too_large",
            503 => "unavailable",
            _ => "unauthorized",
        }
    }

    /// What the client is told: uniform per status, never the precise reason.
    pub fn message(self) -> &'static str {
        match self.status() {
            400 => crate::route::PATH_REFUSED_MESSAGE,
            413 => "request body is too large",
            503 => "request could not be verified; try again",
            _ => "a valid HTTP message signature is required",
        }
    }
}

crate::impl_denial!(Deny);

/// When `Content-Digest` must be covered and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DigestPolicy {
    /// Required when the request has a body (the default).
    #[default]
    WithBody,
    Always,
    Never,
}

/// What a signature must satisfy (per route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Use only this label; `None` takes the first acceptable one.
    pub label: Option<String>,
    /// Serialized component identifiers that must be covered (`@method`, `content-digest`).
    pub required_components: Vec<String>,
    pub content_digest: DigestPolicy,
    /// Seconds a signature may be in the future, and past `expires`.
    pub clock_skew_s: i64,
    /// Seconds after `created` a signature is accepted.
    pub max_age_s: i64,
    pub require_expires: bool,
    pub require_nonce: bool,
    pub tag: Option<String>,
}

impl Policy {
    /// Seconds a signature is remembered for replay protection after `created`.
    pub fn replay_window_s(&self) -> i64 {
        self.max_age_s + self.clock_skew_s
    }
}

/// The signature chosen for verification.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub label: String,
    pub params: SignatureParams,
    pub signature: Vec<u8>,
    pub key_id: String,
    pub created: i64,
    pub nonce: Option<String>,
    pub alg: Option<String>,
}

impl Candidate {
    pub fn covers_digest(&self) -> bool {
        self.params.covers("content-digest")
    }
}

/// Picks the signature to verify from the message's `Signature-Input` and `Signature` fields
/// and checks it against the policy (see [`select`]). Each field may come as several field
/// lines: they are one dictionary, combined as RFC 9110 section 5.3 says.
pub fn select_in(message: &Message, policy: &Policy, has_body: bool, now_s: i64) -> Result<Candidate, Deny> {
    let input = field_text(message, SIGNATURE_INPUT)?;
    let signature = field_text(message, SIGNATURE)?;
    select(input.as_deref(), signature.as_deref(), policy, has_body, now_s)
}

/// A signature field's combined value; a structured field holds only ASCII.
fn field_text(message: &Message, name: &str) -> Result<Option<String>, Deny> {
    message
        .field_value(name)
        .map(|bytes| String::from_utf8(bytes).map_err(|_| Deny::MalformedSignature))
        .transpose()
}

/// Picks the signature to verify and checks it against the policy (everything that does
/// not need the key or the body). `has_body`: the request carries a body.
pub fn select(
    signature_input: Option<&str>,
    signature: Option<&str>,
    policy: &Policy,
    has_body: bool,
    now_s: i64,
) -> Result<Candidate, Deny> {
    let (Some(input), Some(signature)) = (signature_input, signature) else {
        return Err(Deny::MissingSignature);
    };
    let inputs = sf::parse_dictionary(input).map_err(|_| Deny::MalformedSignature)?;
    let signatures = sf::parse_dictionary(signature).map_err(|_| Deny::MalformedSignature)?;
    if inputs.is_empty() {
        return Err(Deny::MissingSignature);
    }
    let mut first_error = None;
    for (label, member) in &inputs {
        if policy.label.as_ref().is_some_and(|l| l != label) {
            continue;
        }
        match check_one(label, member, &signatures, policy, has_body, now_s) {
            Ok(candidate) => return Ok(candidate),
            Err(deny) => {
                first_error.get_or_insert(deny);
            }
        }
    }
    Err(first_error.unwrap_or(Deny::LabelNotFound))
}

fn check_one(
    label: &str,
    member: &Member,
    signatures: &sf::Dictionary,
    policy: &Policy,
    has_body: bool,
    now_s: i64,
) -> Result<Candidate, Deny> {
    let params = SignatureParams::from_member(member).ok_or(Deny::MalformedSignature)?;
    if params.components.iter().any(|c| base::identifier_name(c).is_none()) {
        return Err(Deny::MalformedSignature);
    }
    let signature = match signatures.iter().find(|(l, _)| l == label).map(|(_, m)| m) {
        Some(Member::Item(sf::Item { value: BareItem::ByteSeq(bytes), .. })) => bytes.clone(),
        Some(_) => return Err(Deny::MalformedSignature),
        None => return Err(Deny::MissingSignature),
    };
    let key_id = params.string("keyid").filter(|k| !k.is_empty()).ok_or(Deny::MissingKeyId)?.to_owned();
    let created = params.integer("created").ok_or(Deny::MissingCreated)?;
    if created > now_s + policy.clock_skew_s {
        return Err(Deny::CreatedInFuture);
    }
    if now_s - created > policy.max_age_s {
        return Err(Deny::TooOld);
    }
    match params.integer("expires") {
        Some(expires) if now_s > expires + policy.clock_skew_s => return Err(Deny::Expired),
        Some(_) => {}
        None if policy.require_expires => return Err(Deny::MissingExpires),
        None => {}
    }
    let nonce = params.string("nonce").map(str::to_owned);
    if policy.require_nonce && nonce.as_deref().is_none_or(str::is_empty) {
        return Err(Deny::MissingNonce);
    }
    if let Some(tag) = &policy.tag
        && params.string("tag") != Some(tag.as_str())
    {
        return Err(Deny::TagMismatch);
    }
    let alg = match sf::param(&params.params, "alg") {
        Some(BareItem::String(a)) => {
            if Algorithm::from_name(a).is_none() {
                return Err(Deny::UnsupportedAlgorithm);
            }
            Some(a.clone())
        }
        Some(_) => return Err(Deny::MalformedSignature),
        None => None,
    };
    for required in &policy.required_components {
        if !params.covers(required) {
            return Err(Deny::MissingComponent);
        }
    }
    let digest_needed = match policy.content_digest {
        DigestPolicy::Always => true,
        DigestPolicy::WithBody => has_body,
        DigestPolicy::Never => false,
    };
    if digest_needed && !params.covers("content-digest") {
        return Err(Deny::MissingDigest);
    }
    Ok(Candidate { label: label.to_owned(), params, signature, key_id, created, nonce, alg })
}

/// Whether the request's content is bound by `Content-Digest`: the field is present, or the
/// signature covers it. Bound content is checked whatever its framing, an empty body included.
pub fn binds_content(message: &Message, candidate: &Candidate) -> bool {
    candidate.covers_digest() || !message.header_values(CONTENT_DIGEST).is_empty()
}

/// Checks the whole content (empty when the request has none) against `Content-Digest` when
/// the content is bound (see [`binds_content`]).
pub fn check_content(message: &Message, candidate: &Candidate, content: &[u8]) -> Result<(), Deny> {
    if !binds_content(message, candidate) {
        return Ok(());
    }
    let value = message.field_value(CONTENT_DIGEST).ok_or(Deny::MissingDigest)?;
    let value = std::str::from_utf8(&value).map_err(|_| Deny::DigestMismatch)?;
    digest::verify_content_digest(value, content).map_err(|_| Deny::DigestMismatch)
}

/// Builds the signature base of the chosen signature and checks the algorithm binding.
pub fn prepare(candidate: &Candidate, message: &Message, key_alg: Algorithm) -> Result<Vec<u8>, Deny> {
    if let Some(alg) = &candidate.alg
        && alg != key_alg.name()
    {
        return Err(Deny::AlgorithmMismatch);
    }
    base::signature_base(message, &candidate.params).map_err(|e| match e {
        base::BaseError::Missing(_) => Deny::MissingComponent,
        base::BaseError::Unsupported(_) | base::BaseError::Duplicate(_) => Deny::UnsupportedComponent,
    })
}

/// Verifies the chosen signature over `message` with `key` (RFC 9421 section 3.2).
#[cfg(feature = "signature")]
pub fn verify(candidate: &Candidate, message: &Message, key: &KeyMaterial) -> Result<(), Deny> {
    let base = prepare(candidate, message, key.algorithm())?;
    if super::crypto::verify(key, &base, &candidate.signature) { Ok(()) } else { Err(Deny::BadSignature) }
}
