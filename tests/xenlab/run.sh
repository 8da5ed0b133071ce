#!/bin/bash
# xenlab: xbb-serve in a real Xen 4.17 host (Debian bookworm packages) booted
# under QEMU TCG, against unmodified Linux xen-blkfront guests.
#
#   tests/xenlab/run.sh [--scenarios 1,3,4] [--full] [--timeout SECONDS]
#
# Needs root on Debian bookworm. Everything built goes to XENLAB_DIR
# (default /tmp/xbb-xenlab); the debootstrap root and the kernel are cached
# there, the xbb-serve binary and the scripts are refreshed on every run.
# Environment:
#   XENLAB_DIR           work/cache directory (default /tmp/xbb-xenlab)
#   XENLAB_STANDIN=blkback  serve the "xbb" scenarios with the kernel's
#                        xen-blkback (tests the harness without xbb-serve)
#   XENLAB_BENCH_REPS, XENLAB_BENCH_SECS  comparison table (default 3 x 5 s)
#   XENLAB_BENCH_POOL=1  also bench xbb-serve with io = pool in each repetition
#   XENLAB_BENCH_DIRECT=1  also bench xbb-serve on the same image with xl's
#                        direct-io-safe (O_DIRECT) in each repetition
#   XENLAB_BENCH_QUEUES=1  also a two-vCPU guest's randread4k-qd32 from both
#                        vCPUs with one queue and with two, on xbb-serve and
#                        on xen-blkback, in each repetition
#   XENLAB_PROFILE=TEST[,TEST]  after the benchmark, profile dom0 (perf record -a -g,
#                        the host's perf copied in) while a guest runs TEST
#                        (e.g. seqread1m) on xbb-serve, then on xen-blkback
#   XENLAB_DISK_MB       size of each guest disk (default 64)
#   XENLAB_XBB_ARGS      extra arguments for xbb-serve
#   XENLAB_FIO=1         also run fio in the benchmark guests (--full only)
#   XENLAB_MIRROR        Debian mirror for debootstrap
#   XENLAB_EXTRA_DIR     more scenarios (*.sh defining s7, s8, ...), copied into dom0
#   XENLAB_CPU           QEMU CPU model (default max,-xsave; see README.md)
#   XENLAB_QEMU          which QEMU emulates the host: 7.2 (default: Debian
#                        bookworm's qemu-system-x86, installed and used as
#                        before) or backports (bookworm-backports' 10.x,
#                        unpacked beside it into XENLAB_DIR/qemu-backports
#                        and run from there; the installed packages are not
#                        touched, so the next default run uses 7.2 again)
#   XENLAB_XEN_ARGS      more arguments for Xen's command line
#   XENLAB_TCG_THREAD    QEMU TCG threading: multi (default, a host thread
#                        per vCPU) or single (one thread runs both vCPUs)
#   XENLAB_SMP           emulated CPUs Xen runs on (default 2)
#   XENLAB_STRESS_SECS   length of scenario 9 (default 240)
#   XENLAB_NICE          nice value of QEMU (default -10: before builds)
#   XENLAB_LOCK          lock file that keeps emulated hosts one at a time
#                        (default /tmp/xbb-emulator.lock)
#   CARGO_TARGET_DIR     where cargo builds xbb-serve
# Exit status: 0 when every check passed, 1 otherwise, 2 on a setup error.
set -u
set -o pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
DIR=${XENLAB_DIR:-/tmp/xbb-xenlab}
MIRROR=${XENLAB_MIRROR:-http://deb.debian.org/debian}
STANDIN=${XENLAB_STANDIN:-}
SCENARIOS="1,3,4"
TIMEOUT=""
FULL=0

while [ $# -gt 0 ]; do
	case "$1" in
	--scenarios) SCENARIOS=$2; shift ;;
	--scenarios=*) SCENARIOS=${1#*=} ;;
	--full) FULL=1 SCENARIOS="1,2,3,4,5,6" ;;
	--timeout) TIMEOUT=$2; shift ;;
	-h | --help) sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "xenlab: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done
SCEN_LIST=$(echo "$SCENARIOS" | tr ',' ' ')
case " $SCEN_LIST " in *" 2 "*) FULL=1 ;; esac
# Scenarios 1, 3 and 4 take about 300 s of the boot; scenario 9 its
# XENLAB_STRESS_SECS plus two guest boots; 10 and 11 more guests.
if [ -z "$TIMEOUT" ]; then
	TIMEOUT=$([ $FULL = 1 ] && echo 3600 || echo 900)
	case " $SCEN_LIST " in *" 9 "*) TIMEOUT=$((TIMEOUT + ${XENLAB_STRESS_SECS:-240} + 300)) ;; esac
	# Scenario 10 boots four guests (one with three disks, two that must
	# fail), 11 a guest on a qcow2 image through NBD: estimated at
	# 110-250 s and 45-120 s under TCG (README.md, not measured yet), with
	# room for a loaded machine.
	case " $SCEN_LIST " in *" 10 "*) TIMEOUT=$((TIMEOUT + 500)) ;; esac
	case " $SCEN_LIST " in *" 11 "*) TIMEOUT=$((TIMEOUT + 400)) ;; esac
	# Scenario 12: one guest verifying its disk four times over while
	# xbb-serve is killed and restarted, twice (not measured yet).
	case " $SCEN_LIST " in *" 12 "*) TIMEOUT=$((TIMEOUT + 600)) ;; esac
	# Scenario 13: a guest saved and restored three times and migrated
	# once, its disk verified throughout (not measured yet).
	case " $SCEN_LIST " in *" 13 "*) TIMEOUT=$((TIMEOUT + 900)) ;; esac
	# Scenario 14: one guest booted by pvgrub2, which reads its kernel and
	# initramfs 4 KiB at a time, then its data disk's verify (not
	# measured yet).
	case " $SCEN_LIST " in *" 14 "*) TIMEOUT=$((TIMEOUT + 600)) ;; esac
fi
# The emulated CPU. With -cpu max, TCG's XSAVE made processes in dom0 and
# in the guests die at random (README.md, "The emulated CPU"); without
# XSAVE, Xen and every kernel keep vector state with FXSAVE.
CPU=${XENLAB_CPU:-max,-xsave}
# The emulator: Debian's 7.2, or bookworm-backports' 10.x for an A/B of the
# emulated SVM (README.md, "Another QEMU").
QEMU_KIND=${XENLAB_QEMU:-7.2}
case "$QEMU_KIND" in
7.2 | backports) ;;
*) echo "xenlab: XENLAB_QEMU must be 7.2 or backports, not '$QEMU_KIND'" >&2; exit 2 ;;
esac

T0=$(date +%s)
TLAST=$T0
declare -a TIMES=()
step() { # record how long the previous step took, announce the next
	local now
	now=$(date +%s)
	[ -n "${CUR:-}" ] && TIMES+=("$CUR: $((now - TLAST)) s")
	TLAST=$now
	CUR=$1
	[ -n "$1" ] && echo "xenlab: == $1"
}
die() { echo "xenlab: ERROR: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, debootstrap, mkfs)"
[ -r /etc/debian_version ] || die "needs Debian bookworm"
mkdir -p "$DIR"

# ---------------------------------------------------------- host packages
step "host packages"
export DEBIAN_FRONTEND=noninteractive
HOST_PKGS="xen-hypervisor-4.17-amd64 qemu-system-x86 debootstrap busybox-static fio e2fsprogs cpio kmod gcc libc6-dev gzip libxen-dev gdb"
missing=""
for p in $HOST_PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2> /dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "xenlab: installing:$missing"
	apt-get update -qq || true
	# Debian's qemu-system-x86 (7.2) conflicts with a newer qemu-utils some
	# images ship: pin qemu-utils to the bookworm version when it is there.
	extra=""
	if dpkg-query -W -f='${Status}' qemu-utils 2> /dev/null | grep -q 'install ok installed'; then
		v=$(apt-cache madison qemu-utils | awk -F'|' '$2 ~ /7\.2/ { gsub(/ /, "", $2); print $2; exit }')
		[ -n "$v" ] && extra="qemu-utils=$v"
	fi
	# shellcheck disable=SC2086
	apt-get install -y -q --allow-downgrades --no-install-recommends $missing $extra > "$DIR/apt.log" 2>&1 ||
		{ tail -n 20 "$DIR/apt.log"; die "apt-get install failed (log: $DIR/apt.log)"; }
fi
XEN_GZ=$(ls /boot/xen-4.17-amd64.gz 2> /dev/null) || die "no /boot/xen-4.17-amd64.gz"

# ------------------------------------------------------------------- QEMU
# XENLAB_QEMU=backports: bookworm-backports' qemu-system-x86 runs beside
# Debian's 7.2 instead of replacing it (a system-wide switch would change
# the emulator under any other run on this machine, and apt would have to
# switch back for the next default run). apt works on a private sources
# list, package lists and cache in $QPREFIX/apt, so the machine's apt state
# is not touched either; the packages are unpacked with dpkg -x and run
# through a wrapper that points QEMU at its own modules and firmware
# (backports' SeaBIOS; the 7.2 install's firmware stays the fallback).
QEMU_BIN=qemu-system-x86_64
if [ "$QEMU_KIND" = backports ]; then
	step "QEMU from bookworm-backports"
	QPREFIX=$DIR/qemu-backports
	# 10.x wants a newer SeaBIOS (>> 1.16.3) than bookworm's 1.16.2.
	QPKGS="qemu-system-x86 qemu-system-common qemu-system-data seabios"
	if [ ! -f "$QPREFIX/.done" ]; then
		rm -rf "$QPREFIX"
		mkdir -p "$QPREFIX/apt/lists/partial" "$QPREFIX/apt/cache/archives/partial" \
			"$QPREFIX/apt/sources.d" "$QPREFIX/debs" "$QPREFIX/root"
		: > "$QPREFIX/apt/status"
		echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bookworm-backports main" \
			> "$QPREFIX/apt/sources.list"
		qapt() {
			apt-get -q -o Dir::Etc::SourceList="$QPREFIX/apt/sources.list" \
				-o Dir::Etc::SourceParts="$QPREFIX/apt/sources.d" \
				-o Dir::State::Lists="$QPREFIX/apt/lists" \
				-o Dir::State::status="$QPREFIX/apt/status" \
				-o Dir::Cache="$QPREFIX/apt/cache" \
				-o APT::Sandbox::User=root "$@"
		}
		{ qapt update && (cd "$QPREFIX/debs" && qapt download -t bookworm-backports $QPKGS); } \
			> "$DIR/qemu-backports.log" 2>&1 ||
			{ tail -n 20 "$DIR/qemu-backports.log"; die "could not download $QPKGS from bookworm-backports (log: $DIR/qemu-backports.log)"; }
		for d in "$QPREFIX"/debs/*.deb; do
			dpkg -x "$d" "$QPREFIX/root" || die "dpkg -x $d failed"
		done
		[ -x "$QPREFIX/root/usr/bin/qemu-system-x86_64" ] || die "no qemu-system-x86_64 in $QPREFIX/debs"
		# The host's libraries must do (backports builds against bookworm).
		nf=$(ldd "$QPREFIX/root/usr/bin/qemu-system-x86_64" | awk '/not found/ { print $1 }' | tr '\n' ' ')
		[ -z "$nf" ] || die "the backports QEMU needs libraries this host lacks: $nf(apt-get install the packages that ship them)"
		mkdir -p "$QPREFIX/bin"
		cat > "$QPREFIX/bin/qemu-system-x86_64" <<-EOF
			#!/bin/sh
			# bookworm-backports' QEMU, unpacked by tests/xenlab/run.sh (XENLAB_QEMU=backports)
			QEMU_MODULE_DIR='$QPREFIX/root/usr/lib/x86_64-linux-gnu/qemu'
			export QEMU_MODULE_DIR
			exec '$QPREFIX/root/usr/bin/qemu-system-x86_64' -L '$QPREFIX/root/usr/share/qemu' -L '$QPREFIX/root/usr/share/seabios' -L /usr/share/qemu "\$@"
		EOF
		chmod +x "$QPREFIX/bin/qemu-system-x86_64"
		(cd "$QPREFIX/debs" && ls *.deb) > "$QPREFIX/.done"
		rm -rf "$QPREFIX/debs" "$QPREFIX/apt/cache"
	fi
	QEMU_BIN=$QPREFIX/bin/qemu-system-x86_64
else
	# The default: the installed package, which should be bookworm's 7.2.
	qv=$(dpkg-query -W -f='${Version}' qemu-system-x86 2> /dev/null)
	case "$qv" in
	*:7.2* | 7.2*) ;;
	*) echo "xenlab: WARNING: the installed qemu-system-x86 is '$qv', not bookworm's 7.2;" \
		"reinstall it with: apt-get install --allow-downgrades qemu-system-x86/bookworm" \
		"qemu-system-common/bookworm qemu-system-data/bookworm (and qemu-utils/bookworm)" ;;
	esac
fi
QEMU_VERSION=$("$QEMU_BIN" --version 2> /dev/null | head -n 1)
[ -n "$QEMU_VERSION" ] || die "$QEMU_BIN --version failed"
echo "xenlab: QEMU ($QEMU_KIND): $QEMU_BIN: $QEMU_VERSION"

# ------------------------------------------------------------------ kernel
step "kernel"
KPKG=${XENLAB_KERNEL_PKG:-$(apt-cache depends linux-image-amd64 2> /dev/null | sed -n 's/.*Depends: \(linux-image-[0-9].*\)/\1/p' | head -n 1)}
[ -n "$KPKG" ] || die "cannot find the kernel package behind linux-image-amd64"
KVER=${KPKG#linux-image-}
KDIR=$DIR/kernel-$KVER
if [ ! -f "$KDIR/.done" ]; then
	rm -rf "$KDIR" "$DIR/debs"
	mkdir -p "$DIR/debs"
	(cd "$DIR/debs" && apt-get download "$KPKG" > /dev/null 2>&1) || die "apt-get download $KPKG failed"
	dpkg -x "$DIR"/debs/"$KPKG"_*.deb "$KDIR" || die "dpkg -x failed"
	depmod -b "$KDIR" "$KVER" || die "depmod failed"
	rm -rf "$DIR/debs"
	touch "$KDIR/.done"
fi
VMLINUZ=$KDIR/boot/vmlinuz-$KVER
# mod_closure MODULE...: the .ko files (paths under $KDIR) in load order.
mod_closure() {
	local m
	for m in "$@"; do
		modprobe -d "$KDIR" -S "$KVER" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
	done | awk '!seen[$0]++'
}

# --------------------------------------------------------------- dom0 root
step "dom0 root (debootstrap)"
# gdb and glibc's debug symbols turn the core dump of any crashing dom0
# process into a backtrace (xenlab-init's corebt).
# qemu-utils (qemu-nbd, qemu-img) and libnbd0 (xbb-serve's nbd store loads
# it): scenario 11's qcow2 disk.
DOM0_PKGS="xen-utils-4.17,xenstore-utils,qemu-system-xen,kmod,procps,util-linux,mount,udev,gdb-minimal,libc6-dbg,qemu-utils,libnbd0"
DOM0_MODS="xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs loop xen-blkback ext4 crc32c_generic virtio_blk virtio_pci"
KEY=$(echo "bookworm minbase $DOM0_PKGS $MIRROR $KVER $DOM0_MODS" | sha256sum | cut -c1-12)
ROOT=$DIR/dom0root-$KEY
if [ ! -f "$ROOT/.xenlab-done" ]; then
	rm -rf "$ROOT" "$ROOT.tmp"
	echo "xenlab: debootstrap into $ROOT (cache key $KEY)"
	debootstrap --variant=minbase --include="$DOM0_PKGS" bookworm "$ROOT.tmp" "$MIRROR" > "$DIR/debootstrap.log" 2>&1 ||
		{ tail -n 20 "$DIR/debootstrap.log"; die "debootstrap failed (log: $DIR/debootstrap.log)"; }
	mkdir -p "$ROOT.tmp/lib/modules/$KVER"
	mod_closure $DOM0_MODS | while read -r ko; do
		rel=${ko#"$KDIR"/}
		mkdir -p "$ROOT.tmp/$(dirname "$rel")"
		cp "$ko" "$ROOT.tmp/$rel"
	done
	cp "$KDIR/lib/modules/$KVER"/modules.{order,builtin,builtin.modinfo} "$ROOT.tmp/lib/modules/$KVER/" 2> /dev/null
	depmod -b "$ROOT.tmp" "$KVER" || die "depmod for dom0 failed"
	rm -rf "$ROOT.tmp"/var/cache/apt/archives/*.deb "$ROOT.tmp"/usr/share/doc "$ROOT.tmp"/usr/share/man "$ROOT.tmp"/usr/share/locale
	touch "$ROOT.tmp/.xenlab-done"
	mv "$ROOT.tmp" "$ROOT"
else
	echo "xenlab: cached dom0 root $ROOT"
fi

# ---------------------------------------------------------------- xbb-serve
step "xbb-serve"
XBB_BIN=""
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$DIR/cargo-target}
CARGO=${CARGO:-$(command -v cargo || echo "$HOME/.cargo/bin/cargo")}
if (cd "$TOP" && "$CARGO" build --release -p xbb-serve --bin xbb-serve) > "$DIR/cargo.log" 2>&1; then
	XBB_BIN=$CARGO_TARGET_DIR/release/xbb-serve
	echo "xenlab: built $XBB_BIN"
else
	echo "xenlab: ******************************************************************"
	echo "xenlab: cargo build --release -p xbb-serve --bin xbb-serve FAILED:"
	grep -E '^(error|warning: unused)' "$DIR/cargo.log" | head -n 10 | sed 's/^/xenlab:   /'
	echo "xenlab:   (full log: $DIR/cargo.log)"
	echo "xenlab: ******************************************************************"
	[ "$STANDIN" = blkback ] || die "no xbb-serve (set XENLAB_STANDIN=blkback to test the harness without it)"
	echo "xenlab: XENLAB_STANDIN=blkback: going on with the kernel back-end as stand-in"
fi
# The comparison's chart is drawn by xbb-lab chart (--full only).
LAB_BIN=""
if [ $FULL = 1 ]; then
	if (cd "$TOP" && "$CARGO" build --release -p xbb-lab --bin xbb-lab) >> "$DIR/cargo.log" 2>&1; then
		LAB_BIN=$CARGO_TARGET_DIR/release/xbb-lab
	else
		echo "xenlab: cannot build xbb-lab: no chart of the comparison (log: $DIR/cargo.log)"
	fi
fi

# ----------------------------------------------------------------- xbbwork
step "xbbwork and dom0 PID 1"
XBBWORK_SRC=${XENLAB_XBBWORK_SRC:-$HERE/guest/xbbwork.c}
[ -f "$XBBWORK_SRC" ] || die "no $XBBWORK_SRC"
gcc -static -O2 -Wall -o "$DIR/xbbwork" "$XBBWORK_SRC" 2> "$DIR/xbbwork-gcc.log" ||
	{ cat "$DIR/xbbwork-gcc.log"; die "cannot build xbbwork"; }
gcc -static -O2 -Wall -Werror -o "$DIR/xenlab-pid1" "$HERE/dom0/pid1.c" 2> "$DIR/pid1-gcc.log" ||
	{ cat "$DIR/pid1-gcc.log"; die "cannot build dom0's PID 1"; }
gcc -static -O2 -Wall -Werror -o "$DIR/vcheck" "$HERE/guest/vcheck.c" 2> "$DIR/vcheck-gcc.log" ||
	{ cat "$DIR/vcheck-gcc.log"; die "cannot build vcheck"; }

# --------------------------------------------------------------- initramfs
step "initramfs images"
# busybox_tree DIR: a busybox root with one link per applet.
busybox_tree() {
	mkdir -p "$1"/{bin,sbin,proc,sys,dev,lib/modules,tmp,etc}
	cp /bin/busybox "$1/bin/busybox"
	local a
	for a in $(/bin/busybox --list); do
		[ "$a" = busybox ] && continue
		[ -e "$1/bin/$a" ] || ln -s busybox "$1/bin/$a"
	done
}
# copy_bin TREE BINARY: the binary and its shared libraries.
copy_bin() {
	local lib
	cp "$2" "$1/bin/"
	for lib in $(ldd "$2" 2> /dev/null | grep -o '/[^ ]*'); do
		mkdir -p "$1$(dirname "$lib")"
		cp -L "$lib" "$1$lib"
	done
}
mk_cpio() { (cd "$1" && find . | cpio -o -H newc --quiet | gzip -1) > "$2"; }

GUEST=$DIR/guest-tree
rm -rf "$GUEST"
busybox_tree "$GUEST"
cp "$HERE/guest/init" "$GUEST/init"
cp "$DIR/xbbwork" "$GUEST/bin/xbbwork"
cp "$DIR/vcheck" "$GUEST/bin/vcheck"
rm -f "$GUEST/sbin/poweroff" "$GUEST/bin/poweroff"
# `xl shutdown` makes the kernel run /sbin/poweroff. A task that works
# until dom0 tells it to stop (scenario 13's, across save, restore and
# migration) holds /tmp/xenlab-hold: then the request only leaves
# /tmp/xenlab-stop, and the task ends its work and powers off itself.
cat > "$GUEST/sbin/poweroff" << 'EOF'
#!/bin/sh
if [ -e /tmp/xenlab-hold ]; then
	: > /tmp/xenlab-stop
	echo "XENLAB-GUEST stop-requested" > /dev/console
	exit 0
fi
echo "XENLAB-GUEST done task=shutdown" > /dev/console
sync
echo o > /proc/sysrq-trigger
EOF
chmod +x "$GUEST/init" "$GUEST/sbin/poweroff"
: > "$GUEST/modules.order"
mod_closure xen-blkfront | while read -r ko; do
	cp "$ko" "$GUEST/lib/modules/"
	echo "/lib/modules/$(basename "$ko")" >> "$GUEST/modules.order"
done
mk_cpio "$GUEST" "$DIR/guest-initrd.gz"
# fio drags ~80 MB of shared libraries along: only in the benchmark guests'
# initramfs, and only on request.
FIO=0
rm -f "$DIR/guest-fio-initrd.gz"
if [ "${XENLAB_FIO:-0}" = 1 ] && [ $FULL = 1 ] && command -v fio > /dev/null; then
	copy_bin "$GUEST" "$(command -v fio)" && mk_cpio "$GUEST" "$DIR/guest-fio-initrd.gz" && FIO=1
fi

INITRD=$DIR/dom0-initrd-tree
rm -rf "$INITRD"
busybox_tree "$INITRD"
cp "$HERE/initramfs/init" "$INITRD/init"
chmod +x "$INITRD/init"
: > "$INITRD/modules.order"
mod_closure crc32c_generic virtio_pci virtio_blk ext4 | while read -r ko; do
	cp "$ko" "$INITRD/lib/modules/"
	echo "/lib/modules/$(basename "$ko")" >> "$INITRD/modules.order"
done
mk_cpio "$INITRD" "$DIR/dom0-initrd.gz"
zcat "$XEN_GZ" > "$DIR/xen.img"

# ------------------------------------------------- pvgrub2 (scenario 14)
# Scenario 14 boots a guest with pvgrub2: GRUB built as a Xen PV kernel,
# which Debian's grub-xen-host ships as
# /usr/lib/grub-xen/grub-x86_64-xen.bin. Its built-in configuration
# searches every disk it sees for /boot/grub/grub.cfg (partitions
# included) and reads the first it finds. So the guest's boot disk is an
# MBR disk whose first partition holds an ext4 file system with
# /boot/grub/grub.cfg, the guest kernel and the guests' initramfs, with the
# guests' kernel command line. The package is downloaded and unpacked
# (cached in $DIR/grub-xen-host), never installed; the disk is rebuilt when
# the kernel, the initramfs or grub.cfg changed (the initramfs is packed
# anew on every run, so in practice on every run: a second). Only when
# scenario 14 is asked for; without the package it reports SKIP with the
# reason.
PVGRUB_SKIP=""
PVGRUB_BIN=""
PVGRUB_IMG=""
PVGRUB_DEB=""
# pvgrub_disk TREE IMAGE: IMAGE becomes an MBR disk with one partition
# (type 0x83, from sector 2048 to the disk's end) holding an ext4 file
# system made of TREE (mkfs -d: nothing is mounted). Debian bookworm's
# mke2fs.conf leaves out the ext4 features GRUB 2.06 cannot read
# (metadata_csum_seed, orphan_file).
pvgrub_disk() {
	local fs=$2.fs kb fs_mb sectors
	kb=$(du -sk "$1" | cut -f1)
	fs_mb=$((kb / 1024 + 24))
	sectors=$((fs_mb * 2048))
	rm -f "$fs" "$2"
	truncate -s "${fs_mb}M" "$fs" || return 1
	mkfs.ext4 -q -F -L xenlab-boot -d "$1" "$fs" "${fs_mb}M" || return 1
	truncate -s $(((fs_mb + 1) * 1048576)) "$2" || return 1
	dd if="$fs" of="$2" bs=1M seek=1 conv=notrunc,sparse status=none || return 1
	rm -f "$fs"
	# Partition entry 1 at byte 446: active, CHS unused (fe ff ff: the LBA
	# fields count), type 0x83, first sector and sector count (32 bits,
	# little endian); the 55 aa signature at byte 510.
	le32() { printf '\\%03o\\%03o\\%03o\\%03o' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24 & 255)); }
	# shellcheck disable=SC2059
	printf "\\200\\376\\377\\377\\203\\376\\377\\377$(le32 2048)$(le32 "$sectors")" |
		dd of="$2" bs=1 seek=446 conv=notrunc status=none || return 1
	printf '\125\252' | dd of="$2" bs=1 seek=510 conv=notrunc status=none
}
# Scenario 15 (tests/freebsd/xen: the same boot disk served by xbb.ko in
# a FreeBSD driver domain) needs them too.
case " $SCEN_LIST " in *" 14 "* | *" 15 "*)
	step "pvgrub2 and its boot disk (scenarios 14, 15)"
	GDIR=$DIR/grub-xen-host
	if [ ! -f "$GDIR/.done" ]; then
		rm -rf "$GDIR" "$DIR/grub-debs"
		mkdir -p "$DIR/grub-debs"
		# Package lists that do not know the package yet are updated once.
		if ! (cd "$DIR/grub-debs" && apt-get download grub-xen-host) > "$DIR/grub-xen-host.log" 2>&1; then
			apt-get update -qq >> "$DIR/grub-xen-host.log" 2>&1
			(cd "$DIR/grub-debs" && apt-get download grub-xen-host) >> "$DIR/grub-xen-host.log" 2>&1
		fi
		deb=$(ls "$DIR"/grub-debs/grub-xen-host_*.deb 2> /dev/null | head -n 1)
		if [ -n "$deb" ] && dpkg -x "$deb" "$GDIR" >> "$DIR/grub-xen-host.log" 2>&1; then
			basename "$deb" > "$GDIR/.done"
		fi
		rm -rf "$DIR/grub-debs"
	fi
	PVGRUB_BIN=$GDIR/usr/lib/grub-xen/grub-x86_64-xen.bin
	if [ ! -f "$GDIR/.done" ]; then
		PVGRUB_SKIP="apt-get download grub-xen-host failed on the host (log: $DIR/grub-xen-host.log)"
	elif [ ! -f "$PVGRUB_BIN" ]; then
		PVGRUB_SKIP="$(cat "$GDIR/.done") has no /usr/lib/grub-xen/grub-x86_64-xen.bin"
	fi
	if [ -z "$PVGRUB_SKIP" ]; then
		PTREE=$DIR/pvgrub-tree
		rm -rf "$PTREE"
		mkdir -p "$PTREE/boot/grub"
		cp "$VMLINUZ" "$PTREE/boot/vmlinuz"
		cp "$DIR/guest-initrd.gz" "$PTREE/boot/initrd.gz"
		# The other guests' command line (xenlab-init's write_cfg) with
		# task pvgrub. GRUB's echo reaches the guest's console before the
		# kernel does: dom0 reads there on which device GRUB found this
		# file. The lines stay short: GRUB wraps at 80 columns.
		cat > "$PTREE/boot/grub/grub.cfg" <<-'EOF'
			# xenlab scenario 14 (tests/xenlab/run.sh): read by pvgrub2,
			# whose built-in configuration searched every disk for it.
			echo "XENLAB-PVGRUB root=${root}"
			linux /boot/vmlinuz console=hvc0 quiet loglevel=4 xenlab.task=pvgrub xenlab.seed=141
			initrd /boot/initrd.gz
			echo "XENLAB-PVGRUB booting"
			boot
		EOF
		key=$(cat "$PTREE/boot/vmlinuz" "$PTREE/boot/initrd.gz" "$PTREE/boot/grub/grub.cfg" | sha256sum | cut -c1-12)
		PVGRUB_IMG=$DIR/pvgrub-boot-$key.img
		if [ ! -f "$PVGRUB_IMG" ]; then
			rm -f "$DIR"/pvgrub-boot-*
			pvgrub_disk "$PTREE" "$PVGRUB_IMG.tmp" || die "cannot build scenario 14's boot disk $PVGRUB_IMG"
			mv "$PVGRUB_IMG.tmp" "$PVGRUB_IMG"
		fi
		PVGRUB_DEB=$(cat "$GDIR/.done")
		echo "xenlab: pvgrub2 from $PVGRUB_DEB; boot disk $PVGRUB_IMG"
	else
		echo "xenlab: scenario 14 will SKIP: $PVGRUB_SKIP"
	fi
	;;
esac

# ---------------------------------------------------------------- root image
step "dom0 image"
mkdir -p "$ROOT/boot/xenlab" "$ROOT/usr/local/sbin" "$ROOT/images" "$ROOT/etc/xen"
cp "$VMLINUZ" "$ROOT/boot/xenlab/vmlinuz"
cp "$DIR/guest-initrd.gz" "$ROOT/boot/xenlab/guest-initrd.gz"
rm -f "$ROOT/boot/xenlab/guest-fio-initrd.gz"
[ $FIO = 1 ] && cp "$DIR/guest-fio-initrd.gz" "$ROOT/boot/xenlab/guest-fio-initrd.gz"
install -m 0755 "$HERE/dom0/xenlab-init" "$ROOT/sbin/xenlab-init"
install -m 0755 "$DIR/xenlab-pid1" "$ROOT/sbin/xenlab-pid1"
install -m 0755 "$DIR/vcheck" "$ROOT/usr/local/sbin/vcheck"
# More scenarios from outside (tests/freebsd/xen: 7 and 8): a directory whose
# *.sh define functions s7, s8, ... and carry what they need (kernel, images).
rm -rf "$ROOT/xenlab-extra"
[ -n "${XENLAB_EXTRA_DIR:-}" ] && cp -a "$XENLAB_EXTRA_DIR" "$ROOT/xenlab-extra"
rm -f "$ROOT/usr/local/sbin/xbb-serve" "$ROOT/etc/xen/xbb-serve.conf"
# xbb-serve and its service files (unit, block-xbb, dispatcher, udev rule,
# configuration) go in as make install-serve puts them on a real host.
if [ -n "$XBB_BIN" ]; then
	make -s -C "$TOP" install-serve DESTDIR="$ROOT" SERVE_BIN="$XBB_BIN" > "$DIR/install-serve.log" 2>&1 ||
		{ cat "$DIR/install-serve.log"; die "make install-serve into the dom0 root failed"; }
fi
install -m 0755 "$DIR/xbbwork" "$ROOT/usr/local/sbin/xbbwork"
rm -rf "$ROOT/images"/* "$ROOT/results"
# Scenario 14's pvgrub2 and boot disk, only when it was asked for.
rm -rf "$ROOT/usr/lib/grub-xen" "$ROOT/boot/xenlab/pvgrub-boot.img"
if [ -n "$PVGRUB_IMG" ]; then
	mkdir -p "$ROOT/usr/lib/grub-xen"
	cp "$PVGRUB_BIN" "$ROOT/usr/lib/grub-xen/grub-x86_64-xen.bin"
	cp --sparse=always "$PVGRUB_IMG" "$ROOT/boot/xenlab/pvgrub-boot.img"
fi
# XENLAB_PROFILE: the host's perf and the libraries it links, in a
# directory of their own (dom0 is the same Debian release).
rm -rf "$ROOT/usr/local/lib/xenlab-perf"
if [ -n "${XENLAB_PROFILE:-}" ]; then
	command -v perf > /dev/null || apt-get install -y -q linux-perf > /dev/null 2>&1 ||
		die "XENLAB_PROFILE needs perf on the host (apt-get install linux-perf)"
	pbin=$(readlink -f "$(command -v perf)")
	mkdir -p "$ROOT/usr/local/lib/xenlab-perf"
	cp "$pbin" "$ROOT/usr/local/lib/xenlab-perf/perf"
	ldd "$pbin" | awk '$3 ~ /^\// { print $3 }' | while read -r lib; do
		cp -L "$lib" "$ROOT/usr/local/lib/xenlab-perf/"
	done
fi
{
	echo "XENLAB_SCENARIOS=\"$SCEN_LIST\""
	echo "XENLAB_STANDIN=\"$STANDIN\""
	echo "XENLAB_BENCH_REPS=${XENLAB_BENCH_REPS:-3}"
	echo "XENLAB_BENCH_SECS=${XENLAB_BENCH_SECS:-5}"
	echo "XENLAB_BENCH_POOL=${XENLAB_BENCH_POOL:-0}"
	echo "XENLAB_PROFILE=\"${XENLAB_PROFILE:-}\""
	echo "XENLAB_BENCH_QUEUES=${XENLAB_BENCH_QUEUES:-0}"
	echo "XENLAB_BENCH_DIRECT=${XENLAB_BENCH_DIRECT:-0}"
	echo "XENLAB_DISK_MB=${XENLAB_DISK_MB:-64}"
	echo "XENLAB_XBB_ARGS=\"${XENLAB_XBB_ARGS:-}\""
	echo "XENLAB_FIO=$FIO"
	echo "XENLAB_STRESS_SECS=${XENLAB_STRESS_SECS:-240}"
	echo "XENLAB_PVGRUB_SKIP=\"$PVGRUB_SKIP\""
	echo "XENLAB_PVGRUB_DEB=\"$PVGRUB_DEB\""
} > "$ROOT/etc/xenlab.conf"
used=$(du -sm "$ROOT" | cut -f1)
size=$((used + 700 + ${XENLAB_DISK_MB:-64} * 12))
rm -f "$DIR/dom0.img"
mkfs.ext4 -q -F -L xenlab -d "$ROOT" "$DIR/dom0.img" "${size}M" || die "mkfs.ext4 -d failed"

# -------------------------------------------------------------------- boot
# One emulated host at a time on this machine (two would starve each other
# of the CPUs and time out): wait for whoever holds the lock.
LOCK=${XENLAB_LOCK:-/tmp/xbb-emulator.lock}
exec 9> "$LOCK"
if ! flock -n 9; then
	echo "xenlab: another emulated host runs (lock $LOCK); waiting"
	flock 9
fi
step "boot and scenarios (QEMU TCG, timeout ${TIMEOUT} s)"
SERIAL=$DIR/serial.log
rm -f "$SERIAL"
# spec-ctrl=eager-fpu: Xen loads every vCPU's vector registers at every
# switch instead of on the first #NM, so the emulated SVM never sees a
# guest's CR0.TS dance (a FreeBSD domain triple-faulted right after setting
# CR0.TS in fpu_activate_sw without it); not a cure for every FreeBSD
# triple fault: see "The emulated CPU" in README.md.
XEN_ARGS="console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M dom0_max_vcpus=2 smap=0 smep=0 spec-ctrl=eager-fpu loglvl=all guest_loglvl=warning ${XENLAB_XEN_ARGS:-}"
DOM0_ARGS="console=hvc0 earlyprintk=xen loglevel=4"
echo "xenlab: serial log: $SERIAL; QEMU $QEMU_KIND ($QEMU_VERSION); CPU $CPU; TCG thread=${XENLAB_TCG_THREAD:-multi}; CPUs ${XENLAB_SMP:-2}; Xen: $XEN_ARGS"
# The emulated host runs before anything else of this machine (builds,
# editors): starved of the CPUs its guests time out (xl create beyond
# 120 s at a load average of 11). A no-op where nothing else runs (CI).
# Where the kernel groups tasks by session (sched_autogroup_enabled=1),
# a nice value only ranks tasks of one session; the session's own group
# gets the same value, or a build started from another shell still takes
# half the machine.
if [ "$(cat /proc/sys/kernel/sched_autogroup_enabled 2> /dev/null)" = 1 ]; then
	echo "${XENLAB_NICE:--10}" > /proc/self/autogroup 2> /dev/null ||
		echo "xenlab: could not set this session's scheduling group to nice ${XENLAB_NICE:--10}"
fi
# What else this machine ran meanwhile: the load average every 15 s, so a
# timeout of libxl's (40 s for a hotplug script) in a run beside builds or
# another benchmark shows its cause in the results (host-load.txt).
(while :; do echo "$(date +%s) $(cut -d' ' -f1-4 /proc/loadavg)"; sleep 15; done > "$DIR/host-load.txt") &
LOADPID=$!
nice -n "${XENLAB_NICE:--10}" timeout -k 15 "$TIMEOUT" "$QEMU_BIN" \
	-accel tcg,thread="${XENLAB_TCG_THREAD:-multi}" -cpu "$CPU" -m 2048 -smp "${XENLAB_SMP:-2}" \
	-nographic -no-reboot -nic none -monitor none \
	-serial "file:$SERIAL" \
	-kernel "$DIR/xen.img" -append "$XEN_ARGS" \
	-initrd "$VMLINUZ $DOM0_ARGS,$DIR/dom0-initrd.gz" \
	-drive "file=$DIR/dom0.img,format=raw,if=virtio,cache=unsafe" \
	< /dev/null > "$DIR/qemu.log" 2>&1
QRC=$?
kill "$LOADPID" 2> /dev/null
wait "$LOADPID" 2> /dev/null
flock -u 9
[ $QRC = 124 ] && echo "xenlab: QEMU TIMED OUT after $TIMEOUT s"

# ----------------------------------------------------------------- results
step "results"
OUT=$DIR/results
rm -rf "$OUT"
mkdir -p "$OUT"
rm -rf "$DIR/rdump"
mkdir -p "$DIR/rdump"
if debugfs -R "rdump /results $DIR/rdump" "$DIR/dom0.img" > /dev/null 2>&1 && [ -d "$DIR/rdump/results" ]; then
	cp -a "$DIR/rdump/results/." "$OUT/"
else
	echo "xenlab: could not read /results from the dom0 image"
fi
rm -rf "$DIR/rdump"
cp -f "$SERIAL" "$OUT/serial.log" 2> /dev/null
cp -f "$DIR/host-load.txt" "$OUT/" 2> /dev/null
echo "XENLAB_QEMU=$QEMU_KIND $QEMU_BIN $QEMU_VERSION" > "$OUT/qemu-version.txt"
step ""
tr -d '\r' < "$SERIAL" > "$DIR/serial.txt" 2> /dev/null
RES=$DIR/serial.txt
# Timings reported by dom0 itself.
grep -o 'XENLAB scenario [0-9]* took [0-9]* s' "$RES" | sed 's/^XENLAB //' | while read -r l; do TIMES+=("$l"); echo "$l"; done > "$DIR/times.txt"

echo
echo "==================== xenlab summary ($([ -n "$STANDIN" ] && echo "STAND-IN $STANDIN" || echo xbb-serve), QEMU $QEMU_KIND, CPU $CPU) ===================="
grep -o 'XENLAB-RESULT.*' "$RES" | sed 's/^XENLAB-RESULT //' | tee "$OUT/summary.txt"
# Backtraces of the core dumps dom0 could not write itself (its scenario
# script may be what crashed), with the host's gdb over dom0's root.
for c in "$OUT"/cores/core.*; do
	[ -f "$c" ] || continue
	case "$c" in *.bt.txt) continue ;; esac
	[ -f "$c.bt.txt" ] && continue
	command -v gdb > /dev/null || break
	exe=$(basename "$c" | cut -d. -f3- | tr '!' '/')
	timeout 120 gdb -batch -nx -ex "set sysroot $ROOT" -ex "set debug-file-directory $ROOT/usr/lib/debug" \
		-ex 'set pagination off' -ex 'thread apply all bt' -ex 'info registers' -ex 'x/6i $pc' \
		-ex 'info sharedlibrary' "$ROOT$exe" "$c" > "$c.bt.txt" 2>&1
done
# A run counts only if nothing crashed in it: not xbb-serve, not any other
# process of dom0 or the guests, not a kernel, not a domain.
if crashes=$(bash "$HERE/crash-scan.sh" "$OUT" "$RES"); then
	echo "scenario=0 check=no-crash result=PASS consoles, dmesg and cores clean" | tee -a "$OUT/summary.txt"
else
	echo "scenario=0 check=no-crash result=FAIL $(echo "$crashes" | wc -l) signs of a crash (results/crashes.txt):" | tee -a "$OUT/summary.txt"
	echo "$crashes" | head -n 20 | sed 's/^/  | /'
	for bt in "$OUT"/cores/*.bt.txt; do
		[ -f "$bt" ] || continue
		echo "xenlab: backtrace of $(basename "$bt" .bt.txt):"
		grep -E '^(#[0-9]|Program terminated|Thread )' "$bt" | head -n 24 | sed 's/^/  | /'
	done
fi
# The emulated host needs the machine to itself (its 2 vCPUs are this
# machine's cores): say when something else loaded it.
awk -v cpus="$(nproc)" '{ n++; s += $2; if ($2 > m) m = $2 }
	END { if (n) { printf "xenlab: host load average (1 min) during the run: mean %.1f, max %.1f on %d CPUs\n", s / n, m, cpus
		if (m > 2 * cpus) print "xenlab: the machine was busy beside the emulated host: timeouts in this run may be the load'"'"'s (host-load.txt)" } }' \
	"$OUT/host-load.txt" 2> /dev/null
npass=$(grep -c 'result=PASS' "$OUT/summary.txt")
nfail=$(grep -c 'result=FAIL' "$OUT/summary.txt")
nskip=$(grep -c 'result=SKIP' "$OUT/summary.txt")
status=0
if ! grep -q 'XENLAB-END' "$RES"; then
	echo "xenlab: FAIL: dom0 never finished (QEMU status $QRC); tail of the serial log:"
	tail -n 30 "$RES" | sed 's/^/  | /'
	status=1
fi
for s in $SCEN_LIST; do
	if ! grep -q "scenario=$s " "$OUT/summary.txt"; then
		echo "xenlab: FAIL: scenario $s produced no result"
		status=1
	fi
done
[ "$nfail" = 0 ] || status=1
[ "$npass" -gt 0 ] || status=1

# ------------------------------------------------------ comparison table
if grep -q 'XENLAB-BENCH' "$RES"; then
	echo
	echo "==================== comparison (medians of $(grep -o 'XENLAB-BENCH.*' "$RES" | sed -n 's/.* rep=\([0-9]*\) .*/\1/p' | sort -u | wc -l) interleaved repetitions; emulated host: only ratios mean anything) ===================="
	grep -o 'XENLAB-BENCH.*' "$RES" | awk -v tsv="$OUT/comparison.tsv" '
	function med(key,   n, i, j, t, a) {
		n = split(vals[key], a, " ")
		if (n == 0) return -1
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
		return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}
	# variant ALT ...: xbb-serve (row "xbb") beside a variant of itself
	# measured in the same repetitions (row ALT), when there is one: the
	# two medians, variant/xbb (xbb/variant with INV) and variant/blkback,
	# the latter also into the chart as TSVNAME unless that is empty.
	function variant(alt, hx, hy, hr1, hr2, inv, tsvname,   i, k, p, x, y, b, r1, name, any) {
		for (i = 1; i <= nk; i++) if (med(order[i] SUBSEP alt) >= 0) any = 1
		if (!any) return
		printf "\n%-8s %-16s %7s %12s %12s %14s %15s\n", "tool", "test", "unit", hx, hy, hr1, hr2
		for (i = 1; i <= nk; i++) {
			k = order[i]; split(k, p, " ")
			x = med(k SUBSEP "xbb"); y = med(k SUBSEP alt); b = med(k SUBSEP "blkback")
			if (inv) r1 = (x >= 0 && y > 0) ? sprintf("%.2f", x / y) : "-"
			else r1 = (x > 0 && y >= 0) ? sprintf("%.2f", y / x) : "-"
			printf "%-8s %-16s %7s %12s %12s %14s %15s\n", p[1], p[2], (p[2] ~ /^seq/) ? "kB/s" : "IOPS", x, y,
				r1, (y >= 0 && b > 0) ? sprintf("%.2f", y / b) : "-"
			name = (p[1] == "xbbwork") ? p[2] : p[1] " " p[2]
			if (tsvname != "" && y >= 0 && b > 0) printf "%s\t%s\t%.3f\n", name, tsvname, y / b > tsv
		}
	}
	{
		be = ""; tool = ""; test = ""; kb = ""; io = ""
		for (i = 2; i <= NF; i++) {
			split($i, kv, "=")
			if (kv[1] == "backend") be = kv[2]
			else if (kv[1] == "tool") tool = kv[2]
			else if (kv[1] == "test") test = kv[2]
			else if (kv[1] == "kBps") kb = kv[2]
			else if (kv[1] == "iops") io = kv[2]
		}
		if (be == "" || test == "") next
		metric = (test ~ /^seq/) ? kb : io
		if (metric == "") next
		k = tool " " test
		if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
		vals[k SUBSEP be] = vals[k SUBSEP be] " " metric
	}
	END {
		# The FreeBSD driver domain (tests/freebsd/xen, scenario 16):
		# xbb.ko, the FreeBSD blkback (xbbd) and xen-blkback in dom0.
		fb = 0; serve = 0
		for (i = 1; i <= nk; i++) {
			if (med(order[i] SUBSEP "xbbko") >= 0) fb = 1
			if (med(order[i] SUBSEP "xbb") >= 0) serve = 1
		}
		if (fb) {
			printf "%-8s %-16s %7s %12s %12s %12s %12s %14s %13s\n", "tool", "test", "unit", "xbb.ko", "xbbd", "blkback", "xbb.ko/xbbd", "xbb.ko/blkback", "xbbd/blkback"
			for (i = 1; i <= nk; i++) {
				k = order[i]; split(k, p, " ")
				x = med(k SUBSEP "xbbko"); d = med(k SUBSEP "xbbd"); b = med(k SUBSEP "blkback")
				printf "%-8s %-16s %7s %12s %12s %12s %12s %14s %13s\n", p[1], p[2], (p[2] ~ /^seq/) ? "kB/s" : "IOPS", x, d, b,
					(x >= 0 && d > 0) ? sprintf("%.2f", x / d) : "-", (x >= 0 && b > 0) ? sprintf("%.2f", x / b) : "-",
					(d >= 0 && b > 0) ? sprintf("%.2f", d / b) : "-"
				name = (p[1] == "xbbwork") ? p[2] : p[1] " " p[2]
				if (x >= 0 && d > 0) printf "%s\txbb.ko / FreeBSD blkback\t%.3f\n", name, x / d > tsv
				if (x >= 0 && b > 0) printf "%s\txbb.ko / xen-blkback\t%.3f\n", name, x / b > tsv
			}
		}
		if (!serve) exit
		printf "%-8s %-16s %7s %12s %12s %12s %12s %12s\n", "tool", "test", "unit", "xbb", "blkback", "qdisk", "xbb/blkback", "xbb/qdisk"
		for (i = 1; i <= nk; i++) {
			k = order[i]; split(k, p, " ")
			x = med(k SUBSEP "xbb"); b = med(k SUBSEP "blkback"); q = med(k SUBSEP "qdisk")
			printf "%-8s %-16s %7s %12s %12s %12s %12s %12s\n", p[1], p[2], (p[2] ~ /^seq/) ? "kB/s" : "IOPS", x, b, q,
				(x >= 0 && b > 0) ? sprintf("%.2f", x / b) : "-", (x >= 0 && q > 0) ? sprintf("%.2f", x / q) : "-"
			name = (p[1] == "xbbwork") ? p[2] : p[1] " " p[2]
			if (x >= 0 && b > 0) printf "%s\txbb-serve / xen-blkback\t%.3f\n", name, x / b > tsv
			if (x >= 0 && q > 0) printf "%s\txbb-serve / qdisk\t%.3f\n", name, x / q > tsv
		}
		# XENLAB_BENCH_QUEUES=1: two queues against one, two vCPUs.
		qq = 0
		for (i = 1; i <= nk; i++) if (med(order[i] SUBSEP "xbb-2q") >= 0) qq = 1
		if (qq) {
			printf "\n%-8s %-16s %7s %10s %10s %8s %12s %12s %8s\n", "tool", "test", "unit", "xbb 1q", "xbb 2q", "2q/1q", "blkback 1q", "blkback 2q", "2q/1q"
			for (i = 1; i <= nk; i++) {
				k = order[i]; split(k, p, " ")
				x1 = med(k SUBSEP "xbb-1q"); x2 = med(k SUBSEP "xbb-2q"); b1 = med(k SUBSEP "blkback-1q"); b2 = med(k SUBSEP "blkback-2q")
				if (x2 < 0 && b2 < 0) continue
				printf "%-8s %-16s %7s %10s %10s %8s %12s %12s %8s\n", p[1], p[2], "IOPS", x1, x2,
					(x1 > 0 && x2 >= 0) ? sprintf("%.2f", x2 / x1) : "-", b1, b2, (b1 > 0 && b2 >= 0) ? sprintf("%.2f", b2 / b1) : "-"
			}
		}
		# XENLAB_BENCH_DIRECT=1: the image opened with O_DIRECT
		# (direct-io-safe) beside through the page cache.
		variant("xbbdirect", "xbb(cache)", "xbb(direct)", "direct/cache", "direct/blkback", 0,
			"xbb-serve O_DIRECT / xen-blkback")
		# XENLAB_BENCH_POOL=1: xbb-serve with io = pool beside io_uring.
		variant("xbbpool", "xbb(uring)", "xbb(pool)", "uring/pool", "pool/blkback", 1, "")
	}' | tee "$OUT/comparison.txt"
	# XENLAB_BENCH_QUEUES=1: how much of Xen's physical CPUs the
	# domains used during each queue test (dom0's cpu_use).
	if grep -q 'XENLAB-CPU' "$RES"; then
		grep -o 'XENLAB-CPU.*' "$RES" | awk '
		function med(s,   n, i, j, t, a) {
			n = split(s, a, " ")
			for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
			return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
		}
		{
			for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
			be = f["backend"]
			if (!(be in seen)) { seen[be] = 1; order[++n] = be }
			d[be] = d[be] " " f["dom0"]; g[be] = g[be] " " f["guest"]; b[be] = b[be] " " f["busy"]; p = f["pcpus"]
		}
		END {
			printf "\nCPU use during the queue tests (Xen CPU time, %% of %d physical CPUs, medians):\n", p
			printf "%-12s %6s %6s %6s\n", "row", "dom0", "guest", "busy"
			for (i = 1; i <= n; i++) printf "%-12s %6s %6s %6s\n", order[i], med(d[order[i]]), med(g[order[i]]), med(b[order[i]])
		}' | tee -a "$OUT/comparison.txt"
	fi
	if [ -n "$LAB_BIN" ] && [ -s "$OUT/comparison.tsv" ]; then
		"$LAB_BIN" chart --tsv "$OUT/comparison.tsv" --svg "$OUT/comparison.svg" \
			--title "xbb against its peers, real Xen host (medians of interleaved repetitions)" &&
			echo "xenlab: chart: $OUT/comparison.svg"
	fi
fi

echo
echo "timings:"
for t in "${TIMES[@]}"; do echo "  $t"; done
sed 's/^/  /' "$DIR/times.txt"
echo "  total: $(($(date +%s) - T0)) s"
echo "results: $OUT (dom0's /results, guest consoles, xbb-serve log), serial log: $SERIAL"
if [ $status = 0 ]; then
	echo "xenlab: PASS ($npass passed, $nskip skipped)"
else
	echo "xenlab: FAIL ($nfail failed, $npass passed, $nskip skipped)"
fi

exit $status
