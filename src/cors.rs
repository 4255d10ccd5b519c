//! Browser origins: parsing the `Origin` (or `Referer`) a request carries,
//! the allowed-origin patterns of widget keys, and the CORS headers.
//!
//! An allowed origin is `scheme://host[:port]` with scheme `http` or `https`,
//! or a wildcard subdomain pattern `scheme://*.example.com[:port]`. Patterns
//! are normalized when a key is created (lowercase; a default port dropped)
//! and `*` alone is refused. A request origin matches a pattern only if the
//! scheme, the host and the effective port are equal; a wildcard matches one
//! or more labels in front of its domain, never the bare domain.
//!
//! Request origins are parsed strictly, so look-alikes fail: `null`,
//! userinfo (`https://a@b`), paths, a trailing dot (`example.com.`), upper
//! case (browsers send lowercase), non-ASCII, empty labels, and anything
//! that is not `scheme://host[:port]`. The `Referer` is used only where
//! `Origin` is absent, and only its origin part.

use serde::{Deserialize, Serialize};

/// A parsed browser origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrowserOrigin {
    scheme: String,
    host: String,
    port: u16,
}

impl BrowserOrigin {
    /// Parses an `Origin` header value strictly.
    pub fn parse(s: &str) -> Option<Self> {
        let (scheme, rest) = s.split_once("://")?;
        let default_port = match scheme {
            "https" => 443,
            "http" => 80,
            _ => return None,
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') && !h.contains(':') => (h, parse_port(p)?),
            Some(_) => return None,
            None => (rest, default_port),
        };
        if !valid_host(host) {
            return None;
        }
        Some(Self { scheme: scheme.to_owned(), host: host.to_owned(), port })
    }

    /// The origin part of a `Referer` URL (`scheme://host[:port]/…`).
    pub fn from_referer(referer: &str) -> Option<Self> {
        let (scheme, rest) = referer.split_once("://")?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        Self::parse(&format!("{scheme}://{}", &rest[..end]))
    }

    /// The host (lowercase DNS name or IPv4 address).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The serialized origin, as a browser sends it (default port omitted).
    pub fn serialize(&self) -> String {
        if Some(self.port) == default_port(&self.scheme) {
            format!("{}://{}", self.scheme, self.host)
        } else {
            format!("{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    }
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok().filter(|&n| n > 0)
}

/// A label the WHATWG URL parser reads as a number: decimal, or `0x` hex
/// (`0x` alone included).
fn is_numeric_label(l: &str) -> bool {
    let hex = l.strip_prefix("0x");
    match hex {
        Some(h) => h.bytes().all(|b| b.is_ascii_hexdigit()),
        None => !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// Lowercase DNS name (labels of `[a-z0-9-]`, no leading/trailing `-`, no
/// empty label, so no trailing dot), or an IPv4 address.
fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// An allowed origin of a widget key (normalized).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OriginPattern {
    scheme: String,
    /// For a wildcard, the domain after `*.`.
    host: String,
    wildcard: bool,
    port: u16,
}

impl OriginPattern {
    /// Parses and normalizes a pattern given at key creation.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.trim() == "*" {
            return Err("\"*\" is not allowed; list the exact origins");
        }
        let lower = s.to_ascii_lowercase();
        if !lower.is_ascii() {
            return Err("must be ASCII (use the punycode form of the host)");
        }
        let (wildcard, plain) = match lower.split_once("://") {
            Some((scheme, rest)) => match rest.strip_prefix("*.") {
                Some(domain) => (true, format!("{scheme}://{domain}")),
                None => (false, lower.clone()),
            },
            None => return Err("must be scheme://host[:port]"),
        };
        let o = BrowserOrigin::parse(plain.trim_end_matches('/'))
            .ok_or("must be http(s)://host[:port] with no path, userinfo or trailing dot")?;
        if wildcard && !o.host.contains('.') {
            return Err("a wildcard needs a domain with at least two labels (https://*.example.com)");
        }
        Ok(Self { scheme: o.scheme, host: o.host, wildcard, port: o.port })
    }

    /// The rules a pattern meets only when a key is created (stored keys
    /// from before a rule keep decoding, so they can still be listed and
    /// revoked): `*.0.0.1` is no domain — a host ending in a number is an
    /// IPv4 address to a browser (WHATWG URL), so the wildcard would stand
    /// for addresses, not subdomains.
    pub fn check_new(&self) -> Result<(), &'static str> {
        if self.wildcard && self.host.rsplit('.').next().is_some_and(is_numeric_label) {
            return Err("a wildcard's domain must be a name, not (part of) an IP address");
        }
        Ok(())
    }

    /// For a wildcard pattern, the domain after `*.` (checked against the
    /// public suffix list at key creation, [`crate::psl`]).
    pub fn wildcard_domain(&self) -> Option<&str> {
        self.wildcard.then_some(self.host.as_str())
    }

    /// Whether a request origin matches.
    pub fn matches(&self, o: &BrowserOrigin) -> bool {
        if self.scheme != o.scheme || self.port != o.port {
            return false;
        }
        if self.wildcard {
            o.host.len() > self.host.len() + 1
                && o.host.ends_with(&self.host)
                && o.host.as_bytes()[o.host.len() - self.host.len() - 1] == b'.'
        } else {
            o.host == self.host
        }
    }
}

impl std::fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let star = if self.wildcard { "*." } else { "" };
        if Some(self.port) == default_port(&self.scheme) {
            write!(f, "{}://{star}{}", self.scheme, self.host)
        } else {
            write!(f, "{}://{star}{}:{}", self.scheme, self.host, self.port)
        }
    }
}

impl TryFrom<String> for OriginPattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        OriginPattern::parse(&s).map_err(|e| format!("{s:?}: {e}"))
    }
}

impl From<OriginPattern> for String {
    fn from(p: OriginPattern) -> String {
        p.to_string()
    }
}

/// The request's browser origin: `Origin` if present (it must parse), else
/// the origin of `Referer`. `None` when there is none or it is malformed.
pub fn request_origin(origin: Option<&str>, referer: Option<&str>) -> Option<BrowserOrigin> {
    match origin {
        Some(o) => BrowserOrigin::parse(o),
        None => referer.and_then(BrowserOrigin::from_referer),
    }
}

/// The default IPv6 prefix length a visitor is grouped by
/// (`VISITOR_IPV6_PREFIX`): a /48 is what one site or subscriber is
/// usually delegated, so rotating addresses or /64s inside it (a free
/// tunnel hands out a /48) is not a way around a per-visitor limit.
pub const DEFAULT_VISITOR_IPV6_PREFIX: u8 = 48;

/// The visitor a per-visitor limit counts: the client IPv4 address, or the
/// first `v6_prefix` bits of an IPv6 address (`2001:db8:1::/48`; an
/// IPv4-mapped IPv6 address counts as its IPv4 address). Anything that does
/// not parse as an address is one visitor under its own text (the shell
/// passes `unknown` when Cloudflare sent no address).
pub fn visitor(ip: &str, v6_prefix: u8) -> String {
    use crate::cidr::{ip_text, parse_ip, push_decimal};
    use std::net::{IpAddr, Ipv6Addr};
    match parse_ip(ip) {
        Some(IpAddr::V4(v4)) => ip_text(IpAddr::V4(v4)),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => ip_text(IpAddr::V4(v4)),
            None => {
                let bits = u32::from(v6_prefix.clamp(1, 128));
                let mask = u128::MAX << (128 - bits);
                let mut out = ip_text(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)));
                out.push('/');
                push_decimal(&mut out, bits);
                out
            }
        },
        None => ip.to_owned(),
    }
}

/// Request headers a widget may send (answered in preflights).
pub const ALLOWED_HEADERS: &str = "authorization, x-api-key, content-type, cf-turnstile-response, x-keyward-visitor";
/// Response headers a widget page may read.
pub const EXPOSED_HEADERS: &str =
    "RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, Retry-After, X-Credits-Remaining, X-Request-Id, X-Keyward-Visitor-Token";
/// How long a browser may cache a preflight, in seconds.
pub const MAX_AGE_SECONDS: u32 = 600;

/// CORS headers of an actual response to an allowed widget request.
pub fn response_headers(origin: &BrowserOrigin) -> Vec<(&'static str, String)> {
    vec![
        ("Access-Control-Allow-Origin", origin.serialize()),
        ("Vary", "Origin".to_owned()),
        ("Access-Control-Expose-Headers", EXPOSED_HEADERS.to_owned()),
    ]
}

/// `Vary` with the tokens of `add` appended unless already listed (tokens
/// compare without case; `*` already varies on everything). A cache keyed
/// on what the origin said it varies on (say `Accept-Encoding`) must keep
/// that key: keyward appends, never replaces.
pub fn append_vary(current: Option<&str>, add: &str) -> String {
    let Some(current) = current.map(str::trim).filter(|c| !c.is_empty()) else { return add.to_owned() };
    let listed = |t: &str| current.split(',').any(|v| v.trim() == "*" || v.trim().eq_ignore_ascii_case(t));
    let missing: Vec<&str> = add.split(',').map(str::trim).filter(|t| !t.is_empty() && !listed(t)).collect();
    if missing.is_empty() {
        current.to_owned()
    } else {
        format!("{current}, {}", missing.join(", "))
    }
}

/// The decision on a CORS preflight (`OPTIONS` with
/// `Access-Control-Request-Method`), which keyward answers itself and never
/// proxies: the `204`'s headers, or the refusal.
///
/// A preflight carries no key, so it cannot say which keys or origins are
/// allowed without becoming an oracle. It is therefore answered the same for
/// every well-formed origin, from the policy alone: the widget-capable
/// methods of the path. The actual request is where the key's allowed
/// origins are enforced: a disallowed origin gets `403` with no CORS
/// headers, which the browser reports as a CORS failure.
///
/// An origin in `JWT_ALLOWED_ORIGINS` (`session_origins`: deployment
/// configuration, no secret) is answered with the methods of every route of
/// the path, for JWT sessions and public routes.
pub fn preflight(
    policy: &crate::policy::Policy,
    path: &crate::path::CanonicalPath,
    origin: Option<&str>,
    requested: &str,
    session_origins: &[OriginPattern],
) -> Result<Vec<(&'static str, String)>, crate::authorize::Refusal> {
    use crate::error::{ApiError, ErrorCode};
    let origin = origin.and_then(BrowserOrigin::parse).ok_or_else(|| {
        ApiError::with_message(ErrorCode::OriginNotAllowed, "A CORS preflight needs a valid Origin header.")
    })?;
    let methods = if session_origins.iter().any(|p| p.matches(&origin)) {
        policy.methods(path)
    } else {
        policy.widget_methods(path)
    };
    if methods.is_empty() {
        return Err(ApiError::new(ErrorCode::RouteNotFound).into());
    }
    if !methods.contains(&requested) {
        return Err(crate::authorize::Refusal {
            error: ApiError::new(ErrorCode::MethodNotAllowed),
            headers: vec![("Allow", methods.join(", "))],
        });
    }
    Ok(preflight_headers(&origin, &methods))
}

/// The client's address, for per-visitor limits and `X-Forwarded-For`:
/// `CF-Connecting-IP` (which Cloudflare sets; clients cannot), as the
/// canonical text of an IP address, or `None` when it is missing or not an
/// address (then the request is the one visitor `unknown` and no
/// `X-Forwarded-For` is sent): every spelling of an address is the same
/// visitor, and junk is not a new one.
/// With the zone's Pseudo IPv4 set to overwrite headers, Cloudflare puts a
/// Class E address (240.0.0.0/4) hashed from the client's IPv6 address in
/// `CF-Connecting-IP` and the real one in `CF-Connecting-IPv6`: then the
/// IPv6 address is the client (else every address of one /48 would be a
/// visitor of its own). `CF-Connecting-IPv6` is read only then, when
/// Cloudflare has set it.
pub fn client_ip(cf_connecting_ip: Option<&str>, cf_connecting_ipv6: Option<&str>) -> Option<String> {
    use crate::cidr::{ip_text, parse_ip, parse_ipv6};
    use std::net::IpAddr;
    let ip = parse_ip(cf_connecting_ip.filter(|v| v.len() <= 45)?)?;
    let pseudo = matches!(ip, IpAddr::V4(v4) if v4.octets()[0] >= 240 && !v4.is_broadcast());
    match cf_connecting_ipv6.filter(|_| pseudo).and_then(parse_ipv6) {
        Some(v6) => Some(ip_text(IpAddr::V6(v6))),
        None => Some(ip_text(ip)),
    }
}

/// CORS headers of a preflight answer.
pub fn preflight_headers(origin: &BrowserOrigin, methods: &[&str]) -> Vec<(&'static str, String)> {
    vec![
        ("Access-Control-Allow-Origin", origin.serialize()),
        ("Vary", "Origin".to_owned()),
        ("Access-Control-Allow-Methods", methods.join(", ")),
        ("Access-Control-Allow-Headers", ALLOWED_HEADERS.to_owned()),
        ("Access-Control-Max-Age", MAX_AGE_SECONDS.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(s: &str) -> BrowserOrigin {
        BrowserOrigin::parse(s).unwrap_or_else(|| panic!("{s} refused"))
    }

    fn p(s: &str) -> OriginPattern {
        OriginPattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn preflights_are_answered_from_the_policy_alone() {
        use crate::error::ErrorCode;
        let pol = crate::policy::Policy::default_policy().unwrap();
        let path = |p: &str| crate::path::CanonicalPath::parse(p).unwrap();
        let h = preflight(&pol, &path("/v1/ai/chat"), Some("https://shop.example.com"), "POST", &[]).unwrap();
        assert!(h.contains(&("Access-Control-Allow-Origin", "https://shop.example.com".into())));
        assert!(h.contains(&("Access-Control-Allow-Methods", "POST".into())));
        let code = |r: Result<Vec<(&'static str, String)>, crate::authorize::Refusal>| r.unwrap_err().error.code;
        assert_eq!(code(preflight(&pol, &path("/v1/ai/chat"), None, "POST", &[])), ErrorCode::OriginNotAllowed);
        assert_eq!(code(preflight(&pol, &path("/v1/ai/chat"), Some("null"), "POST", &[])), ErrorCode::OriginNotAllowed);
        assert_eq!(
            code(preflight(&pol, &path("/v1/api_keys"), Some("https://a.com"), "GET", &[])),
            ErrorCode::RouteNotFound
        );
        let r = preflight(&pol, &path("/v1/ai/chat"), Some("https://a.com"), "DELETE", &[]).unwrap_err();
        assert_eq!((r.error.code, r.header("allow")), (ErrorCode::MethodNotAllowed, Some("POST")));
    }

    #[test]
    fn wildcards_over_addresses_are_refused() {
        for bad in ["http://*.0.0.1", "https://*.1.2.3", "https://*.example.0x7f", "https://*.a.0x", "https://*.1.2"] {
            assert!(p(bad).check_new().is_err(), "{bad}");
            // A key stored before the rule still decodes (to be listed, revoked).
            assert_eq!(OriginPattern::try_from(bad.to_owned()).unwrap().to_string(), bad);
        }
        assert!(OriginPattern::parse("https://*.com").is_err(), "one label");
        assert_eq!(p("https://*.example.com").wildcard_domain(), Some("example.com"));
        assert_eq!(p("https://*.0x7g.example").wildcard_domain(), Some("0x7g.example"), "not a number");
        assert_eq!(p("https://*.example.c0m").wildcard_domain(), Some("example.c0m"));
        assert_eq!(p("http://127.0.0.1:8080").wildcard_domain(), None, "an exact address stays allowed");
    }

    #[test]
    fn client_ips_are_taken_only_when_they_look_like_one() {
        let ip = |v: &str| client_ip(Some(v), None);
        assert_eq!(ip("203.0.113.7").as_deref(), Some("203.0.113.7"));
        assert_eq!(ip("2001:DB8::1").as_deref(), Some("2001:db8::1"));
        assert_eq!(ip("2001:db8:0:0::1").as_deref(), Some("2001:db8::1"), "one spelling per address");
        for junk in ["01.2.3.4", "1.2.3.4.", "::ffff:1.2.3.4:80", "1.2.3", "fe80::1%eth0"] {
            assert_eq!(ip(junk), None, "{junk}");
        }
        // Pseudo IPv4: the Class E stand-in gives way to the real IPv6.
        let v6 = Some("2001:DB8:7::1");
        assert_eq!(client_ip(Some("240.16.0.1"), v6).as_deref(), Some("2001:db8:7::1"));
        assert_eq!(client_ip(Some("240.16.0.1"), None).as_deref(), Some("240.16.0.1"));
        assert_eq!(client_ip(Some("203.0.113.7"), v6).as_deref(), Some("203.0.113.7"), "read only for pseudo IPv4");
        assert_eq!(client_ip(Some("240.16.0.1"), Some("junk")).as_deref(), Some("240.16.0.1"));
        for bad in
            [None, Some(""), Some("1.2.3.4, 5.6.7.8"), Some("evil\r\nx: y"), Some(&"1".repeat(46)[..]), Some("g::1")]
        {
            assert_eq!(client_ip(bad, None), None, "{bad:?}");
        }
    }

    #[test]
    fn vary_is_appended_never_replaced() {
        assert_eq!(append_vary(None, "Origin"), "Origin");
        assert_eq!(append_vary(Some(""), "Origin"), "Origin");
        assert_eq!(append_vary(Some("Accept-Encoding"), "Origin"), "Accept-Encoding, Origin");
        assert_eq!(append_vary(Some("accept-encoding, origin"), "Origin"), "accept-encoding, origin");
        assert_eq!(append_vary(Some("*"), "Origin"), "*");
        assert_eq!(append_vary(Some("Accept"), "Origin, Accept"), "Accept, Origin");
    }

    #[test]
    fn request_origins_parse_strictly() {
        for ok in [
            "https://shop.example.com",
            "http://localhost:8789",
            "https://a-b.c1.example.com:8443",
            "http://127.0.0.1:3000",
        ] {
            assert_eq!(o(ok).serialize(), ok);
        }
        assert_eq!(o("https://x.com:443").serialize(), "https://x.com");
        for bad in [
            "",
            "null",
            "*",
            "https://",
            "https://Example.com",
            "HTTPS://example.com",
            "https://example.com.",
            "https://example.com/",
            "https://example.com/path",
            "https://user@example.com",
            "https://user:pw@example.com",
            "https://example..com",
            "https://-a.example.com",
            "https://exa mple.com",
            "https://ex\u{0430}mple.com",
            "ftp://example.com",
            "https://example.com:0",
            "https://example.com:99999",
            "https://example.com:",
            "https://example.com:80a",
            "https://[::1]:80",
            "https://example.com?x",
            "https://example.com#x",
            " https://example.com",
            "https://example.com\n",
        ] {
            assert!(BrowserOrigin::parse(bad).is_none(), "accepted {bad:?}");
        }
    }

    #[test]
    fn patterns_normalize_and_refuse() {
        assert_eq!(p("HTTPS://Shop.Example.com").to_string(), "https://shop.example.com");
        assert_eq!(p("https://shop.example.com/").to_string(), "https://shop.example.com");
        assert_eq!(p("https://shop.example.com:443").to_string(), "https://shop.example.com");
        assert_eq!(p("https://*.example.com").to_string(), "https://*.example.com");
        assert_eq!(p("http://localhost:8789").to_string(), "http://localhost:8789");
        for bad in [
            "*",
            " * ",
            "example.com",
            "https://*",
            "https://*.com",
            "https://*.*.example.com",
            "https://a.*.example.com",
            "https://example.com/path",
            "https://u@example.com",
            "https://example.com.",
            "https://exämple.com",
            "ws://example.com",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn matching_resists_look_alikes() {
        let exact = p("https://example.com");
        let wild = p("https://*.example.com");
        assert!(exact.matches(&o("https://example.com")));
        assert!(!exact.matches(&o("https://www.example.com")));
        assert!(wild.matches(&o("https://www.example.com")));
        assert!(wild.matches(&o("https://a.b.example.com")));
        assert!(!wild.matches(&o("https://example.com")));
        for evil in [
            "https://example.com.evil.net",
            "https://evilexample.com",
            "https://www.evilexample.com",
            "http://www.example.com",
            "https://www.example.com:8443",
            "https://example.co",
            "https://xexample.com",
        ] {
            assert!(!exact.matches(&o(evil)) && !wild.matches(&o(evil)), "{evil} matched");
        }
        let port = p("http://localhost:8789");
        assert!(port.matches(&o("http://localhost:8789")));
        assert!(!port.matches(&o("http://localhost:8790")));
        assert!(!port.matches(&o("http://localhost")));
        assert!(!port.matches(&o("https://localhost:8789")));
        assert!(p("https://example.com:443").matches(&o("https://example.com")));
    }

    #[test]
    fn referer_is_only_a_fallback() {
        assert_eq!(
            request_origin(None, Some("https://shop.example.com/cart?x=1")),
            Some(o("https://shop.example.com"))
        );
        assert_eq!(request_origin(Some("https://a.com"), Some("https://b.com/")), Some(o("https://a.com")));
        assert_eq!(request_origin(Some("null"), Some("https://b.com/")), None);
        assert_eq!(request_origin(None, Some("https://user@b.com/")), None);
        assert_eq!(request_origin(None, Some("https://b.com.")), None);
        assert_eq!(request_origin(None, None), None);
    }

    #[test]
    fn visitors() {
        assert_eq!(visitor("203.0.113.7", 48), "203.0.113.7");
        assert_eq!(visitor("2001:db8:1:2:3:4:5:6", 48), "2001:db8:1::/48");
        assert_eq!(visitor("2001:db8:1:ffff::9", 48), "2001:db8:1::/48", "another /64 of the same /48");
        assert_eq!(visitor("2001:0db8:0001:0002:ffff::1", 64), "2001:db8:1:2::/64");
        assert_eq!(visitor("2001:db8::1", 48), "2001:db8::/48");
        assert_eq!(visitor("2001:db8:abcd:12ff::1", 56), "2001:db8:abcd:1200::/56");
        assert_eq!(visitor("::1", 48), "::/48");
        assert_eq!(visitor("::ffff:203.0.113.7", 48), "203.0.113.7", "IPv4-mapped");
        assert_eq!(visitor("unknown", 48), "unknown");
    }

    #[test]
    fn serde_round_trip() {
        let v: Vec<OriginPattern> =
            serde_json::from_str(r#"["https://*.example.com","http://localhost:8789"]"#).unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"["https://*.example.com","http://localhost:8789"]"#);
        assert!(serde_json::from_str::<Vec<OriginPattern>>(r#"["*"]"#).is_err());
    }
}
