"""
Kernel development check (llm.c's dev/ habit): validate the csrc/ kernel against the float64 reference,
then time it, kernel by kernel, at the benchmark's shapes. Run once per tile configuration:

    MOELORA_POISON=1 MOELORA_BM=64  python -m dev.check_and_time [--check_only=1 | --time_only=1]
    MOELORA_POISON=1 MOELORA_BM=128 python -m dev.check_and_time

MOELORA_POISON=1 makes the extension fill every output and workspace with NaN before its kernels run,
so an element no kernel writes shows up as NaN here. MOELORA_BM picks the token rows per block of the
token-side kernels (64 or 128; by default the extension takes 128 where shared memory allows).
Correctness uses fresh random inputs per case and the relative error ||out - ref|| / ||ref||, next to
PyTorch's own error in the same dtype. Timing: median of CUDA-event-timed runs over rotating inputs,
plus the profiler's per-kernel averages, against the copy bandwidth measured here.
"""

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import cli
import kernel
import moelora
from bench import copy_bandwidth_gbs, time_us


@dataclass
class CheckConfig:
    check_only: bool = False  # the correctness check, no timing
    time_only: bool = False  # the timing, no correctness check


def rel(a, b):
    return ((a.double() - b).norm() / b.norm().clamp(min=1e-30)).item()


def fwd_bwd(fn, leaves, dy, scaling):
    leaves = [t.detach().requires_grad_() for t in leaves]
    y = fn(*leaves, scaling)
    y.backward(dy)
    return [y.detach()] + [t.grad for t in leaves]


def check(N, d_in, d_out, E, r, dtype, gen):
    x = torch.randn(N, d_in, device="cuda", generator=gen)
    A = torch.randn(E, r, d_in, device="cuda", generator=gen) / d_in ** 0.5
    B = torch.randn(E, d_out, r, device="cuda", generator=gen) / r ** 0.5
    logits = torch.randn(N, E, device="cuda", generator=gen)
    top = logits.topk(min(2, E), -1)
    gates = torch.zeros(N, E, device="cuda").scatter(1, top.indices, top.values.softmax(-1))
    dy = torch.randn(N, d_out, device="cuda", generator=gen) / N ** 0.5
    low = [t.to(dtype) for t in (x, A, B, gates)]
    ref = fwd_bwd(moelora.moelora_ref, [t.double() for t in low], dy.to(dtype).double(), 1.5)
    pt = fwd_bwd(moelora.moelora_ref, low, dy.to(dtype), 1.5)
    ours = fwd_bwd(kernel.moelora_cuda, low, dy.to(dtype), 1.5)
    report(N, d_in, d_out, E, r, dtype, "op   ", ours, pt, ref)
    # the fused layer: F.linear(x, W, b) + the op, the adds inside the kernel
    W = (torch.randn(d_out, d_in, device="cuda", generator=gen) / d_in ** 0.5).to(dtype)
    b = torch.randn(d_out, device="cuda", generator=gen).to(dtype)
    ref = fwd_bwd(lambda x, *a: F.linear(x, W.double(), b.double()) + moelora.moelora_ref(x, *a),
                  [t.double() for t in low], dy.to(dtype).double(), 1.5)
    pt = fwd_bwd(lambda x, *a: F.linear(x, W, b) + moelora.moelora_ref(x, *a), low, dy.to(dtype), 1.5)
    ours = fwd_bwd(lambda x, *a: kernel.moelora_linear_cuda(x, W, b, *a), low, dy.to(dtype), 1.5)
    report(N, d_in, d_out, E, r, dtype, "fused", ours, pt, ref)


def report(N, d_in, d_out, E, r, dtype, what, ours, pt, ref):
    worst = 0.0
    cells = []
    for name, o, p, rr in zip(["y", "dx", "dA", "dB", "dg"], ours, pt, ref):
        nan = torch.isnan(o).sum().item()
        e, ep = rel(o, rr), rel(p, rr)
        # bf16 operands land between 1e-3 and 1e-2; the kernel should be no worse than PyTorch's own path
        bad = nan > 0 or (dtype == torch.float32 and e > 1e-5) or (dtype != torch.float32 and e > 2 * ep + 1e-3)
        worst = max(worst, e)
        cells.append(f"{name} {e:.1e}/{ep:.1e}{' NaN=' + str(nan) if nan else ''}{' BAD' if bad else ''}")
        if bad:
            check.failures += 1
    print(f"  {what} N={N:5d} d_in={d_in:4d} d_out={d_out:4d} E={E:2d} r={r:2d} {str(dtype)[6:]:8s} | " + "  ".join(cells))


check.failures = 0


def per_kernel_us(fn, reps=10):
    """The profiler's mean device time per call of each kernel that fn launches."""
    from torch.profiler import ProfilerActivity, profile
    fn(0)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(reps):
            fn(i)
        torch.cuda.synchronize()
    out = {}
    for ev in prof.key_averages():
        if ev.device_type.name == "CUDA" and ev.count > 0:
            name = ev.key.split("<")[0].split("(")[0].replace("void ", "").replace("moelora::", "")
            out[name] = out.get(name, 0.0) + getattr(ev, "device_time_total", getattr(ev, "cuda_time_total", 0)) / reps
    return out


def time_shape(N, d, E, r, bw):
    dt = torch.bfloat16
    R = E * r
    sets = max(2, min(6, -(-400 * 2**20 // (4 * N * d))))  # rotate past the 50 MB L2
    gen = torch.Generator(device="cuda").manual_seed(0)
    xs = [torch.randn(N, d, device="cuda", dtype=dt, generator=gen) for _ in range(sets)]
    dys = [torch.randn(N, d, device="cuda", dtype=dt, generator=gen) for _ in range(sets)]
    A = (torch.randn(E, r, d, device="cuda", generator=gen) / d ** 0.5).to(dt)
    B = (torch.randn(E, d, r, device="cuda", generator=gen) / r ** 0.5).to(dt)
    gl = []
    for _ in range(sets):
        top = torch.randn(N, E, device="cuda", generator=gen).topk(min(2, E), -1)
        gl.append(torch.zeros(N, E, device="cuda").scatter(1, top.indices, top.values.softmax(-1)).to(dt))
    outs = [torch.ops.moelora.fwd(xs[i], A, B, gl[i], 2.0) for i in range(sets)]
    fwd = lambda i: torch.ops.moelora.fwd(xs[i % sets], A, B, gl[i % sets], 2.0)  # noqa: E731
    bwd = lambda i: torch.ops.moelora.bwd(dys[i % sets], xs[i % sets], A, B, gl[i % sets], outs[i % sets][1],  # noqa: E731
                                          outs[i % sets][2], 2.0, True)
    t_f, t_b = time_us(fwd, sets, 5, 30), time_us(bwd, sets, 5, 30)
    ker = per_kernel_us(lambda i: (fwd(i), bwd(i)))
    RP = -(-R // 64) * 64
    # bytes each kernel must move at least (bf16 tensors, fp32 h)
    small = N * (4 * RP + 2 * RP)  # h and hg
    need = {"moelora_fwd_kernel": 4 * N * d + small,
            "moelora_bwd_dx_kernel": 4 * N * d + 4 * N * RP + 2 * N * RP,
            "moelora_bwd_w_kernel": 4 * N * d + 4 * N * RP}
    line = f"  N={N:6d} d={d:4d} E={E} r={r}: fwd {t_f:8.1f} us  bwd {t_b:8.1f} us  op floor(10Nd) {10 * N * d / bw / 1e3:7.1f} us |"
    for k, us in sorted(ker.items()):
        gbs = need.get(k, 0) / us / 1e3 if us else 0
        line += f" {k.replace('moelora_', '').replace('_kernel', '')} {us:7.1f} us"
        line += f" ({gbs:5.0f} GB/s, {100 * gbs / bw:3.0f}%)" if k in need else ""
    print(line)


def main(argv=None):
    cfg = cli.parse(CheckConfig, argv)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, MOELORA_BM={os.environ.get('MOELORA_BM')}, "
          f"poison={os.environ.get('MOELORA_POISON')}")
    kernel.load_kernel()
    gen = torch.Generator(device="cuda").manual_seed(1234)
    if cfg.time_only:
        return timing()
    print("correctness: relative error kernel/PyTorch-same-dtype, each against float64")
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for shape in [(1, 8, 8, 1, 1), (7, 24, 40, 4, 3), (129, 200, 72, 8, 8), (1000, 768, 2304, 8, 2),
                      (777, 256, 128, 8, 8), (300, 128, 96, 3, 48), (130, 64, 64, 8, 64), (513, 192, 64, 1, 64),
                      (64, 3072, 768, 16, 4), (200, 64, 128, 64, 8)]:
            check(*shape, dtype, gen)
    print(f"correctness failures: {check.failures}")
    if not cfg.check_only:
        timing()


def timing():
    bw = copy_bandwidth_gbs(20)
    print(f"copy bandwidth (read + write, measured): {bw:.0f} GB/s")
    print("timing, bf16, op only (torch.ops.moelora.fwd / .bwd), per-kernel from the profiler:")
    for N, d, E, r in [(16384, 768, 8, 8), (65536, 768, 8, 8), (16384, 4096, 8, 8), (65536, 4096, 8, 8),
                       (16384, 768, 1, 64), (65536, 4096, 1, 64), (8192, 768, 8, 2)]:
        time_shape(N, d, E, r, bw)


if __name__ == "__main__":
    main()
