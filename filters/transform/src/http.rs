//! The per-request context: match the rules once, edit the heads, buffer a JSON body only when
//! a matched rule changes it.
//!
//! A buffered body is held in the filter, not in Envoy: each chunk is taken out of Envoy's
//! buffer as it arrives, so that a body that grows past `max_body_bytes` can still go on
//! unchanged, as configured. How the stream waits meanwhile depends on how the body can end
//! ([`Hold`]):
//!
//! - A body that cannot end with trailers — chunked HTTP/1.1 that announces none — keeps
//!   flowing: each chunk goes on empty, and the body goes out with its last data. Envoy buffers
//!   none of it, so neither its buffer limit nor the size of its reads matter. They would: over
//!   HTTP/1.1 a chunk is everything Envoy read from the connection at once, in reads of up to
//!   128 KiB until it holds at least the connection's buffer limit, so a chunk can be nearly
//!   128 KiB past that limit, which is also the stream's.
//! - A body that may end with trailers — HTTP/2, HTTP/3, or HTTP/1.1 announcing them with a
//!   `trailer` field — waits with the stream paused: Envoy lets nothing be added to a body that
//!   went on, so only a paused body can still go out in front of its trailers. While the stream
//!   is paused, Envoy adds each next chunk to its buffer before the filter sees it, and answers
//!   413 (or cuts a response off) when that chunk alone passes its buffer limit. An HTTP/2
//!   chunk is one DATA frame (16 KiB), far under any limit, unless flow control had stopped
//!   Envoy reading the stream: then what piled up meanwhile comes at once.
//!
//! The end of a body is its last data, or its trailers when it has some (HTTP/2, HTTP/1.1 with
//! trailers enabled): the body is transformed there too.

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
    Buffer(Vec<u8>, Hold),
    /// Flows through again; these bytes (the large chunk that crossed the cap) go out first, in
    /// front of the next data. Only after a [`Hold::Paused`] body.
    Flush(Vec<u8>),
}

/// How the stream waits while the filter holds a body (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Each chunk goes on empty and the body goes out with its last data; it cannot go out in
    /// front of trailers.
    Flowing,
    /// The stream is paused; Envoy adds each next chunk to its buffer before the filter sees it.
    Paused,
}

impl Hold {
    /// `http1`: the body comes in HTTP/1 framing, where a chunk is a whole read from the
    /// connection and trailers come only when announced; `trailer`: the head announces some.
    fn of(http1: bool, trailer: bool) -> Self {
        if http1 && !trailer { Hold::Flowing } else { Hold::Paused }
    }
}

/// A paused body never hands Envoy's buffer more than `max_body_bytes` plus this at once (the
/// end of a body aside, where it must): when it crosses the cap, the held body and the crossing
/// chunk go back together if they fit, else the chunk goes out in front of the next one.
/// `max_body_bytes` plus this must stay under Envoy's buffer limit.
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
                    let http1 =
                        host.property(attributes::REQUEST_PROTOCOL).is_some_and(|p| p.starts_with(b"HTTP/1"));
                    let hold = Hold::of(http1, req.header("trailer").is_some());
                    self.request_body = Body::Buffer(Vec::new(), hold);
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
            Body::Buffer(mut held, hold) => {
                let worker = Rc::clone(&self.worker);
                let max = worker.config.max_body_bytes;
                let chunk = self.body(side, body_size);
                if held.len() + chunk.len() > max {
                    worker.counters.inc(&*self.host, Stat::BodySkippedTooLarge);
                    if let Some(refusal) = tf::oversize(&worker.config, side) {
                        return self.refuse_current(refusal);
                    }
                    // Unchanged, in order: what was held, then this chunk. Flowing, both go on
                    // at once outside Envoy's buffer; paused, they go into it, so the chunk
                    // waits in front of the next one when both would be more than Envoy should
                    // hold at once.
                    let together =
                        hold == Hold::Flowing || end_of_stream || held.len() + chunk.len() <= max + MARGIN;
                    if together {
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
                    *self.body_state(side) = Body::Buffer(held, hold);
                    return match hold {
                        Hold::Flowing => Action::Continue,
                        Hold::Paused => Action::Pause,
                    };
                }
                self.finish_body(side, body_size, held, prefix)
            }
        }
    }

    /// The body arrived whole: `body`, of which the filter held the first `prefix` bytes and
    /// Envoy holds the other `held_by_envoy` (the last chunk). Transform it and hand it back.
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
            // Chunks went on empty: the held body can no longer go out in front of the trailers,
            // and the message must not go on without it. (HTTP/1.1 trailers the head did not
            // announce: Envoy passes them only with trailers enabled.)
            Body::Buffer(held, Hold::Flowing) if !held.is_empty() => {
                self.lost_bytes(side, "trailers came that the head did not announce (`trailer`)")
            }
            // Envoy holds nothing of the body (every chunk was taken out).
            Body::Buffer(held, _) => {
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
        // Envoy keeps `transfer-encoding` in the head of an HTTP/1.1 response (HTTP/2 and HTTP/3
        // have none): the body comes in chunks that are whole reads from the upstream.
        let hold = Hold::of(find("transfer-encoding").is_some(), find("trailer").is_some());
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
                self.response_body = Body::Buffer(Vec::new(), hold);
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
