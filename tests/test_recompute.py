"""Activation recomputation (--recompute attn|full) changes what each layer
keeps between its forward and backward passes, never what they compute: the
kernels are deterministic, so every metric and every parameter bit must equal
the run without it, at 1 rank, across pipeline stages (1F1B, several
micro-batches in flight) and under Ulysses sequence parallelism (where the
full recomputation reruns the all-to-alls)."""
import json

import pytest

from conftest import run
from runs import TIMINGS

MODEL = ["--layers", "4", "--heads", "4", "--dim", "32", "--seq-len", "32", "--seed", "7"]
RUN = MODEL + ["--global-batch", "16", "--micro-batch", "2", "--steps", "6", "--quiet"]
MEMORY = {"activation_mib"}  # what recomputation is for: it must change
CORPUS = (30000, 6)  # characters, seed: conftest.py's corpus


def train(phalanx, corpus, out, ranks, layout, recompute):
    """Returns (metrics rows without wall-clock or memory fields, the bytes of
    every --dump-params file, the rows' activation MiB)."""
    out.mkdir()
    args = ["--data", corpus / "train.bin", *RUN, *layout, "--recompute", recompute,
            "--metrics", out / "metrics.jsonl", "--dump-params", out / "params.bin"]
    cmd = [phalanx, "train", *args] if ranks == 1 else [phalanx, "run", "-n", ranks, "--", *args]
    result = run(cmd)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    kept = [{k: v for k, v in r.items() if k not in TIMINGS | MEMORY} for r in rows]
    dumps = {p.name: p.read_bytes() for p in sorted(out.glob("params.bin*"))}
    return kept, dumps, [r["activation_mib"] for r in rows]


@pytest.mark.parametrize("ranks,layout", [
    (1, []),
    (2, ["--pp", "2"]),
    (2, ["--sp", "2"]),
], ids=["1rank", "pp2", "sp2"])
def test_recompute_is_bit_identical_and_saves_memory(phalanx, corpus, tmp_path, ranks, layout):
    none = train(phalanx, corpus, tmp_path / "none", ranks, layout, "none")
    assert len(none[0]) == 6 and "params.bin" in none[1]
    mib = {"none": none[2][0]}
    for mode in ("attn", "full"):
        rows, dumps, memory = train(phalanx, corpus, tmp_path / mode, ranks, layout, mode)
        assert rows == none[0], mode  # losses, grad norms, lr, batch: exactly equal
        assert dumps.keys() == none[1].keys()
        for name in dumps:
            assert dumps[name] == none[1][name], f"{mode}: {name} differs"
        mib[mode] = memory[0]
    # the report of rank 0 (pp: the first stage, which keeps the most in flight)
    assert mib["none"] > mib["attn"] > mib["full"], mib


def test_full_recompute_keeps_one_layer_of_intermediates(phalanx, corpus, tmp_path):
    """Eight layers instead of two: with full recomputation the memory grows
    only by the kept layer inputs; without it by whole layers' intermediates."""
    def mib(layers, mode):
        out = tmp_path / f"{layers}-{mode}"
        out.mkdir()
        result = run([phalanx, "train", "--data", corpus / "train.bin", "--layers", layers,
                      "--heads", "4", "--dim", "32", "--seq-len", "32", "--global-batch", "2",
                      "--micro-batch", "2", "--steps", "1", "--quiet", "--recompute", mode,
                      "--metrics", out / "m.jsonl"])
        assert result.returncode == 0, result.stderr
        return json.loads((out / "m.jsonl").read_text())["activation_mib"]
    growth_none = mib(8, "none") - mib(2, "none")
    growth_full = mib(8, "full") - mib(2, "full")
    # a layer's intermediates are ~20 x [B,T,C] plus attention; its input is 1 x [B,T,C]
    assert growth_full * 10 < growth_none, (growth_full, growth_none)


def test_full_recompute_cuts_activation_memory_4x(phalanx, corpus, tmp_path):
    """The issue's shape halved (seq = width, 8 heads, 8 layers, micro-batch 1):
    full recomputation keeps at most a quarter of the activation memory of
    none. One whole layer of intermediates in the workspace (probabilities
    and MLP side by side) would leave it at 3.9x."""
    def mib(mode):
        out = tmp_path / mode
        out.mkdir()
        result = run([phalanx, "train", "--data", corpus / "train.bin", "--layers", "8",
                      "--heads", "8", "--dim", "256", "--seq-len", "256", "--global-batch", "1",
                      "--micro-batch", "1", "--steps", "1", "--quiet", "--recompute", mode,
                      "--metrics", out / "m.jsonl"])
        assert result.returncode == 0, result.stderr
        return json.loads((out / "m.jsonl").read_text())["activation_mib"]
    none, full = mib("none"), mib("full")
    assert none >= 4 * full, (none, full)


@pytest.mark.parametrize("value", ["some", "", "FULL"])
def test_bad_recompute_mode(phalanx, corpus, value):
    result = run([phalanx, "train", "--data", corpus / "train.bin", *RUN, "--recompute", value],
                 timeout=60)
    assert result.returncode == 2, result.stderr
    assert "--recompute" in result.stderr and "none, attn or full" in result.stderr, result.stderr
