//! Request validation: checks each field of a request and turns it into the domain value it
//! stands for. Every error names the offending field. The answers' protobuf form is
//! [`crate::convert`]'s job.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tollgate_proto::v1 as pb;

use crate::error::{Error, Result};
use crate::model::{
    CachePurge, KeyStatus, Metadata, Period, PurgeTarget, RateLimit, RateLimitPolicy, UsageCount, UsageQuery,
    UsageReport,
};

/// Longest consumer id.
pub const MAX_ID_LEN: usize = 64;
/// Longest consumer or key name.
pub const MAX_NAME_LEN: usize = 128;
/// Most metadata entries per object.
pub const MAX_METADATA_ENTRIES: usize = 64;
/// Longest metadata key.
pub const MAX_METADATA_KEY_LEN: usize = 128;
/// Longest metadata value.
pub const MAX_METADATA_VALUE_LEN: usize = 1024;
/// Most scopes per key.
pub const MAX_SCOPES: usize = 64;
/// Longest scope.
pub const MAX_SCOPE_LEN: usize = 128;
/// Most limits per rate-limit policy.
pub const MAX_LIMITS: usize = 16;
/// Longest revocation reason.
pub const MAX_REASON_LEN: usize = 512;
/// Longest rotation grace period: 30 days.
pub const MAX_GRACE_SECONDS: u64 = 30 * 24 * 3600;
/// Longest key lifetime: 100 years.
pub const MAX_TTL_SECONDS: u64 = 100 * 365 * 24 * 3600;
/// Default page size of the list RPCs.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page size of the list RPCs.
pub const MAX_PAGE_SIZE: usize = 500;
/// Most counts in one usage report.
pub const MAX_USAGE_COUNTS: usize = 10_000;
/// Longest gateway name in a usage report.
pub const MAX_GATEWAY_LEN: usize = 128;
/// Longest usage outcome.
pub const MAX_OUTCOME_LEN: usize = 64;
/// Most keys asked for in one usage query.
pub const MAX_USAGE_KEYS: usize = 1000;
/// Longest key id.
pub const MAX_KEY_ID_LEN: usize = 64;

/// Default and largest `limit` of ListChanges.
pub const MAX_CHANGES: usize = 1000;

/// `true` for a valid consumer id: letters, digits, `-`, `_` and `.`, 1 to 64 characters.
pub fn is_valid_consumer_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checks a consumer id.
pub fn consumer_id(field: &str, id: &str) -> Result<()> {
    if is_valid_consumer_id(id) {
        Ok(())
    } else {
        Err(Error::invalid(field, format!("must be 1 to {MAX_ID_LEN} letters, digits, '-', '_' or '.'")))
    }
}

/// Checks that a reference (id or name) is present.
pub fn required(field: &str, value: &str) -> Result<()> {
    if value.is_empty() { Err(Error::invalid(field, "is required")) } else { Ok(()) }
}

/// Parses webhook event types: at least one, each known, none twice.
pub fn webhook_events(field: &str, events: &[String]) -> Result<Vec<crate::webhooks::EventType>> {
    use crate::webhooks::EventType;
    if events.is_empty() {
        return Err(Error::invalid(field, "must name at least one event type"));
    }
    let mut parsed: Vec<EventType> = Vec::with_capacity(events.len());
    for (i, text) in events.iter().enumerate() {
        let event = EventType::parse(text).ok_or_else(|| {
            let known: Vec<&str> = EventType::ALL.iter().map(|e| e.as_str()).collect();
            Error::invalid(format!("{field}[{i}]"), format!("{text:?} is not one of {}", known.join(", ")))
        })?;
        if parsed.contains(&event) {
            return Err(Error::invalid(format!("{field}[{i}]"), format!("{text:?} is named twice")));
        }
        parsed.push(event);
    }
    Ok(parsed)
}

/// Checks a name: at most 128 characters, no control characters.
pub fn name(field: &str, name: &str) -> Result<()> {
    if name.chars().count() > MAX_NAME_LEN {
        return Err(Error::invalid(field, format!("must be at most {MAX_NAME_LEN} characters")));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Checks and converts metadata.
pub fn metadata(field: &str, entries: HashMap<String, String>) -> Result<Metadata> {
    if entries.len() > MAX_METADATA_ENTRIES {
        return Err(Error::invalid(field, format!("must have at most {MAX_METADATA_ENTRIES} entries")));
    }
    for (key, value) in &entries {
        if key.is_empty() || key.chars().count() > MAX_METADATA_KEY_LEN {
            return Err(Error::invalid(
                field,
                format!("keys must be 1 to {MAX_METADATA_KEY_LEN} characters"),
            ));
        }
        if value.chars().count() > MAX_METADATA_VALUE_LEN {
            return Err(Error::invalid(
                format!("{field}[{key}]"),
                format!("must be at most {MAX_METADATA_VALUE_LEN} characters"),
            ));
        }
    }
    Ok(entries.into_iter().collect())
}

/// Checks scopes: non-empty, no whitespace, no duplicates.
pub fn scopes(field: &str, scopes: Vec<String>) -> Result<Vec<String>> {
    if scopes.len() > MAX_SCOPES {
        return Err(Error::invalid(field, format!("must have at most {MAX_SCOPES} entries")));
    }
    for (i, scope) in scopes.iter().enumerate() {
        let field = format!("{field}[{i}]");
        if scope.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        if scope.chars().count() > MAX_SCOPE_LEN {
            return Err(Error::invalid(field, format!("must be at most {MAX_SCOPE_LEN} characters")));
        }
        if scope.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::invalid(field, "must not contain spaces"));
        }
        if scopes[..i].contains(scope) {
            return Err(Error::invalid(field, format!("duplicate scope {scope:?}")));
        }
    }
    Ok(scopes)
}

fn period(field: &str, value: i32) -> Result<Period> {
    pb::Period::try_from(value)
        .ok()
        .and_then(|period| Period::try_from(period).ok())
        .ok_or_else(|| Error::invalid(field, "must be SECOND, MINUTE, HOUR or DAY"))
}

/// Checks and converts a rate-limit policy. An empty policy means none.
pub fn rate_limit(field: &str, policy: Option<pb::RateLimitPolicy>) -> Result<Option<RateLimitPolicy>> {
    let Some(policy) = policy else {
        return Ok(None);
    };
    if policy.tier.is_empty() && policy.limits.is_empty() {
        return Ok(None);
    }
    if policy.tier.chars().count() > MAX_NAME_LEN
        || policy.tier.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::invalid(
            format!("{field}.tier"),
            format!("must be at most {MAX_NAME_LEN} characters without spaces"),
        ));
    }
    if policy.limits.len() > MAX_LIMITS {
        return Err(Error::invalid(
            format!("{field}.limits"),
            format!("must have at most {MAX_LIMITS} entries"),
        ));
    }
    let mut limits = Vec::with_capacity(policy.limits.len());
    for (i, limit) in policy.limits.into_iter().enumerate() {
        if limit.rate == 0 {
            return Err(Error::invalid(format!("{field}.limits[{i}].rate"), "must be greater than 0"));
        }
        if limit.burst != 0 && limit.burst < limit.rate {
            return Err(Error::invalid(
                format!("{field}.limits[{i}].burst"),
                "must be 0 (same as rate) or at least rate",
            ));
        }
        limits.push(RateLimit {
            rate: limit.rate,
            period: period(&format!("{field}.limits[{i}].period"), limit.period)?,
            burst: limit.burst,
        });
    }
    Ok(Some(RateLimitPolicy { tier: policy.tier, limits }))
}

/// The absolute expiry of a new key from `expires_at` or `ttl_seconds` (at most one).
pub fn expiry(expires_at: i64, ttl_seconds: u64, now: i64) -> Result<i64> {
    if expires_at != 0 && ttl_seconds != 0 {
        return Err(Error::invalid("expires_at", "set at most one of expires_at and ttl_seconds"));
    }
    if ttl_seconds != 0 {
        if ttl_seconds > MAX_TTL_SECONDS {
            return Err(Error::invalid("ttl_seconds", format!("must be at most {MAX_TTL_SECONDS}")));
        }
        let ttl = i64::try_from(ttl_seconds).map_err(|_| Error::invalid("ttl_seconds", "too large"))?;
        return Ok(now.saturating_add(ttl));
    }
    future_time("expires_at", expires_at, now)
}

/// A time that must be 0 (none) or in the future.
pub fn future_time(field: &str, at: i64, now: i64) -> Result<i64> {
    if at < 0 {
        return Err(Error::invalid(field, "must not be negative"));
    }
    if at != 0 && at <= now {
        return Err(Error::invalid(field, "must be in the future"));
    }
    Ok(at)
}

/// Longest tag, prefix, URL or host a cache purge may name (the filter's own bound).
pub const MAX_PURGE_VALUE: usize = 1024;

/// A cache purge: exactly one target; tags, prefixes, URLs and hosts are visible ASCII, without
/// spaces (a tag) or commas; prefixes and URLs begin with `/`.
pub fn cache_purge(purge: Option<pb::CachePurge>) -> Result<CachePurge> {
    let p = purge.ok_or_else(|| Error::invalid("purge", "is required"))?;
    let given = [!p.tag.is_empty(), !p.prefix.is_empty(), !p.url.is_empty(), p.all];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(Error::invalid("purge", "give exactly one of tag, prefix, url and all"));
    }
    let text = |field: &str, value: &str| -> Result<()> {
        if value.len() > MAX_PURGE_VALUE {
            return Err(Error::invalid(field, format!("must be at most {MAX_PURGE_VALUE} bytes")));
        }
        if !value.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            return Err(Error::invalid(field, "must be visible ASCII without spaces or commas"));
        }
        Ok(())
    };
    text("purge.tag", &p.tag)?;
    text("purge.host", &p.host)?;
    for (field, value) in [("purge.prefix", &p.prefix), ("purge.url", &p.url)] {
        text(field, value)?;
        if !value.is_empty() && !value.starts_with('/') {
            return Err(Error::invalid(field, "must begin with `/`"));
        }
    }
    if !p.host.is_empty() && p.prefix.is_empty() && p.url.is_empty() {
        return Err(Error::invalid("purge.host", "goes with prefix or url"));
    }
    let target = if p.all {
        PurgeTarget::All
    } else if !p.tag.is_empty() {
        PurgeTarget::Tag(p.tag)
    } else if !p.prefix.is_empty() {
        PurgeTarget::Prefix(p.prefix)
    } else {
        PurgeTarget::Url(p.url)
    };
    Ok(CachePurge { target, host: p.host.to_ascii_lowercase(), soft: p.soft })
}

/// Longest JWT subject (`<iss> <sub>`) a usage count may name.
pub const MAX_SUBJECT_LEN: usize = 512;
/// Longest rate-limit rule name a usage count may name.
pub const MAX_RULE_LEN: usize = 128;

/// A revocation reason.
pub fn reason(reason: &str) -> Result<()> {
    if reason.chars().count() > MAX_REASON_LEN {
        return Err(Error::invalid("reason", format!("must be at most {MAX_REASON_LEN} characters")));
    }
    Ok(())
}

/// The end of a rotation grace period.
pub fn grace_end(grace_seconds: u64, now: i64) -> Result<i64> {
    if grace_seconds > MAX_GRACE_SECONDS {
        return Err(Error::invalid("grace_period_seconds", format!("must be at most {MAX_GRACE_SECONDS}")));
    }
    let grace =
        i64::try_from(grace_seconds).map_err(|_| Error::invalid("grace_period_seconds", "too large"))?;
    Ok(now.saturating_add(grace))
}

/// The start of a webhook replay: a Unix time, given, and not after `now`.
pub fn replay_since(since: i64, now: i64) -> Result<i64> {
    if since <= 0 {
        return Err(Error::invalid("since", "is required (Unix seconds)"));
    }
    if since > now {
        return Err(Error::invalid("since", "is in the future"));
    }
    Ok(since)
}

/// The page size to use for a requested one (0 = default; capped).
pub fn page_size(requested: u32) -> usize {
    match usize::try_from(requested) {
        Ok(0) => DEFAULT_PAGE_SIZE,
        Ok(n) => n.min(MAX_PAGE_SIZE),
        Err(_) => MAX_PAGE_SIZE,
    }
}

/// The `limit` of ListChanges (0 = default; capped).
pub fn change_limit(requested: u32) -> usize {
    match usize::try_from(requested) {
        Ok(0) | Err(_) => MAX_CHANGES,
        Ok(n) => n.min(MAX_CHANGES),
    }
}

const PAGE_TOKEN_TAG: &str = "p1:";

/// Encodes a listing position as an opaque page token.
pub fn encode_page_token(position: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{PAGE_TOKEN_TAG}{position}"))
}

/// Decodes a page token ("" = first page).
pub fn decode_page_token(token: &str) -> Result<Option<i64>> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || Error::invalid("page_token", "is not a token returned by this service");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let position = text.strip_prefix(PAGE_TOKEN_TAG).ok_or_else(invalid)?;
    position.parse::<i64>().map(Some).map_err(|_| invalid())
}

/// The key status filter of ListKeys.
pub fn status_filter(value: i32) -> Result<Option<KeyStatus>> {
    match pb::KeyStatus::try_from(value) {
        Ok(pb::KeyStatus::Unspecified) => Ok(None),
        Ok(pb::KeyStatus::Active) => Ok(Some(KeyStatus::Active)),
        Ok(pb::KeyStatus::Revoked) => Ok(Some(KeyStatus::Revoked)),
        Ok(pb::KeyStatus::Expired) => Ok(Some(KeyStatus::Expired)),
        Err(_) => Err(Error::invalid("status", format!("unknown key status {value}"))),
    }
}

/// A SHA-256 key hash.
pub fn key_hash(bytes: &[u8]) -> Result<[u8; 32]> {
    bytes.try_into().map_err(|_| Error::invalid("key_hash", "must be the 32-byte SHA-256 of the key"))
}

/// The requested signing algorithm and its public key (Ed25519), checked.
pub fn signing_request(
    algorithm: i32,
    public_key: &[u8],
) -> Result<Option<(crate::model::SigningAlgorithm, Option<[u8; 32]>)>> {
    use crate::model::SigningAlgorithm;
    let alg = pb::SigningAlgorithm::try_from(algorithm)
        .map_err(|_| Error::invalid("signing_algorithm", format!("unknown value {algorithm}")))?;
    match alg {
        pb::SigningAlgorithm::Unspecified => {
            if public_key.is_empty() {
                Ok(None)
            } else {
                Err(Error::invalid("signing_public_key", "only with signing_algorithm ED25519"))
            }
        }
        pb::SigningAlgorithm::HmacSha256 => {
            if public_key.is_empty() {
                Ok(Some((SigningAlgorithm::HmacSha256, None)))
            } else {
                Err(Error::invalid("signing_public_key", "HMAC secrets are generated by the service"))
            }
        }
        pb::SigningAlgorithm::Ed25519 => {
            let key: [u8; 32] = public_key.try_into().map_err(|_| {
                Error::invalid("signing_public_key", "must be the 32-byte Ed25519 public key")
            })?;
            if !tollgate_core::signature::crypto::valid_ed25519_public_key(&key) {
                return Err(Error::invalid("signing_public_key", "is not a valid Ed25519 public key"));
            }
            Ok(Some((SigningAlgorithm::Ed25519, Some(key))))
        }
    }
}

/// Checks a gateway's usage report: the gateway named (visible ASCII), at most
/// [`MAX_USAGE_COUNTS`] counts, each with a key id, a minute (a multiple of 60) and an outcome
/// (lowercase letters, digits, `_`).
pub fn usage_report(request: pb::ReportUsageRequest) -> Result<UsageReport> {
    let gateway = request.gateway;
    if gateway.is_empty() || gateway.len() > MAX_GATEWAY_LEN || !gateway.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(Error::invalid(
            "gateway",
            format!("must be 1 to {MAX_GATEWAY_LEN} visible ASCII characters"),
        ));
    }
    if i64::try_from(request.batch).is_err() {
        return Err(Error::invalid("batch", "must be below 2^63"));
    }
    if request.counts.len() > MAX_USAGE_COUNTS {
        return Err(Error::invalid("counts", format!("at most {MAX_USAGE_COUNTS} per report")));
    }
    let mut counts = Vec::with_capacity(request.counts.len());
    for (i, c) in request.counts.into_iter().enumerate() {
        let callers = [!c.key_id.is_empty(), !c.subject.is_empty(), !c.consumer_id.is_empty()];
        if callers.iter().filter(|given| **given).count() != 1 {
            return Err(Error::invalid(
                format!("counts[{i}]"),
                "must name exactly one of key_id, subject, consumer_id (with rule)",
            ));
        }
        if !c.key_id.is_empty()
            && (c.key_id.len() > MAX_KEY_ID_LEN || !c.key_id.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(Error::invalid(format!("counts[{i}].key_id"), "must be a key id"));
        }
        if c.subject.len() > MAX_SUBJECT_LEN || c.subject.chars().any(char::is_control) {
            return Err(Error::invalid(
                format!("counts[{i}].subject"),
                format!("must be at most {MAX_SUBJECT_LEN} bytes without control characters"),
            ));
        }
        if !c.consumer_id.is_empty() {
            if !is_valid_consumer_id(&c.consumer_id) {
                return Err(Error::invalid(format!("counts[{i}].consumer_id"), "must be a consumer id"));
            }
            if c.rule.is_empty()
                || c.rule.len() > MAX_RULE_LEN
                || !c.rule.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(Error::invalid(
                    format!("counts[{i}].rule"),
                    format!("must be 1 to {MAX_RULE_LEN} visible ASCII characters"),
                ));
            }
        } else if !c.rule.is_empty() {
            return Err(Error::invalid(format!("counts[{i}].rule"), "goes with consumer_id"));
        }
        if c.minute <= 0 || c.minute % 60 != 0 {
            return Err(Error::invalid(
                format!("counts[{i}].minute"),
                "must be the start of a minute (a multiple of 60)",
            ));
        }
        let outcome_ok = !c.outcome.is_empty()
            && c.outcome.len() <= MAX_OUTCOME_LEN
            && c.outcome.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !outcome_ok {
            return Err(Error::invalid(
                format!("counts[{i}].outcome"),
                format!("must be 1 to {MAX_OUTCOME_LEN} lowercase letters, digits or '_'"),
            ));
        }
        counts.push(UsageCount {
            key_id: c.key_id,
            subject: c.subject,
            consumer_id: c.consumer_id,
            rule: c.rule,
            minute: c.minute,
            outcome: c.outcome,
            count: c.count,
        });
    }
    Ok(UsageReport { gateway, batch: request.batch, feed_seq: request.feed_seq, counts })
}

/// Checks a usage query; `until` 0 means `now`. The consumer is resolved by the caller.
pub fn usage_query(request: &pb::GetUsageRequest, now: i64) -> Result<UsageQuery> {
    if request.key_ids.len() > MAX_USAGE_KEYS {
        return Err(Error::invalid("key_ids", format!("at most {MAX_USAGE_KEYS} per query")));
    }
    let until = if request.until == 0 { now.saturating_add(60) } else { request.until };
    if request.since < 0 || request.since >= until {
        return Err(Error::invalid("since", "must be before `until`"));
    }
    Ok(UsageQuery { key_ids: request.key_ids.clone(), consumer_id: None, since: request.since, until })
}

/// What a rotation policy request names: exactly one of a consumer and a key.
pub fn policy_target(consumer: &str, key_id: &str) -> Result<crate::lifecycle::PolicyTarget> {
    use crate::lifecycle::PolicyTarget;
    match (consumer.is_empty(), key_id.is_empty()) {
        (false, true) => Ok(PolicyTarget::Consumer(consumer.to_owned())),
        (true, false) => Ok(PolicyTarget::Key(key_id.to_owned())),
        _ => Err(Error::invalid("consumer", "give exactly one of consumer and key_id")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usage_count_names_exactly_one_caller() {
        let report = |c: pb::UsageCount| pb::ReportUsageRequest {
            gateway: "gw".into(),
            batch: 1,
            counts: vec![pb::UsageCount { minute: 60, outcome: "allowed".into(), count: 1, ..c }],
            ..Default::default()
        };
        let field = |c: pb::UsageCount| match usage_report(report(c)) {
            Ok(_) => String::new(),
            Err(Error::InvalidArgument { field, .. }) => field,
            Err(e) => panic!("{e:?}"),
        };
        assert_eq!(field(pb::UsageCount { key_id: "k".into(), ..Default::default() }), "");
        assert_eq!(field(pb::UsageCount { subject: "iss sub".into(), ..Default::default() }), "");
        let limited = pb::UsageCount { consumer_id: "alice".into(), rule: "r".into(), ..Default::default() };
        assert_eq!(field(limited.clone()), "");
        assert_eq!(field(pb::UsageCount::default()), "counts[0]");
        assert_eq!(
            field(pb::UsageCount { key_id: "k".into(), subject: "s".into(), ..Default::default() }),
            "counts[0]"
        );
        assert_eq!(field(pb::UsageCount { rule: String::new(), ..limited.clone() }), "counts[0].rule");
        assert_eq!(
            field(pb::UsageCount { key_id: "k".into(), rule: "r".into(), ..Default::default() }),
            "counts[0].rule"
        );
        assert_eq!(field(pb::UsageCount { consumer_id: "a b".into(), ..limited }), "counts[0].consumer_id");
        assert_eq!(
            field(pb::UsageCount { subject: "a\nb".into(), ..Default::default() }),
            "counts[0].subject"
        );
        assert_eq!(
            field(pb::UsageCount { subject: "x".repeat(513), ..Default::default() }),
            "counts[0].subject"
        );
    }

    #[test]
    fn cache_purges_name_one_target_and_the_bad_field() {
        let ok = |p: pb::CachePurge| cache_purge(Some(p)).unwrap();
        let tag = ok(pb::CachePurge { tag: "product-7".into(), soft: true, ..Default::default() });
        assert_eq!((tag.target, tag.soft), (PurgeTarget::Tag("product-7".into()), true));
        let url =
            ok(pb::CachePurge { url: "/a?b=1".into(), host: "API.example".into(), ..Default::default() });
        assert_eq!((url.target, url.host.as_str()), (PurgeTarget::Url("/a?b=1".into()), "api.example"));
        assert_eq!(ok(pb::CachePurge { all: true, ..Default::default() }).target, PurgeTarget::All);
        let bad = [
            (None, "purge"),
            (Some(pb::CachePurge::default()), "purge"),
            (Some(pb::CachePurge { tag: "a".into(), all: true, ..Default::default() }), "purge"),
            (Some(pb::CachePurge { tag: "a b".into(), ..Default::default() }), "purge.tag"),
            (Some(pb::CachePurge { tag: "a,b".into(), ..Default::default() }), "purge.tag"),
            (Some(pb::CachePurge { tag: "x".repeat(1025), ..Default::default() }), "purge.tag"),
            (Some(pb::CachePurge { prefix: "docs".into(), ..Default::default() }), "purge.prefix"),
            (Some(pb::CachePurge { url: "é".into(), ..Default::default() }), "purge.url"),
            (Some(pb::CachePurge { tag: "a".into(), host: "h".into(), ..Default::default() }), "purge.host"),
        ];
        for (purge, field) in bad {
            match cache_purge(purge.clone()) {
                Err(Error::InvalidArgument { field: f, .. }) => assert_eq!(f, field, "{purge:?}"),
                other => panic!("{purge:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn page_token_round_trips_and_rejects_garbage() {
        assert_eq!(decode_page_token(&encode_page_token(42)).unwrap(), Some(42));
        assert_eq!(decode_page_token("").unwrap(), None);
        let err = decode_page_token("not a token").unwrap_err();
        assert!(err.to_string().starts_with("page_token"));
    }

    #[test]
    fn page_size_defaults_and_caps() {
        assert_eq!(page_size(0), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(100_000), MAX_PAGE_SIZE);
        assert_eq!(change_limit(0), MAX_CHANGES);
        assert_eq!(change_limit(5000), MAX_CHANGES);
    }

    #[test]
    fn scopes_with_spaces_or_empty_are_rejected_by_index() {
        let err = scopes("scopes", vec!["read".into(), "a b".into()]).unwrap_err();
        assert!(err.to_string().starts_with("scopes[1]"), "{err}");
        let err = scopes("scopes", vec![String::new()]).unwrap_err();
        assert!(err.to_string().starts_with("scopes[0]"), "{err}");
    }

    #[test]
    fn expiry_accepts_one_of_two_fields() {
        assert!(expiry(2000, 10, 1000).is_err());
        assert_eq!(expiry(0, 10, 1000).unwrap(), 1010);
        assert_eq!(expiry(2000, 0, 1000).unwrap(), 2000);
        assert!(expiry(999, 0, 1000).unwrap_err().to_string().starts_with("expires_at"));
        assert_eq!(expiry(0, 0, 1000).unwrap(), 0);
    }

    #[test]
    fn consumer_ids_allow_a_limited_alphabet() {
        assert!(is_valid_consumer_id("alice"));
        assert!(is_valid_consumer_id("team-a_1.prod"));
        assert!(!is_valid_consumer_id("Alice Smith"));
        assert!(!is_valid_consumer_id(""));
        assert!(!is_valid_consumer_id(&"a".repeat(65)));
    }

    #[test]
    fn rate_limit_rejects_zero_rate_and_unknown_period() {
        let policy = |rate, period| {
            Some(pb::RateLimitPolicy {
                tier: "gold".into(),
                limits: vec![pb::RateLimit { rate, period, burst: 0 }],
            })
        };
        assert!(rate_limit("rate_limit", policy(0, 1)).unwrap_err().to_string().contains("limits[0].rate"));
        assert!(rate_limit("rate_limit", policy(5, 0)).unwrap_err().to_string().contains("limits[0].period"));
        assert!(rate_limit("rate_limit", policy(5, 2)).unwrap().is_some());
        assert_eq!(rate_limit("rate_limit", Some(pb::RateLimitPolicy::default())).unwrap(), None);
    }

    #[test]
    fn a_replay_starts_at_a_given_time_not_in_the_future() {
        assert_eq!(replay_since(100, 200).unwrap(), 100);
        assert_eq!(replay_since(200, 200).unwrap(), 200);
        assert_eq!(replay_since(0, 200).unwrap_err().to_string(), "since: is required (Unix seconds)");
        assert_eq!(replay_since(-5, 200).unwrap_err().to_string(), "since: is required (Unix seconds)");
        assert_eq!(replay_since(201, 200).unwrap_err().to_string(), "since: is in the future");
    }

    #[test]
    fn webhook_events_must_be_known_and_named_once() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(webhook_events("events", &names(&["key.revoked", "key.created"])).unwrap().len(), 2);
        assert_eq!(
            webhook_events("events", &[]).unwrap_err().to_string(),
            "events: must name at least one event type"
        );
        assert_eq!(
            webhook_events("events", &names(&["key.created", "key.expire"])).unwrap_err().to_string(),
            "events[1]: \"key.expire\" is not one of key.created, key.rotated, key.revoked, consumer.created, \
             consumer.deleted, key.expiring, key.expired, key.grace_ended, webhook.disabled, quota.exhausted"
        );
        assert_eq!(
            webhook_events("events", &names(&["key.created", "key.created"])).unwrap_err().to_string(),
            "events[1]: \"key.created\" is named twice"
        );
    }
}
