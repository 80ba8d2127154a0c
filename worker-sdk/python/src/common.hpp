// Shared helpers of the `tessera._tessera` extension: dtype names, zero-copy
// NumPy views over arena memory, error translation.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <array>
#include <chrono>
#include <stdexcept>
#include <string>

#include <tessera/result.hpp>
#include <tessera/tensor.hpp>

namespace tessera::py_bind {

namespace py = pybind11;

// Control-path failures surface as Python exceptions (TesseraError, a RuntimeError).
struct TesseraError : std::runtime_error {
  Errc code;
  TesseraError(Errc c, const std::string& m) : std::runtime_error(m), code(c) {}
};

[[noreturn]] inline void raise(const Error& e) { throw TesseraError(e.code, e.message); }

template <class T>
T unwrap(Result<T>&& r) {
  if (!r) raise(r.error());
  return std::move(r).value();
}
inline void unwrap(Result<void>&& r) {
  if (!r) raise(r.error());
}

// Seconds (float) -> nanoseconds; negative means "no wait".
inline std::chrono::nanoseconds seconds(double s) {
  if (!(s > 0)) return std::chrono::nanoseconds(0);
  return std::chrono::nanoseconds(static_cast<std::int64_t>(s * 1e9));
}

// NumPy dtype (anything np.dtype() accepts) -> tessera DType; throws on unsupported.
inline DType to_dtype(const py::handle& any) {
  py::dtype dt = py::dtype::from_args(py::reinterpret_borrow<py::object>(any));
  const std::string name = py::str(dt.attr("name"));
  const DType t = dtype_from_name(name);
  if (dtype_size(t) == 0) throw py::type_error("tessera: unsupported dtype '" + name + "'");
  if (!dt.attr("isnative").cast<bool>()) throw py::type_error("tessera: dtype '" + name + "' is not in native byte order");
  return t;
}

// One shape dimension: a Python int or anything with __index__ (NumPy integers), not a
// bool, in 0 .. 2^32-1. Errors name `shape` and say what was given.
inline std::uint32_t shape_dim(const py::handle& v, const py::handle& whole) {
  const auto given = [&] { return std::string(py::repr(whole)) + " (" + std::string(py::str(py::type::handle_of(whole).attr("__name__"))) + ")"; };
  if (PyBool_Check(v.ptr()) || !PyIndex_Check(v.ptr()))
    throw py::type_error("tessera: shape must be an int or a sequence of 1 to 4 ints, got " + given());
  py::object i = py::reinterpret_steal<py::object>(PyNumber_Index(v.ptr()));
  if (!i) throw py::error_already_set();
  int overflow = 0;
  const long long n = PyLong_AsLongLongAndOverflow(i.ptr(), &overflow);
  if (overflow != 0 || n < 0 || n > 0xffffffffLL)
    throw py::value_error("tessera: shape dimensions must be in 0..4294967295, got " + given());
  return static_cast<std::uint32_t>(n);
}

// Python shape (int or sequence of 1..4 ints) -> Shape; TypeError/ValueError naming
// `shape` on bad input (a str such as 'abc' is not a sequence of dimensions here).
inline Shape to_shape(const py::handle& obj) {
  Shape s;
  if (PyIndex_Check(obj.ptr()) && !PyBool_Check(obj.ptr())) {
    s.dims[0] = shape_dim(obj, obj);
    s.ndim = 1;
    return s;
  }
  if (!PySequence_Check(obj.ptr()) || PyUnicode_Check(obj.ptr()) || PyBytes_Check(obj.ptr()) || PyByteArray_Check(obj.ptr()))
    throw py::type_error("tessera: shape must be an int or a sequence of 1 to 4 ints, got " + std::string(py::repr(obj)) +
                         " (" + std::string(py::str(py::type::handle_of(obj).attr("__name__"))) + ")");
  py::sequence seq = py::reinterpret_borrow<py::sequence>(obj);
  if (seq.size() == 0 || seq.size() > 4)
    throw py::value_error("tessera: shape has 1 to 4 dimensions, got " + std::to_string(seq.size()) + ": " +
                          std::string(py::repr(obj)));
  for (std::size_t i = 0; i < seq.size(); ++i) s.dims[i] = shape_dim(seq[i], obj);
  s.ndim = static_cast<std::uint8_t>(seq.size());
  return s;
}

inline py::tuple shape_tuple(const Shape& s) {
  py::tuple t(s.ndim);
  for (std::uint8_t i = 0; i < s.ndim; ++i) t[i] = s.dims[i];
  return t;
}

// The NumPy dtype of `t`, built once per DType and then shared: Tile.dtype and the
// zero-copy views run once per tile, and parsing the name each time showed in profiles.
// GIL held (every caller is a binding). The references are kept for the process's life.
inline py::dtype np_dtype(DType t) {
  static std::array<PyObject*, 256> cache{};
  PyObject*& slot = cache[static_cast<std::uint8_t>(t)];
  if (slot == nullptr) slot = py::dtype(std::string(dtype_name(t))).release().ptr();
  return py::reinterpret_borrow<py::dtype>(slot);
}

// A NumPy array over `v` (no copy). `base` keeps the memory mapped while the array lives.
inline py::array view_array(const TensorView& v, py::handle base, bool writable) {
  if (!v.valid()) throw py::value_error("tessera: invalid tensor view");
  std::vector<py::ssize_t> shape(v.shape().ndim), strides(v.shape().ndim);
  const auto st = v.strides();
  for (std::uint8_t i = 0; i < v.shape().ndim; ++i) {
    shape[i] = static_cast<py::ssize_t>(v.shape().dims[i]);
    strides[i] = static_cast<py::ssize_t>(st[i]);
  }
  py::array a(np_dtype(v.dtype()), shape, strides, v.data(), base);
  if (!writable) py::detail::array_proxy(a.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return a;
}

// The Python type TesseraError is raised as in this module (both modules set the same one).
inline PyObject*& tessera_error_type() {
  static PyObject* type = nullptr;
  return type;
}

// Makes this module raise a C++ TesseraError as the Python exception `type`, with the
// Errc name in its `code` attribute. `type` must outlive the module (a static).
inline void raise_tessera_errors_as(PyObject* type) {
  tessera_error_type() = type;
  py::register_local_exception_translator([](std::exception_ptr p) {  // a translator captures nothing
    PyObject* err_type = tessera_error_type();
    try {
      if (p) std::rethrow_exception(p);
    } catch (const TesseraError& e) {
      py::object inst = py::reinterpret_steal<py::object>(PyObject_CallFunction(err_type, "s", e.what()));
      if (inst) {
        inst.attr("code") = std::string(errc_name(e.code));
        PyErr_SetObject(err_type, inst.ptr());
      } else {
        PyErr_SetString(err_type, e.what());
      }
    }
  });
}

}  // namespace tessera::py_bind
