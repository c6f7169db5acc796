#![no_main]
//! Fuzz target `reencode`: see `fuzz/checks.rs` for what is checked.

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::reencode_text(data);
});
