//! Statistics over all trainable parameters, as `docs/method.md` (section 5) defines them: the
//! global L2 norm of the loss gradient, and snapshots of the parameter vector for
//! the relative weight update of an epoch. Computed on the device; nothing here
//! reads a value back to the host.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

struct GradSquares<'a> {
    grads: &'a GradientsParams,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for GradSquares<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !param.is_require_grad() {
            return;
        }
        if let Some(grad) = self.grads.get::<D>(param.id) {
            let sum = grad.square().sum();
            self.total = Some(match self.total.take() {
                Some(total) => total + sum,
                None => sum,
            });
        }
    }
}

/// The global L2 norm of the gradient over every trainable parameter, as a 1-element tensor.
pub fn grad_norm<M: Module>(model: &M, grads: &GradientsParams) -> Option<Tensor<1>> {
    let mut visitor = GradSquares { grads, total: None };
    model.visit(&mut visitor);
    visitor.total.map(Tensor::sqrt)
}

/// Every trainable parameter, detached and flattened, in visiting order.
#[derive(Clone)]
pub struct WeightSnapshot(Vec<Tensor<1>>);

struct Snapshot(Vec<Tensor<1>>);

impl ModuleVisitor for Snapshot {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if param.is_require_grad() {
            let tensor = param.val().detach();
            let tensor = if tensor.is_autodiff() {
                tensor.inner()
            } else {
                tensor
            };
            let n = tensor.shape().num_elements();
            self.0.push(tensor.reshape([n]));
        }
    }
}

impl WeightSnapshot {
    /// The trainable parameters of `model` now.
    pub fn take<M: Module>(model: &M) -> Self {
        let mut visitor = Snapshot(Vec::new());
        model.visit(&mut visitor);
        WeightSnapshot(visitor.0)
    }

    /// `||self - before|| / ||before||` over the whole parameter vector.
    pub fn relative_change(&self, before: &WeightSnapshot) -> f64 {
        assert_eq!(
            self.0.len(),
            before.0.len(),
            "snapshots of different models"
        );
        let mut diff: Option<Tensor<1>> = None;
        let mut base: Option<Tensor<1>> = None;
        for (now, then) in self.0.iter().zip(&before.0) {
            let d = (now.clone() - then.clone()).square().sum();
            let b = then.clone().square().sum();
            diff = Some(diff.map_or(d.clone(), |x| x + d));
            base = Some(base.map_or(b.clone(), |x| x + b));
        }
        match (diff, base) {
            (Some(d), Some(b)) => {
                let b = b.into_scalar::<f64>();
                if b == 0.0 {
                    f64::INFINITY
                } else {
                    (d.into_scalar::<f64>() / b).sqrt()
                }
            }
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[derive(Module, Debug)]
    struct Two {
        a: Param<Tensor<1>>,
        b: Param<Tensor<2>>,
    }

    fn two(a: [f32; 2], b: [[f32; 2]; 1], device: &Device) -> Two {
        Two {
            a: Param::from_tensor(Tensor::from_data(TensorData::from(a), device)),
            b: Param::from_tensor(Tensor::from_data(TensorData::from(b), device)),
        }
    }

    #[test]
    fn relative_change_over_all_parameters() {
        let device = Device::flex().autodiff();
        let before = WeightSnapshot::take(&two([3.0, 0.0], [[0.0, 4.0]], &device));
        let after = WeightSnapshot::take(&two([3.0, 1.0], [[0.0, 4.0]], &device));
        // ||(0,1,0,0)|| / ||(3,0,0,4)|| = 1/5
        assert!((after.relative_change(&before) - 0.2).abs() < 1e-7);
    }

    #[test]
    fn global_grad_norm_spans_parameters() {
        let device = Device::flex().autodiff();
        let model = two([1.0, 2.0], [[3.0, 4.0]], &device);
        // loss = 3 a0 + 0 a1 + 4 b00 + 0 b01 -> grads (3, 0) and (4, 0): norm 5.
        let ca = Tensor::<1>::from_data(TensorData::from([3.0f32, 0.0]), &device);
        let cb = Tensor::<2>::from_data(TensorData::from([[4.0f32, 0.0]]), &device);
        let loss = (model.a.val() * ca).sum() + (model.b.val() * cb).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let norm = grad_norm(&model, &grads).unwrap().into_scalar::<f64>();
        assert!((norm - 5.0).abs() < 1e-6, "{norm}");
    }
}
