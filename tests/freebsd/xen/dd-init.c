/*
 * xbb in a real Xen host: /sbin/init of a FreeBSD PVH guest.
 *
 * A freestanding, static FreeBSD/amd64 program (raw system calls, no libc,
 * the FreeBSD ABI note), like tests/freebsd/init.c.  The system call
 * numbers, ioctl encodings and structure layouts are the kernel's published
 * ABI (sys/kern/syscalls.master, sys/sys/ioccom.h, sys/sys/mdioctl.h,
 * sys/sys/disk.h, sys/sys/sysctl.h, xen/io/xs_wire.h).
 *
 * The kernel environment variable xbbdd.mode picks what the guest is:
 *
 *   serve  (default) a driver domain: kldload xbb.ko (or the back-end
 *          xbbdd.driver names: xbb, xbbd for FreeBSD's own blkback built
 *          as xbbd.ko by scripts/xbbd-kmod.sh, or none), create a
 *          swap-backed md(4) disk and a file on a tmpfs, announce READY,
 *          then serve the disks of other guests whose disk lines name this
 *          domain as backend=, printing every dev.xbb.* (dev.xbbd.*) sysctl
 *          that changed every two seconds.  dom0 writes commands to
 *          data/xbb-cmd in this domain's XenStore directory: "dump",
 *          "devstat", "load xbb|xbbd" and "unload xbb|xbbd" (switch the
 *          back-end between guests; answered in data/xbb-state), and
 *          "unload": kldunload every back-end loaded (must succeed once
 *          the guests are gone), detach the md disk (fails while a back-end
 *          still holds it), report, power off.
 *
 *   front  the other way round: this guest's own block front-end (xbd) on
 *          its second disk, /dev/xbd1, served from dom0; write a pattern
 *          over the whole disk with large raw writes, flush, read it back
 *          and compare every byte; print dev.xbd.1.* (negotiated ring, segments,
 *          features), report, power off.
 *
 * Console lines (the Xen console, logged by xenconsoled in dom0):
 *   XBB-DD: ok <what>
 *   XBB-DD: FAIL <what>: <why>
 *   XBB-DD: info <what>
 *   XBB-DD: ready <details>          (serve: the disks exist, xbb.ko loaded)
 *   XBB-DD: sysctl <name>: <value>   (a dev.xbb / dev.xbd leaf, when changed)
 *   XBB-DD: done mode=M pass=N fail=M us=T
 * The same state goes to XenStore, data/xbb-state in the domain's directory
 * ("ready", "loaded X", "unloaded X", "load-failed X", "unload-failed X",
 * "unloaded", "done pass=N fail=M").
 *
 * XBB_FREEBSD_VERSION_STR (the ABI note) comes from the compiler command
 * line.
 */

#ifndef XBB_FREEBSD_VERSION_STR
#define	XBB_FREEBSD_VERSION_STR	"1500000"
#endif

#define	XBB_INIT_TAG	"XBB-DD: "
#include "../freestanding.h"

/* System call numbers (sys/kern/syscalls.master). */


/* sys/sys/ioccom.h */
#define	IOC_VOID	0x20000000UL
#define	IOC_OUT		0x40000000UL
#define	IOC_IN		0x80000000UL
#define	IOC_INOUT	(IOC_IN | IOC_OUT)
#define	IOCPARM_MASK	0x1fffUL
#define	IOC(inout, g, n, len)						\
	((inout) | (((unsigned long)(len) & IOCPARM_MASK) << 16) |	\
	    ((unsigned long)(g) << 8) | (unsigned long)(n))

/* sys/sys/mdioctl.h: struct md_ioctl on amd64. */
enum { MD_MALLOC, MD_PRELOAD, MD_VNODE, MD_SWAP, MD_NULL };
#define	MD_AUTOUNIT	0x04
struct md_ioctl {
	unsigned	md_version;
	unsigned	md_unit;
	int		md_type;
	char		*md_file;
	long		md_mediasize;
	unsigned	md_sectorsize;
	unsigned	md_options;
	uint64_t	md_base;
	int		md_fwheads;
	int		md_fwsectors;
	char		*md_label;
	int		md_pad[96];
};
#define	MDIOCATTACH	IOC(IOC_INOUT, 'm', 0, sizeof(struct md_ioctl))
#define	MDIOCDETACH	IOC(IOC_INOUT, 'm', 1, sizeof(struct md_ioctl))

/* sys/sys/disk.h */
#define	DIOCGSECTORSIZE	IOC(IOC_OUT, 'd', 128, sizeof(unsigned))
#define	DIOCGMEDIASIZE	IOC(IOC_OUT, 'd', 129, sizeof(long))
#define	DIOCGFLUSH	IOC(IOC_VOID, 'd', 135, 0)

/* sysctl meta-OIDs and types (sys/sys/sysctl.h). */
#define	CTLTYPE_MASK		0xfu
#define	CTLTYPE_NODE		1
#define	CTLTYPE_INT		2
#define	CTLTYPE_STRING		3
#define	CTLTYPE_S64		4
#define	CTLTYPE_UINT		6
#define	CTLTYPE_LONG		7
#define	CTLTYPE_ULONG		8
#define	CTLTYPE_U64		9
#define	CTLTYPE_U8		0xa
#define	CTLTYPE_U16		0xb
#define	CTLTYPE_U32		0xf

/* xen/io/xs_wire.h */
#define	XS_DIRECTORY	1
#define	XS_READ		2
#define	XS_RM		13
#define	XS_WRITE	11
#define	XS_ERROR	16
struct xsd_sockmsg {
	uint32_t	type;
	uint32_t	req_id;
	uint32_t	tx_id;
	uint32_t	len;
};


struct iovec_buf {
	const void	*base;
	size_t		len;
};

static void
sleep_ms(unsigned ms)
{
	struct timespec_buf ts;

	ts.sec = ms / 1000;
	ts.nsec = (long)(ms % 1000) * 1000000L;
	SC(SYS_nanosleep, &ts, 0, 0, 0, 0, 0);
}

static void
power_off(const char *mode, uint64_t start);

/* ------------------------------------------------------------------ */
/* XenStore through /dev/xen/xenstore: one request, one reply. */

static int xs_fd = -1;
static uint32_t xs_req;

static int
xs_open(void)
{
	long fd;

	if (xs_fd >= 0)
		return (0);
	fd = SC(SYS_open, "/dev/xen/xenstore", O_RDWR, 0, 0, 0, 0);
	if (fd < 0)
		return ((int)fd);
	xs_fd = (int)fd;
	return (0);
}

/*
 * Sends (type, payload) and reads the reply into out (NUL-terminated).
 * Returns the reply's payload length, or a negative value: -errno of a
 * system call, or -1000 for an XS_ERROR reply (its text is in out).
 */
static long
xs_call(uint32_t type, const char *payload, size_t plen, char *out,
    size_t outsize)
{
	static char buf[4096 + sizeof(struct xsd_sockmsg)];
	struct xsd_sockmsg hdr;
	size_t have, want;
	long r;

	if (xs_open() != 0)
		return (-ENOENT);
	if (plen > 4096)
		return (-7);
	hdr.type = type;
	hdr.req_id = ++xs_req;
	hdr.tx_id = 0;
	hdr.len = (uint32_t)plen;
	memcpy(buf, &hdr, sizeof(hdr));
	memcpy(buf + sizeof(hdr), payload, plen);
	r = SC(SYS_write, xs_fd, buf, sizeof(hdr) + plen, 0, 0, 0);
	if (r < 0)
		return (r);
	have = 0;
	want = sizeof(hdr);
	while (have < want) {
		r = SC(SYS_read, xs_fd, buf + have, sizeof(buf) - have, 0, 0,
		    0);
		if (r <= 0)
			return (r < 0 ? r : -5);
		have += (size_t)r;
		if (have >= sizeof(hdr)) {
			memcpy(&hdr, buf, sizeof(hdr));
			if (hdr.len > sizeof(buf) - sizeof(hdr))
				return (-7);
			want = sizeof(hdr) + hdr.len;
		}
	}
	if (outsize > 0) {
		size_t n = hdr.len < outsize - 1 ? hdr.len : outsize - 1;

		memcpy(out, buf + sizeof(hdr), n);
		out[n] = '\0';
	}
	return (hdr.type == XS_ERROR ? -1000 : (long)hdr.len);
}

/* Reads a key relative to this domain's directory; 0 on success. */
static int
xs_read(const char *key, char *out, size_t outsize)
{
	return (xs_call(XS_READ, key, slen(key) + 1, out, outsize) >= 0 ? 0 :
	    -1);
}

/*
 * Lists the children of a key relative to this domain's directory into
 * out (NUL-separated names); returns the list's length, or -1.
 */
static long
xs_directory(const char *key, char *out, size_t outsize)
{
	long r = xs_call(XS_DIRECTORY, key, slen(key) + 1, out, outsize);

	return (r >= 0 ? (r < (long)outsize ? r : (long)outsize - 1) : -1);
}

static int
xs_rm(const char *key)
{
	char reply[32];

	return (xs_call(XS_RM, key, slen(key) + 1, reply, sizeof(reply)) >= 0 ?
	    0 : -1);
}

static int
xs_write(const char *key, const char *value)
{
	char payload[512];
	char reply[32];
	size_t k = slen(key), v = slen(value);

	if (k + 1 + v > sizeof(payload))
		return (-1);
	memcpy(payload, key, k + 1);
	memcpy(payload + k + 1, value, v);
	return (xs_call(XS_WRITE, payload, k + 1 + v, reply, sizeof(reply)) >=
	    0 ? 0 : -1);
}

/* The value of one leaf as text; 0 on success. */
static int
leaf_text(const int *oid, size_t oidlen, char *out, size_t outsize)
{
	unsigned char fmt[64];
	union {
		uint64_t	u64;
		uint32_t	u32;
		unsigned short	u16;
		uint8_t		u8;
		char		s[256];
	} v;
	uint32_t kind;
	size_t len;
	long r;

	len = sizeof(fmt);
	if (meta(CTL_SYSCTL_OIDFMT, oid, oidlen, fmt, &len) != 0 || len < 4)
		return (-1);
	memcpy(&kind, fmt, 4);
	memset(&v, 0, sizeof(v));
	len = sizeof(v) - 1;
	r = SC(SYS___sysctl, oid, oidlen, &v, &len, 0, 0);
	if (r != 0)
		return (-1);
	linelen = 0;
	switch (kind & CTLTYPE_MASK) {
	case CTLTYPE_STRING:
		v.s[len < sizeof(v.s) ? len : sizeof(v.s) - 1] = '\0';
		put(v.s);
		break;
	case CTLTYPE_INT:
		puti((long)(int)v.u32);
		break;
	case CTLTYPE_UINT:
	case CTLTYPE_U32:
		putu(v.u32);
		break;
	case CTLTYPE_LONG:
	case CTLTYPE_S64:
		puti((long)v.u64);
		break;
	case CTLTYPE_ULONG:
	case CTLTYPE_U64:
		putu(v.u64);
		break;
	case CTLTYPE_U8:
		putu(v.u8);
		break;
	case CTLTYPE_U16:
		putu(v.u16);
		break;
	default:
		put("?");
		break;
	}
	line[linelen] = '\0';
	scopy(out, outsize, line);
	linelen = 0;
	return (0);
}

/* The last value printed of each leaf, to print only changes. */
#define	NSEEN	768
static struct {
	char	name[64];
	char	value[64];
} seen[NSEEN];
static unsigned nseen;

/*
 * The number of instances last reported of each tree dump_tree() walks
 * ("dev.xbb", "dev.xbbd", "dev.xbd.1"), to report only changes.
 */
static struct {
	const char	*top;
	unsigned	units;
} last_units_of[4];

static unsigned *
last_units_for(const char *top)
{
	unsigned k;

	for (k = 0; k < 4 && last_units_of[k].top != 0; k++)
		if (seq(last_units_of[k].top, top))
			return (&last_units_of[k].units);
	if (k == 4)
		k = 3;
	last_units_of[k].top = top;
	last_units_of[k].units = ~0u;
	return (&last_units_of[k].units);
}

/*
 * Prints every leaf under `top` (e.g. "dev.xbb") whose value changed since
 * the last call (all of them when `all`).  Returns the number of leaves.
 */
static unsigned
dump_tree(const char *top, int all)
{
	int base[MAXOID], cur[MAXOID], next[MAXOID];
	size_t baselen, curlen, nextlen, i, len;
	char name[128], value[64];
	size_t n;
	unsigned leaves = 0, units = 0, k;
	unsigned *last_units = last_units_for(top);

	if (name2oid(top, base, &baselen) != 0) {
		if (*last_units != 0 && !all) {
			begin("instances");
			put(top);
			put(" n=0");
			end();
		}
		*last_units = 0;
		return (0);
	}
	for (i = 0; i < baselen; i++)
		cur[i] = base[i];
	curlen = baselen;
	while ((nextlen = sysctl_next_under(base, baselen, cur, curlen,
	    next)) != 0) {
		for (i = 0; i < nextlen; i++)
			cur[i] = next[i];
		curlen = nextlen;
		len = sizeof(name) - 1;
		if (meta(CTL_SYSCTL_NAME, next, nextlen, name, &len) != 0)
			continue;
		name[len < sizeof(name) ? len : sizeof(name) - 1] = '\0';
		if (leaf_text(next, nextlen, value, sizeof(value)) != 0)
			continue;
		leaves++;
		n = slen(name);
		if (n > 8 && seq(name + n - 8, ".%driver"))
			units++;
		for (k = 0; k < nseen; k++)
			if (seq(seen[k].name, name))
				break;
		if (k < nseen && !all && seq(seen[k].value, value))
			continue;
		if (k == nseen && nseen < NSEEN) {
			scopy(seen[k].name, sizeof(seen[k].name), name);
			nseen++;
		}
		if (k < nseen)
			scopy(seen[k].value, sizeof(seen[k].value), value);
		begin("sysctl");
		put(name);
		put(": ");
		put(value);
		end();
	}
	if (units != *last_units) {
		begin("instances");
		put(top);
		put(" n=");
		putu(units);
		end();
		*last_units = units;
	}
	return (leaves);
}

static void
banner(const char *mode)
{
	char buf[256];
	size_t len;

	if (kernel_version(buf, sizeof(buf)) == 0) {
		begin("info");
		put("mode ");
		put(mode);
		put(" kernel ");
		put(buf);
		end();
	}
	len = sizeof(buf) - 1;
	if (sysctl_read("kern.vm_guest", buf, &len) == 0) {
		buf[len < sizeof(buf) ? len : sizeof(buf) - 1] = '\0';
		begin("info");
		put("kern.vm_guest ");
		put(buf);
		end();
	}
}

/* ------------------------------------------------------------------ */
/* Driver domain */

#define	FILE_PATH	"/mnt/xbb-file.img"
#define	EIO		5	/* sys/sys/errno.h */
#define	EEXIST		17	/* sys/sys/errno.h */

/*
 * The back-ends this driver domain can run, one kld each: xbb.ko, and
 * FreeBSD's own blkback built as xbbd.ko (scripts/xbbd-kmod.sh; on the
 * root image only when it was built).  Both probe xenbusb_back's "vbd"
 * devices; xbbd claims them with 0 and xbb with BUS_PROBE_LOW_PRIORITY, so
 * while both are loaded every new device goes to xbbd.  A driver loaded
 * later is only offered devices that have none: the running instances
 * keep theirs.  dom0 switches drivers between guests with "unload X" and
 * "load Y" in data/xbb-cmd.
 */
struct backend {
	const char	*name;	/* newbus driver and kld: "xbb", "xbbd" */
	const char	*path;	/* the kld on the root image */
	const char	*file;	/* its name for kldfind(2) */
	const char	*tree;	/* its sysctl tree */
	long		id;	/* kld id while loaded, else -1 */
};
static struct backend backends[] = {
	{ "xbb", "/boot/modules/xbb.ko", "xbb.ko", "dev.xbb", -1 },
	{ "xbbd", "/boot/modules/xbbd.ko", "xbbd.ko", "dev.xbbd", -1 },
};
#define	NBACKENDS	(sizeof(backends) / sizeof(backends[0]))

static struct backend *
backend_named(const char *name)
{
	unsigned i;

	for (i = 0; i < NBACKENDS; i++)
		if (seq(backends[i].name, name))
			return (&backends[i]);
	return (0);
}

/* A FAIL line "FAIL <verb> <object>: ..." (fail() ends its subject). */
static void
fail2(const char *verb, const char *object)
{
	char what[96];

	scopy(what, sizeof(what), verb);
	cat(what, sizeof(what), object);
	fail(what);
}

/* kldload of b: an ok or FAIL line; 0 or a negative errno. */
static long
backend_load(struct backend *b)
{
	uint64_t t0;
	long id;

	if (b->id >= 0) {
		fail2("kldload ", b->path);
		put("already loaded, id ");
		puti(b->id);
		end();
		return (-EEXIST);
	}
	t0 = now_us();
	id = SC(SYS_kldload, b->path, 0, 0, 0, 0, 0);
	if (id < 0) {
		fail2("kldload ", b->path);
		put("errno ");
		puti(-id);
		end();
		return (id);
	}
	b->id = id;
	ok("kldload ");
	put(b->path);
	put(" id ");
	puti(id);
	put(" in ");
	putu(now_us() - t0);
	put(" us");
	end();
	return (0);
}

/*
 * kldunload of b, which must succeed while no instance of it is attached,
 * then kldfind(2) must not find it: ok or FAIL lines; 0 or a negative
 * errno.
 */
static long
backend_unload(struct backend *b)
{
	uint64_t t0;
	long r;

	if (b->id < 0) {
		fail2("kldunload ", b->file);
		put("not loaded");
		end();
		return (-ENOENT);
	}
	t0 = now_us();
	r = SC(SYS_kldunload, b->id, 0, 0, 0, 0, 0);
	if (r != 0) {
		fail2("kldunload ", b->file);
		put("errno ");
		puti(-r);
		end();
		return (r);
	}
	b->id = -1;
	ok("kldunload ");
	put(b->file);
	put(" in ");
	putu(now_us() - t0);
	put(" us");
	end();
	r = SC(SYS_kldfind, b->file, 0, 0, 0, 0, 0);
	if (r == -ENOENT) {
		ok(b->file);
		put(" gone after kldunload");
		end();
	} else {
		fail2("kldfind ", b->file);
		put("still there after kldunload: ");
		puti(r);
		end();
	}
	return (0);
}

/* Runs one md(4) control request on /dev/mdctl. */
static long
md_ctl(unsigned long cmd, struct md_ioctl *mdio)
{
	long fd, r;

	fd = SC(SYS_open, "/dev/mdctl", O_RDWR, 0, 0, 0, 0);
	if (fd < 0)
		return (fd);
	r = SC(SYS_ioctl, fd, cmd, mdio, 0, 0, 0);
	SC(SYS_close, fd, 0, 0, 0, 0, 0);
	return (r);
}

static long fill_dev(const char *, uint64_t, uint64_t);

static long
make_md(uint64_t bytes, unsigned *unit)
{
	struct md_ioctl mdio;
	long r;

	memset(&mdio, 0, sizeof(mdio));
	mdio.md_version = 0;
	mdio.md_type = MD_SWAP;
	mdio.md_mediasize = (long)bytes;
	mdio.md_sectorsize = 512;
	mdio.md_options = MD_AUTOUNIT;
	r = md_ctl(MDIOCATTACH, &mdio);
	if (r == 0)
		*unit = mdio.md_unit;
	return (r);
}

static long
kill_md(unsigned unit)
{
	struct md_ioctl mdio;

	memset(&mdio, 0, sizeof(mdio));
	mdio.md_version = 0;
	mdio.md_unit = unit;
	return (md_ctl(MDIOCDETACH, &mdio));
}

static long
make_file(uint64_t bytes)
{
	struct iovec_buf iov[4];
	long r, fd;

	iov[0].base = "fstype";
	iov[0].len = sizeof("fstype");
	iov[1].base = "tmpfs";
	iov[1].len = sizeof("tmpfs");
	iov[2].base = "fspath";
	iov[2].len = sizeof("fspath");
	iov[3].base = "/mnt";
	iov[3].len = sizeof("/mnt");
	r = SC(SYS_nmount, iov, 4, 0, 0, 0, 0);
	if (r != 0)
		return (r - 100000);
	fd = SC(SYS_open, FILE_PATH, O_RDWR | O_CREAT, 0600, 0, 0, 0);
	if (fd < 0)
		return (fd - 200000);
	r = SC(SYS_ftruncate, fd, (long)bytes, 0, 0, 0, 0);
	SC(SYS_close, fd, 0, 0, 0, 0, 0);
	return (r != 0 ? r - 300000 : 0);
}

static uint64_t
kenv_u64(const char *name, uint64_t def)
{
	char value[32];
	uint64_t v = 0;
	long r;
	int i;

	memset(value, 0, sizeof(value));
	r = SC(SYS_kenv, KENV_GET, name, value, sizeof(value) - 1, 0, 0);
	if (r < 0 || value[0] < '0' || value[0] > '9')
		return (def);
	for (i = 0; value[i] >= '0' && value[i] <= '9'; i++)
		v = v * 10 + (uint64_t)(value[i] - '0');
	return (v);
}

/* Whether node dir/leaf reads exactly want. */
static int
node_is(const char *dir, const char *leaf, const char *want)
{
	char key[96], val[16];

	key[0] = '\0';
	cat(key, sizeof(key), dir);
	cat(key, sizeof(key), leaf);
	return (xs_read(key, val, sizeof(val)) == 0 && seq(val, want));
}

/*
 * What FreeBSD's hotplug script for disks (tools/hotplug/FreeBSD/block in
 * Xen, run by xl devd for a back-end directory with a "script" node) does,
 * and all it does: copy "params" into "physical-device-path".  FreeBSD's
 * blkback, xbbd, registers a watch on that node at attach and opens
 * nothing before it appears (it stays in InitWait), then writes
 * "hotplug-status" itself once the disk is open.  xbb.ko opens "params"
 * itself, and with a "script" node waits in InitWait until the node
 * appears (or "hotplug-status" = "connected", what Linux's scripts write).
 * Nobody here writes "hotplug-status" for it, as nobody does in a real
 * FreeBSD domain.  Once per back-end directory.
 */
static void
physical_path(const char *dev)
{
	char key[96], params[256], val[16];

	key[0] = '\0';
	cat(key, sizeof(key), dev);
	cat(key, sizeof(key), "/params");
	if (xs_read(key, params, sizeof(params)) != 0 || params[0] == '\0')
		return;
	key[0] = '\0';
	cat(key, sizeof(key), dev);
	cat(key, sizeof(key), "/physical-device-path");
	if (xs_read(key, val, sizeof(val)) == 0)
		return;
	if (xs_write(key, params) == 0) {
		begin("info");
		put("physical-device-path ");
		put(params);
		put(" for ");
		put(dev);
		end();
	}
}

/*
 * The part of "xl devd" a driver domain needs here: once a back-end is
 * Closed with online = 0 (the toolstack detached it, or its guest is
 * gone), remove its directory. libxl in dom0 waits for that removal
 * before it reports a detach or a destroy as done. Returns how many
 * directories were removed.
 */
static uint64_t
reap_backends(void)
{
	static char doms[1024], devs[1024];
	char path[128];
	uint64_t n = 0;
	long dl, vl, i, j;

	dl = xs_directory("backend/vbd", doms, sizeof(doms));
	for (i = 0; i < dl; i += slen(doms + i) + 1) {
		if (slen(doms + i) > 12)
			continue;
		path[0] = '\0';
		cat(path, sizeof(path), "backend/vbd/");
		cat(path, sizeof(path), doms + i);
		vl = xs_directory(path, devs, sizeof(devs));
		for (j = 0; j < vl; j += slen(devs + j) + 1) {
			char dev[64];

			if (slen(devs + j) > 12)
				continue;
			dev[0] = '\0';
			cat(dev, sizeof(dev), path);
			cat(dev, sizeof(dev), "/");
			cat(dev, sizeof(dev), devs + j);
			if (!node_is(dev, "/state", "6"))
				physical_path(dev);
			if (!node_is(dev, "/online", "0") ||
			    !node_is(dev, "/state", "6"))
				continue;
			if (xs_rm(dev) == 0) {
				begin("info");
				put("removed ");
				put(dev);
				put(" (Closed, online 0)");
				end();
				n++;
			}
		}
	}
	return (n);
}

/*
 * devstat(9) (sys/sys/devicestat.h, DEVSTAT_VERSION 6) as
 * kern.devstat.all returns it on amd64: a long generation, then the
 * entries, struct devstat each.  Only the fields read here, by offset.
 */
#define	DS_SIZE		288
#define	DS_START_COUNT	8
#define	DS_END_COUNT	12
#define	DS_NAME		44
#define	DS_NAME_LEN	16
#define	DS_UNIT		60
#define	DS_BYTES	64	/* uint64_t[4]: no data, read, write, free */
#define	DS_OPERATIONS	96	/* uint64_t[4] */
#define	DS_NO_DATA	0
#define	DS_READ		1
#define	DS_WRITE	2
#define	DS_FREE		3

static unsigned char dsbuf[64 * DS_SIZE + 8];

static uint32_t
ds_u32(const unsigned char *e, size_t off)
{
	uint32_t v;

	__builtin_memcpy(&v, e + off, sizeof(v));
	return (v);
}

static uint64_t
ds_u64(const unsigned char *e, size_t off, int i)
{
	uint64_t v;

	__builtin_memcpy(&v, e + off + 8 * i, sizeof(v));
	return (v);
}

/* The entry name+unit of kern.devstat.all, or NULL. */
static const unsigned char *
ds_find(size_t len, const char *name, uint32_t unit)
{
	size_t off;

	for (off = 8; off + DS_SIZE <= len; off += DS_SIZE) {
		const unsigned char *e = dsbuf + off;

		if (ds_u32(e, DS_UNIT) == unit &&
		    seq((const char *)e + DS_NAME, name))
			return (e);
	}
	return (0);
}

/* dev.xbb.<unit>.<leaf> as a number; -1 when it cannot be read. */
static long
xbb_leaf(uint32_t unit, const char *leaf)
{
	char name[64];
	char num[12];
	uint64_t v = 0;
	size_t len = sizeof(v);
	int i = sizeof(num) - 1;

	num[i] = '\0';
	do {
		num[--i] = (char)('0' + unit % 10);
		unit /= 10;
	} while (unit != 0);
	name[0] = '\0';
	cat(name, sizeof(name), "dev.xbb.");
	cat(name, sizeof(name), &num[i]);
	cat(name, sizeof(name), ".");
	cat(name, sizeof(name), leaf);
	if (sysctl_read(name, &v, &len) != 0)
		return (-1);
	return ((long)v);
}

/* One equality check of the devstat comparison, as an ok/FAIL line. */
static void
ds_check(const char *what, uint32_t unit, uint64_t got, long want)
{
	if (want >= 0 && got == (uint64_t)want)
		ok("devstat ");
	else
		fail("devstat ");
	put(what);
	put(" unit ");
	putu(unit);
	put(": ");
	putu(got);
	put(" vs ");
	puti(want);
	end();
}

/*
 * After a guest's verified workload (dom0 sends "devstat" while the guest
 * is idle): every xbbgN / xbbsN entry of kern.devstat.all against
 * dev.xbb.N.  The guest's view has one transaction per request served
 * (reqs_received less reqs_refused), the bytes of dev.xbb.N.bytes_read /
 * bytes_written, flush_reqs no-data and discard_reqs free transactions;
 * the store's view moves the same bytes; nothing is in flight in either.
 */
static void
devstat_check(void)
{
	size_t len = sizeof(dsbuf);
	uint32_t unit;
	unsigned seen = 0;

	if (sysctl_read("kern.devstat.all", dsbuf, &len) != 0 || len < 8 ||
	    (len - 8) % DS_SIZE != 0) {
		fail("devstat");
		put("kern.devstat.all unreadable or not of DS_SIZE entries, ");
		putu(len);
		put(" bytes");
		end();
		return;
	}
	for (unit = 0; unit < 64; unit++) {
		const unsigned char *g, *st;
		uint64_t ops;
		long recv, refused;

		g = ds_find(len, "xbbg", unit);
		st = ds_find(len, "xbbs", unit);
		if (xbb_leaf(unit, "state") < 0) {
			if (g != 0 || st != 0) {
				fail("devstat");
				put("entries of a detached unit ");
				putu(unit);
				end();
			}
			continue;
		}
		seen++;
		if (g == 0 || st == 0) {
			fail("devstat");
			put("no xbbg/xbbs entry for dev.xbb.");
			putu(unit);
			end();
			continue;
		}
		begin("info");
		put("devstat xbbg");
		putu(unit);
		put(" ops r/w/free/flush ");
		putu(ds_u64(g, DS_OPERATIONS, DS_READ));
		put("/");
		putu(ds_u64(g, DS_OPERATIONS, DS_WRITE));
		put("/");
		putu(ds_u64(g, DS_OPERATIONS, DS_FREE));
		put("/");
		putu(ds_u64(g, DS_OPERATIONS, DS_NO_DATA));
		put(" bytes r/w ");
		putu(ds_u64(g, DS_BYTES, DS_READ));
		put("/");
		putu(ds_u64(g, DS_BYTES, DS_WRITE));
		put("; xbbs");
		putu(unit);
		put(" ops r/w ");
		putu(ds_u64(st, DS_OPERATIONS, DS_READ));
		put("/");
		putu(ds_u64(st, DS_OPERATIONS, DS_WRITE));
		end();
		ops = ds_u64(g, DS_OPERATIONS, DS_READ) +
		    ds_u64(g, DS_OPERATIONS, DS_WRITE) +
		    ds_u64(g, DS_OPERATIONS, DS_FREE) +
		    ds_u64(g, DS_OPERATIONS, DS_NO_DATA);
		recv = xbb_leaf(unit, "reqs_received");
		refused = xbb_leaf(unit, "reqs_refused");
		ds_check("xbbg requests = reqs_received - reqs_refused", unit,
		    ops, recv < 0 || refused < 0 ? -1 : recv - refused);
		ds_check("xbbg bytes read = bytes_read", unit,
		    ds_u64(g, DS_BYTES, DS_READ), xbb_leaf(unit, "bytes_read"));
		ds_check("xbbg bytes written = bytes_written", unit,
		    ds_u64(g, DS_BYTES, DS_WRITE),
		    xbb_leaf(unit, "bytes_written"));
		ds_check("xbbg flushes = flush_reqs", unit,
		    ds_u64(g, DS_OPERATIONS, DS_NO_DATA),
		    xbb_leaf(unit, "flush_reqs"));
		ds_check("xbbg frees = discard_reqs", unit,
		    ds_u64(g, DS_OPERATIONS, DS_FREE),
		    xbb_leaf(unit, "discard_reqs"));
		ds_check("xbbs bytes read = xbbg's", unit,
		    ds_u64(st, DS_BYTES, DS_READ),
		    (long)ds_u64(g, DS_BYTES, DS_READ));
		ds_check("xbbs bytes written = xbbg's", unit,
		    ds_u64(st, DS_BYTES, DS_WRITE),
		    (long)ds_u64(g, DS_BYTES, DS_WRITE));
		ds_check("xbbg idle: ended = started", unit,
		    ds_u32(g, DS_END_COUNT), (long)ds_u32(g, DS_START_COUNT));
		ds_check("xbbs idle: ended = started", unit,
		    ds_u32(st, DS_END_COUNT), (long)ds_u32(st, DS_START_COUNT));
	}
	begin("info");
	put("devstat end, instances ");
	putu(seen);
	end();
}

/* sys/sys/linker.h */
#define	SYS_kldsym	337
#define	KLDSYM_LOOKUP	1
struct kld_sym_lookup {
	int		version;
	const char	*symname;
	unsigned long	symvalue;
	size_t		symsize;
};

/*
 * The SDT probes of xbb(4), DTRACE PROBES: each is a struct sdt_probe
 * named sdt_<provider>_<module>_<function>_<name> in xbb.ko's symbol table
 * (kldsym(2); no dtrace(1) needed).  A kernel without options
 * KDTRACE_HOOKS compiles none of them: that is reported, not failed.
 */
static void
sdt_check(long kld)
{
	static const char *const probes[] = {
		"sdt_xbb_xbb_request_start",
		"sdt_xbb_xbb_request_done",
		"sdt_xbb_xbb_request_refused",
		"sdt_xbb_xbb_reqlist_dispatch",
		"sdt_xbb_xbb_io_error",
		"sdt_xbb_xbb_connection_connect",
		"sdt_xbb_xbb_connection_disconnect",
		"sdt_xbb_xbb_connection_error",
	};
	unsigned i, found = 0, n = sizeof(probes) / sizeof(probes[0]);

	for (i = 0; i < n; i++) {
		struct kld_sym_lookup l = { sizeof(l), probes[i], 0, 0 };

		if (SC(SYS_kldsym, kld, KLDSYM_LOOKUP, &l, 0, 0, 0) == 0 &&
		    l.symvalue != 0)
			found++;
	}
	if (found == n) {
		ok("sdt: all ");
		putu(n);
		put(" probes of provider xbb in xbb.ko");
		end();
	} else if (found == 0) {
		begin("info");
		put("sdt: no probes in xbb.ko (kernel without KDTRACE_HOOKS)");
		end();
	} else {
		fail("sdt");
		putu(found);
		put(" of ");
		putu(n);
		put(" probes in xbb.ko");
		end();
	}
}

/*
 * A "load X" or "unload X" command from dom0 (X: xbb or xbbd): runs it and
 * answers in data/xbb-state: "loaded X", "unloaded X", "load-failed X",
 * "unload-failed X", or "bad-command" (an unknown X).
 */
static void
backend_command(const char *cmd)
{
	char state[64];
	struct backend *b;
	int load = prefix(cmd, "load ");
	long r;

	b = backend_named(cmd + (load ? 5 : 7));
	if (b == 0) {
		fail("command");
		put("no back-end driver named in '");
		put(cmd);
		put("' (xbb or xbbd)");
		end();
		xs_write("data/xbb-state", "bad-command");
		return;
	}
	if (load)
		r = backend_load(b);
	else {
		/* Its last counters, as for the final unload. */
		(void)dump_tree(b->tree, 1);
		r = backend_unload(b);
	}
	scopy(state, sizeof(state), r == 0 ? "" : load ? "load-failed " :
	    "unload-failed ");
	if (r == 0)
		cat(state, sizeof(state), load ? "loaded " : "unloaded ");
	cat(state, sizeof(state), b->name);
	xs_write("data/xbb-state", state);
}

static void
serve(uint64_t start)
{
	char cmd[64], state[128], first[16];
	uint64_t mb, last_dump, removed;
	unsigned unit = 0, units[8] = { 0 }, leaves, m, have_md = 0, i;
	uint64_t nmd;
	struct backend *b;
	int report;
	long r;

	mb = kenv_u64("xbbdd.disk_mb", 64);
	/* The driver serving from the start: xbbdd.driver, default xbb. */
	memset(first, 0, sizeof(first));
	r = SC(SYS_kenv, KENV_GET, "xbbdd.driver", first, sizeof(first) - 1,
	    0, 0);
	if (r < 0 || first[0] == '\0')
		scopy(first, sizeof(first), "xbb");
	if (!seq(first, "none")) {
		b = backend_named(first);
		if (b == 0 || backend_load(b) != 0) {
			if (b == 0) {
				fail("xbbdd.driver");
				put("unknown back-end driver ");
				put(first);
				end();
			}
			xs_write("data/xbb-state", "kldload-failed");
			return;
		}
	}

	nmd = kenv_u64("xbbdd.md_count", 1);
	for (m = 0; m < nmd && m < 8; m++) {
		r = make_md(mb << 20, &units[m]);
		if (r != 0) {
			fail("md");
			put("MDIOCATTACH errno ");
			puti(-r);
			end();
			break;
		}
		have_md++;
		ok("md swap-backed /dev/md");
		putu(units[m]);
		put(" ");
		putu(mb);
		put(" MiB");
		end();
		/*
		 * xbbdd.md_fill=1 (benchmarks): write every page once, so that
		 * no back-end's first reads find pages md(4) must still zero.
		 */
		if (kenv_u64("xbbdd.md_fill", 0) != 0) {
			char dev[32];

			linelen = 0;
			put("/dev/md");
			putu(units[m]);
			line[linelen] = '\0';
			scopy(dev, sizeof(dev), line);
			linelen = 0;
			r = fill_dev(dev, mb << 20, 161 + m);
			if (r != 0) {
				fail("md fill");
				put(dev);
				put(": ");
				puti(r);
				end();
			} else {
				ok("md filled ");
				put(dev);
				end();
			}
		}
	}
	/*
	 * xbbdd.report=0 (benchmarks): no report of changed sysctls every
	 * two seconds, whose lines would cost this one-vCPU domain time while
	 * a back-end is being measured.  Commands are served as before.
	 */
	report = kenv_u64("xbbdd.report", 1) != 0;
	unit = units[0];
	r = make_file(mb << 20);
	if (r != 0) {
		fail("file");
		put("tmpfs/" FILE_PATH ": ");
		puti(r);
		end();
	} else {
		ok("file " FILE_PATH " on tmpfs ");
		putu(mb);
		put(" MiB");
		end();
	}

	linelen = 0;
	put("ready md=md");
	putu(unit);
	put(" mds=");
	putu(have_md);
	put(" file=" FILE_PATH " driver=");
	put(first);
	line[linelen] = '\0';
	scopy(state, sizeof(state), line);
	linelen = 0;
	if (xs_write("data/xbb-state", state) != 0) {
		fail("xenstore");
		put("cannot write data/xbb-state through /dev/xen/xenstore");
		end();
	}
	begin("ready");
	put("md=/dev/md");
	putu(unit);
	put(" mds=");
	putu(have_md);
	put(" file=" FILE_PATH " mb=");
	putu(mb);
	put(" driver=");
	put(first);
	end();

	/* Serve until dom0 says "unload". */
	removed = 0;
	last_dump = 0;
	if (xs_fd < 0) {
		/* Not in a Xen guest (plain QEMU): nothing to serve. */
		begin("info");
		put("no XenStore: unloading at once");
		end();
	}
	while (xs_fd >= 0) {
		if (report && now_us() - last_dump >= 2000000) {
			for (i = 0; i < NBACKENDS; i++)
				if (backends[i].id >= 0)
					(void)dump_tree(backends[i].tree, 0);
			last_dump = now_us();
		}
		removed += reap_backends();
		cmd[0] = '\0';
		if (xs_read("data/xbb-cmd", cmd, sizeof(cmd)) == 0 &&
		    cmd[0] != '\0') {
			begin("info");
			put("command from dom0: ");
			put(cmd);
			end();
			if (seq(cmd, "unload"))
				break;
			if (seq(cmd, "devstat")) {
				devstat_check();
				if (backends[0].id >= 0)
					sdt_check(backends[0].id);
			}
			if (seq(cmd, "dump")) {
				for (i = 0; i < NBACKENDS; i++)
					if (backends[i].id >= 0)
						(void)dump_tree(backends[i].tree,
						    1);
				begin("info");
				put("dump end");
				end();
			}
			if (prefix(cmd, "load ") || prefix(cmd, "unload "))
				backend_command(cmd);
			xs_write("data/xbb-cmd", "");
		}
		sleep_ms(500);
	}

	/*
	 * Final counters, then unload every back-end still loaded: the
	 * guests are gone by now.
	 */
	r = 0;
	for (i = 0; i < NBACKENDS; i++) {
		b = &backends[i];
		if (b->id < 0)
			continue;
		leaves = dump_tree(b->tree, 1);
		begin("info");
		put(b->tree);
		put(" leaves before kldunload: ");
		putu(leaves);
		put(", back-end directories removed: ");
		putu(removed);
		end();
		if (backend_unload(b) != 0)
			r = -1;
	}
	xs_write("data/xbb-state", r == 0 ? "unloaded" : "unload-failed");
	/* Fails with EBUSY while anything still holds a disk open. */
	for (m = 0; m < have_md; m++) {
		r = kill_md(units[m]);
		if (r == 0) {
			ok("md");
			putu(units[m]);
			put(" detached (no back-end holds it)");
			end();
		} else {
			fail("md detach");
			put("md");
			putu(units[m]);
			put(" MDIOCDETACH errno ");
			puti(-r);
			end();
		}
	}
	(void)start;
}

/* ------------------------------------------------------------------ */
/* Front-end: a pattern over /dev/xbd1. */

#define	CHUNK	(1024 * 1024)
static unsigned char wbuf[CHUNK] __attribute__((aligned(4096)));
static unsigned char rbuf[CHUNK] __attribute__((aligned(4096)));

static uint64_t
mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15UL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9UL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebUL;
	return (x ^ (x >> 31));
}

static void
fill(unsigned char *buf, uint64_t off, size_t len, uint64_t seed)
{
	size_t i;
	uint64_t w;

	for (i = 0; i < len; i += 8) {
		w = mix(seed * 0x100000001b3UL ^ ((off + i) >> 3));
		memcpy(buf + i, &w, 8);
	}
}

/* Writes the pattern of seed over the first bytes of dev: 0 or -errno. */
static long
fill_dev(const char *dev, uint64_t bytes, uint64_t seed)
{
	uint64_t off;
	size_t n;
	long fd, r;

	fd = SC(SYS_open, dev, O_RDWR, 0, 0, 0, 0);
	if (fd < 0)
		return (fd);
	r = 0;
	for (off = 0; off < bytes && r >= 0; off += n) {
		n = bytes - off < CHUNK ? (size_t)(bytes - off) : CHUNK;
		fill(wbuf, off, n, seed);
		r = SC(SYS_pwrite, fd, wbuf, n, (long)off, 0, 0);
		if (r >= 0 && r != (long)n)
			r = -EIO;
	}
	SC(SYS_close, fd, 0, 0, 0, 0, 0);
	return (r < 0 ? r : 0);
}

/* An I/O of n bytes at off that returned r: reports and says 1 if short. */
static int
short_io(const char *what, uint64_t off, long r, size_t n)
{
	if (r == (long)n)
		return (0);
	fail(what);
	put("offset ");
	putu(off);
	put(": ");
	puti(r);
	end();
	return (1);
}

static void
front(void)
{
	char dev[32];
	uint64_t seed, size = 0, off, t0, t1, bad = 0, first_bad = 0;
	unsigned secsize = 0;
	long fd = -1, r;
	size_t n, i;
	int tries;

	seed = kenv_u64("xbbdd.seed", 81);
	scopy(dev, sizeof(dev), "/dev/xbd1");
	for (tries = 0; tries < 120; tries++) {
		fd = SC(SYS_open, dev, O_RDWR, 0, 0, 0, 0);
		if (fd >= 0)
			break;
		sleep_ms(500);
	}
	if (fd < 0) {
		fail("open /dev/xbd1");
		put("errno ");
		puti(-fd);
		end();
		return;
	}
	if (SC(SYS_ioctl, fd, DIOCGMEDIASIZE, &size, 0, 0, 0) != 0 ||
	    SC(SYS_ioctl, fd, DIOCGSECTORSIZE, &secsize, 0, 0, 0) != 0 ||
	    size == 0 || secsize == 0 || CHUNK % secsize != 0) {
		fail("xbd1 geometry");
		put("size ");
		putu(size);
		put(" sector ");
		putu(secsize);
		end();
		return;
	}
	ok("open /dev/xbd1 size ");
	putu(size);
	put(" sector ");
	putu(secsize);
	end();
	(void)dump_tree("dev.xbd.1", 1);

	/* Write the whole disk in 1 MiB raw writes (no buffer cache). */
	t0 = now_us();
	for (off = 0; off < size; off += n) {
		n = size - off < CHUNK ? (size_t)(size - off) : CHUNK;
		fill(wbuf, off, n, seed);
		r = SC(SYS_pwrite, fd, wbuf, n, (long)off, 0, 0);
		if (short_io("write", off, r, n))
			return;
	}
	t1 = now_us();
	ok("wrote ");
	putu(size);
	put(" bytes in ");
	putu((t1 - t0) / 1000);
	put(" ms");
	end();
	r = SC(SYS_ioctl, fd, DIOCGFLUSH, 0, 0, 0, 0);
	if (r != 0) {
		fail("DIOCGFLUSH");
		put("errno ");
		puti(-r);
	} else
		ok("DIOCGFLUSH (cache flush through the front-end)");
	end();
	/* Close and reopen: nothing may come from a cache. */
	SC(SYS_close, fd, 0, 0, 0, 0, 0);
	fd = SC(SYS_open, dev, O_RDWR, 0, 0, 0, 0);
	if (fd < 0) {
		fail("reopen /dev/xbd1");
		puti(fd);
		end();
		return;
	}
	t0 = now_us();
	for (off = 0; off < size; off += n) {
		n = size - off < CHUNK ? (size_t)(size - off) : CHUNK;
		r = SC(SYS_pread, fd, rbuf, n, (long)off, 0, 0);
		if (short_io("read", off, r, n))
			return;
		fill(wbuf, off, n, seed);
		for (i = 0; i < n; i++)
			if (rbuf[i] != wbuf[i]) {
				if (bad == 0)
					first_bad = off + i;
				bad++;
			}
	}
	t1 = now_us();
	if (bad == 0) {
		ok("read back and compared every byte of ");
		putu(size);
		put(" in ");
		putu((t1 - t0) / 1000);
		put(" ms seed ");
		putu(seed);
		end();
	} else {
		fail("verify");
		putu(bad);
		put(" bytes differ, first at ");
		putu(first_bad);
		end();
	}
	/* A second pattern written with small (4 KiB) I/Os at odd places. */
	for (off = secsize * 7, i = 0; i < 64 && off + 4096 <= size;
	    i++, off += 4096 * 37 + secsize) {
		fill(wbuf, off, 4096, seed + 1);
		r = SC(SYS_pwrite, fd, wbuf, 4096, (long)off, 0, 0);
		if (r != 4096)
			break;
		r = SC(SYS_pread, fd, rbuf, 4096, (long)off, 0, 0);
		if (r != 4096)
			break;
		for (n = 0; n < 4096; n++)
			if (rbuf[n] != wbuf[n])
				break;
		if (n != 4096)
			break;
	}
	if (i == 64) {
		ok("64 unaligned-offset 4 KiB write/read pairs");
		end();
	} else {
		fail("small I/O");
		put("pair ");
		putu(i);
		put(" at offset ");
		putu(off);
		put(": ");
		puti(r);
		end();
	}
	(void)dump_tree("dev.xbd.1", 1);
	if (fd >= 0)
		SC(SYS_close, fd, 0, 0, 0, 0, 0);
	(void)putx;
}

/* ------------------------------------------------------------------ */

static void
power_off(const char *mode, uint64_t start)
{
	char state[64];

	begin("done");
	put("mode=");
	put(mode);
	put(" ");
	put_tally(start);
	end();
	linelen = 0;
	put("done pass=");
	putu(passes);
	put(" fail=");
	putu(failures);
	line[linelen] = '\0';
	scopy(state, sizeof(state), line);
	linelen = 0;
	xs_write("data/xbb-state", state);
	power_off_now();
}

void dd_main(void);

void
dd_main(void)
{
	char mode[16];
	uint64_t start;
	long r;

	console = (int)SC(SYS_open, "/dev/console", O_RDWR | O_NOCTTY, 0,
	    0, 0, 0);
	start = now_us();
	memset(mode, 0, sizeof(mode));
	r = SC(SYS_kenv, KENV_GET, "xbbdd.mode", mode, sizeof(mode) - 1, 0, 0);
	if (r < 0 || mode[0] == '\0')
		scopy(mode, sizeof(mode), "serve");
	begin("start");
	put("xbb driver-domain test, mode ");
	put(mode);
	end();
	banner(mode);
	if (xs_open() != 0) {
		fail("xenstore");
		put("cannot open /dev/xen/xenstore");
		end();
	}
	if (seq(mode, "front"))
		front();
	else if (seq(mode, "serve"))
		serve(start);
	else {
		fail("mode");
		put("unknown xbbdd.mode ");
		put(mode);
		end();
	}
	(void)prefix;
	power_off(mode, start);
}

XBB_ENTRY(dd_main);
