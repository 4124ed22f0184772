//! The key service's GetSigningKey answer (proto) turned into the core's cache entry.

use prost::Message;
use tollgate_core::signature::cache::{MaterialEntry, MaterialState};
use tollgate_core::signature::verify::KeyMaterial;
use tollgate_host::{Host, LogLevel, grpc_status};
use tollgate_proto::v1;

use crate::worker::{Stat, Worker};

/// Decodes the GetSigningKey answer being delivered into a cache entry; `None` (counted and
/// logged) when the key service did not answer usefully.
pub fn read_reply<H: Host + ?Sized>(
    host: &H,
    w: &Worker,
    key_id: &str,
    status: u32,
    size: usize,
) -> Option<MaterialEntry> {
    if status != grpc_status::OK {
        w.counters.inc(host, Stat::CalloutError);
        let detail = host.grpc_status_message().unwrap_or_default();
        let hint = if status == grpc_status::UNAUTHENTICATED { " (check key_service.token)" } else { "" };
        host.log(
            LogLevel::Warn,
            &format!("request-signing: GetSigningKey failed with gRPC status {status}{hint}: {detail}"),
        );
        return None;
    }
    let body = host.grpc_response_body(size).unwrap_or_default();
    let entry = v1::GetSigningKeyResponse::decode(body.as_slice())
        .ok()
        .and_then(|r| entry_from_reply(key_id, host.now_ms(), &r));
    if entry.is_none() {
        w.counters.inc(host, Stat::CalloutError);
        host.log(LogLevel::Warn, "request-signing: GetSigningKey reply could not be understood");
    }
    entry
}

/// Turns a GetSigningKey reply into a cache entry; `None` for a reply that makes no sense.
pub fn entry_from_reply(key_id: &str, now_ms: u64, r: &v1::GetSigningKeyResponse) -> Option<MaterialEntry> {
    if r.key_id != key_id {
        return None;
    }
    let state = match v1::VerifyResult::try_from(r.result).ok()? {
        v1::VerifyResult::Valid => MaterialState::Valid,
        v1::VerifyResult::NotFound => MaterialState::NotFound,
        v1::VerifyResult::Revoked => MaterialState::Revoked,
        v1::VerifyResult::Expired => MaterialState::Expired,
        v1::VerifyResult::Unspecified => return None,
    };
    let material = if state == MaterialState::Valid {
        Some(match v1::SigningAlgorithm::try_from(r.algorithm).ok()? {
            v1::SigningAlgorithm::HmacSha256 if !r.hmac_secret.is_empty() => {
                KeyMaterial::Hmac(r.hmac_secret.clone())
            }
            v1::SigningAlgorithm::Ed25519 => {
                KeyMaterial::Ed25519(r.ed25519_public_key.as_slice().try_into().ok()?)
            }
            _ => return None,
        })
    } else {
        None
    };
    if state == MaterialState::Valid && r.consumer_id.is_empty() {
        return None;
    }
    Some(MaterialEntry {
        key_id: key_id.to_owned(),
        state,
        material,
        consumer_id: r.consumer_id.clone(),
        expires_at_s: r.expires_at,
        fetched_at_ms: now_ms,
        feed_seq: r.feed_seq,
    })
}
