//! How keys and consumers are shown: JSON views with stable snake_case names, and plain tables.
//!
//! JSON rules: strings are always strings (possibly empty), times are RFC 3339 UTC or `null` when
//! unset, `rate_limit` is `null` when the key has none, `status` is lower-case.

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::Serialize;
use tollgate_core::rate_limit::bucket::Period;
use tollgate_proto::v1::{self, Consumer, Key, KeyStatus, RateLimitPolicy};

use crate::parse::rfc3339;

/// JSON view of a key.
#[derive(Debug, Serialize)]
pub struct KeyView {
    pub id: String,
    pub consumer_id: String,
    pub name: String,
    pub display_prefix: String,
    pub scopes: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub rate_limit: Option<RateLimitView>,
    pub status: &'static str,
    pub expires_at: Option<String>,
    pub created_at: Option<String>,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
    pub previous_display_prefix: String,
    pub previous_expires_at: Option<String>,
    pub rotated_at: Option<String>,
}

/// JSON view of a key together with its secret (create and rotate).
#[derive(Debug, Serialize)]
pub struct IssuedKeyView {
    #[serde(flatten)]
    pub key: KeyView,
    /// The whole secret; shown once.
    #[serde(rename = "key")]
    pub secret: String,
}

#[derive(Debug, Serialize)]
pub struct RateLimitView {
    pub tier: String,
    pub limits: Vec<RateView>,
}

#[derive(Debug, Serialize)]
pub struct RateView {
    pub rate: u64,
    pub period: &'static str,
    pub burst: u64,
}

/// JSON view of a consumer.
#[derive(Debug, Serialize)]
pub struct ConsumerView {
    pub id: String,
    pub name: String,
    pub metadata: BTreeMap<String, String>,
    pub created_at: Option<String>,
}

impl From<&Key> for KeyView {
    fn from(key: &Key) -> Self {
        KeyView {
            id: key.id.clone(),
            consumer_id: key.consumer_id.clone(),
            name: key.name.clone(),
            display_prefix: key.display_prefix.clone(),
            scopes: key.scopes.clone(),
            metadata: key.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            rate_limit: key.rate_limit.as_ref().map(RateLimitView::from),
            status: status_name(key.status()),
            expires_at: rfc3339(key.expires_at),
            created_at: rfc3339(key.created_at),
            last_used_at: rfc3339(key.last_used_at),
            revoked_at: rfc3339(key.revoked_at),
            previous_display_prefix: key.previous_display_prefix.clone(),
            previous_expires_at: rfc3339(key.previous_expires_at),
            rotated_at: rfc3339(key.rotated_at),
        }
    }
}

impl From<&RateLimitPolicy> for RateLimitView {
    fn from(policy: &RateLimitPolicy) -> Self {
        RateLimitView {
            tier: policy.tier.clone(),
            limits: policy
                .limits
                .iter()
                .map(|l| RateView { rate: l.rate, period: period_name(l.period()), burst: l.burst })
                .collect(),
        }
    }
}

impl From<&Consumer> for ConsumerView {
    fn from(c: &Consumer) -> Self {
        ConsumerView {
            id: c.id.clone(),
            name: c.name.clone(),
            metadata: c.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            created_at: rfc3339(c.created_at),
        }
    }
}

pub fn status_name(status: KeyStatus) -> &'static str {
    match status {
        KeyStatus::Active => "active",
        KeyStatus::Revoked => "revoked",
        KeyStatus::Expired => "expired",
        KeyStatus::Unspecified => "unspecified",
    }
}

/// A limit's period in JSON: `second`, `minute`, `hour`, `day`, or `unspecified` when the
/// answer names none.
pub fn period_name(period: v1::Period) -> &'static str {
    match Period::try_from(period) {
        Ok(Period::Second) => "second",
        Ok(Period::Minute) => "minute",
        Ok(Period::Hour) => "hour",
        Ok(Period::Day) => "day",
        Err(_) => "unspecified",
    }
}

/// A limit's period in tables, as `--rate` takes it: `s`, `min`, `h`, `day`, or `?`.
fn period_short(period: v1::Period) -> &'static str {
    match Period::try_from(period) {
        Ok(Period::Second) => "s",
        Ok(Period::Minute) => "min",
        Ok(Period::Hour) => "h",
        Ok(Period::Day) => "day",
        Err(_) => "?",
    }
}

/// Writes `value` as pretty JSON followed by a newline.
pub fn write_json<T: Serialize>(out: &mut dyn Write, value: &T) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(io::Error::other)?;
    writeln!(out)
}

/// A time for tables: RFC 3339 UTC, or `-` when unset.
pub fn time_cell(secs: i64) -> String {
    rfc3339(secs).unwrap_or_else(|| "-".to_owned())
}

fn text_cell(text: &str) -> String {
    if text.is_empty() { "-".to_owned() } else { text.to_owned() }
}

fn list_cell(items: &[String]) -> String {
    if items.is_empty() { "-".to_owned() } else { items.join(",") }
}

fn map_cell<'a>(map: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let sorted: BTreeMap<_, _> = map.into_iter().collect();
    if sorted.is_empty() {
        return "-".to_owned();
    }
    sorted.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// A rate-limit policy in one line: `gold: 100/s burst 200, 1000/min`, or `-`.
pub fn rate_limit_cell(policy: Option<&RateLimitPolicy>) -> String {
    let Some(policy) = policy else {
        return "-".to_owned();
    };
    let limits: Vec<String> = policy
        .limits
        .iter()
        .map(|l| {
            let mut s = format!("{}/{}", l.rate, period_short(l.period()));
            if l.burst > 0 {
                s.push_str(&format!(" burst {}", l.burst));
            }
            s
        })
        .collect();
    match (policy.tier.is_empty(), limits.is_empty()) {
        (true, true) => "-".to_owned(),
        (false, true) => policy.tier.clone(),
        (true, false) => limits.join(", "),
        (false, false) => format!("{}: {}", policy.tier, limits.join(", ")),
    }
}

/// Writes rows as left-aligned columns separated by two spaces; no trailing spaces.
pub fn write_table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                let pad = widths.get(i).copied().unwrap_or(0);
                line.push_str(&format!("{cell:<pad$}  "));
            } else {
                line.push_str(cell);
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// Writes `label: value` lines with the values aligned.
pub fn write_fields(out: &mut dyn Write, fields: &[(&str, String)]) -> io::Result<()> {
    let width = fields.iter().map(|(l, _)| l.len() + 1).max().unwrap_or(0);
    for (label, value) in fields {
        let label = format!("{label}:");
        writeln!(out, "{label:<width$}  {value}")?;
    }
    Ok(())
}

/// The table of keys (`keys list`).
pub fn write_key_table(out: &mut dyn Write, keys: &[Key]) -> io::Result<()> {
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.id.clone(),
                k.consumer_id.clone(),
                text_cell(&k.name),
                text_cell(&k.display_prefix),
                status_name(k.status()).to_owned(),
                list_cell(&k.scopes),
                time_cell(k.expires_at),
                time_cell(k.last_used_at),
            ]
        })
        .collect();
    write_table(out, &["ID", "CONSUMER", "NAME", "PREFIX", "STATUS", "SCOPES", "EXPIRES", "LAST USED"], &rows)
}

/// All fields of one key, one per line (`keys get`, `update`, `revoke`).
pub fn write_key_detail(out: &mut dyn Write, key: &Key) -> io::Result<()> {
    let mut fields = vec![
        ("id", key.id.clone()),
        ("consumer", key.consumer_id.clone()),
        ("name", text_cell(&key.name)),
        ("prefix", text_cell(&key.display_prefix)),
        ("status", status_name(key.status()).to_owned()),
        ("scopes", list_cell(&key.scopes)),
        ("metadata", map_cell(&key.metadata)),
        ("rate limit", rate_limit_cell(key.rate_limit.as_ref())),
        ("expires", time_cell(key.expires_at)),
        ("created", time_cell(key.created_at)),
        ("last used", time_cell(key.last_used_at)),
        ("revoked", time_cell(key.revoked_at)),
    ];
    if key.rotated_at != 0 || !key.previous_display_prefix.is_empty() {
        fields.push(("rotated", time_cell(key.rotated_at)));
        fields.push(("previous prefix", text_cell(&key.previous_display_prefix)));
        fields.push(("previous ends", time_cell(key.previous_expires_at)));
    }
    write_fields(out, &fields)
}

/// A newly issued secret with the warning that it is shown only once.
pub fn write_secret(out: &mut dyn Write, secret: &str) -> io::Result<()> {
    writeln!(out)?;
    writeln!(out, "    {secret}")?;
    writeln!(out)?;
    writeln!(out, "This key is shown only once. Store it now: the key service keeps only a hash of it.")
}

/// The table of consumers (`consumers list`).
pub fn write_consumer_table(out: &mut dyn Write, consumers: &[Consumer]) -> io::Result<()> {
    let rows: Vec<Vec<String>> = consumers
        .iter()
        .map(|c| vec![c.id.clone(), text_cell(&c.name), time_cell(c.created_at), map_cell(&c.metadata)])
        .collect();
    write_table(out, &["ID", "NAME", "CREATED", "METADATA"], &rows)
}

/// All fields of one consumer.
pub fn write_consumer_detail(out: &mut dyn Write, c: &Consumer) -> io::Result<()> {
    write_fields(
        out,
        &[
            ("id", c.id.clone()),
            ("name", text_cell(&c.name)),
            ("metadata", map_cell(&c.metadata)),
            ("created", time_cell(c.created_at)),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_proto::v1::{Period, RateLimit};

    fn sample_key() -> Key {
        Key {
            id: "key_abc".into(),
            consumer_id: "alice".into(),
            name: "ci".into(),
            display_prefix: "tgk_3kT9".into(),
            scopes: vec!["read".into(), "write".into()],
            metadata: [("team".to_owned(), "payments".to_owned())].into_iter().collect(),
            rate_limit: Some(RateLimitPolicy {
                tier: "gold".into(),
                limits: vec![
                    RateLimit { rate: 100, period: Period::Second as i32, burst: 200 },
                    RateLimit { rate: 1000, period: Period::Minute as i32, burst: 0 },
                ],
            }),
            expires_at: 1_893_456_000,
            created_at: 1_700_000_000,
            last_used_at: 0,
            status: KeyStatus::Active as i32,
            revoked_at: 0,
            previous_display_prefix: String::new(),
            previous_expires_at: 0,
            rotated_at: 0,
            signing_algorithm: 0,
        }
    }

    #[test]
    fn key_json_has_stable_snake_case_fields() {
        let json = serde_json::to_value(KeyView::from(&sample_key())).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "key_abc",
                "consumer_id": "alice",
                "name": "ci",
                "display_prefix": "tgk_3kT9",
                "scopes": ["read", "write"],
                "metadata": {"team": "payments"},
                "rate_limit": {"tier": "gold", "limits": [
                    {"rate": 100, "period": "second", "burst": 200},
                    {"rate": 1000, "period": "minute", "burst": 0}
                ]},
                "status": "active",
                "expires_at": "2030-01-01T00:00:00Z",
                "created_at": "2023-11-14T22:13:20Z",
                "last_used_at": null,
                "revoked_at": null,
                "previous_display_prefix": "",
                "previous_expires_at": null,
                "rotated_at": null
            })
        );
    }

    #[test]
    fn issued_key_json_adds_the_secret_as_key() {
        let view = IssuedKeyView { key: KeyView::from(&sample_key()), secret: "tgk_secret".into() };
        let json = serde_json::to_value(view).unwrap();
        assert_eq!(json["id"], "key_abc");
        assert_eq!(json["key"], "tgk_secret");
        assert_eq!(json["consumer_id"], "alice");
    }

    #[test]
    fn key_without_rate_limit_has_null_rate_limit_and_revoked_status() {
        let mut key = sample_key();
        key.rate_limit = None;
        key.status = KeyStatus::Revoked as i32;
        key.revoked_at = 1_800_000_000;
        let json = serde_json::to_value(KeyView::from(&key)).unwrap();
        assert_eq!(json["rate_limit"], serde_json::Value::Null);
        assert_eq!(json["status"], "revoked");
        assert_eq!(json["revoked_at"], "2027-01-15T08:00:00Z");
    }

    #[test]
    fn key_table_aligns_columns_and_dashes_unset_values() {
        let mut other = sample_key();
        other.id = "key_longer_id".into();
        other.name = String::new();
        other.scopes.clear();
        other.expires_at = 0;
        let mut out = Vec::new();
        write_key_table(&mut out, &[sample_key(), other]).unwrap();
        let text = String::from_utf8(out).unwrap();
        let expected = "\
ID             CONSUMER  NAME  PREFIX    STATUS  SCOPES      EXPIRES               LAST USED
key_abc        alice     ci    tgk_3kT9  active  read,write  2030-01-01T00:00:00Z  -
key_longer_id  alice     -     tgk_3kT9  active  -           -                     -
";
        assert_eq!(text, expected);
    }

    #[test]
    fn key_detail_lists_every_field() {
        let mut out = Vec::new();
        write_key_detail(&mut out, &sample_key()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("id:          key_abc\n"), "{text}");
        assert!(text.contains("rate limit:  gold: 100/s burst 200, 1000/min\n"), "{text}");
        assert!(text.contains("metadata:    team=payments\n"), "{text}");
        assert!(text.contains("last used:   -\n"), "{text}");
        assert!(!text.contains("rotated"), "{text}");
    }

    #[test]
    fn rate_limit_cell_variants() {
        assert_eq!(rate_limit_cell(None), "-");
        let tier_only = RateLimitPolicy { tier: "free".into(), limits: vec![] };
        assert_eq!(rate_limit_cell(Some(&tier_only)), "free");
    }

    #[test]
    fn consumer_json_and_table() {
        let c = Consumer {
            id: "c_1".into(),
            name: "alice".into(),
            metadata: Default::default(),
            created_at: 1_700_000_000,
        };
        let json = serde_json::to_value(ConsumerView::from(&c)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": "c_1", "name": "alice", "metadata": {}, "created_at": "2023-11-14T22:13:20Z"})
        );
        let mut out = Vec::new();
        write_consumer_table(&mut out, &[c]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ID   NAME   CREATED               METADATA\nc_1  alice  2023-11-14T22:13:20Z  -\n"
        );
    }
}
