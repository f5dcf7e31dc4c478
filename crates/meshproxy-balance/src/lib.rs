//! Endpoint selection (round-robin, weighted random, consistent hashing, and the power of two
//! choices over load or latency), independent of HTTP and of the listener: a balancer is compiled from the
//! endpoints' weights and answers an index into the service's endpoint list. The listener (and,
//! later, the in-process client) turns a request into an optional hash key; the balancer never
//! sees the request.
//!
//! Who uses it: the engine (`meshproxy-core`), once per request. What it must not know: requests,
//! sockets, connections or config files — it chooses among indices, purely, and is
//! property-tested as such.

mod distribution;
mod hash;
mod p2c;
mod random;
mod round_robin;

pub use distribution::Distribution;
pub use hash::Ring;
pub use p2c::{Cost, P2c};
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
    /// `least-request` and `p2c-ewma`.
    P2c(P2c),
    /// Consistent hashing; requests without the key fall back to weighted random.
    Hash {
        key: HashKey,
        ring: Ring,
        fallback: WeightedRandom,
    },
}

/// What a balancer may read of an endpoint's live state.
pub trait EndpointView {
    /// False when the endpoint should get no new requests (removed, and later ejected or
    /// failing its health checks).
    fn available(&self) -> bool;
    /// Requests in flight to it.
    fn load(&self) -> u64;
    /// Its latency estimate (peak EWMA, any unit as long as every endpoint uses the same).
    fn latency(&self) -> f64 {
        1.0
    }
}

impl<T: EndpointView> EndpointView for std::sync::Arc<T> {
    fn available(&self) -> bool {
        (**self).available()
    }
    fn load(&self) -> u64 {
        (**self).load()
    }
    fn latency(&self) -> f64 {
        (**self).latency()
    }
}

impl Balancer {
    /// The hash key source, if this balancer wants one.
    pub fn hash_key(&self) -> Option<&HashKey> {
        match self {
            Balancer::Hash { key, .. } => Some(key),
            _ => None,
        }
    }

    /// Picks one of `endpoints` (the list the balancer was built for, in the same order): the
    /// algorithm's choice, or when that one is unavailable the next available one after it (a
    /// [`P2c`] compares two available candidates).
    /// When none is available it keeps the algorithm's choice (as Envoy's panic threshold does:
    /// better to try an endpoint than to fail every request). `None` only when there are none.
    pub fn select<E: EndpointView>(&self, endpoints: &[E], hash: Option<u64>) -> Option<usize> {
        if let Balancer::P2c(p) = self {
            return p.select(endpoints);
        }
        let i = self.pick(hash)?;
        if endpoints.get(i)?.available() {
            return Some(i);
        }
        let n = endpoints.len();
        Some((1..n).map(|k| (i + k) % n).find(|&j| endpoints[j].available()).unwrap_or(i))
    }

    /// The algorithm's choice of an endpoint index, whatever the endpoints' state; `None` only
    /// when there are no endpoints.
    pub fn pick(&self, hash: Option<u64>) -> Option<usize> {
        match self {
            Balancer::RoundRobin(rr) => rr.pick(),
            Balancer::Random(r) => r.pick(),
            Balancer::P2c(p) => p.candidates().map(|(a, _)| a),
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct View(bool);
    impl EndpointView for View {
        fn available(&self) -> bool {
            self.0
        }
        fn load(&self) -> u64 {
            0
        }
    }

    proptest! {
        /// Whatever is unavailable, `select` returns an available endpoint when there is one, and
        /// otherwise still an endpoint.
        #[test]
        fn select_prefers_available_endpoints(up in proptest::collection::vec(any::<bool>(), 1..12), picks in 1usize..50) {
            let views: Vec<View> = up.iter().map(|&u| View(u)).collect();
            let rr = Balancer::RoundRobin(RoundRobin::new(&vec![1; views.len()]));
            for _ in 0..picks {
                let i = rr.select(&views, None).unwrap();
                prop_assert!(i < views.len());
                prop_assert!(views[i].0 || !up.iter().any(|&u| u));
            }
        }
    }

    #[test]
    fn select_skips_an_unavailable_endpoint_and_keeps_the_rotation_for_the_others() {
        let views = [View(true), View(false), View(true)];
        let rr = Balancer::RoundRobin(RoundRobin::new(&[1, 1, 1]));
        let got: Vec<usize> = (0..6).map(|_| rr.select(&views, None).unwrap()).collect();
        assert_eq!(got, [0, 2, 2, 0, 2, 2]);
        assert_eq!(rr.select::<View>(&[], None), None);
    }
}
