//! What the field's weight-noise policies do to a Burn model's trainable
//! parameters besides adding a draw: shrinking them (shrink and perturb), adding
//! the difference of two draws (anti-PGD's `xi_{n+1} - xi_n`), and adding one
//! vector of a given radius over all parameters together (perturbed gradient
//! descent). Each parameter's draw is seeded from the draw's seed and the
//! parameter's position, as weight noise is; BatchNorm statistics are never
//! touched, and parameters keep their ids, so the optimiser's state carries over.

use super::inject::{add_weight_noise, param_seed, sample_noise};
use adanoise_core::{NoiseKind, WeightNoiseScale};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Multiplies every trainable parameter by `factor`.
pub fn shrink_weights<M: Module>(model: M, factor: f64) -> M {
    struct Shrink(f64);
    impl ModuleMapper for Shrink {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if !param.is_require_grad() {
                return param;
            }
            let factor = self.0;
            param.map(|t| Tensor::from_inner(t.inner().mul_scalar(factor)).require_grad())
        }
    }
    if factor == 1.0 {
        return model;
    }
    model.map(&mut Shrink(factor))
}

/// Adds `next - previous` to every trainable parameter: two draws of standard deviation
/// `sigma`, from the seeds `next` and `previous`.
pub fn add_weight_difference<M: Module>(
    model: M,
    kind: NoiseKind,
    sigma: f64,
    next: u64,
    previous: u64,
) -> M {
    struct Difference {
        kind: NoiseKind,
        sigma: f64,
        next: u64,
        previous: u64,
        index: usize,
    }
    impl ModuleMapper for Difference {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if !param.is_require_grad() {
                return param;
            }
            let seeds = (
                param_seed(self.next, self.index),
                param_seed(self.previous, self.index),
            );
            self.index += 1;
            let (kind, sigma) = (self.kind, self.sigma);
            param.map(|t| {
                let inner = t.inner();
                let (shape, device) = (inner.shape(), inner.device());
                let next = sample_noise::<D>(kind, shape.clone(), sigma, &device, seeds.0);
                let previous = sample_noise::<D>(kind, shape, sigma, &device, seeds.1);
                match (next, previous) {
                    (Some(n), Some(p)) => Tensor::from_inner(inner + n - p).require_grad(),
                    _ => Tensor::from_inner(inner).require_grad(),
                }
            })
        }
    }
    if kind == NoiseKind::None || sigma <= 0.0 {
        return model;
    }
    model.map(&mut Difference {
        kind,
        sigma,
        next,
        previous,
        index: 0,
    })
}

/// The squared L2 norm of the unit Gaussian draw of `seed` over every trainable parameter.
fn unit_draw_norm_squared<M: Module>(model: &M, seed: u64) -> f64 {
    struct Norm {
        seed: u64,
        index: usize,
        sum: f64,
    }
    impl ModuleVisitor for Norm {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if !param.is_require_grad() {
                return;
            }
            let seed = param_seed(self.seed, self.index);
            self.index += 1;
            let inner = param.val().inner();
            if let Some(z) = sample_noise::<D>(
                NoiseKind::Gaussian,
                inner.shape(),
                1.0,
                &inner.device(),
                seed,
            ) {
                self.sum += z.square().sum().into_scalar::<f64>();
            }
        }
    }
    let mut norm = Norm {
        seed,
        index: 0,
        sum: 0.0,
    };
    model.visit(&mut norm);
    norm.sum
}

/// Adds one vector over all `params` trainable weights together, of radius `radius`:
/// uniform in the ball (`uniform`: a Gaussian direction, its length `radius u^(1/d)`), or
/// Gaussian with `radius^2 / d` per element (`gaussian`).
pub fn add_weight_ball<M: Module>(
    model: M,
    kind: NoiseKind,
    radius: f64,
    seed: u64,
    params: usize,
) -> M {
    let d = params.max(1) as f64;
    match kind {
        NoiseKind::None => model,
        NoiseKind::Gaussian => add_weight_noise(
            model,
            NoiseKind::Gaussian,
            radius / d.sqrt(),
            WeightNoiseScale::Absolute,
            seed,
        ),
        NoiseKind::Uniform => {
            let length = radius * ball_fraction(seed, d);
            let norm = unit_draw_norm_squared(&model, seed).sqrt();
            if norm == 0.0 {
                return model;
            }
            // The same unit draw again, scaled so that its norm is `length`.
            add_weight_noise(
                model,
                NoiseKind::Gaussian,
                length / norm,
                WeightNoiseScale::Absolute,
                seed,
            )
        }
    }
}

/// `u^(1/d)` for `u` uniform in (0, 1] from `seed`: the fraction of the radius at which a
/// point uniform in a `d`-dimensional ball lies.
pub fn ball_fraction(seed: u64, d: f64) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(u64::MAX);
    let u: f64 = 1.0 - rng.random::<f64>();
    u.powf(1.0 / d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ModelKind;
    use burn::tensor::Device;

    /// Every trainable weight of `model`, flattened, in order.
    fn weights(model: &crate::models::Model) -> Vec<f64> {
        struct All(Vec<f64>);
        impl ModuleVisitor for All {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if param.is_require_grad() {
                    let data = param.val().inner().into_data().convert::<f32>();
                    self.0
                        .extend(data.try_to_vec::<f32>().unwrap().into_iter().map(f64::from));
                }
            }
        }
        let mut all = All(Vec::new());
        model.visit(&mut all);
        all.0
    }

    fn std_of_change(a: &[f64], b: &[f64]) -> f64 {
        let n = a.len() as f64;
        (a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / n).sqrt()
    }

    fn model() -> crate::models::Model {
        crate::train::init_model(ModelKind::BabyCnn, 0, 10, &Device::flex().autodiff())
    }

    /// With no gradient at all, anti-PGD's displacement after n steps is `xi_n - xi_0`:
    /// about `sigma sqrt(2)` per weight however many steps, where noise of the same sigma
    /// added at every step (a random walk, what gradient noise does without a gradient)
    /// grows as `sigma sqrt(n)`.
    #[test]
    fn anti_pgd_stays_within_two_draws_while_a_random_walk_grows() {
        let sigma = 0.01;
        let start = model();
        let w0 = weights(&start);
        for steps in [10u64, 40] {
            let mut anti = start.clone();
            let mut walk = start.clone();
            for n in 0..steps {
                anti = add_weight_difference(anti, NoiseKind::Gaussian, sigma, n + 1, n);
                walk = add_weight_noise(
                    walk,
                    NoiseKind::Gaussian,
                    sigma,
                    WeightNoiseScale::Absolute,
                    1000 + n,
                );
            }
            let anti = std_of_change(&weights(&anti), &w0);
            let walk = std_of_change(&weights(&walk), &w0);
            // 20,714 weights: the sample std is within about 1 % of the true one.
            let want = sigma * 2f64.sqrt();
            assert!(
                (anti / want - 1.0).abs() < 0.03,
                "{steps} steps: {anti} vs {want}"
            );
            let grows = sigma * (steps as f64).sqrt();
            assert!(
                (walk / grows - 1.0).abs() < 0.03,
                "{steps} steps: {walk} vs {grows}"
            );
        }
    }

    #[test]
    fn a_perturbation_has_its_radius_over_all_weights() {
        let start = model();
        let w0 = weights(&start);
        let d = w0.len();
        let norm = |w: &[f64]| {
            w.iter()
                .zip(&w0)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let ball = add_weight_ball(start.clone(), NoiseKind::Uniform, 2.0, 5, d);
        let r = norm(&weights(&ball));
        // Uniform in the ball: radius 2 u^(1/d), and u^(1/d) is within 0.1 % of 1 for
        // d = 20,714 unless u < e^-20.
        assert!(r <= 2.0 * (1.0 + 1e-5) && r > 1.99, "{r}");
        assert!((r - 2.0 * ball_fraction(5, d as f64)).abs() < 1e-4, "{r}");
        let gauss = add_weight_ball(start, NoiseKind::Gaussian, 2.0, 5, d);
        let r = norm(&weights(&gauss));
        assert!((r / 2.0 - 1.0).abs() < 0.02, "{r}");
    }

    #[test]
    fn shrinking_multiplies_every_trainable_weight() {
        let start = model();
        let w0 = weights(&start);
        let shrunk = weights(&shrink_weights(start, 0.4));
        for (a, b) in shrunk.iter().zip(&w0) {
            assert!((a - 0.4 * b).abs() <= 1e-7 * b.abs().max(1.0), "{a} vs {b}");
        }
    }
}
