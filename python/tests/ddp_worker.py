"""One rank of the DDP test (test_ddp.py): trains a DDP model on its own shard with
AdaptiveNoise, passing its own shard's losses and a per-rank seed, as a user would,
then saves its parameters and decisions for the test to compare.

    python ddp_worker.py RANK WORLD STORE OUT
"""

import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from adanoise.torch import AdaptiveNoise

from helpers import FIRING, data, model

rank, world, store, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
torch.set_num_threads(1)
net = torch.nn.parallel.DistributedDataParallel(model(seed=0))
opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
noise = AdaptiveNoise(net.parameters(), 5, "gaussian", seed=rank, **FIRING)
shard = data(seed=10 + rank)
decisions = []
for epoch in range(5):
    noise.start_epoch()
    losses = []
    for x, y in shard:
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        noise.before_step()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        val = sum(F.cross_entropy(net(x), y).item() for x, y in data(seed=20 + rank)) / 4
    decisions.append(noise.end_epoch(train_loss=sum(losses) / len(losses), val_loss=val).to_dict())
torch.save([p.detach() for p in net.parameters()], f"{out}/params-{rank}.pt")
with open(f"{out}/decisions-{rank}.json", "w") as f:
    json.dump(decisions, f)
dist.destroy_process_group()
