//! What the origin receives: the header filter and the signed identity.
//!
//! keyward adds `X-Keyward-Org`, `X-Keyward-Key-Id`, `X-Keyward-Key-Kind`,
//! `X-Keyward-Scopes`, `X-Keyward-User` (only for user-bound keys),
//! `X-Keyward-Resource` (only for widget keys bound to a bot or other
//! resource), `X-Request-Id`, `X-Keyward-Timestamp` (Unix seconds) and
//! `X-Keyward-Signature: v1=<hex HMAC-SHA256>`, keyed with
//! `ORIGIN_SIGNING_SECRET`, over this canonical string (fields joined by
//! `\n`, no trailing newline):
//!
//! ```text
//! keyward-v1
//! <X-Keyward-Timestamp>
//! <method>
//! <path>            the canonical path, exactly as forwarded
//! <query>           the raw query without '?', or empty
//! <X-Request-Id>
//! <X-Keyward-Org>
//! <X-Keyward-Key-Id>
//! <X-Keyward-Key-Kind>
//! <X-Keyward-Scopes>
//! <X-Keyward-User>  or empty
//! <X-Keyward-Resource> or empty
//! ```
//!
//! An origin recomputes it from the request it received, compares in
//! constant time, and refuses timestamps more than 5 minutes from its clock
//! (the request id is a nonce for replay detection). The body is not signed:
//! it is streamed, and TLS to the origin protects it in transit.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::authorize::Grant;

/// Headers that never reach the origin, besides every `x-keyward-*`, every
/// name with an `_` and every header the `Connection` header nominates:
/// credentials, cookies, method and path overrides (so the method and path
/// that were authorized are the ones the origin runs), a client-chosen
/// request id, client-chosen forwarding claims (keyward sets
/// `X-Forwarded-For` and `X-Forwarded-Proto` itself), and hop-by-hop headers.
const DROPPED: &[&str] = &[
    "authorization",
    "x-api-key",
    "cookie",
    "x-http-method-override",
    "x-method-override",
    "x-http-method",
    "x-original-url",
    "x-rewrite-url",
    "x-original-method",
    "x-request-id",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "host",
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The client's request headers that may be forwarded, in order.
///
/// Names with `_` are dropped outright: servers that map `-` and `_` to the
/// same CGI variable would otherwise read `X_Keyward_User` as
/// `X-Keyward-User`.
pub fn forwarded_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)> + Clone) -> Vec<(&'a str, &'a str)> {
    let nominated: Vec<String> = headers
        .clone()
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .filter(|t| !t.is_empty())
        .collect();
    headers
        .into_iter()
        .filter(|(name, _)| {
            let lower = name.to_ascii_lowercase();
            !lower.contains('_')
                && !lower.starts_with("x-keyward-")
                && !DROPPED.contains(&lower.as_str())
                && !nominated.contains(&lower)
        })
        .collect()
}

/// The identity headers to add, signature included, in a fixed order.
pub fn identity_headers(
    grant: &Grant,
    key: &SigningKey,
    request_id: &str,
    method: &str,
    path: &str,
    query: &str,
    timestamp_secs: i64,
) -> Vec<(&'static str, String)> {
    let scopes = grant.scopes_header();
    let user = grant.user_id.as_deref().unwrap_or("");
    let resource = grant.resource_id.as_deref().unwrap_or("");
    let ts = timestamp_secs.to_string();
    let canonical = canonical_string(&[
        &ts,
        method,
        path,
        query,
        request_id,
        &grant.org_id,
        &grant.key_id,
        grant.kind.as_str(),
        &scopes,
        user,
        resource,
    ]);
    let mut h = vec![
        ("X-Keyward-Org", grant.org_id.clone()),
        ("X-Keyward-Key-Id", grant.key_id.clone()),
        ("X-Keyward-Key-Kind", grant.kind.as_str().to_owned()),
        ("X-Keyward-Scopes", scopes),
    ];
    if let Some(u) = &grant.user_id {
        h.push(("X-Keyward-User", u.clone()));
    }
    if let Some(r) = &grant.resource_id {
        h.push(("X-Keyward-Resource", r.clone()));
    }
    h.push(("X-Request-Id", request_id.to_owned()));
    h.push(("X-Keyward-Timestamp", ts));
    h.push(("X-Keyward-Signature", format!("v1={}", sign(key, &canonical))));
    h
}

/// The canonical string: `keyward-v1` and the fields, joined by `\n`.
pub fn canonical_string(fields: &[&str]) -> String {
    let mut s = String::from("keyward-v1");
    for f in fields {
        s.push('\n');
        s.push_str(f);
    }
    s
}

/// `ORIGIN_SIGNING_SECRET` ready to sign: the HMAC key schedule (the inner
/// and outer padded-key blocks) is computed once per isolate and cloned per
/// request, which saves two SHA-256 compressions on every request. `Debug`
/// does not print it.
#[derive(Clone)]
pub struct SigningKey(Hmac<Sha256>);

impl SigningKey {
    /// Prepares a key from the secret's bytes.
    pub fn new(secret: &[u8]) -> Self {
        // HMAC accepts keys of any length: `new_from_slice` cannot fail for it.
        Self(<Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!()))
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

/// Lowercase hex HMAC-SHA256 of `message`.
pub fn sign(key: &SigningKey, message: &str) -> String {
    let mut mac = key.0.clone();
    mac.update(message.as_bytes());
    crate::hex(&mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::Scope;
    use crate::token::KeyKind;

    fn grant(user: Option<&str>) -> Grant {
        Grant {
            org_id: "org_1".into(),
            key_id: "01KEY".into(),
            kind: KeyKind::Secret,
            user_id: user.map(Into::into),
            user_role: None,
            scopes: vec![Scope::parse("control:read").unwrap(), Scope::parse("ai:chat").unwrap()],
            route_scope: "ai:chat".into(),
            route: "/v1/ai/chat".into(),
            local: false,
            resource_id: None,
            cors_origin: None,
        }
    }

    #[test]
    fn filter() {
        let dropped = [
            "Authorization",
            "X-API-Key",
            "cookie",
            "X-Keyward-Org",
            "x-keyward-anything",
            "X-HTTP-Method-Override",
            "X-Method-Override",
            "X-HTTP-Method",
            "X-Request-Id",
            "Host",
            "Connection",
            "Transfer-Encoding",
            "X_Keyward_User",
            "X_API_Key",
            "x_request_id",
            "X-Original-URL",
            "X-Rewrite-URL",
            "Forwarded",
            "X-Forwarded-For",
            "X-Forwarded-Host",
            "X-Real-IP",
            "True-Client-IP",
            "Upgrade",
            "TE",
            "Keep-Alive",
            "X-Internal-Auth",
        ];
        let kept = ["Content-Type", "Accept", "User-Agent", "X-Custom", "Content-Length", "X-Keyward"];
        let mut all: Vec<(&str, &str)> = dropped.iter().chain(kept.iter()).map(|n| (*n, "v")).collect();
        all.push(("Connection", "close, X-Internal-Auth"));
        let out: Vec<&str> = forwarded_headers(all.iter().copied()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(out, kept);
    }

    #[test]
    fn rfc4231_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(&SigningKey::new(b"Jefe"), "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn headers_and_signature() {
        let h = identity_headers(
            &grant(Some("u1")),
            &SigningKey::new(b"s3cret"),
            "req_1",
            "POST",
            "/v1/ai/chat",
            "a=1",
            1_700_000_000,
        );
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("X-Keyward-Scopes"), Some("ai:chat control:read"));
        assert_eq!(get("X-Keyward-User"), Some("u1"));
        assert_eq!(get("X-Request-Id"), Some("req_1"));
        let expected = sign(
            &SigningKey::new(b"s3cret"),
            "keyward-v1\n1700000000\nPOST\n/v1/ai/chat\na=1\nreq_1\norg_1\n01KEY\nsecret\nai:chat control:read\nu1\n",
        );
        assert_eq!(get("X-Keyward-Signature"), Some(format!("v1={expected}").as_str()));
        let without_user =
            identity_headers(&grant(None), &SigningKey::new(b"s3cret"), "req_1", "POST", "/v1/ai/chat", "", 1);
        assert!(!without_user.iter().any(|(k, _)| *k == "X-Keyward-User"));
        // Any field change changes the signature.
        let other = identity_headers(
            &grant(Some("u1")),
            &SigningKey::new(b"s3cret"),
            "req_1",
            "POST",
            "/v1/ai/chat",
            "a=2",
            1_700_000_000,
        );
        assert_ne!(other.last(), h.last());
    }
}
