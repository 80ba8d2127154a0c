// The `tessera._worker` extension module: the worker SDK only (no client, no
// supervisor), so a Python worker loads nothing of the host side. It owns the
// TesseraError type; `tessera._host` raises the same one.
#include "common.hpp"

namespace tessera::py_bind {
void bind_worker(py::module_& m);
}  // namespace tessera::py_bind

PYBIND11_MODULE(_worker, m) {
  namespace py = pybind11;
  using namespace tessera::py_bind;
  m.doc() = "Tessera native bindings of the worker SDK. Import `tessera`, not this module.";
  static py::exception<TesseraError> exc(m, "TesseraError", PyExc_RuntimeError);
  raise_tessera_errors_as(exc.ptr());
  bind_worker(m);
}
