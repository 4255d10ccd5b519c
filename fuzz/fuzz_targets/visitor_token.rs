//! `cargo fuzz run visitor_token`: the invariants are in `keyward_fuzz_checks::visitor_token`
//! (fuzz/src/visitor_token.rs), shared with `tests/fuzz_smoke.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keyward_fuzz_checks::visitor_token::check(data));
