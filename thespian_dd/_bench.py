"""The benchmark: every figure is printed next to a baseline measured in the same run.

Section ``crdt``: merge time and encoded size of ORSet and ORMap states of n elements.
- Merge: two replicas that share half their elements and each removed some; the baseline is the
  same-size merge of plain Python containers (``set | set``, ``{**dict, **dict}``), i.e. the
  cost of touching n elements at C speed.  The ratio says what causality tracking costs.
- Size: bytes of ``codec.encode(state)``; the baseline is ``pickle.dumps`` of the plain value
  (the elements alone, with no causal metadata).
- Growth: merge time at the largest size over the next one, divided by the size ratio (1.0 is
  linear), next to the same figure for the plain merge: a ratio near 1 means ORSet and ORMap
  scale like Python's own containers on this machine (caches make both grow faster than n).
"""

from __future__ import annotations

import gc
import json
import pickle
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from operator import or_
from pathlib import Path
from typing import Any

from thespian_dd import GCounter, ORMap, ORSet, ReplicaId
from thespian_dd.codec import encode
from thespian_dd.data import CausalContext

__all__ = ["Result", "run_bench"]

A, B = ReplicaId("bench-a", 1), ReplicaId("bench-b", 1)


@dataclass(frozen=True)
class Result:
    section: str
    name: str
    unit: str
    value: float
    baseline: float
    baseline_name: str

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("inf")


def _best_of(fn: Callable[[], object], repeat: int) -> float:
    """The median of ``repeat`` timings of ``fn()``, in seconds (garbage collector paused)."""
    times = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeat):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    finally:
        gc.enable()
    return statistics.median(times)


def _orset_pair(n: int) -> tuple[ORSet, ORSet]:
    shared = ORSet().add_all(A, range(n // 2)).reset_delta()
    left = shared.add_all(A, range(n // 2, n)).remove_all(A, range(0, n // 2, 10)).reset_delta()
    right = shared.add_all(B, range(n, n + n // 2)).remove_all(B, range(5, n // 2, 10))
    return left, right.reset_delta()


def _ormap_pair(n: int) -> tuple[ORMap, ORMap]:
    # Built directly as the states n updates would make: n updates through the API copy the map
    # n times (values are immutable), which would make the set-up, not the merge, quadratic.
    def state(node: ReplicaId, keys: list[int], base: ORMap | None = None) -> ORMap:
        start = base.context.high(node) if base else 0
        versions: dict[object, dict[Any, Any]] = dict(base.versions) if base else {}
        for i, k in enumerate(keys, start + 1):
            versions[k] = {(node, i): GCounter({node: 1})}
        context = CausalContext.of_vv({node: start + len(keys)})
        return ORMap(versions, base.context.merge(context) if base else context)

    shared = state(A, list(range(n // 2)))
    return state(A, list(range(n // 2, n)), shared), state(B, list(range(n, n + n // 2)), shared)


def _dict_merge(a: dict[Any, Any], b: dict[Any, Any]) -> dict[Any, Any]:
    return {**a, **b}


def _crdt(sizes: list[int], out: Callable[[str], object]) -> list[Result]:
    results: list[Result] = []
    merge_times: dict[str, dict[int, tuple[float, float]]] = {"ORSet": {}, "ORMap": {}}
    for n in sizes:
        repeat = 5 if n <= 10_000 else 3
        out(f"  crdt: building ORSet and ORMap states of {n:,} elements ...")
        s_left, s_right = _orset_pair(n)
        m_left, m_right = _ormap_pair(n)
        pairs: list[tuple[str, Any, Any, Callable[[], object]]] = [
            ("ORSet", s_left, s_right, partial(or_, set(s_left.value), set(s_right.value))),
            ("ORMap", m_left, m_right, partial(_dict_merge, m_left.value, m_right.value)),
        ]
        for name, left, right, baseline in pairs:
            merged_time = _best_of(partial(left.merge, right), repeat)
            base_time = _best_of(baseline, repeat)
            merge_times[name][n] = (merged_time, base_time)
            results.append(
                Result(
                    "crdt",
                    f"{name} merge, {n:,} elements",
                    "ms",
                    merged_time * 1e3,
                    base_time * 1e3,
                    "plain set/dict merge",
                )
            )
            results.append(
                Result(
                    "crdt",
                    f"{name} encoded size, {n:,} elements",
                    "bytes",
                    len(encode(left)),
                    len(pickle.dumps(left.value)),
                    "pickle of the plain value",
                )
            )
    ordered = sorted(sizes)
    if len(ordered) >= 2:
        small, large = ordered[-2], ordered[-1]
        for name, times in merge_times.items():
            (ours_small, base_small), (ours_large, base_large) = times[small], times[large]
            results.append(
                Result(
                    "crdt",
                    f"{name} merge time growth {small:,} -> {large:,}, per x{large // small}",
                    "x",
                    ours_large / ours_small / (large / small),
                    base_large / base_small / (large / small),
                    "growth of the plain merge; 1.0 = linear",
                )
            )
    return results


SECTIONS: dict[str, Callable[[list[int], Callable[[str], object]], list[Result]]] = {
    "crdt": _crdt,
}


def _fmt(value: float, unit: str) -> str:
    text = f"{value:,.0f}" if unit == "bytes" else f"{value:,.3f}"
    return f"{text} {unit}"


def _table(results: list[Result]) -> list[str]:
    width = max(len(r.name) for r in results)
    lines = [f"{'section':8} {'measure':{width}} {'value':>16} {'baseline':>16} {'ratio':>8}"]
    lines += [
        f"{r.section:8} {r.name:{width}} {_fmt(r.value, r.unit):>16} "
        f"{_fmt(r.baseline, r.unit):>16} {r.ratio:>7.2f}x  (baseline: {r.baseline_name})"
        for r in results
    ]
    return lines


def run_bench(
    sections: list[str],
    *,
    sizes: list[int],
    json_path: str | None,
    out: Callable[[str], object],
) -> list[Result]:
    out(f"thespian_dd bench on Python {platform.python_version()}, {platform.machine()}")
    results: list[Result] = []
    for section in sections:
        results += SECTIONS[section](sizes, out)
    for line in _table(results):
        out(line)
    if json_path:
        rows = [{**asdict(r), "ratio": r.ratio} for r in results]
        Path(json_path).write_text(json.dumps(rows, indent=2), encoding="utf-8")
        out(f"results written to {json_path}")
    return results
