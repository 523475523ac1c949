"""Growing back under Slurm (tests/slurm_cluster.py: emulated nodes on this host).

A node whose slurmd is killed loses its rank: the agent shrinks the run onto the other nodes
(`srun --exclude`). When its slurmd is back, still in the allocation, the agent's probe (`srun
--nodelist=NODE --overlap phalanx probe`) reaches the channel, the node leaves --exclude, and
the run grows back to its first size at a step boundary. SlurmdTimeout is long here, so that
slurmctld does not mark the node down (and take it out of the job: a node that failed leaves a
--no-kill allocation for good) in the seconds its slurmd is away."""
import json
import subprocess
import time

import pytest

from conftest import run
from drills import assert_committed_like, rows
from slurm_cluster import slurm_factory  # noqa: F401 (fixture)

pytestmark = pytest.mark.cluster  # conftest.py: the sanitizer pass leaves these out

MODEL = ["--layers", "2", "--heads", "2", "--dim", "32", "--seq-len", "16", "--seed", "5",
         "--micro-batch", "2", "--global-batch", "12", "--threads", "1", "--quiet"]
STEPS = 300
HANG_GUARD_S = 400  # only catches a hang
CORPUS = (30000, 9)  # characters, seed: conftest.py's corpus


def train_args(corpus, out):
    out.mkdir(parents=True, exist_ok=True)
    return ["--data", corpus / "train.bin", *MODEL, "--steps", STEPS, "--metrics", out / "metrics.jsonl",
            "--ckpt-dir", out / "ckpt", "--ckpt-every", 1]


def wait_for(predicate, job, what):
    """Polls until predicate() (the job's own progress: metrics rows), bounded by the hang
    guard; the job must still run."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not predicate():
        assert job.poll() is None, f"the job ended before {what}: {job.communicate()}"
        assert time.monotonic() < deadline, f"no {what} within {HANG_GUARD_S} s"
        time.sleep(0.1)


def test_a_node_whose_slurmd_returns_rejoins_and_the_run_grows_back(
        phalanx, corpus, slurm_factory, tmp_path):
    cluster = slurm_factory(nodes=["pn1", "pn2", "pn3"], slurmd_timeout=300)
    reference = tmp_path / "reference"
    r = run([phalanx, "train", *train_args(corpus, reference)], timeout=HANG_GUARD_S)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "run"
    # rank 0 of the survivors sleeps 9 step times after each step (no CPU): their attempt
    # outlasts the slurmd restart and two probes
    cmd = ["salloc", "-N", 3, "--no-kill", phalanx, "run", "-n", 3, "--elastic",
           "--ranks-per-node", 1, "--heartbeat-timeout", 30, "--rejoin-every", 1,
           "--inject", "slow:0*10#1", "--report", out / "report.json", "--",
           *train_args(corpus, out), "--dp", 3]
    env = cluster.env({"OMPI_MCA_btl_tcp_if_include": "127.0.0.0/8"})
    job = subprocess.Popen([str(c) for c in cmd], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(rows(out)) >= 5, job, "5 steps")
        assert cluster.node_processes("pn2"), "no rank on pn2"
        cluster.kill_node("pn2")
        wait_for(lambda: any(x["world"] == 2 for x in rows(out)), job, "a step on 2 ranks")
        cluster.start_node("pn2", wait=False)
        stdout, stderr = job.communicate(timeout=HANG_GUARD_S)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    assert job.returncode == 0, stderr
    report = json.loads((out / "report.json").read_text())
    worlds = [a["world"] for a in report["attempts"]]
    assert worlds == [3, 2, 3], stderr
    assert report["attempts"][0]["failure"]["node"] == "pn2"
    assert "host pn2 answered 2 probes in a row: healthy again" in stderr
    (grow,) = report["grows"]
    assert grow["hosts"] == "pn2" and grow["steps_recomputed"] == 0, grow
    assert report["samples"]["lost"] == 0 and report["samples"]["duplicated"] == 0
    assert_committed_like(rows(out), rows(reference), STEPS)
