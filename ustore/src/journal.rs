//! In-flight journals as files (issue 16): the memory a user-space
//! back-end gives the core's [`xbb::journal`] so that the next process can
//! take its rings over. One file per queue, `<dom>-<devid>-q<queue>` in a
//! directory the platform names (`xbb-serve`: `/run/xbb-serve`, a tmpfs:
//! it outlives the process, not the host, as the guests it describes), the
//! file mapped shared: every store the core makes is in the file the
//! moment it is made, whatever becomes of the process.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use xbb::host::{DomId, JournalOpen, QueueId};
use xbb::journal::JournalId;
use xbb::shmem::SharedMem;

use crate::sys;

/// The journal files of one directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalFiles {
    dir: PathBuf,
}

/// A journal file's name: `<dom>-<devid>-q<queue>`.
pub fn journal_name(dom: DomId, devid: u32, queue: QueueId) -> String {
    format!("{dom}-{devid}-q{queue}")
}

/// The vbd and queue a journal file's name names.
pub fn parse_journal_name(name: &str) -> Option<(DomId, u32, QueueId)> {
    let (vbd, queue) = name.rsplit_once("-q")?;
    let (dom, devid) = vbd.split_once('-')?;
    let num = |s: &str| s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty();
    if !num(dom) || !num(devid) || !num(queue) {
        return None;
    }
    Some((dom.parse().ok()?, devid.parse().ok()?, queue.parse().ok()?))
}

impl JournalFiles {
    /// The journals of directory `dir` (made, mode 0700, at the first new
    /// journal).
    pub fn new(dir: impl Into<PathBuf>) -> JournalFiles {
        JournalFiles { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `id`'s queue.
    pub fn path(&self, id: &JournalId) -> PathBuf {
        self.dir.join(journal_name(id.dom, id.devid, id.queue))
    }

    /// The memory of `id`'s journal, [`JournalId::bytes`] long: with
    /// [`JournalOpen::Create`] a new file (an old one is replaced), zeroed;
    /// with [`JournalOpen::Existing`] the file a previous process left,
    /// `None` when there is none. A file shorter than that is
    /// [`io::ErrorKind::InvalidData`] (mapping it would fault), as is an
    /// `id` of no possible size.
    pub fn open(&self, id: &JournalId, how: JournalOpen) -> io::Result<Option<SharedMem>> {
        let Some(bytes) = id.bytes() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "journal of an impossible ring",
            ));
        };
        let path = self.path(id);
        let file = match how {
            JournalOpen::Create => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&self.dir)?;
                // A new inode: a process still mapping the old file (one
                // that is dying) cannot write into the new journal.
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                f.set_len(bytes as u64)?;
                f
            }
            JournalOpen::Existing => match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            },
        };
        map(&file, bytes).map(Some)
    }

    /// Gives back the memory [`JournalFiles::open`] mapped for `id`; the
    /// file is kept when `keep` (the vbd was handed over), else removed.
    pub fn close(&self, id: &JournalId, mem: SharedMem, keep: bool) {
        sys::unmap(mem);
        if !keep {
            let _ = std::fs::remove_file(self.path(id));
        }
    }

    /// Whether queue 0 of vbd `devid` of domain `dom` has a journal file:
    /// a previous process may have left that vbd to be taken over.
    pub fn exists(&self, dom: DomId, devid: u32) -> bool {
        self.dir.join(journal_name(dom, devid, 0)).is_file()
    }

    /// The vbds (domain, device) with journal files here.
    pub fn vbds(&self) -> Vec<(DomId, u32)> {
        let mut out: Vec<(DomId, u32)> = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| parse_journal_name(e.file_name().to_str()?))
                    .map(|(dom, devid, _)| (dom, devid))
                    .collect()
            })
            .unwrap_or_default();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Removes every journal file of vbd `devid` of domain `dom`.
    pub fn remove_vbd(&self, dom: DomId, devid: u32) {
        let Ok(d) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in d.filter_map(|e| e.ok()) {
            let ours = e
                .file_name()
                .to_str()
                .and_then(parse_journal_name)
                .is_some_and(|(d, v, _)| (d, v) == (dom, devid));
            if ours {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The journals one back-end instance has open: a [`JournalFiles`] and
/// which file each queue's mapping is, what a platform's
/// `Host::journal_open` and `Host::journal_close` delegate to.
#[derive(Debug)]
pub struct InstanceJournals {
    files: JournalFiles,
    open: Vec<JournalId>,
}

impl InstanceJournals {
    /// No journal open yet, the files in `files`.
    pub fn new(files: JournalFiles) -> InstanceJournals {
        InstanceJournals {
            files,
            open: Vec::new(),
        }
    }

    /// The files.
    pub fn files(&self) -> &JournalFiles {
        &self.files
    }

    /// [`JournalFiles::open`], remembering which queue's it is.
    pub fn open(&mut self, id: &JournalId, how: JournalOpen) -> io::Result<Option<SharedMem>> {
        let mem = self.files.open(id, how)?;
        if mem.is_some() {
            self.open.retain(|j| j.queue != id.queue);
            self.open.push(*id);
        }
        Ok(mem)
    }

    /// [`JournalFiles::close`] of queue `queue`'s journal; `Err` (the
    /// memory back, untouched) when that queue has none open.
    pub fn close(&mut self, queue: QueueId, mem: SharedMem, keep: bool) -> Result<(), SharedMem> {
        let Some(at) = self.open.iter().position(|j| j.queue == queue) else {
            return Err(mem);
        };
        let id = self.open.swap_remove(at);
        self.files.close(&id, mem, keep);
        Ok(())
    }
}

/// [`InstanceJournals::close`] for a platform that may keep no journals
/// at all: whether `mem` was a journal `journals` had open (a platform
/// counts `false` as a bad unmap).
pub fn close_journal(
    journals: Option<&mut InstanceJournals>,
    queue: QueueId,
    mem: SharedMem,
    keep: bool,
) -> bool {
    journals.is_some_and(|j| j.close(queue, mem, keep).is_ok())
}

/// Maps `file`, which must hold at least `bytes`.
fn map(file: &File, bytes: usize) -> io::Result<SharedMem> {
    if file.metadata()?.len() < bytes as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "journal file shorter than the ring needs",
        ));
    }
    sys::map_shared(file, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use xbb::abi::Abi;

    fn id(queue: QueueId) -> JournalId {
        JournalId {
            dom: 7,
            devid: 51712,
            queue,
            abi: Abi::X86_64,
            ring_pages: 1,
            ring_refs: [9; 32],
        }
    }

    #[test]
    fn names_round_trip_and_odd_names_are_not_journals() {
        assert_eq!(journal_name(7, 51712, 3), "7-51712-q3");
        assert_eq!(parse_journal_name("7-51712-q3"), Some((7, 51712, 3)));
        for odd in [
            "7-51712",
            "x-1-q0",
            "7-51712-q",
            "-1-q0",
            "7--q0",
            "7-1-q0.tmp",
        ] {
            assert_eq!(parse_journal_name(odd), None, "{odd}");
        }
    }

    /// What one mapping stores is in the file for the next: made, kept,
    /// found again, removed; a file that is too short is refused.
    #[test]
    fn a_journal_outlives_its_mapping() {
        let dir = std::env::temp_dir().join(format!("xbb-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = JournalFiles::new(dir.join("run"));
        let bytes = id(0).bytes().unwrap();
        assert!(files.open(&id(0), JournalOpen::Existing).unwrap().is_none());
        let m = files.open(&id(0), JournalOpen::Create).unwrap().unwrap();
        m.store_u32(bytes - 4, 0xfeed, Ordering::Release);
        files.close(&id(0), m, true);
        assert!(files.exists(7, 51712));
        assert_eq!(files.vbds(), [(7, 51712)]);
        let m = files.open(&id(0), JournalOpen::Existing).unwrap().unwrap();
        assert_eq!(m.load_u32(bytes - 4, Ordering::Acquire), 0xfeed);
        // A longer ring than the file was made for.
        let longer = JournalId {
            ring_pages: 2,
            ..id(0)
        };
        let Err(e) = files.open(&longer, JournalOpen::Existing) else {
            panic!("a short file mapped")
        };
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        files.close(&id(0), m, false);
        assert!(!files.exists(7, 51712));
        // Every queue's file of a vbd goes at once.
        for q in 0..3 {
            let m = files.open(&id(q), JournalOpen::Create).unwrap().unwrap();
            assert_eq!(m.load_u32(0, Ordering::Acquire), 0, "zeroed");
            files.close(&id(q), m, true);
        }
        files.remove_vbd(7, 51712);
        assert!(files.vbds().is_empty());
        // An instance's journals: closing one that is not open is refused.
        let mut inst = InstanceJournals::new(files.clone());
        let m = inst.open(&id(1), JournalOpen::Create).unwrap().unwrap();
        let m = inst.close(0, m, true).unwrap_err();
        assert!(inst.close(1, m, false).is_ok());
        assert!(!inst.files().path(&id(1)).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
