//! Active health checks, scheduled per service: one task per service with a `healthCheck` probes
//! each of the service's current endpoints every interval (all at once, each bounded by the
//! check's timeout) and feeds the results to the endpoint's readiness. The task reads the
//! endpoint set on every round, so endpoints that discovery adds or removes are followed.
//!
//! The tasks belong to the running config: [`Checks::start`] spawns them for a snapshot, and
//! dropping the [`Checks`] (a reload's new set replacing it, or `close`) aborts them. An endpoint
//! that no check of the new config covers is made ready again, so removing a `healthCheck`
//! never leaves endpoints out.

use std::collections::HashSet;
use std::sync::{Arc, Weak};

use meshproxy_upstream::CheckSpec;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;

use crate::compile::{Backend, Snapshot};

/// The running config's health-check tasks; aborted when dropped.
#[derive(Default)]
pub struct Checks(Vec<JoinHandle<()>>);

impl Checks {
    /// Spawns the checks `snapshot` configures (on the calling runtime) and makes ready the
    /// endpoints none of them covers.
    pub fn start(snapshot: &Snapshot) -> Checks {
        // By identity: endpoints at one address reached differently (plaintext, TLS) are two.
        let mut checked: HashSet<*const crate::upstream::Endpoint> = HashSet::new();
        let mut tasks = Vec::new();
        for backend in snapshot.backends.values() {
            let Some(spec) = backend.check.clone() else { continue };
            checked.extend(backend.endpoints().iter().map(Arc::as_ptr));
            tasks.push(tokio::spawn(run(Arc::downgrade(backend), spec)));
        }
        for backend in snapshot.backends.values() {
            for endpoint in backend.endpoints().iter() {
                if !checked.contains(&Arc::as_ptr(endpoint)) {
                    endpoint.health.unchecked();
                }
            }
        }
        Checks(tasks)
    }
}

impl Drop for Checks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Probes `backend`'s endpoints every `spec.interval`, the first round at once, until the
/// backend is gone or the task is aborted.
async fn run(backend: Weak<Backend>, spec: Arc<CheckSpec>) {
    let mut tick = tokio::time::interval(spec.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(b) = backend.upgrade() else { return };
        let service = b.name.clone();
        let endpoints: Vec<_> = b.endpoints().iter().cloned().collect();
        drop(b);
        let mut round = JoinSet::new();
        for endpoint in endpoints {
            let spec = spec.clone();
            round.spawn(async move {
                let result = endpoint.probe(&spec).await;
                (endpoint, result)
            });
        }
        while let Some(done) = round.join_next().await {
            let Ok((endpoint, result)) = done else { continue };
            let changed =
                endpoint.health.probed(result.is_ok(), spec.healthy_threshold, spec.unhealthy_threshold);
            match (changed, result) {
                (Some(false), Err(why)) => tracing::warn!(
                    %service,
                    endpoint = %endpoint.address,
                    %why,
                    "endpoint failed its health check: unready, it gets no new requests"
                ),
                (Some(true), _) => {
                    tracing::info!(%service, endpoint = %endpoint.address, "endpoint passes its health check again: ready")
                }
                (None, Err(why)) => {
                    tracing::debug!(%service, endpoint = %endpoint.address, %why, "health check probe failed")
                }
                _ => {}
            }
        }
    }
}
