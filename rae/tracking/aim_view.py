"""A saved view of the runs in `aim up` that opens on the columns runs are compared by.

Aim 3.29's Runs explorer lists every metric (300+ context columns for a pipeline) before any
param, and keeps a column choice only in the browser's localStorage: it has no saved state and
no URL for its columns. Its Params explorer opens saved explore states, though
(``/params/<id>``; ``aim up`` stores them through ``/api/apps`` and lists them under Bookmarks
through ``/api/dashboards``). `save_view` writes one whose table shows each run's name, status,
experiment, encoder, backbone, seed and guidance and its final loss, FID and class accuracy (the columns
`tools/compare.py` prints by default, pipeline stages' ``stage2/loss`` and ``eval/fid``
included) and hides every other column, and whose chart plots those params against those metrics.

The column keys are the Aim UI's own: a param's dotted path (``hparams.backbone.name``) and a
metric's ``O-`` key (URL-safe base64 of the URI-encoded JSON of its name and context label).
"""
from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote

from rae.tracking.compare import (
    DEFAULT_METRICS,
    DEFAULT_PARAMS,
    metric_columns,
    parse_metric_specs,
    query_runs,
    run_row,
)
from rae.tracking.values import HPARAMS

VIEW_NAME = "rae: runs"  # the bookmark's name; saving the view again updates that bookmark
AIM_COLUMNS = ("experiment", "experiment_description", "hash", "run", "description", "date", "duration", "tags")
SHOWN_AIM_COLUMNS = ("run", "experiment")  # Aim's own columns the view keeps: the run's name, its Aim experiment
CHART_SKIPS = ("status",)  # a table column, no axis of the chart
CHAR_PX, PAD_PX = 8, 72  # a column as wide as its header: the UI's header font, its sort and menu icons
SHOWN_PARAMS = ("status", *(f"{HPARAMS}.{key}" for key in DEFAULT_PARAMS))
COLORS = ("#3E72E7", "#18AB6D", "#7A4CE0", "#E149A0", "#E43D3D", "#E8853D", "#0394B4", "#729B1B")  # the UI's palette
ENCODE_URI_SAFE = ";,/?:@&=+$!*'()#"  # what JavaScript's encodeURI leaves as is, besides letters, digits and -_.~
IDENTIFIER = re.compile(r"^[a-zA-Z_][a-zA-Z0-9d_]*$")  # the UI's test for a plain path part (sic: "0-9d")
SYSTEM_PREFIX = "__system__"
STARTUP_S = 60


class AimServerError(RuntimeError):
    """No `aim up` answers at the URL, it serves another repo, or it refused the view."""


@dataclass
class RunsView:
    """The columns of a saved Params-explorer view: what it shows, in order, and what it hides."""

    params: list[str]  # param paths shown, e.g. ``hparams.backbone.name``
    metrics: list[tuple[str, dict[str, Any]]]  # (name, context) of each metric column shown
    hidden: list[str]  # the key of every other column the table would have
    query: str = ""

    @property
    def columns(self) -> list[str]:
        """The table's column keys the view shows, left to right."""
        return [*SHOWN_AIM_COLUMNS, *self.params, *(metric_key(name, ctx) for name, ctx in self.metrics)]

    def state(self) -> dict[str, Any]:
        """The explore state the Aim UI's Params explorer loads from ``/api/apps/<id>``."""
        options = [{"label": p, "key": p, "group": "Params", "type": "params"} for p in self.params
                   if p not in CHART_SKIPS]
        options += [{"label": metric_label(name, ctx), "key": metric_key(name, ctx), "group": name, "type": "metrics",
                     "value": {"option_name": name, "context": ctx}} for name, ctx in self.metrics]
        for index, option in enumerate(options):
            option["color"] = COLORS[index % len(COLORS)]
        widths = {p: _width(p) for p in self.params}
        widths.update({metric_key(name, ctx): _width(name, context_label(ctx)) for name, ctx in self.metrics})
        return {
            "select": {"options": options, "query": self.query, "advancedMode": False, "advancedQuery": ""},
            "table": {
                "hiddenColumns": self.hidden,
                "columnsOrder": {"left": ["run"], "middle": self.columns[1:], "right": []},
                "columnsWidths": widths,
                "metricsValueKey": "last",
            },
        }


def _width(*headers: str) -> int:
    """Pixels for a column whose header lines are ``headers``: no header cut short."""
    return int(CHAR_PX * max(len(h) for h in headers)) + PAD_PX


def runs_view(repo_path: str, query: str = "") -> RunsView:
    """The view of the runs an Aim QL query matches: the default compare columns some run has, the rest hidden."""
    runs = query_runs(repo_path, query)
    rows, contexts, param_keys = [], {}, set()
    for run in runs:
        row = run_row(run)
        for info in run.collect_sequence_info("metric", skip_last_value=True)["metric"]:
            context = dict(info["context"])  # in the order the UI receives it: its key depends on it
            key = (info["name"], tuple(sorted(context.items())))
            contexts[key] = context
            row.series[key] = []
        rows.append(row)
        param_keys.update(param_paths(_ui_params(run)))
    params = [p for p in SHOWN_PARAMS if any(row.param(p.removeprefix(f"{HPARAMS}.")) is not None for row in rows)]
    metrics = [(c.name, contexts[(c.name, c.context)])
               for c in metric_columns(rows, parse_metric_specs(DEFAULT_METRICS), keep_empty=False)]
    shown = {*SHOWN_AIM_COLUMNS, *params, *(metric_key(name, ctx) for name, ctx in metrics)}
    every = [*AIM_COLUMNS, *sorted(param_keys), *sorted(metric_key(name, ctx) for (name, _), ctx in contexts.items())]
    return RunsView(params, metrics, [key for key in dict.fromkeys(every) if key not in shown], query)


def _ui_params(run: Any) -> dict[str, Any]:
    """A run's params as `aim up` sends them to the UI (its ``get_run_params``, system params skipped)."""
    try:
        params = run.get(..., {}, resolve_objects=True)
    except KeyError:  # a run another process holds open has no readable params yet
        return {}
    params.pop("__system_params", None)
    return params


def param_paths(params: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The Aim UI's param column keys (its ``getObjectPaths``): dotted paths to leaves, ``["odd key"]`` parts."""
    paths = []
    for key, value in params.items():
        if not prefix:
            path = key if IDENTIFIER.match(key) or not isinstance(value, Mapping) else f"[{format_value(key)}]"
        else:
            path = f"{prefix}.{key}" if IDENTIFIER.match(key) else f"{prefix}[{format_value(key)}]"
        paths += param_paths(value, path) if isinstance(value, Mapping) else [path]
    return paths


def metric_label(name: str, context: Mapping[str, Any]) -> str:
    """The Aim UI's label of a metric column: ``eval/fid guidance="cfg-2.0", split="train"``."""
    return f"{name} {context_label(context)}" if context else name


def metric_key(name: str, context: Mapping[str, Any]) -> str:
    """The Aim UI's column key of a metric in a context (its ``getMetricHash``)."""
    if name.startswith(SYSTEM_PREFIX):
        return name
    label = json.dumps({"metricName": name, "contextName": f" {context_label(context)}" if context else ""},
                       separators=(",", ":"), ensure_ascii=False)
    encoded = base64.b64encode(quote(label, safe=ENCODE_URI_SAFE).encode()).decode()
    return "O-" + encoded.replace("=", "").replace("+", "-").replace("/", "_")


def context_label(context: Mapping[str, Any]) -> str:
    """``guidance="cfg-2.0", split="train"``: a context as the Aim UI writes it (its ``contextToString``)."""
    return ", ".join(f"{key}={format_value(value)}" for key, value in context.items())


def format_value(value: Any) -> str:
    """A value as the Aim UI's ``formatValue`` writes it: JSON strings, Python's True/False/None."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if value is None:
        return "None"
    if isinstance(value, (int, float)):
        return _js_number(float(value))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)}: {format_value(v)}"
                               for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def _js_number(value: float) -> str:
    """JavaScript's ``JSON.stringify(parseFloat(v.toFixed(8)))``: ``2`` for 2.0, ``1e-8`` for 1e-08."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    value = round(value, 8)
    if value == int(value) and abs(value) < 1e21:
        return str(int(value))
    return re.sub(r"e([+-])0*(\d)", lambda m: f"e{'' if m.group(1) == '+' else '-'}{m.group(2)}", repr(value))


# ---------------------------------------------------------------- talking to `aim up`
def _request(url: str, method: str = "GET", body: Mapping[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise AimServerError(f"`aim up` at {url} answered {method} with {exc.code}: {exc.read()[:300]!r}") from exc
    except OSError as exc:
        raise AimServerError(f"no `aim up` answers at {url} ({exc})") from exc


def served_repo(url: str) -> Path | None:
    """The repo folder the `aim up` at ``url`` serves, or None when nothing answers there."""
    try:
        project = _request(f"{url}/api/projects/")
    except AimServerError:
        return None
    return Path(project["path"]).resolve()


def save_view(url: str, view: RunsView, name: str = VIEW_NAME) -> str:
    """Store the view in the `aim up` at ``url`` as the bookmark ``name`` (updated if it exists); its app id."""
    state = {"type": "params", "state": view.state()}
    for bookmark in _request(f"{url}/api/dashboards/"):
        if bookmark["name"] == name and bookmark.get("app_id") and bookmark.get("app_type") == "params":
            _request(f"{url}/api/apps/{bookmark['app_id']}/", "PUT", state)
            return str(bookmark["app_id"])
    app = _request(f"{url}/api/apps/", "POST", state)
    description = "name, status, experiment, encoder, backbone, seed, guidance, final loss, FID, class accuracy (tools/aim_view.py)"
    _request(f"{url}/api/dashboards/", "POST", {"name": name, "description": description, "app_id": app["id"]})
    return str(app["id"])


def view_url(url: str, app_id: str) -> str:
    """Where the browser opens a saved Params-explorer view."""
    return f"{url}/params/{app_id}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now, for an `aim up` of its own (tests, screenshots)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def aim_command() -> str:
    """The ``aim`` executable of this Python (its bin folder first, then PATH)."""
    beside_python = Path(sys.executable).with_name("aim")
    return str(beside_python) if beside_python.exists() else shutil.which("aim") or "aim"


def start_aim_up(repo_path: str, host: str, port: int, log: Path) -> subprocess.Popen:
    """`aim up` on the repo, in its own process group, once it answers; its output goes to ``log``."""
    url = f"http://{host}:{port}"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [aim_command(), "up", "--repo", str(repo_path), "--host", host, "--port", str(port), "--yes"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AimServerError(f"`aim up` exited with {server.returncode}:\n{log.read_text()[-2000:]}")
        if served_repo(url) is not None:
            return server
        time.sleep(0.5)
    stop_aim_up(server)
    raise AimServerError(f"`aim up` did not answer at {url} within {STARTUP_S}s:\n{log.read_text()[-2000:]}")


def stop_aim_up(server: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """End an `aim up` started by `start_aim_up`: its whole process group (its server runs in a child),
    politely first; returns once the group is gone (or was killed)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + timeout_s
        try:
            os.killpg(server.pid, sig)
            while time.monotonic() < deadline:
                server.poll()  # reaps the leader, whose zombie would keep the group alive
                os.killpg(server.pid, 0)
                time.sleep(0.2)
        except ProcessLookupError:
            return
