//! Worker threads: N current-thread runtimes, one per thread, each serving the connections handed
//! to it and keeping its own upstream pools — the shape of HAProxy's threads and nginx's worker
//! processes. Not tokio's work-stealing runtime: there a request's downstream and upstream tasks
//! run on different threads, so each hand-off between them is a cross-thread wake-up
//! (docs/performance.md has the measurement).
//!
//! Connections are dealt round-robin by the accept loop (which runs on worker 0). A connection
//! stays on its worker; so do the upstream connections it opens, since each worker checks out
//! from and returns to its own pool ([`current`] selects it).

use std::time::Duration;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

pub use meshproxy_upstream::worker::current;

struct Worker {
    handle: Handle,
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// Running worker threads; stopped (and joined) by [`Workers::shutdown`].
pub struct Workers {
    workers: Vec<Worker>,
}

impl Workers {
    pub fn start(n: usize) -> std::io::Result<Self> {
        let mut workers = Vec::with_capacity(n.max(1));
        for index in 0..n.max(1) {
            let rt = match Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    Workers { workers }.shutdown();
                    return Err(e);
                }
            };
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let spawned = std::thread::Builder::new().name("meshproxy-worker".into()).spawn(move || {
                meshproxy_upstream::worker::set_current(index);
                rt.block_on(async {
                    let _ = stopped.await;
                });
                // Tasks still queued (connections being torn down) get a moment, then go.
                rt.shutdown_timeout(Duration::from_secs(2));
            });
            match spawned {
                Ok(thread) => workers.push(Worker { handle, stop, thread }),
                Err(e) => {
                    Workers { workers }.shutdown();
                    return Err(e);
                }
            }
        }
        Ok(Workers { workers })
    }

    /// Worker 0: where the proxy's own tasks (accept loops, admin, reaper) run.
    pub fn main(&self) -> Handle {
        self.workers[0].handle.clone()
    }

    /// Every worker, in index order (what [`crate::MeshProxy::with_workers`] takes).
    pub fn handles(&self) -> Vec<Handle> {
        self.workers.iter().map(|w| w.handle.clone()).collect()
    }

    /// Stops every runtime and joins its thread. Blocking: call from a blocking context.
    pub fn shutdown(self) {
        let threads: Vec<_> = self
            .workers
            .into_iter()
            .map(|w| {
                let _ = w.stop.send(());
                w.thread
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_knows_its_index_and_runs_spawned_tasks() {
        let workers = Workers::start(3).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, h) in workers.handles().into_iter().enumerate() {
            let tx = tx.clone();
            h.spawn(async move {
                tx.send((i, current())).unwrap();
            });
        }
        let mut seen: Vec<_> = (0..3).map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap()).collect();
        seen.sort();
        assert_eq!(seen, vec![(0, 0), (1, 1), (2, 2)]);
        assert_eq!(current(), 0, "not a worker thread");
        workers.shutdown();
    }
}
