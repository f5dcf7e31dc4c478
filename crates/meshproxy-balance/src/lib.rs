//! Endpoint selection, independent of HTTP and of the listener: a balancer is compiled from the
//! endpoints' weights and answers an index into the service's endpoint list. The listener (and,
//! later, the in-process client) turns a request into an optional hash key; the balancer never
//! sees the request.
//!
//! Who uses it: the engine (`meshproxy-core`), once per request. What it must not know: requests,
//! sockets, connections or config files — it chooses among indices, purely, and is
//! property-tested as such.

mod hash;
mod random;
mod round_robin;

pub use hash::Ring;
pub use random::WeightedRandom;
pub use round_robin::RoundRobin;

/// Where a `hash` balancer takes its key from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(http::HeaderName),
    Cookie(Box<str>),
    Source,
}

#[derive(Debug)]
pub enum Balancer {
    RoundRobin(RoundRobin),
    Random(WeightedRandom),
    /// Consistent hashing; requests without the key fall back to weighted random.
    Hash {
        key: HashKey,
        ring: Ring,
        fallback: WeightedRandom,
    },
}

impl Balancer {
    /// The hash key source, if this balancer wants one.
    pub fn hash_key(&self) -> Option<&HashKey> {
        match self {
            Balancer::Hash { key, .. } => Some(key),
            _ => None,
        }
    }

    /// Picks an endpoint index; `None` only when there are no endpoints.
    pub fn pick(&self, hash: Option<u64>) -> Option<usize> {
        match self {
            Balancer::RoundRobin(rr) => rr.pick(),
            Balancer::Random(r) => r.pick(),
            Balancer::Hash { ring, fallback, .. } => match hash {
                Some(h) => ring.pick(h),
                None => fallback.pick(),
            },
        }
    }
}

/// Hashes a key (header value, cookie, client IP) for the ring. Stable across processes and
/// versions (xxh3), so several proxies agree on where a key goes.
pub fn hash_key_bytes(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Weights divided by their greatest common divisor, so `[2, 4]` behaves as `[1, 2]`.
fn reduced(weights: &[u32]) -> Vec<u64> {
    let g = weights.iter().fold(0u64, |g, &w| gcd(g, u64::from(w.max(1))));
    weights.iter().map(|&w| u64::from(w.max(1)) / g.max(1)).collect()
}
