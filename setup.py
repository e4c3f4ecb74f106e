"""
Installs moelora's modules (model.py, moelora.py) and the data package; train.py, eval.py and bench.py
are scripts run from the checkout.

    pip install torch==2.13.0      # first: a bare 'torch' requirement would pull a multi-GB CUDA build
    pip install -e '.[test]'       # the project, plus what the tests need

Where torch has CUDA and nvcc is on the machine, the CUDA kernel (csrc/) is built here ahead of time;
elsewhere the install is pure Python and the kernel is JIT-built on first use on a GPU.
"""

from setuptools import setup

# === CUDA extension: begin ===
ext_modules, cmdclass = [], {}
# === CUDA extension: end ===

setup(
    name="moelora",
    version="0.1.0",
    description="MoELoRA (LoRA as a mixture of experts) from scratch: GPT-2, adapters, a CUDA kernel",
    python_requires=">=3.11",
    py_modules=["model", "moelora", "cli"],
    packages=["data"],
    install_requires=["torch>=2.4", "numpy", "tiktoken", "ninja"],
    extras_require={
        "test": ["pytest", "safetensors"],
        "hf": ["safetensors"],  # Hugging Face checkpoints in model.safetensors
        "plot": ["matplotlib"],  # routing heatmaps
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
