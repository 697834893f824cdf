//! Two configurations compared on a machine whose speed drifts over minutes by more than the
//! difference sought. Figures of two bench rows are taken minutes apart, in separate labs, so
//! such a comparison is measured again here, alternately, in pairs whose order flips every
//! pair (A B, B A, A B, ...): a drift then falls on both sides alike.

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
}

/// `pairs` alternated measurements of `a` and `b`; `label` names the figure in the progress
/// lines.
pub fn alternate(
    label: &str,
    pairs: u32,
    mut a: impl FnMut() -> Result<f64>,
    mut b: impl FnMut() -> Result<f64>,
) -> Result<Paired> {
    let (mut xs, mut ys, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..pairs {
        let (x, y) = if pair % 2 == 0 {
            let x = a()?;
            (x, b()?)
        } else {
            let y = b()?;
            (a()?, y)
        };
        println!("bench:   {label}, pair {}: {x:.4} / {y:.4}", pair + 1);
        xs.push(x);
        ys.push(y);
        if x > 0.0 {
            ratios.push(y / x);
        }
    }
    let (a, b) = (Summary::of(xs), Summary::of(ys));
    Ok(Paired {
        ratio_of_medians: b.median / a.median,
        a,
        b,
        pair_ratios: Summary::of(ratios),
    })
}

impl Paired {
    /// "B vs A = ratio; per pair median (min-max)", with `unit` after the medians.
    pub fn describe(&self, digits: usize, unit: &str) -> String {
        format!(
            "{:.digits$} vs {:.digits$}{unit} (medians) = {:.2}x; per pair {:.2}x ({:.2}-{:.2})",
            self.b.median,
            self.a.median,
            self.ratio_of_medians,
            self.pair_ratios.median,
            self.pair_ratios.min,
            self.pair_ratios.max,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::alternate;

    #[test]
    fn pairs_flip_their_order_and_ratios_are_b_over_a() {
        let order = std::cell::RefCell::new(String::new());
        let p = alternate(
            "t",
            3,
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
}
