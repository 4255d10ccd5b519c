//! Credits: a usage-limited key's exact ledger, kept by the key's guard.
//!
//! A key created (or updated) with `"credits": {"remaining": N, "refill":
//! {"amount": M, "interval": "hourly"|"daily"|"monthly"}}` spends the
//! matched route's `cost` (policy, default 1) on every authorized request.
//! The record holds the *setting* ([`CreditSpec`], stamped with when it was
//! set); the live count is the guard's ([`CreditLedger`]), one object per key
//! (and per roll family: a rolled key keeps its ledger), single-threaded, so
//! no more than `remaining` is ever admitted however many requests arrive at
//! once. Leases reserve credits as they reserve units, and give back what
//! their isolate did not spend.
//!
//! Refill: at the start of every interval (UTC: the hour, the day at 00:00,
//! the first of the month at 00:00) the count *becomes* `amount` — unused
//! credits do not accumulate (a top-up is a PATCH, which sets the count).

use serde::{Deserialize, Serialize};

/// Largest `remaining` and refill `amount` (2^40 ≈ 10^12: exact through a
/// JavaScript number, far beyond any plan).
pub const MAX_CREDITS: u64 = 1 << 40;
/// Largest `cost` of a route.
pub const MAX_COST: u32 = 1_000;

/// How often credits refill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interval {
    /// At the start of every hour (UTC).
    Hourly,
    /// At 00:00 UTC every day.
    Daily,
    /// At 00:00 UTC on the first of every month.
    Monthly,
}

impl Interval {
    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Interval> {
        match s {
            "hourly" => Some(Interval::Hourly),
            "daily" => Some(Interval::Daily),
            "monthly" => Some(Interval::Monthly),
            _ => None,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Interval::Hourly => "hourly",
            Interval::Daily => "daily",
            Interval::Monthly => "monthly",
        }
    }

    /// Start (ms) of the interval holding `at` (ms, UTC).
    pub fn start(self, at: i64) -> i64 {
        const DAY: i64 = 86_400_000;
        match self {
            Interval::Hourly => at - at.rem_euclid(3_600_000),
            Interval::Daily => at - at.rem_euclid(DAY),
            Interval::Monthly => {
                let (y, m, _) = civil(at.div_euclid(DAY));
                days_from_civil(y, m, 1) * DAY
            }
        }
    }

    /// Start (ms) of the interval after the one holding `at`.
    pub fn next(self, at: i64) -> i64 {
        match self {
            Interval::Hourly => self.start(at) + 3_600_000,
            Interval::Daily => self.start(at) + 86_400_000,
            // 32 days past a month's first day is always in the next month.
            Interval::Monthly => self.start(self.start(at) + 32 * 86_400_000),
        }
    }
}

/// Year, month (1-12), day of a day count since 1970-01-01 (proleptic
/// Gregorian; Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days since 1970-01-01 of a date (the inverse of [`civil`]).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A refill: the count becomes `amount` at the start of every interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refill {
    /// The count after a refill.
    pub amount: u64,
    /// When.
    pub interval: Interval,
}

/// A key's credit setting, as its record holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditSpec {
    /// The count when it was set.
    pub remaining: u64,
    /// The refill, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill: Option<Refill>,
    /// When it was set (ms): a guard holding an older setting's count
    /// starts again from this one; the same setting (a rolled key's, or a
    /// stale record's) never resets the count.
    pub set_at: i64,
}

/// The live count, as the guard holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditLedger {
    /// Credits left (after every admission and live reservation).
    pub remaining: u64,
    /// The setting this count started from (its `set_at`).
    pub set_at: i64,
    /// The refill, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill: Option<Refill>,
    /// Start of the interval last refilled (or set).
    pub refilled_at: i64,
    /// The first moment (the guard's clock) whose spending counts against
    /// the current count: credits spent before it are never given back (the
    /// count was set anew since — a refill, a top-up).
    #[serde(default)]
    pub restarted_at: i64,
}

impl CreditLedger {
    /// A count starting from `spec`; spending from `restarted_at` on counts
    /// against it.
    pub fn from_spec(spec: &CreditSpec, restarted_at: i64) -> CreditLedger {
        let refilled_at = spec.refill.map_or(spec.set_at, |r| r.interval.start(spec.set_at));
        CreditLedger { remaining: spec.remaining, set_at: spec.set_at, refill: spec.refill, refilled_at, restarted_at }
    }

    /// Adopts `spec` (at `now`, the guard's clock) if it is newer than the
    /// setting this count started from; returns whether the ledger changed.
    /// A first count covers all spending; a replaced one, spending after
    /// `now` only (within the same millisecond the order is unknown: the
    /// strict side keeps what was spent then).
    pub fn adopt(ledger: &mut Option<CreditLedger>, spec: &CreditSpec, now: i64) -> bool {
        if ledger.is_some_and(|l| l.set_at >= spec.set_at) {
            return false;
        }
        let from = if ledger.is_some() { now.saturating_add(1) } else { i64::MIN };
        *ledger = Some(CreditLedger::from_spec(spec, from));
        true
    }

    /// Applies the refills due at `now`; returns whether the count changed.
    pub fn refill(&mut self, now: i64) -> bool {
        let Some(r) = self.refill else { return false };
        let start = r.interval.start(now);
        if start <= self.refilled_at {
            return false;
        }
        self.refilled_at = start;
        // Applied before anything is spent at or after the interval's start.
        self.restarted_at = self.restarted_at.max(start);
        self.remaining = r.amount;
        true
    }

    /// Milliseconds from `now` until the next refill, if there is one.
    pub fn next_refill_ms(&self, now: i64) -> Option<i64> {
        self.refill.map(|r| (r.interval.next(now) - now).max(1))
    }

    /// Spends `n` if that many are left (all or nothing).
    pub fn spend(&mut self, n: u64) -> bool {
        if self.remaining < n {
            return false;
        }
        self.remaining -= n;
        true
    }

    /// Gives `n` back: a refunded request, a lease's unspent reservation.
    /// Credits spent before the count started again (a refill, a top-up)
    /// are not given back: the count was set anew since.
    pub fn give_back(&mut self, n: u64, spent_at: i64) {
        if spent_at >= self.restarted_at {
            self.remaining = self.remaining.saturating_add(n).min(MAX_CREDITS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;
    const D: i64 = 24 * H;

    fn ms(y: i64, m: i64, d: i64) -> i64 {
        days_from_civil(y, m, d) * D
    }

    #[test]
    fn calendar_round_trips() {
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil(days);
            assert!((1..=12).contains(&m) && (1..=31).contains(&d));
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(ms(2024, 2, 29), 1_709_164_800_000);
        assert_eq!(ms(2026, 11, 26), 1_795_651_200_000);
    }

    #[test]
    fn interval_boundaries() {
        let t = ms(2024, 2, 29) + 13 * H + 5;
        assert_eq!(Interval::Hourly.start(t), ms(2024, 2, 29) + 13 * H);
        assert_eq!(Interval::Hourly.next(t), ms(2024, 2, 29) + 14 * H);
        assert_eq!(Interval::Daily.start(t), ms(2024, 2, 29));
        assert_eq!(Interval::Daily.next(t), ms(2024, 3, 1));
        assert_eq!(Interval::Monthly.start(t), ms(2024, 2, 1));
        assert_eq!(Interval::Monthly.next(t), ms(2024, 3, 1));
        // December rolls the year; the first instant of a month is its own start.
        assert_eq!(Interval::Monthly.next(ms(2025, 12, 31) + D - 1), ms(2026, 1, 1));
        assert_eq!(Interval::Monthly.start(ms(2026, 1, 1)), ms(2026, 1, 1));
        assert_eq!(Interval::Monthly.next(ms(2026, 1, 31)), ms(2026, 2, 1));
        for s in ["hourly", "daily", "monthly"] {
            assert_eq!(Interval::parse(s).map(Interval::as_str), Some(s));
        }
        assert_eq!(Interval::parse("weekly"), None);
    }

    #[test]
    fn spending_is_all_or_nothing_and_refills_set_the_count() {
        let set_at = ms(2026, 1, 15) + 10 * H + 30 * 60_000;
        let refill = Some(Refill { amount: 5, interval: Interval::Hourly });
        let mut l = CreditLedger::from_spec(&CreditSpec { remaining: 3, refill, set_at }, set_at);
        assert!(l.spend(2));
        assert!(!l.spend(2), "one left: a cost of two is refused whole");
        assert_eq!(l.remaining, 1);
        assert!(!l.refill(set_at + 29 * 60_000), "same hour: no refill");
        assert_eq!(l.next_refill_ms(set_at), Some(30 * 60_000));
        assert!(l.refill(set_at + 30 * 60_000));
        assert_eq!(l.remaining, 5, "the count becomes the amount");
        // A refund of a request spent before the refill gives nothing back.
        l.give_back(2, set_at + 29 * 60_000);
        assert_eq!(l.remaining, 5);
        l.spend(1);
        l.give_back(1, set_at + 31 * 60_000);
        assert_eq!(l.remaining, 5);
        // Three idle hours: one refill, not three.
        l.spend(5);
        assert!(l.refill(set_at + 4 * H));
        assert_eq!(l.remaining, 5);
    }

    #[test]
    fn only_a_newer_setting_resets_the_count() {
        let spec = CreditSpec { remaining: 10, refill: None, set_at: 1_000 };
        let mut ledger = None;
        assert!(CreditLedger::adopt(&mut ledger, &spec, 1_000));
        ledger.as_mut().map(|l| l.spend(7));
        assert!(!CreditLedger::adopt(&mut ledger, &spec, 1_000), "the same setting (a rolled key's) keeps the count");
        assert!(!CreditLedger::adopt(&mut ledger, &CreditSpec { set_at: 999, ..spec }, 1_001));
        assert_eq!(ledger.map(|l| l.remaining), Some(3));
        assert!(CreditLedger::adopt(&mut ledger, &CreditSpec { remaining: 50, set_at: 2_000, ..spec }, 2_000));
        assert_eq!(ledger.map(|l| l.remaining), Some(50));
        let mut none = CreditLedger::from_spec(&spec, 0);
        assert_eq!(none.next_refill_ms(5), None);
        assert!(!none.refill(i64::MAX / 2));
        none.give_back(u64::MAX, 0);
        assert_eq!(none.remaining, MAX_CREDITS);
    }
}
