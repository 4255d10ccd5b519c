//! Rate-limit arithmetic: an exact sliding-window limiter with bounded
//! memory. Pure: the key's Durable Object loads the [`State`], calls
//! [`step`] with its clock, and stores the new state.
//!
//! # Algorithm, and why
//! Each limit (`N` per `T`) keeps the requests it admitted in at most ~60
//! time buckets of width `T/60` (at least 1 ms). A request is admitted only
//! if `N` minus the admitted requests in every bucket that *may* overlap the
//! last `T` leaves room. Counting a partly-overlapping bucket in full is
//! conservative, so the guarantee is strict: **in any interval of length `T`
//! at most `N` requests are admitted** — no fixed-window burst of `2N` at a
//! boundary, and unlike GCRA (which admits a burst of `N` and then refills
//! continuously, so up to `2N − 1` fit in one window) the promise holds for
//! every window. The price is that capacity returns in steps of `T/60`
//! rather than continuously. Memory is bounded by the bucket count, unlike a
//! log of every timestamp.
//!
//! All limits of a key are checked together and consumed all-or-nothing: a
//! request refused by the hourly limit consumes nothing from the minute
//! limit. The limits travel with each check, and state is keyed by limit
//! name with self-describing buckets (start and end), so changing a limit's
//! value or window neither resets nor orphans its counters.
//!
//! Time is Unix milliseconds. A clock that goes backwards is clamped to the
//! latest time seen, which can only make the limiter stricter.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Buckets per window.
pub const BUCKETS_PER_WINDOW: i64 = 60;
/// Most limits one key may have.
pub const MAX_LIMITS: usize = 4;
/// Largest `limit` value.
pub const MAX_LIMIT: u32 = 1_000_000;
/// Longest window: 31 days.
pub const MAX_WINDOW_SECONDS: u32 = 31 * 86_400;

/// One limit: at most `limit` requests in any `window_seconds`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Name, e.g. `minute` or `hour`; counters are kept per name.
    pub name: String,
    /// Requests allowed per window.
    pub limit: u32,
    /// Window length in seconds.
    pub window_seconds: u32,
}

impl RateLimit {
    /// Validates a limit; the error names the problem.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.name.is_empty()
            || self.name.len() > 32
            || !self.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err("name must be 1-32 characters of a-z, 0-9, _ and -");
        }
        self.validate_values()
    }

    /// Checks only what keeps the limiter sound (a limit of 0 would mean
    /// "unlimited"; a window out of range would overflow): the guard applies
    /// this to every limit it is sent, including the per-visitor ones whose
    /// names carry an IP (`ip_minute@203.0.113.7`).
    pub fn validate_values(&self) -> Result<(), &'static str> {
        if self.name.is_empty() || self.name.len() > 100 {
            return Err("name must be 1-100 bytes");
        }
        if self.limit == 0 || self.limit > MAX_LIMIT {
            return Err("limit must be between 1 and 1000000");
        }
        if self.window_seconds == 0 || self.window_seconds > MAX_WINDOW_SECONDS {
            return Err("window_seconds must be between 1 and 2678400");
        }
        Ok(())
    }

    fn window_ms(&self) -> i64 {
        i64::from(self.window_seconds) * 1000
    }

    fn bucket_ms(&self) -> i64 {
        (self.window_ms() / BUCKETS_PER_WINDOW).max(1)
    }
}

/// Merges a key's own limits over the defaults: same name overrides, new
/// names add. Sorted by name for a stable order.
pub fn merge_limits(defaults: &[RateLimit], own: &[RateLimit]) -> Vec<RateLimit> {
    let mut by_name: BTreeMap<&str, &RateLimit> = defaults.iter().map(|l| (l.name.as_str(), l)).collect();
    for l in own {
        by_name.insert(l.name.as_str(), l);
    }
    by_name.into_values().cloned().collect()
}

/// Admitted requests of one bucket: those at times in `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// First millisecond.
    pub start: i64,
    /// One past the last millisecond.
    pub end: i64,
    /// Requests admitted in it.
    pub count: u32,
}

/// The counters of one key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Latest time seen (ms); earlier clocks are clamped to it.
    pub last_ms: i64,
    /// Buckets per limit name, oldest first.
    pub windows: BTreeMap<String, Vec<Bucket>>,
    /// The window (ms) each name was last checked with, so that buckets of
    /// a name absent from a later check (e.g. another client IP's limit) are
    /// dropped once they can no longer count, not kept for the longest
    /// possible window.
    #[serde(default)]
    pub spans: BTreeMap<String, i64>,
}

/// What the limiter decided.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Verdict {
    /// Admitted and counted; the tightest quota (none if there are no limits).
    Allowed(Option<Quota>),
    /// Refused; nothing was counted.
    Limited {
        /// Milliseconds until the same request would be admitted (> 0).
        retry_after_ms: i64,
        /// The tightest refusing limit (remaining 0).
        quota: Quota,
    },
}

/// What the `RateLimit-*` headers report, for the tightest limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Its name.
    pub name: String,
    /// `RateLimit-Limit`.
    pub limit: u32,
    /// `RateLimit-Remaining` (after this request).
    pub remaining: u32,
    /// Milliseconds until the oldest counted request stops counting
    /// (`RateLimit-Reset`, in whole seconds rounded up).
    pub reset_ms: i64,
}

/// Requests that count against `limit` for a request at `now`: every bucket
/// that may hold a request inside `[now - T + 1, now]`.
fn in_window(buckets: &[Bucket], limit: &RateLimit, now: i64) -> u64 {
    let from = now - limit.window_ms() + 1;
    buckets.iter().filter(|b| b.end > from).map(|b| u64::from(b.count)).sum()
}

/// When a bucket stops counting: the first `t` with `b.end <= t - T + 1`.
fn expires_at(b: &Bucket, limit: &RateLimit) -> i64 {
    b.end + limit.window_ms() - 1
}

/// Earliest time `>= now` at which one more request fits under `limit`.
fn admit_at(buckets: &[Bucket], limit: &RateLimit, now: i64) -> i64 {
    let cap = u64::from(limit.limit);
    let mut used = in_window(buckets, limit, now);
    if used < cap {
        return now;
    }
    let mut live: Vec<&Bucket> = buckets.iter().filter(|b| expires_at(b, limit) > now).collect();
    live.sort_by_key(|b| expires_at(b, limit));
    for b in live {
        used -= u64::from(b.count);
        if used < cap {
            return expires_at(b, limit);
        }
    }
    now
}

fn quota(buckets: &[Bucket], limit: &RateLimit, now: i64) -> Quota {
    let used = in_window(buckets, limit, now);
    let oldest = buckets.iter().map(|b| expires_at(b, limit)).filter(|&t| t > now).min();
    Quota {
        name: limit.name.clone(),
        limit: limit.limit,
        remaining: u32::try_from(u64::from(limit.limit).saturating_sub(used)).unwrap_or(u32::MAX),
        reset_ms: oldest.map_or(0, |t| t - now),
    }
}

/// The tightest quota: least remaining, then the latest reset.
fn tightest(quotas: impl IntoIterator<Item = Quota>) -> Option<Quota> {
    quotas.into_iter().min_by(|a, b| a.remaining.cmp(&b.remaining).then(b.reset_ms.cmp(&a.reset_ms)))
}

/// Checks and, if every limit admits it, counts one request at `now_ms`.
/// Returns the verdict and the state to store (pruned of expired buckets).
pub fn step(prev: &State, limits: &[RateLimit], now_ms: i64) -> (Verdict, State) {
    let now = now_ms.max(prev.last_ms);
    let mut next = prev.clone();
    next.last_ms = now;
    let empty: Vec<Bucket> = Vec::new();
    let buckets_of = |l: &RateLimit| prev.windows.get(&l.name).unwrap_or(&empty);

    let mut retry_at = now;
    let mut refused = Vec::new();
    for l in limits {
        let at = admit_at(buckets_of(l), l, now);
        if at > now {
            retry_at = retry_at.max(at);
            refused.push(quota(buckets_of(l), l, now));
        }
    }
    if let Some(q) = tightest(refused) {
        prune(&mut next, limits, now);
        let retry_after_ms = retry_at - now;
        // Reset never before the retry time (after a limit was lowered, the
        // oldest counted bucket may expire before room opens up).
        let quota = Quota { remaining: 0, reset_ms: q.reset_ms.max(retry_after_ms), ..q };
        return (Verdict::Limited { retry_after_ms, quota }, next);
    }

    let mut quotas = Vec::with_capacity(limits.len());
    for l in limits {
        let width = l.bucket_ms();
        let start = now - now.rem_euclid(width);
        let buckets = next.windows.entry(l.name.clone()).or_default();
        match buckets.last_mut() {
            Some(b) if b.start == start && b.end == start + width => b.count += 1,
            _ => buckets.push(Bucket { start, end: start + width, count: 1 }),
        }
        quotas.push(quota(buckets, l, now));
    }
    for l in limits {
        next.spans.insert(l.name.clone(), l.window_ms());
    }
    prune(&mut next, limits, now);
    (Verdict::Allowed(tightest(quotas)), next)
}

/// Gives back one request counted at `counted_at` under each of `names`: the
/// shell admitted it, then refused it for another reason before it reached
/// the origin (e.g. the org's BAA, read concurrently with the check). This
/// only ever lowers counts for requests that were not served, so the limit
/// still holds for what was.
pub fn refund(prev: &State, names: &[&str], counted_at: i64) -> State {
    let mut next = prev.clone();
    for name in names {
        if let Some(b) = next
            .windows
            .get_mut(*name)
            .and_then(|bs| bs.iter_mut().find(|b| b.start <= counted_at && counted_at < b.end && b.count > 0))
        {
            b.count -= 1;
        }
    }
    for buckets in next.windows.values_mut() {
        buckets.retain(|b| b.count > 0);
    }
    next.windows.retain(|_, b| !b.is_empty());
    let windows = &next.windows;
    next.spans.retain(|name, _| windows.contains_key(name));
    next
}

/// Drops buckets that can no longer count: under the current limit of that
/// name, or, for a name not in this check, under the window it was last
/// checked with. (After a limit's window is *widened*, requests older than
/// its previous window are no longer known: the limiter then admits at most
/// what it would have with the old window.)
fn prune(state: &mut State, limits: &[RateLimit], now: i64) {
    let spans = &state.spans;
    state.windows.retain(|name, buckets| {
        let span = limits
            .iter()
            .find(|l| &l.name == name)
            .map(RateLimit::window_ms)
            .or_else(|| spans.get(name).copied())
            .unwrap_or(i64::from(MAX_WINDOW_SECONDS) * 1000);
        buckets.retain(|b| b.end + span - 1 > now);
        !buckets.is_empty()
    });
    let windows = &state.windows;
    state.spans.retain(|name, _| windows.contains_key(name));
}

/// Whole seconds, rounded up, for `Retry-After` and `RateLimit-Reset`.
pub fn ceil_seconds(ms: i64) -> i64 {
    (ms.max(0) + 999) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(name: &str, limit: u32, window_seconds: u32) -> RateLimit {
        RateLimit { name: name.into(), limit, window_seconds }
    }

    fn run(state: &mut State, limits: &[RateLimit], now: i64) -> Verdict {
        let (v, s) = step(state, limits, now);
        *state = s;
        v
    }

    const T0: i64 = 1_800_000_000_000;

    #[test]
    fn n_per_window_then_refused_with_exact_retry_after() {
        let l = [lim("minute", 3, 60)];
        let mut s = State::default();
        for i in 0..3 {
            match run(&mut s, &l, T0 + i) {
                Verdict::Allowed(Some(q)) => {
                    assert_eq!(q.remaining, 2 - i as u32);
                    assert_eq!(q.limit, 3);
                }
                v => panic!("{v:?}"),
            }
        }
        let Verdict::Limited { retry_after_ms, quota } = run(&mut s, &l, T0 + 10) else { panic!() };
        assert_eq!(quota.remaining, 0);
        // All three fell in the bucket [T0, T0+1000): it stops counting at
        // T0 + 1000 + 60000 - 1.
        assert_eq!(retry_after_ms, 1000 + 60_000 - 1 - 10);
        assert!(matches!(run(&mut s, &l, T0 + 10 + retry_after_ms - 1), Verdict::Limited { .. }));
        assert!(matches!(run(&mut s, &l, T0 + 10 + retry_after_ms), Verdict::Allowed(_)));
    }

    #[test]
    fn no_boundary_burst() {
        // A fixed window would admit 2N around a boundary.
        let l = [lim("minute", 10, 60)];
        let mut s = State::default();
        let mut admitted = 0;
        for ms in (T0 + 59_000..T0 + 61_000).step_by(10) {
            if matches!(run(&mut s, &l, ms), Verdict::Allowed(_)) {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 10);
    }

    #[test]
    fn all_or_nothing_across_limits() {
        let l = [lim("minute", 5, 60), lim("hour", 2, 3600)];
        let mut s = State::default();
        assert!(matches!(run(&mut s, &l, T0), Verdict::Allowed(_)));
        assert!(matches!(run(&mut s, &l, T0 + 1), Verdict::Allowed(_)));
        for i in 0..5 {
            let Verdict::Limited { quota, .. } = run(&mut s, &l, T0 + 2 + i) else { panic!() };
            assert_eq!(quota.name, "hour");
        }
        // The hourly refusals consumed nothing of the minute limit.
        assert_eq!(in_window(&s.windows["minute"], &l[0], T0 + 10), 2);
        // With only the minute limit, three more fit.
        let only_minute = [lim("minute", 5, 60)];
        for i in 0..3 {
            assert!(matches!(run(&mut s, &only_minute, T0 + 20 + i), Verdict::Allowed(_)));
        }
        assert!(matches!(run(&mut s, &only_minute, T0 + 30), Verdict::Limited { .. }));
    }

    #[test]
    fn tightest_limit_is_reported() {
        let l = [lim("minute", 60, 60), lim("hour", 100, 3600)];
        let mut s = State::default();
        let Verdict::Allowed(Some(q)) = run(&mut s, &l, T0) else { panic!() };
        assert_eq!((q.name.as_str(), q.remaining), ("minute", 59));
        assert_eq!(q.reset_ms, 1000 + 60_000 - 1);
        assert_eq!(ceil_seconds(q.reset_ms), 61);
        let l2 = [lim("minute", 60, 60), lim("hour", 3, 3600)];
        let Verdict::Allowed(Some(q)) = run(&mut s, &l2, T0 + 1) else { panic!() };
        assert_eq!((q.name.as_str(), q.remaining), ("hour", 1));
    }

    #[test]
    fn clock_going_backwards_is_clamped() {
        let l = [lim("s", 2, 1)];
        let mut s = State::default();
        assert!(matches!(run(&mut s, &l, T0 + 5000), Verdict::Allowed(_)));
        assert!(matches!(run(&mut s, &l, T0 + 5000), Verdict::Allowed(_)));
        // An earlier clock cannot open a fresh window.
        assert!(matches!(run(&mut s, &l, T0), Verdict::Limited { .. }));
        assert_eq!(s.last_ms, T0 + 5000);
    }

    #[test]
    fn changing_the_limit_keeps_counters() {
        let mut s = State::default();
        for i in 0..5 {
            assert!(matches!(run(&mut s, &[lim("minute", 10, 60)], T0 + i), Verdict::Allowed(_)));
        }
        // Lowered to 5: the 5 already counted still count.
        assert!(matches!(run(&mut s, &[lim("minute", 5, 60)], T0 + 10), Verdict::Limited { .. }));
        // Raised to 6: exactly one more.
        assert!(matches!(run(&mut s, &[lim("minute", 6, 60)], T0 + 11), Verdict::Allowed(_)));
        assert!(matches!(run(&mut s, &[lim("minute", 6, 60)], T0 + 12), Verdict::Limited { .. }));
    }

    #[test]
    fn names_absent_from_later_checks_are_forgotten_after_their_window() {
        let mut s = State::default();
        let ip_a = [lim("minute@a", 5, 60)];
        let ip_b = [lim("minute@b", 5, 60)];
        assert!(matches!(run(&mut s, &ip_a, T0), Verdict::Allowed(_)));
        assert!(matches!(run(&mut s, &ip_b, T0 + 30_000), Verdict::Allowed(_)));
        assert!(s.windows.contains_key("minute@a"));
        assert!(matches!(run(&mut s, &ip_b, T0 + 62_000), Verdict::Allowed(_)));
        assert!(!s.windows.contains_key("minute@a") && !s.spans.contains_key("minute@a"), "{s:?}");
    }

    #[test]
    fn a_refund_gives_back_exactly_one_request() {
        let l = [lim("minute", 2, 60), lim("hour", 5, 3600)];
        let mut s = State::default();
        assert!(matches!(run(&mut s, &l, T0), Verdict::Allowed(_)));
        assert!(matches!(run(&mut s, &l, T0 + 10), Verdict::Allowed(_)));
        assert!(matches!(run(&mut s, &l, T0 + 20), Verdict::Limited { .. }));
        s = refund(&s, &["minute", "hour"], T0 + 10);
        assert!(matches!(run(&mut s, &l, T0 + 30), Verdict::Allowed(_)));
        assert!(matches!(run(&mut s, &l, T0 + 40), Verdict::Limited { .. }));
        assert_eq!(in_window(&s.windows["hour"], &l[1], T0 + 40), 2);
        // A refund for a time nothing was counted at changes nothing.
        assert_eq!(refund(&s, &["minute"], T0 - 5000), s);
    }

    #[test]
    fn no_limits_admits() {
        let (v, _) = step(&State::default(), &[], T0);
        assert_eq!(v, Verdict::Allowed(None));
    }

    #[test]
    fn merge() {
        let d = [lim("minute", 60, 60)];
        assert_eq!(merge_limits(&d, &[]), d.to_vec());
        assert_eq!(merge_limits(&d, &[lim("minute", 10, 60)]), vec![lim("minute", 10, 60)]);
        assert_eq!(merge_limits(&d, &[lim("hour", 100, 3600)]), vec![lim("hour", 100, 3600), lim("minute", 60, 60)]);
    }

    #[test]
    fn validation() {
        assert!(lim("minute", 60, 60).validate().is_ok());
        for bad in [
            lim("", 1, 1),
            lim("Min", 1, 1),
            lim("m", 0, 1),
            lim("m", 1, 0),
            lim("m", MAX_LIMIT + 1, 1),
            lim("m", 1, MAX_WINDOW_SECONDS + 1),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    /// A small deterministic PRNG (xorshift64*) for the property tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Property: over random arrival patterns and limit sets, no interval of
    /// length T ever holds more than N admitted requests, and each refusal's
    /// retry-after is exact (refused 1 ms before, admitted at).
    #[test]
    fn property_never_exceeds_and_retry_after_is_exact() {
        for seed in 1..=300u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let nlimits = 1 + rng.below(3) as usize;
            let limits: Vec<RateLimit> =
                (0..nlimits).map(|i| lim(&format!("l{i}"), 1 + rng.below(8) as u32, 1 + rng.below(5) as u32)).collect();
            let mut s = State::default();
            let mut now = T0 + rng.below(1000) as i64;
            let mut admitted: Vec<i64> = Vec::new();
            for _ in 0..400 {
                now += match rng.below(4) {
                    0 => 0,
                    1 => rng.below(20) as i64,
                    2 => rng.below(700) as i64,
                    _ => rng.below(4000) as i64,
                };
                let before = s.clone();
                match run(&mut s, &limits, now) {
                    Verdict::Allowed(_) => admitted.push(now),
                    Verdict::Limited { retry_after_ms, .. } => {
                        assert!(retry_after_ms > 0);
                        assert_eq!(
                            s.windows,
                            {
                                let mut p = before.clone();
                                prune(&mut p, &limits, now);
                                p.windows
                            },
                            "a refusal must not count"
                        );
                        let (v, _) = step(&before, &limits, now + retry_after_ms - 1);
                        assert!(matches!(v, Verdict::Limited { .. }), "seed {seed}: admitted before retry-after");
                        let (v, _) = step(&before, &limits, now + retry_after_ms);
                        assert!(matches!(v, Verdict::Allowed(_)), "seed {seed}: still refused at retry-after");
                    }
                }
            }
            for l in &limits {
                let t = i64::from(l.window_seconds) * 1000;
                for (i, &start) in admitted.iter().enumerate() {
                    let n = admitted[i..].iter().take_while(|&&x| x < start + t).count();
                    assert!(n <= l.limit as usize, "seed {seed}: {n} admitted within {t} ms, limit {}", l.limit);
                }
            }
        }
    }

    #[test]
    fn a_burst_gets_exactly_n() {
        let l = [lim("minute", 20, 60)];
        let mut s = State::default();
        let admitted = (0..100).filter(|_| matches!(run(&mut s, &l, T0), Verdict::Allowed(_))).count();
        assert_eq!(admitted, 20);
    }
}
