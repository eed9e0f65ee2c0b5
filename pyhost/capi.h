// capi.h: the boundary between Go and a libpython loaded at run time.
//
// No Python.h: the few types are declared by hand (an opaque PyObject, the
// 80-byte Py_buffer whose layout is fixed since 3.3) and every C-API entry
// point is reached through a table filled by dlsym. Each ph_* wrapper is one
// cgo crossing; wrappers return NULL or -1 on failure with the Python error
// indicator set, and the Go side fetches it at once with ph_fetch_error, so
// no exception ever leaks into the next call.
//
// Thread rules: every function except ph_load, ph_version, ph_cancel and
// ph_last_error must be called on the Python thread with the GIL held.
#ifndef ASERPC_PYHOST_CAPI_H
#define ASERPC_PYHOST_CAPI_H

#include <stddef.h>
#include <stdint.h>

typedef struct _object PyObject;

// ph_load dlopens path (RTLD_NOW|RTLD_GLOBAL) and fills the symbol table.
// Returns 0, or -1 with a message in ph_last_error().
int ph_load(const char *path);
const char *ph_last_error(void);
// ph_version is Py_GetVersion(), legal before initialisation.
const char *ph_version(void);
// ph_has reports whether an optional symbol was found.
int ph_has(const char *name);

// ph_init initialises the interpreter without signal handlers: the PEP 741
// API when present (3.14+), else Py_SetProgramName/Py_SetPythonHome/
// Py_InitializeEx(0). home may be NULL. The GIL is held on return.
int ph_init(const char *program, const char *home);

// ph_mark_python_thread tags the calling OS thread as the Python thread;
// ph_on_python_thread asks whether the caller runs on it. Any thread.
void ph_mark_python_thread(void);
int ph_on_python_thread(void);

void *ph_save_thread(void);
void ph_restore_thread(void *ts);

void ph_decref(PyObject *o);

// ph_import_attr returns a new reference to module.attr.
PyObject *ph_import_attr(const char *module, const char *attr);
// ph_sys_path_insert0 puts dir first on sys.path.
int ph_sys_path_insert0(const char *dir);

// A job's buffers: a tuple of read-only memoryviews over host memory.
PyObject *ph_views_new(int n);
int ph_views_set(PyObject *views, int i, void *ptr, int64_t len);

// ph_handle calls handle(op, meta, views) and returns its result tuple
// (meta_bytes, arrays); the job token arms ph_cancel for this call only.
PyObject *ph_handle(PyObject *fn, const char *op, const char *meta, int64_t metalen, PyObject *views,
                    int64_t token);
// ph_release_views calls release(views): the number still exported, or -1.
int64_t ph_release_views(PyObject *fn, PyObject *views);
// ph_result_meta points *p at the reply's meta bytes (valid while res lives).
int64_t ph_result_meta(PyObject *res, const char **p);
int64_t ph_result_count(PyObject *res);
// ph_result_len is the byte length of array i (C-contiguous buffer).
int64_t ph_result_len(PyObject *res, int64_t i);
// ph_result_copy copies array i into dst (n bytes): the one copy out.
int ph_result_copy(PyObject *res, int64_t i, void *dst, int64_t n);

// ph_fetch_error takes the pending exception (clearing the indicator) and
// returns a malloc'd JSON description, formatted by fmt (the helper's
// format_exception) when fmt is not NULL, else from str() alone.
char *ph_fetch_error(PyObject *fmt, int64_t *len);
int ph_err_occurred(void);

// ph_cancel asks the Python thread to raise KeyboardInterrupt at its next
// bytecode boundary if job token is still running. Any thread, no GIL.
int ph_cancel(int64_t token);

// ph_call_int is the typed fast path used by the benchmarks: fn(x) -> int.
int64_t ph_call_int(PyObject *fn, int64_t x, int *err);

#endif
