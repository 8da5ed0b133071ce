/*
 * xbbwork: the block I/O workload of the xenlab harness.
 *
 * It runs as a static binary inside unmodified Linux Xen PV guests (a
 * busybox initramfs and nothing else) and drives the guest's xen-blkfront
 * disks, so that the back-end under test (xbb) sees real traffic: whole-disk
 * pattern writes with read-back verification, benchmarks at a chosen queue
 * depth, cache flushes, discards and an endless verified load that keeps I/O
 * in flight while dom0 destroys the domain.
 *
 * Every command prints one result line "XBBWORK <cmd> key=value ...
 * result=PASS|FAIL" on stdout (loop also prints a progress line a second).
 * The exit status is 0 on PASS, 1 on FAIL and 2 on a usage error.
 * Diagnostics go to stderr.
 *
 * The pattern: every 512-byte sector starts with its own sector number and
 * the seed (two little-endian 64-bit words), followed by 496 bytes of
 * xorshift64 output seeded from both.  Data written to or read from the
 * wrong place, or left over from another seed, is therefore caught, and the
 * header says where it came from.  The checksums (wsum, rsum) are FNV-1a
 * over the data taken as little-endian 64-bit words, in device order.
 *
 * Build: gcc -static -O2 -Wall -Wextra -Werror -o xbbwork xbbwork.c
 */

#define _GNU_SOURCE

#include <sys/types.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>

#include <linux/aio_abi.h>
#include <linux/fs.h>

#include <dirent.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define	SECTOR		512		/* pattern unit, bytes */
#define	BUF_ALIGN	4096		/* O_DIRECT buffer alignment */
#define	DEF_BS		(1024 * 1024)
#define	MAX_BS		(64 * 1024 * 1024)
#define	MAX_QD		1024
#define	FLUSH_BS	4096
#define	DEF_FLUSHES	16
#define	LOOP_QD		8
#define	LOOP_BS		(64 * 1024)
#define	MAX_REPORT	8		/* bad sectors described on stderr */
#define	BENCH_SEED	0x786262776f726b31ULL	/* "xbbwork1" */
#define	FNV_INIT	0xcbf29ce484222325ULL
#define	FNV_PRIME	0x100000001b3ULL

/* Options; a bit per option says which ones a command accepts. */
#define	O_SEED		0x01
#define	O_BS		0x02
#define	O_MODE		0x04
#define	O_QD		0x08
#define	O_SECONDS	0x10
#define	O_BYTES		0x20
#define	O_SPAN		0x40
#define	O_COUNT		0x80

enum mode { SEQREAD, SEQWRITE, RANDREAD, RANDWRITE };
static const char *const mode_names[] = {
	"seqread", "seqwrite", "randread", "randwrite"
};

struct opts {
	const char	*dev;
	const char	*arg[2];	/* positional arguments after DEV */
	uint64_t	 seed;
	uint64_t	 bs;
	uint64_t	 qd;
	uint64_t	 seconds;
	uint64_t	 bytes;
	uint64_t	 span;
	uint64_t	 count;
	enum mode	 mode;
	unsigned	 given;		/* O_* seen on the command line */
};

struct dev {
	const char	*path;
	int		 fd;
	bool		 direct;	/* opened with O_DIRECT */
	bool		 blk;		/* block device, not a file */
	dev_t		 rdev;
	uint64_t	 size;		/* bytes, whole logical blocks */
	unsigned	 lbs;		/* logical block size */
};

static int	parse_num(const char *, uint64_t *);

/* ------------------------------------------------------------ helpers */

static const char *
errname(int e)
{
	static char buf[16];
	const char *s;

	if ((s = strerrorname_np(e)) != NULL)
		return (s);
	snprintf(buf, sizeof(buf), "E%d", e);
	return (buf);
}

static uint64_t
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ((uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000);
}

/* The splitmix64 finaliser: turns related seeds into unrelated states. */
static uint64_t
mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return (x ^ (x >> 31));
}

static uint64_t
xorshift64(uint64_t *s)
{
	uint64_t x;

	x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return (*s = x);
}

static void
fill_sector(unsigned char *p, uint64_t seed, uint64_t sector)
{
	uint64_t w[SECTOR / 8], s;
	size_t i;

	w[0] = htole64(sector);
	w[1] = htole64(seed);
	if ((s = mix64(mix64(seed) ^ sector)) == 0)
		s = 1;
	for (i = 2; i < SECTOR / 8; i++)
		w[i] = htole64(xorshift64(&s));
	memcpy(p, w, SECTOR);
}

static void
fill_block(unsigned char *p, uint64_t seed, uint64_t sector, size_t len)
{
	size_t i;

	for (i = 0; i < len / SECTOR; i++)
		fill_sector(p + i * SECTOR, seed, sector + i);
}

/* FNV-1a over little-endian 64-bit words; len is a multiple of 8. */
static uint64_t
fnv64(uint64_t h, const unsigned char *p, size_t len)
{
	uint64_t w;
	size_t i;

	for (i = 0; i < len; i += 8) {
		memcpy(&w, p + i, 8);
		h ^= le64toh(w);
		h *= FNV_PRIME;
	}
	return (h);
}

/* Says on stderr what a bad sector holds instead of its pattern. */
static void
describe_bad(uint64_t sector, const unsigned char *got, uint64_t seed)
{
	unsigned char want[SECTOR];
	uint64_t hsec, hseed;
	size_t i;

	memcpy(&hsec, got, 8);
	memcpy(&hseed, got + 8, 8);
	hsec = le64toh(hsec);
	hseed = le64toh(hseed);
	for (i = 0; i < SECTOR && got[i] == 0; i++)
		;
	if (i == SECTOR) {
		fprintf(stderr, "xbbwork: sector %" PRIu64 ": all zeros\n",
		    sector);
		return;
	}
	if (hsec != sector || hseed != seed) {
		fprintf(stderr, "xbbwork: sector %" PRIu64 ": holds sector %"
		    PRIu64 " seed %" PRIu64 "\n", sector, hsec, hseed);
		return;
	}
	fill_sector(want, seed, sector);
	for (i = 0; i < SECTOR && got[i] == want[i]; i++)
		;
	fprintf(stderr, "xbbwork: sector %" PRIu64 ": header right, "
	    "data differs from byte %zu\n", sector, i);
}

static void *
alloc_buf(size_t len)
{
	void *p;

	if (posix_memalign(&p, BUF_ALIGN, len) != 0)
		return (NULL);
	memset(p, 0, len);
	return (p);
}

/* pread/pwrite the whole length; returns 0 or an errno. */
static int
pio(int fd, void *buf, size_t len, uint64_t off, bool wr)
{
	unsigned char *p;
	size_t done;
	ssize_t r;

	p = buf;
	for (done = 0; done < len; done += (size_t)r) {
		if (wr)
			r = pwrite(fd, p + done, len - done, (off_t)(off + done));
		else
			r = pread(fd, p + done, len - done, (off_t)(off + done));
		if (r < 0 && errno == EINTR) {
			r = 0;
			continue;
		}
		if (r < 0)
			return (errno);
		if (r == 0)
			return (wr ? ENOSPC : EIO);
	}
	return (0);
}

/* Linux native AIO through the raw system calls (no libaio). */
static int
aio_setup(unsigned nr, aio_context_t *ctx)
{
	*ctx = 0;
	return ((int)syscall(SYS_io_setup, nr, ctx));
}

static int
aio_destroy(aio_context_t ctx)
{
	return ((int)syscall(SYS_io_destroy, ctx));
}

static int
aio_submit(aio_context_t ctx, long nr, struct iocb **cbs)
{
	return ((int)syscall(SYS_io_submit, ctx, nr, cbs));
}

static int
aio_getevents(aio_context_t ctx, long min, long max, struct io_event *ev,
    struct timespec *tmo)
{
	return ((int)syscall(SYS_io_getevents, ctx, min, max, ev, tmo));
}

static void
aio_prep(struct iocb *cb, int fd, void *buf, size_t len, uint64_t off,
    bool wr, uint64_t tag)
{
	memset(cb, 0, sizeof(*cb));
	cb->aio_data = tag;
	cb->aio_lio_opcode = wr ? IOCB_CMD_PWRITE : IOCB_CMD_PREAD;
	cb->aio_fildes = (uint32_t)fd;
	cb->aio_buf = (uint64_t)(uintptr_t)buf;
	cb->aio_nbytes = len;
	cb->aio_offset = (int64_t)off;
}

/*
 * Opens the device (or regular file) with O_DIRECT, falling back to
 * buffered I/O where the file system has no O_DIRECT (ramfs, tmpfs before
 * Linux 6.6).  Returns 0 or
 * an errno.
 */
static int
dev_open(struct dev *d, const char *path, bool wr)
{
	struct stat st;
	uint64_t size;
	int flags, lbs;

	memset(d, 0, sizeof(*d));
	d->path = path;
	d->direct = true;
	flags = (wr ? O_RDWR : O_RDONLY) | O_CLOEXEC;
	if ((d->fd = open(path, flags | O_DIRECT)) < 0 && errno == EINVAL) {
		fprintf(stderr, "xbbwork: %s: no O_DIRECT here, using "
		    "buffered I/O\n", path);
		d->direct = false;
		d->fd = open(path, flags);
	}
	if (d->fd < 0)
		return (errno);
	if (fstat(d->fd, &st) != 0)
		return (errno);
	d->lbs = SECTOR;
	if (S_ISBLK(st.st_mode)) {
		d->blk = true;
		d->rdev = st.st_rdev;
		if (ioctl(d->fd, BLKGETSIZE64, &size) != 0)
			return (errno);
		if (ioctl(d->fd, BLKSSZGET, &lbs) == 0 && lbs >= SECTOR)
			d->lbs = (unsigned)lbs;
	} else if (S_ISREG(st.st_mode))
		size = (uint64_t)st.st_size;
	else
		return (ENOTBLK);
	d->size = size - size % d->lbs;
	return (0);
}

static int
fail_line(const char *cmd, const char *path, const char *what, int e)
{
	fprintf(stderr, "xbbwork: %s: %s: %s\n", path, what, strerror(e));
	printf("XBBWORK %s dev=%s err=%s result=FAIL\n", cmd, path,
	    errname(e));
	return (1);
}

/* ------------------------------------------------------ verify, check */

static int
do_pattern(const struct opts *o, const char *cmd, bool wr)
{
	struct dev d;
	unsigned char *buf, want[SECTOR];
	uint64_t bs, off, sec, t0, wsum, rsum, errors, ioerrs;
	int64_t first_bad;
	size_t len, i;
	bool pass;
	int e;

	if ((e = dev_open(&d, o->dev, wr)) != 0)
		return (fail_line(cmd, o->dev, "open", e));
	bs = (o->given & O_BS) ? o->bs : DEF_BS;
	if (bs % d.lbs != 0) {
		fprintf(stderr, "xbbwork: --bs %" PRIu64 " is not a multiple "
		    "of the block size %u\n", bs, d.lbs);
		return (2);
	}
	if ((buf = alloc_buf(bs)) == NULL)
		return (fail_line(cmd, o->dev, "buffer", ENOMEM));
	wsum = rsum = FNV_INIT;
	errors = ioerrs = 0;
	first_bad = -1;
	t0 = now_us();
	if (wr) {
		for (off = 0; off < d.size; off += len) {
			len = d.size - off < bs ? d.size - off : bs;
			fill_block(buf, o->seed, off / SECTOR, len);
			wsum = fnv64(wsum, buf, len);
			if ((e = pio(d.fd, buf, len, off, true)) != 0 &&
			    ioerrs++ < MAX_REPORT)
				fprintf(stderr, "xbbwork: write at %" PRIu64
				    ": %s\n", off, strerror(e));
		}
		if (fsync(d.fd) != 0) {
			fprintf(stderr, "xbbwork: fsync: %s\n",
			    strerror(errno));
			ioerrs++;
		}
		if (!d.direct)
			posix_fadvise(d.fd, 0, 0, POSIX_FADV_DONTNEED);
	}
	for (off = 0; off < d.size; off += len) {
		len = d.size - off < bs ? d.size - off : bs;
		memset(buf, 0, len);
		if ((e = pio(d.fd, buf, len, off, false)) != 0) {
			if (ioerrs++ < MAX_REPORT)
				fprintf(stderr, "xbbwork: read at %" PRIu64
				    ": %s\n", off, strerror(e));
		} else
			rsum = fnv64(rsum, buf, len);
		for (i = 0; i < len / SECTOR; i++) {
			sec = off / SECTOR + i;
			fill_sector(want, o->seed, sec);
			if (!wr)
				wsum = fnv64(wsum, want, SECTOR);
			if (e == 0 &&
			    memcmp(buf + i * SECTOR, want, SECTOR) == 0)
				continue;
			if (e == 0 && errors < MAX_REPORT)
				describe_bad(sec, buf + i * SECTOR, o->seed);
			if (first_bad < 0)
				first_bad = (int64_t)sec;
			errors++;
		}
	}
	pass = errors == 0 && ioerrs == 0;
	printf("XBBWORK %s dev=%s bytes=%" PRIu64 " seed=%" PRIu64
	    " bs=%" PRIu64 " direct=%d errors=%" PRIu64 " first_bad=%" PRId64
	    " ioerrs=%" PRIu64 " wsum=0x%016" PRIx64 " rsum=0x%016" PRIx64
	    " ms=%" PRIu64 " result=%s\n", cmd, o->dev, d.size, o->seed, bs,
	    d.direct, errors, first_bad, ioerrs, wsum, rsum,
	    (now_us() - t0) / 1000, pass ? "PASS" : "FAIL");
	free(buf);
	close(d.fd);
	return (pass ? 0 : 1);
}

static int
cmd_verify(const struct opts *o)
{
	return (do_pattern(o, "verify", true));
}

static int
cmd_check(const struct opts *o)
{
	return (do_pattern(o, "check", false));
}

/* -------------------------------------------------------------- bench */

static int
cmd_bench(const struct opts *o)
{
	struct dev d;
	struct iocb *cbs, **batch;
	struct io_event *ev;
	unsigned char *bufs;
	aio_context_t ctx;
	uint64_t bs, span, nblk, next, rnd, issued, done, ios, t0, t, usec;
	size_t qd, nfree, *freel, n, i;
	bool wr, rand, stop;
	int e, r, err;

	wr = o->mode == SEQWRITE || o->mode == RANDWRITE;
	rand = o->mode == RANDREAD || o->mode == RANDWRITE;
	bs = o->bs;
	qd = (size_t)o->qd;
	if (qd < 1 || qd > MAX_QD || bs == 0 || bs > MAX_BS ||
	    !(o->given & (O_SECONDS | O_BYTES))) {
		fprintf(stderr, "xbbwork: bench needs 1 <= --qd <= %d, "
		    "0 < --bs <= %d and --seconds or --bytes\n", MAX_QD,
		    MAX_BS);
		return (2);
	}
	if ((e = dev_open(&d, o->dev, wr)) != 0)
		return (fail_line("bench", o->dev, "open", e));
	span = (o->given & O_SPAN) ? o->span : d.size;
	if (bs % d.lbs != 0 || span > d.size || span < bs) {
		fprintf(stderr, "xbbwork: --bs must be a multiple of %u and "
		    "fit in --span, which must fit in the %" PRIu64 "-byte "
		    "device\n", d.lbs, d.size);
		return (2);
	}
	nblk = span / bs;
	cbs = calloc(qd, sizeof(*cbs));
	batch = calloc(qd, sizeof(*batch));
	ev = calloc(qd, sizeof(*ev));
	freel = calloc(qd, sizeof(*freel));
	bufs = alloc_buf(qd * bs);
	if (cbs == NULL || batch == NULL || ev == NULL || freel == NULL ||
	    bufs == NULL)
		return (fail_line("bench", o->dev, "buffers", ENOMEM));
	rnd = (o->given & O_SEED) ? mix64(o->seed) | 1 : BENCH_SEED;
	if (wr)
		fill_block(bufs, rnd, 0, qd * bs);
	if (aio_setup((unsigned)qd, &ctx) != 0)
		return (fail_line("bench", o->dev, "io_setup", errno));
	for (nfree = 0; nfree < qd; nfree++)
		freel[nfree] = nfree;
	next = issued = done = ios = 0;
	err = 0;
	stop = false;
	t0 = t = now_us();
	for (;;) {
		for (n = 0; !stop && nfree > 0; n++) {
			i = freel[--nfree];
			if (rand)
				next = xorshift64(&rnd) % nblk;
			aio_prep(&cbs[i], d.fd, bufs + i * bs, bs, next * bs,
			    wr, i);
			if (!rand)
				next = (next + 1) % nblk;
			batch[n] = &cbs[i];
			issued += bs;
			if ((o->given & O_BYTES) && issued >= o->bytes)
				stop = true;
		}
		if (n > 0 && (r = aio_submit(ctx, (long)n, batch)) !=
		    (int)n) {
			err = r < 0 ? errno : EAGAIN;
			fprintf(stderr, "xbbwork: io_submit: %s\n",
			    strerror(err));
			stop = true;
			/* What was not taken is free again. */
			for (i = r < 0 ? 0 : (size_t)r; i < n; i++)
				freel[nfree++] = (size_t)batch[i]->aio_data;
		}
		if (nfree == qd)
			break;
		r = aio_getevents(ctx, 1, (long)qd, ev, NULL);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			err = errno;
			fprintf(stderr, "xbbwork: io_getevents: %s\n",
			    strerror(err));
			break;
		}
		t = now_us();
		for (i = 0; i < (size_t)r; i++) {
			freel[nfree++] = (size_t)ev[i].data;
			if (ev[i].res != (int64_t)bs) {
				if (err == 0)
					err = ev[i].res < 0 ?
					    (int)-ev[i].res : EIO;
				fprintf(stderr, "xbbwork: I/O returned %"
				    PRId64 "\n", (int64_t)ev[i].res);
				stop = true;
				continue;
			}
			done += bs;
			ios++;
		}
		if ((o->given & O_SECONDS) && t - t0 >= o->seconds * 1000000)
			stop = true;
	}
	aio_destroy(ctx);
	usec = t - t0 > 0 ? t - t0 : 1;
	/* kBps is KiB/s, as fio counts bandwidth. */
	printf("XBBWORK bench dev=%s mode=%s bs=%" PRIu64 " qd=%zu bytes=%"
	    PRIu64 " ios=%" PRIu64 " usec=%" PRIu64 " kBps=%" PRIu64
	    " iops=%" PRIu64 " direct=%d", o->dev, mode_names[o->mode], bs,
	    qd, done, ios, usec, done / 1024 * 1000000 / usec,
	    ios * 1000000 / usec, d.direct);
	if (err != 0)
		printf(" err=%s result=FAIL\n", errname(err));
	else
		printf(" result=PASS\n");
	close(d.fd);
	return (err != 0);
}

/* -------------------------------------------------------------- flush */

/*
 * Rewrites a block with what it already holds, then fsync()s, so each round
 * sends a write and a cache flush to the back-end without touching the data
 * (the discard scenario checks the disk's contents afterwards).
 */
static int
cmd_flush(const struct opts *o)
{
	struct dev d;
	unsigned char *buf;
	uint64_t count, nblk, i, t0, t, max_us;
	int e;

	count = (o->given & O_COUNT) ? o->count : DEF_FLUSHES;
	if ((e = dev_open(&d, o->dev, true)) != 0)
		return (fail_line("flush", o->dev, "open", e));
	if ((nblk = d.size / FLUSH_BS) == 0)
		return (fail_line("flush", o->dev, "size", ENOSPC));
	if ((buf = alloc_buf(FLUSH_BS)) == NULL)
		return (fail_line("flush", o->dev, "buffer", ENOMEM));
	max_us = 0;
	t0 = now_us();
	for (i = 0; i < count; i++) {
		if ((e = pio(d.fd, buf, FLUSH_BS, i % nblk * FLUSH_BS,
		    false)) != 0 ||
		    (e = pio(d.fd, buf, FLUSH_BS, i % nblk * FLUSH_BS,
		    true)) != 0)
			return (fail_line("flush", o->dev, "rewrite", e));
		t = now_us();
		if (fsync(d.fd) != 0)
			return (fail_line("flush", o->dev, "fsync", errno));
		if ((t = now_us() - t) > max_us)
			max_us = t;
	}
	if (fdatasync(d.fd) != 0)
		return (fail_line("flush", o->dev, "fdatasync", errno));
	printf("XBBWORK flush dev=%s count=%" PRIu64 " direct=%d fsync_max_us=%"
	    PRIu64 " ms=%" PRIu64 " result=PASS\n", o->dev, count, d.direct,
	    max_us, (now_us() - t0) / 1000);
	free(buf);
	close(d.fd);
	return (0);
}

/* ------------------------------------------------------------ discard */

/*
 * BLKDISCARD on a block device; on a regular file (for testing this
 * program) a hole is punched instead.  The range is then read back to say
 * whether it reads as zeros, which the protocol does not promise.
 */
static int
cmd_discard(const struct opts *o)
{
	struct dev d;
	unsigned char *buf;
	uint64_t off, len, range[2], pos, end, n, t0, i;
	const char *method, *zeroed;
	int e, r;

	if (parse_num(o->arg[0], &off) != 0 ||
	    parse_num(o->arg[1], &len) != 0) {
		fprintf(stderr, "xbbwork: bad OFFSET or LEN\n");
		return (2);
	}
	if ((e = dev_open(&d, o->dev, true)) != 0)
		return (fail_line("discard", o->dev, "open", e));
	t0 = now_us();
	if (d.blk) {
		method = "blkdiscard";
		range[0] = off;
		range[1] = len;
		r = ioctl(d.fd, BLKDISCARD, range);
	} else {
		method = "punch";
		r = fallocate(d.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		    (off_t)off, (off_t)len);
	}
	e = r != 0 ? errno : 0;
	printf("XBBWORK discard dev=%s offset=%" PRIu64 " len=%" PRIu64
	    " method=%s", o->dev, off, len, method);
	if (e != 0) {
		fprintf(stderr, "xbbwork: %s: %s\n", method, strerror(e));
		printf(" zeroed=NA err=%s result=FAIL\n", errname(e));
		return (1);
	}
	zeroed = "NA";
	end = off + len < d.size && off + len >= off ? off + len : d.size;
	if (off < end && off % d.lbs == 0 && end % d.lbs == 0 &&
	    (buf = alloc_buf(DEF_BS)) != NULL) {
		zeroed = "1";
		for (pos = off; pos < end && *zeroed == '1'; pos += n) {
			n = end - pos < DEF_BS ? end - pos : DEF_BS;
			if (pio(d.fd, buf, n, pos, false) != 0) {
				zeroed = "NA";
				break;
			}
			for (i = 0; i < n; i++)
				if (buf[i] != 0) {
					zeroed = "0";
					break;
				}
		}
		free(buf);
	}
	printf(" zeroed=%s ms=%" PRIu64 " result=PASS\n", zeroed,
	    (now_us() - t0) / 1000);
	close(d.fd);
	return (0);
}

/* --------------------------------------------------------------- loop */

struct slot {
	struct iocb	 cb;
	unsigned char	*buf;
	uint64_t	 blk;		/* in units of bs */
	uint64_t	 seed;		/* of the pattern in the block */
	bool		 reading;	/* the step under way is the read */
};

struct loop {
	struct slot	 slot[LOOP_QD];
	aio_context_t	 ctx;
	int		 fd;
	uint64_t	 bs;
	uint64_t	 groups;	/* blocks per slot */
	uint64_t	 rnd;
	uint64_t	 seed;
	uint64_t	 gen;
	size_t		 inflight;
};

/* Starts the next step of slot i: a write after a read, a read after a write. */
static int
loop_start(struct loop *l, size_t i)
{
	struct slot *s;
	struct iocb *cbp;

	s = &l->slot[i];
	if (s->reading) {
		s->blk = xorshift64(&l->rnd) % l->groups * LOOP_QD + i;
		s->seed = l->seed << 32 ^ ++l->gen;
		fill_block(s->buf, s->seed, s->blk * l->bs / SECTOR, l->bs);
		s->reading = false;
	} else {
		memset(s->buf, 0, l->bs);
		s->reading = true;
	}
	aio_prep(&s->cb, l->fd, s->buf, l->bs, s->blk * l->bs, !s->reading,
	    i);
	cbp = &s->cb;
	if (aio_submit(l->ctx, 1, &cbp) != 1) {
		fprintf(stderr, "xbbwork: io_submit: %s\n", strerror(errno));
		return (-1);
	}
	l->inflight++;
	return (0);
}

/* Checks a completion; returns false if it failed or read bad data. */
static bool
loop_done(struct loop *l, const struct io_event *ev, uint64_t errors)
{
	unsigned char want[SECTOR];
	struct slot *s;
	uint64_t sec, first;

	s = &l->slot[ev->data];
	l->inflight--;
	first = s->blk * l->bs / SECTOR;
	if (ev->res != (int64_t)l->bs) {
		if (errors < MAX_REPORT)
			fprintf(stderr, "xbbwork: loop %s at sector %" PRIu64
			    " returned %" PRId64 "\n",
			    s->reading ? "read" : "write", first,
			    (int64_t)ev->res);
		s->reading = true;	/* start over with a new block */
		return (false);
	}
	if (!s->reading)
		return (true);
	for (sec = 0; sec < l->bs / SECTOR; sec++) {
		fill_sector(want, s->seed, first + sec);
		if (memcmp(s->buf + sec * SECTOR, want, SECTOR) != 0) {
			if (errors < MAX_REPORT)
				describe_bad(first + sec,
				    s->buf + sec * SECTOR, s->seed);
			return (false);
		}
	}
	return (true);
}

/*
 * Endless verified load: LOOP_QD slots, each writing a fresh pattern to a
 * block of its own (blocks are dealt to slots by number modulo LOOP_QD, so
 * two I/Os never overlap), then reading it back and checking it.
 */
static int
cmd_loop(const struct opts *o)
{
	struct io_event ev[LOOP_QD];
	struct timespec tmo;
	struct loop l;
	struct dev d;
	uint64_t ios, errors, t0, t, tick;
	size_t i;
	bool stop;
	int e, r;

	if ((e = dev_open(&d, o->dev, true)) != 0)
		return (fail_line("loop", o->dev, "open", e));
	memset(&l, 0, sizeof(l));
	l.fd = d.fd;
	for (l.bs = LOOP_BS; l.bs > d.lbs && d.size / l.bs < 4 * LOOP_QD;
	    l.bs /= 2)
		;
	if ((l.groups = d.size / l.bs / LOOP_QD) == 0)
		return (fail_line("loop", o->dev, "size", ENOSPC));
	if (aio_setup(LOOP_QD, &l.ctx) != 0)
		return (fail_line("loop", o->dev, "io_setup", errno));
	l.seed = o->seed;
	l.rnd = mix64(o->seed) | 1;
	ios = errors = 0;
	stop = false;
	for (i = 0; i < LOOP_QD; i++) {
		if ((l.slot[i].buf = alloc_buf(l.bs)) == NULL)
			return (fail_line("loop", o->dev, "buffer", ENOMEM));
		l.slot[i].reading = true;	/* so the first step writes */
	}
	t0 = now_us();
	tick = t0 + 1000000;
	for (i = 0; i < LOOP_QD && !stop; i++)
		if (loop_start(&l, i) != 0) {
			errors++;
			stop = true;
		}
	while (l.inflight > 0) {
		tmo.tv_sec = 0;
		tmo.tv_nsec = 200 * 1000 * 1000;
		r = aio_getevents(l.ctx, 1, LOOP_QD, ev, &tmo);
		if (r < 0 && errno != EINTR) {
			fprintf(stderr, "xbbwork: io_getevents: %s\n",
			    strerror(errno));
			errors++;
			break;
		}
		for (i = 0; i < (size_t)(r > 0 ? r : 0); i++) {
			ios++;
			if (!loop_done(&l, &ev[i], errors))
				errors++;
			if (!stop && loop_start(&l, (size_t)ev[i].data) != 0) {
				errors++;
				stop = true;
			}
		}
		t = now_us();
		if (t >= tick) {
			printf("XBBWORK loop ios=%" PRIu64 " errors=%" PRIu64
			    "\n", ios, errors);
			while (tick <= t)
				tick += 1000000;
		}
		if ((o->given & O_SECONDS) && t - t0 >= o->seconds * 1000000)
			stop = true;
	}
	aio_destroy(l.ctx);
	printf("XBBWORK loop dev=%s bs=%" PRIu64 " qd=%d seed=%" PRIu64
	    " ios=%" PRIu64 " errors=%" PRIu64 " ms=%" PRIu64 " result=%s\n",
	    o->dev, l.bs, LOOP_QD, o->seed, ios, errors,
	    (now_us() - t0) / 1000, errors == 0 ? "PASS" : "FAIL");
	for (i = 0; i < LOOP_QD; i++)
		free(l.slot[i].buf);
	close(d.fd);
	return (errors != 0);
}

/* --------------------------------------------------------------- info */

/* Prints " key=value" from a sysfs file, blanks made '_', or key=NA. */
static void
print_sysfs(const char *dir, const char *key)
{
	char path[256], val[128], *p;
	FILE *f;

	if (dir != NULL)
		snprintf(path, sizeof(path), "%s/queue/%s", dir, key);
	if (dir == NULL || (f = fopen(path, "r")) == NULL) {
		printf(" %s=NA", key);
		return;
	}
	if (fgets(val, sizeof(val), f) == NULL)
		val[0] = '\0';
	fclose(f);
	val[strcspn(val, "\n")] = '\0';
	for (p = val; *p != '\0'; p++)
		if (*p == ' ' || *p == '\t' || *p == '=')
			*p = '_';
	printf(" %s=%s", key, val[0] != '\0' ? val : "NA");
}

static int
cmd_info(const struct opts *o)
{
	static const char *const keys[] = {
		"max_hw_sectors_kb", "max_segments", "max_segment_size",
		"logical_block_size", "discard_granularity",
		"discard_max_bytes", "write_cache", "rotational"
	};
	struct dirent *de;
	struct dev d;
	char dir[64], path[80];
	const char *sys;
	unsigned pbs;
	DIR *dp;
	int e, nq;
	size_t i;

	if ((e = dev_open(&d, o->dev, false)) != 0)
		return (fail_line("info", o->dev, "open", e));
	sys = NULL;
	if (d.blk) {
		snprintf(dir, sizeof(dir), "/sys/dev/block/%u:%u",
		    major(d.rdev), minor(d.rdev));
		sys = dir;
	}
	printf("XBBWORK info dev=%s size=%" PRIu64, o->dev, d.size);
	if (d.blk)
		printf(" lbs=%u", d.lbs);
	else
		printf(" lbs=NA");
	if (d.blk && ioctl(d.fd, BLKPBSZGET, &pbs) == 0)
		printf(" pbs=%u", pbs);
	else
		printf(" pbs=NA");
	for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		print_sysfs(sys, keys[i]);
	nq = -1;
	if (sys != NULL) {
		snprintf(path, sizeof(path), "%s/mq", sys);
		if ((dp = opendir(path)) != NULL) {
			nq = 0;
			while ((de = readdir(dp)) != NULL)
				if (de->d_name[0] != '.')
					nq++;
			closedir(dp);
		}
	}
	if (nq >= 0)
		printf(" nr_hw_queues=%d", nq);
	else
		printf(" nr_hw_queues=NA");
	printf(" direct=%d result=PASS\n", d.direct);
	close(d.fd);
	return (0);
}

/* --------------------------------------------------------------- main */

static const struct command {
	const char	*name;
	int		 (*fn)(const struct opts *);
	int		 nargs;		/* positional arguments after DEV */
	unsigned	 allowed;
	unsigned	 required;
} commands[] = {
	{ "verify", cmd_verify, 0, O_SEED | O_BS, 0 },
	{ "check", cmd_check, 0, O_SEED | O_BS, O_SEED },
	{ "bench", cmd_bench, 0,
	    O_MODE | O_BS | O_QD | O_SECONDS | O_BYTES | O_SPAN | O_SEED,
	    O_MODE | O_BS | O_QD },
	{ "flush", cmd_flush, 0, O_COUNT, 0 },
	{ "discard", cmd_discard, 2, 0, 0 },
	{ "loop", cmd_loop, 0, O_SECONDS | O_SEED, 0 },
	{ "info", cmd_info, 0, 0, 0 },
};

static void
usage(void)
{
	fprintf(stderr,
	    "usage: xbbwork verify DEV [--seed N] [--bs BYTES]\n"
	    "       xbbwork check DEV --seed N [--bs BYTES]\n"
	    "       xbbwork bench DEV --mode seqread|seqwrite|randread|"
	    "randwrite --bs BYTES\n"
	    "               --qd N (--seconds S | --bytes N) [--span BYTES] "
	    "[--seed N]\n"
	    "       xbbwork flush DEV [--count N]\n"
	    "       xbbwork discard DEV OFFSET LEN\n"
	    "       xbbwork loop DEV [--seconds S] [--seed N]\n"
	    "       xbbwork info DEV\n"
	    "Numbers are decimal or 0x hex, with an optional k, m, g or t "
	    "(binary) suffix.\n");
	exit(2);
}

/* Returns 0 and the number, or -1 if s is not one. */
static int
parse_num(const char *s, uint64_t *v)
{
	unsigned long long n;
	unsigned shift;
	char *end;

	if (s == NULL || *s < '0' || *s > '9')
		return (-1);
	errno = 0;
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
		n = strtoull(s, &end, 16);
	else
		n = strtoull(s, &end, 10);
	if (errno != 0 || end == s)
		return (-1);
	switch (*end) {
	case '\0':
		shift = 0;
		break;
	case 'k': case 'K':
		shift = 10;
		break;
	case 'm': case 'M':
		shift = 20;
		break;
	case 'g': case 'G':
		shift = 30;
		break;
	case 't': case 'T':
		shift = 40;
		break;
	default:
		return (-1);
	}
	if (shift != 0 && (end[1] != '\0' || n > (UINT64_MAX >> shift)))
		return (-1);
	*v = (uint64_t)n << shift;
	return (0);
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "seed", required_argument, NULL, O_SEED },
		{ "bs", required_argument, NULL, O_BS },
		{ "mode", required_argument, NULL, O_MODE },
		{ "qd", required_argument, NULL, O_QD },
		{ "seconds", required_argument, NULL, O_SECONDS },
		{ "bytes", required_argument, NULL, O_BYTES },
		{ "span", required_argument, NULL, O_SPAN },
		{ "count", required_argument, NULL, O_COUNT },
		{ NULL, 0, NULL, 0 }
	};
	const struct command *c;
	struct opts o;
	uint64_t *v;
	size_t i;
	int ch, li;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 2)
		usage();
	c = NULL;
	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(argv[1], commands[i].name) == 0)
			c = &commands[i];
	if (c == NULL)
		usage();
	memset(&o, 0, sizeof(o));
	o.seed = 1;
	/* argv[1], the command, stands in for the program name. */
	while ((ch = getopt_long(argc - 1, argv + 1, "", longopts,
	    &li)) != -1) {
		if (ch == '?' || ((unsigned)ch & c->allowed) == 0) {
			if (ch != '?')
				fprintf(stderr, "xbbwork: %s takes no --%s\n",
				    c->name, longopts[li].name);
			usage();
		}
		o.given |= (unsigned)ch;
		if (ch == O_MODE) {
			for (i = 0; i < 4; i++)
				if (strcmp(optarg, mode_names[i]) == 0)
					break;
			if (i == 4)
				usage();
			o.mode = (enum mode)i;
			continue;
		}
		v = ch == O_SEED ? &o.seed : ch == O_BS ? &o.bs :
		    ch == O_QD ? &o.qd : ch == O_SECONDS ? &o.seconds :
		    ch == O_BYTES ? &o.bytes : ch == O_SPAN ? &o.span :
		    &o.count;
		if (parse_num(optarg, v) != 0) {
			fprintf(stderr, "xbbwork: bad number '%s'\n", optarg);
			usage();
		}
	}
	if ((o.given & c->required) != c->required ||
	    argc - 1 - optind != 1 + c->nargs)
		usage();
	o.dev = argv[1 + optind];
	for (i = 0; i < (size_t)c->nargs; i++)
		o.arg[i] = argv[2 + optind + i];
	if ((o.given & O_BS) && (o.bs == 0 || o.bs % SECTOR != 0 ||
	    o.bs > MAX_BS)) {
		fprintf(stderr, "xbbwork: --bs must be a multiple of %d, at "
		    "most %d\n", SECTOR, MAX_BS);
		usage();
	}
	return (c->fn(&o));
}
