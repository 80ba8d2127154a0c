// After a run: a Markdown report (Tessera's ratio to every peer and to the floors,
// per tile size) and, when gnuplot is installed, PNG plots.
#pragma once

#include <string>
#include <vector>

#include "../common/harness.hpp"

namespace tessera::bench {

struct ReportFiles {
  std::string markdown;            // path of report.md
  std::vector<std::string> plots;  // PNGs written
  std::string plot_note;           // why plots are missing, if they are
};

ReportFiles write_report(const std::string& dir, const Environment& env, const std::vector<Record>& records);

}  // namespace tessera::bench
