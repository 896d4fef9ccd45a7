//! Test support: in-process emulators of the products itsmc talks to.
//!
//! Each emulator is a real HTTP server on `127.0.0.1` that speaks the product's wire protocol, so the
//! production clients run unchanged against it; only the base URL differs. Test files pull these in
//! with `mod support;`.

pub mod browser;
#[allow(dead_code)]
pub mod cherwell;
#[allow(dead_code)]
pub mod entra;
pub mod harness;
#[allow(dead_code)]
pub mod identity;
#[allow(dead_code)]
pub mod itsm;
#[allow(dead_code)]
pub mod keyvault;
#[allow(dead_code)]
pub mod lambda_runtime;
#[allow(dead_code)]
pub mod serve;
// Declared in `serve` (every emulator has it, also where a bench includes the emulators one by one).
#[allow(unused_imports)]
pub use serve::capture;
#[allow(dead_code)]
pub mod tls;
// Every test binary that declares `mod support;` compiles the whole emulator, used or not.
#[allow(dead_code)]
pub mod logs_ingestion;
#[allow(dead_code)]
pub mod provance;
#[allow(dead_code)]
pub mod scsm;
#[allow(dead_code)]
pub mod servicenow;
