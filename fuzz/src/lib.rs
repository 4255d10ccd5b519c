//! Invariant checks for keyward's parsers of untrusted input, written once
//! and run two ways:
//!
//! - by libFuzzer: `cargo fuzz run <target>` (nightly; `fuzz_targets/*.rs`
//!   are one-line wrappers, `fuzz/run.sh` runs them all), and
//! - by `tests/fuzz_smoke.rs` in `make test` (stable): every target's check
//!   over its seeds (`fuzz/seeds/<target>/`) and a fixed set of
//!   deterministic mutations of them ([`smoke`]).
//!
//! A check takes raw bytes and reads them twice: as the parser's raw input
//! (so seeds are plain text), and as a recipe ([`arbitrary::Unstructured`])
//! that builds structured input from dangerous pieces, which reaches deeper
//! than random bytes. It asserts properties, not only "no panic": a
//! violated property panics with a message saying which (libFuzzer reports
//! it as a crash).
//!
//! # Known findings
//! A violation already reported (fuzz/README.md, "Findings", and [`KNOWN`])
//! is recognized by its check and, unless `KEYWARD_FUZZ_STRICT=1`,
//! tolerated: counted and printed once per process, so that long runs keep
//! looking for new ones and `make test` stays green. `tests/fuzz_smoke.rs`
//! asserts that each finding's reproducer still violates its property in
//! strict mode: once keyward is fixed, that test fails and names the entry
//! to retire.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

pub mod admin_json;
pub mod cache_control;
pub mod control_query;
pub mod credentials;
pub mod jwt;
pub mod origins;
pub mod path;
pub mod policy;
pub mod scanning;
pub mod smoke;
pub mod visitor_token;

/// A fuzz target's check.
pub type Check = fn(&[u8]);

/// Every fuzz target: its name (the `fuzz_targets/<name>.rs` binary, the
/// `fuzz/seeds/<name>/` and `fuzz/dict/<name>.dict` files) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("path", path::check),
    ("credentials", credentials::check),
    ("origins", origins::check),
    ("admin_json", admin_json::check),
    ("control_query", control_query::check),
    ("policy", policy::check),
    ("cache_control", cache_control::check),
    ("visitor_token", visitor_token::check),
    ("scanning", scanning::check),
    ("jwt", jwt::check),
];

/// A finding already reported: its id, the target whose check finds it, a
/// reproducer (that target's input) and what is wrong.
#[derive(Clone, Copy, Debug)]
pub struct Known {
    /// `K<n>`, as in fuzz/README.md.
    pub id: &'static str,
    /// The target that finds it.
    pub target: &'static str,
    /// An input of that target that violates the property.
    pub input: &'static [u8],
    /// One line: what happens, what should.
    pub what: &'static str,
}

/// Findings in keyward reported and not yet fixed (fuzz/README.md).
pub const KNOWN: &[Known] = &[];

thread_local! {
    static STRICT: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether known findings are fatal on this thread: `KEYWARD_FUZZ_STRICT=1`,
/// or inside [`with_strict`].
pub fn strict() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    STRICT
        .with(Cell::get)
        .unwrap_or_else(|| *ENV.get_or_init(|| std::env::var("KEYWARD_FUZZ_STRICT").is_ok_and(|v| v == "1")))
}

/// Runs `f` with known findings fatal (or not) on this thread.
pub fn with_strict<R>(on: bool, f: impl FnOnce() -> R) -> R {
    let before = STRICT.with(|s| s.replace(Some(on)));
    let out = f();
    STRICT.with(|s| s.set(before));
    out
}

fn hits() -> &'static Mutex<BTreeMap<&'static str, u64>> {
    static HITS: OnceLock<Mutex<BTreeMap<&'static str, u64>>> = OnceLock::new();
    HITS.get_or_init(Default::default)
}

/// How often each known finding was tolerated in this process.
pub fn known_hits() -> BTreeMap<&'static str, u64> {
    hits().lock().map(|h| h.clone()).unwrap_or_default()
}

/// A property does not hold. Panics, unless `known` names a reported
/// finding and strict mode is off: then it is counted (printed the first
/// time) and `true` is returned, and the caller stops checking this input.
#[track_caller]
pub fn violation(known: Option<&'static str>, what: fmt::Arguments<'_>) -> bool {
    match known {
        Some(id) if !strict() => {
            assert!(KNOWN.iter().any(|k| k.id == id), "unregistered known finding {id}");
            let first = hits().lock().map(|mut h| {
                let n = h.entry(id).or_insert(0);
                *n += 1;
                *n == 1
            });
            if first.unwrap_or(false) {
                eprintln!("keyward-fuzz: known finding {id} tolerated (KEYWARD_FUZZ_STRICT=1 makes it fatal): {what}");
            }
            true
        }
        Some(id) => panic!("property violated (known finding {id}): {what}"),
        None => panic!("property violated: {what}"),
    }
}

/// `ensure!(cond, known, "format", args…)`: if `cond` is false, report a
/// [`violation`] and, when it is tolerated, return from the calling check.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $known:expr, $($msg:tt)+) => {
        if !$cond && $crate::violation($known, format_args!($($msg)+)) {
            return;
        }
    };
}

/// Lines of one input that a line-by-line check reads: more would only
/// repeat the same checks, slower.
pub const MAX_LINES: usize = 16;

/// The bytes as text: UTF-8 as is, otherwise lossily (keyward's parsers
/// take `&str`; the runtime hands the worker strings).
pub fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// Decodes every well-formed `%XX` (other bytes kept): a reference decoder,
/// independent of keyward's.
pub fn pct_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escape = match b.get(i..i + 3) {
            Some([b'%', h, l]) => hex(*h).zip(hex(*l)),
            _ => None,
        };
        match escape {
            Some((h, l)) => {
                out.push(h << 4 | l);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

/// The value of an ASCII hex digit.
pub fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pct_decode_reference() {
        assert_eq!(pct_decode("%41"), b"A");
        assert_eq!(pct_decode("/a%2f"), b"/a/");
        assert_eq!(pct_decode("%4"), b"%4");
        assert_eq!(pct_decode("%"), b"%");
        assert_eq!(pct_decode("%%41%zz"), b"%A%zz");
        assert_eq!(pct_decode("%c3%A9"), "é".as_bytes());
    }
}
