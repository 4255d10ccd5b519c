//! What happens next on the request path: a step machine that takes facts
//! (the request, what the isolate remembers, what KV and the key's guard
//! answered) and says what comes next — read the key, read the records, ask
//! the guard, wait for another request's question, refuse, or admit. Pure:
//! the shell (`src/edge/gate.rs`) does the I/O each step asks for and feeds
//! the answers back; the clock is passed in; tests drive it natively with a
//! fake clock and in-memory answers.
//!
//! ```text
//!  Start ─► key known to the isolate? ──no──► ReadKey ─► unknown: 401
//!     │           (expired, revoked, wrong kind: 401, no other read)
//!     ├─ strict ─► key-only checks pass? ─yes─► ReadRecords ∥ Ask(Check) ─► authorize
//!     │                  │                        allowed: Admit · refused: Refuse + refund
//!     │                  └─no──► ReadRecords ─► authorize ─► refused ─► refusal path
//!     └─ leased ─► facts valid? ─yes─► authorize on the facts ─► unit from the lease? ─► Admit
//!                      │                                  └─no─► Ask(Lease) (one per slot at a time; others Wait)
//!                      └─no──► Ask(Lease) ─► facts + unit + reservation ─► authorize ─► Admit / Refuse
//! refusal path (402–405 of a known key): the guard confirmed "not revoked"
//! within LEASE_MS? answer here and report later : Ask(Refused) first.
//! ```
//!
//! # What an isolate remembers ([`Isolate`])
//! Per key (by token hash): the key record (reused for `KEY_CACHE_MS`), the
//! lease facts and until when they hold, a revocation seen, when the guard
//! last confirmed the key was not revoked, and refusals not yet reported.
//! Per slot — the key, or for a widget key one of its visitors: the lease
//! (reservation, units used, end), a rate-limit refusal to reuse, whether a
//! request is asking the guard right now, and the recent demand that sizes
//! the next lease. Both maps are bounded and evict; a slot evicted with a
//! live lease reports it first.
//!
//! # What is decided without asking the guard
//! - malformed, unknown, expired or revoked keys (401), as before;
//! - for a leased key, everything, while its lease facts hold;
//! - refusals of a known key (402–405) within `LEASE_MS` of the guard's last
//!   word that the key is not revoked (counted, reported later: a flood of
//!   refused requests costs the guard one call per isolate per `LEASE_MS`);
//! - a rate-limit refusal, for `min(Retry-After, LEASE_MS)` after the guard
//!   answered one (the key's, or that visitor's): an over-limit flood costs
//!   the guard one call per isolate per `LEASE_MS`. (A refund that frees
//!   room meanwhile is seen at most `LEASE_MS` late: the limiter errs on the
//!   strict side.)

use std::collections::HashMap;
use std::hash::{BuildHasher, DefaultHasher, Hasher};
use std::rc::Rc;

use crate::authorize::{authorize, preauthorize, precheck, Auth, Config, Facts, Grant, Records, Refusal};
use crate::cors;
use crate::error::{ApiError, ErrorCode};
use crate::guard::{
    Facts as LeaseFacts, GuardReply, GuardRequest, KeyRef, LeaseReport, Limits, QuotaWire, Refusals, VisitorLimits,
};
use crate::jwt::{is_session_guard, session_guard_id, Session};
use crate::policy::Policy;
use crate::ratelimit::{ceil_seconds, merge_limits};
use crate::records::{Consistency, KeyRecord, OrgRecord, UserRecord};
use crate::token::{KeyHash, KeyKind};
use crate::turnstile;

/// How long a key record read from KV is reused by an isolate. Safe: a key
/// record changes only by revocation, which the guard enforces (strict) or
/// the lease facts carry (leased); expiry is checked against the clock.
pub const KEY_CACHE_MS: i64 = 30_000;
/// Most keys one isolate remembers.
pub const MAX_KEYS: usize = 10_000;
/// Turnstile verifications (siteverify calls) one visitor of a key may
/// cause per minute in an isolate; beyond, `403 TURNSTILE_REQUIRED` without
/// a call, so a script replaying junk tokens from an allowed origin cannot
/// turn keyward into a siteverify amplifier. Counted in the visitor's slot
/// (bounded by [`MAX_SLOTS`]; an evicted slot starts again, which takes
/// other visitors' requests, each verified or refused in turn).
pub const MAX_VERIFICATIONS_PER_MINUTE: u32 = 5;
/// Most slots (a key, or a widget key's visitor) one isolate remembers.
pub const MAX_SLOTS: usize = 10_000;
/// How long a request waits for another request's question to the guard
/// before asking itself (a question that never gets its answer: its
/// request went away).
pub const ASK_TIMEOUT_MS: i64 = 2_000;
/// How long one request waits for others' questions in all, before it asks
/// itself whatever the others do.
pub const MAX_WAIT_MS: i64 = 2 * ASK_TIMEOUT_MS;
/// How many steps (other than waking from a wait) one request may take: a
/// bound, never reached in practice (then it fails closed).
const MAX_STEPS: u8 = 32;

/// Settings of the flow (parsed once per isolate).
#[derive(Clone, Copy, Debug)]
pub struct FlowSettings {
    /// `LEASE_MS`: the longest a lease (and its facts) is used, how long a
    /// guard's "not revoked" covers refusals, how long a 429 is reused.
    pub lease_ms: i64,
    /// Whether the guard is consulted at all (off only in benchmark builds).
    pub key_guard: bool,
}

/// A slot: a key, or one visitor of a widget key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SlotId {
    /// The key's token hash.
    pub hash: [u8; 32],
    /// The visitor, for a widget key.
    pub visitor: Option<String>,
}

#[derive(Clone, Debug)]
struct KeyEntry {
    record: Rc<KeyRecord>,
    read_at: i64,
    revoked: bool,
    confirmed_at: Option<i64>,
    facts: Option<(Rc<LeaseFacts>, i64)>,
    refusals: Refusals,
    flush_at: Option<i64>,
    used_at: i64,
    /// The org or user records refused this strict key's last request: the
    /// records are read before the guard is asked (a refusal then costs the
    /// guard no write and no refund) until a request is authorized again.
    records_refused: bool,
    /// When the records last allowed a request of this strict key: within
    /// `LEASE_MS` of it, a remembered 429 is answered without reading them.
    records_ok_at: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct LocalLease {
    id: u64,
    reserved: u32,
    used: u32,
    /// Credits reserved (a usage-limited key) and spent of them.
    credits: u64,
    spent: u64,
    /// The guard's count of credits left after the grant.
    credits_left: Option<u64>,
    until: i64,
    quota: Option<QuotaWire>,
    granted_at: i64,
}

#[derive(Clone, Debug)]
struct LimitedUntil {
    until: i64,
    retry_at: i64,
    quota: QuotaWire,
    reset_at: i64,
}

#[derive(Clone, Copy, Debug)]
struct NoCredits {
    until: i64,
    refill_at: Option<i64>,
    remaining: u64,
}

#[derive(Clone, Debug, Default)]
struct Slot {
    lease: Option<LocalLease>,
    limited: Option<LimitedUntil>,
    /// A request of this isolate is asking the guard about this slot until
    /// then (its answer clears it).
    asking_until: Option<i64>,
    /// Requests waiting for that answer (an estimate, reset by each answer).
    waiters: u32,
    demand_since: i64,
    demand: u32,
    used_at: i64,
    /// The guard's last admission left no room (strict keys): checks go
    /// one at a time until an answer says otherwise.
    exhausted_until: Option<i64>,
    /// The guard declined a reservation although one was asked for (its
    /// lease table is full): questions about this slot go in parallel.
    parallel_until: Option<i64>,
    /// A leased, usage-limited key's credits ran short: what was left, and
    /// until when a request costing more is refused here (at most
    /// `LEASE_MS`).
    no_credits: Option<NoCredits>,
    /// Turnstile verifications of this visitor since `verify_since`
    /// ([`MAX_VERIFICATIONS_PER_MINUTE`]).
    verify_since: i64,
    verifications: u32,
}

/// `HashMap` keys are hashed after a secret prefix drawn per isolate, so a
/// map keyed by what clients choose (visitor addresses) cannot be flooded
/// with crafted collisions (on `wasm32-unknown-unknown` the standard
/// hasher's keys are fixed).
#[derive(Clone, Debug, Default)]
struct Keyed([u8; 16]);

impl BuildHasher for Keyed {
    type Hasher = DefaultHasher;

    fn build_hasher(&self) -> DefaultHasher {
        let mut h = DefaultHasher::new();
        h.write(&self.0);
        h
    }
}

/// What an isolate remembers between requests.
#[derive(Debug, Default)]
pub struct Isolate {
    keys: HashMap<[u8; 32], KeyEntry, Keyed>,
    slots: HashMap<SlotId, Slot, Keyed>,
    /// The latest time seen: the isolate's clock never goes back, so a
    /// clock stepping back cannot stretch a lease or its facts.
    last_now: i64,
}

/// Work to do after the response (the shell runs it with `waitUntil`).
// A few per request at most, made once: no allocation to save.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Later {
    /// Send this to the key's guard and pass the answer to
    /// [`Isolate::later_replied`].
    Call {
        /// The key's token hash.
        hash: [u8; 32],
        /// The key id (names the guard).
        key_id: String,
        /// The request.
        request: GuardRequest,
    },
    /// At `at`, call [`Isolate::due_return`]: the lease has ended and no
    /// request renewed it.
    ReturnAt {
        /// The slot.
        slot: SlotId,
        /// The lease.
        lease_id: u64,
        /// When (the isolate's clock).
        at: i64,
    },
    /// At `at`, call [`Isolate::due_flush`]: report counted refusals.
    FlushAt {
        /// The key's token hash.
        hash: [u8; 32],
        /// When.
        at: i64,
    },
}

/// A request admitted: what to forward and the obligation to discharge.
#[derive(Debug)]
#[must_use]
pub struct Admitted {
    /// The identity to forward.
    pub grant: Grant,
    /// The key record (for the control API's rules).
    pub key: Rc<KeyRecord>,
    /// Served or refunded: exactly one, once.
    pub admission: Admission,
    /// The `RateLimit-*` quota to report.
    pub quota: Option<QuotaWire>,
    /// A usage-limited key's credits left (`X-Credits-Remaining`).
    pub credits: Option<u64>,
}

/// An admitted request's claim on the key's limits. It must end as
/// [`Admission::served`] or [`Admission::refund`]ed; dropping it otherwise
/// is a bug (a debug assertion; in release the unit stays counted, which
/// errs on the strict side).
#[derive(Debug)]
#[must_use = "an admission must end as served or refunded"]
pub struct Admission(Option<Claim>);

#[derive(Debug, Clone)]
enum Claim {
    /// No guard (benchmark builds with `KEY_GUARD=off`).
    Unguarded,
    /// Counted by the guard at `counted_at`.
    Guarded { hash: [u8; 32], key: KeyRef, limits: Limits, counted_at: i64 },
    /// A unit of this isolate's lease (and its cost, for a usage-limited
    /// key).
    Leased { slot: SlotId, lease_id: u64, cost: u64 },
}

impl Admission {
    /// When the guard counted it (`None` for a unit of a lease, taken here).
    pub fn counted_at(&self) -> Option<i64> {
        match &self.0 {
            Some(Claim::Guarded { counted_at, .. }) => Some(*counted_at),
            _ => None,
        }
    }

    /// The request reached the origin (or keyward's own handler): it counts.
    pub fn served(mut self) {
        self.0 = None;
    }

    /// The request was refused before the origin: give its unit back. A
    /// unit of a lease returns to the lease while it is the isolate's
    /// current one (else it stays counted); a unit the guard counted goes
    /// back to the guard after the response.
    pub fn refund(mut self, isolate: &mut Isolate, reason: ErrorCode) -> Option<Later> {
        match self.0.take()? {
            Claim::Unguarded => None,
            Claim::Guarded { hash, key, limits, counted_at } => Some(Later::Call {
                hash,
                key_id: key.key_id.clone(),
                request: GuardRequest::Refund { key, limits, counted_at, reason: reason_of(reason) },
            }),
            Claim::Leased { slot, lease_id, cost } => {
                if let Some(l) =
                    isolate.slots.get_mut(&slot).and_then(|s| s.lease.as_mut()).filter(|l| l.id == lease_id)
                {
                    l.used = l.used.saturating_sub(1);
                    l.spent = l.spent.saturating_sub(cost);
                }
                None
            }
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        debug_assert!(
            self.0.is_none() || std::thread::panicking(),
            "an admission was dropped without being served or refunded"
        );
    }
}

fn reason_of(code: ErrorCode) -> String {
    code.as_str().to_ascii_lowercase()
}

/// What the shell must do next.
// `Admit` carries the grant by value: one move per step is cheaper than an
// allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Next {
    /// Read `key:<hash>` from KV; pass the result to [`Gate::key_read`].
    ReadKey,
    /// Read the org record and, if named, the user record from KV; pass the
    /// result to [`Gate::records_read`].
    ReadRecords {
        /// The org.
        org_id: String,
        /// The user, for a user-bound key.
        user_id: Option<String>,
    },
    /// The reads of [`Next::ReadRecords`] and the guard call of [`Next::Ask`]
    /// concurrently; pass both results.
    ReadRecordsAndAsk {
        /// The org.
        org_id: String,
        /// The user, for a user-bound key.
        user_id: Option<String>,
        /// The key id (names the guard).
        key_id: String,
        /// The guard request.
        request: GuardRequest,
    },
    /// Call the key's guard; pass the answer to [`Gate::guard_replied`].
    Ask {
        /// The key id (names the guard).
        key_id: String,
        /// The request.
        request: GuardRequest,
    },
    /// Verify a Turnstile token: POST [`crate::turnstile::siteverify_body`]
    /// to the siteverify endpoint; pass the status and body (or why there is
    /// none) to [`Gate::turnstile_replied`].
    VerifyTurnstile {
        /// The token from `CF-Turnstile-Response`.
        token: String,
        /// The client address, if known (`remoteip`).
        remote_ip: Option<String>,
    },
    /// Another request of this isolate is asking the guard for `slot`: wait
    /// until [`Isolate::asking`] says it has its answer, or until `until`,
    /// then step on.
    Wait {
        /// The slot.
        slot: SlotId,
        /// The latest time to wait until.
        until: i64,
    },
    /// Answer with this refusal.
    Refuse(Refusal),
    /// Admitted.
    Admit(Admitted),
}

type RecordsRead = Result<(Option<OrgRecord>, Option<UserRecord>), Refusal>;

#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Phase {
    Start,
    ReadingKey,
    StrictReading {
        key: Rc<KeyRecord>,
        with_check: bool,
        cached_limit: Option<Refusal>,
    },
    StrictChecking {
        key: Rc<KeyRecord>,
        grant: Grant,
    },
    /// Waiting for another request's check of a slot left without room.
    AwaitCheck {
        key: Rc<KeyRecord>,
    },
    Probing {
        refusal: Refusal,
    },
    /// Waiting for another request's revocation probe of this key.
    AwaitProbe {
        key: Rc<KeyRecord>,
        refusal: Refusal,
    },
    Leased {
        key: Rc<KeyRecord>,
    },
    LeaseAsked {
        key: Rc<KeyRecord>,
        asked_at: i64,
    },
    /// A Turnstile token is being verified for a page on `host`.
    Verifying {
        key: Rc<KeyRecord>,
        host: String,
    },
    Done,
}

/// One request's way through the flow.
#[derive(Debug)]
pub struct Gate<'r> {
    facts: Facts<'r>,
    /// The presented key's kind (a JWT session's record is a secret key's).
    kind: KeyKind,
    /// A JWT session: its record (made from the token, not read) and `jti`.
    session: Option<(Rc<KeyRecord>, Option<String>)>,
    /// A JWT session's user's role, once the records were read: its limits
    /// are the role's.
    role: Option<String>,
    policy: &'r Policy,
    config: &'r Config,
    settings: FlowSettings,
    hash: [u8; 32],
    client_ip: &'r str,
    phase: Phase,
    records: Option<RecordsRead>,
    reply: Option<Result<GuardReply, String>>,
    key_read: Option<Result<Option<KeyRecord>, Refusal>>,
    /// Refusals carried by the question in flight, given back if it fails.
    sent: Refusals,
    /// The units asked for by the lease question in flight.
    sent_want: u32,
    /// The slot this request is asking the guard about (it ends the
    /// question when the answer arrives, or when it fails).
    asking: Option<SlotId>,
    /// The slot this request waits on (its waiter count is given back).
    waiting_on: Option<SlotId>,
    /// When this request first waited for another request's question.
    first_wait: Option<i64>,
    /// The guard already declined to count this request once.
    declined: bool,
    /// The visitor passed Turnstile (a valid visitor token, or a verified
    /// Turnstile token) for this request.
    visitor_verified: bool,
    /// A visitor token issued to this request's visitor.
    issued: Option<String>,
    turnstile_reply: Option<Result<(u16, String), String>>,
    /// The matched route's credit cost, once a usage-limited key asked for
    /// it (one route match per request, however often limits are built).
    cost: std::cell::OnceCell<u32>,
    steps: u8,
    later: Vec<Later>,
}

impl<'r> Gate<'r> {
    /// A gate for one request whose credential passed the format check.
    pub fn new(
        facts: Facts<'r>,
        kind: KeyKind,
        hash: KeyHash,
        client_ip: &'r str,
        policy: &'r Policy,
        config: &'r Config,
        settings: FlowSettings,
    ) -> Self {
        Gate {
            facts,
            kind,
            session: None,
            role: None,
            policy,
            config,
            settings,
            hash: hash.0,
            client_ip,
            phase: Phase::Start,
            records: None,
            reply: None,
            key_read: None,
            sent: Refusals::new(),
            sent_want: 0,
            asking: None,
            waiting_on: None,
            first_wait: None,
            declined: false,
            visitor_verified: false,
            issued: None,
            turnstile_reply: None,
            cost: std::cell::OnceCell::new(),
            steps: 0,
            later: Vec::new(),
        }
    }

    /// A gate for a request with a verified JWT ([`crate::jwt`]): it goes
    /// the way of a strict, user-bound secret key whose guard is the user's
    /// sessions guard ([`crate::jwt::session_guard_id`]) — the user's
    /// records read (enabled, role), the role's scopes (narrowed by the
    /// token's `scope`), the role's session limits counted exactly per
    /// user, and the guard refusing a token issued before the user's
    /// sessions were revoked. Its refusals for the credential are
    /// `401 INVALID_TOKEN`.
    pub fn session(
        facts: Facts<'r>,
        session: &Session,
        client_ip: &'r str,
        policy: &'r Policy,
        config: &'r Config,
        settings: FlowSettings,
    ) -> Self {
        let id = session_guard_id(&session.org_id, &session.user_id);
        let star = || vec![crate::scope::Scope::parse("*").unwrap_or_else(|| unreachable!())];
        let record = KeyRecord {
            user_id: Some(session.user_id.clone()),
            scopes: session.scopes.clone().unwrap_or_else(star),
            created_at: session.issued_at,
            expires_at: Some(session.expires_at),
            allowed_origins: config.session_origins.clone(),
            ..KeyRecord::synthetic(id, &session.org_id, session.issued_at)
        };
        // What the isolate remembers is per user and issue time: a revoked
        // token marks only the tokens issued in the same second.
        let hash = KeyHash::of(&format!("{}\n{}", record.id, session.issued_at));
        let mut gate = Gate::new(facts, KeyKind::Secret, hash, client_ip, policy, config, settings);
        gate.session = Some((Rc::new(record), session.jti.clone()));
        gate
    }

    /// The siteverify answer of [`Next::VerifyTurnstile`]: its status and
    /// body, or why there is none.
    pub fn turnstile_replied(&mut self, r: Result<(u16, String), String>) {
        self.turnstile_reply = Some(r);
    }

    /// A visitor token issued to this request's visitor (after a verified
    /// Turnstile token), for the response's `X-Keyward-Visitor-Token`.
    pub fn issued_visitor_token(&self) -> Option<&str> {
        self.issued.as_deref()
    }

    /// The result of [`Next::ReadKey`].
    pub fn key_read(&mut self, r: Result<Option<KeyRecord>, Refusal>) {
        self.key_read = Some(r);
    }

    /// The result of the reads of [`Next::ReadRecords`].
    pub fn records_read(&mut self, r: RecordsRead) {
        self.records = Some(r);
    }

    /// The guard's answer (or why there is none).
    pub fn guard_replied(&mut self, r: Result<GuardReply, String>) {
        self.reply = Some(r);
    }

    /// The slot this request is asking the guard about right now, if any:
    /// should the request go away before the answer, the shell calls
    /// [`Isolate::abandon`] with it so that the next request asks.
    pub fn asking(&self) -> Option<&SlotId> {
        self.asking.as_ref()
    }

    /// Work for after the response (refunds, reports, lease returns).
    pub fn take_later(&mut self) -> Vec<Later> {
        std::mem::take(&mut self.later)
    }

    /// The next step.
    pub fn next(&mut self, iso: &mut Isolate, now: i64) -> Next {
        let next = self.step(iso, now);
        let Some((_, jti)) = &self.session else { return next };
        match next {
            // A session's credential refusals name the token, not a key.
            Next::Refuse(r) if r.error.code == ErrorCode::InvalidApiKey => {
                // From an allowed browser origin the page must be able to
                // read it (and sign in again).
                let mut refusal: Refusal = ErrorCode::InvalidToken.into();
                refusal.headers = session_cors_headers(self.facts.origin, self.config);
                Next::Refuse(refusal)
            }
            Next::Refuse(mut r) if r.error.code == ErrorCode::MissingScope => {
                let message = r.error.message().replacen("This API key", "This session", 1);
                r.error = ApiError::with_message(ErrorCode::MissingScope, message);
                Next::Refuse(r)
            }
            Next::Admit(mut a) => {
                a.grant.auth = Auth::Jwt { token_id: jti.clone() };
                Next::Admit(a)
            }
            other => other,
        }
    }

    fn step(&mut self, iso: &mut Isolate, now: i64) -> Next {
        let now = iso.clock(now);
        match self.waiting_on.take() {
            // Waking from a wait is not a step: waits are bounded in time.
            Some(slot) => {
                if let Some(s) = iso.slots.get_mut(&slot) {
                    s.waiters = s.waiters.saturating_sub(1);
                }
            }
            None => self.steps += 1,
        }
        if self.steps > MAX_STEPS {
            return self.unavailable(iso);
        }
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Start => self.start(iso, now),
            Phase::ReadingKey => match self.key_read.take() {
                Some(Ok(Some(record))) => {
                    let record = iso.remember_key(self.hash, record, now, &mut self.later);
                    self.decide(iso, record, now)
                }
                Some(Ok(None)) => Next::Refuse(ErrorCode::InvalidApiKey.into()),
                Some(Err(r)) => Next::Refuse(r),
                None => self.unavailable(iso),
            },
            Phase::StrictReading { key, with_check, cached_limit } => {
                self.strict_read(iso, key, with_check, cached_limit, now)
            }
            Phase::StrictChecking { key, grant } => {
                let reply = self.reply.take();
                self.strict_checked(iso, key, Ok(grant), reply, now)
            }
            Phase::AwaitCheck { key } => self.decide(iso, key, now),
            Phase::Probing { refusal } => self.probed(iso, refusal, now),
            Phase::AwaitProbe { key, refusal } => {
                if iso.keys.get(&self.hash).is_some_and(|e| e.revoked) {
                    return Next::Refuse(ErrorCode::InvalidApiKey.into());
                }
                self.refusal_path(iso, &key, refusal, now)
            }
            Phase::Leased { key } => self.leased(iso, key, now),
            Phase::LeaseAsked { key, asked_at } => self.lease_answered(iso, key, asked_at, now),
            Phase::Verifying { key, host } => self.turnstile_verified(iso, key, &host, now),
            Phase::Done => self.unavailable(iso),
        }
    }

    /// Fail closed (503); the question in flight ends, and the refusals it
    /// carried are kept for the next report.
    fn unavailable(&mut self, iso: &mut Isolate) -> Next {
        self.phase = Phase::Done;
        self.release(iso);
        iso.give_back_refusals(&self.hash, std::mem::take(&mut self.sent));
        Next::Refuse(ApiError::new(ErrorCode::ServiceUnavailable).into())
    }

    /// Ends this request's question: the slot is free for the next.
    fn release(&mut self, iso: &mut Isolate) {
        if let Some(slot) = self.asking.take() {
            iso.abandon(&slot);
        }
    }

    /// One question about `marker` at a time: if another request's is in
    /// flight (and this request has not waited too long already), the time
    /// to wait until — the caller sets the phase to step on from and waits;
    /// else `None`, and this request is the one asking.
    fn one_question(&mut self, iso: &mut Isolate, marker: &SlotId, now: i64) -> Option<i64> {
        if let Some(until) = iso.slots.get(marker).and_then(|s| s.asking_until).filter(|&t| t > now) {
            if now - *self.first_wait.get_or_insert(now) < MAX_WAIT_MS {
                if let Some(s) = iso.slots.get_mut(marker) {
                    s.waiters += 1;
                }
                self.waiting_on = Some(marker.clone());
                return Some(until);
            }
        }
        iso.slot_mut(marker, now, &mut self.later).asking_until = Some(now + ASK_TIMEOUT_MS);
        self.asking = Some(marker.clone());
        None
    }

    fn start(&mut self, iso: &mut Isolate, now: i64) -> Next {
        if let Some((record, _)) = &self.session {
            // Never read: the record is the token's. Remembered for the
            // revocation mark, confirmations and refusal counts.
            if iso.keys.get(&self.hash).is_some_and(|e| e.revoked) {
                return Next::Refuse(ErrorCode::InvalidApiKey.into());
            }
            let record = iso.remember_key(self.hash, (**record).clone(), now, &mut self.later);
            return self.decide(iso, record, now);
        }
        match iso.keys.get_mut(&self.hash) {
            Some(e) if e.revoked => {
                e.used_at = now;
                iso.count_refusal(&self.hash, "revoked", now, self.settings.lease_ms, &mut self.later);
                Next::Refuse(ErrorCode::InvalidApiKey.into())
            }
            // A leased key that ever had facts needs no KV read: its record
            // came with them from the system of record, and the next lease
            // brings a fresh one.
            Some(e) if now - e.read_at < KEY_CACHE_MS || e.facts.is_some() => {
                e.used_at = now;
                let record = e.record.clone();
                self.decide(iso, record, now)
            }
            _ => {
                self.phase = Phase::ReadingKey;
                Next::ReadKey
            }
        }
    }

    fn key_ref(key: &KeyRecord) -> KeyRef {
        // A session's record was made with the token's `iat` as its
        // creation time: the guard compares it with the user's revocation.
        let issued_at = is_session_guard(&key.id).then_some(key.created_at);
        KeyRef {
            key_id: key.guard().to_owned(),
            org_id: key.org_id.clone(),
            issued_at,
            member: key.guard_id.is_some().then(|| key.id.clone()),
            version: key.version,
        }
    }

    /// A widget key's per-visitor limits: its own, else the policy's.
    fn visitor_limits<'k>(&'k self, key: &'k KeyRecord) -> &'k [crate::ratelimit::RateLimit] {
        if key.kind != KeyKind::Widget {
            &[]
        } else if key.visitor_rate_limits.is_empty() {
            self.policy.widget_ip_rate_limits()
        } else {
            &key.visitor_rate_limits
        }
    }

    /// The visitor a widget key's per-visitor limits count.
    fn visitor(&self, key: &KeyRecord) -> Option<String> {
        (!self.visitor_limits(key).is_empty()).then(|| cors::visitor(self.client_ip, self.config.visitor_ipv6_prefix))
    }

    /// The key's limits: its own over the policy's defaults, and for a
    /// widget key its visitor's (one client cannot exhaust a site's budget).
    fn limits(&self, key: &KeyRecord) -> Limits {
        if self.session.is_some() {
            let role = self.role.as_deref().unwrap_or("");
            return Limits { key: self.policy.session_rate_limits(role).to_vec(), ..Limits::default() };
        }
        Limits {
            key: merge_limits(self.policy.default_rate_limits(), &key.rate_limits),
            visitor: self.visitor(key).map(|id| VisitorLimits { id, limits: self.visitor_limits(key).to_vec() }),
            credits: key.credits,
            cost: if key.credits.is_some() { self.cost() } else { 1 },
        }
    }

    /// Credits this request spends from a usage-limited key: its route's
    /// cost (1 when no route matches: nothing is admitted then).
    fn cost(&self) -> u32 {
        *self.cost.get_or_init(|| self.policy.route(self.facts.method, self.facts.path).map_or(1, |r| r.cost()))
    }

    fn slot(&self, key: &KeyRecord) -> SlotId {
        SlotId { hash: self.hash, visitor: self.visitor(key) }
    }

    fn key_slot(&self) -> SlotId {
        SlotId { hash: self.hash, visitor: None }
    }

    fn decide(&mut self, iso: &mut Isolate, key: Rc<KeyRecord>, now: i64) -> Next {
        // Revoked, expired or mismatched keys cost no more than unknown ones.
        if let Err(r) = precheck(self.kind, &key, now) {
            if key.revoked_at.is_some() {
                iso.mark_revoked(&self.hash);
            }
            return Next::Refuse(r);
        }
        if key.turnstile_required && !self.visitor_verified {
            if let Some(next) = self.turnstile(iso, &key, now) {
                return next;
            }
        }
        if !self.settings.key_guard {
            self.phase = Phase::StrictReading { key: key.clone(), with_check: false, cached_limit: None };
            return Self::read_records(&key);
        }
        if key.consistency == Consistency::Leased {
            return self.leased(iso, key, now);
        }
        if let Some(refusal) = iso.cached_limit(&self.slot(&key), now) {
            // The records allowed a request within LEASE_MS and the key
            // record allows this one: the 429 stands, no read. Else read
            // them (KV, not the guard): a refusal they give comes first.
            let ok_at = iso.keys.get(&self.hash).and_then(|e| e.records_ok_at);
            if ok_at.is_some_and(|t| now >= t && now - t < self.settings.lease_ms)
                && preauthorize(&self.facts, self.kind, &key, self.policy, now)
            {
                iso.count_refusal(&self.hash, "rate_limited", now, self.settings.lease_ms, &mut self.later);
                let mut refusal = refusal;
                if key.kind == KeyKind::Widget {
                    if let Some(o) = cors::request_origin(self.facts.origin, self.facts.referer) {
                        refusal.headers.extend(cors::response_headers(&o));
                    }
                }
                return Next::Refuse(refusal);
            }
            self.phase = Phase::StrictReading { key: key.clone(), with_check: false, cached_limit: Some(refusal) };
            return Self::read_records(&key);
        }
        let entry = iso.keys.get(&self.hash);
        let records_refused = entry.is_some_and(|e| e.records_refused)
            // A session: its records first until they allowed a request of
            // this token (a token naming a user or org keyward does not
            // know costs no guard, and makes no object); and always when
            // its limits are its user's role's, known only after the read.
            || (self.session.is_some()
                && (entry.is_none_or(|e| e.records_ok_at.is_none()) || self.policy.has_session_rate_limits()));
        if records_refused || !preauthorize(&self.facts, self.kind, &key, self.policy, now) {
            // The records first: a refusal then costs the guard no write.
            self.phase = Phase::StrictReading { key: key.clone(), with_check: false, cached_limit: None };
            return Self::read_records(&key);
        }
        if let Some(wait) = self.one_check(iso, &key, now) {
            return wait;
        }
        let request = self.check(iso, &key);
        self.phase = Phase::StrictReading { key: key.clone(), with_check: true, cached_limit: None };
        Next::ReadRecordsAndAsk {
            org_id: key.org_id.clone(),
            user_id: key.user_id.clone(),
            key_id: key.guard().to_owned(),
            request,
        }
    }

    /// A widget key that requires Turnstile: a request from an allowed
    /// origin goes on (`None`) with a valid visitor token, is verified with
    /// a Turnstile token, and is refused without either — before the guard
    /// is asked, so unverified floods cost it nothing. A request from an
    /// origin the key does not allow goes on, to be refused as such.
    fn turnstile(&mut self, iso: &mut Isolate, key: &Rc<KeyRecord>, now: i64) -> Option<Next> {
        let Ok(Some(origin)) = crate::authorize::kind_rules(&self.facts, key) else { return None };
        let Some(tokens) = &self.config.visitor_tokens else { return Some(self.unavailable(iso)) };
        let visitor = cors::visitor(self.client_ip, self.config.visitor_ipv6_prefix);
        if self.facts.visitor_token.is_some_and(|t| turnstile::verify(tokens, t, &key.id, &visitor, now)) {
            self.visitor_verified = true;
            return None;
        }
        match self.facts.turnstile_token {
            Some(t) if turnstile::plausible_token(t) => {
                if !self.config.turnstile {
                    return Some(self.unavailable(iso));
                }
                let slot = SlotId { hash: self.hash, visitor: Some(visitor) };
                if !iso.may_verify(&slot, now, &mut self.later) {
                    let message = "Too many Turnstile verifications for this visitor; retry in a minute.".into();
                    return Some(self.turnstile_refusal(iso, &origin, message, now));
                }
                self.phase = Phase::Verifying { key: key.clone(), host: origin.host().to_owned() };
                let remote_ip = (self.client_ip != "unknown").then(|| self.client_ip.to_owned());
                Some(Next::VerifyTurnstile { token: t.to_owned(), remote_ip })
            }
            Some(_) => Some(self.turnstile_refusal(iso, &origin, "The Turnstile token is malformed.".into(), now)),
            None => {
                let message = ErrorCode::TurnstileRequired.default_message().to_owned();
                Some(self.turnstile_refusal(iso, &origin, message, now))
            }
        }
    }

    fn turnstile_refusal(
        &mut self,
        iso: &mut Isolate,
        origin: &cors::BrowserOrigin,
        message: String,
        now: i64,
    ) -> Next {
        iso.count_refusal(&self.hash, "turnstile_required", now, self.settings.lease_ms, &mut self.later);
        let mut refusal: Refusal = ApiError::with_message(ErrorCode::TurnstileRequired, message).into();
        refusal.headers.extend(cors::response_headers(origin));
        Next::Refuse(refusal)
    }

    /// The siteverify answer: a pass issues a visitor token and the request
    /// goes on; a refusal is a 403; no answer, or an unreadable one, a 503.
    fn turnstile_verified(&mut self, iso: &mut Isolate, key: Rc<KeyRecord>, host: &str, now: i64) -> Next {
        let Some(Ok((status, body))) = self.turnstile_reply.take() else { return self.unavailable(iso) };
        let Some(origin) = cors::request_origin(self.facts.origin, self.facts.referer) else {
            return self.unavailable(iso);
        };
        match turnstile::verdict(status, &body, host) {
            Ok(()) => {
                let Some(tokens) = &self.config.visitor_tokens else { return self.unavailable(iso) };
                let visitor = cors::visitor(self.client_ip, self.config.visitor_ipv6_prefix);
                self.issued = Some(turnstile::issue(tokens, &key.id, &visitor, now, self.config.visitor_token_ttl_ms));
                self.visitor_verified = true;
                self.decide(iso, key, now)
            }
            Err(turnstile::Failure::Unreadable) => self.unavailable(iso),
            Err(turnstile::Failure::Refused(codes)) => {
                let message = format!("The Turnstile token was not accepted ({codes}); solve the challenge again.");
                self.turnstile_refusal(iso, &origin, message, now)
            }
            Err(turnstile::Failure::WrongHost) => {
                let message = "The Turnstile token was solved for another site than this page's.".to_owned();
                self.turnstile_refusal(iso, &origin, message, now)
            }
        }
    }

    /// A slot the guard last left without room (or whose remembered 429
    /// has lapsed) gets one check at a time, the others waiting for its
    /// answer: an over-limit flood costs one call. Elsewhere checks run
    /// concurrently. `Some` is the wait.
    fn one_check(&mut self, iso: &mut Isolate, key: &Rc<KeyRecord>, now: i64) -> Option<Next> {
        let marker = iso.exhausted(&self.slot(key), now)?;
        let until = self.one_question(iso, &marker, now)?;
        self.phase = Phase::AwaitCheck { key: key.clone() };
        Some(Next::Wait { slot: marker, until })
    }

    fn check(&mut self, iso: &mut Isolate, key: &KeyRecord) -> GuardRequest {
        self.sent = iso.take_refusals(&self.hash);
        GuardRequest::Check { key: Self::key_ref(key), limits: self.limits(key), refusals: self.sent.clone() }
    }

    fn read_records(key: &KeyRecord) -> Next {
        Next::ReadRecords { org_id: key.org_id.clone(), user_id: key.user_id.clone() }
    }

    fn strict_read(
        &mut self,
        iso: &mut Isolate,
        key: Rc<KeyRecord>,
        with_check: bool,
        cached_limit: Option<Refusal>,
        now: i64,
    ) -> Next {
        let decision = match self.records.take() {
            Some(Ok((org, user))) => {
                let records = Records { key: Some(&key), org: org.as_ref(), user: user.as_ref() };
                authorize(&self.facts, self.kind, &records, self.policy, self.config, now)
            }
            Some(Err(r)) => Err(r),
            None => return self.unavailable(iso),
        };
        iso.note_records(&self.hash, &decision, now);
        if with_check {
            let reply = self.reply.take();
            return self.strict_checked(iso, key, decision, reply, now);
        }
        match (decision, cached_limit) {
            (Ok(grant), _) if !self.settings.key_guard => {
                let admission = Admission(Some(Claim::Unguarded));
                Next::Admit(Admitted { grant, key, admission, quota: None, credits: None })
            }
            (Ok(grant), Some(limited)) => {
                iso.count_refusal(&self.hash, "rate_limited", now, self.settings.lease_ms, &mut self.later);
                Next::Refuse(with_cors(limited, &grant))
            }
            (Ok(grant), None) => {
                if self.session.is_some() {
                    self.role.clone_from(&grant.user_role);
                }
                if let Some(wait) = self.one_check(iso, &key, now) {
                    return wait;
                }
                let request = self.check(iso, &key);
                let key_id = key.guard().to_owned();
                self.phase = Phase::StrictChecking { key, grant };
                Next::Ask { key_id, request }
            }
            (Err(refusal), _) => self.refusal_path(iso, &key, refusal, now),
        }
    }

    /// The guard's answer to a strict check, with the decision on the
    /// records (made concurrently, or before the check).
    fn strict_checked(
        &mut self,
        iso: &mut Isolate,
        key: Rc<KeyRecord>,
        decision: Result<Grant, Refusal>,
        reply: Option<Result<GuardReply, String>>,
        now: i64,
    ) -> Next {
        self.release(iso);
        let Some(Ok(reply)) = reply else { return self.unavailable(iso) };
        let slot = self.slot(&key);
        match reply {
            GuardReply::Allowed { quota, counted_at, credits } => {
                iso.confirm(&self.hash, now);
                iso.note_room(&slot, quota.as_ref(), now, &mut self.later);
                let claim =
                    Claim::Guarded { hash: self.hash, key: Self::key_ref(&key), limits: self.limits(&key), counted_at };
                match decision {
                    Ok(grant) => {
                        Next::Admit(Admitted { grant, key, admission: Admission(Some(claim)), quota, credits })
                    }
                    Err(refusal) => self.refuse_refunding(iso, claim, refusal),
                }
            }
            GuardReply::Exhausted { retry_after_ms, remaining, .. } => {
                iso.confirm(&self.hash, now);
                match decision {
                    Ok(grant) => Next::Refuse(with_cors(usage_exceeded(retry_after_ms, remaining), &grant)),
                    Err(refusal) => Next::Refuse(refusal),
                }
            }
            GuardReply::Stale { record } => self.restale(iso, *record, now),
            GuardReply::Limited { retry_after_ms, quota, key_wide, .. } => {
                iso.confirm(&self.hash, now);
                let lease_ms = self.settings.lease_ms;
                let limited =
                    iso.remember_limit(&slot, key_wide, retry_after_ms, quota, now, lease_ms, &mut self.later);
                match decision {
                    Ok(grant) => Next::Refuse(with_cors(limited, &grant)),
                    Err(refusal) => Next::Refuse(refusal),
                }
            }
            GuardReply::Revoked => {
                iso.mark_revoked(&self.hash);
                Next::Refuse(ErrorCode::InvalidApiKey.into())
            }
            _ => self.unavailable(iso),
        }
    }

    /// A refusal of a known key (402–405): a key revoked a moment ago (while
    /// KV may still serve its old record) must get the same 401 as an
    /// unknown key, so the guard is asked first — unless it confirmed the
    /// key was not revoked within `LEASE_MS`. One probe per key at a time:
    /// the others wait for its answer.
    fn refusal_path(&mut self, iso: &mut Isolate, key: &KeyRecord, refusal: Refusal, now: i64) -> Next {
        if matches!(refusal.error.code, ErrorCode::InvalidApiKey | ErrorCode::ServiceUnavailable) {
            return Next::Refuse(refusal);
        }
        let reason = reason_of(refusal.error.code);
        if iso.confirmed_within(&self.hash, now, self.settings.lease_ms) {
            iso.count_refusal(&self.hash, &reason, now, self.settings.lease_ms, &mut self.later);
            return Next::Refuse(refusal);
        }
        let marker = self.key_slot();
        if let Some(until) = self.one_question(iso, &marker, now) {
            self.phase = Phase::AwaitProbe { key: Rc::new(key.clone()), refusal };
            return Next::Wait { slot: marker, until };
        }
        self.sent = iso.take_refusals(&self.hash);
        *self.sent.get_or_insert_with(reason, u64::default) += 1;
        let request = GuardRequest::Refused { key: Self::key_ref(key), refusals: self.sent.clone() };
        self.phase = Phase::Probing { refusal };
        Next::Ask { key_id: key.guard().to_owned(), request }
    }

    fn probed(&mut self, iso: &mut Isolate, refusal: Refusal, now: i64) -> Next {
        self.release(iso);
        match self.reply.take() {
            Some(Ok(GuardReply::Recorded)) => {
                iso.confirm(&self.hash, now);
                Next::Refuse(refusal)
            }
            Some(Ok(GuardReply::Revoked)) => {
                iso.mark_revoked(&self.hash);
                Next::Refuse(ErrorCode::InvalidApiKey.into())
            }
            Some(Ok(GuardReply::Stale { record })) => self.restale(iso, *record, now),
            _ => self.unavailable(iso),
        }
    }

    /// The guard holds a newer version of the key's record (an update, a
    /// roll's expiry) than the one this request was decided on: the
    /// isolate keeps it, and the request is decided again on it.
    fn restale(&mut self, iso: &mut Isolate, record: KeyRecord, now: i64) -> Next {
        let Some(mine) = iso.record(&self.hash).filter(|r| r.id == record.id) else {
            // Not this key's record: never decide on it.
            return self.unavailable(iso);
        };
        // Another request of this isolate may have stored it (or a newer
        // one) meanwhile: decide on the newest.
        let record = if mine.version >= record.version {
            mine
        } else {
            iso.remember_key(self.hash, record, now, &mut self.later)
        };
        self.decide(iso, record, now)
    }

    // ------------------------------------------------------------- leased

    fn leased(&mut self, iso: &mut Isolate, key: Rc<KeyRecord>, now: i64) -> Next {
        let slot = self.slot(&key);
        let Some(facts) = iso.facts(&self.hash, now) else {
            // No facts: ask for them — one question per key at a time — and
            // for a unit unless the key record alone already refuses.
            let scope = preauthorize(&self.facts, self.kind, &key, self.policy, now)
                .then(|| self.policy.route(self.facts.method, self.facts.path).ok().map(|r| r.scope().to_owned()))
                .flatten();
            let marker = self.key_slot();
            return self.ask_lease(iso, key, slot, Some(marker), scope, now);
        };
        let records = facts.records(&key.id, &key.org_id);
        let Some(current) = records.key else {
            // The system of record does not know this key.
            return Next::Refuse(ErrorCode::InvalidApiKey.into());
        };
        if current.revoked_at.is_some() {
            iso.mark_revoked(&self.hash);
            return Next::Refuse(ErrorCode::InvalidApiKey.into());
        }
        let grant = match authorize(&self.facts, self.kind, &records, self.policy, self.config, now) {
            Ok(g) => g,
            Err(refusal) => {
                // The facts are the guard's and fresh: no revocation probe.
                if refusal.error.code != ErrorCode::ServiceUnavailable {
                    let reason = reason_of(refusal.error.code);
                    iso.count_refusal(&self.hash, &reason, now, self.settings.lease_ms, &mut self.later);
                }
                return Next::Refuse(refusal);
            }
        };
        let cost = key.credits.map(|_| u64::from(self.cost()));
        if let Some((lease_id, quota, credits)) = iso.take_unit(&slot, now, cost) {
            let admission = Admission(Some(Claim::Leased { slot, lease_id, cost: cost.unwrap_or(0) }));
            let key = iso.record(&self.hash).unwrap_or(key);
            return Next::Admit(Admitted { grant, key, admission, quota, credits });
        }
        // Remembered only for a request costing more than what was left (a
        // cheaper route may still fit): refused without asking.
        let needs = cost.unwrap_or(1);
        if let Some(n) =
            iso.slots.get(&self.key_slot()).and_then(|s| s.no_credits).filter(|n| n.until > now && n.remaining < needs)
        {
            iso.count_refusal(&self.hash, "usage_exceeded", now, self.settings.lease_ms, &mut self.later);
            return Next::Refuse(with_cors(usage_exceeded(n.refill_at.map(|t| t - now), n.remaining), &grant));
        }
        if let Some(limited) = iso.cached_limit(&slot, now) {
            iso.count_refusal(&self.hash, "rate_limited", now, self.settings.lease_ms, &mut self.later);
            return Next::Refuse(with_cors(limited, &grant));
        }
        // A unit: one question per slot at a time, unless the guard declined
        // reservations lately (then each request asks for its own unit).
        let parallel = iso.slots.get(&slot).and_then(|s| s.parallel_until).is_some_and(|t| t > now);
        let marker = (!parallel).then(|| slot.clone());
        self.ask_lease(iso, key, slot, marker, Some(grant.route_scope), now)
    }

    fn ask_lease(
        &mut self,
        iso: &mut Isolate,
        key: Rc<KeyRecord>,
        slot: SlotId,
        marker: Option<SlotId>,
        scope: Option<String>,
        now: i64,
    ) -> Next {
        if let Some(marker) = marker {
            if let Some(until) = self.one_question(iso, &marker, now) {
                self.phase = Phase::Leased { key };
                return Next::Wait { slot: marker, until };
            }
        }
        let s = iso.slot_mut(&slot, now, &mut self.later);
        let want = s.want(now, self.settings.lease_ms);
        let report = s.lease.take().map(|l| LeaseReport { id: l.id, used: l.used, spent: l.spent });
        self.sent = iso.take_refusals(&self.hash);
        self.sent_want = want;
        let request = GuardRequest::Lease {
            key: Self::key_ref(&key),
            limits: self.limits(&key),
            scope,
            want,
            report,
            refusals: self.sent.clone(),
        };
        let key_id = key.guard().to_owned();
        self.phase = Phase::LeaseAsked { key, asked_at: now };
        Next::Ask { key_id, request }
    }

    fn lease_answered(&mut self, iso: &mut Isolate, key: Rc<KeyRecord>, asked_at: i64, now: i64) -> Next {
        let slot = self.slot(&key);
        if let Some(marker) = self.asking.clone() {
            // Everyone waiting wakes and looks again; those who wait again
            // count themselves again.
            if let Some(s) = iso.slots.get_mut(&marker) {
                s.waiters = 0;
            }
        }
        self.release(iso);
        let lease_ms = self.settings.lease_ms;
        let Some(Ok(reply)) = self.reply.take() else { return self.unavailable(iso) };
        match reply {
            GuardReply::Leased { counted_at, refused, quota, lease, credits, facts, valid_ms } => {
                // Timed from when the question was asked: the guard's clock
                // started no earlier, so the isolate never uses a lease or
                // its facts past their end.
                let until = asked_at + valid_ms.min(lease_ms);
                let facts = Rc::new(*facts);
                iso.set_facts(&self.hash, facts.clone(), until, now);
                if let Some(g) = lease {
                    let until = asked_at + g.valid_ms.min(lease_ms);
                    let s = iso.slot_mut(&slot, now, &mut self.later);
                    if let Some(old) = s.lease.take() {
                        // Another question's lease (one asked in parallel):
                        // report it, never drop it.
                        let request = GuardRequest::Return {
                            key: Self::key_ref(&key),
                            report: LeaseReport { id: old.id, used: old.used, spent: old.spent },
                            refusals: Refusals::new(),
                        };
                        self.later.push(Later::Call { hash: self.hash, key_id: key.guard().to_owned(), request });
                    }
                    let s = iso.slot_mut(&slot, now, &mut self.later);
                    let quota = quota.clone();
                    s.lease = Some(LocalLease {
                        id: g.id,
                        reserved: g.reserved,
                        used: 0,
                        credits: g.credits,
                        spent: 0,
                        credits_left: credits,
                        until,
                        quota,
                        granted_at: now,
                    });
                    // Returned half a lease after its end unless a request
                    // renews it first (the renewal carries the report: one
                    // call and one write fewer for a key in steady use).
                    let at = until + lease_ms / 2;
                    self.later.push(Later::ReturnAt { slot: slot.clone(), lease_id: g.id, at });
                } else if counted_at.is_some() && self.sent_want > 0 {
                    // Asked for a reservation and got none (the key's lease
                    // table is full): the slot's questions go in parallel.
                    iso.slot_mut(&slot, now, &mut self.later).parallel_until = Some(now + lease_ms);
                }
                let Some(counted_at) = counted_at else { return self.not_counted(iso, key, refused, now) };
                iso.slot_mut(&slot, now, &mut self.later).demand += 1;
                // This isolate's view, as for the lease's own units: the
                // reservation just granted is still to use.
                let reserved = lease.map_or(0, |g| g.reserved);
                let quota = quota.map(|q| QuotaWire { remaining: q.remaining.saturating_add(reserved), ..q });
                let credits = credits.map(|c| c.saturating_add(lease.map_or(0, |g| g.credits)));
                let claim =
                    Claim::Guarded { hash: self.hash, key: Self::key_ref(&key), limits: self.limits(&key), counted_at };
                // This request is decided on the answer's facts, fresh from
                // the guard however long the answer took to come back (as a
                // strict key's answer is); only later requests need them
                // within their `until`, and ask again after it.
                let records = facts.records(&key.id, &key.org_id);
                match authorize(&self.facts, self.kind, &records, self.policy, self.config, now) {
                    Ok(grant) => {
                        let key = iso.record(&self.hash).unwrap_or(key);
                        Next::Admit(Admitted { grant, key, admission: Admission(Some(claim)), quota, credits })
                    }
                    Err(refusal) => self.refuse_refunding(iso, claim, refusal),
                }
            }
            GuardReply::Limited { retry_after_ms, quota, key_wide, facts } => {
                if let Some(f) = facts {
                    let (facts, valid_ms) = *f;
                    iso.set_facts(&self.hash, Rc::new(facts), asked_at + valid_ms.min(lease_ms), now);
                }
                iso.remember_limit(&slot, key_wide, retry_after_ms, quota, now, lease_ms, &mut self.later);
                // Decided on the facts: a refusal they give comes first,
                // else the 429 just remembered.
                self.leased(iso, key, now)
            }
            GuardReply::Exhausted { retry_after_ms, remaining, facts } => {
                if let Some(f) = facts {
                    let (facts, valid_ms) = *f;
                    iso.set_facts(&self.hash, Rc::new(facts), asked_at + valid_ms.min(lease_ms), now);
                }
                // Remembered for at most a lease (a top-up is seen by then).
                let until = now + retry_after_ms.unwrap_or(lease_ms).clamp(1, lease_ms);
                let marker = self.key_slot();
                iso.slot_mut(&marker, now, &mut self.later).no_credits =
                    Some(NoCredits { until, refill_at: retry_after_ms.map(|r| now + r), remaining });
                self.leased(iso, key, now)
            }
            GuardReply::Revoked => {
                iso.mark_revoked(&self.hash);
                Next::Refuse(ErrorCode::InvalidApiKey.into())
            }
            // Asked on an older version than the facts': nothing counted,
            // decide again (and ask again) on the current record.
            GuardReply::Stale { record } => self.restale(iso, *record, now),
            _ => self.unavailable(iso),
        }
    }

    /// The guard counted nothing: the facts refuse the request (decided and
    /// counted on them now), or it asked without a scope (the key record
    /// alone refused it). Should this isolate's decision on the same facts
    /// allow it — their clocks disagree around a key's expiry, or the
    /// question had no scope — it asks once more with one; the guard's own
    /// refusal settles any further disagreement.
    fn not_counted(&mut self, iso: &mut Isolate, key: Rc<KeyRecord>, refused: Option<String>, now: i64) -> Next {
        let Some(facts) = iso.facts(&self.hash, now) else { return self.leased(iso, key, now) };
        let records = facts.records(&key.id, &key.org_id);
        if authorize(&self.facts, self.kind, &records, self.policy, self.config, now).is_err() {
            return self.leased(iso, key, now);
        }
        match refused.as_deref().and_then(code_of) {
            Some(code) if self.declined || refused.is_some() => {
                // The guard's refusal stands (it owns the limits and the
                // revocation; a request it will not count is not admitted).
                Next::Refuse(code.into())
            }
            _ if self.declined => self.unavailable(iso),
            _ => {
                self.declined = true;
                self.leased(iso, key, now)
            }
        }
    }

    fn refuse_refunding(&mut self, iso: &mut Isolate, claim: Claim, refusal: Refusal) -> Next {
        if let Some(l) = Admission(Some(claim)).refund(iso, refusal.error.code) {
            self.later.push(l);
        }
        Next::Refuse(refusal)
    }
}

/// A request to a public route (login, refresh, JWKS): no credential, an
/// exact limit per client address counted by that address's guard
/// (`ip:<address or IPv6 prefix>`, one object per address, rows bounded as
/// any guard's), proxied with no identity. What the shell asks the guard,
/// or the refusal before any I/O: a body type the route does not accept, a
/// browser origin not in `JWT_ALLOWED_ORIGINS`.
pub fn public_question(
    facts: &Facts<'_>,
    route: &crate::policy::Route,
    client_ip: &str,
    config: &Config,
) -> Result<(String, GuardRequest), Refusal> {
    let limits = route.public_limits().ok_or(ErrorCode::RouteNotFound)?;
    route.accepts_body(facts.has_body, facts.content_type)?;
    if facts.origin.is_some() && !facts.same_origin && public_cors(facts, config).is_none() {
        return Err(ApiError::with_message(
            ErrorCode::OriginNotAllowed,
            "Public routes are accepted from a browser only on the origins in JWT_ALLOWED_ORIGINS.",
        )
        .into());
    }
    let id = format!("ip:{}", cors::visitor(client_ip, config.visitor_ipv6_prefix));
    let key = KeyRef { key_id: id.clone(), ..KeyRef::default() };
    let limits = Limits { key: limits.to_vec(), ..Limits::default() };
    Ok((id, GuardRequest::Check { key, limits, refusals: Refusals::new() }))
}

/// The CORS headers of an answer to a browser on an origin in
/// `JWT_ALLOWED_ORIGINS` (none for any other request): a JWT session's
/// refusals carry them, so the page can read them.
pub fn session_cors_headers(origin: Option<&str>, config: &Config) -> Vec<(&'static str, String)> {
    cors::request_origin(origin, None)
        .filter(|o| config.session_origins.iter().any(|p| p.matches(o)))
        .map(|o| cors::response_headers(&o))
        .unwrap_or_default()
}

fn public_cors(facts: &Facts<'_>, config: &Config) -> Option<cors::BrowserOrigin> {
    cors::request_origin(facts.origin, None).filter(|o| config.session_origins.iter().any(|p| p.matches(o)))
}

/// The guard's answer to [`public_question`]: admitted (no identity: the
/// grant's auth is [`Auth::Public`]), `429` with its headers, or `503`.
pub fn public_answer(
    facts: &Facts<'_>,
    route: &crate::policy::Route,
    config: &Config,
    question: &GuardRequest,
    reply: Result<GuardReply, String>,
    now: i64,
) -> Result<Admitted, Refusal> {
    let GuardRequest::Check { key, limits, .. } = question else { return Err(ErrorCode::ServiceUnavailable.into()) };
    let cors_origin = public_cors(facts, config);
    let with_cors = |mut r: Refusal| {
        if let Some(o) = &cors_origin {
            r.headers.extend(cors::response_headers(o));
        }
        r
    };
    match reply {
        Ok(GuardReply::Allowed { quota, counted_at, .. }) => {
            let grant = Grant {
                org_id: String::new(),
                key_id: String::new(),
                kind: KeyKind::Secret,
                user_id: None,
                user_role: None,
                scopes: Vec::new(),
                route_scope: String::new(),
                route: route.pattern().to_owned(),
                local: false,
                resource_id: None,
                cors_origin: cors_origin.clone(),
                auth: Auth::Public,
                meta: None,
            };
            let hash = KeyHash::of(&key.key_id).0;
            let claim = Claim::Guarded { hash, key: key.clone(), limits: limits.clone(), counted_at };
            let record = KeyRecord::synthetic(key.key_id.clone(), "", now);
            Ok(Admitted { grant, key: Rc::new(record), admission: Admission(Some(claim)), quota, credits: None })
        }
        Ok(GuardReply::Limited { retry_after_ms, quota, .. }) => {
            Err(with_cors(limited_refusal(now + retry_after_ms, now + quota.reset_ms, &quota, now)))
        }
        _ => Err(with_cors(ErrorCode::ServiceUnavailable.into())),
    }
}

/// The catalogue code of a lowercase wire code.
fn code_of(s: &str) -> Option<ErrorCode> {
    ErrorCode::ALL.iter().copied().find(|c| c.as_str().eq_ignore_ascii_case(s))
}

/// A 429 to a request whose origin matched carries the CORS headers too.
fn with_cors(mut r: Refusal, grant: &Grant) -> Refusal {
    if let Some(o) = &grant.cors_origin {
        r.headers.extend(cors::response_headers(o));
    }
    r
}

/// `429 USAGE_EXCEEDED`: a usage-limited key has too few credits left;
/// `Retry-After` until its next refill, if it refills.
fn usage_exceeded(retry_after_ms: Option<i64>, remaining: u64) -> Refusal {
    let mut headers = vec![("X-Credits-Remaining", remaining.to_string())];
    if let Some(ms) = retry_after_ms {
        headers.push(("Retry-After", ceil_seconds(ms).max(1).to_string()));
    }
    Refusal { error: ApiError::new(ErrorCode::UsageExceeded), headers }
}

fn limited_refusal(retry_at: i64, reset_at: i64, quota: &QuotaWire, now: i64) -> Refusal {
    let mut headers = vec![("Retry-After", ceil_seconds(retry_at - now).max(1).to_string())];
    let q = QuotaWire { remaining: 0, reset_ms: (reset_at - now).max(retry_at - now), ..quota.clone() };
    headers.extend(q.headers());
    Refusal { error: ApiError::new(ErrorCode::RateLimited), headers }
}

impl Slot {
    /// How many units to ask for: what this slot admitted since its last
    /// question, as a rate over the next lease, with a quarter more; none
    /// for a slot that would not use one within a lease. Requests waiting
    /// for this question are added.
    fn want(&mut self, now: i64, lease_ms: i64) -> u32 {
        let elapsed = (now - self.demand_since).max(1);
        let expected = u64::from(self.demand) * lease_ms as u64 / elapsed as u64;
        let want = if expected < 1 { 0 } else { expected + expected.div_ceil(4) };
        self.demand = 0;
        self.demand_since = now;
        u32::try_from(want + u64::from(self.waiters)).unwrap_or(u32::MAX)
    }
}

impl Isolate {
    /// An isolate whose maps hash with `seed` (drawn from the platform
    /// CSPRNG by the shell).
    pub fn new(seed: [u8; 16]) -> Isolate {
        Isolate { keys: HashMap::with_hasher(Keyed(seed)), slots: HashMap::with_hasher(Keyed(seed)), last_now: 0 }
    }

    /// Counts a Turnstile verification in `slot` (a visitor of a key):
    /// false when the visitor had its share this minute.
    fn may_verify(&mut self, slot: &SlotId, now: i64, later: &mut Vec<Later>) -> bool {
        let s = self.slot_mut(slot, now, later);
        if now - s.verify_since >= 60_000 {
            (s.verify_since, s.verifications) = (now, 0);
        }
        s.verifications += 1;
        s.verifications <= MAX_VERIFICATIONS_PER_MINUTE
    }

    /// Number of keys and slots remembered (for tests and stats).
    pub fn sizes(&self) -> (usize, usize) {
        (self.keys.len(), self.slots.len())
    }

    /// The isolate's clock: `now`, never earlier than the latest time seen.
    fn clock(&mut self, now: i64) -> i64 {
        self.last_now = self.last_now.max(now);
        self.last_now
    }

    fn remember_key(&mut self, hash: [u8; 32], record: KeyRecord, now: i64, later: &mut Vec<Later>) -> Rc<KeyRecord> {
        if !self.keys.contains_key(&hash) && self.keys.len() >= MAX_KEYS {
            self.evict_keys(now, later);
        }
        let record = Rc::new(record);
        let e = self.keys.entry(hash).or_insert_with(|| KeyEntry {
            record: record.clone(),
            read_at: now,
            revoked: false,
            confirmed_at: None,
            facts: None,
            refusals: Refusals::new(),
            flush_at: None,
            used_at: now,
            records_refused: false,
            records_ok_at: None,
        });
        // A record read from KV may be older than one the guard sent
        // (KV lags an update): the newer version stays.
        if e.record.id != record.id || e.record.version <= record.version {
            e.record = record;
        }
        e.read_at = now;
        e.used_at = now;
        e.record.clone()
    }

    fn evict_keys(&mut self, now: i64, later: &mut Vec<Later>) {
        let mut gone: Vec<[u8; 32]> = self
            .keys
            .iter()
            .filter(|(_, e)| now - e.used_at >= KEY_CACHE_MS && e.facts.as_ref().is_none_or(|f| f.1 <= now))
            .map(|(h, _)| *h)
            .collect();
        if gone.is_empty() {
            gone.extend(self.keys.iter().min_by_key(|(_, e)| e.used_at).map(|(h, _)| *h));
        }
        for h in gone {
            if let Some(e) = self.keys.remove(&h) {
                if !e.refusals.is_empty() {
                    let request = GuardRequest::Refused { key: Self::key_ref_of(&e.record), refusals: e.refusals };
                    later.push(Later::Call { hash: h, key_id: e.record.guard().to_owned(), request });
                }
            }
        }
    }

    fn key_ref_of(k: &KeyRecord) -> KeyRef {
        Gate::key_ref(k)
    }

    fn slot_mut(&mut self, slot: &SlotId, now: i64, later: &mut Vec<Later>) -> &mut Slot {
        if !self.slots.contains_key(slot) && self.slots.len() >= MAX_SLOTS {
            self.evict_slots(now, later);
        }
        let s = self.slots.entry(slot.clone()).or_insert_with(|| Slot { demand_since: now, ..Slot::default() });
        s.used_at = now;
        s
    }

    /// Makes room: slots with nothing live go first; else the one used
    /// longest ago (its lease reported first). Waiters never pin a slot (a
    /// waiter whose request went away never wakes to give its count back).
    fn evict_slots(&mut self, now: i64, later: &mut Vec<Later>) {
        let idle = |s: &Slot| {
            s.asking_until.is_none_or(|t| t <= now)
                && s.lease.as_ref().is_none_or(|l| l.until <= now)
                && s.limited.as_ref().is_none_or(|l| l.until <= now)
        };
        let mut gone: Vec<SlotId> = self.slots.iter().filter(|(_, s)| idle(s)).map(|(id, _)| id.clone()).collect();
        if gone.is_empty() {
            gone.extend(self.slots.iter().min_by_key(|(_, s)| s.used_at).map(|(id, _)| id.clone()));
        }
        for id in gone {
            let Some(s) = self.slots.remove(&id) else { continue };
            if let (Some(l), Some(e)) = (s.lease, self.keys.get(&id.hash)) {
                let request = GuardRequest::Return {
                    key: Self::key_ref_of(&e.record),
                    report: LeaseReport { id: l.id, used: l.used, spent: l.spent },
                    refusals: Refusals::new(),
                };
                later.push(Later::Call { hash: id.hash, key_id: e.record.guard().to_owned(), request });
            }
        }
    }

    fn mark_revoked(&mut self, hash: &[u8; 32]) {
        if let Some(e) = self.keys.get_mut(hash) {
            e.revoked = true;
            e.facts = None;
        }
        self.slots.retain(|id, _| &id.hash != hash);
    }

    fn confirm(&mut self, hash: &[u8; 32], now: i64) {
        if let Some(e) = self.keys.get_mut(hash) {
            e.confirmed_at = Some(now);
        }
    }

    fn confirmed_within(&self, hash: &[u8; 32], now: i64, lease_ms: i64) -> bool {
        self.keys.get(hash).and_then(|e| e.confirmed_at).is_some_and(|t| now >= t && now - t < lease_ms)
    }

    /// What the records said of a strict key's request: a refusal makes
    /// the next requests read them before asking the guard, an allow
    /// makes them ask concurrently again. (A store failure says nothing.)
    fn note_records(&mut self, hash: &[u8; 32], decision: &Result<Grant, Refusal>, now: i64) {
        if let Some(e) = self.keys.get_mut(hash) {
            match decision {
                Ok(_) => {
                    e.records_refused = false;
                    e.records_ok_at = Some(now);
                }
                Err(r) if r.error.code != ErrorCode::ServiceUnavailable => e.records_refused = true,
                Err(_) => {}
            }
        }
    }

    /// After an admission: whether it left the slot without room.
    fn note_room(&mut self, slot: &SlotId, quota: Option<&QuotaWire>, now: i64, later: &mut Vec<Later>) {
        let exhausted = quota.filter(|q| q.remaining == 0).map(|q| now + q.reset_ms.max(1));
        match exhausted {
            Some(until) => self.slot_mut(slot, now, later).exhausted_until = Some(until),
            None => {
                if let Some(s) = self.slots.get_mut(slot) {
                    s.exhausted_until = None;
                }
            }
        }
    }

    /// The slot (the request's, or its key's) whose checks go one at a
    /// time: the guard left it without room, or its remembered 429 lapsed
    /// before the retry time.
    fn exhausted(&self, slot: &SlotId, now: i64) -> Option<SlotId> {
        let key_wide = SlotId { hash: slot.hash, visitor: None };
        let suspect = |id: &SlotId| {
            self.slots.get(id).is_some_and(|s| {
                s.exhausted_until.is_some_and(|t| t > now)
                    || s.limited.as_ref().is_some_and(|l| l.until <= now && l.retry_at > now)
            })
        };
        if suspect(slot) {
            Some(slot.clone())
        } else if suspect(&key_wide) {
            Some(key_wide)
        } else {
            None
        }
    }

    fn facts(&self, hash: &[u8; 32], now: i64) -> Option<Rc<LeaseFacts>> {
        self.keys.get(hash).and_then(|e| e.facts.as_ref()).filter(|f| f.1 > now).map(|f| f.0.clone())
    }

    fn set_facts(&mut self, hash: &[u8; 32], facts: Rc<LeaseFacts>, until: i64, now: i64) {
        if let Some(e) = self.keys.get_mut(hash) {
            e.confirmed_at = Some(now);
            if let Some(k) = &facts.key {
                e.record = Rc::new(k.clone());
            }
            e.facts = Some((facts, until));
        }
    }

    fn record(&self, hash: &[u8; 32]) -> Option<Rc<KeyRecord>> {
        self.keys.get(hash).map(|e| e.record.clone())
    }

    fn count_refusal(&mut self, hash: &[u8; 32], reason: &str, now: i64, lease_ms: i64, later: &mut Vec<Later>) {
        let Some(e) = self.keys.get_mut(hash) else { return };
        if e.refusals.len() < crate::guard::MAX_REFUSAL_REASONS || e.refusals.contains_key(reason) {
            let n = e.refusals.get_or_insert_with(reason.to_owned(), u64::default);
            *n = n.saturating_add(1);
        }
        if e.flush_at.is_none() {
            e.flush_at = Some(now + lease_ms);
            later.push(Later::FlushAt { hash: *hash, at: now + lease_ms });
        }
    }

    fn take_refusals(&mut self, hash: &[u8; 32]) -> Refusals {
        self.keys.get_mut(hash).map(|e| std::mem::take(&mut e.refusals)).unwrap_or_default()
    }

    fn give_back_refusals(&mut self, hash: &[u8; 32], refusals: Refusals) {
        if let Some(e) = self.keys.get_mut(hash) {
            for (reason, n) in refusals {
                if e.refusals.len() < crate::guard::MAX_REFUSAL_REASONS || e.refusals.contains_key(&reason) {
                    let c = e.refusals.get_or_insert_with(reason, u64::default);
                    *c = c.saturating_add(n);
                }
            }
        }
    }

    fn cached_limit(&self, slot: &SlotId, now: i64) -> Option<Refusal> {
        let key_wide = SlotId { hash: slot.hash, visitor: None };
        [slot, &key_wide]
            .into_iter()
            .filter_map(|id| self.slots.get(id).and_then(|s| s.limited.as_ref()))
            .filter(|l| l.until > now)
            .max_by_key(|l| l.retry_at)
            .map(|l| limited_refusal(l.retry_at, l.reset_at, &l.quota, now))
    }

    #[allow(clippy::too_many_arguments)]
    fn remember_limit(
        &mut self,
        slot: &SlotId,
        key_wide: bool,
        retry_after_ms: i64,
        quota: QuotaWire,
        now: i64,
        lease_ms: i64,
        later: &mut Vec<Later>,
    ) -> Refusal {
        let id = if key_wide { SlotId { hash: slot.hash, visitor: None } } else { slot.clone() };
        let s = self.slot_mut(&id, now, later);
        let l = LimitedUntil {
            until: now + retry_after_ms.min(lease_ms),
            retry_at: now + retry_after_ms,
            reset_at: now + quota.reset_ms,
            quota,
        };
        let refusal = limited_refusal(l.retry_at, l.reset_at, &l.quota, now);
        s.limited = Some(l);
        s.exhausted_until = None;
        refusal
    }

    /// A unit of the slot's lease, if it has one left and has not ended
    /// (and, for a usage-limited key, the request's `cost` in credits).
    fn take_unit(
        &mut self,
        slot: &SlotId,
        now: i64,
        cost: Option<u64>,
    ) -> Option<(u64, Option<QuotaWire>, Option<u64>)> {
        let s = self.slots.get_mut(slot)?;
        let l = s.lease.as_mut().filter(|l| now < l.until && l.used < l.reserved)?;
        if let Some(c) = cost {
            if l.spent + c > l.credits {
                return None;
            }
            l.spent += c;
        }
        l.used += 1;
        s.demand += 1;
        s.used_at = now;
        // This isolate's view: the guard's remaining after the grant (which
        // counted the whole reservation) plus what is left of it.
        let quota = l.quota.as_ref().map(|q| QuotaWire {
            remaining: q.remaining.saturating_add(l.reserved - l.used),
            reset_ms: (q.reset_ms - (now - l.granted_at)).max(0),
            ..q.clone()
        });
        let credits = cost.and(l.credits_left).map(|c| c + (l.credits - l.spent));
        Some((l.id, quota, credits))
    }

    /// Whether a request of this isolate is asking the guard about `slot`.
    pub fn asking(&self, slot: &SlotId, now: i64) -> bool {
        self.slots.get(slot).and_then(|s| s.asking_until).is_some_and(|t| t > now)
    }

    /// The request asking about `slot` ended (answered, failed, or went
    /// away): the next request may ask.
    pub fn abandon(&mut self, slot: &SlotId) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.asking_until = None;
        }
    }

    /// A [`Later::ReturnAt`] is due: the lease's report, if it is still the
    /// slot's lease, has ended, and no request is asking for a new one.
    pub fn due_return(&mut self, slot: &SlotId, lease_id: u64, now: i64) -> Option<(String, GuardRequest)> {
        let now = self.clock(now);
        let s = self.slots.get_mut(slot)?;
        if s.asking_until.is_some_and(|t| t > now)
            || !s.lease.as_ref().is_some_and(|l| l.id == lease_id && l.until <= now)
        {
            return None;
        }
        let l = s.lease.take()?;
        let e = self.keys.get_mut(&slot.hash)?;
        let refusals = std::mem::take(&mut e.refusals);
        let request = GuardRequest::Return {
            key: Self::key_ref_of(&e.record),
            report: LeaseReport { id: l.id, used: l.used, spent: l.spent },
            refusals,
        };
        Some((e.record.guard().to_owned(), request))
    }

    /// A [`Later::FlushAt`] is due: the counted refusals, if any are left.
    pub fn due_flush(&mut self, hash: &[u8; 32], now: i64) -> Option<(String, GuardRequest)> {
        let now = self.clock(now);
        let e = self.keys.get_mut(hash)?;
        if e.flush_at.is_some_and(|t| t > now) {
            return None;
        }
        e.flush_at = None;
        if e.refusals.is_empty() {
            return None;
        }
        let request =
            GuardRequest::Refused { key: Self::key_ref_of(&e.record), refusals: std::mem::take(&mut e.refusals) };
        Some((e.record.guard().to_owned(), request))
    }

    /// The guard's answer to `request`, sent after a response. Only the
    /// answer to a report or a probe (`Refused`, `Return`) confirms that the
    /// key is not revoked.
    pub fn later_replied(
        &mut self,
        hash: &[u8; 32],
        request: &GuardRequest,
        reply: &Result<GuardReply, String>,
        now: i64,
    ) {
        let now = self.clock(now);
        match reply {
            Ok(GuardReply::Revoked) => self.mark_revoked(hash),
            Ok(GuardReply::Recorded)
                if matches!(request, GuardRequest::Refused { .. } | GuardRequest::Return { .. }) =>
            {
                self.confirm(hash, now)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod harness;
#[cfg(test)]
mod lifecycle_review_tests;
#[cfg(test)]
mod review_tests;
#[cfg(test)]
mod session_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod turnstile_tests;
