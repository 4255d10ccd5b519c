//! Target `policy`: `Policy::from_json` (src/policy.rs), the route policy
//! file, and the matching it configures.
//!
//! Properties, for any text: parsing never panics. For a policy it
//! accepts:
//! - every catalogue scope is a concrete scope; every role's scope and
//!   every widget scope parses, is concrete or a wildcard, and names only
//!   catalogue scopes; limits are valid, at most 4 per list, named apart;
//!   `forwarded_headers` holds only lowercase names that are never among
//!   those always dropped;
//! - every route is reachable: its pattern, with `{param}` and `**` filled
//!   in, is a canonical path (it re-parses to itself);
//! - `match_route` agrees with a reference matcher written from the
//!   module's documentation (segment by segment, case-sensitive, `{x}` one
//!   non-empty segment, `**` one or more; the first route whose pattern and
//!   method match wins; else 405 with the sorted methods of the routes the
//!   path matches; else 404), and `route` agrees with `match_route`.
//!
//! Inputs are the raw text, and a policy document built from pieces of
//! valid and hostile catalogue scopes, roles, patterns, methods, media
//! types, limits and header names.

use arbitrary::Unstructured;
use keyward::path::CanonicalPath;
use keyward::policy::{Policy, RouteMatch, PROXIED_METHODS};
use keyward::scope::Scope;
use keyward::signing::never_forwarded;
use serde_json::{json, Map, Value};

use crate::ensure;

/// The check run by the fuzz target and the smoke test.
pub fn check(data: &[u8]) {
    let text = crate::text(data);
    check_doc(&text);
    let mut u = Unstructured::new(data);
    let doc = build_doc(&mut u);
    check_doc(&doc.to_string());
}

fn check_doc(text: &str) {
    let Ok(policy) = Policy::from_json(text) else { return };
    // The document parsed, so it is JSON: the reference reads it too.
    let Ok(doc) = serde_json::from_str::<Value>(text) else {
        crate::violation(None, format_args!("accepted policy {text:?} is not JSON"));
        return;
    };
    check_catalogue(text, &policy);
    let routes = model_routes(&doc);
    let mut probes = vec!["/".to_owned(), "/v1".to_owned(), "/v1/ai/chat".to_owned()];
    for r in &routes {
        let filled = fill(&r.path, "p1", "a/b");
        let c = CanonicalPath::parse(&filled);
        ensure!(
            c.as_ref().is_ok_and(|c| c.as_str() == filled),
            None,
            "route {:?} of an accepted policy: {filled:?} is {c:?}",
            r.path
        );
        probes.push(filled.clone());
        probes.push(fill(&r.path, "P1", "a"));
        probes.push(format!("{filled}/"));
        probes.push(format!("{filled}/x"));
        probes.push(filled.rsplit_once('/').map_or("/", |(h, _)| h).to_owned());
    }
    for p in &probes {
        let Ok(path) = CanonicalPath::parse(p) else { continue };
        for m in PROXIED_METHODS.iter().copied().chain(["OPTIONS"]) {
            check_match(text, &policy, &routes, m, &path);
        }
    }
}

fn check_catalogue(text: &str, policy: &Policy) {
    for s in policy.scopes() {
        ensure!(Scope::parse(s).is_some_and(|s| !s.is_wildcard()), None, "{text:?}: catalogue scope {s:?}");
    }
    let known = |s: &Scope| {
        s.as_str() == "*" || policy.scopes().iter().any(|c| c == s.as_str() || s.is_wildcard() && s.covers(c))
    };
    for name in policy.role_names() {
        for s in policy.role(name).unwrap_or_default() {
            // A role may grant a wildcard the catalogue does not use yet.
            ensure!(s.is_wildcard() || known(s), None, "{text:?}: role {name} grants {s}");
        }
    }
    for s in policy.widget_scopes() {
        ensure!(!s.is_wildcard() && known(s), None, "{text:?}: widget scope {s}");
    }
    for limits in [policy.default_rate_limits(), policy.widget_ip_rate_limits()] {
        ensure!(limits.len() <= 4, None, "{text:?}: {} limits", limits.len());
        for (i, l) in limits.iter().enumerate() {
            ensure!(l.validate().is_ok(), None, "{text:?}: limit {l:?}");
            ensure!(limits[..i].iter().all(|o| o.name != l.name), None, "{text:?}: limit {} twice", l.name);
        }
    }
    for h in policy.forwarded_headers().unwrap_or_default() {
        ensure!(
            !h.is_empty() && *h == h.to_ascii_lowercase() && !never_forwarded(h),
            None,
            "{text:?}: forwarded header {h:?}"
        );
    }
}

/// A route as the reference matcher reads it from the document.
struct ModelRoute {
    methods: Vec<String>,
    path: String,
    scope: String,
}

fn model_routes(doc: &Value) -> Vec<ModelRoute> {
    let routes = doc.get("routes").and_then(Value::as_array).cloned().unwrap_or_default();
    routes
        .iter()
        .map(|r| {
            let methods = match r.get("method") {
                Some(Value::String(m)) => vec![m.clone()],
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
                _ => Vec::new(),
            };
            let text = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            ModelRoute { methods, path: text("path"), scope: text("scope") }
        })
        .collect()
}

/// A route pattern with `{param}` segments and `**` filled in.
fn fill(pattern: &str, param: &str, rest: &str) -> String {
    pattern
        .split('/')
        .map(|s| match s {
            "**" => rest,
            _ if s.len() > 2 && s.starts_with('{') && s.ends_with('}') => param,
            _ => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn pattern_matches(pattern: &str, path: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').skip(1).collect();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    for (i, p) in pat.iter().enumerate() {
        if *p == "**" {
            return segs.len() > i && segs[i..].iter().all(|s| !s.is_empty());
        }
        let ok = match segs.get(i) {
            None => false,
            Some(s) if p.len() > 2 && p.starts_with('{') && p.ends_with('}') => !s.is_empty(),
            Some(s) => s == p,
        };
        if !ok {
            return false;
        }
    }
    segs.len() == pat.len()
}

fn check_match(text: &str, policy: &Policy, routes: &[ModelRoute], method: &str, path: &CanonicalPath) {
    let p = path.as_str();
    let matching: Vec<&ModelRoute> = routes.iter().filter(|r| pattern_matches(&r.path, p)).collect();
    let found = matching.iter().find(|r| r.methods.iter().any(|m| m == method));
    let mut allowed: Vec<&str> = matching.iter().flat_map(|r| r.methods.iter().map(String::as_str)).collect();
    allowed.sort_unstable();
    allowed.dedup();
    let got = policy.match_route(method, path);
    let agrees = match (&got, found) {
        (RouteMatch::Found(r), Some(want)) => r.pattern() == want.path && r.scope() == want.scope,
        (RouteMatch::MethodNotAllowed(m), None) => !allowed.is_empty() && *m == allowed,
        (RouteMatch::NotFound, None) => allowed.is_empty(),
        _ => false,
    };
    ensure!(
        agrees,
        None,
        "{method} {p:?}: match_route = {got:?}, reference: {:?} (allowed {allowed:?}) in {text:?}",
        found.map(|r| &r.path)
    );
    let routed = policy.route(method, path);
    let consistent = match (&got, &routed) {
        (RouteMatch::Found(a), Ok(b)) => a == b,
        (RouteMatch::MethodNotAllowed(m), Err(e)) => e.error.status() == 405 && e.allow == Some(m.join(", ")),
        (RouteMatch::NotFound, Err(e)) => e.error.status() == 404 && e.allow.is_none(),
        _ => false,
    };
    ensure!(consistent, None, "{method} {p:?}: route = {routed:?}, match_route = {got:?}");
}

#[rustfmt::skip]
const SCOPES: &[&str] = &[
    "ai:chat", "ai:documents", "control:read", "billing:read", "ai:*", "*", "a:b", "A:b", "ai:", ":x", "ai chat",
    "ai:chat:x", "x-y:z_1",
];
#[rustfmt::skip]
const SEGMENTS: &[&str] = &[
    "v1", "ai", "chat", "documents", "{id}", "{key_id}", "**", "{}", "{", "*", "", "x.", "...", "..", "%41", "%2F",
    "%2f", "%25", "%2541", "%C3%A9", "%c3%a9", "a;b", "a b", "A", "~", "x%20", "\u{e9}", "-", "_",
];
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "get", "CONNECT", ""];
#[rustfmt::skip]
const MEDIA: &[&str] = &[
    "application/json", "text/*", "application/x-www-form-urlencoded", "multipart/form-data", "*/*", "Text/Plain",
    "text", "a/b;c", "",
];
#[rustfmt::skip]
const HEADERS: &[&str] = &[
    "content-type", "accept", "x-trace", "authorization", "x-keyward-org", "x_y", "Accept", "cookie", "host",
    "x-forwarded-for", "x-api-key", "",
];

fn pick<'a>(u: &mut Unstructured<'_>, from: &[&'a str]) -> &'a str {
    u.choose(from).copied().unwrap_or("")
}

fn limits(u: &mut Unstructured<'_>, names: &[&str]) -> Value {
    let n = u.int_in_range(0..=5u8).unwrap_or(0);
    Value::Array(
        (0..n)
            .map(|_| {
                let limit = *u.choose(&[1u64, 2, 10, 60, 1000, 1_000_000, 1_000_001, 0]).unwrap_or(&60);
                let window = *u.choose(&[1u64, 60, 3600, 86_400, 2_678_400, 2_678_401, 0]).unwrap_or(&60);
                json!({"name": pick(u, names), "limit": limit, "window_seconds": window})
            })
            .collect(),
    )
}

/// A policy document: mostly valid, with hostile pieces.
fn build_doc(u: &mut Unstructured<'_>) -> Value {
    let n = u.int_in_range(1..=5u8).unwrap_or(1);
    let scopes: Vec<&str> = (0..n).map(|_| pick(u, SCOPES)).collect();
    let mut roles = Map::new();
    for name in ["viewer", "admin", "operator"].iter().take(u.int_in_range(0..=3usize).unwrap_or(1)) {
        let granted: Vec<&str> = (0..u.int_in_range(0..=3u8).unwrap_or(1)).map(|_| pick(u, SCOPES)).collect();
        roles.insert((*name).to_owned(), json!(granted));
    }
    let mut routes = Vec::new();
    for _ in 0..u.int_in_range(0..=6u8).unwrap_or(1) {
        let segs: Vec<&str> = (0..u.int_in_range(1..=4u8).unwrap_or(1)).map(|_| pick(u, SEGMENTS)).collect();
        let path = format!("/{}", segs.join("/"));
        let method = if u.arbitrary().unwrap_or(false) {
            json!(pick(u, METHODS))
        } else {
            let ms: Vec<&str> = (0..u.int_in_range(0..=3u8).unwrap_or(1)).map(|_| pick(u, METHODS)).collect();
            json!(ms)
        };
        let scope = if scopes.is_empty() { pick(u, SCOPES) } else { u.choose(&scopes).copied().unwrap_or("") };
        let mut r = json!({"method": method, "path": path, "scope": scope});
        match u.int_in_range(0..=5u8).unwrap_or(0) {
            0 => r["served_by"] = json!(pick(u, &["keyward", "origin", ""])),
            1 => {
                let media: Vec<&str> = (0..u.int_in_range(0..=2u8).unwrap_or(1)).map(|_| pick(u, MEDIA)).collect();
                r["content_types"] = json!(media);
            }
            2 => r["extra"] = json!(1),
            _ => {}
        }
        routes.push(r);
    }
    let mut doc = json!({"scopes": scopes, "roles": roles, "routes": routes});
    if u.arbitrary().unwrap_or(false) {
        doc["default_rate_limits"] = limits(u, &["minute", "hour", "ip_minute", "", "Bad"]);
    }
    if u.arbitrary().unwrap_or(false) {
        doc["widget_ip_rate_limits"] = limits(u, &["ip_minute", "minute", "ip_hour"]);
    }
    if u.arbitrary().unwrap_or(false) {
        let w: Vec<&str> = (0..u.int_in_range(0..=2u8).unwrap_or(1)).map(|_| pick(u, SCOPES)).collect();
        doc["widget_scopes"] = json!(w);
    }
    if u.arbitrary().unwrap_or(false) {
        let r: Vec<&str> =
            (0..u.int_in_range(0..=2u8).unwrap_or(1)).map(|_| pick(u, &["viewer", "admin", "x"])).collect();
        doc["key_creating_roles"] = json!(r);
    }
    if u.arbitrary().unwrap_or(false) {
        let h: Vec<&str> = (0..u.int_in_range(0..=3u8).unwrap_or(1)).map(|_| pick(u, HEADERS)).collect();
        doc["forwarded_headers"] = json!(h);
    }
    if u.ratio(1, 8).unwrap_or(false) {
        doc["unknown"] = json!(true);
    }
    doc
}
