//! The root context: configuration, the replay table's slots and the change-feed poll.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use tollgate_core::signature::config::Config;
use tollgate_core::signature::verify::Deny;
use tollgate_host::{Counters, Host, LogLevel, feed};

use crate::http::SigningHttp;
use crate::store::{self, Keys};

pub const SERVICE: &str = tollgate_proto::KEY_SERVICE;

/// State one worker's root context shares with its HTTP contexts.
pub struct Worker {
    pub config: Config,
    pub keys: Keys,
    pub counters: Counters,
    /// Distinguishes this worker's replay-table writes from other workers'.
    pub seed: u64,
    feed: feed::Consumer,
    feed_token: Option<u32>,
}

impl Worker {
    fn feed_target(&self) -> feed::Target<'_> {
        feed::Target {
            cluster: &self.config.cluster,
            token: self.config.token.expose(),
            timeout: self.config.timeout,
            interval: self.config.poll_interval,
        }
    }

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
        "feed_resets",
    ];
    names.extend(DENIED_STATS);
    names
}

const DENIED_STATS: [&str; Deny::ALL.len()] = {
    let mut out = [""; Deny::ALL.len()];
    let mut i = 0;
    while i < Deny::ALL.len() {
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
        Deny::BadPath => "denied.bad_path",
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
                let feed = feed::Consumer::new("request-signing", keys.prefix());
                let worker =
                    Rc::new(RefCell::new(Worker { config, keys, counters, seed: 0, feed, feed_token: None }));
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

    /// One worker at a time polls the change feed (see [`tollgate_host::feed`]).
    fn poll_feed(&self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let host = &*self.host;
        let mut w = worker.borrow_mut();
        let poll = w.feed.poll(host, w.feed_target());
        match poll {
            feed::Poll::Started(token) => {
                w.feed_token = Some(token);
                w.counters.inc(host, "feed_poll");
            }
            feed::Poll::Refused => w.counters.inc(host, "feed_error"),
            feed::Poll::NotMyTurn => {}
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
        match w.feed.done(host, w.feed_target(), status, size) {
            feed::Done::Applied(n) => w.counters.add(host, "feed_invalidations", n as u64),
            feed::Done::Reset => w.counters.inc(host, "feed_resets"),
            feed::Done::Failed | feed::Done::Rebased => w.counters.inc(host, "feed_error"),
        }
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
