/*
 * freestanding.h: what the freestanding FreeBSD/amd64 inits of the test
 * harnesses share (tests/freebsd/init.c, the boot smoke test, and
 * tests/freebsd/xen/dd-init.c, the Xen driver domain): raw system calls,
 * the memory and string helpers the compiler and the tests need, line-
 * buffered console output, sysctl queries, the power-off and the entry
 * point (XBB_ENTRY).
 *
 * No libc: the system call numbers, flag values and structure layouts
 * below are the kernel's published ABI (sys/kern/syscalls.master,
 * sys/sys/sysctl.h, sys/sys/fcntl.h, sys/sys/reboot.h, sys/sys/kenv.h).
 * A file includes this once, after defining XBB_INIT_TAG, the prefix of
 * every console line ("XBB-SMOKE: ", "XBB-DD: ").  Helpers are static
 * and marked unused, so that each init keeps only those it calls and the
 * compiler inlines them as it would its own.
 */

#ifndef XBB_FREESTANDING_H
#define	XBB_FREESTANDING_H

#define	XBB_HELPER	static __attribute__((__unused__))

#ifndef XBB_INIT_TAG
#error "define XBB_INIT_TAG before including freestanding.h"
#endif

typedef unsigned long size_t;
typedef long ssize_t;
typedef unsigned long uint64_t;
typedef unsigned int uint32_t;
typedef unsigned char uint8_t;

/* System call numbers (sys/kern/syscalls.master). */
#define	SYS_exit		1
#define	SYS_read		3
#define	SYS_write		4
#define	SYS_open		5
#define	SYS_close		6
#define	SYS_ioctl		54
#define	SYS_reboot		55
#define	SYS_mkdir		136
#define	SYS___sysctl		202
#define	SYS_clock_gettime	232
#define	SYS_nanosleep		240
#define	SYS_modfind		303
#define	SYS_kldload		304
#define	SYS_kldunload		305
#define	SYS_kldfind		306
#define	SYS_kldstat		308
#define	SYS_nmount		378
#define	SYS_kenv		390
#define	SYS_pread		475
#define	SYS_pwrite		476
#define	SYS_ftruncate		480
#define	SYS___sysctlbyname	570

#define	O_RDONLY	0x0000
#define	O_RDWR		0x0002
#define	O_CREAT		0x0200
#define	O_NOCTTY	0x8000
#define	RB_POWEROFF	0x4000
#define	CLOCK_MONOTONIC	4
#define	ENOENT		2

/* kenv(2) actions (sys/sys/kenv.h). */
#define	KENV_GET	0
#define	KENV_SET	1
#define	KENV_UNSET	2

/* sysctl meta-OIDs (sys/sys/sysctl.h). */
#define	CTL_SYSCTL		0
#define	CTL_SYSCTL_NAME		1
#define	CTL_SYSCTL_NEXT		2
#define	CTL_SYSCTL_NAME2OID	3
#define	CTL_SYSCTL_OIDFMT	4
#define	CTL_SYSCTL_OIDDESCR	5
#define	MAXOID			24

struct timespec_buf {
	long	sec;
	long	nsec;
};

/* ------------------------------------------------------------------ */
/* System calls: the number in %rax, arguments in %rdi %rsi %rdx %r10 %r8
 * %r9; on failure the carry flag is set and %rax holds the errno. */

XBB_HELPER long
syscall6(long num, long a1, long a2, long a3, long a4, long a5, long a6)
{
	register long r10 __asm__("r10") = a4;
	register long r8 __asm__("r8") = a5;
	register long r9 __asm__("r9") = a6;
	unsigned char failed;
	long rax = num;

	__asm__ volatile("syscall\n\tsetc %1"
	    : "+a"(rax), "=r"(failed), "+D"(a1), "+S"(a2), "+d"(a3),
	      "+r"(r10), "+r"(r8), "+r"(r9)
	    :
	    : "rcx", "r11", "memory", "cc");
	return (failed ? -rax : rax);
}

#define	SC(n, a, b, c, d, e, f)						\
	syscall6((n), (long)(a), (long)(b), (long)(c), (long)(d),	\
	    (long)(e), (long)(f))

/* Freestanding helpers the compiler may call on its own. */
void *memset(void *, int, size_t);
void *memcpy(void *, const void *, size_t);

void *
memset(void *dst, int c, size_t n)
{
	volatile unsigned char *d = dst;

	while (n-- > 0)
		*d++ = (unsigned char)c;
	return (dst);
}

void *
memcpy(void *dst, const void *src, size_t n)
{
	volatile unsigned char *d = dst;
	const unsigned char *s = src;

	while (n-- > 0)
		*d++ = *s++;
	return (dst);
}

XBB_HELPER size_t
slen(const char *s)
{
	size_t n = 0;

	while (s[n] != '\0')
		n++;
	return (n);
}

XBB_HELPER int
seq(const char *a, const char *b)
{
	while (*a != '\0' && *a == *b) {
		a++;
		b++;
	}
	return (*a == *b);
}

/* Appends src to the NUL-terminated dst of size bytes, truncating. */
XBB_HELPER void
cat(char *dst, size_t size, const char *src)
{
	size_t d = slen(dst), k = 0;

	while (src[k] != '\0' && d + 1 < size)
		dst[d++] = src[k++];
	dst[d] = '\0';
}

XBB_HELPER int
prefix(const char *s, const char *p)
{
	while (*p != '\0' && *s == *p) {
		s++;
		p++;
	}
	return (*p == '\0');
}

XBB_HELPER void
scopy(char *dst, size_t size, const char *src)
{
	size_t i;

	for (i = 0; i + 1 < size && src[i] != '\0'; i++)
		dst[i] = src[i];
	dst[i] = '\0';
}

/* ------------------------------------------------------------------ */
/* Console output, line-buffered so that each report line is one write. */

static int console = -1;
static char line[1024];
static size_t linelen;
static unsigned passes, failures;

XBB_HELPER void
put(const char *s)
{
	while (*s != '\0' && linelen < sizeof(line) - 2)
		line[linelen++] = *s++;
}

/* v in base 10 or 16, without a prefix. */
XBB_HELPER void
put_base(uint64_t v, unsigned base)
{
	char buf[24];
	int i = sizeof(buf) - 1;

	buf[i] = '\0';
	do {
		buf[--i] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v != 0);
	put(&buf[i]);
}

XBB_HELPER void
putu(uint64_t v)
{
	put_base(v, 10);
}

XBB_HELPER void
puti(long v)
{
	if (v < 0) {
		put("-");
		putu((uint64_t)-v);
	} else
		putu((uint64_t)v);
}

XBB_HELPER void
putx(uint64_t v)
{
	put("0x");
	put_base(v, 16);
}

XBB_HELPER void
begin(const char *kind)
{
	linelen = 0;
	put(XBB_INIT_TAG);
	put(kind);
	put(" ");
}

XBB_HELPER void
end(void)
{
	line[linelen++] = '\n';
	if (console >= 0)
		SC(SYS_write, console, line, linelen, 0, 0, 0);
	linelen = 0;
}

XBB_HELPER void
ok(const char *what)
{
	passes++;
	begin("ok");
	put(what);
}

XBB_HELPER void
fail(const char *what)
{
	failures++;
	begin("FAIL");
	put(what);
	put(": ");
}

XBB_HELPER uint64_t
now_us(void)
{
	struct timespec_buf ts;

	if (SC(SYS_clock_gettime, CLOCK_MONOTONIC, &ts, 0, 0, 0, 0) != 0)
		return (0);
	return ((uint64_t)ts.sec * 1000000u + (uint64_t)ts.nsec / 1000u);
}

/* ------------------------------------------------------------------ */
/* sysctl */

/* The OID of a name, or a negative errno. */
XBB_HELPER long
name2oid(const char *name, int *oid, size_t *oidlen)
{
	int req[2] = { CTL_SYSCTL, CTL_SYSCTL_NAME2OID };
	size_t len = MAXOID * sizeof(int);
	long r;

	r = SC(SYS___sysctl, req, 2, oid, &len, name, slen(name));
	if (r < 0)
		return (r);
	*oidlen = len / sizeof(int);
	return (0);
}

/* A meta query (name, format, description) about an OID into buf. */
XBB_HELPER long
meta(int what, const int *oid, size_t oidlen, void *buf, size_t *len)
{
	int req[2 + MAXOID];
	size_t i;

	req[0] = CTL_SYSCTL;
	req[1] = what;
	for (i = 0; i < oidlen && i < MAXOID; i++)
		req[2 + i] = oid[i];
	return (SC(SYS___sysctl, req, 2 + i, buf, len, 0, 0));
}

XBB_HELPER long
sysctl_read(const char *name, void *buf, size_t *len)
{
	return (SC(SYS___sysctlbyname, name, slen(name), buf, len, 0, 0));
}

/*
 * The OID after cur[0..curlen) in the tree, into next (MAXOID ints): its
 * length, or 0 when there is none or it is no longer under
 * base[0..baselen).  A walk of the subtree under base starts with cur =
 * base and copies next into cur after each step.
 */
XBB_HELPER size_t
sysctl_next_under(const int *base, size_t baselen, const int *cur,
    size_t curlen, int *next)
{
	size_t nextlen = MAXOID * sizeof(int), i;

	if (meta(CTL_SYSCTL_NEXT, cur, curlen, next, &nextlen) != 0)
		return (0);
	nextlen /= sizeof(int);
	if (nextlen <= baselen)
		return (0);
	for (i = 0; i < baselen; i++)
		if (next[i] != base[i])
			return (0);
	return (nextlen);
}

/* The first line of kern.version into buf (NUL-terminated); 0 or < 0. */
XBB_HELPER long
kernel_version(char *buf, size_t size)
{
	size_t len = size - 1, i;
	long r;

	r = sysctl_read("kern.version", buf, &len);
	if (r != 0)
		return (r);
	buf[len < size ? len : size - 1] = '\0';
	for (i = 0; buf[i] != '\0'; i++)
		if (buf[i] == '\n') {
			buf[i] = '\0';
			break;
		}
	return (0);
}

/* Appends the tally: "pass=N fail=N us=N" (microseconds since start). */
XBB_HELPER void
put_tally(uint64_t start)
{
	put("pass=");
	putu(passes);
	put(" fail=");
	putu(failures);
	put(" us=");
	putu(now_us() - start);
}

/* Powers the machine off; never returns. */
__attribute__((__noreturn__)) XBB_HELPER void
power_off_now(void)
{
	SC(SYS_reboot, RB_POWEROFF, 0, 0, 0, 0, 0);
	for (;;)
		SC(SYS_exit, 0, 0, 0, 0, 0, 0);
}

/*
 * The entry point, calling main (void main(void)), and the ELF note that
 * marks the file as a FreeBSD binary (note type 1, NT_FREEBSD_ABI_TAG:
 * the __FreeBSD_version it was built for, XBB_FREEBSD_VERSION_STR).
 */
#define	XBB_ENTRY(main)							\
__asm__(								\
    ".section .note.tag,\"a\",@note\n"					\
    ".p2align 2\n"							\
    ".long 8\n"								\
    ".long 4\n"								\
    ".long 1\n"								\
    ".asciz \"FreeBSD\"\n"						\
    ".long " XBB_FREEBSD_VERSION_STR "\n"				\
    ".text\n"								\
    ".globl _start\n"							\
    ".type _start,@function\n"						\
    "_start:\n"								\
    "	xorl %ebp, %ebp\n"						\
    "	andq $-16, %rsp\n"						\
    "	call " #main "\n"						\
    "1:	hlt\n"								\
    "	jmp 1b\n")

#endif /* !XBB_FREESTANDING_H */
