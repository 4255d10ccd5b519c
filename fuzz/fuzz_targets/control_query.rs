//! `cargo fuzz run control_query`: the invariants are in `keyward_fuzz_checks::control_query`
//! (fuzz/src/control_query.rs), shared with `tests/fuzz_smoke.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keyward_fuzz_checks::control_query::check(data));
