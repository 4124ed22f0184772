//! The per-request context: check the signature's parameters, get the key's material,
//! verify, hold and digest the body, remember the signature, publish the identity.
//!
//! A request is remembered for replay protection only once all of it has been verified (the
//! signature, and the body against `Content-Digest` when the content is bound): a refused copy
//! never uses up the genuine request's nonce.
//!
//! Envoy and the body. While the headers are paused (waiting for the key) Envoy buffers the
//! body and the trailers and delivers nothing to the filter. Once the headers go on, the body
//! comes to `on_http_request_body`; its last piece carries `end_of_stream` unless trailers
//! follow, in which case the stream ends in `on_http_request_trailers`, where the body is
//! complete. One case needs care: when the headers are resumed after the key arrived and Envoy
//! already holds the trailers, it hands the buffered body to the filter (without
//! `end_of_stream`) and then the trailers, within the same resume; if the filter holds the
//! body there and lets the trailers go, Envoy releases the trailers but not the held body,
//! which never reaches the upstream (`ActiveStreamFilterBase::commonContinue` in Envoy's filter
//! manager). So in the first body callback after a resume, a body that already matches its
//! digest is let through at once; any byte that follows it is refused.

use std::cell::RefCell;
use std::rc::Rc;

use prost::Message;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use tollgate_core::error::{denial_reply, log_field};
use tollgate_core::identity;
use tollgate_core::route::{self, RequestFacts};
use tollgate_core::signature::base::Message as SignedMessage;
use tollgate_core::signature::cache::{MaterialEntry, MaterialState};
use tollgate_core::signature::replay::{self, ReplayEntry};
use tollgate_core::signature::verify::{self, Candidate, Deny, Policy};
use tollgate_host::{Host, LogLevel, attributes};
use tollgate_proto::v1;

use crate::reply::read_reply;
use crate::store;
use crate::worker::{SERVICE, Stat, Worker};

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the key's material and/or the end of the body.
    Waiting,
    /// The whole body was let through once it matched its digest, before the end of the
    /// stream: any further byte is refused.
    Released,
    /// Decided (allowed, or a local reply was sent).
    Done,
}

pub struct SigningHttp<H: Host> {
    host: Rc<H>,
    worker: Rc<RefCell<Worker>>,
    context_id: u32,
    phase: Phase,
    request_id: String,
    message: SignedMessage,
    candidate: Option<Candidate>,
    policy: Option<Policy>,
    /// The key's material once known.
    material: Option<MaterialEntry>,
    /// The GetSigningKey call in progress.
    call: Option<u32>,
    /// The feed epoch when that call was made: its answer is cached as of then, so an answer
    /// asked for before a restored store was noticed is not trusted afterwards.
    call_epoch: u64,
    /// The request has a body bound by `Content-Digest`: it is held until complete and checked.
    hold_body: bool,
    /// The signature was verified and the headers let through; only the body check remains.
    accepted: bool,
    /// Bytes of body held so far (as Envoy last reported).
    body_len: usize,
    /// The headers were just resumed after a key lookup (see the module documentation).
    resumed: bool,
}

impl<H: Host> SigningHttp<H> {
    pub fn new(host: Rc<H>, worker: Rc<RefCell<Worker>>, context_id: u32) -> Self {
        Self {
            host,
            worker,
            context_id,
            phase: Phase::Waiting,
            request_id: String::new(),
            message: SignedMessage::default(),
            candidate: None,
            policy: None,
            material: None,
            call: None,
            call_epoch: 0,
            hold_body: false,
            accepted: false,
            body_len: 0,
            resumed: false,
        }
    }

    fn key_id(&self) -> String {
        self.candidate.as_ref().map_or_else(|| "-".to_owned(), |c| c.key_id.clone())
    }

    fn deny(&mut self, deny: Deny) -> Action {
        self.phase = Phase::Done;
        let key_id = self.key_id();
        // Counted against the key when the key service knows it (its material was found).
        if self.material.is_some() {
            self.count_usage(deny.reason());
        }
        let worker = self.worker.borrow();
        respond_denied(&*self.host, &worker, deny, &self.request_id, &key_id);
        Action::Pause
    }

    fn on_headers(&mut self, end_of_stream: bool) -> Action {
        let host = &*self.host;
        // Identity headers are ours to set: never let a client send them upstream.
        for name in identity::IDENTITY_HEADERS {
            host.set_request_header(name, None);
        }
        self.request_id = host.request_header("x-request-id").unwrap_or_default();
        let target = host.request_header(":path").unwrap_or_default();
        let method = host.request_header(":method").unwrap_or_default();
        let route_name = host.property(attributes::ROUTE_NAME).and_then(|b| String::from_utf8(b).ok());
        // Every field line, as bytes: several lines of a field are combined when read.
        let headers: Vec<(String, Vec<u8>)> =
            host.request_headers().into_iter().filter(|(n, _)| !n.starts_with(':')).collect();
        let worker = Rc::clone(&self.worker);
        let mut w = worker.borrow_mut();
        let now_s = (host.now_ms() / 1000) as i64;
        let declared_length =
            host.request_header("content-length").and_then(|v| v.trim().parse::<u64>().ok());
        if declared_length.is_some_and(|n| n > w.config.max_body_bytes) {
            drop(w);
            return self.deny(Deny::BodyTooLarge);
        }
        let has_body = !end_of_stream;
        // Rules see the normalised path: `//admin` and `/%61dmin` are `/admin` to them.
        let raw_path = route::split_path(&target).0;
        let rule_path = match route::normalize_path(raw_path) {
            Ok(p) => p,
            Err(_) if !w.config.routes_by_path() => raw_path.into(),
            Err(refused) => {
                host.log(LogLevel::Info, &format!("request-signing: path refused ({})", refused.reason()));
                drop(w);
                return self.deny(Deny::BadPath);
            }
        };
        let facts = RequestFacts { route_name: route_name.as_deref(), path: &rule_path, method: &method };
        let policy = w.config.policy_for(&facts).clone();
        self.message = SignedMessage {
            method,
            scheme: host.request_header(":scheme").unwrap_or_else(|| "http".to_owned()),
            authority: host.request_header(":authority").unwrap_or_default(),
            target,
            status: None,
            headers,
        };
        let candidate = match verify::select_in(&self.message, &policy, has_body, now_s) {
            Ok(c) => c,
            Err(deny) => {
                drop(w);
                return self.deny(deny);
            }
        };
        let key_id = candidate.key_id.clone();
        let bound = verify::binds_content(&self.message, &candidate);
        // No body: a bound content is the empty content, checked now (no lookup needed).
        let empty_check =
            if has_body { Ok(()) } else { verify::check_content(&self.message, &candidate, b"") };
        self.candidate = Some(candidate);
        if let Err(deny) = empty_check {
            drop(w);
            return self.deny(deny);
        }
        self.policy = Some(policy);
        self.hold_body = has_body && bound;
        if let Some(entry) = store::lookup(host, &mut w, &key_id) {
            w.counters.inc(host, Stat::CacheHit);
            self.material = Some(entry);
        } else {
            w.counters.inc(host, Stat::CacheMiss);
            self.call_epoch = w.feed.epoch(host);
            let message = v1::GetSigningKeyRequest { key_id: key_id.clone() }.encode_to_vec();
            let metadata = w.metadata();
            let metadata: Vec<(&str, &[u8])> = metadata.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            match host.grpc_call(
                &w.config.key_service.cluster,
                SERVICE,
                "GetSigningKey",
                &metadata,
                &message,
                w.config.key_service.timeout,
            ) {
                Ok(token) => self.call = Some(token),
                Err(_) => {
                    w.counters.inc(host, Stat::CalloutError);
                    host.log(
                        LogLevel::Error,
                        &format!("request-signing: cannot call cluster `{}`", w.config.key_service.cluster),
                    );
                    drop(w);
                    return self.deny(Deny::KeyServiceUnavailable);
                }
            }
        }
        drop(w);
        self.try_decide()
    }

    /// The body arrives only once the headers went on (a paused stream gets no body), i.e.
    /// after the signature was verified. A bound body is held here until it is complete and its
    /// `Content-Digest` checks out; a refusal then resets the upstream request.
    fn on_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        match self.phase {
            Phase::Done => return Action::Continue,
            // The whole signed body already went on: anything more changes it.
            Phase::Released if size > 0 => return self.deny(Deny::DigestMismatch),
            Phase::Released => {
                if end_of_stream {
                    self.phase = Phase::Done;
                }
                return Action::Continue;
            }
            Phase::Waiting => {}
        }
        if !self.accepted {
            return self.early();
        }
        if !self.hold_body {
            return Action::Continue;
        }
        let max = self.worker.borrow().config.max_body_bytes;
        if size as u64 > max {
            return self.deny(Deny::BodyTooLarge);
        }
        self.body_len = size;
        let resumed = std::mem::take(&mut self.resumed);
        if end_of_stream {
            return self.finish_body();
        }
        // Right after a resume the trailers may already wait behind this body (see the module
        // documentation): a body that matches its digest is complete and goes on now.
        if resumed && let Some(body) = self.held_body() {
            let complete = self
                .candidate
                .as_ref()
                .is_some_and(|c| verify::check_content(&self.message, c, &body).is_ok());
            if complete {
                return match self.remember() {
                    Ok(()) => {
                        self.phase = Phase::Released;
                        self.allow();
                        Action::Continue
                    }
                    Err(deny) => self.deny(deny),
                };
            }
        }
        Action::Pause // keep buffering
    }

    /// Trailers end the stream: the body held so far is all of it.
    fn on_trailers(&mut self) -> Action {
        if self.phase != Phase::Waiting {
            return Action::Continue;
        }
        if !self.accepted {
            return self.early();
        }
        if !self.hold_body {
            return Action::Continue;
        }
        self.resumed = false;
        self.finish_body()
    }

    /// Body or trailers while the headers are still paused. Envoy holds them for a paused
    /// request and gives them to no filter; a host that hands them over (Envoy with the Wasm
    /// option `allow_on_headers_stop_iteration`) would let them, or the paused headers, go on
    /// unchecked on `Continue`. So they are held, and a bound body, which could not be checked
    /// once passed on, is refused.
    fn early(&mut self) -> Action {
        if !self.hold_body {
            return Action::Pause;
        }
        self.host.log(
            LogLevel::Warn,
            "request-signing: the body arrived before the headers were let through \
             (allow_on_headers_stop_iteration?); it cannot be checked",
        );
        self.deny(Deny::DigestMismatch)
    }

    /// The body held so far; `None` when the host does not hand over all of it.
    fn held_body(&self) -> Option<Vec<u8>> {
        if self.body_len == 0 {
            return Some(Vec::new());
        }
        self.host.request_body(0, self.body_len).filter(|b| b.len() == self.body_len)
    }

    /// The body is complete: check it against its digest, then remember the request.
    fn finish_body(&mut self) -> Action {
        let Some(candidate) = self.candidate.clone() else {
            return self.deny(Deny::MalformedSignature);
        };
        let checked = match self.held_body() {
            Some(body) => verify::check_content(&self.message, &candidate, &body),
            None => Err(Deny::DigestMismatch), // fail closed: what was not read was not checked
        };
        match checked.and_then(|()| self.remember()) {
            Ok(()) => {
                self.phase = Phase::Done;
                self.allow();
                Action::Continue
            }
            Err(deny) => self.deny(deny),
        }
    }

    fn allow(&self) {
        self.worker.borrow().counters.inc(&*self.host, Stat::Allowed);
        self.count_usage("allowed");
    }

    /// Counts this request against its key, for the key service's usage.
    fn count_usage(&self, outcome: &'static str) {
        let (Some(entry), Ok(worker)) = (&self.material, self.worker.try_borrow()) else {
            return;
        };
        if let Some(usage) = &worker.usage {
            usage.count(&entry.key_id, self.host.now_ms(), outcome);
        }
    }

    /// Decides once the material is there; otherwise keeps waiting.
    fn try_decide(&mut self) -> Action {
        if self.phase != Phase::Waiting {
            return Action::Pause;
        }
        let Some(entry) = self.material.clone() else {
            return Action::Pause;
        };
        let Some(candidate) = self.candidate.clone() else {
            return Action::Pause;
        };
        match self.check(&candidate, &entry) {
            Ok(()) => {
                self.accepted = true;
                set_identity(&*self.host, &entry);
                if !self.hold_body {
                    self.phase = Phase::Done;
                    self.allow();
                }
                Action::Continue
            }
            Err(deny) => self.deny(deny),
        }
    }

    /// Verifies the signature. A request with nothing more to check is remembered now; one
    /// whose body is still to come is only looked up (a replay is refused before its headers
    /// go on) and remembered once its body checks out.
    fn check(&self, candidate: &Candidate, entry: &MaterialEntry) -> Result<(), Deny> {
        let key = match entry.usable_at((self.host.now_ms() / 1000) as i64) {
            MaterialState::Valid => entry.material.as_ref().ok_or(Deny::UnknownKey)?,
            MaterialState::NotFound => return Err(Deny::UnknownKey),
            MaterialState::Revoked => return Err(Deny::RevokedKey),
            MaterialState::Expired => return Err(Deny::ExpiredKey),
        };
        verify::verify(candidate, &self.message, key)?;
        if !self.hold_body {
            return self.remember();
        }
        let w = self.worker.borrow();
        if store::seen(&*self.host, &w.keys, w.config.replay_slots, &replay_id(candidate)) {
            return Err(Deny::Replayed);
        }
        Ok(())
    }

    /// Remembers the request's signature (or nonce) for the replay window.
    fn remember(&self) -> Result<(), Deny> {
        let Some(candidate) = self.candidate.as_ref() else {
            return Err(Deny::MalformedSignature);
        };
        let host = &*self.host;
        let now_ms = host.now_ms();
        let w = self.worker.borrow();
        let window_s = self.policy.as_ref().map_or(0, Policy::replay_window_s);
        let until_s = candidate.created.saturating_add(window_s).max(0) as u64;
        let entry = ReplayEntry {
            id: replay_id(candidate),
            until_ms: until_s.saturating_mul(1000),
            writer: w.seed ^ (u64::from(self.context_id) << 20) ^ now_ms.rotate_left(40),
        };
        store::remember(host, &w.keys, w.config.replay_slots, &entry)
    }

    fn on_call_done(&mut self, token: u32, status: u32, size: usize) {
        if self.call != Some(token) {
            return;
        }
        self.call = None;
        let key_id = self.key_id();
        let entry = {
            let mut w = self.worker.borrow_mut();
            let entry = read_reply(&*self.host, &w, &key_id, status, size);
            if let Some(entry) = &entry {
                // Cached as of the call: an answer asked for before a restored store was
                // noticed is not trusted afterwards.
                store::store_from(&*self.host, &mut w, entry, self.call_epoch);
            }
            entry
        };
        match entry {
            Some(entry) => {
                self.material = Some(entry);
                if self.try_decide() == Action::Continue {
                    self.resumed = self.phase == Phase::Waiting;
                    self.host.resume_request();
                }
            }
            None => {
                if self.phase != Phase::Done {
                    self.deny(Deny::KeyServiceUnavailable);
                }
            }
        }
    }
}

fn replay_id(candidate: &Candidate) -> [u8; 16] {
    replay::replay_id(&candidate.key_id, candidate.nonce.as_deref(), &candidate.signature)
}

fn set_identity<H: Host + ?Sized>(host: &H, entry: &MaterialEntry) {
    host.set_request_header(identity::CONSUMER_HEADER, Some(entry.consumer_id.as_bytes()));
    host.set_request_header(identity::KEY_ID_HEADER, Some(entry.key_id.as_bytes()));
    host.set_property(&[identity::PROP_CONSUMER], entry.consumer_id.as_bytes());
    host.set_property(&[identity::PROP_KEY_ID], entry.key_id.as_bytes());
}

fn respond_denied<H: Host + ?Sized>(host: &H, w: &Worker, deny: Deny, request_id: &str, key_id: &str) {
    w.counters.denied(host, deny);
    host.log(
        LogLevel::Info,
        &format!(
            "request-signing: denied reason={} keyid={} request_id={}",
            deny.reason(),
            log_field(key_id),
            log_field(request_id)
        ),
    );
    let challenge = || format!("Signature realm=\"{}\", accept=\"hmac-sha256 ed25519\"", w.config.realm);
    tollgate_host::send_reply(host, &denial_reply(deny, request_id, challenge));
}

impl<H: Host> Context for SigningHttp<H> {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.on_call_done(token_id, status_code, response_size);
    }
}

impl<H: Host> HttpContext for SigningHttp<H> {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.on_headers(end_of_stream)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.on_body(body_size, end_of_stream)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.on_trailers()
    }
}
