"""Tables (Markdown + CSV) and plots (PNG) built from the runs' files.

Per (dataset, model, classifier): the median mIoU over seeds (as the SSA paper reports), the
per-seed values, params, GFLOPs in the papers' convention (mmcv: one multiply-add = one FLOP,
attention matmuls not counted) and the full count, and latency with its conditions. When a
published-results CSV is given, our figure, the published one and the difference stand side by
side. Outputs are rewritten only when their content changes.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pandas as pd

from ssaseg import atomic_io
from ssaseg.engine.train import TRAIN_LOG

EVAL_FILE = "eval.json"
PROFILE_FILE = "profile.json"


def _write_if_changed(path: Path, data: bytes) -> bool:
    if path.is_file() and path.read_bytes() == data:
        return False
    atomic_io.write_bytes(path, data)
    return True


def collect(run_dirs: list[Path]) -> pd.DataFrame:
    """One row per run: identifiers, mIoU, pixel accuracy, params, FLOPs, latency."""
    rows = []
    for run_dir in run_dirs:
        ev = json.loads((run_dir / EVAL_FILE).read_text())
        pr = json.loads((run_dir / PROFILE_FILE).read_text())
        rows.append({
            **ev["run"],
            "miou": 100 * ev["miou"], "pixel_accuracy": 100 * ev["pixel_accuracy"],
            "params_m": pr["params_total"] / 1e6,
            "params_deployed_m": pr["params_deployed"] / 1e6,
            "gflops_mmcv": pr["flops_mmcv"] / 1e9,
            "gflops_full": pr["flops_full"] / 1e9,
            "latency_ms": pr["latency_ms_median"],
            "latency_conditions": _conditions(pr["conditions"]),
            "run_dir": str(run_dir),
        })
    return pd.DataFrame(rows)


def _conditions(c: dict) -> str:
    return (f"batch {c['batch_size']}, {c['input_size'][0]}x{c['input_size'][1]}, {c['precision']}, "
            f"{c['device']}, warm-up {c['warmup']}, median of {c['repeats']}")


def summarise(runs: pd.DataFrame, published: pd.DataFrame | None = None) -> pd.DataFrame:
    """Median over seeds per (dataset, model, classifier), with the per-seed mIoUs listed."""
    keys = ["dataset", "model", "classifier"]
    grouped = runs.sort_values("seed").groupby(keys, sort=False)
    table = grouped.agg(
        seeds=("seed", "count"), miou=("miou", "median"),
        miou_per_seed=("miou", lambda s: " / ".join(f"{v:.2f}" for v in s)),
        params_m=("params_deployed_m", "first"), gflops_mmcv=("gflops_mmcv", "first"),
        gflops_full=("gflops_full", "first"), latency_ms=("latency_ms", "median"),
    ).reset_index()
    linear = table[table.classifier == "linear"].set_index(["dataset", "model"])["miou"]
    table["delta_vs_linear"] = [
        row.miou - linear.get((row.dataset, row.model), math.nan) for row in table.itertuples()
    ]
    if published is not None and len(published):
        pub = published.rename(columns={"miou": "published_miou",
                                        "latency_ms": "published_latency_ms"})
        table = table.merge(pub[keys + ["published_miou", "published_latency_ms"]],
                            on=keys, how="left")
        table["miou_diff_vs_published"] = table["miou"] - table["published_miou"]
    return table


def _markdown(table: pd.DataFrame, conditions: list[str]) -> str:
    cols = {"dataset": "dataset", "model": "model", "classifier": "classifier",
            "miou": "mIoU (median)", "miou_per_seed": "mIoU per seed",
            "delta_vs_linear": "Δ vs linear", "params_m": "params (M)",
            "gflops_mmcv": "GFLOPs (mmcv)", "gflops_full": "GFLOPs (full)",
            "latency_ms": "latency (ms)"}
    if "published_miou" in table:
        cols.update(published_miou="published mIoU", miou_diff_vs_published="Δ vs published")
    shown = table[[c for c in cols if c in table]].rename(columns=cols)
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    for row in shown.itertuples(index=False):
        cells = [f"{v:.2f}" if isinstance(v, float) and not math.isnan(v) else
                 ("–" if isinstance(v, float) else str(v)) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "",
        "mIoU in %, median over seeds. Params: the parameters an inference pass uses "
        "(SSA's training-only teacher excluded, as the published tables count). GFLOPs (mmcv): the papers' convention, one multiply-add = one FLOP, "
        "attention matrix products not counted; GFLOPs (full): torch.utils.flop_counter, "
        "2 FLOPs per multiply-add, everything counted.",
        "Latency conditions: " + "; ".join(sorted(set(conditions))) + ".",
    ]
    return "\n".join(lines + notes) + "\n"


def _plots(runs: pd.DataFrame, table: pd.DataFrame) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = {}
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for clf, group in table.groupby("classifier"):
        ax.scatter(group.latency_ms, group.miou, label=clf)
        for row in group.itertuples():
            ax.annotate(row.model, (row.latency_ms, row.miou), fontsize=7)
    ax.set_xlabel("latency (ms, median)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("mIoU vs latency")
    ax.legend()
    images["miou_vs_latency.png"] = _png(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in runs.itertuples():
        log = pd.read_csv(Path(row.run_dir) / TRAIN_LOG)
        smooth = log["loss"].rolling(10, min_periods=1).mean()
        ax.plot(log["iter"], smooth, label=f"{row.model}/{row.classifier}/s{row.seed}", lw=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss (running mean of 10)")
    ax.set_yscale("log")
    ax.legend(fontsize=6)
    ax.set_title("training loss")
    images["loss_curves.png"] = _png(fig)
    plt.close("all")
    return images


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return buf.getvalue()


def build_report(run_dirs: list[Path], out_dir: Path, published_csv: Path | None = None) -> list[Path]:
    """Write summary.md, summary.csv, runs.csv and the plots; returns the files that changed."""
    runs = collect([Path(d) for d in run_dirs])
    published = pd.read_csv(published_csv) if published_csv else None
    table = summarise(runs, published)
    outputs = {
        "summary.md": _markdown(table, runs.latency_conditions.tolist()).encode(),
        "summary.csv": table.to_csv(index=False, float_format="%.4f").encode(),
        "runs.csv": runs.drop(columns=["run_dir"]).to_csv(index=False, float_format="%.4f").encode(),
        **_plots(runs, table),
    }
    return [out_dir / name for name, data in outputs.items() if _write_if_changed(out_dir / name, data)]
