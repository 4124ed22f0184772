//! Configure and tick, over the generic root context: the replay table's slots, and the
//! change-feed poll and its answer.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use tollgate_core::signature::config::Config;
use tollgate_host::stats::Gauge;
use tollgate_host::{Filter, Host, feed};

use crate::http::SigningHttp;
use crate::store::{self, Keys};
use crate::worker::{Counters, MAX_LOCAL_SLOTS, Stat, Worker};
use tollgate_core::local::Local;

/// The request-signing filter.
pub struct RequestSigning;

impl Filter for RequestSigning {
    type Worker = RefCell<Worker>;
    type Http<H: Host + 'static> = SigningHttp<H>;

    fn configure<H: Host>(host: &H, config: &[u8]) -> Result<Self::Worker, String> {
        let config = Config::from_json(config).map_err(|e| e.to_string())?;
        let keys = Keys::new(&config);
        store::init_replay(host, &keys, config.replay_slots);
        let counters = Counters::define(host, "tollgate.request_signing");
        let feed = feed::Consumer::new("request-signing", keys.prefix());
        // Workers differ in their heap addresses and start times.
        let address = keys.prefix().as_ptr() as usize as u64;
        let seed = host.now_ms().wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ address.rotate_left(32);
        let local = Local::new(config.cache_slots.min(MAX_LOCAL_SLOTS));
        let feed_lag = Gauge::define(host, "tollgate.request_signing.feed_lag_seconds");
        let usage = tollgate_host::usage::Usage::configured(host, &config.usage, keys.prefix());
        Ok(RefCell::new(Worker {
            config,
            keys,
            counters,
            seed,
            feed,
            feed_lag,
            usage,
            usage_token: None,
            feed_token: None,
            local,
        }))
    }

    fn tick_period(worker: &Self::Worker) -> Option<Duration> {
        Some(worker.borrow().config.key_service.poll_interval)
    }

    /// One worker at a time polls the change feed (see [`tollgate_host::feed`]).
    fn tick<H: Host>(host: &H, _root_id: u32, worker: &Self::Worker) {
        let mut w = worker.borrow_mut();
        let poll = w.feed.poll(host, &w.config.key_service);
        if let Some(lag) = w.feed.lag_seconds(host) {
            w.feed_lag.set(host, lag);
        }
        match poll {
            feed::Poll::Started(token) => {
                w.feed_token = Some(token);
                w.counters.inc(host, Stat::FeedPoll);
            }
            feed::Poll::Refused => w.counters.inc(host, Stat::FeedError),
            feed::Poll::NotMyTurn => {}
        }
        // Usage: this worker's counts into the proxy's, and a report when it is its turn.
        if let Some(usage) = &w.usage {
            // As this worker's poll just read the record: no second read of shared data.
            let feed_seq = w.feed.view().cursor();
            let tick = usage.tick(host, &w.config.key_service, feed_seq);
            if tick.dropped > 0 {
                w.counters.add(host, Stat::UsageDropped, tick.dropped);
            }
            if tick.started.is_some() {
                w.usage_token = tick.started;
            }
        }
    }

    fn grpc_response<H: Host>(
        host: &H,
        _root_id: u32,
        worker: &Self::Worker,
        token: u32,
        status: u32,
        size: usize,
    ) {
        let mut w = worker.borrow_mut();
        if w.usage_token == Some(token) {
            w.usage_token = None;
            if let Some(usage) = &w.usage {
                let stat =
                    if usage.done(host, status) { Stat::UsageReportOk } else { Stat::UsageReportError };
                w.counters.inc(host, stat);
            }
            return;
        }
        if w.feed_token != Some(token) {
            return;
        }
        w.feed_token = None;
        match w.feed.done(host, &w.config.key_service, status, size) {
            feed::Done::Applied(n) => w.counters.add(host, Stat::FeedInvalidations, n as u64),
            feed::Done::Reset => w.counters.inc(host, Stat::FeedResets),
            feed::Done::Failed | feed::Done::Rebased => w.counters.inc(host, Stat::FeedError),
        }
    }

    fn http_context<H: Host + 'static>(
        host: Rc<H>,
        worker: Rc<Self::Worker>,
        context_id: u32,
    ) -> SigningHttp<H> {
        SigningHttp::new(host, worker, context_id)
    }
}
