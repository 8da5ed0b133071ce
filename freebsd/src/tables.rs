//! NUL-terminated copies of the names and descriptions of
//! [`xbb::stats::SYSCTLS`] and [`xbb::stats::TUNABLES`], for the C shim,
//! which builds `dev.xbb.N.*` and `hw.xbb.*` from them with `sysctl(9)`
//! and `TUNABLE_UINT64_FETCH`.
//!
//! The strings are laid out at compile time, from the very tables the core
//! uses, into one static byte array per table; a name or description
//! holding a NUL byte fails the build.

use core::ffi::CStr;

use xbb::stats::{SysctlKind, SYSCTLS, TUNABLES};

/// Which string of a table row.
#[derive(Clone, Copy)]
enum Field {
    Name,
    Descr,
}

/// Which table.
#[derive(Clone, Copy)]
enum Table {
    Sysctls,
    Tunables,
}

const fn rows(t: Table) -> usize {
    match t {
        Table::Sysctls => SYSCTLS.len(),
        Table::Tunables => TUNABLES.len(),
    }
}

const fn field(t: Table, i: usize, f: Field) -> &'static str {
    match (t, f) {
        (Table::Sysctls, Field::Name) => SYSCTLS[i].name,
        (Table::Sysctls, Field::Descr) => SYSCTLS[i].descr,
        (Table::Tunables, Field::Name) => TUNABLES[i].name,
        (Table::Tunables, Field::Descr) => TUNABLES[i].descr,
    }
}

/// Bytes needed for every name and description of `t`, each with its NUL.
const fn blob_len(t: Table) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < rows(t) {
        n += field(t, i, Field::Name).len() + 1 + field(t, i, Field::Descr).len() + 1;
        i += 1;
    }
    n
}

/// Row `i`'s name then description, NUL-terminated, for every row in order.
const fn blob<const N: usize>(t: Table) -> [u8; N] {
    let mut out = [0u8; N];
    let mut at = 0;
    let mut i = 0;
    while i < rows(t) {
        let mut f = 0;
        while f < 2 {
            let s = field(t, i, if f == 0 { Field::Name } else { Field::Descr }).as_bytes();
            let mut j = 0;
            while j < s.len() {
                assert!(s[j] != 0, "NUL inside a sysctl or tunable string");
                out[at] = s[j];
                at += 1;
                j += 1;
            }
            // out[at] stays 0: the terminator.
            at += 1;
            f += 1;
        }
        i += 1;
    }
    assert!(at == N);
    out
}

const SYSCTL_BLOB_LEN: usize = blob_len(Table::Sysctls);
const TUNABLE_BLOB_LEN: usize = blob_len(Table::Tunables);
static SYSCTL_BLOB: [u8; SYSCTL_BLOB_LEN] = blob(Table::Sysctls);
static TUNABLE_BLOB: [u8; TUNABLE_BLOB_LEN] = blob(Table::Tunables);

/// The `2 * index + (0 name | 1 descr)`-th NUL-terminated string of `blob`.
fn nth(blob: &'static [u8], n: usize) -> Option<&'static CStr> {
    let mut rest = blob;
    for _ in 0..n {
        let end = rest.iter().position(|&b| b == 0)?;
        rest = &rest[end + 1..];
    }
    CStr::from_bytes_until_nul(rest).ok()
}

/// `dev.xbb.N.<name>` of sysctl row `index`.
pub fn sysctl_name(index: usize) -> Option<&'static CStr> {
    nth(&SYSCTL_BLOB, index.checked_mul(2)?)
}

/// The description of sysctl row `index`.
pub fn sysctl_descr(index: usize) -> Option<&'static CStr> {
    nth(&SYSCTL_BLOB, index.checked_mul(2)?.checked_add(1)?)
}

/// `hw.xbb.<name>` (the leaf) of tunable row `index`.
pub fn tunable_name(index: usize) -> Option<&'static CStr> {
    nth(&TUNABLE_BLOB, index.checked_mul(2)?)
}

/// The description of tunable row `index`.
pub fn tunable_descr(index: usize) -> Option<&'static CStr> {
    nth(&TUNABLE_BLOB, index.checked_mul(2)?.checked_add(1)?)
}

/// The `XBB_SHIM_SYSCTL_*` value of a kind.
pub fn kind_code(kind: SysctlKind) -> u32 {
    use crate::ffi;
    match kind {
        SysctlKind::Limit => ffi::XBB_SHIM_SYSCTL_LIMIT,
        SysctlKind::Counter => ffi::XBB_SHIM_SYSCTL_COUNTER,
        SysctlKind::Switch => ffi::XBB_SHIM_SYSCTL_SWITCH,
        SysctlKind::Gauge => ffi::XBB_SHIM_SYSCTL_GAUGE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_match_the_tables() {
        for (i, d) in SYSCTLS.iter().enumerate() {
            assert_eq!(sysctl_name(i).unwrap().to_bytes(), d.name.as_bytes());
            assert_eq!(sysctl_descr(i).unwrap().to_bytes(), d.descr.as_bytes());
        }
        assert!(sysctl_name(SYSCTLS.len()).is_none());
        for (i, d) in TUNABLES.iter().enumerate() {
            assert_eq!(tunable_name(i).unwrap().to_bytes(), d.name.as_bytes());
            assert_eq!(tunable_descr(i).unwrap().to_bytes(), d.descr.as_bytes());
        }
        assert!(tunable_descr(TUNABLES.len()).is_none());
        assert!(tunable_name(usize::MAX).is_none());
    }
}
