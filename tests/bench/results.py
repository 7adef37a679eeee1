"""One figure of the table, its goal check, the printed table and var/bench/results.json."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.support.processes import ROOT

RESULTS = ROOT / "var" / "bench" / "results.json"


@dataclass
class Figure:
    metric: str
    ours: float
    baseline: float | None
    unit: str
    goal: str
    met: bool | None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.ours / self.baseline


def figure(
    metric: str,
    *,
    ours: float,
    baseline: float | None,
    unit: str,
    goal: str,
    check: Callable[[Figure], bool] | None,
    note: str = "",
) -> Figure:
    made = Figure(metric=metric, ours=ours, baseline=baseline, unit=unit, goal=goal, met=None, note=note)
    made.met = check(made) if check is not None else None
    return made


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def table(figures: Sequence[Figure]) -> str:
    rows = [("metric", "ours", "baseline", "ratio", "unit", "goal", "met")]
    for f in figures:
        met = "-" if f.met is None else ("yes" if f.met else "NO")
        rows.append((f.metric, _num(f.ours), _num(f.baseline), _num(f.ratio), f.unit, f.goal, met))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    notes = [f"  {f.metric}: {f.note}" for f in figures if f.note]
    return "\n".join(lines + (["", "notes:", *notes] if notes else []))


def results_write(figures: Sequence[Figure], path: Path = RESULTS) -> None:
    """Merge `figures` into results.json, so running one figure alone keeps the others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(path.read_text()) if path.exists() else {}
    for f in figures:
        entry = asdict(f)
        entry.pop("metric")
        entry["ratio"] = f.ratio
        existing[f.metric] = entry
    path.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")
