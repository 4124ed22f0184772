//! SQLite storage: WAL journal, `synchronous=FULL` (an acknowledged write survives a crash), one
//! writer connection and a few reader connections.

mod lifecycle;

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use rusqlite::types::Type;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Store;
use crate::error::{Error, Result};
use crate::files;
use crate::lifecycle::{Candidate, PolicyRecord, PolicyTarget, RotationPolicy, Transition};
use crate::master::Sealed;
use crate::model::{
    AuditEntry, AuditFilter, CachePurge, Change, ChangeKind, Consumer, ConsumerPatch, Ctx, GatewayReport,
    Key, KeyCounts, KeyFilter, KeyPatch, KeyStatus, KeyUsage, LimitUsage, Lookup, NewConsumer, NewKey,
    NewSigning, Rotation, SecretMatch, SigningAlgorithm, SigningLookup, SubjectUsage, UsageApplied,
    UsagePoint, UsageQuery, UsageReport,
};
use crate::webhooks::{
    self, Attempt, EventType, NewWebhook, Outcome, Outgoing, SealedSecret, SecretSlot, Webhook, WebhookUpdate,
};

/// 2: signing material (`signing_keys`). 3: usage (`usage`, `usage_batches`, `gateways`).
/// 4: cache purges on the change feed (`changes.detail`), hourly usage (`usage_hourly`), usage
/// per JWT subject (`subject_usage`) and rate-limit refusals per consumer and rule
/// (`limit_usage`). 5: webhooks (`webhooks`, the outbox `webhook_messages`, the delivery log
/// `webhook_attempts`). 6: rotation policies and the lifecycle scheduler (`rotation_policies`,
/// `lifecycle_notices`, `pending_secrets`, `leases`, `key_secrets.last_used_at`). 7: webhook secret rotation and failing time (`webhooks.previous_*`,
/// `webhooks.failing_since`), the days a consumer's quota ran out (`quota_exhausted`), and the
/// indexes that pruning and replay read by time.
const SCHEMA_VERSION: i64 = 7;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS consumers (
    pos        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT    NOT NULL UNIQUE,
    name       TEXT    NOT NULL UNIQUE,
    metadata   TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    pos                     INTEGER PRIMARY KEY AUTOINCREMENT,
    id                      TEXT    NOT NULL UNIQUE,
    consumer_id             TEXT    NOT NULL,
    name                    TEXT    NOT NULL,
    display_prefix          TEXT    NOT NULL,
    scopes                  TEXT    NOT NULL,
    metadata                TEXT    NOT NULL,
    rate_limit              TEXT,
    expires_at              INTEGER NOT NULL,
    created_at              INTEGER NOT NULL,
    last_used_at            INTEGER NOT NULL DEFAULT 0,
    revoked_at              INTEGER NOT NULL DEFAULT 0,
    revoke_reason           TEXT    NOT NULL DEFAULT '',
    previous_display_prefix TEXT    NOT NULL DEFAULT '',
    previous_expires_at     INTEGER NOT NULL DEFAULT 0,
    rotated_at              INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS keys_by_consumer ON keys (consumer_id, pos);
-- The dashboard's keys that expire soon.
CREATE INDEX IF NOT EXISTS keys_by_expiry ON keys (expires_at) WHERE expires_at != 0;
-- Keyed hashes of secrets: the current one (expires_at = 0) and at most one previous one.
CREATE TABLE IF NOT EXISTS key_secrets (
    hash           BLOB    PRIMARY KEY,
    key_id         TEXT    NOT NULL,
    display_prefix TEXT    NOT NULL,
    expires_at     INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS key_secrets_by_key ON key_secrets (key_id);
CREATE TABLE IF NOT EXISTS changes (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT    NOT NULL,
    key_id      TEXT    NOT NULL,
    consumer_id TEXT    NOT NULL,
    at          INTEGER NOT NULL,
    -- What a cache purge purges (JSON); empty for every other kind.
    detail      TEXT    NOT NULL DEFAULT ''
);
-- HTTP message signature material: an Ed25519 public key, or an HMAC secret encrypted with
-- AES-256-GCM under master-key version `master_version` (the master key is not in the database).
CREATE TABLE IF NOT EXISTS signing_keys (
    key_id         TEXT    PRIMARY KEY,
    algorithm      TEXT    NOT NULL,
    public_key     BLOB,
    nonce          BLOB,
    ciphertext     BLOB,
    master_version INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
-- Requests per key, minute and outcome, as the gateways reported them.
CREATE TABLE IF NOT EXISTS usage (
    key_id  TEXT    NOT NULL,
    minute  INTEGER NOT NULL,
    outcome TEXT    NOT NULL,
    count   INTEGER NOT NULL,
    PRIMARY KEY (key_id, minute, outcome)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_by_minute ON usage (minute);
-- The same, summed by the hour, for minutes older than USAGE_MINUTES_KEPT.
CREATE TABLE IF NOT EXISTS usage_hourly (
    key_id  TEXT    NOT NULL,
    hour    INTEGER NOT NULL,
    outcome TEXT    NOT NULL,
    count   INTEGER NOT NULL,
    PRIMARY KEY (key_id, hour, outcome)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_hourly_by_hour ON usage_hourly (hour);
-- Requests per verified JWT subject (`<iss> <sub>`), minute and outcome (jwt-auth).
CREATE TABLE IF NOT EXISTS subject_usage (
    subject TEXT    NOT NULL,
    minute  INTEGER NOT NULL,
    outcome TEXT    NOT NULL,
    count   INTEGER NOT NULL,
    PRIMARY KEY (subject, minute, outcome)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS subject_usage_by_minute ON subject_usage (minute);
-- Requests a rate-limit rule refused, per consumer, rule and minute (rate-limit).
CREATE TABLE IF NOT EXISTS limit_usage (
    consumer_id TEXT    NOT NULL,
    rule        TEXT    NOT NULL,
    minute      INTEGER NOT NULL,
    count       INTEGER NOT NULL,
    PRIMARY KEY (consumer_id, rule, minute)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS limit_usage_by_minute ON limit_usage (minute);
-- The batches applied, so that one sent again is not counted twice.
CREATE TABLE IF NOT EXISTS usage_batches (
    gateway TEXT    NOT NULL,
    batch   INTEGER NOT NULL,
    at      INTEGER NOT NULL,
    PRIMARY KEY (gateway, batch)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gateways (
    name           TEXT    PRIMARY KEY,
    last_report_at INTEGER NOT NULL,
    feed_seq       INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    key_id      TEXT    NOT NULL,
    consumer_id TEXT    NOT NULL,
    detail      TEXT    NOT NULL
);
-- A key's or a consumer's audit trail, newest first.
CREATE INDEX IF NOT EXISTS audit_by_key ON audit (key_id, seq);
CREATE INDEX IF NOT EXISTS audit_by_consumer ON audit (consumer_id, seq);
-- Webhook endpoints; the secret is encrypted like signing secrets (AAD: the endpoint id).
CREATE TABLE IF NOT EXISTS webhooks (
    pos             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,
    url             TEXT    NOT NULL,
    events          TEXT    NOT NULL,
    enabled         INTEGER NOT NULL DEFAULT 1,
    disabled_reason TEXT    NOT NULL DEFAULT '',
    nonce           BLOB    NOT NULL,
    ciphertext      BLOB    NOT NULL,
    master_version  INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    -- The secret before the last rotation, signing too until previous_expires_at.
    previous_nonce          BLOB,
    previous_ciphertext     BLOB,
    previous_master_version INTEGER NOT NULL DEFAULT 0,
    previous_expires_at     INTEGER NOT NULL DEFAULT 0,
    -- The first of the attempts that have failed since the last success (0: not failing).
    failing_since           INTEGER NOT NULL DEFAULT 0
);
-- The outbox: one message per event and subscribed endpoint, written with the mutation.
-- state: pending | delivered | failed.
CREATE TABLE IF NOT EXISTS webhook_messages (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,
    webhook_id      TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_until     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS webhook_messages_due ON webhook_messages (next_attempt_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS webhook_messages_by_webhook ON webhook_messages (webhook_id);
-- Every delivery attempt.
CREATE TABLE IF NOT EXISTS webhook_attempts (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id      TEXT    NOT NULL,
    webhook_id      TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    attempt         INTEGER NOT NULL,
    at              INTEGER NOT NULL,
    status          INTEGER NOT NULL,
    latency_ms      INTEGER NOT NULL,
    error           TEXT    NOT NULL,
    outcome         TEXT    NOT NULL,
    next_attempt_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_attempts_by_webhook ON webhook_attempts (webhook_id, seq);
-- Pruning and replay read messages and attempts by time.
CREATE INDEX IF NOT EXISTS webhook_messages_by_created ON webhook_messages (created_at);
CREATE INDEX IF NOT EXISTS webhook_attempts_by_at ON webhook_attempts (at);
-- The first rate-limit refusal of a consumer by a rule in a UTC day (`day`: its start), so that
-- quota.exhausted is written once per consumer, rule and day.
CREATE TABLE IF NOT EXISTS quota_exhausted (
    consumer_id      TEXT    NOT NULL,
    rule             TEXT    NOT NULL,
    day              INTEGER NOT NULL,
    first_refused_at INTEGER NOT NULL,
    PRIMARY KEY (consumer_id, rule, day)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS quota_exhausted_by_day ON quota_exhausted (day);
";

/// Columns of `webhooks` added after version 5, with their declarations.
const WEBHOOK_COLUMNS_V7: [(&str, &str); 5] = [
    ("previous_nonce", "BLOB"),
    ("previous_ciphertext", "BLOB"),
    ("previous_master_version", "INTEGER NOT NULL DEFAULT 0"),
    ("previous_expires_at", "INTEGER NOT NULL DEFAULT 0"),
    ("failing_since", "INTEGER NOT NULL DEFAULT 0"),
];

const KEY_COLUMNS: &str = "pos, id, consumer_id, name, display_prefix, scopes, metadata, rate_limit, expires_at, \
     created_at, last_used_at, revoked_at, revoke_reason, previous_display_prefix, previous_expires_at, rotated_at, \
     (SELECT algorithm FROM signing_keys WHERE signing_keys.key_id = keys.id)";

const CONSUMER_COLUMNS: &str = "pos, id, name, metadata, created_at";

const READERS: usize = 4;
/// Connections only the data plane's key lookups use (see [`SqliteStore::lookup_read`]).
const LOOKUP_READERS: usize = 2;

/// The SQLite implementation of [`Store`].
pub struct SqliteStore {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    lookups: Vec<Mutex<Connection>>,
    /// Audit rows committed through this store since it was opened.
    audit_written: AtomicU64,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn db(err: rusqlite::Error) -> Error {
    Error::internal("database", err)
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates its schema.
    ///
    /// The database file is created with mode 0600 before SQLite opens it, and an existing one,
    /// or a WAL or shared-memory file left by a crash, is tightened to the owner (see
    /// [`crate::files`]). SQLite creates the WAL and shared-memory files with the database
    /// file's mode whatever the umask, so they are 0600 too.
    pub fn open(path: &Path) -> Result<Self> {
        files::create_private(path)?;
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            files::tighten_if_present(Path::new(&side))?;
        }
        let mut writer = Connection::open(path).map_err(db)?;
        let mode: String = writer.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0)).map_err(db)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Internal(format!("database: could not enable WAL (journal_mode is {mode})")));
        }
        configure(&writer).map_err(db)?;
        migrate(&mut writer)?;
        let reader = || -> Result<Mutex<Connection>> {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(db)?;
            configure(&conn).map_err(db)?;
            Ok(Mutex::new(conn))
        };
        let readers = (0..READERS).map(|_| reader()).collect::<Result<Vec<_>>>()?;
        let lookups = (0..LOOKUP_READERS).map(|_| reader()).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
            lookups,
            audit_written: AtomicU64::new(0),
        })
    }

    fn read<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let index = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len().max(1);
        let reader = self
            .readers
            .get(index)
            .ok_or_else(|| Error::Internal("database: no reader connection".to_owned()))?;
        let mut conn = reader.lock()?;
        in_snapshot(&mut conn, f)
    }

    /// A key lookup's read: on a connection only lookups use, so that it never waits behind a
    /// long scan (the service runs it on its async threads, see `verify_key`); a free one when
    /// there is one.
    fn lookup_read<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let free = self.lookups.iter().find_map(|c| c.try_lock().ok());
        let mut conn = match free {
            Some(conn) => conn,
            None => self
                .lookups
                .first()
                .ok_or_else(|| Error::Internal("database: no lookup connection".to_owned()))?
                .lock()?,
        };
        in_snapshot(&mut conn, f)
    }

    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.writer.lock()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
        // The audit log only grows and this is its only writer, so the rows this transaction
        // added are the difference of its head before and after.
        let audit_before = audit_head(&tx)?;
        // On error the transaction rolls back when dropped.
        let out = f(&tx)?;
        let audited = audit_head(&tx)?.saturating_sub(audit_before);
        tx.commit().map_err(db)?;
        self.audit_written.fetch_add(audited, Ordering::Relaxed);
        Ok(out)
    }
}

/// Runs `f` in a read transaction: every query of `f` sees the same snapshot.
fn in_snapshot<T>(conn: &mut Connection, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred).map_err(db)?;
    let out = f(&tx)?;
    tx.finish().map_err(db)?;
    Ok(out)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0)).map_err(db)?;
    if version > SCHEMA_VERSION {
        return Err(Error::Internal(format!(
            "database: schema version {version} is newer than this service ({SCHEMA_VERSION})"
        )));
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
    tx.execute_batch(SCHEMA).map_err(db)?;
    // A store made before version 4 has `changes` without `detail`.
    let has_detail: i64 = tx
        .query_row("SELECT COUNT(*) FROM pragma_table_info('changes') WHERE name = 'detail'", [], |row| {
            row.get(0)
        })
        .map_err(db)?;
    if has_detail == 0 {
        tx.execute_batch("ALTER TABLE changes ADD COLUMN detail TEXT NOT NULL DEFAULT ''").map_err(db)?;
    }
    tx.execute_batch(lifecycle::SCHEMA).map_err(db)?;
    lifecycle::add_columns(&tx)?;
    // A store made before version 7 has `webhooks` without the rotation and failing columns.
    for (column, declaration) in WEBHOOK_COLUMNS_V7 {
        let present: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('webhooks') WHERE name = ?1",
                [column],
                |row| row.get(0),
            )
            .map_err(db)?;
        if present == 0 {
            tx.execute_batch(&format!("ALTER TABLE webhooks ADD COLUMN {column} {declaration}"))
                .map_err(db)?;
        }
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(db)?;
    tx.commit().map_err(db)
}

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::internal("encoding a column", e))
}

fn json_column<T: DeserializeOwned>(row: &Row<'_>, index: usize) -> rusqlite::Result<T> {
    let text: String = row.get(index)?;
    serde_json::from_str(&text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(index, Type::Text, Box::new(e)))
}

fn seq_column(row: &Row<'_>, index: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(index)?;
    u64::try_from(value)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(index, Type::Integer, Box::new(e)))
}

fn key_from_row(row: &Row<'_>) -> rusqlite::Result<Key> {
    let rate_limit: Option<String> = row.get(7)?;
    let rate_limit = match rate_limit {
        Some(text) => Some(
            serde_json::from_str(&text)
                .map_err(|e| rusqlite::Error::FromSqlConversionFailure(7, Type::Text, Box::new(e)))?,
        ),
        None => None,
    };
    Ok(Key {
        position: row.get(0)?,
        id: row.get(1)?,
        consumer_id: row.get(2)?,
        name: row.get(3)?,
        display_prefix: row.get(4)?,
        scopes: json_column(row, 5)?,
        metadata: json_column(row, 6)?,
        rate_limit,
        expires_at: row.get(8)?,
        created_at: row.get(9)?,
        last_used_at: row.get(10)?,
        revoked_at: row.get(11)?,
        revoke_reason: row.get(12)?,
        previous_display_prefix: row.get(13)?,
        previous_expires_at: row.get(14)?,
        rotated_at: row.get(15)?,
        signing: {
            let alg: Option<String> = row.get(16)?;
            match alg {
                Some(text) => Some(SigningAlgorithm::parse(&text).ok_or_else(|| {
                    rusqlite::Error::FromSqlConversionFailure(
                        16,
                        Type::Text,
                        format!("unknown signing algorithm {text:?}").into(),
                    )
                })?),
                None => None,
            }
        },
    })
}

fn consumer_from_row(row: &Row<'_>) -> rusqlite::Result<Consumer> {
    Ok(Consumer {
        position: row.get(0)?,
        id: row.get(1)?,
        name: row.get(2)?,
        metadata: json_column(row, 3)?,
        created_at: row.get(4)?,
    })
}

/// An audit row read as `seq, at, actor, action, key_id, consumer_id, detail`.
fn audit_from_row(row: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        seq: seq_column(row, 0)?,
        at: row.get(1)?,
        actor: row.get(2)?,
        action: row.get(3)?,
        key_id: row.get(4)?,
        consumer_id: row.get(5)?,
        detail: json_column(row, 6)?,
    })
}

fn change_from_row(row: &Row<'_>) -> rusqlite::Result<Change> {
    let kind: String = row.get(1)?;
    let kind = ChangeKind::parse(&kind).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            1,
            Type::Text,
            format!("unknown change kind {kind:?}").into(),
        )
    })?;
    let purge = if kind == ChangeKind::CachePurged { Some(json_column(row, 5)?) } else { None };
    Ok(Change {
        seq: seq_column(row, 0)?,
        kind,
        key_id: row.get(2)?,
        consumer_id: row.get(3)?,
        at: row.get(4)?,
        purge,
    })
}

fn find_consumer(tx: &Transaction<'_>, id_or_name: &str) -> Result<Option<Consumer>> {
    let by_id = tx
        .query_row(
            &format!("SELECT {CONSUMER_COLUMNS} FROM consumers WHERE id = ?1"),
            [id_or_name],
            consumer_from_row,
        )
        .optional()
        .map_err(db)?;
    if by_id.is_some() {
        return Ok(by_id);
    }
    tx.query_row(
        &format!("SELECT {CONSUMER_COLUMNS} FROM consumers WHERE name = ?1"),
        [id_or_name],
        consumer_from_row,
    )
    .optional()
    .map_err(db)
}

fn require_consumer(tx: &Transaction<'_>, id_or_name: &str) -> Result<Consumer> {
    find_consumer(tx, id_or_name)?
        .ok_or_else(|| Error::NotFound { what: "consumer", id: id_or_name.to_owned() })
}

fn find_key(tx: &Transaction<'_>, id: &str) -> Result<Option<Key>> {
    // Cached statements: VerifyKey runs these on every call, and preparing is most of a lookup.
    tx.prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = ?1"))
        .map_err(db)?
        .query_row([id], key_from_row)
        .optional()
        .map_err(db)
}

fn require_key(tx: &Transaction<'_>, id: &str) -> Result<Key> {
    find_key(tx, id)?.ok_or_else(|| Error::NotFound { what: "key", id: id.to_owned() })
}

fn head_seq(tx: &Transaction<'_>) -> Result<u64> {
    let head: i64 = tx
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM changes")
        .map_err(db)?
        .query_row([], |row| row.get(0))
        .map_err(db)?;
    u64::try_from(head).map_err(|e| Error::internal("database: change sequence", e))
}

/// The newest audit sequence number (0 when the log is empty).
fn audit_head(tx: &Transaction<'_>) -> Result<u64> {
    let head: i64 = tx
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM audit")
        .map_err(db)?
        .query_row([], |row| row.get(0))
        .map_err(db)?;
    u64::try_from(head).map_err(|e| Error::internal("database: audit sequence", e))
}

fn record_change(
    tx: &Transaction<'_>,
    ctx: &Ctx,
    kind: ChangeKind,
    key_id: &str,
    consumer_id: &str,
) -> Result<()> {
    tx.execute(
        "INSERT INTO changes (kind, key_id, consumer_id, at) VALUES (?1, ?2, ?3, ?4)",
        params![kind.as_str(), key_id, consumer_id, ctx.now],
    )
    .map_err(db)?;
    // Key events go to the webhook outbox here; consumer events where the name is at hand.
    if let Some(event) = EventType::from_change(kind).filter(|_| !key_id.is_empty()) {
        enqueue_event(tx, ctx, event, &webhooks::key_data(key_id, consumer_id))?;
    }
    Ok(())
}

/// Writes one outbox message per enabled endpoint subscribed to `event`, in the mutation's
/// transaction.
fn enqueue_event(tx: &Transaction<'_>, ctx: &Ctx, event: EventType, data: &serde_json::Value) -> Result<()> {
    let hooks: Vec<(String, String)> = {
        let mut stmt = tx.prepare_cached("SELECT id, events FROM webhooks WHERE enabled = 1").map_err(db)?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?))).map_err(db)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)?
    };
    let mut body = None;
    for (webhook_id, events) in hooks {
        let events: Vec<String> =
            serde_json::from_str(&events).map_err(|e| Error::internal("database: webhook events", e))?;
        if !events.iter().any(|e| e == event.as_str()) {
            continue;
        }
        let body = body.get_or_insert_with(|| webhooks::payload(event, ctx.now, data));
        tx.prepare_cached(
            "INSERT INTO webhook_messages (id, webhook_id, event_type, payload, created_at, next_attempt_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        )
        .map_err(db)?
        .execute(params![webhooks::new_message_id()?, webhook_id, event.as_str(), body.as_str(), ctx.now])
        .map_err(db)?;
    }
    Ok(())
}

/// Disables an enabled endpoint, audits it as `webhook.disable` and tells the other enabled
/// endpoints subscribed to `webhook.disabled`. Nothing when it is disabled already.
fn disable_webhook(tx: &Transaction<'_>, webhook_id: &str, reason: &str, at: i64) -> Result<()> {
    let url: Option<String> = tx
        .query_row("SELECT url FROM webhooks WHERE id = ?1 AND enabled = 1", [webhook_id], |row| row.get(0))
        .optional()
        .map_err(db)?;
    let Some(url) = url else {
        return Ok(());
    };
    tx.execute(
        "UPDATE webhooks SET enabled = 0, disabled_reason = ?2 WHERE id = ?1",
        params![webhook_id, reason],
    )
    .map_err(db)?;
    let ctx = Ctx { actor: "webhook-delivery".to_owned(), now: at };
    record_audit(
        tx,
        &ctx,
        "webhook.disable",
        "",
        "",
        serde_json::json!({ "webhook_id": webhook_id, "url": url, "reason": reason }),
    )?;
    // Disabled first: the event goes to the others only.
    enqueue_event(tx, &ctx, EventType::WebhookDisabled, &webhooks::disabled_data(webhook_id, &url, reason))
}

fn webhook_from_row(row: &Row<'_>) -> rusqlite::Result<Webhook> {
    let events: Vec<String> = json_column(row, 2)?;
    let events = events
        .iter()
        .map(|e| {
            EventType::parse(e).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    2,
                    Type::Text,
                    format!("unknown event {e:?}").into(),
                )
            })
        })
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Webhook {
        id: row.get(0)?,
        url: row.get(1)?,
        events,
        enabled: row.get(3)?,
        disabled_reason: row.get(4)?,
        created_at: row.get(5)?,
        previous_secret_expires_at: row.get(6)?,
        failing_since: row.get(7)?,
    })
}

const WEBHOOK_COLUMNS: &str =
    "id, url, events, enabled, disabled_reason, created_at, previous_expires_at, failing_since";

/// An endpoint as it now is, in the transaction that just wrote it.
fn read_webhook(tx: &Transaction<'_>, id: &str) -> Result<Webhook> {
    tx.query_row(&format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = ?1"), [id], webhook_from_row)
        .map_err(db)
}

fn attempt_from_row(row: &Row<'_>) -> rusqlite::Result<Attempt> {
    Ok(Attempt {
        message_id: row.get(0)?,
        webhook_id: row.get(1)?,
        event_type: row.get(2)?,
        attempt: row.get(3)?,
        at: row.get(4)?,
        status: row.get(5)?,
        latency_ms: row.get(6)?,
        error: row.get(7)?,
        outcome: row.get(8)?,
        next_attempt_at: row.get(9)?,
    })
}

const ATTEMPT_COLUMNS: &str =
    "message_id, webhook_id, event_type, attempt, at, status, latency_ms, error, outcome, next_attempt_at";

/// Sums the minutes older than [`super::USAGE_MINUTES_KEPT`] into their hours and deletes them,
/// and deletes hours older than [`super::USAGE_HOURS_KEPT`]. Cheap when there is nothing to
/// roll up (both are range scans of an index).
fn roll_up_usage(tx: &Transaction<'_>, now: i64) -> Result<()> {
    let cut = now - super::USAGE_MINUTES_KEPT;
    // Whole hours only: an hour is rolled up once all of its minutes are past the cut.
    let cut = cut - cut.rem_euclid(3_600);
    tx.prepare_cached(
        "INSERT INTO usage_hourly (key_id, hour, outcome, count)
         SELECT key_id, minute - (minute % 3600), outcome, SUM(count) FROM usage WHERE minute < ?1
         GROUP BY key_id, minute - (minute % 3600), outcome
         ON CONFLICT (key_id, hour, outcome) DO UPDATE SET count = count + excluded.count",
    )
    .map_err(db)?
    .execute([cut])
    .map_err(db)?;
    tx.prepare_cached("DELETE FROM usage WHERE minute < ?1").map_err(db)?.execute([cut]).map_err(db)?;
    tx.prepare_cached("DELETE FROM usage_hourly WHERE hour < ?1")
        .map_err(db)?
        .execute([now - super::USAGE_HOURS_KEPT])
        .map_err(db)?;
    // Subjects and rate-limit refusals are kept by the minute for as long as reports may name.
    let oldest = now - super::USAGE_RETENTION;
    tx.prepare_cached("DELETE FROM subject_usage WHERE minute < ?1")
        .map_err(db)?
        .execute([oldest])
        .map_err(db)?;
    tx.prepare_cached("DELETE FROM limit_usage WHERE minute < ?1")
        .map_err(db)?
        .execute([oldest])
        .map_err(db)?;
    // No report may name these days any more: their refusals cannot come again.
    tx.prepare_cached("DELETE FROM quota_exhausted WHERE day < ?1")
        .map_err(db)?
        .execute([webhooks::day_start(oldest)])
        .map_err(db)?;
    Ok(())
}

fn record_audit(
    tx: &Transaction<'_>,
    ctx: &Ctx,
    action: &str,
    key_id: &str,
    consumer_id: &str,
    detail: serde_json::Value,
) -> Result<()> {
    tx.execute(
        "INSERT INTO audit (at, actor, action, key_id, consumer_id, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![ctx.now, ctx.actor, action, key_id, consumer_id, to_json(&detail)?],
    )
    .map_err(db)?;
    Ok(())
}

fn insert_consumer(tx: &Transaction<'_>, ctx: &Ctx, consumer: &NewConsumer) -> Result<Consumer> {
    let taken: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM consumers WHERE id IN (?1, ?2) OR name IN (?1, ?2))",
            params![consumer.id, consumer.name],
            |row| row.get(0),
        )
        .map_err(db)?;
    if taken {
        let id = if consumer.id == consumer.name {
            consumer.id.clone()
        } else {
            format!("{} / {}", consumer.id, consumer.name)
        };
        return Err(Error::AlreadyExists { what: "consumer id or name", id });
    }
    tx.execute(
        "INSERT INTO consumers (id, name, metadata, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![consumer.id, consumer.name, to_json(&consumer.metadata)?, ctx.now],
    )
    .map_err(db)?;
    record_audit(
        tx,
        ctx,
        "consumer.create",
        "",
        &consumer.id,
        serde_json::json!({ "name": consumer.name, "metadata": consumer.metadata }),
    )?;
    enqueue_event(
        tx,
        ctx,
        EventType::ConsumerCreated,
        &webhooks::consumer_data(&consumer.id, &consumer.name),
    )?;
    require_consumer(tx, &consumer.id)
}

fn insert_signing(tx: &Transaction<'_>, key_id: &str, signing: &NewSigning) -> Result<()> {
    let (public_key, sealed): (Option<&[u8]>, Option<&Sealed>) = match signing {
        NewSigning::Hmac(sealed) => (None, Some(sealed)),
        NewSigning::Ed25519(key) => (Some(key), None),
    };
    tx.execute(
        "INSERT INTO signing_keys (key_id, algorithm, public_key, nonce, ciphertext, master_version) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            key_id,
            signing.algorithm().as_str(),
            public_key,
            sealed.map(|s| &s.nonce[..]),
            sealed.map(|s| s.ciphertext.as_slice()),
            sealed.map_or(0, |s| s.version),
        ],
    )
    .map_err(db)?;
    Ok(())
}

fn sealed_from_row(row: &Row<'_>, first: usize) -> rusqlite::Result<Option<Sealed>> {
    let nonce: Option<Vec<u8>> = row.get(first)?;
    let ciphertext: Option<Vec<u8>> = row.get(first + 1)?;
    let version: u32 = row.get(first + 2)?;
    match (nonce, ciphertext) {
        (Some(nonce), Some(ciphertext)) => {
            let nonce: [u8; 12] = nonce.try_into().map_err(|_| {
                rusqlite::Error::FromSqlConversionFailure(first, Type::Blob, "nonce is not 12 bytes".into())
            })?;
            Ok(Some(Sealed { version, nonce, ciphertext }))
        }
        _ => Ok(None),
    }
}

fn revoke(tx: &Transaction<'_>, ctx: &Ctx, key: &Key, reason: &str) -> Result<()> {
    tx.execute(
        "UPDATE keys SET revoked_at = ?2, revoke_reason = ?3 WHERE id = ?1",
        params![key.id, ctx.now, reason],
    )
    .map_err(db)?;
    // A revoked key's uncollected automatic secret is of no use to anyone.
    lifecycle::set_pending(tx, ctx, &key.id, None)?;
    record_change(tx, ctx, ChangeKind::KeyRevoked, &key.id, &key.consumer_id)
}

fn status_clause(status: KeyStatus) -> &'static str {
    match status {
        KeyStatus::Active => "revoked_at = 0 AND (expires_at = 0 OR expires_at > ?2)",
        KeyStatus::Revoked => "revoked_at != 0 AND ?2 = ?2",
        KeyStatus::Expired => "revoked_at = 0 AND expires_at != 0 AND expires_at <= ?2",
    }
}

fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl Store for SqliteStore {
    fn create_consumer(&self, ctx: &Ctx, consumer: NewConsumer) -> Result<Consumer> {
        self.write(|tx| insert_consumer(tx, ctx, &consumer))
    }

    fn get_consumer(&self, id_or_name: &str) -> Result<Consumer> {
        self.read(|tx| require_consumer(tx, id_or_name))
    }

    fn list_consumers(&self, after: Option<i64>, limit: usize) -> Result<Vec<Consumer>> {
        self.read(|tx| {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT {CONSUMER_COLUMNS} FROM consumers WHERE pos > ?1 ORDER BY pos LIMIT ?2"
                ))
                .map_err(db)?;
            let rows = stmt
                .query_map(params![after.unwrap_or(0), limit_param(limit)], consumer_from_row)
                .map_err(db)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
        })
    }

    fn update_consumer(&self, ctx: &Ctx, id_or_name: &str, patch: ConsumerPatch) -> Result<Consumer> {
        self.write(|tx| {
            let current = require_consumer(tx, id_or_name)?;
            if let Some(name) = &patch.name
                && *name != current.name
            {
                let taken: bool = tx
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM consumers WHERE (name = ?1 OR id = ?1) AND id != ?2)",
                        params![name, current.id],
                        |row| row.get(0),
                    )
                    .map_err(db)?;
                if taken {
                    return Err(Error::AlreadyExists { what: "consumer name", id: name.clone() });
                }
            }
            let name = patch.name.clone().unwrap_or_else(|| current.name.clone());
            let metadata = patch.metadata.clone().unwrap_or_else(|| current.metadata.clone());
            tx.execute(
                "UPDATE consumers SET name = ?2, metadata = ?3 WHERE id = ?1",
                params![current.id, name, to_json(&metadata)?],
            )
            .map_err(db)?;
            record_change(tx, ctx, ChangeKind::ConsumerUpdated, "", &current.id)?;
            record_audit(
                tx,
                ctx,
                "consumer.update",
                "",
                &current.id,
                serde_json::json!({ "name": patch.name, "metadata": patch.metadata }),
            )?;
            require_consumer(tx, &current.id)
        })
    }

    fn delete_consumer(&self, ctx: &Ctx, id_or_name: &str) -> Result<u32> {
        self.write(|tx| {
            let consumer = require_consumer(tx, id_or_name)?;
            let keys = {
                let mut stmt = tx
                    .prepare(&format!(
                        "SELECT {KEY_COLUMNS} FROM keys WHERE consumer_id = ?1 AND revoked_at = 0 ORDER BY pos"
                    ))
                    .map_err(db)?;
                let rows = stmt.query_map([&consumer.id], key_from_row).map_err(db)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)?
            };
            for key in &keys {
                revoke(tx, ctx, key, "consumer deleted")?;
            }
            tx.execute("DELETE FROM consumers WHERE id = ?1", [&consumer.id]).map_err(db)?;
            record_change(tx, ctx, ChangeKind::ConsumerDeleted, "", &consumer.id)?;
            enqueue_event(
                tx,
                ctx,
                EventType::ConsumerDeleted,
                &webhooks::consumer_data(&consumer.id, &consumer.name),
            )?;
            let revoked: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
            record_audit(
                tx,
                ctx,
                "consumer.delete",
                "",
                &consumer.id,
                serde_json::json!({ "name": consumer.name, "revoked_keys": revoked }),
            )?;
            u32::try_from(keys.len()).map_err(|e| Error::internal("counting revoked keys", e))
        })
    }

    fn create_key(&self, ctx: &Ctx, key: NewKey) -> Result<Key> {
        self.write(|tx| {
            let consumer = match (find_consumer(tx, &key.consumer)?, &key.create_consumer) {
                (Some(consumer), _) => consumer,
                (None, Some(new)) => insert_consumer(tx, ctx, new)?,
                (None, None) => return Err(Error::NotFound { what: "consumer", id: key.consumer.clone() }),
            };
            let rate_limit = key.rate_limit.as_ref().map(to_json).transpose()?;
            tx.execute(
                "INSERT INTO keys (id, consumer_id, name, display_prefix, scopes, metadata, rate_limit, expires_at, \
                 created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    key.id,
                    consumer.id,
                    key.name,
                    key.secret.display_prefix,
                    to_json(&key.scopes)?,
                    to_json(&key.metadata)?,
                    rate_limit,
                    key.expires_at,
                    ctx.now
                ],
            )
            .map_err(db)?;
            tx.execute(
                "INSERT INTO key_secrets (hash, key_id, display_prefix, expires_at) VALUES (?1, ?2, ?3, 0)",
                params![&key.secret.hash[..], key.id, key.secret.display_prefix],
            )
            .map_err(db)?;
            if let Some(signing) = &key.signing {
                insert_signing(tx, &key.id, signing)?;
            }
            record_change(tx, ctx, ChangeKind::KeyCreated, &key.id, &consumer.id)?;
            record_audit(
                tx,
                ctx,
                "key.create",
                &key.id,
                &consumer.id,
                serde_json::json!({
                    "name": key.name,
                    "display_prefix": key.secret.display_prefix,
                    "scopes": key.scopes,
                    "expires_at": key.expires_at,
                    "signing_algorithm": key.signing.as_ref().map(|s| s.algorithm().as_str()),
                }),
            )?;
            require_key(tx, &key.id)
        })
    }

    fn get_key(&self, id: &str) -> Result<Key> {
        self.read(|tx| require_key(tx, id))
    }

    fn list_keys(&self, filter: &KeyFilter, after: Option<i64>, limit: usize) -> Result<Vec<Key>> {
        self.read(|tx| {
            let mut sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE pos > ?1");
            if let Some(status) = filter.status {
                sql.push_str(" AND ");
                sql.push_str(status_clause(status));
            } else {
                sql.push_str(" AND ?2 = ?2");
            }
            sql.push_str(" AND (?3 IS NULL OR consumer_id = ?3) ORDER BY pos LIMIT ?4");
            let mut stmt = tx.prepare(&sql).map_err(db)?;
            let rows = stmt
                .query_map(
                    params![after.unwrap_or(0), filter.now, filter.consumer_id, limit_param(limit)],
                    key_from_row,
                )
                .map_err(db)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
        })
    }

    fn list_expiring_keys(&self, now: i64, until: i64, limit: usize) -> Result<Vec<Key>> {
        self.read(|tx| {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {KEY_COLUMNS} FROM keys WHERE expires_at != 0 AND expires_at > ?1 \
                     AND expires_at <= ?2 AND revoked_at = 0 ORDER BY expires_at, pos LIMIT ?3"
                ))
                .map_err(db)?;
            let rows = stmt.query_map(params![now, until, limit_param(limit)], key_from_row).map_err(db)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
        })
    }

    fn count_keys(&self, now: i64) -> Result<KeyCounts> {
        self.read(|tx| {
            // One pass over the key rows; the clauses are the ones `list_keys` filters by.
            let sql = format!(
                "SELECT COALESCE(SUM({active}), 0), COALESCE(SUM({revoked}), 0), COALESCE(SUM({expired}), 0) \
                 FROM keys",
                active = status_clause(KeyStatus::Active),
                revoked = status_clause(KeyStatus::Revoked),
                expired = status_clause(KeyStatus::Expired),
            );
            // The clauses read the time from ?2; ?1 is left unused.
            let (active, revoked, expired): (i64, i64, i64) = tx
                .prepare_cached(&sql)
                .map_err(db)?
                .query_row(params![0, now], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                .map_err(db)?;
            let count = |n: i64| u64::try_from(n).map_err(|e| Error::internal("database: key count", e));
            Ok(KeyCounts { active: count(active)?, revoked: count(revoked)?, expired: count(expired)? })
        })
    }

    fn update_key(&self, ctx: &Ctx, id: &str, patch: KeyPatch) -> Result<Key> {
        self.write(|tx| {
            let mut key = require_key(tx, id)?;
            if key.revoked_at != 0 {
                return Err(Error::FailedPrecondition(format!("key {id:?} is revoked")));
            }
            if let Some(name) = &patch.name {
                key.name = name.clone();
            }
            if let Some(scopes) = &patch.scopes {
                key.scopes = scopes.clone();
            }
            if let Some(metadata) = &patch.metadata {
                key.metadata = metadata.clone();
            }
            if let Some(rate_limit) = &patch.rate_limit {
                key.rate_limit = rate_limit.clone();
            }
            if let Some(expires_at) = patch.expires_at {
                key.expires_at = expires_at;
            }
            let rate_limit = key.rate_limit.as_ref().map(to_json).transpose()?;
            tx.execute(
                "UPDATE keys SET name = ?2, scopes = ?3, metadata = ?4, rate_limit = ?5, expires_at = ?6 WHERE id = ?1",
                params![key.id, key.name, to_json(&key.scopes)?, to_json(&key.metadata)?, rate_limit, key.expires_at],
            )
            .map_err(db)?;
            record_change(tx, ctx, ChangeKind::KeyUpdated, &key.id, &key.consumer_id)?;
            record_audit(
                tx,
                ctx,
                "key.update",
                &key.id,
                &key.consumer_id,
                serde_json::json!({
                    "name": patch.name,
                    "scopes": patch.scopes,
                    "metadata": patch.metadata,
                    "rate_limit": patch.rate_limit,
                    "expires_at": patch.expires_at,
                }),
            )?;
            require_key(tx, &key.id)
        })
    }

    fn revoke_key(&self, ctx: &Ctx, id: &str, reason: &str) -> Result<Key> {
        self.write(|tx| {
            let key = require_key(tx, id)?;
            if key.revoked_at != 0 {
                return Ok(key);
            }
            revoke(tx, ctx, &key, reason)?;
            record_audit(
                tx,
                ctx,
                "key.revoke",
                &key.id,
                &key.consumer_id,
                serde_json::json!({ "reason": reason }),
            )?;
            require_key(tx, &key.id)
        })
    }

    fn purge_cache(&self, ctx: &Ctx, purge: &CachePurge) -> Result<u64> {
        self.write(|tx| {
            let detail = to_json(purge)?;
            tx.execute(
                "INSERT INTO changes (kind, key_id, consumer_id, at, detail) VALUES (?1, '', '', ?2, ?3)",
                params![ChangeKind::CachePurged.as_str(), ctx.now, detail],
            )
            .map_err(db)?;
            let seq = head_seq(tx)?;
            record_audit(tx, ctx, "cache.purge", "", "", serde_json::to_value(purge).unwrap_or_default())?;
            Ok(seq)
        })
    }

    fn set_rotation_policy(
        &self,
        ctx: &Ctx,
        target: &PolicyTarget,
        policy: &RotationPolicy,
    ) -> Result<PolicyRecord> {
        self.write(|tx| lifecycle::set_policy(tx, ctx, target, policy))
    }

    fn delete_rotation_policy(&self, ctx: &Ctx, target: &PolicyTarget) -> Result<()> {
        self.write(|tx| lifecycle::delete_policy(tx, ctx, target))
    }

    fn list_rotation_policies(&self, consumer: Option<&str>) -> Result<Vec<PolicyRecord>> {
        self.read(|tx| lifecycle::list_policies(tx, consumer))
    }

    fn effective_policy(&self, key_id: &str) -> Result<Option<RotationPolicy>> {
        self.read(|tx| lifecycle::effective_policy(tx, key_id))
    }

    fn lifecycle_candidates(&self, now: i64, after: i64, limit: usize) -> Result<Vec<Candidate>> {
        self.read(|tx| lifecycle::candidates(tx, now, after, limit))
    }

    fn apply_transition(&self, ctx: &Ctx, transition: &Transition) -> Result<bool> {
        self.write(|tx| lifecycle::apply(tx, ctx, transition))
    }

    fn take_lease(&self, name: &str, holder: &str, now: i64, until: i64) -> Result<bool> {
        self.write(|tx| lifecycle::take_lease(tx, name, holder, now, until))
    }

    fn record_previous_use(&self, used: &[(String, i64)]) -> Result<()> {
        if used.is_empty() {
            return Ok(());
        }
        self.write(|tx| lifecycle::record_previous_use(tx, used))
    }

    fn take_pending_secret(&self, ctx: &Ctx, key_id: &str) -> Result<Option<Sealed>> {
        self.write(|tx| lifecycle::take_pending(tx, ctx, key_id))
    }

    fn rotate_key(&self, ctx: &Ctx, rotation: Rotation) -> Result<Key> {
        self.write(|tx| {
            let key = require_key(tx, &rotation.key_id)?;
            match key.status(ctx.now) {
                KeyStatus::Active => {}
                KeyStatus::Revoked => {
                    return Err(Error::FailedPrecondition(format!("key {:?} is revoked", key.id)));
                }
                KeyStatus::Expired => {
                    return Err(Error::FailedPrecondition(format!(
                        "key {:?} is expired; extend its expires_at first",
                        key.id
                    )));
                }
            }
            if rotation.expect_birth.is_some_and(|b| b != crate::lifecycle::birth(&key)) {
                return Err(Error::FailedPrecondition(format!("key {:?} was rotated meanwhile", key.id)));
            }
            // Only one previous secret is kept: an older one ends now.
            tx.execute("DELETE FROM key_secrets WHERE key_id = ?1 AND expires_at != 0", [&key.id])
                .map_err(db)?;
            lifecycle::set_pending(tx, ctx, &key.id, rotation.pending.as_ref())?;
            tx.execute(
                "UPDATE key_secrets SET expires_at = ?2 WHERE key_id = ?1",
                params![key.id, rotation.grace_end],
            )
            .map_err(db)?;
            tx.execute(
                "INSERT INTO key_secrets (hash, key_id, display_prefix, expires_at) VALUES (?1, ?2, ?3, 0)",
                params![&rotation.secret.hash[..], key.id, rotation.secret.display_prefix],
            )
            .map_err(db)?;
            tx.execute(
                "UPDATE keys SET display_prefix = ?2, previous_display_prefix = ?3, previous_expires_at = ?4, \
                 rotated_at = ?5 WHERE id = ?1",
                params![key.id, rotation.secret.display_prefix, key.display_prefix, rotation.grace_end, ctx.now],
            )
            .map_err(db)?;
            record_change(tx, ctx, ChangeKind::KeyRotated, &key.id, &key.consumer_id)?;
            record_audit(
                tx,
                ctx,
                "key.rotate",
                &key.id,
                &key.consumer_id,
                serde_json::json!({
                    "display_prefix": rotation.secret.display_prefix,
                    "previous_display_prefix": key.display_prefix,
                    "previous_expires_at": rotation.grace_end,
                    "automatic": rotation.pending.is_some(),
                }),
            )?;
            require_key(tx, &key.id)
        })
    }

    fn lookup_secret(&self, hash: &[u8; 32]) -> Result<Lookup> {
        self.lookup_read(|tx| {
            let secret: Option<(String, String, i64)> = tx
                .prepare_cached("SELECT key_id, display_prefix, expires_at FROM key_secrets WHERE hash = ?1")
                .map_err(db)?
                .query_row([&hash[..]], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                .optional()
                .map_err(db)?;
            let found = match secret {
                Some((key_id, display_prefix, expires_at)) => {
                    find_key(tx, &key_id)?.map(|key| SecretMatch { key, display_prefix, expires_at })
                }
                None => None,
            };
            Ok(Lookup { found, head_seq: head_seq(tx)? })
        })
    }

    fn record_usage(&self, used: &[(String, i64)]) -> Result<()> {
        if used.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            let mut stmt = tx
                .prepare("UPDATE keys SET last_used_at = ?2 WHERE id = ?1 AND last_used_at < ?2")
                .map_err(db)?;
            for (id, at) in used {
                stmt.execute(params![id, at]).map_err(db)?;
            }
            Ok(())
        })
    }

    fn report_usage(&self, report: &UsageReport, now: i64) -> Result<UsageApplied> {
        let batch = i64::try_from(report.batch).map_err(|e| Error::internal("usage batch number", e))?;
        let feed_seq = i64::try_from(report.feed_seq).unwrap_or(i64::MAX);
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO gateways (name, last_report_at, feed_seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET last_report_at = excluded.last_report_at,
                     feed_seq = MAX(feed_seq, excluded.feed_seq)",
            )
            .map_err(db)?
            .execute(params![report.gateway, now, feed_seq])
            .map_err(db)?;
            tx.prepare_cached("DELETE FROM usage_batches WHERE at < ?1")
                .map_err(db)?
                .execute(params![now - super::USAGE_BATCH_MEMORY])
                .map_err(db)?;
            let fresh = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO usage_batches (gateway, batch, at) VALUES (?1, ?2, ?3)",
                )
                .map_err(db)?
                .execute(params![report.gateway, batch, now])
                .map_err(db)?;
            if fresh == 0 {
                return Ok(UsageApplied { duplicate: true, skipped: 0 });
            }
            let oldest = now - super::USAGE_RETENTION;
            let newest = now + 300;
            let mut skipped = 0u32;
            let mut add = tx
                .prepare_cached(
                    "INSERT INTO usage (key_id, minute, outcome, count)
                     SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM keys WHERE id = ?1)
                     ON CONFLICT (key_id, minute, outcome) DO UPDATE SET count = count + excluded.count",
                )
                .map_err(db)?;
            let mut used = tx
                .prepare_cached("UPDATE keys SET last_used_at = ?2 WHERE id = ?1 AND last_used_at < ?2")
                .map_err(db)?;
            let mut add_subject = tx
                .prepare_cached(
                    "INSERT INTO subject_usage (subject, minute, outcome, count) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (subject, minute, outcome) DO UPDATE SET count = count + excluded.count",
                )
                .map_err(db)?;
            let mut add_limited = tx
                .prepare_cached(
                    "INSERT INTO limit_usage (consumer_id, rule, minute, count)
                     SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM consumers WHERE id = ?1)
                     ON CONFLICT (consumer_id, rule, minute) DO UPDATE SET count = count + excluded.count",
                )
                .map_err(db)?;
            let mut first_refusal = tx
                .prepare_cached(
                    "INSERT INTO quota_exhausted (consumer_id, rule, day, first_refused_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (consumer_id, rule, day) DO NOTHING",
                )
                .map_err(db)?;
            let ctx = Ctx { actor: "usage-report".to_owned(), now };
            // Oldest minute first: a day's quota.exhausted names the earliest refusal of the batch.
            let mut counts: Vec<&crate::model::UsageCount> = report.counts.iter().collect();
            counts.sort_by_key(|c| c.minute);
            for c in counts {
                let count = i64::try_from(c.count).unwrap_or(i64::MAX);
                if c.minute < oldest || c.minute > newest || count == 0 {
                    skipped = skipped.saturating_add(1);
                    continue;
                }
                if !c.subject.is_empty() {
                    add_subject.execute(params![c.subject, c.minute, c.outcome, count]).map_err(db)?;
                    continue;
                }
                if !c.consumer_id.is_empty() {
                    if add_limited.execute(params![c.consumer_id, c.rule, c.minute, count]).map_err(db)? == 0
                    {
                        skipped = skipped.saturating_add(1);
                    } else if first_refusal
                        .execute(params![c.consumer_id, c.rule, webhooks::day_start(c.minute), c.minute])
                        .map_err(db)?
                        == 1
                    {
                        let data = webhooks::quota_data(&c.consumer_id, &c.rule, c.minute);
                        enqueue_event(tx, &ctx, EventType::QuotaExhausted, &data)?;
                    }
                    continue;
                }
                if add.execute(params![c.key_id, c.minute, c.outcome, count]).map_err(db)? == 0 {
                    skipped = skipped.saturating_add(1);
                    continue;
                }
                if c.outcome == "allowed" {
                    used.execute(params![c.key_id, (c.minute + 59).min(now)]).map_err(db)?;
                }
            }
            roll_up_usage(tx, now)?;
            Ok(UsageApplied { duplicate: false, skipped })
        })
    }

    fn usage(&self, query: &UsageQuery) -> Result<(Vec<KeyUsage>, Vec<GatewayReport>, u64)> {
        let ids = to_json(&query.key_ids)?;
        let by_id = !query.key_ids.is_empty();
        self.read(|tx| {
            let mut keys: Vec<KeyUsage> = Vec::new();
            {
                // One query for every key asked for: each key's counts by outcome in the window.
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT k.id, k.consumer_id, k.last_used_at, u.outcome, SUM(u.count)
                         FROM (SELECT key_id, minute AS at, outcome, count FROM usage
                               UNION ALL
                               SELECT key_id, hour AS at, outcome, count FROM usage_hourly) u
                         JOIN keys k ON k.id = u.key_id
                         WHERE u.at >= ?1 AND u.at < ?2
                           AND (?3 = 0 OR u.key_id IN (SELECT value FROM json_each(?4)))
                           AND (?5 IS NULL OR k.consumer_id = ?5)
                         GROUP BY k.id, u.outcome
                         ORDER BY k.pos, u.outcome",
                    )
                    .map_err(db)?;
                let rows = stmt
                    .query_map(params![query.since, query.until, by_id, ids, query.consumer_id], |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, i64>(2)?,
                            row.get::<_, String>(3)?,
                            row.get::<_, i64>(4)?,
                        ))
                    })
                    .map_err(db)?;
                for row in rows {
                    let (key_id, consumer_id, last_used_at, outcome, count) = row.map_err(db)?;
                    let count = u64::try_from(count).unwrap_or(0);
                    match keys.last_mut() {
                        Some(k) if k.key_id == key_id => {
                            k.outcomes.insert(outcome, count);
                        }
                        _ => keys.push(KeyUsage {
                            key_id,
                            consumer_id,
                            outcomes: [(outcome, count)].into_iter().collect(),
                            last_used_at,
                        }),
                    }
                }
            }
            // Keys asked for by id that had no usage in the window: there, with nothing counted.
            if by_id {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT id, consumer_id, last_used_at FROM keys
                         WHERE id IN (SELECT value FROM json_each(?1)) AND (?2 IS NULL OR consumer_id = ?2)
                         ORDER BY pos",
                    )
                    .map_err(db)?;
                let rows = stmt
                    .query_map(params![ids, query.consumer_id], |row| {
                        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, i64>(2)?))
                    })
                    .map_err(db)?;
                for row in rows {
                    let (key_id, consumer_id, last_used_at) = row.map_err(db)?;
                    if !keys.iter().any(|k| k.key_id == key_id) {
                        keys.push(KeyUsage {
                            key_id,
                            consumer_id,
                            outcomes: Default::default(),
                            last_used_at,
                        });
                    }
                }
            }
            let gateways = {
                let mut stmt = tx
                    .prepare_cached("SELECT name, last_report_at, feed_seq FROM gateways ORDER BY name")
                    .map_err(db)?;
                let rows = stmt
                    .query_map([], |row| {
                        Ok(GatewayReport {
                            gateway: row.get(0)?,
                            last_report_at: row.get(1)?,
                            feed_seq: seq_column(row, 2)?,
                        })
                    })
                    .map_err(db)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)?
            };
            Ok((keys, gateways, head_seq(tx)?))
        })
    }

    fn caller_usage(&self, query: &UsageQuery) -> Result<(Vec<SubjectUsage>, Vec<LimitUsage>)> {
        if !query.key_ids.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        self.read(|tx| {
            let mut subjects: Vec<SubjectUsage> = Vec::new();
            if query.consumer_id.is_none() {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT u.subject, u.outcome, SUM(u.count) FROM subject_usage u
                         JOIN (SELECT subject, SUM(count) AS total FROM subject_usage
                               WHERE minute >= ?1 AND minute < ?2
                               GROUP BY subject ORDER BY total DESC, subject LIMIT ?3) top
                           ON top.subject = u.subject
                         WHERE u.minute >= ?1 AND u.minute < ?2
                         GROUP BY u.subject, u.outcome
                         ORDER BY top.total DESC, u.subject, u.outcome",
                    )
                    .map_err(db)?;
                let rows = stmt
                    .query_map(params![query.since, query.until, limit_param(super::MAX_SUBJECTS)], |row| {
                        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, i64>(2)?))
                    })
                    .map_err(db)?;
                for row in rows {
                    let (subject, outcome, count) = row.map_err(db)?;
                    let count = u64::try_from(count).unwrap_or(0);
                    match subjects.last_mut() {
                        Some(s) if s.subject == subject => {
                            s.outcomes.insert(outcome, count);
                        }
                        _ => subjects.push(SubjectUsage {
                            subject,
                            outcomes: [(outcome, count)].into_iter().collect(),
                        }),
                    }
                }
            }
            let limits = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT consumer_id, rule, SUM(count) FROM limit_usage
                         WHERE minute >= ?1 AND minute < ?2 AND (?3 IS NULL OR consumer_id = ?3)
                         GROUP BY consumer_id, rule ORDER BY consumer_id, rule",
                    )
                    .map_err(db)?;
                let rows = stmt
                    .query_map(params![query.since, query.until, query.consumer_id], |row| {
                        Ok(LimitUsage {
                            consumer_id: row.get(0)?,
                            rule: row.get(1)?,
                            limited: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
                        })
                    })
                    .map_err(db)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)?
            };
            Ok((subjects, limits))
        })
    }

    fn usage_series(
        &self,
        key_ids: Option<&[String]>,
        since: i64,
        until: i64,
        step: i64,
    ) -> Result<Vec<UsagePoint>> {
        if step <= 0 {
            return Err(Error::invalid("step", "must be positive"));
        }
        let ids = key_ids.map(|ids| to_json(&ids)).transpose()?;
        self.read(|tx| {
            // Per key: the primary key (key_id, minute, outcome) serves each key's window.
            // Summed: the index on the minute serves the window.
            let sql = if ids.is_some() {
                "SELECT u.key_id, ?1 + ((u.minute - ?1) / ?3) * ?3 AS bucket, u.outcome, SUM(u.count)
                 FROM usage u
                 WHERE u.key_id IN (SELECT value FROM json_each(?4)) AND u.minute >= ?1 AND u.minute < ?2
                 GROUP BY u.key_id, bucket, u.outcome
                 ORDER BY u.key_id, bucket, u.outcome"
            } else {
                "SELECT '', ?1 + ((minute - ?1) / ?3) * ?3 AS bucket, outcome, SUM(count)
                 FROM usage
                 WHERE minute >= ?1 AND minute < ?2 AND ?4 IS NULL
                 GROUP BY bucket, outcome
                 ORDER BY bucket, outcome"
            };
            let mut stmt = tx.prepare_cached(sql).map_err(db)?;
            let rows = stmt
                .query_map(params![since, until, step, ids], |row| {
                    Ok(UsagePoint {
                        key_id: row.get(0)?,
                        bucket: row.get(1)?,
                        outcome: row.get(2)?,
                        count: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
                    })
                })
                .map_err(db)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
        })
    }

    fn list_changes(&self, after: u64, limit: usize) -> Result<(Vec<Change>, u64)> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        self.read(|tx| {
            let changes = {
                let mut stmt = tx
                    .prepare("SELECT seq, kind, key_id, consumer_id, at, detail FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2")
                    .map_err(db)?;
                let rows = stmt.query_map(params![after, limit_param(limit)], change_from_row).map_err(db)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)?
            };
            Ok((changes, head_seq(tx)?))
        })
    }

    fn get_signing(&self, key_id: &str) -> Result<SigningLookup> {
        self.read(|tx| {
            let row: Option<(String, Option<Vec<u8>>, Option<Sealed>)> = tx
                .query_row(
                    "SELECT algorithm, public_key, nonce, ciphertext, master_version FROM signing_keys \
                     WHERE key_id = ?1",
                    [key_id],
                    |row| Ok((row.get(0)?, row.get(1)?, sealed_from_row(row, 2)?)),
                )
                .optional()
                .map_err(db)?;
            let found = match row {
                Some((alg, public_key, sealed)) => {
                    let signing = match (SigningAlgorithm::parse(&alg), public_key, sealed) {
                        (Some(SigningAlgorithm::Ed25519), Some(key), _) => {
                            let key: [u8; 32] = key.try_into().map_err(|_| {
                                Error::Internal(format!("database: public key of {key_id} is not 32 bytes"))
                            })?;
                            NewSigning::Ed25519(key)
                        }
                        (Some(SigningAlgorithm::HmacSha256), _, Some(sealed)) => NewSigning::Hmac(sealed),
                        _ => {
                            return Err(Error::Internal(format!(
                                "database: signing material of {key_id} is incomplete"
                            )));
                        }
                    };
                    find_key(tx, key_id)?.map(|key| (key, signing))
                }
                None => None,
            };
            Ok(SigningLookup { found, head_seq: head_seq(tx)? })
        })
    }

    fn list_sealed(&self) -> Result<Vec<(String, Sealed)>> {
        self.read(|tx| {
            let mut stmt = tx
                .prepare(
                    "SELECT key_id, nonce, ciphertext, master_version FROM signing_keys \
                     WHERE ciphertext IS NOT NULL ORDER BY key_id",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map([], |row| Ok((row.get::<_, String>(0)?, sealed_from_row(row, 1)?)))
                .map_err(db)?;
            let rows = rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)?;
            Ok(rows.into_iter().filter_map(|(id, sealed)| sealed.map(|s| (id, s))).collect())
        })
    }

    fn reseal(&self, updates: &[(String, u32, Sealed)]) -> Result<usize> {
        if updates.is_empty() {
            return Ok(0);
        }
        self.write(|tx| {
            let mut changed = 0;
            for (key_id, old_version, sealed) in updates {
                changed += tx
                    .execute(
                        "UPDATE signing_keys SET nonce = ?2, ciphertext = ?3, master_version = ?4 \
                         WHERE key_id = ?1 AND master_version = ?5",
                        params![key_id, &sealed.nonce[..], sealed.ciphertext, sealed.version, old_version],
                    )
                    .map_err(db)?;
            }
            Ok(changed)
        })
    }

    fn list_audit_recent(
        &self,
        filter: &AuditFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>> {
        // Only the conditions given, so SQLite picks the index of the key or consumer asked for.
        let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let mut sql =
            "SELECT seq, at, actor, action, key_id, consumer_id, detail FROM audit WHERE seq < ?".to_owned();
        let mut values: Vec<rusqlite::types::Value> = vec![before.into()];
        for (column, value) in [
            ("action", &filter.action),
            ("actor", &filter.actor),
            ("key_id", &filter.key_id),
            ("consumer_id", &filter.consumer_id),
        ] {
            if let Some(value) = value {
                sql.push_str(&format!(" AND {column} = ?"));
                values.push(value.clone().into());
            }
        }
        sql.push_str(" ORDER BY seq DESC LIMIT ?");
        values.push(limit_param(limit).into());
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(&sql).map_err(db)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(values), audit_from_row).map_err(db)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
        })
    }

    fn audit_written(&self) -> u64 {
        self.audit_written.load(Ordering::Relaxed)
    }

    fn list_audit(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        self.read(|tx| {
            let mut stmt = tx
                .prepare(
                    "SELECT seq, at, actor, action, key_id, consumer_id, detail FROM audit WHERE seq > ?1 \
                     ORDER BY seq LIMIT ?2",
                )
                .map_err(db)?;
            let rows = stmt.query_map(params![after, limit_param(limit)], audit_from_row).map_err(db)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
        })
    }

    fn create_webhook(&self, ctx: &Ctx, hook: NewWebhook) -> Result<Webhook> {
        self.write(|tx| {
            let taken: bool = tx
                .query_row("SELECT EXISTS (SELECT 1 FROM webhooks WHERE id = ?1)", [&hook.id], |row| {
                    row.get(0)
                })
                .map_err(db)?;
            if taken {
                return Err(Error::AlreadyExists { what: "webhook", id: hook.id.clone() });
            }
            let events: Vec<&str> = hook.events.iter().map(|e| e.as_str()).collect();
            tx.execute(
                "INSERT INTO webhooks (id, url, events, nonce, ciphertext, master_version, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    hook.id,
                    hook.url,
                    to_json(&events)?,
                    &hook.sealed.nonce[..],
                    hook.sealed.ciphertext,
                    hook.sealed.version,
                    ctx.now
                ],
            )
            .map_err(db)?;
            record_audit(
                tx,
                ctx,
                "webhook.create",
                "",
                "",
                serde_json::json!({ "webhook_id": hook.id, "url": hook.url, "events": events }),
            )?;
            read_webhook(tx, &hook.id)
        })
    }

    fn list_webhooks(&self) -> Result<Vec<Webhook>> {
        self.read(|tx| {
            let mut stmt =
                tx.prepare(&format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY pos")).map_err(db)?;
            let rows = stmt.query_map([], webhook_from_row).map_err(db)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
        })
    }

    fn update_webhook(&self, ctx: &Ctx, id: &str, update: &WebhookUpdate) -> Result<Webhook> {
        self.write(|tx| {
            let was_enabled: Option<bool> = tx
                .query_row("SELECT enabled FROM webhooks WHERE id = ?1", [id], |row| row.get(0))
                .optional()
                .map_err(db)?;
            let Some(was_enabled) = was_enabled else {
                return Err(Error::NotFound { what: "webhook", id: id.to_owned() });
            };
            // The right-hand sides read the row as it was.
            tx.execute(
                "UPDATE webhooks SET url = COALESCE(?2, url), events = COALESCE(?3, events), \
                 enabled = COALESCE(?4, enabled), \
                 disabled_reason = CASE WHEN ?4 IS NULL OR ?4 = enabled THEN disabled_reason \
                 WHEN ?4 THEN '' ELSE ?5 END, \
                 failing_since = CASE WHEN ?4 AND NOT enabled THEN 0 ELSE failing_since END \
                 WHERE id = ?1",
                params![
                    id,
                    update.url,
                    update.events_json(),
                    update.enabled,
                    WebhookUpdate::disabled_reason(&ctx.actor)
                ],
            )
            .map_err(db)?;
            if update.enabled == Some(true) && !was_enabled {
                tx.execute(
                    "UPDATE webhook_messages SET next_attempt_at = ?2 \
                     WHERE webhook_id = ?1 AND state = 'pending' AND next_attempt_at > ?2",
                    params![id, ctx.now],
                )
                .map_err(db)?;
            }
            record_audit(tx, ctx, "webhook.update", "", "", update.audit_detail(id, was_enabled))?;
            read_webhook(tx, id)
        })
    }

    fn delete_webhook(&self, ctx: &Ctx, id: &str) -> Result<()> {
        self.write(|tx| {
            let url: Option<String> = tx
                .query_row("SELECT url FROM webhooks WHERE id = ?1", [id], |row| row.get(0))
                .optional()
                .map_err(db)?;
            let Some(url) = url else {
                return Err(Error::NotFound { what: "webhook", id: id.to_owned() });
            };
            tx.execute("DELETE FROM webhooks WHERE id = ?1", [id]).map_err(db)?;
            let dropped = tx
                .execute("DELETE FROM webhook_messages WHERE webhook_id = ?1 AND state = 'pending'", [id])
                .map_err(db)?;
            record_audit(
                tx,
                ctx,
                "webhook.delete",
                "",
                "",
                serde_json::json!({ "webhook_id": id, "url": url, "undelivered": dropped }),
            )
        })
    }

    fn claim_webhook_messages(&self, now: i64, lease_until: i64, limit: usize) -> Result<Vec<Outgoing>> {
        self.write(|tx| {
            let claimed = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT m.id, m.webhook_id, w.url, m.event_type, m.payload, m.attempts, \
                         w.nonce, w.ciphertext, w.master_version, \
                         w.previous_nonce, w.previous_ciphertext, w.previous_master_version, w.previous_expires_at \
                         FROM webhook_messages m JOIN webhooks w ON w.id = m.webhook_id \
                         WHERE m.state = 'pending' AND m.next_attempt_at <= ?1 AND m.lease_until <= ?1 \
                         AND w.enabled = 1 ORDER BY m.seq LIMIT ?2",
                    )
                    .map_err(db)?;
                let rows = stmt
                    .query_map(params![now, limit_param(limit)], |row| {
                        let sealed = sealed_from_row(row, 6)?.ok_or_else(|| {
                            rusqlite::Error::FromSqlConversionFailure(
                                6,
                                Type::Blob,
                                "no webhook secret".into(),
                            )
                        })?;
                        let previous_expires_at: i64 = row.get(12)?;
                        let previous = sealed_from_row(row, 9)?.filter(|_| previous_expires_at > now);
                        Ok(Outgoing {
                            message_id: row.get(0)?,
                            webhook_id: row.get(1)?,
                            url: row.get(2)?,
                            event_type: row.get(3)?,
                            payload: row.get(4)?,
                            attempts: row.get(5)?,
                            sealed,
                            previous,
                        })
                    })
                    .map_err(db)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)?
            };
            for message in &claimed {
                tx.prepare_cached("UPDATE webhook_messages SET lease_until = ?2 WHERE id = ?1")
                    .map_err(db)?
                    .execute(params![message.message_id, lease_until])
                    .map_err(db)?;
            }
            Ok(claimed)
        })
    }

    fn finish_webhook_attempt(&self, attempt: &Attempt, outcome: Outcome, disable_after: i64) -> Result<()> {
        self.write(|tx| {
            // The endpoint's failing time, and whether this attempt disables it.
            let mut disable = match outcome {
                Outcome::Disable => {
                    Some(format!("the receiver answered {} at attempt {}", attempt.status, attempt.attempt))
                }
                _ => None,
            };
            match outcome {
                Outcome::Delivered => {
                    tx.prepare_cached("UPDATE webhooks SET failing_since = 0 WHERE id = ?1 AND failing_since != 0")
                        .map_err(db)?
                        .execute([&attempt.webhook_id])
                        .map_err(db)?;
                }
                Outcome::RetryAt(_) | Outcome::GaveUp => {
                    tx.prepare_cached("UPDATE webhooks SET failing_since = ?2 WHERE id = ?1 AND failing_since = 0")
                        .map_err(db)?
                        .execute(params![attempt.webhook_id, attempt.at])
                        .map_err(db)?;
                    let since: Option<i64> = tx
                        .prepare_cached("SELECT failing_since FROM webhooks WHERE id = ?1 AND enabled = 1")
                        .map_err(db)?
                        .query_row([&attempt.webhook_id], |row| row.get(0))
                        .optional()
                        .map_err(db)?;
                    if let Some(since) = since.filter(|since| *since != 0 && attempt.at - since >= disable_after) {
                        disable = Some(webhooks::failing_reason(since, attempt.at, disable_after));
                    }
                }
                Outcome::Disable => {}
            }
            let (outcome, logged, next_attempt_at) = match disable {
                Some(_) => (Outcome::Disable, Outcome::Disable.as_str(), 0),
                None => (outcome, attempt.outcome.as_str(), attempt.next_attempt_at),
            };
            tx.prepare_cached(&format!(
                "INSERT INTO webhook_attempts ({ATTEMPT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ))
            .map_err(db)?
            .execute(params![
                attempt.message_id,
                attempt.webhook_id,
                attempt.event_type,
                attempt.attempt,
                attempt.at,
                attempt.status,
                attempt.latency_ms,
                attempt.error,
                logged,
                next_attempt_at
            ])
            .map_err(db)?;
            let (state, next) = match outcome {
                Outcome::Delivered => ("delivered", 0),
                Outcome::RetryAt(at) => ("pending", at),
                Outcome::GaveUp | Outcome::Disable => ("failed", 0),
            };
            tx.prepare_cached(
                "UPDATE webhook_messages SET state = ?2, attempts = MAX(attempts, ?3), next_attempt_at = ?4, \
                 lease_until = 0 WHERE id = ?1 AND state = 'pending'",
            )
            .map_err(db)?
            .execute(params![attempt.message_id, state, attempt.attempt, next])
            .map_err(db)?;
            if let Some(reason) = disable {
                disable_webhook(tx, &attempt.webhook_id, &reason, attempt.at)?;
            }
            Ok(())
        })
    }

    fn list_webhook_attempts(&self, webhook_id: Option<&str>, limit: usize) -> Result<Vec<Attempt>> {
        self.read(|tx| {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT {ATTEMPT_COLUMNS} FROM webhook_attempts WHERE (?1 IS NULL OR webhook_id = ?1) \
                     ORDER BY seq DESC LIMIT ?2"
                ))
                .map_err(db)?;
            let rows =
                stmt.query_map(params![webhook_id, limit_param(limit)], attempt_from_row).map_err(db)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
        })
    }

    fn rotate_webhook_secret(
        &self,
        ctx: &Ctx,
        id: &str,
        sealed: Sealed,
        previous_expires_at: i64,
    ) -> Result<Webhook> {
        self.write(|tx| {
            let exists: bool = tx
                .query_row("SELECT EXISTS (SELECT 1 FROM webhooks WHERE id = ?1)", [id], |row| row.get(0))
                .map_err(db)?;
            if !exists {
                return Err(Error::NotFound { what: "webhook", id: id.to_owned() });
            }
            // The right-hand sides read the row as it was: the current secret becomes the previous.
            let keep = previous_expires_at > ctx.now;
            if keep {
                tx.execute(
                    "UPDATE webhooks SET previous_nonce = nonce, previous_ciphertext = ciphertext, \
                     previous_master_version = master_version, previous_expires_at = ?5, \
                     nonce = ?2, ciphertext = ?3, master_version = ?4 WHERE id = ?1",
                    params![id, &sealed.nonce[..], sealed.ciphertext, sealed.version, previous_expires_at],
                )
            } else {
                tx.execute(
                    "UPDATE webhooks SET previous_nonce = NULL, previous_ciphertext = NULL, \
                     previous_master_version = 0, previous_expires_at = 0, \
                     nonce = ?2, ciphertext = ?3, master_version = ?4 WHERE id = ?1",
                    params![id, &sealed.nonce[..], sealed.ciphertext, sealed.version],
                )
            }
            .map_err(db)?;
            record_audit(
                tx,
                ctx,
                "webhook.rotate_secret",
                "",
                "",
                serde_json::json!({
                    "webhook_id": id,
                    "previous_expires_at": if keep { previous_expires_at } else { 0 },
                }),
            )?;
            read_webhook(tx, id)
        })
    }

    fn replay_webhook_messages(&self, ctx: &Ctx, since: i64, webhook_id: Option<&str>) -> Result<u64> {
        self.write(|tx| {
            if let Some(id) = webhook_id {
                let enabled: Option<bool> = tx
                    .query_row("SELECT enabled FROM webhooks WHERE id = ?1", [id], |row| row.get(0))
                    .optional()
                    .map_err(db)?;
                webhooks::require_enabled(id, enabled)?;
            }
            // An attempt under way keeps its lease: it is the one that delivers the message again.
            let requeued = tx
                .execute(
                    "UPDATE webhook_messages SET state = 'pending', attempts = 0, next_attempt_at = ?2 \
                     WHERE created_at >= ?1 AND (?3 IS NULL OR webhook_id = ?3) \
                     AND webhook_id IN (SELECT id FROM webhooks WHERE enabled = 1)",
                    params![since, ctx.now, webhook_id],
                )
                .map_err(db)?;
            record_audit(
                tx,
                ctx,
                "webhook.replay",
                "",
                "",
                serde_json::json!({ "webhook_id": webhook_id, "since": since, "requeued": requeued }),
            )?;
            u64::try_from(requeued).map_err(|e| Error::internal("counting replayed messages", e))
        })
    }

    fn prune_webhooks(&self, before: i64, now: i64, limit: usize) -> Result<webhooks::Pruned> {
        self.write(|tx| {
            let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
            let messages = tx
                .prepare_cached(
                    "DELETE FROM webhook_messages WHERE seq IN (SELECT seq FROM webhook_messages \
                     WHERE created_at < ?1 AND state != 'pending' ORDER BY created_at LIMIT ?2)",
                )
                .map_err(db)?
                .execute(params![before, limit_param(limit)])
                .map_err(db)?;
            let attempts = tx
                .prepare_cached(
                    "DELETE FROM webhook_attempts WHERE seq IN (SELECT seq FROM webhook_attempts \
                     WHERE at < ?1 ORDER BY at LIMIT ?2)",
                )
                .map_err(db)?
                .execute(params![before, limit_param(limit)])
                .map_err(db)?;
            let secrets = tx
                .prepare_cached(
                    "UPDATE webhooks SET previous_nonce = NULL, previous_ciphertext = NULL, \
                     previous_master_version = 0, previous_expires_at = 0 \
                     WHERE previous_ciphertext IS NOT NULL AND previous_expires_at <= ?1",
                )
                .map_err(db)?
                .execute([now])
                .map_err(db)?;
            Ok(webhooks::Pruned {
                messages: count(messages),
                attempts: count(attempts),
                secrets: count(secrets),
            })
        })
    }

    fn list_webhook_secrets(&self) -> Result<Vec<SealedSecret>> {
        self.read(|tx| {
            let mut stmt = tx
                .prepare(
                    "SELECT id, nonce, ciphertext, master_version, \
                     previous_nonce, previous_ciphertext, previous_master_version FROM webhooks ORDER BY id",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, sealed_from_row(row, 1)?, sealed_from_row(row, 4)?))
                })
                .map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                let (webhook_id, current, previous) = row.map_err(db)?;
                for (slot, sealed) in [(SecretSlot::Current, current), (SecretSlot::Previous, previous)] {
                    if let Some(sealed) = sealed {
                        out.push(SealedSecret { webhook_id: webhook_id.clone(), slot, sealed });
                    }
                }
            }
            Ok(out)
        })
    }

    fn reseal_webhook_secrets(&self, updates: &[(String, SecretSlot, u32, Sealed)]) -> Result<usize> {
        if updates.is_empty() {
            return Ok(0);
        }
        self.write(|tx| {
            let mut changed = 0;
            for (webhook_id, slot, old_version, sealed) in updates {
                let sql = match slot {
                    SecretSlot::Current => {
                        "UPDATE webhooks SET nonce = ?2, ciphertext = ?3, master_version = ?4 \
                         WHERE id = ?1 AND master_version = ?5"
                    }
                    SecretSlot::Previous => {
                        "UPDATE webhooks SET previous_nonce = ?2, previous_ciphertext = ?3, \
                         previous_master_version = ?4 \
                         WHERE id = ?1 AND previous_master_version = ?5 AND previous_ciphertext IS NOT NULL"
                    }
                };
                changed += tx
                    .execute(
                        sql,
                        params![
                            webhook_id,
                            &sealed.nonce[..],
                            sealed.ciphertext,
                            sealed.version,
                            old_version
                        ],
                    )
                    .map_err(db)?;
            }
            Ok(changed)
        })
    }

    /// One process writes a SQLite file: its commits wake it already.
    fn listen_for_commits(&self, _wake: std::sync::Arc<dyn Fn() + Send + Sync>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::suite::{ctx, new_key, store_suite};

    /// A fresh store in a temporary folder, removed when dropped.
    struct TestStore {
        store: SqliteStore,
        _dir: tempfile::TempDir,
    }

    impl std::ops::Deref for TestStore {
        type Target = SqliteStore;
        fn deref(&self) -> &SqliteStore {
            &self.store
        }
    }

    fn open(_test: &str) -> TestStore {
        let dir = tempfile::tempdir().unwrap();
        TestStore { store: SqliteStore::open(&dir.path().join("keys.db")).unwrap(), _dir: dir }
    }

    // The shared store suite (store/suite.rs), on SQLite.
    store_suite!(open);

    /// A store made by version 3 (no `changes.detail`) opens, keeps its changes, and takes purges.
    #[test]
    fn a_version_3_store_gains_the_purge_column_and_keeps_its_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, \
                 key_id TEXT NOT NULL, consumer_id TEXT NOT NULL, at INTEGER NOT NULL);
                 INSERT INTO changes (kind, key_id, consumer_id, at) VALUES ('key_revoked', 'k1', 'c1', 5);
                 PRAGMA user_version = 3;",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let (changes, _) = store.list_changes(0, 10).unwrap();
        assert_eq!(
            (changes[0].kind, changes[0].key_id.as_str(), changes[0].purge.clone()),
            (ChangeKind::KeyRevoked, "k1", None)
        );
        let purge = CachePurge { target: crate::model::PurgeTarget::All, host: String::new(), soft: false };
        assert_eq!(store.purge_cache(&ctx(), &purge).unwrap(), 2);
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.list_changes(1, 10).unwrap().0[0].purge, Some(purge));
    }

    /// A store made by version 5 (webhooks without the rotation and failing columns) opens,
    /// keeps its endpoints and their secrets, and rotates them.
    #[test]
    fn a_version_5_store_gains_the_webhook_columns_and_keeps_its_endpoints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE webhooks (pos INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, \
                 url TEXT NOT NULL, events TEXT NOT NULL, enabled INTEGER NOT NULL DEFAULT 1, \
                 disabled_reason TEXT NOT NULL DEFAULT '', nonce BLOB NOT NULL, ciphertext BLOB NOT NULL, \
                 master_version INTEGER NOT NULL, created_at INTEGER NOT NULL);
                 INSERT INTO webhooks (id, url, events, nonce, ciphertext, master_version, created_at)
                 VALUES ('wh_old', 'https://h/', '[\"key.created\"]', x'030303030303030303030303', x'0102', 1, 5);
                 PRAGMA user_version = 5;",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let hooks = store.list_webhooks().unwrap();
        assert_eq!(
            (
                hooks[0].id.as_str(),
                hooks[0].created_at,
                hooks[0].previous_secret_expires_at,
                hooks[0].failing_since
            ),
            ("wh_old", 5, 0, 0)
        );
        let new = Sealed { version: 1, nonce: [4; 12], ciphertext: vec![9] };
        store.rotate_webhook_secret(&ctx(), "wh_old", new, 2_000).unwrap();
        let slots: Vec<(SecretSlot, Vec<u8>)> = store
            .list_webhook_secrets()
            .unwrap()
            .into_iter()
            .map(|s| (s.slot, s.sealed.ciphertext))
            .collect();
        assert_eq!(slots, [(SecretSlot::Current, vec![9]), (SecretSlot::Previous, vec![1, 2])]);
        let version: i64 =
            store.writer.lock().unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        drop(store);
        assert_eq!(SqliteStore::open(&path).unwrap().list_webhooks().unwrap().len(), 1, "opens again");
    }

    #[test]
    fn a_key_lookup_never_waits_behind_other_reads() {
        let store = open("");
        store.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
        // Every general reader busy (long scans), and one lookup connection too.
        let _held: Vec<_> = store.readers.iter().map(|r| r.lock().unwrap()).collect();
        let _one = store.lookups[0].lock().unwrap();
        let found = store.lookup_secret(&[1; 32]).unwrap().found.map(|m| m.key.id);
        assert_eq!(found.as_deref(), Some("key_1"));
    }

    #[test]
    fn a_reopened_store_counts_audit_rows_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("keys.db")).unwrap();
        store.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
        assert_eq!(store.audit_written(), 2);
        // The count is this store's, not the log's.
        drop(store);
        let store = SqliteStore::open(&dir.path().join("keys.db")).unwrap();
        assert_eq!(store.audit_written(), 0);
        assert_eq!(store.list_audit(0, 100).unwrap().len(), 2);
    }

    #[test]
    fn the_database_uses_wal_and_full_sync() {
        let store = open("");
        let conn = store.writer.lock().unwrap();
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(sync, 2);
    }
}
