//! The authorizer path: canonicalize, parse the credential, read KV, decide,
//! ask the key's guard, proxy. Every decision is a call into the core.

use futures_util::future::{select, Either};
use worker::{AbortController, Context, Delay, Env, Fetch, Headers, Method, Request, RequestInit, Response};

use super::{control, settings, unavailable, Settings, KV_BINDING};
use crate::authorize::{
    authorize, extract_credential, parse_key, preauthorize, precheck, Facts, Grant, Records, Refusal,
};
use crate::cors::{self, BrowserOrigin};
use crate::error::{ApiError, ErrorCode};
use crate::guard::{GuardReply, GuardRequest, KeyRef, QuotaWire};
use crate::path::{check_query, split_url, CanonicalPath};
use crate::ratelimit::{ceil_seconds, merge_limits, RateLimit};
use crate::records::{org_kv_key, user_kv_key, KeyRecord, OrgRecord, UserRecord};
use crate::signing::{forwarded_headers, identity_headers};
use crate::token::KeyKind;

pub(super) async fn handle(
    req: Request,
    env: &Env,
    ctx: &Context,
    request_id: &str,
    now: i64,
) -> Result<Response, Refusal> {
    let settings = settings(env)?;
    let url = req.inner().url();
    let (raw_path, query) = split_url(&url);
    let path = CanonicalPath::parse(raw_path)?;
    check_query(query)?;

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
    let hash = presented.hash();
    let key = match cached_key(&hash, now) {
        Some(k) => k,
        None => {
            let Some(k) = read_json::<KeyRecord>(&kv, &hash.kv_key()).await? else {
                return Err(ErrorCode::InvalidApiKey.into());
            };
            cache_key(hash, &k, now);
            k
        }
    };
    // Revoked, expired or mismatched keys cost no more reads than unknown ones.
    precheck(&presented, &key, now)?;

    let origin = headers.get("origin").ok().flatten();
    let referer = headers.get("referer").ok().flatten();
    let facts = Facts { method: &method, path: &path, origin: origin.as_deref(), referer: referer.as_deref() };
    let key_ref = KeyRef { key_id: key.id.clone(), org_id: key.org_id.clone() };
    let client_ip = client_ip(headers.get("cf-connecting-ip").ok().flatten().as_deref());
    let limits = guard_limits(&key, settings, &client_ip);

    // The org (and user) reads and the key guard's check are independent; when
    // everything the key record alone can decide already passes, they run
    // concurrently, which hides the Durable Object hop behind the KV reads.
    // `authorize` still decides, in the designed order, and a request it
    // refuses after being counted is refunded: the guard never admits more
    // than N, and refusals never consume quota.
    let records = read_records(&kv, &key);
    let early = settings.key_guard && preauthorize(&facts, &presented, &key, &settings.policy, now);
    let (records, early) = if early {
        let check = GuardRequest::Check { key: key_ref.clone(), limits: limits.clone() };
        let (r, g) = futures_util::join!(records, super::guard::call(env, &key.id, &check));
        (r, Some(g))
    } else {
        (records.await, None)
    };
    let counted_at = match &early {
        Some(Ok(GuardReply::Allowed { counted_at, .. })) => Some(*counted_at),
        _ => None,
    };
    let refund = |reason: ErrorCode| {
        if let Some(at) = counted_at {
            refund_later(ctx, env, &key_ref, &limits, at, reason);
        }
    };
    let (org, user) = records.inspect_err(|r| refund(r.error.code))?;
    let records = Records { key: Some(&key), org: org.as_ref(), user: user.as_ref() };
    let grant = match authorize(&facts, &presented, &records, &settings.policy, &settings.config, now) {
        Ok(g) => g,
        Err(refusal) => {
            return Err(match &early {
                Some(Ok(GuardReply::Allowed { .. })) => {
                    refund(refusal.error.code);
                    refusal
                }
                Some(Ok(GuardReply::Revoked)) => ErrorCode::InvalidApiKey.into(),
                // Not counted as admitted (and already counted as limited):
                // the refusal stands as it is.
                Some(Ok(GuardReply::Limited { .. })) => refusal,
                _ => refused(env, settings, &key_ref, refusal).await,
            });
        }
    };
    let cors_headers = grant.cors_origin.as_ref().map(cors::response_headers).unwrap_or_default();
    let with_cors = |mut r: Refusal| {
        r.headers.extend(cors_headers.iter().cloned());
        r
    };
    let (quota, counted_at) = match early {
        Some(reply) => guard_verdict(reply).map_err(with_cors)?,
        None => guard_check(env, &key, settings, &key_ref, &limits).await.map_err(with_cors)?,
    };
    let quota_headers: Vec<_> = quota.iter().flat_map(QuotaWire::headers).collect();
    let with_quota = |mut r: Refusal| {
        r.headers.extend(quota_headers.iter().cloned());
        with_cors(r)
    };

    // Keyward's own routes (the control API) are served here, never proxied:
    // a route the policy marks as keyward's but no handler serves is a 404,
    // not a request for the origin.
    let control_route = control::route(&grant, &method, &path);
    if grant.local && control_route.is_none() {
        return Err(with_quota(ApiError::new(ErrorCode::RouteNotFound).into()));
    }
    if let Some(route) = control_route {
        let ctl = control::Caller { grant: &grant, key: &key, request_id, now };
        let mut resp = control::handle(req, env, settings, &ctl, route, query).await.map_err(with_quota)?;
        set_headers(&mut resp, quota_headers.iter().cloned().chain(cors_headers.clone()));
        return Ok(resp);
    }

    // A request admitted but refused before it reaches the origin is refunded.
    // (Once sent, a 502 or 504 counts: the origin may have acted on it.)
    let upstream = match build_upstream(&req, settings, &grant, &method, &path, query, request_id, now, &client_ip) {
        Ok(u) => u,
        Err(r) => {
            if let Some(at) = counted_at {
                refund_later(ctx, env, &key_ref, &limits, at, r.error.code);
            }
            return Err(with_quota(r));
        }
    };
    // Every answer to an admitted request carries the quota (and, for a
    // widget, CORS), the origin's failures included.
    let mut resp = send(upstream, settings, request_id).await.map_err(with_quota)?;
    set_headers(&mut resp, quota_headers.into_iter().chain(cors_headers));
    Ok(resp)
}

/// How long a key record read from KV is reused by this isolate.
const KEY_CACHE_MS: i64 = 30_000;
/// Most key records one isolate keeps.
const KEY_CACHE_MAX: usize = 10_000;

thread_local! {
    /// Key records by token hash, with the time they were read. Safe to
    /// reuse: a key record never changes except by revocation, and
    /// revocation is enforced by the key's guard on every request, not by
    /// KV (expiry is checked against the clock each time). Only found keys
    /// are kept, so a new key works on its very first request. (With
    /// `KEY_GUARD=off`, a benchmark-only mode, revocation then waits for
    /// this cache as well as for KV.)
    static KEY_CACHE: std::cell::RefCell<std::collections::HashMap<[u8; 32], (i64, KeyRecord)>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

fn cached_key(hash: &crate::token::KeyHash, now: i64) -> Option<KeyRecord> {
    KEY_CACHE.with(|c| c.borrow().get(&hash.0).filter(|(at, _)| now - at < KEY_CACHE_MS).map(|(_, k)| k.clone()))
}

fn cache_key(hash: crate::token::KeyHash, key: &KeyRecord, now: i64) {
    KEY_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= KEY_CACHE_MAX {
            c.retain(|_, (at, _)| now - *at < KEY_CACHE_MS);
            if c.len() >= KEY_CACHE_MAX {
                c.clear();
            }
        }
        c.insert(hash.0, (now, key.clone()));
    });
}

/// The org record and, for a user-bound key, the user record, read
/// concurrently.
async fn read_records(
    kv: &worker::kv::KvStore,
    key: &KeyRecord,
) -> Result<(Option<OrgRecord>, Option<UserRecord>), Refusal> {
    let org_key = org_kv_key(&key.org_id);
    let org_fut = read_json::<OrgRecord>(kv, &org_key);
    match &key.user_id {
        None => Ok((org_fut.await?, None)),
        Some(uid) => {
            let user_key = user_kv_key(&key.org_id, uid);
            let (o, u) = futures_util::join!(org_fut, read_json::<UserRecord>(kv, &user_key));
            Ok((o?, u?))
        }
    }
}

/// Gives a counted request back to the key's guard, after the response
/// (`waitUntil`): no one waits for it. If it is lost, the key has one
/// request less for the window: the limiter errs on the strict side.
fn refund_later(ctx: &Context, env: &Env, key: &KeyRef, limits: &[RateLimit], counted_at: i64, reason: ErrorCode) {
    let request = GuardRequest::Refund {
        key: key.clone(),
        names: limits.iter().map(|l| l.name.clone()).collect(),
        counted_at,
        reason: reason.as_str().to_ascii_lowercase(),
    };
    let env = env.clone();
    let key_id = key.key_id.clone();
    ctx.wait_until(async move {
        if let Err(e) = super::guard::call(&env, &key_id, &request).await {
            worker::console_warn!("keyward: refund to the key guard failed: {e}");
        }
    });
}

fn set_headers(resp: &mut Response, headers: impl Iterator<Item = (&'static str, String)>) {
    let out = resp.headers_mut();
    for (name, value) in headers {
        let _ = out.set(name, &value);
    }
}

/// A refusal of a key that exists in KV: before answering 402–405, ask the
/// key's guard, so that a key revoked a moment ago (while KV may still serve
/// its old record) gets the same `401` as an unknown key and never leaks its
/// scopes or its org's state. The guard also counts the refusal as usage.
async fn refused(env: &Env, settings: &Settings, key: &KeyRef, refusal: Refusal) -> Refusal {
    if !settings.key_guard || matches!(refusal.error.code, ErrorCode::InvalidApiKey | ErrorCode::ServiceUnavailable) {
        return refusal;
    }
    let request = GuardRequest::Refused { key: key.clone(), reason: refusal.error.code.as_str().to_ascii_lowercase() };
    match super::guard::call(env, &key.key_id, &request).await {
        Ok(GuardReply::RefusalRecorded) => refusal,
        Ok(GuardReply::Revoked) => ErrorCode::InvalidApiKey.into(),
        Ok(other) => unavailable("key guard", format!("unexpected reply {other:?}")),
        Err(e) => unavailable("key guard", e),
    }
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

/// The client IP for per-IP widget limits and `X-Forwarded-For`:
/// `CF-Connecting-IP`, which Cloudflare sets (clients cannot), if it looks
/// like an IP; else `unknown`.
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

/// The key's effective limits: its own over the policy's defaults, and for
/// a widget key the per-visitor limits too (one abusive client cannot
/// exhaust the site's budget).
fn guard_limits(key: &KeyRecord, settings: &Settings, ip: &str) -> Vec<RateLimit> {
    let mut limits = merge_limits(settings.policy.default_rate_limits(), &key.rate_limits);
    if key.kind == KeyKind::Widget {
        limits.extend(settings.policy.widget_ip_rate_limits().iter().map(|l| RateLimit {
            name: format!("{}@{}", l.name, cors::visitor(ip)),
            limit: l.limit,
            window_seconds: l.window_seconds,
        }));
    }
    limits
}

/// One call to the key's Durable Object: refuses a revoked key (even if KV
/// still has the old record) and counts the request against its limits.
async fn guard_check(
    env: &Env,
    key: &KeyRecord,
    settings: &Settings,
    key_ref: &KeyRef,
    limits: &[RateLimit],
) -> Result<(Option<QuotaWire>, Option<i64>), Refusal> {
    if !settings.key_guard {
        return Ok((None, None));
    }
    let request = GuardRequest::Check { key: key_ref.clone(), limits: limits.to_vec() };
    guard_verdict(super::guard::call(env, &key.id, &request).await)
}

/// What a check's answer means for the request: the quota to report and
/// when the request was counted (for a refund).
fn guard_verdict(reply: Result<GuardReply, String>) -> Result<(Option<QuotaWire>, Option<i64>), Refusal> {
    match reply.map_err(|e| unavailable("key guard", e))? {
        GuardReply::Allowed { quota, counted_at } => Ok((quota, Some(counted_at))),
        GuardReply::Revoked => Err(ErrorCode::InvalidApiKey.into()),
        GuardReply::Limited { retry_after_ms, quota } => {
            let mut headers = vec![("Retry-After", ceil_seconds(retry_after_ms).max(1).to_string())];
            headers.extend(quota.headers());
            Err(Refusal { error: ApiError::new(ErrorCode::RateLimited), headers })
        }
        other => Err(unavailable("key guard", format!("unexpected reply {other:?}"))),
    }
}

/// Reads and decodes a JSON record. A read error or an undecodable record is
/// a refusal (503), never an allow.
pub(super) async fn read_json<T: serde::de::DeserializeOwned>(
    kv: &worker::kv::KvStore,
    key: &str,
) -> Result<Option<T>, Refusal> {
    let text = kv.get(key).text().await.map_err(|e| unavailable("KV read", e))?;
    match text {
        None => Ok(None),
        Some(t) => serde_json::from_str(&t).map(Some).map_err(|e| unavailable("KV record decode", e)),
    }
}

/// The request for the origin: same method, `ORIGIN_URL`'s base path + the
/// canonical path + the raw query, the filtered client headers, the signed
/// identity, and the body streamed through (none for GET and HEAD).
#[allow(clippy::too_many_arguments)]
fn build_upstream(
    req: &Request,
    settings: &Settings,
    grant: &Grant,
    method: &str,
    path: &CanonicalPath,
    query: &str,
    request_id: &str,
    now: i64,
    client_ip: &str,
) -> Result<Request, Refusal> {
    let key = settings
        .signing_key
        .as_ref()
        .ok_or_else(|| unavailable("configuration", "ORIGIN_SIGNING_SECRET is not set (or shorter than 32 bytes)"))?;
    let bodyless = method == "GET" || method == "HEAD";
    let incoming: Vec<(String, String)> = req.headers().entries().collect();
    let out = Headers::new();
    for (name, value) in forwarded_headers(incoming.iter().map(|(n, v)| (n.as_str(), v.as_str()))) {
        if bodyless && name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        out.append(name, value).map_err(|e| unavailable("header copy", e))?;
    }
    // The path the origin receives, which is the path that is signed.
    let forwarded_path = format!("{}{}", settings.origin_base_path, path.as_str());
    let ts = now.div_euclid(1000);
    for (name, value) in identity_headers(grant, key, request_id, method, &forwarded_path, query, ts) {
        out.set(name, &value).map_err(|e| unavailable("header set", e))?;
    }
    if client_ip != "unknown" {
        out.set("X-Forwarded-For", client_ip).map_err(|e| unavailable("header set", e))?;
    }
    let url = req.inner().url();
    let proto = if url.starts_with("https:") { "https" } else { "http" };
    out.set("X-Forwarded-Proto", proto).map_err(|e| unavailable("header set", e))?;

    let mut target = format!("{}{}", settings.origin, forwarded_path);
    if !query.is_empty() {
        target.push('?');
        target.push_str(query);
    }
    let mut init = RequestInit::new();
    init.with_method(Method::from(method.to_owned())).with_headers(out).with_redirect(worker::RequestRedirect::Manual);
    if !bodyless {
        // The body is streamed through, never buffered.
        if let Some(body) = req.inner().body() {
            init.with_body(Some(body.into()));
        }
    }
    Request::new_with_init(&target, &init).map_err(|e| unavailable("origin request", e))
}

/// Sends to the origin (bounded by `ORIGIN_TIMEOUT_MS` to the response
/// headers) and re-wraps the response: same status and headers but the
/// origin's `Access-Control-*` (CORS is decided at the edge), the body
/// stream passed through, our request id set.
async fn send(upstream: Request, settings: &Settings, request_id: &str) -> Result<Response, Refusal> {
    let controller = AbortController::default();
    let signal = controller.signal();
    let fetch = Fetch::Request(upstream);
    let sending = Box::pin(fetch.send_with_signal(&signal));
    let timeout = Box::pin(Delay::from(std::time::Duration::from_millis(u64::from(settings.origin_timeout_ms))));
    let resp = match select(sending, timeout).await {
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
    let raw: worker::web_sys::Response = resp.into();
    let headers = worker::web_sys::Headers::new_with_headers(&raw.headers())
        .map_err(|e| unavailable("response headers", format!("{e:?}")))?;
    let _ = headers.set("x-request-id", request_id);
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
