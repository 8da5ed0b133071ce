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
 *  - Contexts.  An instance has one control context and one context per
 *    queue (ring) of its connection, which run concurrently.
 *
 *    Control: every xbb_rs_*() call that takes the instance handle
 *    (struct xbb_rs_instance) is made with the instance's lock held: an
 *    sx(9) lock, because the XenStore services sleep.  The ops the Rust
 *    side calls back from such a call may sleep (XenStore, M_WAITOK
 *    allocation where the function says so), but must not call back into
 *    xbb_rs_*() for the same instance.  "attach thread" below means the
 *    newbus attach/detach/shutdown thread; "watch thread" the XenBus watch
 *    (otherend_changed) thread; "control task" the instance's own
 *    taskqueue task, which calls xbb_rs_control() and
 *    xbb_rs_root_mounted().
 *
 *    Queues: xbb_rs_queue_task() takes a queue handle (struct
 *    xbb_rs_queue) and is called only from that queue's task, on a
 *    taskqueue of its own ("queue task"), without the instance's lock:
 *    the Rust side hands each queue between the control part and its task
 *    through an atomic word (src/handoff.rs) and never lets two calls
 *    touch one queue at once.  The ops called back from a queue task
 *    ("queue" below) must not sleep: they run while the queue serves its
 *    ring, next to the other queues.
 *
 *    No xbb_rs_*() function is ever called from an interrupt filter, an
 *    ithread, a bio completion (g_up) or a callout: those only record what
 *    happened (the queue's event, a finished I/O on the queue's list) and
 *    enqueue the queue's task, which makes the call.  "any" means any of
 *    the contexts above.
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
#define	XBB_SHIM_VERSION	3

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
	 * every entry.  A failed entry leaves nothing mapped.  Context: queue
	 * (each queue names only pages of its own share of the window, which
	 * stays reserved while any queue runs).
	 */
	void	(*map_grants)(void *ctx, uint16_t domid,
		    struct xbb_shim_map *ops, uint32_t count);
	/*
	 * Unmaps ops[0 .. count) (count <= XBB_SHIM_GRANT_BATCH) in one
	 * GNTTABOP_unmap_grant_ref hypercall.  A failure is logged by C; it
	 * cannot be reported.  Context: queue.
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
	 * failing grant status.  Context: queue.
	 */
	int32_t	(*copy_in)(void *ctx, uint16_t domid, const uint32_t *grefs,
		    uint32_t count, void *out, size_t len);

	/*
	 * Event channels, one per queue (xen/xen_intr.h).
	 */

	/*
	 * Binds queue's channel to the front-end's remote_port in domid
	 * (xen_intr_bind_remote_port) with a filter that masks the port,
	 * records the event for the queue and enqueues the queue's task,
	 * which passes it to xbb_rs_queue_task().  After an event the channel
	 * stays masked (late EOI) until evtchn_eoi().  EINVAL / ENOENT: not a
	 * port offered to us; other errno otherwise.  Context: control.
	 */
	int	(*evtchn_bind)(void *ctx, uint32_t queue, uint16_t domid,
		    uint32_t remote_port);
	/*
	 * Sends an event to the front-end on queue's channel
	 * (xen_intr_signal).  Context: queue.
	 */
	void	(*evtchn_notify)(void *ctx, uint32_t queue);
	/*
	 * Re-enables queue's channel (unmask) now when delay_ms is 0, else
	 * after delay_ms milliseconds (a timeout task on the queue's
	 * taskqueue); an event arriving meanwhile stays pending.  Must not
	 * sleep.  Context: queue.
	 */
	void	(*evtchn_eoi)(void *ctx, uint32_t queue, uint32_t delay_ms);
	/*
	 * Unbinds queue's channel (xen_intr_unbind) and cancels a pending
	 * delayed EOI.  After it returns the filter records no more events for
	 * the queue; an event already recorded reaches xbb_rs_queue_task(),
	 * which ignores it while the queue is home.  Context: control (the
	 * queue is home).
	 */
	void	(*evtchn_unbind)(void *ctx, uint32_t queue);

	/* Deferred work and time. */

	/*
	 * Enqueues queue's task (taskqueue_enqueue on the queue's taskqueue):
	 * xbb_rs_queue_task() will be called soon.  Must not sleep.  Context:
	 * any.
	 */
	void	(*queue_kick)(void *ctx, uint32_t queue);
	/*
	 * Enqueues the instance's control task, which takes the instance's
	 * lock and calls xbb_rs_control(): a queue came home or failed.  Must
	 * not sleep.  Context: queue.
	 */
	void	(*control_kick)(void *ctx);
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
	 * Queues one I/O of queue "queue" and returns 0, or returns an errno
	 * and will never complete it (EAGAIN/ENOMEM: not now; EOPNOTSUPP;
	 * ENXIO: gone).  io and io->iov are valid only during the call: C
	 * copies what it needs (buffer address = window +
	 * iov[i].window_offset).  More than one I/O may be in flight, from
	 * every queue at once.  When it finishes (biodone callback, vnode
	 * worker), C puts (tag, errno) on queue's list of finished I/Os and
	 * enqueues queue's task, where the Rust side takes it back with
	 * io_done(), exactly once.  Must not sleep: bios go out with
	 * g_io_request(), file I/O is handed to a worker thread / taskqueue
	 * (not the queue's own).  Context: queue.
	 */
	int	(*store_submit)(void *ctx, uint32_t queue, uint32_t tag,
		    const struct xbb_shim_io *io);
	/*
	 * Takes the oldest finished I/O of queue off its list: stores its tag
	 * and errno (0, EIO, ENXIO/ENODEV (medium gone), EOPNOTSUPP, ENOSPC,
	 * EAGAIN/ENOMEM; other values count as EIO) and returns 1; or returns
	 * 0 when the list is empty.  Context: queue.
	 */
	int	(*io_done)(void *ctx, uint32_t queue, uint32_t *tagp,
		    int *errorp);
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

	/*
	 * Observers: the instance's devstat(9) entries and the SDT provider
	 * "xbb" (xbb(4), DIAGNOSTICS).  stat_attach() creates both devstat
	 * entries ("xbbs" N: the back-end's I/O to its store; "xbbg" N: the
	 * guest's requests) and returns 0 or an errno; the attach thread,
	 * may sleep.  stat_detach() removes them; detach, nothing in flight,
	 * may sleep.  stat_start()/stat_end() count one transaction of view
	 * XBB_SHIM_VIEW_* (every start is followed by exactly one end) of
	 * kind XBB_SHIM_KIND_* and "bytes" bytes, failed when "error" is not
	 * 0; probe() fires XBB_SHIM_PROBE_* with its arguments (xbb(4) lists
	 * what each means).  These three run in the queue's or the control
	 * context, may be called from every queue at once, and must not sleep
	 * or allocate.
	 */
	int	(*stat_attach)(void *ctx);
	void	(*stat_detach)(void *ctx);
	void	(*stat_start)(void *ctx, uint32_t view);
	void	(*stat_end)(void *ctx, uint32_t view, uint32_t kind,
		    uint64_t bytes, int error);
	void	(*probe)(void *ctx, uint32_t probe, uint32_t queue, uint64_t a0,
		    uint64_t a1, uint64_t a2, uint64_t a3);
};

/* stat_start()/stat_end() views: which devstat entry. */
#define	XBB_SHIM_VIEW_STORE	0	/* "xbbs": I/O to the store */
#define	XBB_SHIM_VIEW_GUEST	1	/* "xbbg": the guest's requests */

/* stat_end() kinds (and the "kind" probe arguments). */
#define	XBB_SHIM_KIND_READ	0
#define	XBB_SHIM_KIND_WRITE	1
#define	XBB_SHIM_KIND_FLUSH	2
#define	XBB_SHIM_KIND_DISCARD	3

/* probe() numbers; arguments after the queue as a0..a3. */
#define	XBB_SHIM_PROBE_REQUEST_START	0  /* id, kind, sector, bytes */
#define	XBB_SHIM_PROBE_REQUEST_DONE	1  /* id, kind, bytes, status */
#define	XBB_SHIM_PROBE_REQUEST_REFUSED	2  /* id, operation, status */
#define	XBB_SHIM_PROBE_DISPATCH		3  /* kind, sector, bytes */
#define	XBB_SHIM_PROBE_IO_ERROR		4  /* kind, bytes, errno */
#define	XBB_SHIM_PROBE_CONNECT		5  /* queues */
#define	XBB_SHIM_PROBE_DISCONNECT	6  /* - */
#define	XBB_SHIM_PROBE_CONNECT_ERROR	7  /* errno */
#define	XBB_SHIM_PROBES			8

/*
 * Rust entry points.  "inst" is the opaque instance xbb_rs_attach()
 * returned; every call for one instance is serialized by its sx lock (see
 * the conventions at the top).  "q" is the opaque handle of one queue,
 * from xbb_rs_queue(); xbb_rs_queue_task() is its only user.
 */
struct xbb_rs_instance;
struct xbb_rs_queue;

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
 * The handle of queue "queue" (< XBB_SHIM_MAX_QUEUES) of the instance, for
 * its task; NULL for a bad index or handle.  Valid until xbb_rs_free().
 * Context: attach thread, after xbb_rs_attach().
 */
struct xbb_rs_queue *xbb_rs_queue(struct xbb_rs_instance *inst,
	    uint32_t queue);
/*
 * The queue's task (queue task only, never two at once for one queue):
 * serves the queue while the control part has lent it — takes its
 * finished I/Os with io_done(), serves its ring (with evtchn_eoi() after
 * an event when "event" is non-zero: the filter saw one), and gives it
 * back when recalled and drained, telling the control task with
 * control_kick().  Does nothing while the queue is home.  May call
 * queue_kick() for itself to yield after a full pass.
 */
void	xbb_rs_queue_task(struct xbb_rs_queue *q, int event);
/*
 * The control task (instance lock held): takes back queues that came
 * home and acts on a queue's failure (a broken ring, a store gone).
 */
void	xbb_rs_control(struct xbb_rs_instance *inst);
/*
 * The root file system is now mounted (mountroot event handler, via the
 * control task or a thread that may sleep): opens the store, publishes
 * the offer.
 */
void	xbb_rs_root_mounted(struct xbb_rs_instance *inst);
/* xenbus_otherend_changed (watch thread): the front-end's state changed. */
void	xbb_rs_otherend_changed(struct xbb_rs_instance *inst);
/*
 * xenbus_localend_changed (watch thread): a node of the back-end directory
 * changed; path is relative to it ("/state", "/hotplug-status"), "" when
 * the directory itself was removed.
 */
void	xbb_rs_localend_changed(struct xbb_rs_instance *inst, const char *path);
/* The store's size may have changed (e.g. GEOM resize, file growth). */
void	xbb_rs_medium_changed(struct xbb_rs_instance *inst);
/*
 * newbus detach (attach thread): stops serving, recalls the queues and
 * starts draining.  Returns 0 once everything is released (every queue
 * home, rings unmapped, channels unbound, window released, store closed,
 * state Closed); EBUSY while a queue is out (its I/O drains in its task).
 * On EBUSY the C side keeps running the queue tasks and calls
 * xbb_rs_detach() again (it is idempotent and takes back the queues that
 * came home) until it returns 0; then drains the taskqueues and callouts
 * and calls xbb_rs_free().
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
