//! Admin API input: bodies parsed and validated into commands for the Org
//! Durable Object. Pure; every refusal is a `422 VALIDATION_FAILED` whose
//! message starts with the offending field (`body` for the document itself).
//!
//! Bodies are limited to [`MAX_BODY_BYTES`] by the shell before parsing, and
//! `serde_json` refuses nesting deeper than 128, so a JSON bomb costs at most
//! one bounded parse.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::cors::OriginPattern;
use crate::credits::{CreditSpec, Interval, Refill, MAX_CREDITS};
use crate::error::ApiError;
use crate::ids;
use crate::policy::Policy;
use crate::ratelimit::{RateLimit, MAX_LIMITS};
use crate::records::{Consistency, KeyRecord};
use crate::scope::Scope;
use crate::token::KeyKind;

/// Largest admin request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest key or org name, in characters (`seeds/001_*`).
pub const MAX_NAME_CHARS: usize = 100;
/// Most scopes on one key.
pub const MAX_SCOPES: usize = 32;

/// `PUT /admin/orgs/{org_id}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgInput {
    /// Display name.
    pub name: String,
    /// Whether a BAA is active.
    pub baa_active: bool,
}

/// `PUT /admin/orgs/{org_id}/users/{user_id}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInput {
    /// A role of the policy.
    pub role: String,
    /// Disable (or re-enable) the user; `None` keeps the current value
    /// (`false` for a new user).
    pub disabled: Option<bool>,
}

/// `POST /admin/orgs/{org_id}/api_keys`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInput {
    /// Label.
    pub name: String,
    /// Granted scopes, deduplicated, sorted.
    pub scopes: Vec<Scope>,
    /// Secret or widget.
    pub kind: KeyKind,
    /// Expiry (ms), in the future.
    pub expires_at: Option<i64>,
    /// Bound user.
    pub user_id: Option<String>,
    /// Own rate limits (override the policy defaults by name).
    pub rate_limits: Vec<RateLimit>,
    /// Widget keys: allowed browser origins (non-empty for widgets).
    pub allowed_origins: Vec<OriginPattern>,
    /// Widget keys: bound bot / resource id.
    pub resource_id: Option<String>,
    /// Widget keys: own per-visitor limits (empty: the policy's).
    pub visitor_rate_limits: Vec<RateLimit>,
    /// Widget keys: visitors must pass Turnstile first.
    pub turnstile_required: bool,
    /// `strict` or `leased` (default: the deployment's `DEFAULT_CONSISTENCY`).
    pub consistency: Consistency,
    /// Whether `consistency` was given in the body (a minted key without it
    /// takes the stricter of the default and its parent's).
    pub consistency_given: bool,
    /// Secret keys: the client addresses they may be used from (empty: any).
    pub allowed_ips: Vec<crate::cidr::Cidr>,
    /// Metadata for the origin: a JSON object as compact text (≤ 4 KiB).
    pub meta: Option<String>,
    /// A usage-limited key's credits.
    pub credits: Option<CreditSpec>,
}

/// `PATCH /v1/api_keys/{key_id}` (and the admin API's): the fields to
/// change; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPatch {
    /// A new label.
    pub name: Option<String>,
    /// New metadata (`Some(None)`: none).
    pub meta: Option<Option<String>>,
    /// Scopes within the key's current ones.
    pub scopes: Option<Vec<Scope>>,
    /// The key's own limits (empty: the policy's defaults).
    pub rate_limits: Option<Vec<RateLimit>>,
    /// A widget key's per-visitor limits (empty: the policy's).
    pub visitor_rate_limits: Option<Vec<RateLimit>>,
    /// A credit setting (`Some(None)`: unlimited); it sets the count.
    pub credits: Option<Option<CreditSpec>>,
    /// A widget key's origins.
    pub allowed_origins: Option<Vec<OriginPattern>>,
    /// A secret key's addresses (empty: any).
    pub allowed_ips: Option<Vec<crate::cidr::Cidr>>,
}

impl KeyPatch {
    /// The fields it changes (for the audit log).
    pub fn fields(&self) -> Vec<&'static str> {
        let set = [
            ("allowed_ips", self.allowed_ips.is_some()),
            ("allowed_origins", self.allowed_origins.is_some()),
            ("credits", self.credits.is_some()),
            ("meta", self.meta.is_some()),
            ("name", self.name.is_some()),
            ("rate_limits", self.rate_limits.is_some()),
            ("scopes", self.scopes.is_some()),
            ("visitor_rate_limits", self.visitor_rate_limits.is_some()),
        ];
        set.iter().filter(|(_, on)| *on).map(|(f, _)| *f).collect()
    }
}

/// Longest grace of a roll: a week.
pub const MAX_GRACE_SECONDS: i64 = 604_800;

/// Largest `meta` (compact JSON text, bytes).
pub const MAX_META_BYTES: usize = 4096;

/// Most allowed origins on one widget key.
pub const MAX_ORIGINS: usize = 20;

/// A command for the Org Durable Object, the system of record. The worker
/// validates, generates ids and key material, and sends one of these; the
/// object applies it in SQLite, appends to the audit log and writes KV.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrgCommand {
    /// Create or update the org.
    UpsertOrg {
        /// Org id.
        org_id: String,
        /// Display name.
        name: String,
        /// BAA flag.
        baa_active: bool,
    },
    /// Create or update a user.
    UpsertUser {
        /// Org id.
        org_id: String,
        /// User id.
        user_id: String,
        /// Role.
        role: String,
        /// Disabled flag; `None` keeps the current value.
        disabled: Option<bool>,
    },
    /// Store a new key (hash and metadata; never the plaintext).
    CreateKey {
        /// The record to store.
        record: Box<KeyRecord>,
        /// SHA-256 hex of the token.
        hash: String,
        /// The user of the key minting it (control API), whose role and
        /// state the org object checks against its own records.
        creator: Option<String>,
    },
    /// Revoke a key of this org.
    RevokeKey {
        /// Org id.
        org_id: String,
        /// Key id.
        key_id: String,
        /// The calling key, for the control API (`None`: the admin API).
        caller: Option<RevokeCaller>,
        /// Revoked because it leaked: where it was found (audited as
        /// `key.leaked`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        leaked_at_url: Option<String>,
    },
    /// Change a live key ([`parse_patch`]'s body, validated again by the
    /// object); the key's guard learns the new version at once.
    UpdateKey {
        /// Org id.
        org_id: String,
        /// Key id.
        key_id: String,
        /// The request body (JSON text, at most [`MAX_BODY_BYTES`]).
        body: String,
        /// The caller, for the control API (`None`: the admin API).
        caller: Option<RevokeCaller>,
    },
    /// Roll a live key: a new key with its settings and its guard (limits
    /// and credits carry on), the old one ending after `grace_ms`.
    RollKey {
        /// Org id.
        org_id: String,
        /// Key id.
        key_id: String,
        /// How long the old key keeps working (ms, at most a week).
        grace_ms: i64,
        /// The caller, for the control API (`None`: the admin API).
        caller: Option<RevokeCaller>,
    },
    /// Revoke a user's JWT sessions: every token issued until now is
    /// refused on its next request (through the user's sessions guard).
    RevokeSessions {
        /// Org id.
        org_id: String,
        /// User id.
        user_id: String,
        /// The caller, for the control API (`None`: the admin API). Its own
        /// sessions it may always revoke; another user's only if it holds
        /// every scope of that user's role and, when it is bound to a user,
        /// that user's role may manage keys.
        caller: Option<RevokeCaller>,
    },
    /// The org's non-revoked keys, newest first.
    ListKeys {
        /// Org id.
        org_id: String,
        /// Items after this key id.
        cursor: Option<String>,
        /// Page size.
        limit: u32,
    },
    /// The org's audit log, newest first.
    ListAudit {
        /// Org id.
        org_id: String,
        /// Items after this sequence number.
        cursor: Option<String>,
        /// Page size.
        limit: u32,
    },
    /// Usage per key and hour in `[from, to)`.
    Usage {
        /// Org id.
        org_id: String,
        /// Start (ms, inclusive).
        from: i64,
        /// End (ms, exclusive).
        to: i64,
    },
    /// The authorization facts a leased key's guard grants leases on: the
    /// key record, the org and the key's user, from SQLite (strongly
    /// consistent, unlike KV).
    LeaseFacts {
        /// Org id.
        org_id: String,
        /// Key id.
        key_id: String,
    },
    /// Records in the audit log a write the control API refused before it
    /// reached the org's object (a body that does not validate, scopes the
    /// caller may not grant, a malformed key id).
    AuditRefused {
        /// Org id.
        org_id: String,
        /// `key.create_refused` or `key.revoke_refused`.
        action: String,
        /// The target, at most [`MAX_AUDIT_FIELD`] bytes.
        target: String,
        /// The refusal's status, code and message, as a JSON object text.
        detail: String,
    },
    /// A key guard's usage roll-up (counts are added).
    RecordUsage {
        /// Org id.
        org_id: String,
        /// Key id.
        key_id: String,
        /// The guard's roll-up sequence number (a repeat is ignored).
        seq: u64,
        /// Counts per hour start (ms).
        hours: Vec<(i64, crate::guard::UsageCounts)>,
        /// Latest allowed request (ms).
        last_used_at: Option<i64>,
    },
}

impl OrgCommand {
    /// The audit action recorded when this write is refused (`None` for a
    /// read), and its target.
    pub fn refused_action(&self) -> Option<(&'static str, &str)> {
        match self {
            OrgCommand::UpsertOrg { org_id, .. } => Some(("org.update_refused", org_id)),
            OrgCommand::UpsertUser { user_id, .. } => Some(("user.update_refused", user_id)),
            OrgCommand::CreateKey { record, .. } => Some(("key.create_refused", &record.id)),
            OrgCommand::RevokeKey { key_id, .. } => Some(("key.revoke_refused", key_id)),
            OrgCommand::UpdateKey { key_id, .. } => Some(("key.update_refused", key_id)),
            OrgCommand::RollKey { key_id, .. } => Some(("key.roll_refused", key_id)),
            OrgCommand::RevokeSessions { user_id, .. } => Some(("user.sessions_revoke_refused", user_id)),
            _ => None,
        }
    }
}

/// Longest audit target and refusal message stored, in bytes (a refused
/// request's target is the caller's to choose).
pub const MAX_AUDIT_FIELD: usize = 200;

/// The audit entry of a refused write: the target cut to
/// [`MAX_AUDIT_FIELD`], the detail `{"status", "code", "message"}` as
/// JSON text.
pub fn refused_entry(target: &str, error: &ApiError) -> (String, String) {
    use crate::json::{obj, text};
    let detail = obj(&[
        ("code", text(error.code.as_str())),
        ("message", text(&truncate(error.message(), MAX_AUDIT_FIELD))),
        ("status", text(&error.code.status())),
    ]);
    (truncate(target, MAX_AUDIT_FIELD), detail)
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Who asks to revoke through the control API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeCaller {
    /// Its effective scopes.
    pub scopes: Vec<Scope>,
    /// Its user.
    pub user_id: Option<String>,
    /// The calling key (`None`: a JWT session), whose record the org's
    /// object reads for the rules of [`crate::control::check_revoke`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The user's role (a JWT session's limits are its role's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_role: Option<String>,
}

/// The envelope around a command: who asked, when, under which request id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OrgRequest {
    /// The command.
    pub command: OrgCommand,
    /// `admin` or a key id.
    pub actor: String,
    /// Request id (for the audit log and the reply envelope).
    pub request_id: String,
    /// Time of the request (ms).
    pub now_ms: i64,
}

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))] // used by the worker (src/edge)
impl OrgRequest {
    /// Decodes what the derived `Serialize` wrote (one small decoder
    /// instead of serde's visitor per variant, see [`crate::json::Fields`]).
    pub(crate) fn decode(text: &str) -> crate::json::Got<OrgRequest> {
        use crate::json::{bad, Fields};
        let mut f = Fields::of(serde_json::from_str(text).map_err(|_| bad("JSON"))?)?;
        let (name, mut c) = Fields::tagged(f.raw("command"))?;
        let command = match name.as_str() {
            "upsert_org" => {
                OrgCommand::UpsertOrg { org_id: c.s("org_id")?, name: c.s("name")?, baa_active: c.b("baa_active")? }
            }
            "upsert_user" => OrgCommand::UpsertUser {
                org_id: c.s("org_id")?,
                user_id: c.s("user_id")?,
                role: c.s("role")?,
                disabled: c.get("disabled")?,
            },
            "create_key" => {
                OrgCommand::CreateKey { record: c.get("record")?, hash: c.s("hash")?, creator: c.os("creator")? }
            }
            "revoke_key" => OrgCommand::RevokeKey {
                org_id: c.s("org_id")?,
                key_id: c.s("key_id")?,
                caller: c.get("caller")?,
                leaked_at_url: c.os("leaked_at_url")?,
            },
            "update_key" => OrgCommand::UpdateKey {
                org_id: c.s("org_id")?,
                key_id: c.s("key_id")?,
                body: c.s("body")?,
                caller: c.get("caller")?,
            },
            "roll_key" => OrgCommand::RollKey {
                org_id: c.s("org_id")?,
                key_id: c.s("key_id")?,
                grace_ms: c.i("grace_ms")?,
                caller: c.get("caller")?,
            },
            "revoke_sessions" => OrgCommand::RevokeSessions {
                org_id: c.s("org_id")?,
                user_id: c.s("user_id")?,
                caller: c.get("caller")?,
            },
            "list_keys" => {
                OrgCommand::ListKeys { org_id: c.s("org_id")?, cursor: c.os("cursor")?, limit: c.u32("limit")? }
            }
            "list_audit" => {
                OrgCommand::ListAudit { org_id: c.s("org_id")?, cursor: c.os("cursor")?, limit: c.u32("limit")? }
            }
            "usage" => OrgCommand::Usage { org_id: c.s("org_id")?, from: c.i("from")?, to: c.i("to")? },
            "lease_facts" => OrgCommand::LeaseFacts { org_id: c.s("org_id")?, key_id: c.s("key_id")? },
            "audit_refused" => OrgCommand::AuditRefused {
                org_id: c.s("org_id")?,
                action: c.s("action")?,
                target: c.s("target")?,
                detail: c.s("detail")?,
            },
            "record_usage" => OrgCommand::RecordUsage {
                org_id: c.s("org_id")?,
                key_id: c.s("key_id")?,
                seq: c.u("seq")?,
                hours: c.get("hours")?,
                last_used_at: c.oi("last_used_at")?,
            },
            _ => return Err(bad("unknown command")),
        };
        Ok(OrgRequest { command, actor: f.s("actor")?, request_id: f.s("request_id")?, now_ms: f.i("now_ms")? })
    }
}

fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| ApiError::validation("body", "must be UTF-8 encoded JSON"))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::validation("body", "must be a JSON object")),
        Err(e) if e.is_eof() && text.trim().is_empty() => Err(ApiError::validation("body", "is required")),
        Err(_) => Err(ApiError::validation("body", "is not valid JSON")),
    }
}

fn only_fields(m: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    match m.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => {
            let shown: String = k.chars().take(40).collect();
            Err(ApiError::validation(&shown, "unknown field"))
        }
        None => Ok(()),
    }
}

fn name_field(m: &Map<String, Value>) -> Result<String, ApiError> {
    match m.get("name") {
        None | Some(Value::Null) => Err(ApiError::validation("name", "is required")),
        Some(Value::String(s)) => {
            let t = s.trim();
            if t.is_empty() {
                Err(ApiError::validation("name", "must not be empty"))
            } else if t.chars().count() > MAX_NAME_CHARS {
                Err(ApiError::validation("name", "must be at most 100 characters"))
            } else if t.chars().any(|c| c.is_control() || is_invisible(c)) {
                Err(ApiError::validation("name", "must not contain control, bidi or invisible characters"))
            } else {
                Ok(t.to_owned())
            }
        }
        Some(_) => Err(ApiError::validation("name", "must be a string")),
    }
}

/// Bidi controls and zero-width characters, which can make a name in a list
/// or the audit log display as something else.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

fn bool_field(m: &Map<String, Value>, field: &str, default: Option<bool>) -> Result<bool, ApiError> {
    match (m.get(field), default) {
        (Some(Value::Bool(b)), _) => Ok(*b),
        (None, Some(d)) => Ok(d),
        (None | Some(Value::Null), None) => Err(ApiError::validation(field, "is required")),
        _ => Err(ApiError::validation(field, "must be true or false")),
    }
}

/// Validates `PUT /admin/orgs/{org_id}`.
pub fn parse_org(body: &[u8]) -> Result<OrgInput, ApiError> {
    let m = object(body)?;
    only_fields(&m, &["name", "baa_active"])?;
    Ok(OrgInput { name: name_field(&m)?, baa_active: bool_field(&m, "baa_active", None)? })
}

/// Validates `PUT /admin/orgs/{org_id}/users/{user_id}`.
pub fn parse_user(body: &[u8], policy: &Policy) -> Result<UserInput, ApiError> {
    let m = object(body)?;
    only_fields(&m, &["role", "disabled"])?;
    let role = match m.get("role") {
        None | Some(Value::Null) => return Err(ApiError::validation("role", "is required")),
        Some(Value::String(r)) if policy.role(r).is_some() => r.clone(),
        Some(Value::String(_)) => {
            let names: Vec<&str> = policy.role_names().collect();
            return Err(ApiError::validation("role", &format!("must be one of: {}", names.join(", "))));
        }
        Some(_) => return Err(ApiError::validation("role", "must be a string")),
    };
    let disabled = match m.get("disabled") {
        None | Some(Value::Null) => None,
        Some(_) => Some(bool_field(&m, "disabled", None)?),
    };
    Ok(UserInput { role, disabled })
}

/// Validates `POST /admin/orgs/{org_id}/api_keys` (and the control API's
/// mint); `consistency` defaults to `default_consistency`.
pub fn parse_key(
    body: &[u8],
    policy: &Policy,
    now_ms: i64,
    default_consistency: Consistency,
) -> Result<KeyInput, ApiError> {
    let m = object(body)?;
    only_fields(
        &m,
        &[
            "name",
            "scopes",
            "kind",
            "expires_at",
            "user_id",
            "rate_limits",
            "allowed_origins",
            "resource_id",
            "visitor_rate_limits",
            "turnstile_required",
            "consistency",
            "allowed_ips",
            "meta",
            "credits",
        ],
    )?;
    let name = name_field(&m)?;
    let scopes = parse_scopes(&m, policy)?;
    let kind = parse_kind(&m)?;
    parse_rest(&m, policy, now_ms, default_consistency, name, scopes, kind)
}

fn parse_scopes(m: &Map<String, Value>, policy: &Policy) -> Result<Vec<Scope>, ApiError> {
    Ok(match m.get("scopes") {
        None | Some(Value::Null) => return Err(ApiError::validation("scopes", "is required")),
        Some(Value::Array(a)) if a.is_empty() => return Err(ApiError::validation("scopes", "must not be empty")),
        Some(Value::Array(a)) if a.len() > MAX_SCOPES => {
            return Err(ApiError::validation("scopes", "must hold at most 32 scopes"))
        }
        Some(Value::Array(a)) => {
            let mut out = Vec::with_capacity(a.len());
            for v in a {
                let Value::String(s) = v else {
                    return Err(ApiError::validation("scopes", "must be an array of strings"));
                };
                match Scope::parse(s) {
                    Some(sc) if policy.is_grantable(&sc) => out.push(sc),
                    _ => {
                        let shown: String = s.chars().take(64).collect();
                        return Err(ApiError::validation(
                            "scopes",
                            &format!("unknown scope {shown:?}; valid scopes: {}", policy.scopes().join(", ")),
                        ));
                    }
                }
            }
            crate::sort_small(&mut out);
            out.dedup();
            out
        }
        Some(_) => return Err(ApiError::validation("scopes", "must be an array of strings")),
    })
}

/// The fields `PATCH` may change.
const PATCH_FIELDS: &[&str] =
    &["name", "meta", "scopes", "rate_limits", "visitor_rate_limits", "credits", "allowed_origins", "allowed_ips"];

/// Validates a key update's body: each field as at creation, `null`
/// clearing the optional ones; at least one field.
pub fn parse_patch(body: &[u8], policy: &Policy, now_ms: i64) -> Result<KeyPatch, ApiError> {
    let m = object(body)?;
    only_fields(&m, PATCH_FIELDS)?;
    if m.is_empty() {
        return Err(ApiError::validation("body", &format!("must change at least one of: {}", PATCH_FIELDS.join(", "))));
    }
    let has = |f: &str| m.contains_key(f);
    Ok(KeyPatch {
        name: has("name").then(|| name_field(&m)).transpose()?,
        meta: has("meta").then(|| parse_meta(m.get("meta"))).transpose()?,
        scopes: has("scopes").then(|| parse_scopes(&m, policy)).transpose()?,
        rate_limits: has("rate_limits").then(|| parse_rate_limits(m.get("rate_limits"))).transpose()?,
        visitor_rate_limits: has("visitor_rate_limits")
            .then(|| parse_limits_field("visitor_rate_limits", m.get("visitor_rate_limits")))
            .transpose()?,
        credits: match m.get("credits") {
            None => None,
            // A stale request could not tell "removed" from "never set":
            // the count would come back. Top it up instead.
            Some(Value::Null) => {
                return Err(ApiError::validation(
                    "credits",
                    "cannot be removed from a usage-limited key (set remaining instead, or mint a key without credits)",
                ))
            }
            v => Some(parse_credits(v, now_ms)?),
        },
        allowed_origins: has("allowed_origins").then(|| parse_origins(m.get("allowed_origins"))).transpose()?,
        allowed_ips: has("allowed_ips").then(|| parse_ips(m.get("allowed_ips"))).transpose()?,
    })
}

/// The key after `patch`, version bumped: scopes only narrow, each field
/// only where the key's kind has it, a widget's visitors held below its own
/// limits. (Whether the caller may make the result is the control API's
/// rule, [`crate::control::check_update`].)
pub fn apply_patch(key: &KeyRecord, patch: &KeyPatch, policy: &Policy) -> Result<KeyRecord, ApiError> {
    let mut k = key.clone();
    let widget = k.kind == KeyKind::Widget;
    if let Some(name) = &patch.name {
        k.name.clone_from(name);
    }
    if let Some(meta) = &patch.meta {
        k.meta.clone_from(meta);
    }
    if let Some(scopes) = &patch.scopes {
        if !scopes.iter().all(|s| s.within(&key.scopes)) {
            return Err(ApiError::validation(
                "scopes",
                "may only narrow the key's scopes (a key with more scopes is a new key: mint one)",
            ));
        }
        k.scopes.clone_from(scopes);
    }
    if let Some(l) = &patch.rate_limits {
        k.rate_limits.clone_from(l);
    }
    match (&patch.visitor_rate_limits, &patch.allowed_origins, &patch.allowed_ips) {
        (Some(_), _, _) if !widget => {
            return Err(ApiError::validation("visitor_rate_limits", "is only for widget keys"))
        }
        (_, Some(_), _) if !widget => return Err(ApiError::validation("allowed_origins", "is only for widget keys")),
        (_, _, Some(ips)) if widget && !ips.is_empty() => {
            return Err(ApiError::validation("allowed_ips", "is only for secret keys"))
        }
        _ => {}
    }
    if let Some(l) = &patch.visitor_rate_limits {
        k.visitor_rate_limits.clone_from(l);
    }
    if let Some(o) = &patch.allowed_origins {
        k.allowed_origins.clone_from(o);
    }
    if let Some(ips) = &patch.allowed_ips {
        k.allowed_ips.clone_from(ips);
    }
    if let Some(c) = &patch.credits {
        k.credits = *c;
    }
    if widget && (patch.rate_limits.is_some() || patch.visitor_rate_limits.is_some()) {
        check_widget_limits(policy, &k.rate_limits, &k.visitor_rate_limits)?;
    }
    k.version += 1;
    Ok(k)
}

/// `credits`: `{"remaining": 0..2^40, "refill"?: {"amount": 1..2^40,
/// "interval": "hourly"|"daily"|"monthly"}}`, stamped with `now_ms` (the
/// count starts from it); `null`: unlimited.
pub fn parse_credits(v: Option<&Value>, now_ms: i64) -> Result<Option<CreditSpec>, ApiError> {
    let count = |o: &Map<String, Value>, field: &str, name: &str, min: u64| match o.get(field).and_then(Value::as_u64) {
        Some(n) if (min..=MAX_CREDITS).contains(&n) => Ok(n),
        _ => Err(ApiError::validation(name, &format!("must be an integer from {min} to {MAX_CREDITS}"))),
    };
    let o = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(ApiError::validation("credits", "must be an object {remaining, refill?}")),
    };
    only_fields(o, &["remaining", "refill"])?;
    let remaining = count(o, "remaining", "credits.remaining", 0)?;
    let refill = match o.get("refill") {
        None | Some(Value::Null) => None,
        Some(Value::Object(r)) => {
            only_fields(r, &["amount", "interval"])?;
            let amount = count(r, "amount", "credits.refill.amount", 1)?;
            let interval = r.get("interval").and_then(Value::as_str).and_then(Interval::parse).ok_or_else(|| {
                ApiError::validation("credits.refill.interval", "must be \"hourly\", \"daily\" or \"monthly\"")
            })?;
            Some(Refill { amount, interval })
        }
        Some(_) => return Err(ApiError::validation("credits.refill", "must be an object {amount, interval}")),
    };
    Ok(Some(CreditSpec { remaining, refill, set_at: now_ms }))
}

/// The `set_at` of a credit setting the org's object applies at `now` to a
/// roll family whose latest setting was stamped `latest`: later than every
/// earlier one, so the guard (which keeps the newest) ends on the setting
/// the system of record applied last, whatever the edge clocks said.
pub fn credits_stamp(now: i64, latest: Option<i64>) -> i64 {
    latest.map_or(now, |l| now.max(l.saturating_add(1)))
}

/// A roll's body: `{"grace_seconds": 0..604800}` (default 0), in ms.
pub fn parse_roll(body: &[u8]) -> Result<i64, ApiError> {
    let m = if body.iter().all(u8::is_ascii_whitespace) { Map::new() } else { object(body)? };
    only_fields(&m, &["grace_seconds"])?;
    match m.get("grace_seconds") {
        None | Some(Value::Null) => Ok(0),
        Some(v) => match v.as_i64() {
            Some(s) if (0..=MAX_GRACE_SECONDS).contains(&s) => Ok(s * 1000),
            _ => Err(ApiError::validation("grace_seconds", "must be an integer from 0 to 604800 (a week)")),
        },
    }
}

fn parse_kind(m: &Map<String, Value>) -> Result<KeyKind, ApiError> {
    Ok(match m.get("kind") {
        None | Some(Value::Null) => KeyKind::Secret,
        Some(Value::String(k)) if k == "secret" => KeyKind::Secret,
        Some(Value::String(k)) if k == "widget" => KeyKind::Widget,
        Some(_) => return Err(ApiError::validation("kind", "must be \"secret\" or \"widget\"")),
    })
}

fn parse_rest(
    m: &Map<String, Value>,
    policy: &Policy,
    now_ms: i64,
    default_consistency: Consistency,
    name: String,
    scopes: Vec<Scope>,
    kind: KeyKind,
) -> Result<KeyInput, ApiError> {
    let (allowed_origins, resource_id) = match kind {
        KeyKind::Secret => {
            for f in ["allowed_origins", "resource_id", "visitor_rate_limits", "turnstile_required"] {
                if m.get(f).is_some_and(|v| !v.is_null()) {
                    return Err(ApiError::validation(f, "is only for widget keys (kind \"widget\")"));
                }
            }
            (Vec::new(), None)
        }
        KeyKind::Widget => {
            // Widget keys are public: only the policy's widget scopes, no wildcards.
            if let Some(bad) = scopes.iter().find(|s| !policy.widget_scopes().contains(s)) {
                let allowed: Vec<&str> = policy.widget_scopes().iter().map(Scope::as_str).collect();
                return Err(ApiError::validation(
                    "scopes",
                    &format!(
                        "{:?} is not allowed on a widget key; widget keys may hold: {}",
                        bad.as_str(),
                        allowed.join(", ")
                    ),
                ));
            }
            (parse_origins(m.get("allowed_origins"))?, parse_resource(m.get("resource_id"))?)
        }
    };
    let expires_at = match m.get("expires_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match ids::parse_rfc3339(s) {
            Some(t) if t > now_ms => Some(t),
            Some(_) => return Err(ApiError::validation("expires_at", "must be in the future")),
            None => return Err(ApiError::validation("expires_at", "must be an RFC 3339 timestamp")),
        },
        Some(_) => return Err(ApiError::validation("expires_at", "must be an RFC 3339 timestamp string")),
    };
    let user_id = match m.get("user_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(u)) if ids::is_valid_id(u) => Some(u.clone()),
        Some(_) => return Err(ApiError::validation("user_id", "must be 1-64 characters of A-Z, a-z, 0-9, _ and -")),
    };
    let rate_limits = parse_rate_limits(m.get("rate_limits"))?;
    let visitor_rate_limits = parse_limits_field("visitor_rate_limits", m.get("visitor_rate_limits"))?;
    let turnstile_required = match m.get("turnstile_required") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::validation("turnstile_required", "must be true or false")),
    };
    if kind == KeyKind::Widget {
        check_widget_limits(policy, &rate_limits, &visitor_rate_limits)?;
    }
    let (consistency, consistency_given) = match m.get("consistency") {
        None | Some(Value::Null) => (default_consistency, false),
        Some(Value::String(c)) => match Consistency::parse(c) {
            Some(c) => (c, true),
            None => return Err(ApiError::validation("consistency", "must be \"strict\" or \"leased\"")),
        },
        Some(_) => return Err(ApiError::validation("consistency", "must be \"strict\" or \"leased\"")),
    };
    let allowed_ips = parse_ips(m.get("allowed_ips"))?;
    if kind == KeyKind::Widget && !allowed_ips.is_empty() {
        // A widget key's callers are its visitors' browsers: any address.
        return Err(ApiError::validation("allowed_ips", "is only for secret keys"));
    }
    let meta = parse_meta(m.get("meta"))?;
    let credits = parse_credits(m.get("credits"), now_ms)?;
    Ok(KeyInput {
        name,
        scopes,
        kind,
        expires_at,
        user_id,
        rate_limits,
        allowed_origins,
        resource_id,
        visitor_rate_limits,
        turnstile_required,
        consistency,
        consistency_given,
        allowed_ips,
        meta,
        credits,
    })
}

/// `allowed_ips`: 1–100 addresses or CIDR blocks ([`crate::cidr`]),
/// deduplicated; absent or `null`: any address.
pub fn parse_ips(v: Option<&Value>) -> Result<Vec<crate::cidr::Cidr>, ApiError> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::validation("allowed_ips", "must not be empty (omit it to allow any address)"))
        }
        Some(Value::Array(a)) if a.len() > crate::cidr::MAX_ENTRIES => {
            return Err(ApiError::validation("allowed_ips", "must hold at most 100 entries"))
        }
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::validation("allowed_ips", "must be an array of addresses or CIDR blocks")),
    };
    let mut out: Vec<crate::cidr::Cidr> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::String(s) = item else {
            return Err(ApiError::validation(&format!("allowed_ips[{i}]"), "must be a string"));
        };
        let c = crate::cidr::Cidr::parse(s).map_err(|e| ApiError::validation(&format!("allowed_ips[{i}]"), e))?;
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

/// `meta`: a JSON object of at most [`MAX_META_BYTES`] as compact text;
/// absent or `null`: none.
pub fn parse_meta(v: Option<&Value>) -> Result<Option<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(o @ Value::Object(_)) => {
            let text = o.to_string();
            if text.len() > MAX_META_BYTES {
                return Err(ApiError::validation("meta", "must be at most 4096 bytes as compact JSON"));
            }
            Ok(Some(text))
        }
        Some(_) => Err(ApiError::validation("meta", "must be a JSON object")),
    }
}

fn parse_origins(v: Option<&Value>) -> Result<Vec<OriginPattern>, ApiError> {
    let items = match v {
        None | Some(Value::Null) => return Err(ApiError::validation("allowed_origins", "is required for widget keys")),
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::validation("allowed_origins", "must not be empty"))
        }
        Some(Value::Array(a)) if a.len() > MAX_ORIGINS => {
            return Err(ApiError::validation("allowed_origins", "must hold at most 20 origins"))
        }
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::validation("allowed_origins", "must be an array of origins")),
    };
    let mut out: Vec<OriginPattern> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::String(s) = item else {
            return Err(ApiError::validation(&format!("allowed_origins[{i}]"), "must be a string"));
        };
        let p = OriginPattern::parse(s)
            .and_then(|p| p.check_new().map(|()| p))
            .map_err(|e| ApiError::validation(&format!("allowed_origins[{i}]"), e))?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// A widget key's per-visitor limits (its own, or else the policy's) stay
/// well below its limits (`rate_limits` over the policy's defaults):
/// checked when the body is read, and again by the control API once the
/// caller's limits are merged in ([`crate::control::check_create`]).
pub fn check_widget_limits(policy: &Policy, rate_limits: &[RateLimit], visitor: &[RateLimit]) -> Result<(), ApiError> {
    let key_limits = crate::ratelimit::merge_limits(policy.default_rate_limits(), rate_limits);
    let own = !visitor.is_empty();
    let visitor = if own { visitor } else { policy.widget_ip_rate_limits() };
    crate::ratelimit::check_visitor_limits(&key_limits, visitor)
        .map_err(|problem| ApiError::validation(if own { "visitor_rate_limits" } else { "rate_limits" }, &problem))
}

/// Whether creating this key needs the public suffix list (it has a
/// wildcard origin).
pub fn needs_suffix_list(origins: &[OriginPattern]) -> bool {
    origins.iter().any(|o| o.wildcard_domain().is_some())
}

/// Refuses a wildcard origin that reaches a public suffix, its domain's or
/// one below it (`https://*.github.io` would admit every GitHub Pages site,
/// `https://*.amazonaws.com` every S3 bucket's site).
pub fn check_public_suffixes(origins: &[OriginPattern], list: &crate::psl::SuffixList) -> Result<(), ApiError> {
    for o in origins {
        if let Some(suffix) = o.wildcard_domain().and_then(|d| list.suffix_under(d)) {
            return Err(ApiError::validation(
                "allowed_origins",
                &format!("{o} reaches the public suffix {suffix}, so it would admit sites others register there; list your own domain"),
            ));
        }
    }
    Ok(())
}

fn parse_resource(v: Option<&Value>) -> Result<Option<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(r)) if ids::is_valid_id(r) => Ok(Some(r.clone())),
        Some(_) => Err(ApiError::validation("resource_id", "must be 1-64 characters of A-Z, a-z, 0-9, _ and -")),
    }
}

/// `rate_limits`: up to 4 of `{"name", "limit", "window_seconds"}`, names unique.
fn parse_rate_limits(v: Option<&Value>) -> Result<Vec<RateLimit>, ApiError> {
    parse_limits_field("rate_limits", v)
}

fn parse_limits_field(name: &str, v: Option<&Value>) -> Result<Vec<RateLimit>, ApiError> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) if a.len() > MAX_LIMITS => {
            return Err(ApiError::validation(name, "must hold at most 4 limits"))
        }
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::validation(name, "must be an array")),
    };
    let mut out: Vec<RateLimit> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = format!("{name}[{i}]");
        let Value::Object(o) = item else {
            return Err(ApiError::validation(&field, "must be an object {name, limit, window_seconds}"));
        };
        only_fields(o, &["name", "limit", "window_seconds"])?;
        let l = <RateLimit as serde::Deserialize>::deserialize(crate::json::De(item.clone())).map_err(|_| {
            ApiError::validation(&field, "must have a string name and integer limit and window_seconds")
        })?;
        l.validate().map_err(|e| ApiError::validation(&field, e))?;
        if out.iter().any(|o| o.name == l.name) {
            return Err(ApiError::validation(&field, "duplicate name"));
        }
        out.push(l);
    }
    Ok(out)
}

/// The operators allowed to call the admin API: a name (recorded in the
/// audit log as `admin:<name>`) and a token each.
#[derive(Clone, Default)]
pub struct AdminTokens(Vec<(String, String)>);

impl std::fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(name, _)| name)).finish()
    }
}

/// Most named admin tokens.
pub const MAX_ADMIN_TOKENS: usize = 32;

impl AdminTokens {
    /// From `ADMIN_TOKEN` (named `default`) and `ADMIN_TOKENS`
    /// (`name=token,name=token`; names of 1–32 `[a-z0-9_-]`, unique; every
    /// token at least `min_len` bytes, distinct). Surrounding whitespace is
    /// not part of a name or token. Any malformed entry refuses the whole
    /// configuration: a typo must not silently lock an operator out, or
    /// leave a short token accepted.
    pub fn parse(single: Option<&str>, list: Option<&str>, min_len: usize) -> Result<Self, String> {
        let mut out: Vec<(String, String)> = Vec::new();
        if let Some(t) = single.map(str::trim).filter(|t| !t.is_empty()) {
            out.push(("default".to_owned(), t.to_owned()));
        }
        for entry in list.unwrap_or("").split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, token) = entry.split_once('=').ok_or("ADMIN_TOKENS entries must be name=token")?;
            let (name, token) = (name.trim(), token.trim());
            let name_ok = (1..=32).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
            if !name_ok {
                return Err(format!("ADMIN_TOKENS: the name {name:?} must be 1 to 32 of a-z, 0-9, - and _"));
            }
            if out.iter().any(|(n, _)| n == name) {
                return Err(format!("ADMIN_TOKENS: the name {name:?} is used twice (ADMIN_TOKEN is named default)"));
            }
            out.push((name.to_owned(), token.to_owned()));
        }
        if let Some((name, _)) = out.iter().find(|(_, t)| t.len() < min_len) {
            return Err(format!("the admin token of {name:?} is shorter than {min_len} bytes"));
        }
        if out.iter().enumerate().any(|(i, (_, t))| out[..i].iter().any(|(_, u)| u == t)) {
            return Err("two admin tokens are equal: each operator needs their own".into());
        }
        if out.len() > MAX_ADMIN_TOKENS {
            return Err(format!("at most {MAX_ADMIN_TOKENS} admin tokens"));
        }
        Ok(Self(out))
    }

    /// Whether no token is configured (the admin API then answers 503).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name of the operator whose token `presented` is. Every token is
    /// compared, in constant time, whatever matched before: the time taken
    /// says nothing about which token, or how much of one, matched.
    pub fn operator(&self, presented: &str) -> Option<&str> {
        let mut found = None;
        for (name, token) in &self.0 {
            if crate::secrets_equal(presented.as_bytes(), token.as_bytes()) && found.is_none() {
                found = Some(name.as_str());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn pol() -> Policy {
        Policy::default_policy().unwrap()
    }

    fn key_err(body: &str) -> String {
        let e = parse_key(body.as_bytes(), &pol(), 0, Consistency::Strict).expect_err(body);
        assert_eq!(e.code, ErrorCode::ValidationFailed);
        e.message().to_owned()
    }

    #[test]
    fn wildcards_over_public_suffixes_are_refused() {
        let list =
            "// ===BEGIN ICANN DOMAINS===\ncom\nuk\nco.uk\njp\n*.kawasaki.jp\n// ===BEGIN PRIVATE DOMAINS===\ngithub.io\n";
        let (list, _) = crate::psl::SuffixList::parse(list).unwrap();
        let key = |origins: &str| {
            let body = format!(r#"{{"name":"w","scopes":["ai:chat"],"kind":"widget","allowed_origins":{origins}}}"#);
            parse_key(body.as_bytes(), &pol(), 0, Consistency::Strict).unwrap()
        };
        let ok = key(r#"["https://shop.example.com","https://*.example.co.uk","https://*.me.github.io"]"#);
        assert!(needs_suffix_list(&ok.allowed_origins));
        assert!(check_public_suffixes(&ok.allowed_origins, &list).is_ok());
        assert!(!needs_suffix_list(&key(r#"["https://github.io","https://shop.example.com"]"#).allowed_origins));
        for (origins, shown) in [
            (
                r#"["https://shop.example.com","https://*.github.io"]"#,
                "https://*.github.io reaches the public suffix github.io",
            ),
            (r#"["https://*.co.uk"]"#, "https://*.co.uk reaches the public suffix co.uk"),
            (r#"["https://*.GitHub.io:8443"]"#, "https://*.github.io:8443 reaches the public suffix github.io"),
            (r#"["https://*.kawasaki.jp"]"#, "https://*.kawasaki.jp reaches the public suffix *.kawasaki.jp"),
        ] {
            let e = check_public_suffixes(&key(origins).allowed_origins, &list).unwrap_err();
            assert_eq!(e.code, ErrorCode::ValidationFailed);
            assert!(e.message().starts_with("allowed_origins: "), "{}", e.message());
            assert!(e.message().contains(shown), "{}", e.message());
        }
    }

    #[test]
    fn allowed_ips_and_meta() {
        let k = parse_key(
            br#"{"name":"k","scopes":["ai:chat"],"allowed_ips":["203.0.113.0/24","2001:db8::/48","203.0.113.0/24"],"meta":{"plan":"pro","n":1}}"#,
            &pol(),
            0,
            Consistency::Strict,
        )
        .unwrap();
        let ips: Vec<String> = k.allowed_ips.iter().map(ToString::to_string).collect();
        assert_eq!(ips, ["203.0.113.0/24", "2001:db8::/48"], "deduplicated");
        assert_eq!(k.meta.as_deref(), Some(r#"{"n":1,"plan":"pro"}"#));
        for (body, starts) in [
            (r#"{"name":"k","scopes":["ai:chat"],"allowed_ips":[]}"#, "allowed_ips: must not be empty"),
            (r#"{"name":"k","scopes":["ai:chat"],"allowed_ips":"203.0.113.0/24"}"#, "allowed_ips: must be an array"),
            (r#"{"name":"k","scopes":["ai:chat"],"allowed_ips":["203.0.113.7/24"]}"#, "allowed_ips[0]: has bits set"),
            (r#"{"name":"k","scopes":["ai:chat"],"allowed_ips":[7]}"#, "allowed_ips[0]: must be a string"),
            (
                r#"{"name":"w","scopes":["ai:chat"],"kind":"widget","allowed_origins":["https://a.example.com"],"allowed_ips":["203.0.113.0/24"]}"#,
                "allowed_ips: is only for secret keys",
            ),
            (r#"{"name":"k","scopes":["ai:chat"],"meta":[1]}"#, "meta: must be a JSON object"),
            (r#"{"name":"k","scopes":["ai:chat"],"meta":"x"}"#, "meta: must be a JSON object"),
        ] {
            let m = key_err(body);
            assert!(m.starts_with(starts), "{body}: {m}");
        }
        let many: Vec<String> = (0..101).map(|i| format!("\"10.0.{i}.0/24\"")).collect();
        let m = key_err(&format!(r#"{{"name":"k","scopes":["ai:chat"],"allowed_ips":[{}]}}"#, many.join(",")));
        assert!(m.contains("at most 100"), "{m}");
        let big = format!(r#"{{"name":"k","scopes":["ai:chat"],"meta":{{"x":"{}"}}}}"#, "y".repeat(4090));
        assert!(key_err(&big).starts_with("meta: must be at most 4096 bytes"));
    }

    #[test]
    fn key_bodies() {
        let k =
            parse_key(br#"{"name":" chat ","scopes":["ai:chat","ai:chat","ai:*"]}"#, &pol(), 0, Consistency::Strict)
                .unwrap();
        assert_eq!(k.name, "chat");
        assert_eq!(k.scopes.iter().map(Scope::as_str).collect::<Vec<_>>(), ["ai:*", "ai:chat"]);
        assert_eq!(k.kind, KeyKind::Secret);
        let k = parse_key(
            br#"{"name":"x","scopes":["*"],"expires_at":"2030-01-01T00:00:00Z","user_id":"u_1"}"#,
            &pol(),
            0,
            Consistency::Strict,
        )
        .unwrap();
        assert_eq!(k.expires_at, Some(1_893_456_000_000));
        let w = parse_key(
            br#"{"name":"w","scopes":["ai:chat"],"kind":"widget","allowed_origins":["HTTPS://Shop.example.com","https://*.example.com","https://shop.example.com/"],"resource_id":"bot_1"}"#,
            &pol(),
            0,
            Consistency::Strict,
        )
        .unwrap();
        assert_eq!(w.kind, KeyKind::Widget);
        let origins: Vec<String> = w.allowed_origins.iter().map(ToString::to_string).collect();
        assert_eq!(origins, ["https://shop.example.com", "https://*.example.com"]);
        assert_eq!(w.resource_id.as_deref(), Some("bot_1"));
        assert_eq!(k.user_id.as_deref(), Some("u_1"));

        let cases = [
            ("", "body: is required"),
            ("{", "body: is not valid JSON"),
            ("[]", "body: must be a JSON object"),
            (r#"{"scopes":["ai:chat"]}"#, "name: is required"),
            (r#"{"name":"","scopes":["ai:chat"]}"#, "name: must not be empty"),
            (r#"{"name":5,"scopes":["ai:chat"]}"#, "name: must be a string"),
            (r#"{"name":"a\u0000b","scopes":["ai:chat"]}"#, "name: must not contain control"),
            (r#"{"name":"evil\u202Etxt.exe","scopes":["ai:chat"]}"#, "name: must not contain control, bidi"),
            (r#"{"name":"a\u200Bb","scopes":["ai:chat"]}"#, "name: must not contain control, bidi"),
            (r#"{"name":"x"}"#, "scopes: is required"),
            (r#"{"name":"x","scopes":[]}"#, "scopes: must not be empty"),
            (r#"{"name":"x","scopes":"ai:chat"}"#, "scopes: must be an array of strings"),
            (r#"{"name":"x","scopes":[1]}"#, "scopes: must be an array of strings"),
            (r#"{"name":"x","scopes":["ai:chatter"]}"#, "scopes: unknown scope \"ai:chatter\""),
            (r#"{"name":"x","scopes":["billing:*"]}"#, "scopes: unknown scope"),
            (r#"{"name":"x","scopes":["ai:chat"],"kind":"root"}"#, "kind: must be"),
            (
                r#"{"name":"x","scopes":["ai:chat"],"allowed_origins":["https://a.com"]}"#,
                "allowed_origins: is only for widget",
            ),
            (r#"{"name":"x","scopes":["ai:chat"],"kind":"widget"}"#, "allowed_origins: is required"),
            (
                r#"{"name":"x","scopes":["ai:chat"],"kind":"widget","allowed_origins":[]}"#,
                "allowed_origins: must not be empty",
            ),
            (
                r#"{"name":"x","scopes":["ai:chat"],"kind":"widget","allowed_origins":["*"]}"#,
                "allowed_origins[0]: \"*\" is not allowed",
            ),
            (
                r#"{"name":"x","scopes":["ai:chat"],"kind":"widget","allowed_origins":["https://a.com/x"]}"#,
                "allowed_origins[0]: must be",
            ),
            (
                r#"{"name":"x","scopes":["*"],"kind":"widget","allowed_origins":["https://a.com"]}"#,
                "scopes: \"*\" is not allowed on a widget key",
            ),
            (
                r#"{"name":"x","scopes":["control:*"],"kind":"widget","allowed_origins":["https://a.com"]}"#,
                "scopes: \"control:*\" is not allowed",
            ),
            (
                r#"{"name":"x","scopes":["ai:*"],"kind":"widget","allowed_origins":["https://a.com"]}"#,
                "scopes: \"ai:*\" is not allowed",
            ),
            (
                r#"{"name":"x","scopes":["ai:chat"],"kind":"widget","allowed_origins":["https://a.com"],"resource_id":"a/b"}"#,
                "resource_id: must be",
            ),
            (r#"{"name":"x","scopes":["ai:chat"],"expires_at":"tomorrow"}"#, "expires_at: must be an RFC 3339"),
            (r#"{"name":"x","scopes":["ai:chat"],"expires_at":1}"#, "expires_at: must be an RFC 3339"),
            (r#"{"name":"x","scopes":["ai:chat"],"user_id":"a b"}"#, "user_id: must be"),
            (r#"{"name":"x","scopes":["ai:chat"],"scope":"x"}"#, "scope: unknown field"),
        ];
        for (body, want) in cases {
            let got = key_err(body);
            assert!(got.starts_with(want), "{body}: {got}");
        }
        assert!(key_err(&format!(r#"{{"name":"{}","scopes":["ai:chat"]}}"#, "é".repeat(101)))
            .starts_with("name: must be at most 100"));
        assert!(parse_key(
            format!(r#"{{"name":"{}","scopes":["ai:chat"]}}"#, "é".repeat(100)).as_bytes(),
            &pol(),
            0,
            Consistency::Strict
        )
        .is_ok());
        let past = parse_key(
            br#"{"name":"x","scopes":["ai:chat"],"expires_at":"2020-01-01T00:00:00Z"}"#,
            &pol(),
            1_800_000_000_000,
            Consistency::Strict,
        );
        assert_eq!(past.unwrap_err().message(), "expires_at: must be in the future");
        assert!(key_err("\u{feff}{}").starts_with("body:"));
        assert_eq!(
            parse_key(b"\xff\xfe", &pol(), 0, Consistency::Strict).unwrap_err().message(),
            "body: must be UTF-8 encoded JSON"
        );
        let k = parse_key(
            br#"{"name":"x","scopes":["ai:chat"],"rate_limits":[{"name":"hour","limit":100,"window_seconds":3600}]}"#,
            &pol(),
            0,
            Consistency::Strict,
        )
        .unwrap();
        assert_eq!(k.rate_limits, vec![RateLimit { name: "hour".into(), limit: 100, window_seconds: 3600 }]);
        for (body, want) in [
            (r#""rate_limits":{}"#, "rate_limits: must be an array"),
            (r#""rate_limits":[1]"#, "rate_limits[0]: must be an object"),
            (r#""rate_limits":[{"name":"h","limit":"5","window_seconds":60}]"#, "rate_limits[0]: must have"),
            (r#""rate_limits":[{"name":"h","limit":0,"window_seconds":60}]"#, "rate_limits[0]: limit must be"),
            (r#""rate_limits":[{"name":"h","limit":-1,"window_seconds":60}]"#, "rate_limits[0]: must have"),
            (r#""rate_limits":[{"name":"h","limit":1,"window_seconds":60,"burst":2}]"#, "burst: unknown field"),
            (
                r#""rate_limits":[{"name":"h","limit":1,"window_seconds":60},{"name":"h","limit":2,"window_seconds":60}]"#,
                "rate_limits[1]: duplicate name",
            ),
        ] {
            let got = key_err(&format!(r#"{{"name":"x","scopes":["ai:chat"],{body}}}"#));
            assert!(got.starts_with(want), "{body}: {got}");
        }
    }

    #[test]
    fn consistency_is_strict_by_default_or_as_configured() {
        let body = br#"{"name":"x","scopes":["ai:chat"]}"#;
        let k = parse_key(body, &pol(), 0, Consistency::Strict).unwrap();
        assert_eq!((k.consistency, k.consistency_given), (Consistency::Strict, false));
        let k = parse_key(body, &pol(), 0, Consistency::Leased).unwrap();
        assert_eq!((k.consistency, k.consistency_given), (Consistency::Leased, false));
        let k =
            parse_key(br#"{"name":"x","scopes":["ai:chat"],"consistency":"leased"}"#, &pol(), 0, Consistency::Strict)
                .unwrap();
        assert_eq!((k.consistency, k.consistency_given), (Consistency::Leased, true));
        for bad in [r#""eventual""#, r#""Strict""#, "1", "true"] {
            let got = key_err(&format!(r#"{{"name":"x","scopes":["ai:chat"],"consistency":{bad}}}"#));
            assert_eq!(got, "consistency: must be \"strict\" or \"leased\"", "{bad}");
        }
    }

    #[test]
    fn json_bomb_is_a_422_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(parse_org(deep.as_bytes()).unwrap_err().message(), "body: is not valid JSON");
    }

    #[test]
    fn org_and_user_bodies() {
        assert_eq!(
            parse_org(br#"{"name":"Acme","baa_active":true}"#).unwrap(),
            OrgInput { name: "Acme".into(), baa_active: true }
        );
        assert_eq!(parse_org(br#"{"name":"Acme"}"#).unwrap_err().message(), "baa_active: is required");
        assert_eq!(
            parse_org(br#"{"name":"Acme","baa_active":"yes"}"#).unwrap_err().message(),
            "baa_active: must be true or false"
        );
        assert_eq!(
            parse_user(br#"{"role":"admin"}"#, &pol()).unwrap(),
            UserInput { role: "admin".into(), disabled: None }
        );
        assert_eq!(
            parse_user(br#"{"role":"root"}"#, &pol()).unwrap_err().message(),
            "role: must be one of: admin, operator, viewer"
        );
        assert_eq!(
            parse_user(br#"{"role":"viewer","disabled":1}"#, &pol()).unwrap_err().message(),
            "disabled: must be true or false"
        );
        assert_eq!(parse_user(br#"{}"#, &pol()).unwrap_err().message(), "role: is required");
    }

    #[test]
    fn refused_entries_are_bounded() {
        let e = ApiError::validation("name", &"é".repeat(300));
        let (target, detail) = refused_entry(&"x".repeat(3000), &e);
        let detail: Value = serde_json::from_str(&detail).unwrap();
        assert_eq!(target.len(), MAX_AUDIT_FIELD);
        assert_eq!(detail["status"], 422);
        assert_eq!(detail["code"], "VALIDATION_FAILED");
        let m = detail["message"].as_str().unwrap();
        assert!(m.len() <= MAX_AUDIT_FIELD && m.starts_with("name: é"), "{m}");
        assert_eq!(truncate("aé", 2), "a");
    }

    #[test]
    fn admin_tokens() {
        let a = "a".repeat(32);
        let b = "b".repeat(40);
        let t =
            AdminTokens::parse(Some(&format!(" {a}\n")), Some(&format!("alice={b}, ops-2 = {}", "c".repeat(32))), 32)
                .unwrap();
        assert_eq!(format!("{t:?}"), r#"["default", "alice", "ops-2"]"#, "names only, never tokens");
        assert_eq!(t.operator(&a), Some("default"));
        assert_eq!(t.operator(&b), Some("alice"));
        assert_eq!(t.operator(&"c".repeat(32)), Some("ops-2"));
        assert_eq!(t.operator(&b[..39]), None);
        assert_eq!(t.operator(""), None);
        assert!(AdminTokens::parse(None, None, 32).unwrap().is_empty());
        assert!(AdminTokens::parse(Some("  "), Some(" , "), 32).unwrap().is_empty());
        for (single, list) in [
            (Some("short"), None),
            (None, Some("alice")),
            (None, Some(&*format!("Alice={b}"))),
            (None, Some(&*format!("={b}"))),
            (None, Some("alice=short")),
            (None, Some(&*format!("alice={b},alice={}", "d".repeat(32)))),
            (Some(&*a), Some(&*format!("default={b}"))),
            (Some(&*a), Some(&*format!("bob={a}"))),
        ] {
            assert!(AdminTokens::parse(single, list, 32).is_err(), "{single:?} {list:?}");
        }
    }
}
