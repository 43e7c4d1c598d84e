// Local response normalization on CPU, optionally fused with the ReLU before it and the max-pool after it
// (model/lrn/ops.py registers it as the torch ops alexnet::lrn and alexnet::lrn_backward; model/lrn/twin.py
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

#include "lrn_planes.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

// Each range of images is compiled for AVX-512 and AVX2 too, picked when the library loads (GCC, x86-64);
// the plane loops (lrn_planes.h) are inlined into those clones and vectorise there.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define LRN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LRN_CLONES
#endif

namespace {

using namespace alexnet_lrn;

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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "pool(lrn(relu(z))) into out");
  m.def("backward", &backward, "its gradient with respect to z, into dz");
}
