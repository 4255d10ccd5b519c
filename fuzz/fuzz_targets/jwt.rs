//! `cargo fuzz run jwt`: the invariants are in `keyward_fuzz_checks::jwt`
//! (fuzz/src/jwt.rs), shared with `tests/fuzz_smoke.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keyward_fuzz_checks::jwt::check(data));
