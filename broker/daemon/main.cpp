// tessera-broker: the broker daemon.
//   --appose            act as an Appose worker on stdin/stdout (driven by an Appose host)
//   --listen PATH       standalone broker for client processes (Client::connect)
#include <cstdio>
#include <string>

#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "daemon.hpp"

int main(int argc, char** argv) {
  CLI::App app{"tessera-broker: shared-memory tile broker (control plane and worker supervision)"};
  bool appose = false;
  std::string loop = "auto";
  std::string level = "info";
  app.add_flag("--appose", appose, "Speak the Appose worker protocol on stdin/stdout");
  app.add_option("--loop", loop, "Event loop back end")->check(CLI::IsMember({"auto", "io_uring", "epoll"}));
  app.add_option("--log-level", level, "trace, debug, info, warn, error, off");
  tessera::daemon::ListenOptions lo;
  app.add_option("--listen", lo.socket_path, "Serve client processes on this Unix socket (created 0600)");
  app.add_option("--workers,-n", lo.workers, "Worker processes (with --listen)")->check(CLI::Range(1, 32));
  app.add_option("--worker-cmd", lo.worker_cmd, "Worker command line (with --listen); default: tessera-tissue-worker")
      ->expected(-1);
  app.add_option("--stall-timeout-ms", lo.stall_timeout_ms,
                 "Kill a worker that holds tiles and shows no progress this long (0: never; with --listen)")
      ->check(CLI::NonNegativeNumber);
  std::vector<std::string> classes;
  app.add_option("--class", classes, "Arena size class SIZE:COUNT (repeatable, increasing sizes; with --listen)");
  app.add_flag("--allow-client-kill", lo.allow_client_kill, "Honour kill_worker from clients (with --listen; off: refused)");
  app.add_option("--max-clients", lo.max_clients, "Most clients at once (with --listen; 0: every participant slot left)")
      ->check(CLI::Range(0, 63));
  app.add_option("--max-blocks-percent", lo.max_blocks_percent,
                 "Share of each block class one client may hold; more disconnects it (with --listen; 0 or 100: no limit)")
      ->check(CLI::Range(0, 100));
  app.add_option("--client-backlog-kib", lo.client_backlog_kib,
                 "Unsent KiB a client may fall behind before it is disconnected (with --listen)")
      ->check(CLI::Range(1, 1 << 20));
  CLI11_PARSE(app, argc, argv);
  for (const auto& c : classes) {
    const auto colon = c.find(':');
    if (colon == std::string::npos) {
      std::fprintf(stderr, "--class %s: expected SIZE:COUNT\n", c.c_str());
      return 2;
    }
    lo.classes.emplace_back(std::stoull(c.substr(0, colon)), static_cast<std::uint32_t>(std::stoul(c.substr(colon + 1))));
  }

  // Logs always go to stderr: stdout carries protocol lines or results.
  spdlog::set_default_logger(spdlog::stderr_color_mt("tessera-broker"));
  spdlog::set_level(spdlog::level::from_str(level));

  tessera::daemon::Options opts;
  opts.loop = loop == "epoll" ? tessera::LoopChoice::epoll
              : loop == "io_uring" ? tessera::LoopChoice::io_uring
                                   : tessera::LoopChoice::automatic;
  if (appose) return tessera::daemon::run_appose(opts);
  if (!lo.socket_path.empty()) return tessera::daemon::run_listen(lo);
  std::fprintf(stderr, "%s", app.help().c_str());
  return 2;
}
