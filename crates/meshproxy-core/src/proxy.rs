//! The request path. One future per request ([`service`]'s `handle`), in explicit phases:
//!
//! 1. admit ([`admit`]): what the request is, and 400 for what is malformed;
//! 2. route: the listener's routing table;
//! 3. request filters ([`filter`]), compiled per route: continue, answer now, or wait;
//! 4. backend: the route's weighted choice among its backends (a traffic split);
//! 5. endpoint: the backend's balancer over its current endpoint set; then the request in the
//!    form the endpoint takes ([`rewrite`]);
//! 6. the attempt ([`forward`]), bounded by the route's response-header timeout and its idle
//!    timeout ([`idle`], which also watches the response body);
//! 7. response filters;
//! 8. respond, with the outcome observed once ([`outcome`]).
//!
//! Upgrades ([`upgrade`], [`websocket`]) and `CONNECT` tunnels ([`connect`]) leave the path at
//! phase 8 (or 2) with their connections spliced.

mod admit;
pub mod body;
mod connect;
mod forward;
pub mod idle;
pub(crate) mod outcome;
mod rewrite;
mod service;
mod upgrade;
mod websocket;

pub(crate) use forward::idempotent;
pub use service::ProxyService;
