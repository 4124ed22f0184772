//! Prometheus metrics of the key service, served as OpenMetrics text on a listener of their own
//! (`--metrics-listen`, loopback by default; see [`serve_http`] for the endpoint).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `tollgate_keyd_grpc_requests_total` | counter | `method`, `code` |
//! | `tollgate_keyd_grpc_request_duration_seconds` | histogram | `method` |
//! | `tollgate_keyd_store_duration_seconds` | histogram | `operation` |
//! | `tollgate_keyd_feed_head_sequence` | gauge | |
//! | `tollgate_keyd_feed_watchers` | gauge | |
//! | `tollgate_keyd_keys` | gauge | `status` |
//! | `tollgate_keyd_audit_writes_total` | counter | |
//! | `tollgate_keyd_lifecycle_transitions_total` | counter | `transition` |
//! | `tollgate_keyd_lifecycle_leader` | gauge (1 while this replica runs the scheduler) | |
//! | `tollgate_keyd_build_info` | gauge (always 1) | `version` |
//!
//! Every label value comes from a closed set: [`RPC_METHODS`] and [`UNKNOWN_METHOD`], the gRPC
//! code names ([`code_label`]), [`STORE_OPERATIONS`], [`KEY_STATUSES`] and the crate version.
//! Nothing a caller sends or the store holds (tokens, keys, hashes, consumer or key ids) ever
//! becomes a label or a value.
//!
//! - The gRPC metrics come from a tower layer around the whole server ([`GrpcMetricsLayer`]),
//!   so requests refused by authentication and requests for unknown methods are counted too.
//!   A call is counted when its status is known: at once when it fails before answering
//!   (a trailers-only response), when its trailers are sent otherwise, and as `CANCELLED` when
//!   the client goes away first. So the duration of a WatchChanges call is how long its
//!   stream stayed open. Health checks and reflection are not key-service calls and are not
//!   counted; any other path is counted as `method="unknown"`.
//! - The store histogram times every call of the [`Store`] trait, successful or not, labelled
//!   with the trait method's name ([`TimedStore`]).
//! - The feed gauges, the audit counter and the key counts are read when scraped (see
//!   [`Exporter`]).

mod grpc;
mod http;
mod store;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::Mutex;
use tonic::Code;

pub use self::grpc::{GrpcMetrics, GrpcMetricsLayer};
pub use self::http::{CONTENT_TYPE, MAX_CONNECTIONS, PATH, serve as serve_http};
pub use self::store::TimedStore;
use crate::clock::Clock;
use crate::feed::Feed;
use crate::model::KeyCounts;
use crate::service::blocking;
use crate::store::Store;

/// The RPCs of the key service: the values of the gRPC `method` label besides
/// [`UNKNOWN_METHOD`].
pub const RPC_METHODS: [&str; 28] = [
    "CreateConsumer",
    "GetConsumer",
    "ListConsumers",
    "UpdateConsumer",
    "DeleteConsumer",
    "CreateKey",
    "GetKey",
    "ListKeys",
    "UpdateKey",
    "RevokeKey",
    "RotateKey",
    "VerifyKey",
    "ListChanges",
    "WatchChanges",
    "GetSigningKey",
    "ReportUsage",
    "GetUsage",
    "PurgeCache",
    "CreateWebhook",
    "ListWebhooks",
    "UpdateWebhook",
    "DeleteWebhook",
    "ListWebhookDeliveries",
    "SetRotationPolicy",
    "ListRotationPolicies",
    "DeleteRotationPolicy",
    "RotateWebhookSecret",
    "ReplayWebhooks",
];

/// The `method` label of a path that names no RPC of the key service.
pub const UNKNOWN_METHOD: &str = "unknown";

/// The values of the store `operation` label: the [`Store`] trait's methods.
pub const STORE_OPERATIONS: [&str; 47] = [
    "create_consumer",
    "get_consumer",
    "list_consumers",
    "update_consumer",
    "delete_consumer",
    "create_key",
    "get_key",
    "list_keys",
    "list_expiring_keys",
    "count_keys",
    "update_key",
    "revoke_key",
    "rotate_key",
    "purge_cache",
    "lookup_secret",
    "record_usage",
    "report_usage",
    "usage",
    "usage_series",
    "caller_usage",
    "list_changes",
    "list_audit",
    "list_audit_recent",
    "get_signing",
    "list_sealed",
    "reseal",
    "create_webhook",
    "list_webhooks",
    "update_webhook",
    "delete_webhook",
    "claim_webhook_messages",
    "finish_webhook_attempt",
    "list_webhook_attempts",
    "set_rotation_policy",
    "delete_rotation_policy",
    "list_rotation_policies",
    "effective_policy",
    "lifecycle_candidates",
    "apply_transition",
    "take_lease",
    "record_previous_use",
    "take_pending_secret",
    "rotate_webhook_secret",
    "replay_webhook_messages",
    "prune_webhooks",
    "list_webhook_secrets",
    "reseal_webhook_secrets",
];

/// The values of the `transition` label of `tollgate_keyd_lifecycle_transitions_total`.
pub const LIFECYCLE_TRANSITIONS: [&str; 4] = ["expiring", "expired", "rotated", "grace_ended"];

/// The values of the `status` label of `tollgate_keyd_keys`.
pub const KEY_STATUSES: [&str; 3] = ["active", "revoked", "expired"];

/// Services whose calls are not counted: they are not the key service's.
const UNCOUNTED_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Histogram buckets in seconds, from 100 µs to 5 s.
const BUCKETS: [f64; 15] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// How long counted keys are reused before a scrape counts them again: one full read of the key
/// table at most this often, however many scrapers there are.
pub const KEY_COUNT_MAX_AGE: Duration = Duration::from_secs(10);

/// How long a scrape waits for the key count; after that it answers with the previous count
/// and the count goes on in the background.
const KEY_COUNT_WAIT: Duration = Duration::from_secs(2);

/// The `method` label of a gRPC request path, or `None` for the calls that are not counted
/// (health checks and reflection).
pub fn method_label(path: &str) -> Option<&'static str> {
    let (service, method) = path.strip_prefix('/').and_then(|p| p.split_once('/')).unwrap_or(("", ""));
    if service == tollgate_proto::KEY_SERVICE {
        return Some(RPC_METHODS.iter().find(|known| **known == method).copied().unwrap_or(UNKNOWN_METHOD));
    }
    if UNCOUNTED_SERVICES.contains(&service) {
        return None;
    }
    Some(UNKNOWN_METHOD)
}

/// The `code` label: the canonical name of a gRPC status code.
pub fn code_label(code: Code) -> &'static str {
    tollgate_proto::code_name(code)
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    transition: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

struct Inner {
    registry: Registry,
    grpc_requests: Family<GrpcLabels, Counter>,
    grpc_duration: Histograms<MethodLabels>,
    store_duration: Histograms<OperationLabels>,
    feed_head: Gauge,
    feed_watchers: Gauge,
    keys: Family<StatusLabels, Gauge>,
    audit_writes: Counter,
    lifecycle_transitions: Family<TransitionLabels, Counter>,
    lifecycle_leader: Gauge,
}

/// The key service's metrics. Cloning is cheap; clones share the metrics.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, registered and at zero (`build_info` at 1).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tollgate_keyd");
        let grpc_requests = Family::<GrpcLabels, Counter>::default();
        registry.register(
            "grpc_requests",
            "gRPC calls of the key service by RPC name and status code",
            grpc_requests.clone(),
        );
        let grpc_duration: Histograms<MethodLabels> = Family::new_with_constructor(histogram);
        registry.register_with_unit(
            "grpc_request_duration",
            "Time from a gRPC call's arrival to its status (for WatchChanges: how long the stream was open)",
            Unit::Seconds,
            grpc_duration.clone(),
        );
        let store_duration: Histograms<OperationLabels> = Family::new_with_constructor(histogram);
        registry.register_with_unit(
            "store_duration",
            "Time spent in store calls, by store method",
            Unit::Seconds,
            store_duration.clone(),
        );
        let feed_head = Gauge::default();
        registry.register(
            "feed_head_sequence",
            "Newest change sequence number the change feed has read from the store",
            feed_head.clone(),
        );
        let feed_watchers = Gauge::default();
        registry.register(
            "feed_watchers",
            "Change-feed readers: open WatchChanges streams plus ListChanges calls in flight",
            feed_watchers.clone(),
        );
        let keys = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "keys",
            format!("Keys by status, counted from the store at most every {} s", KEY_COUNT_MAX_AGE.as_secs()),
            keys.clone(),
        );
        let audit_writes = Counter::default();
        registry.register("audit_writes", "Audit log entries written by this process", audit_writes.clone());
        let lifecycle_transitions = Family::<TransitionLabels, Counter>::default();
        for transition in LIFECYCLE_TRANSITIONS {
            let _ = lifecycle_transitions.get_or_create(&TransitionLabels { transition });
        }
        registry.register(
            "lifecycle_transitions",
            "Key lifecycle transitions this process's scheduler made: expiry notices, expiries, automatic rotations, ended graces",
            lifecycle_transitions.clone(),
        );
        let lifecycle_leader = Gauge::default();
        registry.register(
            "lifecycle_leader",
            "1 while this process holds the lifecycle scheduler's lease, else 0",
            lifecycle_leader.clone(),
        );
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info.get_or_create(&VersionLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("build_info", "The running version (always 1)", build_info);
        Self {
            inner: Arc::new(Inner {
                registry,
                grpc_requests,
                grpc_duration,
                store_duration,
                feed_head,
                feed_watchers,
                keys,
                audit_writes,
                lifecycle_transitions,
                lifecycle_leader,
            }),
        }
    }

    /// The tower layer that counts and times every gRPC call of the server it wraps.
    pub fn grpc_layer(&self) -> GrpcMetricsLayer {
        GrpcMetricsLayer::new(self.clone())
    }

    /// `store`, with every call timed.
    pub fn timed_store(&self, store: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(TimedStore::new(store, self.clone()))
    }

    fn observe_grpc(&self, method: &'static str, code: Code, elapsed: Duration) {
        self.inner.grpc_requests.get_or_create(&GrpcLabels { method, code: code_label(code) }).inc();
        self.inner.grpc_duration.get_or_create(&MethodLabels { method }).observe(elapsed.as_secs_f64());
    }

    fn observe_store(&self, operation: &'static str, elapsed: Duration) {
        self.inner
            .store_duration
            .get_or_create(&OperationLabels { operation })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a transition of the lifecycle scheduler (one of [`LIFECYCLE_TRANSITIONS`]).
    pub fn lifecycle_transition(&self, transition: &'static str) {
        self.inner.lifecycle_transitions.get_or_create(&TransitionLabels { transition }).inc();
    }

    /// Whether this process holds the scheduler's lease.
    pub fn set_lifecycle_leader(&self, leader: bool) {
        self.inner.lifecycle_leader.set(i64::from(leader));
    }

    fn set_key_counts(&self, counts: KeyCounts) {
        let values = [counts.active, counts.revoked, counts.expired];
        for (status, value) in KEY_STATUSES.into_iter().zip(values) {
            self.inner.keys.get_or_create(&StatusLabels { status }).set(gauge_value(value));
        }
    }

    /// The metrics as they stand, in the OpenMetrics text format (ending with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would leave a partial text, which
        // is still better than none.
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry) {
            tracing::warn!(error = %err, "could not encode the metrics");
        }
        out
    }
}

fn gauge_value(value: impl TryInto<i64>) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

/// Answers scrapes: reads what lives elsewhere (the feed, the store's key counts and audit
/// count) into the metrics, then encodes them.
///
/// The key counts come from one read of the key table ([`Store::count_keys`]), done at scrape
/// time but at most once per [`KEY_COUNT_MAX_AGE`] and by one scrape at a time: the cost is
/// bounded however often and however many scrapers come. The other values are in memory.
pub struct Exporter {
    metrics: Metrics,
    store: Arc<dyn Store>,
    feed: Feed,
    clock: Arc<dyn Clock>,
    /// When the keys were last counted; held while they are being counted.
    counted_at: Arc<Mutex<Option<Instant>>>,
    max_age: Duration,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").field("max_age", &self.max_age).finish_non_exhaustive()
    }
}

impl Exporter {
    /// An exporter of `metrics` that reads `store` (which should be the timed one), `feed` and
    /// the time from `clock`.
    pub fn new(metrics: Metrics, store: Arc<dyn Store>, feed: Feed, clock: Arc<dyn Clock>) -> Self {
        Self {
            metrics,
            store,
            feed,
            clock,
            counted_at: Arc::new(Mutex::new(None)),
            max_age: KEY_COUNT_MAX_AGE,
        }
    }

    /// Counts keys again once a count is older than `max_age` (zero: at every scrape).
    pub fn with_key_count_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// The metrics text of one scrape.
    pub async fn scrape(&self) -> String {
        let inner = &self.metrics.inner;
        inner.feed_head.set(gauge_value(self.feed.head()));
        inner.feed_watchers.set(gauge_value(self.feed.readers()));
        // The store's count only grows; `fetch_max` keeps concurrent scrapes from adding twice.
        inner.audit_writes.inner().fetch_max(self.store.audit_written(), Ordering::Relaxed);
        self.refresh_key_counts().await;
        self.metrics.encode()
    }

    async fn refresh_key_counts(&self) {
        let counted_at = Arc::clone(&self.counted_at);
        let (store, clock, metrics, max_age) =
            (Arc::clone(&self.store), Arc::clone(&self.clock), self.metrics.clone(), self.max_age);
        let count = tokio::spawn(async move {
            let mut counted_at = counted_at.lock().await;
            if counted_at.is_some_and(|at| at.elapsed() < max_age) {
                return;
            }
            let now = clock.now();
            match blocking(&store, move |s| s.count_keys(now)).await {
                Ok(counts) => {
                    metrics.set_key_counts(counts);
                    *counted_at = Some(Instant::now());
                }
                // The previous counts stay; before the first success there are none.
                Err(err) => tracing::warn!(error = %err, "metrics: could not count keys"),
            }
        });
        if tokio::time::timeout(KEY_COUNT_WAIT, count).await.is_err() {
            tracing::warn!("metrics: counting keys is slow; this scrape has the previous counts");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Ctx, NewConsumer, NewKey, StoredSecret};
    use crate::store::SqliteStore;
    use crate::validate::MAX_CHANGES;
    use tokio::sync::watch;

    /// The sample lines of `text` (no comments), each as `name{labels} value`.
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    /// The value of the sample `series` (`name{labels}` exactly as encoded).
    fn value(text: &str, series: &str) -> Option<f64> {
        samples(text).into_iter().find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
    }

    #[test]
    fn every_metric_has_its_exact_name_type_and_unit() {
        let metrics = Metrics::new();
        metrics.observe_grpc("VerifyKey", Code::Ok, Duration::from_micros(300));
        metrics.observe_store("lookup_secret", Duration::from_micros(150));
        metrics.set_key_counts(KeyCounts { active: 1, revoked: 0, expired: 0 });
        let text = metrics.encode();
        for line in [
            "# TYPE tollgate_keyd_grpc_requests counter",
            "# TYPE tollgate_keyd_grpc_request_duration_seconds histogram",
            "# UNIT tollgate_keyd_grpc_request_duration_seconds seconds",
            "# TYPE tollgate_keyd_store_duration_seconds histogram",
            "# UNIT tollgate_keyd_store_duration_seconds seconds",
            "# TYPE tollgate_keyd_feed_head_sequence gauge",
            "# TYPE tollgate_keyd_feed_watchers gauge",
            "# TYPE tollgate_keyd_keys gauge",
            "# TYPE tollgate_keyd_audit_writes counter",
            "# TYPE tollgate_keyd_lifecycle_transitions counter",
            "# TYPE tollgate_keyd_lifecycle_leader gauge",
            "# TYPE tollgate_keyd_build_info gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert_eq!(text.lines().last(), Some("# EOF"));
        let version = env!("CARGO_PKG_VERSION");
        for (series, expected) in [
            (r#"tollgate_keyd_grpc_requests_total{method="VerifyKey",code="OK"}"#, 1.0),
            (r#"tollgate_keyd_grpc_request_duration_seconds_count{method="VerifyKey"}"#, 1.0),
            (r#"tollgate_keyd_grpc_request_duration_seconds_bucket{le="0.0005",method="VerifyKey"}"#, 1.0),
            (r#"tollgate_keyd_grpc_request_duration_seconds_bucket{le="0.00025",method="VerifyKey"}"#, 0.0),
            (r#"tollgate_keyd_store_duration_seconds_count{operation="lookup_secret"}"#, 1.0),
            ("tollgate_keyd_feed_head_sequence", 0.0),
            ("tollgate_keyd_feed_watchers", 0.0),
            (r#"tollgate_keyd_keys{status="active"}"#, 1.0),
            (r#"tollgate_keyd_keys{status="revoked"}"#, 0.0),
            (r#"tollgate_keyd_keys{status="expired"}"#, 0.0),
            ("tollgate_keyd_audit_writes_total", 0.0),
            (r#"tollgate_keyd_lifecycle_transitions_total{transition="rotated"}"#, 0.0),
            ("tollgate_keyd_lifecycle_leader", 0.0),
            (&format!(r#"tollgate_keyd_build_info{{version="{version}"}}"#), 1.0),
        ] {
            assert_eq!(value(&text, series), Some(expected), "{series} in\n{text}");
        }
    }

    #[test]
    fn histogram_buckets_run_from_100_microseconds_to_5_seconds() {
        let metrics = Metrics::new();
        metrics.observe_store("get_key", Duration::from_secs(7));
        let text = metrics.encode();
        let bounds: Vec<&str> = samples(&text)
            .into_iter()
            .filter_map(|l| l.strip_prefix("tollgate_keyd_store_duration_seconds_bucket{le=\""))
            .filter_map(|l| l.split_once('"').map(|(le, _)| le))
            .collect();
        assert_eq!(bounds.first(), Some(&"0.0001"));
        assert_eq!(bounds.get(bounds.len() - 2), Some(&"5.0"));
        assert_eq!(bounds.last(), Some(&"+Inf"));
        // 7 s is beyond every finite bucket.
        let series = r#"tollgate_keyd_store_duration_seconds_bucket{le="5.0",operation="get_key"}"#;
        assert_eq!(value(&text, series), Some(0.0), "{text}");
    }

    #[test]
    fn the_method_label_is_an_rpc_name_or_unknown() {
        for rpc in RPC_METHODS {
            assert_eq!(method_label(&format!("/tollgate.keys.v1.KeyService/{rpc}")), Some(rpc));
        }
        for path in [
            "/tollgate.keys.v1.KeyService/DropTables",
            "/tollgate.keys.v1.KeyService/verifykey",
            "/tollgate.keys.v1.KeyService/",
            "/tollgate.keys.v1.KeyService/VerifyKey/extra",
            "/tollgate.keys.v1.KeyService",
            "/other.Service/VerifyKey",
            "/",
            "",
            "tgk_not_a_path",
        ] {
            assert_eq!(method_label(path), Some(UNKNOWN_METHOD), "{path:?}");
        }
        assert_eq!(method_label("/grpc.health.v1.Health/Check"), None);
        assert_eq!(method_label("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"), None);
        assert_eq!(method_label("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"), None);
    }

    #[test]
    fn rpc_methods_are_exactly_the_rpcs_of_the_proto() {
        let proto = include_str!("../../../proto/tollgate/keys/v1/keys.proto");
        let mut declared: Vec<&str> = proto
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .filter_map(|l| l.split('(').next())
            .map(str::trim)
            .collect();
        let mut known = RPC_METHODS.to_vec();
        declared.sort_unstable();
        known.sort_unstable();
        assert_eq!(declared, known);
    }

    #[test]
    fn code_labels_are_the_canonical_grpc_code_names() {
        let names: Vec<&str> = (0..=16).map(|n| code_label(Code::from_i32(n))).collect();
        assert_eq!(
            names,
            [
                "OK",
                "CANCELLED",
                "UNKNOWN",
                "INVALID_ARGUMENT",
                "DEADLINE_EXCEEDED",
                "NOT_FOUND",
                "ALREADY_EXISTS",
                "PERMISSION_DENIED",
                "RESOURCE_EXHAUSTED",
                "FAILED_PRECONDITION",
                "ABORTED",
                "OUT_OF_RANGE",
                "UNIMPLEMENTED",
                "INTERNAL",
                "UNAVAILABLE",
                "DATA_LOSS",
                "UNAUTHENTICATED",
            ]
        );
        // A code outside the known range is reported as UNKNOWN, not as a new label value.
        assert_eq!(code_label(Code::from_i32(99)), "UNKNOWN");
    }

    struct Service {
        _dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        feed: Feed,
        metrics: Metrics,
        _stop: watch::Sender<bool>,
    }

    async fn service() -> Service {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let store = metrics.timed_store(Arc::new(SqliteStore::open(&dir.path().join("keys.db")).unwrap()));
        let (stop, stopped) = watch::channel(false);
        let (feed, _reader) =
            Feed::start(Arc::clone(&store), stopped, Duration::from_secs(3600), MAX_CHANGES).await.unwrap();
        Service { _dir: dir, store, feed, metrics, _stop: stop }
    }

    fn new_key(id: &str, hash: u8, expires_at: i64) -> NewKey {
        NewKey {
            id: id.into(),
            consumer: "alice".into(),
            create_consumer: Some(NewConsumer {
                id: "cons_alice".into(),
                name: "alice".into(),
                metadata: Default::default(),
            }),
            name: String::new(),
            scopes: Vec::new(),
            metadata: Default::default(),
            rate_limit: None,
            expires_at,
            secret: StoredSecret { hash: [hash; 32], display_prefix: "tgk_abcdef".into() },
            signing: None,
        }
    }

    #[tokio::test]
    async fn a_scrape_reads_keys_by_status_audit_writes_and_the_feed_and_never_their_ids() {
        let s = service().await;
        let clock = Arc::new(crate::clock::ManualClock::new(1_000));
        let ctx = Ctx { actor: "test".into(), now: 1_000 };
        s.store.create_key(&ctx, new_key("key_one", 1, 0)).unwrap();
        s.store.create_key(&ctx, new_key("key_two", 2, 1_500)).unwrap();
        s.store.create_key(&ctx, new_key("key_three", 3, 0)).unwrap();
        s.store.revoke_key(&ctx, "key_three", "test").unwrap();
        clock.set(2_000);
        s.feed.notify();
        let watcher = s.feed.watch(0);
        let exporter = Exporter::new(s.metrics.clone(), Arc::clone(&s.store), s.feed.clone(), clock);
        let head = s.store.list_changes(0, 0).unwrap().1;
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.feed.head() < head {
            assert!(Instant::now() < deadline, "the feed did not read the changes");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let text = exporter.scrape().await;
        for (series, expected) in [
            (r#"tollgate_keyd_keys{status="active"}"#, 1.0),
            (r#"tollgate_keyd_keys{status="revoked"}"#, 1.0),
            (r#"tollgate_keyd_keys{status="expired"}"#, 1.0),
            // The consumer, three keys and one revocation.
            ("tollgate_keyd_audit_writes_total", 5.0),
            ("tollgate_keyd_feed_head_sequence", 4.0),
            ("tollgate_keyd_feed_watchers", 1.0),
            (r#"tollgate_keyd_store_duration_seconds_count{operation="create_key"}"#, 3.0),
            (r#"tollgate_keyd_store_duration_seconds_count{operation="count_keys"}"#, 1.0),
        ] {
            assert_eq!(value(&text, series), Some(expected), "{series} in\n{text}");
        }
        for secret in ["key_one", "key_two", "key_three", "cons_alice", "alice", "tgk_abcdef"] {
            assert!(!text.contains(secret), "{secret} in\n{text}");
        }
        drop(watcher);
        let text = exporter.scrape().await;
        assert_eq!(value(&text, "tollgate_keyd_feed_watchers"), Some(0.0));
    }

    #[tokio::test]
    async fn keys_are_counted_at_most_once_per_max_age_even_under_concurrent_scrapes() {
        let s = service().await;
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::SystemClock);
        let count_calls = |text: &str| {
            value(text, r#"tollgate_keyd_store_duration_seconds_count{operation="count_keys"}"#)
                .unwrap_or(0.0)
        };
        let exporter =
            Arc::new(Exporter::new(s.metrics.clone(), Arc::clone(&s.store), s.feed.clone(), clock));
        let scrapes: Vec<_> = (0..8)
            .map(|_| {
                let exporter = Arc::clone(&exporter);
                tokio::spawn(async move { exporter.scrape().await })
            })
            .collect();
        for scrape in scrapes {
            let text = scrape.await.unwrap();
            assert_eq!(value(&text, r#"tollgate_keyd_keys{status="active"}"#), Some(0.0), "{text}");
        }
        let ctx = Ctx { actor: "test".into(), now: crate::clock::SystemClock.now() };
        s.store.create_key(&ctx, new_key("key_one", 1, 0)).unwrap();
        let text = exporter.scrape().await;
        assert_eq!(count_calls(&text), 1.0, "{text}");
        assert_eq!(
            value(&text, r#"tollgate_keyd_keys{status="active"}"#),
            Some(0.0),
            "a fresh count is reused"
        );

        let exporter =
            Exporter::new(s.metrics.clone(), Arc::clone(&s.store), s.feed.clone(), exporter.clock.clone())
                .with_key_count_max_age(Duration::ZERO);
        let text = exporter.scrape().await;
        assert_eq!(count_calls(&text), 2.0, "{text}");
        assert_eq!(value(&text, r#"tollgate_keyd_keys{status="active"}"#), Some(1.0), "{text}");
    }

    /// One HTTP/1.1 exchange on a fresh connection; returns the whole response.
    async fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut response))
            .await
            .unwrap()
            .unwrap();
        response
    }

    #[tokio::test]
    async fn the_endpoint_answers_get_head_and_refuses_the_rest() {
        let s = service().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let exporter = Exporter::new(
            s.metrics.clone(),
            Arc::clone(&s.store),
            s.feed.clone(),
            Arc::new(crate::clock::SystemClock),
        );
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(serve_http(listener, Arc::new(exporter), stopped));

        let get = exchange(addr, "GET /metrics?x=1 HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n").await;
        let (head, body) = get.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.to_ascii_lowercase().contains(&format!("content-type: {CONTENT_TYPE}")), "{head}");
        assert!(body.contains("tollgate_keyd_build_info{"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");

        let head_only =
            exchange(addr, "HEAD /metrics HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n").await;
        assert!(head_only.starts_with("HTTP/1.1 200 OK\r\n"), "{head_only}");
        assert!(head_only.ends_with("\r\n\r\n"), "HEAD got a body: {head_only}");

        for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            let request = format!(
                "{method} /metrics HTTP/1.1\r\nHost: k\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            );
            let response = exchange(addr, &request).await;
            assert!(response.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{method}: {response}");
            assert!(
                response.to_ascii_lowercase().contains("\r\nallow: get, head\r\n"),
                "{method}: {response}"
            );
            assert!(!response.contains("tollgate_keyd"), "{method}: {response}");
        }
        for path in ["/other", "/", "/metrics/", "/METRICS"] {
            let response =
                exchange(addr, &format!("GET {path} HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n")).await;
            assert!(response.starts_with("HTTP/1.1 404 Not Found\r\n"), "{path}: {response}");
        }
        // A request that is not HTTP gets an error, and the server keeps serving.
        let garbage = exchange(addr, "\x00\x01 not http\r\n\r\n").await;
        assert!(garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"), "{garbage}");
        let again = exchange(addr, "GET /metrics HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n").await;
        assert!(again.starts_with("HTTP/1.1 200 OK\r\n"), "{again}");

        stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still listening after stop");
    }
}
