//! The pipeline (`root_id: tollgate.pipeline`): several filters of the bundle run as stages of
//! one filter, in one HTTP context per request, for those who want the cheapest chain.
//!
//! ```json
//! {"stages": [
//!   {"filter": "key_auth",   "config": {...}},
//!   {"filter": "rate_limit", "config": {...}},
//!   {"filter": "transform",  "config": {...}}
//! ]}
//! ```
//!
//! Each stage is the filter itself, configured with its own `config` (the same document it takes
//! as a filter of its own), with its own stats, shared-data keys, caches and tick. The pipeline
//! runs the stages as Envoy runs a chain of filters: request headers through each stage in
//! order, each stage able to pause the request (a lookup) or answer it (a refusal), the next
//! stage running only once the one before let the request through; response headers through
//! every stage in reverse order. What it saves over a chain is Envoy's per-filter work (a
//! context and a call into the VM per filter per callback), the header reads of later stages
//! (one read serves them all, see [`StageHost`]) and their reads of the identity an earlier
//! stage published.
//!
//! Stages: `key_auth`, `jwt_auth`, `rate_limit` and `transform`; `transform` only last, because it
//! is the one stage that handles bodies and trailers (the others ignore them, as they do as
//! filters). `request_signing` is not a stage: its body handling depends on how Envoy pauses
//! and resumes a stream around it, so it stays a filter of its own in front of the pipeline.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use serde::Deserialize;
use tollgate_core::config::{ConfigError, parse_json};
use tollgate_host::{Filter, Host, LogLevel, Root};

use crate::stage_host::StageHost;

/// The most stages one pipeline runs.
pub const MAX_STAGES: usize = 8;

/// A filter that can be a stage, by the name the configuration gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    KeyAuth,
    JwtAuth,
    RateLimit,
    Transform,
}

/// The names of the stages, in [`Stage`]'s order.
pub const STAGES: [(&str, Stage); 4] = [
    ("key_auth", Stage::KeyAuth),
    ("jwt_auth", Stage::JwtAuth),
    ("rate_limit", Stage::RateLimit),
    ("transform", Stage::Transform),
];

impl Stage {
    fn of(name: &str) -> Option<Stage> {
        STAGES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
    }

    fn name(self) -> &'static str {
        STAGES.iter().find(|(_, s)| *s == self).map_or("?", |(n, _)| n)
    }

    /// Whether the stage handles bodies and trailers.
    fn handles_body(self) -> bool {
        self == Stage::Transform
    }

    fn root<H: Host + 'static>(self, host: Rc<StageHost<H>>, root_id: u32) -> Box<dyn StageRoot> {
        match self {
            Stage::KeyAuth => Box::new(Root::<tollgate_key_auth::KeyAuth, StageHost<H>>::new(host, root_id)),
            Stage::JwtAuth => Box::new(Root::<tollgate_jwt_auth::JwtAuth, StageHost<H>>::new(host, root_id)),
            Stage::RateLimit => {
                Box::new(Root::<tollgate_rate_limit::RateLimit, StageHost<H>>::new(host, root_id))
            }
            Stage::Transform => {
                Box::new(Root::<tollgate_transform::Transform, StageHost<H>>::new(host, root_id))
            }
        }
    }
}

/// The answer to a call, to hand to whoever made it.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    Grpc { token: u32, status: u32, size: usize },
    Http { token: u32, headers: usize, body_size: usize, trailers: usize },
}

/// What the pipeline asks of a stage's root context. (The pipeline's own traits, not the SDK's:
/// the SDK's, as trait objects, would bring in every host call they offer.)
pub trait StageRoot {
    fn configure(&mut self, size: usize) -> bool;
    fn tick(&mut self);
    fn answer(&mut self, answer: Answer);
    fn http_context(&self, context_id: u32) -> Option<Box<dyn StageContext>>;
}

impl<F: Filter, H: Host + 'static> StageRoot for Root<F, H> {
    fn configure(&mut self, size: usize) -> bool {
        RootContext::on_configure(self, size)
    }

    fn tick(&mut self) {
        RootContext::on_tick(self);
    }

    fn answer(&mut self, answer: Answer) {
        match answer {
            Answer::Grpc { token, status, size } => Context::on_grpc_call_response(self, token, status, size),
            Answer::Http { token, headers, body_size, trailers } => {
                Context::on_http_call_response(self, token, headers, body_size, trailers);
            }
        }
    }

    fn http_context(&self, context_id: u32) -> Option<Box<dyn StageContext>> {
        Some(Box::new(Root::http_context(self, context_id)?))
    }
}

/// What the pipeline asks of a stage's context of one request.
pub trait StageContext {
    fn request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action;
    fn request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action;
    fn request_trailers(&mut self, num_trailers: usize) -> Action;
    fn response_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action;
    fn response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action;
    fn response_trailers(&mut self, num_trailers: usize) -> Action;
    fn answer(&mut self, answer: Answer);
    fn log(&mut self);
    fn done(&mut self) -> bool;
}

impl<T: HttpContext> StageContext for T {
    fn request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.on_http_request_headers(num_headers, end_of_stream)
    }

    fn request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.on_http_request_body(body_size, end_of_stream)
    }

    fn request_trailers(&mut self, num_trailers: usize) -> Action {
        self.on_http_request_trailers(num_trailers)
    }

    fn response_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.on_http_response_headers(num_headers, end_of_stream)
    }

    fn response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.on_http_response_body(body_size, end_of_stream)
    }

    fn response_trailers(&mut self, num_trailers: usize) -> Action {
        self.on_http_response_trailers(num_trailers)
    }

    fn answer(&mut self, answer: Answer) {
        match answer {
            Answer::Grpc { token, status, size } => self.on_grpc_call_response(token, status, size),
            Answer::Http { token, headers, body_size, trailers } => {
                self.on_http_call_response(token, headers, body_size, trailers);
            }
        }
    }

    fn log(&mut self) {
        self.on_log();
    }

    fn done(&mut self) -> bool {
        self.on_done()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    stages: Vec<RawStage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    filter: String,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

/// The stages a configuration names, each with the configuration it gets; the error names the
/// field.
pub fn parse(json: &[u8]) -> Result<Vec<(Stage, Vec<u8>)>, ConfigError> {
    let raw: RawConfig = parse_json("pipeline", json)?;
    if raw.stages.is_empty() || raw.stages.len() > MAX_STAGES {
        return Err(ConfigError::new(
            "pipeline",
            "stages",
            format!("between 1 and {MAX_STAGES} stages, not {}", raw.stages.len()),
        ));
    }
    let last = raw.stages.len() - 1;
    let mut stages = Vec::with_capacity(raw.stages.len());
    for (i, stage) in raw.stages.iter().enumerate() {
        let field = format!("stages[{i}].filter");
        let Some(kind) = Stage::of(&stage.filter) else {
            let known: Vec<&str> = STAGES.iter().map(|(n, _)| *n).collect();
            let why = if stage.filter == "request_signing" {
                "request_signing is not a stage (it runs as a filter of its own, in front of the pipeline)"
                    .to_owned()
            } else {
                format!("unknown stage `{}`; stages are {}", stage.filter, known.join(", "))
            };
            return Err(ConfigError::new("pipeline", field, why));
        };
        if kind.handles_body() && i != last {
            return Err(ConfigError::new(
                "pipeline",
                field,
                format!("`{}` handles bodies and can only be the last stage", kind.name()),
            ));
        }
        let config = match &stage.config {
            Some(value) => serde_json::to_vec(value).unwrap_or_default(),
            None => b"{}".to_vec(),
        };
        stages.push((kind, config));
    }
    Ok(stages)
}

/// One stage's root context, and its tick.
struct StageSlot {
    root: Box<dyn StageRoot>,
    handles_body: bool,
    tick: Option<Duration>,
    next_tick_ms: u64,
}

/// Who a call's answer goes to: the root context's stage, or a request's stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Root(usize),
    Request(u32, usize),
}

/// What a pipeline's root context and its requests' contexts share.
struct Shared<H: Host> {
    host: Rc<StageHost<H>>,
    root_id: u32,
    /// The requests in flight.
    flows: RefCell<HashMap<u32, Rc<RefCell<Flow>>>>,
    /// The calls in flight, whoever's they are. The proxy hands an answer to the context that
    /// was dispatching when the call started, which for a request a stage finished from another
    /// request's callback (or the root context's) is not that request's.
    calls: RefCell<HashMap<u32, Caller>>,
}

impl<H: Host> Shared<H> {
    /// Notes who made the calls just started.
    fn note_calls(&self, caller: Caller) {
        for token in self.host.take_calls() {
            self.calls.borrow_mut().insert(token, caller);
        }
    }

    /// After a callback: requests that got a reply run no more stages, and requests a stage
    /// resumed run the stages after it; the calls then act for `back_to` again.
    fn settle(&self, back_to: u32) {
        for id in self.host.take_all_replied() {
            let flow = self.flows.borrow().get(&id).cloned();
            if let Some(flow) = flow {
                flow.borrow_mut().stopped = true;
            }
        }
        while let Some((id, stage)) = self.host.next_resumed() {
            let flow = self.flows.borrow().get(&id).cloned();
            let Some(flow) = flow else {
                continue;
            };
            if !self.host.act_for(id) {
                continue; // that request is gone
            }
            let mut flow = flow.borrow_mut();
            if flow.resume(self, stage) == Action::Continue {
                self.host.inner().resume_request();
            }
        }
        self.host.act_for(back_to);
    }

    /// Delivers a call's answer to the stage that made the call.
    fn answer(&self, answer: Answer) -> Option<Caller> {
        let token = match answer {
            Answer::Grpc { token, .. } | Answer::Http { token, .. } => token,
        };
        let caller = self.calls.borrow_mut().remove(&token)?;
        if let Caller::Request(id, stage) = caller {
            let flow = self.flows.borrow().get(&id).cloned()?;
            if !self.host.act_for(id) {
                return None;
            }
            let mut flow = flow.borrow_mut();
            if let Some(context) = flow.stages.get_mut(stage) {
                self.host.running(stage);
                context.answer(answer);
            }
            flow.collect(self, stage);
        }
        Some(caller)
    }
}

/// One request going through the stages.
struct Flow {
    id: u32,
    stages: Vec<Box<dyn StageContext>>,
    /// The stage that handles bodies and trailers, if any.
    body_stage: Option<usize>,
    /// Stages `[0, at)` let the request headers through.
    at: usize,
    /// The stage that paused the request, until it resumes it.
    held: Option<usize>,
    num_headers: usize,
    end_of_stream: bool,
    /// A stage answered the request: no later stage runs.
    stopped: bool,
}

impl Flow {
    /// Notes what stage `stage` just did: its calls, and whether it answered the request.
    fn collect<H: Host>(&mut self, shared: &Shared<H>, stage: usize) {
        shared.note_calls(Caller::Request(self.id, stage));
        if shared.host.take_replied(self.id) {
            self.stopped = true;
        }
    }

    /// Runs the request headers through the stages from `at` on.
    fn run<H: Host>(&mut self, shared: &Shared<H>) -> Action {
        while self.at < self.stages.len() {
            if self.stopped {
                return Action::Pause;
            }
            let i = self.at;
            shared.host.running(i);
            let action = match self.stages.get_mut(i) {
                Some(stage) => stage.request_headers(self.num_headers, self.end_of_stream),
                None => Action::Continue,
            };
            self.collect(shared, i);
            if self.stopped {
                return Action::Pause;
            }
            // A stage that resumed the request before returning let it through.
            if action != Action::Continue && !shared.host.take_resumed(self.id, i) {
                self.held = Some(i);
                return Action::Pause;
            }
            self.at += 1;
        }
        Action::Continue
    }

    /// Stage `stage` resumed the request: if it is the one that paused it, the stages after it
    /// run. (A stage releases only what it holds.)
    fn resume<H: Host>(&mut self, shared: &Shared<H>, stage: usize) -> Action {
        match self.held.take() {
            Some(i) if i == stage && i == self.at && !self.stopped => {
                self.at += 1;
                self.run(shared)
            }
            held => {
                self.held = held;
                Action::Pause
            }
        }
    }

    fn body_stage(&mut self) -> Option<(usize, &mut Box<dyn StageContext>)> {
        let i = self.body_stage?;
        if self.stopped {
            return None;
        }
        let stage = self.stages.get_mut(i)?;
        Some((i, stage))
    }
}

/// The pipeline's root context over host `H`.
pub struct PipelineRoot<H: Host + 'static> {
    shared: Rc<Shared<H>>,
    stages: Vec<StageSlot>,
}

impl<H: Host + 'static> PipelineRoot<H> {
    pub fn new(host: Rc<H>, root_id: u32) -> Self {
        let shared = Shared {
            host: Rc::new(StageHost::new(host)),
            root_id,
            flows: RefCell::default(),
            calls: RefCell::default(),
        };
        Self { shared: Rc::new(shared), stages: Vec::new() }
    }

    /// Configures the stages; false (with a critical log line naming the field) when the
    /// configuration or a stage's is refused.
    fn configure(&mut self) -> bool {
        let host = &self.shared.host;
        host.enter(self.shared.root_id);
        host.configuring(None);
        let bytes = host.plugin_configuration().unwrap_or_default();
        let parsed = match parse(&bytes) {
            Ok(parsed) => parsed,
            Err(e) => {
                host.log(LogLevel::Critical, &e.to_string());
                return false;
            }
        };
        let mut stages = Vec::with_capacity(parsed.len());
        for (i, (kind, config)) in parsed.into_iter().enumerate() {
            let mut root = kind.root(Rc::clone(host), self.shared.root_id);
            host.running(i);
            host.configuring(Some(config.clone()));
            let accepted = root.configure(config.len());
            let tick = host.asked_tick();
            host.configuring(None);
            self.shared.note_calls(Caller::Root(i));
            if !accepted {
                // The stage logged what is wrong with its configuration.
                let e = ConfigError::new(
                    "pipeline",
                    format!("stages[{i}].config"),
                    format!("refused by the {} stage (see the message before)", kind.name()),
                );
                host.log(LogLevel::Critical, &e.to_string());
                return false;
            }
            stages.push(StageSlot { root, handles_body: kind.handles_body(), tick, next_tick_ms: 0 });
        }
        self.set(stages);
        true
    }

    /// Takes these stage roots (configured) as the pipeline's, and sets the tick.
    fn set(&mut self, stages: Vec<StageSlot>) {
        if let Some(period) = stages.iter().filter_map(|s| s.tick).min() {
            self.shared.host.inner().set_tick_period(period);
        }
        self.stages = stages;
    }

    /// A pipeline of the stage roots `make` builds over the pipeline's host, already configured.
    #[cfg(test)]
    fn with_stages(
        host: Rc<H>,
        root_id: u32,
        make: impl FnOnce(Rc<StageHost<H>>) -> Vec<(Box<dyn StageRoot>, bool)>,
    ) -> Self {
        let mut root = Self::new(host, root_id);
        let stages = make(Rc::clone(&root.shared.host))
            .into_iter()
            .map(|(root, handles_body)| StageSlot {
                root,
                handles_body,
                tick: Some(Duration::from_secs(1)),
                next_tick_ms: 0,
            })
            .collect();
        root.set(stages);
        root
    }

    /// The context of request `context_id`; none before a configuration was accepted.
    pub fn context(&self, context_id: u32) -> Option<PipelineHttp<H>> {
        if self.stages.is_empty() {
            return None;
        }
        let mut contexts = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            contexts.push(stage.root.http_context(context_id)?);
        }
        let flow = Flow {
            id: context_id,
            stages: contexts,
            body_stage: self.stages.iter().rposition(|s| s.handles_body),
            at: 0,
            held: None,
            num_headers: 0,
            end_of_stream: false,
            stopped: false,
        };
        let flow = Rc::new(RefCell::new(flow));
        self.shared.flows.borrow_mut().insert(context_id, Rc::clone(&flow));
        Some(PipelineHttp { shared: Rc::clone(&self.shared), id: context_id, flow })
    }

    /// Delivers an answer to a call: to the stage root that made it, or to the request's stage.
    fn answer_call(&mut self, answer: Answer) {
        let shared = Rc::clone(&self.shared);
        shared.host.enter(shared.root_id);
        if let Some(Caller::Root(i)) = shared.answer(answer) {
            if let Some(stage) = self.stages.get_mut(i) {
                shared.host.running(i);
                stage.root.answer(answer);
            }
            shared.note_calls(Caller::Root(i));
        }
        shared.settle(shared.root_id);
    }
}

impl<H: Host + 'static> Context for PipelineRoot<H> {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.answer_call(Answer::Grpc { token: token_id, status: status_code, size: response_size });
    }

    fn on_http_call_response(&mut self, token_id: u32, headers: usize, body_size: usize, trailers: usize) {
        self.answer_call(Answer::Http { token: token_id, headers, body_size, trailers });
    }
}

impl<H: Host + 'static> RootContext for PipelineRoot<H> {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        self.configure()
    }

    fn on_tick(&mut self) {
        let shared = Rc::clone(&self.shared);
        shared.host.enter(shared.root_id);
        let now_ms = shared.host.now_ms();
        for (i, stage) in self.stages.iter_mut().enumerate() {
            let Some(period) = stage.tick else {
                continue;
            };
            if now_ms < stage.next_tick_ms {
                continue;
            }
            stage.next_tick_ms = now_ms.saturating_add(period.as_millis() as u64);
            shared.host.running(i);
            stage.root.tick();
            shared.note_calls(Caller::Root(i));
        }
        shared.settle(shared.root_id);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(self.context(context_id)?))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The context of one request through the pipeline.
pub struct PipelineHttp<H: Host> {
    shared: Rc<Shared<H>>,
    id: u32,
    flow: Rc<RefCell<Flow>>,
}

impl<H: Host> PipelineHttp<H> {
    /// Runs `f` on the flow as a callback of this request, then settles what it caused.
    fn callback<T>(&mut self, f: impl FnOnce(&mut Flow, &Shared<H>) -> T) -> T {
        let shared = &*self.shared;
        shared.host.enter(self.id);
        let out = f(&mut self.flow.borrow_mut(), shared);
        shared.settle(self.id);
        out
    }

    /// A body or trailers callback: only the stage that handles them sees it.
    fn body(&mut self, f: impl FnOnce(&mut dyn StageContext) -> Action) -> Action {
        self.callback(|flow, shared| match flow.body_stage() {
            Some((i, stage)) => {
                shared.host.running(i);
                let action = f(stage.as_mut());
                flow.collect(shared, i);
                action
            }
            None => Action::Continue,
        })
    }

    /// A response callback: through every stage in reverse order, as Envoy runs the encoders.
    fn response(&mut self, f: impl Fn(&mut dyn StageContext) -> Action) -> Action {
        self.callback(|flow, shared| {
            for i in (0..flow.stages.len()).rev() {
                shared.host.running(i);
                let action = match flow.stages.get_mut(i) {
                    Some(stage) => f(stage.as_mut()),
                    None => Action::Continue,
                };
                // A reply made here is a new response, which comes through here again.
                shared.note_calls(Caller::Request(flow.id, i));
                if action != Action::Continue {
                    return action;
                }
            }
            Action::Continue
        })
    }

    fn answer_call(&mut self, answer: Answer) {
        let shared = Rc::clone(&self.shared);
        shared.host.enter(self.id);
        // The stages' root contexts call only while the root context dispatches, so their
        // answers reach the root context; what reaches a request is a request's.
        shared.answer(answer);
        shared.settle(self.id);
    }
}

impl<H: Host> Context for PipelineHttp<H> {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.answer_call(Answer::Grpc { token: token_id, status: status_code, size: response_size });
    }

    fn on_http_call_response(&mut self, token_id: u32, headers: usize, body_size: usize, trailers: usize) {
        self.answer_call(Answer::Http { token: token_id, headers, body_size, trailers });
    }

    fn on_done(&mut self) -> bool {
        let shared = Rc::clone(&self.shared);
        shared.host.enter(self.id);
        for (i, stage) in self.flow.borrow_mut().stages.iter_mut().enumerate() {
            shared.host.running(i);
            stage.done();
        }
        shared.flows.borrow_mut().remove(&self.id);
        shared
            .calls
            .borrow_mut()
            .retain(|_, caller| !matches!(caller, Caller::Request(id, _) if *id == self.id));
        shared.host.forget(self.id);
        shared.settle(self.id);
        true
    }
}

impl<H: Host> HttpContext for PipelineHttp<H> {
    fn on_http_request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.callback(|flow, shared| {
            flow.num_headers = num_headers;
            flow.end_of_stream = end_of_stream;
            flow.run(shared)
        })
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.body(|s| s.request_body(body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, num_trailers: usize) -> Action {
        self.body(|s| s.request_trailers(num_trailers))
    }

    fn on_http_response_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.response(|s| s.response_headers(num_headers, end_of_stream))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.body(|s| s.response_body(body_size, end_of_stream))
    }

    fn on_http_response_trailers(&mut self, num_trailers: usize) -> Action {
        self.body(|s| s.response_trailers(num_trailers))
    }

    fn on_log(&mut self) {
        self.callback(|flow, shared| {
            for (i, stage) in flow.stages.iter_mut().enumerate() {
                shared.host.running(i);
                stage.log();
            }
        });
    }
}

#[cfg(test)]
mod tests;
