#include "common/npy.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/dtype.h"
#include "common/status.h"

namespace asyncspade {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;

struct NpyHeader {
  std::string descr;
  bool fortran_order = false;
  std::vector<int64_t> shape;
  size_t data_offset = 0;
};

absl::Status Corrupt(const std::string& path, const std::string& what) {
  return absl::DataLossError(absl::StrCat(path, ": ", what, " (not a valid .npy file)"));
}

// The header is a Python dict literal such as
//   {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
// Only the three keys NumPy writes are read; the value of each is located after its key.
absl::StatusOr<std::string> DictValue(const std::string& path, const std::string& dict, const std::string& key) {
  const std::string quoted[] = {absl::StrCat("'", key, "'"), absl::StrCat("\"", key, "\"")};
  size_t pos = std::string::npos;
  for (const std::string& q : quoted) {
    pos = dict.find(q);
    if (pos != std::string::npos) {
      pos += q.size();
      break;
    }
  }
  if (pos == std::string::npos) return Corrupt(path, absl::StrCat("header has no '", key, "' entry"));
  pos = dict.find(':', pos);
  if (pos == std::string::npos) return Corrupt(path, absl::StrCat("header entry '", key, "' has no value"));
  ++pos;
  while (pos < dict.size() && dict[pos] == ' ') ++pos;
  if (pos >= dict.size()) return Corrupt(path, absl::StrCat("header entry '", key, "' has no value"));
  size_t end;
  if (dict[pos] == '(') {
    end = dict.find(')', pos);
    if (end == std::string::npos) return Corrupt(path, "unterminated shape tuple in header");
    return dict.substr(pos, end + 1 - pos);
  }
  if (dict[pos] == '\'' || dict[pos] == '"') {
    end = dict.find(dict[pos], pos + 1);
    if (end == std::string::npos) return Corrupt(path, "unterminated string in header");
    return dict.substr(pos + 1, end - pos - 1);
  }
  end = dict.find_first_of(",}", pos);
  if (end == std::string::npos) return Corrupt(path, "unterminated header dict");
  return std::string(absl::StripAsciiWhitespace(dict.substr(pos, end - pos)));
}

absl::StatusOr<NpyHeader> ParseHeader(const std::string& path, const std::string& bytes) {
  if (bytes.size() < kMagicLen + 4 || bytes.compare(0, kMagicLen, kMagic, kMagicLen) != 0) {
    return Corrupt(path, "missing the \\x93NUMPY magic");
  }
  const uint8_t major = static_cast<uint8_t>(bytes[6]);
  size_t header_len;
  size_t prefix;
  if (major == 1) {
    header_len = static_cast<uint8_t>(bytes[8]) | static_cast<size_t>(static_cast<uint8_t>(bytes[9])) << 8;
    prefix = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return Corrupt(path, "truncated header");
    header_len = 0;
    for (int i = 11; i >= 8; --i) header_len = (header_len << 8) | static_cast<uint8_t>(bytes[i]);
    prefix = 12;
  } else {
    return absl::UnimplementedError(absl::StrCat(path, ": .npy format version ", major, " is not supported (1-3)"));
  }
  if (prefix + header_len > bytes.size()) return Corrupt(path, "header length exceeds the file size");
  const std::string dict = bytes.substr(prefix, header_len);
  NpyHeader header;
  header.data_offset = prefix + header_len;
  ASSIGN_OR_RETURN(header.descr, DictValue(path, dict, "descr"));
  ASSIGN_OR_RETURN(std::string fortran, DictValue(path, dict, "fortran_order"));
  if (fortran != "False" && fortran != "True") {
    return Corrupt(path, absl::StrCat("fortran_order is '", fortran, "', expected True or False"));
  }
  header.fortran_order = fortran == "True";
  ASSIGN_OR_RETURN(std::string shape, DictValue(path, dict, "shape"));
  if (shape.size() < 2 || shape.front() != '(' || shape.back() != ')') {
    return Corrupt(path, absl::StrCat("shape '", shape, "' is not a tuple"));
  }
  for (absl::string_view part : absl::StrSplit(shape.substr(1, shape.size() - 2), ',', absl::SkipWhitespace())) {
    int64_t dim;
    std::string text(absl::StripAsciiWhitespace(part));
    if (!text.empty() && text.back() == 'L') text.pop_back();  // Python 2 longs
    if (!absl::SimpleAtoi(text, &dim) || dim < 0) {
      return Corrupt(path, absl::StrCat("shape '", shape, "' has an invalid dimension '", text, "'"));
    }
    header.shape.push_back(dim);
  }
  if (header.fortran_order && header.shape.size() > 1) {
    return absl::UnimplementedError(
        absl::StrCat(path, ": Fortran-order arrays are not supported; save with np.ascontiguousarray"));
  }
  return header;
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", path));
  return std::move(buffer).str();
}

// Element count of `shape` and whether the payload after the header holds exactly that many
// `elem_size`-byte elements.
absl::StatusOr<size_t> CheckPayload(const std::string& path, const NpyHeader& header, size_t file_size,
                                    size_t elem_size) {
  unsigned __int128 n = 1;
  for (int64_t d : header.shape) {
    n *= static_cast<uint64_t>(d);
    if (n > file_size) n = static_cast<unsigned __int128>(file_size) + 1;
  }
  const size_t payload = file_size - header.data_offset;
  if (n * elem_size != payload) {
    return absl::DataLossError(absl::StrCat(path, ": shape (", absl::StrJoin(header.shape, ", "), ") of '",
                                            header.descr, "' needs ", static_cast<uint64_t>(n * elem_size),
                                            " bytes of data but the file holds ", payload,
                                            " (truncated or corrupt)"));
  }
  return static_cast<size_t>(n);
}

template <typename T>
absl::Status WriteNpyImpl(const std::string& path, const char* descr, absl::Span<const T> data,
                          const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return absl::InvalidArgumentError(absl::StrCat("WriteNpy ", path, ": negative dimension ", d));
    n *= d;
  }
  if (static_cast<size_t>(n) != data.size()) {
    return absl::InvalidArgumentError(absl::StrCat("WriteNpy ", path, ": shape (", absl::StrJoin(shape, ", "),
                                                   ") has ", n, " elements but ", data.size(), " were given"));
  }
  std::string shape_text = absl::StrJoin(shape, ", ");
  if (shape.size() == 1) shape_text += ",";  // a 1-tuple in Python
  std::string dict = absl::StrCat("{'descr': '", descr, "', 'fortran_order': False, 'shape': (", shape_text, "), }");
  // NumPy pads magic + length + dict + '\n' to a multiple of 64 bytes so the data is aligned.
  const size_t unpadded = kMagicLen + 4 + dict.size() + 1;
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict.push_back('\n');
  if (dict.size() > 0xffff) return absl::InvalidArgumentError(absl::StrCat("WriteNpy ", path, ": shape too long"));
  std::string out(kMagic, kMagicLen);
  out.push_back('\x01');
  out.push_back('\x00');
  out.push_back(static_cast<char>(dict.size() & 0xff));
  out.push_back(static_cast<char>(dict.size() >> 8));
  out += dict;
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  if (!file) return absl::PermissionDeniedError(absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
  file.write(out.data(), static_cast<std::streamsize>(out.size()));
  // The host is little-endian (x86-64, aarch64), matching the '<' descriptor.
  file.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(T)));
  file.close();
  if (!file) return absl::DataLossError(absl::StrCat("error writing ", path));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<NpyArray<float>> ReadNpyFloat32(const std::string& path) {
  ASSIGN_OR_RETURN(std::string bytes, ReadWholeFile(path));
  ASSIGN_OR_RETURN(NpyHeader header, ParseHeader(path, bytes));
  NpyArray<float> out;
  out.shape = header.shape;
  const char* payload = bytes.data() + header.data_offset;
  if (header.descr == "<f4") {
    ASSIGN_OR_RETURN(size_t n, CheckPayload(path, header, bytes.size(), 4));
    out.data.resize(n);
    std::memcpy(out.data.data(), payload, n * 4);
  } else if (header.descr == "<f2") {
    ASSIGN_OR_RETURN(size_t n, CheckPayload(path, header, bytes.size(), 2));
    out.data.resize(n);
    for (size_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, payload + 2 * i, 2);
      out.data[i] = F16ToFloat(h);
    }
  } else if (header.descr == "<f8") {
    ASSIGN_OR_RETURN(size_t n, CheckPayload(path, header, bytes.size(), 8));
    out.data.resize(n);
    for (size_t i = 0; i < n; ++i) {
      double d;
      std::memcpy(&d, payload + 8 * i, 8);
      out.data[i] = static_cast<float>(d);
    }
  } else {
    return absl::InvalidArgumentError(absl::StrCat(path, ": dtype '", header.descr,
                                                   "' is not a little-endian float array; expected '<f4'"));
  }
  return out;
}

absl::StatusOr<NpyArray<int32_t>> ReadNpyInt32(const std::string& path) {
  ASSIGN_OR_RETURN(std::string bytes, ReadWholeFile(path));
  ASSIGN_OR_RETURN(NpyHeader header, ParseHeader(path, bytes));
  NpyArray<int32_t> out;
  out.shape = header.shape;
  const char* payload = bytes.data() + header.data_offset;
  if (header.descr == "<i4") {
    ASSIGN_OR_RETURN(size_t n, CheckPayload(path, header, bytes.size(), 4));
    out.data.resize(n);
    std::memcpy(out.data.data(), payload, n * 4);
  } else if (header.descr == "<i8") {
    ASSIGN_OR_RETURN(size_t n, CheckPayload(path, header, bytes.size(), 8));
    out.data.resize(n);
    for (size_t i = 0; i < n; ++i) {
      int64_t v;
      std::memcpy(&v, payload + 8 * i, 8);
      if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()) {
        return absl::OutOfRangeError(absl::StrCat(path, ": element ", i, " (", v, ") does not fit in int32"));
      }
      out.data[i] = static_cast<int32_t>(v);
    }
  } else {
    return absl::InvalidArgumentError(absl::StrCat(path, ": dtype '", header.descr,
                                                   "' is not a little-endian integer array; expected '<i4'"));
  }
  return out;
}

absl::Status WriteNpy(const std::string& path, absl::Span<const float> data, const std::vector<int64_t>& shape) {
  return WriteNpyImpl(path, "<f4", data, shape);
}

absl::Status WriteNpy(const std::string& path, absl::Span<const int32_t> data, const std::vector<int64_t>& shape) {
  return WriteNpyImpl(path, "<i4", data, shape);
}

}  // namespace asyncspade
