//! The closed forms of the method: how stuck a trend is, the noise magnitude
//! and its damping, the cooldown length, the uniform distribution's bound and
//! the annealed policy's sigma. All in f64.

use std::f64::consts::PI;

/// Signed relative improvement `(x0 - x1) / x0` of a quantity that should
/// shrink; 0 when `x0` is 0 (there is nothing to improve on).
pub fn improvement(x0: f64, x1: f64) -> f64 {
    if x0 == 0.0 { 0.0 } else { (x0 - x1) / x0 }
}

/// `F_stuck = 1 - sigmoid(k I - d)` with `k = 2 / d`: near 1 when the quantity got
/// worse, near 0 when it improved well past the threshold `d`.
///
/// Evaluated as `sigmoid(d - k I)` on the side where the exponential cannot
/// overflow, which stays exact when `k` is large (`d = 1e-4` gives `k = 20,000`).
pub fn stuckness(improvement: f64, delta: f64) -> f64 {
    let k = 2.0 / delta;
    let z = delta - k * improvement;
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// The end-of-training damping `0.5 (1 + cos(pi e / E_max))`: 1 at the start, 0 at
/// `E_max`. Periodic beyond `E_max`, which is why the scheduler refuses such epochs.
pub fn damping(epoch: u64, schedule_epochs: u64) -> f64 {
    0.5 * (1.0 + (PI * epoch as f64 / schedule_epochs as f64).cos())
}

/// `(sigma_min + F_stuck (sigma_max - sigma_min)) * damping`.
pub fn magnitude(sigma_min: f64, sigma_max: f64, stuck: f64, damping: f64) -> f64 {
    (sigma_min + stuck * (sigma_max - sigma_min)) * damping
}

/// The cooldown length `round_half_away_from_zero(CD_min + F_grad (CD_max - CD_min))`.
pub fn cooldown_length(cooldown_min: f64, cooldown_max: f64, stuck_grad: f64) -> u64 {
    // `f64::round` rounds half away from zero.
    (cooldown_min + stuck_grad * (cooldown_max - cooldown_min))
        .round()
        .max(0.0) as u64
}

/// The bound `a = sqrt(3) sigma` of uniform noise `U(-a, a)` with standard deviation `sigma`.
pub fn uniform_bound(sigma: f64) -> f64 {
    3f64.sqrt() * sigma
}

/// The annealed policy's standard deviation at global step `t`:
/// `sqrt(eta / (1 + t)^gamma)`.
pub fn annealed_sigma(eta: f64, gamma: f64, step: u64) -> f64 {
    (eta / (1.0 + step as f64).powf(gamma)).sqrt()
}

/// `v` as a person reads it: plain for everyday magnitudes, in exponent form for very
/// large or very small ones (`1e300`, not 301 digits).
pub fn compact(v: f64) -> String {
    if v != 0.0 && v.is_finite() && !(1e-4..1e6).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuckness_at_its_extremes() {
        assert_eq!(stuckness(1e6, 1e-4), 0.0);
        assert_eq!(stuckness(-1e6, 1e-4), 1.0);
        assert!((stuckness(0.0, 1e-4) - 1.0 / (1.0 + (-1e-4f64).exp())).abs() < 1e-15);
        let tiny = stuckness(0.01, 1e-4); // z = 1e-4 - 200
        assert!(tiny > 0.0 && tiny < 1e-80);
        assert_eq!(stuckness(f64::INFINITY, 0.025), 0.0);
    }

    #[test]
    fn damping_runs_from_one_to_zero() {
        assert_eq!(damping(0, 300), 1.0);
        assert!((damping(150, 300) - 0.5).abs() < 1e-15);
        assert!(damping(300, 300).abs() < 1e-15);
    }

    #[test]
    fn cooldown_rounds_half_away_from_zero() {
        assert_eq!(cooldown_length(3.0, 10.0, 0.5), 7); // 6.5
        assert_eq!(cooldown_length(2.0, 4.0, 0.25), 3); // 2.5
        assert_eq!(cooldown_length(3.0, 10.0, 0.0), 3);
    }

    #[test]
    fn annealed_sigma_by_hand() {
        assert_eq!(annealed_sigma(0.01, 0.55, 0), 0.1);
        // t = 99: sqrt(0.01 / 100^0.55) = 0.1 * 100^-0.275
        let want = 0.1 * 100f64.powf(-0.275);
        assert!((annealed_sigma(0.01, 0.55, 99) - want).abs() < 1e-15);
    }
}
