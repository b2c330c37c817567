/* The broker's fast pass over one readable connection: read, hand each small request to the
 * state, frame the replies, write them.
 *
 * Most reads bring one request (or a few, pipelined) of one small frame each, on a plain
 * connection, and each is answered with one small frame to the same client. In Python that
 * crosses some ten functions of the server loop around the state's own (``broker/server``:
 * the read, the ZMTP parser, the dispatch, applying the effects, framing, the write). Here one
 * call does the loop's part and calls the state's ``handle`` for each request, as the Python
 * path does; anything it does not take is left to that path, in order, with nothing changed:
 *
 * - bytes that are not a complete one-frame message of at most 255 bytes (a command, a large
 *   or multi-frame message, a message cut by the read, one over the size limit) end the fast
 *   pass: they and everything after them are returned for the Python parser;
 * - effects beyond small replies to this same client (``rare`` ones, messages to another
 *   client or of several frames, log records when the broker keeps a log) are returned for
 *   the server's ``_apply``, with the bytes after their request;
 * - the replies framed so far are in ``replies`` (a bytearray) whatever happens, an exception
 *   from the state included: when ``direct``, what the kernel took of them is gone from it, and
 *   the caller queues the rest.
 *
 * ``server.BrokerServer._read_plain`` is the caller; the Python path it stands in for is
 * ``_read``, ``_handle`` and ``_apply``, and the broker's tests run both (``accel``).
 */

#include "_accel.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>


/* A broker serves from one thread, but a process may run several (embedded) brokers, and the
 * state's ``handle`` may let another thread run: one read buffer per thread. */
static _Thread_local char in[READ_CHUNK];
static PyObject *str_rare, *str_log, *str_messages;

/* Whether every message of the effects is one frame of at most 255 bytes for ``identity``:
 * 1 yes, 0 no, -1 error. */
static int
only_small_replies(PyObject *messages, PyObject *identity)
{
    Py_ssize_t count = PyList_GET_SIZE(messages);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *message = PyList_GET_ITEM(messages, i);
        if (!PyTuple_CheckExact(message) || PyTuple_GET_SIZE(message) != 2)
            return 0;
        PyObject *to = PyTuple_GET_ITEM(message, 0), *frames = PyTuple_GET_ITEM(message, 1);
        if (to != identity) {
            if (!PyBytes_CheckExact(to))
                return 0;
            int same = PyObject_RichCompareBool(to, identity, Py_EQ);
            if (same <= 0)
                return same;
        }
        if (!PyList_CheckExact(frames) || PyList_GET_SIZE(frames) != 1)
            return 0;
        PyObject *frame = PyList_GET_ITEM(frames, 0);
        if (!PyBytes_CheckExact(frame) || PyBytes_GET_SIZE(frame) > 255)
            return 0;
    }
    return 1;
}

static int
frame_replies(PyObject *messages, PyObject *replies)
{
    Py_ssize_t count = PyList_GET_SIZE(messages);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *frames = PyTuple_GET_ITEM(PyList_GET_ITEM(messages, i), 1);
        PyObject *frame = PyList_GET_ITEM(frames, 0);
        Py_ssize_t size = PyBytes_GET_SIZE(frame);
        char header[2] = {0, (char)size};
        if (bytearray_append(replies, header, 2) < 0
                || bytearray_append(replies, PyBytes_AS_STRING(frame), size) < 0)
            return -1;
    }
    return 0;
}

/* Write what the kernel takes of ``replies`` now and drop it from there. What it does not
 * take stays, an error's included: the Python path's write finds the error and closes. */
static void
write_replies(int fd, PyObject *replies)
{
    Py_ssize_t size = PyByteArray_GET_SIZE(replies);
    if (size == 0)
        return;
    Py_ssize_t sent = send(fd, PyByteArray_AS_STRING(replies), (size_t)size,
                           MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent <= 0)
        return;
    if (sent == size) {
        PyByteArray_Resize(replies, 0);
        return;
    }
    memmove(PyByteArray_AS_STRING(replies), PyByteArray_AS_STRING(replies) + sent,
            (size_t)(size - sent));
    PyByteArray_Resize(replies, size - sent);
}

PyDoc_STRVAR(serve_read_doc,
"serve_read(fd, identity, handle, max_message, logging, replies, direct)\n"
"-> (effects or None, the bytes left for the Python parser, or None at the stream's end)\n\n"
"Read once from connection ``fd`` of the client ``identity`` (plain ZMTP, between two\n"
"messages) and call ``handle(identity, head, [], now)`` for each complete one-frame\n"
"message of at most 255 bytes and ``max_message``; frame each effects' replies into\n"
"``replies`` while they are small replies to this client (and there are no log records, with\n"
"``logging``). Stop at the first message or effects it does not take: effects to apply are\n"
"returned with the bytes after their message. With ``direct``, write the replies at the end\n"
"(what the kernel does not take stays in ``replies``). None for the bytes: the stream ended or\n"
"broke (the caller closes it). BlockingIOError is not raised: nothing read, nothing done.");

static PyObject *
serve_read(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "serve_read() takes 7 arguments");
        return NULL;
    }
    int fd = PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    PyObject *identity = args[1], *handle = args[2], *replies = args[5];
    Py_ssize_t max_message = PyLong_AsSsize_t(args[3]);
    if (max_message == -1 && PyErr_Occurred())
        return NULL;
    int logging = PyObject_IsTrue(args[4]), direct = PyObject_IsTrue(args[6]);
    if (logging < 0 || direct < 0)
        return NULL;
    if (!PyByteArray_Check(replies)) {
        PyErr_SetString(PyExc_TypeError, "replies must be a bytearray");
        return NULL;
    }

    Py_ssize_t got = recv(fd, in, READ_CHUNK, MSG_DONTWAIT);
    if (got == 0 || (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
        return Py_BuildValue("(OO)", Py_None, Py_None);
    if (got < 0)
        return Py_BuildValue("(Oy#)", Py_None, "", (Py_ssize_t)0);

    const unsigned char *u = (const unsigned char *)in;
    Py_ssize_t at = 0;
    PyObject *effects = NULL;
    while (at < got) {
        if (got - at < 2 || u[at] != 0)
            break;  /* a command, a large or multi-frame message: the parser's */
        Py_ssize_t size = u[at + 1];
        if (at + 2 + size > got || size > max_message)
            break;  /* cut by the read, or to be refused as too large: the parser's */
        PyObject *head = PyBytes_FromStringAndSize(in + at + 2, size);
        PyObject *frames = head ? PyList_New(0) : NULL;
        struct timespec clock;
        clock_gettime(CLOCK_MONOTONIC, &clock);  /* time.monotonic() */
        PyObject *now = frames ? PyFloat_FromDouble(clock.tv_sec + clock.tv_nsec * 1e-9) : NULL;
        PyObject *result = NULL;
        if (now != NULL) {
            PyObject *call[4] = {identity, head, frames, now};
            result = PyObject_Vectorcall(handle, call, 4, NULL);
        }
        Py_XDECREF(head);
        Py_XDECREF(frames);
        Py_XDECREF(now);
        if (result == NULL)
            return NULL;  /* the replies framed so far are in ``replies``: the caller's */
        at += 2 + size;

        int simple = 0;
        PyObject *rare = PyObject_GetAttr(result, str_rare);
        PyObject *messages = rare ? PyObject_GetAttr(result, str_messages) : NULL;
        if (messages != NULL && !PyObject_IsTrue(rare) && PyList_CheckExact(messages)) {
            simple = only_small_replies(messages, identity);
            if (simple > 0 && logging) {
                PyObject *records = PyObject_GetAttr(result, str_log);
                simple = records == NULL ? -1 : PyObject_IsTrue(records) ? 0 : 1;
                Py_XDECREF(records);
            }
            if (simple > 0 && frame_replies(messages, replies) < 0)
                simple = -1;
        } else if (messages == NULL) {
            simple = -1;
        }
        Py_XDECREF(rare);
        Py_XDECREF(messages);
        if (simple < 0) {
            Py_DECREF(result);
            return NULL;
        }
        if (!simple) {
            effects = result;  /* for the server's ``_apply``, before what follows */
            break;
        }
        Py_DECREF(result);
    }
    if (direct && effects == NULL)
        write_replies(fd, replies);
    PyObject *rest = PyBytes_FromStringAndSize(in + at, got - at);
    if (rest == NULL) {
        Py_XDECREF(effects);
        return NULL;
    }
    PyObject *answer = PyTuple_Pack(2, effects ? effects : Py_None, rest);
    Py_XDECREF(effects);
    Py_DECREF(rest);
    return answer;
}

static PyMethodDef methods[] = {
    {"serve_read", (PyCFunction)(void (*)(void))serve_read, METH_FASTCALL, serve_read_doc},
    {NULL}
};

static struct PyModuleDef broker_pass_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "workbench._broker_pass",
    .m_doc = "The broker's fast pass over a readable connection (see broker/server.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__broker_pass(void)
{
    str_rare = PyUnicode_InternFromString("rare");
    str_log = PyUnicode_InternFromString("log");
    str_messages = PyUnicode_InternFromString("messages");
    if (str_rare == NULL || str_log == NULL || str_messages == NULL)
        return NULL;
    return PyModule_Create(&broker_pass_module);
}
