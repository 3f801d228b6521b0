#![no_main]
//! Fuzz target; the checks live in `fuzz/checks.rs` (shared with `tests/fuzz_smoke.rs`).

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::metadata_bcs(data));
