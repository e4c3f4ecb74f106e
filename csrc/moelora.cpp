/*
 * Bindings and input checks for the MoELoRA CUDA kernel (the kernels are in moelora.cu).
 *
 * Defines four operators, torch.ops.moelora.fwd / .bwd (the op) and .linear_fwd / .linear_bwd (the op with
 * the frozen layer fused in); kernel.py gives them fake implementations for torch.compile and wires each
 * forward to its backward in autograd. The same four functions are on the Python module for direct calls.
 *
 *   fwd(x, A, B, gates, scaling) -> (y, h, hg)
 *       x (N, d_in), A (E, r, d_in), B (E, d_out, r), gates (N, E): one dtype (float32, bfloat16 or
 *       float16), one CUDA device, contiguous (a view at an offset that is not 16-byte aligned is copied). y (N, d_out) is the op's output; h (N, RP) float32 and
 *       hg (N, RP) are kept for the backward (RP = E*r rounded up to 64).
 *   bwd(dy, x, A, B, gates, h, hg, scaling, need_dx) -> (dx, dA, dB, dgates)
 *       dx is an empty placeholder when need_dx is false.
 *   linear_fwd(x, weight, bias, A, B, gates, scaling) -> (y, h, hg)
 *   linear_bwd(dy, x, weight, A, B, gates, h, hg, scaling, need_dx) -> (dx, dA, dB, dgates)
 *       the frozen layer and its adapter in one: y = F.linear(x, weight, bias) + the op's y, the kernel
 *       adding its output into cuBLAS's (and, backward, its dx into dy @ weight) instead of leaving
 *       two tensors for a separate add. No gradient for weight and bias (frozen).
 *
 * Build: kernel.load_kernel() JIT-builds this file and moelora.cu with ninja, or setup.py builds them
 * ahead of time. Test: python -m pytest tests/test_kernel.py (on a machine with a GPU).
 */

#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <tuple>

namespace moelora {
constexpr int kMaxRankTotal = 512;  // E*r: mirrors kMaxRank in moelora.cu
size_t smem_needed(at::ScalarType dtype, int R);
int device_smem_limit();  // of the current device
int device_major();
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cuda(const at::Tensor& x, const at::Tensor& A,
                                                            const at::Tensor& B, const at::Tensor& gates,
                                                            double scaling, const at::Tensor& y_init);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& A, const at::Tensor& B, const at::Tensor& gates,
    const at::Tensor& h, const at::Tensor& hg, double scaling, bool need_dx, const at::Tensor& dx_init);
}  // namespace moelora

namespace {

// Numbers and shapes go into error messages as strings: inserting an integer into the message's stream
// from this library (ostream << long) crashed the process on the GPU machine (seen with torch 2.11), so
// every number is formatted here with std::to_string instead.
std::string num(int64_t v) { return std::to_string(v); }

std::string shape(const at::Tensor& t) {
  std::string out = "(";
  for (int64_t i = 0; i < t.dim(); ++i) out += (i ? ", " : "") + std::to_string(t.size(i));
  return out + (t.dim() == 1 ? ",)" : ")");
}

void check_tensor(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.is_cuda(), "moelora CUDA kernel: ", name, " must be a CUDA tensor, got one on ", t.device());
  TORCH_CHECK(t.device() == x.device(), "moelora CUDA kernel: ", name, " is on ", t.device(), " but x is on ",
              x.device(), "; put all inputs on one GPU");
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "moelora CUDA kernel: ", name, " is ", t.scalar_type(),
              " but x is ", x.scalar_type(), "; all inputs must share one dtype");
  TORCH_CHECK(t.is_contiguous(), "moelora CUDA kernel: ", name, " must be contiguous (call .contiguous())");
}

// The kernels move 16-byte vectors: a contiguous view that starts at an odd offset is copied first. (A
// caller cannot easily see this, and torch.compile cannot trace a storage-offset test in Python.)
at::Tensor aligned(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 ? t.clone() : t;
}

void check_inputs(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B, const at::Tensor& gates) {
  TORCH_CHECK(x.is_cuda(), "moelora CUDA kernel: x must be a CUDA tensor, got one on ", x.device(),
              " (the PyTorch reference, impl='ref', runs on the CPU)");
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "moelora CUDA kernel: supports float32, bfloat16 and float16, got ", dt);
  TORCH_CHECK(x.dim() == 2 && A.dim() == 3 && B.dim() == 3 && gates.dim() == 2,
              "moelora CUDA kernel: expected x (N, d_in), A (E, r, d_in), B (E, d_out, r), gates (N, E); got x ",
              shape(x), ", A ", shape(A), ", B ", shape(B), ", gates ", shape(gates));
  const int64_t N = x.size(0), d_in = x.size(1), E = A.size(0), r = A.size(1), d_out = B.size(1);
  TORCH_CHECK(A.size(2) == d_in, "moelora CUDA kernel: A is ", shape(A), " but x has d_in = ", num(d_in));
  TORCH_CHECK(B.size(0) == E && B.size(2) == r, "moelora CUDA kernel: B is ", shape(B),
              ", expected (E, d_out, r) with E = ", num(E), ", r = ", num(r), " from A");
  TORCH_CHECK(gates.size(0) == N && gates.size(1) == E, "moelora CUDA kernel: gates is ", shape(gates),
              ", expected (N, E) = (", num(N), ", ", num(E), ")");
  for (auto [t, name] : {std::pair{&x, "x"}, {&A, "A"}, {&B, "B"}, {&gates, "gates"}}) check_tensor(*t, name, x);
  TORCH_CHECK(E >= 1 && r >= 1, "moelora CUDA kernel: needs at least one expert of rank >= 1, got E = ", num(E),
              ", r = ", num(r));
  TORCH_CHECK(E * r <= moelora::kMaxRankTotal, "moelora CUDA kernel: E*r = ", num(E * r), " exceeds ",
              num(moelora::kMaxRankTotal), " (the experts' rank columns of a token tile must fit in shared memory); "
              "use impl='ref'");
  TORCH_CHECK(d_in % 8 == 0 && d_out % 8 == 0, "moelora CUDA kernel: d_in and d_out must be multiples of 8 "
              "(16-byte rows), got d_in = ", num(d_in), ", d_out = ", num(d_out), "; moelora.moelora_cuda pads them for you");
  TORCH_CHECK(N < (int64_t(1) << 31) && d_in < (1 << 24) && d_out < (1 << 24),
              "moelora CUDA kernel: sizes too large (N = ", num(N), ", d_in = ", num(d_in), ", d_out = ", num(d_out), ")");
  const c10::cuda::CUDAGuard guard(x.device());
  TORCH_CHECK(moelora::device_major() >= 8, "moelora CUDA kernel: needs a GPU of compute capability 8.0 or newer "
              "(Ampere, Hopper), this one is ", num(moelora::device_major()), ".x; use impl='ref'");
  const size_t need = moelora::smem_needed(dt, int(E * r));
  TORCH_CHECK(need <= size_t(moelora::device_smem_limit()), "moelora CUDA kernel: E*r = ", E * r, " in ", dt,
              " needs ", num(need), " bytes of shared memory per block, this GPU allows ", num(moelora::device_smem_limit()),
              "; use a smaller E*r, a 16-bit dtype, or impl='ref'");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fwd(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                                                   const at::Tensor& gates, double scaling) {
  check_inputs(x, A, B, gates);
  return moelora::forward_cuda(aligned(x), aligned(A), aligned(B), aligned(gates), scaling, at::Tensor());
}

void check_bwd_inputs(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                      const at::Tensor& gates, const at::Tensor& h, const at::Tensor& hg) {
  check_inputs(x, A, B, gates);
  const int64_t N = x.size(0), RP = (A.size(0) * A.size(1) + 63) / 64 * 64;
  check_tensor(dy, "dy", x);
  TORCH_CHECK(dy.dim() == 2 && dy.size(0) == N && dy.size(1) == B.size(1), "moelora CUDA kernel: dy is ",
              shape(dy), ", expected (N, d_out) = (", num(N), ", ", num(B.size(1)), ")");
  check_tensor(hg, "hg", x);
  TORCH_CHECK(h.is_cuda() && h.device() == x.device() && h.scalar_type() == at::kFloat && h.is_contiguous(),
              "moelora CUDA kernel: h must be the float32 tensor the forward returned");
  TORCH_CHECK(h.dim() == 2 && h.size(0) == N && h.size(1) == RP && hg.dim() == 2 && hg.size(0) == N &&
                  hg.size(1) == RP,
              "moelora CUDA kernel: h and hg must be (N, RP) = (", num(N), ", ", num(RP), ") as the forward returned them");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bwd(const at::Tensor& dy, const at::Tensor& x,
                                                               const at::Tensor& A, const at::Tensor& B,
                                                               const at::Tensor& gates, const at::Tensor& h,
                                                               const at::Tensor& hg, double scaling, bool need_dx) {
  check_bwd_inputs(dy, x, A, B, gates, h, hg);
  return moelora::backward_cuda(aligned(dy), aligned(x), aligned(A), aligned(B), aligned(gates), aligned(h),
                                aligned(hg), scaling, need_dx, at::Tensor());
}

void check_weight(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                  int64_t d_out) {
  check_tensor(weight, "weight", x);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == d_out && weight.size(1) == x.size(1),
              "moelora CUDA kernel: weight is ", shape(weight), ", expected (d_out, d_in) = (", num(d_out), ", ",
              num(x.size(1)), ")");
  if (bias.has_value()) {
    check_tensor(*bias, "bias", x);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == d_out, "moelora CUDA kernel: bias is ", shape(*bias),
                ", expected (", num(d_out), ")");
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_fwd(const at::Tensor& x, const at::Tensor& weight,
                                                          const std::optional<at::Tensor>& bias,
                                                          const at::Tensor& A, const at::Tensor& B,
                                                          const at::Tensor& gates, double scaling) {
  check_inputs(x, A, B, gates);
  check_weight(x, weight, bias, B.size(1));
  at::Tensor y = at::linear(x, weight, bias).contiguous();  // (N, d_out), the kernel adds into it
  return moelora::forward_cuda(aligned(x), aligned(A), aligned(B), aligned(gates), scaling, aligned(y));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_bwd(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& gates, const at::Tensor& h, const at::Tensor& hg, double scaling, bool need_dx) {
  check_bwd_inputs(dy, x, A, B, gates, h, hg);
  check_weight(x, weight, std::nullopt, B.size(1));
  at::Tensor dx = need_dx ? aligned(at::mm(dy, weight).contiguous()) : at::Tensor();  // the kernel adds into it
  return moelora::backward_cuda(aligned(dy), aligned(x), aligned(A), aligned(B), aligned(gates), aligned(h),
                                aligned(hg), scaling, need_dx, dx);
}

}  // namespace

TORCH_LIBRARY(moelora, m) {
  m.def("fwd(Tensor x, Tensor A, Tensor B, Tensor gates, float scaling) -> (Tensor, Tensor, Tensor)");
  m.def("bwd(Tensor dy, Tensor x, Tensor A, Tensor B, Tensor gates, Tensor h, Tensor hg, float scaling, "
        "bool need_dx) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("linear_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor A, Tensor B, Tensor gates, float scaling) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("linear_bwd(Tensor dy, Tensor x, Tensor weight, Tensor A, Tensor B, Tensor gates, Tensor h, Tensor hg, "
        "float scaling, bool need_dx) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(moelora, CUDA, m) {
  m.impl("fwd", &fwd);
  m.impl("bwd", &bwd);
  m.impl("linear_fwd", &linear_fwd);
  m.impl("linear_bwd", &linear_bwd);
}

// CPU tensors reach the same checks, which say that the kernel needs CUDA tensors
TORCH_LIBRARY_IMPL(moelora, CPU, m) {
  m.impl("fwd", &fwd);
  m.impl("bwd", &bwd);
  m.impl("linear_fwd", &linear_fwd);
  m.impl("linear_bwd", &linear_bwd);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "MoELoRA CUDA kernel; the operators are torch.ops.moelora.fwd and torch.ops.moelora.bwd";
  m.def("fwd", &fwd, "forward: (y, h, hg)");
  m.def("bwd", &bwd, "backward: (dx, dA, dB, dgates)");
  m.attr("max_rank_total") = moelora::kMaxRankTotal;
}
