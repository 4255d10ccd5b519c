//! Target `admin_json`: the request bodies of the admin and control APIs,
//! `admin::parse_org`, `parse_user`, `parse_key`, `parse_patch` (with
//! `apply_patch`) and `parse_roll` (src/admin.rs).
//!
//! Properties, for any bytes: the answer is `Ok` or a `422
//! VALIDATION_FAILED` whose message names a field (`<field>: …`, where the
//! field is `body`, one the route reads, such a field's item
//! (`allowed_origins[2]`), or a key the body holds, for an unknown one),
//! never a panic. An accepted body
//! means what the README says it may:
//! - org: a trimmed name of 1–100 characters without control, bidi or
//!   zero-width characters;
//! - user: a role of the policy;
//! - key: a valid name; 1–32 scopes, sorted, distinct, each grantable by
//!   the policy; a widget key holds only widget scopes and 1–20 distinct
//!   allowed origins (each equal to its own re-parse), a secret key none
//!   and no resource id, visitor limits or Turnstile; an expiry later than
//!   now; a user and a resource id of 1–64 `[A-Za-z0-9_-]`; at most 4 valid
//!   rate limits (and visitor limits) with distinct names, a widget key's
//!   visitor limits leaving room for several visitors within its own
//!   (`ratelimit::check_visitor_limits`); the consistency asked for (or the
//!   default, `consistency_given` false); credits of at most 2^40, a
//!   refill of at least 1, stamped with now;
//! - update: at least one field, each as at creation; applied to a secret
//!   and a widget key, the result (or a 422 naming a field) keeps the
//!   key's id, kind, user, expiry and mode, holds only scopes the key had,
//!   and is one version later;
//! - roll: a grace of 0 to a week, in milliseconds.
//!
//! Bodies are the raw bytes, and a JSON object built from the fields these
//! routes read with values drawn from valid, edge and hostile ones.

use arbitrary::Unstructured;
use keyward::admin::{
    apply_patch, parse_key, parse_org, parse_patch, parse_roll, parse_user, KeyInput, MAX_GRACE_SECONDS,
    MAX_META_BYTES, MAX_NAME_CHARS, MAX_ORIGINS, MAX_SCOPES,
};
use keyward::cors::OriginPattern;
use keyward::credits::{CreditSpec, MAX_CREDITS};
use keyward::error::{ApiError, ErrorCode};
use keyward::policy::Policy;
use keyward::ratelimit::{check_visitor_limits, merge_limits, RateLimit};
use keyward::records::Consistency;
use keyward::records::KeyRecord;
use keyward::token::KeyKind;
use serde_json::{Map, Value};

use crate::ensure;

/// `now` for expiries: 2027-01-15.
pub const NOW_MS: i64 = 1_800_000_000_000;

fn policy() -> &'static Policy {
    static P: std::sync::OnceLock<Policy> = std::sync::OnceLock::new();
    P.get_or_init(|| match Policy::default_policy() {
        Ok(p) => p,
        Err(e) => panic!("the shipped policy does not parse: {e}"),
    })
}

/// The check run by the fuzz target and the smoke test.
pub fn check(data: &[u8]) {
    check_body(data);
    let mut u = Unstructured::new(data);
    let body = build_body(&mut u);
    check_body(body.as_bytes());
}

fn check_body(body: &[u8]) {
    let pol = policy();
    let org = parse_org(body);
    check_err("parse_org", body, org.as_ref().err());
    if let Ok(o) = &org {
        check_name(body, &o.name);
    }
    let user = parse_user(body, pol);
    check_err("parse_user", body, user.as_ref().err());
    if let Ok(u) = &user {
        ensure!(pol.role(&u.role).is_some(), None, "parse_user accepted role {:?}", u.role);
    }
    for default in [Consistency::Strict, Consistency::Leased] {
        let key = parse_key(body, pol, NOW_MS, default);
        check_err("parse_key", body, key.as_ref().err());
        if let Ok(k) = &key {
            check_key(body, k, default);
        }
    }
    let patch = parse_patch(body, pol, NOW_MS);
    check_err("parse_patch", body, patch.as_ref().err());
    if let Ok(p) = &patch {
        let text = crate::text(body);
        ensure!(!p.fields().is_empty(), None, "{text:?}: an update of nothing");
        if let Some(scopes) = &p.scopes {
            ensure!(!scopes.is_empty() && scopes.windows(2).all(|w| w[0] < w[1]), None, "{text:?}: scopes {scopes:?}");
        }
        if let Some(Some(m)) = &p.meta {
            ensure!(m.len() <= MAX_META_BYTES, None, "{text:?}: meta of {} bytes", m.len());
        }
        ensure!(!matches!(p.credits, Some(None)), None, "{text:?}: credits removed");
        if let Some(Some(c)) = &p.credits {
            check_credits(&text, c);
        }
        for key in [secret(), widget()] {
            let after = apply_patch(&key, p, pol);
            check_err("apply_patch", body, after.as_ref().err());
            if let Ok(a) = after {
                ensure!(
                    a.id == key.id
                        && a.kind == key.kind
                        && a.user_id == key.user_id
                        && a.expires_at == key.expires_at
                        && a.consistency == key.consistency
                        && a.version == key.version + 1
                        && a.scopes.iter().all(|s| s.within(&key.scopes)),
                    None,
                    "{text:?}: {key:?} became {a:?}"
                );
                if a.kind == KeyKind::Secret {
                    ensure!(a.allowed_origins.is_empty() && a.visitor_rate_limits.is_empty(), None, "{text:?}: {a:?}");
                } else {
                    ensure!(a.allowed_ips.is_empty() && !a.allowed_origins.is_empty(), None, "{text:?}: {a:?}");
                }
            }
        }
    }
    let roll = parse_roll(body);
    check_err("parse_roll", body, roll.as_ref().err());
    if let Ok(ms) = roll {
        ensure!((0..=MAX_GRACE_SECONDS * 1000).contains(&ms) && ms % 1000 == 0, None, "grace {ms} ms");
    }
}

fn check_credits(text: &str, c: &CreditSpec) {
    ensure!(
        c.remaining <= MAX_CREDITS
            && c.set_at == NOW_MS
            && c.refill.is_none_or(|r| (1..=MAX_CREDITS).contains(&r.amount)),
        None,
        "{text:?}: credits {c:?}"
    );
}

/// The keys an update is applied to.
fn secret() -> KeyRecord {
    let mut k = KeyRecord::synthetic("01JQ0000000000000000000000".into(), "org_1", NOW_MS - 1);
    k.scopes =
        ["ai:chat", "ai:embeddings", "control:read"].iter().filter_map(|s| keyward::scope::Scope::parse(s)).collect();
    k.user_id = Some("u_1".into());
    k.expires_at = Some(NOW_MS + 1);
    k.version = 3;
    k
}

fn widget() -> KeyRecord {
    let mut k = secret();
    k.kind = KeyKind::Widget;
    k.scopes.truncate(1);
    k.allowed_origins = OriginPattern::parse("https://a.com").into_iter().collect();
    k
}

/// Fields the admin and control bodies read.
#[rustfmt::skip]
const READ: &[&str] = &[
    "name", "baa_active", "role", "disabled", "scopes", "kind", "expires_at", "user_id", "rate_limits",
    "allowed_origins", "resource_id", "visitor_rate_limits", "turnstile_required", "consistency",
    "allowed_ips", "meta", "credits", "credits.remaining", "credits.refill", "credits.refill.amount",
    "credits.refill.interval", "grace_seconds",
];

/// Every object key in a JSON value, as an error message shows it (its
/// first 40 characters).
fn keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                out.push(k.chars().take(40).collect());
                keys(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

fn names_a_field(body: &[u8], message: &str) -> bool {
    if let Some(unknown) = message.strip_suffix(": unknown field") {
        let mut found = Vec::new();
        if let Ok(v) = serde_json::from_slice::<Value>(body) {
            keys(&v, &mut found);
        }
        if found.iter().any(|k| k == unknown) {
            return true;
        }
    }
    let Some((field, _)) = message.split_once(": ") else { return false };
    let item = field.split_once('[').is_some_and(|(f, i)| {
        READ.contains(&f) && i.strip_suffix(']').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    });
    field == "body" || READ.contains(&field) || item
}

fn check_err(f: &str, body: &[u8], e: Option<&ApiError>) {
    let Some(e) = e else { return };
    ensure!(
        e.code == ErrorCode::ValidationFailed && e.status() == 422 && names_a_field(body, e.message()),
        None,
        "{f}({:?}) = {e}",
        crate::text(body)
    );
}

fn check_name(body: &[u8], name: &str) {
    let invisible = |c: char| matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}');
    ensure!(
        !name.is_empty()
            && name.trim() == name
            && name.chars().count() <= MAX_NAME_CHARS
            && !name.chars().any(|c| c.is_control() || invisible(c)),
        None,
        "accepted name {name:?} from {:?}",
        crate::text(body)
    );
}

fn id_ok(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_limits(text: &str, limits: &[RateLimit]) {
    ensure!(limits.len() <= 4, None, "{text:?}: {} limits", limits.len());
    for (i, l) in limits.iter().enumerate() {
        ensure!(l.validate().is_ok(), None, "{text:?}: invalid limit {l:?}");
        ensure!(limits[..i].iter().all(|o| o.name != l.name), None, "{text:?}: duplicate limit {}", l.name);
    }
}

fn check_key(body: &[u8], k: &KeyInput, default: Consistency) {
    let pol = policy();
    let text = crate::text(body);
    check_name(body, &k.name);
    ensure!(!k.scopes.is_empty() && k.scopes.len() <= MAX_SCOPES, None, "{text:?}: {} scopes", k.scopes.len());
    ensure!(k.scopes.windows(2).all(|w| w[0] < w[1]), None, "{text:?}: scopes not sorted and distinct");
    ensure!(k.scopes.iter().all(|s| pol.is_grantable(s)), None, "{text:?}: ungrantable scope in {:?}", k.scopes);
    match k.kind {
        KeyKind::Widget => {
            ensure!(
                k.scopes.iter().all(|s| pol.widget_scopes().contains(s)),
                None,
                "{text:?}: widget key with {:?}",
                k.scopes
            );
            let n = k.allowed_origins.len();
            ensure!((1..=MAX_ORIGINS).contains(&n), None, "{text:?}: widget key with {n} origins");
            for (i, o) in k.allowed_origins.iter().enumerate() {
                ensure!(!k.allowed_origins[..i].contains(o), None, "{text:?}: duplicate origin {o}");
                ensure!(OriginPattern::parse(&o.to_string()).as_ref() == Ok(o), None, "{text:?}: origin {o}");
            }
            ensure!(k.resource_id.as_deref().is_none_or(id_ok), None, "{text:?}: resource {:?}", k.resource_id);
            let own = merge_limits(pol.default_rate_limits(), &k.rate_limits);
            let visitor =
                if k.visitor_rate_limits.is_empty() { pol.widget_ip_rate_limits() } else { &k.visitor_rate_limits };
            let room = check_visitor_limits(&own, visitor);
            ensure!(room.is_ok(), None, "{text:?}: visitor limits {visitor:?} within {own:?}: {room:?}");
        }
        KeyKind::Secret => {
            ensure!(
                k.allowed_origins.is_empty()
                    && k.resource_id.is_none()
                    && k.visitor_rate_limits.is_empty()
                    && !k.turnstile_required,
                None,
                "{text:?}: secret key with a widget key's field"
            );
        }
    }
    ensure!(k.expires_at.is_none_or(|t| t > NOW_MS), None, "{text:?}: expires_at {:?} not after now", k.expires_at);
    ensure!(k.user_id.as_deref().is_none_or(id_ok), None, "{text:?}: user_id {:?}", k.user_id);
    for limits in [&k.rate_limits, &k.visitor_rate_limits] {
        check_limits(&text, limits);
    }
    if !k.consistency_given {
        ensure!(k.consistency == default, None, "{text:?}: consistency {:?} without asking", k.consistency);
    }
    if let Some(c) = &k.credits {
        check_credits(&text, c);
    }
}

#[rustfmt::skip]
const FIELDS: &[&str] = &[
    "name", "name", "scopes", "scopes", "kind", "kind", "expires_at", "user_id", "rate_limits", "allowed_origins",
    "allowed_origins", "resource_id", "visitor_rate_limits", "turnstile_required", "consistency", "baa_active",
    "role", "disabled", "scope", "", "__proto__", "NAME", "credits", "credits", "meta", "allowed_ips",
    "grace_seconds", "grace_seconds",
];
#[rustfmt::skip]
const STRINGS: &[&str] = &[
    "x", " chat ", "", " ", "ai:chat", "ai:*", "*", "control:read", "control:*", "ai:chatter", "billing:*", "widget",
    "secret", "root", "strict", "leased", "Strict", "admin", "viewer", "operator", "u_1", "a b", "a/b", "bot_1",
    "2030-01-01T00:00:00Z", "2020-01-01T00:00:00Z", "2027-01-15T08:00:00.001Z", "2030-02-30T00:00:00Z",
    "9999-12-31T23:59:59.999-23:59", "0000-01-01T00:00:00+23:59", "tomorrow", "https://a.com",
    "HTTPS://Shop.Example.com", "https://*.example.com", "https://*.com", "https://a.com/", "https://a.com/x",
    "http://localhost:8789", "https://a.com:443", "null", "a\u{0}b", "evil\u{202E}txt", "a\u{200B}b", "\u{feff}x",
    "é", "hour", "minute", "hourly", "daily", "monthly", "203.0.113.0/24",
];

fn build_value(u: &mut Unstructured<'_>, depth: u8) -> Value {
    match u.int_in_range(0..=11u8).unwrap_or(0) {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary().unwrap_or(false)),
        2 => Value::from(u.arbitrary::<i64>().unwrap_or(0)),
        3 => Value::from(
            *u.choose(&[
                0i64,
                1,
                -1,
                4,
                60,
                3600,
                1_000_000,
                1_000_001,
                2_678_400,
                2_678_401,
                604_800,
                604_801,
                1 << 40,
                (1 << 40) + 1,
            ])
            .unwrap_or(&0),
        ),
        4 => Value::from(u.arbitrary::<f64>().unwrap_or(0.5)),
        5 => Value::String(u.arbitrary::<String>().unwrap_or_default()),
        6 => Value::String("é".repeat(u.int_in_range(99..=102usize).unwrap_or(100))),
        7 | 8 if depth > 0 => {
            let n = u.int_in_range(0..=5usize).unwrap_or(0);
            Value::Array((0..n).map(|_| build_value(u, depth - 1)).collect())
        }
        9 if depth > 0 => {
            let mut m = Map::new();
            for _ in 0..u.int_in_range(0..=4u8).unwrap_or(0) {
                let k = *u
                    .choose(&[
                        "name",
                        "name",
                        "limit",
                        "limit",
                        "window_seconds",
                        "window_seconds",
                        "burst",
                        "remaining",
                        "remaining",
                        "refill",
                        "amount",
                        "interval",
                        "interval",
                    ])
                    .unwrap_or(&"x");
                m.insert(k.to_owned(), build_value(u, depth - 1));
            }
            Value::Object(m)
        }
        _ => Value::String((*u.choose(STRINGS).unwrap_or(&"x")).to_owned()),
    }
}

/// A JSON object of the fields these routes read, or (now and then) some
/// other JSON text.
fn build_body(u: &mut Unstructured<'_>) -> String {
    let mut m = Map::new();
    for _ in 0..u.int_in_range(0..=9u8).unwrap_or(0) {
        let k = *u.choose(FIELDS).unwrap_or(&"name");
        m.insert(k.to_owned(), build_value(u, 3));
    }
    match u.int_in_range(0..=15u8).unwrap_or(0) {
        0 => build_value(u, 3).to_string(),
        1 => format!("{}{}", Value::Object(m), *u.choose(&["", " ", "\n", "x", "}", "\u{0}"]).unwrap_or(&"")),
        _ => Value::Object(m).to_string(),
    }
}
