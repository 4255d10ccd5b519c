//! Target `origins`: `cors::BrowserOrigin::parse`, `from_referer`,
//! `request_origin`, `OriginPattern::parse` and `matches`, `client_ip`,
//! `visitor` (src/cors.rs).
//!
//! Properties:
//! - a parsed origin serializes to lowercase `scheme://host[:port]` (no
//!   path, userinfo, query, fragment, trailing dot or empty label; labels
//!   of `[a-z0-9-]`, not starting or ending with `-`), which re-parses to
//!   the same origin and is what the input said up to a default or
//!   zero-padded port; `from_referer(o + "/…")` is `o`;
//! - a parsed pattern's `Display` re-parses to an equal pattern (and so
//!   does its serde form); a wildcard's domain has two labels or more; `matches` agrees with a reference model (same
//!   scheme and port; exact host, or for `*.d` a host ending in `.d` with
//!   at least one label in front) — so it never matches a host that does
//!   not end with the pattern's domain, and a wildcard never matches the
//!   bare domain;
//! - `client_ip` is the canonical text of `CF-Connecting-IP` when that is
//!   an IP address (of at most 45 bytes), else none; `CF-Connecting-IPv6`
//!   replaces it only behind a Pseudo IPv4 (240.0.0.0/4 but broadcast);
//! - `visitor(ip, prefix)` of an IPv4 address (or an IPv4-mapped IPv6
//!   one) is the IPv4 address; of another IPv6 address it is `net/bits`
//!   with `bits` the prefix clamped to 1–128 and `net` the address's first
//!   `bits` bits: the same for every spelling of the address (compressed,
//!   zero-padded, upper case, embedded IPv4), the same for any address of
//!   that network, different for an address outside it; anything else is
//!   its own visitor, as is.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::Unstructured;
use keyward::cors::{client_ip, request_origin, visitor, BrowserOrigin, OriginPattern, DEFAULT_VISITOR_IPV6_PREFIX};

use crate::ensure;

/// The check run by the fuzz target and the smoke test.
pub fn check(data: &[u8]) {
    let text = crate::text(data);
    let lines: Vec<&str> = text.split('\n').take(crate::MAX_LINES).collect();
    for l in &lines {
        check_origin(l);
        check_referer(l);
        check_pattern(l);
        check_ip(l);
    }
    // Every pattern against every origin among the first lines.
    for p in lines.iter().take(8).filter_map(|l| OriginPattern::parse(l).ok()) {
        for o in lines.iter().take(8).filter_map(|l| BrowserOrigin::parse(l)) {
            check_match(&p, &o);
        }
    }
    if let [o, r, ..] = lines[..] {
        let got = request_origin(Some(o), Some(r));
        ensure!(got == BrowserOrigin::parse(o), None, "request_origin({o:?}, {r:?}) = {got:?}: Origin must win");
        let got = request_origin(None, Some(r));
        ensure!(got == BrowserOrigin::from_referer(r), None, "request_origin(None, {r:?}) = {got:?}");
    }

    let mut u = Unstructured::new(data);
    let domain = labels(&mut u, 1, 3);
    let pattern = format!(
        "{}://{}{}{}{}",
        pick(&mut u, SCHEMES),
        if u.arbitrary().unwrap_or(false) { "*." } else { "" },
        domain,
        port(&mut u),
        pick(&mut u, &["", "", "", "/", "/x", ".", " ", "?"])
    );
    check_pattern(&pattern);
    for _ in 0..u.int_in_range(1..=4u8).unwrap_or(1) {
        let front = labels(&mut u, 0, 2);
        let host = match u.int_in_range(0..=5u8).unwrap_or(0) {
            0 => front,
            1 => format!("{front}{domain}"),
            2 => format!("{domain}{}", pick(&mut u, &[".evil.net", ".", "x", ".com"])),
            _ if front.is_empty() => domain.clone(),
            _ => format!("{front}.{domain}"),
        };
        let origin = format!("{}://{}{}{}", pick(&mut u, SCHEMES), host, port(&mut u), pick(&mut u, SUFFIXES));
        check_origin(&origin);
        check_referer(&origin);
        if let (Ok(p), Some(o)) = (OriginPattern::parse(&pattern), BrowserOrigin::parse(&origin)) {
            check_match(&p, &o);
        }
    }
    let ip = build_ip(&mut u);
    check_ip(&ip);
}

const SCHEMES: &[&str] = &["https", "https", "http", "HTTPS", "Http", "ws", "ftp", "", "https:", "null"];
const SUFFIXES: &[&str] = &["", "", "", "/", "/cart?x=1", "?q", "#f", ".", "/..", "@evil.com", ":", " ", "\t"];
#[rustfmt::skip]
const LABELS: &[&str] = &[
    "example", "com", "shop", "www", "evil", "net", "a", "b-c", "-a", "a-", "", "EXAMPLE", "ex\u{430}mple",
    "xn--80ak6aa92e", "127", "0", "1", "255", "localhost", "a_b", "*", "[::1]", "user@host", "%2e",
];

fn pick<'a>(u: &mut Unstructured<'_>, from: &[&'a str]) -> &'a str {
    u.choose(from).copied().unwrap_or("")
}

fn labels(u: &mut Unstructured<'_>, min: u8, max: u8) -> String {
    let n = u.int_in_range(min..=max).unwrap_or(min);
    let parts: Vec<&str> = (0..n).map(|_| pick(u, LABELS)).collect();
    parts.join(".")
}

fn port(u: &mut Unstructured<'_>) -> String {
    match u.int_in_range(0..=3u8).unwrap_or(0) {
        0 | 1 => String::new(),
        2 => format!(":{}", pick(u, &["443", "80", "8443", "0", "65535", "65536", "0443", "080", "", "1a", "+1"])),
        _ => format!(":{}", u.arbitrary::<u16>().unwrap_or(0)),
    }
}

/// `scheme://host[:port]` split, for the reference model.
fn split_origin(s: &str) -> Option<(&str, &str, Option<&str>)> {
    let (scheme, rest) = s.split_once("://")?;
    Some(match rest.rsplit_once(':') {
        Some((h, p)) => (scheme, h, Some(p)),
        None => (scheme, rest, None),
    })
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" {
        443
    } else {
        80
    }
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn check_origin(s: &str) {
    let Some(o) = BrowserOrigin::parse(s) else { return };
    let ser = o.serialize();
    ensure!(BrowserOrigin::parse(&ser).as_ref() == Some(&o), None, "{s:?} -> {ser:?}, which does not re-parse");
    let Some((scheme, host, port)) = split_origin(&ser) else {
        crate::violation(None, format_args!("{s:?} -> {ser:?}: not scheme://host[:port]"));
        return;
    };
    ensure!(scheme == "https" || scheme == "http", None, "{s:?} -> scheme {scheme:?}");
    ensure!(valid_host(host), None, "{s:?} -> host {host:?}");
    let port: u16 = match port.map(str::parse) {
        None => default_port(scheme),
        Some(Ok(p)) if p != default_port(scheme) && p > 0 => p,
        Some(p) => {
            crate::violation(None, format_args!("{s:?} -> {ser:?}: port {p:?}"));
            return;
        }
    };
    // What the input said, up to the spelling of the port.
    let (is, ih, ip) = split_origin(s).unwrap_or_default();
    let input_port = ip.map_or(Some(default_port(is)), |p| p.parse::<u16>().ok());
    ensure!(is == scheme && ih == host && input_port == Some(port), None, "{s:?} -> {ser:?}: another origin");
    for tail in ["/", "/a/b?c#d", "?x", "#y"] {
        let r = format!("{ser}{tail}");
        ensure!(BrowserOrigin::from_referer(&r).as_ref() == Some(&o), None, "from_referer({r:?}) is not {ser:?}");
    }
}

fn check_referer(r: &str) {
    let Some(o) = BrowserOrigin::from_referer(r) else { return };
    let Some((scheme, rest)) = r.split_once("://") else {
        crate::violation(None, format_args!("from_referer({r:?}) = {o:?} without a scheme"));
        return;
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let direct = BrowserOrigin::parse(&format!("{scheme}://{authority}"));
    ensure!(direct.as_ref() == Some(&o), None, "from_referer({r:?}) = {o:?}, its origin part parses as {direct:?}");
}

fn check_pattern(s: &str) {
    let Ok(p) = OriginPattern::parse(s) else { return };
    let shown = p.to_string();
    let again = OriginPattern::parse(&shown);
    ensure!(again.as_ref() == Ok(&p), None, "pattern {s:?} displays as {shown:?}, which parses as {again:?}");
    ensure!(
        shown.is_ascii() && shown == shown.to_ascii_lowercase() && !shown.ends_with('/'),
        None,
        "pattern {s:?} displays as {shown:?}"
    );
    let json = serde_json::to_string(&p).unwrap_or_default();
    let back: Result<OriginPattern, _> = serde_json::from_str(&json);
    ensure!(back.as_ref().ok() == Some(&p), None, "pattern {s:?}: serde {json} -> {back:?}");
    ensure!(s.trim() != "*", None, "pattern {s:?} accepted");
    if let Some(d) = p.wildcard_domain() {
        ensure!(d.contains('.'), None, "wildcard pattern {s:?} over {d:?}");
        ensure!(shown.contains(&format!("*.{d}")), None, "wildcard pattern {s:?} displays as {shown:?}");
    }
}

fn check_match(p: &OriginPattern, o: &BrowserOrigin) {
    let shown = p.to_string();
    let ser = o.serialize();
    let (Some((ps, pd, pp)), Some((os, oh, op))) = (split_origin(&shown), split_origin(&ser)) else {
        crate::violation(None, format_args!("cannot split {shown:?} / {ser:?}"));
        return;
    };
    let (wild, domain) = match pd.strip_prefix("*.") {
        Some(d) => (true, d),
        None => (false, pd),
    };
    let pport = pp.map_or(default_port(ps), |x| x.parse().unwrap_or(0));
    let oport = op.map_or(default_port(os), |x| x.parse().unwrap_or(0));
    let want = ps == os
        && pport == oport
        && if wild { oh.len() > domain.len() + 1 && oh.ends_with(&format!(".{domain}")) } else { oh == domain };
    let got = p.matches(o);
    ensure!(got == want, None, "{shown:?}.matches({ser:?}) = {got}, model {want}");
    ensure!(!got || oh.ends_with(domain), None, "{shown:?} matches {ser:?}, whose host does not end with {domain:?}");
    ensure!(!got || !wild || oh != domain, None, "wildcard {shown:?} matches the bare domain {ser:?}");
}

fn build_ip(u: &mut Unstructured<'_>) -> String {
    let mut seg = [0u16; 8];
    for s in seg.iter_mut() {
        *s = if u.ratio(1, 3).unwrap_or(false) { 0 } else { u.arbitrary().unwrap_or(0) };
    }
    let a = Ipv6Addr::from(seg);
    match u.int_in_range(0..=6u8).unwrap_or(0) {
        0 => Ipv4Addr::from(u.arbitrary::<u32>().unwrap_or(0)).to_string(),
        1 => a.to_string(),
        2 => seg.iter().map(|s| format!("{s:04x}")).collect::<Vec<_>>().join(":"),
        3 => a.to_string().to_ascii_uppercase(),
        4 => {
            let v4 = Ipv4Addr::from((u32::from(seg[6]) << 16) | u32::from(seg[7]));
            let head: Vec<String> = seg[..6].iter().map(|s| format!("{s:x}")).collect();
            format!("{}:{v4}", head.join(":"))
        }
        5 => {
            let cut = u.int_in_range(1..=7usize).unwrap_or(1);
            let head: Vec<String> = seg[..cut].iter().map(|s| format!("{s:x}")).collect();
            let tail: Vec<String> = seg[cut..].iter().skip_while(|s| **s == 0).map(|s| format!("{s:x}")).collect();
            format!("{}::{}", head.join(":"), tail.join(":"))
        }
        _ => {
            let n = u.int_in_range(0..=12u8).unwrap_or(0);
            (0..n).map(|_| pick(u, &["1", "::", ":", "0", "ffff", ".", "1.2.3.4", "g", "00000"])).collect()
        }
    }
}

/// Prefix lengths tried: the default, usual ones and out-of-range ones
/// (clamped by `visitor`).
const PREFIXES: &[u8] = &[DEFAULT_VISITOR_IPV6_PREFIX, 64, 127, 0, 255];

fn check_ip(h: &str) {
    let got = client_ip(Some(h), None);
    let want = h.parse::<IpAddr>().ok().filter(|_| h.len() <= 45).map(|a| a.to_string());
    ensure!(got == want, None, "client_ip({h:?}) = {got:?}, model {want:?}");
    // CF-Connecting-IPv6 is the client only behind a Pseudo IPv4 (Class E,
    // 240.0.0.0/4, not the broadcast address), and only if it is an address.
    let pseudo = matches!(h.parse::<IpAddr>(), Ok(IpAddr::V4(a)) if a.octets()[0] >= 240 && !a.is_broadcast());
    for v6 in ["2001:DB8:0:0:1::7", "::ffff:1.2.3.4", "1.2.3.4", "junk", ""] {
        let with = client_ip(Some(h), Some(v6));
        let real = v6.parse::<Ipv6Addr>().ok().filter(|_| pseudo && want.is_some()).map(|a| a.to_string());
        let expected = real.or_else(|| want.clone());
        ensure!(with == expected, None, "client_ip({h:?}, {v6:?}) = {with:?}, model {expected:?}");
    }
    ensure!(client_ip(None, Some("2001:db8::1")).is_none(), None, "client_ip(None, v6) is an address");
    for &prefix in PREFIXES {
        let v = visitor(h, prefix);
        let addr = h.parse::<IpAddr>().ok();
        match addr {
            None => ensure!(v == h, None, "visitor({h:?}, {prefix}) = {v:?}, not the text itself"),
            Some(a) => {
                ensure!(v == visitor(&a.to_string(), prefix), None, "visitor({h:?}, {prefix}) = {v:?}: spelling");
                check_visitor(a, prefix);
            }
        }
    }
}

/// `visitor` of an address, against `std::net`.
fn check_visitor(a: IpAddr, prefix: u8) {
    let v = visitor(&a.to_string(), prefix);
    let v6 = match a {
        IpAddr::V4(v4) => {
            ensure!(v == v4.to_string(), None, "visitor({a}, {prefix}) = {v:?}");
            return;
        }
        IpAddr::V6(v6) => v6,
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        ensure!(v == v4.to_string(), None, "visitor({a}, {prefix}) = {v:?}, mapped {v4}");
        return;
    }
    let bits = u32::from(prefix.clamp(1, 128));
    let Some((net, b)) = v.split_once('/') else {
        crate::violation(None, format_args!("visitor({a}, {prefix}) = {v:?}: no /bits"));
        return;
    };
    let net = net.parse::<Ipv6Addr>().map(u128::from);
    let mask = u128::MAX << (128 - bits);
    ensure!(b == bits.to_string(), None, "visitor({a}, {prefix}) = {v:?}: bits");
    ensure!(net == Ok(u128::from(v6) & mask), None, "visitor({a}, {prefix}) = {v:?}: not its network");
    // Another address of the same network, and one just outside it.
    let n = u128::from(v6);
    let inside = Ipv6Addr::from(n ^ (!mask & n.rotate_left(7)) ^ u128::from(bits < 128));
    let outside = Ipv6Addr::from(n ^ (1u128 << (128 - bits)));
    for (other, same) in [(inside, true), (outside, false)] {
        if other.to_ipv4_mapped().is_some() || (same && bits == 128) {
            continue;
        }
        let w = visitor(&other.to_string(), prefix);
        ensure!((w == v) == same, None, "visitor({a}, {prefix}) = {v:?}, visitor({other}) = {w:?}");
    }
}
