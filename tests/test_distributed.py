"""`phalanx run` on several ranks (real mpirun, oversubscribed on this host).

Layout invariance is checked at 1e-5 relative: every layout sums the same
per-token gradients, only in another order (per-replica partial sums, then an
MPI allreduce), which moves float32 results by a few ulps per step; 1e-5 after
20 steps is well above that and far below a wrong share of samples or a
missing gradient (those move the loss at the 1e-3 level or more)."""
import json
import os
import re
import signal
import subprocess

import numpy as np
import pytest

from conftest import run
from runs import assert_same_run, launch, without_timings

MODEL = ["--layers", "2", "--heads", "2", "--dim", "32", "--seq-len", "32", "--seed", "7"]
RUN = MODEL + ["--global-batch", "32", "--micro-batch", "4", "--steps", "20", "--quiet"]
CORPUS = (40000, 5)  # characters, seed: conftest.py's corpus


def launch_standard(phalanx, corpus, out, ranks):
    return launch(phalanx, out, ranks, ["--data", corpus / "train.bin", *RUN])


@pytest.mark.parametrize("ranks", [2, 4])
def test_data_parallel_matches_one_rank(phalanx, corpus, tmp_path, reference, ranks):
    result = launch_standard(phalanx, corpus, tmp_path, ranks)
    assert_same_run(reference, result, rtol=1e-5)
    # not trivially equal: the reduction order really differs
    assert result[0][-1]["loss"] != 0


def test_same_layout_twice_is_bit_identical(phalanx, corpus, tmp_path):
    (rows_a, params_a, _), (rows_b, params_b, _) = (
        launch_standard(phalanx, corpus, tmp_path / name, 2) for name in ("a", "b"))
    assert without_timings(rows_a) == without_timings(rows_b)
    assert params_a.tobytes() == params_b.tobytes()


def test_one_progress_line_per_step(phalanx, corpus, tmp_path):
    result = run([phalanx, "run", "-n", "2", "--", "--data", corpus / "train.bin", *MODEL,
                  "--global-batch", "8", "--micro-batch", "4", "--steps", "3"])
    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert len(steps) == 3, result.stdout
    assert "dp=2 pp=1 sp=1 on 2 rank(s)" in result.stdout


# ---------------------------------------------------------------------------
# bad inputs: a clear message, a non-zero exit, no hang

def test_world_size_not_matching_the_layout(phalanx, corpus):
    result = run([phalanx, "run", "-n", "2", "--", "--data", corpus / "train.bin", *RUN,
                  "--dp", "4"], timeout=60)
    assert result.returncode == 2
    assert "dp x pp x sp = 4 x 1 x 1 = 4 ranks, but the world has 2" in result.stderr
    assert "valid layouts for 2 ranks: --dp 2 --pp 1 --sp 1" in result.stderr


def test_global_batch_not_divisible_by_micro_batch_times_dp(phalanx, corpus):
    result = run([phalanx, "run", "-n", "4", "--", "--data", corpus / "train.bin", *MODEL,
                  "--global-batch", "24", "--micro-batch", "4", "--dp", "4"], timeout=60)
    assert result.returncode == 2
    assert "--global-batch 24 is not divisible by micro-batch x dp = 4 x 4 = 16" in result.stderr


def test_missing_worker_binary(phalanx, corpus, tmp_path):
    result = run([phalanx, "run", "-n", "2", "--worker", tmp_path / "no-such-phalanx", "--",
                  "--data", corpus / "train.bin", *RUN], timeout=60)
    assert result.returncode != 0
    assert "no-such-phalanx" in result.stderr and "cannot be run" in result.stderr


def wrapper(tmp_path, phalanx, body):
    """A worker script: `body` runs first (with $RANK), then the real phalanx."""
    script = tmp_path / "worker.sh"
    script.write_text("#!/bin/bash\nRANK=${OMPI_COMM_WORLD_RANK:-$PMIX_RANK}\n"
                      f"{body}\nexec {phalanx} \"$@\"\n")
    script.chmod(0o755)
    return script


def test_missing_data_on_one_rank(phalanx, corpus, tmp_path):
    """Rank 1 sees no data (as on a node without the file system): every rank stops."""
    worker = wrapper(tmp_path, phalanx,
                     'if [ "$RANK" = 1 ]; then set -- "${@/train.bin/missing.bin}"; fi')
    result = run([phalanx, "run", "-n", "2", "--worker", worker, "--",
                  "--data", corpus / "train.bin", *RUN], timeout=120)  # a hang fails here
    assert result.returncode != 0
    assert "missing.bin" in result.stderr
    assert "1 rank(s) failed to start" in result.stderr


def test_rank_that_never_starts_is_bounded_by_the_timeout(phalanx, corpus, tmp_path):
    """Rank 1 would take 600 s to start: the run must end with status 3 by the
    start-up timeout (3 s), which says so; without it, the 120 s hang guard
    fails the test. How long it took is not asserted."""
    worker = wrapper(tmp_path, phalanx, 'if [ "$RANK" = 1 ]; then sleep 600; fi')
    result = run([phalanx, "run", "-n", "2", "--startup-timeout", "3", "--worker", worker,
                  "--", "--data", corpus / "train.bin", *RUN], timeout=120)
    assert result.returncode == 3
    # MPI_Init waits for every rank, so the others may not have said hello either
    assert re.search(r"only [01] of 2 ranks started within 3 s", result.stderr), result.stderr


def test_ctrl_c_stops_every_rank_cleanly(phalanx, corpus, tmp_path):
    proc = subprocess.Popen(
        [phalanx, "run", "-n", "2", "--", "--data", str(corpus / "train.bin"), *MODEL,
         "--global-batch", "8", "--micro-batch", "4", "--steps", "100000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        while first and not first.startswith("step "):
            first = proc.stdout.readline()
        assert first.startswith("step "), first
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "stopped by Ctrl-C after step" in err and "every rank exited cleanly" in err
    leftovers = subprocess.run(["pgrep", "-f", f"{corpus}/train.bin"], capture_output=True)
    assert leftovers.stdout == b"", leftovers.stdout


def test_a_collective_that_fails_on_one_rank_ends_the_job_under_plain_mpirun(
        phalanx, corpus, tmp_path):
    """Rank 1's allreduce at step 3 fails as a failure inside MPI would (PHALANX_FAULTS
    commfail:1@3), while rank 0 waits in it: rank 1 says why and ends the whole job
    (MPI_Abort), rather than agree on the failure with rank 0, which cannot answer, or
    close its checkpoints (ranks hung there before). The 120 s guard only catches a hang."""
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    metrics = tmp_path / "metrics.jsonl"
    cmd = ["mpirun", "-n", "2", "--oversubscribe", "--bind-to", "none", *root,
           "-x", "PHALANX_FAULTS", phalanx, "train", "--data", corpus / "train.bin", *RUN,
           "--metrics", metrics, "--ckpt-dir", tmp_path / "ckpt", "--ckpt-every", 1,
           "--ckpt-memory-dir", tmp_path / "memory"]  # an aborted job leaves its tier 1
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, PHALANX_FAULTS="commfail:1@3"))
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail("the ranks hung after the failed collective:\n" + err)
    assert proc.returncode != 0, err
    assert "rank 1: injected communication failure at step 3" in err, err
    assert "allreduce failed on rank 1 of 2: injected (commfail)" in err, err
    assert "this rank ends the job (MPI_Abort)" in err, err
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [1, 2], steps
