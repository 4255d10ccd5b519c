//! Records of the edge read model (Workers KV), written by the Org Durable
//! Object (the system of record) and read on the hot path.
//!
//! KV layout: `key:<sha256 hex>` → [`KeyRecord`], `org:<org_id>` →
//! [`OrgRecord`], `user:<org_id>:<user_id>` → [`UserRecord`]. Times are Unix
//! milliseconds. No record ever holds a plaintext key.

use serde::{Deserialize, Serialize};

use crate::cors::OriginPattern;
use crate::ratelimit::RateLimit;
use crate::scope::Scope;
use crate::token::KeyKind;

/// A key, as the edge sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// ULID.
    pub id: String,
    /// Owning org.
    pub org_id: String,
    /// The user the key acts for; its scopes are capped by the user's role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Human label.
    pub name: String,
    /// Secret or widget.
    pub kind: KeyKind,
    /// Granted scopes (may hold wildcards).
    pub scopes: Vec<Scope>,
    /// The key's prefix, e.g. `kw_live_`.
    pub prefix: String,
    /// Last four characters of the token.
    pub last_four: String,
    /// Creation time (ms).
    pub created_at: i64,
    /// Expiry (ms), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Revocation time (ms), if revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
    /// The key's own rate limits, merged over the policy's defaults by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimit>,
    /// Widget keys: the browser origins they may be used from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<OriginPattern>,
    /// Widget keys: the bot (or other resource) the key is bound to,
    /// forwarded as `X-Keyward-Resource`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    /// Widget keys: the limits each visitor (client address; IPv6 by
    /// prefix) is held to, instead of the policy's `widget_ip_rate_limits`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub visitor_rate_limits: Vec<RateLimit>,
    /// Widget keys: every visitor must pass a Cloudflare Turnstile
    /// challenge first (then carries a short-lived visitor token).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub turnstile_required: bool,
    /// How often a request must ask the key's guard (fixed at creation).
    #[serde(default, skip_serializing_if = "Consistency::is_strict")]
    pub consistency: Consistency,
    /// Secret keys: the client addresses (`CF-Connecting-IP`) the key may
    /// be used from; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<crate::cidr::Cidr>,
    /// Metadata for the origin (a JSON object, compact text, ≤ 4 KiB),
    /// forwarded signed as `X-Keyward-Meta`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<String>,
    /// The key that minted this one through the control API: revoking it
    /// revokes this one (and this one's own descendants).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// When it was revoked because it leaked (the secret-scanning
    /// endpoint): a report of it again is still a true positive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaked_at: Option<i64>,
    /// A rolled key: the key whose guard it shares (the first key of its
    /// roll family), so rolling resets no limit and no credit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard_id: Option<String>,
    /// Bumped by every change after creation (an update, a roll's expiry):
    /// the key's guard holds the latest version and answers a request
    /// decided on an older one with the current record.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u64,
    /// Usage-limited keys: the credit setting ([`crate::credits`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<crate::credits::CreditSpec>,
    /// A key rolled to another (its successor's id): it lives out its grace
    /// but manages no keys and is not rolled again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_to: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl KeyRecord {
    /// A record keyward makes itself, never stored: a strict secret key
    /// with no scopes, limits or restrictions of its own (a JWT session's,
    /// built over it; a public route's, which only names its guard).
    pub fn synthetic(id: String, org_id: &str, created_at: i64) -> KeyRecord {
        KeyRecord {
            id,
            org_id: org_id.to_owned(),
            user_id: None,
            name: String::new(),
            kind: KeyKind::Secret,
            scopes: Vec::new(),
            prefix: String::new(),
            last_four: String::new(),
            created_at,
            expires_at: None,
            revoked_at: None,
            rate_limits: Vec::new(),
            allowed_origins: Vec::new(),
            resource_id: None,
            visitor_rate_limits: Vec::new(),
            turnstile_required: false,
            consistency: Consistency::Strict,
            allowed_ips: Vec::new(),
            meta: None,
            parent_id: None,
            leaked_at: None,
            guard_id: None,
            version: 0,
            credits: None,
            rolled_to: None,
        }
    }

    /// The guard (Durable Object) this key counts in: its roll family's.
    pub fn guard(&self) -> &str {
        self.guard_id.as_deref().unwrap_or(&self.id)
    }
}

/// A key's consistency mode: how its limits and revocation are enforced.
///
/// - `strict` (default): every request asks the key's guard (its Durable
///   Object): exact limits, and a revocation refuses the very next request.
/// - `leased`: the guard grants each isolate a lease — a slice of every
///   limit's remaining budget plus the authorization facts (key, org and
///   BAA, user and role) read from the org's object — valid for at most
///   `LEASE_MS`. Requests are admitted from the slice with no storage read
///   and no Durable Object call. Limits stay exact (slices never sum past
///   the limit); a revocation, a disabled user, a role or BAA change take
///   effect everywhere within `LEASE_MS`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Every request asks the key's guard.
    #[default]
    Strict,
    /// Requests are admitted from leases of at most `LEASE_MS`.
    Leased,
}

impl Consistency {
    /// Whether this is the default, `strict`.
    pub fn is_strict(&self) -> bool {
        *self == Consistency::Strict
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Strict => "strict",
            Consistency::Leased => "leased",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "strict" => Some(Consistency::Strict),
            "leased" => Some(Consistency::Leased),
            _ => None,
        }
    }
}

/// An organization.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgRecord {
    /// Org id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Whether a Business Associate Agreement is active.
    pub baa_active: bool,
    /// Last change (ms).
    pub updated_at: i64,
}

/// A user of an org.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// User id.
    pub id: String,
    /// Owning org.
    pub org_id: String,
    /// Role name from the policy (`viewer`, `operator`, `admin`).
    pub role: String,
    /// A disabled user's keys are refused.
    #[serde(default)]
    pub disabled: bool,
    /// Last change (ms).
    pub updated_at: i64,
}

/// KV key of a key record.
pub fn key_kv_key(hash_hex: &str) -> String {
    format!("key:{hash_hex}")
}

/// KV key of an org record.
pub fn org_kv_key(org_id: &str) -> String {
    format!("org:{org_id}")
}

/// KV key of a user record.
pub fn user_kv_key(org_id: &str, user_id: &str) -> String {
    format!("user:{org_id}:{user_id}")
}
