//! Every conversion between the core's error types and the integers that
//! cross `sys-glue/xbb_shim.h`: FreeBSD `<sys/errno.h>` values and the
//! `GNTST_*` statuses of Xen's `grant_table.h`.
//!
//! This is the one place where a number becomes an error or an error a
//! number; the shim's callers in [`crate::kernel`] and the entry points in
//! [`crate::entry`] use nothing else.

use core::ffi::c_int;

use xbb::host::{EvtchnError, GrantError, IoError, OpenError, XsError};

/// Operation not permitted.
pub const EPERM: c_int = 1;
/// No such file or directory.
pub const ENOENT: c_int = 2;
/// Input/output error.
pub const EIO: c_int = 5;
/// Device not configured.
pub const ENXIO: c_int = 6;
/// Cannot allocate memory.
pub const ENOMEM: c_int = 12;
/// Permission denied.
pub const EACCES: c_int = 13;
/// Device busy.
pub const EBUSY: c_int = 16;
/// File exists.
pub const EEXIST: c_int = 17;
/// Operation not supported by device.
pub const ENODEV: c_int = 19;
/// Invalid argument.
pub const EINVAL: c_int = 22;
/// No space left on device.
pub const ENOSPC: c_int = 28;
/// Read-only file system.
pub const EROFS: c_int = 30;
/// Result too large.
pub const ERANGE: c_int = 34;
/// Resource temporarily unavailable (FreeBSD's value, not Linux's 11).
pub const EAGAIN: c_int = 35;
/// Operation not supported.
pub const EOPNOTSUPP: c_int = 45;
/// File name too long.
pub const ENAMETOOLONG: c_int = 63;

/// Why an entry point failed, before it becomes an errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// `ENOMEM`.
    NoMemory,
    /// `EINVAL`: a bad argument (NULL pointer, mismatched table).
    Invalid,
    /// `ENOENT`: no such index or node.
    NotFound,
    /// `EBUSY`: still in use (instances alive, I/O in flight).
    Busy,
    /// `EEXIST`: already done (ops table installed twice).
    Exists,
    /// `ENXIO`: the module is not loaded (no ops table).
    NotLoaded,
    /// `EPERM`: a read-only sysctl node.
    ReadOnly,
    /// `ERANGE`: a value outside its bounds.
    Range,
}

impl Error {
    /// The errno the C side sees.
    pub fn errno(self) -> c_int {
        match self {
            Error::NoMemory => ENOMEM,
            Error::Invalid => EINVAL,
            Error::NotFound => ENOENT,
            Error::Busy => EBUSY,
            Error::Exists => EEXIST,
            Error::NotLoaded => ENXIO,
            Error::ReadOnly => EPERM,
            Error::Range => ERANGE,
        }
    }
}

/// An entry point's result as the C side sees it: 0 or a positive errno.
pub fn result_to_errno(r: Result<(), Error>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => e.errno(),
    }
}

/// A XenStore service's errno.
pub fn xs_error(e: c_int) -> XsError {
    match e {
        ENOENT => XsError::NotFound,
        ERANGE | ENAMETOOLONG => XsError::TooLong,
        EAGAIN => XsError::Again,
        EACCES | EPERM => XsError::Denied,
        e => XsError::Other(e),
    }
}

// The statuses of Xen's `grant_table.h` that `grant_status` tells apart.

/// `GNTST_general_error`.
pub const GNTST_GENERAL_ERROR: i32 = -1;
/// `GNTST_bad_domain`.
pub const GNTST_BAD_DOMAIN: i32 = -2;
/// `GNTST_bad_gntref`.
pub const GNTST_BAD_GNTREF: i32 = -3;
/// `GNTST_bad_handle`.
pub const GNTST_BAD_HANDLE: i32 = -4;
/// `GNTST_no_device_space`.
pub const GNTST_NO_DEVICE_SPACE: i32 = -7;
/// `GNTST_permission_denied`.
pub const GNTST_PERMISSION_DENIED: i32 = -8;
/// `GNTST_eagain`.
pub const GNTST_EAGAIN: i32 = -12;
/// `GNTST_no_space`.
pub const GNTST_NO_SPACE: i32 = -13;

/// A grant status (`0`, a negative `GNTST_*`, or a positive errno; see
/// "Grant status" in the header).
pub fn grant_status(s: i32) -> Result<(), GrantError> {
    match s {
        0 => Ok(()),
        GNTST_BAD_DOMAIN | GNTST_BAD_GNTREF | GNTST_BAD_HANDLE | ENOENT => Err(GrantError::BadRef),
        GNTST_PERMISSION_DENIED | EACCES | EPERM => Err(GrantError::Denied),
        GNTST_NO_DEVICE_SPACE | GNTST_NO_SPACE | GNTST_EAGAIN | ENOMEM | ENOSPC | EAGAIN => {
            Err(GrantError::NoSpace)
        }
        _ => Err(GrantError::General),
    }
}

/// An event-channel binding's errno.
pub fn evtchn_error(e: c_int) -> EvtchnError {
    match e {
        EINVAL | ENOENT => EvtchnError::BadPort,
        _ => EvtchnError::General,
    }
}

/// A store open's errno.
pub fn open_error(e: c_int) -> OpenError {
    match e {
        ENOENT | ENXIO | ENODEV => OpenError::NotFound,
        EACCES | EROFS | EPERM => OpenError::Denied,
        EINVAL => OpenError::Invalid,
        e => OpenError::Other(e),
    }
}

/// A store I/O's errno (refused submission or completion); 0 is success.
pub fn io_result(e: c_int) -> Result<(), IoError> {
    match e {
        0 => Ok(()),
        ENXIO | ENODEV => Err(IoError::Gone),
        EOPNOTSUPP => Err(IoError::NotSupported),
        ENOSPC => Err(IoError::NoSpace),
        EAGAIN | ENOMEM => Err(IoError::Busy),
        _ => Err(IoError::Io),
    }
}

/// The errno of a store I/O's result (0 for success), the inverse of
/// [`io_result`].
pub fn io_errno(r: Result<(), IoError>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(IoError::Gone) => ENXIO,
        Err(IoError::NotSupported) => EOPNOTSUPP,
        Err(IoError::NoSpace) => ENOSPC,
        Err(IoError::Busy) => EAGAIN,
        Err(IoError::Io) => EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_direction_is_total_and_distinct() {
        assert_eq!(result_to_errno(Ok(())), 0);
        let all = [
            Error::NoMemory,
            Error::Invalid,
            Error::NotFound,
            Error::Busy,
            Error::Exists,
            Error::NotLoaded,
            Error::ReadOnly,
            Error::Range,
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(a.errno() > 0);
            for b in &all[i + 1..] {
                assert_ne!(a.errno(), b.errno(), "{a:?} {b:?}");
            }
        }
        assert_eq!(xs_error(ENOENT), XsError::NotFound);
        assert_eq!(xs_error(EAGAIN), XsError::Again);
        assert_eq!(xs_error(11), XsError::Other(11));
        assert_eq!(grant_status(0), Ok(()));
        assert_eq!(grant_status(GNTST_BAD_GNTREF), Err(GrantError::BadRef));
        assert_eq!(
            grant_status(GNTST_PERMISSION_DENIED),
            Err(GrantError::Denied)
        );
        assert_eq!(grant_status(ENOMEM), Err(GrantError::NoSpace));
        assert_eq!(grant_status(GNTST_GENERAL_ERROR), Err(GrantError::General));
        assert_eq!(io_result(ENXIO), Err(IoError::Gone));
        assert_eq!(io_result(12345), Err(IoError::Io));
        assert_eq!(open_error(EROFS), OpenError::Denied);
        assert_eq!(evtchn_error(EINVAL), EvtchnError::BadPort);
    }
}
