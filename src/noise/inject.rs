//! Putting noise into a Burn model: into every trainable parameter's gradient
//! (each step of a noisy epoch, before weight decay and momentum, which the
//! optimiser applies afterwards) or into every trainable parameter once (at the
//! start of a noisy epoch), scaled as the run's [`WeightNoiseScale`] says.
//! BatchNorm running statistics are never touched.
//! Noise is reproducible from a seed: on the CPU it is drawn by a parallel host
//! sampler (Burn's CPU `random` is single-threaded and cost ~17 % of a
//! ResNet-18 step), on a GPU by the device itself.

use crate::rng::with_seeded_device;
use adanoise_core::formulas::uniform_bound;
use adanoise_core::{NoiseKind, WeightNoiseScale};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Shape, Tensor, TensorData};
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

/// A noise tensor of standard deviation `sigma` on `device`, reproducible from `seed`;
/// `None` for the `none` kind.
pub fn sample_noise<const D: usize>(
    kind: NoiseKind,
    shape: Shape,
    sigma: f64,
    device: &Device,
    seed: u64,
) -> Option<Tensor<D>> {
    if kind == NoiseKind::None {
        return None;
    }
    if *device == Device::flex() {
        let values = host_noise(kind, shape.num_elements(), sigma, seed);
        return Some(Tensor::from_data(TensorData::new(values, shape), device));
    }
    let distribution = match kind {
        NoiseKind::Gaussian => Distribution::Normal(0.0, sigma),
        _ => {
            let a = uniform_bound(sigma);
            Distribution::Uniform(-a, a)
        }
    };
    Some(with_seeded_device(device, seed, || {
        Tensor::random(shape, distribution, device)
    }))
}

/// Elements drawn from one generator stream: fixed, so that the values do not depend on
/// the number of threads.
const CHUNK: usize = 1 << 15;

/// `n` values of standard deviation `sigma`, drawn in parallel chunks, each from its own
/// ChaCha8 stream of `seed`.
pub fn host_noise(kind: NoiseKind, n: usize, sigma: f64, seed: u64) -> Vec<f32> {
    let mut out = vec![0f32; n];
    let sigma = sigma as f32;
    let a = 3f32.sqrt() * sigma;
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(i as u64);
            match kind {
                NoiseKind::Gaussian => {
                    for x in chunk {
                        let z: f32 = rng.sample(StandardNormal);
                        *x = sigma * z;
                    }
                }
                NoiseKind::Uniform => {
                    for x in chunk {
                        let u: f32 = rng.random();
                        *x = a * (2.0 * u - 1.0);
                    }
                }
                NoiseKind::None => {}
            }
        });
    out
}

/// One seed per parameter, from the seed of the draw and the parameter's position.
pub(crate) fn param_seed(seed: u64, index: usize) -> u64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index as u64);
    rng.next_u64()
}

struct GradNoise<'a> {
    grads: &'a mut GradientsParams,
    kind: NoiseKind,
    sigma: f64,
    seed: u64,
    index: usize,
}

impl ModuleVisitor for GradNoise<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !param.is_require_grad() {
            return;
        }
        let seed = param_seed(self.seed, self.index);
        self.index += 1;
        if let Some(grad) = self.grads.remove::<D>(param.id) {
            let noise =
                sample_noise::<D>(self.kind, grad.shape(), self.sigma, &grad.device(), seed);
            let noisy = match noise {
                Some(noise) => grad + noise,
                None => grad,
            };
            self.grads.register(param.id, noisy);
        }
    }
}

/// Adds noise of standard deviation `sigma` to the gradient of every trainable parameter,
/// reproducibly from `seed`.
pub fn add_gradient_noise<M: Module>(
    model: &M,
    grads: &mut GradientsParams,
    kind: NoiseKind,
    sigma: f64,
    seed: u64,
) {
    if kind == NoiseKind::None || sigma <= 0.0 {
        return;
    }
    model.visit(&mut GradNoise {
        grads,
        kind,
        sigma,
        seed,
        index: 0,
    });
}

struct WeightNoise {
    kind: NoiseKind,
    sigma: f64,
    scale: WeightNoiseScale,
    seed: u64,
    index: usize,
}

impl ModuleMapper for WeightNoise {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if !param.is_require_grad() {
            return param;
        }
        let (kind, sigma, scale) = (self.kind, self.sigma, self.scale);
        let seed = param_seed(self.seed, self.index);
        self.index += 1;
        param.map(|tensor| {
            let inner = tensor.inner();
            let noise = sample_noise::<D>(kind, inner.shape(), sigma, &inner.device(), seed);
            let noise = match scale {
                // sigma * rms(w) = (unit-sigma-scaled draw) * rms(w), kept on the device.
                WeightNoiseScale::Relative => noise.map(|n| n * root_mean_square(&inner)),
                _ => noise,
            };
            match noise {
                Some(noise) => Tensor::from_inner(inner + noise).require_grad(),
                None => Tensor::from_inner(inner).require_grad(),
            }
        })
    }
}

/// The tensor's root mean square, as a tensor of its rank with every dimension 1 (so that
/// it broadcasts), computed on its device.
fn root_mean_square<const D: usize>(tensor: &Tensor<D>) -> Tensor<D> {
    tensor.clone().square().mean().sqrt().reshape([1; D])
}

/// Adds noise to every trainable parameter (not to BN statistics), reproducibly from `seed`:
/// of standard deviation `sigma` per element (`absolute`), `sigma` times each tensor's root
/// mean square (`relative`), or none (`none`). Parameters keep their ids, so the optimiser's
/// state carries over.
pub fn add_weight_noise<M: Module>(
    model: M,
    kind: NoiseKind,
    sigma: f64,
    scale: WeightNoiseScale,
    seed: u64,
) -> M {
    if kind == NoiseKind::None || sigma <= 0.0 || scale == WeightNoiseScale::None {
        return model;
    }
    model.map(&mut WeightNoise {
        kind,
        sigma,
        scale,
        seed,
        index: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::burn::param_stats::WeightSnapshot;
    use crate::models::ModelKind;

    fn values(t: Tensor<1>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn uniform_noise_is_bounded_with_variance_sigma_squared() {
        let device = Device::flex();
        let sigma = 0.3;
        let noise = sample_noise::<1>(NoiseKind::Uniform, Shape::new([200_000]), sigma, &device, 1)
            .unwrap();
        let v = values(noise);
        let bound = 3f64.sqrt() * sigma;
        assert!(v.iter().all(|x| (*x as f64).abs() <= bound + 1e-6));
        let mean = v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var / (sigma * sigma) - 1.0).abs() < 0.03, "variance {var}");
        // It really spreads out to the bound.
        assert!(v.iter().any(|x| (*x as f64).abs() > 0.95 * bound));
    }

    #[test]
    fn gaussian_noise_has_standard_deviation_sigma() {
        let device = Device::flex();
        let noise = sample_noise::<1>(NoiseKind::Gaussian, Shape::new([200_000]), 0.05, &device, 2)
            .unwrap();
        let v = values(noise);
        let var = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64;
        assert!((var.sqrt() / 0.05 - 1.0).abs() < 0.03);
    }

    #[test]
    fn host_noise_is_reproducible_and_independent_of_threads() {
        let a = host_noise(NoiseKind::Gaussian, 100_000, 1.0, 9);
        let one_thread = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let b = one_thread.install(|| host_noise(NoiseKind::Gaussian, 100_000, 1.0, 9));
        assert_eq!(a, b);
        assert_ne!(a, host_noise(NoiseKind::Gaussian, 100_000, 1.0, 10));
        // Chunks are independent streams, not copies of each other.
        assert_ne!(a[..CHUNK], a[CHUNK..2 * CHUNK]);
    }

    #[derive(Module, Debug)]
    struct Lin {
        w: Param<Tensor<1>>,
    }

    #[test]
    fn gradient_noise_reaches_the_gradients_and_not_the_weights() {
        let device = Device::flex().autodiff();
        let model = Lin {
            w: Param::from_tensor(Tensor::from_data(TensorData::from([1.0f32; 4]), &device)),
        };
        let coef = Tensor::<1>::from_data(TensorData::from([2.0f32; 4]), &device);
        let loss = (model.w.val() * coef).sum();
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        let before = values(model.w.val().inner());
        add_gradient_noise(&model, &mut grads, NoiseKind::Gaussian, 0.5, 7);
        let g = values(grads.get::<1>(model.w.id).unwrap());
        assert!(
            g.iter().any(|x| (x - 2.0).abs() > 1e-3),
            "gradient unchanged: {g:?}"
        );
        assert_eq!(values(model.w.val().inner()), before);
        // Same seed, same noise; `none` changes nothing.
        let mut again = GradientsParams::from_grads(
            (model.w.val() * Tensor::<1>::from_data(TensorData::from([2.0f32; 4]), &device))
                .sum()
                .backward(),
            &model,
        );
        add_gradient_noise(&model, &mut again, NoiseKind::Gaussian, 0.5, 7);
        assert_eq!(values(again.get::<1>(model.w.id).unwrap()), g);
        let mut clean = GradientsParams::from_grads(
            (model.w.val() * Tensor::<1>::from_data(TensorData::from([2.0f32; 4]), &device))
                .sum()
                .backward(),
            &model,
        );
        add_gradient_noise(&model, &mut clean, NoiseKind::None, 0.5, 7);
        assert_eq!(values(clean.get::<1>(model.w.id).unwrap()), vec![2.0; 4]);
    }

    /// Every trainable tensor of `model`, flattened, in order.
    fn tensors(model: &crate::models::Model) -> Vec<Vec<f64>> {
        struct All(Vec<Vec<f64>>);
        impl ModuleVisitor for All {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if param.is_require_grad() {
                    let data = param.val().inner().into_data().convert::<f32>();
                    let v = data.try_to_vec::<f32>().unwrap();
                    self.0.push(v.into_iter().map(f64::from).collect());
                }
            }
        }
        let mut all = All(Vec::new());
        model.visit(&mut all);
        all.0
    }

    #[test]
    fn relative_weight_noise_follows_each_tensors_scale_and_none_adds_nothing() {
        let device = Device::flex().autodiff();
        let model = crate::train::init_model(ModelKind::TinyCnn, 0, 10, &device);
        let before = tensors(&model);
        let sigma = 0.05;
        let noisy = add_weight_noise(
            model.clone(),
            NoiseKind::Gaussian,
            sigma,
            WeightNoiseScale::Relative,
            11,
        );
        for (then, now) in before.iter().zip(tensors(&noisy)) {
            // Tensors of 64 elements or more: enough draws for a 20 % tolerance.
            if then.len() < 64 {
                continue;
            }
            let rms = (then.iter().map(|x| x * x).sum::<f64>() / then.len() as f64).sqrt();
            let diffs: Vec<f64> = now.iter().zip(then).map(|(a, b)| a - b).collect();
            let std = (diffs.iter().map(|d| d * d).sum::<f64>() / diffs.len() as f64).sqrt();
            let want = sigma * rms;
            assert!(
                (std / want - 1.0).abs() < 0.2,
                "{} elements: noise std {std}, sigma x rms {want}",
                then.len()
            );
        }
        let untouched = add_weight_noise(
            model.clone(),
            NoiseKind::Gaussian,
            sigma,
            WeightNoiseScale::None,
            11,
        );
        assert_eq!(tensors(&untouched), before);
        // Absolute: sigma per element, whatever the tensor's scale.
        let absolute = add_weight_noise(
            model,
            NoiseKind::Gaussian,
            sigma,
            WeightNoiseScale::Absolute,
            11,
        );
        let diffs: Vec<f64> = tensors(&absolute)
            .iter()
            .flatten()
            .zip(before.iter().flatten())
            .map(|(a, b)| a - b)
            .collect();
        let std = (diffs.iter().map(|d| d * d).sum::<f64>() / diffs.len() as f64).sqrt();
        assert!((std / sigma - 1.0).abs() < 0.02, "{std}");
    }

    #[test]
    fn weight_noise_moves_parameters_but_not_batchnorm_statistics() {
        let device = Device::flex().autodiff();
        let model = ModelKind::Resnet18.build(10, &device);
        let stats_before = crate::models::running_stats(&model);
        let before = WeightSnapshot::take(&model);
        let ids_before = crate::models::param_ids(&model);
        let model = add_weight_noise(
            model,
            NoiseKind::Uniform,
            0.01,
            WeightNoiseScale::Absolute,
            3,
        );
        let change = WeightSnapshot::take(&model).relative_change(&before);
        assert!(change > 0.0, "weights unchanged");
        assert_eq!(
            crate::models::running_stats(&model),
            stats_before,
            "BN statistics changed"
        );
        assert_eq!(
            crate::models::param_ids(&model),
            ids_before,
            "parameter ids changed"
        );
        assert!(
            crate::models::trainable_params(&model) == 11_173_962,
            "parameters stopped requiring grad"
        );
    }
}
