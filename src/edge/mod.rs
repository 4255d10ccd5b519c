//! The wasm shell: reads the clock, randomness, KV and Durable Objects,
//! proxies to the origin, and answers. It decides nothing itself: every
//! decision is a call into the core.
//!
//! No handler returns `Err` to the runtime: every failure becomes an
//! envelope (`respond_with_errors` is deliberately not used, since it would
//! put internal error text in the body).

mod admin;
mod gate;
mod guard;
mod org;

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
    /// `ORIGIN_URL` without a trailing slash.
    pub(crate) origin_url: String,
    pub(crate) origin_timeout_ms: u32,
    pub(crate) signing_secret: Option<String>,
    pub(crate) admin_token: Option<String>,
    /// `KEY_GUARD` (default on): consult the key's Durable Object on every
    /// request (exact rate limits, immediate revocation). `off` exists only
    /// to measure what the hop costs; it disables both.
    pub(crate) key_guard: bool,
}

static SETTINGS: OnceLock<Result<Settings, String>> = OnceLock::new();

fn string_binding(env: &Env, name: &str) -> Option<String> {
    // Secrets and plain vars are both JS strings; accept either.
    env.secret(name).map(|s| s.to_string()).or_else(|_| env.var(name).map(|v| v.to_string())).ok()
}

fn load_settings(env: &Env) -> Result<Settings, String> {
    let secret_prefix = string_binding(env, "SECRET_KEY_PREFIX").unwrap_or_else(|| "kw_live_".into());
    let widget_prefix = string_binding(env, "WIDGET_KEY_PREFIX").unwrap_or_else(|| "kw_pub_".into());
    let format = TokenFormat::new(&secret_prefix, &widget_prefix).map_err(|e| format!("key prefixes: {}", e.0))?;
    let require_baa = match string_binding(env, "REQUIRE_BAA").as_deref().map(str::trim) {
        None | Some("true") | Some("1") | Some("") => true,
        Some("false") | Some("0") => false,
        Some(other) => return Err(format!("REQUIRE_BAA must be true or false, not {other:?}")),
    };
    let origin_url = string_binding(env, "ORIGIN_URL").ok_or("ORIGIN_URL is not set")?;
    let parsed = worker::Url::parse(&origin_url).map_err(|e| format!("ORIGIN_URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("ORIGIN_URL must be an http(s) URL without query or fragment".into());
    }
    let origin_timeout_ms = match string_binding(env, "ORIGIN_TIMEOUT_MS") {
        None => 30_000,
        Some(v) => v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|t| (1..=600_000).contains(t))
            .ok_or("ORIGIN_TIMEOUT_MS must be 1..600000")?,
    };
    let key_guard = match string_binding(env, "KEY_GUARD").as_deref().map(str::trim) {
        None | Some("on") | Some("") => true,
        Some("off") => false,
        Some(other) => return Err(format!("KEY_GUARD must be on or off, not {other:?}")),
    };
    let policy = Policy::default_policy()?;
    let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
    Ok(Settings {
        config: Config { format, require_baa },
        policy,
        origin_url: origin_url.trim_end_matches('/').to_owned(),
        origin_timeout_ms,
        signing_secret: nonempty(string_binding(env, "ORIGIN_SIGNING_SECRET")),
        admin_token: nonempty(string_binding(env, "ADMIN_TOKEN")),
        key_guard,
    })
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

/// A JSON success response with `X-Request-Id`.
pub(crate) fn json_response(status: u16, body: String, request_id: &str) -> Response {
    let headers = Headers::new();
    let _ = headers.set("content-type", "application/json");
    let _ = headers.set("cache-control", "no-store");
    let _ = headers.set("x-request-id", request_id);
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
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let now = now_ms();
    let request_id = match random::<12>() {
        Ok(r) => crate::ids::request_id(&r),
        Err(e) => return Ok(error_response(&e.into(), "req_unavailable")),
    };
    let url = req.inner().url();
    let path = raw_path(&url);
    if path == "/__keyward/panic" && string_binding(&env, "KEYWARD_TEST_PANIC").as_deref() == Some("enabled") {
        // Test-only (off unless the var is set): proves that a panic still
        // answers with the envelope (worker/entry.mjs) and that the next
        // request is served by a fresh instance.
        #[allow(clippy::panic)]
        {
            panic!("deliberate test panic");
        }
    }
    let is_admin = path == "/admin" || path.starts_with("/admin/");
    let result = if is_admin {
        admin::handle(req, &env, &request_id, now).await
    } else {
        gate::handle(req, &env, &request_id, now).await
    };
    Ok(result.unwrap_or_else(|refusal| error_response(&refusal, &request_id)))
}

/// The path part of a request URL string, still percent-encoded: what came
/// after the authority, before `?`.
pub(crate) fn raw_path(url: &str) -> &str {
    let (path_and_query, _) = split_target(url);
    path_and_query
}

/// Splits a request URL string into (raw path, raw query without `?`).
pub(crate) fn split_target(url: &str) -> (&str, &str) {
    let after_scheme = url.find("://").map_or(url, |i| &url[i + 3..]);
    let target = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
    let target = target.split_once('#').map_or(target, |(t, _)| t);
    target.split_once('?').unwrap_or((target, ""))
}

/// Maps a store or runtime error to a fail-closed refusal, logging the
/// internal detail (never a credential) for the operator.
pub(crate) fn unavailable(what: &str, e: impl std::fmt::Display) -> Refusal {
    worker::console_error!("keyward: {what}: {e}");
    ApiError::new(ErrorCode::ServiceUnavailable).into()
}
