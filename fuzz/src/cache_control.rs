//! Target `cache_control`: `reply::cache_control` and
//! `reply::dropped_response_header` (src/reply.rs), the origin response
//! headers that reach the client.
//!
//! Properties of `out = cache_control(v)` for any origin value `v` (or none):
//! - read as a cache reads it (directives split on commas outside quoted
//!   strings, the name before `=`, trimmed, without case), `out` has no
//!   `public`, `s-maxage` or `proxy-revalidate` directive, and has a
//!   `private` or `no-store` directive;
//! - `out` keeps every other directive of `v`, in order, unchanged;
//! - applied again it changes nothing (`cache_control(out) == out`).
//!
//! `dropped_response_header` drops every `Access-Control-*`,
//! `X-Keyward-*` and CDN cache header, in any case, and nothing else of a
//! set of ordinary names.

use arbitrary::Unstructured;
use keyward::reply::{cache_control, dropped_response_header};

use crate::ensure;

/// Directives only a shared cache obeys: never reach the client.
const SHARED: &[&str] = &["public", "s-maxage", "proxy-revalidate"];

/// The check run by the fuzz target and the smoke test.
pub fn check(data: &[u8]) {
    let text = crate::text(data);
    check_value(Some(&text));
    for line in text.split('\n').take(crate::MAX_LINES) {
        check_header_name(line);
    }
    check_value(None);
    let mut u = Unstructured::new(data);
    let v = build_value(&mut u);
    check_value(Some(&v));
}

/// Directives split on commas outside quoted strings (a backslash escapes
/// the next character inside one), trimmed, empty ones dropped: RFC 9110's
/// list and quoted-string rules, written independently.
pub fn directives(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = v.chars();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                continue;
            }
            ',' if !quoted => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.into_iter().map(|d| d.trim().to_owned()).filter(|d| !d.is_empty()).collect()
}

fn name(d: &str) -> String {
    d.split('=').next().unwrap_or("").trim().to_ascii_lowercase()
}

fn check_value(v: Option<&str>) {
    let out = cache_control(v);
    let got = directives(&out);
    ensure!(
        !got.iter().any(|d| SHARED.contains(&name(d).as_str())),
        None,
        "cache_control({v:?}) = {out:?}: a shared-cache directive"
    );
    ensure!(
        got.iter().any(|d| d.eq_ignore_ascii_case("private") || d.eq_ignore_ascii_case("no-store")),
        None,
        "cache_control({v:?}) = {out:?}: neither private nor no-store"
    );
    let kept: Vec<String> =
        directives(v.unwrap_or("")).into_iter().filter(|d| !SHARED.contains(&name(d).as_str())).collect();
    let tail = if got.len() == kept.len() + 1 && got[0] == "private" { &got[1..] } else { &got[..] };
    ensure!(tail == kept, None, "cache_control({v:?}) = {out:?}: the origin's other directives were {kept:?}");
    let again = cache_control(Some(&out));
    ensure!(again == out, None, "cache_control({v:?}) = {out:?}, then {again:?}");
}

#[rustfmt::skip]
const DROPPED: &[&str] = &[
    "access-control-allow-origin", "access-control-allow-credentials", "access-control-expose-headers",
    "access-control-", "x-keyward-org", "x-keyward-", "cdn-cache-control", "cloudflare-cdn-cache-control",
    "surrogate-control", "surrogate-key", "cache-tag",
];
const KEPT: &[&str] =
    &["cache-control", "vary", "content-type", "etag", "set-cookie", "x-request-id", "access-control"];

fn check_header_name(line: &str) {
    let lower = line.to_ascii_lowercase();
    let want =
        if DROPPED.contains(&lower.as_str()) || lower.starts_with("access-control-") || lower.starts_with("x-keyward-")
        {
            Some(true)
        } else if KEPT.contains(&lower.as_str()) {
            Some(false)
        } else {
            None
        };
    if let Some(w) = want {
        let got = dropped_response_header(line);
        ensure!(got == w, None, "dropped_response_header({line:?}) = {got}");
    }
}

#[rustfmt::skip]
const PIECES: &[&str] = &[
    "public", "PUBLIC", "Public", "s-maxage=600", "S-MaxAge=1", "s-maxage", "proxy-revalidate", "private", "Private",
    "PRIVATE", "private=\"set-cookie\"", "no-store", "NO-STORE", "no-store=1", "no-cache", "no-cache=\"a, public\"",
    "max-age=60", "must-revalidate", "immutable", "stale-while-revalidate=30", "x=\"a\\\"b, public\"", ",", ", ",
    " ,", ",,", " ", "\t", "=", "\"", "\\", "\\\"", "public;x", "public=", " public ", "public ,", "s-maxage =5",
    "publicx", "xpublic", "p\u{fc}blic", "\u{0}", "\r\n",
];

fn build_value(u: &mut Unstructured<'_>) -> String {
    let mut v = String::new();
    for _ in 0..u.int_in_range(0..=8u8).unwrap_or(0) {
        v.push_str(u.choose(PIECES).copied().unwrap_or(","));
        if u.ratio(2, 3).unwrap_or(true) {
            v.push_str(", ");
        }
    }
    v
}
