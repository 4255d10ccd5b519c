//! End to end: the keys console (`/console`, static assets next to the
//! worker) in a real headless Chromium (Debian's, driven by playwright-core
//! through `tests/browser/console.mjs`): a person signs in with the demo
//! identity provider, creates a key, sees and copies its plaintext once,
//! the key works against the edge, the person revokes it in the page and
//! the key is refused; a viewer sees no create button; hostile key names
//! render as text; the CSP blocks inline scripts; the token is never in
//! localStorage; the page cannot be framed; axe-core finds no serious or
//! critical violation. Screenshots: target/console-screenshots/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use common::*;
use serde_json::{json, Value};

const ORG: &str = "org_demo";
const HOSTILE: &str = "<img src=x onerror=alert(1)>";
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn newest(dir: &Path) -> SystemTime {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| if e.path().is_dir() { newest(&e.path()) } else { e.metadata().unwrap().modified().unwrap() })
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn h() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let built = std::fs::metadata(root().join("console/dist/console/index.html"))
            .and_then(|m| m.modified())
            .expect("the console is not built: run `make console` (`make test` builds it)");
        assert!(
            newest(&root().join("console/src")) <= built,
            "console/dist is older than console/src: run `make console`"
        );
        let vars = vec![
            ("JWT_ISSUER", "https://idp.keyward.test".to_owned()),
            ("JWT_AUDIENCE", "keyward-demo".to_owned()),
            ("JWT_JWKS_URL", "{origin}/.well-known/jwks.json".to_owned()),
        ];
        let h = Harness::start(Options { origin_url: None, vars });
        // The demo org and users of `make dev` (demo/origin.mjs signs them in).
        for (path, body) in [
            (format!("/admin/orgs/{ORG}"), json!({"name": "Demo Org", "baa_active": true})),
            (format!("/admin/orgs/{ORG}/users/user_demo"), json!({"role": "admin"})),
            (format!("/admin/orgs/{ORG}/users/user_viewer"), json!({"role": "viewer"})),
        ] {
            let r = h.admin("PUT", &path, Some(body));
            assert_eq!(r.status, 200, "{path}: {}", r.text());
        }
        h
    })
}

/// One browser at a time (2 cores; and the login route's per-address limit).
fn browse(scenario: &str, args: Value) -> Value {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let shots = root().join("target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let edge = format!("http://127.0.0.1:{}", h().port);
    let out = std::process::Command::new("node")
        .current_dir(root())
        .args(["tests/browser/console.mjs", scenario, &edge, &shots.display().to_string(), &args.to_string()])
        .output()
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = stdout.lines().last().and_then(|l| serde_json::from_str(l).ok()).unwrap_or_else(|| {
        panic!("browser run {scenario} printed no result: {stdout}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    assert!(out.status.success() && v.get("failure").is_none(), "browser run {scenario} failed: {v:#}");
    assert_eq!(v["dialogs"], json!([]), "a dialog (alert) fired: {v:#}");
    assert_eq!(v["page_errors"], json!([]), "{v:#}");
    if scenario != "create" && scenario != "frame" {
        assert_eq!(v["csp_violations_at_end"], json!([]), "the page needs nothing its CSP forbids");
    }
    for (name, violations) in v["axe"].as_object().unwrap() {
        if name.ends_with("_minor") {
            if violations != &json!([]) {
                eprintln!("axe-core, moderate or minor on {name}: {violations}");
            }
        } else {
            assert_eq!(violations, &json!([]), "axe-core: serious or critical violations on {name}");
        }
    }
    v
}

fn assert_signed_in(v: &Value, user: &str, role: &str) {
    assert_eq!(v["who"], json!([ORG, user, role]), "the header shows org, user and role");
    let stored = v["session_storage"].as_object().unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored.values().next().unwrap().as_str().unwrap().starts_with("eyJ"), "the access token in sessionStorage");
    assert_eq!(v["local_storage_length"], 0, "nothing in localStorage");
    assert_eq!(v["console_headers"]["content-security-policy"], CSP);
}

fn chat(key: &str) -> Resp {
    let auth = format!("Bearer {key}");
    h().send("POST", "/v1/ai/chat", &[("authorization", &auth), ("content-type", "application/json")], Some(b"{}"))
}

#[test]
fn console_is_served_with_its_headers() {
    let r = h().send("GET", "/console", &[], None);
    assert!(matches!(r.status, 301..=308), "{}", r.status);
    assert_eq!(r.header("location"), Some("/console/"));
    for path in ["/console/", "/console/app.js", "/console/app.css"] {
        let r = h().send("GET", path, &[], None);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-security-policy"), Some(CSP), "{path}");
        assert_eq!(r.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{path}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{path}");
        assert_eq!(r.header("cache-control"), Some("no-store"), "{path}");
    }
    // The headers file configures the assets; it is not one of them: the
    // request falls through to keyward (with no key: its 401 envelope, as
    // for any path it does not serve publicly), never the file.
    for path in ["/_headers", "/console/_headers"] {
        let r = h().send("GET", path, &[], None);
        r.assert_error(401, "INVALID_API_KEY");
        assert!(!r.text().contains("Content-Security-Policy"), "{path}: {}", r.text());
    }
    let page = h().send("GET", "/console/", &[], None).text();
    assert!(page.contains("<script type=\"module\" src=\"/console/app.js\"></script>"), "{page}");
    assert!(!page.contains("<script>") && !page.contains("style="), "no inline script or style");
    for external in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
        assert!(!page.contains(external), "no third-party request: {external}");
    }
    let js = h().send("GET", "/console/app.js", &[], None).text();
    assert!(!js.contains("eval(") && !js.contains("new Function"), "no eval");
    assert!(!js.contains("innerHTML"), "API text goes through textContent and DOM APIs");
    // The API is still the worker's.
    h().send("GET", "/v1/api_keys", &[], None).assert_error(401, "INVALID_API_KEY");
}

#[test]
fn a_person_creates_copies_uses_and_revokes_a_key_in_the_page() {
    let name = unique("console-key");
    let v = browse("create", json!({"name": name}));
    assert_signed_in(&v, "user_demo", "admin");
    // The CSP blocked the injected inline script, and the page itself
    // never needed anything it forbids (that was the only violation).
    assert_eq!(v["inline_ran"], false, "{v:#}");
    let violations = v["csp_violations"].as_array().unwrap();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].as_str().unwrap().starts_with("script-src"), "{violations:?}");
    assert_eq!(v["focus_in_dialog"], "ck-name", "the dialog takes the focus");
    let stops: Vec<&str> = v["dialog_tab_stops"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(stops.iter().all(|s| !s.starts_with("OUTSIDE:")), "the focus stays in the modal dialog: {stops:?}");
    for want in [
        "ck-name",
        "ck-scope-ai-chat",
        "kind=secret",
        "ck-expiry",
        "ck-minute",
        "ck-hour",
        "ck-credits",
        "ck-refill",
        "ck-refill-interval",
        "ck-ips",
        "ck-consistency",
        "Cancel",
        "ck-submit",
    ] {
        assert!(stops.contains(&want), "{want} is reachable by keyboard in the dialog: {stops:?}");
    }
    assert_eq!(v["focus_after_sign_in"], "main", "signed in: the focus moves to the main region");
    assert_eq!(
        v["tab_stops"],
        json!(["sign-out", "API keys", "Usage", "Audit log", "new-key"]),
        "reachable by keyboard, in order"
    );
    // Shown once, copied, with the warning; gone from the page once closed.
    let plaintext = v["plaintext"].as_str().unwrap().to_owned();
    assert!(plaintext.starts_with("kw_live_") && plaintext.len() == 44, "{plaintext}");
    assert_eq!(v["clipboard"], plaintext.as_str());
    assert!(v["warning"].as_str().unwrap().contains("will not be shown again"), "{v:#}");
    assert_eq!(v["plaintext_in_dom_after_close"], false);
    assert_eq!(v["focus_after_close"], "new-key", "the focus returns to what opened the dialogs");
    let key_id = v["row"]["id"].as_str().unwrap().to_owned();
    let cells = v["row"]["cells"].as_array().unwrap();
    assert_eq!(cells[0], name.as_str());
    assert_eq!(cells[1], format!("kw_live_…{}", &plaintext[plaintext.len() - 4..]).as_str());
    assert_eq!(cells[2], "secret");
    assert_eq!(cells[3], "ai:chat");

    // The key works with a plain HTTP client against the edge.
    let r = chat(&plaintext);
    assert_eq!(r.status, 200, "{}", r.text());
    let rid = r.header("x-request-id").unwrap().to_owned();
    let seen = h().origin_saw(&rid).expect("the origin saw the request");
    assert_eq!(seen["headers"]["x-keyward-key-id"], key_id.as_str());
    assert_eq!(seen["headers"]["x-keyward-user"], "user_demo", "a key minted by a session is bound to its user");

    // A hostile name (made by the admin API) renders as text in the page.
    let (_, hostile_id) = h().key(ORG, json!({"name": HOSTILE, "scopes": ["ai:chat"]}));

    // More keys than a page holds (20).
    for i in 0..21 {
        h().key(ORG, json!({"name": format!("page-key-{i}"), "scopes": ["ai:chat"]}));
    }

    // Revoke in the page: the key is refused on its next request.
    std::thread::sleep(std::time::Duration::from_millis(1500)); // usage rolls up every second
    let probes = json!(["page-key-", name, format!("…{}", &plaintext[plaintext.len() - 4..])]);
    let v = browse("revoke", json!({"key_id": key_id, "hostile_id": hostile_id, "probes": probes}));
    assert_eq!(v["hostile_text"], HOSTILE, "rendered as text");
    assert_eq!(v["first_page_rows"], 20, "pages of 20");
    assert_eq!(v["next_enabled"], true);
    assert_eq!(v["prev_enabled"], true);
    let (first, second) = (v["first_page_ids"].as_array().unwrap(), v["second_page_ids"].as_array().unwrap());
    assert!(
        !second.is_empty() && second.iter().all(|id| !first.contains(id)),
        "the next page through the cursor: {v:#}"
    );
    assert_eq!(v["back_ids"], v["first_page_ids"], "back to the first page");
    assert_eq!(v["images_in_table"], 0);
    assert!(v["confirm_text"].as_str().unwrap().contains(&name), "{v:#}");
    assert_eq!(v["focus_in_confirm"], "Cancel", "the confirmation starts on Cancel");
    assert_eq!(v["revoked_row_gone"], true);
    assert_eq!(v["focus_after_revoke"], "main", "the revoked row is gone: the focus goes to the main region");
    chat(&plaintext).assert_error(401, "INVALID_API_KEY");
    // Usage shows the key's hour; the audit log its creation and revocation.
    assert!(v["usage_keys"].as_array().unwrap().iter().any(|k| k == key_id.as_str()), "{v:#}");
    assert!(v["usage_bars"].as_u64().unwrap() > 0);
    let (page1, page2) = (v["audit_rows"].as_array().unwrap(), v["audit_rows_page_2"].as_array().unwrap());
    assert_eq!(page1.len(), 20, "pages of 20");
    assert!(page2.iter().all(|r| !page1.contains(r)), "the next page through the cursor");
    let audit: Vec<&Value> = page1.iter().chain(page2).collect();
    for action in ["key.created", "key.revoked"] {
        assert!(
            audit.iter().any(|r| r[1] == "user:user_demo" && r[2] == action && r[3] == key_id.as_str()),
            "{action} by user:user_demo in the audit log: {audit:?}"
        );
    }
    assert!(audit.iter().all(|r| r[4].as_str().unwrap().starts_with("req_") || r[4] == "—"), "{audit:?}");
    assert_eq!(v["session_storage_after_sign_out"], 0, "sign-out clears the token");
    assert_eq!(v["signed_out"], "signed-out");
    let before = &v["held_before_sign_out"];
    assert!(before["rows"].as_u64() > Some(20) && before["charts"].as_u64() > Some(0), "{before}");
    assert_eq!((&before["header"], &before["found"]), (&json!("org_demouser_demoadmin"), &probes), "{before}");
    assert_eq!(
        v["held_after_sign_out"],
        json!({"rows": 0, "charts": 0, "header": "", "found": []}),
        "sign-out leaves nothing of the user in the page"
    );
}

#[test]
fn a_widget_keys_snippet_works_on_its_allowed_origin_and_the_key_rolls() {
    let name = unique("console-widget");
    let page_port = free_port();
    let v = browse("widget", json!({"name": name, "page_port": page_port}));
    let err = v["create_error"].as_str().unwrap();
    assert!(err.starts_with("VALIDATION_FAILED: allowed_origins[0]") && err.contains("(request id req_"), "{err}");
    let plaintext = v["plaintext"].as_str().unwrap();
    assert!(plaintext.starts_with("kw_pub_"), "{plaintext}");
    let snippet = v["snippet"].as_str().unwrap();
    assert!(
        snippet.contains(plaintext) && snippet.contains(&format!("http://127.0.0.1:{}/v1/ai/chat", h().port)),
        "{snippet}"
    );
    assert_eq!(v["plaintext_in_dom_after_escape"], false);
    assert!(v["snippet_origins"].as_str().unwrap().contains(&format!("http://127.0.0.1:{page_port}")), "{v:#}");
    // The page on the allowed origin got the origin's answer through the edge.
    let answer: Value = serde_json::from_str(v["widget_answer"].as_str().unwrap()).expect("the origin's JSON answer");
    assert_eq!(answer["echo"]["headers"]["x-keyward-key-id"], v["key_id"]);
    assert_eq!(answer["echo"]["headers"]["x-keyward-key-kind"], "widget");
    // Rolled in the page: a new key shown once, the old one alive for its grace.
    let rolled = v["rolled_plaintext"].as_str().unwrap();
    assert!(rolled.starts_with("kw_pub_") && rolled != plaintext, "{rolled}");
    assert!(v["rolled_text"].as_str().unwrap().contains("The old key keeps working until"), "{v:#}");
}

#[test]
fn a_viewer_sees_no_create_button() {
    h().key(ORG, json!({"name": "for-the-viewer", "scopes": ["ai:chat"]}));
    // The shipped viewer has no control:read (seeds/003: no audit log, no
    // changes): signed in, it is told so, with no create button and no
    // call that would be refused (its role is not for it to read: "—").
    let v = browse("viewer", json!({}));
    assert_signed_in(&v, "user_viewer", "—");
    assert_eq!(v["new_key_visible"], false);
    assert_eq!(v["revoke_buttons"], 0);
    assert_eq!(v["note"], true);
    assert_eq!(
        v["note_text"],
        "Your role may neither view nor create API keys, usage or the audit log (it lacks control:read): ask an admin."
    );
    assert_eq!(v["error_shown"], false, "{v:#}");
    assert_eq!(v["visible_tabs"], json!(["API keys"]));
    assert_eq!(v["rows"], 0, "{v:#}");
}

#[test]
fn a_wrong_password_is_refused_and_the_console_cannot_be_framed() {
    let v = browse("frame", json!({}));
    assert!(v["sign_in_error"].as_str().unwrap().contains("Invalid email or password"), "{v:#}");
    assert_eq!(v["session_storage_length"], 0);
    assert_eq!(v["framer_origin"], "null", "the framing page is of another (opaque) origin: {v:#}");
    let frames = v["frames"].as_array().unwrap();
    assert!(!frames.is_empty(), "{v:#}");
    assert!(frames.iter().all(|f| f["has_sign_in"] == false), "the console rendered in a frame: {v:#}");
}
