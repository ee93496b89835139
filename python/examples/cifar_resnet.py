"""CIFAR-10 with a torchvision ResNet-18, SGD with momentum, the study's LR
schedule and adaptive Gaussian noise: a plain PyTorch loop with four adanoise
calls (start_epoch, before_step, end_epoch, and the LR scheduler's step).

    pip install ./python torch torchvision
    python python/examples/cifar_resnet.py --epochs 300 --data ./data
"""

import argparse

import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T

from adanoise.torch import AdaptiveNoise, CosineRestartsLR

p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int, default=300)
p.add_argument("--lr", type=float, default=0.01)
p.add_argument("--data", default="./data")
p.add_argument("--noise", default="gaussian", choices=["none", "gaussian", "uniform"])
args = p.parse_args()
device = "cuda" if torch.cuda.is_available() else "cpu"

norm = T.Normalize((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), norm])
train_set = torchvision.datasets.CIFAR10(args.data, train=True, download=True, transform=train_tf)
test_set = torchvision.datasets.CIFAR10(args.data, train=False, download=True, transform=T.Compose([T.ToTensor(), norm]))
train_loader = torch.utils.data.DataLoader(train_set, batch_size=128, shuffle=True, num_workers=4)
test_loader = torch.utils.data.DataLoader(test_set, batch_size=512, num_workers=4)

model = torchvision.models.resnet18(num_classes=10).to(device)
opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
lr = CosineRestartsLR(opt, epochs=args.epochs, steps_per_epoch=len(train_loader))
noise = AdaptiveNoise(model.parameters(), epochs=args.epochs, noise=args.noise, seed=0)

for epoch in range(1, args.epochs + 1):
    model.train()
    noise.start_epoch()  # weight noise decided after the last epoch, if any
    total, loss_sum = 0, 0.0
    for x, y in train_loader:
        x, y = x.to(device), y.to(device)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        noise.before_step()  # gradient norm; gradient noise when decided
        opt.step()
        lr.step()
        total, loss_sum = total + len(y), loss_sum + loss.item() * len(y)
    model.eval()
    with torch.no_grad():
        batches = [(model(x.to(device)), y.to(device)) for x, y in test_loader]
        val_loss = sum(F.cross_entropy(o, y, reduction="sum").item() for o, y in batches) / len(test_set)
        val_acc = sum((o.argmax(1) == y).sum().item() for o, y in batches) / len(test_set)
    d = noise.end_epoch(train_loss=loss_sum / total, val_loss=val_loss)
    print(f"epoch {epoch}: train loss {loss_sum / total:.4f} val loss {val_loss:.4f} acc {val_acc:.4f}"
          f" | next: grad sigma {d.grad_sigma:.4f} weight sigma {d.weight_sigma:.4f} {d.flags}")
