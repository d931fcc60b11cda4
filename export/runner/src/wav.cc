#include "wav.h"

#include <cstdint>
#include <cstring>
#include <fstream>
#include <stdexcept>

namespace asrq {
namespace {

uint32_t u32(const unsigned char* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
uint16_t u16(const unsigned char* p) { return uint16_t(p[0] | p[1] << 8); }

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error(path + ": " + what);
}

}  // namespace

Wav read_wav(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, "cannot open audio file");
  std::vector<unsigned char> buf((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (buf.size() < 12 || std::memcmp(buf.data(), "RIFF", 4) != 0 ||
      std::memcmp(buf.data() + 8, "WAVE", 4) != 0)
    fail(path, "not a RIFF/WAVE file (convert to 16 kHz wav first)");
  int format = -1, channels = 0, rate = 0, bits = 0;
  const unsigned char* data = nullptr;
  size_t data_size = 0;
  size_t pos = 12;
  while (pos + 8 <= buf.size()) {
    const unsigned char* h = buf.data() + pos;
    size_t size = u32(h + 4);
    size_t avail = buf.size() - pos - 8;
    if (std::memcmp(h, "fmt ", 4) == 0) {
      if (size < 16 || size > avail) fail(path, "truncated fmt chunk");
      format = u16(h + 8);
      channels = u16(h + 10);
      rate = int(u32(h + 12));
      bits = u16(h + 22);
      if (format == 0xFFFE && size >= 26) format = u16(h + 8 + 24);  // WAVE_FORMAT_EXTENSIBLE
    } else if (std::memcmp(h, "data", 4) == 0) {
      data = h + 8;
      data_size = size > avail ? avail : size;  // tolerate a streamed header's bogus size
      break;
    }
    pos += 8 + size + (size & 1);
  }
  if (format < 0) fail(path, "no fmt chunk");
  if (!data) fail(path, "no data chunk");
  if (channels < 1) fail(path, "bad channel count");
  const bool is_int = format == 1 && (bits == 16 || bits == 24 || bits == 32);
  const bool is_float = format == 3 && bits == 32;
  if (!is_int && !is_float)
    fail(path, "unsupported wav encoding (format " + std::to_string(format) + ", " +
                   std::to_string(bits) + " bits); use PCM 16-bit or float32");
  const size_t bps = size_t(bits / 8);
  const size_t frames = data_size / (bps * size_t(channels));
  if (frames == 0) fail(path, "audio file holds no samples");
  Wav w;
  w.sample_rate = rate;
  w.channels = channels;
  w.samples.assign(frames, 0.0f);
  for (size_t i = 0; i < frames; ++i) {
    float acc = 0.0f;
    for (int c = 0; c < channels; ++c) {
      const unsigned char* p = data + (i * size_t(channels) + size_t(c)) * bps;
      float v;
      if (is_float) {
        std::memcpy(&v, p, 4);
      } else if (bits == 16) {
        v = float(int16_t(u16(p))) / 32768.0f;
      } else if (bits == 24) {
        int32_t s = int32_t(uint32_t(p[0]) << 8 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 24) >> 8;
        v = float(s) / 8388608.0f;
      } else {
        v = float(double(int32_t(u32(p))) / 2147483648.0);
      }
      acc += v;
    }
    w.samples[i] = channels > 1 ? acc / float(channels) : acc;
  }
  return w;
}

}  // namespace asrq
