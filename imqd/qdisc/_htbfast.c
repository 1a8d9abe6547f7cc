/*
 * imqd.qdisc._htbfast -- HTB.send_now's common case in C (an optional accelerator).
 *
 * HTB.send_now() lets a packet straight through an empty leaf that may send at once while no backlogged
 * leaf can be sent (HTB's gate: none is backlogged, or the scheduler's next event lies ahead), and charges it
 * up the tree exactly as enqueue + dequeue would.  Under load that is every packet of a class below its rate
 * -- a subscriber under its plan while others wait for tokens -- and in Python it costs more than receiving
 * the packet does.  A Lane
 * does the same for one leaf: the mode checks along the leaf's parent chain, the DRR deficit and pointer
 * step, and htb_charge_class on the token store -- the same operations on the same IEEE doubles, in the
 * same order, so the result is bit for bit the one the Python reference (imqd/qdisc/htb.py, HTB.send_now
 * and HTB._charge) computes.  tests/unit/test_htb_fast.py holds the two to that.
 *
 * Anything unusual is left to Python: send() returns -1 (and changes nothing) when a class on the path has
 * a fresh token slot or the shared store's lock is busy.  Pure: no I/O, no clock; `now` is an argument.
 *
 * The token values and the class counters (imqd/qdisc/counters.py: int64 rows) are read through the buffer
 * protocol on each call (an array or a memoryview of shared memory): the lane never keeps an export, so a
 * store may still grow or be closed.
 *
 * What all lanes of a tree share -- those two buffers, the DRR pointer list, the lock and HTB's gate -- is one
 * Shared object, not a copy per lane: with 10,000 subscriber leaves a lane is most of a class's memory.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_CHAIN 8    /* TC_HTB_MAXDEPTH */
#define MBUFFER 60.0   /* htb.MBUFFER */

/* Where a class's counters are in its row of the counters buffer (imqd/qdisc/counters.py). */
enum { C_BYTES, C_PACKETS, C_DROPS, C_BORROWS, C_LENDS };

typedef struct {
    Py_ssize_t base;   /* index of the class's tokens in the store; ctokens, t_c follow */
    Py_ssize_t cbase;  /* index of the class's counter row in the counters buffer */
    long level;
    double buffer, cbuffer, spb, cspb;
} ChainEntry;

/* What every lane of one tree uses: Shared(values, counters, ptr, lock); HTB's gate is its two doubles, read
 * and written from Python as shared[0] (open until) and shared[1] (bypasses) -- see Lane_send. */
typedef struct {
    PyObject_HEAD
    double gate[2];       /* open_until, bypasses */
    PyObject *values;     /* the token store's values (buffer of doubles) */
    PyObject *counters;   /* the class counters (buffer of int64) */
    PyObject *ptr;        /* HTB's DRR pointer list (one int per level*8+prio) */
    PyObject *acquire;    /* the shared store's lock's bound acquire and release (looked up once), or NULL */
    PyObject *release;
} Shared;

typedef struct {
    PyObject_VAR_HEAD
    Shared *shared;       /* the tree's buffers, pointer list, lock and gate */
    PyObject *deficit;    /* the leaf's deficit list (one int per level) */
    long prio, quantum, idx, passthrough;
    Py_ssize_t min_len;   /* bytes the token store must have for every slot on the path (checked on each call) */
    Py_ssize_t min_clen;  /* the same for the counters buffer */
    int n;
    ChainEntry chain[1];  /* n entries, leaf first (allocated with the object: a lane costs what its path needs) */
} Lane;

static PyObject *s_acquire, *s_release;
static double token_floor;  /* htb.TOKEN_FLOOR, computed as Python does: 1e-9 - MBUFFER */

static int
set_list_long(PyObject *list, Py_ssize_t i, long v)
{
    PyObject *o = PyLong_FromLong(v);
    if (o == NULL)
        return -1;
    return PyList_SetItem(list, i, o);  /* steals o */
}

static PyTypeObject SharedType;

static int
Lane_traverse(Lane *self, visitproc visit, void *arg)
{
    Py_VISIT(self->shared);
    Py_VISIT(self->deficit);
    return 0;
}

static int
Lane_clear(Lane *self)
{
    Py_CLEAR(self->shared);
    Py_CLEAR(self->deficit);
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

/* The object is as long as its chain: the chain tuple is the second argument. */
static PyObject *
Lane_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)kwds;
    Py_ssize_t n = 1;
    if (PyTuple_Check(args) && PyTuple_GET_SIZE(args) >= 2 && PyTuple_Check(PyTuple_GET_ITEM(args, 1)))
        n = PyTuple_GET_SIZE(PyTuple_GET_ITEM(args, 1));
    if (n < 1 || n > MAX_CHAIN) {
        PyErr_Format(PyExc_ValueError, "Lane: chain must hold 1..%d classes", MAX_CHAIN);
        return NULL;
    }
    return type->tp_alloc(type, n);
}

/* Whether `obj` exports a writable C-contiguous buffer of 8-byte items in one of `formats`; its length in items. */
static int
check_buffer(PyObject *obj, const char *formats, const char *what, Py_ssize_t *nitems)
{
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_FORMAT | PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    int ok = view.itemsize == 8 && view.format != NULL && strlen(view.format) == 1 && strchr(formats, view.format[0]);
    *nitems = view.len / 8;
    PyBuffer_Release(&view);
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "Lane: %s must be a writable buffer of 8-byte '%s' items", what, formats);
        return -1;
    }
    return 0;
}

/* Shared's fields from (values, counters, ptr, lock): at creation and by bind(); the gate is kept. */
static int
Shared_set(Shared *self, PyObject *args, const char *fmt)
{
    PyObject *values, *counters, *ptr, *lock;
    if (!PyArg_ParseTuple(args, fmt, &values, &counters, &PyList_Type, &ptr, &lock))
        return -1;
    Py_ssize_t nvals, ncounters;
    if (check_buffer(values, "d", "values", &nvals) < 0 || check_buffer(counters, "ql", "counters", &ncounters) < 0)
        return -1;
    if (PyList_GET_SIZE(ptr) < MAX_CHAIN * 8) {
        PyErr_SetString(PyExc_ValueError, "Shared: ptr needs 64 entries");
        return -1;
    }
    PyObject *acquire = NULL, *release = NULL;
    if (lock != Py_None) {
        acquire = PyObject_GetAttr(lock, s_acquire);
        release = acquire == NULL ? NULL : PyObject_GetAttr(lock, s_release);
        if (release == NULL) {
            Py_XDECREF(acquire);
            return -1;
        }
    }
    Py_XSETREF(self->values, Py_NewRef(values));
    Py_XSETREF(self->counters, Py_NewRef(counters));
    Py_XSETREF(self->ptr, Py_NewRef(ptr));
    Py_XSETREF(self->acquire, acquire);
    Py_XSETREF(self->release, release);
    return 0;
}

static int
Shared_init(Shared *self, PyObject *args, PyObject *kwds)
{
    (void)kwds;
    if (self->values != NULL) {
        PyErr_SetString(PyExc_TypeError, "Shared: already initialised (use bind())");
        return -1;
    }
    if (Shared_set(self, args, "OOO!O:Shared") < 0)
        return -1;
    self->gate[0] = Py_HUGE_VAL;  /* nothing backlogged */
    self->gate[1] = 0.0;
    return 0;
}

static PyObject *
Shared_bind(Shared *self, PyObject *args)
{
    if (Shared_set(self, args, "OOO!O:bind") < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int
Shared_traverse(Shared *self, visitproc visit, void *arg)
{
    Py_VISIT(self->values);
    Py_VISIT(self->counters);
    Py_VISIT(self->ptr);
    Py_VISIT(self->acquire);
    Py_VISIT(self->release);
    return 0;
}

static int
Shared_clear(Shared *self)
{
    Py_CLEAR(self->values);
    Py_CLEAR(self->counters);
    Py_CLEAR(self->ptr);
    Py_CLEAR(self->acquire);
    Py_CLEAR(self->release);
    return 0;
}

static void
Shared_dealloc(Shared *self)
{
    PyObject_GC_UnTrack(self);
    Shared_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t
Shared_length(PyObject *self)
{
    (void)self;
    return 2;
}

static PyObject *
Shared_item(Shared *self, Py_ssize_t i)
{
    if (i < 0 || i > 1) {
        PyErr_SetString(PyExc_IndexError, "Shared: the gate has 2 values (open until, bypasses)");
        return NULL;
    }
    return PyFloat_FromDouble(self->gate[i]);
}

static int
Shared_ass_item(Shared *self, Py_ssize_t i, PyObject *v)
{
    if (i < 0 || i > 1) {
        PyErr_SetString(PyExc_IndexError, "Shared: the gate has 2 values (open until, bypasses)");
        return -1;
    }
    if (v == NULL) {
        PyErr_SetString(PyExc_TypeError, "Shared: gate values cannot be deleted");
        return -1;
    }
    double d = PyFloat_AsDouble(v);
    if (d == -1.0 && PyErr_Occurred())
        return -1;
    self->gate[i] = d;
    return 0;
}

/* Lane(shared, chain, prio, quantum, idx, passthrough, deficit)
 *   chain: tuple of (base, level, buffer, cbuffer, spb, cspb, cbase), leaf first */
static int
Lane_init(Lane *self, PyObject *args, PyObject *kwds)
{
    (void)kwds;  /* positional only */
    if (self->shared != NULL) {  /* send() relies on its fields staying as they are */
        PyErr_SetString(PyExc_TypeError, "Lane: already initialised");
        return -1;
    }
    PyObject *shared, *chain, *deficit;
    long prio, quantum, idx, passthrough;
    if (!PyArg_ParseTuple(args, "O!O!llllO!:Lane", &SharedType, &shared, &PyTuple_Type, &chain, &prio, &quantum,
                          &idx, &passthrough, &PyList_Type, &deficit))
        return -1;
    Shared *sh = (Shared *)shared;
    if (sh->values == NULL) {
        PyErr_SetString(PyExc_ValueError, "Lane: the Shared object is not initialised");
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(chain);
    if (n < 1 || n > Py_SIZE(self)) {
        PyErr_Format(PyExc_ValueError, "Lane: chain must hold 1..%d classes", (int)Py_SIZE(self));
        return -1;
    }
    if (prio < 0 || prio > 7 || idx < 0 || quantum < 1) {
        PyErr_SetString(PyExc_ValueError, "Lane: prio must be 0..7, idx >= 0 and quantum >= 1");
        return -1;
    }
    Py_ssize_t nvals, ncounters;
    if (check_buffer(sh->values, "d", "values", &nvals) < 0 || check_buffer(sh->counters, "ql", "counters", &ncounters) < 0)
        return -1;
    Lane_clear(self);
    self->min_len = self->min_clen = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        ChainEntry *e = &self->chain[i];
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(chain, i), "nlddddn:Lane chain entry", &e->base, &e->level,
                              &e->buffer, &e->cbuffer, &e->spb, &e->cspb, &e->cbase))
            return -1;
        if (e->base < 0 || e->base > nvals - 3 || e->level < 0 || e->level >= MAX_CHAIN || e->cbase < 0
            || e->cbase > ncounters - (C_LENDS + 1)) {
            PyErr_SetString(PyExc_ValueError,
                            "Lane: a chain entry's slot or counter row is outside its buffer, or its level is not 0..7");
            return -1;
        }
        self->n = (int)i + 1;
        if ((e->base + 3) * (Py_ssize_t)sizeof(double) > self->min_len)
            self->min_len = (e->base + 3) * (Py_ssize_t)sizeof(double);
        if ((e->cbase + C_LENDS + 1) * 8 > self->min_clen)
            self->min_clen = (e->cbase + C_LENDS + 1) * 8;
    }
    if (PyList_GET_SIZE(deficit) < MAX_CHAIN) {
        PyErr_SetString(PyExc_ValueError, "Lane: deficit needs 8 entries");
        return -1;
    }
    self->shared = (Shared *)Py_NewRef(shared);
    self->deficit = Py_NewRef(deficit);
    self->prio = prio;
    self->quantum = quantum;
    self->idx = idx;
    self->passthrough = passthrough;
    return 0;
}

/* Release the shared store's lock after a charge that returned rc; keeps charge()'s error, if any, across the
 * release; -1 if either failed. */
static int
release_lock(Shared *sh, int rc)
{
    if (sh->release == NULL)
        return rc;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *r = PyObject_CallNoArgs(sh->release);
    Py_XDECREF(r);
    if (type != NULL) {
        PyErr_Clear();
        PyErr_Restore(type, value, tb);
    }
    else if (r == NULL)
        rc = -1;
    return rc;
}

/* The DRR step and htb_charge_class, as HTB._charge (the caller holds the lock if there is one). */
static int
charge(Lane *self, double *vals, int64_t *counts, long key, long size, double now)
{
    long level = key >> 3;
    PyObject *ptr = self->shared->ptr;
    if (level >= PyList_GET_SIZE(self->deficit) || key >= PyList_GET_SIZE(ptr)) {
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
    if (set_list_long(ptr, key, p) < 0 || set_list_long(self->deficit, level, d) < 0)
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
        int64_t *cnt = counts + c->cbase;
        if (c->level >= level) {
            if (c->level == level)
                cnt[C_LENDS] += 1;
            toks -= fsize * c->spb;
            if (toks < token_floor)
                toks = token_floor;
        }
        else
            cnt[C_BORROWS] += 1;
        v[0] = toks;
        toks = v[1] + diff;
        if (toks > c->cbuffer)
            toks = c->cbuffer;
        toks -= fsize * c->cspb;
        if (toks < token_floor)
            toks = token_floor;
        v[1] = toks;
        v[2] = new_tc;
        cnt[C_BYTES] += size;
        cnt[C_PACKETS] += 1;
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
    Shared *sh = self->shared;
    if (sh == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Lane: not initialised");
        return NULL;
    }
    /* The gate: while some leaf is backlogged, a packet may only skip the queue while none of them can be sent
     * (HTB keeps open_until = the scheduler's next event, a lower bound; -inf when unknown, +inf when idle):
     * enqueue + dequeue would then release this packet first too.  bypasses counts the charges made here. */
    if (size > self->passthrough || !(now < sh->gate[0]))
        return PyLong_FromLong(0);
    Py_buffer view, cview;
    if (PyObject_GetBuffer(sh->values, &view, PyBUF_WRITABLE) < 0)
        return NULL;
    if (view.len < self->min_len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_RuntimeError, "Lane: the token store is smaller than the slots on this path");
        return NULL;
    }
    if (PyObject_GetBuffer(sh->counters, &cview, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    if (cview.len < self->min_clen) {
        PyBuffer_Release(&cview);
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_RuntimeError, "Lane: the counters buffer is smaller than the rows on this path");
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
    if (sh->acquire != NULL) {
        PyObject *got = PyObject_CallOneArg(sh->acquire, Py_False);
        if (got == NULL) {
            PyBuffer_Release(&cview);
            PyBuffer_Release(&view);
            return NULL;
        }
        int held = PyObject_IsTrue(got);
        Py_DECREF(got);
        if (held <= 0) {  /* busy (Python waits for it, with a timeout) or an error */
            PyBuffer_Release(&cview);
            PyBuffer_Release(&view);
            if (held < 0)
                return NULL;
            return PyLong_FromLong(-1);
        }
    }
    int rc = charge(self, vals, (int64_t *)cview.buf, key, size, now);
    rc = release_lock(sh, rc);
    PyBuffer_Release(&cview);
    PyBuffer_Release(&view);
    if (rc < 0)
        return NULL;
    sh->gate[1] += 1.0;
    return PyLong_FromLong(1);
done:
    PyBuffer_Release(&cview);
    PyBuffer_Release(&view);
    return PyLong_FromLong(result);
}

/* charge(key, size, now) -> 1 charged, -1 let Python charge (the shared lock is busy: nothing changed).
 *
 * HTB.dequeue's charge for this lane's leaf at `key` (level << 3 | prio): the same DRR step and
 * htb_charge_class as HTB._charge, in C, so the shared lock is held for the token arithmetic only (a charge in
 * Python holds it ~10x longer, and a worker preempted while holding it stalls the other). */
static PyObject *
Lane_charge(Lane *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "charge(key, size, now) takes 3 arguments");
        return NULL;
    }
    long key = PyLong_AsLong(args[0]);
    if (key == -1 && PyErr_Occurred())
        return NULL;
    int overflow = 0;
    long size = PyLong_Check(args[1]) ? PyLong_AsLongAndOverflow(args[1], &overflow) : -1;
    if (overflow || size < 0)  /* not a size C holds: Python charges it */
        return PyLong_FromLong(-1);
    double now = PyFloat_AsDouble(args[2]);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    Shared *sh = self->shared;
    if (sh == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Lane: not initialised");
        return NULL;
    }
    if (key < 0 || key >= MAX_CHAIN * 8) {
        PyErr_SetString(PyExc_ValueError, "charge: key must be 0..63");
        return NULL;
    }
    Py_buffer view, cview;
    if (PyObject_GetBuffer(sh->values, &view, PyBUF_WRITABLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(sh->counters, &cview, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    if (view.len < self->min_len || cview.len < self->min_clen) {
        PyBuffer_Release(&cview);
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_RuntimeError, "Lane: the token store or counters are smaller than this path needs");
        return NULL;
    }
    if (sh->acquire != NULL) {
        PyObject *got = PyObject_CallOneArg(sh->acquire, Py_False);
        int held = got == NULL ? -1 : PyObject_IsTrue(got);
        Py_XDECREF(got);
        if (held <= 0) {  /* busy: Python waits for it (with a timeout, counted), or an error */
            PyBuffer_Release(&cview);
            PyBuffer_Release(&view);
            return held < 0 ? NULL : PyLong_FromLong(-1);
        }
    }
    int rc = charge(self, (double *)view.buf, (int64_t *)cview.buf, key, size, now);
    rc = release_lock(sh, rc);
    PyBuffer_Release(&cview);
    PyBuffer_Release(&view);
    if (rc < 0)
        return NULL;
    return PyLong_FromLong(1);
}

static PyMethodDef Lane_methods[] = {
    {"send", (PyCFunction)(void (*)(void))Lane_send, METH_FASTCALL,
     "send(size, now) -> 1 if the packet was let through and charged, 0 if it must wait, -1 if Python must decide "
     "(a fresh token slot on the path, or the shared lock busy); 0 and -1 change nothing."},
    {"charge", (PyCFunction)(void (*)(void))Lane_charge, METH_FASTCALL,
     "charge(key, size, now) -> 1 after charging a dequeued packet as HTB._charge does, -1 (nothing changed) if "
     "the shared lock is busy or the size is not one C holds: Python charges it then."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "imqd.qdisc._htbfast.Lane",
    .tp_doc = PyDoc_STR("HTB.send_now for one leaf, in C (see imqd/qdisc/_htbfast.c)."),
    .tp_basicsize = sizeof(Lane) - sizeof(ChainEntry),
    .tp_itemsize = sizeof(ChainEntry),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Lane_new,
    .tp_init = (initproc)Lane_init,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_traverse = (traverseproc)Lane_traverse,
    .tp_clear = (inquiry)Lane_clear,
    .tp_methods = Lane_methods,
};

static PySequenceMethods Shared_as_sequence = {
    .sq_length = Shared_length,
    .sq_item = (ssizeargfunc)Shared_item,
    .sq_ass_item = (ssizeobjargproc)Shared_ass_item,
};

static PyMethodDef Shared_methods[] = {
    {"bind", (PyCFunction)Shared_bind, METH_VARARGS,
     "bind(values, counters, ptr, lock): the buffers, pointer list and lock the tree's lanes use from now on "
     "(the gate is kept)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SharedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "imqd.qdisc._htbfast.Shared",
    .tp_doc = PyDoc_STR("Shared(values, counters, ptr, lock): what the lanes of one HTB tree share; "
                        "[0] and [1] are HTB's gate (open until, bypasses)."),
    .tp_basicsize = sizeof(Shared),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Shared_init,
    .tp_dealloc = (destructor)Shared_dealloc,
    .tp_traverse = (traverseproc)Shared_traverse,
    .tp_clear = (inquiry)Shared_clear,
    .tp_methods = Shared_methods,
    .tp_as_sequence = &Shared_as_sequence,
};

static struct PyModuleDef htbfast_module = {
    PyModuleDef_HEAD_INIT, "_htbfast", "HTB.send_now's common case in C (optional accelerator).", -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__htbfast(void)
{
    token_floor = 1e-9 - MBUFFER;
    if (PyType_Ready(&LaneType) < 0 || PyType_Ready(&SharedType) < 0)
        return NULL;
    if (!(s_acquire = PyUnicode_InternFromString("acquire")) ||
        !(s_release = PyUnicode_InternFromString("release")))
        return NULL;
    PyObject *m = PyModule_Create(&htbfast_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Lane", (PyObject *)&LaneType) < 0
        || PyModule_AddObjectRef(m, "Shared", (PyObject *)&SharedType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
