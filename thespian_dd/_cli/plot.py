"""``bench --plot FILE.png``: throughput by write mode and recovery time by key count, drawn
with matplotlib (the optional extra ``thespian_dd[plot]``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

__all__ = ["plot_results"]

_THROUGHPUT = re.compile(r"^(?P<store>\w+) (?P<mode>[\w-]+) Update throughput, (?P<clients>\d+) ")
_RECOVERY = re.compile(r"^(?P<store>\w+) recovery of (?P<keys>[\d,]+) keys$")


def plot_results(results: Sequence[Any], path: str) -> None:
    """Draw the durable section of ``results`` (bench ``Result`` rows) into ``path``."""
    try:
        import matplotlib as mpl

        mpl.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("bench: --plot needs matplotlib: pip install matplotlib") from None
    throughput: dict[str, float] = {}
    recovery: dict[str, list[tuple[int, float, float]]] = {}
    for r in results:
        if r.section != "durable":
            continue
        if m := _THROUGHPUT.match(r.name):
            label = f"{m['store']}, {m['clients']} client(s)"
            throughput[f"{label}|in memory"] = r.baseline
            throughput[f"{label}|{m['mode']}"] = r.value
        elif m := _RECOVERY.match(r.name):
            count = int(m["keys"].replace(",", ""))
            recovery.setdefault(m["store"], []).append((count, r.value, r.baseline))
    if not throughput and not recovery:
        raise SystemExit("bench: --plot draws the durable section; run it (--section durable)")
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    groups = sorted({k.split("|")[0] for k in throughput})
    modes = ["in memory", "sync", "write-behind"]
    width = 0.8 / len(modes)
    for j, mode in enumerate(modes):
        heights = [throughput.get(f"{g}|{mode}", 0.0) for g in groups]
        left.bar([i + j * width for i in range(len(groups))], heights, width, label=mode)
    left.set_xticks([i + width for i in range(len(groups))], groups, rotation=15)
    left.set_ylabel("Updates per second")
    left.set_title("Update throughput by write mode")
    left.legend()
    for store, points in sorted(recovery.items()):
        points.sort()
        keys = [p[0] for p in points]
        (line,) = right.plot(
            keys, [p[1] for p in points], marker="o", label=f"{store}: node recovery"
        )
        right.plot(
            keys,
            [p[2] for p in points],
            linestyle="--",
            color=line.get_color(),
            label=f"{store}: SELECT + decode (baseline)",
        )
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("stored keys")
    right.set_ylabel("seconds")
    right.set_title("Recovery time by key count")
    right.legend()
    figure.suptitle("thespian_dd bench, durable section (baselines measured in the same run)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
