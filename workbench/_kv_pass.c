/* The key-value service's usual requests, fused: ``set`` of a small plain value and ``get``.
 *
 * ``broker.state.keyvalue.KeyValueService.store_plain`` and ``get_plain`` do a whole KV_STORE
 * or KV_GET from its head when it is the usual one, and say when it is not (having changed
 * nothing), so that the general handler does it. These are the same two on the same state
 * objects, read and changed through their attributes as the Python does: the state stays
 * the Python objects, and these only leave out the interpreter's steps around them. They are
 * narrower: besides what the Python versions leave to the general path, they leave it an
 * entry with a deadline, a time to live, and an old value in a shared-memory file. The
 * broker's tests run both, and compare what two brokers answer (``tests/test_accel.py``).
 */

#include "_accel.h"

#include <stddef.h>
#include <structmember.h>

#define HEADER_SIZE 8      /* protocol.HEADER: version, status or op, flags, request id */
#define DESCRIPTOR_SIZE 4  /* protocol.DESCRIPTOR: kind, flags, extra frames */
#define PROTOCOL_VERSION 1
#define VERSION_SHIFT 32   /* an entry's version = variable id << VERSION_SHIFT | sequence */
#define SEPARATOR '\0'

static PyObject *str_registry, *str_valid_names, *str_spaces, *str_by_name, *str_memory,
    *str_deliveries, *str_log, *str_counters, *str_messages, *str_name, *str_variables,
    *str_clear, *str_append, *str_workspace, *str_key, *str_kv_sets, *str_kv_gets,
    *str_kv_misses;

/* An attribute of the state's objects. Variables and values keep theirs in slots: for an
 * object of exactly ``type`` the slot is read at ``offset``, as the interpreter's own cache
 * does, and anything else is asked for by ``name``. */
typedef struct {
    PyObject *name;
    PyTypeObject *type;  /* NULL: always by name */
    Py_ssize_t offset;
} Attr;

typedef struct {
    PyObject_HEAD
    Attr mode, mode_fixed, fetchers, finders, expires, values, live, id, next_seq;  /* Variable */
    Attr shared, size, seq, frames;  /* Value */
    Attr used, limit, watched;  /* Memory, Deliveries */
    PyObject *service;     /* the KeyValueService whose state these change */
    /* Its tables, which the state makes once and never replaces: */
    PyObject *registry, *valid_names, *by_name, *memory, *deliveries, *log, *counters,
        *messages;
    PyObject *variable_type;  /* variables.Variable */
    PyObject *single;      /* variables.SINGLE */
    PyObject *value_type;  /* variables.Value */
    PyObject *removed;     /* changes.Removed, the record of a value gone */
    PyObject *stored;      /* changes.stored, the record of a value stored */
    int missing;           /* Status.MISSING */
} PlainKV;

/* A request's arguments: the spans of the head after its header, between separators. */
typedef struct {
    const char *at[6];
    Py_ssize_t size[6];
} Args;

/* Split ``body`` at its first ``most - 1`` separators -> how many parts (the last holds the
 * rest, separators included), as ``bytes.split(SEPARATOR, most - 1)``. */
static int
split_args(const char *body, Py_ssize_t size, int most, Args *args)
{
    int count = 0;
    const char *end = body + size;
    while (count < most - 1) {
        const char *sep = memchr(body, SEPARATOR, (size_t)(end - body));
        if (sep == NULL)
            break;
        args->at[count] = body;
        args->size[count++] = sep - body;
        body = sep + 1;
    }
    args->at[count] = body;
    args->size[count++] = end - body;
    return count;
}

/* The attribute -> a new reference, or NULL with an error. */
static PyObject *
attr_get(PyObject *object, const Attr *attr)
{
    if (Py_TYPE(object) == attr->type) {
        PyObject *value = *(PyObject **)((char *)object + attr->offset);
        if (value != NULL)
            return Py_NewRef(value);
    }
    return PyObject_GetAttr(object, attr->name);
}

/* Set the attribute -> 0, or -1 with an error. */
static int
attr_set(PyObject *object, const Attr *attr, PyObject *value)
{
    if (Py_TYPE(object) == attr->type) {
        Py_XSETREF(*(PyObject **)((char *)object + attr->offset), Py_NewRef(value));
        return 0;
    }
    return PyObject_SetAttr(object, attr->name, value);
}

/* 1 when the attribute is true, 0 when false, -1 on an error. */
static int
attr_true(PyObject *object, const Attr *attr)
{
    PyObject *value = attr_get(object, attr);
    if (value == NULL)
        return -1;
    int truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth;
}

/* 1 when the attribute is None, 0 when not, -1 on an error. */
static int
attr_none(PyObject *object, const Attr *attr)
{
    PyObject *value = attr_get(object, attr);
    if (value == NULL)
        return -1;
    int none = value == Py_None;
    Py_DECREF(value);
    return none;
}

/* The attribute as a C integer -> 0, or -1 on an error. */
static int
attr_long(PyObject *object, const Attr *attr, long long *out)
{
    PyObject *value = attr_get(object, attr);
    if (value == NULL)
        return -1;
    *out = PyLong_AsLongLong(value);
    Py_DECREF(value);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

static int
set_attr_long(PyObject *object, const Attr *attr, long long number)
{
    PyObject *value = PyLong_FromLongLong(number);
    if (value == NULL)
        return -1;
    int result = attr_set(object, attr, value);
    Py_DECREF(value);
    return result;
}

/* counters[key] += 1 -> 0, or -1 on an error (a counter that is not there: KeyError). */
static int
count(PyObject *counters, PyObject *key)
{
    PyObject *old = PyDict_GetItemWithError(counters, key);
    if (old == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetObject(PyExc_KeyError, key);
        return -1;
    }
    long long number = PyLong_AsLongLong(old);
    if (number == -1 && PyErr_Occurred())
        return -1;
    PyObject *new = PyLong_FromLongLong(number + 1);
    if (new == NULL)
        return -1;
    int result = PyDict_SetItem(counters, key, new);
    Py_DECREF(new);
    return result;
}

/* The checked name an argument spells, as ``Registry.name`` gives it (checked names are in
 * its ``valid_names``) -> a new reference, or NULL with the error ``name`` raised. */
static PyObject *
checked_name(PyObject *registry, PyObject *valid, const char *at, Py_ssize_t size,
             PyObject *what)
{
    PyObject *arg = PyBytes_FromStringAndSize(at, size);
    if (arg == NULL)
        return NULL;
    PyObject *name = PyDict_GetItemWithError(valid, arg);
    if (name != NULL)
        Py_INCREF(name);
    else if (!PyErr_Occurred())
        name = PyObject_CallMethodObjArgs(registry, str_name, arg, what, NULL);
    Py_DECREF(arg);
    return name;
}

/* The variable named by a request's first two arguments, in an existing workspace -> a new
 * reference, Py_None (a new reference) when the variable is not there or, with ``*no_space``
 * set, the workspace is not, or NULL with an error. */
static PyObject *
find_variable(PlainKV *self, const Args *args, int *no_space)
{
    *no_space = 0;
    PyObject *var = NULL, *key = NULL, *variables = NULL;
    PyObject *ws_name = checked_name(self->registry, self->valid_names, args->at[0],
                                     args->size[0], str_workspace);
    if (ws_name == NULL)
        return NULL;
    PyObject *ws = PyDict_GetItemWithError(self->by_name, ws_name);
    Py_DECREF(ws_name);
    if (ws == NULL) {
        if (PyErr_Occurred())
            return NULL;
        *no_space = 1;
        return Py_NewRef(Py_None);
    }
    Py_INCREF(ws);  /* borrowed from a table that ``Registry.name`` could change */
    key = checked_name(self->registry, self->valid_names, args->at[1], args->size[1], str_key);
    variables = key ? PyObject_GetAttr(ws, str_variables) : NULL;
    Py_DECREF(ws);
    if (variables != NULL && !PyDict_CheckExact(variables))
        PyErr_SetString(PyExc_TypeError, "a workspace's variables must be a dict");
    else if (variables != NULL) {
        var = PyDict_GetItemWithError(variables, key);
        if (var != NULL)
            Py_INCREF(var);
        else if (!PyErr_Occurred())
            var = Py_NewRef(Py_None);
    }
    Py_XDECREF(key);
    Py_XDECREF(variables);
    return var;
}

/* Whether the variable is a SINGLE one without a deadline: 1 yes, 0 no, -1 error. */
static int
plain_single(PlainKV *self, PyObject *var)
{
    PyObject *mode = attr_get(var, &self->mode);
    if (mode == NULL)
        return -1;
    int single = mode == self->single ? 1 : PyObject_RichCompareBool(mode, self->single, Py_EQ);
    Py_DECREF(mode);
    if (single <= 0)
        return single;
    return attr_none(var, &self->expires);
}

/* messages.append((peer, [reply])) -> 0, or -1 on an error. */
static int
send_reply(PlainKV *self, PyObject *peer, PyObject *reply)
{
    if (reply == NULL)
        return -1;
    PyObject *frames = PyList_New(1);
    if (frames == NULL) {
        Py_DECREF(reply);
        return -1;
    }
    PyList_SET_ITEM(frames, 0, reply);
    PyObject *message = PyTuple_Pack(2, peer, frames);
    Py_DECREF(frames);
    int result = message ? PyList_Append(self->messages, message) : -1;
    Py_XDECREF(message);
    return result;
}

static void
put_u32(unsigned char *at, unsigned long long number)
{
    for (int i = 0; i < 4; i++)
        at[i] = (unsigned char)(number >> (8 * i));
}

static void
put_u64(unsigned char *at, unsigned long long number)
{
    for (int i = 0; i < 8; i++)
        at[i] = (unsigned char)(number >> (8 * i));
}

/* A reply's header: protocol.HEADER packed with ``status``, no extra frames. */
static void
put_header(unsigned char *at, int status, unsigned long request_id)
{
    at[0] = PROTOCOL_VERSION;
    at[1] = (unsigned char)status;
    at[2] = at[3] = 0;
    put_u32(at + 4, request_id);
}

/* The request's head after its header, and its request id -> 1; 0 for a request with value
 * frames after its head (never one of these); -1 with an error set. */
static int
request_parts(PyObject *const *args, Py_ssize_t nargs, const char **body, Py_ssize_t *size,
              unsigned long *request_id)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "takes (session, peer, request_id, head, frames)");
        return -1;
    }
    if (!PyBytes_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "head must be bytes");
        return -1;
    }
    *request_id = PyLong_AsUnsignedLong(args[2]);
    if (*request_id == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    Py_ssize_t whole = PyBytes_GET_SIZE(args[3]);
    *body = PyBytes_AS_STRING(args[3]) + (whole < HEADER_SIZE ? whole : HEADER_SIZE);
    *size = whole < HEADER_SIZE ? 0 : whole - HEADER_SIZE;
    int has_frames = PyObject_IsTrue(args[4]);
    return has_frames < 0 ? -1 : !has_frames;
}

/* Whether a value's first frame is plain: one frame, no flags. */
static int
plain_frame(const char *first, Py_ssize_t size)
{
    return size >= DESCRIPTOR_SIZE && !first[1] && !first[2] && !first[3];
}

/* Check what ``store_plain`` checks of the entry and its old values -> 1 when this is the
 * usual set, 0 when not, -1 on an error. */
static int
plain_entry(PlainKV *self, PyObject *var, PyObject *values, Py_ssize_t *old_count)
{
    int ok = plain_single(self, var);
    if (ok > 0)
        ok = attr_true(var, &self->mode_fixed);
    if (ok > 0)
        ok = attr_true(var, &self->fetchers) == 0 && attr_true(var, &self->finders) == 0
             ? 1 : (PyErr_Occurred() ? -1 : 0);
    if (ok > 0) {
        ok = attr_true(self->deliveries, &self->watched);
        ok = ok < 0 ? -1 : !ok;
    }
    if (ok > 0)
        ok = attr_true(var, &self->live);
    if (ok <= 0)
        return ok;
    *old_count = PyObject_Size(values);
    if (*old_count < 0)
        return -1;
    for (Py_ssize_t i = 0; i < *old_count && ok > 0; i++) {
        PyObject *old = PySequence_GetItem(values, i);
        ok = old == NULL ? -1 : attr_none(old, &self->shared);
        Py_XDECREF(old);
    }
    return ok;
}

/* The old values go (``memory.discard``, for values without a file) and the new one is stored,
 * as ``store_plain`` does -> the new value (a new reference), or NULL on an error. */
static PyObject *
replace_values(PlainKV *self, PyObject *var, PyObject *values, Py_ssize_t old_count,
               PyObject *first, Py_ssize_t size)
{
    PyObject *var_id = attr_get(var, &self->id);
    if (var_id == NULL)
        return NULL;
    long long used, freed = 0, seq;
    PyObject *value = NULL;
    for (Py_ssize_t i = 0; i < old_count; i++) {
        PyObject *old = PySequence_GetItem(values, i);
        long long old_size;
        PyObject *old_seq = old ? attr_get(old, &self->seq) : NULL;
        int failed = old_seq == NULL || attr_long(old, &self->size, &old_size) < 0;
        PyObject *record = failed ? NULL : PyTuple_Pack(3, self->removed, var_id, old_seq);
        failed = record == NULL || PyList_Append(self->log, record) < 0;
        Py_XDECREF(record);
        Py_XDECREF(old_seq);
        Py_XDECREF(old);
        if (failed)
            goto done;
        freed += old_size;
    }
    PyObject *cleared = PyObject_CallMethodNoArgs(values, str_clear);
    if (cleared == NULL || attr_long(var, &self->next_seq, &seq) < 0
            || set_attr_long(var, &self->next_seq, seq + 1) < 0
            || attr_long(self->memory, &self->used, &used) < 0
            || set_attr_long(self->memory, &self->used, used - freed + size) < 0) {
        Py_XDECREF(cleared);
        goto done;
    }
    Py_DECREF(cleared);
    PyObject *frames = PyList_New(1);
    PyObject *call[3] = {frames, PyLong_FromSsize_t(size), PyLong_FromLongLong(seq)};
    if (frames != NULL) {
        PyList_SET_ITEM(frames, 0, Py_NewRef(first));
        if (call[1] != NULL && call[2] != NULL)
            value = PyObject_Vectorcall(self->value_type, call, 3, NULL);
    }
    Py_XDECREF(frames);
    Py_XDECREF(call[1]);
    Py_XDECREF(call[2]);
    PyObject *record = value ? PyTuple_Pack(3, self->stored, var, value) : NULL;
    PyObject *appended = record && PyList_Append(self->log, record) == 0
        ? PyObject_CallMethodOneArg(values, str_append, value) : NULL;
    Py_XDECREF(record);
    if (appended == NULL)
        Py_CLEAR(value);
    Py_XDECREF(appended);
done:
    Py_DECREF(var_id);
    return value;
}

PyDoc_STRVAR(store_doc,
"store(session, peer, request_id, head, frames) -> whether this was the usual KV_STORE, done\n\n"
"``KeyValueService.store_plain``: False, having changed nothing, for anything else.");

static PyObject *
kv_store(PlainKV *self, PyObject *const *args, Py_ssize_t nargs)
{
    const char *body;
    Py_ssize_t size;
    unsigned long request_id;
    int usual = request_parts(args, nargs, &body, &size, &request_id);
    if (usual <= 0)
        return usual < 0 ? NULL : Py_NewRef(Py_False);
    Args parts;
    if (split_args(body, size, 6, &parts) != 6 || parts.size[2] != 3
            || memcmp(parts.at[2], "set", 3) != 0)
        Py_RETURN_FALSE;
    /* a time to live (not "0" or "0.0") takes the general path, which checks it */
    if (!((parts.size[3] == 1 && parts.at[3][0] == '0')
          || (parts.size[3] == 3 && memcmp(parts.at[3], "0.0", 3) == 0)))
        Py_RETURN_FALSE;
    Py_ssize_t value_size = parts.size[5];
    if (!plain_frame(parts.at[5], value_size))
        Py_RETURN_FALSE;

    long long used, limit;
    if (attr_long(self->memory, &self->used, &used) < 0
            || attr_long(self->memory, &self->limit, &limit) < 0)
        return NULL;
    if (used + value_size > limit)  /* ``admit`` refuses it */
        Py_RETURN_FALSE;
    int no_space;
    PyObject *var = find_variable(self, &parts, &no_space);
    if (var == NULL)
        return NULL;
    if (var == Py_None) {
        Py_DECREF(var);
        Py_RETURN_FALSE;
    }
    PyObject *result = NULL, *first = NULL, *value = NULL;
    PyObject *values = attr_get(var, &self->values);
    Py_ssize_t old_count = 0;
    usual = values ? plain_entry(self, var, values, &old_count) : -1;
    if (usual <= 0) {
        result = usual < 0 ? NULL : Py_NewRef(Py_False);
        goto done;
    }
    first = PyBytes_FromStringAndSize(parts.at[5], value_size);
    if (first == NULL || count(self->counters, str_kv_sets) < 0)
        goto done;
    value = replace_values(self, var, values, old_count, first, value_size);
    long long var_id, seq;
    if (value == NULL || attr_long(var, &self->id, &var_id) < 0
            || attr_long(value, &self->seq, &seq) < 0)
        goto done;
    PyObject *reply = PyBytes_FromStringAndSize(NULL, HEADER_SIZE + 8);
    if (reply != NULL) {
        unsigned char *at = (unsigned char *)PyBytes_AS_STRING(reply);
        put_header(at, 0, request_id);
        put_u64(at + HEADER_SIZE, (unsigned long long)var_id << VERSION_SHIFT
                                   | (unsigned long long)seq);
    }
    if (send_reply(self, args[1], reply) == 0)
        result = Py_NewRef(Py_True);
done:
    Py_DECREF(var);
    Py_XDECREF(values);
    Py_XDECREF(first);
    Py_XDECREF(value);
    return result;
}

/* The OK reply carrying ``value`` (``protocol.value_reply_head``) -> a new reference, Py_None
 * when the value is not one plain frame, or NULL on an error. */
static PyObject *
value_reply(PlainKV *self, PyObject *var, PyObject *value, unsigned long request_id)
{
    int shared = attr_none(value, &self->shared);
    if (shared <= 0)
        return shared < 0 ? NULL : Py_NewRef(Py_None);
    PyObject *frames = attr_get(value, &self->frames);
    if (frames == NULL)
        return NULL;
    PyObject *reply = NULL;
    long long var_id, seq;
    Py_buffer first;
    if (PyObject_Size(frames) != 1) {
        reply = PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    } else if (attr_long(var, &self->id, &var_id) == 0
               && attr_long(value, &self->seq, &seq) == 0) {
        PyObject *frame = PySequence_GetItem(frames, 0);
        if (frame != NULL && PyObject_GetBuffer(frame, &first, PyBUF_SIMPLE) == 0) {
            reply = PyBytes_FromStringAndSize(NULL, HEADER_SIZE + 16 + first.len);
            if (reply != NULL) {
                unsigned char *at = (unsigned char *)PyBytes_AS_STRING(reply);
                put_header(at, 0, request_id);
                put_u64(at + HEADER_SIZE, (unsigned long long)var_id);
                put_u64(at + HEADER_SIZE + 8, (unsigned long long)seq);
                memcpy(at + HEADER_SIZE + 16, first.buf, (size_t)first.len);
            }
            PyBuffer_Release(&first);
        }
        Py_XDECREF(frame);
    }
    Py_DECREF(frames);
    return reply;
}

PyDoc_STRVAR(get_doc,
"get(session, peer, request_id, head, frames) -> whether this was the usual KV_GET, done\n\n"
"``KeyValueService.get_plain``: False, having changed nothing, for anything else.");

static PyObject *
kv_get(PlainKV *self, PyObject *const *args, Py_ssize_t nargs)
{
    const char *body;
    Py_ssize_t size;
    unsigned long request_id;
    int usual = request_parts(args, nargs, &body, &size, &request_id);
    if (usual <= 0)
        return usual < 0 ? NULL : Py_NewRef(Py_False);
    Args parts;
    if (split_args(body, size, 3, &parts) != 2)
        Py_RETURN_FALSE;
    int no_space;
    PyObject *var = find_variable(self, &parts, &no_space);
    if (var == NULL)
        return NULL;
    if (no_space) {  /* the general path makes the workspace */
        Py_DECREF(var);
        Py_RETURN_FALSE;
    }
    PyObject *result = NULL, *values = NULL, *value = NULL, *reply = NULL;
    if (var != Py_None) {
        usual = plain_single(self, var);
        if (usual <= 0) {
            result = usual < 0 ? NULL : Py_NewRef(Py_False);
            goto done;
        }
        values = attr_get(var, &self->values);
        Py_ssize_t held = values ? PyObject_Size(values) : -1;
        if (held < 0)
            goto done;
        if (held > 0) {
            value = PySequence_GetItem(values, 0);
            reply = value ? value_reply(self, var, value, request_id) : NULL;
            if (reply == NULL)
                goto done;
            if (reply == Py_None) {
                result = Py_NewRef(Py_False);
                goto done;
            }
            if (count(self->counters, str_kv_gets) < 0)
                goto done;
            PyObject *sent = reply;
            reply = NULL;  /* send_reply takes it */
            if (send_reply(self, args[1], sent) == 0)
                result = Py_NewRef(Py_True);
            goto done;
        }
    }
    if (count(self->counters, str_kv_gets) < 0 || count(self->counters, str_kv_misses) < 0)
        goto done;
    PyObject *missing = PyBytes_FromStringAndSize(NULL, HEADER_SIZE);
    if (missing != NULL)
        put_header((unsigned char *)PyBytes_AS_STRING(missing), self->missing, request_id);
    if (send_reply(self, args[1], missing) == 0)
        result = Py_NewRef(Py_True);
done:
    Py_DECREF(var);
    Py_XDECREF(values);
    Py_XDECREF(value);
    Py_XDECREF(reply);
    return result;
}

/* ``attr`` read by name, or at its slot's offset in objects of exactly ``type`` -> 0, or -1. */
static int
resolve(Attr *attr, PyObject *type, const char *name)
{
    attr->name = PyUnicode_InternFromString(name);
    if (attr->name == NULL)
        return -1;
    attr->type = NULL;
    attr->offset = 0;
    if (type == NULL)
        return 0;
    PyObject *descriptor = PyObject_GetAttr(type, attr->name);
    if (descriptor == NULL)
        return -1;
    if (Py_IS_TYPE(descriptor, &PyMemberDescr_Type)) {
        PyMemberDef *member = ((PyMemberDescrObject *)descriptor)->d_member;
        if (member->type == T_OBJECT_EX && !(member->flags & READONLY)) {
            attr->type = (PyTypeObject *)type;
            attr->offset = member->offset;
        }
    }
    Py_DECREF(descriptor);
    return 0;
}

/* Every reference a PlainKV holds, for the collector. */
#define PLAIN_KV_OBJECTS(X) X(service) X(registry) X(valid_names) X(by_name) X(memory) \
    X(deliveries) X(log) X(counters) X(messages) X(variable_type) X(value_type) X(single) \
    X(removed) X(stored)
#define PLAIN_KV_ATTRS(X) X(mode) X(mode_fixed) X(fetchers) X(finders) X(expires) X(values) \
    X(live) X(id) X(next_seq) X(shared) X(size) X(seq) X(frames) X(used) X(limit) X(watched)

static int
plain_kv_init(PlainKV *self, PyObject *args, PyObject *kwargs)
{
    PyObject *service, *variable_type, *value_type, *single, *removed, *stored;
    int missing;
    static char *keywords[] = {"service", "variable_type", "value_type", "single", "removed",
                               "stored", "missing", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOi", keywords, &service,
                                     &variable_type, &value_type, &single, &removed, &stored,
                                     &missing))
        return -1;
    if (self->service != NULL) {
        PyErr_SetString(PyExc_TypeError, "PlainKV is made once");
        return -1;
    }
    self->service = Py_NewRef(service);
    self->variable_type = Py_NewRef(variable_type);
    self->value_type = Py_NewRef(value_type);
    self->single = Py_NewRef(single);
    self->removed = Py_NewRef(removed);
    self->stored = Py_NewRef(stored);
    self->missing = missing;
    self->registry = PyObject_GetAttr(service, str_registry);
    self->valid_names = self->registry
        ? PyObject_GetAttr(self->registry, str_valid_names) : NULL;
    PyObject *spaces = self->registry ? PyObject_GetAttr(self->registry, str_spaces) : NULL;
    self->by_name = spaces ? PyObject_GetAttr(spaces, str_by_name) : NULL;
    Py_XDECREF(spaces);
    self->memory = PyObject_GetAttr(service, str_memory);
    self->deliveries = self->memory ? PyObject_GetAttr(service, str_deliveries) : NULL;
    self->log = self->deliveries ? PyObject_GetAttr(service, str_log) : NULL;
    self->counters = self->log ? PyObject_GetAttr(service, str_counters) : NULL;
    self->messages = self->counters ? PyObject_GetAttr(service, str_messages) : NULL;
    if (self->by_name == NULL || self->messages == NULL)
        return -1;
    if (!PyDict_CheckExact(self->valid_names) || !PyDict_CheckExact(self->by_name)
            || !PyDict_CheckExact(self->counters) || !PyList_CheckExact(self->log)
            || !PyList_CheckExact(self->messages)) {
        PyErr_SetString(PyExc_TypeError, "the service's tables are not the state's");
        return -1;
    }
    if (resolve(&self->mode, variable_type, "mode") || resolve(&self->id, variable_type, "id")
            || resolve(&self->mode_fixed, variable_type, "mode_fixed")
            || resolve(&self->fetchers, variable_type, "fetchers")
            || resolve(&self->finders, variable_type, "finders")
            || resolve(&self->expires, variable_type, "expires")
            || resolve(&self->values, variable_type, "values")
            || resolve(&self->live, variable_type, "live")
            || resolve(&self->next_seq, variable_type, "next_seq")
            || resolve(&self->shared, value_type, "shared")
            || resolve(&self->size, value_type, "size")
            || resolve(&self->seq, value_type, "seq")
            || resolve(&self->frames, value_type, "frames")
            || resolve(&self->used, NULL, "used") || resolve(&self->limit, NULL, "limit")
            || resolve(&self->watched, NULL, "watched"))
        return -1;
    return 0;
}

static int
plain_kv_traverse(PlainKV *self, visitproc visit, void *arg)
{
#define VISIT(field) Py_VISIT(self->field);
    PLAIN_KV_OBJECTS(VISIT)
#undef VISIT
    return 0;
}

static int
plain_kv_clear(PlainKV *self)
{
#define CLEAR(field) Py_CLEAR(self->field);
    PLAIN_KV_OBJECTS(CLEAR)
#undef CLEAR
#define CLEAR_NAME(field) Py_CLEAR(self->field.name);
    PLAIN_KV_ATTRS(CLEAR_NAME)
#undef CLEAR_NAME
    return 0;
}

static void
plain_kv_dealloc(PlainKV *self)
{
    PyObject_GC_UnTrack(self);
    plain_kv_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef plain_kv_methods[] = {
    {"store", (PyCFunction)(void (*)(void))kv_store, METH_FASTCALL, store_doc},
    {"get", (PyCFunction)(void (*)(void))kv_get, METH_FASTCALL, get_doc},
    {NULL}
};

PyDoc_STRVAR(plain_kv_doc,
"PlainKV(service, variable_type, value_type, single, removed, stored, missing)\n\n"
"The fused KV_STORE and KV_GET of a ``KeyValueService`` (see the module).");

static PyTypeObject PlainKVType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "workbench._kv_pass.PlainKV",
    .tp_basicsize = sizeof(PlainKV),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = plain_kv_doc,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)plain_kv_init,
    .tp_traverse = (traverseproc)plain_kv_traverse,
    .tp_clear = (inquiry)plain_kv_clear,
    .tp_dealloc = (destructor)plain_kv_dealloc,
    .tp_methods = plain_kv_methods,
};

static struct PyModuleDef kv_pass_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "workbench._kv_pass",
    .m_doc = "The key-value service's usual requests, fused (see broker/state/keyvalue.py).",
    .m_size = -1,
};

static int
intern(PyObject **slot, const char *text)
{
    *slot = PyUnicode_InternFromString(text);
    return *slot == NULL ? -1 : 0;
}

PyMODINIT_FUNC
PyInit__kv_pass(void)
{
    if (intern(&str_registry, "registry") || intern(&str_valid_names, "valid_names")
            || intern(&str_spaces, "spaces") || intern(&str_by_name, "by_name")
            || intern(&str_memory, "memory") || intern(&str_deliveries, "deliveries")
            || intern(&str_log, "log") || intern(&str_counters, "counters")
            || intern(&str_messages, "messages") || intern(&str_name, "name")
            || intern(&str_variables, "variables") || intern(&str_clear, "clear")
            || intern(&str_append, "append") || intern(&str_workspace, "workspace")
            || intern(&str_key, "key") || intern(&str_kv_sets, "kv_sets")
            || intern(&str_kv_gets, "kv_gets") || intern(&str_kv_misses, "kv_misses"))
        return NULL;
    if (PyType_Ready(&PlainKVType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&kv_pass_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "PlainKV", (PyObject *)&PlainKVType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
