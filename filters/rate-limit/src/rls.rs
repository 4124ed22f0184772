//! The messages of Envoy's rate-limit service API (`envoy.service.ratelimit.v3`) this filter
//! sends and reads, as prost types: the fields it uses, with the upstream field numbers (see
//! `crates/ratelimitd/proto`); prost skips the rest of an answer. Enums are their `int32`
//! values.

use std::time::Duration;

use tollgate_core::rate_limit::global::{ServiceLimit, unit_secs};

/// The service and method called.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// `RateLimitResponse.Code.OVER_LIMIT`.
const OVER_LIMIT: i32 = 2;
/// `RateLimitResponse.Code.OK`.
const OK: i32 = 1;

#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitRequest {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitDescriptor {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitResponse {
    #[prost(int32, tag = "1")]
    pub overall_code: i32,
    #[prost(message, repeated, tag = "2")]
    pub statuses: Vec<DescriptorStatus>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DescriptorStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(message, optional, tag = "2")]
    pub current_limit: Option<RateLimit>,
    #[prost(uint32, tag = "3")]
    pub limit_remaining: u32,
    #[prost(message, optional, tag = "4")]
    pub duration_until_reset: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimit {
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    #[prost(int32, tag = "2")]
    pub unit: i32,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// The request for `descriptors` (each a list of `(key, value)`).
pub fn encode_request(domain: &str, descriptors: Vec<Vec<(String, String)>>) -> Vec<u8> {
    use prost::Message as _;
    let descriptors = descriptors
        .into_iter()
        .map(|entries| RateLimitDescriptor {
            entries: entries.into_iter().map(|(key, value)| Entry { key, value }).collect(),
        })
        .collect();
    RateLimitRequest { domain: domain.to_owned(), descriptors, hits_addend: 0 }.encode_to_vec()
}

/// An answer: whether it is `OVER_LIMIT`, and the limits its statuses carry. `None` when the
/// bytes are not an answer or its code is neither `OK` nor `OVER_LIMIT`.
pub fn decode_response(bytes: &[u8]) -> Option<(bool, Vec<ServiceLimit>)> {
    use prost::Message as _;
    let response = RateLimitResponse::decode(bytes).ok()?;
    let over_limit = match response.overall_code {
        OK => false,
        OVER_LIMIT => true,
        _ => return None,
    };
    let limits = response
        .statuses
        .iter()
        .filter_map(|status| {
            let limit = status.current_limit.as_ref()?;
            let reset = status.duration_until_reset.as_ref().map_or(Duration::ZERO, |d| {
                let secs = u64::try_from(d.seconds).unwrap_or(0);
                let nanos = u32::try_from(d.nanos).unwrap_or(0).min(999_999_999);
                Duration::new(secs, nanos)
            });
            Some(ServiceLimit {
                name: limit.name.clone(),
                requests_per_unit: limit.requests_per_unit,
                unit_secs: unit_secs(limit.unit)?,
                over_limit: status.code == OVER_LIMIT,
                duration_until_reset: reset,
            })
        })
        .collect();
    Some((over_limit, limits))
}
