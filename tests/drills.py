"""What the drill and elastic-run tests read back (test_grow, test_network, test_buddy,
test_slurm_grow, test_slurm_sbatch): a run's metrics rows, its committed trajectory, the
drill's report, and the comparison with the fault-free run."""
import json

import numpy as np

from conftest import run

# The run that test_network and test_buddy train on emulated hosts (12 samples a step, one
# thread a rank: the hosts share this machine's cores)
MODEL = ["--layers", "2", "--heads", "2", "--dim", "32", "--seq-len", "16", "--seed", "5",
         "--micro-batch", "2", "--global-batch", "12", "--threads", "1", "--quiet"]
HANG_GUARD_S = 240  # only catches a hang


def train_args(corpus, out, *extra):
    """That run on corpus/train.bin, its metrics and final parameters written to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    return ["--data", corpus / "train.bin", *MODEL, "--metrics", out / "metrics.jsonl",
            "--dump-params", out / "params.bin", *extra]


def metrics_rows(path):
    """The rows of a metrics file as far as it is written: none while it does not exist yet,
    and not a last line still being written (the tests read it while the job runs)."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]


def rows(out):
    """The rows of out/metrics.jsonl, where train_args put them."""
    return metrics_rows(out / "metrics.jsonl")


def committed(all_rows):
    """The committed trajectory: the last row written for each step (a step that an attempt
    trained and the next attempt recomputed after its resume counts once)."""
    kept = {}
    for r in all_rows:
        kept = {s: v for s, v in kept.items() if s < r["step"]}
        kept[r["step"]] = r
    return [kept[s] for s in sorted(kept)]


def fault_free_rows(phalanx, corpus, out, steps):
    """The metrics rows of train_args' run of `steps` steps on one rank, without a fault (any
    layout trains the same run): what a drill's committed trajectory is compared with."""
    r = run([phalanx, "train", *train_args(corpus, out, "--steps", steps)])
    assert r.returncode == 0, r.stderr
    return rows(out)


def drill_report(out):
    """The --report of a drill in `out`, None when it wrote none."""
    path = out / "report.json"
    return json.loads(path.read_text()) if path.exists() else None


def assert_committed_like(all_rows, reference, steps):
    """Steps 1..steps committed once each, with the fault-free run's samples and its losses
    within 1e-4 relative (another layout sums in another order: float32 noise)."""
    got = committed(all_rows)
    assert [x["step"] for x in got] == list(range(1, steps + 1))
    assert [x["samples"] for x in got] == [x["samples"] for x in reference]
    np.testing.assert_allclose([x["loss"] for x in got], [x["loss"] for x in reference],
                               rtol=1e-4, atol=0)
