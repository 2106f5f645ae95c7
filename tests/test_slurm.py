"""The default workflow on a real one-node Slurm cluster, through profiles/slurm.

The fixture starts munged (as the munge user), slurmctld and slurmd from Debian's slurm-wlm
and munge (installed with apt-get when missing and running as root), with every state, log,
pid and socket file in a temporary directory and free ports, so that it neither needs nor
touches a system Slurm. The node line comes from ``slurmd -C``; select/cons_tres,
accounting_storage/none (no slurmdbd: the profile polls with squeue), proctrack/linuxproc,
task/none. Every daemon is stopped by its PID at the end. Every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, miniature_params, write_params

PACKAGES = ["slurm-wlm", "munge"]
DAEMONS = ["munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "srun"]
PARTITION = "ssaseg_test"
SLURM_RULES = {"prepare_dataset", "train_model", "evaluate_model", "profile_model"}
LOCAL_RULES = {"init_tracking", "build_report"}


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _ensure_packages() -> None:
    """apt-get install slurm-wlm munge when missing (root only); pytest.skip with the reason."""
    if all(_which(d) for d in DAEMONS):
        return
    if os.geteuid() != 0:
        pytest.skip("slurm-wlm/munge are not installed and installing them needs root")
    if not shutil.which("apt-get"):
        pytest.skip("slurm-wlm/munge are not installed and there is no apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]):
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            pytest.skip(f"{' '.join(cmd)} took more than 600 s")
        if done.returncode:
            pytest.skip(f"{' '.join(cmd)} failed: {(done.stderr or done.stdout)[-500:]}")
    missing = [d for d in DAEMONS if not _which(d)]
    if missing:
        pytest.skip(f"after installing {PACKAGES}, still missing: {missing}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, timeout: float, what: str, logs: list[Path] = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    tails = "\n".join(f"--- {p}:\n{p.read_text()[-2000:]}" for p in logs if p.is_file())
    raise AssertionError(f"{what}: not ready after {timeout} s\n{tails}")


def _slurm_conf(root: Path, munge_socket: Path) -> str:
    host = socket.gethostname().split(".")[0]
    node = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, timeout=30,
                          check=True).stdout.splitlines()[0].split()
    # the node line of `slurmd -C`, under this host's short name, reached on the loopback
    node = [f"NodeName={host}"] + [w for w in node if not w.startswith("NodeName=")]
    return "\n".join([
        "ClusterName=ssasegtest",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/slurmctld.log",
        f"SlurmdLogFile={root}/slurmd.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/none",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "MpiDefault=none",
        "ReturnToService=2",
        "MinJobAge=600",  # finished jobs stay visible to squeue (the profile's status command)
        "KillWait=30",
        "InactiveLimit=0",
        "SlurmdTimeout=120",
        " ".join([*node, "NodeAddr=127.0.0.1", "State=UNKNOWN"]),
        f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def _stop(proc: subprocess.Popen, pid_file: Path | None = None) -> None:
    """SIGTERM to the daemon's PID (from its pid file when it runs under runuser), SIGKILL to
    what we started after 15 s."""
    if proc.poll() is not None:
        return
    try:
        os.kill(int(pid_file.read_text().split()[0]) if pid_file else proc.pid, signal.SIGTERM)
    except (OSError, ValueError, IndexError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


@pytest.fixture(scope="module")
def slurm_cluster():
    """{env, root}: a one-node cluster; SLURM_CONF in env points the client commands at it."""
    _ensure_packages()
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld/slurmd (SlurmUser=root) and munged needs root")
    root = Path(tempfile.mkdtemp(prefix="ssaseg-slurm-"))
    root.chmod(0o711)  # the munge user reaches its own directory below
    munge_dir = root / "munge"
    munge_dir.mkdir()
    munge_dir.chmod(0o755)  # munged wants its socket's directory searchable by every client
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    key = munge_dir / "munge.key"
    subprocess.run([_which("mungekey"), "--create", f"--keyfile={key}"], check=True, timeout=30,
                   capture_output=True)
    key.chmod(0o400)
    shutil.chown(munge_dir, "munge", "munge")
    shutil.chown(key, "munge", "munge")
    munge_socket = munge_dir / "munge.socket"
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, munge_socket))
    # The jobstep plugin clears SLURM_* (SLURM_CONF too) before its nested `srun`, which on a
    # real cluster finds /etc/slurm/slurm.conf; here a wrapper first on PATH puts it back, so
    # that nothing outside the temporary directory is written.
    shims = root / "bin"
    shims.mkdir()
    (shims / "srun").write_text(f'#!/bin/sh\nSLURM_CONF={conf} exec {_which("srun")} "$@"\n')
    (shims / "srun").chmod(0o755)
    env = {**os.environ, "SLURM_CONF": str(conf),
           "PATH": f"{shims}{os.pathsep}{os.environ.get('PATH', '')}"}
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(
            ["runuser", "-u", "munge", "--", _which("munged"), "--foreground",
             f"--key-file={key}", f"--socket={munge_socket}", f"--pid-file={munge_dir}/munged.pid",
             f"--log-file={munge_dir}/munged.log", f"--seed-file={munge_dir}/munged.seed"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        _wait_for(lambda: munge_socket.exists() or procs[0].poll() is not None, 30, "munged",
                  [munge_dir / "munged.log"])
        assert procs[0].poll() is None, (munge_dir / "munged.log").read_text()[-2000:]
        log = (root / "daemons.log").open("w")
        procs.append(subprocess.Popen([_which("slurmctld"), "-D", "-i", "-f", str(conf)], env=env,
                                      stdout=log, stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen([_which("slurmd"), "-D", "-f", str(conf)], env=env,
                                      stdout=log, stderr=subprocess.STDOUT))

        def node_idle() -> bool:
            for proc in procs:
                if proc.poll() is not None:
                    raise AssertionError(f"{proc.args[0]} exited with {proc.returncode}: "
                                         f"{(root / 'daemons.log').read_text()[-2000:]}")
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True,
                                 text=True, timeout=30)
            return out.returncode == 0 and out.stdout.strip() == "idle"

        _wait_for(node_idle, 60, "the Slurm node",
                  [root / "slurmctld.log", root / "slurmd.log", root / "daemons.log"])
        yield {"env": env, "root": root}
    finally:
        for i, proc in reversed(list(enumerate(procs))):  # slurmd, slurmctld, munged
            _stop(proc, munge_dir / "munged.pid" if i == 0 else None)
        shutil.rmtree(root, ignore_errors=True)


def _squeue_jobs(env: dict) -> list[dict[str, str]]:
    out = subprocess.run(["squeue", "--states=all", "--noheader", "-o", "%i|%T|%k|%P"], env=env,
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return [dict(zip(("id", "state", "comment", "partition"), line.split("|")))
            for line in out.splitlines() if line.strip()]


def test_default_workflow_runs_through_sbatch(slurm_cluster, tmp_path):
    env = slurm_cluster["env"]
    params = miniature_params(tmp_path)
    params["train"].update(iters=2, checkpoint_every=2)
    params["profile"].update(input_size=[32, 32], warmup=0, repeats=1)
    # a CPU-only cluster: no GPU, and requests that fit a 2-core node
    small = {"cpus_per_task": 1, "mem_mb": 1000, "runtime": 30}
    params["resources"] = {"prepare_dataset": small, "train_model": {**small, "gpu": 0},
                           "evaluate_model": small,
                           "profile_model": {**small, "slurm_extra": None}}
    config = write_params(tmp_path / "mini.yaml", params)
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                               env.get("PYTHONPATH")])),
           "SSASEG_SLURM_PARTITION": PARTITION, "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    env.pop("SSASEG_SLURM_ACCOUNT", None)
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "--profile", str(REPO / "profiles/slurm"),
           "--workflow-profile", "none", "--configfile", str(config),
           # no accounts on this cluster: the profile's placeholder is replaced, not filled in
           "--default-resources", f"slurm_partition={PARTITION}", "--jobs", "4",
           "--slurm-init-seconds-before-status-checks", "1"]  # poll sooner than on a cluster
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]

    reports = tmp_path / "reports/mini"
    for name in ("summary.md", "summary.csv", "miou_vs_latency.png", "loss_curves.png"):
        assert (reports / name).stat().st_size > 0, name
    assert "segformer_b0" in (reports / "summary.md").read_text()

    # every compute rule went through sbatch and completed; the localrules did not
    jobs = _squeue_jobs(env)
    submitted = {job["comment"].split("_wildcards")[0].removeprefix("rule_"): job for job in jobs}
    assert SLURM_RULES <= set(submitted), jobs
    assert not LOCAL_RULES & set(submitted), jobs
    for rule in SLURM_RULES:
        assert submitted[rule]["state"] == "COMPLETED", jobs
        assert submitted[rule]["partition"] == PARTITION
    slurm_logs = list((workdir / ".snakemake/slurm_logs").rglob("*.log"))
    for rule in SLURM_RULES:
        assert any(f"rule_{rule}" in str(p) for p in slurm_logs), (rule, slurm_logs)
    assert (tmp_path / "results/mini/synthetic/segformer_b0/linear/seed0/model.pt").is_file()


def test_tracking_server_takes_runs_over_http(tmp_path):
    """`python -m ssaseg tracking-server` (the login node's MLflow) records a run and serves its
    artifacts: what jobs with tracking.uri: http://host:port do."""
    import urllib.request

    from ssaseg.tracking import RunTracker

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "ssaseg", "tracking-server", "--host", "127.0.0.1", "--port",
         str(port), "--backend-store", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts",
         str(tmp_path / "artifacts")],
        cwd=REPO, stdout=(tmp_path / "server.log").open("w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        def healthy() -> bool:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    return r.status == 200
            except OSError:
                return False

        _wait_for(healthy, 120, "mlflow server", [tmp_path / "server.log"])
        uri = f"http://127.0.0.1:{port}"
        run_dir = tmp_path / "run"
        tracker = RunTracker(uri, run_dir, experiment="synthetic", run_name="m/c/seed0",
                             params={"train": {"iters": 6}})
        tracker.log_metrics({"loss": 0.5}, step=3)
        (run_dir / "table.csv").write_text("class,iou\n")
        tracker.log_artifact(run_dir / "table.csv")
        tracker.finish()
        again = RunTracker(uri, run_dir)  # a later job re-opens the run from its id file
        run = again.client.get_run(again.run_id)
        assert run.data.metrics["loss"] == 0.5 and run.data.params["train.iters"] == "6"
        assert [a.path for a in again.client.list_artifacts(again.run_id)] == ["table.csv"]
        assert list((tmp_path / "artifacts").rglob("table.csv"))  # stored by the server
    finally:
        # the server's PID is the command's (exec); its workers share its process group
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
