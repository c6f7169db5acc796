#![no_main]
//! Fuzz target `notify_payload`: see `fuzz/checks.rs` for what is checked.

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::notify_payload(data);
});
