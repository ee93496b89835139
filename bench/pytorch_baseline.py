#!/usr/bin/env python3
"""The PyTorch counterpart of `adanoise bench`: times whole training steps
(forward, cross-entropy, backward, SGD-momentum step with weight decay 1e-4) of
the same four models after a warm-up, and prints the median images/s. Needs only `torch`.

    python3 bench/pytorch_baseline.py --model tiny-cnn --threads 2 --json

By default it times PyTorch as users run it out of the box: one fixed batch, the
default optimiser implementation, the default layout, nothing counted. For a like-for-like
comparison with adanoise's LibTorch engine (`adanoise bench --device libtorch --device-data`)
every setting the engine fixes can be set the same way:

    python3 bench/pytorch_baseline.py --model resnet18 --device cuda --channels-last \\
        --fused --cudnn-benchmark --device-data padded --metrics --precision bf16 --json

  --device-data padded   the training images live on the device, normalised and zero-padded
                         by 4 once; each epoch's plan (which image, crop offset, flip) is
                         uploaded at its start, and a step is one gather (crop and flip in
                         it): what the LibTorch engine does (src/engine/torch/data.rs);
  --device-data uint8    the images live on the device as padded bytes; a step gathers
                         (crop, flip), converts and normalises: what the Burn engine's GPU
                         backends do with --device-data;
  --metrics              the step also sums the loss and counts correct predictions on the
                         device (read once at the end), as the engines do every step;
  --fused                torch.optim.SGD(fused=True), the engine's kernel;
  --cudnn-benchmark      torch.backends.cudnn.benchmark = True, as the engine sets on CUDA.

TF32 is always set explicitly to PyTorch's defaults, as the engine sets it on CUDA
(src/engine/torch/shim.cpp): on for cuDNN convolutions, "highest" (no TF32) for matrix
products. Every result carries a `settings` object saying what was in force; without
--json one line of it is printed first.

Several models in one process (`--model baby-cnn tiny-cnn`) print one line each. With
`--barrier DIR --barrier-count N`, N processes started together wait for each other after
their warm-up, so that their timed steps overlap (concurrent throughput).
"""
import argparse
import contextlib
import json
import os
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

# As the engines: CIFAR-10's statistics, a crop padding of 4, and the size of `adanoise
# bench`'s synthetic dataset (src/bench.rs, DATA_IMAGES).
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
PAD, SIDE, DATA_IMAGES = 4, 32, 4096


class DeviceData:
    """A synthetic training split resident on the device, and each step's batch cut out of
    it there along a seeded per-epoch plan (shuffle, crop offset 0..8, flip), as the engines
    do with --device-data. `padded`: normalised f32 with a border of normalised zeros, a
    batch is one gather (the LibTorch engine); `uint8`: padded bytes, a batch is a gather,
    a conversion and a normalisation (the Burn engine's GPU backends)."""

    def __init__(self, mode, batch_size, device, fmt):
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (DATA_IMAGES, 3, SIDE, SIDE), dtype=torch.uint8, generator=g)
        self.labels = torch.randint(0, 10, (DATA_IMAGES,), generator=g).to(device)
        padded = F.pad(images, (PAD, PAD, PAD, PAD))  # byte 0 in the border, as the engines
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
        if mode == "padded":
            self.source = ((padded.float() / 255 - self.mean.cpu()) / self.std.cpu()).to(device)
        else:
            self.source = padded.to(device)
        self.mode, self.n, self.device, self.fmt = mode, batch_size, device, fmt
        self.channels = torch.arange(3, device=device).view(1, 3, 1, 1)
        self.k = torch.arange(SIDE)
        self.epoch, self.position, self.generator = 0, None, torch.Generator().manual_seed(1)

    def _upload_epoch(self):
        """The next epoch's plan, made on the host and uploaded in one copy, full batches only
        (as `adanoise bench` times them)."""
        self.epoch += 1
        order = torch.randperm(DATA_IMAGES, generator=self.generator)
        order = order[: DATA_IMAGES // self.n * self.n]
        m = len(order)
        dy = torch.randint(0, 2 * PAD + 1, (m, 1), generator=self.generator)
        dx = torch.randint(0, 2 * PAD + 1, (m, 1), generator=self.generator)
        flip = torch.rand(m, 1, generator=self.generator) < 0.5
        rows = dy + self.k
        cols = dx + torch.where(flip, SIDE - 1 - self.k, self.k)
        plan = torch.cat([order, rows.flatten(), cols.flatten()]).to(self.device)
        self.index = plan[:m]
        self.rows = plan[m:m + m * SIDE].view(m, SIDE)
        self.cols = plan[m + m * SIDE:].view(m, SIDE)
        self.position = 0

    def batch(self):
        if self.position is None or self.position + self.n > len(self.index):
            self._upload_epoch()
        s, n = self.position, self.n
        self.position += n
        index = self.index[s:s + n]
        x = self.source[index.view(n, 1, 1, 1), self.channels,
                        self.rows[s:s + n].view(n, 1, SIDE, 1), self.cols[s:s + n].view(n, 1, 1, SIDE)]
        if self.mode == "uint8":
            x = (x.float() / 255 - self.mean) / self.std
        return x.contiguous(memory_format=self.fmt), self.labels.index_select(0, index)


class FixedBatch:
    """One random batch, reused every step (PyTorch's classic micro-benchmark)."""

    def __init__(self, batch_size, device, fmt):
        self.x = (torch.rand(batch_size, 3, SIDE, SIDE) * 4 - 2).to(device).contiguous(memory_format=fmt)
        self.y = torch.randint(0, 10, (batch_size,)).to(device)

    def batch(self):
        return self.x, self.y


def wait_for_others(barrier, count, timeout=60.0):
    """Marks this process ready in `barrier` and waits until `count` are (or `timeout`)."""
    os.makedirs(barrier, exist_ok=True)
    open(os.path.join(barrier, f"ready.{os.getpid()}"), "w").close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(name.startswith("ready.") for name in os.listdir(barrier)) >= count:
            return True
        time.sleep(0.01)
    return False


def settings(a, device, opt):
    """What is in force, in the words the engine's settings are documented in."""
    cuda = device.type == "cuda"
    if opt.defaults.get("fused"):
        optimizer = "SGD fused"
    elif opt.defaults.get("foreach") or (opt.defaults.get("foreach") is None and cuda):
        optimizer = "SGD foreach"
    else:
        optimizer = "SGD for-loop"
    return {
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if cuda else ""),
        "precision": a.precision + ({"bf16": " autocast", "f16": " autocast + GradScaler"}.get(a.precision, "")),
        "channels_last": a.channels_last,
        # cuDNN's and TF32's flags act on CUDA only; on the CPU they are shown as such.
        "cudnn_benchmark": torch.backends.cudnn.benchmark if cuda else "n/a (cpu)",
        "tf32_cudnn_conv": torch.backends.cudnn.allow_tf32 if cuda else "n/a (cpu)",
        "float32_matmul_precision": torch.get_float32_matmul_precision() if cuda else "n/a (cpu)",
        "optimizer": f"{optimizer}, momentum 0.9, weight decay 1e-4",
        "batch": {"none": "one fixed batch on the device",
                  "padded": "gather from normalised padded f32 on the device, epoch plan uploaded per epoch",
                  "uint8": "gather from padded uint8 on the device, then normalise, epoch plan uploaded per epoch",
                  }[a.device_data],
        "metrics": "loss sum and correct count on the device" if a.metrics else "none",
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
    }


def measure(a, model_name, device):
    torch.manual_seed(0)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    model = MODELS[model_name]().to(device).to(memory_format=fmt)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4,
                          **({"fused": True} if a.fused else {}))
    data = DeviceData(a.device_data, a.batch_size, device, fmt) if a.device_data != "none" \
        else FixedBatch(a.batch_size, device, fmt)
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16}.get(a.precision)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0 ** 16) if a.precision == "f16" else None
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for step in range(a.warmup + a.steps):
        if step == a.warmup and a.barrier:
            sync()
            wait_for_others(a.barrier, a.barrier_count)
        t0 = time.perf_counter()
        x, y = data.batch()
        # As the engine: autocast around the forward pass only, the loss in f32; in f32 no
        # autocast context at all (the engine does not enter one either).
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            logits = model(x)
        logits = logits.float()
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        if a.metrics:
            with torch.no_grad():
                loss_sum += loss.detach() * y.shape[0]
                correct += (logits.argmax(1) == y).sum()
        sync()
        if step >= a.warmup:
            times.append(time.perf_counter() - t0)
    if a.metrics:
        # The sums stay on the device during the steps, as in the engines: read them once.
        loss_sum.item(), correct.item()
    median = statistics.median(times)
    return {
        "model": model_name,
        "params": params,
        "batch_size": a.batch_size,
        "device": a.device,
        "threads": torch.get_num_threads(),
        "steps": a.steps,
        "images_per_s": a.batch_size / median,
        "median_step_ms": median * 1e3,
        "min_step_ms": min(times) * 1e3,
        "max_step_ms": max(times) * 1e3,
        "precision": a.precision,
        "torch": torch.__version__,
        "settings": settings(a, device, opt),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=MODELS, required=True, nargs="+")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--precision", choices=["f32", "bf16", "f16"], default="f32",
                   help="f32, or autocast in bf16, or in f16 with GradScaler (GPU rows)")
    p.add_argument("--amp", action="store_const", const="bf16", dest="precision",
                   help="the same as --precision bf16")
    p.add_argument("--fused", action="store_true", help="torch.optim.SGD(fused=True)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    p.add_argument("--device-data", choices=["none", "padded", "uint8"], default="none")
    p.add_argument("--metrics", action="store_true", help="sum the loss and count correct predictions on the device")
    p.add_argument("--barrier", help="a folder where concurrent processes meet after their warm-up")
    p.add_argument("--barrier-count", type=int, default=1)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    # PyTorch's own defaults, set explicitly as the engine sets them on CUDA.
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    for i, model_name in enumerate(a.model):
        result = measure(a, model_name, device)
        if a.json:
            print(json.dumps(result), flush=True)
        else:
            if i == 0:
                print("settings: " + ", ".join(f"{k} {v}" for k, v in result["settings"].items()))
            print(f"{model_name} batch {a.batch_size} on {a.device} ({result['threads']} threads): "
                  f"{result['images_per_s']:.1f} images/s (median step {result['median_step_ms']:.1f} ms)",
                  flush=True)


if __name__ == "__main__":
    main()
