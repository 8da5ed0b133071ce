/*-
 * SPDX-License-Identifier: BSD-2-Clause
 *
 * xbb_var.h: private declarations shared by the files of the xbb C shim
 * (xbb.c: driver, interrupts, grants, XenStore, sysctls; xbb_io.c: the
 * back-end store).  Not part of the Rust interface (that is xbb_shim.h).
 */

#ifndef _XBB_VAR_H_
#define	_XBB_VAR_H_

MALLOC_DECLARE(M_XBB);

struct xbb_softc;

/* One I/O accepted by store_submit, until its queue's task takes it back. */
struct xbb_io {
	STAILQ_ENTRY(xbb_io)	 xio_link;	/* its queue's done list */
	struct xbb_softc	*xio_sc;
	uint32_t		 xio_queue;	/* the queue that submitted it */
	uint32_t		 xio_tag;	/* Rust's tag */
	uint32_t		 xio_op;	/* XBB_SHIM_IO_* */
	uint32_t		 xio_flags;	/* XBB_SHIM_IO_* flags */
	int			 xio_error;	/* first error, 0 if none */
	volatile u_int		 xio_pending;	/* bios not yet done */
	uint64_t		 xio_offset;
	uint64_t		 xio_length;
	struct task		 xio_task;	/* file back-end work */
	u_int			 xio_iovcnt;
	struct iovec		 xio_iov[];	/* READ/WRITE buffers */
};

/*
 * Threads of a store's taskqueue (file stores, and devices served through
 * bounce buffers): I/Os in flight at once.
 */
#define	XBB_STORE_THREADS	4

/* The open back-end store of one instance. */
struct xbb_store {
	struct vnode		*st_vp;		/* NULL when closed */
	struct ucred		*st_cred;
	int			 st_fflags;	/* FREAD | FWRITE, for vn_close */
	int			 st_is_dev;	/* character device, else file */
	struct cdev		*st_cdev;	/* device: the cdev */
	struct cdevsw		*st_csw;	/* device: from dev_refthread */
	int			 st_ref;	/* device: dev_refthread token */
	uint32_t		 st_sector_size;
	uint32_t		 st_phys_sector_size;
	uint32_t		 st_medium_flags; /* XBB_SHIM_MEDIUM_* */
	struct taskqueue	*st_tq;		/* file (or bounced) I/O workers */
	volatile u_int		 st_inflight;	/* I/Os not yet done */
	int			 st_bounce;	/* device I/O through st_bbuf */
	struct mtx		 st_bmtx;	/* st_bbusy */
	u_int			 st_bbusy;	/* bit i: st_bbuf[i] in use */
	void			*st_bbuf[XBB_STORE_THREADS];
};

/* Store back-end, xbb_io.c. */
int	xbb_store_open(struct xbb_softc *, const char *, const char *, int,
	    struct xbb_shim_medium *);
void	xbb_store_info(struct xbb_softc *, struct xbb_shim_medium *);
int	xbb_store_submit(struct xbb_softc *, uint32_t, uint32_t,
	    const struct xbb_shim_io *);
void	xbb_store_close(struct xbb_softc *);

/* Driver, xbb.c. */
struct xbb_store *xbb_softc_store(struct xbb_softc *);
vm_offset_t	xbb_softc_window(struct xbb_softc *, size_t, size_t);
device_t	xbb_softc_dev(struct xbb_softc *);
uint64_t	xbb_tunable(const char *, uint64_t);
void	xbb_io_done(struct xbb_io *);

#endif /* !_XBB_VAR_H_ */
