// Appose protocol library: lenient parsing, strict emitting, line framing.
#include <tessera/appose.hpp>

#include <gtest/gtest.h>

#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace ap = tessera::appose;
namespace json = boost::json;

namespace {

bool is_ascii_single_line(const std::string& s) {
  if (s.empty() || s.back() != '\n') return false;
  for (std::size_t i = 0; i + 1 < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80 || c == '\n') return false;
  }
  return true;
}

}  // namespace

// ---- requests -------------------------------------------------------------------

TEST(ApposeParse, ExecuteWithAllFieldsParses) {
  auto r = ap::parse_request(
      R"({"task":"abc","requestType":"EXECUTE","script":"ping","inputs":{"x":1},"queue":"main"})");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r.value().task, "abc");
  EXPECT_EQ(r.value().type, ap::RequestType::execute);
  EXPECT_EQ(r.value().script, "ping");
  EXPECT_EQ(r.value().inputs.at("x").as_int64(), 1);
  ASSERT_TRUE(r.value().queue.has_value());
  EXPECT_EQ(*r.value().queue, "main");
}

TEST(ApposeParse, ExecuteWithoutInputsOrQueueGetsDefaults) {
  auto r = ap::parse_request(R"({"task":"t","requestType":"EXECUTE","script":"s"})");
  ASSERT_TRUE(r);
  EXPECT_TRUE(r.value().inputs.empty());
  EXPECT_FALSE(r.value().queue.has_value());
  auto n = ap::parse_request(R"({"task":"t","requestType":"EXECUTE","script":"s","inputs":null,"queue":null})");
  ASSERT_TRUE(n);
  EXPECT_TRUE(n.value().inputs.empty());
  EXPECT_FALSE(n.value().queue.has_value());
}

TEST(ApposeParse, CancelParses) {
  auto r = ap::parse_request(R"({"task":"123e4567-e89b-12d3-a456-426614174000","requestType":"CANCEL"})");
  ASSERT_TRUE(r);
  EXPECT_EQ(r.value().type, ap::RequestType::cancel);
  EXPECT_EQ(r.value().task, "123e4567-e89b-12d3-a456-426614174000");  // opaque, kept as is
}

TEST(ApposeParse, BlankLinesAreTypedErrors) {
  for (const char* s : {"", "   ", "\t\r", "\r\n"}) {
    auto r = ap::parse_request(s);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ap::ParseErrc::blank) << '"' << s << '"';
  }
}

TEST(ApposeParse, MalformedLinesAreTypedErrors) {
  for (const char* s : {"{", "hello from script", R"({"task":"a",})", "{}{}",
                        R"({"task":"a","requestType":"EXECUTE"}{"task":"b","requestType":"EXECUTE"})"}) {
    auto r = ap::parse_request(s);
    ASSERT_FALSE(r) << s;
    EXPECT_EQ(r.error().code, ap::ParseErrc::malformed) << s;
    EXPECT_FALSE(r.error().message.empty());
  }
}

TEST(ApposeParse, NonObjectJsonIsRejected) {
  for (const char* s : {"[1,2]", "42", "\"x\"", "null"}) {
    auto r = ap::parse_request(s);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ap::ParseErrc::not_object) << s;
  }
}

TEST(ApposeParse, MissingFieldsAreReported) {
  auto a = ap::parse_request(R"({"requestType":"EXECUTE","script":"s"})");
  ASSERT_FALSE(a);
  EXPECT_EQ(a.error().code, ap::ParseErrc::missing_field);
  auto b = ap::parse_request(R"({"task":"t"})");
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code, ap::ParseErrc::missing_field);
  auto c = ap::parse_request(R"({"task":"t","requestType":"EXECUTE"})");
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code, ap::ParseErrc::missing_field);
}

TEST(ApposeParse, WrongFieldTypesAreReported) {
  for (const char* s : {R"({"task":7,"requestType":"EXECUTE","script":"s"})",
                        R"({"task":"t","requestType":1,"script":"s"})",
                        R"({"task":"t","requestType":"EXECUTE","script":["s"]})",
                        R"({"task":"t","requestType":"EXECUTE","script":"s","inputs":[1]})",
                        R"({"task":"t","requestType":"EXECUTE","script":"s","queue":3})"}) {
    auto r = ap::parse_request(s);
    ASSERT_FALSE(r) << s;
    EXPECT_EQ(r.error().code, ap::ParseErrc::wrong_type) << s;
  }
}

TEST(ApposeParse, UnknownRequestTypeIsTyped) {
  auto r = ap::parse_request(R"({"task":"t","requestType":"FROBNICATE"})");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ap::ParseErrc::unknown_type);
  EXPECT_NE(r.error().message.find("FROBNICATE"), std::string::npos);
}

TEST(ApposeParse, BareNanAndInfinityTokensAreAcceptedAsNull) {
  auto r = ap::parse_request(
      R"({"task":"t","requestType":"EXECUTE","script":"s","inputs":{"a":NaN,"b":Infinity,"c":-Infinity,"d":[NaN, 1]}})");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_TRUE(r.value().inputs.at("a").is_null());
  EXPECT_TRUE(r.value().inputs.at("b").is_null());
  EXPECT_TRUE(r.value().inputs.at("c").is_null());
  EXPECT_TRUE(r.value().inputs.at("d").as_array()[0].is_null());
  EXPECT_EQ(r.value().inputs.at("d").as_array()[1].as_int64(), 1);
}

TEST(ApposeParse, NanInsideStringsIsLeftAlone) {
  std::size_t n = 99;
  const std::string out = ap::replace_nonfinite_tokens(R"({"s":"NaN Infinity \" NaN","v":NaN,"w":NaNo})", &n);
  EXPECT_EQ(out, R"({"s":"NaN Infinity \" NaN","v":null,"w":NaNo})");
  EXPECT_EQ(n, 1u);
}

TEST(ApposeParse, ShmSizeIsAcceptedAsAliasOfRsize) {
  auto r = ap::parse_request(
      R"({"task":"t","requestType":"EXECUTE","script":"s","inputs":{"img":{"appose_type":"ndarray","dtype":"float32","shape":[2],"shm":{"appose_type":"shm","name":"psm_1234abcd","size":8}}}})");
  ASSERT_TRUE(r);
  const auto& shm = r.value().inputs.at("img").as_object().at("shm").as_object();
  EXPECT_EQ(shm.at("rsize").as_int64(), 8);
  EXPECT_FALSE(shm.contains("size"));
}

// ---- responses ------------------------------------------------------------------

TEST(ApposeParse, EveryResponseTypeParses) {
  auto l = ap::parse_response(R"({"task":"t","responseType":"LAUNCH"})");
  ASSERT_TRUE(l);
  EXPECT_EQ(l.value().type, ap::ResponseType::launch);
  auto u = ap::parse_response(
      R"({"task":"t","responseType":"UPDATE","message":"m","current":2,"maximum":5,"info":{"k":1}})");
  ASSERT_TRUE(u);
  EXPECT_EQ(u.value().type, ap::ResponseType::update);
  EXPECT_EQ(*u.value().message, "m");
  EXPECT_EQ(*u.value().current, 2);
  EXPECT_EQ(*u.value().maximum, 5);
  EXPECT_EQ(u.value().info->at("k").as_int64(), 1);
  auto c = ap::parse_response(R"({"task":"t","responseType":"COMPLETION","outputs":{"y":[1,2]}})");
  ASSERT_TRUE(c);
  EXPECT_EQ(c.value().type, ap::ResponseType::completion);
  EXPECT_EQ(c.value().outputs->at("y").as_array().size(), 2u);
  auto k = ap::parse_response(R"({"task":"t","responseType":"CANCELATION"})");
  ASSERT_TRUE(k);
  EXPECT_EQ(k.value().type, ap::ResponseType::cancelation);
  auto f = ap::parse_response(R"({"task":"t","responseType":"FAILURE","error":"boom"})");
  ASSERT_TRUE(f);
  EXPECT_EQ(f.value().type, ap::ResponseType::failure);
  EXPECT_EQ(*f.value().error, "boom");
}

TEST(ApposeParse, ClientMadeCrashResponseIsUnknown) {
  auto r = ap::parse_response(R"({"task":"t","responseType":"CRASH"})");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ap::ParseErrc::unknown_type);
}

TEST(ApposeParse, UpdateWithWronglyTypedFieldsIsRejected) {
  for (const char* s : {R"({"task":"t","responseType":"UPDATE","current":"3"})",
                        R"({"task":"t","responseType":"UPDATE","info":[1]})",
                        R"({"task":"t","responseType":"UPDATE","message":5})",
                        R"({"task":"t","responseType":"UPDATE","maximum":1.5})"}) {
    auto r = ap::parse_response(s);
    ASSERT_FALSE(r) << s;
    EXPECT_EQ(r.error().code, ap::ParseErrc::wrong_type) << s;
  }
}

TEST(ApposeParse, CompletionWithNonObjectOutputsBecomesFailureNotLost) {
  auto r = ap::parse_response(R"({"task":"t","responseType":"COMPLETION","outputs":[1]})");
  ASSERT_TRUE(r);
  EXPECT_EQ(r.value().type, ap::ResponseType::failure);
  EXPECT_NE(r.value().error->find("outputs"), std::string::npos);
}

TEST(ApposeParse, UpdateWithNullInfoAsPythonWorkerSendsIt) {
  auto r = ap::parse_response(R"({"task":"t","responseType":"UPDATE","message":"x","info":null})");
  ASSERT_TRUE(r);
  EXPECT_FALSE(r.value().info.has_value());
}

// ---- emitting -------------------------------------------------------------------

TEST(ApposeEmit, NonAsciiIsEscapedAndLineIsAscii) {
  ap::Response r;
  r.task = "t";
  r.type = ap::ResponseType::failure;
  r.error = "gr\xc3\xbc\xc3\x9f \xe2\x82\xac \xf0\x9f\x98\x80 \n\"q\" \x01";
  const std::string line = ap::encode(r);
  EXPECT_TRUE(is_ascii_single_line(line)) << line;
  EXPECT_NE(line.find("\\u00fc"), std::string::npos);
  EXPECT_NE(line.find("\\u20ac"), std::string::npos);
  EXPECT_NE(line.find("\\ud83d\\ude00"), std::string::npos);
  // Round trip: the escaped line decodes back to the same UTF-8 text.
  auto back = ap::parse_response(line);
  ASSERT_TRUE(back);
  EXPECT_EQ(*back.value().error, *r.error);
}

TEST(ApposeEmit, InvalidUtf8BecomesReplacementCharacter) {
  const std::string s = ap::to_ascii_json(json::value("a\xff" "b\xc3"));
  EXPECT_EQ(s, "\"a\\ufffdb\\ufffd\"");
}

TEST(ApposeEmit, NonFiniteDoublesAreEmittedAsNull) {
  json::object o;
  o["nan"] = std::nan("");
  o["inf"] = std::numeric_limits<double>::infinity();
  o["x"] = 1.5;
  const std::string s = ap::to_ascii_json(o);
  EXPECT_EQ(s.find("NaN"), std::string::npos);
  EXPECT_EQ(s.find("Infinity"), std::string::npos);
  auto back = json::parse(s).as_object();
  EXPECT_TRUE(back.at("nan").is_null());
  EXPECT_TRUE(back.at("inf").is_null());
  EXPECT_DOUBLE_EQ(back.at("x").as_double(), 1.5);
}

TEST(ApposeEmit, ExecuteRequestHasPythonClientKeyOrder) {
  ap::Request r;
  r.task = "id1";
  r.script = "go";
  r.inputs["a"] = 1;
  const std::string line = ap::encode(r);
  EXPECT_EQ(line, "{\"task\":\"id1\",\"requestType\":\"EXECUTE\",\"script\":\"go\",\"inputs\":{\"a\":1},\"queue\":null}\n");
  ap::Request c;
  c.task = "id1";
  c.type = ap::RequestType::cancel;
  EXPECT_EQ(ap::encode(c), "{\"task\":\"id1\",\"requestType\":\"CANCEL\"}\n");
}

TEST(ApposeEmit, EveryResponseTypeRoundTrips) {
  for (auto t : {ap::ResponseType::launch, ap::ResponseType::update, ap::ResponseType::completion,
                 ap::ResponseType::cancelation, ap::ResponseType::failure}) {
    ap::Response r;
    r.task = "t-" + std::string(ap::to_string(t));
    r.type = t;
    if (t == ap::ResponseType::update) {
      r.message = "half";
      r.current = 1;
      r.maximum = 2;
    }
    if (t == ap::ResponseType::completion) r.outputs = json::object{{"v", 3}};
    if (t == ap::ResponseType::failure) r.error = "bad";
    const std::string line = ap::encode(r);
    ASSERT_TRUE(is_ascii_single_line(line)) << line;
    auto back = ap::parse_response(line);
    ASSERT_TRUE(back) << line;
    EXPECT_EQ(back.value().type, t);
    EXPECT_EQ(back.value().task, r.task);
    EXPECT_EQ(back.value().message, r.message);
    EXPECT_EQ(back.value().current, r.current);
    EXPECT_EQ(back.value().error, r.error);
  }
}

TEST(ApposeEmit, UpdateAlwaysCarriesTypedFieldsOnly) {
  ap::Response r;
  r.task = "t";
  r.type = ap::ResponseType::update;
  r.current = 3;
  const auto o = json::parse(ap::encode(r)).as_object();
  EXPECT_TRUE(o.at("current").is_int64());
  EXPECT_TRUE(o.at("info").is_null());
  EXPECT_FALSE(o.contains("maximum"));
  EXPECT_FALSE(o.contains("message"));
}

// ---- framing --------------------------------------------------------------------

TEST(ApposeNumbers, EveryDoubleRoundTripsBitForBit) {
  // Boost.JSON 1.81's own parser gets some of these 1 ulp wrong; ours must not.
  std::mt19937_64 rng(20261201);
  int checked = 0;
  for (int i = 0; i < 20000; ++i) {
    const std::uint64_t bits = rng();
    double d = 0;
    std::memcpy(&d, &bits, sizeof d);
    if (!std::isfinite(d)) continue;
    char text[64];
    // Shortest round-trip text, always with an exponent (as Python writes floats: never a bare integer).
    const auto end = std::to_chars(text, text + sizeof text, d, std::chars_format::scientific).ptr;
    const std::string line = R"({"task":"t","responseType":"COMPLETION","outputs":{"d":)" + std::string(text, end) + "}}";
    auto r = ap::parse_response(line);
    ASSERT_TRUE(r) << r.error().message;
    const json::value& v = r.value().outputs->at("d");
    ASSERT_TRUE(v.is_double()) << line;
    const double d1 = v.get_double();
    ASSERT_EQ(std::memcmp(&d1, &d, sizeof d), 0) << line;
    // ... and emitting it again gives a text that reads back to the same bits.
    auto again = ap::parse_response(ap::encode(r.value()));
    ASSERT_TRUE(again);
    const double d2 = again.value().outputs->at("d").get_double();
    ASSERT_EQ(std::memcmp(&d2, &d, sizeof d), 0) << ap::encode(r.value());
    ++checked;
  }
  EXPECT_GT(checked, 19000);
}

TEST(ApposeNumbers, IntegersBeyond64BitsStayIntegers) {
  const std::string line =
      R"({"task":"t","requestType":"EXECUTE","script":"s","inputs":{"a":1180591620717411303424,)"
      R"("b":-1180591620717411303427,"c":18446744073709551615,"d":-9223372036854775808,"e":[100000000000000000000000000000007]}})";
  auto r = ap::parse_request(line);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_TRUE(r.value().inputs.at("c").is_uint64());
  EXPECT_TRUE(r.value().inputs.at("d").is_int64());
  const std::string out = ap::encode(r.value());
  EXPECT_NE(out.find(R"("a":1180591620717411303424,)"), std::string::npos) << out;
  EXPECT_NE(out.find(R"("b":-1180591620717411303427,)"), std::string::npos) << out;
  EXPECT_NE(out.find(R"("c":18446744073709551615,)"), std::string::npos) << out;
  EXPECT_NE(out.find(R"("d":-9223372036854775808,)"), std::string::npos) << out;
  EXPECT_NE(out.find(R"("e":[100000000000000000000000000000007])"), std::string::npos) << out;
  // A number with a fraction or exponent is a double, however long.
  auto f = ap::parse_request(R"({"task":"t","requestType":"EXECUTE","script":"s","inputs":{"x":1e400,"y":2.0e1}})");
  ASSERT_TRUE(f);
  EXPECT_TRUE(f.value().inputs.at("y").is_double());
  EXPECT_NE(ap::encode(f.value()).find(R"("x":null)"), std::string::npos) << "out of range -> infinite -> null";
}

TEST(LineFramer, ReassemblesPartialLines) {
  ap::LineFramer f(64);
  std::vector<std::string> lines;
  int overflows = 0;
  auto on_line = [&](std::string_view l) { lines.emplace_back(l); };
  auto on_over = [&](std::size_t) { ++overflows; };
  f.feed("{\"a\":", on_line, on_over);
  EXPECT_TRUE(lines.empty());
  f.feed("1}\n{\"b\"", on_line, on_over);
  f.feed(":2}\n\n", on_line, on_over);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0], "{\"a\":1}");
  EXPECT_EQ(lines[1], "{\"b\":2}");
  EXPECT_EQ(lines[2], "");
  EXPECT_EQ(overflows, 0);
}

TEST(LineFramer, OverlongLineIsDiscardedAndReportedOnce) {
  ap::LineFramer f(8);
  std::vector<std::string> lines;
  std::vector<std::size_t> overflows;
  auto on_line = [&](std::string_view l) { lines.emplace_back(l); };
  auto on_over = [&](std::size_t n) { overflows.push_back(n); };
  f.feed("0123456", on_line, on_over);
  f.feed("789abcdef", on_line, on_over);
  f.feed("ghij\nok\n", on_line, on_over);
  ASSERT_EQ(overflows.size(), 1u);
  EXPECT_EQ(overflows[0], 20u);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0], "ok");
}

TEST(LineFramer, FinishReturnsTrailingPartialLine) {
  ap::LineFramer f;
  std::vector<std::string> lines;
  f.feed("a\nbc", [&](std::string_view l) { lines.emplace_back(l); }, [](std::size_t) {});
  auto rest = f.finish();
  ASSERT_TRUE(rest.has_value());
  EXPECT_EQ(*rest, "bc");
  EXPECT_FALSE(f.finish().has_value());
}

// Found by tessera_fuzz_appose_json: keys differing only in invalid UTF-8 bytes became one
// key once emitted (both bad bytes turn into U+FFFD), so the line did not round-trip.
TEST(ApposeParse, ObjectKeysThatAreNotUtf8AreMalformedSoEveryEmittedLineRoundTrips) {
  const auto bad = tessera::appose::parse_object("{\"\xa0x\":1,\"\xddx\":2}");
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code, tessera::appose::ParseErrc::malformed);
  const auto ok = tessera::appose::parse_object("{\"\xef\xbf\xbdx\":1,\"v\":\"\xa0 bad bytes in values stay lenient\"}");
  ASSERT_TRUE(ok.has_value());
  const std::string e = tessera::appose::to_ascii_json(ok.value());
  const auto again = tessera::appose::parse_object(e);
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(tessera::appose::to_ascii_json(again.value()), e);
}
