"""Ten steps of `phalanx train` against ten steps of PyTorch on the same model,
weights and data, for AdamW (torch.optim.AdamW itself) and LAMB
(tests/torch_lamb.py).

The data holds exactly one global batch of windows, so every step trains on
all of them, whichever order the sampler draws: PyTorch needs no copy of the
sampler. Parameters must agree within 1e-4 relative (atol 1e-4 x the largest
parameter): the two sides differ only by float32 summation order in the
gradients (~1e-6 relative), which ten optimizer steps do not amplify past
1e-5; a wrong bias correction, decay rule or trust ratio is off by >1e-3."""
import json

import numpy as np
import pytest
import torch

from conftest import run
from gpt_dump import copy_params, tensor
from shards import structured_text, text_tokens, write_shard
from torch_gpt import GPT
from torch_lamb import Lamb

V, L, H, C, T, B, MICRO, SEED, STEPS, LR = 256, 2, 4, 32, 16, 8, 4, 11, 10, 2e-3
EXCLUDED = (".bias", "ln1.weight", "ln2.weight", "lnf.weight")


def initial_params(build_dir, tmp_path):
    """The seed's initial weights, from the same keyed initialisation (gpt_dump)."""
    batch = tmp_path / "batch.bin"
    np.zeros(2 * T, dtype=np.int32).tofile(batch)
    result = run([build_dir / "tests" / "gpt_dump", V, L, H, C, T, 1, SEED, batch,
                  tmp_path / "init"])
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "init.json").read_text())
    raw = np.fromfile(tmp_path / "init.bin", dtype=np.float32)[1 + T * V:]
    return raw[: manifest["param_count"]], manifest["tensors"]


def torch_training(tokens, init, tensors, optim):
    model = GPT(V, L, H, C, T)
    named = model.named_phalanx_parameters()
    copy_params(named, init, tensors)
    decay = [p for n, p in named.items() if not n.endswith(EXCLUDED)]
    no_decay = [p for n, p in named.items() if n.endswith(EXCLUDED)]
    groups = [dict(params=decay, weight_decay=0.01), dict(params=no_decay, weight_decay=0.0)]
    opt = (torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.999), eps=1e-8) if optim == "adamw"
           else Lamb(groups, lr=LR, eps=1e-6))
    windows = torch.from_numpy(tokens[: B * T + 1].astype(np.int64))
    x = torch.stack([windows[i * T: i * T + T] for i in range(B)])
    y = torch.stack([windows[i * T + 1: i * T + T + 1] for i in range(B)])
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return {n: p.detach().numpy() for n, p in named.items()}, losses


@pytest.mark.parametrize("optim", ["adamw", "lamb"])
def test_ten_steps_match_pytorch(phalanx, build_dir, tmp_path, optim):
    tokens = text_tokens(structured_text(B * T + 1, seed=9))
    write_shard(tmp_path / "one_batch.bin", tokens)
    init, tensors = initial_params(build_dir, tmp_path)
    result = run([phalanx, "train", "--data", tmp_path / "one_batch.bin", "--vocab", V,
                  "--layers", L, "--heads", H, "--dim", C, "--seq-len", T, "--seed", SEED,
                  "--micro-batch", MICRO, "--global-batch", B, "--steps", STEPS,
                  "--optim", optim, "--lr", LR, "--schedule", "constant", "--clip", "0",
                  "--metrics", tmp_path / "m.jsonl", "--dump-params", tmp_path / "p.bin",
                  "--quiet"])
    assert result.returncode == 0, result.stderr
    ours = np.fromfile(tmp_path / "p.bin", dtype=np.float32)
    reference, ref_losses = torch_training(tokens, init, tensors, optim)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "m.jsonl").read_text().split("\n") if line]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
    scale = max(np.abs(r).max() for r in reference.values())
    moved = 0.0
    for entry in tensors:
        mine = tensor(ours, entry)
        np.testing.assert_allclose(mine, reference[entry["name"]], rtol=1e-4, atol=1e-4 * scale,
                                   err_msg=entry["name"])
        moved = max(moved, np.abs(mine - tensor(init, entry)).max())
    assert moved > 100 * 1e-4 * scale  # the steps really changed the weights
