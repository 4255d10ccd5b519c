//! Records of the edge read model (Workers KV), written by the Org Durable
//! Object (the system of record) and read on the hot path.
//!
//! KV layout: `key:<sha256 hex>` → [`KeyRecord`], `org:<org_id>` →
//! [`OrgRecord`], `user:<org_id>:<user_id>` → [`UserRecord`]. Times are Unix
//! milliseconds. No record ever holds a plaintext key.

use serde::{Deserialize, Serialize};

use crate::cors::OriginPattern;
use crate::json::{missing, Members};
use crate::ratelimit::RateLimit;
use crate::scope::Scope;
use crate::token::KeyKind;

/// A key, as the edge sees it.
///
/// Its decoder is written by hand (below) with `json::Members`:
/// the derived one was the largest decoder in the worker. Through
/// [`crate::from_json`] (every read in the worker) it decodes and refuses
/// exactly what the derive does, with the same messages (tested against
/// it); straight from text (`serde_json::from_str`) it reads a member given
/// twice as its last value, where the derive would refuse it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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

impl<'de> Deserialize<'de> for KeyRecord {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut m = Members::of(d, "struct KeyRecord")?;
        // Over a record with every optional member's default, the members
        // present in name order (see `Members`).
        let mut k = KeyRecord::synthetic(String::new(), "", 0);
        m.fill("allowed_ips", &mut k.allowed_ips)?;
        m.fill("allowed_origins", &mut k.allowed_origins)?;
        m.fill("consistency", &mut k.consistency)?;
        let created_at = m.fill("created_at", &mut k.created_at)?;
        m.fill("credits", &mut k.credits)?;
        m.fill("expires_at", &mut k.expires_at)?;
        m.fill("guard_id", &mut k.guard_id)?;
        let id = m.fill("id", &mut k.id)?;
        let kind = m.fill("kind", &mut k.kind)?;
        let last_four = m.fill("last_four", &mut k.last_four)?;
        m.fill("leaked_at", &mut k.leaked_at)?;
        m.fill("meta", &mut k.meta)?;
        let name = m.fill("name", &mut k.name)?;
        let org_id = m.fill("org_id", &mut k.org_id)?;
        m.fill("parent_id", &mut k.parent_id)?;
        let prefix = m.fill("prefix", &mut k.prefix)?;
        m.fill("rate_limits", &mut k.rate_limits)?;
        m.fill("resource_id", &mut k.resource_id)?;
        m.fill("revoked_at", &mut k.revoked_at)?;
        m.fill("rolled_to", &mut k.rolled_to)?;
        let scopes = m.fill("scopes", &mut k.scopes)?;
        m.fill("turnstile_required", &mut k.turnstile_required)?;
        m.fill("user_id", &mut k.user_id)?;
        m.fill("version", &mut k.version)?;
        m.fill("visitor_rate_limits", &mut k.visitor_rate_limits)?;
        // The required members, in declaration order: the first missing
        // one is named.
        missing(&[
            (id, "id"),
            (org_id, "org_id"),
            (name, "name"),
            (kind, "kind"),
            (scopes, "scopes"),
            (prefix, "prefix"),
            (last_four, "last_four"),
            (created_at, "created_at"),
        ])?;
        // Every member is read above: this stops the build when one is added.
        let KeyRecord {
            id: _,
            org_id: _,
            user_id: _,
            name: _,
            kind: _,
            scopes: _,
            prefix: _,
            last_four: _,
            created_at: _,
            expires_at: _,
            revoked_at: _,
            rate_limits: _,
            allowed_origins: _,
            resource_id: _,
            visitor_rate_limits: _,
            turnstile_required: _,
            consistency: _,
            allowed_ips: _,
            meta: _,
            parent_id: _,
            leaked_at: _,
            guard_id: _,
            version: _,
            credits: _,
            rolled_to: _,
        } = &k;
        Ok(k)
    }
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

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    /// [`super::KeyRecord`] with serde's derived decoder: the oracle of the
    /// hand-written one (same name, fields and attributes, so the same
    /// `Debug` text and error messages).
    mod derived {
        use serde::Deserialize;

        #[allow(dead_code)] // read through `Debug`
        #[derive(Debug, Deserialize)]
        pub(super) struct KeyRecord {
            id: String,
            org_id: String,
            #[serde(default)]
            user_id: Option<String>,
            name: String,
            kind: crate::token::KeyKind,
            scopes: Vec<crate::scope::Scope>,
            prefix: String,
            last_four: String,
            created_at: i64,
            #[serde(default)]
            expires_at: Option<i64>,
            #[serde(default)]
            revoked_at: Option<i64>,
            #[serde(default)]
            rate_limits: Vec<crate::ratelimit::RateLimit>,
            #[serde(default)]
            allowed_origins: Vec<crate::cors::OriginPattern>,
            #[serde(default)]
            resource_id: Option<String>,
            #[serde(default)]
            visitor_rate_limits: Vec<crate::ratelimit::RateLimit>,
            #[serde(default)]
            turnstile_required: bool,
            #[serde(default)]
            consistency: super::super::Consistency,
            #[serde(default)]
            allowed_ips: Vec<crate::cidr::Cidr>,
            #[serde(default)]
            meta: Option<String>,
            #[serde(default)]
            parent_id: Option<String>,
            #[serde(default)]
            leaked_at: Option<i64>,
            #[serde(default)]
            guard_id: Option<String>,
            #[serde(default)]
            version: u64,
            #[serde(default)]
            credits: Option<crate::credits::CreditSpec>,
            #[serde(default)]
            rolled_to: Option<String>,
        }
    }

    fn both(v: &Value) -> (Result<String, String>, Result<String, String>) {
        let text = v.to_string();
        let ours = crate::from_json::<super::KeyRecord>(&text).map(|k| format!("{k:?}")).map_err(|e| e.to_string());
        let theirs = crate::from_json::<derived::KeyRecord>(&text).map(|k| format!("{k:?}")).map_err(|e| e.to_string());
        (ours, theirs)
    }

    #[test]
    fn key_records_decode_as_the_derive_does() {
        let limits = json!([{"name": "m", "limit": 5, "window_seconds": 60}]);
        let full = json!({
            "id": "01JQKEY", "org_id": "org_1", "user_id": "u_1", "name": "n", "kind": "widget",
            "scopes": ["ai:chat", "ai:*"], "prefix": "kw_pub_", "last_four": "abcd", "created_at": 5,
            "expires_at": 9, "revoked_at": -3, "rate_limits": limits, "allowed_origins": ["https://a.example"],
            "resource_id": "bot", "visitor_rate_limits": limits, "turnstile_required": true,
            "consistency": "leased", "allowed_ips": ["203.0.113.0/24"], "meta": "{}", "parent_id": "01JQP",
            "leaked_at": 7, "guard_id": "01JQG", "version": 3,
            "credits": {"remaining": 10, "refill": {"amount": 10, "interval": "daily"}, "set_at": 1},
            "rolled_to": "01JQNEXT",
            "unknown": [1, {"x": null}],
        });
        let (ours, theirs) = both(&full);
        assert!(ours.is_ok(), "{ours:?}");
        assert_eq!(ours, theirs);
        let keys: Vec<String> = full.as_object().unwrap().keys().cloned().collect();
        let edits = [
            None,
            Some(json!(null)),
            Some(json!("x")),
            Some(json!(1.5)),
            Some(json!(-1)),
            Some(json!(u64::MAX)),
            Some(json!(true)),
            Some(json!([])),
            Some(json!({})),
            Some(json!(["x"])),
        ];
        let edited = |v: &Value, k: &str, e: &Option<Value>| {
            let mut v = v.clone();
            match e {
                None => drop(v.as_object_mut().unwrap().remove(k)),
                Some(x) => v[k] = x.clone(),
            }
            v
        };
        // Every member missing or of every type, alone and with a second
        // defect (which one is named first).
        for k in &keys {
            for e in &edits {
                let one = edited(&full, k, e);
                let (ours, theirs) = both(&one);
                assert_eq!(ours, theirs, "{one}");
                for k2 in &keys {
                    for e2 in [&edits[0], &edits[2]] {
                        let two = edited(&one, k2, e2);
                        let (ours, theirs) = both(&two);
                        assert_eq!(ours, theirs, "{two}");
                    }
                }
            }
        }
        for other in [json!(null), json!(1), json!(-1), json!(1.5), json!("x"), json!(true), json!([]), json!({})] {
            let (ours, theirs) = both(&other);
            assert_eq!(ours, theirs, "{other}");
        }
        // The records keyward writes read back.
        let k: super::KeyRecord = crate::from_json(&full.to_string()).unwrap();
        assert_eq!(crate::from_json::<super::KeyRecord>(&serde_json::to_string(&k).unwrap()).unwrap(), k);
    }
}
