// `tessera batch status`: the batch as seen by the status bucket and the stream.
#include <algorithm>
#include <map>
#include <utility>

#include <tessera/batch/batch.hpp>

namespace tessera::batch {

Result<BatchStatus> read_status(Session& s, const BatchNames& names) {
  auto kv = s.status_bucket(names, false);
  if (!kv) return fail(kv.error());
  kvWatchOptions wo;
  kvWatchOptions_Init(&wo);
  wo.IgnoreDeletes = true;
  kvWatcher* w = nullptr;
  natsStatus st = kvStore_WatchAll(&w, *kv, &wo);
  if (st != NATS_OK) return fail(nats_error(st, "status bucket watch"));
  BatchStatus out;
  // The watcher first replays the latest value of every key, then a null entry; an
  // item updated while it replays can come twice, so the newest revision of each key wins.
  std::map<std::string, std::pair<std::uint64_t, ItemStatus>> latest;
  for (;;) {
    kvEntry* raw = nullptr;
    st = kvWatcher_Next(&raw, w, 10'000);
    if (st != NATS_OK) {
      kvWatcher_Destroy(w);
      return fail(nats_error(st, "status bucket read"));
    }
    if (!raw) break;
    EntryPtr e(raw);
    if (kvEntry_Operation(e.get()) != kvOp_Put) continue;
    const char* v = kvEntry_ValueString(e.get());
    auto item = status_from_json(v ? v : "");
    if (!item) continue;  // not ours
    auto& slot = latest[kvEntry_Key(e.get())];
    const std::uint64_t rev = kvEntry_Revision(e.get());
    if (rev >= slot.first) slot = {rev, std::move(*item)};
  }
  for (auto& [key, entry] : latest) {
    switch (entry.second.state) {
      case ItemState::pending: ++out.pending; break;
      case ItemState::running: ++out.running; break;
      case ItemState::retry: ++out.retry; break;
      case ItemState::done: ++out.done; break;
      case ItemState::failed: ++out.failed; break;
    }
    out.items.push_back({key, std::move(entry.second)});
  }
  kvWatcher_Destroy(w);
  std::sort(out.items.begin(), out.items.end(),
            [](const StatusEntry& a, const StatusEntry& b) { return std::tie(a.status.stem, a.id) < std::tie(b.status.stem, b.id); });
  auto n = s.stream_messages(names);
  if (!n) return fail(n.error());
  out.in_stream = *n;
  return out;
}

}  // namespace tessera::batch
