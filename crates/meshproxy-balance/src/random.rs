//! Weighted random choice: cumulative weights and a binary search.

#[derive(Debug)]
pub struct WeightedRandom {
    cumulative: Box<[u64]>,
}

impl WeightedRandom {
    pub fn new(weights: &[u32]) -> Self {
        let mut sum = 0u64;
        let cumulative = weights
            .iter()
            .map(|&w| {
                sum += u64::from(w.max(1));
                sum
            })
            .collect();
        WeightedRandom { cumulative }
    }

    pub fn pick(&self) -> Option<usize> {
        let total = *self.cumulative.last()?;
        let r = rand::random_range(0..total);
        Some(self.cumulative.partition_point(|&c| c <= r))
    }

    /// The index a uniform 64-bit draw `r` selects: `r` scaled into the total weight by a
    /// multiply-shift (Lemire's), whose bias (at most total / 2^64 per index) no balancer can show.
    #[inline]
    pub fn index_of(&self, r: u64) -> Option<usize> {
        let total = *self.cumulative.last()?;
        let x = ((u128::from(r) * u128::from(total)) >> 64) as u64;
        Some(self.cumulative.partition_point(|&c| c <= x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn always_in_range(weights in proptest::collection::vec(1u32..1000, 1..16)) {
            let r = WeightedRandom::new(&weights);
            for _ in 0..200 {
                prop_assert!(r.pick().unwrap() < weights.len());
            }
        }
    }

    #[test]
    fn spread_follows_weights() {
        let r = WeightedRandom::new(&[1, 3]);
        let n = 40_000;
        let ones = (0..n).filter(|_| r.pick() == Some(1)).count() as f64 / n as f64;
        assert!((ones - 0.75).abs() < 0.02, "share of weight-3 endpoint was {ones}");
        assert_eq!(WeightedRandom::new(&[]).pick(), None);
    }

    #[test]
    fn draws_map_onto_the_weights() {
        let r = WeightedRandom::new(&[1, 3]);
        assert_eq!(r.index_of(0), Some(0));
        assert_eq!(r.index_of(u64::MAX / 4 - 1), Some(0));
        assert_eq!(r.index_of(u64::MAX / 4 + 1), Some(1));
        assert_eq!(r.index_of(u64::MAX), Some(1));
        assert_eq!(WeightedRandom::new(&[]).index_of(7), None);
    }
}
