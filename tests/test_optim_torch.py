"""LAMB and AdamW against PyTorch, through the tests/optim_dump driver.

AdamW is compared with torch.optim.AdamW itself. PyTorch has no LAMB, so the
LAMB reference below is written in PyTorch from the equations in
optim/optim.h (NVIDIA apex FusedLAMB's convention: global-norm clipping before
the moments, bias correction, eps outside the square root, trust ratio 1 when
either norm is 0 or the tensor is excluded).

Both sides compute in float32 but in a different order (PyTorch folds the
bias corrections into the step size and the decay into a separate multiply;
it also sums norms in its own order), so results agree to rounding, not bit
for bit: parameters and moments must match within rtol 1e-4. The small atol
only covers entries near zero, whose relative error means nothing.

PHALANX_OPTIM_DUMP may name a driver built by hand; by default the test uses
the meson build's tests/optim_dump.
"""
import os
import pathlib
import struct

import numpy as np
import pytest
import torch

from conftest import run

STEPS = 10
LR = 1e-2
BETA1, BETA2, EPS, WEIGHT_DECAY = 0.9, 0.999, 1e-6, 0.1
RTOL = 1e-4
# atol per compared quantity. m sums gradient terms of size up to ~1, so an
# m that cancels to near 0 keeps an absolute rounding error of ~1e-7; v sums
# squares (no cancellation), so it is checked almost purely relatively.
ATOL = {"param": 1e-6, "m": 1e-6, "v": 1e-9}

# name, shape, excluded, initial scale (0: zero-initialised, which makes
# LAMB's first step take the ratio-1 rule for ||w|| = 0).
# qkv.weight has more elements than one 4096-element norm block.
TENSORS = [
    ("h.0.attn.qkv.weight", (96, 130), False, 0.02),
    ("h.0.attn.qkv.bias", (7,), True, 0.1),
    ("h.0.ln1.weight", (33,), True, 1.0),
    ("h.0.mlp.fc.weight", (17, 5), False, 0.0),
    ("wte", (50, 8), False, 0.5),
]


@pytest.fixture(scope="module")
def optim_dump(request):
    override = os.environ.get("PHALANX_OPTIM_DUMP")
    if override:
        return pathlib.Path(override)
    return request.getfixturevalue("build_dir") / "tests" / "optim_dump"


def make_problem(seed):
    """Initial parameters and per-step gradients. Gradient sizes vary by step
    (factor 0.1 to 3) so that a clip between them is active on some steps
    only."""
    rng = np.random.default_rng(seed)
    params = []
    for _, shape, excluded, scale in TENSORS:
        base = 1.0 if excluded and scale == 1.0 else 0.0  # LayerNorm gain near 1
        params.append((base + scale * rng.standard_normal(shape)).astype(np.float32))
    step_factors = np.geomspace(0.1, 3.0, STEPS)
    rng.shuffle(step_factors)
    grads = [[(f * rng.standard_normal(shape)).astype(np.float32) for _, shape, _, _ in TENSORS]
             for f in step_factors]
    return params, grads


def global_norm(grads):
    return float(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads)))


def clip_scale(norm, clip):
    """optim_clip_scale: min(1, clip / norm), 1 when clip <= 0. (Not
    torch.nn.utils.clip_grad_norm_, which divides by norm + 1e-6.)"""
    return np.float32(clip / norm) if clip > 0 and norm > clip else np.float32(1.0)


def write_input(path, params, grads, clip):
    with open(path, "wb") as f:
        f.write(struct.pack("<ii", len(params), len(grads)))
        f.write(struct.pack("<6f", LR, BETA1, BETA2, EPS, WEIGHT_DECAY, clip))
        for p, (_, _, excluded, _) in zip(params, TENSORS):
            f.write(struct.pack("<ii", p.size, int(excluded)))
        for p in params:
            f.write(p.astype("<f4").tobytes())
        for step in grads:
            for g in step:
                f.write(g.astype("<f4").tobytes())


def run_driver(optim_dump, tmp_path, kind, params, grads, clip, env=None):
    """Returns (params, m, v) after the steps, each a list of arrays."""
    src, dst = tmp_path / "in.bin", tmp_path / f"out-{kind}.bin"
    write_input(src, params, grads, clip)
    result = run([optim_dump, kind, src, dst], env=env)
    assert result.returncode == 0, result.stderr
    flat = np.fromfile(dst, dtype="<f4")
    sizes = [p.size for p in params]
    assert flat.size == 3 * sum(sizes)
    out, pos = [], 0
    for _ in range(3):
        group = []
        for p in params:
            group.append(flat[pos:pos + p.size].reshape(p.shape))
            pos += p.size
        out.append(group)
    return out


def torch_adamw(params, grads, clip):
    tensors = [torch.tensor(p, requires_grad=True) for p in params]
    groups = [
        {"params": [t for t, spec in zip(tensors, TENSORS) if not spec[2]],
         "weight_decay": WEIGHT_DECAY},
        {"params": [t for t, spec in zip(tensors, TENSORS) if spec[2]],
         "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=LR, betas=(BETA1, BETA2), eps=EPS)
    for step in grads:
        scale = clip_scale(global_norm(step), clip)
        for t, g in zip(tensors, step):
            t.grad = torch.from_numpy(g * scale)
        opt.step()
    state = [opt.state[t] for t in tensors]
    return ([t.detach().numpy() for t in tensors],
            [s["exp_avg"].numpy() for s in state],
            [s["exp_avg_sq"].numpy() for s in state])


def torch_lamb(params, grads, clip):
    """LAMB as optim/optim.h states it, one tensor at a time, in float32."""
    w = [torch.tensor(p) for p in params]
    m = [torch.zeros_like(t) for t in w]
    v = [torch.zeros_like(t) for t in w]
    for t, step in enumerate(grads, start=1):
        scale = float(clip_scale(global_norm(step), clip))
        for i, (_, _, excluded, _) in enumerate(TENSORS):
            g = torch.from_numpy(step[i]) * scale
            m[i] = BETA1 * m[i] + (1 - BETA1) * g
            v[i] = BETA2 * v[i] + (1 - BETA2) * g * g
            r = (m[i] / (1 - BETA1 ** t)) / ((v[i] / (1 - BETA2 ** t)).sqrt() + EPS)
            u = r + (0.0 if excluded else WEIGHT_DECAY) * w[i]
            ratio = 1.0
            if not excluded:
                w_norm, u_norm = w[i].double().norm().item(), u.double().norm().item()
                if w_norm > 0 and u_norm > 0:
                    ratio = w_norm / u_norm
            w[i] = w[i] - LR * ratio * u
    return [t.numpy() for t in w], [t.numpy() for t in m], [t.numpy() for t in v]


def worst_errors(actual, expected, atol):
    """(largest relative error among entries well above atol, largest share
    of the allowed tolerance atol + RTOL * |expected| used by any entry)."""
    a = np.concatenate([x.ravel() for x in actual]).astype(np.float64)
    e = np.concatenate([x.ravel() for x in expected]).astype(np.float64)
    diff = np.abs(a - e)
    large = np.abs(e) >= 100 * atol
    return float(np.max(diff[large] / np.abs(e[large]))), float(np.max(diff / (atol + RTOL * np.abs(e))))


def compare(ours, reference, label):
    for (what, atol), a, e in zip(ATOL.items(), ours, reference):
        for (name, *_), x, y in zip(TENSORS, a, e):
            np.testing.assert_allclose(x, y, rtol=RTOL, atol=atol,
                                       err_msg=f"{label}: {what} of {name}")
        relative, share = worst_errors(a, e, atol)
        print(f"{label}: {what}: max relative error {relative:.2e} (|x| >= {100 * atol:g}),"
              f" {share:.0%} of the tolerance used")


# Clip 0 is off; clip 40 lies inside the range of step norms (asserted).
@pytest.mark.parametrize("clip", [0.0, 40.0])
@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_matches_pytorch(optim_dump, tmp_path, kind, clip):
    params, grads = make_problem(seed=7)
    if clip > 0:
        norms = [global_norm(step) for step in grads]
        assert min(norms) < clip < max(norms), norms
    ours = run_driver(optim_dump, tmp_path, kind, params, grads, clip)
    reference = (torch_adamw if kind == "adamw" else torch_lamb)(params, grads, clip)
    compare(ours, reference, f"{kind} clip={clip}")


def test_lamb_zero_and_excluded_tensors_take_plain_steps(optim_dump, tmp_path):
    """One LAMB step without clipping: the zero-initialised tensor (ratio 1 by
    the ||w|| = 0 rule) and the excluded ones (ratio 1, no decay) each move by
    lr * |m_hat| / (sqrt(v_hat) + eps) = lr * |g| / (|g| + eps)."""
    params, grads = make_problem(seed=3)
    (after, _, _) = run_driver(optim_dump, tmp_path, "lamb", params, grads[:1], 0.0)
    for (name, _, excluded, scale), before, x, g in zip(TENSORS, params, after, grads[0]):
        if excluded or scale == 0.0:
            expected = LR * np.abs(g) / (np.abs(g) + EPS)
            np.testing.assert_allclose(np.abs(x - before), expected, rtol=1e-4, err_msg=name)


def test_same_bits_for_any_thread_count(optim_dump, tmp_path):
    params, grads = make_problem(seed=11)
    outputs = []
    for threads in ("1", "3"):
        env = dict(os.environ, OMP_NUM_THREADS=threads)
        outputs.append(run_driver(optim_dump, tmp_path, "lamb", params, grads, 40.0, env=env))
    for a, b in zip(*outputs):
        for x, y in zip(a, b):
            assert x.tobytes() == y.tobytes()


def test_driver_rejects_bad_input(optim_dump, tmp_path):
    params, grads = make_problem(seed=1)
    src = tmp_path / "in.bin"
    write_input(src, params, grads, 0.0)
    truncated = tmp_path / "short.bin"
    truncated.write_bytes(src.read_bytes()[:-4])
    result = run([optim_dump, "lamb", truncated, tmp_path / "out.bin"])
    assert result.returncode != 0
    assert "file ends early" in result.stderr
    result = run([optim_dump, "sgd", src, tmp_path / "out.bin"])
    assert result.returncode != 0
    assert "usage" in result.stderr
