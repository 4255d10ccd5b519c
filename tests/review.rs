//! Review (adversarial) end-to-end tests on `wrangler dev`: what refused
//! requests cost a key's guard. Tests documented as "review finding, fixed"
//! reproduced a finding of the review of the leased-quota change and now
//! guard its fix; the others pin down what was checked and found sound.
//! Run with `cargo test --test review` after `make build`.
//!
//! (The concurrency findings — probes and lease questions not
//! single-flighted per key — are demonstrated natively in
//! `src/flow/review_tests.rs`: on one machine the guard answers in about a
//! millisecond, so a burst over loopback rarely overlaps a question.)
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use serde_json::json;

const LEASE_MS: u64 = 1000;
const SHOP: &str = "https://shop.example.com";

/// Usage roll-ups an hour apart: the only rows a guard writes during a test
/// are the ones requests cause.
fn h() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| Harness::start(Options { origin_url: None, vars: vec![("USAGE_ROLLUP_SECONDS", "3600".into())] }))
}

fn widget_chat(h: &Harness, key: &str, ip: &str) -> Resp {
    let auth = format!("Bearer {key}");
    h.send(
        "POST",
        "/v1/ai/chat",
        &[("authorization", &auth), ("origin", SHOP), ("cf-connecting-ip", ip), ("content-type", "application/json")],
        Some(b"{}"),
    )
}

fn set_baa(h: &Harness, org: &str, on: bool) {
    let r = h.admin("PUT", &format!("/admin/orgs/{org}"), Some(json!({"name": org, "baa_active": on})));
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Review finding, fixed: a public widget key (strict, the default mode) of an org whose
/// BAA lapsed. Every request passes the key-only pre-check, so the guard
/// counts it (a row written) before the org record refuses it, and the
/// worker then refunds it (a second call). The refund gives the unit back,
/// so the rate limit never caps the flood: one guard write and two guard
/// calls per refused request, from anyone who copies the key off the page.
#[test]
fn review_baa_refusals_of_a_public_widget_key_write_the_guard_per_request() {
    let h = h();
    let org = h.org(true);
    let (key, key_id) = h.key(
        &org,
        json!({"name": "w", "scopes": ["ai:chat"], "kind": "widget", "allowed_origins": [SHOP],
               "rate_limits": [{"name": "minute", "limit": 1000, "window_seconds": 60}]}),
    );
    assert_eq!(widget_chat(h, &key, "198.51.100.1").status, 200);
    set_baa(h, &org, false);
    let before = h.guard_stats(&org, &key_id);
    let started = std::time::Instant::now();
    for i in 0..30 {
        widget_chat(h, &key, &format!("198.51.100.{}", 10 + i)).assert_error(402, "BAA_REQUIRED");
    }
    let elapsed_ms = started.elapsed().as_millis() as u64;
    // The refunds run after the responses (waitUntil).
    std::thread::sleep(Duration::from_millis(300));
    let after = h.guard_stats(&org, &key_id);
    let written = after["rows_written"].as_u64().unwrap() - before["rows_written"].as_u64().unwrap();
    let spent = guard_calls(&after) - guard_calls(&before);
    let budget = 4 * (elapsed_ms / LEASE_MS + 1);
    // The first refusal ran the guard's check concurrently with the records
    // (the isolate had not seen them refuse): one admission's rows (counters
    // and visitor) and its refund. From then on the records are read first.
    assert!(
        written <= 2 && spent <= budget,
        "30 refused requests in {elapsed_ms} ms: {written} rows written, {spent} guard calls (budget {budget}); {before} -> {after}"
    );
}

/// Checked and sound: the same BAA-lapsed flood on a leased widget key
/// writes nothing and stays at the edge (the guard decides on the facts
/// before it counts).
#[test]
fn review_baa_refusals_of_a_leased_widget_key_cost_no_write() {
    let h = h();
    let org = h.org(true);
    let (key, key_id) = h.key(
        &org,
        json!({"name": "w", "scopes": ["ai:chat"], "kind": "widget", "allowed_origins": [SHOP], "consistency": "leased",
               "rate_limits": [{"name": "minute", "limit": 1000, "window_seconds": 60}]}),
    );
    assert_eq!(widget_chat(h, &key, "198.51.100.1").status, 200);
    set_baa(h, &org, false);
    std::thread::sleep(Duration::from_millis(LEASE_MS + 200));
    let before = h.guard_stats(&org, &key_id);
    let started = std::time::Instant::now();
    for i in 0..30 {
        widget_chat(h, &key, &format!("198.51.100.{}", 10 + i)).assert_error(402, "BAA_REQUIRED");
    }
    let elapsed_ms = started.elapsed().as_millis() as u64;
    std::thread::sleep(Duration::from_millis(300));
    let after = h.guard_stats(&org, &key_id);
    assert_eq!(after["rows_written"], before["rows_written"], "{before} -> {after}");
    let spent = guard_calls(&after) - guard_calls(&before);
    assert!(spent <= 4 * (elapsed_ms / LEASE_MS + 1), "{spent} guard calls in {elapsed_ms} ms");
}
