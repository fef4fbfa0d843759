//! A simulated file system for crash and fault tests (feature `fault-injection`).
//!
//! Fault model (after SQLite's crash-test VFS and TigerBeetle's simulated storage):
//! - Every file keeps its live bytes (what reads see) and its durable bytes (what
//!   survives a power loss). `sync_data` makes the live bytes and length durable.
//!   Directory entries are live until `sync_dir` of their directory makes them durable.
//! - [`SimIo::power_loss`] returns the file system as it comes back after a power cut:
//!   the bytes of each unsynced write, per 512-byte sector, are kept, dropped,
//!   zero-filled or filled with garbage (bytes no write touched never change: the
//!   "powersafe overwrite" assumption of docs/FORMAT.md); an unsynced length change is kept or dropped (a file may grow without
//!   its data); each unsynced directory change is kept or undone. All choices come
//!   from a seed, so a failure replays exactly.
//! - [`SimIo::fail_at`] makes the k-th I/O call (counting every call) fail with EIO,
//!   once or from then on; [`SimIo::also_fail_at`] arms another such failure beside it.
//!   [`SimIo::cut_power_at`] makes the k-th call and every later one fail, as if the
//!   machine died just before it; `power_loss` then gives what the disk held.
//! - A failed `sync_data` behaves as Linux's writeback error handling does
//!   ("fsyncgate"): the file's unsynced writes are dropped from the cache (reads see
//!   the disk's old bytes again, as XFS does), or kept in the cache but marked clean
//!   (ext4: a later successful sync does not write them, a power loss loses them while
//!   reads still see them), or a mix of both per 512-byte sector. The choice is
//!   random, from a seed ([`SimIo::seed_writeback_errors`]).
//! - `read_durable` returns what the disk holds (O_DIRECT), after writing back the
//!   range's dirty (not the fsyncgate-clean) bytes, as the kernel does before a direct
//!   read.
//! - A handle from before a power loss belongs to the dead machine: all its calls fail.
//! - Permissions are not modelled: the `mode` that `create`, `create_dir_all` and
//!   `try_lock` take is accepted and ignored (there are no users to keep out). The
//!   modes execlog asks for are checked on the real file system (`tests/file_modes.rs`).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::io::{Io, IoFile, LockGuard, Mapped};

/// Sector size of the simulated disk: the unit in which unsynced writes survive.
pub const SECTOR_BYTES: usize = 512;

/// How an injected failure repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Only the k-th call fails.
    Once,
    /// The k-th call and every later one fail.
    Persistent,
}

/// Which kinds of call an injected failure counts and hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Any call.
    Any,
    /// `write_at`.
    Write,
    /// `sync_data`.
    Sync,
    /// `sync_dir`.
    SyncDir,
    /// `create` or `open`.
    Open,
    /// `map`.
    Map,
    /// `read_durable`.
    Read,
}

/// One armed failure and how many calls of its kind it has counted.
#[derive(Debug, Clone, Copy)]
struct Armed {
    k: u64,
    op: Op,
    fault: Fault,
    seen: u64,
    /// The machine dies here (no writeback-error behaviour: nothing runs after it).
    power_cut: bool,
}

impl Armed {
    /// Counts a call of kind `op`; whether it fails.
    fn hit(&mut self, op: Op) -> bool {
        if self.op != Op::Any && self.op != op {
            return false;
        }
        self.seen += 1;
        match self.fault {
            Fault::Once => self.seen == self.k,
            Fault::Persistent => self.seen >= self.k,
        }
    }
}

/// Why a call failed.
enum Failed {
    /// The machine is off, or the handle is from before a power loss.
    Dead,
    /// An injected failure; `power_cut` if it stands for the machine dying.
    Injected { power_cut: bool },
}

impl From<Failed> for io::Error {
    fn from(f: Failed) -> io::Error {
        match f {
            Failed::Dead | Failed::Injected { power_cut: true } => eio("the machine lost power"),
            Failed::Injected { power_cut: false } => eio("injected failure"),
        }
    }
}

#[derive(Default, Clone)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Unsynced writes since the last sync: (offset, len).
    dirty: Vec<(usize, usize)>,
}

#[derive(Default)]
struct World {
    inodes: Vec<Inode>,
    live_dir: BTreeMap<PathBuf, usize>,
    durable_dir: BTreeMap<PathBuf, usize>,
    dirs: HashSet<PathBuf>,
    locks: HashSet<PathBuf>,
    calls: u64,
    armed: Vec<Armed>,
    dead: bool,
    epoch: u64,
    /// Drives the fsyncgate choices of failed syncs.
    writeback: Rng,
}

/// The simulated file system. Clones share it.
#[derive(Clone)]
pub struct SimIo {
    world: Arc<Mutex<World>>,
    epoch: u64,
}

impl fmt::Debug for SimIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimIo").field("epoch", &self.epoch).finish()
    }
}

impl Default for SimIo {
    fn default() -> Self {
        Self::new()
    }
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated I/O error: {what}"))
}

/// SplitMix64: small, fast, and good enough to drive fault choices from a seed.
#[derive(Debug, Clone, Default)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

impl SimIo {
    /// An empty file system.
    pub fn new() -> Self {
        Self {
            world: Arc::new(Mutex::new(World::default())),
            epoch: 0,
        }
    }

    /// Makes the `k`-th call from now (1-based) of kind `op` fail, replacing any failure
    /// armed before.
    pub fn fail_at(&self, k: u64, op: Op, fault: Fault) {
        self.arm(k, op, fault, false, true);
    }

    /// Arms one more failure beside those armed already, counting calls from now.
    pub fn also_fail_at(&self, k: u64, op: Op, fault: Fault) {
        self.arm(k, op, fault, false, false);
    }

    fn arm(&self, k: u64, op: Op, fault: Fault, power_cut: bool, replace: bool) {
        let mut w = self.world.lock();
        if replace {
            w.armed.clear();
            w.calls = 0;
        }
        w.armed.push(Armed {
            k,
            op,
            fault,
            seen: 0,
            power_cut,
        });
    }

    /// Removes any injected failure.
    pub fn clear_faults(&self) {
        let mut w = self.world.lock();
        w.armed.clear();
    }

    /// Makes the `k`-th call from now (1-based, any kind) and all later ones fail, as if
    /// power were cut just before it, replacing any failure armed before.
    pub fn cut_power_at(&self, k: u64) {
        self.arm(k, Op::Any, Fault::Persistent, true, true);
    }

    /// Seeds the choices a failed sync makes (drop or keep-clean, per sector).
    pub fn seed_writeback_errors(&self, seed: u64) {
        self.world.lock().writeback = Rng::new(seed);
    }

    /// Calls counted since the last `fail_at` (or since creation): of the kind of the
    /// first armed failure, or of every kind if none is armed.
    pub fn calls(&self) -> u64 {
        self.world.lock().calls
    }

    /// The file system after a power cut now, with unsynced state resolved by `seed`.
    /// Handles from before (this one included) stop working.
    pub fn power_loss(&self, seed: u64) -> SimIo {
        let mut rng = Rng::new(seed);
        let mut w = self.world.lock();
        let mut inodes = Vec::with_capacity(w.inodes.len());
        for inode in &w.inodes {
            inodes.push(Inode {
                live: crash_bytes(inode, &mut rng),
                durable: Vec::new(),
                dirty: Vec::new(),
            });
        }
        for inode in &mut inodes {
            inode.durable = inode.live.clone();
        }
        let mut dir = w.durable_dir.clone();
        let names: HashSet<PathBuf> = w
            .live_dir
            .keys()
            .chain(w.durable_dir.keys())
            .cloned()
            .collect();
        let mut names: Vec<PathBuf> = names.into_iter().collect();
        names.sort();
        for name in names {
            let live = w.live_dir.get(&name);
            if live != w.durable_dir.get(&name) && rng.below(2) == 0 {
                match live {
                    Some(&ino) => dir.insert(name, ino),
                    None => dir.remove(&name),
                };
            }
        }
        w.dead = true;
        SimIo::boot(inodes, dir.clone(), dir, w.dirs.clone(), w.epoch + 1)
    }

    /// An independent copy of the file system as it is now (live state, no locks held,
    /// no faults armed): lets a fuzzer build a store once and damage a fresh copy of it
    /// on every run.
    pub fn snapshot(&self) -> SimIo {
        let w = self.world.lock();
        SimIo::boot(
            w.inodes.clone(),
            w.live_dir.clone(),
            w.durable_dir.clone(),
            w.dirs.clone(),
            w.epoch + 1,
        )
    }

    /// A machine starting on the given disk state: no locks held, no faults armed.
    fn boot(
        inodes: Vec<Inode>,
        live_dir: BTreeMap<PathBuf, usize>,
        durable_dir: BTreeMap<PathBuf, usize>,
        dirs: HashSet<PathBuf>,
        epoch: u64,
    ) -> SimIo {
        let world = World {
            inodes,
            live_dir,
            durable_dir,
            dirs,
            locks: HashSet::new(),
            calls: 0,
            armed: Vec::new(),
            dead: false,
            epoch,
            writeback: Rng::default(),
        };
        SimIo {
            world: Arc::new(Mutex::new(world)),
            epoch,
        }
    }

    /// The live bytes of a file, for tests that damage or inspect files.
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let w = self.world.lock();
        w.live_dir.get(path).map(|&i| w.inodes[i].live.clone())
    }

    /// Flips the bits of `mask` in the byte at `offset` of `path` on the disk only:
    /// the cache keeps the byte as it was, as when a medium goes bad under a cached,
    /// clean page. Reads through maps see the old byte until a power loss (the cache
    /// is never evicted here); `read_durable` sees the new one. `false` if the file
    /// has no durable byte there.
    pub fn rot(&self, path: &Path, offset: usize, mask: u8) -> bool {
        let mut w = self.world.lock();
        let Some(&ino) = w.live_dir.get(path) else {
            return false;
        };
        match w.inodes[ino].durable.get_mut(offset) {
            Some(byte) => {
                *byte ^= mask;
                true
            }
            None => false,
        }
    }

    /// Replaces a file's bytes, durably (a test's stand-in for disk damage).
    pub fn write_file(&self, path: &Path, bytes: Vec<u8>) {
        let mut w = self.world.lock();
        let ino = match w.live_dir.get(path) {
            Some(&i) => i,
            None => {
                w.inodes.push(Inode::default());
                let i = w.inodes.len() - 1;
                w.live_dir.insert(path.to_path_buf(), i);
                w.durable_dir.insert(path.to_path_buf(), i);
                i
            }
        };
        w.inodes[ino] = Inode {
            live: bytes.clone(),
            durable: bytes,
            dirty: Vec::new(),
        };
    }

    /// Counts a call of kind `op` and decides whether it fails.
    fn enter(&self, op: Op) -> io::Result<parking_lot::MutexGuard<'_, World>> {
        self.try_enter(op).map_err(io::Error::from)
    }

    /// [`SimIo::enter`], telling an injected failure from a dead machine.
    fn try_enter(&self, op: Op) -> Result<parking_lot::MutexGuard<'_, World>, Failed> {
        let mut w = self.world.lock();
        if w.dead || w.epoch != self.epoch {
            return Err(Failed::Dead);
        }
        if w.armed
            .first()
            .is_none_or(|a| a.op == Op::Any || a.op == op)
        {
            w.calls += 1;
        }
        let mut failed = None;
        for armed in &mut w.armed {
            if armed.hit(op) && failed.is_none() {
                failed = Some(Failed::Injected {
                    power_cut: armed.power_cut,
                });
            }
        }
        match failed {
            Some(f) => Err(f),
            None => Ok(w),
        }
    }
}

/// The bytes an inode holds after a power cut.
///
/// Only bytes that unsynced writes touched can change ("powersafe overwrite", as
/// SQLite assumes by default): per 512-byte sector, the touched bytes keep their new
/// value, keep their old one, become zeros or become garbage.
fn crash_bytes(inode: &Inode, rng: &mut Rng) -> Vec<u8> {
    let mut out = inode.durable.clone();
    let len = if inode.live.len() != inode.durable.len() && rng.below(2) == 0 {
        inode.live.len()
    } else {
        inode.durable.len()
    };
    out.resize(len, 0);
    let mut touched = vec![false; len];
    for &(off, n) in &inode.dirty {
        for t in touched.iter_mut().skip(off).take(n) {
            *t = true;
        }
    }
    for (sector, flags) in touched.chunks(SECTOR_BYTES).enumerate() {
        if !flags.contains(&true) {
            continue;
        }
        let action = rng.below(4);
        for (i, _) in flags.iter().enumerate().filter(|(_, t)| **t) {
            let at = sector * SECTOR_BYTES + i;
            out[at] = match action {
                0 => inode.live.get(at).copied().unwrap_or(0),
                1 => out[at],
                2 => 0,
                _ => rng.next_u64() as u8,
            };
        }
    }
    out
}

struct SimFile {
    io: SimIo,
    ino: usize,
}

struct SimLock {
    io: SimIo,
    path: PathBuf,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut w = self.io.world.lock();
        if w.epoch == self.io.epoch {
            w.locks.remove(&self.path);
        }
    }
}

impl Io for SimIo {
    fn create_dir_all(&self, dir: &Path, _mode: u32) -> io::Result<()> {
        let mut w = self.enter(Op::Any)?;
        w.dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let w = self.enter(Op::Any)?;
        if !w.dirs.contains(dir) {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok(w.live_dir
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let w = self.enter(Op::Any)?;
        Ok(w.dirs.contains(path) || w.live_dir.contains_key(path))
    }

    fn open(&self, path: &Path, _read_only: bool) -> io::Result<Arc<dyn IoFile>> {
        let w = self.enter(Op::Open)?;
        let Some(&ino) = w.live_dir.get(path) else {
            return Err(io::ErrorKind::NotFound.into());
        };
        Ok(Arc::new(SimFile {
            io: self.clone(),
            ino,
        }))
    }

    fn create(&self, path: &Path, _mode: u32) -> io::Result<Arc<dyn IoFile>> {
        let mut w = self.enter(Op::Open)?;
        if w.live_dir.contains_key(path) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        w.inodes.push(Inode::default());
        let ino = w.inodes.len() - 1;
        w.live_dir.insert(path.to_path_buf(), ino);
        Ok(Arc::new(SimFile {
            io: self.clone(),
            ino,
        }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut w = self.enter(Op::Any)?;
        w.live_dir
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut w = self.enter(Op::Any)?;
        let ino = w.live_dir.remove(from).ok_or(io::ErrorKind::NotFound)?;
        w.live_dir.insert(to.to_path_buf(), ino);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut w = self.enter(Op::SyncDir)?;
        let w = &mut *w;
        w.durable_dir.retain(|p, _| p.parent() != Some(dir));
        for (p, &ino) in &w.live_dir {
            if p.parent() == Some(dir) {
                w.durable_dir.insert(p.clone(), ino);
            }
        }
        Ok(())
    }

    fn try_lock(&self, path: &Path, _mode: u32) -> io::Result<LockGuard> {
        let mut w = self.enter(Op::Any)?;
        if !w.locks.insert(path.to_path_buf()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(Box::new(SimLock {
            io: self.clone(),
            path: path.to_path_buf(),
        }))
    }
}

impl IoFile for SimFile {
    fn size(&self) -> io::Result<u64> {
        let w = self.io.enter(Op::Any)?;
        Ok(w.inodes[self.ino].live.len() as u64)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut w = self.io.enter(Op::Write)?;
        let inode = &mut w.inodes[self.ino];
        let off = offset as usize;
        if inode.live.len() < off + buf.len() {
            inode.live.resize(off + buf.len(), 0);
        }
        inode.live[off..off + buf.len()].copy_from_slice(buf);
        inode.dirty.push((off, buf.len()));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut w = match self.io.try_enter(Op::Sync) {
            Ok(w) => w,
            Err(Failed::Injected { power_cut: false }) => {
                self.io.writeback_failed(self.ino);
                return Err(eio("injected failure: writeback failed"));
            }
            Err(other) => return Err(other.into()),
        };
        let inode = &mut w.inodes[self.ino];
        let len = inode.live.len();
        inode.durable.resize(len, 0);
        for (off, n) in std::mem::take(&mut inode.dirty) {
            let end = (off + n).min(len);
            if off < end {
                inode.durable[off..end].copy_from_slice(&inode.live[off..end]);
            }
        }
        Ok(())
    }

    fn map(&self, len: u64) -> io::Result<Mapped> {
        let w = self.io.enter(Op::Map)?;
        let live = &w.inodes[self.ino].live;
        let len = (len as usize).min(live.len());
        Ok(Arc::new(live[..len].to_vec()))
    }

    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        // Blocks that read as zeros: modelled as an unsynced write of zeros.
        let zeros = vec![0u8; usize::try_from(len).unwrap_or(0)];
        self.write_at(&zeros, offset)
    }

    fn read_durable(&self, offset: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
        let mut w = self.io.enter(Op::Read)?;
        let inode = &mut w.inodes[self.ino];
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(len);
        inode.write_back(start, end);
        let mut out = vec![0u8; len];
        if let Some(bytes) = inode.durable.get(start..end.min(inode.durable.len())) {
            out[..bytes.len()].copy_from_slice(bytes);
        }
        Ok(Some(out))
    }
}

impl Inode {
    /// Makes the dirty bytes within `[start, end)` durable, as the kernel writes back
    /// the cached pages of a range before a direct read of it.
    fn write_back(&mut self, start: usize, end: usize) {
        let mut rest = Vec::with_capacity(self.dirty.len());
        for (off, n) in std::mem::take(&mut self.dirty) {
            let (lo, hi) = (off.max(start), (off + n).min(end));
            if lo >= hi {
                rest.push((off, n));
                continue;
            }
            if self.durable.len() < hi {
                self.durable.resize(hi, 0);
            }
            self.durable[lo..hi].copy_from_slice(&self.live[lo..hi]);
            if off < lo {
                rest.push((off, lo - off));
            }
            if off + n > hi {
                rest.push((hi, off + n - hi));
            }
        }
        self.dirty = rest;
    }
}

impl SimIo {
    /// A failed writeback of inode `ino` ("fsyncgate"): per sector of its unsynced
    /// writes, the cache drops the new bytes (reads see the disk again) or keeps them
    /// marked clean (a later sync will not write them). Either way they are no longer
    /// dirty, and the disk keeps its old bytes.
    fn writeback_failed(&self, ino: usize) {
        let mut w = self.world.lock();
        let w = &mut *w;
        let Some(inode) = w.inodes.get_mut(ino) else {
            return;
        };
        let mut sectors: Vec<usize> = std::mem::take(&mut inode.dirty)
            .into_iter()
            .flat_map(|(off, n)| (off / SECTOR_BYTES)..(off + n).div_ceil(SECTOR_BYTES))
            .collect();
        sectors.sort_unstable();
        sectors.dedup();
        // XFS drops a failed range from the cache, ext4 keeps it marked clean; a
        // failure within a range may leave a mix. All three, at random.
        let mode = w.writeback.below(3);
        for sector in sectors {
            let drop = match mode {
                0 => true,
                1 => false,
                _ => w.writeback.below(2) == 0,
            };
            if !drop {
                continue; // kept in the cache, clean: never written
            }
            let lo = sector * SECTOR_BYTES;
            let hi = (lo + SECTOR_BYTES).min(inode.live.len());
            for at in lo..hi {
                inode.live[at] = inode.durable.get(at).copied().unwrap_or(0);
            }
        }
    }
}
