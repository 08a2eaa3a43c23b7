// safetensors: the real test files, write/read round trips, zero-copy semantics, sharded
// checkpoints, and one test per malformed input.
#include <torch/torch.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common.h"
#include "lumen/error.h"
#include "lumen/files.h"
#include "lumen/safetensors.h"
#include "lumen/tensors.h"

namespace fs = std::filesystem;
using lumen::DType;
using lumen::Error;
using lumen::ErrorKind;
using lumen::TensorStore;

namespace {

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// A hand-made file: length prefix (or a lie about it), header text, then `data_bytes` bytes.
std::string raw_file(const std::string& header, size_t data_bytes, int64_t length_override = -1) {
  const uint64_t n = length_override >= 0 ? static_cast<uint64_t>(length_override) : header.size();
  return le64(n) + header + std::string(data_bytes, '\0');
}

// Every .safetensors file under the shared test data.
std::vector<std::string> real_files() {
  std::vector<std::string> out;
  for (const char* sub : {"testdata/models", "testdata/llama2c"}) {
    const std::string root = lumen_test::shared_path(sub);
    if (!lumen_test::path_exists(root)) continue;
    for (const auto& p : fs::recursive_directory_iterator(root))
      if (p.is_regular_file() && p.path().extension() == ".safetensors") out.push_back(p.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Which file (if any) backs the mapping that holds address p, from /proc/self/maps.
std::string mapping_of(const void* p) {
  const auto addr = reinterpret_cast<uintptr_t>(p);
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    std::istringstream ss(line);
    std::string range, perms, offset, dev, inode, path;
    ss >> range >> perms >> offset >> dev >> inode;
    std::getline(ss >> std::ws, path);
    const auto dash = range.find('-');
    const uintptr_t lo = std::stoull(range.substr(0, dash), nullptr, 16);
    const uintptr_t hi = std::stoull(range.substr(dash + 1), nullptr, 16);
    if (addr >= lo && addr < hi) return path;
  }
  return "";
}

// Opening `path` must fail with a one-line Error of `kind` naming the file and containing `needle`.
void expect_open_error(const std::string& path, const std::string& needle, ErrorKind kind = ErrorKind::Format) {
  try {
    TensorStore::open(path);
    ADD_FAILURE() << "no error opening " << path << " (expected '" << needle << "')";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(e.kind(), kind) << msg;
    EXPECT_NE(msg.find(path), std::string::npos) << "message does not name the file: " << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << "message lacks '" << needle << "': " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message is not one line: " << msg;
  }
}

class SafetensorsBad : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = lumen_test::temp_dir("st_bad"); }
  void TearDown() override { fs::remove_all(dir_); }
  // Writes the bytes to a fresh file and checks the error.
  void expect_bad(const std::string& bytes, const std::string& needle) {
    const std::string path = dir_ + "/bad" + std::to_string(count_++) + ".safetensors";
    write_bytes(path, bytes);
    expect_open_error(path, needle);
  }
  std::string dir_;
  int count_ = 0;
};

}  // namespace

// ---- real files -------------------------------------------------------------------------------

TEST(SafetensorsReal, EveryTestFileReadsWithMatchingDtypesAndShapes) {
  LUMEN_REQUIRE_SHARED("testdata/models");
  const auto files = real_files();
  ASSERT_GE(files.size(), 50u);
  std::set<std::string> dtypes_seen;
  for (const auto& path : files) {
    SCOPED_TRACE(path);
    const TensorStore store = TensorStore::open(path);
    ASSERT_FALSE(store.names().empty());
    EXPECT_EQ(store.metadata().count("format"), 1u);
    const std::string raw = lumen::read_file(path);
    const auto header = lumen::parse_safetensors_header(reinterpret_cast<const uint8_t*>(raw.data()), raw.size(), path);
    for (const auto& name : store.names()) {
      const auto& e = store.entry(name);
      const at::Tensor t = store.get(name);
      dtypes_seen.insert(lumen::dtype_name(e.dtype));
      EXPECT_EQ(t.scalar_type(), lumen::dtype_to_torch(e.dtype)) << name;
      EXPECT_EQ(t.sizes().vec(), e.shape) << name;
      EXPECT_TRUE(t.is_contiguous());
      // The tensor's bytes are exactly the file's bytes at data_offsets.
      ASSERT_EQ(static_cast<size_t>(t.numel()) * t.element_size(), e.end - e.begin);
      EXPECT_EQ(std::memcmp(t.data_ptr(), raw.data() + header.data_start + e.begin, e.end - e.begin), 0) << name;
    }
  }
  for (const char* d : {"F32", "F16", "BF16", "F64", "I64"}) EXPECT_EQ(dtypes_seen.count(d), 1u) << d;
}

TEST(SafetensorsReal, KnownTensorsHaveDocumentedShapesAndValues) {
  LUMEN_REQUIRE_SHARED("testdata/models");
  const std::string m = lumen_test::shared_path("testdata/models/");
  const TensorStore a = TensorStore::open(m + "gpt2_a");  // a folder resolves to model.safetensors
  EXPECT_EQ(a.get("h.0.attn.c_attn.weight").sizes().vec(), (std::vector<int64_t>{64, 192}));
  EXPECT_EQ(a.get("h.0.attn.bias").sizes().vec(), (std::vector<int64_t>{1, 1, 128, 128}));
  EXPECT_EQ(a.get("wte.weight").scalar_type(), at::kFloat);
  EXPECT_EQ(a.file_of("wte.weight"), m + "gpt2_a/model.safetensors");

  // The half-precision models are gpt2_a rounded to nearest even: reading the wrong dtype or
  // byte order could not reproduce torch's own rounding bit for bit.
  const TensorStore h = TensorStore::open(m + "gpt2_a_fp16/model.safetensors");
  const TensorStore b = TensorStore::open(m + "gpt2_a_bf16/model.safetensors");
  for (const auto& name : h.names()) {
    ASSERT_TRUE(a.has(name)) << name;
    EXPECT_TRUE(a.get(name).to(at::kHalf).equal(h.get(name))) << name;
    EXPECT_TRUE(a.get(name).to(at::kBFloat16).equal(b.get(name))) << name;
  }

  // T=1 feeds the single id V-1; vocab is 512.
  const TensorStore ref = TensorStore::open(m + "gpt2_a/ref/T1.f64.safetensors");
  const at::Tensor ids = ref.get("input_ids");
  EXPECT_EQ(ids.scalar_type(), at::kLong);
  ASSERT_EQ(ids.numel(), 1);
  EXPECT_EQ(ids.item<int64_t>(), 511);
  EXPECT_EQ(ref.get("logits").scalar_type(), at::kDouble);
  EXPECT_EQ(ref.get("logits").sizes().vec(), (std::vector<int64_t>{1, 512}));
}

TEST(SafetensorsReal, MissingTensorNamesFileAndSuggestsPrefixedName) {
  LUMEN_REQUIRE_SHARED("testdata/models");
  const std::string path = lumen_test::shared_path("testdata/models/gpt2_b/model.safetensors");
  const TensorStore s = TensorStore::open(path);
  try {
    s.get("wte.weight");
    FAIL() << "no error for a missing tensor";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(e.kind(), ErrorKind::Format);
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find("'wte.weight'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("transformer.wte.weight"), std::string::npos) << msg;  // the hint
  }
  EXPECT_THROW(s.entry("nope"), Error);
  EXPECT_THROW(s.file_of("nope"), Error);
  EXPECT_FALSE(s.has("nope"));
}

// Mutated real headers must parse or throw lumen::Error, never crash (a tiny in-tree fuzz).
TEST(SafetensorsReal, MutatedHeadersNeverCrash) {
  LUMEN_REQUIRE_SHARED("testdata/models");
  const std::string raw = lumen::read_file(lumen_test::shared_path("testdata/models/llama_a/ref/T1.safetensors"));
  std::mt19937 rng(1234);
  int errors = 0;
  for (int i = 0; i < 3000; ++i) {
    std::string m = raw;
    const size_t span = std::min<size_t>(m.size(), 8 + 2048);
    for (int k = 0; k < 1 + static_cast<int>(rng() % 4); ++k) m[rng() % span] = static_cast<char>(rng() & 0xff);
    if (rng() % 8 == 0) m.resize(rng() % m.size());
    try {
      lumen::parse_safetensors_header(reinterpret_cast<const uint8_t*>(m.data()), m.size(), "mutant");
    } catch (const Error& e) {
      ++errors;
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    }
  }
  EXPECT_GT(errors, 0);
}

// ---- writing ----------------------------------------------------------------------------------

TEST(SafetensorsWrite, RoundTripEveryDtypeWithMetadata) {
  const std::string dir = lumen_test::temp_dir("st_rt");
  const std::string path = dir + "/all.safetensors";
  torch::manual_seed(7);
  std::vector<std::pair<std::string, at::Tensor>> in = {
      {"f64", torch::randn({3, 5}, at::kDouble)},
      {"f32", torch::randn({4, 6})},
      {"f16", torch::randn({7}).to(at::kHalf)},
      {"bf16", torch::randn({2, 3, 4}).to(at::kBFloat16)},
      {"i64", torch::tensor({int64_t{-1}, int64_t{1} << 40, int64_t{7}})},
      {"i32", torch::randint(-1000, 1000, {9}, at::kInt)},
      {"i16", torch::randint(-300, 300, {5}, at::kShort)},
      {"i8", torch::randint(-100, 100, {11}, at::kChar)},
      {"u8", torch::randint(0, 255, {13}, at::kByte)},
      {"bool", torch::rand({3, 3}) > 0.5},
      {"scalar", torch::tensor(3.5)},
      {"empty", torch::zeros({0, 4})},
      {"strided", torch::arange(12, at::kFloat).reshape({3, 4}).t()},  // non-contiguous
  };
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "round \"trip\"\n"}};
  lumen::save_safetensors(path, in, meta);

  const TensorStore s = TensorStore::open(path);
  EXPECT_EQ(s.metadata(), meta);
  EXPECT_EQ(s.names().size(), in.size());
  for (const auto& [name, t] : in) {
    SCOPED_TRACE(name);
    const at::Tensor r = s.get(name);
    EXPECT_EQ(r.scalar_type(), t.scalar_type());
    EXPECT_EQ(r.sizes(), t.sizes());
    EXPECT_TRUE(r.equal(t.contiguous()));
  }

  // Layout like the reference library: header padded to 8, data by element size desc then name.
  const std::string raw = lumen::read_file(path);
  uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  const auto h = lumen::parse_safetensors_header(reinterpret_cast<const uint8_t*>(raw.data()), raw.size(), path);
  size_t data_bytes = 0;
  for (const auto& e : h.tensors) data_bytes += e.end - e.begin;
  EXPECT_EQ(raw.size(), h.data_start + data_bytes);  // no gaps, no trailing bytes
  std::vector<const lumen::TensorEntry*> by_offset;
  for (const auto& e : h.tensors) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const auto* a = by_offset[i - 1];
    const auto* b = by_offset[i];
    if (a->begin == a->end || b->begin == b->end) continue;  // empty tensors sit anywhere
    const size_t sa = lumen::dtype_size(a->dtype), sb = lumen::dtype_size(b->dtype);
    EXPECT_TRUE(sa > sb || (sa == sb && a->name < b->name)) << a->name << " before " << b->name;
    EXPECT_EQ(b->begin % sb, 0u) << b->name;
  }
  fs::remove_all(dir);
}

TEST(SafetensorsWrite, RejectsDuplicateNamesAndUnsupportedDtypes) {
  const std::string dir = lumen_test::temp_dir("st_wbad");
  const std::string path = dir + "/x.safetensors";
  EXPECT_THROW(lumen::save_safetensors(path, {{"a", torch::ones({2})}, {"a", torch::ones({2})}}), Error);
  EXPECT_THROW(lumen::save_safetensors(path, {{"__metadata__", torch::ones({2})}}), Error);
  EXPECT_THROW(lumen::save_safetensors(path, {{"c", torch::ones({2}, at::kComplexFloat)}}), Error);
  EXPECT_THROW(lumen::dtype_from_torch(at::kComplexDouble), Error);
  EXPECT_FALSE(lumen::file_exists(path));
  EXPECT_TRUE(fs::is_empty(dir));
  fs::remove_all(dir);
}

TEST(SafetensorsWrite, FailedAtomicWriteKeepsPreviousFileAndLeavesNoTemp) {
  const std::string dir = lumen_test::temp_dir("st_atomic");
  const std::string path = dir + "/w.safetensors";
  lumen::save_safetensors(path, {{"w", torch::arange(10, at::kFloat)}});
  const std::string before = lumen::read_file(path);
  EXPECT_THROW(lumen::write_file_atomic(path,
                                        [](std::ostream& out) {
                                          out << std::string(4096, 'x');  // half a file, then failure
                                          throw Error(ErrorKind::Io, "simulated failure mid-write");
                                        }),
               Error);
  EXPECT_EQ(lumen::read_file(path), before);
  std::vector<std::string> left;
  for (const auto& p : fs::directory_iterator(dir)) left.push_back(p.path().filename().string());
  EXPECT_EQ(left, std::vector<std::string>{"w.safetensors"});
  EXPECT_TRUE(TensorStore::open(path).get("w").equal(torch::arange(10, at::kFloat)));
  fs::remove_all(dir);
}

// ---- zero-copy --------------------------------------------------------------------------------

TEST(SafetensorsZeroCopy, SharesTheMappingAndWritesNeverReachTheFile) {
  const std::string dir = lumen_test::temp_dir("st_zc");
  const std::string path = dir + "/z.safetensors";
  const at::Tensor w = torch::randn({16, 16});
  lumen::save_safetensors(path, {{"w", w}, {"b", torch::ones({16}, at::kHalf)}});
  const std::string bytes = lumen::read_file(path);

  at::Tensor t;
  {
    const TensorStore s = TensorStore::open(path);
    t = s.get("w");
    EXPECT_EQ(mapping_of(t.data_ptr()), fs::canonical(path).string()) << "not a view of the file mapping";
    EXPECT_EQ(mapping_of(s.get("b").data_ptr()), fs::canonical(path).string());
  }
  // The store is gone; the tensor keeps the mapping alive.
  EXPECT_EQ(mapping_of(t.data_ptr()), fs::canonical(path).string());
  EXPECT_TRUE(t.equal(w));
  t.mul_(2).add_(1);  // private copy-on-write pages
  EXPECT_TRUE(t.equal(w * 2 + 1));
  EXPECT_EQ(lumen::read_file(path), bytes) << "writing to the tensor changed the file";
  EXPECT_TRUE(TensorStore::open(path).get("w").equal(w));

  const void* p = t.data_ptr();
  t = at::Tensor();  // last reference: the mapping goes away
  EXPECT_NE(mapping_of(p), fs::canonical(path).string());
  fs::remove_all(dir);
}

TEST(SafetensorsZeroCopy, MisalignedDataIsCopied) {
  const std::string dir = lumen_test::temp_dir("st_mis");
  const std::string path = dir + "/m.safetensors";
  // Header of odd length, so the F32 data starts at an address that is not 4-aligned.
  std::string header = R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})";
  if ((8 + header.size()) % 4 == 0) header += " ";
  std::string bytes = le64(header.size()) + header;
  const float vals[3] = {1.5f, -2.0f, 3.25f};
  bytes.append(reinterpret_cast<const char*>(vals), sizeof vals);
  write_bytes(path, bytes);

  const TensorStore s = TensorStore::open(path);
  const at::Tensor t = s.get("x");
  EXPECT_TRUE(t.equal(torch::tensor({1.5f, -2.0f, 3.25f})));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data_ptr()) % 4, 0u);
  EXPECT_NE(mapping_of(t.data_ptr()), fs::canonical(path).string());
  fs::remove_all(dir);
}

TEST(SafetensorsHeader, KeepsHeaderOrderAndNonMonotonicOffsets) {
  const std::string header =
      R"({"z":{"dtype":"I8","shape":[2],"data_offsets":[8,10]},"__metadata__":{"k":"v"},)"
      R"("a":{"dtype":"F64","shape":[],"data_offsets":[0,8]},"e":{"dtype":"BOOL","shape":[0,5],"data_offsets":[10,10]}})";
  const std::string bytes = raw_file(header, 10);
  const auto h = lumen::parse_safetensors_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "mem");
  ASSERT_EQ(h.tensors.size(), 3u);
  EXPECT_EQ(h.tensors[0].name, "z");
  EXPECT_EQ(h.tensors[1].name, "a");
  EXPECT_EQ(h.tensors[2].name, "e");
  EXPECT_EQ(h.tensors[1].numel(), 1);
  EXPECT_EQ(h.tensors[2].numel(), 0);
  EXPECT_EQ(h.metadata.at("k"), "v");
  EXPECT_EQ(h.data_start, 8 + header.size());
}

// ---- sharded checkpoints ----------------------------------------------------------------------

TEST(SafetensorsSharded, TwoShardsAndIndexLoad) {
  const std::string dir = lumen_test::temp_dir("st_shard");
  const at::Tensor a = torch::randn({4, 4}), b = torch::arange(6, at::kLong), c = torch::randn({3}).to(at::kHalf);
  lumen::save_safetensors(dir + "/model-00001-of-00002.safetensors", {{"layer.0.w", a}, {"layer.0.b", b}},
                          {{"format", "pt"}});
  lumen::save_safetensors(dir + "/model-00002-of-00002.safetensors", {{"layer.1.w", c}}, {{"format", "pt"}});
  const nlohmann::json index = {
      {"metadata", {{"total_size", 4 * 16 + 8 * 6 + 2 * 3}}},
      {"weight_map",
       {{"layer.0.w", "model-00001-of-00002.safetensors"},
        {"layer.0.b", "model-00001-of-00002.safetensors"},
        {"layer.1.w", "model-00002-of-00002.safetensors"}}}};
  write_bytes(dir + "/model.safetensors.index.json", index.dump(2));

  for (const std::string& path : {dir, dir + "/model.safetensors.index.json"}) {
    SCOPED_TRACE(path);
    const TensorStore s = TensorStore::open(path);
    EXPECT_EQ(s.names(), (std::vector<std::string>{"layer.0.b", "layer.0.w", "layer.1.w"}));
    EXPECT_TRUE(s.get("layer.0.w").equal(a));
    EXPECT_TRUE(s.get("layer.0.b").equal(b));
    EXPECT_TRUE(s.get("layer.1.w").equal(c));
    EXPECT_EQ(s.file_of("layer.1.w"), dir + "/model-00002-of-00002.safetensors");
    EXPECT_EQ(s.metadata().at("total_size"), "118");
    EXPECT_EQ(s.metadata().at("format"), "pt");
  }

  // An index naming a tensor its shard lacks is stale.
  nlohmann::json stale = index;
  stale["weight_map"]["layer.9.w"] = "model-00002-of-00002.safetensors";
  write_bytes(dir + "/stale.index.json", stale.dump());
  expect_open_error(dir + "/stale.index.json", "'layer.9.w'");

  // A missing shard is named, together with the index that wants it.
  fs::remove(dir + "/model-00002-of-00002.safetensors");
  expect_open_error(dir, "model-00002-of-00002.safetensors", ErrorKind::Io);
  fs::remove_all(dir);
}

TEST(SafetensorsSharded, FolderWithoutCheckpointAndMissingFileAreIoErrors) {
  const std::string dir = lumen_test::temp_dir("st_empty");
  expect_open_error(dir, "model.safetensors", ErrorKind::Io);
  expect_open_error(dir + "/nope.safetensors", "cannot open", ErrorKind::Io);
  write_bytes(dir + "/bad.index.json", "{\"weight_map\": 3}");
  expect_open_error(dir + "/bad.index.json", "weight_map");
  write_bytes(dir + "/bad2.index.json", "{not json");
  expect_open_error(dir + "/bad2.index.json", "not valid JSON");
  fs::remove_all(dir);
}

// ---- malformed files: each must fail with a one-line message naming the file ------------------

TEST_F(SafetensorsBad, TruncatedFile) {
  expect_bad(std::string("\x10\x00\x00", 3), "too short");
  const std::string ok = raw_file(R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 16);
  expect_bad(ok.substr(0, ok.size() - 3), "past the end");
}

TEST_F(SafetensorsBad, HeaderLongerThanFile) {
  expect_bad(raw_file("{}", 0, 4000), "exceeds");
}

TEST_F(SafetensorsBad, HeaderLengthAbsurd) {
  expect_bad(raw_file("{}", 0, int64_t{1} << 60), "absurd");
  expect_bad(le64(~uint64_t{0}) + "{}", "absurd");
}

TEST_F(SafetensorsBad, HeaderNotJson) {
  expect_bad(raw_file("{\"x\": [1, 2", 0), "not valid JSON");
  expect_bad(raw_file("\xff\xfe garbage \n", 0), "not valid JSON");
}

TEST_F(SafetensorsBad, HeaderNotAnObject) {
  expect_bad(raw_file("[1, 2, 3]   ", 0), "expected an object");
  expect_bad(raw_file("\"str\"", 0), "expected an object");
}

TEST_F(SafetensorsBad, UnknownDtype) {
  expect_bad(raw_file(R"({"x":{"dtype":"Q4","shape":[2],"data_offsets":[0,2]}})", 2), "unknown dtype 'Q4'");
}

TEST_F(SafetensorsBad, EntryFieldsMissingOrWrongType) {
  expect_bad(raw_file(R"({"x":{"shape":[2],"data_offsets":[0,8]}})", 8), "'dtype'");
  expect_bad(raw_file(R"({"x":{"dtype":"F32","data_offsets":[0,8]}})", 8), "'shape'");
  expect_bad(raw_file(R"({"x":{"dtype":"F32","shape":[2]}})", 8), "data_offsets");
  expect_bad(raw_file(R"({"x":[1,2]})", 8), "not a JSON object");
  expect_bad(raw_file(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8,9]}})", 8), "data_offsets");
}

TEST_F(SafetensorsBad, BadShapes) {
  expect_bad(raw_file(R"({"x":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), "shape entry -2");
  expect_bad(raw_file(R"({"x":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8), "shape entry");
  expect_bad(raw_file(R"({"x":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", 8), "shape entry");
  expect_bad(raw_file(R"({"x":{"dtype":"U8","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}})", 0),
             "too many elements");
  expect_bad(raw_file(R"({"x":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,0]}})", 0),
             "shape entry");
}

TEST_F(SafetensorsBad, ByteCountDoesNotMatchShape) {
  expect_bad(raw_file(R"({"h.0.w":{"dtype":"F32","shape":[64,192],"data_offsets":[0,1024]}})", 1024),
             "tensor 'h.0.w' has 1024 bytes but F32 x [64,192] needs 49152");
}

TEST_F(SafetensorsBad, OffsetsPastTheEnd) {
  expect_bad(raw_file(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 12), "past the end");
  expect_bad(raw_file(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[18446744073709551608,18446744073709551615]}})", 8),
             "'x'");
}

TEST_F(SafetensorsBad, BeginAfterEnd) {
  expect_bad(raw_file(R"({"x":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8), "begin > end");
}

TEST_F(SafetensorsBad, OverlappingRanges) {
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                      12),
             "overlap");
  // Identical ranges (two names for the same bytes) overlap too.
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                      R"("b":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})",
                      8),
             "overlap");
}

TEST_F(SafetensorsBad, DuplicateKeys) {
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                      16),
             "duplicate tensor name 'a'");
  expect_bad(raw_file(R"({"a":{"dtype":"F32","dtype":"I32","shape":[2],"data_offsets":[0,8]}})", 8),
             "duplicate key 'dtype'");
}

TEST_F(SafetensorsBad, MetadataNotAStringMap) {
  expect_bad(raw_file(R"({"__metadata__":{"n":3}})", 0), "expected a string");
  expect_bad(raw_file(R"({"__metadata__":[1]})", 0), "__metadata__");
}

TEST_F(SafetensorsBad, BoolBytesOtherThanZeroOrOne) {
  const std::string path = dir_ + "/bool.safetensors";
  std::string bytes = raw_file(R"({"m":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}})", 0) + std::string("\x01\x00\x07", 3);
  write_bytes(path, bytes);
  const TensorStore s = TensorStore::open(path);
  try {
    s.get("m");
    FAIL() << "no error for a BOOL byte of 7";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'m'"), std::string::npos) << e.what();
  }
}

TEST_F(SafetensorsBad, ControlCharactersInNamesStayOnOneLine) {
  expect_bad(raw_file("{\"bad\\nname\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,3]}}", 3), "bad\\x0aname");
}

TEST(SafetensorsDtype, NamesSizesAndTorchMapsAgree) {
  for (DType d : {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64, DType::I32, DType::I16, DType::I8,
                  DType::U8, DType::Bool}) {
    EXPECT_EQ(lumen::parse_dtype(lumen::dtype_name(d), "test"), d);
    EXPECT_EQ(lumen::dtype_from_torch(lumen::dtype_to_torch(d)), d);
    EXPECT_EQ(lumen::dtype_size(d), c10::elementSize(lumen::dtype_to_torch(d)));
  }
  EXPECT_THROW(lumen::parse_dtype("f32", "test"), Error);
}
