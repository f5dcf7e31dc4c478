//! The HTTP forwarding path: the per-connection service that routes a request, picks an
//! endpoint, rewrites proxy headers, forwards through the endpoint's pool and streams the
//! response back.

pub mod body;
mod connect;
mod forward;
mod service;
mod upgrade;
mod websocket;

pub use service::ProxyService;
