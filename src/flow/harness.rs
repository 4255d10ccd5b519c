//! The harness the flow's tests share: a fake clock, KV and the org's
//! records in memory, the real guard logic ([`GuardState::apply`]) behind
//! `Ask`, and a scheduler that interleaves requests the way one isolate's
//! event loop does (a question to the guard is answered only after the other
//! requests had their turn).
#![allow(dead_code)]

use std::collections::HashMap;

use super::*;
use crate::guard::{FetchedFacts, GuardState};
use crate::path::CanonicalPath;
use crate::ratelimit::RateLimit;
use crate::scope::Scope;
use crate::token::{generate, ApiKey, TokenFormat};

pub(crate) const T0: i64 = 1_800_000_000_000;
pub(crate) const LEASE: i64 = 1000;

pub(crate) struct Env {
    pub(crate) policy: Policy,
    pub(crate) config: Config,
    pub(crate) settings: FlowSettings,
}

/// The usual start of a flow test: the environment, a store with an org
/// that has a BAA, and one secret key with `limit` per minute.
pub(crate) fn secret_key(consistency: Consistency, limit: u32) -> (Env, Store, Key) {
    let env = env();
    let mut store = Store::default();
    store.org(true);
    let k = store.key(1, KeyKind::Secret, consistency, limit);
    (env, store, k)
}

pub(crate) fn env() -> Env {
    Env {
        policy: Policy::default_policy().unwrap(),
        config: Config {
            visitor_tokens: Some(crate::turnstile::visitor_token_key(b"the harness's origin signing secret!")),
            turnstile: true,
            ..Config::default()
        },
        settings: FlowSettings { lease_ms: LEASE, key_guard: true },
    }
}

#[derive(Clone)]
pub(crate) struct Key {
    pub(crate) token: String,
    pub(crate) id: String,
}

/// KV (possibly stale), the org's records (the truth), the guards.
#[derive(Default)]
pub(crate) struct Store {
    pub(crate) kv_keys: HashMap<[u8; 32], KeyRecord>,
    pub(crate) kv_orgs: HashMap<String, OrgRecord>,
    pub(crate) db_keys: HashMap<String, KeyRecord>,
    pub(crate) db_orgs: HashMap<String, OrgRecord>,
    pub(crate) kv_users: HashMap<String, UserRecord>,
    pub(crate) guards: HashMap<String, (GuardState, Option<FetchedFacts>)>,
    pub(crate) kv_reads: u32,
    pub(crate) guard_calls: u32,
    pub(crate) facts_reads: u32,
    pub(crate) writes: u32,
    pub(crate) lease_id: u64,
    /// Guard calls received, by kind.
    pub(crate) calls_by_kind: HashMap<&'static str, u32>,
    /// How far the guard's clock is ahead of the isolate's (ms).
    pub(crate) skew: i64,
    /// siteverify calls, with the remote address each carried.
    pub(crate) siteverify: Vec<(String, Option<String>)>,
}

impl Store {
    /// The fake siteverify: `pass:<host>` passes for that host, `down` has
    /// no answer, anything else is refused.
    fn verify_turnstile(&mut self, token: &str, remote_ip: Option<String>) -> Result<(u16, String), String> {
        self.siteverify.push((token.to_owned(), remote_ip));
        match token.strip_prefix("pass:") {
            Some(host) => Ok((200, format!(r#"{{"success":true,"hostname":"{host}","error-codes":[]}}"#))),
            None if token == "down" => Err("connection refused".into()),
            None => Ok((200, r#"{"success":false,"error-codes":["invalid-input-response"]}"#.into())),
        }
    }
}

impl Store {
    pub(crate) fn org(&mut self, baa: bool) {
        let o = OrgRecord { id: "org_1".into(), name: "o".into(), baa_active: baa, updated_at: 0 };
        self.db_orgs.insert(o.id.clone(), o.clone());
        self.kv_orgs.insert(o.id.clone(), o);
    }

    pub(crate) fn key(&mut self, n: u8, kind: KeyKind, consistency: Consistency, limit: u32) -> Key {
        let k = generate(&TokenFormat::default(), kind, &[n; 32]);
        let record = KeyRecord {
            name: "k".into(),
            kind,
            scopes: vec![Scope::parse("ai:chat").unwrap()],
            prefix: k.prefix.clone(),
            last_four: k.last_four.clone(),
            rate_limits: vec![RateLimit { name: "minute".into(), limit, window_seconds: 60 }],
            allowed_origins: if kind == KeyKind::Widget {
                vec![crate::cors::OriginPattern::parse("https://shop.example.com").unwrap()]
            } else {
                Vec::new()
            },
            consistency,
            ..KeyRecord::synthetic(format!("01KEY{n:03}"), "org_1", T0 - 1000)
        };
        self.kv_keys.insert(k.hash.0, record.clone());
        self.db_keys.insert(record.id.clone(), record.clone());
        Key { token: k.plaintext, id: record.id }
    }

    /// Changes a key's record everywhere (KV and the org's records).
    pub(crate) fn edit_key(&mut self, key: &Key, edit: impl Fn(&mut KeyRecord)) {
        for r in self.kv_keys.values_mut().chain(self.db_keys.values_mut()).filter(|r| r.id == key.id) {
            edit(r);
        }
    }

    /// The org's revoke: the tombstone first, then the system of record
    /// (KV is left stale on purpose).
    pub(crate) fn revoke(&mut self, key: &Key, now: i64, env: &Env) {
        let _ = self.call(&key.id, &GuardRequest::Revoke { revoked_at: now, key_id: None }, now, env);
        self.db_keys.get_mut(&key.id).unwrap().revoked_at = Some(now);
    }

    pub(crate) fn call(&mut self, key_id: &str, req: &GuardRequest, now: i64, env: &Env) -> Result<GuardReply, String> {
        self.call_by(key_id, req, now, None, env)
    }

    /// [`Store::call`] for a question the shell waits on until `deadline`
    /// (`GUARD_TIMEOUT_MS`), applied by the guard at `now`.
    pub(crate) fn call_by(
        &mut self,
        key_id: &str,
        req: &GuardRequest,
        now: i64,
        deadline: Option<i64>,
        env: &Env,
    ) -> Result<GuardReply, String> {
        let now = now + self.skew;
        self.guard_calls += 1;
        *self.calls_by_kind.entry(req.kind()).or_default() += 1;
        let fresh_facts = crate::guard::Facts {
            key: self.db_keys.get(key_id).cloned(),
            org: self.db_orgs.get("org_1").cloned(),
            user: None,
        };
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
            deadline,
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

    pub(crate) fn run_later(&mut self, iso: &mut Isolate, later: Vec<Later>, now: i64, env: &Env) {
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

/// A request's inputs, owned so that many gates can live at once.
pub(crate) struct Req {
    pub(crate) token: String,
    pub(crate) path: CanonicalPath,
    pub(crate) method: &'static str,
    pub(crate) origin: Option<&'static str>,
    pub(crate) ip: String,
    /// `X-Keyward-Visitor`.
    pub(crate) visitor_token: Option<String>,
    /// `CF-Turnstile-Response`.
    pub(crate) turnstile: Option<String>,
}

pub(crate) fn chat(key: &Key) -> Req {
    Req {
        token: key.token.clone(),
        path: CanonicalPath::parse("/v1/ai/chat").unwrap(),
        method: "POST",
        origin: None,
        ip: "203.0.113.9".into(),
        visitor_token: None,
        turnstile: None,
    }
}

pub(crate) fn to(key: &Key, method: &'static str, path: &str) -> Req {
    Req { path: CanonicalPath::parse(path).unwrap(), method, ..chat(key) }
}

#[derive(Debug)]
pub(crate) enum Outcome {
    /// The quota reported, and when the guard counted it (`None`: a unit of
    /// the isolate's lease, admitted at the isolate's clock).
    Admitted(Option<QuotaWire>, Option<i64>),
    Refused(Refusal),
}

impl Outcome {
    pub(crate) fn code(&self) -> Option<ErrorCode> {
        match self {
            Outcome::Refused(r) => Some(r.error.code),
            Outcome::Admitted(..) => None,
        }
    }
}

pub(crate) fn gate<'r>(env: &'r Env, r: &'r Req) -> Gate<'r> {
    let presented = ApiKey::parse(&env.config.format, &r.token).unwrap();
    let facts = Facts {
        method: r.method,
        path: &r.path,
        origin: r.origin,
        referer: None,
        has_body: false,
        content_type: None,
        visitor_token: r.visitor_token.as_deref(),
        turnstile_token: r.turnstile.as_deref(),
        client_ip: &r.ip,
        same_origin: false,
    };
    Gate::new(facts, presented.kind(), presented.hash(), &r.ip, &env.policy, &env.config, env.settings)
}

#[allow(clippy::large_enum_variant)] // test harness
pub(crate) enum State {
    Ready,
    Asked(String, GuardRequest),
    Waiting(SlotId),
    Done(Outcome),
}

/// Answers a step's reads at once; a question to the guard is left pending;
/// an admission is served, or refunded when `refund` says so.
pub(crate) fn step_refunding(
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
        Next::VerifyTurnstile { token, remote_ip } => {
            let reply = store.verify_turnstile(&token, remote_ip);
            g.turnstile_replied(reply);
            State::Ready
        }
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
pub(crate) fn run_all(env: &Env, store: &mut Store, iso: &mut Isolate, reqs: &[Req], now: i64) -> Vec<Outcome> {
    let (outcomes, _, _, timed) = run_all_timed(env, store, iso, reqs, now, 0, &mut || false);
    PENDING.with(|p| p.borrow_mut().extend(timed));
    outcomes
}

/// [`run_all`] with a guard `latency` ms away (each way: the clock moves on
/// while a question travels) and some admissions refunded; returns the
/// outcomes, when each admission happened, the time at the end, and the
/// timed work left (lease returns, refusal reports) for the caller to run
/// when due (the work to do at once has been done).
pub(crate) fn run_all_timed(
    env: &Env,
    store: &mut Store,
    iso: &mut Isolate,
    reqs: &[Req],
    start: i64,
    latency: i64,
    refund: &mut dyn FnMut() -> bool,
) -> (Vec<Outcome>, Vec<i64>, i64, Vec<Later>) {
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
        ISSUED.with(|i| i.borrow_mut().push(g.issued_visitor_token().map(str::to_owned)));
    }
    let timed: Vec<Later> = later.iter().filter(|l| !matches!(l, Later::Call { .. })).cloned().collect();
    store.run_later(iso, later, now, env);
    let outcomes = states
        .into_iter()
        .map(|s| match s {
            State::Done(o) => o,
            _ => unreachable!(),
        })
        .collect();
    (outcomes, times, now, timed)
}

thread_local! {
    /// The visitor token each finished request was issued (in order).
    pub(crate) static ISSUED: std::cell::RefCell<Vec<Option<String>>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Timed work (lease returns, refusal reports), run when due.
    pub(crate) static PENDING: std::cell::RefCell<Vec<Later>> = const { std::cell::RefCell::new(Vec::new()) };
}

pub(crate) fn run_due(env: &Env, store: &mut Store, iso: &mut Isolate, now: i64) {
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

pub(crate) fn one(env: &Env, store: &mut Store, iso: &mut Isolate, r: Req, now: i64) -> Outcome {
    run_all(env, store, iso, std::slice::from_ref(&r), now).pop().unwrap()
}

/// [`one`], and the visitor token the request was issued.
pub(crate) fn one_issued(
    env: &Env,
    store: &mut Store,
    iso: &mut Isolate,
    r: Req,
    now: i64,
) -> (Outcome, Option<String>) {
    ISSUED.with(|i| i.borrow_mut().clear());
    let o = one(env, store, iso, r, now);
    (o, ISSUED.with(|i| i.borrow_mut().pop().flatten()))
}

pub(crate) fn admitted(o: &[Outcome]) -> usize {
    o.iter().filter(|o| matches!(o, Outcome::Admitted(..))).count()
}

impl Req {
    pub(crate) fn clone_req(&self) -> Req {
        Req {
            token: self.token.clone(),
            path: self.path.clone(),
            method: self.method,
            origin: self.origin,
            ip: self.ip.clone(),
            visitor_token: self.visitor_token.clone(),
            turnstile: self.turnstile.clone(),
        }
    }
}

/// A widget request from `origin` and client address `ip`.
pub(crate) fn widget(key: &Key, origin: &'static str, ip: &str) -> Req {
    Req { origin: Some(origin), ip: ip.to_owned(), ..chat(key) }
}

/// The allowed origin of the harness's widget keys.
pub(crate) const SHOP: &str = "https://shop.example.com";

/// One step, with admissions served (never refunded).
pub(crate) fn step(g: &mut Gate<'_>, iso: &mut Isolate, store: &mut Store, now: i64) -> State {
    step_refunding(g, iso, store, now, &mut || false)
}

/// How many outcomes have `code` (`None`: admitted).
pub(crate) fn count(o: &[Outcome], code: Option<ErrorCode>) -> usize {
    o.iter().filter(|o| o.code() == code).count()
}

/// Drives one request of a strict key through its concurrent check to its
/// admission, by hand (for tests that then serve, refund or drop it).
pub(crate) fn admit_strict(env: &Env, store: &mut Store, iso: &mut Isolate, r: &Req, now: i64) -> Admitted {
    let mut g = gate(env, r);
    let Next::ReadKey = g.next(iso, now) else { panic!("reads the key first") };
    g.key_read(Ok(store.kv_keys.get(&g.hash).cloned()));
    let Next::ReadRecordsAndAsk { key_id, request, .. } = g.next(iso, now) else { panic!("checks concurrently") };
    g.records_read(Ok((store.kv_orgs.get("org_1").cloned(), None)));
    g.guard_replied(store.call(&key_id, &request, now, env));
    let Next::Admit(a) = g.next(iso, now) else { panic!("admitted") };
    a
}
