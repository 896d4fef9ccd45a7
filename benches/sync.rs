//! Load harness for function-sync: the release `itsmc sync` as its own process, reading incidents from
//! the in-process ServiceNow emulator and sending them over TLS to the in-process Logs Ingestion emulator
//! (which counts rows and distinct numbers without keeping them, so the memory measured is itsmc's), with
//! a managed identity token from the identity emulator. Measures records per second, itsmc's CPU per record
//! and its peak RSS (`VmHWM`) for each backlog size, then the requests an idle incremental run makes.
//!
//! `cargo bench --bench sync` syncs 100,000 and 1,000,000 incidents (`SYNC_BENCH_SIZES`, comma-separated);
//! under `cargo test` it syncs 2,000 so the harness stays working.

#[allow(dead_code)]
#[path = "../tests/support/identity.rs"]
mod identity;
#[allow(dead_code)]
#[path = "../tests/support/logs_ingestion.rs"]
mod logs_ingestion;
#[allow(dead_code)]
#[path = "support/proc.rs"]
mod proc;
#[allow(dead_code)]
#[path = "../tests/support/serve.rs"]
mod serve;
#[allow(dead_code)]
#[path = "../tests/support/servicenow.rs"]
mod servicenow;
#[allow(dead_code)]
#[path = "../tests/support/tls.rs"]
mod tls;

use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Utc;

struct Run {
    seconds: f64,
    cpu: f64,
    peak_rss_kib: u64,
    stdout: String,
}

/// Runs `itsmc sync` with `args` and samples its memory high-water mark and CPU until it exits.
fn itsmc_sync(args: &[&str], env: &[(String, String)]) -> Run {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_itsmc"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("itsmc starts");
    let pid = child.id();
    let (mut peak, mut cpu) = (0, 0.0);
    loop {
        peak = peak.max(proc::status_kib(pid, "VmHWM:"));
        cpu = f64::max(cpu, proc::cpu_seconds(pid));
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let seconds = started.elapsed().as_secs_f64();
    let output = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "itsmc sync failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    Run { seconds, cpu, peak_rss_kib: peak, stdout }
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let sizes: Vec<usize> = match std::env::var("SYNC_BENCH_SIZES") {
        Ok(raw) => raw.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
        Err(_) if benching => vec![100_000, 1_000_000],
        Err(_) => vec![2_000],
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let _guard = runtime.enter();
    for size in sizes {
        let servicenow = servicenow::ServiceNowEmulator::start(servicenow::EmulatorConfig::default());
        let identity = identity::IdentityEmulator::start(identity::IdentityConfig::default());
        let ca = tls::TestCa::new();
        let ingestion = logs_ingestion::LogsIngestionEmulator::start(&ca, identity.tokens());
        ingestion.keep_rows(false);
        let now = Utc::now();
        let seeding = Instant::now();
        servicenow.seed_incidents(size, now - chrono::Duration::days(119), now - chrono::Duration::minutes(1));
        println!("seeded {size} incidents in {:.1} s", seeding.elapsed().as_secs_f64());
        let data = tempfile::tempdir().unwrap();
        let env: Vec<(String, String)> = [
            ("IDENTITY_ENDPOINT", identity.endpoint()),
            ("IDENTITY_HEADER", identity::DEFAULT_IDENTITY_HEADER.to_string()),
            ("ITSMC_CA_FILE", ca.ca_file().display().to_string()),
            ("ITSMC_LOGS_ENDPOINT", ingestion.url()),
            ("ITSMC_DCR_IMMUTABLE_ID", ingestion.dcr_immutable_id()),
            ("ITSMC_PRODUCT", "servicenow".into()),
            ("ITSMC_CONNECTION_NAME", "bench".into()),
            ("ITSMC_URL", servicenow.url()),
            ("ITSMC_USERNAME", servicenow::DEFAULT_USERNAME.into()),
            ("ITSMC_PASSWORD", servicenow::DEFAULT_PASSWORD.into()),
            ("ITSMC_DATA_DIR", data.path().display().to_string()),
            ("ITSMC_SYNC_KINDS", "Incident".into()),
            ("ITSMC_SYNC_BUDGET_SECS", "3600".into()),
            ("RUST_LOG", "warn".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();

        let first = itsmc_sync(&["sync", "--since", "120"], &env);
        let distinct = ingestion.distinct_ids(logs_ingestion::SERVICE_DESK_STREAM, "ServiceDeskId_s");
        assert_eq!(distinct, size, "every incident arrived once:\n{}", first.stdout);
        assert_eq!(ingestion.row_count(logs_ingestion::SERVICE_DESK_STREAM), size);
        let uploads = ingestion
            .requests()
            .iter()
            .filter(|r| r.stream.as_deref() == Some(logs_ingestion::SERVICE_DESK_STREAM))
            .count();
        println!(
            "sync of {size} incidents: {:.2} s = {:.0} records/s; itsmc CPU {:.1} us/record; peak RSS {:.1} MB; {uploads} uploads",
            first.seconds,
            size as f64 / first.seconds,
            first.cpu * 1e6 / size as f64,
            first.peak_rss_kib as f64 / 1024.0,
        );

        servicenow.clear_requests();
        let idle = itsmc_sync(&["sync"], &env);
        let reads = servicenow.requests().iter().filter(|r| r.path.ends_with("/table/incident")).count();
        println!("idle incremental run: {reads} request(s) to ServiceNow for incidents, {:.2} s", idle.seconds);
        assert_eq!(reads, 1, "{}", idle.stdout);
    }
}
