/*-
 * SPDX-License-Identifier: BSD-2-Clause
 *
 * xbb_shim.h: the one interface between the xbb C shim (the C files of
 * sys-glue) and the Rust library (freebsd/).
 *
 * Two directions:
 *
 *  - struct xbb_shim_ops: services the C shim provides to Rust, as a table of
 *    function pointers handed over once, at module load, with
 *    xbb_rs_load().  Rust therefore has no link-time dependency on C (its
 *    only undefined symbols are memcpy, memmove, memset, memcmp), and
 *    the user-space "fake kernel" of the Rust test suite supplies its own
 *    table.
 *
 *  - xbb_rs_*(): the Rust entry points the C shim calls (newbus methods,
 *    XenBus watch callback, taskqueue task, completion delivery, sysctl
 *    handlers, module events).
 *
 * The header needs no FreeBSD header to parse: only fixed-width integer
 * types and size_t.  Inside the kernel they come from <sys/types.h>.
 *
 * Conventions (every function below):
 *
 *  - "ctx" is the C softc of one xbb device, exactly the pointer passed to
 *    xbb_rs_attach().  The module-wide services (mem_alloc, mem_free,
 *    panic, log) get the softc when Rust has one at hand, NULL otherwise.
 *  - Errors are positive errno values (0 is success), unless a function
 *    says otherwise (grant status, see "Grant status" below).  The
 *    values are FreeBSD's <sys/errno.h> ones (EAGAIN is 35).  The
 *    Rust side converts them to and from its own error types in one place.
 *  - Strings passed from Rust to C are NUL-terminated and valid only for
 *    the duration of the call; C copies what it keeps.
 *  - Contexts.  Every xbb_rs_*() call concerning one instance is made with
 *    that instance's lock held: an sx(9) lock, because the XenStore services
 *    sleep.  The ops the Rust side calls back (below) run inside such a
 *    call, so: they may sleep (XenStore, M_WAITOK allocation where the
 *    function says so), but must not call back into xbb_rs_*() for the same
 *    instance.  No xbb_rs_*() function is ever called from an interrupt
 *    filter, an ithread, a bio completion (g_up) or a callout: those only
 *    record what happened and enqueue the instance's task on its fast
 *    taskqueue (taskqueue_create_fast), and the task makes the call.
 *    "attach thread" below means the newbus attach/detach/shutdown thread;
 *    "watch thread" the XenBus watch (otherend_changed) thread; "task" the
 *    instance's taskqueue task; "any" any of these.
 */

#ifndef _XBB_SHIM_H_
#define	_XBB_SHIM_H_

#ifdef _KERNEL
#include <sys/types.h>
#else
#include <stddef.h>
#include <stdint.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Bump on any incompatible change.  xbb_rs_load() refuses a table whose
 * version or size differ from what the Rust library was built with.
 */
#define	XBB_SHIM_VERSION	1

/* Largest number of queues (rings) of one connection: hw.xbb.max_queues max. */
#define	XBB_SHIM_MAX_QUEUES	16

/* Largest number of loader tunables (the length of the C value array). */
#define	XBB_SHIM_MAX_TUNABLES	32

/*
 * Largest number of entries in one map_grants / unmap_grants call.  The C
 * side may keep a struct gnttab_map_grant_ref array of this size on its
 * stack.
 */
#define	XBB_SHIM_GRANT_BATCH	32

/* Allocation flags for malloc(): exactly one of WAITOK / NOWAIT. */
#define	XBB_SHIM_M_WAITOK	0x0001	/* may sleep, never fails: M_WAITOK */
#define	XBB_SHIM_M_NOWAIT	0x0002	/* never sleeps, may fail: M_NOWAIT */
#define	XBB_SHIM_M_ZERO		0x0004	/* zero the memory: M_ZERO */

/* struct xbb_shim_medium.flags */
#define	XBB_SHIM_MEDIUM_READ_ONLY	0x0001	/* opened (or only openable) read-only */
#define	XBB_SHIM_MEDIUM_CAN_FLUSH	0x0002	/* BIO_FLUSH / VOP_FSYNC work */
#define	XBB_SHIM_MEDIUM_CAN_DISCARD	0x0004	/* BIO_DELETE / hole punching work */
#define	XBB_SHIM_MEDIUM_SECURE_DISCARD	0x0008	/* secure erase works */
#define	XBB_SHIM_MEDIUM_IS_DEVICE	0x0010	/* a character device, not a file */

/* struct xbb_shim_io.op */
#define	XBB_SHIM_IO_READ	1	/* read the medium into iov */
#define	XBB_SHIM_IO_WRITE	2	/* write iov to the medium */
#define	XBB_SHIM_IO_FLUSH	3	/* make completed writes durable */
#define	XBB_SHIM_IO_DISCARD	4	/* discard [offset, offset + length) */

/* struct xbb_shim_io.flags */
#define	XBB_SHIM_IO_SECURE	0x0001	/* DISCARD: erase securely */

/* Values of xbb_rs_sysctl_kind() (src/stats.rs SysctlKind). */
#define	XBB_SHIM_SYSCTL_LIMIT	1	/* read-only, fixed while connected */
#define	XBB_SHIM_SYSCTL_COUNTER	2	/* read-only, grows */
#define	XBB_SHIM_SYSCTL_SWITCH	3	/* read-write */
#define	XBB_SHIM_SYSCTL_GAUGE	4	/* read-only, goes up and down */

/*
 * Grant status.  Functions that map or copy grants report, per entry or as
 * their result, an int32_t that is
 *   0                 success,
 *   negative          the GNTST_* value the hypervisor wrote (grant_table.h:
 *                     GNTST_general_error -1, GNTST_bad_domain -2,
 *                     GNTST_bad_gntref -3, GNTST_no_device_space -7,
 *                     GNTST_permission_denied -8, GNTST_eagain -12,
 *                     GNTST_no_space -13, ...), copied unchanged, or
 *   positive          an errno for a failure before or around the hypercall
 *                     (ENOMEM: no address space; EINVAL: bad argument;
 *                     any hypercall error as the hypercall returned it).
 * A hypercall that fails as a whole sets every entry to its errno.
 */

/* One page to map into the data window (GNTTABOP_map_grant_ref). */
struct xbb_shim_map {
	uint32_t	gref;		/* in: the front-end's grant reference */
	uint32_t	window_page;	/* in: page index in the data window */
	uint32_t	readonly;	/* in: 1: GNTMAP_readonly (guest WRITE) */
	int32_t		status;		/* out: grant status, see above */
	uint32_t	handle;		/* out: grant handle, when status is 0 */
	uint32_t	_pad;
};

/* One page to unmap from the data window (GNTTABOP_unmap_grant_ref). */
struct xbb_shim_unmap {
	uint32_t	window_page;	/* page index in the data window */
	uint32_t	handle;		/* handle returned by map_grants */
};

/* One piece of an I/O buffer: a byte range of the data window. */
struct xbb_shim_iovec {
	size_t		window_offset;	/* byte offset from the window's start */
	size_t		len;		/* length in bytes */
};

/* One I/O to the back-end store. */
struct xbb_shim_io {
	uint32_t	op;		/* XBB_SHIM_IO_* */
	uint32_t	flags;		/* XBB_SHIM_IO_SECURE */
	uint64_t	offset;		/* medium byte offset (READ, WRITE, DISCARD) */
	uint64_t	length;		/* DISCARD: bytes; READ/WRITE: sum of iov */
	const struct xbb_shim_iovec *iov; /* READ/WRITE: pieces, in order */
	uint32_t	iovcnt;		/* READ/WRITE: number of pieces */
	uint32_t	_pad;
};

/* What the opened store is (src/host.rs MediumInfo). */
struct xbb_shim_medium {
	uint64_t	sectors;		/* size in 512-byte sectors */
	uint32_t	sector_size;		/* logical block size, power of 2, >= 512 */
	uint32_t	physical_sector_size;	/* multiple of sector_size */
	uint32_t	discard_granularity;	/* bytes; 0: sector_size */
	uint32_t	discard_alignment;	/* bytes, first granule's offset */
	uint32_t	flags;			/* XBB_SHIM_MEDIUM_* */
	uint32_t	_pad;
};

/*
 * The services of the C shim.  Every member must be non-NULL.
 */
struct xbb_shim_ops {
	uint32_t	version;	/* XBB_SHIM_VERSION */
	uint32_t	size;		/* sizeof(struct xbb_shim_ops) */

	/*
	 * XenStore (xenstore/xenstorevar.h xs_*).  "path" is the whole node
	 * path as the core spells it: the back-end directory exactly as
	 * passed to xbb_rs_attach() (xenbus_get_node(), relative to the
	 * domain's home) followed by "/node", or an absolute path in the
	 * front-end's directory (as read from the "frontend" node).  C passes
	 * it whole as the directory with an empty node name: xs_read(t, path,
	 * "", ...).  "txn" is a transaction id from xs_transaction_start, 0
	 * for none (XST_NIL).  Context: any; may sleep.
	 */

	/*
	 * Reads the node into buf[0 .. buflen), stores its length in *lenp
	 * and returns 0; no NUL is added.  ERANGE (nothing copied) if the
	 * value is longer than buflen; ENOENT if absent; EAGAIN, EACCES or
	 * any other errno from xs_read().
	 */
	int	(*xs_read)(void *ctx, uint32_t txn, const char *path,
		    char *buf, size_t buflen, size_t *lenp);
	/* Writes the NUL-terminated value at path (xs_write). */
	int	(*xs_write)(void *ctx, uint32_t txn, const char *path,
		    const char *value);
	/* Removes path and its children; ENOENT is reported as 0 (xs_rm). */
	int	(*xs_remove)(void *ctx, uint32_t txn, const char *path);
	/* Starts a transaction, storing its non-zero id in *txnp. */
	int	(*xs_transaction_start)(void *ctx, uint32_t *txnp);
	/* Ends transaction txn: commit (1) or abort (0).  EAGAIN: retry. */
	int	(*xs_transaction_end)(void *ctx, uint32_t txn, int commit);

	/*
	 * The data window (grant_table.h).  Context: task or watch thread
	 * (connect and disconnect).
	 */

	/*
	 * Reserves a window of "pages" pages of kernel address space into
	 * which grants are mapped (xenmem_alloc() of pages * PAGE_SIZE, as
	 * FreeBSD's blkback does).  One window per instance at a time.
	 * ENOMEM when it cannot.  Must not sleep for long: use M_NOWAIT-like
	 * allocation.
	 */
	int	(*window_reserve)(void *ctx, uint32_t pages);
	/* Releases the window; nothing is mapped in it any more. */
	void	(*window_release)(void *ctx);
	/*
	 * Maps ops[0 .. count) (count <= XBB_SHIM_GRANT_BATCH) of domain
	 * "domid" in one GNTTABOP_map_grant_ref hypercall, page ops[i].gref at
	 * window address + ops[i].window_page * PAGE_SIZE, with
	 * GNTMAP_host_map (| GNTMAP_readonly), and fills status and handle of
	 * every entry.  A failed entry leaves nothing mapped.  Context: task.
	 */
	void	(*map_grants)(void *ctx, uint16_t domid,
		    struct xbb_shim_map *ops, uint32_t count);
	/*
	 * Unmaps ops[0 .. count) (count <= XBB_SHIM_GRANT_BATCH) in one
	 * GNTTABOP_unmap_grant_ref hypercall.  A failure is logged by C; it
	 * cannot be reported.  Context: task.
	 */
	void	(*unmap_grants)(void *ctx, const struct xbb_shim_unmap *ops,
		    uint32_t count);
	/*
	 * Maps the shared-ring pages grefs[0 .. count) of domain "domid" for
	 * queue "queue" (< XBB_SHIM_MAX_QUEUES) contiguously and writable in
	 * freshly reserved kernel address space, stores the address in *vap
	 * (page aligned) and count * PAGE_SIZE in *lenp, and returns 0; or
	 * returns a grant status (see above) with nothing mapped.  The
	 * mapping stays until ring_unmap(queue).  Context: task or watch.
	 */
	int32_t	(*ring_map)(void *ctx, uint32_t queue, uint16_t domid,
		    const uint32_t *grefs, uint32_t count, void **vap,
		    size_t *lenp);
	/* Unmaps queue's ring; va and len are what ring_map returned. */
	void	(*ring_unmap)(void *ctx, uint32_t queue, void *va, size_t len);
	/*
	 * GNTTABOP_copy: copies, from each granted frame grefs[i] of
	 * "domid", min(PAGE_SIZE, len - i * PAGE_SIZE) bytes to
	 * out + i * PAGE_SIZE, for i in 0 .. count (len <= count *
	 * PAGE_SIZE).  Returns 0 when everything was copied, or the first
	 * failing grant status.  Context: task.
	 */
	int32_t	(*copy_in)(void *ctx, uint16_t domid, const uint32_t *grefs,
		    uint32_t count, void *out, size_t len);

	/*
	 * Event channels, one per queue (xen/xen_intr.h).  Context: task or
	 * watch.
	 */

	/*
	 * Binds queue's channel to the front-end's remote_port in domid
	 * (xen_intr_bind_remote_port) with a filter that only enqueues the
	 * instance's task, which then calls xbb_rs_event(queue).  After an
	 * event the channel stays masked (late EOI) until evtchn_eoi().
	 * EINVAL / ENOENT: not a port offered to us; other errno otherwise.
	 */
	int	(*evtchn_bind)(void *ctx, uint32_t queue, uint16_t domid,
		    uint32_t remote_port);
	/* Sends an event to the front-end on queue's channel (xen_intr_signal). */
	void	(*evtchn_notify)(void *ctx, uint32_t queue);
	/*
	 * Re-enables queue's channel (unmask) now when delay_ms is 0, else
	 * after delay_ms milliseconds (a callout or timeout_task); an event
	 * arriving meanwhile stays pending.  Must not sleep.
	 */
	void	(*evtchn_eoi)(void *ctx, uint32_t queue, uint32_t delay_ms);
	/*
	 * Unbinds queue's channel (xen_intr_unbind) and cancels a pending
	 * delayed EOI.  After it returns the filter no longer enqueues
	 * xbb_rs_event(queue) calls; C drops any already queued.
	 */
	void	(*evtchn_unbind)(void *ctx, uint32_t queue);

	/* Deferred work and time. */

	/*
	 * Arranges for xbb_rs_run(queue) to be called soon from the task
	 * (taskqueue_enqueue).  Must not sleep.  Context: any.
	 */
	void	(*schedule_run)(void *ctx, uint32_t queue);
	/* A monotonic clock in milliseconds (getsbinuptime()). */
	uint64_t (*now_ms)(void *ctx);

	/*
	 * The back-end store: a character device (GEOM provider, zvol) or a
	 * regular file (vnode).
	 */

	/*
	 * Opens the store named by the NUL-terminated "path" (the params
	 * node), of "kind" ("phy", "file", or "" when unknown: decide by what
	 * the path names), for writing when writable is 1; fills *medium and
	 * returns 0, or ENOENT, EACCES, EROFS, EINVAL (neither a disk device
	 * nor a regular file, or an unusable size), or another errno.  Only
	 * called once the root file system is mounted.  Context: any; may
	 * sleep (namei, VOP_OPEN).
	 */
	int	(*store_open)(void *ctx, const char *path, const char *kind,
		    int writable, struct xbb_shim_medium *medium);
	/* Describes the open store now (its size may have changed). */
	void	(*store_info)(void *ctx, struct xbb_shim_medium *medium);
	/*
	 * Queues one I/O and returns 0, or returns an errno and will never
	 * complete it (EAGAIN/ENOMEM: not now; EOPNOTSUPP; ENXIO: gone).
	 * io and io->iov are valid only during the call: C copies what it
	 * needs (buffer address = window + iov[i].window_offset).  More than
	 * one I/O may be in flight.  When it finishes (biodone callback,
	 * vnode worker), C records (tag, errno) and enqueues the task, which
	 * calls xbb_rs_complete(tag, errno) exactly once.  Must not sleep:
	 * bios go out with g_io_request(), file I/O is handed to a worker
	 * thread / taskqueue (not the instance's own).  Context: task.
	 */
	int	(*store_submit)(void *ctx, uint32_t tag,
		    const struct xbb_shim_io *io);
	/* Closes the store; no I/O is in flight.  Context: any; may sleep. */
	void	(*store_close)(void *ctx);

	/* Whether the root file system is mounted (1) or not yet (0). */
	int	(*root_mounted)(void *ctx);

	/*
	 * Module-wide services.  ctx may be NULL.  Context: any, including a
	 * Rust panic.
	 */

	/*
	 * Allocates size bytes aligned to align (a power of two <= PAGE_SIZE)
	 * with the driver's malloc type (M_XBB): malloc(9) or
	 * malloc_aligned(9).  flags is XBB_SHIM_M_WAITOK or XBB_SHIM_M_NOWAIT,
	 * optionally | XBB_SHIM_M_ZERO; C translates them to M_WAITOK /
	 * M_NOWAIT / M_ZERO.  NULL only with NOWAIT.
	 */
	void	*(*mem_alloc)(void *ctx, size_t size, size_t align, uint32_t flags);
	/* Frees what malloc returned; size and align as passed to it. */
	void	(*mem_free)(void *ctx, void *ptr, size_t size, size_t align);
	/*
	 * panic(9) with the message msg[0 .. len) (not NUL-terminated:
	 * panic("xbb: %.*s", (int)len, msg)).  Never returns.
	 */
	void	(*panic)(void *ctx, const char *msg, size_t len);
	/*
	 * Logs msg[0 .. len) (not NUL-terminated): device_printf() when ctx
	 * is a softc, printf() otherwise.  Must not sleep.
	 */
	void	(*log)(void *ctx, const char *msg, size_t len);
};

/*
 * Rust entry points.  "inst" is the opaque instance xbb_rs_attach()
 * returned; every call for one instance is serialized by its sx lock (see
 * the conventions at the top).
 */
struct xbb_rs_instance;

/*
 * MOD_LOAD: installs the ops table (which must stay valid until
 * xbb_rs_unload() returns).  EINVAL for a version or size mismatch or a
 * NULL member, EEXIST if a table is installed already.  Context: module
 * event handler, before any other xbb_rs_*() call.
 */
int	xbb_rs_load(const struct xbb_shim_ops *ops);
/*
 * MOD_UNLOAD: EBUSY while instances exist (not yet xbb_rs_free()d);
 * otherwise forgets the ops table and returns 0.
 */
int	xbb_rs_unload(void);

/*
 * Loader tunables hw.xbb.<name>, in table order, index < count.  Names and
 * descriptions are NUL-terminated static strings; NULL for a bad index.
 * At MOD_LOAD the C side fills a uint64_t values[XBB_SHIM_MAX_TUNABLES]
 * with the defaults, fetches each hw.xbb.<name> with TUNABLE_UINT64_FETCH,
 * resets any value xbb_rs_tunable_check() refuses (logging it), and
 * publishes values[i] as read-only sysctls (CTLFLAG_RDTUN).
 */
uint32_t	xbb_rs_tunable_count(void);
const char	*xbb_rs_tunable_name(uint32_t index);
const char	*xbb_rs_tunable_descr(uint32_t index);
uint64_t	xbb_rs_tunable_default(uint32_t index);
uint64_t	xbb_rs_tunable_min(uint32_t index);
uint64_t	xbb_rs_tunable_max(uint32_t index);
/* 0, ERANGE outside [min, max], ENOENT for a bad index. */
int		xbb_rs_tunable_check(uint32_t index, uint64_t value);

/*
 * newbus attach (attach thread): creates the instance for XenStore
 * back-end directory backend_path (xenbus_get_node(dev), NUL-terminated)
 * with the tunables values[0 .. count) (count == xbb_rs_tunable_count()),
 * reads the toolstack's nodes and, if the root file system is mounted,
 * opens the store and publishes the offer (InitWait).  Stores the instance
 * in *instp and returns 0; or ENOMEM, EINVAL (bad path or tunables), ENXIO
 * (no ops table).  A failure of the connection itself (no such store,
 * missing nodes) is not an attach error: it is reported in XenStore
 * ("error" node, state Closing) and by xbb_rs_last_error().
 */
int	xbb_rs_attach(void *ctx, const char *backend_path,
	    const uint64_t *values, uint32_t count,
	    struct xbb_rs_instance **instp);
/*
 * The root file system is now mounted (mountroot event handler, via the
 * task or a thread that may sleep): opens the store, publishes the offer.
 */
void	xbb_rs_root_mounted(struct xbb_rs_instance *inst);
/* xenbus_otherend_changed (watch thread): the front-end's state changed. */
void	xbb_rs_otherend_changed(struct xbb_rs_instance *inst);
/*
 * From the task, after the filter saw an event on queue's channel: serves
 * the ring, then calls evtchn_eoi(queue, delay).
 */
void	xbb_rs_event(struct xbb_rs_instance *inst, uint32_t queue);
/* From the task, after schedule_run(queue): serves the ring. */
void	xbb_rs_run(struct xbb_rs_instance *inst, uint32_t queue);
/*
 * From the task: the I/O submitted with tag finished with error (0, or an
 * errno: EIO, ENXIO/ENODEV (medium gone), EOPNOTSUPP, ENOSPC,
 * EAGAIN/ENOMEM, other values count as EIO).  Exactly once per accepted
 * store_submit, also while detaching.
 */
void	xbb_rs_complete(struct xbb_rs_instance *inst, uint32_t tag, int error);
/* The store's size may have changed (e.g. GEOM resize, file growth). */
void	xbb_rs_medium_changed(struct xbb_rs_instance *inst);
/*
 * newbus detach (attach thread): stops serving, starts draining.  Returns 0
 * once everything is released (rings unmapped, channels unbound, window
 * released, store closed, state Closed); EBUSY while I/O is in flight.  On
 * EBUSY the C side keeps delivering completions (xbb_rs_complete, from the
 * task) and calls xbb_rs_detach() again (it is idempotent) until it
 * returns 0; then drains the taskqueue and callouts and calls
 * xbb_rs_free().
 */
int	xbb_rs_detach(struct xbb_rs_instance *inst);
/*
 * Frees a detached instance; inst is invalid afterwards.  EBUSY (and
 * nothing freed) if xbb_rs_detach() has not returned 0.
 */
int	xbb_rs_free(struct xbb_rs_instance *inst);
/* newbus shutdown: like xbb_rs_detach() (same return values and loop). */
int	xbb_rs_shutdown(struct xbb_rs_instance *inst);
/* newbus suspend / resume: 0 (the connection needs nothing). */
int	xbb_rs_suspend(struct xbb_rs_instance *inst);
int	xbb_rs_resume(struct xbb_rs_instance *inst);

/*
 * Per-instance sysctl nodes dev.xbb.N.<name>, in table order, index <
 * count; counters and gauges (per_queue 1) also exist per queue as
 * dev.xbb.N.queue.Q.<name>, Q < XBB_SHIM_MAX_QUEUES (or hw.xbb.max_queues).
 * Names and descriptions are NUL-terminated static strings, NULL for a bad
 * index.  Only XBB_SHIM_SYSCTL_SWITCH nodes are read-write.
 */
uint32_t	xbb_rs_sysctl_count(void);
const char	*xbb_rs_sysctl_name(uint32_t index);
const char	*xbb_rs_sysctl_descr(uint32_t index);
uint32_t	xbb_rs_sysctl_kind(uint32_t index);
int		xbb_rs_sysctl_per_queue(uint32_t index);
/*
 * Sysctl handlers (any thread that may sleep, instance lock held): the
 * instance-wide value (counters summed over queues); 0, ENOENT for a bad
 * index, EINVAL for a NULL argument.
 */
int	xbb_rs_sysctl_get(struct xbb_rs_instance *inst, uint32_t index,
	    uint64_t *valuep);
/* Sets a switch: 0, EPERM (read-only node), EINVAL (bad value), ENOENT. */
int	xbb_rs_sysctl_set(struct xbb_rs_instance *inst, uint32_t index,
	    uint64_t value);
/*
 * One queue's value of a per-queue node; 0 with *valuep = 0 for a queue
 * the current connection does not have; ENOENT for a bad index or a node
 * that is not per queue.
 */
int	xbb_rs_queue_sysctl_get(struct xbb_rs_instance *inst, uint32_t queue,
	    uint32_t index, uint64_t *valuep);
/* Queues of the current connection (0 when not connected). */
uint32_t	xbb_rs_num_queues(struct xbb_rs_instance *inst);
/* The back-end's XenBus state (enum xenbus_state), for dev.xbb.N.state. */
uint32_t	xbb_rs_state(struct xbb_rs_instance *inst);
/*
 * Writes why the connection last failed, NUL-terminated and truncated to
 * buflen, into buf ("" if it has not failed), for dev.xbb.N.last_error.
 * Returns the length written without the NUL.
 */
size_t	xbb_rs_last_error(struct xbb_rs_instance *inst, char *buf,
	    size_t buflen);

#ifdef __cplusplus
}
#endif

#endif /* !_XBB_SHIM_H_ */
