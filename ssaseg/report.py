"""Tables (Markdown + CSV) and plots (PNG) built from the runs' files.

Per (dataset, model, classifier): the mean mIoU over seeds with its sd, the per-seed values,
the difference to ``linear`` as a paired difference with 95 % intervals across seeds and across
test images (:mod:`ssaseg.report_analysis`, :mod:`ssaseg.statistics`; ``*`` marks an interval
that excludes zero), params, GFLOPs in the papers' convention (mmcv: one multiply-add = one FLOP,
attention matmuls not counted) and the full count, and latency with its conditions. When a
published-results CSV is given, our figure, the published one and the difference stand side by
side.

A report appears whole or not at all (:func:`write_report`): its files are assembled in a
temporary directory that replaces the report directory in one swap, so a report killed
mid-way never shows a summary.md beside an older summary.csv. Outputs whose content did not
change keep their file (same inode, same mtime: Snakemake sees nothing new), and nothing is
swapped when no output changed.

Paired latency (:func:`paired_latency_section`, ``paired_latency.csv``): per baseline, each
classifier's median latency from ``python -m ssaseg profile-latency`` (all classifiers timed in
one process, interleaved), the ratio to linear with its 95 % interval, the FLOP-floor ratio, the
paper's figure with its source, and one sentence per classifier on what the data shows. That
ratio, not the per-run latency of the main table (each run timed in its own job), is the result.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from pathlib import Path

import pandas as pd

from ssaseg import atomic_io
from ssaseg.config import ConfigError
from ssaseg.engine.train import TRAIN_LOG

EVAL_FILE = "eval.json"
PROFILE_FILE = "profile.json"
PAIRED_LATENCY_FILE = "paired_latency.json"  # = ssaseg.engine.paired_latency.RESULT_FILE

# The SSA paper's headline latency cost, used where a baseline has no published pair of
# latencies (linear and +SSA) of its own in the published-results CSV.
SSA_PAPER_LATENCY = (1.005, 1.02, "SSA-Seg (arXiv 2405.06525) headline: +0.5-2 % latency, V100, "
                     "512x512 (as quoted in issue #15)")
PAIRED_COLUMNS = ["dataset", "model", "classifier", "median_ms", "ratio", "low", "high",
                  "flops_ratio", "floor_verdict", "paper_ratio", "paper_source", "rounds",
                  "target_reached"]
PER_IMAGE_FILE = "per_image_counts.npz"  # ssaseg.engine.evaluate.PerImageCounts


def _unchanged(path: Path, data: bytes) -> bool:
    return path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data


def _keep(source: Path, dest: Path) -> None:
    """Put the existing file ``source`` into the new report unchanged (a hard link: same
    inode and mtime; a copy with its mtime where the file system has no hard links)."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def _write_file(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def write_report(out_dir: Path, outputs: dict[str, bytes]) -> list[Path]:
    """Make ``out_dir`` hold ``outputs`` (file name -> bytes), all of them or none: the new
    report is assembled beside it and swapped in (:func:`ssaseg.atomic_io.atomic_directory`).
    Other files already in ``out_dir`` are kept. Returns the files whose content changed."""
    out_dir = Path(out_dir)
    changed = [name for name, data in outputs.items() if not _unchanged(out_dir / name, data)]
    if not changed:
        return []
    real_dir = out_dir.resolve()  # a symlinked report directory is swapped where it lies
    existing = sorted(real_dir.iterdir()) if real_dir.is_dir() else []
    folders = [p.name for p in existing if p.is_dir()]
    if folders:
        raise ConfigError(
            f"report directory {out_dir} holds the folder(s) {folders}: a report directory is "
            "replaced as a whole and holds only files; choose another --out-dir (or reports_dir)"
        )
    with atomic_io.atomic_directory(real_dir) as tmp:
        for path in existing:
            stale_temporary = path.name.startswith(".") and path.name.endswith(".tmp")
            if path.name not in changed and not stale_temporary:
                _keep(path, tmp / path.name)
        for name in changed:
            _write_file(tmp / name, outputs[name])
    return [out_dir / name for name in changed]


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


def summarise(runs: pd.DataFrame, published: pd.DataFrame | None = None,
              differences: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean and sd over seeds per (dataset, model, classifier), with the per-seed mIoUs
    listed, and the paired difference to linear (``differences``: from
    :func:`ssaseg.report_analysis.paired_differences`)."""
    keys = ["dataset", "model", "classifier"]
    grouped = runs.sort_values("seed").groupby(keys, sort=False)
    table = grouped.agg(
        seeds=("seed", "count"), miou=("miou", "mean"), miou_sd=("miou", "std"),
        miou_per_seed=("miou", lambda s: " / ".join(f"{v:.2f}" for v in s)),
        params_m=("params_deployed_m", "first"), gflops_mmcv=("gflops_mmcv", "first"),
        gflops_full=("gflops_full", "first"), latency_ms=("latency_ms", "median"),
    ).reset_index()
    vs_linear = (differences[differences.reference == "linear"]
                 if differences is not None and len(differences) else None)
    if vs_linear is None:
        table["delta_vs_linear"] = math.nan
        table["delta_vs_linear_seeds"] = table["delta_vs_linear_images"] = "–"
    else:
        cols = {"delta_seeds": "delta_vs_linear", "delta_seeds_text": "delta_vs_linear_seeds",
                "delta_images_text": "delta_vs_linear_images"}
        table = table.merge(vs_linear[keys + list(cols)].rename(columns=cols), on=keys,
                            how="left")
        table[["delta_vs_linear_seeds", "delta_vs_linear_images"]] = table[
            ["delta_vs_linear_seeds", "delta_vs_linear_images"]].fillna("–")
    if published is not None and len(published):
        pub = published.rename(columns={"miou": "published_miou",
                                        "latency_ms": "published_latency_ms"})
        table = table.merge(pub[keys + ["published_miou", "published_latency_ms"]],
                            on=keys, how="left")
        table["miou_diff_vs_published"] = table["miou"] - table["published_miou"]
    return table


def _markdown(table: pd.DataFrame, conditions: list[str]) -> str:
    cols = {"dataset": "dataset", "model": "model", "classifier": "classifier",
            "miou": "mIoU (mean)", "miou_sd": "sd", "miou_per_seed": "mIoU per seed",
            "delta_vs_linear_seeds": "Δ vs linear (seeds)",
            "delta_vs_linear_images": "Δ vs linear (images)", "params_m": "params (M)",
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
        "mIoU in %, mean and sd over seeds. Δ vs linear: paired difference in points with its "
        "95 % interval, across seeds (t-interval) and across test images (paired BCa bootstrap "
        "of the per-image intersection/union counts, 2,000 resamples, seed 0); `*` = the "
        "interval excludes zero. Params: the parameters an inference pass uses "
        "(SSA's training-only teacher excluded, as the published tables count). GFLOPs (mmcv): the papers' convention, one multiply-add = one FLOP, "
        "attention matrix products not counted; GFLOPs (full): torch.utils.flop_counter, "
        "2 FLOPs per multiply-add, everything counted.",
        "Latency (ms) here: each run timed in its own job, so drift between jobs can exceed "
        "the difference between classifiers; the paired section below times them together.",
        "Latency conditions: " + "; ".join(sorted(set(conditions))) + ".",
    ]
    return "\n".join(lines + notes) + "\n"


def _paper_figure(dataset: str, model: str, classifier: str,
                  published: pd.DataFrame | None) -> tuple[str, str, tuple[float, float] | None]:
    """(the published latency ratio to linear as text, its source, its numeric range) for one
    classifier."""
    if classifier == "linear":
        return "1", "baseline", None
    if published is not None and "latency_ms" in published:
        rows = published[(published.dataset == dataset) & (published.model == model)]
        lat = dict(zip(rows.classifier, rows.latency_ms))
        base, ours = lat.get("linear", math.nan), lat.get(classifier, math.nan)
        if base == base and ours == ours:
            source = rows[rows.classifier == classifier].source.iloc[0]
            return (f"{ours / base:.3f} ({ours:g} / {base:g} ms)", str(source),
                    (ours / base, ours / base))
    if classifier == "ssa":
        low, high, source = SSA_PAPER_LATENCY
        return f"{low:.3f}-{high:.3f}", source, (low, high)
    return "–", "not published here (no latency pair in the published-results CSV)", None


def _sentence(model: str, classifier: str, e: dict, target_reached: bool,
              paper: tuple[float, float] | None = None) -> str:
    """What one paired ratio shows, whichever way it falls."""
    pct = 100 * (e["ratio"] - 1)
    interval = f"{100 * (e['low'] - 1):+.1f} % to {100 * (e['high'] - 1):+.1f} %"
    floor = 100 * (e["flops_ratio"] - 1)
    if e["low"] > 1:
        cost = f"{classifier} is slower than linear on {model}: {pct:+.1f} % ({interval})"
    elif e["high"] < 1:
        cost = f"{classifier} is faster than linear on {model}: {pct:+.1f} % ({interval})"
    else:
        cost = (f"{classifier} and linear on {model} are not distinguishable: {pct:+.1f} % "
                f"({interval})")
    verdict = {
        "above": f"above its FLOP floor ({floor:+.1f} % FLOPs): overhead beyond arithmetic "
                 "that an implementation could remove",
        "below": f"below its FLOP floor ({floor:+.1f} % FLOPs): its extra FLOPs cost less "
                 "time than the model's average FLOP",
        "at": f"consistent with its FLOP floor ({floor:+.1f} % FLOPs)",
    }[e["floor_verdict"]]
    caveat = "" if target_reached else " (the interval target was NOT reached)"
    versus = ""
    if paper is not None:
        lo, hi = paper
        figure = f"x{lo:.3f}" if lo == hi else f"x{lo:.3f}-{hi:.3f}"
        if e["low"] > hi:
            versus = f"; more than the paper's {figure} (GPU)"
        elif e["high"] < lo:
            versus = f"; less than the paper's {figure} (GPU)"
        else:
            versus = f"; consistent with the paper's {figure} (GPU)"
    return f"{cost}, {verdict}{versus}{caveat}."


def paired_latency_table(results: list[dict],
                         published: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (baseline, classifier) of the paired-latency results."""
    rows = []
    for result in results:
        run = result["run"]
        for clf, e in result["classifiers"].items():
            paper, source, _ = _paper_figure(run["dataset"], run["model"], clf, published)
            rows.append({"dataset": run["dataset"], "model": run["model"], "classifier": clf,
                         **{k: e[k] for k in ("median_ms", "ratio", "low", "high",
                                              "flops_ratio", "floor_verdict")},
                         "paper_ratio": paper, "paper_source": source,
                         "rounds": result["rounds"], "target_reached": result["target_reached"]})
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def paired_latency_section(results: list[dict], published: pd.DataFrame | None = None) -> str:
    """The Markdown section of the paired latencies (empty when there are none)."""
    if not results:
        return ""
    table = paired_latency_table(results, published)
    lines = ["", "## Paired latency (ratio to linear)", "",
             "| dataset | model | classifier | latency (ms, median) | ratio to linear [95 % CI] "
             "| FLOP floor | vs floor | paper | paper source |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        ratio = ("1 (baseline)" if r.classifier == "linear"
                 else f"{r.ratio:.4f} [{r.low:.4f}, {r.high:.4f}]")
        verdict = "–" if r.classifier == "linear" else r.floor_verdict
        lines.append(f"| {r.dataset} | {r.model} | {r.classifier} | {r.median_ms:.2f} | {ratio} "
                     f"| {r.flops_ratio:.4f} | {verdict} | {r.paper_ratio} | {r.paper_source} |")
    lines.append("")
    for result in results:
        run = result["run"]
        for clf, e in result["classifiers"].items():
            if clf != "linear":
                paper = _paper_figure(run["dataset"], run["model"], clf, published)[2]
                sentence = _sentence(run["model"], clf, e, result["target_reached"], paper)
                lines.append(f"- {sentence}")
    lines.append("")
    conditions = []
    for result in results:
        c, run = result["conditions"], result["run"]
        conditions.append(
            f"{run['dataset']}/{run['model']}: batch {c['batch_size']}, "
            f"{c['input_size'][0]}x{c['input_size'][1]}, {c['precision']}, {c['device']}, "
            f"{run['weights']} weights, warm-up {c['warmup_rounds']} rounds, {c['rounds']} "
            f"rounds ({result['stop_reason']}; target +-{100 * result['target_half_width']:g} % "
            f"{'reached' if result['target_reached'] else 'NOT reached'}), {c['date']}"
            + (f", load average {c['load_average'][0]:.1f} -> {c['load_average'][1]:.1f}"
               if c.get("load_average") else ""))
    lines += [
        "All classifiers of a baseline timed in one process, one pass each per round in a "
        "seeded shuffled order; ratio = median of the per-round ratios, 95 % BCa bootstrap "
        "interval over rounds. FLOP floor: full-count FLOPs ratio (torch.utils.flop_counter); "
        "'above' = the whole interval lies above it. Conditions: " + "; ".join(conditions) + ".",
    ]
    return "\n".join(lines) + "\n"


def plot_latency(table: pd.DataFrame,
                 paired: pd.DataFrame | None = None) -> tuple[list[float], str]:
    """Each summary row's latency for the plot, and the axis label saying what it is: the
    baseline's paired median where it was measured, the run's own job's median elsewhere."""
    paired_ms = {} if paired is None else {
        (r.dataset, r.model, r.classifier): r.median_ms for r in paired.itertuples()}
    keys = list(zip(table.dataset, table.model, table.classifier))
    latency = [paired_ms.get(key, ms) for key, ms in zip(keys, table.latency_ms)]
    found = sum(key in paired_ms for key in keys)
    if found and found == len(keys):
        return latency, "latency (ms, paired median: each baseline's classifiers timed together)"
    if found:
        return latency, "latency (ms; paired median where measured, else the run's own median)"
    return latency, "latency (ms, median of each run's own job)"


def _plots(runs: pd.DataFrame, table: pd.DataFrame,
           paired: pd.DataFrame | None = None) -> dict[str, bytes]:
    """The mIoU-latency plot takes a baseline's paired latency where it was measured (its
    classifiers timed together), the per-run latency elsewhere; the axis says which."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latency, xlabel = plot_latency(table, paired)
    table = table.assign(plot_latency_ms=latency)
    images = {}
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for clf, group in table.groupby("classifier"):
        ax.scatter(group.plot_latency_ms, group.miou, label=clf)
        for row in group.itertuples():
            ax.annotate(row.model, (row.plot_latency_ms, row.miou), fontsize=7)
    ax.set_xlabel(xlabel)
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


def build_report(run_dirs: list[Path], out_dir: Path, published_csv: Path | None = None,
                 paired_files: list[Path] = (),
                 train_pixels: dict[str, list[int]] | None = None,
                 settings: dict[str, dict] | None = None) -> list[Path]:
    """Write summary.md, summary.csv, runs.csv, paired_latency.csv, the plots and the
    statistical sections (:mod:`ssaseg.report_analysis`); returns the files that changed.
    ``paired_files``: the ``paired_latency.json`` of every baseline; ``train_pixels``: dataset
    -> training pixels per class, for the split by class frequency; ``settings``: classifier
    name -> its params, shown in the ablation table."""
    from ssaseg.report_analysis import analysis_outputs, paired_differences

    runs = collect([Path(d) for d in run_dirs])
    published = pd.read_csv(published_csv) if published_csv else None
    differences = paired_differences(runs)
    table = summarise(runs, published, differences)
    analysis_md, analysis_files = analysis_outputs(runs, train_pixels, differences=differences,
                                                   settings=settings)
    paired = [json.loads(Path(p).read_text()) for p in paired_files]
    paired_table = paired_latency_table(paired, published)
    outputs = {
        "summary.md": (_markdown(table, runs.latency_conditions.tolist())
                       + paired_latency_section(paired, published) + "\n"
                       + analysis_md).encode(),
        **analysis_files,
        "paired_latency.csv": paired_table.to_csv(
            index=False, float_format="%.5f").encode(),
        "summary.csv": table.to_csv(index=False, float_format="%.4f").encode(),
        "runs.csv": runs.drop(columns=["run_dir"]).to_csv(index=False, float_format="%.4f").encode(),
        **_plots(runs, table, paired_table),
    }
    return write_report(out_dir, outputs)
