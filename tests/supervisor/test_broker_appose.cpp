// End to end: tessera-broker --appose driven by a Python script that speaks the
// Appose host side exactly like appose-python's Service (fake_host.py), with the
// scripted fake worker as the pool. Both event-loop back ends.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include <gtest/gtest.h>

namespace {

// Runs argv, returns its exit status or -1 after killing it on timeout.
int run_with_timeout(std::vector<std::string> args, std::chrono::seconds timeout) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  const auto end = std::chrono::steady_clock::now() + timeout;
  int st = 0;
  while (std::chrono::steady_clock::now() < end) {
    if (::waitpid(pid, &st, WNOHANG) == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &st, 0);
  return -1;
}

class BrokerAppose : public ::testing::TestWithParam<std::string> {};

}  // namespace

TEST_P(BrokerAppose, UnmodifiedHostDrivesTheBrokerEndToEnd) {
  const int rc = run_with_timeout({"/usr/bin/python3", TESSERA_FAKE_HOST, TESSERA_BROKER_EXE, TESSERA_FAKE_WORKER, GetParam()},
                                  std::chrono::seconds(90));
  EXPECT_EQ(rc, 0) << "fake_host.py reported failed checks (see its stderr above)";
}

INSTANTIATE_TEST_SUITE_P(Backends, BrokerAppose, ::testing::Values("io_uring", "epoll"),
                         [](const auto& p) { return p.param; });

TEST(BrokerAppose, StdinEofWithNoWorkExitsZero) {
  const int rc = run_with_timeout({"/bin/sh", "-c", std::string(TESSERA_BROKER_EXE) + " --appose </dev/null >/dev/null 2>&1"},
                                  std::chrono::seconds(20));
  EXPECT_EQ(rc, 0);
}
