// The per-plane pieces of model/lrn/csrc/lrn.cpp (one [H, W] map of one channel of one image at a time): loading
// and storing a plane in any layout, the window sums and LRN's per-element formulas, and torch's max-pool
// choice. Inline, so that each instruction-set clone of lrn.cpp's entry points compiles them for itself.

#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#define LRN_INLINE inline __attribute__((always_inline))

namespace alexnet_lrn {

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

}  // namespace alexnet_lrn
