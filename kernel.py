"""
The CUDA kernel's Python side: building and loading csrc/, the torch.library glue that makes its operators
traceable by torch.compile and differentiable, and the two functions moelora.py dispatches to.

csrc/moelora.cu computes the MoELoRA op's output in one launch and its four gradients in two more. csrc/
defines four operators: torch.ops.moelora.fwd / .bwd (the op) and .linear_fwd / .linear_bwd (the op with
the frozen layer fused in). Here they get fake implementations (shapes only, for torch.compile) and the
autograd formula that ties each forward to its backward.

    moelora_cuda(x, A, B, gates, scaling)                       moelora.moelora_ref's semantics
    moelora_linear_cuda(x, weight, bias, A, B, gates, scaling)  F.linear(x, weight, bias) + the same

Nothing here imports moelora.py; moelora.moelora(..., impl="cuda") is the usual way in. The reference
(moelora.moelora_ref) covers the CPU. Build and test on a GPU:
    python -c "import kernel; kernel.load_kernel()"      # JIT build with ninja, about a minute
    python -m pytest tests/test_kernel.py
"""

import os

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------
# Building and loading the extension

_kernel = None  # the extension module, once loaded
_kernel_error = None  # why it cannot be had, once a try has failed (not retried in this process)


def load_kernel():
    """The compiled extension (built on first use); RuntimeError with the reason when it cannot be had.

    Uses the module `pip install` built (moelora_cuda_ext) when there is one, else JIT-builds csrc/ with
    ninja for this GPU into torch's extension cache (~/.cache/torch_extensions, or TORCH_EXTENSIONS_DIR);
    the first build takes about a minute, later processes load the cached library.
    """
    global _kernel, _kernel_error
    if _kernel is None and _kernel_error is None:
        try:
            _kernel = _import_or_build_kernel()
            _register_kernel_ops()
        except Exception as e:  # a compiler error arrives as RuntimeError, a missing nvcc as OSError, ...
            _kernel_error = f"{type(e).__name__}: {e}"
    if _kernel is None:
        raise RuntimeError(f"moelora: the CUDA kernel is unavailable. {_kernel_error}")
    return _kernel


def _import_or_build_kernel():
    if not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available (no GPU visible, or a PyTorch built without CUDA)")
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        raise RuntimeError(f"the kernel needs a GPU of compute capability 8.0 or newer, this one is {major}.{minor}")
    try:
        import moelora_cuda_ext  # built ahead of time by setup.py
        return moelora_cuda_ext
    except ImportError:
        pass
    from torch.utils.cpp_extension import load
    csrc = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
    arch = f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}"  # this GPU only: a short build
    sources = [os.path.join(csrc, "moelora.cpp"), os.path.join(csrc, "moelora.cu")]
    return load(name="moelora_cuda_ext", sources=sources, extra_cflags=["-O3"], extra_cuda_cflags=["-O3", arch])


# ----------------------------------------------------------------------------------------------------
# torch.library glue: fake implementations (shapes for torch.compile) and the autograd formulas

def _register_kernel_ops():
    """Shapes for torch.compile (fake tensors) and the backward formula, for the operators csrc/ defines."""
    torch.library.register_fake("moelora::fwd")(_kernel_fwd_fake)
    torch.library.register_fake("moelora::bwd")(_kernel_bwd_fake)
    torch.library.register_autograd("moelora::fwd", _kernel_backward, setup_context=_kernel_setup_context)
    torch.library.register_fake("moelora::linear_fwd")(_kernel_linear_fwd_fake)
    torch.library.register_fake("moelora::linear_bwd")(_kernel_linear_bwd_fake)
    torch.library.register_autograd("moelora::linear_fwd", _kernel_linear_backward,
                                    setup_context=_kernel_linear_setup_context)


def _kernel_fwd_fake(x, A, B, gates, scaling):
    # y, then what the backward needs: h = x A_cat^T (float32) and hg = scaling * gates * h, both (N, RP)
    E, r, _ = A.shape
    RP = -(-E * r // 64) * 64  # E*r rounded up to the kernel's 64-column rank tile
    N = x.shape[0]
    return x.new_empty(N, B.shape[1]), x.new_empty(N, RP, dtype=torch.float32), x.new_empty(N, RP)


def _kernel_bwd_fake(dy, x, A, B, gates, h, hg, scaling, need_dx):
    dx = torch.empty_like(x) if need_dx else x.new_empty(0)
    return dx, torch.empty_like(A), torch.empty_like(B), torch.empty_like(gates)


def _kernel_setup_context(ctx, inputs, output):
    x, A, B, gates, scaling = inputs
    _, h, hg = output
    ctx.save_for_backward(x, A, B, gates, h, hg)
    ctx.scaling = scaling
    # h and hg are never used downstream: no zero gradients need be made for them
    ctx.set_materialize_grads(False)


def _kernel_backward(ctx, dy, _dh, _dhg):
    if dy is None:
        return None, None, None, None, None
    x, A, B, gates, h, hg = ctx.saved_tensors
    need_dx = ctx.needs_input_grad[0]
    dx, dA, dB, dgates = torch.ops.moelora.bwd(dy.contiguous(), x, A, B, gates, h, hg, ctx.scaling, need_dx)
    return (dx if need_dx else None), dA, dB, dgates, None


def _kernel_linear_fwd_fake(x, weight, bias, A, B, gates, scaling):
    return _kernel_fwd_fake(x, A, B, gates, scaling)


def _kernel_linear_bwd_fake(dy, x, weight, A, B, gates, h, hg, scaling, need_dx):
    return _kernel_bwd_fake(dy, x, A, B, gates, h, hg, scaling, need_dx)


def _kernel_linear_setup_context(ctx, inputs, output):
    x, weight, bias, A, B, gates, scaling = inputs
    _, h, hg = output
    ctx.save_for_backward(x, weight, A, B, gates, h, hg)
    ctx.scaling = scaling
    ctx.set_materialize_grads(False)


def _kernel_linear_backward(ctx, dy, _dh, _dhg):
    if dy is None:
        return (None,) * 7
    x, weight, A, B, gates, h, hg = ctx.saved_tensors
    need_dx = ctx.needs_input_grad[0]
    dx, dA, dB, dgates = torch.ops.moelora.linear_bwd(dy.contiguous(), x, weight, A, B, gates, h, hg, ctx.scaling,
                                                      need_dx)
    return (dx if need_dx else None), None, None, dA, dB, dgates, None


# ----------------------------------------------------------------------------------------------------
# The functions moelora.py dispatches to

def moelora_cuda(x, A, B, gates, scaling):
    """moelora_ref's semantics and signature, computed by the CUDA kernel (differentiable in x, A, B, gates).

    Forward: one kernel per 64-128 tokens computes h = x A_cat^T, hg = scaling * gates * h and
    y = hg B_cat^T, with h and hg kept for the backward. Backward: a token-side kernel gives dgates, dh
    and dx; a weight-side kernel sums dA = dh^T x and dB = dy^T hg over tokens. Limits: E*r <= 512;
    float32, bfloat16 or float16; compute capability 8.0+. Inputs are made contiguous if they are not.
    """
    load_kernel()
    d_in, d_out = x.shape[1], B.shape[1]
    if d_in % 8 or d_out % 8:
        # the kernel moves 16-byte rows: pad the widths with zeros to a multiple of 8 (exact) and cut y back
        x, A = F.pad(x, (0, -d_in % 8)), F.pad(A, (0, -d_in % 8))
        B = F.pad(B, (0, 0, 0, -d_out % 8))
        return moelora_cuda(x, A, B, gates, scaling)[:, :d_out]
    y, _, _ = torch.ops.moelora.fwd(x.contiguous(), A.contiguous(), B.contiguous(), gates.contiguous(), float(scaling))
    return y


def moelora_linear_cuda(x, weight, bias, A, B, gates, scaling):
    """F.linear(x, weight, bias) + moelora_ref(x, A, B, gates, scaling), for a frozen weight and bias.

    The frozen layer and its adapter as one autograd node: the kernel adds the adapter's output into the
    layer's (cuBLAS) output, and in the backward its dx into dy @ weight. `base(x) + moelora_cuda(...)`
    instead leaves two N x d tensors to add, forward and backward: 6 of its 12 passes over N x d.
    """
    load_kernel()
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        raise ValueError("moelora_linear_cuda: weight and bias must be frozen (requires_grad=False)")
    if x.shape[1] % 8 or B.shape[1] % 8:  # widths the kernel pads: the unfused path does that
        return F.linear(x, weight, bias) + moelora_cuda(x, A, B, gates, scaling)
    bias = None if bias is None else bias.contiguous()
    y, _, _ = torch.ops.moelora.linear_fwd(x.contiguous(), weight.contiguous(), bias, A.contiguous(), B.contiguous(),
                                           gates.contiguous(), float(scaling))
    return y
