// Host side of the fused brgemm recurrences (brgemm_step.h): whether the path applies, the weight packing,
// and the drivers that hand a sequence to the per-instruction-set loops (brgemm_impl.h).
#include "brgemm_step.h"

#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <c10/util/ParallelGuard.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <initializer_list>
#include <mutex>
#include <optional>
#include <type_traits>
#include <vector>

#include "../sequence.h"
#include "huge_pages.h"
#include "scratch.h"
#include "step_gemm.h"

namespace fastrnn::cpu {

int64_t env_int(const char* name, int64_t dflt) {
  const char* env = std::getenv(name);
  return env != nullptr && *env != '\0' ? std::atoll(env) : dflt;
}

namespace {
thread_local std::vector<float> widened_rows_buffers[kWidenedSlots];
}  // namespace

float* widened_rows_buffer(int slot, int64_t floats) {
  std::vector<float>& b = widened_rows_buffers[slot];
  if (static_cast<int64_t>(b.size()) < floats) b.resize(static_cast<size_t>(floats));
  return b.data();
}

void release_widened_rows_buffers() {
  for (auto& b : widened_rows_buffers) std::vector<float>().swap(b);
}

namespace {

// Hidden units per packed block (FASTRNN_CPU_BRGEMM_BLOCK overrides): the tile of one brgemm call is then
// [rows, 4 * 32] floats, 16 KB at 32 rows.
int64_t block_units() { return std::max<int64_t>(1, env_int("FASTRNN_CPU_BRGEMM_BLOCK", 32)); }

// The forward's block: 32 units, halved (down to 8) while one block of the packed W_hh, K x G*nb elements, is
// over a quarter of the core's L2: brgemm passes over the block once per few rows of the tile, so it has to
// stay in L2 next to the tile's rows of h. Measured on a quiet 2-core AMD EPYC (Zen 4, 1 MB L2 per core),
// interleaved medians, T=50 B=64 I=H=1024 fp32 inference (512 KB blocks at 32 units): LSTM 0.79x -> 0.87x
// torch.nn at 16 units, GRU 1.36x -> 1.50x. The backward keeps 32 (16 measured slower in training there).
// Sapphire Rapids' 2 MB L2 keeps 32 at these sizes.
// Without AVX-512 (brgemm's AVX2 code, 16 vector registers) blocks of at most about 32 columns (G*nb) measured
// fastest from K = 128 up: 8 units for the LSTM and GRU, the Elman RNN's 32 kept. 2-core AMD EPYC Zen 3 (512 KB
// L2 per core), interleaved medians vs torch.nn, fp32 inference, default block -> 8 units: T=100 B=64 I=H=512
// LSTM 0.95x -> 1.08x (16 units: 128 KB), GRU 1.07x -> 1.36x; I=H=256 LSTM 1.01x -> 1.06x, GRU 1.26x -> 1.49x
// (32 units: 128 and 96 KB); I=H=128 GRU 1.80x -> 1.99x, LSTM level; but at K = 64 (T=1000 B=16 H=64) 32 units
// stay ahead (LSTM 1.53x, 1.32x at 8); RNN at 8 units (8 columns) 0.85x where 32 gives 1.34x (T=100 B=1 H=512).
int64_t forward_block_units(int64_t K, int64_t G, int64_t elem) {
  if (env_int("FASTRNN_CPU_BRGEMM_BLOCK", 0) > 0) return block_units();
  static const int64_t l2 = [] {
    const long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return v > 0 ? static_cast<int64_t>(v) : int64_t{1} << 20;
  }();
  int64_t nb = 32;
  while (nb > 8 && K * G * nb * elem > l2 / 4) nb /= 2;
  if (active_isa() < Isa::kAvx512 && K >= 128) nb = std::min(nb, std::max<int64_t>(8, 32 / G / 8 * 8));
  return nb;
}

// Block products of up to this many rows run as fastrnn's vector code instead of brgemm (brgemm_impl.h,
// block_gemm: brgemm is slow on one to a few rows). Measured (2-core Sapphire Rapids, T=100 I=H=512 LSTM and
// GRU, interleaved medians against brgemm): float32 gains 2-20% up to 4 rows and is level at 8; bfloat16 (AMX
// under brgemm) gains 1.5x at one row, 10% at two, and loses 15% at three and four.
int64_t gemv_rows(bool bf16) { return env_int("FASTRNN_CPU_BRGEMM_GEMV_ROWS", bf16 ? 2 : 4); }

// Checks brgemm once per dtype on a small product against at::mm: where oneDNN's ukernel is missing
// brgemm either raises or runs a plain GEMM that would misread the VNNI layout; both disable the path.
bool probe(at::ScalarType dt) {
  try {
    const int64_t M = 3, H = 5, K = 6, G = 4;  // N = G * H = 20 columns in one block
    const auto opts = at::TensorOptions().dtype(dt);
    const at::Tensor a = at::arange(M * K, at::kFloat).remainder(7).sub(3).div(4).reshape({M, K}).to(dt);
    const at::Tensor w = at::arange(G * H * K, at::kFloat).remainder(5).sub(2).div(2).reshape({G * H, K}).to(dt);
    int64_t kp = 0;
    const at::Tensor packed = pack_gate_blocks(w, G, H, &kp);
    at::Tensor c = at::full({M, G * H}, 7.f, opts.dtype(at::kFloat));
    const bool vnni = dt == at::kBFloat16;
    if (dt == at::kFloat)
      at::native::cpublas::brgemm(M, G * H, kp, K, G * H, G * H, false, a.data_ptr<float>(),
                                  packed.data_ptr<float>(), c.data_ptr<float>(), vnni);
    else
      at::native::cpublas::brgemm(M, G * H, kp, K, G * H, G * H, false, a.data_ptr<at::BFloat16>(),
                                  packed.data_ptr<at::BFloat16>(), c.data_ptr<float>(), vnni);
    if (vnni) at::native::cpublas::brgemm_release(true);
    // The block's column g*H + u is row g*H + u of w: with one block of H units, the plain product.
    const at::Tensor ref = at::mm(a.to(at::kFloat), w.to(at::kFloat).t());
    return at::allclose(c, ref, 1e-5, 1e-5);
  } catch (const std::exception&) {
    return false;
  }
}

bool brgemm_supported(at::ScalarType dt) {
  static std::once_flag once_f32, once_bf16;
  static bool ok_f32 = false, ok_bf16 = false;
  if (dt == at::kFloat) {
    std::call_once(once_f32, [] { ok_f32 = probe(at::kFloat); });
    return ok_f32;
  }
  if (dt == at::kBFloat16) {
    std::call_once(once_bf16, [] { ok_bf16 = probe(at::kBFloat16); });
    return ok_bf16;
  }
  return false;
}

// Runs `steps` steps of a sequence in one parallel region: with split_batch each thread owns a range of
// batch rows and runs independently; otherwise each owns a range of hidden blocks and all meet at OpenMP's
// barrier after every step (it spins for a while, then sleeps: robust under load). An exception in one
// thread (brgemm's checks) stops that thread's work but not its barriers, and is rethrown after the region.
// tile_floats: the floats of one thread's tile.
//
// One thread runs the sequence when the others would cost more than they save: a hidden split whose step is
// too small to pay for a barrier (its recurrent GEMM under FASTRNN_CPU_BRGEMM_SERIAL_FLOPS, default 2^20: a few
// microseconds on one core, with its weights in that core's L2), or a whole sequence under 4 times that (a
// decoding step, T=1: waking the thread team is then most of the call, and under load it can wait for a
// scheduler time slice). Measured (2-core Sapphire Rapids, loaded, interleaved medians), GRU T=300 B=2 H=64
// fp32 inference: 12.4 ms with a barrier per step, 7.7 ms on the per-step path.
template <typename Seq>
void run_sequence(const Seq& seq, int64_t steps, int64_t tile_floats,
                  void (*step)(const Seq&, int64_t, int64_t, int64_t, int64_t, int64_t, float*), bool vnni,
                  bool widened = false) {
  Seq s = seq;
  s.gemv_rows = gemv_rows(vnni);
  const int64_t nblk = (s.H + s.nb - 1) / s.nb;
  at::internal::lazy_init_num_threads();
  const int64_t step_flops = 2 * s.B * s.gates * s.H * s.P;
  const int64_t serial_flops = env_int("FASTRNN_CPU_BRGEMM_SERIAL_FLOPS", int64_t{1} << 20);
  const bool tiny = (!s.split_batch && step_flops < serial_flops) || step_flops * s.T < 4 * serial_flops;
  const bool parallel = !at::in_parallel_region() && at::get_num_threads() > 1 && !tiny;
  // Split by batch rows: each thread gets rows of about equal work, work[b] = the steps of rows < b. A packed
  // sequence's rows are sorted longest first, so equal numbers of rows would give the first thread the most.
  std::vector<int64_t> work;
  if (s.split_batch && parallel) {
    std::vector<int64_t> ending(s.B + 1, 0);  // ending[n]: steps with n rows
    for (int64_t t = 0; t < s.T; ++t) ++ending[std::min(s.batch_sizes[t], s.B)];
    work.assign(s.B + 1, 0);
    int64_t steps_of_row = s.T;  // row b runs in the steps with more than b rows
    for (int64_t b = 0; b < s.B; ++b) {
      steps_of_row -= ending[b];
      work[b + 1] = work[b] + steps_of_row;
    }
  }
  std::atomic_flag err_flag = ATOMIC_FLAG_INIT;
  std::exception_ptr eptr;
#pragma omp parallel if (parallel)
  {
    c10::ParallelGuard guard(true);
    const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
    int64_t r0 = 0, r1 = s.B, blk0 = 0, blk1 = nblk;
    if (s.split_batch && nt > 1) {
      auto row_at = [&](int64_t i) {  // the first row whose preceding rows hold i/nt of the work
        const int64_t target = (work[s.B] * i + nt - 1) / nt;
        return static_cast<int64_t>(std::lower_bound(work.begin(), work.end(), target) - work.begin());
      };
      r0 = row_at(tid);
      r1 = row_at(tid + 1);
    } else if (!s.split_batch) {
      blk0 = nblk * tid / nt;
      blk1 = nblk * (tid + 1) / nt;
    }
    bool failed = false;
    try {
      std::vector<float> tile(static_cast<size_t>(tile_floats));
      for (int64_t k = 0; k < steps; ++k) {
        if (!failed) {
          try {
            step(s, k, r0, r1, blk0, blk1, tile.data());
          } catch (...) {
            failed = true;
            if (!err_flag.test_and_set()) eptr = std::current_exception();
          }
        }
        if (!s.split_batch) {
#pragma omp barrier
        }
      }
      if (vnni) at::native::cpublas::brgemm_release(true);
      if (widened) release_widened_rows_buffers();
    } catch (...) {  // the tile's allocation (before any barrier) or the release (after the last)
      if (!err_flag.test_and_set()) eptr = std::current_exception();
    }
  }
  if (eptr) std::rethrow_exception(eptr);
}

}  // namespace

bool brgemm_enabled(at::ScalarType dt) {
  const char* env = std::getenv("FASTRNN_CPU_BRGEMM");
  if (env != nullptr && std::strcmp(env, "0") == 0) return false;
  if (dt == at::kFloat) return active_isa() >= Isa::kAvx2 && brgemm_supported(at::kFloat);
  return dt == at::kBFloat16 && brgemm_bf16_widened().has_value();
}

// Native where the processor runs oneDNN's bf16 brgemm (AVX-512: avx512_bf16 or AMX), widened elsewhere on
// fp32 brgemm: torch's own bf16 GEMM there is a plain loop (torch.mm 1024^3 bf16: 1 GFLOP/s on a 2-core Zen 3,
// 177 in fp32), and the per-step path would run each step's GEMM through it.
std::optional<bool> brgemm_bf16_widened() {
  const char* env = std::getenv("FASTRNN_CPU_BRGEMM_BF16");
  const bool native = active_isa() >= Isa::kAvx512 && brgemm_supported(at::kBFloat16);
  const bool widen = active_isa() >= Isa::kAvx2 && brgemm_supported(at::kFloat);
  if (env == nullptr || *env == '\0') {
    if (native) return false;
    if (widen) return true;
    return std::nullopt;
  }
  const bool want_widen = std::strcmp(env, "widen") == 0;
  TORCH_CHECK_VALUE(want_widen || std::strcmp(env, "native") == 0,
                    "FASTRNN_CPU_BRGEMM_BF16 must be native or widen, got '", env, "'");
  if (want_widen ? widen : native) return want_widen;
  return std::nullopt;
}

namespace {

// pack_gate_blocks of w = V^T (one gate) for a row-major V [K, H]: block j's row k is then V's row k, units
// j0 .. j0 + nbj, copied as it is (float32) or interleaved with row k + 1 (bf16 pairs). The backward packs
// W_hh^T and W_hr^T this way: making the transposed view contiguous first would transpose the weight twice.
at::Tensor pack_transposed_blocks(const at::Tensor& v, int64_t nb, int64_t* k_out) {
  const int64_t K = v.size(0), H = v.size(1);
  const bool vnni = v.scalar_type() == at::kBFloat16;
  const int64_t kp = vnni ? (K + 1) / 2 * 2 : K;
  *k_out = kp;
  at::Tensor packed = scratch_empty(kp * H, v.scalar_type());  // (scratch.h: reused by the next call)
  const int64_t nblk = (H + nb - 1) / nb;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, v.scalar_type(), "fastrnn::pack_transposed_blocks", [&] {
    const scalar_t* src = v.data_ptr<scalar_t>();
    scalar_t* dst_all = packed.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, nb * kp));
    at::parallel_for(0, nblk, grain, [&](int64_t blk0, int64_t blk1) {
      for (int64_t blk = blk0; blk < blk1; ++blk) {
        const int64_t j0 = blk * nb, nbj = std::min(nb, H - j0);
        scalar_t* dst = dst_all + j0 * kp;
        if (!vnni) {
          for (int64_t k = 0; k < K; ++k) std::memcpy(dst + k * nbj, src + k * H + j0, sizeof(scalar_t) * nbj);
        } else {
          for (int64_t k2 = 0; k2 < kp / 2; ++k2) {
            const scalar_t* r0 = src + 2 * k2 * H + j0;
            const scalar_t* r1 = 2 * k2 + 1 < K ? r0 + H : nullptr;
            scalar_t* d = dst + k2 * nbj * 2;
            for (int64_t c = 0; c < nbj; ++c) {
              d[2 * c] = r0[c];
              d[2 * c + 1] = r1 != nullptr ? r1[c] : scalar_t(0);
            }
          }
        }
      }
    });
  });
  return packed;
}

}  // namespace

at::Tensor pack_gate_blocks(const at::Tensor& w_, int64_t G, int64_t nb, int64_t* k_out) {
  if (G == 1 && w_.dim() == 2 && w_.size(0) > 1 && w_.size(1) > 1 && w_.stride(0) == 1 &&
      w_.stride(1) == w_.size(0))
    return pack_transposed_blocks(w_.t(), nb, k_out);
  const at::Tensor w = w_.contiguous();
  const int64_t H = w.size(0) / G, K = w.size(1);
  const bool vnni = w.scalar_type() == at::kBFloat16;
  const int64_t kp = vnni ? (K + 1) / 2 * 2 : K;
  *k_out = kp;
  at::Tensor packed = scratch_empty(kp * G * H, w.scalar_type());  // (scratch.h: reused by the next call)
  const int64_t nblk = (H + nb - 1) / nb;
  // (AVX-512's 16 x 16 register transposes; a plain loop over all N columns per k missed L1 on nearly every
  // read on Zen 4, the source rows being K floats apart, and took 17% of an LSTM's time at T=100 B=1 H=512)
  const TransposeFn transpose = transpose_kernel(active_isa());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, w.scalar_type(), "fastrnn::pack_gate_blocks", [&] {
    const scalar_t* src = w.data_ptr<scalar_t>();
    scalar_t* dst_all = packed.data_ptr<scalar_t>();
    // (grain: at least 2^16 elements per task, so a small weight is packed without waking other threads)
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, G * nb * kp));
    at::parallel_for(0, nblk, grain, [&](int64_t blk0, int64_t blk1) {
      std::vector<const scalar_t*> rows;
      for (int64_t blk = blk0; blk < blk1; ++blk) {
        const int64_t j0 = blk * nb, nbj = std::min(nb, H - j0), N = G * nbj;
        scalar_t* dst = dst_all + j0 * G * kp;
        if (vnni ? K % 2 == 0 : std::is_same_v<scalar_t, float>) {
          // Each gate's nbj rows of W, [nbj, K], transposed into its columns of the block; for bf16's
          // [K/2][N][2] layout (the pair (k, k+1) of column c side by side) the same transpose on 32-bit units,
          // each a pair, moved as float bits by register shuffles (no arithmetic). (The casts are no-ops for
          // float; double and odd-K bf16 take the loops below.)
          const int64_t units = vnni ? K / 2 : K, per_unit = vnni ? 2 : 1;
          for (int64_t g = 0; g < G; ++g)
            transpose(reinterpret_cast<const float*>(src + (g * H + j0) * K), units,
                      reinterpret_cast<float*>(dst + g * nbj * per_unit), N, nbj, units);
          continue;
        }
        rows.clear();
        for (int64_t g = 0; g < G; ++g)
          for (int64_t u = 0; u < nbj; ++u) rows.push_back(src + (g * H + j0 + u) * K);
        if (!vnni) {
          for (int64_t k = 0; k < K; ++k)
            for (int64_t c = 0; c < N; ++c) dst[k * N + c] = rows[c][k];
        } else {  // odd K: the last pair padded with a zero
          for (int64_t k2 = 0; k2 < kp / 2; ++k2)
            for (int64_t c = 0; c < N; ++c) {
              dst[(k2 * N + c) * 2] = rows[c][2 * k2];
              dst[(k2 * N + c) * 2 + 1] = 2 * k2 + 1 < K ? rows[c][2 * k2 + 1] : scalar_t(0);
            }
        }
      }
    });
  });
  return packed;
}

namespace {

// Whether the path serves a call of dtype dt over a non-empty sequence whose packed operands have sizes `sizes`
// (dtype, switches, native bf16's VNNI pairs over even sizes, none zero), and then the dtype its weights are
// packed in and its products run in: dt, or float32 for bf16 widened (brgemm_bf16_widened).
std::optional<at::ScalarType> packed_dtype(at::ScalarType dt, std::initializer_list<int64_t> sizes,
                                           const SeqLayout& L) {
  if (!brgemm_enabled(dt) || L.T == 0 || L.B == 0) return std::nullopt;
  for (int64_t n : sizes)
    if (n == 0) return std::nullopt;
  if (dt != at::kBFloat16) return dt;
  if (*brgemm_bf16_widened()) return at::kFloat;
  for (int64_t n : sizes)
    if (n % 2 != 0) return std::nullopt;  // VNNI pairs over K
  return dt;
}

// B >= 16: threads own batch rows, no per-step synchronisation; else hidden blocks and a barrier per step, each
// thread's half of W_hh staying in its own L2 (FASTRNN_CPU_BRGEMM_SPLIT=batch|hidden overrides, for tests and
// A/B). Measured on a quiet 2-core Sapphire Rapids (interleaved medians, ratio to torch.nn, inference, x side up
// front, batch -> hidden split): LSTM T=100 B=8 H=512 fp32 0.89x -> 1.04x, bf16 0.68x -> 1.32x; at B=32 and 64
// the two are within noise in fp32. Under heavy load the batch split is the more robust (no barrier).
bool split_by_batch(const SeqLayout& L) {
  const char* split_env = std::getenv("FASTRNN_CPU_BRGEMM_SPLIT");
  if (split_env != nullptr && std::strcmp(split_env, "batch") == 0) return true;
  if (split_env != nullptr && std::strcmp(split_env, "hidden") == 0) return false;
  return L.B >= 16;
}

// Whether the x-projection runs inside each step, its products added onto the step's tile from W_ih packed in
// the same blocks as W_hh, or up front as one large GEMM (at::mm) whose result gx the steps read back
// (FASTRNN_CPU_BRGEMM_FOLD_X=0|1 forces either). Folding streams W_ih through every step; up front writes and
// reads back gx ([N, G*H], 52 MB at T=100 B=64 H=512 fp32, in fresh pages) and runs MKL's sgemm.
// Measured (interleaved medians, ratio to torch.nn, up front -> folded):
// - quiet 2-core AMD EPYC (Zen 4, 1 MB L2 per core, 32 MB L3), LSTM fp32 inference: T=100 B=64 H=512 0.81x ->
//   1.01x, T=100 B=8 H=512 0.82x -> 0.91x, T=1000 B=16 H=64 1.34x -> 1.51x, T=200 B=64 H=128 0.88x -> 1.11x;
//   training and bf16 alike or level; but T=100 B=1 H=512 0.82x -> 0.60x (one row per step: W_ih read for it
//   alone), B=8 bf16 0.93x -> 0.89x, and T=50 B=64 H=1024 0.87x -> 0.81x fp32, 0.91x -> 0.75x bf16 (32 and
//   16 MB of weights per step: more than the L3 holds). Folded there: B >= 8 (fp32) or 16 (bf16) rows and
//   W_ih + W_hh within 8 MB.
// - quiet 2-core Sapphire Rapids (MKL on its AVX-512 code), LSTM inference: T=100 B=64 H=512 fp32 0.99x ->
//   0.88x, bf16 1.18x -> 0.96x; T=50 B=64 H=1024 fp32 0.98x -> 0.83x, bf16 1.40x -> 1.10x: up front on Intel.
bool fold_x_projection(const SeqLayout& L, int64_t I, int64_t H, int64_t P, int64_t G, at::ScalarType dt) {
  const int64_t forced = env_int("FASTRNN_CPU_BRGEMM_FOLD_X", -1);
  if (forced >= 0) return forced != 0;
  if (!cpu_is_amd()) return false;
  const int64_t elem = dt == at::kFloat ? 4 : 2;
  return L.B >= (dt == at::kFloat ? 8 : 16) && (I + P) * G * H * elem <= (int64_t{8} << 20);
}

std::optional<at::Tensor> fp32_or_null(const std::optional<at::Tensor>& b) {
  if (!b.has_value()) return std::nullopt;
  return b->to(at::kFloat).contiguous();
}

// Each sequence's h after its last step (forward: step len_b - 1; reverse: step 0).
at::Tensor final_h(const at::Tensor& output, const SeqLayout& L, bool reverse) {
  const at::Tensor out2d = rows2d(output);
  if (reverse) return out2d.narrow(0, 0, L.B).clone();
  std::vector<int64_t> idx(L.B);
  int64_t t = L.T - 1;
  for (int64_t b = 0; b < L.B; ++b) {  // rows of higher index end earlier (batch sizes never grow)
    while (L.batch_sizes[t] <= b) --t;
    idx[b] = L.offsets[t] + b;
  }
  return out2d.index_select(0, at::tensor(idx, at::TensorOptions().dtype(at::kLong)));
}

void launch(const LstmBrgemmSeq& s, at::ScalarType dt, bool widened) {
  const bool avx512 = active_isa() == Isa::kAvx512;
  // (a GRU with the x-projection folded in keeps its x side in a second tile)
  const int64_t tile = kBrgemmTileRows * s.gates * s.nb * (s.cell == BrgemmCell::kGru && s.w_ih != nullptr ? 2 : 1);
  const int64_t steps = s.w_hr != nullptr ? 2 * s.T : s.T;  // with a projection, two phases per step
  if (dt == at::kFloat)
    run_sequence(s, steps, tile, avx512 ? &isa_avx512::lstm_fwd_brgemm_f32 : &isa_avx2::lstm_fwd_brgemm_f32, false);
  else if (widened)
    run_sequence(s, steps, tile, avx512 ? &isa_avx512::lstm_fwd_brgemm_bf16w : &isa_avx2::lstm_fwd_brgemm_bf16w,
                 false, true);
  else
    run_sequence(s, steps, tile, &isa_avx512::lstm_fwd_brgemm_bf16, true);
}

// One step of at most max_rows rows: a decoding step, or a cell's (FASTRNN_CPU_BRGEMM_ONE_STEP=0 packs it anyway).
bool one_step_small_batch(const SeqLayout& L, int64_t max_rows) {
  return L.T == 1 && L.B <= max_rows && env_int("FASTRNN_CPU_BRGEMM_ONE_STEP", 1) != 0;
}

// Whether a forward is too short to pay for packing its weights: float32 with at most
// FASTRNN_CPU_BRGEMM_SHORT_ROWS rows in all its steps together (default 4; 0 packs always) and fewer than 4
// batch rows (from 4 the per-step path's GEMM packs its weights too, step_gemm.h). Decoding one token at a
// time (T=1, B=1) is the case. Measured (2-core Zen 3, inference, interleaved medians, per-step path /
// brgemm): T=1 B=1 LSTM H=256 0.78 / 1.31 ms (2.57x / 1.53x torch.nn), H=1024 3.08 / 12.74 ms, GRU H=256 0.35 /
// 0.50 ms, H=1024 2.56 / 5.33 ms; T=4 B=1 LSTM H=256 0.65 / 0.71 ms, GRU 0.49 / 0.61 ms; T=2 B=2 LSTM 0.61 /
// 0.79 ms; T=1 B=3 GRU 0.46 / 0.60 ms; but 8 rows go to brgemm: T=4 B=2 LSTM 0.84 / 0.68 ms, T=8 B=1 LSTM
// H=1024 17.1 / 12.4 ms, and T=1 B=8 LSTM H=256 0.60 / 0.47 ms. bfloat16 alike: brgemm packs (on AVX2 widened
// to fp32) both weights every call. Measured (2-core Zen 3, T=1 B=1 inference vs torch.nn, per-step path /
// brgemm): GRU H=1024 0.95x / 0.19x, LSTM H=1024 0.85x / 0.07x, GRU H=256 0.92x / 0.51x, LSTM T=4 H=256 1.15x /
// 0.83x. (The per-step products run on step_gemm.h's in-place GEMV; at::mm's bf16 GEMV measured the same there.)
//
// A call of one step with a small batch (T=1, B <= kWtGemvMaxRows: a decoder's cell, fed a batch) is too short
// as well: packing reads and writes both weights to read them once more, where the per-step path's GEMMs read
// them in place (mm_wt_into, step_gemm.h). FASTRNN_CPU_BRGEMM_ONE_STEP=0 packs them (A/B).
bool too_short_to_pack(at::ScalarType dt, const SeqLayout& L) {
  if (dt != at::kFloat && dt != at::kBFloat16) return false;
  if (one_step_small_batch(L, kWtGemvMaxRows)) return true;
  return L.B < 4 && L.N <= env_int("FASTRNN_CPU_BRGEMM_SHORT_ROWS", 4);
}

// The backward of a float32 call of one step with a small batch (a cell's training step) is too short as well:
// its per-step path multiplies dG by W_hh in place (StepGemm with steps = 1, small_mm_into), where packing W_hh^T
// read and wrote all of it to read it once more. Measured (2-core Zen 3, the backward op alone, T=1, interleaved
// medians, per-step / brgemm, both with small_mm_into's whole-sequence products): Elman RNN B=8 H=256 187 / 229 us,
// GRU B=8 H=256 261 / 335 us, B=8 H=512 1.79 / 2.15 ms, LSTM B=8 H=256 388 / 412 us, B=4 H=1024 17.0 / 18.8 ms;
// LSTM B=1 H=64 72 / 69 us (level). FASTRNN_CPU_BRGEMM_ONE_STEP=0 packs (A/B).
bool one_step_too_short_to_pack(at::ScalarType dt, const SeqLayout& L) {
  return dt == at::kFloat && one_step_small_batch(L, kSmallMmMaxRows);
}

// The up-front x-projection gx = x @ W_ih^T in the input's dtype, multiplied in wdt (packed_dtype): widened bf16
// multiplies in fp32 and rounds once, as a native bf16 GEMM with fp32 accumulation does. (.to(x's dtype): also
// whatever an enclosing autocast made at::mm return, the step reads gx as the input's dtype)
at::Tensor upfront_x_projection(const at::Tensor& x, const at::Tensor& w_ih, at::ScalarType wdt) {
  if (wdt == x.scalar_type()) {  // into a fresh buffer on huge pages (huge_pages.h); mm_out keeps the dtype
    at::Tensor gx = empty_on_huge_pages({x.size(0), w_ih.size(0)}, x.options());
    at::mm_out(gx, x, w_ih.t());
    return gx;
  }
  return at::mm(x.to(wdt), w_ih.to(wdt).t()).to(x.scalar_type()).contiguous();
}

}  // namespace

std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>> lstm_forward_brgemm(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
    const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr, bool reverse, bool train) {
  const auto dt = input.scalar_type();
  const int64_t H = w_ih.size(0) / 4, I = w_ih.size(1), P = w_hh.size(1);  // P: proj_size, or H
  const SeqLayout L = make_layout(input, batch_sizes);
  const std::optional<at::ScalarType> wdt = packed_dtype(dt, {I, H, P}, L);
  if (!wdt || too_short_to_pack(dt, L)) return std::nullopt;

  const int64_t nb = std::min(forward_block_units(P, 4, c10::elementSize(*wdt)), H);
  const bool fold_x = fold_x_projection(L, I, H, P, 4, *wdt);
  const at::Tensor x = rows2d(input.contiguous());
  const at::Tensor hxc = hx.contiguous();
  int64_t k_hh = 0, k_ih = 0;
  const at::Tensor whh_p = pack_gate_blocks(w_hh.to(*wdt), 4, nb, &k_hh);
  const at::Tensor wih_p = fold_x ? pack_gate_blocks(w_ih.to(*wdt), 4, nb, &k_ih) : at::Tensor();
  const at::Tensor gx = fold_x ? at::Tensor() : upfront_x_projection(x, w_ih, *wdt);
  at::Tensor bias;
  if (b_ih.has_value()) bias = (b_ih->to(at::kFloat) + b_hh->to(at::kFloat)).contiguous();

  // The projection's weight in blocks of nb output columns (K = H), and the step's r rows.
  int64_t k_hr = 0;
  const at::Tensor whr_p = w_hr.has_value() ? pack_gate_blocks(w_hr->to(*wdt), 1, nb, &k_hr) : at::Tensor();
  const at::Tensor r_buf = w_hr.has_value() ? at::empty({L.B, H}, input.options()) : at::Tensor();

  auto out_sizes = input.sizes().vec();
  out_sizes.back() = P;
  at::Tensor output = at::empty(out_sizes, input.options());
  at::Tensor c_state = cx.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true).contiguous();
  at::Tensor ws = empty_on_huge_pages({train ? L.N : 0, train ? 5 * H : 0}, input.options().dtype(at::kFloat));

  LstmBrgemmSeq s{BrgemmCell::kLstm, 4, false, L.T, L.B, I, H, L.batch_sizes.data(), L.offsets.data(),
                  reverse, x.data_ptr(), hxc.data_ptr(), whh_p.data_ptr(),
                  fold_x ? wih_p.data_ptr() : nullptr, fold_x ? nullptr : gx.data_ptr(),
                  bias.defined() ? bias.data_ptr<float>() : nullptr, nullptr, nb, k_hh, k_ih,
                  c_state.data_ptr<float>(), output.data_ptr(), train ? ws.data_ptr<float>() : nullptr,
                  split_by_batch(L)};
  s.P = P;
  if (w_hr.has_value()) {
    s.w_hr = whr_p.data_ptr();
    s.r_buf = r_buf.data_ptr();
  }
  launch(s, dt, *wdt != dt);
  return std::make_tuple(output, final_h(output, L, reverse), c_state.to(dt), ws);
}

// GRU and RNN: as the LSTM; the GRU's folded x side goes to a second tile (its reset gate multiplies the h side
// of n alone, so the two sides stay apart up to the gate math).
static std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor>> gru_rnn_forward_brgemm(
    BrgemmCell cell, int64_t G, const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
    const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, bool relu, bool reverse, bool train) {
  const auto dt = input.scalar_type();
  const int64_t H = w_hh.size(1), I = w_ih.size(1);
  const SeqLayout L = make_layout(input, batch_sizes);
  const std::optional<at::ScalarType> wdt = packed_dtype(dt, {I, H}, L);
  if (!wdt || too_short_to_pack(dt, L)) return std::nullopt;
  const int64_t nb = std::min(forward_block_units(H, G, c10::elementSize(*wdt)), H);
  const at::Tensor x = rows2d(input.contiguous());
  const at::Tensor hxc = hx.contiguous();
  const bool fold_x = fold_x_projection(L, I, H, H, G, *wdt);
  int64_t k_hh = 0, k_ih = 0;
  const at::Tensor whh_p = pack_gate_blocks(w_hh.to(*wdt), G, nb, &k_hh);
  const at::Tensor wih_p = fold_x ? pack_gate_blocks(w_ih.to(*wdt), G, nb, &k_ih) : at::Tensor();
  const at::Tensor gx = fold_x ? at::Tensor() : upfront_x_projection(x, w_ih, *wdt);
  const std::optional<at::Tensor> bx = fp32_or_null(b_ih), bh = fp32_or_null(b_hh);

  auto out_sizes = input.sizes().vec();
  out_sizes.back() = H;
  at::Tensor output = at::empty(out_sizes, input.options());
  const bool keep_ws = train && cell == BrgemmCell::kGru;
  at::Tensor ws = empty_on_huge_pages({keep_ws ? L.N : 0, keep_ws ? 4 * H : 0}, input.options().dtype(at::kFloat));
  LstmBrgemmSeq s{cell, G, relu, L.T, L.B, I, H, L.batch_sizes.data(), L.offsets.data(), reverse,
                  x.data_ptr(), hxc.data_ptr(), whh_p.data_ptr(), fold_x ? wih_p.data_ptr() : nullptr,
                  fold_x ? nullptr : gx.data_ptr(), bx ? bx->data_ptr<float>() : nullptr,
                  bh ? bh->data_ptr<float>() : nullptr, nb, k_hh, k_ih,
                  nullptr, output.data_ptr(), keep_ws ? ws.data_ptr<float>() : nullptr, split_by_batch(L)};
  s.P = H;
  launch(s, dt, *wdt != dt);
  return std::make_tuple(output, final_h(output, L, reverse), ws);
}

std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor>> gru_forward_brgemm(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, bool reverse, bool train) {
  return gru_rnn_forward_brgemm(BrgemmCell::kGru, 3, input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, false,
                                reverse, train);
}

std::optional<std::tuple<at::Tensor, at::Tensor>> rnn_forward_brgemm(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, bool relu, bool reverse) {
  auto r = gru_rnn_forward_brgemm(BrgemmCell::kRnn, 1, input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu,
                                  reverse, false);
  if (!r) return std::nullopt;
  return std::make_tuple(std::get<0>(*r), std::get<1>(*r));
}

bool backward_recurrence_brgemm(const BrgemmBwdTensors& a) {
  const auto dt = a.input.scalar_type();
  const int64_t G = a.cell == BrgemmCell::kLstm ? 4 : a.cell == BrgemmCell::kGru ? 3 : 1;
  const int64_t H = a.w_hh.size(0) / G, P = a.w_hh.size(1);  // P: proj_size, or H
  const bool proj = a.w_hr.defined();
  const SeqLayout L = make_layout(a.input, a.batch_sizes);
  // (native bf16: VNNI pairs over K = G*H, for the GRU H, with a projection P)
  const std::optional<at::ScalarType> wdt = packed_dtype(dt, {H, P}, L);
  if (!wdt || one_step_too_short_to_pack(dt, L)) return false;
  const bool widened = *wdt != dt;

  const int64_t nb = std::min(block_units(), H);
  int64_t k_w = 0;
  const at::Tensor wt_p = pack_gate_blocks(a.w_hh.to(*wdt).t(), 1, nb, &k_w);  // W_hh^T: K = G*H
  int64_t k_hr = 0;  // W_hr^T [H, P] in blocks of the H units: K = P
  const at::Tensor whr_p = proj ? pack_gate_blocks(a.w_hr.to(*wdt).t(), 1, nb, &k_hr) : at::Tensor();
  const StepRows go(a.grad_output, a.batch_sizes.has_value());
  std::vector<const void*> go_step(L.T);
  for (int64_t t = 0; t < L.T; ++t) go_step[t] = go.ptr(L, t);
  const at::Tensor cx = a.cell == BrgemmCell::kLstm ? a.cx.to(at::kFloat).contiguous() : at::Tensor();
  BrgemmBwdSeq s{a.cell, G, a.relu, L.T, L.B, H, L.batch_sizes.data(), L.offsets.data(), a.reverse,
                       wt_p.data_ptr(), nb, k_w,
                       a.cell != BrgemmCell::kRnn ? a.ws.data_ptr<float>() : nullptr,
                       cx.defined() ? cx.data_ptr<float>() : nullptr,
                       a.cell == BrgemmCell::kGru ? a.hx.data_ptr() : nullptr, a.out.data_ptr(), go_step.data(),
                       go.ld, a.dh_state.data_ptr(),
                       a.cell == BrgemmCell::kLstm ? a.dc_state.data_ptr<float>() : nullptr, a.dg.data_ptr(),
                       a.cell == BrgemmCell::kGru ? a.dph_n.data_ptr() : nullptr, split_by_batch(L)};
  s.P = P;
  if (proj) {
    s.w_hr = whr_p.data_ptr();
    s.dh_all = a.dh_all.data_ptr();
    s.r_all = a.r_all.data_ptr();
  }
  const int64_t tile = kBrgemmTileRows * nb;
  const int64_t steps = proj ? 2 * (L.T + 1) : L.T + 1;  // with a projection, two phases per step
  if (dt == at::kFloat)
    run_sequence(s, steps, tile,
                 active_isa() == Isa::kAvx512 ? &isa_avx512::bwd_brgemm_f32 : &isa_avx2::bwd_brgemm_f32, false);
  else if (widened)
    run_sequence(s, steps, tile,
                 active_isa() == Isa::kAvx512 ? &isa_avx512::bwd_brgemm_bf16w : &isa_avx2::bwd_brgemm_bf16w, false,
                 true);
  else
    run_sequence(s, steps, tile, &isa_avx512::bwd_brgemm_bf16, true);
  return true;
}

}  // namespace fastrnn::cpu
