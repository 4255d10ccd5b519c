//! A short, deterministic run of every fuzz target's checks on stable Rust
//! (the long runs are `make fuzz`, see fuzz/README.md): each target's
//! seeds (`fuzz/seeds/<target>/`) and a fixed set of mutations of them.
//! Known findings (fuzz/README.md, "Findings") are tolerated here, and
//! pinned: each one's reproducer must still violate its property, so the
//! entry is retired when keyward is fixed.

use std::path::{Path, PathBuf};

use keyward_fuzz_checks::{known_hits, smoke, with_strict, KNOWN, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Mutants per target: a few seconds each in a debug build.
fn mutants(target: &str) -> usize {
    match target {
        "policy" => 1_500,
        "admin_json" | "credentials" | "visitor_token" => 5_000,
        "jwt" => 5_000,
        _ => 10_000,
    }
}

fn smoke_target(name: &str) {
    let (_, check) = TARGETS.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("no target {name}"));
    let report = with_strict(false, || smoke::run(&fuzz_dir(), name, *check, mutants(name)));
    assert!(report.seeds > 0, "{name}: no seeds in fuzz/seeds/{name}/");
}

#[test]
fn path() {
    smoke_target("path");
}

#[test]
fn credentials() {
    smoke_target("credentials");
}

#[test]
fn origins() {
    smoke_target("origins");
}

#[test]
fn admin_json() {
    smoke_target("admin_json");
}

#[test]
fn control_query() {
    smoke_target("control_query");
}

#[test]
fn policy() {
    smoke_target("policy");
}

#[test]
fn cache_control() {
    smoke_target("cache_control");
}

#[test]
fn visitor_token() {
    smoke_target("visitor_token");
}

#[test]
fn jwt() {
    smoke_target("jwt");
}

#[test]
fn scanning() {
    smoke_target("scanning");
}

#[test]
fn every_target_is_smoked_and_built() {
    let cargo = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let this = std::fs::read_to_string(file!()).unwrap_or_default();
    for (name, _) in TARGETS {
        assert!(cargo.contains(&format!("name = \"{name}\"")), "fuzz/Cargo.toml has no binary {name}");
        assert!(fuzz_dir().join(format!("fuzz_targets/{name}.rs")).is_file(), "fuzz_targets/{name}.rs");
        assert!(fuzz_dir().join(format!("dict/{name}.dict")).is_file(), "dict/{name}.dict");
        assert!(this.is_empty() || this.contains(&format!("smoke_target(\"{name}\")")), "no smoke test for {name}");
    }
}

/// Each known finding still reproduces (strict: its check panics naming it)
/// and is tolerated otherwise. When one stops reproducing, keyward was
/// fixed: remove it from `KNOWN` and fuzz/README.md.
#[test]
fn known_findings_still_reproduce() {
    for k in KNOWN {
        let (_, check) = TARGETS.iter().find(|(n, _)| *n == k.target).expect("target of a known finding");
        let strict = with_strict(true, || std::panic::catch_unwind(|| check(k.input)));
        let message = strict.err().and_then(|e| e.downcast_ref::<String>().cloned()).unwrap_or_default();
        assert!(
            message.contains(&format!("known finding {}", k.id)),
            "{} no longer reproduces with {:?} (fixed? retire it from KNOWN and fuzz/README.md); got {message:?}",
            k.id,
            String::from_utf8_lossy(k.input)
        );
        with_strict(false, || check(k.input));
        assert!(known_hits().get(k.id).is_some_and(|&n| n > 0), "{} was not counted", k.id);
    }
}
