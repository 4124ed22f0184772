//! The root context: configuration, the change-feed poll, orphaned lookups and background
//! refreshes of stale answers — calls that must outlive the request that needed them.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use tollgate_core::key_auth::cache::Lookup;
use tollgate_core::key_auth::config::Config;
use tollgate_host::{Host, LogLevel, feed};

use crate::http::{KeyAuthHttp, complete_flight, lookup_done, refresh_done};
use crate::store;
use crate::worker::{Outcome, REFRESH_RETRY, Refresh, RootCall, Shared, Worker, millis};

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
        self.start_refreshes(&worker);
    }

    /// One worker at a time polls the change feed (see [`tollgate_host::feed`]).
    fn poll_feed(&self, worker: &Shared) {
        let host = &*self.host;
        let mut w = worker.borrow_mut();
        let poll = w.feed.poll(host, w.feed_target());
        match poll {
            feed::Poll::Started(token) => {
                w.root_calls.insert(token, RootCall::Feed);
                w.counters.inc(host, "feed_poll");
            }
            feed::Poll::Refused => w.counters.inc(host, "feed_error"),
            feed::Poll::NotMyTurn => {}
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
            let (epoch, dispatched) = {
                let w = worker.borrow();
                (store::current_epoch(host, &w.keys), w.dispatch_verify(host, &hash))
            };
            match dispatched {
                Ok(token) => {
                    let mut w = worker.borrow_mut();
                    w.root_calls.insert(token, RootCall::Verify { hash, epoch });
                    if let Some(f) = w.flights.get_mut(&hash) {
                        f.token = Some(token);
                        f.epoch = epoch;
                    }
                }
                Err(_) => {
                    worker.borrow().counters.inc(host, "callout_error");
                    complete_flight(host, worker, hash, Outcome::Failed);
                }
            }
        }
    }

    /// Makes the calls for the stale answers requests asked to refresh (see
    /// [`Worker::want_refresh`]), and forgets refreshes whose time is up.
    fn start_refreshes(&self, worker: &Shared) {
        let host = &*self.host;
        let now = host.now_ms();
        let queued: Vec<[u8; 32]> = {
            let mut w = worker.borrow_mut();
            w.refreshes.retain(|_, r| match r {
                Refresh::Queued => true,
                Refresh::InFlight { until_ms } | Refresh::Failed { until_ms } => *until_ms > now,
            });
            w.refreshes.iter().filter(|(_, r)| **r == Refresh::Queued).map(|(h, _)| *h).collect()
        };
        for hash in queued {
            let w = worker.borrow();
            // Refreshed by another worker meanwhile, invalidated, or past the stale window: the
            // next request decides.
            if !matches!(store::lookup(host, &w.keys, &w.config, &hash, w.feed.epoch()), Lookup::Stale(_)) {
                drop(w);
                worker.borrow_mut().refreshes.remove(&hash);
                continue;
            }
            let epoch = store::current_epoch(host, &w.keys);
            let dispatched = w.dispatch_verify(host, &hash);
            let until_ms = now.saturating_add(millis(w.config.timeout).saturating_add(1_000));
            drop(w);
            let mut w = worker.borrow_mut();
            match dispatched {
                Ok(token) => {
                    w.root_calls.insert(token, RootCall::Refresh { hash, epoch });
                    w.refreshes.insert(hash, Refresh::InFlight { until_ms });
                    w.counters.inc(host, "cache_refresh_started");
                }
                Err(_) => {
                    let until_ms = now.saturating_add(millis(REFRESH_RETRY));
                    w.refreshes.insert(hash, Refresh::Failed { until_ms });
                    w.counters.inc(host, "callout_error");
                    w.counters.inc(host, "cache_refresh_failed");
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
            Some(RootCall::Verify { hash, epoch }) => lookup_done(host, &worker, hash, epoch, status, size),
            Some(RootCall::Refresh { hash, epoch }) => refresh_done(host, &worker, hash, epoch, status, size),
            Some(RootCall::Feed) => self.feed_done(&worker.borrow(), status, size),
            None => {}
        }
    }

    fn feed_done(&self, w: &Worker, status: u32, size: usize) {
        let host = &*self.host;
        match w.feed.done(host, w.feed_target(), status, size) {
            feed::Done::Applied(n) => w.counters.add(host, "feed_invalidations", n as u64),
            feed::Done::Reset => w.counters.inc(host, "feed_resets"),
            feed::Done::Failed | feed::Done::Rebased => w.counters.inc(host, "feed_error"),
        }
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
