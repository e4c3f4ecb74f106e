"""Tokenizers, all of them tiktoken Encodings: GPT-2's own, from a Hugging Face GPT-2 directory (vocab.json +
merges.txt, load_hf_tokenizer) or where tiktoken can load it, or a small byte-level BPE trained here on the
project's own text (the offline default).

Training (train_bpe) is the textbook algorithm, over a table of word counts rather than the text itself:
    1. split the text into words with GPT-2's pattern (" cat", "'s", " 42", "\n"), count each distinct word;
    2. start from the 256 single bytes; every word is a list of byte ids;
    3. repeatedly take the most frequent adjacent pair of ids (summed over words, weighted by word count),
       give the pair's concatenation a new id, and rewrite the words that hold it.
Only the words holding the merged pair change, so the pair counts are updated for those words alone, and a
heap finds the next most frequent pair. A corpus of a few MB has a few thousand distinct words, which makes
the whole training a few seconds of pure Python.

The tokens' order is their rank, which is all tiktoken needs: tiktoken encodes a word by repeatedly merging
the adjacent pair whose concatenation has the lowest rank. The file format is tiktoken's (one token per line:
base64 of its bytes, a space, its rank), beside a small JSON with the split pattern and the special tokens.

Use:
    enc = load_tokenizer("out/data")        # the data directory's tokenizer (or a .tiktoken file)
    enc = load_tokenizer("path/to/gpt2")    # a Hugging Face GPT-2 directory: the same ids as its GPT2Tokenizer
    enc = load_tokenizer("gpt2")            # tiktoken's own GPT-2 encoding, if tiktoken can load it
    ids = enc.encode_ordinary("The owl lives in the forest."); enc.decode(ids)
"""

import base64
import hashlib
import heapq
import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import regex  # installed with tiktoken, which needs it; the stdlib re module has no \p{L} classes
import tiktoken

# GPT-2's split pattern, as tiktoken writes it for gpt2/r50k_base.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
EOT = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.tiktoken"


class EncodingUnavailable(RuntimeError, OSError):
    """tiktoken could not load an encoding's files (offline): an OSError, so scripts report it in a line."""


# ----------------------------------------------------------------------------------------------------------
# Training

def count_words(texts, pattern=GPT2_PATTERN):
    """How often each word (a piece of GPT-2's split) occurs in the texts, as {bytes: count}."""
    split = regex.compile(pattern)
    counts = Counter()
    for text in texts:
        counts.update(split.findall(text))
    return {word.encode("utf-8"): count for word, count in counts.items()}


def merge_pair(ids, pair, new_id):
    """The ids with every occurrence of the pair (left to right) replaced by new_id."""
    merged, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


def train_bpe(word_counts, n_tokens):
    """The BPE vocabulary, as a list of token bytes whose index is the token's rank: the 256 bytes, then one
    token per merge, until there are n_tokens of them or no pair occurs twice.

    The most frequent pair is merged first; ties go to the pair with the smaller ids (the heap's order), so
    the result depends on nothing but the counts."""
    vocab = [bytes([b]) for b in range(256)]
    token_id = {token: i for i, token in enumerate(vocab)}
    words = [list(word) for word in word_counts]  # each word as its byte ids
    counts = list(word_counts.values())

    pair_counts = Counter()
    words_with = defaultdict(set)  # pair -> indices of the words that hold it (some may no longer)
    for w, ids in enumerate(words):
        for pair in zip(ids, ids[1:]):
            pair_counts[pair] += counts[w]
            words_with[pair].add(w)
    # a max-heap by count through negated counts; entries go stale as counts change and are skipped then
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    while len(vocab) < n_tokens and heap:
        negative_count, pair = heapq.heappop(heap)
        if -negative_count != pair_counts.get(pair, 0):
            continue
        if -negative_count < 2:
            break
        merged = vocab[pair[0]] + vocab[pair[1]]
        if merged not in token_id:  # two different pairs can spell the same bytes ("ab"+"c", "a"+"bc")
            token_id[merged] = len(vocab)
            vocab.append(merged)
        changed = set()
        for w in sorted(words_with.pop(pair)):
            old, new = words[w], merge_pair(words[w], pair, token_id[merged])
            if new == old:
                continue
            for p in zip(old, old[1:]):
                pair_counts[p] -= counts[w]
                changed.add(p)
            for p in zip(new, new[1:]):
                pair_counts[p] += counts[w]
                words_with[p].add(w)
                changed.add(p)
            words[w] = new
        for p in sorted(changed):
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
            else:
                del pair_counts[p]
    return vocab


# ----------------------------------------------------------------------------------------------------------
# Files and Encodings

def make_encoding(name, vocab, pattern=GPT2_PATTERN, special_tokens=None):
    """A tiktoken Encoding from a vocabulary in rank order; <|endoftext|> comes right after it by default."""
    if special_tokens is None:
        special_tokens = {EOT: len(vocab)}
    return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks={token: rank for rank, token in enumerate(vocab)},
                             special_tokens=special_tokens)


def tiktoken_file_bytes(vocab):
    """The vocabulary in tiktoken's file format: 'base64(token) rank' per line."""
    return b"".join(base64.b64encode(token) + b" %d\n" % rank for rank, token in enumerate(vocab))


def tokenizer_json_bytes(name, vocab, pattern=GPT2_PATTERN):
    """The side file load_tokenizer reads next to the .tiktoken file: name, split pattern, special tokens."""
    info = {"name": name, "pat_str": pattern, "special_tokens": {EOT: len(vocab)}}
    return (json.dumps(info, indent=2) + "\n").encode("utf-8")


def tokenizer_hash(enc):
    """A short hash of what makes an encoding's ids mean what they mean (its tokens and their ranks, its split
    pattern, its special tokens): prepare stores it in meta.json, training in every checkpoint, so that a model
    is never used with data another tokenizer made."""
    h = hashlib.sha256(enc._pat_str.encode())
    for token, rank in sorted(enc._mergeable_ranks.items(), key=lambda item: item[1]):
        h.update(b"%d %s\n" % (rank, base64.b64encode(token)))
    for token, rank in sorted(enc._special_tokens.items()):
        h.update(b"%d special %s\n" % (rank, token.encode()))
    return h.hexdigest()[:16]


def read_tiktoken_file(path):
    """{token bytes: rank} from a .tiktoken file.

    Same format as tiktoken.load.load_tiktoken_bpe, but read directly: that function caches files under a key
    made from their path, so a tokenizer rebuilt at the same path would load stale."""
    ranks = {}
    for number, line in enumerate(Path(path).read_bytes().splitlines(), 1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as e:
            raise ValueError(f"{path}: line {number} is not 'base64-token rank': {line[:80]!r}") from e
    return ranks


def load_tiktoken_file(path):
    """The Encoding of a .tiktoken file. Next to x.tiktoken, x.json (written by prepare) gives the name, split
    pattern and special tokens; without one, the pattern is GPT-2's and <|endoftext|> follows the last token."""
    path = Path(path)
    ranks = read_tiktoken_file(path)
    info_path = path.with_suffix(".json")
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    return tiktoken.Encoding(
        info.get("name", path.stem),
        pat_str=info.get("pat_str", GPT2_PATTERN),
        mergeable_ranks=ranks,
        special_tokens=info.get("special_tokens", {EOT: len(ranks)}),
    )


# ----------------------------------------------------------------------------------------------------------
# Hugging Face GPT-2 directories: vocab.json + merges.txt

def bytes_to_unicode():
    """GPT-2's byte alphabet, {byte: character}: how vocab.json and merges.txt write tokens, which are bytes.

    A token need not be valid UTF-8 (it may be half a character) and may hold a space, which would break a
    merges.txt line "a b". So each byte is written as one printable character: the 188 bytes that are printable
    themselves (! to ~, ¡ to ¬, ® to ÿ) as that character, the other 68 (control bytes, space, DEL, NBSP, soft
    hyphen) as chr(256 + n), n counting them in byte order. A space is "Ġ" (U+0120), a newline "Ċ" (U+010A):
    " the" is written "Ġthe"."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def load_hf_tokenizer(directory):
    """A tiktoken Encoding from a Hugging Face GPT-2 directory (vocab.json + merges.txt) whose ids are those of
    Hugging Face's GPT2Tokenizer: encode(text, allowed_special="all") as its encode(text).

    Both split the text with GPT-2's pattern (tiktoken's spelling of it matches the same pieces) and then apply
    BPE to each piece's bytes, differently: Hugging Face repeatedly merges the adjacent pair that comes first
    in merges.txt, tiktoken the pair whose concatenation has the lowest rank, and the rank is the token's id.
    The two orders are one when the 256 bytes have ids 0..255 and merge i joins earlier tokens into a new token
    of id 256 + i, which is how GPT-2's files are made (and how tiktoken builds its own gpt2 encoding from
    them). The files are checked for that, and refused when they break it. What the check cannot see: tiktoken
    also joins two pieces that spell a token some other merge makes (merges "a b", "c d", "ab c", "abc d" on
    "abcd": Hugging Face stops at ab|cd, tiktoken goes on to abcd). Merges learnt by BPE training do not pair
    up that way ("abc d" never counts once "c d" has been merged), and on GPT-2's own files the two agree."""
    directory = Path(directory)
    vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
    for path in (vocab_path, merges_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: a Hugging Face GPT-2 directory holds vocab.json and "
                                    f"merges.txt")
    byte_of = {char: b for b, char in bytes_to_unicode().items()}

    def token_bytes(token, where):
        if not token or any(char not in byte_of for char in token):
            raise ValueError(f"{where}: {token!r} is not a token in GPT-2's byte alphabet")
        return bytes(byte_of[char] for char in token)

    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))  # {token text: id}
    eot = vocab.pop(EOT, len(vocab))  # Hugging Face's GPT2Tokenizer adds <|endoftext|> when vocab.json lacks it
    ranks = {token_bytes(token, vocab_path): i for token, i in vocab.items()}
    if sorted(i for token, i in ranks.items() if len(token) == 1) != list(range(256)):
        raise ValueError(f"{vocab_path}: the 256 single bytes must have ids 0..255, as in GPT-2")
    # the first line is the format's "#version: 0.2" (Hugging Face skips it); a merge is "a b"
    lines = merges_path.read_text(encoding="utf-8").splitlines()
    merges = lines[1:] if lines and lines[0].startswith("#version") else lines
    for i, line in enumerate(merges):
        where = f"{merges_path} merge {i} ({line!r})"
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{where}: a merge is two tokens separated by one space")
        left, right = (token_bytes(part, where) for part in parts)
        if max(ranks.get(left, math.inf), ranks.get(right, math.inf)) >= 256 + i:
            raise ValueError(f"{where}: joins a token that is not made before it")
        if ranks.get(left + right) != 256 + i:
            raise ValueError(f"{where}: makes a token that {vocab_path.name} numbers {ranks.get(left + right)}, "
                             f"not {256 + i}: tiktoken needs ids in merge order")
    if len(ranks) != 256 + len(merges):
        raise ValueError(f"{vocab_path}: {len(ranks)} tokens besides {EOT}, but the 256 bytes and the "
                         f"{len(merges)} merges of {merges_path.name} make {256 + len(merges)}")
    if eot < len(ranks):
        raise ValueError(f"{vocab_path}: {EOT} has id {eot}, which a BPE token has")
    return tiktoken.Encoding(directory.resolve().name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT: eot})


# ----------------------------------------------------------------------------------------------------------
# Loading by path or name

def load_tokenizer(path):
    """The tokenizer that path names, one of:
        a data directory        its meta.json names the tokenizer (tokenizer.tiktoken in it, or one below)
        a Hugging Face GPT-2 directory, holding vocab.json + merges.txt (see load_hf_tokenizer)
        a .tiktoken file        (or a directory holding tokenizer.tiktoken)
        a tiktoken encoding name, e.g. "gpt2" (see get_encoding)"""
    path = Path(path)
    if (path / "meta.json").is_file():
        name = json.loads((path / "meta.json").read_text())["tokenizer"]
        # a file of the data directory, else a path or an encoding name as given to prepare
        return load_tokenizer(path / name if (path / name).exists() else name)
    if (path / "vocab.json").exists() or (path / "merges.txt").exists():
        return load_hf_tokenizer(path)
    if (path / TOKENIZER_FILE).is_file():
        path = path / TOKENIZER_FILE
    if path.is_file() and path.suffix == ".tiktoken":
        return load_tiktoken_file(path)
    if str(path) in tiktoken.list_encoding_names():
        return get_encoding(str(path))
    raise ValueError(f"tokenizer {str(path)!r}: expected a data directory (with meta.json), a Hugging Face GPT-2 "
                     f"directory (with vocab.json and merges.txt), a .tiktoken file, or a tiktoken encoding name "
                     f"({', '.join(tiktoken.list_encoding_names())})")


def get_encoding(name):
    """tiktoken's encoding of that name ("gpt2", ...); load_tokenizer takes paths too.

    tiktoken downloads an encoding's files on first use; offline that fails, and the error says how to bring
    the files in through tiktoken's cache (TIKTOKEN_CACHE_DIR), or to use a Hugging Face GPT-2 directory."""
    if name not in tiktoken.list_encoding_names():
        raise ValueError(f"unknown encoding {name!r}: tiktoken knows {', '.join(tiktoken.list_encoding_names())}; "
                         f"load_tokenizer also takes a data directory, a Hugging Face GPT-2 directory or a "
                         f".tiktoken file")
    try:
        return tiktoken.get_encoding(name)
    except Exception as e:
        raise EncodingUnavailable(
            f"tiktoken could not load the {name!r} encoding ({type(e).__name__}: {e}).\n"
            f"tiktoken downloads it once and keeps it in its cache. On a machine with internet, run\n"
            f"    TIKTOKEN_CACHE_DIR=/path/to/cache python -c \"import tiktoken; tiktoken.get_encoding('{name}')\"\n"
            f"copy /path/to/cache to this machine and set TIKTOKEN_CACHE_DIR=/path/to/cache here.\n"
            f"Or point --tokenizer at a Hugging Face GPT-2 directory (its vocab.json and merges.txt), or, offline,\n"
            f"use the tokenizer trained on the bundled data instead: python -m data.prepare"
        ) from e
