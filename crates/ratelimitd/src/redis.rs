//! Buckets in Redis: one Lua script per request checks every bucket, then charges them all, on
//! Redis's own clock (`TIME`), so any number of service instances share exact limits. Each
//! bucket is one string key holding its TAT in microseconds (see [`crate::gcra`]), with a TTL
//! that ends when the bucket is full again (a missing key is a full bucket).
//!
//! The connection is a `redis` connection manager: it connects on first use and reconnects
//! after Redis restarts, so neither Envoy nor this service needs restarting. A call that fails
//! or takes longer than the timeout is a [`StoreError`]; the request is answered `UNAVAILABLE`.
//! Scripts are sent by SHA and loaded again when a restarted Redis has forgotten them.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::gcra::{Charge, Decision, Outcome};
use crate::store::StoreError;

/// The script: `KEYS[i]` is bucket i; `ARGV[5i-4 .. 5i]` its interval and tolerance
/// (microseconds), burst, hits (at most burst + 1) and shadow flag (`1`/`0`). Returns
/// `admitted, fits_1, remaining_1, reset_1, fits_2, …`. The same steps as
/// [`crate::gcra::evaluate`]. Times stay below 2^53, so Lua's doubles hold them exactly, and are
/// written with `%.0f` (Lua's `tostring` would round them to 14 digits).
pub const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local pending = {}
local tats = {}
local news = {}
local admitted = 1
for i = 1, n do
  local b = (i - 1) * 5
  local interval = tonumber(ARGV[b + 1])
  local tolerance = tonumber(ARGV[b + 2])
  local burst = tonumber(ARGV[b + 3])
  local hits = tonumber(ARGV[b + 4])
  local shadow = ARGV[b + 5] == '1'
  local key = KEYS[i]
  local tat = pending[key]
  if tat == nil then
    tat = tonumber(redis.call('GET', key) or '0') or 0
  end
  tats[i] = tat
  local new = false
  if hits <= burst then
    local candidate = math.max(tat, now) + hits * interval
    if candidate - now <= tolerance then
      new = candidate
    end
  end
  news[i] = new
  if new then
    pending[key] = new
  elseif not shadow then
    admitted = 0
  end
end
local out = {admitted}
for i = 1, n do
  local b = (i - 1) * 5
  local interval = tonumber(ARGV[b + 1])
  local tolerance = tonumber(ARGV[b + 2])
  local fits = 0
  local at = tats[i]
  if news[i] then
    fits = 1
    if admitted == 1 then
      at = news[i]
    end
  end
  local ahead = math.max(at - now, 0)
  out[#out + 1] = fits
  out[#out + 1] = math.floor(math.max(tolerance - ahead, 0) / interval)
  out[#out + 1] = ahead
end
if admitted == 1 then
  for key, tat in pairs(pending) do
    local ttl = math.ceil((tat - now) / 1000) + 1
    redis.call('SET', key, string.format('%.0f', tat), 'PX', ttl)
  end
end
return out
"#;

/// The Redis store.
pub struct RedisStore {
    manager: ConnectionManager,
    script: redis::Script,
    timeout: Duration,
}

impl RedisStore {
    /// A store on `url` (`redis://host:port/db`); connects on first use. `timeout` bounds each
    /// call, connecting included.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("--redis: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Give up reconnecting quickly: the next call tries again.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let manager =
            ConnectionManager::new_lazy_with_config(client, config).map_err(|e| format!("--redis: {e}"))?;
        Ok(RedisStore { manager, script: redis::Script::new(SCRIPT), timeout })
    }

    pub async fn decide(&self, charges: &[Charge]) -> Result<Decision, StoreError> {
        let mut invocation = self.script.prepare_invoke();
        for charge in charges {
            invocation.key(charge.key.as_str());
        }
        for charge in charges {
            invocation
                .arg(charge.interval)
                .arg(charge.tolerance)
                .arg(charge.burst)
                .arg(charge.hits.min(charge.burst.saturating_add(1)))
                .arg(if charge.shadow { 1 } else { 0 });
        }
        let mut connection = self.manager.clone();
        let call = invocation.invoke_async::<Vec<i64>>(&mut connection);
        let reply = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(err)) => return Err(StoreError::Redis(err.to_string())),
            Err(_) => return Err(StoreError::Timeout(self.timeout)),
        };
        parse_reply(&reply, charges.len())
    }
}

fn parse_reply(reply: &[i64], count: usize) -> Result<Decision, StoreError> {
    let bad = || {
        StoreError::Redis(format!("unexpected script reply of {} numbers for {count} buckets", reply.len()))
    };
    let (admitted, rest) = reply.split_first().ok_or_else(bad)?;
    if rest.len() != count * 3 {
        return Err(bad());
    }
    let outcomes = rest
        .chunks_exact(3)
        .map(|c| match c {
            [fits, remaining, reset] => Outcome {
                fits: *fits == 1,
                remaining: u64::try_from(*remaining).unwrap_or(0),
                reset: u64::try_from(*reset).unwrap_or(0),
            },
            _ => Outcome { fits: false, remaining: 0, reset: 0 },
        })
        .collect();
    Ok(Decision { admitted: *admitted == 1, outcomes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_of_the_wrong_length_are_errors() {
        assert!(parse_reply(&[], 1).is_err());
        assert!(parse_reply(&[1, 1, 2], 1).is_err());
        let d = parse_reply(&[0, 1, 5, 100, 0, 0, 7], 2).unwrap();
        assert!(!d.admitted);
        assert_eq!(d.outcomes[0], Outcome { fits: true, remaining: 5, reset: 100 });
        assert_eq!(d.outcomes[1], Outcome { fits: false, remaining: 0, reset: 7 });
    }
}
