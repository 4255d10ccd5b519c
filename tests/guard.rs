//! End to end: exact rate limits and immediate revocation through each key's
//! Durable Object, on `wrangler dev`. Run with `make test`.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::OnceLock;

use common::*;
use serde_json::json;

fn h() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| Harness::start(Options { origin_url: None, vars: vec![] }))
}

fn chat(h: &Harness, key: &str) -> Resp {
    let auth = format!("Bearer {key}");
    h.send("POST", "/v1/ai/chat", &[("authorization", &auth), ("content-type", "application/json")], Some(b"{}"))
}

fn origin_count(h: &Harness, key_id: &str) -> usize {
    h.origin_log().iter().filter(|e| e["headers"]["x-keyward-key-id"] == key_id).count()
}

#[test]
fn default_limit_headers_on_every_proxied_response() {
    let org = h().org(true);
    let (key, _) = h().key(&org, json!({"name": "k", "scopes": ["ai:chat"]}));
    for i in 0..3u32 {
        let r = chat(h(), &key);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("ratelimit-limit"), Some("60"));
        assert_eq!(r.header("ratelimit-remaining"), Some((59 - i).to_string().as_str()));
        let reset: i64 = r.header("ratelimit-reset").unwrap().parse().unwrap();
        assert!((60..=61).contains(&reset), "reset {reset}");
        assert_eq!(r.header("x-origin"), Some("demo"));
    }
}

#[test]
fn hundred_concurrent_requests_admit_exactly_the_limit() {
    let org = h().org(true);
    let (key, key_id) = h().key(
        &org,
        json!({"name": "k", "scopes": ["ai:chat"], "rate_limits": [{"name": "minute", "limit": 20, "window_seconds": 60}]}),
    );
    let responses = concurrent_chats(h().port, &key, 100);
    let ok = responses.iter().filter(|r| r.status == 200).count();
    let limited: Vec<&Resp> = responses.iter().filter(|r| r.status == 429).collect();
    assert_eq!((ok, limited.len()), (20, 80), "statuses: {:?}", responses.iter().map(|r| r.status).collect::<Vec<_>>());
    assert_eq!(origin_count(h(), &key_id), 20, "exactly the admitted requests reached the origin");
    for r in limited {
        let v = r.assert_error(429, "RATE_LIMITED");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        let retry: i64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
        assert!((1..=61).contains(&retry), "retry-after {retry}");
        assert_eq!(r.header("ratelimit-limit"), Some("20"));
        assert_eq!(r.header("ratelimit-remaining"), Some("0"));
        assert!(r.header("ratelimit-reset").is_some());
    }
    let mut remaining: Vec<u32> = responses
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.header("ratelimit-remaining").unwrap().parse().unwrap())
        .collect();
    remaining.sort_unstable();
    assert_eq!(remaining, (0..20).collect::<Vec<_>>(), "each admitted request saw a distinct count");
}

#[test]
fn an_hourly_limit_refusal_consumes_nothing_else() {
    let org = h().org(true);
    let (key, key_id) = h().key(
        &org,
        json!({"name": "k", "scopes": ["ai:chat"], "rate_limits": [{"name": "hour", "limit": 2, "window_seconds": 3600}]}),
    );
    assert_eq!(chat(h(), &key).status, 200);
    let r = chat(h(), &key);
    assert_eq!(r.status, 200);
    // Tightest now: the hourly limit with 0 left.
    assert_eq!(r.header("ratelimit-limit"), Some("2"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    let r = chat(h(), &key);
    r.assert_error(429, "RATE_LIMITED");
    let retry: i64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((3500..=3661).contains(&retry), "retry-after {retry}");
    assert_eq!(origin_count(h(), &key_id), 2);
}

#[test]
fn revocation_holds_even_when_kv_still_serves_the_old_record() {
    // Its own worker: `wrangler kv` locks the local KV database while it
    // runs, which would disturb the other tests' requests.
    let own = Harness::start(Options { origin_url: None, vars: vec![] });
    let h = || &own;
    let org = h().org(true);
    let (key, key_id) = h().key(&org, json!({"name": "k", "scopes": ["ai:chat"]}));
    assert_eq!(chat(h(), &key).status, 200);
    let hash = sha256_hex(key.as_bytes());
    let kv_key = format!("key:{hash}");
    let before = h().kv_get(&kv_key).expect("the key's KV record");
    let stale: serde_json::Value = serde_json::from_str(&before).unwrap();
    assert!(stale.get("revoked_at").is_none());
    assert!(!before.contains(&key), "KV never holds the plaintext");

    let r = h().admin("DELETE", &format!("/admin/orgs/{org}/api_keys/{key_id}"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    // Simulate an edge location whose KV has not caught up: put the
    // pre-revocation record back.
    h().kv_put(&kv_key, &stale.to_string());
    let now: serde_json::Value = serde_json::from_str(&h().kv_get(&kv_key).unwrap()).unwrap();
    assert_eq!(now, stale, "KV serves the stale, unrevoked record");
    let before = origin_count(h(), &key_id);
    for _ in 0..3 {
        let v = chat(h(), &key).assert_error(401, "INVALID_API_KEY");
        assert_eq!(v["error"]["message"], "The API key is missing, malformed, expired, revoked or unknown.");
    }
    // Not even a route it may not call, another origin or an unknown route
    // tells the revoked key apart from an unknown one.
    let auth = format!("Bearer {key}");
    for (m, p, extra) in [
        ("GET", "/v1/audit", None),
        ("GET", "/v1/nope", None),
        ("POST", "/v1/ai/chat", Some(("origin", "https://x.com"))),
    ] {
        let mut hs = vec![("authorization", auth.as_str())];
        hs.extend(extra);
        h().send(m, p, &hs, Some(b"{}")).assert_error(401, "INVALID_API_KEY");
    }
    assert_eq!(origin_count(h(), &key_id), before, "no request of a revoked key reached the origin");
}

#[test]
fn counters_and_tombstones_survive_a_restart() {
    let mut own = Harness::start(Options { origin_url: None, vars: vec![] });
    let org = own.org(true);
    let (key, _) = own.key(
        &org,
        json!({"name": "k", "scopes": ["ai:chat"], "rate_limits": [{"name": "minute", "limit": 3, "window_seconds": 60}]}),
    );
    let (revoked, revoked_id) = own.key(&org, json!({"name": "r", "scopes": ["ai:chat"]}));
    for _ in 0..3 {
        assert_eq!(chat(&own, &key).status, 200);
    }
    assert_eq!(own.admin("DELETE", &format!("/admin/orgs/{org}/api_keys/{revoked_id}"), None).status, 200);
    let hash = sha256_hex(revoked.as_bytes());
    let stale = own.kv_get(&format!("key:{hash}")).expect("the revoked key's KV record");

    own.restart_worker();

    chat(&own, &key).assert_error(429, "RATE_LIMITED");
    // Even with the stale record put back, the tombstone persisted.
    let mut v: serde_json::Value = serde_json::from_str(&stale).unwrap();
    v.as_object_mut().unwrap().remove("revoked_at");
    own.kv_put(&format!("key:{hash}"), &v.to_string());
    chat(&own, &revoked).assert_error(401, "INVALID_API_KEY");
}
