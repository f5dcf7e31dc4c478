//! The power of two choices: draw two endpoints at random (in proportion to their weights) and
//! take the one that costs less, as Linkerd's proxy balances. It avoids both the herding of
//! "always the least loaded" (every proxy piling onto the same endpoint) and the blindness of
//! round-robin to a slow or overloaded endpoint.
//!
//! The draws come from a SplitMix64 sequence per balancer, seeded at random when it is built (so
//! proxies do not draw alike) and advanced by one relaxed `fetch_add` per pick, which reserves
//! every draw the pick may need (up to five), at a fraction of a draw from the thread-local
//! cryptographic generator.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::{EndpointView, WeightedRandom};

/// What a [`P2c`] balancer compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// Requests in flight (`least-request`).
    Load,
    /// Peak-EWMA latency times (requests in flight + 1) (`p2c-ewma`).
    PeakEwma,
}

#[derive(Debug)]
pub struct P2c {
    cost: Cost,
    draw: WeightedRandom,
    len: usize,
    /// The SplitMix64 state: the last draw handed out.
    state: AtomicU64,
}

/// SplitMix64's increment (2^64 / φ, odd).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
/// Draws one pick may need: a candidate, three weighted redraws, a uniform one.
const DRAWS: u64 = 5;

/// SplitMix64's output function: a uniform 64-bit value from a state.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl P2c {
    pub fn new(weights: &[u32], cost: Cost) -> Self {
        P2c {
            cost,
            draw: WeightedRandom::new(weights),
            len: weights.len(),
            state: AtomicU64::new(rand::random()),
        }
    }

    pub fn cost(&self) -> Cost {
        self.cost
    }

    /// Two distinct candidates (one when there is only one endpoint).
    pub fn candidates(&self) -> Option<(usize, usize)> {
        // The next `DRAWS` values of the sequence are this pick's, whichever thread picks.
        let base = self.state.fetch_add(GAMMA.wrapping_mul(DRAWS), Ordering::Relaxed);
        let draw = |k: u64| mix(base.wrapping_add(GAMMA.wrapping_mul(k + 1)));
        let a = self.draw.index_of(draw(0))?;
        if self.len < 2 {
            return Some((a, a));
        }
        // A few weighted redraws, then a uniform distinct one: heavy weights stay fast.
        for k in 1..DRAWS - 1 {
            let b = self.draw.index_of(draw(k))?;
            if b != a {
                return Some((a, b));
            }
        }
        let others = (self.len - 1) as u64;
        let offset = ((u128::from(draw(DRAWS - 1)) * u128::from(others)) >> 64) as usize;
        Some((a, (a + 1 + offset) % self.len))
    }

    /// The cheaper available candidate; when neither is available, the first available endpoint
    /// after them; when none is, a candidate (better to try one than to fail every request).
    pub fn select<E: EndpointView>(&self, endpoints: &[E]) -> Option<usize> {
        let (a, b) = self.candidates()?;
        let (ea, eb) = (endpoints.get(a)?, endpoints.get(b)?);
        match (ea.available(), eb.available()) {
            (true, true) => Some(if self.score(eb) < self.score(ea) { b } else { a }),
            (true, false) => Some(a),
            (false, true) => Some(b),
            (false, false) => {
                let n = endpoints.len();
                Some((1..n).map(|k| (a + k) % n).find(|&j| endpoints[j].available()).unwrap_or(a))
            }
        }
    }

    fn score<E: EndpointView>(&self, e: &E) -> f64 {
        match self.cost {
            Cost::Load => e.load() as f64,
            Cost::PeakEwma => e.latency() * (e.load() as f64 + 1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct View {
        up: bool,
        load: u64,
        latency: f64,
    }
    impl EndpointView for View {
        fn available(&self) -> bool {
            self.up
        }
        fn load(&self) -> u64 {
            self.load
        }
        fn latency(&self) -> f64 {
            self.latency
        }
    }

    fn views(latencies: &[f64]) -> Vec<View> {
        latencies.iter().map(|&latency| View { up: true, load: 0, latency }).collect()
    }

    proptest! {
        #[test]
        fn candidates_are_distinct_and_in_range(weights in proptest::collection::vec(1u32..1000, 2..16)) {
            let p = P2c::new(&weights, Cost::Load);
            for _ in 0..100 {
                let (a, b) = p.candidates().unwrap();
                prop_assert!(a < weights.len() && b < weights.len() && a != b);
            }
        }

        /// Whatever is unavailable, an available endpoint is chosen when there is one.
        #[test]
        fn select_prefers_available_endpoints(up in proptest::collection::vec(any::<bool>(), 1..12)) {
            let v: Vec<View> = up.iter().map(|&up| View { up, load: 0, latency: 1.0 }).collect();
            let p = P2c::new(&vec![1; v.len()], Cost::PeakEwma);
            for _ in 0..50 {
                let i = p.select(&v).unwrap();
                prop_assert!(v[i].up || !up.iter().any(|&u| u));
            }
        }
    }

    #[test]
    fn the_slowest_endpoint_is_never_chosen_and_gets_no_share() {
        // Of three, the slowest loses every comparison it is drawn into.
        let v = views(&[1.0, 1.0, 50.0]);
        let p = P2c::new(&[1, 1, 1], Cost::PeakEwma);
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            counts[p.select(&v).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0, "{counts:?}");
        assert!(counts[0] > 1200 && counts[1] > 1200, "{counts:?}");
    }

    #[test]
    fn least_request_takes_the_less_loaded_and_latency_weighs_in_load() {
        let v = [View { up: true, load: 5, latency: 1.0 }, View { up: true, load: 1, latency: 1.0 }];
        assert_eq!(P2c::new(&[1, 1], Cost::Load).select(&v), Some(1));
        // 2 ms × 6 in flight costs more than 10 ms × 1.
        let v = [View { up: true, load: 5, latency: 2.0 }, View { up: true, load: 0, latency: 10.0 }];
        assert_eq!(P2c::new(&[1, 1], Cost::PeakEwma).select(&v), Some(1));
    }

    #[test]
    fn candidates_follow_the_weights() {
        // Weights 1:3 over two endpoints: the first candidate is the heavy one three times in four.
        let p = P2c::new(&[1, 3], Cost::Load);
        let n = 40_000;
        let heavy = (0..n).filter(|_| p.candidates().unwrap().0 == 1).count() as f64 / n as f64;
        assert!((heavy - 0.75).abs() < 0.02, "share of the weight-3 endpoint was {heavy}");
        // Over many endpoints every pair shows up, in both orders.
        let p = P2c::new(&[1; 4], Cost::Load);
        let mut seen = [[false; 4]; 4];
        for _ in 0..2000 {
            let (a, b) = p.candidates().unwrap();
            seen[a][b] = true;
        }
        assert!((0..4).all(|a| (0..4).all(|b| seen[a][b] == (a != b))), "{seen:?}");
    }

    #[test]
    fn one_endpoint_is_its_own_pair_and_none_is_none() {
        let p = P2c::new(&[3], Cost::Load);
        assert_eq!(p.select(&views(&[1.0])), Some(0));
        assert_eq!(P2c::new(&[], Cost::Load).select::<View>(&[]), None);
    }
}
