//! Putting noise into a Burn model: into every trainable parameter's gradient
//! (each step of a noisy epoch, before weight decay and momentum, which the
//! optimiser applies afterwards) or into every trainable parameter once (at the
//! start of a noisy epoch). BatchNorm running statistics are never touched.
//! Noise is drawn on the tensors' own device from a seeded generator.

use crate::rng::with_seeded_device;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Shape, Tensor};
use serde::{Deserialize, Serialize};

/// The distribution of injected noise.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum NoiseKind {
    /// Decide and record, never inject (the baseline).
    #[default]
    None,
    /// `sigma * N(0, 1)` per element.
    Gaussian,
    /// `U(-sqrt(3) sigma, sqrt(3) sigma)` per element: the same standard deviation.
    Uniform,
}

impl NoiseKind {
    pub const ALL: [NoiseKind; 3] = [Self::None, Self::Gaussian, Self::Uniform];

    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gaussian => "gaussian",
            Self::Uniform => "uniform",
        }
    }

    /// A noise tensor of standard deviation `sigma`; `None` for the `none` kind.
    pub fn sample<const D: usize>(
        self,
        shape: Shape,
        sigma: f64,
        device: &Device,
    ) -> Option<Tensor<D>> {
        let distribution = match self {
            Self::None => return None,
            Self::Gaussian => Distribution::Normal(0.0, sigma),
            Self::Uniform => {
                let a = 3f64.sqrt() * sigma;
                Distribution::Uniform(-a, a)
            }
        };
        Some(Tensor::random(shape, distribution, device))
    }
}

impl std::fmt::Display for NoiseKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

struct GradNoise<'a> {
    grads: &'a mut GradientsParams,
    kind: NoiseKind,
    sigma: f64,
}

impl ModuleVisitor for GradNoise<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !param.is_require_grad() {
            return;
        }
        if let Some(grad) = self.grads.remove::<D>(param.id) {
            let noisy = match self
                .kind
                .sample::<D>(grad.shape(), self.sigma, &grad.device())
            {
                Some(noise) => grad + noise,
                None => grad,
            };
            self.grads.register(param.id, noisy);
        }
    }
}

/// Adds noise of standard deviation `sigma` to the gradient of every trainable parameter.
/// `device` is the gradients' (non-autodiff) device, seeded with `seed` for the draw.
pub fn add_gradient_noise<M: Module>(
    model: &M,
    grads: &mut GradientsParams,
    kind: NoiseKind,
    sigma: f64,
    device: &Device,
    seed: u64,
) {
    if kind == NoiseKind::None || sigma <= 0.0 {
        return;
    }
    with_seeded_device(device, seed, || {
        model.visit(&mut GradNoise { grads, kind, sigma })
    });
}

struct WeightNoise {
    kind: NoiseKind,
    sigma: f64,
}

impl ModuleMapper for WeightNoise {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if !param.is_require_grad() {
            return param;
        }
        let (kind, sigma) = (self.kind, self.sigma);
        param.map(|tensor| {
            let inner = tensor.inner();
            match kind.sample::<D>(inner.shape(), sigma, &inner.device()) {
                Some(noise) => Tensor::from_inner(inner + noise).require_grad(),
                None => Tensor::from_inner(inner).require_grad(),
            }
        })
    }
}

/// Adds noise of standard deviation `sigma` to every trainable parameter (not to BN statistics).
/// Parameters keep their ids, so the optimiser's state (momentum) carries over.
pub fn add_weight_noise<M: Module>(
    model: M,
    kind: NoiseKind,
    sigma: f64,
    device: &Device,
    seed: u64,
) -> M {
    if kind == NoiseKind::None || sigma <= 0.0 {
        return model;
    }
    with_seeded_device(device, seed, || model.map(&mut WeightNoise { kind, sigma }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ModelKind;
    use crate::train::param_stats::WeightSnapshot;
    use burn::tensor::TensorData;

    fn values(t: Tensor<1>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn uniform_noise_is_bounded_with_variance_sigma_squared() {
        let device = Device::flex();
        let sigma = 0.3;
        let noise = with_seeded_device(&device, 1, || {
            NoiseKind::Uniform
                .sample::<1>(Shape::new([200_000]), sigma, &device)
                .unwrap()
        });
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
        let noise = with_seeded_device(&device, 2, || {
            NoiseKind::Gaussian
                .sample::<1>(Shape::new([200_000]), 0.05, &device)
                .unwrap()
        });
        let v = values(noise);
        let var = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64;
        assert!((var.sqrt() / 0.05 - 1.0).abs() < 0.03);
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
        add_gradient_noise(
            &model,
            &mut grads,
            NoiseKind::Gaussian,
            0.5,
            &device.clone().inner(),
            7,
        );
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
        add_gradient_noise(
            &model,
            &mut again,
            NoiseKind::Gaussian,
            0.5,
            &device.clone().inner(),
            7,
        );
        assert_eq!(values(again.get::<1>(model.w.id).unwrap()), g);
        let mut clean = GradientsParams::from_grads(
            (model.w.val() * Tensor::<1>::from_data(TensorData::from([2.0f32; 4]), &device))
                .sum()
                .backward(),
            &model,
        );
        add_gradient_noise(
            &model,
            &mut clean,
            NoiseKind::None,
            0.5,
            &device.clone().inner(),
            7,
        );
        assert_eq!(values(clean.get::<1>(model.w.id).unwrap()), vec![2.0; 4]);
    }

    #[test]
    fn weight_noise_moves_parameters_but_not_batchnorm_statistics() {
        let device = Device::flex().autodiff();
        let model = ModelKind::Resnet18.build(10, &device);
        let stats_before = crate::models::running_stats(&model);
        let before = WeightSnapshot::take(&model);
        let ids_before = crate::models::param_ids(&model);
        let model = add_weight_noise(model, NoiseKind::Uniform, 0.01, &device.clone().inner(), 3);
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
