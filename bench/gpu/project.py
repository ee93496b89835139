#!/usr/bin/env python3
"""Tables of bench/gpu/measure.sh's concurrency runs, and the projected wall time of a
sweep on one GPU, for adanoise and for PyTorch.

    python3 bench/gpu/project.py table concurrency.jsonl
    python3 bench/gpu/project.py paper raw.jsonl concurrency.jsonl configs/paper.toml

The projection: every cell trains `epochs` x 50,000 images and evaluates 10,000 per epoch;
evaluation is a forward pass, counted as a third of a training step per image. Rates are
f32's, the study's precision (the grid names none). Each model trains at the aggregate rate
measured for it with several cells at once (the best N), where both adanoise and PyTorch
have one, else both at their single-process rate from the step table (adanoise: its fastest
backend).
"""
import json
import statistics
import sys

TRAIN_IMAGES, EVAL_IMAGES = 50_000, 10_000


def read_jsonl(path):
    try:
        return [json.loads(line) for line in open(path) if line.strip()]
    except FileNotFoundError:
        return []


def table(conc_path):
    rows = read_jsonl(conc_path)
    print("| model | cells at once | adanoise images/s (all cells) | PyTorch images/s (all processes) | ratio |")
    print("| --- | ---: | ---: | ---: | ---: |")
    keys = sorted({(r["model"], r["n"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for model, n in keys:
        get = lambda who: next((r for r in rows if r["who"] == who and r["model"] == model and r["n"] == n), None)
        a, p = get("adanoise"), get("pytorch")
        av = a["aggregate_images_per_s"] if a and a["finished"] == n else None
        pv = p["aggregate_images_per_s"] if p and p["finished"] == n else None
        ratio = f"{av / pv:.2f}" if av and pv else "-"
        fmt = lambda v: f"{v:,.0f}" if v else "(not finished)"
        print(f"| {model} | {n} | {fmt(av)} | {fmt(pv)} | {ratio} |")
    print()


def step_rates(raw_path, precision="f32"):
    """Single-process images/s per (who, model) in `precision`: adanoise's best backend,
    PyTorch's best row; each with the backend it was measured on."""
    rates = {}
    for line in open(raw_path) if raw_path else []:
        if not line.strip():
            continue
        who, payload = line.rstrip("\n").split("\t", 1)
        r = json.loads(payload)
        if r.get("precision", precision) != precision:
            continue
        key = ("adanoise" if who == "adanoise" else "pytorch", r["model"])
        group = (r.get("backend", ""), r.get("precision", ""), who)
        rates.setdefault(key, {}).setdefault(group, []).append(r["images_per_s"])
    best = {}
    for key, groups in rates.items():
        (backend, _, _), values = max(groups.items(), key=lambda g: statistics.median(g[1]))
        best[key] = (statistics.median(values), backend if key[0] == "adanoise" else "")
    return best


def grid_cells(paper_path):
    import tomllib

    sweep = tomllib.load(open(paper_path, "rb"))
    grid, base = sweep.get("grid", {}), sweep.get("base", {})
    epochs = base.get("epochs", 300)
    models = grid.get("model", [base.get("model")])
    others = 1
    for key, values in grid.items():
        if key != "model":
            others *= len(values) if isinstance(values, list) else 1
    return [(m, epochs) for m in models for _ in range(others)]


def paper(raw_path, conc_path, paper_path):
    single = step_rates(raw_path)
    best = {}
    for r in read_jsonl(conc_path):
        if r["finished"] == r["n"]:
            key = (r["who"], r["model"])
            best[key] = max(best.get(key, 0), r["aggregate_images_per_s"])
    cells = grid_cells(paper_path)
    print(f"## Projected wall time of {paper_path} on this GPU ({len(cells)} runs)")
    print()
    print("| model | runs | adanoise images/s | PyTorch images/s | adanoise hours | PyTorch hours |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    totals = {"adanoise": 0.0, "pytorch": 0.0}
    measured = {"adanoise": 0, "pytorch": 0}
    models = list(dict.fromkeys(m for m, _ in cells))
    for model in models:
        runs = [e for m, e in cells if m == model]
        row = [model, str(len(runs))]
        hours = []
        for who in ("adanoise", "pytorch"):
            if ("adanoise", model) in best and ("pytorch", model) in best:
                rate, note = best[(who, model)], " (f32, cells at once)"
            elif (who, model) in single:
                rate, label = single[(who, model)]
                note = f" (1 process{', ' + label if label else ''})"
            else:
                rate = None
            if not rate:
                row.append("-")
                hours.append(None)
                continue
            seconds = sum(e * (TRAIN_IMAGES + EVAL_IMAGES / 3) / rate for e in runs)
            totals[who] += seconds
            measured[who] += 1
            row.append(f"{rate:,.0f}{note}")
            hours.append(seconds / 3600)
        row += [f"{h:.1f}" if h is not None else "-" for h in hours]
        print("| " + " | ".join(row) + " |")
    # A total over some of the models would read as the grid's: it is given only when
    # every model has a rate.
    total = {
        who: f"{totals[who] / 3600:.1f}" if measured[who] == len(models)
        else f"- ({measured[who]} of {len(models)} models measured)"
        for who in totals
    }
    print(f"| all | {len(cells)} | | | {total['adanoise']} | {total['pytorch']} |")
    print()
    if measured["adanoise"] == measured["pytorch"] == len(models):
        ratio = totals["adanoise"] / totals["pytorch"]
        print(f"adanoise / PyTorch wall time: {ratio:.2f} (below 1: adanoise finishes first)")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "table":
        table(sys.argv[2])
    elif len(sys.argv) >= 5 and sys.argv[1] == "paper":
        paper(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)
