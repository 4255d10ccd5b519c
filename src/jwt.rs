//! JWT user sessions (`seeds/003_*`): the second way to authenticate. The
//! identity provider (the API's own auth service, Auth0, Clerk, Cognito…)
//! issues access tokens; keyward verifies them at the edge and then applies
//! the same policy, roles, limits and signed identity as for keys.
//!
//! Pure: this module parses the token, picks the verification key, checks
//! every claim against the clock and configuration, and (for `HS256`)
//! checks the signature itself. Signatures with public keys (`EdDSA`,
//! `ES256`, `RS256`) are checked by the platform's WebCrypto in the shell
//! (`src/edge/jwt.rs`), on the exact bytes and key this module names: no
//! crypto code ships in the wasm for them.
//!
//! # What is refused (all with one `401 INVALID_TOKEN`, no oracle)
//! - more than [`MAX_TOKEN_LEN`] bytes; not three base64url parts (no
//!   padding, canonical); header or payload not a JSON object, or with a
//!   key twice;
//! - `alg` other than `EdDSA`, `ES256`, `RS256`, `HS256` (so `none`); `HS256`
//!   unless `JWT_HS256_SECRET` is configured; a `crit` header; a `typ`
//!   other than `JWT` / `at+jwt`;
//! - a `kid` not in the key set (after one refresh of a fetched set, at most
//!   once per [`REFRESH_MIN_MS`]); a key whose declared (or, without `alg`,
//!   implied by its type and curve) algorithm is not the token's: an RSA or
//!   EC key never verifies an `HS256` token;
//! - `exp` missing or past (`now >= exp + leeway`), `nbf` in the future
//!   (`now + leeway < nbf`), `iat` missing, in the future or older than
//!   `JWT_MAX_AGE_SECONDS` (default a day), `iss` not
//!   `JWT_ISSUER`, `aud` not (or not containing) `JWT_AUDIENCE`, the org or
//!   user claim missing or not an id (1–64 of `[A-Za-z0-9_-]`);
//! - then the signature.
//!
//! `iat` is required: a session revocation refuses the tokens issued at or
//! before its moment plus the leeway (`iat - leeway <= revoked_at`, in whole
//! seconds of `iat`): a clock running ahead cannot carry a token past it,
//! and a user signs in again successfully once the leeway has passed.

use serde_json::Value;

use crate::ids::is_valid_id;
use crate::scope::Scope;

/// Longest token accepted (bytes).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Most keys kept from a key set.
pub const MAX_KEYS: usize = 32;
/// Largest key set document accepted (bytes).
pub const MAX_JWKS_LEN: usize = 64 * 1024;
/// Largest clock leeway (`JWT_LEEWAY_SECONDS`).
pub const MAX_LEEWAY_SECONDS: i64 = 60;
/// Default clock leeway.
pub const DEFAULT_LEEWAY_SECONDS: i64 = 30;
/// A fetched key set is refreshed for an unknown `kid` at most this often.
pub const REFRESH_MIN_MS: i64 = 60_000;
/// Default time a fetched key set is used before it is fetched again
/// (`JWKS_CACHE_SECONDS`).
pub const DEFAULT_CACHE_SECONDS: i64 = 300;
/// After a failed key set fetch, how long requests needing one are
/// answered 503 at once rather than each waiting for another fetch.
pub const FETCH_BACKOFF_MS: i64 = 5_000;
/// Default longest age of a token (`JWT_MAX_AGE_SECONDS`): one whose `iat`
/// is older is refused whatever its `exp` says (a misissued long-lived
/// token).
pub const DEFAULT_MAX_AGE_SECONDS: i64 = 86_400;
/// Smallest RSA modulus accepted (bits).
pub const MIN_RSA_BITS: usize = 2048;
/// Longest `jti` forwarded.
pub const MAX_JTI_LEN: usize = 128;

/// A signature algorithm keyward verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    /// Ed25519 (`EdDSA`, RFC 8037).
    EdDsa,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// HMAC-SHA256 with the configured shared secret.
    Hs256,
}

impl Alg {
    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::EdDsa => "EdDSA",
            Alg::Es256 => "ES256",
            Alg::Rs256 => "RS256",
            Alg::Hs256 => "HS256",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Alg::EdDsa, Alg::Es256, Alg::Rs256, Alg::Hs256].into_iter().find(|a| a.as_str() == s)
    }
}

/// Verification settings (`JWT_*`, parsed once per isolate).
#[derive(Clone, Debug)]
pub struct JwtConfig {
    /// `JWT_ISSUER`: the `iss` every token must carry.
    pub issuer: String,
    /// `JWT_AUDIENCE`: what `aud` must be or contain.
    pub audience: String,
    /// `JWT_ORG_CLAIM` (default `org_id`).
    pub org_claim: String,
    /// `JWT_USER_CLAIM` (default `sub`).
    pub user_claim: String,
    /// `JWT_LEEWAY_SECONDS` (0–60, default 30).
    pub leeway_s: i64,
    /// `JWT_HS256_SECRET` (≥ 32 bytes), if `HS256` is accepted at all.
    pub hs256_secret: Option<Vec<u8>>,
    /// `JWT_MAX_AGE_SECONDS`: tokens issued longer ago are refused (0: no
    /// limit; default a day).
    pub max_age_s: i64,
}

impl JwtConfig {
    /// A configuration with the default claim names and leeway.
    pub fn new(issuer: &str, audience: &str) -> Self {
        JwtConfig {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            org_claim: "org_id".into(),
            user_claim: "sub".into(),
            leeway_s: DEFAULT_LEEWAY_SECONDS,
            hs256_secret: None,
            max_age_s: DEFAULT_MAX_AGE_SECONDS,
        }
    }
}

/// Whether a presented credential has the shape of a JWT (and so is
/// verified as one, never looked up as a key): `eyJ` (base64url of `{"`)
/// and exactly two dots. Key prefixes never start so.
pub fn looks_like_jwt(s: &str) -> bool {
    s.starts_with("eyJ") && s.bytes().filter(|&b| b == b'.').count() == 2
}

// ------------------------------------------------------------- base64url

/// Decodes unpadded base64url strictly: only the URL alphabet, no `=`, no
/// impossible length, and the unused bits of the last character zero (so
/// each byte string has exactly one encoding: a token cannot be altered
/// without changing its signed bytes).
pub fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = s.as_bytes();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        let [_, a, b, c] = n.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&[a, b, c]),
            3 if c == 0 => out.extend_from_slice(&[a, b]),
            2 if b == 0 && c == 0 => out.push(a),
            _ => return None,
        }
    }
    Some(out)
}

/// Encodes bytes as unpadded base64url.
pub fn b64url_encode(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(A[(n >> (18 - 6 * i)) as usize & 63]));
        }
    }
    out
}

// ------------------------------------------------------ strict JSON object

/// A JSON object whose keys are all distinct: parsing refuses a key seen
/// twice (JSON parsers disagree on which one wins; an identity provider and
/// keyward must never read different claims from the same bytes), and a
/// key written with an escape (`"\u0073ub"` is another spelling of `sub`).
#[derive(Debug, Default)]
struct Object(serde_json::Map<String, Value>);

impl Object {
    fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k)
    }

    fn str(&self, k: &str) -> Result<Option<&str>, ()> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(()),
        }
    }

    fn parse(bytes: &[u8]) -> Option<Object> {
        let text = std::str::from_utf8(bytes).ok()?;
        let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else { return None };
        // Valid JSON from here on: its top-level keys, as written.
        // None has an escape, so each is its key as the map holds it: the
        // map (one entry per distinct key) is as long as the list exactly
        // when no key repeats.
        let keys = top_level_keys(text)?;
        (keys.len() == map.len()).then_some(Object(map))
    }
}

/// The keys of a (valid) JSON object's top level, as written; `None` if
/// one has an escape.
fn top_level_keys(text: &str) -> Option<Vec<&str>> {
    let b = text.as_bytes();
    let (mut depth, mut i, mut keys) = (0u32, 0, Vec::new());
    while i < b.len() {
        match b[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' => {
                let start = i + 1;
                i = start;
                let mut escaped = false;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        escaped = true;
                        i += 1;
                    }
                    i += 1;
                }
                let rest = text.get(i + 1..).unwrap_or("").trim_start();
                if depth == 1 && rest.starts_with(':') {
                    if escaped {
                        return None;
                    }
                    keys.push(text.get(start..i)?);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Some(keys)
}

// ------------------------------------------------------------------ keys

/// A verification key from a key set (JWKS), reduced to what verifies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Jwk {
    /// `kid`.
    pub kid: String,
    /// The one algorithm this key verifies (declared by `alg`, or implied
    /// by `kty`/`crv` when it declares none).
    pub alg: Alg,
    /// The public key as a minimal JWK (JSON text) for WebCrypto's
    /// `importKey("jwk", …)`: only `kty`, `crv`, `x`, `y`, `n`, `e`.
    pub import: String,
    /// The length of its signatures (bytes): 64, or the RSA modulus's.
    pub sig_len: usize,
}

/// A parsed key set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Jwks {
    /// Usable keys, by `kid` (unique).
    pub keys: Vec<Jwk>,
}

impl Jwks {
    /// Parses a JWKS document. Keys that cannot verify a supported
    /// algorithm (encryption keys, other curves, RSA below
    /// [`MIN_RSA_BITS`], no `kid`, a duplicate `kid`, private parts) are
    /// skipped; a document that is not a key set is an error.
    pub fn parse(text: &str) -> Result<Jwks, String> {
        if text.len() > MAX_JWKS_LEN {
            return Err(format!("the key set is over {MAX_JWKS_LEN} bytes"));
        }
        let doc: Value = serde_json::from_str(text).map_err(|e| format!("the key set is not JSON: {e}"))?;
        let Some(Value::Array(keys)) = doc.get("keys") else {
            return Err("the key set has no \"keys\" array".into());
        };
        let mut out = Jwks::default();
        for k in keys {
            if out.keys.len() >= MAX_KEYS {
                break;
            }
            if let Some(jwk) = Self::key(k) {
                if !out.keys.iter().any(|o| o.kid == jwk.kid) {
                    out.keys.push(jwk);
                }
            }
        }
        Ok(out)
    }

    fn key(k: &Value) -> Option<Jwk> {
        let s = |name: &str| k.get(name).and_then(Value::as_str);
        let kid = s("kid").filter(|kid| !kid.is_empty() && kid.len() <= 256)?;
        if s("use").is_some_and(|u| u != "sig") || k.get("d").is_some() {
            return None;
        }
        if let Some(Value::Array(ops)) = k.get("key_ops") {
            if !ops.iter().any(|o| o.as_str() == Some("verify")) {
                return None;
            }
        }
        let part = |name: &str| s(name).filter(|v| b64url_decode(v).is_some());
        let (implied, import, sig_len) = match (s("kty")?, s("crv")) {
            ("OKP", Some("Ed25519")) => {
                let x = part("x").filter(|x| b64url_decode(x).is_some_and(|b| b.len() == 32))?;
                (Alg::EdDsa, format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{x}"}}"#), 64)
            }
            ("EC", Some("P-256")) => {
                let coord = |n: &str| part(n).filter(|c| b64url_decode(c).is_some_and(|b| b.len() == 32));
                let (x, y) = (coord("x")?, coord("y")?);
                (Alg::Es256, format!(r#"{{"kty":"EC","crv":"P-256","x":"{x}","y":"{y}"}}"#), 64)
            }
            ("RSA", None) => {
                let n = part("n")?;
                let modulus = b64url_decode(n)?;
                let modulus = &modulus[modulus.iter().take_while(|&&x| x == 0).count()..];
                let bits = modulus.first().map_or(0, |top| modulus.len() * 8 - top.leading_zeros() as usize);
                // A public exponent of at most 32 bits, odd and above 1.
                let e = part("e")?;
                let ev = b64url_decode(e).filter(|b| !b.is_empty() && b.len() <= 4)?;
                let ev = ev.iter().fold(0u64, |a, &b| a << 8 | u64::from(b));
                if bits < MIN_RSA_BITS || ev < 3 || ev % 2 == 0 {
                    return None;
                }
                (Alg::Rs256, format!(r#"{{"kty":"RSA","n":"{n}","e":"{e}"}}"#), modulus.len())
            }
            _ => return None,
        };
        // A key declares at most one algorithm; it must be the one its
        // type implies (an RSA key declaring HS256 is not a key to use).
        if s("alg").is_some_and(|a| Alg::parse(a) != Some(implied)) {
            return None;
        }
        // `import` holds only base64url text (checked above): no escaping.
        Some(Jwk { kid: kid.to_owned(), alg: implied, import, sig_len })
    }

    /// The key with this `kid`.
    pub fn get(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid == kid)
    }
}

/// An isolate's key set: inline (`JWT_JWKS`) and/or fetched
/// (`JWT_JWKS_URL`), with when it was fetched and last attempted.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    /// `JWT_JWKS`, parsed once.
    pub inline: Jwks,
    /// Whether `JWT_JWKS_URL` is configured.
    pub has_url: bool,
    /// The fetched set and when it was fetched (ms).
    pub fetched: Option<(Jwks, i64)>,
    /// When the set was last fetched (an unknown `kid` fetches it again at
    /// most [`REFRESH_MIN_MS`] after that).
    pub refreshed_at: Option<i64>,
    /// When a fetch last failed: for [`FETCH_BACKOFF_MS`] after it, no
    /// request waits for another (each is a 503 at once).
    pub failed_at: Option<i64>,
    /// How long a fetched set is used (ms).
    pub cache_ms: i64,
}

/// What the key set says about a `kid`.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'k> {
    /// This key verifies it.
    Found(&'k Jwk),
    /// Fetch the key set (`JWT_JWKS_URL`) first and ask again.
    Fetch,
    /// A fetch is needed but one failed less than [`FETCH_BACKOFF_MS`] ago:
    /// 503 without waiting.
    Unavailable,
    /// No such key.
    Unknown,
}

impl KeySet {
    /// Finds the key for `kid`: inline keys first, then a fetched set that
    /// is still fresh. A fetched set past `cache_ms` is fetched again; an
    /// unknown `kid` triggers a refresh at most once per [`REFRESH_MIN_MS`].
    pub fn lookup(&self, kid: &str, now: i64) -> Lookup<'_> {
        match self.lookup_fetching(kid, now) {
            Lookup::Fetch if self.failed_at.is_some_and(|f| now >= f && now - f < FETCH_BACKOFF_MS) => {
                Lookup::Unavailable
            }
            other => other,
        }
    }

    fn lookup_fetching(&self, kid: &str, now: i64) -> Lookup<'_> {
        if let Some(k) = self.inline.get(kid) {
            return Lookup::Found(k);
        }
        if !self.has_url {
            return Lookup::Unknown;
        }
        match &self.fetched {
            Some((set, at)) if now >= *at && now - at < self.cache_ms => match set.get(kid) {
                Some(k) => Lookup::Found(k),
                None if self.refreshed_at.is_none_or(|r| now < r || now - r >= REFRESH_MIN_MS) => Lookup::Fetch,
                None => Lookup::Unknown,
            },
            _ => Lookup::Fetch,
        }
    }

    /// Records a fetch made for `Lookup::Fetch`: the new set, or the
    /// failure (then the request that asked is a 503, and the old set is
    /// not used past its time).
    pub fn fetched(&mut self, result: Result<Jwks, String>, now: i64) -> Result<(), String> {
        // Every fetch counts as the refresh: the set just fetched is as
        // current as the provider's, so a kid it lacks is unknown (K6 of
        // fuzz/README.md: a cold isolate fetched twice and answered 503).
        self.refreshed_at = Some(now);
        match result {
            Ok(set) => {
                self.fetched = Some((set, now));
                self.failed_at = None;
                Ok(())
            }
            Err(e) => {
                self.failed_at = Some(now);
                Err(e)
            }
        }
    }
}

// ---------------------------------------------------------------- tokens

/// A verified session's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The org (from the org claim).
    pub org_id: String,
    /// The user (from the user claim).
    pub user_id: String,
    /// `iat` minus the leeway, in ms: the earliest moment the token may
    /// have been issued on keyward's clock (an identity provider's clock
    /// running ahead by up to the leeway cannot carry a token issued before
    /// a session revocation past it; signing in again works the leeway
    /// after a revocation).
    pub issued_at: i64,
    /// `exp` plus the leeway, in ms: the token is refused from then on.
    pub expires_at: i64,
    /// `jti`, if present (forwarded as `X-Keyward-Token-Id`).
    pub jti: Option<String>,
    /// The `scope` claim's keyward scopes, if it has any: the session never
    /// does more than these (capped by the user's role in any case).
    /// Entries that are not keyward scopes grant nothing; a claim with none
    /// does not narrow.
    pub scopes: Option<Vec<Scope>>,
}

/// A token whose structure, header and claims passed: what is left is its
/// signature.
#[derive(Debug, PartialEq, Eq)]
pub struct Checked<'t> {
    /// The identity it carries.
    pub session: Session,
    /// Its algorithm.
    pub alg: Alg,
    /// Its `kid` (`None` only for `HS256`).
    pub kid: Option<String>,
    /// The signed bytes: `header.payload` as presented.
    pub signing_input: &'t str,
    /// The decoded signature.
    pub signature: Vec<u8>,
}

/// Why a token is refused (never told to the client: every refusal is the
/// same `401`; the reason is for tests and logs of keyward's own faults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not a well-formed JWT (size, parts, base64url, JSON, duplicate keys).
    Malformed,
    /// `alg` not accepted, `crit`, `typ`, a missing `kid`.
    Header,
    /// A claim failed (`exp`, `nbf`, `iat`, `iss`, `aud`, org, user).
    Claims,
    /// The signature does not verify (or has the wrong length).
    Signature,
    /// No key with this `kid`, or one for another algorithm.
    UnknownKey,
}

/// Parses a token and checks everything but a public-key signature.
pub fn check<'t>(token: &'t str, cfg: &JwtConfig, now_ms: i64) -> Result<Checked<'t>, Reject> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(Reject::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Reject::Malformed);
    };
    let header = b64url_decode(h).and_then(|b| Object::parse(&b)).ok_or(Reject::Malformed)?;
    let payload = b64url_decode(p).and_then(|b| Object::parse(&b)).ok_or(Reject::Malformed)?;
    let signature = b64url_decode(sig).ok_or(Reject::Malformed)?;

    let alg = header.str("alg").ok().flatten().and_then(Alg::parse).ok_or(Reject::Header)?;
    if header.get("crit").is_some() {
        return Err(Reject::Header);
    }
    match header.str("typ") {
        Ok(None) => {}
        Ok(Some(t)) if ["JWT", "at+jwt", "application/at+jwt"].iter().any(|x| t.eq_ignore_ascii_case(x)) => {}
        _ => return Err(Reject::Header),
    }
    let kid = header.str("kid").map_err(|()| Reject::Header)?.map(str::to_owned);
    match alg {
        Alg::Hs256 if cfg.hs256_secret.is_none() => return Err(Reject::Header),
        Alg::Hs256 => {}
        _ if kid.is_none() => return Err(Reject::Header),
        _ => {}
    }
    let session = claims(&payload, cfg, now_ms).ok_or(Reject::Claims)?;
    let signing_input = &token[..h.len() + 1 + p.len()];
    Ok(Checked { session, alg, kid, signing_input, signature })
}

/// A NumericDate (seconds; fractions are truncated).
fn seconds(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => {
            n.as_i64().or_else(|| n.as_f64().filter(|f| f.is_finite() && f.abs() < 1e15).map(|f| f as i64))
        }
        _ => None,
    }
}

fn claims(c: &Object, cfg: &JwtConfig, now_ms: i64) -> Option<Session> {
    let now = now_ms.div_euclid(1000);
    let leeway = cfg.leeway_s.clamp(0, MAX_LEEWAY_SECONDS);
    let exp = seconds(c.get("exp"))?;
    let iat = seconds(c.get("iat"))?;
    if now >= exp.saturating_add(leeway) || iat > now.saturating_add(leeway) {
        return None;
    }
    if cfg.max_age_s > 0 && now.saturating_sub(iat) > cfg.max_age_s.saturating_add(leeway) {
        return None;
    }
    if c.get("nbf").is_some() && seconds(c.get("nbf"))? > now.saturating_add(leeway) {
        return None;
    }
    if c.str("iss").ok()?? != cfg.issuer {
        return None;
    }
    let aud_ok = match c.get("aud")? {
        Value::String(a) => *a == cfg.audience,
        Value::Array(a) => a.iter().any(|x| x.as_str() == Some(&cfg.audience)),
        _ => false,
    };
    if !aud_ok {
        return None;
    }
    let id = |name: &str| c.str(name).ok().flatten().filter(|s| is_valid_id(s)).map(str::to_owned);
    let org_id = id(&cfg.org_claim)?;
    let user_id = id(&cfg.user_claim)?;
    let jti = match c.get("jti") {
        None => None,
        Some(Value::String(j))
            if !j.is_empty() && j.len() <= MAX_JTI_LEN && j.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Some(j.clone())
        }
        Some(_) => return None,
    };
    // The entries that are keyward scopes narrow; a claim with none (say,
    // OpenID Connect's `openid profile email`) is about something else and
    // does not.
    let scopes: Option<Vec<Scope>> = match c.get("scope") {
        None => None,
        Some(Value::String(s)) => Some(s.split(' ').filter_map(Scope::parse).collect()),
        Some(Value::Array(a)) => Some(a.iter().filter_map(Value::as_str).filter_map(Scope::parse).collect()),
        Some(_) => return None,
    };
    let scopes = scopes.filter(|s| !s.is_empty());
    Some(Session {
        org_id,
        user_id,
        issued_at: iat.saturating_sub(leeway).saturating_mul(1000),
        expires_at: exp.saturating_add(leeway).saturating_mul(1000),
        jti,
        scopes,
    })
}

/// Verifies an `HS256` signature with the configured secret (constant
/// time).
pub fn verify_hs256(checked: &Checked<'_>, cfg: &JwtConfig) -> Result<(), Reject> {
    use hmac::{Hmac, Mac};
    let secret = cfg.hs256_secret.as_deref().ok_or(Reject::Header)?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).map_err(|_| Reject::Header)?;
    mac.update(checked.signing_input.as_bytes());
    mac.verify_slice(&checked.signature).map_err(|_| Reject::Signature)
}

/// The key that verifies a checked public-key token, or why none does.
pub fn key_for<'k>(checked: &Checked<'_>, keys: &'k KeySet, now: i64) -> Result<Lookup<'k>, Reject> {
    let kid = checked.kid.as_deref().ok_or(Reject::Header)?;
    match keys.lookup(kid, now) {
        Lookup::Found(k) if k.alg != checked.alg => Err(Reject::UnknownKey),
        Lookup::Found(k) => {
            if checked.signature.len() == k.sig_len {
                Ok(Lookup::Found(k))
            } else {
                Err(Reject::Signature)
            }
        }
        Lookup::Unknown => Err(Reject::UnknownKey),
        other => Ok(other),
    }
}

/// The guard id of a user's sessions: one guard (Durable Object) per user
/// counts the user's limits and holds the session revocation. `:` never
/// occurs in key ids, org ids or user ids, so it names no key and no other
/// user.
pub fn session_guard_id(org_id: &str, user_id: &str) -> String {
    format!("ses:{org_id}:{user_id}")
}

/// Whether a guard id is a user's sessions'.
pub fn is_session_guard(id: &str) -> bool {
    id.starts_with("ses:")
}

#[cfg(test)]
mod tests;
