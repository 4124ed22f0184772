//! Medians and ratios over rounds.

/// The median of the finite values (mean of the middle two for an even count); `None` when there
/// is none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 { sorted[mid] } else { (sorted[mid - 1] + sorted[mid]) / 2.0 })
}

/// `a / b`, `None` when `b` is zero or either is not finite.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (a.is_finite() && b.is_finite() && b != 0.0).then(|| a / b)
}

/// The median of per-round ratios `a[i] / b[i]` (rounds where either is missing are left out).
pub fn median_ratio(a: &[Option<f64>], b: &[Option<f64>]) -> Option<f64> {
    let ratios: Vec<f64> = a.iter().zip(b).filter_map(|(a, b)| ratio((*a)?, (*b)?)).collect();
    median(&ratios)
}

/// The median of per-round differences `a[i] - b[i]`.
pub fn median_difference(a: &[Option<f64>], b: &[Option<f64>]) -> Option<f64> {
    let diffs: Vec<f64> = a.iter().zip(b).filter_map(|(a, b)| Some((*a)? - (*b)?)).collect();
    median(&diffs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn ratio_refuses_division_by_zero() {
        assert_eq!(ratio(9.0, 10.0), Some(0.9));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(f64::INFINITY, 1.0), None);
    }

    #[test]
    fn ratios_are_taken_per_round_then_the_median() {
        // Round 2 is noisy in both; per-round ratios stay 0.5, 0.5, 0.75.
        let a = [Some(50.0), Some(20.0), Some(75.0), None];
        let b = [Some(100.0), Some(40.0), Some(100.0), Some(1.0)];
        assert_eq!(median_ratio(&a, &b), Some(0.5));
        assert_eq!(median_difference(&a, &b), Some(-25.0));
        assert_eq!(median_ratio(&[None], &[Some(1.0)]), None);
    }
}
