//! The admin API (operators): authenticated with `ADMIN_TOKEN`, validated in
//! the core, applied by the org's Durable Object.
//!
//! | method | path | body |
//! | --- | --- | --- |
//! | PUT | `/admin/orgs/{org_id}` | `{"name", "baa_active"}` |
//! | PUT | `/admin/orgs/{org_id}/users/{user_id}` | `{"role", "disabled"?}` |
//! | POST | `/admin/orgs/{org_id}/api_keys` | `{"name", "scopes", "kind"?, "expires_at"?, "user_id"?}` |
//! | DELETE | `/admin/orgs/{org_id}/api_keys/{key_id}` | — |

use futures_util::StreamExt;
use worker::{Env, Method, Request, RequestInit, Response};

use super::{json_response, random, settings, unavailable, ORGS_BINDING};
use crate::admin::{self as core, OrgCommand, OrgRequest, MAX_BODY_BYTES};
use crate::authorize::Refusal;
use crate::error::{ApiError, ErrorCode};
use crate::ids;
use crate::path::CanonicalPath;
use crate::records::KeyRecord;
use crate::secrets_equal;
use crate::token;

enum Route<'a> {
    Org(&'a str),
    User(&'a str, &'a str),
    Keys(&'a str),
    Key(&'a str, &'a str),
}

pub(super) async fn handle(mut req: Request, env: &Env, request_id: &str, now: i64) -> Result<Response, Refusal> {
    let settings = settings(env)?;
    // Authenticate before anything else, including routing.
    let Some(expected) = settings.admin_token.as_deref() else {
        return Err(unavailable("configuration", "ADMIN_TOKEN is not set"));
    };
    let presented = req.headers().get("authorization").ok().flatten();
    let ok = presented
        .as_deref()
        .and_then(|v| v.split_at_checked(7))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer "))
        .is_some_and(|(_, tok)| secrets_equal(tok.as_bytes(), expected.as_bytes()));
    if !ok {
        return Err(ErrorCode::AdminUnauthorized.into());
    }

    let url = req.inner().url();
    let (raw_path, _) = super::split_target(&url);
    let path = CanonicalPath::parse(raw_path)?;
    let segs: Vec<&str> = path.segments().collect();
    let route = match segs.as_slice() {
        ["admin", "orgs", org] => Route::Org(org),
        ["admin", "orgs", org, "users", user] => Route::User(org, user),
        ["admin", "orgs", org, "api_keys"] => Route::Keys(org),
        ["admin", "orgs", org, "api_keys", key] => Route::Key(org, key),
        _ => return Err(ErrorCode::RouteNotFound.into()),
    };
    let method = req.inner().method();
    let allowed = match route {
        Route::Org(_) | Route::User(..) => "PUT",
        Route::Keys(_) => "POST",
        Route::Key(..) => "DELETE",
    };
    if method != allowed {
        return Err(Refusal {
            error: ApiError::new(ErrorCode::MethodNotAllowed),
            headers: vec![("Allow", allowed.into())],
        });
    }
    let org_id = match route {
        Route::Org(o) | Route::User(o, _) | Route::Keys(o) | Route::Key(o, _) => o,
    };
    if !ids::is_valid_id(org_id) {
        return Err(ApiError::new(ErrorCode::ResourceNotFound).into());
    }

    let mut plaintext = None;
    let command = match route {
        Route::Org(org) => {
            let input = core::parse_org(&read_body(&mut req).await?)?;
            OrgCommand::UpsertOrg { org_id: org.into(), name: input.name, baa_active: input.baa_active }
        }
        Route::User(org, user) => {
            if !ids::is_valid_id(user) {
                return Err(ApiError::new(ErrorCode::ResourceNotFound).into());
            }
            let input = core::parse_user(&read_body(&mut req).await?, &settings.policy)?;
            OrgCommand::UpsertUser {
                org_id: org.into(),
                user_id: user.into(),
                role: input.role,
                disabled: input.disabled,
            }
        }
        Route::Keys(org) => {
            let input = core::parse_key(&read_body(&mut req).await?, &settings.policy, now)?;
            let new = token::generate(&settings.config.format, input.kind, &random::<{ token::RANDOM_BYTES }>()?);
            let record = KeyRecord {
                id: ids::ulid(now, &random::<10>()?),
                org_id: org.into(),
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
            };
            let hash = new.hash.to_hex();
            plaintext = Some(new.plaintext);
            OrgCommand::CreateKey { record, hash }
        }
        Route::Key(org, key) => {
            if !ids::is_ulid(key) {
                return Err(ApiError::new(ErrorCode::ResourceNotFound).into());
            }
            OrgCommand::RevokeKey { org_id: org.into(), key_id: key.into() }
        }
    };
    let request = OrgRequest { command, actor: "admin".into(), request_id: request_id.into(), now_ms: now };
    let (status, body) = call_org(env, org_id, &request).await?;
    let body = match plaintext {
        // The plaintext joins the reply here, in the worker: the Org object
        // never sees it, and it is never logged or stored.
        Some(p) if status == 201 => {
            let mut v: serde_json::Value = serde_json::from_str(&body).map_err(|e| unavailable("org reply", e))?;
            v["data"]["plaintext"] = serde_json::Value::String(p);
            v.to_string()
        }
        _ => body,
    };
    Ok(json_response(status, body, request_id))
}

/// Reads the body, refusing more than [`MAX_BODY_BYTES`] without buffering
/// the rest.
async fn read_body(req: &mut Request) -> Result<Vec<u8>, Refusal> {
    let too_large =
        || Refusal::from(ApiError::with_message(ErrorCode::PayloadTooLarge, "The request body exceeds 65536 bytes."));
    if let Some(len) = req.headers().get("content-length").ok().flatten() {
        if len.trim().parse::<u64>().map_or(true, |n| n > MAX_BODY_BYTES as u64) {
            return Err(too_large());
        }
    }
    let mut out = Vec::new();
    let Ok(mut stream) = req.stream() else {
        return Ok(out);
    };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::invalid_request("The request body could not be read."))?;
        if out.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Sends a command to the org's Durable Object; returns its status and body.
async fn call_org(env: &Env, org_id: &str, request: &OrgRequest) -> Result<(u16, String), Refusal> {
    let ns = env.durable_object(ORGS_BINDING).map_err(|e| unavailable("ORGS binding", e))?;
    let stub = ns.id_from_name(org_id).and_then(|id| id.get_stub()).map_err(|e| unavailable("org stub", e))?;
    let body = serde_json::to_string(request).map_err(|e| unavailable("org command", e))?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_body(Some(body.into()));
    let req = Request::new_with_init("https://org.keyward.internal/command", &init)
        .map_err(|e| unavailable("org request", e))?;
    let mut resp = stub.fetch_with_request(req).await.map_err(|e| unavailable("org object", e))?;
    let text = resp.text().await.map_err(|e| unavailable("org reply", e))?;
    Ok((resp.status_code(), text))
}
