"""The CUDA kernel (csrc/) against the float64 reference: the output and all four gradients over shapes
that break kernels, every routing pattern and three dtypes; bad inputs; streams; torch.compile. Plus, on
machines without CUDA, the dispatch: impl="cuda" fails clearly and impl="auto" uses the reference.

    python -m pytest -q tests/test_kernel.py       # GPU tests build the kernel first (about a minute)

Accuracy rules (flash-attention's habit): float32 against float64 with assert_close's float32 tolerances; bfloat16 and
float16 by flash-attention's rule, error(kernel) <= 2 * error(PyTorch in the same dtype) + one unit in
the last place of the largest reference value, errors measured against float64.
"""

import re
import warnings

import pytest
import torch

import kernel
import moelora
from routing import PATTERNS, make_gates

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA kernel needs a CUDA GPU")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# (N, d_in, d_out, E, r): one token; odd sizes; widths that are not multiples of the 64-wide tiles (or of
# 8: padded); rank 1 and 64; E = 1 (LoRA), 4, 8, 16; experts that straddle the 64-column rank passes
# (r = 48); the largest E*r (512); and one GPT-2-like shape with 1000+ tokens.
SHAPES = [
    (1, 64, 64, 1, 1),
    (7, 24, 40, 4, 3),
    (129, 200, 72, 8, 8),
    (33, 13, 21, 4, 2),
    (257, 96, 104, 16, 2),
    (100, 64, 136, 3, 48),
    (130, 64, 64, 8, 64),
    (513, 192, 64, 1, 64),
    (1031, 768, 256, 8, 8),
]


def make_inputs(N, d_in, d_out, E, r, pattern, dtype, seed):
    """Float64 inputs on the GPU, scaled so that y and every gradient are O(1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d_in, generator=g, dtype=torch.float64)
    A = torch.randn(E, r, d_in, generator=g, dtype=torch.float64) / d_in ** 0.5
    B = torch.randn(E, d_out, r, generator=g, dtype=torch.float64) / r ** 0.5
    gates = make_gates(pattern, N, E, 2, generator=g, dtype=torch.float64)
    dy = torch.randn(N, d_out, generator=g, dtype=torch.float64) / N ** 0.5  # a mean loss's gradient scale
    # round to the tested dtype first, so that the float64 reference sees exactly the kernel's inputs
    return [t.to(dtype).double().cuda() for t in (x, A, B, gates, dy)]


def forward_backward(fn, x, A, B, gates, dy, scaling, dtype):
    """(y, dx, dA, dB, dgates) of fn on copies of the inputs in `dtype`."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (x, A, B, gates)]  # fresh leaves every call
    y = fn(*leaves, scaling)
    y.backward(dy.to(dtype))
    return [y.detach()] + [t.grad for t in leaves]


def check_against_fp64(name, dtype, ours, torch_lowp, ref):
    """Print the errors, then apply the dtype's rule (module docstring) to each of the five outputs."""
    for what, o, t, r in zip(["y", "dx", "dA", "dB", "dgates"], ours, torch_lowp, ref):
        err = (o.double() - r).abs()
        err_pt = (t.double() - r).abs()
        print(f"{name} {what:6s}: kernel max {err.max():.2e} mean {err.mean():.2e} | "
              f"torch {str(dtype)[6:]} max {err_pt.max():.2e} mean {err_pt.mean():.2e}")
        assert torch.isfinite(o).all(), f"{what}: non-finite values"
        if dtype == torch.float32:
            torch.testing.assert_close(o.double(), r, rtol=1.3e-6, atol=1e-5, msg=lambda m: f"{what}: {m}")
        else:
            floor = torch.finfo(dtype).eps * r.abs().max().item()
            assert err.max() <= 2 * err_pt.max() + floor, f"{what}: {err.max():.3e} > 2 * {err_pt.max():.3e} + {floor:.1e}"


@cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N{}_din{}_dout{}_E{}_r{}".format(*s))
def test_kernel_matches_reference(shape, pattern, dtype):
    N, d_in, d_out, E, r = shape
    x, A, B, gates, dy = make_inputs(*shape, pattern, dtype, seed=sum(shape))
    scaling = 1.7
    ref = forward_backward(moelora.moelora_ref, x, A, B, gates, dy, scaling, torch.float64)
    torch_lowp = forward_backward(moelora.moelora_ref, x, A, B, gates, dy, scaling, dtype)
    ours = forward_backward(kernel.moelora_cuda, x, A, B, gates, dy, scaling, dtype)
    check_against_fp64(f"{shape} {pattern}", dtype, ours, torch_lowp, ref)


@cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("shape", [(129, 200, 72, 8, 8), (1031, 768, 256, 8, 2), (100, 64, 136, 3, 48)],
                         ids=lambda s: "N{}_din{}_dout{}_E{}_r{}".format(*s))
def test_fused_linear_matches_reference(shape, dtype):
    # moelora_linear_cuda: the frozen layer plus its adapter, the adds done inside the kernel
    N, d_in, d_out, E, r = shape
    x, A, B, gates, dy = make_inputs(*shape, "zipf", dtype, seed=sum(shape) + 1)
    g = torch.Generator().manual_seed(7)
    W = (torch.randn(d_out, d_in, generator=g, dtype=torch.float64) / d_in ** 0.5).to(dtype).double().cuda()
    b = torch.randn(d_out, generator=g, dtype=torch.float64).to(dtype).double().cuda()

    def layer_ref(x, A, B, gates, scaling):
        return torch.nn.functional.linear(x, W.to(x.dtype), b.to(x.dtype)) + moelora.moelora_ref(x, A, B, gates, scaling)

    def layer_fused(x, A, B, gates, scaling):
        return kernel.moelora_linear_cuda(x, W.to(x.dtype), b.to(x.dtype), A, B, gates, scaling)

    ref = forward_backward(layer_ref, x, A, B, gates, dy, 0.9, torch.float64)
    torch_lowp = forward_backward(layer_ref, x, A, B, gates, dy, 0.9, dtype)
    ours = forward_backward(layer_fused, x, A, B, gates, dy, 0.9, dtype)
    check_against_fp64(f"fused {shape}", dtype, ours, torch_lowp, ref)


@cuda
def test_fused_linear_needs_a_frozen_weight():
    x, A, B, gates = _op_inputs()
    W = torch.zeros(24, 32, device="cuda", dtype=x.dtype, requires_grad=True)
    with pytest.raises(ValueError, match="must be frozen"):
        kernel.moelora_linear_cuda(x, W, None, A, B, gates, 1.0)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
def test_noncontiguous_and_misaligned_inputs(dtype):
    # slices of larger tensors, and a view that starts 2 elements into its storage: the same result as
    # on contiguous copies, bit for bit
    N, d_in, d_out, E, r = 300, 136, 72, 4, 8
    x, A, B, gates, dy = (t.to(dtype) for t in make_inputs(N, d_in, d_out, E, r, "zipf", dtype, seed=11))
    x_big = torch.zeros(N, 2 * d_in, dtype=dtype, device="cuda")
    x_big[:, 1::2] = x  # every other column: stride 2
    A_big = torch.zeros(E, r + 3, d_in, dtype=dtype, device="cuda")
    A_big[:, 2:2 + r] = A
    B_t = B.transpose(1, 2).contiguous().transpose(1, 2)  # B's values in a transposed layout
    g_big = torch.zeros(N, E + 1, dtype=dtype, device="cuda")
    g_big[:, 1:] = gates
    flat = torch.zeros(N * d_in + 2, dtype=dtype, device="cuda")
    flat[2:] = x.flatten()
    views = {"strided": (x_big[:, 1::2], A_big[:, 2:2 + r], B_t, g_big[:, 1:]),
             "misaligned": (flat[2:].view(N, d_in), A, B, gates)}
    expected = forward_backward(kernel.moelora_cuda, x, A, B, gates, dy, 0.5, dtype)
    assert not views["strided"][0].is_contiguous() and not views["strided"][1].is_contiguous()
    assert views["misaligned"][0].storage_offset() * views["misaligned"][0].element_size() % 16 != 0
    for name, (xv, Av, Bv, gv) in views.items():
        leaves = [t.detach().requires_grad_() for t in (xv, Av, Bv, gv)]
        y = kernel.moelora_cuda(*leaves, 0.5)
        y.backward(dy)
        for what, o, e in zip(["y", "dx", "dA", "dB", "dgates"], [y] + [t.grad for t in leaves], expected):
            assert torch.equal(o, e), f"{name} inputs: {what} differs from the contiguous inputs' result"


@cuda
def test_deterministic_and_on_the_current_stream():
    # Work queued on a side stream: a sleep, then the copy that fills x. A kernel launched on any other
    # stream than the current one would read x before the copy lands.
    N, d_in, d_out, E, r = 2048, 512, 512, 8, 8
    x, A, B, gates, dy = (t.to(torch.bfloat16) for t in make_inputs(N, d_in, d_out, E, r, "uniform", torch.bfloat16, 5))
    expected = forward_backward(kernel.moelora_cuda, x, A, B, gates, dy, 2.0, torch.bfloat16)
    again = forward_backward(kernel.moelora_cuda, x, A, B, gates, dy, 2.0, torch.bfloat16)
    for e, a in zip(expected, again):
        assert torch.equal(e, a), "two runs on the same inputs differ"
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        x_late = torch.zeros_like(x)
        torch.cuda._sleep(50_000_000)  # tens of milliseconds of spinning on the side stream
        x_late.copy_(x)
        got = forward_backward(kernel.moelora_cuda, x_late, A, B, gates, dy, 2.0, torch.bfloat16)
    torch.cuda.current_stream().wait_stream(side)
    for what, e, g in zip(["y", "dx", "dA", "dB", "dgates"], expected, got):
        assert torch.equal(e, g), f"{what} differs on a side stream"


def _op_inputs(dtype=torch.bfloat16, N=16, d_in=32, d_out=24, E=4, r=2):
    x, A, B, gates, _ = make_inputs(N, d_in, d_out, E, r, "uniform", dtype, seed=0)
    return [t.to(dtype) for t in (x, A, B, gates)]


@cuda
@pytest.mark.parametrize("change,words", [
    (lambda x, A, B, g: (x.cpu(), A, B, g), "x must be a CUDA tensor"),
    (lambda x, A, B, g: (x, A.cpu(), B, g), "A must be a CUDA tensor"),
    (lambda x, A, B, g: (x, A.float(), B, g), "all inputs must share one dtype"),
    (lambda x, A, B, g: (x.double(), A.double(), B.double(), g.double()), "supports float32, bfloat16 and float16"),
    (lambda x, A, B, g: (x.t().contiguous().t(), A, B, g), "x must be contiguous"),
    (lambda x, A, B, g: (x[:, :30].contiguous(), A[:, :, :30].contiguous(), B, g), "multiples of 8"),
    (lambda x, A, B, g: (x, A, B, g[:5]), "gates is"),
    (lambda x, A, B, g: (x, A, B[:, :, :1].contiguous(), g), "B is"),
    (lambda x, A, B, g: (x, A[:, :, :16].contiguous(), B, g), "A is"),
])
def test_operator_rejects_bad_inputs_clearly(change, words):
    # the operator itself (moelora.moelora checks most of these before it is reached)
    kernel.load_kernel()
    with pytest.raises(RuntimeError, match=re.escape(words)):
        torch.ops.moelora.fwd(*change(*_op_inputs()), 1.0)


@cuda
def test_rank_limit_is_a_clear_error():
    x, A, B, gates = _op_inputs(E=65, r=8)  # E*r = 520 > 512
    with pytest.raises(RuntimeError, match="E\\*r = 520 exceeds 512"):
        moelora.moelora(x, A, B, gates, 1.0, impl="cuda")


@cuda
def test_no_tokens():
    x, A, B, gates = [t.requires_grad_() for t in _op_inputs(N=0)]
    y = kernel.moelora_cuda(x, A, B, gates, 1.0)
    assert y.shape == (0, 24)
    y.sum().backward()
    assert A.grad.abs().sum() == 0 and B.grad.abs().sum() == 0


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_operators_pass_opcheck(dtype):
    # torch.library's own checks of each operator: its schema (no input mutated, no alias returned), its
    # fake implementation against the real one, and its autograd registration (fwd and linear_fwd)
    kernel.load_kernel()
    x, A, B, gates = [t.requires_grad_() for t in _op_inputs(dtype)]
    W, b = torch.randn(24, 32, device="cuda", dtype=dtype), torch.randn(24, device="cuda", dtype=dtype)
    torch.library.opcheck(torch.ops.moelora.fwd.default, (x, A, B, gates, 0.5))
    torch.library.opcheck(torch.ops.moelora.linear_fwd.default, (x, W, b, A, B, gates, 0.5))
    with torch.no_grad():
        y, h, hg = torch.ops.moelora.fwd(x, A, B, gates, 0.5)
        dy = torch.randn_like(y)
        plain = [t.detach() for t in (x, A, B, gates)]
    for need_dx in (True, False):
        torch.library.opcheck(torch.ops.moelora.bwd.default, (dy, *plain, h, hg, 0.5, need_dx))
        torch.library.opcheck(torch.ops.moelora.linear_bwd.default, (dy, plain[0], W, *plain[1:], h, hg, 0.5, need_dx))


@cuda
def test_compiles_without_graph_breaks():
    # last among the GPU tests: a failed compilation must not leave state behind for the others
    # fullgraph=True fails on a graph break: the op's fake implementation and autograd must be registered
    N, d_in, d_out, E, r = 64, 32, 48, 4, 2
    x, A, B, gates, dy = (t.to(torch.bfloat16) for t in make_inputs(N, d_in, d_out, E, r, "soft", torch.bfloat16, 3))
    fn = torch.compile(lambda *a: moelora.moelora(*a, 0.5, impl="cuda"), fullgraph=True, backend="aot_eager")
    compiled = forward_backward(lambda *a: fn(*a[:4]), x, A, B, gates, dy, 0.5, torch.bfloat16)
    eager = forward_backward(kernel.moelora_cuda, x, A, B, gates, dy, 0.5, torch.bfloat16)
    for what, c, e in zip(["y", "dx", "dA", "dB", "dgates"], compiled, eager):
        assert torch.equal(c, e), f"{what}: compiled and eager results differ"


# ----------------------------------------------------------------------------------------------------
# without CUDA: the dispatch

@cuda
@pytest.mark.parametrize("E,r,kernel_expected", [(8, 2, False), (4, 8, False), (8, 8, True), (16, 8, True)])
def test_auto_takes_the_kernel_from_64_rank_columns(E, r, kernel_expected):
    """impl="auto" is the kernel, bit for bit, where E*r >= moelora.KERNEL_MIN_RANKS, and the reference below."""
    x, A, B, gates = [t.bfloat16() for t in make_inputs(300, 64, 48, E, r, "uniform", torch.bfloat16, seed=5)[:4]]
    auto = moelora.moelora(x, A, B, gates, 0.5, impl="auto")
    expected = moelora.moelora(x, A, B, gates, 0.5, impl="cuda" if kernel_expected else "ref")
    assert moelora.auto_uses_kernel(x, A) == kernel_expected
    assert torch.equal(auto, expected)


cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")


@cpu_only
def test_cuda_impl_without_cuda_raises_clearly():
    x, A, B, gates = (t.double() for t in make_inputs_cpu())
    with pytest.raises(ValueError, match="impl='cuda' needs CUDA tensors"):
        moelora.moelora(x, A, B, gates, 1.0, impl="cuda")
    with pytest.raises(RuntimeError, match="CUDA kernel is unavailable. .*CUDA is not available"):
        kernel.load_kernel()
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        kernel.moelora_cuda(x, A, B, gates, 1.0)


@cpu_only
def test_auto_on_cpu_uses_the_reference_and_warns_at_most_once():
    x, A, B, gates = make_inputs_cpu()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            y = moelora.moelora(x, A, B, gates, 0.5, impl="auto")
            assert torch.equal(y, moelora.moelora_ref(x, A, B, gates, 0.5))
    assert len([w for w in caught if "moelora" in str(w.message)]) <= 1


def make_inputs_cpu():
    g = torch.Generator().manual_seed(0)
    x, A, B = torch.randn(9, 16, generator=g), torch.randn(4, 2, 16, generator=g), torch.randn(4, 8, 2, generator=g)
    return x, A, B, make_gates("uniform", 9, 4, 2, generator=g, dtype=torch.float32)
