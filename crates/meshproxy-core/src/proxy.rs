//! The HTTP forwarding path: the per-connection service that routes a request, picks an
//! endpoint, rewrites proxy headers, forwards through the endpoint's pool and streams the
//! response back.

pub mod body;
mod client_tunnel;
mod connect;
mod forward;
pub(crate) mod headers;
mod service;
mod upgrade;
mod websocket;

pub use service::ProxyService;

use std::future::Future;
use std::pin::Pin;

/// Boxes the future `make` builds, built in its box. `Box::pin(f)` builds `f` on the stack and
/// then copies the whole of it to the heap: a request's future is kilobytes (every state it can
/// be in), so that copy cost ~460 instructions a request (callgrind, h2c → h2). With the
/// allocation made before the future is, LLVM builds it straight into the allocation (the
/// call-slot optimisation) and the copy is gone.
#[inline(always)]
pub(crate) fn box_built_in_place<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}
