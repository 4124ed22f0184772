//! PostgreSQL storage, for several key-service replicas over one database.
//!
//! The same tables, rows, errors, audit entries and change rows as the SQLite store
//! ([`super::SqliteStore`]); what differs is said here.
//!
//! **Driver.** `tokio-postgres` with a `deadpool-postgres` pool, on a small runtime of the
//! store's own (two threads). The [`Store`] trait is synchronous and is called from the blocking
//! pool, from plain test threads and, for `lookup_secret`, from the service's async threads. The
//! synchronous `postgres` crate cannot serve the last case (it drives each connection with its own
//! runtime and panics when called inside another), and neither can a `Handle::block_on` of the
//! service's runtime. So each call hands its future to the store's runtime and waits for the
//! answer on a channel, which works on any thread; the connections, the pool's timers and every
//! query live on that runtime. No ORM: the SQL is written out, as in the SQLite store.
//!
//! **A change feed without gaps.** A reader asks for "the changes after N". Sequences hand out
//! numbers at insert time, not at commit time: a transaction that took 7 can commit after one
//! that took 8, and a reader that saw 8 has moved past 7 for good. Here every writing
//! transaction first locks the one row of `feed_head` (`SELECT … FOR UPDATE`), numbers its changes
//! (and audit entries) from the heads it read there, and stores the new heads in that row before
//! it commits. Writers therefore run one at a time, like SQLite's single writer, and a writer
//! reads the heads only after the previous one committed: feed positions are dense (a rolled-back
//! transaction gives its numbers back) and their order is commit order, so every snapshot holds a
//! prefix of the feed. Reads see the head in the same snapshot as the rows (one statement, or a
//! `REPEATABLE READ` transaction).
//!
//! **Failures.** A database that cannot be reached (refused, reset, shutting down, out of
//! connections, no answer within [`CALL_TIMEOUT`]) is [`Error::Unavailable`], which the service
//! answers as `UNAVAILABLE`: the caller retries, and never gets a wrong answer. The pool replaces
//! broken connections by itself, so the store recovers when the database is back.
//!
//! **Replicas.** Schema migrations run at open under an advisory lock, so replicas starting
//! together apply each once. The key service has no background job that must run on one replica
//! only: the usage flush writes last-use times that only move forward, which any number of
//! replicas may do.

mod lifecycle;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{IsolationLevel, NoTls, Row};

use super::Store;
use crate::error::{Error, Result};
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

/// Schema migrations, applied in order once each. Version 1 is the SQLite store's schema 4.
const MIGRATIONS: &[(i64, &str)] =
    &[(1, SCHEMA_V1), (2, SCHEMA_V2), (3, SCHEMA_V3), (4, lifecycle::SCHEMA_V4), (5, SCHEMA_V5)];

/// 5: webhook secret rotation and failing time (`webhooks.previous_*`, `webhooks.failing_since`),
/// the days a consumer's quota ran out (`quota_exhausted`), and the indexes that pruning and
/// replay read by time.
const SCHEMA_V5: &str = "
ALTER TABLE webhooks
    ADD COLUMN previous_nonce          BYTEA,
    ADD COLUMN previous_ciphertext     BYTEA,
    ADD COLUMN previous_master_version BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN previous_expires_at     BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN failing_since           BIGINT NOT NULL DEFAULT 0;
CREATE INDEX webhook_messages_by_created ON webhook_messages (created_at);
CREATE INDEX webhook_attempts_by_at ON webhook_attempts (at);
CREATE TABLE quota_exhausted (
    consumer_id      TEXT   NOT NULL,
    rule             TEXT   NOT NULL,
    day              BIGINT NOT NULL,
    first_refused_at BIGINT NOT NULL,
    PRIMARY KEY (consumer_id, rule, day)
);
CREATE INDEX quota_exhausted_by_day ON quota_exhausted (day);
";

/// 3: webhooks (`webhooks`, the outbox `webhook_messages`, the delivery log `webhook_attempts`).
const SCHEMA_V3: &str = "
CREATE TABLE webhooks (
    pos             BIGSERIAL PRIMARY KEY,
    id              TEXT    NOT NULL UNIQUE,
    url             TEXT    NOT NULL,
    events          TEXT    NOT NULL,
    enabled         BOOLEAN NOT NULL DEFAULT TRUE,
    disabled_reason TEXT    NOT NULL DEFAULT '',
    nonce           BYTEA   NOT NULL,
    ciphertext      BYTEA   NOT NULL,
    master_version  BIGINT  NOT NULL,
    created_at      BIGINT  NOT NULL
);
CREATE TABLE webhook_messages (
    seq             BIGSERIAL PRIMARY KEY,
    id              TEXT   NOT NULL UNIQUE,
    webhook_id      TEXT   NOT NULL,
    event_type      TEXT   NOT NULL,
    payload         TEXT   NOT NULL,
    created_at      BIGINT NOT NULL,
    state           TEXT   NOT NULL DEFAULT 'pending',
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_until     BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX webhook_messages_due ON webhook_messages (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_messages_by_webhook ON webhook_messages (webhook_id);
CREATE TABLE webhook_attempts (
    seq             BIGSERIAL PRIMARY KEY,
    message_id      TEXT   NOT NULL,
    webhook_id      TEXT   NOT NULL,
    event_type      TEXT   NOT NULL,
    attempt         BIGINT NOT NULL,
    at              BIGINT NOT NULL,
    status          BIGINT NOT NULL,
    latency_ms      BIGINT NOT NULL,
    error           TEXT   NOT NULL,
    outcome         TEXT   NOT NULL,
    next_attempt_at BIGINT NOT NULL
);
CREATE INDEX webhook_attempts_by_webhook ON webhook_attempts (webhook_id, seq);
";

/// 2: usage by the hour, per JWT subject and per rate-limit refusal; the dashboard's indexes.
const SCHEMA_V2: &str = "
CREATE TABLE usage_hourly (
    key_id  TEXT   NOT NULL,
    hour    BIGINT NOT NULL,
    outcome TEXT   NOT NULL,
    count   BIGINT NOT NULL,
    PRIMARY KEY (key_id, hour, outcome)
);
CREATE INDEX usage_hourly_by_hour ON usage_hourly (hour);
CREATE TABLE subject_usage (
    subject TEXT   NOT NULL,
    minute  BIGINT NOT NULL,
    outcome TEXT   NOT NULL,
    count   BIGINT NOT NULL,
    PRIMARY KEY (subject, minute, outcome)
);
CREATE INDEX subject_usage_by_minute ON subject_usage (minute);
CREATE TABLE limit_usage (
    consumer_id TEXT   NOT NULL,
    rule        TEXT   NOT NULL,
    minute      BIGINT NOT NULL,
    count       BIGINT NOT NULL,
    PRIMARY KEY (consumer_id, rule, minute)
);
CREATE INDEX limit_usage_by_minute ON limit_usage (minute);
CREATE INDEX keys_by_expiry ON keys (expires_at) WHERE expires_at != 0;
CREATE INDEX audit_by_key ON audit (key_id, seq);
CREATE INDEX audit_by_consumer ON audit (consumer_id, seq);
";

const SCHEMA_V1: &str = "
CREATE TABLE consumers (
    pos        BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    id         TEXT   NOT NULL UNIQUE,
    name       TEXT   NOT NULL UNIQUE,
    metadata   TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE keys (
    pos                     BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    id                      TEXT   NOT NULL UNIQUE,
    consumer_id             TEXT   NOT NULL,
    name                    TEXT   NOT NULL,
    display_prefix          TEXT   NOT NULL,
    scopes                  TEXT   NOT NULL,
    metadata                TEXT   NOT NULL,
    rate_limit              TEXT,
    expires_at              BIGINT NOT NULL,
    created_at              BIGINT NOT NULL,
    last_used_at            BIGINT NOT NULL DEFAULT 0,
    revoked_at              BIGINT NOT NULL DEFAULT 0,
    revoke_reason           TEXT   NOT NULL DEFAULT '',
    previous_display_prefix TEXT   NOT NULL DEFAULT '',
    previous_expires_at     BIGINT NOT NULL DEFAULT 0,
    rotated_at              BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX keys_by_consumer ON keys (consumer_id, pos);
-- Keyed hashes of secrets: the current one (expires_at = 0) and at most one previous one.
CREATE TABLE key_secrets (
    hash           BYTEA  PRIMARY KEY,
    key_id         TEXT   NOT NULL,
    display_prefix TEXT   NOT NULL,
    expires_at     BIGINT NOT NULL
);
CREATE INDEX key_secrets_by_key ON key_secrets (key_id);
-- Numbered from feed_head in commit order (see the module documentation).
CREATE TABLE changes (
    seq         BIGINT PRIMARY KEY,
    kind        TEXT   NOT NULL,
    key_id      TEXT   NOT NULL,
    consumer_id TEXT   NOT NULL,
    at          BIGINT NOT NULL,
    -- What a cache purge purges (JSON); empty for every other kind.
    detail      TEXT   NOT NULL DEFAULT ''
);
CREATE TABLE signing_keys (
    key_id         TEXT   PRIMARY KEY,
    algorithm      TEXT   NOT NULL,
    public_key     BYTEA,
    nonce          BYTEA,
    ciphertext     BYTEA,
    master_version BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE usage (
    key_id  TEXT   NOT NULL,
    minute  BIGINT NOT NULL,
    outcome TEXT   NOT NULL,
    count   BIGINT NOT NULL,
    PRIMARY KEY (key_id, minute, outcome)
);
CREATE INDEX usage_by_minute ON usage (minute);
CREATE TABLE usage_batches (
    gateway TEXT   NOT NULL,
    batch   BIGINT NOT NULL,
    at      BIGINT NOT NULL,
    PRIMARY KEY (gateway, batch)
);
CREATE TABLE gateways (
    name           TEXT   PRIMARY KEY,
    last_report_at BIGINT NOT NULL,
    feed_seq       BIGINT NOT NULL
);
CREATE TABLE audit (
    seq         BIGINT PRIMARY KEY,
    at          BIGINT NOT NULL,
    actor       TEXT   NOT NULL,
    action      TEXT   NOT NULL,
    key_id      TEXT   NOT NULL,
    consumer_id TEXT   NOT NULL,
    detail      TEXT   NOT NULL
);
-- The heads of the change feed and the audit log: one row, locked by every writer.
CREATE TABLE feed_head (
    only_row  BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    seq       BIGINT  NOT NULL,
    audit_seq BIGINT  NOT NULL
);
INSERT INTO feed_head (only_row, seq, audit_seq) VALUES (TRUE, 0, 0);
";

/// The advisory lock migrations run under (any constant the application owns).
const MIGRATION_LOCK: i64 = 0x746f_6c6c_6761_7465; // "tollgate"

/// Connections per store (per replica).
const MAX_CONNECTIONS: usize = 16;

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a call may wait for a free connection.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// How long one store call may take in all before it is answered as unavailable.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

const KEY_COLUMNS: &str = "k.pos, k.id, k.consumer_id, k.name, k.display_prefix, k.scopes, k.metadata, \
     k.rate_limit, k.expires_at, k.created_at, k.last_used_at, k.revoked_at, k.revoke_reason, \
     k.previous_display_prefix, k.previous_expires_at, k.rotated_at, \
     (SELECT algorithm FROM signing_keys sk WHERE sk.key_id = k.id)";

const CONSUMER_COLUMNS: &str = "pos, id, name, metadata, created_at";

type Param<'a> = &'a (dyn ToSql + Sync);

/// The channel every write transaction notifies at commit (`NOTIFY`), and every replica
/// listens on.
const COMMITS_CHANNEL: &str = "tollgate_commits";

/// The PostgreSQL implementation of [`Store`].
pub struct PostgresStore {
    pool: Pool,
    /// How to connect: the listener for other replicas' commits has a connection of its own.
    config: tokio_postgres::Config,
    /// Runs the connections and every query; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    /// Audit rows committed through this store since it was opened.
    audit_written: AtomicU64,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // The store may be dropped on an async thread, where a runtime must not block.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// `true` for the errors of a database that cannot be reached or cannot take the work now, as
/// opposed to a query it refused.
fn is_unavailable(err: &tokio_postgres::Error) -> bool {
    if err.is_closed() {
        return true;
    }
    match err.code() {
        // Connection exceptions, insufficient resources, operator intervention (shutdown,
        // cannot connect now).
        Some(code) => {
            let code = code.code();
            code.starts_with("08") || code.starts_with("53") || code.starts_with("57P")
        }
        // No SQL state: the socket failed, or the connection could not be made.
        None => err.as_db_error().is_none(),
    }
}

/// The error with what the server said or the cause of a failed connection (the driver's own
/// text is only "db error" or "error connecting to server").
fn describe(err: &tokio_postgres::Error) -> String {
    match (err.as_db_error(), std::error::Error::source(err)) {
        (Some(db), _) => format!("{} ({})", db.message(), db.code().code()),
        (None, Some(cause)) => format!("{err}: {cause}"),
        (None, None) => err.to_string(),
    }
}

fn db(err: tokio_postgres::Error) -> Error {
    if is_unavailable(&err) {
        Error::Unavailable(format!("database: {}", describe(&err)))
    } else {
        Error::Internal(format!("database: {}", describe(&err)))
    }
}

fn pool_err(err: PoolError) -> Error {
    match err {
        PoolError::Backend(err) => db(err),
        other => Error::Unavailable(format!("database connection: {other}")),
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::internal("encoding a column", e))
}

fn col<'a, T: FromSql<'a>>(row: &'a Row, index: usize) -> Result<T> {
    row.try_get(index).map_err(|e| Error::internal("database: reading a column", e))
}

fn json_col<T: DeserializeOwned>(row: &Row, index: usize) -> Result<T> {
    let text: &str = col(row, index)?;
    serde_json::from_str(text).map_err(|e| Error::internal("database: decoding a column", e))
}

/// An audit row read as `seq, at, actor, action, key_id, consumer_id, detail`.
fn audit_from_row(row: &Row) -> Result<AuditEntry> {
    Ok(AuditEntry {
        seq: seq_col(row, 0)?,
        at: col(row, 1)?,
        actor: col(row, 2)?,
        action: col(row, 3)?,
        key_id: col(row, 4)?,
        consumer_id: col(row, 5)?,
        detail: json_col(row, 6)?,
    })
}

fn seq_col(row: &Row, index: usize) -> Result<u64> {
    let value: i64 = col(row, index)?;
    u64::try_from(value).map_err(|e| Error::internal("database: sequence number", e))
}

fn key_from_row(row: &Row, first: usize) -> Result<Key> {
    let rate_limit: Option<&str> = col(row, first + 7)?;
    let rate_limit = match rate_limit {
        Some(text) => Some(
            serde_json::from_str(text).map_err(|e| Error::internal("database: decoding a rate limit", e))?,
        ),
        None => None,
    };
    let signing: Option<&str> = col(row, first + 16)?;
    let signing = match signing {
        Some(text) => Some(
            SigningAlgorithm::parse(text)
                .ok_or_else(|| Error::Internal(format!("database: unknown signing algorithm {text:?}")))?,
        ),
        None => None,
    };
    Ok(Key {
        position: col(row, first)?,
        id: col(row, first + 1)?,
        consumer_id: col(row, first + 2)?,
        name: col(row, first + 3)?,
        display_prefix: col(row, first + 4)?,
        scopes: json_col(row, first + 5)?,
        metadata: json_col(row, first + 6)?,
        rate_limit,
        expires_at: col(row, first + 8)?,
        created_at: col(row, first + 9)?,
        last_used_at: col(row, first + 10)?,
        revoked_at: col(row, first + 11)?,
        revoke_reason: col(row, first + 12)?,
        previous_display_prefix: col(row, first + 13)?,
        previous_expires_at: col(row, first + 14)?,
        rotated_at: col(row, first + 15)?,
        signing,
    })
}

fn consumer_from_row(row: &Row) -> Result<Consumer> {
    Ok(Consumer {
        position: col(row, 0)?,
        id: col(row, 1)?,
        name: col(row, 2)?,
        metadata: json_col(row, 3)?,
        created_at: col(row, 4)?,
    })
}

fn change_from_row(row: &Row) -> Result<Change> {
    let kind: &str = col(row, 1)?;
    let kind = ChangeKind::parse(kind)
        .ok_or_else(|| Error::Internal(format!("database: unknown change kind {kind:?}")))?;
    let purge = if kind == ChangeKind::CachePurged { Some(json_col(row, 5)?) } else { None };
    Ok(Change {
        seq: seq_col(row, 0)?,
        kind,
        key_id: col(row, 2)?,
        consumer_id: col(row, 3)?,
        at: col(row, 4)?,
        purge,
    })
}

fn sealed_from_row(row: &Row, first: usize) -> Result<Option<Sealed>> {
    let nonce: Option<Vec<u8>> = col(row, first)?;
    let ciphertext: Option<Vec<u8>> = col(row, first + 1)?;
    let version: i64 = col(row, first + 2)?;
    match (nonce, ciphertext) {
        (Some(nonce), Some(ciphertext)) => {
            let nonce: [u8; 12] = nonce
                .try_into()
                .map_err(|_| Error::Internal("database: nonce is not 12 bytes".to_owned()))?;
            let version =
                u32::try_from(version).map_err(|e| Error::internal("database: master key version", e))?;
            Ok(Some(Sealed { version, nonce, ciphertext }))
        }
        _ => Ok(None),
    }
}

const WEBHOOK_COLUMNS: &str =
    "id, url, events, enabled, disabled_reason, created_at, previous_expires_at, failing_since";

fn webhook_from_row(row: &Row) -> Result<Webhook> {
    let events: Vec<String> = json_col(row, 2)?;
    let events = events
        .iter()
        .map(|e| EventType::parse(e).ok_or_else(|| Error::Internal(format!("database: unknown event {e:?}"))))
        .collect::<Result<Vec<_>>>()?;
    Ok(Webhook {
        id: col(row, 0)?,
        url: col(row, 1)?,
        events,
        enabled: col(row, 3)?,
        disabled_reason: col(row, 4)?,
        created_at: col(row, 5)?,
        previous_secret_expires_at: col(row, 6)?,
        failing_since: col(row, 7)?,
    })
}

const ATTEMPT_COLUMNS: &str =
    "message_id, webhook_id, event_type, attempt, at, status, latency_ms, error, outcome, next_attempt_at";

fn small<T: TryFrom<i64>>(row: &Row, index: usize) -> Result<T> {
    let value: i64 = col(row, index)?;
    T::try_from(value).map_err(|_| Error::Internal(format!("database: column {index} out of range")))
}

fn attempt_from_row(row: &Row) -> Result<Attempt> {
    Ok(Attempt {
        message_id: col(row, 0)?,
        webhook_id: col(row, 1)?,
        event_type: col(row, 2)?,
        attempt: small(row, 3)?,
        at: col(row, 4)?,
        status: small(row, 5)?,
        latency_ms: small(row, 6)?,
        error: col(row, 7)?,
        outcome: col(row, 8)?,
        next_attempt_at: col(row, 9)?,
    })
}

fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Whether [`status_clause`] reads the time.
fn status_needs_now(status: KeyStatus) -> bool {
    status != KeyStatus::Revoked
}

/// The SQL condition for a status; `now` is parameter `$n` (see [`status_needs_now`]).
fn status_clause(status: KeyStatus, n: usize) -> String {
    match status {
        KeyStatus::Active => format!("k.revoked_at = 0 AND (k.expires_at = 0 OR k.expires_at > ${n})"),
        KeyStatus::Revoked => "k.revoked_at <> 0".to_owned(),
        KeyStatus::Expired => format!("k.revoked_at = 0 AND k.expires_at <> 0 AND k.expires_at <= ${n}"),
    }
}

/// A read in one snapshot.
async fn snapshot(client: &mut Object) -> Result<deadpool_postgres::Transaction<'_>> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db)
}

/// What a write transaction returns: its value, and how many audit rows it committed.
struct Written<T> {
    value: T,
    audited: u64,
}

/// A write transaction holding the `feed_head` row: its changes and audit entries take the next
/// positions (see the module documentation).
struct Writer<'a> {
    tx: deadpool_postgres::Transaction<'a>,
    seq: i64,
    audit_seq: i64,
    first_seq: i64,
    first_audit_seq: i64,
    /// Whether a webhook message was written.
    enqueued: AtomicBool,
}

impl<'a> Writer<'a> {
    async fn begin(client: &'a mut Object) -> Result<Writer<'a>> {
        let tx = client.transaction().await.map_err(db)?;
        let row = tx.query_one("SELECT seq, audit_seq FROM feed_head FOR UPDATE", &[]).await.map_err(db)?;
        let (seq, audit_seq): (i64, i64) = (col(&row, 0)?, col(&row, 1)?);
        Ok(Writer {
            tx,
            seq,
            audit_seq,
            first_seq: seq,
            first_audit_seq: audit_seq,
            enqueued: AtomicBool::new(false),
        })
    }

    async fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64> {
        let stmt = self.tx.prepare_cached(sql).await.map_err(db)?;
        self.tx.execute(&stmt, params).await.map_err(db)
    }

    async fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>> {
        let stmt = self.tx.prepare_cached(sql).await.map_err(db)?;
        self.tx.query(&stmt, params).await.map_err(db)
    }

    async fn query_opt(&self, sql: &str, params: &[Param<'_>]) -> Result<Option<Row>> {
        let stmt = self.tx.prepare_cached(sql).await.map_err(db)?;
        self.tx.query_opt(&stmt, params).await.map_err(db)
    }

    /// Appends a change; its feed position.
    async fn change(
        &mut self,
        ctx: &Ctx,
        kind: ChangeKind,
        key_id: &str,
        consumer_id: &str,
        detail: &str,
    ) -> Result<u64> {
        let seq = self.seq + 1;
        self.execute(
            "INSERT INTO changes (seq, kind, key_id, consumer_id, at, detail) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&seq, &kind.as_str(), &key_id, &consumer_id, &ctx.now, &detail],
        )
        .await?;
        self.seq = seq;
        // Key events go to the webhook outbox here; consumer events where the name is at hand.
        if let Some(event) = EventType::from_change(kind).filter(|_| !key_id.is_empty()) {
            self.enqueue(ctx, event, &webhooks::key_data(key_id, consumer_id)).await?;
        }
        u64::try_from(seq).map_err(|e| Error::internal("database: change sequence", e))
    }

    /// Writes one outbox message per enabled endpoint subscribed to `event`.
    async fn enqueue(&self, ctx: &Ctx, event: EventType, data: &serde_json::Value) -> Result<()> {
        let hooks = self.query("SELECT id, events FROM webhooks WHERE enabled", &[]).await?;
        let mut body = None;
        for row in &hooks {
            let webhook_id: String = col(row, 0)?;
            let events: Vec<String> = json_col(row, 1)?;
            if !events.iter().any(|e| e == event.as_str()) {
                continue;
            }
            let body = body.get_or_insert_with(|| webhooks::payload(event, ctx.now, data));
            self.execute(
                "INSERT INTO webhook_messages (id, webhook_id, event_type, payload, created_at, next_attempt_at) \
                 VALUES ($1, $2, $3, $4, $5, $5)",
                &[&webhooks::new_message_id()?, &webhook_id, &event.as_str(), &body.as_str(), &ctx.now],
            )
            .await?;
            self.enqueued.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn audit(
        &mut self,
        ctx: &Ctx,
        action: &str,
        key_id: &str,
        consumer_id: &str,
        detail: serde_json::Value,
    ) -> Result<()> {
        let seq = self.audit_seq + 1;
        self.execute(
            "INSERT INTO audit (seq, at, actor, action, key_id, consumer_id, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&seq, &ctx.now, &ctx.actor, &action, &key_id, &consumer_id, &to_json(&detail)?],
        )
        .await?;
        self.audit_seq = seq;
        Ok(())
    }

    async fn commit<T>(self, value: T) -> Result<Written<T>> {
        if self.seq != self.first_seq || self.audit_seq != self.first_audit_seq {
            self.execute("UPDATE feed_head SET seq = $1, audit_seq = $2", &[&self.seq, &self.audit_seq])
                .await?;
        }
        if self.seq != self.first_seq
            || self.audit_seq != self.first_audit_seq
            || self.enqueued.load(Ordering::Relaxed)
        {
            // Delivered at commit to every replica's listener (`listen_for_commits`), which
            // wakes its feed reader and its webhook delivery; they poll anyway, so nothing is
            // lost when a notification is.
            self.execute(&format!("SELECT pg_notify('{COMMITS_CHANNEL}', '')"), &[]).await?;
        }
        let audited = u64::try_from(self.audit_seq - self.first_audit_seq).unwrap_or(0);
        self.tx.commit().await.map_err(db)?;
        Ok(Written { value, audited })
    }

    async fn find_consumer(&self, id_or_name: &str) -> Result<Option<Consumer>> {
        let by_id = self
            .query_opt(&format!("SELECT {CONSUMER_COLUMNS} FROM consumers WHERE id = $1"), &[&id_or_name])
            .await?;
        let row = match by_id {
            Some(row) => Some(row),
            None => {
                self.query_opt(
                    &format!("SELECT {CONSUMER_COLUMNS} FROM consumers WHERE name = $1"),
                    &[&id_or_name],
                )
                .await?
            }
        };
        row.as_ref().map(consumer_from_row).transpose()
    }

    async fn require_consumer(&self, id_or_name: &str) -> Result<Consumer> {
        self.find_consumer(id_or_name)
            .await?
            .ok_or_else(|| Error::NotFound { what: "consumer", id: id_or_name.to_owned() })
    }

    async fn find_key(&self, id: &str) -> Result<Option<Key>> {
        let row =
            self.query_opt(&format!("SELECT {KEY_COLUMNS} FROM keys k WHERE k.id = $1"), &[&id]).await?;
        row.as_ref().map(|row| key_from_row(row, 0)).transpose()
    }

    async fn require_key(&self, id: &str) -> Result<Key> {
        self.find_key(id).await?.ok_or_else(|| Error::NotFound { what: "key", id: id.to_owned() })
    }

    async fn insert_consumer(&mut self, ctx: &Ctx, consumer: &NewConsumer) -> Result<Consumer> {
        let taken = self
            .query_opt(
                "SELECT 1 FROM consumers WHERE id IN ($1, $2) OR name IN ($1, $2) LIMIT 1",
                &[&consumer.id, &consumer.name],
            )
            .await?
            .is_some();
        if taken {
            let id = if consumer.id == consumer.name {
                consumer.id.clone()
            } else {
                format!("{} / {}", consumer.id, consumer.name)
            };
            return Err(Error::AlreadyExists { what: "consumer id or name", id });
        }
        self.execute(
            "INSERT INTO consumers (id, name, metadata, created_at) VALUES ($1, $2, $3, $4)",
            &[&consumer.id, &consumer.name, &to_json(&consumer.metadata)?, &ctx.now],
        )
        .await?;
        self.audit(
            ctx,
            "consumer.create",
            "",
            &consumer.id,
            serde_json::json!({ "name": consumer.name, "metadata": consumer.metadata }),
        )
        .await?;
        self.enqueue(ctx, EventType::ConsumerCreated, &webhooks::consumer_data(&consumer.id, &consumer.name))
            .await?;
        self.require_consumer(&consumer.id).await
    }

    async fn insert_signing(&self, key_id: &str, signing: &NewSigning) -> Result<()> {
        let (public_key, sealed): (Option<&[u8]>, Option<&Sealed>) = match signing {
            NewSigning::Hmac(sealed) => (None, Some(sealed)),
            NewSigning::Ed25519(key) => (Some(key), None),
        };
        let nonce = sealed.map(|s| &s.nonce[..]);
        let ciphertext = sealed.map(|s| s.ciphertext.as_slice());
        let version = i64::from(sealed.map_or(0, |s| s.version));
        self.execute(
            "INSERT INTO signing_keys (key_id, algorithm, public_key, nonce, ciphertext, master_version) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[&key_id, &signing.algorithm().as_str(), &public_key, &nonce, &ciphertext, &version],
        )
        .await?;
        Ok(())
    }

    async fn revoke(&mut self, ctx: &Ctx, key: &Key, reason: &str) -> Result<()> {
        self.execute(
            "UPDATE keys SET revoked_at = $2, revoke_reason = $3 WHERE id = $1",
            &[&key.id, &ctx.now, &reason],
        )
        .await?;
        // A revoked key's uncollected automatic secret is of no use to anyone.
        lifecycle::set_pending(self, ctx, &key.id, None).await?;
        self.change(ctx, ChangeKind::KeyRevoked, &key.id, &key.consumer_id, "").await?;
        Ok(())
    }

    /// An endpoint as it now is, in this transaction (which just wrote it).
    async fn webhook(&self, id: &str) -> Result<Webhook> {
        let row = self
            .query_opt(&format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1"), &[&id])
            .await?
            .ok_or_else(|| Error::Internal(format!("database: webhook {id:?} is missing after its write")))?;
        webhook_from_row(&row)
    }

    /// Disables an enabled endpoint, audits it as `webhook.disable` and tells the other enabled
    /// endpoints subscribed to `webhook.disabled`. Nothing when it is disabled already.
    async fn disable_webhook(&mut self, webhook_id: &str, reason: &str, at: i64) -> Result<()> {
        let Some(row) = self
            .query_opt(
                "UPDATE webhooks SET enabled = FALSE, disabled_reason = $2 WHERE id = $1 AND enabled RETURNING url",
                &[&webhook_id, &reason],
            )
            .await?
        else {
            return Ok(());
        };
        let url: String = col(&row, 0)?;
        let ctx = Ctx { actor: "webhook-delivery".to_owned(), now: at };
        self.audit(
            &ctx,
            "webhook.disable",
            "",
            "",
            serde_json::json!({ "webhook_id": webhook_id, "url": url, "reason": reason }),
        )
        .await?;
        // Disabled first: the event goes to the others only.
        self.enqueue(&ctx, EventType::WebhookDisabled, &webhooks::disabled_data(webhook_id, &url, reason))
            .await
    }
}

/// Applies an attempt to its endpoint's failing time: a success ends it, a failure starts it if
/// it has not started. Returns why the endpoint is to be disabled: a 410, or attempts that have
/// all failed for `disable_after` seconds.
async fn note_attempt(
    tx: &deadpool_postgres::Transaction<'_>,
    attempt: &Attempt,
    outcome: Outcome,
    disable_after: i64,
) -> Result<Option<String>> {
    match outcome {
        Outcome::Disable => {
            Ok(Some(format!("the receiver answered {} at attempt {}", attempt.status, attempt.attempt)))
        }
        Outcome::Delivered => {
            let stmt = tx
                .prepare_cached("UPDATE webhooks SET failing_since = 0 WHERE id = $1 AND failing_since <> 0")
                .await
                .map_err(db)?;
            tx.execute(&stmt, &[&attempt.webhook_id]).await.map_err(db)?;
            Ok(None)
        }
        Outcome::RetryAt(_) | Outcome::GaveUp => {
            let stmt = tx
                .prepare_cached(
                    "UPDATE webhooks SET failing_since = CASE WHEN failing_since = 0 THEN $2 ELSE failing_since END \
                     WHERE id = $1 AND enabled RETURNING failing_since",
                )
                .await
                .map_err(db)?;
            let row = tx.query_opt(&stmt, &[&attempt.webhook_id, &attempt.at]).await.map_err(db)?;
            let since: Option<i64> = row.as_ref().map(|row| col(row, 0)).transpose()?;
            Ok(since
                .filter(|since| *since != 0 && attempt.at - since >= disable_after)
                .map(|since| webhooks::failing_reason(since, attempt.at, disable_after)))
        }
    }
}

/// Writes an attempt to the delivery log and applies `outcome` to its message.
async fn record_attempt(
    tx: &deadpool_postgres::Transaction<'_>,
    attempt: &Attempt,
    outcome: Outcome,
) -> Result<()> {
    let (state, next) = match outcome {
        Outcome::Delivered => ("delivered", 0),
        Outcome::RetryAt(at) => ("pending", at),
        Outcome::GaveUp | Outcome::Disable => ("failed", 0),
    };
    // An attempt that disabled its endpoint is logged so, whatever its status asked for.
    let (logged, next_attempt_at) = match outcome {
        Outcome::Disable => (Outcome::Disable.as_str(), 0),
        _ => (attempt.outcome.as_str(), attempt.next_attempt_at),
    };
    let number = i64::from(attempt.attempt);
    let status = i64::from(attempt.status);
    let latency = i64::try_from(attempt.latency_ms).unwrap_or(i64::MAX);
    let log = tx
        .prepare_cached(&format!(
            "INSERT INTO webhook_attempts ({ATTEMPT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .await
        .map_err(db)?;
    tx.execute(
        &log,
        &[
            &attempt.message_id,
            &attempt.webhook_id,
            &attempt.event_type,
            &number,
            &attempt.at,
            &status,
            &latency,
            &attempt.error,
            &logged,
            &next_attempt_at,
        ],
    )
    .await
    .map_err(db)?;
    let update = tx
        .prepare_cached(
            "UPDATE webhook_messages SET state = $2, attempts = GREATEST(attempts, $3), \
             next_attempt_at = $4, lease_until = 0 WHERE id = $1 AND state = 'pending'",
        )
        .await
        .map_err(db)?;
    tx.execute(&update, &[&attempt.message_id, &state, &number, &next]).await.map_err(db)?;
    Ok(())
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user[:password]@host[:port]/database`,
    /// or any form `tokio-postgres` takes) and applies the schema migrations it lacks.
    pub fn open(url: &str) -> Result<Self> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| Error::invalid("store", format!("not a PostgreSQL URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("tollgate-keyd");
        }
        config.keepalives(true).keepalives_idle(Duration::from_secs(30));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("keyd-postgres")
            .enable_all()
            .build()
            .map_err(|e| Error::internal("starting the database runtime", e))?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(MAX_CONNECTIONS)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| Error::internal("database pool", e))?;
        let handle = runtime.handle().clone();
        let store = Self { pool, config, runtime: Some(runtime), handle, audit_written: AtomicU64::new(0) };
        let pool = store.pool.clone();
        store.run(async move { migrate(&pool).await })?;
        Ok(store)
    }

    /// Runs `work` on the store's runtime and waits for it (at most [`CALL_TIMEOUT`]).
    fn run<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let out = match tokio::time::timeout(CALL_TIMEOUT, work).await {
                Ok(out) => out,
                Err(_) => Err(Error::Unavailable(format!("database: no answer within {CALL_TIMEOUT:?}"))),
            };
            let _ = tx.send(out);
        });
        rx.recv().map_err(|_| Error::Internal("database: the call was dropped".to_owned()))?
    }

    /// Runs a write transaction (see [`Writer`]) and counts its audit rows.
    fn write<T, F, Fut>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Pool) -> Fut,
        Fut: Future<Output = Result<Written<T>>> + Send + 'static,
    {
        let written = self.run(work(self.pool.clone()))?;
        self.audit_written.fetch_add(written.audited, Ordering::Relaxed);
        Ok(written.value)
    }

    /// Replaces sealed secrets in one transaction: each row `(sql, id, version read, new value)`
    /// runs `sql` with `$1` the id, `$2` and `$3` the new nonce and ciphertext, `$4` the new
    /// master-key version and `$5` the version read (a row no longer under it is left alone).
    /// Returns how many rows changed.
    fn reseal_rows(&self, rows: Vec<(&'static str, String, u32, Sealed)>) -> Result<usize> {
        if rows.is_empty() {
            return Ok(0);
        }
        self.write(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let w = Writer::begin(&mut client).await?;
            let mut changed = 0usize;
            for (sql, id, old_version, sealed) in &rows {
                let (old, new) = (i64::from(*old_version), i64::from(sealed.version));
                let n = w.execute(sql, &[id, &&sealed.nonce[..], &sealed.ciphertext, &new, &old]).await?;
                changed += usize::try_from(n).unwrap_or(0);
            }
            w.commit(changed).await
        })
    }

    /// Copies whole tables into this store, which must be empty, in one transaction; verifies the
    /// count of each table before committing. Returns each table with its count.
    pub(crate) fn import(&self, tables: Vec<ImportTable>) -> Result<Vec<(&'static str, u64)>> {
        let pool = self.pool.clone();
        self.run(async move { import(&pool, tables).await })
    }
}

/// Listens on [`COMMITS_CHANNEL`] over a connection of its own and calls `wake` for each
/// notification; after (re)connecting too, for what was committed while it was not listening.
/// A lost connection is tried again every second; runs until the store's runtime stops.
async fn listen_for_commits(config: tokio_postgres::Config, wake: Arc<dyn Fn() + Send + Sync>) {
    let mut failing = false;
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let on_notice = Arc::clone(&wake);
                // Drives the connection (the LISTEN below included) and wakes on each notification.
                let driver = tokio::spawn(async move {
                    while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                        match message {
                            Ok(tokio_postgres::AsyncMessage::Notification(_)) => on_notice(),
                            Ok(_) => {}
                            Err(err) => return Some(err),
                        }
                    }
                    None
                });
                match client.batch_execute(&format!("LISTEN {COMMITS_CHANNEL}")).await {
                    Ok(()) => {
                        if std::mem::replace(&mut failing, false) {
                            tracing::info!("postgres: listening for other replicas' commits again");
                        }
                        wake();
                        let error = driver.await.ok().flatten().map(|e| e.to_string()).unwrap_or_default();
                        tracing::warn!(error = %error, "postgres: the commit listener lost its connection");
                        failing = true;
                    }
                    Err(err) => {
                        driver.abort();
                        if !std::mem::replace(&mut failing, true) {
                            tracing::warn!(error = %err, "postgres: cannot listen for other replicas' commits");
                        }
                    }
                }
            }
            Err(err) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(error = %err, "postgres: cannot listen for other replicas' commits");
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One table's rows to import, in the column order of [`ImportTable::columns`].
pub(crate) struct ImportTable {
    pub name: &'static str,
    pub columns: &'static [(&'static str, ColumnType)],
    pub rows: Vec<Vec<ImportValue>>,
}

/// The storage type of a column in both stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnType {
    Integer,
    Text,
    Blob,
    /// An INTEGER 0 or 1 in SQLite, a BOOLEAN in PostgreSQL.
    Bool,
}

/// One value of a row to import; `None` is SQL NULL.
#[derive(Debug, Clone)]
pub(crate) enum ImportValue {
    Integer(Option<i64>),
    Text(Option<String>),
    Blob(Option<Vec<u8>>),
    Bool(Option<bool>),
}

impl ImportValue {
    fn as_param(&self) -> Param<'_> {
        match self {
            Self::Integer(v) => v,
            Self::Text(v) => v,
            Self::Blob(v) => v,
            Self::Bool(v) => v,
        }
    }
}

/// Every table of the store, with the columns a copy carries: the whole store but the heads of
/// `feed_head`, which an import sets from the copied rows.
pub(crate) const TABLES: &[(&str, &[(&str, ColumnType)])] = {
    use ColumnType::{Blob, Bool, Integer, Text};
    &[
        (
            "consumers",
            &[("pos", Integer), ("id", Text), ("name", Text), ("metadata", Text), ("created_at", Integer)],
        ),
        (
            "keys",
            &[
                ("pos", Integer),
                ("id", Text),
                ("consumer_id", Text),
                ("name", Text),
                ("display_prefix", Text),
                ("scopes", Text),
                ("metadata", Text),
                ("rate_limit", Text),
                ("expires_at", Integer),
                ("created_at", Integer),
                ("last_used_at", Integer),
                ("revoked_at", Integer),
                ("revoke_reason", Text),
                ("previous_display_prefix", Text),
                ("previous_expires_at", Integer),
                ("rotated_at", Integer),
            ],
        ),
        (
            "key_secrets",
            &[
                ("hash", Blob),
                ("key_id", Text),
                ("display_prefix", Text),
                ("expires_at", Integer),
                ("last_used_at", Integer),
            ],
        ),
        (
            "changes",
            &[
                ("seq", Integer),
                ("kind", Text),
                ("key_id", Text),
                ("consumer_id", Text),
                ("at", Integer),
                ("detail", Text),
            ],
        ),
        (
            "signing_keys",
            &[
                ("key_id", Text),
                ("algorithm", Text),
                ("public_key", Blob),
                ("nonce", Blob),
                ("ciphertext", Blob),
                ("master_version", Integer),
            ],
        ),
        ("usage", &[("key_id", Text), ("minute", Integer), ("outcome", Text), ("count", Integer)]),
        ("usage_hourly", &[("key_id", Text), ("hour", Integer), ("outcome", Text), ("count", Integer)]),
        ("subject_usage", &[("subject", Text), ("minute", Integer), ("outcome", Text), ("count", Integer)]),
        ("limit_usage", &[("consumer_id", Text), ("rule", Text), ("minute", Integer), ("count", Integer)]),
        ("usage_batches", &[("gateway", Text), ("batch", Integer), ("at", Integer)]),
        ("gateways", &[("name", Text), ("last_report_at", Integer), ("feed_seq", Integer)]),
        (
            "audit",
            &[
                ("seq", Integer),
                ("at", Integer),
                ("actor", Text),
                ("action", Text),
                ("key_id", Text),
                ("consumer_id", Text),
                ("detail", Text),
            ],
        ),
        (
            "webhooks",
            &[
                ("pos", Integer),
                ("id", Text),
                ("url", Text),
                ("events", Text),
                ("enabled", Bool),
                ("disabled_reason", Text),
                ("nonce", Blob),
                ("ciphertext", Blob),
                ("master_version", Integer),
                ("created_at", Integer),
                ("previous_nonce", Blob),
                ("previous_ciphertext", Blob),
                ("previous_master_version", Integer),
                ("previous_expires_at", Integer),
                ("failing_since", Integer),
            ],
        ),
        (
            "webhook_messages",
            &[
                ("seq", Integer),
                ("id", Text),
                ("webhook_id", Text),
                ("event_type", Text),
                ("payload", Text),
                ("created_at", Integer),
                ("state", Text),
                ("attempts", Integer),
                ("next_attempt_at", Integer),
                ("lease_until", Integer),
            ],
        ),
        (
            "webhook_attempts",
            &[
                ("seq", Integer),
                ("message_id", Text),
                ("webhook_id", Text),
                ("event_type", Text),
                ("attempt", Integer),
                ("at", Integer),
                ("status", Integer),
                ("latency_ms", Integer),
                ("error", Text),
                ("outcome", Text),
                ("next_attempt_at", Integer),
            ],
        ),
        (
            "quota_exhausted",
            &[("consumer_id", Text), ("rule", Text), ("day", Integer), ("first_refused_at", Integer)],
        ),
        (
            "rotation_policies",
            &[("consumer_id", Text), ("key_id", Text), ("policy", Text), ("updated_at", Integer)],
        ),
        (
            "lifecycle_notices",
            &[("key_id", Text), ("generation", Integer), ("stage", Text), ("at", Integer), ("sent", Bool)],
        ),
        (
            "pending_secrets",
            &[
                ("key_id", Text),
                ("nonce", Blob),
                ("ciphertext", Blob),
                ("master_version", Integer),
                ("created_at", Integer),
            ],
        ),
    ]
};

/// Sums the minutes older than [`super::USAGE_MINUTES_KEPT`] into their hours and deletes them,
/// and prunes hours, subjects and refusals past their retention (as the SQLite store does).
async fn roll_up_usage(w: &Writer<'_>, now: i64) -> Result<()> {
    let cut = now - super::USAGE_MINUTES_KEPT;
    let cut = cut - cut.rem_euclid(3_600);
    w.execute(
        "INSERT INTO usage_hourly (key_id, hour, outcome, count)
         SELECT key_id, minute - (minute % 3600), outcome, SUM(count)::BIGINT FROM usage WHERE minute < $1
         GROUP BY key_id, minute - (minute % 3600), outcome
         ON CONFLICT (key_id, hour, outcome) DO UPDATE SET count = usage_hourly.count + EXCLUDED.count",
        &[&cut],
    )
    .await?;
    w.execute("DELETE FROM usage WHERE minute < $1", &[&cut]).await?;
    w.execute("DELETE FROM usage_hourly WHERE hour < $1", &[&(now - super::USAGE_HOURS_KEPT)]).await?;
    let oldest = now - super::USAGE_RETENTION;
    w.execute("DELETE FROM subject_usage WHERE minute < $1", &[&oldest]).await?;
    w.execute("DELETE FROM limit_usage WHERE minute < $1", &[&oldest]).await?;
    // No report may name these days any more: their refusals cannot come again.
    w.execute("DELETE FROM quota_exhausted WHERE day < $1", &[&webhooks::day_start(oldest)]).await?;
    Ok(())
}

async fn migrate(pool: &Pool) -> Result<()> {
    let mut client = pool.get().await.map_err(pool_err)?;
    let tx = client.transaction().await.map_err(db)?;
    // Replicas starting together: one migrates, the others wait and then find it done.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(db)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .await
    .map_err(db)?;
    let row =
        tx.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[]).await.map_err(db)?;
    let applied: i64 = col(&row, 0)?;
    let latest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if applied > latest {
        return Err(Error::Internal(format!(
            "database: schema version {applied} is newer than this service ({latest})"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > applied) {
        tx.batch_execute(sql).await.map_err(db)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, EXTRACT(EPOCH FROM now())::BIGINT)",
            &[version],
        )
        .await
        .map_err(db)?;
        tracing::info!(version, "applied a database migration");
    }
    tx.commit().await.map_err(db)
}

async fn import(pool: &Pool, tables: Vec<ImportTable>) -> Result<Vec<(&'static str, u64)>> {
    let mut client = pool.get().await.map_err(pool_err)?;
    let writer = Writer::begin(&mut client).await?;
    if writer.seq != 0 || writer.audit_seq != 0 {
        return Err(Error::FailedPrecondition(
            "the target store is not empty (its change feed has entries)".into(),
        ));
    }
    for (name, _) in TABLES {
        let row =
            writer.tx.query_one(&format!("SELECT EXISTS (SELECT 1 FROM {name})"), &[]).await.map_err(db)?;
        if col::<bool>(&row, 0)? {
            return Err(Error::FailedPrecondition(format!(
                "the target store is not empty (table {name} has rows)"
            )));
        }
    }
    let mut counts = Vec::new();
    for table in &tables {
        let names: Vec<&str> = table.columns.iter().map(|(n, _)| *n).collect();
        let places: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
        let sql = format!("INSERT INTO {} ({}) VALUES ({})", table.name, names.join(", "), places.join(", "));
        let stmt = writer.tx.prepare(&sql).await.map_err(db)?;
        for row in &table.rows {
            let params: Vec<Param<'_>> = row.iter().map(ImportValue::as_param).collect();
            writer.tx.execute(&stmt, &params).await.map_err(db)?;
        }
        let row =
            writer.tx.query_one(&format!("SELECT COUNT(*) FROM {}", table.name), &[]).await.map_err(db)?;
        let count: i64 = col(&row, 0)?;
        let expected = table.rows.len();
        if usize::try_from(count).ok() != Some(expected) {
            return Err(Error::Internal(format!(
                "copying {}: {expected} rows read, {count} in the target",
                table.name
            )));
        }
        counts.push((table.name, u64::try_from(count).unwrap_or(0)));
    }
    // New consumers, keys, endpoints, messages and attempts continue after the copied positions.
    for (table, column) in [
        ("consumers", "pos"),
        ("keys", "pos"),
        ("webhooks", "pos"),
        ("webhook_messages", "seq"),
        ("webhook_attempts", "seq"),
    ] {
        writer
            .tx
            .execute(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), COALESCE(MAX({column}), 0) + 1, \
                     false) FROM {table}"
                ),
                &[],
            )
            .await
            .map_err(db)?;
    }
    writer
        .tx
        .execute(
            "UPDATE feed_head SET seq = (SELECT COALESCE(MAX(seq), 0) FROM changes), \
             audit_seq = (SELECT COALESCE(MAX(seq), 0) FROM audit)",
            &[],
        )
        .await
        .map_err(db)?;
    writer.tx.commit().await.map_err(db)?;
    Ok(counts)
}

impl Store for PostgresStore {
    fn create_consumer(&self, ctx: &Ctx, consumer: NewConsumer) -> Result<Consumer> {
        let ctx = ctx.clone();
        self.write(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let mut w = Writer::begin(&mut client).await?;
            let consumer = w.insert_consumer(&ctx, &consumer).await?;
            w.commit(consumer).await
        })
    }

    fn get_consumer(&self, id_or_name: &str) -> Result<Consumer> {
        let id_or_name = id_or_name.to_owned();
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            // One statement, one snapshot: the id first, then the name.
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT {CONSUMER_COLUMNS} FROM consumers WHERE id = $1 OR name = $1 \
                     ORDER BY (id = $1) DESC LIMIT 1"
                ))
                .await
                .map_err(db)?;
            match client.query_opt(&stmt, &[&id_or_name]).await.map_err(db)? {
                Some(row) => consumer_from_row(&row),
                None => Err(Error::NotFound { what: "consumer", id: id_or_name }),
            }
        })
    }

    fn list_consumers(&self, after: Option<i64>, limit: usize) -> Result<Vec<Consumer>> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT {CONSUMER_COLUMNS} FROM consumers WHERE pos > $1 ORDER BY pos LIMIT $2"
                ))
                .await
                .map_err(db)?;
            let rows = client.query(&stmt, &[&after.unwrap_or(0), &limit_param(limit)]).await.map_err(db)?;
            rows.iter().map(consumer_from_row).collect()
        })
    }

    fn update_consumer(&self, ctx: &Ctx, id_or_name: &str, patch: ConsumerPatch) -> Result<Consumer> {
        let (ctx, id_or_name) = (ctx.clone(), id_or_name.to_owned());
        self.write(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let mut w = Writer::begin(&mut client).await?;
            let current = w.require_consumer(&id_or_name).await?;
            if let Some(name) = &patch.name
                && *name != current.name
            {
                let taken = w
                    .query_opt(
                        "SELECT 1 FROM consumers WHERE (name = $1 OR id = $1) AND id <> $2 LIMIT 1",
                        &[name, &current.id],
                    )
                    .await?
                    .is_some();
                if taken {
                    return Err(Error::AlreadyExists { what: "consumer name", id: name.clone() });
                }
            }
            let name = patch.name.clone().unwrap_or_else(|| current.name.clone());
            let metadata = patch.metadata.clone().unwrap_or_else(|| current.metadata.clone());
            w.execute(
                "UPDATE consumers SET name = $2, metadata = $3 WHERE id = $1",
                &[&current.id, &name, &to_json(&metadata)?],
            )
            .await?;
            w.change(&ctx, ChangeKind::ConsumerUpdated, "", &current.id, "").await?;
            w.audit(
                &ctx,
                "consumer.update",
                "",
                &current.id,
                serde_json::json!({ "name": patch.name, "metadata": patch.metadata }),
            )
            .await?;
            let consumer = w.require_consumer(&current.id).await?;
            w.commit(consumer).await
        })
    }

    fn delete_consumer(&self, ctx: &Ctx, id_or_name: &str) -> Result<u32> {
        let (ctx, id_or_name) = (ctx.clone(), id_or_name.to_owned());
        self.write(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let mut w = Writer::begin(&mut client).await?;
            let consumer = w.require_consumer(&id_or_name).await?;
            let keys = w
                .query(
                    &format!("SELECT {KEY_COLUMNS} FROM keys k WHERE k.consumer_id = $1 AND k.revoked_at = 0 ORDER BY k.pos"),
                    &[&consumer.id],
                )
                .await?
                .iter()
                .map(|row| key_from_row(row, 0))
                .collect::<Result<Vec<_>>>()?;
            for key in &keys {
                w.revoke(&ctx, key, "consumer deleted").await?;
            }
            w.execute("DELETE FROM consumers WHERE id = $1", &[&consumer.id]).await?;
            w.change(&ctx, ChangeKind::ConsumerDeleted, "", &consumer.id, "").await?;
            w.enqueue(&ctx, EventType::ConsumerDeleted, &webhooks::consumer_data(&consumer.id, &consumer.name))
                .await?;
            let revoked: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
            w.audit(
                &ctx,
                "consumer.delete",
                "",
                &consumer.id,
                serde_json::json!({ "name": consumer.name, "revoked_keys": revoked }),
            )
            .await?;
            let count = u32::try_from(keys.len()).map_err(|e| Error::internal("counting revoked keys", e))?;
            w.commit(count).await
        })
    }

    fn create_key(&self, ctx: &Ctx, key: NewKey) -> Result<Key> {
        let ctx = ctx.clone();
        self.write(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let mut w = Writer::begin(&mut client).await?;
            let consumer = match (w.find_consumer(&key.consumer).await?, &key.create_consumer) {
                (Some(consumer), _) => consumer,
                (None, Some(new)) => w.insert_consumer(&ctx, new).await?,
                (None, None) => return Err(Error::NotFound { what: "consumer", id: key.consumer.clone() }),
            };
            let rate_limit = key.rate_limit.as_ref().map(to_json).transpose()?;
            w.execute(
                "INSERT INTO keys (id, consumer_id, name, display_prefix, scopes, metadata, rate_limit, expires_at, \
                 created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &key.id,
                    &consumer.id,
                    &key.name,
                    &key.secret.display_prefix,
                    &to_json(&key.scopes)?,
                    &to_json(&key.metadata)?,
                    &rate_limit,
                    &key.expires_at,
                    &ctx.now,
                ],
            )
            .await?;
            w.execute(
                "INSERT INTO key_secrets (hash, key_id, display_prefix, expires_at) VALUES ($1, $2, $3, 0)",
                &[&&key.secret.hash[..], &key.id, &key.secret.display_prefix],
            )
            .await?;
            if let Some(signing) = &key.signing {
                w.insert_signing(&key.id, signing).await?;
            }
            w.change(&ctx, ChangeKind::KeyCreated, &key.id, &consumer.id, "").await?;
            w.audit(
                &ctx,
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
            )
            .await?;
            let created = w.require_key(&key.id).await?;
            w.commit(created).await
        })
    }

    fn get_key(&self, id: &str) -> Result<Key> {
        let id = id.to_owned();
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let stmt = client
                .prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM keys k WHERE k.id = $1"))
                .await
                .map_err(db)?;
            match client.query_opt(&stmt, &[&id]).await.map_err(db)? {
                Some(row) => key_from_row(&row, 0),
                None => Err(Error::NotFound { what: "key", id }),
            }
        })
    }

    fn list_keys(&self, filter: &KeyFilter, after: Option<i64>, limit: usize) -> Result<Vec<Key>> {
        let filter = filter.clone();
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let after = after.unwrap_or(0);
            let limit = limit_param(limit);
            let mut sql = format!("SELECT {KEY_COLUMNS} FROM keys k WHERE k.pos > $1");
            let mut params: Vec<Param<'_>> = vec![&after];
            if let Some(status) = filter.status {
                if status_needs_now(status) {
                    params.push(&filter.now);
                }
                sql.push_str(" AND ");
                sql.push_str(&status_clause(status, params.len()));
            }
            if let Some(consumer_id) = &filter.consumer_id {
                params.push(consumer_id);
                sql.push_str(&format!(" AND k.consumer_id = ${}", params.len()));
            }
            params.push(&limit);
            sql.push_str(&format!(" ORDER BY k.pos LIMIT ${}", params.len()));
            let stmt = client.prepare_cached(&sql).await.map_err(db)?;
            let rows = client.query(&stmt, &params).await.map_err(db)?;
            rows.iter().map(|row| key_from_row(row, 0)).collect()
        })
    }

    fn count_keys(&self, now: i64) -> Result<KeyCounts> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            // One pass over the key rows; the clauses are the ones `list_keys` filters by.
            let sql = format!(
                "SELECT COUNT(*) FILTER (WHERE {active}), COUNT(*) FILTER (WHERE {revoked}), \
                 COUNT(*) FILTER (WHERE {expired}) FROM keys k",
                active = status_clause(KeyStatus::Active, 1),
                revoked = status_clause(KeyStatus::Revoked, 1),
                expired = status_clause(KeyStatus::Expired, 1),
            );
            let stmt = client.prepare_cached(&sql).await.map_err(db)?;
            let row = client.query_one(&stmt, &[&now]).await.map_err(db)?;
            Ok(KeyCounts {
                active: seq_col(&row, 0)?,
                revoked: seq_col(&row, 1)?,
                expired: seq_col(&row, 2)?,
            })
        })
    }

    fn update_key(&self, ctx: &Ctx, id: &str, patch: KeyPatch) -> Result<Key> {
        let (ctx, id) = (ctx.clone(), id.to_owned());
        self.write(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let mut w = Writer::begin(&mut client).await?;
            let mut key = w.require_key(&id).await?;
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
            w.execute(
                "UPDATE keys SET name = $2, scopes = $3, metadata = $4, rate_limit = $5, expires_at = $6 WHERE id = $1",
                &[&key.id, &key.name, &to_json(&key.scopes)?, &to_json(&key.metadata)?, &rate_limit, &key.expires_at],
            )
            .await?;
            w.change(&ctx, ChangeKind::KeyUpdated, &key.id, &key.consumer_id, "").await?;
            w.audit(
                &ctx,
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
            )
            .await?;
            let updated = w.require_key(&key.id).await?;
            w.commit(updated).await
        })
    }

    fn revoke_key(&self, ctx: &Ctx, id: &str, reason: &str) -> Result<Key> {
        let (ctx, id, reason) = (ctx.clone(), id.to_owned(), reason.to_owned());
        self.write(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let mut w = Writer::begin(&mut client).await?;
            let key = w.require_key(&id).await?;
            if key.revoked_at != 0 {
                return w.commit(key).await;
            }
            w.revoke(&ctx, &key, &reason).await?;
            w.audit(&ctx, "key.revoke", &key.id, &key.consumer_id, serde_json::json!({ "reason": reason }))
                .await?;
            let revoked = w.require_key(&key.id).await?;
            w.commit(revoked).await
        })
    }

    fn rotate_key(&self, ctx: &Ctx, rotation: Rotation) -> Result<Key> {
        let ctx = ctx.clone();
        self.write(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let mut w = Writer::begin(&mut client).await?;
            let key = w.require_key(&rotation.key_id).await?;
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
            w.execute("DELETE FROM key_secrets WHERE key_id = $1 AND expires_at <> 0", &[&key.id]).await?;
            lifecycle::set_pending(&w, &ctx, &key.id, rotation.pending.as_ref()).await?;
            w.execute("UPDATE key_secrets SET expires_at = $2 WHERE key_id = $1", &[&key.id, &rotation.grace_end])
                .await?;
            w.execute(
                "INSERT INTO key_secrets (hash, key_id, display_prefix, expires_at) VALUES ($1, $2, $3, 0)",
                &[&&rotation.secret.hash[..], &key.id, &rotation.secret.display_prefix],
            )
            .await?;
            w.execute(
                "UPDATE keys SET display_prefix = $2, previous_display_prefix = $3, previous_expires_at = $4, \
                 rotated_at = $5 WHERE id = $1",
                &[&key.id, &rotation.secret.display_prefix, &key.display_prefix, &rotation.grace_end, &ctx.now],
            )
            .await?;
            w.change(&ctx, ChangeKind::KeyRotated, &key.id, &key.consumer_id, "").await?;
            w.audit(
                &ctx,
                "key.rotate",
                &key.id,
                &key.consumer_id,
                serde_json::json!({
                    "display_prefix": rotation.secret.display_prefix,
                    "previous_display_prefix": key.display_prefix,
                    "previous_expires_at": rotation.grace_end,
                    "automatic": rotation.pending.is_some(),
                }),
            )
            .await?;
            let rotated = w.require_key(&key.id).await?;
            w.commit(rotated).await
        })
    }

    fn set_rotation_policy(
        &self,
        ctx: &Ctx,
        target: &PolicyTarget,
        policy: &RotationPolicy,
    ) -> Result<PolicyRecord> {
        let (ctx, target, policy) = (ctx.clone(), target.clone(), policy.clone());
        self.write(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let mut w = Writer::begin(&mut client).await?;
            let record = lifecycle::set_policy(&mut w, &ctx, &target, &policy).await?;
            w.commit(record).await
        })
    }

    fn delete_rotation_policy(&self, ctx: &Ctx, target: &PolicyTarget) -> Result<()> {
        let (ctx, target) = (ctx.clone(), target.clone());
        self.write(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let mut w = Writer::begin(&mut client).await?;
            lifecycle::delete_policy(&mut w, &ctx, &target).await?;
            w.commit(()).await
        })
    }

    fn list_rotation_policies(&self, consumer: Option<&str>) -> Result<Vec<PolicyRecord>> {
        let consumer = consumer.map(str::to_owned);
        self.write(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let w = Writer::begin(&mut client).await?;
            let policies = lifecycle::list_policies(&w, consumer.as_deref()).await?;
            w.commit(policies).await
        })
    }

    fn effective_policy(&self, key_id: &str) -> Result<Option<RotationPolicy>> {
        let key_id = key_id.to_owned();
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            lifecycle::effective_policy(&client, &key_id).await
        })
    }

    fn lifecycle_candidates(&self, now: i64, after: i64, limit: usize) -> Result<Vec<Candidate>> {
        let pool = self.pool.clone();
        self.run(async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let tx = snapshot(&mut client).await?;
            let out = lifecycle::candidates(&tx, now, after, limit).await?;
            tx.commit().await.map_err(db)?;
            Ok(out)
        })
    }

    fn apply_transition(&self, ctx: &Ctx, transition: &Transition) -> Result<bool> {
        let (ctx, transition) = (ctx.clone(), transition.clone());
        self.write(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let mut w = Writer::begin(&mut client).await?;
            let applied = lifecycle::apply(&mut w, &ctx, &transition).await?;
            w.commit(applied).await
        })
    }

    fn take_lease(&self, name: &str, holder: &str, now: i64, until: i64) -> Result<bool> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            lifecycle::take_lease(&client, &name, &holder, now, until).await
        })
    }

    fn record_previous_use(&self, used: &[(String, i64)]) -> Result<()> {
        if used.is_empty() {
            return Ok(());
        }
        let used = used.to_vec();
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            lifecycle::record_previous_use(&client, &used).await
        })
    }

    fn take_pending_secret(&self, ctx: &Ctx, key_id: &str) -> Result<Option<Sealed>> {
        let (ctx, key_id) = (ctx.clone(), key_id.to_owned());
        self.write(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let mut w = Writer::begin(&mut client).await?;
            let sealed = lifecycle::take_pending(&mut w, &ctx, &key_id).await?;
            w.commit(sealed).await
        })
    }

    fn purge_cache(&self, ctx: &Ctx, purge: &CachePurge) -> Result<u64> {
        let (ctx, purge) = (ctx.clone(), purge.clone());
        self.write(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let mut w = Writer::begin(&mut client).await?;
            let seq = w.change(&ctx, ChangeKind::CachePurged, "", "", &to_json(&purge)?).await?;
            w.audit(&ctx, "cache.purge", "", "", serde_json::to_value(&purge).unwrap_or_default()).await?;
            w.commit(seq).await
        })
    }

    fn lookup_secret(&self, hash: &[u8; 32]) -> Result<Lookup> {
        let hash = hash.to_vec();
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            // One statement: the secret, its key and the feed head in one snapshot, one round trip.
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT h.seq, s.display_prefix, s.expires_at, {KEY_COLUMNS} FROM feed_head h \
                     LEFT JOIN key_secrets s ON s.hash = $1 LEFT JOIN keys k ON k.id = s.key_id"
                ))
                .await
                .map_err(db)?;
            let row = client.query_one(&stmt, &[&hash]).await.map_err(db)?;
            let head_seq = seq_col(&row, 0)?;
            let position: Option<i64> = col(&row, 3)?;
            let found = match position {
                Some(_) => Some(SecretMatch {
                    key: key_from_row(&row, 3)?,
                    display_prefix: col(&row, 1)?,
                    expires_at: col(&row, 2)?,
                }),
                None => None,
            };
            Ok(Lookup { found, head_seq })
        })
    }

    fn record_usage(&self, used: &[(String, i64)]) -> Result<()> {
        if used.is_empty() {
            return Ok(());
        }
        let used = used.to_vec();
        self.write(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let w = Writer::begin(&mut client).await?;
            for (id, at) in &used {
                w.execute("UPDATE keys SET last_used_at = $2 WHERE id = $1 AND last_used_at < $2", &[id, at])
                    .await?;
            }
            w.commit(()).await
        })
    }

    fn report_usage(&self, report: &UsageReport, now: i64) -> Result<UsageApplied> {
        let batch = i64::try_from(report.batch).map_err(|e| Error::internal("usage batch number", e))?;
        let feed_seq = i64::try_from(report.feed_seq).unwrap_or(i64::MAX);
        let report = report.clone();
        self.write(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let w = Writer::begin(&mut client).await?;
            w.execute(
                "INSERT INTO gateways (name, last_report_at, feed_seq) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET last_report_at = EXCLUDED.last_report_at,
                     feed_seq = GREATEST(gateways.feed_seq, EXCLUDED.feed_seq)",
                &[&report.gateway, &now, &feed_seq],
            )
            .await?;
            w.execute("DELETE FROM usage_batches WHERE at < $1", &[&(now - super::USAGE_BATCH_MEMORY)]).await?;
            let fresh = w
                .execute(
                    "INSERT INTO usage_batches (gateway, batch, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    &[&report.gateway, &batch, &now],
                )
                .await?;
            if fresh == 0 {
                return w.commit(UsageApplied { duplicate: true, skipped: 0 }).await;
            }
            let oldest = now - super::USAGE_RETENTION;
            let newest = now + 300;
            let mut skipped = 0u32;
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
                    w.execute(
                        "INSERT INTO subject_usage (subject, minute, outcome, count) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (subject, minute, outcome)
                         DO UPDATE SET count = subject_usage.count + EXCLUDED.count",
                        &[&c.subject, &c.minute, &c.outcome, &count],
                    )
                    .await?;
                    continue;
                }
                if !c.consumer_id.is_empty() {
                    let added = w
                        .execute(
                            "INSERT INTO limit_usage (consumer_id, rule, minute, count)
                             SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM consumers WHERE id = $1)
                             ON CONFLICT (consumer_id, rule, minute)
                             DO UPDATE SET count = limit_usage.count + EXCLUDED.count",
                            &[&c.consumer_id, &c.rule, &c.minute, &count],
                        )
                        .await?;
                    if added == 0 {
                        skipped = skipped.saturating_add(1);
                        continue;
                    }
                    let first = w
                        .execute(
                            "INSERT INTO quota_exhausted (consumer_id, rule, day, first_refused_at)
                             VALUES ($1, $2, $3, $4) ON CONFLICT (consumer_id, rule, day) DO NOTHING",
                            &[&c.consumer_id, &c.rule, &webhooks::day_start(c.minute), &c.minute],
                        )
                        .await?;
                    if first == 1 {
                        let data = webhooks::quota_data(&c.consumer_id, &c.rule, c.minute);
                        w.enqueue(&ctx, EventType::QuotaExhausted, &data).await?;
                    }
                    continue;
                }
                let added = w
                    .execute(
                        "INSERT INTO usage (key_id, minute, outcome, count)
                         SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM keys WHERE id = $1)
                         ON CONFLICT (key_id, minute, outcome) DO UPDATE SET count = usage.count + EXCLUDED.count",
                        &[&c.key_id, &c.minute, &c.outcome, &count],
                    )
                    .await?;
                if added == 0 {
                    skipped = skipped.saturating_add(1);
                    continue;
                }
                if c.outcome == "allowed" {
                    w.execute(
                        "UPDATE keys SET last_used_at = $2 WHERE id = $1 AND last_used_at < $2",
                        &[&c.key_id, &(c.minute + 59).min(now)],
                    )
                    .await?;
                }
            }
            roll_up_usage(&w, now).await?;
            w.commit(UsageApplied { duplicate: false, skipped }).await
        })
    }

    fn caller_usage(&self, query: &UsageQuery) -> Result<(Vec<SubjectUsage>, Vec<LimitUsage>)> {
        if !query.key_ids.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let query = query.clone();
        let pool = self.pool.clone();
        self.run(async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let tx = snapshot(&mut client).await?;
            let mut subjects: Vec<SubjectUsage> = Vec::new();
            if query.consumer_id.is_none() {
                let rows = tx
                    .query(
                        "SELECT u.subject, u.outcome, SUM(u.count)::BIGINT FROM subject_usage u
                         JOIN (SELECT subject, SUM(count) AS total FROM subject_usage
                               WHERE minute >= $1 AND minute < $2
                               GROUP BY subject ORDER BY total DESC, subject COLLATE \"C\" LIMIT $3) top
                           ON top.subject = u.subject
                         WHERE u.minute >= $1 AND u.minute < $2
                         GROUP BY u.subject, top.total, u.outcome
                         ORDER BY top.total DESC, u.subject COLLATE \"C\", u.outcome COLLATE \"C\"",
                        &[&query.since, &query.until, &limit_param(super::MAX_SUBJECTS)],
                    )
                    .await
                    .map_err(db)?;
                for row in &rows {
                    let subject: String = col(row, 0)?;
                    let outcome: String = col(row, 1)?;
                    let count = u64::try_from(col::<i64>(row, 2)?).unwrap_or(0);
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
            let rows = tx
                .query(
                    "SELECT consumer_id, rule, SUM(count)::BIGINT FROM limit_usage
                     WHERE minute >= $1 AND minute < $2 AND ($3::TEXT IS NULL OR consumer_id = $3)
                     GROUP BY consumer_id, rule ORDER BY consumer_id COLLATE \"C\", rule COLLATE \"C\"",
                    &[&query.since, &query.until, &query.consumer_id],
                )
                .await
                .map_err(db)?;
            let limits = rows
                .iter()
                .map(|row| {
                    Ok(LimitUsage {
                        consumer_id: col(row, 0)?,
                        rule: col(row, 1)?,
                        limited: u64::try_from(col::<i64>(row, 2)?).unwrap_or(0),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            tx.commit().await.map_err(db)?;
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
        let ids: Option<Vec<String>> = key_ids.map(<[String]>::to_vec);
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let rows = match &ids {
                Some(ids) => {
                    client
                        .query(
                            "SELECT u.key_id, $1 + ((u.minute - $1) / $3) * $3 AS bucket, u.outcome,
                                    SUM(u.count)::BIGINT
                             FROM usage u
                             WHERE u.key_id = ANY($4) AND u.minute >= $1 AND u.minute < $2
                             GROUP BY u.key_id, bucket, u.outcome
                             ORDER BY u.key_id COLLATE \"C\", bucket, u.outcome COLLATE \"C\"",
                            &[&since, &until, &step, ids],
                        )
                        .await
                }
                None => {
                    client
                        .query(
                            "SELECT '' AS key_id, $1 + ((minute - $1) / $3) * $3 AS bucket, outcome,
                                    SUM(count)::BIGINT
                             FROM usage WHERE minute >= $1 AND minute < $2
                             GROUP BY bucket, outcome ORDER BY bucket, outcome COLLATE \"C\"",
                            &[&since, &until, &step],
                        )
                        .await
                }
            }
            .map_err(db)?;
            rows.iter()
                .map(|row| {
                    Ok(UsagePoint {
                        key_id: col(row, 0)?,
                        bucket: col(row, 1)?,
                        outcome: col(row, 2)?,
                        count: u64::try_from(col::<i64>(row, 3)?).unwrap_or(0),
                    })
                })
                .collect()
        })
    }

    fn list_expiring_keys(&self, now: i64, until: i64, limit: usize) -> Result<Vec<Key>> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT {KEY_COLUMNS} FROM keys k WHERE k.expires_at != 0 AND k.expires_at > $1 \
                     AND k.expires_at <= $2 AND k.revoked_at = 0 ORDER BY k.expires_at, k.pos LIMIT $3"
                ))
                .await
                .map_err(db)?;
            let rows = client.query(&stmt, &[&now, &until, &limit_param(limit)]).await.map_err(db)?;
            rows.iter().map(|row| key_from_row(row, 0)).collect()
        })
    }

    fn list_audit_recent(
        &self,
        filter: &AuditFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>> {
        let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let filter = filter.clone();
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let mut sql =
                "SELECT seq, at, actor, action, key_id, consumer_id, detail FROM audit WHERE seq < $1"
                    .to_owned();
            let limit = limit_param(limit);
            let mut params: Vec<Param<'_>> = vec![&before];
            for (column, value) in [
                ("action", &filter.action),
                ("actor", &filter.actor),
                ("key_id", &filter.key_id),
                ("consumer_id", &filter.consumer_id),
            ] {
                if let Some(value) = value {
                    params.push(value);
                    sql.push_str(&format!(" AND {column} = ${}", params.len()));
                }
            }
            params.push(&limit);
            sql.push_str(&format!(" ORDER BY seq DESC LIMIT ${}", params.len()));
            let rows = client.query(&sql, &params).await.map_err(db)?;
            rows.iter().map(audit_from_row).collect()
        })
    }

    fn usage(&self, query: &UsageQuery) -> Result<(Vec<KeyUsage>, Vec<GatewayReport>, u64)> {
        let query = query.clone();
        let pool = self.pool.clone();
        self.run(async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let tx = snapshot(&mut client).await?;
            let by_id = !query.key_ids.is_empty();
            let mut keys: Vec<KeyUsage> = Vec::new();
            // One query for every key asked for: each key's counts by outcome in the window.
            let stmt = tx
                .prepare_cached(
                    "SELECT k.id, k.consumer_id, k.last_used_at, u.outcome, SUM(u.count)::BIGINT
                     FROM (SELECT key_id, minute AS at, outcome, count FROM usage
                           UNION ALL
                           SELECT key_id, hour AS at, outcome, count FROM usage_hourly) u
                     JOIN keys k ON k.id = u.key_id
                     WHERE u.at >= $1 AND u.at < $2
                       AND (NOT $3 OR u.key_id = ANY($4))
                       AND ($5::TEXT IS NULL OR k.consumer_id = $5)
                     GROUP BY k.pos, k.id, k.consumer_id, k.last_used_at, u.outcome
                     ORDER BY k.pos, u.outcome",
                )
                .await
                .map_err(db)?;
            let rows = tx
                .query(&stmt, &[&query.since, &query.until, &by_id, &query.key_ids, &query.consumer_id])
                .await
                .map_err(db)?;
            for row in &rows {
                let key_id: String = col(row, 0)?;
                let outcome: String = col(row, 3)?;
                let count = u64::try_from(col::<i64>(row, 4)?).unwrap_or(0);
                match keys.last_mut() {
                    Some(k) if k.key_id == key_id => {
                        k.outcomes.insert(outcome, count);
                    }
                    _ => keys.push(KeyUsage {
                        key_id,
                        consumer_id: col(row, 1)?,
                        outcomes: [(outcome, count)].into_iter().collect(),
                        last_used_at: col(row, 2)?,
                    }),
                }
            }
            // Keys asked for by id that had no usage in the window: there, with nothing counted.
            if by_id {
                let stmt = tx
                    .prepare_cached(
                        "SELECT id, consumer_id, last_used_at FROM keys
                         WHERE id = ANY($1) AND ($2::TEXT IS NULL OR consumer_id = $2) ORDER BY pos",
                    )
                    .await
                    .map_err(db)?;
                for row in tx.query(&stmt, &[&query.key_ids, &query.consumer_id]).await.map_err(db)? {
                    let key_id: String = col(&row, 0)?;
                    if !keys.iter().any(|k| k.key_id == key_id) {
                        keys.push(KeyUsage {
                            key_id,
                            consumer_id: col(&row, 1)?,
                            outcomes: Default::default(),
                            last_used_at: col(&row, 2)?,
                        });
                    }
                }
            }
            // Names in byte order, as SQLite sorts them, whatever the database's collation.
            let stmt = tx
                .prepare_cached(
                    "SELECT name, last_report_at, feed_seq FROM gateways ORDER BY name COLLATE \"C\"",
                )
                .await
                .map_err(db)?;
            let gateways = tx
                .query(&stmt, &[])
                .await
                .map_err(db)?
                .iter()
                .map(|row| {
                    Ok(GatewayReport {
                        gateway: col(row, 0)?,
                        last_report_at: col(row, 1)?,
                        feed_seq: seq_col(row, 2)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let head = tx.query_one("SELECT seq FROM feed_head", &[]).await.map_err(db)?;
            let head = seq_col(&head, 0)?;
            tx.commit().await.map_err(db)?;
            Ok((keys, gateways, head))
        })
    }

    fn list_changes(&self, after: u64, limit: usize) -> Result<(Vec<Change>, u64)> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let pool = self.pool.clone();
        self.run(async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let tx = snapshot(&mut client).await?;
            let stmt = tx
                .prepare_cached(
                    "SELECT seq, kind, key_id, consumer_id, at, detail FROM changes WHERE seq > $1 \
                     ORDER BY seq LIMIT $2",
                )
                .await
                .map_err(db)?;
            let changes = tx
                .query(&stmt, &[&after, &limit_param(limit)])
                .await
                .map_err(db)?
                .iter()
                .map(change_from_row)
                .collect::<Result<Vec<_>>>()?;
            let head = tx.query_one("SELECT seq FROM feed_head", &[]).await.map_err(db)?;
            let head = seq_col(&head, 0)?;
            tx.commit().await.map_err(db)?;
            Ok((changes, head))
        })
    }

    fn list_audit(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let stmt = client
                .prepare_cached(
                    "SELECT seq, at, actor, action, key_id, consumer_id, detail FROM audit WHERE seq > $1 \
                     ORDER BY seq LIMIT $2",
                )
                .await
                .map_err(db)?;
            let rows = client.query(&stmt, &[&after, &limit_param(limit)]).await.map_err(db)?;
            rows.iter().map(audit_from_row).collect()
        })
    }

    fn audit_written(&self) -> u64 {
        self.audit_written.load(Ordering::Relaxed)
    }

    fn create_webhook(&self, ctx: &Ctx, hook: NewWebhook) -> Result<Webhook> {
        let ctx = ctx.clone();
        self.write(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let mut w = Writer::begin(&mut client).await?;
            if w.query_opt("SELECT 1 FROM webhooks WHERE id = $1", &[&hook.id]).await?.is_some() {
                return Err(Error::AlreadyExists { what: "webhook", id: hook.id.clone() });
            }
            let events: Vec<&str> = hook.events.iter().map(|e| e.as_str()).collect();
            w.execute(
                "INSERT INTO webhooks (id, url, events, nonce, ciphertext, master_version, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &hook.id,
                    &hook.url,
                    &to_json(&events)?,
                    &&hook.sealed.nonce[..],
                    &hook.sealed.ciphertext,
                    &i64::from(hook.sealed.version),
                    &ctx.now,
                ],
            )
            .await?;
            w.audit(
                &ctx,
                "webhook.create",
                "",
                "",
                serde_json::json!({ "webhook_id": hook.id, "url": hook.url, "events": events }),
            )
            .await?;
            let hook = w.webhook(&hook.id).await?;
            w.commit(hook).await
        })
    }

    fn list_webhooks(&self) -> Result<Vec<Webhook>> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let stmt = client
                .prepare_cached(&format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY pos"))
                .await
                .map_err(db)?;
            client.query(&stmt, &[]).await.map_err(db)?.iter().map(webhook_from_row).collect()
        })
    }

    fn update_webhook(&self, ctx: &Ctx, id: &str, update: &WebhookUpdate) -> Result<Webhook> {
        let (ctx, id, update) = (ctx.clone(), id.to_owned(), update.clone());
        self.write(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let mut w = Writer::begin(&mut client).await?;
            let Some(row) =
                w.query_opt("SELECT enabled FROM webhooks WHERE id = $1 FOR UPDATE", &[&id]).await?
            else {
                return Err(Error::NotFound { what: "webhook", id: id.clone() });
            };
            let was_enabled: bool = col(&row, 0)?;
            // The right-hand sides read the row as it was.
            w.execute(
                "UPDATE webhooks SET url = COALESCE($2, url), events = COALESCE($3, events), \
                 enabled = COALESCE($4, enabled), \
                 disabled_reason = CASE WHEN $4 IS NULL OR $4 = enabled THEN disabled_reason \
                 WHEN $4 THEN '' ELSE $5 END, \
                 failing_since = CASE WHEN $4 AND NOT enabled THEN 0 ELSE failing_since END \
                 WHERE id = $1",
                &[
                    &id,
                    &update.url,
                    &update.events_json(),
                    &update.enabled,
                    &WebhookUpdate::disabled_reason(&ctx.actor),
                ],
            )
            .await?;
            if update.enabled == Some(true) && !was_enabled {
                w.execute(
                    "UPDATE webhook_messages SET next_attempt_at = $2 \
                     WHERE webhook_id = $1 AND state = 'pending' AND next_attempt_at > $2",
                    &[&id, &ctx.now],
                )
                .await?;
            }
            w.audit(&ctx, "webhook.update", "", "", update.audit_detail(&id, was_enabled)).await?;
            let hook = w.webhook(&id).await?;
            w.commit(hook).await
        })
    }

    fn delete_webhook(&self, ctx: &Ctx, id: &str) -> Result<()> {
        let (ctx, id) = (ctx.clone(), id.to_owned());
        self.write(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let mut w = Writer::begin(&mut client).await?;
            let Some(row) = w.query_opt("SELECT url FROM webhooks WHERE id = $1", &[&id]).await? else {
                return Err(Error::NotFound { what: "webhook", id: id.clone() });
            };
            let url: String = col(&row, 0)?;
            w.execute("DELETE FROM webhooks WHERE id = $1", &[&id]).await?;
            let dropped = w
                .execute("DELETE FROM webhook_messages WHERE webhook_id = $1 AND state = 'pending'", &[&id])
                .await?;
            w.audit(
                &ctx,
                "webhook.delete",
                "",
                "",
                serde_json::json!({ "webhook_id": id, "url": url, "undelivered": dropped }),
            )
            .await?;
            w.commit(()).await
        })
    }

    fn claim_webhook_messages(&self, now: i64, lease_until: i64, limit: usize) -> Result<Vec<Outgoing>> {
        let pool = self.pool.clone();
        self.run(async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            // Not a Writer: claiming takes no feed position and must not wait on the feed head.
            let tx = client.transaction().await.map_err(db)?;
            // SKIP LOCKED: replicas claiming together each take other rows, never wait.
            let stmt = tx
                .prepare_cached(
                    "SELECT m.id, m.webhook_id, w.url, m.event_type, m.payload, m.attempts, \
                     w.nonce, w.ciphertext, w.master_version, \
                     w.previous_nonce, w.previous_ciphertext, w.previous_master_version, w.previous_expires_at \
                     FROM webhook_messages m JOIN webhooks w ON w.id = m.webhook_id \
                     WHERE m.state = 'pending' AND m.next_attempt_at <= $1 AND m.lease_until <= $1 AND w.enabled \
                     ORDER BY m.seq LIMIT $2 FOR UPDATE OF m SKIP LOCKED",
                )
                .await
                .map_err(db)?;
            let rows = tx.query(&stmt, &[&now, &limit_param(limit)]).await.map_err(db)?;
            let claimed = rows
                .iter()
                .map(|row| {
                    let sealed = sealed_from_row(row, 6)?
                        .ok_or_else(|| Error::Internal("database: a webhook has no secret".to_owned()))?;
                    let previous_expires_at: i64 = col(row, 12)?;
                    let previous = sealed_from_row(row, 9)?.filter(|_| previous_expires_at > now);
                    Ok(Outgoing {
                        message_id: col(row, 0)?,
                        webhook_id: col(row, 1)?,
                        url: col(row, 2)?,
                        event_type: col(row, 3)?,
                        payload: col(row, 4)?,
                        attempts: small(row, 5)?,
                        sealed,
                        previous,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let ids: Vec<&str> = claimed.iter().map(|m| m.message_id.as_str()).collect();
            if !ids.is_empty() {
                tx.execute("UPDATE webhook_messages SET lease_until = $2 WHERE id = ANY($1)", &[&ids, &lease_until])
                    .await
                    .map_err(db)?;
            }
            tx.commit().await.map_err(db)?;
            Ok(claimed)
        })
    }

    fn finish_webhook_attempt(&self, attempt: &Attempt, outcome: Outcome, disable_after: i64) -> Result<()> {
        let attempt = attempt.clone();
        self.write(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            if outcome != Outcome::Disable {
                // Not a Writer: bookkeeping takes no feed position and must not wait on the feed
                // head, unless it disables the endpoint (audited).
                let tx = client.transaction().await.map_err(db)?;
                if note_attempt(&tx, &attempt, outcome, disable_after).await?.is_none() {
                    record_attempt(&tx, &attempt, outcome).await?;
                    tx.commit().await.map_err(db)?;
                    return Ok(Written { value: (), audited: 0 });
                }
                // Rolled back when dropped: done again below, holding the feed head.
            }
            let mut w = Writer::begin(&mut client).await?;
            let disable = note_attempt(&w.tx, &attempt, outcome, disable_after).await?;
            let outcome = if disable.is_some() { Outcome::Disable } else { outcome };
            record_attempt(&w.tx, &attempt, outcome).await?;
            if let Some(reason) = disable {
                w.disable_webhook(&attempt.webhook_id, &reason, attempt.at).await?;
            }
            w.commit(()).await
        })
    }

    fn list_webhook_attempts(&self, webhook_id: Option<&str>, limit: usize) -> Result<Vec<Attempt>> {
        let webhook_id = webhook_id.map(str::to_owned);
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT {ATTEMPT_COLUMNS} FROM webhook_attempts WHERE ($1::TEXT IS NULL OR webhook_id = $1) \
                     ORDER BY seq DESC LIMIT $2"
                ))
                .await
                .map_err(db)?;
            client
                .query(&stmt, &[&webhook_id, &limit_param(limit)])
                .await
                .map_err(db)?
                .iter()
                .map(attempt_from_row)
                .collect()
        })
    }

    fn rotate_webhook_secret(
        &self,
        ctx: &Ctx,
        id: &str,
        sealed: Sealed,
        previous_expires_at: i64,
    ) -> Result<Webhook> {
        let (ctx, id) = (ctx.clone(), id.to_owned());
        self.write(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let mut w = Writer::begin(&mut client).await?;
            let version = i64::from(sealed.version);
            // The right-hand sides read the row as it was: the current secret becomes the previous.
            let keep = previous_expires_at > ctx.now;
            let changed = if keep {
                w.execute(
                    "UPDATE webhooks SET previous_nonce = nonce, previous_ciphertext = ciphertext, \
                     previous_master_version = master_version, previous_expires_at = $5, \
                     nonce = $2, ciphertext = $3, master_version = $4 WHERE id = $1",
                    &[&id, &&sealed.nonce[..], &sealed.ciphertext, &version, &previous_expires_at],
                )
                .await?
            } else {
                w.execute(
                    "UPDATE webhooks SET previous_nonce = NULL, previous_ciphertext = NULL, \
                     previous_master_version = 0, previous_expires_at = 0, \
                     nonce = $2, ciphertext = $3, master_version = $4 WHERE id = $1",
                    &[&id, &&sealed.nonce[..], &sealed.ciphertext, &version],
                )
                .await?
            };
            if changed == 0 {
                return Err(Error::NotFound { what: "webhook", id: id.clone() });
            }
            w.audit(
                &ctx,
                "webhook.rotate_secret",
                "",
                "",
                serde_json::json!({
                    "webhook_id": id,
                    "previous_expires_at": if keep { previous_expires_at } else { 0 },
                }),
            )
            .await?;
            let hook = w.webhook(&id).await?;
            w.commit(hook).await
        })
    }

    fn replay_webhook_messages(&self, ctx: &Ctx, since: i64, webhook_id: Option<&str>) -> Result<u64> {
        let (ctx, webhook_id) = (ctx.clone(), webhook_id.map(str::to_owned));
        self.write(|pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let mut w = Writer::begin(&mut client).await?;
            if let Some(id) = &webhook_id {
                let row = w.query_opt("SELECT enabled FROM webhooks WHERE id = $1", &[id]).await?;
                webhooks::require_enabled(id, row.as_ref().map(|row| col::<bool>(row, 0)).transpose()?)?;
            }
            // An attempt under way keeps its lease: it is the one that delivers the message again.
            let requeued = w
                .execute(
                    "UPDATE webhook_messages SET state = 'pending', attempts = 0, next_attempt_at = $2 \
                     WHERE created_at >= $1 AND ($3::TEXT IS NULL OR webhook_id = $3) \
                     AND webhook_id IN (SELECT id FROM webhooks WHERE enabled)",
                    &[&since, &ctx.now, &webhook_id],
                )
                .await?;
            w.audit(
                &ctx,
                "webhook.replay",
                "",
                "",
                serde_json::json!({ "webhook_id": webhook_id, "since": since, "requeued": requeued }),
            )
            .await?;
            w.commit(requeued).await
        })
    }

    fn prune_webhooks(&self, before: i64, now: i64, limit: usize) -> Result<webhooks::Pruned> {
        let pool = self.pool.clone();
        self.run(async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            // Not a Writer: pruning takes no feed position and must not wait on the feed head.
            let tx = client.transaction().await.map_err(db)?;
            let limit = limit_param(limit);
            // The outer conditions again: a row replayed meanwhile is re-checked and kept.
            let messages = tx
                .execute(
                    "DELETE FROM webhook_messages WHERE created_at < $1 AND state <> 'pending' AND seq IN \
                     (SELECT seq FROM webhook_messages WHERE created_at < $1 AND state <> 'pending' \
                      ORDER BY created_at LIMIT $2)",
                    &[&before, &limit],
                )
                .await
                .map_err(db)?;
            let attempts = tx
                .execute(
                    "DELETE FROM webhook_attempts WHERE seq IN \
                     (SELECT seq FROM webhook_attempts WHERE at < $1 ORDER BY at LIMIT $2)",
                    &[&before, &limit],
                )
                .await
                .map_err(db)?;
            let secrets = tx
                .execute(
                    "UPDATE webhooks SET previous_nonce = NULL, previous_ciphertext = NULL, \
                     previous_master_version = 0, previous_expires_at = 0 \
                     WHERE previous_ciphertext IS NOT NULL AND previous_expires_at <= $1",
                    &[&now],
                )
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)?;
            Ok(webhooks::Pruned { messages, attempts, secrets })
        })
    }

    fn list_webhook_secrets(&self) -> Result<Vec<SealedSecret>> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let rows = client
                .query(
                    "SELECT id, nonce, ciphertext, master_version, \
                     previous_nonce, previous_ciphertext, previous_master_version \
                     FROM webhooks ORDER BY id COLLATE \"C\"",
                    &[],
                )
                .await
                .map_err(db)?;
            let mut out = Vec::new();
            for row in &rows {
                let webhook_id: String = col(row, 0)?;
                for (slot, first) in [(SecretSlot::Current, 1), (SecretSlot::Previous, 4)] {
                    if let Some(sealed) = sealed_from_row(row, first)? {
                        out.push(SealedSecret { webhook_id: webhook_id.clone(), slot, sealed });
                    }
                }
            }
            Ok(out)
        })
    }

    fn reseal_webhook_secrets(&self, updates: &[(String, SecretSlot, u32, Sealed)]) -> Result<usize> {
        let rows = updates
            .iter()
            .map(|(webhook_id, slot, old_version, sealed)| {
                let sql = match slot {
                    SecretSlot::Current => {
                        "UPDATE webhooks SET nonce = $2, ciphertext = $3, master_version = $4 \
                         WHERE id = $1 AND master_version = $5"
                    }
                    SecretSlot::Previous => {
                        "UPDATE webhooks SET previous_nonce = $2, previous_ciphertext = $3, \
                         previous_master_version = $4 \
                         WHERE id = $1 AND previous_master_version = $5 AND previous_ciphertext IS NOT NULL"
                    }
                };
                (sql, webhook_id.clone(), *old_version, sealed.clone())
            })
            .collect();
        self.reseal_rows(rows)
    }

    fn listen_for_commits(&self, wake: Arc<dyn Fn() + Send + Sync>) {
        self.handle.spawn(listen_for_commits(self.config.clone(), wake));
    }

    fn get_signing(&self, key_id: &str) -> Result<SigningLookup> {
        let key_id = key_id.to_owned();
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT h.seq, g.algorithm, g.public_key, g.nonce, g.ciphertext, g.master_version, {KEY_COLUMNS} \
                     FROM feed_head h LEFT JOIN signing_keys g ON g.key_id = $1 LEFT JOIN keys k ON k.id = g.key_id"
                ))
                .await
                .map_err(db)?;
            let row = client.query_one(&stmt, &[&key_id]).await.map_err(db)?;
            let head_seq = seq_col(&row, 0)?;
            let algorithm: Option<String> = col(&row, 1)?;
            let Some(algorithm) = algorithm else {
                return Ok(SigningLookup { found: None, head_seq });
            };
            let public_key: Option<Vec<u8>> = col(&row, 2)?;
            let signing = match (SigningAlgorithm::parse(&algorithm), public_key, sealed_from_row(&row, 3)?) {
                (Some(SigningAlgorithm::Ed25519), Some(key), _) => {
                    let key: [u8; 32] = key.try_into().map_err(|_| {
                        Error::Internal(format!("database: public key of {key_id} is not 32 bytes"))
                    })?;
                    NewSigning::Ed25519(key)
                }
                (Some(SigningAlgorithm::HmacSha256), _, Some(sealed)) => NewSigning::Hmac(sealed),
                _ => {
                    return Err(Error::Internal(format!("database: signing material of {key_id} is incomplete")));
                }
            };
            let position: Option<i64> = col(&row, 6)?;
            let found = match position {
                Some(_) => Some((key_from_row(&row, 6)?, signing)),
                None => None,
            };
            Ok(SigningLookup { found, head_seq })
        })
    }

    fn list_sealed(&self) -> Result<Vec<(String, Sealed)>> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let rows = client
                .query(
                    "SELECT key_id, nonce, ciphertext, master_version FROM signing_keys \
                     WHERE ciphertext IS NOT NULL ORDER BY key_id COLLATE \"C\"",
                    &[],
                )
                .await
                .map_err(db)?;
            let mut out = Vec::new();
            for row in &rows {
                if let Some(sealed) = sealed_from_row(row, 1)? {
                    out.push((col(row, 0)?, sealed));
                }
            }
            Ok(out)
        })
    }

    fn reseal(&self, updates: &[(String, u32, Sealed)]) -> Result<usize> {
        const SQL: &str = "UPDATE signing_keys SET nonce = $2, ciphertext = $3, master_version = $4 \
                           WHERE key_id = $1 AND master_version = $5";
        self.reseal_rows(
            updates.iter().map(|(id, old, sealed)| (SQL, id.clone(), *old, sealed.clone())).collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::suite::{self, ctx, new_key, store_suite};
    use tollgate_testkit::postgres::Cluster;

    /// A store on a new database of the cluster this test binary shares.
    fn open(test: &str) -> Box<PostgresStore> {
        let url = Cluster::shared().create_database(test).unwrap();
        Box::new(PostgresStore::open(&url).unwrap())
    }

    // The shared store suite (store/suite.rs), on PostgreSQL.
    store_suite!(open);

    #[test]
    fn the_feed_has_no_gaps_with_three_replicas_and_sixteen_writers() {
        let url = Cluster::shared().create_database("feed_replicas").unwrap();
        let replicas: Vec<PostgresStore> = (0..3).map(|_| PostgresStore::open(&url).unwrap()).collect();
        let stores: Vec<&dyn Store> = replicas.iter().map(|s| s as &dyn Store).collect();
        let check = suite::sixteen_writers_leave_a_feed_without_gaps_on(&stores, 625);
        println!("feed check on three replicas: {check:?}");
        assert_eq!((check.writers, check.operations, check.gaps), (16, 10_000, 0));
        assert!(check.changes > 7_000, "{check:?}");
        assert!(check.live_reads > 1, "the reader followed the feed while it grew: {check:?}");
    }

    /// Waits up to 10 s for `count` to reach `at_least`.
    fn reaches(count: &AtomicU64, at_least: u64) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while count.load(Ordering::SeqCst) < at_least {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// A replica's listener is woken by another replica's committed writes (a change, an audit
    /// entry, a webhook message), not by reads or rolled-back writes, and listens again after its
    /// connection is cut.
    #[test]
    fn a_replica_is_woken_by_another_replicas_commits() {
        let url = Cluster::shared().create_database("listen_commits").unwrap();
        let (a, b) = (PostgresStore::open(&url).unwrap(), PostgresStore::open(&url).unwrap());
        let woken = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&woken);
        a.listen_for_commits(Arc::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        // Once when it starts listening.
        assert!(reaches(&woken, 1), "the listener never started");
        std::thread::sleep(Duration::from_millis(200));
        let before = woken.load(Ordering::SeqCst);
        b.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
        assert!(reaches(&woken, before + 1), "a change through B did not wake A");

        // Reads and a write that fails (its key exists) wake nothing.
        std::thread::sleep(Duration::from_millis(200));
        let quiet = woken.load(Ordering::SeqCst);
        b.get_key("key_1").unwrap();
        b.list_changes(0, 10).unwrap();
        b.create_key(&ctx(), new_key("key_1", "bob", 2)).unwrap_err();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(woken.load(Ordering::SeqCst), quiet, "woken without a commit");

        // The listener's connection is cut: it connects again, wakes once for what it may have
        // missed, and hears the next commit.
        let pool = b.pool.clone();
        let killed = b
            .run(async move {
                let client = pool.get().await.map_err(pool_err)?;
                let sql = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                           WHERE datname = current_database() AND query = 'LISTEN tollgate_commits'";
                Ok(client.query(sql, &[]).await.map_err(db)?.len())
            })
            .unwrap();
        assert_eq!(killed, 1, "one listening connection");
        let cut = woken.load(Ordering::SeqCst);
        assert!(reaches(&woken, cut + 1), "no wake-up after reconnecting");
        std::thread::sleep(Duration::from_millis(200));
        let again = woken.load(Ordering::SeqCst);
        b.revoke_key(&ctx(), "key_1", "test").unwrap();
        assert!(reaches(&woken, again + 1), "a commit after the reconnection did not wake A");
    }

    #[test]
    fn replicas_opening_together_migrate_once_and_a_reopened_store_counts_from_zero() {
        let url = Cluster::shared().create_database("open_together").unwrap();
        let stores: Vec<PostgresStore> = std::thread::scope(|scope| {
            let opening: Vec<_> =
                (0..3).map(|_| scope.spawn(|| PostgresStore::open(&url).unwrap())).collect();
            opening.into_iter().map(|h| h.join().unwrap()).collect()
        });
        stores[0].create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
        assert_eq!(stores[0].audit_written(), 2);
        assert_eq!(stores[1].audit_written(), 0, "the count is the store's own");
        assert_eq!(stores[2].get_key("key_1").unwrap().id, "key_1");
        drop(stores);
        let again = PostgresStore::open(&url).unwrap();
        assert_eq!(again.audit_written(), 0);
        assert_eq!(again.list_audit(0, 10).unwrap().len(), 2);
        let versions = Cluster::shared()
            .psql(
                url.rsplit('/').next().unwrap(),
                "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations",
            )
            .unwrap();
        assert_eq!(versions.trim(), "1,2,3,4,5", "each migration applied once");
    }

    #[test]
    fn a_bad_url_names_the_flag_and_an_unreachable_database_is_unavailable() {
        let err = PostgresStore::open("postgres://u@h:notaport/db").unwrap_err();
        assert!(err.to_string().starts_with("store: not a PostgreSQL URL"), "{err}");
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = PostgresStore::open(&format!("postgres://postgres@127.0.0.1:{port}/none")).unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    }

    /// The database stopped under a running store: every call fails as unavailable (never a
    /// wrong answer), and the store works again once the database is back.
    #[test]
    fn a_stopped_database_is_unavailable_and_the_store_recovers() {
        // A cluster of its own: stopping the shared one would fail other tests.
        let cluster = Cluster::start().unwrap();
        let url = cluster.create_database("outage").unwrap();
        let store = PostgresStore::open(&url).unwrap();
        store.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
        cluster.stop().unwrap();
        let lookup = store.lookup_secret(&[1; 32]).unwrap_err();
        assert!(matches!(lookup, Error::Unavailable(_)), "{lookup:?}");
        let revoke = store.revoke_key(&ctx(), "key_1", "test").unwrap_err();
        assert!(matches!(revoke, Error::Unavailable(_)), "{revoke:?}");
        assert!(matches!(store.list_changes(0, 10), Err(Error::Unavailable(_))));
        cluster.restart().unwrap();
        let found = store.lookup_secret(&[1; 32]).unwrap().found.map(|m| m.key.revoked_at);
        assert_eq!(found, Some(0), "the refused revocation did not happen");
        store.revoke_key(&ctx(), "key_1", "test").unwrap();
        assert_eq!(store.list_changes(0, 10).unwrap().1, 2);
    }
}
