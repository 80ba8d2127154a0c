// ApposeRouter + ProcessSupervisor conformance over real pipes with scripted fake workers, on both
// event-loop back ends. Every test checks the exact response sequence and that
// no fd or worker process leaked.
#include "helpers.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <thread>

#include "process.hpp"

using namespace std::chrono_literals;
namespace ap = tessera::appose;
namespace json = boost::json;
using RT = ap::ResponseType;
using tessera::LoopChoice;
using tessera::ApposeRouter;
using tessera::RouterOptions;
using tessera::WorkerEventKind;
using tessera::ApposeWorkerSpec;
using namespace tessera::test;

namespace {

class SupervisorTest : public ::testing::TestWithParam<LoopChoice> {
 protected:
  void SetUp() override { fds_before_ = open_fds(); }

  void TearDown() override {
    if (sup) {
      std::vector<int> pids;
      for (int w = 0; w < 8; ++w) pids.push_back(sup->worker_pid(w));
      sup->shutdown();
      sup.reset();
      for (int pid : pids) EXPECT_FALSE(process_exists(pid)) << "worker pid " << pid << " still alive";
    }
    EXPECT_EQ(open_fds(), fds_before_) << "file descriptors leaked";
  }

  ApposeRouter& make(RouterOptions o = {}) {
    o.loop = GetParam();
    o.respawn_backoff = 20ms;
    auto s = ApposeRouter::create(o);
    EXPECT_TRUE(s) << s.error().message;
    sup = std::move(*s);
    sup->set_event_handler(events.handler());
    return *sup;
  }

  int add(ApposeWorkerSpec spec) {
    auto w = sup->add_worker(std::move(spec));
    EXPECT_TRUE(w) << w.error().message;
    return w ? *w : -1;
  }

  std::string submit(const std::string& script, json::object inputs = {}, int worker = -1) {
    auto id = sup->submit(worker, script, std::move(inputs), rec.callback());
    EXPECT_TRUE(id) << id.error().message;
    return id ? *id : std::string();
  }

  std::unique_ptr<ApposeRouter> sup;
  Recorder rec;
  EventLog events;
  std::set<int> fds_before_;
};

std::string loop_param_name(const ::testing::TestParamInfo<LoopChoice>& info) { return loop_name(info.param); }

}  // namespace

// ---- message types ---------------------------------------------------------------

TEST_P(SupervisorTest, EchoTaskDeliversLaunchThenCompletionWithOutputs) {
  make();
  add(fake_worker());
  const auto id = submit("echo", json::object{{"a", 1}, {"s", "x"}});
  const auto rs = rec.wait_terminal(id);
  ASSERT_EQ(types(rs), (std::vector<RT>{RT::launch, RT::completion}));
  EXPECT_EQ(rs[1].outputs->at("a").as_int64(), 1);
  EXPECT_EQ(rs[1].outputs->at("s").as_string(), "x");
  EXPECT_EQ(rs[1].task, id);
}

TEST_P(SupervisorTest, UpdatesAreForwardedInOrderBeforeTheTerminal) {
  make();
  add(fake_worker());
  const auto id = submit("updates 5");
  const auto rs = rec.wait_terminal(id);
  ASSERT_EQ(rs.size(), 7u);
  EXPECT_EQ(rs.front().type, RT::launch);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(rs[static_cast<std::size_t>(i + 1)].type, RT::update);
    EXPECT_EQ(*rs[static_cast<std::size_t>(i + 1)].current, i + 1);
    EXPECT_EQ(*rs[static_cast<std::size_t>(i + 1)].maximum, 5);
  }
  EXPECT_EQ(rs.back().type, RT::completion);
}

TEST_P(SupervisorTest, FailureCarriesTheWorkersError) {
  make();
  add(fake_worker());
  const auto rs = rec.wait_terminal(submit("fail it broke"));
  ASSERT_EQ(types(rs), (std::vector<RT>{RT::launch, RT::failure}));
  EXPECT_EQ(*rs[1].error, "it broke");
}

// ---- bad input -------------------------------------------------------------------

TEST_P(SupervisorTest, MalformedBlankUnknownAndWronglyTypedLinesAreCountedNotFatal) {
  make();
  add(fake_worker());
  const auto id = submit("garbage");
  const auto rs = rec.wait_terminal(id);
  ASSERT_EQ(types(rs), (std::vector<RT>{RT::launch, RT::update, RT::completion}));
  // NaN / Infinity from the worker are accepted and become null.
  EXPECT_TRUE(rs[2].outputs->at("x").is_null());
  EXPECT_TRUE(rs[2].outputs->at("y").is_null());
  EXPECT_EQ(rs[2].outputs->at("s").as_string(), "gr\xc3\xbc\xc3\x9f");
  EXPECT_TRUE(rs[1].info->at("v").is_null());
  const auto st = sup->stats();
  EXPECT_EQ(st.blank_lines, 2u);
  EXPECT_EQ(st.bad_lines, 6u);  // not JSON, CRASH, "3", [1], array, no task
  EXPECT_EQ(st.unknown_task_lines, 1u);
  // The worker is still usable afterwards.
  EXPECT_EQ(types(rec.wait_terminal(submit("noop"))), (std::vector<RT>{RT::launch, RT::completion}));
}

TEST_P(SupervisorTest, StrayStdoutTextDoesNotCorruptTheProtocol) {
  make();
  add(fake_worker());
  const auto rs = rec.wait_terminal(submit("print"));
  EXPECT_EQ(types(rs), (std::vector<RT>{RT::launch, RT::completion}));
  EXPECT_EQ(sup->stats().bad_lines, 1u);
}

TEST_P(SupervisorTest, DuplicateAndContradictoryResponsesAreDropped) {
  make();
  add(fake_worker());
  const auto id = submit("double");
  const auto rs = rec.wait_terminal(id);
  std::this_thread::sleep_for(100ms);  // let the late lines arrive
  EXPECT_EQ(types(rec.get(id)), (std::vector<RT>{RT::launch, RT::completion}));
  EXPECT_TRUE(rs[1].outputs->at("first").as_bool());
  EXPECT_EQ(sup->stats().dropped_responses, 3u);
}

TEST_P(SupervisorTest, UpdateBeforeLaunchGetsASynthesizedLaunch) {
  make();
  add(fake_worker());
  const auto rs = rec.wait_terminal(submit("update_first"));
  EXPECT_EQ(types(rs), (std::vector<RT>{RT::launch, RT::update, RT::completion}));
}

// ---- reference-worker behaviour under concurrency --------------------------------

TEST_P(SupervisorTest, ManyConcurrentTasksEachGetExactlyOneTerminal) {
  make();
  add(fake_worker());
  add(fake_worker());
  std::vector<std::string> ids;
  for (int i = 0; i < 60; ++i) ids.push_back(submit(i % 3 == 0 ? "updates 4" : "echo", json::object{{"i", i}}));
  for (const auto& id : ids) {
    const auto rs = rec.wait_terminal(id);
    ASSERT_FALSE(rs.empty()) << "task " << id << " never finished";
    EXPECT_EQ(rs.front().type, RT::launch);
    EXPECT_EQ(terminal_count(rs), 1);
    EXPECT_EQ(rs.back().type, RT::completion);
  }
  const auto st = sup->stats();
  EXPECT_EQ(st.completed, 60u);
  EXPECT_EQ(st.bad_lines, 0u);
}

// ---- worker death at each point of a task's life ---------------------------------

TEST_P(SupervisorTest, DeathBeforeLaunchFailsTheTaskWithExitCode) {
  make();
  auto spec = fake_worker();
  spec.max_task_retries = 0;
  add(spec);
  const auto rs = rec.wait_terminal(submit("exit_before_launch 5"));
  ASSERT_EQ(types(rs), (std::vector<RT>{RT::launch, RT::failure}));
  EXPECT_NE(rs[1].error->find("exit code 5"), std::string::npos) << *rs[1].error;
}

TEST_P(SupervisorTest, CrashAfterLaunchFailsWithExitCodeAndStderrTail) {
  make();
  auto spec = fake_worker();
  spec.max_task_retries = 0;
  add(spec);
  const auto rs = rec.wait_terminal(submit("crash disk on fire"));
  ASSERT_EQ(types(rs), (std::vector<RT>{RT::launch, RT::failure}));
  EXPECT_NE(rs[1].error->find("exit code 3"), std::string::npos) << *rs[1].error;
  EXPECT_NE(rs[1].error->find("about to crash: disk on fire"), std::string::npos) << *rs[1].error;
  auto died = events.wait(WorkerEventKind::died);
  ASSERT_TRUE(died);
  EXPECT_EQ(died->ev.exit_code, 3);
}

TEST_P(SupervisorTest, CrashAfterUpdatesFailsOnceAfterTheForwardedUpdates) {
  make();
  auto spec = fake_worker();
  spec.max_task_retries = 0;
  add(spec);
  const auto rs = rec.wait_terminal(submit("crash_after_updates 3"));
  ASSERT_EQ(types(rs), (std::vector<RT>{RT::launch, RT::update, RT::update, RT::update, RT::failure}));
  EXPECT_NE(rs.back().error->find("exit code 4"), std::string::npos) << *rs.back().error;
}

TEST_P(SupervisorTest, CompletionWrittenJustBeforeExitIsDeliveredNotCrashed) {
  make();
  auto spec = fake_worker();
  spec.max_task_retries = 0;
  add(spec);
  // Upstream Appose marks some of these CRASHED (E11); draining before declaring
  // the death must deliver every COMPLETION.
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(events.wait(i == 0 ? WorkerEventKind::ready : WorkerEventKind::respawned, i == 0 ? 1 : i));
    const auto rs = rec.wait_terminal(submit("complete_exit 200"));
    ASSERT_EQ(rs.size(), 202u);
    EXPECT_EQ(rs.back().type, RT::completion) << (rs.back().error ? *rs.back().error : "");
  }
}

TEST_P(SupervisorTest, SignalDeathIsNamedInTheFailure) {
  make();
  auto spec = fake_worker();
  spec.max_task_retries = 0;
  add(spec);
  const auto rs = rec.wait_terminal(submit("segv"));
  ASSERT_EQ(rs.back().type, RT::failure);
  EXPECT_NE(rs.back().error->find("signal 11"), std::string::npos) << *rs.back().error;
}

TEST_P(SupervisorTest, TaskOfAKilledWorkerIsRetriedOnAnotherWorker) {
  make();
  auto spec = fake_worker();
  spec.max_task_retries = 1;
  const int a = add(spec);
  add(spec);
  const auto id = submit("sleep 0.4", {}, -1);
  std::this_thread::sleep_for(150ms);
  // Kill whichever worker holds it (least loaded: worker a).
  ASSERT_TRUE(sup->kill_worker(a, SIGKILL));
  const auto rs = rec.wait_terminal(id);
  EXPECT_EQ(types(rs), (std::vector<RT>{RT::launch, RT::completion}));
  EXPECT_EQ(sup->stats().retried, 1u);
}

TEST_P(SupervisorTest, DeathIsDetectedWithin100Milliseconds) {
  make();
  const int w = add(fake_worker());
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(sup->kill_worker(w, SIGKILL));
  auto died = events.wait(WorkerEventKind::died);
  ASSERT_TRUE(died);
  EXPECT_LT(died->at - t0, 100ms);
  EXPECT_EQ(died->ev.signal, SIGKILL);
}

TEST_P(SupervisorTest, AutoRespawnBringsTheWorkerBack) {
  make();
  const int w = add(fake_worker());
  const int pid = sup->worker_pid(w);
  ASSERT_TRUE(sup->kill_worker(w, SIGKILL));
  ASSERT_TRUE(events.wait(WorkerEventKind::respawned));
  EXPECT_NE(sup->worker_pid(w), pid);
  EXPECT_EQ(types(rec.wait_terminal(submit("noop", {}, w))), (std::vector<RT>{RT::launch, RT::completion}));
}

TEST_P(SupervisorTest, WithoutAutoRespawnTheOwnerRespawnsAndQueuedWorkRuns) {
  RouterOptions o;
  o.auto_respawn = false;
  make(o);
  const int w = add(fake_worker());
  ASSERT_TRUE(sup->kill_worker(w, SIGKILL));
  ASSERT_TRUE(events.wait(WorkerEventKind::died));
  const auto id = submit("noop", {}, w);  // queued: the worker is down
  std::this_thread::sleep_for(50ms);
  EXPECT_TRUE(rec.get(id).empty());
  ASSERT_TRUE(sup->respawn(w));
  EXPECT_EQ(types(rec.wait_terminal(id)), (std::vector<RT>{RT::launch, RT::completion}));
}

// ---- cancel at each point --------------------------------------------------------

TEST_P(SupervisorTest, CancelOfAQueuedTaskReportsCancelationOnce) {
  RouterOptions o;
  o.auto_respawn = false;
  make(o);
  const int w = add(fake_worker());
  ASSERT_TRUE(sup->kill_worker(w, SIGKILL));
  ASSERT_TRUE(events.wait(WorkerEventKind::died));
  const auto id = submit("noop", {}, w);
  sup->cancel(id);
  sup->cancel(id);
  EXPECT_EQ(types(rec.wait_terminal(id)), (std::vector<RT>{RT::launch, RT::cancelation}));
}

TEST_P(SupervisorTest, CooperativeCancelGivesOneCancelationDespiteLateCompletion) {
  make();
  add(fake_worker());
  const auto id = submit("sleep 5");
  std::this_thread::sleep_for(150ms);
  sup->cancel(id);
  const auto rs = rec.wait_terminal(id, 3s);
  ASSERT_EQ(types(rs), (std::vector<RT>{RT::launch, RT::cancelation}));
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(rec.get(id).size(), 2u);  // the worker's COMPLETION after CANCELATION was dropped
  EXPECT_EQ(sup->stats().dropped_responses, 1u);
  EXPECT_EQ(sup->stats().cancel_kills, 0u);
}

TEST_P(SupervisorTest, IgnoredCancelEscalatesToKillAndRespawn) {
  make();
  auto spec = fake_worker();
  spec.cancel_grace = 200ms;
  const int w = add(spec);
  const auto id = submit("ignore_cancel 10");
  std::this_thread::sleep_for(100ms);
  const auto t0 = std::chrono::steady_clock::now();
  sup->cancel(id);
  const auto rs = rec.wait_terminal(id, 5s);
  EXPECT_EQ(types(rs), (std::vector<RT>{RT::launch, RT::cancelation}));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 190ms);
  EXPECT_EQ(sup->stats().cancel_kills, 1u);
  ASSERT_TRUE(events.wait(WorkerEventKind::respawned));
  EXPECT_EQ(types(rec.wait_terminal(submit("noop", {}, w))), (std::vector<RT>{RT::launch, RT::completion}));
}

TEST_P(SupervisorTest, CancelAfterCompletionIsANoOp) {
  make();
  add(fake_worker());
  const auto id = submit("noop");
  rec.wait_terminal(id);
  sup->cancel(id);
  sup->cancel("never-existed");
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(types(rec.get(id)), (std::vector<RT>{RT::launch, RT::completion}));
}

// ---- deadlines -------------------------------------------------------------------

TEST_P(SupervisorTest, DeafWorkerIsKilledAtTheDeadlineAndTheTaskFails) {
  make();
  auto spec = fake_worker();
  spec.task_deadline = 300ms;
  spec.max_task_retries = 3;  // a timeout is never retried silently
  add(spec);
  const auto id = submit("deaf");
  const auto rs = rec.wait_terminal(id, 5s);
  ASSERT_EQ(types(rs), (std::vector<RT>{RT::launch, RT::failure}));
  EXPECT_NE(rs[1].error->find("deadline of 300 ms exceeded"), std::string::npos) << *rs[1].error;
  EXPECT_EQ(sup->stats().deadline_kills, 1u);
  EXPECT_EQ(sup->stats().retried, 0u);
  ASSERT_TRUE(events.wait(WorkerEventKind::respawned));
}

// ---- init / readiness ------------------------------------------------------------

TEST_P(SupervisorTest, InitScriptsRunInOrderBeforeReady) {
  make();
  auto spec = fake_worker();
  spec.init_scripts = {"noop", "import json", "updates 2"};
  add(spec);
  EXPECT_EQ(sup->stats().workers_ready, 1);
}

TEST_P(SupervisorTest, InitImportErrorFailsAddWorkerWithTheWorkersMessage) {
  make();
  auto spec = fake_worker();
  spec.init_scripts = {"noop", "import tessera_no_such_module_xyz"};
  auto w = sup->add_worker(spec);
  ASSERT_FALSE(w);
  EXPECT_NE(w.error().message.find("init script 2 of 2 failed"), std::string::npos) << w.error().message;
  EXPECT_NE(w.error().message.find("No module named 'tessera_no_such_module_xyz'"), std::string::npos)
      << w.error().message;
  EXPECT_NE(w.error().message.find("Traceback"), std::string::npos) << w.error().message;  // stderr tail
  EXPECT_EQ(sup->stats().workers, 0);
}

TEST_P(SupervisorTest, InitThatNeverCompletesHitsTheReadyTimeout) {
  make();
  auto spec = fake_worker();
  spec.init_scripts = {"deaf"};
  spec.ready_timeout = 300ms;
  auto w = sup->add_worker(spec);
  ASSERT_FALSE(w);
  EXPECT_NE(w.error().message.find("not ready within 300 ms"), std::string::npos) << w.error().message;
}

TEST_P(SupervisorTest, MissingExecutableFailsLoudly) {
  make();
  ApposeWorkerSpec spec;
  spec.argv = {"/nonexistent/tessera-worker"};
  auto w = sup->add_worker(spec);
  ASSERT_FALSE(w);
  EXPECT_NE(w.error().message.find("No such file"), std::string::npos) << w.error().message;
}

TEST_P(SupervisorTest, CrashLoopAtStartGivesUpInsteadOfRestartingForever) {
  make();
  auto spec = fake_worker();
  spec.max_start_failures = 3;
  const int w = add(spec);
  // Make every later start fail: the respawned process exits at once.
  ASSERT_TRUE(sup->kill_worker(w, SIGKILL));  // 1st failure (died right after ready)
  auto gave_up = events.wait(WorkerEventKind::gave_up, 1, 1s);
  EXPECT_FALSE(gave_up);  // one failure is not a crash loop
  sup.reset();            // fresh supervisor with a worker that always dies at start
  make();
  auto bad = fake_worker({"--start-fail", "config missing"});
  bad.max_start_failures = 3;
  bad.init_scripts = {};
  const int b = add(bad);  // no init: ready as soon as exec succeeded
  gave_up = events.wait(WorkerEventKind::gave_up, 1, 5s);
  ASSERT_TRUE(gave_up);
  EXPECT_NE(gave_up->ev.message.find("gave up after 3"), std::string::npos) << gave_up->ev.message;
  EXPECT_NE(gave_up->ev.message.find("fatal: config missing"), std::string::npos) << gave_up->ev.message;
  auto r = sup->respawn(b);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("gave up"), std::string::npos);
  // Work for it fails at once, naming the reason.
  const auto id = submit("noop", {}, b);
  const auto rs = rec.wait_terminal(id);
  ASSERT_EQ(types(rs), (std::vector<RT>{RT::launch, RT::failure}));
  EXPECT_NE(rs[1].error->find("gave up"), std::string::npos) << *rs[1].error;
}

// ---- environment and descriptors -------------------------------------------------

TEST_P(SupervisorTest, ParentSecretsDoNotReachTheWorker) {
  ::setenv("TESSERA_TEST_SECRET_TOKEN", "hunter2", 1);
  ::setenv("TESSERA_TEST_ALLOWED", "yes", 1);
  make();
  auto spec = fake_worker();
  spec.env["TESSERA_GIVEN"] = "given";
  spec.env_allow = {"TESSERA_TEST_ALLOW*"};
  add(spec);
  auto value = [&](const char* name) {
    const auto rs = rec.wait_terminal(submit(std::string("env ") + name));
    return json::serialize(rs.back().outputs->at("value"));
  };
  EXPECT_EQ(value("TESSERA_TEST_SECRET_TOKEN"), "null");
  EXPECT_EQ(value("TESSERA_TEST_ALLOWED"), "\"yes\"");
  EXPECT_EQ(value("TESSERA_GIVEN"), "\"given\"");
  EXPECT_NE(value("PATH"), "null");
  ::unsetenv("TESSERA_TEST_SECRET_TOKEN");
  ::unsetenv("TESSERA_TEST_ALLOWED");
}

TEST_P(SupervisorTest, PassFdsArriveAsFd3AndNothingElseLeaks) {
  const int memfd = ::memfd_create("tessera-test-arena", MFD_CLOEXEC);
  ASSERT_GE(memfd, 0);
  ASSERT_EQ(::write(memfd, "arena-bytes", 11), 11);
  const int stray = ::dup(memfd);  // not close-on-exec: must still not reach the worker
  ASSERT_GE(stray, 0);
  make();
  auto spec = fake_worker();
  spec.pass_fds = {memfd};
  add(spec);
  auto rs = rec.wait_terminal(submit("readfd 3"));
  EXPECT_EQ(rs.back().outputs->at("data").as_string(), "arena-bytes");
  rs = rec.wait_terminal(submit("fds"));
  std::set<std::int64_t> fds;
  for (const auto& v : rs.back().outputs->at("fds").as_array()) fds.insert(v.as_int64());
  // 0,1,2 stdio, 3 the arena, plus the one fd Python's listdir itself holds open.
  EXPECT_TRUE(fds.count(0) && fds.count(1) && fds.count(2) && fds.count(3));
  EXPECT_LE(fds.size(), 5u);
  EXPECT_FALSE(fds.count(stray) && stray > 4) << "inherited a stray fd";
  sup->shutdown();
  sup.reset();
  ::close(stray);
  ::close(memfd);
}

// ---- shutdown --------------------------------------------------------------------

TEST_P(SupervisorTest, GracefulShutdownLetsInFlightTasksFinishAndStopsWorkers) {
  make();
  add(fake_worker());
  const int pid = sup->worker_pid(0);
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(submit("sleep 0.2"));
  std::this_thread::sleep_for(50ms);
  sup->shutdown();
  for (const auto& id : ids) EXPECT_EQ(types(rec.get(id)), (std::vector<RT>{RT::launch, RT::completion}));
  EXPECT_FALSE(process_exists(pid));
  auto late = sup->submit(-1, "noop", {}, rec.callback());
  EXPECT_FALSE(late);
}

TEST_P(SupervisorTest, ShutdownCancelsTasksThatOutliveTheGrace) {
  RouterOptions o;
  o.shutdown_grace = 100ms;
  make(o);
  auto spec = fake_worker();
  spec.cancel_grace = 100ms;
  add(spec);
  const auto a = submit("sleep 10");   // honours CANCEL
  const auto b = submit("deaf");       // needs the kill
  std::this_thread::sleep_for(100ms);
  const auto t0 = std::chrono::steady_clock::now();
  sup->shutdown();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
  EXPECT_EQ(types(rec.get(a)), (std::vector<RT>{RT::launch, RT::cancelation}));
  EXPECT_EQ(types(rec.get(b)), (std::vector<RT>{RT::launch, RT::cancelation}));
}

INSTANTIATE_TEST_SUITE_P(Backends, SupervisorTest, ::testing::Values(LoopChoice::io_uring, LoopChoice::epoll),
                         loop_param_name);

// ---- the lifecycle alone (the tile path's use: no router) --------------------------

TEST(ProcessSupervisorAlone, InitReadinessDeathAndOwnerRespawnWithoutARouter) {
  const auto fds_before = open_fds();
  tessera::ProcessOptions o;
  o.auto_respawn = false;  // as pool::ArenaPool: the owner respawns
  o.respawn_backoff = 20ms;
  auto created = tessera::ProcessSupervisor::create(o);
  ASSERT_TRUE(created) << created.error().message;
  auto proc = std::move(*created);
  EventLog events;
  proc->set_event_handler(events.handler());
  tessera::WorkerSpec spec = fake_worker();  // the lifecycle part only: no task knobs
  spec.init_scripts = {"noop", "updates 2"};
  auto w = proc->add_worker(spec);
  ASSERT_TRUE(w) << w.error().message;
  ASSERT_TRUE(events.wait(WorkerEventKind::ready));
  const int pid = proc->worker_pid(*w);
  EXPECT_GT(pid, 0);
  EXPECT_EQ(proc->stats().workers_ready, 1);
  ASSERT_TRUE(proc->kill_worker(*w, SIGKILL));
  auto died = events.wait(WorkerEventKind::died);
  ASSERT_TRUE(died);
  EXPECT_EQ(died->ev.signal, SIGKILL);
  EXPECT_EQ(died->ev.pid, pid);
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(events.count(WorkerEventKind::respawned), 0) << "auto_respawn is off";
  EXPECT_EQ(proc->worker_pid(*w), -1);
  ASSERT_TRUE(proc->respawn(*w));
  ASSERT_TRUE(events.wait(WorkerEventKind::respawned));
  const int pid2 = proc->worker_pid(*w);
  EXPECT_GT(pid2, 0);
  EXPECT_NE(pid2, pid);
  const auto st = proc->stats();
  EXPECT_EQ(st.worker_deaths, 1u);
  EXPECT_EQ(st.respawns, 1u);
  proc->shutdown();
  EXPECT_FALSE(process_exists(pid2));
  proc.reset();
  EXPECT_EQ(open_fds(), fds_before) << "file descriptors leaked";
}

// ---- process spawning (backend independent) ---------------------------------------

TEST(SpawnProcess, ScrubbedEnvironmentKeepsOnlyAllowedAndExplicitVariables) {
  char secret[] = "AWS_SECRET_ACCESS_KEY=s3cr3t";
  char path[] = "PATH=/bin";
  char lc[] = "LC_ALL=C.UTF-8";
  char mine[] = "MY_APP_DEBUG=1";
  char* parent[] = {secret, path, lc, mine, nullptr};
  const auto env = tessera::detail::scrubbed_environment({{"EXTRA", "1"}, {"PATH", "/opt/bin"}}, {"MY_APP_*"}, parent);
  const std::set<std::string> got(env.begin(), env.end());
  EXPECT_EQ(got, (std::set<std::string>{"PATH=/opt/bin", "LC_ALL=C.UTF-8", "MY_APP_DEBUG=1", "EXTRA=1"}));
}
