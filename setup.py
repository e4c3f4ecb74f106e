"""
Installs moelora's modules (model.py, moelora.py) and the data package; train.py, eval.py, export.py and
bench.py are scripts run from the checkout.

    pip install torch==2.13.0      # first: a bare 'torch' requirement would pull a multi-GB CUDA build
    pip install -e '.[test]'       # the project, plus what the tests need

Where torch has CUDA and nvcc is on the machine, the CUDA kernel (csrc/) is built here ahead of time;
elsewhere the install is pure Python and the kernel is JIT-built on first use on a GPU.
"""

from setuptools import setup

# === CUDA extension: begin ===
# The kernel (csrc/) as the module moelora_cuda_ext, built only where torch has CUDA and nvcc is found
# (CUDA_HOME); elsewhere nothing is built and kernel.load_kernel() JIT-builds csrc/ on first use. pip
# builds in an isolated environment without torch unless told not to:
#     pip install --no-build-isolation -e .      # TORCH_CUDA_ARCH_LIST picks the GPUs (default 8.0;9.0)
ext_modules, cmdclass = [], {}
try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
except ImportError:
    torch = None
if torch is not None and torch.version.cuda is not None and CUDA_HOME is not None:
    import os

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")  # the kernel needs sm_80 or newer
    ext_modules = [CUDAExtension("moelora_cuda_ext", ["csrc/moelora.cpp", "csrc/moelora.cu"],
                                 extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]})]
    cmdclass = {"build_ext": BuildExtension}
# === CUDA extension: end ===

setup(
    name="moelora",
    version="0.1.0",
    description="MoELoRA (LoRA as a mixture of experts) from scratch: GPT-2, adapters, a CUDA kernel",
    python_requires=">=3.11",
    py_modules=["model", "moelora", "kernel", "checkpoint", "cli"],
    packages=["data", "data.synthetic"],
    install_requires=["torch>=2.4", "numpy", "tiktoken", "regex", "ninja"],  # regex: GPT-2's split pattern
    extras_require={
        "test": ["pytest", "safetensors"],
        "hf": ["safetensors"],  # Hugging Face checkpoints in model.safetensors; export.py's adapter files
        "plot": ["matplotlib"],  # routing heatmaps
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
