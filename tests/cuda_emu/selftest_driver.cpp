// Driver for the harness self-tests: `selftest_driver CASE IN OUT` (see emu_io.h). Built and run by
// tests/test_cuda_emu_harness.py through tests/cuda_emu/build.py.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "cuda_emu.h"
#include "emu_io.h"
#include "selftest_kernels.cuh"
#include "selftest_v2_kernels.cuh"

using emu_io::Arrays;
using emu_io::DType;

namespace {

template <class F>
void by_dtype(DType d, F f) {
  if (d == DType::F32) f(float{});
  else if (d == DType::F64) f(double{});
  else throw std::runtime_error("float32 or float64 expected");
}

constexpr int kBlock = 128;

void block_reduce(const Arrays& in, Arrays& out) {
  by_dtype(in.dtype("x"), [&](auto tag) {
    using T = decltype(tag);
    const auto x = in.get<T>("x");
    const int blocks = in.scalar<int>("blocks");
    std::vector<T> partial(blocks);
    std::vector<int> positives(blocks);
    ::cuda_emu::launch(dim3(blocks), dim3(kBlock), 0, selftest::block_reduce_kernel<T, kBlock>, x.data(),
                       static_cast<std::int64_t>(x.size()), partial.data(), positives.data());
    out.put("partial", partial);
    out.put("positives", positives);
    std::vector<T> bsum((x.size() + kBlock - 1) / kBlock);
    ::cuda_emu::launch(dim3(static_cast<unsigned>(bsum.size())), dim3(kBlock), 0, selftest::block_sum_shfl_kernel<T>,
                       x.data(), static_cast<std::int64_t>(x.size()), bsum.data());
    out.put("block_sums", bsum);
  });
}

void sync_votes(const Arrays& in, Arrays& out) {
  const auto pred = in.get<std::int32_t>("pred");
  const int block = in.scalar<int>("block");
  const int blocks = static_cast<int>(pred.size()) / block;
  std::vector<int> o(3 * blocks);
  ::cuda_emu::launch(dim3(blocks), dim3(block), 0, selftest::sync_votes_kernel, pred.data(), o.data());
  out.put("votes", o, {blocks, 3});
}

void warp_ops(const Arrays& in, Arrays& out) {
  by_dtype(in.dtype("x"), [&](auto tag) {
    using T = decltype(tag);
    const auto x = in.get<T>("x");
    const int block = in.scalar<int>("block");
    const int n = static_cast<int>(x.size());
    if (n % block || block % 32) throw std::runtime_error("size must be a multiple of block, block of 32");
    const int warps = n / 32;
    std::vector<T> down(warps), xsum(n), scan(n), bcast(n), seg(n);
    std::vector<std::int64_t> ballot(warps);
    std::vector<int> anyall(2 * warps), iscan(n);
    ::cuda_emu::launch(dim3(n / block), dim3(block), 0, selftest::warp_ops_kernel<T>, x.data(), down.data(),
                       xsum.data(), scan.data(), bcast.data(), seg.data(), ballot.data(), anyall.data(), iscan.data());
    out.put("down", down);
    out.put("xsum", xsum);
    out.put("scan", scan);
    out.put("bcast", bcast);
    out.put("seg", seg);
    out.put("ballot", ballot);
    out.put("anyall", anyall, {warps, 2});
    out.put("iscan", iscan);
  });
}

void dyn_smem(const Arrays& in, Arrays& out) {
  by_dtype(in.dtype("x"), [&](auto tag) {
    using T = decltype(tag);
    const auto x = in.get<T>("x");
    const T scale = in.scalar<T>("scale");
    const int block = in.scalar<int>("block");
    const int blocks = static_cast<int>(x.size()) / block;
    std::vector<T> y(x.size());
    std::vector<int> counts(blocks);
    ::cuda_emu::launch(dim3(blocks), dim3(block), block * sizeof(T) + sizeof(int), selftest::tile_reverse_kernel<T>,
                       x.data(), scale, y.data(), counts.data());
    out.put("y", y, in.shape("x"));
    out.put("counts", counts);
    std::vector<T> probe(2 * 64);
    ::cuda_emu::launch(dim3(2), dim3(64), 64 * sizeof(T), selftest::smem_poison_probe_kernel<T>, probe.data());
    out.put("probe", probe);
  });
}

void indexing(const Arrays& in, Arrays& out) {
  const auto g = in.get<std::int64_t>("grid");
  const auto b = in.get<std::int64_t>("block");
  const dim3 grid(g[0], g[1], g[2]), block(b[0], b[1], b[2]);
  const std::int64_t total = g[0] * g[1] * g[2] * b[0] * b[1] * b[2];
  std::vector<int> o(6 * total, -1);
  ::cuda_emu::launch(grid, block, 0, selftest::indexing_kernel, o.data());
  out.put("coords", o, {total, 6});
}

void atomics(const Arrays& in, Arrays& out) {
  by_dtype(in.dtype("x"), [&](auto tag) {
    using T = decltype(tag);
    const auto x = in.get<T>("x");
    const int bins = in.scalar<int>("bins");
    const int n = static_cast<int>(x.size());
    std::vector<int> hist(bins, 0), maxbin(1, -1);
    std::vector<T> total(1, T(0));
    ::cuda_emu::launch(dim3((n + 63) / 64), dim3(64), 0, selftest::atomics_kernel<T>, x.data(), n, bins, hist.data(),
                       total.data(), maxbin.data());
    out.put("hist", hist);
    out.put("total", total);
    out.put("maxbin", maxbin);
  });
}

void lstm_pointwise(const Arrays& in, Arrays& out) {
  by_dtype(in.dtype("gates"), [&](auto tag) {
    using T = decltype(tag);
    const auto gates = in.get<T>("gates");
    const auto c_prev = in.get<T>("c_prev");
    const int n = static_cast<int>(c_prev.size());
    std::vector<T> c(n), h(n);
    ::cuda_emu::launch(dim3((n + 63) / 64), dim3(64), 0, selftest::lstm_pointwise_kernel<T>, gates.data(),
                       c_prev.data(), n, c.data(), h.data());
    out.put("c", c, in.shape("c_prev"));
    out.put("h", h, in.shape("c_prev"));
  });
}

// Each invalid configuration must throw std::invalid_argument; a launch right at the limits must run.
void limits(const Arrays&, Arrays& out) {
  auto rejected = [](dim3 g, dim3 b, size_t smem) {
    try {
      ::cuda_emu::launch(g, b, smem, selftest::smem_poison_probe_kernel<float>, static_cast<float*>(nullptr));
    } catch (const std::invalid_argument&) {
      return 1;
    }
    return 0;
  };
  std::vector<int> r = {
      rejected(dim3(1), dim3(1025), 0),          rejected(dim3(1), dim3(32, 32, 2), 0),
      rejected(dim3(1), dim3(1, 1, 65), 0),      rejected(dim3(1, 65536), dim3(32), 0),
      rejected(dim3(1), dim3(32), 227 * 1024 + 1), rejected(dim3(0), dim3(32), 0),
  };
  out.put("rejected", r);
  // at the limits: 1024 threads, 227 KiB of dynamic shared memory
  std::vector<float> probe(1024);
  ::cuda_emu::launch(dim3(1), dim3(1024), 227 * 1024, selftest::smem_poison_probe_kernel<float>, probe.data());
  out.put("probe_at_limit", probe);
}

void deadlock_early_return(const Arrays&, Arrays& out) {
  std::vector<int> o(64);
  ::cuda_emu::launch(dim3(1), dim3(64), 0, selftest::deadlock_early_return_kernel, o.data());
  out.put("o", o);
}

void deadlock_mixed_barriers(const Arrays&, Arrays& out) {
  std::vector<int> o(64);
  ::cuda_emu::launch(dim3(1), dim3(64), 0, selftest::deadlock_mixed_barriers_kernel, o.data());
  out.put("o", o);
}

void spin_forever(const Arrays&, Arrays& out) {
  std::vector<int> flag(1, 0);
  ::cuda_emu::launch(dim3(1), dim3(32), 0, selftest::spin_forever_kernel, flag.data());
  out.put("flag", flag);
}

// Two-level shuffle reduction with a partial last warp (80 threads): the full-mask __shfl_down_sync reads lanes that
// do not exist, which is undefined in CUDA; the emulator returns the poison value, so the sums come out NaN.
void partial_warp_sum(const Arrays& in, Arrays& out) {
  const auto x = in.get<float>("x");
  std::vector<float> sums((x.size() + 79) / 80);
  ::cuda_emu::launch(dim3(static_cast<unsigned>(sums.size())), dim3(80), 0, selftest::block_sum_shfl_kernel<float>,
                     x.data(), static_cast<std::int64_t>(x.size()), sums.data());
  out.put("sums", sums);
}

#ifdef EMU_RACE_DEMO
void race_missing_sync(const Arrays& in, Arrays& out) {
  const auto x = in.get<float>("x");
  std::vector<float> partial(x.size() / 64);
  ::cuda_emu::launch(dim3(static_cast<unsigned>(partial.size())), dim3(64), 0,
                     selftest::block_reduce_missing_sync_kernel<float, 64>, x.data(), partial.data());
  out.put("partial", partial);
}
void race_warp_synchronous(const Arrays& in, Arrays& out) {
  const auto x = in.get<float>("x");  // 64 values
  std::vector<float> o(1);
  ::cuda_emu::launch(dim3(1), dim3(32), 0, selftest::warp_synchronous_reduce_kernel, x.data(), o.data());
  out.put("sum", o);
}
void race_cross_warp(const Arrays& in, Arrays& out) {
  const auto x = in.get<float>("x");  // 128 values: one block of 4 warps
  std::vector<float> o(1);
  ::cuda_emu::launch(dim3(1), dim3(128), 0, selftest::block_sum_shfl_missing_sync_kernel<float>, x.data(), o.data());
  out.put("sum", o);
}
#endif

#ifdef EMU_OOB_DEMO
void oob_static_shared(const Arrays&, Arrays& out) {
  std::vector<float> o(2);
  ::cuda_emu::launch(dim3(2), dim3(64), 0, selftest::oob_static_shared_kernel<float, 64>, o.data());
  out.put("o", o);
}
void oob_dynamic_shared(const Arrays&, Arrays& out) {
  std::vector<float> o(64);
  ::cuda_emu::launch(dim3(1), dim3(64), 64 * sizeof(float), selftest::oob_dynamic_shared_kernel<float>, o.data());
  out.put("o", o);
}
void oob_global(const Arrays& in, Arrays& out) {
  const auto x = in.get<float>("x");
  std::vector<float> y(x.size());
  const int n = static_cast<int>(x.size());
  ::cuda_emu::launch(dim3((n + 64) / 64), dim3(64), 0, selftest::oob_global_kernel<float>, x.data(), y.data(), n);
  out.put("y", y);
}
#endif

// ------------------------------------------------------------------------------------------ half / bfloat16
void half_convert(const Arrays& in, Arrays& out) {
  const auto x = in.get<float>("x");
  const int n = static_cast<int>(x.size());
  std::vector<int> h_rn(n), h_plain(n), h_vec(n), b_rn(n), b_plain(n), b_vec(n), h2f(65536), b2f(65536);
  ::cuda_emu::launch(dim3(2), dim3(128), 0, selftest_v2::half_convert_kernel, x.data(), n, h_rn.data(), h_plain.data(),
                     h_vec.data(), b_rn.data(), b_plain.data(), b_vec.data(), h2f.data(), b2f.data());
  out.put("h_rn", h_rn);
  out.put("h_plain", h_plain);
  out.put("h_vec", h_vec);
  out.put("b_rn", b_rn);
  out.put("b_plain", b_plain);
  out.put("b_vec", b_vec);
  out.put("h2f", h2f);
  out.put("b2f", b2f);
}

void half_arith(const Arrays& in, Arrays& out) {
  const auto a = in.get<std::int32_t>("a"), b = in.get<std::int32_t>("b"), c = in.get<std::int32_t>("c");
  const int n = static_cast<int>(a.size());
  std::vector<int> o(4 * n), v(4 * n);
  if (in.scalar<int>("bf16"))
    ::cuda_emu::launch(dim3(2), dim3(64), 0, selftest_v2::half_arith_kernel<__nv_bfloat16, __nv_bfloat162>, a.data(),
                       b.data(), c.data(), n, o.data(), v.data());
  else
    ::cuda_emu::launch(dim3(2), dim3(64), 0, selftest_v2::half_arith_kernel<__half, __half2>, a.data(), b.data(),
                       c.data(), n, o.data(), v.data());
  out.put("out", o, {n, 4});
  out.put("vec", v, {n, 4});
}

// ------------------------------------------------------------------------------------------ mma.sync
void mma(const Arrays& in, Arrays& out) {
  const auto a = in.get<std::int64_t>("a"), b = in.get<std::int64_t>("b");
  const auto c = in.get<float>("c");
  const int warps = static_cast<int>(in.shape("a")[0]);
  const int block = in.has("block") ? in.scalar<int>("block") : 32 * std::min(warps, 2);
  std::vector<float> d(c.size(), -1.f);
  const int skip = in.has("skip_lane") ? in.scalar<int>("skip_lane") : -1;
  const int diverge = in.has("diverge_lane") ? in.scalar<int>("diverge_lane") : -1;
  ::cuda_emu::launch(dim3((warps * 32 + block - 1) / block), dim3(block), 0, selftest_v2::mma_tiles_kernel,
                     in.scalar<int>("kind"), a.data(), b.data(), c.data(), d.data(), skip, diverge);
  out.put("d", d, in.shape("c"));
}

void tf32_convert(const Arrays& in, Arrays& out) {
  const auto x = in.get<float>("x");
  std::vector<int> bits(x.size());
  ::cuda_emu::launch(dim3(2), dim3(64), 0, selftest_v2::tf32_convert_kernel, x.data(), static_cast<int>(x.size()),
                     bits.data());
  out.put("bits", bits);
}

// ------------------------------------------------------------------------------------------ grid
void grid_recurrence(const Arrays& in, Arrays& out) {
  const auto W = in.get<float>("W"), u = in.get<float>("u"), h0 = in.get<float>("h0");
  const int H = static_cast<int>(h0.size()), T = static_cast<int>(u.size()) / H;
  const int block = in.scalar<int>("block"), use_sync = in.scalar<int>("use_sync");
  std::vector<float> hs(static_cast<size_t>(T + 1) * H, 0.f);
  const cudaError_t e = ::cuda_emu::launch_cooperative(dim3((H + block - 1) / block), dim3(block), H * sizeof(float),
                                                       selftest_v2::grid_recurrence_kernel, W.data(), u.data(),
                                                       h0.data(), hs.data(), H, T, use_sync);
  if (e != cudaSuccess) throw std::runtime_error(cudaGetErrorString(e));
  out.put("hs", hs, {T + 1, H});
}

void flag_chain(const Arrays& in, Arrays& out) {
  const int blocks = in.scalar<int>("blocks"), n = in.scalar<int>("n");
  std::vector<float> data(static_cast<size_t>(blocks) * n, -1.f);
  std::vector<unsigned> flags(blocks, 0u);
  const cudaError_t e = ::cuda_emu::launch_cooperative(dim3(blocks), dim3(64), 0, selftest_v2::flag_chain_kernel,
                                                       data.data(), flags.data(), n, in.scalar<int>("use_acquire"));
  if (e != cudaSuccess) throw std::runtime_error(cudaGetErrorString(e));
  out.put("data", data, {blocks, n});
}

// Co-residency: with `num_sms` emulated SMs and `smem` bytes of dynamic shared memory per block, launches of each
// size in `grids` (a grid-sync kernel): the cudaError_t of each, and the occupancy the limit came from.
void coop_limits(const Arrays& in, Arrays& out) {
  ::cuda_emu::device().num_sms = in.scalar<unsigned>("num_sms");
  const auto grids = in.get<std::int64_t>("grids");
  const size_t smem = in.scalar<std::int64_t>("smem");
  const unsigned block = in.scalar<unsigned>("block");
  std::vector<int> codes;
  for (auto g : grids) {
    std::vector<unsigned> flag(1, 1u);
    const cudaError_t e = ::cuda_emu::launch_cooperative(dim3(static_cast<unsigned>(g)), dim3(block), smem,
                                                         selftest_v2::grid_misuse_kernel, -1, flag.data());
    codes.push_back(static_cast<int>(e));
    std::printf("grid %lld: %s: %s\n", static_cast<long long>(g), cudaGetErrorName(e), cudaGetErrorString(e));
  }
  out.put("codes", codes);
  const auto occ_threads = in.get<std::int64_t>("occ_threads"), occ_smem = in.get<std::int64_t>("occ_smem");
  std::vector<int> occ;
  for (size_t i = 0; i < occ_threads.size(); ++i)
    occ.push_back(static_cast<int>(::cuda_emu::occupancy_max_active_blocks_per_sm(
        static_cast<unsigned>(occ_threads[i]), static_cast<size_t>(occ_smem[i]))));
  out.put("occupancy", occ);
}

void grid_misuse(const Arrays& in, Arrays& out) {
  const int mode = in.scalar<int>("mode");
  std::vector<unsigned> flag(1, 0u);
  if (mode == 3)
    ::cuda_emu::launch_concurrent(dim3(2), dim3(32), 0, selftest_v2::grid_misuse_kernel, mode, flag.data());
  else
    (void)::cuda_emu::launch_cooperative(dim3(3), dim3(32), 0, selftest_v2::grid_misuse_kernel, mode, flag.data());
  out.put("flag", std::vector<int>{static_cast<int>(flag[0])});
}

// ------------------------------------------------------------------------------------------ cp.async
void cp_async_sum(const Arrays& in, Arrays& out) {
  const auto x = in.get<float>("x");
  const int block = in.scalar<int>("block");
  const int n = static_cast<int>(x.size()), tile = 4 * block, ntiles = (n + tile - 1) / tile;
  std::vector<float> o(block);
  ::cuda_emu::launch(dim3(1), dim3(block), 2 * tile * sizeof(float), selftest_v2::cp_async_sum_kernel, x.data(), n,
                     ntiles, o.data(), in.scalar<int>("mode"));
  out.put("out", o);
}

}  // namespace

int main(int argc, char** argv) {
  return emu_io::run_cases(argc, argv,
                           {
                               {"block_reduce", block_reduce},
                               {"sync_votes", sync_votes},
                               {"warp_ops", warp_ops},
                               {"dyn_smem", dyn_smem},
                               {"indexing", indexing},
                               {"atomics", atomics},
                               {"lstm_pointwise", lstm_pointwise},
                               {"limits", limits},
                               {"deadlock_early_return", deadlock_early_return},
                               {"deadlock_mixed_barriers", deadlock_mixed_barriers},
                               {"spin_forever", spin_forever},
                               {"partial_warp_sum", partial_warp_sum},
                               {"half_convert", half_convert},
                               {"half_arith", half_arith},
                               {"mma", mma},
                               {"tf32_convert", tf32_convert},
                               {"grid_recurrence", grid_recurrence},
                               {"flag_chain", flag_chain},
                               {"coop_limits", coop_limits},
                               {"grid_misuse", grid_misuse},
                               {"cp_async_sum", cp_async_sum},
#ifdef EMU_RACE_DEMO
                               {"race_missing_sync", race_missing_sync},
                               {"race_warp_synchronous", race_warp_synchronous},
                               {"race_cross_warp", race_cross_warp},
#endif
#ifdef EMU_OOB_DEMO
                               {"oob_static_shared", oob_static_shared},
                               {"oob_dynamic_shared", oob_dynamic_shared},
                               {"oob_global", oob_global},
#endif
                           });
}
