// `tessera batch`: whole slide archives across many machines on NATS JetStream.
//   submit  one work item per slide (idempotent)
//   node    a node agent: runs items on a warm worker pool until stopped
//   status  done / failed / running / pending; exit code 0 only when all is done
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <thread>

#include <boost/json.hpp>
#include <fmt/core.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <tessera/batch/batch.hpp>

#include "subcommand.hpp"

namespace tessera::cli {
namespace {
namespace b = tessera::batch;
using namespace std::chrono_literals;

std::atomic<bool> g_stop{false};
static_assert(std::atomic<bool>::is_always_lock_free, "set from a signal handler");

extern "C" void on_stop_signal(int) {
  // SYNC[batch.stop] relaxed: a flag that the node loop and the heartbeat poll; no data rides on it.
  g_stop.store(true, std::memory_order_relaxed);
}

struct Common {
  b::ConnectOptions connect;
  b::BatchNames names;
  bool verbose = false;
};

void add_common(CLI::App* app, Common& c) {
  app->add_option("--nats", c.connect.url, "NATS server URL(s), comma-separated; may carry user:password@")
      ->envname("TESSERA_NATS_URL");
  app->add_option("--creds", c.connect.creds_file, "NATS credentials file (JWT + nkey seed)")->envname("TESSERA_NATS_CREDS");
  app->add_option("--tls-ca", c.connect.tls_ca, "CA certificate(s) that sign the server's TLS certificate");
  app->add_option("--tls-cert", c.connect.tls_cert, "Client certificate (mutual TLS)");
  app->add_option("--tls-key", c.connect.tls_key, "Client private key (mutual TLS)");
  app->add_option("--stream", c.names.stream, "Batch name: the JetStream stream (status bucket <stream>-status)");
  app->add_option("--consumer", c.names.consumer, "Durable consumer shared by the nodes");
  app->add_flag("--verbose,-v", c.verbose, "Log progress (info level)");
}

void setup_logging(bool verbose, const std::string& name) {
  auto logger = spdlog::stderr_color_mt("tessera-batch-" + name);
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  spdlog::set_level(verbose ? spdlog::level::info : spdlog::level::warn);
}

std::string self_dir() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : p.parent_path().string();
}

// ---- submit ----
struct SubmitArgs {
  Common c;
  b::SubmitOptions o;
  std::vector<std::string> lists;
  double ack_wait_s = 60;
  bool json = false;
};

int run_submit(SubmitArgs& a) {
  setup_logging(a.c.verbose, "submit");
  a.o.connect = a.c.connect;
  a.o.names = a.c.names;
  for (const auto& l : a.lists) a.o.slides.push_back("@" + l);
  a.o.ack_wait = std::chrono::milliseconds(static_cast<std::int64_t>(a.ack_wait_s * 1000));
  std::error_code ec;
  if (!a.o.spec.out_dir.empty()) a.o.spec.out_dir = std::filesystem::absolute(a.o.spec.out_dir, ec).lexically_normal().string();
  auto rep = b::submit(a.o);
  if (!rep) {
    fmt::print(stderr, "tessera batch submit: {}\n", rep.error().message);
    return rep.error().code == Errc::invalid_argument || rep.error().code == Errc::not_found ? 2 : 1;
  }
  fmt::print("batch {} on {}: {} items; {} published, {} already queued (de-duplicated), {} already done, {} running\n",
             a.c.names.stream, b::redact_url(a.c.connect.url), rep->ids.size(), rep->published, rep->duplicates,
             rep->skipped_done, rep->skipped_queued);
  if (a.json)
    fmt::print("{{\"items\":{},\"published\":{},\"duplicates\":{},\"skipped_done\":{},\"skipped_running\":{}}}\n",
               rep->ids.size(), rep->published, rep->duplicates, rep->skipped_done, rep->skipped_queued);
  return 0;
}

// ---- node ----
struct NodeArgs {
  Common c;
  b::NodeOptions o;
  double drain_s = 20, idle_s = 0, ack_wait_s = 60;
};

int run_node(NodeArgs& a) {
  setup_logging(a.c.verbose, "node");
  a.o.connect = a.c.connect;
  a.o.names = a.c.names;
  if (a.o.node_name.empty()) {
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    a.o.node_name = fmt::format("{}:{}", host, ::getpid());
  }
  a.o.bin_dir = self_dir();
  a.o.drain_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(a.drain_s * 1000));
  a.o.exit_when_idle = std::chrono::milliseconds(static_cast<std::int64_t>(a.idle_s * 1000));
  a.o.ack_wait = std::chrono::milliseconds(static_cast<std::int64_t>(a.ack_wait_s * 1000));
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  spdlog::info("node {}: connecting to {}", a.o.node_name, b::redact_url(a.c.connect.url));
  auto rep = b::run_node(a.o, g_stop);
  if (!rep) {
    fmt::print(stderr, "tessera batch node: {}\n", rep.error().message);
    return 1;
  }
  fmt::print("node {}: {} done, {} failed, {} retried, {} skipped\n", a.o.node_name, rep->done, rep->failed, rep->retried,
             rep->skipped);
  return 0;
}

// ---- status ----
struct StatusArgs {
  Common c;
  bool follow = false;
  bool json = false;
  bool all = false;
  double interval_s = 1.0;
};

void print_json(const b::BatchStatus& st) {
  boost::json::object o;
  o["total"] = st.total();
  o["done"] = st.done;
  o["failed"] = st.failed;
  o["running"] = st.running;
  o["retry"] = st.retry;
  o["pending"] = st.pending;
  o["in_stream"] = st.in_stream;
  o["finished"] = st.finished();
  boost::json::array items;
  for (const auto& e : st.items) {
    boost::json::object i;
    i["id"] = e.id;
    i["stem"] = e.status.stem;
    i["slide"] = e.status.slide;
    i["state"] = b::state_name(e.status.state);
    i["node"] = e.status.node;
    i["attempt"] = e.status.attempt;
    i["tiles_done"] = e.status.tiles_done;
    i["tiles_total"] = e.status.tiles_total;
    i["error"] = e.status.error;
    i["submitted_ms"] = e.status.submitted_ms;
    i["started_ms"] = e.status.started_ms;
    i["updated_ms"] = e.status.updated_ms;
    i["seconds"] = e.status.seconds;
    items.push_back(std::move(i));
  }
  o["items"] = std::move(items);
  fmt::print("{}\n", boost::json::serialize(o));
}

void print_text(const b::BatchStatus& st, bool all) {
  fmt::print("{} items: {} done, {} failed, {} running, {} pending, {} waiting to retry ({} in the stream)\n", st.total(),
             st.done, st.failed, st.running, st.pending, st.retry, st.in_stream);
  const std::int64_t now = b::unix_ms();
  for (const auto& e : st.items) {
    const auto& s = e.status;
    switch (s.state) {
      case b::ItemState::failed:
        fmt::print("  failed   {}  ({} attempts) {}\n", s.stem, s.attempt, s.error);
        break;
      case b::ItemState::running:
        fmt::print("  running  {}  on {}  {}/{} tiles, attempt {}, last heartbeat {:.1f} s ago\n", s.stem, s.node,
                   s.tiles_done, s.tiles_total, s.attempt, static_cast<double>(now - s.updated_ms) / 1000.0);
        break;
      case b::ItemState::retry:
        fmt::print("  retry    {}  attempt {} failed: {}\n", s.stem, s.attempt, s.error);
        break;
      case b::ItemState::pending:
        if (all) fmt::print("  pending  {}\n", s.stem);
        break;
      case b::ItemState::done:
        if (all) fmt::print("  done     {}  on {} in {:.2f} s\n", s.stem, s.node, s.seconds);
        break;
    }
  }
}

int exit_code(const b::BatchStatus& st) {
  if (!st.finished()) return 3;
  return st.failed > 0 ? 1 : 0;
}

int run_status(StatusArgs& a) {
  setup_logging(a.c.verbose, "status");
  auto session = b::Session::connect(a.c.connect);
  if (!session) {
    fmt::print(stderr, "tessera batch status: {}\n", session.error().message);
    return 2;
  }
  const bool tty = isatty(2) != 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    auto st = b::read_status(**session, a.c.names);
    if (!st) {
      fmt::print(stderr, "tessera batch status: {}\n", st.error().message);
      return 2;
    }
    if (!a.follow || st->finished()) {
      if (a.follow && tty) std::fprintf(stderr, "\n");
      if (a.json)
        print_json(*st);
      else
        print_text(*st, a.all);
      return exit_code(*st);
    }
    const std::int64_t total = std::max<std::int64_t>(1, st->total());
    const int width = 30;
    const int fill = static_cast<int>(width * (st->done + st->failed) / total);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "%s  [%s%s] %lld/%lld done, %lld failed, %lld running  %.0f s%s", tty ? "\r" : "",
                 std::string(static_cast<std::size_t>(fill), '#').c_str(),
                 std::string(static_cast<std::size_t>(width - fill), ' ').c_str(), static_cast<long long>(st->done),
                 static_cast<long long>(st->total()), static_cast<long long>(st->failed),
                 static_cast<long long>(st->running), s, tty ? " " : "\n");
    std::fflush(stderr);
    std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<std::int64_t>(a.interval_s * 1000)));
  }
}

}  // namespace

Subcommand add_batch(CLI::App& parent) {
  CLI::App* app = parent.add_subcommand("batch", "Slide archives across many machines on NATS JetStream (submit, node, status)");
  app->require_subcommand(1);

  auto sa = std::make_shared<SubmitArgs>();
  CLI::App* sub = app->add_subcommand("submit", "Publish one work item per slide (resubmitting the same batch adds nothing)");
  add_common(sub, sa->c);
  sub->add_option("slides", sa->o.slides, "Slide paths, globs (quoted), @listfile, or synthetic:SIZE:SEED");
  sub->add_option("--list", sa->lists, "File with one slide path a line ('#' comments)");
  sub->add_option("--out,-o", sa->o.spec.out_dir, "Output directory on storage every node can reach")->required();
  sub->add_option("--level", sa->o.spec.level, "Pyramid level to run on");
  sub->add_option("--tile", sa->o.spec.tile, "Tile edge, pixels")->check(CLI::Range(16, 4096));
  sub->add_option("--overlap", sa->o.spec.overlap, "Context pixels added on each side of a tile")->check(CLI::Range(0, 512));
  sub->add_option("--op", sa->o.spec.op, "Worker op passed with every tile");
  sub->add_option("--worker", sa->o.spec.worker, "cpp, numpy, torch, or a worker command line (as tessera overlay)");
  sub->add_option("--workers,-n", sa->o.spec.workers, "Worker processes per node")->check(CLI::Range(1, 64));
  sub->add_option("--in-flight", sa->o.spec.in_flight, "Tiles in flight per node")->check(CLI::Range(1, 4096));
  sub->add_option("--ack-wait", sa->ack_wait_s, "Seconds without a heartbeat before an item is redelivered (new consumer)")
      ->check(CLI::Range(0.5, 86400.0));
  sub->add_flag("--force", sa->o.force, "Publish again even items that are done or running");
  sub->add_flag("--json", sa->json, "Also print the report as one JSON line");

  auto na = std::make_shared<NodeArgs>();
  CLI::App* node = app->add_subcommand("node", "Run work items on this machine until stopped (SIGTERM drains)");
  add_common(node, na->c);
  node->add_option("--name", na->o.node_name, "Node name shown in status (default host:pid)");
  node->add_option("--max-attempts", na->o.max_attempts, "Deliveries of one item before it is terminated as failed")
      ->check(CLI::Range(1, 100));
  node->add_option("--drain-timeout", na->drain_s, "On SIGTERM: seconds to finish the current slide before releasing it")
      ->check(CLI::Range(0.0, 86400.0));
  node->add_option("--exit-when-idle", na->idle_s, "Exit after this many seconds without work (0: never)")
      ->check(CLI::Range(0.0, 86400.0));
  node->add_option("--ack-wait", na->ack_wait_s, "Ack wait if this node creates the consumer, seconds")
      ->check(CLI::Range(0.5, 86400.0));
  node->add_option("--max-items", na->o.max_items, "Stop after this many items (0: no limit)");

  auto st = std::make_shared<StatusArgs>();
  CLI::App* status = app->add_subcommand("status", "Done / failed / running / pending; exit 0 only when everything is done");
  add_common(status, st->c);
  status->add_flag("--follow,-f", st->follow, "Show a progress bar until nothing is pending or running");
  status->add_option("--interval", st->interval_s, "Seconds between refreshes with --follow")->check(CLI::Range(0.1, 3600.0));
  status->add_flag("--all,-a", st->all, "List done and pending items too");
  status->add_flag("--json", st->json, "Print the status as one JSON object");

  return {app, [=]() -> int {
            if (sub->parsed()) return run_submit(*sa);
            if (node->parsed()) return run_node(*na);
            if (status->parsed()) return run_status(*st);
            return 2;
          }};
}

}  // namespace tessera::cli
