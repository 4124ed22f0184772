//! The PostgreSQL store's rotation policies, lifecycle transitions, leases and pending secrets.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::{KEY_COLUMNS, Writer, col, db, json_col, key_from_row, limit_param, sealed_from_row, to_json};
use crate::error::{Error, Result};
use crate::lifecycle::{
    self, Candidate, EXPIRED_LOOKBACK, PolicyRecord, PolicyTarget, Previous, RotationPolicy, STAGE_EXPIRED,
    STAGE_GRACE_ENDED, Transition,
};
use crate::master::Sealed;
use crate::model::{ChangeKind, Ctx};
use crate::webhooks::EventType;

/// Migration 4: rotation policies and the lifecycle scheduler.
pub(super) const SCHEMA_V4: &str = "
CREATE TABLE rotation_policies (
    consumer_id TEXT   NOT NULL,
    key_id      TEXT   NOT NULL,
    policy      TEXT   NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (consumer_id, key_id)
);
CREATE INDEX rotation_policies_by_key ON rotation_policies (key_id);
CREATE TABLE lifecycle_notices (
    key_id     TEXT    NOT NULL,
    generation BIGINT  NOT NULL,
    stage      TEXT    NOT NULL,
    at         BIGINT  NOT NULL,
    sent       BOOLEAN NOT NULL,
    PRIMARY KEY (key_id, generation, stage)
);
CREATE TABLE pending_secrets (
    key_id         TEXT   PRIMARY KEY,
    nonce          BYTEA  NOT NULL,
    ciphertext     BYTEA  NOT NULL,
    master_version BIGINT NOT NULL,
    created_at     BIGINT NOT NULL
);
CREATE TABLE leases (
    name   TEXT   PRIMARY KEY,
    holder TEXT   NOT NULL,
    until  BIGINT NOT NULL
);
ALTER TABLE key_secrets ADD COLUMN last_used_at BIGINT NOT NULL DEFAULT 0;
";

fn policy_from_row(row: &Row) -> Result<PolicyRecord> {
    Ok(PolicyRecord {
        consumer_id: col(row, 0)?,
        key_id: col(row, 1)?,
        policy: json_col(row, 2)?,
        updated_at: col(row, 3)?,
    })
}

async fn resolve(w: &Writer<'_>, target: &PolicyTarget) -> Result<(String, String)> {
    Ok(match target {
        PolicyTarget::Consumer(c) => (w.require_consumer(c).await?.id, String::new()),
        PolicyTarget::Key(k) => {
            let key = w.require_key(k).await?;
            (key.consumer_id, key.id)
        }
    })
}

pub(super) async fn set_policy(
    w: &mut Writer<'_>,
    ctx: &Ctx,
    target: &PolicyTarget,
    policy: &RotationPolicy,
) -> Result<PolicyRecord> {
    let (consumer_id, key_id) = resolve(w, target).await?;
    w.execute(
        "INSERT INTO rotation_policies (consumer_id, key_id, policy, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (consumer_id, key_id) DO UPDATE SET policy = excluded.policy, updated_at = excluded.updated_at",
        &[&consumer_id, &key_id, &to_json(policy)?, &ctx.now],
    )
    .await?;
    w.audit(ctx, "policy.set", &key_id, &consumer_id, serde_json::to_value(policy).unwrap_or_default())
        .await?;
    Ok(PolicyRecord { consumer_id, key_id, policy: policy.clone(), updated_at: ctx.now })
}

pub(super) async fn delete_policy(w: &mut Writer<'_>, ctx: &Ctx, target: &PolicyTarget) -> Result<()> {
    let (consumer_id, key_id) = resolve(w, target).await?;
    let deleted = w
        .execute(
            "DELETE FROM rotation_policies WHERE consumer_id = $1 AND key_id = $2",
            &[&consumer_id, &key_id],
        )
        .await?;
    if deleted == 0 {
        let id = if key_id.is_empty() { consumer_id } else { key_id };
        return Err(Error::NotFound { what: "rotation policy", id });
    }
    w.audit(ctx, "policy.delete", &key_id, &consumer_id, serde_json::json!({})).await
}

pub(super) async fn list_policies(w: &Writer<'_>, consumer: Option<&str>) -> Result<Vec<PolicyRecord>> {
    const COLUMNS: &str = "consumer_id, key_id, policy, updated_at";
    let rows = match consumer {
        Some(c) => {
            let consumer_id = w.require_consumer(c).await?.id;
            w.query(
                &format!("SELECT {COLUMNS} FROM rotation_policies WHERE consumer_id = $1 ORDER BY key_id"),
                &[&consumer_id],
            )
            .await?
        }
        None => {
            w.query(
                &format!(
                    "SELECT {COLUMNS} FROM rotation_policies ORDER BY key_id <> '', consumer_id, key_id"
                ),
                &[],
            )
            .await?
        }
    };
    rows.iter().map(policy_from_row).collect()
}

/// The policy column of a key row `k`: its own, else its consumer's.
const POLICY_OF_KEY: &str = "COALESCE(\
     (SELECT p.policy FROM rotation_policies p WHERE p.key_id = k.id), \
     (SELECT p.policy FROM rotation_policies p WHERE p.consumer_id = k.consumer_id AND p.key_id = ''))";

/// When that policy was set.
const POLICY_SET_AT: &str = "COALESCE(\
     (SELECT p.updated_at FROM rotation_policies p WHERE p.key_id = k.id), \
     (SELECT p.updated_at FROM rotation_policies p WHERE p.consumer_id = k.consumer_id AND p.key_id = ''), 0)";

pub(super) async fn effective_policy<C: GenericClient>(
    client: &C,
    key_id: &str,
) -> Result<Option<RotationPolicy>> {
    let row = client
        .query_opt(&format!("SELECT {POLICY_OF_KEY} FROM keys k WHERE k.id = $1"), &[&key_id])
        .await
        .map_err(db)?;
    let text: Option<String> = match &row {
        Some(row) => col(row, 0)?,
        None => None,
    };
    match text {
        Some(text) => {
            serde_json::from_str(&text).map(Some).map_err(|e| Error::internal("database: rotation policy", e))
        }
        None => Ok(None),
    }
}

pub(super) async fn candidates<C: GenericClient>(
    client: &C,
    now: i64,
    after: i64,
    limit: usize,
) -> Result<Vec<Candidate>> {
    let sql = format!(
        "SELECT * FROM (SELECT {KEY_COLUMNS}, {POLICY_OF_KEY} AS policy, {POLICY_SET_AT} AS policy_set_at, \
           (SELECT s.expires_at FROM key_secrets s WHERE s.key_id = k.id AND s.expires_at <> 0) AS prev_expires, \
           (SELECT s.last_used_at FROM key_secrets s WHERE s.key_id = k.id AND s.expires_at <> 0) AS prev_used \
         FROM keys k WHERE k.revoked_at = 0 AND k.pos > $1) c \
         WHERE c.policy IS NOT NULL OR c.prev_expires IS NOT NULL \
            OR (c.expires_at <> 0 AND c.expires_at <= $2 AND c.expires_at >= $3) \
         ORDER BY c.pos LIMIT $4"
    );
    let lookback = now.saturating_sub(EXPIRED_LOOKBACK);
    let limit = limit_param(limit);
    let rows = client.query(&sql, &[&after, &now, &lookback, &limit]).await.map_err(db)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let key = key_from_row(row, 0)?;
        let policy: Option<String> = col(row, 17)?;
        let policy = match policy {
            Some(text) => Some(
                serde_json::from_str(&text).map_err(|e| Error::internal("database: rotation policy", e))?,
            ),
            None => None,
        };
        let policy_set_at: i64 = col(row, 18)?;
        let prev_expires: Option<i64> = col(row, 19)?;
        let prev_used: Option<i64> = col(row, 20)?;
        let previous =
            prev_expires.map(|expires_at| Previous { expires_at, last_used_at: prev_used.unwrap_or(0) });
        let notices = client
            .query("SELECT generation, stage FROM lifecycle_notices WHERE key_id = $1", &[&key.id])
            .await
            .map_err(db)?
            .iter()
            .map(|r| Ok((col(r, 0)?, col(r, 1)?)))
            .collect::<Result<Vec<(i64, String)>>>()?;
        out.push(Candidate { key, policy, policy_set_at, previous, notices });
    }
    Ok(out)
}

async fn notice(
    w: &Writer<'_>,
    ctx: &Ctx,
    key_id: &str,
    generation: i64,
    stage: &str,
    sent: bool,
) -> Result<bool> {
    let inserted = w
        .execute(
            "INSERT INTO lifecycle_notices (key_id, generation, stage, at, sent) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING",
            &[&key_id, &generation, &stage, &ctx.now, &sent],
        )
        .await?;
    Ok(inserted == 1)
}

pub(super) async fn apply(w: &mut Writer<'_>, ctx: &Ctx, transition: &Transition) -> Result<bool> {
    match transition {
        Transition::Expiring { key_id, consumer_id, deadline, lead, action, overtaken } => {
            for earlier in overtaken {
                notice(w, ctx, key_id, *deadline, &lifecycle::expiring_stage(*earlier), false).await?;
            }
            if !notice(w, ctx, key_id, *deadline, &lifecycle::expiring_stage(*lead), true).await? {
                return Ok(false);
            }
            let data = lifecycle::expiring_data(key_id, consumer_id, *deadline, *lead, *action);
            w.change(ctx, ChangeKind::KeyExpiring, key_id, consumer_id, "").await?;
            w.audit(ctx, "key.expiring", key_id, consumer_id, data.clone()).await?;
            w.enqueue(ctx, EventType::KeyExpiring, &data).await?;
            Ok(true)
        }
        Transition::Expired { key_id, consumer_id, expires_at, set_expiry, birth } => {
            if *set_expiry {
                let Some(key) = w.find_key(key_id).await? else { return Ok(false) };
                if key.revoked_at != 0 || lifecycle::birth(&key) != *birth {
                    return Ok(false);
                }
                if key.expires_at == 0 || key.expires_at > *expires_at {
                    w.execute("UPDATE keys SET expires_at = $2 WHERE id = $1", &[key_id, expires_at]).await?;
                }
            }
            if !notice(w, ctx, key_id, *expires_at, STAGE_EXPIRED, true).await? {
                return Ok(false);
            }
            let data = lifecycle::expired_data(key_id, consumer_id, *expires_at);
            w.change(ctx, ChangeKind::KeyExpired, key_id, consumer_id, "").await?;
            let mut detail = data.clone();
            detail["by_policy"] = serde_json::Value::Bool(*set_expiry);
            w.audit(ctx, "key.expire", key_id, consumer_id, detail).await?;
            w.enqueue(ctx, EventType::KeyExpired, &data).await?;
            Ok(true)
        }
        Transition::EndGrace { key_id, consumer_id, rotated_at, reason } => {
            let Some(key) = w.find_key(key_id).await? else { return Ok(false) };
            if key.rotated_at != *rotated_at {
                return Ok(false);
            }
            w.execute("DELETE FROM key_secrets WHERE key_id = $1 AND expires_at <> 0", &[key_id]).await?;
            w.execute(
                "UPDATE keys SET previous_expires_at = LEAST(previous_expires_at, $2) WHERE id = $1",
                &[key_id, &ctx.now],
            )
            .await?;
            w.execute("DELETE FROM pending_secrets WHERE key_id = $1", &[key_id]).await?;
            if !notice(w, ctx, key_id, *rotated_at, STAGE_GRACE_ENDED, true).await? {
                return Ok(false);
            }
            let data = lifecycle::grace_ended_data(key_id, consumer_id, reason);
            w.change(ctx, ChangeKind::KeyGraceEnded, key_id, consumer_id, "").await?;
            w.audit(ctx, "key.grace_end", key_id, consumer_id, data.clone()).await?;
            w.enqueue(ctx, EventType::KeyGraceEnded, &data).await?;
            Ok(true)
        }
        Transition::Rotate { .. } => {
            Err(Error::Internal("a rotation is applied with rotate_key, not as a transition".to_owned()))
        }
    }
}

pub(super) async fn take_lease<C: GenericClient>(
    client: &C,
    name: &str,
    holder: &str,
    now: i64,
    until: i64,
) -> Result<bool> {
    let changed = client
        .execute(
            "INSERT INTO leases (name, holder, until) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until \
             WHERE leases.holder = excluded.holder OR leases.until <= $4",
            &[&name, &holder, &until, &now],
        )
        .await
        .map_err(db)?;
    Ok(changed == 1)
}

pub(super) async fn record_previous_use<C: GenericClient>(client: &C, used: &[(String, i64)]) -> Result<()> {
    for (id, at) in used {
        client
            .execute(
                "UPDATE key_secrets SET last_used_at = $2 \
                 WHERE key_id = $1 AND expires_at <> 0 AND last_used_at < $2",
                &[id, at],
            )
            .await
            .map_err(db)?;
    }
    Ok(())
}

pub(super) async fn take_pending(w: &mut Writer<'_>, ctx: &Ctx, key_id: &str) -> Result<Option<Sealed>> {
    let row = w
        .query_opt(
            "DELETE FROM pending_secrets WHERE key_id = $1 RETURNING nonce, ciphertext, master_version",
            &[&key_id],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let sealed = sealed_from_row(&row, 0)?;
    let key = w.require_key(key_id).await?;
    w.audit(ctx, "key.pickup", key_id, &key.consumer_id, serde_json::json!({})).await?;
    Ok(sealed)
}

/// What a rotation does to the pending secret: stores an automatic rotation's, drops any other.
pub(super) async fn set_pending(
    w: &Writer<'_>,
    ctx: &Ctx,
    key_id: &str,
    pending: Option<&Sealed>,
) -> Result<()> {
    w.execute("DELETE FROM pending_secrets WHERE key_id = $1", &[&key_id]).await?;
    if let Some(sealed) = pending {
        let version = i64::from(sealed.version);
        w.execute(
            "INSERT INTO pending_secrets (key_id, nonce, ciphertext, master_version, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
            &[&key_id, &&sealed.nonce[..], &sealed.ciphertext, &version, &ctx.now],
        )
        .await?;
    }
    Ok(())
}
