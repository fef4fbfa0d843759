//! All file-system access of the engine, behind two small traits.
//!
//! [`Io`] is the directory-level half (list, open, remove, fsync a directory, lock) and
//! [`IoFile`] the file-level half (positioned write, length, fdatasync, map a
//! prefix read-only). [`RealIo`] implements them on `std::fs`; the test-only simulated
//! file system in `fault.rs` implements them in memory so that tests can inject
//! failures and power losses. No other module touches `std::fs`.
//!
//! Invariant: every method is a thin pass-through. Policy (what to sync, when to poison)
//! lives in the callers, so that a fault injected here exercises the real policy. The
//! permission bits of what is created are policy too: the callers pass them (see
//! `Options::group_read`), and the kernel applies the process umask to them.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Read-only bytes of a file prefix, as returned by [`IoFile::map`].
pub type Mapped = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A held directory lock; dropping it releases the lock.
pub type LockGuard = Box<dyn std::any::Any + Send + Sync>;

/// Directory-level file-system operations.
pub trait Io: Send + Sync + fmt::Debug {
    /// Creates `dir` and its parents if missing: `dir` itself with permission bits
    /// `mode`, missing parents with the default 0777 (both less the umask). An existing
    /// `dir` is left as it is, its permissions unchanged.
    fn create_dir_all(&self, dir: &Path, mode: u32) -> io::Result<()>;
    /// Names of the entries in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Whether `path` (a file or a directory) exists; `Err` if that cannot be told.
    /// By default it opens `path` as a file and, if there is none, lists it as a
    /// directory, which costs what the directory holds: real file systems answer from
    /// its metadata.
    fn exists(&self, path: &Path) -> io::Result<bool> {
        match self.open(path, true) {
            Ok(_) => return Ok(true),
            // Something that is not a regular file (a directory, a FIFO) is there.
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Ok(true),
            Err(_) => {}
        }
        match self.list(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
    /// Opens an existing regular file for reading, and for writing unless `read_only`;
    /// anything else (a FIFO, a device, a directory) is an error, without blocking.
    fn open(&self, path: &Path, read_only: bool) -> io::Result<Arc<dyn IoFile>>;
    /// Creates a new file for reading and writing with permission bits `mode` (less the
    /// umask); fails if it exists.
    fn create(&self, path: &Path, mode: u32) -> io::Result<Arc<dyn IoFile>>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames a file (replacing `to` if it exists).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (created and removed files) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `path` (created if missing, with permission bits
    /// `mode` less the umask; an existing file keeps its own, and one the caller may
    /// only read is locked through a read-only descriptor) without waiting; a lock
    /// held elsewhere gives an error of kind `WouldBlock`.
    fn try_lock(&self, path: &Path, mode: u32) -> io::Result<LockGuard>;
}

/// Operations on one open file.
pub trait IoFile: Send + Sync {
    /// Current length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// fdatasync: the written bytes and the length are durable when this returns.
    fn sync_data(&self) -> io::Result<()>;
    /// The first `len` bytes, read-only. The caller promises that those bytes are not
    /// rewritten or truncated while the returned value lives (see `mmap.rs`).
    fn map(&self, len: u64) -> io::Result<Mapped>;
    /// Up to `len` bytes at `offset`, as a read (`pread`) returns them: fewer at the end
    /// of the file. For small files another process rewrites in place, where a map
    /// would let the bytes change under a shared reference. The default reads through
    /// [`IoFile::map`], for file systems whose maps are copies.
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let end = offset.saturating_add(len as u64).min(self.size()?);
        let map = self.map(end)?;
        let bytes: &[u8] = map.as_ref().as_ref();
        Ok(bytes
            .get(usize::try_from(offset).unwrap_or(usize::MAX)..)
            .unwrap_or_default()
            .to_vec())
    }
    /// The bytes `[offset, offset + len)` as the storage device holds them, read past
    /// the page cache (`O_DIRECT`; the kernel first writes back the range's dirty
    /// pages). Bytes beyond the end of the file read as zeros. `Ok(None)` if the file
    /// system cannot bypass its cache (tmpfs: there the cache is all there is).
    fn read_durable(&self, offset: u64, len: usize) -> io::Result<Option<Vec<u8>>>;
    /// Allocates `[offset, offset + len)` (`fallocate`, mode 0: blocks reserved and
    /// reading as zeros, the length extended; not synced).
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()>;
}

/// Replaces the small file `names.1` in `dir` with `bytes` whole: writes `names.0`
/// (a leftover one is replaced), fdatasyncs it, renames it over `names.1`. The
/// directory is not fsynced: callers whose file must survive a crash do that. A
/// composition of the trait's calls, so a simulated file system sees each of them.
pub(crate) fn replace_file(
    io: &dyn Io,
    dir: &Path,
    names: (&str, &str),
    bytes: &[u8],
    mode: u32,
) -> io::Result<()> {
    let tmp = dir.join(names.0);
    // Left over from a write that failed or crashed half way; never read.
    let _ = io.remove(&tmp);
    let file = io.create(&tmp, mode)?;
    file.write_at(bytes, 0)?;
    file.sync_data()?;
    io.rename(&tmp, &dir.join(names.1))
}

/// Offsets, lengths and buffers of direct reads are multiples of this: the largest
/// logical block size of common devices.
const DIRECT_ALIGN: u64 = 4096;

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealIo;

struct RealFile {
    file: File,
    /// Where it was opened, for the direct reads, which need a descriptor of their own.
    path: PathBuf,
}

impl Io for RealIo {
    fn create_dir_all(&self, dir: &Path, mode: u32) -> io::Result<()> {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::DirBuilder::new().mode(mode).create(dir) {
            Ok(()) => Ok(()),
            // As `create_dir_all`: an existing directory (a racing creator's included)
            // is success, anything else in its place is not.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        match std::fs::metadata(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn open(&self, path: &Path, read_only: bool) -> io::Result<Arc<dyn IoFile>> {
        // Non-blocking, so that a FIFO (or device) planted under a store's file name
        // cannot hang the open; it is then refused as not a regular file. The flag
        // changes nothing for regular files.
        let o_nonblock = i32::try_from(rustix::fs::OFlags::NONBLOCK.bits()).unwrap_or(0);
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(o_nonblock)
            .open(path)?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(Arc::new(RealFile {
            file,
            path: path.to_path_buf(),
        }))
    }

    fn create(&self, path: &Path, mode: u32) -> io::Result<Arc<dyn IoFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)?;
        Ok(Arc::new(RealFile {
            file,
            path: path.to_path_buf(),
        }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn try_lock(&self, path: &Path, mode: u32) -> io::Result<LockGuard> {
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(mode)
            .open(path)
        {
            Ok(file) => file,
            // A reader of a group-read store (`Options::group_read`) may not write
            // `LOCK`; `flock` needs no write access, so it locks through a read-only
            // descriptor of the existing file.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                OpenOptions::new().read(true).open(path).map_err(|_| e)?
            }
            Err(e) => return Err(e),
        };
        match file.try_lock() {
            Ok(()) => Ok(Box::new(file)),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

impl IoFile for RealFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn map(&self, len: u64) -> io::Result<Mapped> {
        if len == 0 {
            return Ok(Arc::new(Vec::<u8>::new()));
        }
        Ok(Arc::new(crate::mmap::map_prefix(&self.file, len)?))
    }

    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    fn read_durable(&self, offset: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
        let einval = rustix::io::Errno::INVAL.raw_os_error();
        let unsupported = |e: &io::Error| e.raw_os_error() == Some(einval);
        // The flag's bits fit an i32 (`open(2)` takes an int).
        let o_direct = i32::try_from(rustix::fs::OFlags::DIRECT.bits()).unwrap_or(0);
        let open = |path: &Path| {
            OpenOptions::new()
                .read(true)
                .custom_flags(o_direct)
                .open(path)
        };
        // Through this handle's own descriptor: the file it holds, even once another
        // file was renamed over its path (an erasure's new image). Without `/proc`,
        // the path.
        let own = PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()));
        let direct = match open(&own) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => open(&self.path),
            opened => opened,
        };
        let direct = match direct {
            Ok(file) => file,
            Err(e) if unsupported(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let start = offset - offset % DIRECT_ALIGN;
        let end = (offset + len as u64).next_multiple_of(DIRECT_ALIGN);
        let span = usize::try_from(end - start).map_err(io::Error::other)?;
        let align = DIRECT_ALIGN as usize;
        let mut buf = vec![0u8; span + align];
        // The buffer's address must be aligned too: start where the Vec's is.
        let pad = buf.as_ptr().align_offset(align);
        let Some(aligned) = buf.get_mut(pad..pad + span) else {
            return Err(io::Error::other("cannot align a direct-read buffer"));
        };
        let mut done = 0;
        while done < span {
            match direct.read_at(&mut aligned[done..], start + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if unsupported(&e) && done == 0 => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        let from = (offset - start) as usize;
        let mut out = vec![0u8; len];
        let got = done.saturating_sub(from).min(len);
        out[..got].copy_from_slice(&aligned[from..from + got]);
        Ok(Some(out))
    }

    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::empty(), offset, len)
            .map_err(io::Error::from)
    }
}
