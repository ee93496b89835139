#!/usr/bin/env python3
"""Prints the Markdown ratio table of bench/compare.sh from its JSON lines (`who<TAB>json`):
the median images/s of adanoise and of each PyTorch row, per model, and their ratio.

    python3 bench/ratio_table.py raw.jsonl [more.jsonl ...]
"""
import json
import statistics
import sys

rows, columns = {}, []
for path in sys.argv[1:]:
    for line in open(path):
        who, payload = line.rstrip("\n").split("\t", 1)
        r = json.loads(payload)
        rows.setdefault(r["model"], {}).setdefault(who, []).append(r["images_per_s"])
        if who != "adanoise" and who not in columns:
            columns.append(who)
print("| model | adanoise images/s |" + "".join(f" {c} images/s | ratio |" for c in columns))
print("| --- | ---: |" + " ---: | ---: |" * len(columns))
for model, d in rows.items():
    a = statistics.median(d["adanoise"]) if "adanoise" in d else float("nan")
    cells = "".join(
        f" {statistics.median(d[c]):.1f} | {a / statistics.median(d[c]):.2f} |" if c in d else " - | - |"
        for c in columns
    )
    print(f"| {model} | {a:.1f} |{cells}")
