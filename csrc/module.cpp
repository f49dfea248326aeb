// vidcore._C is a plain (limited-API) Python module: importing it runs the static
// TORCH_LIBRARY_IMPL registrations of csrc/*_op.cpp. Schemas live in Python (vidcore/ops).
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
