//! Weighted choice among a route's backends (a traffic split: canary, blue-green, A/B). A route
//! with one backend, today's every route, picks it without drawing a random number.

use crate::WeightedRandom;

#[derive(Debug)]
pub enum Distribution<T> {
    One(T),
    Weighted { items: Box<[T]>, weights: WeightedRandom },
}

impl<T> Distribution<T> {
    /// `items` with their weights (a zero weight counts as one, as endpoint weights do). `None`
    /// when there are none.
    pub fn new(mut items: Vec<(T, u32)>) -> Option<Self> {
        match items.len() {
            0 => None,
            1 => items.pop().map(|(t, _)| Distribution::One(t)),
            _ => {
                let weights: Vec<u32> = items.iter().map(|(_, w)| *w).collect();
                let items = items.into_iter().map(|(t, _)| t).collect();
                Some(Distribution::Weighted { items, weights: WeightedRandom::new(&weights) })
            }
        }
    }

    #[inline]
    pub fn pick(&self) -> &T {
        match self {
            Distribution::One(t) => t,
            Distribution::Weighted { items, weights } => {
                // `WeightedRandom` over a non-empty list always answers an index into it.
                let i = weights.pick().unwrap_or(0);
                &items[i.min(items.len() - 1)]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_item_is_always_picked() {
        let d = Distribution::new(vec![("a", 0)]).unwrap();
        assert!((0..100).all(|_| *d.pick() == "a"));
        assert!(Distribution::<&str>::new(vec![]).is_none());
    }

    #[test]
    fn weighted_split_follows_the_weights() {
        let d = Distribution::new(vec![("stable", 90), ("canary", 10)]).unwrap();
        let canary = (0..20_000).filter(|_| *d.pick() == "canary").count();
        // 10 % of 20,000 is 2,000; six standard deviations is ~255.
        assert!((1_745..=2_255).contains(&canary), "canary got {canary} of 20,000");
    }
}
