// capi.c: the dlsym symbol table and the thin wrappers Go calls (see capi.h).
//
// Only exported functions are used, never macros or struct fields (object
// headers changed in 3.12 and 3.13t); the one fixed layout is Py_buffer.
#define _GNU_SOURCE
#include "capi.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

typedef int64_t Py_ssize_t;

// Py_buffer has had this 80-byte layout since Python 3.3.
typedef struct {
	void *buf;
	PyObject *obj;
	Py_ssize_t len;
	Py_ssize_t itemsize;
	int readonly;
	int ndim;
	char *format;
	Py_ssize_t *shape;
	Py_ssize_t *strides;
	Py_ssize_t *suboffsets;
	void *internal;
} Py_buffer;

typedef struct PyInitConfig PyInitConfig;

#define PyBUF_WRITE 0x200
#define PyBUF_C_CONTIGUOUS (0x0020 | 0x0008 | 0x0010)

// The symbol table. REQ: loading fails without it; OPT: may be NULL.
#define PH_SYMBOLS(REQ, OPT)                                                                         \
	REQ(const char *, Py_GetVersion, (void))                                                         \
	REQ(int, Py_IsInitialized, (void))                                                               \
	OPT(wchar_t *, Py_DecodeLocale, (const char *, size_t *))                                        \
	OPT(void, Py_SetProgramName, (const wchar_t *))                                                  \
	OPT(void, Py_SetPythonHome, (const wchar_t *))                                                   \
	OPT(void, Py_InitializeEx, (int))                                                                \
	OPT(PyInitConfig *, PyInitConfig_Create, (void))                                                 \
	OPT(int, PyInitConfig_SetStr, (PyInitConfig *, const char *, const char *))                      \
	OPT(int, PyInitConfig_SetInt, (PyInitConfig *, const char *, int64_t))                           \
	OPT(int, PyInitConfig_GetError, (PyInitConfig *, const char **))                                 \
	OPT(void, PyInitConfig_Free, (PyInitConfig *))                                                   \
	OPT(int, Py_InitializeFromInitConfig, (PyInitConfig *))                                          \
	REQ(void *, PyEval_SaveThread, (void))                                                           \
	REQ(void, PyEval_RestoreThread, (void *))                                                        \
	REQ(int, PyGILState_Ensure, (void))                                                              \
	REQ(void, PyGILState_Release, (int))                                                             \
	REQ(int, Py_AddPendingCall, (int (*)(void *), void *))                                           \
	REQ(void, Py_IncRef, (PyObject *))                                                               \
	REQ(void, Py_DecRef, (PyObject *))                                                               \
	REQ(PyObject *, PyImport_ImportModule, (const char *))                                           \
	REQ(PyObject *, PyObject_GetAttrString, (PyObject *, const char *))                              \
	REQ(PyObject *, PyObject_Call, (PyObject *, PyObject *, PyObject *))                             \
	REQ(PyObject *, PyObject_Str, (PyObject *))                                                      \
	REQ(PyObject *, PyObject_Type, (PyObject *))                                                     \
	REQ(PyObject *, PyTuple_New, (Py_ssize_t))                                                       \
	REQ(int, PyTuple_SetItem, (PyObject *, Py_ssize_t, PyObject *))                                  \
	REQ(PyObject *, PyTuple_GetItem, (PyObject *, Py_ssize_t))                                       \
	REQ(Py_ssize_t, PyTuple_Size, (PyObject *))                                                      \
	REQ(PyObject *, PySequence_GetItem, (PyObject *, Py_ssize_t))                                    \
	REQ(Py_ssize_t, PySequence_Size, (PyObject *))                                                   \
	REQ(int, PyList_Insert, (PyObject *, Py_ssize_t, PyObject *))                                    \
	REQ(PyObject *, PyLong_FromLongLong, (long long))                                                \
	REQ(long long, PyLong_AsLongLong, (PyObject *))                                                  \
	REQ(PyObject *, PyUnicode_FromStringAndSize, (const char *, Py_ssize_t))                         \
	REQ(const char *, PyUnicode_AsUTF8AndSize, (PyObject *, Py_ssize_t *))                           \
	REQ(PyObject *, PyBytes_FromStringAndSize, (const char *, Py_ssize_t))                           \
	REQ(int, PyBytes_AsStringAndSize, (PyObject *, char **, Py_ssize_t *))                           \
	REQ(PyObject *, PyMemoryView_FromMemory, (char *, Py_ssize_t, int))                              \
	REQ(int, PyObject_GetBuffer, (PyObject *, Py_buffer *, int))                                     \
	REQ(void, PyBuffer_Release, (Py_buffer *))                                                       \
	REQ(PyObject *, PyErr_Occurred, (void))                                                          \
	REQ(void, PyErr_Clear, (void))                                                                   \
	REQ(void, PyErr_SetString, (PyObject *, const char *))                                           \
	OPT(PyObject *, PyErr_GetRaisedException, (void))                                                \
	OPT(void, PyErr_Fetch, (PyObject **, PyObject **, PyObject **))                                  \
	OPT(void, PyErr_NormalizeException, (PyObject **, PyObject **, PyObject **))                     \
	OPT(int, PyException_SetTraceback, (PyObject *, PyObject *))                                     \
	REQ(PyObject *, PySys_GetObject, (const char *))

#define PH_FIELD(ret, name, args) ret(*name) args;
static struct {
	PH_SYMBOLS(PH_FIELD, PH_FIELD)
	PyObject **exc_keyboard_interrupt; // data symbol PyExc_KeyboardInterrupt
	PyObject **exc_runtime_error;      // data symbol PyExc_RuntimeError
} api;

static void *lib;
static char last_error[1024];

const char *ph_last_error(void) { return last_error; }

int ph_load(const char *path) {
	if (lib != NULL) {
		snprintf(last_error, sizeof last_error, "a libpython is already loaded in this process");
		return -1;
	}
	// RTLD_GLOBAL: extension modules (numpy, _ctypes, _json) are not linked
	// against libpython and expect its symbols in the global scope.
	void *h = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
	if (h == NULL) {
		snprintf(last_error, sizeof last_error, "dlopen: %s", dlerror());
		return -1;
	}
#define PH_REQ(ret, name, args)                                                                      \
	api.name = (ret(*) args)dlsym(h, #name);                                                         \
	if (api.name == NULL) {                                                                          \
		snprintf(last_error, sizeof last_error, "required symbol %s missing from %s", #name, path); \
		return -1;                                                                                   \
	}
#define PH_OPT(ret, name, args) api.name = (ret(*) args)dlsym(h, #name);
	PH_SYMBOLS(PH_REQ, PH_OPT)
	api.exc_keyboard_interrupt = (PyObject **)dlsym(h, "PyExc_KeyboardInterrupt");
	api.exc_runtime_error = (PyObject **)dlsym(h, "PyExc_RuntimeError");
	if (api.exc_keyboard_interrupt == NULL || api.exc_runtime_error == NULL) {
		snprintf(last_error, sizeof last_error, "PyExc_* data symbols missing from %s", path);
		return -1;
	}
	if (api.PyErr_GetRaisedException == NULL &&
	    (api.PyErr_Fetch == NULL || api.PyErr_NormalizeException == NULL || api.PyException_SetTraceback == NULL)) {
		snprintf(last_error, sizeof last_error, "no way to fetch exceptions in %s", path);
		return -1;
	}
	int legacy = api.Py_DecodeLocale && api.Py_SetProgramName && api.Py_SetPythonHome && api.Py_InitializeEx;
	int pep741 = api.PyInitConfig_Create && api.PyInitConfig_SetStr && api.PyInitConfig_SetInt &&
	             api.PyInitConfig_Free && api.Py_InitializeFromInitConfig && api.PyInitConfig_GetError;
	if (!legacy && !pep741) {
		snprintf(last_error, sizeof last_error, "no initialisation API in %s", path);
		return -1;
	}
	lib = h;
	return 0;
}

const char *ph_version(void) { return api.Py_GetVersion(); }

int ph_has(const char *name) { return lib != NULL && dlsym(lib, name) != NULL; }

int ph_init(const char *program, const char *home) {
	if (api.Py_IsInitialized()) {
		snprintf(last_error, sizeof last_error, "interpreter already initialised");
		return -1;
	}
	if (api.PyInitConfig_Create && api.Py_InitializeFromInitConfig) {
		// PEP 741 (3.14+): string-keyed, no struct layouts.
		PyInitConfig *c = api.PyInitConfig_Create();
		if (c == NULL) {
			snprintf(last_error, sizeof last_error, "PyInitConfig_Create failed");
			return -1;
		}
		int rc = api.PyInitConfig_SetStr(c, "program_name", program);
		if (rc == 0 && home != NULL) rc = api.PyInitConfig_SetStr(c, "home", home);
		if (rc == 0) rc = api.PyInitConfig_SetInt(c, "install_signal_handlers", 0);
		if (rc == 0) rc = api.Py_InitializeFromInitConfig(c);
		if (rc != 0) {
			const char *msg = "unknown error";
			api.PyInitConfig_GetError(c, &msg);
			snprintf(last_error, sizeof last_error, "initialise: %s", msg);
		}
		api.PyInitConfig_Free(c);
		return rc == 0 ? 0 : -1;
	}
	// 3.8-3.13: the setters keep the pointers, so the decoded strings live
	// for the rest of the process.
	wchar_t *wprog = api.Py_DecodeLocale(program, NULL);
	if (wprog == NULL) {
		snprintf(last_error, sizeof last_error, "cannot decode program name %s", program);
		return -1;
	}
	api.Py_SetProgramName(wprog);
	if (home != NULL) {
		wchar_t *whome = api.Py_DecodeLocale(home, NULL);
		if (whome == NULL) {
			snprintf(last_error, sizeof last_error, "cannot decode home %s", home);
			return -1;
		}
		api.Py_SetPythonHome(whome);
	}
	api.Py_InitializeEx(0); // 0: no Python signal handlers; Go owns SIGINT/SIGTERM
	if (!api.Py_IsInitialized()) {
		snprintf(last_error, sizeof last_error, "Py_InitializeEx failed");
		return -1;
	}
	return 0;
}

// on_python_thread marks the OS thread that owns the interpreter. Its
// goroutine is locked to it, so "this OS thread" means "that goroutine".
static __thread int on_python_thread;
void ph_mark_python_thread(void) { on_python_thread = 1; }
int ph_on_python_thread(void) { return on_python_thread; }

void *ph_save_thread(void) { return api.PyEval_SaveThread(); }
void ph_restore_thread(void *ts) { api.PyEval_RestoreThread(ts); }
void ph_decref(PyObject *o) {
	if (o != NULL) api.Py_DecRef(o);
}

PyObject *ph_import_attr(const char *module, const char *attr) {
	PyObject *m = api.PyImport_ImportModule(module);
	if (m == NULL) return NULL;
	PyObject *a = api.PyObject_GetAttrString(m, attr);
	api.Py_DecRef(m);
	return a;
}

int ph_sys_path_insert0(const char *dir) {
	PyObject *path = api.PySys_GetObject("path"); // borrowed
	if (path == NULL) {
		api.PyErr_SetString(*api.exc_runtime_error, "sys.path is missing");
		return -1;
	}
	PyObject *s = api.PyUnicode_FromStringAndSize(dir, (Py_ssize_t)strlen(dir));
	if (s == NULL) return -1;
	int rc = api.PyList_Insert(path, 0, s);
	api.Py_DecRef(s);
	return rc;
}

PyObject *ph_views_new(int n) { return api.PyTuple_New(n); }

int ph_views_set(PyObject *views, int i, void *ptr, int64_t len) {
	static char empty[1];
	// Writable only so that the helper can hold an export on it (ctypes
	// from_buffer) to detect leaked views; the arrays it makes are read-only.
	PyObject *mv = api.PyMemoryView_FromMemory(ptr != NULL ? (char *)ptr : empty, len, PyBUF_WRITE);
	if (mv == NULL) return -1;
	return api.PyTuple_SetItem(views, i, mv); // steals mv
}

// Cancellation state. ph_current is the token of the job running on the
// Python thread (0: none); ph_cancel_token is the job a cancel was asked for.
// The pending call raises only if both match, so a late callback can never
// hit the next job.
static int64_t ph_current, ph_cancel_token;

static int ph_pending_interrupt(void *arg) {
	(void)arg;
	int64_t cur = __atomic_load_n(&ph_current, __ATOMIC_SEQ_CST);
	if (cur != 0 && cur == __atomic_load_n(&ph_cancel_token, __ATOMIC_SEQ_CST)) {
		api.PyErr_SetString(*api.exc_keyboard_interrupt, "cancelled by host");
		return -1;
	}
	return 0;
}

int ph_cancel(int64_t token) {
	if (lib == NULL) return -1;
	__atomic_store_n(&ph_cancel_token, token, __ATOMIC_SEQ_CST);
	if (api.Py_AddPendingCall(ph_pending_interrupt, NULL) != 0) return -1;
	// The "GIL poke": CPython recomputes the eval breaker in the thread that
	// adds the pending call, which is not the main thread; briefly taking the
	// GIL here makes the main thread drop it and notice the pending call.
	int st = api.PyGILState_Ensure();
	api.PyGILState_Release(st);
	return 0;
}

PyObject *ph_handle(PyObject *fn, const char *op, const char *meta, int64_t metalen, PyObject *views,
                    int64_t token) {
	PyObject *args = api.PyTuple_New(3);
	if (args == NULL) return NULL;
	PyObject *o = api.PyUnicode_FromStringAndSize(op, (Py_ssize_t)strlen(op));
	if (o == NULL || api.PyTuple_SetItem(args, 0, o) != 0) goto fail;
	PyObject *m = api.PyBytes_FromStringAndSize(meta, metalen);
	if (m == NULL || api.PyTuple_SetItem(args, 1, m) != 0) goto fail;
	api.Py_IncRef(views); // SetItem steals; the caller keeps its reference
	if (api.PyTuple_SetItem(args, 2, views) != 0) goto fail;
	__atomic_store_n(&ph_current, token, __ATOMIC_SEQ_CST);
	PyObject *res = api.PyObject_Call(fn, args, NULL);
	__atomic_store_n(&ph_current, 0, __ATOMIC_SEQ_CST);
	api.Py_DecRef(args);
	return res;
fail:
	api.Py_DecRef(args);
	return NULL;
}

int64_t ph_release_views(PyObject *fn, PyObject *views) {
	PyObject *args = api.PyTuple_New(1);
	if (args == NULL) return -1;
	api.Py_IncRef(views);
	if (api.PyTuple_SetItem(args, 0, views) != 0) {
		api.Py_DecRef(args);
		return -1;
	}
	PyObject *r = api.PyObject_Call(fn, args, NULL);
	api.Py_DecRef(args);
	if (r == NULL) return -1;
	long long n = api.PyLong_AsLongLong(r);
	api.Py_DecRef(r);
	if (n == -1 && api.PyErr_Occurred()) return -1;
	return n;
}

int64_t ph_result_meta(PyObject *res, const char **p) {
	PyObject *m = api.PyTuple_GetItem(res, 0); // borrowed
	if (m == NULL) return -1;
	char *s;
	Py_ssize_t n;
	if (api.PyBytes_AsStringAndSize(m, &s, &n) != 0) return -1;
	*p = s;
	return n;
}

int64_t ph_result_count(PyObject *res) {
	PyObject *arrays = api.PyTuple_GetItem(res, 1); // borrowed
	if (arrays == NULL) return -1;
	return api.PySequence_Size(arrays);
}

static int get_array_buffer(PyObject *res, int64_t i, Py_buffer *view) {
	PyObject *arrays = api.PyTuple_GetItem(res, 1); // borrowed
	if (arrays == NULL) return -1;
	PyObject *a = api.PySequence_GetItem(arrays, i); // new
	if (a == NULL) return -1;
	int rc = api.PyObject_GetBuffer(a, view, PyBUF_C_CONTIGUOUS);
	api.Py_DecRef(a); // the buffer holds its own reference
	return rc;
}

int64_t ph_result_len(PyObject *res, int64_t i) {
	Py_buffer view;
	if (get_array_buffer(res, i, &view) != 0) return -1;
	int64_t n = view.len;
	api.PyBuffer_Release(&view);
	return n;
}

int ph_result_copy(PyObject *res, int64_t i, void *dst, int64_t n) {
	Py_buffer view;
	if (get_array_buffer(res, i, &view) != 0) return -1;
	if (view.len != n) {
		api.PyBuffer_Release(&view);
		api.PyErr_SetString(*api.exc_runtime_error, "result array changed size");
		return -1;
	}
	memcpy(dst, view.buf, (size_t)n);
	api.PyBuffer_Release(&view);
	return 0;
}

int ph_err_occurred(void) { return api.PyErr_Occurred() != NULL; }

static PyObject *take_exception(void) {
	if (api.PyErr_GetRaisedException != NULL) return api.PyErr_GetRaisedException();
	PyObject *t = NULL, *v = NULL, *tb = NULL;
	api.PyErr_Fetch(&t, &v, &tb);
	if (t == NULL) return NULL;
	api.PyErr_NormalizeException(&t, &v, &tb);
	if (tb != NULL && v != NULL) api.PyException_SetTraceback(v, tb);
	ph_decref(t);
	ph_decref(tb);
	return v;
}

// json_str appends s as a JSON string to a malloc'd buffer.
static void json_str(char **buf, size_t *len, size_t *cap, const char *s) {
	for (size_t need = *len + strlen(s) * 6 + 8; *cap < need;) {
		*cap = need * 2;
		*buf = realloc(*buf, *cap);
	}
	char *p = *buf + *len;
	*p++ = '"';
	for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
		if (*c == '"' || *c == '\\') {
			*p++ = '\\';
			*p++ = (char)*c;
		} else if (*c < 0x20) {
			p += sprintf(p, "\\u%04x", *c);
		} else {
			*p++ = (char)*c;
		}
	}
	*p++ = '"';
	*len = (size_t)(p - *buf);
}

static const char *utf8_or(PyObject *o, const char *dflt) {
	if (o == NULL) return dflt;
	const char *s = api.PyUnicode_AsUTF8AndSize(o, NULL);
	return s != NULL ? s : dflt;
}

char *ph_fetch_error(PyObject *fmt, int64_t *len) {
	PyObject *exc = take_exception();
	if (exc == NULL) {
		*len = 0;
		return NULL;
	}
	if (fmt != NULL) {
		PyObject *args = api.PyTuple_New(1);
		if (args != NULL) {
			api.Py_IncRef(exc);
			api.PyTuple_SetItem(args, 0, exc);
			PyObject *r = api.PyObject_Call(fmt, args, NULL);
			api.Py_DecRef(args);
			char *s;
			Py_ssize_t n;
			if (r != NULL && api.PyBytes_AsStringAndSize(r, &s, &n) == 0) {
				char *out = malloc((size_t)n + 1);
				memcpy(out, s, (size_t)n);
				out[n] = 0;
				*len = n;
				api.Py_DecRef(r);
				api.Py_DecRef(exc);
				return out;
			}
			ph_decref(r);
		}
		api.PyErr_Clear(); // formatting failed: fall back to str()
	}
	// Fallback without the helper: {"type": module.qualname, "message": str(exc)}.
	PyObject *t = api.PyObject_Type(exc);
	PyObject *mod = t ? api.PyObject_GetAttrString(t, "__module__") : NULL;
	PyObject *qual = t ? api.PyObject_GetAttrString(t, "__qualname__") : NULL;
	PyObject *str = api.PyObject_Str(exc);
	api.PyErr_Clear();
	char tname[512];
	snprintf(tname, sizeof tname, "%s.%s", utf8_or(mod, "builtins"), utf8_or(qual, "BaseException"));
	api.PyErr_Clear();
	const char *msg = utf8_or(str, "<unprintable exception>");
	api.PyErr_Clear();
	size_t cap = strlen(tname) * 6 + strlen(msg) * 6 + 64, n;
	char *out = malloc(cap);
	n = (size_t)sprintf(out, "{\"type\":");
	json_str(&out, &n, &cap, tname);
	n += (size_t)sprintf(out + n, ",\"message\":");
	json_str(&out, &n, &cap, msg);
	out[n++] = '}';
	out[n] = 0;
	ph_decref(str);
	ph_decref(qual);
	ph_decref(mod);
	ph_decref(t);
	api.Py_DecRef(exc);
	*len = (int64_t)n;
	return out;
}

int64_t ph_call_int(PyObject *fn, int64_t x, int *err) {
	*err = 0;
	PyObject *args = api.PyTuple_New(1);
	if (args == NULL) goto fail;
	PyObject *px = api.PyLong_FromLongLong(x);
	if (px == NULL || api.PyTuple_SetItem(args, 0, px) != 0) {
		api.Py_DecRef(args);
		goto fail;
	}
	PyObject *r = api.PyObject_Call(fn, args, NULL);
	api.Py_DecRef(args);
	if (r == NULL) goto fail;
	long long v = api.PyLong_AsLongLong(r);
	api.Py_DecRef(r);
	if (v == -1 && api.PyErr_Occurred()) goto fail;
	return v;
fail:
	*err = 1;
	return 0;
}
