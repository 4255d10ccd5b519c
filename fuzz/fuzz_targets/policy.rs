//! `cargo fuzz run policy`: the invariants are in `keyward_fuzz_checks::policy`
//! (fuzz/src/policy.rs), shared with `tests/fuzz_smoke.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keyward_fuzz_checks::policy::check(data));
