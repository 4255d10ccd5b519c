//! Target `jwt`: JWT user sessions (src/jwt.rs): `check`, `verify_hs256`,
//! `b64url_decode`/`b64url_encode`, `Jwks::parse`, `KeySet::lookup` and
//! `fetched`, `key_for`, `looks_like_jwt`.
//!
//! Properties:
//! - `b64url_decode` equals a reference decoder (bit accumulator): it
//!   accepts exactly the canonical unpadded base64url strings, so
//!   `decode(s) = Some(b)` ⇒ `encode(b) == s`, and `encode(b)` always
//!   decodes to `b`;
//! - `check` never panics and **agrees with a reference reading** of the
//!   token (strict serde reader, own base64url, the rules of src/jwt.rs's
//!   doc comment): same acceptance, same refusal class, same session. An
//!   accepted token has three parts, is at most `MAX_TOKEN_LEN` bytes, an
//!   `alg` of EdDSA/ES256/RS256/HS256 (HS256 only with a secret, a `kid`
//!   otherwise), no `crit`, `signing_input` up to its last dot, org and
//!   user claims that are ids and are what the payload says, `exp` +
//!   leeway after now, `iat` no later than now + leeway and no older than
//!   the max age (+ leeway), the configured
//!   `iss`/`aud`, and header and payload without a duplicate or escaped
//!   top-level key (as a strict parser counts them): keyward and a strict
//!   parser read the same claims;
//! - HS256 tokens assembled from dangerous pieces (huge, float, negative
//!   and string dates, arrays for `aud`, `"\u0073ub"`, duplicate keys,
//!   nested look-alikes, non-canonical base64url) and signed with the
//!   secret: `verify_hs256` accepts exactly the correct MAC, and **any one
//!   character changed, removed or added** in an accepted token, in any
//!   part (including the unused bits of a part's last character), makes it
//!   fail `check` or `verify_hs256`;
//! - `key_for` never finds a key for an `HS256` token, nor one of another
//!   algorithm, and only with a signature of the algorithm's length;
//! - `Jwks::parse` never panics and equals a reference reading: at most
//!   `MAX_KEYS` keys, unique non-empty `kid`s, `alg` consistent with
//!   `kty`/`crv` (OKP/Ed25519 → EdDSA, EC/P-256 → ES256, RSA → RS256, of at
//!   least `MIN_RSA_BITS` bits), `import` a JSON object of only the public
//!   members, as in the document;
//! - `KeySet::lookup` over a sequence of lookups and fetches: `Found` only
//!   for a key of the inline set or of a fresh fetched set (inline first);
//!   `Fetch` only with a URL, for a kid not inline, and **never again for
//!   an unknown kid within `REFRESH_MIN_MS` of a fetch** while the fetched
//!   set is fresh (K6); `Unavailable` exactly when a fetch is due within
//!   `FETCH_BACKOFF_MS` of a failed one; `Unknown` only when none is due;
//! - `looks_like_jwt` equals its definition.

use arbitrary::Unstructured;
use hmac::{Hmac, Mac};
use keyward::jwt::{
    b64url_decode, b64url_encode, check as jwt_check, key_for, looks_like_jwt, verify_hs256, Alg, Checked, Jwks,
    JwtConfig, KeySet, Lookup, Reject, DEFAULT_MAX_AGE_SECONDS, FETCH_BACKOFF_MS, MAX_JTI_LEN, MAX_JWKS_LEN, MAX_KEYS,
    MAX_LEEWAY_SECONDS, MAX_TOKEN_LEN, MIN_RSA_BITS, REFRESH_MIN_MS,
};
use keyward::scope::Scope;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{json, Value};

use crate::ensure;

const NOW_MS: i64 = 1_800_000_000_000;
const ISSUER: &str = "https://idp.example.com/";
const AUDIENCE: &str = "https://api.example.com";
/// The HS256 secret of the seeds (fuzz/seeds/jwt/).
pub const SECRET: &[u8] = b"keyward-fuzz-hs256-secret-of-32+bytes";
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The inline key set of the raw-input checks (kids of the seeds' tokens).
const INLINE_JWKS: &str = r#"{"keys":[
 {"kty":"OKP","crv":"Ed25519","kid":"ed1","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
 {"kty":"EC","crv":"P-256","kid":"ec1","alg":"ES256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

fn cfg(secret: bool, leeway_s: i64) -> JwtConfig {
    let mut c = JwtConfig::new(ISSUER, AUDIENCE);
    c.leeway_s = leeway_s;
    c.hs256_secret = secret.then(|| SECRET.to_vec());
    c.max_age_s = DEFAULT_MAX_AGE_SECONDS;
    c
}

/// The check run by the fuzz target and the smoke test.
pub fn check(data: &[u8]) {
    let text = crate::text(data);
    let keys = raw_keyset();
    for line in text.split('\n').take(crate::MAX_LINES) {
        check_looks_like(line);
        for part in line.split('.').take(4) {
            check_b64(part);
        }
        for c in [cfg(true, 30), cfg(false, 30)] {
            check_token(line, &c, NOW_MS, &keys, &[]);
        }
    }
    check_b64_bytes(data);
    check_jwks(&text);
    check_fetch_then_unknown(&text);

    let mut u = Unstructured::new(data);
    check_built_token(&mut u, &keys);
    check_built_token(&mut u, &keys);
    let doc = build_jwks(&mut u);
    check_jwks(&doc);
    check_keyset(&mut u);
}

// ------------------------------------------------------------- base64url

/// Reference encoder: a bit accumulator, no padding.
fn ref_encode(b: &[u8]) -> String {
    let (mut out, mut acc, mut n) = (String::new(), 0u32, 0u32);
    for &x in b {
        acc = acc << 8 | u32::from(x);
        n += 8;
        while n >= 6 {
            n -= 6;
            out.push(char::from(ALPHABET[(acc >> n) as usize & 63]));
        }
        acc &= (1 << n) - 1;
    }
    if n > 0 {
        out.push(char::from(ALPHABET[(acc << (6 - n)) as usize & 63]));
    }
    out
}

/// Reference decoder: the URL alphabet only, and what is left over at the
/// end fewer than six bits, all zero (one spelling per byte string).
fn ref_decode(s: &str) -> Option<Vec<u8>> {
    let (mut out, mut acc, mut n) = (Vec::new(), 0u32, 0u32);
    for c in s.bytes() {
        acc = acc << 6 | ALPHABET.iter().position(|&a| a == c)? as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((acc >> n) as u8);
        }
        acc &= (1 << n) - 1;
    }
    (n < 6 && acc == 0).then_some(out)
}

fn check_b64(s: &str) {
    let got = b64url_decode(s);
    ensure!(got == ref_decode(s), None, "b64url_decode({s:?}) = {got:?}, reference {:?}", ref_decode(s));
    if let Some(b) = got {
        ensure!(b64url_encode(&b) == s, None, "b64url_decode({s:?}) = {b:?}, which encodes as {:?}", b64url_encode(&b));
    }
}

fn check_b64_bytes(b: &[u8]) {
    let b = &b[..b.len().min(512)];
    let e = b64url_encode(b);
    ensure!(e == ref_encode(b), None, "b64url_encode({b:?}) = {e:?}, reference {:?}", ref_encode(b));
    ensure!(b64url_decode(&e).as_deref() == Some(b), None, "b64url_encode({b:?}) = {e:?} does not decode back");
}

fn check_looks_like(s: &str) {
    let want = s.starts_with("eyJ") && s.matches('.').count() == 2;
    ensure!(looks_like_jwt(s) == want, None, "looks_like_jwt({s:?}) = {}", !want);
}

// ------------------------------------------------ a strict JSON object reader

/// An object key and whether it was written with an escape (serde_json
/// lends the text as written only when it has none).
struct Key(String, bool);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key, E> {
                Ok(Key(s.to_owned(), false))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key, E> {
                Ok(Key(s.to_owned(), true))
            }
        }
        d.deserialize_str(V)
    }
}

/// A JSON object's members in order, duplicates kept.
struct Members(Vec<(Key, Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Members, M::Error> {
                let mut out = Vec::new();
                while let Some(k) = m.next_key::<Key>()? {
                    let v: Value = m.next_value()?;
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Why a JSON text is not a strict object, if it is not.
fn strict_object(bytes: &[u8]) -> Result<Vec<(String, Value)>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
    let Members(members) = serde_json::from_str(text).map_err(|e| format!("not a JSON object: {e}"))?;
    let mut seen: Vec<&str> = Vec::with_capacity(members.len());
    for (Key(k, escaped), _) in &members {
        if *escaped {
            return Err(format!("key {k:?} written with an escape"));
        }
        if seen.contains(&k.as_str()) {
            return Err(format!("key {k:?} twice"));
        }
        seen.push(k);
    }
    Ok(members.into_iter().map(|(Key(k, _), v)| (k, v)).collect())
}

fn member<'a>(o: &'a [(String, Value)], k: &str) -> Option<&'a Value> {
    o.iter().find(|(n, _)| n == k).map(|(_, v)| v)
}

// --------------------------------------------------------- reference check

/// What a token carries, read by the reference.
#[derive(Debug, PartialEq)]
struct Reading {
    alg: &'static str,
    kid: Option<String>,
    org_id: String,
    user_id: String,
    issued_at: i64,
    expires_at: i64,
    jti: Option<String>,
    scopes: Option<Vec<String>>,
    signature: Vec<u8>,
}

fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A NumericDate: an integer, or a finite fraction (truncated) within
/// ±10^15 seconds.
fn numeric_date(v: Option<&Value>) -> Option<i64> {
    let Value::Number(n) = v? else { return None };
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    let f = n.as_f64()?;
    (f.is_finite() && f.abs() < 1e15).then(|| f.trunc() as i64)
}

fn to_ms(s: i128) -> i64 {
    (s * 1000).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// The rules of src/jwt.rs's doc comment, read independently.
fn reference(token: &str, cfg: &JwtConfig, now_ms: i64) -> Result<Reading, Reject> {
    use Reject::{Claims, Header, Malformed};
    if token.len() > MAX_TOKEN_LEN {
        return Err(Malformed);
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, s] = parts[..] else { return Err(Malformed) };
    let header = ref_decode(h).and_then(|b| strict_object(&b).ok()).ok_or(Malformed)?;
    let payload = ref_decode(p).and_then(|b| strict_object(&b).ok()).ok_or(Malformed)?;
    let signature = ref_decode(s).ok_or(Malformed)?;

    let alg = match member(&header, "alg") {
        Some(Value::String(a)) => ["EdDSA", "ES256", "RS256", "HS256"].into_iter().find(|x| x == a).ok_or(Header)?,
        _ => return Err(Header),
    };
    if member(&header, "crit").is_some() {
        return Err(Header);
    }
    match member(&header, "typ") {
        None => {}
        Some(Value::String(t))
            if ["jwt", "at+jwt", "application/at+jwt"].contains(&t.to_ascii_lowercase().as_str()) => {}
        Some(_) => return Err(Header),
    }
    let kid = match member(&header, "kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(Header),
    };
    if (alg == "HS256" && cfg.hs256_secret.is_none()) || (alg != "HS256" && kid.is_none()) {
        return Err(Header);
    }

    let c = &payload;
    let now = i128::from(now_ms.div_euclid(1000));
    let leeway = i128::from(cfg.leeway_s.clamp(0, MAX_LEEWAY_SECONDS));
    let exp = i128::from(numeric_date(member(c, "exp")).ok_or(Claims)?);
    let iat = i128::from(numeric_date(member(c, "iat")).ok_or(Claims)?);
    if exp + leeway <= now || iat > now + leeway {
        return Err(Claims);
    }
    if cfg.max_age_s > 0 && now - iat > i128::from(cfg.max_age_s) + leeway {
        return Err(Claims);
    }
    if let Some(nbf) = member(c, "nbf") {
        if i128::from(numeric_date(Some(nbf)).ok_or(Claims)?) > now + leeway {
            return Err(Claims);
        }
    }
    if member(c, "iss").and_then(Value::as_str) != Some(cfg.issuer.as_str()) {
        return Err(Claims);
    }
    let aud = match member(c, "aud") {
        Some(Value::String(a)) => *a == cfg.audience,
        Some(Value::Array(a)) => a.contains(&Value::String(cfg.audience.clone())),
        _ => false,
    };
    if !aud {
        return Err(Claims);
    }
    let id = |name: &str| member(c, name).and_then(Value::as_str).filter(|s| is_id(s)).map(str::to_owned);
    let org_id = id(&cfg.org_claim).ok_or(Claims)?;
    let user_id = id(&cfg.user_claim).ok_or(Claims)?;
    let jti = match member(c, "jti") {
        None => None,
        Some(Value::String(j))
            if (1..=MAX_JTI_LEN).contains(&j.len()) && j.bytes().all(|b| (0x21..0x7f).contains(&b)) =>
        {
            Some(j.clone())
        }
        Some(_) => return Err(Claims),
    };
    let scope = |s: &str| Scope::parse(s).map(|s| s.as_str().to_owned());
    let scopes = match member(c, "scope") {
        None => None,
        Some(Value::String(s)) => Some(s.split(' ').filter_map(scope).collect()),
        Some(Value::Array(a)) => Some(a.iter().filter_map(Value::as_str).filter_map(scope).collect()),
        Some(_) => return Err(Claims),
    };
    // A claim without a keyward scope (OpenID's `openid profile`) narrows
    // nothing.
    let scopes = scopes.filter(|s: &Vec<String>| !s.is_empty());
    Ok(Reading {
        alg,
        kid,
        org_id,
        user_id,
        issued_at: to_ms(iat - leeway),
        expires_at: to_ms(exp + leeway),
        jti,
        scopes,
        signature,
    })
}

fn reading_of(c: &Checked<'_>) -> Reading {
    let s = &c.session;
    Reading {
        alg: c.alg.as_str(),
        kid: c.kid.clone(),
        org_id: s.org_id.clone(),
        user_id: s.user_id.clone(),
        issued_at: s.issued_at,
        expires_at: s.expires_at,
        jti: s.jti.clone(),
        scopes: s.scopes.as_ref().map(|v| v.iter().map(|x| x.as_str().to_owned()).collect()),
        signature: c.signature.clone(),
    }
}

fn hmac(secret: &[u8], input: &str) -> Vec<u8> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(input.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// `check` agrees with the reference; an accepted token has the properties
/// of one; `verify_hs256` accepts exactly the right MAC; a verified token
/// fails once changed (`picks`: positions and characters to try, besides
/// the ends of each part); `key_for` picks only a key of the token's kind.
fn check_token(token: &str, cfg: &JwtConfig, now: i64, keys: &KeySet, picks: &[(usize, char)]) {
    let got = jwt_check(token, cfg, now);
    let want = reference(token, cfg, now);
    let c = match (got, want) {
        (Ok(c), Ok(w)) => {
            let r = reading_of(&c);
            ensure!(r == w, None, "check({token:?}) reads {r:?}, a strict reading {w:?}");
            c
        }
        (Err(g), Err(w)) => {
            ensure!(g == w, None, "check({token:?}) refuses it as {g:?}, a strict reading as {w:?}");
            return;
        }
        (got, want) => {
            ensure!(false, None, "check({token:?}) = {got:?}, a strict reading {want:?}");
            return;
        }
    };
    check_accepted(token, &c, cfg, now);
    if c.alg == Alg::Hs256 {
        let right = cfg.hs256_secret.as_deref().is_some_and(|s| hmac(s, c.signing_input) == c.signature);
        let v = verify_hs256(&c, cfg);
        ensure!(v.is_ok() == right, None, "verify_hs256({token:?}) = {v:?}, the MAC is right: {right}");
        if right {
            check_tampered(token, cfg, now, picks);
        }
    }
    check_key_for(&c, keys, now);
}

/// What every accepted token is, said directly.
fn check_accepted(token: &str, c: &Checked<'_>, cfg: &JwtConfig, now_ms: i64) {
    let parts: Vec<&str> = token.split('.').collect();
    ensure!(parts.len() == 3 && token.len() <= MAX_TOKEN_LEN, None, "check accepts {token:?}: not 3 parts or too long");
    let before_last_dot = token.rfind('.').map_or("", |i| &token[..i]);
    ensure!(c.signing_input == before_last_dot, None, "check({token:?}) signs {:?}", c.signing_input);
    let (Some(h), Some(p)) = (ref_decode(parts[0]), ref_decode(parts[1])) else {
        ensure!(false, None, "check accepts {token:?}, not base64url");
        return;
    };
    let (header, payload) = match (strict_object(&h), strict_object(&p)) {
        (Ok(h), Ok(p)) => (h, p),
        (h, p) => {
            let why = h.err().or(p.err()).unwrap_or_default();
            ensure!(false, None, "check accepts {token:?}, whose header or payload a strict parser refuses: {why}");
            return;
        }
    };
    let alg = member(&header, "alg").and_then(Value::as_str).unwrap_or("");
    ensure!(["EdDSA", "ES256", "RS256", "HS256"].contains(&alg), None, "check accepts alg {alg:?} in {token:?}");
    ensure!(alg != "HS256" || cfg.hs256_secret.is_some(), None, "check accepts HS256 without a secret: {token:?}");
    ensure!(member(&header, "crit").is_none(), None, "check accepts a crit header: {token:?}");
    let s = &c.session;
    for (claim, v) in [(&cfg.org_claim, &s.org_id), (&cfg.user_claim, &s.user_id)] {
        ensure!(is_id(v), None, "check({token:?}) gives {claim} {v:?}, not an id");
        let said = member(&payload, claim).and_then(Value::as_str);
        ensure!(said == Some(v.as_str()), None, "check({token:?}) gives {claim} {v:?}; the payload says {said:?}");
    }
    let now = now_ms.div_euclid(1000);
    let leeway = cfg.leeway_s.clamp(0, MAX_LEEWAY_SECONDS);
    let exp = numeric_date(member(&payload, "exp"));
    let iat = numeric_date(member(&payload, "iat"));
    ensure!(exp.is_some_and(|e| i128::from(e) + i128::from(leeway) > i128::from(now)), None, "expired: {token:?}");
    ensure!(iat.is_some_and(|i| i128::from(i) <= i128::from(now + leeway)), None, "issued later: {token:?}");
    let age = iat.map_or(i128::MAX, |i| i128::from(now) - i128::from(i));
    let max = i128::from(cfg.max_age_s) + i128::from(leeway);
    ensure!(cfg.max_age_s <= 0 || age <= max, None, "check accepts a token {age} s old: {token:?}");
    ensure!(member(&payload, "iss") == Some(&json!(cfg.issuer)), None, "check accepts the iss of {token:?}");
}

/// One character changed, removed or added anywhere, or a part's last
/// character changed only in its unused bits, or padding: never verifies.
fn check_tampered(token: &str, cfg: &JwtConfig, now: i64, picks: &[(usize, char)]) {
    let b = token.as_bytes();
    let mut variants: Vec<Vec<u8>> = Vec::new();
    let mut at = |i: usize, c: u8| {
        if i < b.len() {
            let mut v = b.to_vec();
            v[i] = c;
            variants.push(v);
            let mut v = b.to_vec();
            v.remove(i);
            variants.push(v);
        }
        let mut v = b.to_vec();
        v.insert(i.min(b.len()), c);
        variants.push(v);
    };
    // The ends of each part, in their unused bits; the dots.
    let mut start = 0;
    for part in token.split('.') {
        let end = start + part.len();
        if let Some(&last) = part.as_bytes().last() {
            let idx = ALPHABET.iter().position(|&a| a == last).unwrap_or(0);
            for flip in [1, 2, 3, 4, 8, 15, 32] {
                at(end - 1, ALPHABET[idx ^ flip]);
            }
            at(start, b'A');
        }
        at(end, b'=');
        start = end + 1;
    }
    for &(i, c) in picks {
        if c.is_ascii() {
            at(i % (b.len() + 1), c as u8);
        }
    }
    for v in variants {
        let m = String::from_utf8_lossy(&v);
        if m == token {
            continue;
        }
        let ok = jwt_check(&m, cfg, now).is_ok_and(|c| verify_hs256(&c, cfg).is_ok());
        ensure!(!ok, None, "{token:?} changed to {m:?} still verifies");
    }
}

/// `key_for`: a key only of the token's algorithm and kid, with a
/// signature of its length; never one for HS256.
fn check_key_for(c: &Checked<'_>, keys: &KeySet, now: i64) {
    let got = key_for(c, keys, now);
    let Some(kid) = c.kid.as_deref() else {
        ensure!(got == Err(Reject::Header), None, "key_for of a token without kid: {got:?}");
        return;
    };
    let fine = match (&got, keys.lookup(kid, now)) {
        (Ok(Lookup::Found(k)), Lookup::Found(l)) => {
            let len_ok = match k.alg {
                Alg::EdDsa | Alg::Es256 => k.sig_len == 64,
                Alg::Rs256 => k.sig_len >= MIN_RSA_BITS / 8,
                Alg::Hs256 => false,
            };
            *k == l && k.kid == kid && k.alg == c.alg && c.alg != Alg::Hs256 && len_ok && c.signature.len() == k.sig_len
        }
        (Ok(Lookup::Fetch), Lookup::Fetch) | (Ok(Lookup::Unavailable), Lookup::Unavailable) => true,
        (Err(Reject::UnknownKey), Lookup::Unknown) => true,
        (Err(Reject::UnknownKey), Lookup::Found(k)) => k.alg != c.alg,
        (Err(Reject::Signature), Lookup::Found(k)) => k.alg == c.alg && c.signature.len() != k.sig_len,
        _ => false,
    };
    ensure!(fine, None, "key_for({:?} kid {kid:?}, {} signature bytes) = {got:?}", c.alg, c.signature.len());
}

fn raw_keyset() -> KeySet {
    let inline = Jwks::parse(INLINE_JWKS).unwrap_or_default();
    KeySet {
        inline,
        has_url: true,
        fetched: Some((Jwks::default(), NOW_MS - 1)),
        cache_ms: 300_000,
        ..KeySet::default()
    }
}

// ------------------------------------------------------- built HS256 tokens

fn date_pieces(now: i64) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for d in [
        -86461, -86460, -86431, -86430, -86429, -86400, -3600, -61, -60, -31, -30, -29, -1, 0, 1, 29, 30, 31, 60, 61,
        900,
    ] {
        let n = now + d;
        v.extend([n.to_string(), format!("{n}.0"), format!("{n}.5"), format!("{n}.999"), format!("{n}e0")]);
    }
    v.extend(
        [
            "\"1800000900\"",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "18446744073709551616",
            "1e15",
            "999999999999999.9",
            "1e308",
            "1e400",
            "-0.5",
            "-1",
            "0",
            "null",
            "true",
            "[1800000900]",
            "{}",
            "1800000900E-0",
            "18000009e2",
            "-0",
        ]
        .map(str::to_owned),
    );
    v
}

#[rustfmt::skip]
const ID_PIECES: &[&str] = &[
    r#""user_1""#, r#""org-1""#, r#""u""#, r#""""#, r#""user 1""#, r#""user.1""#, r#""usér""#, "1", "null",
    r#"["user_1"]"#, r#""user_1\u0000""#, r#""\u0075ser_1""#, r#""user_1\n""#, r#"{"sub":"user_1"}"#,
    r#""aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa""#,
    r#""aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa""#,
];

#[rustfmt::skip]
const ISS_PIECES: &[&str] = &[
    r#""https://idp.example.com/""#, r#""https://idp.example.com""#, r#""https://idp.example.com/ ""#,
    r#""https:\/\/idp.example.com\/""#, r#"["https://idp.example.com/"]"#, "null", "1", r#""HTTPS://idp.example.com/""#,
];

#[rustfmt::skip]
const AUD_PIECES: &[&str] = &[
    r#""https://api.example.com""#, r#"["other","https://api.example.com"]"#, r#"["other"]"#, "[]",
    r#""https://api.example.comx""#, r#"{"aud":"https://api.example.com"}"#, "null",
    r#"[1,"https://api.example.com"]"#, r#"[["https://api.example.com"]]"#, r#""HTTPS://api.example.com""#,
    r#""https://api.example.com\u0000""#, r#"["https://api.example.com","https://api.example.com"]"#,
];

#[rustfmt::skip]
const JTI_PIECES: &[&str] = &[
    r#""t-1""#, r#""""#, r#""a b""#, "1", "null", r#""é""#, r#""\u0007""#, r#"["t-1"]"#,
    r#""xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx""#,
    r#""xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx""#,
];

#[rustfmt::skip]
const SCOPE_PIECES: &[&str] = &[
    r#""documents:read""#, r#""documents:read bogus *""#, r#"["documents:read",1,"chat:*"]"#, "1", "null",
    r#""""#, "{}", r#"" documents:read  chat:write ""#, r#"["*"]"#,
];

#[rustfmt::skip]
const EXTRA_PIECES: &[&str] = &[
    r#""\u0073ub":"evil""#, r#""sub":"evil""#, r#""org_id":"evil""#, r#""exp":9999999999"#,
    r#""x":{"sub":"evil","sub":"e2","exp":0}"#, r#""nested":[{"exp":0,"iss":"x"}]"#, r#""s\"ub":"x""#,
    r#""org_id ":"x""#, r#""":1"#, r#""ext":"\\""#, r#""note":"\"sub\":\"admin\",{[""#, r#""iss":"evil""#,
    r#""aud":"https://api.example.com""#, r#""\/sub":1"#, r#""https://example.com/org":"org_2""#,
];

#[rustfmt::skip]
const ALG_PIECES: &[&str] = &[
    r#""HS256""#, r#""none""#, r#""hs256""#, r#""RS256""#, r#""EdDSA""#, r#""ES256""#, r#""HS512""#, r#"["HS256"]"#,
    "null", r#""HS256 ""#, r#""H\u0053256""#,
];

#[rustfmt::skip]
const TYP_PIECES: &[&str] = &[
    r#""JWT""#, r#""at+JWT""#, r#""application/at+jwt""#, r#""JWS""#, "1", r#""jwt""#, r#""JWT ""#, "null",
];

const KID_PIECES: &[&str] = &[r#""ed1""#, r#""ec1""#, r#""""#, "7", "null", r#""k\u0031""#];

#[rustfmt::skip]
const HEADER_EXTRAS: &[&str] = &[
    r#""crit":["exp"]"#, r#""crit":null"#, r#""crit":[]"#, r#""alg":"none""#, r#""\u0061lg":"HS256""#,
    r#""jku":"https://evil.example""#, r#""x":{"alg":"none","alg":"none"}"#, r#""typ":"JWT""#,
];

const SPACES: &[&str] = &["", "", "", " ", "\n", "\t", "  "];

/// A JSON object of `fields`, in an order and spacing from the recipe, and
/// now and then not an object.
fn object(u: &mut Unstructured<'_>, mut fields: Vec<String>) -> String {
    for i in (1..fields.len()).rev() {
        let j = u.int_in_range(0..=i).unwrap_or(i);
        fields.swap(i, j);
    }
    let sp = *u.choose(SPACES).unwrap_or(&"");
    let fields: Vec<String> = fields.into_iter().map(|f| f.replacen("\":", &format!("\"{sp}:{sp}"), 1)).collect();
    let body = format!("{{{sp}{}{sp}}}", fields.join(&format!(",{sp}")));
    match u.int_in_range(0..=49u8).unwrap_or(0) {
        0 => format!("[{body}]"),
        1 => format!("{body},"),
        2 => format!("\u{feff}{body}"),
        3 => body[..body.len() - 1].to_owned(),
        4 => format!("{body} x"),
        _ => body,
    }
}

fn claim(u: &mut Unstructured<'_>, fields: &mut Vec<String>, name: &str, pieces: &[&str], absent: u8) {
    if u.int_in_range(0..=99u8).unwrap_or(0) >= absent {
        // Mostly the first piece, a valid one.
        let v = if u.ratio(3u8, 4).unwrap_or(true) { pieces[0] } else { *u.choose(pieces).unwrap_or(&pieces[0]) };
        fields.push(format!("\"{name}\":{v}"));
    }
}

fn build_payload(u: &mut Unstructured<'_>, now_s: i64) -> String {
    let dates = date_pieces(now_s);
    let mut f = Vec::new();
    claim(u, &mut f, "iss", ISS_PIECES, 5);
    claim(u, &mut f, "aud", AUD_PIECES, 5);
    claim(u, &mut f, "sub", ID_PIECES, 5);
    claim(u, &mut f, "org_id", ID_PIECES, 5);
    // Signed offsets from now (a short recipe gives the first: valid).
    for (name, absent, range, sign) in [("exp", 5, 1..=3600, 1), ("iat", 5, 0..=3600, -1), ("nbf", 70, 0..=600, -1)] {
        if u.int_in_range(0..=99u8).unwrap_or(0) >= absent {
            // Mostly a plain date near now.
            let v = if u.ratio(3u8, 4).unwrap_or(true) {
                (now_s + sign * u.int_in_range(range).unwrap_or(1)).to_string()
            } else {
                u.choose(&dates).cloned().unwrap_or_default()
            };
            f.push(format!("\"{name}\":{v}"));
        }
    }
    claim(u, &mut f, "jti", JTI_PIECES, 60);
    claim(u, &mut f, "scope", SCOPE_PIECES, 70);
    if u.ratio(1u8, 4).unwrap_or(false) {
        for _ in 0..u.int_in_range(1..=2u8).unwrap_or(1) {
            f.push((*u.choose(EXTRA_PIECES).unwrap_or(&EXTRA_PIECES[0])).to_owned());
        }
    }
    object(u, f)
}

fn build_header(u: &mut Unstructured<'_>) -> String {
    let mut f = Vec::new();
    claim(u, &mut f, "alg", ALG_PIECES, 3);
    claim(u, &mut f, "typ", TYP_PIECES, 50);
    claim(u, &mut f, "kid", KID_PIECES, 80);
    if u.ratio(1u8, 8).unwrap_or(false) {
        f.push((*u.choose(HEADER_EXTRAS).unwrap_or(&HEADER_EXTRAS[0])).to_owned());
    }
    object(u, f)
}

/// A part's base64url, and now and then a non-canonical spelling of it.
fn encode_part(u: &mut Unstructured<'_>, bytes: &[u8]) -> String {
    let mut e = ref_encode(bytes);
    match u.int_in_range(0..=29u8).unwrap_or(0) {
        0 if !bytes.len().is_multiple_of(3) => {
            // Unused bits set in the last character.
            let last = e.pop().unwrap_or('A');
            let i = ALPHABET.iter().position(|&a| char::from(a) == last).unwrap_or(0);
            e.push(char::from(ALPHABET[i | 1]));
        }
        1 => e.push_str(["=", "==", "\n"][bytes.len() % 3]),
        2 => e = e.replace('-', "+").replace('_', "/"),
        3 => e.push('A'),
        _ => {}
    }
    e
}

/// An HS256 token from the recipe, signed (mostly) with the secret, checked
/// against the reference under a configuration from the recipe.
fn check_built_token(u: &mut Unstructured<'_>, keys: &KeySet) {
    let now = NOW_MS + u.int_in_range(-1500..=1500i64).unwrap_or(0);
    let leeway = *u.choose(&[30i64, 30, 0, 60, 61, -1]).unwrap_or(&30);
    let mut c = cfg(true, leeway);
    c.max_age_s = *u.choose(&[DEFAULT_MAX_AGE_SECONDS, DEFAULT_MAX_AGE_SECONDS, 0, 60, -1]).unwrap_or(&0);
    c.org_claim = (*u.choose(&["org_id", "org_id", "https://example.com/org", "sub"]).unwrap_or(&"org_id")).to_owned();
    let header = build_header(u);
    let payload = build_payload(u, now.div_euclid(1000));
    let input = format!("{}.{}", encode_part(u, header.as_bytes()), encode_part(u, payload.as_bytes()));
    let mut sig = hmac(SECRET, &input);
    match u.int_in_range(0..=19u8).unwrap_or(0) {
        0 => sig = hmac(b"another deployment's secret of 32+ bytes", &input),
        1 => sig.clear(),
        2 => {
            sig.pop();
        }
        3 => sig.push(0),
        _ => {}
    }
    let token = format!("{input}.{}", encode_part(u, &sig));
    let picks: Vec<(usize, char)> = (0..u.int_in_range(0..=4u8).unwrap_or(0))
        .map(|_| {
            let i = u.int_in_range(0..=token.len()).unwrap_or(0);
            (i, *u.choose(&['A', 'a', '0', '-', '_', '.', '=', '+', 'e', 'J', 'Q']).unwrap_or(&'A'))
        })
        .collect();
    check_token(&token, &c, now, keys, &picks);
    let mut without = cfg(false, leeway);
    without.max_age_s = c.max_age_s;
    check_token(&token, &without, now, keys, &[]);
}

// ------------------------------------------------------------------ JWKS

/// The reference reading of one JWK: its kid, algorithm and import text.
fn ref_key(k: &Value) -> Option<(String, Alg, Value, usize)> {
    let o = k.as_object()?;
    let s = |n: &str| o.get(n).and_then(Value::as_str);
    let kid = s("kid").filter(|k| (1..=256).contains(&k.len()))?;
    if s("use").is_some_and(|u| u != "sig") || o.contains_key("d") {
        return None;
    }
    if let Some(Value::Array(ops)) = o.get("key_ops") {
        if !ops.contains(&json!("verify")) {
            return None;
        }
    }
    let b64 = |n: &str| s(n).and_then(|v| ref_decode(v).map(|b| (v, b)));
    let (alg, import, sig_len) = match (s("kty")?, s("crv")) {
        ("OKP", Some("Ed25519")) => {
            let (x, _) = b64("x").filter(|(_, b)| b.len() == 32)?;
            (Alg::EdDsa, json!({"kty": "OKP", "crv": "Ed25519", "x": x}), 64)
        }
        ("EC", Some("P-256")) => {
            let (x, _) = b64("x").filter(|(_, b)| b.len() == 32)?;
            let (y, _) = b64("y").filter(|(_, b)| b.len() == 32)?;
            (Alg::Es256, json!({"kty": "EC", "crv": "P-256", "x": x, "y": y}), 64)
        }
        ("RSA", None) => {
            let (n, bytes) = b64("n")?;
            // The modulus's size in bits: from its highest set bit.
            let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
            let bits = bytes.get(first).map_or(0, |&b| (bytes.len() - first) * 8 - b.leading_zeros() as usize);
            if bits < MIN_RSA_BITS {
                return None;
            }
            // The public exponent: odd, 3 to 2^32 - 1.
            let (e, ev) = b64("e")?;
            let value = ev.iter().fold(0u128, |a, &b| a << 8 | u128::from(b));
            if ev.is_empty() || ev.len() > 4 || value < 3 || value % 2 == 0 {
                return None;
            }
            (Alg::Rs256, json!({"kty": "RSA", "n": n, "e": e}), bytes.len() - first)
        }
        _ => return None,
    };
    if s("alg").is_some_and(|a| a != alg.as_str()) {
        return None;
    }
    Some((kid.to_owned(), alg, import, sig_len))
}

fn ref_jwks(text: &str) -> Option<Vec<(String, Alg, Value, usize)>> {
    if text.len() > MAX_JWKS_LEN {
        return None;
    }
    let doc: Value = serde_json::from_str(text).ok()?;
    let Some(Value::Array(keys)) = doc.get("keys") else { return None };
    let mut out: Vec<(String, Alg, Value, usize)> = Vec::new();
    for k in keys {
        if out.len() >= MAX_KEYS {
            break;
        }
        if let Some(key) = ref_key(k) {
            if !out.iter().any(|(kid, ..)| *kid == key.0) {
                out.push(key);
            }
        }
    }
    Some(out)
}

fn check_jwks(text: &str) {
    let got = Jwks::parse(text);
    let Ok(set) = got else {
        ensure!(ref_jwks(text).is_none(), None, "Jwks::parse refuses a key set: {got:?} for {text:?}");
        return;
    };
    ensure!(set.keys.len() <= MAX_KEYS, None, "Jwks::parse keeps {} keys", set.keys.len());
    let mut read = Vec::new();
    for (i, k) in set.keys.iter().enumerate() {
        ensure!(!k.kid.is_empty(), None, "Jwks::parse keeps a key without kid in {text:?}");
        ensure!(set.keys[..i].iter().all(|o| o.kid != k.kid), None, "Jwks::parse keeps kid {:?} twice", k.kid);
        let Ok(Value::Object(import)) = serde_json::from_str::<Value>(&k.import) else {
            ensure!(false, None, "Jwks::parse: import {:?} is not a JSON object", k.import);
            return;
        };
        let public =
            import.iter().all(|(m, v)| ["kty", "crv", "x", "y", "n", "e"].contains(&m.as_str()) && v.is_string());
        ensure!(public, None, "Jwks::parse: import {:?} has more than the public members", k.import);
        let kind = (import.get("kty").and_then(Value::as_str), import.get("crv").and_then(Value::as_str));
        let alg = match kind {
            (Some("OKP"), Some("Ed25519")) => Some(Alg::EdDsa),
            (Some("EC"), Some("P-256")) => Some(Alg::Es256),
            (Some("RSA"), None) => Some(Alg::Rs256),
            _ => None,
        };
        ensure!(alg == Some(k.alg), None, "Jwks::parse: key {:?} of alg {:?} imports as {:?}", k.kid, k.alg, k.import);
        read.push((k.kid.clone(), k.alg, Value::Object(import), k.sig_len));
    }
    let want = ref_jwks(text);
    ensure!(want.as_ref() == Some(&read), None, "Jwks::parse({text:?}) keeps {read:?}, a strict reading {want:?}");
}

#[rustfmt::skip]
const KTY_PIECES: &[&str] = &[
    r#""kty":"OKP","crv":"Ed25519""#, r#""kty":"OKP","crv":"X25519""#, r#""kty":"EC","crv":"P-256""#,
    r#""kty":"EC","crv":"P-384""#, r#""kty":"RSA""#, r#""kty":"RSA","crv":"P-256""#, r#""kty":"oct""#,
    r#""kty":1"#, r#""crv":"Ed25519""#, r#""kty":"ec","crv":"P-256""#,
];

fn b64_of_len(n: usize, first: u8) -> String {
    let mut b: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(7) | 1).collect();
    if let Some(f) = b.first_mut() {
        *f = first;
    }
    ref_encode(&b)
}

fn build_key(u: &mut Unstructured<'_>) -> String {
    let mut f: Vec<String> = vec![(*u.choose(KTY_PIECES).unwrap_or(&KTY_PIECES[0])).to_owned()];
    let coord = |u: &mut Unstructured<'_>| -> String {
        match u.int_in_range(0..=9u8).unwrap_or(0) {
            0 => format!("\"{}\"", b64_of_len(31, 1)),
            1 => format!("\"{}\"", b64_of_len(33, 1)),
            2 => "\"\"".into(),
            3 => format!("\"{}=\"", b64_of_len(32, 1)),
            4 => "5".into(),
            5 => format!("\"{}\"", b64_of_len(32, 1).replace('-', "+").replace('_', "/")),
            _ => format!("\"{}\"", b64_of_len(32, u.arbitrary().unwrap_or(1))),
        }
    };
    for name in ["x", "y"] {
        if u.int_in_range(0..=9u8).unwrap_or(0) > 0 {
            f.push(format!("\"{name}\":{}", coord(u)));
        }
    }
    if u.ratio(1u8, 2).unwrap_or(false) {
        let n = match u.int_in_range(0..=6u8).unwrap_or(0) {
            0 => b64_of_len(255, 0xc1),
            1 => b64_of_len(256, 0x01),
            2 => b64_of_len(257, 0x00),
            3 => format!("{}=", b64_of_len(256, 0xc1)),
            4 => b64_of_len(384, 0xd3),
            _ => b64_of_len(256, 0xc1),
        };
        f.push(format!("\"n\":\"{n}\""));
        #[rustfmt::skip]
        let e: &[&str] = &[
            r#""e":"AQAB""#, r#""e":"AQAB""#, r#""e":"""#, r#""e":"AQ=""#, r#""e":3"#, r#""e":"Aw""#, r#""e":"AQ""#,
            r#""e":"Ag""#, r#""e":"AAEAAQ""#, r#""e":"AQABAQ""#, r#""e":"AQAAAAE""#, r#""e":"_____w""#, r#""e":"AA""#,
        ];
        f.push((*u.choose(e).unwrap_or(&e[0])).into());
    }
    let kid = *u
        .choose(&[
            r#""kid":"k1""#,
            r#""kid":"k2""#,
            r#""kid":"k3""#,
            r#""kid":"k4""#,
            r#""kid":"ed1""#,
            r#""kid":"""#,
            r#""kid":5"#,
            "",
        ])
        .unwrap_or(&"");
    if !kid.is_empty() {
        f.push(kid.into());
    }
    if u.ratio(1u8, 8).unwrap_or(false) {
        f.push(format!("\"kid\":\"{}\"", "k".repeat(u.int_in_range(255..=257usize).unwrap_or(256))));
    }
    #[rustfmt::skip]
    let extras: &[&str] = &[
        r#""alg":"EdDSA""#, r#""alg":"ES256""#, r#""alg":"RS256""#, r#""alg":"HS256""#, r#""alg":"none""#,
        r#""alg":5"#, r#""use":"sig""#, r#""use":"enc""#, r#""use":1"#, r#""d":"AQAB""#, r#""d":null"#,
        r#""key_ops":["verify"]"#, r#""key_ops":["sign"]"#, r#""key_ops":[]"#, r#""key_ops":"sign""#,
        r#""x5c":["MIIB"]"#, r#""ext":true"#, r#""p":"AQAB""#,
    ];
    for _ in 0..u.int_in_range(0..=2u8).unwrap_or(0) {
        f.push((*u.choose(extras).unwrap_or(&extras[0])).into());
    }
    format!("{{{}}}", f.join(","))
}

fn build_jwks(u: &mut Unstructured<'_>) -> String {
    let n = if u.ratio(1u8, 10).unwrap_or(false) { u.int_in_range(30..=40usize) } else { u.int_in_range(0..=5usize) };
    let keys: Vec<String> = (0..n.unwrap_or(0)).map(|_| build_key(u)).collect();
    let keys = keys.join(",");
    match u.int_in_range(0..=19u8).unwrap_or(0) {
        0 => format!("[{keys}]"),
        1 => r#"{"keys":{}}"#.to_owned(),
        2 => format!(r#"{{"keys":[{keys}],"keys":[]}}"#),
        3 => format!(r#"{{"keys":[{keys}]}} x"#),
        4 => format!(r#"{{"keys":null,"keys":[{keys}]}}"#),
        _ => format!(r#"{{"keys":[{keys}]}}"#),
    }
}

// ---------------------------------------------------------------- KeySet

const SET_A: &str = r#"{"keys":[
 {"kty":"OKP","crv":"Ed25519","kid":"k1","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
 {"kty":"EC","crv":"P-256","kid":"k2","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
const SET_B: &str = r#"{"keys":[
 {"kty":"OKP","crv":"Ed25519","kid":"k3","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
 {"kty":"OKP","crv":"Ed25519","kid":"k2","x":"AAqYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
const SET_INLINE: &str = r#"{"keys":[
 {"kty":"OKP","crv":"Ed25519","kid":"k4","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
 {"kty":"OKP","crv":"Ed25519","kid":"k1","x":"BBqYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

/// K6 (fixed): a key set fetched when there was none, or when the one held
/// had expired, did not count as a refresh, so the next unknown kid fetched
/// again at once (the shell then answered 503 after two fetches).
const K6: Option<&str> = None;

/// A sequence of lookups at increasing times, each `Fetch` answered by a
/// fetch (a set of a pool, or a failure), against a model of the set.
fn check_keyset(u: &mut Unstructured<'_>) {
    let pool = [Jwks::parse(SET_A), Jwks::parse(SET_B), Ok(Jwks::default())].map(Result::unwrap_or_default);
    let inline = match u.int_in_range(0..=2u8).unwrap_or(0) {
        0 => Jwks::default(),
        _ => Jwks::parse(SET_INLINE).unwrap_or_default(),
    };
    let cache_ms = *u.choose(&[300_000i64, 300_000, 0, 1_000, 59_999, 60_000, 3_600_000]).unwrap_or(&300_000);
    let has_url = u.int_in_range(0..=5u8).unwrap_or(1) > 0;
    let mut ks = KeySet { inline: inline.clone(), has_url, cache_ms, ..KeySet::default() };
    let mut now = NOW_MS + u.int_in_range(0..=999i64).unwrap_or(0);
    // The model: the set held (pool index, when), the last fetch made.
    let mut held: Option<(usize, i64)> = None;
    let mut last_fetch: Option<i64> = None;
    let mut failed: Option<i64> = None;
    for _ in 0..u.int_in_range(1..=24u8).unwrap_or(1) {
        let step = [0, 1, 999, 4_999, 5_000, 30_000, 59_999, 60_000, 60_001, cache_ms - 1, cache_ms, 299_999, 300_000];
        now += (*u.choose(&step).unwrap_or(&0)).max(0);
        let kid = *u.choose(&["k1", "k2", "k3", "k4", "k5"]).unwrap_or(&"k1");
        let got = ks.lookup(kid, now);
        let fresh = held.filter(|&(_, at)| now >= at && now - at < cache_ms).map(|(i, _)| &pool[i]);
        let recent = last_fetch.is_some_and(|r| now >= r && now - r < REFRESH_MIN_MS);
        let backoff = failed.is_some_and(|f| now >= f && now - f < FETCH_BACKOFF_MS);
        let what =
            || format!("lookup({kid:?}) at +{} ms, {} fresh set, has_url {has_url}", now - NOW_MS, fresh.is_some());
        match &got {
            Lookup::Found(k) => {
                let want = inline.get(kid).or(if has_url { fresh.and_then(|s| s.get(kid)) } else { None });
                ensure!(want == Some(*k), None, "{}: Found({k:?}), the model {want:?}", what());
            }
            Lookup::Fetch | Lookup::Unavailable => {
                ensure!(has_url && inline.get(kid).is_none(), None, "{}: {got:?}", what());
                ensure!(fresh.is_none_or(|s| s.get(kid).is_none()), None, "{}: {got:?} for a key it holds", what());
                let unavailable = got == Lookup::Unavailable;
                ensure!(unavailable == backoff, None, "{}: {got:?}, a fetch failed at {failed:?}", what());
                ensure!(
                    fresh.is_none() || !recent,
                    K6,
                    "{}: Fetch again for an unknown kid {} ms after a fetch",
                    what(),
                    now - last_fetch.unwrap_or(now)
                );
            }
            Lookup::Unknown => {
                let due = has_url && (fresh.is_none() || !recent);
                let known = inline.get(kid).is_some() || fresh.is_some_and(|s| s.get(kid).is_some());
                ensure!(!known && !due, None, "{}: Unknown", what());
            }
        }
        if got == Lookup::Fetch {
            let i = u.int_in_range(0..=3usize).unwrap_or(0);
            let result = pool.get(i).cloned().ok_or_else(|| "the key set is not JSON".to_owned());
            let r = ks.fetched(result, now);
            ensure!(r.is_ok() == (i < 3), None, "fetched({i}) = {r:?}");
            last_fetch = Some(now);
            if i < 3 {
                held = Some((i, now));
                failed = None;
            } else {
                failed = Some(now);
            }
        }
    }
}

/// The raw input as a fetched key set, the first one an isolate fetches:
/// a kid it does not hold is unknown, not fetched again at once.
fn check_fetch_then_unknown(text: &str) {
    let Ok(set) = Jwks::parse(text) else { return };
    let mut ks = KeySet { has_url: true, cache_ms: 300_000, ..KeySet::default() };
    let kid = "a kid of no key set";
    if set.get(kid).is_some() || ks.lookup(kid, NOW_MS) != Lookup::Fetch {
        return;
    }
    if ks.fetched(Ok(set), NOW_MS).is_err() {
        return;
    }
    let again = ks.lookup(kid, NOW_MS + 1);
    ensure!(again == Lookup::Unknown, K6, "a kid not in a key set fetched 1 ms ago: {again:?}, a fetch again");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_base64url() {
        for n in 0..20 {
            let b: Vec<u8> = (0..n).map(|i| (i * 91 + 5) as u8).collect();
            assert_eq!(ref_decode(&ref_encode(&b)).unwrap(), b);
            assert_eq!(ref_encode(&b), b64url_encode(&b));
        }
        for bad in ["A", "QR", "QUJ", "AB=", "a+b/"] {
            assert!(ref_decode(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn strict_reader_sees_escapes_and_duplicates() {
        assert!(strict_object(br#"{"a":1,"b":{"a":2,"a":3}}"#).is_ok());
        assert!(strict_object(br#"{"a":1,"a":2}"#).unwrap_err().contains("twice"));
        assert!(strict_object(br#"{"\u0061":1}"#).unwrap_err().contains("escape"));
        assert!(strict_object(br#"[1]"#).is_err());
    }

    #[test]
    fn a_signed_token_is_accepted() {
        let h = ref_encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let p = ref_encode(
            br#"{"iss":"https://idp.example.com/","aud":"https://api.example.com","sub":"user_1","org_id":"org_1","iat":1799999990,"exp":1800000900}"#,
        );
        let input = format!("{h}.{p}");
        let t = format!("{input}.{}", ref_encode(&hmac(SECRET, &input)));
        let c = jwt_check(&t, &cfg(true, 30), NOW_MS).unwrap();
        assert!(verify_hs256(&c, &cfg(true, 30)).is_ok());
        check(t.as_bytes());
    }
}
