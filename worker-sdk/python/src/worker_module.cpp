// The `tessera._tessera` extension module: worker SDK and client bindings.
#include "common.hpp"

namespace tessera::py_bind {
void bind_worker(py::module_& m);
void bind_client(py::module_& m);
}  // namespace tessera::py_bind

PYBIND11_MODULE(_tessera, m) {
  namespace py = pybind11;
  using namespace tessera::py_bind;
  m.doc() = "Tessera native bindings (worker SDK and client). Import `tessera`, not this module.";
  static py::exception<TesseraError> exc(m, "TesseraError", PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const TesseraError& e) {
      PyObject* type = exc.ptr();
      py::object inst = py::reinterpret_steal<py::object>(PyObject_CallFunction(type, "s", e.what()));
      if (inst) {
        inst.attr("code") = std::string(tessera::errc_name(e.code));
        PyErr_SetObject(type, inst.ptr());
      } else {
        PyErr_SetString(type, e.what());
      }
    }
  });
  bind_worker(m);
  bind_client(m);
}
