// `tessera inspect`: prints a live arena (header, participants, slab occupancy with the
// owner of every held block, rings and their doorbells), as text or JSON.
//
// The arena is opened through /proc/<pid>/fd/<fd> (Arena::attach_proc), which validates
// it like any other attach. The inspector never registers as a participant and never
// writes: everything it prints is a racy snapshot of a running system.
#include <dirent.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <boost/json.hpp>
#include <fmt/core.h>

#include <tessera/arena.hpp>
#include <tessera/handle.hpp>
#include <tessera/slab.hpp>

#include "subcommand.hpp"

namespace tessera::cli {
namespace {

namespace json = boost::json;

struct InspectOptions {
  int pid = 0;
  int fd = -1;
  bool json = false;
  bool all_rings = false;
  bool no_blocks = false;
};

const char* role_name(std::uint32_t r) {
  switch (static_cast<Role>(r)) {
    case Role::none: return "none";
    case Role::broker: return "broker";
    case Role::client: return "client";
    case Role::worker: return "worker";
    case Role::tool: return "tool";
  }
  return "?";
}

const char* participant_state_name(std::uint32_t s) {
  switch (static_cast<ParticipantState>(s)) {
    case ParticipantState::free: return "free";
    case ParticipantState::claiming: return "claiming";
    case ParticipantState::alive: return "alive";
    case ParticipantState::dead: return "dead";
  }
  return "?";
}

const char* ring_state_name(std::uint32_t s) {
  switch (static_cast<RingState>(s)) {
    case RingState::unused: return "unused";
    case RingState::open: return "open";
    case RingState::closed: return "closed";
  }
  return "?";
}

std::string hex(std::uint64_t v) { return fmt::format("{:#018x}", v); }

std::string human_bytes(std::uint64_t b) {
  if (b >= (1ULL << 30) && b % (1ULL << 30) == 0) return fmt::format("{} GiB", b >> 30);
  if (b >= (1ULL << 20) && b % (1ULL << 20) == 0) return fmt::format("{} MiB", b >> 20);
  if (b >= (1ULL << 10) && b % (1ULL << 10) == 0) return fmt::format("{} KiB", b >> 10);
  if (b >= (1ULL << 20)) return fmt::format("{:.1f} MiB", static_cast<double>(b) / (1 << 20));
  return fmt::format("{} B", b);
}

// Finds the descriptor of `pid` whose /proc link names a Tessera memfd.
std::optional<int> find_arena_fd(int pid, std::string& link_out, std::string& err) {
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) {
    err = fmt::format("cannot list {}: {}", dir, std::strerror(errno));
    return std::nullopt;
  }
  std::optional<int> found;
  int candidates = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    char buf[4096];
    const ssize_t n = readlink((dir + "/" + e->d_name).c_str(), buf, sizeof buf - 1);
    if (n <= 0) continue;
    buf[n] = '\0';
    if (std::string_view(buf).rfind("/memfd:tessera", 0) != 0) continue;
    ++candidates;
    const int fd = std::atoi(e->d_name);
    if (!found || fd < *found) {
      found = fd;
      link_out = buf;
    }
  }
  closedir(d);
  if (!found) err = fmt::format("process {} holds no /memfd:tessera* descriptor", pid);
  else if (candidates > 1)
    std::fprintf(stderr, "tessera inspect: process %d holds %d arenas; showing fd %d (use --fd)\n", pid, candidates,
                 *found);
  return found;
}

json::object doorbell_json(const Arena& a, std::uint32_t i) {
  json::object o;
  o["index"] = i;
  if (i < a.n_doorbells()) {
    const Doorbell& b = a.doorbell(i);
    o["waiters"] = b.waiters.load(std::memory_order_relaxed);  // relaxed: a snapshot for display
    o["seq"] = b.seq.load(std::memory_order_relaxed);          // relaxed: a snapshot for display
  }
  return o;
}

json::object snapshot(const Arena& a, const InspectOptions& opt, const std::string& link) {
  const ArenaHeader& h = a.header();
  json::object root;
  json::object hdr;
  hdr["pid"] = opt.pid;
  hdr["fd"] = opt.fd;
  hdr["link"] = link;
  hdr["magic"] = hex(h.magic);
  hdr["layout_version"] = h.layout_version;
  hdr["header_size"] = h.header_size;
  hdr["total_size"] = h.total_size;
  hdr["arena_id"] = hex(h.arena_id);
  hdr["ready"] = h.ready.load(std::memory_order_acquire) == kReadyValue;  // SYNC[arena.ready] acquire
  hdr["shutting_down"] = h.shutting_down.load(std::memory_order_relaxed) != 0;  // relaxed: a hint
  hdr["n_classes"] = h.n_classes;
  hdr["n_rings"] = h.n_rings;
  hdr["ring_capacity"] = h.ring_capacity;
  hdr["n_doorbells"] = h.n_doorbells;
  json::object creator;
  creator["pid"] = h.creator_pid;
  creator["uid"] = h.creator_uid;
  creator["start_time"] = h.creator_start_time;
  creator["alive"] = a.creator_alive();
  hdr["creator"] = std::move(creator);
  root["arena"] = std::move(hdr);

  json::array parts;
  for (std::uint32_t s = 0; s < kMaxParticipants; ++s) {
    const Participant& p = a.participant(s);
    // acquire: pairs with SYNC[participant.state] release in register_participant.
    const std::uint32_t st = p.state.load(std::memory_order_acquire);
    if (st == static_cast<std::uint32_t>(ParticipantState::free)) continue;
    json::object o;
    o["slot"] = s;
    o["state"] = participant_state_name(st);
    o["role"] = role_name(p.role);
    o["pid"] = p.pid;
    o["alive"] = a.participant_alive(s);
    o["name"] = std::string(p.name, strnlen(p.name, sizeof p.name));
    o["blocks_held"] = Slab::count_held(a, s);
    o["heartbeat_ns"] = p.heartbeat_ns.load(std::memory_order_relaxed);  // relaxed: a hint
    parts.push_back(std::move(o));
  }
  root["participants"] = std::move(parts);

  json::array classes;
  for (std::uint32_t c = 0; c < a.n_classes(); ++c) {
    const SizeClass& sc = a.size_class(c);
    const AtomicU64* metas = a.block_meta(c);
    json::array blocks;
    std::uint32_t held = 0;
    for (std::uint32_t i = 0; i < sc.block_count; ++i) {
      const std::uint64_t w = metas[i].load(std::memory_order_relaxed);  // relaxed: a snapshot
      if (meta::state(w) != static_cast<std::uint16_t>(BlockState::held)) continue;
      ++held;
      if (opt.no_blocks) continue;
      json::object b;
      const std::uint32_t owner = meta::owner(w);
      b["index"] = i;
      b["generation"] = meta::gen(w);
      b["handle"] = hex(BlockHandle::make(meta::gen(w), c, i).raw);
      b["owner"] = owner;
      if (owner < kMaxParticipants) {
        const Participant& p = a.participant(owner);
        b["owner_pid"] = p.pid;
        b["owner_name"] = std::string(p.name, strnlen(p.name, sizeof p.name));
      }
      blocks.push_back(std::move(b));
    }
    json::object o;
    o["class"] = c;
    o["block_size"] = sc.block_size;
    o["block_count"] = sc.block_count;
    o["held"] = held;
    o["held_approx"] = sc.held_approx.load(std::memory_order_relaxed);  // relaxed: inspection counter
    if (!opt.no_blocks) o["blocks"] = std::move(blocks);
    classes.push_back(std::move(o));
  }
  root["size_classes"] = std::move(classes);

  json::array rings;
  for (std::uint32_t r = 0; r < a.n_rings(); ++r) {
    const RingHeader& rh = a.ring(r);
    const std::uint32_t st = rh.state.load(std::memory_order_acquire);  // SYNC[ring.state] acquire
    if (st == static_cast<std::uint32_t>(RingState::unused) && !opt.all_rings) continue;
    // relaxed: a racy snapshot for display; the pair may be momentarily inconsistent.
    const std::uint64_t head = rh.head.load(std::memory_order_relaxed);
    const std::uint64_t tail = rh.tail.load(std::memory_order_relaxed);
    json::object o;
    o["ring"] = r;
    o["state"] = ring_state_name(st);
    o["head"] = head;
    o["tail"] = tail;
    const std::uint64_t size = tail - head;
    o["size"] = size;
    o["corrupt"] = size > h.ring_capacity;
    o["capacity"] = h.ring_capacity;
    o["producer_slot"] = rh.producer_slot.load(std::memory_order_relaxed);  // relaxed: display
    o["consumer_slot"] = rh.consumer_slot.load(std::memory_order_relaxed);  // relaxed: display
    o["reset_count"] = rh.reset_count.load(std::memory_order_relaxed);      // relaxed: display
    o["consumer_doorbell"] = doorbell_json(a, rh.consumer_doorbell);
    o["producer_doorbell"] = doorbell_json(a, rh.producer_doorbell);
    rings.push_back(std::move(o));
  }
  root["rings"] = std::move(rings);
  return root;
}

// ---- text rendering (from the same snapshot as --json) ----
std::uint64_t u(const json::value& v) { return v.is_uint64() ? v.get_uint64() : static_cast<std::uint64_t>(v.to_number<std::int64_t>()); }
std::string s(const json::value& v) { return std::string(v.as_string()); }
std::string yes(const json::value& v) { return v.as_bool() ? "yes" : "no"; }
std::string slot_text(std::uint64_t slot) { return slot == kNoSlot ? std::string("-") : std::to_string(slot); }

void print_text(const json::object& root) {
  const auto& h = root.at("arena").as_object();
  const auto& c = h.at("creator").as_object();
  fmt::print("arena   pid {} fd {} ({})\n", u(h.at("pid")), h.at("fd").to_number<std::int64_t>(), s(h.at("link")));
  fmt::print("  magic {}  layout v{}  size {} ({} B)  header {} B  id {}\n", s(h.at("magic")),
             u(h.at("layout_version")), human_bytes(u(h.at("total_size"))), u(h.at("total_size")),
             u(h.at("header_size")), s(h.at("arena_id")));
  fmt::print("  creator pid {} uid {} start {} alive {}   ready {}  shutting down {}\n", u(c.at("pid")),
             u(c.at("uid")), u(c.at("start_time")), yes(c.at("alive")), yes(h.at("ready")),
             yes(h.at("shutting_down")));

  const auto& parts = root.at("participants").as_array();
  fmt::print("\nparticipants ({} in use of {})\n", parts.size(), kMaxParticipants);
  if (!parts.empty()) fmt::print("  {:<4} {:<8} {:<7} {:>8} {:<5} {:<24} {:>6}\n", "slot", "state", "role", "pid", "alive", "name", "blocks");
  for (const auto& pv : parts) {
    const auto& p = pv.as_object();
    fmt::print("  {:<4} {:<8} {:<7} {:>8} {:<5} {:<24} {:>6}\n", u(p.at("slot")), s(p.at("state")), s(p.at("role")),
               u(p.at("pid")), yes(p.at("alive")), s(p.at("name")), u(p.at("blocks_held")));
  }

  fmt::print("\nslab\n  {:<5} {:>10} {:>6} {:>6}  {}\n", "class", "block", "count", "held", "occupancy");
  for (const auto& cv : root.at("size_classes").as_array()) {
    const auto& k = cv.as_object();
    const auto count = u(k.at("block_count")), held = u(k.at("held"));
    fmt::print("  {:<5} {:>10} {:>6} {:>6}  {:.0f}%\n", u(k.at("class")), human_bytes(u(k.at("block_size"))), count,
               held, count ? 100.0 * static_cast<double>(held) / static_cast<double>(count) : 0.0);
    if (const auto* blocks = k.if_contains("blocks")) {
      for (const auto& bv : blocks->as_array()) {
        const auto& b = bv.as_object();
        std::string who = "owner " + slot_text(u(b.at("owner")));
        if (const auto* pid = b.if_contains("owner_pid"))
          who += fmt::format(" (pid {} {})", u(*pid), s(b.at("owner_name")));
        fmt::print("        block {:>6} gen {:>6} {}  {}\n", u(b.at("index")), u(b.at("generation")), s(b.at("handle")),
                   who);
      }
    }
  }

  const auto& rings = root.at("rings").as_array();
  fmt::print("\nrings ({} shown of {}, capacity {})\n", rings.size(), u(h.at("n_rings")), u(h.at("ring_capacity")));
  if (!rings.empty())
    fmt::print("  {:<5} {:<7} {:>10} {:>10} {:>6} {:>5} {:>5}  {:<22} {:<22} {}\n", "ring", "state", "head", "tail",
               "size", "prod", "cons", "consumer bell (w/seq)", "producer bell (w/seq)", "resets");
  for (const auto& rv : rings) {
    const auto& r = rv.as_object();
    auto bell = [&](const char* key) {
      const auto& b = r.at(key).as_object();
      return fmt::format("#{} {}/{}", u(b.at("index")), b.contains("waiters") ? u(b.at("waiters")) : 0,
                         b.contains("seq") ? u(b.at("seq")) : 0);
    };
    fmt::print("  {:<5} {:<7} {:>10} {:>10} {:>6} {:>5} {:>5}  {:<22} {:<22} {}{}\n", u(r.at("ring")), s(r.at("state")),
               u(r.at("head")), u(r.at("tail")), r.at("corrupt").as_bool() ? std::string("CORRUPT") : std::to_string(u(r.at("size"))),
               slot_text(u(r.at("producer_slot"))), slot_text(u(r.at("consumer_slot"))), bell("consumer_doorbell"),
               bell("producer_doorbell"), u(r.at("reset_count")), "");
  }
}

int run_inspect(InspectOptions opt) {
  std::string link;
  if (opt.fd < 0) {
    std::string err;
    auto fd = find_arena_fd(opt.pid, link, err);
    if (!fd) {
      std::fprintf(stderr, "tessera inspect: %s\n", err.c_str());
      return 1;
    }
    opt.fd = *fd;
  } else {
    char buf[4096];
    const std::string path = fmt::format("/proc/{}/fd/{}", opt.pid, opt.fd);
    const ssize_t n = readlink(path.c_str(), buf, sizeof buf - 1);
    if (n > 0) link.assign(buf, static_cast<std::size_t>(n));
  }
  auto arena = Arena::attach_proc(opt.pid, opt.fd);
  if (!arena) {
    std::fprintf(stderr, "tessera inspect: pid %d fd %d: %s (%s)\n", opt.pid, opt.fd, arena.error().message.c_str(),
                 errc_name(arena.error().code));
    return 1;
  }
  const json::object root = snapshot(*arena, opt, link);
  if (opt.json) {
    std::fputs(json::serialize(root).c_str(), stdout);
    std::fputc('\n', stdout);
  } else {
    print_text(root);
  }
  return 0;
}

}  // namespace

Subcommand add_inspect(CLI::App& parent) {
  auto opt = std::make_shared<InspectOptions>();
  CLI::App* sub = parent.add_subcommand("inspect", "Print a live arena: header, participants, slab blocks, rings");
  sub->add_option("--pid", opt->pid, "Process that holds the arena")->required()->check(CLI::PositiveNumber);
  sub->add_option("--fd", opt->fd, "Its descriptor of the arena (default: the first /memfd:tessera* one)")
      ->check(CLI::NonNegativeNumber);
  sub->add_flag("--json", opt->json, "Machine-readable output (one JSON object)");
  sub->add_flag("--all-rings", opt->all_rings, "Also list rings that were never opened");
  sub->add_flag("--no-blocks", opt->no_blocks, "Only per-class counts, not every held block");
  return {sub, [opt] { return run_inspect(*opt); }};
}

}  // namespace tessera::cli
