//! meshproxy's engine: listeners, the request path, the compiled snapshot and its atomic swap,
//! metrics and admin, with no N-API in it. [`MeshProxy`] is the embedding API; the N-API binding
//! is a thin shell around it, and `cargo test` exercises everything here alone.
//!
//! Who uses it: `meshproxy-napi` (and embedders in Rust). What it must not know: Node, or how a
//! config was written (YAML, Kubernetes manifests) — it takes the normalized model. Protocol
//! engines live in `meshproxy-http`, endpoints and pools in `meshproxy-upstream`, routing and
//! balancing in `meshproxy-route` and `meshproxy-balance`.
//!
//! Modules, one concern each: `compile` (model → immutable snapshot), `classify` (what counts as
//! an endpoint's failure), `server` ([`MeshProxy`]),
//! `listener` (accept, detect, serve, drain), `proxy` (the request path), `upstream` (the
//! concrete upstream types), `tcp` (opaque forwarding), [`workers`], `admin`, `metrics`.

mod activity;
mod admin;
mod breaker;
mod checks;
mod classify;
mod compile;
mod error;
mod filter;
mod listener;
mod metrics;
mod proxy;
mod ratelimit;
mod server;
mod state;
mod tcp;
mod upstream;
pub mod workers;

pub use error::{Error, ProxyError};
pub use meshproxy_balance as balance;
pub use meshproxy_config as config;
pub use meshproxy_config::Config;
pub use meshproxy_route as routing;
pub use server::{MeshProxy, StartInfo, Stats};
