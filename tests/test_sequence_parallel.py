"""Sequence parallelism (Ulysses all-to-all) and the full dp x pp x sp grid,
against one rank at 1e-5 relative over 10 steps, with micro-batch 2 (the
all-to-all layouts have a known bug class that only shows with B > 1).

Ulysses moves q, k, v and the attention output between ranks unchanged; the
results differ from one rank only by the order of the gradient sums over
dp x sp (float32 noise, ~1e-7 per step), so 1e-5 catches any token or head
that lands in the wrong place (which changes losses at the 1e-3 level)."""
import pytest

from conftest import run
from runs import assert_layout_refused, assert_same_run, launch

MODEL = ["--layers", "2", "--heads", "4", "--dim", "32", "--seq-len", "32", "--seed", "5"]
RUN = MODEL + ["--global-batch", "8", "--micro-batch", "2", "--steps", "10", "--quiet"]
CORPUS = (30000, 4)  # characters, seed: conftest.py's corpus


@pytest.mark.parametrize("ranks,layout", [
    (2, ["--sp", "2"]),
    (4, ["--sp", "4"]),
    (4, ["--dp", "2", "--sp", "2"]),
    (4, ["--pp", "2", "--sp", "2"]),
    (8, ["--dp", "2", "--pp", "2", "--sp", "2"]),
], ids=["sp2", "sp4", "dp2xsp2", "pp2xsp2", "dp2xpp2xsp2"])
def test_sequence_parallel_matches_one_rank(phalanx, corpus, tmp_path, reference, ranks, layout):
    result = launch(phalanx, tmp_path, ranks, ["--data", corpus / "train.bin", *RUN, *layout])
    assert_same_run(reference, result, rtol=1e-5)


def test_activation_memory_falls_with_sp(phalanx, corpus, tmp_path):
    """Attention over a 256-token sequence dominates; each rank keeps 1/sp of it."""
    mib = {}
    for sp in (1, 2, 4):
        result = run([phalanx, "run", "-n", sp, "--", "--data", corpus / "train.bin",
                      "--layers", "1", "--heads", "4", "--dim", "32", "--seq-len", "256",
                      "--micro-batch", "1", "--global-batch", "1", "--steps", "1", "--sp", sp])
        assert result.returncode == 0, result.stderr
        mib[sp] = float(result.stdout.split("activation memory ")[1].split(" MiB")[0])
    assert 0.4 < mib[2] / mib[1] < 0.6 and 0.2 < mib[4] / mib[1] < 0.3, mib


@pytest.mark.parametrize("ranks,args,expected", [
    (3, ["--sp", "3", "--seq-len", "33"], "--heads 4 is not divisible by sp = 3"),
    (4, ["--sp", "4", "--seq-len", "30"], "--seq-len 30 is not divisible by sp = 4"),
])
def test_sp_must_divide_heads_and_sequence(phalanx, corpus, ranks, args, expected):
    assert_layout_refused(phalanx, ranks, ["--data", corpus / "train.bin", *RUN, *args], expected)
