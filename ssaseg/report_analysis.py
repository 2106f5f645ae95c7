"""The report's statistical sections: every classifier against ``linear`` (and every SSA
variant against ``ssa``) as a paired difference with 95 % intervals (:mod:`ssaseg.statistics`),
the per-class delta IoU, and the delta split by class frequency.

Each function takes the runs table of :func:`ssaseg.report.collect` (one row per run, with its
``run_dir``) and returns a table or a plot; :func:`ssaseg.report.build_report` puts them in the
report. A run without ``per_image_counts.npz`` (evaluated before that file existed) still gets
its seed interval; its image interval is left empty.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ssaseg.config import classifier_kind
from ssaseg.engine.train import TRAIN_COST_FILE
from ssaseg.report import EVAL_FILE, PER_IMAGE_FILE, PROFILE_FILE, _png
from ssaseg.statistics import Difference, frequency_groups, image_bootstrap, seed_difference

BASELINE = "linear"
CONTROL = "linear_control"
KEYS = ["dataset", "model"]


def _counts(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray] | None:
    path = Path(run_dir) / PER_IMAGE_FILE
    if not path.is_file():
        return None
    with np.load(path) as data:
        return data["intersection"], data["union"]


def _per_class_iou(run_dir: str | Path) -> tuple[list[str], np.ndarray]:
    ev = json.loads((Path(run_dir) / EVAL_FILE).read_text())
    names = [row["class"] for row in ev.get("per_class", [])]
    values = np.array([row["iou"] if row["iou"] is not None else math.nan
                       for row in ev.get("per_class", [])], dtype=np.float64)
    return names, values


def compare(a: pd.DataFrame, b: pd.DataFrame, classes: np.ndarray | None = None,
            n_resamples: int = 2000) -> tuple[Difference, Difference]:
    """b - a in mIoU points: across the seeds both have (t-interval) and across test images
    (paired bootstrap over the seeds both have, each with per-image counts). ``a``/``b``: run
    rows of one classifier each; ``classes`` (K,) bool restricts the mIoU to those classes."""
    seeds = sorted(set(a.seed) & set(b.seed))
    a, b = a.set_index("seed").loc[seeds], b.set_index("seed").loc[seeds]
    if classes is None:
        by_seed = seed_difference(a.miou.to_dict(), b.miou.to_dict())
    else:
        def group_miou(rows):
            return {s: 100 * float(np.nanmean(np.where(classes, _per_class_iou(d)[1], np.nan)))
                    for s, d in rows.run_dir.items()}
        by_seed = seed_difference(group_miou(a), group_miou(b))
    pairs = [(_counts(a.run_dir[s]), _counts(b.run_dir[s])) for s in seeds]
    pairs = [(ca, cb) for ca, cb in pairs if ca is not None and cb is not None]
    if not pairs or len({ca[0].shape for ca, _ in pairs} | {cb[0].shape for _, cb in pairs}) != 1:
        by_image = Difference(math.nan, math.nan, math.nan, 0, "images: no per-image counts")
    else:
        stack = [np.stack([p[i][j] for p in pairs]) for i in (0, 1) for j in (0, 1)]
        by_image = image_bootstrap(*stack, classes=classes, n_resamples=n_resamples)
    return by_seed, by_image


def comparisons(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """(reference, classifier) pairs to report: every classifier against linear; every variant
    (``<kind>-<label>``) also against its kind when that ran."""
    names = list(dict.fromkeys(runs.classifier))
    pairs = [(BASELINE, c) for c in names if c != BASELINE and BASELINE in names]
    pairs += [(classifier_kind(c), c) for c in names
              if "-" in c and classifier_kind(c) in names and classifier_kind(c) != BASELINE]
    if CONTROL in names and "ssa" in names:  # SSA against the capacity-matched control
        pairs.append((CONTROL, "ssa"))
    return pairs


def paired_differences(runs: pd.DataFrame, n_resamples: int = 2000) -> pd.DataFrame:
    """One row per (dataset, model, reference, classifier): the seed and image intervals."""
    rows = []
    for (dataset, model), group in runs.groupby(KEYS, sort=False):
        for reference, name in comparisons(group):
            a, b = group[group.classifier == reference], group[group.classifier == name]
            if a.empty or b.empty:
                continue
            by_seed, by_image = compare(a, b, n_resamples=n_resamples)
            rows.append({"dataset": dataset, "model": model, "reference": reference,
                         "classifier": name, **_columns(by_seed, by_image)})
    return pd.DataFrame(rows)


def _columns(by_seed: Difference, by_image: Difference) -> dict:
    return {
        "delta_seeds": by_seed.estimate, "delta_seeds_low": by_seed.low,
        "delta_seeds_high": by_seed.high, "delta_seeds_sd": by_seed.sd, "seeds": by_seed.n,
        "delta_seeds_excludes_zero": by_seed.excludes_zero,
        "delta_images": by_image.estimate, "delta_images_low": by_image.low,
        "delta_images_high": by_image.high, "images": by_image.n,
        "delta_images_excludes_zero": by_image.excludes_zero,
        "delta_seeds_text": by_seed.format(), "delta_images_text": by_image.format(),
    }


def per_class_deltas(runs: pd.DataFrame) -> pd.DataFrame:
    """Per class: seed-mean IoU of each non-linear kind (ssa, protoseg) minus linear's, in
    points; one row per (dataset, model, classifier, class)."""
    rows = []
    for (dataset, model), group in runs.groupby(KEYS, sort=False):
        if BASELINE not in set(group.classifier):
            continue

        def mean_iou(name):
            per_run = [_per_class_iou(d) for d in group[group.classifier == name].run_dir]
            return per_run[0][0], 100 * np.nanmean(np.stack([v for _, v in per_run]), axis=0)

        classes, base = mean_iou(BASELINE)
        for name in dict.fromkeys(group.classifier):
            if name == BASELINE or "-" in name:
                continue
            _, other = mean_iou(name)
            rows += [{"dataset": dataset, "model": model, "classifier": name, "class": c,
                      "iou_linear": lo, "iou": hi, "delta_iou": hi - lo}
                     for c, lo, hi in zip(classes, base, other)]
    return pd.DataFrame(rows)


def frequency_split(runs: pd.DataFrame, train_pixels: dict[str, list[int]],
                    n_resamples: int = 2000) -> pd.DataFrame:
    """Δ mIoU vs linear over the frequent / common / rare classes (thirds of the classes by
    their share of the training pixels), with both intervals."""
    rows = []
    for (dataset, model), group in runs.groupby(KEYS, sort=False):
        if dataset not in train_pixels or BASELINE not in set(group.classifier):
            continue
        pixels = np.asarray(train_pixels[dataset], dtype=np.float64)
        share = pixels / max(pixels.sum(), 1)
        groups = frequency_groups(pixels)
        for name in dict.fromkeys(group.classifier):
            if name == BASELINE or "-" in name:
                continue
            for label, mask in groups.items():
                by_seed, by_image = compare(group[group.classifier == BASELINE],
                                            group[group.classifier == name], classes=mask,
                                            n_resamples=n_resamples)
                rows.append({"dataset": dataset, "model": model, "classifier": name,
                             "classes": label, "num_classes": int(mask.sum()),
                             "train_pixel_share": 100 * float(share[mask].sum()),
                             **_columns(by_seed, by_image)})
    return pd.DataFrame(rows)


def markdown_differences(diffs: pd.DataFrame, freq: pd.DataFrame) -> str:
    """The report's section on paired differences (Markdown)."""
    lines = ["## Paired differences (mIoU points, 95 % intervals)", "",
             "Δ = classifier - reference. Seeds: mean over the seeds both ran [t-interval]; "
             "images: mean over seeds, paired BCa bootstrap over the test images' per-image "
             "intersection and union counts [2,000 resamples, seed 0]. `*` = the interval "
             "excludes zero.", ""]
    if diffs.empty:
        return "\n".join(lines + ["(no pair of classifiers on the same dataset and model)", ""])
    lines += ["| dataset | model | classifier | vs | seeds | Δ (seeds) | sd | Δ (images) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in diffs.itertuples():
        sd = f"{r.delta_seeds_sd:.2f}" if not math.isnan(r.delta_seeds_sd) else "–"
        lines.append(f"| {r.dataset} | {r.model} | {r.classifier} | {r.reference} | {r.seeds} "
                     f"| {r.delta_seeds_text} | {sd} | {r.delta_images_text} |")
    if not freq.empty:
        lines += ["", "### Δ vs linear by class frequency", "",
                  "Classes split into thirds by their share of the training pixels.", "",
                  "| dataset | model | classifier | classes | n | train pixels (%) | Δ (seeds) "
                  "| Δ (images) |", "|---|---|---|---|---|---|---|---|"]
        for r in freq.itertuples():
            lines.append(f"| {r.dataset} | {r.model} | {r.classifier} | {r.classes} | "
                         f"{r.num_classes} | {r.train_pixel_share:.1f} | {r.delta_seeds_text} "
                         f"| {r.delta_images_text} |")
    return "\n".join(lines) + "\n"


def per_class_plot(deltas: pd.DataFrame) -> bytes:
    """Per-class Δ IoU vs linear, sorted, one panel per (dataset, model, classifier)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (list(deltas.groupby(["dataset", "model", "classifier"], sort=False))
              if not deltas.empty else []) or [None]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.6 * len(panels)), squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        if panel is None:
            ax.set_title("no classifier to compare with linear")
            continue
        (dataset, model, name), rows = panel
        undefined = rows[rows.delta_iou.isna()]["class"].tolist()  # no IoU for one of the two
        rows = rows.dropna(subset=["delta_iou"]).sort_values("delta_iou")
        colours = ["tab:green" if v > 0 else "tab:red" for v in rows.delta_iou]
        ax.bar(range(len(rows)), rows.delta_iou, color=colours)
        ax.set_xticks(range(len(rows)), rows["class"], rotation=60, fontsize=6, ha="right")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_ylabel("Δ IoU (points)")
        ax.set_title(f"{name} - linear, {dataset} / {model} (mean over seeds)"
                     + (f"; no IoU: {', '.join(undefined)}" if undefined else ""), fontsize=9)
    data = _png(fig)
    plt.close(fig)
    return data


def ablation_table(runs: pd.DataFrame, diffs: pd.DataFrame,
                   settings: dict[str, dict] | None = None) -> pd.DataFrame:
    """Controls and ablations: linear, the capacity control, SSA and every SSA variant, each
    with its mean mIoU, Δ vs ssa and Δ vs linear (both intervals)."""
    settings = settings or {}
    rows = []
    for (dataset, model), group in runs.groupby(KEYS, sort=False):
        names = [n for n in dict.fromkeys(group.classifier)
                 if n in (BASELINE, CONTROL) or classifier_kind(n) == "ssa"]
        if not any("-" in n or n == CONTROL for n in names):
            continue  # nothing but the main classifiers: no ablation table
        d = diffs[(diffs.dataset == dataset) & (diffs.model == model)] if len(diffs) else diffs
        for name in names:
            runs_of = group[group.classifier == name]
            row = {"dataset": dataset, "model": model, "classifier": name,
                   "setting": ", ".join(f"{k}={v}" for k, v in (settings.get(name) or {}).items())
                   or "defaults", "seeds": len(runs_of), "miou": runs_of.miou.mean(),
                   "miou_sd": runs_of.miou.std()}
            for reference, key in ((BASELINE, "vs_linear"), ("ssa", "vs_ssa")):
                if name == reference:
                    continue
                if reference == "ssa" and name in (BASELINE, CONTROL):
                    match = d[(d.reference == name) & (d.classifier == "ssa")] if len(d) else d
                    sign = -1.0  # stored as ssa - name; shown as name - ssa
                else:
                    match = d[(d.reference == reference) & (d.classifier == name)] if len(d) else d
                    sign = 1.0
                if len(match):
                    m = match.iloc[0]
                    row[f"{key}_seeds"] = _flip(m, "seeds", sign)
                    row[f"{key}_images"] = _flip(m, "images", sign)
            rows.append(row)
    return pd.DataFrame(rows)


def _flip(row, kind: str, sign: float) -> str:
    """The interval text of a stored difference, negated when ``sign`` is -1."""
    est, low, high = (row[f"delta_{kind}"], row[f"delta_{kind}_low"], row[f"delta_{kind}_high"])
    if sign < 0:
        est, low, high = -est, -high, -low
    sd = row["delta_seeds_sd"] if kind == "seeds" else math.nan
    return Difference(est, low, high, 0, "", sd).format()


def markdown_ablations(table: pd.DataFrame) -> str:
    if table.empty:
        return ""
    lines = ["## Controls and ablations", "",
             "Each row trains with the same schedule; `linear_control` is the linear classifier "
             "behind extra layers matching SSA's inference parameters and FLOPs (no "
             "adaptation); each `ssa-no_*` drops one loss term (weight 0), `ssa-no_teacher` "
             "every teacher term, `ssa-random_basis` / `ssa-learned_basis` replace SPPA by a "
             "fixed random or a learned position basis. Δ in mIoU points, 95 % intervals "
             "(seeds: t; images: paired bootstrap), `*` = excludes zero.", "",
             "| dataset | model | classifier | setting | seeds | mIoU | Δ vs ssa (seeds) | "
             "Δ vs ssa (images) | Δ vs linear (seeds) | Δ vs linear (images) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        sd = f" ± {r['miou_sd']:.2f}" if not math.isnan(r["miou_sd"]) else ""
        cells = [r.get(k) if isinstance(r.get(k), str) else "–"
                 for k in ("vs_ssa_seeds", "vs_ssa_images", "vs_linear_seeds",
                           "vs_linear_images")]
        lines.append(f"| {r['dataset']} | {r['model']} | {r['classifier']} | {r['setting']} | "
                     f"{r['seeds']} | {r['miou']:.2f}{sd} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def cost_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, model, classifier): params, FLOPs, latency, FPS and peak memory of
    inference (profile.json) and of training (train_cost.json), means over the seeds."""
    rows = []
    for row in runs.itertuples():
        profile = json.loads((Path(row.run_dir) / PROFILE_FILE).read_text())
        train_path = Path(row.run_dir) / TRAIN_COST_FILE
        train = json.loads(train_path.read_text()) if train_path.is_file() else {}
        rows.append({"dataset": row.dataset, "model": row.model, "classifier": row.classifier,
                     "params_m": row.params_deployed_m, "gflops_full": row.gflops_full,
                     "latency_ms": row.latency_ms, "fps": 1000.0 / row.latency_ms,
                     "infer_peak_mb": profile.get("peak_memory_mb", math.nan),
                     "infer_peak_kind": profile.get("peak_memory_kind", ""),
                     "train_peak_mb": train.get("peak_memory_mb", math.nan),
                     "train_peak_kind": train.get("peak_memory_kind", ""),
                     "train_s_per_iter": train.get("seconds_per_iter") or math.nan,
                     "train_conditions": _train_conditions(train.get("conditions"))})
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    return table.groupby(KEYS + ["classifier"], sort=False).agg(
        params_m=("params_m", "first"), gflops_full=("gflops_full", "first"),
        latency_ms=("latency_ms", "median"), fps=("fps", "median"),
        infer_peak_mb=("infer_peak_mb", "mean"), infer_peak_kind=("infer_peak_kind", "first"),
        train_peak_mb=("train_peak_mb", "mean"), train_peak_kind=("train_peak_kind", "first"),
        train_s_per_iter=("train_s_per_iter", "mean"),
        train_conditions=("train_conditions", "first")).reset_index()


def _num(value: float, fmt: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else \
        format(value, fmt)


def _train_conditions(c: dict | None) -> str:
    if not c:
        return ""
    return (f"batch {c['batch_size']}, crop {c['crop_size'][0]}x{c['crop_size'][1]}, "
            f"amp {c['amp']}, {c['device']}, {c['gpus']} GPU process(es)")


def markdown_cost(table: pd.DataFrame, conditions: list[str]) -> str:
    if table.empty:
        return ""
    lines = ["## Cost", "",
             "Params: inference parameters (M); FPS = 1000 / median latency (batch 1, the "
             "profile's conditions); peak memory in MB: CUDA peak allocated on a GPU, the "
             "process's peak RSS on the CPU (imports and data included, so CPU figures differ "
             "little between classifiers). Training s/iter: wall time per iteration of the "
             "training run.", "",
             "| dataset | model | classifier | params (M) | GFLOPs (full) | latency (ms) | FPS | "
             "inference peak (MB) | training peak (MB) | training s/iter |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.dataset} | {r.model} | {r.classifier} | {r.params_m:.3f} | "
                     f"{r.gflops_full:.3f} | {r.latency_ms:.2f} | {r.fps:.1f} | "
                     f"{_num(r.infer_peak_mb, '.0f')} | {_num(r.train_peak_mb, '.0f')} | "
                     f"{_num(r.train_s_per_iter, '.3f')} |")
    kinds = sorted(set(table.infer_peak_kind) | set(table.train_peak_kind) - {""})
    lines += ["", "Memory measured as: " + "; ".join(k for k in kinds if k) + ".",
              "Profile conditions: " + "; ".join(sorted(set(conditions))) + ".",
              "Training conditions: " + ("; ".join(sorted(set(table.train_conditions) - {""}))
                                         or "not recorded (runs trained before train_cost.json)")
              + "."]
    return "\n".join(lines) + "\n"


SHIFT_FILE, SHIFT_COUNTS_FILE = "shift_sweep.json", "shift_sweep_counts.npz"
CORRUPTIONS_FILE = "corruptions.json"


def _mean_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and its 95 % t-interval (NaN ends with one value)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, len(v) - 1)) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return mean, mean - half, mean + half


def shift_sweep(runs: pd.DataFrame, n_resamples: int = 2000) -> pd.DataFrame:
    """Per (dataset, model, classifier, strength): mean mIoU over seeds with its t-interval,
    and Δ vs linear with the seed and image intervals (runs with ``shift_sweep.json``)."""
    have = runs[[(Path(d) / SHIFT_FILE).is_file() for d in runs.run_dir]]
    rows = []
    for (dataset, model), group in have.groupby(KEYS, sort=False):
        sweeps = {d: json.loads((Path(d) / SHIFT_FILE).read_text())["rows"]
                  for d in group.run_dir}
        counts = {}
        for d in group.run_dir:
            with np.load(Path(d) / SHIFT_COUNTS_FILE) as data:
                counts[d] = (data["intersection"], data["union"])  # (strengths, N, K) each
        base = group[group.classifier == BASELINE].set_index("seed").run_dir
        control = group[group.classifier == CONTROL].set_index("seed").run_dir

        def versus(reference, by_seed, mious, i):
            """Δ of this classifier vs ``reference`` (seed -> run dir) at strength i."""
            pairs = sorted(set(reference.index) & set(by_seed.index))
            if not pairs:
                return None
            d_seed = seed_difference({s: 100 * sweeps[reference[s]][i]["miou"] for s in pairs},
                                     {s: mious[s] for s in pairs})
            stack = [np.stack([counts[runs_[s]][j][i] for s in pairs])
                     for runs_ in (reference, by_seed) for j in (0, 1)]
            return _columns(d_seed, image_bootstrap(*stack, n_resamples=n_resamples))

        for name, runs_of in group.groupby("classifier", sort=False):
            by_seed = runs_of.set_index("seed").run_dir
            strengths = [r["strength"] for r in sweeps[by_seed.iloc[0]]]
            for i, strength in enumerate(strengths):
                mious = {s: 100 * sweeps[d][i]["miou"] for s, d in by_seed.items()}
                mean, low, high = _mean_interval(list(mious.values()))
                row = {"dataset": dataset, "model": model, "classifier": name,
                       "strength": strength, "miou": mean, "miou_low": low, "miou_high": high,
                       "seeds": len(mious)}
                if name != BASELINE:
                    row.update(versus(base, by_seed, mious, i) or {})
                if name == "ssa" and len(control):
                    vs_control = versus(control, by_seed, mious, i) or {}
                    row.update({f"control_{k}": v for k, v in vs_control.items()})
                rows.append(row)
    return pd.DataFrame(rows)


def markdown_shift(table: pd.DataFrame) -> str:
    if table.empty:
        return ""
    lines = ["## mIoU against the per-class appearance shift (synthetic)", "",
             "Every trained run scored again on the validation split generated at each "
             "`val_class_shift` (same scenes; each image offsets every class's colour and "
             "texture by its own draw). mIoU: mean over seeds [95 % t-interval]; Δ vs linear "
             "as above.", "",
             "| dataset | model | classifier | shift | seeds | mIoU | Δ vs linear (seeds) | "
             "Δ vs linear (images) | ssa Δ vs linear_control (seeds) | (images) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        interval = (f" [{r.miou_low:.2f}, {r.miou_high:.2f}]" if not math.isnan(r.miou_low)
                    else "")
        seeds = getattr(r, "delta_seeds_text", "–")
        images = getattr(r, "delta_images_text", "–")
        seeds = seeds if isinstance(seeds, str) else "–"
        images = images if isinstance(images, str) else "–"
        c_seeds, c_images = (getattr(r, k, "–") for k in ("control_delta_seeds_text",
                                                          "control_delta_images_text"))
        c_seeds = c_seeds if isinstance(c_seeds, str) else "–"
        c_images = c_images if isinstance(c_images, str) else "–"
        lines.append(f"| {r.dataset} | {r.model} | {r.classifier} | {r.strength:g} | {r.seeds} "
                     f"| {r.miou:.2f}{interval} | {seeds} | {images} | {c_seeds} | {c_images} |")
    return "\n".join(lines) + "\n"


def shift_plot(table: pd.DataFrame) -> bytes:
    """mIoU vs shift strength per classifier (t-interval bars), and Δ vs linear (image
    bootstrap bars), one row of panels per (dataset, model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(table.groupby(KEYS, sort=False))
    fig, axes = plt.subplots(len(groups), 2, figsize=(9, 3.4 * len(groups)), squeeze=False)
    for (key, rows), (left, right) in zip(groups, axes):
        for name, line in rows.groupby("classifier", sort=False):
            err = np.stack([line.miou - line.miou_low, line.miou_high - line.miou]).clip(min=0)
            left.errorbar(line.strength, line.miou, yerr=np.nan_to_num(err), label=name,
                          capsize=3, marker="o", ms=3)
            if name != BASELINE and "delta_images" in line:
                derr = np.stack([line.delta_images - line.delta_images_low,
                                 line.delta_images_high - line.delta_images]).clip(min=0)
                right.errorbar(line.strength, line.delta_images, yerr=np.nan_to_num(derr),
                               label=name, capsize=3, marker="o", ms=3)
        left.set_xlabel("val class shift")
        left.set_ylabel("mIoU (%)")
        left.set_title(f"{key[0]} / {key[1]}", fontsize=9)
        left.legend(fontsize=7)
        right.axhline(0, color="black", lw=0.6)
        right.set_xlabel("val class shift")
        right.set_ylabel("Δ mIoU vs linear (points)")
        right.set_title("95 % paired image bootstrap", fontsize=9)
        right.legend(fontsize=7)
    data = _png(fig)
    plt.close(fig)
    return data


def corruption_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, model, classifier, corruption, severity): mean mIoU over the seeds with
    ``corruptions.json``."""
    rows = []
    for row in runs.itertuples():
        path = Path(row.run_dir) / CORRUPTIONS_FILE
        if path.is_file():
            rows += [{"dataset": row.dataset, "model": row.model, "classifier": row.classifier,
                      "seed": row.seed, **r} for r in json.loads(path.read_text())["rows"]]
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    table["miou"] *= 100
    return table.groupby(KEYS + ["classifier", "corruption", "severity"], sort=False).agg(
        miou=("miou", "mean"), seeds=("seed", "count")).reset_index()


def markdown_corruptions(table: pd.DataFrame, clean: pd.DataFrame) -> str:
    """Rows: corruptions (mean over severities) and their mean; columns: classifiers."""
    if table.empty:
        return ""
    lines = ["## Common corruptions (imagecorruptions, severities "
             f"{', '.join(map(str, sorted(table.severity.unique())))})", "",
             "mIoU (%) per corruption, mean over the severities and over the seeds that ran "
             "(per severity in corruptions.csv); `clean` = the uncorrupted validation split.", ""]
    for (dataset, model), group in table.groupby(KEYS, sort=False):
        pivot = group.pivot_table(index="corruption", columns="classifier", values="miou",
                                  aggfunc="mean", sort=False)
        names = list(pivot.columns)
        base = clean[(clean.dataset == dataset) & (clean.model == model)].set_index(
            "classifier").miou
        lines += [f"**{dataset} / {model}**", "",
                  "| corruption | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines.append("| clean | " + " | ".join(f"{base.get(n, math.nan):.2f}" for n in names)
                     + " |")
        for corruption, values in pivot.iterrows():
            lines.append(f"| {corruption} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
        lines.append("| **mean** | " + " | ".join(f"**{v:.2f}**" for v in pivot.mean()) + " |")
        by_severity = group.pivot_table(index="severity", columns="classifier", values="miou",
                                        aggfunc="mean", sort=False)[names]
        lines += ["", "| severity (mean over corruptions) | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 1) + "|"]
        for severity, values in by_severity.sort_index().iterrows():
            lines.append(f"| {severity} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


PROBES_FILE, PROBES_TABLE, TSNE_FILE = "probes.json", "probes.csv", "tsne.png"


def probe_tables(runs: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, bytes]]:
    """Per (dataset, model, classifier, class) over the probed runs: mean intra-class shift
    and, for SSA, mean cosines of the fixed and adapted prototypes to the class centre and the
    share of (image, class) pairs where the adapted one is closer; and each run's t-SNE plot."""
    frames, plots = [], {}
    for row in runs.itertuples():
        path = Path(row.run_dir) / PROBES_TABLE
        if not path.is_file():
            continue
        frame = pd.read_csv(path)
        frame.insert(0, "seed", row.seed)
        for key in ("classifier", "model", "dataset"):
            frame.insert(0, key, getattr(row, key))
        frames.append(frame)
        if (Path(row.run_dir) / TSNE_FILE).is_file():
            plots[f"tsne_{row.dataset}_{row.model}_{row.classifier}_seed{row.seed}.png"] = (
                Path(row.run_dir) / TSNE_FILE).read_bytes()
    if not frames:
        return pd.DataFrame(), {}
    data = pd.concat(frames, ignore_index=True)
    agg = {"pairs": ("intra_class_shift", "count"),
           "intra_class_shift": ("intra_class_shift", "mean"),
           "intra_class_shift_p90": ("intra_class_shift", lambda v: v.quantile(0.9))}
    for kind in ("semantic", "spatial"):
        if f"{kind}_fixed" in data:
            data[f"{kind}_closer"] = (data[f"{kind}_adapted"] > data[f"{kind}_fixed"]).where(
                data[f"{kind}_fixed"].notna())
            agg.update({f"{kind}_fixed": (f"{kind}_fixed", "mean"),
                        f"{kind}_adapted": (f"{kind}_adapted", "mean"),
                        f"{kind}_closer": (f"{kind}_closer", "mean")})
    table = data.groupby(KEYS + ["classifier", "class"], sort=False).agg(**agg).reset_index()
    plots["intra_class_shift.png"] = _shift_distribution_plot(data)
    return table, plots


def _shift_distribution_plot(data: pd.DataFrame) -> bytes:
    """Box plot of the intra-class shift per class, one panel per probed classifier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(data.groupby(KEYS + ["classifier"], sort=False))
    fig, axes = plt.subplots(len(groups), 1, figsize=(7, 2.8 * len(groups)), squeeze=False)
    for ax, (key, rows) in zip(axes[:, 0], groups):
        classes = list(dict.fromkeys(rows["class"]))
        ax.boxplot([rows[rows["class"] == c].intra_class_shift.dropna() for c in classes],
                   showfliers=False)
        ax.set_xticks(range(1, len(classes) + 1), classes, rotation=45, fontsize=7)
        ax.set_ylabel("1 - cos(image, train centre)", fontsize=8)
        ax.set_title(f"intra-class shift, {' / '.join(map(str, key))}", fontsize=9)
    data_png = _png(fig)
    plt.close(fig)
    return data_png


def markdown_probes(table: pd.DataFrame) -> str:
    if table.empty:
        return ""
    lines = ["## Mechanism probes", "",
             "Intra-class shift: 1 - cos(image class centre, training class centre) of the "
             "head features, per (test image, class present), mean and 90th percentile "
             "(distribution: intra_class_shift.png). SSA: mean cosine to the image's class "
             "centre of the fixed prototype (linear weight, against the centre of F) and of "
             "the adapted centre (against the centre of F + P, which it classifies); "
             "`closer` = share of (image, class) pairs where the adapted one is closer. "
             "Spatial: position basis E vs adapted `pos`, against the class's mean position "
             "feature. t-SNE of one test image: tsne_*.png.", "",
             "| dataset | model | classifier | class | pairs | shift (mean) | shift (p90) | "
             "sem fixed | sem adapted | sem closer | pos fixed | pos adapted | pos closer |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        cells = [_num(r.get(k, math.nan), ".3f") for k in
                 ("semantic_fixed", "semantic_adapted", "semantic_closer", "spatial_fixed",
                  "spatial_adapted", "spatial_closer")]
        lines.append(f"| {r['dataset']} | {r['model']} | {r['classifier']} | {r['class']} | "
                     f"{r['pairs']} | {r['intra_class_shift']:.3f} | "
                     f"{r['intra_class_shift_p90']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def analysis_outputs(runs: pd.DataFrame, train_pixels: dict[str, list[int]] | None = None,
                     n_resamples: int = 2000, differences: pd.DataFrame | None = None,
                     settings: dict[str, dict] | None = None
                     ) -> tuple[str, dict[str, bytes]]:
    """The statistical sections: (Markdown for summary.md, files for the report)."""
    diffs = paired_differences(runs, n_resamples) if differences is None else differences
    freq = frequency_split(runs, train_pixels or {}, n_resamples)
    deltas = per_class_deltas(runs)
    files = {
        "paired_differences.csv": diffs.to_csv(index=False, float_format="%.4f").encode(),
        "per_class_delta.csv": deltas.to_csv(index=False, float_format="%.4f").encode(),
        "delta_by_frequency.csv": freq.to_csv(index=False, float_format="%.4f").encode(),
    }
    files["per_class_delta.png"] = per_class_plot(deltas)
    markdown = markdown_differences(diffs, freq)
    ablations = ablation_table(runs, diffs, settings)
    if not ablations.empty:
        files["ablations.csv"] = ablations.to_csv(index=False, float_format="%.4f").encode()
        markdown += "\n" + markdown_ablations(ablations)
    cost = cost_table(runs)
    if not cost.empty:
        files["cost.csv"] = cost.to_csv(index=False, float_format="%.4f").encode()
        markdown += "\n" + markdown_cost(cost, runs.latency_conditions.tolist())
    shift = shift_sweep(runs, n_resamples)
    if not shift.empty:
        files["shift_sweep.csv"] = shift.to_csv(index=False, float_format="%.4f").encode()
        files["miou_vs_shift.png"] = shift_plot(shift)
        markdown += "\n" + markdown_shift(shift)
    corruptions = corruption_table(runs)
    if not corruptions.empty:
        files["corruptions.csv"] = corruptions.to_csv(index=False, float_format="%.4f").encode()
        clean = runs.groupby(KEYS + ["classifier"], sort=False).miou.mean().reset_index()
        markdown += "\n" + markdown_corruptions(corruptions, clean)
    probes, probe_plots = probe_tables(runs)
    if not probes.empty:
        files["probes.csv"] = probes.to_csv(index=False, float_format="%.4f").encode()
        files.update(probe_plots)
        markdown += "\n" + markdown_probes(probes)
    return markdown, files
