//! What the origin receives: the header filter and the signed identity.
//!
//! keyward adds `X-Keyward-Method` (the method that was authorized: an
//! origin compares it to the method its framework dispatches on, which a
//! method override could have changed), `X-Keyward-Auth` (`key` or `jwt`),
//! `X-Keyward-Org`, `X-Keyward-Key-Id` (keys) or `X-Keyward-Token-Id` (a
//! JWT session's `jti`, when it has one), `X-Keyward-Key-Kind` (`secret`,
//! `widget`, `jwt` for a JWT session, `public` on a public route — which
//! gets no org, key, scopes or user: `X-Keyward-Auth: none`),
//! `X-Keyward-Scopes`, `X-Keyward-User` (user-bound keys and JWT sessions),
//! `X-Keyward-Resource` (only for widget keys bound to a bot or other
//! resource), `X-Request-Id`, `X-Keyward-Timestamp` (Unix seconds) and
//! `X-Keyward-Signature: v1=<hex HMAC-SHA256>`, keyed with
//! `ORIGIN_SIGNING_SECRET`, over this canonical string (fields joined by
//! `\n`, no trailing newline):
//!
//! ```text
//! keyward-v1
//! <X-Keyward-Timestamp>
//! <method>         X-Keyward-Method: the method that was authorized
//! <path>            the canonical path, exactly as forwarded
//! <query>           the raw query without '?', or empty
//! <X-Request-Id>
//! <X-Keyward-Org>
//! <X-Keyward-Key-Id>    for a JWT session: X-Keyward-Token-Id, or empty
//! <X-Keyward-Key-Kind>  secret, widget or jwt (X-Keyward-Auth is jwt exactly then)
//! <X-Keyward-Scopes>
//! <X-Keyward-User>  or empty
//! <X-Keyward-Resource> or empty
//! <X-Keyward-Meta>      only when the key has metadata (then the header is
//!                       sent: base64url of its compact JSON)
//! ```
//!
//! An origin recomputes it from the request it received, compares in
//! constant time, and refuses timestamps more than 5 minutes from its clock
//! (the request id is a nonce for replay detection). The body is not signed:
//! it is streamed, and TLS to the origin protects it in transit.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::authorize::{Auth, Grant};

/// Headers that never reach the origin, besides every `x-keyward-*`, every
/// name with a prefix in [`DROPPED_PREFIXES`], every name with an `_` and
/// every header the `Connection` header nominates: credentials, cookies,
/// method and path overrides (so the method and path that were authorized
/// are the ones the origin runs), host overrides, a client-chosen request
/// id, client-chosen address claims (keyward sets `X-Forwarded-For` and
/// `X-Forwarded-Proto` itself), identity headers that proxy-auth origins
/// trust, and hop-by-hop headers.
pub const DROPPED: &[&str] = &[
    "authorization",
    "x-api-key",
    "cookie",
    // Method and path overrides.
    "x-http-method-override",
    "x-method-override",
    "x-http-method",
    "x-original-method",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-envoy-original-path",
    "x-override-url",
    // Host overrides.
    "host",
    "x-host",
    "x-original-host",
    "x-http-host-override",
    // Address and request claims.
    "x-request-id",
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "client-ip",
    "x-originating-ip",
    "x-remote-addr",
    "x-remote-ip",
    "x-cluster-client-ip",
    // Identity headers of authenticating proxies.
    "remote-user",
    "x-remote-user",
    "x-webauth-user",
    "x-authenticated-user",
    // Hop-by-hop.
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

/// Name prefixes that never reach the origin: every `X-Forwarded-*`
/// (`-User`, `-Email`, `-Groups`, `-Access-Token`, `-Uri`, `-Path`,
/// `-Method`, `-Ssl`, `-Scheme`, …: frameworks and proxy-auth origins read
/// them; keyward sets its own), keyward's own, and the identity headers of
/// authenticating proxies (oauth2-proxy, Cloudflare Access, AWS ALB, Google
/// IAP, Azure App Service).
pub const DROPPED_PREFIXES: &[&str] = &[
    "x-forwarded-",
    "x-keyward-",
    "x-auth-request-",
    "cf-access-",
    "x-amzn-oidc-",
    "x-goog-authenticated-user-",
    "x-goog-iap-",
    "x-ms-client-principal",
];

/// Whether a header name is never forwarded, whatever the policy says.
pub fn never_forwarded(lower: &str) -> bool {
    lower.contains('_') || DROPPED.contains(&lower) || DROPPED_PREFIXES.iter().any(|p| lower.starts_with(p))
}

/// The client's request headers that may be forwarded, in order: those not
/// [`never_forwarded`] and not nominated by `Connection`, and, when the
/// policy has an allow-list (`forwarded_headers`), only the names it lists.
///
/// Names with `_` are dropped outright: servers that map `-` and `_` to the
/// same CGI variable would otherwise read `X_Keyward_User` as
/// `X-Keyward-User`.
pub fn forwarded_headers<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
    allow: Option<&[String]>,
) -> Vec<(&'a str, &'a str)> {
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
            !never_forwarded(&lower) && !nominated.contains(&lower) && allow.is_none_or(|a| a.contains(&lower))
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
    // A JWT session signs its token id where a key signs its key id, and
    // `jwt` where a key signs its kind.
    let (id, kind, auth) = match &grant.auth {
        Auth::Key => (grant.key_id.as_str(), grant.kind.as_str(), "key"),
        Auth::Jwt { token_id } => (token_id.as_deref().unwrap_or(""), "jwt", "jwt"),
        Auth::Public => ("", "public", "none"),
    };
    let canonical =
        canonical_string(&[&ts, method, path, query, request_id, &grant.org_id, id, kind, &scopes, user, resource]);
    let mut h = vec![("X-Keyward-Method", method.to_owned()), ("X-Keyward-Auth", auth.to_owned())];
    if grant.auth != Auth::Public {
        h.push(("X-Keyward-Org", grant.org_id.clone()));
    }
    match &grant.auth {
        Auth::Key => h.push(("X-Keyward-Key-Id", grant.key_id.clone())),
        Auth::Jwt { token_id: Some(t) } => h.push(("X-Keyward-Token-Id", t.clone())),
        Auth::Jwt { token_id: None } | Auth::Public => {}
    }
    h.push(("X-Keyward-Key-Kind", kind.to_owned()));
    if grant.auth != Auth::Public {
        h.push(("X-Keyward-Scopes", scopes));
    }
    if let Some(u) = &grant.user_id {
        h.push(("X-Keyward-User", u.clone()));
    }
    if let Some(r) = &grant.resource_id {
        h.push(("X-Keyward-Resource", r.clone()));
    }
    h.push(("X-Request-Id", request_id.to_owned()));
    h.push(("X-Keyward-Timestamp", ts));
    let canonical = match &grant.meta {
        // Metadata: one more line, only for a key that has it (the headers
        // the origin receives say which: no existing verifier changes).
        Some(m) => {
            let encoded = crate::jwt::b64url_encode(m.as_bytes());
            let line = format!("{canonical}\n{encoded}");
            h.push(("X-Keyward-Meta", encoded));
            line
        }
        None => canonical,
    };
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
            auth: crate::authorize::Auth::Key,
            meta: None,
        }
    }

    #[test]
    fn metadata_adds_a_signed_line_only_when_present() {
        let key = SigningKey::new(b"0123456789abcdef0123456789abcdef");
        let plain = identity_headers(&grant(None), &key, "req_1", "POST", "/v1/ai/chat", "", 1_800_000_000);
        assert!(!plain.iter().any(|(n, _)| *n == "X-Keyward-Meta"));
        let g = Grant { meta: Some(r#"{"plan":"pro"}"#.into()), ..grant(None) };
        let h = identity_headers(&g, &key, "req_1", "POST", "/v1/ai/chat", "", 1_800_000_000);
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(get("X-Keyward-Meta"), crate::jwt::b64url_encode(br#"{"plan":"pro"}"#));
        let sig = |hs: &[(&str, String)]| hs.iter().find(|(k, _)| *k == "X-Keyward-Signature").unwrap().1.clone();
        let base = canonical_string(&[
            "1800000000",
            "POST",
            "/v1/ai/chat",
            "",
            "req_1",
            "org_1",
            "01KEY",
            "secret",
            "ai:chat control:read",
            "",
            "",
        ]);
        assert_eq!(sig(&plain), format!("v1={}", sign(&key, &base)), "no line without metadata");
        assert_eq!(sig(&h), format!("v1={}", sign(&key, &format!("{base}\n{}", get("X-Keyward-Meta")))));
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
            "X-Forwarded-User",
            "X-Forwarded-Email",
            "X-Forwarded-Groups",
            "X-Forwarded-Access-Token",
            "X-Forwarded-Uri",
            "X-Forwarded-Path",
            "X-Forwarded-Url",
            "X-Forwarded-Method",
            "X-Forwarded-Ssl",
            "X-Forwarded-Scheme",
            "X-Forwarded-Anything",
            "X-Original-URI",
            "X-Envoy-Original-Path",
            "X-Override-URL",
            "X-Host",
            "X-Original-Host",
            "X-HTTP-Host-Override",
            "Client-IP",
            "X-Originating-IP",
            "X-Remote-Addr",
            "X-Cluster-Client-IP",
            "X-Auth-Request-Email",
            "Cf-Access-Jwt-Assertion",
            "X-Amzn-Oidc-Identity",
            "X-Goog-Authenticated-User-Email",
            "X-MS-CLIENT-PRINCIPAL-NAME",
            "Remote-User",
            "X-Webauth-User",
        ];
        let kept = ["Content-Type", "Accept", "User-Agent", "X-Custom", "Content-Length", "X-Keyward"];
        let mut all: Vec<(&str, &str)> = dropped.iter().chain(kept.iter()).map(|n| (*n, "v")).collect();
        all.push(("Connection", "close, X-Internal-Auth"));
        let out: Vec<&str> = forwarded_headers(all.iter().copied(), None).into_iter().map(|(n, _)| n).collect();
        assert_eq!(out, kept);
        // Allow-list mode: only the listed names, and never a dropped one.
        let allow = ["content-type".to_owned(), "x-custom".to_owned(), "x-forwarded-user".to_owned()];
        let out: Vec<&str> = forwarded_headers(all.iter().copied(), Some(&allow)).into_iter().map(|(n, _)| n).collect();
        assert_eq!(out, ["Content-Type", "X-Custom"]);
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
        assert_eq!(get("X-Keyward-Method"), Some("POST"));
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
        let delete = identity_headers(
            &grant(Some("u1")),
            &SigningKey::new(b"s3cret"),
            "req_1",
            "DELETE",
            "/v1/ai/chat",
            "a=1",
            1_700_000_000,
        );
        assert_ne!(delete.last(), h.last(), "the method is signed");
    }
}
