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

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::{ApiError, ErrorCode};
use crate::path::CanonicalPath;
use crate::ratelimit::{RateLimit, MAX_LIMITS};
use crate::scope::Scope;

/// Methods a route may list.
pub const PROXIED_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

/// The policy shipped with keyward.
pub const DEFAULT_POLICY_JSON: &str = include_str!("../policy/policy.json");

/// A validated policy.
#[derive(Clone, Debug)]
pub struct Policy {
    scopes: Vec<String>,
    roles: BTreeMap<String, Vec<Scope>>,
    routes: Vec<Route>,
    default_rate_limits: Vec<RateLimit>,
    widget_scopes: Vec<Scope>,
    widget_ip_rate_limits: Vec<RateLimit>,
    key_creating_roles: Vec<String>,
}

/// One route of the table.
#[derive(Clone, Debug)]
pub struct Route {
    methods: Vec<String>,
    pattern: Vec<Segment>,
    path: String,
    scope: String,
    local: bool,
}

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
    roles: BTreeMap<String, Vec<String>>,
    routes: Vec<RawRoute>,
    #[serde(default)]
    default_rate_limits: Vec<RateLimit>,
    #[serde(default)]
    widget_scopes: Vec<String>,
    #[serde(default)]
    widget_ip_rate_limits: Vec<RateLimit>,
    #[serde(default)]
    key_creating_roles: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    method: OneOrMany,
    path: String,
    scope: String,
    /// `"keyward"` for the control API that keyward serves itself; absent
    /// for routes proxied to the origin.
    #[serde(default)]
    served_by: Option<String>,
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
    /// The scope this route requires (always concrete).
    pub fn scope(&self) -> &str {
        &self.scope
    }
    /// The pattern as written in the policy.
    pub fn pattern(&self) -> &str {
        &self.path
    }
    /// Whether keyward serves this route itself (never proxied).
    pub fn is_local(&self) -> bool {
        self.local
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
        let raw: RawPolicy = serde_json::from_str(json).map_err(|e| format!("policy: {e}"))?;
        let mut scopes = Vec::new();
        for s in raw.scopes {
            match Scope::parse(&s) {
                Some(sc) if !sc.is_wildcard() => scopes.push(s),
                _ => return Err(format!("policy: catalogue scope {s:?} must be a concrete scope")),
            }
        }
        let mut roles = BTreeMap::new();
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
            if !scopes.contains(&r.scope) {
                return Err(format!("policy: route {}: scope {:?} is not in the catalogue", r.path, r.scope));
            }
            let pattern = parse_pattern(&r.path)?;
            let local = match r.served_by.as_deref() {
                None => false,
                Some("keyward") => true,
                Some(other) => {
                    return Err(format!("policy: route {}: served_by must be \"keyward\", not {other:?}", r.path))
                }
            };
            let route = Route { methods, pattern, path: r.path, scope: r.scope, local };
            if routes.iter().any(|o| o.pattern == route.pattern && o.methods.iter().any(|m| route.methods.contains(m)))
            {
                return Err(format!("policy: route {} is declared twice for one method", route.path));
            }
            routes.push(route);
        }
        check_limits("default_rate_limits", &raw.default_rate_limits)?;
        check_limits("widget_ip_rate_limits", &raw.widget_ip_rate_limits)?;
        if raw.default_rate_limits.iter().any(|d| raw.widget_ip_rate_limits.iter().any(|w| w.name == d.name)) {
            return Err("policy: widget_ip_rate_limits names must differ from default_rate_limits names".into());
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
        Ok(Self {
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
            allowed.sort_unstable();
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
        out.sort_unstable();
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
            r#"{"scopes":["a:*"],"roles":{},"routes":[]}"#.to_owned(),
            r#"{"scopes":["a:b"],"roles":{"r":["c:d"]},"routes":[]}"#.to_owned(),
        ] {
            assert!(Policy::from_json(&bad).is_err(), "accepted {bad}");
        }
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
            ("GET", "/v1/api_keys"),
            ("GET", "/v1/audit"),
            ("GET", "/v1/usage"),
            ("POST", "/v1/api_keys"),
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
