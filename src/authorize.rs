//! The decision: from request facts and the records the shell read, allow
//! (a [`Grant`]) or refuse (a [`Refusal`]). Pure: no I/O, `now` passed in.
//!
//! The shell calls, in order:
//! 1. [`CanonicalPath::parse`](crate::path::CanonicalPath::parse) — `400` on ambiguity;
//! 2. [`extract_credential`] and [`ApiKey::parse`] — `401`, no storage read;
//! 3. reads KV `key:<sha256>`, then the org and user records;
//! 4. [`authorize`] — every remaining check, in the order of the design.

use crate::cors::{self, BrowserOrigin};
use crate::error::{ApiError, ErrorCode};
use crate::path::CanonicalPath;
use crate::policy::Policy;
use crate::records::{KeyRecord, OrgRecord, UserRecord};
use crate::scope::{self, Scope};
use crate::token::{ApiKey, KeyKind, TokenFormat};

/// Deployment settings that affect decisions (parsed once per isolate).
#[derive(Clone, Debug)]
pub struct Config {
    /// Key prefixes.
    pub format: TokenFormat,
    /// Whether an active BAA is required (`REQUIRE_BAA`, default on).
    pub require_baa: bool,
    /// The IPv6 prefix length a widget key's visitor is grouped by
    /// (`VISITOR_IPV6_PREFIX`, 32–64, default 48).
    pub visitor_ipv6_prefix: u8,
    /// The HMAC key of visitor tokens (derived from `ORIGIN_SIGNING_SECRET`;
    /// `None` without it: a key requiring Turnstile is then a 503).
    pub visitor_tokens: Option<crate::signing::SigningKey>,
    /// How long a visitor token is valid, in ms (`VISITOR_TOKEN_TTL_SECONDS`).
    pub visitor_token_ttl_ms: i64,
    /// Whether `TURNSTILE_SECRET_KEY` is set (else a Turnstile token cannot
    /// be verified: 503).
    pub turnstile: bool,
    /// `JWT_ALLOWED_ORIGINS`: the browser origins JWT sessions may be used
    /// from (none: a JWT on a browser request is refused like a secret key).
    pub session_origins: Vec<crate::cors::OriginPattern>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            format: TokenFormat::default(),
            require_baa: true,
            visitor_ipv6_prefix: crate::cors::DEFAULT_VISITOR_IPV6_PREFIX,
            visitor_tokens: None,
            visitor_token_ttl_ms: crate::turnstile::DEFAULT_TTL_SECONDS * 1000,
            turnstile: false,
            session_origins: Vec::new(),
        }
    }
}

/// Why a request is refused: the error and the headers that go with it
/// (`Allow` for `405`, `Retry-After` and `RateLimit-*` for `429`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The error to answer with.
    pub error: ApiError,
    /// Extra response headers.
    pub headers: Vec<(&'static str, String)>,
}

impl Refusal {
    /// The value of an extra header, if set.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Self { error, headers: Vec::new() }
    }
}

impl From<ErrorCode> for Refusal {
    fn from(code: ErrorCode) -> Self {
        Self::from(ApiError::new(code))
    }
}

/// Picks the presented credential from `Authorization: Bearer <key>` and
/// `X-API-Key: <key>`.
///
/// Missing, empty, a scheme other than `Bearer`, `Bearer` without a single
/// space, or two headers carrying different values → `401`. (Repeated
/// headers arrive joined with `, ` and so fail the format check.)
pub fn extract_credential<'a>(authorization: Option<&'a str>, x_api_key: Option<&'a str>) -> Result<&'a str, ApiError> {
    let invalid = || ApiError::new(ErrorCode::InvalidApiKey);
    let from_auth = match authorization {
        None => None,
        Some(v) => {
            // Scheme names are case-insensitive (RFC 9110 §11.1).
            let (scheme, rest) = v.split_at_checked(7).ok_or_else(invalid)?;
            if !scheme.eq_ignore_ascii_case("bearer ") || rest.is_empty() {
                return Err(invalid());
            }
            Some(rest)
        }
    };
    match (from_auth, x_api_key) {
        (Some(a), Some(x)) if a == x => Ok(a),
        (Some(_), Some(_)) => Err(invalid()),
        (Some(a), None) => Ok(a),
        (None, Some(x)) if !x.is_empty() => Ok(x),
        _ => Err(invalid()),
    }
}

/// Parses the credential's format (prefix, length, charset, checksum).
pub fn parse_key<'a>(format: &TokenFormat, token: &'a str) -> Result<ApiKey<'a>, ApiError> {
    ApiKey::parse(format, token).map_err(|_| ApiError::new(ErrorCode::InvalidApiKey))
}

/// What the request says about itself, beyond the credential.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    /// HTTP method, as received (case-sensitive, as HTTP methods are).
    pub method: &'a str,
    /// The canonical path.
    pub path: &'a CanonicalPath,
    /// The `Origin` header, if any.
    pub origin: Option<&'a str>,
    /// The `Referer` header, if any (a widget key's fallback for `Origin`).
    pub referer: Option<&'a str>,
    /// Whether the request has a body (the runtime's `request.body` is not
    /// null: a `Content-Length` above 0 or a chunked body).
    pub has_body: bool,
    /// The `Content-Type` header, if any.
    pub content_type: Option<&'a str>,
    /// `X-Keyward-Visitor`: a visitor token issued earlier (Turnstile).
    pub visitor_token: Option<&'a str>,
    /// `CF-Turnstile-Response`: a Turnstile token to verify.
    pub turnstile_token: Option<&'a str>,
    /// The client's address ([`crate::cors::client_ip`]), or `unknown`.
    pub client_ip: &'a str,
    /// The browser's `Origin` is keyward's own (the request URL's): a page
    /// keyward serves itself (the console). JWT sessions and public routes
    /// are accepted from it; secret keys stay refused from every browser.
    pub same_origin: bool,
}

impl<'a> Facts<'a> {
    /// A request with no `Origin` or `Referer`, no body and no Turnstile
    /// headers (a server-to-server call without a body): tests and the
    /// benchmark build on it with struct update syntax.
    pub fn bare(method: &'a str, path: &'a CanonicalPath) -> Self {
        Facts {
            method,
            path,
            origin: None,
            referer: None,
            has_body: false,
            content_type: None,
            visitor_token: None,
            turnstile_token: None,
            client_ip: "unknown",
            same_origin: false,
        }
    }
}

/// Whether a request has a body to check ([`Facts::has_body`]): the
/// runtime gives it a body stream (`request.body` not null; never for GET
/// and HEAD, whose bodies are not forwarded) and `Content-Length` is not
/// `0`. Only an explicit `Content-Length: 0` says a stream is empty: an
/// HTTP/2 request may carry a body with neither `Content-Length` nor
/// `Transfer-Encoding`, so their absence proves nothing.
pub fn has_body(method: &str, stream: bool, content_length: Option<&str>) -> bool {
    stream && !matches!(method, "GET" | "HEAD") && content_length.map(str::trim) != Some("0")
}

/// Whether a forwarded body must go through the upload guard
/// (`__keywardUploadGuard` in `worker/entry.mjs`): it has no valid
/// `Content-Length`. With a length, the runtime sends `Content-Length` and
/// an upload that stops short fails at the origin. Without one (chunked, or
/// HTTP/2), workerd ends the chunked body cleanly when the client's stream
/// fails on a reused connection to the origin: the origin would store a
/// truncated upload as whole. The guard aborts the origin fetch first.
pub fn needs_upload_guard(has_body: bool, content_length: Option<&str>) -> bool {
    has_body && content_length.and_then(|v| v.trim().parse::<u64>().ok()).is_none()
}

/// The records the shell read for this key. `key: None` means the hash is
/// not in KV.
#[derive(Clone, Copy, Debug, Default)]
pub struct Records<'a> {
    /// `key:<hash>`.
    pub key: Option<&'a KeyRecord>,
    /// `org:<key.org_id>`.
    pub org: Option<&'a OrgRecord>,
    /// `user:<org>:<key.user_id>` when the key is bound to a user.
    pub user: Option<&'a UserRecord>,
}

/// An allowed request: the identity to forward.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Grant {
    /// Org id.
    pub org_id: String,
    /// Key id (ULID).
    pub key_id: String,
    /// Key kind.
    pub kind: KeyKind,
    /// The user the key acts for.
    pub user_id: Option<String>,
    /// That user's current role.
    pub user_role: Option<String>,
    /// Effective scopes: the key's, capped by the user's role.
    pub scopes: Vec<Scope>,
    /// The scope the matched route required.
    pub route_scope: String,
    /// The matched route's pattern, e.g. `/v1/api_keys/{key_id}`.
    pub route: String,
    /// Whether keyward serves the route itself (the control API).
    pub local: bool,
    /// Widget keys: the bound resource (`X-Keyward-Resource`).
    pub resource_id: Option<String>,
    /// Widget keys: the matched browser origin, echoed in CORS headers.
    pub cors_origin: Option<BrowserOrigin>,
    /// How the caller authenticated.
    pub auth: Auth,
    /// The key's metadata (compact JSON text), for `X-Keyward-Meta`.
    pub meta: Option<String>,
}

/// How a request authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// An API key (secret or widget).
    Key,
    /// A JWT user session ([`crate::jwt`]).
    Jwt {
        /// The token's `jti`, if it has one.
        token_id: Option<String>,
    },
    /// No credential: a public route of the policy.
    Public,
}

impl Grant {
    /// The `X-Keyward-Scopes` value: effective scopes, sorted, space-separated.
    pub fn scopes_header(&self) -> String {
        let mut v: Vec<&str> = self.scopes.iter().map(Scope::as_str).collect();
        crate::sort_small(&mut v);
        v.join(" ")
    }
}

/// The key record's own verdict, before any other record is read: the kind
/// matches the prefix, not revoked, not expired. The shell calls it right
/// after the key read, so a revoked or expired key costs no more reads than
/// an unknown one.
pub fn precheck(presented: KeyKind, key: &KeyRecord, now_ms: i64) -> Result<(), Refusal> {
    if key.kind != presented || key.revoked_at.is_some() || key.expires_at.is_some_and(|e| e <= now_ms) {
        return Err(ErrorCode::InvalidApiKey.into());
    }
    Ok(())
}

/// Decides a request whose credential passed the format check.
///
/// Order: key known → kind matches prefix → not revoked → not expired →
/// kind rules (a secret key refuses browser requests; a widget key needs an
/// allowed origin) → org readable → BAA → user enabled and role known →
/// route → scope → body type. Every credential failure is the same `401`. For a widget
/// key, every refusal after its origin matched carries the CORS headers, so
/// the page can read the error.
pub fn authorize(
    facts: &Facts<'_>,
    presented: KeyKind,
    records: &Records<'_>,
    policy: &Policy,
    config: &Config,
    now_ms: i64,
) -> Result<Grant, Refusal> {
    let key = records.key.ok_or(ErrorCode::InvalidApiKey)?;
    precheck(presented, key, now_ms)?;
    let cors_origin = kind_rules(facts, key)?;
    if !crate::cidr::allows(&key.allowed_ips, facts.client_ip) {
        return Err(ErrorCode::IpNotAllowed.into());
    }
    let with_cors = |mut r: Refusal| {
        if let Some(o) = &cors_origin {
            r.headers.extend(cors::response_headers(o));
        }
        r
    };
    decide_rest(key, records, policy, config, facts, cors_origin.clone()).map_err(with_cors)
}

/// Whether the request passes every check that needs only the key record
/// and the policy: the record's own verdict, the kind rules, the route and
/// the key's own scopes. The shell uses it to start the key guard's check
/// concurrently with the org and user reads when the request is likely to
/// be allowed; [`authorize`] stays the decision (and the order of refusals),
/// and a request it then refuses is refunded to the guard.
pub fn preauthorize(facts: &Facts<'_>, presented: KeyKind, key: &KeyRecord, policy: &Policy, now_ms: i64) -> bool {
    if precheck(presented, key, now_ms).is_err()
        || kind_rules(facts, key).is_err()
        || !crate::cidr::allows(&key.allowed_ips, facts.client_ip)
    {
        return false;
    }
    let Ok(route) = policy.route(facts.method, facts.path) else { return false };
    if route.accepts_body(facts.has_body, facts.content_type).is_err() {
        return false;
    }
    match key.kind {
        KeyKind::Widget => scope::grants(&scope::intersect(&key.scopes, policy.widget_scopes()), route.scope()),
        KeyKind::Secret => scope::grants(&key.scopes, route.scope()),
    }
}

/// A secret key refuses browser requests; a widget key needs an allowed
/// origin (which its CORS headers will echo).
pub(crate) fn kind_rules(facts: &Facts<'_>, key: &KeyRecord) -> Result<Option<BrowserOrigin>, Refusal> {
    Ok(match key.kind {
        // A JWT session's record carries `JWT_ALLOWED_ORIGINS`: a browser
        // on one of them may use it (its answers carry CORS headers).
        // The console (keyward's own origin) signs in with JWT sessions.
        KeyKind::Secret if facts.same_origin && crate::jwt::is_session_guard(&key.id) => None,
        KeyKind::Secret if facts.origin.is_some() && crate::jwt::is_session_guard(&key.id) => {
            match cors::request_origin(facts.origin, None).filter(|o| key.allowed_origins.iter().any(|p| p.matches(o))) {
                Some(o) => Some(o),
                None => {
                    return Err(ApiError::with_message(
                        ErrorCode::OriginNotAllowed,
                        "JWT sessions are accepted from a browser only on the origins in JWT_ALLOWED_ORIGINS.",
                    )
                    .into())
                }
            }
        }
        KeyKind::Secret if facts.origin.is_some() => {
            return Err(ApiError::with_message(
                ErrorCode::OriginNotAllowed,
                "Secret keys are for server-to-server use only and are refused on browser requests (an Origin header was sent). Use a widget key in the browser.",
            )
            .into())
        }
        KeyKind::Secret => None,
        KeyKind::Widget => {
            let origin = cors::request_origin(facts.origin, facts.referer).ok_or_else(|| {
                ApiError::with_message(
                    ErrorCode::OriginNotAllowed,
                    "Widget keys work only from a browser page on an allowed origin (no valid Origin or Referer was sent).",
                )
            })?;
            if !key.allowed_origins.iter().any(|p| p.matches(&origin)) {
                return Err(ApiError::with_message(
                    ErrorCode::OriginNotAllowed,
                    "This widget key is not allowed from this origin.",
                )
                .into());
            }
            Some(origin)
        }
    })
}

/// The checks that need the org and user records, in the designed order:
/// the org readable and this key's, the BAA, the user enabled and of this
/// org, its role known. Returns the effective scopes (the key's, capped by
/// the user's role and, for a widget key, by the widget scopes) and the
/// user's role.
fn effective_scopes(
    key: &KeyRecord,
    records: &Records<'_>,
    policy: &Policy,
    config: &Config,
) -> Result<(Vec<Scope>, Option<String>), Refusal> {
    // The org record must exist and be this key's: otherwise the read model
    // is incomplete, and keyward fails closed.
    // A JWT session's org is the token's claim: one keyward does not know
    // is a bad token (401), not an incomplete read model.
    let missing =
        if crate::jwt::is_session_guard(&key.id) { ErrorCode::InvalidApiKey } else { ErrorCode::ServiceUnavailable };
    let org = records.org.filter(|o| o.id == key.org_id).ok_or(missing)?;
    if config.require_baa && !org.baa_active {
        return Err(ErrorCode::BaaRequired.into());
    }
    let (mut scopes, user_role) = match &key.user_id {
        None => (key.scopes.clone(), None),
        Some(uid) => {
            let user = records
                .user
                .filter(|u| &u.id == uid && u.org_id == key.org_id && !u.disabled)
                .ok_or(ErrorCode::InvalidApiKey)?;
            let role = policy.role(&user.role).ok_or(ErrorCode::ServiceUnavailable)?;
            (scope::intersect(&key.scopes, role), Some(user.role.clone()))
        }
    };
    if key.kind == KeyKind::Widget {
        // A widget key is public: whatever its record says, it never does
        // more than the policy lets widget keys do.
        scopes = scope::intersect(&scopes, policy.widget_scopes());
    }
    Ok((scopes, user_role))
}

/// What the records alone say of a request that needs `route_scope`: the
/// key (not revoked, not expired), the org and its BAA, the user and its
/// role, and the scope — the refusal's code if they refuse. What the request
/// itself carries (origin, method, path) is not looked at. The key's guard
/// asks this before it counts a leased request, so that a request
/// [`authorize`] will refuse on the same records never takes a unit of quota
/// (and so never needs a refund); the code settles the rare case where the
/// guard's clock and an isolate's disagree (a key expiring in between).
pub fn records_verdict(
    records: &Records<'_>,
    route_scope: &str,
    policy: &Policy,
    config: &Config,
    now_ms: i64,
) -> Result<(), ErrorCode> {
    let key = records.key.ok_or(ErrorCode::InvalidApiKey)?;
    if key.revoked_at.is_some() || key.expires_at.is_some_and(|e| e <= now_ms) {
        return Err(ErrorCode::InvalidApiKey);
    }
    let (scopes, _) = effective_scopes(key, records, policy, config).map_err(|r| r.error.code)?;
    if !scope::grants(&scopes, route_scope) {
        return Err(ErrorCode::MissingScope);
    }
    Ok(())
}

fn decide_rest(
    key: &KeyRecord,
    records: &Records<'_>,
    policy: &Policy,
    config: &Config,
    facts: &Facts<'_>,
    cors_origin: Option<BrowserOrigin>,
) -> Result<Grant, Refusal> {
    let (scopes, user_role) = effective_scopes(key, records, policy, config)?;
    let route = policy
        .route(facts.method, facts.path)
        .map_err(|e| Refusal { error: e.error, headers: e.allow.map(|a| ("Allow", a)).into_iter().collect() })?;
    if !scope::grants(&scopes, route.scope()) {
        return Err(ApiError::missing_scope(route.scope()).into());
    }
    route.accepts_body(facts.has_body, facts.content_type)?;
    Ok(Grant {
        org_id: key.org_id.clone(),
        key_id: key.id.clone(),
        kind: key.kind,
        user_id: key.user_id.clone(),
        user_role,
        scopes,
        route_scope: route.scope().to_owned(),
        route: route.pattern().to_owned(),
        local: route.is_local(),
        resource_id: key.resource_id.clone(),
        cors_origin,
        auth: Auth::Key,
        meta: key.meta.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{generate, KeyKind};

    const NOW: i64 = 1_800_000_000_000;

    struct World {
        policy: Policy,
        config: Config,
        token: String,
        key: KeyRecord,
        org: OrgRecord,
        user: UserRecord,
    }

    fn world() -> World {
        let config = Config::default();
        let k = generate(&config.format, KeyKind::Secret, &[5; 32]);
        World {
            policy: Policy::default_policy().unwrap(),
            token: k.plaintext,
            key: KeyRecord {
                name: "k".into(),
                scopes: vec![Scope::parse("ai:chat").unwrap()],
                prefix: k.prefix,
                last_four: k.last_four,
                ..KeyRecord::synthetic("01KEY".into(), "org_1", NOW - 1000)
            },
            org: OrgRecord { id: "org_1".into(), name: "Org".into(), baa_active: true, updated_at: 0 },
            user: UserRecord {
                id: "u1".into(),
                org_id: "org_1".into(),
                role: "viewer".into(),
                disabled: false,
                updated_at: 0,
            },
            config,
        }
    }

    fn decide(w: &World, method: &str, path: &str, origin: Option<&str>, with_user: bool) -> Result<Grant, Refusal> {
        let path = CanonicalPath::parse(path).unwrap();
        let presented = parse_key(&w.config.format, &w.token).unwrap();
        let facts = Facts { origin, ..Facts::bare(method, &path) };
        let records = Records { key: Some(&w.key), org: Some(&w.org), user: with_user.then_some(&w.user) };
        authorize(&facts, presented.kind(), &records, &w.policy, &w.config, NOW)
    }

    fn code(r: Result<Grant, Refusal>) -> ErrorCode {
        r.expect_err("allowed").error.code
    }

    #[test]
    fn keywards_own_origin_admits_sessions_never_secret_keys() {
        let path = CanonicalPath::parse("/v1/ai/chat").unwrap();
        let own = Facts { origin: Some("https://edge.example"), same_origin: true, ..Facts::bare("POST", &path) };
        let mut session = KeyRecord::synthetic(crate::jwt::session_guard_id("org_1", "u_1"), "org_1", 0);
        assert_eq!(kind_rules(&own, &session).map(|o| o.is_none()), Ok(true), "no CORS needed on the same origin");
        // Elsewhere a session needs JWT_ALLOWED_ORIGINS.
        let other = Facts { same_origin: false, ..own };
        assert_eq!(kind_rules(&other, &session).unwrap_err().error.code, ErrorCode::OriginNotAllowed);
        session.id = "01JQSECRETKEY".into();
        assert_eq!(kind_rules(&own, &session).unwrap_err().error.code, ErrorCode::OriginNotAllowed, "a secret key");
    }

    #[test]
    fn allows_with_scope() {
        let w = world();
        let g = decide(&w, "POST", "/v1/ai/chat", None, false).unwrap();
        assert_eq!(g.key_id, "01KEY");
        assert_eq!(g.org_id, "org_1");
        assert_eq!(g.route_scope, "ai:chat");
        assert_eq!(g.scopes_header(), "ai:chat");
        assert_eq!(g.user_id, None);
    }

    #[test]
    fn an_ip_allow_list_admits_only_its_addresses() {
        let mut w = world();
        w.key.allowed_ips = vec![crate::cidr::Cidr::parse("203.0.113.0/24").unwrap()];
        let path = CanonicalPath::parse("/v1/ai/chat").unwrap();
        let presented = parse_key(&w.config.format, &w.token).unwrap();
        let records = Records { key: Some(&w.key), org: Some(&w.org), user: None };
        let at = |ip: &'static str| {
            let facts = Facts { client_ip: ip, ..Facts::bare("POST", &path) };
            (
                authorize(&facts, presented.kind(), &records, &w.policy, &w.config, NOW).map(|g| g.key_id),
                preauthorize(&facts, presented.kind(), &w.key, &w.policy, NOW),
            )
        };
        assert_eq!(at("203.0.113.9"), (Ok("01KEY".into()), true));
        assert_eq!(at("::ffff:203.0.113.9"), (Ok("01KEY".into()), true), "an IPv4-mapped address is its IPv4");
        for outside in ["198.51.100.1", "2001:db8::1", "unknown"] {
            let (r, pre) = at(outside);
            assert_eq!((r.unwrap_err().error.code, pre), (ErrorCode::IpNotAllowed, false), "{outside}");
        }
    }

    #[test]
    fn unknown_revoked_expired_and_kind_mismatch_are_one_401() {
        let w = world();
        let path = CanonicalPath::parse("/v1/ai/chat").unwrap();
        let presented = parse_key(&w.config.format, &w.token).unwrap();
        let facts = Facts::bare("POST", &path);
        let none = Records { key: None, org: Some(&w.org), user: None };
        let e1 = authorize(&facts, presented.kind(), &none, &w.policy, &w.config, NOW).unwrap_err();
        assert_eq!(e1.error.code, ErrorCode::InvalidApiKey);

        let mut revoked = world();
        revoked.key.revoked_at = Some(NOW - 1);
        let e2 = decide(&revoked, "POST", "/v1/ai/chat", None, false).unwrap_err();
        let mut expired = world();
        expired.key.expires_at = Some(NOW);
        let e3 = decide(&expired, "POST", "/v1/ai/chat", None, false).unwrap_err();
        let mut not_yet = world();
        not_yet.key.expires_at = Some(NOW + 1);
        assert!(decide(&not_yet, "POST", "/v1/ai/chat", None, false).is_ok());
        let mut kind = world();
        kind.key.kind = KeyKind::Widget;
        let e4 = decide(&kind, "POST", "/v1/ai/chat", None, false).unwrap_err();
        // No oracle: the same code and message for every case.
        for e in [&e2, &e3, &e4] {
            assert_eq!(e, &e1);
        }
        assert_eq!(e1.error.envelope("r"), ApiError::new(ErrorCode::InvalidApiKey).envelope("r"));
    }

    #[test]
    fn baa_gate() {
        let mut w = world();
        w.org.baa_active = false;
        assert_eq!(code(decide(&w, "POST", "/v1/ai/chat", None, false)), ErrorCode::BaaRequired);
        w.config.require_baa = false;
        assert!(decide(&w, "POST", "/v1/ai/chat", None, false).is_ok());
    }

    #[test]
    fn missing_or_foreign_org_fails_closed() {
        let w = world();
        let path = CanonicalPath::parse("/v1/ai/chat").unwrap();
        let presented = parse_key(&w.config.format, &w.token).unwrap();
        let facts = Facts::bare("POST", &path);
        let r = Records { key: Some(&w.key), org: None, user: None };
        assert_eq!(
            code(authorize(&facts, presented.kind(), &r, &w.policy, &w.config, NOW)),
            ErrorCode::ServiceUnavailable
        );
        let other = OrgRecord { id: "org_2".into(), ..w.org.clone() };
        let r = Records { key: Some(&w.key), org: Some(&other), user: None };
        assert_eq!(
            code(authorize(&facts, presented.kind(), &r, &w.policy, &w.config, NOW)),
            ErrorCode::ServiceUnavailable
        );
    }

    #[test]
    fn user_role_caps_scopes() {
        let mut w = world();
        w.key.user_id = Some("u1".into());
        w.key.scopes = vec![Scope::parse("*").unwrap()];
        // viewer: ai:chat yes, ai:documents and control:read no.
        let g = decide(&w, "POST", "/v1/ai/chat", None, true).unwrap();
        assert_eq!(g.scopes_header(), "ai:chat ai:embeddings ai:summarize");
        let e = decide(&w, "GET", "/v1/api_keys", None, true).unwrap_err();
        assert_eq!(e.error, ApiError::missing_scope("control:read"));
        assert_eq!(g.user_id.as_deref(), Some("u1"));
        let e = decide(&w, "GET", "/v1/documents", None, true).unwrap_err();
        assert_eq!(e.error, ApiError::missing_scope("ai:documents"));
        // Upgrade to admin: now allowed.
        w.user.role = "admin".into();
        assert!(decide(&w, "GET", "/v1/documents", None, true).is_ok());
        // Disabled or missing user: 401.
        w.user.disabled = true;
        assert_eq!(code(decide(&w, "POST", "/v1/ai/chat", None, true)), ErrorCode::InvalidApiKey);
        w.user.disabled = false;
        assert_eq!(code(decide(&w, "POST", "/v1/ai/chat", None, false)), ErrorCode::InvalidApiKey);
        // User of another org: 401.
        w.user.org_id = "org_2".into();
        assert_eq!(code(decide(&w, "POST", "/v1/ai/chat", None, true)), ErrorCode::InvalidApiKey);
        // Unknown role: fail closed.
        w.user.org_id = "org_1".into();
        w.user.role = "root".into();
        assert_eq!(code(decide(&w, "POST", "/v1/ai/chat", None, true)), ErrorCode::ServiceUnavailable);
    }

    #[test]
    fn secret_key_with_browser_origin_is_refused() {
        let w = world();
        for origin in ["https://app.example.com", "null", ""] {
            let e = decide(&w, "POST", "/v1/ai/chat", Some(origin), false).unwrap_err();
            assert_eq!(e.error.code, ErrorCode::OriginNotAllowed);
            assert!(e.error.message().contains("server-to-server"));
        }
    }

    #[test]
    fn route_and_scope() {
        let w = world();
        assert_eq!(code(decide(&w, "POST", "/v1/nope", None, false)), ErrorCode::RouteNotFound);
        let e = decide(&w, "GET", "/v1/ai/chat", None, false).unwrap_err();
        assert_eq!(e.error.code, ErrorCode::MethodNotAllowed);
        assert_eq!(e.header("allow"), Some("POST"));
        let e = decide(&w, "POST", "/v1/embeddings", None, false).unwrap_err();
        assert_eq!(e.error.message(), "This API key lacks the required scope: ai:embeddings");
        let mut wild = world();
        wild.key.scopes = vec![Scope::parse("ai:*").unwrap()];
        assert!(decide(&wild, "POST", "/v1/embeddings", None, false).is_ok());
        assert_eq!(code(decide(&wild, "GET", "/v1/audit", None, false)), ErrorCode::MissingScope);
    }

    fn widget_world() -> World {
        let mut w = world();
        let k = generate(&w.config.format, KeyKind::Widget, &[8; 32]);
        w.token = k.plaintext;
        w.key.kind = KeyKind::Widget;
        w.key.allowed_origins = vec![
            crate::cors::OriginPattern::parse("https://shop.example.com").unwrap(),
            crate::cors::OriginPattern::parse("https://*.example.org").unwrap(),
        ];
        w.key.resource_id = Some("bot_1".into());
        w
    }

    fn decide_widget(
        w: &World,
        method: &str,
        path: &str,
        origin: Option<&str>,
        referer: Option<&str>,
    ) -> Result<Grant, Refusal> {
        let path = CanonicalPath::parse(path).unwrap();
        let presented = parse_key(&w.config.format, &w.token).unwrap();
        let facts = Facts { origin, referer, ..Facts::bare(method, &path) };
        let records = Records { key: Some(&w.key), org: Some(&w.org), user: None };
        authorize(&facts, presented.kind(), &records, &w.policy, &w.config, NOW)
    }

    #[test]
    fn widget_keys_need_an_allowed_origin() {
        let w = widget_world();
        let g = decide_widget(&w, "POST", "/v1/ai/chat", Some("https://shop.example.com"), None).unwrap();
        assert_eq!(g.kind, KeyKind::Widget);
        assert_eq!(g.resource_id.as_deref(), Some("bot_1"));
        assert_eq!(g.cors_origin.unwrap().serialize(), "https://shop.example.com");
        let g = decide_widget(&w, "POST", "/v1/ai/chat", Some("https://a.b.example.org"), None).unwrap();
        assert_eq!(g.cors_origin.unwrap().serialize(), "https://a.b.example.org");
        // Referer only when Origin is absent.
        assert!(decide_widget(&w, "POST", "/v1/ai/chat", None, Some("https://shop.example.com/cart")).is_ok());
        for (origin, referer) in [
            (None, None),
            (Some("null"), Some("https://shop.example.com/")),
            (Some("https://evil.com"), Some("https://shop.example.com/")),
            (Some("https://shop.example.com.evil.net"), None),
            (Some("https://example.org"), None),
            (Some("https://Shop.example.com"), None),
            (Some("https://shop.example.com."), None),
            (Some("http://shop.example.com"), None),
            (Some("https://shop.example.com:8443"), None),
            (Some("https://u@shop.example.com"), None),
            (None, Some("https://evil.com/?https://shop.example.com")),
        ] {
            let e = decide_widget(&w, "POST", "/v1/ai/chat", origin, referer).unwrap_err();
            assert_eq!(e.error.code, ErrorCode::OriginNotAllowed, "{origin:?} {referer:?}");
            assert_eq!(e.header("access-control-allow-origin"), None, "no CORS for a refused origin");
        }
    }

    #[test]
    fn widget_refusals_after_the_origin_check_carry_cors() {
        let mut w = widget_world();
        let e = decide_widget(&w, "POST", "/v1/embeddings", Some("https://shop.example.com"), None).unwrap_err();
        assert_eq!(e.error.code, ErrorCode::MissingScope);
        assert_eq!(e.header("access-control-allow-origin"), Some("https://shop.example.com"));
        assert_eq!(e.header("vary"), Some("Origin"));
        let e = decide_widget(&w, "GET", "/v1/nope", Some("https://shop.example.com"), None).unwrap_err();
        assert_eq!(
            (e.error.code, e.header("access-control-allow-origin")),
            (ErrorCode::RouteNotFound, Some("https://shop.example.com"))
        );
        w.org.baa_active = false;
        let e = decide_widget(&w, "POST", "/v1/ai/chat", Some("https://shop.example.com"), None).unwrap_err();
        assert_eq!(
            (e.error.code, e.header("access-control-allow-origin")),
            (ErrorCode::BaaRequired, Some("https://shop.example.com"))
        );
    }

    #[test]
    fn a_widget_key_never_exceeds_the_widget_scopes() {
        let mut w = widget_world();
        // A record that somehow holds "*": still only ai:chat.
        w.key.scopes = vec![Scope::parse("*").unwrap()];
        let g = decide_widget(&w, "POST", "/v1/ai/chat", Some("https://shop.example.com"), None).unwrap();
        assert_eq!(g.scopes_header(), "ai:chat");
        let e = decide_widget(&w, "GET", "/v1/api_keys", Some("https://shop.example.com"), None).unwrap_err();
        assert_eq!(e.error, ApiError::missing_scope("control:read"));
    }

    #[test]
    fn preauthorize_agrees_with_authorize_on_key_only_checks() {
        let w = world();
        let p = |m: &str, path: &str, origin: Option<&str>| {
            let path = CanonicalPath::parse(path).unwrap();
            let presented = parse_key(&w.config.format, &w.token).unwrap();
            preauthorize(&Facts { origin, ..Facts::bare(m, &path) }, presented.kind(), &w.key, &w.policy, NOW)
        };
        assert!(p("POST", "/v1/ai/chat", None));
        assert!(!p("POST", "/v1/embeddings", None), "scope");
        assert!(!p("GET", "/v1/ai/chat", None), "method");
        assert!(!p("POST", "/v1/nope", None), "route");
        assert!(!p("POST", "/v1/ai/chat", Some("https://a.com")), "secret key from a browser");
        assert!(!p("POST", "/v1/ai/chat", Some("")), "an empty Origin is an Origin");
        assert!(!p("POST", "/v1/ai/chat", Some("null")), "an opaque origin is an Origin");
        let e = decide(&w, "POST", "/v1/ai/chat", Some(""), false).unwrap_err();
        assert_eq!(e.error.code, ErrorCode::OriginNotAllowed);
        let path = CanonicalPath::parse("/v1/ai/chat").unwrap();
        let presented = parse_key(&w.config.format, &w.token).unwrap();
        let form = Facts {
            has_body: true,
            content_type: Some("application/x-www-form-urlencoded"),
            ..Facts::bare("POST", &path)
        };
        assert!(!preauthorize(&form, presented.kind(), &w.key, &w.policy, NOW), "a form body to a JSON route");
        let records = Records { key: Some(&w.key), org: Some(&w.org), user: None };
        let e = authorize(&form, presented.kind(), &records, &w.policy, &w.config, NOW).unwrap_err();
        assert_eq!(e.error.code, ErrorCode::UnsupportedMediaType);
        let json = Facts { content_type: Some("application/json"), ..form };
        assert!(preauthorize(&json, presented.kind(), &w.key, &w.policy, NOW));
        assert!(authorize(&json, presented.kind(), &records, &w.policy, &w.config, NOW).is_ok());
        // Scope before body type: a key without the scope learns nothing of the route's types.
        let embed_path = CanonicalPath::parse("/v1/embeddings").unwrap();
        let embed = Facts { path: &embed_path, ..form };
        let e = authorize(&embed, presented.kind(), &records, &w.policy, &w.config, NOW).unwrap_err();
        assert_eq!(e.error.code, ErrorCode::MissingScope);
        let mut revoked = world();
        revoked.key.revoked_at = Some(1);
        let path = CanonicalPath::parse("/v1/ai/chat").unwrap();
        let presented = parse_key(&revoked.config.format, &revoked.token).unwrap();
        let facts = Facts::bare("POST", &path);
        assert!(!preauthorize(&facts, presented.kind(), &revoked.key, &revoked.policy, NOW));
        // Org-dependent refusals are authorize's alone: preauthorize passes.
        let mut no_baa = world();
        no_baa.org.baa_active = false;
        assert!(decide(&no_baa, "POST", "/v1/ai/chat", None, false).is_err());
    }

    #[test]
    fn bodies() {
        assert!(has_body("POST", true, None), "chunked, or HTTP/2 without a length");
        assert!(has_body("POST", true, Some("3")));
        assert!(has_body("DELETE", true, Some(" 1 ")));
        assert!(!has_body("POST", true, Some("0")));
        assert!(!has_body("DELETE", true, Some(" 0")));
        assert!(!has_body("POST", false, None));
        assert!(!has_body("GET", true, Some("5")), "a GET body is never forwarded");
        assert!(!has_body("HEAD", true, None));
    }

    #[test]
    fn upload_guard() {
        assert!(needs_upload_guard(true, None), "chunked");
        assert!(needs_upload_guard(true, Some("")));
        assert!(needs_upload_guard(true, Some("12, 12")), "not one length");
        assert!(!needs_upload_guard(true, Some("100")));
        assert!(!needs_upload_guard(true, Some(" 7 ")));
        assert!(!needs_upload_guard(false, None));
    }

    #[test]
    fn credential_extraction() {
        let t = "kw_live_x";
        assert_eq!(extract_credential(Some("Bearer kw_live_x"), None), Ok(t));
        assert_eq!(extract_credential(Some("bearer kw_live_x"), None), Ok(t));
        assert_eq!(extract_credential(None, Some(t)), Ok(t));
        assert_eq!(extract_credential(Some("Bearer kw_live_x"), Some(t)), Ok(t));
        for (a, x) in [
            (None, None),
            (Some(""), None),
            (Some(""), Some(t)),
            (None, Some("")),
            (Some("Bearer kw_live_x"), Some("")),
            (Some("Bearer"), None),
            (Some("Bearer "), None),
            (Some("Bearerkw_live_x"), None),
            (Some("Basic a3c6"), None),
            (Some("Bearer kw_live_x"), Some("kw_live_y")),
            (Some("Basic a3c6"), Some(t)),
            (None, Some("")),
            (Some("Bearér kw"), None),
        ] {
            assert_eq!(extract_credential(a, x).unwrap_err().code, ErrorCode::InvalidApiKey, "{a:?} {x:?}");
        }
        // Two spaces: the token then starts with a space and fails the format check.
        let f = TokenFormat::default();
        let tok = extract_credential(Some("Bearer  kw_live_x"), None).unwrap();
        assert!(parse_key(&f, tok).is_err());
    }
}
