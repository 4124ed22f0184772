//! The root context: configuration, the change-feed poll and orphaned lookups.

use std::cell::RefCell;
use std::rc::Rc;

use prost::Message;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use tollgate_core::key_auth::cache::{FeedState, feed_step};
use tollgate_core::key_auth::config::Config;
use tollgate_host::{Host, LogLevel, grpc_status};
use tollgate_proto::v1;

use crate::http::{KeyAuthHttp, complete_flight, read_verify_reply};
use crate::store;
use crate::worker::{Outcome, RootCall, SERVICE, Shared, Worker};

/// Changes asked for per poll.
const FEED_PAGE: u32 = 500;

pub struct KeyAuthRoot<H: Host> {
    host: Rc<H>,
    worker: Option<Shared>,
}

impl<H: Host + 'static> KeyAuthRoot<H> {
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
                host.set_tick_period(config.poll_interval);
                self.worker = Some(Rc::new(RefCell::new(Worker::new(host, config))));
                true
            }
            Err(e) => {
                host.log(LogLevel::Critical, &e.to_string());
                false
            }
        }
    }

    fn tick(&mut self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        self.poll_feed(&worker);
        self.retry_orphans(&worker);
    }

    /// One worker at a time polls the change feed: the feed record carries a lease.
    fn poll_feed(&self, worker: &Shared) {
        let host = &*self.host;
        let mut w = worker.borrow_mut();
        let now = host.now_ms();
        let (state, cas) = store::read_feed(host, &w.keys);
        if state.busy_until_ms > now {
            return;
        }
        let lease = now + w.config.timeout.as_millis() as u64 + 1_000;
        let claim = FeedState { busy_until_ms: lease, ..state };
        if store::write_feed(host, &w.keys, &claim, cas).is_err() {
            return; // another worker took this turn
        }
        let message = v1::ListChangesRequest { after_seq: state.cursor, limit: FEED_PAGE }.encode_to_vec();
        let metadata = w.metadata();
        let metadata: Vec<(&str, &[u8])> = metadata.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        match host.grpc_call(&w.config.cluster, SERVICE, "ListChanges", &metadata, &message, w.config.timeout)
        {
            Ok(token) => {
                w.root_calls.insert(token, RootCall::Feed);
                w.counters.inc(host, "feed_poll");
            }
            Err(_) => {
                w.counters.inc(host, "feed_error");
                let backoff = now + w.config.poll_interval.as_millis() as u64;
                store::finish_poll(host, &w.keys, FeedState { busy_until_ms: backoff, ..state });
            }
        }
    }

    /// Calls again for requests whose leading request went away before its answer.
    fn retry_orphans(&self, worker: &Shared) {
        let host = &*self.host;
        let orphans: Vec<[u8; 32]> = worker
            .borrow()
            .flights
            .iter()
            .filter(|(_, f)| f.leader.is_none() && f.token.is_none())
            .map(|(h, _)| *h)
            .collect();
        for hash in orphans {
            let dispatched = worker.borrow().dispatch_verify(host, &hash);
            match dispatched {
                Ok(token) => {
                    let mut w = worker.borrow_mut();
                    w.root_calls.insert(token, RootCall::Verify(hash));
                    if let Some(f) = w.flights.get_mut(&hash) {
                        f.token = Some(token);
                    }
                }
                Err(_) => {
                    worker.borrow().counters.inc(host, "callout_error");
                    complete_flight(host, worker, hash, Outcome::Failed);
                }
            }
        }
    }

    fn call_done(&mut self, token: u32, status: u32, size: usize) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let host = &*self.host;
        let call = worker.borrow_mut().root_calls.remove(&token);
        match call {
            Some(RootCall::Verify(hash)) => {
                let outcome = read_verify_reply(host, &worker.borrow(), hash, status, size);
                complete_flight(host, &worker, hash, outcome);
            }
            Some(RootCall::Feed) => self.feed_done(&worker.borrow(), status, size),
            None => {}
        }
    }

    fn feed_done(&self, w: &Worker, status: u32, size: usize) {
        let host = &*self.host;
        let now = host.now_ms();
        let interval = w.config.poll_interval.as_millis() as u64;
        let (state, _) = store::read_feed(host, &w.keys);
        let body = host.grpc_response_body(size).unwrap_or_default();
        let reply = (status == grpc_status::OK)
            .then(|| v1::ListChangesResponse::decode(body.as_slice()).ok())
            .flatten();
        let Some(reply) = reply else {
            w.counters.inc(host, "feed_error");
            // Log when the feed starts failing, not on every poll while it stays down.
            if !w.feed_failing.replace(true) {
                let detail = host.grpc_status_message().unwrap_or_default();
                host.log(
                    LogLevel::Warn,
                    &format!("key-auth: change feed unavailable (gRPC status {status}): {detail}"),
                );
            }
            // Back off for one interval; the lease keeps the other workers from trying at once.
            let backoff = FeedState { busy_until_ms: now + interval, ..state };
            store::finish_poll(host, &w.keys, backoff);
            return;
        };
        if w.feed_failing.replace(false) {
            host.log(LogLevel::Info, "key-auth: change feed available again");
        }
        let full_page = reply.changes.len() >= FEED_PAGE as usize;
        let changes: Vec<(u64, String)> = reply.changes.into_iter().map(|c| (c.seq, c.key_id)).collect();
        let mut step = feed_step(state, &changes, reply.head_seq);
        // One poll per interval for the whole proxy: the next worker's tick finds the lease
        // held until shortly before the interval ends. A full page means more is waiting.
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

impl<H: Host + 'static> Context for KeyAuthRoot<H> {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.call_done(token_id, status_code, response_size);
    }
}

impl<H: Host + 'static> RootContext for KeyAuthRoot<H> {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        self.configure()
    }

    fn on_tick(&mut self) {
        self.tick();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = self.worker.clone()?;
        Some(Box::new(KeyAuthHttp::new(self.host.clone(), worker, context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
