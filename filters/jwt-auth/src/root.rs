//! The root context: configuration, and on every tick the key-set refresh and the flights of
//! requests waiting for a key set that this worker's request contexts cannot finish themselves.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use tollgate_core::jwt::config::Config;
use tollgate_host::{Host, LogLevel};

use crate::http::{JwtAuthHttp, complete_flight};
use crate::worker::{Claim, FLIGHT_GRACE_MS, FetchReason, Fetcher, RootCall, Shared, Worker};

/// How often the root context looks at the remote key sets.
pub const TICK: Duration = Duration::from_secs(1);

pub struct JwtAuthRoot<H: Host> {
    host: Rc<H>,
    /// This root context's id (calls made after finishing other requests act for it again).
    context_id: u32,
    worker: Option<Shared>,
}

impl<H: Host + 'static> JwtAuthRoot<H> {
    pub fn new(host: Rc<H>, context_id: u32) -> Self {
        Self { host, context_id, worker: None }
    }

    pub fn worker(&self) -> Option<Shared> {
        self.worker.clone()
    }

    fn configure(&mut self) -> bool {
        let host = &*self.host;
        let bytes = host.plugin_configuration().unwrap_or_default();
        let worker = Config::from_json(&bytes).and_then(|config| Worker::new(host, config, &bytes));
        match worker {
            Ok(worker) => {
                if (0..worker.config.providers.len()).any(|i| worker.remote(i).is_some()) {
                    host.set_tick_period(TICK);
                }
                self.worker = Some(Rc::new(RefCell::new(worker)));
                true
            }
            Err(e) => {
                host.log(LogLevel::Critical, &e.to_string());
                false
            }
        }
    }

    /// Picks up key sets other workers fetched, starts the fetches that are due, fetches again
    /// for requests whose fetching request went away, and settles flights that cannot wait
    /// longer (another worker's fetch ended, or a call never answered).
    fn tick(&mut self) {
        let Some(worker) = self.worker.clone() else { return };
        let host = &*self.host;
        let mut w = worker.borrow_mut();
        let now = host.now_ms();
        let mut settle = Vec::new();
        for idx in 0..w.config.providers.len() {
            if w.remote(idx).is_none() {
                continue;
            }
            w.sync(host, idx);
            if let Some(fetcher) = w.flights.get(&idx).map(|f| f.fetcher) {
                match fetcher {
                    Fetcher::Orphaned => match w.dispatch_fetch(host, idx) {
                        Ok(token) => {
                            w.root_calls.insert(token, RootCall::Jwks(idx));
                            let timeout_ms = w.remote(idx).map_or(0, |r| r.timeout.as_millis() as u64);
                            if let Some(f) = w.flights.get_mut(&idx) {
                                f.fetcher = Fetcher::Root { token };
                                f.deadline_ms = now + timeout_ms + FLIGHT_GRACE_MS;
                            }
                        }
                        Err(_) => settle.push(idx),
                    },
                    // The other worker's fetch ended (its key set, if any, was just synced).
                    Fetcher::Elsewhere if !w.fetch_in_flight(host, idx) => settle.push(idx),
                    _ if w.flights.get(&idx).is_some_and(|f| now >= f.deadline_ms) => settle.push(idx),
                    _ => {}
                }
                continue;
            }
            if w.discovery_due(idx, now) {
                if let Some(token) = w.dispatch_discovery(host, idx) {
                    w.root_calls.insert(token, RootCall::Discovery(idx));
                }
                continue;
            }
            if !w.refresh_due(idx, now) || w.claim_fetch(host, idx, FetchReason::Refresh) != Claim::Granted {
                continue;
            }
            if let Ok(token) = w.dispatch_fetch(host, idx) {
                w.root_calls.insert(token, RootCall::Jwks(idx));
            }
        }
        // Last: finishing requests switches the effective context.
        for idx in settle {
            complete_flight(host, &mut w, idx, self.context_id);
        }
    }

    fn call_done(&mut self, token: u32, body_size: usize) {
        let Some(worker) = self.worker.clone() else { return };
        let mut w = worker.borrow_mut();
        let host = &*self.host;
        match w.root_calls.remove(&token) {
            Some(RootCall::Jwks(idx)) => {
                w.fetch_done(host, idx, body_size);
                if w.flights.get(&idx).is_some_and(|f| f.fetcher == Fetcher::Root { token }) {
                    complete_flight(host, &mut w, idx, self.context_id);
                }
            }
            Some(RootCall::Discovery(idx)) => {
                w.discovery_done(host, idx, body_size);
                // Fetch the key set right away rather than on the next tick.
                if w.refresh_due(idx, host.now_ms())
                    && w.claim_fetch(host, idx, FetchReason::Refresh) == Claim::Granted
                    && let Ok(call) = w.dispatch_fetch(host, idx)
                {
                    w.root_calls.insert(call, RootCall::Jwks(idx));
                }
            }
            None => host.log(LogLevel::Debug, &format!("jwt-auth: response to unknown call {token}")),
        }
    }
}

impl<H: Host + 'static> Context for JwtAuthRoot<H> {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        self.call_done(token_id, body_size);
    }
}

impl<H: Host + 'static> RootContext for JwtAuthRoot<H> {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        self.configure()
    }

    fn on_tick(&mut self) {
        self.tick();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = self.worker.clone()?;
        Some(Box::new(JwtAuthHttp::new(self.host.clone(), worker, context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
