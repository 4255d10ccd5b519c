//! Cloudflare Turnstile for widget keys (`turnstile_required`): a visitor
//! proves once that it is a browser driven by a person, and then carries a
//! short-lived visitor token, so not every request pays a verification.
//!
//! - The page runs the Turnstile widget and sends its token once, in
//!   `CF-Turnstile-Response`. keyward verifies it with the siteverify API
//!   (`TURNSTILE_VERIFY_URL`, secret `TURNSTILE_SECRET_KEY`): the answer
//!   must say `success` for the hostname of the page's origin.
//! - The answer to that request carries `X-Keyward-Visitor-Token`:
//!   `v1.<expiry, Unix seconds>.<hex HMAC-SHA256>`, bound to the key and to
//!   the visitor (the client address as per-visitor limits group it), valid
//!   for `VISITOR_TOKEN_TTL_SECONDS`. The page sends it back in
//!   `X-Keyward-Visitor` on its next requests.
//! - A request with neither a valid visitor token nor a Turnstile token is
//!   refused (`403 TURNSTILE_REQUIRED`) before the key's guard is asked.
//!
//! The HMAC key is derived from `ORIGIN_SIGNING_SECRET` with a label of its
//! own ([`visitor_token_key`]), so a visitor token is never a valid origin
//! signature or the other way round.

use crate::signing::{sign, SigningKey};

/// Request header carrying the Turnstile widget's token.
pub const TURNSTILE_HEADER: &str = "cf-turnstile-response";
/// Request header carrying a visitor token issued earlier.
pub const VISITOR_HEADER: &str = "x-keyward-visitor";
/// Response header carrying a newly issued visitor token.
pub const ISSUED_HEADER: &str = "X-Keyward-Visitor-Token";
/// Longest Turnstile token sent to siteverify (Cloudflare documents 2048).
pub const MAX_TOKEN_LEN: usize = 2048;
/// The default siteverify endpoint.
pub const DEFAULT_VERIFY_URL: &str = "https://challenges.cloudflare.com/turnstile/v0/siteverify";
/// Default lifetime of a visitor token, in seconds.
pub const DEFAULT_TTL_SECONDS: i64 = 900;

/// The visitor-token HMAC key, derived from the origin signing secret.
pub fn visitor_token_key(signing_secret: &[u8]) -> SigningKey {
    let derived = sign(&SigningKey::new(signing_secret), "keyward visitor tokens v1");
    SigningKey::new(derived.as_bytes())
}

fn message(key_id: &str, visitor: &str, expires_s: i64) -> String {
    format!("keyward-visitor-v1\n{key_id}\n{visitor}\n{expires_s}")
}

/// A visitor token for `visitor` of `key_id`, valid until `now + ttl`.
pub fn issue(key: &SigningKey, key_id: &str, visitor: &str, now_ms: i64, ttl_ms: i64) -> String {
    let expires_s = (now_ms + ttl_ms).div_euclid(1000);
    format!("v1.{expires_s}.{}", sign(key, &message(key_id, visitor, expires_s)))
}

/// Whether `token` is a visitor token issued for `visitor` of `key_id` and
/// not expired at `now` (compared in constant time).
pub fn verify(key: &SigningKey, token: &str, key_id: &str, visitor: &str, now_ms: i64) -> bool {
    let mut parts = token.splitn(3, '.');
    let (Some("v1"), Some(exp), Some(mac)) = (parts.next(), parts.next(), parts.next()) else { return false };
    let Some(expires_s) = exp.parse::<i64>().ok().filter(|_| exp.len() <= 12 && !exp.starts_with(['+', '-', '0']))
    else {
        return false;
    };
    if expires_s.saturating_mul(1000) <= now_ms || mac.len() != 64 {
        return false;
    }
    let want = sign(key, &message(key_id, visitor, expires_s));
    crate::secrets_equal(mac.as_bytes(), want.as_bytes())
}

/// Whether a Turnstile token is worth a siteverify call: 1 to
/// [`MAX_TOKEN_LEN`] bytes of the characters Turnstile uses.
pub fn plausible_token(token: &str) -> bool {
    (1..=MAX_TOKEN_LEN).contains(&token.len())
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

/// The JSON body of a siteverify call.
pub fn siteverify_body(secret: &str, token: &str, remote_ip: Option<&str>) -> String {
    use crate::json::{obj, text};
    let mut members = Vec::with_capacity(3);
    if let Some(ip) = remote_ip {
        members.push(("remoteip", text(ip)));
    }
    members.push(("response", text(token)));
    members.push(("secret", text(secret)));
    obj(&members)
}

/// What keyward reads of a siteverify answer.
struct Siteverify {
    success: bool,
    hostname: Option<String>,
    error_codes: Vec<String>,
}

impl Siteverify {
    /// Decodes an answer as serde's derive would (`success` a boolean,
    /// `hostname` a string or null if present, `error-codes` an array of
    /// strings if present, other members ignored); `None` if it is not one.
    /// Written out: a decoder of its own for three fields is less wasm.
    fn parse(body: &str) -> Option<Siteverify> {
        use serde_json::Value;
        let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(body) else { return None };
        let Some(Value::Bool(success)) = m.remove("success") else { return None };
        let hostname = match m.remove("hostname") {
            None | Some(Value::Null) => None,
            Some(Value::String(h)) => Some(h),
            Some(_) => return None,
        };
        let mut error_codes = Vec::new();
        match m.remove("error-codes") {
            None => {}
            Some(Value::Array(codes)) => {
                for c in codes {
                    let Value::String(c) = c else { return None };
                    error_codes.push(c);
                }
            }
            Some(_) => return None,
        }
        Some(Siteverify { success, hostname, error_codes })
    }
}

/// Why a verification did not pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Turnstile refused the token (its error codes, joined).
    Refused(String),
    /// The token was solved on another site than the request's origin.
    WrongHost,
    /// The answer was not a siteverify answer (a 503: fail closed).
    Unreadable,
}

/// The verdict on a siteverify answer for a page on `expected_host`.
pub fn verdict(status: u16, body: &str, expected_host: &str) -> Result<(), Failure> {
    // Only a JSON object is an answer (serde would also fill the struct
    // from an array: `[true, "host"]`).
    if status != 200 || !body.trim_start().starts_with('{') {
        return Err(Failure::Unreadable);
    }
    let answer = Siteverify::parse(body).ok_or(Failure::Unreadable)?;
    if !answer.success {
        let codes = answer.error_codes.join(", ");
        return Err(Failure::Refused(crate::admin::truncate(&codes, 200)));
    }
    if answer.hostname.as_deref() != Some(expected_host) {
        return Err(Failure::WrongHost);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn visitor_tokens() {
        let key = visitor_token_key(b"an origin signing secret of 32 bytes!");
        let t = issue(&key, "01KEY", "203.0.113.7", NOW, 900_000);
        assert!(t.starts_with("v1.1800000900."), "{t}");
        assert!(verify(&key, &t, "01KEY", "203.0.113.7", NOW));
        assert!(verify(&key, &t, "01KEY", "203.0.113.7", NOW + 899_999));
        assert!(!verify(&key, &t, "01KEY", "203.0.113.7", NOW + 900_000), "expired");
        assert!(!verify(&key, &t, "01OTHER", "203.0.113.7", NOW), "another key");
        assert!(!verify(&key, &t, "01KEY", "203.0.113.8", NOW), "another visitor");
        let other = visitor_token_key(b"another origin signing secret 32b!!!");
        assert!(!verify(&other, &t, "01KEY", "203.0.113.7", NOW), "another deployment");
        // Tampering: a later expiry, a flipped MAC digit, junk.
        let later = t.replacen("1800000900", "1900000900", 1);
        assert!(!verify(&key, &later, "01KEY", "203.0.113.7", NOW));
        let mut flipped = t.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        assert!(!verify(&key, std::str::from_utf8(&flipped).unwrap(), "01KEY", "203.0.113.7", NOW));
        for junk in ["", "v1", "v1..", "v2.1800000900.00", "v1.+1900000000.x", "v1.-1.x", &format!("{t}x")] {
            assert!(!verify(&key, junk, "01KEY", "203.0.113.7", NOW), "{junk}");
        }
        // One spelling per token: no leading zero on the expiry.
        let padded = t.replacen("v1.", "v1.0", 1);
        assert!(!verify(&key, &padded, "01KEY", "203.0.113.7", NOW), "{padded}");
        // A token MACed with the origin signing key itself (no derivation)
        // is not one: knowing origin signatures gives no visitor tokens.
        let origin_key = SigningKey::new(b"an origin signing secret of 32 bytes!");
        let forged = format!("v1.1800000900.{}", sign(&origin_key, &message("01KEY", "203.0.113.7", 1_800_000_900)));
        assert!(!verify(&key, &forged, "01KEY", "203.0.113.7", NOW));
    }

    #[test]
    fn siteverify_answers() {
        let host = "shop.example.com";
        assert_eq!(verdict(200, r#"{"success":true,"hostname":"shop.example.com","error-codes":[]}"#, host), Ok(()));
        assert_eq!(verdict(200, r#"{"success":true,"hostname":"evil.example"}"#, host), Err(Failure::WrongHost));
        assert_eq!(verdict(200, r#"{"success":true}"#, host), Err(Failure::WrongHost));
        assert_eq!(
            verdict(200, r#"{"success":false,"error-codes":["timeout-or-duplicate"]}"#, host),
            Err(Failure::Refused("timeout-or-duplicate".into()))
        );
        assert_eq!(verdict(200, "<html>", host), Err(Failure::Unreadable));
        assert_eq!(verdict(200, r#"[true,"shop.example.com"]"#, host), Err(Failure::Unreadable), "fuzzing found it");
        assert_eq!(verdict(500, r#"{"success":true,"hostname":"shop.example.com"}"#, host), Err(Failure::Unreadable));
        // As serde's derive decoded it: the types of the three members, the
        // rest ignored.
        let ok = r#""hostname":"shop.example.com""#;
        assert_eq!(verdict(200, &format!(r#"{{"success":true,{ok},"x":[1],"error-codes":["a"]}}"#), host), Ok(()));
        assert_eq!(verdict(200, &format!(r#"{{"success":true,{ok},"hostname":null}}"#), host), Err(Failure::WrongHost));
        assert_eq!(
            verdict(200, r#"{"success":false,"hostname":null,"error-codes":["a","b"]}"#, host),
            Err(Failure::Refused("a, b".into()))
        );
        assert_eq!(verdict(200, r#"{"success":false}"#, host), Err(Failure::Refused(String::new())));
        /// The decoder serde's derive made, which [`Siteverify::parse`] replaced.
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Derived {
            success: bool,
            #[serde(default)]
            hostname: Option<String>,
            #[serde(default, rename = "error-codes")]
            error_codes: Vec<String>,
        }
        let same = |body: &str| {
            let derived = crate::from_json::<Derived>(body).ok();
            let parsed = Siteverify::parse(body).map(|s| Derived {
                success: s.success,
                hostname: s.hostname,
                error_codes: s.error_codes,
            });
            assert_eq!(parsed, derived, "{body}");
        };
        for bad in [
            format!(r#"{{{ok}}}"#),
            format!(r#"{{"success":null,{ok}}}"#),
            format!(r#"{{"success":"true",{ok}}}"#),
            format!(r#"{{"success":1,{ok}}}"#),
            r#"{"success":true,"hostname":1}"#.to_owned(),
            format!(r#"{{"success":true,{ok},"error-codes":null}}"#),
            format!(r#"{{"success":true,{ok},"error-codes":"a"}}"#),
            format!(r#"{{"success":true,{ok},"error-codes":["a",1]}}"#),
            format!(r#"{{"success":true,{ok}}} x"#),
        ] {
            assert_eq!(verdict(200, &bad, host), Err(Failure::Unreadable), "{bad}");
            same(&bad);
        }
        for good in [
            r#"{"success":true,"hostname":"h","error-codes":[]}"#,
            r#"{"success":false,"hostname":null,"error-codes":["a","b"],"x":{}}"#,
            r#"{"success":false}"#,
            r#"{"error-codes":[],"success":true}"#,
        ] {
            same(good);
        }
        assert!(plausible_token("0.AbC-d_e.f:1"));
        assert!(!plausible_token(""));
        assert!(!plausible_token("a b"));
        assert!(!plausible_token(&"a".repeat(MAX_TOKEN_LEN + 1)));
        let body: serde_json::Value = serde_json::from_str(&siteverify_body("s", "t", Some("203.0.113.7"))).unwrap();
        assert_eq!(body, serde_json::json!({"secret": "s", "response": "t", "remoteip": "203.0.113.7"}));
    }
}
