"""`phalanx data prepare`: text files -> byte-level token shards (runtime/data.h).

The documents are rebuilt here from the rules in `phalanx data prepare --help`,
and the shards must decode to exactly those bytes."""
import math
import random
import re

import numpy as np
import pytest

from conftest import run

MAGIC, VERSION = 20240520, 1
BLANK = b" \t\r\v\f"


def documents(text: bytes) -> list:
    """The reference splitter: at "%" lines when there are any, else at blank lines;
    blank lines around a document dropped, empty documents dropped."""
    lines = text.split(b"\n")
    fortune = b"%" in lines
    docs, current = [], []
    for line in lines + [None]:
        if line is None or (line == b"%" if fortune else not line.strip(BLANK)):
            while current and not current[-1].strip(BLANK):
                current.pop()
            if current:
                docs.append(b"\n".join(current))
            current = []
        elif current or line.strip(BLANK):
            current.append(line)
    return docs


def read_shard(path):
    raw = path.read_bytes()
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert header[0] == MAGIC, path
    assert header[1] == VERSION, path
    assert not header[3:].any(), path
    assert len(raw) == 1024 + 2 * int(header[2]), path
    tokens = np.frombuffer(raw[1024:], dtype="<u2")
    assert tokens.max(initial=0) < 256, path
    return tokens


def read_split(out, name):
    """The shards of a split, checked to be numbered 000, 001, ... with no gap."""
    paths = sorted(out.glob(f"{name}_*.bin"))
    assert [p.name for p in paths] == [f"{name}_{i:03d}.bin" for i in range(len(paths))]
    return [read_shard(p) for p in paths]


def decode(shards):
    return b"".join(s.astype(np.uint8).tobytes() for s in shards)


def words(rng, n):
    vocab = ["lorem", "ipsum", "dolor", "sit", "amet", "élan", "naïve", "%", "50%", "tab\there",
             "--", "quote\"", "ünïcödé", "x" * 30]
    return " ".join(rng.choice(vocab) for _ in range(n))


def fortune_text(rng, count):
    """A fortune file: documents between "%" lines, some with inner blank lines,
    indentation, trailing spaces and blank lines around them."""
    out = []
    for i in range(count):
        lines = [("\t" if rng.random() < 0.3 else "") + words(rng, rng.randint(1, 12))
                 for _ in range(rng.randint(1, 5))]
        if rng.random() < 0.2:
            lines.insert(1, "")
        if rng.random() < 0.2:
            lines = ["", "   "] + lines + ["  "]
        out.append("\n".join(lines))
        out.append("%")
    return ("\n".join(out) + "\n").encode()


def paragraph_text(rng, count):
    """Plain text: paragraphs separated by one or more blank (or whitespace-only) lines."""
    parts = []
    for _ in range(count):
        # two words at least: a line of only "%" would make it a fortune file
        parts.append("\n".join(words(rng, rng.randint(2, 15)) for _ in range(rng.randint(1, 4))))
        parts.append(rng.choice(["", "", " \t", "\n", "\r"]))
    return ("\n\n".join(parts)).encode()


@pytest.fixture
def texts(tmp_path):
    rng = random.Random(1234)
    a = tmp_path / "a.fortune"
    a.write_bytes(fortune_text(rng, 300))
    b = tmp_path / "b.txt"
    b.write_bytes(paragraph_text(rng, 200))
    c = tmp_path / "c.fortune"
    c.write_bytes(b"%\n\n%\nonly one\n%\n  \n%\nand a last one without newline")
    return [a, b, c]


def expected_splits(paths, every):
    docs = [d for p in paths for d in documents(p.read_bytes())]
    val = [d for i, d in enumerate(docs) if i % every == every - 1]
    train = [d for i, d in enumerate(docs) if i % every != every - 1]
    return docs, train, val


def test_reference_splitter_rules():
    assert documents(b"a\n%\n\nb\n\nc\n%\n%\n  \n%\nd") == [b"a", b"b\n\nc", b"d"]
    assert documents(b"\n\na\nb\n \t\nc\n\n\n") == [b"a\nb", b"c"]
    assert documents(b"50%\n%%\n") == [b"50%\n%%"]


def test_shards_decode_to_the_documents(phalanx, tmp_path, texts):
    out = tmp_path / "out"
    result = run([phalanx, "data", "prepare", "--out", out, "--val-fraction", "0.25", *texts])
    assert result.returncode == 0, result.stderr
    docs, train, val = expected_splits(texts, 4)
    assert len(docs) > 450
    assert b"only one" in docs and docs[-1] == b"and a last one without newline"
    assert decode(read_split(out, "train")) == b"\n\n".join(train)
    assert decode(read_split(out, "val")) == b"\n\n".join(val)
    assert abs(len(val) / len(docs) - 0.25) < 0.01
    assert f"{len(docs)} documents" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["train_000.bin", "val_000.bin"]


def test_default_val_fraction_and_summary(phalanx, tmp_path, texts):
    out = tmp_path / "out"
    result = run([phalanx, "data", "prepare", "--out", out, *texts])
    assert result.returncode == 0, result.stderr
    docs, train, val = expected_splits(texts, 10)
    assert len(val) == len(docs) // 10
    train_tokens = np.concatenate(read_split(out, "train"))
    assert train_tokens.size == len(b"\n\n".join(train))
    counts = np.bincount(train_tokens, minlength=256)
    p = counts[counts > 0] / train_tokens.size
    entropy = float(-(p * np.log(p)).sum())
    printed = re.search(r"unigram entropy of the train tokens: ([0-9.]+) nats", result.stdout)
    assert printed, result.stdout
    assert float(printed.group(1)) == pytest.approx(entropy, abs=1e-4)
    assert re.search(rf"train\s+{len(train)} documents\s+{train_tokens.size} tokens",
                     result.stdout), result.stdout


def test_several_equal_shards_and_stale_ones_removed(phalanx, tmp_path, texts):
    out = tmp_path / "out"
    result = run([phalanx, "data", "prepare", "--out", out, "--shard-tokens", "1000", *texts])
    assert result.returncode == 0, result.stderr
    _, train, val = expected_splits(texts, 10)
    for name, split in (("train", train), ("val", val)):
        shards = read_split(out, name)
        total = len(b"\n\n".join(split))
        assert len(shards) == math.ceil(total / 1000) > 1
        sizes = [s.size for s in shards]
        assert max(sizes) <= 1000 and max(sizes) - min(sizes) <= 1
        assert decode(shards) == b"\n\n".join(split)

    # A second run with fewer shards replaces the set: no old shard may join it.
    result = run([phalanx, "data", "prepare", "--out", out, *texts])
    assert result.returncode == 0, result.stderr
    assert len(read_split(out, "train")) == 1 and len(read_split(out, "val")) == 1
    assert decode(read_split(out, "train")) == b"\n\n".join(train)
    assert "stale" in result.stdout


def test_output_is_deterministic(phalanx, tmp_path, texts):
    for name in ("x", "y"):
        result = run([phalanx, "data", "prepare", "--out", tmp_path / name, "--shard-tokens",
                      "5000", *texts])
        assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "x").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "y").iterdir())
    for n in names:
        assert (tmp_path / "x" / n).read_bytes() == (tmp_path / "y" / n).read_bytes()


def test_help(phalanx):
    result = run([phalanx, "data", "prepare", "--help"])
    assert result.returncode == 0
    assert "usage: phalanx data prepare" in result.stdout
    assert "--val-fraction" in result.stdout and "--shard-tokens" in result.stdout


BAD = {
    "missing input": (["--out", "{out}", "{tmp}/missing.txt"], ["missing.txt", "No such file"]),
    "input is a directory": (["--out", "{out}", "{tmp}"], ["cannot read", "{tmp}"]),
    "val fraction above 0.5": (["--out", "{out}", "--val-fraction", "1.5", "{good}"],
                               ["--val-fraction", "1.5"]),
    "val fraction zero": (["--out", "{out}", "--val-fraction", "0", "{good}"],
                          ["--val-fraction", "(0, 0.5]"]),
    "val fraction not a number": (["--out", "{out}", "--val-fraction", "abc", "{good}"],
                                  ["--val-fraction", "'abc'", "number"]),
    "val fraction nan": (["--out", "{out}", "--val-fraction", "nan", "{good}"],
                         ["--val-fraction", "nan"]),
    "shard tokens not a number": (["--out", "{out}", "--shard-tokens", "abc", "{good}"],
                                  ["--shard-tokens", "'abc'", "not an integer"]),
    "shard tokens trailing junk": (["--out", "{out}", "--shard-tokens", "12x", "{good}"],
                                   ["--shard-tokens", "'12x'"]),
    "shard tokens zero": (["--out", "{out}", "--shard-tokens", "0", "{good}"],
                          ["--shard-tokens", "between 1 and"]),
    "shard tokens negative": (["--out", "{out}", "--shard-tokens", "-5", "{good}"],
                              ["--shard-tokens", "-5"]),
    "too many shards": (["--out", "{out}", "--shard-tokens", "1", "{good}"],
                        ["raise --shard-tokens"]),
    "no --out": (["{good}"], ["--out DIR is required"]),
    "--out without value": (["{good}", "--out"], ["--out", "needs a value"]),
    "unknown option": (["--out", "{out}", "--bogus", "{good}"], ["unknown option", "--bogus"]),
    "no inputs": (["--out", "{out}"], ["no input files"]),
    "no documents": (["--out", "{out}", "{blank}"], ["no documents"]),
    "too few documents for validation": (["--out", "{out}", "{few}"],
                                         ["3 document", "validation", "--val-fraction"]),
    "one bad input among good": (["--out", "{out}", "{good}", "{tmp}/nope.txt"], ["nope.txt"]),
}


@pytest.mark.parametrize("case", BAD.keys())
def test_bad_input_is_refused_and_touches_nothing(phalanx, tmp_path, case):
    rng = random.Random(7)
    good = tmp_path / "good.txt"
    good.write_bytes(fortune_text(rng, 50))
    blank = tmp_path / "blank.txt"
    blank.write_bytes(b"\n \n%\n\t\n%\n")
    few = tmp_path / "few.txt"
    few.write_bytes(b"one\n\ntwo\n\nthree\n")
    out = tmp_path / "out"
    out.mkdir()
    # An earlier data set and a user's file, which a refused run must leave alone.
    (out / "train_000.bin").write_bytes(b"earlier train shard")
    (out / "val_000.bin").write_bytes(b"earlier val shard")
    (out / "notes.txt").write_bytes(b"mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    args, expected = BAD[case]
    names = dict(out=out, tmp=tmp_path, good=good, blank=blank, few=few)
    result = run([phalanx, "data", "prepare", *[a.format(**names) for a in args]])
    assert result.returncode != 0, result.stdout
    assert "phalanx data prepare: " in result.stderr
    for part in expected:
        assert part.format(**names) in result.stderr, result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
