"""Token shards written with numpy, independently of Phalanx's own writer:
llm.c's format, 256 little-endian int32 (magic 20240520, version 1, count)
followed by uint16 tokens."""
import numpy as np

MAGIC, VERSION = 20240520, 1


def write_shard(path, tokens, magic=MAGIC, version=VERSION, count=None):
    header = np.zeros(256, dtype="<i4")
    header[0], header[1] = magic, version
    header[2] = len(tokens) if count is None else count
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype="<u2").tobytes())


def text_tokens(text):
    return np.frombuffer(text.encode(), dtype=np.uint8).astype(np.uint16)


def structured_text(n_chars, seed=0):
    """English-like text with strong structure: a few sentences repeated in
    random order, so that a small model can learn it in a few dozen steps."""
    rng = np.random.default_rng(seed)
    sentences = ["the cat sat on the mat. ", "a dog ran in the park. ",
                 "we like to read books. ", "it is a sunny day today. ",
                 "she sells sea shells by the shore. "]
    out = []
    while sum(map(len, out)) < n_chars:
        out.append(sentences[rng.integers(len(sentences))])
    return "".join(out)[:n_chars]
