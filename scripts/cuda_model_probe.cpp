// cuda_model_probe.cpp -- the launch configuration of every fastrnn CUDA kernel, straight from the kernels' own
// traits (csrc/cuda/*_kernel.cuh) and planner (persistent_plan.h), for scripts/cuda_model.py. Compiled as host C++
// under the CUDA emulation (tests/cuda_emu/build.py compile_driver: -DFASTRNN_CUDA_EMU -Icsrc -Itests/cuda_emu),
// so the performance model never carries its own copy of a tile size, a thread count or a shared-memory formula.
//
// Reads queries from stdin, one per line, and answers each with one JSON object on stdout:
//   traits <dtype> <cell>                       the compile-time constants of the three kernels' traits
//   step <dtype> <cell> <H> <K> <bs>            grid and dynamic shared memory of the forward and backward step kernels
//   psmem <dtype> <cell> <units> <K>            the persistent forward kernel's dynamic shared memory, grid (H = K)
//                                               and batch rows per chunk
//   pmma <dtype> <cell> <units> <K>             the same for the tensor-core persistent kernel (FwdPersistentMmaTraits),
//                                               with its tiling; {"missing": true} when the headers have no such kernel
//   pbwd <dtype> <cell> <units> <H>             the persistent backward kernel (BwdPersistentTraits): dynamic shared
//                                               memory, grid, threads, rows per chunk and per thread, K tile
//   pbwdmma <dtype> <cell> <units> <H>          the tensor-core persistent backward (BwdPersistentMmaTraits; not
//                                               float64):
//                                               smem, grid, threads, chunk_cols, n_tiles (units), k_steps (K = G*H),
//                                               min_units (the planner's least units per block)
//   bmmachunk <dtype> <rows>                    its tiling of a chunk of 1..64 rows: m_tiles, staged rows, K pass
//   mmatile <dtype> <rows>                      the tensor-core kernels' K pass (elements) for a chunk of 1..64 rows
//   pbwdtile <dtype> <cell> <units> <rows>      its chunk_plan for a chunk of `rows` rows (split-K, slots, K tile)
//   plan <H> <num_sms> <bpsm_1> <bpsm_2> <bpsm_4> <bpsm_8> <bpsm_16> <bpsm_32> [<min_units> [<directions>]]
//                                               choose_units given the blocks per SM of each power-of-two unit count
//                                               (directions 2: both directions of a layer in one launch)
// <dtype>: float32 | float64 | float16 | bfloat16; <cell>: lstm | gru | rnn.
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>

#include "cuda/bwd_persistent_kernel.cuh"
#include "cuda/bwd_step_kernel.cuh"
#include "cuda/fwd_persistent_kernel.cuh"
#include "cuda/fwd_step_kernel.cuh"
#include "cuda/persistent_plan.h"

// Fallback found by unqualified lookup from fastrnn::cuda::model_probe only when fastrnn::cuda has no
// FwdPersistentMmaTraitsFor (headers from before the tensor-core kernels): the probe builds either way.
template <class S, fastrnn::cuda::Cell C>
struct FwdPersistentMmaTraitsFor {
  static constexpr bool kProbeMissing = true;
};

namespace fastrnn::cuda::model_probe {

template <class S, Cell C>
void pmma(int units, int64_t K, int64_t H) {
  using P = FwdPersistentMmaTraitsFor<S, C>;  // fastrnn::cuda's, or the fallback above
  if constexpr (requires { P::kProbeMissing; }) {
    std::printf("{\"missing\": true}\n");
  } else {
    std::printf(
        "{\"smem\": %lld, \"grid\": %lld, \"threads\": %d, \"warps\": %d, \"chunk_cols\": %d, \"m_tiles\": %d,"
        " \"k_steps\": %lld, \"tile_k\": %d, \"k\": %d, \"elem_bytes\": %d}\n",
        static_cast<long long>(P::smem_bytes(units, K)), static_cast<long long>(P::grid(H, units)), P::kThreads,
        P::kWarps, P::chunk_cols(units), P::m_tiles(units), static_cast<long long>(P::k_steps(K)), P::kTileK, P::kK,
        P::kElemBytes);
  }
}

}  // namespace fastrnn::cuda::model_probe

namespace {

using fastrnn::cuda::BwdTraitsFor;
using fastrnn::cuda::Cell;
using fastrnn::cuda::FwdPersistentTraitsFor;
using fastrnn::cuda::FwdTraitsFor;
using std::int64_t;

template <class S, Cell C>
void traits() {
  using F = FwdTraitsFor<S, C>;
  using B = BwdTraitsFor<S, C>;
  using P = FwdPersistentTraitsFor<S, C>;
  std::printf(
      "{\"gates\": %d, \"acc_bytes\": %d, \"storage_bytes\": %d,"
      " \"step_fwd\": {\"threads\": %d, \"units\": %d, \"batch_rows\": %d, \"rows_per_thread\": %d, \"tile_k\": %d},"
      " \"step_bwd\": {\"threads\": %d, \"units\": %d, \"batch_rows\": %d, \"rows_per_thread\": %d, \"tile_k\": %d},"
      " \"persistent_fwd\": {\"threads\": %d, \"rows_per_thread\": %d, \"tile_k\": %d, \"max_units\": %d}}\n",
      F::kGates, static_cast<int>(sizeof(fastrnn::cuda::acc_t<S>)), static_cast<int>(sizeof(S)), F::kThreads,
      F::kUnits, F::kBatchRows, F::kRowsPerThread, F::kTileK, B::kThreads, B::kUnits, B::kBatchRows,
      B::kRowsPerThread, B::kTileK, P::kThreads, P::kRowsPerThread, P::kTileK, P::kMaxUnits);
}

template <class S, Cell C>
void step(int64_t H, int64_t K, int64_t bs) {
  using F = FwdTraitsFor<S, C>;
  using B = BwdTraitsFor<S, C>;
  std::printf(
      "{\"step_fwd\": {\"grid_x\": %lld, \"grid_y\": %lld, \"smem\": %lld},"
      " \"step_bwd\": {\"grid_x\": %lld, \"grid_y\": %lld, \"smem\": %lld}}\n",
      static_cast<long long>(F::grid_x(H)), static_cast<long long>(F::grid_y(bs)),
      static_cast<long long>(F::smem_bytes()), static_cast<long long>(B::grid_x(H)),
      static_cast<long long>(B::grid_y(bs)), static_cast<long long>(B::smem_bytes()));
  (void)K;
}

template <class S, Cell C>
void psmem(int units, int64_t K, int64_t H) {
  using P = FwdPersistentTraitsFor<S, C>;
  std::printf("{\"smem\": %lld, \"grid\": %lld, \"chunk_rows\": %d}\n", static_cast<long long>(P::smem_bytes(units, K)),
              static_cast<long long>(P::grid(H, units)), P::chunk_rows(units));
}

template <class S, Cell C>
void pbwd(int units, int64_t H) {
  using P = fastrnn::cuda::BwdPersistentTraitsFor<S, C>;
  std::printf(
      "{\"smem\": %lld, \"grid\": %lld, \"threads\": %d, \"chunk_rows\": %d, \"rows_per_thread\": %d,"
      " \"tile_k\": %d}\n",
      static_cast<long long>(P::smem_bytes(units, H)), static_cast<long long>(P::grid(H, units)), P::kThreads,
      P::chunk_rows(units), P::kRowsPerThread, P::kTileK);
}

template <class S, Cell C>
void pbwdmma(int units, int64_t H) {
  using P = fastrnn::cuda::BwdPersistentMmaTraitsFor<S, C>;
  std::printf(
      "{\"smem\": %lld, \"grid\": %lld, \"threads\": %d, \"warps\": %d, \"chunk_cols\": %d, \"n_tiles\": %d,"
      " \"k_steps\": %lld, \"k\": %d, \"elem_bytes\": %d, \"min_units\": %d}\n",
      static_cast<long long>(P::smem_bytes(units, H)), static_cast<long long>(P::grid(H, units)), P::kThreads,
      P::kWarps, P::chunk_cols(units), P::n_tiles(units), static_cast<long long>(P::k_steps(P::kGates * H)), P::kK,
      P::kElemBytes, P::kMinUnits);
}

// The tensor-core backward's tiling of a chunk of `rows` rows: m-tiles, the rows it stages, its K pass (elements).
template <class S>
void bmmachunk(int rows) {
  using P = fastrnn::cuda::BwdPersistentMmaTraits<1, S>;
  const int staged = P::staged_rows(rows);
  std::printf("{\"m_tiles\": %d, \"staged\": %d, \"tile_k\": %d}\n", P::m_tiles(rows), staged,
              P::Staging::tile_words(staged) * 4 / P::kElemBytes);
}

// The tensor-core kernels' K pass for a chunk of `rows` rows (MmaStaging::tile_words; rows padded to 8).
template <class S>
void mmatile(int rows) {
  using P = fastrnn::cuda::MmaStaging<S>;
  const int padded = (rows + 7) / 8 * 8;
  std::printf("{\"tile_k\": %d, \"stride_words\": %d}\n", P::tile_words(padded) * 4 / P::kElemBytes,
              P::h_stride_words(padded));
}

template <class S, Cell C>
void pbwdtile(int units, int rows) {
  using P = fastrnn::cuda::BwdPersistentTraitsFor<S, C>;
  const typename P::ChunkPlan c = P::chunk_plan(rows, units);
  std::printf("{\"ks\": %d, \"rg\": %d, \"slots\": %d, \"tile_k\": %d, \"stride\": %d}\n", c.ks, c.rg, c.slots,
              c.tk, c.ds);
}

template <class S, class F>
bool with_cell(const std::string& cell, F&& f) {
  if (cell == "lstm") f.template operator()<S, Cell::kLstm>();
  else if (cell == "gru") f.template operator()<S, Cell::kGru>();
  else if (cell == "rnn") f.template operator()<S, Cell::kRnn>();
  else return false;
  return true;
}

template <class F>
bool dispatch(const std::string& dtype, const std::string& cell, F&& f) {
  if (dtype == "float32") return with_cell<float>(cell, f);
  if (dtype == "float64") return with_cell<double>(cell, f);
  if (dtype == "float16") return with_cell<__half>(cell, f);
  if (dtype == "bfloat16") return with_cell<__nv_bfloat16>(cell, f);
  return false;
}

}  // namespace

int main() {
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string q, dtype, cell;
    if (!(in >> q)) continue;
    bool ok = true;
    if (q == "traits") {
      in >> dtype >> cell;
      ok = dispatch(dtype, cell, []<class S, Cell C>() { traits<S, C>(); });
    } else if (q == "step") {
      int64_t H = 0, K = 0, bs = 0;
      in >> dtype >> cell >> H >> K >> bs;
      ok = bool(in) && dispatch(dtype, cell, [&]<class S, Cell C>() { step<S, C>(H, K, bs); });
    } else if (q == "psmem") {
      int units = 0;
      int64_t K = 0;
      in >> dtype >> cell >> units >> K;
      ok = bool(in) && dispatch(dtype, cell, [&]<class S, Cell C>() { psmem<S, C>(units, K, K); });
    } else if (q == "pmma") {
      int units = 0;
      int64_t K = 0;
      in >> dtype >> cell >> units >> K;
      ok = bool(in) &&
           dispatch(dtype, cell, [&]<class S, Cell C>() { fastrnn::cuda::model_probe::pmma<S, C>(units, K, K); });
    } else if (q == "pbwd") {
      int units = 0;
      int64_t H = 0;
      in >> dtype >> cell >> units >> H;
      ok = bool(in) && dispatch(dtype, cell, [&]<class S, Cell C>() { pbwd<S, C>(units, H); });
    } else if (q == "pbwdmma") {
      int units = 0;
      int64_t H = 0;
      in >> dtype >> cell >> units >> H;
      ok = bool(in) && dtype != "float64" &&
           dispatch(dtype, cell, [&]<class S, Cell C>() { pbwdmma<S, C>(units, H); });
    } else if (q == "bmmachunk") {
      int rows = 0;
      in >> dtype >> rows;
      ok = bool(in) && rows >= 1 && rows <= 64 && dtype != "float64" &&
           dispatch(dtype, "rnn", [&]<class S, Cell>() { bmmachunk<S>(rows); });
    } else if (q == "mmatile") {
      int rows = 0;
      in >> dtype >> rows;
      ok = bool(in) && rows >= 1 && rows <= 64 && dtype != "float64" &&
           dispatch(dtype, "rnn", [&]<class S, Cell>() { mmatile<S>(rows); });
    } else if (q == "pbwdtile") {
      int units = 0, rows = 0;
      in >> dtype >> cell >> units >> rows;
      ok = bool(in) && dispatch(dtype, cell, [&]<class S, Cell C>() { pbwdtile<S, C>(units, rows); });
    } else if (q == "plan") {
      int64_t H = 0, sms = 0;
      int bpsm[6] = {};
      in >> H >> sms;
      for (int& b : bpsm) in >> b;
      ok = bool(in);
      int min_units = 1, directions = 1;  // optional
      if (!(in >> min_units)) min_units = 1;
      else if (!(in >> directions)) directions = 1;
      if (ok) {
        const int units = fastrnn::cuda::choose_units(
            H, sms,
            [&](int u) {
              int i = 0;
              while ((1 << i) < u) ++i;
              return bpsm[i];
            },
            min_units, directions);
        std::printf("{\"units\": %d}\n", units);
      }
    } else {
      ok = false;
    }
    if (!ok) {
      std::printf("{\"error\": \"bad query: %s\"}\n", line.c_str());
    }
    std::fflush(stdout);
  }
  return 0;
}
