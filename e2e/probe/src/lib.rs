//! A test-only proxy-wasm module, never shipped: in each callback of a request it makes, through
//! `tollgate_host::EnvoyHost`, host calls that Envoy refuses there (and a few it accepts, as
//! controls), then lets the request through and reports what every call answered in response
//! headers `x-probe-<call>: ok | error | some | none | …`. `e2e/tests/host_abi.rs` drives it
//! through real Envoy: with host calls that panic on a refusal, the first one kills the VM.
//!
//! What a request probes depends on its path (see [`Probe`]); any other path makes no host
//! call, so a plain request shows whether the VM still answers.

#![cfg(target_arch = "wasm32")]

use std::cell::Cell;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use tollgate_host::{EnvoyHost, Host};

/// The cluster `/grpc` calls.
const GRPC_CLUSTER: &str = "probe_grpc";
/// Filter state the probe writes (where Envoy allows it, and from the root context, where not).
const STATE: &[&str] = &["tollgate.probe"];

proxy_wasm::main! {{
    tollgate_host::install_panic_hook();
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> { Box::new(ProbeRoot { id }) });
}}

thread_local! {
    /// The id of the last request context the VM dropped: a context Envoy no longer has.
    static GONE: Cell<u32> = const { Cell::new(u32::MAX) };
}

struct ProbeRoot {
    id: u32,
}

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ProbeHttp { id: context_id, root: self.id, probe: Probe::Nothing, report: Vec::new() }))
    }
}

/// What a request probes, by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// `/refusals`: calls Envoy refuses while the request headers, then the response headers,
    /// are processed.
    Refusals,
    /// `/body` (a POST): calls on the buffered request body.
    Body,
    /// `/grpc`: a gRPC call to `probe_grpc`; reports the status and message it closed with.
    Grpc,
    /// `/local-reply-twice`: two local replies (Envoy accepts both calls, the first wins).
    LocalReplyTwice,
    /// `/resume-unpaused`: resumes a request that is not paused (Envoy accepts the call).
    ResumeUnpaused,
    /// Anything else: no host call at all.
    Nothing,
}

impl Probe {
    fn of(path: &str) -> Self {
        match path {
            "/refusals" => Self::Refusals,
            "/body" => Self::Body,
            "/grpc" => Self::Grpc,
            "/local-reply-twice" => Self::LocalReplyTwice,
            "/resume-unpaused" => Self::ResumeUnpaused,
            _ => Self::Nothing,
        }
    }
}

struct ProbeHttp {
    id: u32,
    root: u32,
    probe: Probe,
    report: Vec<(&'static str, String)>,
}

fn ok(done: bool) -> String {
    (if done { "ok" } else { "error" }).to_owned()
}

fn got<T>(value: Option<T>) -> String {
    (if value.is_some() { "some" } else { "none" }).to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ProbeHttp {
    fn note(&mut self, call: &'static str, answer: String) {
        self.report.push((call, answer));
    }

    /// Calls Envoy refuses while the request headers are being processed: the response map and
    /// body do not exist yet, neither does a request body (there is none buffered), nor a callout
    /// response; the previous request's context is gone; the root context has no stream.
    fn request_headers(&mut self) {
        let host = EnvoyHost;
        // Controls: Envoy accepts these here.
        self.note("get-request-header", got(host.request_header_bytes(":method")));
        self.note("set-request-header", ok(host.set_request_header("x-probe", Some(b"1"))));
        self.note("set-property", ok(host.set_property(STATE, b"1")));

        self.note("get-response-header", got(host.response_header_bytes("server")));
        self.note("get-response-headers", got(Some(host.response_headers()).filter(|h| !h.is_empty())));
        self.note("set-response-header", ok(host.set_response_header("x-probe", Some(b"1"))));
        self.note("remove-response-header", ok(host.set_response_header("x-probe", None)));
        self.note("add-response-header", ok(host.add_response_header("x-probe", b"1")));
        self.note("get-request-body", got(host.request_body(0, 1024)));
        self.note("set-request-body", ok(host.set_request_body(0, 0, b"x")));
        self.note("set-response-body", ok(host.set_response_body(0, 0, b"x")));
        self.note("get-call-header", got(host.http_call_response_header(":status")));
        self.note("get-call-body", got(host.http_call_response_body(1024)));
        self.note("get-grpc-body", got(host.grpc_response_body(1024)));
        self.note("get-grpc-message", got(host.grpc_status_message()));
        self.note("get-shared-missing", got(host.shared_get("tollgate.probe.never-written").0));

        self.note("effective-gone", ok(host.set_effective_context(GONE.get())));
        // In the root context there is no stream: no headers, no filter state.
        self.note("effective-root", ok(host.set_effective_context(self.root)));
        self.note("root-get-request-header", got(host.request_header_bytes(":method")));
        self.note("root-set-property", ok(host.set_property(STATE, b"1")));
        self.note("effective-back", ok(host.set_effective_context(self.id)));

        let timeout = Duration::from_secs(1);
        let grpc = |cluster| host.grpc_call(cluster, "probe.Probe", "Call", &[], b"", timeout).is_ok();
        self.note("grpc-unknown-cluster", ok(grpc("no_such_cluster")));
        // A cluster argument Envoy would read as a serialized service config.
        self.note("grpc-config-cluster", ok(grpc("0a")));
        let headers = [(":method", "GET"), (":path", "/"), (":authority", "probe")];
        self.note(
            "http-unknown-cluster",
            ok(host.http_call("no_such_cluster", &headers, None, timeout).is_ok()),
        );
        let no_path = [(":method", "GET"), (":authority", "probe")];
        self.note("http-no-path", ok(host.http_call(GRPC_CLUSTER, &no_path, None, timeout).is_ok()));

        // Envoy refuses a counter increment of zero; nothing to report but the VM still alive.
        if let Some(id) = host.define_counter("tollgate.probe.calls") {
            host.increment_counter(id, 0);
            host.increment_counter(id, 1);
        }
    }

    /// Calls on the buffered request body: a write into its middle (Envoy only replaces from the
    /// start or appends), a read and a write past its end.
    fn request_body(&mut self, size: usize) {
        let host = EnvoyHost;
        self.note("body-get", got(host.request_body(0, size)));
        self.note("body-set-middle", ok(host.set_request_body(1, 0, b"x")));
        self.note("body-get-past-end", got(host.request_body(size + 10, 10)));
        self.note("body-set-past-end", ok(host.set_request_body(size + 10, 0, b"")));
    }

    /// Calls Envoy refuses once the request went upstream: its headers and body are gone, and
    /// the response body does not exist while the response headers are processed.
    fn response_headers(&mut self) {
        let host = EnvoyHost;
        self.note("late-get-request-header", got(host.request_header_bytes(":path")));
        self.note("late-set-request-header", ok(host.set_request_header("x-probe", Some(b"1"))));
        self.note("late-add-request-header", ok(host.add_request_header("x-probe", b"1")));
        self.note("late-set-request-body", ok(host.set_request_body(0, 0, b"x")));
        self.note("late-set-response-body", ok(host.set_response_body(0, 0, b"x")));
        self.note("late-get-response-header", got(host.response_header_bytes(":status")));
    }
}

impl Drop for ProbeHttp {
    fn drop(&mut self) {
        // The SDK drops a context when Envoy deletes it.
        GONE.set(self.id);
    }
}

impl Context for ProbeHttp {
    fn on_grpc_call_response(&mut self, _token_id: u32, status_code: u32, _response_size: usize) {
        let host = EnvoyHost;
        // The message is the server's bytes, which need not be UTF-8.
        let message = host.grpc_status_message().unwrap_or_default();
        self.note("grpc-status", status_code.to_string());
        self.note("grpc-message", hex(message.as_bytes()));
        self.note("grpc-resume", ok(host.resume_request()));
    }
}

impl HttpContext for ProbeHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let host = EnvoyHost;
        let path = host.request_header(":path").unwrap_or_default();
        self.probe = Probe::of(&path);
        match self.probe {
            Probe::Refusals => self.request_headers(),
            Probe::Grpc => {
                let timeout = Duration::from_secs(5);
                let started = host.grpc_call(GRPC_CLUSTER, "probe.Probe", "Call", &[], b"", timeout).is_ok();
                self.note("grpc-call", ok(started));
                if started {
                    return Action::Pause;
                }
            }
            Probe::LocalReplyTwice => {
                self.note("send-first", ok(host.send_response(418, &[], b"first")));
                self.note("send-second", ok(host.send_response(419, &[], b"second")));
                return Action::Pause;
            }
            Probe::ResumeUnpaused => self.note("resume-unpaused", ok(host.resume_request())),
            Probe::Body | Probe::Nothing => {}
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.probe != Probe::Body {
            return Action::Continue;
        }
        if !end_of_stream {
            // Envoy buffers the body until it is whole.
            return Action::Pause;
        }
        self.request_body(body_size);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.probe == Probe::Refusals {
            self.response_headers();
        }
        let host = EnvoyHost;
        for (call, answer) in std::mem::take(&mut self.report) {
            host.add_response_header(&format!("x-probe-{call}"), answer.as_bytes());
        }
        Action::Continue
    }
}
