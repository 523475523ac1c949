"""A plain PyTorch GPT-2 (the numerical reference for Phalanx's model).

Written from the GPT-2 description, not from Phalanx's C code: token and
position embeddings, pre-LayerNorm blocks with causal multi-head attention and a
tanh-GELU MLP, a final LayerNorm and a head tied to the token embedding.
Parameters are named as Phalanx names them, so a Phalanx tensor table maps
onto them one to one."""
import math

import torch
import torch.nn.functional as F


class Block(torch.nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.ln2 = torch.nn.LayerNorm(dim)
        self.fc = torch.nn.Linear(dim, 4 * dim)
        self.fcproj = torch.nn.Linear(4 * dim, dim)

    def attention(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        shape = (B, T, self.heads, C // self.heads)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(C // self.heads)
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
        y = F.softmax(scores, dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    def forward(self, x):
        x = x + self.attention(self.ln1(x))
        return x + self.fcproj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(torch.nn.Module):
    def __init__(self, vocab, layers, heads, dim, seq_len):
        super().__init__()
        self.wte = torch.nn.Parameter(torch.zeros(vocab, dim))
        self.wpe = torch.nn.Parameter(torch.zeros(seq_len, dim))
        self.blocks = torch.nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.lnf = torch.nn.LayerNorm(dim)

    def forward(self, tokens, targets=None):
        T = tokens.shape[1]
        x = self.wte[tokens] + self.wpe[:T]
        for block in self.blocks:
            x = block(x)
        logits = self.lnf(x) @ self.wte.t()
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss

    def named_phalanx_parameters(self):
        """Parameters under Phalanx's logical names."""
        names = {"wte": self.wte, "wpe": self.wpe,
                 "lnf.weight": self.lnf.weight, "lnf.bias": self.lnf.bias}
        parts = {"ln1": "ln1", "attn.qkv": "qkv", "attn.proj": "proj", "ln2": "ln2",
                 "mlp.fc": "fc", "mlp.proj": "fcproj"}
        for i, block in enumerate(self.blocks):
            for phalanx_name, attr in parts.items():
                module = getattr(block, attr)
                names[f"h.{i}.{phalanx_name}.weight"] = module.weight
                names[f"h.{i}.{phalanx_name}.bias"] = module.bias
        return names
