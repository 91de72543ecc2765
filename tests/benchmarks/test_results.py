"""`make results`: the tiny recipes train, and the figure and table come from their runs."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds `benchmarks`

from benchmarks import results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[results.Run]]:
    out = tmp_path_factory.mktemp("results")
    return out, results.main(["--tiny", "--out", str(out)])


def _rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")][1:]  # without the header
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]


def test_tiny_recipes_give_a_figure_and_a_table_of_their_runs(tiny: tuple[Path, list[results.Run]]) -> None:
    out, runs = tiny
    png = (out / "curves.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 20_000  # two panels with curves, not an empty canvas
    rows = _rows((out / "results.md").read_text())
    assert [row[0] for row in rows] == ["DINO", "iBOT"]
    for row, run in zip(rows, runs):
        summary = json.loads((run.folder / "summary.json").read_text())
        assert summary["status"] == "completed" and run.status == "completed"
        metrics = summary["metrics"]
        assert row[1].startswith("`python train.py backbone=vit_test") and "hydra.run.dir" not in row[1]
        assert ("method=ibot" in row[1]) == (run.label == "iBOT")
        best, final, pixels, init = (float(cell) for cell in row[2:6])
        assert len(run.knn) == 2  # one k-NN per epoch, 2 epochs
        assert final == pytest.approx(metrics["val/knn_top1"], abs=0.005) and best >= final
        assert pixels == pytest.approx(metrics["val/knn_top1_pixels"], abs=0.005)
        assert init == pytest.approx(metrics["val/knn_top1_init"], abs=0.005)
        assert re.fullmatch(r"\d+ s|\d+ min \d\d s", row[6])
        assert row[7] == "48"  # 2 epochs x 3 steps x data=fake's batch of 8
        assert run.images == [24.0, 48.0] and 0 < run.wall_s[0] < run.wall_s[1]
        assert run.start is not None and run.start[1] == 0.0  # the init point of the curve


def test_from_runs_rereads_without_training(tiny: tuple[Path, list[results.Run]], tmp_path: Path) -> None:
    out, runs = tiny
    again = results.main(["--from-runs", str(out / "runs"), "--out", str(tmp_path)])
    assert (tmp_path / "results.md").read_text() == (out / "results.md").read_text()
    assert [run.knn for run in again] == [run.knn for run in runs]
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_MAGIC)
    one = results.main(["--from-runs", str(runs[1].folder), "--out", str(tmp_path / "one")])
    assert [run.label for run in one] == ["iBOT"]


def test_write_docs_replaces_only_the_marked_block(
    tiny: tuple[Path, list[results.Run]], tmp_path: Path
) -> None:
    out, _ = tiny
    doc = tmp_path / "results.md"
    doc.write_text(f"# Results\n\nbefore\n\n{results.BEGIN}\nold\n{results.END}\n\nafter\n")
    results.main(
        ["--from-runs", str(out / "runs"), "--out", str(tmp_path / "o"), "--write-docs", "--docs", str(doc)]
    )
    text = doc.read_text()
    assert text.startswith("# Results\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "old" not in text
    assert "![k-NN curves](figures/results_curves.png)" in text
    assert (out / "results.md").read_text() in text
    assert (tmp_path / "figures" / "results_curves.png").read_bytes().startswith(PNG_MAGIC)
    doc.write_text("no markers\n")
    with pytest.raises(ValueError, match="results:begin"):
        results.write_docs(doc, out / "curves.png", "table\n")


def test_recipe_file_chains_refer_to_earlier_runs() -> None:
    recipes = results.load_recipes(results.RECIPES)
    assert recipes[0].label == "DINO" and recipes[0].overrides == []  # the default job
    folders: dict[str, Path] = {}
    for recipe in recipes:  # every {run:<label>} names a recipe above it
        resolved = [results.resolve(o, folders) for o in recipe.overrides]
        assert not any("{run:" in o for o in resolved)
        folders[recipe.label] = Path("/runs") / results.slug(recipe.label)
    assert folders["BEiT v2"] == Path("/runs/beit_v2")
    beitv2 = next(r for r in recipes if r.label == "BEiT v2")
    assert results.command_of(beitv2.overrides) == (
        "python train.py experiment=beitv2_vit_tiny7_fashion_mnist tokenizer.path=<VQ-KD run>/tokenizer.pt"
    )


def test_bad_recipes_are_one_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("recipes:\n  - overrides: [seed=1]\n")
    with pytest.raises(ValueError, match="recipe 0 needs a label"):
        results.load_recipes(path)
    path.write_text("recipes:\n  - {label: A}\n  - {label: A}\n")
    with pytest.raises(ValueError, match="unique"):
        results.load_recipes(path)
    with pytest.raises(ValueError, match="not an earlier recipe"):
        results.resolve("tokenizer.path={run:VQ-KD}/tokenizer.pt", {})
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        results.main(["--from-runs", str(tmp_path), "--out", str(tmp_path / "o")])


def test_log_linear_crossing_solves_the_fitted_line() -> None:
    # y = 50 + 10 ln(x / 1000) exactly: 80 is reached at x = 1000 e^3
    xs = [1000.0, 2000.0, 4000.0]
    ys = [50 + 10 * math.log(x / 1000) for x in xs]
    assert results.log_linear_crossing(xs, ys, 80.0) == pytest.approx(1000 * math.e**3, rel=1e-9)
    assert results.log_linear_crossing(xs, ys[::-1], 80.0) is None  # a falling curve never gets there
    assert results.log_linear_crossing([1000.0], [50.0], 80.0) is None


def test_pixels_crossing_is_measured_when_reached_else_extrapolated(tmp_path: Path) -> None:
    run = results.Run("x", "cmd", tmp_path, "completed", pixels=80.0)
    run.images, run.wall_s, run.knn = [100.0, 200.0, 400.0, 800.0], [10.0, 20.0, 40.0, 80.0], [60, 70, 75, 78]
    guess = results.pixels_crossing(run)
    assert guess is not None and not guess.measured
    assert 800 < guess.images < 3200 and 80 < guess.wall_s < 320  # from the second half only
    assert "(extrapolated)" in results.table([run])
    run.knn = [60, 81, 75, 78]
    assert results.pixels_crossing(run) == results.Crossing(200.0, 20.0, measured=True)
    assert "200 images, 20 s (measured)" in results.table([run])
