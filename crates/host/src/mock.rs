//! An in-memory [`Host`] for native tests of the filters' contexts, and [`Harness`], which drives
//! any filter through the generic root context as Envoy does.
//!
//! One `MockHost` stands for one Envoy worker; [`MockHost::sharing_with`] makes another worker
//! that shares the first one's shared data, as Envoy's workers do. Per-request state (headers,
//! local replies, resumption) is kept per context id; [`MockHost::enter`] says which context
//! the next calls act for, as Envoy does before each callback.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::Action;

use crate::root::{Filter, Root};
use crate::{Host, LogLevel, SharedError, attributes};

/// A gRPC call a context started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCall {
    pub token: u32,
    pub context_id: u32,
    pub cluster: String,
    pub service: String,
    pub method: String,
    pub metadata: Vec<(String, Vec<u8>)>,
    pub message: Vec<u8>,
    pub timeout: Duration,
}

/// The HTTP call response being delivered: headers and body.
type HttpResponse = (Vec<(String, String)>, Option<Vec<u8>>);

/// An HTTP call a context started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    pub token: u32,
    pub context_id: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout: Duration,
}

/// A local reply a context sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl LocalReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A header map as Envoy keeps it: field lines in order, names lower-case, a repeated header once
/// per line. A lookup by name answers the first line only, as Envoy's `get_header_map_value` does;
/// setting a name replaces all its lines and removing it removes them all.
#[derive(Debug, Default, Clone)]
struct Headers(Vec<(String, Vec<u8>)>);

impl Headers {
    fn first(&self, name: &str) -> Option<Vec<u8>> {
        let name = name.to_ascii_lowercase();
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone())
    }

    fn all(&self, name: &str) -> Vec<Vec<u8>> {
        let name = name.to_ascii_lowercase();
        self.0.iter().filter(|(n, _)| *n == name).map(|(_, v)| v.clone()).collect()
    }

    fn remove(&mut self, name: &str) {
        let name = name.to_ascii_lowercase();
        self.0.retain(|(n, _)| *n != name);
    }

    /// Replaces the first line's value and drops the others (Envoy's `setCopy`), or appends.
    fn set(&mut self, name: &str, value: &[u8]) {
        let name = name.to_ascii_lowercase();
        match self.0.iter().position(|(n, _)| *n == name) {
            Some(i) => {
                if let Some(line) = self.0.get_mut(i) {
                    line.1 = value.to_vec();
                }
                let mut seen = 0;
                self.0.retain(|(n, _)| {
                    if *n == name {
                        seen += 1;
                        seen == 1
                    } else {
                        true
                    }
                });
            }
            None => self.0.push((name, value.to_vec())),
        }
    }

    fn add(&mut self, name: &str, value: &[u8]) {
        self.0.push((name.to_ascii_lowercase(), value.to_vec()));
    }

    /// A host setter: an invalid value removes the header and is refused.
    fn host_set(&mut self, name: &str, value: Option<&[u8]>) -> bool {
        match value {
            Some(v) if crate::valid_field_value(v) => {
                self.set(name, v);
                true
            }
            Some(_) => {
                self.remove(name);
                false
            }
            None => {
                self.remove(name);
                true
            }
        }
    }

    fn host_add(&mut self, name: &str, value: &[u8]) -> bool {
        crate::valid_field_value(value) && {
            self.add(name, value);
            true
        }
    }
}

#[derive(Debug, Default)]
struct RequestState {
    headers: Headers,
    reply: Option<LocalReply>,
    resumed: u32,
    properties: HashMap<String, Vec<u8>>,
    response_headers: Headers,
    request_body: Vec<u8>,
    response_body: Vec<u8>,
}

#[derive(Debug, Default)]
struct Shared {
    data: HashMap<String, (Vec<u8>, u32)>,
    /// Make the next N CAS writes fail, to test retry loops.
    fail_cas: u32,
}

/// See the module documentation.
#[derive(Debug)]
pub struct MockHost {
    now_ms: Cell<u64>,
    current: Cell<u32>,
    shared: Rc<RefCell<Shared>>,
    requests: RefCell<HashMap<u32, RequestState>>,
    /// Contexts that are gone: `set_effective_context` to them fails.
    gone: RefCell<Vec<u32>>,
    calls: RefCell<Vec<GrpcCall>>,
    next_token: Cell<u32>,
    refuse_calls: Cell<bool>,
    grpc_body: RefCell<Option<Vec<u8>>>,
    grpc_message: RefCell<Option<String>>,
    global_properties: RefCell<HashMap<String, Vec<u8>>>,
    counters: RefCell<BTreeMap<String, i64>>,
    /// Every metric's name, by id (counters, gauges and histograms share the ids, as in Envoy).
    counter_names: RefCell<Vec<String>>,
    gauges: RefCell<BTreeMap<String, u64>>,
    histograms: RefCell<BTreeMap<String, Vec<u64>>>,
    logs: RefCell<Vec<(LogLevel, String)>>,
    tick: Cell<Option<Duration>>,
    configuration: RefCell<Option<Vec<u8>>>,
    http_calls: RefCell<Vec<HttpCall>>,
    http_response: RefCell<HttpResponse>,
    /// Shared-data reads this host made (not those of hosts sharing its data).
    shared_reads: Cell<u64>,
    /// Reads of every request header, and of properties, this host answered.
    header_list_reads: Cell<u64>,
    property_reads: Cell<u64>,
}

impl Default for MockHost {
    fn default() -> Self {
        Self {
            now_ms: Cell::new(1_700_000_000_000),
            current: Cell::new(0),
            shared: Rc::default(),
            requests: RefCell::default(),
            gone: RefCell::default(),
            calls: RefCell::default(),
            next_token: Cell::new(1),
            refuse_calls: Cell::new(false),
            grpc_body: RefCell::default(),
            grpc_message: RefCell::default(),
            global_properties: RefCell::default(),
            counters: RefCell::default(),
            counter_names: RefCell::default(),
            gauges: RefCell::default(),
            histograms: RefCell::default(),
            logs: RefCell::default(),
            tick: Cell::new(None),
            configuration: RefCell::default(),
            http_calls: RefCell::default(),
            http_response: RefCell::default(),
            shared_reads: Cell::new(0),
            header_list_reads: Cell::new(0),
            property_reads: Cell::new(0),
        }
    }
}

impl MockHost {
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// Another worker of the same proxy: separate contexts, same shared data and clock start.
    pub fn sharing_with(other: &MockHost) -> Rc<Self> {
        let host = Self { shared: other.shared.clone(), ..Self::default() };
        host.now_ms.set(other.now_ms.get());
        Rc::new(host)
    }

    // --- driving the mock -------------------------------------------------------------

    /// The next calls act for `context_id`.
    pub fn enter(&self, context_id: u32) {
        self.current.set(context_id);
    }

    pub fn set_now_ms(&self, ms: u64) {
        self.now_ms.set(ms);
    }

    pub fn advance(&self, d: Duration) {
        self.now_ms.set(self.now_ms.get() + d.as_millis() as u64);
    }

    /// Sets a request header of `context_id`, replacing any value it had.
    pub fn with_header(&self, context_id: u32, name: &str, value: &str) {
        self.with_header_bytes(context_id, name, value.as_bytes());
    }

    /// Sets a request header of `context_id` to bytes that need not be UTF-8.
    pub fn with_header_bytes(&self, context_id: u32, name: &str, value: &[u8]) {
        self.requests.borrow_mut().entry(context_id).or_default().headers.set(name, value);
    }

    /// Adds another field line of a request header (a repeated header, as a client sent it).
    pub fn with_header_line(&self, context_id: u32, name: &str, value: &str) {
        self.requests.borrow_mut().entry(context_id).or_default().headers.add(name, value.as_bytes());
    }

    /// Sets a response header of `context_id`, replacing any value it had.
    pub fn with_response_header(&self, context_id: u32, name: &str, value: &str) {
        self.requests
            .borrow_mut()
            .entry(context_id)
            .or_default()
            .response_headers
            .set(name, value.as_bytes());
    }

    /// Adds another field line of a response header.
    pub fn with_response_header_line(&self, context_id: u32, name: &str, value: &str) {
        self.requests
            .borrow_mut()
            .entry(context_id)
            .or_default()
            .response_headers
            .add(name, value.as_bytes());
    }

    /// Sets the (buffered) request body of `context_id`.
    pub fn with_request_body(&self, context_id: u32, body: &[u8]) {
        self.requests.borrow_mut().entry(context_id).or_default().request_body = body.to_vec();
    }

    /// Sets the (buffered) response body of `context_id`.
    pub fn with_response_body(&self, context_id: u32, body: &[u8]) {
        self.requests.borrow_mut().entry(context_id).or_default().response_body = body.to_vec();
    }

    /// Sets a property every context sees (e.g. [`attributes::ROUTE_NAME`]). Panics on a path
    /// Envoy 1.40 does not provide, so a test cannot rely on a property only the mock answers.
    pub fn with_property(&self, path: &[&str], value: &[u8]) {
        assert_readable(path);
        self.global_properties.borrow_mut().insert(path.join("."), value.to_vec());
    }

    /// Sets a property one context sees (filter state an earlier filter wrote, or a request
    /// attribute). Panics on a path Envoy 1.40 does not provide.
    pub fn with_request_property(&self, context_id: u32, path: &[&str], value: &[u8]) {
        assert_readable(path);
        self.requests
            .borrow_mut()
            .entry(context_id)
            .or_default()
            .properties
            .insert(path.join("."), value.to_vec());
    }

    /// The next gRPC response body (what `grpc_response_body` returns).
    pub fn set_grpc_response(&self, body: Option<Vec<u8>>, message: Option<&str>) {
        *self.grpc_body.borrow_mut() = body;
        *self.grpc_message.borrow_mut() = message.map(str::to_owned);
    }

    /// The next HTTP call response (headers such as `:status`, and body).
    pub fn set_http_response(&self, headers: &[(&str, &str)], body: Option<&[u8]>) {
        *self.http_response.borrow_mut() = (
            headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned())).collect(),
            body.map(<[u8]>::to_vec),
        );
    }

    /// The HTTP calls started so far.
    pub fn http_calls(&self) -> Vec<HttpCall> {
        self.http_calls.borrow().clone()
    }

    /// The plugin configuration `on_configure` reads.
    pub fn with_configuration(&self, config: &str) {
        *self.configuration.borrow_mut() = Some(config.as_bytes().to_vec());
    }

    /// Makes `grpc_call` fail, as when the cluster does not exist.
    pub fn refuse_calls(&self, refuse: bool) {
        self.refuse_calls.set(refuse);
    }

    /// Makes the next `n` CAS-guarded writes fail with a mismatch.
    pub fn fail_next_cas(&self, n: u32) {
        self.shared.borrow_mut().fail_cas = n;
    }

    /// Marks a context as destroyed.
    pub fn destroy(&self, context_id: u32) {
        self.gone.borrow_mut().push(context_id);
    }

    // --- inspecting ---------------------------------------------------------------------

    /// The first value of a request header of `context_id`, as lossy text.
    pub fn header(&self, context_id: u32, name: &str) -> Option<String> {
        self.requests.borrow().get(&context_id).and_then(|r| r.headers.first(name)).map(crate::lossy)
    }

    /// Every value of a request header of `context_id`, as bytes.
    pub fn header_lines(&self, context_id: u32, name: &str) -> Vec<Vec<u8>> {
        self.requests.borrow().get(&context_id).map(|r| r.headers.all(name)).unwrap_or_default()
    }

    /// The first value of a response header of `context_id`, as lossy text.
    pub fn response_header_of(&self, context_id: u32, name: &str) -> Option<String> {
        self.requests.borrow().get(&context_id).and_then(|r| r.response_headers.first(name)).map(crate::lossy)
    }

    /// Every value of a response header of `context_id`, as bytes.
    pub fn response_header_lines(&self, context_id: u32, name: &str) -> Vec<Vec<u8>> {
        self.requests.borrow().get(&context_id).map(|r| r.response_headers.all(name)).unwrap_or_default()
    }

    pub fn request_body_of(&self, context_id: u32) -> Vec<u8> {
        self.requests.borrow().get(&context_id).map(|r| r.request_body.clone()).unwrap_or_default()
    }

    pub fn response_body_of(&self, context_id: u32) -> Vec<u8> {
        self.requests.borrow().get(&context_id).map(|r| r.response_body.clone()).unwrap_or_default()
    }

    pub fn reply(&self, context_id: u32) -> Option<LocalReply> {
        self.requests.borrow().get(&context_id).and_then(|r| r.reply.clone())
    }

    pub fn resumed(&self, context_id: u32) -> u32 {
        self.requests.borrow().get(&context_id).map_or(0, |r| r.resumed)
    }

    pub fn request_property(&self, context_id: u32, path: &[&str]) -> Option<Vec<u8>> {
        self.requests.borrow().get(&context_id).and_then(|r| r.properties.get(&path.join(".")).cloned())
    }

    pub fn calls(&self) -> Vec<GrpcCall> {
        self.calls.borrow().clone()
    }

    pub fn counter(&self, name: &str) -> i64 {
        self.counters.borrow().get(name).copied().unwrap_or(0)
    }

    /// A gauge's value; `None` when it was never defined.
    pub fn gauge(&self, name: &str) -> Option<u64> {
        self.gauges.borrow().get(name).copied()
    }

    /// The values recorded in a histogram; `None` when it was never defined.
    pub fn histogram(&self, name: &str) -> Option<Vec<u64>> {
        self.histograms.borrow().get(name).cloned()
    }

    /// Every counter's name, in order.
    pub fn counter_names(&self) -> Vec<String> {
        self.counters.borrow().keys().cloned().collect()
    }

    /// How many shared-data reads this host has made.
    pub fn shared_reads(&self) -> u64 {
        self.shared_reads.get()
    }

    /// How many times every request header was read at once (`request_headers`).
    pub fn header_list_reads(&self) -> u64 {
        self.header_list_reads.get()
    }

    /// How many properties were read.
    pub fn property_reads(&self) -> u64 {
        self.property_reads.get()
    }

    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        self.logs.borrow().clone()
    }

    pub fn tick_period(&self) -> Option<Duration> {
        self.tick.get()
    }

    pub fn shared_keys(&self) -> usize {
        self.shared.borrow().data.len()
    }

    /// The id of metric `name`, given on its first definition.
    fn metric_id(&self, name: &str) -> u32 {
        let mut names = self.counter_names.borrow_mut();
        if let Some(i) = names.iter().position(|n| n == name) {
            return i as u32;
        }
        names.push(name.to_owned());
        names.len() as u32 - 1
    }

    fn with_request<R>(&self, f: impl FnOnce(&mut RequestState) -> R) -> R {
        f(self.requests.borrow_mut().entry(self.current.get()).or_default())
    }
}

impl Host for MockHost {
    fn now_ms(&self) -> u64 {
        self.now_ms.get()
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.logs.borrow_mut().push((level, message.to_owned()));
    }

    fn request_header_bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.with_request(|r| r.headers.first(name))
    }

    fn request_headers(&self) -> Vec<(String, Vec<u8>)> {
        self.header_list_reads.set(self.header_list_reads.get() + 1);
        self.with_request(|r| r.headers.0.clone())
    }

    fn set_request_header(&self, name: &str, value: Option<&[u8]>) -> bool {
        self.with_request(|r| r.headers.host_set(name, value))
    }

    fn add_request_header(&self, name: &str, value: &[u8]) -> bool {
        self.with_request(|r| r.headers.host_add(name, value))
    }

    fn response_header_bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.with_request(|r| r.response_headers.first(name))
    }

    fn response_headers(&self) -> Vec<(String, Vec<u8>)> {
        self.with_request(|r| r.response_headers.0.clone())
    }

    fn set_response_header(&self, name: &str, value: Option<&[u8]>) -> bool {
        self.with_request(|r| r.response_headers.host_set(name, value))
    }

    fn add_response_header(&self, name: &str, value: &[u8]) -> bool {
        self.with_request(|r| r.response_headers.host_add(name, value))
    }

    fn request_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        self.with_request(|r| slice_of(&r.request_body, start, size))
    }

    fn set_request_body(&self, start: usize, size: usize, body: &[u8]) -> bool {
        self.with_request(|r| splice(&mut r.request_body, start, size, body))
    }

    fn response_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        self.with_request(|r| slice_of(&r.response_body, start, size))
    }

    fn set_response_body(&self, start: usize, size: usize, body: &[u8]) -> bool {
        self.with_request(|r| splice(&mut r.response_body, start, size, body))
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        assert_readable(path);
        self.property_reads.set(self.property_reads.get() + 1);
        let key = path.join(".");
        self.with_request(|r| r.properties.get(&key).cloned())
            .or_else(|| self.global_properties.borrow().get(&key).cloned())
    }

    fn set_property(&self, path: &[&str], value: &[u8]) -> bool {
        // Envoy keeps what a filter writes as filter state: only one-segment names it can read back.
        if !attributes::is_writable(path) {
            return false;
        }
        self.with_request(|r| r.properties.insert(path.join("."), value.to_vec()));
        true
    }

    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.shared_reads.set(self.shared_reads.get() + 1);
        match self.shared.borrow().data.get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        let mut shared = self.shared.borrow_mut();
        if cas.is_some() && shared.fail_cas > 0 {
            shared.fail_cas -= 1;
            return Err(SharedError::CasMismatch);
        }
        let current = shared.data.get(key).map(|(_, c)| *c);
        if let (Some(expected), Some(actual)) = (cas, current)
            && expected != actual
        {
            return Err(SharedError::CasMismatch);
        }
        let next = current.unwrap_or(0).wrapping_add(1).max(1);
        shared.data.insert(key.to_owned(), (value.to_vec(), next));
        Ok(())
    }

    fn grpc_call(
        &self,
        cluster: &str,
        service: &str,
        method: &str,
        metadata: &[(&str, &[u8])],
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, crate::CallRefused> {
        if self.refuse_calls.get() {
            return Err(crate::CallRefused);
        }
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        self.calls.borrow_mut().push(GrpcCall {
            token,
            context_id: self.current.get(),
            cluster: cluster.to_owned(),
            service: service.to_owned(),
            method: method.to_owned(),
            metadata: metadata.iter().map(|(k, v)| ((*k).to_owned(), v.to_vec())).collect(),
            message: message.to_vec(),
            timeout,
        });
        Ok(token)
    }

    fn grpc_response_body(&self, _size: usize) -> Option<Vec<u8>> {
        self.grpc_body.borrow().clone()
    }

    fn grpc_status_message(&self) -> Option<String> {
        self.grpc_message.borrow().clone()
    }

    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, crate::CallRefused> {
        if self.refuse_calls.get() {
            return Err(crate::CallRefused);
        }
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        self.http_calls.borrow_mut().push(HttpCall {
            token,
            context_id: self.current.get(),
            cluster: cluster.to_owned(),
            headers: headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            body: body.map(<[u8]>::to_vec),
            timeout,
        });
        Ok(token)
    }

    fn http_call_response_header(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        self.http_response.borrow().0.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
    }

    fn http_call_response_headers(&self) -> Vec<(String, Vec<u8>)> {
        self.http_response.borrow().0.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect()
    }

    fn http_call_response_body(&self, size: usize) -> Option<Vec<u8>> {
        self.http_response.borrow().1.as_ref().and_then(|b| b.get(..size.min(b.len())).map(<[u8]>::to_vec))
    }

    fn send_response(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> bool {
        let reply = LocalReply {
            status,
            headers: headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            body: body.to_vec(),
        };
        self.with_request(|r| r.reply = Some(reply));
        true
    }

    fn resume_request(&self) -> bool {
        self.with_request(|r| r.resumed += 1);
        true
    }

    fn set_effective_context(&self, context_id: u32) -> bool {
        if self.gone.borrow().contains(&context_id) {
            return false;
        }
        self.current.set(context_id);
        true
    }

    fn set_tick_period(&self, period: Duration) {
        self.tick.set(Some(period));
    }

    fn plugin_configuration(&self) -> Option<Vec<u8>> {
        self.configuration.borrow().clone()
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        self.counters.borrow_mut().entry(name.to_owned()).or_default();
        Some(self.metric_id(name))
    }

    fn increment_counter(&self, id: u32, by: i64) {
        let name = self.counter_names.borrow().get(id as usize).cloned();
        if let Some(name) = name
            && let Some(value) = self.counters.borrow_mut().get_mut(&name)
        {
            *value += by;
        }
    }

    fn define_gauge(&self, name: &str) -> Option<u32> {
        self.gauges.borrow_mut().entry(name.to_owned()).or_default();
        Some(self.metric_id(name))
    }

    fn define_histogram(&self, name: &str) -> Option<u32> {
        self.histograms.borrow_mut().entry(name.to_owned()).or_default();
        Some(self.metric_id(name))
    }

    fn record_metric(&self, id: u32, value: u64) {
        let name = self.counter_names.borrow().get(id as usize).cloned();
        let Some(name) = name else {
            return;
        };
        if let Some(gauge) = self.gauges.borrow_mut().get_mut(&name) {
            *gauge = value;
        } else if let Some(values) = self.histograms.borrow_mut().get_mut(&name) {
            values.push(value);
        }
    }
}

/// The id [`Harness`] gives the root context.
pub const ROOT_ID: u32 = 1;

/// One worker of a proxy running filter `F`, driven as Envoy drives it: the generic root context
/// is configured, makes a context for each request, ticks and gets the answers to its calls;
/// each request's context gets its callbacks with [`MockHost::enter`] done first.
///
/// The filter talks to `H`, which is the mock itself unless a test wraps it (a host that
/// answers some call otherwise, see [`Harness::wrapping`]); `host` is the mock either way, to set
/// a request up and look at what the filter did.
#[allow(clippy::panic)] // a test that drives a context it never made is wrong
pub struct Harness<F: Filter, H: Host + 'static = MockHost> {
    pub host: Rc<MockHost>,
    root: Root<F, H>,
    contexts: HashMap<u32, F::Http<H>>,
    next_id: u32,
}

impl<F: Filter> Harness<F> {
    /// A new worker with the filter configured with `config`; panics when it is refused.
    pub fn new(config: &str) -> Self {
        Self::configured(MockHost::new(), config)
    }

    /// The filter configured with `config` on `host` (e.g. `MockHost::sharing_with(..)`: another
    /// worker of the same proxy); panics when it is refused.
    pub fn configured(host: Rc<MockHost>, config: &str) -> Self {
        let mut harness = Self::on(host);
        assert!(harness.configure(config), "configuration refused: {:?}", harness.host.logs());
        harness
    }

    /// The filter on `host`, not configured yet (see [`Harness::configure`]).
    pub fn on(host: Rc<MockHost>) -> Self {
        Self::wrapping(host.clone(), host)
    }
}

#[allow(clippy::panic)]
impl<F: Filter, H: Host + 'static> Harness<F, H> {
    /// The filter on `proxy`, a host that wraps the mock `host`; not configured yet.
    pub fn wrapping(host: Rc<MockHost>, proxy: Rc<H>) -> Self {
        Self { host, root: Root::new(proxy, ROOT_ID), contexts: HashMap::new(), next_id: 100 }
    }

    /// Gives the root context `config` (`on_configure`); true when the filter accepts it.
    pub fn configure(&mut self, config: &str) -> bool {
        self.host.with_configuration(config);
        self.host.enter(ROOT_ID);
        self.root.on_configure(config.len())
    }

    /// The filter's worker, once configured.
    pub fn worker(&self) -> Option<Rc<F::Worker>> {
        self.root.worker()
    }

    /// The root context's tick.
    pub fn tick(&mut self) {
        self.host.enter(ROOT_ID);
        self.root.on_tick();
    }

    /// A new request: a new context id, and the context the root context makes for it. Set its
    /// headers (and body, properties) on [`Harness::host`] before [`Harness::request_headers`].
    pub fn new_request(&mut self) -> u32 {
        self.next_id += 1;
        let id = self.next_id;
        let Some(context) = self.root.http_context(id) else {
            panic!("no HTTP context before the filter is configured");
        };
        self.contexts.insert(id, context);
        id
    }

    /// A new request with these request headers (a name given twice keeps the later value).
    pub fn request(&mut self, headers: &[(&str, &str)]) -> u32 {
        let id = self.new_request();
        for (name, value) in headers {
            self.host.with_header(id, name, value);
        }
        id
    }

    fn context(&mut self, id: u32) -> &mut F::Http<H> {
        self.host.enter(id);
        match self.contexts.get_mut(&id) {
            Some(context) => context,
            None => panic!("no context {id} (never made, or done)"),
        }
    }

    pub fn request_headers(&mut self, id: u32, end_of_stream: bool) -> Action {
        self.context(id).on_http_request_headers(0, end_of_stream)
    }

    pub fn request_body(&mut self, id: u32, body_size: usize, end_of_stream: bool) -> Action {
        self.context(id).on_http_request_body(body_size, end_of_stream)
    }

    pub fn request_trailers(&mut self, id: u32) -> Action {
        self.context(id).on_http_request_trailers(1)
    }

    pub fn response_headers(&mut self, id: u32, end_of_stream: bool) -> Action {
        self.context(id).on_http_response_headers(0, end_of_stream)
    }

    pub fn response_body(&mut self, id: u32, body_size: usize, end_of_stream: bool) -> Action {
        self.context(id).on_http_response_body(body_size, end_of_stream)
    }

    pub fn response_trailers(&mut self, id: u32) -> Action {
        self.context(id).on_http_response_trailers(1)
    }

    /// The request ends (a reset, a timeout, or done): `on_done`, then the proxy deletes the
    /// context (later calls acting for it fail). Returns what `on_done` answered.
    pub fn done(&mut self, id: u32) -> bool {
        let done = self.context(id).on_done();
        self.contexts.remove(&id);
        self.host.destroy(id);
        done
    }

    /// Delivers a gRPC response to context `id` (the root context for [`ROOT_ID`]) under call
    /// `token`, whatever call it made: the response set with [`MockHost::set_grpc_response`].
    pub fn grpc_response(&mut self, id: u32, token: u32, status: u32, size: usize) {
        if id == ROOT_ID {
            self.host.enter(ROOT_ID);
            self.root.on_grpc_call_response(token, status, size);
        } else {
            self.context(id).on_grpc_call_response(token, status, size);
        }
    }

    /// Delivers an HTTP call response to context `id` (the root context for [`ROOT_ID`]) under
    /// call `token`: the response set with [`MockHost::set_http_response`].
    pub fn http_response(&mut self, id: u32, token: u32, body_size: usize) {
        if id == ROOT_ID {
            self.host.enter(ROOT_ID);
            self.root.on_http_call_response(token, 1, body_size, 0);
        } else {
            self.context(id).on_http_call_response(token, 1, body_size, 0);
        }
    }

    /// Answers gRPC call `token` with gRPC `status`, the response message `body` and the status
    /// `message`, to the context that made the call, as the proxy does.
    pub fn answer_grpc(&mut self, token: u32, status: u32, body: Option<&[u8]>, message: Option<&str>) {
        let Some(call) = self.host.calls().into_iter().find(|c| c.token == token) else {
            panic!("no gRPC call {token}");
        };
        self.host.set_grpc_response(body.map(<[u8]>::to_vec), message);
        self.grpc_response(call.context_id, token, status, body.map_or(0, <[u8]>::len));
    }

    /// Answers HTTP call `token` with `:status` and `body`, to the context that made the call.
    pub fn answer_http(&mut self, token: u32, status: &str, body: &[u8]) {
        let Some(call) = self.host.http_calls().into_iter().find(|c| c.token == token) else {
            panic!("no HTTP call {token}");
        };
        self.host.set_http_response(&[(":status", status)], Some(body));
        self.http_response(call.context_id, token, body.len());
    }
}

/// A key service as the tests' filters reach it: cluster `keyd`, token `tgd_test`, a 200 ms
/// timeout, a 1 s feed poll interval.
pub fn key_service() -> tollgate_core::config::KeyService {
    tollgate_core::config::KeyService {
        cluster: "keyd".to_owned(),
        token: tollgate_core::secret::Secret::new("tgd_test"),
        timeout: Duration::from_millis(200),
        poll_interval: Duration::from_secs(1),
    }
}

/// The mock answers only what Envoy 1.40 answers: a filter (or a test) that reads another path is
/// a bug that would pass here and fail in Envoy, so it fails here too.
#[allow(clippy::panic)]
fn assert_readable(path: &[&str]) {
    if !attributes::is_readable(path) {
        panic!("Envoy 1.40 provides no property {path:?} (see tollgate_host::attributes)");
    }
}

fn slice_of(body: &[u8], start: usize, size: usize) -> Option<Vec<u8>> {
    let end = start.saturating_add(size).min(body.len());
    body.get(start..end).map(<[u8]>::to_vec)
}

/// Replaces `start..start + size` as the proxy does; a range past the end is refused.
fn splice(body: &mut Vec<u8>, start: usize, size: usize, data: &[u8]) -> bool {
    let Some(end) = start.checked_add(size).filter(|e| *e <= body.len()) else {
        return false;
    };
    body.splice(start..end, data.iter().copied());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_rejects_a_stale_token_and_workers_share_data() {
        let a = MockHost::new();
        let b = MockHost::sharing_with(&a);
        a.shared_set("k", b"1", None).unwrap();
        let (v, cas) = b.shared_get("k");
        assert_eq!(v.as_deref(), Some(&b"1"[..]));
        a.shared_set("k", b"2", cas).unwrap();
        assert_eq!(b.shared_set("k", b"3", cas), Err(SharedError::CasMismatch));
        assert_eq!(b.shared_get("k").0.as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn request_state_is_per_context() {
        let h = MockHost::new();
        h.with_header(1, "x-a", "one");
        h.enter(2);
        assert_eq!(h.request_header("x-a"), None);
        h.enter(1);
        assert_eq!(h.request_header("X-A").as_deref(), Some("one"));
        h.destroy(1);
        assert!(!h.set_effective_context(1));
    }

    #[test]
    fn headers_behave_as_envoys_header_map() {
        let h = MockHost::new();
        h.with_header(1, "X-A", "one");
        h.with_header_line(1, "x-a", "two");
        h.with_header_bytes(1, "x-b", b"\xff\xfe");
        h.enter(1);
        // A lookup answers the first line only; the pairs keep every line, in order.
        assert_eq!(h.request_header_bytes("x-a").as_deref(), Some(&b"one"[..]));
        let lines: Vec<_> = h.request_headers().into_iter().filter(|(n, _)| n == "x-a").collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(h.request_header("x-b").as_deref(), Some("\u{fffd}\u{fffd}"));
        assert_eq!(h.request_header_bytes("x-b").as_deref(), Some(&b"\xff\xfe"[..]));
        // Setting replaces every line; adding appends one.
        assert!(h.set_request_header("x-a", Some(b"three")));
        assert_eq!(h.header_lines(1, "x-a"), vec![b"three".to_vec()]);
        assert!(h.add_request_header("x-a", b"four"));
        assert_eq!(h.header_lines(1, "x-a").len(), 2);
        // A value that cannot be sent is refused and leaves no older value behind.
        assert!(!h.set_request_header("x-a", Some(b"evil\r\nx-b: 1")));
        assert!(h.header_lines(1, "x-a").is_empty());
        assert!(!h.add_request_header("x-c", b"nul\0"));
        assert!(h.add_request_header("x-c", b"tab\tand obs-text \xe9"));
    }

    #[test]
    #[should_panic(expected = "provides no property")]
    fn a_property_envoy_does_not_provide_fails_the_test() {
        let h = MockHost::new();
        let _ = h.property(&["route_name"]);
    }

    #[test]
    fn properties_envoy_provides_and_filter_state() {
        let h = MockHost::new();
        h.with_property(attributes::ROUTE_NAME, b"admin");
        assert_eq!(h.property(attributes::ROUTE_NAME).as_deref(), Some(&b"admin"[..]));
        assert!(h.set_property(&["tollgate.consumer_id"], b"alice"));
        assert!(!h.set_property(attributes::ROUTE_NAME, b"other"), "Envoy's attributes are read-only");
        assert_eq!(h.property(&["tollgate.consumer_id"]).as_deref(), Some(&b"alice"[..]));
    }

    crate::stats! {
        enum TestStat {
            A => "a",
            B => "b",
        }
    }

    #[test]
    fn counters_count() {
        let h = MockHost::new();
        let c = crate::stats::Counters::<TestStat>::define(&*h, "p");
        c.inc(&*h, TestStat::A);
        c.inc(&*h, TestStat::A);
        assert_eq!(h.counter("p.a_total"), 2);
        assert_eq!(h.counter("p.b_total"), 0);
        assert_eq!(crate::stats::Counters::<TestStat>::names(), ["a_total", "b_total"]);
    }

    #[test]
    fn gauges_hold_the_last_value_and_histograms_every_value() {
        let h = MockHost::new();
        let g = crate::stats::Gauge::define(&*h, "p.lag");
        let hist = crate::stats::Histogram::define(&*h, "p.ms");
        assert_eq!(h.gauge("p.lag"), Some(0));
        g.set(&*h, 7);
        g.set(&*h, 3);
        hist.record(&*h, 5);
        hist.record(&*h, 9);
        assert_eq!(h.gauge("p.lag"), Some(3));
        assert_eq!(h.histogram("p.ms"), Some(vec![5, 9]));
        assert_eq!(h.histogram("p.lag"), None, "a gauge is not a histogram");
    }

    /// A filter that answers every request with its configuration's first byte as the status,
    /// counts its ticks and what its root context's calls answered, and lets a request wait for a
    /// gRPC call of its own.
    struct Echo;

    #[derive(Default)]
    struct EchoWorker {
        status: u32,
        ticks: Cell<u32>,
        answers: RefCell<Vec<(u32, usize)>>,
    }

    struct EchoHttp<H> {
        host: Rc<H>,
        worker: Rc<EchoWorker>,
    }

    impl<H: Host> Context for EchoHttp<H> {
        fn on_grpc_call_response(&mut self, token: u32, status: u32, _size: usize) {
            self.worker.answers.borrow_mut().push((token, status as usize));
            self.host.resume_request();
        }
    }

    impl<H: Host> HttpContext for EchoHttp<H> {
        fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
            if self.host.request_header("x-wait").is_some() {
                let _ = self.host.grpc_call("c", "s", "m", &[], b"", Duration::from_secs(1));
                return Action::Pause;
            }
            self.host.send_response(self.worker.status, &[], b"");
            Action::Pause
        }
    }

    impl Filter for Echo {
        type Worker = EchoWorker;
        type Http<H: Host + 'static> = EchoHttp<H>;

        fn configure<H: Host>(_host: &H, config: &[u8]) -> Result<EchoWorker, String> {
            match config.first() {
                Some(b) if b.is_ascii_digit() => {
                    Ok(EchoWorker { status: 200 + u32::from(b - b'0'), ..Default::default() })
                }
                _ => Err("`status`: not a digit".into()),
            }
        }

        fn tick_period(_worker: &EchoWorker) -> Option<Duration> {
            Some(Duration::from_secs(1))
        }

        fn tick<H: Host>(host: &H, _root_id: u32, worker: &EchoWorker) {
            worker.ticks.set(worker.ticks.get() + 1);
            let _ = host.http_call("c", &[], None, Duration::from_secs(1));
        }

        fn http_response<H: Host>(_host: &H, root_id: u32, worker: &EchoWorker, token: u32, size: usize) {
            worker.answers.borrow_mut().push((token + root_id * 100, size));
        }

        fn http_context<H: Host + 'static>(host: Rc<H>, worker: Rc<EchoWorker>, _id: u32) -> EchoHttp<H> {
            EchoHttp { host, worker }
        }
    }

    #[test]
    fn the_harness_drives_a_filter_through_the_generic_root() {
        let mut refused = Harness::<Echo>::on(MockHost::new());
        assert!(!refused.configure("x"));
        assert!(refused.host.logs().iter().any(|(l, m)| *l == LogLevel::Critical && m.contains("`status`")));
        assert!(refused.worker().is_none());

        let mut h = Harness::<Echo>::new("4");
        assert_eq!(h.host.tick_period(), Some(Duration::from_secs(1)));
        let id = h.request(&[(":path", "/")]);
        assert_eq!(h.request_headers(id, true), Action::Pause);
        assert_eq!(h.host.reply(id).map(|r| r.status), Some(204));

        h.tick();
        let call = h.host.http_calls().last().cloned().unwrap();
        assert_eq!(call.context_id, ROOT_ID);
        h.answer_http(call.token, "200", b"abc");
        let waiting = h.request(&[("x-wait", "1")]);
        assert_eq!(h.request_headers(waiting, true), Action::Pause);
        let call = h.host.calls().last().cloned().unwrap();
        assert_eq!(call.context_id, waiting);
        h.answer_grpc(call.token, 14, None, Some("down"));
        assert_eq!(h.host.resumed(waiting), 1);
        let worker = h.worker().unwrap();
        assert_eq!(worker.ticks.get(), 1);
        assert_eq!(*worker.answers.borrow(), [(1 + ROOT_ID * 100, 3), (2, 14)]);
        assert!(h.done(waiting));
        assert!(!h.host.set_effective_context(waiting), "the proxy deleted the context");
    }
}
