//! `cargo fuzz run cache_control`: the invariants are in `keyward_fuzz_checks::cache_control`
//! (fuzz/src/cache_control.rs), shared with `tests/fuzz_smoke.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keyward_fuzz_checks::cache_control::check(data));
