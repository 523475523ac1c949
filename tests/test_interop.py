"""Interop (issue 21): `phalanx export` to Hugging Face safetensors and llm.c
model files, `phalanx train --init-from`, `phalanx eval`, `phalanx sample`,
and GPT-2's padded vocabulary. The readers here follow the formats'
specifications, not Phalanx's code."""
import json
import struct
import subprocess

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from conftest import run
from shards import structured_text, text_tokens, write_shard

MODEL = ["--layers", "2", "--heads", "2", "--dim", "32", "--seq-len", "32"]
EVAL = ["--micro-batch", "4", "--seq-len", "32", "--batches", "6"]
LLMC_ORDER = ["wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb", "ln2w",
              "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb"]
OURS = {"ln1w": "ln1.weight", "ln1b": "ln1.bias", "qkvw": "attn.qkv.weight",
        "qkvb": "attn.qkv.bias", "attprojw": "attn.proj.weight", "attprojb": "attn.proj.bias",
        "ln2w": "ln2.weight", "ln2b": "ln2.bias", "fcw": "mlp.fc.weight", "fcb": "mlp.fc.bias",
        "fcprojw": "mlp.proj.weight", "fcprojb": "mlp.proj.bias"}


# ---- readers written from the specifications

def read_safetensors(path):
    """8-byte little-endian header length, JSON header, raw little-endian data."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    assert (8 + n) % 8 == 0
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    tensors = {}
    for name, entry in header.items():
        assert entry["dtype"] == "F32"
        begin, end = entry["data_offsets"]
        tensors[name] = np.frombuffer(data[begin:end], dtype="<f4").reshape(entry["shape"])
    return meta, tensors


def read_llmc(path):
    """llm.c's model file: 256 int32, then the 16 tensors in llm.c's order."""
    raw = path.read_bytes()
    h = np.frombuffer(raw[:1024], dtype="<i4")
    assert h[0] == 20240326 and h[1] == 3
    T, V, L, NH, C, Vp = (int(x) for x in h[2:8])
    shapes = {"wte": (Vp, C), "wpe": (T, C), "ln1w": (L, C), "ln1b": (L, C),
              "qkvw": (L, 3 * C, C), "qkvb": (L, 3 * C), "attprojw": (L, C, C),
              "attprojb": (L, C), "ln2w": (L, C), "ln2b": (L, C), "fcw": (L, 4 * C, C),
              "fcb": (L, 4 * C), "fcprojw": (L, C, 4 * C), "fcprojb": (L, C), "lnfw": (C,),
              "lnfb": (C,)}
    floats = np.frombuffer(raw[1024:], dtype="<f4")
    out, at = {}, 0
    for name in LLMC_ORDER:
        size = int(np.prod(shapes[name]))
        out[name] = floats[at:at + size].reshape(shapes[name])
        at += size
    assert at == floats.size
    return dict(T=T, V=V, L=L, NH=NH, C=C, Vp=Vp), out


# ---- a PyTorch GPT-2 in Hugging Face's module layout

class Conv1D(nn.Module):
    def __init__(self, nx, nf):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(nx, nf, dtype=torch.float64))
        self.bias = nn.Parameter(torch.zeros(nf, dtype=torch.float64))

    def forward(self, x):
        return x @ self.weight + self.bias


class Attention(nn.Module):
    def __init__(self, C, NH):
        super().__init__()
        self.C, self.NH = C, NH
        self.c_attn, self.c_proj = Conv1D(C, 3 * C), Conv1D(C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.NH, C // self.NH).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / (C // self.NH) ** 0.5
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        return self.c_proj((att @ v).transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, C, NH):
        super().__init__()
        self.ln_1 = nn.LayerNorm(C, eps=1e-5, dtype=torch.float64)
        self.attn = Attention(C, NH)
        self.ln_2 = nn.LayerNorm(C, eps=1e-5, dtype=torch.float64)
        self.mlp = nn.Module()
        self.mlp.c_fc, self.mlp.c_proj = Conv1D(C, 4 * C), Conv1D(4 * C, C)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        h = nn.functional.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh")
        return x + self.mlp.c_proj(h)


class GPT2LMHead(nn.Module):
    def __init__(self, V, T, L, NH, C):
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.wte = nn.Embedding(V, C, dtype=torch.float64)
        self.transformer.wpe = nn.Embedding(T, C, dtype=torch.float64)
        self.transformer.h = nn.ModuleList(Block(C, NH) for _ in range(L))
        self.transformer.ln_f = nn.LayerNorm(C, eps=1e-5, dtype=torch.float64)

    def loss(self, idx, targets):
        tr = self.transformer
        x = tr.wte(idx) + tr.wpe(torch.arange(idx.shape[1]))
        for block in tr.h:
            x = block(x)
        logits = tr.ln_f(x) @ tr.wte.weight.T  # the tied head
        return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def llmc_windows(tokens, B, T, batches):
    """llm.c's validation loader on one shard: batch i starts at token i*B*T."""
    for i in range(batches):
        chunk = torch.tensor(tokens[i * B * T: i * B * T + B * T + 1].astype(np.int64))
        yield chunk[:-1].view(B, T), chunk[1:].view(B, T)


# ---- fixtures

def eval_json(phalanx, model, data, extra=EVAL):
    result = run([phalanx, "eval", model, "--data", data, *extra, "--json"])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def train(phalanx, data, out, args, ranks=1):
    cmd = ["--data", data, "--micro-batch", "4", "--quiet", "--ckpt-dir", out, *args]
    cmd = ["train", *cmd] if ranks == 1 else ["run", "-n", str(ranks), "--", *cmd]
    result = run([phalanx, *cmd])
    assert result.returncode == 0, result.stdout + result.stderr
    return sorted(out.glob("step_*"))[-1]


@pytest.fixture(scope="module")
def trained(phalanx, tmp_path_factory):
    """A byte-level model after 3 steps, its checkpoint and validation data."""
    d = tmp_path_factory.mktemp("interop")
    write_shard(d / "train.bin", text_tokens(structured_text(20000)))
    write_shard(d / "val.bin", text_tokens(structured_text(4000, seed=1)))
    ckpt = train(phalanx, d / "train.bin", d / "ckpt", [*MODEL, "--steps", "3"])
    return d, ckpt


def export(phalanx, ckpt, fmt, out):
    result = run([phalanx, "export", ckpt, "--format", fmt, "-o", out])
    assert result.returncode == 0, result.stderr
    return out


# ---- export

def test_safetensors_loss_matches_pytorch_gpt2(phalanx, trained, tmp_path):
    d, ckpt = trained
    out = export(phalanx, ckpt, "safetensors", tmp_path / "model.safetensors")
    meta, tensors = read_safetensors(out)
    assert meta["format"] == "pt"
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["activation_function"] == "gelu_new"
    assert config["layer_norm_epsilon"] == 1e-5
    assert "lm_head.weight" not in tensors  # tied to wte
    V, T, L, NH, C = (config[k] for k in ("vocab_size", "n_positions", "n_layer", "n_head",
                                          "n_embd"))
    assert (V, T, L, NH, C) == (256, 32, 2, 2, 32)
    assert tensors["transformer.h.0.attn.c_attn.weight"].shape == (C, 3 * C)  # Conv1D [in, out]
    model = GPT2LMHead(V, T, L, NH, C)
    state = {k: torch.tensor(v, dtype=torch.float64) for k, v in tensors.items()}
    missing = model.load_state_dict(state, strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    val = np.fromfile(d / "val.bin", dtype="<u2", offset=1024)
    with torch.no_grad():
        losses = [model.loss(x, y).item() for x, y in llmc_windows(val, 4, 32, 6)]
    ours = eval_json(phalanx, out, d / "val.bin")
    assert ours["batches"] == 6 and ours["tokens"] == 6 * 4 * 32
    assert ours["loss"] == pytest.approx(np.mean(losses), rel=1e-5)


def test_llmc_file_holds_the_checkpoint_tensors(phalanx, trained, tmp_path):
    _, ckpt = trained
    out = export(phalanx, ckpt, "llmc", tmp_path / "model.bin")
    h, tensors = read_llmc(out)
    assert (h["V"], h["Vp"], h["L"], h["NH"], h["C"], h["T"]) == (256, 256, 2, 2, 32, 32)
    with h5py.File(ckpt / "index.h5", "r") as f:
        params = {name: f["params"][name][()] for name in f["params"]}
    np.testing.assert_array_equal(tensors["wte"][:256], params["wte"])
    np.testing.assert_array_equal(tensors["wpe"], params["wpe"])
    np.testing.assert_array_equal(tensors["lnfw"], params["lnf.weight"])
    np.testing.assert_array_equal(tensors["lnfb"], params["lnf.bias"])
    for short, ours in OURS.items():
        for layer in range(2):
            np.testing.assert_array_equal(tensors[short][layer], params[f"h.{layer}.{ours}"])


# ---- round trips

@pytest.mark.parametrize("fmt", ["safetensors", "llmc"])
def test_round_trip_through_init_from(phalanx, trained, tmp_path, fmt):
    """export, start a run from the file (lr 0 keeps the weights), eval its
    checkpoint: the same loss to the bit; in another layout within 1e-5."""
    d, ckpt = trained
    reference = eval_json(phalanx, ckpt, d / "val.bin")
    out = export(phalanx, ckpt, fmt, tmp_path / f"model.{fmt}")
    assert eval_json(phalanx, out, d / "val.bin") == reference
    args = ["--init-from", out, "--steps", "1", "--lr", "0"]
    again = train(phalanx, d / "train.bin", tmp_path / "one", args)
    assert eval_json(phalanx, again, d / "val.bin") == reference
    resharded = train(phalanx, d / "train.bin", tmp_path / "pp2", [*args, "--pp", "2"], ranks=2)
    assert eval_json(phalanx, resharded, d / "val.bin")["loss"] == pytest.approx(
        reference["loss"], rel=1e-5)


def test_init_from_starts_from_the_weights_not_from_scratch(phalanx, trained, tmp_path):
    d, ckpt = trained
    out = export(phalanx, ckpt, "llmc", tmp_path / "model.bin")
    fresh = train(phalanx, d / "train.bin", tmp_path / "fresh", [*MODEL, "--steps", "1",
                                                                 "--lr", "0"])
    started = train(phalanx, d / "train.bin", tmp_path / "started",
                    ["--init-from", out, "--steps", "1", "--lr", "0"])
    assert (eval_json(phalanx, started, d / "val.bin")["loss"] !=
            eval_json(phalanx, fresh, d / "val.bin")["loss"])


def test_gpt2_vocabulary_is_padded_and_exported_unpadded(phalanx, tmp_path):
    """Width 64, vocab 50257: wte has 50304 rows in training, the padded rows
    stay zero, safetensors holds 50257 rows, llm.c's file 50304."""
    rng = np.random.default_rng(0)
    write_shard(tmp_path / "gpt2.bin", rng.integers(0, 50257, 4000))
    model = ["--layers", "1", "--heads", "2", "--dim", "64", "--seq-len", "16", "--vocab",
             "50257", "--micro-batch", "2"]
    ckpt = train(phalanx, tmp_path / "gpt2.bin", tmp_path / "ckpt", [*model, "--steps", "2",
                                                                      "--micro-batch", "2"])
    with h5py.File(ckpt / "index.h5", "r") as f:
        wte = f["params/wte"][()]
    assert wte.shape == (50304, 64)
    assert not wte[50257:].any() and wte[:50257].any()
    extra = ["--micro-batch", "2", "--seq-len", "16", "--batches", "4"]
    reference = eval_json(phalanx, ckpt, tmp_path / "gpt2.bin", extra)
    st = export(phalanx, ckpt, "safetensors", tmp_path / "model.safetensors")
    _, tensors = read_safetensors(st)
    assert tensors["transformer.wte.weight"].shape == (50257, 64)
    np.testing.assert_array_equal(tensors["transformer.wte.weight"], wte[:50257])
    llmc = export(phalanx, ckpt, "llmc", tmp_path / "model.bin")
    h, _ = read_llmc(llmc)
    assert (h["V"], h["Vp"]) == (50257, 50304)
    for out in (st, llmc):
        assert eval_json(phalanx, out, tmp_path / "gpt2.bin", extra) == reference
    again = train(phalanx, tmp_path / "gpt2.bin", tmp_path / "again",
                  ["--init-from", st, "--steps", "1", "--lr", "0", "--micro-batch", "2"])
    assert eval_json(phalanx, again, tmp_path / "gpt2.bin", extra) == reference


# ---- sample

def test_sample_writes_text_deterministically(phalanx, trained):
    """Byte tokens are the text itself: the prompt, then 20 bytes, the same
    for the same seed."""
    _, ckpt = trained
    cmd = [str(c) for c in (phalanx, "sample", ckpt, "--prompt", "the cat", "--tokens", "20")]

    def sample(*extra):
        result = subprocess.run([*cmd, *extra], capture_output=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    first = sample("--seed", "7")
    assert first == sample("--seed", "7")
    assert first.startswith(b"the cat") and len(first) == len("the cat") + 20 + 1
    assert first != sample("--seed", "8")
    assert sample("--temperature", "0", "--seed", "1") == sample("--temperature", "0")


def test_sample_decodes_ids_through_llmc_tokenizer(phalanx, tmp_path):
    """A 300-token vocabulary prints ids, or text through llm.c's tokenizer."""
    write_shard(tmp_path / "ids.bin", np.random.default_rng(1).integers(0, 300, 3000))
    ckpt = train(phalanx, tmp_path / "ids.bin", tmp_path / "ckpt",
                 [*MODEL, "--vocab", "300", "--steps", "1"])
    ids = run([phalanx, "sample", ckpt, "--prompt", "5 7", "--tokens", "5"])
    assert ids.returncode == 0, ids.stderr
    numbers = [int(x) for x in ids.stdout.split()]
    assert numbers[:2] == [5, 7] and len(numbers) == 7 and max(numbers) < 300
    header = np.zeros(256, dtype="<u4")
    header[:4] = [20240328, 2, 300, 0]
    with open(tmp_path / "tok.bin", "wb") as f:
        f.write(header.tobytes())
        for i in range(300):
            piece = f"<{i}>".encode()
            f.write(bytes([len(piece)]) + piece)
    text = run([phalanx, "sample", ckpt, "--prompt", "5 7", "--tokens", "5", "--tokenizer",
                tmp_path / "tok.bin"])
    assert text.returncode == 0, text.stderr
    assert text.stdout.strip() == "".join(f"<{n}>" for n in numbers)


# ---- bad inputs: a clear message, a non-zero exit, nothing written

def safetensors_bytes(header, data):
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


@pytest.fixture
def exported(phalanx, trained, tmp_path):
    _, ckpt = trained
    return (export(phalanx, ckpt, "safetensors", tmp_path / "model.safetensors"),
            export(phalanx, ckpt, "llmc", tmp_path / "model.bin"))


def lying_headers(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
    name = "transformer.h.0.ln_1.weight"
    past = json.loads(json.dumps(header))
    past[name]["data_offsets"][1] = len(data) + 64
    size = json.loads(json.dumps(header))
    size[name]["data_offsets"][1] -= 4
    overlap = json.loads(json.dumps(header))
    overlap[name]["data_offsets"] = [0, overlap[name]["data_offsets"][1] -
                                     overlap[name]["data_offsets"][0]]
    return {"past the end": (safetensors_bytes(past, data), "outside"),
            "wrong size": (safetensors_bytes(size, data), "need"),
            "overlap": (safetensors_bytes(overlap, data), "overlap")}


def test_bad_model_files_are_refused_before_anything_is_written(phalanx, trained, exported,
                                                                tmp_path):
    d, _ = trained
    st, llmc = exported
    bad = {"truncated safetensors": (st.read_bytes()[:len(st.read_bytes()) // 2], "truncated"),
           "truncated llmc": (llmc.read_bytes()[:5000], "truncated"),
           "foreign": (b"PK\x03\x04" + bytes(2000), "not a model file"),
           "llmc bf16": (struct.pack("<2i", 20240326, 5) + llmc.read_bytes()[8:], "version 5"),
           **{f"safetensors {k}": v for k, v in lying_headers(st).items()}}
    for case, (content, words) in bad.items():
        path = tmp_path / "bad.file"
        path.write_bytes(content)
        ckpt_dir, out = tmp_path / f"ckpt-{case}", tmp_path / f"out-{case}"
        for cmd in (["train", "--data", d / "train.bin", "--init-from", path, "--steps", "1",
                     "--ckpt-dir", ckpt_dir],
                    ["export", path, "--format", "llmc", "-o", out],
                    ["eval", path, "--data", d / "val.bin"]):
            result = run([phalanx, *cmd])
            assert result.returncode != 0, (case, cmd[0])
            assert words in result.stderr and "bad.file" in result.stderr, (case, result.stderr)
            assert "Traceback" not in result.stderr and "Assertion" not in result.stderr
        assert not out.exists()
        assert not ckpt_dir.exists() or not any(ckpt_dir.iterdir()), case


def test_shape_flags_that_contradict_the_file_are_refused(phalanx, trained, exported,
                                                         tmp_path):
    d, _ = trained
    for flag, value, file_value in (("--dim", "64", "32"), ("--layers", "3", "2"),
                                    ("--heads", "4", "2"), ("--vocab", "300", "256")):
        result = run([phalanx, "train", "--data", d / "train.bin", "--init-from", exported[0],
                      flag, value, "--steps", "1", "--ckpt-dir", tmp_path / "c"])
        assert result.returncode == 2, result.stderr
        assert f"has {flag} {file_value}, this run has {flag} {value}" in result.stderr
        assert not (tmp_path / "c").exists()
    same = run([phalanx, "train", "--data", d / "train.bin", "--init-from", exported[1],
                "--dim", "32", "--steps", "1", "--quiet"])
    assert same.returncode == 0, same.stderr


def test_eval_refuses_more_batches_than_the_data_holds(phalanx, trained):
    d, ckpt = trained
    # 4000 tokens hold (4000 - 1) // (4 * 32) = 31 batches
    result = run([phalanx, "eval", ckpt, "--data", d / "val.bin", "--micro-batch", "4",
                  "--batches", "32"])
    assert result.returncode == 1
    assert "--batches 32 is more than" in result.stderr and "31 batches" in result.stderr
    assert eval_json(phalanx, ckpt, d / "val.bin", ["--micro-batch", "4",
                                                     "--batches", "31"])["batches"] == 31



# ---- eval under `phalanx run`: the ranks split the batches, rank 0 sums them in order

def eval_under_run(phalanx, ranks, model, data, extra, launcher=()):
    """`phalanx run -n RANKS [launcher] -- eval MODEL --data DATA [extra]` (120 s catch a hang)."""
    return run([phalanx, "run", "-n", ranks, *launcher, "--", "eval", model, "--data", data,
                *extra], timeout=120)


@pytest.mark.parametrize("ranks,batches", [(2, 7), (3, 7), (3, 2)])
def test_eval_under_run_gives_the_loss_of_one_rank_bit_for_bit(phalanx, trained, ranks,
                                                                batches):
    """7 batches split unevenly over 2 and 3 ranks, and 3 ranks for 2 batches (one rank
    idle): the losses are summed in batch order in double, as one process sums them."""
    d, ckpt = trained
    extra = ["--micro-batch", "4", "--seq-len", "32", "--batches", str(batches), "--json"]
    one = eval_json(phalanx, ckpt, d / "val.bin", extra)
    result = eval_under_run(phalanx, ranks, ckpt, d / "val.bin", extra)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout  # rank 0 alone prints
    assert json.loads(lines[0]) == one  # every field, the loss to the bit
    text = eval_under_run(phalanx, ranks, ckpt, d / "val.bin", extra[:-1])
    assert text.returncode == 0, text.stderr
    assert text.stdout.strip() == f"loss {one['loss']:.6f} over {batches} batches of 4 x 32 tokens"


def test_eval_under_run_refuses_more_batches_than_the_data_holds(phalanx, trained):
    d, ckpt = trained
    result = eval_under_run(phalanx, 2, ckpt, d / "val.bin", ["--micro-batch", "4",
                                                                "--batches", "32"])
    assert result.returncode == 1, result.stderr
    # said once, by rank 0: every rank reads the same data
    assert result.stderr.count("--batches 32 is more than") == 1, result.stderr
    assert "31 batches" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("launcher,extra,expected", [
    ((), ["--pp", "2"], "--pp: eval has no layout"),
    ((), ["--dp", "2"], "--dp: eval has no layout"),
    ((), ["--bogus"], "unknown option '--bogus'"),
    (("--elastic",), [], "eval is not elastic"),
])
def test_eval_under_run_refuses_bad_usage_before_any_rank_starts(phalanx, trained, launcher,
                                                                 extra, expected):
    d, ckpt = trained
    result = eval_under_run(phalanx, 2, ckpt, d / "val.bin", extra, launcher)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count(expected) == 1, result.stderr
    assert "starting" not in result.stderr  # refused by the launcher, not by the ranks


def test_drill_refuses_eval(phalanx, trained, tmp_path):
    d, ckpt = trained
    result = run([phalanx, "drill", "-n", "2", "--report", tmp_path / "r.json", "--", "eval",
                  ckpt, "--data", d / "val.bin"], timeout=120)
    assert result.returncode == 2, result.stderr
    assert "phalanx drill: eval is not elastic" in result.stderr
    assert not (tmp_path / "r.json").exists()
