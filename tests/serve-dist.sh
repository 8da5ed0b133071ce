#!/bin/sh
# The service files xbb-serve ships (serve/dist): the hotplug script and
# the dispatcher parse; make install-serve puts every file where the README
# says, keeps an administrator's configuration, honours PREFIX; and the
# systemd unit passes systemd-analyze verify with no complaint at all (where
# systemd-analyze is installed; it is on Debian), which a broken unit does
# not.
set -eu
cd "$(dirname "$0")/.."
fail() { echo "serve-dist: FAIL: $*" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for s in serve/dist/block-xbb serve/dist/xbb-dispatch; do
	sh -n "$s" || fail "$s does not parse"
	[ -x "$s" ] || fail "$s is not executable"
done

# A stand-in binary: the install target only copies it.
printf '#!/bin/sh\nexit 0\n' > "$tmp/xbb-serve"
chmod 0755 "$tmp/xbb-serve"
inst() { make -s install-serve SERVE_BIN="$tmp/xbb-serve" "$@" > "$tmp/make.log" 2>&1 || { cat "$tmp/make.log"; fail "make install-serve $*"; }; }
r=$tmp/root
inst DESTDIR="$r"
for f in usr/local/sbin/xbb-serve etc/xen/scripts/block-xbb etc/xen/scripts/xbb-dispatch; do
	[ -x "$r/$f" ] || fail "install-serve did not install $f executable"
done
for f in etc/systemd/system/xbb-serve.service etc/udev/rules.d/65-xbb-dispatch.rules etc/xen/xbb-serve.conf; do
	[ -f "$r/$f" ] || fail "install-serve did not install $f"
done
cmp -s serve/dist/xbb-serve.conf "$r/etc/xen/xbb-serve.conf" || fail "installed configuration differs"
# An administrator's configuration stays.
echo "script = block-mine" > "$r/etc/xen/xbb-serve.conf"
inst DESTDIR="$r"
grep -q '^script = block-mine$' "$r/etc/xen/xbb-serve.conf" || fail "install-serve replaced an existing configuration"
# PREFIX reaches the unit's ExecStart.
inst DESTDIR="$tmp/opt" PREFIX=/opt/xbb
[ -x "$tmp/opt/opt/xbb/sbin/xbb-serve" ] || fail "PREFIX: no /opt/xbb/sbin/xbb-serve"
grep -q '^ExecStart=/opt/xbb/sbin/xbb-serve --config /etc/xen/xbb-serve.conf$' \
	"$tmp/opt/etc/systemd/system/xbb-serve.service" || fail "PREFIX did not reach ExecStart"

if ! command -v systemd-analyze > /dev/null 2>&1; then
	echo "serve-dist: no systemd-analyze here: the unit is not verified"
	exit 0
fi
# verify checks every command of the unit and every unit it names, inside
# --root: give it the system's units and the programs the unit runs.
mkdir -p "$r/lib/systemd" "$r/bin"
cp -a /lib/systemd/system "$r/lib/systemd/"
cp /bin/sh /bin/kill "$r/bin/"
verify() {
	systemd-analyze verify --man=no --generators=no --root="$r" \
		/etc/systemd/system/xbb-serve.service > "$tmp/verify.txt" 2>&1
	st=$?
	[ $st = 0 ] && [ ! -s "$tmp/verify.txt" ]
}
if ! verify; then
	cat "$tmp/verify.txt" >&2
	fail "systemd-analyze verify complains about xbb-serve.service"
fi
# The check must be able to fail: a unit with a bad directive does.
cp "$r/etc/systemd/system/xbb-serve.service" "$tmp/good.service"
sed 's/^Restart=on-failure$/Restart=sometimes/' "$tmp/good.service" > "$r/etc/systemd/system/xbb-serve.service"
verify && fail "systemd-analyze verify accepted Restart=sometimes: the check proves nothing"
echo "serve-dist: ok (install-serve, scripts, systemd-analyze verify)"
