"""ZeRO-1 (--zero 1): the optimizer state and its update sharded over the
dp x sp replicas. It is the same algorithm as --zero 0 (LAMB's trust ratio
and the clipping norm come from partial squares summed over the group), so
over 10 steps losses and parameters match the unsharded run in the same
layout to 1e-5 relative: the reduce-scatter adds the same gradients in
another order (float32 noise, ~1e-7), while a wrong shard, a lost piece or a
per-piece trust ratio changes the parameters at the 1e-3 level."""
import json

import pytest

from conftest import run
from runs import assert_same_run, launch
from shards import structured_text, text_tokens, write_shard

MODEL = ["--layers", "2", "--heads", "4", "--dim", "32", "--seq-len", "32", "--seed", "11"]
RUN = MODEL + ["--global-batch", "16", "--micro-batch", "2", "--steps", "10", "--quiet"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    write_shard(d / "train.bin", text_tokens(structured_text(30000, seed=12)))
    return d


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
])
def test_bad_zero(phalanx, corpus, tmp_path, args, expected):
    result = run([phalanx, "train", "--data", corpus / "train.bin", *RUN, *args], timeout=60)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr, result.stderr
