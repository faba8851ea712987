/* eyecare._core: the devices and the default context. */
#include "python/py_common.h"

#include <stdlib.h>
#include <string.h>

#include "vk/vk_context.h"

int ec_validation_message_count(void);

static ec_context *default_context;

/* "1234", "512M", "8G" -> bytes; 0 for unset. */
static int parse_bytes(const char *text, uint64_t *out)
{
    if (!text || !*text) { *out = 0; return 0; }
    char *end;
    double v = strtod(text, &end);
    double unit = 1;
    if (*end == 'k' || *end == 'K') unit = 1024.0, end++;
    else if (*end == 'm' || *end == 'M') unit = 1024.0 * 1024, end++;
    else if (*end == 'g' || *end == 'G') unit = 1024.0 * 1024 * 1024, end++;
    if (*end == 'i' || *end == 'I') end++;
    if (*end == 'b' || *end == 'B') end++;
    if (*end || v < 0) return -1;
    *out = (uint64_t)(v * unit);
    return 0;
}

ec_context *ec_py_context(void)
{
    if (default_context) return default_context;
    uint64_t budget;
    const char *limit = getenv("EYECARE_MAX_DEVICE_MEMORY");
    if (parse_bytes(limit, &budget)) {
        PyErr_Format(PyExc_ValueError, "EYECARE_MAX_DEVICE_MEMORY=%s is not a size (examples: 4G, 512M, 1073741824)", limit);
        return NULL;
    }
    const char *validate = getenv("EYECARE_VALIDATE");
    int validation = validate && *validate && strcmp(validate, "0") != 0;
    ec_status s;
    ec_context *ctx = NULL;
    EC_NOGIL(s, ec_context_create(getenv("EYECARE_DEVICE"), validation, budget, &ctx));
    if (s) { ec_py_raise(s); return NULL; }
    default_context = ctx;
    return ctx;
}

/* The UUID in the usual 8-4-4-4-12 hex form (as vulkaninfo and nvidia-smi print it), the PCI address as
 * DDDD:BB:DD.F (lspci -D), or None when the driver does not report it. */
static PyObject *uuid_string(const uint8_t *u)
{
    char text[40];
    char *p = text;
    for (int i = 0; i < (int)VK_UUID_SIZE; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) *p++ = '-';
        p += snprintf(p, 3, "%02x", u[i]);
    }
    return PyUnicode_FromString(text);
}

static PyObject *pci_string(const ec_device_info *d)
{
    if (!d->has_pci) Py_RETURN_NONE;
    char text[32];
    snprintf(text, sizeof text, "%04x:%02x:%02x.%x", d->pci_domain, d->pci_bus, d->pci_device, d->pci_function);
    return PyUnicode_FromString(text);
}

static void set_item(PyObject *d, const char *key, PyObject *value);

static PyObject *info_dict(const ec_device_info *d)
{
    char version[32];
    snprintf(version, sizeof version, "%u.%u.%u", VK_API_VERSION_MAJOR(d->api_version), VK_API_VERSION_MINOR(d->api_version),
             VK_API_VERSION_PATCH(d->api_version));
    PyObject *dict = Py_BuildValue("{s:s,s:s,s:I,s:I,s:s,s:K,s:I,s:I,s:I,s:I,s:I}", "name", d->name, "type", d->type,
                         "vendor_id", d->vendor_id, "device_id", d->device_id, "api_version", version,
                         "memory_bytes", (unsigned long long)d->memory_bytes, "subgroup_size", d->subgroup_size,
                         "max_storage_buffer_range", d->max_storage_buffer_range,
                         "max_texel_buffer_elements", d->max_texel_buffer_elements, "max_shared_memory", d->max_shared_memory,
                         "max_workgroup_invocations", d->max_workgroup_invocations);
    if (dict) {
        set_item(dict, "uuid", uuid_string(d->uuid));
        set_item(dict, "pci_bus_id", pci_string(d));
    }
    return dict;
}

void ec_py_lock(ec_context *ctx)
{
    while (pthread_mutex_trylock(&ctx->lock) != 0) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&ctx->lock);
        pthread_mutex_unlock(&ctx->lock);
        Py_END_ALLOW_THREADS
    }
}

static void set_item(PyObject *d, const char *key, PyObject *value)
{
    if (value) { PyDict_SetItemString(d, key, value); Py_DECREF(value); }
}

static PyObject *py_devices(PyObject *self, PyObject *args)
{
    ec_device_info infos[16];
    int n = 0;
    ec_status s;
    EC_NOGIL(s, ec_list_devices(infos, 16, &n));
    if (s) return ec_py_raise(s);
    PyObject *list = PyList_New(0);
    for (int i = 0; list && i < n && i < 16; i++) {
        PyObject *d = info_dict(&infos[i]);
        if (!d || PyList_Append(list, d) < 0) { Py_XDECREF(d); Py_DECREF(list); return NULL; }
        set_item(d, "index", PyLong_FromLong(i));
        Py_DECREF(d);
    }
    return list;
}

static PyObject *py_device_info(PyObject *self, PyObject *args)
{
    ec_context *ctx = ec_py_context();
    if (!ctx) return NULL;
    PyObject *d = info_dict(&ctx->info);
    if (d) {
        set_item(d, "validation", PyBool_FromLong(ctx->validation));
        set_item(d, "memory_in_use", PyLong_FromUnsignedLongLong(ctx->in_use));
        set_item(d, "memory_reserved", PyLong_FromUnsignedLongLong(ctx->reserved));
        set_item(d, "memory_budget", PyLong_FromUnsignedLongLong(ctx->budget));
        set_item(d, "max_allocation", PyLong_FromUnsignedLongLong(ctx->max_allocation));
        set_item(d, "host_visible_tensors", PyBool_FromLong(ctx->host_visible));
        set_item(d, "submit_dispatches", PyLong_FromUnsignedLong(ctx->submit_every));
        static const char *modes[] = {"discrete-memory", "gpu-workgroups", "small-limits", "split-submits"};
        PyObject *emulate = PyList_New(0);
        for (int i = 0; emulate && i < 4; i++)
            if (ctx->emulate & (1u << i)) {
                PyObject *m = PyUnicode_FromString(modes[i]);
                if (m) { PyList_Append(emulate, m); Py_DECREF(m); }
            }
        set_item(d, "emulate", emulate);
    }
    return d;
}

static PyObject *py_counters(PyObject *self, PyObject *args)
{
    ec_context *ctx = ec_py_context();
    if (!ctx) return NULL;
    const ec_counters *c = &ctx->counters;
    return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K,s:K}", "submits", (unsigned long long)c->submits,
                         "dispatches", (unsigned long long)c->dispatches, "barriers", (unsigned long long)c->barriers,
                         "staging_copies", (unsigned long long)c->staging_copies,
                         "multi_subgroup_dispatches", (unsigned long long)c->multi_subgroup_dispatches,
                         "split_views", (unsigned long long)c->split_views, "fills", (unsigned long long)c->fills);
}

static PyObject *py_set_memory_budget(PyObject *self, PyObject *args)
{
    PyObject *obj;
    if (!PyArg_ParseTuple(args, "O:set_memory_budget", &obj)) return NULL;
    /* "K" would take -1 as 2^64 - 1, silently meaning "no budget": negative sizes are refused instead. */
    unsigned long long bytes = PyLong_Check(obj) ? PyLong_AsUnsignedLongLong(obj) : (unsigned long long)-1;
    if (!PyLong_Check(obj) || (bytes == (unsigned long long)-1 && PyErr_Occurred())) {
        PyErr_Clear();
        return PyErr_Format(PyExc_ValueError, "set_memory_budget: expected a byte count >= 0 (0 for none), got %R", obj);
    }
    ec_context *ctx = ec_py_context();
    if (!ctx) return NULL;
    /* Under the lock: another thread may be allocating. */
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&ctx->lock);
    ec_set_budget(ctx, bytes);
    pthread_mutex_unlock(&ctx->lock);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_context_created(PyObject *self, PyObject *args) { return PyBool_FromLong(default_context != NULL); }

static PyObject *py_validation_messages(PyObject *self, PyObject *args)
{
    return PyLong_FromLong(ec_validation_message_count());
}

static PyObject *py_last_batch_ms(PyObject *self, PyObject *args)
{
    return PyFloat_FromDouble(default_context ? default_context->last_batch_ms : 0.0);
}

static PyObject *py_begin(PyObject *self, PyObject *args)
{
    ec_context *ctx = ec_py_context();
    if (!ctx) return NULL;
    ec_status s = ec_batch_begin(ctx);
    if (s) return ec_py_raise(s);
    Py_RETURN_NONE;
}

static PyObject *py_submit(PyObject *self, PyObject *args)
{
    ec_context *ctx = ec_py_context();
    if (!ctx) return NULL;
    ec_status s;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&ctx->lock);
    s = ec_batch_submit(ctx);
    pthread_mutex_unlock(&ctx->lock);
    Py_END_ALLOW_THREADS
    if (s) return ec_py_raise(s);
    Py_RETURN_NONE;
}

PyMethodDef ec_py_device_methods[] = {
    {"devices", py_devices, METH_NOARGS, "devices() -> list of dicts describing each Vulkan device."},
    {"device_info", py_device_info, METH_NOARGS, "device_info() -> dict for the device eyecare uses (creating its context)."},
    {"set_memory_budget", py_set_memory_budget, METH_VARARGS, "set_memory_budget(bytes): cap the device memory eyecare holds (0 = none); over it, allocations raise\n"
     "DeviceMemoryError (with .needed and .available in bytes)."},
    {"counters", py_counters, METH_NOARGS, "counters() -> dict of what the runtime did since the context was made: submits,\n"
     "dispatches, barriers, staging_copies, multi_subgroup_dispatches, split_views, fills (tests/test_emulation.py)."},
    {"context_created", py_context_created, METH_NOARGS, "True once the device context exists (a device was chosen)."},
    {"validation_messages", py_validation_messages, METH_NOARGS, "Number of Vulkan validation-layer messages so far."},
    {"last_batch_ms", py_last_batch_ms, METH_NOARGS, "Device time of the last submitted batch, in ms (timestamps)."},
    {"begin", py_begin, METH_NOARGS, "begin(): record the following ops into one batch (until submit())."},
    {"submit", py_submit, METH_NOARGS, "submit(): run the recorded batch and wait for it."},
    {NULL, NULL, 0, NULL},
};
