//! Sets of byte ranges `[start, end)`: what a session asked for, what a spool holds.

use serde::{Deserialize, Serialize};

/// Sorted, disjoint, non-touching half-open ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

impl RangeSet {
    pub fn new() -> Self {
        RangeSet::default()
    }

    /// The set of `ranges` (any order, overlaps merged, empty ones ignored).
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut s = RangeSet::new();
        for (a, b) in ranges {
            s.insert(a, b);
        }
        s
    }

    /// Add `[start, end)`.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // First range that ends at or after `start` (touching merges).
        let i = self.ranges.partition_point(|&(_, e)| e < start);
        let mut j = i;
        let (mut s, mut e) = (start, end);
        while let Some(&(a, b)) = self.ranges.get(j) {
            if a > e {
                break;
            }
            s = s.min(a);
            e = e.max(b);
            j += 1;
        }
        self.ranges.splice(i..j, [(s, e)]);
    }

    /// Whether `[start, end)` is wholly inside the set (an empty range always is).
    pub fn contains(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return true;
        }
        let i = self.ranges.partition_point(|&(_, e)| e <= start);
        self.ranges
            .get(i)
            .is_some_and(|&(a, b)| a <= start && end <= b)
    }

    /// The parts of `[start, end)` NOT in the set, in order.
    pub fn gaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut pos = start;
        let i = self.ranges.partition_point(|&(_, e)| e <= start);
        for &(a, b) in &self.ranges[i..] {
            if pos >= end || a >= end {
                break;
            }
            if a > pos {
                out.push((pos, a));
            }
            pos = pos.max(b);
        }
        if pos < end {
            out.push((pos, end));
        }
        out
    }

    /// Take `[start, end)` out of the set.
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        for &(a, b) in &self.ranges {
            if b <= start || a >= end {
                out.push((a, b));
                continue;
            }
            if a < start {
                out.push((a, start));
            }
            if b > end {
                out.push((end, b));
            }
        }
        self.ranges = out;
    }

    /// The parts of `[start, end)` that ARE in the set, in order.
    pub fn overlap(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let i = self.ranges.partition_point(|&(_, e)| e <= start);
        self.ranges[i..]
            .iter()
            .take_while(|&&(a, _)| a < end)
            .map(|&(a, b)| (a.max(start), b.min(end)))
            .filter(|(a, b)| a < b)
            .collect()
    }

    /// The range of the set that holds `pos`, if any.
    pub fn around(&self, pos: u64) -> Option<(u64, u64)> {
        let i = self.ranges.partition_point(|&(_, e)| e <= pos);
        self.ranges.get(i).copied().filter(|&(a, _)| a <= pos)
    }

    /// `self` minus `other`.
    pub fn subtract(&self, other: &RangeSet) -> RangeSet {
        RangeSet {
            ranges: self
                .ranges
                .iter()
                .flat_map(|&(a, b)| other.gaps(a, b))
                .collect(),
        }
    }

    /// Merge ranges separated by less than `gap` bytes (fewer, larger pushes).
    pub fn coalesce(&self, gap: u64) -> RangeSet {
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(self.ranges.len());
        for &(a, b) in &self.ranges {
            match out.last_mut() {
                Some(last) if a - last.1 < gap => last.1 = b,
                _ => out.push((a, b)),
            }
        }
        RangeSet { ranges: out }
    }

    /// Total bytes covered.
    pub fn total(&self) -> u64 {
        self.ranges.iter().map(|(a, b)| b - a).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const N: u64 = 200;

    fn ix(x: u64) -> usize {
        usize::try_from(x).unwrap()
    }

    fn model(ranges: &[(u64, u64)]) -> Vec<bool> {
        let mut m = vec![false; ix(N)];
        for &(a, b) in ranges {
            for x in a..b.min(N) {
                m[ix(x)] = true;
            }
        }
        m
    }

    fn arb_ranges() -> impl Strategy<Value = Vec<(u64, u64)>> {
        proptest::collection::vec(
            (0..N, 0..40u64).prop_map(|(a, l)| (a, (a + l).min(N))),
            0..12,
        )
    }

    #[test]
    fn basic_operations() {
        let mut s = RangeSet::from_ranges([(10, 20), (30, 40)]);
        s.insert(20, 25);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(10, 25), (30, 40)]);
        assert!(s.contains(12, 25) && !s.contains(24, 31) && s.contains(5, 5));
        assert_eq!(s.gaps(0, 50), vec![(0, 10), (25, 30), (40, 50)]);
        assert_eq!(s.coalesce(6).iter().collect::<Vec<_>>(), vec![(10, 40)]);
        assert_eq!(s.total(), 25);
        let minus = s.subtract(&RangeSet::from_ranges([(15, 35)]));
        assert_eq!(minus.iter().collect::<Vec<_>>(), vec![(10, 15), (35, 40)]);
    }

    proptest! {
        #[test]
        fn matches_a_bitmap(a in arb_ranges(), b in arb_ranges(), q in (0..N, 0..N)) {
            let s = RangeSet::from_ranges(a.iter().copied());
            let t = RangeSet::from_ranges(b.iter().copied());
            let (ma, mb) = (model(&a), model(&b));
            prop_assert_eq!(model(&s.iter().collect::<Vec<_>>()), ma.clone());
            // Canonical: sorted, disjoint, not touching.
            for w in s.iter().collect::<Vec<_>>().windows(2) {
                prop_assert!(w[0].1 < w[1].0);
            }
            let d = s.subtract(&t);
            let md: Vec<bool> = ma.iter().zip(&mb).map(|(x, y)| *x && !*y).collect();
            prop_assert_eq!(model(&d.iter().collect::<Vec<_>>()), md);
            let (lo, hi) = (q.0.min(q.1), q.0.max(q.1));
            prop_assert_eq!(s.contains(lo, hi), (lo..hi).all(|x| ma[ix(x)]));
            let gaps = s.gaps(lo, hi);
            let mg: Vec<bool> = (0..N).map(|x| x >= lo && x < hi && !ma[ix(x)]).collect();
            prop_assert_eq!(model(&gaps), mg);
            prop_assert_eq!(s.total(), ma.iter().filter(|x| **x).count() as u64);
            let over = s.overlap(lo, hi);
            let mo: Vec<bool> = (0..N).map(|x| x >= lo && x < hi && ma[ix(x)]).collect();
            prop_assert_eq!(model(&over), mo);
            let mut r = s.clone();
            r.remove(lo, hi);
            let mr: Vec<bool> = (0..N).map(|x| ma[ix(x)] && !(x >= lo && x < hi)).collect();
            prop_assert_eq!(model(&r.iter().collect::<Vec<_>>()), mr);
            if let Some((a, b)) = s.around(lo) {
                prop_assert!(a <= lo && lo < b && ma[ix(lo)]);
            } else {
                prop_assert!(!ma[ix(lo)]);
            }
        }
    }
}
