"""The core op moelora_ref: against a per-token loop in float64, gradcheck, and its input checks."""

import re

import pytest
import torch

import moelora
from routing import PATTERNS, make_gates


def loop_reference(x, A, B, gates, scaling):
    """y[n] = scaling * sum_e gates[n, e] * B[e] @ A[e] @ x[n], one token and one expert at a time."""
    N, E = gates.shape
    y = torch.zeros(N, B.shape[1], dtype=x.dtype)
    for n in range(N):
        for e in range(E):
            y[n] += scaling * gates[n, e] * (B[e] @ (A[e] @ x[n]))
    return y


def random_op_inputs(N, d_in, d_out, E, r, pattern, k=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d_in, generator=g, dtype=dtype)
    A = torch.randn(E, r, d_in, generator=g, dtype=dtype) / d_in ** 0.5
    B = torch.randn(E, d_out, r, generator=g, dtype=dtype) / r ** 0.5
    gates = make_gates(pattern, N, E, k, generator=g, dtype=dtype)
    return x, A, B, gates


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("N,d_in,d_out,E,r", [(1, 8, 8, 1, 1), (7, 13, 5, 4, 3), (33, 24, 40, 8, 2), (20, 16, 9, 3, 8)])
def test_ref_matches_token_loop(pattern, N, d_in, d_out, E, r):
    x, A, B, gates = random_op_inputs(N, d_in, d_out, E, r, pattern, seed=N * 100 + E)
    y = moelora.moelora_ref(x, A, B, gates, 0.5)
    torch.testing.assert_close(y, loop_reference(x, A, B, gates, 0.5), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pattern", ["one_expert", "unused_expert"])
def test_ref_zero_gates_contribute_nothing(pattern):
    # changing an expert that no token uses must not change the output
    x, A, B, gates = random_op_inputs(12, 10, 6, 5, 2, pattern, seed=3)
    unused = (gates == 0).all(0)
    assert unused.any()
    A2, B2 = A.clone(), B.clone()
    A2[unused] += 1.0
    B2[unused] -= 1.0
    torch.testing.assert_close(moelora.moelora_ref(x, A, B, gates, 1.0), moelora.moelora_ref(x, A2, B2, gates, 1.0))


def test_ref_gradcheck():
    x, A, B, gates = random_op_inputs(6, 5, 4, 3, 2, "uniform", seed=1)
    inputs = [t.clone().requires_grad_() for t in (x, A, B, gates)]
    assert torch.autograd.gradcheck(lambda *t: moelora.moelora_ref(*t, 0.7), inputs)


def test_gate_gradient_formula():
    # the gate gradient, as moelora_ref's maths gives it: dgates[n, e] = scaling * (B[e]^T dy[n]) . (A[e] x[n])
    x, A, B, gates = random_op_inputs(9, 6, 5, 4, 3, "soft", seed=2)
    gates.requires_grad_()
    dy = torch.randn(9, 5, dtype=torch.float64)
    moelora.moelora_ref(x, A, B, gates, 0.3).backward(dy)
    expected = 0.3 * torch.einsum("eor,no,erd,nd->ne", B, dy, A, x)
    torch.testing.assert_close(gates.grad, expected)


def test_dispatch_ref_equals_reference():
    x, A, B, gates = random_op_inputs(10, 8, 8, 4, 2, "zipf", seed=5, dtype=torch.float32)
    torch.testing.assert_close(moelora.moelora(x, A, B, gates, 2.0, impl="ref"),
                               moelora.moelora_ref(x, A, B, gates, 2.0))


# --------------------------------------------------------------------------------------------------
# bad input: errors that say what is wrong

def _good():
    return random_op_inputs(4, 6, 5, 3, 2, "uniform", dtype=torch.float32)


@pytest.mark.parametrize("change,error,words", [
    (lambda x, A, B, g: (x[0], A, B, g), ValueError, "x (N, d_in)"),
    (lambda x, A, B, g: (x, A[:, :, :5], B, g), ValueError, "d_in"),
    (lambda x, A, B, g: (x, A, B[:2], g), ValueError, "B is"),
    (lambda x, A, B, g: (x, A, B, g[:, :2]), ValueError, "gates is"),
    (lambda x, A, B, g: (x, A, B, g[:3]), ValueError, "gates is"),
    (lambda x, A, B, g: (x.double(), A, B, g), TypeError, "share one dtype"),
    (lambda x, A, B, g: (x, A, B, g.half()), TypeError, "share one dtype"),
    (lambda x, A, B, g: (x.long(), A, B, g), TypeError, "floating-point"),
    (lambda x, A, B, g: (x.numpy(), A, B, g), TypeError, "torch.Tensor"),
    (lambda x, A, B, g: (x, A.to("meta"), B, g), ValueError, "one device"),
])
@pytest.mark.parametrize("impl", ["ref", "auto"])
def test_bad_inputs_raise_clear_errors(change, error, words, impl):
    with pytest.raises(error, match=re.escape(words)):
        moelora.moelora(*change(*_good()), 1.0, impl=impl)


def test_bad_scaling_and_impl():
    x, A, B, g = _good()
    with pytest.raises(TypeError, match="scaling"):
        moelora.moelora(x, A, B, g, torch.tensor(1.0))
    with pytest.raises(ValueError, match="impl must be"):
        moelora.moelora(x, A, B, g, 1.0, impl="triton")
