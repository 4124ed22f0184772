//! The one root context of every filter.
//!
//! A filter says only what differs ([`Filter`]): how its per-VM state (its worker) is built
//! from the configuration bytes, whether and what it does on the tick, what it does with the
//! answers to the calls the root context made, and how it makes the context of one request.
//! [`Root`] does the rest the same way for every filter: reads the configuration, refuses an
//! invalid one with a critical log line (its message names the field), sets the tick, shares
//! the worker with every request's context, and hands the tick and the callout answers on.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use crate::{Host, LogLevel};

/// What a filter supplies to the generic [`Root`].
pub trait Filter: 'static {
    /// Per-VM state: the compiled configuration, stats, caches and calls in flight. Shared by
    /// the root context and every request's context of the VM (use a `RefCell` inside to change
    /// it).
    type Worker: 'static;

    /// The context of one request.
    type Http<H: Host + 'static>: HttpContext + 'static;

    /// Builds the worker from the plugin configuration; `Err` is the message to log, naming the
    /// field that is wrong (the proxy then refuses the configuration).
    fn configure<H: Host>(host: &H, config: &[u8]) -> Result<Self::Worker, String>;

    /// How often [`Filter::tick`] runs; `None` (the default) for a filter without a tick.
    fn tick_period(_worker: &Self::Worker) -> Option<Duration> {
        None
    }

    /// The root context's periodic work (background calls: feed polls, refreshes). `root_id` is
    /// the root context's id, to make it the effective context again after acting for requests.
    fn tick<H: Host>(_host: &H, _root_id: u32, _worker: &Self::Worker) {}

    /// The answer to a gRPC call the root context made.
    fn grpc_response<H: Host>(
        _host: &H,
        _root_id: u32,
        _worker: &Self::Worker,
        _token: u32,
        _status: u32,
        _size: usize,
    ) {
    }

    /// The answer to an HTTP call the root context made.
    fn http_response<H: Host>(
        _host: &H,
        _root_id: u32,
        _worker: &Self::Worker,
        _token: u32,
        _body_size: usize,
    ) {
    }

    /// Makes the context of request `context_id`.
    fn http_context<H: Host + 'static>(
        host: Rc<H>,
        worker: Rc<Self::Worker>,
        context_id: u32,
    ) -> Self::Http<H>;
}

/// The root context of filter `F` over host `H`.
pub struct Root<F: Filter, H: Host> {
    host: Rc<H>,
    context_id: u32,
    worker: Option<Rc<F::Worker>>,
}

impl<F: Filter, H: Host + 'static> Root<F, H> {
    pub fn new(host: Rc<H>, context_id: u32) -> Self {
        Self { host, context_id, worker: None }
    }

    /// The worker, once a configuration was accepted.
    pub fn worker(&self) -> Option<Rc<F::Worker>> {
        self.worker.clone()
    }

    /// The context of request `context_id`; none before a configuration was accepted.
    pub fn http_context(&self, context_id: u32) -> Option<F::Http<H>> {
        let worker = self.worker.clone()?;
        Some(F::http_context(self.host.clone(), worker, context_id))
    }

    fn configure(&mut self) -> bool {
        let host = &*self.host;
        let bytes = host.plugin_configuration().unwrap_or_default();
        match F::configure(host, &bytes) {
            Ok(worker) => {
                if let Some(period) = F::tick_period(&worker) {
                    host.set_tick_period(period);
                }
                self.worker = Some(Rc::new(worker));
                true
            }
            Err(message) => {
                host.log(LogLevel::Critical, &message);
                false
            }
        }
    }
}

impl<F: Filter, H: Host + 'static> Context for Root<F, H> {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if let Some(worker) = &self.worker {
            F::grpc_response(&*self.host, self.context_id, worker, token_id, status_code, response_size);
        }
    }

    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if let Some(worker) = &self.worker {
            F::http_response(&*self.host, self.context_id, worker, token_id, body_size);
        }
    }
}

impl<F: Filter, H: Host + 'static> RootContext for Root<F, H> {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        self.configure()
    }

    fn on_tick(&mut self) {
        if let Some(worker) = &self.worker {
            F::tick(&*self.host, self.context_id, worker);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(self.http_context(context_id)?))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Starts filter `F` in the proxy: the panic hook, and [`Root`] over [`crate::EnvoyHost`] as
/// the root context. Call it from `proxy_wasm::main!`.
#[cfg(target_arch = "wasm32")]
pub fn start<F: Filter>() {
    crate::install_panic_hook();
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Root::<F, crate::EnvoyHost>::new(Rc::new(crate::EnvoyHost), context_id))
    });
}
