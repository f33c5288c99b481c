// The whole-sequence float32 GEMMs on brgemm (seq_gemm.h).
#include "seq_gemm.h"
#include "step_gemm.h"

#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../sequence.h"
#include "brgemm_step.h"
#include "pointwise.h"
#include "scratch.h"

namespace fastrnn::cpu {
namespace {

// Block sizes (FASTRNN_CPU_SEQ_GEMM_MB/_NB/_KC/_GROUP override, for A/B): one brgemm call multiplies mb rows of
// a by a kc x nb panel of b (128 KB at the defaults); a thread runs all its row blocks against a group of panels
// (512 KB: they stay in its L2) before the next group, so each panel comes from memory once per thread and K chunk.
struct Blocks {
  int64_t mb, nb, kc, group;
};
Blocks blocks() {
  return {std::max<int64_t>(1, env_int("FASTRNN_CPU_SEQ_GEMM_MB", 64)),
          std::max<int64_t>(1, env_int("FASTRNN_CPU_SEQ_GEMM_NB", 64)),
          std::max<int64_t>(1, env_int("FASTRNN_CPU_SEQ_GEMM_KC", 512)),
          std::max<int64_t>(1, env_int("FASTRNN_CPU_SEQ_GEMM_GROUP", 4))};
}

// dst[i * ld_dst + j] = src[i * si + j * sj] for i < m, j < n: a copy (sj = 1), a register transpose (si = 1), or
// element by element.
void copy_block(const float* src, int64_t si, int64_t sj, float* dst, int64_t ld_dst, int64_t m, int64_t n,
                TransposeFn transpose) {
  if (sj == 1) {
    for (int64_t i = 0; i < m; ++i) std::memcpy(dst + i * ld_dst, src + i * si, sizeof(float) * n);
  } else if (si == 1) {
    transpose(src, sj, dst, ld_dst, n, m);  // src is [n, m] with row stride sj
  } else {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) dst[i * ld_dst + j] = src[i * si + j * sj];
  }
}

// b [K, N] (strides sbk, sbn) into panels of nb columns: panel j holds columns j*nb .. j*nb + w (w = nb, or the
// last panel's width) as [K][w] rows, at offset j * K * nb.
void pack_panels(const float* b, int64_t K, int64_t N, int64_t sbk, int64_t sbn, int64_t nb, float* dst_all,
                 TransposeFn transpose) {
  const int64_t npan = (N + nb - 1) / nb;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, K * nb));
  at::parallel_for(0, npan, grain, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t n0 = j * nb, w = std::min(nb, N - n0);
      copy_block(b + n0 * sbn, sbk, sbn, dst_all + j * K * nb, w, K, w, transpose);
    }
  });
}

// FASTRNN_CPU_SEQ_GEMM (seq_gemm.h): at::mm, the measured choice, or brgemm for every product.
enum class Mode { kAten, kChoice, kAlways };

Mode mode() {
  static const bool amd_avx512 = cpu_is_amd() && active_isa() >= Isa::kAvx512;
  const char* env = std::getenv("FASTRNN_CPU_SEQ_GEMM");
  if (env == nullptr || *env == '\0') return amd_avx512 ? Mode::kChoice : Mode::kAten;
  if (std::strcmp(env, "aten") == 0) return Mode::kAten;
  if (std::strcmp(env, "brgemm") == 0) return Mode::kChoice;
  if (std::strcmp(env, "always") == 0) return Mode::kAlways;
  TORCH_CHECK_VALUE(false, "FASTRNN_CPU_SEQ_GEMM must be aten, brgemm or always, got '", env, "'");
  return Mode::kAten;  // (not reached)
}

}  // namespace

bool seq_gemm_brgemm(at::Tensor c, const at::Tensor& a, const at::Tensor& b, bool add) {
  if (a.scalar_type() != at::kFloat || b.scalar_type() != at::kFloat || c.scalar_type() != at::kFloat) return false;
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  TORCH_INTERNAL_ASSERT(b.size(0) == K && c.size(0) == M && c.size(1) == N);
  const Mode m = mode();
  if (m == Mode::kAten || c.stride(1) != 1 || !brgemm_enabled(at::kFloat)) return false;
  if (m == Mode::kChoice) {  // where it measured faster than MKL (seq_gemm.h)
    // (2^21 multiply-adds: some tens of microseconds; below that the packing and the JIT lookups do not pay)
    if (M * N * K < (int64_t{1} << 21)) return false;
    const bool a_rows = a.stride(1) == 1 || K == 1, b_rows = b.stride(1) == 1 || N == 1;
    if (!b_rows || (!a_rows && M * N < (int64_t{1} << 18))) return false;
  }
  if (M == 0 || N == 0) return true;
  if (K == 0) {
    if (!add) c.zero_();
    return true;
  }

  Blocks bl = blocks();
  const int64_t nt = at::get_num_threads();
  // Enough row blocks for every thread to get two (small M: one sequence, a few steps).
  if ((M + bl.mb - 1) / bl.mb < 2 * nt) bl.mb = std::max<int64_t>(8, (M + 2 * nt - 1) / (2 * nt) + 7) / 8 * 8;
  const int64_t nb = std::min(bl.nb, N), kc = std::min(bl.kc, K), mb = std::min(bl.mb, M);
  const int64_t npan = (N + nb - 1) / nb, nmblk = (M + mb - 1) / mb;
  const TransposeFn transpose = transpose_kernel(active_isa());

  at::Tensor packed = scratch_empty(npan * K * nb, at::kFloat);  // (scratch.h: reused by the next call)
  pack_panels(b.data_ptr<float>(), K, N, b.stride(0), b.stride(1), nb, packed.data_ptr<float>(), transpose);
  const float* pp = packed.data_ptr<float>();

  const float* ap = a.data_ptr<float>();
  const int64_t sam = a.stride(0), sak = a.stride(1);
  // a's rows are read in place when contiguous along K (and far enough apart for brgemm's lda)
  const bool direct = sak == 1 && (M == 1 || sam >= K);
  float* cp = c.data_ptr<float>();
  const int64_t ldc = M == 1 ? N : c.stride(0);

  at::parallel_for(0, nmblk, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> abuf(direct ? 0 : static_cast<size_t>(mb * kc));
    for (int64_t k0 = 0; k0 < K; k0 += kc) {
      const int64_t ks = std::min(kc, K - k0);
      const bool acc = add || k0 > 0;
      for (int64_t g0 = 0; g0 < npan; g0 += bl.group) {
        const int64_t g1 = std::min(npan, g0 + bl.group);
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t m0 = i * mb, ms = std::min(mb, M - m0);
          const float* ablk = ap + m0 * sam + k0 * sak;
          int64_t lda = M == 1 ? K : sam;
          if (!direct) {  // a = d^T of a row-major d: its block transposed into abuf
            copy_block(ablk, sam, sak, abuf.data(), ks, ms, ks, transpose);
            ablk = abuf.data();
            lda = ks;
          }
          for (int64_t j = g0; j < g1; ++j) {
            const int64_t n0 = j * nb, w = std::min(nb, N - n0);
            at::native::cpublas::brgemm(ms, w, ks, lda, w, ldc, acc, ablk, pp + j * K * nb + k0 * w,
                                        cp + m0 * ldc + n0, /*is_vnni=*/false);
          }
        }
      }
    }
  });
  return true;
}

void seq_mm_into(at::Tensor c, const at::Tensor& a, const at::Tensor& b, bool add) {
  if (c.scalar_type() == at::kBFloat16 && brgemm_bf16_widened().value_or(false)) {
    // bf16 where the steps run widened: ATen's bf16 GEMM is a plain loop there; fp32 products of the bf16
    // values with fp32 sums, rounded once, are what a native bf16 GEMM computes.
    at::Tensor cf = add ? c.to(at::kFloat) : at::empty(c.sizes(), c.options().dtype(at::kFloat));
    seq_mm_into(cf, a.to(at::kFloat), b.to(at::kFloat), add);
    c.copy_(cf);
    return;
  }
  if (!small_mm_into(c, a, b, add) && !seq_gemm_brgemm(c, a, b, add)) aten_mm_into(c, a, b, add);
}

}  // namespace fastrnn::cpu
