//! Token buckets as GCRA ("generic cell rate algorithm") timestamps, with integer arithmetic.
//!
//! A bucket of `burst` tokens refilled at `rate` per `period` is stored as one number per limit:
//! its *theoretical arrival time* (`tat`), the instant at which the bucket will be full again.
//! `tat <= now` means full. Taking a token moves `tat` to `max(tat, now) + interval`, where
//! `interval = period / rate`; the request fits when the resulting debt `tat - now` is at most
//! `burst × interval`. Times are nanoseconds and `interval` is rounded *up*, so rounding can
//! only make a bucket refill a little slower than configured, never faster; with the clock
//! standing still exactly `burst` requests fit.
//!
//! The representation has two properties the shared-data store relies on:
//!
//! - An entry whose every `tat` is in the past is indistinguishable from a missing one (a full
//!   bucket carries no information), so such an entry may be handed to another key.
//! - Two keys sharing an entry (a slot collision) only ever *add* to each other's debt: each
//!   key's debt is at least what it would be alone, so sharing can refuse more, never admit
//!   more, than each key's own limit.
//!
//! A clock going backwards only increases the debt seen (no refill), never grants tokens.

/// At most this many limits per bucket (e.g. per second, per minute, per day).
pub const MAX_LIMITS: usize = 8;
/// Upper bound on `burst × interval` (about 146 years), so sums of times never overflow.
pub const MAX_WINDOW_NS: u64 = 1 << 62;

const NS_PER_SEC: u64 = 1_000_000_000;
const ENTRY_VERSION: u8 = 1;

/// How often a limit refills. The one definition of a rate-limit period: the key service stores
/// it (by these snake_case names) and the CLI parses it; `tollgate-proto` converts it to and
/// from the wire enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Second,
    Minute,
    Hour,
    Day,
}

impl Period {
    pub fn secs(self) -> u64 {
        match self {
            Self::Second => 1,
            Self::Minute => 60,
            Self::Hour => 3_600,
            Self::Day => 86_400,
        }
    }

    /// The period of a key's limit as the key service publishes it (seconds).
    pub fn from_secs(secs: u64) -> Option<Self> {
        [Self::Second, Self::Minute, Self::Hour, Self::Day].into_iter().find(|p| p.secs() == secs)
    }
}

/// One limit, compiled: `rate` per `period_secs`, bursting to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub rate: u64,
    pub period_secs: u64,
    pub burst: u64,
    /// Nanoseconds per token, rounded up.
    interval_ns: u64,
}

impl Limit {
    /// `None` when `rate` or `burst` is zero, the period is zero, or the bucket's window
    /// (`burst × interval`) would exceed [`MAX_WINDOW_NS`].
    pub fn new(rate: u64, period_secs: u64, burst: u64) -> Option<Self> {
        if rate == 0 || burst == 0 || period_secs == 0 {
            return None;
        }
        let period_ns = u128::from(period_secs) * u128::from(NS_PER_SEC);
        let interval = period_ns.div_ceil(u128::from(rate));
        let window = interval.checked_mul(u128::from(burst))?;
        if window > u128::from(MAX_WINDOW_NS) {
            return None;
        }
        Some(Self { rate, period_secs, burst, interval_ns: u64::try_from(interval).ok()? })
    }

    pub fn interval_ns(&self) -> u64 {
        self.interval_ns
    }

    /// Nanoseconds of debt the bucket can hold: `burst × interval`.
    fn window_ns(&self) -> u64 {
        self.interval_ns.saturating_mul(self.burst)
    }
}

/// Which share of the bucket a request may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Normal traffic: may not take the last `reserve_percent` of the burst.
    Normal { reserve_percent: u8 },
    /// Critical traffic: may take the whole bucket.
    Critical,
}

impl Class {
    /// Tokens of `limit` this class cannot take.
    fn reserved(self, limit: &Limit) -> u64 {
        match self {
            Self::Critical => 0,
            Self::Normal { reserve_percent } => {
                let reserved = u128::from(limit.burst) * u128::from(reserve_percent.min(100)) / 100;
                u64::try_from(reserved).unwrap_or(limit.burst)
            }
        }
    }
}

/// What a bucket holds: an owner tag (for collision accounting only) and one `tat` per limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Hash of the key that last claimed this entry.
    pub owner: u64,
    /// Theoretical arrival times, nanoseconds since the Unix epoch.
    pub tats: Vec<u64>,
}

impl State {
    /// Whether every bucket in the entry is full at `now_ns` (the entry holds no information).
    pub fn is_idle(&self, now_ns: u64) -> bool {
        self.tats.iter().all(|t| *t <= now_ns)
    }

    pub fn encode(&self) -> Vec<u8> {
        let n = self.tats.len().min(MAX_LIMITS);
        let mut out = Vec::with_capacity(10 + 8 * n);
        out.push(ENTRY_VERSION);
        out.extend_from_slice(&self.owner.to_le_bytes());
        out.push(n as u8);
        for t in &self.tats[..n] {
            out.extend_from_slice(&t.to_le_bytes());
        }
        out
    }

    /// `None` for anything malformed (the store treats it as an idle entry).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (&version, rest) = bytes.split_first()?;
        if version != ENTRY_VERSION || rest.len() < 9 {
            return None;
        }
        let owner = u64::from_le_bytes(rest[..8].try_into().ok()?);
        let n = usize::from(rest[8]);
        let body = &rest[9..];
        if n > MAX_LIMITS || body.len() != 8 * n {
            return None;
        }
        let tats = body
            .chunks_exact(8)
            .map(|c| c.try_into().map(u64::from_le_bytes))
            .collect::<Result<_, _>>()
            .ok()?;
        Some(Self { owner, tats })
    }
}

/// How one limit stands after a decision, as the request's class sees it: what the response
/// headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitStatus {
    pub limit: Limit,
    /// Tokens the class can hold: the burst, less the reserve for a normal request. `remaining`
    /// never exceeds it.
    pub quota: u64,
    /// Seconds in which the quota comes back in full at the limit's rate (rounded up, at least
    /// 1): `quota / rate × period`.
    pub window_secs: u64,
    /// Whole tokens this request's class could still take.
    pub remaining: u64,
    /// Seconds until the class can take one more token than `remaining` (rounded up): when
    /// `remaining` is 0, when the next request can pass.
    pub reset_secs: u64,
}

impl LimitStatus {
    /// The status of `limit` for normal traffic when the bucket's debt (`tat - now`) is
    /// `debt_ns`: how a rate-limit service's bucket stands when it reports the time until the
    /// bucket is full again.
    pub fn of_debt(limit: &Limit, debt_ns: u64) -> Self {
        Self::new(limit, Class::Normal { reserve_percent: 0 }, debt_ns)
    }

    /// The status of `limit` for `class` when the bucket's debt (`tat - now`) is `debt_ns`.
    fn new(limit: &Limit, class: Class, debt_ns: u64) -> Self {
        let interval = limit.interval_ns;
        let reserved = class.reserved(limit);
        let quota = limit.burst - reserved;
        // What the class may hold in debt, and so how many more tokens fit under it.
        let allowance = quota.saturating_mul(interval);
        let remaining = allowance.saturating_sub(debt_ns) / interval;
        // One more token fits once the debt is down to `allowance - (remaining + 1) × interval`.
        let next = allowance.saturating_sub((remaining + 1).saturating_mul(interval));
        Self {
            limit: *limit,
            quota,
            window_secs: allowance.div_ceil(NS_PER_SEC).max(1),
            remaining,
            reset_secs: debt_ns.saturating_sub(next).div_ceil(NS_PER_SEC),
        }
    }
}

/// The outcome of taking one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// When refused: seconds until a token of this class is available (at least 1).
    pub retry_after_secs: u64,
    /// The state to write back (`None` when nothing changed, i.e. the request was refused).
    pub next: Option<State>,
    /// Per limit, in the order given.
    pub status: Vec<LimitStatus>,
    /// The entry was busy with another key's buckets, which this request now shares.
    pub collided: bool,
}

/// Takes one token for `owner` from every limit of `state` at `now_ns`. The request is allowed
/// only when every limit has a token for its class; a refused request changes nothing.
///
/// When `state` is idle it is claimed for `owner`; when it is busy with another owner the
/// buckets are shared (see the module documentation for why that is safe).
pub fn take(state: Option<&State>, owner: u64, limits: &[Limit], class: Class, now_ns: u64) -> Decision {
    let limits = &limits[..limits.len().min(MAX_LIMITS)];
    let (mut tats, collided) = match state {
        Some(s) if !s.is_idle(now_ns) => (s.tats.clone(), s.owner != owner),
        _ => (Vec::new(), false),
    };
    if tats.len() < limits.len() {
        tats.resize(limits.len(), 0);
    }
    let mut allowed = true;
    let mut retry_ns = 0u64;
    let mut next_tats = tats.clone();
    for (i, limit) in limits.iter().enumerate() {
        let base = tats[i].max(now_ns);
        let new_tat = base.saturating_add(limit.interval_ns);
        let allowance = limit.window_ns() - class.reserved(limit).saturating_mul(limit.interval_ns);
        let debt = new_tat - now_ns;
        if debt > allowance {
            allowed = false;
            retry_ns = retry_ns.max(debt - allowance);
        } else {
            next_tats[i] = new_tat;
        }
    }
    let final_tats = if allowed { &next_tats } else { &tats };
    let status = limits
        .iter()
        .zip(final_tats)
        .map(|(limit, tat)| LimitStatus::new(limit, class, tat.saturating_sub(now_ns)))
        .collect();
    let next = allowed.then(|| State {
        owner: if collided { state.map_or(owner, |s| s.owner) } else { owner },
        tats: next_tats,
    });
    Decision { allowed, retry_after_secs: retry_ns.div_ceil(NS_PER_SEC).max(1), next, status, collided }
}

/// Milliseconds on the host clock to nanoseconds.
pub fn ms_to_ns(ms: u64) -> u64 {
    ms.saturating_mul(1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000_000_000;
    const SEC: u64 = NS_PER_SEC;
    const NORMAL: Class = Class::Normal { reserve_percent: 0 };

    fn lim(rate: u64, per: Period, burst: u64) -> Limit {
        Limit::new(rate, per.secs(), burst).unwrap()
    }

    /// Takes tokens one by one at `now` and applies each allowed decision.
    fn run(state: &mut Option<State>, limits: &[Limit], class: Class, now: u64, n: usize) -> usize {
        let mut allowed = 0;
        for _ in 0..n {
            let d = take(state.as_ref(), 7, limits, class, now);
            if d.allowed {
                allowed += 1;
                *state = d.next;
            } else {
                assert!(d.next.is_none());
            }
        }
        allowed
    }

    #[test]
    fn a_still_clock_allows_exactly_the_burst() {
        for (rate, burst) in [(1, 1), (10, 20), (7, 7), (3, 100), (1000, 1)] {
            let mut s = None;
            assert_eq!(run(&mut s, &[lim(rate, Period::Second, burst)], NORMAL, T0, 500), burst as usize);
        }
    }

    #[test]
    fn tokens_refill_at_the_rate_and_never_beyond_the_burst() {
        let limits = [lim(10, Period::Second, 5)];
        let mut s = None;
        assert_eq!(run(&mut s, &limits, NORMAL, T0, 100), 5);
        // 100 ms is one token at 10/s.
        assert_eq!(run(&mut s, &limits, NORMAL, T0 + SEC / 10, 100), 1);
        assert_eq!(run(&mut s, &limits, NORMAL, T0 + SEC / 10 + SEC / 20, 100), 0);
        // An hour later the bucket holds the burst, not 36 000 tokens.
        assert_eq!(run(&mut s, &limits, NORMAL, T0 + 3600 * SEC, 100), 5);
    }

    #[test]
    fn slow_rates_refill_exactly_even_with_constant_traffic() {
        // 1 per day with a request every millisecond: exactly one token per day, no drift.
        let limits = [lim(1, Period::Day, 1)];
        let mut s = None;
        let mut allowed = 0;
        let mut now = T0;
        for _ in 0..5_000 {
            allowed += run(&mut s, &limits, NORMAL, now, 1);
            now += 1_000_000;
        }
        assert_eq!(allowed, 1);
        assert_eq!(run(&mut s, &limits, NORMAL, T0 + 86_400 * SEC, 3), 1);
        // 7 per second: the interval (142 857 142.86 ns) is rounded up, so the 7th token of the
        // next second comes 1 ns late — never early — and no later than that.
        let limits = [lim(7, Period::Second, 7)];
        let mut s = None;
        assert_eq!(run(&mut s, &limits, NORMAL, T0, 10), 7);
        let mut got = 0;
        for ms in 1..=1000 {
            got += run(&mut s, &limits, NORMAL, T0 + ms * 1_000_000, 1);
        }
        assert_eq!(got, 6);
        assert_eq!(run(&mut s, &limits, NORMAL, T0 + 1_001_000_000, 3), 1);
    }

    #[test]
    fn every_limit_applies_and_a_refusal_takes_nothing() {
        let limits = [lim(10, Period::Second, 10), lim(15, Period::Day, 15)];
        let mut s = None;
        assert_eq!(run(&mut s, &limits, NORMAL, T0, 100), 10);
        // A second later the per-second bucket is full again but the daily one has 5 left.
        assert_eq!(run(&mut s, &limits, NORMAL, T0 + SEC, 100), 5);
        let d = take(s.as_ref(), 7, &limits, NORMAL, T0 + 2 * SEC);
        assert!(!d.allowed);
        assert_eq!(d.status[0].remaining, 10, "the refused request took no per-second token");
        assert_eq!(d.status[1].remaining, 0);
        // The daily bucket: 86 400 s / 15 per token.
        assert_eq!(d.retry_after_secs, 86_400 / 15 - 2);
    }

    #[test]
    fn normal_traffic_cannot_take_the_reserve() {
        let limits = [lim(1, Period::Hour, 10)];
        let normal = Class::Normal { reserve_percent: 30 };
        let mut s = None;
        assert_eq!(run(&mut s, &limits, normal, T0, 100), 7);
        assert_eq!(run(&mut s, &limits, Class::Critical, T0, 100), 3);
        // Critical traffic first can still take everything.
        let mut s = None;
        assert_eq!(run(&mut s, &limits, Class::Critical, T0, 100), 10);
        assert_eq!(run(&mut s, &limits, normal, T0, 100), 0);
    }

    #[test]
    fn remaining_and_reset_are_reported_per_class() {
        let limits = [lim(1, Period::Second, 10)];
        let d = take(None, 1, &limits, Class::Normal { reserve_percent: 20 }, T0);
        assert!(d.allowed);
        assert_eq!(d.status[0].remaining, 7);
        assert_eq!(d.status[0].reset_secs, 1);
        let d = take(None, 1, &limits, Class::Critical, T0);
        assert_eq!(d.status[0].remaining, 9);
    }

    #[test]
    fn a_clock_going_backwards_grants_nothing() {
        let limits = [lim(1, Period::Second, 2)];
        let mut s = None;
        assert_eq!(run(&mut s, &limits, NORMAL, T0, 5), 2);
        assert_eq!(run(&mut s, &limits, NORMAL, T0 - 10 * SEC, 5), 0);
        assert_eq!(run(&mut s, &limits, NORMAL, T0, 5), 0);
        assert_eq!(run(&mut s, &limits, NORMAL, T0 + SEC, 5), 1);
    }

    #[test]
    fn an_idle_entry_is_claimed_and_a_busy_one_is_shared() {
        let limits = [lim(1, Period::Minute, 3)];
        let busy = take(None, 1, &limits, NORMAL, T0).next.unwrap();
        assert_eq!(busy.owner, 1);
        // Another key landing on the busy entry shares its debt: 2 left, not 3.
        let mut s = Some(busy.clone());
        let d = take(s.as_ref(), 2, &limits, NORMAL, T0);
        assert!(d.collided);
        assert_eq!(d.next.as_ref().unwrap().owner, 1, "the entry keeps its owner while shared");
        assert_eq!(run(&mut s, &limits, NORMAL, T0, 10), 2);
        // Once full again the entry is idle and the newcomer claims it with a full bucket.
        let later = T0 + 60 * 3 * SEC;
        assert!(busy.is_idle(later));
        let d = take(Some(&busy), 2, &limits, NORMAL, later);
        assert!(!d.collided);
        assert_eq!(d.next.unwrap().owner, 2);
        assert_eq!(d.status[0].remaining, 2);
    }

    #[test]
    fn an_entry_is_reclaimed_exactly_when_every_bucket_is_full_again() {
        // 4 per second and 100 per day: one request leaves 864 s of debt in the daily bucket.
        let limits = [lim(1, Period::Second, 4), lim(100, Period::Day, 100)];
        let busy = take(None, 1, &limits, NORMAL, T0).next.unwrap();
        let full_again = T0 + 864 * SEC;
        assert!(!busy.is_idle(full_again - 1));
        let d = take(Some(&busy), 2, &limits, NORMAL, full_again - 1);
        assert!(d.collided, "one nanosecond early, the entry still holds key 1's debt");
        assert_eq!(d.next.unwrap().owner, 1);
        assert!(busy.is_idle(full_again));
        let d = take(Some(&busy), 2, &limits, NORMAL, full_again);
        assert!(!d.collided);
        assert_eq!(d.next.unwrap().owner, 2, "a full entry carries nothing: the newcomer owns it");
        assert_eq!((d.status[0].remaining, d.status[1].remaining), (3, 99), "with full buckets");
        // A malformed entry is as good as a full one.
        assert_eq!(State::decode(b"garbage"), None);
        assert!(take(None, 2, &limits, NORMAL, T0).allowed);
    }

    #[test]
    fn a_short_window_sharing_a_long_debt_is_refused_until_it_clears() {
        // Why each rule has its own slots: a bucket of 1 s (100 per second) sharing an entry
        // with 4 s of another limit's debt has no token until that debt is under 1 s.
        let long = [lim(1, Period::Second, 4)];
        let short = [lim(100, Period::Second, 100)];
        let mut s = None;
        assert_eq!(run(&mut s, &long, NORMAL, T0, 10), 4);
        let d = take(s.as_ref(), 2, &short, NORMAL, T0);
        assert!(!d.allowed && d.collided);
        assert_eq!(d.retry_after_secs, 4);
        assert!(take(s.as_ref(), 2, &short, NORMAL, T0 + 3 * SEC + SEC / 100).allowed);
    }

    #[test]
    fn status_counts_within_the_quota_and_waits_for_the_next_token() {
        let limits = [lim(2, Period::Hour, 6)];
        let mut s = None;
        for taken in 1..=6u64 {
            let d = take(s.as_ref(), 1, &limits, NORMAL, T0);
            let st = d.status[0];
            assert_eq!((st.quota, st.window_secs, st.remaining), (6, 10_800, 6 - taken));
            // Whatever is left, the next token is one interval (30 min) after the first taken.
            assert_eq!(st.reset_secs, 1_800);
            s = d.next;
        }
        let refused = take(s.as_ref(), 1, &limits, NORMAL, T0 + 600 * SEC);
        assert!(!refused.allowed);
        assert_eq!(refused.status[0].remaining, 0);
        assert_eq!(refused.status[0].reset_secs, 1_200);
        assert_eq!(refused.retry_after_secs, refused.status[0].reset_secs);
        // The reserve: a normal request's quota leaves it out, and so does its wait.
        let normal = Class::Normal { reserve_percent: 50 };
        let d = take(s.as_ref(), 1, &limits, normal, T0);
        assert_eq!((d.status[0].quota, d.status[0].remaining), (3, 0));
        assert_eq!(d.status[0].reset_secs, d.retry_after_secs);
        assert_eq!(d.retry_after_secs, 4 * 1_800);
    }

    #[test]
    fn sharing_never_admits_more_than_either_key_alone() {
        // Key A: 2/min; key B: 100/s. Interleaved on one entry, A never gets more than 2.
        let a = [lim(2, Period::Minute, 2)];
        let b = [lim(100, Period::Second, 100)];
        let mut s: Option<State> = None;
        let mut a_allowed = 0;
        for i in 0..200 {
            let now = T0 + i * 1_000_000;
            let d = take(s.as_ref(), 1, &a, NORMAL, now);
            if d.allowed {
                a_allowed += 1;
                s = d.next;
            }
            let d = take(s.as_ref(), 2, &b, NORMAL, now);
            if d.allowed {
                s = d.next;
            }
        }
        assert!(a_allowed <= 2, "{a_allowed}");
    }

    #[test]
    fn limits_outside_the_bounds_are_refused() {
        assert!(Limit::new(0, 1, 1).is_none());
        assert!(Limit::new(1, 1, 0).is_none());
        assert!(Limit::new(1, 0, 1).is_none());
        assert!(Limit::new(1, 86_400, u64::MAX).is_none());
        // burst / rate × period may span up to about 146 years.
        assert!(Limit::new(1, 86_400, 50_000).is_some());
        assert!(Limit::new(1, 86_400, 60_000).is_none());
        assert_eq!(Limit::new(3, 1, 1).unwrap().interval_ns(), 333_333_334);
    }

    #[test]
    fn state_round_trips_and_garbage_is_refused() {
        let s = State { owner: 0xdead_beef, tats: vec![1, u64::MAX, 3] };
        assert_eq!(State::decode(&s.encode()), Some(s.clone()));
        let bytes = s.encode();
        assert_eq!(State::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(State::decode(&[]), None);
        assert_eq!(State::decode(&[9, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(State::decode(&State::default().encode()), Some(State::default()));
    }
}
