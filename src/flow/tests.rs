//! The flow, driven natively: a fake clock, KV and the org's records in
//! memory, the real guard logic ([`GuardState::apply`]) behind `Ask`, and a
//! scheduler that interleaves requests the way one isolate's event loop does
//! (a question to the guard is answered only after the other requests had
//! their turn).

use std::collections::HashMap;

use super::*;
use crate::guard::{FetchedFacts, GuardState};
use crate::path::CanonicalPath;
use crate::ratelimit::tests_support::Rng;
use crate::ratelimit::RateLimit;
use crate::scope::Scope;
use crate::token::{generate, TokenFormat};

const T0: i64 = 1_800_000_000_000;
const LEASE: i64 = 1000;

struct Env {
    policy: Policy,
    config: Config,
    settings: FlowSettings,
}

fn env() -> Env {
    Env {
        policy: Policy::default_policy().unwrap(),
        config: Config::default(),
        settings: FlowSettings { lease_ms: LEASE, key_guard: true },
    }
}

#[derive(Clone)]
struct Key {
    token: String,
    id: String,
}

/// KV (possibly stale), the org's records (the truth), the guards.
#[derive(Default)]
struct Store {
    kv_keys: HashMap<[u8; 32], KeyRecord>,
    kv_orgs: HashMap<String, OrgRecord>,
    db_keys: HashMap<String, KeyRecord>,
    db_orgs: HashMap<String, OrgRecord>,
    kv_users: HashMap<String, UserRecord>,
    guards: HashMap<String, (GuardState, Option<FetchedFacts>)>,
    kv_reads: u32,
    guard_calls: u32,
    facts_reads: u32,
    writes: u32,
    lease_id: u64,
}

impl Store {
    fn org(&mut self, baa: bool) {
        let o = OrgRecord { id: "org_1".into(), name: "o".into(), baa_active: baa, updated_at: 0 };
        self.db_orgs.insert(o.id.clone(), o.clone());
        self.kv_orgs.insert(o.id.clone(), o);
    }

    fn key(&mut self, n: u8, kind: KeyKind, consistency: Consistency, limit: u32) -> Key {
        let k = generate(&TokenFormat::default(), kind, &[n; 32]);
        let record = KeyRecord {
            id: format!("01KEY{n:03}"),
            org_id: "org_1".into(),
            user_id: None,
            name: "k".into(),
            kind,
            scopes: vec![Scope::parse("ai:chat").unwrap()],
            prefix: k.prefix.clone(),
            last_four: k.last_four.clone(),
            created_at: T0 - 1000,
            expires_at: None,
            revoked_at: None,
            rate_limits: vec![RateLimit { name: "minute".into(), limit, window_seconds: 60 }],
            allowed_origins: if kind == KeyKind::Widget {
                vec![crate::cors::OriginPattern::parse("https://shop.example.com").unwrap()]
            } else {
                Vec::new()
            },
            resource_id: None,
            consistency,
        };
        self.kv_keys.insert(k.hash.0, record.clone());
        self.db_keys.insert(record.id.clone(), record.clone());
        Key { token: k.plaintext, id: record.id }
    }

    /// The org's revoke: the tombstone first, then the system of record
    /// (KV is left stale on purpose).
    fn revoke(&mut self, key: &Key, now: i64, env: &Env) {
        let _ = self.call(&key.id, &GuardRequest::Revoke { revoked_at: now }, now, env);
        self.db_keys.get_mut(&key.id).unwrap().revoked_at = Some(now);
    }

    fn call(&mut self, key_id: &str, req: &GuardRequest, now: i64, env: &Env) -> Result<GuardReply, String> {
        self.guard_calls += 1;
        let fresh_facts =
            Facts_ { key: self.db_keys.get(key_id).cloned(), org: self.db_orgs.get("org_1").cloned(), user: None };
        let (state, facts) = self.guards.entry(key_id.to_owned()).or_default();
        if req.needs_facts() && !facts.as_ref().is_some_and(|f| f.fresh(now, env.settings.lease_ms)) {
            self.facts_reads += 1;
            *facts = Some(FetchedFacts { facts: fresh_facts, at: now });
        }
        self.lease_id += 1;
        let cx = crate::guard::Context {
            now,
            lease_ms: env.settings.lease_ms,
            facts: facts.as_ref(),
            policy: &env.policy,
            config: &env.config,
            lease_id: self.lease_id * 7919,
        };
        let (reply, ch) = state.apply(req, &cx);
        if !ch.is_empty() {
            self.writes += 1;
        }
        match reply {
            GuardReply::Invalid { reason } => Err(reason),
            r => Ok(r),
        }
    }

    fn run_later(&mut self, iso: &mut Isolate, later: Vec<Later>, now: i64, env: &Env) {
        for l in later {
            let (hash, call) = match l {
                Later::Call { hash, key_id, request } => (hash, Some((key_id, request))),
                Later::ReturnAt { slot, lease_id, at } if at <= now => {
                    (slot.hash, iso.due_return(&slot, lease_id, now))
                }
                Later::FlushAt { hash, at } if at <= now => (hash, iso.due_flush(&hash, now)),
                _ => continue,
            };
            if let Some((key_id, request)) = call {
                let r = self.call(&key_id, &request, now, env);
                iso.later_replied(&hash, &request, &r, now);
            }
        }
    }
}

use crate::guard::Facts as Facts_;

/// A request's inputs, owned so that many gates can live at once.
struct Req {
    token: String,
    path: CanonicalPath,
    method: &'static str,
    origin: Option<&'static str>,
    ip: String,
}

fn chat(key: &Key) -> Req {
    Req {
        token: key.token.clone(),
        path: CanonicalPath::parse("/v1/ai/chat").unwrap(),
        method: "POST",
        origin: None,
        ip: "203.0.113.9".into(),
    }
}

fn to(key: &Key, method: &'static str, path: &str) -> Req {
    Req { path: CanonicalPath::parse(path).unwrap(), method, ..chat(key) }
}

#[derive(Debug)]
enum Outcome {
    /// The quota reported, and when the guard counted it (`None`: a unit of
    /// the isolate's lease, admitted at the isolate's clock).
    Admitted(Option<QuotaWire>, Option<i64>),
    Refused(Refusal),
}

impl Outcome {
    fn code(&self) -> Option<ErrorCode> {
        match self {
            Outcome::Refused(r) => Some(r.error.code),
            Outcome::Admitted(..) => None,
        }
    }
}

fn gate<'r>(env: &'r Env, r: &'r Req) -> Gate<'r> {
    let presented = ApiKey::parse(&env.config.format, &r.token).unwrap();
    let facts = Facts { method: r.method, path: &r.path, origin: r.origin, referer: None };
    Gate::new(facts, presented, presented.hash(), &r.ip, &env.policy, &env.config, env.settings)
}

enum State {
    Ready,
    Asked(String, GuardRequest),
    Waiting(SlotId),
    Done(Outcome),
}

/// Answers a step's reads at once; a question to the guard is left pending;
/// an admission is served, or refunded when `refund` says so.
fn step_refunding(
    g: &mut Gate<'_>,
    iso: &mut Isolate,
    store: &mut Store,
    now: i64,
    refund: &mut dyn FnMut() -> bool,
) -> State {
    match g.next(iso, now) {
        Next::ReadKey => {
            store.kv_reads += 1;
            let hash = g.hash;
            g.key_read(Ok(store.kv_keys.get(&hash).cloned()));
            State::Ready
        }
        Next::ReadRecords { org_id, user_id } => {
            store.kv_reads += 1;
            g.records_read(Ok((
                store.kv_orgs.get(&org_id).cloned(),
                user_id.and_then(|u| store.kv_users.get(&u).cloned()),
            )));
            State::Ready
        }
        Next::ReadRecordsAndAsk { org_id, user_id, key_id, request } => {
            store.kv_reads += 1;
            g.records_read(Ok((
                store.kv_orgs.get(&org_id).cloned(),
                user_id.and_then(|u| store.kv_users.get(&u).cloned()),
            )));
            State::Asked(key_id, request)
        }
        Next::Ask { key_id, request } => State::Asked(key_id, request),
        Next::Wait { slot, .. } => State::Waiting(slot),
        Next::Refuse(r) => State::Done(Outcome::Refused(r)),
        Next::Admit(a) => {
            if refund() {
                // Refused before the origin (say, it timed out connecting).
                let refusal: Refusal = ApiError::new(ErrorCode::OriginUnavailable).into();
                if let Some(l) = a.admission.refund(iso, refusal.error.code) {
                    g.later.push(l);
                }
                return State::Done(Outcome::Refused(refusal));
            }
            let at = a.admission.counted_at();
            a.admission.served();
            State::Done(Outcome::Admitted(a.quota, at))
        }
    }
}

/// Runs `reqs` as concurrent requests of one isolate at `now`; returns the
/// outcomes in order, and runs the work left for after the responses.
fn run_all(env: &Env, store: &mut Store, iso: &mut Isolate, reqs: &[Req], now: i64) -> Vec<Outcome> {
    run_all_timed(env, store, iso, reqs, now, 0, &mut || false).0
}

/// [`run_all`] with a guard `latency` ms away (each way: the clock moves on
/// while a question travels) and some admissions refunded; also returns
/// when each admission happened and the time at the end.
fn run_all_timed(
    env: &Env,
    store: &mut Store,
    iso: &mut Isolate,
    reqs: &[Req],
    start: i64,
    latency: i64,
    refund: &mut dyn FnMut() -> bool,
) -> (Vec<Outcome>, Vec<i64>, i64) {
    let mut now = start;
    let mut times = Vec::new();
    let mut gates: Vec<Gate<'_>> = reqs.iter().map(|r| gate(env, r)).collect();
    let mut states: Vec<State> = reqs.iter().map(|_| State::Ready).collect();
    let mut later = Vec::new();
    loop {
        let mut progressed = false;
        for i in 0..gates.len() {
            if matches!(states[i], State::Ready) {
                progressed = true;
                states[i] = step_refunding(&mut gates[i], iso, store, now, refund);
                if let State::Done(Outcome::Admitted(_, at)) = &states[i] {
                    // A unit the guard counted was decided at its time (as
                    // for a strict key); a lease's unit here and now.
                    times.push(at.unwrap_or(now));
                }
                // Waiters poll: those whose question has its answer step on.
                for s in states.iter_mut() {
                    if matches!(s, State::Waiting(w) if !iso.asking(w, now)) {
                        *s = State::Ready;
                    }
                }
            }
        }
        if progressed {
            continue;
        }
        // Everyone is waiting for the guard: answer the oldest question.
        if let Some(i) = states.iter().position(|s| matches!(s, State::Asked(..))) {
            let State::Asked(key_id, request) = std::mem::replace(&mut states[i], State::Ready) else { unreachable!() };
            let r = store.call(&key_id, &request, now + latency, env);
            now += 2 * latency;
            gates[i].guard_replied(r);
            continue;
        }
        if states.iter().any(|s| matches!(s, State::Waiting(_))) {
            panic!("a request waits for a question nobody asks");
        }
        break;
    }
    for g in gates.iter_mut() {
        later.extend(g.take_later());
    }
    let timed: Vec<Later> = later.iter().filter(|l| !matches!(l, Later::Call { .. })).cloned().collect();
    store.run_later(iso, later, now, env);
    PENDING.with(|p| p.borrow_mut().extend(timed));
    let outcomes = states
        .into_iter()
        .map(|s| match s {
            State::Done(o) => o,
            _ => unreachable!(),
        })
        .collect();
    (outcomes, times, now)
}

thread_local! {
    /// Timed work (lease returns, refusal reports), run when due.
    static PENDING: std::cell::RefCell<Vec<Later>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn run_due(env: &Env, store: &mut Store, iso: &mut Isolate, now: i64) {
    let due: Vec<Later> = PENDING.with(|p| {
        let mut p = p.borrow_mut();
        let (due, rest): (Vec<Later>, Vec<Later>) = p.drain(..).partition(|l| match l {
            Later::ReturnAt { at, .. } | Later::FlushAt { at, .. } => *at <= now,
            Later::Call { .. } => false,
        });
        *p = rest;
        due
    });
    store.run_later(iso, due, now, env);
}

fn one(env: &Env, store: &mut Store, iso: &mut Isolate, r: Req, now: i64) -> Outcome {
    run_all(env, store, iso, std::slice::from_ref(&r), now).pop().unwrap()
}

fn admitted(o: &[Outcome]) -> usize {
    o.iter().filter(|o| matches!(o, Outcome::Admitted(..))).count()
}

#[test]
fn strict_keys_ask_the_guard_on_every_request() {
    let env = env();
    let mut store = Store::default();
    store.org(true);
    let k = store.key(1, KeyKind::Secret, Consistency::Strict, 100);
    let mut iso = Isolate::default();
    for i in 0..5 {
        let o = one(&env, &mut store, &mut iso, chat(&k), T0 + i);
        let Outcome::Admitted(Some(q), _) = o else { panic!("{o:?}") };
        assert_eq!(q.remaining, 99 - i as u32);
    }
    // The key record once (then reused), the org every time; the guard every time.
    assert_eq!((store.kv_reads, store.guard_calls), (6, 5));
}

#[test]
fn a_hot_leased_key_needs_no_kv_read_and_almost_no_guard_call() {
    let env = env();
    let mut store = Store::default();
    store.org(true);
    let k = store.key(1, KeyKind::Secret, Consistency::Leased, 1_000_000);
    let mut iso = Isolate::default();
    // Cold: the first request asks (one unit, no reservation).
    assert!(matches!(one(&env, &mut store, &mut iso, chat(&k), T0), Outcome::Admitted(..)));
    assert_eq!((store.kv_reads, store.guard_calls, store.facts_reads), (1, 1, 1));
    // Then 1,000 requests over a second: leases sized to the rate.
    for i in 1..=1000 {
        let o = one(&env, &mut store, &mut iso, chat(&k), T0 + i);
        assert!(matches!(o, Outcome::Admitted(Some(_), _)), "{i}: {o:?}");
    }
    assert_eq!(store.kv_reads, 1, "no KV read while the lease facts hold");
    assert!(store.guard_calls <= 5, "{} guard calls for 1,001 requests", store.guard_calls);
    assert!(store.writes <= store.guard_calls);
}

#[test]
fn a_leased_keys_remaining_counts_down_without_jumps() {
    let env = env();
    let mut store = Store::default();
    store.org(true);
    let k = store.key(1, KeyKind::Secret, Consistency::Leased, 6);
    let mut iso = Isolate::default();
    let mut seen = Vec::new();
    for i in 0..7 {
        match one(&env, &mut store, &mut iso, chat(&k), T0 + i) {
            Outcome::Admitted(Some(q), _) => seen.push(q.remaining),
            Outcome::Admitted(None, _) => panic!("no quota"),
            Outcome::Refused(r) => {
                assert_eq!(r.error.code, ErrorCode::RateLimited);
                assert_eq!(r.header("ratelimit-remaining"), Some("0"));
            }
        }
    }
    assert_eq!(seen, [5, 4, 3, 2, 1, 0], "this isolate's view, no jumps");
    assert!(store.guards["01KEY001"].0.leases.len() <= 1 && store.guard_calls <= 3, "{}", store.guard_calls);
}

#[test]
fn a_cold_leased_key_asks_every_time_and_reserves_nothing() {
    let env = env();
    let mut store = Store::default();
    store.org(true);
    let k = store.key(1, KeyKind::Secret, Consistency::Leased, 100);
    let mut iso = Isolate::default();
    for i in 0..5 {
        assert!(matches!(one(&env, &mut store, &mut iso, chat(&k), T0 + i * 60_000), Outcome::Admitted(..)));
    }
    assert_eq!(store.guard_calls, 5);
    assert_eq!(store.guards["01KEY001"].0.leases.len(), 0, "no budget held for a key used once a minute");
}

#[test]
fn a_hundred_concurrent_leased_requests_admit_exactly_the_limit() {
    let env = env();
    let mut store = Store::default();
    store.org(true);
    let k = store.key(1, KeyKind::Secret, Consistency::Leased, 20);
    let mut iso = Isolate::default();
    let reqs: Vec<Req> = (0..100).map(|_| chat(&k)).collect();
    let out = run_all(&env, &mut store, &mut iso, &reqs, T0);
    assert_eq!(admitted(&out), 20, "{out:?}");
    for o in out.iter().filter(|o| o.code().is_some()) {
        let Outcome::Refused(r) = o else { unreachable!() };
        assert_eq!(r.error.code, ErrorCode::RateLimited);
        let retry: i64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=61).contains(&retry), "{retry}");
        assert_eq!(r.header("ratelimit-remaining"), Some("0"));
        assert_eq!(r.header("ratelimit-limit"), Some("20"));
    }
    // One question at a time per slot; the 429s reused, not asked.
    assert!(store.guard_calls <= 4, "{} guard calls", store.guard_calls);
    // And the next request, with the limit spent, is refused without asking.
    let calls = store.guard_calls;
    assert_eq!(one(&env, &mut store, &mut iso, chat(&k), T0 + 10).code(), Some(ErrorCode::RateLimited));
    assert_eq!(store.guard_calls, calls);
}

#[test]
fn a_revoked_leased_key_stops_within_lease_ms_everywhere() {
    let env = env();
    let mut store = Store::default();
    store.org(true);
    let k = store.key(1, KeyKind::Secret, Consistency::Leased, 1_000_000);
    let (mut a, mut b) = (Isolate::default(), Isolate::default());
    let mut t = T0;
    let mut revoked_at = None;
    let mut last_admitted = 0;
    while t < T0 + 5_000 {
        for iso in [&mut a, &mut b] {
            run_due(&env, &mut store, iso, t);
            if let Outcome::Admitted(..) = one(&env, &mut store, iso, chat(&k), t) {
                last_admitted = t;
            }
        }
        if t >= T0 + 1_500 && revoked_at.is_none() {
            store.revoke(&k, t, &env);
            revoked_at = Some(t);
        }
        t += 7;
    }
    let revoked_at = revoked_at.unwrap();
    assert!(last_admitted > revoked_at - 20, "admitted right up to the revocation");
    assert!(last_admitted < revoked_at + LEASE, "admitted {} ms after the revocation", last_admitted - revoked_at);
    assert_eq!(one(&env, &mut store, &mut a, chat(&k), t).code(), Some(ErrorCode::InvalidApiKey));
    assert!(store.guards["01KEY001"].0.leases.is_empty() || store.guards["01KEY001"].0.reserved() > 0);
}

#[test]
fn a_baa_change_reaches_a_leased_key_within_lease_ms() {
    let env = env();
    let mut store = Store::default();
    store.org(true);
    let k = store.key(1, KeyKind::Secret, Consistency::Leased, 1_000_000);
    let mut iso = Isolate::default();
    let mut t = T0;
    while t < T0 + 1_000 {
        assert!(matches!(one(&env, &mut store, &mut iso, chat(&k), t), Outcome::Admitted(..)));
        t += 5;
    }
    // BAA off in the system of record; KV is left stale on purpose.
    store.db_orgs.get_mut("org_1").unwrap().baa_active = false;
    let changed = t;
    let mut first_402 = None;
    while t < changed + 3 * LEASE {
        run_due(&env, &mut store, &mut iso, t);
        match one(&env, &mut store, &mut iso, chat(&k), t) {
            Outcome::Admitted(..) => {
                assert!(first_402.is_none() && t < changed + LEASE, "admitted at +{}", t - changed)
            }
            Outcome::Refused(r) => {
                assert_eq!(r.error.code, ErrorCode::BaaRequired);
                first_402.get_or_insert(t);
            }
        }
        t += 5;
    }
    assert!(first_402.unwrap() <= changed + LEASE);
    // Every refusal was counted here and reported, none cost a write.
    let hour = changed - changed.rem_euclid(crate::guard::HOUR_MS);
    run_due(&env, &mut store, &mut iso, t + LEASE);
    let usage = &store.guards["01KEY001"].0.counters.usage.hours;
    let refused: u64 = usage.values().filter_map(|c| c.refused.get("baa_required")).sum();
    assert!(refused > 200, "{refused} refusals reported ({usage:?}, hour {hour})");
}

#[test]
fn refusals_of_a_known_key_probe_the_guard_at_most_once_per_lease_ms() {
    let env = env();
    let mut store = Store::default();
    store.org(true);
    let k = store.key(1, KeyKind::Secret, Consistency::Strict, 100);
    let mut iso = Isolate::default();
    // Never confirmed: the first refusal asks (a revoked key must get 401).
    let o = one(&env, &mut store, &mut iso, to(&k, "POST", "/v1/embeddings"), T0);
    assert_eq!(o.code(), Some(ErrorCode::MissingScope));
    assert_eq!(store.guard_calls, 1);
    for i in 1..200 {
        let o = one(&env, &mut store, &mut iso, to(&k, "POST", "/v1/embeddings"), T0 + i);
        assert_eq!(o.code(), Some(ErrorCode::MissingScope));
    }
    assert_eq!(store.guard_calls, 1, "answered here while the guard's word holds");
    assert_eq!(store.writes, 0, "refusals write nothing");
    // Reported once the flush is due (LEASE_MS after the first one counted).
    run_due(&env, &mut store, &mut iso, T0 + LEASE);
    assert_eq!(store.guard_calls, 1);
    run_due(&env, &mut store, &mut iso, T0 + 1 + LEASE);
    assert_eq!(store.guard_calls, 2);
    let usage = &store.guards["01KEY001"].0.counters.usage.hours;
    assert_eq!(usage.values().filter_map(|c| c.refused.get("missing_scope")).sum::<u64>(), 200);
    assert_eq!(store.writes, 0);
    // A revoked key (KV stale): after the guard's word expires, the probe
    // turns the refusal into the 401 of an unknown key.
    store.revoke(&k, T0 + LEASE, &env);
    let o = one(&env, &mut store, &mut iso, to(&k, "POST", "/v1/embeddings"), T0 + 2 * LEASE + 1);
    assert_eq!(o.code(), Some(ErrorCode::InvalidApiKey));
    let calls = store.guard_calls;
    assert_eq!(one(&env, &mut store, &mut iso, chat(&k), T0 + 2 * LEASE + 2).code(), Some(ErrorCode::InvalidApiKey));
    assert_eq!(store.guard_calls, calls, "a revocation seen is remembered");
}

#[test]
fn an_over_limit_flood_costs_one_guard_call_per_lease_ms() {
    let env = env();
    let mut store = Store::default();
    store.org(true);
    let k = store.key(1, KeyKind::Secret, Consistency::Strict, 3);
    let mut iso = Isolate::default();
    for i in 0..3 {
        assert!(matches!(one(&env, &mut store, &mut iso, chat(&k), T0 + i), Outcome::Admitted(..)));
    }
    let calls = store.guard_calls;
    for i in 0..500 {
        let o = one(&env, &mut store, &mut iso, chat(&k), T0 + 10 + i);
        let Outcome::Refused(r) = o else { panic!() };
        assert_eq!(r.error.code, ErrorCode::RateLimited);
        let retry: i64 = r.header("retry-after").unwrap().parse().unwrap();
        assert_eq!(retry, ceil_seconds(1000 + 60_000 - 1 - 10 - i).max(1), "retry-after counts down");
    }
    assert_eq!(store.guard_calls, calls + 1);
    assert_eq!(store.writes, 3, "only the admissions wrote");
}

#[test]
fn widget_visitors_are_limited_apart_and_a_visitors_flood_stays_here() {
    let env = env();
    let mut store = Store::default();
    store.org(true);
    let k = store.key(1, KeyKind::Widget, Consistency::Strict, 1000);
    let mut iso = Isolate::default();
    let from = |ip: &str| Req { origin: Some("https://shop.example.com"), ip: ip.into(), ..chat(&k) };
    for _ in 0..20 {
        assert!(matches!(one(&env, &mut store, &mut iso, from("198.51.100.1"), T0), Outcome::Admitted(..)));
    }
    let calls = store.guard_calls;
    for _ in 0..100 {
        let Outcome::Refused(r) = one(&env, &mut store, &mut iso, from("198.51.100.1"), T0 + 1) else { panic!() };
        assert_eq!((r.error.code, r.header("ratelimit-limit")), (ErrorCode::RateLimited, Some("20")));
        assert_eq!(r.header("access-control-allow-origin"), Some("https://shop.example.com"));
    }
    assert_eq!(store.guard_calls, calls + 1);
    assert!(matches!(one(&env, &mut store, &mut iso, from("198.51.100.2"), T0 + 2), Outcome::Admitted(..)));
    // A flood from a disallowed origin: one probe, then answered here.
    let evil = Req { origin: Some("https://evil.example"), ..chat(&k) };
    let calls = store.guard_calls;
    for i in 0..100 {
        let evil = Req { ip: format!("192.0.2.{i}"), ..evil.clone_req() };
        assert_eq!(one(&env, &mut store, &mut iso, evil, T0 + 3).code(), Some(ErrorCode::OriginNotAllowed));
    }
    assert_eq!(store.guard_calls, calls, "the guard confirmed the key moments ago");
}

impl Req {
    fn clone_req(&self) -> Req {
        Req {
            token: self.token.clone(),
            path: self.path.clone(),
            method: self.method,
            origin: self.origin,
            ip: self.ip.clone(),
        }
    }
}

#[test]
fn leased_refunds_go_back_to_the_lease_and_guarded_ones_to_the_guard() {
    let env = env();
    let mut store = Store::default();
    store.org(true);
    let k = store.key(1, KeyKind::Secret, Consistency::Leased, 10);
    let mut iso = Isolate::default();
    let r = chat(&k);
    // First request: counted by the guard (the immediate unit).
    let mut g = gate(&env, &r);
    let Next::ReadKey = g.next(&mut iso, T0) else { panic!() };
    g.key_read(Ok(store.kv_keys.values().next().cloned()));
    let Next::Ask { key_id, request } = g.next(&mut iso, T0) else { panic!() };
    g.guard_replied(store.call(&key_id, &request, T0, &env));
    let Next::Admit(a) = g.next(&mut iso, T0) else { panic!() };
    let Some(Later::Call { request: GuardRequest::Refund { counted_at, reason, .. }, .. }) =
        a.admission.refund(&mut iso, ErrorCode::OriginUnavailable)
    else {
        panic!()
    };
    assert_eq!((counted_at, reason.as_str()), (T0, "origin_unavailable"));
    // Second request: a lease is granted; a unit taken from it and given back
    // returns to the lease.
    let mut g = gate(&env, &r);
    let Next::Ask { key_id, request } = g.next(&mut iso, T0 + 1) else { panic!() };
    let GuardRequest::Lease { want, .. } = &request else { panic!("{request:?}") };
    assert!(*want > 0);
    g.guard_replied(store.call(&key_id, &request, T0 + 1, &env));
    let Next::Admit(a) = g.next(&mut iso, T0 + 1) else { panic!() };
    a.admission.served();
    let slot = SlotId { hash: g.hash, visitor: None };
    let reserved = iso.slots[&slot].lease.as_ref().unwrap().reserved;
    let mut g = gate(&env, &r);
    let Next::Admit(a) = g.next(&mut iso, T0 + 2) else { panic!() };
    assert_eq!(iso.slots[&slot].lease.as_ref().unwrap().used, 1);
    assert!(a.admission.refund(&mut iso, ErrorCode::ServiceUnavailable).is_none());
    assert_eq!(iso.slots[&slot].lease.as_ref().unwrap().used, 0);
    // The lease ends: its return reports what was used.
    let (_, ret) = iso.due_return(&slot, iso.slots[&slot].lease.as_ref().unwrap().id, T0 + 1 + LEASE).unwrap();
    let GuardRequest::Return { report, .. } = ret else { panic!() };
    assert_eq!(report.used, 0);
    assert!(reserved > 0);
}

#[test]
#[should_panic(expected = "dropped without being served or refunded")]
fn an_admission_dropped_undischarged_is_a_bug() {
    let env = env();
    let mut store = Store::default();
    store.org(true);
    let k = store.key(1, KeyKind::Secret, Consistency::Strict, 10);
    let mut iso = Isolate::default();
    let r = chat(&k);
    let mut g = gate(&env, &r);
    let Next::ReadKey = g.next(&mut iso, T0) else { panic!() };
    g.key_read(Ok(store.kv_keys.values().next().cloned()));
    let Next::ReadRecordsAndAsk { key_id, request, .. } = g.next(&mut iso, T0) else { panic!() };
    g.records_read(Ok((store.kv_orgs.get("org_1").cloned(), None)));
    g.guard_replied(store.call(&key_id, &request, T0, &env));
    let Next::Admit(a) = g.next(&mut iso, T0) else { panic!() };
    drop(a);
}

#[test]
fn the_isolate_is_bounded() {
    let env = env();
    let mut store = Store::default();
    store.org(true);
    let mut iso = Isolate::default();
    // Leased widget keys: one slot per visitor.
    let keys: Vec<Key> = (0..40).map(|n| store.key(n, KeyKind::Widget, Consistency::Leased, 1_000_000)).collect();
    for (t, i) in (T0..).zip(0..(MAX_SLOTS + 500)) {
        let k = &keys[i % keys.len()];
        let r =
            Req { origin: Some("https://shop.example.com"), ip: format!("10.{}.{}.1", i / 256, i % 256), ..chat(k) };
        assert!(matches!(one(&env, &mut store, &mut iso, r, t), Outcome::Admitted(..)));
    }
    let (keys_n, slots_n) = iso.sizes();
    assert!(keys_n <= MAX_KEYS && slots_n <= MAX_SLOTS, "{keys_n} keys, {slots_n} slots");
}

/// Property: isolates of one leased key admitting from leases (of random
/// length), returning them when due or later, vanishing with them,
/// refunding, the clock moving at random — never more than N admitted in any
/// window of the key's limit.
#[test]
fn property_isolates_never_admit_more_than_the_limit() {
    for seed in 1..=200u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut env = env();
        env.settings.lease_ms = 100 + rng.below(2000) as i64;
        let mut store = Store::default();
        store.org(true);
        let limit = 1 + rng.below(15) as u32;
        let k = store.key(1, KeyKind::Secret, Consistency::Leased, limit);
        // A short window so that windows roll over during the run.
        for r in [store.kv_keys.values_mut().next().unwrap(), store.db_keys.values_mut().next().unwrap()] {
            r.rate_limits = vec![RateLimit { name: "minute".into(), limit, window_seconds: 2 }];
        }
        let mut isolates: Vec<Isolate> = (0..1 + rng.below(3)).map(|_| Isolate::default()).collect();
        let mut now = T0;
        let mut admitted_at: Vec<i64> = Vec::new();
        let mut refund_rng = Rng(seed);
        for _ in 0..300 {
            now += match rng.below(4) {
                0 => 0,
                1 => rng.below(20) as i64,
                2 => rng.below(300) as i64,
                _ => rng.below(1500) as i64,
            };
            let i = rng.below(isolates.len() as u64) as usize;
            match rng.below(10) {
                0..=6 => {
                    let n = 1 + rng.below(6) as usize;
                    let reqs: Vec<Req> = (0..n).map(|_| chat(&k)).collect();
                    let mut refund = || refund_rng.below(8) == 0;
                    let latency = rng.below(60) as i64;
                    let (_, times, end) =
                        run_all_timed(&env, &mut store, &mut isolates[i], &reqs, now, latency, &mut refund);
                    admitted_at.extend(times);
                    now = end;
                }
                7 | 8 => run_due(&env, &mut store, &mut isolates[i], now),
                // The isolate vanishes, its leases unreported.
                _ => isolates[i] = Isolate::default(),
            }
        }
        admitted_at.sort_unstable();
        for (i, &start) in admitted_at.iter().enumerate() {
            let n = admitted_at[i..].iter().take_while(|&&x| x < start + 2000).count();
            assert!(n <= limit as usize, "seed {seed}: {n} admitted within 2 s, limit {limit}");
        }
        // And budget does come back: the run admitted something.
        assert!(!admitted_at.is_empty(), "seed {seed}");
    }
}

#[test]
fn a_lease_is_timed_from_when_it_was_asked_for_not_from_the_answer() {
    let env = env();
    let mut store = Store::default();
    store.org(true);
    let k = store.key(1, KeyKind::Secret, Consistency::Leased, 1000);
    let mut iso = Isolate::default();
    assert!(matches!(one(&env, &mut store, &mut iso, chat(&k), T0), Outcome::Admitted(..)));
    // The second question travels 300 ms each way.
    let r = chat(&k);
    let mut g = gate(&env, &r);
    let Next::Ask { key_id, request } = g.next(&mut iso, T0 + 10) else { panic!() };
    g.guard_replied(store.call(&key_id, &request, T0 + 310, &env));
    let Next::Admit(a) = g.next(&mut iso, T0 + 610) else { panic!() };
    a.admission.served();
    let slot = SlotId { hash: g.hash, visitor: None };
    let lease = iso.slots[&slot].lease.clone().unwrap();
    // The guard's facts were read at T0 (fresh for LEASE/2): the lease ends
    // at T0 + LEASE on the guard's clock, and the isolate, counting from
    // when it asked (T0 + 10), stops no later.
    assert!(lease.reserved > 0);
    assert_eq!(lease.until, T0 + 10 + (T0 + LEASE - (T0 + 310)));
    assert!(lease.until <= T0 + LEASE);
    let calls = store.guard_calls;
    assert!(matches!(one(&env, &mut store, &mut iso, chat(&k), lease.until - 1), Outcome::Admitted(_, None)));
    assert_eq!(store.guard_calls, calls);
    let _ = one(&env, &mut store, &mut iso, chat(&k), lease.until);
    assert_eq!(store.guard_calls, calls + 1, "at its end the lease is not used");
}
