/*
 * imqd.qdisc._htbfast -- HTB.send_now's common case in C (an optional accelerator).
 *
 * HTB.send_now() lets a packet straight through a leaf when nothing is backlogged and the leaf may send
 * at once, and charges it up the tree exactly as enqueue + dequeue would.  Under load that is every
 * packet of a class below its rate, and in Python it costs more than receiving the packet does.  A Lane
 * does the same for one leaf: the mode checks along the leaf's parent chain, the DRR deficit and pointer
 * step, and htb_charge_class on the token store -- the same operations on the same IEEE doubles, in the
 * same order, so the result is bit for bit the one the Python reference (imqd/qdisc/htb.py, HTB.send_now
 * and HTB._charge) computes.  tests/unit/test_htb_fast.py holds the two to that.
 *
 * Anything unusual is left to Python: send() returns -1 (and changes nothing) when a class on the path has
 * a fresh token slot or the shared store's lock is busy.  Pure: no I/O, no clock; `now` is an argument.
 *
 * The token values are read through the buffer protocol on each call (an array('d') or a memoryview of
 * shared memory): the lane never keeps an export, so the store may still grow or be closed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#define MAX_CHAIN 8    /* TC_HTB_MAXDEPTH */
#define MBUFFER 60.0   /* htb.MBUFFER */

typedef struct {
    Py_ssize_t base;   /* index of the class's tokens in the store; ctokens, t_c follow */
    long level;
    double buffer, cbuffer, spb, cspb;
    PyObject *cls;     /* the Python _Class: its counters (bytes, packets, lends, borrows) */
} ChainEntry;

/* Where _Class keeps a counter: the byte offset of its __slots__ entry, read from the slot's member
 * descriptor once (what the descriptor itself does on every access), so the per-packet update is a pointer
 * access instead of two attribute lookups. */
enum { C_BYTES, C_PACKETS, C_LENDS, C_BORROWS, N_COUNTERS };

typedef struct {
    PyObject_HEAD
    PyObject *values;     /* the token store's values (buffer of doubles) */
    PyObject *deficit;    /* the leaf's deficit list (one int per level) */
    PyObject *ptr;        /* HTB's DRR pointer list (one int per level*8+prio) */
    PyObject *acquire;    /* the shared store's lock's bound acquire and release (looked up once), or NULL */
    PyObject *release;
    PyObject *active;     /* HTB's list of backlogged leaves: the fast path is only for an empty tree */
    Py_ssize_t offsets[N_COUNTERS];
    long prio, quantum, idx, passthrough;
    Py_ssize_t min_len;   /* bytes the store must have for every slot on the path (checked on each call) */
    int n;
    ChainEntry chain[MAX_CHAIN];
} Lane;

static PyObject *s_acquire, *s_release;
static const char *counter_names[N_COUNTERS] = {"bytes", "packets", "lends", "borrows"};
static double token_floor;  /* htb._TOKEN_FLOOR, computed as Python does: 1e-9 - MBUFFER */

/* The counter's slot offset in instances of `type` (a __slots__ member holding an object). */
static Py_ssize_t
counter_offset(PyTypeObject *type, const char *name)
{
    PyObject *descr = PyObject_GetAttrString((PyObject *)type, name);
    Py_ssize_t off = -1;
    if (descr == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return -1;
        PyErr_Clear();
    }
    else if (Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyMemberDef *m = ((PyMemberDescrObject *)descr)->d_member;
        if (m->type == T_OBJECT_EX && !(m->flags & READONLY))
            off = m->offset;
    }
    Py_XDECREF(descr);
    if (off < 0)
        PyErr_Format(PyExc_TypeError, "Lane: %s.%s must be a writable __slots__ member", type->tp_name, name);
    return off;
}

/* obj.<counter at offset> += delta, for an int counter (what `c.bytes += size` does). */
static int
add_counter(PyObject *obj, Py_ssize_t offset, long delta)
{
    PyObject **slot = (PyObject **)((char *)obj + offset);
    PyObject *old = *slot;
    if (old == NULL) {
        PyErr_SetString(PyExc_AttributeError, "Lane: a class counter is unset");
        return -1;
    }
    PyObject *inc = PyLong_FromLong(delta);
    if (inc == NULL)
        return -1;
    PyObject *sum = PyNumber_Add(old, inc);
    Py_DECREF(inc);
    if (sum == NULL)
        return -1;
    *slot = sum;
    Py_DECREF(old);
    return 0;
}

static int
set_list_long(PyObject *list, Py_ssize_t i, long v)
{
    PyObject *o = PyLong_FromLong(v);
    if (o == NULL)
        return -1;
    return PyList_SetItem(list, i, o);  /* steals o */
}

static int
Lane_traverse(Lane *self, visitproc visit, void *arg)
{
    Py_VISIT(self->values);
    Py_VISIT(self->deficit);
    Py_VISIT(self->ptr);
    Py_VISIT(self->acquire);
    Py_VISIT(self->release);
    Py_VISIT(self->active);
    for (int i = 0; i < self->n; i++)
        Py_VISIT(self->chain[i].cls);
    return 0;
}

static int
Lane_clear(Lane *self)
{
    Py_CLEAR(self->values);
    Py_CLEAR(self->deficit);
    Py_CLEAR(self->ptr);
    Py_CLEAR(self->acquire);
    Py_CLEAR(self->release);
    Py_CLEAR(self->active);
    for (int i = 0; i < self->n; i++)
        Py_CLEAR(self->chain[i].cls);
    self->n = 0;
    return 0;
}

static void
Lane_dealloc(Lane *self)
{
    PyObject_GC_UnTrack(self);
    Lane_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Lane(values, chain, classes, prio, quantum, idx, passthrough, deficit, ptr, lock, active)
 *   chain: tuple of (base, level, buffer, cbuffer, spb, cspb), leaf first; classes: the matching _Class objects */
static int
Lane_init(Lane *self, PyObject *args, PyObject *kwds)
{
    (void)kwds;  /* positional only */
    if (self->values != NULL) {  /* send() relies on its fields staying as they are */
        PyErr_SetString(PyExc_TypeError, "Lane: already initialised");
        return -1;
    }
    PyObject *values, *chain, *classes, *deficit, *ptr, *lock, *active;
    long prio, quantum, idx, passthrough;
    if (!PyArg_ParseTuple(args, "OO!O!llllO!O!OO!:Lane", &values, &PyTuple_Type, &chain, &PyTuple_Type, &classes,
                          &prio, &quantum, &idx, &passthrough, &PyList_Type, &deficit, &PyList_Type, &ptr, &lock,
                          &PyList_Type, &active))
        return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(chain);
    if (n < 1 || n > MAX_CHAIN || PyTuple_GET_SIZE(classes) != n) {
        PyErr_Format(PyExc_ValueError, "Lane: chain must hold 1..%d classes, with one class object each", MAX_CHAIN);
        return -1;
    }
    if (prio < 0 || prio > 7 || idx < 0 || quantum < 1) {
        PyErr_SetString(PyExc_ValueError, "Lane: prio must be 0..7, idx >= 0 and quantum >= 1");
        return -1;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(values, &view, PyBUF_FORMAT | PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    int ok = view.itemsize == sizeof(double) && view.format != NULL && strcmp(view.format, "d") == 0;
    Py_ssize_t nvals = view.len / (Py_ssize_t)sizeof(double);
    PyBuffer_Release(&view);
    if (!ok) {
        PyErr_SetString(PyExc_TypeError, "Lane: values must be a writable buffer of doubles ('d')");
        return -1;
    }
    Py_ssize_t offsets[N_COUNTERS];
    for (Py_ssize_t i = 0; i < n; i++) {  /* every class of the path must be of the same (slotted) type */
        PyTypeObject *t = Py_TYPE(PyTuple_GET_ITEM(classes, i));
        if (t != Py_TYPE(PyTuple_GET_ITEM(classes, 0))) {
            PyErr_SetString(PyExc_TypeError, "Lane: the class objects of a path must all be of one type");
            return -1;
        }
    }
    for (int k = 0; k < N_COUNTERS; k++)
        if ((offsets[k] = counter_offset(Py_TYPE(PyTuple_GET_ITEM(classes, 0)), counter_names[k])) < 0)
            return -1;
    Lane_clear(self);
    self->min_len = 0;
    memcpy(self->offsets, offsets, sizeof offsets);
    for (Py_ssize_t i = 0; i < n; i++) {
        ChainEntry *e = &self->chain[i];
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(chain, i), "nldddd:Lane chain entry", &e->base, &e->level,
                              &e->buffer, &e->cbuffer, &e->spb, &e->cspb))
            return -1;
        if (e->base < 0 || e->base > nvals - 3 || e->level < 0 || e->level >= MAX_CHAIN) {
            PyErr_SetString(PyExc_ValueError, "Lane: a chain entry's slot is outside the store, or its level is not 0..7");
            return -1;
        }
        e->cls = Py_NewRef(PyTuple_GET_ITEM(classes, i));
        self->n = (int)i + 1;
        if ((e->base + 3) * (Py_ssize_t)sizeof(double) > self->min_len)
            self->min_len = (e->base + 3) * (Py_ssize_t)sizeof(double);
    }
    if (PyList_GET_SIZE(deficit) < MAX_CHAIN || PyList_GET_SIZE(ptr) < MAX_CHAIN * 8) {
        PyErr_SetString(PyExc_ValueError, "Lane: deficit needs 8 entries and ptr 64");
        return -1;
    }
    self->values = Py_NewRef(values);
    self->deficit = Py_NewRef(deficit);
    self->ptr = Py_NewRef(ptr);
    if (lock != Py_None) {
        PyObject *acquire = PyObject_GetAttr(lock, s_acquire);
        PyObject *release = acquire == NULL ? NULL : PyObject_GetAttr(lock, s_release);
        if (release == NULL) {
            Py_XDECREF(acquire);
            Lane_clear(self);
            return -1;
        }
        self->acquire = acquire;
        self->release = release;
    }
    self->active = Py_NewRef(active);
    self->prio = prio;
    self->quantum = quantum;
    self->idx = idx;
    self->passthrough = passthrough;
    return 0;
}

/* The DRR step and htb_charge_class, as HTB._charge (the caller holds the lock if there is one). */
static int
charge(Lane *self, double *vals, long key, long size, double now)
{
    long level = key >> 3;
    if (level >= PyList_GET_SIZE(self->deficit) || key >= PyList_GET_SIZE(self->ptr)) {
        PyErr_SetString(PyExc_RuntimeError, "Lane: the deficit or pointer list shrank (HTB changes them in place only)");
        return -1;
    }
    PyObject *dobj = PyList_GET_ITEM(self->deficit, level);
    long d = PyLong_AsLong(dobj);
    if (d == -1 && PyErr_Occurred())
        return -1;
    d -= size;
    long p;
    if (d < 0) {
        d += self->quantum;
        p = self->idx + 1;
    }
    else
        p = self->idx;
    if (set_list_long(self->ptr, key, p) < 0 || set_list_long(self->deficit, level, d) < 0)
        return -1;
    double fsize = (double)size;
    for (int i = 0; i < self->n; i++) {
        ChainEntry *c = &self->chain[i];
        double *v = vals + c->base;
        double tc = v[2], diff = now - tc, new_tc, toks;
        if (diff >= 0.0) {
            if (diff > MBUFFER)
                diff = MBUFFER;
            new_tc = now;
        }
        else if (tc == tc) {  /* another worker charged with a later clock reading */
            diff = 0.0;
            new_tc = tc;
        }
        else {  /* fresh slot */
            v[0] = c->buffer;
            v[1] = c->cbuffer;
            diff = 0.0;
            new_tc = now;
        }
        toks = v[0] + diff;
        if (toks > c->buffer)
            toks = c->buffer;
        if (c->level >= level) {
            if (c->level == level && add_counter(c->cls, self->offsets[C_LENDS], 1) < 0)
                return -1;
            toks -= fsize * c->spb;
            if (toks < token_floor)
                toks = token_floor;
        }
        else if (add_counter(c->cls, self->offsets[C_BORROWS], 1) < 0)
            return -1;
        v[0] = toks;
        toks = v[1] + diff;
        if (toks > c->cbuffer)
            toks = c->cbuffer;
        toks -= fsize * c->cspb;
        if (toks < token_floor)
            toks = token_floor;
        v[1] = toks;
        v[2] = new_tc;
        if (add_counter(c->cls, self->offsets[C_BYTES], size) < 0 || add_counter(c->cls, self->offsets[C_PACKETS], 1) < 0)
            return -1;
    }
    return 0;
}

/* send(size, now) -> 1 sent (charged), 0 must wait or be queued behind others (nothing changed), -1 let Python
 * decide (nothing changed) */
static PyObject *
Lane_send(Lane *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "send(size, now) takes 2 arguments");
        return NULL;
    }
    int overflow = 0;
    long size = PyLong_Check(args[0]) ? PyLong_AsLongAndOverflow(args[0], &overflow) : -1;
    if (overflow > 0)  /* above any FIFO's passthrough: it must queue, as send_now says */
        return PyLong_FromLong(0);
    if (overflow < 0 || size < 0)  /* not a size C holds (or none at all): Python decides */
        return PyLong_FromLong(-1);
    double now = PyFloat_AsDouble(args[1]);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    if (self->values == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Lane: not initialised");
        return NULL;
    }
    if (size > self->passthrough || PyList_GET_SIZE(self->active) > 0)
        return PyLong_FromLong(0);
    Py_buffer view;
    if (PyObject_GetBuffer(self->values, &view, PyBUF_WRITABLE) < 0)
        return NULL;
    if (view.len < self->min_len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_RuntimeError, "Lane: the token store is smaller than the slots on this path");
        return NULL;
    }
    double *vals = (double *)view.buf;
    long result = 0, key = -1;
    for (int i = 0; i < self->n; i++) {  /* as HTB._select, for the only leaf that would be backlogged */
        ChainEntry *c = &self->chain[i];
        double *v = vals + c->base;
        double tc = v[2];
        if (now < tc - v[1])
            goto done;  /* CANT_SEND: the packet must wait */
        if (now >= tc - v[0]) {
            key = (c->level << 3) | self->prio;
            break;
        }
        if (tc != tc) {  /* a fresh slot: Python fills it */
            result = -1;
            goto done;
        }
    }
    if (key < 0)
        goto done;
    if (self->acquire != NULL) {
        PyObject *got = PyObject_CallOneArg(self->acquire, Py_False);
        if (got == NULL) {
            PyBuffer_Release(&view);
            return NULL;
        }
        int held = PyObject_IsTrue(got);
        Py_DECREF(got);
        if (held <= 0) {  /* busy (Python waits for it, with a timeout) or an error */
            PyBuffer_Release(&view);
            if (held < 0)
                return NULL;
            return PyLong_FromLong(-1);
        }
    }
    int rc = charge(self, vals, key, size, now);
    if (self->release != NULL) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);  /* keep charge()'s error, if any, across the release */
        PyObject *r = PyObject_CallNoArgs(self->release);
        Py_XDECREF(r);
        if (type != NULL) {
            PyErr_Clear();
            PyErr_Restore(type, value, tb);
        }
        else if (r == NULL)
            rc = -1;
    }
    PyBuffer_Release(&view);
    if (rc < 0)
        return NULL;
    return PyLong_FromLong(1);
done:
    PyBuffer_Release(&view);
    return PyLong_FromLong(result);
}

static PyMethodDef Lane_methods[] = {
    {"send", (PyCFunction)(void (*)(void))Lane_send, METH_FASTCALL,
     "send(size, now) -> 1 if the packet was let through and charged, 0 if it must wait, -1 if Python must decide "
     "(a fresh token slot on the path, or the shared lock busy); 0 and -1 change nothing."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "imqd.qdisc._htbfast.Lane",
    .tp_doc = PyDoc_STR("HTB.send_now for one leaf, in C (see imqd/qdisc/_htbfast.c)."),
    .tp_basicsize = sizeof(Lane),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lane_init,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_traverse = (traverseproc)Lane_traverse,
    .tp_clear = (inquiry)Lane_clear,
    .tp_methods = Lane_methods,
};

static struct PyModuleDef htbfast_module = {
    PyModuleDef_HEAD_INIT, "_htbfast", "HTB.send_now's common case in C (optional accelerator).", -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__htbfast(void)
{
    token_floor = 1e-9 - MBUFFER;
    if (PyType_Ready(&LaneType) < 0)
        return NULL;
    if (!(s_acquire = PyUnicode_InternFromString("acquire")) ||
        !(s_release = PyUnicode_InternFromString("release")))
        return NULL;
    PyObject *m = PyModule_Create(&htbfast_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Lane", (PyObject *)&LaneType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
