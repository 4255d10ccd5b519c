//! Rate-limit arithmetic: an exact sliding-window limiter with bounded
//! memory, and the reservations that leases are made of. Pure: the key's
//! Durable Object owns the [`Ledger`]s and passes its clock in.
//!
//! # Algorithm, and why
//! Each limit (`N` per `T`) keeps the requests it counted in time buckets of
//! width `T/60` (at least 1 ms). A request is admitted only if `N` minus the
//! count of every bucket that *may* overlap the last `T` leaves room.
//! Counting a partly-overlapping bucket in full is conservative, so the
//! guarantee is strict: **in any interval of length `T` at most `N` requests
//! are admitted** — no fixed-window burst of `2N` at a boundary, and unlike
//! GCRA (a burst of `N`, then continuous refill: up to `2N − 1` in one
//! window) the promise holds for every window. Capacity returns in steps of
//! `T/60` rather than continuously. Memory is bounded by the bucket count.
//!
//! All limits of a key are checked together and consumed all-or-nothing: a
//! request refused by the hourly limit consumes nothing from the minute
//! limit. Limits travel with each check and buckets describe themselves
//! (start and end), so changing a limit's value or window neither resets
//! nor orphans its counters.
//!
//! # Reservations (leases)
//! A lease lets an isolate admit up to `k` requests during `[g, e]` without
//! asking. The ledger counts those `k` **at `e`**, the end of the interval
//! in which they may be used, and checks room at the grant time `g` counting
//! every bucket whose time is still within `T` of `g` — buckets in the
//! future included. Why that is exact: take any window `W` of length `T` and
//! the last grant `t*` whose interval meets `W`. Every earlier interval that
//! meets `W` ends at or after `W`'s start, which is at or after `t* − T + 1`,
//! so the check at `t*` counted it in full; the check admitted only if all
//! of them plus the new grant fit in `N`. A lease that ends early gives back
//! what it did not use ([`Ledger::remove`]) and moves what it used to the
//! time it ended ([`Ledger::add`] at that time): intervals only shrink, which
//! keeps every earlier check a true upper bound. A strict check is the
//! special case `k = 1`, `e = g`.
//!
//! Time is Unix milliseconds. A clock that goes backwards is clamped to the
//! latest time seen, which can only make the limiter stricter.

use serde::{Deserialize, Serialize};

use crate::vecmap::VecMap;

/// Buckets per window.
pub const BUCKETS_PER_WINDOW: i64 = 60;
/// Most limits one key may have.
pub const MAX_LIMITS: usize = 4;
/// Largest `limit` value.
pub const MAX_LIMIT: u32 = 1_000_000;
/// Longest window: 31 days.
pub const MAX_WINDOW_SECONDS: u32 = 31 * 86_400;
/// Most buckets one limit name keeps. A strict limiter needs at most 61;
/// reservations at lease ends add a few more. Past this, the two oldest
/// buckets are merged into one spanning both, which only counts them for
/// longer (stricter), so a ledger's size is bounded whatever happens.
pub const MAX_BUCKETS: usize = 128;
/// Most bytes one bucket takes in the stored form: three integers (a start
/// delta and a width of at most 10 digits within a 31-day window, a count
/// of at most 7) and their separators.
pub const BUCKET_MAX_BYTES: usize = 30;

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
    /// "unlimited"; a window out of range would overflow). The guard applies
    /// it to every limit it is sent.
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

    /// The window in milliseconds.
    pub fn window_ms(&self) -> i64 {
        i64::from(self.window_seconds) * 1000
    }

    fn bucket_ms(&self) -> i64 {
        (self.window_ms() / BUCKETS_PER_WINDOW).max(1)
    }
}

/// How many visitors, at least, it must take to exhaust each of a widget
/// key's limits: a visitor's own limits may let it use at most this share
/// of any key limit (see [`check_visitor_limits`]).
pub const MIN_VISITORS_PER_KEY_LIMIT: u64 = 4;

/// The most one visitor can be admitted within `window_seconds` under
/// `visitor` limits (each limit of `m` per `u` seconds allows at most
/// `m * ceil(window / u)` in any window of that length).
pub fn visitor_max_within(visitor: &[RateLimit], window_seconds: u32) -> Option<u64> {
    visitor.iter().map(|v| u64::from(v.limit) * u64::from(window_seconds.div_ceil(v.window_seconds.max(1)))).min()
}

/// Whether a widget key's per-visitor limits stay well below its own: for
/// every key limit of `n` per `w` seconds, one visitor may get at most
/// `n / MIN_VISITORS_PER_KEY_LIMIT` within `w`, so a few addresses cannot
/// exhaust the site's budget. There must be visitor limits, named apart
/// from the key's. The error says what to change.
pub fn check_visitor_limits(key: &[RateLimit], visitor: &[RateLimit]) -> Result<(), String> {
    if visitor.is_empty() {
        return Err(
            "a widget key needs per-visitor limits (visitor_rate_limits, or the policy's widget_ip_rate_limits)".into(),
        );
    }
    if let Some(v) = visitor.iter().find(|v| key.iter().any(|k| k.name == v.name)) {
        return Err(format!("the per-visitor limit {:?} must be named apart from the key's limits", v.name));
    }
    for k in key {
        let most = visitor_max_within(visitor, k.window_seconds).unwrap_or(u64::MAX);
        if most.saturating_mul(MIN_VISITORS_PER_KEY_LIMIT) > u64::from(k.limit) {
            return Err(format!(
                "one visitor could use {most} of the key's {} per {} s ({:?}); per-visitor limits must leave at least {MIN_VISITORS_PER_KEY_LIMIT} visitors' worth (lower visitor_rate_limits or raise rate_limits)",
                k.limit, k.window_seconds, k.name
            ));
        }
    }
    Ok(())
}

/// Merges a key's own limits over the defaults: same name overrides, new
/// names add. Sorted by name for a stable order.
pub fn merge_limits(defaults: &[RateLimit], own: &[RateLimit]) -> Vec<RateLimit> {
    // A sorted map kept as a vector (no `BTreeMap` instantiation in the
    // wasm for these few limits).
    let mut by_name: VecMap<&str, &RateLimit> = VecMap::default();
    for l in defaults.iter().chain(own) {
        by_name.insert(l.name.as_str(), l);
    }
    by_name.values().map(|l| (*l).clone()).collect()
}

/// Requests counted in one bucket: at times in `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// First millisecond.
    pub start: i64,
    /// One past the last millisecond.
    pub end: i64,
    /// Requests counted in it (admitted, or reserved by a lease).
    pub count: u32,
}

impl Bucket {
    /// The first time at which this bucket no longer counts under a window
    /// of `span` ms: the first `t` with `end <= t - span + 1`.
    fn expires_at(&self, span: i64) -> i64 {
        self.end + span - 1
    }
}

/// The buckets of one limit name, ordered by start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// The window (ms) the name was last counted under, so that the buckets
    /// of a name absent from later checks are dropped once they can no
    /// longer count, not kept for the longest possible window.
    pub span_ms: i64,
    /// The buckets, ordered by start.
    pub buckets: Vec<Bucket>,
}

impl Window {
    /// Requests that count against `limit` for a request at `now`: every
    /// bucket that may hold a time inside `[now - T + 1, now]` or later.
    fn used(&self, limit: &RateLimit, now: i64) -> u64 {
        let from = now - limit.window_ms() + 1;
        self.buckets.iter().filter(|b| b.end > from).map(|b| u64::from(b.count)).sum()
    }

    /// Earliest time `>= now` at which `need` more fit under `limit`
    /// (`i64::MAX` if they never can).
    fn admit_at(&self, limit: &RateLimit, now: i64, need: u64) -> i64 {
        let cap = u64::from(limit.limit);
        if need > cap {
            return i64::MAX;
        }
        let mut used = self.used(limit, now);
        if used + need <= cap {
            return now;
        }
        let span = limit.window_ms();
        let mut live: Vec<&Bucket> = self.buckets.iter().filter(|b| b.expires_at(span) > now).collect();
        // At most MAX_BUCKETS (128) items.
        crate::sort_small_by_key(&mut live, |b| b.expires_at(span));
        for b in live {
            used -= u64::from(b.count);
            if used + need <= cap {
                return b.expires_at(span);
            }
        }
        now
    }

    fn quota(&self, limit: &RateLimit, now: i64) -> Quota {
        let used = self.used(limit, now);
        let span = limit.window_ms();
        let oldest = self.buckets.iter().map(|b| b.expires_at(span)).filter(|&t| t > now).min();
        Quota {
            name: limit.name.clone(),
            limit: limit.limit,
            remaining: u32::try_from(u64::from(limit.limit).saturating_sub(used)).unwrap_or(u32::MAX),
            reset_ms: oldest.map_or(0, |t| t - now),
        }
    }
}

/// The counters of one key (or of one visitor of a widget key).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    /// Latest time seen (ms); earlier clocks are clamped to it.
    pub last_ms: i64,
    /// Buckets per limit name.
    pub windows: VecMap<String, Window>,
}

/// What the limiter decided for one request.
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

/// The tightest quota: least remaining, then the latest reset.
pub fn tightest(quotas: impl IntoIterator<Item = Quota>) -> Option<Quota> {
    quotas.into_iter().min_by(|a, b| a.remaining.cmp(&b.remaining).then(b.reset_ms.cmp(&a.reset_ms)))
}

/// Most bytes the stored form of a ledger under `limits` takes (each name
/// holds at most `min(limit + 1, MAX_BUCKETS)` live buckets: every live
/// bucket counts at least one request and at most `limit` count at once).
pub fn ledger_bound(limits: &[RateLimit]) -> usize {
    32 + limits
        .iter()
        .map(|l| 2 * l.name.len() + 60 + (l.limit as usize + 1).min(MAX_BUCKETS) * BUCKET_MAX_BYTES)
        .sum::<usize>()
}

impl Ledger {
    /// Clamps `now` to the latest time seen and records it.
    pub fn clamp(&mut self, now: i64) -> i64 {
        self.last_ms = self.last_ms.max(now);
        self.last_ms
    }

    /// Whether nothing is counted.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// How many more requests fit under every limit at `now`
    /// (`u64::MAX` without limits).
    pub fn room(&self, limits: &[RateLimit], now: i64) -> u64 {
        limits
            .iter()
            .map(|l| {
                let used = self.windows.get(&l.name).map_or(0, |w| w.used(l, now));
                u64::from(l.limit).saturating_sub(used)
            })
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Earliest time `>= now` at which `need` more requests fit under every
    /// limit (`i64::MAX` if never).
    pub fn admit_at(&self, limits: &[RateLimit], now: i64, need: u64) -> i64 {
        let empty = Window::default();
        limits.iter().map(|l| self.windows.get(&l.name).unwrap_or(&empty).admit_at(l, now, need)).max().unwrap_or(now)
    }

    /// The tightest quota at `now` (none without limits).
    pub fn quota(&self, limits: &[RateLimit], now: i64) -> Option<Quota> {
        let empty = Window::default();
        tightest(limits.iter().map(|l| self.windows.get(&l.name).unwrap_or(&empty).quota(l, now)))
    }

    /// The tightest of the limits that would refuse `need` more at `now`.
    pub fn refusing_quota(&self, limits: &[RateLimit], now: i64, need: u64) -> Option<Quota> {
        let empty = Window::default();
        tightest(limits.iter().filter_map(|l| {
            let w = self.windows.get(&l.name).unwrap_or(&empty);
            (w.admit_at(l, now, need) > now).then(|| w.quota(l, now))
        }))
    }

    /// Counts `n` requests at time `at` under every limit (at a future time
    /// for a lease's reservation).
    pub fn add(&mut self, limits: &[RateLimit], at: i64, n: u32) {
        if n == 0 {
            return;
        }
        for l in limits {
            let width = l.bucket_ms();
            let start = at - at.rem_euclid(width);
            let w = self.windows.get_or_insert_with(l.name.clone(), Window::default);
            w.span_ms = l.window_ms();
            match w.buckets.binary_search_by_key(&(start, start + width), |b| (b.start, b.end)) {
                Ok(i) => w.buckets[i].count = w.buckets[i].count.saturating_add(n),
                Err(i) => w.buckets.insert(i, Bucket { start, end: start + width, count: n }),
            }
            if w.buckets.len() > MAX_BUCKETS {
                let second = w.buckets.remove(1);
                let first = &mut w.buckets[0];
                first.end = first.end.max(second.end);
                first.count = first.count.saturating_add(second.count);
            }
        }
    }

    /// Takes back up to `n` requests counted at time `at` under each of
    /// `names` (a refund, or the unused part of a lease). Only ever lowers
    /// counts of requests that were not served, so the limit still holds
    /// for those that were. A bucket already dropped changes nothing: it no
    /// longer counts anyway.
    pub fn remove<'a>(&mut self, names: impl IntoIterator<Item = &'a str>, at: i64, n: u32) {
        for name in names {
            let Some(w) = self.windows.get_mut(name) else { continue };
            let mut left = n;
            for b in w.buckets.iter_mut().filter(|b| b.start <= at && at < b.end) {
                let take = left.min(b.count);
                b.count -= take;
                left -= take;
                if left == 0 {
                    break;
                }
            }
            w.buckets.retain(|b| b.count > 0);
        }
        self.windows.retain(|_, w| !w.buckets.is_empty());
    }

    /// Drops buckets that can no longer count: under the current limit of
    /// that name, or, for a name not in `limits`, under the window it was
    /// last counted under.
    pub fn prune(&mut self, limits: &[RateLimit], now: i64) {
        self.windows.retain(|name, w| {
            let span = limits.iter().find(|l| &l.name == name).map_or(w.span_ms, RateLimit::window_ms);
            w.buckets.retain(|b| b.expires_at(span) > now);
            !w.buckets.is_empty()
        });
    }

    /// A strict check: counts one request at `now` if every limit admits it.
    pub fn step(&mut self, limits: &[RateLimit], now: i64) -> Verdict {
        let now = self.clamp(now);
        self.prune(limits, now);
        if self.room(limits, now) >= 1 {
            self.add(limits, now, 1);
            return Verdict::Allowed(self.quota(limits, now));
        }
        let retry_after_ms = self.admit_at(limits, now, 1) - now;
        let q = self.refusing_quota(limits, now, 1).unwrap_or(Quota {
            name: String::new(),
            limit: 0,
            remaining: 0,
            reset_ms: 0,
        });
        // Reset never before the retry time (after a limit was lowered, the
        // oldest counted bucket may expire before room opens up).
        let quota = Quota { remaining: 0, reset_ms: q.reset_ms.max(retry_after_ms), ..q };
        Verdict::Limited { retry_after_ms, quota }
    }
}

/// Whole seconds, rounded up, for `Retry-After` and `RateLimit-Reset`.
pub fn ceil_seconds(ms: i64) -> i64 {
    (ms.max(0) + 999) / 1000
}

/// The stored form of a [`Ledger`], one string: the latest time, then per
/// name its span and its buckets as `start − previous start . width . count`
/// triples (small integers), e.g.
/// `1800000000400|minute:60000:1800000000000.1000.3,2000.1000.1`. A row stays
/// a few hundred bytes, and no decoder beyond `str` parsing is needed.
impl Ledger {
    /// Encodes the ledger.
    pub fn encode(&self) -> String {
        use std::fmt::Write;
        let mut out = self.last_ms.to_string();
        for (name, w) in self.windows.iter() {
            let _ = write!(out, "|{name}:{}:", w.span_ms);
            let mut prev = 0;
            for (i, b) in w.buckets.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                let _ = write!(out, "{sep}{}.{}.{}", b.start - prev, b.end - b.start, b.count);
                prev = b.start;
            }
        }
        out
    }

    /// Decodes what [`Ledger::encode`] wrote; `None` if it is not that.
    pub fn decode(text: &str) -> Option<Ledger> {
        let mut parts = text.split('|');
        let mut ledger = Ledger { last_ms: parts.next()?.parse().ok()?, windows: VecMap::default() };
        for part in parts {
            let mut fields = part.splitn(3, ':');
            let (name, span, list) = (fields.next()?, fields.next()?, fields.next()?);
            let span_ms: i64 = span.parse().ok().filter(|&s| s > 0)?;
            if name.is_empty()
                || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            {
                return None;
            }
            let mut buckets = Vec::new();
            let mut prev = 0i64;
            for t in list.split(',') {
                let mut n = t.split('.').map(str::parse::<i64>);
                let (Some(Ok(d)), Some(Ok(width)), Some(Ok(count)), None) = (n.next(), n.next(), n.next(), n.next())
                else {
                    return None;
                };
                let start = prev.checked_add(d)?;
                let end = start.checked_add(width).filter(|_| width > 0)?;
                let count = u32::try_from(count).ok().filter(|&c| c > 0)?;
                buckets.push(Bucket { start, end, count });
                prev = start;
            }
            ledger.windows.insert(name.to_owned(), Window { span_ms, buckets });
        }
        Some(ledger)
    }
}

impl Serialize for Ledger {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.encode())
    }
}

impl<'de> Deserialize<'de> for Ledger {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ledger::decode(&text).ok_or_else(|| serde::de::Error::custom("malformed ledger"))
    }
}

/// Test helpers shared by the property tests of the core.
#[cfg(test)]
pub(crate) mod tests_support {
    /// A small deterministic PRNG (xorshift64*).
    pub(crate) struct Rng(pub(crate) u64);
    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(name: &str, limit: u32, window_seconds: u32) -> RateLimit {
        RateLimit { name: name.into(), limit, window_seconds }
    }

    const T0: i64 = 1_800_000_000_000;

    #[test]
    fn n_per_window_then_refused_with_exact_retry_after() {
        let l = [lim("minute", 3, 60)];
        let mut s = Ledger::default();
        for i in 0..3 {
            match s.step(&l, T0 + i) {
                Verdict::Allowed(Some(q)) => {
                    assert_eq!(q.remaining, 2 - i as u32);
                    assert_eq!(q.limit, 3);
                }
                v => panic!("{v:?}"),
            }
        }
        let Verdict::Limited { retry_after_ms, quota } = s.step(&l, T0 + 10) else { panic!() };
        assert_eq!(quota.remaining, 0);
        // All three fell in the bucket [T0, T0+1000): it stops counting at
        // T0 + 1000 + 60000 - 1.
        assert_eq!(retry_after_ms, 1000 + 60_000 - 1 - 10);
        assert!(matches!(s.clone().step(&l, T0 + 10 + retry_after_ms - 1), Verdict::Limited { .. }));
        assert!(matches!(s.step(&l, T0 + 10 + retry_after_ms), Verdict::Allowed(_)));
    }

    #[test]
    fn no_boundary_burst() {
        // A fixed window would admit 2N around a boundary.
        let l = [lim("minute", 10, 60)];
        let mut s = Ledger::default();
        let admitted =
            (T0 + 59_000..T0 + 61_000).step_by(10).filter(|&ms| matches!(s.step(&l, ms), Verdict::Allowed(_))).count();
        assert_eq!(admitted, 10);
    }

    #[test]
    fn all_or_nothing_across_limits() {
        let l = [lim("minute", 5, 60), lim("hour", 2, 3600)];
        let mut s = Ledger::default();
        assert!(matches!(s.step(&l, T0), Verdict::Allowed(_)));
        assert!(matches!(s.step(&l, T0 + 1), Verdict::Allowed(_)));
        for i in 0..5 {
            let Verdict::Limited { quota, .. } = s.step(&l, T0 + 2 + i) else { panic!() };
            assert_eq!(quota.name, "hour");
        }
        // The hourly refusals consumed nothing of the minute limit.
        assert_eq!(s.windows["minute"].used(&l[0], T0 + 10), 2);
        // With only the minute limit, three more fit.
        let only_minute = [lim("minute", 5, 60)];
        for i in 0..3 {
            assert!(matches!(s.step(&only_minute, T0 + 20 + i), Verdict::Allowed(_)));
        }
        assert!(matches!(s.step(&only_minute, T0 + 30), Verdict::Limited { .. }));
    }

    #[test]
    fn tightest_limit_is_reported() {
        let l = [lim("minute", 60, 60), lim("hour", 100, 3600)];
        let mut s = Ledger::default();
        let Verdict::Allowed(Some(q)) = s.step(&l, T0) else { panic!() };
        assert_eq!((q.name.as_str(), q.remaining), ("minute", 59));
        assert_eq!(q.reset_ms, 1000 + 60_000 - 1);
        assert_eq!(ceil_seconds(q.reset_ms), 61);
        let l2 = [lim("minute", 60, 60), lim("hour", 3, 3600)];
        let Verdict::Allowed(Some(q)) = s.step(&l2, T0 + 1) else { panic!() };
        assert_eq!((q.name.as_str(), q.remaining), ("hour", 1));
    }

    #[test]
    fn clock_going_backwards_is_clamped() {
        let l = [lim("s", 2, 1)];
        let mut s = Ledger::default();
        assert!(matches!(s.step(&l, T0 + 5000), Verdict::Allowed(_)));
        assert!(matches!(s.step(&l, T0 + 5000), Verdict::Allowed(_)));
        // An earlier clock cannot open a fresh window.
        assert!(matches!(s.step(&l, T0), Verdict::Limited { .. }));
        assert_eq!(s.last_ms, T0 + 5000);
    }

    #[test]
    fn changing_the_limit_keeps_counters() {
        let mut s = Ledger::default();
        for i in 0..5 {
            assert!(matches!(s.step(&[lim("minute", 10, 60)], T0 + i), Verdict::Allowed(_)));
        }
        // Lowered to 5: the 5 already counted still count.
        assert!(matches!(s.step(&[lim("minute", 5, 60)], T0 + 10), Verdict::Limited { .. }));
        // Raised to 6: exactly one more.
        assert!(matches!(s.step(&[lim("minute", 6, 60)], T0 + 11), Verdict::Allowed(_)));
        assert!(matches!(s.step(&[lim("minute", 6, 60)], T0 + 12), Verdict::Limited { .. }));
    }

    #[test]
    fn names_absent_from_later_checks_are_forgotten_after_their_window() {
        let mut s = Ledger::default();
        assert!(matches!(s.step(&[lim("a", 5, 60)], T0), Verdict::Allowed(_)));
        assert!(matches!(s.step(&[lim("b", 5, 60)], T0 + 30_000), Verdict::Allowed(_)));
        assert!(s.windows.contains_key("a"));
        assert!(matches!(s.step(&[lim("b", 5, 60)], T0 + 62_000), Verdict::Allowed(_)));
        assert!(!s.windows.contains_key("a"), "{s:?}");
    }

    #[test]
    fn a_refund_gives_back_exactly_one_request() {
        let l = [lim("minute", 2, 60), lim("hour", 5, 3600)];
        let mut s = Ledger::default();
        assert!(matches!(s.step(&l, T0), Verdict::Allowed(_)));
        assert!(matches!(s.step(&l, T0 + 10), Verdict::Allowed(_)));
        assert!(matches!(s.step(&l, T0 + 20), Verdict::Limited { .. }));
        s.remove(["minute", "hour"], T0 + 10, 1);
        assert!(matches!(s.step(&l, T0 + 30), Verdict::Allowed(_)));
        assert!(matches!(s.step(&l, T0 + 40), Verdict::Limited { .. }));
        assert_eq!(s.windows["hour"].used(&l[1], T0 + 40), 2);
        // A refund for a time nothing was counted at changes nothing.
        let before = s.clone();
        s.remove(["minute"], T0 - 5000, 1);
        assert_eq!(s, before);
    }

    #[test]
    fn a_reservation_counts_until_its_end_plus_the_window() {
        // A lease of 3 granted at T0 for 1 s: counted at T0 + 1000.
        let l = [lim("s10", 5, 10)];
        let width = 10_000 / BUCKETS_PER_WINDOW;
        let end_of = |at: i64| at - at.rem_euclid(width) + width;
        let mut s = Ledger::default();
        s.add(&l, T0 + 1000, 3);
        assert_eq!(s.room(&l, T0), 2);
        // Still counted 10 s after the grant (the lease may have been used
        // up to T0 + 1000), gone once T0 + 1000 is out of every window.
        assert_eq!(s.room(&l, T0 + 10_000), 2);
        assert_eq!(s.room(&l, end_of(T0 + 1000) + 10_000 - 2), 2);
        assert_eq!(s.room(&l, end_of(T0 + 1000) + 10_000 - 1), 5);
        // Two more fit now; then the retry time is the reservation's expiry.
        s.add(&l, T0, 2);
        assert_eq!(s.admit_at(&l, T0, 1), end_of(T0) + 10_000 - 1);
        assert_eq!(s.admit_at(&l, T0, 4), end_of(T0 + 1000) + 10_000 - 1);
        assert_eq!(s.admit_at(&l, T0, 6), i64::MAX);
        // The unused part of the lease is given back, the used part moved
        // to when the lease ended.
        s.remove(["s10"], T0 + 1000, 3);
        s.add(&l, T0 + 400, 1);
        assert_eq!(s.room(&l, T0 + 500), 2);
        assert_eq!(s.admit_at(&l, T0 + 500, 3), end_of(T0) + 10_000 - 1);
    }

    #[test]
    fn a_ledger_never_holds_more_than_max_buckets_per_name() {
        let l = [lim("s", 1_000_000, 1)];
        let mut s = Ledger::default();
        for i in 0..1000 {
            s.add(&l, T0 + i * 50, 1);
        }
        assert_eq!(s.windows["s"].buckets.len(), MAX_BUCKETS);
        assert_eq!(s.windows["s"].buckets.iter().map(|b| b.count).sum::<u32>(), 1000, "nothing is lost by merging");
        assert!(serde_json::to_string(&s).unwrap().len() <= ledger_bound(&l));
        // Merged buckets still give refunds back.
        s.remove(["s"], T0, 1);
        assert_eq!(s.windows["s"].buckets.iter().map(|b| b.count).sum::<u32>(), 999);
    }

    #[test]
    fn no_limits_admits() {
        assert_eq!(Ledger::default().step(&[], T0), Verdict::Allowed(None));
        assert_eq!(Ledger::default().room(&[], T0), u64::MAX);
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

    #[test]
    fn the_stored_form_round_trips_and_rejects_garbage() {
        let l = [lim("minute", 100, 60), lim("hour", 1000, 3600)];
        let mut s = Ledger::default();
        for i in 0..50 {
            let _ = s.step(&l, T0 + i * 777);
        }
        s.add(&l, T0 + 90_000, 7);
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Ledger>(&text).unwrap(), s);
        assert!(text.len() < 700, "{} bytes: {text}", text.len());
        assert_eq!(Ledger::decode(&Ledger::default().encode()), Some(Ledger::default()));
        for bad in [
            "",
            "x",
            "0|m:60000:1.2",
            "0|m:60000:1.0.3",
            "0|m:60000:1.5.0",
            "0|m:0:1.5.1",
            "0|m:60000:",
            "0|M:60000:1.5.1",
            "0|m:60000:1.5.1.4",
            "0|m:60000:9223372036854775807.5.1,9223372036854775807.5.1",
            "0|m:60000:9223372036854775807.5.1",
        ] {
            assert_eq!(Ledger::decode(bad), None, "{bad}");
            assert!(serde_json::from_str::<Ledger>(&serde_json::to_string(bad).unwrap()).is_err(), "{bad}");
        }
    }

    use super::tests_support::Rng;

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
            let mut s = Ledger::default();
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
                match s.step(&limits, now) {
                    Verdict::Allowed(_) => admitted.push(now),
                    Verdict::Limited { retry_after_ms, .. } => {
                        assert!(retry_after_ms > 0);
                        let mut pruned = before.clone();
                        pruned.prune(&limits, now);
                        assert_eq!(s.windows, pruned.windows, "a refusal must not count");
                        let v = before.clone().step(&limits, now + retry_after_ms - 1);
                        assert!(matches!(v, Verdict::Limited { .. }), "seed {seed}: admitted before retry-after");
                        let v = before.clone().step(&limits, now + retry_after_ms);
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
        let mut s = Ledger::default();
        let admitted = (0..100).filter(|_| matches!(s.step(&l, T0), Verdict::Allowed(_))).count();
        assert_eq!(admitted, 20);
    }

    #[test]
    fn visitor_limits_stay_well_below_the_key() {
        let l = |name: &str, limit: u32, w: u32| RateLimit { name: name.into(), limit, window_seconds: w };
        assert_eq!(visitor_max_within(&[l("v", 10, 60)], 60), Some(10));
        assert_eq!(visitor_max_within(&[l("v", 10, 60)], 3600), Some(600));
        assert_eq!(visitor_max_within(&[l("v", 10, 60)], 30), Some(10));
        assert_eq!(visitor_max_within(&[l("v", 10, 60), l("h", 100, 3600)], 3600), Some(100));
        assert_eq!(visitor_max_within(&[l("v", 10, 60)], 61), Some(20), "two minute windows overlap 61 s");
        assert!(check_visitor_limits(&[l("minute", 60, 60)], &[l("ip", 15, 60)]).is_ok());
        let e = check_visitor_limits(&[l("minute", 60, 60)], &[l("ip", 16, 60)]).unwrap_err();
        assert!(e.contains("one visitor could use 16 of the key's 60 per 60 s"), "{e}");
        // The old shipped pair (20/min per visitor, 60/min per key): 3 visitors exhaust it.
        assert!(check_visitor_limits(&[l("minute", 60, 60)], &[l("ip", 20, 60)]).is_err());
        // Every key limit counts: an hourly one too.
        assert!(check_visitor_limits(&[l("minute", 600, 60), l("hour", 1000, 3600)], &[l("ip", 10, 60)]).is_err());
        assert!(check_visitor_limits(
            &[l("minute", 600, 60), l("hour", 1000, 3600)],
            &[l("ip", 10, 60), l("ip_hour", 250, 3600)]
        )
        .is_ok());
        assert!(check_visitor_limits(&[l("minute", 60, 60)], &[]).is_err());
        assert!(check_visitor_limits(&[l("minute", 60, 60)], &[l("minute", 1, 60)]).is_err());
    }
}
