"""Phalanx's model against a PyTorch GPT-2 with the same weights and batch.

Tolerance: 1e-4 relative. Both sides compute in float32 but sum in different
orders (OpenBLAS blocking, our per-row loops vs PyTorch's kernels), which
leaves differences of a few float32 ulps per operation, ~1e-6 relative, that
grow through the layers; 1e-4 is far above that noise and far below any real
error (a wrong mask, scale or transposition moves results by >1e-2).
Elementwise comparisons use atol = 1e-4 * max|reference| of the tensor so that
entries near zero (where relative error is meaningless) are held to the
tensor's own scale."""
import numpy as np
import pytest
import torch

from gpt_dump import assert_same_pass, copy_params, dump, tensor
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


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_gradients_match_pytorch(build_dir, tmp_path, shape):
    vocab, layers, heads, dim, seq, batch = shape
    tokens, targets, loss, logits, params, grads, tensors = dump(build_dir, tmp_path, shape)

    model = GPT(vocab, layers, heads, dim, seq)
    named = model.named_phalanx_parameters()
    assert sorted(named) == sorted(t["name"] for t in tensors), "logical names differ"
    copy_params(named, params, tensors)

    ref_logits, ref_loss = model(torch.from_numpy(tokens).long(), torch.from_numpy(targets).long())
    ref_loss.backward()

    assert_same_pass(logits, loss, grads, tensors, named, ref_logits, ref_loss, RTOL)


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
