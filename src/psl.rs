//! Public suffixes, for widget keys' wildcard origins: `https://*.github.io`
//! or `https://*.co.uk` would let any site under a public suffix (any GitHub
//! Pages site, any UK company) use the key, so a wildcard's domain must not
//! be a public suffix.
//!
//! The list itself is data, not code: compiled in (the `psl` crate) it
//! would cost 264 KB gzipped — nearly the whole size budget — at every edge
//! location for a check made only when a key is created. An operator loads
//! it with `PUT /admin/public_suffix_list` (the committed copy is
//! `data/public_suffix_list.dat`, loaded by `make dev`, `make load-psl` and
//! the tests); it lives in KV. Creating a key with a wildcard origin while no
//! list is loaded is refused (503), never waved through.
//!
//! The matching answers one question — is this domain itself a public
//! suffix? — straight from the list's lines. The `publicsuffix` crate, which
//! parses a list at run time into a trie of maps, made the worker 2.9 KB
//! (gzipped) larger than these 25 lines, which took it past the 300 KiB
//! budget (302.5 KiB against 299.7); so the crate is the oracle of a native
//! test over the committed list instead
//! ([`tests::agrees_with_the_publicsuffix_crate`], which also found a case
//! where the crate departs from the list's algorithm).

use serde::{Deserialize, Serialize};

/// Largest list accepted (the published list is ~230 KB, ~150 KB without
/// its comments).
pub const MAX_LIST_BYTES: usize = 1 << 20;

/// KV key of the list's text.
pub const KV_LIST: &str = "config:public_suffix_list";
/// KV key of its summary ([`ListInfo`]).
pub const KV_INFO: &str = "config:public_suffix_list:info";

/// What the admin API answers about the loaded list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListInfo {
    /// How many rules it holds.
    pub rules: usize,
    /// SHA-256 of the text as loaded, hex.
    pub sha256: String,
    /// When it was loaded (RFC 3339).
    pub updated_at: String,
}

/// A list checked by [`SuffixList::parse`]: its rules, one per line.
pub struct SuffixList(Vec<String>);

impl std::fmt::Debug for SuffixList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SuffixList({} rules)", self.0.len())
    }
}

impl SuffixList {
    /// Parses the list as published: rules inside its `===BEGIN ICANN
    /// DOMAINS===` and `===BEGIN PRIVATE DOMAINS===` sections (the first
    /// word of a line), `//` comments, blank lines. Every rule must be
    /// lowercase ASCII (punycode), labels of `[a-z0-9-]` or `*`, with an
    /// optional leading `!` (then at least two labels). Returns the list and
    /// its number of rules, or why it is refused.
    pub fn parse(text: &str) -> Result<(SuffixList, usize), String> {
        if text.len() > MAX_LIST_BYTES {
            return Err(format!("is larger than {MAX_LIST_BYTES} bytes"));
        }
        let mut rules = Vec::new();
        let mut in_section = false;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.contains("===BEGIN ICANN DOMAINS===") || line.contains("===BEGIN PRIVATE DOMAINS===") {
                in_section = true;
            }
            if line.is_empty() || line.starts_with("//") || !in_section {
                continue;
            }
            let rule = line.split_whitespace().next().unwrap_or_default();
            let problem = if !rule.is_ascii() {
                "is not ASCII: origins are, so rules must be in punycode (scripts/public-suffix-list.py converts the published list)"
            } else if !valid_rule(rule) {
                "is not a rule (lowercase ASCII/punycode labels, `*`, a leading `!`)"
            } else {
                ""
            };
            if !problem.is_empty() {
                let shown: String = rule.chars().take(80).collect();
                return Err(format!("line {}: {shown:?} {problem}", n + 1));
            }
            rules.push(rule.to_owned());
        }
        if rules.is_empty() {
            return Err("has no rules (the list as published, with its ===BEGIN ICANN DOMAINS=== section)".into());
        }
        let n = rules.len();
        Ok((SuffixList(rules), n))
    }

    /// Whether `domain` (lowercase ASCII, no trailing dot) is itself a
    /// public suffix, by the list's algorithm: the prevailing rule for it is
    /// an exception (`!rule`, which makes the suffix shorter than any domain
    /// it matches) — then no; else some rule has as many labels as the domain
    /// and matches it (the rule itself, or `*.parent` over one label), or the
    /// domain is one label (the implicit `*` rule).
    pub fn is_public_suffix(&self, domain: &str) -> bool {
        let under = |rule: &str| domain == rule || domain.strip_suffix(rule).is_some_and(|d| d.ends_with('.'));
        if self.0.iter().any(|r| r.strip_prefix('!').is_some_and(under)) {
            return false;
        }
        let parent = domain.split_once('.').map(|(_, p)| p);
        parent.is_none()
            || self.0.iter().any(|r| r == domain || (r.strip_prefix("*.").is_some_and(|p| Some(p) == parent)))
    }
}

impl SuffixList {
    /// The public suffix a wildcard over `domain` (`*.domain`, one or more
    /// labels in front) would reach, if any: `domain` itself when it is a
    /// public suffix, else a suffix below it (`*.amazonaws.com` reaches
    /// `s3.amazonaws.com`, where anyone names a bucket; `*.kawasaki.jp`
    /// reaches every `*.kawasaki.jp` city). Exception rules make nothing
    /// public, so they are skipped.
    pub fn suffix_under(&self, domain: &str) -> Option<String> {
        if self.is_public_suffix(domain) {
            return Some(domain.to_owned());
        }
        self.0.iter().filter(|r| !r.starts_with('!')).find_map(|r| {
            let base = r.strip_prefix("*.").unwrap_or(r);
            let under = base.strip_suffix(domain).is_some_and(|head| head.ends_with('.'));
            (under || (base == domain && base.len() < r.len())).then(|| r.clone())
        })
    }
}

fn valid_rule(rule: &str) -> bool {
    let body = rule.strip_prefix('!').unwrap_or(rule);
    (body.len() == rule.len() || body.contains('.'))
        && !body.is_empty()
        && body.len() <= 253
        && body.split('.').enumerate().all(|(i, l)| {
            (l == "*" && i == 0 && body.len() > 1 && body.len() == rule.len())
                || (!l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = "// header\n// ===BEGIN ICANN DOMAINS===\ncom\nuk\nco.uk\n*.kawasaki.jp\n!city.kawasaki.jp\njp\n// ===END ICANN DOMAINS===\n// ===BEGIN PRIVATE DOMAINS===\ngithub.io\n// ===END PRIVATE DOMAINS===\n";

    #[test]
    fn rules_wildcards_exceptions_and_the_implicit_rule() {
        let (l, n) = SuffixList::parse(SMALL).unwrap();
        assert_eq!(n, 7);
        for d in ["com", "uk", "co.uk", "github.io", "foo.kawasaki.jp", "localhost", "example"] {
            assert!(l.is_public_suffix(d), "{d}");
        }
        for d in [
            "example.com",
            "example.co.uk",
            "me.github.io",
            "kawasaki.jp",
            "city.kawasaki.jp",
            "a.foo.kawasaki.jp",
            "a.b.example.com",
        ] {
            assert!(!l.is_public_suffix(d), "{d}");
        }
    }

    #[test]
    fn a_wildcard_reaches_the_suffixes_below_its_domain() {
        let (l, _) = SuffixList::parse(SMALL).unwrap();
        assert_eq!(l.suffix_under("github.io").as_deref(), Some("github.io"));
        assert_eq!(l.suffix_under("kawasaki.jp").as_deref(), Some("*.kawasaki.jp"));
        assert_eq!(l.suffix_under("city.kawasaki.jp"), None, "an exception is not a suffix");
        assert_eq!(l.suffix_under("example.com"), None);
        assert_eq!(l.suffix_under("me.github.io"), None);
        let text = include_str!("../data/public_suffix_list.dat");
        let (l, _) = SuffixList::parse(text).unwrap();
        for (domain, reaches) in
            [("amazonaws.com", "s3.amazonaws.com"), ("fastly.net", "fastly.net"), ("kawasaki.jp", "*.kawasaki.jp")]
        {
            let got = l.suffix_under(domain).unwrap_or_else(|| panic!("{domain}"));
            assert!(got == reaches || got.ends_with(&format!(".{domain}")), "{domain}: {got}");
        }
        assert!(l.suffix_under("amazonaws.com").unwrap().ends_with(".amazonaws.com"));
        for domain in ["example.com", "shop.example.co.uk", "keyward.dev"] {
            assert_eq!(l.suffix_under(domain), None, "{domain}");
        }
    }

    #[test]
    fn malformed_lists_are_refused_with_the_line() {
        assert!(SuffixList::parse("").unwrap_err().contains("no rules"));
        assert!(SuffixList::parse("com\nuk\n").unwrap_err().contains("no rules"), "rules outside a section");
        let e = SuffixList::parse("// ===BEGIN ICANN DOMAINS===\ncom\nCO.UK\n").unwrap_err();
        assert!(e.starts_with("line 3:"), "{e}");
        let e = SuffixList::parse("// ===BEGIN ICANN DOMAINS===\nbücher.de\n").unwrap_err();
        assert!(e.starts_with("line 2: \"bücher.de\" is not ASCII"), "{e}");
        assert!(SuffixList::parse("// ===BEGIN ICANN DOMAINS===\na..b\n").is_err());
        for misplaced in ["a.*.jp", "*.*.jp", "jp.*", "*", "!*.jp"] {
            let list = format!("// ===BEGIN ICANN DOMAINS===\n{misplaced}\n");
            assert!(SuffixList::parse(&list).is_err(), "{misplaced}: a `*` only as the leftmost label of a rule");
        }
        assert!(SuffixList::parse("// ===BEGIN ICANN DOMAINS===\n!jp\n").is_err(), "an exception needs two labels");
        assert!(SuffixList::parse(&"x".repeat(MAX_LIST_BYTES + 1)).unwrap_err().contains("larger"));
    }

    #[test]
    fn the_committed_list() {
        let text = include_str!("../data/public_suffix_list.dat");
        let (l, n) = SuffixList::parse(text).unwrap();
        assert!(n > 9000, "{n} rules");
        for d in [
            "github.io",
            "co.uk",
            "com",
            "pages.dev",
            "workers.dev",
            "vercel.app",
            "herokuapp.com",
            "blogspot.com",
            "xn--55qx5d.cn",
            "s3.amazonaws.com",
        ] {
            assert!(l.is_public_suffix(d), "{d}");
        }
        for d in ["example.com", "shop.example.co.uk", "example.github.io", "keyward.dev"] {
            assert!(!l.is_public_suffix(d), "{d}");
        }
    }

    /// Domains the committed list names (every wildcard and exception rule,
    /// and every 10th other rule: the matcher scans the list, so all of them
    /// would take long in a debug build), each with labels added in front
    /// and one removed, asked of this matcher and of the `publicsuffix`
    /// crate over the same list.
    #[test]
    fn agrees_with_the_publicsuffix_crate() {
        use publicsuffix::Psl;
        let text = include_str!("../data/public_suffix_list.dat");
        let (ours, _) = SuffixList::parse(text).unwrap();
        let theirs: publicsuffix::List = text.parse().unwrap();
        let (mut asked, mut misses) = (0, 0);
        let sample = ours.0.iter().enumerate().filter(|(i, r)| i % 10 == 0 || r.starts_with(['*', '!']));
        for (_, rule) in sample {
            let base = rule.trim_start_matches('!').trim_start_matches("*.");
            let parent = base.split_once('.').map(|(_, p)| p.to_owned());
            for d in [base.to_owned(), format!("x.{base}"), format!("a.x.{base}")].into_iter().chain(parent) {
                let crate_says = theirs.suffix(d.as_bytes()).is_none_or(|s| s.as_bytes() == d.as_bytes());
                let we_say = ours.is_public_suffix(&d);
                asked += 1;
                if we_say != crate_says && crate_misses_wildcard(&ours, &d) {
                    misses += 1;
                    continue;
                }
                assert_eq!(we_say, crate_says, "{d}");
            }
        }
        assert!(asked > 5_000, "{asked}");
        assert!(misses < 100, "{misses} of {asked}");
    }

    /// The one way the crate (2.3.0) departs from the list's algorithm: its
    /// trie does not fall back to a `*.parent` rule when a longer rule
    /// shares the domain's path — `r.cloud.int.apple` is covered by
    /// `*.cloud.int.apple`, but `*.r.cloud.int.apple` also exists, and the
    /// crate answers "not a suffix". (The PyPI `publicsuffixlist` package,
    /// asked by hand, agrees with us.) Our answer, the stricter one, must then
    /// be "a suffix", by exactly that wildcard.
    fn crate_misses_wildcard(ours: &SuffixList, d: &str) -> bool {
        let parent = d.split_once('.').map_or("", |(_, p)| p);
        let deeper = format!(".{d}");
        ours.is_public_suffix(d)
            && ours.0.iter().any(|r| r.strip_prefix("*.") == Some(parent))
            && ours.0.iter().any(|r| r.ends_with(&deeper))
    }
}
