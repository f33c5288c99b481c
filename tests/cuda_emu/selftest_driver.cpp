// Driver for the harness self-tests: `selftest_driver CASE IN OUT` (see emu_io.h). Built and run by
// tests/test_cuda_emu_harness.py through tests/cuda_emu/build.py.
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "cuda_emu.h"
#include "emu_io.h"
#include "selftest_kernels.cuh"

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
