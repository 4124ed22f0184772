//! The host the stages of a pipeline talk to: the proxy's host, with what one HTTP context
//! shared by several filters needs in between.
//!
//! - **One header read.** The first stage that reads every request header reads them from the
//!   proxy; later stages of the same callback read the same list from here, kept up to date with
//!   every header a stage sets, adds or removes. A single-header read before that goes to the
//!   proxy (it is cheaper than reading all). The list is dropped at the start of every callback
//!   and whenever the calls start acting for another request, so it is never older than what
//!   the proxy holds.
//! - **Identity read once.** Filter state a stage writes (`tollgate.*`) is remembered for the
//!   request, and a later stage's read of it is answered from here; a read of filter state
//!   nobody in the pipeline wrote goes to the proxy once. Everything else Envoy provides (route
//!   name, addresses) is always read from the proxy: it can change within a request.
//! - **Resumes are the pipeline's.** A stage that resumes a request it paused means "this stage
//!   is done": the pipeline then runs the stages after it, and resumes the request in the proxy
//!   only when the last one let it through. So `resume_request` is recorded here, not sent.
//! - **Calls and replies are noted** so the pipeline knows which stage an answer belongs to and
//!   that a request got its reply (no later stage runs then).
//! - **Each stage's configuration and tick**: while a stage is configured it reads its own part
//!   of the pipeline's configuration, and the tick period it asks for is recorded for the
//!   pipeline to honour.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use tollgate_host::{CallRefused, Host, LogLevel, SharedError, attributes};

type Headers = Vec<(String, Vec<u8>)>;

/// Filter state of one request: each name, and its value (`None`: the proxy has none).
type State = Vec<(String, Option<Vec<u8>>)>;

/// See the module documentation.
pub struct StageHost<H: Host> {
    inner: Rc<H>,
    /// The context the calls act on.
    effective: Cell<u32>,
    /// Every request header of the request named, as the proxy holds them now.
    headers: RefCell<Option<(u32, Headers)>>,
    /// Filter state by request: what stages wrote, and what was read of it.
    state: RefCell<HashMap<u32, State>>,
    /// The configuration of the stage being configured.
    configuration: RefCell<Option<Vec<u8>>>,
    /// The tick period the stage being configured asked for.
    tick: Cell<Option<Duration>>,
    /// Calls started since the pipeline last looked.
    calls: RefCell<Vec<u32>>,
    /// The stage the pipeline is running.
    stage: Cell<usize>,
    /// Requests a stage resumed, and which stage, in order.
    resumed: RefCell<Vec<(u32, usize)>>,
    /// Requests that got a local reply.
    replied: RefCell<Vec<u32>>,
}

impl<H: Host> StageHost<H> {
    pub fn new(inner: Rc<H>) -> Self {
        Self {
            inner,
            effective: Cell::new(0),
            headers: RefCell::default(),
            state: RefCell::default(),
            configuration: RefCell::default(),
            tick: Cell::new(None),
            calls: RefCell::default(),
            stage: Cell::new(0),
            resumed: RefCell::default(),
            replied: RefCell::default(),
        }
    }

    /// The proxy's host.
    pub fn inner(&self) -> &H {
        &self.inner
    }

    /// The proxy delivers a callback to `context_id`: the calls act for it, and nothing read
    /// before is trusted.
    pub fn enter(&self, context_id: u32) {
        self.effective.set(context_id);
        self.headers.replace(None);
    }

    /// The context the calls act on.
    pub fn effective(&self) -> u32 {
        self.effective.get()
    }

    /// Makes the calls act for `context_id` in the proxy too; false when it is gone.
    pub fn act_for(&self, context_id: u32) -> bool {
        if self.effective.get() == context_id {
            return true;
        }
        self.set_effective_context(context_id)
    }

    /// A stage is about to be configured with `config`.
    pub fn configuring(&self, config: Option<Vec<u8>>) {
        self.configuration.replace(config);
        self.tick.set(None);
    }

    /// The tick period the stage just configured asked for.
    pub fn asked_tick(&self) -> Option<Duration> {
        self.tick.get()
    }

    /// The calls started since the last look.
    pub fn take_calls(&self) -> Vec<u32> {
        std::mem::take(&mut self.calls.borrow_mut())
    }

    /// The pipeline runs stage `stage` next (of the root context or of a request).
    pub fn running(&self, stage: usize) {
        self.stage.set(stage);
    }

    /// The next request a stage resumed, and which stage, if any.
    pub fn next_resumed(&self) -> Option<(u32, usize)> {
        let mut resumed = self.resumed.borrow_mut();
        if resumed.is_empty() { None } else { Some(resumed.remove(0)) }
    }

    /// Whether stage `stage` resumed `context_id` (and forgets it).
    pub fn take_resumed(&self, context_id: u32, stage: usize) -> bool {
        let mut resumed = self.resumed.borrow_mut();
        let before = resumed.len();
        resumed.retain(|&entry| entry != (context_id, stage));
        resumed.len() != before
    }

    /// Whether `context_id` got a local reply (and forgets it).
    pub fn take_replied(&self, context_id: u32) -> bool {
        let mut replied = self.replied.borrow_mut();
        let before = replied.len();
        replied.retain(|&id| id != context_id);
        replied.len() != before
    }

    /// The requests that got a local reply.
    pub fn take_all_replied(&self) -> Vec<u32> {
        std::mem::take(&mut self.replied.borrow_mut())
    }

    /// The request is over: forget what was kept for it.
    pub fn forget(&self, context_id: u32) {
        self.state.borrow_mut().remove(&context_id);
        self.resumed.borrow_mut().retain(|&(id, _)| id != context_id);
        self.replied.borrow_mut().retain(|&id| id != context_id);
        let mut headers = self.headers.borrow_mut();
        if headers.as_ref().is_some_and(|(id, _)| *id == context_id) {
            *headers = None;
        }
    }

    /// Applies `edit` to the kept header list of the current request, if there is one.
    fn edit_headers(&self, edit: impl FnOnce(&mut Headers)) {
        let effective = self.effective.get();
        let mut headers = self.headers.borrow_mut();
        match headers.as_mut() {
            Some((id, list)) if *id == effective => edit(list),
            _ => *headers = None,
        }
    }

    fn kept_state(&self, key: &str) -> Option<Option<Vec<u8>>> {
        let state = self.state.borrow();
        let entries = state.get(&self.effective.get())?;
        entries.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    fn keep_state(&self, key: String, value: Option<Vec<u8>>) {
        let mut state = self.state.borrow_mut();
        let entries = state.entry(self.effective.get()).or_default();
        match entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => entries.push((key, value)),
        }
    }
}

/// Filter state is one path segment named `tollgate.*` ([`attributes::is_writable`]).
fn state_key(path: &[&str]) -> Option<String> {
    match path {
        [name] if attributes::is_writable(path) => Some((*name).to_owned()),
        _ => None,
    }
}

impl<H: Host> Host for StageHost<H> {
    fn now_ms(&self) -> u64 {
        self.inner.now_ms()
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.inner.log(level, message);
    }

    fn request_header_bytes(&self, name: &str) -> Option<Vec<u8>> {
        {
            let headers = self.headers.borrow();
            if let Some((id, list)) = headers.as_ref()
                && *id == self.effective.get()
            {
                // The proxy's lookup ignores case and answers the first field line.
                return list.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
            }
        }
        self.inner.request_header_bytes(name)
    }

    fn request_headers(&self) -> Vec<(String, Vec<u8>)> {
        let effective = self.effective.get();
        if let Some((id, list)) = self.headers.borrow().as_ref()
            && *id == effective
        {
            return list.clone();
        }
        let list = self.inner.request_headers();
        self.headers.replace(Some((effective, list.clone())));
        list
    }

    fn set_request_header(&self, name: &str, value: Option<&[u8]>) -> bool {
        let done = self.inner.set_request_header(name, value);
        self.edit_headers(|list| {
            list.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            if let (true, Some(value)) = (done, value) {
                list.push((name.to_ascii_lowercase(), value.to_vec()));
            }
        });
        done
    }

    fn add_request_header(&self, name: &str, value: &[u8]) -> bool {
        let done = self.inner.add_request_header(name, value);
        if done {
            self.edit_headers(|list| list.push((name.to_ascii_lowercase(), value.to_vec())));
        }
        done
    }

    fn response_header_bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.inner.response_header_bytes(name)
    }

    fn response_headers(&self) -> Vec<(String, Vec<u8>)> {
        self.inner.response_headers()
    }

    fn set_response_header(&self, name: &str, value: Option<&[u8]>) -> bool {
        self.inner.set_response_header(name, value)
    }

    fn add_response_header(&self, name: &str, value: &[u8]) -> bool {
        self.inner.add_response_header(name, value)
    }

    fn request_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        self.inner.request_body(start, size)
    }

    fn set_request_body(&self, start: usize, size: usize, body: &[u8]) -> bool {
        self.inner.set_request_body(start, size, body)
    }

    fn response_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        self.inner.response_body(start, size)
    }

    fn set_response_body(&self, start: usize, size: usize, body: &[u8]) -> bool {
        self.inner.set_response_body(start, size, body)
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        let Some(key) = state_key(path) else {
            return self.inner.property(path);
        };
        if let Some(kept) = self.kept_state(&key) {
            return kept;
        }
        let value = self.inner.property(path);
        self.keep_state(key, value.clone());
        value
    }

    fn set_property(&self, path: &[&str], value: &[u8]) -> bool {
        let done = self.inner.set_property(path, value);
        if let Some(key) = state_key(path) {
            // What the proxy refused is read from it again, to answer what it holds.
            if done {
                self.keep_state(key, Some(value.to_vec()));
            } else if let Some(entries) = self.state.borrow_mut().get_mut(&self.effective.get()) {
                entries.retain(|(k, _)| *k != key);
            }
        }
        done
    }

    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.inner.shared_get(key)
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        self.inner.shared_set(key, value, cas)
    }

    fn grpc_call(
        &self,
        cluster: &str,
        service: &str,
        method: &str,
        metadata: &[(&str, &[u8])],
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, CallRefused> {
        let token = self.inner.grpc_call(cluster, service, method, metadata, message, timeout)?;
        self.calls.borrow_mut().push(token);
        Ok(token)
    }

    fn grpc_response_body(&self, size: usize) -> Option<Vec<u8>> {
        self.inner.grpc_response_body(size)
    }

    fn grpc_status_message(&self) -> Option<String> {
        self.inner.grpc_status_message()
    }

    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, CallRefused> {
        let token = self.inner.http_call(cluster, headers, body, timeout)?;
        self.calls.borrow_mut().push(token);
        Ok(token)
    }

    fn http_call_response_header(&self, name: &str) -> Option<String> {
        self.inner.http_call_response_header(name)
    }

    fn http_call_response_headers(&self) -> Vec<(String, Vec<u8>)> {
        self.inner.http_call_response_headers()
    }

    fn http_call_response_body(&self, size: usize) -> Option<Vec<u8>> {
        self.inner.http_call_response_body(size)
    }

    fn send_response(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> bool {
        let sent = self.inner.send_response(status, headers, body);
        self.replied.borrow_mut().push(self.effective.get());
        sent
    }

    fn resume_request(&self) -> bool {
        self.resumed.borrow_mut().push((self.effective.get(), self.stage.get()));
        true
    }

    fn set_effective_context(&self, context_id: u32) -> bool {
        let done = self.inner.set_effective_context(context_id);
        if done {
            self.enter(context_id);
        }
        done
    }

    fn set_tick_period(&self, period: Duration) {
        self.tick.set(Some(period));
    }

    fn plugin_configuration(&self) -> Option<Vec<u8>> {
        match self.configuration.borrow().as_ref() {
            Some(config) => Some(config.clone()),
            None => self.inner.plugin_configuration(),
        }
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        self.inner.define_counter(name)
    }

    fn increment_counter(&self, id: u32, by: i64) {
        self.inner.increment_counter(id, by);
    }

    fn define_gauge(&self, name: &str) -> Option<u32> {
        self.inner.define_gauge(name)
    }

    fn define_histogram(&self, name: &str) -> Option<u32> {
        self.inner.define_histogram(name)
    }

    fn record_metric(&self, id: u32, value: u64) {
        self.inner.record_metric(id, value);
    }
}
