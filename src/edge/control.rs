//! The public control API, served by keyward itself (never proxied) to keys
//! with `control:read`, after the same authorization and rate limits as any
//! other route. The rules are in [`crate::control`]; the org's object does
//! the reads and writes.
//!
//! | method | path | |
//! | --- | --- | --- |
//! | POST | `/v1/api_keys` | mint a key (scopes within the caller's) |
//! | GET | `/v1/api_keys?cursor=&limit=` | the org's non-revoked keys, newest first |
//! | DELETE | `/v1/api_keys/{key_id}` | revoke (tombstone first, as the admin API) |
//! | PATCH | `/v1/api_keys/{key_id}` | update (within what the caller could mint) |
//! | POST | `/v1/api_keys/{key_id}/roll` | roll: a new key, the old one ending after `grace_seconds` |
//! | DELETE | `/v1/users/{user_id}/sessions` | revoke a user's JWT sessions (one's own; another's with a role that manages keys) |
//! | GET | `/v1/audit?cursor=&limit=` | the org's audit log, newest first |
//! | GET | `/v1/usage?from=&to=` | allowed and refused requests per key and hour |
//! | GET | `/v1/me` | the caller: org, user, role, scopes, whether it may create keys, the scopes it may grant |

use worker::{Env, Request, Response};

use super::{admin, call_org, call_org_with, json_response, read_body, Settings};
use crate::admin::{parse_key, OrgCommand, OrgRequest, RevokeCaller, MAX_BODY_BYTES};
use crate::authorize::{Grant, Refusal};
use crate::control::{self as rules, Caller as Rules};
use crate::error::{ApiError, ErrorCode};
use crate::ids;
use crate::path::CanonicalPath;
use crate::ratelimit::merge_limits;
use crate::records::KeyRecord;

/// A control route.
pub(super) enum Route {
    CreateKey,
    ListKeys,
    RevokeKey(String),
    UpdateKey(String),
    RollKey(String),
    RevokeSessions(String),
    Audit,
    Usage,
    Me,
}

/// The control route for an authorized request, if the policy says keyward
/// serves it.
pub(super) fn route(grant: &Grant, method: &str, path: &CanonicalPath) -> Option<Route> {
    if !grant.local {
        return None;
    }
    match (method, grant.route.as_str()) {
        ("POST", "/v1/api_keys") => Some(Route::CreateKey),
        ("GET", "/v1/api_keys") => Some(Route::ListKeys),
        ("DELETE", "/v1/api_keys/{key_id}") => path.segments().last().map(|id| Route::RevokeKey(id.to_owned())),
        ("PATCH", "/v1/api_keys/{key_id}") => path.segments().last().map(|id| Route::UpdateKey(id.to_owned())),
        ("POST", "/v1/api_keys/{key_id}/roll") => path.segments().nth(2).map(|id| Route::RollKey(id.to_owned())),
        ("DELETE", "/v1/users/{user_id}/sessions") => {
            path.segments().nth(2).map(|id| Route::RevokeSessions(id.to_owned()))
        }
        ("GET", "/v1/audit") => Some(Route::Audit),
        ("GET", "/v1/usage") => Some(Route::Usage),
        ("GET", "/v1/me") => Some(Route::Me),
        _ => None,
    }
}

/// The authorized caller.
pub(super) struct Caller<'a> {
    pub(super) grant: &'a Grant,
    pub(super) key: &'a KeyRecord,
    pub(super) request_id: &'a str,
    pub(super) now: i64,
}

pub(super) async fn handle(
    req: Request,
    env: &Env,
    settings: &Settings,
    caller: &Caller<'_>,
    route: Route,
    query: &str,
) -> Result<Response, Refusal> {
    let org_id = caller.grant.org_id.as_str();
    let actor = match &caller.grant.auth {
        crate::authorize::Auth::Jwt { .. } => format!("user:{}", caller.grant.user_id.as_deref().unwrap_or("")),
        _ => format!("key:{}", caller.grant.key_id),
    };
    // A write refused here, before the org's object, is recorded in the
    // audit log all the same (the object records those it refuses itself).
    // Refusals of the caller (4xx) only, as the object does: a 5xx is an
    // outage, not something the caller asked for and was denied.
    let refused_write = match &route {
        Route::CreateKey => Some(("key.create_refused", String::new())),
        Route::RevokeKey(id) => Some(("key.revoke_refused", id.clone())),
        Route::UpdateKey(id) => Some(("key.update_refused", id.clone())),
        Route::RollKey(id) => Some(("key.roll_refused", id.clone())),
        Route::RevokeSessions(id) => Some(("user.sessions_revoke_refused", id.clone())),
        _ => None,
    };
    let result = serve(req, env, settings, caller, route, query, &actor).await;
    let early = match &result {
        Err(Early(refusal)) if refusal.error.code.status() < 500 => Some(refusal),
        _ => None,
    };
    if let (Some(refusal), Some((action, target))) = (early, refused_write) {
        let (target, detail) = crate::admin::refused_entry(&target, &refusal.error);
        let command = OrgCommand::AuditRefused { org_id: org_id.into(), action: action.into(), target, detail };
        let request = OrgRequest { command, actor, request_id: caller.request_id.into(), now_ms: caller.now };
        if let Err(e) = call_org(env, org_id, &request).await {
            worker::console_warn!("keyward: recording a refused control write failed: {}", e.error);
        }
    }
    result.map_err(|e| match e {
        Early(r) | Late(r) => r,
    })
}

/// The caller of a revoke, as the org's object checks it.
fn revoke_caller(caller: &Caller<'_>) -> RevokeCaller {
    let session = crate::jwt::is_session_guard(&caller.key.id);
    RevokeCaller {
        scopes: caller.grant.scopes.clone(),
        user_id: caller.grant.user_id.clone(),
        key_id: (!session).then(|| caller.key.id.clone()),
        user_role: caller.grant.user_role.clone(),
    }
}

/// A refusal from this shell (before the org's object saw the command), or
/// one the object answered (and recorded, for a write).
enum Failure {
    Early(Refusal),
    Late(Refusal),
}
use Failure::{Early, Late};

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Self {
        Early(r)
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Early(e.into())
    }
}

async fn serve(
    mut req: Request,
    env: &Env,
    settings: &Settings,
    caller: &Caller<'_>,
    route: Route,
    query: &str,
    actor: &str,
) -> Result<Response, Failure> {
    let org_id = caller.grant.org_id.as_str();
    let fault = super::faults::Fault::of(&req);
    if matches!(
        route,
        Route::CreateKey | Route::RevokeKey(_) | Route::UpdateKey(_) | Route::RollKey(_) | Route::RevokeSessions(_)
    ) {
        rules::check_write_scope(&settings.policy, &caller.grant.scopes)?;
    }
    let command = match route {
        Route::CreateKey => {
            let body = read_body(&mut req, MAX_BODY_BYTES).await?;
            let mut input = parse_key(&body, &settings.policy, caller.now, settings.default_consistency)?;
            let session = crate::jwt::is_session_guard(&caller.key.id);
            let limits = if session {
                // A session's limits are its user's role's.
                let role = caller.grant.user_role.as_deref().unwrap_or("");
                settings.policy.session_rate_limits(role).to_vec()
            } else {
                merge_limits(settings.policy.default_rate_limits(), &caller.key.rate_limits)
            };
            if session {
                rules::check_session_may_mint(caller.key.created_at, caller.now)?;
            }
            let who = Rules {
                scopes: &caller.grant.scopes,
                user_id: caller.grant.user_id.as_deref(),
                user_role: caller.grant.user_role.as_deref(),
                // A JWT session mints as its user: the token's expiry does
                // not bind the key (the user's role and state do).
                expires_at: caller.key.expires_at.filter(|_| !session),
                limits: &limits,
                consistency: caller.key.consistency,
                allowed_ips: &caller.key.allowed_ips,
                meta: caller.key.meta.as_deref(),
                credits: caller.key.credits.is_some(),
            };
            rules::check_create(&settings.policy, &who, &mut input)?;
            admin::creatable(env, settings, &input).await?;
            // The org object re-checks the creating user's role and state
            // against its own records (KV may lag).
            let creator = caller.grant.user_id.clone();
            // A key minted by a key is its child (revoked with it, counted
            // against MAX_KEYS_PER_PARENT); a session's is its user's.
            let parent = (!session).then(|| caller.key.id.clone());
            let (status, body) =
                admin::mint(env, settings, org_id, input, creator, parent, actor, caller.request_id, caller.now)
                    .await
                    .map_err(Late)?;
            return Ok(json_response(status, body, caller.request_id));
        }
        Route::ListKeys => {
            let page = rules::page(query, rules::key_cursor)?;
            OrgCommand::ListKeys { org_id: org_id.into(), cursor: page.cursor, limit: page.limit }
        }
        Route::RevokeKey(key_id) => {
            if !ids::is_ulid(&key_id) {
                return Err(ApiError::new(ErrorCode::ResourceNotFound).into());
            }
            let who = revoke_caller(caller);
            OrgCommand::RevokeKey { org_id: org_id.into(), key_id, caller: Some(who), leaked_at_url: None }
        }
        Route::UpdateKey(key_id) => {
            if !ids::is_ulid(&key_id) {
                return Err(ApiError::new(ErrorCode::ResourceNotFound).into());
            }
            let body = read_body(&mut req, MAX_BODY_BYTES).await?;
            admin::updatable(env, settings, &body, caller.now).await?;
            let body =
                String::from_utf8(body).map_err(|_| ApiError::validation("body", "must be UTF-8 encoded JSON"))?;
            OrgCommand::UpdateKey { org_id: org_id.into(), key_id, body, caller: Some(revoke_caller(caller)) }
        }
        Route::RollKey(key_id) => {
            if !ids::is_ulid(&key_id) {
                return Err(ApiError::new(ErrorCode::ResourceNotFound).into());
            }
            // A roll hands out a new plaintext, as a mint does: a session
            // rolls only from a fresh sign-in.
            if crate::jwt::is_session_guard(&caller.key.id) {
                rules::check_session_may_mint(caller.key.created_at, caller.now)?;
            }
            let grace_ms = crate::admin::parse_roll(&read_body(&mut req, MAX_BODY_BYTES).await?)?;
            OrgCommand::RollKey { org_id: org_id.into(), key_id, grace_ms, caller: Some(revoke_caller(caller)) }
        }
        Route::RevokeSessions(user_id) => {
            if !ids::is_valid_id(&user_id) {
                return Err(ApiError::new(ErrorCode::ResourceNotFound).into());
            }
            let who = revoke_caller(caller);
            OrgCommand::RevokeSessions { org_id: org_id.into(), user_id, caller: Some(who) }
        }
        Route::Audit => {
            let page = rules::page(query, rules::audit_cursor)?;
            OrgCommand::ListAudit { org_id: org_id.into(), cursor: page.cursor, limit: page.limit }
        }
        Route::Usage => {
            let (from, to) = rules::range(query, caller.now)?;
            OrgCommand::Usage { org_id: org_id.into(), from, to }
        }
        Route::Me => {
            let data = rules::me(&settings.policy, caller.grant, caller.key);
            return Ok(json_response(200, crate::error::success(&data, None), caller.request_id));
        }
    };
    let request = OrgRequest { command, actor: actor.into(), request_id: caller.request_id.into(), now_ms: caller.now };
    let (status, body) = call_org_with(env, org_id, &request, fault).await.map_err(Late)?;
    Ok(json_response(status, body, caller.request_id))
}
