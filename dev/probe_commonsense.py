"""Where a fine-tuned checkpoint goes wrong on the multiple-choice tasks: the rationale's sentences, one by
one, against the reference output's (the facts written for each option, then the value looked up with its
number, then the label).

    python -m dev.probe_commonsense --ckpt=out/demo/moelora/ckpt.pt [--max_items=150] [--dump=outputs.jsonl]

For each task: accuracy, and for each sentence of the reference output (split at ". " and at line ends),
the fraction of outputs whose sentence matches it exactly; "label follows" counts outputs whose label repeats
the number they wrote last (for syn_aqua: is the letter of that number), right or wrong. --dump writes every
output beside its reference.
"""
import json
import os
import re
from dataclasses import dataclass

import torch

import checkpoint
import cli
from data.llm_adapters import is_correct, load_json
from data.tokenizer import load_tokenizer
from evaluate import answer_length, greedy_answers, read_meta


@dataclass
class ProbeConfig:
    ckpt: str = "out/demo/moelora/ckpt.pt"
    data_dir: str = ""  # default: the data the checkpoint was trained on
    max_items: int = 150  # test items per task
    dump: str = ""  # a .jsonl file for every output beside its reference
    device: str = "auto"


@torch.no_grad()
def main(argv=None):
    cfg = cli.parse(ProbeConfig, argv)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model, ckpt = checkpoint.load_checkpoint(cfg.ckpt)
    model.to(device).eval()
    data_dir = cfg.data_dir or ckpt["data"]["data_dir"]
    meta, enc = read_meta(data_dir), load_tokenizer(data_dir)
    n = cfg.max_items
    dump = open(cfg.dump, "w") if cfg.dump else None
    for task in meta["commonsense_tasks"] + ["syn_aqua"]:
        items = load_json(os.path.join(data_dir, "tasks", task, "test.json"))[:n]
        outs = greedy_answers(model, enc, items, answer_length(enc, data_dir, task), meta["eot_token"])
        if dump:
            for o, it in zip(outs, items):
                dump.write(json.dumps({"task": task, "output": o, "reference": it["output"]}) + "\n")
        acc = sum(is_correct(task, o, it["answer"]) for o, it in zip(outs, items)) / len(items)
        sentences = [re.split(r"\. |\n", o) for o in outs]
        reference = [re.split(r"\. |\n", it["output"]) for it in items]
        depth = max(map(len, reference))
        match = [sum(len(s) > i and len(r) > i and s[i] == r[i] for s, r in zip(sentences, reference)) / len(items)
                 for i in range(depth)]
        follows = 0
        for o in outs:
            last = re.search(r"(\w+), so the correct answer is \w*?(\d)$", o)
            if last:
                follows += last.group(1) == last.group(2)
            elif last := re.search(r" (\d)\. The answer is \(([A-E])\)\.$", o):
                follows += "ABCDE".index(last.group(2)) + 1 == int(last.group(1))
        print(f"{task:12s} acc {acc:6.1%}  sentences right " + " ".join(f"{m:6.1%}" for m in match) +
              f"  label follows {follows / len(items):6.1%}")
        for o, it in list(zip(outs, items))[:2]:
            print(f"    {o!r}  (want {it['answer']})")


if __name__ == "__main__":
    main()
