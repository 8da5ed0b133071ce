//! libnbd, the NBD client library, loaded at run time: the only `unsafe`
//! of the NBD store (with `sys.rs`, the only `unsafe` of this crate).
//!
//! The library is opened with `dlopen("libnbd.so.0")` the first time an
//! NBD store is opened, so neither building xbb nor running a host without
//! NBD disks needs it (Debian: `libnbd0`; `libnbd-dev` only for the
//! prototype check in `ustore/tests/nbd_abi.rs`). Every function used is
//! declared once below, with its C prototype beside it
//! ([`C_PROTOTYPES`]); the test compiles those prototypes against
//! `<libnbd.h>`, so a declaration that drifted from the library cannot
//! pass.
//!
//! [`Handle`] owns one `struct nbd_handle`; [`Connection`] owns a handle
//! and the table of [`Countdown`]s its commands report to. Their methods
//! are safe:
//! - the handle is valid until it is dropped, and the table outlives it
//!   (dropped after `nbd_close`), so every completion callback finds its
//!   countdown;
//! - a command's buffer is a [`RawIoVec`] of a [`StoreIo`](crate::StoreIo),
//!   whose submitter keeps it mapped until the store reports the I/O
//!   complete, which the store does only once every command of the I/O has
//!   run its callback (libnbd calls each exactly once, also when the
//!   connection dies) — the same obligation `sys.rs` relies on for
//!   `preadv`;
//! - callbacks run only inside the calls that drive the connection
//!   (`notify_*`), on the one thread that owns the `Connection` (it is not
//!   `Sync`).

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::io::RawIoVec;

/// `struct nbd_handle`, opaque.
#[repr(C)]
pub(crate) struct RawHandle {
    _opaque: [u8; 0],
}

/// The completion callback of an asynchronous command
/// (`nbd_completion_callback`, passed by value): called once, with the
/// command's error (0: success) in `*error`; returning 1 retires the
/// command.
pub(crate) type CompletionFn =
    unsafe extern "C" fn(user_data: *mut c_void, error: *mut c_int) -> c_int;

/// `nbd_completion_callback`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Completion {
    pub(crate) callback: Option<CompletionFn>,
    pub(crate) user_data: *mut c_void,
    pub(crate) free: Option<unsafe extern "C" fn(user_data: *mut c_void)>,
}

/// `LIBNBD_SIZE_MINIMUM`.
pub(crate) const SIZE_MINIMUM: c_int = 0;
/// `LIBNBD_SIZE_PREFERRED`.
pub(crate) const SIZE_PREFERRED: c_int = 1;
/// `LIBNBD_SIZE_MAXIMUM`.
pub(crate) const SIZE_MAXIMUM: c_int = 2;
/// `LIBNBD_AIO_DIRECTION_READ`.
pub(crate) const DIRECTION_READ: c_uint = 1;
/// `LIBNBD_AIO_DIRECTION_WRITE`.
pub(crate) const DIRECTION_WRITE: c_uint = 2;
/// `LIBNBD_CMD_FLAG_NO_HOLE`: a write-zeroes command must leave the range
/// allocated (no trim, no punched hole).
pub(crate) const CMD_FLAG_NO_HOLE: u32 = 2;

/// The constants above with their names in `<libnbd.h>`, for the test.
#[doc(hidden)]
pub const C_CONSTANTS: &[(&str, i64)] = &[
    ("LIBNBD_SIZE_MINIMUM", SIZE_MINIMUM as i64),
    ("LIBNBD_SIZE_PREFERRED", SIZE_PREFERRED as i64),
    ("LIBNBD_SIZE_MAXIMUM", SIZE_MAXIMUM as i64),
    ("LIBNBD_AIO_DIRECTION_READ", DIRECTION_READ as i64),
    ("LIBNBD_AIO_DIRECTION_WRITE", DIRECTION_WRITE as i64),
    ("LIBNBD_CMD_FLAG_NO_HOLE", CMD_FLAG_NO_HOLE as i64),
];

/// Declares the table of libnbd functions: each with its Rust type and
/// its C prototype (as a function pointer type), looked up by name.
macro_rules! libnbd {
    ($( $name:ident : $ty:ty = $c:literal ;)*) => {
        /// The libnbd functions xbb uses, resolved from the loaded library.
        #[allow(non_snake_case)]
        pub(crate) struct Lib {
            $( pub(crate) $name: $ty, )*
        }

        /// Every function's C prototype, as `(name, pointer type)`.
        #[doc(hidden)]
        pub const C_PROTOTYPES: &[(&str, &str)] = &[ $( (stringify!($name), $c), )* ];

        impl Lib {
            /// Resolves every function in `lib` (a `dlopen` handle).
            ///
            /// # Safety
            /// `lib` is a live handle of a library whose symbols of these
            /// names have the C prototypes written beside them.
            unsafe fn resolve(lib: *mut c_void) -> Result<Lib, String> {
                Ok(Lib {
                    $( $name: {
                        let name = concat!(stringify!($name), "\0");
                        // SAFETY: `lib` is live (caller) and `name` is
                        // NUL-terminated.
                        let sym = unsafe { libc::dlsym(lib, name.as_ptr().cast::<c_char>()) };
                        if sym.is_null() {
                            return Err(format!("libnbd.so.0 has no {}", stringify!($name)));
                        }
                        // SAFETY: a non-null symbol of this name is the
                        // function whose prototype is declared here (the
                        // caller's promise, checked against <libnbd.h> by
                        // ustore/tests/nbd_abi.rs); data and function
                        // pointers have one size on every target libnbd
                        // runs on.
                        unsafe { core::mem::transmute::<*mut c_void, $ty>(sym) }
                    }, )*
                })
            }
        }
    };
}

libnbd! {
    nbd_create: unsafe extern "C" fn() -> *mut RawHandle =
        "struct nbd_handle *(*)(void)";
    nbd_close: unsafe extern "C" fn(*mut RawHandle) =
        "void (*)(struct nbd_handle *)";
    nbd_get_error: unsafe extern "C" fn() -> *const c_char =
        "const char *(*)(void)";
    nbd_get_errno: unsafe extern "C" fn() -> c_int =
        "int (*)(void)";
    nbd_set_handle_name: unsafe extern "C" fn(*mut RawHandle, *const c_char) -> c_int =
        "int (*)(struct nbd_handle *, const char *)";
    nbd_supports_uri: unsafe extern "C" fn(*mut RawHandle) -> c_int =
        "int (*)(struct nbd_handle *)";
    nbd_aio_connect_uri: unsafe extern "C" fn(*mut RawHandle, *const c_char) -> c_int =
        "int (*)(struct nbd_handle *, const char *)";
    nbd_aio_is_connecting: unsafe extern "C" fn(*mut RawHandle) -> c_int =
        "int (*)(struct nbd_handle *)";
    nbd_aio_is_ready: unsafe extern "C" fn(*mut RawHandle) -> c_int =
        "int (*)(struct nbd_handle *)";
    nbd_is_read_only: unsafe extern "C" fn(*mut RawHandle) -> c_int =
        "int (*)(struct nbd_handle *)";
    nbd_can_flush: unsafe extern "C" fn(*mut RawHandle) -> c_int =
        "int (*)(struct nbd_handle *)";
    nbd_can_trim: unsafe extern "C" fn(*mut RawHandle) -> c_int =
        "int (*)(struct nbd_handle *)";
    nbd_can_zero: unsafe extern "C" fn(*mut RawHandle) -> c_int =
        "int (*)(struct nbd_handle *)";
    nbd_get_size: unsafe extern "C" fn(*mut RawHandle) -> i64 =
        "int64_t (*)(struct nbd_handle *)";
    nbd_get_block_size: unsafe extern "C" fn(*mut RawHandle, c_int) -> i64 =
        "int64_t (*)(struct nbd_handle *, int)";
    nbd_shutdown: unsafe extern "C" fn(*mut RawHandle, u32) -> c_int =
        "int (*)(struct nbd_handle *, uint32_t)";
    nbd_aio_pread: unsafe extern "C" fn(*mut RawHandle, *mut c_void, usize, u64, Completion, u32) -> i64 =
        "int64_t (*)(struct nbd_handle *, void *, size_t, uint64_t, nbd_completion_callback, uint32_t)";
    nbd_aio_pwrite: unsafe extern "C" fn(*mut RawHandle, *const c_void, usize, u64, Completion, u32) -> i64 =
        "int64_t (*)(struct nbd_handle *, const void *, size_t, uint64_t, nbd_completion_callback, uint32_t)";
    nbd_aio_flush: unsafe extern "C" fn(*mut RawHandle, Completion, u32) -> i64 =
        "int64_t (*)(struct nbd_handle *, nbd_completion_callback, uint32_t)";
    nbd_aio_trim: unsafe extern "C" fn(*mut RawHandle, u64, u64, Completion, u32) -> i64 =
        "int64_t (*)(struct nbd_handle *, uint64_t, uint64_t, nbd_completion_callback, uint32_t)";
    nbd_aio_zero: unsafe extern "C" fn(*mut RawHandle, u64, u64, Completion, u32) -> i64 =
        "int64_t (*)(struct nbd_handle *, uint64_t, uint64_t, nbd_completion_callback, uint32_t)";
    nbd_aio_get_fd: unsafe extern "C" fn(*mut RawHandle) -> c_int =
        "int (*)(struct nbd_handle *)";
    nbd_aio_get_direction: unsafe extern "C" fn(*mut RawHandle) -> c_uint =
        "unsigned (*)(struct nbd_handle *)";
    nbd_aio_notify_read: unsafe extern "C" fn(*mut RawHandle) -> c_int =
        "int (*)(struct nbd_handle *)";
    nbd_aio_notify_write: unsafe extern "C" fn(*mut RawHandle) -> c_int =
        "int (*)(struct nbd_handle *)";
    nbd_aio_is_dead: unsafe extern "C" fn(*mut RawHandle) -> c_int =
        "int (*)(struct nbd_handle *)";
    nbd_aio_is_closed: unsafe extern "C" fn(*mut RawHandle) -> c_int =
        "int (*)(struct nbd_handle *)";
    nbd_aio_in_flight: unsafe extern "C" fn(*mut RawHandle) -> c_int =
        "int (*)(struct nbd_handle *)";
}

/// The library, loaded once per process (never unloaded).
static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();

/// libnbd, loaded on first use; the error says why it could not be.
pub(crate) fn lib() -> Result<&'static Lib, &'static str> {
    LIB.get_or_init(|| {
        let name = c"libnbd.so.0";
        // SAFETY: `name` is NUL-terminated; dlopen runs the library's
        // constructors, which libnbd uses only to set up its own state.
        let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if h.is_null() {
            // SAFETY: dlerror returns null or a NUL-terminated string valid
            // until the next dl* call on this thread; it is copied at once.
            let why = unsafe { c_text(libc::dlerror(), "unknown error") };
            return Err(format!("cannot load libnbd.so.0 (Debian: libnbd0): {why}"));
        }
        // SAFETY: `h` is live (never closed), and libnbd.so.0 is the
        // library whose prototypes are declared in the table.
        unsafe { Lib::resolve(h) }
    })
    .as_ref()
    .map_err(String::as_str)
}

/// libnbd's description of the last error of this thread, and its errno
/// (`EIO` when it gave none).
fn last_error(lib: &Lib) -> (String, i32) {
    // SAFETY: both read thread-local state of libnbd; the string is valid
    // until the next libnbd call on this thread and copied at once.
    let (msg, errno) = unsafe {
        let msg = c_text((lib.nbd_get_error)(), "unknown libnbd error");
        (msg, (lib.nbd_get_errno)())
    };
    (msg, if errno > 0 { errno } else { libc::EIO })
}

/// A copy of the message a C library returned, `none` when it gave none.
///
/// # Safety
///
/// `p` is null or points to a NUL-terminated string that stays valid
/// during the call.
unsafe fn c_text(p: *const c_char, none: &str) -> String {
    if p.is_null() {
        return String::from(none);
    }
    // SAFETY: non-null and NUL-terminated, valid for the call (the
    // caller's promise).
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// What an export offers, read once after the handshake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ExportFlags {
    /// Writes, trims and zeroes are refused.
    pub(crate) read_only: bool,
    /// `NBD_CMD_FLUSH`.
    pub(crate) flush: bool,
    /// `NBD_CMD_TRIM`.
    pub(crate) trim: bool,
    /// `NBD_CMD_WRITE_ZEROES`.
    pub(crate) zero: bool,
}

/// The `poll` events that serve libnbd's `direction` (`DIRECTION_*`).
pub(crate) fn direction_events(dir: c_uint) -> i16 {
    let mut events = 0;
    if dir & DIRECTION_READ != 0 {
        events |= libc::POLLIN;
    }
    if dir & DIRECTION_WRITE != 0 {
        events |= libc::POLLOUT;
    }
    events
}

/// A libnbd error: its message and errno.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NbdError {
    pub(crate) msg: String,
    pub(crate) errno: i32,
}

/// One NBD connection (`struct nbd_handle`), closed on drop.
pub(crate) struct Handle {
    lib: &'static Lib,
    h: *mut RawHandle,
}

// SAFETY: libnbd handles are thread-safe (every call takes the handle's
// lock; libnbd(3) "MULTI-THREADING"), and a handle is used by one thread at
// a time here anyway: it is moved to the store's I/O thread after connect.
unsafe impl Send for Handle {}

impl Handle {
    /// A new, unconnected handle.
    pub(crate) fn new(name: &str) -> Result<Handle, NbdError> {
        let lib = lib().map_err(|m| NbdError {
            msg: m.to_string(),
            errno: libc::ELIBACC,
        })?;
        // SAFETY: no arguments; null on failure.
        let h = unsafe { (lib.nbd_create)() };
        if h.is_null() {
            let (msg, errno) = last_error(lib);
            return Err(NbdError { msg, errno });
        }
        let handle = Handle { lib, h };
        if let Ok(n) = CString::new(name) {
            // SAFETY: `h` is live; `n` is NUL-terminated and only read
            // during the call (libnbd copies it).
            unsafe { (lib.nbd_set_handle_name)(h, n.as_ptr()) };
        }
        Ok(handle)
    }

    fn check(&self, r: i64) -> Result<i64, NbdError> {
        if r < 0 {
            let (msg, errno) = last_error(self.lib);
            Err(NbdError { msg, errno })
        } else {
            Ok(r)
        }
    }

    /// Whether this libnbd was built with URI support.
    pub(crate) fn supports_uri(&self) -> bool {
        // SAFETY: `h` is live.
        unsafe { (self.lib.nbd_supports_uri)(self.h) == 1 }
    }

    /// Connects to `uri` and negotiates, giving up after `timeout`: a
    /// server that accepts the connection but never answers the handshake
    /// (or a host that drops it) cannot hold the caller longer.
    /// Name resolution of a host name runs inside libnbd and is bounded by
    /// the resolver's own timeouts.
    pub(crate) fn connect_uri(&self, uri: &CStr, timeout: Duration) -> Result<(), NbdError> {
        // SAFETY: `h` is live; `uri` is NUL-terminated and only read
        // during the call (libnbd copies what it keeps).
        let r = unsafe { (self.lib.nbd_aio_connect_uri)(self.h, uri.as_ptr()) };
        self.check(i64::from(r))?;
        let deadline = Instant::now() + timeout;
        loop {
            // SAFETY: `h` is live.
            if unsafe { (self.lib.nbd_aio_is_ready)(self.h) } == 1 {
                return Ok(());
            }
            // SAFETY: `h` is live.
            let connecting = unsafe { (self.lib.nbd_aio_is_connecting)(self.h) } == 1;
            if !connecting || self.is_dead() {
                return Err(NbdError {
                    msg: String::from("the connection ended during the handshake"),
                    errno: libc::ECONNRESET,
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(fd) = self.fd().filter(|_| !left.is_zero()) else {
                return Err(NbdError {
                    msg: format!("no answer within {} s", timeout.as_secs()),
                    errno: libc::ETIMEDOUT,
                });
            };
            let dir = self.direction();
            let mut fds = [libc::pollfd {
                fd,
                events: direction_events(dir),
                revents: 0,
            }];
            let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
            poll(&mut fds, ms).map_err(|e| NbdError {
                msg: format!("poll: {e}"),
                errno: e.raw_os_error().unwrap_or(libc::EIO),
            })?;
            self.notify(fds[0].revents)?;
        }
    }

    /// What the export offers (`nbd_is_read_only`, `nbd_can_flush`,
    /// `nbd_can_trim`, `nbd_can_zero`).
    pub(crate) fn flags(&self) -> Result<ExportFlags, NbdError> {
        // SAFETY: `h` is live and connected.
        let ro = unsafe { (self.lib.nbd_is_read_only)(self.h) };
        // SAFETY: as above.
        let flush = unsafe { (self.lib.nbd_can_flush)(self.h) };
        // SAFETY: as above.
        let trim = unsafe { (self.lib.nbd_can_trim)(self.h) };
        // SAFETY: as above.
        let zero = unsafe { (self.lib.nbd_can_zero)(self.h) };
        Ok(ExportFlags {
            read_only: self.check(i64::from(ro))? == 1,
            flush: self.check(i64::from(flush))? == 1,
            trim: self.check(i64::from(trim))? == 1,
            zero: self.check(i64::from(zero))? == 1,
        })
    }

    /// The export's size in bytes.
    pub(crate) fn size(&self) -> Result<u64, NbdError> {
        // SAFETY: `h` is live and connected.
        let r = unsafe { (self.lib.nbd_get_size)(self.h) };
        self.check(r).map(|s| s as u64)
    }

    /// One of the export's block size constraints (`SIZE_*`); 0 when the
    /// server states none.
    pub(crate) fn block_size(&self, which: c_int) -> Result<u64, NbdError> {
        // SAFETY: `h` is live and connected.
        let r = unsafe { (self.lib.nbd_get_block_size)(self.h, which) };
        self.check(r).map(|s| s as u64)
    }

    /// The socket to poll, or `None` when there is none (closed, dead).
    pub(crate) fn fd(&self) -> Option<i32> {
        // SAFETY: `h` is live.
        let fd = unsafe { (self.lib.nbd_aio_get_fd)(self.h) };
        (fd >= 0).then_some(fd)
    }

    /// What the connection waits for: `DIRECTION_READ` / `_WRITE` bits.
    pub(crate) fn direction(&self) -> c_uint {
        // SAFETY: `h` is live.
        unsafe { (self.lib.nbd_aio_get_direction)(self.h) }
    }

    /// Lets libnbd act on what `poll` reported for its socket (`revents`):
    /// read first (a reply may change what is to be sent, and a hang-up or
    /// error is seen by reading), else write. Callbacks of completed
    /// commands run inside, on this thread.
    pub(crate) fn notify(&self, revents: i16) -> Result<(), NbdError> {
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            self.notify_read()
        } else if revents & libc::POLLOUT != 0 {
            self.notify_write()
        } else {
            Ok(())
        }
    }

    /// The socket is readable (or hung up): lets libnbd read, which may
    /// run completion callbacks on this thread.
    fn notify_read(&self) -> Result<(), NbdError> {
        // SAFETY: `h` is live; callbacks run here get the user data their
        // commands were issued with (kept valid by those callers).
        let r = unsafe { (self.lib.nbd_aio_notify_read)(self.h) };
        self.check(i64::from(r)).map(|_| ())
    }

    /// The socket is writable: lets libnbd send.
    fn notify_write(&self) -> Result<(), NbdError> {
        // SAFETY: as notify_read.
        let r = unsafe { (self.lib.nbd_aio_notify_write)(self.h) };
        self.check(i64::from(r)).map(|_| ())
    }

    /// The connection is over: it failed (server gone, protocol error)
    /// or was closed.
    pub(crate) fn is_dead(&self) -> bool {
        // SAFETY: `h` is live.
        let dead = unsafe { (self.lib.nbd_aio_is_dead)(self.h) == 1 };
        // SAFETY: `h` is live.
        dead || unsafe { (self.lib.nbd_aio_is_closed)(self.h) == 1 }
    }

    /// Commands issued whose completion has not run.
    pub(crate) fn in_flight(&self) -> i32 {
        // SAFETY: `h` is live.
        unsafe { (self.lib.nbd_aio_in_flight)(self.h) }
    }

    /// Tells the server goodbye (`NBD_CMD_DISC`) when nothing is in flight.
    pub(crate) fn shutdown(&self) {
        // SAFETY: `h` is live; with no command in flight no callback runs.
        unsafe { (self.lib.nbd_shutdown)(self.h, 0) };
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: `h` is live and used by nobody else; after this call it
        // is never used again.
        unsafe { (self.lib.nbd_close)(self.h) };
    }
}

/// What the commands of one I/O report to: how many have not completed,
/// and the first error (errno) one of them had.
#[derive(Debug, Default)]
pub(crate) struct Countdown {
    remaining: Cell<u32>,
    error: Cell<i32>,
}

/// The completion callback of every command: counts the command down on
/// the [`Countdown`] its user data points to. Returns 1: the command is
/// retired at once.
unsafe extern "C" fn count_down(user_data: *mut c_void, error: *mut c_int) -> c_int {
    // SAFETY: every command is issued by `Connection::issue` with a pointer
    // to a countdown of the connection's table, which outlives the handle
    // (see `Connection`'s drop order); callbacks run on the connection's own
    // thread, and the table is only reached through shared references and
    // `Cell`s.
    let c = unsafe { &*(user_data as *const Countdown) };
    let e = if error.is_null() {
        0
    } else {
        // SAFETY: a non-null `error` is libnbd's pointer to the command's
        // error, valid for the call.
        unsafe { *error }
    };
    if e != 0 && c.error.get() == 0 {
        c.error.set(e);
    }
    c.remaining.set(c.remaining.get().saturating_sub(1));
    1
}

/// One command of an I/O.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Command {
    /// Read the buffer's length at `offset` into it.
    Read(RawIoVec, u64),
    /// Write the buffer at `offset`.
    Write(RawIoVec, u64),
    /// Flush the export's write cache.
    Flush,
    /// Trim `len` bytes at `offset`.
    Trim { offset: u64, len: u64 },
    /// Write `len` zero bytes at `offset` (`NBD_CMD_WRITE_ZEROES`); with
    /// `keep`, the range stays allocated (`LIBNBD_CMD_FLAG_NO_HOLE`).
    Zero { offset: u64, len: u64, keep: bool },
}

/// A connected handle and the countdowns its commands report to, one per
/// I/O slot. Used by one thread (not `Sync`).
pub(crate) struct Connection {
    // Declared first: dropped (nbd_close) before the table it points into.
    handle: Handle,
    table: Box<[Countdown]>,
}

impl Connection {
    /// `handle`, with `slots` countdowns.
    pub(crate) fn new(handle: Handle, slots: usize) -> Connection {
        Connection {
            handle,
            table: (0..slots).map(|_| Countdown::default()).collect(),
        }
    }

    /// The handle, for what does not issue commands.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Issues `cmd` for the I/O of `slot`, counted on its countdown.
    ///
    /// The buffer of a `Read` or `Write` is a piece of a
    /// [`StoreIo`](crate::StoreIo)'s buffers, whose submitter's obligation
    /// ([`RawIoVec`]) keeps it mapped until that I/O is reported complete,
    /// or a chunk of an [`Arena`] that outlives the connection; the caller
    /// reports the I/O complete, or reuses the chunk, only when
    /// [`Connection::state`] shows no command of the slot left.
    pub(crate) fn issue(&self, slot: usize, cmd: Command) -> Result<(), NbdError> {
        let c = self.table.get(slot).ok_or_else(|| NbdError {
            msg: String::from("no such slot"),
            errno: libc::EINVAL,
        })?;
        let done = Completion {
            callback: Some(count_down),
            user_data: (c as *const Countdown).cast_mut().cast(),
            free: None,
        };
        let (lib, h) = (self.handle.lib, self.handle.h);
        // Counted before the call: a command may complete inside it.
        c.remaining.set(c.remaining.get() + 1);
        let r = match cmd {
            // SAFETY: `h` is live; the buffer stays valid and unreferenced
            // by Rust until the callback ran (the RawIoVec obligation, as
            // documented above); `done.user_data` points into the table,
            // which outlives the handle.
            Command::Read(v, offset) => unsafe {
                (lib.nbd_aio_pread)(h, v.addr as *mut c_void, v.len, offset, done, 0)
            },
            // SAFETY: as for Read; the buffer is only read.
            Command::Write(v, offset) => unsafe {
                (lib.nbd_aio_pwrite)(h, v.addr as *const c_void, v.len, offset, done, 0)
            },
            // SAFETY: `h` is live; `done.user_data` as above.
            Command::Flush => unsafe { (lib.nbd_aio_flush)(h, done, 0) },
            // SAFETY: `h` is live; `done.user_data` as above.
            Command::Trim { offset, len } => unsafe { (lib.nbd_aio_trim)(h, len, offset, done, 0) },
            // SAFETY: `h` is live; `done.user_data` as above.
            Command::Zero { offset, len, keep } => unsafe {
                let flags = if keep { CMD_FLAG_NO_HOLE } else { 0 };
                (lib.nbd_aio_zero)(h, len, offset, done, flags)
            },
        };
        if r < 0 {
            // Refused: libnbd never calls the callback of a command it did
            // not issue.
            c.remaining.set(c.remaining.get().saturating_sub(1));
            let (msg, errno) = last_error(lib);
            return Err(NbdError { msg, errno });
        }
        Ok(())
    }

    /// Commands of `slot` not completed yet, and the first error (errno,
    /// 0: none) of its commands.
    pub(crate) fn state(&self, slot: usize) -> (u32, i32) {
        self.table
            .get(slot)
            .map_or((0, 0), |c| (c.remaining.get(), c.error.get()))
    }

    /// Records `errno` as the slot's error unless it has one.
    pub(crate) fn fail(&self, slot: usize, errno: i32) {
        if let Some(c) = self.table.get(slot) {
            if c.error.get() == 0 {
                c.error.set(errno);
            }
        }
    }

    /// Makes `slot` ready for the next I/O.
    pub(crate) fn reset(&self, slot: usize) {
        if let Some(c) = self.table.get(slot) {
            c.remaining.set(0);
            c.error.set(0);
        }
    }
}

/// Memory of the store's own for bounced commands: an I/O of many small
/// buffer pieces is copied into (or out of) one chunk of it and sent as one
/// command. Never referenced by Rust code: only addressed as [`RawIoVec`]s,
/// like the submitters' buffers, so libnbd may write into a chunk while
/// another is being filled.
pub(crate) struct Arena {
    ptr: *mut u8,
    layout: std::alloc::Layout,
    /// The report of this memory to the process's watcher (xbb-serve's
    /// fault table), withdrawn before the memory is freed.
    watched: Option<Box<dyn Send>>,
}

// SAFETY: the arena is plain memory owned by one thread at a time (the
// store's I/O thread, after being moved there).
unsafe impl Send for Arena {}

impl Arena {
    /// `len` bytes, page-aligned, zeroed (pages are committed as they are
    /// touched); `None` when that cannot be had.
    pub(crate) fn new(len: usize) -> Option<Arena> {
        let layout = std::alloc::Layout::from_size_align(len.max(1), 4096).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return None;
        }
        let watched = crate::watch::watched(ptr as usize, layout.size());
        Some(Arena {
            ptr,
            layout,
            watched,
        })
    }

    /// Bytes `offset..offset + len` of the arena (clamped to it).
    pub(crate) fn piece(&self, offset: usize, len: usize) -> RawIoVec {
        let offset = offset.min(self.layout.size());
        RawIoVec {
            addr: self.ptr as usize + offset,
            len: len.min(self.layout.size() - offset),
        }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        drop(self.watched.take());
        // SAFETY: allocated in `new` with this layout, freed once; nothing
        // uses it any more (the connection that wrote into it is closed
        // first: see `IoThread`'s field order).
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// Copies the bytes of the pieces of `from`, in order, into the pieces of
/// `to`, in order, as far as both go.
///
/// Both sides are [`RawIoVec`]s under its obligation: `from`'s ranges are
/// mapped and readable, `to`'s mapped and writable, none referenced by Rust
/// code, and the two do not overlap (one side is always an [`Arena`]
/// chunk, the other a submitter's buffers).
pub(crate) fn copy_pieces(from: &[RawIoVec], to: &[RawIoVec]) {
    let (mut fi, mut fo, mut ti, mut to_off) = (0, 0, 0, 0);
    while fi < from.len() && ti < to.len() {
        let (f, t) = (from[fi], to[ti]);
        let n = (f.len - fo).min(t.len - to_off);
        if n > 0 {
            // SAFETY: `f.addr + fo .. + n` lies in a readable piece and
            // `t.addr + to_off .. + n` in a writable one, neither referenced
            // by Rust and not overlapping (the contract above).
            unsafe {
                core::ptr::copy_nonoverlapping(
                    (f.addr + fo) as *const u8,
                    (t.addr + to_off) as *mut u8,
                    n,
                )
            };
        }
        fo += n;
        to_off += n;
        if fo == f.len {
            fi += 1;
            fo = 0;
        }
        if to_off == t.len {
            ti += 1;
            to_off = 0;
        }
    }
}

/// Whether every byte of `pieces` is zero: the test that turns a guest's
/// write of zeros into a write-zeroes command, read word by word through
/// raw pointers and stopping at the first byte that is not zero.
///
/// `pieces` are [`RawIoVec`]s under their obligation: mapped, readable,
/// not referenced by Rust code.
pub(crate) fn is_zero(pieces: &[RawIoVec]) -> bool {
    const WORD: usize = core::mem::size_of::<u64>();
    for p in pieces {
        let words = p.len / WORD;
        for i in 0..words {
            // SAFETY: the word lies in `p.addr .. p.addr + p.len`, a
            // readable range not referenced by Rust (the contract above);
            // an unaligned read assumes nothing of `p.addr`.
            let w = unsafe { core::ptr::read_unaligned((p.addr + i * WORD) as *const u64) };
            if w != 0 {
                return false;
            }
        }
        for i in words * WORD..p.len {
            // SAFETY: as above, one byte inside the piece.
            if unsafe { core::ptr::read((p.addr + i) as *const u8) } != 0 {
                return false;
            }
        }
    }
    true
}

/// A counter the I/O thread sleeps on beside the socket (`eventfd(2)`).
pub(crate) struct EventFd(i32);

impl EventFd {
    pub(crate) fn new() -> std::io::Result<EventFd> {
        // SAFETY: plain system call; the descriptor is owned by the result.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(EventFd(fd))
    }

    pub(crate) fn fd(&self) -> i32 {
        self.0
    }

    /// Wakes the sleeper.
    pub(crate) fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from `one`, alive for the call, to a
        // descriptor this owns; a full counter (EAGAIN) is already a wake.
        unsafe { libc::write(self.0, (&one as *const u64).cast(), 8) };
    }

    /// Consumes every wake.
    pub(crate) fn clear(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into `v`, alive for the call.
        unsafe { libc::read(self.0, (&mut v as *mut u64).cast(), 8) };
    }
}

impl Drop for EventFd {
    fn drop(&mut self) {
        // SAFETY: the descriptor is owned and closed once.
        unsafe { libc::close(self.0) };
    }
}

/// `poll(2)` on `fds` for at most `timeout_ms` (-1: no limit); EINTR is a
/// wake with nothing ready.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> std::io::Result<()> {
    // SAFETY: `fds` is a valid, exclusive array of its length for the call.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
        fds.iter_mut().for_each(|f| f.revents = 0);
    }
    Ok(())
}

/// Shuts the connection's socket down both ways, so that libnbd sees the
/// end of the connection and fails what is in flight (a server that
/// stopped answering cannot hold a closing store forever).
pub(crate) fn shutdown_socket(fd: i32) {
    // SAFETY: plain system call on a descriptor libnbd owns; shutdown does
    // not close it, so libnbd's later close of it stays valid.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}
