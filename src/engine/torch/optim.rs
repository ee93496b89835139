//! The three optimisers on LibTorch tensors, with PyTorch's semantics: L2 weight
//! decay added to the gradient; SGD momentum 0.9 without dampening, the first
//! step's buffer the gradient itself; Adam with bias correction, eps 1e-8 added
//! after the square root, not AdamW. Each step is one of PyTorch's fused kernels
//! (`torch.optim.SGD(fused=True)`, `Adam(fused=True)`: one pass over all the
//! parameters), which compute these rules to the same float rounding.

use super::libtorch;
use crate::optim::{MOMENTUM, OptimizerKind};
use anyhow::{Result, bail};
use tch::{Kind, Tensor};

/// PyTorch's Adam betas and eps, as the Python floats (f64) torch.optim takes.
const ADAM: (f64, f64, f64) = (0.9, 0.999, 1e-8);

/// An optimiser and its state, one entry per parameter.
pub struct Optimizer {
    kind: OptimizerKind,
    weight_decay: f64,
    /// SGD's momentum buffers, or Adam's first moments (made at the first step).
    first: Vec<Tensor>,
    /// Adam's second moments.
    second: Vec<Tensor>,
    /// Adam's per-parameter step counts (f32 scalars, as torch.optim keeps them).
    steps: Vec<Tensor>,
    /// Steps taken.
    taken: i64,
}

impl Optimizer {
    /// A fresh optimiser; its state is made at the first step.
    pub fn new(kind: OptimizerKind, weight_decay: f64) -> Self {
        Self {
            kind,
            weight_decay,
            first: Vec::new(),
            second: Vec::new(),
            steps: Vec::new(),
            taken: 0,
        }
    }

    /// Makes the state for `params` if it is not there yet (zeros, as torch.optim does).
    fn make_state(&mut self, params: &[Tensor]) -> Result<()> {
        if !self.first.is_empty() || self.kind == OptimizerKind::Sgd {
            return Ok(());
        }
        let zeros = || -> Result<Vec<Tensor>> {
            Ok(params
                .iter()
                .map(Tensor::f_zeros_like)
                .collect::<Result<Vec<_>, _>>()?)
        };
        self.first = zeros()?;
        if self.kind == OptimizerKind::Adam {
            self.second = zeros()?;
            self.steps = params
                .iter()
                .map(|p| Tensor::f_zeros([], (Kind::Float, p.device())))
                .collect::<Result<Vec<_>, _>>()?;
        }
        Ok(())
    }

    /// Updates `params` with `grads` at rate `lr`.
    pub fn step(&mut self, params: &[Tensor], grads: &[Tensor], lr: f64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        self.make_state(params)?;
        let first_step = self.taken == 0;
        self.taken += 1;
        let wd = self.weight_decay;
        match self.kind {
            OptimizerKind::Sgd => libtorch::fused_sgd(params, grads, &[], wd, 0.0, lr, first_step),
            OptimizerKind::SgdMomentum => {
                libtorch::fused_sgd(params, grads, &self.first, wd, MOMENTUM, lr, first_step)
            }
            OptimizerKind::Adam => libtorch::fused_adam(
                params,
                grads,
                &self.first,
                &self.second,
                &self.steps,
                lr,
                (ADAM.0, ADAM.1),
                wd,
                ADAM.2,
            ),
        }
    }

    /// The state as named tensors (CPU copies), for a checkpoint.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut named = vec![("taken".to_string(), Tensor::from_slice(&[self.taken]))];
        for (name, tensors) in [
            ("first", &self.first),
            ("second", &self.second),
            ("steps", &self.steps),
        ] {
            for (i, t) in tensors.iter().enumerate() {
                named.push((format!("{name}.{i}"), t.f_to_device(tch::Device::Cpu)?));
            }
        }
        Ok(named)
    }

    /// Continues from `state` (as [`Optimizer::state`] wrote it), its tensors moved to
    /// where `params` are.
    pub fn load(&mut self, state: Vec<(String, Tensor)>, params: &[Tensor]) -> Result<()> {
        let mut fresh = Self::new(self.kind, self.weight_decay);
        let unfit = |name: &str| {
            anyhow::anyhow!("the checkpoint's optimiser state does not fit this model ({name})")
        };
        let mut entries: Vec<(String, usize, Tensor)> = Vec::new();
        for (name, tensor) in state {
            if name == "taken" {
                fresh.taken = tensor.f_int64_value(&[0])?;
                continue;
            }
            let Some((which, index)) = name.split_once('.') else {
                bail!("the checkpoint's optimiser state holds an unknown entry '{name}'");
            };
            let i: usize = index
                .parse()
                .ok()
                .filter(|&i| i < params.len())
                .ok_or_else(|| unfit(&name))?;
            entries.push((which.to_string(), i, tensor));
        }
        if fresh.taken > 0 {
            fresh.make_state(params)?;
        }
        let _guard = tch::no_grad_guard();
        for (which, i, tensor) in entries {
            let target = match which.as_str() {
                "first" => fresh.first.get(i),
                "second" => fresh.second.get(i),
                "steps" => fresh.steps.get(i),
                _ => bail!("the checkpoint's optimiser state holds an unknown entry '{which}.{i}'"),
            };
            let target = target.ok_or_else(|| unfit(&format!("{which}.{i}")))?;
            if target.size() != tensor.size() {
                return Err(unfit(&format!("{which}.{i}")));
            }
            target.shallow_clone().f_copy_(&tensor)?;
        }
        *self = fresh;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::reference::{GRADS, LR, W0, WD, assert_close, weights_after};

    fn run(optim: &mut Optimizer, param: &Tensor, steps: &[[f64; 2]]) {
        for g in steps {
            let grad = Tensor::from_slice(&g.map(|x| x as f32));
            optim
                .step(std::slice::from_ref(param), &[grad], LR)
                .unwrap();
        }
    }

    fn values(t: &Tensor) -> Vec<f64> {
        let mut out = vec![0f32; 2];
        t.copy_data(&mut out, 2);
        out.into_iter().map(f64::from).collect()
    }

    #[test]
    fn every_optimiser_matches_pytorch_and_resumes_from_its_state() {
        for kind in [
            OptimizerKind::Sgd,
            OptimizerKind::SgdMomentum,
            OptimizerKind::Adam,
        ] {
            let param = Tensor::from_slice(&W0.map(|x| x as f32)).set_requires_grad(true);
            let mut optim = Optimizer::new(kind, WD);
            run(&mut optim, &param, &GRADS);
            assert_close(&values(&param), &weights_after(kind));

            // Two steps, the state saved and loaded into a fresh optimiser, the third step.
            let param = Tensor::from_slice(&W0.map(|x| x as f32)).set_requires_grad(true);
            let mut first = Optimizer::new(kind, WD);
            run(&mut first, &param, &GRADS[..2]);
            let mut second = Optimizer::new(kind, WD);
            second
                .load(first.state().unwrap(), std::slice::from_ref(&param))
                .unwrap();
            run(&mut second, &param, &GRADS[2..]);
            assert_close(&values(&param), &weights_after(kind));
        }
    }
}
