#!/usr/bin/env python3
"""agent_initrd.py OUT AGENT: writes an initramfs (newc cpio, uncompressed) whose /init is the
`ember run` guest agent, plus the directories it mounts on and /dev/console (so PID 1 starts with
the console as stdin/stdout/stderr). Written directly in the newc format (the kernel's
Documentation/driver-api/early-userspace/buffer-format.rst), so no root, mknod or cpio tool is
needed. Boot it with `ember.root=/dev/vdX` to run commands from an ext4 image."""
import os
import sys


def entry(name, mode, data=b"", rdev=(0, 0), ino=[100]):
    ino[0] += 1
    name_b = name.encode() + b"\0"
    fields = [ino[0], mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0]
    hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = hdr + name_b
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def main():
    out, agent = sys.argv[1], sys.argv[2]
    with open(agent, "rb") as f:
        prog = f.read()
    parts = [entry(d, 0o040755) for d in ("dev", "proc", "sys", "tmp", "run", "newroot")]
    parts.append(entry("dev/console", 0o020600, rdev=(5, 1)))
    parts.append(entry("init", 0o100755, prog))
    parts.append(entry("TRAILER!!!", 0))
    with open(out, "wb") as f:
        f.write(b"".join(parts))


if __name__ == "__main__":
    main()
