//! End to end: leased keys, the guard's rows and what is refused without
//! asking the guard, on `wrangler dev` (workerd, local KV and Durable
//! Objects) with a real origin. Run with `make test`.
//!
//! Times are read on this machine's clock, which is the worker's clock too
//! (one machine): "sent after the change answered + LEASE_MS" is exact here.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};

/// The default `LEASE_MS`.
const LEASE_MS: i64 = 1000;

fn h() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| Harness::start(Options { origin_url: None, vars: vec![] }))
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn chat_on(h: &Harness, key: &str, extra: &[(&str, &str)]) -> Resp {
    let auth = format!("Bearer {key}");
    let mut headers = vec![("authorization", auth.as_str()), ("content-type", "application/json")];
    headers.extend_from_slice(extra);
    h.send("POST", "/v1/ai/chat", &headers, Some(b"{}"))
}

fn leased(limit: u32) -> Value {
    json!({"name": "leased", "scopes": ["ai:chat", "control:read"], "consistency": "leased",
           "rate_limits": [{"name": "minute", "limit": limit, "window_seconds": 60}]})
}

fn origin_saw_key(h: &Harness, key_id: &str) -> Vec<Value> {
    h.origin_log().into_iter().filter(|e| e["headers"]["x-keyward-key-id"] == key_id).collect()
}

/// Sends requests of `key` back to back from one thread until stopped; each
/// carries its send time (`x-sent-at`, ms) and is recorded with its status.
struct Hammer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(i64, u16, String)>>,
}

impl Hammer {
    fn start(port: u16, key: &str, method: &'static str, path: &'static str) -> Hammer {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, key) = (stop.clone(), key.to_owned());
        let thread = std::thread::spawn(move || {
            let mut out = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let sent = now_ms().to_string();
                let auth = format!("Bearer {key}");
                let body = (method == "POST").then_some(&b"{}"[..]);
                let headers =
                    [("authorization", auth.as_str()), ("x-sent-at", &sent), ("content-type", "application/json")];
                let r = send(port, method, path, &headers, body);
                let code = r.json()["error"]["code"].as_str().unwrap_or("").to_owned();
                out.push((sent.parse().unwrap(), r.status, code));
            }
            out
        });
        Hammer { stop, thread }
    }

    fn finish(self) -> Vec<(i64, u16, String)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

#[test]
fn consistency_is_set_at_creation_listed_and_never_laxer_than_the_parent() {
    let org = h().org(true);
    let (strict, _) = h().key(&org, json!({"name": "s", "scopes": ["ai:chat", "control:read"]}));
    let (parent, parent_id) = h().key(&org, leased(100));
    let r = h().admin("POST", &format!("/admin/orgs/{org}/api_keys"), Some(leased(5)));
    assert_eq!((r.status, r.json()["data"]["consistency"].as_str()), (201, Some("leased")));
    let r =
        h().admin("POST", &format!("/admin/orgs/{org}/api_keys"), Some(json!({"name": "d", "scopes": ["ai:chat"]})));
    assert_eq!(r.json()["data"]["consistency"], "strict", "the deployment default");
    let v = h()
        .admin(
            "POST",
            &format!("/admin/orgs/{org}/api_keys"),
            Some(json!({"name": "x", "scopes": ["ai:chat"], "consistency": "eventual"})),
        )
        .assert_error(422, "VALIDATION_FAILED");
    assert_eq!(v["error"]["message"], "consistency: must be \"strict\" or \"leased\"");
    let mint = |key: &str, body: Value| {
        let auth = format!("Bearer {key}");
        let b = body.to_string();
        h().send(
            "POST",
            "/v1/api_keys",
            &[("authorization", &auth), ("content-type", "application/json")],
            Some(b.as_bytes()),
        )
    };
    // A strict key mints strict keys only; a leased key may mint either.
    mint(&strict, json!({"name": "c", "scopes": ["ai:chat"], "consistency": "leased"}))
        .assert_error(403, "PERMISSION_DENIED");
    let r = mint(&strict, json!({"name": "c", "scopes": ["ai:chat"]}));
    assert_eq!((r.status, r.json()["data"]["consistency"].as_str()), (201, Some("strict")));
    let r = mint(&parent, json!({"name": "c", "scopes": ["ai:chat"], "consistency": "leased"}));
    assert_eq!((r.status, r.json()["data"]["consistency"].as_str()), (201, Some("leased")), "{}", r.text());
    let r = mint(&parent, json!({"name": "c", "scopes": ["ai:chat"], "consistency": "strict"}));
    assert_eq!(r.json()["data"]["consistency"], "strict");
    // Listed with its mode.
    let auth = format!("Bearer {parent}");
    let list = h().send("GET", "/v1/api_keys", &[("authorization", &auth)], None).json();
    let me = list["data"].as_array().unwrap().iter().find(|k| k["id"] == parent_id.as_str()).unwrap().clone();
    assert_eq!(me["consistency"], "leased");
}

#[test]
fn a_leased_key_admits_exactly_its_limit_under_concurrency() {
    let org = h().org(true);
    let (key, key_id) = h().key(&org, leased(20));
    let responses = concurrent_chats(h().port, &key, 100);
    let ok = responses.iter().filter(|r| r.status == 200).count();
    let limited: Vec<&Resp> = responses.iter().filter(|r| r.status == 429).collect();
    assert_eq!((ok, limited.len()), (20, 80), "{:?}", responses.iter().map(|r| r.status).collect::<Vec<_>>());
    assert_eq!(origin_saw_key(h(), &key_id).len(), 20, "exactly the admitted requests reached the origin");
    for r in limited {
        r.assert_error(429, "RATE_LIMITED");
        let retry: i64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
        assert!((1..=61).contains(&retry), "retry-after {retry}");
        assert_eq!((r.header("ratelimit-limit"), r.header("ratelimit-remaining")), (Some("20"), Some("0")));
    }
    // And after the burst: still exactly 20 in the window.
    for _ in 0..5 {
        chat_on(h(), &key, &[]).assert_error(429, "RATE_LIMITED");
    }
    assert_eq!(origin_saw_key(h(), &key_id).len(), 20);
}

#[test]
fn a_hot_leased_key_rarely_asks_its_guard() {
    let org = h().org(true);
    let (key, key_id) = h().key(&org, leased(1_000_000));
    let started = std::time::Instant::now();
    for i in 0..300 {
        let r = chat_on(h(), &key, &[]);
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.header("ratelimit-limit"), Some("1000000"));
        assert!(r.header("ratelimit-remaining").is_some_and(|v| v.parse::<u32>().unwrap() < 1_000_000));
        assert_eq!(r.header("x-origin"), Some("demo"));
    }
    let s = h().guard_stats(&org, &key_id);
    assert_eq!(s["consistency"], "leased");
    assert_eq!(s["calls"]["check"], 0, "no strict checks for a leased key: {s}");
    let asks = s["calls"]["lease"].as_u64().unwrap() + s["calls"]["return"].as_u64().unwrap();
    assert!(asks <= 20, "300 requests took {asks} lease requests and returns: {s}");
    // Rows are written per lease, and by the usage roll-up (at most once a
    // second in tests: USAGE_ROLLUP_SECONDS=1), never per request.
    let rollups = started.elapsed().as_secs() + 2;
    assert!(s["rows_written"].as_u64().unwrap() <= 3 * (asks + rollups), "{s}");
    assert_eq!(origin_saw_key(h(), &key_id).len(), 300);
}

#[test]
fn a_leased_key_revoked_through_the_control_api_stops_within_lease_ms() {
    let org = h().org(true);
    let (admin_key, _) = h().key(&org, leased(1_000_000));
    let (key, key_id) = h().key(&org, leased(1_000_000));
    let hammer = Hammer::start(h().port, &key, "POST", "/v1/ai/chat");
    std::thread::sleep(Duration::from_millis(1500));
    let auth = format!("Bearer {admin_key}");
    let r = h().send("DELETE", &format!("/v1/api_keys/{key_id}"), &[("authorization", &auth)], None);
    assert_eq!(r.status, 200, "{}", r.text());
    let answered = now_ms();
    std::thread::sleep(Duration::from_millis((2 * LEASE_MS) as u64));
    let sent = hammer.finish();
    let before: Vec<_> = sent.iter().filter(|(t, _, _)| *t < answered - 200).collect();
    assert!(before.len() > 20 && before.iter().all(|(_, s, _)| *s == 200), "served before the revocation");
    let late: Vec<_> = sent.iter().filter(|(t, _, _)| *t > answered + LEASE_MS).collect();
    assert!(late.len() > 10, "requests kept coming after the revocation");
    for (t, status, code) in &late {
        assert_eq!(
            (*status, code.as_str()),
            (401, "INVALID_API_KEY"),
            "sent {} ms after the revoke answered",
            t - answered
        );
    }
    for e in origin_saw_key(h(), &key_id) {
        let t: i64 = e["headers"]["x-sent-at"].as_str().unwrap().parse().unwrap();
        assert!(
            t <= answered + LEASE_MS,
            "a request sent {} ms after the revoke answered reached the origin",
            t - answered
        );
    }
}

#[test]
fn baa_role_and_user_changes_reach_a_leased_key_within_lease_ms() {
    let org = h().org(true);
    assert_eq!(h().admin("PUT", &format!("/admin/orgs/{org}/users/u1"), Some(json!({"role": "admin"}))).status, 200);
    let mut body = leased(1_000_000);
    body["user_id"] = json!("u1");
    body["scopes"] = json!(["*"]);
    let (key, _) = h().key(&org, body);
    // Each change, with the error every request sent LEASE_MS after it
    // answered must get (and the request that shows it).
    let change = |method: &'static str, path: &'static str, admin_path: String, admin_body: Value, code: &str| {
        let hammer = Hammer::start(h().port, &key, method, path);
        std::thread::sleep(Duration::from_millis(1200));
        let r = h().admin("PUT", &admin_path, Some(admin_body));
        assert_eq!(r.status, 200, "{}", r.text());
        let answered = now_ms();
        std::thread::sleep(Duration::from_millis((LEASE_MS + 800) as u64));
        let sent = hammer.finish();
        assert!(sent.iter().any(|(t, s, _)| *t < answered - 200 && *s == 200), "served before the change");
        let late: Vec<_> = sent.iter().filter(|(t, _, _)| *t > answered + LEASE_MS).collect();
        assert!(late.len() > 5);
        for (t, _, got) in late {
            assert_eq!(got, code, "sent {} ms after the change answered", t - answered);
        }
    };
    // A role change: the admin's control:read goes with it.
    change("GET", "/v1/api_keys", format!("/admin/orgs/{org}/users/u1"), json!({"role": "viewer"}), "MISSING_SCOPE");
    // The BAA switched off.
    change(
        "POST",
        "/v1/ai/chat",
        format!("/admin/orgs/{org}"),
        json!({"name": "o", "baa_active": false}),
        "BAA_REQUIRED",
    );
    assert_eq!(
        h().admin("PUT", &format!("/admin/orgs/{org}"), Some(json!({"name": "o", "baa_active": true}))).status,
        200
    );
    std::thread::sleep(Duration::from_millis(LEASE_MS as u64 + 100));
    // The user disabled.
    change(
        "POST",
        "/v1/ai/chat",
        format!("/admin/orgs/{org}/users/u1"),
        json!({"role": "viewer", "disabled": true}),
        "INVALID_API_KEY",
    );
}

/// A worker whose usage roll-ups are an hour apart, so that the only rows a
/// guard writes during the test are the ones requests cause.
fn quiet() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| Harness::start(Options { origin_url: None, vars: vec![("USAGE_ROLLUP_SECONDS", "3600".into())] }))
}

#[test]
fn refused_requests_cost_no_guard_write_and_floods_stay_at_the_edge() {
    let h = quiet();
    let org = h.org(true);
    let shop = "https://shop.example.com";
    let (key, key_id) = h.key(&org, json!({"name": "q", "scopes": ["ai:chat"], "rate_limits": [{"name": "minute", "limit": 2, "window_seconds": 60}]}));
    let (widget, widget_id) = h.key(
        &org,
        json!({"name": "w", "scopes": ["ai:chat"], "kind": "widget", "allowed_origins": [shop],
        "rate_limits": [{"name": "minute", "limit": 1000, "window_seconds": 60}]}),
    );
    for _ in 0..2 {
        assert_eq!(chat_on(h, &key, &[]).status, 200);
        assert_eq!(chat_on(h, &widget, &[("origin", shop)]).status, 200);
    }
    let before = (h.guard_stats(&org, &key_id), h.guard_stats(&org, &widget_id));
    let auth = format!("Bearer {key}");
    let started = std::time::Instant::now();
    for _ in 0..100 {
        chat_on(h, &key, &[]).assert_error(429, "RATE_LIMITED");
        h.send("POST", "/v1/embeddings", &[("authorization", &auth)], Some(b"{}")).assert_error(403, "MISSING_SCOPE");
        chat_on(h, &widget, &[("origin", "https://evil.example")]).assert_error(403, "ORIGIN_NOT_ALLOWED");
    }
    // One visitor over its own limit (10/min by the policy).
    let mut visitor_refusals = 0;
    for _ in 0..100 {
        let r = chat_on(h, &widget, &[("origin", shop), ("cf-connecting-ip", "198.51.100.9")]);
        if r.status == 429 {
            assert_eq!(r.header("ratelimit-limit"), Some("10"));
            visitor_refusals += 1;
        }
    }
    assert_eq!(visitor_refusals, 90);
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let after = (h.guard_stats(&org, &key_id), h.guard_stats(&org, &widget_id));
    let (b, a) = (&before.0, &after.0);
    assert_eq!(
        (&a["rows_written"], &a["commits"]),
        (&b["rows_written"], &b["commits"]),
        "the 200 refusals wrote: {b} -> {a}"
    );
    // The widget: only the visitor's 10 admissions wrote (its counters and
    // its visitor row, one transaction each); its 190 refusals nothing.
    let (b, a) = (&before.1, &after.1);
    assert_eq!(a["commits"].as_u64().unwrap(), b["commits"].as_u64().unwrap() + 10, "{b} -> {a}");
    assert!(a["rows_written"].as_u64().unwrap() <= b["rows_written"].as_u64().unwrap() + 2 * 10 + 1, "{b} -> {a}");
    // Guard calls: at most a few per LEASE_MS of flood, not one per refusal.
    let budget = 4 * (elapsed_ms / LEASE_MS as u64 + 1);
    let key_calls = guard_calls(&after.0) - guard_calls(&before.0);
    let widget_calls = guard_calls(&after.1) - guard_calls(&before.1) - 10;
    assert!(key_calls <= budget, "{key_calls} guard calls for 200 refusals in {elapsed_ms} ms");
    assert!(widget_calls <= budget, "{widget_calls} guard calls for 180 refusals in {elapsed_ms} ms");
}

#[test]
fn guard_state_stays_under_its_byte_bound_with_5000_visitors() {
    let org = h().org(true);
    let shop = "https://shop.example.com";
    // Per-visitor counts that live an hour: the run may take longer than a
    // minute on a loaded machine, and no count may expire while it runs.
    let (widget, widget_id) = h().key(
        &org,
        json!({"name": "w", "scopes": ["ai:chat"], "kind": "widget", "allowed_origins": [shop],
        "rate_limits": [{"name": "minute", "limit": 1_000_000, "window_seconds": 60}],
        "visitor_rate_limits": [{"name": "visitor", "limit": 10, "window_seconds": 3600}]}),
    );
    let next = Arc::new(Mutex::new(0u32));
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let port = h().port;
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (next, widget, statuses) = (next.clone(), widget.clone(), statuses.clone());
            std::thread::spawn(move || loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    *n += 1;
                    *n
                };
                if i > 5000 {
                    break;
                }
                let ip = format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256);
                let auth = format!("Bearer {widget}");
                let r = send(
                    port,
                    "POST",
                    "/v1/ai/chat",
                    &[
                        ("authorization", &auth),
                        ("origin", shop),
                        ("cf-connecting-ip", &ip),
                        ("content-type", "application/json"),
                    ],
                    Some(b"{}"),
                );
                if r.status == 429 {
                    assert_eq!(r.header("ratelimit-limit"), Some("10"), "the per-visitor limit refused it");
                }
                statuses.lock().unwrap().push(r.status);
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let statuses = statuses.lock().unwrap().clone();
    // 2,048 visitors are tracked, each with its own limit; the rest share
    // the one overflow visitor's 10 per hour: never a visitor without a
    // limit, never a live count forgotten.
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((ok, limited), (2048 + 10, 5000 - 2048 - 10), "statuses");
    let s = h().guard_stats(&org, &widget_id);
    let (bytes, bound) = (s["bytes"].as_u64().unwrap(), s["byte_bound"].as_u64().unwrap());
    assert_eq!(s["visitors"], 2049, "2,048 visitors and the overflow: {s}");
    assert!(bytes <= bound, "{bytes} bytes > bound {bound}");
    assert!(bound < 2 * 1024 * 1024, "the bound {bound} stays under the 2 MiB that broke round 1");
    // A tracked visitor is still held to its own limit.
    let tracked = "10.0.0.1";
    let mut admitted = 0;
    for _ in 0..15 {
        let r = chat_on(h(), &widget, &[("origin", shop), ("cf-connecting-ip", tracked)]);
        if r.status == 200 {
            admitted += 1;
        } else {
            r.assert_error(429, "RATE_LIMITED");
        }
    }
    assert!(admitted <= 9, "a tracked visitor got {} in an hour", admitted + 1);
}

#[test]
fn the_origins_vary_is_appended_to_not_replaced() {
    let org = h().org(true);
    let shop = "https://shop.example.com";
    let (widget, _) =
        h().key(&org, json!({"name": "w", "scopes": ["ai:chat"], "kind": "widget", "allowed_origins": [shop]}));
    let r = chat_on(h(), &widget, &[("origin", shop), ("x-test-vary", "Accept-Encoding")]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("vary"), Some("Accept-Encoding, Origin"));
    assert_eq!(r.header("access-control-allow-origin"), Some(shop));
    let (key, _) = h().key(&org, json!({"name": "s", "scopes": ["ai:chat"]}));
    let r = chat_on(h(), &key, &[("x-test-vary", "Accept-Encoding")]);
    assert_eq!(r.header("vary"), Some("Accept-Encoding"), "a secret key's answer keeps the origin's Vary as is");
}

#[test]
fn measurement_switches_do_not_exist_outside_a_benchmark_build() {
    for var in [("KEY_GUARD", "off"), ("GUARD_DELAY_MS", "50")] {
        let own = Harness::start_without_suffix_list(Options { origin_url: None, vars: vec![(var.0, var.1.into())] });
        // The worker refuses to run at all: no request gets through unguarded.
        let r = own.send("POST", "/v1/ai/chat", &[("authorization", "Bearer kw_live_x")], Some(b"{}"));
        r.assert_error(503, "SERVICE_UNAVAILABLE");
        own.admin("PUT", "/admin/orgs/o1", Some(json!({"name": "o", "baa_active": true})))
            .assert_error(503, "SERVICE_UNAVAILABLE");
    }
}
