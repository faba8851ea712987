/* eyecare._core.read_bandwidth: the host-memory read probe of csrc/probe, for the benchmarks' bounds. */
#include "python/py_common.h"

#include <unistd.h>

#include "probe/read_bandwidth.h"

static PyObject *py_read_bandwidth(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kw[] = {"threads", "mib", "reps", NULL};
    int threads = 0, mib = 256, reps = 5;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|iii", kw, &threads, &mib, &reps)) return NULL;
    if (threads == 0) threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (threads < 1 || threads > 64) return PyErr_Format(PyExc_ValueError, "threads must be 1..64, not %d", threads);
    if (mib < 1 || mib > 65536) return PyErr_Format(PyExc_ValueError, "mib must be 1..65536, not %d", mib);
    if (reps < 1 || reps > 1000) return PyErr_Format(PyExc_ValueError, "reps must be 1..1000, not %d", reps);
    double bw;
    Py_BEGIN_ALLOW_THREADS
    bw = ec_read_bandwidth((size_t)mib << 20, threads, reps);
    Py_END_ALLOW_THREADS
    if (bw <= 0) return PyErr_NoMemory();
    return PyFloat_FromDouble(bw / 1e9);
}

PyMethodDef ec_py_probe_methods[] = {
    {"read_bandwidth", (PyCFunction)(void (*)(void))py_read_bandwidth, METH_VARARGS | METH_KEYWORDS,
     "read_bandwidth(threads=<online CPUs>, mib=256, reps=5) -> GB/s: the best of `reps` STREAM-style reads of a\n"
     "`mib`-MiB host buffer split among `threads` threads (bytes read per second; the bound of a memory-bound\n"
     "decode step on a device whose memory is host memory, e.g. lavapipe)."},
    {NULL, NULL, 0, NULL},
};
