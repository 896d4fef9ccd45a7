//! Logging: human-readable lines on a terminal, JSON when `ITSMC_LOG_FORMAT=json` (Application Insights
//! and CloudWatch parse it). The level comes from `RUST_LOG`, default `info`.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let json = std::env::var("ITSMC_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
