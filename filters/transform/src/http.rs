//! The per-request context: match the rules once, edit the heads, buffer a JSON body only when
//! a matched rule changes it.
//!
//! A buffered body is held in the filter, not in Envoy: each chunk is taken out of Envoy's
//! buffer as it arrives. Envoy counts what it holds against its buffer limit before the filter
//! sees a chunk, and answers 413 (or cuts a response off) when the limit is passed; holding the
//! body here keeps Envoy at one chunk, so a body that grows past `max_body_bytes` can still go
//! on unchanged, as configured. The end of a body is its last data, or its trailers when it has
//! some (HTTP/2, HTTP/1.1 with trailers enabled): the body is transformed there too.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use tollgate_core::error::Reply;
use tollgate_core::transform::{
    self as tf, BodyOutcome, BodyPlan, HeaderEdit, Matched, Refusal, Request, Side,
};
use tollgate_host::{Host, LogLevel, attributes};

use crate::worker::{Stat, Worker};

/// Whether a body is being buffered to be transformed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    /// Flows through untouched.
    Pass,
    /// Buffered until the end of the stream, then transformed: the body so far.
    Buffer(Vec<u8>),
    /// Flows through again; these bytes (the large chunk that crossed the cap) go out first, in
    /// front of the next data.
    Flush(Vec<u8>),
}

/// The filter never hands Envoy more than `max_body_bytes` plus this at once (the end of a body
/// aside, where it must): when a body crosses the cap, the held body and the crossing chunk go
/// out together if they fit, else the chunk (a burst on HTTP/1) goes out in front of the next
/// one. `max_body_bytes` plus this must stay under Envoy's buffer limit.
const MARGIN: usize = 64 * 1024;

pub struct TransformHttp<H: Host> {
    host: Rc<H>,
    worker: Rc<Worker>,
    /// The request as the client sent it, kept while matched rules still have work to do.
    request: Option<Request>,
    matched: Vec<Matched>,
    request_body: Body,
    response_body: Body,
}

impl<H: Host> TransformHttp<H> {
    pub fn new(host: Rc<H>, worker: Rc<Worker>) -> Self {
        Self {
            host,
            worker,
            request: None,
            matched: Vec::new(),
            request_body: Body::Pass,
            response_body: Body::Pass,
        }
    }

    fn route_name(&self) -> Option<String> {
        self.host.property(attributes::ROUTE_NAME).map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    fn on_request_headers(&mut self, end_of_stream: bool) -> Action {
        let host_rc = Rc::clone(&self.host);
        let host = &*host_rc;
        let worker = Rc::clone(&self.worker);
        let config = &worker.config;
        if config.rules.is_empty() {
            return Action::Continue;
        }
        let mut req = Request::from_headers(host.request_headers());
        if config.matches_route_name() {
            req.route_name = self.route_name();
        }
        let matched = match config.matching(&req) {
            Ok(matched) => matched,
            Err(refused) => {
                host.log(LogLevel::Info, &format!("transform: path refused ({})", refused.reason()));
                return self.refuse(&req, Refusal::BadPath);
            }
        };
        if matched.is_empty() {
            return Action::Continue;
        }
        if req.route_name.is_none() && config.reads_route_name(&matched) {
            req.route_name = self.route_name();
        }
        for path in config.properties(&matched) {
            let segments: Vec<&str> = path.iter().map(String::as_str).collect();
            if let Some(value) = host.property(&segments) {
                req.properties.insert(path, value);
            }
        }
        worker.counters.add(host, Stat::RulesApplied, matched.len() as u64);

        let change = tf::request_head(config, &req, &matched);
        self.count_errors(&change.errors);
        if let Some(refusal) = change.refuse {
            return self.refuse(&req, refusal);
        }
        for edit in &change.edits {
            let done = match edit {
                HeaderEdit::Set(n, v) => host.set_request_header(n, Some(v)),
                HeaderEdit::Add(n, v) => host.add_request_header(n, v),
                HeaderEdit::Remove(n) => host.set_request_header(n, None),
            };
            self.count_refused_edit(done, edit);
        }

        let mut buffering = false;
        if config.wants_request_body(&matched) && !end_of_stream {
            let text = |name: &str| req.header_text(name).map(|v| v.into_owned());
            let plan = tf::body_plan(
                text("content-type").as_deref(),
                text("content-encoding").as_deref(),
                text("content-length").as_deref(),
                config.max_body_bytes,
            );
            match plan {
                // The length the headers announce cannot stay: the body is framed by chunks,
                // whatever its final size. The headers wait for the body.
                BodyPlan::Buffer => {
                    self.request_body = Body::Buffer(Vec::new());
                    host.set_request_header("content-length", None);
                    buffering = true;
                }
                BodyPlan::NotJson => worker.counters.inc(host, Stat::BodySkippedNotJson),
                BodyPlan::TooLarge => {
                    worker.counters.inc(host, Stat::BodySkippedTooLarge);
                    if let Some(refusal) = tf::oversize(config, Side::Request) {
                        return self.refuse(&req, refusal);
                    }
                }
            }
        }
        if config.has_response_ops(&matched) || buffering {
            self.request = Some(req);
            self.matched = matched;
        }
        Action::Continue
    }

    fn body_state(&mut self, side: Side) -> &mut Body {
        match side {
            Side::Request => &mut self.request_body,
            Side::Response => &mut self.response_body,
        }
    }

    fn body(&self, side: Side, size: usize) -> Vec<u8> {
        match side {
            Side::Request => self.host.request_body(0, size),
            Side::Response => self.host.response_body(0, size),
        }
        .unwrap_or_default()
    }

    /// Replaces the `size` bytes Envoy holds with `body`.
    fn set_body(&self, side: Side, size: usize, body: &[u8]) -> bool {
        match side {
            Side::Request => self.host.set_request_body(0, size, body),
            Side::Response => self.host.set_response_body(0, size, body),
        }
    }

    fn on_body(&mut self, side: Side, body_size: usize, end_of_stream: bool) -> Action {
        match std::mem::replace(self.body_state(side), Body::Pass) {
            Body::Pass => Action::Continue,
            Body::Flush(pending) => {
                if self.set_body(side, 0, &pending) {
                    Action::Continue
                } else {
                    self.lost_bytes(side, "the proxy refused a held chunk back")
                }
            }
            Body::Buffer(mut held) => {
                let worker = Rc::clone(&self.worker);
                let chunk = self.body(side, body_size);
                if held.len() + chunk.len() > worker.config.max_body_bytes {
                    worker.counters.inc(&*self.host, Stat::BodySkippedTooLarge);
                    if let Some(refusal) = tf::oversize(&worker.config, side) {
                        return self.refuse_current(refusal);
                    }
                    // Unchanged, in order: what was held, then this chunk (now, or in front of
                    // the next one when both would be more than Envoy should hold at once).
                    if end_of_stream || held.len() + chunk.len() <= worker.config.max_body_bytes + MARGIN {
                        held.extend_from_slice(&chunk);
                    } else {
                        *self.body_state(side) = Body::Flush(chunk);
                    }
                    return if self.set_body(side, body_size, &held) {
                        Action::Continue
                    } else {
                        self.lost_bytes(side, "the proxy refused the held body back")
                    };
                }
                let prefix = held.len();
                held.extend_from_slice(&chunk);
                if !end_of_stream {
                    // Envoy keeps nothing; the body waits here.
                    if !self.set_body(side, body_size, &[]) {
                        return self.lost_bytes(side, "the proxy refused to give up a chunk");
                    }
                    *self.body_state(side) = Body::Buffer(held);
                    return Action::Pause;
                }
                self.finish_body(side, body_size, held, prefix)
            }
        }
    }

    /// The body arrived whole: `body`, of which the filter held the first `prefix` bytes and
    /// Envoy holds the other `held_by_envoy`. Transform it and hand it back.
    fn finish_body(&mut self, side: Side, held_by_envoy: usize, body: Vec<u8>, prefix: usize) -> Action {
        let host = Rc::clone(&self.host);
        let host = &*host;
        let worker = Rc::clone(&self.worker);
        let config = &worker.config;
        let change = match self.request.as_ref() {
            Some(req) => match side {
                Side::Request => tf::request_body(config, req, &self.matched, &body),
                Side::Response => tf::response_body(config, req, &self.matched, &body),
            },
            None => tf::BodyChange { outcome: BodyOutcome::Unchanged, errors: Vec::new() },
        };
        self.count_errors(&change.errors);
        let out = match change.outcome {
            BodyOutcome::Changed(new) => {
                worker.counters.inc(host, Stat::BodyTransformed);
                Some(new)
            }
            BodyOutcome::Unchanged => None,
            BodyOutcome::Invalid => {
                worker.counters.inc(host, Stat::InvalidJson);
                if let Some(refusal) = tf::invalid_json(config, side) {
                    return self.refuse_current(refusal);
                }
                None
            }
        };
        let out = match out {
            Some(new) => new,
            // Nothing to hand back when Envoy holds it all already (and there may be no buffer
            // to write to: trailers straight after the headers).
            None if prefix == 0 => return Action::Continue,
            None => body,
        };
        if self.set_body(side, held_by_envoy, &out) {
            Action::Continue
        } else {
            self.lost_bytes(side, "the proxy refused the transformed body")
        }
    }

    /// Bytes of the body cannot go out: the message must not go on without them.
    fn lost_bytes(&mut self, side: Side, why: &str) -> Action {
        self.worker.counters.inc(&*self.host, Stat::Errors);
        let which = if side == Side::Request { "request" } else { "response" };
        self.host.log(LogLevel::Warn, &format!("transform: {which} refused: {why}"));
        self.refuse_current(Refusal::Failed)
    }

    fn on_trailers(&mut self, side: Side) -> Action {
        match std::mem::replace(self.body_state(side), Body::Pass) {
            Body::Pass => Action::Continue,
            // Envoy holds nothing of the body (every chunk was taken out).
            Body::Buffer(held) => {
                let prefix = held.len();
                self.finish_body(side, 0, held, prefix)
            }
            // The body was passing again and a chunk was still to go out in front of the next
            // data: trailers came instead, and Envoy lets nothing be added to a body that is
            // not buffered. The message must not go on without those bytes.
            Body::Flush(_) => {
                self.lost_bytes(side, "a chunk over the cap was still to go out when trailers came")
            }
        }
    }

    fn on_response_headers(&mut self, end_of_stream: bool) -> Action {
        let host_rc = Rc::clone(&self.host);
        let host = &*host_rc;
        let worker = Rc::clone(&self.worker);
        let config = &worker.config;
        let Some(req) = self.request.as_ref() else {
            return Action::Continue;
        };
        if !config.has_response_ops(&self.matched) {
            return Action::Continue;
        }
        let headers = host.response_headers();
        let find = |name: &str| {
            headers.iter().find(|(n, _)| n == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let status = find(":status").and_then(|s| s.parse::<u32>().ok());
        let (content_type, encoding, length) =
            (find("content-type"), find("content-encoding"), find("content-length"));
        let change = tf::response_head(config, req, &self.matched, status, headers);
        self.count_errors(&change.errors);
        for edit in &change.edits {
            let done = match edit {
                HeaderEdit::Set(n, v) => host.set_response_header(n, Some(v)),
                HeaderEdit::Add(n, v) => host.add_response_header(n, v),
                HeaderEdit::Remove(n) => host.set_response_header(n, None),
            };
            self.count_refused_edit(done, edit);
        }
        if !config.wants_response_body(&self.matched) || end_of_stream {
            return Action::Continue;
        }
        match tf::body_plan(
            content_type.as_deref(),
            encoding.as_deref(),
            length.as_deref(),
            config.max_body_bytes,
        ) {
            BodyPlan::Buffer => {
                self.response_body = Body::Buffer(Vec::new());
                host.set_response_header("content-length", None);
                Action::Continue
            }
            BodyPlan::NotJson => {
                worker.counters.inc(host, Stat::BodySkippedNotJson);
                Action::Continue
            }
            BodyPlan::TooLarge => {
                worker.counters.inc(host, Stat::BodySkippedTooLarge);
                match tf::oversize(config, Side::Response) {
                    Some(refusal) => self.refuse_current(refusal),
                    None => Action::Continue,
                }
            }
        }
    }

    /// Refuses the request or response being handled.
    fn refuse_current(&mut self, refusal: Refusal) -> Action {
        let req = self.request.take().unwrap_or_default();
        self.refuse(&req, refusal)
    }

    /// Sends the uniform JSON error; the request is forgotten, so the reply is not transformed.
    fn refuse(&mut self, req: &Request, refusal: Refusal) -> Action {
        let host = &*self.host;
        self.request = None;
        self.matched.clear();
        self.request_body = Body::Pass;
        self.response_body = Body::Pass;
        self.worker.counters.inc(host, Stat::Rejected);
        let request_id = req.header_text("x-request-id").unwrap_or_default();
        let reply = Reply::error(refusal.status(), refusal.error(), refusal.message(), &request_id);
        host.log(
            LogLevel::Debug,
            &format!("transform: refused with {}: {}", refusal.status(), refusal.message()),
        );
        tollgate_host::send_reply(host, &reply);
        Action::Pause
    }

    fn count_errors(&self, errors: &[String]) {
        for e in errors {
            self.worker.counters.inc(&*self.host, Stat::Errors);
            self.host.log(LogLevel::Debug, &format!("transform: rule {e}"));
        }
    }

    /// A header the proxy refused to set (a value it cannot carry) counts as an error.
    fn count_refused_edit(&self, done: bool, edit: &HeaderEdit) {
        if !done {
            let name = match edit {
                HeaderEdit::Set(n, _) | HeaderEdit::Add(n, _) | HeaderEdit::Remove(n) => n,
            };
            self.worker.counters.inc(&*self.host, Stat::Errors);
            self.host.log(
                LogLevel::Debug,
                &format!("transform: the proxy refused header `{}`", tf::shown(name.as_bytes())),
            );
        }
    }
}

impl<H: Host> Context for TransformHttp<H> {}

impl<H: Host> HttpContext for TransformHttp<H> {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.on_request_headers(end_of_stream)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.on_body(Side::Request, body_size, end_of_stream)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.on_trailers(Side::Request)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.on_response_headers(end_of_stream)
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.on_body(Side::Response, body_size, end_of_stream)
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.on_trailers(Side::Response)
    }
}
