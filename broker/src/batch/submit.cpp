// `tessera batch submit`: one work item per slide, published idempotently.
#include <glob.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <fmt/core.h>
#include <spdlog/spdlog.h>

#include <tessera/batch/batch.hpp>

namespace tessera::batch {
namespace fs = std::filesystem;

Result<std::vector<std::string>> expand_slides(const std::vector<std::string>& args) {
  std::vector<std::string> out;
  auto add_path = [&](const std::string& p) {
    if (p.rfind("synthetic:", 0) == 0) {
      out.push_back(p);
      return;
    }
    std::error_code ec;
    const fs::path abs = fs::absolute(p, ec);
    out.push_back((ec ? fs::path(p) : abs.lexically_normal()).string());
  };
  for (const auto& a : args) {
    if (a.empty()) continue;
    if (a.front() == '@') {
      std::ifstream f(a.substr(1));
      if (!f) return fail(Errc::not_found, "cannot read slide list '" + a.substr(1) + "'");
      std::string line;
      while (std::getline(f, line)) {
        while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.pop_back();
        const auto first = line.find_first_not_of(" \t");
        if (first == std::string::npos || line[first] == '#') continue;
        add_path(line.substr(first));
      }
    } else if (a.rfind("synthetic:", 0) != 0 && a.find_first_of("*?[") != std::string::npos) {
      glob_t g{};
      const int r = ::glob(a.c_str(), 0, nullptr, &g);  // results come sorted
      if (r == 0)
        for (std::size_t i = 0; i < g.gl_pathc; ++i) add_path(g.gl_pathv[i]);
      globfree(&g);
      if (r != 0 && r != GLOB_NOMATCH) return fail(Errc::system, "glob '" + a + "' failed");
      if (r == GLOB_NOMATCH) spdlog::warn("batch submit: '{}' matches no file", a);
    } else {
      add_path(a);
    }
  }
  return out;
}

namespace {

std::string stem_of(const std::string& slide) {
  if (slide.rfind("synthetic:", 0) == 0) {
    std::string s = "synthetic-" + slide.substr(10);
    for (char& c : s)
      if (c == ':') c = '-';
    return s;
  }
  std::string s = fs::path(slide).stem().string();
  if (s.empty() || s.front() == '.') s = "slide" + s;
  return s;
}

Result<bool> publish(Session& s, const BatchNames& names, const SlideJob& job, const std::string& msg_id) {
  const std::string body = to_json(job);
  const std::string subject = names.subject();
  natsMsg* raw = nullptr;
  natsStatus st = natsMsg_Create(&raw, subject.c_str(), nullptr, body.data(), static_cast<int>(body.size()));
  if (st != NATS_OK) return fail(nats_error(st, "work item message"));
  MsgPtr msg(raw);
  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MsgId = msg_id.c_str();  // Nats-Msg-Id: the stream drops a repeat inside its de-duplication window
  jsPubAck* ack = nullptr;
  jsErrCode jerr = static_cast<jsErrCode>(0);
  st = js_PublishMsg(&ack, s.js(), msg.get(), &po, &jerr);
  if (st != NATS_OK) return fail(nats_error(st, "publish " + job.stem, jerr));
  const bool dup = ack->Duplicate;
  jsPubAck_Destroy(ack);
  return !dup;
}

}  // namespace

Result<SubmitReport> submit(const SubmitOptions& o) {
  if (auto v = validate(o.names); !v) return fail(v.error());
  auto slides = expand_slides(o.slides);
  if (!slides) return fail(slides.error());
  if (slides->empty()) return fail(Errc::invalid_argument, "batch submit: no slides");
  if (o.spec.out_dir.empty()) return fail(Errc::invalid_argument, "batch submit: an output directory is required");

  // Build every item first, so a bad argument publishes nothing.
  std::vector<SlideJob> jobs;
  std::map<std::string, int> stems;
  std::set<std::string> seen;
  for (const auto& sl : *slides) {
    if (!seen.insert(sl).second) continue;  // the same slide listed twice
    ++stems[stem_of(sl)];
  }
  seen.clear();
  for (const auto& sl : *slides) {
    if (!seen.insert(sl).second) continue;
    SlideJob j = o.spec;
    j.slide = sl;
    j.stem = stem_of(sl);
    if (stems[j.stem] > 1) {
      // Two slides share a file name (different folders): tell their outputs apart by a
      // hash of the path, stable across resubmissions.
      SlideJob h = j;
      h.stem = "";
      j.stem += "-" + item_id(h).substr(0, 8);
    }
    j.id = item_id(j);
    j.submitted_ms = unix_ms();
    jobs.push_back(std::move(j));
  }

  auto session = Session::connect(o.connect);
  if (!session) return fail(session.error());
  Session& s = **session;
  if (auto r = s.ensure_stream(o.names, o.dedup_window); !r) return fail(r.error());
  if (auto r = s.ensure_consumer(o.names, o.ack_wait); !r) return fail(r.error());
  auto kv = s.status_bucket(o.names, true);
  if (!kv) return fail(kv.error());

  SubmitReport rep;
  for (const auto& j : jobs) {
    rep.ids.push_back(j.id);
    // The status entry goes first (never after the item: a fast node's "running" or
    // "done" must not be overwritten by "pending"), with compare-and-set so that a
    // concurrent node update wins.
    ItemStatus pending;
    pending.state = ItemState::pending;
    pending.slide = j.slide;
    pending.stem = j.stem;
    pending.submitted_ms = j.submitted_ms;
    pending.updated_ms = j.submitted_ms;
    const std::string pending_json = to_json(pending);
    std::string msg_id = j.id;
    bool queue = false, skipped = false;
    for (int tries = 0; tries < 5 && !queue; ++tries) {
      kvEntry* raw = nullptr;
      natsStatus st = kvStore_Get(&raw, *kv, j.id.c_str());
      EntryPtr e(raw);
      if (st == NATS_NOT_FOUND) {
        std::uint64_t rev = 0;
        st = kvStore_Create(&rev, *kv, j.id.c_str(), pending_json.data(), static_cast<int>(pending_json.size()));
        if (st == NATS_OK) queue = true;
        continue;  // lost a race with another submitter: read again
      }
      if (st != NATS_OK) return fail(nats_error(st, "status of " + j.stem));
      auto cur = status_from_json(kvEntry_ValueString(e.get()) ? kvEntry_ValueString(e.get()) : "");
      const ItemState state = cur ? cur->state : ItemState::failed;
      if (state == ItemState::done && !o.force) {
        ++rep.skipped_done;
        skipped = true;
        break;
      }
      if (state == ItemState::running && !o.force) {
        ++rep.skipped_queued;
        skipped = true;
        break;
      }
      if (state == ItemState::pending || state == ItemState::retry) {
        // Queued already; publishing again is harmless (de-duplicated inside the window,
        // and a node acks a copy of a done item without running it).
        queue = true;
        break;
      }
      // failed (or forced): a fresh attempt under a new message id.
      msg_id = j.id + "-r" + std::to_string(kvEntry_Revision(e.get()));
      std::uint64_t rev = 0;
      st = kvStore_Update(&rev, *kv, j.id.c_str(), pending_json.data(), static_cast<int>(pending_json.size()),
                          kvEntry_Revision(e.get()));
      if (st == NATS_OK) queue = true;
    }
    if (!queue && !skipped)
      return fail(Errc::timeout, "status of " + j.stem + " kept changing under concurrent updates; submit again");
    if (!queue) continue;
    auto pub = publish(s, o.names, j, msg_id);
    if (!pub) return fail(pub.error());
    if (*pub)
      ++rep.published;
    else
      ++rep.duplicates;
  }
  return rep;
}

}  // namespace tessera::batch
