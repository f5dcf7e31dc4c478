//! meshproxy's data plane: listeners, routing, balancing, connection pooling and forwarding,
//! with no N-API in it. [`MeshProxy`] is the embedding API; the N-API binding is a thin shell
//! around it, and `cargo test` exercises everything here alone.
//!
//! Layout, one concern per module: [`config`] (the normalized model), [`compile`] (model →
//! immutable snapshot), [`routing`], [`balance`], [`pool`] and [`endpoint`] (upstream state that
//! outlives snapshots), [`proxy`] (the forwarding service), [`h1`] (the upstream HTTP/1.1
//! client), [`h2_server`] (the downstream HTTP/2 server), [`listener`], [`admin`], [`metrics`].

pub mod admin;
pub mod compile;
pub mod detect;
pub mod endpoint;
pub mod error;
pub mod h1;
pub mod h2_ping;
pub mod h2_server;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod server;
pub mod tcp;
pub mod tunnel;
pub mod workers;

pub use error::{Error, ProxyError};
pub use meshproxy_balance as balance;
pub use meshproxy_config as config;
pub use meshproxy_config::Config;
pub use meshproxy_route as routing;
pub use server::{MeshProxy, StartInfo, Stats};
