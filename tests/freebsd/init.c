/*
 * xbb boot smoke test: a tiny /sbin/init for FreeBSD/amd64.
 *
 * No libc: this program talks to the kernel through the raw amd64 system
 * call instruction (freestanding.h, shared with the Xen driver domain's
 * init), so it needs nothing from a FreeBSD userland.  The structure
 * layouts below are the kernel's published ABI (sys/sys/linker.h).
 *
 * It loads xbb.ko three times and checks each time what xbb(4) promises:
 *
 *   round 1  the kernel environment from the boot command line (the harness
 *            sets some hw.xbb.* there, one of them out of range);
 *   round 2  after kldunload: every hw.xbb.* set with kenv(2) to a
 *            non-default value inside its range, then kldload again;
 *   round 3  after kldunload: every hw.xbb.* removed from the kernel
 *            environment, kldload again: the defaults; the module stays
 *            loaded for the power-off.
 *
 * Each round checks that the module is registered (modfind of the newbus
 * module "xenbusb_back/xbb"), that hw.xbb has exactly the tunables the man
 * page lists, each a read-only loader tunable (CTLFLAG_RDTUN) of type
 * uint64 with a description and the expected value; after each unload,
 * that the module, the file and hw.xbb are gone.
 *
 * Output, one line each, on the console:
 *   XBB-SMOKE: ok <what>
 *   XBB-SMOKE: FAIL <what>: <why>
 *   XBB-SMOKE: info <what>
 *   XBB-SMOKE: done pass=N fail=M
 * then reboot(RB_POWEROFF).
 *
 * The expected tunables come from xbb_expect.h, which run.sh generates from
 * man/xbb.4 (never committed).
 */

#include "xbb_expect.h"

#define	XBB_INIT_TAG	"XBB-SMOKE: "
#include "freestanding.h"

/* The kind word of a sysctl node (sys/sys/sysctl.h). */
#define	CTLTYPE_MASK		0x1fu
#define	CTLTYPE_U64		9u
#define	CTLFLAG_RD		0x80000000u
#define	CTLFLAG_WR		0x40000000u
#define	CTLFLAG_TUN		0x00080000u

#define	PATHMAX		1024

/* The layout of struct kld_file_stat, version 2, on amd64. */
struct kldstat_buf {
	int	version;
	char	name[PATHMAX];
	int	refs;
	int	id;
	void	*address;
	size_t	size;
	char	pathname[PATHMAX];
};

/* ------------------------------------------------------------------ */
/* Checks */

/*
 * r is -ENOENT: "<round> <gone>" passes; anything else fails with
 * present and r.
 */
static void
expect_enoent(const char *round, long r, const char *gone,
    const char *present)
{
	if (r == -ENOENT) {
		ok(round);
		put(gone);
	} else {
		fail(round);
		put(present);
		puti(r);
	}
	end();
}

static void
check_absent(const char *round)
{
	int oid[MAXOID];
	size_t oidlen;

	expect_enoent(round, SC(SYS_modfind, XBB_NEWBUS_MODULE, 0, 0, 0, 0, 0),
	    " module " XBB_NEWBUS_MODULE " not registered",
	    "module " XBB_NEWBUS_MODULE " still registered: modfind ");
	expect_enoent(round, SC(SYS_kldfind, XBB_KO_NAME, 0, 0, 0, 0, 0),
	    " file " XBB_KO_NAME " not loaded",
	    "file " XBB_KO_NAME " still loaded: kldfind ");
	expect_enoent(round, name2oid("hw.xbb", oid, &oidlen),
	    " sysctl hw.xbb absent", "sysctl hw.xbb present: name2oid ");
}

/* Every OID under hw.xbb must be one of the expected tunables. */
static void
check_no_extra(const char *round)
{
	int base[MAXOID], cur[MAXOID], next[MAXOID];
	size_t baselen, curlen, nextlen, i;
	char name[256];
	size_t len;
	unsigned found = 0, extra = 0, k;

	if (name2oid("hw.xbb", base, &baselen) != 0) {
		fail(round);
		put("sysctl hw.xbb missing");
		end();
		return;
	}
	for (i = 0; i < baselen; i++)
		cur[i] = base[i];
	curlen = baselen;
	while ((nextlen = sysctl_next_under(base, baselen, cur, curlen,
	    next)) != 0) {
		len = sizeof(name) - 1;
		if (meta(CTL_SYSCTL_NAME, next, nextlen, name, &len) != 0)
			break;
		name[len < sizeof(name) ? len : sizeof(name) - 1] = '\0';
		found++;
		for (k = 0; k < XBB_NTUNABLES; k++) {
			/* name is "hw.xbb.<leaf>" */
			if (slen(name) > 7 && seq(name + 7, xbb_tunables[k].name))
				break;
		}
		if (k == XBB_NTUNABLES) {
			extra++;
			fail(round);
			put(name);
			put(" is not in the man page");
			end();
		}
		for (i = 0; i < nextlen; i++)
			cur[i] = next[i];
		curlen = nextlen;
	}
	if (extra == 0 && found == XBB_NTUNABLES) {
		passes++;
		begin("ok");
		put(round);
		put(" hw.xbb has exactly the ");
		putu(XBB_NTUNABLES);
		put(" tunables of the man page");
		end();
	} else if (extra == 0) {
		fail(round);
		put("hw.xbb has ");
		putu(found);
		put(" leaves, the man page lists ");
		putu(XBB_NTUNABLES);
		end();
	}
}

/* One tunable: present, read-only tunable uint64, described, value. */
static void
check_tunable(const char *round, const struct xbb_tunable *t, uint64_t want)
{
	char path[96];
	int oid[MAXOID];
	size_t oidlen, len;
	unsigned char fmt[64];
	char descr[256];
	uint32_t kind;
	uint64_t value = 0;
	long r;
	size_t i, n;

	n = slen(XBB_TUNABLE_PREFIX);
	memcpy(path, XBB_TUNABLE_PREFIX, n);
	for (i = 0; t->name[i] != '\0' && n < sizeof(path) - 1; i++)
		path[n++] = t->name[i];
	path[n] = '\0';

	r = name2oid(path, oid, &oidlen);
	if (r != 0) {
		fail(round);
		put(path);
		put(" missing: errno ");
		puti(-r);
		end();
		return;
	}
	len = sizeof(fmt);
	r = meta(CTL_SYSCTL_OIDFMT, oid, oidlen, fmt, &len);
	if (r != 0 || len < 4) {
		fail(round);
		put(path);
		put(" has no format: ");
		puti(r);
		end();
		return;
	}
	memcpy(&kind, fmt, 4);
	if ((kind & CTLTYPE_MASK) != CTLTYPE_U64 || !(kind & CTLFLAG_RD) ||
	    (kind & CTLFLAG_WR) || !(kind & CTLFLAG_TUN)) {
		fail(round);
		put(path);
		put(" kind ");
		putx(kind);
		put(", want a read-only uint64 loader tunable (CTLFLAG_RDTUN)");
		end();
		return;
	}
	len = sizeof(descr) - 1;
	r = meta(CTL_SYSCTL_OIDDESCR, oid, oidlen, descr, &len);
	if (r != 0 || len <= 1) {
		fail(round);
		put(path);
		put(" has no description");
		end();
		return;
	}
	len = sizeof(value);
	r = sysctl_read(path, &value, &len);
	if (r != 0 || len != sizeof(value)) {
		fail(round);
		put(path);
		put(" unreadable: ");
		puti(r);
		put(" length ");
		putu(len);
		end();
		return;
	}
	if (value != want) {
		fail(round);
		put(path);
		put(" = ");
		putu(value);
		put(", want ");
		putu(want);
		end();
		return;
	}
	passes++;
	begin("ok");
	put(round);
	put(" ");
	put(path);
	put(" = ");
	putu(value);
	end();
}

static void
tunable_path(char *buf, size_t size, const char *name)
{
	size_t n, i;

	n = slen(XBB_TUNABLE_PREFIX);
	memcpy(buf, XBB_TUNABLE_PREFIX, n);
	for (i = 0; name[i] != '\0' && n < size - 1; i++)
		buf[n++] = name[i];
	buf[n] = '\0';
}

static void
utoa(char *buf, uint64_t v)
{
	char tmp[24];
	int i = 0, j = 0;

	do {
		tmp[i++] = (char)('0' + v % 10);
		v /= 10;
	} while (v != 0);
	while (i > 0)
		buf[j++] = tmp[--i];
	buf[j] = '\0';
}

/* The non-default value round 2 sets: the minimum, or else the maximum. */
static uint64_t
alternative(const struct xbb_tunable *t)
{
	return (t->min != t->def ? t->min : t->max);
}

/* kldload, registration, tunables; returns the file id or -1. */
static long
load_and_check(const char *round, int which)
{
	struct kldstat_buf st;
	uint64_t t0, t1, want;
	unsigned k, b;
	long id, r;

	t0 = now_us();
	id = SC(SYS_kldload, XBB_KO_PATH, 0, 0, 0, 0, 0);
	t1 = now_us();
	if (id < 0) {
		fail(round);
		put("kldload " XBB_KO_PATH ": errno ");
		puti(-id);
		end();
		return (-1);
	}
	passes++;
	begin("ok");
	put(round);
	put(" kldload " XBB_KO_PATH " id ");
	puti(id);
	put(" in ");
	putu(t1 - t0);
	put(" us");
	end();

	memset(&st, 0, sizeof(st));
	st.version = (int)sizeof(st);
	r = SC(SYS_kldstat, id, &st, 0, 0, 0, 0);
	if (r == 0) {
		st.name[PATHMAX - 1] = '\0';
		begin("info");
		put(round);
		put(" kldstat ");
		put(st.name);
		put(" refs ");
		puti(st.refs);
		put(" address ");
		putx((uint64_t)st.address);
		put(" size ");
		putu(st.size);
		end();
	} else {
		fail(round);
		put("kldstat: ");
		puti(r);
		end();
	}

	r = SC(SYS_modfind, XBB_NEWBUS_MODULE, 0, 0, 0, 0, 0);
	if (r >= 0) {
		passes++;
		begin("ok");
		put(round);
		put(" newbus driver module " XBB_NEWBUS_MODULE " registered");
		end();
	} else {
		fail(round);
		put("modfind " XBB_NEWBUS_MODULE ": errno ");
		puti(-r);
		end();
	}

	check_no_extra(round);
	for (k = 0; k < XBB_NTUNABLES; k++) {
		const struct xbb_tunable *t = &xbb_tunables[k];

		want = t->def;
		if (which == 1) {
			for (b = 0; b < XBB_NBOOT; b++)
				if (seq(xbb_boot[b].name, t->name))
					want = xbb_boot[b].effect;
		} else if (which == 2)
			want = alternative(t);
		check_tunable(round, t, want);
	}

	/* No back-end device can exist without a Xen host: informational. */
	{
		int oid[MAXOID];
		size_t oidlen;

		begin("info");
		put(round);
		put(name2oid("dev.xbb", oid, &oidlen) == 0 ?
		    " dev.xbb present (instances attached)" :
		    " dev.xbb absent (no instances)");
		end();
	}
	return (id);
}

static void
unload(const char *round, long id)
{
	uint64_t t0, t1;
	long r;

	t0 = now_us();
	r = SC(SYS_kldunload, id, 0, 0, 0, 0, 0);
	t1 = now_us();
	if (r != 0) {
		fail(round);
		put("kldunload: errno ");
		puti(-r);
		end();
		return;
	}
	passes++;
	begin("ok");
	put(round);
	put(" kldunload in ");
	putu(t1 - t0);
	put(" us");
	end();
	check_absent(round);
}

static void
check_boot_kenv(void)
{
	char path[96], value[64], want[24];
	unsigned b;
	long r;

	for (b = 0; b < XBB_NBOOT; b++) {
		tunable_path(path, sizeof(path), xbb_boot[b].name);
		utoa(want, xbb_boot[b].value);
		memset(value, 0, sizeof(value));
		r = SC(SYS_kenv, KENV_GET, path, value, sizeof(value) - 1, 0, 0);
		if (r >= 0 && seq(value, want)) {
			passes++;
			begin("ok");
			put("boot kenv ");
			put(path);
			put("=");
			put(value);
			end();
		} else {
			fail("boot kenv");
			put(path);
			put(r >= 0 ? " is " : " missing: errno ");
			if (r >= 0)
				put(value);
			else
				puti(-r);
			put(", the command line gave ");
			put(want);
			end();
		}
	}
}

static void
set_kenv(int set)
{
	char path[96], value[24];
	unsigned k;
	long r;

	for (k = 0; k < XBB_NTUNABLES; k++) {
		tunable_path(path, sizeof(path), xbb_tunables[k].name);
		if (set) {
			utoa(value, alternative(&xbb_tunables[k]));
			r = SC(SYS_kenv, KENV_SET, path, value, slen(value) + 1,
			    0, 0);
		} else {
			r = SC(SYS_kenv, KENV_UNSET, path, 0, 0, 0, 0);
			if (r == -ENOENT)
				r = 0;
		}
		if (r != 0) {
			fail(set ? "kenv set" : "kenv unset");
			put(path);
			put(": errno ");
			puti(-r);
			end();
		}
	}
	passes++;
	begin("ok");
	put(set ? "kenv set every hw.xbb.* to a non-default value" :
	    "kenv unset every hw.xbb.*");
	end();
}

static void
banner(void)
{
	char buf[256];

	if (kernel_version(buf, sizeof(buf)) == 0) {
		begin("info");
		put("kernel ");
		put(buf);
		end();
	}
}

void smoke_main(void);

void
smoke_main(void)
{
	uint64_t start;
	long id;

	console = (int)SC(SYS_open, "/dev/console", O_RDWR | O_NOCTTY, 0,
	    0, 0, 0);
	start = now_us();
	begin("start");
	put("xbb boot smoke test");
	end();
	banner();

	check_absent("before");
	check_boot_kenv();

	id = load_and_check("round1", 1);
	if (id >= 0) {
		unload("round1", id);
		set_kenv(1);
		id = load_and_check("round2", 2);
		if (id >= 0) {
			unload("round2", id);
			set_kenv(0);
			/* Stays loaded: the power-off runs with it. */
			(void)load_and_check("round3", 3);
		}
	}

	begin("done");
	put_tally(start);
	end();
	power_off_now();
}

XBB_ENTRY(smoke_main);
