# shellcheck shell=bash
# Scenarios 7 and 8 of the xenlab harness: a FreeBSD PVH guest next to the
# Linux guests.  Sourced by dom0's PID 1 (tests/xenlab/dom0/xenlab-init),
# which provides: say, result, create, wait_log, wait_gone, glog, domid_of,
# write_cfg, collect, run_guest, make_img, start_xbb, stop_xbb, xbb_table,
# xbb_value, xsr, $R, $MODE.
#
# Inputs in the dom0 image (put there by tests/freebsd/xen/run.sh):
#   /boot/xenlab/fbsd-kernel    a FreeBSD amd64 kernel with a PVH entry
#   /boot/xenlab/fbsd-root.iso  cd9660 root: /sbin/init (dd-init.c), xbb.ko
#
#  7  driver domain: the FreeBSD guest "xbbdd" kldloads xbb.ko and serves
#     Linux guests' disks (backend=xbbdd) from md(4) disks and a tmpfs file:
#     verify on both with dev.xbb.N checked against the guest's view, reboot
#     (reconnect) plus block-attach/-detach of the file, detach with I/O in
#     flight, then kldunload once every guest is gone.
#  8  the other way round: the FreeBSD guest's own front-end (xbd) on a disk
#     served in dom0 (xbb-serve, or xen-blkback in stand-in mode); the guest
#     writes, flushes, reads back and compares the whole disk.

FB_KERNEL=${XENLAB_FBSD_KERNEL:-/xenlab-extra/fbsd-kernel}
FB_ISO=${XENLAB_FBSD_ISO:-/xenlab-extra/fbsd-root.iso}
FB_MB=${XENLAB_FBSD_DISK_MB:-32}
FB_PANIC="debug.debugger_on_panic=0 debug.trace_on_panic=1 kern.panic_reboot_wait_time=0"

# fbsd_cfg NAME CMDLINE-EXTRA DISK...: a FreeBSD PVH guest, root on xbd0.
fbsd_cfg() {
	local name=$1 extra=$2
	shift 2
	{
		echo "name = \"$name\""
		echo "type = \"pvh\""
		echo "kernel = \"$FB_KERNEL\""
		echo "cmdline = \"vfs.root.mountfrom=cd9660:/dev/xbd0 $FB_PANIC $extra\""
		echo "memory = ${XENLAB_FBSD_MEM:-384}"
		echo "vcpus = 1"
		# Needed by any PVH guest in this emulated host.
		echo "tsc_mode = \"native\""
		echo "cpuid = \"host,rdtscp=0\""
		echo "driver_domain = 1"
		echo "on_poweroff = \"destroy\""
		echo "on_reboot = \"destroy\""
		echo "on_crash = \"destroy\""
		# The host's XENLAB_FBSD_XL (tests/freebsd/xen/run.sh).
		if [ -f /xenlab-extra/fbsd-xl.cfg ]; then cat /xenlab-extra/fbsd-xl.cfg; fi
		printf 'disk = [ '
		local d sep=""
		for d in "$@"; do
			printf "%s'%s'" "$sep" "$d"
			sep=", "
		done
		echo ' ]'
	} > "/etc/xen/$name.cfg"
	cp "/etc/xen/$name.cfg" "$R/"
}

# fbsd_collect S NAME: the FreeBSD guest's own verdicts as results.
fbsd_collect() {
	local f n=0
	f=$(glog "$2")
	cp -f "$f" "$R/guest-$2.log" 2> /dev/null
	tr -d '\r' < "$f" 2> /dev/null | grep -o 'XBB-DD: \(ok\|FAIL\) .*' > /tmp/fbsd-verdicts.txt
	while read -r _ verdict what; do
		n=$((n + 1))
		if [ "$verdict" = ok ]; then
			result "$1" "$2:$n" PASS "$what"
		else
			result "$1" "$2:$n" FAIL "$what"
		fi
	done < /tmp/fbsd-verdicts.txt
	if grep -q 'XBB-DD: done ' "$f" 2> /dev/null; then
		result "$1" "$2:finished" PASS "$(grep -o 'XBB-DD: done .*' "$f" | tail -n 1 | cut -c9-)"
	else
		result "$1" "$2:finished" FAIL "the FreeBSD guest never finished"
		grep -q -e '^panic:' -e 'Fatal trap' "$f" 2> /dev/null ||
			tail -n 25 "$f" 2> /dev/null | tr -d '\r' | sed "s/^/XENLAB guest $2 console: /"
	fi
	if grep -q -e '^panic:' -e 'Fatal trap' "$f" 2> /dev/null; then
		result "$1" "$2:no-panic" FAIL "kernel panic in the FreeBSD guest"
		tr -d '\r' < "$f" | grep -A 40 -m 1 'Fatal trap\|^panic:' | grep -e 'Fatal trap' -e '^panic' -e 'fault virtual' -e 'current process' -e ' at ' | head -n 24 | sed "s/^/XENLAB guest $2 panic: /"
	else
		result "$1" "$2:no-panic" PASS
	fi
	grep -m 1 -o 'XBB-DD: info mode .*' "$f" 2> /dev/null | sed "s/^/XENLAB guest $2: /"
}

# fb_dump FID FILE: ask the driver domain for all of dev.xbb, keep that dump.
fb_dump() {
	local f n
	f=$(glog xbbdd)
	n=$(wc -l < "$f")
	xenstore-write "/local/domain/$1/data/xbb-cmd" dump
	local i=0
	while [ $i -lt 60 ]; do
		if tail -n +"$((n + 1))" "$f" | grep -q 'XBB-DD: info dump end'; then
			# From the command on (when its line is whole): the 2 s
			# change reports before it may name an instance gone since.
			tail -n +"$((n + 1))" "$f" | tr -d '\r' > /tmp/fb-dump.txt
			if grep -q '^XBB-DD: info command from dom0: dump' /tmp/fb-dump.txt; then
				sed -n '/^XBB-DD: info command from dom0: dump/,$p' /tmp/fb-dump.txt
			else
				cat /tmp/fb-dump.txt
			fi | sed -n 's/^XBB-DD: sysctl //p' > "$2"
			return 0
		fi
		sleep 0.5
		i=$((i + 1))
	done
	return 1
}
# fb_devstat FID: while the guests are idle after their verified
# workload, ask the driver domain to compare kern.devstat.all (xbbgN,
# xbbsN) with dev.xbb.N and to look up the SDT probes in xbb.ko; its
# "XBB-DD: ok|FAIL devstat ..." and "... sdt ..." lines become results.
fb_devstat() {
	local f n i=0 out
	f=$(glog xbbdd)
	n=$(wc -l < "$f")
	xenstore-write "/local/domain/$1/data/xbb-cmd" devstat
	while [ $i -lt 60 ]; do
		out=$(tail -n +"$((n + 1))" "$f" | tr -d '\r')
		if echo "$out" | grep -q 'XBB-DD: \(ok\|FAIL\) sdt\|XBB-DD: info sdt'; then
			echo "$out" > "$R/xbbdd-devstat.txt"
			echo "$out" | grep -o 'XBB-DD: info devstat .*' | sed 's/^XBB-DD: info /XENLAB s7 /'
			local oks fails
			oks=$(echo "$out" | grep -c 'XBB-DD: ok devstat')
			fails=$(echo "$out" | grep 'XBB-DD: FAIL devstat')
			if [ -z "$fails" ] && [ "$oks" -gt 0 ]; then
				result 7 xbb-devstat PASS "$oks comparisons of kern.devstat.all with dev.xbb.N"
			else
				result 7 xbb-devstat FAIL "${fails:-no comparison made} ($oks ok)"
			fi
			if echo "$out" | grep -q 'XBB-DD: ok sdt'; then
				result 7 xbb-sdt PASS "$(echo "$out" | grep -o 'XBB-DD: ok sdt.*' | cut -c12-)"
			elif echo "$out" | grep -q 'XBB-DD: info sdt'; then
				result 7 xbb-sdt SKIP "$(echo "$out" | grep -o 'XBB-DD: info sdt.*' | cut -c14-)"
			else
				result 7 xbb-sdt FAIL "$(echo "$out" | grep -o 'XBB-DD: FAIL sdt.*' | cut -c14-)"
			fi
			return 0
		fi
		sleep 0.5
		i=$((i + 1))
	done
	result 7 xbb-devstat FAIL "no devstat report from the driver domain"
	return 1
}

# fb_value DUMP DOMID DEVID NAME: dev.xbb.N.NAME of the instance at
# backend/vbd/DOMID/DEVID.  FreeBSD leaves %location of XenBus devices
# empty; the kernel's attach line "xbbN: <...> at backend/vbd/D/V on
# xenbusb_back0" on the driver domain's console names the unit.
fb_value() {
	local n
	n=$(tr -d '\r' < "$(glog xbbdd)" | sed -n "s|^xbb\([0-9]*\): <.*> at backend/vbd/$2/$3 on .*|\1|p" | tail -n 1)
	[ -n "$n" ] || return 1
	sed -n "s|^dev\.xbb\.$n\.$4: *||p" "$1" | tail -n 1
}

# fbsd_inputs N: whether dom0's image has the FreeBSD kernel and root
# image; without them scenario N is a SKIP.
fbsd_inputs() {
	if [ ! -f "$FB_KERNEL" ] || [ ! -f "$FB_ISO" ]; then
		result "$1" fbsd-inputs SKIP "no FreeBSD kernel/root image in the dom0 image"
		return 1
	fi
}

# fbsd_create N NAME: creates the FreeBSD domain NAME (see fbsd_cfg) for
# scenario N and sets the caller's fid to its domid; a FAIL of N when it
# never appears.
fbsd_create() {
	if ! create "$2"; then
		result "$1" "$2:create" FAIL "xl create failed (xl-create-$2.txt)"
		sed 's/^/XENLAB xl: /' "$R/xl-create-$2.txt" | tail -n 10
		return 1
	fi
	fid=$(domid_of "$2")
}

s7() {
	say "scenario 7: FreeBSD driver domain (xbb.ko) serving a Linux guest"
	fbsd_inputs 7 || return 0
	fbsd_cfg xbbdd "xbbdd.mode=serve xbbdd.disk_mb=$FB_MB xbbdd.md_count=2" \
		"format=raw,vdev=xvda,access=ro,target=$FB_ISO"
	local t=$(date +%s)
	local fid
	fbsd_create 7 xbbdd || return 0
	if ! wait_log xbbdd 'XBB-DD: ready' 400; then
		result 7 xbbdd:ready FAIL "no READY from the FreeBSD domain"
		xl destroy xbbdd
		fbsd_collect 7 xbbdd
		return
	fi
	result 7 xbbdd:ready PASS "domid $fid, $(($(date +%s) - t)) s: $(grep -o 'XBB-DD: ready .*' "$(glog xbbdd)" | tr -d '\r' | cut -c15-)"
	local md0=/dev/md0 md1=/dev/md1 file=/mnt/xbb-file.img

	# (a) Both stores: the guest verifies every byte, then waits while we
	# compare dev.xbb.N with what it negotiated.
	write_cfg s7v info "xenlab.seed=71" \
		"format=raw,vdev=xvda,access=rw,backend=xbbdd,target=$md0" \
		"format=raw,vdev=xvdb,access=rw,backend=xbbdd,target=$file"
	if create s7v; then
		local gid
		gid=$(domid_of s7v)
		if wait_log s7v 'XENLAB-GUEST ready' 600; then
			dump_vbd s7v "$gid"
			xenstore-ls -f "/local/domain/$fid/backend/vbd/$gid" > "$R/xenstore-s7v-backend.txt" 2>&1
			if fb_dump "$fid" "$R/xbbdd-dump-s7v.txt"; then
				local dev devid f
				f=$(glog s7v)
				for dev in xvda xvdb; do
					case $dev in xvda) devid=51712 ;; xvdb) devid=51728 ;; esac
					fv() { fb_value "$R/xbbdd-dump-s7v.txt" "$gid" "$devid" "$1"; }
					if [ -z "$(fv state)" ]; then
						result 7 "$dev:xbb-instance" FAIL "no dev.xbb.N for backend/vbd/$gid/$devid"
						continue
					fi
					say "s7 $dev: dev.xbb state=$(fv state) ring_pages=$(fv ring_pages) num_queues=$(fv num_queues) max_request_segments=$(fv max_request_segments) max_request_size=$(fv max_request_size) max_indirect_segments=$(fv max_indirect_segments) persistent_grants=$(fv persistent_grants) reqs_received=$(fv reqs_received) bytes_written=$(fv bytes_written) bytes_read=$(fv bytes_read)"
					local info gseg bw br
					info=$(grep -o "XENLAB-GUEST info dev=$dev .*" "$f" | tail -n 1)
					gseg=$(echo "$info" | tr ' ' '\n' | sed -n 's/^max_segments=//p')
					[ "$(fv state)" = 4 ] && result 7 "$dev:xbb-connected" PASS "state 4" ||
						result 7 "$dev:xbb-connected" FAIL "state '$(fv state)'"
					local rs
					rs=$(fv max_request_segments)
					if [ -n "$gseg" ] && [ -n "$rs" ] && [ "$rs" -ge "$gseg" ]; then
						result 7 "$dev:xbb-max_request_segments" PASS "$rs >= guest max_segments $gseg"
					else
						result 7 "$dev:xbb-max_request_segments" FAIL "'$rs' vs guest '$gseg'"
					fi
					bw=$(fv bytes_written) br=$(fv bytes_read)
					if [ -n "$bw" ] && [ "$bw" -ge $((FB_MB << 20)) ] && [ -n "$br" ] && [ "$br" -ge $((FB_MB << 20)) ]; then
						result 7 "$dev:xbb-bytes" PASS "written $bw, read $br (disk $((FB_MB << 20)))"
					else
						result 7 "$dev:xbb-bytes" FAIL "written '$bw', read '$br', disk $((FB_MB << 20))"
					fi
				done
				fb_devstat "$fid"
			else
				result 7 xbbdd:dump FAIL "no dev.xbb dump from the FreeBSD domain"
			fi
		else
			result 7 s7v:ready FAIL "guest never finished its verify"
		fi
		xl shutdown s7v > /dev/null 2>&1
		wait_gone s7v 120
		collect 7 s7v
	else
		result 7 s7v:create FAIL "xl create failed (xl-create-s7v.txt)"
		sed 's/^/XENLAB xl: /' "$R/xl-create-s7v.txt" | tail -n 10
	fi

	# (b) Reboot (reconnect) on md1, then block-attach/-detach of the file.
	write_cfg s7r reboot "xenlab.seed=72" "format=raw,vdev=xvda,access=rw,backend=xbbdd,target=$md1"
	if create s7r; then
		local id1 id2 round
		id1=$(domid_of s7r)
		if wait_log s7r 'XENLAB-GUEST reboot-now' 600; then
			local i=0
			while ! grep -q 'XENLAB-GUEST boot=2' "$(glog s7r)" && [ $i -lt 60 ]; do
				if in_shutdown s7r && [ $i -gt 10 ]; then
					result 7 s7r:reboot-restart FAIL "xl's monitor did not restart the rebooting guest"
					xl destroy s7r
					cp "$(glog s7r)" /tmp/s7r-boot1.log
					create s7r
					break
				fi
				sleep 1
				i=$((i + 1))
			done
		fi
		if wait_log s7r 'XENLAB-GUEST boot=2' 300; then
			id2=$(domid_of s7r)
			result 7 reboot-reconnect PASS "domid $id1 -> $id2"
		else
			result 7 reboot-reconnect FAIL "second boot never came"
		fi
		for round in 1 2; do
			wait_log s7r "XENLAB-GUEST hotplug-wait-attach round=$round" 300 || {
				result 7 "attach-$round" FAIL "guest never asked for the disk"
				break
			}
			if timeout 120 xl block-attach s7r "format=raw,vdev=xvdb,access=rw,backend=xbbdd,target=$file" > "$R/xl-s7-attach-$round.txt" 2>&1; then
				result 7 "xl-block-attach-$round" PASS "backend=xbbdd target=$file"
			else
				result 7 "xl-block-attach-$round" FAIL "$(tail -n 1 "$R/xl-s7-attach-$round.txt")"
			fi
			wait_log s7r "XENLAB-GUEST hotplug-io-done round=$round" 600 || {
				result 7 "io-$round" FAIL "guest never finished I/O on xvdb"
				break
			}
			if timeout 120 xl block-detach s7r xvdb > "$R/xl-s7-detach-$round.txt" 2>&1; then
				result 7 "xl-block-detach-$round" PASS
			else
				result 7 "xl-block-detach-$round" FAIL "$(tail -n 1 "$R/xl-s7-detach-$round.txt")"
			fi
		done
		wait_gone s7r 300
		[ -f /tmp/s7r-boot1.log ] && cat /tmp/s7r-boot1.log "$(glog s7r)" > /tmp/s7r-both.log && cp /tmp/s7r-both.log "$(glog s7r)"
		collect 7 s7r
	else
		result 7 s7r:create FAIL "xl create failed (xl-create-s7r.txt)"
	fi

	# (c) Detach with I/O in flight: the guest loops on md0, dom0 pulls the
	# disk (libxl forces the removal when the guest holds it open), then
	# destroys the guest.
	write_cfg s7l loop "xenlab.seed=73" "format=raw,vdev=xvda,access=rw,backend=xbbdd,target=$md0"
	if create s7l; then
		local lid
		lid=$(domid_of s7l)
		if wait_log s7l 'XENLAB-GUEST loop-start' 300; then
			sleep 5
			timeout 120 xl block-detach s7l xvda > "$R/xl-s7-detach-busy.txt" 2>&1
			say "s7: block-detach with I/O in flight: status $? ($(tail -n 1 "$R/xl-s7-detach-busy.txt"))"
			local st i=0
			while [ $i -lt 30 ]; do
				st=$(xsr "/local/domain/$fid/backend/vbd/$lid/51712/state")
				[ -z "$st" ] || [ "$st" = 6 ] && break
				sleep 1
				i=$((i + 1))
			done
			if [ -z "$st" ] || [ "$st" = 6 ]; then
				result 7 detach-busy PASS "backend state '${st:-removed}' with the guest's I/O loop running"
			else
				result 7 detach-busy FAIL "backend state still $st"
			fi
		else
			result 7 loop-start FAIL "guest never started its I/O loop"
		fi
		timeout 120 xl destroy s7l || result 7 xl-destroy-loop FAIL "xl destroy failed"
		cp -f "$(glog s7l)" "$R/guest-s7l.log"
	else
		result 7 s7l:create FAIL "xl create failed (xl-create-s7l.txt)"
	fi
	if [ -n "$(domid_of xbbdd)" ] && ! in_shutdown xbbdd; then
		result 7 xbbdd-alive PASS "driver domain survived the detach with I/O in flight"
	else
		result 7 xbbdd-alive FAIL "the driver domain is gone"
	fi

	# (d) No guest left: kldunload must succeed.
	sleep 3
	xenstore-ls -f "/local/domain/$fid/backend" > "$R/xenstore-xbbdd-backend-end.txt" 2>&1
	xenstore-write "/local/domain/$fid/data/xbb-cmd" unload
	wait_log xbbdd 'XBB-DD: done ' 120 || say "xbbdd never reported done"
	say "xbbdd state in XenStore: $(xsr "/local/domain/$fid/data/xbb-state")"
	wait_gone xbbdd 60
	fbsd_collect 7 xbbdd
	# Issue 15 item 4: once the toolstack removed a back-end directory
	# (every guest above was destroyed or detached, one with I/O in
	# flight), xbb.ko writes nothing more into it; a write would be
	# refused and logged as "XenStore permission denied".
	local denied
	denied=$(tr -d '\r' < "$(glog xbbdd)" | grep -c 'XenStore permission denied')
	if [ "${denied:-0}" = 0 ]; then
		result 7 no-write-after-remove PASS "no refused XenStore write in the driver domain's log"
	else
		result 7 no-write-after-remove FAIL "$denied refused XenStore write(s): $(tr -d '\r' < "$(glog xbbdd)" | grep -m 1 'XenStore permission denied')"
	fi
	grep -o 'XBB-DD: instances .*' "$(glog xbbdd)" | tr -d '\r' | tr '\n' ' ' | sed 's/^/XENLAB s7 xbb instances over time: /'
	echo
}

s8() {
	say "scenario 8: the FreeBSD front-end (xbd) served from dom0 by $MODE"
	fbsd_inputs 8 || return 0
	make_img /images/s8.img "${XENLAB_DISK_MB:-64}"
	fbsd_cfg xbbfe "xbbdd.mode=front xbbdd.seed=81" \
		"format=raw,vdev=xvda,access=ro,target=$FB_ISO" \
		"format=raw,vdev=xvdb,access=rw,target=/images/s8.img"
	local fid
	fbsd_create 8 xbbfe || return 0
	# The table while the front-end is connected (it powers off when done).
	if wait_log xbbfe 'XBB-DD: ok open /dev/xbd1' 400; then
		dump_vbd xbbfe "$fid"
		if [ "$MODE" = xbb ] && xbb_table > "$R/xbb-table-s8.txt"; then
			local v
			for v in state ring_pages num_queues max_request_segments max_indirect_segments persistent_grants; do
				say "s8 xbb-serve dev.xbb.$v for xbd1: $(xbb_value "$R/xbb-table-s8.txt" "$fid" 51728 "$v")"
			done
		fi
	fi
	wait_log xbbfe 'XBB-DD: done ' 900 || say "xbbfe never reported done"
	if [ "$MODE" = xbb ] && xbb_table > "$R/xbb-table-s8-end.txt"; then
		local bw
		bw=$(xbb_value "$R/xbb-table-s8-end.txt" "$fid" 51728 bytes_written)
		say "s8 xbb-serve bytes_written for xbd1: '$bw'"
	fi
	wait_gone xbbfe 120
	fbsd_collect 8 xbbfe
	grep 'XBB-DD: sysctl dev.xbd.1' "$(glog xbbfe)" | tr -d '\r' | sort -u | sed 's/^XBB-DD: /XENLAB s8 /' | head -n 40
}

# ------------------------------------------------------------ scenario 15
# Issue 15 items 2 and 3 with xbb.ko: what xenlab's scenarios 13 and 14
# do against xbb-serve, against xbb.ko in the driver domain.
#  a. s15s: a Linux guest runs the "save" task (rounds of check, xbbwork
#     loop, verify) on a disk xbb.ko serves, while dom0 saves and restores
#     it three times. After each save: Xen let the old domain go (no
#     grant mapping of the driver domain keeps it alive), its back-end
#     directory in the driver domain is gone, its xbb instance detached
#     (the kernel's "xbbN: detached") and dev.xbb has as many instances as
#     before the guest existed; after each restore: the vbd is 4/4 on a
#     new back-end directory, served by a new instance in state 4, and the
#     guest's work goes on with no failed operation.
#  b. s15p: a Linux guest booted by pvgrub2 from a disk xbb.ko serves:
#     GRUB's front-end reads the kernel, closes, the kernel's blkfront
#     connects to the same instance (online = 1 keeps it): one attach, no
#     detach, two Connected states of the back-end; the guest reads the
#     boot disk back whole and verifies its data disk.
# The disks xbb.ko serves here are not the driver domain's md(4) or tmpfs
# file but disks dom0 gives it (xvdb.. of xbbdd, served in dom0 by $MODE):
# xbb.ko serves the driver domain's /dev/xbdN, and dom0 can check the
# images once the guests are gone (xbbwork check of the save guest's
# disk) and hand the driver domain scenario 14's boot image as it is.
# Those are Xen front-end disks, which cannot pass a guest's granted page
# on (Xen maps a grant only of a page the granting domain owns): xbb.ko
# must find that and serve them through bounce buffers (check "bounce").
# Asked for with --scenarios 15 (tests/freebsd/xen/run.sh); its pvgrub2
# and boot image come from tests/xenlab/run.sh as for scenario 14.
S15_FID=""   # the driver domain
S15_N0=0     # its console's length when a step began
S15_BAD=0    # the save guest's failed operations seen so far
S15_IDS=""   # the save guest's domids
S15_BASE=""  # dev.xbb instances before the save guest existed
fb15_log() { tr -d '\r' < "$(glog xbbdd)" 2> /dev/null; }
fb15_mark() { S15_N0=$(fb15_log | wc -l); }
fb15_since() { fb15_log | tail -n +"$((S15_N0 + 1))"; }
# fb15_units DUMP: the dev.xbb units in a dump (fb_dump).
fb15_units() { sed -n 's/^dev\.xbb\.\([0-9]*\)\.%driver:.*/\1/p' "$1" | sort -un | tr '\n' ' ' | sed 's/ $//'; }
fb15_count() { fb15_units "$1" | wc -w; }
# fb15_unit DOMID DEVID: the unit the kernel's latest attach line names.
fb15_unit() {
	fb15_log | sed -n "s|^xbb\([0-9]*\): <.*> at backend/vbd/$1/$2 on .*|\1|p" | tail -n 1
}
# fb15_diag STEP DOMID...: on a failure: xl list, both ends' XenStore
# directories, the driver domain's console tail.
fb15_diag() {
	local d
	say "s15 $1: what there is:"
	xl list 2>&1 | sed 's/^/XENLAB s15 xl list: /'
	shift
	for d in "$@"; do
		[ -n "$d" ] || continue
		xenstore-ls -f "/local/domain/$S15_FID/backend/vbd/$d" 2>&1 | head -n 40 | sed "s/^/XENLAB s15 backend of $d: /"
		xenstore-ls -f "/local/domain/$d/device/vbd" 2>&1 | head -n 30 | sed "s/^/XENLAB s15 frontend of $d: /"
	done
	fb15_log | grep -v '^XBB-DD: sysctl ' | tail -n 30 | sed 's/^/XENLAB s15 xbbdd console: /'
}
fb15_xl() { grep -v '^Parsing' "$2" 2> /dev/null | tail -n 15 | sed "s/^/XENLAB s15 $1 xl: /"; }

# The save guest's console, as s13's helpers read theirs.
fb15_count_s() { grep -c -E "$1" "$(glog s15s)" 2> /dev/null; }
fb15_ops() { fb15_count_s 'XENLAB-GUEST XBBWORK (check|verify) '; }
fb15_round() { sed -n 's/.*XENLAB-GUEST save-round \([0-9]*\).*/\1/p' "$(glog s15s)" 2> /dev/null | tail -n 1; }
# fb15_wait REGEX COUNT SECONDS: COUNT matching lines on s15s's console;
# gives up after a minute without a domain s15s.
fb15_wait() {
	local i=0 gone=0 n
	while [ $i -lt $(($3 * 2)) ]; do
		n=$(fb15_count_s "$1")
		[ "${n:-0}" -ge "$2" ] && return 0
		if [ $((i % 10)) -eq 9 ]; then
			if [ -n "$(domid_of s15s)" ]; then
				gone=0
			elif [ $((gone += 1)) -ge 12 ]; then
				return 1
			fi
		fi
		sleep 0.5
		i=$((i + 1))
	done
	return 1
}

# fb15_connected STEP DOMID: the vbd is 4/4 on backend/vbd/DOMID/51712
# in the driver domain, and the instance the kernel attached for it is in
# state 4 with its persistent grants within bounds; dev.xbb holds one
# instance more than before the guest existed.
fb15_connected() {
	local st=$1 d=$2 be=/local/domain/$S15_FID/backend/vbd/$2/51712 fe=/local/domain/$2/device/vbd/51712
	local i=0 bst fst unit t=$R/xbbdd-dump-s15-$1.txt
	while [ $i -lt 240 ]; do
		bst=$(xsr "$be/state") fst=$(xsr "$fe/state")
		[ "$bst/$fst" = 4/4 ] && break
		sleep 0.5
		i=$((i + 1))
	done
	xenstore-ls -f "$be" > "$R/xenstore-s15-$st.txt" 2>&1
	if [ "$bst/$fst" = 4/4 ]; then
		result 15 "$st:connected" PASS "domid $d: backend/vbd/$d/51712 in xbbdd ($S15_FID) and the front-end 4/4 after $((i / 2)) s"
	else
		result 15 "$st:connected" FAIL "domid $d: backend state '$bst', frontend state '$fst' after 120 s"
		fb15_diag "$st" "$d"
		return
	fi
	if ! fb_dump "$S15_FID" "$t"; then
		result 15 "$st:xbb-instance" FAIL "no dev.xbb dump from the driver domain"
		fb15_diag "$st" "$d"
		return
	fi
	unit=$(fb15_unit "$d" 51712)
	fv() { sed -n "s|^dev\.xbb\.$unit\.$1: *||p" "$t" | tail -n 1; }
	local pgm mpg n
	pgm=$(fv persistent_grants_mapped) mpg=$(fv max_persistent_grants) n=$(fb15_count "$t")
	if [ -n "$unit" ] && [ "$(fv state)" = 4 ] && [ -n "$pgm" ] && { [ -z "$mpg" ] || [ "$pgm" -le "$mpg" ]; } &&
		[ "$n" = $((S15_BASE + 1)) ]; then
		result 15 "$st:xbb-instance" PASS "dev.xbb.$unit serves backend/vbd/$d/51712, state 4," \
			"persistent_grants_mapped=$pgm (max $mpg) reqs_received=$(fv reqs_received)" \
			"bytes_read=$(fv bytes_read) bytes_written=$(fv bytes_written); instances: $(fb15_units "$t")"
	else
		result 15 "$st:xbb-instance" FAIL "unit '$unit' state '$(fv state)' persistent_grants_mapped '$pgm' (max '$mpg');" \
			"$n instance(s) ($(fb15_units "$t")), want $((S15_BASE + 1))"
		fb15_diag "$st" "$d"
	fi
}
# fb15_released STEP DOMID UNIT: the old domain gone from Xen (a dying
# domain there would be one the driver domain still maps pages of), its
# back-end directory gone from the driver domain's XenStore, its instance
# detached (the console says "xbbUNIT: detached" since the step began),
# and dev.xbb back to the instances there were before the guest.
fb15_released() {
	local st=$1 d=$2 u=$3 be=/local/domain/$S15_FID/backend/vbd/$2/51712 i=0 why="" n
	local t=$R/xbbdd-dump-s15-$1-old.txt
	while [ $i -lt 60 ] && s13_known "$d"; do
		sleep 0.5
		i=$((i + 1))
	done
	if s13_known "$d"; then
		result 15 "$st:old-domid-freed" FAIL "Xen still has domain $d after 30 s: $(xl list 2> /dev/null | awk -v d="$d" '$2 == d' | tr -s ' ')"
	else
		result 15 "$st:old-domid-freed" PASS "domain $d gone from Xen after $((i / 2)) s"
	fi
	i=0
	while [ $i -lt 120 ] && [ -n "$(xsr "$be/state")" ]; do
		sleep 0.5
		i=$((i + 1))
	done
	if [ -z "$(xsr "$be/state")" ]; then
		result 15 "$st:old-vbd-removed" PASS "backend/vbd/$d/51712 gone from xbbdd after $((i / 2)) s"
	else
		result 15 "$st:old-vbd-removed" FAIL "backend/vbd/$d/51712 still in xbbdd after 60 s, state $(xsr "$be/state")"
	fi
	i=0
	while [ $i -lt 60 ] && ! fb15_since | grep -q "^xbb$u: detached"; do
		sleep 0.5
		i=$((i + 1))
	done
	[ -n "$u" ] || why="no attach line named the instance of backend/vbd/$d/51712;"
	[ -z "$u" ] || fb15_since | grep -q "^xbb$u: detached" || why="$why no 'xbb$u: detached' on the console in 30 s;"
	if ! fb_dump "$S15_FID" "$t"; then
		why="$why no dev.xbb dump;"
	else
		n=$(fb15_count "$t")
		[ "$n" = "$S15_BASE" ] || why="$why $n dev.xbb instance(s) ($(fb15_units "$t")), $S15_BASE before the guest;"
	fi
	if [ -z "$why" ]; then
		result 15 "$st:old-instance-detached" PASS "xbb$u detached; dev.xbb back to $S15_BASE instance(s)"
	else
		result 15 "$st:old-instance-detached" FAIL "$why"
		fb15_diag "$st" "$d"
	fi
}
# fb15_goes_on STEP OPS: two more whole-disk operations than OPS within
# 300 s, no failed one since the last step.
fb15_goes_on() {
	local bad
	if fb15_wait 'XENLAB-GUEST XBBWORK (check|verify) ' $(($2 + 2)) 300; then
		result 15 "$1:io-goes-on" PASS "whole-disk operations $2 -> $(fb15_ops), now in round $(fb15_round)"
	else
		result 15 "$1:io-goes-on" FAIL "whole-disk operations $2 -> $(fb15_ops) in 300 s"
		fb15_diag "$1" "$(domid_of s15s)"
	fi
	bad=$(fb15_count_s 'XENLAB-GUEST result name=save-.* FAIL')
	if [ "${bad:-0}" -gt "$S15_BAD" ]; then
		result 15 "$1:io-verified" FAIL "$((bad - S15_BAD)) failed operation(s): $(grep -o 'XENLAB-GUEST result name=save-.* FAIL.*' "$(glog s15s)" | tail -n +$((S15_BAD + 1)) | head -n 3 | tr '\n' ';')"
		S15_BAD=$bad
	else
		result 15 "$1:io-verified" PASS "no failed operation since the last step"
	fi
}
# fb15_save N: xl save (timed into the guest's xbbwork loop for N = 1, 3:
# requests in flight), old instance released, xl restore, new connected.
fb15_save() {
	local c=$1 old new ops round t rc u n
	if [ "$c" != 2 ]; then
		n=$(fb15_count_s 'XENLAB-GUEST save-loop ')
		fb15_wait 'XENLAB-GUEST save-loop ' $((n + 1)) 300 || say "s15 save$c: no new xbbwork loop in 300 s, saving anyway"
		sleep 2
	fi
	old=$(domid_of s15s)
	u=$(fb15_unit "$old" 51712)
	ops=$(fb15_ops) round=$(fb15_round)
	fb15_mark
	rm -f /images/s15.save
	t=$SECONDS
	timeout 300 xl save s15s /images/s15.save > "$R/xl-save-s15-$c.txt" 2>&1
	rc=$?
	echo "xl save s15s ($c): $((SECONDS - t)) s, status $rc" >> "$R/xl-times.txt"
	if [ $rc != 0 ] || [ -n "$(domid_of s15s)" ]; then
		result 15 "save$c:xl-save" FAIL "status $rc after $((SECONDS - t)) s (domid $old, round $round; domain now '$(domid_of s15s)'): $(grep -v '^Parsing' "$R/xl-save-s15-$c.txt" | tail -n 1)"
		fb15_xl "save$c" "$R/xl-save-s15-$c.txt"
		fb15_diag "save$c" "$old"
		return 1
	fi
	result 15 "save$c:xl-save" PASS "domid $old (xbb$u) saved in $((SECONDS - t)) s in round $round, $ops whole-disk operations done"
	fb15_released "save$c" "$old" "$u"
	t=$SECONDS
	timeout 300 xl restore /images/s15.save > "$R/xl-restore-s15-$c.txt" 2>&1
	rc=$?
	echo "xl restore s15s ($c): $((SECONDS - t)) s, status $rc" >> "$R/xl-times.txt"
	new=$(domid_of s15s)
	if [ $rc != 0 ] || [ -z "$new" ]; then
		result 15 "restore$c:xl-restore" FAIL "status $rc after $((SECONDS - t)) s, domain '$new': $(grep -v '^Parsing' "$R/xl-restore-s15-$c.txt" | tail -n 1)"
		fb15_xl "restore$c" "$R/xl-restore-s15-$c.txt"
		fb15_diag "restore$c" "$new"
		return 1
	fi
	rm -f /images/s15.save
	S15_IDS="$S15_IDS -> $new"
	if [ "$new" != "$old" ]; then
		result 15 "restore$c:xl-restore" PASS "domid $old -> $new in $((SECONDS - t)) s"
	else
		result 15 "restore$c:xl-restore" FAIL "the restored domain has the old domid $old"
	fi
	fb15_connected "restore$c" "$new"
	fb15_goes_on "restore$c" "$ops"
}
# fb15_save_guest IMG: part a.
fb15_save_guest() {
	local domid c ok=1 seed n u t=$R/xbbdd-dump-s15-base.txt
	n=$(df -Pm /images | awk 'NR == 2 { print $4 }')
	if [ "${n:-0}" -lt 200 ]; then
		result 15 save SKIP "only ${n} MiB free in /images for a 160 MiB save file"
		return
	fi
	if ! fb_dump "$S15_FID" "$t"; then
		result 15 save:baseline FAIL "no dev.xbb dump from the driver domain"
		return
	fi
	S15_BASE=$(fb15_count "$t")
	rm -f /images/s15.save
	write_cfg s15s save "xenlab.seed=151" "format=raw,vdev=xvda,access=rw,backend=xbbdd,target=/dev/xbd1"
	if ! create s15s; then
		result 15 s15s:create FAIL "xl create failed (xl-create-s15s.txt)"
		sed 's/^/XENLAB xl: /' "$R/xl-create-s15s.txt" | tail -n 10
		fb15_diag create
		return
	fi
	domid=$(domid_of s15s)
	S15_IDS=$domid S15_BAD=0
	if ! fb15_wait 'XENLAB-GUEST save-round 2' 1 600; then
		result 15 io-start FAIL "the guest never started its second round"
		fb15_diag start "$domid"
		ok=0
	fi
	[ $ok = 1 ] && fb15_connected start "$domid"
	for c in 1 2 3; do
		[ $ok = 1 ] || break
		sleep 2
		fb15_save "$c" || ok=0
	done
	# xl shutdown: the guest ends its round, checks the whole disk and
	# powers off.
	domid=$(domid_of s15s)
	u=$(fb15_unit "$domid" 51712)
	fb15_mark
	xl shutdown s15s > "$R/xl-shutdown-s15s.txt" 2>&1
	if ! fb15_wait 'XENLAB-GUEST save-done' 1 600; then
		result 15 save-guest-done FAIL "the guest never finished its last check after xl shutdown"
		fb15_diag stop "$domid"
	fi
	wait_gone s15s 120
	collect 15 s15s
	result 15 save-domids PASS "$S15_IDS; the guest says: $(grep -o 'save-done.*' "$(glog s15s)" | tail -n 1)"
	[ -n "$domid" ] && fb15_released final "$domid" "$u"
	# The whole disk from dom0: what xbb.ko wrote through the driver
	# domain's xbd1 is in the image dom0 serves it.
	seed=$(sed -n 's/.*XENLAB-GUEST save-done seed=\([0-9]*\).*/\1/p' "$(glog s15s)" | tail -n 1)
	if [ -z "$seed" ]; then
		result 15 dom0-check SKIP "the guest never said which pattern it wrote last"
	elif xbbwork check "$1" --seed "$seed" > "$R/xbbwork-s15.txt" 2>&1; then
		result 15 dom0-check PASS "$(grep -o 'XBBWORK.*' "$R/xbbwork-s15.txt")"
	else
		result 15 dom0-check FAIL "$(tail -n 2 "$R/xbbwork-s15.txt" | tr '\n' ' ')"
	fi
	rm -f /images/s15.save
}

# fb15_text NAME: a pvgrub guest's console without GRUB's terminal codes.
fb15_text() {
	tr -d '\000\r' < "$(glog "$1")" 2> /dev/null | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1b[()][A-Z0-9]//g' | tr -d '\033'
}
# fb15_states PATH SECONDS OUT: records each change of the XenStore node
# PATH into OUT (one state a line), every 0.2 s, for at most SECONDS (the
# caller stops it sooner by its pid).
fb15_states() {
	local end=$((SECONDS + $2)) last="" v
	: > "$3"
	while [ $SECONDS -lt $end ]; do
		v=$(xsr "$1")
		if [ "$v" != "$last" ]; then
			echo "${v:-gone}" >> "$3"
			last=$v
		fi
		sleep 0.2
	done
}
# fb15_pvgrub_guest BOOT DATA: part b.
fb15_pvgrub_guest() {
	local domid sum gsum line root pid chain conns att det u i n r rest f0=$FAILS
	sum=$(sha256sum "$1" | cut -d' ' -f1)
	fb15_mark
	# Scenario 14's xl.cfg writer (xenlab-init), with disks xbb.ko serves.
	s14_cfg s15p "format=raw,vdev=xvda,access=rw,backend=xbbdd,target=/dev/xbd2" \
		"format=raw,vdev=xvdb,access=rw,backend=xbbdd,target=/dev/xbd3"
	if ! create s15p; then
		result 15 s15p:create FAIL "xl create failed (xl-create-s15p.txt)"
		sed 's/^/XENLAB xl: /' "$R/xl-create-s15p.txt" | tail -n 10
		fb15_diag pvgrub-create
		return
	fi
	domid=$(domid_of s15p)
	fb15_states "/local/domain/$S15_FID/backend/vbd/$domid/51712/state" 1500 /tmp/s15p-states.txt &
	pid=$!
	if ! wait_log s15p 'XENLAB-PVGRUB root=|grub>' 300 || ! fb15_text s15p | grep -q 'XENLAB-PVGRUB root='; then
		result 15 pvgrub:grub-cfg-found FAIL "no line of grub.cfg on the console in 300 s (GRUB's front-end did not connect to xbb.ko, or found no grub.cfg)"
	else
		root=$(fb15_text s15p | grep -o 'XENLAB-PVGRUB root=[^ ]*' | tail -n 1)
		result 15 pvgrub:grub-cfg-found PASS "${root#XENLAB-PVGRUB }"
		if ! wait_log s15p 'XENLAB-GUEST pvgrub-ready' 900; then
			result 15 pvgrub:guest-ready FAIL "the kernel never read xvda back and verified xvdb ($(fb15_text s15p | grep -c 'XENLAB-GUEST boot task=') boot line(s))"
		else
			line=$(fb15_text s15p | grep -o 'XENLAB-GUEST pvgrub boot-disk .*' | tail -n 1)
			gsum=$(echo "$line" | sed -n 's/.*sha256=\([^ ]*\).*/\1/p')
			if [ -n "$gsum" ] && [ "$gsum" = "$sum" ]; then
				result 15 pvgrub:boot-disk-readback PASS "blkfront read the disk GRUB booted from through xbb.ko: sha256 $gsum = the image's"
			else
				result 15 pvgrub:boot-disk-readback FAIL "guest read sha256 '$gsum', the image is $sum"
			fi
		fi
	fi
	kill "$pid" 2> /dev/null
	wait "$pid" 2> /dev/null
	xenstore-ls -f "/local/domain/$S15_FID/backend/vbd/$domid" > "$R/xenstore-s15p-backend.txt" 2>&1
	ck10 15 pvgrub:xvda-state "$(xsr "/local/domain/$S15_FID/backend/vbd/$domid/51712/state")/$(xsr "/local/domain/$domid/device/vbd/51712/state")" 4/4
	# One instance across the hand-off: one attach line for the vbd since
	# the guest's creation, that unit never detached, and the back-end
	# went Connected twice (GRUB's, then the kernel's connection).
	att=$(fb15_since | grep -c "^xbb[0-9]*: <.*> at backend/vbd/$domid/51712 on ")
	u=$(fb15_unit "$domid" 51712)
	det=$(fb15_since | grep -c "^xbb$u: detached")
	if [ "$att" = 1 ] && [ "$det" = 0 ]; then
		result 15 pvgrub:one-instance PASS "xbb$u attached once for backend/vbd/$domid/51712, not detached; online=$(xsr "/local/domain/$S15_FID/backend/vbd/$domid/51712/online")"
	else
		result 15 pvgrub:one-instance FAIL "$att attach line(s) for backend/vbd/$domid/51712, xbb$u detached $det time(s)"
	fi
	chain=$(tr '\n' ' ' < /tmp/s15p-states.txt | sed 's/ $//; s/ / -> /g')
	conns=$(grep -c '^4$' /tmp/s15p-states.txt)
	if [ "$conns" = 2 ]; then
		result 15 pvgrub:connections PASS "2 (GRUB's, then the kernel's), back-end states seen: $chain"
	else
		result 15 pvgrub:connections FAIL "$conns Connected state(s) seen, want 2: $chain"
	fi
	# The kernel's connection (counters start at 0 with each one): the
	# boot disk's whole read came through it.
	if [ -n "$u" ] && fb_dump "$S15_FID" "$R/xbbdd-dump-s15p.txt"; then
		local br st want
		br=$(sed -n "s|^dev\.xbb\.$u\.bytes_read: *||p" "$R/xbbdd-dump-s15p.txt" | tail -n 1)
		st=$(sed -n "s|^dev\.xbb\.$u\.state: *||p" "$R/xbbdd-dump-s15p.txt" | tail -n 1)
		want=$(($(stat -c %s "$1") * 9 / 10))
		if [ -n "$br" ] && [ "$br" -ge "$want" ] && [ "$st" = 4 ]; then
			result 15 pvgrub:kernel-reads PASS "dev.xbb.$u state 4, bytes_read=$br of the kernel's connection (image $(stat -c %s "$1") bytes)"
		else
			result 15 pvgrub:kernel-reads FAIL "dev.xbb.$u state '$st' bytes_read='$br', want >= $want"
		fi
	else
		result 15 pvgrub:kernel-reads FAIL "no instance (xbb'$u') or no dev.xbb dump from the driver domain"
	fi
	fb15_since | sed -n "s/^XBB-DD: sysctl dev\.xbb\.$u\.state: //p" | tr '\n' ' ' | sed "s/^/XENLAB s15 xbb$u state by the driver domain's 2 s samples: /"
	echo
	xl shutdown s15p > /dev/null 2>&1
	wait_gone s15p 120
	i=0
	while [ $i -lt 20 ] && ! fb15_text s15p | grep -q 'XENLAB-GUEST done'; do
		sleep 0.5
		i=$((i + 1))
	done
	fb15_text s15p > "$R/s15p-console.txt"
	grep -o 'XENLAB-GUEST result name=.*' "$R/s15p-console.txt" | sed 's/^XENLAB-GUEST result name=//' > /tmp/s15p-collect.txt
	while read -r n r rest; do
		result 15 "s15p:$n" "$r" "$rest"
	done < /tmp/s15p-collect.txt
	grep -q 'XENLAB-GUEST done' "$R/s15p-console.txt" ||
		result 15 s15p:finished FAIL "guest never finished its task (s15p-console.txt)"
	if [ "$FAILS" -gt "$f0" ]; then
		tail -n 30 "$R/s15p-console.txt" | sed 's/^/XENLAB s15p console: /'
		fb15_diag pvgrub "$domid"
	fi
}

s15() {
	say "scenario 15: xbb.ko in the driver domain under xl save/restore and a pvgrub2 boot"
	fbsd_inputs 15 || return 0
	local fid fails0=$FAILS pv="" disks
	if [ -n "${XENLAB_PVGRUB_SKIP:-}" ]; then
		result 15 pvgrub SKIP "$XENLAB_PVGRUB_SKIP"
	elif [ ! -f "$S14_BIN" ] || [ ! -f "$S14_IMG" ]; then
		result 15 pvgrub SKIP "no $S14_BIN or $S14_IMG in dom0 (tests/xenlab/run.sh puts them there for --scenarios 14 or 15)"
	else
		pv=1
	fi
	make_img /images/s15-save.img "$MB"
	disks="format=raw,vdev=xvdb,access=rw,target=/images/s15-save.img"
	if [ -n "$pv" ]; then
		cp --sparse=always "$S14_IMG" /images/s15-boot.img
		make_img /images/s15-data.img "$MB"
		disks="$disks format=raw,vdev=xvdc,access=rw,target=/images/s15-boot.img format=raw,vdev=xvdd,access=rw,target=/images/s15-data.img"
	fi
	# shellcheck disable=SC2086
	fbsd_cfg xbbdd "xbbdd.mode=serve xbbdd.disk_mb=8 xbbdd.md_count=1" \
		"format=raw,vdev=xvda,access=ro,target=$FB_ISO" $disks
	fbsd_create 15 xbbdd || return 0
	S15_FID=$fid
	if ! wait_log xbbdd 'XBB-DD: ready' 400; then
		result 15 xbbdd:ready FAIL "no READY from the FreeBSD domain"
		xl destroy xbbdd
		fbsd_collect 15 xbbdd
		return
	fi
	result 15 xbbdd:ready PASS "domid $fid: $(grep -o 'XBB-DD: ready .*' "$(glog xbbdd)" | tr -d '\r' | cut -c15-)"
	# The driver domain sees dom0's disks as xbd1.. (GEOM's line per disk).
	fb15_log | grep -E '^xbd[1-3]: ' | head -n 6 | sed 's/^/XENLAB s15 xbbdd: /'
	fb15_save_guest /images/s15-save.img
	[ -n "$pv" ] && fb15_pvgrub_guest /images/s15-boot.img /images/s15-data.img
	# The disks xbb.ko serves here are the driver domain's own front-end
	# disks: each instance must have found that and bounced its I/O
	# (hw.xbb.bounce=1, the default), or the guest saw only errors.
	local bl
	bl=$(fb15_log | tr -d '\r' | grep -E '^xbb[0-9]+: .*xbd[1-3]: I/O through bounce buffers' | sort -u)
	if [ -n "$bl" ]; then
		result 15 bounce PASS "$(echo "$bl" | wc -l) instance(s): $(echo "$bl" | head -n 1)"
	else
		result 15 bounce FAIL "no xbb instance said it bounces I/O to an xbd disk"
	fi
	if [ -n "$(domid_of xbbdd)" ] && ! in_shutdown xbbdd; then
		result 15 xbbdd-alive PASS "the driver domain served every step"
	else
		result 15 xbbdd-alive FAIL "the driver domain is gone"
	fi
	sleep 3
	xenstore-ls -f "/local/domain/$fid/backend" > "$R/xenstore-xbbdd-backend-end-s15.txt" 2>&1
	xenstore-write "/local/domain/$fid/data/xbb-cmd" unload
	wait_log xbbdd 'XBB-DD: done ' 120 || say "xbbdd never reported done"
	wait_gone xbbdd 60
	fbsd_collect 15 xbbdd
	[ "$FAILS" -gt "$fails0" ] && fb15_log | grep -v '^XBB-DD: sysctl ' | tail -n 40 | sed 's/^/XENLAB s15 xbbdd console tail: /'
	rm -f /images/s15-save.img /images/s15-boot.img /images/s15-data.img /images/s15.save
}

# ------------------------------------------------------------ scenario 16
# Issue 12 item 3: xbb.ko against the driver it replaces, FreeBSD's own C
# blkback (xbbd.ko, built by run.sh from the user's FREEBSD_SRC with
# scripts/xbbd-kmod.sh, never part of the repository), and against dom0's
# xen-blkback, in one boot. One driver domain (one vCPU, as every FreeBSD
# domain here: see tests/xenlab/README.md on two emulated CPUs) with one
# md(4) disk written whole once (xbbdd.md_fill) and no periodic sysctl
# report (xbbdd.report=0); in each of XENLAB_BENCH_REPS repetitions, in
# this order: a Linux guest (one vCPU, so one queue) runs the bench task
# (xbbwork: 1 MiB sequential read and write at depth 1, 4 KiB random read
# at depth 1 and 32, XENLAB_BENCH_SECS each) on the md disk served by
# xbb.ko; the driver domain unloads xbb and loads xbbd (dd-init's "load"
# and "unload" commands; a new vbd goes to the driver loaded); the same
# guest on the same disk served by xbbd; back to xbb; the same guest on an
# image in dom0 served by xen-blkback. Every row checks that the driver
# named served it (its attach line on the driver domain's console) and
# that the bench reported no error. dom0's side of the scenario is
# xen-blkback throughout (xbb-serve stops while it runs): the driver
# domain's own root disk too. Results: XENLAB-BENCH lines with backend
# xbbko, xbbd and blkback; tests/xenlab/run.sh prints the table of
# medians and ratios. Asked for with --scenarios 16 (make
# freebsd-xen-bench).
# fb_driver FID CMD WANT: a "load X" or "unload X" command to the driver
# domain; true when it answered WANT in data/xbb-state.
fb_driver() {
	local i=0
	xenstore-write "/local/domain/$1/data/xbb-cmd" "$2"
	while [ $i -lt 120 ] && [ -n "$(xenstore-read "/local/domain/$1/data/xbb-cmd" 2> /dev/null)" ]; do
		sleep 0.5
		i=$((i + 1))
	done
	[ "$(xenstore-read "/local/domain/$1/data/xbb-state" 2> /dev/null)" = "$3" ]
}
# s16_idle FID: waits until the driver domain has no back-end directory
# left (the last guest's vbd gone), at most 60 s.
s16_idle() {
	local i=0
	while [ $i -lt 120 ] && [ -n "$(xenstore-list "/local/domain/$1/backend/vbd" 2> /dev/null)" ]; do
		sleep 0.5
		i=$((i + 1))
	done
	[ -z "$(xenstore-list "/local/domain/$1/backend/vbd" 2> /dev/null)" ]
}
# s16_one FID BACKEND REP: one bench guest; its XENLAB-BENCH lines.
s16_one() {
	local fid=$1 be=$2 rep=$3 name=f16-$2-$3 disk gid f drv
	case $be in
	xbbko | xbbd) disk="format=raw,vdev=xvda,access=rw,backend=xbbdd,target=/dev/md0" ;;
	*) disk="format=raw,vdev=xvda,access=rw,target=/images/bench16.img" ;;
	esac
	write_cfg "$name" bench "xenlab.secs=$XENLAB_BENCH_SECS" "$disk"
	if ! create "$name"; then
		result 16 "$name:create" FAIL "xl create failed (xl-create-$name.txt)"
		return 1
	fi
	gid=$(domid_of "$name")
	if [ "$be" != blkback ]; then
		# Which driver serves it, read from its back-end directory in
		# dom0 (nothing runs in the driver domain for it): xbb offers
		# persistent grants and multiple queues, FreeBSD's blkback
		# neither (and prints no attach line).
		local b=/local/domain/$fid/backend/vbd/$gid/51712 i=0 st=""
		while [ $i -lt 240 ]; do
			st=$(xenstore-read "$b/state" 2> /dev/null)
			[ "$st" = 4 ] && break
			sleep 0.5
			i=$((i + 1))
		done
		drv=none
		if [ "$st" = 4 ]; then
			if [ "$(xenstore-read "$b/feature-persistent" 2> /dev/null)" = 1 ] &&
				[ -n "$(xenstore-read "$b/multi-queue-max-queues" 2> /dev/null)" ]; then
				drv=xbb
			else
				drv=xbbd
			fi
		fi
		case "$be:$drv" in
		xbbko:xbb | xbbd:xbbd) result 16 "$name:driver" PASS "served by $drv: $(xenstore-ls -f "$b" 2> /dev/null | grep -E '/(feature-persistent|multi-queue-max-queues|max-ring-page-order|feature-max-indirect-segments|max-request-segments) ' | sed 's|.*/||' | tr -d '"' | tr '\n' ' ')" ;;
		*) result 16 "$name:driver" FAIL "state '$st', served by '$drv', not ${be%ko}" ;;
		esac
	fi
	wait_gone "$name" 900
	collect 16 "$name"
	f=$(glog "$name")
	if [ "$be" != blkback ]; then
		s16_idle "$fid" || result 16 "$name:vbd-gone" FAIL "backend/vbd still in the driver domain after 60 s"
	fi
	if [ "$(grep -c 'XENLAB-GUEST bench tool=xbbwork .*result=PASS' "$f" 2> /dev/null)" = 4 ]; then
		result 16 "$name:bench" PASS "4 tests, no error"
	else
		result 16 "$name:bench" FAIL "$(grep -c 'result=PASS' "$f" 2> /dev/null) of 4 tests passed"
	fi
	grep -o 'XENLAB-GUEST bench .*' "$f" 2> /dev/null | while read -r _ _ tool test rest; do
		echo "XENLAB-BENCH backend=$be rep=$rep $tool $test $(echo "$rest" | tr ' ' '\n' | grep -E '^(kBps|iops)=' | tr '\n' ' ')"
	done | tee -a "$R/bench.txt"
}
s16() {
	say "scenario 16: xbb.ko against FreeBSD's blkback (xbbd) in the driver domain and dom0's xen-blkback"
	fbsd_inputs 16 || return 0
	local fid fails0=$FAILS rep xbbd=1
	# dom0 serves with xen-blkback while this scenario runs.
	stop_xbb
	modprobe xen-blkback
	make_img /images/bench16.img "$MB" fill
	# No results snapshot while the back-ends are measured (xenlab-init).
	touch /run/xenlab-quiet
	fbsd_cfg xbbdd "xbbdd.mode=serve xbbdd.disk_mb=$MB xbbdd.md_count=1 xbbdd.md_fill=1 xbbdd.report=0" \
		"format=raw,vdev=xvda,access=ro,target=$FB_ISO"
	if fbsd_create 16 xbbdd; then
		if ! wait_log xbbdd 'XBB-DD: ready' 400; then
			result 16 xbbdd:ready FAIL "no READY from the FreeBSD domain"
			xl destroy xbbdd
		else
			result 16 xbbdd:ready PASS "domid $fid: $(fb15_log | grep -o 'XBB-DD: ready .*' | cut -c15-)"
			# Is there an xbbd.ko to load? Try once, before any guest.
			if fb_driver "$fid" "unload xbb" "unloaded xbb" && fb_driver "$fid" "load xbbd" "loaded xbbd" &&
				fb_driver "$fid" "unload xbbd" "unloaded xbbd"; then
				result 16 xbbd-load PASS "xbbd.ko loads and unloads in the driver domain"
			else
				result 16 xbbd-load SKIP "no xbbd.ko in the driver domain (FREEBSD_SRC/KERNBUILDDIR unset, or its build failed): state '$(xenstore-read "/local/domain/$fid/data/xbb-state" 2> /dev/null)'"
				xbbd=0
			fi
			fb_driver "$fid" "load xbb" "loaded xbb" || result 16 xbb-reload FAIL "xbb.ko did not load again"
			for rep in $(seq 1 "$XENLAB_BENCH_REPS"); do
				say "s16 repetition $rep/$XENLAB_BENCH_REPS"
				s16_one "$fid" xbbko "$rep"
				if [ "$xbbd" = 1 ]; then
					if fb_driver "$fid" "unload xbb" "unloaded xbb" && fb_driver "$fid" "load xbbd" "loaded xbbd"; then
						s16_one "$fid" xbbd "$rep"
					else
						result 16 "switch-to-xbbd-$rep" FAIL "state '$(xenstore-read "/local/domain/$fid/data/xbb-state" 2> /dev/null)'"
					fi
					if ! { fb_driver "$fid" "unload xbbd" "unloaded xbbd" && fb_driver "$fid" "load xbb" "loaded xbb"; }; then
						result 16 "switch-to-xbb-$rep" FAIL "state '$(xenstore-read "/local/domain/$fid/data/xbb-state" 2> /dev/null)'"
					fi
				fi
				s16_one "$fid" blkback "$rep"
			done
			xenstore-write "/local/domain/$fid/data/xbb-cmd" unload
			wait_log xbbdd 'XBB-DD: done ' 120 || say "xbbdd never reported done"
			wait_gone xbbdd 60
		fi
		fbsd_collect 16 xbbdd
		[ "$FAILS" -gt "$fails0" ] && fb15_log | grep -v '^XBB-DD: sysctl ' | tail -n 40 | sed 's/^/XENLAB s16 xbbdd console tail: /'
	fi
	rm -f /run/xenlab-quiet /images/bench16.img
	start_xbb
}
