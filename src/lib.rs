//! keyward: an API-key authorizer for the edge.
//!
//! # Contract of the core
//! Every module here except `edge` is pure: no I/O, no clock, no RNG, no
//! `worker` types. Time (`now_ms`) and randomness (byte arrays) are passed in
//! by the shell, so the whole decision runs and is tested natively
//! (`cargo test`, `cargo bench`). The shell (`edge`, wasm32 only) reads KV and
//! Durable Objects, proxies to the origin, and does nothing that decides.
//!
//! # Request flow
//! ```text
//!  request ──► CanonicalPath::parse ──400──► envelope
//!     │
//!     ├─► extract_credential + ApiKey::parse (prefix, length, charset, CRC32) ──401──►
//!     │        (no storage read for a malformed key)
//!     ├─► KV key:<sha256(token)> ─► KV org:<id> ∥ user:<org>:<id>    (store error ──503──►)
//!     ├─► authorize(facts, records, policy, config, now)
//!     │        revoked/expired/unknown ─401─ BAA ─402─ user/role ─401─
//!     │        secret key + Origin ─403─ route ─404/405─ scope ─403─
//!     └─► proxy: canonical path + query, body streamed, credentials and
//!         client X-Keyward-* stripped, signed identity added ──► origin
//!                                        (unreachable 502, timeout 504)
//! ```
#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod admin;
pub mod authorize;
pub mod cidr;
pub mod control;
pub mod cors;
pub mod credits;
pub mod error;
pub mod flow;
pub mod guard;
pub mod ids;
mod json;
pub mod jwt;
pub mod path;
pub mod policy;
pub mod psl;
pub mod ratelimit;
pub mod records;
pub mod reply;
pub mod scanning;
pub mod scope;
pub mod signing;
pub mod token;
pub mod turnstile;
pub mod vecmap;

#[cfg(target_arch = "wasm32")]
mod edge;

/// Decodes JSON text through [`serde_json::Value`]: every type shares the one
/// text parser and its decoder only walks a `Value` (far less wasm than a
/// text decoder per type), with `json::De`, which reads structs from objects
/// only (smaller still). Same results as `serde_json::from_str` for the
/// records keyward writes; error messages carry no line/column.
pub fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> serde_json::Result<T> {
    T::deserialize(json::De(json_value(s)?)).map_err(json_error)
}

/// [`from_json`]'s steps that do not depend on the type, once.
#[inline(never)]
fn json_value(s: &str) -> serde_json::Result<serde_json::Value> {
    serde_json::from_str(s)
}

#[cold]
#[inline(never)]
fn json_error(e: json::Error) -> serde_json::Error {
    serde::de::Error::custom(*e.0)
}

/// Sorts a short slice (a few dozen items: scopes, methods) in place, stably.
/// An insertion sort: a fraction of the wasm of `slice::sort`'s per-type copy.
pub fn sort_small<T: Ord>(v: &mut [T]) {
    for i in 1..v.len() {
        let mut j = i;
        while j > 0 && v[j - 1] > v[j] {
            v.swap(j - 1, j);
            j -= 1;
        }
    }
}

/// [`sort_small`] by a key.
pub fn sort_small_by_key<T, K: Ord>(v: &mut [T], key: impl Fn(&T) -> K) {
    for i in 1..v.len() {
        let mut j = i;
        while j > 0 && key(&v[j - 1]) > key(&v[j]) {
            v.swap(j - 1, j);
            j -= 1;
        }
    }
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    hex_into(&mut s, bytes);
    s
}

/// Appends the lowercase hex of `bytes` to `out`.
pub fn hex_into(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Encode 32 bytes at a time into a stack buffer: one bounds check and one
    // append per block instead of per character.
    let mut buf = [0u8; 64];
    for chunk in bytes.chunks(32) {
        for (i, b) in chunk.iter().enumerate() {
            buf[2 * i] = HEX[(b >> 4) as usize];
            buf[2 * i + 1] = HEX[(b & 0xf) as usize];
        }
        // Only ASCII hex digits were written.
        out.push_str(std::str::from_utf8(&buf[..2 * chunk.len()]).unwrap_or_default());
    }
}

/// Compares two secrets in constant time (with respect to their contents).
///
/// Both sides are hashed first so that the comparison also does not leak the
/// length of the expected secret: an admin token is compared this way.
pub fn secrets_equal(presented: &[u8], expected: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let a: [u8; 32] = Sha256::digest(presented).into();
    let b: [u8; 32] = Sha256::digest(expected).into();
    bool::from(a.ct_eq(&b))
}
