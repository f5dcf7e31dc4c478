//! The HTTP forwarding path: the per-connection service that routes a request, picks an
//! endpoint, rewrites proxy headers, forwards through the endpoint's pool and streams the
//! response back.

pub mod body;
mod forward;
mod headers;
mod service;
mod upgrade;

pub use service::ProxyService;
