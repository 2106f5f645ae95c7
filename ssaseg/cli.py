"""``python -m ssaseg <step>``: one sub-command per pipeline step, each usable without Snakemake.

    python -m ssaseg config   --params params/default.yaml [RUN]    print the resolved config
    python -m ssaseg download --params params/ade20k.yaml --dataset ade20k
    python -m ssaseg prepare  --params params/default.yaml --dataset synthetic
    python -m ssaseg fetch-weights --params params/ade20k.yaml     ImageNet backbones -> weights/
    python -m ssaseg version-data --params params/default.yaml     dvc add data/ + dvc push
    python -m ssaseg init-tracking --params params/default.yaml
    python -m ssaseg tracking-server --host ADDR --port 5000 --backend-store URI --artifacts DIR
    python -m ssaseg train    --params params/default.yaml RUN
    python -m ssaseg evaluate --params params/default.yaml RUN
    python -m ssaseg evaluate --params params/ade20k.yaml RUN --checkpoint FILE   released model
    python -m ssaseg profile  --params params/default.yaml RUN
    python -m ssaseg profile-latency --params params/default.yaml --dataset D --model M --seed S
                                     paired latency of M with every classifier (+ FLOP floor)
    python -m ssaseg report   --params params/default.yaml
    python -m ssaseg count-pixels --params params/analysis.yaml --dataset synthetic --out F.json
    python -m ssaseg evaluate-shift       --params params/analysis.yaml RUN
    python -m ssaseg evaluate-corruptions --params params/analysis.yaml RUN
    python -m ssaseg probe    --params params/analysis.yaml RUN     mechanism probes, t-SNE

RUN is ``--dataset D --model M --classifier C --seed S``. ``--params`` may be repeated: later
files override earlier ones. Errors in the inputs (:class:`ssaseg.errors.InputError`: bad params,
missing or corrupt files, weights and checkpoints, a loss that turned non-finite; a file named
that is not there) end with a one-line message ``error: ...`` and exit code 2; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from ssaseg.config import ConfigError, RunConfig, all_runs, load_params, resolve_run
from ssaseg.errors import InputError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _params(args) -> dict:
    return load_params(args.params)


def _run(args) -> RunConfig:
    return resolve_run(_params(args), args.dataset, args.model, args.classifier, args.seed)


def cmd_config(args) -> int:
    params = _params(args)
    if args.model:
        print(yaml.safe_dump(resolve_run(params, args.dataset, args.model, args.classifier,
                                         args.seed).to_dict(), sort_keys=False), end="")
    else:
        print(yaml.safe_dump(params, sort_keys=False), end="")
        print(f"# {len(all_runs(params))} runs: (dataset, model, classifier, seed) =")
        for run in all_runs(params):
            print(f"#   {run}")
    return 0


def _dataset_in(params: dict, dataset: str) -> None:
    if dataset not in params["datasets"]:
        raise ConfigError(f"datasets: {dataset!r} is not in this params file; it has: "
                          f"{list(params['datasets'])}")


def cmd_download(args) -> int:
    from ssaseg.data.download import download_archive, download_dataset

    params = _params(args)
    _dataset_in(params, args.dataset)
    raw_dir = Path(params["raw_dir"]) / args.dataset
    if args.archive:
        paths = [download_archive(args.dataset, args.archive, raw_dir, mirror=args.mirror,
                                  progress=not args.no_progress)]
    else:
        paths = download_dataset(args.dataset, raw_dir, mirror=args.mirror,
                                 progress=not args.no_progress)
    for path in paths:
        print(f"verified {path}")
    return 0


def cmd_version_data(args) -> int:
    from ssaseg.data.versioning import add_remote, version_data

    params = _params(args)
    dvc = params["dvc"]
    if args.remote_url:
        add_remote(dvc["remote"], args.remote_url, ".", default=True)
    path = version_data(".", dvc["remote"], data_dir=params["data_dir"], push=not args.no_push)
    print(f"recorded {params['data_dir']} in {path}" + ("" if args.no_push else
                                                       f", pushed to remote {dvc['remote']!r}"))
    return 0


def cmd_fetch_weights(args) -> int:
    from ssaseg.weights import fetch_weights, weights_for_model

    params = _params(args)
    names = args.name or sorted({weights_for_model(m) for m in params["models"]})
    for name in names:
        path = fetch_weights(name, params["weights_dir"], progress=not args.no_progress)
        print(f"verified {path}")
    return 0


def cmd_prepare(args) -> int:
    from ssaseg.data.download import verify_archives
    from ssaseg.data.prepare import prepare_dataset

    params = _params(args)
    _dataset_in(params, args.dataset)
    raw_dir = Path(params["raw_dir"]) / args.dataset
    if args.dataset != "synthetic":  # archives placed by hand are checked here too
        verify_archives(args.dataset, raw_dir)
    manifest = prepare_dataset(args.dataset, raw_dir,
                               Path(params["data_dir"]) / args.dataset,
                               **params["datasets"][args.dataset]["options"])
    counts = {split: entry["count"] for split, entry in manifest["splits"].items()}
    print(f"prepared {args.dataset} in {Path(params['data_dir']) / args.dataset}: {counts}")
    return 0


def cmd_init_tracking(args) -> int:
    from ssaseg.tracking import init_store

    params = _params(args)
    # one experiment per dataset: created here, before the DAG's jobs start side by side
    init_store(params["tracking"]["uri"], experiments=list(params["datasets"]))
    if args.marker:
        Path(args.marker).parent.mkdir(parents=True, exist_ok=True)
        Path(args.marker).write_text(params["tracking"]["uri"] + "\n")
    print(f"tracking store ready: {params['tracking']['uri']} (experiments: "
          f"{', '.join(params['datasets'])})")
    return 0


def cmd_train(args) -> int:
    from ssaseg.engine.train import PREEMPTED_EXIT_CODE, Preempted, train

    cfg = _run(args)
    try:
        path = train(cfg, progress=not args.no_progress)
    except Preempted as exc:  # SIGTERM/SIGUSR1: checkpoint written, re-run to resume
        print(f"preempted {cfg.run_name}: {exc}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    print(f"trained {cfg.run_name}: {path}")
    return 0


def cmd_evaluate(args) -> int:
    import torch

    from ssaseg.config import run_config_from_dict
    from ssaseg.engine.device import select_device
    from ssaseg.engine.train import MODEL_FILE, load_trained

    params = _params(args)
    cfg = resolve_run(params, args.dataset, args.model, args.classifier, args.seed)
    torch.set_num_threads(cfg.evaluate.threads)
    device = select_device(cfg.evaluate.device)
    checkpoint = _released_checkpoint(args, params)
    if checkpoint is not None:
        return _evaluate_released(args, cfg, checkpoint, device)
    run_dir = Path(cfg.run_dir)
    model, state = load_trained(run_dir / MODEL_FILE, device)
    if run_config_from_dict(state["config"]).config_hash() != cfg.config_hash():
        raise ConfigError(f"{run_dir / MODEL_FILE} was trained with other settings than "
                          f"{' + '.join(args.params)} now gives this run; train it again")
    _evaluate_and_write(args, cfg, model, device, run_dir, {"config_hash": cfg.config_hash()})
    return 0


def _released_checkpoint(args, params: dict) -> Path | None:
    """The released checkpoint to evaluate: --checkpoint FILE, or with --released the file the
    params' ``checkpoints.<dataset>.<model>.<classifier>`` names; None: our trained model."""
    if args.checkpoint and args.released:
        raise ConfigError("evaluate: give --checkpoint FILE or --released, not both")
    if args.checkpoint:
        return Path(args.checkpoint)
    if not args.released:
        return None
    named = params.get("checkpoints", {}).get(args.dataset, {}).get(args.model, {})
    if args.classifier not in named:
        raise ConfigError(f"checkpoints.{args.dataset}.{args.model}.{args.classifier}: not set "
                          f"in {' + '.join(args.params)}; name the released file there or pass "
                          "--checkpoint FILE")
    return Path(named[args.classifier])


def _evaluate_released(args, cfg: RunConfig, checkpoint: Path, device) -> int:
    """Evaluate a released whole-segmentor checkpoint as this run's model/classifier on its
    dataset; outputs go to ``<run>/../released/`` (beside the seeds: no training involved)."""
    import hashlib

    from ssaseg.data.layout import read_meta
    from ssaseg.models.segmentor_checkpoint import load_released_checkpoint
    from ssaseg.models.zoo import build_segmentor

    meta = read_meta(cfg.dataset.root)
    model = build_segmentor(cfg.model, cfg.classifier, meta.num_classes, meta.ignore_index,
                            cfg.classifier_params)
    load_released_checkpoint(model, checkpoint, cfg.model, cfg.classifier)
    with checkpoint.open("rb") as fh:
        sha256 = hashlib.file_digest(fh, "sha256").hexdigest()
    out_dir = Path(cfg.run_dir).parent / "released"
    source = {"checkpoint": str(checkpoint), "checkpoint_sha256": sha256}
    _evaluate_and_write(args, cfg, model.to(device).eval(), device, out_dir, source,
                        tracker_run=(cfg.dataset.name, f"{cfg.model}/{cfg.classifier}/released"))
    return 0


def _evaluate_and_write(args, cfg: RunConfig, model, device, out_dir: Path, extra: dict,
                        tracker_run: tuple[str, str] | None = None) -> None:
    """Evaluate ``model`` on the run's val split; write eval.json, per_class_iou.csv,
    confusion_matrix.csv and per_image_counts.npz into ``out_dir`` and log them to its MLflow run (``tracker_run``:
    (experiment, run name) of a new one where out_dir has none yet)."""
    from ssaseg import atomic_io
    from ssaseg.data.dataset import SegmentationDataset
    from ssaseg.data.transforms import EvalPipeline
    from ssaseg.engine.evaluate import evaluate_per_image
    from ssaseg.report import EVAL_FILE, PER_IMAGE_FILE
    from ssaseg.tracking import RunTracker

    dataset = SegmentationDataset(cfg.dataset.root, "val",
                                  eval_pipeline=EvalPipeline.from_config(cfg.evaluate))
    metrics, cm, per_image = evaluate_per_image(
        model, dataset, device, cfg.evaluate.mode, cfg.evaluate.crop_size, cfg.evaluate.stride,
        num_workers=cfg.evaluate.num_workers, progress=not args.no_progress)
    classes = dataset.meta.classes
    per_class = out_dir / "per_class_iou.csv"
    rows = ["class,iou,accuracy"] + [f"{c},{i:.6f},{a:.6f}"
                                     for c, i, a in zip(classes, metrics.iou, metrics.accuracy)]
    atomic_io.write_text(per_class, "\n".join(rows) + "\n")
    atomic_io.write_text(out_dir / "confusion_matrix.csv",
                         "\n".join(",".join(map(str, r)) for r in cm.tolist()) + "\n")
    per_image.save(out_dir / PER_IMAGE_FILE)  # before eval.json: eval.json marks a whole run
    result = {
        "run": {"dataset": cfg.dataset.name, "model": cfg.model, "classifier": cfg.classifier,
                "seed": cfg.seed},
        "miou": metrics.miou, "macc": metrics.macc, "pixel_accuracy": metrics.pixel_accuracy,
        "mode": cfg.evaluate.mode, "test_scale": cfg.evaluate.scale,
        "size_divisor": cfg.evaluate.size_divisor, "num_images": len(dataset),
        "per_class": [{"class": c, "iou": i, "accuracy": a}
                      for c, i, a in zip(classes, metrics.iou, metrics.accuracy)],
        **extra,
    }
    experiment, run_name = tracker_run or (None, None)
    tracker = RunTracker(cfg.tracking_uri, out_dir, experiment=experiment, run_name=run_name,
                         tags={"source": "released checkpoint", **extra} if tracker_run else None)
    tracker.log_metrics({"miou": metrics.miou, "macc": metrics.macc,
                         "pixel_accuracy": metrics.pixel_accuracy,
                         **{f"iou/{c}": v for c, v in zip(classes, metrics.iou) if v == v}})
    tracker.log_artifact(per_class)
    tracker.log_artifact(out_dir / "confusion_matrix.csv")
    atomic_io.write_json(out_dir / EVAL_FILE, result)
    tracker.log_artifact(out_dir / EVAL_FILE)
    tracker.finish()
    where = f" ({extra['checkpoint']})" if "checkpoint" in extra else ""
    print(f"{cfg.run_name}{where}: mIoU {100 * metrics.miou:.2f}  "
          f"aAcc {100 * metrics.pixel_accuracy:.2f}")


def _trained(cfg: RunConfig, params_files: list[str]):
    """(model in eval mode, device) of a trained run whose settings are still those of the
    params files; ConfigError otherwise."""
    import torch

    from ssaseg.config import run_config_from_dict
    from ssaseg.engine.device import select_device
    from ssaseg.engine.train import MODEL_FILE, load_trained

    torch.set_num_threads(cfg.evaluate.threads)
    device = select_device(cfg.evaluate.device)
    path = Path(cfg.run_dir) / MODEL_FILE
    model, state = load_trained(path, device)
    if run_config_from_dict(state["config"]).config_hash() != cfg.config_hash():
        raise ConfigError(f"{path} was trained with other settings than "
                          f"{' + '.join(params_files)} now gives this run; train it again")
    return model, device


def _eval_kwargs(cfg: RunConfig) -> dict:
    return {"mode": cfg.evaluate.mode, "crop": cfg.evaluate.crop_size,
            "stride": cfg.evaluate.stride, "num_workers": cfg.evaluate.num_workers}


def cmd_evaluate_shift(args) -> int:
    import io

    import numpy as np

    from ssaseg import atomic_io
    from ssaseg.data.transforms import EvalPipeline
    from ssaseg.engine.robustness import evaluate_shift_sweep

    params = _params(args)
    cfg = _run(args)
    strengths = params["analysis"]["shift_sweep"]
    if cfg.dataset.name != "synthetic" or not strengths:
        raise ConfigError(f"{' + '.join(args.params)}: analysis.shift_sweep needs the synthetic "
                          f"dataset and at least one strength (got {cfg.dataset.name!r}, "
                          f"{strengths})")
    model, device = _trained(cfg, args.params)
    rows, counts = evaluate_shift_sweep(model, cfg.dataset.options, strengths, device,
                                        EvalPipeline.from_config(cfg.evaluate), **_eval_kwargs(cfg))
    run_dir = Path(cfg.run_dir)
    buf = io.BytesIO()
    np.savez_compressed(buf, **counts)  # before shift_sweep.json, which marks the step done
    atomic_io.write_bytes(run_dir / "shift_sweep_counts.npz", buf.getvalue())
    atomic_io.write_json(run_dir / "shift_sweep.json", {
        "run": {"dataset": cfg.dataset.name, "model": cfg.model, "classifier": cfg.classifier,
                "seed": cfg.seed},
        "train_class_shift": cfg.dataset.options.get("class_shift", 0.0), "rows": rows})
    print(f"{cfg.run_name}: mIoU " + ", ".join(f"{100 * r['miou']:.2f} at {r['strength']}"
                                                for r in rows))
    return 0


def cmd_evaluate_corruptions(args) -> int:
    from ssaseg import atomic_io
    from ssaseg.data.dataset import SegmentationDataset
    from ssaseg.data.transforms import EvalPipeline
    from ssaseg.engine.robustness import corruption_names, evaluate_corruptions

    params = _params(args)
    cfg = _run(args)
    analysis = params["analysis"]
    names = corruption_names(analysis["corruptions"])
    if not names:
        raise ConfigError(f"{' + '.join(args.params)}: analysis.corruptions is empty")
    model, device = _trained(cfg, args.params)
    dataset = SegmentationDataset(cfg.dataset.root, "val",
                                  eval_pipeline=EvalPipeline.from_config(cfg.evaluate))
    rows = evaluate_corruptions(model, dataset, device, names, analysis["severities"],
                                analysis["corruption_seed"], **_eval_kwargs(cfg))
    mean = sum(r["miou"] for r in rows) / len(rows)
    atomic_io.write_json(Path(cfg.run_dir) / "corruptions.json", {
        "run": {"dataset": cfg.dataset.name, "model": cfg.model, "classifier": cfg.classifier,
                "seed": cfg.seed},
        "seed": analysis["corruption_seed"], "rows": rows, "mean_miou": mean})
    print(f"{cfg.run_name}: mean mIoU under {len(names)} corruptions x "
          f"{len(analysis['severities'])} severities: {100 * mean:.2f}")
    return 0


def cmd_probe(args) -> int:
    import pandas as pd

    from ssaseg import atomic_io
    from ssaseg.data.dataset import SegmentationDataset
    from ssaseg.data.transforms import EvalPipeline
    from ssaseg.engine.probes import probe, tsne_embedding, tsne_plot

    params = _params(args)
    cfg = _run(args)
    model, device = _trained(cfg, args.params)
    pipeline = EvalPipeline.from_config(cfg.evaluate)
    train_set = SegmentationDataset(cfg.dataset.root, "train", eval_pipeline=pipeline)
    val_set = SegmentationDataset(cfg.dataset.root, "val", eval_pipeline=pipeline)
    index = params["analysis"]["probe_image"]
    if index >= len(val_set):
        raise ConfigError(f"{' + '.join(args.params)}: analysis.probe_image {index} is beyond "
                          f"the {len(val_set)} validation images")
    arrays = probe(model, train_set, val_set, device)
    classes = val_set.meta.classes
    n = len(val_set)
    table = pd.DataFrame({"image": [i for i in range(n) for _ in classes],
                          "class": [c for _ in range(n) for c in classes],
                          **{k: v.reshape(-1) for k, v in arrays.items()}})
    table = table.dropna(subset=["intra_class_shift"])  # classes present in the image
    run_dir = Path(cfg.run_dir)
    embedding = tsne_embedding(model, val_set, device, index, seed=cfg.seed)
    atomic_io.write_bytes(run_dir / "tsne.png", tsne_plot(
        embedding, classes, f"{cfg.run_name}: val image {index}, pixel features and prototypes "
        "(t-SNE, cosine)"))
    atomic_io.write_text(run_dir / "probes.csv", table.to_csv(index=False, float_format="%.6f"))
    summary = {"run": {"dataset": cfg.dataset.name, "model": cfg.model,
                       "classifier": cfg.classifier, "seed": cfg.seed},
               "probe_image": index, "pairs": len(table),
               "intra_class_shift_mean": float(table.intra_class_shift.mean())}
    for kind in ("semantic", "spatial"):
        if f"{kind}_fixed" in table:
            closer = table[f"{kind}_adapted"] > table[f"{kind}_fixed"]
            summary[f"{kind}_adapted_closer_share"] = float(closer.mean())
    atomic_io.write_json(run_dir / "probes.json", summary)
    print(f"{cfg.run_name}: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()
                                          if isinstance(v, float)))
    return 0


def cmd_profile(args) -> int:
    from ssaseg import atomic_io
    from ssaseg.data.layout import read_meta
    from ssaseg.engine.device import select_device
    from ssaseg.engine.profile import profile_model
    from ssaseg.models.zoo import build_segmentor, model_spec
    from ssaseg.report import PROFILE_FILE
    from ssaseg.tracking import RunTracker

    cfg = _run(args)
    meta = read_meta(cfg.dataset.root)
    num_classes = cfg.profile.num_classes or meta.num_classes
    model = build_segmentor(cfg.model, cfg.classifier, num_classes, meta.ignore_index,
                            cfg.classifier_params)
    result = profile_model(model, cfg.profile.input_size, select_device(cfg.profile.device),
                           cfg.profile.warmup, cfg.profile.repeats, cfg.profile.threads,
                           cfg.profile.precision, model_spec(cfg.model).mmcv_counting)
    result["conditions"]["num_classes"] = num_classes
    run_dir = Path(cfg.run_dir)
    atomic_io.write_json(run_dir / PROFILE_FILE, result)
    tracker = RunTracker(cfg.tracking_uri, run_dir)
    tracker.log_metrics({k: v for k, v in result.items() if isinstance(v, (int, float))})
    tracker.set_tags({f"profile.{k}": v for k, v in result["conditions"].items()})
    tracker.log_artifact(run_dir / PROFILE_FILE)
    tracker.finish()
    print(f"{cfg.run_name}: {result['params_total'] / 1e6:.2f} M params, "
          f"{result['flops_full'] / 1e9:.2f} GFLOPs (full), "
          f"{result['latency_ms_median']:.1f} ms ({result['conditions']['device']})")
    return 0


def cmd_profile_latency(args) -> int:
    from ssaseg import atomic_io
    from ssaseg.config import run_config_from_dict, run_dir
    from ssaseg.data.layout import read_meta
    from ssaseg.engine.device import select_device
    from ssaseg.engine.paired_latency import (BASELINE, RESULT_FILE, TABLE_FILE,
                                              measure_paired_latency, result_table)
    from ssaseg.engine.train import MODEL_FILE, load_trained
    from ssaseg.errors import MissingFileError, ParameterError
    from ssaseg.models.zoo import build_segmentor

    params = _params(args)
    _dataset_in(params, args.dataset)
    if BASELINE not in params["classifiers"]:
        raise ConfigError(f"classifiers: paired latency is measured against {BASELINE!r}, which "
                          f"this params file lacks (it has {list(params['classifiers'])}); add it")
    seed = params["seeds"][0] if args.seed is None else args.seed
    cfgs = {clf: resolve_run(params, args.dataset, args.model, clf, seed)
            for clf in params["classifiers"]}
    profile = cfgs[BASELINE].profile
    device = select_device(profile.device)
    models = {}
    for clf, cfg in cfgs.items():
        if args.untrained:
            meta = read_meta(cfg.dataset.root)
            models[clf] = build_segmentor(cfg.model, clf, profile.num_classes or meta.num_classes,
                                          meta.ignore_index, cfg.classifier_params)
            continue
        path = Path(cfg.run_dir) / MODEL_FILE
        if not path.is_file():
            raise MissingFileError(f"{path} does not exist: train {cfg.run_name} first, or pass "
                              "--untrained to time the architecture without its weights")
        model, state = load_trained(path, device)
        if run_config_from_dict(state["config"]).config_hash() != cfg.config_hash():
            raise ConfigError(f"{path} was trained with other settings than "
                              f"{' + '.join(args.params)} now gives this run; train it again")
        if profile.num_classes not in (None, state["num_classes"]):
            raise ParameterError(f"profile.num_classes is {profile.num_classes} but {path} has "
                              f"{state['num_classes']} classes; pass --untrained to time the "
                              f"architecture with {profile.num_classes} classes")
        models[clf] = model
    paired = params["paired_latency"]
    result = measure_paired_latency(
        models, profile.input_size, device, threads=profile.threads,
        precision=profile.precision, warmup=paired["warmup"], min_rounds=paired["min_rounds"],
        max_rounds=paired["max_rounds"], max_seconds=paired["max_seconds"],
        target_half_width=paired["target_half_width"], check_every=paired["check_every"],
        seed=paired["seed"], progress=lambda line: print(line, flush=True))
    result["run"] = {"dataset": args.dataset, "model": args.model, "seed": seed,
                     "weights": "untrained" if args.untrained else "trained"}
    out_dir = Path(args.out_dir) if args.out_dir else run_dir(
        params, args.dataset, args.model, BASELINE, seed).parents[1]
    atomic_io.write_text(out_dir / TABLE_FILE, result_table(result, args.dataset, args.model))
    atomic_io.write_json(out_dir / RESULT_FILE, result)  # last: its presence means complete
    if not args.untrained:  # each trained run's MLflow run gets its paired figures
        from ssaseg.tracking import RunTracker

        for clf, e in result["classifiers"].items():
            tracker = RunTracker(cfgs[clf].tracking_uri, cfgs[clf].run_dir)
            tracker.log_metrics({"paired_latency_ms": e["median_ms"],
                                 "latency_ratio_vs_linear": e["ratio"],
                                 "latency_ratio_vs_linear_low": e["low"],
                                 "latency_ratio_vs_linear_high": e["high"],
                                 "flops_ratio_vs_linear": e["flops_ratio"]})
            tracker.finish()
    for clf, e in result["classifiers"].items():
        print(f"{args.model}/{clf}: {e['median_ms']:.1f} ms, x{e['ratio']:.4f} "
              f"[{e['low']:.4f}, {e['high']:.4f}] vs {BASELINE}, FLOP floor "
              f"x{e['flops_ratio']:.4f} ({e['floor_verdict']})")
    print(f"{result['rounds']} rounds, target +-{100 * paired['target_half_width']:g} % "
          f"{'reached' if result['target_reached'] else 'NOT reached'} "
          f"({result['stop_reason']}); {result['conditions']['device']}")
    return 0


def cmd_tracking_server(args) -> int:
    from ssaseg.tracking import server_command

    cmd = server_command(args.host, args.port, args.backend_store, args.artifacts, args.workers,
                         args.allowed_hosts)
    print(f"MLflow server on {args.host}:{args.port}; in the params file: "
          f"tracking: {{uri: http://{args.host}:{args.port}}}\n  {' '.join(cmd)}", flush=True)
    os.execvp(cmd[0], cmd)  # the server replaces this process: signals reach it directly


def train_pixels_path(params: dict, dataset: str) -> Path:
    """Where ``count-pixels`` writes a dataset's training pixels per class for a params file."""
    return Path(params["results_dir"]) / params["name"] / dataset / "train_class_pixels.json"


def cmd_count_pixels(args) -> int:
    from ssaseg import atomic_io
    from ssaseg.data.class_pixels import split_class_pixels

    params = _params(args)
    _dataset_in(params, args.dataset)
    pixels = split_class_pixels(Path(params["data_dir"]) / args.dataset, "train")
    out = Path(args.out) if args.out else train_pixels_path(params, args.dataset)
    atomic_io.write_json(out, {"dataset": args.dataset, "split": "train", "pixels": pixels})
    print(f"{args.dataset}: {sum(pixels)} labelled training pixels in {len(pixels)} classes "
          f"-> {out}")
    return 0


def cmd_report(args) -> int:
    import json

    from ssaseg.config import paired_baselines, run_dir
    from ssaseg.errors import MissingFileError
    from ssaseg.report import PAIRED_LATENCY_FILE, build_report

    params = _params(args)
    out_dir = Path(args.out_dir or Path(params["reports_dir"]) / params["name"])
    runs = [run_dir(params, *run) for run in all_runs(params)]
    published = Path(params["published"]) if params.get("published") else None
    paired = [Path(params["results_dir"]) / params["name"] / d / m / PAIRED_LATENCY_FILE
              for d, m in paired_baselines(params)]
    for path in paired:
        if not path.is_file():
            raise MissingFileError(f"{path} does not exist: run `python -m ssaseg "
                                   "profile-latency` for that baseline first (the workflow does)")
    train_pixels = {d: json.loads(train_pixels_path(params, d).read_text())["pixels"]
                    for d in params["datasets"] if train_pixels_path(params, d).is_file()}
    changed = build_report(runs, out_dir, published, paired, train_pixels,
                           params["classifiers"])
    print(f"report in {out_dir}: {len(changed)} file(s) changed"
          + (f" ({', '.join(p.name for p in changed)})" if changed else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ssaseg", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help_text, run=False, dataset=False):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--params", action="append", required=True, metavar="YAML",
                       help="params file (repeatable; later files override earlier ones)")
        if run or dataset:
            p.add_argument("--dataset", required=run or dataset)
        if run:
            p.add_argument("--model", required=True)
            p.add_argument("--classifier", required=True)
            p.add_argument("--seed", type=int, required=True)
            p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.set_defaults(func=func)
        return p

    p = add("config", cmd_config, "print the validated params, or one run's resolved config")
    p.add_argument("--dataset")
    p.add_argument("--model")
    p.add_argument("--classifier")
    p.add_argument("--seed", type=int)
    p = add("download", cmd_download, "fetch and verify a dataset's archives", dataset=True)
    p.add_argument("--archive", help="one archive file name (default: all of the dataset's)")
    p.add_argument("--mirror", help="base URL serving the archives under their file names")
    p.add_argument("--no-progress", action="store_true")
    add("prepare", cmd_prepare, "write a dataset in the common layout", dataset=True)
    p = add("fetch-weights", cmd_fetch_weights, "download and verify pretrained backbones")
    p.add_argument("--name", action="append",
                   help="checkpoint or model name (repeatable; default: every model's)")
    p.add_argument("--no-progress", action="store_true")
    p = add("version-data", cmd_version_data, "dvc add data/ and push it to the params' remote")
    p.add_argument("--remote-url", help="configure the remote at this URL first")
    p.add_argument("--no-push", action="store_true", help="only record data.dvc")
    p = add("init-tracking", cmd_init_tracking, "create the MLflow store before parallel jobs")
    p.add_argument("--marker", help="file to write once the store exists")
    add("train", cmd_train, "train one run (resumes from its last checkpoint)", run=True)
    p = add("evaluate", cmd_evaluate, "evaluate one trained run (or a released checkpoint) on "
            "the val split", run=True)
    p.add_argument("--checkpoint", metavar="FILE", help="a released whole-segmentor checkpoint "
                   "(mmseg 1.x/0.x) to evaluate as this run's model + classifier, instead of "
                   "the model trained by us; outputs in <run>/../released/")
    p.add_argument("--released", action="store_true", help="the checkpoint that the params' "
                   "checkpoints.<dataset>.<model>.<classifier> names")
    add("profile", cmd_profile, "params, FLOPs, latency, memory of one run's model", run=True)
    p = add("profile-latency", cmd_profile_latency, "paired latency of one baseline with every "
            "classifier, ratios to linear with intervals, FLOP floor", dataset=True)
    p.add_argument("--model", required=True)
    p.add_argument("--seed", type=int, help="whose trained weights to load (default: the first "
                   "of the params' seeds)")
    p.add_argument("--untrained", action="store_true", help="time the architecture as deployed "
                   "(eval mode) without loading trained weights")
    p.add_argument("--out-dir", help="default: <results_dir>/<name>/<dataset>/<model>")
    add("evaluate-shift", cmd_evaluate_shift,
        "score one trained run at every analysis.shift_sweep strength (synthetic)", run=True)
    add("probe", cmd_probe, "mechanism probes and t-SNE of one trained run (analysis.probe_image)",
        run=True)
    add("evaluate-corruptions", cmd_evaluate_corruptions,
        "score one trained run under analysis.corruptions x analysis.severities", run=True)
    p = add("count-pixels", cmd_count_pixels, "training pixels per class of a dataset",
            dataset=True)
    p.add_argument("--out", help="JSON file (default: <results_dir>/<name>/<dataset>/"
                   "train_class_pixels.json)")
    p = add("report", cmd_report, "tables and plots from every run of a params file")
    p.add_argument("--out-dir", help="default: <reports_dir>/<name>")
    p = sub.add_parser("tracking-server", help="MLflow server for jobs on a cluster (login node)")
    p.add_argument("--host", required=True, help="address to bind, reachable from the compute "
                   "nodes (e.g. the login node's cluster-network IP)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--backend-store", default="sqlite:///mlflow.db",
                   help="runs and metrics: a SQLite file on a LOCAL disk (only the server "
                   "writes it) or a database URI (postgresql://...)")
    p.add_argument("--artifacts", default="mlartifacts", help="artifact directory, served to "
                   "the jobs through the server")
    p.add_argument("--workers", type=int, help="server processes (default: 1 with SQLite, else 4)")
    p.add_argument("--allowed-hosts", help="Host headers to accept (default: --host, this "
                   "machine's names and localhost, with and without the port)")
    p.set_defaults(func=cmd_tracking_server)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "config" and args.model and None in (args.dataset, args.classifier, args.seed):
        print("error: config for one run needs --dataset, --model, --classifier and --seed",
              file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (InputError, FileNotFoundError) as exc:  # what the user can fix; anything else is a bug
        print(f"error: {exc}", file=sys.stderr)
        return 2
