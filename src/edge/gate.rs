//! The authorizer path: canonicalize, parse the credential, read KV, decide,
//! proxy.

use futures_util::future::{select, Either};
use worker::{AbortController, Delay, Env, Fetch, Headers, Method, Request, RequestInit, Response};

use super::{settings, split_target, unavailable, Settings, KV_BINDING};
use crate::authorize::{authorize, extract_credential, parse_key, Facts, Grant, Records, Refusal};
use crate::cors::{self, BrowserOrigin};
use crate::error::{ApiError, ErrorCode};
use crate::guard::{GuardReply, GuardRequest, QuotaWire};
use crate::path::CanonicalPath;
use crate::ratelimit::{ceil_seconds, merge_limits, RateLimit};
use crate::records::{key_kv_key, org_kv_key, user_kv_key, KeyRecord, OrgRecord, UserRecord};
use crate::signing::{forward_header, identity_headers};
use crate::token::KeyKind;

pub(super) async fn handle(req: Request, env: &Env, request_id: &str, now: i64) -> Result<Response, Refusal> {
    let settings = settings(env)?;
    let url = req.inner().url();
    let (raw_path, query) = split_target(&url);
    let path = CanonicalPath::parse(raw_path)?;

    let headers = req.headers();
    let method = req.inner().method();
    if method == "OPTIONS" {
        if let Some(requested) = headers.get("access-control-request-method").ok().flatten() {
            return preflight(settings, &path, headers.get("origin").ok().flatten().as_deref(), &requested, request_id);
        }
    }
    // A header value that is not a valid string is treated as absent here and
    // then fails the credential check; it never reaches a store.
    let authorization = headers.get("authorization").ok().flatten();
    let x_api_key = headers.get("x-api-key").ok().flatten();
    let token = extract_credential(authorization.as_deref(), x_api_key.as_deref())?;
    let presented = parse_key(&settings.config.format, token)?;

    let kv = env.kv(KV_BINDING).map_err(|e| unavailable("KV binding", e))?;
    let key: Option<KeyRecord> = read_json(&kv, &key_kv_key(&presented.hash().to_hex())).await?;
    let (org, user) = match &key {
        None => (None, None),
        Some(k) => {
            let org_key = org_kv_key(&k.org_id);
            let org_fut = read_json::<OrgRecord>(&kv, &org_key);
            match &k.user_id {
                None => (org_fut.await?, None),
                Some(uid) => {
                    let user_key = user_kv_key(&k.org_id, uid);
                    let (o, u) = futures_util::join!(org_fut, read_json::<UserRecord>(&kv, &user_key));
                    (o?, u?)
                }
            }
        }
    };
    let origin = headers.get("origin").ok().flatten();
    let referer = headers.get("referer").ok().flatten();
    let facts = Facts { method: &method, path: &path, origin: origin.as_deref(), referer: referer.as_deref() };
    let records = Records { key: key.as_ref(), org: org.as_ref(), user: user.as_ref() };
    let grant = authorize(&facts, &presented, &records, &settings.policy, &settings.config, now)?;
    let cors_headers = grant.cors_origin.as_ref().map(cors::response_headers).unwrap_or_default();
    let quota = match (&key, settings.key_guard) {
        (Some(k), true) => {
            let ip = client_ip(headers.get("cf-connecting-ip").ok().flatten().as_deref());
            guard_check(env, k, settings, &ip).await.map_err(|mut r| {
                r.headers.extend(cors_headers.iter().cloned());
                r
            })?
        }
        _ => None,
    };
    let mut resp = proxy(req, settings, &grant, &method, &path, query, request_id, now).await?;
    let out = resp.headers_mut();
    for (name, value) in quota.iter().flat_map(QuotaWire::headers).chain(cors_headers) {
        let _ = out.set(name, &value);
    }
    Ok(resp)
}

/// Answers a CORS preflight at the edge; it is never proxied.
///
/// A preflight carries no key, so it cannot say which keys or origins are
/// allowed without becoming an oracle. It is therefore answered the same for
/// every well-formed origin, from the policy alone: `204` with the
/// widget-capable methods of the path. The actual request is where the
/// key's allowed origins are enforced: a disallowed origin gets `403` with no
/// CORS headers, which the browser reports as a CORS failure.
fn preflight(
    settings: &Settings,
    path: &CanonicalPath,
    origin: Option<&str>,
    requested: &str,
    request_id: &str,
) -> Result<Response, Refusal> {
    let origin = origin.and_then(BrowserOrigin::parse).ok_or_else(|| {
        ApiError::with_message(ErrorCode::OriginNotAllowed, "A CORS preflight needs a valid Origin header.")
    })?;
    let methods = settings.policy.widget_methods(path);
    if methods.is_empty() {
        return Err(ApiError::new(ErrorCode::RouteNotFound).into());
    }
    if !methods.contains(&requested) {
        return Err(Refusal {
            error: ApiError::new(ErrorCode::MethodNotAllowed),
            headers: vec![("Allow", methods.join(", "))],
        });
    }
    let headers = Headers::new();
    for (name, value) in cors::preflight_headers(&origin, &methods) {
        let _ = headers.set(name, &value);
    }
    let _ = headers.set("x-request-id", request_id);
    let _ = headers.set("cache-control", "no-store");
    Ok(Response::builder().with_status(204).with_headers(headers).empty())
}

/// The client IP for per-IP widget limits: `CF-Connecting-IP`, which
/// Cloudflare sets (clients cannot), if it looks like an IP; else `unknown`.
fn client_ip(header: Option<&str>) -> String {
    match header {
        Some(ip)
            if !ip.is_empty()
                && ip.len() <= 45
                && ip.bytes().all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b':') =>
        {
            ip.to_ascii_lowercase()
        }
        _ => "unknown".to_owned(),
    }
}

/// One call to the key's Durable Object: refuses a revoked key (even if KV
/// still has the old record) and counts the request against its limits.
async fn guard_check(env: &Env, key: &KeyRecord, settings: &Settings, ip: &str) -> Result<Option<QuotaWire>, Refusal> {
    let mut limits = merge_limits(settings.policy.default_rate_limits(), &key.rate_limits);
    if key.kind == KeyKind::Widget {
        // Per visitor as well: one abusive client cannot exhaust the site's budget.
        limits.extend(settings.policy.widget_ip_rate_limits().iter().map(|l| RateLimit {
            name: format!("{}@{ip}", l.name),
            limit: l.limit,
            window_seconds: l.window_seconds,
        }));
    }
    let request = GuardRequest::Check { limits };
    match super::guard::call(env, &key.id, &request).await.map_err(|e| unavailable("key guard", e))? {
        GuardReply::Allowed { quota } => Ok(quota),
        GuardReply::Revoked => Err(ErrorCode::InvalidApiKey.into()),
        GuardReply::Limited { retry_after_ms, quota } => {
            let mut headers = vec![("Retry-After", ceil_seconds(retry_after_ms).max(1).to_string())];
            headers.extend(quota.headers());
            Err(Refusal { error: ApiError::new(ErrorCode::RateLimited), headers })
        }
        GuardReply::RevokeRecorded { .. } => Err(unavailable("key guard", "unexpected reply")),
    }
}

/// Reads and decodes a JSON record. A read error or an undecodable record is
/// a refusal (503), never an allow.
async fn read_json<T: serde::de::DeserializeOwned>(kv: &worker::kv::KvStore, key: &str) -> Result<Option<T>, Refusal> {
    let text = kv.get(key).text().await.map_err(|e| unavailable("KV read", e))?;
    match text {
        None => Ok(None),
        Some(t) => serde_json::from_str(&t).map(Some).map_err(|e| unavailable("KV record decode", e)),
    }
}

#[allow(clippy::too_many_arguments)]
async fn proxy(
    req: Request,
    settings: &Settings,
    grant: &Grant,
    method: &str,
    path: &CanonicalPath,
    query: &str,
    request_id: &str,
    now: i64,
) -> Result<Response, Refusal> {
    let secret = settings
        .signing_secret
        .as_deref()
        .ok_or_else(|| unavailable("configuration", "ORIGIN_SIGNING_SECRET is not set"))?;
    let out = Headers::new();
    for (name, value) in req.headers().entries() {
        if forward_header(&name) {
            out.append(&name, &value).map_err(|e| unavailable("header copy", e))?;
        }
    }
    let ts = now.div_euclid(1000);
    for (name, value) in identity_headers(grant, secret.as_bytes(), request_id, method, path.as_str(), query, ts) {
        out.set(name, &value).map_err(|e| unavailable("header set", e))?;
    }
    let mut url = format!("{}{}", settings.origin_url, path.as_str());
    if !query.is_empty() {
        url.push('?');
        url.push_str(query);
    }
    let mut init = RequestInit::new();
    init.with_method(Method::from(method.to_owned())).with_headers(out).with_redirect(worker::RequestRedirect::Manual);
    // The body is streamed through, never buffered.
    if let Some(body) = req.inner().body() {
        init.with_body(Some(body.into()));
    }
    let upstream = Request::new_with_init(&url, &init).map_err(|e| unavailable("origin request", e))?;

    let controller = AbortController::default();
    let signal = controller.signal();
    let fetch = Fetch::Request(upstream);
    let send = Box::pin(fetch.send_with_signal(&signal));
    let timeout = Box::pin(Delay::from(std::time::Duration::from_millis(u64::from(settings.origin_timeout_ms))));
    let resp = match select(send, timeout).await {
        Either::Left((Ok(resp), _)) => resp,
        Either::Left((Err(e), _)) => {
            worker::console_warn!("keyward: origin fetch failed: {e} ({request_id})");
            return Err(ApiError::new(ErrorCode::OriginUnavailable).into());
        }
        Either::Right(((), _)) => {
            controller.abort();
            worker::console_warn!("keyward: origin timed out ({request_id})");
            return Err(ApiError::new(ErrorCode::OriginTimeout).into());
        }
    };
    // Re-wrap the origin response: same status and headers, the body stream
    // passed through, our request id set.
    let raw: worker::web_sys::Response = resp.into();
    let headers = worker::web_sys::Headers::new_with_headers(&raw.headers())
        .map_err(|e| unavailable("response headers", format!("{e:?}")))?;
    let _ = headers.set("x-request-id", request_id);
    // CORS is decided at the edge: the origin's own CORS headers never pass.
    let names: Vec<String> = headers.keys().into_iter().filter_map(|k| k.ok()).filter_map(|k| k.as_string()).collect();
    for name in names.iter().filter(|n| n.to_ascii_lowercase().starts_with("access-control-")) {
        let _ = headers.delete(name);
    }
    let init = worker::web_sys::ResponseInit::new();
    init.set_status(raw.status());
    init.set_headers(&headers);
    let out = worker::web_sys::Response::new_with_opt_readable_stream_and_init(raw.body().as_ref(), &init)
        .map_err(|e| unavailable("response", format!("{e:?}")))?;
    Ok(Response::from(out))
}
