//! End to end: public widget keys — origin rules, CORS at the edge,
//! preflights, per-visitor limits — over HTTP and in a real headless
//! Chromium. Run with `make test`.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use common::*;
use serde_json::{json, Value};

fn h() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| Harness::start(Options { origin_url: None, vars: vec![] }))
}

const SHOP: &str = "https://shop.example.com";

/// An org with a widget key allowed on `origins`; returns (key, key id).
fn widget(origins: &[&str], extra: Value) -> (String, String) {
    let org = h().org(true);
    let mut body = json!({"name": "widget", "kind": "widget", "scopes": ["ai:chat"], "allowed_origins": origins});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    h().key(&org, body)
}

fn chat(key: &str, headers: &[(&str, &str)]) -> Resp {
    let auth = format!("Bearer {key}");
    let mut hs = vec![("authorization", auth.as_str()), ("content-type", "application/json")];
    hs.extend_from_slice(headers);
    h().send("POST", "/v1/ai/chat", &hs, Some(b"{}"))
}

fn assert_no_cors(r: &Resp) {
    for (k, _) in &r.headers {
        assert!(!k.to_ascii_lowercase().starts_with("access-control-"), "unexpected CORS header {k}: {:?}", r.headers);
    }
}

#[test]
fn allowed_origin_gets_the_answer_with_cors_headers() {
    let (key, key_id) = widget(&[SHOP, "https://*.example.org"], json!({"resource_id": "bot_42"}));
    for origin in [SHOP, "https://help.example.org"] {
        let r = chat(&key, &[("origin", origin)]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert_eq!(r.header("vary"), Some("Origin"));
        let expose = r.header("access-control-expose-headers").unwrap();
        for h in ["RateLimit-Remaining", "RateLimit-Limit", "RateLimit-Reset", "Retry-After", "X-Request-Id"] {
            assert!(expose.contains(h), "{expose}");
        }
        let hd = &r.json()["echo"]["headers"];
        assert_eq!(hd["x-keyward-key-kind"], "widget");
        assert_eq!(hd["x-keyward-key-id"], key_id.as_str());
        assert_eq!(hd["x-keyward-resource"], "bot_42");
        assert_eq!(hd["x-keyward-scopes"], "ai:chat");
        assert!(hd.get("authorization").is_none());
        // The signature covers the resource as the last field.
        let canonical = format!(
            "keyward-v1\n{}\nPOST\n/v1/ai/chat\n\n{}\n{}\n{key_id}\nwidget\nai:chat\n\nbot_42",
            hd["x-keyward-timestamp"].as_str().unwrap(),
            hd["x-request-id"].as_str().unwrap(),
            hd["x-keyward-org"].as_str().unwrap(),
        );
        assert_eq!(
            hd["x-keyward-signature"],
            format!("v1={}", hmac_sha256_hex(SIGNING_SECRET.as_bytes(), canonical.as_bytes())).as_str()
        );
    }
    // Referer stands in only when Origin is absent.
    let r = chat(&key, &[("referer", "https://shop.example.com/checkout?step=2")]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some(SHOP));
}

#[test]
fn disallowed_absent_and_look_alike_origins_are_refused_without_cors() {
    let (key, key_id) = widget(&[SHOP, "https://*.example.org"], json!({}));
    let cases: &[&[(&str, &str)]] = &[
        &[],
        &[("origin", "null")],
        &[("origin", "https://evil.com")],
        &[("origin", "https://shop.example.com.evil.net")],
        &[("origin", "https://evilexample.org")],
        &[("origin", "https://example.org")],
        &[("origin", "https://SHOP.example.com")],
        &[("origin", "https://shop.example.com.")],
        &[("origin", "https://shop.example.com:8443")],
        &[("origin", "http://shop.example.com")],
        &[("origin", "https://user@shop.example.com")],
        &[("origin", "null"), ("referer", "https://shop.example.com/")],
        &[("referer", "https://evil.com/?https://shop.example.com")],
    ];
    for headers in cases {
        let r = chat(&key, headers);
        let v = r.assert_error(403, "ORIGIN_NOT_ALLOWED");
        assert!(v["error"]["message"].as_str().unwrap().contains("origin"), "{v}");
        assert_no_cors(&r);
    }
    assert!(h().origin_log().iter().all(|e| e["headers"]["x-keyward-key-id"] != key_id.as_str()));
}

#[test]
fn refusals_after_the_origin_matched_are_readable_by_the_page() {
    let (key, _) = widget(&[SHOP], json!({}));
    let auth = format!("Bearer {key}");
    let r = h().send("POST", "/v1/embeddings", &[("authorization", &auth), ("origin", SHOP)], Some(b"{}"));
    r.assert_error(403, "MISSING_SCOPE");
    assert_eq!(r.header("access-control-allow-origin"), Some(SHOP));
}

#[test]
fn preflight_is_answered_at_the_edge_without_any_key() {
    let before = h().origin_log().len();
    for origin in [SHOP, "https://anything.example.net", "http://localhost:3000"] {
        let r = h().send(
            "OPTIONS",
            "/v1/ai/chat",
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "authorization, content-type"),
            ],
            None,
        );
        assert_eq!(r.status, 204, "{}", r.text());
        assert_eq!(r.header("access-control-allow-origin"), Some(origin), "echoed, never *");
        assert_eq!(r.header("vary"), Some("Origin"));
        assert_eq!(r.header("access-control-allow-methods"), Some("POST"));
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("authorization, x-api-key, content-type, cf-turnstile-response, x-keyward-visitor")
        );
        assert_eq!(r.header("access-control-max-age"), Some("600"));
        assert!(r.header("x-request-id").is_some());
        assert!(r.body.is_empty());
    }
    // Not a widget route, wrong method, bad origin: refused, no CORS.
    let r = h().send("OPTIONS", "/v1/api_keys", &[("origin", SHOP), ("access-control-request-method", "GET")], None);
    r.assert_error(404, "ROUTE_NOT_FOUND");
    assert_no_cors(&r);
    let r = h().send("OPTIONS", "/v1/ai/chat", &[("origin", SHOP), ("access-control-request-method", "DELETE")], None);
    r.assert_error(405, "METHOD_NOT_ALLOWED");
    assert_eq!(r.header("allow"), Some("POST"));
    assert_no_cors(&r);
    for bad in ["null", "https://a.com/x", "*"] {
        let r = h().send("OPTIONS", "/v1/ai/chat", &[("origin", bad), ("access-control-request-method", "POST")], None);
        r.assert_error(403, "ORIGIN_NOT_ALLOWED");
        assert_no_cors(&r);
    }
    assert_eq!(h().origin_log().len(), before, "a preflight is never proxied");
}

#[test]
fn secret_keys_never_get_cors_headers_even_if_the_origin_sends_them() {
    let org = h().org(true);
    let (secret, _) = h().key(&org, json!({"name": "s", "scopes": ["ai:chat"]}));
    let r = chat(&secret, &[("x-test-origin-cors", "1")]);
    assert_eq!(r.status, 200);
    assert_no_cors(&r);
    let r = chat(&secret, &[("origin", SHOP)]);
    r.assert_error(403, "ORIGIN_NOT_ALLOWED");
    assert_no_cors(&r);
}

#[test]
fn widget_key_creation_rules() {
    let org = h().org(true);
    let keys = format!("/admin/orgs/{org}/api_keys");
    for (body, want) in [
        (json!({"name": "w", "kind": "widget", "scopes": ["ai:chat"]}), "allowed_origins: is required"),
        (
            json!({"name": "w", "kind": "widget", "scopes": ["ai:chat"], "allowed_origins": ["*"]}),
            "allowed_origins[0]: \"*\" is not allowed",
        ),
        (
            json!({"name": "w", "kind": "widget", "scopes": ["control:read"], "allowed_origins": [SHOP]}),
            "scopes: \"control:read\" is not allowed on a widget key",
        ),
        (
            json!({"name": "w", "kind": "widget", "scopes": ["*"], "allowed_origins": [SHOP]}),
            "scopes: \"*\" is not allowed",
        ),
        (
            json!({"name": "w", "kind": "widget", "scopes": ["control:*"], "allowed_origins": [SHOP]}),
            "scopes: \"control:*\" is not allowed",
        ),
        (
            json!({"name": "s", "scopes": ["ai:chat"], "allowed_origins": [SHOP]}),
            "allowed_origins: is only for widget keys",
        ),
    ] {
        let v = h().admin("POST", &keys, Some(body.clone())).assert_error(422, "VALIDATION_FAILED");
        assert!(v["error"]["message"].as_str().unwrap().starts_with(want), "{body}: {v}");
    }
    let r = h().admin("POST", &keys, Some(json!({"name": "w", "kind": "widget", "scopes": ["ai:chat"], "allowed_origins": ["HTTPS://Shop.Example.com/"]})));
    assert_eq!(r.status, 201, "{}", r.text());
    let d = &r.json()["data"];
    assert!(d["plaintext"].as_str().unwrap().starts_with("kw_pub_"));
    assert_eq!(d["prefix"], "kw_pub_");
    assert_eq!(d["kind"], "widget");
    assert_eq!(d["allowed_origins"], json!([SHOP]));
}

#[test]
fn one_visitor_cannot_exhaust_the_sites_budget() {
    // The key allows 100/min; each visitor (client IP) 10/min (policy).
    let (key, _) = widget(&[SHOP], json!({"rate_limits": [{"name": "minute", "limit": 100, "window_seconds": 60}]}));
    for i in 0..10 {
        let r = chat(&key, &[("origin", SHOP)]);
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    let r = chat(&key, &[("origin", SHOP)]);
    r.assert_error(429, "RATE_LIMITED");
    assert_eq!(r.header("ratelimit-limit"), Some("10"), "the per-visitor limit refused it");
    assert_eq!(r.header("access-control-allow-origin"), Some(SHOP), "the page can read its 429");
    assert!(r.header("retry-after").is_some());
    // Another visitor (the local runtime passes CF-Connecting-IP through;
    // on Cloudflare it is set by the edge) still gets through.
    let r = chat(&key, &[("origin", SHOP), ("cf-connecting-ip", "198.51.100.7")]);
    assert_eq!(r.status, 200, "{}", r.text());
}

// ---------------------------------------------------------------- browser

struct Pages {
    allowed: u16,
    other: u16,
    _process: Process,
}

fn pages() -> &'static Pages {
    static P: OnceLock<Pages> = OnceLock::new();
    P.get_or_init(|| {
        let (allowed, other) = (free_port(), free_port());
        let ports = format!("{allowed},{other}");
        let process = start_process(&["node", "demo/page.mjs"], &[("PORTS", &ports)], allowed, "/");
        Pages { allowed, other, _process: process }
    })
}

fn browse(page_port: u16, key: &str, name: &str) -> Value {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "Chromium is not installed ({chromium}): run `make test`, which installs Debian's chromium"
    );
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join(format!("{name}.png"));
    let url = format!("http://127.0.0.1:{page_port}/?auto=1&edge=http://127.0.0.1:{}&key={key}", h().port);
    let out = std::process::Command::new("node")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tests/browser/widget.mjs", &url])
        .arg(&shot)
        .output()
        .expect("node");
    assert!(out.status.success(), "browser run failed: {}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line}"));
    println!("screenshot: {} ({name}: {})", shot.display(), v["text"]);
    assert!(shot.exists());
    v
}

#[test]
fn browser_widget_on_an_allowed_origin_gets_its_answer() {
    let p = pages();
    let (key, key_id) = widget(&[&format!("http://127.0.0.1:{}", p.allowed)], json!({}));
    let v = browse(p.allowed, &key, "widget-allowed-origin");
    assert_eq!(v["state"], "ok", "{v}");
    assert_eq!(v["status"], "200");
    let text = v["text"].as_str().unwrap();
    assert!(text.starts_with("200 OK"), "{text}");
    assert!(text.contains(&key_id), "{text}");
    assert!(text.contains("· 9 requests left"), "RateLimit-Remaining was readable: {text}");
}

#[test]
fn browser_widget_on_another_origin_is_blocked_by_cors() {
    let p = pages();
    let (key, key_id) = widget(&[&format!("http://127.0.0.1:{}", p.allowed)], json!({}));
    let v = browse(p.other, &key, "widget-disallowed-origin");
    assert_eq!((v["state"].as_str(), v["status"].as_str()), (Some("error"), Some("cors")), "{v}");
    assert!(v["text"].as_str().unwrap().contains("Failed to fetch"), "{v}");
    let console = v["console"].to_string();
    assert!(console.contains("CORS") || console.contains("Access-Control-Allow-Origin"), "{console}");
    assert!(h().origin_log().iter().all(|e| e["headers"]["x-keyward-key-id"] != key_id.as_str()));
}

#[test]
fn browser_page_with_a_secret_key_fails() {
    let p = pages();
    let org = h().org(true);
    let (secret, key_id) = h().key(&org, json!({"name": "leaked", "scopes": ["ai:chat"]}));
    let v = browse(p.allowed, &secret, "widget-with-secret-key");
    assert_eq!((v["state"].as_str(), v["status"].as_str()), (Some("error"), Some("cors")), "{v}");
    assert!(h().origin_log().iter().all(|e| e["headers"]["x-keyward-key-id"] != key_id.as_str()));
}
