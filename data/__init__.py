"""The data package: everything the demo trains and tests on, generated offline from a seed.

Read in this order:
    llm_adapters.py      the LLM-Adapters format: load_json, the prompt template, is_correct (the scoring rules)
    world.py             the small world the data talks about (animals, objects, materials, places; arithmetic)
    corpus.py            the pretraining corpus that teaches that world
    math_tasks.py        six synthetic math tasks (stand-ins for AddSub, SingleEq, MultiArith, GSM8K, AQuA, SVAMP)
    commonsense_tasks.py five synthetic commonsense tasks (stand-ins for BoolQ, PIQA, ARC-e, ARC-c, OBQA)
    tasks.py             the suite: task order, sizes, train/test splits
    tokenizer.py         a byte-level BPE trained on that text, as a tiktoken Encoding (or tiktoken's GPT-2)
    prepare.py           `python -m data.prepare`: builds it all into out/data; its docstring is the on-disk contract
"""
