//! Target `control_query`: the query parameters of the control API,
//! `control::page` (with `key_cursor` and `audit_cursor`), `control::range`,
//! `control::param`, and the RFC 3339 parser under them (src/control.rs,
//! src/ids.rs).
//!
//! Properties:
//! - every refusal is a `422 VALIDATION_FAILED`;
//! - `param` returns the last pair's value decoded exactly as a reference
//!   decoder does (`%XX` with two hex digits, `+` kept, UTF-8), and refuses
//!   what that decoder refuses;
//! - `page`: a limit of 1–100 (50 when absent), a cursor that is non-empty
//!   and valid — a key cursor is a ULID, an audit cursor is what the org's
//!   store reads as a positive sequence number (`i64` > 0) — and no cursor
//!   when none was given;
//! - cursors round-trip: every cursor keyward hands out (`meta.next_cursor`:
//!   a key id, `ids::ulid`, or an audit sequence number `seq.to_string()`)
//!   comes back from `page` as itself, percent-encoded or not;
//! - `range`: `from < to`, at most 31 days apart, the last 24 hours by
//!   default and 24 hours before `to` when only `to` is given;
//! - an accepted RFC 3339 time formats back (`ids::rfc3339`) to a string
//!   that parses to the same second; every millisecond from year 0 to 9999
//!   formats and parses back to itself (to the second).

use arbitrary::Unstructured;
use keyward::control::{audit_cursor, key_cursor, page, param, range, DEFAULT_LIMIT, MAX_LIMIT, MAX_RANGE_MS};
use keyward::error::{ApiError, ErrorCode};
use keyward::ids;

use crate::ensure;

const NOW_MS: i64 = 1_800_000_000_000;
const DAY_MS: i64 = 86_400_000;

/// The check run by the fuzz target and the smoke test.
pub fn check(data: &[u8]) {
    let q = crate::text(data);
    check_query(&q, NOW_MS);
    check_time(&q);
    let mut u = Unstructured::new(data);
    let q = build_query(&mut u);
    let now = u.int_in_range(0..=253_402_300_799_999i64).unwrap_or(NOW_MS);
    check_query(&q, now);
    let ms = u.int_in_range(0..=253_402_300_799_999i64).unwrap_or(0);
    let s = ids::rfc3339(ms);
    let back = ids::parse_rfc3339(&s);
    ensure!(back == Some(ms - ms % 1000), None, "rfc3339({ms}) = {s:?}, which parses as {back:?}");
    let random: [u8; 10] = u.arbitrary().unwrap_or_default();
    let key_id = ids::ulid(u.int_in_range(0..=(1i64 << 48) - 1).unwrap_or(ms), &random);
    let seq = u.int_in_range(1..=999_999_999_999_999_999i64).unwrap_or(1).to_string();
    for (cursor, valid) in [(key_id, key_cursor as fn(&str) -> bool), (seq, audit_cursor)] {
        let encoded: String = cursor.bytes().map(|b| format!("%{b:02x}")).collect();
        for c in [&cursor, &encoded] {
            let q = format!("limit=7&cursor={c}");
            let got = page(&q, valid);
            ensure!(
                got.as_ref().is_ok_and(|p| p.cursor.as_deref() == Some(cursor.as_str()) && p.limit == 7),
                None,
                "cursor {cursor:?} handed out, page({q:?}) = {got:?}"
            );
        }
    }
}

fn is_422(e: &ApiError) -> bool {
    e.code == ErrorCode::ValidationFailed && e.status() == 422
}

/// The reference decoder: `Err` for a malformed escape or non-UTF-8.
fn decode(v: &str) -> Result<String, ()> {
    let b = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = b.get(i + 1).copied().and_then(crate::hex).ok_or(())?;
            let l = b.get(i + 2).copied().and_then(crate::hex).ok_or(())?;
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

/// The last value of `name`, decoded by the reference decoder.
fn model_param(q: &str, name: &str) -> Result<Option<String>, ()> {
    let mut found = Ok(None);
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            found = decode(v).map(Some);
            found.as_ref().map_err(|_| ())?;
        }
    }
    found
}

fn check_query(q: &str, now: i64) {
    for name in ["cursor", "limit", "from", "to"] {
        let got = param(q, name);
        let want = model_param(q, name);
        match (&got, &want) {
            (Ok(g), Ok(w)) => ensure!(g == w, None, "param({q:?}, {name:?}) = {g:?}, model {w:?}"),
            (Err(e), Err(())) => ensure!(is_422(e), None, "param({q:?}, {name:?}) = {e}"),
            _ => {
                crate::violation(None, format_args!("param({q:?}, {name:?}) = {got:?}, model {want:?}"));
                return;
            }
        }
    }
    let given = |name: &str| model_param(q, name).ok().flatten();
    for (kind, valid) in [("key", key_cursor as fn(&str) -> bool), ("audit", audit_cursor)] {
        match page(q, valid) {
            Err(e) => ensure!(is_422(&e), None, "page({q:?}, {kind}) = {e}"),
            Ok(p) => {
                ensure!((1..=MAX_LIMIT).contains(&p.limit), None, "page({q:?}, {kind}): limit {}", p.limit);
                if given("limit").is_none() {
                    ensure!(p.limit == DEFAULT_LIMIT, None, "page({q:?}, {kind}): limit {} by default", p.limit);
                }
                match p.cursor.as_deref() {
                    None => {}
                    Some(c) => {
                        ensure!(given("cursor").as_deref() == Some(c), None, "page({q:?}, {kind}): cursor {c:?}");
                        let ok = match kind {
                            "key" => ids::is_ulid(c),
                            _ => c.parse::<i64>().is_ok_and(|n| n > 0) && !c.starts_with('0'),
                        };
                        ensure!(ok, None, "page({q:?}, {kind}): accepted cursor {c:?}");
                    }
                }
            }
        }
    }
    match range(q, now) {
        Err(e) => ensure!(is_422(&e), None, "range({q:?}, {now}) = {e}"),
        Ok((from, to)) => {
            ensure!(from < to && to - from <= MAX_RANGE_MS, None, "range({q:?}, {now}) = ({from}, {to})");
            match (given("from"), given("to")) {
                (None, None) => ensure!((from, to) == (now - DAY_MS, now), None, "range({q:?}, {now}): default"),
                (None, Some(_)) => ensure!(from == to - DAY_MS, None, "range({q:?}, {now}): from"),
                (Some(_), None) => ensure!(to == now, None, "range({q:?}, {now}): to"),
                _ => {}
            }
        }
    }
}

fn check_time(s: &str) {
    let Some(t) = ids::parse_rfc3339(s) else { return };
    ensure!(s.len() >= 20 && s.is_ascii(), None, "parse_rfc3339({s:?}) = {t}");
    if (0..=253_402_300_799_999).contains(&t) {
        let again = ids::rfc3339(t);
        let back = ids::parse_rfc3339(&again);
        ensure!(back == Some(t - t % 1000), None, "parse_rfc3339({s:?}) = {t} -> {again:?} -> {back:?}");
    }
}

const NAMES: &[&str] = &["cursor", "limit", "from", "to", "x", "Cursor", "cursor ", "limit%3D", ""];
#[rustfmt::skip]
const VALUES: &[&str] = &[
    "", "0", "1", "50", "100", "101", "-1", "+1", "007", "4294967297", "x", "%ZZ", "%+1", "%2", "%", "%C3%A9", "%C3",
    "%FF", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "81ARZ3NDEKTSV4RRFFQ69G5FAV", "01arz3ndektsv4rrffq69g5fav", "42", "00",
    "000000000000000042", "9223372036854775807", "9223372036854775808", "999999999999999999", "2026-05-02T10:00:00Z",
    "2026-05-02T10:00:00%2B00:00", "2026-05-02T10:00:00+00:00", "2026-05-02T12:00:00Z", "2026-02-29T00:00:00Z",
    "2024-02-29T00:00:00Z", "2026-05-02T10:00:00.123456Z", "2026-05-02t10:00:00z", "0000-01-01T00:00:00+23:59",
    "9999-12-31T23:59:59-23:59", "2026-05-02T24:00:00Z", "2026-05-02T10:00:00.Z", "2026-05-02T10:00:00+0000",
    "2026-13-02T10:00:00Z", "2026-05-02T10:00:60Z", "%32026-05-02T10:00:00Z",
];

fn build_query(u: &mut Unstructured<'_>) -> String {
    let n = u.int_in_range(0..=5u8).unwrap_or(0);
    let pairs: Vec<String> = (0..n)
        .map(|_| {
            let name = *u.choose(NAMES).unwrap_or(&"x");
            let value = match u.int_in_range(0..=7u8).unwrap_or(0) {
                0 => u.arbitrary::<String>().unwrap_or_default(),
                1 => ids::rfc3339(u.int_in_range(-62_135_596_800_000..=253_402_300_799_999i64).unwrap_or(0)),
                2 => ids::rfc3339(u.int_in_range(NOW_MS - 40 * DAY_MS..=NOW_MS + DAY_MS).unwrap_or(NOW_MS))
                    .replace('+', "%2B"),
                _ => (*u.choose(VALUES).unwrap_or(&"")).to_owned(),
            };
            match u.int_in_range(0..=7u8).unwrap_or(0) {
                0 => name.to_owned(),
                _ => format!("{name}={value}"),
            }
        })
        .collect();
    pairs.join(*u.choose(&["&", "&", "&", "&&", ";"]).unwrap_or(&"&"))
}
