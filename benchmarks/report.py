"""Benchmark tables (docs/benchmarks.md) from the JSON that ``benchmarks/device_check.sh`` writes.

    python -m benchmarks.report outputs/bench                    # print the markdown
    python -m benchmarks.report outputs/bench --readme docs/benchmarks.md  # rewrite its marked blocks

Every figure comes from the JSON; beside them stand the reference implementations' figures and our
targets (one H100, the same protocol; docs/benchmarks.md).
A marked block is the text between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

# The reference implementations: (who, img/s, peak GiB) per (method, arch) at batch 128.
REFERENCES = {
    ("dinov2", "vit_small"): ("official DINOv2 code", 698, 33.3),
    ("dinov2", "vit_base"): ("official DINOv2 code", 367, 54.9),
    ("dino", "vit_small"): ("SSL library's DINO", 918, 21.6),
    ("dino", "vit_base"): ("SSL library's DINO", 447, 41.2),
}
# Our targets: images/s, MFU against 800 TFLOP/s, and memory at most the
# official DINOv2 code's (its figures above).
TARGET_IMG_S = {("dinov2", "vit_base"): 607, ("dinov2", "vit_small"): 1400, ("dino", "vit_small"): 1800}
TARGET_MFU_800 = {("dinov2", "vit_base"): 0.45}
MEMORY_CAP_FROM = "official DINOv2 code"
# Said under the step table when the figures come from another GPU than the references' (NVIDIA's specs).
DIFFERENT_GPU_NOTE = {
    "H200": "an H200 has the H100's bf16 peak but 1.4x its memory bandwidth (4.8 vs 3.35 TB/s), "
    "which favours memory-bound work",
}
# Labels that benchmarks.step.suite_specs gives the table rows (the rest are speed-switch rows).
TABLE_LABEL = re.compile(r"^\w+ ViT-\w+/\d+ (optimised|baseline)(, packed crops)?$")
LOADER_FILES = {
    "data.json": "the recipe in the workers, uint8 crops normalised on the device (default)",
    "data_photometric.json": "`data.transform.device_stage=photometric`",
    "data_crops.json": "`data.transform.device_stage=crops`",
}


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def target_verdict(row: dict[str, Any]) -> str:
    """'met' / 'missed' against every target of the row's (method, arch); '' where it has none."""
    key = (row["method"], row["arch"])
    checks = []
    if key in TARGET_IMG_S:
        checks.append((row["img_per_s"] >= TARGET_IMG_S[key], f"≥ {TARGET_IMG_S[key]:,} img/s"))
    if key in TARGET_MFU_800 and row.get("mfu_protocol_800") is not None:
        checks.append(
            (row["mfu_protocol_800"] >= TARGET_MFU_800[key], f"MFU@800 ≥ {TARGET_MFU_800[key]:.0%}")
        )
    reference = REFERENCES.get(key)
    if key in TARGET_IMG_S and reference and reference[0] == MEMORY_CAP_FROM and row.get("peak_mem_gib"):
        checks.append((row["peak_mem_gib"] <= reference[2], f"≤ {reference[2]} GiB"))
    if not checks:
        return ""
    met = [what for ok, what in checks if ok]
    missed = [what for ok, what in checks if not ok]
    return "; ".join(
        ([f"met {', '.join(met)}"] if met else []) + ([f"missed {', '.join(missed)}"] if missed else [])
    )


def step_table(rows: list[dict[str, Any]], with_targets: bool) -> str:
    """The timed rows; ``with_targets`` adds the reference implementation and the target verdict."""
    header = ["run", "img/s", "ms/step", "MFU", "MFU@800", "peak GiB"]
    header += ["reference img/s (peak GiB)", "target"] if with_targets else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | {r['error']} |")
            continue
        cells = [r["label"], _num(r["img_per_s"], ",.0f"), _num(r["ms_per_step"], ".1f"),
                 _num(r["mfu"], ".1%"), _num(r.get("mfu_protocol_800"), ".1%"),
                 _num(r.get("peak_mem_gib"), ".1f")]  # fmt: skip
        if with_targets:
            reference = REFERENCES.get((r["method"], r["arch"]))
            cells.append(f"{reference[1]:,} ({reference[2]}), {reference[0]}" if reference else "")
            cells.append(target_verdict(r) if "optimised" in r["label"] else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def loader_table(reports: dict[str, dict[str, Any]]) -> str:
    workers = sorted({r["workers"] for report in reports.values() for r in report["rows"]})
    header = ["loader", *(f"{w} workers img/s" for w in workers), "MB/batch, copy ms",
              "device stage ms/batch (img/s)"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, report in reports.items():
        by_workers = {r["workers"]: r["img_per_s"] for r in report["rows"]}
        stage = report.get("device_ops")
        stage_cell = (
            f"{stage['ms_per_batch']:.1f} ({stage['img_per_s']:,.0f}), {stage['device']}" if stage else "—"
        )
        transfer = report.get("transfer")
        copy = "—" if not transfer else f"{transfer['mb_per_batch']:.0f}, {_num(transfer['copy_ms'], '.2f')}"
        if transfer and "mb_per_batch_float32_crops" in transfer:  # what float32 crops would have cost
            floats = _num(transfer["copy_ms_float32_crops"], ".2f")
            copy += f" (float32 crops: {transfer['mb_per_batch_float32_crops']:.0f}, {floats})"
        cells = [LOADER_FILES.get(name, name), *(_num(by_workers.get(w), ",.0f") for w in workers), copy]
        cells.append(stage_cell)
        lines.append("| " + " | ".join(cells) + " |")
    first = next(iter(reports.values()))
    lines.append(
        f"\n{first['folder']} ({first['images_in_folder']} read), batch {first['batch']}, crops "
        f"{first['crops']}, masks of {first['method']}; img/s after the first batch."
    )
    return "\n".join(lines)


def blocks(folder: Path) -> dict[str, str]:
    """The markdown of each marked block that the folder's JSON files can fill."""
    out: dict[str, str] = {}
    step_file = folder / "step.json"
    if step_file.exists():
        report = json.loads(step_file.read_text())
        rows = report["rows"]
        device = f"{report['device']}, torch {report['torch']}"
        libraries = {
            k: v for k, v in report.get("versions", {}).items() if k not in ("torch", "python") and v
        }
        device += "".join(f", {name} {version}" for name, version in libraries.items())
        device += f", measured matmul peak {report['peak_tflops_measured']:.3g} TFLOP/s"
        device += " (bf16 on a GPU, fp32 on the CPU)"
        if "H100" not in report["device"]:
            note = next((text for gpu, text in DIFFERENT_GPU_NOTE.items() if gpu in report["device"]), "")
            device += ". The references were measured on an H100" + (f"; {note}" if note else "")
        out["step"] = device + "\n\n" + step_table([r for r in rows if TABLE_LABEL.match(r["label"])], True)
        switches = [r for r in rows if not TABLE_LABEL.match(r["label"])]
        if switches:
            out["switches"] = device + "\n\n" + step_table(switches, False)
    loaders = {n: json.loads((folder / n).read_text()) for n in LOADER_FILES if (folder / n).exists()}
    if loaders:
        out["loader"] = loader_table(loaders)
    return out


def rewrite_blocks(text: str, new: dict[str, str]) -> str:
    """Replace each ``<!-- bench:NAME -->`` ... ``<!-- /bench:NAME -->`` block named in ``new``."""
    for name, body in new.items():
        pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"the document has no block <!-- bench:{name} --> ... <!-- /bench:{name} -->")
        text = pattern.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> dict[str, str]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="where device_check.sh wrote step.json and data*.json")
    p.add_argument("--readme", type=Path, default=None, help="rewrite this file's bench blocks")
    args = p.parse_args(argv)
    if not args.folder.is_dir():
        raise SystemExit(f"no such folder: {args.folder}")
    new = blocks(args.folder)
    if not new:
        raise SystemExit(f"{args.folder} holds none of step.json, {', '.join(LOADER_FILES)}")
    for name, body in new.items():
        print(f"<!-- bench:{name} -->\n{body}\n")
    if args.readme:
        args.readme.write_text(rewrite_blocks(args.readme.read_text(), new))
    return new


if __name__ == "__main__":
    main()
