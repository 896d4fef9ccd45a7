//! The `itsmc` command: `itsmc serve` runs the connector (Azure Functions custom handler, or locally);
//! `itsmc sync` copies incidents and change requests into Log Analytics once, showing its progress.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "itsmc", version, about = "Azure Monitor alerts to ITSM work items")]
struct Cli {
    /// What to do; none at all inside AWS Lambda (`AWS_LAMBDA_RUNTIME_API` set) means `lambda`.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the alert route, the timer and health on 127.0.0.1.
    Serve {
        /// Port; else FUNCTIONS_CUSTOMHANDLER_PORT (set by the Functions host); else 7071.
        #[arg(long)]
        port: Option<u16>,
    },
    /// Sync incidents and change requests into Log Analytics now (as the timer does), with progress.
    Sync {
        /// Only this connection (default: all).
        #[arg(long)]
        connection: Option<String>,
        /// Start this many days back (1 to 120) instead of where the last sync stopped.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=120))]
        since: Option<u32>,
    },
    /// Build the zip a Linux Function App runs: host.json, the function folders and this binary.
    Package {
        /// Where to write it.
        #[arg(long, default_value = "itsmc.zip")]
        out: std::path::PathBuf,
        /// The Linux x86-64 binary to put in it (default: this one).
        #[arg(long)]
        binary: Option<std::path::PathBuf>,
    },
    /// Answer AWS Lambda invocations (Function URL, API Gateway HTTP API, EventBridge schedule).
    Lambda,
    /// Test a connection, or refresh its choice lists and templates from the ITSM tool.
    Connections {
        #[command(subcommand)]
        action: ConnectionAction,
    },
}

#[derive(Subcommand)]
enum ConnectionAction {
    /// Sign in and read; say what is wrong if it fails (exit code 1).
    Test { name: String },
    /// Read choice lists and templates, keep them, and check the connection's settings against them.
    Refresh { name: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Some(command) => command,
        // Lambda starts the bootstrap with no arguments.
        None if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() => Command::Lambda,
        None => {
            use clap::CommandFactory;
            let _ = Cli::command().print_help();
            return ExitCode::from(2);
        }
    };
    itsmc::logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("itsmc: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Serve { port } => serve(port).await,
            Command::Sync { connection, since } => sync(connection, since).await,
            Command::Connections { action } => connections(action).await,
            Command::Package { out, binary } => package(&out, binary),
            Command::Lambda => itsmc::lambda::run(itsmc::config::Config::from_env().map_err(|e| e.to_string())).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("itsmc: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(port: Option<u16>) -> Result<(), String> {
    let host_port = std::env::var("FUNCTIONS_CUSTOMHANDLER_PORT").ok();
    let under_functions_host = host_port.is_some();
    let port = match (port, host_port) {
        (Some(port), _) => port,
        (None, Some(raw)) => {
            raw.parse().map_err(|_| format!("FUNCTIONS_CUSTOMHANDLER_PORT: '{raw}' is not a port number"))?
        }
        (None, None) => 7071,
    };
    let config = itsmc::config::Config::from_env().map_err(|e| e.to_string())?;
    if under_functions_host && config.api_key.is_some() {
        return Err("ITSMC_API_KEY: remove it under the Functions host, whose function keys guard the routes and \
                    whose timer calls /function-sync without a key"
            .into());
    }
    let app = itsmc::App::start(config).await?;
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let listener =
        tokio::net::TcpListener::bind(address).await.map_err(|e| format!("cannot listen on {address}: {e}"))?;
    tracing::info!(%address, store = %app.intake.store.describe(), "itsmc ready");
    let worker = tokio::spawn(itsmc::outbox::run_worker(Arc::clone(&app.intake)));
    // Under the Functions host its timer trigger calls /function-sync; on its own, the server keeps time.
    let schedule = (!under_functions_host)
        .then(|| tokio::spawn(scheduled_ticks(Arc::clone(&app.intake), Arc::clone(&app.syncer))));
    let log_flusher = tokio::spawn(itsmc::sync::flush_log_every(Arc::clone(&app.syncer)));
    let served = axum::serve(listener, app.router()).with_graceful_shutdown(shutdown_signal()).await;
    worker.abort();
    log_flusher.abort();
    if let Some(schedule) = schedule {
        schedule.abort();
    }
    app.syncer.flush_log().await;
    served.map_err(|e| format!("the server stopped: {e}"))
}

async fn sync(connection: Option<String>, since_days: Option<u32>) -> Result<(), String> {
    use std::io::{IsTerminal, Write};
    let app = itsmc::App::start(itsmc::config::Config::from_env().map_err(|e| e.to_string())?).await?;
    let terminal = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let now = chrono::Utc::now();
    let scope_start = now - chrono::Duration::days(i64::from(since_days.unwrap_or(app.intake.config.sync.days)));
    let progress = |run: &itsmc::sync::run::KindReport| {
        if !terminal {
            return;
        }
        let seconds = started.elapsed().as_secs_f64().max(0.001);
        // The watermark walks from the start of the scope to now: how far it got says how long is left.
        let eta = itsmc::sync::kinds::parse_time(&run.watermark).map(|at| {
            let left = (now - at).num_seconds().max(0) as f64;
            let done = (at - scope_start).num_seconds().max(1) as f64;
            left * seconds / done
        });
        let _ = write!(
            std::io::stderr(),
            "\r{} {}: {} read, {} sent, {:.0} records/s, at {}{}    ",
            run.connection,
            run.kind,
            run.read,
            run.sent,
            run.read as f64 / seconds,
            run.watermark,
            eta.map(|s| format!(", about {s:.0} s left")).unwrap_or_default()
        );
    };
    let request = itsmc::sync::Request { connection, since_days };
    let report = app.syncer.run(&request, &progress).await?;
    if terminal {
        eprintln!();
    }
    if let Some(why) = report.skipped {
        return Err(format!("nothing synced: {why}"));
    }
    let mut failed = Vec::new();
    for run in &report.runs {
        println!("{run}");
        if let Some(error) = &run.error {
            failed.push(format!("{} {}: {error}", run.connection, run.kind));
        }
    }
    if failed.is_empty() { Ok(()) } else { Err(failed.join("; ")) }
}

fn package(out: &std::path::Path, binary: Option<std::path::PathBuf>) -> Result<(), String> {
    let binary = match binary {
        Some(path) => path,
        None => std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}; give --binary"))?,
    };
    let package = itsmc::package::write(out, &binary)?;
    println!("{}: {} entries, {:.1} MB", out.display(), package.entries, package.bytes as f64 / 1e6);
    Ok(())
}

async fn connections(action: ConnectionAction) -> Result<(), String> {
    let app = itsmc::App::start(itsmc::config::Config::from_env().map_err(|e| e.to_string())?).await?;
    let diagnosis = match action {
        ConnectionAction::Test { name } => itsmc::connections::test(&app.intake, &name).await?,
        ConnectionAction::Refresh { name } => {
            let refreshed = itsmc::connections::refresh(&app.intake, &name).await?;
            for (field, choices) in &refreshed.configuration.choices {
                println!("{field}: {}", choices.iter().map(|c| c.label.as_str()).collect::<Vec<_>>().join(", "));
            }
            for template in &refreshed.configuration.templates {
                println!("template: {}", template.name);
            }
            refreshed.diagnosis
        }
    };
    if diagnosis.ok {
        println!("ok: {}", diagnosis.message);
        Ok(())
    } else {
        Err(format!("{}: {}", diagnosis.code, diagnosis.message))
    }
}

/// On its own (no Functions host), the server keeps time: the timer's tick on `ITSMC_SYNC_SCHEDULE`.
async fn scheduled_ticks(intake: Arc<itsmc::intake::Intake>, syncer: Arc<itsmc::sync::Syncer>) {
    loop {
        let now = chrono::Utc::now();
        let Some(next) = intake.config.sync.schedule.next_after(now) else {
            tracing::warn!("ITSMC_SYNC_SCHEDULE names no time in the next five years; the local timer does not run");
            return;
        };
        tokio::time::sleep((next - now).to_std().unwrap_or_default()).await;
        match itsmc::timer::tick(&intake, &syncer).await {
            Ok(tick) => tick.logs.iter().for_each(|line| tracing::info!("{line}")),
            Err(e) => tracing::warn!(error = %e, "the scheduled tick failed"),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
