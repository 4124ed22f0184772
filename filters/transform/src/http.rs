//! The per-request context: match the rules once, edit the heads, buffer a JSON body only when
//! a matched rule changes it.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use tollgate_core::error::ErrorBody;
use tollgate_core::transform::{self as tf, BodyOutcome, BodyPlan, HeaderEdit, Matched, Request};
use tollgate_host::{Host, LogLevel, attributes};

use crate::root::Filter;

/// Whether a body is being buffered to be transformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Flows through untouched.
    Pass,
    /// Buffered until the end of the stream, then transformed.
    Buffer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

pub struct TransformHttp<H: Host> {
    host: Rc<H>,
    filter: Rc<Filter>,
    /// The request as the client sent it, kept while matched rules still have work to do.
    request: Option<Request>,
    matched: Vec<Matched>,
    request_body: Body,
    response_body: Body,
}

impl<H: Host> TransformHttp<H> {
    pub fn new(host: Rc<H>, filter: Rc<Filter>) -> Self {
        Self {
            host,
            filter,
            request: None,
            matched: Vec::new(),
            request_body: Body::Pass,
            response_body: Body::Pass,
        }
    }

    fn on_request_headers(&mut self, end_of_stream: bool) -> Action {
        let host = &*self.host;
        let filter = Rc::clone(&self.filter);
        let config = &filter.config;
        if config.rules.is_empty() {
            return Action::Continue;
        }
        let mut req = Request::from_headers(lossy_pairs(host.request_headers()));
        if config.uses_route_name() {
            req.route_name =
                host.property(attributes::ROUTE_NAME).map(|b| String::from_utf8_lossy(&b).into_owned());
        }
        let matched = config.matching(&req);
        if matched.is_empty() {
            return Action::Continue;
        }
        for path in config.properties(&matched) {
            let segments: Vec<&str> = path.iter().map(String::as_str).collect();
            if let Some(value) = host.property(&segments) {
                req.properties.insert(path, String::from_utf8_lossy(&value).into_owned());
            }
        }
        for _ in &matched {
            filter.counters.inc(host, "rules_applied");
        }

        let change = tf::request_head(config, &req, &matched);
        self.count_errors(&change.errors);
        for edit in &change.edits {
            let _ = match edit {
                HeaderEdit::Set(n, v) => host.set_request_header(n, Some(v.as_bytes())),
                HeaderEdit::Add(n, v) => host.add_request_header(n, v.as_bytes()),
                HeaderEdit::Remove(n) => host.set_request_header(n, None),
            };
        }

        if config.wants_request_body(&matched) && !end_of_stream {
            let plan = tf::body_plan(
                req.header("content-type"),
                req.header("content-encoding"),
                req.header("content-length"),
                config.max_body_bytes,
            );
            match plan {
                // The headers go on now (a proxy may not let a filter hold them while it reads
                // the body), so the length they announce cannot be fixed later: drop it, and the
                // body is framed by chunks whatever its final size.
                BodyPlan::Buffer => {
                    self.request_body = Body::Buffer;
                    host.set_request_header("content-length", None);
                }
                BodyPlan::NotJson => filter.counters.inc(host, "body_skipped_not_json"),
                BodyPlan::TooLarge => {
                    filter.counters.inc(host, "body_skipped_too_large");
                    if let Some(status) = tf::oversize_status(config) {
                        self.refuse(&req, status);
                        return Action::Pause;
                    }
                }
            }
        }
        if config.has_response_ops(&matched) || self.request_body == Body::Buffer {
            self.request = Some(req);
            self.matched = matched;
        }
        Action::Continue
    }

    fn on_body(&mut self, side: Side, body_size: usize, end_of_stream: bool) -> Action {
        let state = match side {
            Side::Request => self.request_body,
            Side::Response => self.response_body,
        };
        if state == Body::Pass {
            return Action::Continue;
        }
        let host_rc = Rc::clone(&self.host);
        let host = &*host_rc;
        let filter = Rc::clone(&self.filter);
        let config = &filter.config;
        let Some(req) = self.request.take() else {
            return Action::Continue;
        };
        if body_size > config.max_body_bytes {
            self.stop_buffering(side);
            filter.counters.inc(host, "body_skipped_too_large");
            if side == Side::Request
                && let Some(status) = tf::oversize_status(config)
            {
                self.refuse(&req, status);
                return Action::Pause;
            }
            self.request = Some(req);
            return Action::Continue;
        }
        if !end_of_stream {
            self.request = Some(req);
            return Action::Pause;
        }
        self.stop_buffering(side);
        let body = match side {
            Side::Request => host.request_body(0, body_size),
            Side::Response => host.response_body(0, body_size),
        }
        .unwrap_or_default();
        let change = match side {
            Side::Request => tf::request_body(config, &req, &self.matched, &body),
            Side::Response => tf::response_body(config, &req, &self.matched, &body),
        };
        self.count_errors(&change.errors);
        let action = match change.outcome {
            BodyOutcome::Changed(new) => self.replace_body(side, body_size, &new),
            BodyOutcome::Unchanged => Action::Continue,
            BodyOutcome::Invalid => {
                filter.counters.inc(host, "invalid_json");
                let refuse_with = if side == Side::Request { tf::invalid_json_status(config) } else { None };
                match refuse_with {
                    Some(status) => {
                        // The request is forgotten: the local reply is not transformed.
                        self.refuse(&req, status);
                        return Action::Pause;
                    }
                    None => Action::Continue,
                }
            }
        };
        self.request = Some(req);
        action
    }

    fn stop_buffering(&mut self, side: Side) {
        match side {
            Side::Request => self.request_body = Body::Pass,
            Side::Response => self.response_body = Body::Pass,
        }
    }

    /// Swaps the buffered body (its `content-length` was dropped when buffering began).
    fn replace_body(&self, side: Side, old_size: usize, new: &[u8]) -> Action {
        let host = &*self.host;
        let replaced = match side {
            Side::Request => host.set_request_body(0, old_size, new),
            Side::Response => host.set_response_body(0, old_size, new),
        };
        if replaced {
            self.filter.counters.inc(host, "body_transformed");
        } else {
            // The original body is still in place, with its own length: nothing is truncated.
            self.filter.counters.inc(host, "errors");
            host.log(LogLevel::Warn, "transform: the proxy refused the new body; sent the original");
        }
        Action::Continue
    }

    fn on_response_headers(&mut self, end_of_stream: bool) -> Action {
        let Some(req) = self.request.as_ref() else {
            return Action::Continue;
        };
        let host = &*self.host;
        let filter = Rc::clone(&self.filter);
        let config = &filter.config;
        if !config.has_response_ops(&self.matched) {
            return Action::Continue;
        }
        let headers = lossy_pairs(host.response_headers());
        let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let status = find(":status").and_then(|s| s.parse::<u32>().ok());
        let (content_type, encoding, length) =
            (find("content-type"), find("content-encoding"), find("content-length"));
        let change = tf::response_head(config, req, &self.matched, status, headers);
        self.count_errors(&change.errors);
        for edit in &change.edits {
            let _ = match edit {
                HeaderEdit::Set(n, v) => host.set_response_header(n, Some(v.as_bytes())),
                HeaderEdit::Add(n, v) => host.add_response_header(n, v.as_bytes()),
                HeaderEdit::Remove(n) => host.set_response_header(n, None),
            };
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
                self.response_body = Body::Buffer;
                host.set_response_header("content-length", None);
                Action::Continue
            }
            BodyPlan::NotJson => {
                filter.counters.inc(host, "body_skipped_not_json");
                Action::Continue
            }
            BodyPlan::TooLarge => {
                filter.counters.inc(host, "body_skipped_too_large");
                Action::Continue
            }
        }
    }

    /// Sends the uniform JSON error.
    fn refuse(&self, req: &Request, status: u32) {
        let host = &*self.host;
        self.filter.counters.inc(host, "rejected");
        let (error, message) = match status {
            413 => ("payload_too_large", "the request body is too large to transform"),
            _ => ("bad_request", "the request body is not valid JSON"),
        };
        let body = ErrorBody { error, message, request_id: req.header("x-request-id").unwrap_or_default() };
        host.log(LogLevel::Debug, &format!("transform: refused with {status}: {message}"));
        host.send_response(status, &[("content-type", "application/json")], &body.to_json());
    }

    fn count_errors(&self, errors: &[String]) {
        for e in errors {
            self.filter.counters.inc(&*self.host, "errors");
            self.host.log(LogLevel::Debug, &format!("transform: rule {e}"));
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

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.on_response_headers(end_of_stream)
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.on_body(Side::Response, body_size, end_of_stream)
    }
}

/// Header pairs as text, bytes that are not UTF-8 replaced.
fn lossy_pairs(pairs: Vec<(String, Vec<u8>)>) -> Vec<(String, String)> {
    pairs.into_iter().map(|(n, v)| (n, tollgate_host::lossy(v))).collect()
}
