// emu_io.h -- named arrays in a tiny binary file, shared by emulation drivers (C++) and pytest (build.py).
//
// File layout (little endian):
//   "EMUIO001"                      8 bytes magic
//   u32 count
//   count times:
//     u32 name_len, name bytes (utf-8)
//     u32 dtype                      1 float32, 2 float64, 3 int64, 4 int32
//     u32 ndim, i64 shape[ndim]
//     u64 nbytes, raw C-contiguous data
//
// A driver is `driver CASE IN_FILE OUT_FILE`; emu_io::run_cases() does the argument handling:
//   int main(int argc, char** argv) {
//     return emu_io::run_cases(argc, argv, {
//       {"my_case", [](const emu_io::Arrays& in, emu_io::Arrays& out) {
//          auto x = in.get<float>("x");                 // dtype must match exactly
//          std::vector<float> y(x.size());
//          ::cuda_emu::launch(grid, block, smem, my_kernel<float>, x.data(), y.data(), (int)x.size());
//          out.put("y", y, in.shape("x"));
//       }},
//     });
//   }
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace emu_io {

enum class DType : std::uint32_t { F32 = 1, F64 = 2, I64 = 3, I32 = 4 };

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::F32: return "float32";
    case DType::F64: return "float64";
    case DType::I64: return "int64";
    case DType::I32: return "int32";
  }
  return "?";
}
inline size_t dtype_size(DType d) { return d == DType::F32 || d == DType::I32 ? 4 : 8; }

template <class T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, float>) return DType::F32;
  else if constexpr (std::is_same_v<T, double>) return DType::F64;
  else if constexpr (std::is_same_v<T, std::int64_t>) return DType::I64;
  else if constexpr (std::is_same_v<T, std::int32_t>) return DType::I32;
  else static_assert(sizeof(T) == 0, "emu_io supports float, double, int64_t, int32_t");
}

struct Array {
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::vector<unsigned char> bytes;
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
  }
};

class Arrays {
 public:
  std::map<std::string, Array> items;

  bool has(const std::string& name) const { return items.count(name) != 0; }

  const Array& at(const std::string& name) const {
    auto it = items.find(name);
    if (it == items.end()) throw std::runtime_error("emu_io: no array named '" + name + "'");
    return it->second;
  }
  DType dtype(const std::string& name) const { return at(name).dtype; }
  const std::vector<std::int64_t>& shape(const std::string& name) const { return at(name).shape; }

  template <class T>
  std::vector<T> get(const std::string& name) const {
    const Array& a = at(name);
    if (a.dtype != dtype_of<T>())
      throw std::runtime_error("emu_io: array '" + name + "' is " + dtype_name(a.dtype) + ", asked for " +
                               dtype_name(dtype_of<T>()));
    std::vector<T> v(static_cast<size_t>(a.numel()));
    if (!v.empty()) std::memcpy(v.data(), a.bytes.data(), v.size() * sizeof(T));
    return v;
  }

  // A one-element array as a scalar; integers may be stored as int32 or int64.
  template <class T>
  T scalar(const std::string& name) const {
    const Array& a = at(name);
    if (a.numel() != 1) throw std::runtime_error("emu_io: array '" + name + "' is not a scalar");
    if constexpr (std::is_integral_v<T>) {
      if (a.dtype == DType::I32) return static_cast<T>(get<std::int32_t>(name)[0]);
      return static_cast<T>(get<std::int64_t>(name)[0]);
    } else {
      return get<T>(name)[0];
    }
  }

  // shape {} means 1-d with v.size() elements.
  template <class T>
  void put(const std::string& name, const std::vector<T>& v, std::vector<std::int64_t> shape = {}) {
    Array a;
    a.dtype = dtype_of<T>();
    a.shape = shape.empty() ? std::vector<std::int64_t>{static_cast<std::int64_t>(v.size())} : std::move(shape);
    if (a.numel() != static_cast<std::int64_t>(v.size()))
      throw std::runtime_error("emu_io: shape of '" + name + "' does not match its " + std::to_string(v.size()) +
                               " elements");
    a.bytes.resize(v.size() * sizeof(T));
    if (!v.empty()) std::memcpy(a.bytes.data(), v.data(), a.bytes.size());
    items[name] = std::move(a);
  }

  static Arrays load(const std::string& path) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) throw std::runtime_error("emu_io: cannot open " + path);
    auto rd = [&](void* p, size_t n) {
      if (n && std::fread(p, 1, n, f) != n) {
        std::fclose(f);
        throw std::runtime_error("emu_io: truncated file " + path);
      }
    };
    char magic[8];
    rd(magic, 8);
    if (std::memcmp(magic, "EMUIO001", 8) != 0) {
      std::fclose(f);
      throw std::runtime_error("emu_io: bad magic in " + path);
    }
    Arrays r;
    std::uint32_t count = 0;
    rd(&count, 4);
    for (std::uint32_t k = 0; k < count; ++k) {
      std::uint32_t len = 0, dt = 0, ndim = 0;
      rd(&len, 4);
      std::string name(len, '\0');
      rd(name.data(), len);
      rd(&dt, 4);
      if (dt < 1 || dt > 4) {
        std::fclose(f);
        throw std::runtime_error("emu_io: bad dtype code in " + path);
      }
      Array a;
      a.dtype = static_cast<DType>(dt);
      rd(&ndim, 4);
      a.shape.resize(ndim);
      rd(a.shape.data(), ndim * sizeof(std::int64_t));
      std::uint64_t nbytes = 0;
      rd(&nbytes, 8);
      if (nbytes != static_cast<std::uint64_t>(a.numel()) * dtype_size(a.dtype)) {
        std::fclose(f);
        throw std::runtime_error("emu_io: size mismatch for '" + name + "' in " + path);
      }
      a.bytes.resize(nbytes);
      rd(a.bytes.data(), nbytes);
      r.items[name] = std::move(a);
    }
    std::fclose(f);
    return r;
  }

  void save(const std::string& path) const {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) throw std::runtime_error("emu_io: cannot write " + path);
    auto wr = [&](const void* p, size_t n) {
      if (n && std::fwrite(p, 1, n, f) != n) {
        std::fclose(f);
        throw std::runtime_error("emu_io: write failed for " + path);
      }
    };
    wr("EMUIO001", 8);
    std::uint32_t count = static_cast<std::uint32_t>(items.size());
    wr(&count, 4);
    for (const auto& [name, a] : items) {
      std::uint32_t len = static_cast<std::uint32_t>(name.size()), dt = static_cast<std::uint32_t>(a.dtype),
                    ndim = static_cast<std::uint32_t>(a.shape.size());
      wr(&len, 4);
      wr(name.data(), len);
      wr(&dt, 4);
      wr(&ndim, 4);
      wr(a.shape.data(), ndim * sizeof(std::int64_t));
      std::uint64_t nbytes = a.bytes.size();
      wr(&nbytes, 8);
      wr(a.bytes.data(), nbytes);
    }
    if (std::fclose(f) != 0) throw std::runtime_error("emu_io: close failed for " + path);
  }
};

using Case = std::function<void(const Arrays& in, Arrays& out)>;

// The `batch` case of the drivers: `n` sub-cases in one process (saves process starts: each spins up a thread
// pool, slow under TSan), sub-case k's arrays named "k.<name>" in and out; run(sub_in, sub_out) runs one.
inline void run_batch(const Arrays& in, Arrays& out, const Case& run) {
  const int n = in.scalar<int>("n");
  for (int k = 0; k < n; ++k) {
    const std::string prefix = std::to_string(k) + ".";
    Arrays sub, sub_out;
    for (const auto& [name, a] : in.items)
      if (name.compare(0, prefix.size(), prefix) == 0) sub.items[name.substr(prefix.size())] = a;
    if (sub.items.empty()) throw std::runtime_error("batch: no arrays for sub-case " + std::to_string(k));
    run(sub, sub_out);
    for (auto& [name, a] : sub_out.items) out.items[prefix + name] = std::move(a);
  }
}

// `driver CASE IN OUT` runs one case; `driver --list` prints the case names. Exit 0 on success, 2 on an exception
// (message on stderr), 64 on bad usage.
inline int run_cases(int argc, char** argv, const std::map<std::string, Case>& cases) {
  if (argc == 2 && std::string(argv[1]) == "--list") {
    for (const auto& kv : cases) std::printf("%s\n", kv.first.c_str());
    return 0;
  }
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s CASE IN_FILE OUT_FILE | --list\n", argv[0]);
    return 64;
  }
  auto it = cases.find(argv[1]);
  if (it == cases.end()) {
    std::fprintf(stderr, "unknown case '%s' (see --list)\n", argv[1]);
    return 64;
  }
  try {
    Arrays in = Arrays::load(argv[2]);
    Arrays out;
    it->second(in, out);
    out.save(argv[3]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "case %s failed: %s\n", argv[1], e.what());
    return 2;
  }
  return 0;
}

}  // namespace emu_io
