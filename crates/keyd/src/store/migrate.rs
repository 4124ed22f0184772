//! `tollgate-keyd migrate`: copies a SQLite store into an empty PostgreSQL store.
//!
//! The SQLite store is opened as the service opens it (which brings an older schema up to date),
//! then read in one read transaction, table by table, into memory. The PostgreSQL store takes
//! every row in one transaction that first checks the target is empty and, before it commits,
//! that each table holds exactly the rows read; the feed and audit heads and the listing
//! positions continue from the copied rows. Nothing is written to the target unless all of it is.

use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::postgres::{ColumnType, ImportTable, ImportValue, TABLES};
use super::{PostgresStore, SqliteStore};
use crate::error::{Error, Result};

/// Where a store lives, as given to `--store`, `--from` and `--to`.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// `sqlite:PATH`
    Sqlite(std::path::PathBuf),
    /// `postgres://…` or `postgresql://…`
    Postgres(String),
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Self::Postgres(url) => f.debug_tuple("Postgres").field(&redact_url(url)).finish(),
        }
    }
}

/// The URL without its password, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split_once(':').map_or(user_info, |(user, _)| user);
            let masked = if user_info.contains(':') { format!("{user}:***") } else { user.to_owned() };
            format!("{scheme}://{masked}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

impl StoreLocation {
    /// Parses `sqlite:PATH`, `postgres://…` or `postgresql://…`; `flag` names the option in the
    /// error.
    pub fn parse(flag: &str, text: &str) -> Result<Self> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(Self::Postgres(text.to_owned()));
        }
        if let Some(path) = text.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err(Error::invalid(flag, "sqlite: needs a file path (sqlite:PATH)"));
            }
            return Ok(Self::Sqlite(path.into()));
        }
        Err(Error::invalid(flag, "must be sqlite:PATH or a postgres:// URL"))
    }
}

/// Copies the SQLite store at `from` into the empty PostgreSQL store at `to`; each table with the
/// number of rows copied.
pub fn sqlite_to_postgres(from: &Path, to: &str) -> Result<Vec<(&'static str, u64)>> {
    if !from.is_file() {
        return Err(Error::invalid("from", format!("no SQLite store at {}", from.display())));
    }
    // Brings an older schema up to date, as starting the service on it would.
    drop(SqliteStore::open(from)?);
    let tables = read_sqlite(from)?;
    let target = PostgresStore::open(to)?;
    target.import(tables)
}

fn read_sqlite(path: &Path) -> Result<Vec<ImportTable>> {
    let db = |e: rusqlite::Error| Error::internal("reading the SQLite store", e);
    let mut conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(db)?;
    let tx = conn.transaction().map_err(db)?;
    let mut tables = Vec::new();
    for (name, columns) in TABLES {
        let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
        let mut stmt = tx.prepare(&format!("SELECT {} FROM {name}", names.join(", "))).map_err(db)?;
        let mut rows = stmt.query([]).map_err(db)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(db)? {
            let mut values = Vec::with_capacity(columns.len());
            for (i, (column, ty)) in columns.iter().enumerate() {
                let value = row.get_ref(i).map_err(db)?;
                values.push(convert(value, *ty).ok_or_else(|| {
                    Error::Internal(format!(
                        "{name}.{column}: a {:?} where {ty:?} was expected",
                        value.data_type()
                    ))
                })?);
            }
            out.push(values);
        }
        tables.push(ImportTable { name, columns, rows: out });
    }
    Ok(tables)
}

fn convert(value: ValueRef<'_>, ty: ColumnType) -> Option<ImportValue> {
    Some(match (ty, value) {
        (ColumnType::Integer, ValueRef::Null) => ImportValue::Integer(None),
        (ColumnType::Integer, ValueRef::Integer(v)) => ImportValue::Integer(Some(v)),
        (ColumnType::Text, ValueRef::Null) => ImportValue::Text(None),
        (ColumnType::Text, ValueRef::Text(v)) => ImportValue::Text(Some(String::from_utf8(v.to_vec()).ok()?)),
        (ColumnType::Blob, ValueRef::Null) => ImportValue::Blob(None),
        (ColumnType::Blob, ValueRef::Blob(v)) => ImportValue::Blob(Some(v.to_vec())),
        (ColumnType::Bool, ValueRef::Null) => ImportValue::Bool(None),
        (ColumnType::Bool, ValueRef::Integer(v @ (0 | 1))) => ImportValue::Bool(Some(v == 1)),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_locations_parse_and_bad_ones_name_the_flag() {
        assert_eq!(
            StoreLocation::parse("store", "sqlite:a/b.db").unwrap(),
            StoreLocation::Sqlite("a/b.db".into())
        );
        let url = "postgresql://u@h:5/d";
        assert_eq!(StoreLocation::parse("to", url).unwrap(), StoreLocation::Postgres(url.into()));
        let err = StoreLocation::parse("to", "mysql://x").unwrap_err().to_string();
        assert_eq!(err, "to: must be sqlite:PATH or a postgres:// URL");
        let err = StoreLocation::parse("from", "sqlite:").unwrap_err().to_string();
        assert!(err.starts_with("from: "), "{err}");
    }

    /// A SQLite store with every kind of row, copied: the copy answers as the original does, a
    /// second copy into it is refused, and new changes continue the feed.
    #[test]
    fn a_sqlite_store_is_copied_whole_and_a_non_empty_target_is_refused() {
        use crate::model::{
            CachePurge, KeyFilter, NewKey, NewSigning, PurgeTarget, UsageCount, UsageQuery, UsageReport,
        };
        use crate::store::Store;
        use crate::store::suite::{ctx, new_key};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let source = SqliteStore::open(&path).unwrap();
        source.create_key(&ctx(), new_key("key_1", "alice", 1)).unwrap();
        source.create_key(&ctx(), new_key("key_2", "bob", 2)).unwrap();
        let sealed = crate::master::Sealed { version: 1, nonce: [3; 12], ciphertext: vec![1, 2] };
        source
            .create_key(
                &ctx(),
                NewKey { signing: Some(NewSigning::Hmac(sealed)), ..new_key("key_3", "bob", 3) },
            )
            .unwrap();
        source.revoke_key(&ctx(), "key_2", "test").unwrap();
        source
            .purge_cache(
                &ctx(),
                &CachePurge { target: PurgeTarget::Prefix("/a".into()), host: "h".into(), soft: true },
            )
            .unwrap();
        let counts = vec![UsageCount {
            key_id: "key_1".into(),
            minute: 1_800_000_000,
            outcome: "allowed".into(),
            count: 4,
            ..Default::default()
        }];
        source
            .report_usage(&UsageReport { gateway: "gw".into(), batch: 1, feed_seq: 3, counts }, 1_800_000_000)
            .unwrap();
        // Webhooks: an endpoint in a rotation grace with a delivered message, a disabled one with
        // a failed message, and a quota.exhausted day.
        use crate::webhooks::{Attempt, EventType, NewWebhook, Outcome};
        let hook = |id: &str, byte: u8| NewWebhook {
            id: id.into(),
            url: format!("https://hooks.example.com/{id}"),
            events: vec![EventType::KeyCreated, EventType::QuotaExhausted],
            sealed: crate::master::Sealed { version: 1, nonce: [byte; 12], ciphertext: vec![byte] },
        };
        source.create_webhook(&ctx(), hook("wh_a", 1)).unwrap();
        source.create_webhook(&ctx(), hook("wh_b", 2)).unwrap();
        let next = crate::master::Sealed { version: 1, nonce: [5; 12], ciphertext: vec![5] };
        source.rotate_webhook_secret(&ctx(), "wh_a", next, 1_800_000_000).unwrap();
        source.create_key(&ctx(), new_key("key_5", "dave", 5)).unwrap();
        let refused = UsageCount {
            consumer_id: "dave".into(),
            rule: "per-consumer".into(),
            minute: 1_800_000_000,
            outcome: "limited".into(),
            count: 2,
            ..Default::default()
        };
        source
            .report_usage(
                &UsageReport { gateway: "gw".into(), batch: 2, feed_seq: 3, counts: vec![refused] },
                1_800_000_000,
            )
            .unwrap();
        for (n, message) in source.claim_webhook_messages(1_000, 1_030, 10).unwrap().iter().enumerate() {
            let (status, outcome) = if message.webhook_id == "wh_a" {
                (200, Outcome::Delivered)
            } else {
                (410, Outcome::Disable)
            };
            let attempt = Attempt {
                message_id: message.message_id.clone(),
                webhook_id: message.webhook_id.clone(),
                event_type: message.event_type.clone(),
                attempt: 1,
                at: 1_000 + i64::try_from(n).unwrap(),
                status,
                latency_ms: 3,
                error: String::new(),
                outcome: outcome.as_str().into(),
                next_attempt_at: 0,
            };
            source.finish_webhook_attempt(&attempt, outcome, 60).unwrap();
        }
        // Lifecycle: a consumer's policy, a recorded notice, an automatic rotation's sealed secret
        // and a use of the previous secret.
        use crate::lifecycle::{DeadlineAction, PolicyMode, PolicyTarget, RotationPolicy, Transition};
        let policy = RotationPolicy {
            max_age: 90 * 86_400,
            notify_before: vec![86_400],
            grace: 3_600,
            mode: PolicyMode::Auto,
            revoke_unused_previous_after: 0,
        };
        source.set_rotation_policy(&ctx(), &PolicyTarget::Consumer("alice".into()), &policy).unwrap();
        let notice = Transition::Expiring {
            key_id: "key_1".into(),
            consumer_id: "alice".into(),
            deadline: 5_000,
            lead: 86_400,
            action: DeadlineAction::Rotate,
            overtaken: Vec::new(),
        };
        assert!(source.apply_transition(&ctx(), &notice).unwrap());
        let pending = crate::master::Sealed { version: 1, nonce: [7; 12], ciphertext: vec![7, 7] };
        let rotation = crate::model::Rotation {
            key_id: "key_1".into(),
            secret: crate::model::StoredSecret { hash: [9; 32], display_prefix: "tgk_auto".into() },
            grace_end: 5_000,
            pending: Some(pending.clone()),
            expect_birth: None,
        };
        source.rotate_key(&ctx(), rotation).unwrap();
        source.record_previous_use(&[("key_1".into(), 1_500)]).unwrap();
        drop(source);

        let url = tollgate_testkit::postgres::Cluster::shared().create_database("migrate").unwrap();
        let copied = sqlite_to_postgres(&path, &url).unwrap();
        let by_table: std::collections::BTreeMap<&str, u64> = copied.into_iter().collect();
        assert_eq!(by_table["consumers"], 3);
        assert_eq!(by_table["keys"], 4);
        assert_eq!(by_table["changes"], 8);
        assert_eq!(
            (by_table["rotation_policies"], by_table["lifecycle_notices"], by_table["pending_secrets"]),
            (1, 1, 1)
        );
        assert_eq!(by_table["usage"], 1);
        assert_eq!(by_table["webhooks"], 2);
        // key_5's key.created and dave's quota.exhausted, to each endpoint; one attempt each of
        // the key.created.
        assert_eq!((by_table["webhook_messages"], by_table["webhook_attempts"]), (4, 2));
        assert_eq!(by_table["quota_exhausted"], 1);
        assert_eq!(by_table.len(), TABLES.len());

        let source = SqliteStore::open(&path).unwrap();
        let target = PostgresStore::open(&url).unwrap();
        let all = KeyFilter::default();
        assert_eq!(target.list_keys(&all, None, 100).unwrap(), source.list_keys(&all, None, 100).unwrap());
        assert_eq!(target.list_consumers(None, 100).unwrap(), source.list_consumers(None, 100).unwrap());
        assert_eq!(target.list_changes(0, 100).unwrap(), source.list_changes(0, 100).unwrap());
        assert_eq!(target.list_audit(0, 100).unwrap(), source.list_audit(0, 100).unwrap());
        assert_eq!(target.list_sealed().unwrap(), source.list_sealed().unwrap());
        let window = UsageQuery { since: 0, until: i64::MAX, ..Default::default() };
        assert_eq!(target.usage(&window).unwrap(), source.usage(&window).unwrap());
        assert_eq!(target.lookup_secret(&[1; 32]).unwrap().found.unwrap().key.id, "key_1");
        assert_eq!(
            target.list_rotation_policies(None).unwrap(),
            source.list_rotation_policies(None).unwrap()
        );
        let (from, to) = (
            source.lifecycle_candidates(2_000, 0, 10).unwrap(),
            target.lifecycle_candidates(2_000, 0, 10).unwrap(),
        );
        assert_eq!(from.len(), to.len());
        for (a, b) in from.iter().zip(&to) {
            assert_eq!(
                (&a.key, &a.policy, a.previous, &a.notices),
                (&b.key, &b.policy, b.previous, &b.notices)
            );
        }
        assert_eq!(to[0].previous.map(|p| p.last_used_at), Some(1_500));
        assert_eq!(target.take_pending_secret(&ctx(), "key_1").unwrap(), Some(pending));
        assert_eq!(target.list_webhooks().unwrap(), source.list_webhooks().unwrap());
        assert_eq!(target.list_webhook_secrets().unwrap(), source.list_webhook_secrets().unwrap());
        assert_eq!(target.list_webhook_secrets().unwrap().len(), 3, "wh_a's two secrets and wh_b's");
        assert_eq!(
            target.list_webhook_attempts(None, 100).unwrap(),
            source.list_webhook_attempts(None, 100).unwrap()
        );
        assert!(!target.list_webhooks().unwrap()[1].enabled);
        // Messages: what is pending in the source is pending in the copy, with its id.
        let pending = |s: &dyn Store| {
            let mut ids: Vec<String> = s
                .claim_webhook_messages(i64::MAX / 2, 0, 100)
                .unwrap()
                .into_iter()
                .map(|m| m.message_id)
                .collect();
            ids.sort();
            ids
        };
        let source_pending = pending(&source);
        assert_eq!(pending(&target), source_pending);
        // A replay reaches the copied delivered messages of the enabled endpoint, with their ids.
        assert_eq!(target.replay_webhook_messages(&ctx(), 1, Some("wh_a")).unwrap(), 2);

        // Positions continue after the copied ones.
        let audited = target.list_audit(0, 100).unwrap().last().unwrap().seq;
        let key = target.create_key(&ctx(), new_key("key_4", "carol", 4)).unwrap();
        assert!(key.position > source.get_key("key_5").unwrap().position);
        let (changes, head) = target.list_changes(8, 10).unwrap();
        assert_eq!((changes[0].seq, head), (9, 9));
        assert_eq!(target.list_audit(0, 100).unwrap().last().unwrap().seq, audited + 2);
        target.create_webhook(&ctx(), hook("wh_c", 3)).unwrap();
        let hooks = target.list_webhooks().unwrap();
        assert_eq!(hooks.last().unwrap().id, "wh_c", "after the copied endpoints");
        // New messages and attempts take new sequence numbers (a clash would fail the insert).
        for message in target.claim_webhook_messages(i64::MAX / 2, 0, 100).unwrap() {
            let attempt = Attempt {
                message_id: message.message_id.clone(),
                webhook_id: message.webhook_id.clone(),
                event_type: message.event_type.clone(),
                attempt: 1,
                at: 2_000,
                status: 200,
                latency_ms: 1,
                error: String::new(),
                outcome: "delivered".into(),
                next_attempt_at: 0,
            };
            target.finish_webhook_attempt(&attempt, Outcome::Delivered, 60).unwrap();
        }

        let err = sqlite_to_postgres(&path, &url).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        let err = sqlite_to_postgres(&dir.path().join("missing.db"), &url).unwrap_err();
        assert!(err.to_string().starts_with("from: no SQLite store at "), "{err}");
    }

    #[test]
    fn a_password_never_shows() {
        assert_eq!(redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        let shown = format!("{:?}", StoreLocation::Postgres("postgres://u:pw%40x@h/db".into()));
        assert!(!shown.contains("pw"), "{shown}");
    }
}
