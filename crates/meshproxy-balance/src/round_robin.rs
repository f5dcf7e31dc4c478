//! Smooth weighted round-robin (nginx's algorithm), precomputed into one sequence at compile time
//! and indexed by a single atomic counter, so the rotation is exact across all worker threads and
//! a pick costs one `fetch_add`.

use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct RoundRobin {
    sequence: Box<[u32]>,
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new(weights: &[u32]) -> Self {
        let weights = super::reduced(weights);
        let total: i64 = weights.iter().map(|&w| w as i64).sum();
        let mut current = vec![0i64; weights.len()];
        let mut sequence = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for (i, w) in weights.iter().enumerate() {
                current[i] += *w as i64;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            sequence.push(best as u32);
        }
        RoundRobin { sequence: sequence.into_boxed_slice(), next: AtomicUsize::new(0) }
    }

    pub fn pick(&self) -> Option<usize> {
        if self.sequence.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.sequence[n % self.sequence.len()] as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn smooth_interleaving() {
        let rr = RoundRobin::new(&[5, 1, 1]);
        let seq: Vec<_> = (0..7).map(|_| rr.pick().unwrap()).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(RoundRobin::new(&[]).pick(), None);
    }

    proptest! {
        #[test]
        fn every_cycle_honours_weights_exactly(weights in proptest::collection::vec(1u32..20, 1..8), cycles in 1usize..4) {
            let rr = RoundRobin::new(&weights);
            let reduced = super::super::reduced(&weights);
            let total: u64 = reduced.iter().sum();
            let mut counts = vec![0u64; weights.len()];
            for _ in 0..(total as usize * cycles) {
                counts[rr.pick().unwrap()] += 1;
            }
            for (i, w) in reduced.iter().enumerate() {
                prop_assert_eq!(counts[i], w * cycles as u64);
            }
        }
    }
}
