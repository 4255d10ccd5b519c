//! Review of issue 12 (rolls, updates, credits): flow-level reproductions.
use super::harness::*;
use super::*;

/// An update as the org's object makes it: the system of record, then the
/// guard (Update), KV left stale on purpose (it lags up to a minute).
fn patch(store: &mut Store, env: &Env, key: &Key, now: i64, edit: impl Fn(&mut KeyRecord)) {
    let mut r = store.db_keys[&key.id].clone();
    edit(&mut r);
    r.version += 1;
    store.db_keys.insert(r.id.clone(), r.clone());
    let reply = store.call(&key.id, &GuardRequest::Update { record: Box::new(r) }, now, env).unwrap();
    assert_eq!(reply, GuardReply::Recorded);
}

/// (Found in review; fixed.) two concurrent requests of one isolate both decided on the old
/// record both get `Stale`; the first re-decides and stores the new record
/// in the isolate, the second then finds the isolate's record already at
/// the guard's version and answers 503 instead of deciding on it.
#[test]
fn review_concurrent_requests_after_an_update_are_not_503() {
    let (env, mut store, k) = secret_key(Consistency::Strict, 1000);
    let mut iso = Isolate::default();
    // This isolate caches version 0.
    let o = run_all(&env, &mut store, &mut iso, &[chat(&k)], T0);
    assert!(matches!(o[0], Outcome::Admitted(..)), "{o:?}");
    // A harmless update (a rename): every request must still be admitted.
    patch(&mut store, &env, &k, T0 + 10, |r| r.name = "renamed".into());
    let o = run_all(&env, &mut store, &mut iso, &[chat(&k), chat(&k), chat(&k)], T0 + 20);
    let codes: Vec<_> = o.iter().map(Outcome::code).collect();
    assert_eq!(codes, vec![None, None, None], "a rename made concurrent requests fail: {codes:?}");
}

/// (Found in review; fixed.) a leased key that could not pay a dear route (summarize, 5)
/// with 3 credits left refuses every request of the isolate — a chat that
/// costs 1 too — for up to LEASE_MS; the same key in strict mode admits
/// the chat.
#[test]
fn review_a_dear_refusal_blocks_cheap_requests_of_a_leased_key() {
    for consistency in [Consistency::Strict, Consistency::Leased] {
        let (env, mut store, k) = secret_key(consistency, 1000);
        store.edit_key(&k, |r| {
            r.scopes.push(crate::scope::Scope::parse("ai:summarize").unwrap());
            r.credits = Some(crate::credits::CreditSpec { remaining: 3, refill: None, set_at: T0 - 10 });
        });
        let mut iso = Isolate::default();
        let o = run_all(&env, &mut store, &mut iso, &[to(&k, "POST", "/v1/summarize")], T0);
        assert_eq!(o[0].code(), Some(ErrorCode::UsageExceeded), "{consistency:?}");
        let o = run_all(&env, &mut store, &mut iso, &[chat(&k)], T0 + 10);
        assert_eq!(o[0].code(), None, "{consistency:?}: 3 credits left, a chat costs 1: {o:?}");
    }
}

/// (Found in review; fixed.) a leased key's first lease after an update is asked, counted and
/// sized under the limits of the record the isolate held before (the guard
/// uses the request's `limits`, not its facts'): a limit cut from 1000 to 2
/// per minute admits a full lease's worth more, up to LEASE_MS after the
/// *next* lease (not within LEASE_MS of the change).
#[test]
fn review_a_leased_keys_next_lease_uses_the_old_limits() {
    let (env, mut store, k) = secret_key(Consistency::Leased, 1000);
    let mut iso = Isolate::default();
    let reqs: Vec<Req> = (0..20).map(|_| chat(&k)).collect();
    let _ = run_all(&env, &mut store, &mut iso, &reqs, T0);
    let _ = run_all(&env, &mut store, &mut iso, &reqs, T0 + 100);
    // The operator cuts the key to 2 per minute (record, guard, KV).
    patch(&mut store, &env, &k, T0 + 200, |r| r.rate_limits[0].limit = 2);
    let kv = store.db_keys[&k.id].clone();
    for r in store.kv_keys.values_mut().filter(|r| r.id == k.id) {
        *r = kv.clone();
    }
    // A lease later (the isolate's facts have lapsed): 40 more requests.
    let mut admitted = 0;
    for t in [T0 + LEASE + 250, T0 + LEASE + 300, T0 + LEASE + 350, T0 + LEASE + 400] {
        let reqs: Vec<Req> = (0..10).map(|_| chat(&k)).collect();
        admitted += run_all(&env, &mut store, &mut iso, &reqs, t).iter().filter(|o| o.code().is_none()).count();
    }
    assert_eq!(admitted, 0, "the minute already holds 40 of a limit of 2, yet {admitted} more were admitted");
}
