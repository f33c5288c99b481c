// Host-side planning of the persistent forward kernel (fwd_persistent_kernel.cuh), shared by the real launcher
// (persistent_launcher.cuh), the ATen drivers and the CUDA-emulation tests: the per-step table the kernel walks,
// and the choice of hidden units per block. Plain C++ (no CUDA runtime, no ATen).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "params.h"

namespace fastrnn::cuda {

// The steps of one direction in processing order (forward: t = 0..T-1; reverse: t = T-1..0). Step t continues
// the previously processed step for its first min(bs_t, bs_prev) rows (forward: the step before, which has at
// least as many rows; reverse: the step after, whose rows are the sequences still running); its other rows start
// from h_init. This is SeqLayout::rows_with_prev / prev_step (csrc/sequence.h), tabulated.
inline std::vector<FwdSeqStep> fwd_seq_steps(const std::vector<int64_t>& batch_sizes, bool reverse) {
  const int64_t T = static_cast<int64_t>(batch_sizes.size());
  std::vector<int64_t> offsets(static_cast<size_t>(T) + 1, 0);
  for (int64_t t = 0; t < T; ++t) offsets[t + 1] = offsets[t] + batch_sizes[t];
  std::vector<FwdSeqStep> steps(static_cast<size_t>(T));
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s;
    const int64_t prev = reverse ? (t + 1 < T ? t + 1 : -1) : t - 1;
    FwdSeqStep& st = steps[s];
    st.off = offsets[t];
    st.bs = batch_sizes[t];
    st.off_prev = prev >= 0 ? offsets[prev] : 0;
    st.n_prev = prev >= 0 ? std::min(batch_sizes[t], batch_sizes[prev]) : 0;
  }
  return steps;
}

// The persistent backward's table (params.h BwdSeqStep): the backward of a layer of direction `reverse` processes
// the steps in the forward's opposite order, so its `next` is fwd_seq_steps(!reverse)'s prev and its `prev`
// fwd_seq_steps(reverse)'s. go_stride: the elements between the first grad_output rows of consecutive packed rows
// (packed) or timesteps (dense).
inline std::vector<BwdSeqStep> bwd_seq_steps(const std::vector<int64_t>& batch_sizes, bool reverse, bool packed,
                                             int64_t go_stride) {
  const int64_t T = static_cast<int64_t>(batch_sizes.size());
  const std::vector<FwdSeqStep> order = fwd_seq_steps(batch_sizes, !reverse);  // processing order of the backward
  const std::vector<FwdSeqStep> fwd = fwd_seq_steps(batch_sizes, reverse);     // fwd[s']: step t's forward neighbour
  std::vector<BwdSeqStep> steps(static_cast<size_t>(T) + 1);
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? s : T - 1 - s;  // the backward of a forward layer starts at t = T - 1
    const FwdSeqStep& o = order[s];
    const FwdSeqStep& f = fwd[reverse ? T - 1 - t : t];
    BwdSeqStep& st = steps[s];
    st.off = o.off;
    st.bs = o.bs;
    st.off_next = o.off_prev;
    st.bs_next = s > 0 ? order[s - 1].bs : 0;
    st.n_next = o.n_prev;
    st.off_prev = f.off_prev;
    st.n_prev = f.n_prev;
    st.go_off = (packed ? o.off : t) * go_stride;
  }
  if (T > 0) {
    steps[T].off_next = order[T - 1].off;
    steps[T].bs_next = order[T - 1].bs;
  }
  return steps;
}

// Hidden units per block. The grid must be co-resident (a cooperative launch), and the weights are spread over as
// many SMs as possible, one block per SM: the smallest power of two u <= 32 with ceil(H / u) <= num_sms whose
// block fits (blocks_per_sm(u) >= 1); failing that, the smallest u whose grid fits several blocks per SM
// (ceil(H / u) <= num_sms * blocks_per_sm(u)). 0 when no u fits: the caller runs the step kernels.
// blocks_per_sm(u): the occupancy of the kernel with u units per block (0 when its shared memory does not fit).
// Not tuned on hardware (no GPU has run it yet): see csrc/cuda/README.md.
// min_units: the smallest unit count the kernel is planned with (a power of two; the tensor-core backward's is 8, a
// full n-tile). directions: 2 plans both directions of a bidirectional layer in one launch (params.h FwdSeqLaunch):
// twice ceil(H / u) blocks must be co-resident.
template <class BlocksPerSm>
int choose_units(int64_t H, int64_t num_sms, BlocksPerSm&& blocks_per_sm, int min_units = 1, int directions = 1) {
  if (H <= 0 || num_sms <= 0 || directions < 1) return 0;
  for (int u = min_units; u <= 32; u *= 2)
    if (directions * ((H + u - 1) / u) <= num_sms && blocks_per_sm(u) >= 1) return u;
  for (int u = min_units; u <= 32; u *= 2)
    if (directions * ((H + u - 1) / u) <= num_sms * static_cast<int64_t>(blocks_per_sm(u))) return u;
  return 0;
}

// The persistent backward's kernel: the tensor-core kernel where the caller allows it (bf16/fp16 always, float32 with
// TF32 allowed) and choose_units finds it a grid, else the FMA kernel (the tensor-core kernel holds W_hh's columns
// padded to n-tiles of 8 units: in TF32 at 4 units per block twice the FMA kernel's slice, so a TF32 LSTM at
// H = 2048 on a device of 512 SMs would take the FMA kernel). units 0: neither fits (the step kernels).
// mma_blocks_per_sm / fma_blocks_per_sm: as choose_units'.
struct BwdKernelChoice {
  int units = 0;
  bool mma = false;
};
// The tensor-core kernel is planned with at least mma_min_units units per block (BwdPersistentMmaTraits::kMinUnits:
// its B operand's n-tile of 8 units filled, where fewer units per block pad the product and multiply the blocks that
// each read all of dG_next from L2; the model, csrc/cuda/README.md, has 8 units at least as fast at every shape).
template <class MmaBlocksPerSm, class FmaBlocksPerSm>
BwdKernelChoice choose_bwd_kernel(int64_t H, int64_t num_sms, bool mma_allowed, int mma_min_units,
                                  MmaBlocksPerSm&& mma_blocks_per_sm, FmaBlocksPerSm&& fma_blocks_per_sm,
                                  int directions = 1) {
  if (mma_allowed) {
    const int u = choose_units(H, num_sms, mma_blocks_per_sm, mma_min_units, directions);
    if (u > 0) return BwdKernelChoice{u, true};
  }
  return BwdKernelChoice{choose_units(H, num_sms, fma_blocks_per_sm, 1, directions), false};
}

}  // namespace fastrnn::cuda
