//! What the store tests share: a completion collector, aligned buffers
//! addressed raw as a store wants them, a data pattern, and NBD servers.

#![allow(dead_code)]

mod nbd_server;
#[allow(unused_imports)]
pub use nbd_server::*;

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use xbb::host::{IoError, IoTag};
use xbb_testing::rng::XorShift;
use xbb_ustore::{CompletionFn, RawIoVec, StoreIo};

/// Only a guard against a hung store, never a timing assertion.
pub const HANG_GUARD: Duration = Duration::from_secs(120);
/// The alignment of [`Buf`].
pub const PAGE: usize = 4096;

// ---------------------------------------------------------------------------
// Completion collector

#[derive(Default)]
pub struct Collected {
    done: HashMap<u32, Result<(), IoError>>,
    duplicates: Vec<u32>,
}

#[derive(Default)]
pub struct Collector {
    state: Mutex<Collected>,
    cv: Condvar,
}

impl Collector {
    pub fn completion(self: &Arc<Self>) -> CompletionFn {
        let me = Arc::clone(self);
        Arc::new(move |tag: IoTag, r: Result<(), IoError>| {
            let mut s = me.state.lock().unwrap();
            if s.done.insert(tag.0, r).is_some() {
                s.duplicates.push(tag.0);
            }
            me.cv.notify_all();
        })
    }

    /// Waits for (and takes) the completion of `tag`.
    pub fn wait(&self, tag: IoTag) -> Result<(), IoError> {
        let s = self.state.lock().unwrap();
        let (mut s, t) = self
            .cv
            .wait_timeout_while(s, HANG_GUARD, |s| !s.done.contains_key(&tag.0))
            .unwrap();
        assert!(!t.timed_out(), "store hung: no completion for {tag:?}");
        assert!(
            s.duplicates.is_empty(),
            "duplicate completions {:?}",
            s.duplicates
        );
        s.done.remove(&tag.0).unwrap()
    }

    /// Takes the completion of `tag` if it has already arrived.
    pub fn take_now(&self, tag: IoTag) -> Option<Result<(), IoError>> {
        self.state.lock().unwrap().done.remove(&tag.0)
    }

    pub fn pending(&self) -> usize {
        let s = self.state.lock().unwrap();
        assert!(
            s.duplicates.is_empty(),
            "duplicate completions {:?}",
            s.duplicates
        );
        s.done.len()
    }
}

/// A write of `iov` at byte `offset`.
pub fn write(offset: u64, iov: Vec<RawIoVec>) -> StoreIo {
    StoreIo::Write { offset, iov }
}

/// A read into `iov` from byte `offset`.
pub fn read(offset: u64, iov: Vec<RawIoVec>) -> StoreIo {
    StoreIo::Read { offset, iov }
}

// ---------------------------------------------------------------------------
// Aligned buffers, addressed raw as the store wants them

/// A page-aligned buffer carved out of a `Vec<u8>` with room to spare.
pub struct Buf {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl Buf {
    pub fn new(len: usize) -> Self {
        let mem = vec![0u8; len + PAGE];
        let base = mem.as_ptr() as usize;
        let start = (PAGE - base % PAGE) % PAGE;
        Buf { mem, start, len }
    }

    pub fn filled(len: usize, seed: u64) -> Self {
        let mut b = Buf::new(len);
        pattern(seed, b.bytes_mut());
        b
    }

    pub fn bytes(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + self.len]
    }

    /// The raw piece `off..off + len` of the buffer.
    pub fn iov(&mut self, off: usize, len: usize) -> RawIoVec {
        assert!(off + len <= self.len);
        RawIoVec {
            addr: self.mem.as_mut_ptr() as usize + self.start + off,
            len,
        }
    }
}

/// A deterministic byte pattern that differs for every seed and position.
pub fn pattern(seed: u64, out: &mut [u8]) {
    let mut rng = XorShift::seeded(seed);
    for b in out {
        *b = rng.next() as u8;
    }
}
