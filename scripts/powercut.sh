#!/usr/bin/env bash
# The real-kernel power-loss test (root only; not part of CI): an ext4 file system on a loop
# device; a writer (examples/powercut.rs) appends to a store on it from two threads and logs
# every acknowledged append to another disk; after a random moment the file system is cut with
# the EXT4_IOC_SHUTDOWN ioctl (flag NOLOGFLUSH: what the journal had not written is lost, as in
# a power cut), the writer is killed, the file system is remounted (journal replay) and the
# store is checked: every acknowledged event at its stream and version, `verify` clean. The
# same store goes through every round. ROUNDS (default 20) rounds.
set -euo pipefail
ROUNDS=${ROUNDS:-20}
cd "$(dirname "$0")/.."
cargo build --quiet --release --example powercut
BIN=$PWD/target/release/examples/powercut
WORK=$(mktemp -d)
IMG=$WORK/fs.img
MNT=$WORK/mnt
mkdir -p "$MNT"
truncate -s 8G "$IMG"
mkfs.ext4 -q -F "$IMG"
LOOP=$(losetup --find --show "$IMG")
cleanup() {
    umount "$MNT" 2>/dev/null || true
    losetup -d "$LOOP" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
for round in $(seq 1 "$ROUNDS"); do
    mount "$LOOP" "$MNT"
    "$BIN" write "$MNT" >>"$WORK/acks" 2>>"$WORK/writer.err" &
    PID=$!
    sleep "$(python3 -c 'import random; print(round(random.uniform(0.2, 1.2), 3))')"
    python3 - "$MNT" <<'PY'
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
# EXT4_IOC_SHUTDOWN = _IOR('X', 125, __u32); EXT4_GOING_FLAGS_NOLOGFLUSH = 2
fcntl.ioctl(fd, 0x8004587D, struct.pack("I", 2))
os.close(fd)
PY
    kill -9 "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    umount "$MNT"
    mount "$LOOP" "$MNT"
    echo -n "round $round: "
    if ! "$BIN" check "$MNT" "$WORK/acks"; then
        echo "round $round FAILED; writer said:"
        tail -5 "$WORK/writer.err"
        exit 1
    fi
    umount "$MNT"
done
echo "$ROUNDS power cuts, $(grep -c '^ack' "$WORK/acks") acknowledged appends, all present"
