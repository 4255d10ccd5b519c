//! End to end: the real worker on `wrangler dev` (workerd, local KV and
//! Durable Objects) in front of a real origin process. Run with `make test`.
// Tests measure wall time; only the core is barred from reading clocks.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::OnceLock;

use common::*;
use serde_json::{json, Value};

fn h() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| Harness::start(Options { origin_url: None, vars: vec![("ORIGIN_TIMEOUT_MS", "1500".into())] }))
}

/// An org with an active BAA and a secret key with `scopes`.
fn setup(scopes: &[&str]) -> (String, String, String) {
    let org = h().org(true);
    let (key, id) = h().key(&org, json!({"name": "test", "scopes": scopes}));
    (org, key, id)
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

fn chat(key: &str, extra: &[(&str, &str)]) -> Resp {
    let auth = bearer(key);
    let mut headers = vec![("authorization", auth.as_str()), ("content-type", "application/json")];
    headers.extend_from_slice(extra);
    h().send(
        "POST",
        "/v1/ai/chat?stream=false&x=%2F",
        &headers,
        Some(br#"{"messages":[{"role":"user","content":"hi"}]}"#),
    )
}

#[test]
fn valid_key_is_proxied_with_signed_identity_and_no_credential() {
    let (org, key, key_id) = setup(&["ai:chat", "control:read"]);
    let r = chat(
        &key,
        &[
            ("x-keyward-org", "org_spoofed"),
            ("X-Keyward-Key-Id", "spoof"),
            ("x-keyward-scopes", "*"),
            ("x-keyward-user", "root"),
            ("x-keyward-signature", "v1=00"),
            ("x-request-id", "req_client_chosen"),
            ("cookie", "session=abc"),
            ("x-api-key", key.as_str()),
            ("x-http-method-override", "DELETE"),
            ("x-method-override", "DELETE"),
            ("x-http-method", "DELETE"),
            ("x-custom", "kept"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-origin"), Some("demo"), "response headers come from the origin");
    let rid = r.header("x-request-id").unwrap().to_owned();
    assert!(rid.starts_with("req_") && rid != "req_client_chosen");
    let echo = &r.json()["echo"];
    assert_eq!(echo, &h().origin_saw(&rid).expect("origin saw the request"));
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/v1/ai/chat");
    assert_eq!(echo["query"], "stream=false&x=%2F");
    assert_eq!(echo["body"], r#"{"messages":[{"role":"user","content":"hi"}]}"#);
    let hd = echo["headers"].as_object().unwrap();
    for gone in [
        "authorization",
        "x-api-key",
        "cookie",
        "x-http-method-override",
        "x-method-override",
        "x-http-method",
        "x-keyward-user",
    ] {
        assert!(!hd.contains_key(gone), "{gone} reached the origin: {hd:?}");
    }
    assert_eq!(hd["x-custom"], "kept");
    assert_eq!(hd["content-type"], "application/json");
    assert_eq!(hd["x-keyward-org"], org.as_str());
    assert_eq!(hd["x-keyward-key-id"], key_id.as_str());
    assert_eq!(hd["x-keyward-key-kind"], "secret");
    assert_eq!(hd["x-keyward-scopes"], "ai:chat control:read");
    assert_eq!(hd["x-request-id"], rid.as_str());
    // Verify the signature as an origin would, from the documented canonical string.
    let ts = hd["x-keyward-timestamp"].as_str().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((ts.parse::<i64>().unwrap() - now).abs() < 60);
    let canonical = format!(
        "keyward-v1\n{ts}\nPOST\n/v1/ai/chat\nstream=false&x=%2F\n{rid}\n{org}\n{key_id}\nsecret\nai:chat control:read\n\n"
    );
    let want = format!("v1={}", hmac_sha256_hex(SIGNING_SECRET.as_bytes(), canonical.as_bytes()));
    assert_eq!(hd["x-keyward-signature"], want.as_str());
    // A different secret does not verify.
    assert_ne!(hd["x-keyward-signature"], format!("v1={}", hmac_sha256_hex(b"wrong", canonical.as_bytes())).as_str());
}

#[test]
fn x_api_key_header_works_and_user_bound_key_forwards_user() {
    let org = h().org(true);
    let r = h().admin("PUT", &format!("/admin/orgs/{org}/users/u_1"), Some(json!({"role": "viewer"})));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["role"], "viewer");
    let (key, key_id) = h().key(&org, json!({"name": "u", "scopes": ["*"], "user_id": "u_1"}));
    let r = h().send("POST", "/v1/ai/chat", &[("x-api-key", &key), ("content-type", "application/json")], Some(b"{}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let hd = &r.json()["echo"]["headers"];
    assert_eq!(hd["x-keyward-user"], "u_1");
    assert_eq!(hd["x-keyward-key-id"], key_id.as_str());
    // `*` narrowed to the viewer role.
    assert_eq!(hd["x-keyward-scopes"], "ai:chat ai:embeddings ai:summarize");
    let canonical = format!(
        "keyward-v1\n{}\nPOST\n/v1/ai/chat\n\n{}\n{org}\n{key_id}\nsecret\nai:chat ai:embeddings ai:summarize\nu_1\n",
        hd["x-keyward-timestamp"].as_str().unwrap(),
        hd["x-request-id"].as_str().unwrap()
    );
    assert_eq!(
        hd["x-keyward-signature"],
        format!("v1={}", hmac_sha256_hex(SIGNING_SECRET.as_bytes(), canonical.as_bytes())).as_str()
    );
    // The role caps the key: ai:documents is not in viewer.
    let r = h().send("GET", "/v1/documents", &[("x-api-key", &key)], None);
    let v = r.assert_error(403, "MISSING_SCOPE");
    assert_eq!(v["error"]["message"], "This API key lacks the required scope: ai:documents");
    // Upgrading the user's role takes effect on the next request.
    let r = h().admin("PUT", &format!("/admin/orgs/{org}/users/u_1"), Some(json!({"role": "admin"})));
    assert_eq!(r.status, 200);
    let r = h().send("GET", "/v1/documents", &[("x-api-key", &key)], None);
    assert_eq!(r.status, 200, "{}", r.text());
    // Disabling the user: 401.
    let r = h().admin("PUT", &format!("/admin/orgs/{org}/users/u_1"), Some(json!({"role": "admin", "disabled": true})));
    assert_eq!(r.json()["data"]["disabled"], true);
    h().send("POST", "/v1/ai/chat", &[("x-api-key", &key)], Some(b"{}")).assert_error(401, "INVALID_API_KEY");
}

fn assert_refused_without_origin(r: &Resp, status: u16, code: &str) -> Value {
    let v = r.assert_error(status, code);
    let rid = r.header("x-request-id").unwrap();
    assert!(h().origin_saw(rid).is_none(), "a refused request reached the origin");
    v
}

#[test]
fn credential_errors_are_one_indistinguishable_401() {
    let (org, key, key_id) = setup(&["ai:chat"]);
    let (other, _) = h().key(&org, json!({"name": "other", "scopes": ["ai:chat"]}));
    let mut unknown = key.clone();
    // Same prefix and a valid-looking body, but the checksum breaks: malformed.
    unknown.replace_range(10..11, if &key[10..11] == "A" { "B" } else { "A" });
    let expired_org = h().org(true);
    let r = h().admin(
        "POST",
        &format!("/admin/orgs/{expired_org}/api_keys"),
        Some(json!({"name": "e", "scopes": ["ai:chat"], "expires_at": "2020-01-01T00:00:00Z"})),
    );
    r.assert_error(422, "VALIDATION_FAILED");

    let long = "A".repeat(5000);
    let cases: Vec<Vec<(&str, String)>> = vec![
        vec![],
        vec![("authorization", String::new())],
        vec![("authorization", "Bearer".into())],
        vec![("authorization", "Bearer ".into())],
        vec![("authorization", format!("Bearer{key}"))],
        vec![("authorization", format!("Basic {key}"))],
        vec![("authorization", format!("Bearer  {key}"))],
        vec![("authorization", format!("Bearer {unknown}"))],
        vec![("authorization", format!("Bearer {key}x"))],
        vec![("authorization", format!("Bearer {}", &key[..key.len() - 1]))],
        vec![("authorization", format!("Bearer {}", key.replacen("kw_live_", "kw_test_", 1)))],
        vec![("authorization", format!("Bearer {}", key.replacen('k', "\u{043a}", 1)))],
        vec![("authorization", format!("Bearer kw_live_{long}"))],
        vec![("authorization", bearer(&key)), ("x-api-key", other.clone())],
        vec![("x-api-key", String::new())],
        // Duplicated credential headers arrive joined and fail the format check.
        vec![("authorization", bearer(&key)), ("authorization", bearer(&key))],
        vec![("x-api-key", key.clone()), ("x-api-key", key.clone())],
    ];
    let mut messages = std::collections::HashSet::new();
    for headers in cases {
        let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = h().send("POST", "/v1/ai/chat", &hs, Some(b"{}"));
        let v = assert_refused_without_origin(&r, 401, "INVALID_API_KEY");
        messages.insert(v["error"]["message"].as_str().unwrap().to_owned());
    }
    // Revoked: the same answer.
    let r = h().admin("DELETE", &format!("/admin/orgs/{org}/api_keys/{key_id}"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = assert_refused_without_origin(&chat(&key, &[]), 401, "INVALID_API_KEY");
    messages.insert(v["error"]["message"].as_str().unwrap().to_owned());
    assert_eq!(messages.len(), 1, "different messages would be an oracle: {messages:?}");
}

#[test]
fn revocation_is_refused_on_the_next_request_and_idempotent() {
    let (org, key, key_id) = setup(&["ai:chat"]);
    assert_eq!(chat(&key, &[]).status, 200);
    let r = h().admin("DELETE", &format!("/admin/orgs/{org}/api_keys/{key_id}"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["data"]["id"], key_id.as_str());
    let revoked_at = v["data"]["revoked_at"].as_str().unwrap().to_owned();
    chat(&key, &[]).assert_error(401, "INVALID_API_KEY");
    // Twice: same answer, same time.
    let r2 = h().admin("DELETE", &format!("/admin/orgs/{org}/api_keys/{key_id}"), None);
    assert_eq!(r2.status, 200);
    assert_eq!(r2.json()["data"]["revoked_at"], revoked_at.as_str());
    // Another org's key id: 404.
    let other = h().org(true);
    h().admin("DELETE", &format!("/admin/orgs/{other}/api_keys/{key_id}"), None)
        .assert_error(404, "RESOURCE_NOT_FOUND");
}

#[test]
fn baa_gate_answers_exactly_as_the_reference() {
    let org = h().org(false);
    let (key, _) = h().key(&org, json!({"name": "k", "scopes": ["ai:chat"]}));
    let r = chat(&key, &[]);
    let v = assert_refused_without_origin(&r, 402, "BAA_REQUIRED");
    assert_eq!(
        v,
        json!({"success": false, "error": {
            "code": "BAA_REQUIRED", "type": "payment_required",
            "message": "An active Business Associate Agreement is required to use the AI API.",
            "retryable": false, "request_id": r.header("x-request-id").unwrap()}})
    );
    // Signing the BAA opens the gate on the next request.
    let r = h().admin("PUT", &format!("/admin/orgs/{org}"), Some(json!({"name": "n", "baa_active": true})));
    assert_eq!(r.json()["data"]["baa_active"], true);
    assert_eq!(chat(&key, &[]).status, 200);
}

#[test]
fn routes_scopes_and_methods() {
    let (_, key, _) = setup(&["ai:chat"]);
    let auth = bearer(&key);
    let a = [("authorization", auth.as_str())];
    let v = assert_refused_without_origin(&h().send("POST", "/v1/embeddings", &a, Some(b"{}")), 403, "MISSING_SCOPE");
    assert_eq!(v["error"]["message"], "This API key lacks the required scope: ai:embeddings");
    assert_refused_without_origin(&h().send("GET", "/v1/not-a-route", &a, None), 404, "ROUTE_NOT_FOUND");
    assert_refused_without_origin(&h().send("POST", "/v1/AI/chat", &a, Some(b"{}")), 404, "ROUTE_NOT_FOUND");
    assert_refused_without_origin(&h().send("POST", "/v1/ai/chat/", &a, Some(b"{}")), 404, "ROUTE_NOT_FOUND");
    let r = h().send("GET", "/v1/ai/chat", &a, None);
    assert_refused_without_origin(&r, 405, "METHOD_NOT_ALLOWED");
    assert_eq!(r.header("allow"), Some("POST"));
    // Wildcards.
    let (_, wild, _) = setup(&["ai:*"]);
    let wa = bearer(&wild);
    let r = h().send("DELETE", "/v1/documents/doc_1/pages/2", &[("authorization", &wa)], None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["echo"]["method"], "DELETE");
    assert_refused_without_origin(&h().send("GET", "/v1/audit", &[("authorization", &wa)], None), 403, "MISSING_SCOPE");
    let (_, all, _) = setup(&["*"]);
    let r = h().send("GET", "/v1/webhooks?cursor=abc&x=%20", &[("authorization", &bearer(&all))], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["echo"]["url"], "/v1/webhooks?cursor=abc&x=%20");
    // The control routes are keyward's own: never proxied.
    let r = h().send("GET", "/v1/audit", &[("authorization", &bearer(&all))], None);
    assert_eq!(r.status, 200);
    assert!(r.json()["echo"].is_null() && r.json()["success"] == true, "{}", r.text());
}

#[test]
fn paths_are_canonical_and_what_matched_is_what_is_forwarded() {
    let (_, key, _) = setup(&["ai:chat"]);
    let auth = bearer(&key);
    let a = [("authorization", auth.as_str())];
    for p in [
        "/v1/ai%2Fchat",
        "/v1/ai%2fchat",
        "/v1%5Cai/chat",
        "/v1/ai/chat%00",
        "/v1/ai/ch%0Aat",
        "/v1//ai/chat",
        "//v1/ai/chat",
        "/v1/ai/ch%zzat",
    ] {
        let r = h().send("POST", p, &a, Some(b"{}"));
        assert_eq!(r.status, 400, "{p}");
        assert_refused_without_origin(&r, 400, "INVALID_REQUEST");
    }
    // Raw control bytes inside the request target: refused, never forwarded.
    for target in ["/v1/ai/ch\x01at", "/v1/ai/ch\x7fat"] {
        let req = format!(
            "POST {target} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let r = raw(h().port, req.as_bytes());
        let v = assert_refused_without_origin(&r, 400, "INVALID_REQUEST");
        assert_eq!(v["error"]["message"], "The path contains a control character.");
    }
    // Dot segments are resolved by the runtime's URL parser before the worker
    // runs (WHATWG URL); the request is then authorized for, and forwarded
    // to, the resolved path only. Here: authorized as /v1/api_keys, which
    // this key may not call.
    let v = assert_refused_without_origin(&h().send("GET", "/v1/ai/../api_keys", &a, None), 403, "MISSING_SCOPE");
    assert_eq!(v["error"]["message"], "This API key lacks the required scope: control:read");
    let aj = [("authorization", auth.as_str()), ("content-type", "application/json")];
    for p in ["/v1/x/../ai/chat", "/v1/ai/./chat", "/v1/ai/%2e/chat", "/v1/x/%2E%2E/ai/chat"] {
        let r = h().send("POST", p, &aj, Some(b"{}"));
        assert_eq!(r.status, 200, "{p}: {}", r.text());
        assert_eq!(r.json()["echo"]["url"], "/v1/ai/chat", "{p}");
    }
    // Escaped unreserved characters are decoded: one spelling reaches the origin.
    let r = h().send("POST", "/v1/ai/%63hat", &aj, Some(b"{}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["echo"]["url"], "/v1/ai/chat");
}

#[test]
fn secret_key_with_browser_origin_is_refused() {
    let (_, key, _) = setup(&["ai:chat"]);
    for origin in ["https://app.example.com", "null"] {
        let r = chat(&key, &[("origin", origin)]);
        let v = assert_refused_without_origin(&r, 403, "ORIGIN_NOT_ALLOWED");
        assert!(v["error"]["message"].as_str().unwrap().contains("server-to-server"));
        assert!(r.header("access-control-allow-origin").is_none());
    }
}

#[test]
fn origin_timeout_is_504() {
    let (_, key, _) = setup(&["ai:chat"]);
    let r = chat(&key, &[("x-test-delay-ms", "4000")]);
    r.assert_error(504, "ORIGIN_TIMEOUT");
}

#[test]
fn admin_api_authentication_and_validation() {
    // Missing or wrong token: 401, and nothing is created.
    let org = unique("org");
    for auth in [None, Some("Bearer wrong"), Some("Bearer "), Some(ADMIN_TOKEN), Some("Basic x")] {
        let hs: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
        let r = h().send("PUT", &format!("/admin/orgs/{org}"), &hs, Some(br#"{"name":"x","baa_active":true}"#));
        r.assert_error(401, "ADMIN_UNAUTHORIZED");
    }
    let r =
        h().admin("POST", &format!("/admin/orgs/{org}/api_keys"), Some(json!({"name": "k", "scopes": ["ai:chat"]})));
    let v = r.assert_error(404, "RESOURCE_NOT_FOUND");
    assert_eq!(v["error"]["message"], "The org does not exist.");

    let org = h().org(true);
    let keys = format!("/admin/orgs/{org}/api_keys");
    let cases: Vec<(Value, &str)> = vec![
        (json!({"scopes": ["ai:chat"]}), "name: is required"),
        (json!({"name": "x".repeat(101), "scopes": ["ai:chat"]}), "name: must be at most 100 characters"),
        (json!({"name": "x", "scopes": []}), "scopes: must not be empty"),
        (json!({"name": "x", "scopes": ["ai:nope"]}), "scopes: unknown scope \"ai:nope\""),
        (json!({"name": "x", "scopes": "ai:chat"}), "scopes: must be an array of strings"),
        (json!({"name": 7, "scopes": ["ai:chat"]}), "name: must be a string"),
        (json!({"name": "x", "scopes": ["ai:chat"], "user_id": "ghost"}), "user_id: no such user in this org"),
        (json!({"name": "x", "scopes": ["ai:chat"], "admin": true}), "admin: unknown field"),
    ];
    for (body, want) in cases {
        let r = h().admin("POST", &keys, Some(body.clone()));
        let v = r.assert_error(422, "VALIDATION_FAILED");
        assert!(v["error"]["message"].as_str().unwrap().starts_with(want), "{body}: {v}");
    }
    let r = h().admin("PUT", &format!("/admin/orgs/{org}/users/u1"), Some(json!({"role": "superuser"})));
    let v = r.assert_error(422, "VALIDATION_FAILED");
    assert_eq!(v["error"]["message"], "role: must be one of: admin, operator, viewer");
    // Malformed JSON, a JSON bomb, an oversized body.
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let a = [("authorization", auth.as_str())];
    let r = h().send("POST", &keys, &a, Some(b"{\"name\":"));
    assert_eq!(r.assert_error(422, "VALIDATION_FAILED")["error"]["message"], "body: is not valid JSON");
    let bomb = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let r = h().send("POST", &keys, &a, Some(bomb.as_bytes()));
    assert_eq!(r.assert_error(422, "VALIDATION_FAILED")["error"]["message"], "body: is not valid JSON");
    let big = format!(r#"{{"name":"{}","scopes":["ai:chat"]}}"#, "x".repeat(70_000));
    h().send("POST", &keys, &a, Some(big.as_bytes())).assert_error(413, "PAYLOAD_TOO_LARGE");
    let r = h().send("POST", &keys, &a, Some(b"\xff\xfe{}"));
    assert_eq!(r.assert_error(422, "VALIDATION_FAILED")["error"]["message"], "body: must be UTF-8 encoded JSON");
    // Routing.
    h().admin("GET", &format!("/admin/orgs/{org}"), None).assert_error(405, "METHOD_NOT_ALLOWED");
    h().admin("GET", "/admin/nothing", None).assert_error(404, "ROUTE_NOT_FOUND");
    h().admin("DELETE", &format!("/admin/orgs/{org}/api_keys/not-a-ulid"), None)
        .assert_error(404, "RESOURCE_NOT_FOUND");
    h().admin("DELETE", &format!("/admin/orgs/{org}/api_keys/01ARZ3NDEKTSV4RRFFQ69G5FAV"), None)
        .assert_error(404, "RESOURCE_NOT_FOUND");
}

#[test]
fn created_key_has_the_reference_shape_and_never_leaks_the_hash() {
    let org = h().org(true);
    let r = h().admin(
        "POST",
        &format!("/admin/orgs/{org}/api_keys"),
        Some(json!({"name": "production-chat-service", "scopes": ["ai:chat"], "expires_at": "2099-01-01T00:00:00Z"})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(r.header("x-request-id").is_some());
    let v = r.json();
    assert_eq!(v["success"], true);
    let d = &v["data"];
    let plaintext = d["plaintext"].as_str().unwrap();
    assert!(plaintext.starts_with("kw_live_") && plaintext.len() == 44, "{plaintext}");
    assert_eq!(d["prefix"], "kw_live_");
    assert_eq!(d["last_four"], &plaintext[40..]);
    assert_eq!(d["name"], "production-chat-service");
    assert_eq!(d["scopes"], json!(["ai:chat"]));
    assert_eq!(d["expires_at"], "2099-01-01T00:00:00+00:00");
    assert_eq!(d["revoked_at"], Value::Null);
    let id = d["id"].as_str().unwrap();
    assert_eq!(id.len(), 26, "ULID");
    assert!(d["created_at"].as_str().unwrap().ends_with("+00:00"));
    let text = r.text();
    assert!(!text.contains("hash"));
    // The key works.
    assert_eq!(chat(plaintext, &[]).status, 200);
}

#[test]
fn every_response_has_a_request_id() {
    for (m, p) in
        [("GET", "/"), ("GET", "/v1/ai/chat"), ("OPTIONS", "/v1/ai/chat"), ("GET", "/admin"), ("GET", "/v1/%2e%2f")]
    {
        let r = h().send(m, p, &[], None);
        // An error envelope whose request_id is the header's (checked in assert_error).
        r.assert_error(r.status, r.json()["error"]["code"].as_str().unwrap());
    }
    let (_, key, _) = setup(&["ai:chat"]);
    let r = chat(&key, &[]);
    let rid = r.header("x-request-id").unwrap();
    assert_eq!(r.json()["echo"]["headers"]["x-request-id"], rid, "the origin and the client see one id");
}

#[test]
fn a_well_formed_unknown_key_and_an_expired_key_get_the_same_401() {
    use keyward::token::{generate, KeyKind, TokenFormat};
    let unknown = generate(&TokenFormat::default(), KeyKind::Secret, &[0x5a; 32]).plaintext;
    let a = chat(&unknown, &[]);
    let va = a.assert_error(401, "INVALID_API_KEY");
    let org = h().org(true);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let soon = keyward::ids::rfc3339(now + 2000);
    let (expiring, _) = h().key(&org, json!({"name": "e", "scopes": ["ai:chat"], "expires_at": soon}));
    assert_eq!(chat(&expiring, &[]).status, 200);
    std::thread::sleep(std::time::Duration::from_millis(3100));
    let b = chat(&expiring, &[]);
    let vb = b.assert_error(401, "INVALID_API_KEY");
    assert_eq!(va["error"]["message"], vb["error"]["message"]);
    let names = |r: &Resp| {
        let mut v: Vec<String> =
            r.headers.iter().map(|(k, _)| k.to_ascii_lowercase()).filter(|k| k != "date").collect();
        v.sort();
        v
    };
    assert_eq!(names(&a), names(&b), "same headers for unknown and expired");
}

#[test]
fn unreadable_records_fail_closed() {
    // Its own worker: `wrangler kv` locks the local KV database while it
    // runs, which would disturb the other tests' requests.
    let own = Harness::start(Options { origin_url: None, vars: vec![] });
    let org = own.org(true);
    let (key, _) = own.key(&org, json!({"name": "k", "scopes": ["ai:chat"]}));
    let (key2, _) = own.key(&org, json!({"name": "k2", "scopes": ["ai:chat"]}));
    let send = |k: &str| {
        own.send(
            "POST",
            "/v1/ai/chat",
            &[("authorization", &bearer(k)), ("content-type", "application/json")],
            Some(b"{}"),
        )
    };
    assert_eq!(send(&key).status, 200);
    // A key record that does not decode: refuse.
    own.kv_put(&format!("key:{}", sha256_hex(key2.as_bytes())), "{not json");
    send(&key2).assert_error(503, "SERVICE_UNAVAILABLE");
    // The org record vanishes from the read model: refuse, do not allow.
    own.kv_delete(&format!("org:{org}"));
    let r = send(&key);
    r.assert_error(503, "SERVICE_UNAVAILABLE");
    assert_eq!(r.header("retry-after"), Some("1"));
    // A key guard that refuses to answer (here: a record whose limit of 0
    // would mean "unlimited") is a 503, never an allow.
    let (key3, _) = own.key(&org, json!({"name": "k3", "scopes": ["ai:chat"]}));
    let kv_key = format!("key:{}", sha256_hex(key3.as_bytes()));
    let mut record: Value = serde_json::from_str(&own.kv_get(&kv_key).unwrap()).unwrap();
    record["rate_limits"] = json!([{"name": "minute", "limit": 0, "window_seconds": 60}]);
    own.kv_put(&kv_key, &record.to_string());
    assert_eq!(
        own.admin("PUT", &format!("/admin/orgs/{org}"), Some(json!({"name": "o", "baa_active": true}))).status,
        200
    );
    let r = send(&key3);
    r.assert_error(503, "SERVICE_UNAVAILABLE");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(own.origin_saw(r.header("x-request-id").unwrap()).is_none());
}

#[test]
fn refusals_before_the_guard_do_not_consume_quota() {
    let org = h().org(true);
    let (key, _) = h().key(&org, json!({"name": "q", "scopes": ["ai:chat"], "rate_limits": [{"name": "minute", "limit": 3, "window_seconds": 60}]}));
    let auth = bearer(&key);
    for _ in 0..4 {
        h().send("POST", "/v1/embeddings", &[("authorization", &auth)], Some(b"{}")).assert_error(403, "MISSING_SCOPE");
        h().send("GET", "/v1/nope", &[("authorization", &auth)], None).assert_error(404, "ROUTE_NOT_FOUND");
        h().send("GET", "/v1/ai/chat", &[("authorization", &auth)], None).assert_error(405, "METHOD_NOT_ALLOWED");
        h().send("POST", "/v1/a;b", &[("authorization", &auth)], None).assert_error(400, "INVALID_REQUEST");
    }
    for i in 0..3 {
        let r = chat(&key, &[]);
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    chat(&key, &[]).assert_error(429, "RATE_LIMITED");
}

#[test]
fn refusals_after_a_concurrent_guard_check_are_refunded() {
    // BAA inactive: everything the key record alone decides passes, so the
    // guard's check runs concurrently with the org read; authorize then
    // refuses (402) and the counted request is given back.
    let org = h().org(false);
    let limited = json!({"name": "q", "scopes": ["ai:chat"], "rate_limits": [{"name": "minute", "limit": 3, "window_seconds": 60}]});
    let (key, _) = h().key(&org, limited);
    let baa = |on: bool| {
        let r = h().admin("PUT", &format!("/admin/orgs/{org}"), Some(json!({"name": "n", "baa_active": on})));
        assert_eq!(r.status, 200);
    };
    // Six refusals first: every one is given back.
    for _ in 0..6 {
        chat(&key, &[]).assert_error(402, "BAA_REQUIRED");
    }
    // Refunds are sent after the response (waitUntil).
    std::thread::sleep(std::time::Duration::from_millis(800));
    baa(true);
    // Two served requests: a later refund must never give those back.
    for _ in 0..2 {
        assert_eq!(chat(&key, &[]).status, 200);
    }
    baa(false);
    for _ in 0..4 {
        chat(&key, &[]).assert_error(402, "BAA_REQUIRED");
    }
    std::thread::sleep(std::time::Duration::from_millis(800));
    baa(true);
    let r = chat(&key, &[]);
    assert_eq!(r.status, 200, "the one request left: {}", r.text());
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    chat(&key, &[]).assert_error(429, "RATE_LIMITED");
}

#[test]
fn get_requests_never_forward_a_body() {
    let (_, key, _) = setup(&["*"]);
    let auth = bearer(&key);
    for body in [&b""[..], &b"smuggled"[..]] {
        let r = h().send("GET", "/v1/webhooks", &[("authorization", &auth)], Some(body));
        assert_eq!(r.status, 200, "{}", r.text());
        let echo = &r.json()["echo"];
        assert_eq!(echo["body"], "");
        assert!(echo["headers"].get("content-length").is_none_or(|v| v == "0"), "{echo}");
    }
}

#[test]
fn smuggled_headers_and_overrides_never_reach_the_origin() {
    let (_, key, _) = setup(&["ai:chat"]);
    let r = chat(
        &key,
        &[
            ("X_Keyward_User", "u_admin"),
            ("x_request_id", "req_mine"),
            ("X-Original-URL", "/v1/api_keys"),
            ("X-Rewrite-URL", "/v1/api_keys"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Host", "evil.example"),
            ("Forwarded", "for=6.6.6.6"),
            ("X-Real-IP", "6.6.6.6"),
            ("Connection", "X-Internal-Auth"),
            ("X-Internal-Auth", "1"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let hd = r.json()["echo"]["headers"].clone();
    for gone in [
        "x_keyward_user",
        "x_request_id",
        "x-original-url",
        "x-rewrite-url",
        "x-forwarded-host",
        "forwarded",
        "x-real-ip",
        "x-keyward-user",
    ] {
        assert!(hd.get(gone).is_none(), "{gone} reached the origin: {hd}");
    }
    assert_ne!(hd["x-forwarded-for"], "6.6.6.6", "a client cannot claim an address");
    assert_eq!(hd["x-forwarded-proto"], "http");
    // A method override in the query is refused.
    let auth = bearer(&key);
    for q in ["_method=DELETE", "a=1&_METHOD=put"] {
        let r = h().send("POST", &format!("/v1/ai/chat?{q}"), &[("authorization", &auth)], Some(b"{}"));
        assert_refused_without_origin(&r, 400, "INVALID_REQUEST");
    }
    // Path parameters and dot look-alikes that servlet or Windows origins
    // would resolve to another route.
    let (_, docs, _) = setup(&["ai:documents"]);
    let auth = bearer(&docs);
    for p in [
        "/v1/documents/..;/api_keys/01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "/v1/documents/%C0%AE%C0%AE/api_keys",
        "/v1/documents/..%20/x",
        "/v1/documents/.../x",
    ] {
        let r = h().send("DELETE", p, &[("authorization", &auth)], None);
        assert_eq!(r.status, 400, "{p}: {}", r.text());
        assert_refused_without_origin(&r, 400, "INVALID_REQUEST");
    }
}

#[test]
fn a_chunked_admin_body_over_the_limit_is_refused() {
    let org = h().org(true);
    let mut req = format!(
        "POST /admin/orgs/{org}/api_keys HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    let chunk = "x".repeat(16 * 1024);
    for _ in 0..5 {
        req.extend_from_slice(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes());
    }
    req.extend_from_slice(b"0\r\n\r\n");
    raw(h().port, &req).assert_error(413, "PAYLOAD_TOO_LARGE");
}

#[test]
fn bad_header_bytes_get_an_envelope() {
    let (_, key, _) = setup(&["ai:chat"]);
    // Non-UTF-8 bytes in the credential header.
    let mut req = b"POST /v1/ai/chat HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\nAuthorization: Bearer kw_live_\xff\xfe\r\n\r\n".to_vec();
    raw(h().port, &req).assert_error(401, "INVALID_API_KEY");
    // An oversized X-API-Key.
    req = format!(
        "POST /v1/ai/chat HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\nX-API-Key: {}{}\r\n\r\n",
        key,
        "a".repeat(16_000)
    )
    .into_bytes();
    raw(h().port, &req).assert_error(401, "INVALID_API_KEY");
}

/// A second worker whose origin is down, with the BAA gate off.
fn down() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let closed = format!("http://127.0.0.1:{}", free_port());
        Harness::start(Options { origin_url: Some(closed), vars: vec![("REQUIRE_BAA", "false".into())] })
    })
}

#[test]
fn origin_down_is_502_and_baa_gate_can_be_turned_off() {
    let org = down().org(false);
    let (key, _) = down().key(&org, json!({"name": "k", "scopes": ["ai:chat"]}));
    let r = down().send(
        "POST",
        "/v1/ai/chat",
        &[("authorization", &bearer(&key)), ("content-type", "application/json")],
        Some(b"{}"),
    );
    // Not 402: REQUIRE_BAA=false. Authorized, then the origin is unreachable.
    let v = r.assert_error(502, "ORIGIN_UNAVAILABLE");
    assert_eq!(v["error"]["retryable"], true);
}

/// The test hooks exist only in the fault-injection build (tests/faults.rs):
/// the deployed build has no panic route, ignores `x-keyward-fault`, and
/// refuses to start with `KEYWARD_TEST_PANIC` set (every request 503).
#[test]
fn the_normal_build_has_no_test_hooks() {
    let admin = format!("Bearer {ADMIN_TOKEN}");
    h().send("GET", "/__keyward/panic", &[("authorization", &admin)], None).assert_error(401, "INVALID_API_KEY");
    let (_, key, _) = setup(&["ai:chat"]);
    for f in ["kv-read-error", "kv-undecodable", "guard-throw", "guard-slow"] {
        let r = chat(&key, &[("x-keyward-fault", f)]);
        assert_eq!(r.status, 200, "{f}: {}", r.text());
    }
    let armed = Harness::start_without_suffix_list(Options {
        origin_url: None,
        vars: vec![("KEYWARD_TEST_PANIC", "enabled".into())],
    });
    armed.send("GET", "/__keyward/panic", &[("authorization", &admin)], None).assert_error(503, "SERVICE_UNAVAILABLE");
    armed.send("POST", "/v1/ai/chat", &[], None).assert_error(503, "SERVICE_UNAVAILABLE");
}
