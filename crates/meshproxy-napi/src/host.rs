//! The runtime a proxy's data path runs on, and how it is stopped.
//!
//! One worker (the default, a sidecar's size) is a current-thread runtime driven by one dedicated
//! thread: no work-stealing machinery, no cross-thread wakeups between a request's downstream and
//! upstream tasks. More workers are a multi-thread runtime. Either way the runtime is shut down
//! off the async path (a runtime must never be dropped from async code).

use std::time::Duration;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::sync::oneshot;

pub enum RuntimeHost {
    Single { handle: Handle, stop: oneshot::Sender<()>, thread: std::thread::JoinHandle<()> },
    Multi(Runtime),
}

impl RuntimeHost {
    pub fn new(workers: usize) -> std::io::Result<Self> {
        if workers <= 1 {
            let rt = Builder::new_current_thread().enable_all().build()?;
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new().name("meshproxy-worker".into()).spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                });
                // Tasks still queued (connections being torn down) get a moment, then go.
                rt.shutdown_timeout(Duration::from_secs(2));
            })?;
            Ok(RuntimeHost::Single { handle, stop, thread })
        } else {
            let rt = Builder::new_multi_thread()
                .worker_threads(workers)
                .thread_name("meshproxy-worker")
                .enable_all()
                .build()?;
            Ok(RuntimeHost::Multi(rt))
        }
    }

    pub fn handle(&self) -> Handle {
        match self {
            RuntimeHost::Single { handle, .. } => handle.clone(),
            RuntimeHost::Multi(rt) => rt.handle().clone(),
        }
    }

    /// Stops the runtime and joins its threads. Blocking: call from a blocking context.
    pub fn shutdown(self) {
        match self {
            RuntimeHost::Single { stop, thread, .. } => {
                let _ = stop.send(());
                let _ = thread.join();
            }
            RuntimeHost::Multi(rt) => rt.shutdown_timeout(Duration::from_secs(2)),
        }
    }
}
