//! Target `path`: `CanonicalPath::parse`, `split_url`, `check_query` and
//! `query_names` (src/path.rs).
//!
//! Properties of a canonical path `c = parse(raw)`:
//! - it re-parses to itself, and its segments rebuild it;
//! - it starts with `/` and is no longer than `raw` or `MAX_PATH_LEN`;
//! - it has no `//`, no segment made only of dots, no segment ending in a
//!   dot or a space (`x.`, `x%20`, `x `);
//! - it has no `%2F`, `%5C`, `%2E`, `%00`–`%1F`, `%7F` (any case), no `%25`
//!   followed by two hex digits, no `;`, `\`, control byte or non-ASCII
//!   byte, and no byte the WHATWG URL parser percent-encodes in a path
//!   (space, `"`, `<`, `>`, `` ` ``, `{`, `}`): what keyward forwards is
//!   what the runtime's `fetch` sends;
//! - every `%` starts an upper-case escape of a reserved byte (unreserved
//!   escapes are decoded);
//! - it means what `raw` meant: both percent-decode to the same bytes.
//!
//! What is forwarded is `base + c` (the base path of `ORIGIN_URL`), which
//! must also be canonical: a path keyward would refuse is never forwarded.
//! A refusal is a `400 INVALID_REQUEST`.
//!
//! Queries: `split_url` returns a path starting with `/` and free of `?` and
//! `#`, and a query free of `#`; a query `check_query` accepts has no pair
//! (split on `&` and `;`) whose name, read as a framework reads it, is
//! `_method` or an override header name, case-insensitively — where the
//! reading is a reference model written here from the README's list
//! (percent-decoding, `+` as a space, NUL ends the name, PHP's leading
//! spaces dropped or kept, `name[…]` as `name`, ` `/`.`/`[`/`-` as `_`);
//! and, without any model, every generated spelling of an override
//! (`_method` and the header names, each byte literal, in any case or
//! percent-encoded in either hex case, `_` spelled as ` `, `+`, `.`, `[`,
//! `-`, leading spaces, an array suffix, a NUL and junk after the name) is
//! refused wherever it stands in the query.

use arbitrary::Unstructured;
use keyward::error::ErrorCode;
use keyward::path::{check_query, query_names, split_url, CanonicalPath, OriginUrl, MAX_PATH_LEN};

use crate::ensure;

/// Pieces that paths are built from (structured mode here, and the
/// differential test `tests/url_differential.rs`).
#[rustfmt::skip]
pub const PIECES: &[&str] = &[
    "/", "/", "/", ".", "..", "...", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "\\", "%25", "%", ";", "?", "#", "\t",
    "\n", "\r", " ", "%20", "%09", "%00", "%7f", "é", "\u{0441}", "\u{FF0E}", "\u{3002}", "%c0%ae", "%C0%AE",
    "%c3%a9", "%e3%80%82", "%ff", "a", "b", "x", "v1", "ai", "chat", "documents", "api_keys", "%63", "%41", "%61",
    "%7e", "%2d", "%5f", "%32", "%46", "%3b", "%3B", "%3f", "%23", "%2525", "%252F", "~", "-", "_", ":", "@", "!",
    "$", "&", "'", "(", ")", "*", "+", ",", "=", "\"", "<", ">", "`", "{", "}", "^", "|", "[", "]", "0", "9", "F",
    "f", "..;", ".;",
];

/// Bytes the WHATWG URL parser percent-encodes in a path (Node 20 and
/// workerd): C0 controls, space, `"`, `#`, `<`, `>`, `?`, `` ` ``, `{`, `}`,
/// DEL and non-ASCII. (`#` and `?` end the path instead.)
pub fn url_encodes(b: u8) -> bool {
    b <= 0x20 || b >= 0x7f || b"\"#<>?`{}".contains(&b)
}

/// The check run by the fuzz target and the smoke test.
pub fn check(data: &[u8]) {
    let raw = crate::text(data);
    check_path(&raw);
    check_url(&raw);
    check_query_model(&raw);
    let mut u = Unstructured::new(data);
    let built = build_path(&mut u);
    check_path(&built);
    check_url(&format!("https://edge.example.com{built}"));
    let query = build_query(&mut u);
    check_query_model(&query);
    check_override(&mut u);
}

/// Builds a path from [`PIECES`] (and now and then a raw byte).
pub fn build_path(u: &mut Unstructured<'_>) -> String {
    let mut s = String::from("/");
    let n = u.int_in_range(0..=24u8).unwrap_or(0);
    for _ in 0..n {
        match u.int_in_range(0..=15u8).unwrap_or(0) {
            0 => s.push(char::from(u.int_in_range(0..=0x7fu8).unwrap_or(b'a'))),
            _ => s.push_str(u.choose(PIECES).copied().unwrap_or("a")),
        }
    }
    s
}

#[rustfmt::skip]
const QUERY_PIECES: &[&str] = &[
    "_method", "_METHOD", "method", "_", "%5F", "%5f", "%6D", "%6d", "ethod", "x", "=", "DELETE", "&", ";", "+", " ",
    ".", "[", "]", "[]", "%00", "%20", "%2E", "%5B", "%5D", "-", "%2D", "x-http-method-override", "x_http_method",
    "x-method-override", "X-HTTP-Method", "%", "%2", "%3D", "%26", "%3B", "\0", "a", "=x", "%25",
];

fn build_query(u: &mut Unstructured<'_>) -> String {
    let mut s = String::new();
    let n = u.int_in_range(0..=16u8).unwrap_or(0);
    for _ in 0..n {
        s.push_str(u.choose(QUERY_PIECES).copied().unwrap_or("x"));
    }
    s
}

/// `%25` followed by two hex digits (a double-encoded escape).
pub fn has_double_encoding(s: &str) -> bool {
    let b = s.as_bytes();
    (0..b.len()).any(|i| {
        b[i..].starts_with(b"%25")
            && b.get(i + 3).copied().and_then(crate::hex).is_some()
            && b.get(i + 4).copied().and_then(crate::hex).is_some()
    })
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The path properties above, for one raw path.
pub fn check_path(raw: &str) {
    let c = match CanonicalPath::parse(raw) {
        Ok(c) => c,
        Err(e) => {
            ensure!(e.code == ErrorCode::InvalidRequest && e.status() == 400, None, "{raw:?} refused with {e}");
            return;
        }
    };
    let s = c.as_str();
    ensure!(s.starts_with('/'), None, "{raw:?} -> {s:?}: no leading /");
    ensure!(s.len() <= raw.len() && s.len() <= MAX_PATH_LEN, None, "{raw:?} -> {s:?}: longer");
    ensure!(
        CanonicalPath::parse(s).as_ref() == Ok(&c),
        None,
        "{raw:?} -> {s:?}, which does not re-parse to itself: {:?}",
        CanonicalPath::parse(s)
    );
    ensure!(!has_double_encoding(s), None, "{raw:?} -> {s:?}: %25 followed by two hex digits");
    ensure!(!s.contains("//"), None, "{raw:?} -> {s:?}: //");
    let segs: Vec<&str> = c.segments().collect();
    ensure!(segs.join("/") == s[1..], None, "{raw:?} -> {s:?}: segments {segs:?}");
    for seg in &segs {
        ensure!(seg.is_empty() || !seg.bytes().all(|b| b == b'.'), None, "{raw:?} -> {s:?}: dot segment {seg:?}");
        ensure!(
            !seg.ends_with('.') && !seg.ends_with(' ') && !seg.ends_with("%20"),
            None,
            "{raw:?} -> {s:?}: segment {seg:?} ends with a dot or a space"
        );
    }
    let bytes = s.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        ensure!((0x20..0x7f).contains(&b) && b != b';' && b != b'\\', None, "{raw:?} -> {s:?}: byte {b:#04x}");
        ensure!(!url_encodes(b), None, "{raw:?} -> {s:?}: raw {:?}, which the URL parser encodes", b as char);
        if b == b'%' {
            let esc = &bytes[i + 1..bytes.len().min(i + 3)];
            let ok = esc.len() == 2 && esc.iter().all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c));
            ensure!(ok, None, "{raw:?} -> {s:?}: % at {i} is not an upper-case escape");
            let v = crate::hex(esc[0]).unwrap_or(0) << 4 | crate::hex(esc[1]).unwrap_or(0);
            ensure!(!unreserved(v), None, "{raw:?} -> {s:?}: escape of unreserved {:?} kept", v as char);
            ensure!(!matches!(v, b'/' | b'\\' | 0..=0x1f | 0x7f), None, "{raw:?} -> {s:?}: escape %{v:02X}");
        }
    }
    ensure!(crate::pct_decode(raw) == crate::pct_decode(s), None, "{raw:?} -> {s:?}: another meaning once decoded");
    for base in bases() {
        let forwarded = format!("{base}{s}");
        let again = CanonicalPath::parse(&forwarded);
        ensure!(
            again.as_ref().is_ok_and(|a| a.as_str() == forwarded),
            None,
            "{raw:?} -> {s:?} is forwarded as {forwarded:?}, which keyward reads as {again:?}"
        );
    }
}

/// Base paths of `ORIGIN_URL`s that every forwarded path is appended to.
fn bases() -> &'static [String] {
    static BASES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    BASES.get_or_init(|| {
        ["https://origin.example", "https://origin.example/api", "http://localhost:8080/v2/x/"]
            .iter()
            .map(|o| OriginUrl::parse(o).map(|o| o.base_path).unwrap_or_else(|e| panic!("ORIGIN_URL {o:?}: {e}")))
            .collect()
    })
}

/// `split_url` and `check_query` on a request URL.
pub fn check_url(url: &str) {
    let (path, query) = split_url(url);
    ensure!(path.starts_with('/'), None, "split_url({url:?}) path {path:?}");
    ensure!(!path.contains(['?', '#']) && !query.contains('#'), None, "split_url({url:?}) = ({path:?}, {query:?})");
    ensure!(url.contains(path) || path == "/", None, "split_url({url:?}) path {path:?} not from the URL");
    check_query_model(query);
}

/// Names under which the frameworks behind keyward honour a method override.
const OVERRIDES: &[&str] = &["_method", "x_http_method_override", "x_http_method", "x_method_override"];

/// The reference reading of one raw query-pair name: the names a framework
/// may see (PHP drops leading spaces; Rack and Express keep them).
fn model_names(raw: &str) -> Vec<String> {
    let b = raw.as_bytes();
    let mut d = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let esc = (b[i] == b'%').then(|| Some(crate::hex(*b.get(i + 1)?)? << 4 | crate::hex(*b.get(i + 2)?)?));
        match (b[i], esc.flatten()) {
            (b'%', Some(v)) => {
                d.push(v);
                i += 3;
                continue;
            }
            (b'+', _) => d.push(b' '),
            (c, _) => d.push(c),
        }
        i += 1;
    }
    if let Some(n) = d.iter().position(|&c| c == 0) {
        d.truncate(n);
    }
    let trimmed: Vec<u8> = d.iter().copied().skip_while(|&c| c == b' ').collect();
    [d, trimmed]
        .into_iter()
        .map(|mut n| {
            if let Some(open) = n.iter().position(|&c| c == b'[') {
                if open > 0 && n[open..].contains(&b']') {
                    n.truncate(open);
                }
            }
            n.iter().map(|&c| if matches!(c, b' ' | b'.' | b'[' | b'-') { '_' } else { char::from(c) }).collect()
        })
        .collect()
}

/// `check_query` against the reference model, and `query_names` against
/// the model's readings.
pub fn check_query_model(query: &str) {
    let accepted = check_query(query);
    if let Err(e) = &accepted {
        ensure!(e.code == ErrorCode::InvalidRequest, None, "check_query({query:?}) = {e}");
    }
    let mut overridden = false;
    for pair in query.split(['&', ';']) {
        let name = pair.split('=').next().unwrap_or("");
        let theirs = query_names(name);
        let ours = model_names(name);
        for n in &theirs {
            ensure!(ours.contains(n), None, "query_names({name:?}) = {theirs:?}; the model reads {ours:?}");
        }
        if ours.iter().any(|n| OVERRIDES.iter().any(|o| n.eq_ignore_ascii_case(o))) {
            overridden = true;
            ensure!(accepted.is_err(), None, "check_query({query:?}) accepted the override pair {pair:?} ({ours:?})");
        }
    }
    ensure!(accepted.is_ok() || overridden, None, "check_query({query:?}) refused, yet no pair is an override");
}

/// A spelling of a method override's name, built from the pieces that the
/// frameworks behind keyward read as that name.
fn spell_override(u: &mut Unstructured<'_>) -> String {
    let base = u.choose(OVERRIDES).copied().unwrap_or("_method");
    // After the name: nothing, an array index, or a NUL (ends the name).
    let suffix = u.choose(&["", "", "[]", "[x]", "%5B%5D", "%5b0%5d", "%00", "%00junk"]).copied().unwrap_or("");
    let mut name = String::new();
    let leading = u.int_in_range(0..=2u8).unwrap_or(0);
    for _ in 0..leading {
        name.push_str(u.choose(&[" ", "+", "%20"]).copied().unwrap_or(" "));
    }
    for (i, c) in base.bytes().enumerate() {
        let c = if u.arbitrary().unwrap_or(false) { c.to_ascii_uppercase() } else { c };
        if c == b'_' {
            // A space reads as `_` unless PHP drops it as a leading space;
            // `[` reads as `_` when no `]` closes it.
            let mut ways = vec!["_", ".", "-", "%5F", "%5f", "%2E", "%2e", "%2D", "%2d"];
            if i > 0 || leading == 0 {
                ways.extend([" ", "+", "%20"]);
            }
            if !suffix.contains(']') && !suffix.contains("5D") && !suffix.contains("5d") {
                ways.extend(["[", "%5B"]);
            }
            name.push_str(u.choose(&ways).copied().unwrap_or("_"));
            continue;
        }
        match u.int_in_range(0..=3u8).unwrap_or(0) {
            0 => name.push_str(&format!("%{c:02X}")),
            1 => name.push_str(&format!("%{c:02x}")),
            _ => name.push(char::from(c)),
        }
    }
    name.push_str(suffix);
    name
}

/// An override spelled any way, anywhere in a query: refused.
fn check_override(u: &mut Unstructured<'_>) {
    let name = spell_override(u);
    let value = u.choose(&["", "=DELETE", "=", "=x&y=1", "==PUT"]).copied().unwrap_or("");
    let before = u.choose(&["", "a=1&", "a=1;", "&", ";", "x&&"]).copied().unwrap_or("");
    let after = u.choose(&["", "&b=2", ";b=2", "&"]).copied().unwrap_or("");
    let q = format!("{before}{name}{value}{after}");
    ensure!(check_query(&q).is_err(), None, "check_query({q:?}) accepted the override {name:?}");
}
