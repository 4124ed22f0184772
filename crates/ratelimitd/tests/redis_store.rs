//! The Redis store's Lua script against a real `redis-server` (Debian's package: `make redis`),
//! answering as the in-memory store does for the same requests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tollgate_ratelimitd::gcra::{Charge, Decision};
use tollgate_ratelimitd::redis::RedisStore;
use tollgate_ratelimitd::store::{MemoryStore, Store, StoreError};

struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_redis() -> Redis {
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server: {e} (install it with `make redis`)"));
        let mut redis = Redis(child, port);
        for _ in 0..200 {
            if let Ok(Some(_)) = redis.0.try_wait() {
                break;
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return redis;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let _ = redis.0.kill();
    }
    panic!("redis-server did not start");
}

/// `per_hour` requests an hour: nothing refills while the test runs.
fn charge(key: &str, per_hour: u64, hits: u64, shadow: bool) -> Charge {
    let interval = 3_600_000_000u64.div_ceil(per_hour);
    Charge { key: key.to_owned(), interval, tolerance: interval * per_hour, burst: per_hour, hits, shadow }
}

fn summary(d: &Decision) -> (bool, Vec<(bool, u64)>) {
    (d.admitted, d.outcomes.iter().map(|o| (o.fits, o.remaining)).collect())
}

#[tokio::test]
async fn the_redis_script_decides_as_the_memory_store_does() {
    let redis = start_redis().await;
    let url = format!("redis://127.0.0.1:{}", redis.1);
    let on_redis = Store::Redis(RedisStore::new(&url, Duration::from_secs(2)).unwrap());
    let in_memory = Store::Memory(MemoryStore::new(1000));
    let steps: Vec<Vec<Charge>> = vec![
        vec![charge("a", 3, 1, false)],
        vec![charge("a", 3, 2, false)],
        // "a" is exhausted: "b" fits but is not charged.
        vec![charge("b", 5, 1, false), charge("a", 3, 1, false)],
        vec![charge("b", 5, 1, false)],
        // A shadow charge over its limit never refuses and is not written.
        vec![charge("s", 1, 1, true)],
        vec![charge("s", 1, 1, true), charge("b", 5, 1, false)],
        // Two charges on one bucket see each other.
        vec![charge("c", 3, 2, false), charge("c", 3, 2, false)],
        vec![charge("c", 3, 1, false), charge("c", 3, 2, false)],
        // More hits than the burst never fit; huge counts are safe.
        vec![charge("d", 5, 6, false)],
        vec![charge("d", 5, u64::MAX, false)],
        vec![charge("d", 5, 5, false)],
    ];
    for (i, step) in steps.iter().enumerate() {
        let r = on_redis.decide(step).await.unwrap();
        let m = in_memory.decide(step).await.unwrap();
        assert_eq!(summary(&r), summary(&m), "step {i}");
        for (ro, mo) in r.outcomes.iter().zip(&m.outcomes) {
            // Reset times agree within the time between the two calls.
            assert!(ro.reset.abs_diff(mo.reset) < 1_000_000, "step {i}: {ro:?} vs {mo:?}");
        }
    }
    // Only charged buckets have a key, and its TTL ends when the bucket is full again: "a" took
    // 3 of 3 an hour, so about an hour.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut connection).await.unwrap();
    let mut keys_sorted = keys;
    keys_sorted.sort();
    assert_eq!(keys_sorted, ["a", "b", "c", "d", "s"]);
    let ttl: i64 = redis::cmd("PTTL").arg("a").query_async(&mut connection).await.unwrap();
    assert!((3_500_000..=3_600_001).contains(&ttl), "PTTL of a: {ttl}");
    drop(redis);
}

#[tokio::test]
async fn a_store_started_before_redis_answers_once_redis_is_up() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let store = Store::Redis(
        RedisStore::new(&format!("redis://127.0.0.1:{port}"), Duration::from_millis(300)).unwrap(),
    );
    assert!(store.decide(&[charge("a", 2, 1, false)]).await.is_err(), "no Redis yet");
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _redis = Redis(child, port);
    let mut admitted = false;
    for _ in 0..100 {
        if let Ok(d) = store.decide(&[charge("a", 2, 1, false)]).await {
            admitted = d.admitted;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(admitted, "the store answers once Redis is up, without being made again");
}

#[tokio::test]
async fn redis_down_is_an_error_and_a_restart_recovers() {
    let mut redis = start_redis().await;
    let port = redis.1;
    let url = format!("redis://127.0.0.1:{port}");
    let store = Store::Redis(RedisStore::new(&url, Duration::from_millis(500)).unwrap());
    assert!(store.decide(&[charge("a", 2, 1, false)]).await.unwrap().admitted);
    let _ = redis.0.kill();
    let _ = redis.0.wait();
    let err = store.decide(&[charge("a", 2, 1, false)]).await.unwrap_err();
    assert!(matches!(err, StoreError::Redis(_) | StoreError::Timeout(_)), "{err}");
    // Same port again, empty (no persistence).
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    redis.0 = child;
    let mut answered = None;
    for _ in 0..100 {
        if let Ok(d) = store.decide(&[charge("a", 2, 1, false)]).await {
            answered = Some(d);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let d = answered.expect("the store answers again after Redis restarted");
    assert!(d.admitted);
    assert_eq!(d.outcomes[0].remaining, 1, "the restarted Redis started empty");
}
