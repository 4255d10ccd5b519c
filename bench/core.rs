//! Native benchmark of the core decision (`make bench`, or
//! `cargo bench --bench core`).
//!
//! `decision` is the decision for one allowed request as the performance
//! issue defines it, in the order the shell (`src/edge/gate.rs`) runs it:
//! canonicalize the path, pick and format-check the credential (checksum),
//! hash it into its KV key, decode the key and org records as they come back
//! from KV (JSON text), and decide (policy match, scopes, origin rules).
//! `decision_and_signing` adds what the shell computes next for the proxy:
//! the key's merged rate limits and the signed identity headers — all the
//! CPU keyward spends on an allowed request outside I/O. The policy is
//! parsed, and the HMAC key schedule prepared, once outside the timed loop,
//! as the shell does once per isolate.
//!
//! `sha256_floor` is SHA-256 of the same token alone: the one cost no
//! design can avoid (keys are stored only as hashes). The other entries
//! break `decision` down step by step.

use divan::{black_box, Bencher};
use keyward::authorize::{authorize, extract_credential, parse_key, Config, Facts, Grant, Records};
use keyward::path::CanonicalPath;
use keyward::policy::Policy;
use keyward::ratelimit::merge_limits;
use keyward::records::{KeyRecord, OrgRecord};
use keyward::signing::{identity_headers, SigningKey};
use keyward::token::{generate, ApiKey, KeyHash, KeyKind};

const METHOD: &str = "POST";
const RAW_PATH: &str = "/v1/ai/chat";
const QUERY: &str = "";
const SECRET: &[u8] = b"bench-signing-secret-0123456789abcdef";
const REQUEST_ID: &str = "req_0123456789abcdef01234567";
const NOW_MS: i64 = 1_780_000_000_000;
const ORG_JSON: &str = r#"{"id":"org_bench","name":"Bench Org","baa_active":true,"updated_at":1779999999000}"#;

/// Everything that exists before a request arrives: the policy (parsed once
/// per isolate), the config, a key and its KV records as JSON text.
struct World {
    policy: Policy,
    signing: SigningKey,
    config: Config,
    authorization: String,
    token: String,
    key_json: String,
}

fn world() -> World {
    let config = Config::default();
    let key = generate(&config.format, KeyKind::Secret, &[7u8; 32]);
    let key_json = format!(
        concat!(
            r#"{{"id":"01JBENCH0000000000000000KY","org_id":"org_bench","name":"bench","kind":"secret","#,
            r#""scopes":["ai:chat"],"prefix":"{}","last_four":"{}","created_at":1779999999000,"#,
            r#""rate_limits":[{{"name":"minute","limit":1000000,"window_seconds":60}}]}}"#
        ),
        key.prefix, key.last_four
    );
    let policy = Policy::default_policy().unwrap();
    let signing = SigningKey::new(SECRET);
    let w = World {
        policy,
        signing,
        config,
        authorization: format!("Bearer {}", key.plaintext),
        token: key.plaintext,
        key_json,
    };
    // The fixture must be an allowed request, or the benchmark measures a refusal.
    assert!(decide_and_sign(&w).iter().any(|(h, _)| *h == "X-Keyward-Signature"), "the request must be allowed");
    w
}

/// The decision for one request: returns the grant, the key record and the
/// canonical path.
fn decide(w: &World) -> (Grant, KeyRecord, CanonicalPath) {
    let path = CanonicalPath::parse(black_box(RAW_PATH)).unwrap();
    let token = extract_credential(Some(black_box(w.authorization.as_str())), None).unwrap();
    let presented = parse_key(&w.config.format, token).unwrap();
    let kv_key = presented.hash().kv_key();
    black_box(&kv_key);
    let key: KeyRecord = serde_json::from_str(black_box(&w.key_json)).unwrap();
    let org: OrgRecord = serde_json::from_str(black_box(ORG_JSON)).unwrap();
    let facts = Facts::bare(black_box(METHOD), &path);
    let records = Records { key: Some(&key), org: Some(&org), user: None };
    let grant = authorize(&facts, presented.kind(), &records, &w.policy, &w.config, black_box(NOW_MS)).unwrap();
    (grant, key, path)
}

/// The decision plus the proxy's preparation: merged limits and the signed
/// identity headers.
fn decide_and_sign(w: &World) -> Vec<(&'static str, String)> {
    let (grant, key, path) = decide(w);
    black_box(merge_limits(w.policy.default_rate_limits(), &key.rate_limits));
    identity_headers(&grant, &w.signing, REQUEST_ID, METHOD, path.as_str(), QUERY, NOW_MS / 1000)
}

fn main() {
    divan::main();
}

/// The decision of one allowed request (no I/O).
#[divan::bench(sample_count = 1000)]
fn decision(b: Bencher) {
    let w = world();
    b.bench_local(|| decide(&w));
}

/// The decision and the proxy's preparation (limits, signed identity).
#[divan::bench(sample_count = 1000)]
fn decision_and_signing(b: Bencher) {
    let w = world();
    b.bench_local(|| decide_and_sign(&w));
}

/// SHA-256 of the same token: the floor.
#[divan::bench(sample_count = 1000)]
fn sha256_floor(b: Bencher) {
    let w = world();
    b.bench_local(|| KeyHash::of(black_box(&w.token)));
}

/// The step-by-step breakdown of `decision`.
mod steps {
    use super::*;

    #[divan::bench]
    fn path_parse() -> CanonicalPath {
        CanonicalPath::parse(black_box(RAW_PATH)).unwrap()
    }

    #[divan::bench]
    fn key_format_check(b: Bencher) {
        let w = world();
        b.bench_local(|| {
            let token = extract_credential(Some(black_box(w.authorization.as_str())), None).unwrap();
            parse_key(&w.config.format, token).unwrap().kind()
        });
    }

    #[divan::bench]
    fn kv_key_of_hash(b: Bencher) {
        let w = world();
        b.bench_local(|| KeyHash::of(black_box(&w.token)).kv_key());
    }

    #[divan::bench]
    fn records_decode(b: Bencher) {
        let w = world();
        b.bench_local(|| {
            let key: KeyRecord = serde_json::from_str(black_box(&w.key_json)).unwrap();
            let org: OrgRecord = serde_json::from_str(black_box(ORG_JSON)).unwrap();
            (key, org)
        });
    }

    #[divan::bench]
    fn authorize_only(b: Bencher) {
        let w = world();
        let path = CanonicalPath::parse(RAW_PATH).unwrap();
        let presented = ApiKey::parse(&w.config.format, &w.token).unwrap();
        let key: KeyRecord = serde_json::from_str(&w.key_json).unwrap();
        let org: OrgRecord = serde_json::from_str(ORG_JSON).unwrap();
        b.bench_local(|| {
            let facts = Facts::bare(black_box(METHOD), &path);
            let records = Records { key: Some(&key), org: Some(&org), user: None };
            authorize(&facts, presented.kind(), &records, &w.policy, &w.config, black_box(NOW_MS)).unwrap()
        });
    }

    #[divan::bench]
    fn sign_identity(b: Bencher) {
        let w = world();
        let path = CanonicalPath::parse(RAW_PATH).unwrap();
        let presented = ApiKey::parse(&w.config.format, &w.token).unwrap();
        let key: KeyRecord = serde_json::from_str(&w.key_json).unwrap();
        let org: OrgRecord = serde_json::from_str(ORG_JSON).unwrap();
        let facts = Facts::bare(METHOD, &path);
        let records = Records { key: Some(&key), org: Some(&org), user: None };
        let grant = authorize(&facts, presented.kind(), &records, &w.policy, &w.config, NOW_MS).unwrap();
        b.bench_local(|| {
            identity_headers(black_box(&grant), &w.signing, REQUEST_ID, METHOD, path.as_str(), QUERY, NOW_MS / 1000)
        });
    }

    /// A garbage credential: refused by the format check, before any hash
    /// or storage read.
    #[divan::bench]
    fn garbage_key_refusal(b: Bencher) {
        let config = Config::default();
        b.bench_local(|| {
            let token = extract_credential(Some(black_box("Bearer not-a-key-at-all-0123456789")), None).unwrap();
            parse_key(&config.format, token).is_err()
        });
    }
}
