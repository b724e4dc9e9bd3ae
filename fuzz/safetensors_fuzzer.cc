// Fuzz target: a whole safetensors file (8-byte header length, JSON header, data) into
// model/safetensors.h SafetensorsFile::Open. Invariants: no crash, errors carry a message, and
// every tensor of an accepted file has nbytes == numel * dtype size and exactly the bytes its
// header's data_offsets name inside the file (re-read here from the input: a view pointing
// anywhere else, e.g. past the mapping's last page, fails).
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "fuzz/fuzz_util.h"
#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace specprune;
  fuzz::MemFile file(data, size);
  auto opened = SafetensorsFile::Open(file.path());
  if (!opened.ok()) {
    fuzz::CheckError(opened.status(), "SafetensorsFile::Open");
    return 0;
  }
  const SafetensorsFile& st = **opened;
  // Open accepted the file, so the header parses (keys are unique) and every offset is in range.
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | data[i];
  const std::optional<nlohmann::json> header = fuzz::ParseJson(data + 8, header_len);
  fuzz::Check(header.has_value() && header->is_object(), "accepted header is not a JSON object");
  const uint8_t* buffer = data + 8 + header_len;
  for (const std::string& name : st.names()) {
    const TensorView* view = st.Find(name);
    fuzz::Check(view != nullptr, "a listed tensor is not found", name);
    fuzz::Check(view->nbytes == static_cast<size_t>(view->numel()) * DTypeSize(view->dtype),
                "nbytes != numel * dtype size", name);
    const nlohmann::json& offsets = header->at(name).at("data_offsets");
    const uint64_t begin = offsets.at(0).get<uint64_t>();
    const uint64_t end = offsets.at(1).get<uint64_t>();
    fuzz::Check(begin <= end && end <= size - 8 - header_len, "view outside the data", name);
    fuzz::Check(end - begin == view->nbytes, "view size != data_offsets", name);
    fuzz::Check(view->nbytes == 0 || std::memcmp(view->data, buffer + begin, view->nbytes) == 0,
                "view bytes differ from the file", name);
  }
  return 0;
}
