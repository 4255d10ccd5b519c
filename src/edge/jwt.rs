//! JWT verification's I/O: the key set fetched from `JWT_JWKS_URL` (kept
//! per isolate, [`crate::jwt::KeySet`] decides when to fetch), and
//! signatures verified by the platform's WebCrypto (`crypto.subtle`) with
//! the key and bytes the core names. No crypto code ships for it.

use std::cell::RefCell;

use futures_util::future::{select, Either};
use js_sys::{Promise, JSON};
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsValue;
use wasm_bindgen_futures::JsFuture;
use worker::{Delay, Fetch};

use super::{unavailable, Settings};
use crate::authorize::Refusal;
use crate::error::ErrorCode;
use crate::jwt::{self, Alg, Jwk, Jwks, KeySet, Lookup, Session};

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = ["crypto", "subtle"], js_name = importKey, catch)]
    pub(super) fn import_key(
        format: &str,
        key: &JsValue,
        algorithm: &JsValue,
        extractable: bool,
        usages: &JsValue,
    ) -> Result<Promise, JsValue>;

    #[wasm_bindgen(js_namespace = ["crypto", "subtle"], js_name = verify, catch)]
    pub(super) fn subtle_verify(
        algorithm: &JsValue,
        key: &JsValue,
        signature: &[u8],
        data: &[u8],
    ) -> Result<Promise, JsValue>;
}

/// `JWT_*` settings (JWT sessions are on when `JWT_ISSUER` is set).
pub(crate) struct JwtSettings {
    pub(crate) config: jwt::JwtConfig,
    /// `JWT_JWKS`, parsed.
    pub(crate) inline: Jwks,
    /// `JWT_JWKS_URL`.
    pub(crate) url: Option<String>,
    /// `JWKS_CACHE_SECONDS`, in ms.
    pub(crate) cache_ms: i64,
}

/// Most imported keys kept per isolate (a key set holds at most
/// [`jwt::MAX_KEYS`]; a rotation adds a few).
const MAX_IMPORTED: usize = 2 * jwt::MAX_KEYS;
/// How long a key set fetch may take before the request is a 503.
const FETCH_TIMEOUT_MS: u64 = 5_000;

thread_local! {
    static KEYS: RefCell<Option<KeySet>> = const { RefCell::new(None) };
    /// WebCrypto keys imported from a JWK (by its minimal JSON text).
    static IMPORTED: RefCell<Vec<(String, JsValue)>> = const { RefCell::new(Vec::new()) };
}

fn invalid() -> Refusal {
    ErrorCode::InvalidToken.into()
}

/// Verifies a JWT-shaped credential: the session it carries, `401
/// INVALID_TOKEN` (one envelope for every failure), or `503` when the key
/// set cannot be fetched.
pub(crate) async fn verify(s: &JwtSettings, token: &str, now: i64) -> Result<Session, Refusal> {
    let checked = jwt::check(token, &s.config, now).map_err(|_| invalid())?;
    if checked.alg == Alg::Hs256 {
        jwt::verify_hs256(&checked, &s.config).map_err(|_| invalid())?;
        return Ok(checked.session);
    }
    for _ in 0..2 {
        let found = with_keys(s, now, |k| jwt::key_for(&checked, k, super::now_ms()).map(|l| found(&l)));
        match found.map_err(|_| invalid())? {
            Some(key) => {
                return match webcrypto_verify(&key, &checked.signature, checked.signing_input.as_bytes()).await {
                    Ok(true) => Ok(checked.session),
                    Ok(false) => Err(invalid()),
                    Err(e) => {
                        worker::console_warn!("keyward: JWT signature check failed to run: {e}");
                        Err(ErrorCode::ServiceUnavailable.into())
                    }
                };
            }
            None if unavailable_now(s, &checked) => return Err(ErrorCode::ServiceUnavailable.into()),
            None => {
                let url = s.url.as_deref().ok_or_else(invalid)?;
                let result = fetch_jwks(url).await;
                if let Err(e) = &result {
                    worker::console_warn!("keyward: JWT key set fetch failed: {e}");
                }
                with_keys(s, now, |k| k.fetched(result, super::now_ms())).map_err(|e| unavailable("JWT key set", e))?;
            }
        }
    }
    Err(unavailable("JWT key set", "no key after a fetch"))
}

/// Whether the key set needs a fetch that failed moments ago (no wait: 503).
fn unavailable_now(s: &JwtSettings, checked: &jwt::Checked<'_>) -> bool {
    let now = super::now_ms();
    with_keys(s, now, |k| matches!(jwt::key_for(checked, k, now), Ok(Lookup::Unavailable)))
}

fn found(l: &Lookup<'_>) -> Option<Jwk> {
    match l {
        Lookup::Found(k) => Some((*k).clone()),
        _ => None,
    }
}

fn with_keys<T>(s: &JwtSettings, _now: i64, f: impl FnOnce(&mut KeySet) -> T) -> T {
    KEYS.with(|k| {
        let mut k = k.borrow_mut();
        let set = k.get_or_insert_with(|| KeySet {
            inline: s.inline.clone(),
            has_url: s.url.is_some(),
            fetched: None,
            refreshed_at: None,
            failed_at: None,
            cache_ms: s.cache_ms,
        });
        f(set)
    })
}

/// GETs the key set (redirects not followed, not cached by the runtime).
async fn fetch_jwks(url: &str) -> Result<Jwks, String> {
    let request = super::new_request(url, "GET", None, None, true).map_err(|e| e.to_string())?;
    let controller = worker::AbortController::default();
    let signal = controller.signal();
    let sending = Box::pin(async move {
        let mut resp = Fetch::Request(request).send_with_signal(&signal).await.map_err(|e| e.to_string())?;
        if resp.status_code() != 200 {
            return Err(format!("status {}", resp.status_code()));
        }
        let text = resp.text().await.map_err(|e| e.to_string())?;
        Jwks::parse(&text)
    });
    let timeout = Box::pin(Delay::from(std::time::Duration::from_millis(FETCH_TIMEOUT_MS)));
    match select(sending, timeout).await {
        Either::Left((r, _)) => r,
        Either::Right(((), _)) => {
            controller.abort();
            Err("timed out".into())
        }
    }
}

pub(super) fn js(text: &str) -> Result<JsValue, String> {
    JSON::parse(text).map_err(|e| format!("{e:?}"))
}

/// WebCrypto's names for an algorithm: to import the key, to verify.
fn algorithms(alg: Alg) -> (&'static str, &'static str) {
    match alg {
        Alg::EdDsa => (r#"{"name":"Ed25519"}"#, r#"{"name":"Ed25519"}"#),
        Alg::Es256 => (r#"{"name":"ECDSA","namedCurve":"P-256"}"#, r#"{"name":"ECDSA","hash":"SHA-256"}"#),
        Alg::Rs256 | Alg::Hs256 => {
            (r#"{"name":"RSASSA-PKCS1-v1_5","hash":"SHA-256"}"#, r#"{"name":"RSASSA-PKCS1-v1_5","hash":"SHA-256"}"#)
        }
    }
}

async fn webcrypto_verify(key: &Jwk, signature: &[u8], data: &[u8]) -> Result<bool, String> {
    let (import_alg, verify_alg) = algorithms(key.alg);
    let cached = IMPORTED.with(|m| m.borrow().iter().find(|(k, _)| *k == key.import).map(|(_, v)| v.clone()));
    let crypto_key = match cached {
        Some(k) => k,
        None => {
            let promise = import_key("jwk", &js(&key.import)?, &js(import_alg)?, false, &js(r#"["verify"]"#)?)
                .map_err(|e| format!("importKey: {e:?}"))?;
            let k = JsFuture::from(promise).await.map_err(|e| format!("importKey: {e:?}"))?;
            IMPORTED.with(|m| {
                let mut m = m.borrow_mut();
                if m.len() >= MAX_IMPORTED {
                    m.remove(0);
                }
                m.push((key.import.clone(), k.clone()));
            });
            k
        }
    };
    let promise =
        subtle_verify(&js(verify_alg)?, &crypto_key, signature, data).map_err(|e| format!("verify: {e:?}"))?;
    let ok = JsFuture::from(promise).await.map_err(|e| format!("verify: {e:?}"))?;
    Ok(ok.as_bool() == Some(true))
}

/// Parses the `JWT_*` settings; `None` when `JWT_ISSUER` is not set.
pub(crate) fn load(
    string: impl Fn(&str) -> Option<String>,
    secret: impl Fn(&str) -> Option<String>,
    cache_seconds: i64,
    leeway: i64,
    max_age: i64,
    allow_insecure: bool,
) -> Result<Option<JwtSettings>, String> {
    let Some(issuer) = super::nonblank(string("JWT_ISSUER")) else {
        return Ok(None);
    };
    let audience = super::nonblank(string("JWT_AUDIENCE")).ok_or("JWT_AUDIENCE must be set when JWT_ISSUER is")?;
    let mut config = jwt::JwtConfig::new(&issuer, &audience);
    let claim = |name: &str, default: &str| -> Result<String, String> {
        let v = super::nonblank(string(name)).unwrap_or(default.into());
        if v.len() > 64 {
            return Err(format!("{name} must be at most 64 bytes"));
        }
        Ok(v)
    };
    config.org_claim = claim("JWT_ORG_CLAIM", "org_id")?;
    config.user_claim = claim("JWT_USER_CLAIM", "sub")?;
    config.leeway_s = leeway;
    config.hs256_secret = secret("JWT_HS256_SECRET").map(String::into_bytes);
    config.max_age_s = max_age;
    let inline = match string("JWT_JWKS").filter(|s| !s.trim().is_empty()) {
        Some(text) => Jwks::parse(&text).map_err(|e| format!("JWT_JWKS: {e}"))?,
        None => Jwks::default(),
    };
    let url = super::nonblank(string("JWT_JWKS_URL"));
    if url.as_deref().is_some_and(|u| !super::secure_url(u, allow_insecure)) {
        return Err("JWT_JWKS_URL must be an https:// URL (http:// only for a loopback host)".into());
    }
    if inline.keys.is_empty() && url.is_none() && config.hs256_secret.is_none() {
        return Err("JWT_ISSUER is set but no key: set JWT_JWKS_URL, JWT_JWKS or JWT_HS256_SECRET".into());
    }
    Ok(Some(JwtSettings { config, inline, url, cache_ms: cache_seconds * 1000 }))
}

/// The session of a request, when its credential is a JWT and sessions
/// are configured (`None`: look it up as a key).
pub(crate) async fn session_of(settings: &Settings, token: &str, now: i64) -> Result<Option<Session>, Refusal> {
    match &settings.jwt {
        Some(s) if jwt::looks_like_jwt(token) => verify(s, token, now).await.map(Some),
        _ => Ok(None),
    }
}
