//! The read callback of `dstore mount` (libfuse's high-level `read`), for reads that lie inside a
//! file's window: bytes of the file already decoded and checked against their chunk IDs, held in a
//! Python buffer. Such a read is one copy into libfuse's reply buffer, without the GIL, without
//! ctypes and without Python; any other read goes on to the mount's Python callback (which reads
//! the file and may set a new window). The kernel sends a sequential reader's bytes in 128 KiB
//! reads: most of them lie inside the window the mount read last.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;

use crate::value_error;

/// libfuse's `read` operation.
type ReadFn = unsafe extern "C" fn(*const c_char, *mut c_char, usize, i64, *mut c_void) -> c_int;

/// One open file: the Python callback for the reads outside its window, and the window.
struct Handle {
    fallback: ReadFn,
    window: Option<(PyBuffer<u8>, u64)>, // its bytes (an export, so they stay put) and their file offset
}

/// Open files by file handle (`fuse_file_info.fh`: unique in the process).
static HANDLES: Mutex<Option<HashMap<u64, Handle>>> = Mutex::new(None);
/// Where `fh` lies in libfuse's `struct fuse_file_info`.
static FH_OFFSET: AtomicUsize = AtomicUsize::new(usize::MAX);

fn handles() -> std::sync::MutexGuard<'static, Option<HashMap<u64, Handle>>> {
    HANDLES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Copies the read out of the window of `fh` into `buf`; the bytes copied, or None if the read does
/// not lie wholly inside it (then `fallback` is the callback to ask).
///
/// # Safety
/// `buf` must hold `size` writable bytes.
unsafe fn from_window(
    fh: u64,
    buf: *mut c_char,
    size: usize,
    offset: i64,
) -> Result<c_int, Option<ReadFn>> {
    let guard = handles();
    let Some(handle) = guard.as_ref().and_then(|h| h.get(&fh)) else {
        return Err(None);
    };
    let Some((window, start)) = &handle.window else {
        return Err(Some(handle.fallback));
    };
    let (Ok(offset), Ok(n)) = (u64::try_from(offset), c_int::try_from(size)) else {
        return Err(Some(handle.fallback));
    };
    let len = window.len_bytes() as u64;
    if size == 0 || offset < *start || offset - start + size as u64 > len {
        return Err(Some(handle.fallback));
    }
    // SAFETY: the export keeps `len` bytes at `buf_ptr` alive (the window is only replaced or dropped
    // under this lock, held for the copy); `offset - start + size <= len`; `buf` holds `size` bytes.
    unsafe {
        let from = window.buf_ptr().cast::<u8>().add((offset - start) as usize);
        std::ptr::copy_nonoverlapping(from, buf.cast::<u8>(), size);
    }
    Ok(n)
}

/// The callback libfuse calls for every read of the mount.
///
/// # Safety
/// Called by libfuse with its `read` arguments: `buf` holds `size` bytes, `fi` is the open file's.
unsafe extern "C" fn mount_read(
    path: *const c_char,
    buf: *mut c_char,
    size: usize,
    offset: i64,
    fi: *mut c_void,
) -> c_int {
    let at = FH_OFFSET.load(Ordering::Relaxed);
    if fi.is_null() || at == usize::MAX {
        return -libc_ebadf();
    }
    // SAFETY: `fi` points at libfuse's fuse_file_info, whose `fh` lies at `at` (told by mfusepy's layout).
    let fh = unsafe { std::ptr::read_unaligned(fi.cast::<u8>().add(at).cast::<u64>()) };
    // SAFETY: libfuse's `buf` holds `size` bytes.
    match unsafe { from_window(fh, buf, size, offset) } {
        Ok(n) => n,
        // SAFETY: the mount's Python callback, with libfuse's own arguments (the lock is not held).
        Err(Some(fallback)) => unsafe { fallback(path, buf, size, offset, fi) },
        Err(None) => -libc_ebadf(),
    }
}

const fn libc_ebadf() -> c_int {
    9 // EBADF on Linux
}

/// The address of the native read callback for libfuse's `fuse_operations.read`; `fh_offset` is
/// where `fh` lies in `struct fuse_file_info`.
#[pyfunction]
fn mount_read_callback(fh_offset: usize) -> usize {
    FH_OFFSET.store(fh_offset, Ordering::Relaxed);
    mount_read as ReadFn as usize
}

/// Serve the reads of file handle `fh` that lie inside `window` (bytes of the file from `start`
/// on, already verified; None: no window) from it, and send the others to the callback at the
/// address `fallback`. The window's buffer stays exported (it cannot be resized) until replaced.
#[pyfunction]
#[pyo3(signature = (fh, fallback, window, start))]
fn mount_window_set(
    fh: u64,
    fallback: usize,
    window: Option<&Bound<'_, PyAny>>,
    start: u64,
) -> PyResult<()> {
    if fallback == 0 {
        return Err(value_error("fallback must be a callback's address"));
    }
    let window = match window {
        Some(obj) => {
            let buf = PyBuffer::<u8>::get(obj)?;
            if !buf.is_c_contiguous() {
                return Err(value_error("window must be a C-contiguous buffer"));
            }
            Some((buf, start))
        }
        None => None,
    };
    // SAFETY: the caller passes the address of a callback with libfuse's `read` signature.
    let fallback = unsafe { std::mem::transmute::<usize, ReadFn>(fallback) };
    let old = handles()
        .get_or_insert_with(HashMap::new)
        .insert(fh, Handle { fallback, window });
    drop(old); // the old window's export is released here, outside the lock
    Ok(())
}

/// Forget file handle `fh` (released): its window's export is released.
#[pyfunction]
fn mount_window_drop(fh: u64) {
    let old = handles().as_mut().and_then(|h| h.remove(&fh));
    drop(old);
}

/// Adds this module's functions to `_native`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(mount_read_callback, m)?)?;
    m.add_function(wrap_pyfunction!(mount_window_set, m)?)?;
    m.add_function(wrap_pyfunction!(mount_window_drop, m)?)
}
