// tessera: command-line tool. Subcommands: inspect (more to come: overlay, bench, run-worker).
#include <cstdio>
#include <vector>

#include "subcommand.hpp"

int main(int argc, char** argv) {
  CLI::App app{"tessera: lock-free shared-memory tile broker tools"};
  app.require_subcommand(1);
  // To add a subcommand: write add_<name>() in <name>.cpp, declare it in subcommand.hpp, list it here.
  std::vector<tessera::cli::Subcommand> subs = {
      tessera::cli::add_inspect(app),
      tessera::cli::add_overlay(app),
      tessera::cli::add_bench(app),
      tessera::cli::add_make_slide(app),
#ifdef TESSERA_HAVE_BATCH
      tessera::cli::add_batch(app),
#endif
  };
  CLI11_PARSE(app, argc, argv);
  for (auto& s : subs)
    if (s.app->parsed()) return s.run();
  std::fprintf(stderr, "tessera: no subcommand\n");
  return 2;
}
