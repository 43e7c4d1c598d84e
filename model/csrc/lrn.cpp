// Local response normalization on CPU, optionally fused with the ReLU before it and the max-pool after it
// (model/lrn_ops.py registers it as the torch ops alexnet::lrn and alexnet::lrn_backward; model/lrn_twin.py
// is its pure-torch twin, tested equal to it).
//
//   x = relu(z) (or z),  S_c = sum_{j=c-before}^{c+after} x_j^2,  D_c = k + alpha S_c,  y_c = x_c D_c^-beta,
//   out = maxpool(y) (or y);   dL/dx_c = g_c D_c^-beta - 2 alpha beta x_c sum_{i=c-after}^{c+before} g_i y_i / D_i
//
// with channels outside [0, C) left out of both sums (F.local_response_norm's zero padding: before = n/2,
// after = (n-1)/2). One pass over each image's channels with rings of `size` planes, so the forward reads z
// and writes the output once, and the backward, which saves nothing but z, reads z and the output's gradient
// and writes z's once: D, y and the pool's choices are recomputed in cache. Images run in parallel
// (at::parallel_for). Any strides (NCHW, channels_last, views). float32, float64, and bfloat16 computed in
// float32, y rounded to the storage type before pooling, so the pool picks what the unfused ops would pick.

#include <torch/extension.h>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

// Each range of images is compiled for AVX-512 and AVX2 too, picked when the library loads (GCC, x86-64);
// the plane loops below are inlined into those clones and vectorise there.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define LRN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LRN_CLONES
#endif
#define LRN_INLINE inline __attribute__((always_inline))

namespace {

struct Params {
  int64_t size, before, after;
  double alpha, beta, k;
  bool relu;
  int64_t pool_kernel, pool_stride;  // pool_kernel 0: no pool
};

struct Planes {
  int64_t N, C, H, W, Ho, Wo;
  int64_t P() const { return H * W; }
};

// A [H, W] plane at `base` with strides (sh, sw), converted to acc_t; with relu, max(v, 0) (NaN stays NaN).
template <typename scalar_t, typename acc_t>
LRN_INLINE void load(const scalar_t* base, int64_t sh, int64_t sw, int64_t H, int64_t W, bool relu, acc_t* out) {
  for (int64_t h = 0; h < H; ++h) {
    const scalar_t* row = base + h * sh;
    acc_t* o = out + h * W;
    if (sw == 1) {
      for (int64_t w = 0; w < W; ++w) o[w] = acc_t(row[w]);
    } else {
      for (int64_t w = 0; w < W; ++w) o[w] = acc_t(row[w * sw]);
    }
    if (relu) {
      for (int64_t w = 0; w < W; ++w) o[w] = o[w] < acc_t(0) ? acc_t(0) : o[w];
    }
  }
}

template <typename scalar_t, typename acc_t>
LRN_INLINE void store(const acc_t* in, int64_t H, int64_t W, scalar_t* base, int64_t sh, int64_t sw) {
  for (int64_t h = 0; h < H; ++h) {
    scalar_t* row = base + h * sh;
    const acc_t* v = in + h * W;
    if (sw == 1) {
      for (int64_t w = 0; w < W; ++w) row[w] = scalar_t(v[w]);
    } else {
      for (int64_t w = 0; w < W; ++w) row[w * sw] = scalar_t(v[w]);
    }
  }
}

// The `size` planes of a window of channels first, first + 1, ...: plane j of the ring (slot j % size) where
// 0 <= j < C, else a plane of zeros, so every window sums `size` rows (adding zeros changes nothing).
template <typename acc_t>
LRN_INLINE void window(const acc_t** rows, const acc_t* ring, const acc_t* zeros, int64_t size, int64_t first,
                       int64_t C, int64_t P) {
  for (int64_t r = 0; r < size; ++r) {
    const int64_t j = first + r;
    rows[r] = (j >= 0 && j < C) ? ring + (j % size) * P : zeros;
  }
}

// The plane functions come in two builds: the paper's window and exponent (N = 5, beta = 0.75 as constants: the
// loops over the window unroll, D^-beta is two square roots, and each plane is one vectorised loop) and any
// (N = 0: the window read from `size`, std::pow).
template <int N, typename acc_t>
LRN_INLINE acc_t sum_of_squares(const acc_t* const* rows, int64_t size, int64_t i) {
  const int64_t m = N ? N : size;
  acc_t s = rows[0][i] * rows[0][i];
  for (int64_t r = 1; r < m; ++r) s += rows[r][i] * rows[r][i];
  return s;
}

template <int N, typename acc_t>
LRN_INLINE acc_t sum_of(const acc_t* const* rows, int64_t size, int64_t i) {
  const int64_t m = N ? N : size;
  acc_t s = rows[0][i];
  for (int64_t r = 1; r < m; ++r) s += rows[r][i];
  return s;
}

// D^-beta: two square roots for the paper's 0.75 (they vectorise; std::pow does not).
template <bool three_quarters, typename acc_t>
LRN_INLINE acc_t inverse_power(acc_t d, acc_t beta) {
  if constexpr (three_quarters) {
    const acc_t r = std::sqrt(d);
    return acc_t(1) / (r * std::sqrt(r));
  } else {
    return std::pow(d, -beta);
  }
}

// The forward of one channel: y = x D^-beta, rounded to the storage type (what torch's pool would be given).
template <int N, bool three_quarters, typename scalar_t, typename acc_t>
LRN_INLINE void forward_plane(const acc_t* const* rows, int64_t size, const acc_t* __restrict__ x,
                              acc_t* __restrict__ y, int64_t n,
                              acc_t alpha, acc_t k, acc_t beta) {
  for (int64_t i = 0; i < n; ++i) {
    const acc_t pw = inverse_power<three_quarters>(k + alpha * sum_of_squares<N>(rows, size, i), beta);
    y[i] = acc_t(scalar_t(x[i] * pw));
  }
}

// The backward's first look at channel i: D^-beta, D^-beta x / D (what the window's gradient sum needs per unit
// of g) and, for the pool (y not null), y.
template <int N, bool three_quarters, typename scalar_t, typename acc_t>
LRN_INLINE void backward_plane(const acc_t* const* rows, int64_t size, const acc_t* __restrict__ x,
                               acc_t* __restrict__ pw, acc_t* __restrict__ q, acc_t* __restrict__ y, int64_t n,
                               acc_t alpha, acc_t k, acc_t beta) {
  for (int64_t i = 0; i < n; ++i) {
    const acc_t d = k + alpha * sum_of_squares<N>(rows, size, i);
    const acc_t p = inverse_power<three_quarters>(d, beta);
    pw[i] = p;
    q[i] = p * x[i] / d;
  }
  if (y) {
    for (int64_t i = 0; i < n; ++i) y[i] = acc_t(scalar_t(x[i] * pw[i]));
  }
}

// g D^-beta and t = g y / D of channel i, into their rings.
template <typename acc_t>
LRN_INLINE void weigh_gradient(const acc_t* __restrict__ g, const acc_t* __restrict__ pw, const acc_t* __restrict__ q,
                               acc_t* __restrict__ gp, acc_t* __restrict__ t, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    gp[i] = g[i] * pw[i];
    t[i] = g[i] * q[i];
  }
}

// dL/dx = g D^-beta - 2 alpha beta x (the window's sum of g y / D); nothing where the ReLU cut x to 0.
template <int N, typename acc_t>
LRN_INLINE void finish_plane(const acc_t* const* rows, int64_t size, const acc_t* __restrict__ gp,
                             const acc_t* __restrict__ x, acc_t* __restrict__ dx, int64_t n, acc_t cross, bool relu) {
  for (int64_t i = 0; i < n; ++i) {
    const acc_t v = gp[i] - cross * x[i] * sum_of<N>(rows, size, i);
    dx[i] = (relu && x[i] <= acc_t(0)) ? acc_t(0) : v;
  }
}

// torch's max_pool2d (no padding, floor): each window's first largest value in row-major order, or its last
// NaN. Separably, in that order: the best of each row's k values at every column start, then the best of k
// such rows (a later row wins only if strictly larger, or NaN), then every s-th column.
template <typename acc_t>
struct Pool {
  int64_t H, W, k, s, Ho, Wo, W1;
  std::vector<acc_t> row_best, col_best;
  std::vector<int32_t> row_at, col_at;
  Pool(int64_t H, int64_t W, int64_t k, int64_t s)
      : H(H), W(W), k(k), s(s), Ho((H - k) / s + 1), Wo((W - k) / s + 1), W1(W - k + 1),
        row_best(H * W1), col_best(W1), row_at(H * W1), col_at(W1) {}

  LRN_INLINE static void keep_best(acc_t& top, int32_t& at, acc_t v, int32_t where) {
    const bool take = v > top || v != v;
    top = take ? v : top;
    at = take ? where : at;
  }

  // out[o] = the window's value; at[o] (if given) = its index in the plane.
  LRN_INLINE void run(const acc_t* y, acc_t* out, int32_t* at) {
    const int64_t rows = (Ho - 1) * s + k;
    for (int64_t h = 0; h < rows; ++h) {
      const acc_t* r = y + h * W;
      acc_t* best = row_best.data() + h * W1;
      int32_t* where = row_at.data() + h * W1;
      for (int64_t w = 0; w < W1; ++w) {
        best[w] = r[w];
        where[w] = int32_t(h * W + w);
      }
      for (int64_t kw = 1; kw < k; ++kw) {
        for (int64_t w = 0; w < W1; ++w) keep_best(best[w], where[w], r[w + kw], int32_t(h * W + w + kw));
      }
    }
    for (int64_t oh = 0; oh < Ho; ++oh) {
      std::copy_n(row_best.data() + oh * s * W1, W1, col_best.data());
      std::copy_n(row_at.data() + oh * s * W1, W1, col_at.data());
      for (int64_t kh = 1; kh < k; ++kh) {
        const acc_t* best = row_best.data() + (oh * s + kh) * W1;
        const int32_t* where = row_at.data() + (oh * s + kh) * W1;
        for (int64_t w = 0; w < W1; ++w) keep_best(col_best[w], col_at[w], best[w], where[w]);
      }
      for (int64_t ow = 0; ow < Wo; ++ow) {
        out[oh * Wo + ow] = col_best[ow * s];
        if (at) at[oh * Wo + ow] = col_at[ow * s];
      }
    }
  }
};

// One range of images: the quantities of channel j live in slot j % size of each ring.
template <typename scalar_t, int N, bool three_quarters>
LRN_INLINE void forward_images(const at::Tensor& z, at::Tensor& out, const Params& p, const Planes& s,
                               int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t P = s.P();
  const scalar_t* zp = z.const_data_ptr<scalar_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  const auto zs = z.strides();
  const auto os = out.strides();
  std::vector<acc_t> x(p.size * P), zeros(P, acc_t(0)), y(P), pooled(s.Ho * s.Wo);
  std::vector<const acc_t*> rows(p.size);
  Pool<acc_t> pool(s.H, s.W, p.pool_kernel ? p.pool_kernel : 1, p.pool_kernel ? p.pool_stride : 1);
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t j = 0; j < s.C + p.after; ++j) {  // channel j in; channel c = j - after out
        if (j < s.C) load(zp + n * zs[0] + j * zs[1], zs[2], zs[3], s.H, s.W, p.relu, x.data() + (j % p.size) * P);
        const int64_t c = j - p.after;
        if (c < 0) continue;
        window(rows.data(), x.data(), zeros.data(), p.size, c - p.before, s.C, P);
        forward_plane<N, three_quarters, scalar_t>(rows.data(), p.size, x.data() + (c % p.size) * P, y.data(), P,
                                                   acc_t(p.alpha), acc_t(p.k), acc_t(p.beta));
        scalar_t* oc = op + n * os[0] + c * os[1];
        if (p.pool_kernel) {
          pool.run(y.data(), pooled.data(), nullptr);
          store(pooled.data(), s.Ho, s.Wo, oc, os[2], os[3]);
        } else {
          store(y.data(), s.H, s.W, oc, os[2], os[3]);
        }
      }
    }
}

template <typename scalar_t, int N, bool three_quarters>
LRN_INLINE void backward_images(const at::Tensor& grad, const at::Tensor& z, at::Tensor& dz, const Params& p,
                                const Planes& s, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t P = s.P(), Q = s.Ho * s.Wo;
  const scalar_t* zp = z.const_data_ptr<scalar_t>();
  const scalar_t* gp = grad.const_data_ptr<scalar_t>();
  scalar_t* dp = dz.mutable_data_ptr<scalar_t>();
  const auto zs = z.strides();
  const auto gs = grad.strides();
  const auto ds = dz.strides();
  const acc_t cross = acc_t(2 * p.alpha * p.beta);
  std::vector<acc_t> x(p.size * P), t(p.size * P), gpw(p.size * P), zeros(P, acc_t(0));
  std::vector<acc_t> pw(P), q(P), g(P), y(P), pooled(Q), pooled_grad(Q), dx(P);
  std::vector<int32_t> chosen(Q);
  std::vector<const acc_t*> rows(p.size);
  Pool<acc_t> pool(s.H, s.W, p.pool_kernel ? p.pool_kernel : 1, p.pool_kernel ? p.pool_stride : 1);
    for (int64_t n = begin; n < end; ++n) {
      // Channel j in; channel i = j - after gets g D^-beta and t = g y / D; channel c = i - before
      // (= j - size + 1) now has every t of its transposed window and is finished.
      for (int64_t j = 0; j < s.C + p.size - 1; ++j) {
        if (j < s.C) load(zp + n * zs[0] + j * zs[1], zs[2], zs[3], s.H, s.W, p.relu, x.data() + (j % p.size) * P);
        const int64_t i = j - p.after;
        if (i >= 0 && i < s.C) {
          const acc_t* xi = x.data() + (i % p.size) * P;
          window(rows.data(), x.data(), zeros.data(), p.size, i - p.before, s.C, P);
          backward_plane<N, three_quarters, scalar_t>(rows.data(), p.size, xi, pw.data(), q.data(),
                                                      p.pool_kernel ? y.data() : nullptr, P, acc_t(p.alpha),
                                                      acc_t(p.k), acc_t(p.beta));
          const scalar_t* gi = gp + n * gs[0] + i * gs[1];
          if (p.pool_kernel) {  // the pooled gradient, sent to each window's choice in the recomputed y
            pool.run(y.data(), pooled.data(), chosen.data());
            load(gi, gs[2], gs[3], s.Ho, s.Wo, false, pooled_grad.data());
            std::fill(g.begin(), g.end(), acc_t(0));
            for (int64_t o = 0; o < Q; ++o) g[chosen[o]] += pooled_grad[o];
          } else {
            load(gi, gs[2], gs[3], s.H, s.W, false, g.data());
          }
          weigh_gradient(g.data(), pw.data(), q.data(), gpw.data() + (i % p.size) * P, t.data() + (i % p.size) * P, P);
        }
        const int64_t c = j - p.size + 1;
        if (c < 0) continue;
        window(rows.data(), t.data(), zeros.data(), p.size, c - p.after, s.C, P);
        finish_plane<N>(rows.data(), p.size, gpw.data() + (c % p.size) * P, x.data() + (c % p.size) * P, dx.data(),
                        P, cross, p.relu);
        store(dx.data(), s.H, s.W, dp + n * ds[0] + c * ds[1], ds[2], ds[3]);
      }
    }
}

// The entry points the clones are made of, one per storage type.
bool paper_constants(const Params& p) { return p.size == 5 && p.beta == 0.75; }

#define LRN_ENTRIES(scalar_t, CLONES)                                                                         \
  CLONES void forward_range(scalar_t*, const at::Tensor& z, at::Tensor& out, const Params& p,            \
                                const Planes& s, int64_t begin, int64_t end) {                              \
    if (paper_constants(p)) {                                                                                \
      forward_images<scalar_t, 5, true>(z, out, p, s, begin, end);                                           \
    } else {                                                                                                 \
      forward_images<scalar_t, 0, false>(z, out, p, s, begin, end);                                          \
    }                                                                                                        \
  }                                                                                                          \
  CLONES void backward_range(scalar_t*, const at::Tensor& grad, const at::Tensor& z, at::Tensor& dz,     \
                                 const Params& p, const Planes& s, int64_t begin, int64_t end) {             \
    if (paper_constants(p)) {                                                                                \
      backward_images<scalar_t, 5, true>(grad, z, dz, p, s, begin, end);                                     \
    } else {                                                                                                 \
      backward_images<scalar_t, 0, false>(grad, z, dz, p, s, begin, end);                                    \
    }                                                                                                        \
  }
// float32 and bfloat16 are what training runs; float64 (the tests' exact comparisons) is built once, for any x86.
LRN_ENTRIES(float, LRN_CLONES)
LRN_ENTRIES(double, )
LRN_ENTRIES(c10::BFloat16, LRN_CLONES)

Params params(int64_t size, double alpha, double beta, double k, bool relu, int64_t pool_kernel, int64_t pool_stride) {
  TORCH_CHECK(size >= 1, "lrn: size must be at least 1, got ", size);
  TORCH_CHECK(pool_kernel == 0 || (pool_kernel >= 1 && pool_stride >= 1), "lrn: bad pool ", pool_kernel, "/",
              pool_stride);
  return Params{size, size / 2, (size - 1) / 2, alpha, beta, k, relu, pool_kernel, pool_stride};
}

Planes planes(const at::Tensor& z, const Params& p) {
  TORCH_CHECK(z.device().is_cpu() && z.dim() == 4, "lrn: the input must be a [N, C, H, W] CPU tensor");
  Planes s{z.size(0), z.size(1), z.size(2), z.size(3), z.size(2), z.size(3)};
  if (p.pool_kernel) {
    TORCH_CHECK(s.H >= p.pool_kernel && s.W >= p.pool_kernel, "lrn: the maps are smaller than the pool");
    s.Ho = (s.H - p.pool_kernel) / p.pool_stride + 1;
    s.Wo = (s.W - p.pool_kernel) / p.pool_stride + 1;
  }
  TORCH_CHECK(s.H * s.W < (int64_t(1) << 31), "lrn: maps too large");
  return s;
}

void check_like(const at::Tensor& t, const at::Tensor& z, int64_t H, int64_t W, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == z.scalar_type() && t.dim() == 4 && t.size(0) == z.size(0) &&
                  t.size(1) == z.size(1) && t.size(2) == H && t.size(3) == W,
              "lrn: ", name, " has the wrong shape, dtype or device");
}

// out (allocated by the caller) = pool(lrn(relu(z))).
void forward(const at::Tensor& z, at::Tensor& out, int64_t size, double alpha, double beta, double k, bool relu,
             int64_t pool_kernel, int64_t pool_stride) {
  const Params p = params(size, alpha, beta, k, relu, pool_kernel, pool_stride);
  const Planes s = planes(z, p);
  check_like(out, z, s.Ho, s.Wo, "the output");
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, z.scalar_type(), "lrn_forward", [&] {
    at::parallel_for(0, s.N, 1, [&](int64_t begin, int64_t end) {
      forward_range(static_cast<scalar_t*>(nullptr), z, out, p, s, begin, end);
    });
  });
}

// dz (allocated by the caller) = the gradient of forward's output (`grad`) with respect to z.
void backward(const at::Tensor& grad, const at::Tensor& z, at::Tensor& dz, int64_t size, double alpha, double beta,
              double k, bool relu, int64_t pool_kernel, int64_t pool_stride) {
  const Params p = params(size, alpha, beta, k, relu, pool_kernel, pool_stride);
  const Planes s = planes(z, p);
  check_like(grad, z, s.Ho, s.Wo, "the output's gradient");
  check_like(dz, z, s.H, s.W, "the input's gradient");
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, z.scalar_type(), "lrn_backward", [&] {
    at::parallel_for(0, s.N, 1, [&](int64_t begin, int64_t end) {
      backward_range(static_cast<scalar_t*>(nullptr), grad, z, dz, p, s, begin, end);
    });
  });
}

}  // namespace

void register_paper_sgd(pybind11::module& m);  // paper_sgd.cpp: the other kernel of this module

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "pool(lrn(relu(z))) into out");
  m.def("backward", &backward, "its gradient with respect to z, into dz");
  register_paper_sgd(m);
}
