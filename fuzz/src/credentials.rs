//! Target `credentials`: `authorize::extract_credential`,
//! `authorize::parse_key` and `token` (src/authorize.rs, src/token.rs).
//!
//! Properties:
//! - `extract_credential` agrees with a reference model of the README's
//!   rules (`Bearer ` with any case and one space, non-empty; `X-API-Key`
//!   non-empty; both present must be equal; anything else is a `401
//!   INVALID_API_KEY`), and what it returns is never empty;
//! - a key `parse_key` accepts re-serializes identically: its prefix is the
//!   one of its kind, and `token::generate` fed the number its 30 base62
//!   digits spell produces the same token (so checksum and charset are
//!   exactly those of generated keys); `hash` and `last_four` are those of
//!   the whole token; a refusal is a `401 INVALID_API_KEY`;
//! - a generated key (any 32 bytes, either kind, any valid prefixes)
//!   always parses, as its kind;
//! - any single-character change to a valid key (any position, any
//!   character) fails the checksum or the format, or (in the prefix) makes
//!   a key of the other kind.

use arbitrary::Unstructured;
use keyward::authorize::{extract_credential, parse_key};
use keyward::error::ErrorCode;
use keyward::token::{generate, KeyHash, KeyKind, TokenFormat, CHECKSUM_LEN, RANDOM_BYTES, RANDOM_LEN};

use crate::ensure;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

#[rustfmt::skip]
const PREFIXES: &[&str] = &[
    "kw_live_", "kw_pub_", "sk_", "pk_", "a_", "b_", "kw_", "kw_live", "kw_live_x_", "live_", "pub_", "x_", "_",
    "__", "k9_", "sk_live_", "sk_test_", "KW_", "kw-live_", "abcdefghijklmnopqrstuvwxyz012345_",
];

/// The check run by the fuzz target and the smoke test.
pub fn check(data: &[u8]) {
    let text = crate::text(data);
    let default = TokenFormat::default();
    // Raw: lines "a:<Authorization>" and "x:<X-API-Key>"; every line and
    // the whole input are also tried as a token.
    let mut auth = None;
    let mut x = None;
    for line in text.split('\n').take(crate::MAX_LINES) {
        if let Some(v) = line.strip_prefix("a:") {
            auth.get_or_insert(v);
        } else if let Some(v) = line.strip_prefix("x:") {
            x.get_or_insert(v);
        }
        check_token(&default, line);
    }
    check_token(&default, &text);
    check_extract(auth, x, &default);

    let mut u = Unstructured::new(data);
    let format = match u.int_in_range(0..=3u8).unwrap_or(0) {
        0 => default.clone(),
        _ => {
            let s = pick_prefix(&mut u);
            let w = pick_prefix(&mut u);
            match TokenFormat::new(&s, &w) {
                Ok(f) => f,
                Err(_) => default.clone(),
            }
        }
    };
    let mut random = [0u8; RANDOM_BYTES];
    for b in random.iter_mut() {
        *b = u.arbitrary().unwrap_or(0);
    }
    let kind = if u.arbitrary().unwrap_or(false) { KeyKind::Widget } else { KeyKind::Secret };
    check_generated(&format, kind, &random, &mut u);
    // Header shapes around a valid key.
    let key = generate(&default, kind, &random).plaintext;
    let scheme =
        *u.choose(&["Bearer ", "bearer ", "BEARER ", "Bearer  ", "Bearer", "Basic ", "Token ", ""]).unwrap_or(&"");
    let a = format!("{scheme}{key}");
    let a = u.arbitrary().unwrap_or(true).then_some(a.as_str());
    let other = generate(&default, kind, &[random[0].wrapping_add(1); RANDOM_BYTES]).plaintext;
    let xv = match u.int_in_range(0..=3u8).unwrap_or(0) {
        0 => None,
        1 => Some(key.as_str()),
        2 => Some(other.as_str()),
        _ => Some(""),
    };
    check_extract(a, xv, &default);
}

fn pick_prefix(u: &mut Unstructured<'_>) -> String {
    if u.ratio(1, 4).unwrap_or(false) {
        let n = u.int_in_range(0..=34usize).unwrap_or(1);
        (0..n).map(|_| char::from(*u.choose(b"ab_0z_AZ-.").unwrap_or(&b'a'))).collect()
    } else {
        u.choose(PREFIXES).map(|s| (*s).to_owned()).unwrap_or_default()
    }
}

/// The README's credential rules, written independently.
fn model<'a>(auth: Option<&'a str>, x: Option<&'a str>) -> Option<&'a str> {
    let from_auth = match auth {
        None => None,
        Some(v) => {
            let b = v.as_bytes();
            if b.len() <= 7 || !b[..7].eq_ignore_ascii_case(b"bearer ") {
                return None;
            }
            Some(&v[7..])
        }
    };
    match (from_auth, x) {
        (Some(a), Some(x)) => (a == x).then_some(a),
        (Some(a), None) => Some(a),
        (None, Some(x)) if !x.is_empty() => Some(x),
        _ => None,
    }
}

fn check_extract(auth: Option<&str>, x: Option<&str>, format: &TokenFormat) {
    let got = extract_credential(auth, x);
    match &got {
        Ok(c) => {
            ensure!(!c.is_empty(), None, "extract_credential({auth:?}, {x:?}) = empty credential");
            check_token(format, c);
        }
        Err(e) => ensure!(
            e.code == ErrorCode::InvalidApiKey && e.status() == 401,
            None,
            "extract_credential({auth:?}, {x:?}) = {e}"
        ),
    }
    let want = model(auth, x);
    ensure!(got.as_ref().ok().copied() == want, None, "extract_credential({auth:?}, {x:?}) = {got:?}, model {want:?}");
}

/// The 32 big-endian bytes of the number that `digits` (base62) spell.
fn base62_number(digits: &[u8]) -> Option<[u8; RANDOM_BYTES]> {
    let mut n = [0u8; RANDOM_BYTES];
    for &d in digits {
        let v = ALPHABET.iter().position(|&a| a == d)? as u32;
        let mut carry = v;
        for byte in n.iter_mut().rev() {
            let cur = u32::from(*byte) * 62 + carry;
            *byte = (cur & 0xff) as u8;
            carry = cur >> 8;
        }
        if carry != 0 {
            return None;
        }
    }
    Some(n)
}

/// `parse_key` on one presented token.
pub fn check_token(format: &TokenFormat, token: &str) {
    let parsed = parse_key(format, token);
    let key = match parsed {
        Ok(k) => k,
        Err(e) => {
            ensure!(e.code == ErrorCode::InvalidApiKey, None, "parse_key({token:?}) = {e}");
            return;
        }
    };
    let prefix = format.prefix(key.kind());
    ensure!(token.starts_with(prefix), None, "{token:?} parsed as {:?} without its prefix", key.kind());
    ensure!(token.len() == prefix.len() + RANDOM_LEN + CHECKSUM_LEN, None, "{token:?}: length");
    let body = &token.as_bytes()[prefix.len()..];
    let Some(number) = base62_number(&body[..RANDOM_LEN]) else {
        crate::violation(None, format_args!("{token:?}: random part is not base62"));
        return;
    };
    let again = generate(format, key.kind(), &number);
    ensure!(again.plaintext == token, None, "{token:?} re-serializes as {:?}", again.plaintext);
    ensure!(key.hash() == KeyHash::of(token), None, "{token:?}: hash");
    ensure!(key.last_four() == &token[token.len() - 4..], None, "{token:?}: last_four");
}

fn check_generated(format: &TokenFormat, kind: KeyKind, random: &[u8; RANDOM_BYTES], u: &mut Unstructured<'_>) {
    let new = generate(format, kind, random);
    let t = new.plaintext.as_str();
    let parsed = parse_key(format, t);
    ensure!(
        parsed.as_ref().is_ok_and(|k| k.kind() == kind && k.hash() == new.hash),
        None,
        "generated {t:?} ({kind:?}) parses as {parsed:?}"
    );
    ensure!(new.prefix == format.prefix(kind) && new.last_four == t[t.len() - 4..], None, "{t:?}: prefix/last_four");
    check_token(format, t);
    // One character changed, anywhere, to anything else.
    let chars: Vec<char> = t.chars().collect();
    let tries = u.int_in_range(1..=8u8).unwrap_or(1);
    for _ in 0..tries {
        let i = u.choose_index(chars.len()).unwrap_or(0);
        let c = match u.int_in_range(0..=3u8).unwrap_or(0) {
            0 => u.arbitrary::<char>().unwrap_or('x'),
            _ => char::from(*u.choose(ALPHABET).unwrap_or(&b'0')),
        };
        if c == chars[i] {
            continue;
        }
        let mut m = chars.clone();
        m[i] = c;
        let m: String = m.into_iter().collect();
        let got = parse_key(format, &m);
        // The checksum covers the random part; a changed prefix may only
        // turn the key into one of the other kind (another key, another hash).
        let other_kind = got.as_ref().is_ok_and(|k| i < format.prefix(kind).len() && k.kind() != kind);
        ensure!(
            got.is_err() || other_kind,
            None,
            "{t:?} with char {i} changed to {c:?} still parses ({m:?} as {:?}; prefixes {:?}/{:?})",
            got.map(|k| k.kind()),
            format.prefix(KeyKind::Secret),
            format.prefix(KeyKind::Widget)
        );
    }
}
