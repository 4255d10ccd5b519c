//! Review of issue 12 (rolls, updates, credits): guard-level reproductions.
use super::lifecycle_tests::rec;
use super::tests::{facts_of, key, lim, world, T0};
use super::*;
use crate::credits::CreditSpec;
use crate::records::Consistency;

fn spec(remaining: u64, set_at: i64) -> Option<CreditSpec> {
    Some(CreditSpec { remaining, refill: None, set_at })
}

/// (Found in review.) The org applies updates in its own order, but `set_at`
/// was the edge's clock at the request's arrival: two PATCHes of `credits`
/// reaching the org out of arrival order left the guard on the first one's
/// count. The org now stamps each setting after the family's latest.
#[test]
fn review_the_last_credit_setting_the_org_applied_is_not_the_guards() {
    let w = world();
    let mut s = GuardState::default();
    // PATCH arrived at T0+5 (remaining 100), applied first: version 2.
    let a = KeyRecord { credits: spec(100, T0 + 5), ..rec("01KEY", 2) };
    let _ = s.apply(&GuardRequest::Update { record: Box::new(a) }, &w.cx(T0 + 10, None, 1));
    // PATCH arrived at T0 (remaining 5; it was slower at the edge), applied
    // second: version 3, what the org, KV and lists now say — stamped by the
    // org after the family's latest setting.
    let stamped = crate::admin::credits_stamp(T0, Some(T0 + 5));
    assert_eq!(stamped, T0 + 6);
    let b = KeyRecord { credits: spec(5, stamped), ..rec("01KEY", 3) };
    let _ = s.apply(&GuardRequest::Update { record: Box::new(b.clone()) }, &w.cx(T0 + 11, None, 1));
    let limits = Limits { key: vec![lim("minute", 1000, 60)], credits: b.credits, cost: 1, ..Limits::default() };
    let mut admitted = 0;
    for i in 0..20 {
        let k = KeyRef { version: 3, ..key() };
        if let GuardReply::Allowed { .. } = s
            .apply(
                &GuardRequest::Check { key: k, limits: limits.clone(), refusals: Refusals::new() },
                &w.cx(T0 + 20 + i, None, 1),
            )
            .0
        {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5, "the key's record says 5 credits; the guard admitted {admitted}");
}

/// (Found in review; fixed.) a revoked (or expired-then-updated) member keeps its full
/// record in the meta row; 64 of them exceed `byte_bound` (which counts
/// only MAX_LIVE_MEMBERS records) and the meta row is rewritten whole on
/// every roll-up.
#[test]
fn review_revoked_members_keep_their_records_past_the_byte_bound() {
    let w = world();
    let mut s = GuardState::default();
    let ips: Vec<_> = (0..100)
        .map(|i| crate::cidr::Cidr::parse(&format!("2001:db8:{i:x}:ffff:ffff:ffff:ffff:ffff")).unwrap())
        .collect();
    for i in 0..MAX_MEMBERS {
        let id = format!("01M{i:023}");
        let r = KeyRecord {
            allowed_ips: ips.clone(),
            meta: Some(format!("{{\"x\":\"{}\"}}", "y".repeat(4000))),
            ..rec(&id, 1)
        };
        assert_eq!(
            s.apply(&GuardRequest::Update { record: Box::new(r) }, &w.cx(T0 + i as i64, None, 1)).0,
            GuardReply::Recorded
        );
        let _ = s.apply(&GuardRequest::Revoke { revoked_at: T0, key_id: Some(id) }, &w.cx(T0 + i as i64, None, 1));
    }
    let bound = byte_bound(&[lim("minute", 1000, 60)], &[]);
    let meta = s.row(&RowRef::Meta).unwrap().len();
    assert!(s.stored_bytes() <= bound, "meta row {meta} B, rows {} B > byte_bound {bound} B", s.stored_bytes());
}

/// Checked and sound: rows and requests written by the previous version
/// (no members, credits, cost, version, member, spent) decode with the
/// defaults the new code expects (cost 1, version 0).
#[test]
fn review_previous_versions_rows_and_requests_decode() {
    let meta = r#"{"key":{"key_id":"01KEY","org_id":"org_1"},"revoked_at":5,"rollup_seq":3}"#;
    let counters = serde_json::to_string(&Counters::default()).unwrap();
    assert!(!counters.contains("credits"));
    let counters = counters.as_str();
    let lease = r#"{"ends_at":10,"reserved":3,"limits":{"key":[{"name":"minute","limit":5,"window_seconds":60}]}}"#;
    let s = GuardState::from_rows(Some(meta), Some(counters), vec![], vec![(7, lease.to_owned())]);
    let s = match s {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    assert!(s.meta.members.is_empty() && s.meta.revoked_at == Some(5));
    let l = &s.leases[&7];
    assert_eq!((l.limits.cost, l.credits, l.granted_at), (1, 0, 0));
    let old = r#"{"check":{"key":{"key_id":"01KEY","org_id":"org_1"},"limits":{"key":[]}}}"#;
    match GuardRequest::decode(old) {
        Ok(GuardRequest::Check { key, limits, .. }) => {
            assert_eq!((key.version, key.member, limits.cost, limits.credits), (0, None, 1, None))
        }
        r => panic!("{r:?}"),
    }
    let old = r#"{"return":{"key":{"key_id":"01KEY","org_id":"org_1"},"report":{"id":4,"used":2}}}"#;
    assert!(matches!(GuardRequest::decode(old), Ok(GuardRequest::Return { report: LeaseReport { spent: 0, .. }, .. })));
}

/// FINDING (nit): a lease granted in the same millisecond as a top-up that
/// follows it: `give_back` compares with `>=`, so the old reservation's
/// unspent credits land on top of the new count.
#[test]
fn review_a_same_ms_top_up_adds_the_old_reservation() {
    let w = world();
    let mut s = GuardState::default();
    let leased = KeyRecord { consistency: Consistency::Leased, guard_id: None, ..rec("01KEY", 0) };
    let f = facts_of(leased.clone(), T0);
    let limits =
        Limits { key: vec![lim("minute", 1000, 60)], credits: spec(100, T0 - 10), cost: 1, ..Limits::default() };
    let lease = GuardRequest::Lease {
        key: key(),
        limits,
        scope: Some("ai:chat".into()),
        want: 10,
        report: None,
        refusals: Refusals::new(),
    };
    let (r, _) = s.apply(&lease, &w.cx(T0 + 1, Some(&f), 7));
    let GuardReply::Leased { lease: Some(g), .. } = r else { panic!("{r:?}") };
    // The operator sets the count to 10, adopted in the same millisecond.
    let topped = KeyRecord { credits: spec(10, T0 + 1), ..leased.clone() };
    let topped = KeyRecord { version: 1, ..topped };
    let _ = s.apply(&GuardRequest::Update { record: Box::new(topped) }, &w.cx(T0 + 1, None, 1));
    assert_eq!(s.counters.credits.map(|c| c.remaining), Some(10));
    let ret = GuardRequest::Return {
        key: key(),
        report: LeaseReport { id: g.id, used: 0, spent: 0 },
        refusals: Refusals::new(),
    };
    let _ = s.apply(&ret, &w.cx(T0 + 2, None, 1));
    assert_eq!(
        s.counters.credits.map(|c| c.remaining),
        Some(10),
        "the top-up set 10; the old lease's {} came back on top",
        g.credits
    );
}
