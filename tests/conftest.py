"""Shared test setup: tests import the project's top-level modules and helpers from tests/; the small data
build and the tiny base model that test_train.py and test_faults.py train on, each made once."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)


import pytest  # noqa: E402

from training import TINY_MODEL  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    from data.prepare import ensure
    path = tmp_path_factory.mktemp("data")
    ensure(str(path), seed=0, scale=0.02)
    return str(path)


@pytest.fixture(scope="session")
def base_ckpt(data_dir, tmp_path_factory):
    import train
    out = tmp_path_factory.mktemp("base")
    train.main(["--mode=pretrain", "--init_from=scratch", f"--data_dir={data_dir}", f"--out_dir={out}",
                "--batch_size=4", "--max_iters=6", "--eval_interval=3", "--eval_iters=2", "--log_interval=2"]
               + TINY_MODEL)
    return str(out / "ckpt.pt")
