// `tessera inspect` against an arena created and held by another (real) process.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>

#include <boost/json.hpp>

#include "test_support.hpp"

namespace tessera {
namespace {

using namespace std::chrono_literals;
using test::Child;
namespace json = boost::json;

std::string helper() { return test::exe_dir() + "/tessera_mp_helper"; }
std::string cli() { return test::exe_dir() + "/tessera"; }

struct Holder {
  Child child;
  std::uint32_t slot = 0;
  int fd = -1;
};

// A child that creates its own arena, registers as "mp-holder" and holds `n` blocks.
std::optional<Holder> start_holder(int n) {
  Child::Options opt;
  opt.capture_stdout = true;
  auto c = Child::spawn(helper(), {"create-and-hold", test::unique_name("tessera-inspect"), std::to_string(n)}, opt);
  if (!c) return std::nullopt;
  auto line = c->read_line(10s);
  unsigned slot = 0;
  int fd = -1;
  if (!line || std::sscanf(line->c_str(), "ready %u %d", &slot, &fd) != 2) return std::nullopt;
  return Holder{std::move(*c), slot, fd};
}

struct CliRun {
  int status = -1;
  std::string out;
};

CliRun run_cli(const std::vector<std::string>& args) {
  Child::Options opt;
  opt.capture_stdout = true;
  auto c = Child::spawn(cli(), args, opt);
  if (!c) return {};
  CliRun r;
  r.out = c->read_all(20s);
  auto st = c->wait(20s);
  r.status = st && WIFEXITED(*st) ? WEXITSTATUS(*st) : -1;
  return r;
}

TEST(InspectCli, JsonListsEveryHeldBlockWithItsOwner) {
  auto h = start_holder(3);
  ASSERT_TRUE(h);
  const auto pid = static_cast<std::uint64_t>(h->child.pid());
  CliRun r = run_cli({"inspect", "--pid", std::to_string(pid), "--json"});
  ASSERT_EQ(r.status, 0) << r.out;
  json::value v = json::parse(r.out);
  const auto& root = v.as_object();
  EXPECT_EQ(root.at("arena").at("creator").at("pid").to_number<std::uint64_t>(), pid);
  EXPECT_TRUE(root.at("arena").at("creator").at("alive").as_bool());
  EXPECT_TRUE(root.at("arena").at("ready").as_bool());
  EXPECT_EQ(root.at("arena").at("fd").to_number<int>(), h->fd);

  bool found_participant = false;
  for (const auto& p : root.at("participants").as_array()) {
    if (p.at("name").as_string() != "mp-holder") continue;
    found_participant = true;
    EXPECT_EQ(p.at("slot").to_number<std::uint32_t>(), h->slot);
    EXPECT_EQ(p.at("pid").to_number<std::uint64_t>(), pid);
    EXPECT_TRUE(p.at("alive").as_bool());
    EXPECT_EQ(p.at("role").as_string(), "broker");
    EXPECT_EQ(p.at("blocks_held").to_number<int>(), 3);
  }
  EXPECT_TRUE(found_participant);

  int blocks = 0;
  for (const auto& c : root.at("size_classes").as_array()) {
    EXPECT_EQ(c.at("held").to_number<std::size_t>(), c.at("blocks").as_array().size());
    for (const auto& b : c.at("blocks").as_array()) {
      ++blocks;
      EXPECT_EQ(b.at("owner").to_number<std::uint32_t>(), h->slot);
      EXPECT_EQ(b.at("owner_pid").to_number<std::uint64_t>(), pid);
      EXPECT_EQ(b.at("owner_name").as_string(), "mp-holder");
    }
  }
  EXPECT_EQ(blocks, 3);

  const auto& rings = root.at("rings").as_array();
  ASSERT_EQ(rings.size(), 1u) << "only the opened ring is listed";
  EXPECT_EQ(rings[0].at("ring").to_number<int>(), 1);
  EXPECT_EQ(rings[0].at("state").as_string(), "open");
  EXPECT_EQ(rings[0].at("tail").to_number<int>(), 5);
  EXPECT_EQ(rings[0].at("head").to_number<int>(), 0);
  EXPECT_EQ(rings[0].at("size").to_number<int>(), 5);
  EXPECT_EQ(rings[0].at("consumer_doorbell").at("index").to_number<int>(), 2);
  EXPECT_EQ(rings[0].at("consumer_doorbell").at("waiters").to_number<int>(), 0);
}

TEST(InspectCli, TextOutputNamesTheOwnerOfHeldBlocks) {
  auto h = start_holder(2);
  ASSERT_TRUE(h);
  const std::string pid = std::to_string(h->child.pid());
  CliRun r = run_cli({"inspect", "--pid", pid, "--fd", std::to_string(h->fd)});
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("participants (1 in use"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("mp-holder"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("(pid " + pid + " mp-holder)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("open"), std::string::npos) << r.out;
}

TEST(InspectCli, ProcessWithoutAnArenaIsAnError) {
  CliRun r = run_cli({"inspect", "--pid", std::to_string(getpid())});
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(r.out.empty()) << "errors go to stderr";
}

TEST(InspectCli, DescriptorThatIsNotAnArenaIsAnError) {
  CliRun r = run_cli({"inspect", "--pid", std::to_string(getpid()), "--fd", "0"});
  EXPECT_EQ(r.status, 1);
}

}  // namespace
}  // namespace tessera
