//! Purges from the key service: the root context of one worker at a time (a lease in shared
//! data) polls the change feed and adds each cache purge to the proxy's purge log, which every
//! worker applies at its next request. A purge issued once reaches every proxy that follows
//! the feed within about one poll interval.
//!
//! A proxy that starts (or whose key service's feed went back, a store restored from a backup)
//! begins at the feed's head: purges issued before it are about responses it never stored.

use std::cell::RefCell;

use prost::Message;
use tollgate_core::cache::key;
use tollgate_core::cache::purge::{Purge, Target};
use tollgate_core::route;
use tollgate_host::shared::{Cas, cas_apply};
use tollgate_host::{Host, LogLevel, grpc_status};
use tollgate_proto::v1;

use crate::worker::{Stat, Worker};

/// Changes asked for per poll.
const PAGE: u32 = 500;
/// The poller's record: started (1 byte), cursor, busy until (ms).
const STATE: &str = "tollgate.cache.feed";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct State {
    started: bool,
    cursor: u64,
    busy_until_ms: u64,
}

impl State {
    fn encode(self) -> Vec<u8> {
        let mut out = vec![u8::from(self.started)];
        out.extend_from_slice(&self.cursor.to_be_bytes());
        out.extend_from_slice(&self.busy_until_ms.to_be_bytes());
        out
    }

    fn decode(bytes: Option<&[u8]>) -> State {
        let Some(b) = bytes else {
            return State::default();
        };
        let num =
            |r: std::ops::Range<usize>| b.get(r).and_then(|s| s.try_into().ok()).map(u64::from_be_bytes);
        match (b.first(), num(1..9), num(9..17)) {
            (Some(s), Some(cursor), Some(busy_until_ms)) => State { started: *s == 1, cursor, busy_until_ms },
            _ => State::default(),
        }
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn write_state<H: Host + ?Sized>(host: &H, next: impl Fn(State) -> State) {
    let _ = cas_apply(host, STATE, tollgate_host::shared::CAS_RETRIES, None, |current| {
        Cas::Write(next(State::decode(current)).encode(), ())
    });
}

/// Starts a poll when it is this worker's turn (from the root context's tick).
pub fn poll<H: Host + ?Sized>(host: &H, worker: &RefCell<Worker>) {
    let mut w = worker.borrow_mut();
    let Some(target) = w.config.key_service.clone() else {
        return;
    };
    if w.feed_call.is_some() {
        return;
    }
    let now = host.now_ms();
    let lease = now.saturating_add(millis(target.timeout) + 1_000);
    let taken = cas_apply(host, STATE, 2, Some(&State::default().encode()), |current| {
        let state = State::decode(current);
        if state.busy_until_ms > now {
            Cas::Keep(None)
        } else {
            Cas::Write(State { busy_until_ms: lease, ..state }.encode(), Some(state))
        }
    });
    let Some(Some(state)) = taken else {
        return;
    };
    // The first poll only learns the head.
    let request = if state.started {
        v1::ListChangesRequest { after_seq: state.cursor, limit: PAGE }
    } else {
        v1::ListChangesRequest { after_seq: 0, limit: 1 }
    };
    let auth = target.bearer();
    let metadata = [("authorization", auth.as_bytes())];
    let call = host.grpc_call(
        &target.cluster,
        tollgate_proto::KEY_SERVICE,
        "ListChanges",
        &metadata,
        &request.encode_to_vec(),
        target.timeout,
    );
    match call {
        Ok(token) => w.feed_call = Some(token),
        Err(_) => {
            let retry = now.saturating_add(millis(target.poll_interval));
            write_state(host, |s| State { busy_until_ms: retry, ..s });
        }
    }
}

/// The purges a page of changes carries, as the cache's log records them (URLs normalised as
/// the key normalises them).
fn purges(changes: &[v1::Change], query: &key::QueryRule, at_ms: u64) -> Vec<Purge> {
    let mut out = Vec::new();
    for change in changes {
        if change.kind != v1::ChangeKind::CachePurged as i32 {
            continue;
        }
        let Some(p) = &change.purge else {
            continue;
        };
        let host = (!p.host.is_empty()).then(|| p.host.to_ascii_lowercase());
        let target = if p.all {
            Target::All
        } else if !p.tag.is_empty() {
            Target::Tag(p.tag.clone())
        } else if !p.prefix.is_empty() {
            let (path, query) = route::split_path(&p.prefix);
            let path = route::normalize_path(path).map_or_else(|_| path.to_owned(), |p| p.into_owned());
            let prefix = if p.prefix.contains('?') { format!("{path}?{query}") } else { path };
            Target::Prefix { host, prefix }
        } else if !p.url.is_empty() {
            match key::url_target(host.as_deref().unwrap_or("-"), &p.url, query) {
                Ok(Target::Url { url, .. }) => Target::Url { host, url },
                _ => continue,
            }
        } else {
            continue;
        };
        out.push(Purge { target, soft: p.soft, at_ms });
    }
    out
}

/// Applies the answer to this worker's poll.
pub fn done<H: Host + ?Sized>(host: &H, worker: &RefCell<Worker>, token: u32, status: u32, size: usize) {
    let mut w = worker.borrow_mut();
    if w.feed_call != Some(token) {
        return;
    }
    w.feed_call = None;
    let Some(target) = w.config.key_service.clone() else {
        return;
    };
    let now = host.now_ms();
    let interval = millis(target.poll_interval);
    let body = host.grpc_response_body(size).unwrap_or_default();
    let reply =
        (status == grpc_status::OK).then(|| v1::ListChangesResponse::decode(body.as_slice()).ok()).flatten();
    let Some(reply) = reply else {
        w.counters.inc(host, Stat::FeedFailed);
        if !w.feed_failing {
            w.feed_failing = true;
            let detail = host.grpc_status_message().unwrap_or_default();
            host.log(
                LogLevel::Warn,
                &format!("cache: purge feed unavailable (gRPC status {status}): {detail}"),
            );
        }
        write_state(host, |s| State { busy_until_ms: now.saturating_add(interval), ..s });
        return;
    };
    if w.feed_failing {
        w.feed_failing = false;
        host.log(LogLevel::Info, "cache: purge feed available again");
    }
    let state = State::decode(host.shared_get(STATE).0.as_deref());
    let head = reply.head_seq;
    if !state.started || head < state.cursor {
        if state.started {
            host.log(
                LogLevel::Warn,
                "cache: the key service's change feed went back; following it from its head",
            );
        }
        write_state(host, |s| State {
            started: true,
            cursor: head,
            busy_until_ms: now.saturating_add(interval / 2).max(s.busy_until_ms.min(now)),
        });
        return;
    }
    let changes: Vec<v1::Change> = reply.changes.into_iter().filter(|c| c.seq > state.cursor).collect();
    let found = purges(&changes, &w.config.query, now);
    if !w.add_purges(host, &found) {
        // Not recorded: asked for again at the next poll.
        host.log(LogLevel::Warn, "cache: could not record purges; retrying");
        write_state(host, |s| State { busy_until_ms: now.saturating_add(interval), ..s });
        return;
    }
    let cursor = changes.last().map_or(state.cursor, |c| c.seq).max(state.cursor);
    let full_page = changes.len() >= PAGE as usize;
    // A full page: the rest at the next tick. Else the next poll in about one interval.
    let busy = if full_page { now } else { now.saturating_add(interval - interval / 4) };
    write_state(host, |s| State { started: true, cursor: cursor.max(s.cursor), busy_until_ms: busy });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_round_trips_and_garbage_is_a_fresh_start() {
        let s = State { started: true, cursor: 42, busy_until_ms: 7 };
        assert_eq!(State::decode(Some(&s.encode())), s);
        assert_eq!(State::decode(Some(b"xx")), State::default());
        assert_eq!(State::decode(None), State::default());
    }

    #[test]
    fn purges_are_read_from_cache_purge_changes_only_and_urls_normalised() {
        let purge = |p: v1::CachePurge| v1::Change {
            seq: 1,
            kind: v1::ChangeKind::CachePurged as i32,
            purge: Some(p),
            ..Default::default()
        };
        let changes = vec![
            v1::Change {
                seq: 1,
                kind: v1::ChangeKind::KeyRevoked as i32,
                key_id: "k".into(),
                ..Default::default()
            },
            purge(v1::CachePurge { tag: "t".into(), soft: true, ..Default::default() }),
            purge(v1::CachePurge {
                url: "/a/./b?z=1&a=2".into(),
                host: "API.example".into(),
                ..Default::default()
            }),
            purge(v1::CachePurge { prefix: "/x/../p/".into(), ..Default::default() }),
            purge(v1::CachePurge { all: true, ..Default::default() }),
            purge(v1::CachePurge::default()),
        ];
        let got = purges(&changes, &key::QueryRule::default(), 9);
        let targets: Vec<(Target, bool)> = got.into_iter().map(|p| (p.target, p.soft)).collect();
        assert_eq!(
            targets,
            vec![
                (Target::Tag("t".into()), true),
                (Target::Url { host: Some("api.example".into()), url: "/a/b?a=2&z=1".into() }, false),
                (Target::Prefix { host: None, prefix: "/p/".into() }, false),
                (Target::All, false),
            ]
        );
    }
}
