//! The route policy: a declarative table shipped in the repo
//! (`policy/policy.json`), parsed and validated once per isolate.
//!
//! ```json
//! { "scopes": ["ai:chat", …],                  // the scope catalogue
//!   "roles":  { "viewer": ["ai:chat"], … },      // role → granted scopes
//!   "routes": [ { "method": "POST" | ["GET","POST"],
//!                 "path": "/v1/documents/{id}" | "/v1/documents/**",
//!                 "scope": "ai:documents" }, … ] }
//! ```
//!
//! Path patterns are matched segment by segment against the canonical path,
//! case-sensitively: a literal segment matches itself, `{name}` matches one
//! non-empty segment, and `**` (last segment only) matches one or more
//! remaining non-empty segments. The first route whose pattern and method
//! match wins. A path that some route matches with another method gets
//! `405 METHOD_NOT_ALLOWED` (with `Allow`); a path no route matches gets
//! `404 ROUTE_NOT_FOUND`. Nothing outside the table is ever forwarded.

use serde::Deserialize;

use crate::error::{ApiError, ErrorCode};
use crate::path::CanonicalPath;
use crate::ratelimit::{RateLimit, MAX_LIMITS};
use crate::scope::Scope;
use crate::vecmap::VecMap;

/// Methods a route may list.
pub const PROXIED_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

/// The policy shipped with keyward.
pub const DEFAULT_POLICY_JSON: &str = include_str!("../policy/policy.json");

/// A validated policy.
#[derive(Clone, Debug)]
pub struct Policy {
    scopes: Vec<String>,
    roles: VecMap<String, Vec<Scope>>,
    routes: Vec<Route>,
    default_rate_limits: Vec<RateLimit>,
    widget_scopes: Vec<Scope>,
    widget_ip_rate_limits: Vec<RateLimit>,
    key_creating_roles: Vec<String>,
    forwarded_headers: Option<Vec<String>>,
    session_rate_limits: VecMap<String, Vec<RateLimit>>,
    control_write_scope: Option<String>,
}

/// One route of the table.
#[derive(Clone, Debug)]
pub struct Route {
    methods: Vec<String>,
    pattern: Vec<Segment>,
    path: String,
    scope: String,
    local: bool,
    /// Media types a request body may have (`type/subtype` or `type/*`);
    /// `None`: any but [`FORM_MEDIA_TYPES`].
    content_types: Option<Vec<String>>,
    /// A public route (login, refresh, JWKS): no credential, proxied
    /// without identity headers, held to these limits per client address.
    public: Option<Vec<RateLimit>>,
    /// Credits a request to this route spends from a usage-limited key.
    cost: u32,
}

/// The limit of a public route whose policy names none: 10 requests per
/// minute per client address (brute-force protection of a login route).
pub fn default_public_limits() -> Vec<RateLimit> {
    vec![RateLimit { name: "ip_minute".into(), limit: 10, window_seconds: 60 }]
}

/// Body types that frameworks parse into parameters (and so read a
/// `_method` field from): refused on every route that does not list them.
pub const FORM_MEDIA_TYPES: &[&str] = &["application/x-www-form-urlencoded", "multipart/form-data"];

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
    Rest,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    scopes: Vec<String>,
    roles: VecMap<String, Vec<String>>,
    routes: Vec<RawRoute>,
    #[serde(default)]
    default_rate_limits: Vec<RateLimit>,
    #[serde(default)]
    widget_scopes: Vec<String>,
    #[serde(default)]
    widget_ip_rate_limits: Vec<RateLimit>,
    #[serde(default)]
    key_creating_roles: Vec<String>,
    /// Allow-list mode for the client's request headers: only these
    /// (lowercase) names are forwarded; absent: every header but the
    /// deny-list ([`crate::signing::DROPPED`]).
    #[serde(default)]
    forwarded_headers: Option<Vec<String>>,
    /// The limits of JWT sessions, per role (one guard per user counts
    /// them); a role not named here has `default_rate_limits`.
    #[serde(default)]
    session_rate_limits: VecMap<String, Vec<RateLimit>>,
    /// A scope the control API's writes (mint, revoke, revoke sessions)
    /// need besides their route's `control:read`; absent: none.
    #[serde(default)]
    control_write_scope: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    method: OneOrMany,
    path: String,
    /// Required unless the route is public.
    #[serde(default)]
    scope: Option<String>,
    /// No credential needed ([`Route::is_public`]).
    #[serde(default)]
    public: bool,
    /// A public route's limits per client address (default
    /// [`default_public_limits`]).
    #[serde(default)]
    ip_rate_limits: Option<Vec<RateLimit>>,
    /// `"keyward"` for the control API that keyward serves itself; absent
    /// for routes proxied to the origin.
    #[serde(default)]
    served_by: Option<String>,
    /// The media types a request body may have; absent: any type but the
    /// form types ([`FORM_MEDIA_TYPES`]).
    #[serde(default)]
    content_types: Option<Vec<String>>,
    /// Credits a request spends from a usage-limited key (1 to
    /// [`crate::credits::MAX_COST`]; default 1).
    #[serde(default)]
    cost: Option<u32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The result of matching a request against the table.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteMatch<'p> {
    /// A route matched; its scope is required.
    Found(&'p Route),
    /// The path is known but not with this method; the allowed methods.
    MethodNotAllowed(Vec<&'p str>),
    /// No route matches the path.
    NotFound,
}

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.methods == other.methods
    }
}
impl Eq for Route {}

impl Route {
    /// The scope this route requires (always concrete; empty for a
    /// public route).
    pub fn scope(&self) -> &str {
        &self.scope
    }
    /// Credits a request to this route spends from a usage-limited key.
    pub fn cost(&self) -> u32 {
        self.cost
    }
    /// A public route's limits per client address; `None` for a route
    /// that needs a credential.
    pub fn public_limits(&self) -> Option<&[RateLimit]> {
        self.public.as_deref()
    }
    /// The pattern as written in the policy.
    pub fn pattern(&self) -> &str {
        &self.path
    }
    /// Whether keyward serves this route itself (never proxied).
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// Whether a request body of this type may reach the route.
    ///
    /// A request without a body always may. A body must say its type: Rack
    /// parses an untyped `POST` body as a form, so no type is refused like
    /// a form type. The media type is compared without its parameters and
    /// case; a route that lists types accepts only those (`type/*` matches
    /// every subtype), one that lists none accepts every type but the form
    /// types.
    pub fn accepts_body(&self, has_body: bool, content_type: Option<&str>) -> Result<(), ApiError> {
        if !has_body {
            return Ok(());
        }
        let media = content_type.map(media_type).filter(|m| !m.is_empty());
        let accepted = match (&media, &self.content_types) {
            (None, _) => false,
            (Some(m), None) => !FORM_MEDIA_TYPES.contains(&m.as_str()),
            (Some(m), Some(list)) => list.iter().any(|t| match t.strip_suffix("/*") {
                Some(top) => m.split_once('/').is_some_and(|(mt, _)| mt == top),
                None => t == m,
            }),
        };
        if accepted {
            return Ok(());
        }
        let listed = match &self.content_types {
            Some(list) => list.join(", "),
            None => "any type but a form".to_owned(),
        };
        Err(ApiError::with_message(
            ErrorCode::UnsupportedMediaType,
            format!("This route accepts request bodies of type: {listed} (send a matching Content-Type)."),
        ))
    }

    fn matches_path(&self, path: &CanonicalPath) -> bool {
        let mut segs = path.segments();
        for (i, p) in self.pattern.iter().enumerate() {
            match p {
                Segment::Rest => {
                    debug_assert_eq!(i, self.pattern.len() - 1);
                    let mut n = 0;
                    for s in segs.by_ref() {
                        if s.is_empty() {
                            return false;
                        }
                        n += 1;
                    }
                    return n > 0;
                }
                Segment::Param => match segs.next() {
                    Some(s) if !s.is_empty() => {}
                    _ => return false,
                },
                Segment::Literal(l) => match segs.next() {
                    Some(s) if s == l => {}
                    _ => return false,
                },
            }
        }
        segs.next().is_none()
    }
}

impl Policy {
    /// The policy shipped in `policy/policy.json`.
    pub fn default_policy() -> Result<Self, String> {
        Self::from_json(DEFAULT_POLICY_JSON)
    }

    /// Parses and validates a policy document.
    pub fn from_json(json: &str) -> Result<Self, String> {
        if !json.trim_start().starts_with('{') {
            return Err("policy: must be a JSON object".into());
        }
        let raw: RawPolicy = crate::from_json(json).map_err(|e| format!("policy: {e}"))?;
        let mut scopes = Vec::new();
        for s in raw.scopes {
            match Scope::parse(&s) {
                Some(sc) if !sc.is_wildcard() => scopes.push(s),
                _ => return Err(format!("policy: catalogue scope {s:?} must be a concrete scope")),
            }
        }
        let mut roles = VecMap::default();
        for (name, granted) in raw.roles {
            let mut list = Vec::new();
            for g in granted {
                let sc = Scope::parse(&g).ok_or_else(|| format!("policy: role {name}: invalid scope {g:?}"))?;
                if !sc.is_wildcard() && !scopes.contains(&g) {
                    return Err(format!("policy: role {name}: unknown scope {g:?}"));
                }
                list.push(sc);
            }
            roles.insert(name, list);
        }
        let mut routes: Vec<Route> = Vec::new();
        for r in raw.routes {
            let methods = match r.method {
                OneOrMany::One(m) => vec![m],
                OneOrMany::Many(ms) => ms,
            };
            // Only methods the proxy can send as they are (the runtime would
            // turn others into GET).
            if methods.is_empty() || methods.iter().any(|m| !PROXIED_METHODS.contains(&m.as_str())) {
                return Err(format!("policy: route {}: methods must be among {}", r.path, PROXIED_METHODS.join(", ")));
            }
            let (scope, public) = match (r.public, r.scope, r.ip_rate_limits) {
                (false, Some(scope), None) if scopes.contains(&scope) => (scope, None),
                (false, Some(scope), None) => {
                    return Err(format!("policy: route {}: scope {scope:?} is not in the catalogue", r.path))
                }
                (false, None, _) => {
                    return Err(format!("policy: route {}: a scope is required (or \"public\": true)", r.path))
                }
                (false, Some(_), Some(_)) => {
                    return Err(format!("policy: route {}: ip_rate_limits is for public routes only", r.path))
                }
                (true, Some(_), _) => return Err(format!("policy: route {}: a public route has no scope", r.path)),
                (true, None, limits) => {
                    let limits = limits.unwrap_or_else(default_public_limits);
                    check_limits(&format!("route {} ip_rate_limits", r.path), &limits)?;
                    if limits.is_empty() {
                        return Err(format!("policy: route {}: a public route needs ip_rate_limits", r.path));
                    }
                    (String::new(), Some(limits))
                }
            };
            if public.is_some() && r.served_by.is_some() {
                return Err(format!("policy: route {}: a public route is proxied, never served_by keyward", r.path));
            }
            let pattern = parse_pattern(&r.path)?;
            let local = match r.served_by.as_deref() {
                None => false,
                Some("keyward") => true,
                Some(other) => {
                    return Err(format!("policy: route {}: served_by must be \"keyward\", not {other:?}", r.path))
                }
            };
            if let Some(bad) = r.content_types.iter().flatten().find(|t| !valid_media_range(t)) {
                return Err(format!(
                    "policy: route {}: content type {bad:?} must be a lowercase type/subtype or type/*",
                    r.path
                ));
            }
            if r.content_types.as_ref().is_some_and(Vec::is_empty) {
                return Err(format!("policy: route {}: content_types must not be empty (omit it instead)", r.path));
            }
            let cost = r.cost.unwrap_or(1);
            if !(1..=crate::credits::MAX_COST).contains(&cost) || (public.is_some() && r.cost.is_some()) {
                return Err(format!(
                    "policy: route {}: cost must be 1 to {} (and public routes spend no credits)",
                    r.path,
                    crate::credits::MAX_COST
                ));
            }
            let route =
                Route { methods, pattern, path: r.path, scope, local, content_types: r.content_types, public, cost };
            if routes.iter().any(|o| o.pattern == route.pattern && o.methods.iter().any(|m| route.methods.contains(m)))
            {
                return Err(format!("policy: route {} is declared twice for one method", route.path));
            }
            // A public route must never take a request another route guards
            // (the first match wins: it would make that route public).
            let shared = |o: &Route| o.methods.iter().any(|m| route.methods.contains(m));
            if let Some(o) = routes.iter().find(|o| {
                o.public.is_some() != route.public.is_some() && shared(o) && overlap(&o.pattern, &route.pattern)
            }) {
                return Err(format!(
                    "policy: public route and guarded route overlap ({} and {}): a path of both for one method",
                    o.path, route.path
                ));
            }
            routes.push(route);
        }
        check_limits("default_rate_limits", &raw.default_rate_limits)?;
        check_limits("widget_ip_rate_limits", &raw.widget_ip_rate_limits)?;
        if raw.default_rate_limits.iter().any(|d| raw.widget_ip_rate_limits.iter().any(|w| w.name == d.name)) {
            return Err("policy: widget_ip_rate_limits names must differ from default_rate_limits names".into());
        }
        if !raw.widget_ip_rate_limits.is_empty() {
            crate::ratelimit::check_visitor_limits(&raw.default_rate_limits, &raw.widget_ip_rate_limits)
                .map_err(|e| format!("policy: widget_ip_rate_limits against default_rate_limits: {e}"))?;
        }
        let mut widget_scopes = Vec::new();
        for s in raw.widget_scopes {
            match Scope::parse(&s) {
                Some(sc) if !sc.is_wildcard() && scopes.contains(&s) => widget_scopes.push(sc),
                _ => return Err(format!("policy: widget scope {s:?} must be a concrete scope of the catalogue")),
            }
        }
        if let Some(r) = raw.key_creating_roles.iter().find(|r| !roles.contains_key(*r)) {
            return Err(format!("policy: key_creating_roles: unknown role {r:?}"));
        }
        for name in raw.forwarded_headers.iter().flatten() {
            let token = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^`|~".contains(&b));
            if !token {
                return Err(format!("policy: forwarded_headers: {name:?} must be a lowercase header name"));
            }
            if crate::signing::never_forwarded(name) {
                return Err(format!("policy: forwarded_headers: {name:?} is never forwarded (credentials, overrides, forwarding claims, hop-by-hop)"));
            }
        }
        for (role, limits) in raw.session_rate_limits.iter() {
            if !roles.contains_key(role) {
                return Err(format!("policy: session_rate_limits: unknown role {role:?}"));
            }
            check_limits(&format!("session_rate_limits.{role}"), limits)?;
        }
        if let Some(w) = &raw.control_write_scope {
            if !scopes.contains(w) {
                return Err(format!("policy: control_write_scope {w:?} is not a scope of the catalogue"));
            }
        }
        Ok(Self {
            control_write_scope: raw.control_write_scope,
            session_rate_limits: raw.session_rate_limits,
            forwarded_headers: raw.forwarded_headers,
            key_creating_roles: raw.key_creating_roles,
            scopes,
            roles,
            routes,
            default_rate_limits: raw.default_rate_limits,
            widget_scopes,
            widget_ip_rate_limits: raw.widget_ip_rate_limits,
        })
    }

    /// Matches a method and canonical path.
    pub fn match_route(&self, method: &str, path: &CanonicalPath) -> RouteMatch<'_> {
        let mut allowed: Vec<&str> = Vec::new();
        for r in &self.routes {
            if r.matches_path(path) {
                if r.methods.iter().any(|m| m == method) {
                    return RouteMatch::Found(r);
                }
                allowed.extend(r.methods.iter().map(String::as_str));
            }
        }
        if allowed.is_empty() {
            RouteMatch::NotFound
        } else {
            crate::sort_small(&mut allowed);
            allowed.dedup();
            RouteMatch::MethodNotAllowed(allowed)
        }
    }

    /// Matches and turns a miss into the error to answer with.
    pub fn route(&self, method: &str, path: &CanonicalPath) -> Result<&Route, RouteError> {
        match self.match_route(method, path) {
            RouteMatch::Found(r) => Ok(r),
            RouteMatch::MethodNotAllowed(allow) => {
                Err(RouteError { error: ApiError::new(ErrorCode::MethodNotAllowed), allow: Some(allow.join(", ")) })
            }
            RouteMatch::NotFound => Err(RouteError { error: ApiError::new(ErrorCode::RouteNotFound), allow: None }),
        }
    }

    /// The largest `cost` of any route: what one unit of a lease reserves
    /// from a usage-limited key's credits.
    pub fn max_cost(&self) -> u32 {
        self.routes.iter().map(|r| r.cost).max().unwrap_or(1)
    }

    /// The scopes a widget key may hold (concrete, no wildcards).
    pub fn widget_scopes(&self) -> &[Scope] {
        &self.widget_scopes
    }

    /// Limits applied per client IP to widget keys (in addition to the
    /// key's own limits), so one visitor cannot exhaust a site's budget.
    pub fn widget_ip_rate_limits(&self) -> &[RateLimit] {
        &self.widget_ip_rate_limits
    }

    /// Methods of the routes matching `path` that widget keys may call
    /// (their scope is a widget scope), sorted. Used to answer preflights.
    pub fn widget_methods(&self, path: &CanonicalPath) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .routes
            .iter()
            .filter(|r| r.matches_path(path) && self.widget_scopes.iter().any(|w| w.as_str() == r.scope))
            .flat_map(|r| r.methods.iter().map(String::as_str))
            .collect();
        crate::sort_small(&mut out);
        out.dedup();
        out
    }

    /// The allow-list of client request headers to forward, if the policy
    /// has one.
    pub fn forwarded_headers(&self) -> Option<&[String]> {
        self.forwarded_headers.as_deref()
    }

    /// The limits of a JWT session of a user with this role: the role's
    /// `session_rate_limits`, else `default_rate_limits`.
    pub fn session_rate_limits(&self, role: &str) -> &[RateLimit] {
        self.session_rate_limits.get(role).map_or(&self.default_rate_limits, Vec::as_slice)
    }

    /// The scope control API writes need besides `control:read`, if any.
    pub fn control_write_scope(&self) -> Option<&str> {
        self.control_write_scope.as_deref()
    }

    /// Whether any role has its own session limits.
    pub fn has_session_rate_limits(&self) -> bool {
        !self.session_rate_limits.is_empty()
    }

    /// Methods of every route matching `path`, sorted (preflights from a
    /// browser origin that JWT sessions may be used from).
    pub fn methods(&self, path: &CanonicalPath) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .routes
            .iter()
            .filter(|r| r.matches_path(path))
            .flat_map(|r| r.methods.iter().map(String::as_str))
            .collect();
        crate::sort_small(&mut out);
        out.dedup();
        out
    }

    /// The limits every key has unless its own limits override them by name.
    pub fn default_rate_limits(&self) -> &[RateLimit] {
        &self.default_rate_limits
    }

    /// The scope catalogue.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// Whether `s` is a scope a key may be given: a catalogue scope, `*`, or
    /// `resource:*` for a resource that has at least one catalogue scope.
    pub fn is_grantable(&self, s: &Scope) -> bool {
        match s.as_str() {
            "*" => true,
            x if s.is_wildcard() => {
                let res = &x[..x.len() - 1];
                self.scopes.iter().any(|c| c.starts_with(res))
            }
            x => self.scopes.iter().any(|c| c == x),
        }
    }

    /// Whether users of `role` may create keys (`seeds/004_*` "Create API
    /// Token"); keys not bound to a user need only `control:read`.
    pub fn role_creates_keys(&self, role: &str) -> bool {
        self.key_creating_roles.iter().any(|r| r == role)
    }

    /// The scopes a role grants, or `None` for an unknown role.
    pub fn role(&self, name: &str) -> Option<&[Scope]> {
        self.roles.get(name).map(Vec::as_slice)
    }

    /// Role names, sorted.
    pub fn role_names(&self) -> impl Iterator<Item = &str> {
        self.roles.keys().map(String::as_str)
    }
}

/// A route miss: the error and, for 405, the `Allow` header value.
#[derive(Debug, PartialEq, Eq)]
pub struct RouteError {
    /// The error to answer with.
    pub error: ApiError,
    /// The `Allow` header for 405.
    pub allow: Option<String>,
}

fn check_limits(field: &str, limits: &[RateLimit]) -> Result<(), String> {
    if limits.len() > MAX_LIMITS {
        return Err(format!("policy: at most 4 {field}"));
    }
    for (i, l) in limits.iter().enumerate() {
        l.validate().map_err(|e| format!("policy: {field}[{i}]: {e}"))?;
        if limits[..i].iter().any(|o| o.name == l.name) {
            return Err(format!("policy: {field}: {} is declared twice", l.name));
        }
    }
    Ok(())
}

fn parse_pattern(path: &str) -> Result<Vec<Segment>, String> {
    let rest = path.strip_prefix('/').ok_or_else(|| format!("policy: pattern {path:?} must start with '/'"))?;
    let parts: Vec<&str> = rest.split('/').collect();
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let seg = if *p == "**" {
            if i != parts.len() - 1 {
                return Err(format!("policy: pattern {path:?}: '**' must be the last segment"));
            }
            Segment::Rest
        } else if p.starts_with('{') && p.ends_with('}') && p.len() > 2 {
            Segment::Param
        } else if !p.is_empty()
            && CanonicalPath::parse(&format!("/{p}")).map(|c| c.as_str() == format!("/{p}")).unwrap_or(false)
            && !p.contains(['*', '{', '}'])
        {
            Segment::Literal((*p).to_owned())
        } else {
            return Err(format!("policy: pattern {path:?}: invalid segment {p:?}"));
        };
        out.push(seg);
    }
    Ok(out)
}

/// Whether some canonical path matches both patterns.
fn overlap(a: &[Segment], b: &[Segment]) -> bool {
    match (a.split_first(), b.split_first()) {
        (None, None) => true,
        // `**` takes one or more segments: it matches whatever the other
        // pattern's remainder is, if that is not empty.
        (Some((Segment::Rest, _)), Some(_)) | (Some(_), Some((Segment::Rest, _))) => true,
        (Some((x, xs)), Some((y, ys))) => {
            let one = match (x, y) {
                (Segment::Literal(l), Segment::Literal(m)) => l == m,
                _ => true,
            };
            one && overlap(xs, ys)
        }
        _ => false,
    }
}

/// The media type of a `Content-Type` value: before any `;`, trimmed,
/// lowercase.
pub fn media_type(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// `type/subtype` or `type/*`, lowercase RFC 9110 tokens.
fn valid_media_range(t: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$&-^_.+".contains(&b))
    };
    match t.split_once('/') {
        Some((top, "*")) => token(top),
        Some((top, sub)) => token(top) && token(sub),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> CanonicalPath {
        CanonicalPath::parse(s).unwrap()
    }

    fn scope_of(pol: &Policy, m: &str, path: &str) -> Option<String> {
        match pol.match_route(m, &p(path)) {
            RouteMatch::Found(r) => Some(r.scope().to_owned()),
            _ => None,
        }
    }

    #[test]
    fn default_policy_is_the_seed_table() {
        let pol = Policy::default_policy().unwrap();
        let cases = [
            ("POST", "/v1/ai/chat", "ai:chat"),
            ("POST", "/v1/messages", "ai:chat"),
            ("GET", "/v1/documents", "ai:documents"),
            ("POST", "/v1/documents", "ai:documents"),
            ("GET", "/v1/documents/doc_1", "ai:documents"),
            ("DELETE", "/v1/documents/doc_1/pages/2", "ai:documents"),
            ("POST", "/v1/embeddings", "ai:embeddings"),
            ("POST", "/v1/summarize", "ai:summarize"),
            ("GET", "/v1/api_keys", "control:read"),
            ("POST", "/v1/api_keys", "control:read"),
            ("DELETE", "/v1/api_keys/01JQKEY", "control:read"),
            ("GET", "/v1/usage", "control:read"),
            ("GET", "/v1/usage/budget", "control:read"),
            ("PUT", "/v1/usage/budget", "control:read"),
            ("GET", "/v1/audit", "control:read"),
            ("GET", "/v1/webhooks", "control:webhooks"),
            ("POST", "/v1/webhooks", "control:webhooks"),
            ("DELETE", "/v1/webhooks/wh_1", "control:webhooks"),
        ];
        for (m, path, scope) in cases {
            assert_eq!(scope_of(&pol, m, path).as_deref(), Some(scope), "{m} {path}");
        }
    }

    fn with_routes(routes: serde_json::Value, extra: serde_json::Value) -> Result<Policy, String> {
        let mut v: serde_json::Value = serde_json::from_str(DEFAULT_POLICY_JSON).unwrap();
        v["routes"] = routes;
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        Policy::from_json(&v.to_string())
    }

    #[test]
    fn public_routes_need_no_scope_and_never_shadow_a_guarded_one() {
        use serde_json::json;
        let pol = Policy::default_policy().unwrap();
        let login = pol.route("POST", &p("/api/v1/auth/login")).unwrap();
        assert_eq!((login.scope(), login.public_limits().map(|l| l[0].limit)), ("", Some(10)));
        assert!(pol.route("POST", &p("/v1/ai/chat")).unwrap().public_limits().is_none());
        let guarded = json!({"method": "POST", "path": "/v1/ai/chat", "scope": "ai:chat"});
        let ok = |r: serde_json::Value| with_routes(json!([guarded, r]), json!({}));
        let got = ok(json!({"method": "POST", "path": "/login", "public": true})).unwrap();
        assert_eq!(got.route("POST", &p("/login")).unwrap().public_limits(), Some(&default_public_limits()[..]));
        for (bad, why) in [
            (
                json!({"method": "POST", "path": "/login", "public": true, "scope": "ai:chat"}),
                "a public route has no scope",
            ),
            (json!({"method": "POST", "path": "/login"}), "a scope is required"),
            (
                json!({"method": "POST", "path": "/login", "scope": "ai:chat", "ip_rate_limits": []}),
                "public routes only",
            ),
            (json!({"method": "POST", "path": "/login", "public": true, "ip_rate_limits": []}), "needs ip_rate_limits"),
            (json!({"method": "POST", "path": "/login", "public": true, "served_by": "keyward"}), "never served_by"),
            // Overlaps: the same path, a parameter, a `**` over it.
            (json!({"method": "POST", "path": "/v1/ai/chat", "public": true}), "declared twice"),
            (json!({"method": "POST", "path": "/v1/{x}/chat", "public": true}), "overlap"),
            (json!({"method": ["GET", "POST"], "path": "/v1/**", "public": true}), "overlap"),
            (json!({"method": "POST", "path": "/{a}/{b}/{c}", "public": true}), "overlap"),
        ] {
            let e = ok(bad.clone()).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        // Not overlapping: another method, another length, another literal.
        for fine in [
            json!({"method": "GET", "path": "/v1/**", "public": true}),
            json!({"method": "POST", "path": "/v1/ai", "public": true}),
            json!({"method": "POST", "path": "/v1/ai/chat/{x}", "public": true}),
            json!({"method": "POST", "path": "/v2/{x}/chat", "public": true}),
        ] {
            assert!(ok(fine.clone()).is_ok(), "{fine}");
        }
        // Per-role session limits name known roles.
        let limits = json!([{"name": "m", "limit": 5, "window_seconds": 60}]);
        let pol = with_routes(json!([guarded]), json!({"session_rate_limits": {"viewer": limits}})).unwrap();
        assert_eq!(pol.session_rate_limits("viewer")[0].limit, 5);
        assert_eq!(pol.session_rate_limits("admin"), pol.default_rate_limits());
        let e = with_routes(json!([guarded]), json!({"session_rate_limits": {"root": limits}})).unwrap_err();
        assert!(e.contains("unknown role"), "{e}");
    }

    #[test]
    fn roles_are_kept_by_name() {
        // Listed out of order, one twice (the last wins, as JSON objects
        // decode): named in order, validated in order.
        let pol = Policy::from_json(
            r#"{"scopes":["a:b","a:c"],"roles":{"z":["a:b"],"m":["a:*"],"z":["a:c"]},"routes":[],
                "session_rate_limits":{"z":[{"name":"m","limit":5,"window_seconds":60}]}}"#,
        )
        .unwrap();
        assert_eq!(pol.role_names().collect::<Vec<_>>(), ["m", "z"]);
        assert_eq!(pol.role("z").unwrap().iter().map(Scope::as_str).collect::<Vec<_>>(), ["a:c"]);
        assert_eq!(pol.session_rate_limits("z")[0].limit, 5);
        let e = Policy::from_json(r#"{"scopes":["a:b"],"roles":{"y":["x:y"],"b":["a:c"]},"routes":[]}"#);
        assert_eq!(e.unwrap_err(), r#"policy: role b: unknown scope "a:c""#);
        let e = Policy::from_json(r#"{"scopes":["a:b"],"roles":[],"routes":[]}"#);
        assert_eq!(e.unwrap_err(), "policy: invalid type: sequence, expected a map");
    }

    #[test]
    fn misses() {
        let pol = Policy::default_policy().unwrap();
        for path in [
            "/",
            "/v1",
            "/v1/ai",
            "/v1/ai/chat/",
            "/v1/AI/chat",
            "/v1/ai/chat/x",
            "/v1/documents/",
            "/v1/webhooks/",
            "/v1/api_keys/a/b",
            "/admin/orgs",
        ] {
            assert!(
                matches!(pol.match_route("POST", &p(path)), RouteMatch::NotFound | RouteMatch::MethodNotAllowed(_))
                    && scope_of(&pol, "POST", path).is_none(),
                "{path}"
            );
        }
        assert_eq!(pol.match_route("GET", &p("/v1/ai/chat")), RouteMatch::MethodNotAllowed(vec!["POST"]));
        assert_eq!(pol.match_route("post", &p("/v1/ai/chat")), RouteMatch::MethodNotAllowed(vec!["POST"]));
        assert_eq!(pol.match_route("DELETE", &p("/v1/api_keys")), RouteMatch::MethodNotAllowed(vec!["GET", "POST"]));
        assert_eq!(pol.match_route("GET", &p("/nope")), RouteMatch::NotFound);
        let e = pol.route("PUT", &p("/v1/usage")).unwrap_err();
        assert_eq!(e.error.code, ErrorCode::MethodNotAllowed);
        assert_eq!(e.allow.as_deref(), Some("GET"));
    }

    #[test]
    fn invalid_policies_are_refused() {
        let base = |routes: &str| format!(r#"{{"scopes":["a:b"],"roles":{{}},"routes":[{routes}]}}"#);
        for bad in [
            base(r#"{"method":"GET","path":"/x","scope":"a:c"}"#),
            base(r#"{"method":"get","path":"/x","scope":"a:b"}"#),
            base(r#"{"method":"PURGE","path":"/x","scope":"a:b"}"#),
            base(r#"{"method":"OPTIONS","path":"/x","scope":"a:b"}"#),
            base(r#"{"method":[],"path":"/x","scope":"a:b"}"#),
            base(r#"{"method":"GET","path":"x","scope":"a:b"}"#),
            base(r#"{"method":"GET","path":"/**/x","scope":"a:b"}"#),
            base(r#"{"method":"GET","path":"/x/../y","scope":"a:b"}"#),
            base(r#"{"method":"GET","path":"/x//y","scope":"a:b"}"#),
            base(r#"{"method":"GET","path":"/x","scope":"a:b"},{"method":["POST","GET"],"path":"/x","scope":"a:b"}"#),
            base(r#"{"method":"GET","path":"/x","scope":"a:b","extra":1}"#),
            r#"[["a:b"],{},[]]"#.to_owned(),
            base(r#"{"method":"GET","path":"/x","scope":"a:b","content_types":[]}"#),
            r#"{"scopes":["a:b"],"roles":{},"routes":[],"forwarded_headers":["Accept"]}"#.to_owned(),
            r#"{"scopes":["a:b"],"roles":{},"routes":[],"forwarded_headers":["x-forwarded-user"]}"#.to_owned(),
            r#"{"scopes":["a:b"],"roles":{},"routes":[],"forwarded_headers":["authorization"]}"#.to_owned(),
            r#"{"scopes":["a:b"],"roles":{},"routes":[],"forwarded_headers":["a b"]}"#.to_owned(),
            base(r#"{"method":"GET","path":"/x","scope":"a:b","content_types":["application/JSON"]}"#),
            base(r#"{"method":"GET","path":"/x","scope":"a:b","content_types":["json"]}"#),
            base(r#"{"method":"GET","path":"/x","scope":"a:b","content_types":["*/*"]}"#),
            base(r#"{"method":"GET","path":"/x","scope":"a:b","content_types":["a/b; charset=x"]}"#),
            r#"{"scopes":["a:*"],"roles":{},"routes":[]}"#.to_owned(),
            r#"{"scopes":["a:b"],"roles":{"r":["c:d"]},"routes":[]}"#.to_owned(),
        ] {
            assert!(Policy::from_json(&bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn body_types() {
        let pol = Policy::from_json(
            r#"{"scopes":["a:b"],"roles":{},"routes":[
                {"method":"POST","path":"/json","scope":"a:b","content_types":["application/json","text/*"]},
                {"method":"POST","path":"/any","scope":"a:b"},
                {"method":"POST","path":"/form","scope":"a:b","content_types":["multipart/form-data"]}]}"#,
        )
        .unwrap();
        let r = |path: &str| pol.route("POST", &p(path)).unwrap();
        let code = |path: &str, body: bool, ct: Option<&str>| r(path).accepts_body(body, ct).map_err(|e| e.code);
        let no = Err(ErrorCode::UnsupportedMediaType);
        // No body: nothing to check, whatever the header says.
        assert_eq!(code("/json", false, None), Ok(()));
        assert_eq!(code("/json", false, Some("application/x-www-form-urlencoded")), Ok(()));
        // Listed types, with parameters and any case.
        assert_eq!(code("/json", true, Some("application/json")), Ok(()));
        assert_eq!(code("/json", true, Some(" Application/JSON ; charset=utf-8")), Ok(()));
        assert_eq!(code("/json", true, Some("text/markdown")), Ok(()));
        // A body with no type (Rack reads an untyped POST body as a form),
        // an empty type, a form, a look-alike.
        for ct in [
            None,
            Some(""),
            Some(" ;x=1"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/jsonx"),
            Some("application/json-seq"),
            Some("text"),
        ] {
            assert_eq!(code("/json", true, ct), no, "{ct:?}");
        }
        // A route that lists nothing takes any typed body but a form.
        assert_eq!(code("/any", true, Some("application/pdf")), Ok(()));
        for ct in [None, Some("application/x-www-form-urlencoded"), Some("Multipart/Form-Data; boundary=b")] {
            assert_eq!(code("/any", true, ct), no, "{ct:?}");
        }
        // A form only where a route lists it.
        assert_eq!(code("/form", true, Some("multipart/form-data; boundary=b")), Ok(()));
        let msg = r("/json").accepts_body(true, None).unwrap_err().to_string();
        assert!(msg.contains("application/json, text/*"), "{msg}");
        // The shipped policy: the AI routes take JSON only.
        let pol = Policy::default_policy().unwrap();
        for path in ["/v1/ai/chat", "/v1/messages", "/v1/embeddings", "/v1/summarize"] {
            let route = pol.route("POST", &p(path)).unwrap();
            assert_eq!(route.accepts_body(true, Some("application/json")), Ok(()), "{path}");
            for ct in ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain"] {
                assert!(route.accepts_body(true, Some(ct)).is_err(), "{path} {ct}");
            }
        }
        let docs = pol.route("POST", &p("/v1/documents")).unwrap();
        assert_eq!(docs.accepts_body(true, Some("application/pdf")), Ok(()));
        assert!(docs.accepts_body(true, Some("multipart/form-data; boundary=x")).is_err());
    }

    #[test]
    fn keyward_serves_exactly_the_control_routes() {
        // src/edge/control.rs::route handles exactly these; a route marked
        // `served_by: keyward` without a handler would answer 404 there.
        let pol = Policy::default_policy().unwrap();
        let mut local: Vec<(String, String)> = pol
            .routes
            .iter()
            .filter(|r| r.is_local())
            .flat_map(|r| r.methods.iter().map(|m| (m.clone(), r.pattern().to_owned())))
            .collect();
        local.sort();
        let want = [
            ("DELETE", "/v1/api_keys/{key_id}"),
            ("DELETE", "/v1/users/{user_id}/sessions"),
            ("GET", "/v1/api_keys"),
            ("GET", "/v1/audit"),
            ("GET", "/v1/me"),
            ("GET", "/v1/usage"),
            ("PATCH", "/v1/api_keys/{key_id}"),
            ("POST", "/v1/api_keys"),
            ("POST", "/v1/api_keys/{key_id}/roll"),
        ];
        assert_eq!(local, want.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect::<Vec<_>>());
    }

    #[test]
    fn widget_routes() {
        let pol = Policy::default_policy().unwrap();
        assert_eq!(pol.widget_methods(&p("/v1/ai/chat")), vec!["POST"]);
        assert_eq!(pol.widget_methods(&p("/v1/messages")), vec!["POST"]);
        assert!(pol.widget_methods(&p("/v1/api_keys")).is_empty());
        assert!(pol.widget_methods(&p("/v1/nope")).is_empty());
        assert_eq!(pol.widget_scopes().iter().map(Scope::as_str).collect::<Vec<_>>(), ["ai:chat"]);
    }

    #[test]
    fn grantable() {
        let pol = Policy::default_policy().unwrap();
        for ok in ["*", "ai:*", "ai:chat", "control:*", "control:read"] {
            assert!(pol.is_grantable(&Scope::parse(ok).unwrap()), "{ok}");
        }
        for bad in ["ai:chatter", "billing:*", "billing:read", "a:*"] {
            assert!(!pol.is_grantable(&Scope::parse(bad).unwrap()), "{bad}");
        }
    }
}
