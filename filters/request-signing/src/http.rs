//! The per-request context: check the signature's parameters, get the key's material,
//! buffer and digest the body, verify, remember the signature, publish the identity.

use std::rc::Rc;

use prost::Message;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use tollgate_core::error::ErrorBody;
use tollgate_core::key_auth as ka;
use tollgate_core::route::{self, RequestFacts};
use tollgate_core::signature::base::Message as SignedMessage;
use tollgate_core::signature::cache::{MaterialEntry, MaterialState};
use tollgate_core::signature::digest;
use tollgate_core::signature::replay::{self, ReplayEntry};
use tollgate_core::signature::verify::{self, Candidate, Deny, KeyMaterial, Policy};
use tollgate_core::signature::{CONTENT_DIGEST, SIGNATURE, SIGNATURE_INPUT};
use tollgate_host::{Host, LogLevel, attributes, grpc_status};
use tollgate_proto::v1;

use crate::root::{SERVICE, Shared, Worker, denied_name};
use crate::store;

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the key's material and/or the end of the body.
    Waiting,
    /// Decided (allowed, or a local reply was sent).
    Done,
}

pub struct SigningHttp<H: Host> {
    host: Rc<H>,
    worker: Shared,
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
    /// The request has a body: its digest is checked once it has arrived.
    body_expected: bool,
    /// The signature was accepted; only the body check remains.
    accepted: bool,
}

impl<H: Host> SigningHttp<H> {
    pub fn new(host: Rc<H>, worker: Shared, context_id: u32) -> Self {
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
            body_expected: false,
            accepted: false,
        }
    }

    fn deny(&mut self, deny: Deny, key_id: &str) {
        self.phase = Phase::Done;
        let worker = self.worker.borrow();
        respond_denied(&*self.host, &worker, deny, &self.request_id, key_id);
    }

    fn on_headers(&mut self, end_of_stream: bool) -> Action {
        let host = &*self.host;
        // Identity headers are ours to set: never let a client send them upstream.
        for name in ka::IDENTITY_HEADERS {
            host.set_request_header(name, None);
        }
        self.request_id = host.request_header("x-request-id").unwrap_or_default();
        let target = host.request_header(":path").unwrap_or_default();
        let method = host.request_header(":method").unwrap_or_default();
        let route_name = host.property(attributes::ROUTE_NAME).and_then(|b| String::from_utf8(b).ok());
        let headers: Vec<(String, String)> = host
            .request_headers()
            .into_iter()
            .filter(|(n, _)| !n.starts_with(':'))
            .map(|(n, v)| (n, tollgate_host::lossy(v)))
            .collect();
        let worker = Rc::clone(&self.worker);
        let w = worker.borrow();
        let now_s = (host.now_ms() / 1000) as i64;
        let declared_length =
            host.request_header("content-length").and_then(|v| v.trim().parse::<u64>().ok());
        if declared_length.is_some_and(|n| n > w.config.max_body_bytes) {
            drop(w);
            self.deny(Deny::BodyTooLarge, "-");
            return Action::Pause;
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
                self.deny(Deny::BadPath, "-");
                return Action::Pause;
            }
        };
        let facts = RequestFacts { route_name: route_name.as_deref(), path: &rule_path, method: &method };
        let policy = w.config.policy_for(&facts).clone();
        let input = host.request_header(SIGNATURE_INPUT);
        let signature = host.request_header(SIGNATURE);
        let candidate = match verify::select(input.as_deref(), signature.as_deref(), &policy, has_body, now_s)
        {
            Ok(c) => c,
            Err(deny) => {
                drop(w);
                self.deny(deny, "-");
                return Action::Pause;
            }
        };
        self.message = SignedMessage {
            method,
            scheme: host.request_header(":scheme").unwrap_or_else(|| "http".to_owned()),
            authority: host.request_header(":authority").unwrap_or_default(),
            target,
            status: None,
            headers,
        };
        let key_id = candidate.key_id.clone();
        self.candidate = Some(candidate);
        self.policy = Some(policy);
        self.body_expected = has_body;
        if let Some(entry) = store::lookup(host, &w.keys, &w.config, &key_id) {
            w.counters.inc(host, "cache_hit");
            self.material = Some(entry);
        } else {
            w.counters.inc(host, "cache_miss");
            let message = v1::GetSigningKeyRequest { key_id: key_id.clone() }.encode_to_vec();
            let metadata = w.metadata();
            let metadata: Vec<(&str, &[u8])> = metadata.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            match host.grpc_call(
                &w.config.cluster,
                SERVICE,
                "GetSigningKey",
                &metadata,
                &message,
                w.config.timeout,
            ) {
                Ok(token) => self.call = Some(token),
                Err(_) => {
                    w.counters.inc(host, "callout_error");
                    host.log(
                        LogLevel::Error,
                        &format!("request-signing: cannot call cluster `{}`", w.config.cluster),
                    );
                    drop(w);
                    self.deny(Deny::KeyServiceUnavailable, &key_id);
                    return Action::Pause;
                }
            }
        }
        drop(w);
        self.try_decide()
    }

    /// The body is delivered only after the headers were let through (a paused stream gets
    /// no body), i.e. after the signature was accepted; it is held back here until it is
    /// complete and its `Content-Digest` checks out. A refusal then resets the upstream request.
    fn on_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !self.accepted || self.phase == Phase::Done || !self.body_expected {
            return Action::Continue;
        }
        let key_id = self.candidate.as_ref().map(|c| c.key_id.clone()).unwrap_or_default();
        let max = self.worker.borrow().config.max_body_bytes;
        if size as u64 > max {
            self.deny(Deny::BodyTooLarge, &key_id);
            return Action::Pause;
        }
        if !end_of_stream {
            return Action::Pause; // keep buffering
        }
        let body = if size == 0 { Vec::new() } else { self.host.request_body(0, size).unwrap_or_default() };
        let needs_check = !self.message.header_values(CONTENT_DIGEST).is_empty()
            || self.candidate.as_ref().is_some_and(Candidate::covers_digest);
        if needs_check {
            let header = self.message.header_values(CONTENT_DIGEST).join(", ");
            if digest::verify_content_digest(&header, &body).is_err() {
                self.deny(Deny::DigestMismatch, &key_id);
                return Action::Pause;
            }
        }
        self.phase = Phase::Done;
        Action::Continue
    }

    /// Decides once the material is there; otherwise keeps waiting.
    fn try_decide(&mut self) -> Action {
        if self.phase == Phase::Done {
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
                if !self.body_expected {
                    self.phase = Phase::Done;
                }
                let host = &*self.host;
                set_identity(host, &entry);
                self.worker.borrow().counters.inc(host, "allowed");
                Action::Continue
            }
            Err(deny) => {
                self.deny(deny, &candidate.key_id);
                Action::Pause
            }
        }
    }

    fn check(&self, candidate: &Candidate, entry: &MaterialEntry) -> Result<(), Deny> {
        let host = &*self.host;
        let now_ms = host.now_ms();
        let key = match entry.usable_at((now_ms / 1000) as i64) {
            MaterialState::Valid => entry.material.as_ref().ok_or(Deny::UnknownKey)?,
            MaterialState::NotFound => return Err(Deny::UnknownKey),
            MaterialState::Revoked => return Err(Deny::RevokedKey),
            MaterialState::Expired => return Err(Deny::ExpiredKey),
        };
        verify::verify(candidate, &self.message, key)?;
        let w = self.worker.borrow();
        let window_s = self.policy.as_ref().map_or(0, Policy::replay_window_s);
        let until_s = candidate.created.saturating_add(window_s).max(0) as u64;
        let entry = ReplayEntry {
            id: replay::replay_id(&candidate.key_id, candidate.nonce.as_deref(), &candidate.signature),
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
        let key_id = self.candidate.as_ref().map(|c| c.key_id.clone()).unwrap_or_default();
        let entry = {
            let w = self.worker.borrow();
            read_reply(&*self.host, &w, &key_id, status, size)
        };
        match entry {
            Some(entry) => {
                self.material = Some(entry);
                if self.try_decide() == Action::Continue {
                    self.host.resume_request();
                }
            }
            None => {
                if self.phase != Phase::Done {
                    self.deny(Deny::KeyServiceUnavailable, &key_id);
                }
            }
        }
    }
}

/// Decodes a GetSigningKey reply into a cache entry (and caches it); `None` on failure.
fn read_reply<H: Host + ?Sized>(
    host: &H,
    w: &Worker,
    key_id: &str,
    status: u32,
    size: usize,
) -> Option<MaterialEntry> {
    if status != grpc_status::OK {
        w.counters.inc(host, "callout_error");
        let detail = host.grpc_status_message().unwrap_or_default();
        let hint = if status == grpc_status::UNAUTHENTICATED { " (check key_service.token)" } else { "" };
        host.log(
            LogLevel::Warn,
            &format!("request-signing: GetSigningKey failed with gRPC status {status}{hint}: {detail}"),
        );
        return None;
    }
    let body = host.grpc_response_body(size).unwrap_or_default();
    let entry = v1::GetSigningKeyResponse::decode(body.as_slice())
        .ok()
        .and_then(|r| entry_from_reply(key_id, host.now_ms(), &r));
    match entry {
        Some(entry) => {
            store::store(host, &w.keys, &w.config, &entry);
            Some(entry)
        }
        None => {
            w.counters.inc(host, "callout_error");
            host.log(LogLevel::Warn, "request-signing: GetSigningKey reply could not be understood");
            None
        }
    }
}

/// Turns a GetSigningKey reply into a cache entry; `None` for a reply that makes no sense.
pub fn entry_from_reply(key_id: &str, now_ms: u64, r: &v1::GetSigningKeyResponse) -> Option<MaterialEntry> {
    if r.key_id != key_id {
        return None;
    }
    let state = match v1::VerifyResult::try_from(r.result).ok()? {
        v1::VerifyResult::Valid => MaterialState::Valid,
        v1::VerifyResult::NotFound => MaterialState::NotFound,
        v1::VerifyResult::Revoked => MaterialState::Revoked,
        v1::VerifyResult::Expired => MaterialState::Expired,
        v1::VerifyResult::Unspecified => return None,
    };
    let material = if state == MaterialState::Valid {
        Some(match v1::SigningAlgorithm::try_from(r.algorithm).ok()? {
            v1::SigningAlgorithm::HmacSha256 if !r.hmac_secret.is_empty() => {
                KeyMaterial::Hmac(r.hmac_secret.clone())
            }
            v1::SigningAlgorithm::Ed25519 => {
                KeyMaterial::Ed25519(r.ed25519_public_key.as_slice().try_into().ok()?)
            }
            _ => return None,
        })
    } else {
        None
    };
    if state == MaterialState::Valid && r.consumer_id.is_empty() {
        return None;
    }
    Some(MaterialEntry {
        key_id: key_id.to_owned(),
        state,
        material,
        consumer_id: r.consumer_id.clone(),
        expires_at_s: r.expires_at,
        fetched_at_ms: now_ms,
        feed_seq: r.feed_seq,
    })
}

fn set_identity<H: Host + ?Sized>(host: &H, entry: &MaterialEntry) {
    host.set_request_header(ka::CONSUMER_HEADER, Some(entry.consumer_id.as_bytes()));
    host.set_request_header(ka::KEY_ID_HEADER, Some(entry.key_id.as_bytes()));
    host.set_property(&[ka::PROP_CONSUMER], entry.consumer_id.as_bytes());
    host.set_property(&[ka::PROP_KEY_ID], entry.key_id.as_bytes());
}

fn respond_denied<H: Host + ?Sized>(host: &H, w: &Worker, deny: Deny, request_id: &str, key_id: &str) {
    w.counters.inc(host, denied_name(deny));
    host.log(
        LogLevel::Info,
        &format!("request-signing: denied reason={} keyid={key_id} request_id={request_id}", deny.reason()),
    );
    let body = ErrorBody { error: deny.code(), message: deny.message(), request_id }.to_json();
    let challenge = format!("Signature realm=\"{}\", accept=\"hmac-sha256 ed25519\"", w.config.realm);
    let mut headers = vec![("content-type", "application/json")];
    if deny.status() == 401 {
        headers.push(("www-authenticate", challenge.as_str()));
    }
    if deny.status() == 503 {
        headers.push(("retry-after", "1"));
    }
    host.send_response(deny.status(), &headers, &body);
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
}
