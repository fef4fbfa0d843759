//! The store's open segment files, in order, with the read-only views readers use.
//!
//! Segment ids are contiguous, starting at `first_id`; slot `i` holds segment
//! `first_id + i`. Each slot knows its durable end (the commit thread raises it after
//! each fdatasync). A reader asks for a view covering a byte range below that end;
//! the view is a mapped prefix, remapped (larger) only when a read needs bytes beyond
//! the current one. Views are shared (`Arc`), so a remap never invalidates a view a
//! reader still holds.
//!
//! A slot may start closed: a sealed segment a checkpoint covers, which an open that
//! decodes its index after returning (`lazy_index.rs`) leaves unopened so that open
//! does not grow with the number of segments. It is opened, mapped and its header
//! checked on first use, under the write lock; until then its durable end is the
//! checkpoint's word, which the verification after open checks.

use std::path::Path;
use std::sync::Arc;

use crate::sync::RwLock;

use crate::error::{Error, Result};
use crate::io::{Io, IoFile, Mapped};
use crate::segment::{self, HeaderCheck};
use crate::segment_maps;

struct Slot {
    /// `None` until first used, for a segment open left closed.
    file: Option<Arc<dyn IoFile>>,
    durable_end: u64,
    view: Option<Mapped>,
    /// How many times an erasure replaced it since open (its bytes then differ from
    /// what the commit thread wrote and digested).
    rewrites: u32,
}

/// Open segments and their views.
pub(crate) struct Segments {
    first_id: u32,
    slots: RwLock<Vec<Slot>>,
    dir: std::path::PathBuf,
    /// What opens closed slots, and whether it opens them read-only.
    io: Arc<dyn Io>,
    read_only: bool,
}

impl Segments {
    pub(crate) fn new(io: Arc<dyn Io>, dir: &Path, first_id: u32, read_only: bool) -> Self {
        Self {
            first_id,
            slots: RwLock::new(Vec::new()),
            dir: dir.to_path_buf(),
            io,
            read_only,
        }
    }

    /// Adds the next segment with `durable_end` bytes already durable, and a view of
    /// at least those bytes if one is at hand.
    pub(crate) fn push(
        &self,
        id: u32,
        file: Arc<dyn IoFile>,
        (durable_end, view): (u64, Option<Mapped>),
    ) {
        let mut slots = self.slots.write();
        debug_assert_eq!(id as usize, self.first_id as usize + slots.len());
        let view = view.filter(|v| v.as_ref().as_ref().len() as u64 >= durable_end);
        slots.push(Slot {
            file: Some(file),
            durable_end,
            view,
            rewrites: 0,
        });
    }

    /// Adds the next segment, sealed with `durable_end` bytes, left closed until first
    /// used.
    pub(crate) fn push_closed(&self, id: u32, durable_end: u64) {
        let mut slots = self.slots.write();
        debug_assert_eq!(id as usize, self.first_id as usize + slots.len());
        slots.push(Slot {
            file: None,
            durable_end,
            view: None,
            rewrites: 0,
        });
    }

    /// Puts `file`, a rewrite of sealed segment `id` with the same durable records
    /// (`erasure.rs`), in place of the old one. Views already handed out keep the old
    /// file's bytes; later ones map the new file.
    pub(crate) fn replace(&self, id: u32, file: Arc<dyn IoFile>) {
        let mut slots = self.slots.write();
        if let Some(slot) = slots.get_mut(id.wrapping_sub(self.first_id) as usize) {
            slot.file = Some(file);
            slot.view = None;
            slot.rewrites = slot.rewrites.wrapping_add(1).max(1);
        }
    }

    /// Whether segment `id` was replaced by an erasure since open.
    pub(crate) fn rewritten(&self, id: u32) -> bool {
        self.rewrites(id) > 0
    }

    /// How many times an erasure replaced segment `id` since open (0: never).
    pub(crate) fn rewrites(&self, id: u32) -> u32 {
        let slots = self.slots.read();
        slots
            .get(id.wrapping_sub(self.first_id) as usize)
            .map_or(0, |s| s.rewrites)
    }

    /// Raises segment `id`'s durable end after an fdatasync.
    pub(crate) fn set_durable_end(&self, id: u32, end: u64) {
        let mut slots = self.slots.write();
        if let Some(slot) = slots.get_mut(id.wrapping_sub(self.first_id) as usize) {
            debug_assert!(end >= slot.durable_end);
            slot.durable_end = end;
        }
    }

    /// Segment `id`'s durable end (0 for a segment it does not hold).
    pub(crate) fn durable_end(&self, id: u32) -> u64 {
        self.slots
            .read()
            .get(id.wrapping_sub(self.first_id) as usize)
            .map_or(0, |s| s.durable_end)
    }

    /// Segment `id`'s final end, if it is sealed: the next segment holds a durable
    /// record. The commit thread raises a segment's end before it publishes any group
    /// of the next one (groups are published in log order), so that end no longer
    /// moves. `None` for the newest segment with records, and for missing ones.
    pub(crate) fn sealed_end(&self, id: u32) -> Option<u64> {
        let slots = self.slots.read();
        let slot_no = id.wrapping_sub(self.first_id) as usize;
        let next = slots.get(slot_no.checked_add(1)?)?;
        (next.durable_end > crate::segment::SEGMENT_HEADER_LEN as u64)
            .then(|| slots.get(slot_no).map(|s| s.durable_end))
            .flatten()
    }

    /// Segment `id`'s file, opened if it was left closed; `Err` if it does not hold it
    /// or it cannot be opened.
    pub(crate) fn file(&self, id: u32) -> Result<Arc<dyn IoFile>> {
        let slot_no = id.wrapping_sub(self.first_id) as usize;
        if let Some(file) = self.slots.read().get(slot_no).and_then(|s| s.file.clone()) {
            return Ok(file);
        }
        let mut slots = self.slots.write();
        let slot = slots.get_mut(slot_no).ok_or_else(|| missing(id))?;
        self.open_closed(id, slot)
    }

    /// Number of segments.
    pub(crate) fn count(&self) -> usize {
        self.slots.read().len()
    }

    /// Durable bytes in all segments (headers included).
    pub(crate) fn durable_bytes(&self) -> u64 {
        self.slots.read().iter().map(|s| s.durable_end).sum()
    }

    /// A view of segment `id` that covers at least `[0, end)`; `end` must be durable.
    pub(crate) fn view(&self, id: u32, end: u64) -> Result<Mapped> {
        let slot_no = id.wrapping_sub(self.first_id) as usize;
        {
            let slots = self.slots.read();
            let slot = slots.get(slot_no).ok_or_else(|| missing(id))?;
            // A view may reach past the durable end (open's map of a whole sealed
            // file): what lies there is never served.
            if let Some(view) = &slot.view
                && view.as_ref().as_ref().len() as u64 >= end
                && end <= slot.durable_end
            {
                return Ok(Arc::clone(view));
            }
        }
        let mut slots = self.slots.write();
        let slot = slots.get_mut(slot_no).ok_or_else(|| missing(id))?;
        let file = self.open_closed(id, slot)?;
        if end > slot.durable_end {
            return Err(Error::corrupt(
                id,
                end,
                "record points beyond the durable end of its segment",
            ));
        }
        if let Some(view) = &slot.view
            && view.as_ref().as_ref().len() as u64 >= end
        {
            return Ok(Arc::clone(view));
        }
        let path = crate::store_dir::segment_path(&self.dir, id);
        let view = file
            .map(slot.durable_end)
            .map_err(|e| Error::io("mmap segment", path, e))?;
        slot.view = Some(Arc::clone(&view));
        Ok(view)
    }

    /// `slot`'s file (segment `id`), opened first if it was left closed: the whole file
    /// mapped, its length and header checked as open checks them.
    fn open_closed(&self, id: u32, slot: &mut Slot) -> Result<Arc<dyn IoFile>> {
        if let Some(file) = &slot.file {
            return Ok(Arc::clone(file));
        }
        let opened = segment_maps::open_one(self.io.as_ref(), &self.dir, id, self.read_only, None)?;
        if opened.capacity < slot.durable_end {
            return Err(Error::corrupt(
                id,
                opened.capacity,
                format!(
                    "segment file is {} bytes, shorter than the {} the checkpoint says are \
                     durable",
                    opened.capacity, slot.durable_end
                ),
            ));
        }
        match segment::check_header(opened.bytes(), id) {
            HeaderCheck::Valid => {}
            HeaderCheck::Version(version) => {
                let path = opened.path;
                return Err(Error::UnsupportedFormat { path, version });
            }
            HeaderCheck::Blank => return Err(Error::corrupt(id, 0, "segment header is blank")),
            HeaderCheck::Bad(why) => return Err(Error::corrupt(id, 0, why)),
        }
        slot.view = Some(opened.view);
        slot.file = Some(Arc::clone(&opened.file));
        Ok(opened.file)
    }
}

/// The error for a segment the store does not hold.
fn missing(id: u32) -> Error {
    Error::corrupt(id, 0, "record points into a missing segment")
}
