//! meshproxy's protocol engines: protocol detection, the downstream HTTP/2 server, the upstream
//! HTTP/1.1 and HTTP/2 clients, message bodies, hop-by-hop and forwarding header rules, and the
//! byte splice behind upgrades and tunnels.
//!
//! Who uses it: the engine (`meshproxy-core`), which serves listeners with these and sends
//! requests to endpoints with them. What it must not know: routes, endpoints, pools, balancing or
//! the config — a connection is any `AsyncRead + AsyncWrite` the caller hands in (TCP today, TLS
//! next, an in-memory duplex in tests), requests are served by a [`h2_server::Handler`] the
//! caller implements, and a finished HTTP/1.1 connection goes back through a
//! [`h1::Recycle`] hook.

pub mod body;
pub mod client_tunnel;
pub mod detect;
pub mod h1;
pub mod h2_client;
pub mod h2_ping;
pub mod h2_server;
pub mod h2_tunnel;
pub mod headers;
pub mod idle;
pub mod tunnel;
pub mod upstream_body;

use std::future::Future;
use std::pin::Pin;

/// What the owner of a served connection tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    Run,
    /// Finish in-flight requests, answer them with `Connection: close`, close idle connections.
    Graceful,
    /// Close everything now.
    Force,
}

/// Boxes the future `make` builds, built in its box. `Box::pin(f)` builds `f` on the stack and
/// then copies the whole of it to the heap, and a request's future is kilobytes (every state it
/// can be in). With the allocation made before the future is, LLVM builds it straight into the
/// allocation (the call-slot optimisation) and there is no copy.
#[inline(always)]
pub fn box_built_in_place<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}
