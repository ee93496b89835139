//! The paper's four CNNs, built with PyTorch-default initialisation, and the
//! helpers every model shares (trainable parameter count, forward dispatch).

pub mod batch_norm;
mod layers;
pub mod plain_cnns;
pub mod resnet;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use plain_cnns::PlainCnn;
use resnet::ResNet18;
use serde::{Deserialize, Serialize};

/// Which architecture to build.
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
pub enum ModelKind {
    /// conv 3->8, pool, linear: 20,714 parameters.
    BabyCnn,
    /// Two convolutions and two linear layers: 545,098 parameters.
    TinyCnn,
    /// Three wide convolutions and four linear layers: 22,954,506 parameters.
    SimpleCnn,
    /// The CIFAR ResNet-18: 11,173,962 parameters.
    #[strum(serialize = "resnet18")]
    Resnet18,
    /// A model trained by the user's own code, whose run directory the Python package wrote
    /// (its name is the config's `model_name`); reports read it, `train` cannot build it.
    #[value(skip)]
    Other,
}

impl ModelKind {
    /// The four models adanoise trains.
    pub const TRAINABLE: [ModelKind; 4] = [
        ModelKind::BabyCnn,
        ModelKind::TinyCnn,
        ModelKind::SimpleCnn,
        ModelKind::Resnet18,
    ];

    /// The name used in configs, directory names and reports.
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// One line on the architecture and why the study uses it.
    pub fn description(self) -> &'static str {
        match self {
            Self::BabyCnn => {
                "conv 3->8, ReLU, pool; linear 2048->10 (underfits: does noise help it escape?)"
            }
            Self::TinyCnn => "conv 3->32->64 with ReLU and pools; linear 4096->128->10",
            Self::SimpleCnn => {
                "conv 3->256->512->512 with ReLU and pools; linear 8192->2048->1024->512->10, no regularisation"
            }
            Self::Resnet18 => {
                "CIFAR ResNet-18: 3x3 stem, BN, max-pool, BasicBlocks [2,2,2,2] of 64-512, avg-pool, linear 512->10"
            }
            Self::Other => {
                "a model trained by your own code (a run directory the Python package wrote)"
            }
        }
    }

    /// Builds the model, initialised on `device` (draws from the device's seeded RNG).
    /// Only the four of [`ModelKind::TRAINABLE`]: an engine refuses `Other` before this.
    pub fn build(self, classes: usize, device: &Device) -> Model {
        match self {
            Self::BabyCnn => Model::Plain(plain_cnns::baby_cnn(classes, device)),
            Self::TinyCnn => Model::Plain(plain_cnns::tiny_cnn(classes, device)),
            Self::SimpleCnn => Model::Plain(plain_cnns::simple_cnn(classes, device)),
            Self::Resnet18 => Model::Resnet(ResNet18::new(classes, device)),
            Self::Other => unreachable!("engine::check refuses model `other` before building"),
        }
    }

    /// Refuses a model adanoise cannot build.
    pub fn check_trainable(self) -> anyhow::Result<()> {
        if self == Self::Other {
            anyhow::bail!(
                "model `other` stands for a model trained by your own code (a run directory the Python package wrote): adanoise trains baby-cnn, tiny-cnn, simple-cnn and resnet18"
            );
        }
        Ok(())
    }
}

/// Any of the four models, behind one forward pass.
// One model per run, so the variants' size difference costs nothing; `Module` cannot be
// derived through a `Box`.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Model {
    /// baby-cnn, tiny-cnn or simple-cnn.
    Plain(PlainCnn),
    /// The CIFAR ResNet-18.
    Resnet(ResNet18),
}

impl Model {
    /// Logits `[batch, classes]` for images `[batch, 3, 32, 32]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            Model::Plain(m) => m.forward(images),
            Model::Resnet(m) => m.forward(images),
        }
    }
}

/// Counts trainable scalars: parameters that require gradients (not BN running statistics).
struct TrainableCount(usize);

impl ModuleVisitor for TrainableCount {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if param.is_require_grad() {
            self.0 += param.shape().num_elements();
        }
    }
}

/// The number of trainable parameters, as PyTorch's `sum(p.numel() for p in parameters())`.
/// Only parameters on an autodiff device report that they require gradients.
pub fn trainable_params<M: Module>(model: &M) -> usize {
    let mut count = TrainableCount(0);
    model.visit(&mut count);
    count.0
}

/// Values of every parameter that does not require gradients (BN running statistics), in order.
pub fn running_stats<M: Module>(model: &M) -> Vec<Vec<f32>> {
    struct Stats(Vec<Vec<f32>>);
    impl ModuleVisitor for Stats {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if !param.is_require_grad() {
                let data = param.val().into_data().convert::<f32>();
                self.0.push(data.try_to_vec::<f32>().unwrap_or_default());
            }
        }
    }
    let mut stats = Stats(Vec::new());
    model.visit(&mut stats);
    stats.0
}

/// The ids of every float parameter, in visiting order.
pub fn param_ids<M: Module>(model: &M) -> Vec<burn::module::ParamId> {
    struct Ids(Vec<burn::module::ParamId>);
    impl ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.id);
        }
    }
    let mut ids = Ids(Vec::new());
    model.visit(&mut ids);
    ids.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_the_paper() {
        let device = Device::flex().autodiff();
        let expected = [20_714, 545_098, 22_954_506, 11_173_962];
        for (kind, want) in ModelKind::TRAINABLE.iter().copied().zip(expected) {
            let model = kind.build(10, &device);
            assert_eq!(trainable_params(&model), want, "{kind}");
        }
    }

    #[test]
    fn forward_gives_logits_per_class() {
        let device = Device::flex();
        for kind in [ModelKind::BabyCnn, ModelKind::TinyCnn, ModelKind::Resnet18] {
            let model = kind.build(10, &device);
            let x = Tensor::<4>::zeros([2, 3, 32, 32], &device);
            assert_eq!(model.forward(x).dims(), [2, 10], "{kind}");
        }
    }
}
