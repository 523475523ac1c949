"""Numerics of the CPU kernels that the speed work (issue 22) touched.

- Any --threads trains the same run bit for bit (kernels.h promises it: each
  product's output block is computed by one thread over the whole inner
  dimension, elementwise kernels compute a lane as the scalar code does).
"""
import json

import numpy as np
import pytest

from conftest import run
from shards import structured_text, text_tokens, write_shard

# seq 100: two row blocks of the causal attention (64 rows each), the second partial
MODEL = ["--layers", "2", "--heads", "2", "--dim", "32", "--seq-len", "100",
         "--micro-batch", "2", "--global-batch", "4", "--quiet"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    write_shard(d / "train_000.bin", text_tokens(structured_text(20000, seed=1)))
    write_shard(d / "val_000.bin", text_tokens(structured_text(6000, seed=3)))
    return d


def train(phalanx, corpus, tmp_path, name, *extra):
    metrics, params = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.params"
    result = run([phalanx, "train", "--data", f"{corpus}/train_*.bin", *MODEL,
                  "--metrics", metrics, "--dump-params", params, *extra])
    assert result.returncode == 0, result.stderr
    losses = [json.loads(line)["loss"] for line in metrics.read_text().splitlines()]
    return losses, params.read_bytes()


def test_any_thread_count_trains_bit_identically(phalanx, corpus, tmp_path):
    one = train(phalanx, corpus, tmp_path, "one", "--steps", "4", "--threads", "1")
    two = train(phalanx, corpus, tmp_path, "two", "--steps", "4", "--threads", "2")
    three = train(phalanx, corpus, tmp_path, "three", "--steps", "4", "--threads", "3")
    assert one[0] == two[0] == three[0]
    assert one[1] == two[1] == three[1]
    assert np.all(np.isfinite(one[0]))
