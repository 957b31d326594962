// oneDNN's convolutions, matrix products and LRN, and loops of our own beside them, called from
// jitted JAX code through XLA's FFI (alexnet_jax/model/cpu/onednn.py).
//
// XLA:CPU runs convolutions with Eigen's kernels; oneDNN's direct (brgemm / jit) kernels run the
// same convolutions faster on x86 CPUs.  Three handlers for them:
//
//   alexnet_conv_forward          (x NHWC, kernel HWIO, bias)  -> conv(x, kernel) + bias
//   alexnet_conv_backward         (x, kernel, dy NHWC)         -> (dx NHWC, dkernel HWIO, dbias)
//   alexnet_conv_backward_weights (x, dy)                      -> (dkernel, dbias), for an input
//                                                                 that is not differentiated
//
// Each takes `stride` and the (low, high) padding of the two spatial axes as attributes.  The
// activations stay in XLA's NHWC; the kernel is reordered into the blocked layout oneDNN's kernels
// prefer (and its gradient back), which costs little next to the convolution.  Primitives are
// built once per geometry and kept; each call brings its own scratchpad, so that calls from
// several threads (several XLA devices) may run at once.  Float32 only.
//
// Two for local response normalisation across channels (NHWC, any leading axes as the batch), as
// alexnet_jax/model/layers/lrn.py writes it (alpha not divided by the window's size), for an odd
// window:
//
//   alexnet_lrn_forward   (x)      -> y    oneDNN's
//   alexnet_lrn_backward  (x, dy)  -> dx   a loop of our own, one pass over x and dy
//
// with the window's `size`, `alpha`, `beta` and `k` as attributes.  One for dense layers:
//
//   alexnet_matmul        (a, b)   -> op(a) @ op(b)   oneDNN's sgemm; `transpose_a`, `transpose_b`
//
// and two for max-pooling over VALID windows (NHWC, leading axes as the batch), loops of our own:
//
//   alexnet_max_pool           (x)         -> (y, first)  the max, and its window's first
//                                                         winning tap (int8, row-major)
//   alexnet_max_pool_backward  (first, dy) -> dx          dy routed to those taps
//
// with the `window` and `stride` as attributes.
#include <oneapi/dnnl/dnnl.hpp>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using Tag = memory::format_tag;
constexpr auto kF32 = memory::data_type::f32;

// Batch, input height, width and channels, kernel height and width, output channels, output
// height and width, stride, and padding top, bottom, left and right.
using Geometry = std::array<int64_t, 14>;

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Convolution {
  memory::desc x, kernel, bias, y;  // the layouts XLA holds: NHWC, HWIO, a vector
  dnnl::convolution_forward::primitive_desc forward_pd;
  dnnl::convolution_backward_data::primitive_desc data_pd;
  dnnl::convolution_backward_weights::primitive_desc weights_pd;
  dnnl::convolution_forward forward;
  dnnl::convolution_backward_data backward_data;
  dnnl::convolution_backward_weights backward_weights;

  explicit Convolution(const Geometry& g) {
    const auto [n, h, w, c, kh, kw, o, oh, ow, stride, top, bottom, left, right] = g;
    x = memory::desc({n, c, h, w}, kF32, Tag::nhwc);
    kernel = memory::desc({o, c, kh, kw}, kF32, Tag::hwio);
    bias = memory::desc({o}, kF32, Tag::a);
    y = memory::desc({n, o, oh, ow}, kF32, Tag::nhwc);
    const memory::desc any_kernel({o, c, kh, kw}, kF32, Tag::any);
    const memory::dims strides{stride, stride}, low{top, left}, high{bottom, right};
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    auto& engine = cpu_engine();
    forward_pd = dnnl::convolution_forward::primitive_desc(
        engine, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, x,
        any_kernel, bias, y, strides, low, high, attr);
    data_pd = dnnl::convolution_backward_data::primitive_desc(
        engine, dnnl::algorithm::convolution_direct, x, any_kernel, y, strides, low, high,
        forward_pd, attr);
    weights_pd = dnnl::convolution_backward_weights::primitive_desc(
        engine, dnnl::algorithm::convolution_direct, x, any_kernel, bias, y, strides, low, high,
        forward_pd, attr);
    forward = dnnl::convolution_forward(forward_pd);
    backward_data = dnnl::convolution_backward_data(data_pd);
    backward_weights = dnnl::convolution_backward_weights(weights_pd);
  }
};

// The primitives for `key`, built on first use (oneDNN generates their code then) from `key`
// and `args`, and kept: one cache per kind of primitives.
template <typename Primitives, typename Key, typename... Args>
const Primitives& built_once(const Key& key, const Args&... args) {
  static std::mutex mutex;
  static std::map<Key, std::unique_ptr<Primitives>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& entry = cache[key];
  if (!entry) entry = std::make_unique<Primitives>(key, args...);
  return *entry;
}

const Convolution& convolution_for(const Geometry& g) { return built_once<Convolution>(g); }

memory wrap(const memory::desc& desc, const void* data) {
  return memory(desc, cpu_engine(), const_cast<void*>(data));
}

// Working memory of the calls on this thread, kept between calls: a fresh allocation per
// call would fault its pages in again every time.  Slot 0 holds the scratchpad, slot 1 a
// kernel (or its gradient) in oneDNN's layout.
memory working_memory(int slot, const memory::desc& desc) {
  struct Buffer {
    void* data = nullptr;
    size_t size = 0;
    ~Buffer() { std::free(data); }
  };
  thread_local std::array<Buffer, 2> buffers;
  Buffer& buffer = buffers[slot];
  const size_t size = desc.get_size();
  if (size > buffer.size) {
    std::free(buffer.data);
    buffer.size = (size + 63) / 64 * 64;
    buffer.data = std::aligned_alloc(64, buffer.size);
    if (buffer.data == nullptr) throw std::bad_alloc();
  }
  return memory(desc, cpu_engine(), buffer.data);
}

// `user` as `desc`: itself when the layouts agree, else a reordered copy in slot 1.
memory in_layout(memory user, const memory::desc& desc, dnnl::stream& stream) {
  if (user.get_desc() == desc) return user;
  memory copy = working_memory(1, desc);
  dnnl::reorder(user, copy).execute(stream, user, copy);
  return copy;
}

Geometry geometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> kernel,
                  ffi::Span<const int64_t> y, int64_t stride, int64_t top, int64_t bottom,
                  int64_t left, int64_t right) {
  return {x[0], x[1], x[2], x[3], kernel[0], kernel[1], kernel[3], y[1], y[2],
          stride, top, bottom, left, right};
}

ffi::Error check(ffi::Span<const int64_t> x, ffi::Span<const int64_t> kernel,
                 ffi::Span<const int64_t> y) {
  if (x.size() != 4 || kernel.size() != 4 || y.size() != 4 || x[0] != y[0] ||
      x[3] != kernel[2] || y[3] != kernel[3]) {
    return ffi::Error::InvalidArgument(
        "oneDNN convolution: expected NHWC input and output and an HWIO kernel that agree");
  }
  return ffi::Error::Success();
}

// Runs `body`, turning oneDNN's exceptions into an XLA error that names the handler.
template <typename Body>
ffi::Error guarded(const char* name, Body body) {
  try {
    body();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string(name) + ": oneDNN error: " + e.what());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string(name) + ": " + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvForwardImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                           ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y,
                           int64_t stride, int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                           int64_t pad_right) {
  if (auto error = check(x.dimensions(), kernel.dimensions(), y->dimensions()); !error.success())
    return error;
  return guarded("alexnet_conv_forward", [&] {
    const auto& conv = convolution_for(geometry(x.dimensions(), kernel.dimensions(),
                                                y->dimensions(), stride, pad_top, pad_bottom,
                                                pad_left, pad_right));
    dnnl::stream stream(cpu_engine());
    memory scratch = working_memory(0, conv.forward_pd.scratchpad_desc());
    memory k = in_layout(wrap(conv.kernel, kernel.typed_data()), conv.forward_pd.weights_desc(),
                         stream);
    conv.forward.execute(stream, {{DNNL_ARG_SRC, wrap(conv.x, x.typed_data())},
                                  {DNNL_ARG_WEIGHTS, k},
                                  {DNNL_ARG_BIAS, wrap(conv.bias, bias.typed_data())},
                                  {DNNL_ARG_DST, wrap(conv.y, y->typed_data())},
                                  {DNNL_ARG_SCRATCHPAD, scratch}});
    stream.wait();
  });
}

// The kernel and bias gradients into the caller's HWIO and vector buffers.
void backward_weights(const Convolution& conv, const void* x, const void* dy, void* dkernel,
                      void* dbias, dnnl::stream& stream) {
  memory scratch = working_memory(0, conv.weights_pd.scratchpad_desc());
  memory user_dkernel = wrap(conv.kernel, dkernel);
  const bool direct = conv.weights_pd.diff_weights_desc() == conv.kernel;
  memory blocked =
      direct ? user_dkernel : working_memory(1, conv.weights_pd.diff_weights_desc());
  conv.backward_weights.execute(stream, {{DNNL_ARG_SRC, wrap(conv.x, x)},
                                         {DNNL_ARG_DIFF_DST, wrap(conv.y, dy)},
                                         {DNNL_ARG_DIFF_WEIGHTS, blocked},
                                         {DNNL_ARG_DIFF_BIAS, wrap(conv.bias, dbias)},
                                         {DNNL_ARG_SCRATCHPAD, scratch}});
  if (!direct) dnnl::reorder(blocked, user_dkernel).execute(stream, blocked, user_dkernel);
}

// All three gradients, one after the other: one call, so that XLA does not run the input
// and kernel gradients side by side, each on every core.
ffi::Error ConvBackwardImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                            ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dx,
                            ffi::ResultBuffer<ffi::F32> dkernel, ffi::ResultBuffer<ffi::F32> dbias,
                            int64_t stride, int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                            int64_t pad_right) {
  if (auto error = check(x.dimensions(), kernel.dimensions(), dy.dimensions()); !error.success())
    return error;
  return guarded("alexnet_conv_backward", [&] {
    const auto& conv = convolution_for(geometry(x.dimensions(), kernel.dimensions(),
                                                dy.dimensions(), stride, pad_top, pad_bottom,
                                                pad_left, pad_right));
    dnnl::stream stream(cpu_engine());
    {
      memory scratch = working_memory(0, conv.data_pd.scratchpad_desc());
      memory k = in_layout(wrap(conv.kernel, kernel.typed_data()), conv.data_pd.weights_desc(),
                           stream);
      conv.backward_data.execute(stream, {{DNNL_ARG_DIFF_DST, wrap(conv.y, dy.typed_data())},
                                          {DNNL_ARG_WEIGHTS, k},
                                          {DNNL_ARG_DIFF_SRC, wrap(conv.x, dx->typed_data())},
                                          {DNNL_ARG_SCRATCHPAD, scratch}});
      stream.wait();
    }
    backward_weights(conv, x.typed_data(), dy.typed_data(), dkernel->typed_data(),
                     dbias->typed_data(), stream);
    stream.wait();
  });
}

// The kernel and bias gradients alone, for an input that is not differentiated (the image).
ffi::Error ConvBackwardWeightsImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                                   ffi::ResultBuffer<ffi::F32> dkernel,
                                   ffi::ResultBuffer<ffi::F32> dbias, int64_t stride,
                                   int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                                   int64_t pad_right) {
  if (auto error = check(x.dimensions(), dkernel->dimensions(), dy.dimensions());
      !error.success())
    return error;
  return guarded("alexnet_conv_backward_weights", [&] {
    const auto& conv = convolution_for(geometry(x.dimensions(), dkernel->dimensions(),
                                                dy.dimensions(), stride, pad_top, pad_bottom,
                                                pad_left, pad_right));
    dnnl::stream stream(cpu_engine());
    backward_weights(conv, x.typed_data(), dy.typed_data(), dkernel->typed_data(),
                     dbias->typed_data(), stream);
    stream.wait();
  });
}

// --- local response normalisation across channels --------------------------------------------

// Leading dimensions (the batch, and any vmapped axes before it), height, width, channels, the
// window's size, and alpha, beta and k as their bits.
using LrnGeometry = std::array<int64_t, 8>;

// oneDNN's LRN forward of NHWC maps n x h x w x c (lrn.py's alpha), the scratchpad ours.
dnnl::lrn_forward::primitive_desc lrn_forward_pd(int64_t n, int64_t h, int64_t w, int64_t c,
                                                 int64_t size, float alpha, float beta, float k) {
  const memory::desc x({n, c, h, w}, kF32, Tag::nhwc);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  // oneDNN divides its alpha by the window's size.
  return dnnl::lrn_forward::primitive_desc(
      cpu_engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::lrn_across_channels, x,
      x, size, alpha * size, beta, k, attr);
}

struct Lrn {
  memory::desc x;  // NHWC, the leading dimensions as the batch
  dnnl::lrn_forward::primitive_desc forward_pd;
  dnnl::lrn_forward forward;

  Lrn(const LrnGeometry& g, float alpha, float beta, float k)
      : forward_pd(lrn_forward_pd(g[0], g[1], g[2], g[3], g[4], alpha, beta, k)) {
    x = forward_pd.src_desc();
    forward = dnnl::lrn_forward(forward_pd);
  }
};

int64_t bits(float value) {
  int32_t b;
  std::memcpy(&b, &value, sizeof b);
  return b;
}

// The product of the axes before an NHWC map's last three: its images, counting vmapped axes.
int64_t leading_images(ffi::Span<const int64_t> dims) {
  int64_t images = 1;
  for (size_t i = 0; i + 3 < dims.size(); ++i) images *= dims[i];
  return images;
}

const Lrn& lrn_for(ffi::Span<const int64_t> dims, int64_t size, float alpha, float beta, float k) {
  const size_t r = dims.size();
  const LrnGeometry g{leading_images(dims), dims[r - 3], dims[r - 2], dims[r - 1], size,
                      bits(alpha), bits(beta), bits(k)};
  return built_once<Lrn>(g, alpha, beta, k);
}

ffi::Error check_lrn(ffi::Span<const int64_t> dims, int64_t size) {
  if (dims.size() < 4 || size < 1 || size % 2 == 0) {
    return ffi::Error::InvalidArgument(
        "LRN: expected an NHWC input (leading axes as the batch) and an odd window");
  }
  return ffi::Error::Success();
}

ffi::Error LrnForwardImpl(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y, int64_t size,
                          float alpha, float beta, float k) {
  if (auto error = check_lrn(x.dimensions(), size); !error.success()) return error;
  return guarded("alexnet_lrn_forward", [&] {
    const auto& lrn = lrn_for(x.dimensions(), size, alpha, beta, k);
    dnnl::stream stream(cpu_engine());
    lrn.forward.execute(stream, {{DNNL_ARG_SRC, wrap(lrn.x, x.typed_data())},
                                 {DNNL_ARG_DST, wrap(lrn.x, y->typed_data())},
                                 {DNNL_ARG_SCRATCHPAD,
                                  working_memory(0, lrn.forward_pd.scratchpad_desc())}});
    stream.wait();
  });
}

#if defined(__x86_64__)
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

// sum[c] = sum_{i < size} padded[c + i], for the `channels` sums of a window over a row padded
// with size / 2 zeros on each side.
VECTOR_CLONES void window_sums(const float* padded, int64_t channels, int64_t size, float* sum) {
  for (int64_t c = 0; c < channels; ++c) sum[c] = padded[c];
  for (int64_t i = 1; i < size; ++i)
    for (int64_t c = 0; c < channels; ++c) sum[c] += padded[c + i];
}

// d^-beta for the `channels` denominators of a row; for beta = 0.75 as lrn.inverse_power does.
VECTOR_CLONES void inverse_powers(const float* d, int64_t channels, float beta, float* s) {
  if (beta == 0.75f) {  // rsqrt(d) * sqrt(rsqrt(d))
    for (int64_t c = 0; c < channels; ++c) {
      const float r = 1.0f / std::sqrt(d[c]);
      s[c] = r * std::sqrt(r);
    }
  } else {
    for (int64_t c = 0; c < channels; ++c) s[c] = std::pow(d[c], -beta);
  }
}

// The input gradient of `pixels` rows of `channels` values, by lrn.py's formula:
//   d = k + alpha sum_window a^2,  s = d^-beta,
//   da[j] = g[j] s[j] - 2 alpha beta a[j] sum_{c: j in window(c)} g[c] a[c] s[c] / d[c]
// (the window is symmetric for an odd size, so it is its own mirror).  `scratch` holds
// 3 * channels + 2 * (size / 2) floats, the first channels + 2 * (size / 2) of them zeros.
VECTOR_CLONES void lrn_gradient_rows(const float* a, const float* g, float* da, int64_t pixels,
                                     int64_t channels, int64_t size, float alpha, float beta,
                                     float k, float* scratch) {
  float* padded = scratch;  // a row with size / 2 zeros on each side
  float* row = padded + size / 2;
  float* d = padded + channels + 2 * (size / 2);
  float* s = d + channels;
  for (int64_t p = 0; p < pixels; ++p, a += channels, g += channels, da += channels) {
    for (int64_t c = 0; c < channels; ++c) row[c] = a[c] * a[c];
    window_sums(padded, channels, size, d);
    for (int64_t c = 0; c < channels; ++c) d[c] = k + alpha * d[c];
    inverse_powers(d, channels, beta, s);
    for (int64_t c = 0; c < channels; ++c) row[c] = g[c] * a[c] * s[c] / d[c];
    window_sums(padded, channels, size, d);  // d now holds the spread
    for (int64_t c = 0; c < channels; ++c)
      da[c] = g[c] * s[c] - 2.0f * alpha * beta * a[c] * d[c];
  }
}

// The input gradient in one pass over the input and the cotangent, in place of oneDNN's LRN
// backward: that reads a workspace of twice the input's size, which its training forward
// writes, and oneDNN 3.2's is wrong for some channel counts and crashes for a window of 1.
ffi::Error LrnBackwardImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                           ffi::ResultBuffer<ffi::F32> dx, int64_t size, float alpha, float beta,
                           float k) {
  if (auto error = check_lrn(x.dimensions(), size); !error.success()) return error;
  const int64_t channels = x.dimensions().back();
  const int64_t pixels = channels == 0 ? 0 : static_cast<int64_t>(x.element_count()) / channels;
  const float* a = x.typed_data();
  const float* g = dy.typed_data();
  float* da = dx->typed_data();
  constexpr int64_t kRows = 256;  // rows (pixels) per task
  bool failed = false;
#pragma omp parallel
  {
    // Each thread's scratch.  No exception may leave the region, and every thread must reach
    // the loop's barrier: a thread without scratch says so and skips its rows.
    std::vector<float> scratch;
    try {
      scratch.resize(3 * channels + 2 * (size / 2));
    } catch (const std::bad_alloc&) {
#pragma omp atomic write
      failed = true;
    }
#pragma omp for schedule(static)
    for (int64_t start = 0; start < pixels; start += kRows) {
      if (scratch.empty()) continue;
      lrn_gradient_rows(a + start * channels, g + start * channels, da + start * channels,
                        std::min(kRows, pixels - start), channels, size, alpha, beta, k,
                        scratch.data());
    }
  }
  if (failed) return ffi::Error::Internal("alexnet_lrn_backward: out of memory");
  return ffi::Error::Success();
}


// --- matrix products ---------------------------------------------------------------------------

// c = op(a) @ op(b) for row-major matrices, op transposing where asked, by oneDNN's sgemm (the
// kernel of its inner product, which TensorFlow's dense layers run).
ffi::Error MatmulImpl(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                      ffi::ResultBuffer<ffi::F32> c, bool transpose_a, bool transpose_b) {
  const auto ad = a.dimensions(), bd = b.dimensions(), cd = c->dimensions();
  if (ad.size() != 2 || bd.size() != 2 || cd.size() != 2) {
    return ffi::Error::InvalidArgument("alexnet_matmul: expected matrices");
  }
  const int64_t m = transpose_a ? ad[1] : ad[0], k = transpose_a ? ad[0] : ad[1];
  const int64_t n = transpose_b ? bd[0] : bd[1];
  if ((transpose_b ? bd[1] : bd[0]) != k || cd[0] != m || cd[1] != n) {
    return ffi::Error::InvalidArgument("alexnet_matmul: the matrices' shapes do not agree");
  }
  if (m == 0 || n == 0) return ffi::Error::Success();
  if (k == 0) {
    std::fill_n(c->typed_data(), m * n, 0.0f);
    return ffi::Error::Success();
  }
  const dnnl_status_t status =
      dnnl_sgemm(transpose_a ? 'T' : 'N', transpose_b ? 'T' : 'N', m, n, k, 1.0f, a.typed_data(),
                 ad[1], b.typed_data(), bd[1], 0.0f, c->typed_data(), n);
  if (status != dnnl_success) {
    return ffi::Error::Internal("alexnet_matmul: oneDNN's sgemm failed with status " +
                                std::to_string(static_cast<int>(status)));
  }
  return ffi::Error::Success();
}

// --- max-pooling -------------------------------------------------------------------------------

// Whether the max so far, `m`, gives way to `v`: a greater value, or the first NaN (XLA's max
// propagates NaNs).
inline bool takes_over(float v, float m) { return v > m || (v != v && m == m); }

// Channels from `c` of one output pixel: the max over the taps' input pixels, and the first
// tap that holds it.
void pool_channels(const float* const* taps, int64_t count, int64_t c, int64_t channels,
                   float* y, int8_t* first) {
  for (; c < channels; ++c) {
    y[c] = taps[0][c];
    first[c] = 0;
    for (int64_t t = 1; t < count; ++t) {
      if (takes_over(taps[t][c], y[c])) {
        y[c] = taps[t][c];
        first[c] = static_cast<int8_t>(t);
      }
    }
  }
}

#if defined(__x86_64__)
// The same, sixteen channels at a time in AVX-512 registers (the compiler's own vectorization
// of pool_channels falls back to scalar code).
__attribute__((target("avx512f"))) void pool_channels_avx512(const float* const* taps,
                                                             int64_t count, int64_t channels,
                                                             float* y, int8_t* first) {
  int64_t c = 0;
  for (; c + 16 <= channels; c += 16) {
    __m512 m = _mm512_loadu_ps(taps[0] + c);
    __m512i winner = _mm512_setzero_si512();
    for (int64_t t = 1; t < count; ++t) {
      const __m512 v = _mm512_loadu_ps(taps[t] + c);
      const __mmask16 take = _mm512_cmp_ps_mask(v, m, _CMP_GT_OQ) |
                             (_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) &
                              _mm512_cmp_ps_mask(m, m, _CMP_ORD_Q));
      m = _mm512_mask_blend_ps(take, m, v);
      winner = _mm512_mask_blend_epi32(take, winner, _mm512_set1_epi32(static_cast<int>(t)));
    }
    _mm512_storeu_ps(y + c, m);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(first + c), _mm512_cvtepi32_epi8(winner));
  }
  pool_channels(taps, count, c, channels, y, first);
}
#endif

bool pooling_vectorized() {
#if defined(__x86_64__)
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return avx512;
#else
  return false;
#endif
}

// One output pixel's `channels` values.
void pool_pixel(const float* const* taps, int64_t count, int64_t channels, float* y,
                int8_t* first) {
#if defined(__x86_64__)
  if (pooling_vectorized()) return pool_channels_avx512(taps, count, channels, y, first);
#endif
  pool_channels(taps, count, 0, channels, y, first);
}

// dx_row += g where first == tap, for `channels` values.
VECTOR_CLONES void route_row(const float* __restrict g, const int8_t* __restrict first, int8_t tap,
                             int64_t channels, float* __restrict dx) {
  for (int64_t c = 0; c < channels; ++c) dx[c] += first[c] == tap ? g[c] : 0.0f;
}

struct Pooling {
  int64_t images, height, width, channels, out_height, out_width;
};

ffi::Error pooling(ffi::Span<const int64_t> x, ffi::Span<const int64_t> y, int64_t window,
                   int64_t stride, Pooling* p) {
  const size_t r = x.size();
  if (r < 4 || y.size() != r || window < 1 || stride < 1 || window * window > 127) {
    return ffi::Error::InvalidArgument(
        "max-pooling: expected NHWC maps (leading axes as the batch) and a window of 1-11");
  }
  if (!std::equal(x.begin(), x.end() - 3, y.begin())) {
    return ffi::Error::InvalidArgument("max-pooling: batch axes differ");
  }
  *p = {leading_images(x), x[r - 3], x[r - 2], x[r - 1], y[r - 3], y[r - 2]};
  if (y[r - 1] != p->channels || (p->out_height - 1) * stride + window > p->height ||
      (p->out_width - 1) * stride + window > p->width) {
    return ffi::Error::InvalidArgument("max-pooling: the output's shape does not fit the input");
  }
  return ffi::Error::Success();
}

// The pooled maps (VALID windows) and each output's first winning tap (row-major in the window).
ffi::Error MaxPoolImpl(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y,
                       ffi::ResultBuffer<ffi::S8> first, int64_t window, int64_t stride) {
  Pooling p;
  if (auto error = pooling(x.dimensions(), y->dimensions(), window, stride, &p); !error.success())
    return error;
  const int64_t rows = p.images * p.out_height, count = window * window, c = p.channels;
  const float* in = x.typed_data();
  float* out = y->typed_data();
  int8_t* taps_out = first->typed_data();
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t image = row / p.out_height, oh = row % p.out_height;
    std::array<const float*, 128> taps;
    for (int64_t ow = 0; ow < p.out_width; ++ow) {
      for (int64_t i = 0; i < window; ++i)
        for (int64_t j = 0; j < window; ++j)
          taps[i * window + j] =
              in + ((image * p.height + oh * stride + i) * p.width + ow * stride + j) * c;
      const int64_t o = (row * p.out_width + ow) * c;
      pool_pixel(taps.data(), count, c, out + o, taps_out + o);
    }
  }
  return ffi::Error::Success();
}

// The input gradient: each output's cotangent to its first winning tap.  Images run in
// parallel; within one, windows that overlap add into the same inputs in order.
ffi::Error MaxPoolBackwardImpl(ffi::Buffer<ffi::S8> first, ffi::Buffer<ffi::F32> dy,
                               ffi::ResultBuffer<ffi::F32> dx, int64_t window, int64_t stride) {
  Pooling p;
  if (auto error = pooling(dx->dimensions(), dy.dimensions(), window, stride, &p);
      !error.success())
    return error;
  if (first.element_count() != dy.element_count()) {
    return ffi::Error::InvalidArgument("max-pooling: the winning taps and dy differ in shape");
  }
  const int64_t c = p.channels, image_size = p.height * p.width * c;
  const int64_t out_size = p.out_height * p.out_width * c;
  const float* g = dy.typed_data();
  const int8_t* taps = first.typed_data();
  float* grad = dx->typed_data();
#pragma omp parallel for schedule(static)
  for (int64_t image = 0; image < p.images; ++image) {
    float* d = grad + image * image_size;
    std::fill_n(d, image_size, 0.0f);
    for (int64_t oh = 0; oh < p.out_height; ++oh)
      for (int64_t ow = 0; ow < p.out_width; ++ow) {
        const int64_t o = image * out_size + (oh * p.out_width + ow) * c;
        for (int64_t i = 0; i < window; ++i)
          for (int64_t j = 0; j < window; ++j)
            route_row(g + o, taps + o, static_cast<int8_t>(i * window + j), c,
                      d + ((oh * stride + i) * p.width + ow * stride + j) * c);
      }
  }
  return ffi::Error::Success();
}

}  // namespace

// Whether max-pooling runs vectorized here (AVX-512); XLA's form is faster than the scalar loop.
extern "C" int AlexnetMaxPoolVectorized() { return pooling_vectorized() ? 1 : 0; }

// Whether oneDNN runs the LRN forward of these NHWC maps with a kernel of its own for this CPU,
// not its reference loop ("ref:any"), which is slower than XLA's form: oneDNN's kernels for
// channels-last maps need AVX-512 (or ONEDNN_MAX_CPU_ISA allowing it).  Which one it picks
// depends on the shape, the window and the CPU, not on alpha, beta or k (the paper's here).
extern "C" int AlexnetLrnForwardIsJit(int64_t n, int64_t h, int64_t w, int64_t c, int64_t size) {
  try {
    const auto pd = lrn_forward_pd(n, h, w, c, size, 1e-4f, 0.75f, 2.0f);
    return std::string(pd.impl_info_str()).rfind("ref", 0) == 0 ? 0 : 1;
  } catch (...) {
    return 0;
  }
}

#define CONV_ATTRS                                                                   \
  .Attr<int64_t>("stride").Attr<int64_t>("pad_top").Attr<int64_t>("pad_bottom")      \
      .Attr<int64_t>("pad_left").Attr<int64_t>("pad_right")

XLA_FFI_DEFINE_HANDLER_SYMBOL(AlexnetConvForward, ConvForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(AlexnetConvBackward, ConvBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(AlexnetConvBackwardWeights, ConvBackwardWeightsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CONV_ATTRS);

#define LRN_ATTRS .Attr<int64_t>("size").Attr<float>("alpha").Attr<float>("beta").Attr<float>("k")

XLA_FFI_DEFINE_HANDLER_SYMBOL(AlexnetLrnForward, LrnForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() LRN_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(AlexnetLrnBackward, LrnBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() LRN_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(AlexnetMatmul, MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("transpose_a")
                                  .Attr<bool>("transpose_b"));

#define POOL_ATTRS .Attr<int64_t>("window").Attr<int64_t>("stride")

XLA_FFI_DEFINE_HANDLER_SYMBOL(AlexnetMaxPool, MaxPoolImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S8>>() POOL_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(AlexnetMaxPoolBackward, MaxPoolBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() POOL_ATTRS);
