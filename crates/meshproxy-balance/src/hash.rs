//! Consistent hashing on a ring (ketama-style): each endpoint owns points derived from its
//! address, proportional to its weight. Points depend only on the endpoint itself, so adding an
//! endpoint moves only the keys the new endpoint takes over (about 1/(N+1) of them).

/// Points per unit of (reduced) weight: enough that shares stay within a few percent.
const POINTS_PER_WEIGHT: u64 = 160;
/// Upper bound on ring size, whatever the weights.
const MAX_POINTS: u64 = 1 << 20;

#[derive(Debug)]
pub struct Ring {
    points: Box<[(u64, u32)]>,
}

impl Ring {
    /// `endpoints`: (stable identity such as the address, weight).
    pub fn new<S: AsRef<str>>(endpoints: &[(S, u32)]) -> Self {
        let weights: Vec<u32> = endpoints.iter().map(|(_, w)| *w).collect();
        let reduced = super::reduced(&weights);
        let total: u64 = reduced.iter().sum::<u64>() * POINTS_PER_WEIGHT;
        let scale = if total > MAX_POINTS { MAX_POINTS as f64 / total as f64 } else { 1.0 };
        let mut points = Vec::new();
        for (i, ((id, _), w)) in endpoints.iter().zip(&reduced).enumerate() {
            let n = ((w * POINTS_PER_WEIGHT) as f64 * scale).max(1.0) as u64;
            for v in 0..n {
                let mut key = Vec::with_capacity(id.as_ref().len() + 8);
                key.extend_from_slice(id.as_ref().as_bytes());
                key.extend_from_slice(&v.to_le_bytes());
                points.push((super::hash_key_bytes(&key), i as u32));
            }
        }
        points.sort_unstable();
        Ring { points: points.into_boxed_slice() }
    }

    pub fn pick(&self, hash: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let i = self.points.partition_point(|&(p, _)| p < hash);
        let (_, e) = self.points[i % self.points.len()];
        Some(e as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::super::hash_key_bytes;
    use super::*;
    use proptest::prelude::*;

    fn ring(n: usize) -> (Ring, Vec<String>) {
        let ids: Vec<String> = (0..n).map(|i| format!("10.0.0.{i}:8080")).collect();
        let eps: Vec<(&str, u32)> = ids.iter().map(|s| (s.as_str(), 1)).collect();
        (Ring::new(&eps), ids)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn adding_an_endpoint_moves_at_most_1_5_over_n(n in 2usize..24) {
            let (before, _) = ring(n);
            let (after, _) = ring(n + 1);
            let keys = 10_000u64;
            let mut moved = 0usize;
            for k in 0..keys {
                let h = hash_key_bytes(format!("user-{k}").as_bytes());
                let (a, b) = (before.pick(h).unwrap(), after.pick(h).unwrap());
                prop_assert!(b == a || b == n, "a key moved between old endpoints");
                moved += usize::from(a != b);
            }
            prop_assert!((moved as f64) <= 1.5 / n as f64 * keys as f64, "moved {} of {} with n={}", moved, keys, n);
        }
    }

    #[test]
    fn same_key_same_endpoint_and_spread() {
        let (r, _) = ring(4);
        let h = hash_key_bytes(b"alice");
        assert_eq!(r.pick(h), r.pick(h));
        let mut counts = [0usize; 4];
        for k in 0..10_000 {
            counts[r.pick(hash_key_bytes(format!("k{k}").as_bytes())).unwrap()] += 1;
        }
        for c in counts {
            assert!((1_800..3_200).contains(&c), "uneven ring: {counts:?}");
        }
    }
}
