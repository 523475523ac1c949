"""Adaptive batch sizing end to end: the batch grows from the noise-scale
estimate, identically in every layout (the estimate uses the step's first
micro-batch, the same samples everywhere), with losses within 1e-5 relative
(float32 reduction order only), and bad settings are refused."""
import numpy as np
import pytest

from conftest import run
from runs import assert_same_run, launch, without_timings

# eta 0.15: grow while batch < 44 x noise scale (~0.6 early on), so the batch moves at once
RUN = ["--layers", "2", "--heads", "2", "--dim", "32", "--seq-len", "32", "--seed", "2",
       "--micro-batch", "4", "--global-batch", "16", "--steps", "12", "--quiet",
       "--batch-policy", "adaptive", "--max-global-batch", "64", "--batch-quantum", "16",
       "--batch-check", "2", "--batch-eta", "0.15"]
CORPUS = (60000, 6)  # characters, seed: conftest.py's corpus


def test_batch_grows_and_metrics_carry_it(phalanx, corpus, tmp_path):
    rows, _, _ = launch(phalanx, tmp_path, 1, ["--data", corpus / "train.bin", *RUN])
    batches = [r["global_batch"] for r in rows]
    assert batches[0] == 16 and batches[-1] > 16, batches
    assert batches == sorted(batches), "the batch never shrinks"
    assert all(b % 16 == 0 and b <= 64 for b in batches)
    assert [r["samples"] for r in rows] == [sum(batches[: i + 1]) for i in range(len(rows))]
    measured = [r for r in rows if r.get("noise_measured")]
    assert [r["step"] for r in measured] == list(range(1, len(rows) + 1, 2))
    # the estimate is in the metrics at every step once it exists
    assert all("noise_scale" in r for r in rows[rows.index(measured[0]):])
    # LR follows sqrt(batch / 16) on top of the schedule
    grown = next(r for r in rows if r["global_batch"] > 16)
    assert grown["lr"] > rows[0]["lr"] * 0.5


def test_batch_trajectory_same_at_dp1_and_dp4(phalanx, corpus, tmp_path):
    one = launch(phalanx, tmp_path / "dp1", 1, ["--data", corpus / "train.bin", *RUN])
    four = launch(phalanx, tmp_path / "dp4", 4, ["--data", corpus / "train.bin", *RUN])
    assert [r["global_batch"] for r in one[0]] == [r["global_batch"] for r in four[0]]
    assert_same_run(one, four, rtol=1e-5)


@pytest.mark.parametrize("ranks,args,expected", [
    (1, ["--max-global-batch", "8"], "--max-global-batch 8 is below the start --global-batch 16"),
    (2, ["--max-global-batch", "36", "--dp", "2"], "--max-global-batch 36 is not a multiple of micro-batch x dp = 4 x 2 = 8"),
    (1, ["--batch-eta", "0"], "--batch-eta 0 must be > 0"),
    (1, ["--batch-eta", "-1"], "--batch-eta -1 must be > 0"),
])
def test_bad_batch_settings(phalanx, corpus, ranks, args, expected):
    cmd = ([phalanx, "train"] if ranks == 1 else [phalanx, "run", "-n", ranks, "--"])
    result = run([*cmd, "--data", corpus / "train.bin", *RUN, *args], timeout=60)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr, result.stderr


@pytest.mark.parametrize("ranks", [1, 4])
def test_batch_trajectory_survives_a_stop_and_resume(phalanx, corpus, tmp_path, ranks):
    """6 steps, stop, resume (at dp=1, and at dp=4 from a dp=1 checkpoint) to
    12: the same batches, noise-scale estimates and losses as the straight run
    (bit-exact in the same layout; 1e-5 relative at dp=4, float32 order only)."""
    whole = ["--data", corpus / "train.bin", *RUN, "--train-samples", "640"]
    straight = launch(phalanx, tmp_path / "straight", 1, whole)
    out, ckpt = tmp_path / "stopped", tmp_path / "ckpt"
    ckpt_args = ["--ckpt-dir", ckpt, "--ckpt-every", "3", "--ckpt-memory-dir", "none"]
    launch(phalanx, out, 1, [*whole, "--steps", "6", *ckpt_args])
    resumed = launch(phalanx, out, ranks, [*whole, *ckpt_args, "--resume", "latest"])
    rows, ref = resumed[0], straight[0]
    assert len(ref) == 12 and ref[5]["global_batch"] > 16  # grown before the stop
    assert [r["global_batch"] for r in rows] == [r["global_batch"] for r in ref]
    if ranks == 1:
        assert without_timings(rows) == without_timings(ref)
    else:
        assert_same_run(straight, resumed, rtol=1e-5)
        noise = [(r["step"], r["noise_scale"]) for r in rows if "noise_scale" in r]
        assert [s for s, _ in noise] == [r["step"] for r in ref if "noise_scale" in r]
        assert [r["step"] for r in rows if r.get("noise_measured")] == \
            [r["step"] for r in ref if r.get("noise_measured")]
        np.testing.assert_allclose([n for _, n in noise],
                                   [r["noise_scale"] for r in ref if "noise_scale" in r],
                                   rtol=1e-4)
