//! Key lifecycle end to end (issue 12, the parts built so far): IP
//! allow-lists, metadata signed to the origin, minting caps, cascade
//! revocation and who may revoke what. The real worker on `wrangler dev`.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::OnceLock;

use common::*;
use serde_json::{json, Value};

fn h() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        Harness::start(Options {
            origin_url: None,
            vars: vec![
                ("MAX_KEYS_PER_ORG", "10".into()),
                ("MAX_KEYS_PER_PARENT", "2".into()),
                ("SECRET_SCANNING_KEYS", scanner().0.clone()),
            ],
        })
    })
}

/// A secret-scanning key pair made for the tests (GitHub publishes its
/// public keys in this document's shape): the document and the private key.
fn scanner() -> &'static (String, String) {
    static S: OnceLock<(String, String)> = OnceLock::new();
    S.get_or_init(|| {
        let script = r#"const c=require("crypto");const {publicKey,privateKey}=c.generateKeyPairSync("ec",{namedCurve:"P-256"});
const doc={public_keys:[{key_identifier:"other-key",key:c.generateKeyPairSync("ec",{namedCurve:"P-256"}).publicKey.export({type:"spki",format:"pem"}),is_current:false},
{key_identifier:"test-key-1",key:publicKey.export({type:"spki",format:"pem"}),is_current:true}]};
console.log(JSON.stringify([JSON.stringify(doc),privateKey.export({type:"pkcs8",format:"pem"})]));"#;
        let out = std::process::Command::new("node").args(["-e", script]).output().expect("node");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
        (v[0].clone(), v[1].clone())
    })
}

/// GitHub's signature of `body`: base64 of the DER ECDSA P-256/SHA-256 signature.
fn github_signature(body: &str, private_pem: &str) -> String {
    let script = r#"const c=require("crypto");const [b,k]=JSON.parse(require("fs").readFileSync(0,"utf8"));
process.stdout.write(c.sign("sha256",Buffer.from(b),k).toString("base64"));"#;
    let mut child = std::process::Command::new("node")
        .args(["-e", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(json!([body, private_pem]).to_string().as_bytes()).unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
}

fn chat_from(key: &str, ip: Option<&str>, extra: &[(&str, &str)]) -> Resp {
    let auth = format!("Bearer {key}");
    let mut headers = vec![("authorization", auth.as_str()), ("content-type", "application/json")];
    if let Some(ip) = ip {
        headers.push(("cf-connecting-ip", ip));
    }
    headers.extend_from_slice(extra);
    h().send("POST", "/v1/ai/chat", &headers, Some(b"{}"))
}

fn mint_with(key: &str, body: Value) -> Resp {
    let auth = format!("Bearer {key}");
    let b = body.to_string();
    h().send(
        "POST",
        "/v1/api_keys",
        &[("authorization", &auth), ("content-type", "application/json")],
        Some(b.as_bytes()),
    )
}

fn revoke_with(key: &str, id: &str) -> Resp {
    let auth = format!("Bearer {key}");
    h().send("DELETE", &format!("/v1/api_keys/{id}"), &[("authorization", &auth)], None)
}

#[test]
fn an_ip_allow_list_admits_only_its_addresses_whatever_the_client_claims() {
    let org = h().org(true);
    let (key, id) = h().key(
        &org,
        json!({"name": "fenced", "scopes": ["ai:chat"], "allowed_ips": ["203.0.113.0/24", "2001:db8::/48"]}),
    );
    for ip in ["203.0.113.9", "2001:db8:0:1::5", "::ffff:203.0.113.77"] {
        let r = chat_from(&key, Some(ip), &[]);
        assert_eq!(r.status, 200, "{ip}: {}", r.text());
    }
    for ip in ["198.51.100.7", "2001:db8:1::5", "::ffff:198.51.100.7"] {
        let r = chat_from(&key, Some(ip), &[]);
        let v = r.assert_error(403, "IP_NOT_ALLOWED");
        assert_eq!(v["error"]["message"], "Requests from this IP address are not allowed with this key.");
        assert!(h().origin_saw(r.header("x-request-id").unwrap()).is_none());
    }
    // Spoof attempts: only CF-Connecting-IP counts (Cloudflare sets it).
    for (name, value) in [
        ("x-forwarded-for", "203.0.113.9"),
        ("x-real-ip", "203.0.113.9"),
        ("true-client-ip", "203.0.113.9"),
        ("forwarded", "for=203.0.113.9"),
        ("cf-connecting-ipv6", "2001:db8::1"),
    ] {
        let r = chat_from(&key, Some("198.51.100.7"), &[(name, value)]);
        r.assert_error(403, "IP_NOT_ALLOWED");
    }
    // The list is part of the key, as the API shows it.
    let (reader, _) = h().key(&org, json!({"name": "reader", "scopes": ["control:read"]}));
    let list = h().send("GET", "/v1/api_keys", &[("authorization", &format!("Bearer {reader}"))], None);
    let item = list.json()["data"].as_array().unwrap().iter().find(|k| k["id"] == id.as_str()).cloned().unwrap();
    assert_eq!(item["allowed_ips"], json!(["203.0.113.0/24", "2001:db8::/48"]));
    // Strict parsing at creation.
    for (ips, field) in [
        (json!(["203.0.113.7/24"]), "allowed_ips[0]"),
        (json!([]), "allowed_ips"),
        (json!(["::ffff:203.0.113.0/120"]), "allowed_ips[0]"),
        (json!(["example.com"]), "allowed_ips[0]"),
    ] {
        let r = h().admin(
            "POST",
            &format!("/admin/orgs/{org}/api_keys"),
            Some(json!({"name": "x", "scopes": ["ai:chat"], "allowed_ips": ips})),
        );
        let v = r.assert_error(422, "VALIDATION_FAILED");
        assert!(v["error"]["message"].as_str().unwrap().starts_with(&format!("{field}: ")), "{v}");
    }
}

#[test]
fn metadata_is_signed_to_the_origin() {
    let org = h().org(true);
    let meta = json!({"plan": "pro", "account": "acct_42", "seats": 7});
    let (key, id) = h().key(&org, json!({"name": "m", "scopes": ["ai:chat", "control:read"], "meta": meta}));
    let r = chat_from(&key, None, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let hd = &r.json()["echo"]["headers"];
    let encoded = hd["x-keyward-meta"].as_str().expect("X-Keyward-Meta");
    let decoded: Value = serde_json::from_slice(&b64url(encoded)).unwrap();
    assert_eq!(decoded, meta);
    let canonical = format!(
        "keyward-v1\n{}\nPOST\n/v1/ai/chat\n\n{}\n{org}\n{id}\nsecret\nai:chat control:read\n\n\n{encoded}",
        hd["x-keyward-timestamp"].as_str().unwrap(),
        hd["x-request-id"].as_str().unwrap()
    );
    let want = format!("v1={}", hmac_sha256_hex(SIGNING_SECRET.as_bytes(), canonical.as_bytes()));
    assert_eq!(hd["x-keyward-signature"], want.as_str());
    // A client cannot send its own.
    let forged = chat_from(&key, None, &[("x-keyward-meta", "eyJwbGFuIjoiZW50ZXJwcmlzZSJ9")]);
    assert_eq!(forged.json()["echo"]["headers"]["x-keyward-meta"], encoded);
    // In lists; a minted key carries it and may not choose another.
    let list = h().send("GET", "/v1/api_keys", &[("authorization", &format!("Bearer {key}"))], None);
    let item = list.json()["data"].as_array().unwrap().iter().find(|k| k["id"] == id.as_str()).cloned().unwrap();
    assert_eq!(item["meta"], meta);
    let r = mint_with(&key, json!({"name": "child", "scopes": ["ai:chat"]}));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["data"]["meta"], meta);
    let r = mint_with(&key, json!({"name": "child", "scopes": ["ai:chat"], "meta": {"plan": "enterprise"}}));
    r.assert_error(403, "PERMISSION_DENIED");
    // No metadata: no header, and the signature has no extra line.
    let (plain, _) = h().key(&org, json!({"name": "p", "scopes": ["ai:chat"]}));
    assert!(chat_from(&plain, None, &[]).json()["echo"]["headers"].get("x-keyward-meta").is_none());
    let big = json!({"x": "y".repeat(4100)});
    let r = h().admin(
        "POST",
        &format!("/admin/orgs/{org}/api_keys"),
        Some(json!({"name": "m", "scopes": ["ai:chat"], "meta": big})),
    );
    r.assert_error(422, "VALIDATION_FAILED");
}

fn b64url(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        _ => 63,
    } as u32;
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &c)| n | val(c) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[test]
fn minting_caps_and_cascade_revocation() {
    let org = h().org(true);
    let (root, root_id) = h().key(&org, json!({"name": "root", "scopes": ["ai:*", "control:read"]}));
    // Per parent: 2 live children, then 409.
    let child = |parent: &str, name: &str| {
        let r = mint_with(parent, json!({"name": name, "scopes": ["ai:chat", "control:read"]}));
        assert_eq!(r.status, 201, "{}", r.text());
        let d = &r.json()["data"];
        (d["plaintext"].as_str().unwrap().to_owned(), d["id"].as_str().unwrap().to_owned())
    };
    let (a, a_id) = child(&root, "a");
    let (_, b_id) = child(&root, "b");
    let v = mint_with(&root, json!({"name": "c", "scopes": ["ai:chat"]})).assert_error(409, "KEY_LIMIT_REACHED");
    assert!(v["error"]["message"].as_str().unwrap().contains("MAX_KEYS_PER_PARENT"), "{v}");
    let (aa, aa_id) = child(&a, "a.a");
    assert_eq!(chat_from(&aa, None, &[]).status, 200);
    // Revoking a child frees its place.
    assert_eq!(revoke_with(&root, &b_id).status, 200);
    let (_, c_id) = child(&root, "c");
    // Revoking the root revokes every descendant at once.
    let r = revoke_with(&root, &root_id);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["descendants_revoked"], 4, "a, b (again), c and a.a: {}", r.text());
    for key in [&root, &a, &aa] {
        chat_from(key, None, &[]).assert_error(401, "INVALID_API_KEY");
    }
    let _ = (a_id, aa_id, c_id);
    // Per org: MAX_KEYS_PER_ORG=10 live keys (more than a family's 8).
    let org2 = h().org(true);
    let keys: Vec<(String, String)> =
        (0..10).map(|i| h().key(&org2, json!({"name": format!("k{i}"), "scopes": ["ai:chat"]}))).collect();
    let create_k10 = || {
        h().admin("POST", &format!("/admin/orgs/{org2}/api_keys"), Some(json!({"name": "k10", "scopes": ["ai:chat"]})))
    };
    let v = create_k10().assert_error(409, "KEY_LIMIT_REACHED");
    assert!(v["error"]["message"].as_str().unwrap().contains("MAX_KEYS_PER_ORG"), "{v}");
    // At the cap, a roll with a grace period would add an eleventh live key:
    // refused. With none, the old key ends as the new one starts: rolled,
    // and the org still holds 10 live keys.
    let roll = |grace: u64| {
        let path = format!("/admin/orgs/{org2}/api_keys/{}/roll", keys[0].1);
        h().admin("POST", &path, Some(json!({"grace_seconds": grace})))
    };
    let v = roll(60).assert_error(409, "KEY_LIMIT_REACHED");
    assert!(v["error"]["message"].as_str().unwrap().contains("MAX_KEYS_PER_ORG"), "{v}");
    assert_eq!(chat_from(&keys[0].0, None, &[]).status, 200, "the refused roll changed nothing");
    let r = roll(0);
    assert_eq!(r.status, 201, "{}", r.text());
    let next = r.json()["data"]["plaintext"].as_str().unwrap().to_owned();
    assert_eq!(chat_from(&next, None, &[]).status, 200);
    chat_from(&keys[0].0, None, &[]).assert_error(401, "INVALID_API_KEY");
    create_k10().assert_error(409, "KEY_LIMIT_REACHED");
    // Per parent the same: a key at MAX_KEYS_PER_PARENT=2 rolls its child
    // (the successor is its child too) only with no grace.
    let org3 = h().org(true);
    let (boss, _) = h().key(&org3, json!({"name": "boss", "scopes": ["ai:*", "control:read"]}));
    let (x, _) = child(&boss, "x");
    let (_, y_id) = child(&boss, "y");
    let roll_y = |grace: u64| {
        let (auth, body) = (format!("Bearer {boss}"), json!({"grace_seconds": grace}).to_string());
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        h().send("POST", &format!("/v1/api_keys/{y_id}/roll"), &headers, Some(body.as_bytes()))
    };
    let v = roll_y(60).assert_error(409, "KEY_LIMIT_REACHED");
    assert!(v["error"]["message"].as_str().unwrap().contains("MAX_KEYS_PER_PARENT"), "{v}");
    let r = roll_y(0);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(chat_from(&x, None, &[]).status, 200);
    let v = mint_with(&boss, json!({"name": "z", "scopes": ["ai:chat"]})).assert_error(409, "KEY_LIMIT_REACHED");
    assert!(v["error"]["message"].as_str().unwrap().contains("MAX_KEYS_PER_PARENT"), "{v}");
    // A key that is not boss's: its successor would be boss's child (a
    // third), so even with no grace the roll needs room boss does not have.
    let (_, loner_id) = h().key(&org3, json!({"name": "loner", "scopes": ["ai:chat"]}));
    let (auth, body) = (format!("Bearer {boss}"), json!({"grace_seconds": 0}).to_string());
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let r = h().send("POST", &format!("/v1/api_keys/{loner_id}/roll"), &headers, Some(body.as_bytes()));
    let v = r.assert_error(409, "KEY_LIMIT_REACHED");
    assert!(v["error"]["message"].as_str().unwrap().contains("MAX_KEYS_PER_PARENT"), "{v}");
}

/// A roll family holds at most 8 live keys: at 8, a roll with a grace
/// period is refused (naming the 8), one with none replaces the latest.
#[test]
fn a_family_of_eight_live_keys_rolls_only_with_no_grace() {
    let org = h().org(true);
    let (mut key, mut id) = h().key(&org, json!({"name": "fam", "scopes": ["ai:chat"]}));
    let roll = |id: &str, grace: u64| {
        h().admin("POST", &format!("/admin/orgs/{org}/api_keys/{id}/roll"), Some(json!({"grace_seconds": grace})))
    };
    for _ in 0..7 {
        let r = roll(&id, 3600);
        assert_eq!(r.status, 201, "{}", r.text());
        let d = &r.json()["data"];
        (key, id) = (d["plaintext"].as_str().unwrap().to_owned(), d["id"].as_str().unwrap().to_owned());
    }
    let v = roll(&id, 60).assert_error(409, "KEY_LIMIT_REACHED");
    assert!(v["error"]["message"].as_str().unwrap().contains("has 8 live versions"), "{v}");
    assert_eq!(chat_from(&key, None, &[]).status, 200, "the refused roll changed nothing");
    let r = roll(&id, 0);
    assert_eq!(r.status, 201, "{}", r.text());
    let next = r.json()["data"]["plaintext"].as_str().unwrap().to_owned();
    chat_from(&key, None, &[]).assert_error(401, "INVALID_API_KEY");
    assert_eq!(chat_from(&next, None, &[]).status, 200);
}

#[test]
fn a_key_revokes_only_keys_it_could_have_minted() {
    let org = h().org(true);
    let r = h().admin("PUT", &format!("/admin/orgs/{org}/users/boss"), Some(json!({"role": "admin"})));
    assert_eq!(r.status, 200);
    let (_, admin_key_id) = h().key(&org, json!({"name": "admin's", "scopes": ["ai:chat"], "user_id": "boss"}));
    let (production, production_id) = h().key(&org, json!({"name": "production", "scopes": ["ai:chat"]}));
    // A short-lived, tightly limited key with control:read.
    let soon = "2099-01-01T00:00:00Z";
    let (small, _) = h().key(
        &org,
        json!({"name": "small", "scopes": ["ai:chat", "control:read"], "expires_at": soon,
               "rate_limits": [{"name": "minute", "limit": 5, "window_seconds": 60}]}),
    );
    for (target, what) in
        [(&admin_key_id, "a user-bound admin key"), (&production_id, "a long-lived key with looser limits")]
    {
        let r = revoke_with(&small, target);
        let v = r.assert_error(403, "PERMISSION_DENIED");
        assert!(v["error"]["message"].as_str().unwrap().contains("cannot revoke"), "{what}: {v}");
    }
    assert_eq!(chat_from(&production, None, &[]).status, 200, "still alive");
    // The refusals are audited.
    let (reader, _) = h().key(&org, json!({"name": "reader", "scopes": ["control:read"]}));
    let audit = h().send("GET", "/v1/audit?limit=20", &[("authorization", &format!("Bearer {reader}"))], None);
    let refused =
        audit.json()["data"].as_array().unwrap().iter().filter(|e| e["action"] == "key.revoke_refused").count();
    assert_eq!(refused, 2);
}

#[test]
fn a_leaked_key_reported_by_github_is_revoked_at_once() {
    let org = h().org(true);
    let (leaked, leaked_id) =
        h().key(&org, json!({"name": "pushed to a public repo", "scopes": ["ai:chat", "control:read"]}));
    let child = mint_with(&leaked, json!({"name": "its child", "scopes": ["ai:chat"]}));
    assert_eq!(child.status, 201, "{}", child.text());
    let child_key = child.json()["data"]["plaintext"].as_str().unwrap().to_owned();
    let (bystander, _) = h().key(&org, json!({"name": "safe", "scopes": ["ai:chat"]}));
    assert_eq!(chat_from(&leaked, None, &[]).status, 200);
    let body = json!([
        {"token": leaked, "type": "keyward_secret_key", "url": "https://github.com/octo/repo/blob/abc/config.py", "source": "content"},
        {"token": "kw_live_thisisnotarealkeyatallbutlookslikeone0", "type": "keyward_secret_key", "url": "https://github.com/x", "source": "content"},
        {"token": "ghp_something_else", "type": "keyward_secret_key", "url": "https://github.com/y", "source": "content"},
    ])
    .to_string();
    let (_, private) = scanner();
    let post = |body: &str, key_id: &str, sig: &str| {
        h().send(
            "POST",
            "/v1/secret-scanning/verify",
            &[
                ("content-type", "application/json"),
                ("github-public-key-identifier", key_id),
                ("github-public-key-signature", sig),
            ],
            Some(body.as_bytes()),
        )
    };
    // Unsigned, signed by another key, or over other bytes: refused, and nothing revoked.
    let good = github_signature(&body, private);
    for (key_id, sig, what) in [
        ("test-key-1", "", "no signature"),
        ("other-key", good.as_str(), "another key's identifier"),
        ("nope", good.as_str(), "an unknown identifier"),
    ] {
        post(&body, key_id, sig).assert_error(401, "SECRET_SCANNING_UNAUTHORIZED");
        assert_eq!(chat_from(&leaked, None, &[]).status, 200, "{what}: still alive");
    }
    let tampered = body.replace("config.py", "config.rb");
    post(&tampered, "test-key-1", &good).assert_error(401, "SECRET_SCANNING_UNAUTHORIZED");
    assert_eq!(chat_from(&leaked, None, &[]).status, 200);
    // Signed: each match answered by its hash, the live key revoked.
    let r = post(&body, "test-key-1", &good);
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    assert!(!text.contains(&leaked) && !text.contains("ghp_"), "never echoes a token: {text}");
    let answers = r.json();
    assert_eq!(answers.as_array().unwrap().len(), 3);
    assert_eq!(answers[0]["token_hash"], sha256_hex(leaked.as_bytes()).as_str());
    assert_eq!(answers[0]["label"], "true_positive");
    assert_eq!(answers[0]["token_type"], "keyward_secret_key");
    assert_eq!(answers[1]["label"], "false_positive");
    assert_eq!(answers[2]["label"], "false_positive");
    chat_from(&leaked, None, &[]).assert_error(401, "INVALID_API_KEY");
    chat_from(&child_key, None, &[]).assert_error(401, "INVALID_API_KEY");
    assert_eq!(chat_from(&bystander, None, &[]).status, 200);
    // Reported again: still a real secret (revoked as leaked), nothing
    // revoked twice; the others still false.
    let r = post(&body, "test-key-1", &good);
    let labels: Vec<Value> = r.json().as_array().unwrap().iter().map(|a| a["label"].clone()).collect();
    assert_eq!(labels, [json!("true_positive"), json!("false_positive"), json!("false_positive")]);
    // Audited as leaked, by secret_scanning, with where it was found.
    let (reader, _) = h().key(&org, json!({"name": "reader", "scopes": ["control:read"]}));
    let audit = h().send("GET", "/v1/audit?limit=20", &[("authorization", &format!("Bearer {reader}"))], None);
    let entries = audit.json()["data"].as_array().unwrap().clone();
    let leak = entries.iter().find(|e| e["action"] == "key.leaked").expect("a key.leaked entry");
    assert_eq!(leak["actor"], "secret_scanning");
    assert_eq!(leak["target"], leaked_id.as_str());
    assert_eq!(leak["detail"]["url"], "https://github.com/octo/repo/blob/abc/config.py");
    assert!(entries.iter().any(|e| e["action"] == "key.revoked" && e["detail"]["cascade_from"] == leaked_id.as_str()));
}

/// `LEASE_MS` of the harness (wrangler.toml).
const LEASE_MS: u64 = 1_000;

fn control(key: &str, method: &str, path: &str, body: Option<Value>) -> Resp {
    let auth = format!("Bearer {key}");
    let b = body.map(|b| b.to_string());
    h().send(
        method,
        path,
        &[("authorization", &auth), ("content-type", "application/json")],
        b.as_deref().map(str::as_bytes),
    )
}

fn send_as(key: &str, method: &str, path: &str) -> Resp {
    let auth = format!("Bearer {key}");
    h().send(method, path, &[("authorization", &auth), ("content-type", "application/json")], Some(b"{}"))
}

fn audit_actions(reader: &str) -> Vec<Value> {
    control(reader, "GET", "/v1/audit?limit=50", None).json()["data"].as_array().unwrap().clone()
}

#[test]
fn rolling_a_key_shares_its_counters_and_ends_the_old_key_after_the_grace() {
    let org = h().org(true);
    let limits = json!([{"name": "minute", "limit": 6, "window_seconds": 60}]);
    let (old, old_id) =
        h().key(&org, json!({"name": "prod", "scopes": ["ai:chat"], "rate_limits": limits, "meta": {"plan": "pro"}}));
    for _ in 0..3 {
        assert_eq!(chat_from(&old, None, &[]).status, 200);
    }
    // Roll through the admin API, with a 3 s grace.
    let r = h().admin("POST", &format!("/admin/orgs/{org}/api_keys/{old_id}/roll"), Some(json!({"grace_seconds": 3})));
    assert_eq!(r.status, 201, "{}", r.text());
    let d = r.json()["data"].clone();
    let new = d["plaintext"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(d["rolled_from"], old_id.as_str());
    assert_eq!((d["name"].clone(), d["scopes"].clone()), (json!("prod"), json!(["ai:chat"])), "same settings");
    assert_eq!((d["rate_limits"].clone(), d["meta"].clone()), (limits.clone(), json!({"plan": "pro"})));
    let ends = d["old_key_expires_at"].as_str().unwrap().to_owned();
    // Both keys work within the grace, on one count: 3 + 2 + 1 = 6, then 429 for either.
    for _ in 0..2 {
        let r = chat_from(&new, None, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = h().origin_saw(r.header("x-request-id").unwrap()).unwrap();
        let meta = String::from_utf8(b64url(seen["headers"]["x-keyward-meta"].as_str().unwrap())).unwrap();
        assert_eq!(meta, r#"{"plan":"pro"}"#, "the new key carries the old one's metadata");
    }
    assert_eq!(chat_from(&old, None, &[]).status, 200);
    let v = chat_from(&new, None, &[]).assert_error(429, "RATE_LIMITED");
    assert_eq!(v["error"]["retryable"], true, "rolling is no way around a limit");
    chat_from(&old, None, &[]).assert_error(429, "RATE_LIMITED");
    // After the grace the old key is refused like an expired one (though this
    // isolate cached its record, and KV served it, without an expiry).
    std::thread::sleep(std::time::Duration::from_millis(3_200));
    let v = chat_from(&old, None, &[]).assert_error(401, "INVALID_API_KEY");
    assert_eq!(v["error"]["message"], "The API key is missing, malformed, expired, revoked or unknown.");
    chat_from(&new, None, &[]).assert_error(429, "RATE_LIMITED");
    // The list shows the old key's end, and the audit the roll.
    let (reader, _) = h().key(&org, json!({"name": "reader", "scopes": ["control:read"]}));
    let list = control(&reader, "GET", "/v1/api_keys", None).json();
    let old_view = list["data"].as_array().unwrap().iter().find(|k| k["id"] == old_id.as_str()).cloned().unwrap();
    assert_eq!(old_view["expires_at"], ends.as_str());
    let rolled = audit_actions(&reader).into_iter().find(|e| e["action"] == "key.rolled").unwrap();
    // The new key's guard is the family's (the old key's): its counts, its members.
    let g = h().guard_stats(&org, d["id"].as_str().unwrap());
    assert_eq!(g["key_id"], d["id"], "{g}");
    assert!(
        g["family"].as_u64().unwrap() >= 1 && g["calls"]["check"].as_u64().unwrap() >= 6,
        "old and new key's checks: {g}"
    );
    assert_eq!((rolled["target"].clone(), rolled["detail"]["new_key_id"].clone()), (json!(old_id), d["id"].clone()));
    // A grace of 0 ends the key at once; the control API rolls as well.
    let new_id = d["id"].as_str().unwrap().to_owned();
    // (A key with the same metadata: a roll hands out a key carrying it.)
    let (admin_reader, _) =
        h().key(&org, json!({"name": "ops", "scopes": ["ai:*", "control:read"], "meta": {"plan": "pro"}}));
    let r = control(&admin_reader, "POST", &format!("/v1/api_keys/{new_id}/roll"), Some(json!({"grace_seconds": 0})));
    assert_eq!(r.status, 201, "{}", r.text());
    let newest = r.json()["data"]["plaintext"].as_str().unwrap().to_owned();
    // (This isolate answers the 429 it just got for LEASE_MS without
    // asking the guard, as for any key: past it, the guard's word.)
    std::thread::sleep(std::time::Duration::from_millis(LEASE_MS + 100));
    chat_from(&new, None, &[]).assert_error(401, "INVALID_API_KEY");
    chat_from(&newest, None, &[]).assert_error(429, "RATE_LIMITED");
    // Revoked or expired keys do not roll (404); a grace past a week is refused.
    for id in [&old_id, &new_id] {
        let r = control(&admin_reader, "POST", &format!("/v1/api_keys/{id}/roll"), Some(json!({})));
        let v = r.assert_error(404, "RESOURCE_NOT_FOUND");
        assert!(v["error"]["message"].as_str().unwrap().contains("No live API key"), "{v}");
    }
    let newest_id = r.json()["data"]["id"].as_str().unwrap().to_owned();
    let r = control(
        &admin_reader,
        "POST",
        &format!("/v1/api_keys/{newest_id}/roll"),
        Some(json!({"grace_seconds": 604801})),
    );
    let v = r.assert_error(422, "VALIDATION_FAILED");
    assert!(v["error"]["message"].as_str().unwrap().starts_with("grace_seconds"), "{v}");
    // A key with fewer scopes than the target cannot roll it.
    let r = control(&reader, "POST", &format!("/v1/api_keys/{newest_id}/roll"), Some(json!({})));
    r.assert_error(403, "PERMISSION_DENIED");
}

#[test]
fn an_update_applies_on_the_very_next_request() {
    let org = h().org(true);
    let (key, id) = h().key(&org, json!({"name": "app", "scopes": ["ai:chat", "ai:embeddings"]}));
    let (ops, _) = h().key(&org, json!({"name": "ops", "scopes": ["ai:*", "control:read"]}));
    // This isolate now holds the key's record for 30 s, and KV would serve
    // it for up to a minute more.
    assert_eq!(chat_from(&key, None, &[]).status, 200);
    let r = control(
        &ops,
        "PATCH",
        &format!("/v1/api_keys/{id}"),
        Some(json!({"scopes": ["ai:embeddings"], "name": "app v2"})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.json()["data"]["scopes"].clone(), r.json()["data"]["name"].clone()),
        (json!(["ai:embeddings"]), json!("app v2"))
    );
    let v = chat_from(&key, None, &[]).assert_error(403, "MISSING_SCOPE");
    assert!(v["error"]["message"].as_str().unwrap().contains("ai:chat"), "{v}");
    assert_eq!(send_as(&key, "POST", "/v1/embeddings").status, 200);
    // Metadata is the operator's to set (as at minting), and reaches the
    // origin signed on the next request.
    let r = control(&ops, "PATCH", &format!("/v1/api_keys/{id}"), Some(json!({"meta": {"plan": "enterprise"}})));
    let v = r.assert_error(403, "PERMISSION_DENIED");
    assert!(v["error"]["message"].as_str().unwrap().contains("Metadata is set by an operator"), "{v}");
    let r =
        h().admin("PATCH", &format!("/admin/orgs/{org}/api_keys/{id}"), Some(json!({"meta": {"plan": "enterprise"}})));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = send_as(&key, "POST", "/v1/embeddings");
    let seen = h().origin_saw(r.header("x-request-id").unwrap()).unwrap();
    let meta = String::from_utf8(b64url(seen["headers"]["x-keyward-meta"].as_str().unwrap())).unwrap();
    assert_eq!(meta, r#"{"plan":"enterprise"}"#);
    // Addresses too.
    let r = control(&ops, "PATCH", &format!("/v1/api_keys/{id}"), Some(json!({"allowed_ips": ["203.0.113.0/24"]})));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = h().send(
        "POST",
        "/v1/embeddings",
        &[
            ("authorization", &format!("Bearer {key}")),
            ("content-type", "application/json"),
            ("cf-connecting-ip", "198.51.100.1"),
        ],
        Some(b"{}"),
    );
    r.assert_error(403, "IP_NOT_ALLOWED");
    // Loosening: scopes never widen; limits only within what the caller could mint.
    let r =
        control(&ops, "PATCH", &format!("/v1/api_keys/{id}"), Some(json!({"scopes": ["ai:chat", "ai:embeddings"]})));
    let v = r.assert_error(422, "VALIDATION_FAILED");
    assert!(v["error"]["message"].as_str().unwrap().starts_with("scopes"), "{v}");
    let loose = json!({"rate_limits": [{"name": "minute", "limit": 1000, "window_seconds": 60}]});
    let v = control(&ops, "PATCH", &format!("/v1/api_keys/{id}"), Some(loose.clone()))
        .assert_error(403, "PERMISSION_DENIED");
    assert!(v["error"]["message"].as_str().unwrap().contains("cannot update"), "{v}");
    let r = h().admin("PATCH", &format!("/admin/orgs/{org}/api_keys/{id}"), Some(loose));
    assert_eq!(r.status, 200, "an operator may loosen: {}", r.text());
    // Bad bodies name the field; unknown or immutable fields are refused.
    for (body, field) in [
        (json!({}), "body"),
        (json!({"kind": "widget"}), "kind"),
        (json!({"expires_at": "2099-01-01T00:00:00Z"}), "expires_at"),
        (json!({"credits": {"remaining": -1}}), "credits.remaining"),
        (
            json!({"credits": {"remaining": 5, "refill": {"amount": 5, "interval": "weekly"}}}),
            "credits.refill.interval",
        ),
        (json!({"allowed_origins": ["https://a.example"]}), "allowed_origins"),
    ] {
        let v = control(&ops, "PATCH", &format!("/v1/api_keys/{id}"), Some(body.clone()))
            .assert_error(422, "VALIDATION_FAILED");
        assert!(v["error"]["message"].as_str().unwrap().starts_with(field), "{body}: {v}");
    }
    // Every change is audited with the fields it changed.
    let (reader, _) = h().key(&org, json!({"name": "reader", "scopes": ["control:read"]}));
    let updates: Vec<Value> = audit_actions(&reader).into_iter().filter(|e| e["action"] == "key.updated").collect();
    assert_eq!(updates.len(), 4, "{updates:?}");
    assert_eq!(updates.last().unwrap()["detail"]["fields"], json!(["name", "scopes"]));
    let refused = audit_actions(&reader).into_iter().filter(|e| e["action"] == "key.update_refused").count();
    assert!(refused >= 2, "{refused}");
}

#[test]
fn credits_admit_exactly_their_count_however_many_arrive_at_once() {
    for consistency in ["strict", "leased"] {
        let org = h().org(true);
        let (key, id) = h().key(
            &org,
            json!({"name": "metered", "scopes": ["ai:*"], "consistency": consistency, "credits": {"remaining": 10}}),
        );
        let rs = concurrent_chats(h().port, &key, 50);
        let ok: Vec<&Resp> = rs.iter().filter(|r| r.status == 200).collect();
        assert_eq!(ok.len(), 10, "{consistency}: {:?}", rs.iter().map(|r| r.status).collect::<Vec<_>>());
        for r in rs.iter().filter(|r| r.status != 200) {
            let v = r.assert_error(429, "USAGE_EXCEEDED");
            assert_eq!(v["error"]["retryable"], false);
            assert_eq!(r.header("x-credits-remaining"), Some("0"));
            assert!(r.header("retry-after").is_none(), "no refill, no retry time");
        }
        let mut left: Vec<u64> = ok.iter().map(|r| r.header("x-credits-remaining").unwrap().parse().unwrap()).collect();
        left.sort();
        if consistency == "strict" {
            assert_eq!(left, (0..10).collect::<Vec<u64>>(), "each admission says what is left");
        }
        let at_origin =
            h().origin_log().into_iter().filter(|e| e["headers"]["x-keyward-key-id"] == id.as_str()).count();
        assert_eq!(at_origin, 10, "{consistency}");
        // A top-up (PATCH) sets the count; rolling keeps it.
        let r =
            h().admin("PATCH", &format!("/admin/orgs/{org}/api_keys/{id}"), Some(json!({"credits": {"remaining": 7}})));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["data"]["credits"]["remaining"], 7);
        if consistency == "leased" {
            // An isolate that saw a leased key run out asks again after
            // LEASE_MS (as for every change to a leased key).
            std::thread::sleep(std::time::Duration::from_millis(LEASE_MS + 100));
        }
        // Summarize costs 5 (policy): 7 → 2; a second one is refused whole.
        let r = send_as(&key, "POST", "/v1/summarize");
        assert_eq!(r.status, 200, "{consistency}: {}", r.text());
        if consistency == "strict" {
            assert_eq!(r.header("x-credits-remaining"), Some("2"));
        }
        let r = send_as(&key, "POST", "/v1/summarize");
        r.assert_error(429, "USAGE_EXCEEDED");
        if consistency == "strict" {
            assert_eq!(r.header("x-credits-remaining"), Some("2"), "what is left, too few for the route");
        }
        let r = h().admin("POST", &format!("/admin/orgs/{org}/api_keys/{id}/roll"), Some(json!({"grace_seconds": 60})));
        assert_eq!(r.status, 201, "{}", r.text());
        let rolled = r.json()["data"]["plaintext"].as_str().unwrap().to_owned();
        let mut served = 0;
        for _ in 0..4 {
            match chat_from(&rolled, None, &[]).status {
                200 => served += 1,
                s => assert_eq!(s, 429),
            }
        }
        assert_eq!(served, 2, "{consistency}: the rolled key spends the same 2 credits");
        chat_from(&key, None, &[]).assert_error(429, "USAGE_EXCEEDED");
    }
    // A refilling key says when to retry.
    let org = h().org(true);
    let (key, _) = h().key(
        &org,
        json!({"name": "hourly", "scopes": ["ai:chat"], "credits": {"remaining": 1, "refill": {"amount": 1, "interval": "hourly"}}}),
    );
    assert_eq!(chat_from(&key, None, &[]).status, 200);
    let r = chat_from(&key, None, &[]);
    r.assert_error(429, "USAGE_EXCEEDED");
    let retry: i64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
}

#[test]
fn a_key_that_rolls_itself_cannot_outlive_its_revocation() {
    let org = h().org(true);
    let (key, id) = h().key(&org, json!({"name": "self", "scopes": ["ai:*", "control:read"]}));
    // A key rolls itself (say, a leaked one, with a week's grace).
    let r = control(&key, "POST", &format!("/v1/api_keys/{id}/roll"), Some(json!({"grace_seconds": 604800})));
    assert_eq!(r.status, 201, "{}", r.text());
    let (next, next_id) = (
        r.json()["data"]["plaintext"].as_str().unwrap().to_owned(),
        r.json()["data"]["id"].as_str().unwrap().to_owned(),
    );
    assert_eq!(chat_from(&next, None, &[]).status, 200);
    // In its grace the old key still calls the API, but manages no keys.
    assert_eq!(chat_from(&key, None, &[]).status, 200);
    for (method, path, body) in [
        ("POST", format!("/v1/api_keys/{next_id}/roll"), json!({"grace_seconds": 0})),
        ("POST", "/v1/api_keys".to_owned(), json!({"name": "escape", "scopes": ["ai:chat"]})),
        ("DELETE", format!("/v1/api_keys/{next_id}"), json!({})),
    ] {
        let v = control(&key, method, &path, Some(body)).assert_error(403, "PERMISSION_DENIED");
        assert!(v["error"]["message"].as_str().unwrap().contains("was rolled"), "{method} {path}: {v}");
    }
    assert_eq!(chat_from(&next, None, &[]).status, 200, "the successor lives");
    // Rolled once, a key is not rolled again (its successor is).
    let r = h().admin("POST", &format!("/admin/orgs/{org}/api_keys/{id}/roll"), Some(json!({})));
    let v = r.assert_error(409, "KEY_LIMIT_REACHED");
    assert!(v["error"]["message"].as_str().unwrap().contains("already rolled"), "{v}");
    // The self-rolled successor is the old key's child: revoking the old key
    // (a leak report, an operator) revokes it too.
    let r = h().admin("DELETE", &format!("/admin/orgs/{org}/api_keys/{id}"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["descendants_revoked"], 1, "{}", r.text());
    chat_from(&next, None, &[]).assert_error(401, "INVALID_API_KEY");
    // A key rolls only keys whose metadata it has (the new key carries it).
    let (ops, _) = h().key(&org, json!({"name": "ops", "scopes": ["ai:*", "control:read"]}));
    let (_, acct) = h().key(&org, json!({"name": "acct", "scopes": ["ai:chat"], "meta": {"account": "acct_42"}}));
    let v = control(&ops, "POST", &format!("/v1/api_keys/{acct}/roll"), Some(json!({})))
        .assert_error(403, "PERMISSION_DENIED");
    assert!(v["error"]["message"].as_str().unwrap().contains("metadata"), "{v}");
}
