// Python bindings of the client API: embedded broker, streams, zero-copy input
// blocks and result arrays. A Client is used from one thread (like the C++ one).
#include <pybind11/stl.h>

#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <tessera/client.hpp>
#include <tessera/slab.hpp>

#include "common.hpp"

namespace tessera::py_bind {

struct PyClient {
  std::unique_ptr<Client> c;
  std::vector<TileResult> scratch;
  Client& get() {
    if (!c) throw py::value_error("tessera: the client is closed");
    return *c;
  }
};

struct PyInputBlock {
  std::shared_ptr<PyClient> owner;
  InputBlock block;
  DType dtype = DType::Invalid;  // remembered from array() as the default for submit()
  Shape shape{};
};

struct PyResult {
  std::shared_ptr<PyClient> owner;
  TileResult r;
};

namespace {

SubmitMode to_mode(const std::string& m) {
  if (m == "block") return SubmitMode::block;
  if (m == "fail_fast") return SubmitMode::fail_fast;
  if (m == "timeout") return SubmitMode::timeout;
  throw py::value_error("tessera: submit mode is 'block', 'fail_fast' or 'timeout'");
}

py::dict stats_dict(const StreamStats& s) {
  py::dict d;
  d["submitted"] = s.submitted;
  d["queued"] = s.queued;
  d["running"] = s.running;
  d["completed"] = s.completed;
  d["failed"] = s.failed;
  d["canceled"] = s.canceled;
  d["retried"] = s.retried;
  d["p50_us"] = s.p50_us;
  d["p99_us"] = s.p99_us;
  return d;
}

// One per-tile argument of submit_array: None (0 for every tile), one int for every
// tile, or a sequence of n ints.
template <class T>
std::vector<T> per_tile(const py::object& v, std::size_t n, const char* name) {
  if (v.is_none()) return std::vector<T>(n, T{});
  if (PyIndex_Check(v.ptr()) != 0 && !PyBool_Check(v.ptr())) return std::vector<T>(n, v.cast<T>());
  if (!PySequence_Check(v.ptr()) || PyUnicode_Check(v.ptr()))
    throw py::type_error(std::string("tessera: submit_array: ") + name + " must be None, an int or a sequence of ints");
  py::sequence seq = py::reinterpret_borrow<py::sequence>(v);
  if (seq.size() != n)
    throw py::value_error(std::string("tessera: submit_array: ") + name + " has " + std::to_string(seq.size()) +
                          " values for " + std::to_string(n) + " tiles");
  std::vector<T> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = seq[i].cast<T>();
  return out;
}

}  // namespace

void bind_client(py::module_& m) {
  py::class_<PyInputBlock>(m, "InputBlock", "An arena block the client fills in place, then submits.")
      .def_property_readonly("valid", [](const PyInputBlock& b) { return b.block.valid(); }, "False once submitted.")
      .def_property_readonly("capacity", [](const PyInputBlock& b) { return b.block.bytes().size(); })
      .def_property_readonly("address", [](const PyInputBlock& b) { return reinterpret_cast<std::uintptr_t>(b.block.bytes().data()); })
      .def(
          "array",
          [](py::object self, py::object dtype, py::object shape) {
            PyInputBlock& b = self.cast<PyInputBlock&>();
            if (!b.block.valid()) throw py::value_error("tessera: the input block was already submitted");
            const DType dt = to_dtype(dtype);
            const Shape sh = to_shape(shape);
            const TensorView v = b.block.view(dt, sh);
            if (!tensor_nbytes(dt, sh))
              throw py::value_error("tessera: shape " + sh.str() + " of " + std::string(dtype_name(dt)) +
                                    " overflows a 64-bit byte count");
            if (!v.valid())
              throw py::value_error("tessera: shape " + sh.str() + " of " + std::string(dtype_name(dt)) + " needs " +
                                    std::to_string(v.nbytes()) + " bytes; the block holds " + std::to_string(v.capacity()));
            b.dtype = dt;
            b.shape = sh;
            return view_array(v, self, true);
          },
          py::arg("dtype"), py::arg("shape"),
          "A writable NumPy array over the block (zero copy). Do not use it after submit().");

  py::class_<PyResult>(m, "TileResult", "The one outcome of a submitted tile.")
      .def_property_readonly("seq", [](const PyResult& r) { return r.r.seq; })
      .def_property_readonly("stream", [](const PyResult& r) { return r.r.stream; })
      .def_property_readonly("outcome", [](const PyResult& r) { return std::string(outcome_name(r.r.outcome)); },
                             "'completed', 'failed' or 'canceled'.")
      .def_property_readonly("status", [](const PyResult& r) { return static_cast<int>(r.r.status); },
                             "tessera.fb.TileStatus code (0 = ok).")
      .def_property_readonly("error", [](const PyResult& r) { return r.r.error; }, "Why, for failed/canceled tiles.")
      .def_property_readonly("x", [](const PyResult& r) { return r.r.meta.x; })
      .def_property_readonly("y", [](const PyResult& r) { return r.r.meta.y; })
      .def_property_readonly("level", [](const PyResult& r) { return r.r.meta.level; })
      .def_property_readonly("op", [](const PyResult& r) { return r.r.meta.op; })
      .def_property_readonly("tag", [](const PyResult& r) { return r.r.meta.tag; })
      .def_property_readonly("worker", [](const PyResult& r) { return r.r.worker; })
      .def_property_readonly("epoch", [](const PyResult& r) { return r.r.epoch; })
      .def_property_readonly("latency_us", [](const PyResult& r) { return r.r.latency_us; })
      .def_property_readonly(
          "output",
          [](py::object self) -> py::object {
            PyResult& r = self.cast<PyResult&>();
            if (!r.r.output.valid()) return py::none();
            return view_array(r.r.output.view(), self, true);
          },
          "The worker's output as a NumPy array over the arena block (zero copy), or None. "
          "The block is freed when this result (and every array from it) is gone, or at release().")
      .def("release", [](PyResult& r) { r.r.output.release(); },
           "Frees the output block now. Arrays taken from `output` must not be used afterwards.")
      .def("__repr__", [](const PyResult& r) {
        return "<tessera.TileResult stream=" + std::to_string(r.r.stream) + " seq=" + std::to_string(r.r.seq) + " " +
               outcome_name(r.r.outcome) + (r.r.error.empty() ? "" : ": " + r.r.error) + ">";
      });

  py::class_<PyClient, std::shared_ptr<PyClient>>(m, "Client", "Host side: an embedded broker and its streams.")
      .def_static(
          "embedded",
          [](std::vector<std::pair<std::uint64_t, std::uint32_t>> classes, std::uint32_t n_rings, std::uint32_t ring_capacity,
             bool prefault, std::uint32_t max_in_flight, std::uint32_t worker_window, std::uint32_t spin_us, bool sleep) {
            ClientOptions o;
            if (!classes.empty()) {
              o.arena.classes.clear();
              for (auto& [size, count] : classes) o.arena.classes.push_back({size, count});
            }
            o.arena.n_rings = n_rings;
            o.arena.ring_capacity = ring_capacity;
            o.arena.prefault = prefault;
            o.max_in_flight = max_in_flight;
            o.worker_window = worker_window;
            o.wait.spin_ns = spin_us * 1000;
            o.wait.sleep = sleep;
            auto pc = std::make_shared<PyClient>();
            pc->c = unwrap(Client::embedded(o));
            return pc;
          },
          py::arg("classes") = std::vector<std::pair<std::uint64_t, std::uint32_t>>{}, py::arg("n_rings") = 64,
          py::arg("ring_capacity") = 1024, py::arg("prefault") = false, py::arg("max_in_flight") = 4096,
          py::arg("worker_window") = 64, py::arg("spin_us") = 50, py::arg("sleep") = true,
          "Starts an embedded broker on a fresh arena. `classes` is a list of (block_size, block_count).")
      .def_static(
          "connect",
          [](const std::string& path, std::uint32_t max_in_flight, std::uint32_t worker_window, std::uint32_t spin_us,
             bool sleep, double timeout) {
            ClientOptions o;
            o.max_in_flight = max_in_flight;
            o.worker_window = worker_window;
            o.wait.spin_ns = spin_us * 1000;
            o.wait.sleep = sleep;
            auto pc = std::make_shared<PyClient>();
            py::gil_scoped_release nogil;
            auto c = Client::connect(path, o, std::chrono::milliseconds(static_cast<std::int64_t>(timeout * 1000)));
            py::gil_scoped_acquire gil;
            pc->c = unwrap(std::move(c));
            return pc;
          },
          py::arg("path"), py::arg("max_in_flight") = 4096, py::arg("worker_window") = 64, py::arg("spin_us") = 50,
          py::arg("sleep") = true, py::arg("timeout") = 10.0,
          "Connects to a running `tessera-broker --listen PATH` (its arena and workers).")
      .def(
          "add_external_worker",
          [](PyClient& pc, const std::string& name) {
            auto ew = unwrap(pc.get().add_external_worker(name));
            return py::make_tuple(ew.index, ew.slot, ew.arena_fd);
          },
          py::arg("name") = "worker",
          "Registers a worker slot for a process the caller starts; returns (index, slot, arena_fd). Start the "
          "process with the arena fd inherited and TESSERA_ARENA_FD/TESSERA_SLOT in its environment.")
      .def(
          "start_pool",
          [](PyClient& pc, std::vector<std::string> argv, int count, std::map<std::string, std::string> env,
             std::vector<std::string> init_scripts, int max_retries, bool restart, double ready_timeout, double cancel_grace,
             std::vector<std::string> devices) {
            PoolSpec spec;
            spec.devices = std::move(devices);
            spec.argv = std::move(argv);
            spec.count = count;
            spec.env = std::move(env);
            spec.init_scripts = std::move(init_scripts);
            spec.max_retries = max_retries;
            spec.restart = restart;
            spec.ready_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(ready_timeout * 1000));
            spec.cancel_grace = std::chrono::milliseconds(static_cast<std::int64_t>(cancel_grace * 1000));
            Result<void> r;
            {
              py::gil_scoped_release nogil;  // waits for every worker's readiness
              r = pc.get().start_pool(spec);
            }
            unwrap(std::move(r));
          },
          py::arg("argv"), py::arg("count") = 1, py::arg("env") = std::map<std::string, std::string>{},
          py::arg("init_scripts") = std::vector<std::string>{}, py::arg("max_retries") = 1, py::arg("restart") = true,
          py::arg("ready_timeout") = 30.0, py::arg("cancel_grace") = 2.0, py::arg("devices") = std::vector<std::string>{},
          "Starts a supervised pool (the broker's supervisor: restarts, retries, death detection) and waits until "
          "every worker is ready. `env` is added to a scrubbed environment. `devices`: one worker per device "
          "(overrides count), each with CUDA_VISIBLE_DEVICES set to its device.")
      .def("set_worker_pid", [](PyClient& pc, std::int32_t index, int pid) { pc.get().set_worker_pid(index, pid); })
      .def("worker_died", [](PyClient& pc, std::int32_t index, const std::string& reason) { pc.get().worker_died(index, reason); },
           "Tells the broker a worker is gone: its tiles are retried or failed, its blocks reclaimed.")
      .def("kill_worker", [](PyClient& pc, std::int32_t index) { unwrap(pc.get().kill_worker(index)); })
      .def("workers", [](PyClient& pc) {
        py::list l;
        for (const auto& w : pc.get().workers()) {
          py::dict d;
          d["index"] = w.index;
          d["slot"] = w.slot;
          d["pid"] = w.pid;
          d["alive"] = w.alive;
          d["in_flight"] = w.in_flight;
          d["completed"] = w.completed;
          d["busy_ns"] = w.busy_ns;
          d["restarts"] = w.restarts;
          l.append(d);
        }
        return l;
      })
      .def(
          "open_stream",
          [](PyClient& pc, int priority, bool ordered, std::uint32_t max_in_flight, double deadline) {
            StreamOptions o;
            o.priority = priority;
            o.ordering = ordered ? Ordering::submission : Ordering::completion;
            o.max_in_flight = max_in_flight;
            o.deadline = seconds(deadline);
            return unwrap(pc.get().open_stream(o));
          },
          py::arg("priority") = 0, py::arg("ordered") = false, py::arg("max_in_flight") = 256, py::arg("deadline") = 0.0,
          "Opens a stream; `ordered` delivers results in submission order; `deadline` in seconds (0 = none).")
      .def("close_stream", [](PyClient& pc, std::uint32_t s) { unwrap(pc.get().close_stream(s)); })
      .def(
          "alloc",
          [](const std::shared_ptr<PyClient>& pc, std::uint64_t nbytes, double timeout) {
            auto b = std::make_unique<PyInputBlock>();
            b->owner = pc;
            Result<void> r;
            {
              py::gil_scoped_release nogil;
              r = pc->get().alloc(nbytes, b->block, seconds(timeout));
            }
            unwrap(std::move(r));
            return b;
          },
          py::arg("nbytes"), py::arg("timeout") = 5.0, "Allocates an input block of at least `nbytes` (waits up to `timeout` s).")
      .def(
          "submit",
          [](PyClient& pc, std::uint32_t stream, PyInputBlock& b, py::object dtype, py::object shape, std::int32_t x,
             std::int32_t y, std::uint8_t level, std::uint32_t op, std::uint64_t tag, double deadline,
             const std::string& mode, double timeout) {
            TileMeta meta;
            meta.dtype = dtype.is_none() ? b.dtype : to_dtype(dtype);
            meta.shape = shape.is_none() ? b.shape : to_shape(shape);
            if (dtype_size(meta.dtype) == 0 || meta.shape.ndim == 0)
              throw py::value_error("tessera: submit needs dtype= and shape= (or a prior block.array(dtype, shape))");
            meta.x = x;
            meta.y = y;
            meta.level = level;
            meta.op = op;
            meta.tag = tag;
            meta.deadline = seconds(deadline);
            const SubmitMode md = to_mode(mode);
            Result<std::uint64_t> r = fail(Errc::unavailable, "");
            {
              py::gil_scoped_release nogil;
              r = pc.get().submit(stream, b.block, meta, md, seconds(timeout));
            }
            return unwrap(std::move(r));
          },
          py::arg("stream"), py::arg("block"), py::arg("dtype") = py::none(), py::arg("shape") = py::none(), py::arg("x") = 0,
          py::arg("y") = 0, py::arg("level") = 0, py::arg("op") = 0, py::arg("tag") = 0, py::arg("deadline") = 0.0,
          py::arg("mode") = "block", py::arg("timeout") = 30.0,
          "Submits a filled block; returns the tile's sequence number in the stream. The block is consumed.")
      .def(
          "submit_array",
          [](PyClient& pc, std::uint32_t stream, py::handle tiles, py::object x, py::object y, std::uint8_t level,
             std::uint32_t op, py::object tag, double deadline, const std::string& mode, double timeout) {
            py::array a = py::array::ensure(tiles, py::array::c_style);
            if (!a) throw py::type_error("tessera: submit_array: tiles must be array-like");
            if (a.ndim() < 2 || a.ndim() > 5)
              throw py::value_error("tessera: submit_array: tiles must be (n, *tile_shape) with 1 to 4 tile dimensions, got shape " +
                                    std::string(py::str(a.attr("shape"))));
            Client& c = pc.get();
            const std::size_t n = static_cast<std::size_t>(a.shape(0));
            TileMeta meta;
            meta.dtype = to_dtype(a.dtype());
            meta.shape.ndim = static_cast<std::uint8_t>(a.ndim() - 1);
            for (std::uint8_t d = 0; d < meta.shape.ndim; ++d) {
              if (a.shape(d + 1) > 0xffffffffLL) throw py::value_error("tessera: submit_array: a tile dimension exceeds 2^32-1");
              meta.shape.dims[d] = static_cast<std::uint32_t>(a.shape(d + 1));
            }
            meta.level = level;
            meta.op = op;
            meta.deadline = seconds(deadline);
            const std::vector<std::int32_t> xs = per_tile<std::int32_t>(x, n, "x");
            const std::vector<std::int32_t> ys = per_tile<std::int32_t>(y, n, "y");
            const std::vector<std::uint64_t> tags = per_tile<std::uint64_t>(tag, n, "tag");
            const SubmitMode md = to_mode(mode);
            const std::uint64_t row = n == 0 ? 0 : static_cast<std::uint64_t>(a.nbytes()) / n;
            const auto* src = static_cast<const std::byte*>(a.data());
            std::vector<std::uint64_t> seqs;
            seqs.reserve(n);
            Error err{};
            {
              py::gil_scoped_release nogil;
              for (std::size_t i = 0; i < n; ++i) {
                InputBlock b;
                if (Result<void> r = c.alloc(row, b, seconds(timeout)); !r) {
                  err = r.error();
                  break;
                }
                std::memcpy(b.bytes().data(), src + i * row, row);
                meta.x = xs[i];
                meta.y = ys[i];
                meta.tag = tags[i];
                Result<std::uint64_t> r = c.submit(stream, b, meta, md, seconds(timeout));
                if (!r) {
                  err = r.error();
                  break;
                }
                seqs.push_back(*r);
              }
            }
            if (seqs.empty() && n > 0) raise(Error{err.code, "submit_array: tile 0 of " + std::to_string(n) + ": " + err.message});
            return seqs;
          },
          py::arg("stream"), py::arg("tiles"), py::arg("x") = py::none(), py::arg("y") = py::none(), py::arg("level") = 0,
          py::arg("op") = 0, py::arg("tag") = py::none(), py::arg("deadline") = 0.0, py::arg("mode") = "block",
          py::arg("timeout") = 30.0,
          "Submits tiles[i] for each i of an array (n, *tile_shape): one block, one copy and one submit per tile, "
          "natively with the GIL released. x, y, tag: None, one int, or n ints. Returns the tiles' sequence "
          "numbers, in order. Fewer than n: tile len(result) could not be allocated or submitted within `timeout` "
          "(submit the rest again); the error is raised only when not even the first tile could be.")
      .def(
          "poll",
          [](const std::shared_ptr<PyClient>& pc, std::size_t max, double timeout) {
            pc->get();
            pc->scratch.clear();
            {
              py::gil_scoped_release nogil;
              (void)pc->c->poll(pc->scratch, max, seconds(timeout));
            }
            py::list out(pc->scratch.size());
            for (std::size_t i = 0; i < pc->scratch.size(); ++i)
              out[i] = py::cast(std::unique_ptr<PyResult>(new PyResult{pc, std::move(pc->scratch[i])}));
            pc->scratch.clear();
            return out;
          },
          py::arg("max") = 64, py::arg("timeout") = 0.0, "Delivers up to `max` outcomes, waiting up to `timeout` s for the first.")
      .def_property_readonly("in_flight", [](PyClient& pc) { return pc.get().in_flight(); })
      .def("cancel", [](PyClient& pc, std::uint32_t s, std::uint64_t seq) { unwrap(pc.get().cancel(s, seq)); })
      .def("cancel_stream", [](PyClient& pc, std::uint32_t s) { unwrap(pc.get().cancel_stream(s)); })
      .def("advance_epoch", [](PyClient& pc, std::uint32_t s) { return unwrap(pc.get().advance_epoch(s)); },
           "Starts a new viewport epoch: older tiles of the stream are canceled. Returns the new epoch.")
      .def("stats", [](PyClient& pc, std::uint32_t s) { return stats_dict(pc.get().stats(s)); })
      .def_property_readonly("arena_fd", [](PyClient& pc) { return pc.get().arena().fd(); })
      .def(
          "held_blocks",
          [](PyClient& pc, std::uint32_t owner) { return Slab::count_held(pc.get().arena(), owner); },
          py::arg("owner") = kNoSlot, "Blocks held by participant slot `owner` (default: every participant).")
      .def(
          "close",
          [](std::shared_ptr<PyClient>& pc) {
            // Blocks and results still alive reference the arena: then the broker stops
            // when the last of them is gone (they hold the client).
            if (pc.use_count() > 2) return false;
            py::gil_scoped_release nogil;
            pc->c.reset();
            return true;
          },
          "Stops the embedded broker now if no input block or result is alive (returns True), otherwise when the "
          "last of them is gone.");
}

}  // namespace tessera::py_bind
