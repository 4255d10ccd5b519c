//! `cargo fuzz run path`: the invariants are in `keyward_fuzz_checks::path`
//! (fuzz/src/path.rs), shared with `tests/fuzz_smoke.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keyward_fuzz_checks::path::check(data));
