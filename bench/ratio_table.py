#!/usr/bin/env python3
"""Prints the Markdown ratio table of bench/compare.sh and bench/gpu/measure.sh from their
JSON lines (`who<TAB>json`): per model, the median images/s of adanoise and of each PyTorch
row, the ratio of the medians, and in brackets each round's own ratio (lines that carry a
`round`; each round's adanoise figure over that round's PyTorch figure).

    python3 bench/ratio_table.py raw.jsonl [more.jsonl ...] [--where KEY=VALUE ...]

`--where precision=bf16` keeps only the lines whose JSON has that value (repeatable; all
must match).
"""
import json
import statistics
import sys


def main(argv):
    paths, where = [], []
    args = iter(argv)
    for arg in args:
        if arg == "--where":
            key, _, value = next(args).partition("=")
            where.append((key, value))
        else:
            paths.append(arg)
    rows, columns = {}, []
    for path in paths:
        for line in open(path):
            if not line.strip():
                continue
            who, payload = line.rstrip("\n").split("\t", 1)
            r = json.loads(payload)
            if any(str(r.get(k)) != v for k, v in where):
                continue
            rows.setdefault(r["model"], {}).setdefault(who, []).append((r.get("round"), r["images_per_s"]))
            if who != "adanoise" and who not in columns:
                columns.append(who)
    if not rows:
        print("(no measurements)")
        print()
        return
    print("| model | adanoise images/s |" + "".join(f" {c} images/s | ratio (each round) |" for c in columns))
    print("| --- | ---: |" + " ---: | ---: |" * len(columns))
    for model, d in rows.items():
        ours = [v for _, v in d.get("adanoise", [])]
        a = statistics.median(ours) if ours else None
        cells = ""
        for c in columns:
            theirs = [v for _, v in d.get(c, [])]
            if not theirs:
                cells += " - | - |"
                continue
            t = statistics.median(theirs)
            ratio = f"{a / t:.2f}" if a else "-"
            cells += f" {t:,.1f} | {ratio}{round_ratios(d.get('adanoise', []), d[c])} |"
        print(f"| {model} | {f'{a:,.1f}' if a else '-'} |{cells}")
    print()


def round_ratios(ours, theirs):
    """` (r1, r2, ...)`: each round's adanoise median over its PyTorch median."""
    by_round = lambda pairs: {r: statistics.median(v for q, v in pairs if q == r) for r, _ in pairs if r is not None}
    a, t = by_round(ours), by_round(theirs)
    common = sorted(set(a) & set(t))
    return f" ({', '.join(f'{a[r] / t[r]:.2f}' for r in common)})" if common else ""


if __name__ == "__main__":
    main(sys.argv[1:])
