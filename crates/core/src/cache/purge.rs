//! Purges: what drops stored responses (hard) or makes them stale (soft), in every worker of a
//! proxy and, through the key service's change feed, in every proxy.
//!
//! A purge is not carried out by walking stores (a proxy's shared tier cannot be walked, and a
//! worker learns of a purge only when it next looks). It is a record in a bounded log with the
//! time it was applied: a stored response whose request went out at or before that time and
//! that the purge matches is purged. A response fetched after the purge is not. When the log is
//! full, the oldest record is dropped and its time becomes the log's `floor`: every response
//! fetched at or before the floor counts as hard-purged, so dropping a record can only purge
//! more, never less.

use super::store::Object;

/// Most records a log keeps.
pub const MAX_RECORDS: usize = 128;
/// Longest tag, prefix or URL a purge may name.
pub const MAX_VALUE: usize = 1024;

/// What a purge matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every stored response.
    All,
    /// Responses whose origin named this tag (`Cache-Tag`, `Surrogate-Key`).
    Tag(String),
    /// Responses whose path (with its normalised query) starts with this, on `host` or any host.
    Prefix { host: Option<String>, prefix: String },
    /// The responses of one URL (path and normalised query), on `host` or any host, for every
    /// consumer and every variant.
    Url { host: Option<String>, url: String },
}

/// One purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purge {
    pub target: Target,
    /// Mark stale (answered within `stale-while-revalidate` while refreshed) instead of dropping.
    pub soft: bool,
    /// When it was applied (ms since the epoch): responses fetched at or before it are purged.
    pub at_ms: u64,
}

/// What the purges say about a stored response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Stale since this time (ms): a soft purge.
    StaleSince(u64),
    Gone,
}

/// The purges of a proxy, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Log {
    /// Bumped by every record added.
    pub seq: u64,
    /// Responses fetched at or before this time (ms) are purged: records dropped from a full log.
    pub floor_ms: u64,
    pub records: Vec<Purge>,
}

/// The URL fields of a primary key (`method\nauthority\npath\nquery[\nconsumer]`).
fn url_of(primary: &str) -> Option<(&str, &str, &str)> {
    let mut fields = primary.split('\n');
    let _method = fields.next()?;
    Some((fields.next()?, fields.next()?, fields.next()?))
}

fn host_matches(host: Option<&str>, authority: &str) -> bool {
    host.is_none_or(|h| h.eq_ignore_ascii_case(authority))
}

impl Target {
    /// Whether this target matches a response stored under `primary` with `tags`.
    pub fn matches(&self, primary: &str, tags: &[String]) -> bool {
        match self {
            Target::All => true,
            Target::Tag(tag) => tags.iter().any(|t| t == tag),
            Target::Prefix { host, prefix } => url_of(primary).is_some_and(|(authority, path, query)| {
                if !host_matches(host.as_deref(), authority) {
                    return false;
                }
                match prefix.split_once('?') {
                    // A prefix with a query matches the path exactly and the query's start.
                    Some((p, q)) => path == p && query.starts_with(q),
                    None => path.starts_with(prefix.as_str()),
                }
            }),
            Target::Url { host, url } => url_of(primary).is_some_and(|(authority, path, query)| {
                let (p, q) = url.split_once('?').unwrap_or((url, ""));
                host_matches(host.as_deref(), authority) && path == p && query == q
            }),
        }
    }
}

impl Log {
    /// What the log says about a response stored under `primary`, fetched at `fetched_ms`.
    pub fn verdict(&self, primary: &str, tags: &[String], fetched_ms: u64) -> Verdict {
        if fetched_ms <= self.floor_ms {
            return Verdict::Gone;
        }
        // Records are in the order applied, so their times only grow: those that can apply
        // to this response are the ones at or after its fetch.
        let from = self.records.partition_point(|r| r.at_ms < fetched_ms);
        let mut verdict = Verdict::Keep;
        for record in self.records.get(from..).unwrap_or_default() {
            if !record.target.matches(primary, tags) {
                continue;
            }
            if !record.soft {
                return Verdict::Gone;
            }
            if verdict == Verdict::Keep {
                verdict = Verdict::StaleSince(record.at_ms);
            }
        }
        verdict
    }

    /// The time of the newest record, or the floor.
    pub fn newest_ms(&self) -> u64 {
        self.records.last().map_or(self.floor_ms, |r| r.at_ms).max(self.floor_ms)
    }

    /// Adds a purge applied at `purge.at_ms` (never before the newest record: times only
    /// grow), dropping the oldest record into the floor when the log is full.
    pub fn push(&mut self, mut purge: Purge) {
        purge.at_ms = purge.at_ms.max(self.newest_ms());
        if purge.target == Target::All && !purge.soft {
            // Everything fetched until now is gone: no older record matters any more.
            self.floor_ms = purge.at_ms;
            self.records.clear();
        } else {
            self.records.push(purge);
            while self.records.len() > MAX_RECORDS {
                let dropped = self.records.remove(0);
                self.floor_ms = self.floor_ms.max(dropped.at_ms);
            }
        }
        self.seq += 1;
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.floor_ms.to_be_bytes());
        for r in &self.records {
            out.extend_from_slice(&r.at_ms.to_be_bytes());
            let (kind, host, value): (u8, Option<&str>, &str) = match &r.target {
                Target::All => (0, None, ""),
                Target::Tag(t) => (1, None, t),
                Target::Prefix { host, prefix } => (2, host.as_deref(), prefix),
                Target::Url { host, url } => (3, host.as_deref(), url),
            };
            out.push(kind | if r.soft { 0x80 } else { 0 });
            put_str(&mut out, host.unwrap_or(""));
            put_str(&mut out, value);
        }
        out
    }

    /// `None` for bytes that are not a log (the reader then treats everything as purged).
    pub fn decode(bytes: &[u8]) -> Option<Log> {
        let mut r = Reader(bytes);
        let seq = r.u64()?;
        let floor_ms = r.u64()?;
        let mut records = Vec::new();
        while !r.0.is_empty() {
            let at_ms = r.u64()?;
            let kind = r.u8()?;
            let host = r.str()?;
            let host = (!host.is_empty()).then_some(host);
            let value = r.str()?;
            let target = match kind & 0x7f {
                0 => Target::All,
                1 => Target::Tag(value),
                2 => Target::Prefix { host, prefix: value },
                3 => Target::Url { host, url: value },
                _ => return None,
            };
            records.push(Purge { target, soft: kind & 0x80 != 0, at_ms });
        }
        Some(Log { seq, floor_ms, records })
    }
}

/// The tags a response names: `Cache-Tag` (comma-separated) and `Surrogate-Key`
/// (space-separated), at most 64, each at most [`MAX_VALUE`] bytes.
pub fn tags_of(headers: &[(String, String)]) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    for (name, value) in headers {
        let parts: Vec<&str> = match name.as_str() {
            "cache-tag" => value.split(',').collect(),
            "surrogate-key" => value.split(' ').collect(),
            _ => continue,
        };
        for part in parts {
            let tag = part.trim();
            if !tag.is_empty() && tag.len() <= MAX_VALUE && tags.len() < 64 && !tags.iter().any(|t| t == tag)
            {
                tags.push(tag.to_owned());
            }
        }
    }
    tags
}

/// The verdict for a stored object.
pub fn verdict_of(log: &Log, primary: &str, object: &Object) -> Verdict {
    log.verdict(primary, &object.tags, object.request_ms)
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(b);
}

/// Reads what `put_*` wrote; every read checks its bounds.
pub(crate) struct Reader<'a>(pub &'a [u8]);

impl Reader<'_> {
    pub fn take(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    pub fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    pub fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = usize::try_from(self.u32()?).ok()?;
        Some(self.take(n)?.to_vec())
    }
    pub fn str(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?).ok()
    }
}
