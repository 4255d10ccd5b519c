//! The OpenAPI document (`openapi.json`) against the code and the real
//! worker: it is OpenAPI 3.1; its error codes are exactly the catalogue's
//! (`keyward::error::ErrorCode::ALL`), each under its own status; its paths
//! and methods are exactly the policy's routes, the control routes, the
//! admin routes and the leaked-key endpoint (served outside the policy);
//! and every operation, sent for real to `wrangler dev`,
//! answers with a documented status, a documented error code, the
//! documented headers (and header values) and a body of the documented
//! shape; what the origin receives is the documented signed identity. Run
//! with `make test`.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use common::*;
use keyward::error::ErrorCode;
use serde_json::{json, Value};

const SPEC: &str = include_str!("../openapi.json");
const POLICY: &str = include_str!("../policy/policy.json");
const ADMIN_SRC: &str = include_str!("../src/edge/admin.rs");
const CONTROL_SRC: &str = include_str!("../src/edge/control.rs");
/// The leaked-key endpoint: its `PATH`, its method and the headers it reads.
const SCANNING_SRC: &str = include_str!("../src/edge/scanning.rs");
/// The router: the leaked-key endpoint is answered before the policy gate.
const EDGE_SRC: &str = include_str!("../src/edge/mod.rs");
/// `parse_key`'s accepted fields (`only_fields`) are the documented `KeyInput`.
const ADMIN_CORE_SRC: &str = include_str!("../src/admin.rs");
/// `key_view`'s fields are the documented `ApiKey`.
const ORG_SRC: &str = include_str!("../src/edge/org.rs");
/// `identity_headers`' canonical string is the documented one.
const SIGNING_SRC: &str = include_str!("../src/signing.rs");

/// Operation keys of a Path Item.
const OP_KEYS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
/// Methods tried for a 405.
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];
/// Response headers keyward itself sets: when one is on a response, the spec
/// must document it for that operation and status (and its value must fit the
/// documented schema).
const KEYWARD_HEADERS: [&str; 14] = [
    "x-request-id",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "retry-after",
    "allow",
    "access-control-allow-origin",
    "access-control-expose-headers",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
    "cache-control",
    "x-keyward-visitor-token",
    "x-credits-remaining",
];
const SHOP: &str = "https://shop.example.com";
/// The browser origin in the harness's `JWT_ALLOWED_ORIGINS`.
const APP: &str = "https://app.example.com";
/// The JWT settings of the harness (as in tests/jwt.rs; the demo origin's
/// identity provider issues tokens with the same issuer and audience).
const JWT_ISSUER: &str = "https://idp.keyward.test";
const JWT_AUDIENCE: &str = "keyward-demo";
/// A valid sign-in at the demo origin's identity provider.
const DEMO_LOGIN: &str = r#"{"email":"admin@demo.test","password":"demo-admin"}"#;
/// The demo origin's fake siteverify passes `pass:<hostname>` with this secret.
const TURNSTILE_SECRET: &str = "test-turnstile-secret-0123456789abcdef";
const FORM: &str = "application/x-www-form-urlencoded";
const UNKNOWN_ULID: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

fn spec() -> &'static Value {
    static S: OnceLock<Value> = OnceLock::new();
    S.get_or_init(|| serde_json::from_str(SPEC).expect("openapi.json is not valid JSON"))
}

fn policy() -> &'static Value {
    static P: OnceLock<Value> = OnceLock::new();
    P.get_or_init(|| serde_json::from_str(POLICY).expect("policy.json"))
}

fn h() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let h = Harness::start(Options {
            origin_url: None,
            vars: vec![
                ("ORIGIN_TIMEOUT_MS", "1500".into()),
                ("TURNSTILE_SECRET_KEY", TURNSTILE_SECRET.into()),
                ("TURNSTILE_VERIFY_URL", "{origin}/__turnstile/siteverify".into()),
                ("JWT_ISSUER", JWT_ISSUER.into()),
                ("JWT_AUDIENCE", JWT_AUDIENCE.into()),
                ("JWT_JWKS_URL", "{origin}/.well-known/jwks.json".into()),
                ("JWT_ALLOWED_ORIGINS", APP.into()),
                ("SECRET_SCANNING_KEYS", scanner().0.clone()),
            ],
        });
        // The test keys (tests/jwt/mint.mjs) served after the demo origin's own.
        let jwks = std::fs::read(jwt_keys_dir().join("jwks.json")).expect("jwks.json");
        let r = send(h.origin_port, "POST", "/__origin/jwks", &[("content-type", "application/json")], Some(&jwks));
        assert_eq!(r.status, 204, "{}", r.text());
        h
    })
}

/// A secret-scanning key pair made for the tests, in GitHub's key document
/// (with a second key, `other-key`, whose private half is thrown away): the
/// document (`SECRET_SCANNING_KEYS`) and the private key of `test-key-1`.
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

/// GitHub's signature of `body` by `test-key-1`: standard base64 of the DER
/// ECDSA P-256/SHA-256 signature (node's `crypto.sign`, independent of
/// keyward's code).
fn github_signature(body: &[u8]) -> String {
    let script = r#"const c=require("crypto");const [b,k]=JSON.parse(require("fs").readFileSync(0,"utf8"));
process.stdout.write(c.sign("sha256",Buffer.from(b,"hex"),k).toString("base64"));"#;
    let mut child = std::process::Command::new("node")
        .args(["-e", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node");
    let hex: String = body.iter().map(|b| format!("{b:02x}")).collect();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(json!([hex, scanner().1]).to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// The test key pairs (`node tests/jwt/mint.mjs keys`), once per process.
fn jwt_keys_dir() -> &'static std::path::PathBuf {
    static D: OnceLock<std::path::PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("keyward-openapi-jwt-keys-{}", std::process::id()));
        let out = std::process::Command::new("node")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["tests/jwt/mint.mjs", "keys"])
            .arg(&dir)
            .output()
            .expect("node tests/jwt/mint.mjs keys");
        assert!(out.status.success(), "mint keys: {}", String::from_utf8_lossy(&out.stderr));
        dir
    })
}

/// A JWT of `user` in `org` signed by the test key `ed-1` (by jose), with a
/// `jti` when `jti` is given.
fn jwt(org: &str, user: &str, jti: Option<&str>) -> String {
    use std::io::Write;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let mut claims = json!({"iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "sub": user, "org_id": org,
                            "iat": now - 5, "nbf": now - 5, "exp": now + 900});
    if let Some(j) = jti {
        claims["jti"] = json!(j);
    }
    let specs = json!([{"kid": "ed-1", "claims": claims}]);
    let mut child = std::process::Command::new("node")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tests/jwt/mint.mjs", "sign"])
        .arg(jwt_keys_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node tests/jwt/mint.mjs sign");
    child.stdin.take().unwrap().write_all(specs.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "mint: {}", String::from_utf8_lossy(&out.stderr));
    let tokens: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    tokens.into_iter().next().unwrap()
}

/// A client address of its own (`CF-Connecting-IP`), so that the per-address
/// limits of public routes are not shared between cases.
fn fresh_ip() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed) + (std::process::id() % 200) * 256;
    format!("10.{}.{}.{}", 100 + (n >> 16) % 100, (n >> 8) & 255, n & 255)
}

/// Follows a local `$ref` (any depth).
fn resolve(v: &'static Value) -> &'static Value {
    let mut v = v;
    while let Some(r) = v.get("$ref").and_then(Value::as_str) {
        let target = r.strip_prefix('#').unwrap_or_else(|| panic!("non-local $ref {r}"));
        v = spec().pointer(target).unwrap_or_else(|| panic!("unresolved $ref {r}"));
    }
    v
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

/// One operation of the spec.
#[derive(Clone, Debug)]
struct Op {
    /// The path template, e.g. `/v1/api_keys/{key_id}`.
    path: String,
    /// Upper case.
    method: String,
    v: &'static Value,
}

impl Op {
    fn id(&self) -> &'static str {
        self.v["operationId"].as_str().unwrap_or_else(|| panic!("{} {} has no operationId", self.method, self.path))
    }
    fn is_admin(&self) -> bool {
        self.path.starts_with("/admin/")
    }
    fn is_preflight(&self) -> bool {
        self.method == "OPTIONS"
    }
    fn is_proxied(&self) -> bool {
        self.v["x-keyward-served-by"] == "origin"
    }
    /// Served by keyward before the route policy is consulted (the
    /// leaked-key endpoint): no credential, no scope, no rate limits.
    fn is_outside_policy(&self) -> bool {
        self.v.get("x-keyward-outside-policy").is_some()
    }
    /// A public route of the policy: no credential, limited per address.
    fn is_public(&self) -> bool {
        self.v["x-keyward-public"] == true
    }
    /// The documented per-address limit of a public route (the smallest).
    fn ip_limit(&self) -> u64 {
        self.v["x-keyward-ip-rate-limits"]
            .as_array()
            .and_then(|a| a.iter().filter_map(|l| l["limit"].as_u64()).min())
            .unwrap_or_else(|| panic!("{}: no x-keyward-ip-rate-limits", self.id()))
    }
    fn scope(&self) -> Option<&'static str> {
        self.v["x-keyward-scope"].as_str()
    }
    /// The documented response for `status` (explicit statuses only, never
    /// `default`), resolved.
    fn response(&self, status: u16) -> Option<&'static Value> {
        self.v["responses"].get(status.to_string()).map(resolve)
    }
    fn statuses(&self) -> Vec<u16> {
        self.v["responses"].as_object().unwrap().keys().filter_map(|k| k.parse().ok()).collect()
    }
    fn success_status(&self) -> Option<u16> {
        self.statuses().into_iter().find(|s| (200..300).contains(s))
    }
    /// The path with its parameters filled in.
    fn concrete(&self, params: &[(&str, &str)]) -> String {
        let mut out = self.path.clone();
        for (name, value) in params {
            out = out.replace(&format!("{{{name}}}"), value);
        }
        assert!(!out.contains('{'), "unfilled parameter in {out}");
        out
    }
    /// A valid-looking body and its media type: the example of the
    /// documented JSON (or else text) body, or `{}` as JSON for a proxied
    /// body of any type.
    fn sample_body(&self) -> Option<(&'static str, String)> {
        let body = self.v.get("requestBody")?;
        for (media, text) in [("application/json", false), ("text/plain", true)] {
            if let Some(c) = body["content"].get(media) {
                let schema = resolve(&c["schema"]);
                let example = schema
                    .get("example")
                    .unwrap_or_else(|| panic!("{}: {media} body schema has no example", self.id()));
                let body =
                    if text { example.as_str().expect("a text example").to_owned() } else { example.to_string() };
                return Some((media, body));
            }
        }
        Some(("application/json", "{}".into()))
    }
    /// Whether the operation changes or ends the key of its `{key_id}`
    /// (revoke, update, roll): each case gives it a key of its own, so that
    /// the keys the other operations use live on unchanged.
    fn writes_key(&self) -> bool {
        self.path.contains("{key_id}") && !["GET", "OPTIONS"].contains(&self.method.as_str()) && !self.is_proxied()
    }
    /// The media types of the documented request body.
    fn body_types(&self) -> Vec<&'static str> {
        self.v["requestBody"]["content"].as_object().map(|c| c.keys().map(String::as_str).collect()).unwrap_or_default()
    }
    /// Whether keyward checks this operation's request body type (every
    /// public method of the policy's routes but GET; a GET body is never
    /// looked at or forwarded).
    fn checks_body_type(&self) -> bool {
        !self.is_admin() && !self.is_preflight() && !self.is_outside_policy() && self.method != "GET"
    }
}

/// The operations of the route policy and the admin API: every operation but
/// those served outside the policy (`x-keyward-outside-policy`, checked to be
/// exactly the leaked-key endpoint), which have tests of their own.
fn ops() -> Vec<Op> {
    all_ops().into_iter().filter(|o| !o.is_outside_policy()).collect()
}

/// Every operation of the spec.
fn all_ops() -> Vec<Op> {
    let mut out = Vec::new();
    for (path, item) in spec()["paths"].as_object().expect("paths") {
        for key in OP_KEYS {
            if let Some(v) = item.get(key) {
                out.push(Op { path: path.clone(), method: key.to_ascii_uppercase(), v });
            }
        }
    }
    out
}

/// The methods the spec documents for `path`, OPTIONS (preflight) excluded.
fn path_methods(path: &str) -> BTreeSet<String> {
    all_ops().into_iter().filter(|o| o.path == path && !o.is_preflight()).map(|o| o.method).collect()
}

/// The documented methods of `path` whose scope widget keys may hold.
fn widget_methods(path: &str) -> BTreeSet<String> {
    let widget_scopes = strs(&policy()["widget_scopes"]);
    ops()
        .into_iter()
        .filter(|o| o.path == path && !o.is_preflight() && o.scope().is_some_and(|s| widget_scopes.contains(&s)))
        .map(|o| o.method)
        .collect()
}

fn method_set(list: &str) -> BTreeSet<String> {
    list.split(',').map(|m| m.trim().to_owned()).filter(|m| !m.is_empty()).collect()
}

fn catalogue(code: &str) -> ErrorCode {
    *ErrorCode::ALL.iter().find(|c| c.as_str() == code).unwrap_or_else(|| panic!("{code} is not in the catalogue"))
}

// ---------------------------------------------------------------- schema check

/// A minimal JSON Schema check, enough for the documented shapes: `$ref`,
/// `allOf`, `type`, `const`, `enum`, `required`, `properties`,
/// `additionalProperties`, `unevaluatedProperties: false`, `items`,
/// `minLength`/`maxLength`, `minimum`/`maximum` and `format: date-time`.
fn validate(schema: &'static Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    let s = resolve(schema);
    for sub in s.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        validate(sub, v, at, errs);
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(x) => vec![x.as_str()],
            other => strs(other),
        };
        let ok = types.iter().any(|t| match *t {
            "null" => v.is_null(),
            "boolean" => v.is_boolean(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "string" => v.is_string(),
            "array" => v.is_array(),
            "object" => v.is_object(),
            other => panic!("unknown type {other} at {at}"),
        });
        if !ok {
            errs.push(format!("{at}: {v} is not of type {types:?}"));
            return;
        }
    }
    if let Some(c) = s.get("const") {
        if c != v {
            errs.push(format!("{at}: {v} is not {c}"));
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            errs.push(format!("{at}: {v} is not one of {e:?}"));
        }
    }
    match v {
        Value::Object(m) => {
            for r in strs(&s["required"]) {
                if !m.contains_key(r) {
                    errs.push(format!("{at}: required field {r} is missing"));
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            for (k, val) in m {
                let here = format!("{at}.{k}");
                match (props.and_then(|p| p.get(k)), s.get("additionalProperties")) {
                    (Some(p), _) => validate(p, val, &here, errs),
                    (None, Some(Value::Bool(false))) => errs.push(format!("{here}: undocumented field")),
                    (None, Some(ap)) if ap.is_object() => validate(ap, val, &here, errs),
                    _ => {}
                }
            }
            if s.get("unevaluatedProperties") == Some(&Value::Bool(false)) {
                let known = all_properties(s);
                for k in m.keys().filter(|k| !known.contains(k.as_str())) {
                    errs.push(format!("{at}.{k}: undocumented field"));
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = s.get("items") {
                for (i, x) in a.iter().enumerate() {
                    validate(items, x, &format!("{at}[{i}]"), errs);
                }
            }
        }
        Value::String(st) => {
            let n = st.chars().count() as u64;
            if s.get("minLength").and_then(Value::as_u64).is_some_and(|m| n < m)
                || s.get("maxLength").and_then(Value::as_u64).is_some_and(|m| n > m)
            {
                errs.push(format!("{at}: length of {st:?} out of range"));
            }
            if s.get("format").and_then(Value::as_str) == Some("date-time") && keyward::ids::parse_rfc3339(st).is_none()
            {
                errs.push(format!("{at}: {st:?} is not an RFC 3339 date-time"));
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if s.get("minimum").and_then(Value::as_f64).is_some_and(|m| x < m)
                || s.get("maximum").and_then(Value::as_f64).is_some_and(|m| x > m)
            {
                errs.push(format!("{at}: {x} out of range"));
            }
        }
        _ => {}
    }
}

fn all_properties(s: &'static Value) -> BTreeSet<&'static str> {
    let s = resolve(s);
    let mut out: BTreeSet<&str> = s
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    for sub in s.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        out.extend(all_properties(sub));
    }
    out
}

// ---------------------------------------------------------------- conformance

/// Asserts that a real response is documented for `op`: its status (never
/// through `default`), every documented required header, every keyward
/// header it carries, and for an error the envelope with a code listed in
/// that status's `x-keyward-error-codes`; for keyward's own JSON answers,
/// the documented schema. Returns the body as JSON (or `Null`).
fn conforms(op: &Op, r: &Resp, case: &str) -> Value {
    let ctx = format!("{} {} [{}] ({case}): {} {}", op.method, op.path, op.id(), r.status, r.text());
    let doc = op.response(r.status).unwrap_or_else(|| panic!("status {} is not documented: {ctx}", r.status));
    let rid = r.header("x-request-id").unwrap_or_else(|| panic!("no X-Request-Id: {ctx}"));
    assert!(rid.starts_with("req_") && rid.len() == 28, "request id {rid}: {ctx}");
    static EMPTY: OnceLock<serde_json::Map<String, Value>> = OnceLock::new();
    let documented = doc["headers"].as_object().unwrap_or_else(|| EMPTY.get_or_init(serde_json::Map::new));
    for (name, hv) in documented {
        if resolve(hv)["required"] == true {
            assert!(r.header(name).is_some(), "documented required header {name} missing: {ctx}");
        }
    }
    for (name, _) in &r.headers {
        let lower = name.to_ascii_lowercase();
        if KEYWARD_HEADERS.contains(&lower.as_str()) {
            assert!(
                documented.keys().any(|k| k.eq_ignore_ascii_case(name)),
                "header {name} is sent but not documented for this status: {ctx}"
            );
        }
    }
    // Every documented header that is present has a value of its schema.
    for (name, hv) in documented {
        let Some(value) = r.header(name) else { continue };
        let schema = &resolve(hv)["schema"];
        let v = match schema["type"].as_str() {
            Some("integer") => value.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::from(value)),
            _ => Value::from(value),
        };
        let mut errs = Vec::new();
        validate(schema, &v, &format!("header {name}"), &mut errs);
        assert!(errs.is_empty(), "{errs:?}: {ctx}");
    }
    // Never publicly cacheable, whoever answered.
    let cc = r.header("cache-control").unwrap_or_else(|| panic!("no Cache-Control: {ctx}"));
    let directives: Vec<String> = cc.split(',').map(|d| d.trim().to_ascii_lowercase()).collect();
    assert!(directives.iter().any(|d| d == "private" || d == "no-store"), "Cache-Control {cc}: {ctx}");
    assert!(
        !directives.iter().any(|d| ["public", "proxy-revalidate"].contains(&d.as_str()) || d.starts_with("s-maxage")),
        "Cache-Control {cc}: {ctx}"
    );
    if let Some(codes) = doc.get("x-keyward-error-codes") {
        let body = r.json();
        let code = body["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error envelope: {ctx}"));
        assert!(strs(codes).contains(&code), "{code} is not in x-keyward-error-codes {codes}: {ctx}");
        assert_eq!(catalogue(code).status(), r.status, "{ctx}");
        // A status that carries several codes names, per code, the headers
        // that code always carries.
        for name in strs(&doc["x-keyward-code-headers"][code]) {
            assert!(r.header(name).is_some(), "{name} missing on {code}: {ctx}");
        }
        r.assert_error(r.status, code);
        let schema = &doc["content"]["application/json"]["schema"];
        let mut errs = Vec::new();
        validate(schema, &body, "body", &mut errs);
        assert!(errs.is_empty(), "{errs:?}: {ctx}");
        return body;
    }
    if r.status == 204 {
        assert!(r.body.is_empty(), "{ctx}");
        return Value::Null;
    }
    match doc["content"].get("application/json") {
        Some(c) => {
            assert_eq!(r.header("content-type"), Some("application/json"), "{ctx}");
            let body = r.json();
            let mut errs = Vec::new();
            validate(&c["schema"], &body, "body", &mut errs);
            assert!(errs.is_empty(), "{errs:?}: {ctx}");
            body
        }
        None => serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    }
}

/// Sends `method path` with `headers` and an optional JSON body.
fn send_to(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Resp {
    send_typed(port, method, path, headers, body.map(|b| ("application/json", b)))
}

/// Sends `method path` with `headers` and an optional body of a media type.
fn send_typed(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: Option<(&str, &str)>) -> Resp {
    let mut hs: Vec<(&str, &str)> = headers.to_vec();
    if let Some((media, _)) = body {
        hs.push(("content-type", media));
    }
    send(port, method, path, &hs, body.map(|(_, b)| b.as_bytes()))
}

/// The credential header for `key`, alternating between the two documented
/// schemes so both are exercised.
fn cred(key: &str, i: usize) -> (&'static str, String) {
    if i.is_multiple_of(2) {
        ("authorization", format!("Bearer {key}"))
    } else {
        ("x-api-key", key.to_owned())
    }
}

fn admin_auth() -> String {
    format!("Bearer {ADMIN_TOKEN}")
}

/// Default path parameters for requests that are refused before they matter.
fn params(org: &str) -> Vec<(&'static str, String)> {
    vec![
        ("document_path", "doc_1/pages/2".into()),
        ("id", "wh_1".into()),
        ("key_id", UNKNOWN_ULID.into()),
        ("org_id", org.into()),
        ("user_id", "u_spec".into()),
    ]
}

fn fill(op: &Op, ps: &[(&'static str, String)]) -> String {
    let refs: Vec<(&str, &str)> = ps.iter().map(|(k, v)| (*k, v.as_str())).collect();
    op.concrete(&refs)
}

/// Sends `op` as a plain request (for a preflight operation: a plain
/// `OPTIONS`, which is authorized like any request) with `headers`.
fn plain(port: u16, op: &Op, path: &str, headers: &[(&str, &str)]) -> Resp {
    let body = if op.is_preflight() { None } else { op.sample_body() };
    send_typed(port, &op.method, path, headers, body.as_ref().map(|(m, b)| (*m, b.as_str())))
}

// ---------------------------------------------------------------- static checks

#[test]
fn spec_is_openapi_3_1_and_self_consistent() {
    let s = spec();
    assert!(s["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "openapi: {}", s["openapi"]);
    assert_eq!(s["info"]["version"], env!("CARGO_PKG_VERSION"), "info.version follows Cargo.toml");
    assert!(s["servers"].as_array().unwrap().iter().any(|sv| sv["url"] == "http://127.0.0.1:8787"));
    let schemes = &s["components"]["securitySchemes"];
    assert_eq!(
        (schemes["ApiKeyBearer"]["type"].as_str(), schemes["ApiKeyBearer"]["scheme"].as_str()),
        (Some("http"), Some("bearer"))
    );
    assert_eq!(
        (
            schemes["ApiKeyHeader"]["type"].as_str(),
            schemes["ApiKeyHeader"]["in"].as_str(),
            schemes["ApiKeyHeader"]["name"].as_str()
        ),
        (Some("apiKey"), Some("header"), Some("X-API-Key"))
    );
    assert_eq!(
        (schemes["AdminToken"]["type"].as_str(), schemes["AdminToken"]["scheme"].as_str()),
        (Some("http"), Some("bearer"))
    );
    // JWT sessions: http bearer, JWT, and how they are verified and enabled.
    assert_eq!(
        (
            schemes["JwtBearer"]["type"].as_str(),
            schemes["JwtBearer"]["scheme"].as_str(),
            schemes["JwtBearer"]["bearerFormat"].as_str()
        ),
        (Some("http"), Some("bearer"), Some("JWT"))
    );
    let jwt_desc = schemes["JwtBearer"]["description"].as_str().unwrap();
    for needle in [
        "JWT_ISSUER",
        "EdDSA",
        "ES256",
        "RS256",
        "HS256",
        "JWT_HS256_SECRET",
        "JWT_JWKS_URL",
        "`scope` claim",
        "JWT_ALLOWED_ORIGINS",
        "INVALID_TOKEN",
    ] {
        assert!(jwt_desc.contains(needle), "JwtBearer description lacks {needle}: {jwt_desc}");
    }
    // Named admin tokens, and how the audit log names their operators.
    let admin_desc = schemes["AdminToken"]["description"].as_str().unwrap();
    for needle in ["ADMIN_TOKEN`", "ADMIN_TOKENS", "admin:default", "admin:<name>"] {
        assert!(admin_desc.contains(needle), "AdminToken description lacks {needle}: {admin_desc}");
    }
    // The CORS header lists are the code's.
    let headers = &s["components"]["headers"];
    assert_eq!(headers["Access-Control-Allow-Headers"]["schema"]["const"], keyward::cors::ALLOWED_HEADERS);
    for h in ["Access-Control-Expose-Headers", "Access-Control-Expose-Headers.optional"] {
        assert_eq!(headers[h]["schema"]["const"], keyward::cors::EXPOSED_HEADERS, "{h}");
    }
    assert_eq!(headers["X-Keyward-Visitor-Token"]["required"], false);
    origin_request_doc_is_consistent();

    // Every $ref resolves.
    fn walk(v: &'static Value, n: &mut usize) {
        match v {
            Value::Object(m) => {
                if m.contains_key("$ref") {
                    resolve(v);
                    *n += 1;
                }
                m.values().for_each(|x| walk(x, n));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, n)),
            _ => {}
        }
    }
    let mut refs = 0;
    walk(s, &mut refs);
    assert!(refs > 0);

    // The envelope is exactly the documented one.
    let env = resolve(&s["components"]["schemas"]["ErrorEnvelope"]);
    assert_eq!(strs(&env["required"]), ["success", "error"]);
    assert_eq!(env["properties"]["success"]["const"], false);
    let inner = &env["properties"]["error"];
    let mut fields = strs(&inner["required"]);
    fields.sort_unstable();
    assert_eq!(fields, ["code", "message", "request_id", "retryable", "type"]);
    assert_eq!(inner["additionalProperties"], false);

    let mut ids = BTreeSet::new();
    for op in all_ops() {
        let ctx = format!("{} {}", op.method, op.path);
        assert!(ids.insert(op.id()), "duplicate operationId {}", op.id());
        // Security: routes take a key (either header) or a JWT session
        // naming the scope; admin routes the admin token; preflights and
        // public routes nothing.
        let sec = op.v["security"].as_array().unwrap_or_else(|| panic!("{ctx}: no security"));
        if op.is_outside_policy() {
            // The leaked-key endpoint: its own signature scheme, no
            // credential, served by keyward, nothing of the policy's.
            assert_eq!(op.v["x-keyward-outside-policy"], true, "{ctx}");
            assert!(sec.is_empty(), "{ctx}: served outside the policy, it takes no credential");
            assert_eq!(op.v["x-keyward-served-by"], "keyward", "{ctx}");
            assert!(!op.is_admin() && !op.is_preflight() && !op.is_public() && op.scope().is_none(), "{ctx}");
            assert!(op.v.get("x-keyward-ip-rate-limits").is_none(), "{ctx}: no rate limits");
            assert_eq!(
                strs(&op.response(401).unwrap_or_else(|| panic!("{ctx}: no 401"))["x-keyward-error-codes"]),
                ["SECRET_SCANNING_UNAUTHORIZED"],
                "{ctx}: 401"
            );
            for status in [403, 415, 429] {
                assert!(op.response(status).is_none(), "{ctx}: no {status} outside the policy");
            }
            // The headers it reads are its documented (required) header
            // parameters: `header("github-public-key-identifier")`.
            let read: BTreeSet<String> = SCANNING_SRC
                .split("header(\"")
                .skip(1)
                .filter_map(|s| s.split_once("\")").map(|(n, _)| n.to_ascii_lowercase()))
                .filter(|n| n.starts_with("github-"))
                .collect();
            assert_eq!(read.len(), 2, "the headers read in src/edge/scanning.rs: {read:?}");
            let params: BTreeSet<String> = op.v["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(resolve)
                .filter(|p| p["in"] == "header" && p["required"] == true)
                .filter_map(|p| p["name"].as_str().map(str::to_ascii_lowercase))
                .collect();
            assert_eq!(params, read, "{ctx}: required header parameters vs the headers the code reads");
            // The documented limits are the code's.
            let schema = &op.v["requestBody"]["content"]["application/json"]["schema"];
            assert_eq!(schema["maxItems"], keyward::scanning::MAX_TOKENS, "{ctx}: maxItems");
            assert_eq!(keyward::scanning::MAX_BODY_BYTES % (1 << 20), 0, "documented in MiB");
            let mib = format!("{} MiB", keyward::scanning::MAX_BODY_BYTES >> 20);
            let body_desc = op.v["requestBody"]["description"].as_str().unwrap();
            let too_large = op.v["responses"]["413"]["description"].as_str().unwrap();
            assert!(body_desc.contains(&mib) && too_large.contains(&mib), "{ctx}: the body limit is {mib}");
            assert!(body_desc.contains(&format!("at most {}", keyward::scanning::MAX_TOKENS)), "{ctx}");
            let answer = resolve(&op.response(200).unwrap()["content"]["application/json"]["schema"]["items"]);
            assert_eq!(answer["properties"]["token_type"]["maxLength"], keyward::scanning::MAX_TYPE_LEN);
        } else if op.is_admin() {
            assert_eq!(op.v["security"], json!([{"AdminToken": []}]), "{ctx}");
            assert!(!op.is_public(), "{ctx}");
        } else if op.is_preflight() {
            assert!(sec.is_empty(), "{ctx}");
        } else if op.is_public() {
            assert!(sec.is_empty(), "{ctx}: a public route takes no credential");
            assert!(op.scope().is_none(), "{ctx}: a public route has no scope");
            assert!(op.is_proxied(), "{ctx}: a public route is proxied");
            assert!(op.ip_limit() > 0, "{ctx}");
        } else {
            let scope = op.scope().unwrap_or_else(|| panic!("{ctx}: no x-keyward-scope"));
            assert_eq!(
                op.v["security"],
                json!([{"ApiKeyBearer": [scope]}, {"ApiKeyHeader": [scope]}, {"JwtBearer": [scope]}]),
                "{ctx}"
            );
        }
        // A credential is verified wherever it can be (a plain OPTIONS and a
        // method a public path does not accept included): every 401 for a
        // key is one for a JWT too, and exactly those two codes.
        if !op.is_admin() && !op.is_outside_policy() {
            let unauthorized =
                strs(&op.response(401).unwrap_or_else(|| panic!("{ctx}: no 401"))["x-keyward-error-codes"]);
            assert_eq!(unauthorized, ["INVALID_API_KEY", "INVALID_TOKEN"], "{ctx}: 401");
        }
        // Path parameters are declared.
        let declared: BTreeSet<&str> = spec()["paths"][&op.path]["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(op.v["parameters"].as_array().into_iter().flatten())
            .map(resolve)
            .filter(|p| p["in"] == "path")
            .filter_map(|p| p["name"].as_str())
            .collect();
        let in_template: BTreeSet<&str> =
            op.path.split('/').filter_map(|seg| seg.strip_prefix('{').and_then(|x| x.strip_suffix('}'))).collect();
        assert_eq!(declared, in_template, "{ctx}: path parameters");
        // Widget routes take the Turnstile and visitor tokens.
        let header_params: BTreeSet<&str> = op.v["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(resolve)
            .filter(|p| p["in"] == "header")
            .filter_map(|p| p["name"].as_str())
            .collect();
        let widget_scopes = strs(&policy()["widget_scopes"]);
        if !op.is_preflight() && op.scope().is_some_and(|sc| widget_scopes.contains(&sc)) {
            for name in ["CF-Turnstile-Response", "X-Keyward-Visitor"] {
                assert!(header_params.contains(name), "{ctx}: widget route without the {name} parameter");
            }
        }
        // A request body keyward checks the type of: 415, and only there.
        let media = op.response(415).map(|r| strs(&r["x-keyward-error-codes"]));
        assert_eq!(media, op.checks_body_type().then(|| vec!["UNSUPPORTED_MEDIA_TYPE"]), "{ctx}: 415");
        // Turnstile is decided before the route: every 403 of a route that
        // takes a key can be it; a public route's 403 is only a browser
        // origin outside JWT_ALLOWED_ORIGINS.
        if op.is_public() {
            let forbidden = strs(&op.response(403).unwrap_or_else(|| panic!("{ctx}: no 403"))["x-keyward-error-codes"]);
            assert_eq!(forbidden, ["ORIGIN_NOT_ALLOWED"], "{ctx}: 403");
            for status in [429, 503] {
                assert!(op.response(status).is_some(), "{ctx}: a public route documents {status}");
            }
        } else if !op.is_admin() && !op.is_outside_policy() {
            let forbidden = strs(&op.response(403).unwrap_or_else(|| panic!("{ctx}: no 403"))["x-keyward-error-codes"]);
            assert!(forbidden.contains(&"TURNSTILE_REQUIRED"), "{ctx}: 403 lacks TURNSTILE_REQUIRED");
            assert!(forbidden.contains(&"ORIGIN_NOT_ALLOWED"), "{ctx}: 403 lacks ORIGIN_NOT_ALLOWED");
            // A key's address allow-list is checked wherever a key is taken.
            assert!(forbidden.contains(&"IP_NOT_ALLOWED"), "{ctx}: 403 lacks IP_NOT_ALLOWED");
        }
        // What a request spends from a usage-limited key's credits: on every
        // operation that takes a key, and only there.
        let takes_key = !op.is_admin() && !op.is_preflight() && !op.is_public() && !op.is_outside_policy();
        assert_eq!(op.v.get("x-keyward-cost").is_some(), takes_key, "{ctx}: x-keyward-cost");
        // The control API's writes (`control_write_scope`) are marked, and
        // can then be refused for the missing write scope.
        if op.v.get("x-keyward-control-write").is_some() {
            assert_eq!(op.v["x-keyward-control-write"], true, "{ctx}");
            let forbidden = strs(&op.response(403).unwrap()["x-keyward-error-codes"]);
            assert!(forbidden.contains(&"MISSING_SCOPE"), "{ctx}: a control write without MISSING_SCOPE");
        }

        for (status, resp) in op.v["responses"].as_object().unwrap() {
            let resp = resolve(resp);
            let ctx = format!("{ctx} {status}");
            let hs = &resp["headers"];
            assert_eq!(resolve(&hs["X-Request-Id"])["required"], true, "{ctx}: X-Request-Id");
            let required = |name: &str| hs.get(name).is_some_and(|x| resolve(x)["required"] == true);
            // Never publicly cacheable: keyward's own answers are `no-store`,
            // the origin's are passed on made private.
            assert!(required("Cache-Control"), "{ctx}: Cache-Control");
            let passed_on = op.is_proxied() && (status == "default" || status.starts_with('2'));
            let cc = &resolve(&hs["Cache-Control"])["schema"]["const"];
            let want = if passed_on { Value::Null } else { json!("no-store") };
            assert_eq!(cc, &want, "{ctx}: Cache-Control");
            let code: u16 = match status.parse() {
                Ok(c) => c,
                Err(_) => {
                    assert_eq!(status, "default", "{ctx}");
                    assert!(op.is_proxied(), "{ctx}: only origin routes pass other statuses through");
                    continue;
                }
            };
            if code >= 400 {
                assert_eq!(
                    resp["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorEnvelope",
                    "{ctx}: every error references the envelope"
                );
                let codes = strs(&resp["x-keyward-error-codes"]);
                assert!(!codes.is_empty(), "{ctx}: no x-keyward-error-codes");
                for c in codes {
                    assert_eq!(catalogue(c).status(), code, "{ctx}: {c} is answered with {}", catalogue(c).status());
                }
            }
            // A status of several codes may name, per code, the headers that
            // code always carries (`x-keyward-code-headers`): documented
            // headers of the response, for codes it lists.
            for (c, names) in resp.get("x-keyward-code-headers").and_then(Value::as_object).into_iter().flatten() {
                assert!(strs(&resp["x-keyward-error-codes"]).contains(&c.as_str()), "{ctx}: code headers of {c}");
                for n in strs(names) {
                    assert!(hs.get(n).is_some(), "{ctx}: {c} carries {n}, which is not documented");
                }
            }
            let always = |c: &str, n: &str| required(n) || strs(&resp["x-keyward-code-headers"][c]).contains(&n);
            match code {
                405 => assert!(required("Allow"), "{ctx}: Allow"),
                429 => {
                    // Every 429 can be a limit; one of a key's operation can
                    // be its credits too (public routes spend none).
                    let codes = strs(&resp["x-keyward-error-codes"]);
                    assert!(codes.contains(&"RATE_LIMITED"), "{ctx}: RATE_LIMITED");
                    assert_eq!(codes.contains(&"USAGE_EXCEEDED"), !op.is_public(), "{ctx}: USAGE_EXCEEDED");
                    for c in codes {
                        let carried: &[&str] = match c {
                            "RATE_LIMITED" => {
                                &["Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"]
                            }
                            "USAGE_EXCEEDED" => &["X-Credits-Remaining"],
                            other => panic!("{ctx}: {other}: which headers does it always carry?"),
                        };
                        for n in carried {
                            assert!(always(c, n), "{ctx}: {c} without {n}");
                        }
                    }
                }
                503 => assert!(hs.get("Retry-After").is_some(), "{ctx}: Retry-After"),
                200..=299 if !op.is_admin() && !op.is_preflight() && !op.is_outside_policy() => {
                    for n in ["RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"] {
                        assert!(required(n), "{ctx}: {n} on an authorized answer");
                    }
                }
                _ => {}
            }
        }
    }
}

/// `x-keyward-origin-request`: the identities by `X-Keyward-Auth` are
/// consistent with the headers (a header sent for one identity only is not
/// required), and the canonical fields are `identity_headers`' in
/// src/signing.rs, in its order.
fn origin_request_doc_is_consistent() {
    let doc = &spec()["x-keyward-origin-request"];
    let headers = doc["headers"].as_object().unwrap();
    let auth = &doc["x-keyward-auth"];
    let modes: BTreeSet<&str> =
        auth.as_object().unwrap().keys().map(String::as_str).filter(|k| *k != "description").collect();
    let auth_enum: BTreeSet<&str> = strs(&headers["X-Keyward-Auth"]["schema"]["enum"]).into_iter().collect();
    assert_eq!(modes, ["jwt", "key", "none"].into_iter().collect(), "x-keyward-auth modes");
    assert_eq!(auth_enum, modes, "X-Keyward-Auth's values are the modes");
    assert_eq!(headers["X-Keyward-Auth"]["required"], true);
    let mut kinds = BTreeSet::new();
    for m in &modes {
        let mode = &auth[*m];
        let (present, optional, absent) = (strs(&mode["present"]), strs(&mode["optional"]), strs(&mode["absent"]));
        for n in present.iter().chain(&optional).chain(&absent) {
            assert!(headers.contains_key(*n), "{m}: {n} is not a documented origin header");
            assert!(n.starts_with("X-Keyward-"), "{m}: {n}");
            let places = [&present, &optional, &absent].iter().filter(|l| l.contains(n)).count();
            assert_eq!(places, 1, "{m}: {n} is in more than one list");
        }
        for n in optional.iter().chain(&absent) {
            assert_ne!(headers[*n]["required"], true, "{m}: {n} is required yet not always sent");
        }
        if let Some(id) = mode["credential_id"].as_str() {
            assert!(present.contains(&id) || optional.contains(&id), "{m}: credential_id {id}");
        } else {
            assert!(mode["credential_id"].is_null(), "{m}");
        }
        kinds.extend(strs(&mode["key_kinds"]));
    }
    // Every X-Keyward-* identity header is placed in every mode, or always sent.
    for (name, h) in headers {
        if name.starts_with("X-Keyward-") && h["required"] != true {
            for m in &modes {
                let mode = &auth[*m];
                let placed = ["present", "optional", "absent"].iter().any(|l| strs(&mode[*l]).contains(&name.as_str()));
                assert!(placed, "{m}: {name} is neither present, optional nor absent");
            }
        }
    }
    let kind_enum: BTreeSet<&str> = strs(&headers["X-Keyward-Key-Kind"]["schema"]["enum"]).into_iter().collect();
    assert_eq!(kinds, kind_enum, "X-Keyward-Key-Kind's values");
    assert_eq!(kinds, ["jwt", "public", "secret", "widget"].into_iter().collect());
    // The canonical string: `canonical_string(&[...])` in identity_headers.
    let from = SIGNING_SRC.find("pub fn identity_headers(").expect("identity_headers in src/signing.rs");
    let body = &SIGNING_SRC[from..];
    let call = &body[body.find("canonical_string(&[").expect("canonical_string(&[ in identity_headers") + 19..];
    let call = &call[..call.find("])").unwrap()];
    let names: Vec<&str> = call
        .split(',')
        .map(|a| a.trim().trim_start_matches('&'))
        .filter(|a| !a.is_empty())
        .map(|a| match a {
            "ts" => "X-Keyward-Timestamp",
            "method" => "method",
            "path" => "path",
            "query" => "query",
            "request_id" => "X-Request-Id",
            "grant.org_id" => "X-Keyward-Org",
            "id" => "credential-id",
            "kind" => "X-Keyward-Key-Kind",
            "scopes" => "X-Keyward-Scopes",
            "user" => "X-Keyward-User",
            "resource" => "X-Keyward-Resource",
            other => panic!("canonical field {other:?} of src/signing.rs is unknown here: update this test"),
        })
        .collect();
    assert!(SIGNING_SRC.contains(r#"String::from("keyward-v1")"#), "the literal first line");
    let documented = strs(&doc["x-keyward-signature"]["canonical_fields"]);
    assert_eq!(documented[0], "keyward-v1");
    assert_eq!(documented[1..], names[..], "canonical fields vs src/signing.rs");
    // The trailing lines: the headers identity_headers pushes after the
    // canonical string, each adding `{canonical}\n{value}` only when sent.
    let tail = &body[body.find("let canonical = match").expect("the trailing lines in identity_headers")..];
    let tail = &tail[..tail.find("h.push((\"X-Keyward-Signature\"").expect("the signature after the trailing lines")];
    let pushed: Vec<&str> = tail.split("h.push((\"").skip(1).filter_map(|p| p.split('"').next()).collect();
    assert!(tail.contains(r#"format!("{canonical}\n{"#), "a trailing line is `canonical` + \\n + the value");
    assert!(tail.contains("None => canonical"), "no line without the header");
    let trailing = strs(&doc["x-keyward-signature"]["trailing_fields"]);
    assert_eq!(trailing, pushed, "trailing canonical fields vs src/signing.rs");
    for name in &trailing {
        assert_ne!(headers[*name]["required"], true, "{name}: a trailing field is sent only sometimes");
        assert!(!documented.contains(name), "{name}: both a canonical and a trailing field");
    }
    assert_eq!(trailing, ["X-Keyward-Meta"]);
    // Metadata: a key's only (optional), never a JWT session's or a public route's.
    assert!(strs(&auth["key"]["optional"]).contains(&"X-Keyward-Meta"));
    for m in ["jwt", "none"] {
        assert!(strs(&auth[m]["absent"]).contains(&"X-Keyward-Meta"), "{m}");
    }
}

#[test]
fn every_catalogue_code_is_documented_under_its_status() {
    let schemas = &spec()["components"]["schemas"];
    let code_schema = resolve(&schemas["ErrorEnvelope"]["properties"]["error"]["properties"]["code"]);
    let documented: BTreeSet<&str> = strs(&code_schema["enum"]).into_iter().collect();
    let catalogue_codes: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(documented, catalogue_codes, "the code enum is exactly the catalogue");
    let types: BTreeSet<&str> =
        strs(&schemas["ErrorEnvelope"]["properties"]["error"]["properties"]["type"]["enum"]).into_iter().collect();
    assert_eq!(types, ErrorCode::ALL.iter().map(|c| c.kind()).collect(), "the type enum is exactly the catalogue's");
    for c in ErrorCode::ALL {
        let entry = &code_schema["x-keyward-catalogue"][c.as_str()];
        assert_eq!(entry["status"], c.status(), "{}", c.as_str());
        assert_eq!(entry["type"], c.kind(), "{}", c.as_str());
        assert_eq!(entry["retryable"], c.retryable(), "{}", c.as_str());
    }
    let mut listed: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for op in all_ops() {
        for status in op.statuses() {
            let resp = op.response(status).unwrap();
            for c in strs(&resp["x-keyward-error-codes"]) {
                assert_eq!(catalogue(c).status(), status, "{} {} lists {c} under {status}", op.method, op.path);
                listed.entry(c).or_default().push(op.id().to_owned());
            }
        }
    }
    for c in ErrorCode::ALL {
        assert!(listed.contains_key(c.as_str()), "{} is in no operation's x-keyward-error-codes", c.as_str());
    }
    // Wherever a key's 401 can occur on an operation that accepts JWT
    // sessions, the token's can too.
    for op in all_ops() {
        let accepts_jwt = op.v["security"].as_array().into_iter().flatten().any(|s| s.get("JwtBearer").is_some());
        let unauthorized = op.response(401).map(|r| strs(&r["x-keyward-error-codes"])).unwrap_or_default();
        if accepts_jwt || unauthorized.contains(&"INVALID_API_KEY") {
            assert!(
                unauthorized.contains(&"INVALID_API_KEY") && unauthorized.contains(&"INVALID_TOKEN"),
                "{} {}: 401 {unauthorized:?}",
                op.method,
                op.path
            );
        }
    }
    assert!(listed["INVALID_TOKEN"].len() >= listed["INVALID_API_KEY"].len());
}

/// The schema check used on real responses is not vacuous.
#[test]
fn schema_check_catches_undocumented_shapes() {
    let schemas = &spec()["components"]["schemas"];
    let check = |schema: &'static Value, v: Value| {
        let mut errs = Vec::new();
        validate(schema, &v, "body", &mut errs);
        errs
    };
    let good = json!({"success": false, "error": {"code": "RATE_LIMITED", "type": "rate_limit_error",
        "message": "m", "retryable": true, "request_id": "req_3a9932f0952c622124797db1"}});
    assert_eq!(check(&schemas["ErrorEnvelope"], good.clone()), Vec::<String>::new());
    for (pointer, bad) in [
        ("/error/code", json!("NOT_A_CODE")),
        ("/error/retryable", json!("yes")),
        ("/error/extra", json!(1)),
        ("/success", json!(true)),
    ] {
        let mut v = good.clone();
        let (parent, field) = pointer.rsplit_once('/').unwrap();
        v.pointer_mut(parent).unwrap()[field] = bad;
        assert!(!check(&schemas["ErrorEnvelope"], v).is_empty(), "{pointer} not caught");
    }
    let mut no_message = good;
    no_message["error"].as_object_mut().unwrap().remove("message");
    assert!(!check(&schemas["ErrorEnvelope"], no_message).is_empty());
    let key = json!({"id": UNKNOWN_ULID, "name": "k", "kind": "secret", "prefix": "kw_live_", "last_four": "abcd",
        "scopes": ["ai:chat"], "user_id": null, "expires_at": null, "created_at": "2026-05-02T10:00:00+00:00",
        "revoked_at": null, "rate_limits": [], "allowed_origins": [], "resource_id": null, "visitor_rate_limits": [],
        "turnstile_required": false, "consistency": "strict", "allowed_ips": [], "meta": null, "credits": null,
        "plaintext": "kw_live_x"});
    assert_eq!(check(&schemas["CreatedApiKey"], key.clone()), Vec::<String>::new());
    let mut extra = key.clone();
    extra["hash"] = json!("abc");
    assert!(!check(&schemas["CreatedApiKey"], extra).is_empty(), "an undocumented field");
    for field in ["visitor_rate_limits", "turnstile_required", "consistency", "allowed_ips", "meta", "credits"] {
        let mut missing = key.clone();
        missing.as_object_mut().unwrap().remove(field);
        assert!(!check(&schemas["CreatedApiKey"], missing).is_empty(), "{field} missing");
    }
    for (field, bad) in [
        ("turnstile_required", json!("yes")),
        ("visitor_rate_limits", json!([{"name": "ip", "limit": 0, "window_seconds": 60}])),
        ("consistency", json!("eventual")),
        ("allowed_ips", json!([1])),
        ("allowed_ips", json!("203.0.113.0/24")),
        ("meta", json!("plan=pro")),
        ("meta", json!([1])),
        ("credits", json!(5)),
        ("credits", json!({"remaining": 5})),
        ("credits", json!({"remaining": -1, "refill": null, "set_at": "2026-05-02T10:00:00+00:00"})),
        (
            "credits",
            json!({"remaining": 5, "refill": {"amount": 5, "interval": "weekly"}, "set_at": "2026-05-02T10:00:00+00:00"}),
        ),
        ("credits", json!({"remaining": 5, "refill": null, "set_at": "now"})),
        ("credits", json!({"remaining": 5, "refill": null, "set_at": "2026-05-02T10:00:00+00:00", "left": 3})),
    ] {
        let mut v = key.clone();
        v[field] = bad;
        assert!(!check(&schemas["CreatedApiKey"], v).is_empty(), "{field} of the wrong shape");
    }
    let mut with_both = key.clone();
    with_both["allowed_ips"] = json!(["203.0.113.0/24", "2001:db8::1/128"]);
    with_both["meta"] = json!({"plan": "pro"});
    with_both["credits"] =
        json!({"remaining": 10, "refill": {"amount": 10, "interval": "daily"}, "set_at": "2026-05-02T10:00:00+00:00"});
    assert_eq!(check(&schemas["CreatedApiKey"], with_both), Vec::<String>::new());
    // A roll's new key: the created key's fields and where it came from.
    let mut rolled = key.clone();
    rolled["rolled_from"] = json!(UNKNOWN_ULID);
    rolled["old_key_expires_at"] = json!("2026-05-02T11:00:00+00:00");
    assert_eq!(check(&schemas["RolledApiKey"], rolled.clone()), Vec::<String>::new());
    assert!(!check(&schemas["CreatedApiKey"], rolled.clone()).is_empty(), "a created key has no rolled_from");
    for field in ["plaintext", "rolled_from", "old_key_expires_at", "credits"] {
        let mut missing = rolled.clone();
        missing.as_object_mut().unwrap().remove(field);
        assert!(!check(&schemas["RolledApiKey"], missing).is_empty(), "{field} missing");
    }
    let mut bad = rolled;
    bad["old_key_expires_at"] = json!("in an hour");
    assert!(!check(&schemas["RolledApiKey"], bad).is_empty(), "a malformed old_key_expires_at");
    // The guard view: its example, a family count always, credits only as a count.
    let guard_view = resolve(&schemas["KeyGuard"])["example"].clone();
    assert_eq!(check(&schemas["KeyGuard"], guard_view.clone()), Vec::<String>::new());
    let mut limited = guard_view.clone();
    limited["credits"] = json!(7);
    assert_eq!(check(&schemas["KeyGuard"], limited.clone()), Vec::<String>::new());
    limited["credits"] = json!(-7);
    assert!(!check(&schemas["KeyGuard"], limited).is_empty(), "negative credits");
    let mut no_family = guard_view;
    no_family.as_object_mut().unwrap().remove("family");
    assert!(!check(&schemas["KeyGuard"], no_family).is_empty(), "family missing");
    let mut bad_time = key;
    bad_time["created_at"] = json!("yesterday");
    assert!(!check(&schemas["CreatedApiKey"], bad_time).is_empty(), "a malformed date-time");
    let revoked = json!({"id": UNKNOWN_ULID, "revoked_at": "2026-05-02T10:00:00+00:00", "descendants_revoked": 2});
    assert_eq!(check(&schemas["RevokedKey"], revoked.clone()), Vec::<String>::new());
    let mut no_count = revoked.clone();
    no_count.as_object_mut().unwrap().remove("descendants_revoked");
    assert!(!check(&schemas["RevokedKey"], no_count).is_empty(), "descendants_revoked missing");
    for bad in [json!(-1), json!("2"), json!(1.5), Value::Null] {
        let mut v = revoked.clone();
        v["descendants_revoked"] = bad;
        assert!(!check(&schemas["RevokedKey"], v).is_empty(), "descendants_revoked of the wrong shape");
    }
}

/// The string literals of the first `[...]` after `start` in `src`.
fn literals_after<'a>(src: &'a str, start: &str, open: &str) -> BTreeSet<&'a str> {
    let from = src.find(start).unwrap_or_else(|| panic!("{start} not found"));
    let rest = &src[from..];
    let list = &rest[rest.find(open).unwrap_or_else(|| panic!("{open} after {start} not found")) + open.len()..];
    let list = &list[..list.find(']').unwrap()];
    list.split('"').skip(1).step_by(2).collect()
}

/// The key fields the code accepts and answers are the documented ones:
/// `parse_key`'s `only_fields` list is `KeyInput`, `PATCH_FIELDS` is
/// `KeyPatch`, `parse_roll`'s `only_fields` is `RollInput`, `key_view`'s
/// object is `ApiKey` (all of them required: the view always has them), and
/// a roll answers the view with `rolled_from`, `old_key_expires_at` and
/// `plaintext` (`RolledApiKey`).
#[test]
fn key_fields_are_the_code_s() {
    let schemas = &spec()["components"]["schemas"];
    let input: BTreeSet<&str> =
        schemas["KeyInput"]["properties"].as_object().unwrap().keys().map(String::as_str).collect();
    let accepted = literals_after(ADMIN_CORE_SRC, "pub fn parse_key(", "only_fields(");
    assert!(accepted.contains("visitor_rate_limits") && accepted.contains("turnstile_required"), "{accepted:?}");
    assert_eq!(input, accepted, "KeyInput vs parse_key's accepted fields");
    assert!(accepted.contains("credits"), "{accepted:?}");
    let keys = |name: &str| -> BTreeSet<&str> {
        resolve(&schemas[name])["properties"].as_object().unwrap().keys().map(String::as_str).collect()
    };
    // `const PATCH_FIELDS: &[&str] = &["name", ...];`
    let patchable = literals_after(ADMIN_CORE_SRC, "const PATCH_FIELDS", "&str] =");
    assert!(patchable.contains("credits") && patchable.contains("allowed_ips"), "{patchable:?}");
    assert_eq!(keys("KeyPatch"), patchable, "KeyPatch vs PATCH_FIELDS");
    assert_eq!(keys("RollInput"), literals_after(ADMIN_CORE_SRC, "pub fn parse_roll(", "only_fields("), "RollInput");
    // key_view writes key_fields(k, true, None): every `m.push(("name", …))`
    // of key_fields but `last_used_at` (list items only, when given).
    let fields_src = &ORG_SRC[ORG_SRC.find("fn key_fields(").expect("key_fields in src/edge/org.rs")..];
    let fields_src = &fields_src[..fields_src.find("\n}\n").unwrap()];
    let view: BTreeSet<&str> = fields_src
        .lines()
        .filter_map(|l| l.trim().strip_prefix("m.push((\"")?.split_once('"').map(|(k, _)| k))
        .filter(|k| *k != "last_used_at")
        .collect();
    assert!(view.contains("meta") && view.contains("allowed_ips"), "{view:?}");
    let api_key = resolve(&schemas["ApiKey"]);
    let documented: BTreeSet<&str> = api_key["properties"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(documented, view, "ApiKey vs key_view");
    assert_eq!(strs(&api_key["required"]).into_iter().collect::<BTreeSet<_>>(), view, "ApiKey.required vs key_view");
    // The revoke answer: `let data = obj(&[("name", …), …])` of the RevokeKey arm.
    let arm = &ORG_SRC[ORG_SRC.find("OrgCommand::RevokeKey {").expect("the RevokeKey arm in src/edge/org.rs")..];
    let answer = &arm[arm.find("let data = obj(&[").expect("the revoke answer") + 17..];
    let answer = &answer[..answer.find("]);").unwrap()];
    let answered: BTreeSet<&str> =
        answer.lines().filter_map(|l| l.trim().strip_prefix("(\"")?.split_once('"').map(|(k, _)| k)).collect();
    let revoked = resolve(&schemas["RevokedKey"]);
    let documented: BTreeSet<&str> = revoked["properties"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(documented, answered, "RevokedKey vs the revoke answer");
    assert_eq!(strs(&revoked["required"]).into_iter().collect::<BTreeSet<_>>(), answered, "RevokedKey.required");
    assert!(answered.contains("descendants_revoked"));
    // The roll answer: the new key's view, then `format!("{},\"old_key_expires_at\":{},...}}", &view[..]...)`
    // in the RollKey arm, then the plaintext (`with_plaintext`).
    let arm = &ORG_SRC[ORG_SRC.find("OrgCommand::RollKey {").expect("the RollKey arm in src/edge/org.rs")..];
    let answer = &arm[arm.find("let data = format!(").expect("the roll answer")..];
    let answer = &answer[..answer.find(");").unwrap()];
    assert!(answer.contains("&view[..view.len() - 1]"), "the roll answer extends the view: {answer}");
    let mut added: BTreeSet<&str> = answer.split("\\\"").skip(1).step_by(2).collect();
    assert!(arm[..arm.find("OrgCommand::RevokeSessions").unwrap()].contains("with_plaintext("), "the plaintext");
    added.insert("plaintext");
    let rolled = &resolve(&schemas["RolledApiKey"])["allOf"];
    assert_eq!(rolled[0]["$ref"], "#/components/schemas/ApiKey", "RolledApiKey extends ApiKey");
    let documented: BTreeSet<&str> = rolled[1]["properties"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(documented, added, "RolledApiKey vs the roll answer");
    assert_eq!(strs(&rolled[1]["required"]).into_iter().collect::<BTreeSet<_>>(), added, "RolledApiKey.required");
}

/// The operations marked `x-keyward-control-write` are the routes
/// `src/edge/control.rs` checks `control_write_scope` on
/// (`matches!(route, Route::CreateKey | ...)` before `check_write_scope`,
/// on one line or as rustfmt spreads it).
#[test]
fn control_writes_are_the_code_s() {
    let at = CONTROL_SRC.find("rules::check_write_scope(").expect("check_write_scope in src/edge/control.rs");
    let before = &CONTROL_SRC[..at];
    let cond = &before[before.rfind("matches!(").expect("the routes it applies to") + 9..];
    let cond = cond.trim_start().strip_prefix("route,").expect("matches!(route, ...) before check_write_scope");
    let cond = &cond[..cond.find(") {").unwrap()];
    let variants: BTreeSet<&str> =
        cond.split('|').map(|v| v.trim().trim_start_matches("Route::").split('(').next().unwrap().trim()).collect();
    assert_eq!(variants.len(), 5, "{variants:?}");
    // `("POST", "/v1/api_keys") => Some(Route::CreateKey)` and the like.
    let mut written = BTreeSet::new();
    for line in CONTROL_SRC.lines().map(str::trim).filter(|l| l.starts_with("(\"") && l.contains(") =>")) {
        let (inner, target) = line.strip_prefix('(').unwrap().split_once(") =>").unwrap();
        let (m, p) = inner.split_once(',').unwrap();
        let next = &CONTROL_SRC[CONTROL_SRC.find(line).unwrap() + line.len()..];
        let target =
            if target.trim() == "{" { next.lines().find(|l| !l.trim().is_empty()).unwrap_or_default() } else { target };
        let Some(v) = target.split("Route::").nth(1).and_then(|v| v.split(|c: char| !c.is_alphanumeric()).next())
        else {
            continue;
        };
        if variants.contains(v) {
            written.insert((m.trim().trim_matches('"').to_owned(), p.trim().trim_matches('"').to_owned()));
        }
    }
    assert_eq!(written.len(), variants.len(), "every write route found: {variants:?} {written:?}");
    let marked: BTreeSet<(String, String)> = ops()
        .into_iter()
        .filter(|o| o.v.get("x-keyward-control-write").is_some())
        .map(|o| (o.method.clone(), o.path.clone()))
        .collect();
    assert_eq!(marked, written, "x-keyward-control-write vs src/edge/control.rs");
    // The shipped policy names no write scope; a policy that does names one
    // of its catalogue, required on exactly those operations.
    assert!(policy().get("control_write_scope").is_none(), "document the shipped control_write_scope");
}

/// `{name}` → `{}`, so templates compare regardless of parameter names.
fn shape(path: &str) -> String {
    path.split('/').map(|s| if s.starts_with('{') && s.ends_with('}') { "{}" } else { s }).collect::<Vec<_>>().join("/")
}

/// The admin routes as the router in `src/edge/admin.rs` matches them:
/// `["admin", "orgs", org] => Route::Org(org)` and `Route::Org(_) | ... => "PUT"`
/// (a variant's methods: every arm naming it, `"DELETE, PATCH"` two);
/// and a path handled by a function of its own,
/// `if segs == ["admin", "public_suffix_list"] { return public_suffix_list(…)`,
/// whose methods are the arms `"PUT" => …` of that function.
fn admin_routes_in_source() -> BTreeSet<(String, String)> {
    let mut by_variant: BTreeMap<String, String> = BTreeMap::new();
    let mut methods: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut own: BTreeSet<(String, String)> = BTreeSet::new();
    let mut lines = ADMIN_SRC.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if let Some(segs) = line.strip_prefix("if segs == [").and_then(|l| l.strip_suffix("] {")) {
            let path =
                format!("/{}", segs.split(',').map(|s| s.trim().trim_matches('"')).collect::<Vec<_>>().join("/"));
            let call = lines.next().unwrap_or_default();
            let handler = call.strip_prefix("return ").and_then(|c| c.split('(').next()).unwrap_or_else(|| {
                panic!("{path}: expected `return handler(...)` after the match in src/edge/admin.rs, found {call:?}")
            });
            let body = &ADMIN_SRC[ADMIN_SRC.find(&format!("fn {handler}(")).expect("the handler")..];
            // To the function's closing brace (at the start of a line).
            let body = &body[..body.find("\n}\n").unwrap_or(body.len())];
            let arms: Vec<&str> = body
                .lines()
                .map(str::trim)
                .filter_map(|l| l.strip_prefix('"')?.split_once("\" =>").map(|(m, _)| m))
                .filter(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()))
                .collect();
            assert!(!arms.is_empty(), "{path}: no method arms in {handler}");
            own.extend(arms.into_iter().map(|m| (m.to_owned(), path.clone())));
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            if let Some((segs, target)) = rest.split_once("] => Route::") {
                let path: Vec<String> = segs
                    .split(',')
                    .map(str::trim)
                    .map(|s| if s.starts_with('"') { s.trim_matches('"').to_owned() } else { "{}".to_owned() })
                    .collect();
                let variant = target.split('(').next().unwrap().to_owned();
                by_variant.insert(variant, format!("/{}", path.join("/")));
            }
        } else if line.starts_with("Route::") {
            if let Some((left, right)) = line.split_once(" => \"") {
                let allowed = right.trim_end_matches([',', '"']);
                for v in left.split('|') {
                    let v = v.trim().trim_start_matches("Route::").split('(').next().unwrap().to_owned();
                    methods.entry(v).or_default().extend(allowed.split(", ").map(str::to_owned));
                }
            }
        }
    }
    assert!(!by_variant.is_empty(), "found no admin routes in src/edge/admin.rs: update admin_routes_in_source");
    let mut out: BTreeSet<(String, String)> = by_variant
        .iter()
        .flat_map(|(v, p)| {
            let ms = methods.get(v).unwrap_or_else(|| panic!("no method for admin route {v} in src/edge/admin.rs"));
            ms.iter().map(move |m| (m.clone(), p.clone()))
        })
        .collect();
    out.extend(own);
    out
}

/// The control routes keyward serves, as `src/edge/control.rs` matches them:
/// `("POST", "/v1/api_keys") => Some(Route::CreateKey)`.
fn control_routes_in_source() -> BTreeSet<(String, String)> {
    let out: BTreeSet<(String, String)> = CONTROL_SRC
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("(\"") && l.contains(") =>"))
        .filter_map(|l| {
            let inner = l.strip_prefix('(')?.split_once(") =>")?.0;
            let (m, p) = inner.split_once(',')?;
            Some((m.trim().trim_matches('"').to_owned(), shape(p.trim().trim_matches('"'))))
        })
        .collect();
    assert!(!out.is_empty(), "found no control routes in src/edge/control.rs: update control_routes_in_source");
    out
}

/// The leaked-key endpoint as `src/edge/scanning.rs` serves it: its `PATH`
/// (`pub(super) const PATH: &str = "/v1/...";`) and the one method it
/// accepts (`if req.inner().method() != "POST"`); and `src/edge/mod.rs`
/// routes that path before the policy gate (`path == scanning::PATH` before
/// `gate::handle(`).
fn scanning_route_in_source() -> (String, String) {
    let path = SCANNING_SRC
        .lines()
        .find_map(|l| l.trim().strip_prefix("pub(super) const PATH: &str = \"")?.strip_suffix("\";"))
        .expect("no `pub(super) const PATH: &str = \"...\";` in src/edge/scanning.rs: update scanning_route_in_source");
    let method = SCANNING_SRC
        .split_once(".method() != \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(m, _)| m)
        .expect("no `.method() != \"...\"` in src/edge/scanning.rs: update scanning_route_in_source");
    let routed = EDGE_SRC.find("path == scanning::PATH").expect("src/edge/mod.rs does not route scanning::PATH");
    let gate = EDGE_SRC.find("gate::handle(").expect("src/edge/mod.rs has no gate::handle(");
    assert!(routed < gate, "src/edge/mod.rs: the leaked-key endpoint is no longer routed before the policy gate");
    (method.to_owned(), path.to_owned())
}

#[test]
fn every_route_is_documented_and_nothing_else() {
    let widget_scopes = strs(&policy()["widget_scopes"]);
    // Policy: pattern → (method → (scope, served by keyward)); a public
    // route's scope is empty.
    let mut routes: BTreeMap<String, BTreeMap<String, (String, bool)>> = BTreeMap::new();
    // Policy: (method, pattern) → a public route's `ip_rate_limits`.
    let mut public: BTreeMap<(String, String), Value> = BTreeMap::new();
    // Policy: pattern → (method → the request body types it accepts: its
    // `content_types`, or `*/*` for any but a form).
    let mut body_types: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
    // Policy: (method, pattern) → what a request spends from a usage-limited
    // key's credits (`cost`, default 1; public routes spend none).
    let mut costs: BTreeMap<(String, String), u64> = BTreeMap::new();
    for r in policy()["routes"].as_array().unwrap() {
        let methods = match &r["method"] {
            Value::String(m) => vec![m.as_str()],
            other => strs(other),
        };
        for m in methods {
            if r["public"] == true {
                // The policy's default for a public route without its own.
                let limits = r
                    .get("ip_rate_limits")
                    .cloned()
                    .unwrap_or_else(|| json!([{"name": "ip_minute", "limit": 10, "window_seconds": 60}]));
                public.insert((m.to_owned(), shape(r["path"].as_str().unwrap())), limits);
            }
            let entry = (r["scope"].as_str().unwrap_or_default().to_owned(), r["served_by"] == "keyward");
            routes.entry(shape(r["path"].as_str().unwrap())).or_default().entry(m.to_owned()).or_insert(entry);
            let types = r.get("content_types").map(strs).unwrap_or_else(|| vec!["*/*"]);
            body_types.entry((m.to_owned(), shape(r["path"].as_str().unwrap()))).or_insert(types);
            let cost = r.get("cost").map_or(1, |c| c.as_u64().expect("an integer cost"));
            costs.entry((m.to_owned(), shape(r["path"].as_str().unwrap()))).or_insert(cost);
        }
    }
    let admin = admin_routes_in_source();
    assert_eq!(admin.len(), 10, "admin routes: {admin:?}");
    let control = control_routes_in_source();
    let served: BTreeSet<(String, String)> = routes
        .iter()
        .flat_map(|(p, ms)| ms.iter().filter(|(_, (_, local))| *local).map(move |(m, _)| (m.clone(), p.clone())))
        .collect();
    assert_eq!(control, served, "control routes in the code vs served_by keyward in the policy");

    // Served outside the policy: exactly the leaked-key endpoint, which is
    // no policy route (the policy would never see it).
    let scanning = scanning_route_in_source();
    let outside: BTreeSet<(String, String)> =
        all_ops().into_iter().filter(Op::is_outside_policy).map(|o| (o.method.clone(), o.path.clone())).collect();
    assert_eq!(outside, BTreeSet::from([scanning.clone()]), "x-keyward-outside-policy vs src/edge/scanning.rs");
    assert!(!routes.contains_key(&shape(&scanning.1)), "{}: also a policy route, which it shadows", scanning.1);

    let mut seen_public = BTreeSet::new();
    let mut seen_admin = BTreeSet::new();
    for (path, item) in spec()["paths"].as_object().unwrap() {
        let pattern = item.get("x-keyward-pattern").and_then(Value::as_str).unwrap_or(path);
        let key = shape(pattern);
        let methods = path_methods(path);
        if *path == scanning.1 {
            assert_eq!(methods, BTreeSet::from([scanning.0.clone()]), "{path}: the methods of the code");
            assert_eq!(item.as_object().unwrap().len(), 1, "{path}: one operation, nothing else (no preflight)");
            continue;
        }
        if path.starts_with("/admin/") {
            for m in &methods {
                assert!(admin.contains(&(m.clone(), key.clone())), "{m} {path} is not an admin route of the worker");
                seen_admin.insert((m.clone(), key.clone()));
            }
            assert!(item.get("options").is_none(), "{path}: the admin API answers no preflight");
            continue;
        }
        let policy_methods =
            routes.get(&key).unwrap_or_else(|| panic!("{path} ({pattern}) is not a route of policy/policy.json"));
        assert_eq!(
            methods,
            policy_methods.keys().cloned().collect::<BTreeSet<_>>(),
            "{path}: methods differ from the policy"
        );
        for (m, (scope, local)) in policy_methods {
            let op = &item[m.to_ascii_lowercase()];
            match public.get(&(m.clone(), key.clone())) {
                Some(limits) => {
                    assert_eq!(op["x-keyward-public"], true, "{m} {path}: public");
                    assert!(op.get("x-keyward-scope").is_none(), "{m} {path}: a public route has no scope");
                    assert_eq!(&op["x-keyward-ip-rate-limits"], limits, "{m} {path}: ip_rate_limits");
                }
                None => {
                    assert!(op.get("x-keyward-public").is_none(), "{m} {path}: not public in the policy");
                    assert!(op.get("x-keyward-ip-rate-limits").is_none(), "{m} {path}");
                    assert_eq!(op["x-keyward-scope"], scope.as_str(), "{m} {path}: scope");
                    assert_eq!(op["x-keyward-cost"], costs[&(m.clone(), key.clone())], "{m} {path}: cost");
                }
            }
            assert_eq!(op["x-keyward-served-by"], if *local { "keyward" } else { "origin" }, "{m} {path}: served_by");
            if !*local {
                assert!(op["responses"].get("200").is_some() && op["responses"].get("default").is_some(), "{m} {path}");
            }
            // A documented request body has exactly the route's media types.
            if let Some(content) = op["requestBody"]["content"].as_object() {
                let documented: BTreeSet<&str> = content.keys().map(String::as_str).collect();
                let accepted: BTreeSet<&str> = body_types[&(m.clone(), key.clone())].iter().copied().collect();
                assert_eq!(documented, accepted, "{m} {path}: request body media types vs the policy's content_types");
            }
        }
        // Every public path documents keyward's preflight answer: 204 (the
        // widget methods, or for an origin in JWT_ALLOWED_ORIGINS every
        // method of the path), and 404 where no widget route exists.
        let pre = Op { path: path.clone(), method: "OPTIONS".into(), v: &item["options"] };
        assert!(item.get("options").is_some(), "{path}: no preflight operation");
        let widget = policy_methods.values().any(|(s, _)| widget_scopes.contains(&s.as_str()));
        assert!(pre.response(204).is_some(), "{path}: preflight 204 (JWT_ALLOWED_ORIGINS)");
        let nf = pre.response(404).map(|r| strs(&r["x-keyward-error-codes"]));
        assert_eq!(nf, (!widget).then(|| vec!["ROUTE_NOT_FOUND"]), "{path}: preflight 404 iff no widget route");
        seen_public.insert(key);
    }
    assert_eq!(seen_public, routes.keys().cloned().collect(), "every policy route has a spec path");
    let documented_public: BTreeSet<(String, String)> =
        ops().into_iter().filter(Op::is_public).map(|o| (o.method.clone(), shape(&o.path))).collect();
    assert_eq!(documented_public, public.keys().cloned().collect(), "the public routes are the policy's");
    assert_eq!(seen_admin, admin, "every admin route is in the spec");
}

// ---------------------------------------------------------------- real responses

/// An org with an active BAA, a key with `*` (for the public routes) and
/// its id.
fn setup() -> (String, String, String) {
    let org = h().org(true);
    // The user of `params` (its sessions are revoked by the sessions routes).
    let r = h().admin("PUT", &format!("/admin/orgs/{org}/users/u_spec"), Some(json!({"role": "viewer"})));
    assert_eq!(r.status, 200, "{}", r.text());
    let (key, id) = h().key(&org, json!({"name": "spec", "scopes": ["*"]}));
    (org, key, id)
}

#[test]
fn every_operation_answers_as_documented() {
    let (org, key, key_id) = setup();
    let port = h().port;
    let admin = admin_auth();
    for (i, op) in ops().into_iter().enumerate() {
        let mut ps = params(&org);
        let case;
        let r = if op.is_admin() {
            case = "admin, valid request";
            let target_org =
                if op.method == "PUT" && op.path == "/admin/orgs/{org_id}" { unique("org") } else { org.clone() };
            ps.retain(|(k, _)| *k != "org_id");
            ps.push(("org_id", target_org));
            if op.writes_key() {
                let (_, victim) = h().key(&org, json!({"name": "victim", "scopes": ["ai:chat"]}));
                ps.retain(|(k, _)| *k != "key_id");
                ps.push(("key_id", victim));
            } else if op.path.contains("{key_id}") {
                ps.retain(|(k, _)| *k != "key_id");
                ps.push(("key_id", key_id.clone()));
            }
            plain(port, &op, &fill(&op, &ps), &[("authorization", &admin)])
        } else if op.is_preflight() {
            case = "preflight from a page";
            let acrm = path_methods(&op.path).into_iter().next().unwrap();
            let preflight = |origin: &str| {
                send_to(
                    port,
                    "OPTIONS",
                    &fill(&op, &ps),
                    &[
                        ("origin", origin),
                        ("access-control-request-method", &acrm),
                        ("access-control-request-headers", "authorization, content-type"),
                    ],
                    None,
                )
            };
            // From JWT_ALLOWED_ORIGINS: every method of the path.
            let r = preflight(APP);
            assert_eq!(r.status, 204, "{} ({APP}): {}", op.path, r.text());
            conforms(&op, &r, "preflight from JWT_ALLOWED_ORIGINS");
            assert_eq!(method_set(r.header("access-control-allow-methods").unwrap()), path_methods(&op.path));
            assert_eq!(r.header("access-control-allow-origin"), Some(APP));
            preflight(SHOP)
        } else if op.is_public() {
            case = "public route, no credential";
            let ip = fresh_ip();
            let body = public_body(port, &op);
            let headers = [("cf-connecting-ip", ip.as_str())];
            send_typed(port, &op.method, &fill(&op, &ps), &headers, body.as_ref().map(|(m, b)| (*m, b.as_str())))
        } else {
            case = "valid key, valid request";
            if op.writes_key() {
                let (_, victim) = h().key(&org, json!({"name": "victim", "scopes": ["ai:chat"]}));
                ps.retain(|(k, _)| *k != "key_id");
                ps.push(("key_id", victim));
            }
            let (n, v) = cred(&key, i);
            plain(port, &op, &fill(&op, &ps), &[(n, &v)])
        };
        let expected = match op.is_preflight() {
            true if widget_methods(&op.path).is_empty() => 404,
            _ => op.success_status().unwrap(),
        };
        assert_eq!(r.status, expected, "{} {} ({case}): {}", op.method, op.path, r.text());
        let body = conforms(&op, &r, case);
        assert!(r.header("x-credits-remaining").is_none(), "{}: a key without credits", op.id());
        if op.writes_key() {
            // The key asked for: revoked or updated, or rolled into a new one.
            let target = ps.iter().find(|(k, _)| *k == "key_id").map(|(_, v)| v.as_str()).unwrap();
            let data = &body["data"];
            match data.get("rolled_from") {
                Some(from) => assert!(from == target && data["id"] != target, "{}: {data}", op.id()),
                None => assert_eq!(data["id"], target, "{}", op.id()),
            }
        }
        if op.is_preflight() && r.status == 204 {
            let widget = widget_methods(&op.path);
            assert_eq!(method_set(r.header("access-control-allow-methods").unwrap()), widget, "{}", op.path);
            assert_eq!(r.header("access-control-allow-origin"), Some(SHOP));
        }
        if op.is_public() {
            // The origin (its identity provider) answered; what it received
            // carries the documented public identity.
            assert_eq!(r.header("ratelimit-limit"), Some(op.ip_limit().to_string().as_str()), "{}", op.id());
            let rid = r.header("x-request-id").unwrap();
            let seen = h().origin_saw(rid).unwrap_or_else(|| panic!("{}: the origin did not see {rid}", op.id()));
            origin_request_is_documented(&op, &seen, rid, "none");
        } else if op.is_proxied() {
            // The origin answered (the demo origin echoes what it received),
            // with the documented identity.
            assert_eq!(body["echo"]["method"], op.method.as_str(), "{} {}", op.method, op.path);
            origin_request_is_documented(&op, &body["echo"], r.header("x-request-id").unwrap(), "key");
            assert!(body["echo"]["headers"].get("x-keyward-meta").is_none(), "{}: a key without meta", op.id());
        }
    }
}

/// What the origin received (the demo origin's echo, or its log entry)
/// carries the documented identity headers (`x-keyward-origin-request`):
/// every required one, no undocumented `X-Keyward-*`, the identity of
/// `auth` (`X-Keyward-Auth` and the headers `x-keyward-auth` lists for it:
/// present, absent, nothing else), documented values, the authorized
/// method, and a signature over the documented canonical fields.
fn origin_request_is_documented(op: &Op, echo: &Value, request_id: &str, auth: &str) {
    let ctx = format!("{} {}", op.method, op.path);
    let doc = &spec()["x-keyward-origin-request"];
    let documented = doc["headers"].as_object().expect("x-keyward-origin-request.headers");
    let got = echo["headers"].as_object().unwrap();
    for (name, h) in documented {
        if h["required"] == true {
            assert!(got.contains_key(&name.to_ascii_lowercase()), "{ctx}: the origin did not receive {name}: {echo}");
        }
    }
    for name in got.keys().filter(|n| n.starts_with("x-keyward-")) {
        assert!(
            documented.keys().any(|d| d.eq_ignore_ascii_case(name)),
            "{ctx}: {name} reaches the origin, undocumented"
        );
    }
    let header = |n: &str| got.get(&n.to_ascii_lowercase()).and_then(Value::as_str).unwrap_or("");
    assert_eq!(header("X-Keyward-Auth"), auth, "{ctx}: {echo}");
    let mode = &doc["x-keyward-auth"][auth];
    assert!(mode.is_object(), "{ctx}: no x-keyward-auth.{auth}");
    for n in strs(&mode["present"]) {
        assert!(got.contains_key(&n.to_ascii_lowercase()), "{ctx}: {auth}: {n} missing: {echo}");
    }
    for n in strs(&mode["absent"]) {
        assert!(!got.contains_key(&n.to_ascii_lowercase()), "{ctx}: {auth}: {n} sent: {echo}");
    }
    let allowed: Vec<String> = strs(&mode["present"])
        .into_iter()
        .chain(strs(&mode["optional"]))
        .chain(documented.iter().filter(|(_, h)| h["required"] == true).map(|(n, _)| n.as_str()))
        .map(str::to_ascii_lowercase)
        .collect();
    for name in got.keys().filter(|n| n.starts_with("x-keyward-")) {
        assert!(allowed.contains(name), "{ctx}: {name} is not part of the {auth} identity: {echo}");
    }
    assert!(
        strs(&mode["key_kinds"]).contains(&header("X-Keyward-Key-Kind")),
        "{ctx}: {auth}: X-Keyward-Key-Kind {}",
        header("X-Keyward-Key-Kind")
    );
    for (name, h) in documented {
        if let (Some(v), Some(_)) = (got.get(&name.to_ascii_lowercase()), h.get("schema")) {
            let mut errs = Vec::new();
            validate(&h["schema"], v, &format!("origin header {name}"), &mut errs);
            assert!(errs.is_empty(), "{ctx}: {errs:?}");
        }
    }
    assert_eq!(header("X-Keyward-Method"), op.method, "{ctx}");
    assert_eq!(header("X-Request-Id"), request_id, "{ctx}");
    let fields: Vec<&str> = strs(&doc["x-keyward-signature"]["canonical_fields"])
        .into_iter()
        .map(|f| match f {
            "keyward-v1" => "keyward-v1",
            "method" => header("X-Keyward-Method"),
            "path" => echo["path"].as_str().unwrap(),
            "query" => echo["query"].as_str().unwrap(),
            "credential-id" => mode["credential_id"].as_str().map(header).unwrap_or(""),
            name => header(name),
        })
        .collect();
    // Each trailing field sent is one more line; one not sent, no line.
    let trailing: Vec<&str> = strs(&doc["x-keyward-signature"]["trailing_fields"])
        .into_iter()
        .filter(|n| got.contains_key(&n.to_ascii_lowercase()))
        .map(header)
        .collect();
    let canonical = fields.into_iter().chain(trailing).collect::<Vec<_>>().join("\n");
    let want = format!("v1={}", hmac_sha256_hex(SIGNING_SECRET.as_bytes(), canonical.as_bytes()));
    assert_eq!(header("X-Keyward-Signature"), want, "{ctx}: the signature over the documented fields");
}

/// Refusals every public operation can meet, before anything specific to it.
#[test]
fn refusals_of_public_operations_are_documented() {
    let (_, key, _) = setup();
    let no_baa = h().org(false);
    let (no_baa_key, _) = h().key(&no_baa, json!({"name": "nobaa", "scopes": ["*"]}));
    let narrow_org = h().org(true);
    let (summarize_only, _) = h().key(&narrow_org, json!({"name": "s", "scopes": ["ai:summarize"]}));
    let (chat_only, _) = h().key(&narrow_org, json!({"name": "c", "scopes": ["ai:chat"]}));
    let port = h().port;
    let ps = params("org_x");
    for (i, op) in ops().into_iter().filter(|o| !o.is_admin()).enumerate() {
        let path = fill(&op, &ps);
        let (n, v) = cred(&key, i);
        if op.is_public() {
            public_refusals(port, &op, &path);
            continue;
        }
        // No credential: 401.
        let r = plain(port, &op, &path, &[]);
        assert_eq!(r.status, 401, "{} {}", op.method, path);
        conforms(&op, &r, "no key");
        // Ambiguous request: 400, before anything else (preflights too).
        let bad = format!("{path}?_method=GET");
        let r = if op.is_preflight() {
            send_to(port, "OPTIONS", &bad, &[("origin", SHOP), ("access-control-request-method", "POST")], None)
        } else {
            plain(port, &op, &bad, &[(n, &v)])
        };
        assert_eq!(r.status, 400, "{} {bad}", op.method);
        conforms(&op, &r, "_method override");
        // An org without a BAA: 402.
        let (bn, bv) = cred(&no_baa_key, i);
        let r = plain(port, &op, &path, &[(bn, &bv)]);
        assert_eq!(r.status, 402, "{} {}", op.method, path);
        conforms(&op, &r, "no BAA");
        // A secret key from a browser: 403 ORIGIN_NOT_ALLOWED.
        let r = plain(port, &op, &path, &[(n, &v), ("origin", SHOP)]);
        assert_eq!(r.status, 403, "{} {}", op.method, path);
        assert_eq!(conforms(&op, &r, "secret key with Origin")["error"]["code"], "ORIGIN_NOT_ALLOWED");
        if op.is_preflight() {
            continue;
        }
        // A key without the documented scope: 403 naming that scope.
        let scope = op.scope().unwrap();
        let narrow = if scope == "ai:summarize" { &chat_only } else { &summarize_only };
        let (sn, sv) = cred(narrow, i);
        let r = plain(port, &op, &path, &[(sn, &sv)]);
        assert_eq!(r.status, 403, "{} {}", op.method, path);
        let v = conforms(&op, &r, "missing scope");
        assert_eq!(v["error"]["code"], "MISSING_SCOPE");
        assert!(
            v["error"]["message"].as_str().unwrap().ends_with(&format!(": {scope}")),
            "documented scope {scope}: {v}"
        );
        // A body of a type the route does not take, or of none: 415.
        if op.checks_body_type() {
            assert!(!op.body_types().contains(&FORM), "{}: the case below needs a route without form bodies", op.id());
            let (kn, kv) = cred(&key, i);
            for (case, headers) in [
                ("form body", vec![(kn, kv.as_str()), ("content-type", FORM)]),
                ("body without Content-Type", vec![(kn, kv.as_str())]),
            ] {
                let r = send(port, &op.method, &path, &headers, Some(b"_method=GET&a=1"));
                assert_eq!(r.status, 415, "{} {path} ({case}): {}", op.method, r.text());
                assert_eq!(conforms(&op, &r, case)["error"]["code"], "UNSUPPORTED_MEDIA_TYPE");
            }
        }
    }
}

/// The body of a public operation that the demo origin answers with 200:
/// the documented example, but for a refresh a refresh token from a real
/// sign-in (from an address of its own).
fn public_body(port: u16, op: &Op) -> Option<(&'static str, String)> {
    if op.id() != "refreshSession" {
        return op.sample_body();
    }
    let login = send_to(port, "POST", "/api/v1/auth/login", &[("cf-connecting-ip", &fresh_ip())], Some(DEMO_LOGIN));
    assert_eq!(login.status, 200, "{}", login.text());
    let refresh = login.json()["refresh_token"].as_str().unwrap().to_owned();
    Some(("application/json", json!({ "refresh_token": refresh }).to_string()))
}

/// A public operation: answered without a credential (one that is sent is not
/// looked at), `_method` 400, a browser origin outside JWT_ALLOWED_ORIGINS
/// 403 without CORS headers, one inside it with them, a body type the route
/// does not list 415. Each case from an address of its own.
fn public_refusals(port: u16, op: &Op, path: &str) {
    let ctx = format!("{} {path}", op.method);
    let sample = public_body(port, op);
    let body = sample.as_ref().map(|(m, b)| (*m, b.as_str()));
    for (case, extra) in [
        ("no credential", vec![]),
        ("an invalid key, not looked at", vec![("x-api-key", "kw_live_not-a-key")]),
        ("an invalid JWT, not looked at", vec![("authorization", "Bearer eyJhbGciOiJFZERTQSJ9.e30.c2ln")]),
    ] {
        let ip = fresh_ip();
        let mut headers = vec![("cf-connecting-ip", ip.as_str())];
        headers.extend(extra);
        let r = send_typed(port, &op.method, path, &headers, body);
        assert_eq!(r.status, 200, "{ctx} ({case}): {}", r.text());
        conforms(op, &r, case);
        assert!(h().origin_saw(r.header("x-request-id").unwrap()).is_some(), "{ctx} ({case}): not proxied");
    }
    let ip = fresh_ip();
    let r = send_typed(port, &op.method, &format!("{path}?_method=GET"), &[("cf-connecting-ip", &ip)], body);
    assert_eq!(r.status, 400, "{ctx}");
    conforms(op, &r, "_method override");
    let r = send_typed(port, &op.method, path, &[("cf-connecting-ip", &ip), ("origin", SHOP)], body);
    assert_eq!(r.status, 403, "{ctx}");
    assert_eq!(conforms(op, &r, "a browser origin not in JWT_ALLOWED_ORIGINS")["error"]["code"], "ORIGIN_NOT_ALLOWED");
    assert!(r.header("access-control-allow-origin").is_none(), "{ctx}");
    let r = send_typed(port, &op.method, path, &[("cf-connecting-ip", &ip), ("origin", APP)], body);
    assert_ne!(r.status, 403, "{ctx}: {}", r.text());
    conforms(op, &r, "a browser origin in JWT_ALLOWED_ORIGINS");
    assert_eq!(r.header("access-control-allow-origin"), Some(APP), "{ctx}");
    if op.checks_body_type() {
        for (case, headers) in [
            ("form body", vec![("cf-connecting-ip", ip.as_str()), ("content-type", FORM)]),
            ("body without Content-Type", vec![("cf-connecting-ip", ip.as_str())]),
        ] {
            let r = send(port, &op.method, path, &headers, Some(b"_method=GET&a=1"));
            assert_eq!(r.status, 415, "{ctx} ({case}): {}", r.text());
            assert_eq!(conforms(op, &r, case)["error"]["code"], "UNSUPPORTED_MEDIA_TYPE");
        }
    }
}

/// A method the path does not accept: 405, documented on every operation of
/// the path, with `Allow` listing exactly the documented methods.
#[test]
fn wrong_methods_are_documented_with_the_documented_allow() {
    let (org, key, _) = setup();
    let port = h().port;
    let admin = admin_auth();
    let paths: BTreeSet<String> = all_ops().into_iter().map(|o| o.path).collect();
    for (i, path) in paths.iter().enumerate() {
        let methods = path_methods(path);
        let wrong = METHODS.iter().find(|m| !methods.contains(**m)).unwrap();
        let path_ops: Vec<Op> = all_ops().into_iter().filter(|o| &o.path == path).collect();
        let concrete = fill(&path_ops[0], &params(&org));
        let r = if path.starts_with("/admin/") {
            send_to(port, wrong, &concrete, &[("authorization", &admin)], None)
        } else {
            let (n, v) = cred(&key, i);
            send_to(port, wrong, &concrete, &[(n, &v)], None)
        };
        assert_eq!(r.status, 405, "{wrong} {concrete}: {}", r.text());
        for op in &path_ops {
            conforms(op, &r, &format!("wrong method {wrong}"));
        }
        assert_eq!(method_set(r.header("allow").unwrap()), methods, "{path}: Allow vs the documented methods");
        // Not authenticated: 401 comes first; outside the policy no
        // credential is taken, so 405 still.
        let r = send_to(port, wrong, &concrete, &[], None);
        let want = if path_ops.iter().any(Op::is_outside_policy) { 405 } else { 401 };
        assert_eq!(r.status, want, "{wrong} {concrete} without a credential: {}", r.text());
        for op in &path_ops {
            conforms(op, &r, &format!("wrong method {wrong}, no credential"));
        }
    }
}

#[test]
fn preflight_refusals_are_documented() {
    let port = h().port;
    let ps = params("o");
    for op in ops().into_iter().filter(Op::is_preflight) {
        let path = fill(&op, &ps);
        // No Origin: 403.
        let r = send_to(port, "OPTIONS", &path, &[("access-control-request-method", "POST")], None);
        assert_eq!(r.status, 403, "{path}");
        conforms(&op, &r, "preflight without Origin");
        let r = send_to(port, "OPTIONS", &path, &[("origin", "null"), ("access-control-request-method", "POST")], None);
        assert_eq!(r.status, 403, "{path}");
        conforms(&op, &r, "preflight with Origin: null");
        // From JWT_ALLOWED_ORIGINS: a method no route of the path has is 405
        // with every method of the path.
        let all = path_methods(&op.path);
        let none = METHODS.iter().find(|m| !all.contains(**m)).expect("a method the path does not have");
        let r = send_to(port, "OPTIONS", &path, &[("origin", APP), ("access-control-request-method", none)], None);
        assert_eq!(r.status, 405, "{path}");
        conforms(&op, &r, "preflight from JWT_ALLOWED_ORIGINS for a method of no route");
        assert_eq!(method_set(r.header("allow").unwrap()), path_methods(&op.path), "{path}: preflight Allow");
        if widget_methods(&op.path).is_empty() {
            // Any other origin: no widget route, 404.
            let r =
                send_to(port, "OPTIONS", &path, &[("origin", SHOP), ("access-control-request-method", "POST")], None);
            assert_eq!(r.status, 404, "{path}");
            assert_eq!(conforms(&op, &r, "preflight, no widget route")["error"]["code"], "ROUTE_NOT_FOUND");
        } else {
            // A method no widget route of the path has: 405 with the widget methods.
            let r =
                send_to(port, "OPTIONS", &path, &[("origin", SHOP), ("access-control-request-method", "DELETE")], None);
            assert_eq!(r.status, 405, "{path}");
            conforms(&op, &r, "preflight for a non-widget method");
            assert_eq!(method_set(r.header("allow").unwrap()), widget_methods(&op.path), "{path}: preflight Allow");
        }
    }
}

/// Widget keys: CORS headers on every answer after the origin matched, as
/// documented; another origin gets 403 without them.
#[test]
fn widget_requests_are_documented() {
    let org = h().org(true);
    let (widget, _) =
        h().key(&org, json!({"name": "w", "kind": "widget", "scopes": ["ai:chat"], "allowed_origins": [SHOP]}));
    let port = h().port;
    let ps = params(&org);
    for (i, op) in ops().into_iter().filter(|o| !o.is_admin() && !o.is_preflight() && !o.is_public()).enumerate() {
        let path = fill(&op, &ps);
        let (n, v) = cred(&widget, i);
        let r = plain(port, &op, &path, &[(n, &v), ("origin", SHOP)]);
        let body = conforms(&op, &r, "widget key from its origin");
        let widget_route = widget_methods(&op.path).contains(&op.method);
        if widget_route {
            assert_eq!(r.status, 200, "{} {path}: {}", op.method, r.text());
        } else {
            assert_eq!(
                (r.status, body["error"]["code"].as_str()),
                (403, Some("MISSING_SCOPE")),
                "{} {path}",
                op.method
            );
        }
        assert_eq!(r.header("access-control-allow-origin"), Some(SHOP), "{} {path}", op.method);
        let r = plain(port, &op, &path, &[(n, &v), ("origin", "https://evil.example")]);
        assert_eq!(r.status, 403, "{} {path}", op.method);
        assert!(r.header("access-control-allow-origin").is_none());
        conforms(&op, &r, "widget key from another origin");
    }
}

#[test]
fn control_api_refusals_are_documented() {
    let (org, key, _) = setup();
    let port = h().port;
    let find = |id: &str| ops().into_iter().find(|o| o.id() == id).unwrap_or_else(|| panic!("no operation {id}"));
    let (n, v) = cred(&key, 0);
    let auth = [(n, v.as_str())];
    let check = |id: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>, status: u16, code: &str| {
        let op = find(id);
        let r = send_to(port, &op.method, path, headers, body);
        assert_eq!(r.status, status, "{id} {path}: {}", r.text());
        assert_eq!(conforms(&op, &r, code)["error"]["code"], code, "{id}");
    };
    // Mint: invalid body, body too large, scope escalation, another user.
    check("createApiKey", "/v1/api_keys", &auth, Some("{}"), 422, "VALIDATION_FAILED");
    check(
        "createApiKey",
        "/v1/api_keys",
        &auth,
        Some(r#"{"name":"x","scopes":["ai:chat"],"user_id":"nobody"}"#),
        403,
        "PERMISSION_DENIED",
    );
    let big = json!({"name": "x".repeat(70 * 1024), "scopes": ["ai:chat"]}).to_string();
    check("createApiKey", "/v1/api_keys", &auth, Some(&big), 413, "PAYLOAD_TOO_LARGE");
    let (small, _) = h().key(&org, json!({"name": "small", "scopes": ["ai:chat", "control:read"]}));
    let small_auth = format!("Bearer {small}");
    let small_auth = [("authorization", small_auth.as_str())];
    check("createApiKey", "/v1/api_keys", &small_auth, Some(r#"{"name":"x","scopes":["*"]}"#), 403, "MISSING_SCOPE");
    for (user, role) in [("u_op", "operator"), ("u_other", "viewer")] {
        assert_eq!(
            h().admin("PUT", &format!("/admin/orgs/{org}/users/{user}"), Some(json!({"role": role}))).status,
            200
        );
    }
    let (bound, _) = h().key(&org, json!({"name": "bound", "scopes": ["*"], "user_id": "u_op"}));
    let bound_auth = format!("Bearer {bound}");
    let bound_auth = [("authorization", bound_auth.as_str())];
    check(
        "createApiKey",
        "/v1/api_keys",
        &bound_auth,
        Some(r#"{"name":"x","scopes":["ai:chat"],"user_id":"u_other"}"#),
        403,
        "PERMISSION_DENIED",
    );
    // Revoke: malformed and unknown ids, a key the caller could not have minted.
    check("revokeApiKey", "/v1/api_keys/not-a-ulid", &auth, None, 404, "RESOURCE_NOT_FOUND");
    check("revokeApiKey", &format!("/v1/api_keys/{UNKNOWN_ULID}"), &auth, None, 404, "RESOURCE_NOT_FOUND");
    let (_, big_id) = h().key(&org, json!({"name": "big", "scopes": ["*"]}));
    check("revokeApiKey", &format!("/v1/api_keys/{big_id}"), &small_auth, None, 403, "PERMISSION_DENIED");
    // Query parameters.
    for (id, path) in [
        ("listApiKeys", "/v1/api_keys?limit=0"),
        ("listApiKeys", "/v1/api_keys?cursor=nope"),
        ("listAudit", "/v1/audit?limit=101"),
        ("listAudit", "/v1/audit?cursor=0"),
        ("getUsage", "/v1/usage?from=yesterday"),
        ("getUsage", "/v1/usage?from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z"),
    ] {
        check(id, path, &auth, None, 422, "VALIDATION_FAILED");
    }
    // The refused writes are in the org's audit log, as documented; the
    // admin API's writes name the operator.
    let op = find("listAudit");
    let r = send_to(port, "GET", "/v1/audit?limit=100", &auth, None);
    assert_eq!(r.status, 200, "{}", r.text());
    let entries = conforms(&op, &r, "audit log after refusals")["data"].as_array().unwrap().clone();
    for (action, target) in [("key.create_refused", ""), ("key.revoke_refused", "not-a-ulid")] {
        let e = entries
            .iter()
            .find(|e| e["action"] == action && e["target"] == target)
            .unwrap_or_else(|| panic!("no {action} entry for {target:?}: {entries:?}"));
        assert!(e["actor"].as_str().unwrap().starts_with("key:"), "{e}");
        let detail = e["detail"].as_object().unwrap();
        assert_eq!(detail.keys().collect::<Vec<_>>(), ["code", "message", "status"], "{e}");
        assert_eq!(catalogue(detail["code"].as_str().unwrap()).status(), detail["status"], "{e}");
    }
    let created = entries.iter().find(|e| e["action"] == "key.created").expect("key.created");
    assert_eq!(created["actor"], "admin:default", "ADMIN_TOKEN's operator: {created}");
}

#[test]
fn admin_api_refusals_are_documented() {
    let org = h().org(true);
    let port = h().port;
    let admin = admin_auth();
    let auth = [("authorization", admin.as_str())];
    let ps = params(&org);
    for op in ops().into_iter().filter(Op::is_admin) {
        let path = fill(&op, &ps);
        let sample = op.sample_body();
        let body = sample.as_ref().map(|(m, b)| (*m, b.as_str()));
        for headers in [&[][..], &[("authorization", "Bearer not-the-admin-token-0123456789-abcdefgh")][..]] {
            let r = send_typed(port, &op.method, &path, headers, body);
            assert_eq!(r.status, 401, "{} {path}", op.method);
            conforms(&op, &r, "no admin token");
        }
        // An encoded slash in the last path parameter (or, without one, the
        // last segment): 400.
        let bad_path = match op.path.rsplit('/').find_map(|s| s.strip_prefix('{')?.strip_suffix('}')) {
            Some(last) => {
                let bad: Vec<(&'static str, String)> =
                    ps.iter().map(|(k, v)| (*k, if *k == last { "a%2Fb".to_owned() } else { v.clone() })).collect();
                fill(&op, &bad)
            }
            None => format!("{path}%2Fb"),
        };
        let r = send_typed(port, &op.method, &bad_path, &auth, body);
        assert_eq!(r.status, 400, "{} {bad_path}", op.method);
        conforms(&op, &r, "encoded slash");
        // A malformed org id: 404.
        if op.path.contains("{org_id}") {
            let bad = params("not.an.id");
            let r = send_typed(port, &op.method, &fill(&op, &bad), &auth, body);
            assert_eq!(r.status, 404, "{} {}", op.method, fill(&op, &bad));
            conforms(&op, &r, "malformed org id");
        }
        if op.v.get("requestBody").is_some() {
            let invalid: Vec<(&str, String, u16)> = if op.body_types() == ["text/plain"] {
                // The public suffix list: no rules, a malformed rule, too large.
                let section = "// ===BEGIN ICANN DOMAINS===\n";
                vec![
                    ("text/plain", String::new(), 422),
                    ("text/plain", "// nothing but comments\n\n".to_owned(), 422),
                    ("text/plain", "com\nco.uk\n".to_owned(), 422),
                    ("text/plain", format!("{section}com\nBad_Rule\n"), 422),
                    ("text/plain", format!("{section}com\n{}", "// padding\n".repeat(100 * 1024)), 413),
                ]
            } else {
                // `{}` where the body must hold a field (a roll's is optional).
                let schema = resolve(&op.v["requestBody"]["content"]["application/json"]["schema"]);
                let empty = !strs(&schema["required"]).is_empty() || schema["minProperties"].as_u64() > Some(0);
                let mut cases = vec![
                    ("application/json", r#"{"unknown": 1}"#.to_owned(), 422),
                    ("application/json", "not json".to_owned(), 422),
                    ("application/json", json!({"name": "x".repeat(70 * 1024)}).to_string(), 413),
                ];
                if empty {
                    cases.push(("application/json", "{}".to_owned(), 422));
                } else if op.path.contains("{key_id}") {
                    // Taken: the key (an unknown one here) is what is missing.
                    cases.push(("application/json", "{}".to_owned(), 404));
                }
                cases
            };
            for (media, b, status) in invalid {
                let r = send_typed(port, &op.method, &path, &auth, Some((media, &b)));
                assert_eq!(r.status, status, "{} {path}: {}", op.method, r.text());
                let v = conforms(&op, &r, if status == 404 { "no such key" } else { "invalid body" });
                if status == 422 {
                    assert!(v["error"]["message"].as_str().unwrap().contains(':'), "names the field: {v}");
                }
            }
        }
    }
    // The org (users and keys) and the key (revocation, its guard) must exist.
    let missing = unique("org");
    for op in
        ops().into_iter().filter(|o| o.is_admin() && o.path.contains("{org_id}") && o.path != "/admin/orgs/{org_id}")
    {
        let mut ps = params(&missing);
        let sample = op.sample_body();
        let r = send_typed(port, &op.method, &fill(&op, &ps), &auth, sample.as_ref().map(|(m, b)| (*m, b.as_str())));
        assert_eq!(r.status, 404, "{} {}: {}", op.method, op.path, r.text());
        conforms(&op, &r, "no such org");
        if op.path.contains("{key_id}") {
            ps = params(&org);
            let r =
                send_typed(port, &op.method, &fill(&op, &ps), &auth, sample.as_ref().map(|(m, b)| (*m, b.as_str())));
            assert_eq!(r.status, 404, "{} {}", op.method, op.path);
            conforms(&op, &r, "no such key");
        }
    }
}

/// 429 on every public operation that counts requests, and 503 when a
/// record cannot be read.
#[test]
fn rate_limits_and_unreadable_records_are_documented() {
    let org = h().org(true);
    let limited =
        json!({"name": "one", "scopes": ["*"], "rate_limits": [{"name": "minute", "limit": 1, "window_seconds": 60}]});
    let (one, _) = h().key(&org, limited);
    let (broken, _) = h().key(&org, json!({"name": "broken", "scopes": ["*"]}));
    h().kv_put(&format!("key:{}", sha256_hex(broken.as_bytes())), "{not json");
    let port = h().port;
    let ps = params(&org);
    let first = send_to(port, "POST", "/v1/ai/chat", &[("x-api-key", &one)], Some("{}"));
    assert_eq!(first.status, 200, "{}", first.text());
    for (i, op) in ops().into_iter().filter(|o| !o.is_admin()).enumerate() {
        let path = fill(&op, &ps);
        if op.is_public() {
            // Exactly the documented limit per address: that many pass, the
            // next is 429; another address is not affected.
            let ip = fresh_ip();
            let limit = op.ip_limit();
            for n in 0..limit {
                let r = plain(port, &op, &path, &[("cf-connecting-ip", &ip)]);
                assert_ne!(r.status, 429, "{} {path}: request {n} of {limit}", op.method);
                assert_eq!(r.header("ratelimit-limit"), Some(limit.to_string().as_str()), "{} {path}", op.method);
                assert_eq!(r.header("ratelimit-remaining"), Some((limit - n - 1).to_string().as_str()));
            }
            let r = plain(port, &op, &path, &[("cf-connecting-ip", &ip)]);
            assert_eq!(r.status, 429, "{} {path}: {}", op.method, r.text());
            conforms(&op, &r, "address limit exhausted");
            assert!(h().origin_saw(r.header("x-request-id").unwrap()).is_none(), "a 429 is not proxied");
            let r = plain(port, &op, &path, &[("cf-connecting-ip", &fresh_ip())]);
            assert_ne!(r.status, 429, "{} {path}: another address", op.method);
            continue;
        }
        if !op.is_preflight() {
            let (n, v) = cred(&one, i);
            let r = plain(port, &op, &path, &[(n, &v)]);
            assert_eq!(r.status, 429, "{} {path}: {}", op.method, r.text());
            conforms(&op, &r, "rate limited");
        }
        let (n, v) = cred(&broken, i);
        let r = plain(port, &op, &path, &[(n, &v)]);
        assert_eq!(r.status, 503, "{} {path}: {}", op.method, r.text());
        conforms(&op, &r, "key record unreadable");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
}

/// 504 on every proxied operation: the origin answers after
/// `ORIGIN_TIMEOUT_MS` (1.5 s here). Sent concurrently.
#[test]
fn origin_timeouts_are_documented() {
    let (org, key, _) = setup();
    let port = h().port;
    let ps = params(&org);
    // The demo origin's identity-provider routes (the public ones) do not
    // honour `x-test-delay-ms`: their 504 is documented, not provoked here.
    let proxied: Vec<Op> = ops().into_iter().filter(|o| o.is_proxied() && !o.is_public()).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = proxied
            .iter()
            .map(|op| {
                let path = fill(op, &ps);
                let key = &key;
                s.spawn(move || {
                    let r = plain(port, op, &path, &[("x-api-key", key), ("x-test-delay-ms", "4000")]);
                    assert_eq!(r.status, 504, "{} {path}: {}", op.method, r.text());
                    conforms(op, &r, "origin too slow");
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}

/// A second worker, as bare as a deployment can be: its origin is down, and it
/// has no public suffix list loaded and no `TURNSTILE_SECRET_KEY`.
fn bare() -> &'static Harness {
    static B: OnceLock<Harness> = OnceLock::new();
    B.get_or_init(|| {
        let closed = format!("http://127.0.0.1:{}", free_port());
        Harness::start_without_suffix_list(Options { origin_url: Some(closed), vars: vec![] })
    })
}

/// 502 on every proxied operation, from a second worker whose origin is down.
#[test]
fn origin_down_is_documented() {
    let down = bare();
    let org = down.org(true);
    let (key, _) = down.key(&org, json!({"name": "k", "scopes": ["*"]}));
    let ps = params(&org);
    for (i, op) in ops().into_iter().filter(Op::is_proxied).enumerate() {
        let path = fill(&op, &ps);
        let (n, v) = cred(&key, i);
        let r = plain(down.port, &op, &path, &[(n, &v)]);
        assert_eq!(r.status, 502, "{} {path}: {}", op.method, r.text());
        conforms(&op, &r, "origin down");
    }
}

/// What a deployment without a public suffix list or Turnstile answers:
/// `GET /admin/public_suffix_list` 404, a wildcard origin 503 (admin and
/// control API), `turnstile_required` 422.
#[test]
fn unconfigured_deployment_refusals_are_documented() {
    let b = bare();
    let find = |id: &str| ops().into_iter().find(|o| o.id() == id).unwrap_or_else(|| panic!("no operation {id}"));
    let admin = admin_auth();
    let auth = [("authorization", admin.as_str())];
    let op = find("adminGetPublicSuffixList");
    let r = send_to(b.port, "GET", "/admin/public_suffix_list", &auth, None);
    assert_eq!(
        (r.status, conforms(&op, &r, "no list loaded")["error"]["code"].as_str()),
        (404, Some("RESOURCE_NOT_FOUND"))
    );
    let org = b.org(true);
    let (key, _) = b.key(&org, json!({"name": "k", "scopes": ["*"]}));
    let wildcard =
        json!({"name": "w", "kind": "widget", "scopes": ["ai:chat"], "allowed_origins": ["https://*.example.com"]});
    let turnstile = json!({"name": "t", "kind": "widget", "scopes": ["ai:chat"], "allowed_origins": [SHOP], "turnstile_required": true});
    let admin_path = format!("/admin/orgs/{org}/api_keys");
    let key_auth = format!("Bearer {key}");
    for (id, path, headers) in [
        ("adminCreateApiKey", admin_path.as_str(), &auth[..]),
        ("createApiKey", "/v1/api_keys", &[("authorization", key_auth.as_str())][..]),
    ] {
        let op = find(id);
        let r = send_to(b.port, "POST", path, headers, Some(&wildcard.to_string()));
        assert_eq!(r.status, 503, "{id}: {}", r.text());
        assert_eq!(conforms(&op, &r, "wildcard origin, no list")["error"]["code"], "SERVICE_UNAVAILABLE");
        let r = send_to(b.port, "POST", path, headers, Some(&turnstile.to_string()));
        assert_eq!(r.status, 422, "{id}: {}", r.text());
        let v = conforms(&op, &r, "turnstile_required without TURNSTILE_SECRET_KEY");
        assert!(v["error"]["message"].as_str().unwrap().starts_with("turnstile_required: "), "{v}");
    }
}

/// Widget keys' own fields (`visitor_rate_limits`, `turnstile_required`,
/// wildcard origins) are answered and refused as documented, by the admin
/// and the control API.
#[test]
fn widget_key_fields_are_documented() {
    let (org, key, _) = setup();
    let port = h().port;
    let find = |id: &str| ops().into_iter().find(|o| o.id() == id).unwrap_or_else(|| panic!("no operation {id}"));
    let admin = admin_auth();
    let admin_path = format!("/admin/orgs/{org}/api_keys");
    let key_auth = format!("Bearer {key}");
    let widget = |extra: Value| {
        let mut body = json!({"name": "w", "kind": "widget", "scopes": ["ai:chat"], "allowed_origins": [SHOP],
                              "rate_limits": [{"name": "minute", "limit": 60, "window_seconds": 60}]});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body.to_string()
    };
    for (id, path, auth) in
        [("adminCreateApiKey", admin_path.as_str(), &admin), ("createApiKey", "/v1/api_keys", &key_auth)]
    {
        let op = find(id);
        let headers = [("authorization", auth.as_str())];
        let ok = |body: String, case: &str| {
            let r = send_to(port, "POST", path, &headers, Some(&body));
            assert_eq!(r.status, 201, "{id} ({case}): {}", r.text());
            conforms(&op, &r, case)["data"].clone()
        };
        let refused = |body: String, field: &str, case: &str| {
            let r = send_to(port, "POST", path, &headers, Some(&body));
            assert_eq!(r.status, 422, "{id} ({case}): {}", r.text());
            let v = conforms(&op, &r, case);
            let m = v["error"]["message"].as_str().unwrap();
            assert!(m.starts_with(&format!("{field}: ")) || m.starts_with(&format!("{field}[")), "{id} ({case}): {m}");
        };
        let own = json!([{"name": "ip", "limit": 5, "window_seconds": 60}]);
        let k = ok(
            widget(json!({"visitor_rate_limits": own, "turnstile_required": true})),
            "own visitor limits, Turnstile",
        );
        assert_eq!((&k["visitor_rate_limits"], &k["turnstile_required"]), (&own, &json!(true)), "{id}: {k}");
        let k = ok(widget(json!({"allowed_origins": ["https://*.shop.example.com"]})), "a wildcard origin");
        assert_eq!((&k["visitor_rate_limits"], &k["turnstile_required"]), (&json!([]), &json!(false)), "{id}: {k}");
        assert_eq!(k["allowed_origins"], json!(["https://*.shop.example.com"]), "{id}");
        // One visitor with more than a quarter of a key limit; a name shared
        // with the key's limits; the policy's per-visitor limits (10 a
        // minute) over a key of 20 a minute.
        let quarter = json!([{"name": "ip", "limit": 16, "window_seconds": 60}]);
        refused(widget(json!({"visitor_rate_limits": quarter})), "visitor_rate_limits", "a quarter of the key");
        let shared = json!([{"name": "minute", "limit": 1, "window_seconds": 60}]);
        refused(widget(json!({"visitor_rate_limits": shared})), "visitor_rate_limits", "a shared name");
        let small = json!([{"name": "minute", "limit": 20, "window_seconds": 60}]);
        refused(widget(json!({"rate_limits": small})), "rate_limits", "the policy's visitor limits over a small key");
        // Widget-only fields on a secret key.
        for (field, value) in [("visitor_rate_limits", own.clone()), ("turnstile_required", json!(true))] {
            let body = json!({"name": "s", "scopes": ["ai:chat"], field: value}).to_string();
            refused(body, field, "a widget-only field on a secret key");
        }
        // Wildcards over a public suffix, a single label or an address.
        for origin in ["https://*.github.io", "https://*.co.uk", "https://*.com", "http://*.0.0.1"] {
            refused(widget(json!({"allowed_origins": [origin]})), "allowed_origins", origin);
        }
    }
}

/// A widget key with `turnstile_required`: refused without a token on every
/// public operation (plain `OPTIONS` included), with the CORS headers; a
/// verified Turnstile token answers with a visitor token, which then carries
/// the visitor.
#[test]
fn turnstile_refusals_and_visitor_tokens_are_documented() {
    let org = h().org(true);
    let body = json!({"name": "t", "kind": "widget", "scopes": ["ai:chat"], "allowed_origins": [SHOP], "turnstile_required": true});
    let (widget, _) = h().key(&org, body);
    let port = h().port;
    let ps = params(&org);
    for (i, op) in ops().into_iter().filter(|o| !o.is_admin() && !o.is_public()).enumerate() {
        let path = fill(&op, &ps);
        let (n, v) = cred(&widget, i);
        let page = [(n, v.as_str()), ("origin", SHOP)];
        let r = plain(port, &op, &path, &page);
        assert_eq!(r.status, 403, "{} {path}: {}", op.method, r.text());
        assert_eq!(conforms(&op, &r, "no Turnstile token")["error"]["code"], "TURNSTILE_REQUIRED");
        assert_eq!(r.header("access-control-allow-origin"), Some(SHOP), "{} {path}", op.method);
        if op.is_preflight() || !widget_methods(&op.path).contains(&op.method) {
            continue;
        }
        let malformed = [(n, v.as_str()), ("origin", SHOP), ("cf-turnstile-response", "not a token!")];
        let r = plain(port, &op, &path, &malformed);
        assert_eq!(conforms(&op, &r, "malformed Turnstile token")["error"]["code"], "TURNSTILE_REQUIRED");
        let solved = [(n, v.as_str()), ("origin", SHOP), ("cf-turnstile-response", "pass:shop.example.com")];
        let r = plain(port, &op, &path, &solved);
        assert_eq!(r.status, 200, "{} {path}: {}", op.method, r.text());
        conforms(&op, &r, "a verified Turnstile token");
        let token = r.header("x-keyward-visitor-token").expect("a visitor token").to_owned();
        // `v1.<expiry>.<64 hex>`, as documented.
        let parts: Vec<&str> = token.split('.').collect();
        assert!(
            parts.len() == 3
                && parts[0] == "v1"
                && parts[1].parse::<u64>().is_ok()
                && parts[2].len() == 64
                && parts[2].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "visitor token {token}"
        );
        let carried = [(n, v.as_str()), ("origin", SHOP), ("x-keyward-visitor", token.as_str())];
        let r = plain(port, &op, &path, &carried);
        assert_eq!(r.status, 200, "{} {path}: {}", op.method, r.text());
        conforms(&op, &r, "a visitor token");
        assert!(r.header("x-keyward-visitor-token").is_none(), "no new token while one is valid");
    }
}

/// JWT sessions (`JwtBearer`): a valid token is accepted on every operation
/// that takes a key, as documented, from a server and from a browser on an
/// origin in JWT_ALLOWED_ORIGINS (with the CORS headers); the origin receives
/// the documented `jwt` identity and signature (with and without a `jti`); a
/// token that does not verify, or a browser elsewhere, gets the documented
/// refusal.
#[test]
fn jwt_sessions_are_documented() {
    let org = h().org(true);
    let port = h().port;
    // One user per pass (a session's limits are its user's), all admins;
    // u_spec is the user whose sessions are revoked.
    for user in ["u_server", "u_browser", "u_spec"] {
        let r = h().admin("PUT", &format!("/admin/orgs/{org}/users/{user}"), Some(json!({"role": "admin"})));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let calls: Vec<Op> = ops().into_iter().filter(|o| !o.is_admin() && !o.is_preflight() && !o.is_public()).collect();
    for (user, origin) in [("u_server", None), ("u_browser", Some(APP))] {
        let jti = unique("jti");
        let token = jwt(&org, user, Some(&jti));
        let auth = format!("Bearer {token}");
        for op in &calls {
            let mut ps = params(&org);
            if op.writes_key() {
                // A session manages keys of its own user only.
                let (_, victim) = h().key(&org, json!({"name": "victim", "scopes": ["ai:chat"], "user_id": user}));
                ps.retain(|(k, _)| *k != "key_id");
                ps.push(("key_id", victim));
            }
            let mut headers = vec![("authorization", auth.as_str())];
            headers.extend(origin.map(|o| ("origin", o)));
            let r = plain(port, op, &fill(op, &ps), &headers);
            let case = if origin.is_some() { "JWT session from JWT_ALLOWED_ORIGINS" } else { "JWT session" };
            assert_eq!(r.status, op.success_status().unwrap(), "{} {} ({case}): {}", op.method, op.path, r.text());
            let body = conforms(op, &r, case);
            assert_eq!(r.header("access-control-allow-origin"), origin, "{} {}", op.method, op.path);
            if op.is_proxied() {
                let echo = &body["echo"];
                origin_request_is_documented(op, echo, r.header("x-request-id").unwrap(), "jwt");
                let hd = &echo["headers"];
                assert_eq!(
                    (hd["x-keyward-token-id"].as_str(), hd["x-keyward-user"].as_str(), hd["x-keyward-org"].as_str()),
                    (Some(jti.as_str()), Some(user), Some(org.as_str())),
                    "{} {}",
                    op.method,
                    op.path
                );
            }
        }
    }
    // No `jti`: no X-Keyward-Token-Id, an empty line in the signature.
    let chat = ops().into_iter().find(|o| o.id() == "postAiChat").unwrap();
    let auth = format!("Bearer {}", jwt(&org, "u_server", None));
    let r = plain(port, &chat, "/v1/ai/chat", &[("authorization", &auth)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = &conforms(&chat, &r, "JWT session without jti")["echo"];
    assert!(echo["headers"].get("x-keyward-token-id").is_none(), "{echo}");
    origin_request_is_documented(&chat, echo, r.header("x-request-id").unwrap(), "jwt");
    // Refusals: a token that does not verify (401 INVALID_TOKEN, on every
    // operation that takes a key and on a plain OPTIONS), a browser origin
    // outside JWT_ALLOWED_ORIGINS (403).
    let mut forged = jwt(&org, "u_server", Some("x"));
    forged.push('A');
    let unknown_user = jwt(&org, "u_nobody", Some("y"));
    let good = format!("Bearer {}", jwt(&org, "u_browser", Some("z")));
    for op in ops().into_iter().filter(|o| !o.is_admin() && !o.is_public()) {
        let path = fill(&op, &params(&org));
        for (case, token) in [("a forged JWT", &forged), ("a JWT of an unknown user", &unknown_user)] {
            let r = plain(port, &op, &path, &[("authorization", &format!("Bearer {token}"))]);
            assert_eq!(r.status, 401, "{} {path} ({case}): {}", op.method, r.text());
            assert_eq!(conforms(&op, &r, case)["error"]["code"], "INVALID_TOKEN", "{} {path}", op.method);
            assert!(h().origin_saw(r.header("x-request-id").unwrap()).is_none(), "{case} reached the origin");
        }
        let r = plain(port, &op, &path, &[("authorization", &good), ("origin", SHOP)]);
        assert_eq!(r.status, 403, "{} {path}: {}", op.method, r.text());
        assert_eq!(conforms(&op, &r, "JWT from another origin")["error"]["code"], "ORIGIN_NOT_ALLOWED");
        assert!(r.header("access-control-allow-origin").is_none());
    }
    // A JWT signed in at the demo identity provider (a public route) works too.
    let (demo_org, demo_user) = ("org_demo", "user_demo");
    let r = h().admin("PUT", &format!("/admin/orgs/{demo_org}"), Some(json!({"name": "Demo", "baa_active": true})));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = h().admin("PUT", &format!("/admin/orgs/{demo_org}/users/{demo_user}"), Some(json!({"role": "admin"})));
    assert_eq!(r.status, 200, "{}", r.text());
    let login = send_to(port, "POST", "/api/v1/auth/login", &[("cf-connecting-ip", &fresh_ip())], Some(DEMO_LOGIN));
    assert_eq!(login.status, 200, "{}", login.text());
    let access = format!("Bearer {}", login.json()["access_token"].as_str().unwrap());
    let r = plain(port, &chat, "/v1/ai/chat", &[("authorization", &access)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = &conforms(&chat, &r, "JWT from the demo login")["echo"];
    origin_request_is_documented(&chat, echo, r.header("x-request-id").unwrap(), "jwt");
    assert_eq!(echo["headers"]["x-keyward-user"], demo_user);
}

/// Session revocation, by the control API and the admin API: the documented
/// answer, and a revoked token then gets the documented 401 INVALID_TOKEN;
/// the control API's refusals (unknown or malformed user, another user's
/// sessions without a key-creating role).
#[test]
fn session_revocation_is_documented() {
    let org = h().org(true);
    let port = h().port;
    let find = |id: &str| ops().into_iter().find(|o| o.id() == id).unwrap_or_else(|| panic!("no operation {id}"));
    for (user, role) in [("u_admin", "admin"), ("u_viewer", "viewer"), ("u_op", "operator"), ("u_victim", "viewer")] {
        let r = h().admin("PUT", &format!("/admin/orgs/{org}/users/{user}"), Some(json!({"role": role})));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let chat = find("postAiChat");
    let chat_with = |token: &str| plain(port, &chat, "/v1/ai/chat", &[("authorization", &format!("Bearer {token}"))]);
    let revoked = |r: &Resp, user: &str, op: &Op, case: &str| {
        assert_eq!(r.status, 200, "{case}: {}", r.text());
        let data = conforms(op, r, case)["data"].clone();
        assert_eq!(data["user_id"], user, "{case}");
        data
    };
    // The control API, by a JWT session of an admin: another user's sessions.
    let ctl = find("revokeUserSessions");
    let victim = jwt(&org, "u_victim", Some("v1"));
    assert_eq!(chat_with(&victim).status, 200);
    let admin_token = jwt(&org, "u_admin", Some("a1"));
    let admin_auth_jwt = format!("Bearer {admin_token}");
    let r = send_to(port, "DELETE", "/v1/users/u_victim/sessions", &[("authorization", &admin_auth_jwt)], None);
    revoked(&r, "u_victim", &ctl, "an admin's session revokes another user's");
    let r = chat_with(&victim);
    assert_eq!(conforms(&chat, &r, "a revoked session")["error"]["code"], "INVALID_TOKEN");
    // A viewer's session lacks control:read; an operator's revokes its own,
    // and not an admin's (PERMISSION_DENIED: the admin role has scopes the
    // operator does not), nor does an org-level key with control:read only.
    let viewer_auth = format!("Bearer {}", jwt(&org, "u_viewer", Some("w1")));
    let operator = jwt(&org, "u_op", Some("o1"));
    let operator_auth = format!("Bearer {operator}");
    let (_, key) = {
        let (k, id) = h().key(&org, json!({"name": "ctl", "scopes": ["*"]}));
        (id, k)
    };
    let key_auth = format!("Bearer {key}");
    let (reader, _) = h().key(&org, json!({"name": "reader", "scopes": ["control:read"]}));
    let reader_auth = format!("Bearer {reader}");
    for (case, path, auth, status, code) in [
        ("a viewer's session", "/v1/users/u_viewer/sessions", viewer_auth.as_str(), 403, "MISSING_SCOPE"),
        ("an operator on an admin", "/v1/users/u_admin/sessions", operator_auth.as_str(), 403, "PERMISSION_DENIED"),
        (
            "a control:read key on an admin",
            "/v1/users/u_admin/sessions",
            reader_auth.as_str(),
            403,
            "PERMISSION_DENIED",
        ),
        ("an unknown user", "/v1/users/u_nobody/sessions", key_auth.as_str(), 404, "RESOURCE_NOT_FOUND"),
        ("a malformed user id", "/v1/users/not.an.id/sessions", key_auth.as_str(), 404, "RESOURCE_NOT_FOUND"),
    ] {
        let r = send_to(port, "DELETE", path, &[("authorization", auth)], None);
        assert_eq!(r.status, status, "{case}: {}", r.text());
        assert_eq!(conforms(&ctl, &r, case)["error"]["code"], code, "{case}");
    }
    let r = send_to(port, "DELETE", "/v1/users/u_op/sessions", &[("authorization", &operator_auth)], None);
    revoked(&r, "u_op", &ctl, "an operator's session revokes its own");
    let r = chat_with(&operator);
    assert_eq!(conforms(&chat, &r, "its own revoked session")["error"]["code"], "INVALID_TOKEN");
    // The admin API.
    let adm = find("adminRevokeUserSessions");
    let admin = admin_auth();
    let r = send_to(
        port,
        "DELETE",
        &format!("/admin/orgs/{org}/users/u_admin/sessions"),
        &[("authorization", &admin)],
        None,
    );
    revoked(&r, "u_admin", &adm, "admin API");
    let r = chat_with(&admin_token);
    assert_eq!(conforms(&chat, &r, "revoked by the admin API")["error"]["code"], "INVALID_TOKEN");
    for (case, path) in [
        ("an unknown user", format!("/admin/orgs/{org}/users/u_nobody/sessions")),
        ("a malformed user id", format!("/admin/orgs/{org}/users/not.an.id/sessions")),
    ] {
        let r = send_to(port, "DELETE", &path, &[("authorization", &admin)], None);
        assert_eq!(r.status, 404, "{case}: {}", r.text());
        assert_eq!(conforms(&adm, &r, case)["error"]["code"], "RESOURCE_NOT_FOUND", "{case}");
    }
    // The audit log, as documented: who revoked (a session acts as
    // `user:<id>`), and the refused revoke.
    let op = find("listAudit");
    let r = send_to(port, "GET", "/v1/audit?limit=100", &[("authorization", &key_auth)], None);
    assert_eq!(r.status, 200, "{}", r.text());
    let entries = conforms(&op, &r, "audit log after session revocations")["data"].as_array().unwrap().clone();
    let entry = |action: &str, target: &str| {
        entries
            .iter()
            .find(|e| e["action"] == action && e["target"] == target)
            .unwrap_or_else(|| panic!("no {action} entry for {target}: {entries:?}"))
            .clone()
    };
    assert_eq!(entry("user.sessions_revoked", "u_victim")["actor"], "user:u_admin");
    assert_eq!(entry("user.sessions_revoked", "u_admin")["actor"], "admin:default");
    let refused: Vec<&Value> =
        entries.iter().filter(|e| e["action"] == "user.sessions_revoke_refused" && e["target"] == "u_nobody").collect();
    let actors: BTreeSet<&str> = refused.iter().filter_map(|e| e["actor"].as_str()).collect();
    assert!(actors.contains("admin:default") && actors.iter().any(|a| a.starts_with("key:")), "{refused:?}");
}

// ---------------------------------------------------------------- key lifecycle

/// A secret key with `allowed_ips`: from an address outside them, every
/// operation that takes a key (a plain `OPTIONS` included) answers the
/// documented `403 IP_NOT_ALLOWED` before the BAA and the key's guard, and
/// nothing reaches the origin; from inside them (IPv4, IPv6, IPv4-mapped),
/// the documented success, and the origin gets the client's address.
#[test]
fn ip_allow_lists_are_documented() {
    let (org, _, _) = setup();
    let port = h().port;
    let ips = json!(["203.0.113.0/24", "2001:db8::/48"]);
    let (key, key_id) = h().key(&org, json!({"name": "fenced", "scopes": ["*"], "allowed_ips": ips}));
    let no_baa = h().org(false);
    let (no_baa_key, _) = h().key(&no_baa, json!({"name": "fenced", "scopes": ["*"], "allowed_ips": ips}));
    let message = "Requests from this IP address are not allowed with this key.";
    let keyed: Vec<Op> = ops().into_iter().filter(|o| !o.is_admin() && !o.is_public()).collect();
    for (i, op) in keyed.iter().enumerate() {
        let path = fill(op, &params(&org));
        for outside in ["198.51.100.7", "2001:db8:1::5", "::ffff:198.51.100.7", "203.0.114.1"] {
            for (k, case) in [(&key, "outside allowed_ips"), (&no_baa_key, "outside allowed_ips, no BAA")] {
                let (n, v) = cred(k, i);
                let r = plain(port, op, &path, &[(n, &v), ("cf-connecting-ip", outside)]);
                assert_eq!(r.status, 403, "{} {path} ({case}, {outside}): {}", op.method, r.text());
                let body = conforms(op, &r, case);
                assert_eq!(
                    (body["error"]["code"].as_str(), body["error"]["message"].as_str()),
                    (Some("IP_NOT_ALLOWED"), Some(message)),
                    "{} {path} ({case}, {outside})",
                    op.method
                );
                assert!(r.header("access-control-allow-origin").is_none(), "{} {path}", op.method);
                assert!(r.header("ratelimit-limit").is_none(), "{} {path}: decided before the guard", op.method);
                assert!(h().origin_saw(r.header("x-request-id").unwrap()).is_none(), "{} {path}", op.method);
            }
        }
        // Only CF-Connecting-IP counts: a client's own address claims do not.
        let (n, v) = cred(&key, i);
        let spoofed = [
            (n, v.as_str()),
            ("cf-connecting-ip", "198.51.100.7"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-real-ip", "203.0.113.9"),
            ("true-client-ip", "203.0.113.9"),
            ("forwarded", "for=203.0.113.9"),
        ];
        let r = plain(port, op, &path, &spoofed);
        assert_eq!(conforms(op, &r, "spoofed address headers")["error"]["code"], "IP_NOT_ALLOWED");
        if op.is_preflight() {
            continue;
        }
        // From inside: the documented success (a revoked, updated or rolled
        // key is one the fenced key could have minted: within its addresses).
        let mut ps = params(&org);
        if op.writes_key() {
            let (_, victim) =
                h().key(&org, json!({"name": "victim", "scopes": ["ai:chat"], "allowed_ips": ["203.0.113.128/25"]}));
            ps.retain(|(k, _)| *k != "key_id");
            ps.push(("key_id", victim));
        }
        let inside = ["203.0.113.9", "2001:db8:0:7::1", "::ffff:203.0.113.77"][i % 3];
        let r = plain(port, op, &fill(op, &ps), &[(n, &v), ("cf-connecting-ip", inside)]);
        assert_eq!(r.status, op.success_status().unwrap(), "{} {path} (from {inside}): {}", op.method, r.text());
        let body = conforms(op, &r, "inside allowed_ips");
        if op.is_proxied() {
            let echo = &body["echo"];
            origin_request_is_documented(op, echo, r.header("x-request-id").unwrap(), "key");
            let canonical: std::net::IpAddr = inside.parse().unwrap();
            assert_eq!(echo["headers"]["x-forwarded-for"], canonical.to_string(), "{} {path}", op.method);
        }
        if op.id() == "createApiKey" {
            assert_eq!(body["data"]["allowed_ips"], ips, "a minted key takes the caller's addresses");
        }
        // Inside, but an org without a BAA: the address comes first, then 402.
        let (bn, bv) = cred(&no_baa_key, i);
        let r = plain(port, op, &path, &[(bn, &bv), ("cf-connecting-ip", inside)]);
        assert_eq!(r.status, 402, "{} {path}: {}", op.method, r.text());
        conforms(op, &r, "inside allowed_ips, no BAA");
    }
    // As the key list shows it; a list allowing every address admits a
    // request without a readable address, another list does not.
    let list = find_op("listApiKeys");
    let (reader, _) = h().key(&org, json!({"name": "reader", "scopes": ["control:read"]}));
    let r = send_to(port, "GET", "/v1/api_keys?limit=100", &[("x-api-key", &reader)], None);
    let data = conforms(&list, &r, "keys with allowed_ips")["data"].as_array().unwrap().clone();
    let item = data.iter().find(|k| k["id"] == key_id.as_str()).expect("the fenced key");
    assert_eq!(item["allowed_ips"], ips);
    let plain_item = data.iter().find(|k| k["name"] == "reader").expect("the reader");
    assert_eq!(plain_item["allowed_ips"], json!([]), "none: []");
    let chat = find_op("postAiChat");
    let (everyone, _) = h().key(&org, json!({"name": "all", "scopes": ["ai:chat"], "allowed_ips": ["0.0.0.0/0"]}));
    for (k, status) in [(&everyone, 200), (&key, 403)] {
        let r = plain(port, &chat, "/v1/ai/chat", &[("x-api-key", k), ("cf-connecting-ip", "not-an-address")]);
        assert_eq!(r.status, status, "no readable address: {}", r.text());
        conforms(&chat, &r, "no readable address");
    }
}

fn find_op(id: &str) -> Op {
    all_ops().into_iter().find(|o| o.id() == id).unwrap_or_else(|| panic!("no operation {id}"))
}

/// Decodes base64url without padding.
fn b64url_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        other => panic!("{other:?} is not base64url"),
    } as u32;
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        assert!(chunk.len() > 1, "a dangling base64url character");
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &c)| n | val(c) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// `meta` and `allowed_ips` as the admin and control APIs take and answer
/// them; a key's `meta` reaches the origin as documented: `X-Keyward-Meta`,
/// base64url of its compact JSON, signed as one more canonical line.
#[test]
fn key_metadata_and_addresses_are_documented() {
    let (org, _, _) = setup();
    let port = h().port;
    let meta = json!({"plan": "pro", "account": "acct_42", "seats": 7, "tags": ["a", "é"]});
    let (key, key_id) = h().key(&org, json!({"name": "m", "scopes": ["*"], "meta": meta}));
    let compact = meta.to_string();
    for (i, op) in ops().into_iter().filter(|o| o.is_proxied() && !o.is_public()).enumerate() {
        let path = fill(&op, &params(&org));
        let (n, v) = cred(&key, i);
        // A client's own X-Keyward-Meta is never forwarded.
        let r = plain(port, &op, &path, &[(n, &v), ("x-keyward-meta", "eyJwbGFuIjoiZW50ZXJwcmlzZSJ9")]);
        assert_eq!(r.status, 200, "{} {path}: {}", op.method, r.text());
        let body = conforms(&op, &r, "a key with meta");
        let echo = &body["echo"];
        origin_request_is_documented(&op, echo, r.header("x-request-id").unwrap(), "key");
        let hd = &echo["headers"];
        let encoded = hd["x-keyward-meta"].as_str().unwrap_or_else(|| panic!("{}: no X-Keyward-Meta", op.id()));
        assert!(!encoded.contains('='), "no padding: {encoded}");
        assert_eq!(String::from_utf8(b64url_decode(encoded)).unwrap(), compact, "the compact JSON");
        // The canonical string, spelled out: the documented lines, then the meta.
        let canonical = format!(
            "keyward-v1\n{}\n{}\n{}\n{}\n{}\n{org}\n{key_id}\nsecret\n{}\n\n\n{encoded}",
            hd["x-keyward-timestamp"].as_str().unwrap(),
            op.method,
            echo["path"].as_str().unwrap(),
            echo["query"].as_str().unwrap(),
            r.header("x-request-id").unwrap(),
            hd["x-keyward-scopes"].as_str().unwrap(),
        );
        let want = format!("v1={}", hmac_sha256_hex(SIGNING_SECRET.as_bytes(), canonical.as_bytes()));
        assert_eq!(hd["x-keyward-signature"], want.as_str(), "{}", op.id());
    }
    // In the list, and inherited by a minted key; no other meta.
    let list = find_op("listApiKeys");
    let r = send_to(port, "GET", "/v1/api_keys?limit=100", &[("x-api-key", &key)], None);
    let data = conforms(&list, &r, "a key with meta")["data"].as_array().unwrap().clone();
    assert_eq!(data.iter().find(|k| k["id"] == key_id.as_str()).unwrap()["meta"], meta);
    let spec_key = data.iter().find(|k| k["name"] == "spec").unwrap();
    assert_eq!((&spec_key["meta"], &spec_key["allowed_ips"]), (&Value::Null, &json!([])), "none: null and []");
    let create = find_op("createApiKey");
    let mint = |caller: &str, body: Value| {
        send_to(
            port,
            "POST",
            "/v1/api_keys",
            &[("authorization", &format!("Bearer {caller}"))],
            Some(&body.to_string()),
        )
    };
    let r = mint(&key, json!({"name": "child", "scopes": ["ai:chat"]}));
    assert_eq!(r.status, 201, "{}", r.text());
    let child = conforms(&create, &r, "inherits meta")["data"].clone();
    assert_eq!(child["meta"], meta);
    let r = mint(&key, json!({"name": "child", "scopes": ["ai:chat"], "meta": meta}));
    assert_eq!(r.status, 201, "the same meta: {}", r.text());
    let (plain_key, _) = h().key(&org, json!({"name": "p", "scopes": ["*"]}));
    let own = "A key cannot create a key with other metadata than its own.";
    for (caller, body, case) in [
        (&key, json!({"name": "c", "scopes": ["ai:chat"], "meta": {"plan": "enterprise"}}), "other meta"),
        (&plain_key, json!({"name": "c", "scopes": ["ai:chat"], "meta": {"plan": "pro"}}), "meta from none"),
    ] {
        let r = mint(caller, body);
        assert_eq!(r.status, 403, "{case}: {}", r.text());
        let v = conforms(&create, &r, case);
        assert_eq!(
            (v["error"]["code"].as_str(), v["error"]["message"].as_str()),
            (Some("PERMISSION_DENIED"), Some(own))
        );
    }
    // A caller with addresses mints within them only.
    let (fenced, _) = h().key(&org, json!({"name": "f", "scopes": ["*"], "allowed_ips": ["203.0.113.0/24"]}));
    let from = |k: &str, body: Value| {
        let auth = format!("Bearer {k}");
        let headers = [("authorization", auth.as_str()), ("cf-connecting-ip", "203.0.113.5")];
        send_to(port, "POST", "/v1/api_keys", &headers, Some(&body.to_string()))
    };
    let r = from(&fenced, json!({"name": "n", "scopes": ["ai:chat"], "allowed_ips": ["203.0.113.128/25"]}));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(conforms(&create, &r, "narrower addresses")["data"]["allowed_ips"], json!(["203.0.113.128/25"]));
    let r = from(&fenced, json!({"name": "w", "scopes": ["ai:chat"], "allowed_ips": ["203.0.112.0/23"]}));
    assert_eq!(r.status, 403, "{}", r.text());
    let v = conforms(&create, &r, "wider addresses");
    assert_eq!(
        (v["error"]["code"].as_str(), v["error"]["message"].as_str()),
        (
            Some("PERMISSION_DENIED"),
            Some("A key cannot create a key usable from an address it may not use: 203.0.112.0/23")
        )
    );
    // What both APIs accept, answer and refuse.
    let admin = admin_auth();
    let admin_path = format!("/admin/orgs/{org}/api_keys");
    let key_auth = format!("Bearer {plain_key}");
    for (id, path, auth) in [
        ("adminCreateApiKey", admin_path.as_str(), admin.as_str()),
        ("createApiKey", "/v1/api_keys", key_auth.as_str()),
    ] {
        let op = find_op(id);
        let post = |body: Value| send_to(port, "POST", path, &[("authorization", auth)], Some(&body.to_string()));
        let given = json!(["198.51.100.7", "2001:DB8::1", "203.0.113.0/24", "198.51.100.7/32", "::/0"]);
        let r = post(json!({"name": "ips", "scopes": ["ai:chat"], "allowed_ips": given}));
        assert_eq!(r.status, 201, "{id}: {}", r.text());
        let data = conforms(&op, &r, "allowed_ips")["data"].clone();
        assert_eq!(
            data["allowed_ips"],
            json!(["198.51.100.7/32", "2001:db8::1/128", "203.0.113.0/24", "::/0"]),
            "{id}"
        );
        assert_eq!(data["meta"], Value::Null, "{id}");
        if id == "adminCreateApiKey" {
            let r = post(json!({"name": "meta", "scopes": ["ai:chat"], "meta": {"b": 1, "a": {"c": [null, true]}}}));
            assert_eq!(r.status, 201, "{id}: {}", r.text());
            assert_eq!(conforms(&op, &r, "meta")["data"]["meta"], json!({"b": 1, "a": {"c": [null, true]}}));
            let r = post(json!({"name": "max", "scopes": ["ai:chat"], "meta": {"x": "y".repeat(4088)}}));
            assert_eq!(r.status, 201, "4096 bytes exactly: {}", r.text());
        }
        let many: Vec<String> = (0..101).map(|i| format!("10.0.{i}.0/24")).collect();
        let widget = json!({"name": "w", "kind": "widget", "scopes": ["ai:chat"], "allowed_origins": [SHOP],
                            "allowed_ips": ["203.0.113.0/24"]});
        for (body, field, case) in [
            (json!({"allowed_ips": []}), "allowed_ips: ", "empty"),
            (json!({"allowed_ips": "203.0.113.0/24"}), "allowed_ips: ", "not an array"),
            (json!({"allowed_ips": many}), "allowed_ips: ", "101 entries"),
            (json!({"allowed_ips": ["203.0.113.7/24"]}), "allowed_ips[0]: ", "bits past the prefix"),
            (json!({"allowed_ips": ["10.0.0.0/8", "10.0.0.0/08"]}), "allowed_ips[1]: ", "a leading zero"),
            (json!({"allowed_ips": ["::ffff:203.0.113.0/120"]}), "allowed_ips[0]: ", "IPv4-mapped"),
            (json!({"allowed_ips": ["example.com"]}), "allowed_ips[0]: ", "a host name"),
            (json!({"allowed_ips": [7]}), "allowed_ips[0]: ", "not a string"),
            (json!({"meta": "plan=pro"}), "meta: ", "meta not an object"),
            (json!({"meta": [1]}), "meta: ", "meta an array"),
            (json!({"meta": {"x": "y".repeat(4089)}}), "meta: ", "meta over 4096 bytes"),
            (widget, "allowed_ips: ", "allowed_ips on a widget key"),
        ] {
            let mut b = json!({"name": "x", "scopes": ["ai:chat"]});
            b.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
            let r = post(b);
            assert_eq!(r.status, 422, "{id} ({case}): {}", r.text());
            let v = conforms(&op, &r, case);
            assert!(v["error"]["message"].as_str().unwrap().starts_with(field), "{id} ({case}): {v}");
        }
    }
}

/// Revoking a key revokes the keys it minted, transitively: the documented
/// `descendants_revoked`, `detail.cascade_from` in the audit log, and the
/// documented refusals of a key revoking what it could not have minted.
#[test]
fn cascade_revocation_is_documented() {
    let org = h().org(true);
    let port = h().port;
    let (root, root_id) = h().key(&org, json!({"name": "root", "scopes": ["ai:*", "control:read"]}));
    let create = find_op("createApiKey");
    let revoke = find_op("revokeApiKey");
    let admin_revoke = find_op("adminRevokeApiKey");
    let chat = find_op("postAiChat");
    let mint = |parent: &str, name: &str| {
        let body = json!({"name": name, "scopes": ["ai:chat", "control:read"]}).to_string();
        let r = send_to(port, "POST", "/v1/api_keys", &[("authorization", &format!("Bearer {parent}"))], Some(&body));
        assert_eq!(r.status, 201, "{}", r.text());
        let d = conforms(&create, &r, "a child")["data"].clone();
        (d["plaintext"].as_str().unwrap().to_owned(), d["id"].as_str().unwrap().to_owned())
    };
    let (a, a_id) = mint(&root, "a");
    let (aa, aa_id) = mint(&a, "a.a");
    let (b, b_id) = mint(&root, "b");
    let (leaf, leaf_id) = mint(&b, "b.a");
    // A key that minted none: 0.
    let r = send_to(port, "DELETE", &format!("/v1/api_keys/{leaf_id}"), &[("x-api-key", &b)], None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(conforms(&revoke, &r, "a leaf")["data"]["descendants_revoked"], 0);
    // The control API: a and a.a.
    let r = send_to(port, "DELETE", &format!("/v1/api_keys/{a_id}"), &[("x-api-key", &root)], None);
    assert_eq!(r.status, 200, "{}", r.text());
    let data = conforms(&revoke, &r, "a key with a child")["data"].clone();
    assert_eq!((&data["id"], &data["descendants_revoked"]), (&json!(a_id), &json!(1)), "{data}");
    for k in [&a, &aa, &leaf] {
        let r = plain(port, &chat, "/v1/ai/chat", &[("x-api-key", k)]);
        assert_eq!(conforms(&chat, &r, "revoked with its parent")["error"]["code"], "INVALID_API_KEY");
    }
    assert_eq!(plain(port, &chat, "/v1/ai/chat", &[("x-api-key", &b)]).status, 200, "b is not a's");
    // The admin API: every descendant, those revoked before included; the
    // same answer again.
    let path = format!("/admin/orgs/{org}/api_keys/{root_id}");
    let admin = admin_auth();
    let r = send_to(port, "DELETE", &path, &[("authorization", &admin)], None);
    assert_eq!(r.status, 200, "{}", r.text());
    let first = conforms(&admin_revoke, &r, "the root")["data"].clone();
    assert_eq!(first["descendants_revoked"], 4, "a, a.a, b, b.a: {first}");
    let r = send_to(port, "DELETE", &path, &[("authorization", &admin)], None);
    assert_eq!(conforms(&admin_revoke, &r, "the root again")["data"], first, "a repeated revoke");
    for k in [&root, &b] {
        let r = plain(port, &chat, "/v1/ai/chat", &[("x-api-key", k)]);
        assert_eq!(conforms(&chat, &r, "revoked with the root")["error"]["code"], "INVALID_API_KEY");
    }
    // The audit log: the key asked for `{}`, each descendant `cascade_from`
    // the key whose revoke took it (once: the first revocation).
    let (reader, _) = h().key(&org, json!({"name": "reader", "scopes": ["control:read"]}));
    let audit = find_op("listAudit");
    let r = send_to(port, "GET", "/v1/audit?limit=100", &[("x-api-key", &reader)], None);
    let entries = conforms(&audit, &r, "audit after a cascade")["data"].as_array().unwrap().clone();
    for (target, detail) in [
        (&leaf_id, json!({})),
        (&a_id, json!({})),
        (&aa_id, json!({"cascade_from": a_id})),
        (&root_id, json!({})),
        (&b_id, json!({"cascade_from": root_id})),
    ] {
        let revoked: Vec<&Value> =
            entries.iter().filter(|e| e["action"] == "key.revoked" && e["target"] == target.as_str()).collect();
        assert_eq!(revoked.len(), 1, "{target}: {revoked:?}");
        assert_eq!(revoked[0]["detail"], detail, "{target}");
    }
    // Who may revoke what: only a key it could have minted.
    let soon = "2099-01-01T00:00:00Z";
    let (short, _) = h().key(&org, json!({"name": "short", "scopes": ["ai:chat", "control:read"], "expires_at": soon}));
    let (fenced, _) = h()
        .key(&org, json!({"name": "fenced", "scopes": ["ai:chat", "control:read"], "allowed_ips": ["203.0.113.0/24"]}));
    let tight = json!([{"name": "minute", "limit": 5, "window_seconds": 60}]);
    let (tight_key, _) =
        h().key(&org, json!({"name": "tight", "scopes": ["ai:chat", "control:read"], "rate_limits": tight}));
    let (_, forever) = h().key(&org, json!({"name": "forever", "scopes": ["ai:chat"]}));
    for (caller, ip, want) in [
        (&short, None, "This API key cannot revoke a key that expires after it does."),
        (&fenced, Some("203.0.113.1"), "This API key cannot revoke a key usable from addresses it may not use."),
        (&tight_key, None, "This API key cannot revoke a key it could not have created: "),
    ] {
        let mut headers = vec![("x-api-key", caller.as_str())];
        headers.extend(ip.map(|i| ("cf-connecting-ip", i)));
        let r = send_to(port, "DELETE", &format!("/v1/api_keys/{forever}"), &headers, None);
        assert_eq!(r.status, 403, "{want}: {}", r.text());
        let v = conforms(&revoke, &r, want);
        let m = v["error"]["message"].as_str().unwrap();
        assert_eq!(v["error"]["code"], "PERMISSION_DENIED");
        assert!(if want.ends_with(": ") { m.starts_with(want) && m.len() > want.len() } else { m == want }, "{m}");
    }
}

/// Seconds since the Unix epoch, from this machine's clock (the worker's).
fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The audit log of `reader`'s org, as it sees it (the newest 100 entries).
fn audit_of(reader: &str) -> Vec<Value> {
    let r = send_to(h().port, "GET", "/v1/audit?limit=100", &[("x-api-key", reader)], None);
    assert_eq!(r.status, 200, "{}", r.text());
    conforms(&find_op("listAudit"), &r, "the audit log")["data"].as_array().unwrap().clone()
}

/// Updates and rolls, by the control and the admin API: the documented
/// answers (the key as it now is; the new key with `plaintext`,
/// `rolled_from` and `old_key_expires_at`), the change on the very next
/// request, the old key's grace and its end, the audit entries; and the
/// documented refusals: a revoked, expired, unknown or malformed key 404,
/// an invalid body 422 naming the field, what the caller could not mint
/// 403 (an operator may loosen), a roll family's cap 409.
#[test]
fn key_updates_and_rolls_are_documented() {
    let org = h().org(true);
    let port = h().port;
    let (update, roll) = (find_op("updateApiKey"), find_op("rollApiKey"));
    let (admin_update, admin_roll) = (find_op("adminUpdateApiKey"), find_op("adminRollApiKey"));
    let (chat, embeddings) = (find_op("postAiChat"), find_op("postEmbeddings"));
    let (ops, _) = h().key(&org, json!({"name": "ops", "scopes": ["ai:*", "control:read"]}));
    let (reader, _) = h().key(&org, json!({"name": "reader", "scopes": ["control:read"]}));
    let call = |op: &Op, caller: &str, id: &str, body: Option<Value>| {
        let path = op.path.replace("{key_id}", id);
        let b = body.map(|b| b.to_string());
        send_to(port, &op.method, &path, &[("x-api-key", caller)], b.as_deref())
    };
    let call_admin = |op: &Op, id: &str, body: Option<Value>| {
        let path = op.path.replace("{org_id}", &org).replace("{key_id}", id);
        h().admin(&op.method, &path, body)
    };
    let use_key = |op: &Op, k: &str| plain(port, op, &op.path, &[("x-api-key", k)]);
    let refused = |op: &Op, r: &Resp, status: u16, code: &str, start: &str, case: &str| {
        assert_eq!(r.status, status, "{} ({case}): {}", op.id(), r.text());
        let v = conforms(op, r, case);
        assert_eq!(v["error"]["code"], code, "{} ({case})", op.id());
        let m = v["error"]["message"].as_str().unwrap();
        assert!(m.starts_with(start), "{} ({case}): {m}", op.id());
    };

    // Update: the key as it now is, applied on the very next request.
    let (app, app_id) = h().key(&org, json!({"name": "app", "scopes": ["ai:chat", "ai:embeddings"]}));
    assert_eq!(use_key(&chat, &app).status, 200);
    let credits = json!({"remaining": 100, "refill": {"amount": 100, "interval": "daily"}});
    let r =
        call(&update, &ops, &app_id, Some(json!({"scopes": ["ai:embeddings"], "name": "app v2", "credits": credits})));
    assert_eq!(r.status, 200, "{}", r.text());
    let data = conforms(&update, &r, "narrower scopes, a new name, credits")["data"].clone();
    assert_eq!(
        (&data["id"], &data["scopes"], &data["name"]),
        (&json!(app_id), &json!(["ai:embeddings"]), &json!("app v2"))
    );
    let c = &data["credits"];
    assert_eq!((&c["remaining"], &c["refill"]), (&json!(100), &json!({"amount": 100, "interval": "daily"})), "{data}");
    let set_at = keyward::ids::parse_rfc3339(c["set_at"].as_str().unwrap()).unwrap() / 1000;
    assert!((set_at - now_secs()).abs() < 120, "set_at is now: {data}");
    let r = use_key(&chat, &app);
    assert_eq!(conforms(&chat, &r, "a scope taken away")["error"]["code"], "MISSING_SCOPE");
    let r = use_key(&embeddings, &app);
    assert_eq!(r.status, 200, "{}", r.text());
    conforms(&embeddings, &r, "the scope kept");
    // An operator sets metadata, signed to the origin from the next request on.
    let r = call_admin(&admin_update, &app_id, Some(json!({"meta": {"plan": "pro"}})));
    assert_eq!(r.status, 200, "{}", r.text());
    let data = conforms(&admin_update, &r, "metadata")["data"].clone();
    assert_eq!((&data["meta"], &data["scopes"]), (&json!({"plan": "pro"}), &json!(["ai:embeddings"])), "{data}");
    let r = use_key(&embeddings, &app);
    let echo = &conforms(&embeddings, &r, "metadata given")["echo"];
    origin_request_is_documented(&embeddings, echo, r.header("x-request-id").unwrap(), "key");
    assert_eq!(b64url_decode(echo["headers"]["x-keyward-meta"].as_str().unwrap()), br#"{"plan":"pro"}"#);
    // A caller may not loosen past what it could mint; it may tighten; an
    // operator may loosen.
    let (tight, _) = h().key(
        &org,
        json!({"name": "tight", "scopes": ["ai:chat", "control:read"],
               "rate_limits": [{"name": "minute", "limit": 5, "window_seconds": 60}]}),
    );
    let r =
        send_to(port, "POST", "/v1/api_keys", &[("x-api-key", &tight)], Some(r#"{"name":"c","scopes":["ai:chat"]}"#));
    assert_eq!(r.status, 201, "{}", r.text());
    let (child, child_id) = {
        let d = &r.json()["data"];
        (d["plaintext"].as_str().unwrap().to_owned(), d["id"].as_str().unwrap().to_owned())
    };
    let limits = |n: u64| json!({"rate_limits": [{"name": "minute", "limit": n, "window_seconds": 60}]});
    let r = call(&update, &tight, &child_id, Some(limits(50)));
    refused(
        &update,
        &r,
        403,
        "PERMISSION_DENIED",
        "This API key cannot update a key it could not have created: ",
        "looser",
    );
    let r = call(&update, &tight, &child_id, Some(limits(3)));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(conforms(&update, &r, "tighter")["data"]["rate_limits"], limits(3)["rate_limits"]);
    let r = call_admin(&admin_update, &child_id, Some(limits(50)));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(conforms(&admin_update, &r, "looser, by an operator")["data"]["rate_limits"], limits(50)["rate_limits"]);
    let r = use_key(&chat, &child);
    assert_eq!(r.header("ratelimit-limit"), Some("50"), "the new limit on the next request: {}", r.text());
    let r = call(&update, &reader, &app_id, Some(json!({"name": "mine"})));
    refused(
        &update,
        &r,
        403,
        "PERMISSION_DENIED",
        "This API key cannot update a key with scopes it does not have.",
        "scopes",
    );
    // Invalid bodies: 422 naming the field (both APIs).
    for (body, start) in [
        (json!({}), "body: "),
        (json!({"scopes": ["ai:*"]}), "scopes: "),
        (json!({"credits": null}), "credits: "),
        (json!({"credits": {"remaining": -1}}), "credits.remaining: "),
        (
            json!({"credits": {"remaining": 1, "refill": {"amount": 1, "interval": "weekly"}}}),
            "credits.refill.interval: ",
        ),
        (json!({"kind": "widget"}), "kind: "),
        (json!({"expires_at": "2099-01-01T00:00:00Z"}), "expires_at: "),
        (json!({"allowed_origins": [SHOP]}), "allowed_origins: "),
        (json!({"visitor_rate_limits": []}), "visitor_rate_limits: "),
        (json!({"allowed_ips": ["203.0.113.7/24"]}), "allowed_ips[0]: "),
    ] {
        let case = format!("PATCH {body}");
        refused(&update, &call(&update, &ops, &app_id, Some(body.clone())), 422, "VALIDATION_FAILED", start, &case);
        refused(&admin_update, &call_admin(&admin_update, &app_id, Some(body)), 422, "VALIDATION_FAILED", start, &case);
    }

    // A key rolls only keys whose metadata it has (the new key carries it).
    let r = call(&roll, &ops, &app_id, Some(json!({"grace_seconds": 3600})));
    refused(
        &roll,
        &r,
        403,
        "PERMISSION_DENIED",
        "A key cannot roll a key with other metadata than its own (the new key would carry it).",
        "metadata",
    );
    let (pro_ops, _) =
        h().key(&org, json!({"name": "ops (pro)", "scopes": ["ai:*", "control:read"], "meta": {"plan": "pro"}}));
    // Roll: the new key with the old one's settings; both work until the grace ends.
    let r = call(&roll, &pro_ops, &app_id, Some(json!({"grace_seconds": 3600})));
    assert_eq!(r.status, 201, "{}", r.text());
    let new = conforms(&roll, &r, "a roll with an hour's grace")["data"].clone();
    let new_id = new["id"].as_str().unwrap().to_owned();
    let new_key = new["plaintext"].as_str().unwrap().to_owned();
    assert_eq!(new["rolled_from"], app_id.as_str());
    assert!(new_id != app_id && new_key.starts_with("kw_live_") && new["last_four"] == new_key[new_key.len() - 4..]);
    for field in ["name", "scopes", "kind", "user_id", "rate_limits", "meta", "consistency", "credits", "allowed_ips"] {
        assert_eq!(new[field], data[field], "{field}: the old key's");
    }
    let ends = keyward::ids::parse_rfc3339(new["old_key_expires_at"].as_str().unwrap()).unwrap() / 1000;
    assert!((ends - now_secs() - 3600).abs() < 120, "old_key_expires_at: now + grace: {new}");
    for k in [&app, &new_key] {
        let r = use_key(&embeddings, k);
        assert_eq!(r.status, 200, "{}", r.text());
        conforms(&embeddings, &r, "old and new key within the grace");
    }
    // Grace 0 (admin API, no body): the old key is refused from the answer on.
    let r = call_admin(&admin_roll, &new_id, None);
    assert_eq!(r.status, 201, "{}", r.text());
    let newest = conforms(&admin_roll, &r, "a roll without a body")["data"].clone();
    assert_eq!(newest["rolled_from"], new_id.as_str());
    let r = use_key(&embeddings, &new_key);
    assert_eq!(conforms(&embeddings, &r, "the old key after its end")["error"]["code"], "INVALID_API_KEY");
    let r = use_key(&embeddings, newest["plaintext"].as_str().unwrap());
    assert_eq!(r.status, 200, "{}", r.text());
    // Audited: key.rolled on the old key, key.created for the new one.
    let entries = audit_of(&ops);
    let rolled =
        entries.iter().find(|e| e["action"] == "key.rolled" && e["target"] == app_id.as_str()).expect("key.rolled");
    assert_eq!(rolled["detail"]["new_key_id"], new_id.as_str(), "{rolled}");
    assert_eq!(rolled["detail"]["grace_seconds"], 3600, "{rolled}");
    assert_eq!(rolled["detail"]["old_key_expires_at"], new["old_key_expires_at"], "{rolled}");
    assert!(entries.iter().any(|e| e["action"] == "key.created" && e["target"] == new_id.as_str()));
    let updated = entries
        .iter()
        .find(|e| e["action"] == "key.updated" && e["target"] == app_id.as_str() && e["actor"] != "admin:default")
        .expect("the control API's key.updated");
    assert_eq!(updated["detail"]["fields"], json!(["credits", "name", "scopes"]), "{updated}");

    // Nothing live to act on: an ended (expired), revoked, unknown or malformed key.
    let (_, gone) = h().key(&org, json!({"name": "gone", "scopes": ["ai:chat"]}));
    assert_eq!(h().admin("DELETE", &format!("/admin/orgs/{org}/api_keys/{gone}"), None).status, 200);
    let no_live = "No live API key has this id (revoked and expired keys cannot change).";
    for (id, case) in [(new_id.as_str(), "an expired key"), (gone.as_str(), "a revoked key")] {
        for (op, body) in [(&update, Some(json!({"name": "x"}))), (&roll, Some(json!({})))] {
            refused(op, &call(op, &ops, id, body.clone()), 404, "RESOURCE_NOT_FOUND", no_live, case);
        }
        for (op, body) in [(&admin_update, Some(json!({"name": "x"}))), (&admin_roll, None)] {
            refused(op, &call_admin(op, id, body), 404, "RESOURCE_NOT_FOUND", no_live, case);
        }
    }
    for id in [UNKNOWN_ULID, "not-a-ulid"] {
        for op in [&update, &roll] {
            let body = if op.method == "PATCH" { json!({"name": "x"}) } else { json!({}) };
            refused(op, &call(op, &ops, id, Some(body)), 404, "RESOURCE_NOT_FOUND", "", id);
        }
    }

    // Roll refusals: the grace, the body, a caller that could not revoke the key.
    let (spare, spare_id) = h().key(&org, json!({"name": "spare", "scopes": ["ai:chat"]}));
    for (body, start) in [
        (json!({"grace_seconds": -1}), "grace_seconds: "),
        (json!({"grace_seconds": 604801}), "grace_seconds: "),
        (json!({"grace_seconds": "60"}), "grace_seconds: "),
        (json!({"grace_seconds": 1.5}), "grace_seconds: "),
        (json!({"grace": 60}), "grace: "),
        (json!([60]), "body: "),
    ] {
        let case = format!("roll {body}");
        refused(&roll, &call(&roll, &ops, &spare_id, Some(body.clone())), 422, "VALIDATION_FAILED", start, &case);
        refused(&admin_roll, &call_admin(&admin_roll, &spare_id, Some(body)), 422, "VALIDATION_FAILED", start, &case);
    }
    let r = call(&roll, &reader, &spare_id, Some(json!({})));
    refused(
        &roll,
        &r,
        403,
        "PERMISSION_DENIED",
        "This API key cannot roll a key with scopes it does not have.",
        "scopes",
    );
    assert_eq!(use_key(&chat, &spare).status, 200, "nothing rolled");
    // A week is the longest grace.
    let r = call(&roll, &ops, &spare_id, Some(json!({"grace_seconds": 604800})));
    assert_eq!(r.status, 201, "{}", r.text());
    conforms(&roll, &r, "a week's grace");
    // A key rolled once is not rolled again: its successor is.
    let r = call_admin(&admin_roll, &spare_id, Some(json!({})));
    refused(&admin_roll, &r, 409, "KEY_LIMIT_REACHED", "This key was already rolled (to ", "rolled twice");
    // A roll family holds at most 8 live keys: the eighth roll is refused.
    let (_, mut fam) = h().key(&org, json!({"name": "family", "scopes": ["ai:chat"]}));
    for n in 0..7 {
        let r = call_admin(&admin_roll, &fam, Some(json!({"grace_seconds": 3600})));
        assert_eq!(r.status, 201, "roll {n}: {}", r.text());
        fam = r.json()["data"]["id"].as_str().unwrap().to_owned();
    }
    for (op, r) in [
        (&roll, call(&roll, &ops, &fam, Some(json!({"grace_seconds": 3600})))),
        (&admin_roll, call_admin(&admin_roll, &fam, Some(json!({"grace_seconds": 3600})))),
    ] {
        refused(
            op,
            &r,
            409,
            "KEY_LIMIT_REACHED",
            "This key was rolled 7 times and has 8 live versions",
            "a full family",
        );
        assert!(r.json()["error"]["message"].as_str().unwrap().ends_with("create a new key instead."));
    }
}

/// Usage-limited keys (`credits`): every answer to an admitted request
/// carries the documented `X-Credits-Remaining`, lower by the operation's
/// documented `x-keyward-cost` (the control API's key writes answered with
/// the documented 403: such a key manages no keys); exhausted, the
/// documented `429 USAGE_EXCEEDED` (`X-Credits-Remaining`: what is left, not
/// retryable, `Retry-After` only for a key that refills), strict and
/// leased, from a page too; a top-up and a roll as documented (the roll
/// family shares one count); the guard view's `credits` and `family`.
#[test]
fn credits_are_documented() {
    let (org, _, _) = setup();
    let port = h().port;
    let total: u64 = 1000;
    let (metered, metered_id) =
        h().key(&org, json!({"name": "metered", "scopes": ["*"], "credits": {"remaining": total}}));
    let mut left = total;
    let keyed: Vec<Op> = ops().into_iter().filter(|o| !o.is_admin() && !o.is_preflight() && !o.is_public()).collect();
    for (i, op) in keyed.iter().enumerate() {
        let mut ps = params(&org);
        if op.writes_key() {
            let (_, victim) = h().key(&org, json!({"name": "victim", "scopes": ["ai:chat"]}));
            ps.retain(|(k, _)| *k != "key_id");
            ps.push(("key_id", victim));
        }
        let (n, v) = cred(&metered, i);
        let r = plain(port, op, &fill(op, &ps), &[(n, &v)]);
        let body = conforms(op, &r, "a usage-limited key");
        let cost = op.v["x-keyward-cost"].as_u64().unwrap();
        left -= cost;
        assert_eq!(r.header("x-credits-remaining"), Some(left.to_string().as_str()), "{}: {}", op.id(), r.text());
        if op.v.get("x-keyward-control-write").is_some() && op.path.starts_with("/v1/api_keys") {
            assert_eq!(r.status, 403, "{}: {}", op.id(), r.text());
            let m = body["error"]["message"].as_str().unwrap();
            assert!(m.contains("A key with credits cannot create or manage API keys."), "{}: {m}", op.id());
        } else {
            assert_eq!(r.status, op.success_status().unwrap(), "{}: {}", op.id(), r.text());
        }
    }
    // The guard view: the live count, no roll family yet.
    let r = h().admin("GET", &format!("/admin/orgs/{org}/api_keys/{metered_id}/guard"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let guard = conforms(&find_op("adminGetKeyGuard"), &r, "a usage-limited key's guard")["data"].clone();
    assert_eq!((guard["credits"].as_u64(), guard["family"].as_u64()), (Some(left), Some(0)), "{guard}");

    // Too few left for the route: 429 USAGE_EXCEEDED, nothing spent, nothing proxied.
    let (chat, summarize) = (find_op("postAiChat"), find_op("postSummarize"));
    let (six, _) = h().key(&org, json!({"name": "six", "scopes": ["ai:*"], "credits": {"remaining": 6}}));
    let exceeded = |r: &Resp, case: &str, op: &Op, left: &str| {
        assert_eq!(r.status, 429, "{case}: {}", r.text());
        let v = conforms(op, r, case);
        assert_eq!(
            (v["error"]["code"].as_str(), v["error"]["retryable"].as_bool()),
            (Some("USAGE_EXCEEDED"), Some(false))
        );
        assert_eq!(r.header("x-credits-remaining"), Some(left), "{case}: what is left");
        assert!(r.header("ratelimit-limit").is_none(), "{case}: nothing counted");
        assert!(h().origin_saw(r.header("x-request-id").unwrap()).is_none(), "{case}: proxied");
    };
    let mut last = "6";
    for (op, want) in [(&summarize, Some("1")), (&summarize, None), (&chat, Some("0")), (&chat, None)] {
        let r = plain(port, op, &op.path, &[("x-api-key", &six)]);
        match want {
            Some(left) => {
                assert_eq!(r.status, 200, "{}: {}", op.id(), r.text());
                conforms(op, &r, "credits left");
                assert_eq!(r.header("x-credits-remaining"), Some(left), "{}", op.id());
                last = left;
            }
            None => {
                // One credit left is too few for summarize (5): it says 1.
                exceeded(&r, "too few credits left, no refill", op, last);
                assert!(r.header("retry-after").is_none(), "no refill: nothing to wait for");
            }
        }
    }
    // A key that refills: Retry-After until the next refill (a day at most),
    // strict and leased (a leased key's isolate then answers itself), and
    // from a page with the CORS headers.
    let refill = json!({"remaining": 0, "refill": {"amount": 5, "interval": "daily"}});
    for (consistency, kind) in [("strict", "secret"), ("leased", "secret"), ("strict", "widget")] {
        let mut body =
            json!({"name": "r", "scopes": ["ai:chat"], "credits": refill, "consistency": consistency, "kind": kind});
        let mut headers = vec![];
        if kind == "widget" {
            body["allowed_origins"] = json!([SHOP]);
            headers.push(("origin", SHOP));
        }
        let (k, _) = h().key(&org, body);
        headers.push(("x-api-key", k.as_str()));
        for n in 0..2 {
            let case = format!("{consistency} {kind} key, refills daily, request {n}");
            let r = plain(port, &chat, "/v1/ai/chat", &headers);
            exceeded(&r, &case, &chat, "0");
            let wait: u64 = r.header("retry-after").expect("Retry-After until the refill").parse().unwrap();
            assert!((1..=86_400).contains(&wait), "{case}: Retry-After {wait}");
            assert_eq!(r.header("access-control-allow-origin"), (kind == "widget").then_some(SHOP), "{case}");
        }
    }
    // A top-up sets the count at once; a roll keeps it, shared by old and new key.
    let r = h().admin(
        "PATCH",
        &format!("/admin/orgs/{org}/api_keys/{metered_id}"),
        Some(json!({"credits": {"remaining": 50}})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(conforms(&find_op("adminUpdateApiKey"), &r, "a top-up")["data"]["credits"]["remaining"], 50);
    let r = plain(port, &chat, "/v1/ai/chat", &[("x-api-key", &metered)]);
    assert_eq!(r.header("x-credits-remaining"), Some("49"), "{}", r.text());
    let guard = h().guard_stats(&org, &metered_id);
    assert_eq!((guard["credits"].as_u64(), guard["family"].as_u64()), (Some(49), Some(1)), "an updated key: {guard}");
    let r = h().admin(
        "POST",
        &format!("/admin/orgs/{org}/api_keys/{metered_id}/roll"),
        Some(json!({"grace_seconds": 600})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let rolled = conforms(&find_op("adminRollApiKey"), &r, "a usage-limited key rolled")["data"].clone();
    assert_eq!(rolled["credits"]["remaining"], 50, "the setting: {rolled}");
    let rolled_key = rolled["plaintext"].as_str().unwrap();
    for (k, want) in [(rolled_key, "48"), (metered.as_str(), "47")] {
        let r = plain(port, &chat, "/v1/ai/chat", &[("x-api-key", k)]);
        assert_eq!(r.status, 200, "{}", r.text());
        conforms(&chat, &r, "one count for the family");
        assert_eq!(r.header("x-credits-remaining"), Some(want), "{}", r.text());
    }
    let guard = h().guard_stats(&org, &metered_id);
    assert_eq!(guard["credits"].as_u64(), Some(47), "the family's live count: {guard}");
    assert_eq!(guard["family"].as_u64(), Some(1), "the key updated, then ended by the roll: {guard}");
    // Keys without credits carry no count.
    let (plain_key, plain_id) = h().key(&org, json!({"name": "unmetered", "scopes": ["ai:chat"]}));
    let r = plain(port, &chat, "/v1/ai/chat", &[("x-api-key", &plain_key)]);
    assert!(r.status == 200 && r.header("x-credits-remaining").is_none(), "{:?}", r.headers);
    let guard = h().guard_stats(&org, &plain_id);
    assert!(guard.get("credits").is_none(), "{guard}");
}

/// A worker of its own with small caps (`MAX_KEYS_PER_ORG=4`,
/// `MAX_KEYS_PER_PARENT=1`), so that `409 KEY_LIMIT_REACHED` is reached in
/// a few keys without limiting the other tests.
fn capped() -> &'static Harness {
    static C: OnceLock<Harness> = OnceLock::new();
    C.get_or_init(|| {
        Harness::start(Options {
            origin_url: None,
            vars: vec![("MAX_KEYS_PER_ORG", "4".into()), ("MAX_KEYS_PER_PARENT", "1".into())],
        })
    })
}

/// `409 KEY_LIMIT_REACHED`: per minting key (control API) and per org
/// (admin and control API), as documented; revoking frees a place; a
/// roll's new key counts against both while the old one lives; the
/// refusals are audited.
#[test]
fn key_limits_are_documented() {
    let c = capped();
    let org = c.org(true);
    let create = find_op("createApiKey");
    let admin_create = find_op("adminCreateApiKey");
    let (root, _) = c.key(&org, json!({"name": "root", "scopes": ["ai:chat", "control:read"]}));
    let mint = |caller: &str, name: &str| {
        let body = json!({"name": name, "scopes": ["ai:chat"]}).to_string();
        send_to(c.port, "POST", "/v1/api_keys", &[("authorization", &format!("Bearer {caller}"))], Some(&body))
    };
    let limited = |op: &Op, r: &Resp, var: &str, case: &str| {
        assert_eq!(r.status, 409, "{case}: {}", r.text());
        let v = conforms(op, r, case);
        assert_eq!(v["error"]["code"], "KEY_LIMIT_REACHED", "{case}");
        assert!(v["error"]["message"].as_str().unwrap().contains(var), "{case}: {v}");
    };
    let r = mint(&root, "child");
    assert_eq!(r.status, 201, "{}", r.text());
    let child_id = conforms(&create, &r, "the first child")["data"]["id"].as_str().unwrap().to_owned();
    limited(&create, &mint(&root, "second"), "MAX_KEYS_PER_PARENT", "a second live child");
    // Revoking the child frees its place.
    let r = send_to(c.port, "DELETE", &format!("/v1/api_keys/{child_id}"), &[("x-api-key", &root)], None);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = mint(&root, "again");
    assert_eq!(r.status, 201, "{}", r.text());
    let again_id = conforms(&create, &r, "a place freed")["data"]["id"].as_str().unwrap().to_owned();
    // The org: root, its child, two more: four live keys.
    let (other, _) = c.key(&org, json!({"name": "other", "scopes": ["ai:chat", "control:read"]}));
    let (_, fourth_id) = c.key(&org, json!({"name": "fourth", "scopes": ["ai:chat"]}));
    let r =
        c.admin("POST", &format!("/admin/orgs/{org}/api_keys"), Some(json!({"name": "fifth", "scopes": ["ai:chat"]})));
    limited(&admin_create, &r, "MAX_KEYS_PER_ORG", "a fifth key (admin API)");
    limited(&create, &mint(&other, "fifth"), "MAX_KEYS_PER_ORG", "a fifth key (control API)");
    // Audited as refused mints.
    let r = send_to(c.port, "GET", "/v1/audit?limit=100", &[("x-api-key", &other)], None);
    let entries = conforms(&find_op("listAudit"), &r, "audit after the caps")["data"].as_array().unwrap().clone();
    let refused = entries
        .iter()
        .filter(|e| e["action"] == "key.create_refused" && e["detail"]["code"] == "KEY_LIMIT_REACHED")
        .count();
    assert_eq!(refused, 3, "{entries:?}");
    // A roll's new key counts while the old one lives: at the org's cap
    // (admin and control API), and, a place freed, against the rolled
    // key's parent.
    let (roll, admin_roll) = (find_op("rollApiKey"), find_op("adminRollApiKey"));
    // (With a grace period: a roll with none replaces its key at once and
    // holds no place, below.)
    let roll_as = |caller: &str, id: &str, grace: u32| {
        let body = json!({"grace_seconds": grace}).to_string();
        send_to(c.port, "POST", &format!("/v1/api_keys/{id}/roll"), &[("x-api-key", caller)], Some(&body))
    };
    let r =
        c.admin("POST", &format!("/admin/orgs/{org}/api_keys/{fourth_id}/roll"), Some(json!({"grace_seconds": 60})));
    limited(&admin_roll, &r, "MAX_KEYS_PER_ORG", "a roll at the org's cap (admin API)");
    limited(&roll, &roll_as(&other, &fourth_id, 60), "MAX_KEYS_PER_ORG", "a roll at the org's cap (control API)");
    let r = c.admin("DELETE", &format!("/admin/orgs/{org}/api_keys/{fourth_id}"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c.admin("POST", &format!("/admin/orgs/{org}/api_keys/{again_id}/roll"), Some(json!({"grace_seconds": 1})));
    limited(&admin_roll, &r, "MAX_KEYS_PER_PARENT", "a roll of a child at its parent's cap (admin API)");
    limited(&roll, &roll_as(&root, &again_id, 60), "MAX_KEYS_PER_PARENT", "a roll at its parent's cap (control API)");
    let r = send_to(c.port, "GET", "/v1/audit?limit=100", &[("x-api-key", &other)], None);
    let entries = conforms(&find_op("listAudit"), &r, "audit after the rolls")["data"].as_array().unwrap().clone();
    let refused = entries
        .iter()
        .filter(|e| e["action"] == "key.roll_refused" && e["detail"]["code"] == "KEY_LIMIT_REACHED")
        .count();
    assert_eq!(refused, 4, "{entries:?}");
    // With no grace the same roll replaces the child: allowed at the cap.
    let r = roll_as(&root, &again_id, 0);
    assert_eq!(r.status, 201, "{}", r.text());
    let v = conforms(&roll, &r, "a roll with no grace at its parent's cap");
    assert_eq!(v["data"]["rolled_from"], again_id.as_str());
    limited(&create, &mint(&root, "one more"), "MAX_KEYS_PER_PARENT", "the parent still at its cap");
}

/// Sends a leaked-key report: `body` with the two GitHub headers (each
/// omitted when `None`) and a `Content-Type`.
fn report(port: u16, body: &[u8], key_id: Option<&str>, sig: Option<&str>, media: &str) -> Resp {
    let mut headers = vec![("content-type", media)];
    headers.extend(key_id.map(|k| ("github-public-key-identifier", k)));
    headers.extend(sig.map(|s| ("github-public-key-signature", s)));
    send(port, "POST", &find_op("verifyLeakedKeys").path, &headers, Some(body))
}

/// A report signed by `test-key-1`, as GitHub sends it.
fn signed_report(port: u16, body: &[u8]) -> Resp {
    report(port, body, Some("test-key-1"), Some(&github_signature(body)), "application/json")
}

/// `POST /v1/secret-scanning/verify` answers as documented: unsigned or
/// wrongly signed reports 401 (nothing revoked), other methods 405
/// (`Allow: POST`), bodies that are not a batch 400, oversized ones 413, no
/// `Content-Type` check; a signed batch 200 with one answer per match (the
/// token's SHA-256, never the token), the live keys revoked with their
/// descendants and audited `key.leaked` by `secret_scanning` with
/// `detail.url`; an unreadable key record 503; and without
/// `SECRET_SCANNING_KEYS`, 404.
#[test]
fn leaked_key_reports_are_documented() {
    let op = find_op("verifyLeakedKeys");
    let port = h().port;
    let org = h().org(true);
    let chat = find_op("postAiChat");
    let chat_status = |key: &str, origin: Option<&str>| {
        let mut headers = vec![("x-api-key", key)];
        headers.extend(origin.map(|o| ("origin", o)));
        let r = plain(port, &chat, "/v1/ai/chat", &headers);
        conforms(&chat, &r, "a chat");
        r.status
    };
    let (leaked, leaked_id) = h().key(&org, json!({"name": "pushed", "scopes": ["ai:chat", "control:read"]}));
    let r = send_to(
        port,
        "POST",
        "/v1/api_keys",
        &[("x-api-key", &leaked)],
        Some(&json!({"name": "its child", "scopes": ["ai:chat"]}).to_string()),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let child = conforms(&find_op("createApiKey"), &r, "a child")["data"].clone();
    let (child_key, child_id) = (child["plaintext"].as_str().unwrap(), child["id"].as_str().unwrap());
    let (widget, widget_id) =
        h().key(&org, json!({"name": "w", "kind": "widget", "scopes": ["ai:chat"], "allowed_origins": [SHOP]}));
    assert!(widget.starts_with("kw_pub_"), "{widget}");
    let (bystander, _) = h().key(&org, json!({"name": "safe", "scopes": ["ai:chat"]}));
    let (gone, gone_id) = h().key(&org, json!({"name": "revoked before", "scopes": ["ai:chat"]}));
    let r = h().admin("DELETE", &format!("/admin/orgs/{org}/api_keys/{gone_id}"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(chat_status(&leaked, None), 200);
    assert_eq!(chat_status(&widget, Some(SHOP)), 200);

    let url = "https://github.com/octo/repo/blob/abc/config.py";
    let long_url = format!("https://github.com/octo/site/blob/def/{}", "a".repeat(600));
    let long_type = "t".repeat(150);
    let matches = [
        (leaked.as_str(), "keyward_secret_key", url, "true_positive"),
        (
            "kw_live_thisisnotarealkeyatallbutlookslikeone0",
            "keyward_secret_key",
            "https://github.com/x",
            "false_positive",
        ),
        (widget.as_str(), "keyward_widget_key", long_url.as_str(), "true_positive"),
        (gone.as_str(), "keyward_secret_key", "https://github.com/y", "false_positive"),
        ("ghp_something_else", long_type.as_str(), "https://github.com/z", "false_positive"),
    ];
    let body = json!(matches
        .iter()
        .map(|(t, ty, u, _)| json!({"token": t, "type": ty, "url": u, "source": "content"}))
        .collect::<Vec<_>>())
    .to_string();
    let good = github_signature(body.as_bytes());

    // Not signed by a key of SECRET_SCANNING_KEYS: 401, nothing revoked.
    let tampered = body.replace("config.py", "config.rb");
    for (case, b, key_id, sig) in [
        ("no GitHub headers", &body, None, None),
        ("no signature", &body, Some("test-key-1"), None),
        ("no identifier", &body, None, Some(good.as_str())),
        ("an empty signature", &body, Some("test-key-1"), Some("")),
        ("a signature that is not base64", &body, Some("test-key-1"), Some("not base64!")),
        ("base64 that is not a DER signature", &body, Some("test-key-1"), Some("aGVsbG8=")),
        ("an unknown identifier", &body, Some("nope"), Some(good.as_str())),
        ("another key's identifier", &body, Some("other-key"), Some(good.as_str())),
        ("a signature of other bytes", &tampered, Some("test-key-1"), Some(good.as_str())),
    ] {
        let r = report(port, b.as_bytes(), key_id, sig, "application/json");
        assert_eq!(r.status, 401, "{case}: {}", r.text());
        assert_eq!(conforms(&op, &r, case)["error"]["code"], "SECRET_SCANNING_UNAUTHORIZED", "{case}");
    }
    assert_eq!(chat_status(&leaked, None), 200, "nothing revoked by a refused report");

    // Another method: 405 with `Allow: POST`, whatever the headers.
    for m in ["GET", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let r = send(
            port,
            m,
            &op.path,
            &[("github-public-key-identifier", "test-key-1"), ("github-public-key-signature", &good)],
            None,
        );
        assert_eq!(r.status, 405, "{m}: {}", r.text());
        assert_eq!(conforms(&op, &r, m)["error"]["code"], "METHOD_NOT_ALLOWED");
        assert_eq!(method_set(r.header("allow").unwrap()), path_methods(&op.path), "{m}: Allow");
    }

    // Signed, but not a batch: 400.
    let too_many = format!("[{}]", vec![r#"{"token":"t"}"#; keyward::scanning::MAX_TOKENS + 1].join(","));
    for (case, b) in [
        ("an object", b"{}".to_vec()),
        ("not JSON", b"[{\"token\":".to_vec()),
        ("a match without a token", br#"[{"type":"x","url":"https://github.com/x"}]"#.to_vec()),
        ("a token that is not a string", br#"[{"token":42}]"#.to_vec()),
        ("a match that is not an object", b"[\"kw_live_x\"]".to_vec()),
        ("not UTF-8", b"[{\"token\":\"\xff\"}]".to_vec()),
        ("too many matches", too_many.into_bytes()),
    ] {
        let r = signed_report(port, &b);
        assert_eq!(r.status, 400, "{case}: {}", r.text());
        assert_eq!(conforms(&op, &r, case)["error"]["code"], "INVALID_REQUEST", "{case}");
    }
    // The most matches a batch may hold, an empty batch, and a body of any
    // type (not checked): answered.
    let most = format!("[{}]", vec![r#"{"token":"t"}"#; keyward::scanning::MAX_TOKENS].join(","));
    let r = signed_report(port, most.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(conforms(&op, &r, "the most matches").as_array().unwrap().len(), keyward::scanning::MAX_TOKENS);
    let r = report(port, b"[]", Some("test-key-1"), Some(&github_signature(b"[]")), FORM);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(conforms(&op, &r, "an empty batch, a form Content-Type"), json!([]));

    // Over the limit: 413, before the signature.
    let max = keyward::scanning::MAX_BODY_BYTES;
    let big = vec![b' '; max + 1];
    let r = report(port, &big, None, None, "application/json");
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(conforms(&op, &r, "over 1 MiB, unsigned")["error"]["code"], "PAYLOAD_TOO_LARGE");
    let mut at_limit = b"[]".to_vec();
    at_limit.resize(max, b' ');
    let r = signed_report(port, &at_limit);
    assert_eq!(r.status, 200, "exactly the limit: {}", r.text());
    assert_eq!(conforms(&op, &r, "exactly 1 MiB"), json!([]));

    // Signed: one answer per match, in order, by hash; the live keys revoked.
    let r = signed_report(port, body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let rid = r.header("x-request-id").unwrap().to_owned();
    let text = r.text();
    for (t, _, _, _) in &matches {
        assert!(!text.contains(t), "a token echoed: {text}");
    }
    let answers = conforms(&op, &r, "a signed batch");
    let answers = answers.as_array().unwrap();
    assert_eq!(answers.len(), matches.len(), "{text}");
    for (a, (t, ty, _, label)) in answers.iter().zip(&matches) {
        let want = json!({"label": label, "token_hash": sha256_hex(t.as_bytes()), "token_type": ty.chars().take(100).collect::<String>()});
        assert_eq!(a, &want, "{t}");
    }
    assert_eq!(chat_status(&leaked, None), 401, "the leaked key is revoked");
    assert_eq!(chat_status(child_key, None), 401, "its child is revoked with it");
    assert_eq!(chat_status(&widget, Some(SHOP)), 401, "the leaked widget key is revoked");
    assert_eq!(chat_status(&bystander, None), 200, "another key of the org is not");
    // Reported again: the keys revoked as leaked are still true positives
    // (nothing is revoked twice: one audit entry each, below); the others
    // still false.
    let r = signed_report(port, body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let again = conforms(&op, &r, "the batch again");
    let labels: Vec<&str> = again.as_array().unwrap().iter().map(|a| a["label"].as_str().unwrap()).collect();
    let want: Vec<&str> = matches.iter().map(|m| m.3).collect();
    assert_eq!(labels, want, "{again}");

    // Audited: `key.leaked` by `secret_scanning` with where it was found
    // (cut to 500 characters), once; the child `key.revoked` with
    // `cascade_from`, by `secret_scanning` too.
    let (reader, _) = h().key(&org, json!({"name": "reader", "scopes": ["control:read"]}));
    let audit = find_op("listAudit");
    let r = send_to(port, "GET", "/v1/audit?limit=100", &[("x-api-key", &reader)], None);
    assert_eq!(r.status, 200, "{}", r.text());
    let entries = conforms(&audit, &r, "audit after a leak")["data"].as_array().unwrap().clone();
    let cut: String = long_url.chars().take(keyward::scanning::MAX_URL_LEN).collect();
    for (target, action, detail) in [
        (leaked_id.as_str(), "key.leaked", json!({ "url": url })),
        (widget_id.as_str(), "key.leaked", json!({ "url": cut })),
        (child_id, "key.revoked", json!({ "cascade_from": leaked_id })),
    ] {
        let found: Vec<&Value> = entries.iter().filter(|e| e["target"] == target).collect();
        let revocations: Vec<&&Value> = found.iter().filter(|e| e["action"] != "key.created").collect();
        assert_eq!(revocations.len(), 1, "{target}: {found:?}");
        let e = revocations[0];
        assert_eq!((e["action"].as_str(), e["actor"].as_str()), (Some(action), Some("secret_scanning")), "{e}");
        assert_eq!(e["detail"], detail, "{e}");
        assert_eq!(e["request_id"], rid.as_str(), "{e}");
    }
    assert!(
        !entries.iter().any(|e| e["target"] == gone_id.as_str() && e["action"] == "key.leaked"),
        "a key revoked before is not leaked again"
    );

    // A key record that cannot be read: 503 (retryable), before anything is
    // revoked (every lookup comes first); the retry without it revokes.
    // A key revoked as leaked by a batch that then failed answers
    // true_positive on the retry (leaked_at in its record).
    let (live, _) = h().key(&org, json!({"name": "live", "scopes": ["ai:chat"]}));
    let (broken, _) = h().key(&org, json!({"name": "broken", "scopes": ["ai:chat"]}));
    h().kv_put(&format!("key:{}", sha256_hex(broken.as_bytes())), "{not json");
    let partial =
        json!([{"token": live, "type": "k", "url": url}, {"token": broken, "type": "k", "url": url}]).to_string();
    let r = signed_report(port, partial.as_bytes());
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(conforms(&op, &r, "an unreadable key record")["error"]["code"], "SERVICE_UNAVAILABLE");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(chat_status(&live, None), 200, "nothing revoked before the failure");
    let retry = json!([{"token": live, "type": "k", "url": url}]).to_string();
    let r = signed_report(port, retry.as_bytes());
    assert_eq!(conforms(&op, &r, "the retry")[0]["label"], "true_positive");
    assert_eq!(chat_status(&live, None), 401, "revoked by the retry");

    // Without SECRET_SCANNING_KEYS the endpoint does not exist: 404 for
    // every method, signed or not.
    let b = bare();
    for m in ["POST", "GET"] {
        let r = send(
            b.port,
            m,
            &op.path,
            &[("github-public-key-identifier", "test-key-1"), ("github-public-key-signature", &good)],
            Some(body.as_bytes()),
        );
        assert_eq!(r.status, 404, "{m}: {}", r.text());
        assert_eq!(conforms(&op, &r, "no SECRET_SCANNING_KEYS")["error"]["code"], "ROUTE_NOT_FOUND");
    }
}
