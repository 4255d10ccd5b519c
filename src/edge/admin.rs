//! The admin API (operators): authenticated with `ADMIN_TOKEN`, validated in
//! the core, applied by the org's Durable Object.
//!
//! | method | path | body |
//! | --- | --- | --- |
//! | PUT | `/admin/orgs/{org_id}` | `{"name", "baa_active"}` |
//! | PUT | `/admin/orgs/{org_id}/users/{user_id}` | `{"role", "disabled"?}` |
//! | DELETE | `/admin/orgs/{org_id}/users/{user_id}/sessions` | — (revoke the user's JWT sessions) |
//! | POST | `/admin/orgs/{org_id}/api_keys` | `{"name", "scopes", "kind"?, "expires_at"?, "user_id"?, "rate_limits"?, "allowed_origins"?, "resource_id"?, "visitor_rate_limits"?, "turnstile_required"?, "consistency"?}` |
//! | DELETE | `/admin/orgs/{org_id}/api_keys/{key_id}` | — |
//! | PATCH | `/admin/orgs/{org_id}/api_keys/{key_id}` | any of `{"name", "meta", "scopes", "rate_limits", "visitor_rate_limits", "credits", "allowed_origins", "allowed_ips"}` |
//! | POST | `/admin/orgs/{org_id}/api_keys/{key_id}/roll` | `{"grace_seconds"?}` |
//! | GET | `/admin/orgs/{org_id}/api_keys/{key_id}/guard` | — (the key's guard: calls, writes, leases, bytes) |
//! | PUT, GET | `/admin/public_suffix_list` | the list's text (`data/public_suffix_list.dat`) |

use worker::{Env, Request, Response};

use sha2::{Digest, Sha256};

use super::{call_org, json_response, random, read_body, settings, unavailable, with_plaintext, Settings, KV_BINDING};
use crate::admin::AdminTokens;
use crate::admin::{self as core, KeyInput, OrgCommand, OrgRequest, MAX_BODY_BYTES};
use crate::authorize::Refusal;
use crate::error::{ApiError, ErrorCode};
use crate::ids;
use crate::path::{split_url, CanonicalPath};
use crate::psl::{self, ListInfo, SuffixList};
use crate::records::KeyRecord;
use crate::token;

enum Route<'a> {
    Org(&'a str),
    User(&'a str, &'a str),
    Sessions(&'a str, &'a str),
    Keys(&'a str),
    Key(&'a str, &'a str),
    Roll(&'a str, &'a str),
    Guard(&'a str, &'a str),
}

/// The operator whose admin token the request carries in
/// `Authorization: Bearer <token>` (every configured token compared in
/// constant time), if any.
pub(super) fn admin_operator<'a>(req: &Request, tokens: &'a AdminTokens) -> Option<&'a str> {
    let presented = req.headers().get("authorization").ok().flatten()?;
    let (scheme, token) = presented.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case("bearer ") {
        return None;
    }
    tokens.operator(token)
}

pub(super) async fn handle(mut req: Request, env: &Env, request_id: &str, now: i64) -> Result<Response, Refusal> {
    let settings = settings(env)?;
    // Authenticate before anything else, including routing.
    if settings.admin_tokens.is_empty() {
        return Err(unavailable("configuration", "no admin token is set (ADMIN_TOKEN or ADMIN_TOKENS)"));
    }
    let Some(operator) = admin_operator(&req, &settings.admin_tokens) else {
        return Err(ErrorCode::AdminUnauthorized.into());
    };
    let actor = format!("admin:{operator}");

    let url = req.inner().url();
    let (raw_path, _) = split_url(&url);
    let path = CanonicalPath::parse(raw_path)?;
    let segs: Vec<&str> = path.segments().collect();
    if segs == ["admin", "public_suffix_list"] {
        return public_suffix_list(req, env, request_id, now).await;
    }
    let route = match segs.as_slice() {
        ["admin", "orgs", org] => Route::Org(org),
        ["admin", "orgs", org, "users", user] => Route::User(org, user),
        ["admin", "orgs", org, "users", user, "sessions"] => Route::Sessions(org, user),
        ["admin", "orgs", org, "api_keys"] => Route::Keys(org),
        ["admin", "orgs", org, "api_keys", key] => Route::Key(org, key),
        ["admin", "orgs", org, "api_keys", key, "guard"] => Route::Guard(org, key),
        ["admin", "orgs", org, "api_keys", key, "roll"] => Route::Roll(org, key),
        _ => return Err(ErrorCode::RouteNotFound.into()),
    };
    let method = req.inner().method();
    let allowed = match route {
        Route::Org(_) | Route::User(..) => "PUT",
        Route::Keys(_) | Route::Roll(..) => "POST",
        Route::Key(..) if method == "PATCH" => "PATCH",
        Route::Key(..) => "DELETE, PATCH",
        Route::Sessions(..) => "DELETE",
        Route::Guard(..) => "GET",
    };
    if !allowed.split(", ").any(|m| m == method) {
        return Err(Refusal {
            error: ApiError::new(ErrorCode::MethodNotAllowed),
            headers: vec![("Allow", allowed.into())],
        });
    }
    let org_id = match route {
        Route::Org(o)
        | Route::User(o, _)
        | Route::Sessions(o, _)
        | Route::Keys(o)
        | Route::Key(o, _)
        | Route::Roll(o, _)
        | Route::Guard(o, _) => o,
    };
    if !ids::is_valid_id(org_id) {
        return Err(ApiError::new(ErrorCode::ResourceNotFound).into());
    }

    let command = match route {
        Route::Org(org) => {
            let input = core::parse_org(&read_body(&mut req, MAX_BODY_BYTES).await?)?;
            OrgCommand::UpsertOrg { org_id: org.into(), name: input.name, baa_active: input.baa_active }
        }
        Route::User(org, user) => {
            if !ids::is_valid_id(user) {
                return Err(ApiError::new(ErrorCode::ResourceNotFound).into());
            }
            let input = core::parse_user(&read_body(&mut req, MAX_BODY_BYTES).await?, &settings.policy)?;
            OrgCommand::UpsertUser {
                org_id: org.into(),
                user_id: user.into(),
                role: input.role,
                disabled: input.disabled,
            }
        }
        Route::Sessions(org, user) => {
            if !ids::is_valid_id(user) {
                return Err(ApiError::new(ErrorCode::ResourceNotFound).into());
            }
            OrgCommand::RevokeSessions { org_id: org.into(), user_id: user.into(), caller: None }
        }
        Route::Keys(org) => {
            let body = read_body(&mut req, MAX_BODY_BYTES).await?;
            let input = core::parse_key(&body, &settings.policy, now, settings.default_consistency)?;
            creatable(env, settings, &input).await?;
            let (status, body) = mint(env, settings, org, input, None, None, &actor, request_id, now).await?;
            return Ok(json_response(status, body, request_id));
        }
        Route::Key(_, key) | Route::Roll(_, key) if !ids::is_ulid(key) => {
            return Err(ApiError::new(ErrorCode::ResourceNotFound).into());
        }
        Route::Key(org, key) if method == "PATCH" => {
            let body = read_body(&mut req, MAX_BODY_BYTES).await?;
            updatable(env, settings, &body, now).await?;
            let body =
                String::from_utf8(body).map_err(|_| ApiError::validation("body", "must be UTF-8 encoded JSON"))?;
            OrgCommand::UpdateKey { org_id: org.into(), key_id: key.into(), body, caller: None }
        }
        Route::Key(org, key) => {
            OrgCommand::RevokeKey { org_id: org.into(), key_id: key.into(), caller: None, leaked_at_url: None }
        }
        Route::Roll(org, key) => {
            let grace_ms = core::parse_roll(&read_body(&mut req, MAX_BODY_BYTES).await?)?;
            OrgCommand::RollKey { org_id: org.into(), key_id: key.into(), grace_ms, caller: None }
        }
        Route::Guard(org, key) => return guard_stats(env, settings, org, key, request_id, now).await,
    };
    let request = OrgRequest { command, actor: actor.clone(), request_id: request_id.into(), now_ms: now };
    let (status, body) = call_org(env, org_id, &request).await?;
    Ok(json_response(status, body, request_id))
}

/// The checks of a new key that need the deployment (admin and control API
/// alike): a key that requires Turnstile needs a deployment that can verify
/// it, and a wildcard origin must not stand over a public suffix.
pub(super) async fn creatable(env: &Env, settings: &Settings, input: &KeyInput) -> Result<(), Refusal> {
    if input.turnstile_required && (settings.turnstile.is_none() || settings.config.visitor_tokens.is_none()) {
        return Err(ApiError::validation(
            "turnstile_required",
            "this deployment has no TURNSTILE_SECRET_KEY (or no ORIGIN_SIGNING_SECRET, which signs visitor tokens), so visitors could never pass",
        )
        .into());
    }
    check_origins(env, &input.allowed_origins).await
}

/// The checks of a key update that need the deployment: its body parses
/// (early, so a malformed one costs no call to the org's object; the object
/// parses it again) and a wildcard origin stands over no public suffix.
pub(super) async fn updatable(env: &Env, settings: &Settings, body: &[u8], now: i64) -> Result<(), Refusal> {
    let patch = core::parse_patch(body, &settings.policy, now)?;
    check_origins(env, patch.allowed_origins.as_deref().unwrap_or_default()).await
}

async fn check_origins(env: &Env, origins: &[crate::cors::OriginPattern]) -> Result<(), Refusal> {
    if core::needs_suffix_list(origins) {
        let list = suffix_list(env).await?;
        core::check_public_suffixes(origins, &list)?;
    }
    Ok(())
}

/// The loaded public suffix list, read and parsed for each key creation
/// that needs it (rare; ~150 KB scanned in a few ms, and never a copy that
/// is older than KV's). None loaded: 503, since a wildcard origin cannot be
/// checked (never let through unchecked).
async fn suffix_list(env: &Env) -> Result<SuffixList, Refusal> {
    let kv = super::kv::namespace(env, KV_BINDING).map_err(|e| unavailable("KV binding", e))?;
    let Some(text) = kv.text(psl::KV_LIST).await.map_err(|e| unavailable("KV read", e))? else {
        return Err(ApiError::with_message(
            ErrorCode::ServiceUnavailable,
            "No public suffix list is loaded, so a wildcard origin cannot be checked: an operator must PUT /admin/public_suffix_list.",
        )
        .into());
    };
    SuffixList::parse(&text).map(|(list, _)| list).map_err(|e| unavailable("public suffix list", e))
}

/// `PUT /admin/public_suffix_list` (the list's text: stored in KV after it
/// parses) and `GET` (what is loaded). Deployment-wide, so in no org's
/// audit log.
async fn public_suffix_list(mut req: Request, env: &Env, request_id: &str, now: i64) -> Result<Response, Refusal> {
    let kv = super::kv::namespace(env, KV_BINDING).map_err(|e| unavailable("KV binding", e))?;
    let info = match req.inner().method().as_str() {
        "PUT" => {
            let body = read_body(&mut req, psl::MAX_LIST_BYTES).await?;
            let text = std::str::from_utf8(&body).map_err(|_| ApiError::validation("body", "is not UTF-8 text"))?;
            let (_, rules) = SuffixList::parse(text).map_err(|e| ApiError::validation("body", &e))?;
            let info = ListInfo { rules, sha256: crate::hex(&Sha256::digest(&body)), updated_at: ids::rfc3339(now) };
            let info_json = serde_json::to_string(&info).map_err(|e| unavailable("KV encode", e))?;
            // The text first: the info names a list that is there.
            for (key, value) in [(psl::KV_LIST, text), (psl::KV_INFO, info_json.as_str())] {
                kv.put_text(key, value).await.map_err(|e| unavailable("KV put", e))?;
            }
            info_json
        }
        "GET" => kv
            .text(psl::KV_INFO)
            .await
            .map_err(|e| unavailable("KV read", e))?
            .ok_or_else(|| Refusal::from(ApiError::new(ErrorCode::ResourceNotFound)))?,
        _ => {
            return Err(Refusal {
                error: ApiError::new(ErrorCode::MethodNotAllowed),
                headers: vec![("Allow", "GET, PUT".into())],
            })
        }
    };
    Ok(json_response(200, crate::error::success_raw(&info), request_id))
}

/// Mints a key (admin API and control API alike): generates the token and
/// the id here, stores hash and metadata through the org's object, and adds
/// the plaintext to the reply.
#[allow(clippy::too_many_arguments)]
pub(super) async fn mint(
    env: &Env,
    settings: &Settings,
    org_id: &str,
    input: KeyInput,
    creator: Option<String>,
    parent_id: Option<String>,
    actor: &str,
    request_id: &str,
    now: i64,
) -> Result<(u16, String), Refusal> {
    let new = token::generate(&settings.config.format, input.kind, &random::<{ token::RANDOM_BYTES }>()?);
    let record = KeyRecord {
        id: ids::ulid(now, &random::<10>()?),
        org_id: org_id.into(),
        user_id: input.user_id,
        name: input.name,
        kind: input.kind,
        scopes: input.scopes,
        prefix: new.prefix.clone(),
        last_four: new.last_four.clone(),
        created_at: now,
        expires_at: input.expires_at,
        revoked_at: None,
        rate_limits: input.rate_limits,
        allowed_origins: input.allowed_origins,
        resource_id: input.resource_id,
        visitor_rate_limits: input.visitor_rate_limits,
        turnstile_required: input.turnstile_required,
        consistency: input.consistency,
        allowed_ips: input.allowed_ips,
        meta: input.meta,
        parent_id,
        leaked_at: None,
        guard_id: None,
        version: 0,
        credits: input.credits,
        rolled_to: None,
    };
    let command = OrgCommand::CreateKey { record: Box::new(record), hash: new.hash.to_hex(), creator };
    let request = OrgRequest { command, actor: actor.into(), request_id: request_id.into(), now_ms: now };
    let (status, body) = call_org(env, org_id, &request).await?;
    if status == 201 {
        Ok((status, with_plaintext(&body, new.plaintext)?))
    } else {
        Ok((status, body))
    }
}

/// `GET /admin/orgs/{org_id}/api_keys/{key_id}/guard`: the key's guard as it
/// is now — calls received and rows written since it was loaded, live
/// leases and the units they hold, tracked visitors, the bytes of its rows
/// and the bound they are held to. The key must be one of the org's (asked
/// of the org's object, not KV).
async fn guard_stats(
    env: &Env,
    settings: &Settings,
    org_id: &str,
    key_id: &str,
    request_id: &str,
    now: i64,
) -> Result<Response, Refusal> {
    if !ids::is_ulid(key_id) {
        return Err(ApiError::new(ErrorCode::ResourceNotFound).into());
    }
    let command = OrgCommand::LeaseFacts { org_id: org_id.into(), key_id: key_id.into() };
    let request = OrgRequest { command, actor: "admin".into(), request_id: request_id.into(), now_ms: now };
    let (status, body) = call_org(env, org_id, &request).await?;
    let key = match (status, crate::from_json::<super::FactsEnvelope>(&body)) {
        (200, Ok(super::FactsEnvelope { data: crate::guard::Facts { key: Some(k), org: Some(_), .. } })) => k,
        (200, _) => return Err(ApiError::new(ErrorCode::ResourceNotFound).into()),
        _ => return Ok(json_response(status, body, request_id)),
    };
    // A rolled key's guard is its roll family's.
    let stats = super::guard::call_raw(env, key.guard(), &crate::guard::GuardRequest::Stats)
        .await
        .map_err(|e| unavailable("key guard", e))?;
    let limits = crate::ratelimit::merge_limits(settings.policy.default_rate_limits(), &key.rate_limits);
    let visitor_limits = if key.kind != crate::token::KeyKind::Widget {
        &[]
    } else if key.visitor_rate_limits.is_empty() {
        settings.policy.widget_ip_rate_limits()
    } else {
        &key.visitor_rate_limits
    };
    let mut data: serde_json::Value = serde_json::from_str(&stats).map_err(|e| unavailable("stats decode", e))?;
    data["key_id"] = serde_json::Value::String(key.id.clone());
    data["consistency"] = serde_json::Value::String(key.consistency.as_str().into());
    data["byte_bound"] = crate::guard::byte_bound(&limits, visitor_limits).into();
    Ok(json_response(200, crate::error::success(&data.to_string(), None), request_id))
}
