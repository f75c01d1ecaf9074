#!/usr/bin/python3
"""A test file system that loses what was not synced, like LazyFS.

    lazyfs.py BACKING MOUNTPOINT

Mounts BACKING at MOUNTPOINT (FUSE, in the foreground). Every write (and truncate) is
kept in this process's memory, per file, until that file is fsynced or fdatasynced;
only then is it written to BACKING and fsynced there. Killing this process (SIGKILL)
is a power cut: everything not yet synced is gone, exactly what a disk's volatile
cache would lose. Unmount (`umount -l MOUNTPOINT`) and mount again to "reboot".

Metadata operations (create, rename, unlink, mkdir, chmod) go straight to BACKING:
this models lost *data*, not lost directory entries (no file system model here can
drop a rename; the syscall-order test checks the directory fsyncs instead). Only
per-file fsync/fdatasync make data survive here (FUSE never receives syncfs(2)).

Flush errors, for the tests of what a failing disk gets: while a file named
`.fail-spool-flush`, `.fail-wal-flush` or `.fail-dir-flush` exists in BACKING, an
fsync/fdatasync of a `*.spool` file, of a `*-wal` file, or of any directory answers EIO
(and makes nothing durable), as a disk whose writeback failed would.

Needs Debian's python3-fusepy (scripts/test installs it).
"""

import errno
import os
import sys

try:  # Debian's python3-fusepy names the module fusepy; PyPI's fusepy names it fuse.
    from fusepy import FUSE, FuseOSError, Operations
except ImportError:
    from fuse import FUSE, FuseOSError, Operations


class Pending:
    """Writes to one file (by inode) not yet synced, in order."""

    def __init__(self, base_size):
        self.ops = []  # ('w', offset, bytes) | ('t', size)
        self.size = base_size

    def write(self, off, data):
        self.ops.append(("w", off, bytes(data)))
        self.size = max(self.size, off + len(data))

    def truncate(self, size):
        self.ops.append(("t", size))
        self.size = size

    def overlay(self, buf, off):
        """Apply the pending ops to `buf`, the backing bytes from `off`."""
        for op in self.ops:
            if op[0] == "t":
                cut = op[1] - off
                if cut < len(buf):
                    for i in range(max(cut, 0), len(buf)):
                        buf[i] = 0
            else:
                _, woff, data = op
                start = max(woff, off)
                end = min(woff + len(data), off + len(buf))
                if start < end:
                    buf[start - off:end - off] = data[start - woff:end - woff]
        return buf


class LazyFS(Operations):
    def __init__(self, root):
        self.root = os.path.realpath(root)
        self.pending = {}  # inode -> Pending

    def _full(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def _ino(self, path):
        return os.lstat(self._full(path)).st_ino

    def _pending(self, path, create=True):
        full = self._full(path)
        st = os.lstat(full)
        p = self.pending.get(st.st_ino)
        if p is None and create:
            p = self.pending[st.st_ino] = Pending(st.st_size)
        return p

    # --- metadata: straight through -------------------------------------------------
    def access(self, path, mode):
        if not os.access(self._full(path), mode):
            raise FuseOSError(errno.EACCES)

    def chmod(self, path, mode):
        return os.chmod(self._full(path), mode)

    def chown(self, path, uid, gid):
        return os.chown(self._full(path), uid, gid)

    def getattr(self, path, fh=None):
        try:
            st = os.lstat(self._full(path))
        except OSError as e:
            raise FuseOSError(e.errno)
        attrs = {k: getattr(st, k) for k in (
            "st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink",
            "st_size", "st_uid", "st_ino")}
        p = self.pending.get(st.st_ino)
        if p is not None:
            attrs["st_size"] = p.size
        return attrs

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._full(path))

    def mkdir(self, path, mode):
        return os.mkdir(self._full(path), mode)

    def rmdir(self, path):
        return os.rmdir(self._full(path))

    def unlink(self, path):
        try:
            ino = self._ino(path)
            st = os.lstat(self._full(path))
            if st.st_nlink <= 1:
                self.pending.pop(ino, None)
        except OSError:
            pass
        return os.unlink(self._full(path))

    def rename(self, old, new):
        try:
            gone = os.lstat(self._full(new))
            if gone.st_nlink <= 1:
                self.pending.pop(gone.st_ino, None)
        except OSError:
            pass
        return os.rename(self._full(old), self._full(new))

    def link(self, target, name):
        return os.link(self._full(name), self._full(target))

    def utimens(self, path, times=None):
        return os.utime(self._full(path), times)

    def statfs(self, path):
        st = os.statvfs(self._full(path))
        return {k: getattr(st, k) for k in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
            "f_files", "f_flag", "f_frsize", "f_namemax")}

    # --- data: cached until fsync ------------------------------------------------------
    def open(self, path, flags):
        fd = os.open(self._full(path), flags & ~(os.O_TRUNC | os.O_APPEND | os.O_CREAT | os.O_EXCL))
        if flags & os.O_TRUNC:
            self._pending(path).truncate(0)
        return fd

    def create(self, path, mode, fi=None):
        return os.open(self._full(path), os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)

    def read(self, path, length, offset, fh):
        st = os.fstat(fh)
        p = self.pending.get(st.st_ino)
        size = p.size if p is not None else st.st_size
        length = max(0, min(length, size - offset))
        buf = bytearray(length)
        base = os.pread(fh, length, offset)
        buf[:len(base)] = base
        if p is not None:
            p.overlay(buf, offset)
        return bytes(buf)

    def write(self, path, data, offset, fh):
        st = os.fstat(fh)
        p = self.pending.get(st.st_ino)
        if p is None:
            p = self.pending[st.st_ino] = Pending(st.st_size)
        p.write(offset, data)
        return len(data)

    def truncate(self, path, length, fh=None):
        self._pending(path).truncate(length)

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        return os.close(fh)

    def _fails(self, what):
        return os.path.exists(os.path.join(self.root, ".fail-" + what))

    def fsync(self, path, datasync, fh):
        if (path.endswith(".spool") and self._fails("spool-flush")) or (
                path.endswith("-wal") and self._fails("wal-flush")):
            raise FuseOSError(errno.EIO)
        st = os.fstat(fh)
        p = self.pending.pop(st.st_ino, None)
        # The handle may be read-only: write through one of our own.
        fd = os.open("/proc/self/fd/%d" % fh, os.O_WRONLY)
        try:
            if p is not None:
                for op in p.ops:
                    if op[0] == "t":
                        os.ftruncate(fd, op[1])
                    else:
                        os.pwrite(fd, op[2], op[1])
            if datasync:
                os.fdatasync(fd)
            else:
                os.fsync(fd)
        finally:
            os.close(fd)
        return 0

    def fsyncdir(self, path, datasync, fh):
        if self._fails("dir-flush"):
            raise FuseOSError(errno.EIO)
        return 0


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: lazyfs.py BACKING MOUNTPOINT")
    FUSE(LazyFS(sys.argv[1]), sys.argv[2], foreground=True, nothreads=True,
         allow_other=True, big_writes=True, default_permissions=True)


if __name__ == "__main__":
    main()
