"""Per-layer timings of PyTorch's CPU convolutions, the counterpart of
`cargo bench --bench conv_layers`: forward pass and both gradients of each distinct
convolution of the CIFAR ResNet-18 (batch 128, 2 threads), median of REPS runs after two
warm-up runs, the output squared and summed for a loss as there.

    REPS=7 python3 bench/pytorch_conv_layers.py
"""

import os
import time

import torch

LAYERS = [
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
]


def main():
    torch.set_num_threads(2)
    reps = max(1, int(os.environ.get("REPS", "7")))
    only = os.environ.get("ONLY")
    print(f"| layer | ResNet-18 runs it | PyTorch forward + both gradients (ms, median of {reps}) |")
    print("| --- | ---: | ---: |")
    for index, (c_in, c_out, side, kernel, stride, times) in enumerate(LAYERS):
        if only is not None and int(only) != index:
            continue
        conv = torch.nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False)
        x = torch.randn(128, c_in, side, side, requires_grad=True)
        times_ms = []
        for _ in range(reps + 2):
            start = time.perf_counter()
            y = conv(x)
            (y * y).sum().backward()
            x.grad.sum().item()
            x.grad = None
            conv.weight.grad = None
            times_ms.append((time.perf_counter() - start) * 1e3)
        times_ms = sorted(times_ms[2:])
        label = f"{index}: {c_in} -> {c_out}, {side}x{side}, {kernel}x{kernel} stride {stride}"
        print(f"| {label} | {times} | {times_ms[len(times_ms) // 2]:.1f} |")


if __name__ == "__main__":
    main()
