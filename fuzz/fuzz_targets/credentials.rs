//! `cargo fuzz run credentials`: the invariants are in `keyward_fuzz_checks::credentials`
//! (fuzz/src/credentials.rs), shared with `tests/fuzz_smoke.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keyward_fuzz_checks::credentials::check(data));
