//! Review tests (adversarial): the flow driven natively with the real guard
//! logic behind `Ask` (the harness the flow's tests share). Tests documented
//! as "review finding, fixed" reproduced a finding of the review of the
//! leased-quota change and now guard its fix; the others pin down what was
//! checked and found sound.

use super::harness::*;
use super::*;
use crate::guard::MAX_LEASES;
use crate::ratelimit::tests_support::Rng;
use crate::ratelimit::RateLimit;

/// Runs `reqs` concurrently; returns the outcomes and the timed work left.
fn run_all(env: &Env, store: &mut Store, iso: &mut Isolate, reqs: &[Req], now: i64) -> (Vec<Outcome>, Vec<Later>) {
    let (outcomes, _, _, timed) = run_all_timed(env, store, iso, reqs, now, 0, &mut || false);
    (outcomes, timed)
}

fn one(env: &Env, store: &mut Store, iso: &mut Isolate, r: Req, now: i64) -> Outcome {
    run_all(env, store, iso, std::slice::from_ref(&r), now).0.pop().unwrap()
}

/// Review finding, fixed: a strict key whose org (or user) refuses — BAA off, a disabled
/// user, a role-capped scope — passes the key-only pre-check, so every
/// request runs the guard's check concurrently with the KV reads: the guard
/// counts it (a storage write), then the worker refunds it (a second call).
/// The refund gives the unit back, so unlike admitted requests nothing caps
/// the flood: one write and two guard calls per refused request, forever.
/// Promise 4: refusals cost the guard no storage write, and a flood of them
/// at most ~one call per isolate per LEASE_MS.
#[test]
fn review_records_refusals_of_a_strict_key_write_the_guard_per_request() {
    let env = env();
    let mut store = Store::default();
    store.org(false);
    // A public widget key (strict, the default) of an org whose BAA lapsed.
    let k = store.key(1, KeyKind::Widget, Consistency::Strict, 1000);
    let mut iso = Isolate::default();
    for i in 0..100 {
        let o = one(&env, &mut store, &mut iso, widget(&k, SHOP, &format!("198.51.100.{i}")), T0 + i * 5);
        assert_eq!(o.code(), Some(ErrorCode::BaaRequired));
    }
    // The first request of the flood runs the guard's check concurrently
    // with the records (this isolate has not seen them refuse yet): one
    // write and its refund; from then on the records are read first.
    assert!(
        store.writes <= 1 && store.guard_calls <= 3,
        "100 refused requests (BAA off) in 0.5 s cost {} guard writes and {} guard calls ({:?})",
        store.writes,
        store.guard_calls,
        store.calls_by_kind
    );
}

/// The same flood on a leased key costs nothing: the guard decides on the
/// facts before it counts (checked and sound).
#[test]
fn review_records_refusals_of_a_leased_key_cost_no_write() {
    let env = env();
    let mut store = Store::default();
    store.org(false);
    let k = store.key(1, KeyKind::Widget, Consistency::Leased, 1000);
    let mut iso = Isolate::default();
    for i in 0..100 {
        let o = one(&env, &mut store, &mut iso, widget(&k, SHOP, &format!("198.51.100.{i}")), T0 + i * 5);
        assert_eq!(o.code(), Some(ErrorCode::BaaRequired));
    }
    assert_eq!(store.writes, 0);
    assert!(store.guard_calls <= 2, "{:?}", store.calls_by_kind);
}

/// Review finding, fixed: the "is it revoked?" probe of a refusal (402–405) is not
/// single-flighted. Requests refused while no probe answer is in hand each
/// send their own probe: a burst of N concurrent refused requests costs N
/// guard calls (and again whenever the guard's word lapses), not one.
#[test]
fn review_a_concurrent_refusal_flood_probes_once() {
    let (env, mut store, k) = secret_key(Consistency::Strict, 100);
    let mut iso = Isolate::default();
    // The key is known to the isolate (one admitted request), then the guard's
    // word lapses and a burst of refused requests arrives at once.
    assert!(matches!(one(&env, &mut store, &mut iso, chat(&k), T0), Outcome::Admitted(..)));
    let calls = store.guard_calls;
    let burst: Vec<Req> = (0..100).map(|_| to(&k, "POST", "/v1/embeddings")).collect();
    let (out, _) = run_all(&env, &mut store, &mut iso, &burst, T0 + 2 * LEASE);
    assert_eq!(count(&out, Some(ErrorCode::MissingScope)), 100);
    let spent = store.guard_calls - calls;
    assert!(spent <= 2, "100 concurrent refused requests cost {spent} guard calls");
}

/// Review finding, fixed (same cause, over-limit): with the limit spent and the
/// remembered 429 lapsed, every concurrent request checks with the guard
/// until one 429 is back.
#[test]
fn review_a_concurrent_over_limit_flood_asks_once() {
    let (env, mut store, k) = secret_key(Consistency::Strict, 3);
    let mut iso = Isolate::default();
    for i in 0..3 {
        assert!(matches!(one(&env, &mut store, &mut iso, chat(&k), T0 + i), Outcome::Admitted(..)));
    }
    let calls = store.guard_calls;
    let burst: Vec<Req> = (0..100).map(|_| chat(&k)).collect();
    let (out, _) = run_all(&env, &mut store, &mut iso, &burst, T0 + 10);
    assert_eq!(count(&out, Some(ErrorCode::RateLimited)), 100);
    let spent = store.guard_calls - calls;
    assert!(spent <= 2, "100 concurrent over-limit requests cost {spent} guard calls");
}

/// Review finding, fixed (same cause, leased widget key): the single flight is per slot,
/// and a widget key has a slot per visitor; with the lease facts lapsed, a
/// burst of refused requests (here a bad origin) from distinct addresses
/// asks the guard once per address.
#[test]
fn review_a_leased_widget_bad_origin_flood_from_many_visitors_asks_once() {
    let env = env();
    let mut store = Store::default();
    store.org(true);
    let k = store.key(1, KeyKind::Widget, Consistency::Leased, 1000);
    let mut iso = Isolate::default();
    assert!(matches!(one(&env, &mut store, &mut iso, widget(&k, SHOP, "192.0.2.1"), T0), Outcome::Admitted(..)));
    let calls = store.guard_calls;
    let burst: Vec<Req> = (0..100).map(|i| widget(&k, "https://evil.example", &format!("10.0.0.{i}"))).collect();
    let (out, _) = run_all(&env, &mut store, &mut iso, &burst, T0 + 2 * LEASE);
    assert_eq!(count(&out, Some(ErrorCode::OriginNotAllowed)), 100);
    let spent = store.guard_calls - calls;
    assert!(spent <= 2, "100 concurrent bad-origin requests cost {spent} guard calls ({:?})", store.calls_by_kind);
}

/// Review finding, fixed: the guard answers a refund `Recorded` even for a revoked key,
/// and the isolate takes every `Recorded` as "the guard says: not revoked".
/// A refund that reaches the guard after the revocation therefore re-arms
/// the local answering of refusals: a revoked key (KV still stale) gets its
/// 402/403 instead of the 401 of an unknown key for up to LEASE_MS after
/// the refund's answer, without any probe.
#[test]
fn review_a_refund_answer_is_not_a_not_revoked_confirmation() {
    let (env, mut store, k) = secret_key(Consistency::Strict, 100);
    let mut iso = Isolate::default();
    // T0: admitted by the guard, then refused before the origin: a refund
    // is left for after the response.
    let r = chat(&k);
    let a = admit_strict(&env, &mut store, &mut iso, &r, T0);
    let refund = a.admission.refund(&mut iso, ErrorCode::ServiceUnavailable).unwrap();
    // T0 + 10: the key is revoked (KV stays stale).
    store.revoke(&k, T0 + 10, &env);
    // T0 + 900: the refund reaches the guard (slow waitUntil, busy object).
    store.run_later(&mut iso, vec![refund], T0 + 900, &env);
    // T0 + 1500: more than LEASE_MS after the guard last really said "not
    // revoked" (T0), a refused request of the revoked key.
    let calls = store.guard_calls;
    let o = one(&env, &mut store, &mut iso, to(&k, "POST", "/v1/embeddings"), T0 + 1500);
    assert_eq!(
        o.code(),
        Some(ErrorCode::InvalidApiKey),
        "a key revoked 1490 ms ago got {:?} with {} guard calls",
        o.code(),
        store.guard_calls - calls
    );
}

/// Review finding, fixed: a request that stops (client gone: the runtime cancels it)
/// while it waits for another request's question leaves `waiters` counted
/// on its slot for good. Such a slot is never idle and never evicted, so
/// the isolate's slot map grows past MAX_SLOTS — by one slot per visitor
/// address of a public leased widget key.
#[test]
fn review_cancelled_waiters_pin_slots_and_the_slot_map_grows_past_its_bound() {
    let env = env();
    let mut store = Store::default();
    store.org(true);
    let k = store.key(1, KeyKind::Widget, Consistency::Leased, 1_000_000);
    let mut iso = Isolate::default();
    let mut now = T0;
    for i in 0..(MAX_SLOTS + 200) {
        let ip = format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256);
        let (ra, rb) = (widget(&k, SHOP, &ip), widget(&k, SHOP, &ip));
        let mut a = gate(&env, &ra);
        let (key_id, request) = loop {
            match step(&mut a, &mut iso, &mut store, now) {
                State::Ready => continue,
                State::Asked(key_id, request) => break (key_id, request),
                _ => panic!("visitor {i}: the first request should ask"),
            }
        };
        {
            let mut b = gate(&env, &rb);
            assert!(matches!(b.next(&mut iso, now), Next::Wait { .. }), "visitor {i}: the second waits");
            // The second request is cancelled (dropped) while it waits.
        }
        a.guard_replied(store.call(&key_id, &request, now, &env));
        let State::Done(Outcome::Admitted(..)) = step(&mut a, &mut iso, &mut store, now) else { panic!("visitor {i}") };
        let _ = a.take_later();
        // Time passes: every lease and remembered answer has long ended.
        now += 2 * LEASE;
    }
    let (_, slots) = iso.sizes();
    assert!(slots <= MAX_SLOTS, "{slots} slots remembered (bound {MAX_SLOTS})");
}

/// Review finding, fixed: a request cancelled while it asks the guard leaves its slot
/// marked as asking (`Isolate::abandon` exists but nothing calls it): every
/// later request of that slot waits up to ASK_TIMEOUT_MS (5 s) for an
/// answer that never comes.
#[test]
fn review_a_cancelled_asker_does_not_block_its_slot() {
    let (env, mut store, k) = secret_key(Consistency::Leased, 1000);
    let mut iso = Isolate::default();
    assert!(matches!(one(&env, &mut store, &mut iso, chat(&k), T0), Outcome::Admitted(..)));
    let ra = chat(&k);
    {
        let mut a = gate(&env, &ra);
        let Next::Ask { .. } = a.next(&mut iso, T0 + 2 * LEASE) else { panic!("asks") };
        // Cancelled: dropped without an answer. The shell's guard around the
        // question ends it, as src/edge/gate.rs does.
        let asking = a.asking().cloned().expect("the asking slot");
        drop(a);
        iso.abandon(&asking);
    }
    let rb = chat(&k);
    let mut b = gate(&env, &rb);
    match b.next(&mut iso, T0 + 2 * LEASE + 10) {
        Next::Ask { .. } => {}
        Next::Wait { until, .. } => {
            panic!("the next request waits {} ms for a question nobody will answer", until - (T0 + 2 * LEASE + 10))
        }
        n => panic!("{n:?}"),
    }
    b.guard_replied(Err("not sent".into()));
    let _ = b.next(&mut iso, T0 + 2 * LEASE + 10);
}

/// Review finding, fixed: when the guard grants no reservation (its table of MAX_LEASES
/// live leases is full), one isolate's concurrent requests of one slot are
/// served one guard round trip at a time (one question per slot), and each
/// wait costs a step: past MAX_STEPS (64) queued requests fail closed with
/// 503, although the key has plenty of budget. (A strict key would have
/// served them all concurrently.)
#[test]
fn review_a_full_lease_table_makes_concurrent_leased_requests_fail_503() {
    let (env, mut store, k) = secret_key(Consistency::Leased, 1_000_000);
    // Other isolates hold MAX_LEASES live leases of the key.
    let limits = Limits {
        key: vec![RateLimit { name: "minute".into(), limit: 1_000_000, window_seconds: 60 }],
        visitor: None,
        ..Limits::default()
    };
    for _ in 0..MAX_LEASES {
        let req = GuardRequest::Lease {
            key: KeyRef { key_id: k.id.clone(), org_id: "org_1".into(), issued_at: None, ..KeyRef::default() },
            limits: limits.clone(),
            scope: Some("ai:chat".into()),
            want: 100,
            report: None,
            refusals: Refusals::new(),
        };
        assert!(matches!(store.call(&k.id, &req, T0, &env), Ok(GuardReply::Leased { lease: Some(_), .. })));
    }
    let mut iso = Isolate::default();
    let reqs: Vec<Req> = (0..100).map(|_| chat(&k)).collect();
    let (out, _) = run_all(&env, &mut store, &mut iso, &reqs, T0 + 1);
    let unavailable = count(&out, Some(ErrorCode::ServiceUnavailable));
    assert_eq!(
        (count(&out, None), unavailable),
        (100, 0),
        "a key with 1,000,000 per minute: {unavailable} of 100 concurrent requests got 503"
    );
}

/// Review finding, fixed: the guard decides "may this request take a unit?" on its own
/// clock, the isolate decides the request on its own. Around a key's expiry,
/// when the guard's clock is ahead of the isolate's (two machines), the
/// guard answers "not allowed" (nothing counted) while the isolate finds the
/// key still valid and asks again — up to MAX_STEPS times: one request
/// costs ~64 guard calls and ends as a 503, not a 200 or a 401.
#[test]
fn review_a_key_expiring_under_clock_skew_loops_through_the_guard() {
    let (env, mut store, k) = secret_key(Consistency::Leased, 1000);
    for r in store.kv_keys.values_mut().chain(store.db_keys.values_mut()) {
        r.expires_at = Some(T0 + 1000);
    }
    store.skew = 50;
    let mut iso = Isolate::default();
    let o = one(&env, &mut store, &mut iso, chat(&k), T0 + 980);
    assert!(
        store.guard_calls <= 2 && o.code() != Some(ErrorCode::ServiceUnavailable),
        "one request 20 ms before expiry (guard clock 50 ms ahead): {:?} after {} guard calls",
        o.code(),
        store.guard_calls
    );
}

// --------------------------------------------------------------- sound

/// Checked and sound: leased widget keys across isolates — key and
/// per-visitor limits, leases, waits, returns, isolates vanishing — never
/// admit more than N in any window of the key's limit or of any visitor's.
#[test]
fn review_property_leased_widget_visitors_never_exceed_key_or_visitor_limits() {
    for seed in 1..=60u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xABCD);
        let mut env = env();
        env.settings.lease_ms = 100 + rng.below(1500) as i64;
        let mut store = Store::default();
        store.org(true);
        let key_limit = 5 + rng.below(40) as u32;
        let k = store.key(1, KeyKind::Widget, Consistency::Leased, key_limit);
        // The policy's per-visitor limit is 20 per 60 s; the key's: a
        // window of 60 s too, so windows cover the whole run.
        let mut isolates: Vec<Isolate> = (0..1 + rng.below(3)).map(|_| Isolate::default()).collect();
        let mut pending: Vec<(usize, Later)> = Vec::new();
        let mut now = T0;
        let mut admitted: Vec<(i64, String)> = Vec::new();
        for _ in 0..250 {
            now += match rng.below(4) {
                0 => 0,
                1 => rng.below(20) as i64,
                2 => rng.below(300) as i64,
                _ => rng.below(900) as i64,
            };
            let i = rng.below(isolates.len() as u64) as usize;
            match rng.below(10) {
                0..=6 => {
                    let n = 1 + rng.below(8) as usize;
                    let ips: Vec<String> = (0..n).map(|_| format!("198.51.100.{}", rng.below(3))).collect();
                    let reqs: Vec<Req> = ips.iter().map(|ip| widget(&k, SHOP, ip)).collect();
                    let (out, timed) = run_all(&env, &mut store, &mut isolates[i], &reqs, now);
                    for (o, ip) in out.iter().zip(&ips) {
                        if matches!(o, Outcome::Admitted(..)) {
                            admitted.push((now, ip.clone()));
                        }
                    }
                    pending.extend(timed.into_iter().map(|l| (i, l)));
                }
                7 | 8 => {
                    let (due, rest): (Vec<_>, Vec<_>) = pending.drain(..).partition(|(j, l)| {
                        *j == i
                            && match l {
                                Later::ReturnAt { at, .. } | Later::FlushAt { at, .. } => *at <= now,
                                Later::Call { .. } => true,
                            }
                    });
                    pending = rest;
                    let due: Vec<Later> = due.into_iter().map(|(_, l)| l).collect();
                    store.run_later(&mut isolates[i], due, now, &env);
                }
                _ => {
                    isolates[i] = Isolate::default();
                    pending.retain(|(j, _)| *j != i);
                }
            }
        }
        let check = |times: &[i64], limit: u32, what: &str| {
            for (n, &start) in times.iter().enumerate() {
                let c = times[n..].iter().take_while(|&&x| x < start + 60_000).count();
                assert!(c <= limit as usize, "seed {seed}: {c} admitted in 60 s for {what}, limit {limit}");
            }
        };
        let mut all: Vec<i64> = admitted.iter().map(|(t, _)| *t).collect();
        all.sort_unstable();
        check(&all, key_limit, "the key");
        for v in 0..3 {
            let ip = format!("198.51.100.{v}");
            let mut times: Vec<i64> = admitted.iter().filter(|(_, x)| *x == ip).map(|(t, _)| *t).collect();
            times.sort_unstable();
            check(&times, 20, &ip);
        }
    }
}

/// Checked and sound: a revoked leased key is refused everywhere no later
/// than LEASE_MS after the tombstone, even with concurrent requests and
/// several isolates; KV stays stale throughout.
#[test]
fn review_a_revoked_leased_key_under_concurrency_stops_within_lease_ms() {
    let (env, mut store, k) = secret_key(Consistency::Leased, 1_000_000);
    let mut isolates: Vec<Isolate> = (0..3).map(|_| Isolate::default()).collect();
    let mut t = T0;
    let revoked_at = T0 + 1_234;
    let mut revoked = false;
    while t < T0 + 4_000 {
        if !revoked && t >= revoked_at {
            store.revoke(&k, t, &env);
            revoked = true;
        }
        for iso in isolates.iter_mut() {
            let reqs: Vec<Req> = (0..3).map(|_| chat(&k)).collect();
            let (out, _) = run_all(&env, &mut store, iso, &reqs, t);
            if t >= revoked_at + LEASE {
                assert_eq!(count(&out, Some(ErrorCode::InvalidApiKey)), 3, "at +{} ms", t - revoked_at);
            }
        }
        t += 13;
    }
}
