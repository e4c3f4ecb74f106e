"""The bundled synthetic suite: a small closed world, a pretraining corpus that teaches it, and eleven generated
tasks that stand in for the paper's (the names say so: syn_gsm8k is not GSM8K). All of it follows from a seed;
data/prepare.py generates it in memory and writes it to the data directory, which is all training and
evaluation read (real LLM-Adapters data takes the same path without this subpackage).

Read in this order:
    world.py             the small world the data talks about (animals, objects, materials, places; arithmetic)
    corpus.py            the pretraining corpus that teaches that world
    math_tasks.py        six synthetic math tasks (stand-ins for AddSub, SingleEq, MultiArith, GSM8K, AQuA, SVAMP)
    commonsense_tasks.py five synthetic commonsense tasks (stand-ins for BoolQ, PIQA, ARC-e, ARC-c, OBQA)
    tasks.py             the suite: task order, sizes, train/test splits

To look at it (from the repository root):
    python -m data.synthetic.tasks     # one training item of each task
    python -m data.synthetic.corpus    # a sample of the corpus
"""
