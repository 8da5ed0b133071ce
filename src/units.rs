//! Units as types where a mix-up is possible.
//!
//! `io/blkif.h` counts the medium in 512-byte sectors ([`Sectors`]:
//! `sector_number`, `nr_sectors`, the `sectors` node) whatever the medium's
//! own logical sector size ([`SectorSize`], in bytes), while a store is
//! addressed in bytes ([`Bytes`]); the grant mappings of a connection are
//! placed by page of its data window ([`WindowPage`]), while each queue's
//! allocator counts pages from the start of its own share. Each quantity
//! has its type, and the conversions between them are the methods below,
//! so a 512-byte sector can never be taken for a medium sector or a byte.

use core::num::NonZeroU32;

use crate::abi::SECTOR_SHIFT;

/// A number of 512-byte sectors, or a position counted in them from the
/// start of the medium.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sectors(pub u64);

impl Sectors {
    /// The same amount in bytes; `None` when it does not fit a `u64`.
    pub const fn bytes(self) -> Option<Bytes> {
        match self.0.checked_mul(1 << SECTOR_SHIFT) {
            Some(b) => Some(Bytes(b)),
            None => None,
        }
    }

    /// The whole sectors in `bytes` (any remainder dropped).
    pub const fn from_bytes(bytes: Bytes) -> Sectors {
        Sectors(bytes.0 >> SECTOR_SHIFT)
    }

    /// `self + other`, `None` on overflow.
    pub const fn checked_add(self, other: Sectors) -> Option<Sectors> {
        match self.0.checked_add(other.0) {
            Some(s) => Some(Sectors(s)),
            None => None,
        }
    }

    /// Whether this is a whole number of `size` sectors.
    pub const fn is_aligned(self, size: SectorSize) -> bool {
        // A power of two (SectorSize::new): a mask, not a division.
        self.0 & (size.in_sectors() - 1) == 0
    }
}

/// A number of bytes on the medium, or a byte position counted from its
/// start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(pub u64);

/// A medium's logical (or physical) sector size in bytes: a power of two
/// of at least 512.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SectorSize(NonZeroU32);

impl SectorSize {
    /// The 512-byte sector of `io/blkif.h`.
    pub const BLKIF: SectorSize = match NonZeroU32::new(1 << SECTOR_SHIFT) {
        Some(n) => SectorSize(n),
        None => panic!("512 is not zero"),
    };

    /// `bytes` as a sector size; `None` unless it is a power of two of at
    /// least 512.
    pub const fn new(bytes: u32) -> Option<SectorSize> {
        if bytes < (1 << SECTOR_SHIFT) || !bytes.is_power_of_two() {
            return None;
        }
        match NonZeroU32::new(bytes) {
            Some(n) => Some(SectorSize(n)),
            None => None,
        }
    }

    /// The size in bytes.
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// The size in 512-byte sectors (at least 1).
    pub const fn in_sectors(self) -> u64 {
        (self.0.get() >> SECTOR_SHIFT) as u64
    }
}

impl Default for SectorSize {
    fn default() -> Self {
        SectorSize::BLKIF
    }
}

/// A page of a connection's data window, counted from the window's first
/// page: where a grant is mapped ([`crate::host::GrantMapOp`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WindowPage(pub u32);

impl WindowPage {
    /// The page `n` pages after this one.
    pub const fn add(self, n: u32) -> WindowPage {
        WindowPage(self.0 + n)
    }

    /// How many pages this one is after `base`; `None` when before it.
    pub const fn offset_from(self, base: WindowPage) -> Option<u32> {
        self.0.checked_sub(base.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sectors_and_bytes_convert_without_overflow() {
        assert_eq!(Sectors(8).bytes(), Some(Bytes(4096)));
        assert_eq!(
            Sectors(u64::MAX >> 9).bytes(),
            Some(Bytes((u64::MAX >> 9) << 9))
        );
        assert_eq!(Sectors((u64::MAX >> 9) + 1).bytes(), None);
        assert_eq!(Sectors::from_bytes(Bytes(4097)), Sectors(8));
        assert_eq!(Sectors(1).checked_add(Sectors(2)), Some(Sectors(3)));
        assert_eq!(Sectors(u64::MAX).checked_add(Sectors(1)), None);
    }

    #[test]
    fn sector_sizes_are_powers_of_two_from_512() {
        assert_eq!(SectorSize::new(512), Some(SectorSize::BLKIF));
        assert_eq!(SectorSize::new(4096).map(SectorSize::in_sectors), Some(8));
        for bad in [0, 1, 256, 511, 513, 3072, 4095] {
            assert_eq!(SectorSize::new(bad), None, "{bad}");
        }
        assert_eq!(SectorSize::default().get(), 512);
        let four_k = SectorSize::new(4096).unwrap();
        assert!(Sectors(16).is_aligned(four_k));
        assert!(!Sectors(12).is_aligned(four_k));
        assert!(Sectors(3).is_aligned(SectorSize::BLKIF));
    }

    #[test]
    fn window_pages_count_from_a_base() {
        let base = WindowPage(100);
        assert_eq!(base.add(5), WindowPage(105));
        assert_eq!(WindowPage(105).offset_from(base), Some(5));
        assert_eq!(WindowPage(99).offset_from(base), None);
    }
}
