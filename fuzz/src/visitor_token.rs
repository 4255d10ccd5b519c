//! Target `visitor_token`: the signed visitor tokens of widget keys that
//! require Turnstile (`X-Keyward-Visitor`, `turnstile::verify` and
//! `issue`), the siteverify answer (`turnstile::verdict`) and
//! `turnstile::plausible_token` (src/turnstile.rs). keyward has no JWT; this
//! is its signed token.
//!
//! Properties:
//! - a token `verify` accepts re-serializes identically: it is exactly what
//!   `issue` writes for the expiry it names (one spelling per token);
//! - an issued token verifies for its key, key id and visitor until its
//!   expiry (whole seconds) and not from then on; never for another key id,
//!   visitor or secret; and no longer once any one character is changed,
//!   removed or added;
//! - `verdict` is `Ok` only for a `200` whose JSON says `"success": true`
//!   and the expected `hostname`; `Refused` only when it says `false`;
//!   `WrongHost` only for a success on another host;
//! - `plausible_token` is exactly "1–2048 bytes of `[A-Za-z0-9._:-]`".

use arbitrary::Unstructured;
use keyward::signing::{sign, SigningKey};
use keyward::turnstile::{issue, plausible_token, verdict, verify, visitor_token_key, Failure, MAX_TOKEN_LEN};
use serde_json::Value;

use crate::ensure;

const NOW_MS: i64 = 1_800_000_000_000;
const KEY_ID: &str = "01KEYWARDKEY0000000000000";
const VISITOR: &str = "203.0.113.7";

fn key() -> &'static SigningKey {
    static K: std::sync::OnceLock<SigningKey> = std::sync::OnceLock::new();
    K.get_or_init(|| visitor_token_key(b"an origin signing secret of 32 bytes!"))
}

/// The check run by the fuzz target and the smoke test.
pub fn check(data: &[u8]) {
    let text = crate::text(data);
    for line in text.split('\n').take(crate::MAX_LINES) {
        check_verified(key(), line, KEY_ID, VISITOR, NOW_MS);
        check_plausible(line);
    }
    check_verdict(200, &text, "shop.example.com");

    let mut u = Unstructured::new(data);
    let secret: Vec<u8> = (0..u.int_in_range(0..=40usize).unwrap_or(32)).map(|_| u.arbitrary().unwrap_or(7)).collect();
    let k = visitor_token_key(&secret);
    let key_id = *u.choose(&[KEY_ID, "01OTHER", "", "a\nb"]).unwrap_or(&KEY_ID);
    let visitor = *u.choose(&[VISITOR, "2001:db8::/48", "unknown", "203.0.113.70", "b"]).unwrap_or(&VISITOR);
    let now = u.int_in_range(1_000_000_000_000..=4_000_000_000_000i64).unwrap_or(NOW_MS);
    let ttl = u.int_in_range(1..=86_400_000i64).unwrap_or(900_000);
    check_issued(&k, key_id, visitor, now, ttl, &mut u);
    let status = *u.choose(&[200u16, 200, 500, 429, 0]).unwrap_or(&200);
    let body = build_answer(&mut u);
    let host = *u.choose(&["shop.example.com", "evil.example.com", ""]).unwrap_or(&"shop.example.com");
    check_verdict(status, &body, host);
}

/// If `verify` accepts `token`, it is exactly the token `issue` writes.
fn check_verified(k: &SigningKey, token: &str, key_id: &str, visitor: &str, now: i64) {
    if !verify(k, token, key_id, visitor, now) {
        return;
    }
    let exp = token.split('.').nth(1).and_then(|e| e.parse::<i64>().ok()).unwrap_or(-1);
    let again = format!("v1.{exp}.{}", sign(k, &format!("keyward-visitor-v1\n{key_id}\n{visitor}\n{exp}")));
    ensure!(again == token, None, "verify accepts {token:?}, which is written {again:?}");
    ensure!(exp.saturating_mul(1000) > now, None, "verify accepts {token:?}, expired at {now}");
}

fn check_issued(k: &SigningKey, key_id: &str, visitor: &str, now: i64, ttl: i64, u: &mut Unstructured<'_>) {
    let t = issue(k, key_id, visitor, now, ttl);
    let end = (now + ttl).div_euclid(1000) * 1000;
    let at = now + u.int_in_range(-ttl..=2 * ttl).unwrap_or(0);
    let ok = verify(k, &t, key_id, visitor, at);
    ensure!(ok == (at < end), None, "{t:?} (now {now}, ttl {ttl}) verifies at {at}: {ok}");
    check_verified(k, &t, key_id, visitor, at);
    let before = at.min(end - 1);
    for (id, v) in [(format!("{key_id}x"), visitor.to_owned()), (key_id.to_owned(), format!("{visitor}0"))] {
        ensure!(!verify(k, &t, &id, &v, before), None, "{t:?} of {key_id:?}/{visitor:?} verifies for {id:?}/{v:?}");
    }
    let other = visitor_token_key(b"another deployment's secret");
    ensure!(!verify(&other, &t, key_id, visitor, before), None, "{t:?} verifies under another secret");
    // One character changed, removed or added; a zero-padded expiry; the
    // MAC in upper case.
    let chars: Vec<char> = t.chars().collect();
    let i = u.choose_index(chars.len()).unwrap_or(0);
    let c = *u.choose(&['0', '1', 'a', 'f', 'A', '.', 'v', '9', ' ', 'g']).unwrap_or(&'0');
    let mut changed = chars.clone();
    changed[i] = c;
    let mut removed = chars.clone();
    removed.remove(i);
    let mut added = chars.clone();
    added.insert(i, c);
    let padded = t.replacen("v1.", "v1.0", 1);
    let upper = t.to_ascii_uppercase().replacen("V1.", "v1.", 1);
    for m in [changed.into_iter().collect(), removed.into_iter().collect(), added.into_iter().collect(), padded, upper]
    {
        let m: String = m;
        if m != t {
            ensure!(!verify(k, &m, key_id, visitor, before), None, "{t:?} changed to {m:?} still verifies");
        }
    }
}

fn check_plausible(s: &str) {
    let want = (1..=MAX_TOKEN_LEN).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    ensure!(plausible_token(s) == want, None, "plausible_token({s:?}) = {}", !want);
}

fn check_verdict(status: u16, body: &str, host: &str) {
    let got = verdict(status, body, host);
    let v: Option<Value> = serde_json::from_str(body).ok();
    let success = v.as_ref().and_then(|v| v.get("success")).and_then(Value::as_bool);
    let hostname = v.as_ref().and_then(|v| v.get("hostname")).and_then(Value::as_str);
    // Fields of the wrong type make the answer unreadable.
    let field = |k: &str| v.as_ref().and_then(|v| v.get(k)).filter(|f| !f.is_null());
    let codes_ok = match v.as_ref().and_then(|v| v.get("error-codes")) {
        None => true,
        Some(Value::Array(a)) => a.iter().all(Value::is_string),
        Some(_) => false,
    };
    let typed = field("hostname").is_none_or(Value::is_string) && codes_ok;
    let fine = match &got {
        Ok(()) => status == 200 && success == Some(true) && hostname == Some(host) && typed,
        Err(Failure::Refused(codes)) => status == 200 && success == Some(false) && typed && codes.len() <= 200,
        Err(Failure::WrongHost) => status == 200 && success == Some(true) && hostname != Some(host) && typed,
        Err(Failure::Unreadable) => status != 200 || success.is_none() || !typed,
    };
    ensure!(fine, None, "verdict({status}, {body:?}, {host:?}) = {got:?}");
}

#[rustfmt::skip]
const ANSWER_PIECES: &[&str] = &[
    r#""success":true"#, r#""success":false"#, r#""success":"true""#, r#""success":1"#, r#""success":null"#,
    r#""hostname":"shop.example.com""#, r#""hostname":"SHOP.example.com""#, r#""hostname":"evil.example.com""#,
    r#""hostname":null"#, r#""hostname":1"#, r#""error-codes":["invalid-input-response"]"#, r#""error-codes":[]"#,
    r#""error-codes":null"#, r#""error-codes":[1]"#, r#""challenge_ts":"2026-05-02T10:00:00Z""#, r#""x":{}"#,
];

/// A siteverify answer: an object of answer fields, or now and then junk.
fn build_answer(u: &mut Unstructured<'_>) -> String {
    let n = u.int_in_range(0..=5u8).unwrap_or(0);
    let fields: Vec<&str> = (0..n).map(|_| *u.choose(ANSWER_PIECES).unwrap_or(&"")).collect();
    let body = format!("{{{}}}", fields.join(","));
    match u.int_in_range(0..=9u8).unwrap_or(0) {
        0 => format!("[{body}]"),
        1 => body[..body.len() / 2].to_owned(),
        2 => format!("{body} x"),
        _ => body,
    }
}
