"""Can a base model do the lookup the rationales end with? Numbered documents of the corpus's kind, cut just
before the first number looked up ("... 2: cow, the cow eats grass 2. grass" -> " 2"); the share the model
predicts right (chance: about 1 in the number of entries).

    python dev/probe_lookup.py --ckpt=out/demo/base/ckpt.pt [--data_dir=out/data] [--n=300]
"""
import os
import random
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402
from data.synthetic import corpus  # noqa: E402
from data.tokenizer import load_tokenizer  # noqa: E402


@torch.no_grad()
def main():
    args = dict(a.removeprefix("--").split("=", 1) for a in sys.argv[1:])
    model, ckpt = train.load_checkpoint(args["ckpt"])
    model.eval()
    enc = load_tokenizer(args.get("data_dir", ckpt["data"]["data_dir"]))
    rng = random.Random(12345)
    right, n = 0, int(args.get("n", 300))
    for _ in range(n):
        doc = corpus.numbered_doc(rng)
        end = doc.index(". ", doc.rindex(":"))  # the end of the numbered entries
        words, number = doc[end + 2:].split(". ")[0].rstrip(".").rsplit(" ", 1)
        logits, _ = model(torch.tensor([enc.encode(doc[:end + 2] + words)]))
        right += enc.decode([int(logits[0, -1].argmax())]).strip() == number
    print(f"lookup right {right}/{n} = {right / n:.1%}")


if __name__ == "__main__":
    main()
