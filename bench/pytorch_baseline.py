#!/usr/bin/env python3
"""The PyTorch counterpart of `adanoise bench`: times whole training steps
(forward, cross-entropy, backward, SGD-momentum step with weight decay 1e-4) of
the same four models on a fixed random batch, after a warm-up, and prints the
median images/s. Needs only `torch`.

    python3 bench/pytorch_baseline.py --model tiny-cnn --threads 2 --json
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def plain_cnn(channels, widths, classes=10):
    layers = []
    for a, b in zip(channels, channels[1:]):
        layers += [nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    side = 32 >> (len(channels) - 1)
    sizes = [channels[-1] * side * side] + list(widths) + [classes]
    layers.append(nn.Flatten())
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    """The CIFAR ResNet-18 of the PyTorch_CIFAR10 repository (3x3 stem, max-pool)."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for stage, width in enumerate([64, 128, 256, 512]):
            blocks += [BasicBlock(cin, width, 1 if stage == 0 else 2), BasicBlock(width, width, 1)]
            cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


MODELS = {
    "baby-cnn": lambda: plain_cnn([3, 8], []),
    "tiny-cnn": lambda: plain_cnn([3, 32, 64], [128]),
    "simple-cnn": lambda: plain_cnn([3, 256, 512, 512], [2048, 1024, 512]),
    "resnet18": ResNet18,
}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=MODELS, required=True)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (GPU rows)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    device = torch.device(a.device)
    model = MODELS[a.model]().to(device)
    params = sum(p.numel() for p in model.parameters())
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    x = (torch.rand(a.batch_size, 3, 32, 32) * 4 - 2).to(device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (a.batch_size,)).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for step in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        if step >= a.warmup:
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    result = {
        "model": a.model,
        "params": params,
        "batch_size": a.batch_size,
        "device": a.device,
        "threads": torch.get_num_threads(),
        "steps": a.steps,
        "images_per_s": a.batch_size / median,
        "median_step_ms": median * 1e3,
        "torch": torch.__version__,
    }
    if a.json:
        print(json.dumps(result))
    else:
        print(f"{a.model} batch {a.batch_size} on {a.device} ({result['threads']} threads): "
              f"{result['images_per_s']:.1f} images/s (median step {result['median_step_ms']:.1f} ms)")


if __name__ == "__main__":
    main()
