/*-
 * SPDX-License-Identifier: BSD-2-Clause
 *
 * xbb.c: the newbus side of the xbb Xen block back-end.
 *
 * A thin trampoline between FreeBSD and the Rust library: the driver "xbb"
 * on xenbusb_back claims "vbd" back-end devices and calls one Rust entry
 * point (xbb_rs_*(), see xbb_shim.h) per newbus method, XenBus watch
 * callback and taskqueue run; the services Rust needs (XenStore, grant
 * mapping into a xenmem_alloc()ed window, event channels, the store,
 * malloc(9), panic(9)) are handed to it once, at module load, as a table of
 * function pointers.
 *
 * Concurrency: an instance has a control context and one context per
 * queue.  Every control call (xbb_rs_*() on the instance handle) holds the
 * softc's sx lock: newbus methods, the XenBus watch, sysctl handlers and
 * the control task (root mounted, queues that came home or failed).  Each
 * queue has its own fast taskqueue with one thread; its task calls
 * xbb_rs_queue_task() without the sx lock, so the queues of an instance
 * serve their rings at once, on as many CPUs.  The event channel filter
 * and the I/O completion paths only record what happened on the queue
 * (its event flag, its list of finished I/Os under the queue's mutex) and
 * enqueue the queue's task.  Detach loops on xbb_rs_detach() while the
 * queues drain, then drains every taskqueue before anything is freed.
 */

#include <sys/param.h>
#include <sys/systm.h>
#include <sys/bus.h>
#include <sys/devicestat.h>
#include <sys/eventhandler.h>
#include <sys/kernel.h>
#include <sys/limits.h>
#include <sys/lock.h>
#include <sys/malloc.h>
#include <sys/module.h>
#include <sys/mutex.h>
#include <sys/queue.h>
#include <sys/rman.h>
#include <sys/sdt.h>
#include <sys/sx.h>
#include <sys/sysctl.h>
#include <sys/taskqueue.h>
#include <sys/time.h>
#include <sys/uio.h>

#include <vm/vm.h>
#include <vm/pmap.h>

#include <machine/atomic.h>
#include <machine/bus.h>
#include <machine/resource.h>

#include <xen/xen-os.h>
#include <xen/hypervisor.h>
#include <xen/error.h>
#include <xen/gnttab.h>
#include <xen/xen_intr.h>
#include <xen/evtchn/evtchnvar.h>
#include <xen/xenbus/xenbusvar.h>
#include <xen/xenstore/xenstorevar.h>

#include "xenbus_if.h"

#include "xbb_shim.h"
#include "xbb_var.h"

MALLOC_DEFINE(M_XBB, "xbb", "Xen block back-end (xbb)");

/* Most pages that one ring may have (blkif.h max-ring-page-order 4). */
#define	XBB_RING_PAGES_MAX	16

/* Copy operations per GNTTABOP_copy hypercall in copy_in. */
#define	XBB_COPY_BATCH		16

struct xbb_softc;

/* One event channel: one queue of the connection. */
struct xbb_chan {
	struct xbb_softc	*ch_sc;
	uint32_t		 ch_queue;
	int			 ch_bound;
	xen_intr_handle_t	 ch_handle;
	evtchn_port_t		 ch_port;
	struct timeout_task	 ch_eoi;	/* delayed unmask */
};

/* One queue's context: its taskqueue thread, its event, its finished I/O. */
struct xbb_queue {
	struct xbb_softc	*q_sc;
	uint32_t		 q_id;
	struct xbb_rs_queue	*q_rs;		/* the Rust side's queue */
	struct taskqueue	*q_tq;		/* one thread */
	struct task		 q_task;
	volatile u_int		 q_ev;		/* the filter saw an event */
	struct mtx		 q_mtx;		/* protects q_done */
	STAILQ_HEAD(, xbb_io)	 q_done;	/* finished I/Os */
};

/* One shared ring, mapped in its own pseudo-physical range. */
struct xbb_ring {
	struct resource		*rg_res;
	int			 rg_rid;
	uint32_t		 rg_pages;
	grant_handle_t		 rg_handle[XBB_RING_PAGES_MAX];
};

struct xbb_softc {
	device_t		 sc_dev;
	struct sx		 sc_lock;	/* serializes xbb_rs_*() */
	struct xbb_rs_instance	*sc_inst;	/* NULL once freed */
	int			 sc_gone;	/* detached: no more calls */
	LIST_ENTRY(xbb_softc)	 sc_link;	/* xbb_softcs */

	/* The control task: root mounted, queues home or failed. */
	struct taskqueue	*sc_tq;
	struct task		 sc_task;
	volatile u_int		 sc_root_pending; /* root became mounted */

	/* The queues' contexts (sc_nqueues of them started). */
	struct xbb_queue	 sc_queue[XBB_SHIM_MAX_QUEUES];
	uint32_t		 sc_nqueues;

	/* Data window (xenmem_alloc). */
	struct resource		*sc_win_res;
	int			 sc_win_rid;
	uint32_t		 sc_win_pages;

	struct xbb_ring		 sc_ring[XBB_SHIM_MAX_QUEUES];
	struct xbb_chan		 sc_chan[XBB_SHIM_MAX_QUEUES];

	struct xbb_store	 sc_store;
	struct sysctl_ctx_list	 sc_sysctl;

	/* devstat(9): "xbbs" (the store), "xbbg" (the guest's requests). */
	struct mtx		 sc_ds_mtx;	/* serializes both entries */
	struct devstat		*sc_ds[2];	/* by XBB_SHIM_VIEW_* */
};

static LIST_HEAD(, xbb_softc) xbb_softcs = LIST_HEAD_INITIALIZER(xbb_softcs);
static struct mtx xbb_softcs_mtx;
static eventhandler_tag xbb_mountroot_tag;

/* Loader tunables hw.xbb.*: filled from the Rust table at MOD_LOAD. */
static uint64_t xbb_tunables[XBB_SHIM_MAX_TUNABLES];
static uint32_t xbb_ntunables;
static struct sysctl_ctx_list xbb_tunable_ctx;

static SYSCTL_NODE(_hw, OID_AUTO, xbb, CTLFLAG_RD | CTLFLAG_MPSAFE, 0,
    "Xen block back-end (xbb) loader tunables");

/* ------------------------------------------------------------------ */
/* Accessors for xbb_io.c. */

struct xbb_store *
xbb_softc_store(struct xbb_softc *sc)
{

	return (&sc->sc_store);
}

device_t
xbb_softc_dev(struct xbb_softc *sc)
{

	return (sc->sc_dev);
}

/*
 * Kernel address of [off, off + len) of the data window, or 0 when that is
 * not inside the window.
 */
vm_offset_t
xbb_softc_window(struct xbb_softc *sc, size_t off, size_t len)
{
	size_t size;

	if (sc->sc_win_res == NULL)
		return (0);
	size = (size_t)sc->sc_win_pages * PAGE_SIZE;
	if (off > size || len > size - off)
		return (0);
	return ((vm_offset_t)rman_get_virtual(sc->sc_win_res) + off);
}

/* An I/O finished (g_up or a file worker): hand it to its queue's task. */
void
xbb_io_done(struct xbb_io *xio)
{
	struct xbb_queue *q;

	q = &xio->xio_sc->sc_queue[xio->xio_queue];
	mtx_lock(&q->q_mtx);
	STAILQ_INSERT_TAIL(&q->q_done, xio, xio_link);
	mtx_unlock(&q->q_mtx);
	taskqueue_enqueue(q->q_tq, &q->q_task);
}

/* ------------------------------------------------------------------ */
/* The tasks: a queue's, and the control task. */

/* A queue's context: serves its ring, its events, its finished I/Os. */
static void
xbb_queue_task(void *arg, int pending __unused)
{
	struct xbb_queue *q;

	q = arg;
	/* The Rust side ignores a queue that is not lent (home, or gone). */
	xbb_rs_queue_task(q->q_rs, atomic_readandclear_int(&q->q_ev) != 0);
}

/* The control context: root mounted, queues that came home or failed. */
static void
xbb_task(void *arg, int pending __unused)
{
	struct xbb_softc *sc;

	sc = arg;
	sx_xlock(&sc->sc_lock);
	if (sc->sc_inst != NULL && !sc->sc_gone) {
		if (atomic_readandclear_int(&sc->sc_root_pending) != 0)
			xbb_rs_root_mounted(sc->sc_inst);
		xbb_rs_control(sc->sc_inst);
	}
	sx_xunlock(&sc->sc_lock);
}

/* ------------------------------------------------------------------ */
/* XenStore services. */

static int
xbb_xs_read(void *ctx __unused, uint32_t txn, const char *path, char *buf,
    size_t buflen, size_t *lenp)
{
	struct xs_transaction t;
	void *val;
	u_int len;
	int error;

	t.id = txn;
	error = xs_read(t, path, "", &len, &val);
	if (error != 0)
		return (error);
	if (len > buflen) {
		free(val, M_XENSTORE);
		return (ERANGE);
	}
	memcpy(buf, val, len);
	*lenp = len;
	free(val, M_XENSTORE);
	return (0);
}

static int
xbb_xs_write(void *ctx __unused, uint32_t txn, const char *path,
    const char *value)
{
	struct xs_transaction t;

	t.id = txn;
	return (xs_write(t, path, "", value));
}

static int
xbb_xs_remove(void *ctx __unused, uint32_t txn, const char *path)
{
	struct xs_transaction t;
	int error;

	t.id = txn;
	error = xs_rm(t, path, "");
	return (error == ENOENT ? 0 : error);
}

static int
xbb_xs_transaction_start(void *ctx __unused, uint32_t *txnp)
{
	struct xs_transaction t;
	int error;

	error = xs_transaction_start(&t);
	if (error == 0)
		*txnp = t.id;
	return (error);
}

static int
xbb_xs_transaction_end(void *ctx __unused, uint32_t txn, int commit)
{
	struct xs_transaction t;

	t.id = txn;
	return (xs_transaction_end(t, commit ? 0 : 1));
}

/* ------------------------------------------------------------------ */
/* Grant mapping: the data window and the rings. */

static int
xbb_window_reserve(void *ctx, uint32_t pages)
{
	struct xbb_softc *sc;

	sc = ctx;
	if (sc->sc_win_res != NULL || pages == 0)
		return (EINVAL);
	sc->sc_win_rid = 0;
	sc->sc_win_res = xenmem_alloc(sc->sc_dev, &sc->sc_win_rid,
	    (size_t)pages * PAGE_SIZE);
	if (sc->sc_win_res == NULL)
		return (ENOMEM);
	sc->sc_win_pages = pages;
	return (0);
}

static void
xbb_window_release(void *ctx)
{
	struct xbb_softc *sc;

	sc = ctx;
	if (sc->sc_win_res == NULL)
		return;
	xenmem_free(sc->sc_dev, sc->sc_win_rid, sc->sc_win_res);
	sc->sc_win_res = NULL;
	sc->sc_win_pages = 0;
}

/* Errno of a failed grant-table hypercall, positive. */
static int
xbb_hypercall_errno(int rc)
{
	int error;

	error = xen_translate_error(rc);
	return (error > 0 ? error : EIO);
}

static void
xbb_map_grants(void *ctx, uint16_t domid, struct xbb_shim_map *ops,
    uint32_t count)
{
	struct gnttab_map_grant_ref map[XBB_SHIM_GRANT_BATCH];
	struct xbb_softc *sc;
	vm_paddr_t base;
	uint32_t i;
	int rc;

	sc = ctx;
	if (count > XBB_SHIM_GRANT_BATCH || sc->sc_win_res == NULL) {
		for (i = 0; i < count; i++)
			ops[i].status = EINVAL;
		return;
	}
	base = rman_get_start(sc->sc_win_res);
	for (i = 0; i < count; i++) {
		if (ops[i].window_page >= sc->sc_win_pages) {
			/* Caller bug: fail the whole batch, map nothing. */
			for (i = 0; i < count; i++)
				ops[i].status = EINVAL;
			return;
		}
		map[i].host_addr = base +
		    (vm_paddr_t)ops[i].window_page * PAGE_SIZE;
		map[i].flags = GNTMAP_host_map |
		    (ops[i].readonly ? GNTMAP_readonly : 0);
		map[i].ref = ops[i].gref;
		map[i].dom = domid;
	}
	rc = HYPERVISOR_grant_table_op(GNTTABOP_map_grant_ref, map, count);
	for (i = 0; i < count; i++) {
		if (rc != 0) {
			ops[i].status = xbb_hypercall_errno(rc);
			continue;
		}
		ops[i].status = map[i].status;
		ops[i].handle = map[i].status == GNTST_okay ? map[i].handle : 0;
	}
}

static void
xbb_unmap_grants(void *ctx, const struct xbb_shim_unmap *ops, uint32_t count)
{
	struct gnttab_unmap_grant_ref unmap[XBB_SHIM_GRANT_BATCH];
	struct xbb_softc *sc;
	vm_paddr_t base;
	uint32_t i, n;
	int rc;

	sc = ctx;
	if (sc->sc_win_res == NULL || count > XBB_SHIM_GRANT_BATCH) {
		device_printf(sc->sc_dev, "unmap_grants: bad call (%u)\n",
		    count);
		return;
	}
	base = rman_get_start(sc->sc_win_res);
	for (i = n = 0; i < count; i++) {
		if (ops[i].window_page >= sc->sc_win_pages)
			continue;
		unmap[n].host_addr = base +
		    (vm_paddr_t)ops[i].window_page * PAGE_SIZE;
		unmap[n].dev_bus_addr = 0;
		unmap[n].handle = ops[i].handle;
		n++;
	}
	if (n == 0)
		return;
	rc = HYPERVISOR_grant_table_op(GNTTABOP_unmap_grant_ref, unmap, n);
	if (rc != 0)
		device_printf(sc->sc_dev, "grant unmap hypercall: %d\n", rc);
	for (i = 0; i < n; i++)
		if (unmap[i].status != GNTST_okay)
			device_printf(sc->sc_dev, "grant unmap: status %d\n",
			    unmap[i].status);
}

/* Unmaps the first n pages of a ring and frees its range. */
static void
xbb_ring_release(struct xbb_softc *sc, struct xbb_ring *rg, uint32_t n)
{
	struct gnttab_unmap_grant_ref unmap[XBB_RING_PAGES_MAX];
	vm_paddr_t base;
	uint32_t i;
	int rc;

	if (rg->rg_res == NULL)
		return;
	base = rman_get_start(rg->rg_res);
	for (i = 0; i < n; i++) {
		unmap[i].host_addr = base + (vm_paddr_t)i * PAGE_SIZE;
		unmap[i].dev_bus_addr = 0;
		unmap[i].handle = rg->rg_handle[i];
	}
	if (n != 0) {
		rc = HYPERVISOR_grant_table_op(GNTTABOP_unmap_grant_ref, unmap,
		    n);
		if (rc != 0)
			device_printf(sc->sc_dev, "ring unmap: %d\n", rc);
	}
	xenmem_free(sc->sc_dev, rg->rg_rid, rg->rg_res);
	rg->rg_res = NULL;
	rg->rg_pages = 0;
}

static int32_t
xbb_ring_map(void *ctx, uint32_t queue, uint16_t domid, const uint32_t *grefs,
    uint32_t count, void **vap, size_t *lenp)
{
	struct gnttab_map_grant_ref map[XBB_RING_PAGES_MAX];
	struct xbb_softc *sc;
	struct xbb_ring *rg;
	vm_paddr_t base;
	uint32_t i, n;
	int32_t status;
	int rc;

	sc = ctx;
	if (queue >= XBB_SHIM_MAX_QUEUES || count == 0 ||
	    count > XBB_RING_PAGES_MAX)
		return (EINVAL);
	rg = &sc->sc_ring[queue];
	if (rg->rg_res != NULL)
		return (EINVAL);
	rg->rg_rid = 0;
	rg->rg_res = xenmem_alloc(sc->sc_dev, &rg->rg_rid,
	    (size_t)count * PAGE_SIZE);
	if (rg->rg_res == NULL)
		return (ENOMEM);
	base = rman_get_start(rg->rg_res);
	for (i = 0; i < count; i++) {
		map[i].host_addr = base + (vm_paddr_t)i * PAGE_SIZE;
		map[i].flags = GNTMAP_host_map;
		map[i].ref = grefs[i];
		map[i].dom = domid;
	}
	rc = HYPERVISOR_grant_table_op(GNTTABOP_map_grant_ref, map, count);
	if (rc != 0) {
		xenmem_free(sc->sc_dev, rg->rg_rid, rg->rg_res);
		rg->rg_res = NULL;
		return (xbb_hypercall_errno(rc));
	}
	/*
	 * Keep the successfully mapped pages in front so that a failure can
	 * unmap exactly those.
	 */
	status = 0;
	for (i = n = 0; i < count; i++) {
		if (map[i].status != GNTST_okay) {
			if (status == 0)
				status = map[i].status;
			continue;
		}
		rg->rg_handle[i] = map[i].handle;
		n++;
	}
	if (status != 0) {
		struct gnttab_unmap_grant_ref unmap[XBB_RING_PAGES_MAX];

		for (i = n = 0; i < count; i++) {
			if (map[i].status != GNTST_okay)
				continue;
			unmap[n].host_addr = map[i].host_addr;
			unmap[n].dev_bus_addr = 0;
			unmap[n].handle = map[i].handle;
			n++;
		}
		if (n != 0 && HYPERVISOR_grant_table_op(
		    GNTTABOP_unmap_grant_ref, unmap, n) != 0)
			device_printf(sc->sc_dev, "ring unmap after failure\n");
		xenmem_free(sc->sc_dev, rg->rg_rid, rg->rg_res);
		rg->rg_res = NULL;
		return (status);
	}
	rg->rg_pages = count;
	*vap = rman_get_virtual(rg->rg_res);
	*lenp = (size_t)count * PAGE_SIZE;
	return (0);
}

static void
xbb_ring_unmap(void *ctx, uint32_t queue, void *va __unused,
    size_t len __unused)
{
	struct xbb_softc *sc;
	struct xbb_ring *rg;

	sc = ctx;
	if (queue >= XBB_SHIM_MAX_QUEUES)
		return;
	rg = &sc->sc_ring[queue];
	xbb_ring_release(sc, rg, rg->rg_pages);
}

static int32_t
xbb_copy_in(void *ctx __unused, uint16_t domid, const uint32_t *grefs,
    uint32_t count, void *out, size_t len)
{
	struct gnttab_copy cp[XBB_COPY_BATCH];
	vm_offset_t dst;
	size_t done, chunk, page_left;
	uint32_t i, n, k;
	int rc;

	if (len > (size_t)count * PAGE_SIZE)
		return (EINVAL);
	done = 0;
	i = 0;
	while (done < len) {
		/* Fill a batch; a source page may need two destination pieces. */
		n = 0;
		while (done < len && n + 2 <= XBB_COPY_BATCH) {
			size_t src_off;

			i = done / PAGE_SIZE;
			src_off = done % PAGE_SIZE;
			chunk = MIN(PAGE_SIZE - src_off, len - done);
			dst = (vm_offset_t)out + done;
			page_left = PAGE_SIZE - (dst & PAGE_MASK);
			chunk = MIN(chunk, page_left);
			cp[n].source.u.ref = grefs[i];
			cp[n].source.domid = domid;
			cp[n].source.offset = src_off;
			cp[n].dest.u.gmfn = atop(pmap_kextract(dst));
			cp[n].dest.domid = DOMID_SELF;
			cp[n].dest.offset = dst & PAGE_MASK;
			cp[n].len = chunk;
			cp[n].flags = GNTCOPY_source_gref;
			cp[n].status = 0;
			n++;
			done += chunk;
		}
		rc = HYPERVISOR_grant_table_op(GNTTABOP_copy, cp, n);
		if (rc != 0)
			return (xbb_hypercall_errno(rc));
		for (k = 0; k < n; k++)
			if (cp[k].status != GNTST_okay)
				return (cp[k].status);
	}
	return (0);
}

/* ------------------------------------------------------------------ */
/* Event channels. */

static int
xbb_filter(void *arg)
{
	struct xbb_chan *ch;
	struct xbb_queue *q;
	struct xbb_softc *sc;

	ch = arg;
	sc = ch->ch_sc;
	q = &sc->sc_queue[ch->ch_queue];
	/* Late EOI: masked until the queue's task has served the ring. */
	evtchn_mask_port(ch->ch_port);
	atomic_store_rel_int(&q->q_ev, 1);
	taskqueue_enqueue(q->q_tq, &q->q_task);
	return (FILTER_HANDLED);
}

static void
xbb_eoi_timeout(void *arg, int pending __unused)
{
	struct xbb_chan *ch;

	ch = arg;
	if (ch->ch_bound)
		evtchn_unmask_port(ch->ch_port);
}

static int
xbb_evtchn_bind(void *ctx, uint32_t queue, uint16_t domid,
    uint32_t remote_port)
{
	struct xbb_softc *sc;
	struct xbb_chan *ch;
	int error;

	sc = ctx;
	if (queue >= sc->sc_nqueues)
		return (EINVAL);
	ch = &sc->sc_chan[queue];
	if (ch->ch_bound)
		return (EINVAL);
	error = xen_intr_bind_remote_port(sc->sc_dev, domid, remote_port,
	    xbb_filter, NULL, ch, INTR_TYPE_BIO | INTR_MPSAFE,
	    &ch->ch_handle);
	if (error != 0)
		return (error);
	ch->ch_port = xen_intr_port(ch->ch_handle);
	ch->ch_bound = 1;
	xen_intr_describe(ch->ch_handle, "q%u", queue);
	return (0);
}

static void
xbb_evtchn_notify(void *ctx, uint32_t queue)
{
	struct xbb_softc *sc;

	sc = ctx;
	if (queue < XBB_SHIM_MAX_QUEUES && sc->sc_chan[queue].ch_bound)
		xen_intr_signal(sc->sc_chan[queue].ch_handle);
}

static void
xbb_evtchn_eoi(void *ctx, uint32_t queue, uint32_t delay_ms)
{
	struct xbb_softc *sc;
	struct xbb_chan *ch;
	int ticks;

	sc = ctx;
	if (queue >= XBB_SHIM_MAX_QUEUES || !sc->sc_chan[queue].ch_bound)
		return;
	ch = &sc->sc_chan[queue];
	if (delay_ms == 0) {
		evtchn_unmask_port(ch->ch_port);
		return;
	}
	ticks = (int)MIN((uint64_t)delay_ms * hz / 1000 + 1, INT_MAX);
	taskqueue_enqueue_timeout(sc->sc_queue[queue].q_tq, &ch->ch_eoi, ticks);
}

static void
xbb_evtchn_unbind(void *ctx, uint32_t queue)
{
	struct xbb_softc *sc;
	struct xbb_chan *ch;
	struct taskqueue *tq;

	sc = ctx;
	if (queue >= XBB_SHIM_MAX_QUEUES)
		return;
	ch = &sc->sc_chan[queue];
	if (!ch->ch_bound)
		return;
	/* Removing the handler waits for a running filter. */
	xen_intr_unbind(&ch->ch_handle);
	ch->ch_bound = 0;
	tq = sc->sc_queue[queue].q_tq;
	if (taskqueue_cancel_timeout(tq, &ch->ch_eoi, NULL) != 0 &&
	    !taskqueue_member(tq, curthread))
		taskqueue_drain_timeout(tq, &ch->ch_eoi);
	atomic_store_rel_int(&sc->sc_queue[queue].q_ev, 0);
}

/* ------------------------------------------------------------------ */
/* Deferred work, time, store, root. */

static void
xbb_queue_kick(void *ctx, uint32_t queue)
{
	struct xbb_softc *sc;

	sc = ctx;
	if (queue < sc->sc_nqueues)
		taskqueue_enqueue(sc->sc_queue[queue].q_tq,
		    &sc->sc_queue[queue].q_task);
}

static void
xbb_control_kick(void *ctx)
{
	struct xbb_softc *sc;

	sc = ctx;
	taskqueue_enqueue(sc->sc_tq, &sc->sc_task);
}

/* The oldest finished I/O of a queue, taken off its list. */
static int
xbb_io_take(void *ctx, uint32_t queue, uint32_t *tagp, int *errorp)
{
	struct xbb_softc *sc;
	struct xbb_queue *q;
	struct xbb_io *xio;

	sc = ctx;
	if (queue >= sc->sc_nqueues)
		return (0);
	q = &sc->sc_queue[queue];
	mtx_lock(&q->q_mtx);
	xio = STAILQ_FIRST(&q->q_done);
	if (xio != NULL)
		STAILQ_REMOVE_HEAD(&q->q_done, xio_link);
	mtx_unlock(&q->q_mtx);
	if (xio == NULL)
		return (0);
	*tagp = xio->xio_tag;
	*errorp = xio->xio_error;
	free(xio, M_XBB);
	atomic_subtract_int(&sc->sc_store.st_inflight, 1);
	return (1);
}

static uint64_t
xbb_now_ms(void *ctx __unused)
{

	return ((uint64_t)(getsbinuptime() / SBT_1MS));
}

static int
xbb_op_store_open(void *ctx, const char *path, const char *kind,
    int writable, struct xbb_shim_medium *medium)
{

	/* Never before root: the path names a file in the real root. */
	if (!root_mounted())
		return (EAGAIN);
	return (xbb_store_open(ctx, path, kind, writable, medium));
}

static void
xbb_op_store_info(void *ctx, struct xbb_shim_medium *medium)
{

	xbb_store_info(ctx, medium);
}

static int
xbb_op_store_submit(void *ctx, uint32_t queue, uint32_t tag,
    const struct xbb_shim_io *io)
{
	struct xbb_softc *sc;

	sc = ctx;
	if (queue >= sc->sc_nqueues)
		return (EINVAL);
	return (xbb_store_submit(sc, queue, tag, io));
}

static void
xbb_op_store_close(void *ctx)
{

	xbb_store_close(ctx);
}

static int
xbb_root_mounted(void *ctx __unused)
{

	return (root_mounted() ? 1 : 0);
}

/* ------------------------------------------------------------------ */
/* Module-wide services. */

static void *
xbb_malloc(void *ctx __unused, size_t size, size_t align, uint32_t flags)
{
	int mflags;

	switch (flags & (XBB_SHIM_M_WAITOK | XBB_SHIM_M_NOWAIT)) {
	case XBB_SHIM_M_WAITOK:
		mflags = M_WAITOK;
		break;
	case XBB_SHIM_M_NOWAIT:
		mflags = M_NOWAIT;
		break;
	default:
		return (NULL);
	}
	if ((flags & XBB_SHIM_M_ZERO) != 0)
		mflags |= M_ZERO;
	if (size == 0)
		size = 1;
	if (align == 0 || !powerof2(align) || align > PAGE_SIZE)
		return (NULL);
	if (align <= sizeof(void *))
		return (malloc(size, M_XBB, mflags));
	return (malloc_aligned(size, align, M_XBB, mflags));
}

static void
xbb_free(void *ctx __unused, void *ptr, size_t size __unused,
    size_t align __unused)
{

	free(ptr, M_XBB);
}

static void
xbb_panic(void *ctx __unused, const char *msg, size_t len)
{

	panic("xbb: %.*s", (int)MIN(len, INT_MAX), msg);
}

static void
xbb_log(void *ctx, const char *msg, size_t len)
{
	struct xbb_softc *sc;
	int n;

	sc = ctx;
	n = (int)MIN(len, INT_MAX);
	if (n > 0 && msg[n - 1] == '\n')
		n--;
	if (sc != NULL)
		device_printf(sc->sc_dev, "%.*s\n", n, msg);
	else
		printf("xbb: %.*s\n", n, msg);
}

/* ------------------------------------------------------------------ */
/* Observers: devstat(9) and the SDT provider "xbb" (xbb(4)). */

/*
 * FreeBSD's built-in blkback (xbbd) names its devstat entries "xbb" and
 * "xbbi"; ours are "xbbs" and "xbbg" so that both drivers can run at once.
 */
static const char *const xbb_ds_names[2] = {
	[XBB_SHIM_VIEW_STORE] = "xbbs",
	[XBB_SHIM_VIEW_GUEST] = "xbbg",
};

/*
 * The provider "xbb" is shared with the built-in blkback, whose probes are
 * xbb:kernel:xbb_dispatch_{dev,file}:*; sdt(4) merges providers of one
 * name, and silently keeps only the first of two probes with the same
 * provider:module:function:name, so ours all have the module "xbb" and
 * functions of their own.  The provider's C symbol is static, as blkback
 * defines a global of the same name when it is compiled in.
 */
#ifdef KDTRACE_HOOKS
static SDT_PROVIDER_DEFINE(xbb);
#endif
SDT_PROBE_DEFINE6(xbb, xbb, request, start, "int", "int", "uint64_t",
    "int", "uint64_t", "uint64_t");
SDT_PROBE_DEFINE6(xbb, xbb, request, done, "int", "int", "uint64_t",
    "int", "uint64_t", "int");
SDT_PROBE_DEFINE5(xbb, xbb, request, refused, "int", "int", "uint64_t",
    "int", "int");
SDT_PROBE_DEFINE5(xbb, xbb, reqlist, dispatch, "int", "int", "int",
    "uint64_t", "uint64_t");
SDT_PROBE_DEFINE5(xbb, xbb, io, error, "int", "int", "int", "uint64_t",
    "int");
SDT_PROBE_DEFINE2(xbb, xbb, connection, connect, "int", "int");
SDT_PROBE_DEFINE1(xbb, xbb, connection, disconnect, "int");
SDT_PROBE_DEFINE2(xbb, xbb, connection, error, "int", "int");

static int
xbb_stat_attach(void *ctx)
{
	struct xbb_softc *sc;
	int unit, v;

	sc = ctx;
	unit = device_get_unit(sc->sc_dev);
	mtx_init(&sc->sc_ds_mtx, "xbb devstat", NULL, MTX_DEF);
	for (v = 0; v < 2; v++)
		sc->sc_ds[v] = devstat_new_entry(xbb_ds_names[v], unit,
		    DEV_BSIZE, DEVSTAT_ALL_SUPPORTED,
		    DEVSTAT_TYPE_DIRECT | DEVSTAT_TYPE_IF_OTHER,
		    DEVSTAT_PRIORITY_OTHER);
	return (0);
}

static void
xbb_stat_detach(void *ctx)
{
	struct xbb_softc *sc;
	int v;

	sc = ctx;
	for (v = 0; v < 2; v++) {
		if (sc->sc_ds[v] != NULL)
			devstat_remove_entry(sc->sc_ds[v]);
		sc->sc_ds[v] = NULL;
	}
	mtx_destroy(&sc->sc_ds_mtx);
}

static void
xbb_stat_start(void *ctx, uint32_t view)
{
	struct xbb_softc *sc;

	sc = ctx;
	if (view >= nitems(sc->sc_ds) || sc->sc_ds[view] == NULL)
		return;
	mtx_lock(&sc->sc_ds_mtx);
	devstat_start_transaction(sc->sc_ds[view], NULL);
	mtx_unlock(&sc->sc_ds_mtx);
}

/*
 * No start time is kept per transaction (the Rust side keeps no clock
 * per request): devstat counts operations, bytes and busy time exactly,
 * and leaves the per-kind duration totals at zero.
 */
static void
xbb_stat_end(void *ctx, uint32_t view, uint32_t kind, uint64_t bytes,
    int error __unused)
{
	struct xbb_softc *sc;
	devstat_trans_flags flags;
	devstat_tag_type tag;

	sc = ctx;
	if (view >= nitems(sc->sc_ds) || sc->sc_ds[view] == NULL)
		return;
	tag = DEVSTAT_TAG_SIMPLE;
	switch (kind) {
	case XBB_SHIM_KIND_READ:
		flags = DEVSTAT_READ;
		break;
	case XBB_SHIM_KIND_WRITE:
		flags = DEVSTAT_WRITE;
		break;
	case XBB_SHIM_KIND_DISCARD:
		flags = DEVSTAT_FREE;
		break;
	default:
		flags = DEVSTAT_NO_DATA;
		tag = DEVSTAT_TAG_ORDERED;
		bytes = 0;
		break;
	}
	mtx_lock(&sc->sc_ds_mtx);
	devstat_end_transaction(sc->sc_ds[view], (uint32_t)MIN(bytes,
	    UINT32_MAX), tag, flags, NULL, NULL);
	mtx_unlock(&sc->sc_ds_mtx);
}

static void
xbb_sdt_fire(void *ctx, uint32_t probe, uint32_t queue, uint64_t a0,
    uint64_t a1, uint64_t a2, uint64_t a3)
{
	struct xbb_softc *sc;
	int unit, q;

	sc = ctx;
	unit = device_get_unit(sc->sc_dev);
	q = (int)queue;
	switch (probe) {
	case XBB_SHIM_PROBE_REQUEST_START:
		SDT_PROBE6(xbb, xbb, request, start, unit, q, a0, (int)a1, a2,
		    a3);
		break;
	case XBB_SHIM_PROBE_REQUEST_DONE:
		SDT_PROBE6(xbb, xbb, request, done, unit, q, a0, (int)a1, a2,
		    (int)(int64_t)a3);
		break;
	case XBB_SHIM_PROBE_REQUEST_REFUSED:
		SDT_PROBE5(xbb, xbb, request, refused, unit, q, a0, (int)a1,
		    (int)(int64_t)a2);
		break;
	case XBB_SHIM_PROBE_DISPATCH:
		SDT_PROBE5(xbb, xbb, reqlist, dispatch, unit, q, (int)a0, a1,
		    a2);
		break;
	case XBB_SHIM_PROBE_IO_ERROR:
		SDT_PROBE5(xbb, xbb, io, error, unit, q, (int)a0, a1,
		    (int)(int64_t)a2);
		break;
	case XBB_SHIM_PROBE_CONNECT:
		SDT_PROBE2(xbb, xbb, connection, connect, unit, (int)a0);
		break;
	case XBB_SHIM_PROBE_DISCONNECT:
		SDT_PROBE1(xbb, xbb, connection, disconnect, unit);
		break;
	case XBB_SHIM_PROBE_CONNECT_ERROR:
		SDT_PROBE2(xbb, xbb, connection, error, unit,
		    (int)(int64_t)a0);
		break;
	}
	(void)unit; (void)q; (void)a0; (void)a1; (void)a2; (void)a3;
}

static const struct xbb_shim_ops xbb_ops = {
	.version = XBB_SHIM_VERSION,
	.size = sizeof(struct xbb_shim_ops),
	.xs_read = xbb_xs_read,
	.xs_write = xbb_xs_write,
	.xs_remove = xbb_xs_remove,
	.xs_transaction_start = xbb_xs_transaction_start,
	.xs_transaction_end = xbb_xs_transaction_end,
	.window_reserve = xbb_window_reserve,
	.window_release = xbb_window_release,
	.map_grants = xbb_map_grants,
	.unmap_grants = xbb_unmap_grants,
	.ring_map = xbb_ring_map,
	.ring_unmap = xbb_ring_unmap,
	.copy_in = xbb_copy_in,
	.evtchn_bind = xbb_evtchn_bind,
	.evtchn_notify = xbb_evtchn_notify,
	.evtchn_eoi = xbb_evtchn_eoi,
	.evtchn_unbind = xbb_evtchn_unbind,
	.queue_kick = xbb_queue_kick,
	.control_kick = xbb_control_kick,
	.now_ms = xbb_now_ms,
	.store_open = xbb_op_store_open,
	.store_info = xbb_op_store_info,
	.store_submit = xbb_op_store_submit,
	.io_done = xbb_io_take,
	.store_close = xbb_op_store_close,
	.root_mounted = xbb_root_mounted,
	.mem_alloc = xbb_malloc,
	.mem_free = xbb_free,
	.panic = xbb_panic,
	.log = xbb_log,
	.stat_attach = xbb_stat_attach,
	.stat_detach = xbb_stat_detach,
	.stat_start = xbb_stat_start,
	.stat_end = xbb_stat_end,
	.probe = xbb_sdt_fire,
};

/* ------------------------------------------------------------------ */
/* Sysctls: dev.xbb.N.*, built from the Rust table. */

#define	XBB_SYSCTL_ARG2(queue, index)	((int)(((queue) << 16) | (index)))
#define	XBB_SYSCTL_ALLQ			0xffff

static int
xbb_sysctl_value(SYSCTL_HANDLER_ARGS)
{
	struct xbb_softc *sc;
	uint64_t value;
	uint32_t index, queue;
	int error;

	sc = arg1;
	index = (uint32_t)arg2 & 0xffff;
	queue = (uint32_t)arg2 >> 16;
	value = 0;
	sx_xlock(&sc->sc_lock);
	if (sc->sc_inst == NULL)
		error = ENXIO;
	else if (queue == XBB_SYSCTL_ALLQ)
		error = xbb_rs_sysctl_get(sc->sc_inst, index, &value);
	else
		error = xbb_rs_queue_sysctl_get(sc->sc_inst, queue, index,
		    &value);
	sx_xunlock(&sc->sc_lock);
	if (error != 0)
		return (error);
	error = sysctl_handle_64(oidp, &value, 0, req);
	if (error != 0 || req->newptr == NULL)
		return (error);
	if (queue != XBB_SYSCTL_ALLQ)
		return (EPERM);
	sx_xlock(&sc->sc_lock);
	error = sc->sc_inst == NULL ? ENXIO :
	    xbb_rs_sysctl_set(sc->sc_inst, index, value);
	sx_xunlock(&sc->sc_lock);
	return (error);
}

static int
xbb_sysctl_state(SYSCTL_HANDLER_ARGS)
{
	struct xbb_softc *sc;
	u_int value;

	sc = arg1;
	sx_xlock(&sc->sc_lock);
	value = sc->sc_inst == NULL ? 0 :
	    (arg2 == 0 ? xbb_rs_state(sc->sc_inst) :
	    xbb_rs_num_queues(sc->sc_inst));
	sx_xunlock(&sc->sc_lock);
	return (sysctl_handle_int(oidp, &value, 0, req));
}

static int
xbb_sysctl_last_error(SYSCTL_HANDLER_ARGS)
{
	struct xbb_softc *sc;
	char *buf;
	int error;

	sc = arg1;
	buf = malloc(256, M_XBB, M_WAITOK | M_ZERO);
	sx_xlock(&sc->sc_lock);
	if (sc->sc_inst != NULL)
		(void)xbb_rs_last_error(sc->sc_inst, buf, 256);
	sx_xunlock(&sc->sc_lock);
	error = sysctl_handle_string(oidp, buf, 256, req);
	free(buf, M_XBB);
	return (error);
}

/* The value of loader tunable hw.xbb.<name>, or dflt if there is none. */
uint64_t
xbb_tunable(const char *name, uint64_t dflt)
{
	uint32_t i;

	for (i = 0; i < xbb_ntunables; i++)
		if (strcmp(xbb_rs_tunable_name(i), name) == 0)
			return (xbb_tunables[i]);
	return (dflt);
}

static uint32_t
xbb_max_queues(void)
{

	return ((uint32_t)MIN(xbb_tunable("max_queues", XBB_SHIM_MAX_QUEUES),
	    XBB_SHIM_MAX_QUEUES));
}

static void
xbb_sysctl_attach(struct xbb_softc *sc)
{
	struct sysctl_oid_list *top, *qlist, *list;
	struct sysctl_oid *qnode, *node;
	const char *name, *descr;
	uint32_t count, i, q, nq;
	char qname[8];

	sysctl_ctx_init(&sc->sc_sysctl);
	top = SYSCTL_CHILDREN(device_get_sysctl_tree(sc->sc_dev));
	count = xbb_rs_sysctl_count();
	for (i = 0; i < count; i++) {
		name = xbb_rs_sysctl_name(i);
		descr = xbb_rs_sysctl_descr(i);
		if (name == NULL)
			continue;
		/* Only switches are writable; limits and counters are not. */
		if (xbb_rs_sysctl_kind(i) == XBB_SHIM_SYSCTL_SWITCH)
			SYSCTL_ADD_PROC(&sc->sc_sysctl, top, OID_AUTO, name,
			    CTLTYPE_U64 | CTLFLAG_RW | CTLFLAG_MPSAFE, sc,
			    XBB_SYSCTL_ARG2(XBB_SYSCTL_ALLQ, i),
			    xbb_sysctl_value, "QU", descr != NULL ? descr : "");
		else
			SYSCTL_ADD_PROC(&sc->sc_sysctl, top, OID_AUTO, name,
			    CTLTYPE_U64 | CTLFLAG_RD | CTLFLAG_MPSAFE, sc,
			    XBB_SYSCTL_ARG2(XBB_SYSCTL_ALLQ, i),
			    xbb_sysctl_value, "QU", descr != NULL ? descr : "");
	}
	SYSCTL_ADD_PROC(&sc->sc_sysctl, top, OID_AUTO, "state",
	    CTLTYPE_UINT | CTLFLAG_RD | CTLFLAG_MPSAFE, sc, 0,
	    xbb_sysctl_state, "IU", "XenBus state of the back-end");
	SYSCTL_ADD_PROC(&sc->sc_sysctl, top, OID_AUTO, "last_error",
	    CTLTYPE_STRING | CTLFLAG_RD | CTLFLAG_MPSAFE, sc, 0,
	    xbb_sysctl_last_error, "A", "Why the connection last failed");

	/* Per-queue counters and gauges: dev.xbb.N.queue.Q.<name>. */
	qnode = SYSCTL_ADD_NODE(&sc->sc_sysctl, top, OID_AUTO, "queue",
	    CTLFLAG_RD | CTLFLAG_MPSAFE, NULL, "Per-queue statistics");
	qlist = SYSCTL_CHILDREN(qnode);
	nq = xbb_max_queues();
	for (q = 0; q < nq; q++) {
		snprintf(qname, sizeof(qname), "%u", q);
		node = SYSCTL_ADD_NODE(&sc->sc_sysctl, qlist, OID_AUTO, qname,
		    CTLFLAG_RD | CTLFLAG_MPSAFE, NULL, "One queue");
		list = SYSCTL_CHILDREN(node);
		for (i = 0; i < count; i++) {
			if (!xbb_rs_sysctl_per_queue(i))
				continue;
			name = xbb_rs_sysctl_name(i);
			descr = xbb_rs_sysctl_descr(i);
			if (name == NULL)
				continue;
			SYSCTL_ADD_PROC(&sc->sc_sysctl, list, OID_AUTO, name,
			    CTLTYPE_U64 | CTLFLAG_RD | CTLFLAG_MPSAFE, sc,
			    XBB_SYSCTL_ARG2(q, i), xbb_sysctl_value, "QU",
			    descr != NULL ? descr : "");
		}
	}
}

/* ------------------------------------------------------------------ */
/* Newbus. */

static int
xbb_probe(device_t dev)
{

	if (strcmp(xenbus_get_type(dev), "vbd") != 0)
		return (ENXIO);
	/*
	 * Devices DMA into grant-mapped pages: without IOMMU entries for
	 * them a back-end cannot work on this host.
	 */
	if (!xen_has_iommu_maps())
		return (ENXIO);
	device_set_desc(dev, "Xen block back-end (xbb)");
	/*
	 * A low-priority match: the built-in xbbd claims its devices with 0
	 * and keeps them unless the administrator hands one over with
	 * "devctl set driver -f <dev> xbb", which fixes the device class so
	 * that only xbb is probed (see sys-glue/README.md).  On a kernel
	 * without xbbd, xbb attaches every vbd by itself.
	 */
	return (BUS_PROBE_LOW_PRIORITY);
}

/* Waits until the instance is detached (xbb_rs_detach/shutdown == 0). */
static int
xbb_drain(struct xbb_softc *sc, int (*step)(struct xbb_rs_instance *))
{
	int error, tries;

	for (tries = 0;; tries++) {
		sx_xlock(&sc->sc_lock);
		error = sc->sc_inst == NULL ? 0 : step(sc->sc_inst);
		sx_xunlock(&sc->sc_lock);
		if (error != EBUSY)
			return (error);
		if (tries % 100 == 99)
			device_printf(sc->sc_dev,
			    "waiting for I/O to drain (%u in flight)\n",
			    sc->sc_store.st_inflight);
		/* Completions reach Rust through the task meanwhile. */
		pause("xbbdrn", MAX(hz / 20, 1));
	}
}

/* Drains every queue task and delayed EOI, then the control task. */
static void
xbb_drain_tasks(struct xbb_softc *sc)
{
	struct xbb_queue *q;
	uint32_t i;

	for (i = 0; i < sc->sc_nqueues; i++) {
		q = &sc->sc_queue[i];
		if (taskqueue_cancel_timeout(q->q_tq, &sc->sc_chan[i].ch_eoi,
		    NULL) != 0)
			taskqueue_drain_timeout(q->q_tq,
			    &sc->sc_chan[i].ch_eoi);
		taskqueue_drain_all(q->q_tq);
	}
	if (sc->sc_tq != NULL)
		taskqueue_drain_all(sc->sc_tq);
}

static void
xbb_teardown(struct xbb_softc *sc)
{
	struct xbb_queue *q;
	uint32_t i;

	xbb_drain_tasks(sc);
	for (i = 0; i < sc->sc_nqueues; i++) {
		q = &sc->sc_queue[i];
		taskqueue_free(q->q_tq);
		q->q_tq = NULL;
		mtx_destroy(&q->q_mtx);
	}
	sc->sc_nqueues = 0;
	if (sc->sc_tq != NULL) {
		taskqueue_free(sc->sc_tq);
		sc->sc_tq = NULL;
	}
	sx_destroy(&sc->sc_lock);
}

/*
 * Starts the queues' contexts: hw.xbb.max_queues fast taskqueues with one
 * thread each ("xbbN qQ"), which the interrupt filter and the store's
 * completions enqueue.
 */
static int
xbb_queues_start(struct xbb_softc *sc)
{
	struct xbb_queue *q;
	uint32_t i, nq;
	int error;

	nq = xbb_max_queues();
	for (i = 0; i < nq; i++) {
		q = &sc->sc_queue[i];
		q->q_sc = sc;
		q->q_id = i;
		mtx_init(&q->q_mtx, "xbbq", NULL, MTX_DEF);
		STAILQ_INIT(&q->q_done);
		TASK_INIT(&q->q_task, 0, xbb_queue_task, q);
		q->q_tq = taskqueue_create_fast("xbbq", M_WAITOK,
		    taskqueue_thread_enqueue, &q->q_tq);
		sc->sc_chan[i].ch_sc = sc;
		sc->sc_chan[i].ch_queue = i;
		TIMEOUT_TASK_INIT(q->q_tq, &sc->sc_chan[i].ch_eoi, 0,
		    xbb_eoi_timeout, &sc->sc_chan[i]);
		sc->sc_nqueues = i + 1;
		error = taskqueue_start_threads(&q->q_tq, 1, PRIBIO,
		    "%s q%u", device_get_nameunit(sc->sc_dev), i);
		if (error != 0)
			return (error);
	}
	return (0);
}

static int
xbb_attach(device_t dev)
{
	struct xbb_softc *sc;
	struct xbb_rs_instance *inst;
	uint32_t q;
	int error;

	sc = device_get_softc(dev);
	sc->sc_dev = dev;
	sx_init(&sc->sc_lock, "xbb");
	TASK_INIT(&sc->sc_task, 0, xbb_task, sc);
	sc->sc_tq = taskqueue_create_fast(device_get_nameunit(dev), M_WAITOK,
	    taskqueue_thread_enqueue, &sc->sc_tq);
	/* The control task's one thread. */
	error = taskqueue_start_threads(&sc->sc_tq, 1, PRIBIO, "%s ctl",
	    device_get_nameunit(dev));
	if (error == 0)
		error = xbb_queues_start(sc);
	if (error != 0) {
		xbb_teardown(sc);
		return (error);
	}

	sx_xlock(&sc->sc_lock);
	error = xbb_rs_attach(sc, xenbus_get_node(dev), xbb_tunables,
	    xbb_ntunables, &inst);
	if (error == 0) {
		sc->sc_inst = inst;
		for (q = 0; q < sc->sc_nqueues; q++) {
			sc->sc_queue[q].q_rs = xbb_rs_queue(inst, q);
			if (sc->sc_queue[q].q_rs == NULL)
				error = ENXIO;
		}
		if (error != 0) {
			/* Nothing connected yet: detach finishes at once. */
			(void)xbb_rs_detach(inst);
			(void)xbb_rs_free(inst);
			sc->sc_inst = NULL;
		}
	}
	sx_xunlock(&sc->sc_lock);
	if (error != 0) {
		device_printf(dev, "attach failed: %d\n", error);
		xbb_teardown(sc);
		return (error);
	}
	xbb_sysctl_attach(sc);

	mtx_lock(&xbb_softcs_mtx);
	LIST_INSERT_HEAD(&xbb_softcs, sc, sc_link);
	mtx_unlock(&xbb_softcs_mtx);
	/* Root may have been mounted between attach and the list insert. */
	if (root_mounted()) {
		atomic_store_rel_int(&sc->sc_root_pending, 1);
		taskqueue_enqueue(sc->sc_tq, &sc->sc_task);
	}
	return (0);
}

static int
xbb_detach(device_t dev)
{
	struct xbb_softc *sc;
	int error;

	sc = device_get_softc(dev);
	error = xbb_drain(sc, xbb_rs_detach);
	if (error != 0)
		return (error);

	mtx_lock(&xbb_softcs_mtx);
	LIST_REMOVE(sc, sc_link);
	mtx_unlock(&xbb_softcs_mtx);

	/* No sysctl handler may run once the instance is gone. */
	sysctl_ctx_free(&sc->sc_sysctl);

	sx_xlock(&sc->sc_lock);
	sc->sc_gone = 1;
	sx_xunlock(&sc->sc_lock);
	/* Callbacks drained before anything is freed. */
	xbb_drain_tasks(sc);

	sx_xlock(&sc->sc_lock);
	error = xbb_rs_free(sc->sc_inst);
	if (error == 0)
		sc->sc_inst = NULL;
	sx_xunlock(&sc->sc_lock);
	if (error != 0) {
		device_printf(dev, "free failed: %d\n", error);
		return (error);
	}
	xbb_teardown(sc);
	return (0);
}

static int
xbb_shutdown(device_t dev)
{
	struct xbb_softc *sc;

	sc = device_get_softc(dev);
	return (xbb_drain(sc, xbb_rs_shutdown));
}

static int
xbb_suspend(device_t dev)
{
	struct xbb_softc *sc;
	int error;

	sc = device_get_softc(dev);
	sx_xlock(&sc->sc_lock);
	error = sc->sc_inst == NULL ? 0 : xbb_rs_suspend(sc->sc_inst);
	sx_xunlock(&sc->sc_lock);
	return (error);
}

static int
xbb_resume(device_t dev)
{
	struct xbb_softc *sc;
	int error;

	sc = device_get_softc(dev);
	sx_xlock(&sc->sc_lock);
	error = sc->sc_inst == NULL ? 0 : xbb_rs_resume(sc->sc_inst);
	sx_xunlock(&sc->sc_lock);
	return (error);
}

static void
xbb_otherend_changed(device_t dev, XenbusState state __unused)
{
	struct xbb_softc *sc;

	sc = device_get_softc(dev);
	sx_xlock(&sc->sc_lock);
	if (sc->sc_inst != NULL && !sc->sc_gone)
		xbb_rs_otherend_changed(sc->sc_inst);
	sx_xunlock(&sc->sc_lock);
}

/*
 * A node of our back-end directory changed: the hotplug script's
 * "hotplug-status" (the core may be waiting for it to connect), or the
 * directory was removed by the toolstack (the core stops writing into it).
 */
static void
xbb_localend_changed(device_t dev, const char *path)
{
	struct xbb_softc *sc;

	sc = device_get_softc(dev);
	sx_xlock(&sc->sc_lock);
	if (sc->sc_inst != NULL && !sc->sc_gone)
		xbb_rs_localend_changed(sc->sc_inst, path);
	sx_xunlock(&sc->sc_lock);
}

/* mountroot event: every attached instance may open its store now. */
static void
xbb_mountroot(void *arg __unused)
{
	struct xbb_softc *sc;

	mtx_lock(&xbb_softcs_mtx);
	LIST_FOREACH(sc, &xbb_softcs, sc_link) {
		atomic_store_rel_int(&sc->sc_root_pending, 1);
		taskqueue_enqueue(sc->sc_tq, &sc->sc_task);
	}
	mtx_unlock(&xbb_softcs_mtx);
}

/* ------------------------------------------------------------------ */
/* Module events: the ops table and the loader tunables. */

static void
xbb_tunables_load(void)
{
	struct sysctl_oid_list *list;
	char path[64];
	const char *name, *descr;
	uint64_t value;
	uint32_t i;

	sysctl_ctx_init(&xbb_tunable_ctx);
	list = SYSCTL_CHILDREN(&sysctl___hw_xbb);
	xbb_ntunables = MIN(xbb_rs_tunable_count(), XBB_SHIM_MAX_TUNABLES);
	for (i = 0; i < xbb_ntunables; i++) {
		name = xbb_rs_tunable_name(i);
		descr = xbb_rs_tunable_descr(i);
		xbb_tunables[i] = xbb_rs_tunable_default(i);
		if (name == NULL)
			continue;
		snprintf(path, sizeof(path), "hw.xbb.%s", name);
		if (getenv_uint64(path, &value)) {
			if (xbb_rs_tunable_check(i, value) == 0)
				xbb_tunables[i] = value;
			else
				printf("xbb: %s=%ju outside [%ju, %ju], "
				    "using %ju\n", path, (uintmax_t)value,
				    (uintmax_t)xbb_rs_tunable_min(i),
				    (uintmax_t)xbb_rs_tunable_max(i),
				    (uintmax_t)xbb_tunables[i]);
		}
		SYSCTL_ADD_U64(&xbb_tunable_ctx, list, OID_AUTO, name,
		    CTLFLAG_RDTUN | CTLFLAG_NOFETCH | CTLFLAG_MPSAFE,
		    &xbb_tunables[i], 0, descr != NULL ? descr : "");
	}
}

static int
xbb_modevent(module_t mod __unused, int what, void *arg __unused)
{
	int error;

	switch (what) {
	case MOD_LOAD:
		mtx_init(&xbb_softcs_mtx, "xbbsc", NULL, MTX_DEF);
		error = xbb_rs_load(&xbb_ops);
		if (error != 0) {
			printf("xbb: Rust library refused the shim: %d\n",
			    error);
			mtx_destroy(&xbb_softcs_mtx);
			return (error);
		}
		xbb_tunables_load();
		xbb_mountroot_tag = EVENTHANDLER_REGISTER(mountroot,
		    xbb_mountroot, NULL, EVENTHANDLER_PRI_ANY);
		return (0);
	case MOD_UNLOAD:
		/* newbus detached every device before this runs. */
		error = xbb_rs_unload();
		if (error != 0)
			return (error);
		EVENTHANDLER_DEREGISTER(mountroot, xbb_mountroot_tag);
		sysctl_ctx_free(&xbb_tunable_ctx);
		mtx_destroy(&xbb_softcs_mtx);
		return (0);
	case MOD_SHUTDOWN:
	case MOD_QUIESCE:
		return (0);
	default:
		return (EOPNOTSUPP);
	}
}

static device_method_t xbb_methods[] = {
	DEVMETHOD(device_probe,		xbb_probe),
	DEVMETHOD(device_attach,	xbb_attach),
	DEVMETHOD(device_detach,	xbb_detach),
	DEVMETHOD(device_shutdown,	xbb_shutdown),
	DEVMETHOD(device_suspend,	xbb_suspend),
	DEVMETHOD(device_resume,	xbb_resume),

	DEVMETHOD(xenbus_otherend_changed, xbb_otherend_changed),
	DEVMETHOD(xenbus_localend_changed, xbb_localend_changed),

	DEVMETHOD_END
};

static driver_t xbb_driver = {
	"xbb",
	xbb_methods,
	sizeof(struct xbb_softc),
};

DRIVER_MODULE(xbb, xenbusb_back, xbb_driver, xbb_modevent, NULL);
MODULE_VERSION(xbb, 1);
/* Built against this kernel's KPI: the same major branch, not older. */
MODULE_DEPEND(xbb, kernel, __FreeBSD_version, __FreeBSD_version,
    (__FreeBSD_version / 100000) * 100000 + 99999);
