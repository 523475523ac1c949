"""Elastic recovery and failure drills under real mpirun (`phalanx drill`).

Every drill is compared with the fault-free run of the same command. After a
recovery the run continues in another layout (fewer replicas, more
accumulation, the global batch kept), so its losses differ from the
reference only by float32 reduction order; we hold them to 1e-4 relative
(the issue's bound; the layout tests see ~1e-6). Zero samples lost is
checked from the metrics file by the launcher's report and again here: the
committed trajectory (a resumed step replaces the rows after it) must
consume every global sample [0, total) exactly once.

The model is sized so that a step (~120 ms here) outlasts a checkpoint
flush, as it does at real scale: with a checkpoint after every step, at most
the one step in flight at the failure is recomputed."""
import json
import os
import re
import socket
import subprocess
import time

import numpy as np
import pytest

from conftest import ROOT, run
from slurm_cluster import slurm_factory  # noqa: F401  (fixture)

MODEL = ["--layers", "2", "--heads", "2", "--dim", "128", "--seq-len", "64", "--seed", "11",
         "--micro-batch", "4", "--global-batch", "24", "--threads", "1", "--quiet",
         "--lr", "3e-3", "--warmup", "3"]
STEPS = 30
CORPUS = (80000, 12)  # characters, seed: conftest.py's corpus


def train_args(corpus, out, *extra, steps=STEPS, memory="none"):
    return ["--data", corpus / "train.bin", *MODEL, "--steps", steps, "--ckpt-dir", out / "ckpt",
            "--ckpt-every", 1, "--ckpt-memory-dir", memory if memory == "none" else out / memory,
            "--metrics", out / "metrics.jsonl", *extra]


def drill(phalanx, out, ranks, events, *train, launcher=(), timeout=240):
    out.mkdir(parents=True, exist_ok=True)
    inject = [a for e in events for a in ("--inject", e)]
    result = run([phalanx, "drill", "-n", ranks, *inject, "--report", out / "report.json",
                  "--heartbeat-timeout", 3, *launcher, "--", *train], timeout=timeout)
    report = json.loads((out / "report.json").read_text()) \
        if (out / "report.json").exists() else None
    return result, report


def committed(out):
    """The committed trajectory: the last row written for each step, in order."""
    rows = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows = {s: v for s, v in rows.items() if s < r["step"]}
        rows[r["step"]] = r
    return [rows[s] for s in sorted(rows)]


def assert_no_sample_lost(rows, report):
    cursor = 0
    for r in rows:
        assert r["samples"] - r["global_batch"] == cursor, f"gap or overlap at step {r['step']}"
        cursor = r["samples"]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert cursor == STEPS * 24
    assert report["samples"]["lost"] == 0 and report["samples"]["duplicated"] == 0
    assert report["samples"]["consumed"] == cursor


def assert_matches_reference(rows, reference):
    np.testing.assert_allclose([r["loss"] for r in rows], [r["loss"] for r in reference],
                               rtol=1e-4, atol=0)


@pytest.fixture(scope="module")
def reference(phalanx, corpus, tmp_path_factory):
    """The fault-free run at dp=2 x pp=2."""
    out = tmp_path_factory.mktemp("reference")
    result = run([phalanx, "run", "-n", 4, "--", *train_args(corpus, out, "--dp", 2, "--pp", 2)])
    assert result.returncode == 0, result.stderr
    return committed(out)


def test_crash_drill_recovers_on_the_survivors(phalanx, corpus, reference, tmp_path):
    result, report = drill(phalanx, tmp_path, 4, ["crash:2@10"],
                           *train_args(corpus, tmp_path, "--dp", 2, "--pp", 2))
    assert result.returncode == 0, result.stderr
    assert report["outcome"] == "completed" and report["restarts"] == 1
    first, second = report["attempts"]
    assert first["layout"] == "2x2x1" and first["failure"]["kind"] == "crash"
    assert first["failure"]["rank"] == 2 and first["failure"]["how"] == "lost channel"
    assert second["world"] == 3 and second["layout"] == "3x1x1" and second["resume"]
    recovery = report["recoveries"][0]
    assert recovery["last_step_before"] == 9
    assert recovery["steps_recomputed"] <= 1, recovery
    assert recovery["mttr_s"] > 0 and recovery["ckpt_load_s"] > 0 and recovery["startup_s"] > 0
    parts = ("detect_s", "teardown_s", "relaunch_s", "startup_s", "ckpt_load_s")
    assert sum(recovery[k] for k in parts) < recovery["mttr_s"]  # then the first step
    print(f"crash drill: MTTR {recovery['mttr_s']:.2f} s ("
          + ", ".join(f"{k[:-2]} {recovery[k]:.3f}" for k in parts)
          + f"), steps recomputed {recovery['steps_recomputed']}")
    rows = committed(tmp_path)
    assert_no_sample_lost(rows, report)
    assert_matches_reference(rows, reference)
    # the plot script draws the drill next to the reference
    (tmp_path / "ref.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reference))
    png = tmp_path / "drill.png"
    plot = run(["/usr/bin/python3", ROOT / "scripts/plot-drill", tmp_path / "report.json",
                "--reference", tmp_path / "ref.jsonl", "--out", png])
    assert plot.returncode == 0, plot.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20000


def test_hang_drill_is_detected_within_the_heartbeat_timeout(phalanx, corpus, reference,
                                                              tmp_path):
    result, report = drill(phalanx, tmp_path, 4, ["hang:1@8"],
                           *train_args(corpus, tmp_path, "--dp", 2, "--pp", 2))
    assert result.returncode == 0, result.stderr
    failure = report["attempts"][0]["failure"]
    assert failure["kind"] == "hang" and failure["rank"] == 1
    recovery = report["recoveries"][0]
    assert recovery["detect_s"] <= 3 + 1, recovery  # heartbeat timeout 3 s, plus 1 s
    assert recovery["steps_recomputed"] <= 1
    rows = committed(tmp_path)
    assert_no_sample_lost(rows, report)
    assert_matches_reference(rows, reference)


def test_two_failures_one_during_recovery(phalanx, corpus, reference, tmp_path):
    """Rank 3 crashes at step 6; the relaunched world loses rank 0 at step 8,
    right after it resumed; the third attempt finishes on two ranks."""
    result, report = drill(phalanx, tmp_path, 4, ["crash:3@6", "crash:0@8#1"],
                           *train_args(corpus, tmp_path, "--dp", 2, "--pp", 2))
    assert result.returncode == 0, result.stderr
    assert report["restarts"] == 2 and report["outcome"] == "completed"
    assert [a["world"] for a in report["attempts"]] == [4, 3, 2]
    assert [r["rank"] for r in report["recoveries"]] == [3, 0]
    rows = committed(tmp_path)
    assert_no_sample_lost(rows, report)
    assert_matches_reference(rows, reference)


def test_kill_during_flush_resumes_from_the_previous_checkpoint(phalanx, corpus, reference,
                                                                 tmp_path):
    result, report = drill(phalanx, tmp_path, 4, ["flushkill:1@6"],
                           *train_args(corpus, tmp_path, "--dp", 2, "--pp", 2))
    assert result.returncode == 0, result.stderr
    assert report["attempts"][0]["failure"]["rank"] == 1
    assert report["attempts"][1]["resumed_step"] < 6  # step 6 was never committed
    rows = committed(tmp_path)
    assert_no_sample_lost(rows, report)
    assert_matches_reference(rows, reference)


def test_corrupt_checkpoint_found_at_recovery_falls_back(phalanx, corpus, reference, tmp_path):
    """Sync checkpoints make step 9 committed before step 10 starts; the drill
    flips a byte of its shard before the relaunch, which warns and resumes
    from step 8: step 9 is recomputed, nothing is lost."""
    result, report = drill(phalanx, tmp_path, 4, ["crash:2@10", "corrupt:9#1"],
                           *train_args(corpus, tmp_path, "--dp", 2, "--pp", 2,
                                       "--ckpt-mode", "sync", memory="shm"))
    assert result.returncode == 0, result.stderr
    assert "corrupted one byte of" in result.stderr and "step_00000009" in result.stderr
    assert "cannot resume from" in result.stderr
    recovery = report["recoveries"][0]
    assert recovery["resumed_step"] == 8 and recovery["steps_recomputed"] == 1
    rows = committed(tmp_path)
    assert_no_sample_lost(rows, report)
    assert_matches_reference(rows, reference)


def test_slow_rank_slows_the_run_without_a_failure(phalanx, corpus, reference, tmp_path):
    """Rank 3 sleeps 5 times its own step time after each step, and every
    rank waits for it. What that must cause: the slowed rank sleeps after every
    step (it says so), no other rank does; what it must not: a detected
    failure, a restart, or any change in the numbers. How much slower the job
    ran is the drill report's figure (its timeline), not something to assert
    on a loaded host."""
    steps = 6
    # Every rank waits for the slowed one and beats only as it progresses, so a
    # delay longer than --heartbeat-timeout is a hang by definition; on a loaded
    # host 6 steps' time can pass 3 s, hence a timeout that only a hang reaches.
    result, report = drill(phalanx, tmp_path, 4, ["slow:3*6"],
                           *train_args(corpus, tmp_path, "--dp", 2, "--pp", 2,
                                       "--train-samples", STEPS * 24, steps=steps),
                           launcher=["--heartbeat-timeout", 60])
    assert result.returncode == 0, result.stderr
    assert report["outcome"] == "completed" and report["restarts"] == 0, report
    assert not report["recoveries"] and "failure" not in report["attempts"][0]
    slept = re.findall(r"rank (\d+): injected slowdown x6: slept ([0-9.]+) s after (\d+) steps",
                       result.stderr)
    assert [(rank, n) for rank, _, n in slept] == [("3", str(steps))], result.stderr
    assert float(slept[0][1]) > 0
    rows = committed(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    np.testing.assert_allclose([r["loss"] for r in rows], [r["loss"] for r in reference[:steps]],
                               rtol=0, atol=0)  # same layout: the same numbers


def test_below_min_ranks_stops_with_the_checkpoint_intact(phalanx, corpus, tmp_path):
    result, report = drill(phalanx, tmp_path, 4, ["node:0@5"],
                           *train_args(corpus, tmp_path, "--dp", 2, "--pp", 2),
                           launcher=["--ranks-per-node", 2, "--min-ranks", 3])
    assert result.returncode == 5, result.stderr
    assert "2 rank(s) left, below --min-ranks 3" in result.stderr
    assert report["outcome"] == "too few ranks"
    assert report["attempts"][0]["failure"]["rank"] in (0, 1)  # node 0: ranks 0 and 1
    # every committed checkpoint left is whole; the flush the kill interrupted
    # (if any) was never committed, and only it may be incomplete
    verify = run([phalanx, "ckpt", "verify", tmp_path / "ckpt"])
    assert verify.returncode in (0, 3), verify.stdout
    lines = verify.stdout.splitlines()
    complete = [line for line in lines if ": complete, every checksum good" in line]
    assert complete and len(complete) + len([l for l in lines if ": incomplete: " in l]) == \
        len(lines), verify.stdout
    assert len(lines) - len(complete) <= 1, verify.stdout


def test_restarts_used_up(phalanx, corpus, tmp_path):
    result, report = drill(phalanx, tmp_path, 2, ["crash:1@3"],
                           *train_args(corpus, tmp_path, "--dp", 2, steps=8),
                           launcher=["--max-restarts", 0])
    assert result.returncode == 4, result.stderr
    assert "--max-restarts 0 used up" in result.stderr
    assert report["outcome"] == "restarts used up"


def test_no_layout_for_the_survivors_says_why(phalanx, corpus, tmp_path):
    # one layer, one head, 3 micro-batches: 2 ranks fit no axis (dp 2 does not
    # divide 3 micro-batches, pp 2 needs 2 layers, sp 2 needs 2 heads)
    args = ["--data", corpus / "train.bin", "--layers", 1, "--heads", 1, "--dim", 32,
            "--seq-len", 32, "--micro-batch", 4, "--global-batch", 12, "--steps", 6, "--quiet", "--threads", 1,
            "--ckpt-dir", tmp_path / "ckpt", "--ckpt-every", 1, "--ckpt-memory-dir", "none"]
    result, report = drill(phalanx, tmp_path, 3, ["crash:2@3"], *args,
                           launcher=["--min-ranks", 2])
    assert result.returncode == 5, result.stderr
    assert "no layout of 2 to 2 rank(s) fits this run" in result.stderr
    assert report["outcome"] == "no valid layout"


@pytest.mark.parametrize("launcher,message", [
    (["--min-ranks", 5], "--min-ranks 5 is above the job's 4 rank(s)"),
    (["--ranks-per-node", 3], "--ranks-per-node 3 does not divide -n 4"),
    (["--inject", "explode:1@3"], "--inject 'explode:1@3' is not an event"),
    (["--inject", "crash:1"], "--inject 'crash:1' is not an event"),
    (["--max-restarts", "-1"], "--max-restarts is -1: it must be between 0 and 63"),
])
def test_bad_elastic_options(phalanx, corpus, tmp_path, launcher, message):
    result = run([phalanx, "run", "-n", 4, "--elastic", *launcher, "--",
                  *train_args(corpus, tmp_path, "--dp", 2, "--pp", 2)])
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "ckpt").exists()  # nothing started


def test_malformed_fault_variable_is_refused_by_the_worker(phalanx, corpus, tmp_path):
    env = dict(os.environ, PHALANX_FAULTS="crash:one@two")
    result = subprocess.run([phalanx, "train", "--data", corpus / "train.bin", *MODEL,
                             "--steps", "1"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "PHALANX_FAULTS: 'crash:one@two' is not crash:RANK@STEP" in result.stderr


# ---------------------------------------------------------------------------
# Slurm: a node of a three-node (emulated) cluster is lost mid-run

def test_slurm_node_loss_drill(phalanx, corpus, reference, slurm_factory, tmp_path):
    """pn2's slurmd, its step daemon and its task are SIGKILLed at step ~5; the
    agent (inside `salloc --no-kill`) sees rank 1's channel close, stops the
    step, and relaunches `srun --no-kill --exclude=pn2` on pn1 and pn3."""
    cluster = slurm_factory(nodes=["pn1", "pn2", "pn3"])
    out = tmp_path / "run"
    out.mkdir()
    cmd = ["salloc", "-N", 3, "--no-kill", phalanx, "run", "-n", 3, "--elastic",
           "--ranks-per-node", 1, "--heartbeat-timeout", 5, "--report", out / "report.json", "--",
           *train_args(corpus, out)]
    # emulated nodes share this host: Open MPI's TCP between them stays on loopback
    env = cluster.env({"OMPI_MCA_btl_tcp_if_include": "127.0.0.0/8"})
    job = subprocess.Popen([str(c) for c in cmd], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        metrics = out / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and job.poll() is None and \
                (not metrics.exists() or len(metrics.read_text().splitlines()) < 5):
            time.sleep(0.1)
        assert job.poll() is None, job.communicate()
        assert cluster.node_processes("pn2"), "no rank on pn2"
        cluster.kill_node("pn2")
        stdout, stderr = job.communicate(timeout=180)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, stderr
    report = json.loads((out / "report.json").read_text())
    first, second = report["attempts"]
    assert first["failure"]["node"] == "pn2" and first["failure"]["kind"] == "crash"
    assert second["world"] == 2 and second["resume"]
    assert "with srun in Slurm job" in stderr
    rows = committed(out)
    assert_no_sample_lost(rows, report)
    assert_matches_reference(rows, reference)


# ---------------------------------------------------------------------------
# mpirun across hosts: a lost host is left out of the relaunch

def test_lost_host_is_left_out_of_the_mpirun_relaunch(phalanx, corpus, tmp_path):
    """Two host entries, both this machine under two names: the ranks report
    this host's name, so losing it leaves `localhost` alone for the relaunch."""
    host = socket.gethostname()
    args = train_args(corpus, tmp_path, "--dp", 2, steps=8)
    result, report = drill(phalanx, tmp_path, 2, ["crash:1@4"], *args,
                           launcher=["--hosts", f"{host}:1,localhost:1"])
    assert result.returncode == 0, result.stderr
    assert report["attempts"][1]["world"] == 1
    assert report["attempts"][0]["failure"]["node"] == host
    # the only host lost: nothing to relaunch on
    result, report = drill(phalanx, tmp_path / "alone", 2, ["crash:1@4"],
                           *train_args(corpus, tmp_path / "alone", "--dp", 2, steps=8),
                           launcher=["--hosts", f"{host}:2"])
    assert result.returncode == 5, result.stderr
    assert f"every host of --hosts is lost ({host})" in result.stderr
