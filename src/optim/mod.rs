//! The paper's three optimisers with PyTorch's semantics written out: L2 weight
//! decay 1e-4 added to the gradient, SGD momentum 0.9 *without* dampening (Burn
//! defaults to 0.1), Adam with eps 1e-8 (Burn defaults to 1e-5), not AdamW.

use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, ModuleOptimizer, SgdConfig};
use serde::{Deserialize, Serialize};

/// SGD's momentum coefficient.
pub const MOMENTUM: f64 = 0.9;
/// Adam's `beta1` and `beta2`.
pub const ADAM_BETAS: (f32, f32) = (0.9, 0.999);
/// Adam's `eps` (PyTorch's; Burn's default is 1e-5).
pub const ADAM_EPSILON: f32 = 1e-8;

/// Which optimiser trains the model.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    strum::Display,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum OptimizerKind {
    /// Plain SGD.
    Sgd,
    /// SGD with momentum 0.9, no dampening.
    SgdMomentum,
    /// Adam with L2 weight decay.
    Adam,
}

impl OptimizerKind {
    /// The name used in configs, directory names and reports.
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// Builds the optimiser with the given L2 weight decay.
    pub fn build(self, weight_decay: f64) -> ModuleOptimizer {
        // Burn keeps the coefficient in f32, as its parameters are.
        let decay = (weight_decay > 0.0).then(|| WeightDecayConfig::new(weight_decay as f32));
        match self {
            Self::Sgd => SgdConfig::new().with_weight_decay(decay).init(),
            Self::SgdMomentum => SgdConfig::new()
                .with_weight_decay(decay)
                .with_momentum(Some(MomentumConfig {
                    momentum: MOMENTUM,
                    dampening: 0.0,
                    nesterov: false,
                }))
                .init(),
            Self::Adam => AdamConfig::new()
                .with_beta_1(ADAM_BETAS.0)
                .with_beta_2(ADAM_BETAS.1)
                .with_epsilon(ADAM_EPSILON)
                .with_weight_decay(decay)
                .init(),
        }
    }
}

#[cfg(test)]
pub(crate) mod reference {
    //! PyTorch's update rules worked out by hand in f64 for three steps on a two-element
    //! parameter with gradients that do not depend on it (a linear loss `g . w`): what
    //! every engine's optimisers are checked against.
    use super::{MOMENTUM, OptimizerKind};

    /// The initial weights.
    pub const W0: [f64; 2] = [0.5, -1.5];
    /// The gradient of each step.
    pub const GRADS: [[f64; 2]; 3] = [[0.1, -0.2], [0.3, 0.05], [-0.4, 0.2]];
    /// The learning rate.
    pub const LR: f64 = 0.1;
    /// The weight decay.
    pub const WD: f64 = 1e-4;

    /// The weights after the three steps of `kind`, by PyTorch's rules.
    pub fn weights_after(kind: OptimizerKind) -> [f64; 2] {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let (mut w, mut m, mut v) = (W0, [0.0; 2], [0.0; 2]);
        for (step, g) in GRADS.iter().enumerate() {
            let t = step as i32 + 1;
            for i in 0..2 {
                let d = g[i] + WD * w[i];
                match kind {
                    OptimizerKind::Sgd => w[i] -= LR * d,
                    OptimizerKind::SgdMomentum => {
                        m[i] = if step == 0 { d } else { MOMENTUM * m[i] + d };
                        w[i] -= LR * m[i];
                    }
                    OptimizerKind::Adam => {
                        m[i] = b1 * m[i] + (1.0 - b1) * d;
                        v[i] = b2 * v[i] + (1.0 - b2) * d * d;
                        let m_hat = m[i] / (1.0 - b1.powi(t));
                        let v_hat = v[i] / (1.0 - b2.powi(t));
                        w[i] -= LR * m_hat / (v_hat.sqrt() + eps);
                    }
                }
            }
        }
        w
    }

    /// Asserts that `got` is `want` to 1e-6.
    pub fn assert_close(got: &[f64], want: &[f64]) {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "got {got:?}, want {want:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    //! Three update steps on a two-element parameter, checked against the update
    //! rules of PyTorch computed by hand in f64.
    use super::reference::{GRADS, LR, W0, WD, assert_close, weights_after};
    use super::*;
    use burn::module::{Module, Param};
    use burn::optim::GradientsParams;
    use burn::tensor::{Device, Tensor, TensorData};

    #[derive(Module, Debug)]
    struct Weights {
        w: Param<Tensor<1>>,
    }

    /// Runs the optimiser on `w` with gradients that do not depend on `w` (a linear loss `g . w`).
    fn run(kind: OptimizerKind) -> Vec<f64> {
        let device = Device::flex().autodiff();
        let mut model = Weights {
            w: Param::from_tensor(Tensor::from_data(
                TensorData::from(W0.map(|x| x as f32)),
                &device,
            )),
        };
        let mut optim = kind.build(WD);
        for g in GRADS {
            let coef = Tensor::<1>::from_data(TensorData::from(g.map(|x| x as f32)), &device);
            let loss = (model.w.val() * coef).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(LR, model, grads);
        }
        model
            .w
            .val()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    }

    #[test]
    fn every_optimiser_matches_pytorch() {
        for kind in [
            OptimizerKind::Sgd,
            OptimizerKind::SgdMomentum,
            OptimizerKind::Adam,
        ] {
            assert_close(&run(kind), &weights_after(kind));
        }
    }
}
