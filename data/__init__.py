"""The data package: the on-disk contract every reader needs, and (in synthetic/) the suite the demo trains
and tests on, generated offline from a seed.

Read in this order:
    llm_adapters.py      the LLM-Adapters format: load_json, the prompt template, is_correct (the scoring rules)
    tokenizer.py         a byte-level BPE trained on the data's text, as a tiktoken Encoding (or tiktoken's GPT-2)
    prepare.py           `python -m data.prepare`: builds it all into out/data; its docstring is the on-disk contract
    prepare_llm_adapters.py  `python -m data.prepare_llm_adapters`: LLM-Adapters' real files into the same layout
    synthetic/           the generated suite: world, corpus, eleven tasks (its __init__.py gives the reading order)
"""
