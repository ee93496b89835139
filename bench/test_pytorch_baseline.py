"""Checks of bench/pytorch_baseline.py on the CPU: the batches its device-resident modes cut
out are the crops and flips they claim to be (the same as the engines': normalised, padded
by 4 with the normalised zero), both modes give the same values, and a like-for-like run
says what it set.

    python -m pytest -q bench/test_pytorch_baseline.py      (or: python bench/test_pytorch_baseline.py)
"""
import argparse
import importlib.util
import os

import torch

spec = importlib.util.spec_from_file_location(
    "pytorch_baseline", os.path.join(os.path.dirname(os.path.abspath(__file__)), "pytorch_baseline.py"))
baseline = importlib.util.module_from_spec(spec)
spec.loader.exec_module(baseline)

N = 16


def expected_batch(data, start):
    """The batch at `start` of the current plan, cut out by hand from the bytes."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (baseline.DATA_IMAGES, 3, 32, 32), dtype=torch.uint8, generator=g)
    mean = torch.tensor(baseline.MEAN).view(3, 1, 1)
    std = torch.tensor(baseline.STD).view(3, 1, 1)
    out = []
    for i in range(start, start + N):
        rows, cols = data.rows[i], data.cols[i]
        dy, dx, flip = int(rows[0]), int(cols.min()), bool(cols[0] > cols[1])
        padded = torch.nn.functional.pad(images[int(data.index[i])], (4, 4, 4, 4))
        crop = padded[:, dy:dy + 32, dx:dx + 32]
        if flip:
            crop = crop.flip(-1)
        out.append((crop.float() / 255 - mean) / std)
    return torch.stack(out)


def test_device_batches_are_crops_and_flips_of_the_padded_images():
    for mode in ("padded", "uint8"):
        data = baseline.DeviceData(mode, N, torch.device("cpu"), torch.channels_last)
        for step in range(3):
            x, y = data.batch()
            start = data.position - N
            assert x.shape == (N, 3, 32, 32)
            assert x.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(x, expected_batch(data, start), rtol=0, atol=1e-5)
            assert torch.equal(y, data.labels[data.index[start:start + N]])
        # Offsets 0..8 and both flips occur; every image of an epoch once.
        assert int(data.rows[:, 0].min()) == 0 and int(data.rows[:, 0].max()) == 8
        flips = (data.cols[:, 0] > data.cols[:, 1]).float().mean()
        assert 0.4 < float(flips) < 0.6
        assert len(set(data.index.tolist())) == len(data.index)


def test_a_new_plan_each_epoch():
    data = baseline.DeviceData("padded", 2048, torch.device("cpu"), torch.contiguous_format)
    data.batch()
    first = data.index.clone()
    data.batch(), data.batch()  # 4096 images: the third batch starts epoch 2
    assert data.epoch == 2 and not torch.equal(first, data.index)


def test_like_for_like_settings():
    a = argparse.Namespace(batch_size=8, steps=1, warmup=1, channels_last=True, fused=True, precision="f32",
                           device_data="padded", metrics=True, barrier=None, barrier_count=1, device="cpu")
    r = baseline.measure(a, "baby-cnn", torch.device("cpu"))
    s = r["settings"]
    assert s["optimizer"].startswith("SGD fused") and s["channels_last"] is True
    assert s["batch"].startswith("gather from normalised padded f32")
    assert s["metrics"].startswith("loss sum") and r["images_per_s"] > 0


if __name__ == "__main__":
    test_device_batches_are_crops_and_flips_of_the_padded_images()
    test_a_new_plan_each_epoch()
    test_like_for_like_settings()
    print("ok")
