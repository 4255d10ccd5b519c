//! Review tests (adversarial) of the key guard's pure state machine. Tests
//! documented as "review finding, fixed" reproduced a finding of the review
//! of the leased-quota change and now guard its fix; the others pin down
//! what was checked and found sound.

use super::tests::{facts_of, key, lim, world, LEASE_MS, T0};
use super::*;
use crate::ratelimit::tests_support::Rng;
use crate::records::Consistency;
use crate::scope::Scope;
use crate::token::KeyKind;

fn record() -> KeyRecord {
    KeyRecord {
        name: "k".into(),
        kind: KeyKind::Widget,
        scopes: vec![Scope::parse("ai:chat").unwrap()],
        prefix: "kw_pub_".into(),
        last_four: "abcd".into(),
        consistency: Consistency::Leased,
        ..KeyRecord::synthetic("01KEY".into(), "org_1", T0 - 1000)
    }
}

fn facts(at: i64) -> FetchedFacts {
    facts_of(record(), at)
}

fn visitor_limits(ip: &str, key_limit: u32, visitor_limit: u32) -> Limits {
    Limits {
        key: vec![lim("minute", key_limit, 60)],
        visitor: Some(VisitorLimits { id: ip.into(), limits: vec![lim("ip_minute", visitor_limit, 60)] }),
        ..Limits::default()
    }
}

fn check_of(limits: Limits) -> GuardRequest {
    GuardRequest::Check { key: key(), limits, refusals: Refusals::new() }
}

fn lease_of(limits: Limits, want: u32) -> GuardRequest {
    GuardRequest::Lease {
        key: key(),
        limits,
        scope: Some("ai:chat".into()),
        want,
        report: None,
        refusals: Refusals::new(),
    }
}

fn ip(i: usize) -> String {
    format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)
}

// ------------------------------------------------------------------ findings

/// Review finding, fixed: past MAX_VISITORS the guard forgets the visitor seen longest
/// ago even while its counts are live. A visitor that spent its limit comes
/// back with a fresh one as soon as MAX_VISITORS other addresses were
/// admitted after it (an IPv6 /48 holds 65,536 /64s). README: "no visitor
/// ever skips its limit".
#[test]
fn review_a_visitor_forgotten_with_live_counts_skips_its_limit() {
    let w = world();
    let mut s = GuardState::default();
    let v = "203.0.113.7";
    for i in 0..2 {
        let r = s.apply(&check_of(visitor_limits(v, 1_000_000, 2)), &w.cx(T0 + i, None, 1)).0;
        assert!(matches!(r, GuardReply::Allowed { .. }));
    }
    let r = s.apply(&check_of(visitor_limits(v, 1_000_000, 2)), &w.cx(T0 + 2, None, 1)).0;
    assert!(matches!(r, GuardReply::Limited { key_wide: false, .. }), "{r:?}");
    // MAX_VISITORS other visitors within the same second.
    for i in 0..MAX_VISITORS {
        let _ = s.apply(&check_of(visitor_limits(&ip(i), 1_000_000, 2)), &w.cx(T0 + 3, None, 1));
    }
    let mut admitted = 0;
    for i in 0..5 {
        if let GuardReply::Allowed { .. } =
            s.apply(&check_of(visitor_limits(v, 1_000_000, 2)), &w.cx(T0 + 10 + i, None, 1)).0
        {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 0, "a visitor limited to 2 per minute got {} admitted within the same minute", 2 + admitted);
}

/// Review finding, fixed (same cause): a visitor forgotten while it holds a live lease
/// loses the reservation from its own ledger, so admitted + held exceeds
/// the visitor's limit; when that lease is then reported, its unused part
/// is taken out of the new row — counts of requests that were served.
#[test]
fn review_a_visitor_forgotten_while_its_lease_is_live_keeps_its_reservation() {
    let w = world();
    let mut s = GuardState::default();
    let v = "203.0.113.7";
    let f = facts(T0);
    let GuardReply::Leased { lease: Some(g), .. } =
        s.apply(&lease_of(visitor_limits(v, 1_000_000, 20), 10), &w.cx(T0, Some(&f), 99)).0
    else {
        panic!("a lease")
    };
    assert_eq!(g.reserved, 10);
    for i in 0..MAX_VISITORS {
        let _ = s.apply(&check_of(visitor_limits(&ip(i), 1_000_000, 20)), &w.cx(T0 + 1, None, 1));
    }
    // The lease is live (until T0 + LEASE_MS): 1 admitted + 10 held; at most 9
    // more may be admitted to the visitor within the minute.
    let mut admitted = 0;
    for i in 0..20 {
        if let GuardReply::Allowed { .. } =
            s.apply(&check_of(visitor_limits(v, 1_000_000, 20)), &w.cx(T0 + 2 + i, None, 1)).0
        {
            admitted += 1;
        }
    }
    assert!(admitted <= 9, "1 admitted + 10 held by a live lease + {admitted} more > 20 for the visitor");
}

/// Review finding, fixed: the guard clamps its clock to the latest time seen, but the
/// facts' time is the raw clock (`ensure_facts` stamps `now_ms()`). After
/// the object's clock steps back by LEASE_MS / 2 or more (the object moved,
/// NTP stepped), every lease request is refused as "a lease needs fresh
/// facts" — a 503 for every request of every leased key of that object —
/// until the raw clock catches up with the latest time seen. (With
/// LEASE_MS = 50, a 25 ms step.) Strict keys are unaffected.
#[test]
fn review_a_guard_clock_step_back_of_half_a_lease_refuses_every_lease() {
    let w = world();
    let mut s = GuardState::default();
    let limits = Limits { key: vec![lim("minute", 1_000, 60)], visitor: None, ..Limits::default() };
    let _ = s.apply(&check_of(limits.clone()), &w.cx(T0 + LEASE_MS, None, 1));
    // The clock steps back by LEASE_MS: the object fetches facts and stamps
    // them with its clamped clock, as `ensure_facts` does.
    let raw = T0;
    let f = facts(s.clock(raw));
    let r = s.apply(&lease_of(limits, 5), &w.cx(raw, Some(&f), 7)).0;
    assert!(matches!(r, GuardReply::Leased { counted_at: Some(_), .. }), "after a clock step back: {r:?}");
}

/// Review finding, fixed (guard side of a flow finding): a refund for a revoked key is
/// answered `Recorded`, which the isolate takes for "not revoked" (every
/// other report answers `Revoked` for a revoked key).
#[test]
fn review_a_refund_to_a_revoked_key_answers_revoked() {
    let w = world();
    let mut s = GuardState::default();
    let limits = Limits { key: vec![lim("minute", 10, 60)], visitor: None, ..Limits::default() };
    let GuardReply::Allowed { counted_at, .. } = s.apply(&check_of(limits.clone()), &w.cx(T0, None, 1)).0 else {
        panic!()
    };
    let _ = s.apply(&GuardRequest::Revoke { revoked_at: T0 + 1, key_id: None }, &w.cx(T0 + 1, None, 1));
    let refund = GuardRequest::Refund { key: key(), limits, counted_at, reason: "origin_unavailable".into() };
    let r = s.apply(&refund, &w.cx(T0 + 2, None, 1)).0;
    assert_eq!(r, GuardReply::Revoked, "a refund of a revoked key answered {r:?}");
}

// --------------------------------------------------------------- sound

/// Checked and sound: the guard never admits on limits it should not trust,
/// and learns nothing from an invalid request.
#[test]
fn review_invalid_limits_and_fields_never_admit() {
    let w = world();
    let f = facts(T0);
    let bad_limits = [
        Limits { key: vec![lim("minute", 0, 60)], visitor: None, ..Limits::default() },
        Limits { key: vec![lim("minute", 5, 0)], visitor: None, ..Limits::default() },
        Limits { key: vec![lim("minute", ratelimit::MAX_LIMIT + 1, 60)], visitor: None, ..Limits::default() },
        Limits { key: vec![lim("minute", 5, ratelimit::MAX_WINDOW_SECONDS + 1)], visitor: None, ..Limits::default() },
        Limits { key: vec![lim("Minute", 5, 60)], visitor: None, ..Limits::default() },
        Limits { key: vec![lim("", 5, 60)], visitor: None, ..Limits::default() },
        Limits { key: (0..9).map(|i| lim(&format!("l{i}"), 5, 60)).collect(), visitor: None, ..Limits::default() },
        visitor_limits("", 10, 5),
        visitor_limits(&"1".repeat(MAX_VISITOR_ID + 1), 10, 5),
        visitor_limits("10.0.0.1", 10, 0),
        Limits {
            key: vec![lim("minute", 5, 60)],
            visitor: Some(VisitorLimits {
                id: "10.0.0.1".into(),
                limits: (0..5).map(|i| lim(&format!("v{i}"), 5, 60)).collect(),
            }),
            ..Limits::default()
        },
    ];
    for l in bad_limits {
        for req in [
            check_of(l.clone()),
            lease_of(l.clone(), 5),
            GuardRequest::Refund { key: key(), limits: l.clone(), counted_at: T0, reason: "x".into() },
        ] {
            let mut s = GuardState::default();
            let (r, ch) = s.apply(&req, &w.cx(T0, Some(&f), 3));
            assert!(matches!(r, GuardReply::Invalid { .. }) && ch.is_empty(), "{req:?} -> {r:?}");
            assert_eq!(s, GuardState::default(), "learned from {req:?}");
        }
    }
    let mut long_scope = lease_of(Limits { key: vec![lim("minute", 5, 60)], visitor: None, ..Limits::default() }, 5);
    if let GuardRequest::Lease { scope, .. } = &mut long_scope {
        *scope = Some("a".repeat(65));
    }
    assert!(matches!(GuardState::default().apply(&long_scope, &w.cx(T0, Some(&f), 3)).0, GuardReply::Invalid { .. }));
    let bad_reason = GuardRequest::Refund {
        key: key(),
        limits: Limits { key: vec![lim("minute", 5, 60)], visitor: None, ..Limits::default() },
        counted_at: T0,
        reason: "Not_A_Code".into(),
    };
    assert!(matches!(GuardState::default().apply(&bad_reason, &w.cx(T0, None, 3)).0, GuardReply::Invalid { .. }));
}

/// Checked and sound: a lease is timed from the facts' read and never
/// outlives it, also when the clock went back a little; a report can never
/// claim more than the reservation, nor settle a lease twice.
#[test]
fn review_lease_timing_and_reports_are_bounded() {
    let w = world();
    let mut s = GuardState::default();
    let limits = Limits { key: vec![lim("minute", 100, 60)], visitor: None, ..Limits::default() };
    let _ = s.apply(&check_of(limits.clone()), &w.cx(T0 + 200, None, 1));
    // The clock went back 200 ms; the facts were read at the raw time.
    let f = facts(T0 + 100);
    let GuardReply::Leased { lease: Some(g), valid_ms, .. } =
        s.apply(&lease_of(limits.clone(), 10), &w.cx(T0, Some(&f), 5)).0
    else {
        panic!()
    };
    assert!(valid_ms <= LEASE_MS - 100 && g.valid_ms == valid_ms, "{valid_ms}");
    assert_eq!(s.leases[&g.id].ends_at, f.at + LEASE_MS, "ends no later than LEASE_MS after the read");
    // A report claiming more than reserved counts at most the reservation.
    let before = s.counters.ledger.room(&limits.key, T0 + 500);
    let ret = GuardRequest::Return {
        key: key(),
        report: LeaseReport { id: g.id, used: u32::MAX, spent: 0 },
        refusals: Refusals::new(),
    };
    let _ = s.apply(&ret, &w.cx(T0 + 500, None, 1));
    assert_eq!(s.counters.ledger.room(&limits.key, T0 + 500), before, "fully used: nothing back");
    let again = s.clone();
    let _ = s.apply(&ret, &w.cx(T0 + 600, None, 1));
    assert_eq!(s.counters.ledger.windows, again.counters.ledger.windows, "a second report changes nothing");
}

/// Checked and sound: key and visitor limits are all-or-nothing — a request
/// refused by one consumes nothing of the other, for checks and for leases,
/// and a lease never reserves more than both leave.
#[test]
fn review_key_and_visitor_limits_are_all_or_nothing() {
    let w = world();
    let f = facts(T0);
    let mut s = GuardState::default();
    let v = "198.51.100.4";
    for i in 0..3 {
        assert!(matches!(
            s.apply(&check_of(visitor_limits(v, 10, 3)), &w.cx(T0 + i, None, 1)).0,
            GuardReply::Allowed { .. }
        ));
    }
    let key_before = s.counters.ledger.clone();
    let (r, ch) = s.apply(&lease_of(visitor_limits(v, 10, 3), 50), &w.cx(T0 + 5, Some(&f), 2));
    assert!(matches!(r, GuardReply::Limited { key_wide: false, .. }) && ch.is_empty(), "{r:?}");
    assert_eq!(s.counters.ledger.windows, key_before.windows, "the visitor's refusal took nothing of the key's");
    // Another visitor: a lease capped by what the key has left (10 - 3 - 1).
    let GuardReply::Leased { lease: Some(g), .. } =
        s.apply(&lease_of(visitor_limits("198.51.100.5", 10, 20), 50), &w.cx(T0 + 6, Some(&f), 3)).0
    else {
        panic!()
    };
    assert_eq!(g.reserved, 6);
    // The key is now spent for every visitor, without touching their rows.
    let third = s.visitors.get("198.51.100.6").cloned();
    let r = s.apply(&check_of(visitor_limits("198.51.100.6", 10, 20)), &w.cx(T0 + 7, None, 1)).0;
    assert!(matches!(r, GuardReply::Limited { key_wide: true, .. }), "{r:?}");
    assert_eq!(s.visitors.get("198.51.100.6").cloned(), third);
}

/// Checked and sound: with key and visitor limits, leases from several
/// isolates (one lease per visitor per isolate), reports, refunds and
/// isolates vanishing never admit more than N in any window of the key's
/// limit or of a visitor's; a refusal's retry-after is exact.
#[test]
fn review_property_leases_with_visitors_never_exceed_any_window() {
    let w = world();
    for seed in 1..=150u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED);
        let key_limit = 1 + rng.below(25) as u32;
        let visitor_limit = 1 + rng.below(8) as u32;
        let window = 1 + rng.below(3) as u32;
        let lims = |v: usize| Limits {
            key: vec![lim("minute", key_limit, window)],
            visitor: Some(VisitorLimits { id: format!("v{v}"), limits: vec![lim("ip_minute", visitor_limit, window)] }),
            ..Limits::default()
        };
        let mut guard = GuardState::default();
        let mut fetched: Option<FetchedFacts> = None;
        // isolate x visitor -> (id, reserved, used, ends)
        let n_iso = 1 + rng.below(3) as usize;
        let mut leases: Vec<Option<(u64, u32, u32, i64)>> = vec![None; n_iso * 3];
        let mut now = T0;
        let mut admitted: Vec<(i64, usize)> = Vec::new();
        let mut next_id = 1u64;
        for _ in 0..500 {
            now += match rng.below(4) {
                0 => 0,
                1 => rng.below(30) as i64,
                2 => rng.below(300) as i64,
                _ => rng.below(1500) as i64,
            };
            let v = rng.below(3) as usize;
            let slot = rng.below(n_iso as u64) as usize * 3 + v;
            match rng.below(10) {
                0..=6 => {
                    if let Some((_, reserved, used, ends)) = leases[slot].as_mut() {
                        if now < *ends && *used < *reserved {
                            *used += 1;
                            admitted.push((now, v));
                            continue;
                        }
                    }
                    let report = leases[slot].take().map(|(id, _, used, _)| LeaseReport { id, used, spent: 0 });
                    if !fetched.as_ref().is_some_and(|f| f.fresh(now, LEASE_MS)) {
                        fetched = Some(facts(now));
                    }
                    next_id += 1;
                    let req = GuardRequest::Lease {
                        key: key(),
                        limits: lims(v),
                        scope: Some("ai:chat".into()),
                        want: rng.below(6) as u32,
                        report,
                        refusals: Refusals::new(),
                    };
                    let before = guard.clone();
                    match guard.apply(&req, &w.cx(now, fetched.as_ref(), next_id)).0 {
                        GuardReply::Leased { counted_at: Some(at), lease, .. } => {
                            admitted.push((at, v));
                            leases[slot] = lease.map(|g| (g.id, g.reserved, 0, now + g.valid_ms));
                            if rng.below(6) == 0 {
                                // Refused before the origin: refunded.
                                let refund = GuardRequest::Refund {
                                    key: key(),
                                    limits: lims(v),
                                    counted_at: at,
                                    reason: "origin_unavailable".into(),
                                };
                                let _ = guard.apply(&refund, &w.cx(now, None, 0));
                                admitted.pop();
                            }
                        }
                        GuardReply::Limited { retry_after_ms, .. } => {
                            let probe = |t: i64| {
                                let mut g = before.clone();
                                if let GuardRequest::Lease { report: Some(r), .. } = &req {
                                    let ret =
                                        GuardRequest::Return { key: key(), report: *r, refusals: Refusals::new() };
                                    let _ = g.apply(&ret, &w.cx(now, None, 0));
                                }
                                matches!(g.apply(&check_of(lims(v)), &w.cx(t, None, 0)).0, GuardReply::Allowed { .. })
                            };
                            assert!(!probe(now + retry_after_ms - 1), "seed {seed}: admitted before retry-after");
                            assert!(probe(now + retry_after_ms), "seed {seed}: refused at retry-after");
                        }
                        r => panic!("seed {seed}: {r:?}"),
                    }
                }
                7 | 8 => {
                    if let Some((id, _, used, _)) = leases[slot].take() {
                        let ret = GuardRequest::Return {
                            key: key(),
                            report: LeaseReport { id, used, spent: 0 },
                            refusals: Refusals::new(),
                        };
                        let _ = guard.apply(&ret, &w.cx(now, None, 0));
                    }
                }
                _ => leases[slot] = None,
            }
        }
        admitted.sort_unstable();
        let t = i64::from(window) * 1000;
        let check = |times: Vec<i64>, limit: u32, what: &str| {
            for (i, &start) in times.iter().enumerate() {
                let n = times[i..].iter().take_while(|&&x| x < start + t).count();
                assert!(n <= limit as usize, "seed {seed}: {n} admitted within {t} ms for {what}, limit {limit}");
            }
        };
        check(admitted.iter().map(|(t, _)| *t).collect(), key_limit, "the key");
        for v in 0..3 {
            check(admitted.iter().filter(|(_, x)| *x == v).map(|(t, _)| *t).collect(), visitor_limit, "a visitor");
        }
    }
}
