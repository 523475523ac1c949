"""Pipeline parallelism (1F1B) against one rank, at 1e-5 relative.

The pipeline changes where each layer runs, not what it computes: activations
cross stages bit for bit, so only the order of the gradient sums (over dp and
between the two copies of the tied embedding) differs from one rank; 1e-5
after 20 steps is well above that float32 noise and far below the effect of a
micro-batch processed twice or a gradient lost at a stage boundary."""
import numpy as np
import pytest

from runs import assert_layout_refused, assert_same_run, launch

MODEL = ["--layers", "4", "--heads", "2", "--dim", "32", "--seq-len", "32", "--seed", "3"]
RUN = MODEL + ["--global-batch", "32", "--micro-batch", "4", "--steps", "20", "--quiet"]
CORPUS = (40000, 8)  # characters, seed: conftest.py's corpus


def wte(params):
    return params[: 256 * 32]  # wte is the first tensor of the whole model


@pytest.mark.parametrize("ranks,layout", [
    (2, ["--pp", "2"]),
    (4, ["--pp", "4"]),
    (4, ["--dp", "2", "--pp", "2"]),
    (2, ["--pp", "2", "--pp-split", "3,1"]),
    (3, ["--pp", "3", "--pp-split", "1,2,1"]),
], ids=["pp2", "pp4", "dp2xpp2", "pp2-split3,1", "pp3-split1,2,1"])
def test_pipeline_matches_one_rank(phalanx, corpus, tmp_path, reference, ranks, layout):
    result = launch(phalanx, tmp_path, ranks, ["--data", corpus / "train.bin", *RUN, *layout])
    assert_same_run(reference, result, rtol=1e-5)
    # both copies of the tied embedding match the single-rank wte (and each other)
    _, params, tied = result
    scale = np.abs(reference[1]).max()
    np.testing.assert_allclose(tied, wte(reference[1]), rtol=1e-5, atol=1e-5 * scale)
    assert np.array_equal(tied, wte(params))


def test_live_activations_per_stage_at_most_stages_minus_index(phalanx, corpus, tmp_path):
    rows, _, _ = launch(phalanx, tmp_path, 4, ["--data", corpus / "train.bin", *MODEL,
                                               "--global-batch", "32", "--micro-batch", "4",
                                               "--steps", "2", "--pp", "4", "--quiet"])
    for row in rows:
        live = row["live_activations"]
        assert len(live) == 4
        # 8 micro-batches > 4 stages: the 1F1B bound is reached exactly
        assert live == [4 - i for i in range(4)], live


@pytest.mark.parametrize("ranks,args,expected", [
    (4, ["--layers", "2", "--pp", "4"], "more stages than the model's 2 layers"),
    (2, ["--pp", "2", "--pp-split", "2,1"], "--pp-split sums to 3 layers but the model has --layers 4"),
    (2, ["--pp", "2", "--pp-split", "4,0"], "gives stage 1 0 layers"),
    (2, ["--pp", "2", "--pp-split", "1,1,2"], "--pp-split has 3 entries but there are 2 pipeline stages"),
])
def test_bad_pipeline_split(phalanx, corpus, ranks, args, expected):
    assert_layout_refused(phalanx, ranks, ["--data", corpus / "train.bin", *RUN, *args], expected)
