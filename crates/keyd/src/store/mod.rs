//! Storage behind a trait. Methods are synchronous; the service calls them from
//! `tokio::task::spawn_blocking`. Every mutation writes its change-feed rows and its audit row in
//! the same transaction as the data, so a crash never leaves half of it.

mod sqlite;

pub use sqlite::SqliteStore;

use crate::error::Result;
use crate::master::Sealed;
use crate::model::{
    AuditEntry, Change, Consumer, ConsumerPatch, Ctx, Key, KeyCounts, KeyFilter, KeyPatch, Lookup,
    NewConsumer, NewKey, Rotation, SigningLookup,
};

/// Persistent state of the key service.
pub trait Store: Send + Sync + 'static {
    /// Fails with `AlreadyExists` when the id or the name is taken.
    fn create_consumer(&self, ctx: &Ctx, consumer: NewConsumer) -> Result<Consumer>;
    /// Looks up by id first, then by name.
    fn get_consumer(&self, id_or_name: &str) -> Result<Consumer>;
    /// Consumers after `after` (a position from an earlier page) in creation order.
    fn list_consumers(&self, after: Option<i64>, limit: usize) -> Result<Vec<Consumer>>;
    fn update_consumer(&self, ctx: &Ctx, id_or_name: &str, patch: ConsumerPatch) -> Result<Consumer>;
    /// Revokes every active key of the consumer, then deletes it. Returns how many keys it revoked.
    fn delete_consumer(&self, ctx: &Ctx, id_or_name: &str) -> Result<u32>;

    fn create_key(&self, ctx: &Ctx, key: NewKey) -> Result<Key>;
    fn get_key(&self, id: &str) -> Result<Key>;
    /// Keys after `after` (a position from an earlier page) in creation order.
    fn list_keys(&self, filter: &KeyFilter, after: Option<i64>, limit: usize) -> Result<Vec<Key>>;
    /// How many keys are active, revoked and expired at `now`. Reads every key row once.
    fn count_keys(&self, now: i64) -> Result<KeyCounts>;
    fn update_key(&self, ctx: &Ctx, id: &str, patch: KeyPatch) -> Result<Key>;
    /// Revoking a revoked key is a no-op that returns it unchanged.
    fn revoke_key(&self, ctx: &Ctx, id: &str, reason: &str) -> Result<Key>;
    fn rotate_key(&self, ctx: &Ctx, rotation: Rotation) -> Result<Key>;

    /// Finds a secret by its keyed hash.
    fn lookup_secret(&self, hash: &[u8; 32]) -> Result<Lookup>;
    /// Records last-use times (key id, Unix seconds); older times never overwrite newer ones.
    fn record_usage(&self, used: &[(String, i64)]) -> Result<()>;

    /// Changes with `seq > after`, oldest first, and the feed head.
    fn list_changes(&self, after: u64, limit: usize) -> Result<(Vec<Change>, u64)>;
    /// Audit entries with `seq > after`, oldest first.
    fn list_audit(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>>;
    /// How many audit entries this store has committed since it was opened (a running count in
    /// memory, not a query).
    fn audit_written(&self) -> u64;

    /// A key's signing material by key id.
    fn get_signing(&self, key_id: &str) -> Result<SigningLookup>;
    /// Every encrypted signing secret, by key id.
    fn list_sealed(&self) -> Result<Vec<(String, Sealed)>>;
    /// Replaces encrypted secrets (key id, the version it was read under, the new ciphertext)
    /// in one transaction; a row no longer under the read version is left alone. Returns how
    /// many rows changed.
    fn reseal(&self, updates: &[(String, u32, Sealed)]) -> Result<usize>;
}
