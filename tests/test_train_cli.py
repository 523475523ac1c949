"""`phalanx train` end to end: repeatability, learning, and every bad input of
the command line and the data (each must name the problem and exit non-zero)."""
import json

import numpy as np
import pytest

from conftest import run
from shards import structured_text, text_tokens, write_shard

TIMINGS = {"tokens_per_s", "step_ms", "grad_comm_ms"}  # wall-clock fields, never repeatable
TINY = ["--layers", "2", "--heads", "2", "--dim", "32", "--seq-len", "32",
        "--micro-batch", "4", "--global-batch", "8", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    write_shard(d / "train_000.bin", text_tokens(structured_text(20000, seed=1)))
    write_shard(d / "train_001.bin", text_tokens(structured_text(12000, seed=2)))
    write_shard(d / "val_000.bin", text_tokens(structured_text(6000, seed=3)))
    return d


def train(phalanx, corpus, tmp_path, *extra, name="run"):
    metrics, params = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.params"
    result = run([phalanx, "train", "--data", f"{corpus}/train_*.bin",
                  "--val-data", str(corpus / "val_000.bin"), *TINY,
                  "--metrics", metrics, "--dump-params", params, *extra])
    return result, metrics, params


def read_metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_command_twice_is_bit_identical(phalanx, corpus, tmp_path):
    runs = [train(phalanx, corpus, tmp_path, "--steps", "12", "--eval-every", "4", name=n)
            for n in ("a", "b")]
    for result, _, _ in runs:
        assert result.returncode == 0, result.stderr
    (_, ma, pa), (_, mb, pb) = runs
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]
    rows = read_metrics(ma)
    assert len(rows) == 12 and "val_loss" in rows[3] and "val_loss" not in rows[4]
    assert strip(rows) == strip(read_metrics(mb))
    assert pa.read_bytes() == pb.read_bytes()


def test_metrics_have_every_field(phalanx, corpus, tmp_path):
    result, metrics, _ = train(phalanx, corpus, tmp_path, "--steps", "3", "--warmup", "2",
                               "--lr", "1e-3")
    assert result.returncode == 0, result.stderr
    rows = read_metrics(metrics)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert {"step", "loss", "lr", "global_batch", "tokens_per_s", "grad_norm"} <= set(r)
        assert r["global_batch"] == 8 and r["tokens_per_s"] > 0
    assert rows[0]["lr"] == pytest.approx(0.5e-3)  # warm-up: 1 of 2 steps done
    assert "val_loss" in rows[-1]


def unigram_entropy(path):
    tokens = np.fromfile(path, dtype="<u2", offset=1024)
    p = np.bincount(tokens) / tokens.size
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


@pytest.mark.parametrize("optim", ["lamb", "adamw"])
def test_training_learns_beyond_unigram_statistics(phalanx, corpus, tmp_path, optim):
    """A model that learned anything about context beats the byte frequencies."""
    result, metrics, _ = train(phalanx, corpus, tmp_path, "--steps", "200", "--optim", optim,
                               "--lr", "3e-2" if optim == "lamb" else "3e-3", "--warmup", "10")
    assert result.returncode == 0, result.stderr
    val = read_metrics(metrics)[-1]["val_loss"]
    entropy = unigram_entropy(corpus / "val_000.bin")
    assert val < 0.6 * entropy, (val, entropy)


def test_help_lists_the_flags(phalanx):
    result = run([phalanx, "train", "--help"])
    assert result.returncode == 0
    for flag in ["--data", "--val-data", "--layers", "--heads", "--dim", "--seq-len", "--vocab",
                 "--micro-batch", "--global-batch", "--steps", "--seed", "--optim", "--lr",
                 "--weight-decay", "--beta1", "--beta2", "--eps", "--clip", "--schedule",
                 "--warmup", "--threads", "--eval-every", "--metrics"]:
        assert flag in result.stdout, flag


# ---------------------------------------------------------------------------
# bad inputs: each names the problem and exits non-zero

def bad_shard(tmp_path, kind):
    path = tmp_path / "bad.bin"
    tokens = text_tokens(structured_text(2000))
    if kind == "magic":
        write_shard(path, tokens, magic=12345)
    elif kind == "version":
        write_shard(path, tokens, version=7)
    elif kind == "truncated":
        write_shard(path, tokens, count=len(tokens) + 100)
    elif kind == "token":
        tokens = tokens.copy()
        tokens[777] = 300
        write_shard(path, tokens)
    elif kind == "header":
        path.write_bytes(b"\x00" * 100)
    return path


@pytest.mark.parametrize("kind,expected", [
    ("magic", "magic"), ("version", "version"), ("truncated", "bad.bin"),
    ("header", "bad.bin"), ("token", "300"),
])
def test_bad_data_file(phalanx, tmp_path, kind, expected):
    path = bad_shard(tmp_path, kind)
    result = run([phalanx, "train", "--data", path, *TINY, "--steps", "1"])
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr
    if kind == "token":
        assert "vocab" in result.stderr


def test_missing_data_file(phalanx, tmp_path):
    result = run([phalanx, "train", "--data", tmp_path / "nope.bin", *TINY, "--steps", "1"])
    assert result.returncode != 0 and "nope.bin" in result.stderr


def test_sequence_longer_than_the_data(phalanx, corpus):
    result = run([phalanx, "train", "--data", f"{corpus}/train_*.bin", *TINY, "--steps", "1",
                  "--seq-len", "50000"])
    assert result.returncode == 1
    assert "--seq-len 50000 is longer than the data" in result.stderr, result.stderr


@pytest.mark.parametrize("args,expected", [
    (["--dim", "30", "--heads", "4"], "not divisible by --heads"),
    (["--layers", "0"], "--layers"),
    (["--frobnicate"], "unknown option '--frobnicate'"),
    (["--steps", "ten"], "'ten' is not an integer"),
    (["--lr", "fast"], "'fast' is not a finite number"),
    (["--global-batch", "10"], "not a multiple of --micro-batch"),
    (["--optim", "sgd"], "'sgd' is not an optimizer"),
])
def test_bad_command_line(phalanx, corpus, args, expected):
    result = run([phalanx, "train", "--data", f"{corpus}/train_*.bin", *TINY, "--steps", "1",
                  *args])
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert expected in result.stderr, result.stderr


def test_non_finite_loss_stops_at_that_step(phalanx, corpus, tmp_path):
    """A learning rate of 1e12 with AdamW and no clipping blows the weights up."""
    result, metrics, _ = train(phalanx, corpus, tmp_path, "--steps", "20", "--optim", "adamw",
                               "--lr", "1e12", "--clip", "0")
    assert result.returncode == 1
    assert "at step" in result.stderr and ("NaN" in result.stderr or "infinite" in result.stderr)
    step = int(result.stderr.split("at step ")[1].split(":")[0])
    assert len(read_metrics(metrics)) == step - 1  # every finished step was recorded
