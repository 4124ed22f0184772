//! Usage per key, for the key service: each worker counts requests per key, minute and outcome
//! in its own VM ([`Usage::count`], no host call), adds what it counted to the proxy's pending
//! counts in shared data on its tick, and one worker at a time (a lease in the same record)
//! sends them to the key service as a numbered batch (`ReportUsage`, from the root context, so a
//! request that ends cancels nothing).
//!
//! Exactly once: a batch is moved from the pending counts to the record's in-flight slot in one
//! compare-and-swap, and stays there until the key service acknowledged it. A batch whose answer
//! was lost (the key service down, hung, restarted) is sent again later with the same number,
//! and the key service applies each `(gateway, batch)` once. Counts that arrive meanwhile wait
//! for the next batch. The pending counts are bounded ([`MAX_PENDING`]); what does not fit is
//! dropped and counted, never blocks a request.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

use prost::Message;
use tollgate_core::config::{KeyService, UsageConfig};
use tollgate_proto::v1;

use crate::shared::{CAS_RETRIES, Cas, cas_apply};
use crate::{Host, LogLevel, grpc_status};

/// Most counts (key × minute × outcome) one worker holds between two ticks.
pub const MAX_TALLY: usize = 10_000;
/// Most counts the proxy holds waiting for a batch.
pub const MAX_PENDING: usize = 20_000;

/// Who a count is about: a key, a JWT subject, or a consumer and the rate-limit rule that
/// refused it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Who {
    Key(String),
    /// A key presented with its previous secret (during a rotation grace).
    PreviousSecret(String),
    Subject(String),
    Limited {
        consumer_id: String,
        rule: String,
    },
}

/// A count's caller fields, borrowed: key id, subject, consumer id, rule, previous secret.
type WhoRef<'a> = (&'a str, &'a str, &'a str, &'a str, bool);

impl Who {
    fn of(c: &v1::UsageCount) -> WhoRef<'_> {
        (c.key_id.as_str(), c.subject.as_str(), c.consumer_id.as_str(), c.rule.as_str(), c.previous_secret)
    }

    fn into_count(self, minute: i64, outcome: &str, count: u64) -> v1::UsageCount {
        let mut c = v1::UsageCount { minute, outcome: outcome.to_owned(), count, ..Default::default() };
        match self {
            Who::Key(k) => c.key_id = k,
            Who::PreviousSecret(k) => {
                c.key_id = k;
                c.previous_secret = true;
            }
            Who::Subject(s) => c.subject = s,
            Who::Limited { consumer_id, rule } => {
                c.consumer_id = consumer_id;
                c.rule = rule;
            }
        }
        c
    }
}

/// One worker's counts since its last tick.
#[derive(Debug, Default)]
struct Tally {
    by_key: HashMap<Who, Vec<(i64, &'static str, u64)>>,
    entries: usize,
}

impl Tally {
    /// Adds one request; false when the tally is full (the request is not counted).
    fn count(&mut self, who: Who, minute: i64, outcome: &'static str) -> bool {
        if let Some(counts) = self.by_key.get_mut(&who) {
            if let Some(c) = counts.iter_mut().find(|(m, o, _)| *m == minute && *o == outcome) {
                c.2 = c.2.saturating_add(1);
                return true;
            }
            if self.entries >= MAX_TALLY {
                return false;
            }
            counts.push((minute, outcome, 1));
        } else {
            if self.entries >= MAX_TALLY {
                return false;
            }
            self.by_key.insert(who, vec![(minute, outcome, 1)]);
        }
        self.entries += 1;
        true
    }

    fn take(&mut self) -> Vec<v1::UsageCount> {
        self.entries = 0;
        std::mem::take(&mut self.by_key)
            .into_iter()
            .flat_map(|(who, counts)| {
                counts
                    .into_iter()
                    .map(move |(minute, outcome, count)| who.clone().into_count(minute, outcome, count))
            })
            .collect()
    }
}

/// The proxy's shared usage record: the reporting lease, the next batch number, the batch in
/// flight (if any) and the pending counts.
#[derive(Debug, Clone, Default, PartialEq)]
struct Record {
    busy_until_ms: u64,
    next_batch: u64,
    inflight: Option<v1::ReportUsageRequest>,
    pending: Vec<v1::UsageCount>,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let inflight = self.inflight.as_ref().map(Message::encode_to_vec).unwrap_or_default();
        let pending =
            v1::ReportUsageRequest { counts: self.pending.clone(), ..Default::default() }.encode_to_vec();
        let mut out = Vec::with_capacity(20 + inflight.len() + pending.len());
        out.extend_from_slice(&self.busy_until_ms.to_be_bytes());
        out.extend_from_slice(&self.next_batch.to_be_bytes());
        out.extend_from_slice(&u32::try_from(inflight.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&inflight);
        out.extend_from_slice(&pending);
        out
    }

    /// A record that cannot be read is taken as empty (its counts are lost, nothing worse).
    fn decode(bytes: &[u8]) -> Option<Record> {
        let busy_until_ms = u64::from_be_bytes(bytes.get(0..8)?.try_into().ok()?);
        let next_batch = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
        let len = u32::from_be_bytes(bytes.get(16..20)?.try_into().ok()?) as usize;
        let inflight_bytes = bytes.get(20..20usize.checked_add(len)?)?;
        let inflight =
            if len == 0 { None } else { Some(v1::ReportUsageRequest::decode(inflight_bytes).ok()?) };
        let pending = v1::ReportUsageRequest::decode(bytes.get(20 + len..)?).ok()?.counts;
        Some(Record { busy_until_ms, next_batch, inflight, pending })
    }

    fn read(current: Option<&[u8]>) -> Record {
        current.and_then(Record::decode).unwrap_or_default()
    }
}

/// Adds `counts` to `pending`, keeping at most [`MAX_PENDING`] entries; returns how many
/// requests did not fit.
fn merge(pending: &mut Vec<v1::UsageCount>, counts: &[v1::UsageCount]) -> u64 {
    let mut index: HashMap<(WhoRef<'_>, i64, &str), usize> = HashMap::with_capacity(pending.len());
    for (i, c) in pending.iter().enumerate() {
        index.insert((Who::of(c), c.minute, c.outcome.as_str()), i);
    }
    let mut adds: Vec<(usize, u64)> = Vec::new();
    let mut new: Vec<v1::UsageCount> = Vec::new();
    let mut dropped = 0u64;
    for c in counts {
        match index.get(&(Who::of(c), c.minute, c.outcome.as_str())) {
            Some(&i) => adds.push((i, c.count)),
            None if pending.len() + new.len() < MAX_PENDING => new.push(c.clone()),
            None => dropped = dropped.saturating_add(c.count),
        }
    }
    drop(index);
    for (i, n) in adds {
        if let Some(c) = pending.get_mut(i) {
            c.count = c.count.saturating_add(n);
        }
    }
    pending.extend(new);
    dropped
}

/// What a tick did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tick {
    /// Requests this tick could not keep (the tally or the pending counts were full).
    pub dropped: u64,
    /// A report is on its way; its answer goes to [`Usage::done`].
    pub started: Option<u32>,
}

/// One filter's usage counting and reporting, in one worker.
#[derive(Debug)]
pub struct Usage {
    record_key: String,
    gateway: String,
    interval: Duration,
    /// The first batch number of a proxy: differs between proxies (and restarts), so that
    /// proxies reporting under one name do not take each other's batches for repeats.
    first_batch: u64,
    tally: RefCell<Tally>,
    /// Requests the tally could not keep since the last tick.
    dropped: Cell<u64>,
    /// The batch this worker's report in flight carries.
    sent: Cell<Option<u64>>,
    failing: Cell<bool>,
}

impl Usage {
    /// Counts under shared-data key `record_key`, reported as `gateway` every `interval`;
    /// `seed` varies between proxies (the time and an address of the worker).
    pub fn new(record_key: &str, gateway: String, interval: Duration, seed: u64) -> Self {
        Self {
            record_key: record_key.to_owned(),
            gateway,
            interval,
            first_batch: (seed & 0x3fff_ffff).max(1) << 32,
            tally: RefCell::default(),
            dropped: Cell::new(0),
            sent: Cell::new(None),
            failing: Cell::new(false),
        }
    }

    /// The reporter a filter's `usage` block asks for (`None`: reporting is off), its record under
    /// the filter's shared-data `prefix`. It reports as `usage.gateway`, else as the proxy's node id
    /// (`xds.node.id`), else as `envoy`.
    pub fn configured<H: Host + ?Sized>(host: &H, config: &UsageConfig, prefix: &str) -> Option<Usage> {
        let interval = config.report_interval?;
        let gateway = config.gateway.clone().unwrap_or_else(|| {
            host.property(&["xds", "node", "id"])
                .and_then(|id| String::from_utf8(id).ok())
                .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
                .unwrap_or_else(|| "envoy".to_owned())
        });
        // Differs between proxies: the time, and where this worker's heap put the prefix.
        let seed = host.now_ms().wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ (prefix.as_ptr() as usize as u64).rotate_left(32);
        Some(Usage::new(&format!("{prefix}usage"), gateway, interval, seed))
    }

    /// Counts one request of `key_id` with `outcome` (`allowed` or a refusal reason). No host call.
    pub fn count(&self, key_id: &str, now_ms: u64, outcome: &'static str) {
        self.count_for(Who::Key(key_id.to_owned()), now_ms, outcome);
    }

    /// [`Usage::count`] for a request that presented the key's previous secret.
    pub fn count_previous(&self, key_id: &str, now_ms: u64, outcome: &'static str) {
        self.count_for(Who::PreviousSecret(key_id.to_owned()), now_ms, outcome);
    }

    /// Counts one request of `who` with `outcome`. No host call.
    pub fn count_for(&self, who: Who, now_ms: u64, outcome: &'static str) {
        let secs = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        let minute = secs - secs.rem_euclid(60);
        let counted = self.tally.try_borrow_mut().is_ok_and(|mut t| t.count(who, minute, outcome));
        if !counted {
            self.dropped.set(self.dropped.get().saturating_add(1));
        }
    }

    /// On the root context's tick: adds this worker's counts to the proxy's pending counts and,
    /// when it is this worker's turn and there is something to send, starts a report.
    /// `feed_seq` is the change-feed position the proxy has applied.
    pub fn tick<H: Host + ?Sized>(&self, host: &H, target: &KeyService, feed_seq: u64) -> Tick {
        let mut dropped = self.dropped.replace(0);
        let counts = self.tally.try_borrow_mut().map(|mut t| t.take()).unwrap_or_default();
        let empty = Record::default().encode();
        if !counts.is_empty() {
            let added = cas_apply(host, &self.record_key, CAS_RETRIES, Some(&empty), |current| {
                let mut record = Record::read(current);
                let lost = merge(&mut record.pending, &counts);
                Cas::Write(record.encode(), lost)
            });
            dropped = dropped.saturating_add(match added {
                Some(lost) => lost,
                None => counts.iter().fold(0u64, |n, c| n.saturating_add(c.count)),
            });
        }
        Tick { dropped, started: self.report(host, target, feed_seq, &empty) }
    }

    /// Starts a report if it is this worker's turn; `empty` is an empty record (what a record
    /// that does not exist yet is created as).
    fn report<H: Host + ?Sized>(
        &self,
        host: &H,
        target: &KeyService,
        feed_seq: u64,
        empty: &[u8],
    ) -> Option<u32> {
        let now = host.now_ms();
        let lease = now.saturating_add(millis(target.timeout)).saturating_add(1_000);
        let next_turn = now.saturating_add(millis(self.interval));
        let batch = cas_apply(host, &self.record_key, CAS_RETRIES, Some(empty), |current| {
            let mut record = Record::read(current);
            if record.busy_until_ms > now {
                return Cas::Keep(None);
            }
            if record.inflight.is_none() {
                if record.pending.is_empty() {
                    return Cas::Keep(None);
                }
                let batch = record.next_batch.max(self.first_batch);
                record.next_batch = batch.saturating_add(1);
                record.inflight = Some(v1::ReportUsageRequest {
                    gateway: self.gateway.clone(),
                    batch,
                    feed_seq,
                    counts: std::mem::take(&mut record.pending),
                });
            }
            record.busy_until_ms = lease;
            let request = record.inflight.clone();
            Cas::Write(record.encode(), request)
        })??;
        let auth = target.bearer();
        let metadata = [("authorization", auth.as_bytes())];
        match host.grpc_call(
            &target.cluster,
            tollgate_proto::KEY_SERVICE,
            "ReportUsage",
            &metadata,
            &batch.encode_to_vec(),
            target.timeout,
        ) {
            Ok(token) => {
                self.sent.set(Some(batch.batch));
                Some(token)
            }
            Err(_) => {
                self.release(host, None, next_turn);
                None
            }
        }
    }

    /// The answer to this worker's report: an acknowledged batch leaves the record; otherwise it
    /// stays, to be sent again with its number. Returns whether the key service took it.
    pub fn done<H: Host + ?Sized>(&self, host: &H, status: u32) -> bool {
        let sent = self.sent.take();
        let ok = status == grpc_status::OK;
        let next_turn = host.now_ms().saturating_add(millis(self.interval));
        self.release(host, sent.filter(|_| ok), next_turn);
        if ok == self.failing.get() {
            self.failing.set(!ok);
            let line = if ok {
                format!("usage: reports to the key service resumed as `{}`", self.gateway)
            } else {
                let detail = host.grpc_status_message().unwrap_or_default();
                format!(
                    "usage: the key service did not take a report (gRPC status {status}): {detail}; sent again later"
                )
            };
            host.log(if ok { LogLevel::Info } else { LogLevel::Warn }, &line);
        }
        ok
    }

    /// Ends this worker's turn: clears batch `acknowledged` from the record, and lets the next
    /// report start at `next_turn`.
    fn release<H: Host + ?Sized>(&self, host: &H, acknowledged: Option<u64>, next_turn: u64) {
        let _ = cas_apply(host, &self.record_key, CAS_RETRIES, None, |current| {
            let mut record = Record::read(current);
            if let Some(batch) = acknowledged
                && record.inflight.as_ref().is_some_and(|r| r.batch == batch)
            {
                record.inflight = None;
            }
            record.busy_until_ms = next_turn;
            Cas::Write(record.encode(), ())
        });
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Usage reporting for a filter that has no key service of its own (jwt-auth, rate-limit): the
/// counts, where they go (`usage.key_service`), and the report in flight.
#[derive(Debug)]
pub struct Reporter {
    pub usage: Usage,
    target: KeyService,
    call: Cell<Option<u32>>,
}

/// What a [`Reporter`]'s answer was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// Not this reporter's call.
    NotMine,
    Ok,
    Failed,
}

impl Reporter {
    /// The reporter a filter's `usage` block asks for, its record under `prefix`.
    pub fn configured<H: Host + ?Sized>(
        host: &H,
        config: Option<&(UsageConfig, KeyService)>,
        prefix: &str,
    ) -> Option<Reporter> {
        let (usage, target) = config?;
        let usage = Usage::configured(host, usage, prefix)?;
        Some(Reporter { usage, target: target.clone(), call: Cell::new(None) })
    }

    /// On the root context's tick (see [`Usage::tick`]); requests that could not be counted.
    pub fn tick<H: Host + ?Sized>(&self, host: &H) -> u64 {
        let tick = self.usage.tick(host, &self.target, 0);
        if let Some(token) = tick.started {
            self.call.set(Some(token));
        }
        tick.dropped
    }

    /// A gRPC answer to the root context: this reporter's, or not.
    pub fn done<H: Host + ?Sized>(&self, host: &H, token: u32, status: u32) -> Reported {
        if self.call.get() != Some(token) {
            return Reported::NotMine;
        }
        self.call.set(None);
        if self.usage.done(host, status) { Reported::Ok } else { Reported::Failed }
    }

    /// How often the root context must tick for this reporter.
    pub fn tick_period(&self) -> Duration {
        Duration::from_secs(1).min(self.usage.interval)
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::mock::MockHost;

    fn target() -> KeyService {
        crate::mock::key_service()
    }

    fn usage(seed: u64) -> Usage {
        Usage::new("p.usage", "gw-1".to_owned(), Duration::from_secs(5), seed)
    }

    /// The batch of the latest ReportUsage call.
    #[allow(clippy::expect_used, clippy::unwrap_used)]
    fn last_batch(host: &MockHost) -> v1::ReportUsageRequest {
        let call = host.calls().into_iter().rev().find(|c| c.method == "ReportUsage").expect("a report");
        v1::ReportUsageRequest::decode(call.message.as_slice()).unwrap()
    }

    fn total(batch: &v1::ReportUsageRequest) -> u64 {
        batch.counts.iter().map(|c| c.count).sum()
    }

    #[test]
    fn counts_from_every_worker_go_out_in_one_batch_from_one_worker() {
        let a = MockHost::new();
        let b = MockHost::sharing_with(&a);
        let (ua, ub) = (usage(1), usage(2));
        let now = a.now_ms();
        for _ in 0..3 {
            ua.count("key_1", now, "allowed");
        }
        ub.count("key_1", now, "allowed");
        ub.count("key_2", now, "revoked_key");
        // b flushes first (nothing of a's yet), and it is its turn: a batch goes out with b's.
        let tick_b = ub.tick(&*b, &target(), 9);
        assert!(tick_b.started.is_some());
        // a's tick adds its counts to the pending ones; the lease is b's.
        assert_eq!(ua.tick(&*a, &target(), 9).started, None);
        let first = last_batch(&b);
        assert_eq!((first.gateway.as_str(), first.feed_seq, total(&first)), ("gw-1", 9, 2));
        assert!(ub.done(&*b, grpc_status::OK));
        // The next turn, after the interval: a's three, in the next batch.
        a.advance(Duration::from_secs(6));
        let tick = ua.tick(&*a, &target(), 10);
        assert!(tick.started.is_some());
        let second = last_batch(&a);
        assert_eq!(total(&second), 3);
        assert_eq!(second.batch, first.batch + 1, "numbered in order");
        assert_eq!(second.counts[0].minute % 60, 0);
    }

    /// Requests with a key's previous secret are counted apart from those with its current one,
    /// through the proxy's pending counts (two workers' counts merged) into the batch.
    #[test]
    fn previous_secret_uses_stay_apart_from_current_ones_in_the_batch() {
        let a = MockHost::new();
        let b = MockHost::sharing_with(&a);
        let (ua, ub) = (usage(5), usage(6));
        let now = a.now_ms();
        ua.count("key_1", now, "allowed");
        ua.count_previous("key_1", now, "allowed");
        ub.count_previous("key_1", now, "allowed");
        assert!(ub.tick(&*b, &target(), 1).started.is_some());
        assert!(ub.done(&*b, grpc_status::OK));
        assert_eq!(ua.tick(&*a, &target(), 1).started, None);
        a.advance(Duration::from_secs(6));
        assert!(ua.tick(&*a, &target(), 1).started.is_some());
        let mut counts: Vec<(String, bool, u64)> =
            last_batch(&a).counts.into_iter().map(|c| (c.key_id, c.previous_secret, c.count)).collect();
        counts.sort();
        assert_eq!(counts, [("key_1".to_owned(), false, 1), ("key_1".to_owned(), true, 1)]);
        let first: Vec<bool> = last_batch(&b).counts.iter().map(|c| c.previous_secret).collect();
        assert_eq!(first, [true], "b's one request, with the previous secret");
    }

    #[test]
    fn a_batch_that_was_not_acknowledged_is_sent_again_with_its_number_and_nothing_else() {
        let host = MockHost::new();
        let u = usage(7);
        let now = host.now_ms();
        u.count("key_1", now, "allowed");
        u.tick(&*host, &target(), 1);
        let first = last_batch(&host);
        assert!(!u.done(&*host, grpc_status::UNAVAILABLE));
        // More requests meanwhile.
        u.count("key_1", now, "allowed");
        u.count("key_1", now, "allowed");
        host.advance(Duration::from_secs(6));
        u.tick(&*host, &target(), 1);
        assert_eq!(last_batch(&host), first, "the same batch, number and counts");
        assert!(u.done(&*host, grpc_status::OK));
        host.advance(Duration::from_secs(6));
        u.tick(&*host, &target(), 1);
        let second = last_batch(&host);
        assert_eq!((second.batch, total(&second)), (first.batch + 1, 2));
    }

    #[test]
    fn nothing_is_sent_when_nothing_was_counted_and_proxies_number_apart() {
        let host = MockHost::new();
        let u = usage(3);
        assert_eq!(u.tick(&*host, &target(), 0), Tick::default());
        assert!(host.calls().is_empty());
        assert_ne!(usage(3).first_batch, usage(4).first_batch);
        assert!(usage(u64::MAX).first_batch < 1 << 63, "below what the key service takes");
    }

    #[test]
    fn a_full_tally_drops_and_counts_what_it_cannot_keep() {
        let host = MockHost::new();
        let u = usage(1);
        let now = host.now_ms();
        for i in 0..MAX_TALLY + 5 {
            u.count(&format!("key_{i}"), now, "allowed");
        }
        u.count("key_0", now, "allowed"); // a count already held still counts
        let tick = u.tick(&*host, &target(), 0);
        assert_eq!(tick.dropped, 5);
        assert_eq!(total(&last_batch(&host)), MAX_TALLY as u64 + 1);
    }

    #[test]
    fn a_record_that_cannot_be_read_is_taken_as_empty() {
        assert_eq!(Record::read(Some(b"garbage")), Record::default());
        let r = Record {
            busy_until_ms: 5,
            next_batch: 9,
            inflight: Some(v1::ReportUsageRequest { gateway: "g".into(), batch: 8, ..Default::default() }),
            pending: vec![v1::UsageCount {
                key_id: "k".into(),
                minute: 60,
                outcome: "allowed".into(),
                count: 2,
                ..Default::default()
            }],
        };
        assert_eq!(Record::read(Some(&r.encode())), r);
    }
}
