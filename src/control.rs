//! The control API's rules (served by keyward itself, never proxied):
//! who may mint or revoke which keys, and the query parameters of the list,
//! audit and usage routes. Pure.
//!
//! No privilege escalation: a key mints only keys whose scopes are within
//! its own effective scopes (for a user-bound key: capped by the user's
//! current role), that expire no later than it does, and whose rate limits
//! are at least as strict as its own; a key bound to a user mints only keys
//! bound to that same user, and only if the user's role may create keys
//! (`key_creating_roles`); a key not bound to a user cannot mint keys bound
//! to a user (that would let it act as the user towards the origin); a key
//! revokes only keys it could have minted; a `strict` key mints only
//! `strict` keys (a `leased` one may take effect up to `LEASE_MS` late).

use crate::admin::KeyInput;
use crate::error::{ApiError, ErrorCode};
use crate::ids;
use crate::policy::Policy;
use crate::ratelimit::{merge_limits, RateLimit};
use crate::records::{Consistency, KeyRecord};
use crate::scope::Scope;
use crate::token::KeyKind;

/// The calling key, as authorized.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    /// Its effective scopes.
    pub scopes: &'a [Scope],
    /// Its user, if bound to one.
    pub user_id: Option<&'a str>,
    /// That user's current role.
    pub user_role: Option<&'a str>,
    /// Its expiry, if any.
    pub expires_at: Option<i64>,
    /// Its effective rate limits (its own over the policy's defaults).
    pub limits: &'a [RateLimit],
    /// Its consistency mode.
    pub consistency: Consistency,
    /// Its `allowed_ips` (empty: any address).
    pub allowed_ips: &'a [crate::cidr::Cidr],
    /// Its metadata.
    pub meta: Option<&'a str>,
    /// Whether it is a usage-limited key (credits).
    pub credits: bool,
}

fn denied(message: &'static str) -> ApiError {
    ApiError::with_message(ErrorCode::PermissionDenied, message)
}

/// Checks a mint request and binds the new key to the caller's user.
pub fn check_create(policy: &Policy, caller: &Caller<'_>, input: &mut KeyInput) -> Result<(), ApiError> {
    may_mint(policy, caller.user_id, caller.user_role, caller.credits)?;
    match caller.user_id {
        Some(uid) => match input.user_id.as_deref() {
            None => input.user_id = Some(uid.to_owned()),
            Some(u) if u == uid => {}
            Some(_) => return Err(denied("A key bound to a user can only create keys bound to the same user.")),
        },
        None if input.user_id.is_some() => {
            return Err(denied("A key not bound to a user cannot create keys bound to a user."));
        }
        None => {}
    }
    match (caller.expires_at, input.expires_at) {
        (Some(mine), None) => input.expires_at = Some(mine),
        (Some(mine), Some(theirs)) if theirs > mine => {
            return Err(denied("A key cannot create a key that expires after it does."));
        }
        _ => {}
    }
    // The new key keeps at least the caller's limits: its own may only tighten.
    let limits = merge_limits(caller.limits, &input.rate_limits);
    for mine in caller.limits {
        let tighter = limits
            .iter()
            .find(|l| l.name == mine.name)
            .is_some_and(|l| l.limit <= mine.limit && l.window_seconds >= mine.window_seconds);
        if !tighter {
            return Err(denied("A key cannot create a key with looser rate limits than its own."));
        }
    }
    input.rate_limits = limits;
    // The limits the new key really gets may be tighter than its body said,
    // so its visitors' share is checked again against them.
    if input.kind == KeyKind::Widget {
        crate::admin::check_widget_limits(policy, &input.rate_limits, &input.visitor_rate_limits)?;
    }
    // Never laxer than its parent: a strict key mints strict keys; without
    // an explicit mode a minted key takes the stricter of the deployment's
    // default and its parent's.
    if caller.consistency == Consistency::Strict {
        if input.consistency_given && input.consistency == Consistency::Leased {
            return Err(denied("A strict key cannot create a leased key (leased is laxer: up to LEASE_MS late)."));
        }
        input.consistency = Consistency::Strict;
    }
    // Restricted to some addresses: so is every key it mints (its own list
    // when none is given), never to an address outside it.
    if !caller.allowed_ips.is_empty() {
        if input.allowed_ips.is_empty() {
            input.allowed_ips = caller.allowed_ips.to_vec();
        } else if let Some(out) = input.allowed_ips.iter().find(|c| !caller.allowed_ips.iter().any(|o| c.within(o))) {
            return Err(ApiError::with_message(
                ErrorCode::PermissionDenied,
                format!("A key cannot create a key usable from an address it may not use: {out}"),
            ));
        }
    }
    // Metadata tells the origin who the customer is (plan, account): an
    // admin sets it; a minted key carries its parent's, unchanged.
    match (&input.meta, caller.meta) {
        (None, m) => input.meta = m.map(str::to_owned),
        (Some(given), Some(mine)) if given == mine => {}
        (Some(_), _) => return Err(denied("A key cannot create a key with other metadata than its own.")),
    }
    if let Some(missing) = input.scopes.iter().find(|s| !s.within(caller.scopes)) {
        return Err(ApiError::with_message(
            ErrorCode::MissingScope,
            format!("This API key cannot grant a scope it does not have: {missing}"),
        ));
    }
    Ok(())
}

/// Whether the caller may revoke `target` (a key of its org): only a key
/// it could have minted — the rules of [`check_create`] on the target's
/// scopes, user, expiry, limits, consistency, addresses and metadata. (A
/// short-lived, tightly limited key must not be able to revoke long-lived
/// production keys with looser limits: a denial of service.)
pub fn check_revoke(policy: &Policy, caller: &Caller<'_>, target: &KeyRecord) -> Result<(), ApiError> {
    check_manage(policy, caller, target, "revoke")
}

/// Whether the caller may roll `target`: the rules of [`check_revoke`] (the
/// new key is the target's copy; the old one ends).
pub fn check_roll(policy: &Policy, caller: &Caller<'_>, target: &KeyRecord) -> Result<(), ApiError> {
    // The new key carries the target's metadata, which the origin trusts:
    // only a caller with the same metadata may obtain one (as at minting).
    if target.meta.as_deref() != caller.meta {
        return Err(denied("A key cannot roll a key with other metadata than its own (the new key would carry it)."));
    }
    check_manage(policy, caller, target, "roll")
}

/// The parent of the key a roll makes. Rolled by a key through the control
/// API: that key's child (revoked with it, counted against its
/// `MAX_KEYS_PER_PARENT`) — a key that rolls itself makes its successor its
/// child, so a leaked key cannot hand itself a way out of its revocation.
/// Rolled by the admin API or a JWT session: the old key's parent.
pub fn rolled_parent(calling_key: Option<&str>, target: &KeyRecord) -> Option<String> {
    calling_key.map(str::to_owned).or_else(|| target.parent_id.clone())
}

/// Whether the caller may update `before` into `after`: a key it could have
/// minted, before and after (so a change loosens nothing past the caller's
/// own scopes, limits, expiry and addresses).
pub fn check_update(
    policy: &Policy,
    caller: &Caller<'_>,
    before: &KeyRecord,
    after: &KeyRecord,
) -> Result<(), ApiError> {
    check_manage(policy, caller, before, "update")?;
    // Metadata tells the origin who the customer is: the admin's to set,
    // through the admin API only (as a minted key carries its parent's).
    if after.meta != before.meta {
        return Err(denied("Metadata is set by an operator (admin API), not through the control API."));
    }
    check_manage(policy, caller, after, "update")
}

fn check_manage(policy: &Policy, caller: &Caller<'_>, target: &KeyRecord, verb: &str) -> Result<(), ApiError> {
    let no =
        |why: &str| ApiError::with_message(ErrorCode::PermissionDenied, format!("This API key cannot {verb} {why}"));
    if let Some(uid) = caller.user_id {
        if target.user_id.as_deref() != Some(uid) {
            return Err(no("a key of another user (a key bound to a user manages only its user's keys)."));
        }
    }
    if !target.scopes.iter().all(|s| s.within(caller.scopes)) {
        return Err(no("a key with scopes it does not have."));
    }
    // What the target really has, not what a mint body could leave out to
    // inherit: no expiry is never, no limits are the policy's.
    if let Some(mine) = caller.expires_at {
        if target.expires_at.is_none_or(|t| t > mine) {
            return Err(no("a key that expires after it does."));
        }
    }
    if !caller.allowed_ips.is_empty() && target.allowed_ips.is_empty() {
        return Err(no("a key usable from addresses it may not use."));
    }
    let mut as_minted = KeyInput {
        name: target.name.clone(),
        scopes: target.scopes.clone(),
        kind: target.kind,
        expires_at: target.expires_at,
        user_id: target.user_id.clone(),
        rate_limits: merge_limits(policy.default_rate_limits(), &target.rate_limits),
        allowed_origins: target.allowed_origins.clone(),
        resource_id: target.resource_id.clone(),
        visitor_rate_limits: target.visitor_rate_limits.clone(),
        turnstile_required: target.turnstile_required,
        consistency: target.consistency,
        consistency_given: true,
        allowed_ips: target.allowed_ips.clone(),
        // Metadata is not the caller's to choose: no bar to managing.
        meta: caller.meta.map(str::to_owned),
        credits: target.credits,
    };
    check_create(policy, caller, &mut as_minted)
        .map_err(|e| no(&format!("a key it could not have created: {}", e.message())))
}

/// Whether a caller may create keys at all, whatever it asks for: not a
/// usage-limited key (its keys would spend credits of their own, not its),
/// and a user-bound caller's role must be one that creates keys.
fn may_mint(policy: &Policy, user_id: Option<&str>, user_role: Option<&str>, credits: bool) -> Result<(), ApiError> {
    if credits {
        return Err(denied("A key with credits cannot create or manage API keys."));
    }
    if user_id.is_some() && !user_role.is_some_and(|r| policy.role_creates_keys(r)) {
        return Err(denied("This key's user has a role that may not create API keys."));
    }
    Ok(())
}

/// `GET /v1/me`: who the caller is, as the console shows it — org, user and
/// role, effective scopes, whether it may create keys (a key-creating role
/// or no user; no credits; not rolled; the policy's write scope if any), the
/// catalogue scopes it may grant (its scopes' concrete members) and the
/// whole catalogue (a console shows the others disabled).
pub fn me(policy: &Policy, grant: &crate::authorize::Grant, key: &KeyRecord) -> String {
    use crate::json::{array, obj, text};
    // What every mint checks first (check_create, the shell's write scope,
    // the org object's refusal of a rolled caller), here as a yes or no.
    let may_create = may_mint(policy, grant.user_id.as_deref(), grant.user_role.as_deref(), key.credits.is_some())
        .is_ok()
        && key.rolled_to.is_none()
        && check_write_scope(policy, &grant.scopes).is_ok();
    let grantable: Vec<String> =
        policy.scopes().iter().filter(|s| crate::scope::grants(&grant.scopes, s)).map(text).collect();
    let scopes: Vec<String> = grant.scopes.iter().map(|s| text(s.as_str())).collect();
    let catalogue: Vec<String> = policy.scopes().iter().map(text).collect();
    obj(&[
        ("catalogue_scopes", array(&catalogue)),
        ("grantable_scopes", array(&grantable)),
        ("may_create_keys", text(&may_create)),
        ("org_id", text(&grant.org_id)),
        ("role", text(&grant.user_role)),
        ("scopes", array(&scopes)),
        ("user_id", text(&grant.user_id)),
    ])
}

/// Whether a caller holding `scopes` may revoke the sessions of another
/// user whose role is `target_role`: only if it holds every scope of that
/// role (an org-level key with `control:read` cannot sign an admin out, nor
/// an operator an admin). Its own sessions a caller may always revoke.
pub fn check_revoke_sessions(policy: &Policy, scopes: &[Scope], target_role: &str) -> Result<(), ApiError> {
    let role = policy.role(target_role).unwrap_or(&[]);
    if role.iter().all(|s| s.within(scopes)) && policy.role(target_role).is_some() {
        return Ok(());
    }
    Err(denied("This caller cannot revoke the sessions of a user whose role has scopes it does not have."))
}

/// A control API write (mint, revoke, revoke sessions) by a caller with
/// `scopes`: when the policy names a `control_write_scope`, the caller
/// must hold it too (`403 MISSING_SCOPE` naming it).
pub fn check_write_scope(policy: &Policy, scopes: &[Scope]) -> Result<(), ApiError> {
    match policy.control_write_scope() {
        Some(w) if !crate::scope::grants(scopes, w) => Err(ApiError::missing_scope(w)),
        _ => Ok(()),
    }
}

/// How recent a JWT session must be to mint a key: a key outlives the
/// session (it has its own expiry and revocation), so a token taken from a
/// page must not be able to turn itself into one long after it was issued —
/// as with a "sudo mode", the user signs in again first.
pub const MINT_MAX_SESSION_AGE_MS: i64 = 5 * 60 * 1000;

/// Checks that a JWT session issued at `issued_at` (ms; `iat` minus the
/// leeway) may still mint a key at `now`.
pub fn check_session_may_mint(issued_at: i64, now: i64) -> Result<(), ApiError> {
    if now - issued_at > MINT_MAX_SESSION_AGE_MS {
        return Err(denied("A key can be created from a session at most 5 minutes old: sign in again first."));
    }
    Ok(())
}

/// Decodes `%XX` in a query value; `+` stays a plus (RFC 3339 offsets).
fn decode(v: &str) -> Option<String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = v.get(i + 1..i + 3).filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The value of query parameter `name` (the last one wins), decoded.
pub fn param(query: &str, name: &str) -> Result<Option<String>, ApiError> {
    let mut found = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            found = Some(decode(v).ok_or_else(|| ApiError::validation(name, "is not valid percent-encoded UTF-8"))?);
        }
    }
    Ok(found)
}

/// A page request: `cursor` (from `meta.next_cursor`) and `limit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// Return items strictly after this one.
    pub cursor: Option<String>,
    /// At most this many items (1–100, default 50).
    pub limit: u32,
}

/// Default and largest page sizes.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest page size.
pub const MAX_LIMIT: u32 = 100;

/// Parses `cursor` and `limit`; `valid_cursor` says what a cursor looks like.
pub fn page(query: &str, valid_cursor: fn(&str) -> bool) -> Result<Page, ApiError> {
    let cursor = match param(query, "cursor")? {
        None => None,
        Some(c) if c.is_empty() => None,
        Some(c) if valid_cursor(&c) => Some(c),
        Some(_) => return Err(ApiError::validation("cursor", "is not a cursor from meta.next_cursor")),
    };
    let limit = match param(query, "limit")? {
        None => DEFAULT_LIMIT,
        Some(l) => match l.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => return Err(ApiError::validation("limit", "must be an integer from 1 to 100")),
        },
    };
    Ok(Page { cursor, limit })
}

/// A key-list cursor is a key id (ULID).
pub fn key_cursor(c: &str) -> bool {
    ids::is_ulid(c)
}

/// An audit cursor is a positive sequence number, as written (no leading zero).
pub fn audit_cursor(c: &str) -> bool {
    !c.is_empty() && c.len() <= 18 && c.bytes().all(|b| b.is_ascii_digit()) && !c.starts_with('0')
}

/// Longest usage range.
pub const MAX_RANGE_MS: i64 = 31 * 24 * 3_600_000;

/// `from` and `to` (RFC 3339) of the usage route: default the last 24 hours;
/// `from < to`, at most 31 days apart.
pub fn range(query: &str, now_ms: i64) -> Result<(i64, i64), ApiError> {
    let time = |name: &str| -> Result<Option<i64>, ApiError> {
        match param(query, name)? {
            None => Ok(None),
            Some(v) => ids::parse_rfc3339(&v)
                .map(Some)
                .ok_or_else(|| ApiError::validation(name, "must be an RFC 3339 timestamp (2026-05-02T10:00:00Z)")),
        }
    };
    let to = time("to")?.unwrap_or(now_ms);
    let from = time("from")?.unwrap_or(to - 24 * 3_600_000);
    if from >= to {
        return Err(ApiError::validation("from", "must be before to"));
    }
    if to - from > MAX_RANGE_MS {
        return Err(ApiError::validation("from", "the range may span at most 31 days"));
    }
    Ok((from, to))
}

/// Whether a control request whose call to the org's object failed (503:
/// the object threw, was unreachable or reset) still counts against the
/// calling key's limits. A write (`POST`, `DELETE`) may have been applied
/// before its answer was lost — as a request sent to the origin may have
/// been acted on — so it counts; a read changed nothing and is given back
/// (refunded to the key's guard after the response).
pub fn failed_call_counts(method: &str) -> bool {
    !matches!(method, "GET" | "HEAD")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failed_read_is_given_back_a_failed_write_counts() {
        assert!(!super::failed_call_counts("GET"));
        assert!(!super::failed_call_counts("HEAD"));
        assert!(super::failed_call_counts("POST"));
        assert!(super::failed_call_counts("DELETE"));
        assert!(super::failed_call_counts("PATCH"));
    }

    use super::*;
    use crate::token::KeyKind;

    fn sc(list: &[&str]) -> Vec<Scope> {
        list.iter().map(|s| Scope::parse(s).unwrap()).collect()
    }

    /// An org-level caller (no user, expiry, limits, addresses, metadata or
    /// credits; strict) with `scopes`: tests override what they exercise.
    pub(super) fn org_caller(scopes: &[Scope]) -> Caller<'_> {
        Caller {
            scopes,
            user_id: None,
            user_role: None,
            expires_at: None,
            limits: &[],
            consistency: Consistency::Strict,
            allowed_ips: &[],
            meta: None,
            credits: false,
        }
    }

    fn input(scopes: &[&str], user: Option<&str>) -> KeyInput {
        KeyInput {
            name: "k".into(),
            scopes: sc(scopes),
            kind: KeyKind::Secret,
            expires_at: None,
            user_id: user.map(Into::into),
            rate_limits: vec![],
            allowed_origins: vec![],
            resource_id: None,
            visitor_rate_limits: vec![],
            turnstile_required: false,
            consistency: Consistency::Strict,
            consistency_given: false,
            allowed_ips: vec![],
            meta: None,
            credits: None,
        }
    }

    #[test]
    fn no_escalation_of_scopes() {
        let pol = Policy::default_policy().unwrap();
        let mine = sc(&["ai:chat", "control:read"]);
        let caller = org_caller(&mine);
        assert!(check_create(&pol, &caller, &mut input(&["ai:chat"], None)).is_ok());
        assert!(check_create(&pol, &caller, &mut input(&["ai:chat", "control:read"], None)).is_ok());
        for (want, missing) in
            [(&["ai:*"][..], "ai:*"), (&["*"][..], "*"), (&["ai:chat", "control:webhooks"][..], "control:webhooks")]
        {
            let e = check_create(&pol, &caller, &mut input(want, None)).unwrap_err();
            assert_eq!(e.code, ErrorCode::MissingScope);
            assert!(e.message().ends_with(missing), "{}", e.message());
        }
        let wild = sc(&["ai:*", "control:read"]);
        let caller = org_caller(&wild);
        assert!(check_create(&pol, &caller, &mut input(&["ai:embeddings", "ai:*"], None)).is_ok());
    }

    #[test]
    fn a_minted_widget_keys_visitors_stay_within_the_limits_it_inherits() {
        let pol = Policy::default_policy().unwrap();
        let mine = sc(&["ai:chat", "control:read"]);
        let lim = |name: &str, limit| RateLimit { name: name.into(), limit, window_seconds: 60 };
        let tight = [lim("minute", 20)];
        let caller = |limits| Caller { limits, ..org_caller(&mine) };
        let widget = || KeyInput { kind: KeyKind::Widget, ..input(&["ai:chat"], None) };
        // The policy's 10 per visitor fits the policy's 60, not the 20 the
        // caller passes on.
        let e = check_create(&pol, &caller(&tight), &mut widget()).unwrap_err();
        assert_eq!(e.code, ErrorCode::ValidationFailed);
        assert!(e.message().starts_with("rate_limits: one visitor could use 10 of the key's 20"), "{}", e.message());
        let mut own = KeyInput { visitor_rate_limits: vec![lim("visitor", 5)], ..widget() };
        assert!(check_create(&pol, &caller(&tight), &mut own).is_ok());
        assert!(check_create(&pol, &caller(&[]), &mut widget()).is_ok());
    }

    #[test]
    fn user_bound_callers_mint_only_for_their_user_and_role() {
        let pol = Policy::default_policy().unwrap();
        let mine = sc(&["ai:chat", "control:read"]);
        let op = Caller { user_id: Some("u1"), user_role: Some("operator"), ..org_caller(&mine) };
        let mut i = input(&["ai:chat"], None);
        check_create(&pol, &op, &mut i).unwrap();
        assert_eq!(i.user_id.as_deref(), Some("u1"), "bound to the caller's user");
        assert!(check_create(&pol, &op, &mut input(&["ai:chat"], Some("u1"))).is_ok());
        let e = check_create(&pol, &op, &mut input(&["ai:chat"], Some("u2"))).unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        let viewer = Caller { user_id: Some("u1"), user_role: Some("viewer"), ..org_caller(&mine) };
        assert_eq!(
            check_create(&pol, &viewer, &mut input(&["ai:chat"], None)).unwrap_err().code,
            ErrorCode::PermissionDenied
        );
    }

    #[test]
    fn org_keys_cannot_mint_for_users_and_children_never_outlive_or_outpace() {
        let pol = Policy::default_policy().unwrap();
        let mine = sc(&["ai:chat", "control:read"]);
        let org_key = org_caller(&mine);
        let e = check_create(&pol, &org_key, &mut input(&["ai:chat"], Some("u_admin"))).unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        let limits = [RateLimit { name: "minute".into(), limit: 5, window_seconds: 60 }];
        let parent = Caller { expires_at: Some(1_000), limits: &limits, ..org_caller(&mine) };
        let mut i = input(&["ai:chat"], None);
        check_create(&pol, &parent, &mut i).unwrap();
        assert_eq!(i.expires_at, Some(1_000), "inherits the caller's expiry");
        assert_eq!(i.rate_limits, limits.to_vec(), "inherits the caller's limits");
        let mut later = input(&["ai:chat"], None);
        later.expires_at = Some(2_000);
        assert_eq!(check_create(&pol, &parent, &mut later).unwrap_err().code, ErrorCode::PermissionDenied);
        for (limit, window) in [(6, 60), (5, 30), (1_000_000, 60)] {
            let mut loose = input(&["ai:chat"], None);
            loose.rate_limits = vec![RateLimit { name: "minute".into(), limit, window_seconds: window }];
            assert_eq!(
                check_create(&pol, &parent, &mut loose).unwrap_err().code,
                ErrorCode::PermissionDenied,
                "{limit}/{window}"
            );
        }
        let mut tight = input(&["ai:chat"], None);
        tight.rate_limits = vec![
            RateLimit { name: "minute".into(), limit: 2, window_seconds: 60 },
            RateLimit { name: "hour".into(), limit: 50, window_seconds: 3600 },
        ];
        check_create(&pol, &parent, &mut tight).unwrap();
        assert_eq!(tight.rate_limits.len(), 2);
    }

    #[test]
    fn minted_keys_are_never_laxer_than_their_parent() {
        let pol = Policy::default_policy().unwrap();
        let mine = sc(&["ai:chat", "control:read"]);
        let strict = org_caller(&mine);
        let leased = Caller { consistency: Consistency::Leased, ..strict };
        let mut asked = input(&["ai:chat"], None);
        (asked.consistency, asked.consistency_given) = (Consistency::Leased, true);
        assert_eq!(check_create(&pol, &strict, &mut asked.clone()).unwrap_err().code, ErrorCode::PermissionDenied);
        let mut ok = asked.clone();
        check_create(&pol, &leased, &mut ok).unwrap();
        assert_eq!(ok.consistency, Consistency::Leased);
        // A deployment default of leased does not make a strict key's child laxer.
        let mut defaulted = input(&["ai:chat"], None);
        defaulted.consistency = Consistency::Leased;
        check_create(&pol, &strict, &mut defaulted).unwrap();
        assert_eq!(defaulted.consistency, Consistency::Strict);
        // A leased key may mint a strict one.
        let mut tighter = input(&["ai:chat"], None);
        (tighter.consistency, tighter.consistency_given) = (Consistency::Strict, true);
        check_create(&pol, &leased, &mut tighter).unwrap();
        assert_eq!(tighter.consistency, Consistency::Strict);
    }

    #[test]
    fn revoke_only_what_you_could_mint() {
        let target = |scopes: &[&str], user: Option<&str>| KeyRecord {
            user_id: user.map(Into::into),
            name: "t".into(),
            scopes: sc(scopes),
            prefix: "kw_live_".into(),
            last_four: "abcd".into(),
            ..KeyRecord::synthetic("01K".into(), "o", 0)
        };
        let mine = sc(&["ai:*", "control:read"]);
        let org_key = org_caller(&mine);
        let pol = Policy::default_policy().unwrap();
        let revoke = |c: &Caller<'_>, t: &KeyRecord| check_revoke(&pol, c, t).map_err(|e| e.code);
        assert!(revoke(&org_key, &target(&["ai:chat"], None)).is_ok());
        // An org-level key could not have minted a user-bound key (an admin's,
        // say): it may not revoke one either.
        assert_eq!(revoke(&org_key, &target(&["ai:chat"], Some("u9"))), Err(ErrorCode::PermissionDenied));
        assert_eq!(revoke(&org_key, &target(&["*"], None)), Err(ErrorCode::PermissionDenied));
        let user_key = Caller { user_id: Some("u1"), user_role: Some("admin"), ..org_caller(&mine) };
        assert!(revoke(&user_key, &target(&["ai:chat"], Some("u1"))).is_ok());
        assert_eq!(revoke(&user_key, &target(&["ai:chat"], Some("u2"))), Err(ErrorCode::PermissionDenied));
        assert_eq!(revoke(&user_key, &target(&["ai:chat"], None)), Err(ErrorCode::PermissionDenied));
        // A short-lived, tightly limited key cannot revoke a long-lived key
        // with looser limits, nor a leased one (it could mint neither).
        let tight = [RateLimit { name: "minute".into(), limit: 5, window_seconds: 60 }];
        let short = Caller { expires_at: Some(1_000), limits: &tight, ..org_key };
        let long_lived = target(&["ai:chat"], None);
        let e = check_revoke(&pol, &short, &long_lived).unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        assert!(e.message().contains("expires after it does"), "{}", e.message());
        let mine_too = KeyRecord {
            expires_at: Some(900),
            rate_limits: vec![RateLimit { name: "minute".into(), limit: 3, window_seconds: 60 }],
            ..target(&["ai:chat"], None)
        };
        assert!(revoke(&short, &mine_too).is_ok(), "one it could have minted");
        let looser = KeyRecord { expires_at: Some(900), ..target(&["ai:chat"], None) };
        assert_eq!(revoke(&short, &looser), Err(ErrorCode::PermissionDenied), "default limits are looser than 5/min");
        let leased = KeyRecord { consistency: Consistency::Leased, ..target(&["ai:chat"], None) };
        assert_eq!(revoke(&org_key, &leased), Err(ErrorCode::PermissionDenied));
        // Addresses: a caller restricted to some cannot revoke an unrestricted key.
        let ips = [crate::cidr::Cidr::parse("203.0.113.0/24").unwrap()];
        let fenced = Caller { allowed_ips: &ips, ..org_key };
        assert_eq!(revoke(&fenced, &target(&["ai:chat"], None)), Err(ErrorCode::PermissionDenied));
        let inside = KeyRecord { allowed_ips: ips.to_vec(), ..target(&["ai:chat"], None) };
        assert!(revoke(&fenced, &inside).is_ok());
        // Metadata is no bar.
        let with_meta = KeyRecord { meta: Some("{}".into()), ..target(&["ai:chat"], None) };
        assert!(revoke(&org_key, &with_meta).is_ok());
    }

    #[test]
    fn minted_keys_stay_within_the_callers_addresses_and_carry_its_metadata() {
        let pol = Policy::default_policy().unwrap();
        let mine = sc(&["ai:*", "control:read"]);
        let ips = [crate::cidr::Cidr::parse("203.0.113.0/24").unwrap()];
        let caller = Caller { allowed_ips: &ips, meta: Some(r#"{"plan":"pro"}"#), ..org_caller(&mine) };
        let mut i = input(&["ai:chat"], None);
        check_create(&pol, &caller, &mut i).unwrap();
        assert_eq!((i.allowed_ips.as_slice(), i.meta.as_deref()), (&ips[..], Some(r#"{"plan":"pro"}"#)), "inherited");
        let mut narrower = input(&["ai:chat"], None);
        narrower.allowed_ips = vec![crate::cidr::Cidr::parse("203.0.113.128/25").unwrap()];
        check_create(&pol, &caller, &mut narrower).unwrap();
        let mut wider = input(&["ai:chat"], None);
        wider.allowed_ips = vec![crate::cidr::Cidr::parse("203.0.112.0/23").unwrap()];
        assert_eq!(check_create(&pol, &caller, &mut wider).unwrap_err().code, ErrorCode::PermissionDenied);
        let mut other_meta = input(&["ai:chat"], None);
        other_meta.meta = Some(r#"{"plan":"enterprise"}"#.into());
        assert_eq!(check_create(&pol, &caller, &mut other_meta).unwrap_err().code, ErrorCode::PermissionDenied);
        let mut same_meta = input(&["ai:chat"], None);
        same_meta.meta = Some(r#"{"plan":"pro"}"#.into());
        check_create(&pol, &caller, &mut same_meta).unwrap();
        // A caller without metadata mints none.
        let bare = Caller { meta: None, allowed_ips: &[], ..caller };
        let mut with_meta = input(&["ai:chat"], None);
        with_meta.meta = Some("{}".into());
        assert!(check_create(&pol, &bare, &mut with_meta).is_err());
    }

    #[test]
    fn sessions_are_revoked_only_by_callers_holding_the_users_role() {
        let pol = Policy::default_policy().unwrap();
        // An org-level key with control:read signs nobody out but holders of
        // no more than it has; an operator (ai:*, control:read) a viewer but
        // not an admin (*); `*` anyone.
        assert!(check_revoke_sessions(&pol, &sc(&["control:read"]), "viewer").is_err());
        assert!(check_revoke_sessions(&pol, &sc(&["ai:*", "control:read"]), "viewer").is_ok());
        assert!(check_revoke_sessions(&pol, &sc(&["ai:*", "control:read"]), "operator").is_ok());
        let e = check_revoke_sessions(&pol, &sc(&["ai:*", "control:read"]), "admin").unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        assert!(check_revoke_sessions(&pol, &sc(&["*"]), "admin").is_ok());
        assert!(check_revoke_sessions(&pol, &sc(&["*"]), "no-such-role").is_err());
    }

    #[test]
    fn a_policy_may_require_a_scope_for_control_writes() {
        assert!(check_write_scope(&Policy::default_policy().unwrap(), &sc(&["control:read"])).is_ok());
        let mut v: serde_json::Value = serde_json::from_str(crate::policy::DEFAULT_POLICY_JSON).unwrap();
        v["scopes"].as_array_mut().unwrap().push("control:write".into());
        v["control_write_scope"] = "control:write".into();
        let pol = Policy::from_json(&v.to_string()).unwrap();
        let e = check_write_scope(&pol, &sc(&["control:read"])).unwrap_err();
        assert_eq!(
            (e.code, e.message()),
            (ErrorCode::MissingScope, "This API key lacks the required scope: control:write")
        );
        assert!(check_write_scope(&pol, &sc(&["control:*"])).is_ok());
        v["control_write_scope"] = "control:nope".into();
        assert!(Policy::from_json(&v.to_string()).is_err());
    }

    /// `GET /v1/me`'s answer for a caller with `scopes`, bound to `user`
    /// with `role` (or org-level), whose own record is `key`.
    fn me_of(pol: &Policy, scopes: &[&str], user: Option<(&str, &str)>, key: &KeyRecord) -> serde_json::Value {
        let grant = crate::authorize::Grant {
            org_id: "org_1".into(),
            key_id: key.id.clone(),
            kind: KeyKind::Secret,
            user_id: user.map(|(u, _)| u.into()),
            user_role: user.map(|(_, r)| r.into()),
            scopes: sc(scopes),
            route_scope: "control:read".into(),
            route: "/v1/me".into(),
            local: true,
            resource_id: None,
            cors_origin: None,
            auth: crate::authorize::Auth::Key,
            meta: None,
        };
        serde_json::from_str(&me(pol, &grant, key)).unwrap()
    }

    #[test]
    fn me_says_who_the_caller_is_and_whether_it_may_create_keys() {
        let pol = Policy::default_policy().unwrap();
        let key = KeyRecord::synthetic("01CALLER".into(), "org_1", 0);
        let op = me_of(&pol, &["ai:*", "control:read"], Some(("u1", "operator")), &key);
        assert_eq!(
            op,
            serde_json::json!({
                "catalogue_scopes": pol.scopes(),
                "grantable_scopes": ["ai:chat", "ai:documents", "ai:embeddings", "ai:summarize", "control:read"],
                "may_create_keys": true,
                "org_id": "org_1",
                "role": "operator",
                "scopes": ["ai:*", "control:read"],
                "user_id": "u1",
            })
        );
        let org_key = me_of(&pol, &["ai:chat", "control:read"], None, &key);
        assert_eq!(
            (&org_key["may_create_keys"], &org_key["user_id"], &org_key["role"]),
            (&true.into(), &().into(), &().into())
        );
        assert_eq!(org_key["grantable_scopes"], serde_json::json!(["ai:chat", "control:read"]));
        // Every caller a mint refuses first is told it may not create keys.
        let no = |v: serde_json::Value, why: &str| assert_eq!(v["may_create_keys"], false, "{why}: {v}");
        no(me_of(&pol, &["ai:*", "control:read"], Some(("u1", "viewer")), &key), "a role that creates no keys");
        no(me_of(&pol, &["ai:*", "control:read"], Some(("u1", "no-such-role")), &key), "an unknown role");
        let credits = KeyRecord {
            credits: Some(crate::credits::CreditSpec { remaining: 5, refill: None, set_at: 0 }),
            ..key.clone()
        };
        no(me_of(&pol, &["ai:*", "control:read"], None, &credits), "a key with credits");
        let rolled = KeyRecord { rolled_to: Some("01NEXT".into()), ..key.clone() };
        no(me_of(&pol, &["ai:*", "control:read"], None, &rolled), "a rolled key");
        let mut v: serde_json::Value = serde_json::from_str(crate::policy::DEFAULT_POLICY_JSON).unwrap();
        v["scopes"].as_array_mut().unwrap().push("control:write".into());
        v["control_write_scope"] = "control:write".into();
        let strict = Policy::from_json(&v.to_string()).unwrap();
        no(me_of(&strict, &["ai:*", "control:read"], None, &key), "without the policy's write scope");
        assert_eq!(me_of(&strict, &["ai:*", "control:*"], None, &key)["may_create_keys"], true);
    }

    #[test]
    fn only_a_recent_session_mints_a_key() {
        let t = 1_800_000_000_000;
        assert!(check_session_may_mint(t, t + MINT_MAX_SESSION_AGE_MS).is_ok());
        let e = check_session_may_mint(t, t + MINT_MAX_SESSION_AGE_MS + 1).unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied);
    }

    #[test]
    fn query_parameters() {
        assert_eq!(page("", key_cursor).unwrap(), Page { cursor: None, limit: 50 });
        assert_eq!(page("limit=100&cursor=", key_cursor).unwrap(), Page { cursor: None, limit: 100 });
        let c = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
        assert_eq!(
            page(&format!("cursor={c}&limit=7"), key_cursor).unwrap(),
            Page { cursor: Some(c.into()), limit: 7 }
        );
        for bad in ["limit=0", "limit=101", "limit=x", "limit=-1", "cursor=nope", "cursor=%ZZ"] {
            assert_eq!(page(bad, key_cursor).unwrap_err().code, ErrorCode::ValidationFailed, "{bad}");
        }
        assert!(page("cursor=42", audit_cursor).is_ok());
        for bad in ["cursor=0", "cursor=00", "cursor=042", "cursor=%+1", "cursor=4%+2"] {
            assert!(page(bad, audit_cursor).is_err(), "{bad}");
        }
        let now = 1_800_000_000_000;
        assert_eq!(range("", now).unwrap(), (now - 86_400_000, now));
        assert_eq!(
            range("from=2026-05-02T10:00:00%2B00:00&to=2026-05-02T12:00:00Z", now).unwrap(),
            (1_777_716_000_000, 1_777_723_200_000)
        );
        assert_eq!(range("from=2026-05-02T10:00:00+00:00&to=2026-05-02T12:00:00Z", now).unwrap().0, 1_777_716_000_000);
        for bad in [
            "from=yesterday",
            "from=2026-05-03T00:00:00Z&to=2026-05-02T00:00:00Z",
            "from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z",
        ] {
            assert_eq!(range(bad, now).unwrap_err().code, ErrorCode::ValidationFailed, "{bad}");
        }
    }
}

#[cfg(test)]
mod lifecycle_review_tests {
    use super::*;
    use crate::scope::Scope;
    use crate::token::KeyKind;
    use tests::org_caller;

    fn me(scopes: &[&str], meta: Option<&str>) -> KeyRecord {
        KeyRecord {
            name: "ops".into(),
            scopes: scopes.iter().map(|s| Scope::parse(s).unwrap()).collect(),
            prefix: "kw_live_".into(),
            last_four: "abcd".into(),
            meta: meta.map(Into::into),
            ..KeyRecord::synthetic("01CALLER".into(), "org_1", 0)
        }
    }

    /// FINDING (HEAD): the control API may set any metadata through PATCH,
    /// though it may not mint a key with other metadata than its own.
    #[test]
    fn review_update_cannot_choose_metadata() {
        let pol = Policy::default_policy().unwrap();
        let scopes: Vec<Scope> = ["ai:*", "control:read"].iter().map(|s| Scope::parse(s).unwrap()).collect();
        let limits = pol.default_rate_limits().to_vec();
        let ops = Caller { limits: &limits, ..org_caller(&scopes) };
        let before = KeyRecord { id: "01TARGET".into(), ..me(&["ai:chat"], None) };
        let after = KeyRecord { meta: Some(r#"{"plan":"enterprise"}"#.into()), ..before.clone() };
        let mut mint = KeyInput {
            name: "x".into(),
            scopes: before.scopes.clone(),
            kind: KeyKind::Secret,
            expires_at: None,
            user_id: None,
            rate_limits: vec![],
            allowed_origins: vec![],
            resource_id: None,
            visitor_rate_limits: vec![],
            turnstile_required: false,
            consistency: Consistency::Strict,
            consistency_given: false,
            allowed_ips: vec![],
            meta: after.meta.clone(),
            credits: None,
        };
        assert!(check_create(&pol, &ops, &mut mint).is_err(), "minting with that metadata is refused");
        assert!(check_update(&pol, &ops, &before, &after).is_err(), "…but an update to it is allowed");
    }

    /// (Found in review; fixed.) a key may roll itself (or any key it may revoke); the new
    /// key's parent is the target's parent, not the caller, so revoking the
    /// caller (say, as leaked) does not revoke the key it obtained.
    #[test]
    fn review_a_key_can_roll_itself() {
        let pol = Policy::default_policy().unwrap();
        let k = me(&["ai:*", "control:read"], None);
        let limits = pol.default_rate_limits().to_vec();
        let caller = Caller { limits: &limits, consistency: k.consistency, ..org_caller(&k.scopes) };
        // Allowed, but the successor is the caller's child: revoking the
        // caller (say, as leaked) revokes it (tests/lifecycle.rs end to end).
        assert!(check_roll(&pol, &caller, &k).is_ok());
        let child = KeyRecord { parent_id: Some("01PARENT".into()), ..k.clone() };
        assert_eq!(rolled_parent(Some(&k.id), &child), Some(k.id.clone()), "a key's roll: its child");
        assert_eq!(rolled_parent(None, &child), Some("01PARENT".into()), "an operator's roll: the old parent's");
    }

    /// (Found in review; fixed.) a caller may roll (and so obtain a fresh plaintext of) a key
    /// whose metadata it could never mint: the new key carries the target's
    /// `meta` (say another account's), which the origin trusts.
    #[test]
    fn review_roll_hands_out_another_keys_metadata() {
        let pol = Policy::default_policy().unwrap();
        let scopes: Vec<Scope> = ["ai:*", "control:read"].iter().map(|s| Scope::parse(s).unwrap()).collect();
        let limits = pol.default_rate_limits().to_vec();
        let c = Caller { limits: &limits, meta: Some(r#"{"account":"acct_7"}"#), ..org_caller(&scopes) };
        let target = KeyRecord { id: "01TARGET".into(), ..me(&["ai:chat"], Some(r#"{"account":"acct_42"}"#)) };
        assert!(check_roll(&pol, &c, &target).is_err(), "acct_7's key obtains a new acct_42 key");
    }
}
