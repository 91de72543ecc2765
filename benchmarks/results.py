"""k-NN learning curves and the results table: run a list of recipes, or re-read finished runs.

    python -m benchmarks.results                                   # the recipes of benchmarks/results.yaml
    python -m benchmarks.results --tiny                            # 2 tiny recipes on fake data (CI)
    python -m benchmarks.results --from-runs outputs/results/<time>/runs   # re-plot, no training
    python -m benchmarks.results --write-docs                      # also docs/results.md's marked block

Each recipe is ``python train.py <overrides>`` in its own run folder (``<out>/runs/<label>``), one after
another. Everything is read back from the runs' ``csv/metrics.csv``, where the k-NN callback logs
``val/knn_top1`` with ``val/wall_s`` and ``val/images_seen`` at every evaluation, and its references
``val/knn_top1_pixels`` and ``val/knn_top1_init``. Writes ``<out>/curves.png`` (k-NN against
wall-clock seconds and against images seen; raw pixels and init as horizontal lines) and
``<out>/results.md`` (method, command, best and final k-NN, pixels, init, wall time, images seen, and
where the curve reaches raw pixels: measured, or extrapolated from the second half of its evaluations).
With ``--write-docs`` the figure and the table also replace the text between ``<!-- results:begin -->``
and ``<!-- results:end -->`` in docs/results.md (the figure goes to docs/figures/).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPES = Path(__file__).with_name("results.yaml")
DOCS = REPO / "docs" / "results.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
RUN_REF = re.compile(r"\{run:([^}]+)\}")
RECIPE_FILE = "results_recipe.json"  # written into each run folder: label, overrides, exit status
# Always added before a recipe's own overrides: the curves are read from the CSV logger, and a progress
# bar would fill the run's log.
RUN_OVERRIDES = ["logger=csv", "trainer.enable_progress_bar=false"]

# --tiny: a 2-block ViT on 32-px synthetic images, 2 epochs of 3 steps, k-NN after each epoch.
TINY_BASE = [
    "backbone=vit_test",
    "backbone.patch_size=8",
    "data=fake",
    "trainer=cpu",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "trainer.enable_model_summary=false",
    "callbacks=knn",
    "method.out_dim=64",
    "method.hidden_dim=32",
    "method.bottleneck_dim=16",
]


@dataclass(frozen=True)
class Recipe:
    label: str
    overrides: list[str]


TINY_RECIPES = [Recipe("DINO", TINY_BASE), Recipe("iBOT", [*TINY_BASE, "method=ibot"])]


@dataclass
class Run:
    """What one run folder says: its k-NN curve and references, read from csv/metrics.csv."""

    label: str
    command: str
    folder: Path
    status: str
    wall_s: list[float] = field(default_factory=list)  # at each k-NN evaluation
    images: list[float] = field(default_factory=list)
    knn: list[float] = field(default_factory=list)
    init: float | None = None
    pixels: float | None = None
    start: tuple[float, float] | None = None  # (wall_s, images) of the init measurement

    @property
    def best(self) -> float | None:
        return max(self.knn) if self.knn else None

    @property
    def final(self) -> float | None:
        return self.knn[-1] if self.knn else None


@dataclass(frozen=True)
class Crossing:
    """Where a k-NN curve reaches the raw-pixel k-NN: measured, or extrapolated."""

    images: float
    wall_s: float
    measured: bool


def log_linear_crossing(xs: list[float], ys: list[float], level: float) -> float | None:
    """``x`` where the least-squares line ``y = a + b ln x`` through the points reaches ``level``.

    None when the points do not rise (``b <= 0``) or there are fewer than two. Accuracy against the log
    of the budget is close to a line over a decade or two of self-supervised training; past the points
    it is a guide (the end of a cosine schedule flattens a curve, which makes the guess pessimistic).
    """
    points = [(math.log(x), y) for x, y in zip(xs, ys) if x > 0 and math.isfinite(x)]
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread
    if slope <= 0:
        return None
    return math.exp(mean_x + (level - mean_y) / slope)


def pixels_crossing(run: Run) -> Crossing | None:
    """The first evaluation at or above raw pixels, else the extrapolation of the curve's second half.

    The second half (at least two evaluations): early points, still in the warm-up, rise faster than
    the rest of a run and would make the guess optimistic.
    """
    if run.pixels is None or not run.knn:
        return None
    for knn, images, wall in zip(run.knn, run.images, run.wall_s):
        if knn >= run.pixels:
            return Crossing(images, wall, measured=True)
    tail = slice(-max(2, len(run.knn) // 2), None)
    images = log_linear_crossing(run.images[tail], run.knn[tail], run.pixels)
    wall = log_linear_crossing(run.wall_s[tail], run.knn[tail], run.pixels)
    if images is None or wall is None:
        return None
    return Crossing(images, wall, measured=False)


def load_recipes(path: Path) -> list[Recipe]:
    """The ``recipes:`` list of a YAML file: ``{label: str, overrides: [str, ...]}`` each."""
    data = yaml.safe_load(path.read_text()) or {}
    recipes = []
    for i, item in enumerate(data.get("recipes") or []):
        if not isinstance(item, dict) or not isinstance(item.get("label"), str):
            raise ValueError(f"{path}: recipe {i} needs a label (and a list of overrides)")
        overrides = item.get("overrides") or []
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise ValueError(f"{path}: overrides of recipe {item['label']!r} must be a list of strings")
        recipes.append(Recipe(item["label"], overrides))
    if not recipes:
        raise ValueError(f"{path} lists no recipes")
    labels = [r.label for r in recipes]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{path}: recipe labels must be unique; got {labels}")
    return recipes


def slug(label: str) -> str:
    """A folder name for a label: ``BEiT v2`` -> ``beit_v2``."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") or "run"


def resolve(override: str, folders: dict[str, Path]) -> str:
    """Replace ``{run:<label>}`` with the run folder of that earlier recipe."""

    def folder(match: re.Match[str]) -> str:
        if match.group(1) not in folders:
            raise ValueError(f"override {override!r} refers to {match.group(1)!r}, not an earlier recipe")
        return str(folders[match.group(1)])

    return RUN_REF.sub(folder, override)


def command_of(overrides: list[str]) -> str:
    """The command as a reader would type it, earlier runs written ``<label run>``."""
    quoted = [shlex.quote(o) if " " in o else o for o in overrides]
    return " ".join(["python train.py", *(RUN_REF.sub(lambda m: f"<{m.group(1)} run>", o) for o in quoted)])


def run_recipes(recipes: list[Recipe], out: Path) -> list[Path]:
    """Train every recipe in turn (a failed one is reported and the next one still runs)."""
    folders: dict[str, Path] = {}
    for index, recipe in enumerate(recipes):
        folder = (out / "runs" / slug(recipe.label)).resolve()
        if folder.exists() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} already holds a run; choose another --out")
        overrides = [resolve(o, folders) for o in recipe.overrides]
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "train.py", *RUN_OVERRIDES, *overrides, f"hydra.run.dir={folder}"]
        print(f"[{index + 1}/{len(recipes)}] {recipe.label}: {command_of(recipe.overrides)}", flush=True)
        start = time.monotonic()
        with open(folder / "results_run.log", "w") as log:
            code = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
        note = "done" if code == 0 else f"FAILED (exit {code}; see {folder / 'results_run.log'})"
        print(f"    {note} in {time.monotonic() - start:.0f} s", flush=True)
        record = {"index": index, "label": recipe.label, "overrides": recipe.overrides, "returncode": code}
        (folder / RECIPE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        folders[recipe.label] = folder
    return list(folders.values())


def _float(row: dict[str, str], key: str) -> float | None:
    value = row.get(key) or ""
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def read_run(folder: Path) -> Run:
    """A run folder (ours or any train.py run) -> :class:`Run`."""
    record = json.loads((folder / RECIPE_FILE).read_text()) if (folder / RECIPE_FILE).is_file() else {}
    overrides = record.get("overrides")
    if overrides is None:  # a run made by hand: Hydra stored its command-line overrides
        stored = folder / ".hydra" / "overrides.yaml"
        overrides = (
            [o for o in yaml.safe_load(stored.read_text()) or [] if not o.startswith("hydra.")]
            if stored.is_file()
            else []
        )
    summary = folder / "summary.json"
    status = json.loads(summary.read_text()).get("status", "?") if summary.is_file() else "no summary.json"
    if record.get("returncode"):
        status = f"failed (exit {record['returncode']})"
    run = Run(record.get("label", folder.name), command_of(overrides), folder, status)
    metrics = folder / "csv" / "metrics.csv"
    if not metrics.is_file():
        return run
    with open(metrics, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        knn, wall, images = (
            _float(row, "val/knn_top1"),
            _float(row, "val/wall_s"),
            _float(row, "val/images_seen"),
        )
        init, pixels = _float(row, "val/knn_top1_init"), _float(row, "val/knn_top1_pixels")
        run.init = init if init is not None else run.init
        run.pixels = pixels if pixels is not None else run.pixels
        if knn is not None:
            run.knn.append(knn)
            run.wall_s.append(wall if wall is not None else math.nan)
            run.images.append(images if images is not None else math.nan)
        elif init is not None and run.start is None and wall is not None:
            run.start = (wall, images if images is not None else 0.0)
    return run


def expand(dirs: list[Path]) -> list[Path]:
    """Run folders: each given folder that holds a run, else the run folders directly inside it."""
    folders = []
    for d in dirs:
        if (d / "csv").is_dir() or (d / RECIPE_FILE).is_file() or (d / "summary.json").is_file():
            folders.append(d)
            continue
        inner = (
            [
                p
                for p in sorted(d.iterdir())
                if p.is_dir() and ((p / "csv").is_dir() or (p / RECIPE_FILE).is_file())
            ]
            if d.is_dir()
            else []
        )
        if not inner:
            raise FileNotFoundError(f"{d} is not a run folder (no csv/, summary.json) and holds none")
        folders += sorted(inner, key=lambda p: _index(p))
    return folders


def _index(folder: Path) -> float:
    try:
        return float(json.loads((folder / RECIPE_FILE).read_text())["index"])
    except (OSError, ValueError, KeyError):
        return math.inf


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _wall(runs_wall: list[float]) -> str:
    seconds = runs_wall[-1] if runs_wall and not math.isnan(runs_wall[-1]) else None
    if seconds is None:
        return "—"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _images(images: list[float]) -> str:
    return "—" if not images or math.isnan(images[-1]) else f"{images[-1]:,.0f}"


def _crossing(run: Run) -> str:
    crossing = pixels_crossing(run)
    if crossing is None:
        return "—"
    seconds = crossing.wall_s
    wall = (
        f"{seconds / 3600:.1f} h"
        if seconds >= 3600
        else f"{seconds / 60:.0f} min"
        if seconds >= 60
        else f"{seconds:.0f} s"
    )
    if crossing.measured:
        return f"{crossing.images:,.0f} images, {wall} (measured)"
    return f"~{crossing.images:,.0f} images, ~{wall} (extrapolated)"


def table(runs: list[Run]) -> str:
    """The markdown table: one row per run."""
    lines = [
        "| method | command | best k-NN | final k-NN | raw pixels | init | wall time | images seen | "
        "reaches pixels at |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        label = run.label if run.status == "completed" else f"{run.label} ({run.status})"
        lines.append(
            f"| {label} | `{run.command}` | {_pct(run.best)} | {_pct(run.final)} | {_pct(run.pixels)} | "
            f"{_pct(run.init)} | {_wall(run.wall_s)} | {_images(run.images)} | {_crossing(run)} |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: list[Run], path: Path) -> None:
    """Two panels: k-NN against wall-clock seconds and against images seen."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    curves = [run for run in runs if run.knn]
    for i, run in enumerate(curves):
        color = colors[i % len(colors)]
        for ax, xs in zip(axes, (run.wall_s, run.images)):
            points = [(x, y) for x, y in zip(xs, run.knn) if not math.isnan(x)]
            if run.start is not None and run.init is not None:  # the curve starts at the untrained net
                points.insert(0, (run.start[0] if ax is axes[0] else 0.0, run.init))
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, color=color, label=run.label)
            if run.init is not None:
                ax.axhline(run.init, color=color, linestyle="--", linewidth=0.8, label=f"{run.label} init")
    for value in sorted({run.pixels for run in runs if run.pixels is not None}):
        for ax in axes:
            ax.axhline(value, color="black", linestyle=":", linewidth=1.2, label=f"raw pixels {value:.2f}")
    axes[0].set_xlabel("wall-clock seconds since the start of fit")
    axes[1].set_xlabel("images seen (optimizer steps x global batch)")
    axes[0].set_ylabel("k-NN top-1 (%)")
    for ax, title in zip(axes, ("k-NN vs wall-clock time", "k-NN vs images seen")):
        ax.set_title(title)
        ax.grid(alpha=0.3)
    handles, labels = axes[1].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_docs(doc: Path, figure: Path, markdown: str) -> None:
    """Replace the text between the results markers of ``doc`` with the figure and the table."""
    text = doc.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{doc} needs one {BEGIN} ... {END} block for --write-docs")
    target = doc.parent / "figures" / "results_curves.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(figure, target)
    block = f"{BEGIN}\n![k-NN curves]({target.relative_to(doc.parent).as_posix()})\n\n{markdown}{END}"
    head, rest = text.split(BEGIN, 1)
    doc.write_text(head + block + rest.split(END, 1)[1])


def main(argv: list[str] | None = None) -> list[Run]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--recipes", type=Path, default=RECIPES, help="YAML list of recipes (label + overrides)"
    )
    parser.add_argument("--tiny", action="store_true", help="2 tiny recipes (vit_test on fake data, 6 steps)")
    parser.add_argument(
        "--from-runs", type=Path, nargs="+", metavar="DIR", help="read finished runs; no training"
    )
    parser.add_argument("--out", type=Path, help="output folder (default outputs/results/<date>_<time>)")
    parser.add_argument(
        "--write-docs", action="store_true", help=f"also rewrite the marked block of {DOCS.name}"
    )
    parser.add_argument("--docs", type=Path, default=DOCS, help="the page --write-docs rewrites")
    args = parser.parse_args(argv)
    out = args.out or REPO / "outputs" / "results" / time.strftime("%Y-%m-%d_%H-%M-%S")
    if args.from_runs:
        folders = expand(args.from_runs)
    else:
        recipes = TINY_RECIPES if args.tiny else load_recipes(args.recipes)
        folders = run_recipes(recipes, out)
    runs = [read_run(folder) for folder in folders]
    markdown = table(runs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(markdown)
    plot(runs, out / "curves.png")
    if args.write_docs:
        write_docs(args.docs, out / "curves.png", markdown)
    print(markdown)
    print(f"figure: {out / 'curves.png'}\ntable: {out / 'results.md'}")
    return runs


if __name__ == "__main__":
    failed = [run.label for run in main() if run.status != "completed"]
    sys.exit(1 if failed else 0)
