//! From `exec` to ready: how long the `itsmc` binary takes from being started until its readiness probe
//! (`GET /`, what the Functions host polls before it forwards anything) answers 200. Each run starts a
//! fresh process in a fresh directory on the embedded defaults and polls the port every 100 µs; the
//! figure includes the poll's granularity and the probe's own answer. With `ITSMC_TEST_AZURITE_TABLE` set
//! (as `.ci/run` does) a second series keeps the state in Azurite's Table Storage, where start-up also
//! creates the four tables if missing. Target: <= 10 ms to ready. Also reported: the binary's size.
//!
//! Run: `cargo bench --bench startup` (`-- --runs N`, default 30; `--test` runs one of each).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET /` answered 200, on a connection of its own.
fn ready(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// Milliseconds from spawn to ready, for one fresh process.
fn one_start(settings: &[(&str, String)]) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_itsmc"))
        .args(["serve", "--port", &port.to_string()])
        .current_dir(dir.path())
        .env_clear()
        .envs(settings.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("itsmc starts");
    let elapsed = loop {
        if ready(port) {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(20), "itsmc was not ready in 20 s");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("itsmc exited before it was ready: {status}");
        }
        std::thread::sleep(Duration::from_micros(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    elapsed.as_secs_f64() * 1000.0
}

fn report(name: &str, mut millis: Vec<f64>) {
    millis.sort_by(f64::total_cmp);
    let at = |q: f64| millis[((millis.len() - 1) as f64 * q).round() as usize];
    println!(
        "startup/{name}: {} runs, to ready median {:.2} ms, p90 {:.2} ms, min {:.2} ms, max {:.2} ms",
        millis.len(),
        at(0.5),
        at(0.9),
        millis[0],
        millis[millis.len() - 1]
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let test_mode = args.iter().any(|a| a == "--test");
    let runs = if test_mode {
        1
    } else {
        args.iter().position(|a| a == "--runs").and_then(|i| args.get(i + 1)).and_then(|n| n.parse().ok()).unwrap_or(30)
    };
    let binary = std::fs::metadata(env!("CARGO_BIN_EXE_itsmc")).map(|m| m.len()).unwrap_or(0);
    println!("binary: {} ({:.1} MB)", env!("CARGO_BIN_EXE_itsmc"), binary as f64 / 1e6);

    let embedded: Vec<f64> = (0..runs).map(|_| one_start(&[])).collect();
    report("embedded", embedded);

    if let Ok(endpoint) = std::env::var("ITSMC_TEST_AZURITE_TABLE") {
        let key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
        let connection = format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};TableEndpoint={endpoint}"
        );
        // One prefix for every run: the first creates the tables, the rest find them, as a restarted app does.
        let settings = [("AzureWebJobsStorage", connection), ("ITSMC_TABLE_PREFIX", "benchstartup".to_string())];
        let table: Vec<f64> = (0..runs).map(|_| one_start(&settings)).collect();
        report("table_storage", table);
    }
}
