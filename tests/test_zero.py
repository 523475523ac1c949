"""ZeRO-1 (--zero 1): the optimizer state and its update sharded over the
dp x sp replicas. It is the same algorithm as --zero 0 (LAMB's trust ratio
and the clipping norm come from partial squares summed over the group), so
over 10 steps losses and parameters match the unsharded run in the same
layout to 1e-5 relative: the reduce-scatter adds the same gradients in
another order (float32 noise, ~1e-7), while a wrong shard, a lost piece or a
per-piece trust ratio changes the parameters at the 1e-3 level."""
import json
import shutil

import h5py
import numpy as np
import pytest

from conftest import run
from runs import assert_same_run, launch, without_timings

MODEL = ["--layers", "2", "--heads", "4", "--dim", "32", "--seq-len", "32", "--seed", "11"]
RUN = MODEL + ["--global-batch", "16", "--micro-batch", "2", "--steps", "10", "--quiet"]
CORPUS = (30000, 12)  # characters, seed: conftest.py's corpus


def both(phalanx, corpus, tmp_path, ranks, args):
    """(--zero 0 run, --zero 1 run) of the same arguments."""
    common = ["--data", corpus / "train.bin", *RUN, *args]
    return (launch(phalanx, tmp_path / "zero0", ranks, [*common, "--zero", "0"]),
            launch(phalanx, tmp_path / "zero1", ranks, [*common, "--zero", "1"]))


@pytest.mark.parametrize("dp", [2, 4])
@pytest.mark.parametrize("optim", ["lamb", "adamw"])
@pytest.mark.parametrize("clip", ["1.0", "0"], ids=["clip", "noclip"])
def test_zero1_matches_zero0(phalanx, corpus, tmp_path, dp, optim, clip):
    unsharded, sharded = both(phalanx, corpus, tmp_path, dp,
                              ["--dp", str(dp), "--optim", optim, "--clip", clip])
    assert_same_run(unsharded, sharded, rtol=1e-5)
    if clip != "0":  # the runs clip: the norm is well above 1.0 at the start
        assert unsharded[0][0]["grad_norm"] > 1.0


@pytest.mark.parametrize("layout", [["--dp", "2", "--pp", "2"], ["--dp", "2", "--sp", "2"]],
                         ids=["dp2xpp2", "dp2xsp2"])
def test_zero1_matches_zero0_with_pipeline_and_sequence_parallel(phalanx, corpus, tmp_path,
                                                                 layout):
    unsharded, sharded = both(phalanx, corpus, tmp_path, 4, layout)
    assert_same_run(unsharded, sharded, rtol=1e-5)
    if "--pp" in layout:  # the two copies of the tied embedding stay one
        _, params, tied = sharded
        scale = abs(params).max()
        assert abs(tied - params[: tied.size]).max() <= 1e-6 * scale


@pytest.mark.parametrize("layout", [["--dp", "4"], ["--dp", "2", "--pp", "2"],
                                    ["--dp", "2", "--sp", "2"]],
                         ids=["dp4", "dp2xpp2", "dp2xsp2"])
def test_zero1_with_small_buckets_overlapped_matches_zero0(phalanx, corpus, tmp_path, layout):
    """--grad-bucket 3000 makes 6-8 buckets per stage: their reduce-scatters
    start during the backward pass, more than ZERO_SLOTS of them (a launch
    waits for its slot's previous bucket), the tied wte's bucket last."""
    unsharded, sharded = both(phalanx, corpus, tmp_path, 4, [*layout, "--grad-bucket", "3000"])
    assert_same_run(unsharded, sharded, rtol=1e-5)


def test_optimizer_memory_per_rank_is_one_over_replicas(phalanx, corpus, tmp_path):
    unsharded, sharded = both(phalanx, corpus, tmp_path, 4, ["--dp", "4"])
    full, shard = unsharded[0][0]["optimizer_mib"], sharded[0][0]["optimizer_mib"]
    # rows split evenly but not exactly: within 5% of a quarter
    assert abs(shard - full / 4) <= 0.05 * full / 4, (full, shard)


def test_zero1_on_one_replica_warns_and_runs_unsharded(phalanx, corpus, tmp_path):
    out = tmp_path / "one"
    out.mkdir()
    result = run([phalanx, "train", "--data", corpus / "train.bin", *MODEL, "--steps", "2",
                  "--zero", "1", "--metrics", out / "m.jsonl"])
    assert result.returncode == 0, result.stderr
    assert "--zero 1 has no effect with dp x sp = 1" in result.stderr, result.stderr
    rows = [json.loads(line) for line in (out / "m.jsonl").read_text().splitlines()]
    assert len(rows) == 2


@pytest.mark.parametrize("args,expected", [
    (["--zero", "2"], "--zero 2 is not implemented"),
    (["--zero", "3"], "--zero 3 is not implemented"),
    (["--zero", "4"], "--zero"),
    (["--zero", "one"], "--zero"),
    (["--zero", "1", "--device", "cuda"], "--zero 1 is not implemented for --device cuda"),
    (["--grad-bucket", "0"], "--grad-bucket"),
    (["--grad-bucket", "4k"], "--grad-bucket"),
])
def test_bad_zero(phalanx, corpus, tmp_path, args, expected):
    result = run([phalanx, "train", "--data", corpus / "train.bin", *RUN, *args], timeout=60)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr, result.stderr


# ---------------------------------------------------------------------------
# Checkpoints of ZeRO-1 runs. Each rank writes its shard of m and v as
# fragments of the logical tensors, so a checkpoint is the same whatever wrote
# it: it resumes in any layout, with or without --zero, and h5py reads m and v
# whole. The reference is the uninterrupted run (dp=4, --zero 1); a resume in
# its layout is bit-exact, one in another layout or sharding differs only in
# the order of float32 sums (1e-5). Moments lost or misplaced on resume (zeros,
# another rank's rows) move the parameters at the 1e-3 level.

STEPS, HALF = 20, 10


def ckpt_run(phalanx, corpus, out, ranks, layout, *extra):
    """launch() with checkpoints every 5 steps in out/ckpt; `extra` holds
    --steps and, for a resume, --resume latest."""
    args = ["--data", corpus / "train.bin", *MODEL, "--global-batch", "16", "--micro-batch",
            "2", "--quiet", *layout, "--ckpt-dir", out / "ckpt", "--ckpt-every", "5",
            "--ckpt-memory-dir", "none", *extra]
    return launch(phalanx, out, ranks, args)


def first_half(phalanx, corpus, out, ranks, layout):
    """Steps 1-10 of the 20-step schedule; checkpoints at steps 5 and 10."""
    ckpt_run(phalanx, corpus, out, ranks, layout, "--steps", str(HALF), "--train-samples",
             str(STEPS * 16))
    return out


def second_half(phalanx, corpus, half, out, ranks, layout):
    """Copies the first half's directory and resumes it to step 20; returns
    (metrics rows of steps 11-20, final parameters, tied copy)."""
    shutil.copytree(half, out)
    rows, params, tied = ckpt_run(phalanx, corpus, out, ranks, layout, "--steps", str(STEPS),
                                  "--resume", "latest")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    return rows[HALF:], params, tied


DP4_ZERO = ["--dp", "4", "--zero", "1"]
DP2_PP2_ZERO_STAGED = ["--dp", "2", "--pp", "2", "--zero", "1", "--device", "cpu-staged"]


@pytest.fixture(scope="module")
def straight(phalanx, corpus, tmp_path_factory):
    """The uninterrupted run: 20 steps at dp=4 with --zero 1."""
    rows, params, tied = ckpt_run(phalanx, corpus, tmp_path_factory.mktemp("straight"), 4,
                                  DP4_ZERO, "--steps", str(STEPS))
    return rows[HALF:], params, tied


@pytest.fixture(scope="module")
def zero_half(phalanx, corpus, tmp_path_factory):
    return first_half(phalanx, corpus, tmp_path_factory.mktemp("zero_half"), 4, DP4_ZERO)


@pytest.fixture(scope="module")
def plain_half(phalanx, corpus, tmp_path_factory):
    """The same first half unsharded (--zero 0)."""
    return first_half(phalanx, corpus, tmp_path_factory.mktemp("plain_half"), 4, ["--dp", "4"])


@pytest.fixture(scope="module")
def pipeline_half(phalanx, corpus, tmp_path_factory):
    """A ZeRO first half at dp=2 x pp=2 (the tied wte: its two copies write
    halves of each rank's shard) on the staged device (the host mirror holds
    only the shard of m and v)."""
    return first_half(phalanx, corpus, tmp_path_factory.mktemp("pipeline_half"), 4,
                      DP2_PP2_ZERO_STAGED)


def test_zero_checkpoint_resumes_bit_exact_in_the_same_layout(phalanx, corpus, straight,
                                                               zero_half, tmp_path):
    rows, params, _ = second_half(phalanx, corpus, zero_half, tmp_path / "run", 4, DP4_ZERO)
    assert without_timings(rows) == without_timings(straight[0])
    assert np.array_equal(params, straight[1])


@pytest.mark.parametrize("ranks,layout", [
    (4, ["--dp", "2", "--pp", "2"]),
    (1, []),
    (4, ["--dp", "2", "--sp", "2", "--zero", "1"]),
], ids=["dp2xpp2", "dp1", "dp2xsp2-zero"])
def test_zero_checkpoint_resumes_in_another_layout(phalanx, corpus, straight, zero_half,
                                                   tmp_path, ranks, layout):
    resumed = second_half(phalanx, corpus, zero_half, tmp_path / "run", ranks, layout)
    assert_same_run(straight, resumed, rtol=1e-5)


def test_unsharded_checkpoint_resumes_with_zero(phalanx, corpus, straight, plain_half, tmp_path):
    resumed = second_half(phalanx, corpus, plain_half, tmp_path / "run", 4, DP4_ZERO)
    assert_same_run(straight, resumed, rtol=1e-5)


@pytest.mark.parametrize("ranks,layout", [(4, DP2_PP2_ZERO_STAGED), (4, ["--dp", "4"])],
                         ids=["same-layout", "dp4-unsharded"])
def test_zero_checkpoint_of_a_pipeline_resumes(phalanx, corpus, straight, pipeline_half,
                                               tmp_path, ranks, layout):
    resumed = second_half(phalanx, corpus, pipeline_half, tmp_path / "run", ranks, layout)
    assert_same_run(straight, resumed, rtol=1e-5)


def tensors(ckpt_step):
    with h5py.File(ckpt_step / "index.h5", "r") as index:
        return {kind + "/" + name: index[kind][name][...]
                for kind in ("params", "optim/m", "optim/v") for name in index[kind]}


@pytest.mark.parametrize("half", ["zero_half", "pipeline_half"])
def test_h5py_reads_sharded_moments_whole(plain_half, half, request):
    """m and v of every tensor, whole, as the unsharded run's (1e-5 of the
    tensor's scale); v is a sum of squares, so never negative."""
    expected = tensors(plain_half / "ckpt" / "step_00000010")
    got = tensors(request.getfixturevalue(half) / "ckpt" / "step_00000010")
    assert sorted(got) == sorted(expected)
    for key, want in expected.items():
        assert got[key].shape == want.shape, key
        scale = np.abs(want).max()
        np.testing.assert_allclose(got[key], want, rtol=1e-5, atol=1e-5 * scale, err_msg=key)
        assert scale > 0, key  # a lost share would read zeros (or NaN)
    assert all(np.all(v >= 0) for k, v in got.items() if k.startswith("optim/v/"))


@pytest.mark.parametrize("half", ["zero_half", "pipeline_half"])
@pytest.mark.parametrize("step", ["step_00000005", "step_00000010"])
def test_ckpt_verify_passes_on_zero_checkpoints(phalanx, half, step, request):
    path = request.getfixturevalue(half) / "ckpt" / step
    result = run([phalanx, "ckpt", "verify", path], timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every checksum good" in result.stdout


def test_resume_by_path_without_ckpt_dir(phalanx, corpus, straight, zero_half, tmp_path):
    """--resume PATH under --zero 1 without --ckpt-dir (crashed before: the
    unsharded moments it loaded into did not exist)."""
    out = tmp_path / "run"
    shutil.copytree(zero_half, out)
    args = ["--data", corpus / "train.bin", *MODEL, "--global-batch", "16", "--micro-batch",
            "2", "--quiet", *DP4_ZERO, "--steps", str(STEPS),
            "--resume", zero_half / "ckpt" / "step_00000010"]
    rows, params, _ = launch(phalanx, out, 4, args)
    assert without_timings(rows[HALF:]) == without_timings(straight[0])
    assert np.array_equal(params, straight[1])
