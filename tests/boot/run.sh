#!/bin/bash
# Boot test of the edgedx Debian package under systemd on an emulated aarch64 machine.
#
#   tests/boot/run.sh [path/to/edgedx_VERSION_arm64.deb]
#   tests/boot/run.sh --build-only      only build (or find) the cached root filesystem
#
# Default package: the newest target/aarch64-unknown-linux-gnu/debian/edgedx_*_arm64.deb.
# See tests/boot/README.md for what it checks, what it needs and how long it takes.
#
# Environment:
#   EDGEDX_BOOT_CACHE    cache directory (default: <repo>/.cache/boot)
#   EDGEDX_BOOT_MIRROR   Debian mirror (default: http://deb.debian.org/debian)
#   EDGEDX_BOOT_KEEP=1   keep the run's disk images (default: only the logs are kept)
#   EDGEDX_CTL           host edgedx-ctl (default: target/release, else target/debug)
#   EDGEDX_BOOT_BASE     use this base image directory instead of the cache's (debugging)
#   EDGEDX_BOOT_BUILD_TIMEOUT, EDGEDX_BOOT_TIMEOUT, EDGEDX_BOOT_CLIENT_TIMEOUT
#                        seconds for the build boot (5400), a boot to the agent (600) and
#                        each host edgedx-ctl answer (240)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${EDGEDX_BOOT_CACHE:-$REPO/.cache/boot}
SUITE=bookworm
ARCH=arm64
MIRROR=${EDGEDX_BOOT_MIRROR:-http://deb.debian.org/debian}
# minbase + what the test VM needs: systemd as init, udev (device permissions, module
# autoloading), the kernel and its initramfs generator, procps (free, pgrep), and a static
# busybox for the build boot's hand-made initramfs (also handy on the VM's console).
PACKAGES=systemd-sysv,udev,kmod,procps,linux-image-arm64,initramfs-tools,busybox-static
# The emulated machine. TCG (software emulation) on this x86_64 host.
QEMU=(qemu-system-aarch64 -M virt -cpu cortex-a72 -m 2048 -smp 2 -nic none -display none
      -monitor none -no-user-config)
BUILD_BOOT_TIMEOUT=${EDGEDX_BOOT_BUILD_TIMEOUT:-5400}   # second stage under TCG
BOOT_TIMEOUT=${EDGEDX_BOOT_TIMEOUT:-600}                # boot to the agent
WATCHDOG_TIMEOUT_S=10                                   # guest/board.toml [watchdog]

T0=$(date +%s.%N)
# Every transcript line carries the wall time since the start of the script.
log() { printf '[%7.1fs] %s\n' "$(echo "$(date +%s.%N) - $T0" | bc)" "$*"; }
die() { log "FAIL: $*"; exit 1; }
since() { echo "$(date +%s.%N) - $1" | bc | xargs printf '%.1f'; }

for tool in debootstrap qemu-system-aarch64 mkfs.ext4 debugfs dpkg-deb python3 bc sha256sum flock; do
    command -v "$tool" >/dev/null || die "missing host tool: $tool (see tests/boot/README.md)"
done

mkdir -p "$CACHE"
exec 8>"$CACHE/lock"
flock -n 8 || die "another tests/boot/run.sh holds $CACHE/lock"

# ---------------------------------------------------------------------------------------
# The VM's base image, cached under $CACHE, keyed on everything that goes into it.

# Downloaded packages (debootstrap --make-tarball), keyed on suite, mirror and package list.
debs_key() { printf '%s\n' "$SUITE" "$ARCH" "$MIRROR" "$PACKAGES" minbase | sha256sum | cut -c1-16; }

# Base image: the packages plus the second stage and the guest files built into it.
base_key() {
    {
        debs_key
        cat "$HERE/mkcpio.py" "$HERE/guest/initramfs-init" "$HERE/guest/stage2.sh" \
            "$HERE/guest/boot-test-agent" "$HERE/guest/boot-test-agent.service"
        declare -f build_base make_initramfs
    } | sha256sum | cut -c1-16
}

# The VM's initramfs (guest/initramfs-init says why it is not initramfs-tools'): busybox
# and the modules needed to mount the virtio disk, with their dependencies (read from each
# module's .modinfo "depends="), from the Debian packages.
make_initramfs() {
    local tree=$1 out=$2 work=$3 kdir kver
    local archives=$tree/var/cache/apt/archives
    mkdir -p "$work/kernel" "$work/busybox" "$work/initramfs/bin" "$work/initramfs/modules"
    dpkg-deb -x "$(ls "$archives"/linux-image-[0-9]*-arm64_*.deb | head -1)" "$work/kernel"
    dpkg-deb -x "$(ls "$archives"/busybox-static_*.deb | head -1)" "$work/busybox"
    kver=$(ls "$work/kernel/lib/modules")
    kdir=$work/kernel/lib/modules/$kver/kernel
    cp "$work/busybox/bin/busybox" "$work/initramfs/bin/busybox"
    cp "$HERE/guest/initramfs-init" "$work/initramfs/init"
    # Load order: dependencies first. crc32c_generic: ext4 and jbd2 ask for crc32c
    # (metadata checksums) through the crypto API, which cannot modprobe here.
    local order=() seen=" "
    add_module() {
        local m=$1 f dep
        case "$seen" in *" $m "*) return ;; esac
        seen="$seen$m "
        f=$(find "$kdir" -name "$m.ko" | head -1)
        [ -n "$f" ] || die "module $m not found in the kernel package"
        for dep in $(grep -a -o 'depends=[a-z0-9_,-]*' "$f" | head -1 | cut -d= -f2 | tr , ' '); do
            add_module "$dep"
        done
        cp "$f" "$work/initramfs/modules/"
        order+=("$m")
    }
    for m in crc32c_generic virtio_mmio virtio_blk ext4; do add_module "$m"; done
    printf '%s\n' "${order[@]}" > "$work/initramfs/modules.list"
    python3 "$HERE/mkcpio.py" "$work/initramfs" "$out"
    echo "$kver" > "$work/kver"
}

build_base() {
    local dir=$1 debs=$2 t kver
    local tree=$dir.tree work=$dir.work
    rm -rf "$tree" "$work"
    mkdir -p "$work"
    if [ ! -f "$debs" ]; then
        t=$(date +%s.%N)
        log "build: downloading $SUITE $ARCH packages (debootstrap --make-tarball)"
        debootstrap --arch="$ARCH" --variant=minbase --include="$PACKAGES" \
            --make-tarball="$debs.tmp" "$SUITE" "$work/mt" "$MIRROR" >"$work/download.log" 2>&1 ||
            { tail -20 "$work/download.log"; die "debootstrap --make-tarball failed ($work/download.log)"; }
        mv "$debs.tmp" "$debs"
        log "build: download took $(since "$t") s"
    fi
    t=$(date +%s.%N)
    log "build: first stage (debootstrap --foreign --arch=$ARCH)"
    debootstrap --arch="$ARCH" --variant=minbase --include="$PACKAGES" --foreign \
        --unpack-tarball="$debs" "$SUITE" "$tree" "$MIRROR" >"$work/stage1.log" 2>&1 ||
        { tail -20 "$work/stage1.log"; die "debootstrap first stage failed ($work/stage1.log)"; }
    log "build: first stage took $(since "$t") s"
    # debootstrap makes /proc a symlink to the host's /proc when it cannot mount one in
    # the target: the VM needs a directory to mount its own.
    for d in proc sys dev; do
        if [ -L "$tree/$d" ]; then rm -f "$tree/$d"; mkdir -m 0555 "$tree/$d"; fi
    done

    make_initramfs "$tree" "$work/initrd.img" "$work"
    kver=$(cat "$work/kver")
    cp "$work/kernel/boot/vmlinuz-$kver" "$work/vmlinuz"
    grep -E '^CONFIG_(VIRTIO_BLK|VIRTIO_MMIO|VIRTIO_PCI|EXT4_FS|VIRTIO_CONSOLE|I6300ESB_WDT)=' \
        "$work/kernel/boot/config-$kver" | tr '\n' ' ' | sed 's/^/kernel config: /' > "$work/kconfig.txt"
    log "build: kernel $kver; $(cat "$work/kconfig.txt")"
    install -m 0755 "$HERE/guest/stage2.sh" "$tree/edgedx-stage2.sh"
    install -D -m 0755 "$HERE/guest/boot-test-agent" "$tree/usr/local/sbin/boot-test-agent"
    install -D -m 0644 "$HERE/guest/boot-test-agent.service" \
        "$tree/etc/systemd/system/boot-test-agent.service"

    # The disk: an ext4 image filled from the tree by mkfs (no loop mount needed).
    truncate -s 4G "$work/disk.img"
    mkfs.ext4 -q -F -L edgedx-root -d "$tree" "$work/disk.img" || die "mkfs.ext4 -d failed"
    rm -rf "$tree"

    t=$(date +%s.%N)
    log "build: second stage in the VM (console: $work/console-stage2.log; ~15-40 min)"
    timeout "$BUILD_BOOT_TIMEOUT" "${QEMU[@]}" -no-reboot \
        -kernel "$work/vmlinuz" -initrd "$work/initrd.img" \
        -append "console=ttyAMA0 panic=1 root=/dev/vda init=/edgedx-stage2.sh" \
        -drive "file=$work/disk.img,format=raw,if=none,id=root" \
        -device virtio-blk-device,drive=root \
        -serial "file:$work/console-stage2.log" >"$work/qemu-stage2.log" 2>&1 ||
        log "build: qemu exited with $? (timeout $BUILD_BOOT_TIMEOUT s)"
    grep -q '^@@STAGE2-OK' "$work/console-stage2.log" || {
        tail -30 "$work/console-stage2.log"
        die "second stage did not finish (see $work/console-stage2.log)"
    }
    log "build: second stage took $(since "$t") s"
    # The kernel the VM boots is the one installed in the image (the same file as in the
    # package above), read without mounting the image.
    debugfs -R "dump -p /boot/vmlinuz-$kver $work/vmlinuz" "$work/disk.img" 2>/dev/null
    [ -s "$work/vmlinuz" ] || die "no /boot/vmlinuz-$kver in the built image"
    mkdir -p "$dir"
    mv "$work/disk.img" "$work/vmlinuz" "$work/initrd.img" "$work/kver" "$work/kconfig.txt" \
        "$work/console-stage2.log" "$work/stage1.log" "$dir/"
    rm -rf "$work"
}

ensure_base() {
    local debs base t
    debs=$CACHE/debs-$(debs_key).tgz
    base=${EDGEDX_BOOT_BASE:-$CACHE/base-$(base_key)}
    if [ -f "$base/disk.img" ]; then
        log "cache: reusing $base ($(cat "$base/kver"))"
    else
        t=$(date +%s.%N)
        log "cache: no $base; building the $SUITE $ARCH root filesystem"
        build_base "$base" "$debs"
        log "build: root filesystem built in $(since "$t") s"
    fi
    BASE=$base
}

# ---------------------------------------------------------------------------------------
# Running the VM. The host drives it through an agent (guest/boot-test-agent) on a virtio
# serial port backed by two FIFOs here; the edgedx link is a virtio console (/dev/hvc0 in
# the guest) backed by a pseudo-terminal on the host, where the host's edgedx-ctl plays
# the UI host. The kernel console (ttyAMA0) goes to console-NAME.log.

QEMU_PID=
AIN=
AOUT=
AGENT_BUF=
PTY=

vm_alive() { [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; }

kill_vm() {
    if vm_alive; then
        kill "$QEMU_PID" 2>/dev/null || true
        for _ in $(seq 50); do vm_alive || break; sleep 0.1; done
        vm_alive && kill -9 "$QEMU_PID" 2>/dev/null || true
    fi
    [ -n "$QEMU_PID" ] && wait "$QEMU_PID" 2>/dev/null || true
    QEMU_PID=
    [ -n "$AIN" ] && exec {AIN}>&- || true
    [ -n "$AOUT" ] && exec {AOUT}<&- || true
    AIN= AOUT=
}

# start_vm NAME: boots the installed image with the test devices.
start_vm() {
    local name=$1
    rm -f "$RUN/agent.in" "$RUN/agent.out"
    mkfifo "$RUN/agent.in" "$RUN/agent.out"
    # Opened read-write so that neither side blocks on open and no EOF is seen between boots.
    exec {AIN}<>"$RUN/agent.in" {AOUT}<>"$RUN/agent.out"
    AGENT_BUF=
    # audit=1 and SYSTEMD_LOG_SECCOMP=1 (passed to PID 1's environment by the kernel):
    # systemd then loads its seccomp filters with the log flag, so a system call refused by
    # SystemCallFilter= with SystemCallErrorNumber=EPERM is logged (audit type=1326);
    # without it such refusals are silent. -action watchdog=debug: an expiring watchdog
    # prints "watchdog: timer fired" on qemu's stderr instead of resetting, so the test can
    # say when it fired (a reset would end the test with a confusing error).
    "${QEMU[@]}" \
        -kernel "$BASE/vmlinuz" -initrd "$BASE/initrd.img" \
        -append "root=LABEL=edgedx-root console=ttyAMA0 audit=1 SYSTEMD_LOG_SECCOMP=1" \
        -drive "file=$RUN/disk.img,format=raw,if=none,id=root" -device virtio-blk-device,drive=root \
        -drive "file=$RUN/data.img,format=raw,if=none,id=data,readonly=on" -device virtio-blk-device,drive=data \
        -device i6300esb -action watchdog=debug \
        -device virtio-serial-device \
        -chardev pty,id=link -device virtconsole,chardev=link,name=org.edgedx.link \
        -chardev "pipe,id=agent,path=$RUN/agent" -device virtserialport,chardev=agent,name=org.edgedx.agent \
        -serial "file:$RUN/console-$name.log" >"$RUN/qemu-$name.log" 2>&1 &
    QEMU_PID=$!
    QEMU_LOG=$RUN/qemu-$name.log
    PTY=
    for _ in $(seq 100); do
        PTY=$(sed -n 's/.*char device redirected to \(\/dev\/pts\/[0-9]*\) (label link).*/\1/p' "$QEMU_LOG")
        [ -n "$PTY" ] && break
        vm_alive || break
        sleep 0.1
    done
    [ -n "$PTY" ] || { cat "$QEMU_LOG"; die "qemu did not start ($QEMU_LOG)"; }
    log "$name boot: qemu pid $QEMU_PID, link pty $PTY, console $RUN/console-$name.log"
}

# agent_line SECONDS: next line from the agent into LINE; fails after SECONDS.
agent_line() {
    local deadline=$(( $(date +%s) + $1 )) part rc
    while :; do
        part=
        IFS= read -r -t 1 -u "$AOUT" part && rc=0 || rc=$?
        if [ "$rc" = 0 ]; then LINE=$AGENT_BUF$part; AGENT_BUF=; return 0; fi
        AGENT_BUF=$AGENT_BUF$part
        [ "$rc" -gt 128 ] || return 1
        vm_alive || return 1
        [ "$(date +%s)" -lt "$deadline" ] || return 1
    done
}

wait_agent() {
    local t; t=$(date +%s.%N)
    while agent_line "$BOOT_TIMEOUT"; do
        case "$LINE" in
        @@AGENT-READY*) BOOT_ID=${LINE#@@AGENT-READY }; log "agent ready after $(since "$t") s (boot id $BOOT_ID)"; return 0 ;;
        esac
    done
    tail -40 "$RUN/console-$1.log"
    vm_alive || die "the VM stopped before its agent started ($RUN/console-$1.log)"
    die "no agent within $BOOT_TIMEOUT s of boot ($RUN/console-$1.log)"
}

# guest [-t SECONDS] COMMAND...: runs COMMAND with bash in the VM as root; prints its output
# and returns its exit status (255: no answer in time).
guest() {
    local limit=120 id b64 rc
    if [ "$1" = -t ]; then limit=$2; shift 2; fi
    id=$(date +%s%N)
    b64=$(printf '%s' "$*" | base64 -w0)
    printf '%s %s %s\n' "$id" "$limit" "$b64" >&"$AIN"
    local inside=0
    while agent_line $((limit + 20)); do
        case "$LINE" in
        "@@BEGIN $id") inside=1 ;;
        "@@END $id "*) rc=${LINE##* }; return "$rc" ;;
        *) [ "$inside" = 1 ] && printf '%s\n' "$LINE" ;;
        esac
    done
    echo "(no answer from the VM within $((limit + 20)) s: $*)"
    return 255
}

# show COMMAND: prints COMMAND and its guest output, indented, into the transcript.
show() {
    local rc=0
    if [ "$1" = -t ]; then log "guest\$ $3"; else log "guest\$ $*"; fi
    guest "$@" | sed 's/^/        | /' || rc=${PIPESTATUS[0]}
    return "$rc"
}

wait_vm_exit() {
    for _ in $(seq $(( $1 * 10 ))); do vm_alive || { wait "$QEMU_PID" 2>/dev/null || true; QEMU_PID=; return 0; }; sleep 0.1; done
    return 1
}

poweroff_vm() {
    guest 'systemctl --no-block poweroff' >/dev/null || true
    wait_vm_exit 180 || { log "the VM did not power off within 180 s; killing it"; kill_vm; }
    kill_vm
}

# ---------------------------------------------------------------------------------------

ensure_base
[ "${1:-}" = "--build-only" ] && exit 0

DEB=${1:-$(ls -t "$REPO"/target/aarch64-unknown-linux-gnu/debian/edgedx_*_arm64.deb 2>/dev/null | head -1 || true)}
[ -n "$DEB" ] && [ -f "$DEB" ] ||
    die "no package: give its path, or build target/aarch64-unknown-linux-gnu/debian/edgedx_*_arm64.deb"
DEB=$(cd "$(dirname "$DEB")" && pwd)/$(basename "$DEB")
CTL=${EDGEDX_CTL:-}
if [ -z "$CTL" ]; then
    for c in "$REPO/target/release/edgedx-ctl" "$REPO/target/debug/edgedx-ctl"; do
        [ -x "$c" ] && { CTL=$c; break; }
    done
fi
[ -n "$CTL" ] && [ -x "$CTL" ] || die "no host edgedx-ctl: cargo build -p edgedx-ctl (or set EDGEDX_CTL)"
CLIENT_TIMEOUT=${EDGEDX_BOOT_CLIENT_TIMEOUT:-240}
SAMPLES=$REPO/models/brain-mri-4class/samples
UPLOAD=$SAMPLES/glioma-01.png        # check 2: host upload over the serial link
SPOOLED=$SAMPLES/pituitary-02.dcm    # check 3: spool drop in the VM, unacknowledged

RUN=$CACHE/runs/$(date +%Y%m%d-%H%M%S)
mkdir -p "$RUN"
trap 'kill_vm' EXIT
trap 'log "interrupted"; exit 130' INT TERM
log "package $DEB ($(stat -c %s "$DEB") bytes); host client $CTL; run directory $RUN"

# The VM's disk: a copy of the cached base image. The package and the guest files go in
# on a second, read-only disk made from a directory by mkfs.ext4 -d.
t=$(date +%s.%N)
cp --sparse=always "$BASE/disk.img" "$RUN/disk.img"
mkdir -p "$RUN/data/samples"
cp "$DEB" "$HERE/guest/install.sh" "$HERE/guest/board.toml" "$HERE/guest/edgedx-boot-test.conf" \
    "$HERE/guest/99-edgedx-boot-test.rules" "$RUN/data/"
cp "$UPLOAD" "$SPOOLED" "$RUN/data/samples/"
truncate -s $(( $(du -sm "$RUN/data" | cut -f1) + 32 ))M "$RUN/data.img"
mkfs.ext4 -q -F -L boot-test -d "$RUN/data" "$RUN/data.img"
rm -rf "$RUN/data"
log "disks ready in $(since "$t") s"

# Boot 1: install the package as on a board, plus the guest-only changes; power off.
T_INSTALL=$(date +%s.%N)
start_vm install
wait_agent install
show -t 900 'mkdir -p /mnt/boot-test && mount -o ro LABEL=boot-test /mnt/boot-test && bash /mnt/boot-test/install.sh /mnt/boot-test' ||
    die "installing the package in the VM failed (output above)"
poweroff_vm
log "install boot done in $(since "$T_INSTALL") s"

# Boot 2: edgedx starts at boot; the checks.
T_TEST=$(date +%s.%N)
start_vm test
wait_agent test
T_BOOTED=$(date +%s.%N)

RESULTS=()
FAILED=0
# check NAME FUNCTION: runs one check, records PASS/FAIL with its wall time.
check() {
    local name=$1 t rc=0
    shift
    t=$(date +%s.%N)
    log "---- check $name"
    CHECK_FAILED=0
    "$@" || rc=$?
    if [ "$rc" = 0 ] && [ "$CHECK_FAILED" = 0 ]; then
        RESULTS+=("PASS  $name ($(since "$t") s)")
        log "PASS: check $name in $(since "$t") s"
    else
        RESULTS+=("FAIL  $name ($(since "$t") s)")
        log "FAIL: check $name (see above)"
        FAILED=1
    fi
}
# fail MESSAGE: marks the running check failed (it goes on, to print what it can).
fail() { log "  failed: $*"; CHECK_FAILED=1; return 1; }

# unit_state: ActiveState SubState NRestarts MainPID Result of edgedx, space-separated.
unit_state() {
    guest 'systemctl show -p ActiveState,SubState,NRestarts,MainPID,Result edgedx |
        sort | cut -d= -f2 | tr "\n" " "' | tr -s ' '
}
# (sorted: ActiveState MainPID NRestarts Result SubState)

# wait_running SECONDS [MIN_RESTARTS]: until edgedx is active (running) with at least
# MIN_RESTARTS restarts, or it failed.
wait_running() {
    local deadline=$(( $(date +%s) + $1 )) min=${2:-0} s
    while :; do
        s=$(unit_state)
        read -r ACTIVE MAINPID NRESTARTS RESULT SUB <<<"$s"
        if [ "$ACTIVE" = active ] && [ "$SUB" = running ] && [ "${NRESTARTS:-0}" -ge "$min" ]; then
            return 0
        fi
        [ "$ACTIVE" = failed ] && return 1
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 2
    done
}

# How many times the watchdog expired so far (qemu's log of this run).
watchdog_fires() { grep -c 'watchdog: timer fired' "$QEMU_LOG" || true; }

check_boot() {
    local ok=0
    wait_running 300 || ok=1
    show 'systemctl show -p Type,NotifyAccess,ActiveState,SubState,NRestarts,Result,MainPID,ExecMainStartTimestamp edgedx'
    show 'systemctl status edgedx --no-pager -n 0 | head -12'
    show 'journalctl -b -o short-monotonic --no-pager -u edgedx | head -40'
    # systemd logs "Started ..." for a Type=notify unit only when READY=1 arrived.
    show 'journalctl -b -o short-monotonic --no-pager _PID=1 | grep -E "(Starting|Started|Failed).*edgedx"' || true
    show 'ls -l /dev/hvc0 /dev/watchdog0; grep -E "hvc|watchdog" /proc/devices; lsmod | grep -E "^(i6300esb|virtio_console) "'
    show 'cd /sys/class/watchdog/watchdog0 && for f in identity state timeout; do echo "$f: $(cat $f)"; done'
    [ "$ok" = 0 ] || fail "edgedx is not active (running) 300 s after the agent came up: $ACTIVE/$SUB"
    [ "$NRESTARTS" = 0 ] || fail "edgedx restarted $NRESTARTS time(s) during boot (its log above says why)"
    guest 'journalctl -b --no-pager _PID=1 | grep -q "Started edgedx"' || fail "no 'Started edgedx' line from systemd (READY=1)"
    [ "$(guest 'cat /sys/class/watchdog/watchdog0/state')" = active ] ||
        fail "the hardware watchdog is not active while edgedx runs"
    EDGEDX_UP=1
}

check_classify() {
    local out rc=0 t
    t=$(date +%s.%N)
    log "host\$ $CTL --serial $PTY --timeout $CLIENT_TIMEOUT classify $UPLOAD"
    out=$(timeout $((CLIENT_TIMEOUT + 30)) "$CTL" --serial "$PTY" --timeout "$CLIENT_TIMEOUT" classify "$UPLOAD" 2>&1) || rc=$?
    printf '%s\n' "$out" | sed 's/^/        | /'
    log "  host classify: exit $rc in $(since "$t") s"
    [ "$rc" = 0 ] || fail "host edgedx-ctl classify over $PTY exited with $rc"
    grep -q ": glioma (" <<<"$out" || fail "expected label glioma for $(basename "$UPLOAD")"
}

check_memory() {
    show 'free -m'
    show 'systemctl show -p MemoryCurrent,MemoryMax,MemorySwapMax,TasksCurrent edgedx'
    show 'main=$(systemctl show -p MainPID --value edgedx)
for p in $main $(pgrep -P "$main"); do
    echo "pid $p ($(tr "\0" " " </proc/$p/cmdline | cut -c1-100)):"
    grep -E "^(VmHWM|VmRSS|RssAnon|RssFile)" /proc/$p/status | sed "s/^/    /"
done'
}

# unacked: the outbox's unacknowledged results, from the guest's status over the socket.
unacked() {
    guest 'edgedx-ctl --socket /run/edgedx/edgedx.sock --json status 2>/dev/null' |
        grep -o '"outbox_unacked":[0-9]*' | cut -d: -f2
}

spool_dir() {
    guest 'sed -n "/^\[spool\]/,/^\[/s/^dir *= *\"\(.*\)\".*/\1/p" /etc/edgedx/edgedx.toml'
}

check_kill9() {
    local spool out rc=0 id1 id2 old_pid old_n t n
    spool=$(spool_dir)
    [ -n "$spool" ] || { fail "no [spool] dir in /etc/edgedx/edgedx.toml"; return 1; }
    # Results still unacknowledged (e.g. check 2's, had its Ack been lost) would be replayed
    # first: note and acknowledge them, so that the next result seen is the spooled one.
    n=$(unacked)
    if [ "${n:-0}" -gt 0 ]; then
        log "  note: $n result(s) unacknowledged before the spool drop; the host acknowledges them first"
        timeout $((CLIENT_TIMEOUT + 30)) "$CTL" --serial "$PTY" --timeout "$CLIENT_TIMEOUT" watch --count "$n" 2>&1 | sed 's/^/        | /'
    fi
    read -r ACTIVE old_pid old_n RESULT SUB <<<"$(unit_state)"
    show "install -m 0644 /var/lib/boot-test/$(basename "$SPOOLED") $spool/ && ls -l $spool"
    log "host\$ $CTL --serial $PTY --json watch --no-ack --count 1"
    out=$(timeout $((CLIENT_TIMEOUT + 30)) "$CTL" --serial "$PTY" --timeout "$CLIENT_TIMEOUT" --json watch --no-ack --count 1 2>&1) || rc=$?
    printf '%s\n' "$out" | sed 's/^/        | /'
    [ "$rc" = 0 ] || { fail "host watch --no-ack exited with $rc"; return 1; }
    id1=$(grep -o '"result_id":[0-9]*' <<<"$out" | head -1 | cut -d: -f2)
    grep -q "\"spool\":\"$(basename "$SPOOLED")\"" <<<"$out" || fail "the result is not the spooled file's"
    n=$(unacked)
    log "  outbox: ${n:-?} unacknowledged result(s) before kill -9"
    [ "${n:-0}" -ge 1 ] || fail "the spooled result is not in the outbox as unacknowledged"
    t=$(date +%s.%N)
    show "date +%s.%N > /run/boot-test-kill; kill -9 $old_pid; echo killed $old_pid"
    if wait_running 180 $((old_n + 1)); then
        log "  edgedx restarted in $(since "$t") s: pid $old_pid -> $MAINPID, NRestarts $old_n -> $NRESTARTS"
    else
        fail "edgedx is not running again 180 s after kill -9: $ACTIVE/$SUB, NRestarts $NRESTARTS"
    fi
    show 'journalctl --no-pager -o short-monotonic --since @$(cat /run/boot-test-kill) | grep -E "edgedx|watchdog" | head -30'
    rc=0
    log "host\$ $CTL --serial $PTY --json watch --count 1"
    out=$(timeout $((CLIENT_TIMEOUT + 30)) "$CTL" --serial "$PTY" --timeout "$CLIENT_TIMEOUT" --json watch --count 1 2>&1) || rc=$?
    printf '%s\n' "$out" | sed 's/^/        | /'
    [ "$rc" = 0 ] || fail "host watch after the restart exited with $rc"
    id2=$(grep -o '"result_id":[0-9]*' <<<"$out" | head -1 | cut -d: -f2)
    [ -n "$id1" ] && [ "$id1" = "$id2" ] || fail "result $id1 was not delivered again after kill -9 (got ${id2:-none})"
    log "  outbox: $(unacked) unacknowledged result(s) after the host's ack"
    show "ls -lR $spool"
    [ "$(watchdog_fires)" = 0 ] || fail "the watchdog expired while edgedx was restarted after kill -9 (qemu: $(watchdog_fires) time(s)): a board would have reset"
}

check_stop() {
    local out rc boot wait_s fires
    wait_s=$((2 * WATCHDOG_TIMEOUT_S + 20))
    fires=$(watchdog_fires)
    show 'date +%s.%N > /run/boot-test-stop; journalctl -k -b --no-pager | grep -c "did not stop" > /run/boot-test-nostop || true'
    out=$(guest 'systemctl stop edgedx; echo "systemctl stop: exit $?"')
    printf '%s\n' "$out" | sed 's/^/        | /'
    grep -q 'systemctl stop: exit 0' <<<"$out" || fail "systemctl stop edgedx failed"
    read -r ACTIVE MAINPID NRESTARTS RESULT SUB <<<"$(unit_state)"
    log "  after stop: $ACTIVE/$SUB, result $RESULT"
    [ "$ACTIVE/$SUB/$RESULT" = inactive/dead/success ] || fail "expected inactive/dead/success after stop"
    show 'journalctl --no-pager -o short-monotonic --since @$(cat /run/boot-test-stop) | grep -v boot-test-agent | tail -25'
    show 'echo "watchdog0 state: $(cat /sys/class/watchdog/watchdog0/state)"'
    [ "$(guest 'cat /sys/class/watchdog/watchdog0/state')" = inactive ] || fail "watchdog0 is still active after the stop"
    guest 'journalctl -b --no-pager -u edgedx --since @$(cat /run/boot-test-stop) | grep -qi disarm' ||
        log "  note: edgedx logged no line about disarming the watchdog"
    [ "$(guest 'journalctl -k -b --no-pager | grep -c "did not stop"')" = "$(guest 'cat /run/boot-test-nostop')" ] ||
        fail "the kernel says the watchdog did not stop"
    log "  waiting $wait_s s (2 x $WATCHDOG_TIMEOUT_S s watchdog stages + margin) for a reset that must not come"
    sleep "$wait_s"
    vm_alive || fail "the VM exited"
    [ "$(watchdog_fires)" = "$fires" ] || fail "the watchdog fired after the stop"
    boot=$(guest 'cat /proc/sys/kernel/random/boot_id; cat /proc/uptime')
    log "  guest boot id and uptime: $(tr '\n' ' ' <<<"$boot")"
    [ "$(head -1 <<<"$boot")" = "$BOOT_ID" ] || fail "the VM rebooted"
}

check_seccomp() {
    local denied audit='type=1326|audit\[[0-9]+\]: SECCOMP'
    # The canary makes the check able to fail: a mount(2) refused by the same filter must
    # be logged, or the logging this check relies on does not work.
    show 'mkdir -p /run/systemd/system && printf "%s\n" "[Service]" Type=oneshot \
    SystemCallFilter=@system-service SystemCallErrorNumber=EPERM \
    "ExecStart=-/bin/mount -t tmpfs boot-test-canary /mnt" > /run/systemd/system/boot-test-canary.service
systemctl daemon-reload && systemctl start boot-test-canary && sleep 1
journalctl -b --no-pager -u boot-test-canary | tail -3
journalctl -b --no-pager | grep -E "'"$audit"'" | tail -3'
    guest 'journalctl -b --no-pager | grep -E "'"$audit"'" | grep -q "comm=\"mount\""' ||
        fail "the canary's refused mount(2) was not logged: seccomp logging does not work, the check cannot see denials"
    show 'journalctl -b --no-pager | grep -E "'"$audit"'" | grep -v "comm=\"mount\"" || echo "(no other seccomp denials in this boot)"'
    denied=$(guest 'journalctl -b --no-pager | grep -E "'"$audit"'" | grep -cE "exe=\"/usr/bin/edgedx\"|comm=\"edgedx"')
    [ "$denied" = 0 ] || fail "$denied system call(s) of edgedx refused by SystemCallFilter (audit lines above)"
    show 'journalctl -b --no-pager -u edgedx | grep -iE "operation not permitted|EPERM|os error 1\)" || echo "(no EPERM errors in the edgedx log)"'
    if guest 'journalctl -b --no-pager -u edgedx | grep -qiE "operation not permitted|EPERM|os error 1\)"'; then
        fail "edgedx logged EPERM errors"
    fi
}

EDGEDX_UP=0
check "1 boot: active (running) through READY=1" check_boot
if [ "$EDGEDX_UP" = 1 ]; then
    check "2 host classify over the virtio console" check_classify
    check "6 memory after the sample" check_memory
    check "3 unacknowledged result survives kill -9" check_kill9
fi
check "4 stop: clean, watchdog disarmed, no reset" check_stop
check "5 no system call denied by the seccomp filter" check_seccomp
T_CHECKS_END=$(date +%s.%N)
poweroff_vm

log "summary ($(basename "$DEB")):"
for r in "${RESULTS[@]}"; do log "  $r"; done
log "  times: install boot $(echo "$T_TEST - $T_INSTALL" | bc | xargs printf '%.1f') s, test boot to agent $(echo "$T_BOOTED - $T_TEST" | bc | xargs printf '%.1f') s, checks $(echo "$T_CHECKS_END - $T_BOOTED" | bc | xargs printf '%.1f') s, total $(since "$T0") s"
[ "${EDGEDX_BOOT_KEEP:-0}" = 1 ] || rm -f "$RUN/disk.img" "$RUN/data.img"
ls -1dt "$CACHE"/runs/*/ | tail -n +6 | xargs -r rm -rf
[ "$FAILED" = 0 ] || die "boot test failed; logs in $RUN"
log "boot test passed; logs in $RUN"
