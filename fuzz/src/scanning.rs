//! Target `scanning`: the leaked-key endpoint's parsers of what GitHub (or
//! anyone) posts (src/scanning.rs): `der_signature_to_raw`, `b64_decode`,
//! `parse_batch`, `parse_keys`.
//!
//! Properties:
//! - `der_signature_to_raw` accepts exactly the minimal DER encodings of
//!   two integers of at most 32 bytes: re-encoding what it returns gives
//!   back the input byte for byte (one encoding per signature), and any
//!   raw `r || s` encodes to DER that it decodes back;
//! - `b64_decode` accepts exactly canonical padded standard base64: what it
//!   returns encodes back to the input;
//! - `parse_batch` never panics, returns at most `MAX_TOKENS` candidates,
//!   each with the token of the same position of the array (as a strict
//!   JSON reading sees it), `type` and `url` bounded;
//! - `parse_keys` never panics; every key it returns has a non-empty id
//!   and DER from a PEM body.

use arbitrary::Unstructured;
use keyward::scanning::{
    b64_decode, der_signature_to_raw, parse_batch, parse_keys, MAX_TOKENS, MAX_TYPE_LEN, MAX_URL_LEN,
};
use serde_json::Value;

use crate::ensure;

/// Minimal DER of a non-negative big-endian integer.
fn der_int(bytes: &[u8]) -> Vec<u8> {
    let digits: &[u8] = match bytes.iter().position(|&b| b != 0) {
        Some(i) => &bytes[i..],
        None => &[0],
    };
    let mut body = Vec::with_capacity(digits.len() + 1);
    if digits[0] & 0x80 != 0 {
        body.push(0);
    }
    body.extend_from_slice(digits);
    let mut out = vec![0x02, body.len() as u8];
    out.extend(body);
    out
}

fn der_of(raw: &[u8; 64]) -> Vec<u8> {
    let mut body = der_int(&raw[..32]);
    body.extend(der_int(&raw[32..]));
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

fn b64_std(b: &[u8]) -> String {
    let url = keyward::jwt::b64url_encode(b).replace('-', "+").replace('_', "/");
    let pad = (4 - url.len() % 4) % 4;
    format!("{url}{}", "=".repeat(pad))
}

/// The check run by the fuzz target and the smoke test.
pub fn check(data: &[u8]) {
    if let Some(raw) = der_signature_to_raw(data) {
        ensure!(der_of(&raw) == data, None, "der_signature_to_raw accepts {data:02x?}, written {:02x?}", der_of(&raw));
    }
    let text = crate::text(data);
    for line in text.split('\n').take(crate::MAX_LINES) {
        if let Some(d) = b64_decode(line) {
            ensure!(b64_std(&d) == line, None, "b64_decode accepts {line:?}, written {:?}", b64_std(&d));
        }
    }
    if let Ok(batch) = parse_batch(data) {
        ensure!(batch.len() <= MAX_TOKENS, None, "{} candidates", batch.len());
        let v: Value = serde_json::from_slice(data).unwrap_or(Value::Null);
        let tokens: Vec<&str> =
            v.as_array().map(|a| a.iter().filter_map(|m| m.get("token")?.as_str()).collect()).unwrap_or_default();
        let got: Vec<&str> = batch.iter().map(|c| c.token.as_str()).collect();
        ensure!(got == tokens, None, "parse_batch read {got:?}, JSON says {tokens:?}");
        for c in &batch {
            ensure!(
                c.token_type.chars().count() <= MAX_TYPE_LEN && c.url.chars().count() <= MAX_URL_LEN,
                None,
                "unbounded fields"
            );
        }
    }
    if let Ok(keys) = parse_keys(&text) {
        ensure!(keys.iter().all(|k| !k.id.is_empty() && !k.spki.is_empty()), None, "empty key from {text:?}");
    }

    // Structured: any raw signature round-trips through its DER.
    let mut u = Unstructured::new(data);
    let mut raw = [0u8; 64];
    for b in raw.iter_mut() {
        *b = u.arbitrary().unwrap_or(0);
    }
    if u.arbitrary::<bool>().unwrap_or(false) {
        raw[..8].fill(0);
    }
    let der = der_of(&raw);
    ensure!(der_signature_to_raw(&der) == Some(raw), None, "the DER of {raw:02x?} does not decode back");
    let bytes: Vec<u8> = (0..u.int_in_range(0..=40usize).unwrap_or(0)).map(|_| u.arbitrary().unwrap_or(7)).collect();
    ensure!(
        b64_decode(&b64_std(&bytes)).as_deref() == Some(&bytes[..]),
        None,
        "base64 of {bytes:?} does not decode back"
    );
}
