#!/usr/bin/env python3
"""Build a tiny Linux guest for QEMU from Debian's packages, without root.

    python3 contrib/guest/build_guest.py [--cache-dir DIR] [--deb linux-image-….deb]

The kernel is Debian's (the package `linux-image-amd64` depends on, fetched with
`apt-get download` and unpacked with `dpkg -x` into a temporary directory: never installed, /boot
is not touched). The initramfs (cpio newc, gzip) holds a static busybox, the few kernel modules
the guest needs (virtio-serial, the ACPI power button, evdev; Debian builds them as modules) and
an `/init` that

1. mounts /proc, /sys and /dev (devtmpfs), loads the modules in dependency order;
2. finds the virtio-serial port named `org.frameos.notify` (no udev: by its name in
   /sys/class/virtio-ports), links it as /dev/virtio-ports/org.frameos.notify and writes
   `STATUS=…` and `READY=1` to it (frameos's `notify` readiness probe reads them);
3. waits for the ACPI power button (QMP `system_powerdown`), then syncs and powers off.

The result is cached in DIR/PACKAGE_VERSION_HASH/ (`vmlinux`, `initramfs.cpio.gz`; HASH is this
script's), so a new kernel package or a new recipe builds anew, and an unchanged one is reused
(older ones are left in place: delete DIR to reclaim them). DIR defaults to
$XDG_CACHE_HOME/frameos/guest (~/.cache/frameos/guest). The paths are printed as one JSON line:
{"kernel": …, "initrd": …, "package": …, "version": …}. `vmlinux` is the kernel ELF taken out of
Debian's bzImage: QEMU boots it at its PVH entry point, which skips the decompressor.

Needs Python 3.11 (stdlib only), apt-get/apt-cache (Debian's package lists, after
`apt-get update`) and dpkg; busybox from /bin/busybox when it is the static one (package
busybox-static), else fetched the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

KERNEL_META = "linux-image-amd64"
# the guest's modules: virtio-serial (virtio_console over virtio_pci), the ACPI power button and
# its input events; their dependencies are read from each module's .modinfo
MODULES = ["virtio_pci", "virtio_console", "button", "evdev"]
NOTIFY_PORT = "org.frameos.notify"

INIT = r"""#!/bin/sh
# PID 1 of the frameos test guest (contrib/guest/build_guest.py)
export PATH=/bin
say() { echo "frameos-guest: $*"; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r module; do
  insmod "/lib/modules/$module" || say "insmod $module failed"
done < /lib/modules/load

# Without udev there is no /dev/virtio-ports/NAME: find the port by its name (it arrives a
# moment after the driver binds a virtio-serial device, if there is one), make its node if
# devtmpfs did not, and link it.
port=
tries=0
set -- /sys/bus/virtio/drivers/virtio_console/virtio*
[ -e "$1" ] || tries=200
while [ -z "$port" ] && [ "$tries" -lt 200 ]; do
  for p in /sys/class/virtio-ports/*; do
    name=
    read -r name 2>/dev/null < "$p/name"
    [ "$name" = "@NOTIFY_PORT@" ] && port=${p##*/}
  done
  [ -n "$port" ] || { sleep 0.05; tries=$((tries + 1)); }
done
notify=/dev/virtio-ports/@NOTIFY_PORT@
if [ -n "$port" ]; then
  [ -c "/dev/$port" ] || mknod "/dev/$port" c $(tr : ' ' < "/sys/class/virtio-ports/$port/dev")
  mkdir -p /dev/virtio-ports
  ln -sf "../$port" "$notify"
else
  say "no virtio-serial port named @NOTIFY_PORT@ (no notify chardev): not notifying"
fi

# Open the power button before saying READY=1: a press nobody has open is lost.
button=
for e in /sys/class/input/event*; do
  name=
  read -r name 2>/dev/null < "$e/device/name"
  [ "$name" = "Power Button" ] && button=/dev/input/${e##*/}
done
[ -n "$button" ] || { say "no ACPI power button: waiting forever"; exec sleep 2147483647; }
exec 3< "$button"

say "up (kernel $(uname -r)); waiting for the power button"
# In the background: the write blocks while the host side of the port is not connected.
[ -n "$port" ] && printf 'STATUS=guest up, kernel %s\nREADY=1\n' "$(uname -r)" > "$notify" &
dd bs=24 count=1 <&3 >/dev/null 2>&1
say "power button pressed: powering off"
[ -n "$port" ] && printf 'STOPPING=1\n' > "$notify" &
sync
poweroff -f
""".replace("@NOTIFY_PORT@", NOTIFY_PORT)


class BuildError(Exception):
    """A step of the build failed; the message says which and what to do."""


def run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise BuildError(f"{argv[0]} not found: this needs Debian's apt and dpkg") from e
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise BuildError(f"`{' '.join(argv)}` failed: {' / '.join(tail)}")
    return done.stdout


def candidate(package: str) -> tuple[str, str]:
    """(package, version) of what `apt-get download` would fetch; for the meta package, the
    kernel package it depends on (`Depends: linux-image-6.1.0-57-amd64 (= 6.1.192-3)`)."""
    show = run(["apt-cache", "show", "--no-all-versions", package])
    fields = dict(line.partition(": ")[::2] for line in show.splitlines() if ": " in line)
    if "Version" not in fields:
        raise BuildError(f"apt-cache knows no version of {package}: run `apt-get update`")
    if package != KERNEL_META:
        return package, fields["Version"]
    first = fields.get("Depends", "").split(",")[0].split()
    if not first or not first[0].startswith("linux-image-"):
        raise BuildError(f"{KERNEL_META} depends on no kernel: run `apt-get update`")
    if len(first) == 3 and first[1] == "(=":
        return first[0], first[2].rstrip(")")
    return candidate(first[0])


def download_and_unpack(package: str, version: str, into: Path) -> Path:
    """`apt-get download` the exact package and `dpkg -x` it into `into/root`."""
    run(["apt-get", "download", "-q", f"{package}={version}"], cwd=into)
    (deb,) = into.glob("*.deb")
    return unpack(deb, into / "root")


def unpack(deb: Path, root: Path) -> Path:
    run(["dpkg", "-x", str(deb), str(root)])
    return root


# --- kernel modules ------------------------------------------------------------------------------


def modinfo(image: bytes) -> dict[str, str]:
    """The `.modinfo` section of an ELF64 little-endian kernel module, as key → value."""
    if image[:4] != b"\x7fELF" or image[4] != 2 or image[5] != 1:
        raise BuildError("not an ELF64 little-endian module")
    shoff, shentsize, shnum, shstrndx = (
        struct.unpack_from("<Q", image, 0x28)[0],
        *struct.unpack_from("<HHH", image, 0x3A),
    )
    sections = [struct.unpack_from("<IIQQQQ", image, shoff + i * shentsize) for i in range(shnum)]
    names_off = sections[shstrndx][4]
    info: dict[str, str] = {}
    for name, _type, _flags, _addr, offset, size in sections:
        end = image.index(b"\0", names_off + name)
        if image[names_off + name : end] == b".modinfo":
            for item in image[offset : offset + size].split(b"\0"):
                key, sep, value = item.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, value)
    return info


def module_files(modules_dir: Path) -> dict[str, Path]:
    """Module name (dashes as underscores) → its file (.ko or .ko.xz)."""
    found: dict[str, Path] = {}
    for path in modules_dir.rglob("*.ko*"):
        stem = path.name.split(".ko")[0].replace("-", "_")
        found[stem] = path
    return found


def read_module(path: Path) -> bytes:
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())  # busybox insmod loads plain ELF only
    if path.name.endswith(".ko"):
        return path.read_bytes()
    raise BuildError(f"{path.name}: only .ko and .ko.xz modules are supported")


def builtin_modules(modules_dir: Path) -> set[str]:
    listing = modules_dir / "modules.builtin"
    lines = listing.read_text().split() if listing.exists() else []
    return {Path(line).name.split(".ko")[0].replace("-", "_") for line in lines}


def modules_in_load_order(modules_dir: Path, wanted: list[str]) -> list[tuple[str, bytes]]:
    """The wanted modules that are not built in, each after its dependencies."""
    files, builtin = module_files(modules_dir), builtin_modules(modules_dir)
    ordered: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name in builtin:
            return
        seen.add(name)
        if name not in files:
            raise BuildError(f"module {name} is neither built in nor in {modules_dir}")
        image = read_module(files[name])
        for dep in filter(None, modinfo(image).get("depends", "").split(",")):
            visit(dep.replace("-", "_"))
        ordered.append((name, image))

    for name in wanted:
        visit(name)
    return ordered


# --- the initramfs -------------------------------------------------------------------------------


class Cpio:
    """A cpio archive in the kernel's `newc` format (what an initramfs is), built in memory; no
    root needed for device nodes or owners."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.ino = 0

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self.ino += 1
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, *rdev, len(name) + 1, 0]
        self.out.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        self._padded(name.encode() + b"\0")
        self._padded(data)

    def _padded(self, data: bytes) -> None:
        self.out.write(data)
        self.out.write(b"\0" * (-self.out.tell() % 4))

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return self.out.getvalue()


def initramfs(busybox: bytes, modules: list[tuple[str, bytes]]) -> bytes:
    archive = Cpio()
    for directory in ("bin", "dev", "proc", "sys", "lib", "lib/modules"):
        archive.add(directory, 0o040755)
    archive.add("dev/console", 0o020600, rdev=(5, 1))  # init's stdio before devtmpfs is mounted
    archive.add("bin/busybox", 0o100755, busybox)
    for applet in ("sh", "mount", "insmod", "cat", "sleep", "mkdir", "ln", "mknod", "tr", "dd"):
        archive.add(f"bin/{applet}", 0o120777, b"busybox")
    for applet in ("uname", "printf", "sync", "poweroff"):
        archive.add(f"bin/{applet}", 0o120777, b"busybox")
    for name, image in modules:
        archive.add(f"lib/modules/{name}.ko", 0o100644, image)
    order = "".join(f"{name}.ko\n" for name, _ in modules)
    archive.add("lib/modules/load", 0o100644, order.encode())
    archive.add("init", 0o100755, INIT.encode())
    return gzip.compress(archive.finish(), compresslevel=6, mtime=0)


def uncompressed(bzimage: bytes) -> bytes:
    """The kernel ELF inside a bzImage (its xz or gzip payload): QEMU boots it directly through
    its PVH entry point (Debian's kernels have CONFIG_PVH), skipping the real-mode loader and
    the decompressor, which under TCG is most of the early boot. Any other payload: the
    bzImage itself (QEMU boots that too, slower)."""
    for magic, decompressor in (
        (b"\xfd7zXZ\x00", lzma.LZMADecompressor),
        (b"\x1f\x8b\x08\x00", lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)),
    ):
        at = bzimage.find(magic)
        if at < 0:
            continue
        try:
            image = decompressor().decompress(bzimage[at:])
        except (lzma.LZMAError, zlib.error):
            continue
        if image[:4] == b"\x7fELF":
            return image
    return bzimage


def is_static_elf(path: Path) -> bool:
    """An ELF64 executable without a PT_INTERP program header (no dynamic loader)."""
    image = path.read_bytes()
    if image[:4] != b"\x7fELF" or image[4] != 2:
        return False
    phoff = struct.unpack_from("<Q", image, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", image, 0x36)
    types = [struct.unpack_from("<I", image, phoff + i * phentsize)[0] for i in range(phnum)]
    return 3 not in types  # PT_INTERP


def static_busybox(work: Path) -> bytes:
    installed = Path("/bin/busybox")
    if installed.exists() and is_static_elf(installed):
        return installed.read_bytes()
    where = work / "busybox"
    where.mkdir()
    root = download_and_unpack(*candidate("busybox-static"), where)
    return (root / "bin" / "busybox").read_bytes()


# --- the cache -----------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "frameos" / "guest"


@contextlib.contextmanager
def locked(cache_dir: Path) -> Iterator[None]:
    """One build at a time per cache (two test runs starting together build once)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build(cache_dir: Path, deb: Path | None = None) -> dict[str, str]:
    """The guest of the candidate kernel package (or of `deb`), built unless cached."""
    if deb is None:
        package, version = candidate(KERNEL_META)
    else:
        fields = run(["dpkg-deb", "-f", str(deb), "Package", "Version"])
        control = dict(line.split(": ", 1) for line in fields.splitlines())
        package, version = control["Package"], control["Version"]
    # a change of this script (the init, the modules, …) builds anew too
    recipe = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    target = cache_dir / f"{package}_{version}_{recipe}"
    result = {
        "kernel": str(target / "vmlinux"),
        "initrd": str(target / "initramfs.cpio.gz"),
        "package": package,
        "version": version,
    }
    with locked(cache_dir):
        if not (target / "build.json").exists():
            with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".build-") as tmp:
                work = Path(tmp)
                assemble(work, package, version, deb)
                shutil.rmtree(target, ignore_errors=True)
                (work / "out").rename(target)
                (target / "build.json").write_text(json.dumps(result) + "\n")
    return result


def assemble(work: Path, package: str, version: str, deb: Path | None) -> None:
    """Unpack the kernel package in `work` and write `work/out/{vmlinux,initramfs.cpio.gz}`."""
    fetched = work / "kernel"
    fetched.mkdir()
    root = unpack(deb, fetched / "root") if deb else download_and_unpack(package, version, fetched)
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise BuildError(f"{package} holds {len(kernels)} kernels in /boot, expected one")
    release = kernels[0].name.removeprefix("vmlinuz-")
    modules = modules_in_load_order(root / "lib" / "modules" / release, MODULES)
    image = initramfs(static_busybox(work), modules)
    out = work / "out"
    out.mkdir()
    (out / "vmlinux").write_bytes(uncompressed(kernels[0].read_bytes()))
    (out / "initramfs.cpio.gz").write_bytes(image)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--deb", type=Path, help="a linux-image-*.deb to use instead of apt's")
    args = parser.parse_args()
    try:
        print(json.dumps(build(args.cache_dir.resolve(), args.deb)))
    except (BuildError, OSError) as e:  # OSError: a cache dir that cannot be written, a full disk
        print(f"build_guest: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
