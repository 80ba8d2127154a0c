// Python bindings of the worker SDK: Worker (in-process or under the C++
// WorkerRuntime), Tile, zero-copy input/output arrays.
//
// Lifetimes: every array handed out keeps its Tile alive (array base), the Tile keeps
// the Worker alive (shared_ptr), and the Worker keeps the arena mapped, so an array
// can never point into unmapped memory. After a tile is answered its input block
// belongs to the client again: reading the old array then gives unspecified bytes.
#include <pybind11/stl.h>

#include <fcntl.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <tessera/batch.hpp>
#include <tessera/runtime.hpp>
#include <tessera/worker.hpp>

#include "common.hpp"

namespace tessera::py_bind {

struct PyTile;

// One worker: either attached directly (from_env) or owned by a WorkerRuntime.
struct PyWorker {
  std::unique_ptr<Worker> owned;
  std::unique_ptr<WorkerRuntime> rt;
  Worker* w = nullptr;
  std::vector<Tile> batch;
  std::vector<PyTile*> live;          // tiles handed to Python and not yet destroyed
  PyObject* on_script = nullptr;      // strong ref; released with the GIL held
  std::vector<PyObject*> before_unmap;  // strong refs: called (GIL held) before the arena is unmapped

  ~PyWorker();
  void close();
};

struct PyTile {
  std::shared_ptr<PyWorker> owner;
  Tile tile;
  std::vector<OutputBlock> outs;      // output blocks allocated for this tile, not yet published

  PyTile(std::shared_ptr<PyWorker> o, Tile&& t) : owner(std::move(o)), tile(std::move(t)) {
    owner->live.push_back(this);
  }
  ~PyTile() {
    auto& l = owner->live;
    l.erase(std::remove(l.begin(), l.end(), this), l.end());
    // An unanswered tile is failed by Tile's destructor; unpublished outputs are freed.
  }
  Worker& worker() {
    if (owner->w == nullptr) throw py::value_error("tessera: the worker is closed");
    return *owner->w;
  }
  void need_pending() const {
    if (!tile.pending()) throw py::value_error("tessera: tile " + std::to_string(tile.seq()) + " was already answered");
  }
};

PyWorker::~PyWorker() {
  close();
  if (Py_IsInitialized() != 0 && (on_script != nullptr || !before_unmap.empty())) {
    py::gil_scoped_acquire g;
    // Last registered first (e.g. a CUDA host registration of the mapping goes before munmap).
    for (auto it = before_unmap.rbegin(); it != before_unmap.rend(); ++it) {
      PyObject* r = PyObject_CallNoArgs(*it);
      if (r == nullptr) PyErr_WriteUnraisable(*it);
      Py_XDECREF(r);
      Py_DECREF(*it);
    }
    if (on_script != nullptr) Py_DECREF(on_script);
  }
}

void PyWorker::close() {
  // Answer whatever Python still holds, so no tile and no block stays with us.
  for (PyTile* t : live) {
    if (t->tile.pending() && w != nullptr) (void)w->fail(t->tile, TileStatus::HandlerError, "worker stopped before answering this tile");
    t->outs.clear();
  }
  batch.clear();
  if (rt) {
    rt->request_stop();
    // The protocol thread may be waiting for the GIL inside an init/script callback.
    if (PyGILState_Check() != 0) {
      py::gil_scoped_release r;
      (void)rt->finish();
    } else {
      (void)rt->finish();
    }
  }
}

namespace {

std::uintptr_t array_address(const py::array& a) { return reinterpret_cast<std::uintptr_t>(a.data()); }

// Finds an output block of `t` whose memory is exactly `a` (same start, dtype, shape, C order).
OutputBlock* find_own_output(PyTile& t, const py::array& a) {
  if ((a.flags() & py::array::c_style) == 0) return nullptr;
  for (auto& o : t.outs) {
    if (!o.valid() || reinterpret_cast<std::uintptr_t>(o.view().data()) != array_address(a)) continue;
    const TensorView& v = o.view();
    if (static_cast<std::size_t>(a.ndim()) != v.shape().ndim) return nullptr;
    for (std::uint8_t i = 0; i < v.shape().ndim; ++i)
      if (static_cast<std::uint64_t>(a.shape(i)) != v.shape().dims[i]) return nullptr;
    if (to_dtype(a.dtype()) != v.dtype()) return nullptr;
    return &o;
  }
  return nullptr;
}

// Why Worker::alloc_output gave no block.
std::string no_block_reason(AllocStatus st, DType dt, const Shape& sh) {
  if (st == AllocStatus::too_large) return sh.str() + " of " + std::string(dtype_name(dt)) + " does not fit any arena block";
  return "no arena block free";
}

// Answers `t` with its output block `out`; the tile's other outputs are freed. Returns
// false if the client's channel closed meanwhile (nobody to answer).
bool hand_over(PyTile& t, OutputBlock& out) {
  const Errc rc = t.worker().publish(t.tile, out);
  t.outs.clear();  // other outputs of this tile are not needed any more
  if (rc != Errc::ok && rc != Errc::closed) throw TesseraError(rc, std::string("tile.publish: ") + errc_name(rc));
  return rc == Errc::ok;
}

py::array alloc_output(PyTile& t, py::handle self, const py::handle& dtype, const py::handle& shape) {
  const DType dt = to_dtype(dtype);
  const Shape sh = to_shape(shape);
  OutputBlock out;
  const AllocStatus st = t.worker().alloc_output(dt, sh, out);
  if (st != AllocStatus::ok)
    throw TesseraError(st == AllocStatus::too_large ? Errc::invalid_argument : Errc::no_space,
                       "tile.output: " + no_block_reason(st, dt, sh));
  t.outs.push_back(std::move(out));
  return view_array(t.outs.back().view(), self, true);
}

void publish(PyTile& t, py::handle self, py::handle result) {
  t.need_pending();
  py::array a = py::array::ensure(result);
  if (!a) a = py::array(py::module_::import("numpy").attr("asarray")(result));
  OutputBlock* own = find_own_output(t, a);
  if (own == nullptr) {
    // Not one of this tile's output blocks (or reshaped): copy into a fresh one.
    py::object shape = a.attr("shape");
    if (a.ndim() == 0) shape = py::make_tuple(1);
    py::array dst = alloc_output(t, self, a.dtype(), shape);
    py::module_::import("numpy").attr("copyto")(dst, a.attr("reshape")(shape), "unsafe");
    own = &t.outs.back();
  }
  (void)hand_over(t, *own);
}

py::bytes descriptor_bytes(const TileDesc& d) {
  return py::bytes(reinterpret_cast<const char*>(&d), sizeof(TileDesc));
}

py::object take(const std::shared_ptr<PyWorker>& pw, std::size_t max_batch, double timeout) {
  if (pw->w == nullptr) throw py::value_error("tessera: the worker is closed");
  // Tiles of the previous batch that Python dropped unanswered were failed by their destructors.
  const auto deadline = Clock::now() + seconds(timeout);
  TakeStatus st = TakeStatus::timeout;
  for (;;) {
    const auto left = std::max<Clock::duration>(deadline - Clock::now(), Clock::duration::zero());
    const auto slice = std::min<Clock::duration>(left, std::chrono::milliseconds(50));
    {
      py::gil_scoped_release nogil;  // the wait happens without the GIL
      st = pw->w->take(pw->batch, max_batch, slice);
    }
    if (st != TakeStatus::timeout) break;
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();  // KeyboardInterrupt etc.
    if (Clock::now() >= deadline) break;
  }
  if (st == TakeStatus::stopped) return py::none();
  py::list out(pw->batch.size());
  for (std::size_t i = 0; i < pw->batch.size(); ++i)
    out[i] = py::cast(std::make_unique<PyTile>(pw, std::move(pw->batch[i])));
  pw->batch.clear();
  return out;
}

// The tiles of a batch as PyTile pointers; every one pending, of one dtype and shape,
// from this worker. `what` names the calling function in errors.
std::vector<PyTile*> batch_tiles(const std::shared_ptr<PyWorker>& pw, const py::sequence& tiles, const char* what,
                                 bool need_pending) {
  if (pw->w == nullptr) throw py::value_error("tessera: the worker is closed");
  std::vector<PyTile*> out;
  out.reserve(tiles.size());
  for (std::size_t i = 0; i < tiles.size(); ++i) {
    PyTile& t = tiles[i].cast<PyTile&>();
    if (t.owner.get() != pw.get())
      throw py::value_error(std::string("tessera: ") + what + ": tile " + std::to_string(i) + " was taken by another worker");
    if (need_pending) t.need_pending();
    out.push_back(&t);
  }
  return out;
}

// Copies each tile's input into dest[i]: one memcpy per tile, GIL released.
std::size_t gather(const std::shared_ptr<PyWorker>& pw, const py::sequence& tiles, py::array dest) {
  const std::vector<PyTile*> ts = batch_tiles(pw, tiles, "gather", true);
  if (ts.empty()) return 0;
  const TensorView& first = ts[0]->tile.input();
  if ((dest.flags() & py::array::c_style) == 0 || !dest.writeable())
    throw py::value_error("tessera: gather: dest must be a writable C-contiguous array");
  if (to_dtype(dest.dtype()) != first.dtype())
    throw py::type_error("tessera: gather: dest is " + std::string(py::str(dest.dtype())) + ", the tiles are " +
                         std::string(dtype_name(first.dtype())));
  const Shape& sh = first.shape();
  bool shape_ok = dest.ndim() == sh.ndim + 1 && static_cast<std::size_t>(dest.shape(0)) >= ts.size();
  for (std::uint8_t d = 0; shape_ok && d < sh.ndim; ++d) shape_ok = static_cast<std::uint64_t>(dest.shape(d + 1)) == sh.dims[d];
  if (!shape_ok)
    throw py::value_error("tessera: gather: dest has shape " + std::string(py::str(dest.attr("shape"))) + ", " +
                          std::to_string(ts.size()) + " tiles of " + sh.str() + " need (>= " + std::to_string(ts.size()) +
                          ", " + sh.str() + ")");
  const std::size_t row = static_cast<std::size_t>(first.nbytes());
  std::vector<const std::byte*> src(ts.size());
  for (std::size_t i = 0; i < ts.size(); ++i) {
    const TensorView& v = ts[i]->tile.input();
    if (v.dtype() != first.dtype() || !(v.shape() == sh))
      throw py::value_error("tessera: gather: tile " + std::to_string(i) + " is " + std::string(dtype_name(v.dtype())) +
                            v.shape().str() + ", the batch is " + std::string(dtype_name(first.dtype())) + sh.str());
    src[i] = v.data();
  }
  auto* dst = static_cast<std::byte*>(dest.mutable_data());
  py::gil_scoped_release nogil;
  for (std::size_t i = 0; i < src.size(); ++i) std::memcpy(dst + i * row, src[i], row);
  return ts.size();
}

// Answers every pending tile i with out[i]: an output block each, one memcpy, publish.
// A tile that cannot get a block is failed; the rest are published. Returns how many
// were published.
std::size_t publish_batch(const std::shared_ptr<PyWorker>& pw, const py::sequence& tiles, const py::handle& result) {
  const std::vector<PyTile*> ts = batch_tiles(pw, tiles, "publish_batch", false);
  py::array a = py::array::ensure(result, py::array::c_style);
  if (!a) throw py::type_error("tessera: publish_batch: the result is not array-like");
  if (a.ndim() == 0 || static_cast<std::size_t>(a.shape(0)) != ts.size())
    throw py::value_error("tessera: publish_batch: result of shape " + std::string(py::str(a.attr("shape"))) + " for " +
                          std::to_string(ts.size()) + " tiles");
  const DType dt = to_dtype(a.dtype());
  Shape sh;
  if (a.ndim() == 1) {
    sh.ndim = 1;
    sh.dims[0] = 1;
  } else {
    if (a.ndim() > 5) throw py::value_error("tessera: publish_batch: each slice has at most 4 dimensions");
    sh.ndim = static_cast<std::uint8_t>(a.ndim() - 1);
    for (std::uint8_t d = 0; d < sh.ndim; ++d) sh.dims[d] = static_cast<std::uint32_t>(a.shape(d + 1));
  }
  const std::size_t row = ts.empty() ? 0 : static_cast<std::size_t>(a.nbytes()) / ts.size();
  const auto* src = static_cast<const std::byte*>(a.data());
  Worker& w = *pw->w;
  const WakeupBatch one_wakeup(w);  // the client is woken once for the whole batch
  std::size_t published = 0;
  for (std::size_t i = 0; i < ts.size(); ++i) {
    PyTile& t = *ts[i];
    if (!t.tile.pending()) continue;
    OutputBlock out;
    const AllocStatus st = w.alloc_output(dt, sh, out);
    if (st != AllocStatus::ok) {
      (void)w.fail(t.tile, TileStatus::HandlerError, "no output block for this tile: " + no_block_reason(st, dt, sh));
      t.outs.clear();
      continue;
    }
    std::memcpy(out.view().data(), src + i * row, row);
    if (hand_over(t, out)) ++published;
  }
  return published;
}

// The batch loop for Python handlers: tessera::Batcher (the one grouping loop, shared
// with C++ serve_batched) takes and groups tiles without the GIL; each due batch is
// handed to `handler(batch, tiles)` with it. See tessera/batch.py for the contract.
class PyBatcher {
 public:
  PyBatcher(std::shared_ptr<PyWorker> pw, BatchOptions o) : pw_(std::move(pw)), b_(worker(pw_), o) {}

  bool step(const py::object& handler) {
    bool more = false;
    {
      py::gil_scoped_release nogil;  // the take waits without the GIL; a batch retakes it
      more = b_.step(call(handler));
    }
    rethrow();
    return more;
  }
  void flush(const py::object& handler) {
    {
      py::gil_scoped_release nogil;
      b_.flush(call(handler));
    }
    rethrow();
  }
  const Batcher& batcher() const noexcept { return b_; }

 private:
  static Worker& worker(const std::shared_ptr<PyWorker>& pw) {
    if (pw->w == nullptr) throw py::value_error("tessera: the worker is closed");
    return *pw->w;
  }

  // Runs inside Batcher::run, on the thread that called step(); lets no exception out.
  // After a KeyboardInterrupt or SystemExit from the handler, the batches still due in
  // this step fail without calling Python, and step() raises it.
  BatchHandler call(const py::object& handler) {
    return [this, &handler](Worker& w, Batch& b) {
      if (interrupted_) {
        for (Tile& t : b.tiles()) (void)w.fail(t, TileStatus::HandlerError, "the batch loop was interrupted");
        return;
      }
      py::gil_scoped_acquire gil;
      try {
        run(handler, b);
      } catch (py::error_already_set& e) {
        e.discard_as_unraisable("tessera batch loop");  // this module's own failure; the tiles are failed below
      } catch (const std::exception& e) {
        PyErr_SetString(PyExc_RuntimeError, e.what());
        PyErr_WriteUnraisable(nullptr);
      }
    };
  }

  void run(const py::object& handler, Batch& b) {
    const std::size_t n = b.size();
    py::list tiles(n);
    for (std::size_t i = 0; i < n; ++i) tiles[i] = py::cast(std::make_unique<PyTile>(pw_, std::move(b[i])));
    const auto fail_pending = [&](const std::string& why) {
      for (std::size_t i = 0; i < n; ++i) {
        PyTile& t = tiles[i].cast<PyTile&>();
        if (t.tile.pending()) (void)t.worker().fail(t.tile, TileStatus::HandlerError, why);
      }
    };
    py::object batch = py::none();
    if (b.data() != nullptr) {
      std::vector<py::ssize_t> shape{static_cast<py::ssize_t>(n)};
      for (std::uint8_t d = 0; d < b.tile_shape().ndim; ++d) shape.push_back(static_cast<py::ssize_t>(b.tile_shape().dims[d]));
      // Over the batcher's reused buffer: valid during the call only (documented).
      batch = py::array(np_dtype(b.dtype()), shape, b.data(), py::none());
    }
    py::object out;
    try {
      out = handler(batch, tiles);
    } catch (py::error_already_set& e) {
      // Every still-pending tile of this batch fails with the handler's traceback.
      fail_pending(traceback(e));
      if (!e.matches(PyExc_Exception)) {  // KeyboardInterrupt, SystemExit: for step() to raise
        e.restore();
        interrupted_ = true;
      }
      return;
    }
    if (out.is_none()) {
      fail_pending("batch handler returned None without answering the tile");
      return;
    }
    try {
      (void)publish_batch(pw_, tiles, out);
    } catch (py::error_already_set& e) {
      fail_pending(traceback(e));
    } catch (const std::exception& e) {
      fail_pending(std::string("batch handler result: ") + e.what());
    }
    fail_pending("batch handler returned without answering the tile");
  }

  static std::string traceback(py::error_already_set& e) {
    py::object lines = py::module_::import("traceback").attr("format_exception")(e.type(), e.value(), e.trace());
    return py::str("").attr("join")(lines).cast<std::string>();
  }

  void rethrow() {
    if (interrupted_) {
      interrupted_ = false;
      throw py::error_already_set();  // the handler's KeyboardInterrupt or SystemExit, restored above
    }
  }

  std::shared_ptr<PyWorker> pw_;
  Batcher b_;
  bool interrupted_ = false;
};

}  // namespace

void bind_worker(py::module_& m) {
  py::class_<PyTile>(m, "Tile", R"doc(One request taken from the broker. Answer it exactly once with
publish(), fail() or cancel(); a tile dropped unanswered is failed by the SDK.)doc")
      .def_property_readonly("seq", [](const PyTile& t) { return t.tile.seq(); }, "Sequence number in the client's stream.")
      .def_property_readonly("stream", [](const PyTile& t) { return t.tile.stream(); }, "Client stream id.")
      .def_property_readonly("op", [](const PyTile& t) { return t.tile.op(); }, "Handler selector chosen by the client.")
      .def_property_readonly("epoch", [](const PyTile& t) { return t.tile.desc().epoch(); })
      .def_property_readonly("x", [](const PyTile& t) { return t.tile.desc().x(); }, "Tile origin x at `level` (pixels).")
      .def_property_readonly("y", [](const PyTile& t) { return t.tile.desc().y(); }, "Tile origin y at `level` (pixels).")
      .def_property_readonly("level", [](const PyTile& t) { return t.tile.desc().level(); }, "Slide pyramid level.")
      .def_property_readonly("pending", [](const PyTile& t) { return t.tile.pending(); }, "True until the tile is answered.")
      .def_property_readonly("cancel_requested", [](const PyTile& t) { return t.tile.cancel_requested(); },
                             "True once the client superseded this tile (check it in long handlers, then call cancel()).")
      .def_property_readonly("dtype", [](const PyTile& t) { return np_dtype(t.tile.input().dtype()); })
      .def_property_readonly("shape", [](const PyTile& t) { return shape_tuple(t.tile.input().shape()); })
      .def_property_readonly("input_address", [](const PyTile& t) { return reinterpret_cast<std::uintptr_t>(t.tile.input().data()); },
                             "Address of the input block in this process (equals input.__array_interface__['data'][0]).")
      .def_property_readonly("_worker", [](const PyTile& t) { return t.owner; },
                             "The native worker this tile came from (tessera.torch pins its arena).")
      .def_property_readonly("descriptor", [](const PyTile& t) { return descriptor_bytes(t.tile.desc()); },
                             "The raw 64-byte ring descriptor (read it with tessera.fb.TileDesc).")
      .def_property_readonly(
          "input",
          [](py::object self) {
            PyTile& t = self.cast<PyTile&>();
            t.need_pending();
            return view_array(t.tile.input(), self, false);
          },
          "The client's payload as a read-only NumPy array over the arena block (zero copy). Valid until the tile is answered.")
      .def(
          "output",
          [](py::object self, py::object dtype, py::object shape) {
            PyTile& t = self.cast<PyTile&>();
            t.need_pending();
            return alloc_output(t, self, dtype, shape);
          },
          py::arg("dtype"), py::arg("shape"),
          "Allocates an output block and returns a writable NumPy array over it (zero copy); pass it to publish().")
      .def(
          "publish", [](py::object self, py::object result) { publish(self.cast<PyTile&>(), self, result); }, py::arg("result"),
          "Answers the tile with `result`: an array from output() is handed over without a copy; anything else "
          "array-like is copied into a new output block.")
      .def(
          "fail",
          [](PyTile& t, const std::string& message) {
            t.need_pending();
            (void)t.worker().fail(t.tile, TileStatus::HandlerError, message);
            t.outs.clear();
          },
          py::arg("message"), "Answers the tile with an error message (delivered to the client as FAILED).")
      .def(
          "cancel",
          [](PyTile& t) {
            t.need_pending();
            (void)t.worker().cancel(t.tile);
            t.outs.clear();
          },
          "Answers the tile as canceled (after cancel_requested became true).")
      .def("__repr__", [](const PyTile& t) {
        return "<tessera.Tile seq=" + std::to_string(t.tile.seq()) + " stream=" + std::to_string(t.tile.stream()) +
               " op=" + std::to_string(t.tile.op()) + " " + std::string(dtype_name(t.tile.input().dtype())) +
               t.tile.input().shape().str() + (t.tile.pending() ? "" : " answered") + ">";
      });

  py::class_<PyBatcher>(m, "NativeBatcher", "tessera::Batcher driving a Python batch handler (see tessera.Batcher).")
      .def("step", &PyBatcher::step, py::arg("handler"))
      .def("flush", &PyBatcher::flush, py::arg("handler"))
      .def_property_readonly("held", [](const PyBatcher& b) { return b.batcher().held(); })
      .def_property_readonly("batches", [](const PyBatcher& b) { return b.batcher().batches(); })
      .def_property_readonly("tiles_run", [](const PyBatcher& b) { return b.batcher().tiles_run(); })
      .def_property_readonly("largest", [](const PyBatcher& b) { return b.batcher().largest(); });

  py::class_<PyWorker, std::shared_ptr<PyWorker>>(m, "Worker", "A Tessera worker attached to the broker's arena.")
      .def_static(
          "from_env",
          [](std::uint32_t spin_us) {
            WorkerOptions o;
            o.wait.spin_ns = spin_us * 1000;
            // Attach through a duplicate of the inherited descriptor, so that a later
            // from_env() in the same process (e.g. a second Appose task) works too.
            auto env_u32 = [](const char* name) -> std::uint32_t {
              const char* v = std::getenv(name);
              if (v == nullptr || *v == '\0')
                throw TesseraError(Errc::unavailable, std::string(name) + " is not set: this process was not started by a Tessera broker");
              char* end = nullptr;
              const unsigned long x = std::strtoul(v, &end, 10);
              if (end == v || *end != '\0' || x > 0xffffffffUL)
                throw TesseraError(Errc::invalid_argument, std::string(name) + "=" + v + " is not a number");
              return static_cast<std::uint32_t>(x);
            };
            const std::uint32_t fd = env_u32("TESSERA_ARENA_FD");
            const std::uint32_t slot = env_u32("TESSERA_SLOT");
            const int dup = ::fcntl(static_cast<int>(fd), F_DUPFD_CLOEXEC, 3);
            if (dup < 0) raise(Error::sys("TESSERA_ARENA_FD=" + std::to_string(fd)));
            Arena arena = unwrap(Arena::attach_fd(dup, true));
            auto pw = std::make_shared<PyWorker>();
            pw->owned = unwrap(Worker::attach(std::move(arena), slot, o));
            pw->w = pw->owned.get();
            return pw;
          },
          py::arg("spin_us") = 50,
          "Attaches the arena named by TESSERA_ARENA_FD / TESSERA_SLOT (set by the broker). Starts no protocol "
          "thread: use it inside a host that owns stdin/stdout (e.g. an Appose worker).")
      .def_static(
          "_with_runtime",
          [](py::object on_script, std::uint32_t spin_us) {
            auto pw = std::make_shared<PyWorker>();
            RuntimeOptions ro;
            ro.worker.wait.spin_ns = spin_us * 1000;
            if (!on_script.is_none()) {
              pw->on_script = on_script.inc_ref().ptr();
              PyObject* fn = pw->on_script;
              ro.on_script = [fn](const std::string& script, const boost::json::object& inputs) -> ScriptResult {
                py::gil_scoped_acquire g;
                try {
                  py::object json = py::module_::import("json");
                  py::object in = json.attr("loads")(boost::json::serialize(inputs));
                  py::object r = py::reinterpret_borrow<py::object>(fn)(script, in);
                  if (r.is_none()) return boost::json::object{};
                  const std::string text = py::str(json.attr("dumps")(r));
                  boost::json::value v = boost::json::parse(text);
                  if (!v.is_object()) return fail(Errc::protocol, "script outputs must be a dict");
                  return std::move(v.as_object());
                } catch (py::error_already_set& e) {
                  return fail(Errc::worker_failed, e.what());
                } catch (const std::exception& e) {
                  return fail(Errc::worker_failed, e.what());
                }
              };
            }
            Result<std::unique_ptr<WorkerRuntime>> r = fail(Errc::unavailable, "");
            {
              py::gil_scoped_release nogil;  // the init script callback takes the GIL itself
              r = WorkerRuntime::start(std::move(ro));
            }
            pw->rt = unwrap(std::move(r));
            pw->w = pw->rt->worker();
            return pw;
          },
          py::arg("on_script") = py::none(), py::arg("spin_us") = 50,
          "Starts the C++ WorkerRuntime (private protocol fd, fd 1 -> stderr, Appose protocol thread).")
      .def("take", &take, py::arg("max_batch") = 16, py::arg("timeout") = 0.1,
           "Waits up to `timeout` seconds (GIL released) for tiles; returns up to `max_batch` tiles, [] on timeout, "
           "or None once the worker was asked to stop.")
      .def("gather", &gather, py::arg("tiles"), py::arg("dest"),
           "Copies the inputs of `tiles` (pending, one dtype and shape) into dest[0..n): one memcpy per tile, GIL "
           "released. dest: a writable C-contiguous array (>= n, *shape) of the tiles' dtype. Returns n.")
      .def("publish_batch", &publish_batch, py::arg("tiles"), py::arg("result"),
           "Answers every still-pending tiles[i] with result[i] (array-like, length n): one output block and one "
           "copy per tile. A tile that gets no output block is failed, the rest are published. Returns the number "
           "published.")
      .def(
          "batcher",
          [](const std::shared_ptr<PyWorker>& pw, std::size_t max_batch, double max_wait, double timeout, bool assemble) {
            BatchOptions o;
            o.max_batch = std::max<std::size_t>(1, max_batch);
            o.max_wait = std::chrono::duration_cast<std::chrono::microseconds>(seconds(max_wait));
            o.take_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(seconds(timeout));
            o.assemble = assemble;
            return std::make_unique<PyBatcher>(pw, o);
          },
          py::arg("max_batch") = 32, py::arg("max_wait") = 0.002, py::arg("timeout") = 0.1, py::arg("assemble") = true,
          "The native batch loop over this worker (tessera.Batcher wraps it).")
      .def(
          "hold_wakeups", [](PyWorker& pw) {
            if (pw.w == nullptr) throw py::value_error("tessera: the worker is closed");
            pw.w->hold_wakeups();
          },
          "Until the matching release_wakeups(), answers are pushed at once but each client is woken once, at the "
          "release (one wake-up per batch instead of per tile). Nests. Pair it with release_wakeups() in a finally.")
      .def(
          "release_wakeups", [](PyWorker& pw) {
            if (pw.w != nullptr) pw.w->release_wakeups();
          },
          "Ends a hold_wakeups(); the outermost release wakes every client answered meanwhile.")
      .def(
          "request_stop", [](PyWorker& pw) {
            if (pw.rt) pw.rt->request_stop();
            else if (pw.w != nullptr) pw.w->request_stop();
          },
          "Makes take() return None (thread-safe).")
      .def_property_readonly("stopping", [](const PyWorker& pw) {
        if (pw.rt) return pw.rt->stopping();
        return pw.w == nullptr || pw.w->stop_requested();
      })
      .def_property_readonly("slot", [](const PyWorker& pw) { return pw.w != nullptr ? pw.w->slot() : kNoSlot; })
      .def_property_readonly("pending_tiles", [](const PyWorker& pw) {
        return std::count_if(pw.live.begin(), pw.live.end(), [](const PyTile* t) { return t->tile.pending(); });
      }, "Tiles handed out and not yet answered.")
      .def_property_readonly("stats", [](const PyWorker& pw) {
        py::dict d;
        if (pw.w != nullptr) {
          const auto s = pw.w->stats();
          d["taken"] = s.taken;
          d["published"] = s.published;
          d["failed"] = s.failed;
          d["canceled"] = s.canceled;
          d["rejected"] = s.rejected;
        }
        return d;
      })
      .def_property_readonly("arena_address", [](const PyWorker& pw) {
        if (pw.w == nullptr) throw py::value_error("tessera: the worker is closed");
        return reinterpret_cast<std::uintptr_t>(pw.w->arena().base());
      }, "Address of this worker's arena mapping (for a one-time CUDA host registration).")
      .def_property_readonly("arena_size", [](const PyWorker& pw) {
        if (pw.w == nullptr) throw py::value_error("tessera: the worker is closed");
        return static_cast<std::uint64_t>(pw.w->arena().size());
      }, "Bytes of this worker's arena mapping.")
      .def("_before_unmap", [](PyWorker& pw, py::object fn) { pw.before_unmap.push_back(fn.inc_ref().ptr()); }, py::arg("fn"),
           "Calls fn() (GIL held) when the worker is destroyed, before its arena mapping goes.")
      .def("close", &PyWorker::close,
           "Answers every tile still held (failed: worker stopped), frees unpublished outputs, stops the runtime.")
      .def("finish", [](PyWorker& pw) {
        if (!pw.rt) return 0;
        pw.rt->request_stop();
        py::gil_scoped_release nogil;
        return pw.rt->finish();
      }, "Runtime mode: stops and joins the protocol thread; returns the process exit code.");
}

}  // namespace tessera::py_bind
