//! The root context: configuration, the replay table's slots and the change-feed poll.

use std::cell::RefCell;
use std::rc::Rc;

use prost::Message;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use tollgate_core::key_auth::cache::{FeedState, feed_step};
use tollgate_core::signature::config::Config;
use tollgate_core::signature::verify::Deny;
use tollgate_host::{Counters, Host, LogLevel, grpc_status};
use tollgate_proto::v1;

use crate::http::SigningHttp;
use crate::store::{self, Keys};

/// Changes asked for per poll.
const FEED_PAGE: u32 = 500;

pub const SERVICE: &str = tollgate_proto::KEY_SERVICE;

/// State one worker's root context shares with its HTTP contexts.
pub struct Worker {
    pub config: Config,
    pub keys: Keys,
    pub counters: Counters,
    /// Distinguishes this worker's replay-table writes from other workers'.
    pub seed: u64,
    feed_token: Option<u32>,
    feed_failing: bool,
}

impl Worker {
    pub fn metadata(&self) -> Vec<(&'static str, Vec<u8>)> {
        vec![("authorization", format!("Bearer {}", self.config.token.expose()).into_bytes())]
    }
}

pub type Shared = Rc<RefCell<Worker>>;

/// Stat names, under `tollgate.request_signing.`.
pub fn stat_names() -> Vec<&'static str> {
    let mut names = vec![
        "allowed",
        "cache_hit",
        "cache_miss",
        "callout_error",
        "feed_poll",
        "feed_error",
        "feed_invalidations",
    ];
    names.extend(DENIED_STATS);
    names
}

const DENIED_STATS: [&str; 25] = {
    let mut out = [""; 25];
    let mut i = 0;
    while i < 25 {
        out[i] = denied_name(Deny::ALL[i]);
        i += 1;
    }
    out
};

/// `denied.<reason>` for each reason.
pub const fn denied_name(deny: Deny) -> &'static str {
    match deny {
        Deny::MissingSignature => "denied.missing_signature",
        Deny::MalformedSignature => "denied.malformed_signature",
        Deny::LabelNotFound => "denied.label_not_found",
        Deny::MissingKeyId => "denied.missing_keyid",
        Deny::MissingCreated => "denied.missing_created",
        Deny::CreatedInFuture => "denied.created_in_future",
        Deny::TooOld => "denied.signature_too_old",
        Deny::Expired => "denied.signature_expired",
        Deny::MissingExpires => "denied.missing_expires",
        Deny::MissingNonce => "denied.missing_nonce",
        Deny::TagMismatch => "denied.tag_mismatch",
        Deny::MissingComponent => "denied.missing_component",
        Deny::UnsupportedComponent => "denied.unsupported_component",
        Deny::UnsupportedAlgorithm => "denied.unsupported_algorithm",
        Deny::AlgorithmMismatch => "denied.algorithm_mismatch",
        Deny::BadSignature => "denied.bad_signature",
        Deny::MissingDigest => "denied.missing_digest",
        Deny::DigestMismatch => "denied.digest_mismatch",
        Deny::UnknownKey => "denied.unknown_key",
        Deny::RevokedKey => "denied.revoked_key",
        Deny::ExpiredKey => "denied.expired_key",
        Deny::Replayed => "denied.replayed",
        Deny::ReplayStoreFull => "denied.replay_store_full",
        Deny::BodyTooLarge => "denied.body_too_large",
        Deny::KeyServiceUnavailable => "denied.key_service_unavailable",
    }
}

pub struct SigningRoot<H: Host> {
    host: Rc<H>,
    worker: Option<Shared>,
}

impl<H: Host + 'static> SigningRoot<H> {
    pub fn new(host: Rc<H>) -> Self {
        Self { host, worker: None }
    }

    pub fn worker(&self) -> Option<Shared> {
        self.worker.clone()
    }

    fn configure(&mut self) -> bool {
        let host = &*self.host;
        let bytes = host.plugin_configuration().unwrap_or_default();
        match Config::from_json(&bytes) {
            Ok(config) => {
                let keys = Keys::new(&config);
                store::init_replay(host, &keys, config.replay_slots);
                host.set_tick_period(config.poll_interval);
                let names = stat_names();
                let counters = Counters::define(host, "tollgate.request_signing", &names);
                let worker = Rc::new(RefCell::new(Worker {
                    config,
                    keys,
                    counters,
                    seed: 0,
                    feed_token: None,
                    feed_failing: false,
                }));
                // Workers differ in their heap addresses and start times.
                let address = Rc::as_ptr(&worker) as usize as u64;
                worker.borrow_mut().seed =
                    host.now_ms().wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ address.rotate_left(32);
                self.worker = Some(worker);
                true
            }
            Err(e) => {
                host.log(LogLevel::Critical, &e.to_string());
                false
            }
        }
    }

    /// One worker at a time polls the change feed: the feed record carries a lease.
    fn poll_feed(&self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let host = &*self.host;
        let mut w = worker.borrow_mut();
        let now = host.now_ms();
        let (state, cas) = store::read_feed(host, &w.keys);
        if state.busy_until_ms > now {
            return;
        }
        let lease = now + w.config.timeout.as_millis() as u64 + 1_000;
        let claim = FeedState { busy_until_ms: lease, ..state };
        if host.shared_set(&w.keys.feed(), &claim.encode(), cas).is_err() {
            return;
        }
        let message = v1::ListChangesRequest { after_seq: state.cursor, limit: FEED_PAGE }.encode_to_vec();
        let metadata = w.metadata();
        let metadata: Vec<(&str, &[u8])> = metadata.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        match host.grpc_call(&w.config.cluster, SERVICE, "ListChanges", &metadata, &message, w.config.timeout)
        {
            Ok(token) => {
                w.feed_token = Some(token);
                w.counters.inc(host, "feed_poll");
            }
            Err(_) => {
                w.counters.inc(host, "feed_error");
                let backoff = now + w.config.poll_interval.as_millis() as u64;
                store::finish_poll(host, &w.keys, FeedState { busy_until_ms: backoff, ..state });
            }
        }
    }

    fn feed_done(&self, token: u32, status: u32, size: usize) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let host = &*self.host;
        let mut w = worker.borrow_mut();
        if w.feed_token != Some(token) {
            return;
        }
        w.feed_token = None;
        let now = host.now_ms();
        let interval = w.config.poll_interval.as_millis() as u64;
        let (state, _) = store::read_feed(host, &w.keys);
        let body = host.grpc_response_body(size).unwrap_or_default();
        let reply = (status == grpc_status::OK)
            .then(|| v1::ListChangesResponse::decode(body.as_slice()).ok())
            .flatten();
        let Some(reply) = reply else {
            w.counters.inc(host, "feed_error");
            if !w.feed_failing {
                w.feed_failing = true;
                let detail = host.grpc_status_message().unwrap_or_default();
                host.log(
                    LogLevel::Warn,
                    &format!("request-signing: change feed unavailable (gRPC status {status}): {detail}"),
                );
            }
            store::finish_poll(host, &w.keys, FeedState { busy_until_ms: now + interval, ..state });
            return;
        };
        if w.feed_failing {
            w.feed_failing = false;
            host.log(LogLevel::Info, "request-signing: change feed available again");
        }
        let full_page = reply.changes.len() >= FEED_PAGE as usize;
        let changes: Vec<(u64, String)> = reply.changes.into_iter().map(|c| (c.seq, c.key_id)).collect();
        let mut step = feed_step(state, &changes, reply.head_seq);
        if !full_page {
            step.next.busy_until_ms = now + interval - interval / 4;
        }
        for (slot, seq) in &step.invalidate {
            if store::raise_invalidation(host, &w.keys, *slot, *seq) {
                w.counters.inc(host, "feed_invalidations");
            } else {
                // Could not record it: re-check everything cached rather than miss a revocation.
                w.counters.inc(host, "feed_error");
                let next = FeedState { base: step.next.cursor, ..step.next };
                store::finish_poll(host, &w.keys, next);
                return;
            }
        }
        store::finish_poll(host, &w.keys, step.next);
    }
}

impl<H: Host + 'static> Context for SigningRoot<H> {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.feed_done(token_id, status_code, response_size);
    }
}

impl<H: Host + 'static> RootContext for SigningRoot<H> {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        self.configure()
    }

    fn on_tick(&mut self) {
        self.poll_feed();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = self.worker.clone()?;
        Some(Box::new(SigningHttp::new(self.host.clone(), worker, context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
