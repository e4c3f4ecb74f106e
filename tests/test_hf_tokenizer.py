"""The tokenizer of a Hugging Face GPT-2 directory (vocab.json + merges.txt) as a tiktoken Encoding.

The tests write small GPT-2-style files themselves and check our loader against an independent computation
of GPT-2's BPE (Hugging Face's way: merge the pair that comes first in merges.txt), against transformers'
GPT2Tokenizer where transformers is installed, and that files which would tokenize differently are refused.

    python -m pytest tests/test_hf_tokenizer.py -q
"""

import json
import math
import random
import sys
import types
from collections import Counter

import pytest
import regex

import model
from data import tokenizer
from data.prepare import PrepareConfig, build_tokenizer, prepare

EOT = "<|endoftext|>"
# GPT-2's split pattern as its encoder.py (and Hugging Face) write it; tiktoken's spelling differs
HF_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

TRAIN_TEXT = [
    "The owl lives in the forest. It's 12 km from the river; they'll say it's 3,456 m high!\n",
    "We've seen 7 owls, 42 foxes and 1,000 trees... Don't you think so?  Yes:  (a) [b] {c}\n\n",
    "Les hiboux vivent dans la forêt. Große Eulen, ñandú, Ωmega. 猫头鹰住在森林里。 🦉🦉 🐍\n",
    "\tdef f(x):\n\t\treturn x ** 2  # square\n",
] * 3

TEST_TEXT = [
    "", " ", "  ", "\n", "\n\n\t  ", "a", " the owl", "The owl lives in the forest.",
    "It's I'll we've they're I'm he'd IT'S don't", "'s'll 've ’re",
    "12 123 1234 12345 3,456.78 ½ ² ٣",
    "emoji 🦉🐍👩‍👩‍👧 and flags 🇫🇷", "CJK 猫头鹰住在森林里。ひらがな 한국어",
    "control \x00\x01\x07\x1b[0m\x7f\xa0\xad chars", "combining é vs é, ﬁ ligature, \u200b\ufeff",
    "trailing spaces   ", "   leading", "a  b   c\n  d", "x\r\ny", "((([[[{{{}}}]]])))!!!???",
    EOT, f"before{EOT}after", f" {EOT} ", f"{EOT}{EOT}", "<|endoftext|", "endoftext|>", "<|endoftext|>\n",
    "RTL עברית العربية", "Les hiboux vivent dans la forêt.",
]


def gpt2_alphabet():
    """{byte: character}, built as GPT-2's encoder.py builds it: printable bytes as themselves, then the
    others, in byte order, as chr(256), chr(257), ..."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def merge_all(symbols, pair):
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def train_gpt2_files(texts, n_merges):
    """(vocab, merges) made as GPT-2's are: bytes first in the alphabet's order, then one new token per merge,
    the merges learnt by counting pairs over the words of the texts (most frequent first)."""
    alphabet = gpt2_alphabet()
    words = Counter(tuple(alphabet[b] for b in w.encode("utf-8")) for t in texts for w in regex.findall(HF_PATTERN, t))
    vocab = {char: i for i, char in enumerate(alphabet.values())}
    merges = []
    while len(merges) < n_merges:
        pairs = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                if pair[0] + pair[1] not in vocab:  # every merge makes a new token
                    pairs[pair] += count
        if not pairs:
            break
        pair = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(" ".join(pair))
        vocab[pair[0] + pair[1]] = len(vocab)
        words = Counter({tuple(merge_all(list(w), pair)): c for w, c in words.items()})
    vocab[EOT] = len(vocab)
    return vocab, merges


def hf_style_encode(text, vocab, merges, special=True):
    """GPT-2's BPE as Hugging Face computes it: split out the special token (unless special=False), split the
    rest with the pattern, write each piece's bytes in the alphabet, merge the adjacent pair that comes first
    in merges.txt (all its occurrences) until no pair is a merge, look the symbols up in vocab.json."""
    rank = {tuple(m.split(" ")): i for i, m in enumerate(merges)}
    alphabet = gpt2_alphabet()
    ids = []
    for k, chunk in enumerate(text.split(EOT) if special else [text]):
        if k:
            ids.append(vocab[EOT])
        for word in regex.findall(HF_PATTERN, chunk):
            symbols = [alphabet[b] for b in word.encode("utf-8")]
            while len(symbols) > 1:
                pair = min(zip(symbols, symbols[1:]), key=lambda p: rank.get(p, math.inf))
                if pair not in rank:
                    break
                symbols = merge_all(symbols, pair)
            ids += [vocab[s] for s in symbols]
    return ids


def write_hf_dir(directory, vocab, merges, header="#version: 0.2"):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("\n".join([header, *merges]) + "\n", encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def files():
    return train_gpt2_files(TRAIN_TEXT, 120)


def random_texts(n, seed=0):
    rng = random.Random(seed)
    pieces = list("aeiouxyz THE0123456789 \t\n.,;:'!?-()éßΩ猫🦉\x00\xa0") + \
        ["'s", "'ll", " owl", " the", "  ", "\n\n", "1,000", EOT, "forêt", "’", "👩‍👧"]
    return ["".join(rng.choice(pieces) for _ in range(rng.randrange(1, 30))) for _ in range(n)]


# ----------------------------------------------------------------------------------------------------------

def test_byte_alphabet():
    alphabet = tokenizer.bytes_to_unicode()
    assert alphabet == gpt2_alphabet()
    assert len(set(alphabet.values())) == 256
    assert (alphabet[ord(" ")], alphabet[ord("\n")], alphabet[0], alphabet[ord("!")], alphabet[0xAD]) == \
        ("Ġ", "Ċ", "Ā", "!", "Ń")


def test_hf_directory_matches_independent_bpe(tmp_path, files):
    vocab, merges = files
    assert len(merges) == 120  # the training text has more pairs than that: words stay split too
    enc = tokenizer.load_tokenizer(write_hf_dir(tmp_path / "gpt2-tiny", vocab, merges))
    assert (enc.n_vocab, enc.eot_token, enc.name) == (len(vocab), vocab[EOT], "gpt2-tiny")
    texts = TEST_TEXT + TRAIN_TEXT + random_texts(500)
    # the merges take part: a fifth fewer tokens than bytes
    assert sum(len(hf_style_encode(t, vocab, merges)) for t in texts) < sum(len(t.encode()) for t in texts) * 0.8
    for text in texts:
        expected = hf_style_encode(text, vocab, merges)
        assert enc.encode(text, allowed_special="all") == expected, text
        assert enc.decode(expected) == text
        # encode_ordinary reads the special token as plain characters
        assert enc.encode_ordinary(text) == hf_style_encode(text, vocab, merges, special=False), text


def test_matches_transformers(tmp_path, files):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (not a dependency)")
    vocab, merges = files
    directory = write_hf_dir(tmp_path / "gpt2-tiny", vocab, merges)
    hf = transformers.GPT2Tokenizer.from_pretrained(str(directory))
    enc = tokenizer.load_tokenizer(directory)
    for text in TEST_TEXT + TRAIN_TEXT + random_texts(500, seed=1):
        assert enc.encode(text, allowed_special="all") == hf.encode(text), text


def vocab_of(merges):
    """vocab.json for a merge list, numbered as GPT-2's: bytes, merges in order, <|endoftext|>."""
    vocab = {char: i for i, char in enumerate(gpt2_alphabet().values())}
    for merge in merges:
        vocab[merge.replace(" ", "")] = len(vocab)
    return {**vocab, EOT: len(vocab)}


def swap(items, i, j):
    items = list(items)
    items[i], items[j] = items[j], items[i]
    return items


def renumber(vocab, a, b):
    return {**vocab, a: vocab[b], b: vocab[a]}


def move_before_its_part(merges):
    """The merge list with the first merge that joins an earlier merge's token moved before that merge."""
    made = {m.replace(" ", ""): i for i, m in enumerate(merges)}
    k, j = next((k, made[part]) for k, m in enumerate(merges) for part in m.split(" ") if part in made)
    return merges[:j] + [merges[k]] + merges[j:k] + merges[k + 1:]


@pytest.mark.parametrize("damage,words", [
    # ids out of merge order: tiktoken would rank the pairs differently from merges.txt
    (lambda v, m: (v, swap(m, 0, 1)), r"merges.txt merge 0 \('Ġ t'\): makes a token that vocab.json numbers 257, "
                                      r"not 256: tiktoken needs ids in merge order"),
    (lambda v, m: (vocab_of(move_before_its_part(m)), move_before_its_part(m)),
     "merges.txt merge .*: joins a token that is not made before it"),
    (lambda v, m: (v, m[:3] + [m[3] + " e"] + m[4:]), "merges.txt merge 3 .*: a merge is two tokens"),
    (lambda v, m: ({**v, "a b": len(v)}, m), "vocab.json: 'a b' is not a token in GPT-2's byte alphabet"),
    (lambda v, m: ({**v, "Ġzzz": len(v)}, m), r"vocab.json: 377 tokens besides <\|endoftext\|>, but the 256 bytes "
                                              r"and the 120 merges of merges.txt make 376"),
    (lambda v, m: (renumber(v, "!", m[0].replace(" ", "")), m), "vocab.json: the 256 single bytes must have ids"),
    (lambda v, m: ({**v, EOT: 7}, m), r"vocab.json: <\|endoftext\|> has id 7, which a BPE token has"),
])
def test_files_that_would_tokenize_differently_are_refused(tmp_path, files, damage, words):
    vocab, merges = damage(*files)
    with pytest.raises(ValueError, match=words):
        tokenizer.load_tokenizer(write_hf_dir(tmp_path / "bad", vocab, merges))


def test_what_the_check_cannot_see(tmp_path):
    """load_hf_tokenizer's docstring: hand-made merges can pass the check and still tokenize differently (BPE
    training does not make such lists; the tests above use trained ones)."""
    merges = ["a b", "c d", "ab c", "abc d"]
    vocab = vocab_of(merges)
    enc = tokenizer.load_tokenizer(write_hf_dir(tmp_path / "hand-made", vocab, merges))
    assert hf_style_encode("abcd", vocab, merges) == [vocab["ab"], vocab["cd"]]
    assert enc.encode_ordinary("abcd") == [vocab["abcd"]]


def test_a_missing_file_is_named(tmp_path, files):
    directory = write_hf_dir(tmp_path / "gpt2-tiny", *files)
    (directory / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match="merges.txt is missing"):
        tokenizer.load_tokenizer(directory)


def test_the_files_written_here_are_numbered_as_gpt2s(files):
    # the damage tests above build on this: our numbering of a merge list is the trained files' own
    vocab, merges = files
    assert vocab_of(merges) == vocab and vocab["!"] == 0 and vocab["Ā"] == 188


def test_load_tokenizer_takes_each_kind_of_path(tmp_path, files, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hf_dir = write_hf_dir(tmp_path / "gpt2-tiny", *files)
    text = "The owl's 12 forêts 🦉" + EOT
    expected = tokenizer.load_hf_tokenizer(hf_dir).encode(text, allowed_special="all")
    # a data directory naming the Hugging Face directory, and one holding its own .tiktoken file
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.json").write_text(json.dumps({"tokenizer": str(hf_dir)}))
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "meta.json").write_text(json.dumps({"tokenizer": "tokenizer.tiktoken"}))
    vocab = [bytes([b]) for b in range(256)] + [b"ow", b" ow", b" owl"]
    (tmp_path / "own" / "tokenizer.tiktoken").write_bytes(tokenizer.tiktoken_file_bytes(vocab))
    for path in (hf_dir, str(hf_dir), tmp_path / "data"):
        assert tokenizer.load_tokenizer(path).encode(text, allowed_special="all") == expected
    for path in (tmp_path / "own", tmp_path / "own" / "tokenizer.tiktoken"):
        assert tokenizer.load_tokenizer(path).encode_ordinary(" owl") == [258]
    # an encoding name goes to tiktoken (offline here, so tiktoken is stood in for)
    monkeypatch.setattr(tokenizer.tiktoken, "get_encoding", lambda name: f"tiktoken's {name}")
    assert tokenizer.load_tokenizer("gpt2") == "tiktoken's gpt2"
    (tmp_path / "empty").mkdir()
    for path in ("no-such-thing", tmp_path / "empty", hf_dir / "vocab.json"):
        with pytest.raises(ValueError, match="expected a data directory .*, a Hugging Face GPT-2 directory "
                                             r"\(with vocab.json and merges.txt\), a .tiktoken file, or a "
                                             r"tiktoken encoding name \(.*gpt2"):
            tokenizer.load_tokenizer(path)


def test_prepare_with_a_hugging_face_directory(tmp_path, files):
    hf_dir = write_hf_dir(tmp_path / "gpt2-tiny", *files)
    meta = prepare(PrepareConfig(out=str(tmp_path / "data"), scale=0.05, tokenizer=str(hf_dir)))
    enc, hf_enc = tokenizer.load_tokenizer(tmp_path / "data"), tokenizer.load_hf_tokenizer(hf_dir)
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot_token"]) == (str(hf_dir), hf_enc.n_vocab, files[0][EOT])
    corpus = (tmp_path / "data" / "corpus.txt").read_text()
    assert enc.encode_ordinary(corpus) == hf_enc.encode_ordinary(corpus)
    assert not (tmp_path / "data" / "tokenizer.tiktoken").exists()
    with pytest.raises(ValueError, match="--tokenizer takes bpe or a tokenizer to load: .*expected a data directory"):
        build_tokenizer(PrepareConfig(tokenizer=str(tmp_path / "nowhere")), [], {})


def test_hub_download_brings_the_tokenizer(tmp_path, monkeypatch):
    """Loading a model by hub name fetches vocab.json and merges.txt with the weights (huggingface_hub stood in)."""
    asked = {}

    def snapshot_download(name, allow_patterns):
        asked.update(name=name, patterns=allow_patterns)
        return str(tmp_path)
    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    assert model._checkpoint_dir("gpt2") == str(tmp_path)
    assert asked["name"] == "gpt2" and {"config.json", "vocab.json", "merges.txt"} <= set(asked["patterns"])
