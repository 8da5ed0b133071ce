//! What xbb-serve says when it dies of a signal.
//!
//! A back-end process must never crash, and when one does anyway the log
//! must say whether the fault was ours: an access to guest memory that was
//! never wholly mapped, or is already unmapped, or something else. Every
//! range this process maps for a guest — ring pages and data ranges from
//! `/dev/xen/gntdev`, bounce buffers of copy mode, the bounce chunks an NBD
//! store copies guest data through ([`track_store_memory`]) — is entered
//! into a fixed table of [`SLOTS`] entries when it is mapped and removed
//! before it is unmapped ([`Tracked`]). [`install`] sets a handler for `SIGSEGV`,
//! `SIGBUS`, `SIGILL`, `SIGFPE` and `SIGABRT` that writes, with nothing but
//! `write(2)` on standard error:
//!
//! ```text
//! xbb-serve: fatal signal 11 (SIGSEGV) code 1 address 0x7f990ff05de0 ip 0x7f123b061639 thread xbb1 tid 2453
//! xbb-serve: the address is in no live mapping of guest memory
//! xbb-serve: live mappings: 3
//! xbb-serve:   ring 0x7f12000000-0x7f12004000 (4 pages)
//! ...
//! xbb-serve: /proc/self/maps:
//! ```
//!
//! then hands the signal to the handler that was there before (the Rust
//! runtime's stack-overflow check, or the default action and its core
//! dump). The table is lock-free, and neither registering nor the handler
//! allocates. A full table is counted, not grown: the report then says how
//! many mappings it cannot list.

#![allow(unsafe_code)]

use core::sync::atomic::{AtomicUsize, Ordering};

/// Entries in the table of live mappings.
pub const SLOTS: usize = 8192;

/// What a tracked range holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Kind {
    /// A shared ring's pages (gntdev).
    Ring = 1,
    /// Data pages of requests (gntdev).
    Data = 2,
    /// The bounce buffer of copy mode (this process's own memory).
    Bounce = 3,
    /// Memory a store copies guest data through (the NBD store's bounce
    /// chunks; this process's own memory).
    StoreBounce = 4,
}

impl Kind {
    fn name(v: usize) -> &'static [u8] {
        match v {
            1 => b"ring",
            2 => b"data",
            3 => b"bounce",
            4 => b"store-bounce",
            _ => b"?",
        }
    }
}

// A slot is free when its start is 0. `LEN` holds the length in bytes (a
// multiple of the page size) with the kind in its low bits.
#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicUsize = AtomicUsize::new(0);
static START: [AtomicUsize; SLOTS] = [ZERO; SLOTS];
static LEN: [AtomicUsize; SLOTS] = [ZERO; SLOTS];
static CURSOR: AtomicUsize = AtomicUsize::new(0);
static UNTRACKED: AtomicUsize = AtomicUsize::new(0);

/// A range entered into the table; [`Tracked::release`] (or drop) removes it.
#[derive(Debug)]
pub struct Tracked {
    entry: Entry,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    Slot(usize),
    /// The table was full: counted in `UNTRACKED`.
    Overflow,
    /// Nothing to track (a null range), or already released.
    None,
}

impl Tracked {
    /// Enters `[addr, addr + len)` of `kind`. Never fails: when the table
    /// is full the range is counted as untracked instead.
    pub fn new(addr: usize, len: usize, kind: Kind) -> Tracked {
        if addr == 0 {
            return Tracked { entry: Entry::None };
        }
        let first = CURSOR.fetch_add(1, Ordering::Relaxed);
        for i in 0..SLOTS {
            let s = (first.wrapping_add(i)) % SLOTS;
            // A slot is claimed by exactly one successful CAS of its start;
            // the handler reads the table as a best-effort snapshot.
            if START[s]
                .compare_exchange(0, addr, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                LEN[s].store((len & !0xfff) | kind as usize, Ordering::Release);
                return Tracked {
                    entry: Entry::Slot(s),
                };
            }
        }
        UNTRACKED.fetch_add(1, Ordering::Relaxed);
        Tracked {
            entry: Entry::Overflow,
        }
    }

    /// Removes the range, before it is unmapped.
    pub fn release(mut self) {
        self.clear();
    }

    fn clear(&mut self) {
        match core::mem::replace(&mut self.entry, Entry::None) {
            Entry::Slot(s) => {
                LEN[s].store(0, Ordering::Release);
                START[s].store(0, Ordering::Release);
            }
            Entry::Overflow => {
                UNTRACKED.fetch_sub(1, Ordering::Relaxed);
            }
            Entry::None => {}
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Enters `len` bytes of store memory at `addr` ([`Kind::StoreBounce`]);
/// the result removes them when dropped. The watcher
/// [`track_store_memory`] installs.
pub fn track_store_range(addr: usize, len: usize) -> Box<dyn Send> {
    Box::new(Tracked::new(addr, len, Kind::StoreBounce))
}

/// Has the user-space stores report the memory they copy guest data
/// through (`xbb_ustore::watch_store_memory`), so that it is tracked like
/// every mapping of guest memory. Call once, before the first store opens.
pub fn track_store_memory() {
    xbb_ustore::watch_store_memory(track_store_range);
}

/// Ranges currently tracked (for tests and the `dev.xbb` table's view).
pub fn live_ranges() -> usize {
    START
        .iter()
        .filter(|s| s.load(Ordering::Acquire) != 0)
        .count()
}

const SIGNALS: [libc::c_int; 5] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGABRT,
];

// The actions that were installed before ours, one per entry of SIGNALS,
// written once by `install` before the handler can run.
static mut PREVIOUS: [Option<libc::sigaction>; 5] = [None; 5];

/// Installs the fatal-signal report. Call once, early in `main` (after the
/// Rust runtime set up its own handlers, which stay chained).
pub fn install() -> std::io::Result<()> {
    for (i, &sig) in SIGNALS.iter().enumerate() {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask"
        // value; the handler is an `extern "C"` function of the signature
        // SA_SIGINFO requires. PREVIOUS is written before the new action
        // is installed and only read by the handler afterwards; `install`
        // runs once, before any other thread of ours exists.
        unsafe {
            let mut act: libc::sigaction = core::mem::zeroed();
            act.sa_sigaction = handler as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut act.sa_mask);
            let mut old: libc::sigaction = core::mem::zeroed();
            if libc::sigaction(sig, core::ptr::null(), &mut old) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let prev = core::ptr::addr_of_mut!(PREVIOUS);
            (*prev)[i] = Some(old);
            if libc::sigaction(sig, &act, core::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// A line buffer on the stack: the handler may not allocate.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn new() -> Line {
        Line {
            buf: [0; 256],
            len: 0,
        }
    }
    fn s(&mut self, b: &[u8]) -> &mut Line {
        for &c in b {
            if self.len < self.buf.len() {
                self.buf[self.len] = c;
                self.len += 1;
            }
        }
        self
    }
    fn dec(&mut self, mut v: u64) -> &mut Line {
        let mut d = [0u8; 20];
        let mut n = 0;
        loop {
            d[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        while n > 0 {
            n -= 1;
            self.s(&[d[n]]);
        }
        self
    }
    fn hex(&mut self, v: u64) -> &mut Line {
        self.s(b"0x");
        let mut started = false;
        for i in (0..16).rev() {
            let nib = ((v >> (i * 4)) & 0xf) as u8;
            if nib != 0 || started || i == 0 {
                started = true;
                self.s(&[b"0123456789abcdef"[nib as usize]]);
            }
        }
        self
    }
    fn emit(&mut self) {
        self.s(b"\n");
        write_all(&self.buf[..self.len]);
        self.len = 0;
    }
}

fn write_all(mut b: &[u8]) {
    while !b.is_empty() {
        // SAFETY: writes from a live slice to standard error.
        let n = unsafe { libc::write(2, b.as_ptr() as *const libc::c_void, b.len()) };
        if n <= 0 {
            return;
        }
        b = &b[n as usize..];
    }
}

fn signal_name(sig: libc::c_int) -> &'static [u8] {
    match sig {
        libc::SIGSEGV => b"SIGSEGV",
        libc::SIGBUS => b"SIGBUS",
        libc::SIGILL => b"SIGILL",
        libc::SIGFPE => b"SIGFPE",
        libc::SIGABRT => b"SIGABRT",
        _ => b"?",
    }
}

/// Copies /proc/self/maps to standard error with open/read/write only.
fn dump_maps() {
    let path = b"/proc/self/maps\0";
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe { libc::open(path.as_ptr() as *const libc::c_char, libc::O_RDONLY) };
    if fd < 0 {
        return;
    }
    let mut buf = [0u8; 1024];
    loop {
        // SAFETY: reads into a live stack buffer of its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n <= 0 {
            break;
        }
        write_all(&buf[..n as usize]);
    }
    // SAFETY: the descriptor opened above, closed once.
    unsafe { libc::close(fd) };
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo and ucontext to an
    // SA_SIGINFO handler; both are only read.
    let (addr, code, ip) = unsafe {
        let uc = ctx as *const libc::ucontext_t;
        let ip = if uc.is_null() {
            0
        } else {
            (*uc).uc_mcontext.gregs[libc::REG_RIP as usize] as u64
        };
        ((*info).si_addr() as u64, (*info).si_code, ip)
    };
    let mut name = [0u8; 17];
    // SAFETY: PR_GET_NAME writes at most 16 bytes and a NUL into `name`.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    let name_len = name.iter().position(|&c| c == 0).unwrap_or(16);
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u64;

    let mut l = Line::new();
    l.s(b"xbb-serve: fatal signal ")
        .dec(sig as u64)
        .s(b" (")
        .s(signal_name(sig))
        .s(b") code ")
        .dec(code as u64)
        .s(b" address ")
        .hex(addr)
        .s(b" ip ")
        .hex(ip)
        .s(b" thread ")
        .s(&name[..name_len])
        .s(b" tid ")
        .dec(tid)
        .emit();

    let mut live = 0u64;
    let mut inside: Option<(usize, u64, u64)> = None;
    for s in 0..SLOTS {
        let start = START[s].load(Ordering::Acquire) as u64;
        if start == 0 {
            continue;
        }
        live += 1;
        let lk = LEN[s].load(Ordering::Acquire);
        let len = (lk & !0xfff) as u64;
        if addr >= start && addr - start < len.max(1) {
            inside = Some((lk & 0xfff, start, len));
        }
    }
    match inside {
        Some((kind, start, len)) => {
            l.s(b"xbb-serve: the address is inside a live ")
                .s(Kind::name(kind))
                .s(b" mapping ")
                .hex(start)
                .s(b"-")
                .hex(start + len)
                .emit();
        }
        None => {
            l.s(b"xbb-serve: the address is in no live mapping of guest memory")
                .emit();
        }
    }
    l.s(b"xbb-serve: live mappings: ")
        .dec(live)
        .s(b", untracked: ")
        .dec(UNTRACKED.load(Ordering::Relaxed) as u64)
        .emit();
    let mut listed = 0;
    for s in 0..SLOTS {
        let start = START[s].load(Ordering::Acquire) as u64;
        if start == 0 {
            continue;
        }
        listed += 1;
        if listed > 64 {
            l.s(b"xbb-serve:   ... (the rest not listed)").emit();
            break;
        }
        let lk = LEN[s].load(Ordering::Acquire);
        let len = (lk & !0xfff) as u64;
        l.s(b"xbb-serve:   ")
            .s(Kind::name(lk & 0xfff))
            .s(b" ")
            .hex(start)
            .s(b"-")
            .hex(start + len)
            .s(b" (")
            .dec(len / 4096)
            .s(b" pages)")
            .emit();
    }
    l.s(b"xbb-serve: /proc/self/maps:").emit();
    dump_maps();

    // Hand over to whatever was there before: the fault re-occurs on
    // return (or is re-raised when it was sent) and the previous handler,
    // or the default action with its core dump, deals with it.
    if let Some(i) = SIGNALS.iter().position(|&s| s == sig) {
        // SAFETY: PREVIOUS was written by `install` before this handler
        // was installed; restoring an action is async-signal-safe.
        unsafe {
            let prev = core::ptr::addr_of!(PREVIOUS);
            match (*prev)[i] {
                Some(old) => libc::sigaction(sig, &old, core::ptr::null_mut()),
                None => libc::signal(sig, libc::SIG_DFL) as libc::c_int,
            };
        }
    }
    if code <= 0 {
        // Sent by kill(2) or raise(3): nothing re-faults, so re-raise.
        // SAFETY: raise is async-signal-safe.
        unsafe { libc::raise(sig) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const CHILD: &str = "XBB_FAULT_CHILD";

    /// Runs `case` of `child` in a fresh copy of this test binary and
    /// returns its standard error and the signal that ended it.
    fn run_child(case: &str) -> (String, Option<i32>) {
        let exe = std::env::current_exe().unwrap();
        let out = Command::new(exe)
            .args(["--exact", "fault::tests::child", "--nocapture"])
            .env(CHILD, case)
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        (
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.signal(),
        )
    }

    /// Not a test on its own: the body of the child processes of the tests
    /// below, which die of the signal they report.
    #[test]
    fn child() {
        let Ok(case) = std::env::var(CHILD) else {
            return;
        };
        install().unwrap();
        let bounce = crate::ffi::AnonPages::new(2).unwrap();
        match case.as_str() {
            "unmapped" => {
                // A page that was mapped and is gone again, as a grant range
                // read after its unmap would be.
                let p = crate::ffi::AnonPages::new(1).unwrap();
                let addr = p.addr() + 0x28;
                drop(p);
                eprintln!("child: reading {addr:#x}");
                // SAFETY: none; this read faults on purpose.
                let _ = unsafe { core::ptr::read_volatile(addr as *const u64) };
            }
            "inside" => {
                // A fault inside a live tracked range (made inaccessible).
                let addr = bounce.addr() + 4096 + 8;
                // SAFETY: revokes access to the second page of our own
                // mapping; the read below faults on purpose.
                unsafe {
                    libc::mprotect(
                        (bounce.addr() + 4096) as *mut libc::c_void,
                        4096,
                        libc::PROT_NONE,
                    );
                }
                eprintln!("child: reading {addr:#x}");
                // SAFETY: none; this read faults on purpose.
                let _ = unsafe { core::ptr::read_volatile(addr as *const u64) };
            }
            "abort" => std::process::abort(),
            _ => {}
        }
        drop(bounce);
        std::process::exit(3);
    }

    fn faulting_address(err: &str) -> String {
        err.lines()
            .find_map(|l| l.strip_prefix("child: reading "))
            .unwrap()
            .to_string()
    }

    #[test]
    fn a_read_of_unmapped_memory_is_reported_with_the_live_mappings() {
        let (err, sig) = run_child("unmapped");
        assert_eq!(sig, Some(libc::SIGSEGV), "{err}");
        let addr = faulting_address(&err);
        assert!(
            err.contains(&format!(
                "xbb-serve: fatal signal 11 (SIGSEGV) code 1 address {addr} "
            )),
            "{err}"
        );
        assert!(err.contains("thread fault::tests::c"), "{err}");
        assert!(
            err.contains("the address is in no live mapping of guest memory"),
            "{err}"
        );
        assert!(err.contains("xbb-serve:   bounce 0x"), "{err}");
        assert!(err.contains("(2 pages)"), "{err}");
        assert!(err.contains("xbb-serve: /proc/self/maps:"), "{err}");
        assert!(err.contains("[stack]"), "{err}");
    }

    #[test]
    fn a_fault_inside_a_live_mapping_names_it() {
        let (err, sig) = run_child("inside");
        assert_eq!(sig, Some(libc::SIGSEGV), "{err}");
        let addr = faulting_address(&err);
        assert!(err.contains(&format!("address {addr} ")), "{err}");
        assert!(
            err.contains("the address is inside a live bounce mapping 0x"),
            "{err}"
        );
    }

    #[test]
    fn an_abort_is_reported_and_still_aborts() {
        let (err, sig) = run_child("abort");
        assert_eq!(sig, Some(libc::SIGABRT), "{err}");
        assert!(err.contains("xbb-serve: fatal signal 6 (SIGABRT)"), "{err}");
    }

    #[test]
    fn store_memory_is_tracked_as_store_bounce_until_dropped() {
        let token = track_store_range(0x2000_0000, 1 << 20);
        let slot = START
            .iter()
            .position(|s| s.load(Ordering::Acquire) == 0x2000_0000)
            .expect("store memory tracked");
        let lk = LEN[slot].load(Ordering::Acquire);
        assert_eq!(lk & !0xfff, 1 << 20);
        assert_eq!(Kind::name(lk & 0xfff), b"store-bounce");
        drop(token);
        assert!(START
            .iter()
            .all(|s| s.load(Ordering::Acquire) != 0x2000_0000));
    }

    #[test]
    fn tracking_is_released_and_counts_overflow() {
        let before = live_ranges();
        let t = Tracked::new(0x1000_0000, 8192, Kind::Data);
        assert!(live_ranges() > before);
        t.release();
        // Other tests may track ranges concurrently; ours is gone.
        assert!(START
            .iter()
            .all(|s| s.load(Ordering::Acquire) != 0x1000_0000));
        let z = Tracked::new(0, 4096, Kind::Ring);
        assert_eq!(z.entry, Entry::None);
    }
}
