//! Turnstile on the request path: a widget key with `turnstile_required`
//! admits a visitor with a valid visitor token or a verified Turnstile
//! token, and refuses the others before its guard is asked.

use super::harness::*;
use super::*;

const SHOP: &str = "https://shop.example.com";

fn setup(consistency: Consistency) -> (Env, Store, Key) {
    let env = env();
    let mut store = Store::default();
    store.org(true);
    let k = store.key(7, KeyKind::Widget, Consistency::Strict, 1000);
    store.edit_key(&k, |r| {
        r.turnstile_required = true;
        r.consistency = consistency;
    });
    (env, store, k)
}

fn with(k: &Key, ip: &str, visitor: Option<&str>, turnstile: Option<&str>) -> Req {
    Req { visitor_token: visitor.map(Into::into), turnstile: turnstile.map(Into::into), ..widget(k, SHOP, ip) }
}

fn refusal(o: Outcome) -> Refusal {
    match o {
        Outcome::Refused(r) => r,
        Outcome::Admitted(..) => panic!("admitted"),
    }
}

#[test]
fn a_visitor_passes_once_then_carries_its_token() {
    let (env, mut store, k) = setup(Consistency::Strict);
    let mut iso = Isolate::default();
    // No token: refused before the guard, readable by the page (CORS).
    let r = refusal(one(&env, &mut store, &mut iso, with(&k, "203.0.113.9", None, None), T0));
    assert_eq!(r.error.code, ErrorCode::TurnstileRequired);
    assert_eq!(r.header("access-control-allow-origin"), Some(SHOP));
    assert_eq!((store.guard_calls, store.siteverify.len()), (0, 0));
    // A Turnstile token solved on this page: verified once, a visitor token issued.
    let (o, issued) =
        one_issued(&env, &mut store, &mut iso, with(&k, "203.0.113.9", None, Some("pass:shop.example.com")), T0 + 1);
    assert!(matches!(o, Outcome::Admitted(..)), "{o:?}");
    assert_eq!(store.siteverify, [("pass:shop.example.com".to_owned(), Some("203.0.113.9".to_owned()))]);
    let token = issued.expect("a visitor token");
    // The token admits this visitor, with no further verification...
    for i in 0..5 {
        let (o, again) =
            one_issued(&env, &mut store, &mut iso, with(&k, "203.0.113.9", Some(&token), None), T0 + 10 + i);
        assert!(matches!(o, Outcome::Admitted(..)), "{o:?}");
        assert_eq!(again, None, "nothing new to issue");
    }
    assert_eq!(store.siteverify.len(), 1);
    // ...but not another visitor, nor this one once it expired.
    let other = one(&env, &mut store, &mut iso, with(&k, "198.51.100.4", Some(&token), None), T0 + 20);
    assert_eq!(refusal(other).error.code, ErrorCode::TurnstileRequired);
    let ttl = env.config.visitor_token_ttl_ms;
    let late = one(&env, &mut store, &mut iso, with(&k, "203.0.113.9", Some(&token), None), T0 + 1 + ttl);
    assert_eq!(refusal(late).error.code, ErrorCode::TurnstileRequired);
    // Another key of the deployment does not take it either.
    let k2 = store.key(8, KeyKind::Widget, Consistency::Strict, 1000);
    store.edit_key(&k2, |r| r.turnstile_required = true);
    let r = refusal(one(&env, &mut store, &mut iso, with(&k2, "203.0.113.9", Some(&token), None), T0 + 30));
    assert_eq!(r.error.code, ErrorCode::TurnstileRequired);
}

#[test]
fn an_ipv6_visitor_keeps_its_token_across_its_prefix() {
    let (env, mut store, k) = setup(Consistency::Strict);
    let mut iso = Isolate::default();
    let (_, issued) =
        one_issued(&env, &mut store, &mut iso, with(&k, "2001:db8:1:2::9", None, Some("pass:shop.example.com")), T0);
    let token = issued.unwrap();
    let same_48 = one(&env, &mut store, &mut iso, with(&k, "2001:db8:1:ffff::1", Some(&token), None), T0 + 1);
    assert!(matches!(same_48, Outcome::Admitted(..)));
    let other_48 = one(&env, &mut store, &mut iso, with(&k, "2001:db8:2::1", Some(&token), None), T0 + 2);
    assert_eq!(refusal(other_48).error.code, ErrorCode::TurnstileRequired);
}

#[test]
fn tokens_turnstile_refuses_are_refused() {
    let (env, mut store, k) = setup(Consistency::Strict);
    let mut iso = Isolate::default();
    let cases = [
        ("fail", ErrorCode::TurnstileRequired, Some("invalid-input-response")),
        ("pass:evil.example", ErrorCode::TurnstileRequired, Some("another site")),
        ("a b", ErrorCode::TurnstileRequired, Some("malformed")),
        ("down", ErrorCode::ServiceUnavailable, None),
    ];
    for (i, (token, code, says)) in cases.into_iter().enumerate() {
        let (o, issued) =
            one_issued(&env, &mut store, &mut iso, with(&k, "203.0.113.9", None, Some(token)), T0 + i as i64);
        let r = refusal(o);
        assert_eq!(r.error.code, code, "{token}");
        if let Some(says) = says {
            assert!(r.error.message().contains(says), "{token}: {}", r.error.message());
        }
        assert_eq!(issued, None);
    }
    // The malformed token never reached siteverify; nothing reached the guard.
    let sent: Vec<&str> = store.siteverify.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(sent, ["fail", "pass:evil.example", "down"]);
    assert_eq!(store.guard_calls, 0);
}

#[test]
fn a_disallowed_origin_is_refused_as_such_and_never_verified() {
    let (env, mut store, k) = setup(Consistency::Strict);
    let mut iso = Isolate::default();
    let evil = Req { origin: Some("https://evil.example"), ..with(&k, "203.0.113.9", None, Some("pass:evil.example")) };
    assert_eq!(one(&env, &mut store, &mut iso, evil, T0).code(), Some(ErrorCode::OriginNotAllowed));
    assert!(store.siteverify.is_empty());
}

#[test]
fn a_flood_without_tokens_costs_the_guard_nothing() {
    let (env, mut store, k) = setup(Consistency::Strict);
    let mut iso = Isolate::default();
    for i in 0..200 {
        let ip = format!("198.51.{}.{}", i / 200, i % 200);
        let r = refusal(one(&env, &mut store, &mut iso, with(&k, &ip, None, None), T0 + i));
        assert_eq!(r.error.code, ErrorCode::TurnstileRequired);
    }
    assert_eq!((store.guard_calls, store.kv_reads), (0, 1), "one key read, no guard call");
    // The refusals are reported with the next call (usage), not lost.
    run_due(&env, &mut store, &mut iso, T0 + 10 * LEASE);
    assert_eq!(store.calls_by_kind.get("refused"), Some(&1));
}

#[test]
fn leased_keys_verify_visitors_too() {
    let (env, mut store, k) = setup(Consistency::Leased);
    let mut iso = Isolate::default();
    assert_eq!(
        one(&env, &mut store, &mut iso, with(&k, "203.0.113.9", None, None), T0).code(),
        Some(ErrorCode::TurnstileRequired)
    );
    let (o, issued) =
        one_issued(&env, &mut store, &mut iso, with(&k, "203.0.113.9", None, Some("pass:shop.example.com")), T0 + 1);
    assert!(matches!(o, Outcome::Admitted(..)));
    let token = issued.unwrap();
    let calls = store.guard_calls;
    for i in 0..5 {
        let o = one(&env, &mut store, &mut iso, with(&k, "203.0.113.9", Some(&token), None), T0 + 2 + i);
        assert!(matches!(o, Outcome::Admitted(..)));
    }
    assert!(store.guard_calls <= calls + 1, "served from the lease");
}

#[test]
fn without_a_turnstile_secret_a_token_cannot_be_verified() {
    let (mut env, mut store, k) = setup(Consistency::Strict);
    env.config.turnstile = false;
    let mut iso = Isolate::default();
    let o = one(&env, &mut store, &mut iso, with(&k, "203.0.113.9", None, Some("pass:shop.example.com")), T0);
    assert_eq!(o.code(), Some(ErrorCode::ServiceUnavailable), "fail closed");
    assert!(store.siteverify.is_empty());
    env.config.visitor_tokens = None;
    let o = one(&env, &mut store, &mut iso, with(&k, "203.0.113.9", Some("v1.1.x"), None), T0 + 1);
    assert_eq!(o.code(), Some(ErrorCode::ServiceUnavailable));
}

#[test]
fn verifications_per_visitor_are_capped_in_the_isolate() {
    let (env, mut store, k) = setup(Consistency::Strict);
    let mut iso = Isolate::default();
    let cap = MAX_VERIFICATIONS_PER_MINUTE as i64;
    // Junk tokens from one visitor: the first `cap` are asked of
    // siteverify, the rest refused without a call.
    for i in 0..cap + 3 {
        let r = refusal(one(&env, &mut store, &mut iso, with(&k, "203.0.113.9", None, Some("fail")), T0 + i));
        assert_eq!(r.error.code, ErrorCode::TurnstileRequired);
        assert_eq!(r.error.message().contains("Too many"), i >= cap, "{i}: {}", r.error.message());
    }
    assert_eq!(store.siteverify.len() as i64, cap);
    // Another visitor is verified; a real pass from the capped one waits a minute.
    let other = one(&env, &mut store, &mut iso, with(&k, "198.51.100.4", None, Some("pass:shop.example.com")), T0 + 10);
    assert!(matches!(other, Outcome::Admitted(..)), "{other:?}");
    let capped = with(&k, "203.0.113.9", None, Some("pass:shop.example.com"));
    assert!(refusal(one(&env, &mut store, &mut iso, capped.clone_req(), T0 + 59_999))
        .error
        .message()
        .contains("Too many"));
    let o = one(&env, &mut store, &mut iso, capped, T0 + 60_000);
    assert!(matches!(o, Outcome::Admitted(..)), "{o:?}");
}
