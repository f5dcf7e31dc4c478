//! The N-API shell around `meshproxy-core`: one class, `BindingProxy`, whose methods move data
//! across the boundary once (config as JSON in, stats as objects out) and never call into
//! JavaScript per request.
//!
//! Who uses it: the TypeScript `Proxy` (ts/proxy.ts), through the generated loader. What it must
//! not know: the data path — everything it does is parse, call `meshproxy-core`, and convert
//! errors and results.
//!
//! Each proxy owns a dedicated tokio runtime with `workers` threads (`host`), separate from
//! napi's global runtime (which only runs the short futures behind the promises). That keeps the
//! data path's thread count a deliberate setting, and lets `close()` release the threads.
//! tokio's threads do not keep Node's event loop alive; the TypeScript `Proxy` holds a timer
//! while started for that (with `ref()`/`unref()`).

use std::sync::Arc;
use std::time::Duration;

use meshproxy_core::{Config, Error as CoreError, MeshProxy};
use napi::bindgen_prelude::*;
use napi_derive::napi;
mod host;
pub mod identity;

use host::RuntimeHost;

/// The addon's Rust allocations (Node's own are untouched) go to mimalloc: the data path
/// allocates per request (h2's streams and header blocks, request futures), and glibc's malloc
/// takes its slow path for many of them (blocks over 1 KiB). The price is a little more memory
/// per connection; docs/performance.md has both measurements.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// napi-rs only rejects promises with its own `Status` as the code, so the stable code travels
/// as a `[CODE] ` prefix of the message; the TypeScript `Proxy` turns it back into `error.code`
/// (`ts/errors.ts`). One vocabulary from Rust to the CLI.
fn coded(code: &str, msg: impl std::fmt::Display) -> napi::Error {
    napi::Error::new(Status::GenericFailure, format!("[{code}] {msg}"))
}

fn js_error(e: CoreError) -> napi::Error {
    coded(e.code(), e)
}

fn internal(msg: impl std::fmt::Display) -> napi::Error {
    coded("MESHPROXY_INTERNAL", msg)
}

struct Inner {
    proxy: Arc<MeshProxy>,
    runtime: parking_lot::Mutex<Option<RuntimeHost>>,
    handle: tokio::runtime::Handle,
}

#[napi]
pub struct BindingProxy {
    inner: Arc<Inner>,
}

#[napi]
impl BindingProxy {
    /// `configJson`: the normalized model (`ts/config/model.ts`) as JSON. Throws
    /// `MESHPROXY_INVALID_CONFIG` if it does not compile.
    #[napi(constructor)]
    pub fn new(config_json: String, workers: u32) -> Result<Self> {
        let config = Config::from_json(&config_json).map_err(|e| js_error(e.into()))?;
        let runtime = RuntimeHost::new(workers.clamp(1, 256) as usize).map_err(internal)?;
        let handle = runtime.handle();
        let proxy = {
            let _enter = handle.enter();
            MeshProxy::with_workers(config, runtime.handles()).map_err(js_error)
        };
        let proxy = match proxy {
            Ok(p) => p,
            Err(e) => {
                runtime.shutdown();
                return Err(e);
            }
        };
        let inner = Inner { proxy: Arc::new(proxy), runtime: parking_lot::Mutex::new(Some(runtime)), handle };
        Ok(BindingProxy { inner: Arc::new(inner) })
    }

    /// Binds every listener and starts serving; resolves to the bound addresses.
    #[napi(ts_return_type = "Promise<BindingStartInfo>")]
    pub async fn start(&self) -> Result<serde_json::Value> {
        let proxy = self.inner.proxy.clone();
        let info = self.run(async move { proxy.start().await }).await?.map_err(js_error)?;
        serde_json::to_value(info).map_err(internal)
    }

    /// Atomically replaces the config; a failed reload changes nothing.
    #[napi]
    pub async fn reload(&self, config_json: String) -> Result<()> {
        let config = Config::from_json(&config_json).map_err(|e| js_error(e.into()))?;
        let proxy = self.inner.proxy.clone();
        self.run(async move { proxy.reload(config).await }).await?.map_err(js_error)
    }

    #[napi(ts_return_type = "Promise<BindingStats>")]
    pub async fn stats(&self) -> Result<serde_json::Value> {
        // Reading stats spawns nothing, so it also works after close (state "closed").
        let stats = self.inner.proxy.stats().await;
        serde_json::to_value(stats).map_err(internal)
    }

    /// Prometheus text, as the admin listener's `/metrics` serves it.
    #[napi]
    pub fn metrics(&self) -> String {
        self.inner.proxy.metrics_text()
    }

    /// Drains for up to `graceMs`, closes everything, then stops the runtime's threads.
    /// Idempotent.
    #[napi]
    pub async fn close(&self, grace_ms: u32) -> Result<()> {
        let proxy = self.inner.proxy.clone();
        let grace = Duration::from_millis(u64::from(grace_ms));
        if self.inner.runtime.lock().is_some() {
            self.run(async move { proxy.close(grace).await }).await?.map_err(js_error)?;
        }
        let runtime = self.inner.runtime.lock().take();
        if let Some(rt) = runtime {
            // A runtime must not be dropped from async code: shut it down on a blocking thread.
            tokio::task::spawn_blocking(move || rt.shutdown()).await.map_err(internal)?;
        }
        Ok(())
    }
}

impl BindingProxy {
    /// Runs a future on the proxy's own runtime and waits for it from napi's.
    async fn run<F>(&self, fut: F) -> Result<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        if self.inner.runtime.lock().is_none() {
            return Err(js_error(CoreError::Closed));
        }
        self.inner.handle.spawn(fut).await.map_err(internal)
    }
}

static LOGGING: std::sync::OnceLock<()> = std::sync::OnceLock::new();

/// Sends the data plane's `tracing` events to stderr, filtered by `filter` (`info`,
/// `meshproxy_core=debug`, … as in `RUST_LOG`). The first call wins; later calls do nothing.
#[napi]
pub fn init_logging(filter: String) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .map_err(|e| coded("MESHPROXY_INVALID_CONFIG", format!("invalid log filter {filter:?}: {e}")))?;
    LOGGING.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false)
            .try_init();
    });
    Ok(())
}

/// Where a Rego policy does not compile: its file, line and column (1-based; 0 when regorus
/// gives no position) and why.
#[napi(object)]
pub struct BindingPolicyProblem {
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub message: String,
}

/// Compiles a Rego policy as the data plane will (Rego v0, then v1; the rule `rule` of its
/// package) for `meshproxy check`: null when it compiles, else where and why not.
#[napi]
pub fn check_policy(file: String, source: String, rule: String) -> Option<BindingPolicyProblem> {
    meshproxy_policy::check(&file, &source, &rule).err().map(|e| BindingPolicyProblem {
        file: e.file,
        line: e.line,
        column: e.column,
        message: e.message,
    })
}

#[napi(object)]
pub struct BindingListenerInfo {
    pub name: String,
    pub address: String,
    pub local_address: String,
}

#[napi(object)]
pub struct BindingStartInfo {
    pub listeners: Vec<BindingListenerInfo>,
    pub admin: Option<String>,
}

#[napi(object)]
pub struct BindingEndpointStats {
    pub address: String,
    pub tls: bool,
    pub open_connections: f64,
    pub opened_connections: f64,
    pub idle_connections: f64,
    pub inflight: f64,
    pub requests: f64,
    pub failures: f64,
    pub retries: f64,
    pub state: String,
    pub ejected_for_ms: Option<f64>,
    pub ejections: f64,
    pub latency_ms: f64,
}

#[napi(object)]
pub struct BindingStats {
    pub state: String,
    pub ready: bool,
    pub downstream_connections: f64,
    pub requests: f64,
    pub reloads: f64,
    pub listeners: Vec<BindingListenerInfo>,
    pub admin: Option<String>,
    pub endpoints: Vec<BindingEndpointStats>,
    pub workers: Vec<BindingWorkerStats>,
    /// Requests the rate limits of the config in force refused.
    pub rate_limited: f64,
    /// TLS handshakes completed on listeners with `tls`, and failed.
    pub tls_handshakes: f64,
    pub tls_handshake_failures: f64,
}

#[napi(object)]
pub struct BindingWorkerStats {
    pub connections: f64,
}
