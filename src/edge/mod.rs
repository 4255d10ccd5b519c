//! The wasm shell: reads the clock, randomness, KV and Durable Objects,
//! proxies to the origin, and answers. It decides nothing itself: every
//! decision is a call into the core.
//!
//! No handler returns `Err` to the runtime: every failure becomes an
//! envelope (`respond_with_errors` is deliberately not used, since it would
//! put internal error text in the body).

mod admin;
mod control;
mod faults;
mod gate;
mod guard;
mod jwt;
mod kv;
mod org;
mod scanning;

use std::sync::OnceLock;

use worker::{event, Context, Env, Headers, Request, Response};

use crate::authorize::{Config, Refusal};
use crate::error::{ApiError, ErrorCode};
use crate::policy::Policy;
use crate::token::TokenFormat;

/// KV namespace binding of the edge read model.
pub(crate) const KV_BINDING: &str = "KEYWARD_KV";
/// Durable Object namespace binding of the org objects.
pub(crate) const ORGS_BINDING: &str = "ORGS";
/// Durable Object namespace binding of the per-key guards.
pub(crate) const KEYS_BINDING: &str = "KEYS";

/// Settings parsed once per isolate from vars, secrets and the policy.
pub(crate) struct Settings {
    pub(crate) config: Config,
    pub(crate) policy: Policy,
    /// `ORIGIN_URL`'s scheme, host and port (`https://api.internal:8443`).
    pub(crate) origin: String,
    /// `ORIGIN_URL`'s path without a trailing slash (`""` or `/base`),
    /// prefixed to the canonical path.
    pub(crate) origin_base_path: String,
    pub(crate) origin_timeout_ms: u32,
    /// `GUARD_TIMEOUT_MS` (default 2000): how long a request waits for its
    /// key's guard before it is answered 503 ([`guard::ask`]).
    pub(crate) guard_timeout_ms: u32,
    pub(crate) signing_key: Option<crate::signing::SigningKey>,
    /// `ADMIN_TOKEN` (named `default`) and `ADMIN_TOKENS` (`name=token,…`).
    pub(crate) admin_tokens: crate::admin::AdminTokens,
    /// `TURNSTILE_SECRET_KEY` and `TURNSTILE_VERIFY_URL` (siteverify), when
    /// a secret is set.
    pub(crate) turnstile: Option<(String, String)>,
    /// `LEASE_MS` (default 1000, 50–10000) and, in benchmark builds only,
    /// `KEY_GUARD` (see [`crate::flow::FlowSettings`]).
    pub(crate) flow: crate::flow::FlowSettings,
    /// `DEFAULT_CONSISTENCY` (default `strict`): the mode of a key created
    /// without one.
    pub(crate) default_consistency: crate::records::Consistency,
    /// `GUARD_DELAY_MS` (benchmark builds only, default 0): every call to a
    /// key's guard waits this long first, to price a guard far away.
    #[cfg_attr(not(feature = "bench"), allow(dead_code))]
    pub(crate) guard_delay_ms: u32,
    /// `USAGE_ROLLUP_SECONDS` (default 30): how often a key's guard rolls
    /// its usage counts up to the org (the staleness of `/v1/usage`).
    pub(crate) usage_rollup_ms: i64,
    /// `SECRET_SCANNING_KEYS`: GitHub's secret-scanning public keys (its
    /// published document); without it the leaked-key endpoint is a 404.
    pub(crate) scanner_keys: Option<Vec<crate::scanning::ScannerKey>>,
    /// `MAX_KEYS_PER_ORG` (default 1000): live keys an org may have.
    pub(crate) max_keys_per_org: u32,
    /// `MAX_KEYS_PER_PARENT` (default 20): live keys one key may have
    /// minted through the control API.
    pub(crate) max_keys_per_parent: u32,
    /// JWT sessions (`JWT_ISSUER`, `JWT_AUDIENCE`, `JWT_JWKS_URL`,
    /// `JWT_JWKS`, `JWT_HS256_SECRET`, …), if configured.
    pub(crate) jwt: Option<jwt::JwtSettings>,
}

/// Shortest accepted `ADMIN_TOKEN` and `ORIGIN_SIGNING_SECRET`.
pub(crate) const MIN_SECRET_LEN: usize = 32;

static SETTINGS: OnceLock<Result<Settings, String>> = OnceLock::new();

fn string_binding(env: &Env, name: &str) -> Option<String> {
    // Secrets and plain vars are both JS strings; accept either.
    env.secret(name).map(|s| s.to_string()).or_else(|_| env.var(name).map(|v| v.to_string())).ok()
}

/// A binding's value trimmed; `None` when unset or blank.
pub(super) fn nonblank(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// A boolean var: `true` or `1`, `false` or `0`; `default` when unset or
/// empty.
fn flag(env: &Env, name: &str, default: bool) -> Result<bool, String> {
    match string_binding(env, name).as_deref().map(str::trim) {
        None | Some("") => Ok(default),
        Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(other) => Err(format!("{name} must be true or false, not {other:?}")),
    }
}

/// Whether a URL's origin (all before its path) is https, or http to a
/// loopback host or with `allow_insecure`.
pub(super) fn secure_url(url: &str, allow_insecure: bool) -> bool {
    let origin = url.find("://").and_then(|i| url[i + 3..].find('/').map(|j| &url[..i + 3 + j])).unwrap_or(url);
    matches!(crate::path::OriginUrl::parse(origin), Ok(u) if !u.is_insecure() || allow_insecure)
}

/// An integer var within `range`, or `default` when unset.
fn int_var(env: &Env, name: &str, default: i64, range: std::ops::RangeInclusive<i64>) -> Result<i64, String> {
    match string_binding(env, name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| format!("{name} must be an integer from {} to {}", range.start(), range.end())),
    }
}

fn load_settings(env: &Env) -> Result<Settings, String> {
    let secret_prefix = string_binding(env, "SECRET_KEY_PREFIX").unwrap_or_else(|| "kw_live_".into());
    let widget_prefix = string_binding(env, "WIDGET_KEY_PREFIX").unwrap_or_else(|| "kw_pub_".into());
    let format = TokenFormat::new(&secret_prefix, &widget_prefix).map_err(|e| format!("key prefixes: {}", e.0))?;
    let require_baa = flag(env, "REQUIRE_BAA", true)?;
    let visitor_ipv6_prefix = u8::try_from(int_var(
        env,
        "VISITOR_IPV6_PREFIX",
        i64::from(crate::cors::DEFAULT_VISITOR_IPV6_PREFIX),
        32..=64,
    )?)
    .unwrap_or(crate::cors::DEFAULT_VISITOR_IPV6_PREFIX);
    let origin_url = string_binding(env, "ORIGIN_URL").ok_or("ORIGIN_URL is not set")?;
    let parsed = crate::path::OriginUrl::parse(origin_url.trim())?;
    let allow_insecure = flag(env, "ALLOW_INSECURE_ORIGIN", false)?;
    if parsed.is_insecure() && !allow_insecure {
        return Err("ORIGIN_URL must be https:// (http:// only for a loopback host, or with ALLOW_INSECURE_ORIGIN=true): the signed identity and the body would cross the network in clear".into());
    }
    let origin_timeout_ms = u32::try_from(int_var(env, "ORIGIN_TIMEOUT_MS", 30_000, 1..=600_000)?).unwrap_or(30_000);
    let guard_timeout_ms = u32::try_from(int_var(env, "GUARD_TIMEOUT_MS", 2_000, 100..=30_000)?).unwrap_or(2_000);
    let usage_rollup_ms = int_var(env, "USAGE_ROLLUP_SECONDS", 30, 1..=3600)? * 1000;
    let lease_ms = int_var(env, "LEASE_MS", 1000, 50..=10_000)?;
    let default_consistency = match string_binding(env, "DEFAULT_CONSISTENCY").as_deref().map(str::trim) {
        None | Some("") => crate::records::Consistency::Strict,
        Some(c) => crate::records::Consistency::parse(c)
            .ok_or_else(|| format!("DEFAULT_CONSISTENCY must be strict or leased, not {c:?}"))?,
    };
    let (key_guard, guard_delay_ms) = measurement_switches(env)?;
    if !cfg!(feature = "faults") && string_binding(env, "KEYWARD_TEST_PANIC").is_some_and(|v| !v.trim().is_empty()) {
        return Err("KEYWARD_TEST_PANIC exists only in test builds (cargo feature faults)".into());
    }
    let policy = Policy::default_policy()?;
    // A secret shorter than 32 bytes is treated as absent (and logged): the
    // admin API or the proxy then answers 503 rather than run on a weak one.
    // Surrounding whitespace (a trailing newline from `echo … | wrangler
    // secret put`) is not part of a secret.
    let secret = |name: &str| match nonblank(string_binding(env, name)) {
        Some(s) if s.len() >= MIN_SECRET_LEN => Some(s),
        Some(_) => {
            worker::console_error!(
                "keyward configuration error: {name} is shorter than {MIN_SECRET_LEN} bytes; ignored"
            );
            None
        }
        None => None,
    };
    let crate::path::OriginUrl { origin, base_path: origin_base_path } = parsed;
    let signing_secret = secret("ORIGIN_SIGNING_SECRET");
    let visitor_tokens = signing_secret.as_deref().map(|s| crate::turnstile::visitor_token_key(s.as_bytes()));
    let visitor_token_ttl_ms =
        int_var(env, "VISITOR_TOKEN_TTL_SECONDS", crate::turnstile::DEFAULT_TTL_SECONDS, 60..=86_400)? * 1000;
    let verify_url = string_binding(env, "TURNSTILE_VERIFY_URL")
        .map(|u| u.trim().to_owned())
        .unwrap_or_else(|| crate::turnstile::DEFAULT_VERIFY_URL.to_owned());
    if !secure_url(&verify_url, allow_insecure) {
        return Err("TURNSTILE_VERIFY_URL must be an https:// URL (http:// only for a loopback host)".into());
    }
    let turnstile = secret("TURNSTILE_SECRET_KEY").map(|s| (s, verify_url));
    let jwt = jwt::load(
        |n| string_binding(env, n),
        secret,
        int_var(env, "JWKS_CACHE_SECONDS", crate::jwt::DEFAULT_CACHE_SECONDS, 1..=86_400)?,
        int_var(env, "JWT_LEEWAY_SECONDS", crate::jwt::DEFAULT_LEEWAY_SECONDS, 0..=crate::jwt::MAX_LEEWAY_SECONDS)?,
        int_var(env, "JWT_MAX_AGE_SECONDS", crate::jwt::DEFAULT_MAX_AGE_SECONDS, 0..=31_536_000)?,
        allow_insecure,
    )?;
    let mut session_origins = Vec::new();
    for o in string_binding(env, "JWT_ALLOWED_ORIGINS").unwrap_or_default().split(',').map(str::trim) {
        if !o.is_empty() {
            session_origins
                .push(crate::cors::OriginPattern::parse(o).map_err(|e| format!("JWT_ALLOWED_ORIGINS: {o:?}: {e}"))?);
        }
    }
    let max_keys_per_org = u32::try_from(int_var(env, "MAX_KEYS_PER_ORG", 1000, 1..=1_000_000)?).unwrap_or(1000);
    let max_keys_per_parent = u32::try_from(int_var(env, "MAX_KEYS_PER_PARENT", 20, 1..=10_000)?).unwrap_or(20);
    let scanner_keys = match string_binding(env, "SECRET_SCANNING_KEYS").filter(|s| !s.trim().is_empty()) {
        Some(doc) => Some(crate::scanning::parse_keys(&doc).map_err(|e| format!("SECRET_SCANNING_KEYS: {e}"))?),
        None => None,
    };
    Ok(Settings {
        scanner_keys,
        max_keys_per_org,
        max_keys_per_parent,
        jwt,
        config: Config {
            format,
            require_baa,
            visitor_ipv6_prefix,
            visitor_tokens,
            visitor_token_ttl_ms,
            turnstile: turnstile.is_some(),
            session_origins,
        },
        policy,
        origin,
        origin_base_path,
        origin_timeout_ms,
        guard_timeout_ms,
        signing_key: signing_secret.map(|s| crate::signing::SigningKey::new(s.as_bytes())),
        turnstile,
        admin_tokens: crate::admin::AdminTokens::parse(
            string_binding(env, "ADMIN_TOKEN").as_deref(),
            string_binding(env, "ADMIN_TOKENS").as_deref(),
            MIN_SECRET_LEN,
        )?,
        flow: crate::flow::FlowSettings { lease_ms, key_guard },
        default_consistency,
        guard_delay_ms,
        usage_rollup_ms,
    })
}

/// `KEY_GUARD=off` (no limits, no revocation) and `GUARD_DELAY_MS` exist
/// only to measure what the guard costs, in a build made for benchmarking
/// (`cargo` feature `bench`, `make bench`). Any other build refuses to start
/// when either is set to anything but its default: a deployed worker can
/// never be switched into a mode without limits or revocation.
fn measurement_switches(env: &Env) -> Result<(bool, u32), String> {
    let key_guard = string_binding(env, "KEY_GUARD");
    let delay = string_binding(env, "GUARD_DELAY_MS");
    if !cfg!(feature = "bench") {
        if key_guard.as_deref().is_some_and(|v| !matches!(v.trim(), "" | "on")) {
            return Err("KEY_GUARD exists only in benchmark builds (cargo feature bench)".into());
        }
        if delay.as_deref().is_some_and(|v| !matches!(v.trim(), "" | "0")) {
            return Err("GUARD_DELAY_MS exists only in benchmark builds (cargo feature bench)".into());
        }
        return Ok((true, 0));
    }
    let on = match key_guard.as_deref().map(str::trim) {
        None | Some("on") | Some("") => true,
        Some("off") => false,
        Some(other) => return Err(format!("KEY_GUARD must be on or off, not {other:?}")),
    };
    if !on {
        worker::console_warn!("keyward (benchmark build): KEY_GUARD=off — no rate limits and no revocation check");
    }
    let delay = u32::try_from(int_var(env, "GUARD_DELAY_MS", 0, 0..=10_000)?).unwrap_or(0);
    Ok((on, delay))
}

/// I/O the worker does, counted in benchmark builds (`make bench` reads the
/// counts per request from `GET /__keyward/io`); a no-op otherwise.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Io {
    /// A KV read.
    KvRead,
    /// A call to a key's guard.
    GuardCall,
}

#[cfg(feature = "bench")]
thread_local! {
    static IO: std::cell::Cell<[u64; 3]> = const { std::cell::Cell::new([0; 3]) };
}

/// Counts one I/O operation (benchmark builds only).
#[inline]
pub(crate) fn count_io(io: Io) {
    #[cfg(feature = "bench")]
    IO.with(|c| {
        let mut v = c.get();
        v[io as usize] += 1;
        c.set(v);
    });
    #[cfg(not(feature = "bench"))]
    let _ = io;
}

#[cfg(feature = "bench")]
fn count_request() {
    IO.with(|c| {
        let mut v = c.get();
        v[2] += 1;
        c.set(v);
    });
}

/// The isolate's settings, or the configuration error (logged, answered 503).
pub(crate) fn settings(env: &Env) -> Result<&'static Settings, ApiError> {
    match SETTINGS.get_or_init(|| load_settings(env)) {
        Ok(s) => Ok(s),
        Err(e) => {
            worker::console_error!("keyward configuration error: {e}");
            Err(ApiError::new(ErrorCode::ServiceUnavailable))
        }
    }
}

/// Fills `buf` from the platform CSPRNG.
pub(crate) fn random<const N: usize>() -> Result<[u8; N], ApiError> {
    let mut buf = [0u8; N];
    getrandom::getrandom(&mut buf).map_err(|_| ApiError::new(ErrorCode::ServiceUnavailable))?;
    Ok(buf)
}

thread_local! {
    /// CSPRNG output drawn 4 KiB at a time, for values that need
    /// unpredictability but not secrecy from this isolate (request ids):
    /// one `crypto.getRandomValues` call per ~340 requests instead of one
    /// per request. Key material never comes from here (see [`random`]).
    static POOL: std::cell::RefCell<(Vec<u8>, usize)> = const { std::cell::RefCell::new((Vec::new(), 0)) };
}

/// `N` bytes from the pool, refilled from the platform CSPRNG when spent.
pub(crate) fn pooled_random<const N: usize>() -> Result<[u8; N], ApiError> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let (buf, at) = &mut *p;
        if *at + N > buf.len() {
            buf.resize(4096, 0);
            getrandom::getrandom(buf).map_err(|_| ApiError::new(ErrorCode::ServiceUnavailable))?;
            *at = 0;
        }
        let mut out = [0u8; N];
        out.copy_from_slice(&buf[*at..*at + N]);
        *at += N;
        Ok(out)
    })
}

/// Milliseconds since the Unix epoch, read once per request.
pub(crate) fn now_ms() -> i64 {
    worker::Date::now().as_millis() as i64
}

/// Builds the error response: envelope, `X-Request-Id`, `no-store`, and
/// `Allow` / `Retry-After` where they apply.
pub(crate) fn error_response(refusal: &Refusal, request_id: &str) -> Response {
    let headers = Headers::new();
    let _ = headers.set("content-type", "application/json");
    let _ = headers.set("cache-control", "no-store");
    let _ = headers.set("x-request-id", request_id);
    for (name, value) in &refusal.headers {
        let _ = headers.set(name, value);
    }
    if refusal.error.code == ErrorCode::ServiceUnavailable {
        let _ = headers.set("retry-after", "1");
    }
    Response::builder()
        .with_status(refusal.error.status())
        .with_headers(headers)
        .fixed(refusal.error.envelope(request_id).into_bytes())
}

/// A JSON response with `X-Request-Id` (and `Retry-After` on a 503, as
/// every 503 carries): keyward's own answers and the org object's replies.
pub(crate) fn json_response(status: u16, body: String, request_id: &str) -> Response {
    let headers = Headers::new();
    let _ = headers.set("content-type", "application/json");
    let _ = headers.set("cache-control", "no-store");
    let _ = headers.set("x-request-id", request_id);
    if status == 503 {
        let _ = headers.set("retry-after", "1");
    }
    Response::builder().with_status(status).with_headers(headers).fixed(body.into_bytes())
}

#[event(start)]
fn start() {
    // A panic is a bug; it must still answer. After logging it, tell the JS
    // entry (worker/entry.mjs), which fails every pending request of this
    // instance with the `500 INTERNAL_ERROR` envelope instead of letting them
    // hang (a panic inside a future never settles its promise).
    std::panic::set_hook(Box::new(|info| {
        console_error_panic_hook::hook(info);
        let global = js_sys::global();
        if let Ok(f) = js_sys::Reflect::get(&global, &wasm_bindgen::JsValue::from_str("__keywardPanic")) {
            if let Some(f) = wasm_bindgen::JsCast::dyn_ref::<js_sys::Function>(&f) {
                let _ = f.call0(&global);
            }
        }
    }));
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> worker::Result<Response> {
    let now = now_ms();
    let request_id = match pooled_random::<12>() {
        Ok(r) => crate::ids::request_id(&r),
        Err(e) => return Ok(error_response(&e.into(), "req_unavailable")),
    };
    let url = req.inner().url();
    let (path, _) = crate::path::split_url(&url);
    #[cfg(feature = "faults")]
    if path == "/__keyward/panic" && test_panic_allowed(&req, &env) {
        // Test builds only: proves that a panic still answers with the
        // envelope (worker/entry.mjs) and that the next request is served by
        // a fresh instance. Needs KEYWARD_TEST_PANIC=enabled *and* the admin
        // token.
        #[allow(clippy::panic)]
        {
            panic!("deliberate test panic");
        }
    }
    #[cfg(feature = "bench")]
    {
        if path == "/__keyward/io"
            && settings(&env).ok().and_then(|s| admin::admin_operator(&req, &s.admin_tokens)).is_some()
        {
            let [kv_reads, guard_calls, requests] = IO.with(|c| c.get());
            let body = serde_json::json!({ "kv_reads": kv_reads, "guard_calls": guard_calls, "requests": requests });
            return Ok(json_response(200, body.to_string(), &request_id));
        }
        count_request();
    }
    let is_admin = path == "/admin" || path.starts_with("/admin/");
    let result = if is_admin {
        admin::handle(req, &env, &request_id, now).await
    } else if path == scanning::PATH {
        scanning::handle(req, &env, &request_id, now).await
    } else {
        gate::handle(req, &env, &ctx, &request_id, now).await
    };
    Ok(result.unwrap_or_else(|refusal| error_response(&refusal, &request_id)))
}

#[cfg(feature = "faults")]
fn test_panic_allowed(req: &Request, env: &Env) -> bool {
    string_binding(env, "KEYWARD_TEST_PANIC").as_deref() == Some("enabled")
        && settings(env).ok().and_then(|s| admin::admin_operator(req, &s.admin_tokens)).is_some()
}

/// How much of an oversized body is read and discarded before refusing.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;

/// Reads a request body, refusing more than `limit` bytes without buffering
/// the rest.
pub(crate) async fn read_body(req: &mut Request, limit: usize) -> Result<Vec<u8>, Refusal> {
    use futures_util::StreamExt;
    let too_large = || {
        Refusal::from(ApiError::with_message(
            ErrorCode::PayloadTooLarge,
            format!("The request body exceeds {limit} bytes."),
        ))
    };
    if let Some(len) = req.headers().get("content-length").ok().flatten() {
        if len.trim().parse::<u64>().map_or(true, |n| n > limit as u64) {
            return Err(too_large());
        }
    }
    let mut out = Vec::new();
    let Ok(mut stream) = req.stream() else {
        return Ok(out);
    };
    let mut over = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::invalid_request("The request body could not be read."))?;
        if over > 0 || out.len() + chunk.len() > limit {
            // Too large: keep reading (and discarding) up to a bound so the
            // connection is left in a clean state, then refuse. Nothing
            // beyond `limit` is ever held in memory.
            over += chunk.len();
            if over > DRAIN_LIMIT {
                break;
            }
            continue;
        }
        out.extend_from_slice(&chunk);
    }
    if over > 0 {
        return Err(too_large());
    }
    Ok(out)
}

/// Sends a command to an org's Durable Object; returns its status and body.
pub(crate) async fn call_org(
    env: &Env,
    org_id: &str,
    request: &crate::admin::OrgRequest,
) -> Result<(u16, String), Refusal> {
    call_org_with(env, org_id, request, faults::Fault::none()).await
}

/// [`call_org`] for a request that may carry a fault (test builds: the org
/// object's fault travels with the call, see [`faults`]).
pub(crate) async fn call_org_with(
    env: &Env,
    org_id: &str,
    request: &crate::admin::OrgRequest,
    fault: faults::Fault,
) -> Result<(u16, String), Refusal> {
    let ns = env.durable_object(ORGS_BINDING).map_err(|e| unavailable("ORGS binding", e))?;
    let stub = ns.id_from_name(org_id).and_then(|id| id.get_stub()).map_err(|e| unavailable("org stub", e))?;
    let body = serde_json::to_string(request).map_err(|e| unavailable("org command", e))?;
    let headers = fault.for_org();
    let req = new_request("https://org.keyward.internal/command", "POST", headers.as_ref(), Some(&body.into()), false)
        .map_err(|e| unavailable("org request", e))?;
    let mut resp = stub.fetch_with_request(req).await.map_err(|e| unavailable("org object", e))?;
    let text = resp.text().await.map_err(|e| unavailable("org reply", e))?;
    Ok((resp.status_code(), text))
}

/// A request built on `web_sys` directly, as `Request::new_with_init` would
/// build it from a `RequestInit` with default `cf` properties (worker's
/// `RequestInit` brings in the conversion of every `cf` option: much wasm).
/// `origin`: redirects are not followed and no cache is used.
pub(crate) fn new_request(
    url: &str,
    method: &str,
    headers: Option<&Headers>,
    body: Option<&wasm_bindgen::JsValue>,
    origin: bool,
) -> worker::Result<Request> {
    use worker::web_sys::{RequestCache, RequestInit, RequestRedirect};
    let init = RequestInit::new();
    if let Some(h) = headers {
        init.set_headers(h.as_ref());
    }
    init.set_method(method);
    if origin {
        init.set_redirect(RequestRedirect::Manual);
        init.set_cache(RequestCache::NoStore);
    } else {
        init.set_redirect(RequestRedirect::Follow);
    }
    if let Some(b) = body {
        init.set_body(b);
    }
    worker::web_sys::Request::new_with_str_and_init(url, &init).map(Request::from).map_err(|e| {
        worker::Error::JsError(e.as_string().unwrap_or_else(|| "invalid URL or options for Request".to_string()))
    })
}

/// The org object's answer to [`crate::admin::OrgCommand::LeaseFacts`].
#[derive(serde::Deserialize)]
pub(crate) struct FactsEnvelope {
    pub(crate) data: crate::guard::Facts,
}

/// Adds the one-time plaintext to a create reply from the org object. The
/// plaintext joins the reply here, in the worker: the org object never sees
/// it, and it is never logged or stored.
pub(crate) fn with_plaintext(body: &str, plaintext: String) -> Result<String, Refusal> {
    let mut v: serde_json::Value = serde_json::from_str(body).map_err(|e| unavailable("org reply", e))?;
    let data = v
        .get_mut("data")
        .and_then(serde_json::Value::as_object_mut)
        .ok_or_else(|| unavailable("org reply", "no data object"))?;
    data.insert("plaintext".into(), serde_json::Value::String(plaintext));
    Ok(v.to_string())
}

/// Maps a store or runtime error to a fail-closed refusal, logging the
/// internal detail (never a credential) for the operator.
pub(crate) fn unavailable(what: &str, e: impl std::fmt::Display) -> Refusal {
    unavailable_shown(what, &e)
}

/// [`unavailable`] once, not per error type.
#[inline(never)]
fn unavailable_shown(what: &str, e: &dyn std::fmt::Display) -> Refusal {
    worker::console_error!("keyward: {what}: {e}");
    ApiError::new(ErrorCode::ServiceUnavailable).into()
}
