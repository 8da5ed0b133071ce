/*-
 * SPDX-License-Identifier: BSD-2-Clause
 *
 * xbb_io.c: the back-end store of an xbb instance.
 *
 * Two kinds, chosen by what the "params" path names, by the one rule every
 * xbb platform follows (StoreKind::for_node in src/host.rs): a disk is a
 * raw device unless "type" is "file" (refused), a regular file is a file
 * whatever "type" says, anything else is refused.
 *
 *  - a disk character device (GEOM provider, zvol, md): each I/O goes out
 *    as one bio per buffer piece through the device's d_strategy, without
 *    sleeping; BIO_FLUSH (ordered) for flush, BIO_DELETE for discard.  The
 *    completion (g_up thread) only records the result and wakes the task
 *    of the queue that submitted the I/O.
 *
 *  - a regular file: each I/O is a task on the store's own taskqueue with
 *    several threads, so that more than one file I/O is in flight; VOP_READ
 *    / VOP_WRITE with a uio over the window, VOP_FSYNC for flush and
 *    vn_deallocate() (hole punching) for discard.
 *
 * Buffers are the Rust side's byte ranges of the grant data window: guest
 * pages mapped by grant.  A device whose GEOM stack rests on a Xen
 * front-end disk (xbd(4), a disk this domain gets from another back-end)
 * cannot take them: its front-end grants the bio's pages to that back-end,
 * and Xen maps a grant only of a page the granting domain owns (a mapped
 * guest page is not; every such bio would fail).  Such a device, or every
 * device with hw.xbb.bounce=2, is served like a file, from the taskqueue,
 * through bounce buffers this domain owns (one per thread, allocated at
 * open): copy, one bio at a time, wait, copy.
 */

#include <sys/param.h>
#include <sys/systm.h>
#include <sys/bio.h>
#include <sys/bus.h>
#include <sys/conf.h>
#include <sys/disk.h>
#include <sys/fcntl.h>
#include <sys/filedesc.h>
#include <sys/kernel.h>
#include <sys/limits.h>
#include <sys/lock.h>
#include <sys/malloc.h>
#include <sys/mount.h>
#include <sys/mutex.h>
#include <sys/namei.h>
#include <sys/proc.h>
#include <sys/queue.h>
#include <sys/taskqueue.h>
#include <sys/ucred.h>
#include <sys/uio.h>
#include <sys/vnode.h>

#include <machine/atomic.h>

#include <geom/geom.h>

#include "xbb_shim.h"
#include "xbb_var.h"

/*
 * Each bounce buffer: the largest bio a bounced I/O sends at once (a longer
 * I/O goes out in pieces of this size, one after the other).
 */
#define	XBB_BOUNCE_SIZE		(512 * 1024)

/* Largest number of buffer pieces of one I/O. */
#define	XBB_MAX_IOV		256

/*
 * Whether provider pp, or any provider below it, is a Xen front-end disk:
 * a DISK geom named xbdN.  An unreasonably deep stack counts as one.
 */
static int
xbb_geom_on_xbd(struct g_provider *pp, int depth)
{
	struct g_consumer *cp;
	struct g_geom *gp;

	g_topology_assert();
	if (pp == NULL)
		return (0);
	if (depth > 32)
		return (1);
	gp = pp->geom;
	if (gp->class != NULL && strcmp(gp->class->name, "DISK") == 0)
		return (strncmp(gp->name, "xbd", 3) == 0);
	LIST_FOREACH(cp, &gp->consumer, consumer)
		if (xbb_geom_on_xbd(cp->provider, depth + 1))
			return (1);
	return (0);
}

/* Whether the open device's I/O must go through bounce buffers. */
static int
xbb_dev_needs_bounce(struct xbb_store *st)
{
	struct g_consumer *cp;
	uint64_t mode;
	int on;

	mode = xbb_tunable("bounce", 1);
	if (mode == 0)
		return (0);
	if (mode >= 2)
		return (1);
	/* Only GEOM's disk devices (g_dev) lead to a provider. */
	if (strcmp(st->st_csw->d_name, "g_dev") != 0)
		return (0);
	g_topology_lock();
	cp = st->st_cdev->si_drv2;
	on = cp != NULL && xbb_geom_on_xbd(cp->provider, 0);
	g_topology_unlock();
	return (on);
}

static int
xbb_store_start_threads(struct xbb_softc *sc, struct xbb_store *st)
{

	st->st_tq = taskqueue_create("xbbstore", M_WAITOK,
	    taskqueue_thread_enqueue, &st->st_tq);
	return (taskqueue_start_threads(&st->st_tq, XBB_STORE_THREADS,
	    PRIBIO, "%s store", device_get_nameunit(xbb_softc_dev(sc))));
}

static void
xbb_bounce_setup(struct xbb_softc *sc, struct xbb_store *st, const char *path)
{
	u_int i;

	mtx_init(&st->st_bmtx, "xbb bounce", NULL, MTX_DEF);
	st->st_bbusy = 0;
	for (i = 0; i < XBB_STORE_THREADS; i++)
		st->st_bbuf[i] = malloc(XBB_BOUNCE_SIZE, M_XBB, M_WAITOK);
	st->st_bounce = 1;
	device_printf(xbb_softc_dev(sc), "%s: I/O through bounce buffers "
	    "(%s)\n", path, xbb_tunable("bounce", 1) >= 2 ?
	    "hw.xbb.bounce=2" : "it rests on a Xen front-end disk, which "
	    "cannot pass on a guest's granted pages");
}

static int
xbb_dev_ioctl(struct xbb_store *st, u_long cmd, void *data)
{

	if (st->st_csw->d_ioctl == NULL)
		return (ENODEV);
	return (st->st_csw->d_ioctl(st->st_cdev, cmd, data, FREAD,
	    curthread));
}

/* Fills *m from the open store. */
static int
xbb_store_describe(struct xbb_softc *sc, struct xbb_shim_medium *m)
{
	struct xbb_store *st;
	struct diocgattr_arg attr;
	struct vattr va;
	off_t size, stripe;
	u_int secsize;
	int error;

	st = xbb_softc_store(sc);
	memset(m, 0, sizeof(*m));
	if (st->st_is_dev) {
		error = xbb_dev_ioctl(st, DIOCGSECTORSIZE, &secsize);
		if (error != 0)
			return (error);
		error = xbb_dev_ioctl(st, DIOCGMEDIASIZE, &size);
		if (error != 0)
			return (error);
		if (xbb_dev_ioctl(st, DIOCGSTRIPESIZE, &stripe) != 0 ||
		    stripe <= 0 || stripe > 65536 || !powerof2(stripe) ||
		    stripe % secsize != 0)
			stripe = secsize;
		memset(&attr, 0, sizeof(attr));
		strlcpy(attr.name, "GEOM::candelete", sizeof(attr.name));
		attr.len = sizeof(attr.value.i);
		if (xbb_dev_ioctl(st, DIOCGATTR, &attr) == 0 &&
		    attr.value.i != 0)
			m->flags |= XBB_SHIM_MEDIUM_CAN_DISCARD;
		m->flags |= XBB_SHIM_MEDIUM_IS_DEVICE;
	} else {
		vn_lock(st->st_vp, LK_SHARED | LK_RETRY);
		error = VOP_GETATTR(st->st_vp, &va, st->st_cred);
		VOP_UNLOCK(st->st_vp);
		if (error != 0)
			return (error);
		secsize = 512;
		size = va.va_size;
		stripe = MAX(va.va_blocksize, secsize);
		if (stripe > 65536 || !powerof2(stripe))
			stripe = secsize;
		m->flags |= XBB_SHIM_MEDIUM_CAN_DISCARD;
	}
	if (secsize < 512 || !powerof2(secsize) || size < 0)
		return (EINVAL);
	st->st_sector_size = secsize;
	st->st_phys_sector_size = (uint32_t)stripe;
	m->sectors = (uint64_t)size / 512;
	m->sector_size = secsize;
	m->physical_sector_size = (uint32_t)stripe;
	m->discard_granularity = (uint32_t)stripe;
	m->discard_alignment = 0;
	m->flags |= XBB_SHIM_MEDIUM_CAN_FLUSH;
	if ((st->st_fflags & FWRITE) == 0)
		m->flags |= XBB_SHIM_MEDIUM_READ_ONLY;
	st->st_medium_flags = m->flags;
	return (0);
}

int
xbb_store_open(struct xbb_softc *sc, const char *path, const char *kind,
    int writable, struct xbb_shim_medium *medium)
{
	struct xbb_store *st;
	struct nameidata nd;
	struct vnode *vp;
	char *full;
	int error, flags;

	st = xbb_softc_store(sc);
	if (st->st_vp != NULL)
		return (EBUSY);
	if (path == NULL || path[0] == '\0')
		return (EINVAL);
	/* A bare "phy" name is a device node under /dev. */
	full = malloc(MAXPATHLEN, M_XBB, M_WAITOK);
	if (path[0] != '/')
		snprintf(full, MAXPATHLEN, "/dev/%s", path);
	else
		strlcpy(full, path, MAXPATHLEN);

	flags = FREAD | (writable ? FWRITE : 0);
	/*
	 * We run in a kernel thread (the XenBus probe taskqueue or our own
	 * task), whose process may have no root or current directory yet:
	 * namei() would dereference them.  Give it the root vnode's.
	 */
	pwd_ensure_dirs();
	NDINIT(&nd, LOOKUP, FOLLOW, UIO_SYSSPACE, full);
	error = vn_open(&nd, &flags, 0, NULL);
	if (error != 0) {
		free(full, M_XBB);
		return (error);
	}
	NDFREE_PNBUF(&nd);
	free(full, M_XBB);
	vp = nd.ni_vp;

	st->st_vp = vp;
	st->st_fflags = flags;
	st->st_cred = crhold(curthread->td_ucred);
	/* StoreKind::for_node: the node decides, "type" can only refuse. */
	if (vp->v_type == VCHR && vn_isdisk(vp) &&
	    strcmp(kind, "file") != 0) {
		st->st_is_dev = 1;
		st->st_cdev = vp->v_rdev;
		st->st_csw = dev_refthread(st->st_cdev, &st->st_ref);
		if (st->st_csw == NULL)
			error = ENXIO;
		else if (xbb_dev_needs_bounce(st)) {
			xbb_bounce_setup(sc, st, path);
			error = xbb_store_start_threads(sc, st);
		}
	} else if (vp->v_type == VREG) {
		/*
		 * A regular file whatever "type" says: libxl writes "phy" for
		 * every raw disk it hands to a back-end in another domain
		 * (driver domains) and for file targets on a FreeBSD dom0.
		 */
		st->st_is_dev = 0;
		error = xbb_store_start_threads(sc, st);
	} else
		error = EINVAL;
	VOP_UNLOCK(vp);
	if (error == 0)
		error = xbb_store_describe(sc, medium);
	if (error != 0)
		xbb_store_close(sc);
	return (error);
}

void
xbb_store_info(struct xbb_softc *sc, struct xbb_shim_medium *medium)
{

	if (xbb_softc_store(sc)->st_vp == NULL ||
	    xbb_store_describe(sc, medium) != 0)
		memset(medium, 0, sizeof(*medium));
}

void
xbb_store_close(struct xbb_softc *sc)
{
	struct xbb_store *st;
	u_int i;

	st = xbb_softc_store(sc);
	if (st->st_tq != NULL) {
		taskqueue_drain_all(st->st_tq);
		taskqueue_free(st->st_tq);
		st->st_tq = NULL;
	}
	if (st->st_bounce) {
		for (i = 0; i < XBB_STORE_THREADS; i++) {
			free(st->st_bbuf[i], M_XBB);
			st->st_bbuf[i] = NULL;
		}
		mtx_destroy(&st->st_bmtx);
		st->st_bounce = 0;
	}
	if (st->st_csw != NULL) {
		dev_relthread(st->st_cdev, st->st_ref);
		st->st_csw = NULL;
	}
	st->st_cdev = NULL;
	if (st->st_vp != NULL) {
		(void)vn_close(st->st_vp, st->st_fflags, st->st_cred,
		    curthread);
		st->st_vp = NULL;
	}
	if (st->st_cred != NULL) {
		crfree(st->st_cred);
		st->st_cred = NULL;
	}
	st->st_is_dev = 0;
}

/* Device back-end ------------------------------------------------------ */

/* One bio piece finished (g_up thread): record, wake the task when last. */
static void
xbb_bio_done(struct bio *bp)
{
	struct xbb_io *xio;

	xio = bp->bio_caller1;
	if ((bp->bio_flags & BIO_ERROR) != 0 && bp->bio_error != 0)
		(void)atomic_cmpset_int((volatile u_int *)&xio->xio_error, 0,
		    (u_int)bp->bio_error);
	g_destroy_bio(bp);
	if (atomic_fetchadd_int(&xio->xio_pending, -1) == 1)
		xbb_io_done(xio);
}

static int
xbb_dev_submit(struct xbb_softc *sc, struct xbb_io *xio)
{
	struct xbb_store *st;
	struct bio *bp, *head, *next;
	off_t off;
	u_int i, n;

	st = xbb_softc_store(sc);
	n = xio->xio_op == XBB_SHIM_IO_READ || xio->xio_op == XBB_SHIM_IO_WRITE ?
	    xio->xio_iovcnt : 1;
	/*
	 * Allocate every bio first, chained through bio_caller2, so that all
	 * go out or none does.
	 */
	head = NULL;
	for (i = 0; i < n; i++) {
		bp = g_new_bio();
		if (bp == NULL) {
			for (; head != NULL; head = next) {
				next = head->bio_caller2;
				g_destroy_bio(head);
			}
			return (ENOMEM);
		}
		bp->bio_caller2 = head;
		head = bp;
	}
	/* The chain is in reverse order: fill it from the last piece. */
	off = (off_t)(xio->xio_offset + xio->xio_length);
	for (bp = head, i = n; bp != NULL; bp = bp->bio_caller2) {
		i--;
		bp->bio_dev = st->st_cdev;
		bp->bio_done = xbb_bio_done;
		bp->bio_caller1 = xio;
		switch (xio->xio_op) {
		case XBB_SHIM_IO_READ:
		case XBB_SHIM_IO_WRITE:
			bp->bio_cmd = xio->xio_op == XBB_SHIM_IO_READ ?
			    BIO_READ : BIO_WRITE;
			off -= (off_t)xio->xio_iov[i].iov_len;
			bp->bio_offset = off;
			bp->bio_data = xio->xio_iov[i].iov_base;
			bp->bio_length = xio->xio_iov[i].iov_len;
			break;
		case XBB_SHIM_IO_FLUSH:
			bp->bio_cmd = BIO_FLUSH;
			bp->bio_flags |= BIO_ORDERED;
			bp->bio_offset = 0;
			bp->bio_length = 0;
			break;
		case XBB_SHIM_IO_DISCARD:
			bp->bio_cmd = BIO_DELETE;
			bp->bio_offset = (off_t)xio->xio_offset;
			bp->bio_length = (off_t)xio->xio_length;
			break;
		}
		bp->bio_bcount = bp->bio_length;
	}
	xio->xio_pending = n;
	atomic_add_int(&st->st_inflight, 1);
	for (bp = head; bp != NULL; bp = next) {
		next = bp->bio_caller2;
		bp->bio_caller2 = NULL;
		(*st->st_csw->d_strategy)(bp);
	}
	return (0);
}

/* Device back-end through bounce buffers ---------------------------------- */

/* One bio, waited for in this (store taskqueue) thread. */
static int
xbb_dev_sync(struct xbb_store *st, int cmd, off_t off, void *data, off_t len)
{
	struct bio *bp;
	int error;

	bp = g_alloc_bio();
	bp->bio_dev = st->st_cdev;
	bp->bio_cmd = cmd;
	if (cmd == BIO_FLUSH)
		bp->bio_flags |= BIO_ORDERED;
	bp->bio_offset = off;
	bp->bio_data = data;
	bp->bio_length = len;
	bp->bio_bcount = len;
	bp->bio_done = NULL;		/* biodone() wakes biowait() */
	(*st->st_csw->d_strategy)(bp);
	error = biowait(bp, "xbbbnc");
	g_destroy_bio(bp);
	return (error);
}

/* A free bounce buffer: one always is, a thread holds at most one. */
static u_int
xbb_bounce_get(struct xbb_store *st)
{
	u_int i;

	mtx_lock(&st->st_bmtx);
	for (;;) {
		for (i = 0; i < XBB_STORE_THREADS; i++)
			if ((st->st_bbusy & (1u << i)) == 0) {
				st->st_bbusy |= 1u << i;
				mtx_unlock(&st->st_bmtx);
				return (i);
			}
		mtx_sleep(&st->st_bbusy, &st->st_bmtx, PRIBIO, "xbbbuf", 0);
	}
}

static void
xbb_bounce_put(struct xbb_store *st, u_int i)
{

	mtx_lock(&st->st_bmtx);
	st->st_bbusy &= ~(1u << i);
	wakeup_one(&st->st_bbusy);
	mtx_unlock(&st->st_bmtx);
}

/*
 * The uio of a read or write over the I/O's iovecs (kernel addresses in
 * the window): UIO_READ for a guest's read, UIO_WRITE for its write.
 */
static void
xbb_io_uio(struct xbb_io *xio, struct uio *uio)
{

	memset(uio, 0, sizeof(*uio));
	uio->uio_iov = xio->xio_iov;
	uio->uio_iovcnt = xio->xio_iovcnt;
	uio->uio_offset = (off_t)xio->xio_offset;
	uio->uio_resid = (ssize_t)xio->xio_length;
	uio->uio_segflg = UIO_SYSSPACE;
	uio->uio_rw = xio->xio_op == XBB_SHIM_IO_READ ? UIO_READ : UIO_WRITE;
	uio->uio_td = curthread;
}

static int
xbb_bounce_io(struct xbb_store *st, struct xbb_io *xio)
{
	struct uio uio;
	off_t off, n, resid;
	char *buf;
	u_int slot;
	int cmd, error;

	switch (xio->xio_op) {
	case XBB_SHIM_IO_FLUSH:
		return (xbb_dev_sync(st, BIO_FLUSH, 0, NULL, 0));
	case XBB_SHIM_IO_DISCARD:
		return (xbb_dev_sync(st, BIO_DELETE, (off_t)xio->xio_offset,
		    NULL, (off_t)xio->xio_length));
	case XBB_SHIM_IO_READ:
	case XBB_SHIM_IO_WRITE:
		break;
	default:
		return (EOPNOTSUPP);
	}
	/* uiomove() copies buffer -> window on UIO_READ, back on UIO_WRITE. */
	xbb_io_uio(xio, &uio);
	cmd = xio->xio_op == XBB_SHIM_IO_READ ? BIO_READ : BIO_WRITE;
	slot = xbb_bounce_get(st);
	buf = st->st_bbuf[slot];
	off = (off_t)xio->xio_offset;
	resid = (off_t)xio->xio_length;
	error = 0;
	while (error == 0 && resid > 0) {
		n = MIN(resid, XBB_BOUNCE_SIZE);
		if (cmd == BIO_WRITE)
			error = uiomove(buf, (int)n, &uio);
		if (error == 0)
			error = xbb_dev_sync(st, cmd, off, buf, n);
		if (error == 0 && cmd == BIO_READ)
			error = uiomove(buf, (int)n, &uio);
		off += n;
		resid -= n;
	}
	xbb_bounce_put(st, slot);
	return (error);
}

/* File back-end --------------------------------------------------------- */

static void
xbb_file_task(void *arg, int pending __unused)
{
	struct xbb_io *xio;
	struct xbb_store *st;
	struct vnode *vp;
	struct mount *mp;
	struct uio uio;
	off_t off, len;
	int error;

	xio = arg;
	st = xbb_softc_store(xio->xio_sc);
	if (st->st_is_dev) {
		/* A device served through bounce buffers. */
		xio->xio_error = xbb_bounce_io(st, xio);
		xbb_io_done(xio);
		return;
	}
	vp = st->st_vp;
	error = 0;
	switch (xio->xio_op) {
	case XBB_SHIM_IO_READ:
	case XBB_SHIM_IO_WRITE:
		xbb_io_uio(xio, &uio);
		if (xio->xio_op == XBB_SHIM_IO_READ) {
			vn_lock(vp, LK_SHARED | LK_RETRY);
			error = VOP_READ(vp, &uio, 0, st->st_cred);
			VOP_UNLOCK(vp);
		} else {
			mp = NULL;
			error = vn_start_write(vp, &mp, V_WAIT);
			if (error != 0)
				break;
			vn_lock(vp, LK_EXCLUSIVE | LK_RETRY);
			error = VOP_WRITE(vp, &uio, 0, st->st_cred);
			VOP_UNLOCK(vp);
			vn_finished_write(mp);
		}
		/* A short read (past end of file) or write is an error. */
		if (error == 0 && uio.uio_resid != 0)
			error = EIO;
		break;
	case XBB_SHIM_IO_FLUSH:
		mp = NULL;
		error = vn_start_write(vp, &mp, V_WAIT);
		if (error != 0)
			break;
		vn_lock(vp, LK_EXCLUSIVE | LK_RETRY);
		error = VOP_FSYNC(vp, MNT_WAIT, curthread);
		VOP_UNLOCK(vp);
		vn_finished_write(mp);
		break;
	case XBB_SHIM_IO_DISCARD:
		off = (off_t)xio->xio_offset;
		len = (off_t)xio->xio_length;
		while (error == 0 && len > 0)
			error = vn_deallocate(vp, &off, &len, 0, 0,
			    st->st_cred, NOCRED);
		break;
	default:
		error = EOPNOTSUPP;
		break;
	}
	xio->xio_error = error;
	xbb_io_done(xio);
}

/* Submission ------------------------------------------------------------ */

int
xbb_store_submit(struct xbb_softc *sc, uint32_t queue, uint32_t tag,
    const struct xbb_shim_io *io)
{
	struct xbb_store *st;
	struct xbb_io *xio;
	vm_offset_t va;
	uint64_t total;
	u_int i, iovcnt;
	int error;

	st = xbb_softc_store(sc);
	if (st->st_vp == NULL)
		return (ENXIO);
	iovcnt = 0;
	switch (io->op) {
	case XBB_SHIM_IO_READ:
	case XBB_SHIM_IO_WRITE:
		if (io->iovcnt == 0 || io->iovcnt > XBB_MAX_IOV)
			return (EINVAL);
		if (io->op == XBB_SHIM_IO_WRITE &&
		    (st->st_fflags & FWRITE) == 0)
			return (EROFS);
		iovcnt = io->iovcnt;
		break;
	case XBB_SHIM_IO_FLUSH:
		break;
	case XBB_SHIM_IO_DISCARD:
		if ((st->st_medium_flags & XBB_SHIM_MEDIUM_CAN_DISCARD) == 0 ||
		    (io->flags & XBB_SHIM_IO_SECURE) != 0)
			return (EOPNOTSUPP);
		if ((st->st_fflags & FWRITE) == 0)
			return (EROFS);
		if (io->length == 0 || io->length > (uint64_t)OFF_MAX)
			return (EINVAL);
		break;
	default:
		return (EOPNOTSUPP);
	}
	if (io->offset > (uint64_t)OFF_MAX)
		return (EINVAL);

	/* Never sleep here: a queue's task is serving its ring. */
	xio = malloc(sizeof(*xio) + iovcnt * sizeof(struct iovec), M_XBB,
	    M_NOWAIT | M_ZERO);
	if (xio == NULL)
		return (ENOMEM);
	xio->xio_sc = sc;
	xio->xio_queue = queue;
	xio->xio_tag = tag;
	xio->xio_op = io->op;
	xio->xio_flags = io->flags;
	xio->xio_offset = io->offset;
	xio->xio_length = io->length;
	xio->xio_iovcnt = iovcnt;
	total = 0;
	for (i = 0; i < iovcnt; i++) {
		va = xbb_softc_window(sc, io->iov[i].window_offset,
		    io->iov[i].len);
		if (va == 0 || io->iov[i].len == 0) {
			free(xio, M_XBB);
			return (EINVAL);
		}
		xio->xio_iov[i].iov_base = (void *)va;
		xio->xio_iov[i].iov_len = io->iov[i].len;
		total += io->iov[i].len;
	}
	if (iovcnt != 0) {
		if (total != io->length || total > (uint64_t)OFF_MAX - io->offset) {
			free(xio, M_XBB);
			return (EINVAL);
		}
	}

	if (st->st_is_dev && !st->st_bounce) {
		error = xbb_dev_submit(sc, xio);
		if (error != 0)
			free(xio, M_XBB);
		return (error);
	}
	atomic_add_int(&st->st_inflight, 1);
	TASK_INIT(&xio->xio_task, 0, xbb_file_task, xio);
	taskqueue_enqueue(st->st_tq, &xio->xio_task);
	return (0);
}
