//! The key guard: what a key's Durable Object decides — revocation first,
//! then the rate limits, strictly per request or through leases — and the
//! usage it counts on the way. Pure: the object loads a [`GuardState`] from
//! its rows once, calls [`GuardState::apply`] with its clock, and writes back
//! exactly the rows the returned [`Changes`] name.
//!
//! One object per key id owns this state, single-threaded, so the counts are
//! exact however many requests arrive at once and wherever they come from,
//! and a revocation recorded here is refused on the very next check even
//! while KV still serves the old key record.
//!
//! # Rows, and what is written when
//! | row | holds | written |
//! | --- | --- | --- |
//! | meta | the key's identity, tombstone, roll-up sequence and batch in flight | first contact, revocation, roll-ups |
//! | counters | the key's own limits' buckets and the usage not yet rolled up | an admission, a lease grant or return |
//! | one per visitor | a widget visitor's buckets and when it was last seen | that visitor's admission or lease |
//! | one per lease | a live lease: its end, its reservation, its limits | grant, return |
//!
//! A refusal (revoked, rate limited, or any refusal the worker reports) and a
//! refund change only memory: they are written with the next row that is
//! written anyway, or by the usage roll-up. Losing them to a restart loses
//! usage counts of refused requests, and a refunded request counts again —
//! the limiter errs on the strict side, never the lax one.
//!
//! # Leases
//! For a `leased` key the worker asks for a lease instead of a check: one
//! unit for the request at hand (counted now, as a check would) and a
//! reservation of `reserved` more units, counted at the lease's end (see
//! [`crate::ratelimit`] for why that keeps every window exact). The lease
//! also carries the authorization facts the worker decides with — the key
//! record, the org, the user — read from the org's object no earlier than
//! `LEASE_MS / 2` ago, and it ends no later than `LEASE_MS` after they were
//! read. A revocation (the tombstone here) stops new leases at once; a
//! change in the org's object reaches every isolate within `LEASE_MS`.
//! When a lease ends the worker reports how much of the reservation it
//! used: the rest is given back and the used part moves to the end time. A
//! lease never reported (its isolate vanished) is settled
//! [`LEASE_SETTLE_GRACE_MS`] after its end as fully used.
//!
//! Usage (allowed and refused requests per hour, and `last_used_at`) is
//! counted here and rolled up to the org's object by an alarm, so the hot
//! path gains no extra hop.

use serde::{Deserialize, Serialize};

use crate::authorize::{records_verdict, Config, Records};
use crate::credits::{CreditLedger, CreditSpec};
use crate::policy::Policy;
use crate::ratelimit::{self, ledger_bound, Ledger, Quota, RateLimit};
use crate::records::{KeyRecord, OrgRecord, UserRecord};
use crate::vecmap::VecMap;

/// One hour, in milliseconds.
pub const HOUR_MS: i64 = 3_600_000;
/// Most visitors (per-visitor limits of a widget key) one guard tracks. A
/// visitor is forgotten only once its counts have expired; while all
/// tracked visitors still have live counts, any further visitor counts
/// under one shared [`OVERFLOW_VISITOR`] instead: no visitor ever skips or
/// resets its limit (under such a flood, new visitors share one limit).
pub const MAX_VISITORS: usize = 2_048;
/// The visitor every untracked visitor counts under while the table is
/// full of live visitors (never a client address).
pub const OVERFLOW_VISITOR: &str = "*";
/// How often (ms) a full visitor table is swept for expired visitors.
const SWEEP_EVERY_MS: i64 = 1_000;
/// Most live leases of one key; past it, requests are admitted one at a
/// time (a lease with no reservation).
pub const MAX_LEASES: usize = 256;
/// Largest reservation of one lease.
pub const MAX_LEASE_SIZE: u32 = 100_000;
/// Most hours of usage kept while the org's object does not acknowledge
/// roll-ups; older hours are dropped.
pub const MAX_PENDING_HOURS: usize = 48;
/// How long after its end a lease may still be reported before it is
/// settled as fully used.
pub const LEASE_SETTLE_GRACE_MS: i64 = 30_000;
/// Most distinct refusal reasons in one report.
pub const MAX_REFUSAL_REASONS: usize = 16;
/// Longest visitor id (an IPv4 address or an IPv6 prefix).
pub const MAX_VISITOR_ID: usize = 64;
/// Largest lease id: ids are random below 2^53 so that they survive a trip
/// through a JavaScript number (SQLite bindings) unchanged.
pub const LEASE_ID_MASK: u64 = (1 << 53) - 1;
/// Most keys of one roll family (the first key and every key rolled from
/// it) a guard tracks; the org's object refuses a roll past it.
pub const MAX_MEMBERS: usize = 64;
/// Most live (not ended) keys of one roll family; the org's object refuses
/// a roll past it.
pub const MAX_LIVE_MEMBERS: usize = 8;
/// Largest key record a guard holds (its stored JSON text).
pub const MAX_MEMBER_RECORD: usize = 32 * 1024;

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
    pub refused: VecMap<String, u64>,
}

impl UsageCounts {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &UsageCounts) {
        self.allowed += other.allowed;
        self.refunded += other.refunded;
        for (k, v) in other.refused.iter() {
            *self.refused.get_or_insert_with(k.clone(), u64::default) += v;
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
    pub hours: VecMap<i64, UsageCounts>,
    /// Time of the last allowed request (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<i64>,
}

impl PendingUsage {
    /// Whether there is nothing to roll up.
    pub fn is_empty(&self) -> bool {
        self.hours.is_empty() && self.last_used_at.is_none()
    }

    fn hour(&mut self, at: i64) -> &mut UsageCounts {
        let hour = at - at.rem_euclid(HOUR_MS);
        if !self.hours.contains_key(&hour) && self.hours.len() >= MAX_PENDING_HOURS {
            self.hours.pop_first();
        }
        self.hours.get_or_insert_with(hour, UsageCounts::default)
    }

    fn allowed(&mut self, at: i64, n: u32) {
        if n > 0 {
            self.hour(at).allowed += u64::from(n);
            self.last_used_at = Some(self.last_used_at.map_or(at, |t| t.max(at)));
        }
    }

    fn refused(&mut self, at: i64, reason: &str, n: u64) {
        if n > 0 {
            let c = self.hour(at).refused.get_or_insert_with(reason.to_owned(), u64::default);
            *c = c.saturating_add(n);
        }
    }
}

/// Which key an object belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRef {
    /// Key id.
    pub key_id: String,
    /// Its org (empty for the per-address guard of public routes, which
    /// rolls no usage up).
    pub org_id: String,
    /// For a user's JWT sessions ([`crate::jwt::session_guard_id`]): the
    /// token's `iat` (ms). The guard refuses it as revoked when the user's
    /// sessions were revoked at or after that moment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<i64>,
    /// The key presented, when it is not `key_id` (a rolled key shares the
    /// guard of its family's first key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// The version of the key record the request was decided on.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u64,
}

impl KeyRef {
    /// The key presented (a member of the guard's roll family).
    pub fn member_id(&self) -> &str {
        self.member.as_deref().unwrap_or(&self.key_id)
    }
}

/// What a guard knows of one key of its roll family beyond KV: its latest
/// record (after an update or a roll) and when it ended (revoked, or
/// expired after a roll's grace).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The key.
    pub id: String,
    /// The tombstone: when the key was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
    /// When it expired (its record, once past its expiry, is dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_at: Option<i64>,
    /// Its latest record, while it is live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<Box<KeyRecord>>,
}

impl Member {
    /// Whether the key is refused at `now`: revoked, or expired.
    pub fn ended(&self, now: i64) -> bool {
        self.revoked_at.is_some()
            || self.expired_at.is_some()
            || self.record.as_ref().is_some_and(|r| r.revoked_at.is_some() || r.expires_at.is_some_and(|e| e <= now))
    }
}

/// Refusals an isolate answered itself, by reason (lowercase error code),
/// reported with its next call to the guard.
pub type Refusals = VecMap<String, u64>;

/// The limits a request counts under: the key's own and, for a widget key,
/// its visitor's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// The key's effective limits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<RateLimit>,
    /// The visitor's limits (widget keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visitor: Option<VisitorLimits>,
    /// A usage-limited key's credit setting (from its record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<CreditSpec>,
    /// Credits the request spends (its route's cost).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub cost: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { key: Vec::new(), visitor: None, credits: None, cost: 1 }
    }
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// A widget visitor and its limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisitorLimits {
    /// The visitor (an IPv4 address or an IPv6 prefix).
    pub id: String,
    /// Its limits.
    pub limits: Vec<RateLimit>,
}

impl Limits {
    fn validate(&self) -> Result<(), &'static str> {
        let visitor = self.visitor.as_ref().map_or(&[][..], |v| &v.limits[..]);
        if self.key.len() > 2 * ratelimit::MAX_LIMITS || visitor.len() > ratelimit::MAX_LIMITS {
            return Err("too many limits");
        }
        if self.visitor.as_ref().is_some_and(|v| v.id.is_empty() || v.id.len() > MAX_VISITOR_ID) {
            return Err("visitor id must be 1-64 bytes");
        }
        if !(1..=crate::credits::MAX_COST).contains(&self.cost) {
            return Err("cost out of range");
        }
        // A limit out of range (e.g. 0 = unlimited) must never admit; names
        // are the grammar of the policy (they are stored).
        self.key.iter().chain(visitor).try_for_each(RateLimit::validate)
    }
}

/// The authorization facts a lease carries, read from the org's object (the
/// system of record, strongly consistent), not from KV.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// The key record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyRecord>,
    /// The org.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<OrgRecord>,
    /// The key's user, for a user-bound key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserRecord>,
}

impl Facts {
    /// The facts as the records the decision reads; the key only if it is
    /// the one asked about.
    pub fn records(&self, key_id: &str, org_id: &str) -> Records<'_> {
        Records {
            key: self.key.as_ref().filter(|k| k.id == key_id && k.org_id == org_id),
            org: self.org.as_ref(),
            user: self.user.as_ref(),
        }
    }
}

/// Facts as the guard holds them: when it asked the org's object for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedFacts {
    /// The facts.
    pub facts: Facts,
    /// When they were asked for (the guard's clock, before the call).
    pub at: i64,
}

impl FetchedFacts {
    /// Whether these facts may back a new lease at `now`: asked for no more
    /// than half a lease ago, so a lease lasts at least half of `LEASE_MS`.
    pub fn fresh(&self, now: i64, lease_ms: i64) -> bool {
        now >= self.at && now - self.at < lease_ms / 2
    }
}

/// What the worker reports when a lease ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseReport {
    /// The lease.
    pub id: u64,
    /// Units of its reservation that admitted a request.
    pub used: u32,
    /// Credits of its reservation those requests spent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub spent: u64,
}

/// A reservation granted to an isolate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    /// Its id, for the report.
    pub id: u64,
    /// Units the isolate may admit without asking.
    pub reserved: u32,
    /// How long it may use them (ms from the guard's answer; at most
    /// `LEASE_MS`).
    pub valid_ms: i64,
    /// Credits reserved with them (a usage-limited key): each unit spends
    /// its route's cost from these, and a unit whose cost is not left here
    /// asks the guard.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub credits: u64,
}

/// A request from the worker (or the org object) to a key's object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardRequest {
    /// A strict key: admit one request under these limits.
    Check {
        /// The key.
        key: KeyRef,
        /// Its limits.
        limits: Limits,
        /// Refusals the isolate answered itself since its last report.
        #[serde(default, skip_serializing_if = "VecMap::is_empty")]
        refusals: Refusals,
    },
    /// A leased key: admit the request at hand (if the facts allow a request
    /// needing `scope`), reserve up to `want` more, send the facts.
    Lease {
        /// The key.
        key: KeyRef,
        /// Its limits.
        limits: Limits,
        /// The scope the request at hand needs (`None`: no route matched, so
        /// nothing is admitted; the facts still come back).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
        /// How many more units the isolate expects to use within a lease.
        want: u32,
        /// The isolate's previous lease of this key, if it has ended.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        report: Option<LeaseReport>,
        /// Refusals the isolate answered itself.
        #[serde(default, skip_serializing_if = "VecMap::is_empty")]
        refusals: Refusals,
    },
    /// A lease ended with nothing waiting for a new one.
    Return {
        /// The key.
        key: KeyRef,
        /// The report.
        report: LeaseReport,
        /// Refusals the isolate answered itself.
        #[serde(default, skip_serializing_if = "VecMap::is_empty")]
        refusals: Refusals,
    },
    /// Refusals the isolate answered itself (at least one, the request at
    /// hand or a batch). If the key is revoked the answer is
    /// [`GuardReply::Revoked`]: a revoked key is never told apart from an
    /// unknown one for long.
    Refused {
        /// The key.
        key: KeyRef,
        /// The refusals.
        refusals: Refusals,
    },
    /// Give back a request this object admitted (`counted_at` of its
    /// `Allowed` or `Leased` reply) that the worker then refused before the
    /// origin; counted as a refusal instead.
    Refund {
        /// The key.
        key: KeyRef,
        /// The limits it was counted under.
        limits: Limits,
        /// When it was counted.
        counted_at: i64,
        /// The refusal's error code, lowercase.
        reason: String,
    },
    /// Record the tombstone (idempotent: the first time wins): of one key
    /// of the guard's roll family, or (no `key_id`, round 1's form) of the
    /// whole guard.
    Revoke {
        /// Revocation time (ms).
        revoked_at: i64,
        /// The key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_id: Option<String>,
    },
    /// A key of the guard's roll family changed (an update, a roll's
    /// expiry): requests decided on an older version are answered with
    /// this record ([`GuardReply::Stale`]); its credit setting, if newer,
    /// restarts the count.
    Update {
        /// The new record.
        record: Box<KeyRecord>,
    },
    /// A user's sessions guard: refuse every token issued at or before
    /// `revoked_at` (the latest revocation wins).
    RevokeSessions {
        /// Revocation time (ms).
        revoked_at: i64,
    },
    /// The object's counters, for the admin API.
    Stats,
}

impl GuardRequest {
    /// Decodes what the derived `Serialize` wrote (one small decoder
    /// instead of serde's visitor per variant, see [`crate::json::Fields`]).
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))] // used by the worker (src/edge)
    pub(crate) fn decode(text: &str) -> crate::json::Got<GuardRequest> {
        let (name, mut f) = crate::json::Fields::variant(text)?;
        Ok(match name.as_str() {
            "check" => GuardRequest::Check {
                key: f.get("key")?,
                limits: f.get("limits")?,
                refusals: f.or_default("refusals")?,
            },
            "lease" => GuardRequest::Lease {
                key: f.get("key")?,
                limits: f.get("limits")?,
                scope: f.os("scope")?,
                want: f.u32("want")?,
                report: f.get("report")?,
                refusals: f.or_default("refusals")?,
            },
            "return" => GuardRequest::Return {
                key: f.get("key")?,
                report: f.get("report")?,
                refusals: f.or_default("refusals")?,
            },
            "refused" => GuardRequest::Refused { key: f.get("key")?, refusals: f.get("refusals")? },
            "refund" => GuardRequest::Refund {
                key: f.get("key")?,
                limits: f.get("limits")?,
                counted_at: f.i("counted_at")?,
                reason: f.s("reason")?,
            },
            "revoke" => GuardRequest::Revoke { revoked_at: f.i("revoked_at")?, key_id: f.os("key_id")? },
            "update" => GuardRequest::Update { record: f.get("record")? },
            "revoke_sessions" => GuardRequest::RevokeSessions { revoked_at: f.i("revoked_at")? },
            "stats" => GuardRequest::Stats,
            _ => return Err(crate::json::bad("unknown request")),
        })
    }

    /// Whether the object must hold fresh facts to answer (a lease).
    pub fn needs_facts(&self) -> bool {
        matches!(self, GuardRequest::Lease { .. })
    }

    /// The kind of request, for the object's call counters.
    pub fn kind(&self) -> &'static str {
        match self {
            GuardRequest::Check { .. } => "check",
            GuardRequest::Lease { .. } => "lease",
            GuardRequest::Return { .. } => "return",
            GuardRequest::Refused { .. } => "refused",
            GuardRequest::Refund { .. } => "refund",
            GuardRequest::Revoke { .. } => "revoke",
            GuardRequest::Update { .. } => "update",
            GuardRequest::RevokeSessions { .. } => "revoke_sessions",
            GuardRequest::Stats => "stats",
        }
    }
}

/// The object's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardReply {
    /// Admitted and counted.
    Allowed {
        /// The tightest limit after this request.
        quota: Option<QuotaWire>,
        /// When it was counted (for a refund).
        counted_at: i64,
        /// A usage-limited key's credits left.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credits: Option<u64>,
    },
    /// A lease answer: the facts, and the request at hand admitted if the
    /// facts allow it (`counted_at`), with a reservation if one was granted.
    Leased {
        /// When the request at hand was counted; `None` if the facts do not
        /// allow it (the worker's decision will say why).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        counted_at: Option<i64>,
        /// Why the facts refuse the request at hand (an error code,
        /// lowercase), when a scope was given and they do.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refused: Option<String>,
        /// The tightest limit after this grant.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quota: Option<QuotaWire>,
        /// The reservation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease: Option<LeaseGrant>,
        /// A usage-limited key's credits left (after the reservation).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credits: Option<u64>,
        /// The facts.
        facts: Box<Facts>,
        /// How long the facts may be used (ms from this answer).
        valid_ms: i64,
    },
    /// Refused by a rate limit; nothing counted against the limits.
    Limited {
        /// Milliseconds until the request would be admitted.
        retry_after_ms: i64,
        /// The tightest refusing limit.
        quota: QuotaWire,
        /// Whether a limit of the key itself refused (not only the
        /// visitor's): every visitor of the key is then refused.
        key_wide: bool,
        /// For a lease request: the facts and how long they may be used.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        facts: Option<Box<(Facts, i64)>>,
    },
    /// A usage-limited key has too few credits left for the request (its
    /// cost); nothing counted.
    Exhausted {
        /// Milliseconds until the next refill, if the key refills.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<i64>,
        /// Credits left (fewer than the request costs).
        #[serde(default)]
        remaining: u64,
        /// For a lease request: the facts and how long they may be used.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        facts: Option<Box<(Facts, i64)>>,
    },
    /// The request was decided on an older version of the key's record:
    /// decide again on this one. Nothing counted.
    Stale {
        /// The key's current record.
        record: Box<KeyRecord>,
    },
    /// The key is revoked (or, after a roll, expired).
    Revoked,
    /// A report, refusal or refund was recorded; the key is not revoked.
    Recorded,
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

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))] // used by the worker (src/edge)
impl GuardReply {
    /// Decodes what the derived `Serialize` wrote (see [`GuardRequest::decode`]).
    pub(crate) fn decode(text: &str) -> crate::json::Got<GuardReply> {
        let (name, mut f) = crate::json::Fields::variant(text)?;
        Ok(match name.as_str() {
            "allowed" => GuardReply::Allowed {
                quota: f.get("quota")?,
                counted_at: f.i("counted_at")?,
                credits: f.get("credits")?,
            },
            "leased" => GuardReply::Leased {
                counted_at: f.oi("counted_at")?,
                refused: f.os("refused")?,
                quota: f.get("quota")?,
                lease: f.get("lease")?,
                credits: f.get("credits")?,
                facts: f.get("facts")?,
                valid_ms: f.i("valid_ms")?,
            },
            "limited" => GuardReply::Limited {
                retry_after_ms: f.i("retry_after_ms")?,
                quota: f.get("quota")?,
                key_wide: f.b("key_wide")?,
                facts: f.get("facts")?,
            },
            "exhausted" => GuardReply::Exhausted {
                retry_after_ms: f.oi("retry_after_ms")?,
                remaining: f.u("remaining")?,
                facts: f.get("facts")?,
            },
            "stale" => GuardReply::Stale { record: f.get("record")? },
            "revoked" => GuardReply::Revoked,
            "recorded" => GuardReply::Recorded,
            "revoke_recorded" => GuardReply::RevokeRecorded { revoked_at: f.i("revoked_at")? },
            "invalid" => GuardReply::Invalid { reason: f.s("reason")? },
            _ => return Err(crate::json::bad("unknown reply")),
        })
    }
}

/// A key's guard, as the admin API shows it. Calls and writes are counted
/// since the object was last loaded into memory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardStats {
    /// The key.
    pub key_id: Option<String>,
    /// Whether the tombstone is set.
    pub revoked: bool,
    /// Calls received, by request kind.
    pub calls: Calls,
    /// Storage transactions that wrote at least one row.
    pub commits: u64,
    /// Rows written (SQLite's own count).
    pub rows_written: u64,
    /// Calls to the org's object for lease facts.
    pub facts_reads: u64,
    /// Tracked visitors.
    pub visitors: usize,
    /// Live leases.
    pub leases: usize,
    /// Units reserved by live leases.
    pub reserved: u64,
    /// Bytes of the stored rows.
    pub bytes: usize,
    /// SQLite's size of the object's database.
    pub database_bytes: usize,
    /// A usage-limited key's live credit count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<u64>,
    /// Keys of its roll family it holds more of than KV (updated, rolled
    /// or revoked ones).
    #[serde(default)]
    pub family: usize,
}

/// Calls a guard received, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Calls {
    /// Strict checks.
    pub check: u64,
    /// Lease requests.
    pub lease: u64,
    /// Lease returns.
    #[serde(rename = "return")]
    pub returned: u64,
    /// Refusal reports and revocation probes.
    pub refused: u64,
    /// Refunds.
    pub refund: u64,
    /// Revocations.
    pub revoke: u64,
    /// Record updates (a `PATCH`, a roll's end).
    #[serde(default)]
    pub update: u64,
    /// Stats reads.
    pub stats: u64,
}

impl Calls {
    /// Counts one request.
    pub fn count(&mut self, r: &GuardRequest) {
        let n = match r {
            GuardRequest::Check { .. } => &mut self.check,
            GuardRequest::Lease { .. } => &mut self.lease,
            GuardRequest::Return { .. } => &mut self.returned,
            GuardRequest::Refused { .. } => &mut self.refused,
            GuardRequest::Refund { .. } => &mut self.refund,
            GuardRequest::Revoke { .. } | GuardRequest::RevokeSessions { .. } => &mut self.revoke,
            GuardRequest::Update { .. } => &mut self.update,
            GuardRequest::Stats => &mut self.stats,
        };
        *n += 1;
    }
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

impl From<Quota> for QuotaWire {
    fn from(q: Quota) -> Self {
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

/// The meta row.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The key's identity, learned from the first request (for roll-ups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyRef>,
    /// The tombstone: when the key was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
    /// A user's sessions guard: tokens issued at or before this moment are
    /// revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions_revoked_at: Option<i64>,
    /// The keys of the guard's roll family it knows more of than KV.
    /// (A list, not a map: at most [`MAX_MEMBERS`], and no map type more in
    /// the wasm.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Member>,
    /// Sequence number of the last roll-up begun.
    #[serde(default)]
    pub rollup_seq: u64,
    /// The roll-up being delivered: re-sent unchanged until the org
    /// acknowledges it; the org ignores a sequence number it has applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inflight: Option<(u64, PendingUsage)>,
}

impl Meta {
    /// What the guard knows of key `id` of its roll family.
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }
}

/// The counters row: the key's own limits and its pending usage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// The key's own limits.
    pub ledger: Ledger,
    /// Usage counted since the last roll-up began.
    #[serde(default)]
    pub usage: PendingUsage,
    /// A usage-limited key's live credit count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<CreditLedger>,
}

/// A visitor row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Visitor {
    /// When it was last admitted.
    pub seen: i64,
    /// Its limits.
    pub ledger: Ledger,
}

/// A lease row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// When it ends (the time its reservation is counted at).
    pub ends_at: i64,
    /// Units reserved.
    pub reserved: u32,
    /// The limits it was granted under.
    pub limits: Limits,
    /// Credits reserved (a usage-limited key).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub credits: u64,
    /// When it was granted (credits spent before a refill are not given
    /// back after it).
    #[serde(default)]
    pub granted_at: i64,
}

/// Everything a key's object holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuardState {
    /// The meta row.
    pub meta: Meta,
    /// The counters row.
    pub counters: Counters,
    /// Visitor rows, by visitor id.
    pub visitors: VecMap<String, Visitor>,
    /// Live leases, by id.
    pub leases: VecMap<u64, LeaseRecord>,
    /// The meta row changed in memory only (the key learned from a
    /// refusal): written with the next row that is written anyway.
    pub meta_unwritten: bool,
    /// When a full visitor table was last swept for expired visitors.
    pub last_sweep: i64,
}

/// The rows [`GuardState::apply`] changed. A visitor or lease named here is
/// written if it still exists and deleted if it does not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct Changes {
    /// The meta row.
    pub meta: bool,
    /// The counters row.
    pub counters: bool,
    /// Visitor rows.
    pub visitors: Vec<String>,
    /// Lease rows.
    pub leases: Vec<u64>,
}

impl Changes {
    /// Whether nothing needs writing.
    pub fn is_empty(&self) -> bool {
        !self.meta && !self.counters && self.visitors.is_empty() && self.leases.is_empty()
    }

    fn visitor(&mut self, id: &str) {
        if !self.visitors.iter().any(|v| v == id) {
            self.visitors.push(id.to_owned());
        }
    }

    fn lease(&mut self, id: u64) {
        if !self.leases.contains(&id) {
            self.leases.push(id);
        }
    }
}

/// What [`GuardState::apply`] needs besides the request.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// The object's clock (ms).
    pub now: i64,
    /// `LEASE_MS`.
    pub lease_ms: i64,
    /// Fresh facts, for a lease request.
    pub facts: Option<&'a FetchedFacts>,
    /// The route policy.
    pub policy: &'a Policy,
    /// Decision settings.
    pub config: &'a Config,
    /// A random id for a new lease (masked to [`LEASE_ID_MASK`]).
    pub lease_id: u64,
    /// When the worker stops waiting for the answer (its `GUARD_TIMEOUT_MS`,
    /// on its clock), if it waits: a check or lease question applied later
    /// counts nothing, for the worker has answered 503 by then.
    pub deadline: Option<i64>,
}

/// How many units to reserve for a lease: what the isolate expects to use,
/// at most a fair share of the room left (shared with the other holders),
/// at most [`MAX_LEASE_SIZE`]. An isolate with no recent traffic asks for 0
/// and so asks again on its next request, exactly like a strict key.
pub fn lease_size(want: u32, room: u64, holders: usize) -> u32 {
    let share = room / (holders as u64 + 1);
    u32::try_from(share.min(u64::from(want)).min(u64::from(MAX_LEASE_SIZE))).unwrap_or(0)
}

fn valid_reason(r: &str) -> bool {
    !r.is_empty() && r.len() <= 40 && r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

fn validate_refusals(refusals: &Refusals) -> Result<(), &'static str> {
    if refusals.len() > MAX_REFUSAL_REASONS || !refusals.keys().all(|r| valid_reason(r)) {
        return Err("refusal reasons must be at most 16 lowercase error codes");
    }
    Ok(())
}

impl GuardState {
    /// Applies one request. Returns the reply and the rows to write.
    pub fn apply(&mut self, request: &GuardRequest, cx: &Context<'_>) -> (GuardReply, Changes) {
        let mut ch = Changes::default();
        if let Err(reason) = validate(request) {
            return (GuardReply::Invalid { reason: reason.to_owned() }, ch);
        }
        // The deadline is compared with the clock as read, not the clamped
        // one below (which never goes back, and may run ahead of real time
        // for a while after a clock step: late questions would then fail).
        if cx.deadline.is_some_and(|d| cx.now > d)
            && matches!(request, GuardRequest::Check { .. } | GuardRequest::Lease { .. })
        {
            // Nothing counted, recorded or settled: the worker gave up on
            // this question and reports its refusals with the next one (a
            // lease report it carried is lost: that lease is settled as
            // fully used after it ends). Should the worker's clock be behind
            // this object's by more than its timeout, its questions fail
            // closed: 503, never an allow.
            return (GuardReply::Invalid { reason: "past the worker's deadline".into() }, ch);
        }
        let now = self.counters.ledger.clamp(cx.now);
        let resolved;
        let request = match request {
            GuardRequest::Check { limits, .. }
            | GuardRequest::Lease { limits, .. }
            | GuardRequest::Refund { limits, .. }
                if self.overflowing(limits, now, &mut ch) =>
            {
                resolved = overflow(request);
                &resolved
            }
            _ => request,
        };
        let reply = match request {
            GuardRequest::Revoke { revoked_at, key_id: None } => {
                if self.meta.revoked_at.is_none() {
                    self.meta.revoked_at = Some(*revoked_at);
                    ch.meta = true;
                }
                GuardReply::RevokeRecorded { revoked_at: self.meta.revoked_at.unwrap_or(*revoked_at) }
            }
            GuardRequest::Revoke { revoked_at, key_id: Some(id) } => match self.member_mut(id, now, &mut ch) {
                None => GuardReply::Invalid { reason: "too many keys in this roll family".into() },
                Some(m) => {
                    let at = *m.revoked_at.get_or_insert(*revoked_at);
                    // A revoked key is refused on its tombstone alone.
                    m.record = None;
                    ch.meta = true;
                    GuardReply::RevokeRecorded { revoked_at: at }
                }
            },
            GuardRequest::Update { record } => match self.member_mut(&record.id, now, &mut ch) {
                None => GuardReply::Invalid { reason: "too many keys in this roll family".into() },
                Some(m) => {
                    let ended = m.revoked_at.is_some() || m.expired_at.is_some();
                    if !ended && m.record.as_ref().is_none_or(|r| r.version <= record.version) {
                        m.record = Some(record.clone());
                        ch.meta = true;
                        // Credits are the family's: the newest setting holds
                        // (a usage-limited key never loses its credits).
                        if let Some(spec) = &record.credits {
                            ch.counters |= CreditLedger::adopt(&mut self.counters.credits, spec, now);
                        }
                    }
                    GuardReply::Recorded
                }
            },
            GuardRequest::RevokeSessions { revoked_at } => {
                let at = self.meta.sessions_revoked_at.map_or(*revoked_at, |r| r.max(*revoked_at));
                if self.meta.sessions_revoked_at != Some(at) {
                    self.meta.sessions_revoked_at = Some(at);
                    ch.meta = true;
                }
                GuardReply::RevokeRecorded { revoked_at: at }
            }
            GuardRequest::Check { key, limits, refusals } => {
                self.learn(key, &mut ch);
                self.note_refusals(refusals, now);
                if self.revoked(key, now) {
                    GuardReply::Revoked
                } else if let Some(record) = self.stale(key) {
                    GuardReply::Stale { record }
                } else {
                    self.settle_expired(now, &mut ch);
                    self.prune(limits, now);
                    if let Some((retry_after_ms, remaining)) = self.credits_short(limits, now, &mut ch) {
                        self.counters.usage.refused(now, "usage_exceeded", 1);
                        GuardReply::Exhausted { retry_after_ms, remaining, facts: None }
                    } else if self.room(limits, now) >= 1 {
                        self.count(limits, now, 1, now, &mut ch);
                        self.counters.usage.allowed(now, 1);
                        let credits = self.spend(limits, u64::from(limits.cost), &mut ch);
                        GuardReply::Allowed { quota: self.quota(limits, now).map(Into::into), counted_at: now, credits }
                    } else {
                        self.counters.usage.refused(now, "rate_limited", 1);
                        self.limited(limits, now, None)
                    }
                }
            }
            GuardRequest::Lease { key, limits, scope, want, report, refusals } => {
                self.learn(key, &mut ch);
                self.note_refusals(refusals, now);
                if let Some(r) = report {
                    self.settle(r, now, &mut ch);
                }
                if self.revoked(key, now) {
                    GuardReply::Revoked
                } else if let Some(record) = self.stale(key) {
                    GuardReply::Stale { record }
                } else {
                    match cx.facts.filter(|f| f.fresh(now, cx.lease_ms)) {
                        None => GuardReply::Invalid { reason: "a lease needs fresh facts".into() },
                        // The request's limits, credits and cost come from
                        // the isolate's record: one older than the facts'
                        // is asked again on the facts' (nothing counted).
                        Some(f) => {
                            match f.facts.key.as_ref().filter(|k| k.id == key.member_id() && k.version > key.version) {
                                Some(newer) => GuardReply::Stale { record: Box::new(newer.clone()) },
                                None => self.lease(key, limits, scope.as_deref(), *want, f, now, cx, &mut ch),
                            }
                        }
                    }
                }
            }
            GuardRequest::Return { key, report, refusals } => {
                self.learn(key, &mut ch);
                self.note_refusals(refusals, now);
                self.settle(report, now, &mut ch);
                if self.is_revoked(key, now) {
                    GuardReply::Revoked
                } else {
                    GuardReply::Recorded
                }
            }
            GuardRequest::Refused { key, refusals } => {
                self.learn(key, &mut ch);
                self.note_refusals(refusals, now);
                if self.is_revoked(key, now) {
                    GuardReply::Revoked
                } else if let Some(record) = self.stale(key) {
                    // The refusal was decided on an old record (an update
                    // may have lifted it): decide again.
                    GuardReply::Stale { record }
                } else {
                    GuardReply::Recorded
                }
            }
            GuardRequest::Refund { key, limits, counted_at, reason } => {
                self.learn(key, &mut ch);
                if self.is_revoked(key, now) {
                    // Never answered as "recorded": the isolate would take
                    // it for "not revoked".
                    return (GuardReply::Revoked, ch);
                }
                // Memory only: written with the next row written anyway.
                self.counters.ledger.remove(limits.key.iter().map(|l| l.name.as_str()), *counted_at, 1);
                if let Some(v) = &limits.visitor {
                    if let Some(e) = self.visitors.get_mut(&v.id) {
                        e.ledger.remove(v.limits.iter().map(|l| l.name.as_str()), *counted_at, 1);
                    }
                }
                if limits.credits.is_some() {
                    if let Some(l) = self.counters.credits.as_mut() {
                        l.give_back(u64::from(limits.cost), *counted_at);
                    }
                }
                let c = self.counters.usage.hour(*counted_at);
                c.refunded += 1;
                *c.refused.get_or_insert_with(reason.clone(), u64::default) += 1;
                GuardReply::Recorded
            }
            // Answered by the object itself (it owns the counters), with a
            // [`GuardStats`] body instead of a reply.
            GuardRequest::Stats => GuardReply::Invalid { reason: "stats are answered by the object".into() },
        };
        self.flush_meta(&mut ch);
        (reply, ch)
    }

    /// Learns the key's identity from its first request. A refusal alone
    /// does not write it: it goes with the next row written.
    fn learn(&mut self, key: &KeyRef, _ch: &mut Changes) {
        if self.meta.key.is_none() {
            let id = KeyRef { key_id: key.key_id.clone(), org_id: key.org_id.clone(), ..KeyRef::default() };
            self.meta.key = Some(id);
            self.meta_unwritten = true;
        }
    }

    /// The entry of a key of the roll family, made if new; `None` when the
    /// family already has [`MAX_MEMBERS`] keys. Records past their expiry
    /// are dropped first (their expiry is kept).
    fn member_mut(&mut self, id: &str, now: i64, ch: &mut Changes) -> Option<&mut Member> {
        for m in &mut self.meta.members {
            if let Some(e) = m.record.as_ref().and_then(|r| r.expires_at).filter(|&e| e <= now) {
                m.expired_at = Some(e);
                m.record = None;
                ch.meta = true;
            }
        }
        let at = match self.meta.members.iter().position(|m| m.id == id) {
            Some(at) => at,
            None if self.meta.members.len() >= MAX_MEMBERS => return None,
            None => {
                self.meta.members.push(Member { id: id.to_owned(), ..Member::default() });
                self.meta.members.len() - 1
            }
        };
        self.meta.members.get_mut(at)
    }

    /// The key's current record, when the request was decided on an older
    /// one.
    fn stale(&self, key: &KeyRef) -> Option<Box<KeyRecord>> {
        let m = self.meta.member(key.member_id())?;
        m.record.as_ref().filter(|r| r.version > key.version).cloned()
    }

    /// For a usage-limited key: brings its count up to date (a newer
    /// setting, a refill due) and, when fewer credits are left than the
    /// request costs, `Some` of the time until the next refill and the
    /// credits left.
    fn credits_short(&mut self, limits: &Limits, now: i64, ch: &mut Changes) -> Option<(Option<i64>, u64)> {
        let spec = limits.credits.as_ref()?;
        ch.counters |= CreditLedger::adopt(&mut self.counters.credits, spec, now);
        let l = self.counters.credits.as_mut()?;
        ch.counters |= l.refill(now);
        (l.remaining < u64::from(limits.cost)).then(|| (l.next_refill_ms(now), l.remaining))
    }

    /// Spends `n` credits of a usage-limited key (checked by
    /// [`Self::credits_short`] first); the credits left.
    fn spend(&mut self, limits: &Limits, n: u64, ch: &mut Changes) -> Option<u64> {
        limits.credits.as_ref()?;
        let l = self.counters.credits.as_mut()?;
        l.spend(n.min(l.remaining));
        ch.counters = true;
        Some(l.remaining)
    }

    fn flush_meta(&mut self, ch: &mut Changes) {
        if ch.is_empty() {
            return;
        }
        if self.meta_unwritten {
            ch.meta = true;
        }
        if ch.meta {
            self.meta_unwritten = false;
        }
    }

    /// Every row, for a first write (a migrated state).
    pub fn all_rows(&self) -> Changes {
        Changes {
            meta: true,
            counters: true,
            visitors: self.visitors.keys().cloned().collect(),
            leases: self.leases.keys().copied().collect(),
        }
    }

    fn note_refusals(&mut self, refusals: &Refusals, now: i64) {
        for (reason, n) in refusals.iter() {
            self.counters.usage.refused(now, reason, *n);
        }
    }

    /// Whether the tombstone is set, the key (of the roll family) has
    /// ended, or `key` is a session issued before its user's sessions were
    /// revoked.
    pub fn is_revoked(&self, key: &KeyRef, now: i64) -> bool {
        self.meta.revoked_at.is_some()
            || self.meta.member(key.member_id()).is_some_and(|m| m.ended(now))
            || key.issued_at.is_some_and(|iat| self.meta.sessions_revoked_at.is_some_and(|r| iat <= r))
    }

    /// [`Self::is_revoked`]; a refused request is counted (memory).
    fn revoked(&mut self, key: &KeyRef, now: i64) -> bool {
        let revoked = self.is_revoked(key, now);
        if revoked {
            self.counters.usage.refused(now, "revoked", 1);
        }
        revoked
    }

    #[allow(clippy::too_many_arguments)]
    fn lease(
        &mut self,
        key: &KeyRef,
        limits: &Limits,
        scope: Option<&str>,
        want: u32,
        f: &FetchedFacts,
        now: i64,
        cx: &Context<'_>,
        ch: &mut Changes,
    ) -> GuardReply {
        let ends_at = f.at + cx.lease_ms;
        let valid_ms = ends_at - now;
        let records = f.facts.records(key.member_id(), &key.org_id);
        let verdict = scope.map(|s| records_verdict(&records, s, cx.policy, cx.config, now));
        if !matches!(verdict, Some(Ok(()))) {
            // The worker decides on the same facts and answers the refusal
            // (and reports it); nothing is counted here. The code settles a
            // disagreement (clocks apart around a key's expiry).
            return GuardReply::Leased {
                counted_at: None,
                refused: verdict.and_then(Result::err).map(|c| c.as_str().to_ascii_lowercase()),
                quota: None,
                lease: None,
                credits: None,
                facts: Box::new(f.facts.clone()),
                valid_ms,
            };
        }
        self.settle_expired(now, ch);
        self.prune(limits, now);
        if let Some((retry_after_ms, remaining)) = self.credits_short(limits, now, ch) {
            self.counters.usage.refused(now, "usage_exceeded", 1);
            let facts = Some(Box::new((f.facts.clone(), valid_ms)));
            return GuardReply::Exhausted { retry_after_ms, remaining, facts };
        }
        let room = self.room(limits, now);
        if room < 1 {
            self.counters.usage.refused(now, "rate_limited", 1);
            return self.limited(limits, now, Some((f.facts.clone(), valid_ms)));
        }
        self.count(limits, now, 1, now, ch);
        self.counters.usage.allowed(now, 1);
        self.spend(limits, u64::from(limits.cost), ch);
        let id = cx.lease_id & LEASE_ID_MASK;
        let mut reserved = if self.leases.len() < MAX_LEASES && !self.leases.contains_key(&id) {
            lease_size(want, room - 1, self.leases.len())
        } else {
            0
        };
        // A usage-limited key's lease reserves credits as well: enough for
        // every unit at the dearest route's cost, at most what is left.
        let mut credits = 0;
        if let (Some(_), Some(l)) = (&limits.credits, self.counters.credits.as_mut()) {
            credits = (u64::from(reserved) * u64::from(cx.policy.max_cost())).min(l.remaining);
            if credits == 0 {
                reserved = 0;
            }
            l.remaining -= credits;
        }
        let lease = (reserved > 0).then(|| {
            self.count(limits, ends_at, reserved, now, ch);
            let record = LeaseRecord { ends_at, reserved, limits: limits.clone(), credits, granted_at: now };
            self.leases.insert(id, record);
            ch.lease(id);
            LeaseGrant { id, reserved, valid_ms, credits }
        });
        let credits = limits.credits.and(self.counters.credits.map(|l| l.remaining));
        GuardReply::Leased {
            counted_at: Some(now),
            refused: None,
            quota: self.quota(limits, now).map(Into::into),
            lease,
            credits,
            facts: Box::new(f.facts.clone()),
            valid_ms,
        }
    }

    fn limited(&self, limits: &Limits, now: i64, facts: Option<(Facts, i64)>) -> GuardReply {
        let empty = Ledger::default();
        let visitor = limits.visitor.as_ref().map(|v| (self.visitors.get(&v.id).map_or(&empty, |e| &e.ledger), v));
        let key_at = self.counters.ledger.admit_at(&limits.key, now, 1);
        let visitor_at = visitor.map_or(now, |(l, v)| l.admit_at(&v.limits, now, 1));
        let retry_after_ms = key_at.max(visitor_at).saturating_sub(now).max(1);
        let refusing = ratelimit::tightest(
            self.counters
                .ledger
                .refusing_quota(&limits.key, now, 1)
                .into_iter()
                .chain(visitor.and_then(|(l, v)| l.refusing_quota(&v.limits, now, 1))),
        );
        let q = refusing.unwrap_or(Quota { name: String::new(), limit: 0, remaining: 0, reset_ms: 0 });
        // Reset never before the retry time (after a limit was lowered, the
        // oldest counted bucket may expire before room opens up).
        let quota = Quota { remaining: 0, reset_ms: q.reset_ms.max(retry_after_ms), ..q };
        GuardReply::Limited { retry_after_ms, quota: quota.into(), key_wide: key_at > now, facts: facts.map(Box::new) }
    }

    fn prune(&mut self, limits: &Limits, now: i64) {
        self.counters.ledger.prune(&limits.key, now);
        if let Some(v) = &limits.visitor {
            if let Some(e) = self.visitors.get_mut(&v.id) {
                e.ledger.prune(&v.limits, now);
            }
        }
    }

    fn room(&self, limits: &Limits, now: i64) -> u64 {
        let key = self.counters.ledger.room(&limits.key, now);
        let visitor = limits.visitor.as_ref().map_or(u64::MAX, |v| match self.visitors.get(&v.id) {
            Some(e) => e.ledger.room(&v.limits, now),
            None => Ledger::default().room(&v.limits, now),
        });
        key.min(visitor)
    }

    fn quota(&self, limits: &Limits, now: i64) -> Option<Quota> {
        let key = self.counters.ledger.quota(&limits.key, now);
        let visitor = limits.visitor.as_ref().and_then(|v| self.visitors.get(&v.id)?.ledger.quota(&v.limits, now));
        ratelimit::tightest(key.into_iter().chain(visitor))
    }

    /// Counts `n` units at `at` under every limit (the visitor's created, the
    /// visitor seen longest ago forgotten if there are too many).
    fn count(&mut self, limits: &Limits, at: i64, n: u32, now: i64, ch: &mut Changes) {
        self.counters.ledger.add(&limits.key, at, n);
        ch.counters = true;
        if let Some(v) = &limits.visitor {
            // The table has room, or the visitor is the overflow one
            // (resolved before): a live visitor is never forgotten.
            let e = self.visitors.get_or_insert_with(v.id.clone(), Visitor::default);
            e.seen = e.seen.max(now);
            e.ledger.clamp(now);
            e.ledger.add(&v.limits, at, n);
            ch.visitor(&v.id);
        }
    }

    /// Whether the request's visitor must count under [`OVERFLOW_VISITOR`]:
    /// it is not tracked, and the table is full of visitors whose counts
    /// are still live (swept for expired ones at most once per second).
    fn overflowing(&mut self, limits: &Limits, now: i64, ch: &mut Changes) -> bool {
        let Some(v) = &limits.visitor else { return false };
        if self.visitors.contains_key(v.id.as_str()) || self.tracked_visitors() < MAX_VISITORS {
            return false;
        }
        if now - self.last_sweep >= SWEEP_EVERY_MS || now < self.last_sweep {
            self.last_sweep = now;
            self.forget_expired_visitors(now, ch);
        }
        self.tracked_visitors() >= MAX_VISITORS
    }

    fn tracked_visitors(&self) -> usize {
        self.visitors.len() - usize::from(self.visitors.contains_key(OVERFLOW_VISITOR))
    }

    /// Forgets the visitors whose counts have all expired.
    fn forget_expired_visitors(&mut self, now: i64, ch: &mut Changes) {
        self.visitors.retain(|id, v| {
            v.ledger.prune(&[], now);
            let keep = !v.ledger.is_empty();
            if !keep {
                ch.visitor(id);
            }
            keep
        });
    }

    /// A lease's report: the unused part of the reservation is given back,
    /// the used part moves to the time the lease ended (no later than its
    /// end), and is counted as allowed usage. An unknown id (settled
    /// already, or never granted) changes nothing.
    fn settle(&mut self, report: &LeaseReport, now: i64, ch: &mut Changes) {
        let Some(l) = self.leases.remove(&report.id) else { return };
        ch.lease(report.id);
        let used = report.used.min(l.reserved);
        let at = now.min(l.ends_at);
        if let Some(c) = self.counters.credits.as_mut().filter(|_| l.credits > 0) {
            c.give_back(l.credits - report.spent.min(l.credits), l.granted_at);
        }
        self.counters.ledger.remove(l.limits.key.iter().map(|x| x.name.as_str()), l.ends_at, l.reserved);
        self.counters.ledger.add(&l.limits.key, at, used);
        ch.counters = true;
        if let Some(v) = &l.limits.visitor {
            if let Some(e) = self.visitors.get_mut(&v.id) {
                e.ledger.remove(v.limits.iter().map(|x| x.name.as_str()), l.ends_at, l.reserved);
                e.ledger.add(&v.limits, at, used);
                ch.visitor(&v.id);
            }
        }
        self.counters.usage.allowed(at, used);
    }

    /// Leases never reported, well past their end: their isolate is gone.
    /// Their reservation stays counted in full (the guard cannot know how
    /// much was used) and is counted as allowed usage.
    fn settle_expired(&mut self, now: i64, ch: &mut Changes) {
        let expired: Vec<u64> =
            self.leases.iter().filter(|(_, l)| l.ends_at + LEASE_SETTLE_GRACE_MS <= now).map(|(id, _)| *id).collect();
        for id in expired {
            if let Some(l) = self.leases.remove(&id) {
                self.counters.usage.allowed(l.ends_at, l.reserved);
                ch.lease(id);
                ch.counters = true;
            }
        }
    }

    /// Whether an alarm is needed: usage to roll up, or leases to settle.
    pub fn has_pending(&self) -> bool {
        !self.counters.usage.is_empty()
            || self.meta.inflight.is_some()
            || !self.leases.is_empty()
            || (self.is_per_address() && !self.counters.ledger.is_empty())
    }

    /// Whether this is the per-address guard of public routes (`ip:…`, no
    /// org): anyone can make one, so it keeps nothing once its counts have
    /// expired ([`GuardState::disposable`]).
    pub fn is_per_address(&self) -> bool {
        self.meta.key.as_ref().is_some_and(|k| k.org_id.is_empty() && k.key_id.starts_with("ip:"))
    }

    /// A per-address guard whose counts have all expired: the object
    /// deletes its storage (it starts again empty, as a new address would).
    pub fn disposable(&mut self, now: i64) -> bool {
        if !self.is_per_address() || !self.leases.is_empty() || !self.visitors.is_empty() {
            return false;
        }
        let now = self.counters.ledger.clamp(now);
        self.counters.ledger.prune(&[], now);
        self.counters.ledger.is_empty()
    }

    /// The roll-up to deliver now: the one in flight if the last delivery
    /// was not acknowledged, else the pending usage under the next sequence
    /// number. Also settles leases whose isolate vanished and forgets
    /// visitors whose counts expired. `None` when there is nothing to send.
    pub fn begin_rollup(&mut self, now: i64) -> (Option<(u64, PendingUsage)>, Changes) {
        let mut ch = Changes::default();
        let now = self.counters.ledger.clamp(now);
        self.settle_expired(now, &mut ch);
        self.forget_expired_visitors(now, &mut ch);
        if self.meta.key.as_ref().is_some_and(|k| k.org_id.is_empty()) {
            // The per-address guard of public routes: no org to report to.
            if !self.counters.usage.is_empty() {
                self.counters.usage = PendingUsage::default();
                ch.counters = true;
            }
        } else if self.meta.inflight.is_none() && !self.counters.usage.is_empty() {
            self.meta.rollup_seq += 1;
            self.meta.inflight = Some((self.meta.rollup_seq, std::mem::take(&mut self.counters.usage)));
            ch.meta = true;
            ch.counters = true;
        }
        self.flush_meta(&mut ch);
        (self.meta.inflight.clone(), ch)
    }

    /// The org acknowledged roll-up `seq`.
    pub fn finish_rollup(&mut self, seq: u64) -> Changes {
        let mut ch = Changes::default();
        if self.meta.inflight.as_ref().is_some_and(|(s, _)| *s == seq) {
            self.meta.inflight = None;
            ch.meta = true;
        }
        self.flush_meta(&mut ch);
        ch
    }

    /// Units reserved by live leases.
    pub fn reserved(&self) -> u64 {
        self.leases.values().map(|l| u64::from(l.reserved)).sum()
    }

    /// The stored form of every row, as `(table, id, text)`; the object
    /// writes the ones [`Changes`] names and counts bytes with all of them.
    pub fn row(&self, r: &RowRef) -> Option<String> {
        match r {
            RowRef::Meta => serde_json::to_string(&self.meta).ok(),
            RowRef::Counters => serde_json::to_string(&self.counters).ok(),
            RowRef::Visitor(id) => self.visitors.get(id).map(|v| v.ledger.encode()),
            RowRef::Lease(id) => self.leases.get(id).and_then(|l| serde_json::to_string(l).ok()),
        }
    }

    /// Bytes of all rows in their stored form (ids and texts).
    pub fn stored_bytes(&self) -> usize {
        let text = |r: RowRef| self.row(&r).map_or(0, |t| t.len());
        text(RowRef::Meta)
            + text(RowRef::Counters)
            + self.visitors.keys().map(|id| id.len() + 8 + text(RowRef::Visitor(id.clone()))).sum::<usize>()
            + self.leases.keys().map(|id| 8 + text(RowRef::Lease(*id))).sum::<usize>()
    }

    /// Rebuilds the state from its rows.
    pub fn from_rows(
        meta: Option<&str>,
        counters: Option<&str>,
        visitors: impl IntoIterator<Item = (String, i64, String)>,
        leases: impl IntoIterator<Item = (u64, String)>,
    ) -> Result<GuardState, String> {
        let e = |what: &str, err: serde_json::Error| format!("{what}: {err}");
        let mut s = GuardState {
            meta: meta.map(crate::from_json).transpose().map_err(|err| e("meta", err))?.unwrap_or_default(),
            counters: counters.map(crate::from_json).transpose().map_err(|err| e("counters", err))?.unwrap_or_default(),
            ..GuardState::default()
        };
        for (id, seen, text) in visitors {
            let ledger = Ledger::decode(&text).ok_or_else(|| format!("visitor {id}: malformed ledger"))?;
            s.visitors.insert(id, Visitor { seen, ledger });
        }
        for (id, text) in leases {
            s.leases.insert(id, crate::from_json(&text).map_err(|err| e("lease", err))?);
        }
        Ok(s)
    }
}

impl GuardState {
    /// Converts round 1's state — one JSON value under the storage key `s`,
    /// rewritten on every admission — into rows, the first time a guard of
    /// that age is loaded, so no tombstone, counter or pending usage is lost
    /// on upgrade. Limit names with `@` were per-visitor limits
    /// (`ip_minute@203.0.113.7`); they become that visitor's row. Read
    /// through `serde_json::Value` (no extra decoder in the wasm).
    pub fn from_v1(json: &str) -> Result<GuardState, String> {
        use serde_json::Value;
        let bad = |what: &str| format!("v1 state: {what}");
        let v: Value = serde_json::from_str(json).map_err(|e| bad(&e.to_string()))?;
        let v = v.as_object().ok_or_else(|| bad("not an object"))?;
        let opt = |k: &str| v.get(k).filter(|x| !x.is_null());
        // Through text: the decoders already in the binary are reused.
        fn decode<T: serde::de::DeserializeOwned>(x: Option<&Value>) -> Result<Option<T>, String> {
            x.map(|x| crate::from_json(&x.to_string()).map_err(|e| format!("v1 state: {e}"))).transpose()
        }
        let mut s = GuardState::default();
        s.meta.key = decode(opt("key"))?;
        s.meta.revoked_at = opt("revoked_at").and_then(Value::as_i64);
        s.meta.rollup_seq = opt("rollup_seq").and_then(Value::as_u64).unwrap_or(0);
        s.meta.inflight = decode(opt("inflight"))?;
        s.counters.usage = decode(opt("usage"))?.unwrap_or_default();
        let limiter = opt("limiter").and_then(Value::as_object);
        let last_ms = limiter.and_then(|l| l.get("last_ms")).and_then(Value::as_i64).unwrap_or(0);
        s.counters.ledger.last_ms = last_ms;
        let spans = limiter.and_then(|l| l.get("spans")).and_then(Value::as_object);
        let windows = limiter.and_then(|l| l.get("windows")).and_then(Value::as_object);
        for (name, buckets) in windows.into_iter().flatten() {
            let span_ms = spans
                .and_then(|sp| sp.get(name))
                .and_then(Value::as_i64)
                .unwrap_or(i64::from(ratelimit::MAX_WINDOW_SECONDS) * 1000);
            let mut w = ratelimit::Window { span_ms, buckets: Vec::new() };
            for b in buckets.as_array().into_iter().flatten() {
                let field = |k: &str| b.get(k).and_then(Value::as_i64).ok_or_else(|| bad("bucket"));
                let (start, end, count) = (field("start")?, field("end")?, field("count")?);
                let Some(count) = u32::try_from(count).ok().filter(|&c| c > 0 && end > start) else { continue };
                let at = w.buckets.partition_point(|x| (x.start, x.end) < (start, end));
                w.buckets.insert(at, ratelimit::Bucket { start, end, count });
            }
            let seen = w.buckets.iter().map(|b| b.start).max().unwrap_or(0);
            match name.split_once('@') {
                Some((limit, visitor)) => {
                    let v = s.visitors.get_or_insert_with(visitor.to_owned(), Visitor::default);
                    v.seen = v.seen.max(seen);
                    v.ledger.last_ms = last_ms;
                    v.ledger.windows.insert(limit.to_owned(), w);
                }
                None => {
                    s.counters.ledger.windows.insert(name.clone(), w);
                }
            }
        }
        Ok(s)
    }
}

/// The request with its visitor counted as [`OVERFLOW_VISITOR`].
fn overflow(request: &GuardRequest) -> GuardRequest {
    let mut r = request.clone();
    if let GuardRequest::Check { limits, .. }
    | GuardRequest::Lease { limits, .. }
    | GuardRequest::Refund { limits, .. } = &mut r
    {
        if let Some(v) = limits.visitor.as_mut() {
            v.id = OVERFLOW_VISITOR.to_owned();
        }
    }
    r
}

impl GuardState {
    /// The object's clock: `raw` clamped to the latest time seen. The
    /// object stamps lease facts with it, so a clock that stepped back
    /// neither stretches a lease nor makes fresh facts look stale.
    pub fn clock(&self, raw: i64) -> i64 {
        raw.max(self.counters.ledger.last_ms)
    }
}

/// A row of the guard's storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowRef {
    /// The meta row.
    Meta,
    /// The counters row.
    Counters,
    /// A visitor row.
    Visitor(String),
    /// A lease row.
    Lease(u64),
}

fn validate(request: &GuardRequest) -> Result<(), &'static str> {
    match request {
        GuardRequest::Check { limits, refusals, .. } => {
            limits.validate()?;
            validate_refusals(refusals)
        }
        GuardRequest::Lease { limits, refusals, scope, .. } => {
            limits.validate()?;
            validate_refusals(refusals)?;
            if scope.as_ref().is_some_and(|s| s.len() > 64) {
                return Err("scope too long");
            }
            Ok(())
        }
        GuardRequest::Return { refusals, .. } => validate_refusals(refusals),
        GuardRequest::Refused { refusals, .. } => validate_refusals(refusals),
        GuardRequest::Refund { limits, reason, .. } => {
            limits.validate()?;
            if !valid_reason(reason) {
                return Err("refund reason must be a lowercase error code");
            }
            Ok(())
        }
        GuardRequest::Revoke { key_id, .. } => match key_id {
            Some(id) if id.is_empty() || id.len() > 64 => Err("key id must be 1-64 bytes"),
            _ => Ok(()),
        },
        GuardRequest::Update { record } => {
            if serde_json::to_string(record).map_or(true, |t| t.len() > MAX_MEMBER_RECORD) {
                return Err("key record too large");
            }
            Ok(())
        }
        GuardRequest::RevokeSessions { .. } | GuardRequest::Stats => Ok(()),
    }
}

/// Most bytes a guard's rows take when its key counts under `key_limits` and
/// its visitors under `visitor_limits`: the bound the admin API reports and
/// the tests hold the object to.
pub fn byte_bound(key_limits: &[RateLimit], visitor_limits: &[RateLimit]) -> usize {
    // Usage: an hour key, two counters and every refusal reason.
    let hour = 20 + 2 * 24 + MAX_REFUSAL_REASONS * (40 + 24);
    let usage = 64 + MAX_PENDING_HOURS * hour;
    // Members: the live ones' records, every one's times.
    let meta = 256 + usage + MAX_LIVE_MEMBERS * MAX_MEMBER_RECORD + MAX_MEMBERS * 128;
    let limits_text = |ls: &[RateLimit]| ls.iter().map(|l| 64 + l.name.len()).sum::<usize>();
    let lease_row = 256 + limits_text(key_limits) + MAX_VISITOR_ID + limits_text(visitor_limits);
    let visitor_row = MAX_VISITOR_ID + 8 + ledger_bound(visitor_limits);
    let visitors = if visitor_limits.is_empty() { 0 } else { (MAX_VISITORS + 1) * visitor_row };
    meta + ledger_bound(key_limits) + usage + visitors + MAX_LEASES * lease_row
}

#[cfg(test)]
mod lifecycle_review_tests;
#[cfg(test)]
mod lifecycle_tests;
#[cfg(test)]
mod review_tests;
#[cfg(test)]
mod tests;
