// Module init for edgekd._C. The kernels register themselves with
// TORCH_LIBRARY_IMPL(edgekd, CPU, m) in their own files under csrc/cpu/; the schemas are
// defined in Python (edgekd/ops/<op>.py) after this module is loaded.
#include <Python.h>
#include <torch/library.h>

// Schemas live in Python; declare a fragment so TORCH_LIBRARY_IMPL has a namespace to attach to.
TORCH_LIBRARY_FRAGMENT(edgekd, m) {}

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "edgekd native CPU kernels", -1, nullptr};
  return PyModule_Create(&module_def);
}
