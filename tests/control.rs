//! End to end: the public control API (`seeds/000_*`, `seeds/001_*`) served
//! by keyward itself — mint, list, revoke, audit, usage — with user-bound
//! keys capped by their user's current role. Run with `make test`.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn h() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| Harness::start(Options { origin_url: None, vars: vec![] }))
}

fn call(key: &str, method: &str, path: &str, body: Option<Value>) -> Resp {
    call_on(h(), key, method, path, body)
}

fn call_on(on: &Harness, key: &str, method: &str, path: &str, body: Option<Value>) -> Resp {
    let auth = format!("Bearer {key}");
    let b = body.map(|v| v.to_string());
    on.send(
        method,
        path,
        &[("authorization", &auth), ("content-type", "application/json")],
        b.as_deref().map(str::as_bytes),
    )
}

/// An org whose control key (org-level, not user-bound) has `scopes`.
fn org_with_control_key(scopes: &[&str]) -> (String, String, String) {
    let org = h().org(true);
    let (key, id) = h().key(&org, json!({"name": "control", "scopes": scopes}));
    (org, key, id)
}

fn origin_saw_nothing(r: &Resp) {
    let rid = r.header("x-request-id").unwrap();
    assert!(h().origin_saw(rid).is_none(), "a control route was proxied");
}

#[test]
fn create_then_use_then_list_without_secrets() {
    let (_, admin_key, admin_id) = org_with_control_key(&["ai:*", "control:read"]);
    let r = call(
        &admin_key,
        "POST",
        "/v1/api_keys",
        Some(json!({"name": "production-chat-service", "scopes": ["ai:chat"]})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    origin_saw_nothing(&r);
    let v = r.json();
    assert_eq!(v["success"], true);
    let d = &v["data"];
    for f in ["id", "name", "plaintext", "prefix", "last_four", "scopes", "created_at"] {
        assert!(!d[f].is_null(), "{f} missing: {d}");
    }
    let plaintext = d["plaintext"].as_str().unwrap().to_owned();
    let new_id = d["id"].as_str().unwrap().to_owned();
    assert_eq!(d["scopes"], json!(["ai:chat"]));
    // The new key works on the very next request.
    let r = call(&plaintext, "POST", "/v1/ai/chat", Some(json!({})));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["echo"]["headers"]["x-keyward-key-id"], new_id.as_str());
    // The list shows both keys, newest first, never a secret.
    let r = call(&admin_key, "GET", "/v1/api_keys", None);
    assert_eq!(r.status, 200, "{}", r.text());
    origin_saw_nothing(&r);
    let v = r.json();
    let ids: Vec<&str> = v["data"].as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [new_id.as_str(), admin_id.as_str()]);
    assert_eq!(v["meta"], json!({"next_cursor": null, "has_more": false}));
    let first = &v["data"][0];
    for f in ["id", "name", "prefix", "last_four", "scopes", "last_used_at", "created_at", "revoked_at"] {
        assert!(first.get(f).is_some(), "{f} missing: {first}");
    }
    assert_eq!(first["last_four"], &plaintext[plaintext.len() - 4..]);
    let text = r.text();
    assert!(!text.contains(&plaintext[8..]) && !text.contains("plaintext") && !text.contains("hash"), "{text}");
}

#[test]
fn pagination_over_250_keys_has_no_duplicates_or_gaps() {
    let (org, key, control_id) = org_with_control_key(&["ai:chat", "control:read"]);
    let mut created: HashSet<String> = HashSet::from([control_id]);
    for i in 0..249 {
        let (_, id) = h().key(&org, json!({"name": format!("k{i}"), "scopes": ["ai:chat"]}));
        created.insert(id);
    }
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => "/v1/api_keys?limit=100".to_owned(),
            Some(c) => format!("/v1/api_keys?limit=100&cursor={c}"),
        };
        let v = call(&key, "GET", &path, None).json();
        pages += 1;
        let batch: Vec<String> =
            v["data"].as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap().to_owned()).collect();
        assert!(batch.windows(2).all(|w| w[0] > w[1]), "newest first within a page");
        seen.extend(batch);
        match v["meta"]["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(v["meta"]["has_more"], true);
                cursor = Some(c.to_owned());
            }
            None => {
                assert_eq!(v["meta"]["has_more"], false);
                break;
            }
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 250);
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first across pages");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), created, "no duplicates, no gaps");
    // Bad paging parameters are named.
    let v = call(&key, "GET", "/v1/api_keys?limit=500", None).assert_error(422, "VALIDATION_FAILED");
    assert!(v["error"]["message"].as_str().unwrap().starts_with("limit:"));
    let v = call(&key, "GET", "/v1/api_keys?cursor=nope", None).assert_error(422, "VALIDATION_FAILED");
    assert!(v["error"]["message"].as_str().unwrap().starts_with("cursor:"));
}

#[test]
fn revoke_is_immediate_idempotent_and_scoped_to_the_org() {
    let (_, key, _) = org_with_control_key(&["ai:*", "control:read"]);
    let r = call(&key, "POST", "/v1/api_keys", Some(json!({"name": "victim", "scopes": ["ai:chat"]})));
    let d = r.json()["data"].clone();
    let (victim, victim_id) = (d["plaintext"].as_str().unwrap().to_owned(), d["id"].as_str().unwrap().to_owned());
    assert_eq!(call(&victim, "POST", "/v1/ai/chat", Some(json!({}))).status, 200);
    let r = call(&key, "DELETE", &format!("/v1/api_keys/{victim_id}"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let revoked_at = r.json()["data"]["revoked_at"].as_str().unwrap().to_owned();
    assert_eq!(r.json()["data"]["id"], victim_id.as_str());
    call(&victim, "POST", "/v1/ai/chat", Some(json!({}))).assert_error(401, "INVALID_API_KEY");
    let r = call(&key, "DELETE", &format!("/v1/api_keys/{victim_id}"), None);
    assert_eq!((r.status, r.json()["data"]["revoked_at"].as_str()), (200, Some(revoked_at.as_str())));
    let list = call(&key, "GET", "/v1/api_keys", None).json();
    assert!(list["data"].as_array().unwrap().iter().all(|k| k["id"] != victim_id.as_str()), "gone from the list");
    // Another org's key id: 404, and it keeps working.
    let (_, other_key, other_id) = org_with_control_key(&["ai:chat", "control:read"]);
    call(&key, "DELETE", &format!("/v1/api_keys/{other_id}"), None).assert_error(404, "RESOURCE_NOT_FOUND");
    assert_eq!(call(&other_key, "POST", "/v1/ai/chat", Some(json!({}))).status, 200);
    call(&key, "DELETE", "/v1/api_keys/01ARZ3NDEKTSV4RRFFQ69G5FAV", None).assert_error(404, "RESOURCE_NOT_FOUND");
    call(&key, "DELETE", "/v1/api_keys/not-a-ulid", None).assert_error(404, "RESOURCE_NOT_FOUND");
}

#[test]
fn no_privilege_escalation() {
    let (org, key, _) = org_with_control_key(&["ai:chat", "control:read"]);
    for (scopes, missing) in
        [(json!(["ai:*"]), "ai:*"), (json!(["*"]), "*"), (json!(["ai:chat", "control:webhooks"]), "control:webhooks")]
    {
        let r = call(&key, "POST", "/v1/api_keys", Some(json!({"name": "x", "scopes": scopes})));
        let v = r.assert_error(403, "MISSING_SCOPE");
        assert!(v["error"]["message"].as_str().unwrap().ends_with(missing), "{v}");
    }
    // A key without control:read cannot call the control API at all.
    let (chat_only, _) = h().key(&org, json!({"name": "chat", "scopes": ["ai:chat"]}));
    let v = call(&chat_only, "POST", "/v1/api_keys", Some(json!({"name": "x", "scopes": ["ai:chat"]})))
        .assert_error(403, "MISSING_SCOPE");
    assert_eq!(v["error"]["message"], "This API key lacks the required scope: control:read");
    // User-bound keys: only for the same user, only if the role may create keys.
    for (user, role) in [("u_op", "operator"), ("u_view", "viewer"), ("u_other", "operator")] {
        assert_eq!(
            h().admin("PUT", &format!("/admin/orgs/{org}/users/{user}"), Some(json!({"role": role}))).status,
            200
        );
    }
    let (op_key, _) = h().key(&org, json!({"name": "op", "scopes": ["*"], "user_id": "u_op"}));
    let r = call(&op_key, "POST", "/v1/api_keys", Some(json!({"name": "mine", "scopes": ["ai:chat"]})));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["data"]["user_id"], "u_op", "minted keys are bound to the caller's user");
    let v =
        call(&op_key, "POST", "/v1/api_keys", Some(json!({"name": "x", "scopes": ["ai:chat"], "user_id": "u_other"})))
            .assert_error(403, "PERMISSION_DENIED");
    assert!(v["error"]["message"].as_str().unwrap().contains("same user"));
    // The operator's `*` key is capped by the role: no control:webhooks to give away.
    call(&op_key, "POST", "/v1/api_keys", Some(json!({"name": "x", "scopes": ["control:webhooks"]})))
        .assert_error(403, "MISSING_SCOPE");
    // A viewer may not mint (and has no control:read anyway: seeds/003).
    let (view_key, _) = h().key(&org, json!({"name": "v", "scopes": ["*"], "user_id": "u_view"}));
    call(&view_key, "POST", "/v1/api_keys", Some(json!({"name": "x", "scopes": ["ai:chat"]})))
        .assert_error(403, "MISSING_SCOPE");
    call(&view_key, "GET", "/v1/me", None).assert_error(403, "MISSING_SCOPE");
    // Who am I: what the console shows (org, user, role, whether it may create keys).
    let me = call(&op_key, "GET", "/v1/me", None);
    assert_eq!(me.status, 200, "{}", me.text());
    let d = &me.json()["data"];
    assert_eq!(
        (d["org_id"].as_str(), d["user_id"].as_str(), d["role"].as_str()),
        (Some(org.as_str()), Some("u_op"), Some("operator"))
    );
    assert_eq!(d["may_create_keys"], true);
    assert_eq!(
        d["grantable_scopes"],
        json!(["ai:chat", "ai:documents", "ai:embeddings", "ai:summarize", "control:read"]),
        "the role caps the key's `*`"
    );
    assert_eq!(d["catalogue_scopes"].as_array().map(Vec::len), Some(6), "the policy's whole catalogue: {d}");
    // An org-level key cannot mint a key bound to a user: the origin would
    // see that user's identity.
    let v = call(&key, "POST", "/v1/api_keys", Some(json!({"name": "x", "scopes": ["ai:chat"], "user_id": "u_op"})))
        .assert_error(403, "PERMISSION_DENIED");
    assert!(v["error"]["message"].as_str().unwrap().contains("not bound to a user"));
    // Revoking a key one could not have minted.
    let (big_id_key, big_id) = h().key(&org, json!({"name": "big", "scopes": ["*"]}));
    let _ = big_id_key;
    call(&key, "DELETE", &format!("/v1/api_keys/{big_id}"), None).assert_error(403, "PERMISSION_DENIED");
    let (_, others) = h().key(&org, json!({"name": "o", "scopes": ["ai:chat"], "user_id": "u_other"}));
    call(&op_key, "DELETE", &format!("/v1/api_keys/{others}"), None).assert_error(403, "PERMISSION_DENIED");
}

#[test]
fn role_changes_take_effect_on_the_next_request() {
    let org = h().org(true);
    assert_eq!(h().admin("PUT", &format!("/admin/orgs/{org}/users/u1"), Some(json!({"role": "admin"}))).status, 200);
    let (key, _) = h().key(&org, json!({"name": "u", "scopes": ["*"], "user_id": "u1"}));
    assert_eq!(call(&key, "GET", "/v1/documents", None).status, 200);
    assert_eq!(h().admin("PUT", &format!("/admin/orgs/{org}/users/u1"), Some(json!({"role": "viewer"}))).status, 200);
    let v = call(&key, "GET", "/v1/documents", None).assert_error(403, "MISSING_SCOPE");
    assert_eq!(v["error"]["message"], "This API key lacks the required scope: ai:documents");
    assert_eq!(call(&key, "POST", "/v1/ai/chat", Some(json!({}))).status, 200, "viewer keeps ai:chat");
    // Disabling the user, then a role change without `disabled`: still disabled.
    assert_eq!(
        h().admin("PUT", &format!("/admin/orgs/{org}/users/u1"), Some(json!({"role": "viewer", "disabled": true})))
            .status,
        200
    );
    call(&key, "POST", "/v1/ai/chat", Some(json!({}))).assert_error(401, "INVALID_API_KEY");
    let r = h().admin("PUT", &format!("/admin/orgs/{org}/users/u1"), Some(json!({"role": "admin"})));
    assert_eq!(r.json()["data"]["disabled"], true, "an omitted `disabled` keeps the user disabled");
    call(&key, "POST", "/v1/ai/chat", Some(json!({}))).assert_error(401, "INVALID_API_KEY");
}

#[test]
fn minted_keys_never_outlive_or_outpace_their_parent() {
    let org = h().org(true);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let parent_expiry = keyward::ids::rfc3339(now + 3_600_000);
    let (parent, _) = h().key(
        &org,
        json!({"name": "p", "scopes": ["ai:chat", "control:read"], "expires_at": parent_expiry,
               "rate_limits": [{"name": "minute", "limit": 5, "window_seconds": 60}]}),
    );
    let r = call(&parent, "POST", "/v1/api_keys", Some(json!({"name": "child", "scopes": ["ai:chat"]})));
    assert_eq!(r.status, 201, "{}", r.text());
    let d = r.json()["data"].clone();
    assert_eq!(d["expires_at"], parent_expiry.as_str(), "inherits the expiry");
    assert_eq!(d["rate_limits"], json!([{"name": "minute", "limit": 5, "window_seconds": 60}]), "inherits the limits");
    let later = keyward::ids::rfc3339(now + 7_200_000);
    call(&parent, "POST", "/v1/api_keys", Some(json!({"name": "c", "scopes": ["ai:chat"], "expires_at": later})))
        .assert_error(403, "PERMISSION_DENIED");
    let loose = json!({"name": "c", "scopes": ["ai:chat"], "rate_limits": [{"name": "minute", "limit": 1000000, "window_seconds": 60}]});
    call(&parent, "POST", "/v1/api_keys", Some(loose)).assert_error(403, "PERMISSION_DENIED");
    let tight = json!({"name": "c", "scopes": ["ai:chat"], "rate_limits": [{"name": "minute", "limit": 2, "window_seconds": 60}]});
    assert_eq!(call(&parent, "POST", "/v1/api_keys", Some(tight)).status, 201);
}

#[test]
fn a_disabled_or_demoted_user_cannot_manage_keys_even_before_kv_catches_up() {
    // Its own worker: `wrangler kv` locks the local KV database while it runs.
    let own = Harness::start(Options { origin_url: None, vars: vec![] });
    let h = || &own;
    let call = |key: &str, method: &str, path: &str, body: Option<Value>| call_on(&own, key, method, path, body);
    let org = h().org(true);
    assert_eq!(h().admin("PUT", &format!("/admin/orgs/{org}/users/u1"), Some(json!({"role": "admin"}))).status, 200);
    let (key, _) = h().key(&org, json!({"name": "u", "scopes": ["*"], "user_id": "u1"}));
    assert_eq!(call(&key, "POST", "/v1/api_keys", Some(json!({"name": "c", "scopes": ["ai:chat"]}))).status, 201);
    // The user is disabled in the system of record; put the stale, enabled
    // user record back into KV (an edge location whose KV lags).
    let user_kv = format!("user:{org}:u1");
    let stale = h().kv_get(&user_kv).expect("the user's KV record");
    assert_eq!(
        h().admin("PUT", &format!("/admin/orgs/{org}/users/u1"), Some(json!({"role": "admin", "disabled": true})))
            .status,
        200
    );
    h().kv_put(&user_kv, &stale);
    let v = call(&key, "POST", "/v1/api_keys", Some(json!({"name": "c2", "scopes": ["ai:chat"]})))
        .assert_error(403, "PERMISSION_DENIED");
    assert!(v["error"]["message"].as_str().unwrap().contains("may not manage"));
}

#[test]
fn validation_matches_the_reference() {
    let (_, key, _) = org_with_control_key(&["ai:*", "control:read"]);
    for (body, field) in [
        (json!({"scopes": ["ai:chat"]}), "name"),
        (json!({"name": "x".repeat(101), "scopes": ["ai:chat"]}), "name"),
        (json!({"name": "x", "scopes": []}), "scopes"),
        (json!({"name": "x", "scopes": ["ai:nope"]}), "scopes"),
        (json!({"name": "x"}), "scopes"),
    ] {
        let v = call(&key, "POST", "/v1/api_keys", Some(body.clone())).assert_error(422, "VALIDATION_FAILED");
        assert!(v["error"]["message"].as_str().unwrap().starts_with(&format!("{field}:")), "{body}: {v}");
    }
}

#[test]
fn audit_log_records_every_action() {
    let org = h().org(false);
    let path = format!("/admin/orgs/{org}");
    assert_eq!(h().admin("PUT", &path, Some(json!({"name": org, "baa_active": true}))).status, 200);
    assert_eq!(h().admin("PUT", &format!("{path}/users/u1"), Some(json!({"role": "viewer"}))).status, 200);
    assert_eq!(h().admin("PUT", &format!("{path}/users/u1"), Some(json!({"role": "operator"}))).status, 200);
    let (key, key_id) = h().key(&org, json!({"name": "auditor", "scopes": ["ai:chat", "control:read"]}));
    let r = call(&key, "POST", "/v1/api_keys", Some(json!({"name": "child", "scopes": ["ai:chat"]})));
    let child = r.json()["data"]["id"].as_str().unwrap().to_owned();
    let revoke = call(&key, "DELETE", &format!("/v1/api_keys/{child}"), None);
    let revoke_rid = revoke.header("x-request-id").unwrap().to_owned();

    let v = call(&key, "GET", "/v1/audit", None).json();
    let entries = v["data"].as_array().unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "key.revoked",
            "key.created",
            "key.created",
            "user.role_changed",
            "user.created",
            "org.baa_changed",
            "org.created"
        ],
        "newest first"
    );
    let revoked = &entries[0];
    assert_eq!(revoked["actor"], format!("key:{key_id}"));
    assert_eq!(revoked["target"], child.as_str());
    assert_eq!(revoked["request_id"], revoke_rid.as_str());
    assert!(revoked["created_at"].as_str().unwrap().ends_with("+00:00"));
    assert_eq!(entries[1]["actor"], format!("key:{key_id}"));
    assert_eq!(entries[2]["actor"], "admin:default");
    assert_eq!(entries[3]["detail"], json!({"from": "viewer", "to": "operator"}));
    assert_eq!(entries[5]["detail"], json!({"from": false, "to": true}));
    // Paging.
    let p1 = call(&key, "GET", "/v1/audit?limit=4", None).json();
    assert_eq!(p1["data"].as_array().unwrap().len(), 4);
    let c = p1["meta"]["next_cursor"].as_str().unwrap();
    let p2 = call(&key, "GET", &format!("/v1/audit?limit=4&cursor={c}"), None).json();
    let rest: Vec<&str> = p2["data"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(rest, ["user.created", "org.baa_changed", "org.created"]);
    assert_eq!(p2["meta"]["has_more"], false);
}

#[test]
fn usage_counts_match_the_requests_sent() {
    let (_, key, key_id) = org_with_control_key(&["ai:chat", "control:read"]);
    let r = call(
        &key,
        "POST",
        "/v1/api_keys",
        Some(json!({
            "name": "metered", "scopes": ["ai:chat"],
            "rate_limits": [{"name": "minute", "limit": 5, "window_seconds": 60}]
        })),
    );
    let d = r.json()["data"].clone();
    let (metered, metered_id) = (d["plaintext"].as_str().unwrap().to_owned(), d["id"].as_str().unwrap().to_owned());
    for _ in 0..7 {
        call(&metered, "POST", "/v1/ai/chat", Some(json!({})));
    }
    for _ in 0..2 {
        call(&metered, "POST", "/v1/embeddings", Some(json!({}))).assert_error(403, "MISSING_SCOPE");
    }
    // Roll-ups run every second here (USAGE_ROLLUP_SECONDS=1): poll briefly.
    let mut row = Value::Null;
    for _ in 0..40 {
        let v = call(&key, "GET", "/v1/usage", None).json();
        assert_eq!(v["meta"]["rollup_interval_seconds"], 1);
        if let Some(r) = v["data"].as_array().unwrap().iter().find(|r| r["key_id"] == metered_id.as_str()) {
            if r["allowed"] == 5 && r["refused"] == 4 {
                row = r.clone();
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(row["allowed"], 5, "usage never matched: {row}");
    assert_eq!(row["refused_by_reason"], json!({"rate_limited": 2, "missing_scope": 2}));
    assert!(row["hour"].as_str().unwrap().ends_with(":00:00+00:00"));
    // last_used_at comes from the same roll-up.
    let list = call(&key, "GET", "/v1/api_keys", None).json();
    let k = list["data"].as_array().unwrap().iter().find(|k| k["id"] == metered_id.as_str()).unwrap().clone();
    assert!(k["last_used_at"].as_str().is_some_and(|t| t.ends_with("+00:00")), "{k}");
    // The calling key's own control requests are counted too (allowed).
    let v = call(&key, "GET", "/v1/usage", None).json();
    let own =
        v["data"].as_array().unwrap().iter().find(|r| r["key_id"] == key_id.as_str()).cloned().unwrap_or_default();
    assert!(own["allowed"].as_u64().unwrap_or(0) >= 2, "the control key's own requests: {own}");
    // Range validation.
    let v = call(&key, "GET", "/v1/usage?from=2026-01-01T00:00:00Z&to=2025-01-01T00:00:00Z", None)
        .assert_error(422, "VALIDATION_FAILED");
    assert!(v["error"]["message"].as_str().unwrap().starts_with("from:"));
    let v = call(&key, "GET", "/v1/usage?from=2099-01-01T00:00:00Z&to=2099-01-02T00:00:00Z", None).json();
    assert_eq!(v["data"], json!([]));
}
