//! Configure, over the generic root context: the rules are compiled once per VM and handed to
//! each request. The filter has no tick.

use std::rc::Rc;

use tollgate_core::transform::config::Config;
use tollgate_host::stats::Counters;
use tollgate_host::{Filter, Host, LogLevel};

use crate::http::TransformHttp;
use crate::worker::{STAT_PREFIX, Worker};

/// The transform filter.
pub struct Transform;

impl Filter for Transform {
    type Worker = Worker;
    type Http<H: Host + 'static> = TransformHttp<H>;

    fn configure<H: Host>(host: &H, config: &[u8]) -> Result<Worker, String> {
        let config = Config::from_json(config).map_err(|e| e.to_string())?;
        let counters = Counters::define(host, STAT_PREFIX);
        host.log(LogLevel::Info, &format!("transform: {} rules loaded", config.rules.len()));
        Ok(Worker { config, counters })
    }

    fn http_context<H: Host + 'static>(
        host: Rc<H>,
        worker: Rc<Worker>,
        _context_id: u32,
    ) -> TransformHttp<H> {
        TransformHttp::new(host, worker)
    }
}
