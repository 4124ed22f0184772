//! A benchmark-only proxy-wasm module, never shipped. Its configuration names one host call and a
//! count, `{"call": "shared_get", "n": 50}`; on every request's headers it makes that call `n`
//! times through [`EnvoyHost`] (the layer every filter uses), then lets the request through.
//! The benchmark runs it with `n = 0` and with `n > 0`: the difference in Envoy's CPU time per
//! request, divided by `n`, is the price of one call (`make bench`, docs/performance.md).
//!
//! The configuration is parsed by hand (a `"call"` and an `"n"`), so the module carries no JSON
//! parser that would blur the numbers.

#![cfg(target_arch = "wasm32")]

use std::cell::Cell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use tollgate_host::{EnvoyHost, Host, LogLevel, attributes};

proxy_wasm::main! {{
    tollgate_host::install_panic_hook();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(ProbeRoot { setup: Rc::new(Cell::new(Setup { call: Call::Nothing, n: 0, counter: 0 })) })
    });
}}

/// The shared-data key the shared-data calls read and write.
const SHARED_KEY: &str = "tollgate.bench_probe.slot";
/// A value the size of a cached key-auth answer.
const VALUE: &[u8] = &[b'v'; 96];
/// The filter state `set_property` writes.
const STATE: &str = "tollgate.bench_probe";

/// The host calls the probe can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// No call: the module's fixed cost.
    Nothing,
    /// One request header by name (`x-api-key`).
    GetHeader,
    /// Every request header.
    GetHeaders,
    /// A shared-data read of a 96-byte value.
    SharedGet,
    /// A shared-data write of a 96-byte value.
    SharedSet,
    /// A compare-and-swap round: read, then write with the version read.
    SharedCas,
    /// A filter-state write (`set_property`) of 96 bytes.
    SetProperty,
    /// A property read (`xds.route_name`).
    GetProperty,
    /// A counter increment.
    Counter,
    /// A request header replaced (`set`).
    SetHeader,
    /// A request header added (each call adds one more line).
    AddHeader,
    /// The clock.
    Now,
    /// A log line below Envoy's level (dropped by the host).
    LogFiltered,
    /// A local reply (n is taken as 1: a request has one reply).
    LocalReply,
}

impl Call {
    fn parse(name: &str) -> Option<Call> {
        Some(match name {
            "nothing" => Call::Nothing,
            "get_header" => Call::GetHeader,
            "get_headers" => Call::GetHeaders,
            "shared_get" => Call::SharedGet,
            "shared_set" => Call::SharedSet,
            "shared_cas" => Call::SharedCas,
            "set_property" => Call::SetProperty,
            "get_property" => Call::GetProperty,
            "counter" => Call::Counter,
            "set_header" => Call::SetHeader,
            "add_header" => Call::AddHeader,
            "now" => Call::Now,
            "log_filtered" => Call::LogFiltered,
            "local_reply" => Call::LocalReply,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Setup {
    call: Call,
    n: u32,
    counter: u32,
}

struct ProbeRoot {
    setup: Rc<Cell<Setup>>,
}

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let host = EnvoyHost;
        let config = host.plugin_configuration().unwrap_or_default();
        let config = String::from_utf8_lossy(&config);
        let Some(call) = field(&config, "call").and_then(Call::parse) else {
            host.log(LogLevel::Error, "bench probe: `call` names no known host call");
            return false;
        };
        let Some(n) = field(&config, "n").and_then(|n| n.parse().ok()) else {
            host.log(LogLevel::Error, "bench probe: `n` is not a count");
            return false;
        };
        let counter = host.define_counter("tollgate.bench_probe.calls").unwrap_or(0);
        let _ = host.shared_set(SHARED_KEY, VALUE, None);
        self.setup.set(Setup { call, n, counter });
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ProbeHttp { setup: self.setup.get() }))
    }
}

/// The text after `"name":` in a flat JSON object, without quotes.
fn field<'a>(config: &'a str, name: &str) -> Option<&'a str> {
    let at = config.find(&format!("\"{name}\""))?;
    let rest = config.get(at + name.len() + 2..)?.trim_start().strip_prefix(':')?.trim_start();
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest.get(..end)?.trim().trim_matches('"'))
}

struct ProbeHttp {
    setup: Setup,
}

impl Context for ProbeHttp {}

impl HttpContext for ProbeHttp {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let host = EnvoyHost;
        let Setup { call, n, counter } = self.setup;
        if call == Call::LocalReply {
            host.send_response(200, &[("content-type", "application/json")], b"{\"ok\":true}");
            return Action::Pause;
        }
        let mut sink = 0usize;
        for _ in 0..n {
            sink = sink.wrapping_add(match call {
                Call::Nothing | Call::LocalReply => 0,
                Call::GetHeader => host.request_header_bytes("x-api-key").map_or(0, |v| v.len()),
                Call::GetHeaders => host.request_headers().len(),
                Call::SharedGet => host.shared_get(SHARED_KEY).0.map_or(0, |v| v.len()),
                Call::SharedSet => usize::from(host.shared_set(SHARED_KEY, VALUE, None).is_ok()),
                Call::SharedCas => {
                    let (_, cas) = host.shared_get(SHARED_KEY);
                    usize::from(host.shared_set(SHARED_KEY, VALUE, cas).is_ok())
                }
                Call::SetProperty => usize::from(host.set_property(&[STATE], VALUE)),
                Call::GetProperty => host.property(attributes::ROUTE_NAME).map_or(0, |v| v.len()),
                Call::Counter => {
                    host.increment_counter(counter, 1);
                    1
                }
                Call::SetHeader => usize::from(host.set_request_header("x-probe", Some(b"probe"))),
                Call::AddHeader => usize::from(host.add_request_header("x-probe", b"probe")),
                Call::Now => host.now_ms() as usize,
                Call::LogFiltered => {
                    host.log(LogLevel::Debug, "bench probe");
                    1
                }
            });
        }
        std::hint::black_box(sink);
        Action::Continue
    }
}
