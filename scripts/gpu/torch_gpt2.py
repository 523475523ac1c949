"""GPT-2 124M training steps in PyTorch on one GPU, timed: the reference that
Phalanx's CUDA tokens/s is a ratio to (bench_gpt2.py runs it, one process per
mode and precision, so a failing torch.compile costs only its own row).

The model is the one `phalanx train --layers 12 --heads 12 --dim 768
--seq-len 1024 --vocab 50304` trains: token and position embeddings,
pre-LayerNorm blocks (causal attention, tanh-GELU MLP, biases everywhere), a
final LayerNorm and a head tied to the token embedding; AdamW; the same
batch of random tokens. Attention goes through
F.scaled_dot_product_attention, as a PyTorch user would write it.

Prints one JSON object: mode, precision, batch, tokens_per_s and step_ms
(medians of the steps after the warm-up, which holds compilation)."""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

VOCAB, LAYERS, HEADS, DIM, SEQ = 50304, 12, 12, 768, 1024


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = torch.nn.LayerNorm(DIM)
        self.qkv = torch.nn.Linear(DIM, 3 * DIM)
        self.proj = torch.nn.Linear(DIM, DIM)
        self.ln2 = torch.nn.LayerNorm(DIM)
        self.fc = torch.nn.Linear(DIM, 4 * DIM)
        self.fcproj = torch.nn.Linear(4 * DIM, DIM)

    def forward(self, x):
        B, T, C = x.shape
        heads = self.qkv(self.ln1(x)).view(B, T, 3, HEADS, C // HEADS).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(heads[0], heads[1], heads[2], is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.fcproj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT2(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = torch.nn.Parameter(torch.randn(VOCAB, DIM) * 0.02)
        self.wpe = torch.nn.Parameter(torch.randn(SEQ, DIM) * 0.01)
        self.blocks = torch.nn.ModuleList(Block() for _ in range(LAYERS))
        self.lnf = torch.nn.LayerNorm(DIM)

    def forward(self, tokens, targets):
        x = self.wte[tokens] + self.wpe[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        logits = self.lnf(x) @ self.wte.t()
        return F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))


def set_precision(precision):
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


def timed_steps(step, steps):
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["eager", "compile"], required=True)
    parser.add_argument("--precision", choices=["fp32", "tf32"], required=True)
    parser.add_argument("--batch", type=int, default=8, help="sequences of 1024 per step")
    parser.add_argument("--steps", type=int, default=8, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    set_precision(args.precision)
    torch.manual_seed(0)
    model = GPT2().cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)
    loss_of = torch.compile(model) if args.mode == "compile" else model
    tokens = torch.randint(0, 50257, (args.batch, SEQ + 1), device="cuda")

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_of(tokens[:, :-1], tokens[:, 1:]).backward()
        optimizer.step()

    timed_steps(step, args.warmup)
    step_s = statistics.median(timed_steps(step, args.steps))
    print(json.dumps({"mode": args.mode, "precision": args.precision, "batch": args.batch,
                      "tokens_per_s": args.batch * SEQ / step_s, "step_ms": step_s * 1e3}))


if __name__ == "__main__":
    main()
