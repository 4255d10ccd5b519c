//! `cargo fuzz run admin_json`: the invariants are in `keyward_fuzz_checks::admin_json`
//! (fuzz/src/admin_json.rs), shared with `tests/fuzz_smoke.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keyward_fuzz_checks::admin_json::check(data));
