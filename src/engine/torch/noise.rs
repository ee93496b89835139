//! Gradient and weight noise on LibTorch tensors, drawn by libtorch's own
//! generator on the tensors' device: each parameter's draw is seeded from the
//! draw's seed (the run, the step or the epoch) and the parameter's position, so
//! the same noise follows however a run was interrupted. The numbers are not the
//! Burn engine's (another generator); their distributions are the same.

use crate::engine::NoiseDraw;
use adanoise_core::formulas::uniform_bound;
use adanoise_core::{NoiseKind, WeightNoiseScale};
use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::Tensor;

/// One seed per parameter, from the seed of the draw and the parameter's position (as the
/// Burn engine derives them).
fn param_seed(seed: u64, index: usize) -> i64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index as u64);
    // libtorch's generators take the seed's bits; keep it non-negative for clarity.
    (rng.next_u64() >> 1) as i64
}

/// Noise shaped like `like`, of standard deviation `sigma`, from libtorch's generator
/// seeded with `seed`.
fn sample(like: &Tensor, kind: NoiseKind, sigma: f64, seed: i64) -> Result<Option<Tensor>> {
    if kind == NoiseKind::None {
        return Ok(None);
    }
    tch::manual_seed(seed);
    Ok(Some(match kind {
        NoiseKind::Gaussian => like.f_randn_like()?.f_mul_scalar(sigma)?,
        _ => {
            let a = uniform_bound(sigma);
            like.f_rand_like()?.f_mul_scalar(2.0 * a)?.f_sub_scalar(a)?
        }
    }))
}

/// Adds the draw's noise to every gradient, in place.
pub fn add_to_gradients(grads: &[Tensor], draw: &NoiseDraw) -> Result<()> {
    let _guard = tch::no_grad_guard();
    for (i, grad) in grads.iter().enumerate() {
        if let Some(noise) = sample(grad, draw.kind, draw.sigma, param_seed(draw.seed, i))? {
            let _ = grad.shallow_clone().f_add_(&noise)?;
        }
    }
    Ok(())
}

/// Adds the draw's noise to every parameter, in place: `sigma` per element (absolute),
/// `sigma` times the tensor's root mean square taken just before (relative), or none.
pub fn add_to_weights(params: &[Tensor], draw: &NoiseDraw, scale: WeightNoiseScale) -> Result<()> {
    if scale == WeightNoiseScale::None {
        return Ok(());
    }
    let _guard = tch::no_grad_guard();
    for (i, param) in params.iter().enumerate() {
        let Some(mut noise) = sample(param, draw.kind, draw.sigma, param_seed(draw.seed, i))?
        else {
            continue;
        };
        if scale == WeightNoiseScale::Relative {
            noise = noise.f_mul(&param.f_square()?.f_mean(None)?.f_sqrt()?)?;
        }
        let _ = param.shallow_clone().f_add_(&noise)?;
    }
    Ok(())
}

/// Multiplies every parameter by `factor`, in place.
pub fn shrink_weights(params: &[Tensor], factor: f64) -> Result<()> {
    if factor == 1.0 {
        return Ok(());
    }
    let _guard = tch::no_grad_guard();
    for param in params {
        let _ = param.shallow_clone().f_mul_scalar_(factor)?;
    }
    Ok(())
}

/// Adds `next - previous` to every parameter, in place: two draws of the same
/// distribution, each parameter's seeded from its draw's seed.
pub fn add_difference(params: &[Tensor], next: &NoiseDraw, previous: &NoiseDraw) -> Result<()> {
    let _guard = tch::no_grad_guard();
    for (i, param) in params.iter().enumerate() {
        let a = sample(param, next.kind, next.sigma, param_seed(next.seed, i))?;
        let b = sample(
            param,
            previous.kind,
            previous.sigma,
            param_seed(previous.seed, i),
        )?;
        if let (Some(a), Some(b)) = (a, b) {
            let _ = param.shallow_clone().f_add_(&a.f_sub(&b)?)?;
        }
    }
    Ok(())
}

/// Adds one vector over all `params` (of `count` elements together) of radius `radius`:
/// uniform in the ball (`uniform`: a Gaussian direction, its length `radius u^(1/d)`), or
/// Gaussian with `radius^2 / d` per element (`gaussian`), as the Burn engine draws it.
pub fn add_ball(
    params: &[Tensor],
    kind: NoiseKind,
    radius: f64,
    seed: u64,
    count: usize,
) -> Result<()> {
    let d = count.max(1) as f64;
    let _guard = tch::no_grad_guard();
    match kind {
        NoiseKind::None => Ok(()),
        NoiseKind::Gaussian => {
            let draw = NoiseDraw {
                kind,
                sigma: radius / d.sqrt(),
                seed,
            };
            add_to_weights(params, &draw, WeightNoiseScale::Absolute)
        }
        NoiseKind::Uniform => {
            let unit: Vec<Tensor> = params
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    sample(p, NoiseKind::Gaussian, 1.0, param_seed(seed, i))
                        .map(|z| z.expect("a Gaussian draw"))
                })
                .collect::<Result<_>>()?;
            let mut sum = 0.0;
            for z in &unit {
                sum += z
                    .f_square()?
                    .f_sum(tch::Kind::Double)?
                    .f_double_value(&[])?;
            }
            if sum == 0.0 {
                return Ok(());
            }
            let scale = radius * crate::noise::perturb::ball_fraction(seed, d) / sum.sqrt();
            for (param, z) in params.iter().zip(unit) {
                let _ = param.shallow_clone().f_add_(&z.f_mul_scalar(scale)?)?;
            }
            Ok(())
        }
    }
}
