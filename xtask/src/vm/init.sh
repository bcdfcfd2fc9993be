#!/bin/sh
# The guest's /init: mounts what netprof needs, runs the in-guest runner (`xtask vm-guest`),
# sends /results to the host over the second serial port and powers off. Any failure here
# still powers off (or panics, which reboots, which ends qemu): the host waits for nothing.
#
# Real tools are called by their full path: busybox's shell runs its own `ip`, `ping`,
# `sysctl` and `tc` applets ahead of PATH.
export PATH=/usr/sbin:/usr/bin:/busybox/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount --make-rshared / 2>/dev/null
# The kernel asks this program to load modules on demand (iptables extensions, qdiscs).
echo /usr/sbin/modprobe > /proc/sys/kernel/modprobe

/usr/bin/xtask vm-guest --out /results
echo $? > /results/runner-exit

cd /results && tar czf /tmp/results.tgz .
sum=$(sha256sum /tmp/results.tgz)
stty -F /dev/ttyS1 raw -echo
{
    echo "NETPROF-RESULTS-BEGIN ${sum%% *}"
    base64 /tmp/results.tgz
    echo "NETPROF-RESULTS-END"
} > /dev/ttyS1
sync
poweroff -f
