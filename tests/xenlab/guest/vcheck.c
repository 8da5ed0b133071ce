/*
 * vcheck: does a process keep its registers across context switches?
 *
 * Loads the sixteen XMM registers (and, where the CPU and kernel enable AVX,
 * the upper halves of the YMM registers) with a pattern, lets the kernel
 * switch away -- by sched_yield(2), by sleeping in nanosleep(2), and by
 * spinning on integer instructions until an interrupt or the timer takes
 * the CPU -- and stores them back. A
 * register that comes back different means the vector state of this
 * process was lost or mixed with another's while it was switched out,
 * which corrupts whatever memcpy, strlen or malloc had in flight. It also
 * checks that the thread pointer (%fs base, glibc's TCB) survives.
 *
 *   vcheck [--seconds S] [--prefix TEXT] [--spin N] [--sleep-us U] [--selftest]
 *
 * Runs S seconds (0: until killed). Each round spins N iterations
 * (default 200000) and sleeps U microseconds (default 10000), so a checker
 * costs a fraction of a CPU and leaves room for the work around it; run
 * two or more at once so the kernel has something to switch to. Prints "<prefix>VCHECK FAIL ..." for
 * each of the first 8 lost registers, "<prefix>VCHECK progress ..." every
 * 30 s and "<prefix>VCHECK done ..." at the end; exit status 1 when
 * anything was lost. --selftest changes one stored register of the first
 * round on purpose, to show that a loss is reported.
 *
 * Built statically (gcc -static -O2) for the xenlab dom0 and guests.
 */
#include <asm/prctl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NREG 16

static const char *prefix = "";
static unsigned long failures_printed;

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* CPUID.1:ECX.AVX and OSXSAVE, and XCR0 enabling SSE and AVX state. */
static int have_avx(void)
{
	uint32_t a, b, c, d, lo, hi;

	__asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
	if (!(c & (1u << 27)) || !(c & (1u << 28)))
		return 0;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return (lo & 6) == 6;
}

/*
 * One round trip: load the registers from `in`, switch away (`how` 0:
 * sched_yield; 1: spin `spin` iterations; 2: nanosleep(`ts`)), store them
 * into `out`. Only rax, rcx, rdi, rsi and r11 besides the vector registers
 * are touched (syscall clobbers rcx and r11).
 */
#define LOAD(op, r, off) op " " #off "(%[in]), %%" r "\n\t"
#define STORE(op, r, off) op " %%" r ", " #off "(%[out])\n\t"
#define SWITCH                                          \
	"cmp $1, %[how]\n\t"                            \
	"je 1f\n\t"                                     \
	"ja 4f\n\t"                                     \
	"mov $" XSTR(SYS_sched_yield) ", %%eax\n\t"     \
	"syscall\n\t"                                   \
	"jmp 2f\n\t"                                    \
	"4: mov $" XSTR(SYS_nanosleep) ", %%eax\n\t"    \
	"mov %[ts], %%rdi\n\t"                          \
	"xor %%esi, %%esi\n\t"                          \
	"syscall\n\t"                                   \
	"jmp 2f\n\t"                                    \
	"1: mov %[spin], %%rcx\n\t"                     \
	"3: dec %%rcx\n\t"                              \
	"jnz 3b\n\t"                                    \
	"2:\n\t"
#define XSTR(x) STR(x)
#define STR(x) #x

static struct timespec sleep_ts = { 0, 10000000 };

/* The 16 registers REG0..REG15, W bytes each, moved by INSN with MOVE
 * (LOAD or STORE) from or to offset W * n of the buffer. */
#define ALL16(MOVE, insn, reg, w)                                               \
	MOVE(insn, reg "0", 0 * w) MOVE(insn, reg "1", 1 * w)                   \
	MOVE(insn, reg "2", 2 * w) MOVE(insn, reg "3", 3 * w)                   \
	MOVE(insn, reg "4", 4 * w) MOVE(insn, reg "5", 5 * w)                   \
	MOVE(insn, reg "6", 6 * w) MOVE(insn, reg "7", 7 * w)                   \
	MOVE(insn, reg "8", 8 * w) MOVE(insn, reg "9", 9 * w)                   \
	MOVE(insn, reg "10", 10 * w) MOVE(insn, reg "11", 11 * w)               \
	MOVE(insn, reg "12", 12 * w) MOVE(insn, reg "13", 13 * w)               \
	MOVE(insn, reg "14", 14 * w) MOVE(insn, reg "15", 15 * w)

/* A round trip through the 16 registers REG (W bytes, moved by INSN),
 * ending with TAIL. */
#define ROUND(name, insn, reg, w, tail)                                         \
	static void name(const uint8_t *in, uint8_t *out, long how, long spin)  \
	{                                                                       \
		__asm__ volatile(                                               \
		    ALL16(LOAD, insn, reg, w) SWITCH ALL16(STORE, insn, reg, w) tail \
		    :                                                           \
		    : [in] "r"(in), [out] "r"(out), [how] "r"(how),             \
		      [spin] "r"(spin), [ts] "r"(&sleep_ts)                     \
		    : "rax", "rcx", "rdi", "rsi", "r11", "memory", "xmm0",      \
		      "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",   \
		      "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13",       \
		      "xmm14", "xmm15");                                        \
	}

ROUND(xmm_round, "movdqu", "xmm", 16, "")
ROUND(ymm_round, "vmovdqu", "ymm", 32, "vzeroupper\n\t")

/* Compares register by register; returns how many differ, reports some. */
static unsigned compare(const uint8_t *in, const uint8_t *out, unsigned width,
    const char *kind, const char *how, unsigned long iter)
{
	unsigned r, i, lost = 0;

	for (r = 0; r < NREG; r++) {
		const uint8_t *a = in + r * width, *b = out + r * width;

		if (memcmp(a, b, width) == 0)
			continue;
		lost++;
		if (failures_printed++ >= 8)
			continue;
		printf("%sVCHECK FAIL pid=%d iter=%lu switch=%s reg=%s%u want=", prefix,
		    (int)getpid(), iter, how, kind, r);
		for (i = 0; i < width; i++)
			printf("%02x", a[width - 1 - i]);
		printf(" got=");
		for (i = 0; i < width; i++)
			printf("%02x", b[width - 1 - i]);
		printf("\n");
	}
	return lost;
}

int main(int argc, char **argv)
{
	double seconds = 60, start, last, t;
	long spin = 200000, sleep_us = 10000;
	unsigned long iter = 0, yield_lost = 0, spin_lost = 0, sleep_lost = 0, fs_lost = 0;
	uint64_t seed, fs0 = 0, fs;
	int avx, i, selftest = 0;
	static uint8_t in[NREG * 32], out[NREG * 32];

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
			seconds = atof(argv[++i]);
		else if (strcmp(argv[i], "--prefix") == 0 && i + 1 < argc)
			prefix = argv[++i];
		else if (strcmp(argv[i], "--spin") == 0 && i + 1 < argc)
			spin = atol(argv[++i]);
		else if (strcmp(argv[i], "--sleep-us") == 0 && i + 1 < argc)
			sleep_us = atol(argv[++i]);
		else if (strcmp(argv[i], "--selftest") == 0)
			selftest = 1;
		else {
			fprintf(stderr, "usage: vcheck [--seconds S] [--prefix TEXT] [--spin N] [--sleep-us U] [--selftest]\n");
			return 2;
		}
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	sleep_ts.tv_sec = sleep_us / 1000000;
	sleep_ts.tv_nsec = (sleep_us % 1000000) * 1000;
	avx = have_avx();
	syscall(SYS_arch_prctl, ARCH_GET_FS, &fs0);
	seed = 0x9e3779b97f4a7c15ull ^ ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL);
	start = last = now();
	printf("%sVCHECK start pid=%d avx=%d seconds=%g\n", prefix, (int)getpid(), avx, seconds);
	for (;;) {
		long how;

		for (how = 0; how < 3; how++) {
			static const char *const names[] = { "yield", "spin", "sleep" };
			unsigned width = avx ? 32 : 16, lost;

			for (i = 0; i < (int)(NREG * width / 8); i++) {
				uint64_t v = xorshift(&seed);

				memcpy(in + 8 * i, &v, 8);
			}
			memset(out, 0, sizeof(out));
			if (avx)
				ymm_round(in, out, how, spin);
			else
				xmm_round(in, out, how, spin);
			if (selftest && iter == 0 && how == 0)
				out[5 * width + 3] ^= 0x40;
			lost = compare(in, out, width, avx ? "ymm" : "xmm", names[how], iter);
			if (how == 0)
				yield_lost += lost;
			else if (how == 1)
				spin_lost += lost;
			else
				sleep_lost += lost;
		}
		__asm__ volatile("mov %%fs:0, %0" : "=r"(fs));
		if (fs != fs0) {
			fs_lost++;
			if (failures_printed++ < 8)
				printf("%sVCHECK FAIL pid=%d iter=%lu fs:0=%#llx want %#llx\n", prefix,
				    (int)getpid(), iter, (unsigned long long)fs,
				    (unsigned long long)fs0);
		}
		iter++;
		t = now();
		if (seconds > 0 && t - start >= seconds)
			break;
		if (t - last >= 30) {
			last = t;
			printf("%sVCHECK progress pid=%d iters=%lu lost=%lu\n", prefix, (int)getpid(),
			    iter, yield_lost + spin_lost + sleep_lost + fs_lost);
		}
	}
	printf("%sVCHECK done pid=%d iters=%lu yield_lost=%lu spin_lost=%lu sleep_lost=%lu "
	       "fs_lost=%lu avx=%d\n",
	    prefix, (int)getpid(), iter, yield_lost, spin_lost, sleep_lost, fs_lost, avx);
	return (yield_lost || spin_lost || sleep_lost || fs_lost) ? 1 : 0;
}
