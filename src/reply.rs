//! What comes back from the origin, before it reaches the client: the
//! headers keyward removes and the `Cache-Control` it enforces.
//!
//! A response to a credentialed request belongs to one identity (org, key,
//! user) that lives in request headers, outside any cache key. So it must
//! never be stored by a shared cache, in front of keyward or behind it:
//! the origin fetch bypasses the runtime's cache (`cache: "no-store"`, in
//! the shell), and the response reaches the client `private` (or
//! `no-store`), never `public`, whatever the origin said.

/// Response headers of the origin that never reach the client: CDN-only
/// cache instructions (a shared cache reads them instead of
/// `Cache-Control`), keyward's own names. Every `Access-Control-*` is
/// removed too ([`dropped_response_header`]): CORS is decided at the edge.
pub const DROPPED_RESPONSE: &[&str] =
    &["cdn-cache-control", "cloudflare-cdn-cache-control", "surrogate-control", "surrogate-key", "cache-tag"];

/// Whether an origin response header is removed.
pub fn dropped_response_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("access-control-")
        || lower.starts_with("x-keyward-")
        || DROPPED_RESPONSE.contains(&lower.as_str())
}

/// Directives only a shared cache obeys, or that invite one: removed.
const SHARED_ONLY: &[&str] = &["public", "s-maxage", "proxy-revalidate"];

/// The `Cache-Control` the client receives for the origin's value: the
/// origin's directives without those for shared caches (`public`,
/// `s-maxage`, `proxy-revalidate`), with `private` in front unless the
/// response is `no-store` or already (unqualified) `private`. No value →
/// `private`. Quoted directive values (`no-cache="a, b"`) are kept whole.
pub fn cache_control(origin: Option<&str>) -> String {
    let directives: Vec<&str> = origin
        .map(split_directives)
        .unwrap_or_default()
        .into_iter()
        .filter(|d| {
            let name = directive_name(d);
            !SHARED_ONLY.iter().any(|s| name.eq_ignore_ascii_case(s))
        })
        .collect();
    let has = |n: &str| directives.iter().any(|d| d.eq_ignore_ascii_case(n));
    let mut out: Vec<&str> = Vec::with_capacity(directives.len() + 1);
    if !has("no-store") && !has("private") {
        out.push("private");
    }
    out.extend(directives);
    out.join(", ")
}

fn directive_name(d: &str) -> &str {
    d.split('=').next().unwrap_or("").trim()
}

/// Splits on commas outside quoted strings; trims; drops empty entries.
fn split_directives(v: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in v.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(v[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(v[start..].trim());
    out.retain(|d| !d.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_public() {
        for (origin, expected) in [
            (None, "private"),
            (Some(""), "private"),
            (Some("public"), "private"),
            (Some("public, max-age=3600"), "private, max-age=3600"),
            (Some("PUBLIC, s-maxage=600, max-age=60"), "private, max-age=60"),
            (Some("max-age=60, proxy-revalidate, must-revalidate"), "private, max-age=60, must-revalidate"),
            (Some("private, max-age=60"), "private, max-age=60"),
            (Some("Private"), "Private"),
            (Some("no-store"), "no-store"),
            (Some("public, no-store"), "no-store"),
            (Some("no-cache"), "private, no-cache"),
            (Some(r#"private="set-cookie", max-age=5"#), r#"private, private="set-cookie", max-age=5"#),
            (Some(r#"no-cache="a, public", public"#), r#"private, no-cache="a, public""#),
            (Some(r#"x="a\"b, public", public"#), r#"private, x="a\"b, public""#),
            (Some(" , public ,, immutable"), "private, immutable"),
        ] {
            let got = cache_control(origin);
            assert_eq!(got, expected, "{origin:?}");
            let directives = split_directives(&got);
            assert!(!directives.iter().any(|d| d.eq_ignore_ascii_case("public")), "{got}");
            assert!(directives.iter().any(|d| d.eq_ignore_ascii_case("private") || d.eq_ignore_ascii_case("no-store")));
        }
    }

    #[test]
    fn dropped_headers() {
        for n in [
            "CDN-Cache-Control",
            "Cloudflare-CDN-Cache-Control",
            "Surrogate-Control",
            "Access-Control-Allow-Origin",
            "x-keyward-org",
            "Cache-Tag",
        ] {
            assert!(dropped_response_header(n), "{n}");
        }
        for n in ["Cache-Control", "Vary", "Content-Type", "ETag", "Set-Cookie"] {
            assert!(!dropped_response_header(n), "{n}");
        }
    }
}
