//! The root context: compiles the configuration once per VM and hands it to each request.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use tollgate_core::transform::STATS;
use tollgate_core::transform::config::Config;
use tollgate_host::{Counters, Host, LogLevel};

use crate::http::TransformHttp;

/// Stat prefix: `tollgate.transform.<stat>`.
pub const STAT_PREFIX: &str = "tollgate.transform";

/// What every request of this VM shares: the compiled rules and the counters.
#[derive(Debug)]
pub struct Filter {
    pub config: Config,
    pub counters: Counters,
}

pub struct TransformRoot<H: Host> {
    host: Rc<H>,
    filter: Option<Rc<Filter>>,
}

impl<H: Host + 'static> TransformRoot<H> {
    pub fn new(host: Rc<H>) -> Self {
        Self { host, filter: None }
    }

    pub fn filter(&self) -> Option<Rc<Filter>> {
        self.filter.clone()
    }

    fn configure(&mut self) -> bool {
        let host = &*self.host;
        let bytes = host.plugin_configuration().unwrap_or_default();
        match Config::from_json(&bytes) {
            Ok(config) => {
                let counters = Counters::define(host, STAT_PREFIX, &STATS);
                host.log(LogLevel::Info, &format!("transform: {} rules loaded", config.rules.len()));
                self.filter = Some(Rc::new(Filter { config, counters }));
                true
            }
            Err(e) => {
                host.log(LogLevel::Critical, &e.to_string());
                false
            }
        }
    }
}

impl<H: Host + 'static> Context for TransformRoot<H> {}

impl<H: Host + 'static> RootContext for TransformRoot<H> {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        self.configure()
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let filter = self.filter.clone()?;
        Some(Box::new(TransformHttp::new(self.host.clone(), filter)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
