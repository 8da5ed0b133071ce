//! An NBD export as a medium: the `nbd` store, which serves a vbd from a
//! network block device server through libnbd — a qcow2 image behind
//! `qemu-nbd`, any nbdkit plugin, and whatever those reach.
//!
//! The vbd's target (`params`) is an NBD URI: `nbd://host[:port]/export`,
//! `nbd+unix:///export?socket=/path`, or their TLS (`nbds`) and vsock forms,
//! as libnbd's `nbd_connect_uri(3)` reads them. The store connects once, at
//! open (giving up after [`OPEN_TIMEOUT`]: a server that never answers the
//! handshake cannot hold the vbd's thread), and takes from the export:
//! - its size (`sectors`, in 512-byte units) and its minimum block size,
//!   which raises the logical sector size the store emulates; the preferred
//!   block size is the physical sector size;
//! - whether it is read-only (writes and discards are then refused),
//!   whether it flushes (`NBD_CMD_FLUSH`, else no flush is offered),
//!   whether it trims (`NBD_CMD_TRIM`: discard, never secure) and whether
//!   it writes zeroes (`NBD_CMD_WRITE_ZEROES`).
//!
//! What each I/O becomes: a read `NBD_CMD_READ`, a write `NBD_CMD_WRITE`,
//! a flush `NBD_CMD_FLUSH`, a discard `NBD_CMD_TRIM`; a write whose bytes
//! are all zero becomes `NBD_CMD_WRITE_ZEROES` when the export offers it.
//! blkif has no write-zeroes operation, so a Linux guest zeroes a range
//! (`BLKZEROOUT`, `mkfs`, `blkdiscard -z`) by writing pages of zeros: sent
//! as write-zeroes they cross no wire and leave a qcow2 image sparse. The
//! range stays allocated (`NO_HOLE`) unless the export trims, that is,
//! unless its administrator let discards free space (`qemu-nbd
//! --discard=unmap`).
//!
//! One I/O thread per store owns the connection: [`UserStore::submit`]
//! (from any thread: every queue of a vbd submits to its one store)
//! checks the I/O as every store does (alignment, range, mode), queues it
//! and wakes the thread, which issues it as NBD commands — one per buffer
//! piece, split at the export's maximum request size, pipelined with every
//! other I/O in flight — and polls the socket. When the last command of an
//! I/O has completed, its outcome goes to the store's [`CompletionFn`],
//! from the I/O thread, exactly as the file and device stores report from
//! their workers. The commands report through a fixed table of
//! [`SLOTS`] countdowns made at open (`nbd_sys::Connection`); an I/O
//! waits in the queue while every slot is busy.
//!
//! Nothing is allocated per I/O on the store's side: the queue, the
//! backlog and the table of finished I/Os are made at open for
//! [`QUEUE_CAPACITY`] I/Os (beyond that they grow once, to the high-water
//! mark, and keep it), slots and bounce chunks are fixed tables, and every
//! libnbd callback reports into the slot table. libnbd itself allocates
//! one record per command it has on the wire (`nbd_aio_*`), which no caller
//! can avoid.
//!
//! A server that goes away fails the I/O in flight and every later one
//! with [`IoError::Gone`] (no reconnection). Closing waits for the I/O in
//! flight; a server that stops answering is cut off after
//! [`CLOSE_GRACE`], so a detach cannot hang on it.

use std::collections::VecDeque;
use std::ffi::CString;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use xbb::host::{IoError, IoTag, MediumInfo, OpenError};
use xbb::units::{Bytes, Sectors};

use crate::jobs::{Job, Jobs};
use crate::locked;
use crate::medium::{io_error, validate_io, DiscardCaps, Geometry};
use crate::nbd_sys::{self, Arena, Command, Connection, EventFd, ExportFlags, Handle, NbdError};
use crate::{CompletionFn, IoFaults, RawIoVec, StoreIo, UserStore};

/// I/Os one store has on the wire at once; more wait in its queue.
pub const SLOTS: usize = 256;
/// The largest read or write sent as one command when the export states no
/// maximum (qemu-nbd's and nbdkit's limit is 32 MiB).
const MAX_COMMAND: u64 = 32 << 20;
/// The largest trim sent as one command (NBD lengths are 32-bit).
const MAX_TRIM: u64 = 1 << 30;
/// How long a closing store waits for a server that stopped answering
/// before it shuts the connection down. xbb-serve only closes a store with
/// I/O in flight after its own drain limit (60 s) ran out: together they
/// stay within the systemd unit's stop timeout (90 s).
pub const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// How long opening a store waits for the server's handshake. libxl waits
/// 10 s for a new vbd to reach InitWait, which comes after the open.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// I/Os the store's queues hold without growing: more than a Linux
/// front-end keeps in flight by default (up to four queues of 32-request
/// rings); a larger one makes them grow once, to its high-water mark.
pub const QUEUE_CAPACITY: usize = 1024;
/// An I/O of several buffer pieces up to this size is bounced: copied into
/// (or read into, then out of) one chunk of the store's own memory and sent
/// as one command. A guest's request arrives as many pieces (each mapped
/// grant is a piece), and servers take one large command far faster than
/// many page-sized ones (qemu-nbd over qcow2: about ten times).
const BOUNCE_CHUNK: usize = 1 << 20;
/// Bounce chunks per store; an I/O that finds none free goes out piece by
/// piece.
const BOUNCE_CHUNKS: usize = 8;

/// The URI schemes libnbd connects to that name an NBD export.
const SCHEMES: [&str; 6] = [
    "nbd://",
    "nbds://",
    "nbd+unix://",
    "nbds+unix://",
    "nbd+vsock://",
    "nbds+vsock://",
];

/// Whether a vbd's target names an NBD export rather than a file or device.
pub fn is_nbd_uri(target: &str) -> bool {
    SCHEMES.iter().any(|s| target.starts_with(s))
}

/// How to open an NBD store.
#[derive(Clone, Debug)]
pub struct NbdSpec {
    /// The export's URI (see [`is_nbd_uri`]).
    pub uri: String,
    /// Open for writing; otherwise the store is read-only.
    pub writable: bool,
    /// The logical sector size to emulate (a power of two from 512 to
    /// 65536); an export whose minimum block size is larger imposes its own.
    pub sector_size: u32,
    /// Fault injection shared with the scenario, if any.
    pub faults: Option<Arc<IoFaults>>,
    /// How long closing waits for commands on the wire before it cuts the
    /// connection ([`CLOSE_GRACE`] unless a test wants it short).
    pub close_grace: Duration,
    /// How long opening waits for the handshake ([`OPEN_TIMEOUT`] unless a
    /// test wants it short).
    pub open_timeout: Duration,
}

impl NbdSpec {
    /// A writable export with 512-byte sectors, no faults, the usual grace.
    pub fn new(uri: &str) -> NbdSpec {
        NbdSpec {
            uri: uri.to_string(),
            writable: true,
            sector_size: 512,
            faults: None,
            close_grace: CLOSE_GRACE,
            open_timeout: OPEN_TIMEOUT,
        }
    }
}

/// Whether NBD stores can be opened in this process: `Err` says why not
/// (libnbd.so.0 missing or incomplete).
pub fn libnbd_available() -> Result<(), String> {
    nbd_sys::lib().map(|_| ()).map_err(str::to_string)
}

struct Shared {
    geometry: Geometry,
    info: MediumInfo,
    /// Bytes of one read, write or write-zeroes command, a multiple of the
    /// sector size.
    max_command: u64,
    /// The export writes zeroes; `Some(keep)`: with `NO_HOLE` when `keep`.
    zeroes: Option<bool>,
    jobs: Jobs,
    /// Wakes the I/O thread.
    wake: EventFd,
}

/// A store served from an NBD export; see the module documentation.
pub struct NbdStore {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl core::fmt::Debug for NbdStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NbdStore")
            .field("info", &self.shared.info)
            .finish()
    }
}

/// An open failure, as the platform reports it; the message goes to
/// standard error (the vbd's `error` node only has room for the errno).
fn open_failed(uri: &str, e: &NbdError) -> OpenError {
    eprintln!("xbb-ustore: {uri}: {}", e.msg);
    match e.errno {
        libc::EINVAL | libc::ENOTSUP => OpenError::Invalid,
        libc::ENOENT => OpenError::NotFound,
        libc::EACCES | libc::EPERM => OpenError::Denied,
        errno => OpenError::Other(errno),
    }
}

/// A block size constraint the store can use: a power of two of at most
/// 64 KiB, or `None`.
fn usable_block(b: u64) -> Option<u32> {
    u32::try_from(b)
        .ok()
        .filter(|b| b.is_power_of_two() && *b <= 65536)
}

impl NbdStore {
    /// Connects to the export `spec` names and starts the store's I/O
    /// thread; completions go to `done`.
    pub fn open(spec: &NbdSpec, done: CompletionFn) -> Result<NbdStore, OpenError> {
        let ss = spec.sector_size;
        if !ss.is_power_of_two() || !(512..=65536).contains(&ss) || !is_nbd_uri(&spec.uri) {
            return Err(OpenError::Invalid);
        }
        let uri = CString::new(spec.uri.as_str()).map_err(|_| OpenError::Invalid)?;
        let fail = |e: NbdError| open_failed(&spec.uri, &e);
        let h = Handle::new("xbb").map_err(fail)?;
        if !h.supports_uri() {
            return Err(fail(NbdError {
                msg: String::from("this libnbd cannot parse URIs"),
                errno: libc::ENOTSUP,
            }));
        }
        h.connect_uri(&uri, spec.open_timeout).map_err(fail)?;
        let size = h.size().map_err(fail)?;
        let ExportFlags {
            read_only: export_ro,
            flush: can_flush,
            trim: can_trim,
            zero: can_zero,
        } = h.flags().map_err(fail)?;
        let block = |which| h.block_size(which).map_err(fail);
        let min = block(nbd_sys::SIZE_MINIMUM)?;
        let preferred = block(nbd_sys::SIZE_PREFERRED)?;
        let max = block(nbd_sys::SIZE_MAXIMUM)?;
        let sector_size = match min {
            0 | 1 => ss,
            m => ss.max(usable_block(m).ok_or(OpenError::Invalid)?),
        };
        let physical = usable_block(preferred).map_or(sector_size, |p| p.max(sector_size));
        if size % u64::from(sector_size) != 0 {
            eprintln!(
                "xbb-ustore: {}: export of {size} bytes is not a whole number of {sector_size}-byte sectors",
                spec.uri
            );
            return Err(OpenError::Invalid);
        }
        let max_command = match max {
            0 => MAX_COMMAND,
            m => m.min(MAX_COMMAND),
        };
        let max_command = max_command - max_command % u64::from(sector_size);
        if max_command == 0 {
            return Err(OpenError::Invalid);
        }
        let read_only = !spec.writable || export_ro;
        let discard = if read_only || !can_trim {
            DiscardCaps::default()
        } else {
            DiscardCaps::new(true, false, u64::from(sector_size), 0, sector_size)
        };
        let geometry = Geometry {
            sector_size,
            size,
            read_only,
            discard,
            aligned_buffers: false,
            can_flush,
        };
        let info = MediumInfo {
            sectors: Sectors::from_bytes(Bytes(size)),
            sector_size,
            physical_sector_size: physical,
            read_only,
            can_flush,
            can_discard: discard.discard,
            can_secure_discard: false,
            discard_granularity: discard.granularity,
            discard_alignment: 0,
            is_device: false,
        };
        let wake =
            EventFd::new().map_err(|e| OpenError::Other(e.raw_os_error().unwrap_or(libc::EIO)))?;
        let shared = Arc::new(Shared {
            geometry,
            info,
            max_command,
            // Zeroes may become holes only where discards may.
            zeroes: (can_zero && !read_only).then_some(!discard.discard),
            jobs: Jobs::new(done, spec.faults.clone(), QUEUE_CAPACITY),
            wake,
        });
        let conn = Connection::new(h, SLOTS);
        let sh = Arc::clone(&shared);
        let grace = spec.close_grace;
        let t = thread::Builder::new()
            .name(String::from("xbb-nbd"))
            .spawn(move || IoThread::new(conn, grace).run(&sh))
            .map_err(|e| OpenError::Other(e.raw_os_error().unwrap_or(libc::EAGAIN)))?;
        Ok(NbdStore {
            shared,
            thread: Mutex::new(Some(t)),
        })
    }
}

impl UserStore for NbdStore {
    fn info(&self) -> MediumInfo {
        self.shared.info
    }

    fn submit(&self, tag: IoTag, io: StoreIo) -> Result<(), IoError> {
        let sh = &*self.shared;
        sh.jobs.push(tag, io, |io| {
            validate_io(io.as_ref_io(), &sh.geometry, || None)
        })?;
        sh.wake.wake();
        Ok(())
    }

    fn close(&self) {
        let sh = &*self.shared;
        drop(sh.jobs.drain(|| sh.wake.wake()));
        sh.wake.wake();
        let t = locked(&self.thread).take();
        if let Some(t) = t {
            if t.thread().id() != thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for NbdStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// The errno of a failed command as the core sees it: the connection's end
/// is the medium gone.
fn command_error(errno: i32) -> IoError {
    match errno {
        libc::ENOTCONN | libc::ECONNRESET | libc::ECONNABORTED | libc::EPIPE | libc::ESHUTDOWN => {
            IoError::Gone
        }
        e => io_error(e),
    }
}

/// A bounced I/O's chunk, and for a read the I/O whose buffers get the
/// chunk's bytes once it completed.
struct Bounced {
    chunk: usize,
    len: usize,
    read_into: Option<StoreIo>,
}

/// The I/O thread's own state: the connection, which slots are free, and
/// the I/Os on the wire.
struct IoThread {
    // Declared before `arena`: the connection is closed before the memory
    // its commands may write into is freed.
    conn: Connection,
    /// Bounce chunks; `None` when the memory could not be had.
    arena: Option<Arena>,
    free_chunks: Vec<usize>,
    /// Per slot: its bounce chunk while its I/O is on the wire.
    bounced: Vec<Option<Bounced>>,
    free: Vec<usize>,
    /// (slot, tag) of every I/O with commands on the wire.
    active: Vec<(usize, IoTag)>,
    /// I/Os taken from the queue that wait for a slot.
    backlog: VecDeque<Job>,
    /// Outcomes to report, in order.
    finished: Vec<(IoTag, Result<(), IoError>)>,
    /// When the store started closing with commands on the wire.
    closing_since: Option<Instant>,
    grace: Duration,
    cut_off: bool,
}

impl IoThread {
    fn new(conn: Connection, grace: Duration) -> IoThread {
        IoThread {
            conn,
            arena: Arena::new(BOUNCE_CHUNK * BOUNCE_CHUNKS),
            free_chunks: (0..BOUNCE_CHUNKS).rev().collect(),
            bounced: (0..SLOTS).map(|_| None).collect(),
            free: (0..SLOTS).rev().collect(),
            active: Vec::with_capacity(SLOTS),
            backlog: VecDeque::with_capacity(QUEUE_CAPACITY),
            finished: Vec::with_capacity(QUEUE_CAPACITY),
            closing_since: None,
            grace,
            cut_off: false,
        }
    }

    fn run(mut self, sh: &Shared) {
        let mut fds = [
            libc::pollfd {
                fd: sh.wake.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: -1,
                events: 0,
                revents: 0,
            },
        ];
        loop {
            let closing = {
                let mut q = sh.jobs.lock();
                // The two queues trade places when the backlog is empty
                // (nothing copied, each keeps its capacity).
                if self.backlog.is_empty() {
                    std::mem::swap(&mut self.backlog, &mut q.jobs);
                } else {
                    self.backlog.append(&mut q.jobs);
                }
                q.closing
            };
            self.start(sh);
            self.report(sh);
            if closing && self.active.is_empty() && self.backlog.is_empty() {
                break;
            }
            if closing && !self.active.is_empty() {
                self.watch_grace();
            }
            let h = self.conn.handle();
            let dir = h.direction();
            fds[1].fd = h.fd().filter(|_| !h.is_dead() && dir != 0).unwrap_or(-1);
            fds[1].events = nbd_sys::direction_events(dir);
            let timeout = if closing { 100 } else { -1 };
            if nbd_sys::poll(&mut fds, timeout).is_err() {
                // poll itself failed (EINVAL, ENOMEM): do not spin.
                thread::sleep(Duration::from_millis(10));
            }
            if fds[0].revents != 0 {
                sh.wake.clear();
            }
            if fds[1].fd >= 0 {
                // A failure leaves the handle dead, which the next turn
                // sees: every command's callback has run by then.
                let _ = h.notify(fds[1].revents);
            }
            self.collect();
        }
        if !self.conn.handle().is_dead() {
            self.conn.handle().shutdown();
        }
        // Dropping `self` closes the handle, then frees the countdowns.
    }

    /// Issues queued I/Os while slots are free; an I/O the connection can
    /// no longer serve is finished at once.
    fn start(&mut self, sh: &Shared) {
        while let Some(slot) = self.free.last().copied() {
            let Some(job) = self.backlog.pop_front() else {
                break;
            };
            let outcome = match job.outcome {
                Some(e) => Some(e),
                None if self.conn.handle().is_dead() => Some(IoError::Gone),
                None => None,
            };
            if let Some(e) = outcome {
                self.finished.push((job.tag, Err(e)));
                continue;
            }
            self.conn.reset(slot);
            let io = if self.zeroes(sh, slot, &job.io) {
                Some(job.io)
            } else {
                match self.bounce(slot, job.io) {
                    Ok(()) => None,
                    Err(io) => {
                        self.issue(sh, slot, &io);
                        Some(io)
                    }
                }
            };
            // The buffers stay the submitter's until the completion; a
            // bounced read keeps its I/O for the copy out.
            drop(io);
            if self.conn.state(slot).0 == 0 {
                // Nothing on the wire: empty, or every command refused.
                self.unbounce(slot, false);
                let r = self.result(slot);
                self.finished.push((job.tag, r));
            } else {
                self.free.pop();
                self.active.push((slot, job.tag));
            }
        }
    }

    /// Sends a write whose bytes are all zero as write-zeroes commands, when
    /// the export takes them; `false` (nothing sent) otherwise.
    fn zeroes(&self, sh: &Shared, slot: usize, io: &StoreIo) -> bool {
        let (Some(keep), StoreIo::Write { offset, iov }) = (sh.zeroes, io) else {
            return false;
        };
        if !nbd_sys::is_zero(iov) {
            return false;
        }
        let total: u64 = iov.iter().map(|v| v.len as u64).sum();
        let (mut at, end) = (*offset, offset + total);
        while at < end {
            let len = (end - at).min(sh.max_command);
            let cmd = Command::Zero {
                offset: at,
                len,
                keep,
            };
            if let Err(e) = self.conn.issue(slot, cmd) {
                self.conn.fail(slot, e.errno);
                break;
            }
            at += len;
        }
        true
    }

    /// Sends a read or write of several pieces, small enough, as one command
    /// through a free bounce chunk (a write's bytes copied in first);
    /// hands `io` back when it is not bounced.
    fn bounce(&mut self, slot: usize, io: StoreIo) -> Result<(), StoreIo> {
        let (offset, iov, write) = match &io {
            StoreIo::Read { offset, iov } => (*offset, iov, false),
            StoreIo::Write { offset, iov } => (*offset, iov, true),
            _ => return Err(io),
        };
        let total: usize = iov.iter().map(|v| v.len).sum();
        let contiguous = iov.windows(2).all(|w| w[0].addr + w[0].len == w[1].addr);
        let Some(arena) = self.arena.as_ref() else {
            return Err(io);
        };
        if contiguous || total > BOUNCE_CHUNK {
            return Err(io);
        }
        let Some(chunk) = self.free_chunks.pop() else {
            return Err(io);
        };
        let buf = arena.piece(chunk * BOUNCE_CHUNK, total);
        let cmd = if write {
            nbd_sys::copy_pieces(iov, &[buf]);
            Command::Write(buf, offset)
        } else {
            Command::Read(buf, offset)
        };
        if let Err(e) = self.conn.issue(slot, cmd) {
            self.conn.fail(slot, e.errno);
        }
        self.bounced[slot] = Some(Bounced {
            chunk,
            len: total,
            read_into: (!write).then_some(io),
        });
        Ok(())
    }

    /// The I/O of `slot` is over: a bounced read that `succeeded` copies the
    /// chunk out into its buffers; the chunk is free again.
    fn unbounce(&mut self, slot: usize, succeeded: bool) {
        let Some(b) = self.bounced.get_mut(slot).and_then(Option::take) else {
            return;
        };
        if let (true, Some(StoreIo::Read { iov, .. }), Some(arena)) =
            (succeeded, &b.read_into, self.arena.as_ref())
        {
            nbd_sys::copy_pieces(&[arena.piece(b.chunk * BOUNCE_CHUNK, b.len)], iov);
        }
        self.free_chunks.push(b.chunk);
    }

    /// Sends the commands of `io` for `slot`, one per run of contiguous
    /// buffer pieces; stops at the first the connection refuses (recorded
    /// as the slot's error).
    fn issue(&self, sh: &Shared, slot: usize, io: &StoreIo) {
        let send = |cmd| match self.conn.issue(slot, cmd) {
            Ok(()) => true,
            Err(e) => {
                self.conn.fail(slot, e.errno);
                false
            }
        };
        match io {
            StoreIo::Read { offset, iov } | StoreIo::Write { offset, iov } => {
                let write = matches!(io, StoreIo::Write { .. });
                let mut at = *offset;
                let mut i = 0;
                while i < iov.len() {
                    // The longest run of pieces that follow each other in
                    // memory is one buffer.
                    let mut v = iov[i];
                    i += 1;
                    while i < iov.len() && v.addr + v.len == iov[i].addr {
                        v.len += iov[i].len;
                        i += 1;
                    }
                    let mut done = 0usize;
                    while done < v.len {
                        let len = (v.len - done).min(sh.max_command as usize);
                        let piece = RawIoVec {
                            addr: v.addr + done,
                            len,
                        };
                        let cmd = if write {
                            Command::Write(piece, at)
                        } else {
                            Command::Read(piece, at)
                        };
                        if !send(cmd) {
                            return;
                        }
                        done += len;
                        at += len as u64;
                    }
                }
            }
            StoreIo::Flush => {
                send(Command::Flush);
            }
            StoreIo::Discard { offset, len, .. } => {
                let step = MAX_TRIM - MAX_TRIM % u64::from(sh.geometry.sector_size);
                let (mut at, end) = (*offset, offset + len);
                while at < end {
                    let n = (end - at).min(step);
                    if !send(Command::Trim { offset: at, len: n }) {
                        return;
                    }
                    at += n;
                }
            }
        }
    }

    fn result(&self, slot: usize) -> Result<(), IoError> {
        match self.conn.state(slot).1 {
            0 => Ok(()),
            e => Err(command_error(e)),
        }
    }

    /// Moves every I/O whose commands have all completed to `finished`.
    /// On a dead connection that libnbd says has nothing in flight, what
    /// is left can never complete: it fails.
    fn collect(&mut self) {
        let h = self.conn.handle();
        let abandoned = h.is_dead() && h.in_flight() == 0;
        let mut i = 0;
        while i < self.active.len() {
            let (slot, tag) = self.active[i];
            let (left, _) = self.conn.state(slot);
            if left == 0 || abandoned {
                if left != 0 {
                    self.conn.fail(slot, libc::ENOTCONN);
                }
                let r = self.result(slot);
                self.unbounce(slot, r.is_ok());
                self.finished.push((tag, r));
                self.active.swap_remove(i);
                self.free.push(slot);
            } else {
                i += 1;
            }
        }
    }

    /// Reports the finished I/Os, then counts them out of `in_flight`.
    fn report(&mut self, sh: &Shared) {
        sh.jobs.complete(self.finished.drain(..));
    }

    /// Cuts off a server that keeps commands on the wire past the grace.
    fn watch_grace(&mut self) {
        let since = *self.closing_since.get_or_insert_with(Instant::now);
        if !self.cut_off && since.elapsed() >= self.grace {
            if let Some(fd) = self.conn.handle().fd() {
                nbd_sys::shutdown_socket(fd);
            }
            self.cut_off = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nbd_uris_are_told_from_paths() {
        assert!(is_nbd_uri("nbd://127.0.0.1:10809/x"));
        assert!(is_nbd_uri("nbd+unix:///x?socket=/run/s.sock"));
        assert!(is_nbd_uri("nbds://h/e"));
        assert!(!is_nbd_uri("/images/a.img"));
        assert!(!is_nbd_uri("nbd:host:10809"));
        assert!(!is_nbd_uri("file:///images/a.img"));
        assert!(!is_nbd_uri(""));
    }

    #[test]
    fn connection_errors_are_the_medium_gone() {
        for e in [
            libc::ENOTCONN,
            libc::ECONNRESET,
            libc::EPIPE,
            libc::ESHUTDOWN,
        ] {
            assert_eq!(command_error(e), IoError::Gone);
        }
        assert_eq!(command_error(libc::EIO), IoError::Io);
        assert_eq!(command_error(libc::ENOSPC), IoError::NoSpace);
        assert_eq!(command_error(libc::EOPNOTSUPP), IoError::NotSupported);
    }

    #[test]
    fn block_sizes_the_store_can_emulate() {
        assert_eq!(usable_block(512), Some(512));
        assert_eq!(usable_block(65536), Some(65536));
        assert_eq!(usable_block(131072), None);
        assert_eq!(usable_block(3000), None);
        assert_eq!(usable_block(0), None);
    }
}
