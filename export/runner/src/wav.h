// Minimal RIFF/WAVE reader: PCM 16/24/32-bit integer or 32-bit float, any channel count (mixed
// down by averaging), returned as float samples in [-1, 1] (int16 / 32768, as libsndfile does).
#pragma once

#include <string>
#include <vector>

namespace asrq {

struct Wav {
  int sample_rate = 0;
  int channels = 0;
  std::vector<float> samples;  // (S,) mono
};

// Throws std::runtime_error naming the file on anything it cannot read.
Wav read_wav(const std::string& path);

}  // namespace asrq
