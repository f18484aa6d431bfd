//! Weighted choice: the side of a split a point in `0..total` falls on.

/// Weighted choice among clusters; picks with a number in `0..total`.
#[derive(Debug, Clone)]
pub struct WeightedSplit {
    /// (cluster index, cumulative weight up to and including this entry)
    entries: Vec<(usize, u64)>,
}

impl WeightedSplit {
    pub fn new(weights: impl IntoIterator<Item = (usize, u32)>) -> Self {
        let mut total = 0u64;
        let entries = weights
            .into_iter()
            .filter(|(_, w)| *w > 0)
            .map(|(c, w)| {
                total += u64::from(w);
                (c, total)
            })
            .collect();
        Self { entries }
    }

    pub fn total(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.1)
    }

    /// Every cluster with a weight above zero.
    pub fn clusters(&self) -> impl Iterator<Item = usize> + '_ {
        self.entries.iter().map(|e| e.0)
    }

    /// The cluster for a point in `0..total()`.
    pub fn pick(&self, point: u64) -> Option<usize> {
        let i = self.entries.partition_point(|e| e.1 <= point);
        self.entries.get(i).map(|e| e.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_follows_weights() {
        let split = WeightedSplit::new([(0, 90), (1, 10), (2, 0)]);
        assert_eq!(split.total(), 100);
        let picks: Vec<_> = (0..100).map(|p| split.pick(p).unwrap()).collect();
        assert_eq!(picks.iter().filter(|c| **c == 0).count(), 90);
        assert_eq!(picks.iter().filter(|c| **c == 1).count(), 10);
        assert_eq!(split.pick(100), None);
    }
}
