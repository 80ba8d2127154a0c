// The `tessera._host` extension module: the client (embedded broker, supervised
// pool, streams). Raises tessera._worker.TesseraError, so both modules share one
// exception type.
#include "common.hpp"

namespace tessera::py_bind {
void bind_client(py::module_& m);
}  // namespace tessera::py_bind

PYBIND11_MODULE(_host, m) {
  namespace py = pybind11;
  using namespace tessera::py_bind;
  m.doc() = "Tessera native bindings of the client. Import `tessera`, not this module.";
  // One reference kept for the life of the process (never released at interpreter exit).
  static PyObject* const exc = py::object(py::module_::import("tessera._worker").attr("TesseraError")).release().ptr();
  m.attr("TesseraError") = py::handle(exc);
  raise_tessera_errors_as(exc);
  bind_client(m);
}
