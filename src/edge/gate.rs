//! The authorizer path: canonicalize, parse the credential, read KV, decide,
//! proxy.

use futures_util::future::{select, Either};
use worker::{AbortController, Delay, Env, Fetch, Headers, Method, Request, RequestInit, Response};

use super::{settings, split_target, unavailable, Settings, KV_BINDING};
use crate::authorize::{authorize, extract_credential, parse_key, Facts, Grant, Records, Refusal};
use crate::error::{ApiError, ErrorCode};
use crate::guard::{GuardReply, GuardRequest, QuotaWire};
use crate::path::CanonicalPath;
use crate::ratelimit::{ceil_seconds, merge_limits};
use crate::records::{key_kv_key, org_kv_key, user_kv_key, KeyRecord, OrgRecord, UserRecord};
use crate::signing::{forward_header, identity_headers};

pub(super) async fn handle(req: Request, env: &Env, request_id: &str, now: i64) -> Result<Response, Refusal> {
    let settings = settings(env)?;
    let url = req.inner().url();
    let (raw_path, query) = split_target(&url);
    let path = CanonicalPath::parse(raw_path)?;

    let headers = req.headers();
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
    let method = req.inner().method();
    let facts = Facts { method: &method, path: &path, origin: origin.as_deref() };
    let records = Records { key: key.as_ref(), org: org.as_ref(), user: user.as_ref() };
    let grant = authorize(&facts, &presented, &records, &settings.policy, &settings.config, now)?;
    let quota = match (&key, settings.key_guard) {
        (Some(k), true) => guard_check(env, k, settings).await?,
        _ => None,
    };
    let mut resp = proxy(req, settings, &grant, &method, &path, query, request_id, now).await?;
    if let Some(q) = quota {
        let headers = resp.headers_mut();
        for (name, value) in q.headers() {
            let _ = headers.set(name, &value);
        }
    }
    Ok(resp)
}

/// One call to the key's Durable Object: refuses a revoked key (even if KV
/// still has the old record) and counts the request against its limits.
async fn guard_check(env: &Env, key: &KeyRecord, settings: &Settings) -> Result<Option<QuotaWire>, Refusal> {
    let limits = merge_limits(settings.policy.default_rate_limits(), &key.rate_limits);
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
    let init = worker::web_sys::ResponseInit::new();
    init.set_status(raw.status());
    init.set_headers(&headers);
    let out = worker::web_sys::Response::new_with_opt_readable_stream_and_init(raw.body().as_ref(), &init)
        .map_err(|e| unavailable("response", format!("{e:?}")))?;
    Ok(Response::from(out))
}
