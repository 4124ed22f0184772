//! The key service's VerifyKey answer (proto) turned into the core's cache entry.

use prost::Message;
use tollgate_core::identity::{self, Limit};
use tollgate_core::key_auth::cache::{Entry, KeyState};
use tollgate_core::rate_limit::bucket::Period;
use tollgate_host::{Host, LogLevel, grpc_status};
use tollgate_proto::v1;

use crate::worker::{Stat, Worker};

/// What a finished lookup produced.
#[derive(Debug, Clone)]
pub enum Outcome {
    Answer(Box<Entry>),
    /// The key service could not answer (status, timeout, undecodable reply).
    Failed,
}

/// Decodes a VerifyKey reply to a lookup made in feed epoch `epoch` into an outcome, counting
/// and logging failures.
pub fn read_verify_reply<H: Host + ?Sized>(
    host: &H,
    worker: &Worker,
    hash: [u8; 32],
    epoch: u64,
    status: u32,
    size: usize,
) -> Outcome {
    if status != grpc_status::OK {
        worker.counters.inc(host, Stat::CalloutError);
        let detail = host.grpc_status_message().unwrap_or_default();
        let level = if status == grpc_status::UNAUTHENTICATED { LogLevel::Error } else { LogLevel::Warn };
        let hint = if status == grpc_status::UNAUTHENTICATED { " (check key_service.token)" } else { "" };
        host.log(level, &format!("key-auth: VerifyKey failed with gRPC status {status}{hint}: {detail}"));
        return Outcome::Failed;
    }
    let body = host.grpc_response_body(size).unwrap_or_default();
    let entry = v1::VerifyKeyResponse::decode(body.as_slice())
        .map_err(|_| Unusable::Nonsense)
        .and_then(|r| entry_from_reply(hash, host.now_ms(), epoch, &r));
    match entry {
        Ok(entry) => Outcome::Answer(Box::new(entry)),
        Err(why) => {
            worker.counters.inc(host, Stat::CalloutError);
            let detail = match why {
                Unusable::Nonsense => "could not be understood",
                Unusable::UnpublishableScope => "has a scope that cannot be sent in a header",
            };
            host.log(LogLevel::Warn, &format!("key-auth: VerifyKey reply {detail}; treated as no answer"));
            Outcome::Failed
        }
    }
}

/// Why a VerifyKey reply cannot be used (it is then treated as no answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    /// Unspecified result, or a valid key without key id or consumer.
    Nonsense,
    /// A scope that cannot travel in the scopes header (see [`identity::scopes_value`]): publishing
    /// the list without it, or without any, would misstate what the key may do.
    UnpublishableScope,
}

/// Turns a VerifyKey reply for a lookup made in feed epoch `epoch` into a cache entry.
pub fn entry_from_reply(
    hash: [u8; 32],
    now_ms: u64,
    epoch: u64,
    reply: &v1::VerifyKeyResponse,
) -> Result<Entry, Unusable> {
    let result = v1::VerifyResult::try_from(reply.result).map_err(|_| Unusable::Nonsense)?;
    let state = match result {
        v1::VerifyResult::Valid => KeyState::Valid,
        v1::VerifyResult::NotFound => return Ok(Entry::not_found(hash, now_ms, reply.feed_seq, epoch)),
        v1::VerifyResult::Revoked => KeyState::Revoked,
        v1::VerifyResult::Expired => KeyState::Expired,
        v1::VerifyResult::Unspecified => return Err(Unusable::Nonsense),
    };
    if state == KeyState::Valid && (reply.key_id.is_empty() || reply.consumer_id.is_empty()) {
        return Err(Unusable::Nonsense);
    }
    if state == KeyState::Valid && identity::scopes_value(&reply.scopes).is_none() {
        return Err(Unusable::UnpublishableScope);
    }
    let (tier, limits) = match &reply.rate_limit {
        Some(p) => (
            p.tier.clone(),
            p.limits
                .iter()
                .filter_map(|l| {
                    // An unknown or unspecified period names no period: the limit is left out.
                    let period = Period::try_from(v1::Period::try_from(l.period).ok()?).ok()?;
                    Some(Limit { rate: l.rate, period_secs: period.secs(), burst: l.burst })
                })
                .collect(),
        ),
        None => (String::new(), Vec::new()),
    };
    Ok(Entry {
        hash,
        state,
        fetched_at_ms: now_ms,
        expires_at_s: reply.expires_at,
        feed_seq: reply.feed_seq,
        epoch,
        key_id: reply.key_id.clone(),
        consumer_id: reply.consumer_id.clone(),
        display_prefix: reply.display_prefix.clone(),
        scopes: reply.scopes.clone(),
        tier,
        limits,
        previous_secret: reply.previous_secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every wire period becomes its length in seconds; a limit naming no period (unspecified,
    /// or a value this build does not know) is left out rather than guessed.
    #[test]
    fn a_keys_limits_carry_their_periods_in_seconds() {
        let limit = |period: i32| v1::RateLimit { rate: 10, period, burst: 20 };
        let periods = [
            v1::Period::Second as i32,
            v1::Period::Minute as i32,
            v1::Period::Hour as i32,
            v1::Period::Day as i32,
            v1::Period::Unspecified as i32,
            99,
        ];
        let reply = v1::VerifyKeyResponse {
            result: v1::VerifyResult::Valid as i32,
            key_id: "key_a".into(),
            consumer_id: "alice".into(),
            rate_limit: Some(v1::RateLimitPolicy {
                tier: "gold".into(),
                limits: periods.into_iter().map(limit).collect(),
            }),
            ..Default::default()
        };
        let entry = entry_from_reply([1; 32], 0, 0, &reply).unwrap();
        assert_eq!(entry.tier, "gold");
        let secs: Vec<u64> = entry.limits.iter().map(|l| l.period_secs).collect();
        assert_eq!(secs, [1, 60, 3_600, 86_400]);
        assert!(entry.limits.iter().all(|l| (l.rate, l.burst) == (10, 20)));
    }
}
