# xbb.ko: the Xen block back-end driver "xbb" for FreeBSD.
#
# A kernel module of two halves: the C shim in sys-glue/ (newbus driver,
# interrupt filter and taskqueue, grant-table hypercalls, GEOM/vnode I/O,
# sysctl tree) and the Rust library in kmod/ (the protocol core and its
# FreeBSD platform), built for a soft-float kernel target and linked in as
# one relocatable object.
#
# On FreeBSD:  make && kldload ./xbb.ko   (needs a Rust toolchain with the
#              library sources for -Zbuild-std: rustup's rust-src component)
# On Linux:    make kmod FREEBSD_SRC=/path/to/freebsd-src  (GNUmakefile, which
#              runs scripts/kmod.sh: bmake + clang against that tree)

KMOD=	xbb
SRCS=	xbb.c xbb_io.c
SRCS+=	bus_if.h device_if.h vnode_if.h xenbus_if.h opt_global.h

.PATH:	${.CURDIR}/sys-glue
CFLAGS+=	-I${.CURDIR}/sys-glue

# The Rust object: scripts/kmod.sh builds it with cargo -Zbuild-std.  A
# caller that built it already (scripts/kmod.sh ko, on Linux) puts it in the
# object directory and sets KMOD_SKIP_RUST.
OBJS+=	xbb_rust.o
CLEANFILES+=	xbb_rust.o
.if !defined(KMOD_SKIP_RUST)
xbb_rust.o: .PHONY
	env KMOD_BUILD=${.OBJDIR}/rust sh ${.CURDIR}/scripts/kmod.sh rust-obj \
	    ${.OBJDIR}/${.TARGET}
CLEANDIRS+=	${.OBJDIR}/rust
.endif

.include <bsd.kmod.mk>

# The kernel's module linker refuses GOT-relative relocations, which some
# compilers use to reach __stack_chk_guard: keep the stack protector out.
# After the include, so that it follows kern.mk's -fstack-protector.
CFLAGS+=	-fno-stack-protector
