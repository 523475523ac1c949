"""Helpers for tests that compare whole training runs across layouts."""
import json

import numpy as np

from conftest import run

TIMINGS = {"tokens_per_s", "step_ms", "grad_comm_ms", "ckpt_stall_ms", "ckpt_committed"}  # wall-clock fields, never repeatable


def launch(phalanx, out, ranks, train_args, launcher=()):
    """Trains on `ranks` ranks (plain `phalanx train` for 1); returns
    (metrics rows, final parameters, last stage's copy of wte or None)."""
    out.mkdir(parents=True, exist_ok=True)
    metrics, params = out / "metrics.jsonl", out / "params.bin"
    train = [*train_args, "--metrics", metrics, "--dump-params", params]
    if ranks == 1:
        result = run([phalanx, "train", *train])
    else:
        result = run([phalanx, "run", "-n", ranks, *launcher, "--", *train])
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    tied = out / "params.bin.tied"
    return (rows, np.fromfile(params, dtype=np.float32),
            np.fromfile(tied, dtype=np.float32) if tied.exists() else None)


def assert_layout_refused(phalanx, ranks, train_args, expected):
    """`phalanx run` on `ranks` ranks refuses the layout of train_args: status 2 (bad
    input) with `expected` in its message, before any rank trains (60 s catch a hang)."""
    result = run([phalanx, "run", "-n", ranks, "--", *train_args], timeout=60)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr, result.stderr


def without_timings(rows):
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


def assert_same_run(reference, result, rtol):
    """Losses at every step and final parameters within rtol (parameters with
    atol = rtol x the largest parameter, so near-zero entries are held to the
    tensor scale rather than to a meaningless relative error)."""
    rows_a, params_a, _ = reference
    rows_b, params_b, _ = result
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    np.testing.assert_allclose([r["loss"] for r in rows_b], [r["loss"] for r in rows_a],
                               rtol=rtol, atol=0)
    scale = np.abs(params_a).max()
    np.testing.assert_allclose(params_b, params_a, rtol=rtol, atol=rtol * scale)
