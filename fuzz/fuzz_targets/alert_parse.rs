//! Fuzzes `itsmc::alert::parse`: any bytes become an alert or a `ParseError` with a documented code and a
//! non-empty message, never a panic. The seed corpus is `fuzz/corpus/alert_parse/` (the Azure Monitor
//! fixtures); crashes found are kept in `tests/fuzz-regressions/` and replayed by
//! `tests/fuzz_regressions.rs`.
//!
//! Run (from `fuzz/`): `RUSTC_BOOTSTRAP=1 cargo fuzz run alert_parse -- -max_total_time=600 -max_len=65536`

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)] // `decide` is the other target's.
#[path = "../decide.rs"]
mod decide;

fuzz_target!(|body: &[u8]| {
    let _ = decide::parse(body);
});
