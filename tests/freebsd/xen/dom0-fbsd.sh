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
			tail -n +"$((n + 1))" "$f" | tr -d '\r' | sed -n 's/^XBB-DD: sysctl //p' > "$2"
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
