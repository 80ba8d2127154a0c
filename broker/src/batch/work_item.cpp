// Work items and status entries as JSON (Boost.JSON), and the item identity.
#include <tessera/batch/work_item.hpp>

#include <chrono>

#include <boost/json.hpp>
#include <boost/uuid/name_generator_sha1.hpp>
#include <boost/uuid/uuid_io.hpp>

namespace tessera::batch {
namespace json = boost::json;

namespace {

json::object spec_object(const SlideJob& j) {
  // Keys in a fixed order: the id hashes this serialisation.
  json::object o;
  o["slide"] = j.slide;
  o["stem"] = j.stem;
  o["out_dir"] = j.out_dir;
  o["level"] = j.level;
  o["tile"] = j.tile;
  o["overlap"] = j.overlap;
  o["op"] = j.op;
  o["worker"] = j.worker;
  o["workers"] = j.workers;
  o["in_flight"] = j.in_flight;
  return o;
}

template <class T>
bool get(const json::object& o, const char* key, T& out) {
  const json::value* v = o.if_contains(key);
  if (!v) return true;  // optional: keep the default
  auto r = json::try_value_to<T>(*v);
  if (!r) return false;
  out = *r;
  return true;
}

}  // namespace

std::string item_id(const SlideJob& job) {
  static const boost::uuids::uuid kNamespace = [] {
    boost::uuids::name_generator_sha1 gen(boost::uuids::ns::url());
    return gen("https://tessera/batch/work-item/v1");
  }();
  boost::uuids::name_generator_sha1 gen(kNamespace);
  const auto u = gen(json::serialize(spec_object(job)));
  std::string hex;
  for (char c : boost::uuids::to_string(u))
    if (c != '-') hex += c;
  return hex;
}

std::string to_json(const SlideJob& job) {
  json::object o = spec_object(job);
  o["v"] = 1;
  o["id"] = job.id;
  o["submitted_ms"] = job.submitted_ms;
  return json::serialize(o);
}

Result<SlideJob> job_from_json(const std::string& text) {
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object()) return fail(Errc::protocol, "work item: not a JSON object");
  const auto& o = v.as_object();
  SlideJob j;
  std::int64_t version = 0;
  const bool ok = get(o, "v", version) && get(o, "slide", j.slide) && get(o, "stem", j.stem) &&
                  get(o, "out_dir", j.out_dir) && get(o, "level", j.level) && get(o, "tile", j.tile) &&
                  get(o, "overlap", j.overlap) && get(o, "op", j.op) && get(o, "worker", j.worker) &&
                  get(o, "workers", j.workers) && get(o, "in_flight", j.in_flight) &&
                  get(o, "id", j.id) && get(o, "submitted_ms", j.submitted_ms);
  if (!ok) return fail(Errc::protocol, "work item: a field has the wrong type");
  if (version != 1) return fail(Errc::protocol, "work item: version " + std::to_string(version) + " (this node reads 1)");
  if (j.slide.empty() || j.stem.empty() || j.out_dir.empty())
    return fail(Errc::protocol, "work item: slide, stem and out_dir are required");
  if (j.stem.find('/') != std::string::npos || j.stem.front() == '.')
    return fail(Errc::protocol, "work item: stem '" + j.stem + "' is not a plain file name");
  if (j.tile < 16 || j.tile > 4096 || j.overlap < 0 || j.overlap > 512 || j.level < 0 || j.workers < 1 ||
      j.workers > 64 || j.in_flight < 1 || j.in_flight > 4096)
    return fail(Errc::protocol, "work item: a parameter is out of range");
  if (j.id != item_id(j)) return fail(Errc::protocol, "work item: id does not match its content");
  return j;
}

std::vector<std::string> output_names(const SlideJob& job) {
  // The streaming writer always writes all three: preview, mask pyramid, regions.
  return {job.stem + ".overlay.png", job.stem + ".overlay.tiff", job.stem + ".overlay.geojson"};
}

const char* state_name(ItemState s) noexcept {
  switch (s) {
    case ItemState::pending: return "pending";
    case ItemState::running: return "running";
    case ItemState::retry: return "retry";
    case ItemState::done: return "done";
    case ItemState::failed: return "failed";
  }
  return "?";
}

std::string to_json(const ItemStatus& s) {
  json::object o;
  o["state"] = state_name(s.state);
  o["slide"] = s.slide;
  o["stem"] = s.stem;
  o["node"] = s.node;
  o["attempt"] = s.attempt;
  o["tiles_done"] = s.tiles_done;
  o["tiles_total"] = s.tiles_total;
  o["error"] = s.error;
  o["submitted_ms"] = s.submitted_ms;
  o["started_ms"] = s.started_ms;
  o["updated_ms"] = s.updated_ms;
  o["seconds"] = s.seconds;
  return json::serialize(o);
}

Result<ItemStatus> status_from_json(const std::string& text) {
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object()) return fail(Errc::protocol, "status entry: not a JSON object");
  const auto& o = v.as_object();
  ItemStatus s;
  std::string state;
  const bool ok = get(o, "state", state) && get(o, "slide", s.slide) && get(o, "stem", s.stem) &&
                  get(o, "node", s.node) && get(o, "attempt", s.attempt) && get(o, "tiles_done", s.tiles_done) &&
                  get(o, "tiles_total", s.tiles_total) && get(o, "error", s.error) &&
                  get(o, "submitted_ms", s.submitted_ms) && get(o, "started_ms", s.started_ms) &&
                  get(o, "updated_ms", s.updated_ms) && get(o, "seconds", s.seconds);
  if (!ok) return fail(Errc::protocol, "status entry: a field has the wrong type");
  bool known = false;
  for (auto st : {ItemState::pending, ItemState::running, ItemState::retry, ItemState::done, ItemState::failed})
    if (state == state_name(st)) {
      s.state = st;
      known = true;
    }
  if (!known) return fail(Errc::protocol, "status entry: unknown state '" + state + "'");
  return s;
}

std::int64_t unix_ms() noexcept {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace tessera::batch
