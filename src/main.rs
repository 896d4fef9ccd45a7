//! The `itsmc` command: `itsmc serve` runs the connector (Azure Functions custom handler, or locally).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "itsmc", version, about = "Azure Monitor alerts to ITSM work items")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the alert route, the timer and health on 127.0.0.1.
    Serve {
        /// Port; else FUNCTIONS_CUSTOMHANDLER_PORT (set by the Functions host); else 7071.
        #[arg(long)]
        port: Option<u16>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    itsmc::logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("itsmc: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { port } => serve(port).await,
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
    let port = match port {
        Some(port) => port,
        None => match std::env::var("FUNCTIONS_CUSTOMHANDLER_PORT") {
            Ok(raw) => {
                raw.parse().map_err(|_| format!("FUNCTIONS_CUSTOMHANDLER_PORT: '{raw}' is not a port number"))?
            }
            Err(_) => 7071,
        },
    };
    let app = itsmc::App::start(itsmc::config::Config::from_env().map_err(|e| e.to_string())?).await?;
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let listener =
        tokio::net::TcpListener::bind(address).await.map_err(|e| format!("cannot listen on {address}: {e}"))?;
    tracing::info!(%address, store = %app.intake.store.describe(), "itsmc ready");
    let worker = tokio::spawn(itsmc::outbox::run_worker(Arc::clone(&app.intake)));
    let served = axum::serve(listener, app.router()).with_graceful_shutdown(shutdown_signal()).await;
    worker.abort();
    served.map_err(|e| format!("the server stopped: {e}"))
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
