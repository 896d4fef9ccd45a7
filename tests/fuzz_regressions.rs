//! Replays what the fuzz targets in `fuzz/` found, on stable and without a fuzzer: every input kept in
//! `tests/fuzz-regressions/` (each one crashed a target before its fix) and every input of the committed
//! seed corpora `fuzz/corpus/*/`, through the same code as both targets (`fuzz/decide.rs`). Each input
//! either parses or is refused with an error that says something, and the decision step on an alert does
//! not panic.

use std::path::{Path, PathBuf};

#[path = "../fuzz/decide.rs"]
mod decide;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// What a fuzzing run adds to a corpus: named by its SHA-1, ignored by git (`fuzz/.gitignore`).
fn generated(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.len() == 40 && n.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// The committed files of `dir`, sorted; a missing directory has none.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut paths: Vec<PathBuf> =
        entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file() && !generated(p)).collect();
    paths.sort();
    paths
}

/// Runs both targets on one input; panics (naming the file) where a target would crash.
fn replay(path: &Path) -> bool {
    let body = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let outcome = std::panic::catch_unwind(|| match decide::parse(&body) {
        Ok(alert) => {
            decide::decide(&alert);
            true
        }
        Err(e) => {
            assert!(!e.to_string().is_empty(), "an error says what is wrong");
            false
        }
    });
    outcome.unwrap_or_else(|_| panic!("{} panics (see above)", path.display()))
}

#[test]
fn every_crash_the_fuzzer_found_is_fixed() {
    let inputs = files(&Path::new(ROOT).join("tests/fuzz-regressions"));
    for path in &inputs {
        replay(path);
    }
    println!("{} regression inputs replayed", inputs.len());
}

#[test]
fn every_seed_input_goes_through_both_targets() {
    let mut inputs = Vec::new();
    for target in ["alert_parse", "decide"] {
        let corpus = files(&Path::new(ROOT).join("fuzz/corpus").join(target));
        assert!(!corpus.is_empty(), "the seed corpus of {target} is committed");
        inputs.extend(corpus);
    }
    let alerts = inputs.iter().filter(|p| replay(p)).count();
    // The seeds start from the Azure Monitor fixtures: the decision step did run.
    assert!(alerts > 0, "none of {} seed inputs parses", inputs.len());
    println!("{} seed inputs replayed, {alerts} of them alerts", inputs.len());
}
