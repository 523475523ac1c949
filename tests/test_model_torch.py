"""Phalanx's model against a PyTorch GPT-2 with the same weights and batch.

Tolerance: 1e-4 relative. Both sides compute in float32 but sum in different
orders (OpenBLAS blocking, our per-row loops vs PyTorch's kernels), which
leaves differences of a few float32 ulps per operation, ~1e-6 relative, that
grow through the layers; 1e-4 is far above that noise and far below any real
error (a wrong mask, scale or transposition moves results by >1e-2).
Elementwise comparisons use atol = 1e-4 * max|reference| of the tensor so that
entries near zero (where relative error is meaningless) are held to the
tensor's own scale."""
import json

import numpy as np
import pytest
import torch

from conftest import run
from torch_gpt import GPT

RTOL = 1e-4

SHAPES = [
    # vocab, layers, heads, dim, seq_len, batch
    pytest.param((64, 2, 1, 16, 8, 2), id="small-1head"),
    pytest.param((256, 3, 4, 32, 13, 3), id="4heads-seq13"),
    pytest.param((97, 2, 6, 48, 37, 2), id="6heads-seq37"),
    # longer than attention's row blocks (kernels.c: 64 rows), the last one partial;
    # 2 layers: the second backward reuses scratch the first one wrote
    pytest.param((64, 2, 2, 16, 150, 2), id="seq150-row-blocks"),
]


def assert_close(actual, expected, what):
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    scale = max(np.abs(expected).max(), 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * scale, err_msg=what)


def dump(build_dir, tmp_path, shape, seed=1234, precision="fp32"):
    vocab, layers, heads, dim, seq, batch = shape
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, size=(batch, seq), dtype=np.int32)
    targets = rng.integers(0, vocab, size=(batch, seq), dtype=np.int32)
    batch_file = tmp_path / "batch.bin"
    np.concatenate([tokens.ravel(), targets.ravel()]).tofile(batch_file)
    out = tmp_path / "dump"
    result = run([build_dir / "tests" / "gpt_dump", vocab, layers, heads, dim, seq, batch,
                  seed, batch_file, out] + (["bf16"] if precision == "bf16" else []))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "dump.json").read_text())
    raw = np.fromfile(tmp_path / "dump.bin", dtype=np.float32)
    P = manifest["param_count"]
    loss, raw = raw[0], raw[1:]
    logits, raw = raw[: batch * seq * vocab].reshape(batch, seq, vocab), raw[batch * seq * vocab:]
    params, grads = raw[:P], raw[P:]
    assert grads.size == P
    return tokens, targets, loss, logits, params, grads, manifest["tensors"]


def tensor(flat, entry):
    return flat[entry["offset"]: entry["offset"] + int(np.prod(entry["shape"]))].reshape(entry["shape"])


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_gradients_match_pytorch(build_dir, tmp_path, shape):
    vocab, layers, heads, dim, seq, batch = shape
    tokens, targets, loss, logits, params, grads, tensors = dump(build_dir, tmp_path, shape)

    model = GPT(vocab, layers, heads, dim, seq)
    named = model.named_phalanx_parameters()
    assert sorted(named) == sorted(t["name"] for t in tensors), "logical names differ"
    with torch.no_grad():
        for entry in tensors:
            named[entry["name"]].copy_(torch.from_numpy(tensor(params, entry).copy()))

    ref_logits, ref_loss = model(torch.from_numpy(tokens).long(), torch.from_numpy(targets).long())
    ref_loss.backward()

    assert_close(logits, ref_logits.detach().numpy(), "logits")
    assert abs(loss - ref_loss.item()) <= RTOL * abs(ref_loss.item()), (loss, ref_loss.item())
    for entry in tensors:
        assert_close(tensor(grads, entry), named[entry["name"]].grad.numpy(),
                     f"gradient of {entry['name']}")


def test_initialisation_follows_gpt2(build_dir, tmp_path):
    """N(0, 0.02) weights, residual projections scaled by 1/sqrt(2L), LayerNorm 1/0, biases 0."""
    shape = (256, 4, 4, 64, 64, 1)
    _, _, _, _, params, _, tensors = dump(build_dir, tmp_path, shape)
    by_name = {t["name"]: tensor(params, t) for t in tensors}
    assert np.all(by_name["h.1.ln1.weight"] == 1) and np.all(by_name["h.1.ln1.bias"] == 0)
    assert np.all(by_name["h.2.mlp.fc.bias"] == 0)
    assert by_name["wte"].std() == pytest.approx(0.02, rel=0.02)
    assert by_name["h.0.attn.qkv.weight"].std() == pytest.approx(0.02, rel=0.03)
    assert by_name["h.3.mlp.proj.weight"].std() == pytest.approx(0.02 / np.sqrt(8), rel=0.03)
    # keyed by name: two tensors of the same shape differ
    assert not np.array_equal(by_name["h.0.attn.proj.weight"], by_name["h.1.attn.proj.weight"])
