//! The SQLite store's rotation policies, lifecycle transitions, leases and pending secrets.

use rusqlite::types::Type;
use rusqlite::{OptionalExtension, Row, Transaction, params};

use super::{
    KEY_COLUMNS, db, enqueue_event, find_key, json_column, key_from_row, limit_param, record_audit,
    record_change, require_consumer, require_key, sealed_from_row, to_json,
};
use crate::error::{Error, Result};
use crate::lifecycle::{
    self, Candidate, EXPIRED_LOOKBACK, PolicyRecord, PolicyTarget, Previous, RotationPolicy, STAGE_EXPIRED,
    STAGE_GRACE_ENDED, Transition,
};
use crate::master::Sealed;
use crate::model::{ChangeKind, Ctx};
use crate::webhooks::EventType;

/// Tables of schema version 6.
pub(super) const SCHEMA: &str = "
-- Rotation policies: a consumer's (key_id = '') or one key's.
CREATE TABLE IF NOT EXISTS rotation_policies (
    consumer_id TEXT    NOT NULL,
    key_id      TEXT    NOT NULL,
    policy      TEXT    NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (consumer_id, key_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rotation_policies_by_key ON rotation_policies (key_id);
-- Lifecycle transitions done, once each: (key, generation, stage). sent = 0: skipped.
CREATE TABLE IF NOT EXISTS lifecycle_notices (
    key_id     TEXT    NOT NULL,
    generation INTEGER NOT NULL,
    stage      TEXT    NOT NULL,
    at         INTEGER NOT NULL,
    sent       INTEGER NOT NULL,
    PRIMARY KEY (key_id, generation, stage)
) WITHOUT ROWID;
-- An automatic rotation's new secret, sealed under the master key, until its owner picks it up.
CREATE TABLE IF NOT EXISTS pending_secrets (
    key_id         TEXT    PRIMARY KEY,
    nonce          BLOB    NOT NULL,
    ciphertext     BLOB    NOT NULL,
    master_version INTEGER NOT NULL,
    created_at     INTEGER NOT NULL
) WITHOUT ROWID;
-- Leases: which replica runs a singleton task (the lifecycle scheduler) until when.
CREATE TABLE IF NOT EXISTS leases (
    name   TEXT    PRIMARY KEY,
    holder TEXT    NOT NULL,
    until  INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Brings a store of an older version up to this one's columns.
pub(super) fn add_columns(tx: &Transaction<'_>) -> Result<()> {
    let has: i64 = tx
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('key_secrets') WHERE name = 'last_used_at'",
            [],
            |row| row.get(0),
        )
        .map_err(db)?;
    if has == 0 {
        tx.execute_batch("ALTER TABLE key_secrets ADD COLUMN last_used_at INTEGER NOT NULL DEFAULT 0")
            .map_err(db)?;
    }
    Ok(())
}

fn policy_from_row(row: &Row<'_>) -> rusqlite::Result<PolicyRecord> {
    Ok(PolicyRecord {
        consumer_id: row.get(0)?,
        key_id: row.get(1)?,
        policy: json_column(row, 2)?,
        updated_at: row.get(3)?,
    })
}

/// The consumer and key a target names: `(consumer_id, key_id or "")`.
fn resolve(tx: &Transaction<'_>, target: &PolicyTarget) -> Result<(String, String)> {
    Ok(match target {
        PolicyTarget::Consumer(c) => (require_consumer(tx, c)?.id, String::new()),
        PolicyTarget::Key(k) => {
            let key = require_key(tx, k)?;
            (key.consumer_id, key.id)
        }
    })
}

pub(super) fn set_policy(
    tx: &Transaction<'_>,
    ctx: &Ctx,
    target: &PolicyTarget,
    policy: &RotationPolicy,
) -> Result<PolicyRecord> {
    let (consumer_id, key_id) = resolve(tx, target)?;
    tx.execute(
        "INSERT INTO rotation_policies (consumer_id, key_id, policy, updated_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (consumer_id, key_id) DO UPDATE SET policy = excluded.policy, updated_at = excluded.updated_at",
        params![consumer_id, key_id, to_json(policy)?, ctx.now],
    )
    .map_err(db)?;
    record_audit(
        tx,
        ctx,
        "policy.set",
        &key_id,
        &consumer_id,
        serde_json::to_value(policy).unwrap_or_default(),
    )?;
    Ok(PolicyRecord { consumer_id, key_id, policy: policy.clone(), updated_at: ctx.now })
}

pub(super) fn delete_policy(tx: &Transaction<'_>, ctx: &Ctx, target: &PolicyTarget) -> Result<()> {
    let (consumer_id, key_id) = resolve(tx, target)?;
    let deleted = tx
        .execute(
            "DELETE FROM rotation_policies WHERE consumer_id = ?1 AND key_id = ?2",
            params![consumer_id, key_id],
        )
        .map_err(db)?;
    if deleted == 0 {
        let id = if key_id.is_empty() { consumer_id } else { key_id };
        return Err(Error::NotFound { what: "rotation policy", id });
    }
    record_audit(tx, ctx, "policy.delete", &key_id, &consumer_id, serde_json::json!({}))
}

pub(super) fn list_policies(tx: &Transaction<'_>, consumer: Option<&str>) -> Result<Vec<PolicyRecord>> {
    const COLUMNS: &str = "consumer_id, key_id, policy, updated_at";
    match consumer {
        Some(c) => {
            let consumer_id = require_consumer(tx, c)?.id;
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM rotation_policies WHERE consumer_id = ?1 ORDER BY key_id"
                ))
                .map_err(db)?;
            let rows = stmt.query_map([consumer_id], policy_from_row).map_err(db)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
        }
        None => {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM rotation_policies ORDER BY key_id != '', consumer_id, key_id"
                ))
                .map_err(db)?;
            let rows = stmt.query_map([], policy_from_row).map_err(db)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
        }
    }
}

/// The policy column of a key row: its own, else its consumer's.
const POLICY_OF_KEY: &str = "COALESCE(\
     (SELECT p.policy FROM rotation_policies p WHERE p.key_id = keys.id), \
     (SELECT p.policy FROM rotation_policies p WHERE p.consumer_id = keys.consumer_id AND p.key_id = ''))";

/// When that policy was set.
const POLICY_SET_AT: &str = "COALESCE(\
     (SELECT p.updated_at FROM rotation_policies p WHERE p.key_id = keys.id), \
     (SELECT p.updated_at FROM rotation_policies p WHERE p.consumer_id = keys.consumer_id AND p.key_id = ''), 0)";

pub(super) fn effective_policy(tx: &Transaction<'_>, key_id: &str) -> Result<Option<RotationPolicy>> {
    let text: Option<Option<String>> = tx
        .query_row(&format!("SELECT {POLICY_OF_KEY} FROM keys WHERE id = ?1"), [key_id], |row| row.get(0))
        .optional()
        .map_err(db)?;
    match text.flatten() {
        Some(text) => {
            serde_json::from_str(&text).map(Some).map_err(|e| Error::internal("database: rotation policy", e))
        }
        None => Ok(None),
    }
}

pub(super) fn candidates(tx: &Transaction<'_>, now: i64, after: i64, limit: usize) -> Result<Vec<Candidate>> {
    let mut stmt = tx
        .prepare_cached(&format!(
            "SELECT * FROM (SELECT {KEY_COLUMNS}, {POLICY_OF_KEY} AS policy, {POLICY_SET_AT} AS policy_set_at, \
               (SELECT s.expires_at FROM key_secrets s WHERE s.key_id = keys.id AND s.expires_at != 0) AS prev_expires, \
               (SELECT s.last_used_at FROM key_secrets s WHERE s.key_id = keys.id AND s.expires_at != 0) AS prev_used \
             FROM keys WHERE revoked_at = 0 AND pos > ?1) \
             WHERE policy IS NOT NULL OR prev_expires IS NOT NULL \
                OR (expires_at != 0 AND expires_at <= ?2 AND expires_at >= ?3) \
             ORDER BY pos LIMIT ?4"
        ))
        .map_err(db)?;
    let rows = stmt
        .query_map(params![after, now, now.saturating_sub(EXPIRED_LOOKBACK), limit_param(limit)], |row| {
            let key = key_from_row(row)?;
            let policy: Option<String> = row.get(17)?;
            let policy =
                match policy {
                    Some(text) => Some(serde_json::from_str(&text).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(17, Type::Text, Box::new(e))
                    })?),
                    None => None,
                };
            let policy_set_at: i64 = row.get(18)?;
            let prev_expires: Option<i64> = row.get(19)?;
            let prev_used: Option<i64> = row.get(20)?;
            let previous =
                prev_expires.map(|expires_at| Previous { expires_at, last_used_at: prev_used.unwrap_or(0) });
            Ok(Candidate { key, policy, policy_set_at, previous, notices: Vec::new() })
        })
        .map_err(db)?;
    let mut out = rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)?;
    let mut notices =
        tx.prepare_cached("SELECT generation, stage FROM lifecycle_notices WHERE key_id = ?1").map_err(db)?;
    for c in &mut out {
        let rows = notices.query_map([&c.key.id], |row| Ok((row.get(0)?, row.get(1)?))).map_err(db)?;
        c.notices = rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)?;
    }
    Ok(out)
}

/// Records a transition; `false` when it was recorded before.
fn notice(
    tx: &Transaction<'_>,
    ctx: &Ctx,
    key_id: &str,
    generation: i64,
    stage: &str,
    sent: bool,
) -> Result<bool> {
    let inserted = tx
        .prepare_cached(
            "INSERT INTO lifecycle_notices (key_id, generation, stage, at, sent) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT DO NOTHING",
        )
        .map_err(db)?
        .execute(params![key_id, generation, stage, ctx.now, sent])
        .map_err(db)?;
    Ok(inserted == 1)
}

pub(super) fn apply(tx: &Transaction<'_>, ctx: &Ctx, transition: &Transition) -> Result<bool> {
    match transition {
        Transition::Expiring { key_id, consumer_id, deadline, lead, action, overtaken } => {
            for earlier in overtaken {
                notice(tx, ctx, key_id, *deadline, &lifecycle::expiring_stage(*earlier), false)?;
            }
            if !notice(tx, ctx, key_id, *deadline, &lifecycle::expiring_stage(*lead), true)? {
                return Ok(false);
            }
            let data = lifecycle::expiring_data(key_id, consumer_id, *deadline, *lead, *action);
            record_change(tx, ctx, ChangeKind::KeyExpiring, key_id, consumer_id)?;
            record_audit(tx, ctx, "key.expiring", key_id, consumer_id, data.clone())?;
            enqueue_event(tx, ctx, EventType::KeyExpiring, &data)?;
            Ok(true)
        }
        Transition::Expired { key_id, consumer_id, expires_at, set_expiry, birth } => {
            if *set_expiry {
                let Some(key) = find_key(tx, key_id)? else { return Ok(false) };
                if key.revoked_at != 0 || lifecycle::birth(&key) != *birth {
                    return Ok(false);
                }
                if key.expires_at == 0 || key.expires_at > *expires_at {
                    tx.execute("UPDATE keys SET expires_at = ?2 WHERE id = ?1", params![key_id, expires_at])
                        .map_err(db)?;
                }
            }
            if !notice(tx, ctx, key_id, *expires_at, STAGE_EXPIRED, true)? {
                return Ok(false);
            }
            let data = lifecycle::expired_data(key_id, consumer_id, *expires_at);
            record_change(tx, ctx, ChangeKind::KeyExpired, key_id, consumer_id)?;
            let mut detail = data.clone();
            detail["by_policy"] = serde_json::Value::Bool(*set_expiry);
            record_audit(tx, ctx, "key.expire", key_id, consumer_id, detail)?;
            enqueue_event(tx, ctx, EventType::KeyExpired, &data)?;
            Ok(true)
        }
        Transition::EndGrace { key_id, consumer_id, rotated_at, reason } => {
            let Some(key) = find_key(tx, key_id)? else { return Ok(false) };
            if key.rotated_at != *rotated_at {
                return Ok(false);
            }
            tx.execute("DELETE FROM key_secrets WHERE key_id = ?1 AND expires_at != 0", [key_id])
                .map_err(db)?;
            tx.execute(
                "UPDATE keys SET previous_expires_at = MIN(previous_expires_at, ?2) WHERE id = ?1",
                params![key_id, ctx.now],
            )
            .map_err(db)?;
            tx.execute("DELETE FROM pending_secrets WHERE key_id = ?1", [key_id]).map_err(db)?;
            if !notice(tx, ctx, key_id, *rotated_at, STAGE_GRACE_ENDED, true)? {
                return Ok(false);
            }
            let data = lifecycle::grace_ended_data(key_id, consumer_id, reason);
            record_change(tx, ctx, ChangeKind::KeyGraceEnded, key_id, consumer_id)?;
            record_audit(tx, ctx, "key.grace_end", key_id, consumer_id, data.clone())?;
            enqueue_event(tx, ctx, EventType::KeyGraceEnded, &data)?;
            Ok(true)
        }
        Transition::Rotate { .. } => {
            Err(Error::Internal("a rotation is applied with rotate_key, not as a transition".to_owned()))
        }
    }
}

pub(super) fn take_lease(
    tx: &Transaction<'_>,
    name: &str,
    holder: &str,
    now: i64,
    until: i64,
) -> Result<bool> {
    let changed = tx
        .execute(
            "INSERT INTO leases (name, holder, until) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until \
             WHERE leases.holder = excluded.holder OR leases.until <= ?4",
            params![name, holder, until, now],
        )
        .map_err(db)?;
    Ok(changed == 1)
}

pub(super) fn record_previous_use(tx: &Transaction<'_>, used: &[(String, i64)]) -> Result<()> {
    let mut stmt = tx
        .prepare_cached(
            "UPDATE key_secrets SET last_used_at = ?2 WHERE key_id = ?1 AND expires_at != 0 AND last_used_at < ?2",
        )
        .map_err(db)?;
    for (id, at) in used {
        stmt.execute(params![id, at]).map_err(db)?;
    }
    Ok(())
}

pub(super) fn take_pending(tx: &Transaction<'_>, ctx: &Ctx, key_id: &str) -> Result<Option<Sealed>> {
    let row = tx
        .query_row(
            "SELECT nonce, ciphertext, master_version FROM pending_secrets WHERE key_id = ?1",
            [key_id],
            |row| sealed_from_row(row, 0),
        )
        .optional()
        .map_err(db)?
        .flatten();
    let Some(sealed) = row else { return Ok(None) };
    tx.execute("DELETE FROM pending_secrets WHERE key_id = ?1", [key_id]).map_err(db)?;
    let key = require_key(tx, key_id)?;
    record_audit(tx, ctx, "key.pickup", key_id, &key.consumer_id, serde_json::json!({}))?;
    Ok(Some(sealed))
}

/// What a rotation does to the pending secret: stores an automatic rotation's, drops any other.
pub(super) fn set_pending(
    tx: &Transaction<'_>,
    ctx: &Ctx,
    key_id: &str,
    pending: Option<&Sealed>,
) -> Result<()> {
    tx.execute("DELETE FROM pending_secrets WHERE key_id = ?1", [key_id]).map_err(db)?;
    if let Some(sealed) = pending {
        tx.execute(
            "INSERT INTO pending_secrets (key_id, nonce, ciphertext, master_version, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![key_id, &sealed.nonce[..], sealed.ciphertext, sealed.version, ctx.now],
        )
        .map_err(db)?;
    }
    Ok(())
}
