"""A fresh clone does the work: nothing generated is committed, so the default DAG has every
train, evaluate and profile job to run (not "Nothing to be done")."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from ssaseg.config import all_runs, load_params
from tests.conftest import REPO

# What the pipeline generates (and .gitignore ignores); the one committed file is the README
# that says what reports/ is for.
GENERATED = re.compile(r"^(results/|logs/|mlruns/|mlartifacts/|\.snakemake/|mlflow\.db|reports/)")


def _git(*args: str, cwd=REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True,
                          timeout=120).stdout


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    target = tmp_path_factory.mktemp("clone") / "ssaseg"
    _git("clone", "--quiet", "--no-hardlinks", str(REPO), str(target))
    return target


def test_nothing_generated_is_committed(clone):
    committed = _git("ls-files", cwd=clone).splitlines()
    assert [f for f in committed if GENERATED.match(f)] == []


def test_the_default_dag_of_a_fresh_clone_trains_evaluates_and_profiles_every_run(clone):
    # the clone's own workflow profile (profiles/default, with params/default.yaml) is used,
    # exactly as `snakemake --cores all` in it would
    done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1"], cwd=clone,
                          capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "Nothing to be done" not in out
    runs = len(all_runs(load_params(clone / "params" / "default.yaml")))
    for rule in ("train_model", "evaluate_model", "profile_model"):
        match = re.search(rf"^{rule}\s+(\d+)$", out, re.MULTILINE)
        assert match and int(match.group(1)) == runs, (rule, out[-3000:])
    assert re.search(r"^build_report\s+1$", out, re.MULTILINE)
