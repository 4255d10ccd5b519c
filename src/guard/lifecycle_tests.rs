//! Roll families (members, per-key tombstones, expiries, stale records) and
//! credits (the exact ledger, strict and leased), on a fake clock.

use super::tests::{facts_of, key, lim, world, T0};
use super::*;
use crate::credits::{CreditSpec, Interval, Refill};
use crate::records::Consistency;
use crate::scope::Scope;

/// A secret key of the roll family whose first key is `01KEY`.
pub(super) fn rec(id: &str, version: u64) -> KeyRecord {
    KeyRecord {
        name: "k".into(),
        scopes: vec![Scope::parse("ai:chat").unwrap()],
        prefix: "kw_live_".into(),
        last_four: "abcd".into(),
        guard_id: (id != "01KEY").then(|| "01KEY".into()),
        version,
        ..KeyRecord::synthetic(id.into(), "org_1", T0 - 1000)
    }
}

/// The key ref of a family member as the isolate sends it.
fn member(id: &str, version: u64) -> KeyRef {
    KeyRef { member: (id != "01KEY").then(|| id.into()), version, ..key() }
}

fn credited(remaining: u64, refill: Option<Refill>, cost: u32) -> Limits {
    Limits {
        key: vec![lim("minute", 1_000, 60)],
        credits: Some(CreditSpec { remaining, refill, set_at: T0 - 10 }),
        cost,
        ..Limits::default()
    }
}

fn check(k: KeyRef, limits: Limits) -> GuardRequest {
    GuardRequest::Check { key: k, limits, refusals: Refusals::new() }
}

#[test]
fn a_roll_family_shares_counters_and_ends_member_by_member() {
    let w = world();
    let mut s = GuardState::default();
    let limits = Limits { key: vec![lim("minute", 3, 60)], ..Limits::default() };
    // The old key counts two, the new one (same guard) one: the third is the
    // last of the shared three.
    for _ in 0..2 {
        assert!(matches!(
            s.apply(&check(member("01KEY", 0), limits.clone()), &w.cx(T0, None, 1)).0,
            GuardReply::Allowed { .. }
        ));
    }
    assert!(matches!(
        s.apply(&check(member("01NEW", 0), limits.clone()), &w.cx(T0 + 1, None, 1)).0,
        GuardReply::Allowed { quota: Some(QuotaWire { remaining: 0, .. }), .. }
    ));
    assert!(matches!(
        s.apply(&check(member("01NEW", 0), limits.clone()), &w.cx(T0 + 2, None, 1)).0,
        GuardReply::Limited { .. }
    ));
    assert_eq!(s.meta.key.as_ref().map(|k| k.key_id.as_str()), Some("01KEY"), "usage rolls up under the family");
    // The roll's grace: the old key's record now ends at T0 + 100.
    let old = KeyRecord { expires_at: Some(T0 + 100), ..rec("01KEY", 1) };
    let (r, ch) = s.apply(&GuardRequest::Update { record: Box::new(old.clone()) }, &w.cx(T0 + 3, None, 1));
    assert_eq!((r, ch.meta), (GuardReply::Recorded, true));
    // A request decided on version 0 of the old key gets the new record.
    let (r, ch) = s.apply(&check(member("01KEY", 0), limits.clone()), &w.cx(T0 + 4, None, 1));
    assert_eq!(r, GuardReply::Stale { record: Box::new(old.clone()) });
    assert!(ch.is_empty(), "nothing counted for a stale request");
    let probe = GuardRequest::Refused { key: member("01KEY", 0), refusals: [("missing_scope".to_owned(), 1)].into() };
    assert!(
        matches!(s.apply(&probe, &w.cx(T0 + 4, None, 1)).0, GuardReply::Stale { .. }),
        "a refusal is decided again too"
    );
    // Past the grace the old key is refused however old its record; the new one is not.
    assert_eq!(s.apply(&check(member("01KEY", 1), limits.clone()), &w.cx(T0 + 100, None, 1)).0, GuardReply::Revoked);
    assert_eq!(s.apply(&probe, &w.cx(T0 + 100, None, 1)).0, GuardReply::Revoked);
    assert!(!matches!(
        s.apply(&check(member("01NEW", 0), limits.clone()), &w.cx(T0 + 61_000, None, 1)).0,
        GuardReply::Revoked
    ));
    // An older version never replaces a newer one.
    let _ = s.apply(&GuardRequest::Update { record: Box::new(rec("01NEW", 3)) }, &w.cx(T0 + 61_001, None, 1));
    let _ = s.apply(&GuardRequest::Update { record: Box::new(rec("01NEW", 2)) }, &w.cx(T0 + 61_002, None, 1));
    assert_eq!(s.meta.member("01NEW").unwrap().record.as_ref().map(|r| r.version), Some(3));
    // The expired record is dropped (its expiry kept) when members change.
    assert_eq!(s.meta.member("01KEY").unwrap().expired_at, Some(T0 + 100));
    assert!(s.meta.member("01KEY").unwrap().record.is_none());
    // Revoking one member leaves the other working; idempotent, first time wins.
    let revoke = |at: i64| GuardRequest::Revoke { revoked_at: at, key_id: Some("01NEW".into()) };
    assert_eq!(
        s.apply(&revoke(T0 + 70_000), &w.cx(T0 + 70_000, None, 1)).0,
        GuardReply::RevokeRecorded { revoked_at: T0 + 70_000 }
    );
    assert_eq!(
        s.apply(&revoke(T0 + 80_000), &w.cx(T0 + 80_000, None, 1)).0,
        GuardReply::RevokeRecorded { revoked_at: T0 + 70_000 }
    );
    assert_eq!(s.apply(&check(member("01NEW", 3), limits.clone()), &w.cx(T0 + 80_001, None, 1)).0, GuardReply::Revoked);
    let third = member("01THIRD", 0);
    assert!(matches!(s.apply(&check(third, limits), &w.cx(T0 + 80_002, None, 1)).0, GuardReply::Allowed { .. }));
    // The family is bounded.
    for i in 0..MAX_MEMBERS {
        let _ = s.apply(
            &GuardRequest::Revoke { revoked_at: T0, key_id: Some(format!("01M{i}")) },
            &w.cx(T0 + 90_000, None, 1),
        );
    }
    assert_eq!(s.meta.members.len(), MAX_MEMBERS);
    let r = s.apply(&GuardRequest::Update { record: Box::new(rec("01LAST", 1)) }, &w.cx(T0 + 90_001, None, 1)).0;
    assert!(matches!(r, GuardReply::Invalid { .. }), "{r:?}");
    let big = KeyRecord { meta: Some("x".repeat(MAX_MEMBER_RECORD)), ..rec("01NEW", 9) };
    let r = s.apply(&GuardRequest::Update { record: Box::new(big) }, &w.cx(T0 + 90_002, None, 1)).0;
    assert!(matches!(r, GuardReply::Invalid { .. }), "{r:?}");
}

#[test]
fn credits_are_spent_exactly_all_or_nothing_and_refunded() {
    let w = world();
    let mut s = GuardState::default();
    let mut allowed = 0;
    for i in 0..50 {
        match s.apply(&check(key(), credited(10, None, 1)), &w.cx(T0 + i, None, 1)).0 {
            GuardReply::Allowed { credits, .. } => {
                allowed += 1;
                assert_eq!(credits, Some(10 - allowed));
            }
            GuardReply::Exhausted { retry_after_ms: None, remaining: 0, facts: None } => {}
            r => panic!("{r:?}"),
        }
    }
    assert_eq!(allowed, 10, "exactly the credits, however many ask");
    let hour = T0 - T0.rem_euclid(HOUR_MS);
    assert_eq!(s.counters.usage.hours[&hour].refused.get("usage_exceeded"), Some(&40));
    // Exhaustion is all or nothing with the rate limits: a refused request
    // counts under no limit.
    let minute = s.counters.ledger.windows.clone();
    let _ = s.apply(&check(key(), credited(10, None, 1)), &w.cx(T0 + 60, None, 1));
    assert_eq!(s.counters.ledger.windows, minute);
    // A refund gives the credit back.
    let refund = GuardRequest::Refund {
        key: key(),
        limits: credited(10, None, 1),
        counted_at: T0 + 3,
        reason: "missing_scope".into(),
    };
    let _ = s.apply(&refund, &w.cx(T0 + 61, None, 1));
    assert_eq!(s.counters.credits.map(|c| c.remaining), Some(1));
    // A cost of three with one left: refused whole.
    assert!(matches!(
        s.apply(&check(key(), credited(10, None, 3)), &w.cx(T0 + 62, None, 1)).0,
        GuardReply::Exhausted { .. }
    ));
    assert!(matches!(
        s.apply(&check(key(), credited(10, None, 1)), &w.cx(T0 + 63, None, 1)).0,
        GuardReply::Allowed { credits: Some(0), .. }
    ));
    // A top-up (a newer setting, through an update) restarts the count; a
    // stale record's older setting does not.
    let topped =
        KeyRecord { credits: Some(CreditSpec { remaining: 5, refill: None, set_at: T0 + 100 }), ..rec("01KEY", 1) };
    let _ = s.apply(&GuardRequest::Update { record: Box::new(topped) }, &w.cx(T0 + 100, None, 1));
    assert_eq!(s.counters.credits.map(|c| c.remaining), Some(5));
    let newer = KeyRef { version: 1, ..key() };
    assert!(matches!(
        s.apply(&check(newer, credited(10, None, 1)), &w.cx(T0 + 101, None, 1)).0,
        GuardReply::Allowed { credits: Some(4), .. }
    ));
    // A refund of a request counted before the top-up gives nothing back
    // (the count was set anew since); one counted after it does.
    let refund = |at: i64| GuardRequest::Refund {
        key: newer_ref(),
        limits: credited(10, None, 1),
        counted_at: at,
        reason: "missing_scope".into(),
    };
    let _ = s.apply(&refund(T0 + 63), &w.cx(T0 + 102, None, 1));
    assert_eq!(s.counters.credits.map(|c| c.remaining), Some(4));
    let _ = s.apply(&refund(T0 + 101), &w.cx(T0 + 103, None, 1));
    assert_eq!(s.counters.credits.map(|c| c.remaining), Some(5));
    // An update of a record without credits leaves the family's count alone.
    let _ = s.apply(&GuardRequest::Update { record: Box::new(rec("01KEY", 2)) }, &w.cx(T0 + 104, None, 1));
    assert_eq!(s.counters.credits.map(|c| c.remaining), Some(5));
}

fn newer_ref() -> KeyRef {
    KeyRef { version: 1, ..key() }
}

#[test]
fn credits_refill_at_the_interval() {
    let w = world();
    let mut s = GuardState::default();
    let hourly = Some(Refill { amount: 2, interval: Interval::Hourly });
    let start = Interval::Hourly.start(T0);
    let t = start + 10 * 60_000;
    for _ in 0..2 {
        assert!(matches!(
            s.apply(&check(key(), credited(2, hourly, 1)), &w.cx(t, None, 1)).0,
            GuardReply::Allowed { .. }
        ));
    }
    let r = s.apply(&check(key(), credited(2, hourly, 1)), &w.cx(t + 1, None, 1)).0;
    assert_eq!(r, GuardReply::Exhausted { retry_after_ms: Some(start + HOUR_MS - t - 1), remaining: 0, facts: None });
    let r = s.apply(&check(key(), credited(2, hourly, 1)), &w.cx(start + HOUR_MS, None, 1)).0;
    assert!(matches!(r, GuardReply::Allowed { credits: Some(1), .. }), "refilled at the hour: {r:?}");
}

#[test]
fn leases_reserve_credits_and_give_back_what_was_not_spent() {
    let w = world();
    let mut s = GuardState::default();
    let f = facts_of(KeyRecord { consistency: Consistency::Leased, guard_id: None, ..rec("01KEY", 0) }, T0);
    let lease = |want: u32, report: Option<LeaseReport>| GuardRequest::Lease {
        key: key(),
        limits: credited(20, None, 1),
        scope: Some("ai:chat".into()),
        want,
        report,
        refusals: Refusals::new(),
    };
    let max_cost = u64::from(w.policy_max_cost());
    assert_eq!(max_cost, 5, "the policy's dearest route (summarize)");
    let (r, _) = s.apply(&lease(2, None), &w.cx(T0 + 1, Some(&f), 11));
    let GuardReply::Leased { counted_at: Some(_), lease: Some(g), credits: Some(left), .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!(g.credits, 2 * max_cost, "every unit at the dearest route's cost");
    assert_eq!(left, 19 - g.credits, "the reservation is taken from the count");
    // Another isolate cannot get more than what is left.
    let (r, _) = s.apply(&lease(1_000, None), &w.cx(T0 + 2, Some(&f), 12));
    let GuardReply::Leased { lease: Some(g2), credits: Some(0), .. } = r else { panic!("{r:?}") };
    assert_eq!(g.credits + g2.credits, 18, "never more than the count, request at hand included");
    assert!(matches!(
        s.apply(&lease(1, None), &w.cx(T0 + 3, Some(&f), 13)).0,
        GuardReply::Exhausted { facts: Some(_), .. }
    ));
    // The first lease spent 2 of its reservation: the rest comes back.
    let _ = s.apply(
        &GuardRequest::Return {
            key: key(),
            report: LeaseReport { id: g.id, used: 2, spent: 2 },
            refusals: Refusals::new(),
        },
        &w.cx(T0 + 4, None, 1),
    );
    assert_eq!(s.counters.credits.map(|c| c.remaining), Some(g.credits - 2));
    // An unreported lease is settled as fully spent.
    let _ = s.begin_rollup(T0 + 10 * LEASE_SETTLE_GRACE_MS);
    assert_eq!(s.counters.credits.map(|c| c.remaining), Some(g.credits - 2));
}

#[test]
fn a_rolled_leased_key_is_decided_on_its_own_facts() {
    let w = world();
    let mut s = GuardState::default();
    let newer = KeyRecord { consistency: Consistency::Leased, ..rec("01NEW", 0) };
    let f = facts_of(newer, T0);
    // The guard is the family's first key's; the facts are the new key's.
    let lease = GuardRequest::Lease {
        key: member("01NEW", 0),
        limits: Limits { key: vec![lim("minute", 10, 60)], ..Limits::default() },
        scope: Some("ai:chat".into()),
        want: 0,
        report: None,
        refusals: Refusals::new(),
    };
    let (r, _) = s.apply(&lease, &w.cx(T0 + 1, Some(&f), 5));
    assert!(matches!(r, GuardReply::Leased { counted_at: Some(_), refused: None, .. }), "{r:?}");
}

#[test]
fn the_largest_key_record_fits_in_a_guard() {
    // Every field at its bound, metadata made of characters that escape twice.
    let meta: String = {
        let mut m = String::from("{");
        let mut i = 0;
        while m.len() < crate::admin::MAX_META_BYTES - 40 {
            m.push_str(&format!("\"{i}\":\"\\\"\\u0001\",", i = i));
            i += 1;
        }
        m.pop();
        m.push('}');
        m
    };
    let big = KeyRecord {
        name: "\u{10348}".repeat(100),
        scopes: (0..32).map(|i| Scope::parse(&format!("{}:{}", "r".repeat(20), "x".repeat(i + 1))).unwrap()).collect(),
        rate_limits: (0..4).map(|i| lim(&format!("{}{i}", "n".repeat(30)), 1, 60)).collect(),
        allowed_ips: (0..100)
            .map(|i| crate::cidr::Cidr::parse(&format!("2001:db8:{i:x}:ffff:ffff:ffff:ffff:ffff")).unwrap())
            .collect(),
        meta: Some(meta),
        user_id: Some("u".repeat(64)),
        parent_id: Some("01".repeat(13)),
        credits: Some(CreditSpec {
            remaining: 1 << 40,
            refill: Some(Refill { amount: 1 << 40, interval: Interval::Monthly }),
            set_at: T0,
        }),
        expires_at: Some(T0),
        ..rec("01HUGEKEYHUGEKEYHUGEKEYHUG", 1 << 50)
    };
    let text = serde_json::to_string(&big).unwrap();
    assert!(text.len() <= MAX_MEMBER_RECORD / 2, "{} bytes", text.len());
    let mut s = GuardState::default();
    assert_eq!(
        s.apply(&GuardRequest::Update { record: Box::new(big) }, &world().cx(T0 - 1, None, 1)).0,
        GuardReply::Recorded
    );
}
