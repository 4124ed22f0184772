//! Configure and tick, over the generic root context: the change-feed poll, orphaned lookups
//! and background refreshes of stale answers — calls that must outlive the request that needed
//! them — and their answers.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use tollgate_core::key_auth::config::Config;
use tollgate_host::{Filter, Host, feed};

use crate::http::{KeyAuthHttp, complete_flight, lookup_done, refresh_done};
use crate::reply::Outcome;
use crate::store;
use crate::worker::{REFRESH_RETRY, Refresh, RootCall, Stat, Worker, millis};

/// The key-auth filter.
pub struct KeyAuth;

impl Filter for KeyAuth {
    type Worker = RefCell<Worker>;
    type Http<H: Host + 'static> = KeyAuthHttp<H>;

    fn configure<H: Host>(host: &H, config: &[u8]) -> Result<Self::Worker, String> {
        let config = Config::from_json(config).map_err(|e| e.to_string())?;
        Ok(RefCell::new(Worker::new(host, config)))
    }

    fn tick_period(worker: &Self::Worker) -> Option<Duration> {
        Some(worker.borrow().config.key_service.poll_interval)
    }

    fn tick<H: Host>(host: &H, _root_id: u32, worker: &Self::Worker) {
        poll_feed(host, worker);
        {
            let w = worker.borrow();
            if let Some(lag) = w.feed.lag_seconds(host) {
                w.feed_lag.set(host, lag);
            }
        }
        retry_orphans(host, worker);
        start_refreshes(host, worker);
        report_usage(host, worker);
    }

    fn grpc_response<H: Host>(
        host: &H,
        _root_id: u32,
        worker: &Self::Worker,
        token: u32,
        status: u32,
        size: usize,
    ) {
        let call = worker.borrow_mut().root_calls.remove(&token);
        match call {
            Some(RootCall::Verify { hash, epoch }) => lookup_done(host, worker, hash, epoch, status, size),
            Some(RootCall::Refresh { hash, epoch, started_ms }) => {
                refresh_done(host, worker, hash, epoch, started_ms, status, size);
            }
            Some(RootCall::Feed) => feed_done(host, &worker.borrow(), status, size),
            Some(RootCall::Usage) => {
                let w = worker.borrow();
                if let Some(usage) = &w.usage {
                    let stat =
                        if usage.done(host, status) { Stat::UsageReportOk } else { Stat::UsageReportError };
                    w.counters.inc(host, stat);
                }
            }
            None => {}
        }
    }

    fn http_context<H: Host + 'static>(
        host: Rc<H>,
        worker: Rc<Self::Worker>,
        context_id: u32,
    ) -> KeyAuthHttp<H> {
        KeyAuthHttp::new(host, worker, context_id)
    }
}

/// One worker at a time polls the change feed (see [`tollgate_host::feed`]).
fn poll_feed<H: Host>(host: &H, worker: &RefCell<Worker>) {
    let mut w = worker.borrow_mut();
    let poll = w.feed.poll(host, &w.config.key_service);
    match poll {
        feed::Poll::Started(token) => {
            w.root_calls.insert(token, RootCall::Feed);
            w.counters.inc(host, Stat::FeedPoll);
        }
        feed::Poll::Refused => w.counters.inc(host, Stat::FeedError),
        feed::Poll::NotMyTurn => {}
    }
}

/// Adds this worker's usage counts to the proxy's, and reports them when it is its turn.
fn report_usage<H: Host>(host: &H, worker: &RefCell<Worker>) {
    let mut w = worker.borrow_mut();
    let Some(usage) = &w.usage else {
        return;
    };
    // As this worker's poll just read the record: no second read of shared data.
    let feed_seq = w.feed.view().cursor();
    let tick = usage.tick(host, &w.config.key_service, feed_seq);
    if tick.dropped > 0 {
        w.counters.add(host, Stat::UsageDropped, tick.dropped);
    }
    if let Some(token) = tick.started {
        w.root_calls.insert(token, RootCall::Usage);
    }
}

/// Calls again for requests whose leading request went away before its answer.
fn retry_orphans<H: Host>(host: &H, worker: &RefCell<Worker>) {
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
            (w.feed.epoch(host), w.dispatch_verify(host, &hash))
        };
        match dispatched {
            Ok(token) => {
                let mut w = worker.borrow_mut();
                w.root_calls.insert(token, RootCall::Verify { hash, epoch });
                if let Some(f) = w.flights.get_mut(&hash) {
                    f.token = Some(token);
                    f.epoch = epoch;
                    f.started_ms = host.now_ms();
                }
            }
            Err(_) => {
                worker.borrow().counters.inc(host, Stat::CalloutError);
                complete_flight(host, worker, hash, Outcome::Failed);
            }
        }
    }
}

/// Makes the calls for the stale answers requests asked to refresh (see
/// [`Worker::want_refresh`]), and forgets refreshes whose time is up.
fn start_refreshes<H: Host>(host: &H, worker: &RefCell<Worker>) {
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
        let mut w = worker.borrow_mut();
        // Refreshed by another worker meanwhile, invalidated, or past the stale window: the
        // next request decides.
        if !matches!(store::lookup(host, &mut w, &hash), store::Found::Stale(_)) {
            drop(w);
            worker.borrow_mut().refreshes.remove(&hash);
            continue;
        }
        let epoch = w.feed.epoch(host);
        let dispatched = w.dispatch_verify(host, &hash);
        let until_ms = now.saturating_add(millis(w.config.key_service.timeout).saturating_add(1_000));
        drop(w);
        let mut w = worker.borrow_mut();
        match dispatched {
            Ok(token) => {
                w.root_calls.insert(token, RootCall::Refresh { hash, epoch, started_ms: now });
                w.refreshes.insert(hash, Refresh::InFlight { until_ms });
                w.counters.inc(host, Stat::CacheRefreshStarted);
            }
            Err(_) => {
                let until_ms = now.saturating_add(millis(REFRESH_RETRY));
                w.refreshes.insert(hash, Refresh::Failed { until_ms });
                w.counters.inc(host, Stat::CalloutError);
                w.counters.inc(host, Stat::CacheRefreshFailed);
            }
        }
    }
}

fn feed_done<H: Host>(host: &H, w: &Worker, status: u32, size: usize) {
    match w.feed.done(host, &w.config.key_service, status, size) {
        feed::Done::Applied(n) => w.counters.add(host, Stat::FeedInvalidations, n as u64),
        feed::Done::Reset => w.counters.inc(host, Stat::FeedResets),
        feed::Done::Failed | feed::Done::Rebased => w.counters.inc(host, Stat::FeedError),
    }
}
