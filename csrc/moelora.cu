/*
 * The MoELoRA op on the GPU: y = scaling * sum_e gates[:, e] * (x A_e^T) B_e^T, forward and backward.
 *
 * Three kernels, each a chain of small matrix products over one tile, with the gate multiply, the
 * scaling and every reduction fused in (A_cat = A.reshape(E*r, d_in) stacks the experts' rows; R = E*r):
 *
 *   forward   moelora_fwd_kernel     per 64 or 128 tokens:  h  = x A_cat^T              (N, R) fp32, kept
 *                                                           hg = scaling * gates * h      (N, R) kept
 *                                                           y  = hg B_cat^T               (N, d_out)
 *   backward  moelora_bwd_dx_kernel  per 64 or 128 tokens:  dhg = dy B_cat                (in registers)
 *                                                           dgates = scaling * sum_{i<r} dhg * h
 *                                                           dh = scaling * gates * dhg    (N, R)
 *                                                           dx = dh A_cat                 (N, d_in)
 *             moelora_bwd_w_kernel   per 64x64 tile of dA or dB, split over tokens:
 *                                                           dA_cat = dh^T x,  dB_cat = dy^T hg
 *                                    the last split of a tile to finish sums the splits' fp32
 *                                    partials in a fixed order (deterministic) and writes dA or dB.
 *
 * Every token-tile kernel streams its big operand (x or dy) through shared memory with cp.async,
 * three stages deep, and one warp owns 16 tokens and a 16x64 output tile. Matrix products use the
 * tensor cores (mma.sync m16n8k16, fp32 accumulation) for bf16 and fp16; fp32 computes the same tiles
 * with plain FMAs so that it stays exact enough to test against float64. The rank dimension is padded
 * to RP, a multiple of 64 (the padding is zero and never written out), and processed 64 columns at a
 * time, so one kernel serves every R <= 512. Needs sm_80 or newer (cp.async, ldmatrix, bf16 mma).
 *
 * Build and test: it is JIT-built by kernel.load_kernel() (or by `pip install -e .` where nvcc is
 * found); `python -m pytest tests/test_kernel.py` checks it against the float64 reference, and
 * `python bench.py` times it. csrc/moelora.cpp holds the bindings and the input checks.
 */

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstdlib>
#include <tuple>

namespace moelora {

// ----------------------------------------------------------------------------------------------------
// Tile geometry

constexpr int kTile = 64;     // rank columns per pass, output columns per tile, rows of a weight tile
constexpr int kStages = 3;    // cp.async pipeline depth
constexpr int kMaxRank = 512; // largest E*r: the rank tile of a token block lives in shared memory

template <typename T>
struct Geo {
  static constexpr int VEC = 16 / sizeof(T);  // elements in a 16-byte vector
  static constexpr int PAD = VEC;             // each shared-memory row is padded by 16 bytes
  static constexpr int KC = 128 / sizeof(T);  // k-chunk: 128 bytes of a row (64 bf16, 32 fp32)
};

__host__ __device__ constexpr int cdiv(int a, int b) { return (a + b - 1) / b; }
__host__ __device__ constexpr int round_up(int a, int b) { return cdiv(a, b) * b; }

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }

// ----------------------------------------------------------------------------------------------------
// PTX wrappers: asynchronous copies, ldmatrix, mma

// 16 bytes global -> shared, or 16 zero bytes when !valid (src-size 0 reads nothing)
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

template <bool TRANS>
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
  if constexpr (TRANS)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s));
}

template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ----------------------------------------------------------------------------------------------------
// One warp's 16x64 tile: acc += A (16 x K) * B (K x 64), both operands in shared memory.
// A_KMAJOR: A is stored [m][k] (row m contiguous in k), else [k][m]; B_KMAJOR: B is stored [n][k], else
// [k][n]. lda/ldb are row pitches in elements; K is a multiple of 16. The accumulator uses mma's layout:
// acc[nt][0..3] = C[g][8nt+2t], C[g][8nt+2t+1], C[g+8][8nt+2t], C[g+8][8nt+2t+1], g = lane/4, t = lane%4.

template <typename T, bool A_KMAJOR, bool B_KMAJOR>
__device__ __forceinline__ void warp_mma(float (&acc)[8][4], const T* As, int lda, const T* Bs, int ldb, int K) {
  const int lane = threadIdx.x & 31;
  if constexpr (std::is_same_v<T, float>) {
    // fp32: the same tile with FMAs, so that float32 stays float32 (no tf32)
    const int g = lane >> 2, t = lane & 3;
#pragma unroll 4
    for (int k = 0; k < K; ++k) {
      const float a0 = A_KMAJOR ? As[g * lda + k] : As[k * lda + g];
      const float a1 = A_KMAJOR ? As[(g + 8) * lda + k] : As[k * lda + g + 8];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const int n = nt * 8 + 2 * t;
        const float b0 = B_KMAJOR ? Bs[n * ldb + k] : Bs[k * ldb + n];
        const float b1 = B_KMAJOR ? Bs[(n + 1) * ldb + k] : Bs[k * ldb + n + 1];
        acc[nt][0] = fmaf(a0, b0, acc[nt][0]);
        acc[nt][1] = fmaf(a0, b1, acc[nt][1]);
        acc[nt][2] = fmaf(a1, b0, acc[nt][2]);
        acc[nt][3] = fmaf(a1, b1, acc[nt][3]);
      }
    }
  } else {
    // ldmatrix: lane L addresses row L%8 of 8x8 matrix q = L/8; the four matrices cover a 16x16 block
    const int q = lane >> 3, l8 = lane & 7;
    for (int k0 = 0; k0 < K; k0 += 16) {
      uint32_t a[4];
      const T* pa = A_KMAJOR ? As + ((q & 1) * 8 + l8) * lda + k0 + (q >> 1) * 8
                             : As + (k0 + (q >> 1) * 8 + l8) * lda + (q & 1) * 8;
      ldsm_x4<!A_KMAJOR>(a, pa);
#pragma unroll
      for (int np = 0; np < 4; ++np) {  // two 8-column mma tiles per ldmatrix.x4
        uint32_t b[4];
        const T* pb = B_KMAJOR ? Bs + (np * 16 + (q >> 1) * 8 + l8) * ldb + k0 + (q & 1) * 8
                               : Bs + (k0 + (q & 1) * 8 + l8) * ldb + np * 16 + (q >> 1) * 8;
        ldsm_x4<!B_KMAJOR>(b, pb);
        mma16816<T>(acc[2 * np], a, b[0], b[1]);
        mma16816<T>(acc[2 * np + 1], a, b[2], b[3]);
      }
    }
  }
}

__device__ __forceinline__ void zero(float (&acc)[8][4]) {
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
}

// ----------------------------------------------------------------------------------------------------
// Tile loaders (global -> shared). Every tile row is padded by 16 bytes against bank conflicts.

// rows [r0, r0+ROWS) x cols [c0, c0+COLS) of a row-major matrix with nrows x ncols valid elements and
// row pitch ld; what lies outside is zero-filled. c0 and ncols are multiples of 16 bytes.
template <typename T, int ROWS, int COLS, int THREADS>
__device__ __forceinline__ void load_tile(T* s, const T* g, int64_t ld, int nrows, int ncols, int r0, int c0) {
  constexpr int VEC = Geo<T>::VEC, VPR = COLS / VEC, P = COLS + Geo<T>::PAD;
#pragma unroll
  for (int v = threadIdx.x; v < ROWS * VPR; v += THREADS) {
    const int rr = v / VPR, cc = (v % VPR) * VEC;
    const int row = r0 + rr, col = c0 + cc;
    const bool ok = row < nrows && col < ncols;
    cp_async16(s + rr * P + cc, ok ? g + row * ld + col : g, ok);
  }
}

// B_cat rows [o0, o0+ROWS) x rank columns [j0, j0+COLS), gathered from B (E, d_out, r):
// B_cat[o][e*r+i] = B[e][o][i]. With r a multiple of 16 bytes each vector holds ranks of one expert.
template <typename T, int ROWS, int COLS, int THREADS>
__device__ __forceinline__ void load_b_tile(T* s, const T* B, int d_out, int r, int R, int o0, int j0, bool vec) {
  constexpr int VEC = Geo<T>::VEC, P = COLS + Geo<T>::PAD;
  if (vec) {
    constexpr int VPR = COLS / VEC;
#pragma unroll
    for (int v = threadIdx.x; v < ROWS * VPR; v += THREADS) {
      const int rr = v / VPR, jj = (v % VPR) * VEC;
      const int o = o0 + rr, j = j0 + jj;
      const bool ok = o < d_out && j < R;
      const int e = j / r, i = j - e * r;
      cp_async16(s + rr * P + jj, ok ? B + ((int64_t)e * d_out + o) * r + i : B, ok);
    }
  } else {
    for (int v = threadIdx.x; v < ROWS * COLS; v += THREADS) {
      const int rr = v / COLS, jj = v % COLS;
      const int o = o0 + rr, j = j0 + jj;
      const int e = j / r, i = j - e * r;
      s[rr * P + jj] = (o < d_out && j < R) ? B[((int64_t)e * d_out + o) * r + i] : from_f<T>(0.f);
    }
  }
}

// A warp writes its 16 rows x 64 columns of acc to out_s, then to global rows [row0, row0+16) x cols
// [c0, c0+64) of a row-major (nrows x ncols, pitch ld) matrix, 16 bytes a store. With accumulate, adds
// them to what is there (rounding like eager PyTorch's `base + delta`: delta to T first, then the sum).
template <typename T>
__device__ __forceinline__ void store_warp_tile(const float (&acc)[8][4], T* out_s, T* g, int64_t ld, int nrows,
                                                int ncols, int row0, int c0, bool accumulate) {
  constexpr int VEC = Geo<T>::VEC, P = kTile + Geo<T>::PAD;
  const int lane = threadIdx.x & 31, gr = lane >> 2, t = lane & 3;
#pragma unroll
  for (int nt = 0; nt < 8; ++nt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      T* p = out_s + (gr + 8 * half) * P + nt * 8 + 2 * t;
      p[0] = from_f<T>(acc[nt][2 * half]);
      p[1] = from_f<T>(acc[nt][2 * half + 1]);
    }
  __syncwarp();
#pragma unroll
  for (int v = lane; v < 16 * kTile / VEC; v += 32) {
    const int rr = v / (kTile / VEC), cc = (v % (kTile / VEC)) * VEC;
    const int row = row0 + rr, col = c0 + cc;
    if (row < nrows && col < ncols) {
      uint4 v = *reinterpret_cast<const uint4*>(out_s + rr * P + cc);
      uint4* dst = reinterpret_cast<uint4*>(g + row * ld + col);
      if (accumulate) {
        const uint4 old = *dst;
        T* pv = reinterpret_cast<T*>(&v);
        const T* po = reinterpret_cast<const T*>(&old);
#pragma unroll
        for (int u = 0; u < VEC; ++u) pv[u] = from_f<T>(to_f(pv[u]) + to_f(po[u]));
      }
      *dst = v;
    }
  }
  __syncwarp();
}

// A warp copies its 16 rows x 64 columns [c0, c0+64) of a shared (pitch sp) tile to global (pitch ld).
template <typename T>
__device__ __forceinline__ void copy_warp_rows(const T* s, int sp, T* g, int64_t ld, int nrows, int row0, int c0) {
  constexpr int VEC = Geo<T>::VEC;
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int v = lane; v < 16 * kTile / VEC; v += 32) {
    const int rr = v / (kTile / VEC), cc = (v % (kTile / VEC)) * VEC;
    if (row0 + rr < nrows)
      *reinterpret_cast<uint4*>(g + (row0 + rr) * ld + c0 + cc) = *reinterpret_cast<const uint4*>(s + rr * sp + c0 + cc);
  }
}

// The cp.async pipeline every kernel runs: load(i) issues iteration i's copies into stage i % kStages, and
// step(it) computes on iteration it's stage while the loads of the next kStages - 1 iterations are in flight.
// All copies have landed when it returns.
template <typename Load, typename Step>
__device__ __forceinline__ void pipelined(int n, Load&& load, Step&& step) {
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < n) load(i);
    cp_async_commit();
  }
  for (int it = 0; it < n; ++it) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    if (it + kStages - 1 < n) load(it + kStages - 1);
    cp_async_commit();
    step(it);
  }
  cp_async_wait<0>();
}

// ----------------------------------------------------------------------------------------------------
// Forward: n_splits blocks per BM tokens, one warp per 16 of them.
//   phase 1: h = x A_cat^T, 64 rank columns per pass over d_in; split 0 saves h (fp32) and hg = s*g*h
//   phase 2: y = hg B_cat^T, 64 output columns at a time: split s takes its share of the output columns
// A token tile's splits are neighbours in the grid, so the phase-1 reads they repeat come from L2; splits
// keep the multiprocessors busy where the token tiles alone are fewer than the SMs (pick_splits).

template <typename T, int BM>
struct FwdSmem {
  static constexpr int KC = Geo<T>::KC, PAD = Geo<T>::PAD;
  static constexpr int STAGE = (BM + kTile) * (KC + PAD);  // phase 1: x tile + A tile; phase 2: B tile
  static size_t bytes(int RP) { return sizeof(T) * (size_t(kStages) * STAGE + BM * (RP + PAD) + BM * (kTile + PAD)); }
};

template <typename T, int BM>
__global__ void __launch_bounds__(2 * BM) moelora_fwd_kernel(
    const T* __restrict__ x, const T* __restrict__ A, const T* __restrict__ B, const T* __restrict__ gates,
    T* __restrict__ y, float* __restrict__ h, T* __restrict__ hg,
    int N, int d_in, int d_out, int E, int r, float scaling, bool b_vec, bool accumulate, int n_splits) {
  constexpr int THREADS = 2 * BM, KC = Geo<T>::KC, PAD = Geo<T>::PAD;
  using S = FwdSmem<T, BM>;
  const int R = E * r, RP = round_up(R, kTile);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* stage = reinterpret_cast<T*>(smem_raw);
  T* hg_s = stage + kStages * S::STAGE;  // BM x (RP + PAD)
  T* out_s = hg_s + BM * (RP + PAD);     // BM x (64 + PAD), staging for y
  const int n0 = (blockIdx.x / n_splits) * BM, split = blockIdx.x % n_splits;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2, t = lane & 3;
  const int wrow = warp * 16;  // this warp's first token row in the block
  float acc[8][4];
  zero(acc);

  // ---- phase 1: iteration it covers rank pass rc = it / nk and d_in chunk kc = it % nk
  const int nk = cdiv(d_in, KC), n1 = (RP / kTile) * nk;
  auto load1 = [&](int it) {
    T* s = stage + (it % kStages) * S::STAGE;
    load_tile<T, BM, KC, THREADS>(s, x, d_in, N, d_in, n0, (it % nk) * KC);
    load_tile<T, kTile, KC, THREADS>(s + BM * (KC + PAD), A, d_in, R, d_in, (it / nk) * kTile, (it % nk) * KC);
  };
  pipelined(n1, load1, [&](int it) {
    const T* s = stage + (it % kStages) * S::STAGE;
    warp_mma<T, true, true>(acc, s + wrow * (KC + PAD), KC + PAD, s + BM * (KC + PAD), KC + PAD, KC);
    if (it % nk == nk - 1) {
      // end of a rank pass: h to global (fp32), hg = scaling * gate * h to shared memory
      const int c0 = (it / nk) * kTile;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int row = wrow + gr + 8 * half, n = n0 + row, col = c0 + nt * 8 + 2 * t;
          const float v0 = acc[nt][2 * half], v1 = acc[nt][2 * half + 1];
          float g0 = 0.f, g1 = 0.f;
          if (n < N) {
            if (split == 0) *reinterpret_cast<float2*>(h + (int64_t)n * RP + col) = make_float2(v0, v1);
            if (col < R) g0 = to_f(gates[(int64_t)n * E + col / r]);
            if (col + 1 < R) g1 = to_f(gates[(int64_t)n * E + (col + 1) / r]);
          }
          hg_s[row * (RP + PAD) + col] = from_f<T>(scaling * g0 * v0);
          hg_s[row * (RP + PAD) + col + 1] = from_f<T>(scaling * g1 * v1);
        }
      zero(acc);
      __syncwarp();
      if (split == 0)
        copy_warp_rows<T>(hg_s + wrow * (RP + PAD), RP + PAD, hg + (int64_t)n0 * RP, RP, N - n0, wrow, c0);
    }
  });
  __syncthreads();  // the stage buffers are reused below

  // ---- phase 2: iteration it covers output chunk oc = oc0 + it / nj and rank chunk jc = it % nj
  const int per_split = cdiv(cdiv(d_out, kTile), n_splits), oc0 = split * per_split;
  const int nj = RP / KC, n2 = max(0, min(per_split, cdiv(d_out, kTile) - oc0)) * nj;
  auto load2 = [&](int it) {
    load_b_tile<T, kTile, KC, THREADS>(stage + (it % kStages) * S::STAGE, B, d_out, r, R,
                                       (oc0 + it / nj) * kTile, (it % nj) * KC, b_vec);
  };
  pipelined(n2, load2, [&](int it) {
    const int jc = it % nj;
    warp_mma<T, true, true>(acc, hg_s + wrow * (RP + PAD) + jc * KC, RP + PAD, stage + (it % kStages) * S::STAGE,
                            KC + PAD, KC);
    if (jc == nj - 1) {
      store_warp_tile<T>(acc, out_s + wrow * (kTile + PAD), y + (int64_t)n0 * d_out, d_out, N - n0, d_out, wrow,
                         (oc0 + it / nj) * kTile, accumulate);
      zero(acc);
    }
  });
}

// ----------------------------------------------------------------------------------------------------
// Backward, token side: n_splits blocks per BM tokens (as in the forward), one warp per 16 of them.
//   phase 1: dhg = dy B_cat (64 rank columns per pass over d_out); per pass, from the registers:
//            dgates[n, e] = s * sum_{i<r} dhg[n, e*r+i] * h[n, e*r+i]   (a running sum per token row)
//            dh = s * gates * dhg, kept in shared memory for phase 2 and written out for dA (split 0)
//   phase 2: dx = dh A_cat, 64 columns of d_in at a time: split s takes its share of the columns
// Block 0 also zeroes the split counters that moelora_bwd_w_kernel uses next on the stream.

template <typename T, int BM>
struct BwdDxSmem {
  static constexpr int KC = Geo<T>::KC, PAD = Geo<T>::PAD;
  static constexpr int STAGE = BM * (KC + PAD) + KC * (kTile + PAD);  // dy tile + B tile (phase 2: A tile)
  static constexpr int TMP = BM * (kTile + 1) * 4 > BM * (kTile + PAD) * int(sizeof(T))
                                 ? BM * (kTile + 1) * 4
                                 : BM * (kTile + PAD) * int(sizeof(T));  // dhg*h (fp32) or dx staging
  static size_t bytes(int RP) { return sizeof(T) * (size_t(kStages) * STAGE + BM * (RP + PAD)) + TMP; }
};

template <typename T, int BM>
__global__ void __launch_bounds__(2 * BM) moelora_bwd_dx_kernel(
    const T* __restrict__ dy, const T* __restrict__ A, const T* __restrict__ B, const T* __restrict__ gates,
    const float* __restrict__ h, T* __restrict__ dx, T* __restrict__ dh, T* __restrict__ dgates,
    int* __restrict__ counters, int n_counters, int N, int d_in, int d_out, int E, int r, float scaling, bool b_vec,
    bool need_dx, bool accumulate, int n_splits) {
  constexpr int THREADS = 2 * BM, KC = Geo<T>::KC, PAD = Geo<T>::PAD;
  using S = BwdDxSmem<T, BM>;
  const int R = E * r, RP = round_up(R, kTile);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* stage = reinterpret_cast<T*>(smem_raw);
  T* dh_s = stage + kStages * S::STAGE;                                 // BM x (RP + PAD)
  unsigned char* tmp_raw = reinterpret_cast<unsigned char*>(dh_s + BM * (RP + PAD));
  float* prod_s = reinterpret_cast<float*>(tmp_raw);                    // BM x 65: dhg * h of one pass
  T* out_s = reinterpret_cast<T*>(tmp_raw);                             // BM x (64 + PAD): dx staging
  const int n0 = (blockIdx.x / n_splits) * BM, split = blockIdx.x % n_splits;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2, t = lane & 3;
  const int wrow = warp * 16;
  if (blockIdx.x == 0)
    for (int i = threadIdx.x; i < n_counters; i += THREADS) counters[i] = 0;
  float acc[8][4];
  zero(acc);
  // dgates: lane l < 16 walks token row wrow + l across the passes, summing one expert at a time
  float gsum = 0.f;
  int e_cur = 0, e_end = r;

  // ---- phase 1: iteration it covers rank pass rc = it / no and d_out chunk oc = it % no
  const int no = cdiv(d_out, KC), n1 = (RP / kTile) * no;
  auto load1 = [&](int it) {
    T* s = stage + (it % kStages) * S::STAGE;
    load_tile<T, BM, KC, THREADS>(s, dy, d_out, N, d_out, n0, (it % no) * KC);
    load_b_tile<T, KC, kTile, THREADS>(s + BM * (KC + PAD), B, d_out, r, R, (it % no) * KC, (it / no) * kTile, b_vec);
  };
  pipelined(n1, load1, [&](int it) {
    const T* s = stage + (it % kStages) * S::STAGE;
    warp_mma<T, true, false>(acc, s + wrow * (KC + PAD), KC + PAD, s + BM * (KC + PAD), kTile + PAD, KC);
    if (it % no == no - 1) {
      const int c0 = (it / no) * kTile;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int row = wrow + gr + 8 * half, n = n0 + row, cl = nt * 8 + 2 * t, col = c0 + cl;
          const float v0 = acc[nt][2 * half], v1 = acc[nt][2 * half + 1];
          float2 hv = make_float2(0.f, 0.f);
          float g0 = 0.f, g1 = 0.f;
          if (n < N) {
            hv = *reinterpret_cast<const float2*>(h + (int64_t)n * RP + col);
            if (col < R) g0 = to_f(gates[(int64_t)n * E + col / r]);
            if (col + 1 < R) g1 = to_f(gates[(int64_t)n * E + (col + 1) / r]);
          }
          prod_s[row * (kTile + 1) + cl] = v0 * hv.x;
          prod_s[row * (kTile + 1) + cl + 1] = v1 * hv.y;
          dh_s[row * (RP + PAD) + col] = from_f<T>(scaling * g0 * v0);
          dh_s[row * (RP + PAD) + col + 1] = from_f<T>(scaling * g1 * v1);
        }
      zero(acc);
      __syncwarp();
      if (split == 0 && lane < 16) {
        const int row = wrow + lane, n = n0 + row, c_end = min(c0 + kTile, R);
        for (int c = c0; c < c_end; ++c) {
          gsum += prod_s[row * (kTile + 1) + c - c0];
          if (c == e_end - 1) {  // expert e_cur's last rank column
            if (n < N) dgates[(int64_t)n * E + e_cur] = from_f<T>(scaling * gsum);
            gsum = 0.f;
            ++e_cur;
            e_end += r;
          }
        }
      }
      if (split == 0)
        copy_warp_rows<T>(dh_s + wrow * (RP + PAD), RP + PAD, dh + (int64_t)n0 * RP, RP, N - n0, wrow, c0);
      __syncwarp();
    }
  });
  __syncthreads();
  if (!need_dx) return;

  // ---- phase 2: iteration it covers d_in chunk dc = dc0 + it / nj and rank chunk jc = it % nj
  const int per_split = cdiv(cdiv(d_in, kTile), n_splits), dc0 = split * per_split;
  const int nj = RP / KC, n2 = max(0, min(per_split, cdiv(d_in, kTile) - dc0)) * nj;
  auto load2 = [&](int it) {
    load_tile<T, KC, kTile, THREADS>(stage + (it % kStages) * S::STAGE, A, d_in, R, d_in, (it % nj) * KC,
                                     (dc0 + it / nj) * kTile);
  };
  pipelined(n2, load2, [&](int it) {
    const int jc = it % nj;
    warp_mma<T, true, false>(acc, dh_s + wrow * (RP + PAD) + jc * KC, RP + PAD, stage + (it % kStages) * S::STAGE,
                             kTile + PAD, KC);
    if (jc == nj - 1) {
      store_warp_tile<T>(acc, out_s + wrow * (kTile + PAD), dx + (int64_t)n0 * d_in, d_in, N - n0, d_in, wrow,
                         (dc0 + it / nj) * kTile, accumulate);
      zero(acc);
    }
  });
}

// ----------------------------------------------------------------------------------------------------
// Backward, weight side: dA_cat = dh^T x and dB_cat = dy^T hg, both sums over tokens.
// Block (tile, split) sums its tile over a range of tokens into a fp32 partial; the last split of a tile
// to finish (an atomic counter) adds the partials in split order and writes dA or dB.
// Tiles [0, n_tiles_a) are dA's 64x64 tiles (rank rows x d_in columns), the rest dB's (d_out rows x rank).

template <typename T>
struct BwdWSmem {
  static constexpr int KT = Geo<T>::KC, PAD = Geo<T>::PAD;  // tokens per step
  static constexpr int STAGE = 2 * KT * (kTile + PAD);
  static size_t bytes() { return sizeof(T) * size_t(kStages) * STAGE; }
};

template <typename T>
__global__ void __launch_bounds__(128) moelora_bwd_w_kernel(
    const T* __restrict__ x, const T* __restrict__ dy, const T* __restrict__ dh, const T* __restrict__ hg,
    T* __restrict__ dA, T* __restrict__ dB, float* __restrict__ partial, int* __restrict__ counters,
    int N, int d_in, int d_out, int E, int r, int n_tiles_a, int n_tiles, int tokens_per_split, int n_splits) {
  constexpr int THREADS = 128, KT = BwdWSmem<T>::KT, PAD = Geo<T>::PAD, P = kTile + PAD;
  using S = BwdWSmem<T>;
  const int R = E * r, RP = round_up(R, kTile), rt = RP / kTile;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* stage = reinterpret_cast<T*>(smem_raw);
  __shared__ bool is_last;
  const int tile = blockIdx.x % n_tiles, split = blockIdx.x / n_tiles;
  const bool is_a = tile < n_tiles_a;
  // dA tile: rows j0.. of the rank, cols c0.. of d_in; dB tile: rows c0.. of d_out, cols j0.. of the rank
  const int ta = is_a ? tile : tile - n_tiles_a;
  const int j0 = (is_a ? ta / cdiv(d_in, kTile) : ta % rt) * kTile;
  const int c0 = (is_a ? ta % cdiv(d_in, kTile) : ta / rt) * kTile;
  const int tok0 = split * tokens_per_split, tok1 = min(N, tok0 + tokens_per_split);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2, t = lane & 3;
  const int wrow = warp * 16;
  float acc[8][4];
  zero(acc);

  // the m operand (dh for dA, dy for dB) goes first in a stage, the n operand (x for dA, hg for dB) second
  const int n_it = cdiv(tok1 - tok0, KT);
  auto load = [&](int it) {
    T* s = stage + (it % kStages) * S::STAGE;
    const int k0 = tok0 + it * KT;
    if (is_a) {
      load_tile<T, KT, kTile, THREADS>(s, dh, RP, tok1, RP, k0, j0);
      load_tile<T, KT, kTile, THREADS>(s + KT * P, x, d_in, tok1, d_in, k0, c0);
    } else {
      load_tile<T, KT, kTile, THREADS>(s, dy, d_out, tok1, d_out, k0, c0);
      load_tile<T, KT, kTile, THREADS>(s + KT * P, hg, RP, tok1, RP, k0, j0);
    }
  };
  pipelined(n_it, load, [&](int it) {
    const T* s = stage + (it % kStages) * S::STAGE;
    warp_mma<T, false, false>(acc, s + wrow, P, s + KT * P, P, KT);
  });

  // this split's partial, then the last split of the tile reduces all of them
  float* mine = partial + ((int64_t)tile * n_splits + split) * kTile * kTile;
#pragma unroll
  for (int nt = 0; nt < 8; ++nt)
#pragma unroll
    for (int half = 0; half < 2; ++half)
      __stcg(reinterpret_cast<float2*>(mine + (wrow + gr + 8 * half) * kTile + nt * 8 + 2 * t),
             make_float2(acc[nt][2 * half], acc[nt][2 * half + 1]));
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) is_last = atomicAdd(&counters[tile], 1) == n_splits - 1;
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  const float* all = partial + (int64_t)tile * n_splits * kTile * kTile;
  for (int v = threadIdx.x; v < kTile * kTile / 4; v += THREADS) {
    float4 sum = __ldcg(reinterpret_cast<const float4*>(all) + v);
    for (int sp = 1; sp < n_splits; ++sp) {
      const float4 p = __ldcg(reinterpret_cast<const float4*>(all + sp * kTile * kTile) + v);
      sum.x += p.x, sum.y += p.y, sum.z += p.z, sum.w += p.w;
    }
    const int m = v / (kTile / 4), n = (v % (kTile / 4)) * 4;
    const float s4[4] = {sum.x, sum.y, sum.z, sum.w};
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      if (is_a) {  // dA[j][d], A_cat's layout
        const int j = j0 + m, d = c0 + n + u;
        if (j < R && d < d_in) dA[(int64_t)j * d_in + d] = from_f<T>(s4[u]);
      } else {  // dB[e][o][i] = dB_cat[o][e*r+i]
        const int o = c0 + m, j = j0 + n + u;
        if (o < d_out && j < R) dB[((int64_t)(j / r) * d_out + o) * r + j % r] = from_f<T>(s4[u]);
      }
    }
  }
}

// ----------------------------------------------------------------------------------------------------
// Launchers

namespace {

bool poison_outputs() {  // MOELORA_POISON=1: outputs and workspaces start as NaN (dev checks for unwritten memory)
  static const bool on = std::getenv("MOELORA_POISON") != nullptr;
  return on;
}

at::Tensor new_tensor(at::IntArrayRef shape, const at::TensorOptions& opt) {
  return poison_outputs() ? at::full(shape, NAN, opt) : at::empty(shape, opt);
}

template <typename K>
void set_smem(K kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

int attribute(cudaDeviceAttr what) {  // of the current device
  int dev = 0, value = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, what, dev));
  return value;
}

int smem_limit() { return attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin); }

// Token rows per block: 128 while the rank tile leaves room for it, else 64. MOELORA_BM=64 forces 64 (dev).
int pick_bm(int RP, size_t (*bytes128)(int)) {
  static const int forced = std::getenv("MOELORA_BM") ? std::atoi(std::getenv("MOELORA_BM")) : 0;
  if (forced == 64) return 64;
  return bytes128(RP) <= size_t(smem_limit()) ? 128 : 64;
}

// Blocks of `threads` threads and `smem` bytes that fit on one multiprocessor at once (1 KB of shared
// memory per block is the runtime's).
int blocks_per_sm(int threads, size_t smem) {
  const int by_smem = attribute(cudaDevAttrMaxSharedMemoryPerMultiprocessor) / int(smem + 1024);
  return std::max(1, std::min(2048 / threads, by_smem));
}

// Column splits of a token-side kernel (blocks per token tile). A split repeats phase 1 (cols1 columns of
// its operand, re-read from L2) and does 1/s of phase 2's chunks2 64-column chunks. The cost is counted as
// waves of blocks times one block's work: where the token tiles alone leave SMs idle, splitting fills
// them; where they already fill the GPU, it only repeats phase 1. MOELORA_SPLITS=1 turns splits off (dev).
int pick_splits(int n_tiles, int slots, int cols1, int chunks2) {
  static const int forced = std::getenv("MOELORA_SPLITS") ? std::atoi(std::getenv("MOELORA_SPLITS")) : 0;
  if (forced > 0) return std::min(forced, chunks2);
  int best = 1;
  double best_cost = 1e300;
  for (int s = 1; s <= std::min(chunks2, 16); ++s) {
    const double cost = double(cdiv(n_tiles * s, slots)) * (cols1 + double(chunks2) * kTile / s);
    if (cost < best_cost * (1 - 1e-9)) best = s, best_cost = cost;
  }
  return best;
}

template <typename T>
void launch_fwd(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B, const at::Tensor& gates, float scaling,
                at::Tensor& y, at::Tensor& h, at::Tensor& hg, bool accumulate) {
  const int N = x.size(0), d_in = x.size(1), E = A.size(0), r = A.size(1), d_out = B.size(1);
  const int RP = round_up(E * r, kTile);
  const bool b_vec = r % Geo<T>::VEC == 0;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const auto* px = reinterpret_cast<const T*>(x.data_ptr());
  const auto* pA = reinterpret_cast<const T*>(A.data_ptr());
  const auto* pB = reinterpret_cast<const T*>(B.data_ptr());
  const auto* pg = reinterpret_cast<const T*>(gates.data_ptr());
  auto* py = reinterpret_cast<T*>(y.data_ptr());
  auto* phg = reinterpret_cast<T*>(hg.data_ptr());
  float* ph = h.data_ptr<float>();
  const int sms = attribute(cudaDevAttrMultiProcessorCount);
  const int bm = pick_bm(RP, &FwdSmem<T, 128>::bytes);
  if (bm == 128) {
    const size_t smem = FwdSmem<T, 128>::bytes(RP);
    const int splits = pick_splits(cdiv(N, 128), sms * blocks_per_sm(256, smem), d_in, cdiv(d_out, kTile));
    set_smem(moelora_fwd_kernel<T, 128>, smem);
    moelora_fwd_kernel<T, 128><<<cdiv(N, 128) * splits, 256, smem, stream>>>(
        px, pA, pB, pg, py, ph, phg, N, d_in, d_out, E, r, scaling, b_vec, accumulate, splits);
  } else {
    const size_t smem = FwdSmem<T, 64>::bytes(RP);
    const int splits = pick_splits(cdiv(N, 64), sms * blocks_per_sm(128, smem), d_in, cdiv(d_out, kTile));
    set_smem(moelora_fwd_kernel<T, 64>, smem);
    moelora_fwd_kernel<T, 64><<<cdiv(N, 64) * splits, 128, smem, stream>>>(
        px, pA, pB, pg, py, ph, phg, N, d_in, d_out, E, r, scaling, b_vec, accumulate, splits);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_bwd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                const at::Tensor& gates, const at::Tensor& h, const at::Tensor& hg, float scaling, bool need_dx,
                bool accumulate, at::Tensor& dx, at::Tensor& dA, at::Tensor& dB, at::Tensor& dgates) {
  const int N = x.size(0), d_in = x.size(1), E = A.size(0), r = A.size(1), d_out = B.size(1);
  const int RP = round_up(E * r, kTile);
  const bool b_vec = r % Geo<T>::VEC == 0;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const auto opt = x.options();
  at::Tensor dh = new_tensor({N, RP}, opt);  // (N, RP), read back by the weight-side kernel

  // the weight side's split over tokens: about two blocks per multiprocessor in all
  const int n_tiles_a = (RP / kTile) * cdiv(d_in, kTile), n_tiles = n_tiles_a + cdiv(d_out, kTile) * (RP / kTile);
  const int KT = BwdWSmem<T>::KT;
  const int sms = attribute(cudaDevAttrMultiProcessorCount);
  const int steps = cdiv(N, KT);
  int n_splits = std::max(1, std::min(steps, cdiv(2 * sms, n_tiles)));
  const int tokens_per_split = cdiv(steps, n_splits) * KT;
  n_splits = cdiv(N, tokens_per_split);
  at::Tensor partial = new_tensor({int64_t(n_tiles) * n_splits * kTile * kTile}, opt.dtype(at::kFloat));
  at::Tensor counters = at::empty({n_tiles}, opt.dtype(at::kInt));  // zeroed by the token-side kernel

  const auto* pdy = reinterpret_cast<const T*>(dy.data_ptr());
  const auto* px = reinterpret_cast<const T*>(x.data_ptr());
  const auto* pA = reinterpret_cast<const T*>(A.data_ptr());
  const auto* pB = reinterpret_cast<const T*>(B.data_ptr());
  const auto* pg = reinterpret_cast<const T*>(gates.data_ptr());
  const auto* phg = reinterpret_cast<const T*>(hg.data_ptr());
  const float* ph = h.data_ptr<float>();
  auto* pdx = need_dx ? reinterpret_cast<T*>(dx.data_ptr()) : nullptr;
  auto* pdh = reinterpret_cast<T*>(dh.data_ptr());
  auto* pdg = reinterpret_cast<T*>(dgates.data_ptr());
  int* pc = counters.data_ptr<int>();

  const int bm = pick_bm(RP, &BwdDxSmem<T, 128>::bytes);
  const int dx_chunks = need_dx ? cdiv(d_in, kTile) : 1;  // without dx there is no phase 2 to split
  if (bm == 128) {
    const size_t smem = BwdDxSmem<T, 128>::bytes(RP);
    const int splits = pick_splits(cdiv(N, 128), sms * blocks_per_sm(256, smem), d_out, dx_chunks);
    set_smem(moelora_bwd_dx_kernel<T, 128>, smem);
    moelora_bwd_dx_kernel<T, 128><<<cdiv(N, 128) * splits, 256, smem, stream>>>(
        pdy, pA, pB, pg, ph, pdx, pdh, pdg, pc, n_tiles, N, d_in, d_out, E, r, scaling, b_vec, need_dx, accumulate,
        splits);
  } else {
    const size_t smem = BwdDxSmem<T, 64>::bytes(RP);
    const int splits = pick_splits(cdiv(N, 64), sms * blocks_per_sm(128, smem), d_out, dx_chunks);
    set_smem(moelora_bwd_dx_kernel<T, 64>, smem);
    moelora_bwd_dx_kernel<T, 64><<<cdiv(N, 64) * splits, 128, smem, stream>>>(
        pdy, pA, pB, pg, ph, pdx, pdh, pdg, pc, n_tiles, N, d_in, d_out, E, r, scaling, b_vec, need_dx, accumulate,
        splits);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const size_t smem = BwdWSmem<T>::bytes();
  set_smem(moelora_bwd_w_kernel<T>, smem);
  moelora_bwd_w_kernel<T><<<n_tiles * n_splits, 128, smem, stream>>>(
      px, pdy, pdh, phg, reinterpret_cast<T*>(dA.data_ptr()), reinterpret_cast<T*>(dB.data_ptr()),
      partial.data_ptr<float>(), pc, N, d_in, d_out, E, r, n_tiles_a, n_tiles, tokens_per_split, n_splits);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

// ----------------------------------------------------------------------------------------------------
// Entry points (inputs already checked by moelora.cpp)

#define MOELORA_DISPATCH(dtype, NAME, ...)                                              \
  switch (dtype) {                                                                      \
    case at::kFloat: { using NAME = float; __VA_ARGS__; break; }                        \
    case at::kBFloat16: { using NAME = __nv_bfloat16; __VA_ARGS__; break; }             \
    case at::kHalf: { using NAME = __half; __VA_ARGS__; break; }                        \
    default: TORCH_CHECK(false, "moelora: unsupported dtype ", dtype);                  \
  }

size_t smem_needed(at::ScalarType dtype, int R) {
  // the smaller (64-token) configuration of the two token-side kernels
  const int RP = round_up(R, kTile);
  size_t need = 0;
  MOELORA_DISPATCH(dtype, T, need = std::max(FwdSmem<T, 64>::bytes(RP), BwdDxSmem<T, 64>::bytes(RP)));
  return need;
}

int device_smem_limit() { return smem_limit(); }
int device_major() { return attribute(cudaDevAttrComputeCapabilityMajor); }

// y_init, when defined, is a contiguous (N, d_out) tensor the adapter's output is added to, in place
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cuda(const at::Tensor& x, const at::Tensor& A,
                                                            const at::Tensor& B, const at::Tensor& gates,
                                                            double scaling, const at::Tensor& y_init) {
  const at::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), E = A.size(0), r = A.size(1), d_out = B.size(1);
  const int64_t RP = round_up(int(E * r), kTile);
  const bool accumulate = y_init.defined();
  at::Tensor y = accumulate ? y_init : new_tensor({N, d_out}, x.options());
  at::Tensor h = new_tensor({N, RP}, x.options().dtype(at::kFloat));
  at::Tensor hg = new_tensor({N, RP}, x.options());
  if (N > 0) MOELORA_DISPATCH(x.scalar_type(), T, launch_fwd<T>(x, A, B, gates, float(scaling), y, h, hg, accumulate));
  return {y, h, hg};
}

// dx_init, when defined (and need_dx), is a contiguous (N, d_in) tensor the adapter's dx is added to, in place
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& A, const at::Tensor& B, const at::Tensor& gates,
    const at::Tensor& h, const at::Tensor& hg, double scaling, bool need_dx, const at::Tensor& dx_init) {
  const at::cuda::CUDAGuard guard(x.device());
  const bool accumulate = need_dx && dx_init.defined();
  // without need_dx, dx is an empty placeholder (the schema returns a tensor)
  at::Tensor dx = accumulate ? dx_init : need_dx ? new_tensor(x.sizes(), x.options()) : at::empty({0}, x.options());
  if (x.size(0) == 0) {  // no tokens: the weight gradients are zero
    if (need_dx && !accumulate) dx.zero_();
    return {dx, at::zeros_like(A), at::zeros_like(B), at::zeros_like(gates)};
  }
  at::Tensor dA = new_tensor(A.sizes(), A.options());
  at::Tensor dB = new_tensor(B.sizes(), B.options());
  at::Tensor dgates = new_tensor(gates.sizes(), gates.options());
  MOELORA_DISPATCH(x.scalar_type(), T,
                   launch_bwd<T>(dy, x, A, B, gates, h, hg, float(scaling), need_dx, accumulate, dx, dA, dB, dgates));
  return {dx, dA, dB, dgates};
}

}  // namespace moelora
