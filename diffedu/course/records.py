"""The figures the benchmarks recorded, shown as tables in the lessons: ``show_recorded("ddim_steps")``.

Each script in ``benchmarks/`` appends its figures to ``benchmarks/results/<benchmark>.jsonl``, one JSON object
a line: ``metric``, ``value``, ``unit``, ``profile``, ``device``, ``torch``, ``date``, ``commit`` and a dict of
``settings``. A `View` says how one benchmark's figures read as tables: which fields make one table each (a
run: a device, a model, ...), which make one row each, and which metrics are the columns. Later lines win
over earlier ones with the same keys, so a table shows the latest figure of each cell.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import matplotlib.pyplot as plt
from IPython.display import display

__all__ = ["VIEWS", "RecordedTables", "View", "load_records", "plot_recorded", "recorded_tables", "results_dir",
           "show_recorded"]

TOP_LEVEL = ("benchmark", "metric", "value", "unit", "profile", "device", "torch", "date", "commit")

# Column headings for the metric names of COURSE.md (anything else is shown under its own name).
LABELS = {
    "fid_self": "FID_self", "fid_self_floor": "floor", "kid_self": "KID", "confident_fraction": "confident",
    "class_accuracy": "class", "attribute_accuracy": "attribute", "sample_seconds": "s/batch",
    "train_images_per_s": "images/s", "mfu": "MFU", "train_step_ms": "ms/step", "train_steps": "steps",
    "seconds_to_fid_self": "s to FID_self <=", "speedup_vs_diffusers": "ours / diffusers",
    "attribute_accuracy_thickness": "thickness", "attribute_accuracy_slant": "slant", "attribute_accuracy_size": "size",
    "clip_score": "CLIP score", "clip_attribute_auc": "CLIP tells attribute (AUC)", "zero_shot_accuracy": "zero-shot",
    "recall_at_1": "R@1", "recall_at_5": "R@5", "inpaint_accuracy": "read as original",
}


@dataclass(frozen=True)
class View:
    """How one benchmark's records read as tables.

    ``tables``: the fields that make one table each (its heading). ``rows``: the fields that make one row
    each. ``columns``: metrics, one column each; ``"metric@field"`` makes one column per value of the
    setting ``field`` (for example the FID_self targets of a race). ``summary``: metrics of the whole table,
    printed under its heading. A field is a record's own key (``device``, ``profile``...) or one of its
    settings. ``defaults`` fill a field that older records lack (a value, or a function of the record).
    ``prefer``: keep only the records that match, where any do (``{"profile": "gpu"}``). ``latest``: show
    only the last table. ``ratio_to_first``: add a column of this metric over its value in the first row.
    ``metric_suffix``: removed from metric names (a row field already tells such figures apart).
    ``settings_columns``: settings shown as columns after the row fields (the latest record's, in each row).
    ``labels``: column headings for this view's metrics, where the shared ones (LABELS) do not fit.
    """

    tables: tuple[str, ...]
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    summary: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    prefer: Mapping[str, Any] = field(default_factory=dict)
    latest: bool = False
    ratio_to_first: str | None = None
    metric_suffix: str = ""
    settings_columns: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    command: str = ""


def _eta_of_old_records(record: dict[str, Any]) -> float:
    """Records from before the DDIM benchmark wrote eta: its DDIM ran at eta = 0, and DDPM is eta = 1."""
    return 0.0 if record["settings"].get("sampler") == "ddim" else 1.0


VIEWS: dict[str, View] = {
    "ddim_steps": View(
        tables=("device", "profile", "sample_count", "train_steps"), rows=("sampler", "steps", "eta"),
        columns=("sample_seconds", "fid_self", "fid_self_floor", "kid_self", "confident_fraction"),
        defaults={"eta": _eta_of_old_records}, command="python benchmarks/mnist_quality.py --profile cpu"),
    "speed_recipe": View(
        tables=("device", "profile", "run_id", "preset", "torch", "commit"), rows=("row", "batch"),
        columns=("train_images_per_s", "mfu"), summary=("speedup_vs_diffusers@comparison",),
        prefer={"profile": "gpu"}, latest=True, ratio_to_first="train_images_per_s",
        command="python benchmarks/speed_recipe.py"),
    "latent": View(
        tables=("device", "profile"), rows=("space",), columns=("train_step_ms", "train_images_per_s"),
        summary=("vae_train_seconds", "fid_self_reconstructions", "latent_step_speedup"),
        command="python benchmarks/latent.py --profile cpu"),
    "latent:race": View(
        tables=("device", "profile", "sample_count", "steps", "eta"), rows=("space", "train_seconds"),
        columns=("fid_self", "seconds_to_fid_self@target_fid_self"),
        command="python benchmarks/latent.py --profile cpu"),
    "guidance": View(
        tables=("device", "sample_count", "steps", "eta", "train_steps"), rows=("guidance",),
        columns=("class_accuracy", "fid_self", "fid_self_floor", "confident_fraction"), latest=True,
        command="python benchmarks/guidance.py"),
    "flow_matching": View(
        tables=("device", "profile", "model", "sample_count"), rows=("objective", "ema_decay", "sampler", "nfe"),
        settings_columns=("train_steps", "train_seconds"), defaults={"ema_decay": 0.995},  # the first runs' EMA
        columns=("fid_self", "fid_self_floor", "kid_self", "confident_fraction"),
        command="python benchmarks/flow_matching.py --minutes 10"),
    "reflow": View(
        tables=("device", "sample_count", "pairs", "pair_sampler", "reflow_steps"), rows=("model", "sampler", "nfe"),
        settings_columns=("train_seconds",),
        columns=("fid_self", "fid_self_floor", "confident_fraction", "distance_to_teacher_ode", "path_straightness"),
        labels={"distance_to_teacher_ode": "distance to the ODE's end", "path_straightness": "length / chord"},
        command="python benchmarks/reflow.py --pairs 10000 --minutes 10 --threads 2"),
    "few_step": View(
        tables=("device", "model", "sample_count", "clip_x0", "seed"), rows=("sampler", "spacing", "rho", "nfe"),
        columns=("fid_self", "fid_self_floor", "kid_self", "confident_fraction", "sample_seconds"),
        labels={"sample_seconds": "s/sample"}, command="python benchmarks/few_step.py --threads 2 --no-ddpm"),
    "backbones": View(
        tables=("device", "sample_count", "sampler", "nfe"), rows=("backbone", "lr", "train_seconds"),
        settings_columns=("flops_per_image", "parameters", "train_steps"),
        columns=("fid_self", "fid_self_floor", "confident_fraction", "train_images_per_s"),
        command="python benchmarks/backbones.py --threads 2"),
    "text2img": View(
        tables=("backbone", "objective", "space", "device", "sample_count", "sampler", "steps", "train_steps",
                "train_seconds"),
        rows=("templates", "guidance"),
        columns=("class_accuracy", "attribute_accuracy", "attribute_accuracy_thickness", "attribute_accuracy_slant",
                 "attribute_accuracy_size", "clip_score", "clip_attribute_auc"),
        defaults={"space": "pixel", "backbone": "unet", "objective": "eps", "sampler": "ddim"},
        metric_suffix="_heldout",
        command="python benchmarks/text2img.py"),
    "clip": View(
        tables=("device", "model", "train_steps", "train_seconds", "test_images"), rows=("task", "prompts"),
        columns=("zero_shot_accuracy",), settings_columns=("chance",), command="python benchmarks/clip.py"),
    "clip:retrieval": View(
        tables=("device", "model", "pairs", "pool", "captions"), rows=("direction",),
        columns=("recall_at_1", "recall_at_5"), command="python benchmarks/clip.py"),
    "clip:score": View(
        tables=("device", "model"), rows=("pairs",), columns=("clip_score",), command="python benchmarks/clip.py"),
    "editing": View(
        tables=("device", "sample_count", "mask"), rows=("method", "model", "conditioned", "resample"),
        columns=("inpaint_accuracy", "fid_self", "fid_self_floor"), settings_columns=("nfe",),
        command="python benchmarks/editing.py --parts inpaint"),
    "editing:guidance": View(
        tables=("device", "model", "sample_count", "prompts"), rows=("method", "clip_scale", "guidance"),
        settings_columns=("steps", "nfe"), columns=("class_accuracy", "clip_score", "confident_fraction"),
        command="python benchmarks/editing.py --parts clip_guidance"),
    "editing:sdedit": View(
        tables=("device", "model", "sample_count", "method", "target"), rows=("strength",),
        columns=("sdedit_distance", "confident_fraction", "class_kept", "class_accuracy"),
        labels={"sdedit_distance": "distance to input", "class_kept": "same digit",
                "class_accuracy": "read as the target"},
        command="python benchmarks/editing.py --parts sdedit invert_edit"),
}


def results_dir() -> Path | None:
    """The folder of recorded figures: $DIFFEDU_RESULTS, else ``benchmarks/results`` of the repository that
    holds this package (a clone or an editable install), else of the working folder or its parent (a
    notebook in ``solutions/`` or ``lessons/``). None where there is none."""
    if os.environ.get("DIFFEDU_RESULTS"):
        return Path(os.environ["DIFFEDU_RESULTS"])
    candidates = [Path(__file__).resolve().parents[2], Path.cwd(), Path.cwd().parent]
    for root in candidates:
        if (root / "benchmarks" / "results").is_dir():
            return root / "benchmarks" / "results"
    return None


def load_records(benchmark: str, directory: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Every record of ``benchmark``, in the order written ([] where there are none)."""
    folder = Path(directory) if directory is not None else results_dir()
    path = folder / f"{benchmark}.jsonl" if folder is not None else None
    if path is None or not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}, is not JSON ({err.msg}); the figures are written by the "
                                 "benchmark scripts only: restore the file from git") from None
    return records


def _field(record: dict[str, Any], name: str, defaults: Mapping[str, Any]) -> Any:
    if name in TOP_LEVEL:
        return record.get(name)
    settings = record.get("settings", {})
    if name in settings:
        return settings[name]
    default = defaults.get(name)
    return default(record) if callable(default) else default


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 10:
        return f"{int(value):,}" if abs(value) >= 10_000 else str(int(value))
    return f"{value:.4g}"


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, str(value))


@dataclass
class RecordedTable:
    heading: str
    summary: list[str]
    columns: list[str]
    rows: list[list[str]]


@dataclass
class RecordedTables:
    """What `recorded_tables` returns: shown as text (``print``) or, in a notebook, as HTML tables."""

    benchmark: str
    tables: list[RecordedTable]
    note: str = ""

    def __str__(self) -> str:
        if not self.tables:
            return self.note
        parts = []
        for table in self.tables:
            cells = [table.columns, *table.rows]
            widths = [max(len(row[k]) for row in cells) for k in range(len(table.columns))]
            lines = [table.heading, *(f"  {line}" for line in table.summary)]
            lines += ["  " + "  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
            parts.append("\n".join(lines))
        return "\n\n".join(parts)

    def _repr_html_(self) -> str:
        if not self.tables:
            return f"<p>{_escape(self.note)}</p>"
        html = []
        for table in self.tables:
            html.append(f"<p><b>{_escape(table.heading)}</b>"
                        + "".join(f"<br>{_escape(line)}" for line in table.summary) + "</p>")
            head = "".join(f"<th>{_escape(c)}</th>" for c in table.columns)
            body = "".join("<tr>" + "".join(f"<td>{_escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
            html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        return "\n".join(html)

    def __repr__(self) -> str:
        return str(self)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def recorded_tables(benchmark: str, view: View | None = None, *, where: Mapping[str, Any] | None = None,
                    directory: str | os.PathLike[str] | None = None) -> RecordedTables:
    """The recorded figures of ``benchmark`` as tables, arranged by ``view`` (by default ``VIEWS[benchmark]``).

    ``"name:part"`` reads benchmark ``name`` with the view ``VIEWS["name:part"]`` (one benchmark, two tables).
    ``where`` keeps only the records whose fields (settings, with the view's defaults) have these values.
    """
    if view is None:
        if benchmark not in VIEWS:
            raise ValueError(f"no view for benchmark {benchmark!r}; known: {', '.join(map(repr, VIEWS))} "
                             "(or pass view=View(...))")
        view = VIEWS[benchmark]
    records = load_records(benchmark.split(":")[0], directory)
    if not records:
        how = f"; make them with  {view.command}" if view.command else ""
        return RecordedTables(benchmark, [], f"no recorded figures for {benchmark!r} yet{how}")
    field_of: Callable[[dict[str, Any], str], Any] = lambda r, name: _field(r, name, view.defaults)  # noqa: E731
    records = [r for r in records if all(field_of(r, k) == v for k, v in (where or {}).items())]
    if not records:
        return RecordedTables(benchmark, [], f"no recorded figures for {benchmark!r} match {dict(where or {})}")
    preferred = [r for r in records if all(field_of(r, k) == v for k, v in view.prefer.items())]
    records = preferred or records
    columns = [c.split("@")[0] for c in view.columns]
    by_column = {c.split("@")[0]: (c.split("@")[1] if "@" in c else None) for c in view.columns}
    by_summary = {c.split("@")[0]: (c.split("@")[1] if "@" in c else None) for c in view.summary}
    grouped: dict[tuple, dict[str, Any]] = {}  # table key -> {"rows": {row key: {column: value}}, "summary": ...}
    for record in records:
        metric = record["metric"].removesuffix(view.metric_suffix) if view.metric_suffix else record["metric"]
        if metric not in by_column and metric not in by_summary:
            continue
        key = tuple(field_of(record, name) for name in view.tables)
        group = grouped.pop(key, {"rows": {}, "summary": {}})
        grouped[key] = group  # re-inserted: the latest table comes last
        if metric in by_column:
            split = by_column[metric]
            column = metric if split is None else (metric, field_of(record, split))
            row = tuple(field_of(record, name) for name in view.rows)
            cells = group["rows"].setdefault(row, {})
            cells[column] = record["value"]
            for name in view.settings_columns:
                cells[("setting", name)] = field_of(record, name)
        else:
            split = by_summary[metric]
            group["summary"][metric if split is None else (metric, field_of(record, split))] = record["value"]
    keys = list(grouped)[-1:] if view.latest else list(grouped)
    tables = []
    for key in keys:
        group = grouped[key]
        if not group["rows"]:
            continue
        heading = ", ".join(f"{name} {_format(value)}" for name, value in zip(view.tables, key) if value is not None)
        summary = [f"{_label(name)}: {_format(value)}" for name, value in group["summary"].items()]
        cols: list[Any] = []
        for metric in columns:
            if by_column[metric] is None:
                cols.append(metric)
            else:
                values = {c[1] for row in group["rows"].values() for c in row
                          if isinstance(c, tuple) and c[0] == metric}
                cols += [(metric, v) for v in sorted(values, key=_sort_key)]
        cols = [c for c in cols if any(c in row for row in group["rows"].values())]
        cols = [("setting", name) for name in view.settings_columns] + cols
        names = [*view.rows, *(view.labels.get(c, _label(c)) if isinstance(c, str) else _label(c) for c in cols)]
        row_keys = list(group["rows"])
        if view.ratio_to_first is None:
            row_keys.sort(key=lambda row: tuple(_sort_key(v) for v in row))
        base = group["rows"][row_keys[0]].get(view.ratio_to_first) if view.ratio_to_first else None
        if base:
            names.append("x first row")
        rows = []
        for row in row_keys:
            values = group["rows"][row]
            cells = [_format(v) for v in row] + [_format(values.get(c)) for c in cols]
            if base:
                ratio = values.get(view.ratio_to_first)
                cells.append(f"{ratio / base:.2f}" if ratio is not None else "-")
            rows.append(cells)
        tables.append(RecordedTable(heading, summary, names, rows))
    return RecordedTables(benchmark, tables, "" if tables else f"no figures for {benchmark!r} fit its view")


def _label(column: Any) -> str:
    if isinstance(column, tuple) and column[0] == "setting":
        return column[1]
    if isinstance(column, tuple):
        return f"{LABELS.get(column[0], column[0])} {_format(column[1])}"
    return LABELS.get(column, column)


def show_recorded(benchmark: str, view: View | None = None, *, where: Mapping[str, Any] | None = None,
                  directory: str | os.PathLike[str] | None = None) -> None:
    """Show the recorded figures of ``benchmark`` (see `recorded_tables`): HTML in a notebook, text elsewhere."""
    display(recorded_tables(benchmark, view, where=where, directory=directory))


def plot_recorded(benchmark: str, *, x: str, y: str, series: tuple[str, ...], where: Mapping[str, Any] | None = None,
                  floor: str | None = None, reference: tuple[str, Mapping[str, Any], str] | None = None, ax=None,
                  logx: bool = True, logy: bool = True, directory: str | os.PathLike[str] | None = None):
    """Plot the recorded metric ``y`` against the setting ``x``, one line per value of the fields ``series``.

    ``where`` keeps only the records whose fields have these values; later records win over earlier ones at the
    same point. ``floor``: a metric drawn as a dotted line at its latest value (for example the real-data floor).
    ``reference``: (benchmark, where, label), the latest ``y`` of another benchmark's matching records drawn as a
    dashed line (for example DDPM-1000 of the same model). Returns the axes (None, with a message, where nothing is
    recorded).
    """
    records = [r for r in load_records(benchmark, directory)
               if all(_field(r, k, {}) == v for k, v in (where or {}).items())]
    lines: dict[tuple, dict[Any, float]] = {}
    floor_value = None
    for r in records:
        if r["metric"] == y:
            lines.setdefault(tuple(_field(r, k, {}) for k in series), {})[_field(r, x, {})] = r["value"]
        elif floor is not None and r["metric"] == floor:
            floor_value = r["value"]
    if not lines:
        print(f"no recorded {y!r} for {benchmark!r}" + (f" with {dict(where)}" if where else ""))
        return None
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.2))
    markers = "os^vD<>pPX*h"
    for k, (key, points) in enumerate(sorted(lines.items(), key=lambda kv: tuple(map(_sort_key, kv[0])))):
        xs = sorted(points, key=_sort_key)
        ax.plot(xs, [points[v] for v in xs], marker=markers[k % len(markers)], ms=4, lw=1.2,
                label=" ".join(_format(v) for v in key))
    if floor_value is not None:
        ax.axhline(floor_value, color="k", ls=":", lw=1, label=f"{_label(floor)} {_format(floor_value)}")
    if reference is not None:
        name, match, label = reference
        values = [r["value"] for r in load_records(name, directory)
                  if r["metric"] == y and all(_field(r, k, {}) == v for k, v in match.items())]
        if values:
            ax.axhline(values[-1], color="k", ls="--", lw=1, label=f"{label} {_format(values[-1])}")
    ax.set(xlabel=x, ylabel=_label(y), xscale="log" if logx else "linear", yscale="log" if logy else "linear")
    ax.legend(fontsize=7, ncol=2)
    return ax
