/* What the compiled parts share (``workbench/accel.py``). */

#ifndef WORKBENCH_ACCEL_H
#define WORKBENCH_ACCEL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define READ_CHUNK (1 << 16)  /* bytes asked of the kernel per read, as zmtp.READ_CHUNK */

/* Append n bytes to a bytearray -> 0, or -1 with an exception set. */
static inline int
bytearray_append(PyObject *array, const char *data, Py_ssize_t n)
{
    Py_ssize_t had = PyByteArray_GET_SIZE(array);
    if (PyByteArray_Resize(array, had + n) < 0)
        return -1;
    memcpy(PyByteArray_AS_STRING(array) + had, data, (size_t)n);
    return 0;
}

#endif
