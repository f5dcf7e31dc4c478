//! The runtimes a proxy's data path runs on, and how they are stopped.
//!
//! One current-thread runtime per worker thread (`meshproxy_core::workers`): no work-stealing
//! machinery, no cross-thread wake-ups between a request's downstream and upstream tasks; with
//! more than one worker, accepted connections are dealt round-robin and each keeps its worker.
//! The runtimes are shut down off the async path (a runtime must never be dropped from async
//! code).

use meshproxy_core::workers::Workers;
use tokio::runtime::Handle;

pub struct RuntimeHost {
    workers: Workers,
}

impl RuntimeHost {
    pub fn new(workers: usize) -> std::io::Result<Self> {
        Ok(RuntimeHost { workers: Workers::start(workers)? })
    }

    /// Worker 0, where the proxy's own tasks run.
    pub fn handle(&self) -> Handle {
        self.workers.main()
    }

    /// Every worker, for `MeshProxy::with_workers`.
    pub fn handles(&self) -> Vec<Handle> {
        self.workers.handles()
    }

    /// Stops the runtimes and joins their threads. Blocking: call from a blocking context.
    pub fn shutdown(self) {
        self.workers.shutdown();
    }
}
