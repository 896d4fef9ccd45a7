//! A test server on a thread and runtime of its own, so it keeps answering whatever the test's runtime does
//! (a paused clock, a blocked thread, a test that has finished), and stops when dropped.

use std::future::Future;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use axum::Router;
use tokio::sync::oneshot;

/// The capture of logs, error bodies and secrets for `.ci/scan-secrets`; here, where every emulator can reach it.
#[path = "capture.rs"]
pub mod capture;

/// A poisoned lock only means a test thread panicked mid-call; the state is still usable and the server must keep
/// answering.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A random UUID, formatted `8-4-4-4-12` in lowercase hex.
pub fn random_uuid() -> String {
    let hex = hex::encode(rand::random::<[u8; 16]>());
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

pub struct Server {
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Server {
    /// Serve `app` over plain HTTP on `listener` until stopped.
    pub fn http(name: &str, listener: std::net::TcpListener, app: Router) -> Server {
        listener.set_nonblocking(true).expect("non-blocking listener");
        Server::spawn(name, move |stopped| async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        })
    }

    /// Run `serve` (given the signal to stop on) on a new thread and runtime named `name`.
    pub fn spawn<F, Fut>(name: &str, serve: F) -> Server
    where
        F: FnOnce(oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        capture::init();
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a runtime for the test server");
                runtime.block_on(serve(stopped));
                // Dropping the runtime cancels every connection task still open, which closes its socket.
                drop(runtime);
            })
            .expect("a thread for the test server");
        Server { stop: Mutex::new(Some(stop)), thread: Mutex::new(Some(thread)) }
    }

    /// Stop serving and wait for the thread; later calls do nothing.
    pub fn shutdown(&self) {
        if let Some(stop) = lock(&self.stop).take() {
            let _ = stop.send(());
        }
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}
