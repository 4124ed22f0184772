//! Configure and tick, over the generic root context: on every tick the key-set refresh and
//! the flights of requests waiting for a key set that this worker's request contexts cannot
//! finish themselves; and the answers to the root context's calls.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use tollgate_core::jwt::config::Config;
use tollgate_host::{Filter, Host, LogLevel};

use crate::http::{JwtAuthHttp, complete_flight};
use crate::worker::{Claim, FLIGHT_GRACE_MS, FetchReason, Fetcher, RootCall, Stat, Worker};
use tollgate_host::usage::Reported;

/// How often the root context looks at the remote key sets.
pub const TICK: Duration = Duration::from_secs(1);

/// The jwt-auth filter.
pub struct JwtAuth;

impl Filter for JwtAuth {
    type Worker = RefCell<Worker>;
    type Http<H: Host + 'static> = JwtAuthHttp<H>;

    fn configure<H: Host>(host: &H, config: &[u8]) -> Result<Self::Worker, String> {
        let worker = Config::from_json(config).and_then(|parsed| Worker::new(host, parsed, config));
        worker.map(RefCell::new).map_err(|e| e.to_string())
    }

    /// Only remote key sets and usage reports need the tick.
    fn tick_period(worker: &Self::Worker) -> Option<Duration> {
        let w = worker.borrow();
        (w.has_remote() || w.usage.is_some()).then_some(TICK)
    }

    fn grpc_response<H: Host>(
        host: &H,
        _root_id: u32,
        worker: &Self::Worker,
        token: u32,
        status: u32,
        _size: usize,
    ) {
        let w = worker.borrow();
        if let Some(reporter) = &w.usage {
            match reporter.done(host, token, status) {
                Reported::Ok => w.counters.inc(host, Stat::UsageReportOk),
                Reported::Failed => w.counters.inc(host, Stat::UsageReportError),
                Reported::NotMine => {}
            }
        }
    }

    /// Picks up key sets other workers fetched, starts the fetches that are due, fetches again
    /// for requests whose fetching request went away, and settles flights that cannot wait
    /// longer (another worker's fetch ended, or a call never answered).
    fn tick<H: Host>(host: &H, root_id: u32, worker: &Self::Worker) {
        let mut w = worker.borrow_mut();
        if let Some(reporter) = &w.usage {
            let dropped = reporter.tick(host);
            if dropped > 0 {
                w.counters.add(host, Stat::UsageDropped, dropped);
            }
        }
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
            complete_flight(host, &mut w, idx, root_id);
        }
    }

    fn http_response<H: Host>(host: &H, root_id: u32, worker: &Self::Worker, token: u32, body_size: usize) {
        let mut w = worker.borrow_mut();
        match w.root_calls.remove(&token) {
            Some(RootCall::Jwks(idx)) => {
                w.fetch_done(host, idx, body_size);
                if w.flights.get(&idx).is_some_and(|f| f.fetcher == Fetcher::Root { token }) {
                    complete_flight(host, &mut w, idx, root_id);
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

    fn http_context<H: Host + 'static>(
        host: Rc<H>,
        worker: Rc<Self::Worker>,
        context_id: u32,
    ) -> JwtAuthHttp<H> {
        JwtAuthHttp::new(host, worker, context_id)
    }
}
