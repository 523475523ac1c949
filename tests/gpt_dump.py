"""The Python side of tests/gpt_dump.c: one forward and backward pass of Phalanx's model read
back, loaded into tests/torch_gpt.py's PyTorch GPT-2 and compared with it (test_model_torch,
test_bf16, test_train_torch)."""
import json

import numpy as np
import torch

from conftest import run


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


def copy_params(named, flat, tensors):
    """Phalanx's parameters (flat, laid out as the manifest's tensors say) into the PyTorch
    model's parameters of the same names."""
    with torch.no_grad():
        for entry in tensors:
            named[entry["name"]].copy_(torch.from_numpy(tensor(flat, entry).copy()))


def assert_close(actual, expected, what, rtol):
    """Elementwise within rtol, with atol = rtol x max|expected|: entries near zero are held
    to the tensor's own scale, where a relative error means nothing."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    scale = max(np.abs(expected).max(), 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


def assert_same_pass(logits, loss, grads, tensors, named, ref_logits, ref_loss, rtol):
    """Phalanx's logits, loss and every gradient against PyTorch's (after its backward)."""
    assert_close(logits, ref_logits.detach().numpy(), "logits", rtol)
    assert abs(loss - ref_loss.item()) <= rtol * abs(ref_loss.item()), (loss, ref_loss.item())
    for entry in tensors:
        assert_close(tensor(grads, entry), named[entry["name"]].grad.numpy(),
                     f"gradient of {entry['name']}", rtol)
