//! Fuzzes the decision step: any bytes go through `itsmc::alert::parse`, and an alert then through what
//! the alert path does before its first store write (delivery id, correlation keys, template scope, work
//! item content, for every work item type and grouping; field templates and search rows), in
//! `fuzz/decide.rs`. None of it may panic. The seed corpus is `fuzz/corpus/decide/`; crashes found are kept
//! in `tests/fuzz-regressions/` and replayed by `tests/fuzz_regressions.rs`.
//!
//! Run (from `fuzz/`): `RUSTC_BOOTSTRAP=1 cargo fuzz run decide -- -max_total_time=600 -max_len=65536`

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../decide.rs"]
mod decide;

fuzz_target!(|body: &[u8]| {
    if let Ok(alert) = decide::parse(body) {
        decide::decide(&alert);
    }
});
