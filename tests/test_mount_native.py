"""The mount's native read callback (native/src/mountread.rs), called the way libfuse calls it (through its
address, with a real ``struct fuse_file_info``): reads inside a handle's window are copied out of it, every
other read goes to the handle's fallback callback, an unknown handle is EBADF."""

from __future__ import annotations

import ctypes
import errno
import itertools

import pytest

from dstore import _native

mfusepy = pytest.importorskip("mfusepy", reason="mfusepy is not installed (pip install 'dstore[fuse]')")

READ = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64, ctypes.c_void_p
)
_HANDLES = itertools.count(1 << 40)  # far from the handles a mount in this process would use


@pytest.fixture
def native_read():
    """(read(fh, size, offset) -> (result, bytes), the fallback's calls) for one fresh file handle."""
    calls: list[tuple[int, int]] = []

    def fallback(path, buf, size, offset, fi):
        calls.append((size, offset))
        ctypes.memset(buf, ord("f"), size)
        return size

    fallback_fn = READ(fallback)  # kept alive for the test
    address = ctypes.cast(fallback_fn, ctypes.c_void_p).value
    native = READ(_native.mount_read_callback(mfusepy.fuse_file_info.fh.offset))
    fh = next(_HANDLES)

    def read(size: int, offset: int, handle: int = fh) -> tuple[int, bytes]:
        fi = mfusepy.fuse_file_info()
        fi.fh = handle
        buf = ctypes.create_string_buffer(size)
        got = native(None, ctypes.addressof(buf), size, offset, ctypes.addressof(fi))
        return got, buf.raw[: max(got, 0)]

    yield fh, address, read, calls
    _native.mount_window_drop(fh)
    del fallback_fn


def test_reads_inside_the_window_are_copied_out_of_it(native_read):
    fh, fallback, read, calls = native_read
    window = bytearray(bytes(range(256)) * 64)  # 16 KiB of the file from offset 1000 on
    _native.mount_window_set(fh, fallback, memoryview(window), 1000)
    assert read(100, 1000) == (100, bytes(window[:100]))
    assert read(4096, 1000 + 5000) == (4096, bytes(window[5000:9096]))
    assert read(16, 1000 + len(window) - 16) == (16, bytes(window[-16:]))
    assert not calls


def test_other_reads_go_to_the_fallback(native_read):
    fh, fallback, read, calls = native_read
    _native.mount_window_set(fh, fallback, None, 0)  # opened: no window yet
    assert read(10, 0) == (10, b"f" * 10)
    window = bytearray(b"w" * 4096)
    _native.mount_window_set(fh, fallback, window, 4096)
    for size, offset in [(10, 4000), (100, 4096 + 4000), (10, 8192), (0, 5000)]:
        assert read(size, offset) == (size, b"f" * size)
    assert calls == [(10, 0), (10, 4000), (100, 8096), (10, 8192), (0, 5000)]
    _native.mount_window_set(fh, fallback, None, 0)  # the window dropped: its bytes are not served any more
    assert read(10, 4096) == (10, b"f" * 10)


def test_a_new_window_replaces_the_old_one(native_read):
    fh, fallback, read, calls = native_read
    first, second = bytearray(b"a" * 1024), bytearray(b"b" * 1024)
    _native.mount_window_set(fh, fallback, first, 0)
    _native.mount_window_set(fh, fallback, second, 1024)
    first[:] = b"x" * 1024  # no longer exported: it may be written (the helper reads the next window into it)
    assert read(1024, 1024) == (1024, b"b" * 1024)
    assert read(10, 0) == (10, b"f" * 10)
    with pytest.raises(BufferError):
        second.extend(b"more")  # the window's buffer stays put while it is served from


def test_an_unknown_handle_is_ebadf(native_read):
    _, _, read, calls = native_read
    assert read(10, 0, handle=next(_HANDLES))[0] == -errno.EBADF
    assert not calls
    with pytest.raises(ValueError):
        _native.mount_window_set(next(_HANDLES), 0, None, 0)
