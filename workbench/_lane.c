/* The client's fast lane: one small request and its reply in one call.
 *
 * A client's usual request is one small frame out and one small frame back. In Python it
 * crosses some twenty functions (the request head, ZeroMQ's framing, the guarded send, the wait,
 * the read, the parser, the reply's header); here it is one call that builds the head and its
 * frame, sends it, waits for the reply and, when what arrived is exactly one one-frame message
 * answering this request, returns its head. Anything else leaves the work to the Python path,
 * with nothing lost: bytes read that are not the awaited reply are kept in ``unparsed`` for
 * the Python parser, the rest of a message the kernel took only in part in ``unsent``.
 *
 * The same wire bytes and the same guarantees as the Python path it stands in for (the
 * ``Dealer``'s send and receive, ``client/dealer.py``); ``tests/test_lane.py`` holds the two to
 * the same bytes and results:
 *
 * - an interrupt never cuts a message: no signal handler runs between the first byte sent and
 *   the last (none runs inside this call before the send is done);
 * - ``sent_id`` is set as the request's first byte goes out, before any handler can run, so a
 *   caller that catches an interrupt raised by the wait (or just after this call returns)
 *   knows whether to withdraw the request;
 * - the wait releases the GIL, and runs signal handlers when a signal interrupts it.
 *
 * Built as an optional extension: without a C compiler the package installs without it and
 * the client takes the Python path (``workbench.accel``).
 */

#include "_accel.h"
#include <structmember.h>

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#define PROTOCOL_VERSION 1
#define HEADER_SIZE 8            /* <BBHI: version, op, flags, request id */
#define SEPARATOR '\0'
#define ZMTP_MORE 1
#define ZMTP_LONG 2
#define MAX_REQUEST (1 << 16)    /* larger requests go the Python way (sendmsg, no copy) */

typedef struct {
    PyObject_HEAD
    int fd;
    unsigned long long sent_id;  /* the last request whose first byte went out through here */
    PyObject *unparsed;          /* bytearray: bytes read here, for the Python parser */
    PyObject *unsent;            /* bytearray: the rest of a message cut by a short send */
    char *in;                    /* READ_CHUNK bytes */
} Lane;

static int
Lane_init(Lane *self, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"fd", NULL};
    int fd;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i", names, &fd))
        return -1;
    self->fd = fd;
    self->sent_id = 0;
    Py_XSETREF(self->unparsed, PyByteArray_FromStringAndSize(NULL, 0));
    Py_XSETREF(self->unsent, PyByteArray_FromStringAndSize(NULL, 0));
    if (self->unparsed == NULL || self->unsent == NULL)
        return -1;
    if (self->in == NULL) {
        self->in = PyMem_Malloc(READ_CHUNK);
        if (self->in == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    return 0;
}

static void
Lane_dealloc(Lane *self)
{
    Py_XDECREF(self->unparsed);
    Py_XDECREF(self->unsent);
    PyMem_Free(self->in);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The request's frame (ZMTP header, then the request head: header and arguments joined by
 * SEPARATOR) written into out -> its size; 0 if it does not fit MAX_REQUEST or an argument is
 * not bytes (the Python path takes it). */
static Py_ssize_t
build_request(char *out, int op, int flags, unsigned long request_id, PyObject *args,
              PyObject *last)
{
    Py_ssize_t count = PySequence_Fast_GET_SIZE(args);
    PyObject **items = PySequence_Fast_ITEMS(args);
    Py_ssize_t body = HEADER_SIZE, i;
    for (i = 0; i < count; i++) {
        if (!PyBytes_CheckExact(items[i]))
            return 0;
        body += PyBytes_GET_SIZE(items[i]) + (i > 0);
    }
    if (last != Py_None) {
        if (!PyBytes_CheckExact(last))
            return 0;
        body += PyBytes_GET_SIZE(last) + (count > 0);
    }
    Py_ssize_t at = body < 256 ? 2 : 9;
    if (body + at > MAX_REQUEST)
        return 0;
    if (at == 2) {
        out[0] = 0;
        out[1] = (char)body;
    } else {
        out[0] = ZMTP_LONG;
        for (int k = 0; k < 8; k++)
            out[1 + k] = (char)(((uint64_t)body >> (8 * (7 - k))) & 0xff);
    }
    char *p = out + at;
    p[0] = PROTOCOL_VERSION;
    p[1] = (char)op;
    p[2] = (char)(flags & 0xff);
    p[3] = (char)((flags >> 8) & 0xff);
    for (int k = 0; k < 4; k++)
        p[4 + k] = (char)((request_id >> (8 * k)) & 0xff);
    p += HEADER_SIZE;
    for (i = 0; i < count; i++) {
        if (i > 0)
            *p++ = SEPARATOR;
        Py_ssize_t n = PyBytes_GET_SIZE(items[i]);
        memcpy(p, PyBytes_AS_STRING(items[i]), (size_t)n);
        p += n;
    }
    if (last != Py_None) {
        if (count > 0)
            *p++ = SEPARATOR;
        Py_ssize_t n = PyBytes_GET_SIZE(last);
        memcpy(p, PyBytes_AS_STRING(last), (size_t)n);
        p += n;
    }
    return at + body;
}

/* What was read: the head of the reply to request_id, if it is exactly one message of one
 * frame answering it (a new reference); else NULL without an exception. */
static PyObject *
reply_in(const char *data, Py_ssize_t n, unsigned long request_id)
{
    const unsigned char *u = (const unsigned char *)data;
    Py_ssize_t at, size;
    if (n >= 2 && u[0] == 0 && (Py_ssize_t)u[1] + 2 == n) {
        at = 2;
        size = u[1];
    } else if (n >= 9 && u[0] == ZMTP_LONG) {
        uint64_t big = 0;
        for (int k = 0; k < 8; k++)
            big = big << 8 | u[1 + k];
        if (big != (uint64_t)(n - 9))
            return NULL;
        at = 9;
        size = (Py_ssize_t)big;
    } else {
        return NULL;
    }
    if (size < HEADER_SIZE)
        return NULL;
    const unsigned char *head = u + at;
    unsigned long got = (unsigned long)head[4] | (unsigned long)head[5] << 8
                        | (unsigned long)head[6] << 16 | (unsigned long)head[7] << 24;
    if (got != request_id)
        return NULL;
    return PyBytes_FromStringAndSize(data + at, size);
}

PyDoc_STRVAR(exchange_doc,
"exchange(op, flags, request_id, args, last, wait) -> the reply's head, None or False\n\n"
"Send request ``request_id`` (``args`` a list or tuple of bytes, then ``last``, bytes or\n"
"None, joined as ``protocol.request_head`` joins them) and wait up to ``wait`` seconds for\n"
"its reply. -> the reply's head frame if what arrived is exactly that reply, one frame;\n"
"None if the request went out (``sent_id`` says so) and its reply is for the Python path to\n"
"wait for: anything read meanwhile is in ``unparsed``, the rest of a message the kernel took\n"
"in part in ``unsent``; False if nothing was sent (too large, not bytes, ``unparsed`` not\n"
"empty, or the kernel took nothing now). A signal during the wait runs its handler, whose\n"
"exception is raised; a handler that raises nothing ends the wait (None).");

enum sent { SENT_ERROR = -1, SENT_NOTHING, SENT_ALL, SENT_PART };

/* Send request (op, flags, request_id, args, last) whole, or its first bytes with the rest in
 * ``unsent``; nothing if it is not for the lane or the kernel takes nothing now. No signal
 * handler runs in here: an interrupt never lands between the first byte and the last. */
static enum sent
send_request(Lane *self, PyObject *const *args, unsigned long *request_id)
{
    int op = PyLong_AsLong(args[0]), flags = PyLong_AsLong(args[1]);
    if ((op == -1 || flags == -1) && PyErr_Occurred())
        return SENT_ERROR;
    *request_id = PyLong_AsUnsignedLongMask(args[2]) & 0xffffffffUL;
    if (PyErr_Occurred())
        return SENT_ERROR;
    if (PyByteArray_GET_SIZE(self->unsent)
            || (!PyList_CheckExact(args[3]) && !PyTuple_CheckExact(args[3])))
        return SENT_NOTHING;
    char out[MAX_REQUEST];
    Py_ssize_t size = build_request(out, op, flags, *request_id, args[3], args[4]);
    if (size == 0)
        return SENT_NOTHING;
    Py_ssize_t sent = send(self->fd, out, (size_t)size, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent <= 0)
        return SENT_NOTHING;  /* the Python path sends it, or finds the error */
    self->sent_id = *request_id;
    if (sent == size)
        return SENT_ALL;
    if (bytearray_append(self->unsent, out + sent, size - sent) < 0)
        return SENT_ERROR;  /* MemoryError: the stream is out of step; the caller closes it */
    return SENT_PART;
}

PyDoc_STRVAR(post_doc,
"post(op, flags, request_id, args, last) -> True, None or False\n\n"
"Send request ``request_id`` (as ``exchange`` does) without waiting for a reply -> True if\n"
"it went out whole; None if the kernel took its first bytes (the rest is in ``unsent``, for\n"
"the Python path to send before anything else); False if nothing was sent.");

/* What ``post`` says of a send: True, None or False (NULL: an exception is set). */
static PyObject *
answer_for(enum sent sent)
{
    switch (sent) {
    case SENT_ALL:
        Py_RETURN_TRUE;
    case SENT_PART:
        Py_RETURN_NONE;
    case SENT_NOTHING:
        Py_RETURN_FALSE;
    default:
        return NULL;
    }
}

static PyObject *
Lane_post(Lane *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "post() takes 5 arguments");
        return NULL;
    }
    unsigned long request_id;
    return answer_for(send_request(self, args, &request_id));
}

static PyObject *
Lane_exchange(Lane *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "exchange() takes 6 arguments");
        return NULL;
    }
    double wait = PyFloat_AsDouble(args[5]);
    if (wait == -1.0 && PyErr_Occurred())
        return NULL;
    if (PyByteArray_GET_SIZE(self->unparsed))
        Py_RETURN_FALSE;
    unsigned long request_id;
    enum sent sent = send_request(self, args, &request_id);
    if (sent != SENT_ALL)  /* (in part: None, as for a reply still to come) */
        return answer_for(sent);

    if (PyErr_CheckSignals() < 0)  /* a signal that came during the send */
        return NULL;
    struct pollfd ready = {self->fd, POLLIN, 0};
    int ms = wait <= 0 ? 0 : wait >= 3600.0 ? 3600000 : (int)(wait * 1000.0 + 0.999);
    int found;
    Py_BEGIN_ALLOW_THREADS
    found = poll(&ready, 1, ms);
    Py_END_ALLOW_THREADS
    if (found < 0) {
        if (errno == EINTR && PyErr_CheckSignals() < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    if (found == 0)
        Py_RETURN_NONE;
    Py_ssize_t got = recv(self->fd, self->in, READ_CHUNK, MSG_DONTWAIT);
    if (got <= 0)
        Py_RETURN_NONE;  /* the end of the stream, an error or nothing: the Python path's read
                            finds it again and says what it is */
    PyObject *head = reply_in(self->in, got, request_id);
    if (head != NULL || PyErr_Occurred())
        return head;
    if (bytearray_append(self->unparsed, self->in, got) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* The complete messages at the start of data[0:n], as lists of frames, appended to
 * ``messages`` -> how many bytes they took; -1 with an exception set. A command frame, or a
 * message cut by the end of the read, ends them. */
static Py_ssize_t
split_messages(const char *data, Py_ssize_t n, PyObject *messages)
{
    const unsigned char *u = (const unsigned char *)data;
    Py_ssize_t at = 0, pos = 0;
    while (pos < n) {  /* one message: frames from ``pos`` until one without MORE */
        Py_ssize_t scan = pos, frames = 0;
        int complete = 0;
        while (scan < n) {
            unsigned char flags = u[scan];
            Py_ssize_t size, start;
            if (flags & ~(ZMTP_MORE | ZMTP_LONG))
                return at;  /* a command (or reserved flags): the parser's */
            if (flags & ZMTP_LONG) {
                if (n - scan < 9)
                    return at;
                uint64_t big = 0;
                for (int k = 0; k < 8; k++)
                    big = big << 8 | u[scan + 1 + k];
                if (big > (uint64_t)(n - scan - 9))
                    return at;
                size = (Py_ssize_t)big;
                start = scan + 9;
            } else {
                if (n - scan < 2)
                    return at;
                size = u[scan + 1];
                start = scan + 2;
            }
            if (start + size > n)
                return at;
            scan = start + size;
            frames++;
            if (!(flags & ZMTP_MORE)) {
                complete = 1;
                break;
            }
        }
        if (!complete)
            return at;
        PyObject *message = PyList_New(frames);
        if (message == NULL)
            return -1;
        Py_ssize_t index = 0;
        while (pos < scan) {  /* the same frames again, into the list */
            Py_ssize_t size, start;
            if (u[pos] & ZMTP_LONG) {
                uint64_t big = 0;
                for (int k = 0; k < 8; k++)
                    big = big << 8 | u[pos + 1 + k];
                size = (Py_ssize_t)big;
                start = pos + 9;
            } else {
                size = u[pos + 1];
                start = pos + 2;
            }
            PyObject *frame = PyBytes_FromStringAndSize(data + start, size);
            if (frame == NULL) {
                Py_DECREF(message);
                return -1;
            }
            PyList_SET_ITEM(message, index++, frame);
            pos = start + size;
        }
        int failed = PyList_Append(messages, message);
        Py_DECREF(message);
        if (failed < 0)
            return -1;
        at = pos;
    }
    return at;
}

PyDoc_STRVAR(receive_doc,
"receive() -> the complete messages read, as lists of frames (bytes); None at the end of\n"
"the stream\n\n"
"Read once what the kernel holds (the socket is non-blocking: BlockingIOError if nothing),\n"
"for a parser between two messages. What follows the last complete message (a message cut\n"
"by the read, a command, anything after them) is kept in ``unparsed``, for the Python parser.\n"
"Nothing is read while ``unparsed`` holds bytes: they come first (an empty list).");

static PyObject *
Lane_receive(Lane *self, PyObject *unused)
{
    PyObject *messages = PyList_New(0);
    if (messages == NULL || PyByteArray_GET_SIZE(self->unparsed))
        return messages;
    Py_ssize_t got = recv(self->fd, self->in, READ_CHUNK, MSG_DONTWAIT);
    if (got <= 0) {
        Py_DECREF(messages);
        if (got == 0)
            Py_RETURN_NONE;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_ssize_t taken = split_messages(self->in, got, messages);
    if (taken < 0
            || (taken < got && bytearray_append(self->unparsed, self->in + taken,
                                                got - taken) < 0)) {
        Py_DECREF(messages);  /* MemoryError: the stream is out of step; the caller closes it */
        return NULL;
    }
    return messages;
}

static PyMethodDef Lane_methods[] = {
    {"exchange", (PyCFunction)(void (*)(void))Lane_exchange, METH_FASTCALL, exchange_doc},
    {"post", (PyCFunction)(void (*)(void))Lane_post, METH_FASTCALL, post_doc},
    {"receive", (PyCFunction)Lane_receive, METH_NOARGS, receive_doc},
    {NULL}
};

static PyMemberDef Lane_members[] = {
    {"fd", T_INT, offsetof(Lane, fd), READONLY, "the connected socket's descriptor"},
    {"sent_id", T_ULONGLONG, offsetof(Lane, sent_id), READONLY,
     "the last request whose first byte went out through this lane"},
    {"unparsed", T_OBJECT_EX, offsetof(Lane, unparsed), READONLY,
     "bytes read here that are not the awaited reply, for the Python parser"},
    {"unsent", T_OBJECT_EX, offsetof(Lane, unsent), READONLY,
     "the rest of a message whose first bytes went out, still to send"},
    {NULL}
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "workbench._lane.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = PyDoc_STR("Lane(fd): the fast lane of one connected, non-blocking DEALER "
                        "socket past its handshake (NULL mechanism)."),
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lane_init,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_methods = Lane_methods,
    .tp_members = Lane_members,
};

static struct PyModuleDef lane_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "workbench._lane",
    .m_doc = "The client's fast lane for small requests (see workbench/client/lane.py).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__lane(void)
{
    if (PyType_Ready(&LaneType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&lane_module);
    if (module == NULL)
        return NULL;
    Py_INCREF(&LaneType);
    if (PyModule_AddObject(module, "Lane", (PyObject *)&LaneType) < 0) {
        Py_DECREF(&LaneType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
