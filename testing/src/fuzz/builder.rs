//! What the fuzz inputs share: a fixed header of bit fields, then
//! operations, each a code byte and its arguments; and [`Script`], which
//! builds an input by name for seeds and corpora.

use core::marker::PhantomData;

use super::front::Fault;
use super::script::PushReq;

/// A fuzz body's input format, as [`Script`] writes it.
pub trait Body {
    /// The fixed header.
    type Config: Header;
    /// The code of the operation that writes the front-end's `state` node
    /// and fires the watch.
    const FRONT_STATE: u8;
    /// The code of the operation that mounts the root file system.
    const ROOT_MOUNTED: u8;
    /// The code of the operation that sets the `no_coalesce_reqs` sysctl.
    const COALESCE_SYSCTL: u8;
    /// The code of the operation that completes one pending store I/O.
    const COMPLETE: u8;
    /// The code of the operation that completes every pending store I/O.
    const COMPLETE_ALL: u8;
    /// The code of the operation that injects a platform failure.
    const INJECT: u8;
    /// How many of the [`Fault`]s the format has (the first ones).
    const FAULTS: u8;
    /// How a store I/O ends, in the completion operations.
    type Completion: Code;
}

/// Implements [`Body`] for format `$body` of header `$config`: the
/// operations every format has are the variants of these names of its
/// operation codes `$ops`; a completion is a `$completion`; it has the
/// first `$faults` [`Fault`]s.
macro_rules! body {
    ($body:ty: $config:ty, $ops:ident, $completion:ty, $faults:literal) => {
        impl $crate::fuzz::builder::Body for $body {
            type Config = $config;
            const FRONT_STATE: u8 = $ops::FrontState as u8;
            const ROOT_MOUNTED: u8 = $ops::RootMounted as u8;
            const COALESCE_SYSCTL: u8 = $ops::Sysctl as u8;
            const COMPLETE: u8 = $ops::Complete as u8;
            const COMPLETE_ALL: u8 = $ops::CompleteAll as u8;
            const INJECT: u8 = $ops::Inject as u8;
            const FAULTS: u8 = $faults;
            type Completion = $completion;
        }
    };
}
pub(crate) use body;

/// An operation's argument written as one byte.
pub trait Code: Copy {
    /// Its byte.
    fn code(self) -> u8;
}

/// A fuzz input's fixed header.
pub trait Header {
    /// Its bytes.
    fn header(&self) -> Vec<u8>;
}

/// Builds inputs of fuzz body `B` by name, for seeds and corpora.
#[derive(Clone, Debug)]
pub struct Script<B> {
    bytes: Vec<u8>,
    body: PhantomData<B>,
}

impl<B: Body> Script<B> {
    /// Starts an input with `cfg` as its header.
    pub fn new(cfg: &B::Config) -> Self {
        Script {
            bytes: cfg.header(),
            body: PhantomData,
        }
    }

    /// Appends operation `code` and its arguments.
    pub(crate) fn op(&mut self, code: u8, args: &[u8]) -> &mut Self {
        self.bytes.push(code);
        self.bytes.extend_from_slice(args);
        self
    }

    /// Appends bytes to the last operation's arguments.
    pub(crate) fn more(&mut self, args: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(args);
        self
    }

    /// Appends operation `code` carrying request `r`: `head` (the ring,
    /// where the format has several), the id and the operation selector,
    /// the raw operation byte when `raw_op`, the segment count and the
    /// sector (then the raw sector where the sector selector asks for it),
    /// `tail`, and `segments` times the segment selectors.
    pub(crate) fn request(
        &mut self,
        code: u8,
        head: &[u8],
        r: &PushReq,
        raw_op: bool,
        tail: &[u8],
        segments: usize,
    ) -> &mut Self {
        let [lo, hi] = r.id.to_le_bytes();
        self.op(code, head).more(&[lo, hi, r.op]);
        if raw_op {
            self.more(&[r.raw_op]);
        }
        self.more(&[r.nsegs, r.sector]);
        if r.sector == 255 {
            self.more(&r.raw_sector.to_le_bytes());
        }
        self.more(tail);
        for _ in 0..segments {
            self.more(&[r.gref, r.range]);
        }
        self
    }

    /// Writes the front-end's `state` node and fires the watch: 0..=8 a
    /// XenbusState, 9 a non-number, 10 a number out of the enumeration,
    /// 11 no node.
    pub fn frontend_state(&mut self, v: u8) -> &mut Self {
        self.op(B::FRONT_STATE, &[v])
    }

    /// The root file system becomes mounted.
    pub fn root_mounted(&mut self) -> &mut Self {
        self.op(B::ROOT_MOUNTED, &[])
    }

    /// Sets the `no_coalesce_reqs` sysctl to `v % 3` (2 is refused).
    pub fn coalesce_sysctl(&mut self, v: u8) -> &mut Self {
        self.op(B::COALESCE_SYSCTL, &[v])
    }

    /// Completes pending I/O number `which % pending` with `how`.
    pub fn complete(&mut self, which: u8, how: B::Completion) -> &mut Self {
        self.op(B::COMPLETE, &[which, how.code()])
    }

    /// Completes every pending I/O, and those they start, with `how`.
    pub fn complete_all(&mut self, how: B::Completion) -> &mut Self {
        self.op(B::COMPLETE_ALL, &[how.code()])
    }

    /// Injects a platform failure: `n` parametrises it.
    ///
    /// # Panics
    ///
    /// When the format does not have this failure.
    pub fn inject(&mut self, fault: Fault, n: u8) -> &mut Self {
        assert!(fault.code() < B::FAULTS, "{fault:?}: not in this format");
        self.op(B::INJECT, &[fault.code(), n])
    }

    /// The input built so far.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A header field's value as bits.
pub(crate) trait Field: Sized {
    fn to_bits(self) -> u64;
    fn from_bits(v: u64) -> Self;
}

impl Field for bool {
    fn to_bits(self) -> u64 {
        u64::from(self)
    }
    fn from_bits(v: u64) -> Self {
        v != 0
    }
}

impl Field for u8 {
    fn to_bits(self) -> u64 {
        u64::from(self)
    }
    fn from_bits(v: u64) -> Self {
        v as u8
    }
}

impl Field for u16 {
    fn to_bits(self) -> u64 {
        u64::from(self)
    }
    fn from_bits(v: u64) -> Self {
        v as u16
    }
}

/// The low `bits` bits of `v`.
pub(crate) const fn low(v: u64, bits: u32) -> u64 {
    v & ((1 << bits) - 1)
}

/// The encoding of a header struct as `$len` bytes: its fields, each
/// `$bits` wide (taken modulo `$m` where given), packed in the order
/// listed from bit 0 of byte 0 (little-endian: bit 8 is byte 1's
/// lowest). One listing serves both directions, so the two cannot drift.
macro_rules! header_codec {
    ($name:ident [$len:literal]: $($field:ident $bits:literal $(% $m:literal)?),* $(,)?) => {
        const _: () = {
            let bits: u32 = 0 $(+ $bits)*;
            assert!(bits <= 8 * $len);
        };

        impl $name {
            /// The header's bytes.
            pub fn encode(&self) -> [u8; $len] {
                use $crate::fuzz::builder::{low, Field};
                let mut v = 0u64;
                let mut at = 0;
                $(
                    v |= low(self.$field.to_bits() $(% $m)?, $bits) << at;
                    at += $bits;
                )*
                let _ = at;
                let mut out = [0u8; $len];
                out.copy_from_slice(&v.to_le_bytes()[..$len]);
                out
            }

            pub(crate) fn decode(r: &mut $crate::fuzz::input::Input<'_>) -> $name {
                use $crate::fuzz::builder::{low, Field};
                let mut b = [0u8; 8];
                b[..$len].copy_from_slice(&r.le::<$len>());
                let v = u64::from_le_bytes(b);
                let mut at = 0;
                $(
                    let $field = Field::from_bits(low(v >> at, $bits) $(% $m)?);
                    at += $bits;
                )*
                let _ = at;
                $name { $($field),* }
            }
        }

        impl $crate::fuzz::builder::Header for $name {
            fn header(&self) -> Vec<u8> {
                self.encode().to_vec()
            }
        }
    };
}
pub(crate) use header_codec;
