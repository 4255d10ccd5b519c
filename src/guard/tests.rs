use super::*;
use crate::records::Consistency;
use crate::scope::Scope;

pub(super) const T0: i64 = 1_800_000_000_000;
pub(super) const LEASE_MS: i64 = 1000;

pub(super) fn key() -> KeyRef {
    KeyRef { key_id: "01KEY".into(), org_id: "org_1".into(), issued_at: None, ..KeyRef::default() }
}

pub(super) fn lim(name: &str, limit: u32, window_seconds: u32) -> RateLimit {
    RateLimit { name: name.into(), limit, window_seconds }
}

fn limits(n: u32) -> Limits {
    Limits { key: vec![lim("minute", n, 60)], visitor: None, ..Limits::default() }
}

pub(super) fn check(n: u32) -> GuardRequest {
    GuardRequest::Check { key: key(), limits: limits(n), refusals: Refusals::new() }
}

fn record() -> KeyRecord {
    KeyRecord {
        name: "k".into(),
        scopes: vec![Scope::parse("ai:chat").unwrap()],
        prefix: "kw_live_".into(),
        last_four: "abcd".into(),
        consistency: Consistency::Leased,
        ..KeyRecord::synthetic("01KEY".into(), "org_1", T0 - 1000)
    }
}

fn facts(at: i64) -> FetchedFacts {
    facts_of(record(), at)
}

/// The facts of `key` (org `org_1` with a BAA, no user), fetched `at`.
pub(super) fn facts_of(key: KeyRecord, at: i64) -> FetchedFacts {
    FetchedFacts {
        facts: Facts {
            key: Some(key),
            org: Some(OrgRecord { id: "org_1".into(), name: "o".into(), baa_active: true, updated_at: 0 }),
            user: None,
        },
        at,
    }
}

pub(super) struct World {
    policy: Policy,
    config: Config,
}

pub(super) fn world() -> World {
    World { policy: Policy::default_policy().unwrap(), config: Config::default() }
}

impl World {
    pub(super) fn cx<'a>(&'a self, now: i64, facts: Option<&'a FetchedFacts>, lease_id: u64) -> Context<'a> {
        Context { now, lease_ms: LEASE_MS, facts, policy: &self.policy, config: &self.config, lease_id, deadline: None }
    }
}

fn lease_req(limits: Limits, want: u32, report: Option<LeaseReport>) -> GuardRequest {
    GuardRequest::Lease { key: key(), limits, scope: Some("ai:chat".into()), want, report, refusals: Refusals::new() }
}

#[test]
fn revocation_wins_over_everything_and_is_idempotent() {
    let w = world();
    let mut s = GuardState::default();
    let (r, ch) = s.apply(&check(5), &w.cx(T0, None, 1));
    assert!(matches!(r, GuardReply::Allowed { quota: Some(QuotaWire { remaining: 4, .. }), counted_at: T0, .. }));
    assert!(ch.meta && ch.counters, "first contact writes the identity and the counters");
    assert_eq!(s.meta.key, Some(key()));
    let (r, ch) = s.apply(&GuardRequest::Revoke { revoked_at: T0 + 1, key_id: None }, &w.cx(T0 + 1, None, 1));
    assert_eq!(r, GuardReply::RevokeRecorded { revoked_at: T0 + 1 });
    assert_eq!(ch, Changes { meta: true, ..Changes::default() });
    let (r, ch) = s.apply(&check(5), &w.cx(T0 + 2, None, 1));
    assert_eq!((r, ch.is_empty()), (GuardReply::Revoked, true));
    let refused = GuardRequest::Refused { key: key(), refusals: [("missing_scope".to_owned(), 1)].into() };
    assert_eq!(s.apply(&refused, &w.cx(T0 + 2, None, 1)).0, GuardReply::Revoked, "never merely refused");
    let f = facts(T0 + 2);
    let (r, ch) = s.apply(&lease_req(limits(5), 10, None), &w.cx(T0 + 2, Some(&f), 7));
    assert_eq!((r, ch.is_empty(), s.leases.len()), (GuardReply::Revoked, true, 0), "no lease for a revoked key");
    let (r, ch) = s.apply(&GuardRequest::Revoke { revoked_at: T0 + 9, key_id: None }, &w.cx(T0 + 9, None, 1));
    assert_eq!((r, ch.is_empty()), (GuardReply::RevokeRecorded { revoked_at: T0 + 1 }, true));
}

#[test]
fn limited_reply_and_headers() {
    let w = world();
    let mut s = GuardState::default();
    for _ in 0..2 {
        let _ = s.apply(&check(2), &w.cx(T0, None, 1));
    }
    let (r, ch) = s.apply(&check(2), &w.cx(T0 + 500, None, 1));
    assert!(ch.is_empty(), "a refusal writes nothing: {ch:?}");
    let GuardReply::Limited { retry_after_ms, quota, key_wide, facts } = r else { panic!("{r:?}") };
    assert!(key_wide && facts.is_none());
    assert_eq!(retry_after_ms, 1000 + 60_000 - 1 - 500);
    assert_eq!(
        quota.headers(),
        [
            ("RateLimit-Limit", "2".to_owned()),
            ("RateLimit-Remaining", "0".to_owned()),
            ("RateLimit-Reset", "61".to_owned())
        ]
    );
    let hour = T0 - T0.rem_euclid(HOUR_MS);
    assert_eq!(s.counters.usage.hours[&hour].refused.get("rate_limited"), Some(&1), "counted in memory");
}

#[test]
fn refusals_and_refunds_change_only_memory() {
    let w = world();
    let mut s = GuardState::default();
    let (r, _) = s.apply(&check(1), &w.cx(T0, None, 1));
    let GuardReply::Allowed { counted_at, .. } = r else { panic!("{r:?}") };
    let refused = GuardRequest::Refused { key: key(), refusals: [("origin_not_allowed".to_owned(), 40)].into() };
    let (r, ch) = s.apply(&refused, &w.cx(T0 + 1, None, 1));
    assert_eq!((r, ch.is_empty()), (GuardReply::Recorded, true));
    assert!(matches!(s.apply(&check(1), &w.cx(T0 + 2, None, 1)), (GuardReply::Limited { .. }, ch) if ch.is_empty()));
    let refund = GuardRequest::Refund { key: key(), limits: limits(1), counted_at, reason: "baa_required".into() };
    let (r, ch) = s.apply(&refund, &w.cx(T0 + 3, None, 1));
    assert_eq!((r, ch.is_empty()), (GuardReply::Recorded, true));
    // The refund took effect in memory: the quota is back.
    let (r, ch) = s.apply(&check(1), &w.cx(T0 + 4, None, 1));
    assert!(matches!(r, GuardReply::Allowed { .. }) && ch.counters);
    let hour = T0 - T0.rem_euclid(HOUR_MS);
    let c = &s.counters.usage.hours[&hour];
    assert_eq!((c.allowed, c.refunded), (2, 1), "net allowed 1 when summed");
    assert_eq!(c.refused.get("baa_required"), Some(&1));
    assert_eq!(c.refused.get("origin_not_allowed"), Some(&40));
    assert_eq!(c.refused.get("rate_limited"), Some(&1));
    // The memory-only counts travel with the next row written.
    let stored = s.row(&RowRef::Counters).unwrap();
    assert!(stored.contains("origin_not_allowed"), "{stored}");
}

#[test]
fn a_refund_after_a_roll_up_still_nets_out() {
    let w = world();
    let mut s = GuardState::default();
    let GuardReply::Allowed { counted_at, .. } = s.apply(&check(1), &w.cx(T0, None, 1)).0 else { panic!() };
    let (_, _) = s.begin_rollup(T0 + 1);
    let _ = s.finish_rollup(1);
    let refund = GuardRequest::Refund { key: key(), limits: limits(1), counted_at, reason: "baa_required".into() };
    let _ = s.apply(&refund, &w.cx(T0 + 2, None, 1));
    let hour = T0 - T0.rem_euclid(HOUR_MS);
    assert_eq!((s.counters.usage.hours[&hour].refunded, s.counters.usage.hours[&hour].allowed), (1, 0));
}

fn visitor_check(i: usize) -> GuardRequest {
    GuardRequest::Check {
        key: key(),
        limits: Limits {
            key: vec![lim("minute", 1_000_000, 60)],
            visitor: Some(VisitorLimits { id: ip_of(i), limits: vec![lim("ip_minute", 2, 60)] }),
            ..Limits::default()
        },
        refusals: Refusals::new(),
    }
}

#[test]
fn visitors_are_bounded_and_a_live_visitor_is_never_forgotten() {
    let w = world();
    let mut s = GuardState::default();
    // 5,000 visitors within a minute (limit 2 each): the first MAX_VISITORS
    // are tracked, every further one counts under the one overflow visitor.
    let mut admitted = 0;
    for i in 0..5_000 {
        let (r, ch) = s.apply(&visitor_check(i), &w.cx(T0 + i as i64, None, 1));
        if matches!(r, GuardReply::Allowed { .. }) {
            admitted += 1;
        }
        assert!(ch.visitors.len() <= 1, "one visitor row written, none forgotten: {ch:?}");
    }
    assert_eq!(admitted, MAX_VISITORS + 2, "the tracked ones, then the overflow visitor's limit");
    assert_eq!(s.visitors.len(), MAX_VISITORS + 1);
    assert!(s.visitors.contains_key("10.0.0.0") && s.visitors.contains_key(OVERFLOW_VISITOR));
    // A tracked visitor is still limited: none skipped or reset its limit.
    let _ = s.apply(&visitor_check(7), &w.cx(T0 + 5_000, None, 1));
    let (r, ch) = s.apply(&visitor_check(7), &w.cx(T0 + 5_001, None, 1));
    let GuardReply::Limited { key_wide, quota, .. } = r else { panic!("{r:?}") };
    assert!(!key_wide && quota.name == "ip_minute" && ch.is_empty());
    // Once their counts expire, visitors are forgotten and new ones tracked.
    let later = T0 + 5_000 + 62_000;
    let (r, ch) = s.apply(&visitor_check(9_000), &w.cx(later, None, 1));
    assert!(matches!(r, GuardReply::Allowed { .. }), "{r:?}");
    assert!(s.visitors.contains_key(&ip_of(9_000)) && s.visitors.len() <= 3, "{}", s.visitors.len());
    assert!(ch.visitors.len() > MAX_VISITORS, "the expired rows are deleted");
    // The bound holds, and is what the shipped policy makes it.
    let bound = byte_bound(&[lim("minute", 1_000_000, 60)], &[lim("ip_minute", 2, 60)]);
    assert!(s.stored_bytes() <= bound, "{} > {bound}", s.stored_bytes());
    let p = Policy::default_policy().unwrap();
    let shipped = byte_bound(&[lim("minute", 1_000_000, 60)], p.widget_ip_rate_limits());
    assert!(shipped < 2 * 1024 * 1024, "the shipped policy's bound {shipped} stays under 2 MiB");
}

fn ip_of(i: usize) -> String {
    format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)
}

#[test]
fn a_new_visitor_refused_by_the_key_limit_is_not_stored() {
    let w = world();
    let mut s = GuardState::default();
    let one = |i: usize| GuardRequest::Check {
        key: key(),
        limits: Limits {
            key: vec![lim("minute", 1, 60)],
            visitor: Some(VisitorLimits { id: format!("10.0.0.{i}"), limits: vec![lim("ip_minute", 5, 60)] }),
            ..Limits::default()
        },
        refusals: Refusals::new(),
    };
    assert!(matches!(s.apply(&one(1), &w.cx(T0, None, 1)).0, GuardReply::Allowed { .. }));
    let (r, ch) = s.apply(&one(2), &w.cx(T0 + 1, None, 1));
    assert!(matches!(r, GuardReply::Limited { key_wide: true, .. }) && ch.is_empty());
    assert_eq!(s.visitors.len(), 1);
}

#[test]
fn invalid_requests_never_admit() {
    let w = world();
    let mut s = GuardState::default();
    let zero = GuardRequest::Check {
        key: key(),
        limits: Limits { key: vec![lim("m", 0, 60)], visitor: None, ..Limits::default() },
        refusals: Refusals::new(),
    };
    let (r, ch) = s.apply(&zero, &w.cx(T0, None, 1));
    assert!(matches!(r, GuardReply::Invalid { .. }) && ch.is_empty());
    let many =
        GuardRequest::Refused { key: key(), refusals: (0..17).map(|i| (format!("r{}", "x".repeat(i)), 1)).collect() };
    assert!(matches!(s.apply(&many, &w.cx(T0, None, 1)).0, GuardReply::Invalid { .. }));
    let bad = GuardRequest::Refused { key: key(), refusals: [("Not-A-Code".to_owned(), 1)].into() };
    assert!(matches!(s.apply(&bad, &w.cx(T0, None, 1)).0, GuardReply::Invalid { .. }));
    assert_eq!(s, GuardState::default(), "nothing learned from invalid requests");
}

#[test]
fn a_lease_needs_fresh_facts() {
    let w = world();
    let mut s = GuardState::default();
    let r = s.apply(&lease_req(limits(10), 5, None), &w.cx(T0, None, 9)).0;
    assert!(matches!(r, GuardReply::Invalid { .. }), "{r:?}");
    let old = facts(T0 - LEASE_MS / 2);
    assert!(!old.fresh(T0, LEASE_MS) && facts(T0 - LEASE_MS / 2 + 1).fresh(T0, LEASE_MS));
    let r = s.apply(&lease_req(limits(10), 5, None), &w.cx(T0, Some(&old), 9)).0;
    assert!(matches!(r, GuardReply::Invalid { .. }), "{r:?}");
    let future = facts(T0 + 5);
    assert!(!future.fresh(T0, LEASE_MS), "a clock that went back never stretches a lease");
}

#[test]
fn a_cold_key_gets_one_unit_and_no_reservation() {
    let w = world();
    let mut s = GuardState::default();
    let f = facts(T0);
    let (r, ch) = s.apply(&lease_req(limits(10), 0, None), &w.cx(T0 + 100, Some(&f), 9));
    let GuardReply::Leased { counted_at, lease, quota, facts: got, valid_ms, .. } = r else { panic!("{r:?}") };
    assert_eq!((counted_at, lease, valid_ms), (Some(T0 + 100), None, LEASE_MS - 100));
    assert_eq!(quota.unwrap().remaining, 9);
    assert_eq!(*got, f.facts);
    assert!(ch.counters && ch.leases.is_empty());
}

#[test]
fn a_lease_reserves_at_its_end_and_a_report_settles_it() {
    let w = world();
    let mut s = GuardState::default();
    let f = facts(T0);
    let (r, ch) = s.apply(&lease_req(limits(10), 4, None), &w.cx(T0, Some(&f), 77));
    let GuardReply::Leased { counted_at: Some(_), lease: Some(g), quota: Some(q), .. } = r else { panic!("{r:?}") };
    assert_eq!((g.id, g.reserved, g.valid_ms), (77, 4, LEASE_MS));
    assert_eq!(q.remaining, 5, "one admitted, four reserved");
    assert_eq!(ch.leases, vec![77]);
    assert_eq!(s.leases[&77].ends_at, T0 + LEASE_MS);
    // Used 1 of 4: 3 come back; the one used moves to the report's time.
    let ret = GuardRequest::Return {
        key: key(),
        report: LeaseReport { id: 77, used: 1, spent: 0 },
        refusals: Refusals::new(),
    };
    let (r, ch) = s.apply(&ret, &w.cx(T0 + 400, None, 1));
    assert_eq!(r, GuardReply::Recorded);
    assert!(ch.counters && ch.leases.contains(&77) && s.leases.is_empty());
    assert_eq!(s.counters.ledger.room(&limits(10).key, T0 + 400), 8);
    let hour = T0 - T0.rem_euclid(HOUR_MS);
    assert_eq!(s.counters.usage.hours[&hour].allowed, 2);
    // A second report of the same lease changes nothing.
    let before = s.clone();
    let (_, ch) = s.apply(&ret, &w.cx(T0 + 500, None, 1));
    assert!(!ch.counters);
    assert_eq!(
        (&s.counters.ledger.windows, &s.counters.usage),
        (&before.counters.ledger.windows, &before.counters.usage)
    );
}

#[test]
fn leases_share_the_room_with_other_holders() {
    let w = world();
    let mut s = GuardState::default();
    let f = facts(T0);
    let grant =
        |s: &mut GuardState, id: u64| match s.apply(&lease_req(limits(100), 1000, None), &w.cx(T0, Some(&f), id)).0 {
            GuardReply::Leased { lease, .. } => lease.map_or(0, |l| l.reserved),
            r => panic!("{r:?}"),
        };
    assert_eq!(grant(&mut s, 1), 99, "alone: everything left");
    let mut s = GuardState::default();
    let _ = s.apply(&lease_req(limits(100), 10, None), &w.cx(T0, Some(&f), 1));
    assert_eq!(grant(&mut s, 2), (100 - 11 - 1) / 2, "a fair share with one other holder");
    assert_eq!(lease_size(5, 1000, 3), 5);
    assert_eq!(lease_size(u32::MAX, u64::MAX, 0), MAX_LEASE_SIZE);
    assert_eq!(lease_size(10, 0, 0), 0);
}

#[test]
fn facts_that_refuse_count_nothing() {
    let w = world();
    let mut s = GuardState::default();
    let mut f = facts(T0);
    f.facts.org.as_mut().unwrap().baa_active = false;
    let (r, ch) = s.apply(&lease_req(limits(10), 5, None), &w.cx(T0, Some(&f), 5));
    let GuardReply::Leased { counted_at: None, lease: None, facts: got, .. } = r else { panic!("{r:?}") };
    assert!(!got.org.unwrap().baa_active);
    assert!(!ch.counters && s.counters.ledger.is_empty());
    // A scope the key lacks, or no route at all: nothing counted either.
    let f = facts(T0);
    let mut req = lease_req(limits(10), 5, None);
    if let GuardRequest::Lease { scope, .. } = &mut req {
        *scope = Some("control:read".into());
    }
    assert!(matches!(s.apply(&req, &w.cx(T0, Some(&f), 5)).0, GuardReply::Leased { counted_at: None, .. }));
    if let GuardRequest::Lease { scope, .. } = &mut req {
        *scope = None;
    }
    assert!(matches!(s.apply(&req, &w.cx(T0, Some(&f), 5)).0, GuardReply::Leased { counted_at: None, .. }));
    // The key revoked in the system of record (tombstone not yet seen).
    let mut f = facts(T0);
    f.facts.key.as_mut().unwrap().revoked_at = Some(T0 - 1);
    let r = s.apply(&lease_req(limits(10), 5, None), &w.cx(T0, Some(&f), 5)).0;
    assert!(matches!(r, GuardReply::Leased { counted_at: None, .. }), "{r:?}");
    // Another key's record is never taken for this one.
    let mut f = facts(T0);
    f.facts.key.as_mut().unwrap().id = "01OTHER".into();
    let r = s.apply(&lease_req(limits(10), 5, None), &w.cx(T0, Some(&f), 5)).0;
    assert!(matches!(r, GuardReply::Leased { counted_at: None, .. }), "{r:?}");
}

#[test]
fn an_unreported_lease_is_settled_as_fully_used_after_the_grace() {
    let w = world();
    let mut s = GuardState::default();
    let f = facts(T0);
    let _ = s.apply(&lease_req(limits(10), 5, None), &w.cx(T0, Some(&f), 3));
    assert_eq!(s.reserved(), 5);
    let (batch, ch) = s.begin_rollup(T0 + LEASE_MS + LEASE_SETTLE_GRACE_MS - 1);
    assert!(ch.leases.is_empty() && s.leases.len() == 1);
    let (seq, first) = batch.unwrap();
    assert_eq!(first.hours.values().map(|c| c.allowed).sum::<u64>(), 1, "the immediate unit");
    let _ = s.finish_rollup(seq);
    let (batch, ch) = s.begin_rollup(T0 + LEASE_MS + LEASE_SETTLE_GRACE_MS);
    assert!(ch.leases.contains(&3) && s.leases.is_empty());
    let hours = batch.unwrap().1.hours;
    assert_eq!(hours.values().map(|c| c.allowed).sum::<u64>(), 5, "the whole reservation");
    // Still counted in full until its end leaves the window.
    assert_eq!(s.counters.ledger.room(&limits(10).key, T0 + 60_000), 4);
}

#[test]
fn usage_is_counted_per_hour_and_taken_for_roll_up() {
    let w = world();
    let mut s = GuardState::default();
    for i in 0..3 {
        let _ = s.apply(&check(2), &w.cx(T0 + i, None, 1));
    }
    let refused = GuardRequest::Refused { key: key(), refusals: [("missing_scope".to_owned(), 1)].into() };
    let _ = s.apply(&refused, &w.cx(T0 + HOUR_MS, None, 1));
    let hour0 = T0 - T0.rem_euclid(HOUR_MS);
    let c0 = &s.counters.usage.hours[&hour0];
    assert_eq!(c0.allowed, 2);
    assert_eq!(c0.refused.get("rate_limited"), Some(&1));
    let c1 = &s.counters.usage.hours[&(hour0 + HOUR_MS)];
    assert_eq!((c1.allowed, c1.refused.get("missing_scope")), (0, Some(&1)));
    assert_eq!(s.counters.usage.last_used_at, Some(T0 + 1));
    // A roll-up begins; one more request arrives while it is in flight.
    let (batch, ch) = s.begin_rollup(T0 + HOUR_MS);
    assert!(ch.meta && ch.counters);
    let (seq, sent) = batch.unwrap();
    assert_eq!((seq, sent.hours.len()), (1, 2));
    assert!(s.counters.usage.is_empty());
    let _ = s.apply(&check(5), &w.cx(T0 + HOUR_MS + 2, None, 1));
    // Not acknowledged: the same batch is sent again, unchanged.
    let (again, _) = s.begin_rollup(T0 + HOUR_MS + 3);
    assert_eq!(again, Some((1, sent.clone())));
    // Acknowledged: the next roll-up carries only the new request.
    assert!(s.finish_rollup(1).meta);
    assert!(s.meta.inflight.is_none());
    let (next_batch, _) = s.begin_rollup(T0 + HOUR_MS + 4);
    let (seq2, rest) = next_batch.unwrap();
    assert_eq!(seq2, 2);
    assert_eq!(rest.hours[&(hour0 + HOUR_MS)].allowed, 1);
}

#[test]
fn pending_usage_is_bounded() {
    let mut u = PendingUsage::default();
    for h in 0..(MAX_PENDING_HOURS as i64 + 10) {
        u.allowed(T0 + h * HOUR_MS, 1);
        u.refused(T0 + h * HOUR_MS, "rate_limited", 1);
    }
    assert_eq!(u.hours.len(), MAX_PENDING_HOURS);
    assert_eq!(u.hours.keys().next().copied(), Some(T0 - T0.rem_euclid(HOUR_MS) + 10 * HOUR_MS));
}

#[test]
fn rows_round_trip() {
    let w = world();
    let mut s = GuardState::default();
    let f = facts(T0);
    let _ = s.apply(&visitor_check(1), &w.cx(T0, None, 1));
    let mut widget = lease_req(limits(10), 3, None);
    if let GuardRequest::Lease { limits, .. } = &mut widget {
        limits.visitor = Some(VisitorLimits { id: "2001:db8::/64".into(), limits: vec![lim("ip_minute", 20, 60)] });
    }
    let _ = s.apply(&widget, &w.cx(T0 + 1, Some(&f), 42));
    let _ = s.apply(&GuardRequest::Revoke { revoked_at: T0 + 2, key_id: None }, &w.cx(T0 + 2, None, 1));
    let visitors: Vec<(String, i64, String)> =
        s.visitors.iter().map(|(id, v)| (id.clone(), v.seen, s.row(&RowRef::Visitor(id.clone())).unwrap())).collect();
    let leases: Vec<(u64, String)> = s.leases.keys().map(|id| (*id, s.row(&RowRef::Lease(*id)).unwrap())).collect();
    let back =
        GuardState::from_rows(s.row(&RowRef::Meta).as_deref(), s.row(&RowRef::Counters).as_deref(), visitors, leases)
            .unwrap();
    assert_eq!(back, s);
    assert!(GuardState::from_rows(Some("{"), None, [], []).is_err(), "corrupt rows fail closed");
}

#[test]
fn wire_format_round_trips() {
    let req = check(3);
    let json = serde_json::to_string(&req).unwrap();
    assert_eq!(
        json,
        r#"{"check":{"key":{"key_id":"01KEY","org_id":"org_1"},"limits":{"key":[{"name":"minute","limit":3,"window_seconds":60}]}}}"#
    );
    assert_eq!(GuardRequest::decode(&json).unwrap(), req);
    assert_eq!(serde_json::to_string(&GuardReply::Revoked).unwrap(), r#""revoked""#);
    let l = lease_req(limits(3), 7, Some(LeaseReport { id: 5, used: 2, spent: 0 }));
    assert_eq!(GuardRequest::decode(&serde_json::to_string(&l).unwrap()).unwrap(), l);
}

/// Every message between the worker and its objects decodes back to
/// itself (the hand-written decoders of `GuardRequest`, `GuardReply` and
/// `OrgRequest`), with optional fields set and unset.
#[test]
fn every_message_round_trips() {
    let quota = QuotaWire { name: "minute".into(), limit: 3, remaining: 1, reset_ms: 500 };
    let report = LeaseReport { id: 5, used: 2, spent: 0 };
    let refusals: Refusals = [("missing_scope".to_owned(), 2u64)].into_iter().collect();
    let widget = Limits {
        key: vec![lim("minute", 3, 60)],
        visitor: Some(VisitorLimits { id: "192.0.2.1".into(), limits: vec![lim("ip_minute", 2, 60)] }),
        ..Limits::default()
    };
    let session = KeyRef { issued_at: Some(T0 - 5), ..key() };
    let requests = [
        check(3),
        GuardRequest::Check { key: session.clone(), limits: widget.clone(), refusals: refusals.clone() },
        lease_req(limits(3), 7, None),
        GuardRequest::Lease {
            key: session.clone(),
            limits: widget.clone(),
            scope: Some("ai:chat".into()),
            want: 4,
            report: Some(report),
            refusals: refusals.clone(),
        },
        GuardRequest::Return { key: key(), report, refusals: Refusals::new() },
        GuardRequest::Return { key: key(), report, refusals: refusals.clone() },
        GuardRequest::Refused { key: key(), refusals: refusals.clone() },
        GuardRequest::Refund { key: key(), limits: widget, counted_at: T0, reason: "upstream".into() },
        GuardRequest::Revoke { revoked_at: T0, key_id: None },
        GuardRequest::Revoke { revoked_at: T0, key_id: Some("01ROLLED".into()) },
        GuardRequest::Update {
            record: Box::new(KeyRecord {
                guard_id: Some("01FIRST".into()),
                version: 4,
                credits: Some(crate::credits::CreditSpec {
                    remaining: 9,
                    refill: Some(crate::credits::Refill { amount: 3, interval: crate::credits::Interval::Monthly }),
                    set_at: T0,
                }),
                ..record()
            }),
        },
        GuardRequest::RevokeSessions { revoked_at: -1 },
        GuardRequest::Stats,
    ];
    for r in requests {
        assert_eq!(GuardRequest::decode(&serde_json::to_string(&r).unwrap()).unwrap(), r);
    }
    let f = facts(T0).facts;
    let replies = [
        GuardReply::Allowed { quota: Some(quota.clone()), counted_at: T0, credits: Some(7) },
        GuardReply::Allowed { quota: None, counted_at: T0, credits: None },
        GuardReply::Leased {
            counted_at: Some(T0),
            refused: Some("missing_scope".into()),
            quota: Some(quota.clone()),
            lease: Some(LeaseGrant { id: u64::MAX, reserved: 3, valid_ms: 900, credits: 15 }),
            credits: Some(1 << 40),
            facts: Box::new(f.clone()),
            valid_ms: 1000,
        },
        GuardReply::Leased {
            counted_at: None,
            refused: None,
            quota: None,
            lease: None,
            credits: None,
            facts: Box::default(),
            valid_ms: 0,
        },
        GuardReply::Limited { retry_after_ms: 10, quota: quota.clone(), key_wide: true, facts: None },
        GuardReply::Limited { retry_after_ms: 10, quota, key_wide: false, facts: Some(Box::new((f.clone(), 70))) },
        GuardReply::Exhausted { retry_after_ms: Some(5), remaining: 4, facts: Some(Box::new((f.clone(), 70))) },
        GuardReply::Exhausted { retry_after_ms: None, remaining: 0, facts: None },
        GuardReply::Stale { record: Box::new(record()) },
        GuardReply::Revoked,
        GuardReply::Recorded,
        GuardReply::RevokeRecorded { revoked_at: T0 },
        GuardReply::Invalid { reason: "too many limits".into() },
    ];
    for r in replies {
        assert_eq!(GuardReply::decode(&serde_json::to_string(&r).unwrap()).unwrap(), r);
    }
    use crate::admin::{OrgCommand, OrgRequest, RevokeCaller};
    let caller = RevokeCaller {
        scopes: vec![Scope::parse("keys:write").unwrap()],
        user_id: Some("user_1".into()),
        key_id: Some("01KEY".into()),
        user_role: Some("admin".into()),
    };
    let commands = [
        OrgCommand::UpsertOrg { org_id: "org_1".into(), name: "O \"x\"".into(), baa_active: true },
        OrgCommand::UpsertUser { org_id: "org_1".into(), user_id: "u".into(), role: "admin".into(), disabled: None },
        OrgCommand::UpsertUser { org_id: "org_1".into(), user_id: "u".into(), role: "r".into(), disabled: Some(false) },
        OrgCommand::CreateKey { record: Box::new(record()), hash: "ab".into(), creator: None },
        OrgCommand::CreateKey { record: Box::new(record()), hash: "ab".into(), creator: Some("user_1".into()) },
        OrgCommand::RevokeKey { org_id: "org_1".into(), key_id: "01KEY".into(), caller: None, leaked_at_url: None },
        OrgCommand::RevokeKey {
            org_id: "org_1".into(),
            key_id: "01KEY".into(),
            caller: Some(caller.clone()),
            leaked_at_url: None,
        },
        OrgCommand::RevokeKey {
            org_id: "org_1".into(),
            key_id: "01KEY".into(),
            caller: None,
            leaked_at_url: Some("https://github.com/a/b \"x\"".into()),
        },
        OrgCommand::UpdateKey {
            org_id: "org_1".into(),
            key_id: "01KEY".into(),
            body: r#"{"name":"x \"y\""}"#.into(),
            caller: Some(caller.clone()),
        },
        OrgCommand::RollKey { org_id: "org_1".into(), key_id: "01KEY".into(), grace_ms: 5_000, caller: None },
        OrgCommand::RevokeSessions { org_id: "org_1".into(), user_id: "u".into(), caller: Some(caller) },
        OrgCommand::RevokeSessions { org_id: "org_1".into(), user_id: "u".into(), caller: None },
        OrgCommand::ListKeys { org_id: "org_1".into(), cursor: None, limit: 50 },
        OrgCommand::ListAudit { org_id: "org_1".into(), cursor: Some("17".into()), limit: 1 },
        OrgCommand::Usage { org_id: "org_1".into(), from: 0, to: T0 },
        OrgCommand::LeaseFacts { org_id: "org_1".into(), key_id: "01KEY".into() },
        OrgCommand::AuditRefused {
            org_id: "org_1".into(),
            action: "key.create_refused".into(),
            target: "t".into(),
            detail: "{}".into(),
        },
        OrgCommand::RecordUsage {
            org_id: "org_1".into(),
            key_id: "01KEY".into(),
            seq: 3,
            hours: vec![(T0, UsageCounts { allowed: 2, refunded: 1, refused: refusals.clone() })],
            last_used_at: Some(T0),
        },
        OrgCommand::RecordUsage {
            org_id: "".into(),
            key_id: "k".into(),
            seq: 0,
            hours: Vec::new(),
            last_used_at: None,
        },
    ];
    for command in commands {
        let r = OrgRequest { command, actor: "admin".into(), request_id: "req_1".into(), now_ms: T0 };
        assert_eq!(OrgRequest::decode(&serde_json::to_string(&r).unwrap()).unwrap(), r);
    }
    assert!(GuardRequest::decode(r#"{"nope":{}}"#).is_err());
    assert!(GuardRequest::decode(r#"{"revoke":{}}"#).is_err(), "a missing field");
    assert!(GuardRequest::decode(r#"{"revoke":{"revoked_at":"1"}}"#).is_err(), "a field of another type");
    assert!(GuardReply::decode("[]").is_err());
    assert!(OrgRequest::decode(r#"{"command":"stats","actor":"a","request_id":"r","now_ms":1}"#).is_err());
}

// ------------------------------------------------------------ the property

use crate::ratelimit::tests_support::Rng;

/// An isolate as the property test drives it: a lease of its own, the
/// admissions it made (times), and the ones taken from its lease.
#[derive(Default)]
struct SimIsolate {
    lease: Option<(u64, u32, u32, i64)>, // id, reserved, used, ends_at
    /// Times of the admissions from the current lease.
    from_lease: Vec<i64>,
    /// Times of admissions from immediate units; a refund gives one back
    /// through the guard.
    immediate: Vec<i64>,
}

/// Property: several isolates holding leases, admitting from them, letting
/// them expire, returning them, vanishing without a report, refunding, with
/// the clock moving at random — never more than N admitted in any window of
/// any limit; at every step, admitted in the last window plus the budget
/// still held in live leases stays within N; and a refusal's retry-after is
/// exact.
#[test]
fn property_leases_never_exceed_any_window() {
    let w = world();
    for seed in 1..=250u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let nlimits = 1 + rng.below(2) as usize;
        let key_limits: Vec<RateLimit> =
            (0..nlimits).map(|i| lim(&format!("l{i}"), 1 + rng.below(12) as u32, 1 + rng.below(4) as u32)).collect();
        let lims = Limits { key: key_limits.clone(), visitor: None, ..Limits::default() };
        let mut guard = GuardState::default();
        let mut fetched: Option<FetchedFacts> = None;
        let mut isolates: Vec<SimIsolate> = (0..1 + rng.below(4)).map(|_| SimIsolate::default()).collect();
        let mut now = T0 + rng.below(1000) as i64;
        let mut admitted: Vec<i64> = Vec::new();
        let mut next_id = 1u64;
        for _ in 0..600 {
            now += match rng.below(5) {
                0 | 1 => 0,
                2 => rng.below(30) as i64,
                3 => rng.below(400) as i64,
                _ => rng.below(2500) as i64,
            };
            let i = rng.below(isolates.len() as u64) as usize;
            match rng.below(10) {
                // A request.
                0..=5 => {
                    let iso = &mut isolates[i];
                    if let Some((_, reserved, used, ends)) = iso.lease.as_mut() {
                        if now < *ends && *used < *reserved {
                            *used += 1;
                            admitted.push(now);
                            iso.from_lease.push(now);
                            continue;
                        }
                    }
                    iso.from_lease.clear();
                    let report = iso.lease.take().map(|(id, _, used, _)| LeaseReport { id, used, spent: 0 });
                    if !fetched.as_ref().is_some_and(|f| f.fresh(now, LEASE_MS)) {
                        fetched = Some(facts(now));
                    }
                    let req = GuardRequest::Lease {
                        key: key(),
                        limits: lims.clone(),
                        scope: Some("ai:chat".into()),
                        want: rng.below(8) as u32,
                        report,
                        refusals: Refusals::new(),
                    };
                    let before = guard.clone();
                    next_id += 1;
                    match guard.apply(&req, &w.cx(now, fetched.as_ref(), next_id)).0 {
                        GuardReply::Leased { counted_at: Some(at), lease, .. } => {
                            assert_eq!(at, now);
                            admitted.push(now);
                            iso.immediate.push(now);
                            iso.lease = lease.map(|g| (g.id, g.reserved, 0, now + g.valid_ms));
                        }
                        GuardReply::Limited { retry_after_ms, .. } => {
                            assert!(retry_after_ms > 0);
                            // Exact: refused a millisecond before, admitted at.
                            let probe = |t: i64| {
                                let mut g = before.clone();
                                let f = facts(t);
                                let strict =
                                    GuardRequest::Check { key: key(), limits: lims.clone(), refusals: Refusals::new() };
                                // The report of this request is part of the state it was refused on.
                                if let GuardRequest::Lease { report: Some(r), .. } = &req {
                                    let ret =
                                        GuardRequest::Return { key: key(), report: *r, refusals: Refusals::new() };
                                    let _ = g.apply(&ret, &w.cx(now, Some(&f), 0));
                                }
                                matches!(g.apply(&strict, &w.cx(t, Some(&f), 0)).0, GuardReply::Allowed { .. })
                            };
                            assert!(!probe(now + retry_after_ms - 1), "seed {seed}: admitted before retry-after");
                            assert!(probe(now + retry_after_ms), "seed {seed}: refused at retry-after");
                        }
                        r => panic!("seed {seed}: {r:?}"),
                    }
                }
                // The lease ends and is returned.
                6 => {
                    isolates[i].from_lease.clear();
                    if let Some((id, _, used, _)) = isolates[i].lease.take() {
                        let ret = GuardRequest::Return {
                            key: key(),
                            report: LeaseReport { id, used, spent: 0 },
                            refusals: Refusals::new(),
                        };
                        let _ = guard.apply(&ret, &w.cx(now, None, 0));
                    }
                }
                // A request admitted from the immediate unit is refused
                // before the origin: refunded through the guard.
                7 => {
                    if let Some(at) = isolates[i].immediate.pop() {
                        let refund = GuardRequest::Refund {
                            key: key(),
                            limits: lims.clone(),
                            counted_at: at,
                            reason: "origin_unavailable".into(),
                        };
                        let _ = guard.apply(&refund, &w.cx(now, None, 0));
                        let pos = admitted.iter().rposition(|&t| t == at).unwrap();
                        admitted.remove(pos);
                    }
                }
                // A request admitted from the lease is refunded locally.
                8 => {
                    let iso = &mut isolates[i];
                    if let Some((_, _, used, ends)) = iso.lease.as_mut() {
                        if now < *ends {
                            if let Some(at) = iso.from_lease.pop() {
                                *used -= 1;
                                let pos = admitted.iter().rposition(|&t| t == at).unwrap();
                                admitted.remove(pos);
                            }
                        }
                    }
                }
                // The isolate vanishes with its lease, unreported.
                _ => isolates[i] = SimIsolate::default(),
            }
            // Admitted in the last window + held in live leases <= N.
            for l in &key_limits {
                let t = l.window_ms();
                let recent = admitted.iter().filter(|&&a| a > now - t).count() as u64;
                let held: u64 = isolates
                    .iter()
                    .filter_map(|iso| iso.lease)
                    .filter(|&(_, _, _, ends)| now < ends)
                    .map(|(_, r, u, _)| u64::from(r - u))
                    .sum();
                assert!(
                    recent + held <= u64::from(l.limit),
                    "seed {seed}: {recent} admitted + {held} held > {}",
                    l.limit
                );
            }
        }
        admitted.sort_unstable();
        for l in &key_limits {
            let t = l.window_ms();
            for (i, &start) in admitted.iter().enumerate() {
                let n = admitted[i..].iter().take_while(|&&x| x < start + t).count();
                assert!(n <= l.limit as usize, "seed {seed}: {n} admitted within {t} ms, limit {}", l.limit);
            }
        }
    }
}

#[test]
fn round_one_state_is_migrated_without_losing_a_tombstone_or_a_count() {
    let v1 = r#"{"key":{"key_id":"01KEY","org_id":"org_1"},"revoked_at":1800000000500,
        "limiter":{"last_ms":1800000000400,
          "windows":{"minute":[{"start":1800000000000,"end":1800000001000,"count":3}],
                     "ip_minute@203.0.113.7":[{"start":1800000000000,"end":1800000001000,"count":2}]},
          "spans":{"minute":60000,"ip_minute@203.0.113.7":60000}},
        "usage":{"hours":{"1800000000000":{"allowed":3,"refused":{"rate_limited":1}}},"last_used_at":1800000000400},
        "rollup_seq":4}"#;
    let s = GuardState::from_v1(v1).unwrap();
    assert_eq!(s.meta.key, Some(key()));
    assert_eq!((s.meta.revoked_at, s.meta.rollup_seq), (Some(1_800_000_000_500), 4));
    assert_eq!(s.counters.ledger.room(&[lim("minute", 5, 60)], T0 + 500), 2);
    assert_eq!(s.visitors["203.0.113.7"].ledger.room(&[lim("ip_minute", 5, 60)], T0 + 500), 3);
    assert_eq!(s.counters.usage.hours.values().next().unwrap().allowed, 3);
    assert!(GuardState::from_v1("{").is_err() && GuardState::from_v1("7").is_err());
}

#[test]
fn a_question_applied_after_the_workers_deadline_counts_nothing() {
    let w = world();
    let mut s = GuardState::default();
    let with_deadline = |now: i64, deadline: i64, facts: Option<&'static FetchedFacts>| {
        let mut cx = w.cx(now, facts, 7);
        cx.deadline = Some(deadline);
        cx
    };
    // Within the deadline: counted as always.
    let (r, _) = s.apply(&check(5), &with_deadline(T0, T0 + 2000, None));
    assert!(matches!(r, GuardReply::Allowed { quota: Some(QuotaWire { remaining: 4, .. }), .. }), "{r:?}");
    // Past it (the worker answered 503 already): nothing counted, recorded
    // or written, refusals included.
    let late =
        GuardRequest::Check { key: key(), limits: limits(5), refusals: [("missing_scope".to_owned(), 3)].into() };
    let (r, ch) = s.apply(&late, &with_deadline(T0 + 2001, T0 + 2000, None));
    assert!(matches!(r, GuardReply::Invalid { .. }), "{r:?}");
    assert!(ch.is_empty(), "{ch:?}");
    let f: &'static FetchedFacts = Box::leak(Box::new(facts(T0 + 2001)));
    let (r, ch) = s.apply(&lease_req(limits(5), 3, None), &with_deadline(T0 + 2001, T0 + 2000, Some(f)));
    assert!(matches!(r, GuardReply::Invalid { .. }) && ch.is_empty() && s.leases.is_empty(), "{r:?}");
    let hour = T0 - T0.rem_euclid(HOUR_MS);
    assert_eq!(s.counters.usage.hours[&hour].allowed, 1);
    assert!(s.counters.usage.hours[&hour].refused.is_empty(), "the late refusals stay the worker's to report");
    // The next question in time sees the one admission only.
    let (r, _) = s.apply(&check(5), &with_deadline(T0 + 2002, T0 + 4000, None));
    assert!(matches!(r, GuardReply::Allowed { quota: Some(QuotaWire { remaining: 3, .. }), .. }), "{r:?}");
    // Reports, refusals and refunds are never late: they carry no deadline
    // of their own and are applied whenever they arrive.
    let refused = GuardRequest::Refused { key: key(), refusals: [("missing_scope".to_owned(), 1)].into() };
    assert_eq!(s.apply(&refused, &with_deadline(T0 + 9000, T0, None)).0, GuardReply::Recorded);
}

#[test]
fn a_session_revocation_refuses_the_tokens_issued_until_then_and_only_those() {
    let w = world();
    let mut s = GuardState::default();
    let session = |iat: i64| KeyRef {
        key_id: "ses:org_1:user_1".into(),
        org_id: "org_1".into(),
        issued_at: Some(iat),
        ..KeyRef::default()
    };
    let check_at = |iat: i64| GuardRequest::Check { key: session(iat), limits: limits(100), refusals: Refusals::new() };
    assert!(matches!(s.apply(&check_at(T0 - 5000), &w.cx(T0, None, 1)).0, GuardReply::Allowed { .. }));
    assert_eq!(
        s.meta.key.as_ref().map(|k| k.issued_at),
        Some(None),
        "the stored identity is the user's, not a token's"
    );
    let (r, ch) = s.apply(&GuardRequest::RevokeSessions { revoked_at: T0 + 10 }, &w.cx(T0 + 10, None, 1));
    assert_eq!((r, ch.meta), (GuardReply::RevokeRecorded { revoked_at: T0 + 10 }, true));
    // Issued before or at the revocation: refused, by every kind of call.
    for iat in [T0 - 5000, T0 + 10] {
        assert_eq!(s.apply(&check_at(iat), &w.cx(T0 + 20, None, 1)).0, GuardReply::Revoked, "iat {iat}");
        let refused = GuardRequest::Refused { key: session(iat), refusals: [("missing_scope".to_owned(), 1)].into() };
        assert_eq!(s.apply(&refused, &w.cx(T0 + 20, None, 1)).0, GuardReply::Revoked);
    }
    // Issued after (the user signed in again): admitted; the user is not revoked.
    assert!(matches!(s.apply(&check_at(T0 + 11), &w.cx(T0 + 20, None, 1)).0, GuardReply::Allowed { .. }));
    assert_eq!(s.meta.revoked_at, None);
    // The latest revocation wins; an earlier one does not move it back.
    let (r, _) = s.apply(&GuardRequest::RevokeSessions { revoked_at: T0 + 5 }, &w.cx(T0 + 30, None, 1));
    assert_eq!(r, GuardReply::RevokeRecorded { revoked_at: T0 + 10 });
    let (r, _) = s.apply(&GuardRequest::RevokeSessions { revoked_at: T0 + 40 }, &w.cx(T0 + 40, None, 1));
    assert_eq!(r, GuardReply::RevokeRecorded { revoked_at: T0 + 40 });
    assert_eq!(s.apply(&check_at(T0 + 11), &w.cx(T0 + 50, None, 1)).0, GuardReply::Revoked);
    // A key's guard is untouched by `issued_at` it never receives.
    assert!(matches!(s.apply(&check(100), &w.cx(T0 + 50, None, 1)).0, GuardReply::Allowed { .. }));
}

#[test]
fn the_per_address_guard_of_public_routes_rolls_nothing_up() {
    let w = world();
    let mut s = GuardState::default();
    let ip = KeyRef { key_id: "ip:203.0.113.7".into(), org_id: String::new(), issued_at: None, ..KeyRef::default() };
    let req = GuardRequest::Check { key: ip, limits: limits(2), refusals: Refusals::new() };
    assert!(matches!(s.apply(&req, &w.cx(T0, None, 1)).0, GuardReply::Allowed { .. }));
    assert!(s.has_pending());
    let (batch, _) = s.begin_rollup(T0 + 1);
    assert_eq!(batch, None, "no org to report to");
    assert!(s.counters.usage.is_empty(), "its usage is dropped");
}

#[test]
fn a_per_address_guard_is_disposed_of_once_its_counts_expire() {
    let w = world();
    let mut s = GuardState::default();
    let ip = KeyRef { key_id: "ip:203.0.113.7".into(), org_id: String::new(), issued_at: None, ..KeyRef::default() };
    let req = GuardRequest::Check { key: ip, limits: limits(10), refusals: Refusals::new() };
    let _ = s.apply(&req, &w.cx(T0, None, 1));
    let _ = s.begin_rollup(T0 + 30_000);
    assert!(s.has_pending(), "an alarm stays set while a count is live");
    assert!(!s.disposable(T0 + 59_000));
    assert!(s.disposable(T0 + 61_000), "its minute has passed: nothing to keep");
    // A key's guard never is, however idle.
    let mut k = GuardState::default();
    let _ = k.apply(&check(5), &w.cx(T0, None, 1));
    assert!(!k.disposable(T0 + 10 * HOUR_MS));
}

impl World {
    pub(super) fn policy_max_cost(&self) -> u32 {
        self.policy.max_cost()
    }
}
