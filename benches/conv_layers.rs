//! Per-layer timings of the CPU convolution kernels: forward pass and both gradients of
//! each distinct convolution of the CIFAR ResNet-18 (batch 128, 2 threads), the median of
//! `REPS` runs after two warm-up runs. `bench/pytorch_conv_layers.py` times the same
//! layers in PyTorch, so that the two can be run one after the other and compared layer
//! by layer (the whole-step comparison is `bench/compare.sh`).
//!
//!     cargo bench --bench conv_layers                 # every layer
//!     ONLY=1 REPS=30 cargo bench --bench conv_layers  # one layer, e.g. under `perf record`
//!
//! Each run also squares and sums the output for a loss, as the PyTorch script does, so
//! both include that elementwise work.

use adanoise::device::{DeviceKind, set_cpu_threads};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::{Distribution, Tensor};
use std::time::Instant;

/// `(c_in, c_out, side, kernel, stride)`, with padding `kernel / 2`, and how many times
/// ResNet-18 runs the layer per step.
const LAYERS: [(usize, usize, usize, usize, usize, usize); 11] = [
    (3, 64, 32, 3, 1, 1),
    (64, 64, 16, 3, 1, 4),
    (64, 128, 16, 3, 2, 1),
    (64, 128, 16, 1, 2, 1),
    (128, 128, 8, 3, 1, 3),
    (128, 256, 8, 3, 2, 1),
    (128, 256, 8, 1, 2, 1),
    (256, 256, 4, 3, 1, 3),
    (256, 512, 4, 3, 2, 1),
    (256, 512, 4, 1, 2, 1),
    (512, 512, 2, 3, 1, 3),
];

fn env(name: &str) -> Option<usize> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
}

fn main() {
    // As `adanoise` itself does, so that freed activations are not page-faulted in again.
    adanoise::memory::keep_freed_buffers();
    set_cpu_threads(Some(2));
    let device = DeviceKind::Cpu
        .device()
        .expect("the CPU device is always there")
        .autodiff();
    let reps = env("REPS").unwrap_or(7).max(1);
    let only = env("ONLY");
    println!("| layer | ResNet-18 runs it | forward + both gradients (ms, median of {reps}) |");
    println!("| --- | ---: | ---: |");
    for (index, &(c_in, c_out, side, kernel, stride, times)) in LAYERS.iter().enumerate() {
        if only.is_some_and(|only| only != index) {
            continue;
        }
        let padding = kernel / 2;
        let conv = Conv2dConfig::new([c_in, c_out], [kernel, kernel])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(
                padding, padding, padding, padding,
            ))
            .with_bias(false)
            .init(&device);
        let x = Tensor::<4>::random(
            [128, c_in, side, side],
            Distribution::Normal(0.0, 1.0),
            &device,
        )
        .require_grad();
        let mut times_ms: Vec<f64> = (0..reps + 2)
            .map(|_| {
                let start = Instant::now();
                let y = adanoise::kernels::conv2d(&conv, x.clone());
                let grads = (y.clone() * y).sum().backward();
                let _ = x
                    .grad(&grads)
                    .expect("the input requires a gradient")
                    .into_data();
                start.elapsed().as_secs_f64() * 1e3
            })
            .skip(2)
            .collect();
        times_ms.sort_by(f64::total_cmp);
        println!(
            "| {index}: {c_in} -> {c_out}, {side}x{side}, {kernel}x{kernel} stride {stride} | {times} | {:.1} |",
            times_ms[times_ms.len() / 2]
        );
    }
}
