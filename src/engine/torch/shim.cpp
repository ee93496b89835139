// The libtorch calls the LibTorch engine needs that the tch crate does not bind: autocast's
// compute type on CUDA, TF32 set as PyTorch's defaults say, PyTorch's fused optimiser
// kernels (torch.optim's `fused=True`: one pass over every parameter) and the global
// gradient norm of `clip_grad_norm_` (`_foreach_norm`). Tensors come as tch's handles
// (`at::Tensor *`). Each call returns 0, or 1 when libtorch threw, its message then in
// `adanoise_last_error()`.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

#include <exception>
#include <string>
#include <vector>

namespace {

thread_local std::string last_error;

template <class F>
int guarded(F f) {
  try {
    f();
    return 0;
  } catch (const std::exception &e) {
    last_error = e.what();
  } catch (...) {
    last_error = "libtorch failed without a message";
  }
  return 1;
}

std::vector<at::Tensor> handles(at::Tensor **tensors, int n) {
  std::vector<at::Tensor> list;
  list.reserve(n);
  for (int i = 0; i < n; i++) list.push_back(*tensors[i]);
  return list;
}

}  // namespace

extern "C" const char *adanoise_last_error() { return last_error.c_str(); }

extern "C" int adanoise_set_cuda_autocast_bf16(int bf16) {
  return guarded([&] {
    at::autocast::set_autocast_dtype(at::kCUDA, bf16 ? at::kBFloat16 : at::kHalf);
  });
}

// PyTorch's defaults: TF32 for cuDNN convolutions (torch.backends.cudnn.allow_tf32), full
// f32 for matrix products (torch.backends.cuda.matmul.allow_tf32 = False, "highest").
extern "C" int adanoise_set_pytorch_tf32_defaults() {
  return guarded([&] {
    at::globalContext().setAllowTF32CuDNN(true);
    at::globalContext().setFloat32MatmulPrecision("highest");
  });
}

// SGD with L2 weight decay and, when `momentum` is not 0, momentum without dampening
// (`buffers` then hold it; on the first step they are set to the gradient).
extern "C" int adanoise_fused_sgd(at::Tensor **params, at::Tensor **grads, at::Tensor **buffers,
                                  int n, double weight_decay, double momentum, double lr,
                                  int first_step) {
  return guarded([&] {
    std::vector<at::Tensor> momentum_buffers;
    if (momentum != 0.0) momentum_buffers = handles(buffers, n);
    at::_fused_sgd_(handles(params, n), handles(grads, n), momentum_buffers, weight_decay,
                    momentum, lr, /*dampening=*/0.0, /*nesterov=*/false, /*maximize=*/false,
                    first_step != 0);
  });
}

// Adam with L2 weight decay (not AdamW) and bias correction; `steps` are each parameter's
// step count (f32 scalars), advanced here as torch.optim.Adam advances them.
extern "C" int adanoise_fused_adam(at::Tensor **params, at::Tensor **grads, at::Tensor **exp_avgs,
                                   at::Tensor **exp_avg_sqs, at::Tensor **steps, int n, double lr,
                                   double beta1, double beta2, double weight_decay, double eps) {
  return guarded([&] {
    std::vector<at::Tensor> state_steps = handles(steps, n);
    at::_foreach_add_(state_steps, 1);
    at::_fused_adam_(handles(params, n), handles(grads, n), handles(exp_avgs, n),
                     handles(exp_avg_sqs, n), /*max_exp_avg_sqs=*/{}, state_steps, lr, beta1,
                     beta2, weight_decay, eps, /*amsgrad=*/false, /*maximize=*/false);
  });
}

// The L2 norm of the per-tensor L2 norms, as `clip_grad_norm_` takes it; `*out` receives a
// new tensor.
extern "C" int adanoise_global_norm(at::Tensor **grads, int n, at::Tensor **out) {
  return guarded([&] {
    auto norms = at::_foreach_norm(handles(grads, n), 2);
    *out = new at::Tensor(at::linalg_vector_norm(at::stack(norms), 2));
  });
}
