//! Leaked keys: the endpoint of GitHub's secret-scanning partner program
//! (`POST /v1/secret-scanning/verify`). GitHub finds strings shaped like
//! keyward keys in public code (the prefixes and the checksum make them
//! unambiguous) and posts them in a batch, signed with ECDSA P-256/SHA-256;
//! keyward verifies the signature against the public keys GitHub publishes
//! (`SECRET_SCANNING_KEYS`, GitHub's own document), answers for each token
//! whether it is a live keyward key — by its hash, never echoing the token —
//! and revokes the live ones at once.
//!
//! Pure: parsing of the key document, the batch and the signature, and the
//! answer. The shell verifies the signature with WebCrypto and does the
//! lookups and revocations.

use serde_json::Value;

/// Largest batch body (bytes).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Most tokens in one batch.
pub const MAX_TOKENS: usize = 1000;
/// Longest token looked at (longer: not a keyward key).
pub const MAX_TOKEN_LEN: usize = 256;
/// Longest `url` kept in the audit entry.
pub const MAX_URL_LEN: usize = 500;
/// Longest `type` echoed back.
pub const MAX_TYPE_LEN: usize = 100;

/// One public key of GitHub's document: its identifier and its DER
/// SubjectPublicKeyInfo (for WebCrypto's `importKey("spki", …)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannerKey {
    /// `key_identifier`.
    pub id: String,
    /// The key, DER.
    pub spki: Vec<u8>,
}

/// Parses GitHub's key document
/// (`{"public_keys": [{"key_identifier", "key": "-----BEGIN PUBLIC KEY-----…", "is_current"}]}`).
pub fn parse_keys(text: &str) -> Result<Vec<ScannerKey>, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Some(Value::Array(keys)) = doc.get("public_keys") else {
        return Err("no \"public_keys\" array".into());
    };
    let mut out = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let id = k.get("key_identifier").and_then(Value::as_str).filter(|s| !s.is_empty() && s.len() <= 200);
        let pem = k.get("key").and_then(Value::as_str);
        let (Some(id), Some(pem)) = (id, pem) else {
            return Err(format!("public_keys[{i}]: needs key_identifier and key"));
        };
        let spki = pem_body(pem).ok_or_else(|| format!("public_keys[{i}]: key is not a PEM public key"))?;
        out.push(ScannerKey { id: id.to_owned(), spki });
    }
    if out.is_empty() {
        return Err("no public key".into());
    }
    Ok(out)
}

/// The DER inside `-----BEGIN PUBLIC KEY----- … -----END PUBLIC KEY-----`.
fn pem_body(pem: &str) -> Option<Vec<u8>> {
    let body = pem.trim().strip_prefix("-----BEGIN PUBLIC KEY-----")?.strip_suffix("-----END PUBLIC KEY-----")?;
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    b64_decode(&b64).filter(|d| d.len() > 26 && d.len() < 1024)
}

/// Standard base64 with padding (RFC 4648 §4), strictly.
pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let trimmed = s.trim_end_matches('=');
    if s.len() - trimmed.len() > 2 {
        return None;
    }
    let url: String = trimmed
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            '-' | '_' => '!',
            c => c,
        })
        .collect();
    crate::jwt::b64url_decode(&url)
}

/// An ECDSA signature in DER (`SEQUENCE { INTEGER r, INTEGER s }`), as
/// GitHub sends it, to the 64 bytes `r || s` WebCrypto verifies.
pub fn der_signature_to_raw(der: &[u8]) -> Option<[u8; 64]> {
    let (&tag, rest) = der.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (&len, body) = rest.split_first()?;
    if usize::from(len) != body.len() || len >= 0x80 {
        return None;
    }
    let mut out = [0u8; 64];
    let mut at = body;
    for half in 0..2 {
        let (&t, r) = at.split_first()?;
        let (&l, r) = r.split_first()?;
        let l = usize::from(l);
        if t != 0x02 || l == 0 || l > 33 || r.len() < l {
            return None;
        }
        let (int, next) = r.split_at(l);
        // Minimal encoding: a leading zero only before a high bit.
        if int.len() > 1 && int[0] == 0 && int[1] & 0x80 == 0 {
            return None;
        }
        let digits = if int[0] == 0 { &int[1..] } else { int };
        if digits.len() > 32 || int[0] & 0x80 != 0 {
            return None;
        }
        out[half * 32 + 32 - digits.len()..half * 32 + 32].copy_from_slice(digits);
        at = next;
    }
    at.is_empty().then_some(out)
}

/// One candidate of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The token found.
    pub token: String,
    /// GitHub's name of the pattern (echoed back).
    pub token_type: String,
    /// Where it was found (for the audit entry).
    pub url: String,
}

/// Parses a batch: a JSON array of `{"token", "type", "url", "source"}`.
pub fn parse_batch(body: &[u8]) -> Result<Vec<Candidate>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8")?;
    let Ok(Value::Array(items)) = serde_json::from_str::<Value>(text) else {
        return Err("the body must be a JSON array of matches".into());
    };
    if items.len() > MAX_TOKENS {
        return Err(format!("at most {MAX_TOKENS} matches per request"));
    }
    let field = |v: &Value, k: &str, max: usize| {
        v.get(k).and_then(Value::as_str).map(|s| s.chars().take(max).collect::<String>()).unwrap_or_default()
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| match v.get("token").and_then(Value::as_str) {
            Some(t) => Ok(Candidate {
                token: t.to_owned(),
                token_type: field(v, "type", MAX_TYPE_LEN),
                url: field(v, "url", MAX_URL_LEN),
            }),
            None => Err(format!("match {i} has no token")),
        })
        .collect()
}

/// The answer for one candidate: its hash (never the token) and whether it
/// is a real keyward secret (`true_positive`: live, now revoked, or revoked
/// as leaked before) or not (`false_positive`: unknown, expired, revoked
/// otherwise).
/// (JSON text, keys in serde_json's sorted order.)
pub fn answer(token: &str, token_type: &str, live: bool) -> String {
    let label = if live { "\"true_positive\"" } else { "\"false_positive\"" };
    crate::json::obj(&[
        ("label", label.to_owned()),
        ("token_hash", format!("\"{}\"", crate::token::KeyHash::of(token).to_hex())),
        ("token_type", crate::json::text(token_type)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_signatures() {
        // r with a high bit (a leading zero), s short (left-padded).
        let mut der = vec![0x30, 0x27, 0x02, 0x21, 0x00];
        der.extend([0x80; 32]);
        der.extend([0x02, 0x02, 0x01, 0x02]);
        let raw = der_signature_to_raw(&der).unwrap();
        assert_eq!(&raw[..32], &[0x80; 32]);
        assert_eq!(&raw[32..62], &[0; 30]);
        assert_eq!(&raw[62..], &[1, 2]);
        for bad in [
            vec![],
            vec![0x31, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01],
            vec![0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01],
            vec![0x30, 0x06, 0x02, 0x01, 0x81, 0x02, 0x01, 0x01],
            vec![0x30, 0x07, 0x02, 0x02, 0x00, 0x01, 0x02, 0x01, 0x01],
            vec![0x30, 0x08, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x00, 0x00],
        ] {
            assert!(der_signature_to_raw(&bad).is_none(), "{bad:?}");
        }
        assert_eq!(der_signature_to_raw(&[0x30, 0x06, 0x02, 0x01, 0x05, 0x02, 0x01, 0x07]).unwrap()[31], 5);
    }

    #[test]
    fn base64_and_pem() {
        assert_eq!(b64_decode("aGk/").unwrap(), b"hi?");
        assert_eq!(b64_decode("aGk+aA==").unwrap(), b"hi>h");
        for bad in ["aGk", "aG=k", "aGk-", "aGk_", "a===", "aGk+aA=="[..6].into()] {
            assert!(b64_decode(bad).is_none(), "{bad}");
        }
        let der: Vec<u8> = (0..91).map(|i| i as u8).collect();
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", b64_std(&der));
        let doc = serde_json::json!({"public_keys": [{"key_identifier": "k1", "key": pem, "is_current": true}]});
        let keys = parse_keys(&doc.to_string()).unwrap();
        assert_eq!(keys, [ScannerKey { id: "k1".into(), spki: der }]);
        assert!(parse_keys(r#"{"public_keys":[]}"#).is_err());
        assert!(parse_keys(r#"{"public_keys":[{"key_identifier":"k","key":"junk"}]}"#).is_err());
    }

    fn b64_std(b: &[u8]) -> String {
        let url = crate::jwt::b64url_encode(b).replace('-', "+").replace('_', "/");
        let pad = (4 - url.len() % 4) % 4;
        format!("{url}{}", "=".repeat(pad))
    }

    #[test]
    fn batches_and_answers() {
        let b =
            br#"[{"token":"kw_live_x","type":"keyward_secret_key","url":"https://github.com/a/b","source":"content"}]"#;
        let c = parse_batch(b).unwrap();
        assert_eq!(c[0].token, "kw_live_x");
        assert_eq!(c[0].token_type, "keyward_secret_key");
        assert!(parse_batch(b"{}").is_err());
        assert!(parse_batch(br#"[{"type":"x"}]"#).is_err());
        let many = format!("[{}]", vec![r#"{"token":"t"}"#; MAX_TOKENS + 1].join(","));
        assert!(parse_batch(many.as_bytes()).is_err());
        let a: Value = serde_json::from_str(&answer("kw_live_x", "keyward_secret_key", true)).unwrap();
        assert_eq!(a["label"], "true_positive");
        assert_eq!(a["token_type"], "keyward_secret_key");
        assert_eq!(a["token_hash"], crate::token::KeyHash::of("kw_live_x").to_hex());
        assert!(!a.to_string().contains("kw_live_x"), "never echoed");
    }
}
