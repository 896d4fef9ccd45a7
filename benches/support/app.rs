//! itsmc on its embedded defaults in a temporary data directory, for benchmarks that call it in-process.

/// The app and the directory its store lives in (removed when dropped).
pub fn embedded(runtime: &tokio::runtime::Runtime) -> (itsmc::App, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().display().to_string();
    let config = itsmc::config::Config::from_lookup(|name| (name == "ITSMC_DATA_DIR").then(|| data_dir.clone()))
        .expect("the embedded defaults");
    (runtime.block_on(itsmc::App::start(config)).expect("itsmc starts"), dir)
}
