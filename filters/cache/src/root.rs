//! Configure and tick, over the generic root context: background refreshes of responses served
//! stale (calls a request context made would be cancelled when it ends), requests that waited
//! on a miss longer than `lock_timeout`, and the answers of the refresh calls.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use tollgate_core::cache::config::Config;
use tollgate_core::cache::policy;
use tollgate_core::cache::store::Object;
use tollgate_core::cache::{freshened_headers, stored_headers};
use tollgate_host::{Filter, Host, LogLevel};

use tollgate_core::cache::policy::Usable;

use crate::http::{CacheHttp, settle_waiter};
use crate::worker::{Found, REFRESH_RETRY_MS, Refresh, Stat, Worker};

/// The cache filter.
pub struct Cache;

/// How often the root context looks for refreshes to make and waits that are over.
const TICK: Duration = Duration::from_millis(100);

impl Filter for Cache {
    type Worker = RefCell<Worker>;
    type Http<H: Host + 'static> = CacheHttp<H>;

    fn configure<H: Host>(host: &H, config: &[u8]) -> Result<Self::Worker, String> {
        let config = Config::from_json(config).map_err(|e| e.to_string())?;
        host.log(
            LogLevel::Info,
            &format!(
                "cache: {} bytes per worker, objects up to {} bytes",
                config.max_memory_bytes, config.max_object_bytes
            ),
        );
        Ok(RefCell::new(Worker::new(host, config)))
    }

    fn tick_period(_worker: &Self::Worker) -> Option<Duration> {
        Some(TICK)
    }

    fn tick<H: Host>(host: &H, root_id: u32, worker: &Self::Worker) {
        worker.borrow_mut().sync_purges(host);
        expire_waiters(host, worker);
        answer_remote_waiters(host, worker);
        host.set_effective_context(root_id);
        start_refreshes(host, worker);
        crate::feed::poll(host, worker);
    }

    fn http_response<H: Host>(host: &H, _root_id: u32, worker: &Self::Worker, token: u32, body_size: usize) {
        refresh_done(host, worker, token, body_size);
    }

    fn grpc_response<H: Host>(
        host: &H,
        _root_id: u32,
        worker: &Self::Worker,
        token: u32,
        status: u32,
        size: usize,
    ) {
        crate::feed::done(host, worker, token, status, size);
    }

    fn http_context<H: Host + 'static>(
        host: Rc<H>,
        worker: Rc<Self::Worker>,
        context_id: u32,
    ) -> CacheHttp<H> {
        CacheHttp::new(host, worker, context_id)
    }
}

/// Requests that waited on a miss longer than `lock_timeout` go upstream themselves.
fn expire_waiters<H: Host>(host: &H, worker: &RefCell<Worker>) {
    let now = host.now_ms();
    let expired: Vec<u32> = {
        let mut w = worker.borrow_mut();
        let timeout = u64::try_from(w.config.lock_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut expired = Vec::new();
        let inner = &mut *w;
        let remote = inner.remote_waits.values_mut();
        for waiters in inner.flights.values_mut().map(|f| &mut f.waiters).chain(remote) {
            waiters.retain(|waiter| {
                let over = now.saturating_sub(waiter.since_ms) >= timeout;
                if over {
                    expired.push(waiter.context_id);
                }
                !over
            });
        }
        w.remote_waits.retain(|_, waiters| !waiters.is_empty());
        w.counters.add(host, Stat::CoalesceTimeout, expired.len() as u64);
        expired
    };
    for context_id in expired {
        if host.set_effective_context(context_id) {
            host.resume_request();
        }
    }
}

/// Requests waiting on another worker's miss: answered from the shared tier once the answer is
/// there, sent upstream when that worker let go of the miss without storing it.
fn answer_remote_waiters<H: Host>(host: &H, worker: &RefCell<Worker>) {
    let primaries: Vec<String> = worker.borrow().remote_waits.keys().cloned().collect();
    let now = i64::try_from(host.now_ms() / 1000).unwrap_or(i64::MAX);
    for primary in primaries {
        let Some(waiters) = worker.borrow_mut().remote_waits.remove(&primary) else {
            continue;
        };
        let lock_key = worker.borrow().miss_lock_key(&primary);
        let still_held = lock_key.is_some_and(|k| worker.borrow().held_by_other(host, &k, &primary));
        let mut left = Vec::new();
        for waiter in waiters {
            let found = worker.borrow_mut().find(host, &waiter.req, now);
            let answerable =
                matches!(found, Ok(Found::Object { usable: Usable::Fresh | Usable::StaleAllowed, .. }));
            if !answerable && still_held {
                left.push(waiter);
                continue;
            }
            if !host.set_effective_context(waiter.context_id) {
                continue; // that request is gone
            }
            settle_waiter(host, worker, &waiter, found);
        }
        if !left.is_empty() {
            worker.borrow_mut().remote_waits.insert(primary, left);
        }
    }
}

/// Makes the calls for the refreshes requests asked for.
fn start_refreshes<H: Host>(host: &H, worker: &RefCell<Worker>) {
    let now = host.now_ms();
    let mut w = worker.borrow_mut();
    let Some(origin) = w.config.origin.clone() else {
        return;
    };
    w.refreshes.retain(|_, r| match r {
        Refresh::Queued(_) => true,
        Refresh::InFlight { until_ms } | Refresh::Failed { until_ms } => *until_ms > now,
    });
    let queued: Vec<String> =
        w.refreshes.iter().filter(|(_, r)| matches!(r, Refresh::Queued(_))).map(|(k, _)| k.clone()).collect();
    let timeout_ms = u64::try_from(origin.timeout.as_millis()).unwrap_or(u64::MAX);
    for full in queued {
        let Some(Refresh::Queued(job)) = w.refreshes.get(&full).cloned() else {
            continue;
        };
        let mut headers: Vec<(&str, &str)> =
            job.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        if let Some(authority) = &origin.authority {
            for h in &mut headers {
                if h.0 == ":authority" {
                    h.1 = authority;
                }
            }
        }
        match host.http_call(&origin.cluster, &headers, None, origin.timeout) {
            Ok(token) => {
                w.refreshes.insert(
                    full.clone(),
                    Refresh::InFlight { until_ms: now.saturating_add(timeout_ms + 1000) },
                );
                w.root_calls.insert(token, (full, job, now));
            }
            Err(_) => {
                w.refreshes.insert(full, Refresh::Failed { until_ms: now.saturating_add(REFRESH_RETRY_MS) });
                w.counters.inc(host, Stat::RefreshFailed);
                host.log(LogLevel::Warn, &format!("cache: cannot call cluster `{}`", origin.cluster));
            }
        }
    }
}

/// A refresh came back: a storable answer replaces the stored one; anything else leaves the
/// stale copy (served within `stale-if-error` by requests that find the origin failing).
fn refresh_done<H: Host>(host: &H, worker: &RefCell<Worker>, token: u32, body_size: usize) {
    let mut w = worker.borrow_mut();
    let Some((full, job, request_ms)) = w.root_calls.remove(&token) else {
        return;
    };
    let request_time = i64::try_from(request_ms / 1000).unwrap_or(i64::MAX);
    let mut headers = host.http_call_response_headers();
    let mut status = policy::lines(&headers, ":status")
        .first()
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(0);
    let now = i64::try_from(host.now_ms() / 1000).unwrap_or(i64::MAX);
    let max = w.config.max_object_bytes;
    // 304: the stored response is still good; its headers are freshened by the 304's.
    let mut kept_body = None;
    if status == 304
        && let Some(old) = w.store.get(&full)
    {
        headers = freshened_headers(&old.headers, &headers);
        status = old.status;
        kept_body = Some(old.body.clone());
    }
    let body_size = kept_body.as_ref().map_or(body_size, Vec::len);
    let decision = policy::storable(true, job.authorized, status, &headers, now, w.config.stale);
    let object = match decision {
        Ok(freshness)
            if body_size <= max && tollgate_core::cache::body_storable(status, &headers, max).is_ok() =>
        {
            let body = match kept_body {
                Some(body) => body,
                None if body_size == 0 => Vec::new(),
                None => host.http_call_response_body(body_size).unwrap_or_default(),
            };
            match (policy::vary_names(&headers), stored_headers(&headers)) {
                (Ok(vary), Some(stored)) if body.len() == body_size => Some(Object {
                    status,
                    tags: tollgate_core::cache::purge::tags_of(&stored),
                    headers: stored,
                    body,
                    freshness,
                    request_time,
                    response_time: now,
                    vary,
                    request_ms,
                }),
                _ => None,
            }
        }
        _ => None,
    };
    let lock_key = w.refresh_lock_key(&full);
    match object {
        Some(object) => {
            w.refreshes.remove(&full);
            if w.put(host, &job.primary, &job.request_headers, object) {
                w.counters.inc(host, Stat::Revalidated);
            }
            // Stored in the shared tier first, then let go: a worker that takes the lock next
            // finds the refreshed copy there.
            w.unlock(host, &lock_key, &full, 0);
        }
        None => {
            let until_ms = host.now_ms().saturating_add(REFRESH_RETRY_MS);
            // Held a while: the other workers do not try a failing origin either.
            w.unlock(host, &lock_key, &full, until_ms);
            w.refreshes.insert(full, Refresh::Failed { until_ms });
            w.counters.inc(host, Stat::RefreshFailed);
            host.log(LogLevel::Debug, &format!("cache: refresh answered {status}, kept the stored response"));
        }
    }
}
