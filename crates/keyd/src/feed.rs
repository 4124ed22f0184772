//! The change feed behind WatchChanges: one reader follows the store and fans new changes out to
//! every watching stream.
//!
//! The reader keeps the newest changes in memory (the tail, at most `capacity` of them) and
//! announces each advance on a watch channel. It reads the store when a mutation of this process
//! commits, and every poll interval for writers elsewhere. A stream serves itself from the tail
//! and reads the store on its own only when its position is older than the tail: it started
//! behind, or its client read so slowly that the changes it still needs were dropped from memory.
//! Either way it reads from its own position, so it never skips a change; at most
//! [`CATCH_UP_READS`] such reads run at once, so a crowd of streams never takes a crowd of
//! threads.
//!
//! Order and completeness: the store numbers changes in commit order and commits one writer at a
//! time, so reading `seq > n` gives a prefix of everything after `n`. The tail holds exactly the
//! changes with `start < seq <= end`. A stream at position `pos` takes what follows `pos` from
//! the tail when `pos >= start`, and from the store when `pos < start`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tollgate_proto::v1 as pb;

use crate::convert;
use crate::error::{Error, Result};
use crate::service::blocking;
use crate::store::Store;
use crate::validate::MAX_CHANGES;

/// How many of the newest changes the tail keeps (a few hundred kilobytes at most).
pub const TAIL_CAPACITY: usize = 4096;

/// How many streams may read the store at once to catch up.
pub const CATCH_UP_READS: usize = 2;

/// How many changes a stream takes at a time, from the tail or the store: what one stream holds
/// in memory besides its send buffer.
const CHUNK: usize = 256;

/// The changes with `start < seq <= end`, oldest first.
#[derive(Debug)]
struct Tail {
    start: u64,
    end: u64,
    changes: VecDeque<pb::Change>,
}

/// What a stream found in the tail.
enum Found {
    /// Changes after its position, copied out.
    Copied,
    /// Nothing after its position yet.
    Nothing,
    /// Its position is older than the tail.
    Behind,
}

struct Shared {
    store: Arc<dyn Store>,
    tail: RwLock<Tail>,
    capacity: usize,
    /// The tail's `end`, sent after every append.
    head: watch::Sender<u64>,
    catch_up: Semaphore,
    /// Open streams and ListChanges calls in flight (see [`Feed::readers`]).
    readers: AtomicUsize,
}

impl Shared {
    // The tail is only changed by pushing and popping, which cannot leave it half-done, so a
    // poisoned lock still guards a consistent tail.
    fn append(&self, changes: Vec<crate::model::Change>) {
        let end = {
            let mut tail = self.tail.write().unwrap_or_else(PoisonError::into_inner);
            for change in changes {
                tail.end = change.seq;
                tail.changes.push_back(convert::change_to_proto(change));
            }
            while tail.changes.len() > self.capacity {
                match tail.changes.pop_front() {
                    Some(dropped) => tail.start = dropped.seq,
                    None => break,
                }
            }
            tail.end
        };
        self.head.send_replace(end);
    }

    fn copy_after(&self, pos: u64, into: &mut VecDeque<pb::Change>) -> Found {
        let tail = self.tail.read().unwrap_or_else(PoisonError::into_inner);
        if pos < tail.start {
            return Found::Behind;
        }
        let from = tail.changes.partition_point(|c| c.seq <= pos);
        if from == tail.changes.len() {
            return Found::Nothing;
        }
        into.extend(tail.changes.range(from..).take(CHUNK).cloned());
        Found::Copied
    }
}

/// The shared change feed. Cloning is cheap; all clones share one reader.
#[derive(Clone)]
pub struct Feed {
    shared: Arc<Shared>,
    wake: Arc<watch::Sender<()>>,
    shutdown: watch::Receiver<bool>,
}

impl Feed {
    /// Reads the feed head and starts the reader, which keeps up to `capacity` changes in
    /// memory, reads the store on [`Feed::notify`] and every `poll_interval`, and stops when
    /// `shutdown` becomes `true` or every clone of the feed is gone.
    pub async fn start(
        store: Arc<dyn Store>,
        shutdown: watch::Receiver<bool>,
        poll_interval: Duration,
        capacity: usize,
    ) -> Result<(Self, JoinHandle<()>)> {
        let (_, head) = blocking(&store, |s| s.list_changes(u64::MAX, 0)).await?;
        // Start the tail `capacity` changes back, so streams resuming near the head (after a
        // restart, say) are served from memory.
        let start = head.saturating_sub(u64::try_from(capacity).unwrap_or(u64::MAX));
        let (head_tx, _) = watch::channel(start);
        let shared = Arc::new(Shared {
            store,
            tail: RwLock::new(Tail { start, end: start, changes: VecDeque::new() }),
            capacity,
            head: head_tx,
            catch_up: Semaphore::new(CATCH_UP_READS),
            readers: AtomicUsize::new(0),
        });
        let (wake, woken) = watch::channel(());
        let reader =
            tokio::spawn(read_forward(Arc::clone(&shared), start, woken, shutdown.clone(), poll_interval));
        Ok((Self { shared, wake: Arc::new(wake), shutdown }, reader))
    }

    /// Tells the reader (and whoever follows [`Feed::commits`]) that a mutation committed.
    pub fn notify(&self) {
        self.wake.send_replace(());
    }

    /// [`Feed::notify`] as a function holding only the wake-up (not the feed and its store):
    /// what the store's listener calls when another replica commits.
    pub fn waker(&self) -> impl Fn() + Send + Sync + 'static {
        let wake = Arc::clone(&self.wake);
        move || {
            wake.send_replace(());
        }
    }

    /// Changes each time this process commits a mutation (see [`Feed::notify`]).
    pub fn commits(&self) -> watch::Receiver<()> {
        self.wake.subscribe()
    }

    /// The newest change the reader has read from the store: what streams are served up to. It
    /// follows a commit of this process within moments, and other writers within the poll
    /// interval.
    pub fn head(&self) -> u64 {
        *self.shared.head.borrow()
    }

    /// How many clients read the feed right now: open WatchChanges streams (each waits for the
    /// next change, or is sending one) plus ListChanges calls in flight (a plain poll that
    /// never waits, counted while it is served; see [`Feed::reading`]).
    pub fn readers(&self) -> usize {
        self.shared.readers.load(Ordering::Relaxed)
    }

    /// Counts one reader in [`Feed::readers`] until the guard is dropped.
    pub fn reading(&self) -> Reading {
        self.shared.readers.fetch_add(1, Ordering::Relaxed);
        Reading { shared: Arc::clone(&self.shared) }
    }

    /// A stream of the changes after `after`.
    pub fn watch(&self, after: u64) -> Watcher {
        Watcher {
            _reading: self.reading(),
            cursor: Cursor {
                shared: Arc::clone(&self.shared),
                pos: after,
                pending: VecDeque::new(),
                head: self.shared.head.subscribe(),
            },
            shutdown: self.shutdown.clone(),
            done: false,
        }
    }

    #[cfg(test)]
    fn tail_bounds(&self) -> (u64, u64, usize) {
        let tail = self.shared.tail.read().unwrap_or_else(PoisonError::into_inner);
        (tail.start, tail.end, tail.changes.len())
    }
}

/// The reader: appends the changes after `end` to the tail whenever woken or polled.
async fn read_forward(
    shared: Arc<Shared>,
    mut end: u64,
    mut wake: watch::Receiver<()>,
    mut shutdown: watch::Receiver<bool>,
    poll_interval: Duration,
) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        // Mark the wake-up seen before reading, so a commit after the read wakes us again.
        wake.borrow_and_update();
        let after = end;
        match blocking(&shared.store, move |s| s.list_changes(after, MAX_CHANGES)).await {
            Ok((changes, _)) => {
                let full = changes.len() == MAX_CHANGES;
                if let Some(last) = changes.last() {
                    end = last.seq;
                    shared.append(changes);
                }
                if full {
                    continue;
                }
            }
            // Streams wait meanwhile and miss nothing: the next read starts from the same place.
            Err(err) => tracing::warn!(error = %err, after, "change feed: could not read new changes"),
        }
        tokio::select! {
            woken = wake.changed() => if woken.is_err() { return },
            () = tokio::time::sleep(poll_interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// One stream's position in the feed.
struct Cursor {
    shared: Arc<Shared>,
    /// The newest change taken (delivered or in `pending`).
    pos: u64,
    pending: VecDeque<pb::Change>,
    head: watch::Receiver<u64>,
}

impl Cursor {
    async fn next(&mut self) -> Result<pb::Change> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Ok(change);
            }
            // Mark the head seen before looking, so an append after the look wakes us.
            self.head.borrow_and_update();
            match self.shared.copy_after(self.pos, &mut self.pending) {
                Found::Copied | Found::Nothing => {}
                Found::Behind => self.catch_up().await?,
            }
            match self.pending.back() {
                Some(last) => self.pos = last.seq,
                None => self
                    .head
                    .changed()
                    .await
                    .map_err(|_| Error::Internal("change feed: the reader is gone".to_owned()))?,
            }
        }
    }

    /// Reads the changes after the position from the store.
    async fn catch_up(&mut self) -> Result<()> {
        let _permit = self.shared.catch_up.acquire().await.map_err(|e| Error::internal("change feed", e))?;
        let after = self.pos;
        let (changes, _) = blocking(&self.shared.store, move |s| s.list_changes(after, CHUNK)).await?;
        self.pending.extend(changes.into_iter().map(convert::change_to_proto));
        Ok(())
    }
}

/// One reader of the feed, counted in [`Feed::readers`] while it lives.
pub struct Reading {
    shared: Arc<Shared>,
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.shared.readers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The changes after a position, in order, for one WatchChanges stream.
pub struct Watcher {
    _reading: Reading,
    cursor: Cursor,
    shutdown: watch::Receiver<bool>,
    done: bool,
}

impl Watcher {
    /// The next change. `None` once the server shuts down, and after an error.
    pub async fn next(&mut self) -> Option<Result<pb::Change>> {
        if self.done {
            return None;
        }
        let next = tokio::select! {
            biased;
            _ = self.shutdown.wait_for(|stop| *stop) => None,
            next = self.cursor.next() => Some(next),
        };
        self.done = !matches!(next, Some(Ok(_)));
        next
    }

    /// Resolves when the server shuts down.
    pub async fn stopped(&mut self) {
        let _ = self.shutdown.wait_for(|stop| *stop).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::master::Sealed;
    use crate::model::{
        AuditEntry, Change, Consumer, ConsumerPatch, Ctx, Key, KeyCounts, KeyFilter, KeyPatch, Lookup,
        NewConsumer, NewKey, Rotation, SigningLookup,
    };
    use crate::store::SqliteStore;

    /// A SQLite store that counts `list_changes` calls, and how many run at once.
    struct Counting {
        inner: SqliteStore,
        calls: AtomicUsize,
        running: AtomicUsize,
        most_at_once: AtomicUsize,
        /// How long each `list_changes` takes at least, so that concurrent calls overlap.
        delay: Duration,
    }

    impl Counting {
        fn open(dir: &std::path::Path, delay: Duration) -> Arc<Self> {
            let inner = SqliteStore::open(&dir.join("keys.db")).unwrap();
            inner
                .create_consumer(
                    &ctx(),
                    NewConsumer { id: "c".into(), name: "c".into(), metadata: Default::default() },
                )
                .unwrap();
            Arc::new(Self {
                inner,
                calls: AtomicUsize::new(0),
                running: AtomicUsize::new(0),
                most_at_once: AtomicUsize::new(0),
                delay,
            })
        }

        /// Commits `n` changes; returns the last seq.
        fn commit(&self, n: usize) -> u64 {
            for _ in 0..n {
                self.inner.update_consumer(&ctx(), "c", ConsumerPatch::default()).unwrap();
            }
            self.inner.list_changes(0, 0).unwrap().1
        }
    }

    fn ctx() -> Ctx {
        Ctx { actor: "test".into(), now: 1_000 }
    }

    impl Store for Counting {
        fn create_consumer(&self, ctx: &Ctx, consumer: NewConsumer) -> Result<Consumer> {
            self.inner.create_consumer(ctx, consumer)
        }
        fn get_consumer(&self, id_or_name: &str) -> Result<Consumer> {
            self.inner.get_consumer(id_or_name)
        }
        fn list_consumers(&self, after: Option<i64>, limit: usize) -> Result<Vec<Consumer>> {
            self.inner.list_consumers(after, limit)
        }
        fn update_consumer(&self, ctx: &Ctx, id_or_name: &str, patch: ConsumerPatch) -> Result<Consumer> {
            self.inner.update_consumer(ctx, id_or_name, patch)
        }
        fn delete_consumer(&self, ctx: &Ctx, id_or_name: &str) -> Result<u32> {
            self.inner.delete_consumer(ctx, id_or_name)
        }
        fn create_key(&self, ctx: &Ctx, key: NewKey) -> Result<Key> {
            self.inner.create_key(ctx, key)
        }
        fn get_key(&self, id: &str) -> Result<Key> {
            self.inner.get_key(id)
        }
        fn list_keys(&self, filter: &KeyFilter, after: Option<i64>, limit: usize) -> Result<Vec<Key>> {
            self.inner.list_keys(filter, after, limit)
        }
        fn list_expiring_keys(&self, now: i64, until: i64, limit: usize) -> Result<Vec<Key>> {
            self.inner.list_expiring_keys(now, until, limit)
        }
        fn count_keys(&self, now: i64) -> Result<KeyCounts> {
            self.inner.count_keys(now)
        }
        fn update_key(&self, ctx: &Ctx, id: &str, patch: KeyPatch) -> Result<Key> {
            self.inner.update_key(ctx, id, patch)
        }
        fn revoke_key(&self, ctx: &Ctx, id: &str, reason: &str) -> Result<Key> {
            self.inner.revoke_key(ctx, id, reason)
        }
        fn rotate_key(&self, ctx: &Ctx, rotation: Rotation) -> Result<Key> {
            self.inner.rotate_key(ctx, rotation)
        }
        fn purge_cache(&self, ctx: &Ctx, purge: &crate::model::CachePurge) -> Result<u64> {
            self.inner.purge_cache(ctx, purge)
        }
        fn lookup_secret(&self, hash: &[u8; 32]) -> Result<Lookup> {
            self.inner.lookup_secret(hash)
        }
        fn record_usage(&self, used: &[(String, i64)]) -> Result<()> {
            self.inner.record_usage(used)
        }
        fn report_usage(
            &self,
            report: &crate::model::UsageReport,
            now: i64,
        ) -> Result<crate::model::UsageApplied> {
            self.inner.report_usage(report, now)
        }
        fn usage(
            &self,
            query: &crate::model::UsageQuery,
        ) -> Result<(Vec<crate::model::KeyUsage>, Vec<crate::model::GatewayReport>, u64)> {
            self.inner.usage(query)
        }
        fn caller_usage(
            &self,
            query: &crate::model::UsageQuery,
        ) -> Result<(Vec<crate::model::SubjectUsage>, Vec<crate::model::LimitUsage>)> {
            self.inner.caller_usage(query)
        }
        fn usage_series(
            &self,
            key_ids: Option<&[String]>,
            since: i64,
            until: i64,
            step: i64,
        ) -> Result<Vec<crate::model::UsagePoint>> {
            self.inner.usage_series(key_ids, since, until, step)
        }
        fn list_changes(&self, after: u64, limit: usize) -> Result<(Vec<Change>, u64)> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_at_once.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(self.delay);
            let out = self.inner.list_changes(after, limit);
            self.running.fetch_sub(1, Ordering::SeqCst);
            out
        }
        fn list_audit(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>> {
            self.inner.list_audit(after, limit)
        }
        fn list_audit_recent(
            &self,
            filter: &crate::model::AuditFilter,
            before: Option<u64>,
            limit: usize,
        ) -> Result<Vec<AuditEntry>> {
            self.inner.list_audit_recent(filter, before, limit)
        }
        fn audit_written(&self) -> u64 {
            self.inner.audit_written()
        }
        fn get_signing(&self, key_id: &str) -> Result<SigningLookup> {
            self.inner.get_signing(key_id)
        }
        fn list_sealed(&self) -> Result<Vec<(String, Sealed)>> {
            self.inner.list_sealed()
        }
        fn reseal(&self, updates: &[(String, u32, Sealed)]) -> Result<usize> {
            self.inner.reseal(updates)
        }
        fn create_webhook(
            &self,
            ctx: &Ctx,
            hook: crate::webhooks::NewWebhook,
        ) -> Result<crate::webhooks::Webhook> {
            self.inner.create_webhook(ctx, hook)
        }
        fn list_webhooks(&self) -> Result<Vec<crate::webhooks::Webhook>> {
            self.inner.list_webhooks()
        }
        fn update_webhook(
            &self,
            ctx: &Ctx,
            id: &str,
            update: &crate::webhooks::WebhookUpdate,
        ) -> Result<crate::webhooks::Webhook> {
            self.inner.update_webhook(ctx, id, update)
        }
        fn delete_webhook(&self, ctx: &Ctx, id: &str) -> Result<()> {
            self.inner.delete_webhook(ctx, id)
        }
        fn claim_webhook_messages(
            &self,
            now: i64,
            lease_until: i64,
            limit: usize,
        ) -> Result<Vec<crate::webhooks::Outgoing>> {
            self.inner.claim_webhook_messages(now, lease_until, limit)
        }
        fn finish_webhook_attempt(
            &self,
            attempt: &crate::webhooks::Attempt,
            outcome: crate::webhooks::Outcome,
            disable_after: i64,
        ) -> Result<()> {
            self.inner.finish_webhook_attempt(attempt, outcome, disable_after)
        }
        fn list_webhook_attempts(
            &self,
            webhook_id: Option<&str>,
            limit: usize,
        ) -> Result<Vec<crate::webhooks::Attempt>> {
            self.inner.list_webhook_attempts(webhook_id, limit)
        }
        fn set_rotation_policy(
            &self,
            ctx: &Ctx,
            target: &crate::lifecycle::PolicyTarget,
            policy: &crate::lifecycle::RotationPolicy,
        ) -> Result<crate::lifecycle::PolicyRecord> {
            self.inner.set_rotation_policy(ctx, target, policy)
        }
        fn delete_rotation_policy(&self, ctx: &Ctx, target: &crate::lifecycle::PolicyTarget) -> Result<()> {
            self.inner.delete_rotation_policy(ctx, target)
        }
        fn list_rotation_policies(
            &self,
            consumer: Option<&str>,
        ) -> Result<Vec<crate::lifecycle::PolicyRecord>> {
            self.inner.list_rotation_policies(consumer)
        }
        fn effective_policy(&self, key_id: &str) -> Result<Option<crate::lifecycle::RotationPolicy>> {
            self.inner.effective_policy(key_id)
        }
        fn lifecycle_candidates(
            &self,
            now: i64,
            after: i64,
            limit: usize,
        ) -> Result<Vec<crate::lifecycle::Candidate>> {
            self.inner.lifecycle_candidates(now, after, limit)
        }
        fn apply_transition(&self, ctx: &Ctx, transition: &crate::lifecycle::Transition) -> Result<bool> {
            self.inner.apply_transition(ctx, transition)
        }
        fn take_lease(&self, name: &str, holder: &str, now: i64, until: i64) -> Result<bool> {
            self.inner.take_lease(name, holder, now, until)
        }
        fn record_previous_use(&self, used: &[(String, i64)]) -> Result<()> {
            self.inner.record_previous_use(used)
        }
        fn take_pending_secret(&self, ctx: &Ctx, key_id: &str) -> Result<Option<crate::master::Sealed>> {
            self.inner.take_pending_secret(ctx, key_id)
        }
        fn rotate_webhook_secret(
            &self,
            ctx: &Ctx,
            id: &str,
            sealed: Sealed,
            previous_expires_at: i64,
        ) -> Result<crate::webhooks::Webhook> {
            self.inner.rotate_webhook_secret(ctx, id, sealed, previous_expires_at)
        }
        fn replay_webhook_messages(&self, ctx: &Ctx, since: i64, webhook_id: Option<&str>) -> Result<u64> {
            self.inner.replay_webhook_messages(ctx, since, webhook_id)
        }
        fn prune_webhooks(&self, before: i64, now: i64, limit: usize) -> Result<crate::webhooks::Pruned> {
            self.inner.prune_webhooks(before, now, limit)
        }
        fn list_webhook_secrets(&self) -> Result<Vec<crate::webhooks::SealedSecret>> {
            self.inner.list_webhook_secrets()
        }
        fn reseal_webhook_secrets(
            &self,
            updates: &[(String, crate::webhooks::SecretSlot, u32, Sealed)],
        ) -> Result<usize> {
            self.inner.reseal_webhook_secrets(updates)
        }
        fn listen_for_commits(&self, wake: std::sync::Arc<dyn Fn() + Send + Sync>) {
            self.inner.listen_for_commits(wake);
        }
    }

    // A long poll interval: in these tests the reader moves only when notified.
    const POLL: Duration = Duration::from_secs(3600);
    const WAIT: Duration = Duration::from_secs(10);

    async fn start(store: &Arc<Counting>, capacity: usize) -> (Feed, JoinHandle<()>, watch::Sender<bool>) {
        let (stop, stopped) = watch::channel(false);
        let dyn_store: Arc<dyn Store> = Arc::clone(store) as Arc<dyn Store>;
        let (feed, reader) = Feed::start(dyn_store, stopped, POLL, capacity).await.unwrap();
        (feed, reader, stop)
    }

    /// The next `n` seqs of `watcher`.
    async fn take(watcher: &mut Watcher, n: usize) -> Vec<u64> {
        let mut seqs = Vec::with_capacity(n);
        for _ in 0..n {
            let change = tokio::time::timeout(WAIT, watcher.next()).await.unwrap().unwrap().unwrap();
            seqs.push(change.seq);
        }
        seqs
    }

    /// Waits until the reader has read up to `seq`.
    async fn read_up_to(feed: &Feed, seq: u64) {
        let mut head = feed.shared.head.subscribe();
        tokio::time::timeout(WAIT, head.wait_for(|end| *end >= seq)).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn one_store_read_serves_every_watcher_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Counting::open(dir.path(), Duration::ZERO);
        let (feed, _reader, _stop) = start(&store, TAIL_CAPACITY).await;
        let head = store.commit(0);
        let mut watchers: Vec<Watcher> = (0..100).map(|_| feed.watch(head)).collect();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), watchers[0].next()).await.is_err(),
            "nothing to send before a commit"
        );
        let before = store.calls.load(Ordering::SeqCst);
        let last = store.commit(3);
        feed.notify();
        for watcher in &mut watchers {
            assert_eq!(take(watcher, 3).await, vec![last - 2, last - 1, last]);
        }
        let reads = store.calls.load(Ordering::SeqCst) - before;
        assert!((1..=2).contains(&reads), "{reads} store reads for 100 watchers");
    }

    #[tokio::test]
    async fn a_watcher_that_starts_behind_the_tail_catches_up_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Counting::open(dir.path(), Duration::ZERO);
        let head = store.commit(CHUNK + 10);
        // The tail keeps 4 changes: everything older comes from the store, in chunks.
        let (feed, _reader, _stop) = start(&store, 4).await;
        read_up_to(&feed, head).await;
        assert_eq!(feed.tail_bounds(), (head - 4, head, 4));
        let mut watcher = feed.watch(0);
        let mut expected: Vec<u64> = (1..=head).collect();
        assert_eq!(take(&mut watcher, expected.len()).await, expected);
        let last = store.commit(2);
        feed.notify();
        expected = vec![last - 1, last];
        assert_eq!(take(&mut watcher, 2).await, expected);
    }

    #[tokio::test]
    async fn a_lagging_watcher_rereads_what_the_tail_dropped_and_misses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Counting::open(dir.path(), Duration::ZERO);
        let (feed, _reader, _stop) = start(&store, 8).await;
        let first = store.commit(0) + 1;
        let mut slow = feed.watch(first - 1);
        let mut quick = feed.watch(first - 1);
        let (mut slow_seqs, mut quick_seqs) = (Vec::new(), Vec::new());
        // The slow watcher takes one change, then falls far behind while the tail moves on.
        store.commit(1);
        feed.notify();
        slow_seqs.extend(take(&mut slow, 1).await);
        for _ in 0..10 {
            let last = store.commit(7);
            feed.notify();
            read_up_to(&feed, last).await;
            quick_seqs.extend(take(&mut quick, 7).await);
        }
        let head = store.commit(0);
        let (start, end, len) = feed.tail_bounds();
        assert_eq!((end, len), (head, 8));
        assert!(start > first, "the tail dropped what the slow watcher still needs");
        slow_seqs.extend(take(&mut slow, usize::try_from(head - first).unwrap()).await);
        assert_eq!(slow_seqs, (first..=head).collect::<Vec<_>>());
        quick_seqs.extend(take(&mut quick, 1).await);
        assert_eq!(quick_seqs, (first..=head).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn catch_up_reads_are_bounded_however_many_watchers_start_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Counting::open(dir.path(), Duration::from_millis(5));
        let head = store.commit(20);
        let (feed, _reader, _stop) = start(&store, 4).await;
        read_up_to(&feed, head).await;
        let mut tasks = Vec::new();
        for _ in 0..40 {
            let mut watcher = feed.watch(0);
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for _ in 0..head {
                    seqs.push(watcher.next().await.unwrap().unwrap().seq);
                }
                seqs
            }));
        }
        for task in tasks {
            let seqs = tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
            assert_eq!(seqs, (1..=head).collect::<Vec<_>>());
        }
        let most = store.most_at_once.load(Ordering::SeqCst);
        assert!(most <= CATCH_UP_READS, "{most} store reads at once");
    }

    #[tokio::test]
    async fn readers_are_counted_while_they_live_and_the_head_follows_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let store = Counting::open(dir.path(), Duration::ZERO);
        let (feed, _reader, _stop) = start(&store, TAIL_CAPACITY).await;
        assert_eq!(feed.readers(), 0);
        let head = store.commit(0);
        let mut first = feed.watch(head);
        let second = feed.watch(head);
        let poll = feed.reading();
        assert_eq!(feed.readers(), 3);
        drop(poll);
        drop(second);
        assert_eq!(feed.readers(), 1);
        let last = store.commit(2);
        feed.notify();
        read_up_to(&feed, last).await;
        assert_eq!(feed.head(), last);
        assert_eq!(take(&mut first, 2).await, vec![last - 1, last]);
        drop(first);
        assert_eq!(feed.readers(), 0);
    }

    #[tokio::test]
    async fn shutdown_ends_waiting_watchers_and_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let store = Counting::open(dir.path(), Duration::ZERO);
        let head = store.commit(1);
        let (feed, reader, stop) = start(&store, TAIL_CAPACITY).await;
        let mut waiting = feed.watch(head);
        let mut reading = feed.watch(0);
        assert_eq!(take(&mut reading, 1).await, vec![head]);
        let pending = tokio::spawn(async move { waiting.next().await.is_none() });
        stop.send_replace(true);
        assert!(tokio::time::timeout(WAIT, pending).await.unwrap().unwrap());
        assert!(tokio::time::timeout(WAIT, reading.next()).await.unwrap().is_none());
        assert!(reading.next().await.is_none(), "an ended watcher stays ended");
        tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
        assert!(feed.watch(0).next().await.is_none(), "no stream starts after shutdown");
    }
}
