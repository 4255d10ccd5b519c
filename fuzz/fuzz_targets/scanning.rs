//! `cargo fuzz run scanning`: the invariants are in `keyward_fuzz_checks::scanning`
//! (fuzz/src/scanning.rs), shared with `tests/fuzz_smoke.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keyward_fuzz_checks::scanning::check(data));
