//! The key guard: what a key's Durable Object decides on each request —
//! revocation first, then the rate limits — and the usage it counts on the
//! way. Pure; the object supplies its stored [`GuardState`] and its clock and
//! stores what [`apply`] returns.
//!
//! One object per key id owns this state, single-threaded, so the counts are
//! exact however many requests arrive at once and wherever they come from,
//! and a revocation recorded here is refused on the very next check even
//! while KV still serves the old key record (KV propagation takes up to a
//! minute).
//!
//! Usage (allowed and refused requests per hour, and `last_used_at`) is
//! counted here because every request of a known key already visits this
//! object; the object rolls it up to the org's object in batches (an alarm),
//! so the hot path gains no extra hop.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ratelimit::{self, RateLimit, Verdict};

/// One hour, in milliseconds.
pub const HOUR_MS: i64 = 3_600_000;

/// Requests of one key in one hour.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageCounts {
    /// Admitted (proxied).
    pub allowed: u64,
    /// Admitted, then refunded (refused before the origin): subtracted from
    /// `allowed` where the counts are summed, which also works when the
    /// admission was already rolled up.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refunded: u64,
    /// Refused, by reason (`rate_limited`, `missing_scope`, …).
    #[serde(default)]
    pub refused: BTreeMap<String, u64>,
}

impl UsageCounts {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &UsageCounts) {
        self.allowed += other.allowed;
        self.refunded += other.refunded;
        for (k, v) in &other.refused {
            *self.refused.entry(k.clone()).or_default() += v;
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Usage not yet rolled up to the org.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingUsage {
    /// Counts per hour (start of the hour, ms).
    pub hours: BTreeMap<i64, UsageCounts>,
    /// Time of the last allowed request (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<i64>,
}

impl PendingUsage {
    /// Whether there is nothing to roll up.
    pub fn is_empty(&self) -> bool {
        self.hours.is_empty() && self.last_used_at.is_none()
    }
}

/// Everything a key's object stores.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardState {
    /// The key's identity, learned from the first request (for roll-ups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyRef>,
    /// The tombstone: when the key was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
    /// Rate-limit counters.
    #[serde(default)]
    pub limiter: ratelimit::State,
    /// Usage counted since the last roll-up began.
    #[serde(default)]
    pub usage: PendingUsage,
    /// The roll-up being delivered: its sequence number and counts. It is
    /// re-sent unchanged until the org acknowledges it; the org ignores a
    /// sequence number it has already applied, so nothing is counted twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inflight: Option<(u64, PendingUsage)>,
    /// Sequence number of the last roll-up begun.
    #[serde(default)]
    pub rollup_seq: u64,
}

/// Which key an object belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRef {
    /// Key id.
    pub key_id: String,
    /// Its org.
    pub org_id: String,
}

/// A request from the worker (or the org object) to a key's object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardRequest {
    /// Admit one request under these limits (they travel with the check).
    Check {
        /// The key.
        key: KeyRef,
        /// The key's effective limits.
        limits: Vec<RateLimit>,
    },
    /// The worker refused a request of this key (402–405); if the key is
    /// revoked the answer is [`GuardReply::Revoked`] instead, so a revoked
    /// key is never told apart from an unknown one. Counted as usage.
    Refused {
        /// The key.
        key: KeyRef,
        /// The refusal's error code, lowercase (`missing_scope`, …).
        reason: String,
    },
    /// Give back a request this object admitted (`Allowed { counted_at }`)
    /// that the worker then refused for another reason before the origin;
    /// counted as a refusal instead.
    Refund {
        /// The key.
        key: KeyRef,
        /// The limit names it was counted under.
        names: Vec<String>,
        /// `counted_at` of the `Allowed` reply.
        counted_at: i64,
        /// The refusal's error code, lowercase.
        reason: String,
    },
    /// Record the tombstone (idempotent: the first time wins).
    Revoke {
        /// Revocation time (ms).
        revoked_at: i64,
    },
}

/// The object's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardReply {
    /// Admitted and counted.
    Allowed {
        /// The tightest limit after this request.
        quota: Option<QuotaWire>,
        /// When it was counted (the object's clock), for a refund.
        counted_at: i64,
    },
    /// Refused by a rate limit; nothing counted against the limits.
    Limited {
        /// Milliseconds until the request would be admitted.
        retry_after_ms: i64,
        /// The tightest refusing limit.
        quota: QuotaWire,
    },
    /// The key is revoked.
    Revoked,
    /// A refusal was counted; the key is not revoked.
    RefusalRecorded,
    /// The tombstone is recorded.
    RevokeRecorded {
        /// The recorded time (the first revocation's).
        revoked_at: i64,
    },
    /// The request was invalid (e.g. a limit out of range): fail closed.
    Invalid {
        /// Why.
        reason: String,
    },
}

/// [`ratelimit::Quota`] on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaWire {
    /// Limit name.
    pub name: String,
    /// `RateLimit-Limit`.
    pub limit: u32,
    /// `RateLimit-Remaining`.
    pub remaining: u32,
    /// Milliseconds until `RateLimit-Reset`.
    pub reset_ms: i64,
}

impl From<ratelimit::Quota> for QuotaWire {
    fn from(q: ratelimit::Quota) -> Self {
        Self { name: q.name, limit: q.limit, remaining: q.remaining, reset_ms: q.reset_ms }
    }
}

impl QuotaWire {
    /// The `RateLimit-*` headers.
    pub fn headers(&self) -> [(&'static str, String); 3] {
        [
            ("RateLimit-Limit", self.limit.to_string()),
            ("RateLimit-Remaining", self.remaining.to_string()),
            ("RateLimit-Reset", ratelimit::ceil_seconds(self.reset_ms).to_string()),
        ]
    }
}

/// Most per-visitor limit names (`name@ip`) one key's object tracks at once.
pub const MAX_VISITORS: usize = 2_000;

/// Per-visitor limits of a visitor not yet tracked are skipped once
/// [`MAX_VISITORS`] are: the key's own limits still apply, and the object's
/// state (written on every request) stays bounded.
fn cap_visitors(limiter: &ratelimit::State, limits: &[RateLimit]) -> Vec<RateLimit> {
    let tracked = limiter.windows.keys().filter(|n| n.contains('@')).count();
    limits
        .iter()
        .filter(|l| !l.name.contains('@') || tracked < MAX_VISITORS || limiter.windows.contains_key(&l.name))
        .cloned()
        .collect()
}

fn count(state: &mut GuardState, now: i64, allowed: bool, reason: Option<&str>) {
    let hour = now - now.rem_euclid(HOUR_MS);
    let c = state.usage.hours.entry(hour).or_default();
    if allowed {
        c.allowed += 1;
        state.usage.last_used_at = Some(now);
    }
    if let Some(r) = reason {
        *c.refused.entry(r.to_owned()).or_default() += 1;
    }
}

/// Applies a request to the state. Returns the reply and, when the state
/// changed, the state to store.
pub fn apply(state: &GuardState, request: &GuardRequest, now_ms: i64) -> (GuardReply, Option<GuardState>) {
    let mut next = state.clone();
    let reply = match request {
        GuardRequest::Revoke { revoked_at } => {
            let t = *next.revoked_at.get_or_insert(*revoked_at);
            GuardReply::RevokeRecorded { revoked_at: t }
        }
        GuardRequest::Check { key, limits } => {
            if let Err(e) = limits.iter().try_for_each(RateLimit::validate_values) {
                // A limit out of range (e.g. 0 = unlimited) must never admit.
                return (GuardReply::Invalid { reason: e.to_owned() }, None);
            }
            next.key.get_or_insert_with(|| key.clone());
            if next.revoked_at.is_some() {
                count(&mut next, now_ms, false, Some("revoked"));
                GuardReply::Revoked
            } else {
                let limits = cap_visitors(&state.limiter, limits);
                let (verdict, limiter) = ratelimit::step(&state.limiter, &limits, now_ms);
                next.limiter = limiter;
                match verdict {
                    Verdict::Allowed(q) => {
                        count(&mut next, now_ms, true, None);
                        GuardReply::Allowed { quota: q.map(Into::into), counted_at: next.limiter.last_ms }
                    }
                    Verdict::Limited { retry_after_ms, quota } => {
                        count(&mut next, now_ms, false, Some("rate_limited"));
                        GuardReply::Limited { retry_after_ms, quota: quota.into() }
                    }
                }
            }
        }
        GuardRequest::Refund { key, names, counted_at, reason } => {
            next.key.get_or_insert_with(|| key.clone());
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            next.limiter = ratelimit::refund(&state.limiter, &names, *counted_at);
            let hour = counted_at - counted_at.rem_euclid(HOUR_MS);
            let c = next.usage.hours.entry(hour).or_default();
            c.refunded += 1;
            *c.refused.entry(reason.clone()).or_default() += 1;
            GuardReply::RefusalRecorded
        }
        GuardRequest::Refused { key, reason } => {
            next.key.get_or_insert_with(|| key.clone());
            if next.revoked_at.is_some() {
                count(&mut next, now_ms, false, Some("revoked"));
                GuardReply::Revoked
            } else {
                count(&mut next, now_ms, false, Some(reason));
                GuardReply::RefusalRecorded
            }
        }
    };
    let changed = next != *state;
    (reply, changed.then_some(next))
}

/// The roll-up to deliver now: the one in flight if the last delivery was
/// not acknowledged, else the pending usage under the next sequence number
/// (pending is then empty again). `None` when there is nothing to send.
pub fn begin_rollup(state: &GuardState) -> (Option<(u64, PendingUsage)>, GuardState) {
    let mut next = state.clone();
    if next.inflight.is_none() && !next.usage.is_empty() {
        next.rollup_seq += 1;
        next.inflight = Some((next.rollup_seq, std::mem::take(&mut next.usage)));
    }
    (next.inflight.clone(), next)
}

/// The org acknowledged roll-up `seq`.
pub fn finish_rollup(state: &GuardState, seq: u64) -> GuardState {
    let mut next = state.clone();
    if next.inflight.as_ref().is_some_and(|(s, _)| *s == seq) {
        next.inflight = None;
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000;

    fn key() -> KeyRef {
        KeyRef { key_id: "01KEY".into(), org_id: "org_1".into() }
    }

    fn check(n: u32) -> GuardRequest {
        GuardRequest::Check {
            key: key(),
            limits: vec![RateLimit { name: "minute".into(), limit: n, window_seconds: 60 }],
        }
    }

    #[test]
    fn revocation_wins_over_everything_and_is_idempotent() {
        let s = GuardState::default();
        let (r, s2) = apply(&s, &check(5), T0);
        assert!(matches!(r, GuardReply::Allowed { quota: Some(QuotaWire { remaining: 4, .. }), counted_at: T0 }));
        let s2 = s2.unwrap();
        assert_eq!(s2.key, Some(key()));
        let (r, s3) = apply(&s2, &GuardRequest::Revoke { revoked_at: T0 + 1 }, T0 + 1);
        assert_eq!(r, GuardReply::RevokeRecorded { revoked_at: T0 + 1 });
        let s3 = s3.unwrap();
        let (r, _) = apply(&s3, &check(5), T0 + 2);
        assert_eq!(r, GuardReply::Revoked);
        let (r, _) = apply(&s3, &GuardRequest::Refused { key: key(), reason: "missing_scope".into() }, T0 + 2);
        assert_eq!(r, GuardReply::Revoked, "a revoked key is never answered as merely refused");
        let (r, none) = apply(&s3, &GuardRequest::Revoke { revoked_at: T0 + 9 }, T0 + 9);
        assert_eq!((r, none), (GuardReply::RevokeRecorded { revoked_at: T0 + 1 }, None));
    }

    #[test]
    fn limited_reply_and_headers() {
        let mut s = GuardState::default();
        for _ in 0..2 {
            s = apply(&s, &check(2), T0).1.unwrap();
        }
        let (r, _) = apply(&s, &check(2), T0 + 500);
        let GuardReply::Limited { retry_after_ms, quota } = r else { panic!("{r:?}") };
        assert_eq!(retry_after_ms, 1000 + 60_000 - 1 - 500);
        assert_eq!(
            quota.headers(),
            [
                ("RateLimit-Limit", "2".to_owned()),
                ("RateLimit-Remaining", "0".to_owned()),
                ("RateLimit-Reset", "61".to_owned())
            ]
        );
    }

    #[test]
    fn per_visitor_limit_names_are_accepted() {
        let ip = GuardRequest::Check {
            key: key(),
            limits: vec![
                RateLimit { name: "minute".into(), limit: 5, window_seconds: 60 },
                RateLimit { name: "ip_minute@2001:db8::1".into(), limit: 2, window_seconds: 60 },
                RateLimit { name: "ip_minute@203.0.113.7".into(), limit: 2, window_seconds: 60 },
            ],
        };
        let (r, _) = apply(&GuardState::default(), &ip, T0);
        assert!(matches!(r, GuardReply::Allowed { quota: Some(_), .. }), "{r:?}");
    }

    #[test]
    fn a_refund_returns_quota_and_recounts_usage() {
        let mut s = GuardState::default();
        let (r, n) = apply(&s, &check(1), T0);
        s = n.unwrap();
        let GuardReply::Allowed { counted_at, .. } = r else { panic!("{r:?}") };
        assert!(matches!(apply(&s, &check(1), T0 + 1).0, GuardReply::Limited { .. }));
        let refund = GuardRequest::Refund {
            key: key(),
            names: vec!["minute".into()],
            counted_at,
            reason: "baa_required".into(),
        };
        s = apply(&s, &refund, T0 + 2).1.unwrap();
        assert!(matches!(apply(&s, &check(1), T0 + 3).0, GuardReply::Allowed { .. }));
        let hour = T0 - T0.rem_euclid(HOUR_MS);
        let c = &s.usage.hours[&hour];
        assert_eq!((c.allowed, c.refunded), (1, 1), "net allowed 0 when summed");
        assert_eq!(c.refused.get("baa_required"), Some(&1));
        // A refund that arrives after its admission was rolled up still nets out.
        let (_, rolled) = begin_rollup(&s);
        let rolled = finish_rollup(&rolled, 1);
        let refund2 = GuardRequest::Refund {
            key: key(),
            names: vec!["minute".into()],
            counted_at,
            reason: "baa_required".into(),
        };
        let after = apply(&rolled, &refund2, T0 + 4).1.unwrap();
        assert_eq!(after.usage.hours[&hour].refunded, 1);
        assert_eq!(after.usage.hours[&hour].allowed, 0);
    }

    #[test]
    fn visitor_names_are_capped() {
        let mut s = GuardState::default();
        let visitor = |i: usize| GuardRequest::Check {
            key: key(),
            limits: vec![
                RateLimit { name: "minute".into(), limit: 1_000_000, window_seconds: 60 },
                RateLimit { name: format!("ip_minute@10.0.{}.{}", i / 256, i % 256), limit: 1, window_seconds: 60 },
            ],
        };
        for i in 0..MAX_VISITORS + 50 {
            s = apply(&s, &visitor(i), T0 + i as i64).1.unwrap();
        }
        assert_eq!(s.limiter.windows.keys().filter(|n| n.contains('@')).count(), MAX_VISITORS);
        // A tracked visitor is still limited.
        assert!(matches!(apply(&s, &visitor(0), T0 + 5_000).0, GuardReply::Limited { .. }));
    }

    #[test]
    fn invalid_limits_never_admit() {
        let zero = GuardRequest::Check {
            key: key(),
            limits: vec![RateLimit { name: "m".into(), limit: 0, window_seconds: 60 }],
        };
        let (r, none) = apply(&GuardState::default(), &zero, T0);
        assert!(matches!(r, GuardReply::Invalid { .. }) && none.is_none());
    }

    #[test]
    fn usage_is_counted_per_hour_and_taken_for_roll_up() {
        let mut s = GuardState::default();
        for i in 0..3 {
            s = apply(&s, &check(2), T0 + i).1.unwrap();
        }
        s = apply(&s, &GuardRequest::Refused { key: key(), reason: "missing_scope".into() }, T0 + HOUR_MS).1.unwrap();
        let hour0 = T0 - T0.rem_euclid(HOUR_MS);
        let c0 = &s.usage.hours[&hour0];
        assert_eq!(c0.allowed, 2);
        assert_eq!(c0.refused.get("rate_limited"), Some(&1));
        let c1 = &s.usage.hours[&(hour0 + HOUR_MS)];
        assert_eq!((c1.allowed, c1.refused.get("missing_scope")), (0, Some(&1)));
        assert_eq!(s.usage.last_used_at, Some(T0 + 1));
        // A roll-up begins; one more request arrives while it is in flight.
        let (batch, s2) = begin_rollup(&s);
        let (seq, sent) = batch.unwrap();
        assert_eq!((seq, sent.hours.len()), (1, 2));
        assert!(s2.usage.is_empty());
        let s3 = apply(&s2, &check(5), T0 + 2).1.unwrap();
        assert_eq!(s3.usage.hours[&hour0], UsageCounts { allowed: 1, ..Default::default() });
        // Not acknowledged: the same batch is sent again, unchanged.
        let (again, s4) = begin_rollup(&s3);
        assert_eq!(again, Some((1, sent.clone())));
        // Acknowledged: the next roll-up carries only the new request.
        let s5 = finish_rollup(&s4, 1);
        assert!(s5.inflight.is_none());
        let (next_batch, _) = begin_rollup(&s5);
        let (seq2, rest) = next_batch.unwrap();
        assert_eq!(seq2, 2);
        assert_eq!(rest.hours[&hour0].allowed, 1);
        assert_eq!(rest.last_used_at, Some(T0 + 2));
        assert_eq!(s5.limiter, s3.limiter, "rolling up keeps the counters");
    }

    #[test]
    fn wire_format_round_trips() {
        let req = check(3);
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(
            json,
            r#"{"check":{"key":{"key_id":"01KEY","org_id":"org_1"},"limits":[{"name":"minute","limit":3,"window_seconds":60}]}}"#
        );
        assert_eq!(serde_json::from_str::<GuardRequest>(&json).unwrap(), req);
        assert_eq!(serde_json::to_string(&GuardReply::Revoked).unwrap(), r#""revoked""#);
    }
}
