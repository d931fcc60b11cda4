#include "fbank.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <stdexcept>

namespace asrq {
namespace {

constexpr double kPi = 3.14159265358979323846;
double lin2mel(double f) { return 1127.0 * std::log(1.0 + f / 700.0); }

}  // namespace

Fbank::Fbank(const FbankOptions& o) : opts_(o) {
  const int n = o.frame_length, nfft = o.fft_size;
  if (nfft < n || (nfft & (nfft - 1)) != 0)
    throw std::invalid_argument("fft_size must be a power of two >= frame_length");
  window_.resize(size_t(n));
  for (int i = 0; i < n; ++i)  // povey: hann(N, periodic=False) ** 0.85
    window_[size_t(i)] = std::pow(0.5 - 0.5 * std::cos(2.0 * kPi * i / (n - 1)), 0.85);

  // mel banks as lhotse's get_mel_banks (ported from torchaudio.compliance.kaldi)
  const double nyquist = 0.5 * o.sample_rate;
  const double high = o.high_freq <= 0.0 ? o.high_freq + nyquist : o.high_freq;
  const double bin_width = double(o.sample_rate) / nfft;
  const double mel_low = lin2mel(o.low_freq), mel_high = lin2mel(high);
  const double delta = (mel_high - mel_low) / (o.num_bins + 1);
  const int num_fft_bins = nfft / 2;
  mel_.assign(size_t(o.num_bins), std::vector<double>(size_t(num_fft_bins + 1), 0.0));
  mel_begin_.assign(size_t(o.num_bins), num_fft_bins + 1);
  mel_end_.assign(size_t(o.num_bins), 0);
  for (int b = 0; b < o.num_bins; ++b) {
    const double left = mel_low + b * delta, center = mel_low + (b + 1) * delta,
                 right = mel_low + (b + 2) * delta;
    for (int k = 0; k < num_fft_bins; ++k) {  // the Nyquist bin keeps weight 0
      const double mel = lin2mel(bin_width * k);
      const double up = (mel - left) / (center - left), down = (right - mel) / (right - center);
      const double w = std::max(0.0, std::min(up, down));
      if (w > 0.0) {
        mel_[size_t(b)][size_t(k)] = w;
        mel_begin_[size_t(b)] = std::min(mel_begin_[size_t(b)], k);
        mel_end_[size_t(b)] = std::max(mel_end_[size_t(b)], k + 1);
      }
    }
  }
  twiddle_.resize(size_t(nfft / 2));
  for (int k = 0; k < nfft / 2; ++k) twiddle_[size_t(k)] = std::polar(1.0, -2.0 * kPi * k / nfft);
  bitrev_.resize(size_t(nfft));
  int bits = 0;
  while ((1 << bits) < nfft) ++bits;
  for (int i = 0; i < nfft; ++i) {
    int r = 0;
    for (int b = 0; b < bits; ++b) r |= ((i >> b) & 1) << (bits - 1 - b);
    bitrev_[size_t(i)] = r;
  }
}

void Fbank::fft(std::vector<std::complex<double>>& a) const {
  const int n = opts_.fft_size;
  for (int i = 0; i < n; ++i)
    if (i < bitrev_[size_t(i)]) std::swap(a[size_t(i)], a[size_t(bitrev_[size_t(i)])]);
  for (int len = 2; len <= n; len <<= 1) {
    const int half = len / 2, step = n / len;
    for (int s = 0; s < n; s += len)
      for (int j = 0; j < half; ++j) {
        const std::complex<double> t = twiddle_[size_t(j * step)] * a[size_t(s + j + half)];
        a[size_t(s + j + half)] = a[size_t(s + j)] - t;
        a[size_t(s + j)] += t;
      }
  }
}

std::vector<float> Fbank::compute(const std::vector<float>& x, int* num_frames) const {
  const int n = opts_.frame_length, shift = opts_.frame_shift, nfft = opts_.fft_size;
  const long s = long(x.size());
  const long frames = (s + shift / 2) / shift;
  *num_frames = int(frames);
  std::vector<float> out(size_t(frames) * size_t(opts_.num_bins));
  if (frames == 0) return out;
  // snip_edges=False: reflect (n - shift) / 2 samples on the left, the rest on the right
  const long pad_left = (n - shift) / 2;
  auto sample = [&](long j) -> double {  // index into the padded signal
    long i = j - pad_left;
    if (i < 0) i = -1 - i;                 // x[pad_left - 1 - j]: flip(x[:pad_left])
    else if (i >= s) i = 2 * s - 1 - i;   // flip(x[-npad_right:])
    if (i < 0 || i >= s) throw std::runtime_error("audio too short for fbank reflection padding");
    return double(x[size_t(i)]);
  };
  std::vector<double> frame(static_cast<size_t>(n));
  std::vector<std::complex<double>> spec(static_cast<size_t>(nfft));
  std::vector<double> power(static_cast<size_t>(nfft / 2 + 1));
  for (long t = 0; t < frames; ++t) {
    double mean = 0.0;
    for (int i = 0; i < n; ++i) {
      frame[size_t(i)] = sample(t * shift + i);
      mean += frame[size_t(i)];
    }
    mean /= n;
    for (int i = 0; i < n; ++i) frame[size_t(i)] -= mean;
    for (int i = n - 1; i > 0; --i) frame[size_t(i)] -= opts_.preemph * frame[size_t(i - 1)];
    frame[0] -= opts_.preemph * frame[0];
    for (int i = 0; i < nfft; ++i)
      spec[size_t(i)] = i < n ? frame[size_t(i)] * window_[size_t(i)] : 0.0;
    fft(spec);
    for (int k = 0; k <= nfft / 2; ++k) power[size_t(k)] = std::norm(spec[size_t(k)]);
    float* row = out.data() + size_t(t) * size_t(opts_.num_bins);
    for (int b = 0; b < opts_.num_bins; ++b) {
      double e = 0.0;
      for (int k = mel_begin_[size_t(b)]; k < mel_end_[size_t(b)]; ++k)
        e += mel_[size_t(b)][size_t(k)] * power[size_t(k)];
      row[b] = float(std::log(std::max(e, double(FLT_EPSILON))));
    }
  }
  return out;
}

}  // namespace asrq
