//! The data plane on its own, without Node: `serve CONFIG.json` starts the proxy described by a
//! normalized config (the JSON the TypeScript layer hands to the addon) on a current-thread
//! runtime, the same as `meshproxy run --workers 1`, and runs until stdin closes.
//!
//! `npm run bench:ci` runs it under `valgrind --tool=callgrind` to count the instructions the hot
//! path spends per request: a figure that, unlike time, does not move with a noisy neighbour. A
//! Node process under valgrind would spend minutes starting V8 and adds nothing per request (no
//! request ever calls into JS).
//!
//! It lives in the binding crate, not in meshproxy-core, so that meshproxy-core and its
//! dependencies are compiled exactly as for the addon: an example of meshproxy-core would turn on
//! its dev-dependencies' features (tokio's test-util, hyper's client), which changes those crates'
//! code and every symbol name, and the addon's PGO profile (pgo/) would then not apply to it.

use std::io::Read;
use std::time::Duration;

use meshproxy_core::{Config, MeshProxy};

/// The addon's allocator, so the counts are those of what ships.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: serve CONFIG.json (runs until stdin closes)")?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let config: Config = serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;

    // stdin closing (the parent ending, or ^D) is the stop signal: it needs no signal handling.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = [0u8; 256];
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        let _ = stop_tx.send(());
    });

    runtime.block_on(async move {
        let proxy = MeshProxy::new(config)?;
        let info = proxy.start().await?;
        for l in &info.listeners {
            println!("listening on {} ({})", l.local_address, l.name);
        }
        if let Some(admin) = &info.admin {
            println!("admin on {admin}");
        }
        let _ = stop_rx.await;
        proxy.close(Duration::from_millis(500)).await?;
        Ok::<_, meshproxy_core::Error>(())
    })?;
    Ok(())
}
