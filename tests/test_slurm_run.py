"""`phalanx run` inside a real Slurm allocation (a private one-host cluster
started by the fixture): it must launch through srun and reproduce the mpirun
run exactly in layout terms (same dp=2 run, losses within 1e-5 relative: the
ranks compute the same sums; only the launcher differs)."""
import json

import numpy as np
import pytest

from runs import launch
from shards import structured_text, text_tokens, write_shard
from slurm_cluster import slurm  # noqa: F401  (fixture)

ARGS = ["--layers", "2", "--heads", "2", "--dim", "32", "--seq-len", "32", "--seed", "9",
        "--global-batch", "16", "--micro-batch", "4", "--steps", "8", "--quiet"]


def test_phalanx_run_in_an_allocation_uses_srun_and_matches_mpirun(phalanx, slurm, tmp_path):
    write_shard(tmp_path / "train.bin", text_tokens(structured_text(20000, seed=3)))
    train = ["--data", str(tmp_path / "train.bin"), *ARGS]
    reference, _, _ = launch(phalanx, tmp_path / "mpirun", 2, train)

    metrics = tmp_path / "slurm.jsonl"
    result = slurm.run(["salloc", "-n", "2", phalanx, "run", "-n", "2", "--", *train,
                        "--metrics", str(metrics)], timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "with srun in Slurm job" in result.stderr, result.stderr
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    np.testing.assert_allclose([r["loss"] for r in rows], [r["loss"] for r in reference],
                               rtol=1e-5, atol=0)
