"""How long Snakemake takes to plan each paper table: `snakemake -n --configfile params/<table>`.

A researcher runs the dry run before every submission, and on a cluster every job's own
Snakemake parses the workflow again, so planning time is paid many times over. Each params file
is planned ``--repeats`` times, the files interleaved round by round (so that a change in the
machine's load hits every file alike), each in a fresh empty working directory (nothing done
yet: every job is planned). Reported: the median and the range of the wall times, the number of
planned jobs, and for comparison the time of `python -c "import snakemake.cli"` alone (the part
of every plan that the workflow cannot change).

    python -m benchmarks.bench_plan                      # every params/*.yaml, 5 rounds
    python -m benchmarks.bench_plan --params params/ade20k.yaml --repeats 9
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def plan_once(params: Path, workdir: Path) -> tuple[float, int]:
    """(wall seconds, planned jobs) of one dry run."""
    cmd = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "--configfile", str(params), "--cores", "1"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    total = re.search(r"^total\s+(\d+)", done.stdout + done.stderr, re.MULTILINE)
    return elapsed, int(total.group(1)) if total else 0


def import_once() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import snakemake.cli"], check=True, timeout=120)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", action="append", type=Path,
                        help="params file (repeatable; default: every params/*.yaml)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    files = args.params or sorted((REPO / "params").glob("*.yaml"))
    times: dict[str, list[float]] = {f.name: [] for f in files}
    jobs: dict[str, int] = {}
    imports: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeats):
            imports.append(import_once())
            for f in files:
                workdir = Path(tmp) / f"{f.stem}-{round_}"
                workdir.mkdir()
                seconds, jobs[f.name] = plan_once(f, workdir)
                times[f.name].append(seconds)
                print(f"round {round_ + 1}/{args.repeats} {f.name}: {seconds:.2f} s",
                      file=sys.stderr, flush=True)
    print(f"Planning time, `snakemake -n` in an empty directory, {args.repeats} interleaved "
          f"rounds, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}:\n")
    print("| params file | jobs | median (s) | min-max (s) |")
    print("|---|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {jobs[name]} | {statistics.median(values):.2f} | "
              f"{min(values):.2f}-{max(values):.2f} |")
    print(f"| (`import snakemake.cli` alone) | | {statistics.median(imports):.2f} | "
          f"{min(imports):.2f}-{max(imports):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
