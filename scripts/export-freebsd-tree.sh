#!/bin/sh
# Export sys/ and share/mk/ of a FreeBSD source tree kept as a bare git
# directory into a plain directory, file by file, so that a kernel module can
# be built against it with bmake.  Blobs missing from a partial clone are
# skipped and counted.  Nothing exported here belongs in the repository.
#
# usage: scripts/export-freebsd-tree.sh GIT_DIR DEST [REV]
set -eu

usage() {
	echo "usage: $0 GIT_DIR DEST [REV]" >&2
	exit 2
}

[ $# -ge 2 ] || usage
gitdir=$1
dest=$2
rev=${3:-HEAD}

git --git-dir="$gitdir" rev-parse --verify -q "$rev^{commit}" >/dev/null ||
    { echo "$0: $gitdir has no commit $rev" >&2; exit 1; }

mkdir -p "$dest"
# One git process lists the files; one cat-file --batch process reads them,
# which is far faster than a process per blob.
git --git-dir="$gitdir" ls-tree -r --full-tree "$rev" -- sys share/mk |
    awk -v dest="$dest" '
	BEGIN { FS = "\t" }
	{
		split($1, m, " ")
		if (m[2] != "blob")
			next
		print m[3] "\t" m[1] "\t" $2
	}' > "$dest/.export-list"

# Feed object ids to cat-file --batch and write each to its path.  A missing
# object answers "<id> missing"; skip it.
python3 - "$gitdir" "$dest" <<'PY'
import os, subprocess, sys
gitdir, dest = sys.argv[1], sys.argv[2]
entries = []
with open(os.path.join(dest, ".export-list")) as f:
    for line in f:
        oid, mode, path = line.rstrip("\n").split("\t", 2)
        entries.append((oid, mode, path))
proc = subprocess.Popen(["git", "--git-dir=" + gitdir, "cat-file", "--batch"],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
written = missing = 0
for oid, mode, path in entries:
    proc.stdin.write((oid + "\n").encode())
    proc.stdin.flush()
    header = proc.stdout.readline().decode().split()
    if len(header) < 2 or header[1] == "missing":
        missing += 1
        continue
    size = int(header[2])
    data = proc.stdout.read(size)
    proc.stdout.read(1)
    out = os.path.join(dest, path)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if mode == "120000":
        if os.path.lexists(out):
            os.unlink(out)
        os.symlink(data.decode(), out)
    else:
        with open(out, "wb") as g:
            g.write(data)
        if mode == "100755":
            os.chmod(out, 0o755)
    written += 1
proc.stdin.close()
proc.wait()
print("exported %d files, %d missing blobs skipped" % (written, missing))
PY
rm -f "$dest/.export-list"
