//! `cargo fuzz run origins`: the invariants are in `keyward_fuzz_checks::origins`
//! (fuzz/src/origins.rs), shared with `tests/fuzz_smoke.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keyward_fuzz_checks::origins::check(data));
