"""A terminal table of Aim runs: name, status, chosen params, last/best metric values.

Everything is read through Aim's query API (`Repo.query_runs`, `Run.metrics`), so the
query is Aim QL exactly as typed in the UI's search box, e.g.
``run.experiment == "ditdh_xl" and run.hparams.guidance.scale > 1``.

A pipeline logs each stage's metrics under the stage's name (``stage2/loss``, ``eval/fid``):
a metric asked for by its plain name (``loss``) is also found there, in a column per stage.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from aim import Repo
from aim.sdk.types import QueryReportMode

from rae.tracking.values import HPARAMS, flatten

DEFAULT_PARAMS = ("experiment.name", "encoder.name", "backbone.name", "run.seed", "guidance.name", "guidance.scale")
DEFAULT_METRICS = "loss:last,fid:last,rfid:last,psnr:last,class_accuracy:last"
FIXED_COLUMNS = ("name", "status")  # every table's first columns
AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "last": lambda values: values[-1],
    "first": lambda values: values[0],
    "min": min,
    "max": max,
    "mean": statistics.fmean,
}
Context = tuple[tuple[str, Any], ...]  # a metric's context as sorted (key, value) pairs


class CompareError(ValueError):
    """A bad repo path, query or column spec; the message says what was expected."""


@dataclass(frozen=True)
class MetricColumn:
    """One metric of one context, reduced over its steps, e.g. ``fid{guidance=1.5}:min``."""

    name: str
    context: Context
    aggregate: str
    requested: str = ""  # the spec that asked for it, e.g. ``fid:min`` for ``eval/fid{split=val}:min``

    @property
    def title(self) -> str:
        context = ",".join(f"{k}={v}" for k, v in self.context)
        return f"{self.name}{{{context}}}:{self.aggregate}" if context else f"{self.name}:{self.aggregate}"


@dataclass
class RunRow:
    """What the table needs of one run: its name, status, params and metric series."""

    name: str
    status: str
    created: float
    params: dict[str, Any]
    series: dict[tuple[str, Context], list[float]] = field(default_factory=dict)

    def param(self, key: str) -> Any:
        """A flat-config key (``backbone.name``) or, failing that, a top-level param path (``status``)."""
        return self.params.get(f"{HPARAMS}.{key}", self.params.get(key))

    @property
    def stages(self) -> set[str]:
        """The stage names of a pipeline run (the prefixes of its metric names); empty for other runs."""
        prefix = f"{HPARAMS}.experiment.stages."
        return {key[len(prefix):].split(".")[0] for key in self.params if key.startswith(prefix)}

    def stands_for(self, name: str, metric: str) -> bool:
        """Whether a requested ``name`` stands for the tracked ``metric``: itself or a pipeline's ``<stage>/name``."""
        stage, _, rest = metric.partition("/")
        return metric == name or (rest == name and stage in self.stages)


def parse_metric_specs(spec: str) -> list[tuple[str, str]]:
    """``"loss:last,loss:min"`` -> ``[("loss", "last"), ("loss", "min")]``; no aggregate means last."""
    parsed = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, aggregate = item.partition(":")
        aggregate = aggregate or "last"
        if aggregate not in AGGREGATES:
            raise CompareError(
                f"--metrics {item!r}: unknown aggregate '{aggregate}'; expected one of {', '.join(AGGREGATES)}"
            )
        parsed.append((name, aggregate))
    return parsed


def query_runs(repo_path: str, query: str = "") -> list[Any]:
    """The Aim runs of the repo in ``repo_path`` that match an Aim QL query, in Aim's order."""
    if not (Path(repo_path) / ".aim").is_dir():
        raise CompareError(f"no Aim repo at '{repo_path}' (expected a folder with '.aim' inside, e.g. --repo runs)")
    repo = Repo.from_path(str(repo_path))
    try:
        return [item.run for item in repo.query_runs(query, report_mode=QueryReportMode.DISABLED).iter_runs()]
    except SyntaxError as exc:  # Aim wraps its parser's message in a tuple
        detail = exc.msg[0] if isinstance(exc.msg, tuple) else exc.msg
        raise CompareError(f"bad query {query!r}: {detail}") from exc


def run_row(run: Any) -> RunRow:
    """A run's name, status and params, its metric series not yet read."""
    params = _params(run)
    return RunRow(run.name or run.hash, str(params.get("status", "-")), run.creation_time, params)


def read_runs(repo_path: str, query: str = "") -> list[RunRow]:
    """The runs matching an Aim QL query, oldest first, with their params and metric series."""
    rows = []
    for run in query_runs(repo_path, query):
        row = run_row(run)
        for metric in run.metrics():
            context = tuple(sorted(metric.context.to_dict().items()))
            row.series[(metric.name, context)] = [value for _, (value, *_) in metric.data.items()]
        rows.append(row)
    return sorted(rows, key=lambda r: r.created)


def _params(run: Any) -> dict[str, Any]:
    """Every param of a run, as dotted keys; a run still being written shows its params only once it
    is closed and indexed, so until then it is listed as running, with none."""
    try:
        return flatten(run[...])
    except KeyError:  # Aim: "No key () is present." for a run another process holds open
        return {"status": "running"}


def metric_columns(rows: Sequence[RunRow], specs: Sequence[tuple[str, str]], keep_empty: bool) -> list[MetricColumn]:
    """A column per requested (metric, aggregate) and per metric it stands for (a pipeline's ``<stage>/name``)
    and context the runs tracked it in."""
    columns = []
    for name, aggregate in specs:
        found = {(metric, ctx) for row in rows for (metric, ctx) in row.series if row.stands_for(name, metric)}
        found = sorted(found, key=lambda key: (key[0] != name, key[0], str(key[1])))
        if not found and keep_empty:
            found = [(name, ())]
        columns.extend(MetricColumn(metric, ctx, aggregate, f"{name}:{aggregate}") for metric, ctx in found)
    return columns


def build_table(
    rows: Sequence[RunRow],
    params: Sequence[str],
    metrics: Sequence[MetricColumn],
    sort: str | None = None,
) -> tuple[list[str], list[list[Any]]]:
    """Header and cells: name, status, one cell per param and per metric column (None when absent).

    A param given twice, or naming a fixed column (``status``), is shown once. ``sort`` is a column's
    title or a metric spec (``fid:min``), which sorts by the first column it gave.
    """
    params = [key for key in dict.fromkeys(params) if key not in FIXED_COLUMNS]
    header = [*FIXED_COLUMNS, *params, *(m.title for m in metrics)]
    cells = []
    for row in rows:
        values = [row.param(key) for key in params]
        for column in metrics:
            series = row.series.get((column.name, column.context))
            values.append(AGGREGATES[column.aggregate](series) if series else None)
        cells.append([row.name, row.status, *values])
    if sort is not None:
        by_spec = [len(FIXED_COLUMNS) + len(params) + i for i, m in enumerate(metrics) if m.requested == sort]
        if sort not in header and not by_spec:
            raise CompareError(f"--sort {sort!r}: not a column; columns are {', '.join(header)}")
        index = header.index(sort) if sort in header else by_spec[0]
        cells.sort(key=lambda c: (c[index] is None, _sort_key(c[index])))
    return header, cells


def format_table(header: Sequence[str], cells: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned, missing values as '-'."""
    text = [[_format(v) for v in row] for row in cells]
    widths = [max([len(h), *(len(r[i]) for r in text)]) for i, h in enumerate(header)]
    numeric = [bool(cells) and all(isinstance(r[i], (int, float)) or r[i] is None for r in cells)
               for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(row, widths, numeric)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in text)])


def compare(
    repo_path: str,
    query: str = "",
    params: Sequence[str] | None = None,
    metrics: str | None = None,
    sort: str | None = None,
) -> str:
    """The table `tools/compare.py` prints; default params and metrics show only where some run has them."""
    rows = read_runs(repo_path, query)
    if not rows:
        return f"no runs in '{repo_path}' match {query!r}" if query else f"no runs in '{repo_path}'"
    if params is None:
        params = [key for key in DEFAULT_PARAMS if any(row.param(key) is not None for row in rows)]
    columns = metric_columns(rows, parse_metric_specs(metrics or DEFAULT_METRICS), keep_empty=metrics is not None)
    return format_table(*build_table(rows, params, columns, sort))


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    return str(value)


def _sort_key(value: Any) -> tuple[int, Any]:
    """Numbers before text, each in its own order, so a column of mixed values still sorts."""
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))
