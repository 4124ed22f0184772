//! Configure, over the generic root context: the stats, and every bucket slot in shared data
//! before the first request (see [`crate::store`]). The filter has no tick.

use std::rc::Rc;

use tollgate_core::rate_limit::config::Config;
use tollgate_host::{Filter, Host, LogLevel};

use tollgate_host::usage::Reported;

use crate::http::RateLimitHttp;
use crate::worker::{Stat, Worker};

/// The rate-limit filter.
pub struct RateLimit;

impl Filter for RateLimit {
    type Worker = Worker;
    type Http<H: Host + 'static> = RateLimitHttp<H>;

    fn configure<H: Host>(host: &H, config: &[u8]) -> Result<Worker, String> {
        let config = Config::from_json(config).map_err(|e| e.to_string())?;
        let worker = Worker::new(host, config);
        let written: u64 = worker.slots.iter().map(|s| u64::from(s.initialize(host))).sum();
        if written > 0 {
            let total: u64 = worker.slots.iter().map(|s| u64::from(s.count)).sum();
            worker.counters.inc(host, Stat::SlotsInitialized);
            host.log(LogLevel::Info, &format!("rate-limit: initialized {written} of {total} bucket slots"));
        }
        Ok(worker)
    }

    fn tick_period(worker: &Worker) -> Option<std::time::Duration> {
        worker.usage.as_ref().map(tollgate_host::usage::Reporter::tick_period)
    }

    fn tick<H: Host>(host: &H, _root_id: u32, worker: &Worker) {
        if let Some(reporter) = &worker.usage {
            let dropped = reporter.tick(host);
            if dropped > 0 {
                worker.counters.add(host, Stat::UsageDropped, dropped);
            }
        }
    }

    fn grpc_response<H: Host>(
        host: &H,
        _root_id: u32,
        worker: &Worker,
        token: u32,
        status: u32,
        _size: usize,
    ) {
        if let Some(reporter) = &worker.usage {
            match reporter.done(host, token, status) {
                Reported::Ok => worker.counters.inc(host, Stat::UsageReportOk),
                Reported::Failed => worker.counters.inc(host, Stat::UsageReportError),
                Reported::NotMine => {}
            }
        }
    }

    fn http_context<H: Host + 'static>(
        host: Rc<H>,
        worker: Rc<Worker>,
        _context_id: u32,
    ) -> RateLimitHttp<H> {
        RateLimitHttp::new(host, worker)
    }
}
