// libFuzzer target: the C ABI's handle tables, driven by random operation streams and
// checked against a std::map oracle (the Seastar/moodycamel habit).
//   - HandleTable (tiles, outputs, blocks, results: kind | owner | generation | index)
//     for two owners: insert, erase, find of live, used-up, foreign and forged handles;
//   - ObjectRegistry (tessera_client_t* / tessera_worker_t*): insert, retire (destroy,
//     double destroy), resolve after retire and of forged pointers;
//   - the real C ABI: a real client's block table (alloc, free, free twice, forged), and
//     real clients created, used, destroyed, used and destroyed again.
// Property: a lookup succeeds exactly when the oracle says the handle is live, and then
// names the oracle's value; nothing stale is ever dereferenced (ASan).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <vector>

#include <tessera/client.h>

#include "capi_common.hpp"

namespace capi = tessera::capi;

namespace {

[[noreturn]] void broken(const char* what) {
  std::fprintf(stderr, "capi handles property failed: %s (last error: %s)\n", what, tessera_last_error());
  std::abort();
}

struct Input {
  const std::uint8_t* p;
  std::size_t n;
  bool empty() const { return n == 0; }
  std::uint8_t byte() {
    if (n == 0) return 0;
    --n;
    return *p++;
  }
  std::uint64_t u64() {
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = (v << 8) | byte();
    return v;
  }
};

struct Obj {
  std::uint64_t id;
};

tessera_client_t* make_client(std::uint32_t blocks, const char* what) {
  const tessera_size_class_t classes[1] = {{4096, blocks}};
  tessera_client_options_t o;
  tessera_client_options_init(&o);
  o.classes = classes;
  o.n_classes = 1;
  o.n_rings = 2;
  o.prefault = 0;
  tessera_client_t* out = nullptr;
  if (tessera_client_create(&o, &out) != 0) broken(what);
  return out;
}

// A real client, shared by every input (creation maps an arena).
tessera_client_t* shared_client() {
  static tessera_client_t* c = make_client(64, "cannot create the shared client");
  return c;
}

tessera_client_t* new_client() { return make_client(4, "cannot create a client"); }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Input in{data, size};
  capi::HandleTable<std::uint64_t> tables[2] = {{capi::HandleKind::block, 1001}, {capi::HandleKind::result, 1002}};
  std::map<std::uint64_t, std::uint64_t> live[2];  // handle -> value
  std::vector<std::uint64_t> seen;                  // every handle ever given out (any kind)
  // One registry for every input (its slots keep their generations across inputs): each
  // input retires what it registered, so handles of earlier inputs are all stale.
  static capi::ObjectRegistry<Obj, 0x11> shared_registry;
  auto* registry = &shared_registry;
  // Creating a real client maps an arena (about a millisecond): only inputs that start
  // with 0xC1 may do it, so the other operations keep a high rate.
  const bool may_create = size != 0 && data[0] == 0xC1;
  std::map<std::uint64_t, Obj*> objs;  // registry handle -> object
  std::vector<std::uint64_t> obj_seen;
  tessera_client_t* client = shared_client();
  std::map<std::uint64_t, void*> blocks;  // the real client's live block handles
  std::vector<std::uint64_t> block_seen;
  std::vector<tessera_client_t*> dead_clients;
  int real_clients = 0;
  std::uint64_t next_value = 1;

  const auto pick = [&](const std::vector<std::uint64_t>& v) -> std::uint64_t {
    const std::uint8_t b = in.byte();
    if (v.empty() || b >= 240) return in.u64();  // forged
    return v[b % v.size()];
  };

  for (int steps = 0; !in.empty() && steps < 512; ++steps) {
    const std::uint8_t op = in.byte();
    const int t = op & 1;
    switch ((op >> 1) % 11) {
      case 0: {  // insert
        const std::uint64_t v = next_value++;
        const std::uint64_t h = tables[t].insert(std::uint64_t{v});
        if (h == 0 || live[t].count(h) != 0) broken("insert gave a null or live handle");
        live[t][h] = v;
        seen.push_back(h);
        break;
      }
      case 1: {  // erase a live handle (the table's contract: erase only what find accepted)
        if (live[t].empty()) break;
        auto it = live[t].begin();
        std::advance(it, in.byte() % live[t].size());
        if (tables[t].find(it->first, "fuzz") == nullptr) broken("a live handle was not found");
        tables[t].erase(it->first);
        live[t].erase(it);
        break;
      }
      case 2: {  // find any handle: live, used up, of the other table, or forged
        const std::uint64_t h = pick(seen);
        const std::uint64_t* got = tables[t].find(h, "fuzz");
        const auto it = live[t].find(h);
        if (it == live[t].end()) {
          if (got != nullptr) broken("a stale, foreign or forged handle was found");
          if (tessera_last_error_code() == 0) broken("a failed find recorded no error");
        } else if (got == nullptr || *got != it->second) {
          broken("a live handle did not name its value");
        }
        if ((tables[t].peek(h) != nullptr) != (it != live[t].end())) broken("peek disagrees with find");
        break;
      }
      case 3:  // clear
        tables[t].clear();
        live[t].clear();
        if (tables[t].live() != 0) broken("clear left entries");
        break;
      case 4: {  // registry insert
        auto* o = new Obj{next_value++};
        const std::uint64_t h = registry->insert(o);
        if (h == 0) {  // full: a detected condition, not an error here
          delete o;
          break;
        }
        if (objs.count(h) != 0) broken("registry reissued a live handle");
        objs[h] = o;
        obj_seen.push_back(h);
        break;
      }
      case 5: {  // registry retire (destroy, double destroy, forged)
        const std::uint64_t h = pick(obj_seen);
        Obj* o = registry->retire(reinterpret_cast<const void*>(static_cast<std::uintptr_t>(h)));
        const auto it = objs.find(h);
        if (it == objs.end()) {
          if (o != nullptr) broken("retire of a dead or forged handle returned an object");
        } else {
          if (o != it->second) broken("retire returned another object");
          delete o;
          objs.erase(it);
        }
        break;
      }
      case 6: {  // registry resolve
        const std::uint64_t h = pick(obj_seen);
        Obj* o = registry->resolve(reinterpret_cast<const void*>(static_cast<std::uintptr_t>(h)));
        const auto it = objs.find(h);
        if ((it == objs.end()) != (o == nullptr) || (o != nullptr && o != it->second)) broken("resolve disagrees");
        if (o != nullptr && o->id == 0) broken("resolved a bad object");
        break;
      }
      case 7: {  // real client: alloc a block
        if (blocks.size() >= 32) break;
        void* mem = nullptr;
        tessera_block_t b = 0;
        const int rc = tessera_client_alloc(client, 1 + in.byte() * 16, 0, &mem, nullptr, &b);
        if (rc == 0) {
          if (b == 0 || blocks.count(b) != 0 || mem == nullptr) broken("alloc gave a bad handle");
          std::memset(mem, 0xA5, 16);  // the block is ours: writable
          blocks[b] = mem;
          block_seen.push_back(b);
        } else if (rc != -TESSERA_ENOSPC && rc != -TESSERA_ETIMEDOUT) {
          broken("alloc failed unexpectedly");
        }
        break;
      }
      case 8: {  // real client: free any block handle
        const std::uint64_t b = pick(block_seen);
        const int rc = tessera_client_free_block(client, b);
        const auto it = blocks.find(b);
        if (it == blocks.end()) {
          if (rc == 0) broken("freed a stale or forged block handle");
        } else {
          if (rc != 0) broken("a live block did not free");
          blocks.erase(it);
        }
        break;
      }
      case 9: {  // real client: release a forged/stale result id
        if (tessera_client_release_result(client, pick(block_seen)) == 0) broken("released a result that does not exist");
        break;
      }
      case 10: {  // a real client: create, use, destroy, use after destroy, destroy again
        if (real_clients >= 1 || !may_create) {
          // Use one that died earlier: must stay detectably stale.
          if (!dead_clients.empty()) {
            std::uint32_t s = 0;
            if (tessera_client_open_stream(dead_clients[in.byte() % dead_clients.size()], nullptr, &s) != -TESSERA_EINVAL)
              broken("a destroyed client answered");
          }
          break;
        }
        ++real_clients;
        tessera_client_t* c = new_client();
        std::uint32_t s = 0;
        if (tessera_client_open_stream(c, nullptr, &s) != 0) broken("a live client refused open_stream");
        tessera_client_destroy(c);
        if (tessera_client_open_stream(c, nullptr, &s) != -TESSERA_EINVAL) broken("use after destroy was not EINVAL");
        if (tessera_client_in_flight(c) != 0) broken("in_flight of a destroyed client");
        tessera_client_destroy(c);  // double destroy: detected, nothing freed twice
        dead_clients.push_back(c);
        break;
      }
    }
  }
  for (auto& [b, p] : blocks) {
    if (tessera_client_free_block(client, b) != 0) broken("a live block did not free at the end");
  }
  for (auto& [h, o] : objs) {
    if (registry->retire(reinterpret_cast<const void*>(static_cast<std::uintptr_t>(h))) != o) broken("cleanup retire");
    delete o;
  }
  return 0;
}
