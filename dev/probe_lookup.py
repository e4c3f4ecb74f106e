"""Can a base model do the lookup the rationales end with? Numbered documents of the corpus's kind, cut just
before the first number looked up ("... 2: cow, the cow eats grass 2. grass" -> " 2"); the share the model
predicts right (chance: about 1 in the number of entries).

    python -m dev.probe_lookup --ckpt=out/demo/base/ckpt.pt [--data_dir=out/data] [--n=300]
"""
import random
from dataclasses import dataclass

import torch

import checkpoint
import cli
from data.synthetic import corpus
from data.tokenizer import load_tokenizer


@dataclass
class ProbeConfig:
    ckpt: str = "out/demo/base/ckpt.pt"
    data_dir: str = ""  # default: the data the checkpoint was trained on
    n: int = 300  # documents to probe


@torch.no_grad()
def main(argv=None):
    cfg = cli.parse(ProbeConfig, argv)
    model, ckpt = checkpoint.load_checkpoint(cfg.ckpt)
    model.eval()
    enc = load_tokenizer(cfg.data_dir or ckpt["data"]["data_dir"])
    rng = random.Random(12345)
    right, n = 0, cfg.n
    for _ in range(n):
        doc = corpus.numbered_doc(rng)
        end = doc.index(". ", doc.rindex(":"))  # the end of the numbered entries
        words, number = doc[end + 2:].split(". ")[0].rstrip(".").rsplit(" ", 1)
        logits, _ = model(torch.tensor([enc.encode(doc[:end + 2] + words)]))
        right += enc.decode([int(logits[0, -1, :enc.n_vocab].argmax())]).strip() == number  # past n_vocab: padding
    print(f"lookup right {right}/{n} = {right / n:.1%}")
    return right / n


if __name__ == "__main__":
    main()
