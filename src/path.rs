//! Path canonicalization: the one place where a request path becomes the
//! [`CanonicalPath`] that the policy matches and the origin receives.
//!
//! Why canonicalize before policy: if keyward and the origin could read one
//! path two ways (`/v1/x/../api_keys`, `/v1/ai%2Fchat`), a route allowed here
//! could reach a different handler there. So ambiguity is refused, never
//! repaired, and what was matched is exactly what is forwarded:
//!
//! - the path must start with `/`;
//! - `.` and `..` segments → refused;
//! - `%2F`, `%5C`, `%2E` (encoded slash, backslash, dot), `%00`–`%1F`, `%7F`
//!   and malformed escapes (`%G1`, `%4`) → refused;
//! - raw control bytes, raw backslashes and non-ASCII bytes → refused;
//! - empty segments (duplicate slashes, `//v1`) → refused, not collapsed:
//!   collapsing would make two spellings of one route, and origins disagree
//!   on whether `//` is significant;
//! - `%25` followed by two hex digits (a double-encoded escape such as
//!   `%252F`) → refused: an origin that decodes twice would see another path;
//! - escapes of unreserved characters (`%61` → `a`, `%7E` → `~`) are decoded
//!   and every other escape is upper-cased (`%c3` → `%C3`), as RFC 3986 §6.2.2
//!   normalizes; escapes must decode to valid UTF-8 (so overlong forms such
//!   as `%C0%AE` for `.` are refused); matching is case-sensitive;
//! - `;` is refused anywhere (servlet containers strip `;params` before
//!   normalizing, so `/v1/documents/..;/api_keys` would reach another route
//!   there), and so is any segment made only of dots (`...`) or ending in a
//!   dot or a space (Windows servers trim those: `..%20`, `x.`).

use crate::error::ApiError;

/// A request path that passed canonicalization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanonicalPath(String);

impl CanonicalPath {
    /// Canonicalizes a raw (still percent-encoded) request path.
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let bytes = raw.as_bytes();
        if bytes.first() != Some(&b'/') {
            return Err(ApiError::invalid_request("The path must start with '/'."));
        }
        if raw.len() > MAX_PATH_LEN {
            return Err(ApiError::invalid_request("The path is too long."));
        }
        let mut out = String::with_capacity(raw.len());
        // The fully decoded bytes, only to check that escapes form UTF-8.
        let mut decoded: Vec<u8> = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match b {
                b'%' => {
                    let hi = bytes.get(i + 1).copied().and_then(hex_val);
                    let lo = bytes.get(i + 2).copied().and_then(hex_val);
                    let (Some(hi), Some(lo)) = (hi, lo) else {
                        return Err(ApiError::invalid_request("The path has a malformed percent-escape."));
                    };
                    let v = (hi << 4) | lo;
                    decoded.push(v);
                    match v {
                        b'/' | b'\\' | b'.' => {
                            return Err(ApiError::invalid_request(
                                "The path contains an encoded slash, backslash or dot.",
                            ))
                        }
                        0x00..=0x1f | 0x7f => {
                            return Err(ApiError::invalid_request("The path contains a control character."))
                        }
                        _ if v.is_ascii_alphanumeric() || v == b'-' || v == b'_' || v == b'~' => out.push(v as char),
                        _ => {
                            out.push('%');
                            out.push(HEX_UPPER[(v >> 4) as usize] as char);
                            out.push(HEX_UPPER[(v & 0xf) as usize] as char);
                        }
                    }
                    i += 3;
                }
                0x00..=0x1f | 0x7f => return Err(ApiError::invalid_request("The path contains a control character.")),
                b'\\' => return Err(ApiError::invalid_request("The path contains a backslash.")),
                b';' => {
                    return Err(ApiError::invalid_request("The path contains ';' (path parameters are not accepted)."))
                }
                0x80..=0xff => return Err(ApiError::invalid_request("The path contains a non-ASCII byte.")),
                // What the URL parser percent-encodes in a path (`?` and `#`
                // end it): the runtime never passes these raw, and `fetch`
                // would re-encode them, so the path forwarded would not be
                // the one matched.
                b' ' | b'"' | b'<' | b'>' | b'`' | b'{' | b'}' | b'?' | b'#' => {
                    return Err(ApiError::invalid_request(
                        "The path contains a character that must be percent-encoded.",
                    ))
                }
                _ => {
                    out.push(b as char);
                    decoded.push(b);
                    i += 1;
                }
            }
        }
        if std::str::from_utf8(&decoded).is_err() {
            return Err(ApiError::invalid_request("The path's percent-escapes are not valid UTF-8."));
        }
        // `%25` + two hex digits reads as another escape to an origin that
        // decodes twice: checked on the canonical form, so that one built
        // from decoded escapes (`%25%32%46` -> `%252F`) is refused too.
        let hex = |b: u8| hex_val(b).is_some();
        if out.as_bytes().windows(5).any(|w| w.starts_with(b"%25") && hex(w[3]) && hex(w[4])) {
            return Err(ApiError::invalid_request("The path contains a double-encoded escape (%25XX)."));
        }
        // Segment checks on the normalized form. The first element is the empty
        // string before the leading '/'.
        let mut segs = out.split('/').skip(1).peekable();
        while let Some(seg) = segs.next() {
            let last = segs.peek().is_none();
            match seg {
                "" if !last => return Err(ApiError::invalid_request("The path contains an empty segment ('//').")),
                _ if !seg.is_empty() && seg.bytes().all(|b| b == b'.') => {
                    return Err(ApiError::invalid_request("The path contains a dot segment."))
                }
                _ if seg.ends_with('.') || seg.ends_with("%20") => {
                    return Err(ApiError::invalid_request("A path segment ends with a dot or a space."))
                }
                _ => {}
            }
        }
        Ok(Self(out))
    }

    /// The canonical path, as forwarded.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Segments after the leading `/` (a trailing slash yields a final "").
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').skip(1)
    }
}

/// Splits a request URL string into (raw path, raw query without `?`): what
/// comes after the authority, before any `#`.
pub fn split_url(url: &str) -> (&str, &str) {
    let after_scheme = url.find("://").map_or(url, |i| &url[i + 3..]);
    let target = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
    let target = target.split_once('#').map_or(target, |(t, _)| t);
    target.split_once('?').unwrap_or((target, ""))
}

/// The origin (`scheme://host[:port]`) of an absolute URL as the runtime
/// gives it: what a browser sends as `Origin` from a page at that URL.
pub fn own_origin(url: &str) -> &str {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..].find(['/', '?', '#']).map_or(url.len(), |i| start + i);
    &url[..end]
}

/// `ORIGIN_URL` split into its origin (`https://host[:port]`) and a base path
/// (`""` or `/base`, no trailing slash) that prefixes every forwarded path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginUrl {
    /// Scheme, host and port.
    pub origin: String,
    /// Base path without a trailing slash.
    pub base_path: String,
}

impl OriginUrl {
    /// Parses `http(s)://host[:port][/base]`: no userinfo, query or fragment;
    /// the host is lowercase letters, digits, `.`, `-`, or `[IPv6]`.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let bad = "ORIGIN_URL must be http(s)://host[:port][/path] without userinfo, query or fragment";
        let (scheme, rest) = s.split_once("://").ok_or(bad)?;
        if scheme != "http" && scheme != "https" || rest.contains(['?', '#', '@']) {
            return Err(bad);
        }
        let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => (h, Some(p)),
            _ => (authority, None),
        };
        let host_ok = !host.is_empty()
            && (host.starts_with('[') && host.ends_with(']')
                || host.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'));
        let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
        if !host_ok || !port_ok {
            return Err(bad);
        }
        let base = path.trim_end_matches('/');
        if !base.is_empty() {
            let canonical = CanonicalPath::parse(base).map_err(|_| bad)?;
            if canonical.as_str() != base {
                return Err(bad);
            }
        }
        Ok(Self { origin: format!("{scheme}://{authority}"), base_path: base.to_owned() })
    }

    /// Plain `http://` to a host that is not loopback (`localhost`,
    /// `127.0.0.0/8`, `[::1]`): the signed identity and the body would cross
    /// a network in clear.
    pub fn is_insecure(&self) -> bool {
        let Some(authority) = self.origin.strip_prefix("http://") else { return false };
        let host = match authority.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => h,
            _ => authority,
        };
        let loopback = host == "localhost"
            || host == "[::1]"
            || host.strip_prefix("127.").is_some_and(|rest| {
                let parts: Vec<&str> = rest.split('.').collect();
                parts.len() == 3 && parts.iter().all(|p| p.parse::<u8>().is_ok())
            });
        !loopback
    }
}

/// Refuses a query that asks the origin to run another method: a
/// `_method=DELETE` is honoured on POST by Laravel, Symfony, Rails
/// (`Rack::MethodOverride`) and Express's `method-override`, so the method
/// that was authorized would not be the one the origin runs.
///
/// Names are compared the way those frameworks read them (see
/// [`query_names`]): pairs split on `&` and `;`, the name percent-decoded
/// (`+` is a space), PHP's renamings applied (` `, `.` and `[` read as `_`;
/// `_method[x]` is the array `_method`; a NUL ends the name; leading spaces
/// both dropped, as PHP does, and read as `_`), then compared without case
/// to `_method` and to the override header names some frameworks also
/// accept as parameters. Refusing a harmless look-alike costs nothing;
/// missing one gives a widget key's `POST` the power of `DELETE`.
pub fn check_query(query: &str) -> Result<(), ApiError> {
    let overrides = query.split(['&', ';']).any(|pair| {
        query_names(pair.split('=').next().unwrap_or(""))
            .iter()
            .any(|name| OVERRIDE_PARAMS.iter().any(|o| name.eq_ignore_ascii_case(o)))
    });
    if overrides {
        return Err(ApiError::invalid_request("The query may not contain a method override (_method)."));
    }
    Ok(())
}

/// Query parameter names that override the method somewhere, after
/// [`query_name`].
const OVERRIDE_PARAMS: &[&str] = &["_method", "x_http_method_override", "x_http_method", "x_method_override"];

/// A query parameter's name as frameworks behind keyward may read it, in
/// two readings (leading spaces dropped, as PHP does, or kept): percent-
/// decoded (`+` as a space; a malformed escape kept as is), cut at a NUL,
/// an array suffix (`name[...]`) dropped, and ` `, `.`, `[` and `-` read
/// as `_` (PHP turns the first three into `_`; `-` folds header-style names
/// onto the same spelling).
pub fn query_names(raw: &str) -> [String; 2] {
    let b = raw.as_bytes();
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = || Some((hex_val(*b.get(i + 1)?)? << 4) | hex_val(*b.get(i + 2)?)?);
        match b[i] {
            b'%' if hex().is_some() => {
                decoded.push(hex().unwrap_or_default());
                i += 3;
            }
            b'+' => {
                decoded.push(b' ');
                i += 1;
            }
            c => {
                decoded.push(c);
                i += 1;
            }
        }
    }
    if let Some(nul) = decoded.iter().position(|&c| c == 0) {
        decoded.truncate(nul);
    }
    let start = decoded.iter().position(|&c| c != b' ').unwrap_or(decoded.len());
    [php_name(&decoded[start..]), php_name(&decoded)]
}

fn php_name(mut name: &[u8]) -> String {
    // `name[...]`: PHP and Rack read an array under `name`.
    if let Some(open) = name.iter().position(|&c| c == b'[') {
        if open > 0 && name[open..].contains(&b']') {
            name = &name[..open];
        }
    }
    name.iter().map(|&c| if matches!(c, b' ' | b'.' | b'[' | b'-') { '_' } else { char::from(c) }).collect()
}

/// Longest accepted path, in bytes.
pub const MAX_PATH_LEN: usize = 2048;

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn ok(p: &str) -> String {
        CanonicalPath::parse(p).unwrap_or_else(|e| panic!("{p:?} refused: {e}")).0
    }

    fn refused(p: &str) {
        let e = CanonicalPath::parse(p).expect_err(p);
        assert_eq!(e.code, ErrorCode::InvalidRequest, "{p:?}");
    }

    #[test]
    fn own_origins() {
        assert_eq!(own_origin("https://edge.example.com/console/?x=1"), "https://edge.example.com");
        assert_eq!(own_origin("http://127.0.0.1:8787/v1/api_keys"), "http://127.0.0.1:8787");
        assert_eq!(own_origin("http://127.0.0.1:8787"), "http://127.0.0.1:8787");
        assert_eq!(own_origin("http://h?q"), "http://h");
    }

    #[test]
    fn plain_paths_are_unchanged() {
        for p in [
            "/",
            "/v1/ai/chat",
            "/v1/documents/doc_1-2~x",
            "/v1/ai/chat/",
            "/v1/x:y@z",
            "/v1/documents/a.b",
            "/v1/documents/.env",
        ] {
            assert_eq!(ok(p), p);
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_uppercased() {
        assert_eq!(ok("/v1/ai/%63hat"), "/v1/ai/chat");
        assert_eq!(ok("/v1/%7Euser%5f"), "/v1/~user_");
        assert_eq!(ok("/v1/documents/caf%c3%a9"), "/v1/documents/caf%C3%A9");
        assert_eq!(ok("/v1/documents/a%20b"), "/v1/documents/a%20b");
        assert_eq!(ok("/v1/documents/%25"), "/v1/documents/%25");
    }

    #[test]
    fn hostile_paths_are_refused() {
        for p in [
            "",
            "v1/ai/chat",
            "*",
            "/v1/x/../api_keys",
            "/v1/./ai/chat",
            "/..",
            "/v1/ai/chat/..",
            "/v1/ai/chat/.",
            "/v1/%2e%2e/api_keys",
            "/v1/%2E/x",
            "/v1/.%2e/x",
            "/v1/ai%2Fchat",
            "/v1/ai%2fchat",
            "/v1/ai%5Cchat",
            "/v1/ai\\chat",
            "/v1/ai%00chat",
            "/v1/ai%0achat",
            "/v1/ai%7Fchat",
            "/v1/ai\0chat",
            "/v1/ai\nchat",
            "/v1/ai\rchat",
            "/v1/ai\tchat",
            "/v1/ai\x7fchat",
            "//v1/ai/chat",
            "/v1//ai/chat",
            "/v1/ai/chat//",
            "/v1/%",
            "/v1/%4",
            "/v1/%G1",
            "/v1/%%41",
            "/v1/ai/\u{0441}hat", // Cyrillic es
            "/v1/documents/..;/api_keys",
            "/v1/api_keys/..;",
            "/v1/a;b=c",
            "/v1/documents/.;/x",
            "/v1/documents/%C0%AE%C0%AE/api_keys",
            "/v1/documents/%C0%AE",
            "/v1/documents/%FF",
            "/v1/documents/..%20/api_keys",
            "/v1/documents/.../x",
            "/v1/documents/x.",
            "/v1/documents/x%20",
            "/v1/documents/%252F",
            "/v1/documents/%252e%252e/api_keys",
            "/v1/documents/a%2541",
            "/v1/documents/%25ff",
            // Built from decoded escapes (fuzzing found these).
            "/v1/documents/%25%32%46",
            "/v1/documents/%25%32%65%25%32%65/api_keys",
            "/v1/documents/%25%34%31",
            // Raw bytes the URL parser would have encoded.
            "/v1/documents/a ",
            "/v1/documents/a\"b",
            "/v1/documents/<x>",
            "/v1/documents/`x`",
            "/v1/documents/{x}",
            "/v1/ai/chat?_method=DELETE",
            "/v1/documents/a#b",
        ] {
            refused(p);
        }
        refused(&format!("/{}", "a".repeat(MAX_PATH_LEN)));
    }

    #[test]
    fn canonical_form_is_a_fixed_point() {
        for p in ["/v1/ai/%63hat", "/v1/documents/caf%c3%a9", "/v1/documents/%25x"] {
            let once = ok(p);
            assert_eq!(ok(&once), once);
        }
    }

    #[test]
    fn origin_urls() {
        let ok = |s: &str| OriginUrl::parse(s).unwrap();
        assert_eq!(
            ok("http://127.0.0.1:8788"),
            OriginUrl { origin: "http://127.0.0.1:8788".into(), base_path: "".into() }
        );
        assert_eq!(
            ok("https://api.internal/"),
            OriginUrl { origin: "https://api.internal".into(), base_path: "".into() }
        );
        assert_eq!(ok("https://api.internal:8443/base/v2/").base_path, "/base/v2");
        assert_eq!(ok("http://[::1]:8080").origin, "http://[::1]:8080");
        for secure in [
            "https://api.internal",
            "http://127.0.0.1:8788",
            "http://127.1.2.3",
            "http://localhost:1",
            "http://[::1]:8080/base",
        ] {
            assert!(!ok(secure).is_insecure(), "{secure}");
        }
        for insecure in [
            "http://api.internal",
            "http://127.0.0.1.nip.io",
            "http://127.0.0.256",
            "http://localhost.example",
            "http://[::2]",
            "http://10.0.0.1:80",
        ] {
            assert!(ok(insecure).is_insecure(), "{insecure}");
        }
        for bad in [
            "",
            "api.internal",
            "ftp://x",
            "https://",
            "https://u@x",
            "https://x?q",
            "https://x#f",
            "https://X.com",
            "https://x:",
            "https://x:99999a",
            "https://x/a/../b",
            "https://x//b",
        ] {
            assert!(OriginUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn url_split_and_query_check() {
        assert_eq!(split_url("https://edge.example.com/v1/ai/chat?a=1&b=%2F#frag"), ("/v1/ai/chat", "a=1&b=%2F"));
        assert_eq!(split_url("http://127.0.0.1:8787/"), ("/", ""));
        assert_eq!(split_url("http://127.0.0.1:8787"), ("/", ""));
        assert_eq!(split_url("http://h/p?"), ("/p", ""));
        assert_eq!(split_url("http://h/p?x=1?y"), ("/p", "x=1?y"));
        assert!(check_query("a=1&b=2").is_ok());
        assert!(check_query("method=DELETE&x_method=1").is_ok());
        assert!(check_query("methods=1&_methodx=1&x[_method]=1&a=_method").is_ok());
        for bad in [
            "_method=DELETE",
            "a=1&_METHOD=put",
            "%5Fmethod=DELETE",
            "_method",
            "_%6Dethod=DELETE",
            "%5F%6D%65%74%68%6F%64=DELETE",
            ".method=DELETE",
            "%2Emethod=DELETE",
            "+method=DELETE",
            "%20method=DELETE",
            " method=DELETE",
            "[method=DELETE",
            "++_method=DELETE",
            "_method[]=DELETE",
            "_method[a]=DELETE",
            "_method%00junk=DELETE",
            "a=1;_method=DELETE",
            "x-http-method-override=DELETE",
            "X_HTTP_METHOD_OVERRIDE=DELETE",
            "x.http.method=DELETE",
        ] {
            assert_eq!(check_query(bad).map_err(|e| e.code), Err(ErrorCode::InvalidRequest), "{bad}");
        }
    }

    #[test]
    fn segments() {
        let p = CanonicalPath::parse("/v1/documents/abc/").unwrap();
        assert_eq!(p.segments().collect::<Vec<_>>(), ["v1", "documents", "abc", ""]);
    }
}
