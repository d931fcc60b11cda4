// Log-mel filterbank identical in definition to lhotse's Fbank(FbankConfig(num_mel_bins=80))
// (lhotse/features/kaldi/layers.py: Wav2LogFilterBank), the features asrq trains on:
//   16 kHz, 25 ms frames (400 samples) every 10 ms (160), snip_edges=False (frames =
//   (S + 80) // 160, the signal reflected at both ends, 120 samples on the left),
//   per frame: remove DC, preemphasis 0.97 (first sample against itself), povey window
//   (hann(400, periodic=False) ** 0.85), zero-pad to 512, |rfft|^2, 80 triangular mel bins over
//   20 Hz .. 8000 - 400 Hz (torchaudio-compatible mel banks, Nyquist bin weight 0),
//   log(max(energy, FLT_EPSILON)). Dither 0. No CMVN: the model applies it in its graph.
#pragma once

#include <complex>
#include <vector>

namespace asrq {

struct FbankOptions {
  int sample_rate = 16000;
  int frame_length = 400;  // samples (25 ms)
  int frame_shift = 160;   // samples (10 ms)
  int fft_size = 512;      // next power of two of frame_length
  int num_bins = 80;
  double low_freq = 20.0;
  double high_freq = -400.0;  // <= 0: offset from Nyquist
  double preemph = 0.97;
};

class Fbank {
 public:
  explicit Fbank(const FbankOptions& opts = FbankOptions());

  // samples (S,) in [-1, 1] -> row-major (T, num_bins), T = (S + shift / 2) / shift.
  std::vector<float> compute(const std::vector<float>& samples, int* num_frames) const;
  int num_bins() const { return opts_.num_bins; }

 private:
  void fft(std::vector<std::complex<double>>& a) const;  // in place, radix 2

  FbankOptions opts_;
  std::vector<double> window_;                 // (frame_length,)
  std::vector<std::vector<double>> mel_;       // (num_bins, fft_size / 2 + 1)
  std::vector<int> mel_begin_, mel_end_;       // non-zero range of each bin
  std::vector<std::complex<double>> twiddle_;  // (fft_size / 2,)
  std::vector<int> bitrev_;                    // (fft_size,)
};

}  // namespace asrq
