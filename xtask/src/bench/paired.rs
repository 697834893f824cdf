//! Two configurations compared on a machine whose speed drifts over minutes by more than the
//! difference sought. Figures of two bench rows are taken minutes apart, in separate labs, so
//! such a comparison is measured again here, alternately, in pairs whose order flips every
//! pair (A B, B A, A B, ...): a drift then falls on both sides alike.

use std::ops::Range;

use anyhow::Result;
use serde::Serialize;

use super::measure::Summary;

/// One figure measured alternately for A and B.
#[derive(Debug, Serialize)]
pub struct Paired {
    pub a: Summary,
    pub b: Summary,
    /// Median of B / median of A.
    pub ratio_of_medians: f64,
    /// B / A within each pair.
    pub pair_ratios: Summary,
    /// Whether every pair puts B on the same side of A.
    pub pairs_agree: Agreement,
    /// (A, B) of each pair, in the pairs' order (the summaries' samples are sorted).
    #[serde(skip)]
    pairs: Vec<(f64, f64)>,
}

/// Alternated measurements of `a` and `b`, one per side in each of `pairs` (their indices:
/// an even pair measures A first, an odd one B); `label` names the figure in the progress
/// lines.
pub fn alternate(
    label: &str,
    pairs: Range<u32>,
    mut a: impl FnMut() -> Result<f64>,
    mut b: impl FnMut() -> Result<f64>,
) -> Result<Paired> {
    in_pairs(label, pairs, |pair| {
        Ok(if pair % 2 == 0 {
            let x = a()?;
            (x, b()?)
        } else {
            let y = b()?;
            (a()?, y)
        })
    })
}

/// A figure measured in short turns: each adds to what the next `figure` reports.
pub trait Turns {
    fn turn(&mut self) -> Result<()>;
    /// The figure over the turns since the last call.
    fn figure(&mut self) -> Result<f64>;
}

/// Like [`alternate`], for figures whose differences are smaller than how much the machine
/// moves between two measurements seconds apart (a sparse ping's time, a request/response
/// rate): within each pair A and B take `turns` short turns each, in the order A B, B A, ...
/// (an odd pair starting with B), so both meet the same moments of the machine, and each
/// side's figure for the pair is what its turns add up to. Two labs of one mode alternated
/// whole measurements at a time differed by up to 6% in TCP_RR and 40% in RTT p50; taking
/// turns, their RTT p50 came within 1-4% in every pair.
pub fn interleave(
    label: &str,
    pairs: Range<u32>,
    turns: u32,
    a: &mut dyn Turns,
    b: &mut dyn Turns,
) -> Result<Paired> {
    in_pairs(label, pairs, |pair| {
        // An odd number of turns gives the pair's first side one more first turn: the next
        // pair starts with the other side.
        for turn in 0..turns.max(1) {
            if (pair + turn) % 2 == 0 {
                a.turn()?;
                b.turn()?;
            } else {
                b.turn()?;
                a.turn()?;
            }
        }
        Ok((a.figure()?, b.figure()?))
    })
}

/// The pairs (A, B) `pair` measures, given each pair's index.
fn in_pairs(
    label: &str,
    pairs: Range<u32>,
    mut pair: impl FnMut(u32) -> Result<(f64, f64)>,
) -> Result<Paired> {
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for i in pairs {
        let (x, y) = pair(i)?;
        println!("bench:   {label}, pair {}: {x:.4} / {y:.4}", i + 1);
        xs.push(x);
        ys.push(y);
    }
    Ok(Paired::of(xs, ys))
}

impl Paired {
    /// From each pair's figures, A's in `xs` and B's in `ys`.
    fn of(xs: Vec<f64>, ys: Vec<f64>) -> Paired {
        let ratios = xs
            .iter()
            .zip(&ys)
            .filter(|&(&x, _)| x > 0.0)
            .map(|(x, y)| y / x)
            .collect();
        let pairs = xs.iter().copied().zip(ys.iter().copied()).collect();
        let (a, b) = (Summary::of(xs), Summary::of(ys));
        let pair_ratios = Summary::of(ratios);
        Paired {
            ratio_of_medians: b.median / a.median,
            a,
            b,
            pairs_agree: Agreement::of(&pair_ratios.samples),
            pair_ratios,
            pairs,
        }
    }

    /// The pairs of `parts` (of one figure, measured in separate runs) as one comparison.
    pub fn merge(parts: impl IntoIterator<Item = Paired>) -> Paired {
        let (xs, ys) = parts.into_iter().flat_map(|p| p.pairs).unzip();
        Paired::of(xs, ys)
    }

    /// "B vs A = ratio; per pair median (min-max), agreement", with `unit` after the medians.
    pub fn describe(&self, digits: usize, unit: &str) -> String {
        format!(
            "{:.digits$} vs {:.digits$}{unit} (medians) = {:.2}x; per pair {:.2}x ({:.2}-{:.2}), {}",
            self.b.median,
            self.a.median,
            self.ratio_of_medians,
            self.pair_ratios.median,
            self.pair_ratios.min,
            self.pair_ratios.max,
            self.pairs_agree.describe(),
        )
    }
}

/// On which side of A's figure B's falls, pair by pair. A ratio of medians near 1 says little
/// on this kind of machine (two labs of one system differ by several percent between pairs);
/// pairs that all agree are the evidence that one side is ahead, pairs on both sides a tie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Agreement {
    /// B above A in every pair.
    Higher,
    /// B below A in every pair.
    Lower,
    /// Pairs on both sides (or level).
    Tie,
    /// Fewer than two pairs (`--quick`): nothing to agree.
    TooFew,
}

impl Agreement {
    fn of(ratios: &[f64]) -> Agreement {
        if ratios.len() < 2 {
            Agreement::TooFew
        } else if ratios.iter().all(|&r| r > 1.0) {
            Agreement::Higher
        } else if ratios.iter().all(|&r| r < 1.0) {
            Agreement::Lower
        } else {
            Agreement::Tie
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Agreement::Higher => "higher in every pair",
            Agreement::Lower => "lower in every pair",
            Agreement::Tie => "pairs on both sides: a tie",
            Agreement::TooFew => "too few pairs to tell",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Agreement, Paired, alternate};

    #[test]
    fn pairs_that_disagree_make_a_tie_whatever_the_medians_say() {
        let p = Paired::of(vec![1.0, 1.0, 1.0], vec![1.2, 1.1, 0.9]);
        assert!(p.ratio_of_medians > 1.0);
        assert_eq!(p.pairs_agree, Agreement::Tie);
        assert!(p.describe(2, "").ends_with("pairs on both sides: a tie"));
        assert_eq!(
            Paired::of(vec![1.0, 2.0], vec![1.1, 2.1]).pairs_agree,
            Agreement::Higher
        );
        assert_eq!(
            Paired::of(vec![1.0, 2.0], vec![0.9, 1.9]).pairs_agree,
            Agreement::Lower
        );
        assert_eq!(
            Paired::of(vec![1.0, 2.0], vec![1.0, 2.1]).pairs_agree,
            Agreement::Tie
        );
        assert_eq!(
            Paired::of(vec![1.0], vec![2.0]).pairs_agree,
            Agreement::TooFew
        );
        assert_eq!(Paired::of(vec![], vec![]).pairs_agree, Agreement::TooFew);
    }

    #[test]
    fn pairs_flip_their_order_and_ratios_are_b_over_a() {
        let order = std::cell::RefCell::new(String::new());
        let p = alternate(
            "t",
            0..3,
            || {
                order.borrow_mut().push('a');
                Ok(2.0)
            },
            || {
                order.borrow_mut().push('b');
                Ok(3.0)
            },
        )
        .unwrap();
        assert_eq!(*order.borrow(), "abbaab");
        assert_eq!(p.ratio_of_medians, 1.5);
        assert_eq!(p.pair_ratios.samples, vec![1.5, 1.5, 1.5]);
    }

    /// Counts its turns and reports them as its figure, logging to `order`.
    struct Counter<'a> {
        name: char,
        turns: u32,
        order: &'a std::cell::RefCell<String>,
    }

    impl super::Turns for Counter<'_> {
        fn turn(&mut self) -> anyhow::Result<()> {
            self.order.borrow_mut().push(self.name);
            self.turns += 1;
            Ok(())
        }
        fn figure(&mut self) -> anyhow::Result<f64> {
            Ok(std::mem::take(&mut self.turns) as f64 * if self.name == 'a' { 1.0 } else { 2.0 })
        }
    }

    #[test]
    fn turns_alternate_within_each_pair_and_each_pair_reports_its_own_turns() {
        let order = std::cell::RefCell::new(String::new());
        let mut a = Counter {
            name: 'a',
            turns: 0,
            order: &order,
        };
        let mut b = Counter {
            name: 'b',
            turns: 0,
            order: &order,
        };
        let p = super::interleave("t", 0..2, 3, &mut a, &mut b).unwrap();
        assert_eq!(*order.borrow(), "abbaabbaabba");
        // Three turns per pair each: a pair does not see the previous pair's turns.
        assert_eq!(p.a.samples, vec![3.0, 3.0]);
        assert_eq!(p.b.samples, vec![6.0, 6.0]);
        assert_eq!(p.pair_ratios.samples, vec![2.0, 2.0]);
    }

    #[test]
    fn merged_comparisons_keep_each_pair_together() {
        let part = |pairs: std::ops::Range<u32>, xs: [f64; 2], ys: [f64; 2]| {
            let (mut x, mut y) = (xs.into_iter(), ys.into_iter());
            alternate(
                "t",
                pairs,
                || Ok(x.next().unwrap()),
                || Ok(y.next().unwrap()),
            )
            .unwrap()
        };
        // Sorted separately, the A and B figures would pair 1 with 2 and 4 with 8.
        let p = super::Paired::merge([
            part(0..2, [4.0, 1.0], [2.0, 8.0]),
            part(2..4, [1.0, 1.0], [3.0, 3.0]),
        ]);
        assert_eq!(p.pair_ratios.samples, vec![0.5, 3.0, 3.0, 8.0]);
        assert_eq!(p.a.samples, vec![1.0, 1.0, 1.0, 4.0]);
    }
}
