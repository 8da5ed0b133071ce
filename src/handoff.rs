//! The hand-off of one queue between the control part of an instance and
//! the context that serves it (DESIGN.md, "Concurrency").
//!
//! After connect the control part lends each [`Queue`](crate::queue::Queue)
//! to a context of its own (a taskqueue thread in the kernel, a thread in
//! user space), which runs it until the control part recalls it; the
//! context then drains it and gives it back. A [`Gate`] is the one word
//! both sides and everyone who has work for the queue (the event channel,
//! the store's completions, the queue itself asking for another run) agree
//! through:
//!
//! - who owns the queue: the control part (home) or the context (lent);
//! - whether the context must be woken: [`Gate::post`] answers
//!   [`Post::Wake`] to exactly one poster between two passes, so a
//!   platform enqueues its task or wakes its thread once, however many
//!   kicks and completions arrive;
//! - that no posted work is lost: work posted while a pass runs makes
//!   [`Gate::end`] ask for another pass;
//! - that passes never overlap ([`Gate::begin`] refuses while one runs),
//!   that none begins once the queue was given back, and that the control
//!   part takes the queue back only after the last pass ended
//!   ([`Gate::is_home`]).
//!
//! Every platform uses this type; the loom model in `tests/loom.rs` checks
//! it (no lost kick, no pass after the give-back, the recall completes).
//! It is generic over the atomic word ([`AtomicWord`]) only so that the
//! model can run it on loom's atomics; the platforms use
//! [`core::sync::atomic::AtomicU32`].

use core::sync::atomic::{AtomicU32, Ordering};

/// The operations of a 32-bit atomic the gate needs: implemented for
/// [`AtomicU32`] here and for loom's atomic by the model.
pub trait AtomicWord {
    /// A word holding `v`.
    fn new(v: u32) -> Self;
    /// `load`.
    fn load(&self, order: Ordering) -> u32;
    /// `compare_exchange_weak` with `success` and a relaxed failure
    /// ordering (the gate retries with the value it saw).
    fn cas_weak(&self, current: u32, new: u32, success: Ordering) -> Result<u32, u32>;
}

impl AtomicWord for AtomicU32 {
    fn new(v: u32) -> Self {
        AtomicU32::new(v)
    }
    fn load(&self, order: Ordering) -> u32 {
        AtomicU32::load(self, order)
    }
    fn cas_weak(&self, current: u32, new: u32, success: Ordering) -> Result<u32, u32> {
        self.compare_exchange_weak(current, new, success, Ordering::Relaxed)
    }
}

/// Work posted to a queue's context, as bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Work(u32);

impl Work {
    /// Nothing.
    pub const NONE: Work = Work(0);
    /// The front-end kicked the queue's event channel.
    pub const EVENT: Work = Work(1);
    /// The queue asked for another run (`QueueHost::schedule_run`).
    pub const RUN: Work = Work(2);
    /// A store I/O of the queue completed (the platform keeps the
    /// completions; the bit only says there are some).
    pub const IO: Work = Work(4);
    /// The control part wants the queue back.
    pub const RECALL: Work = Work(8);
    const ALL: u32 = 0xf;

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Work) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no bit is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The bits of both.
    pub fn union(self, other: Work) -> Work {
        Work(self.0 | other.0)
    }
}

/// What [`Gate::post`] did with the work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Post {
    /// Noted, and nobody has asked the context to run yet: the caller must
    /// wake it (enqueue its task, wake its thread). Exactly one poster
    /// between two passes gets this.
    Wake,
    /// Noted; a pass will see it (one is scheduled or running).
    Queued,
    /// The queue is home (not lent): nobody is woken; the work is kept for
    /// the first pass of its next lend.
    Home,
}

/// The queue is lent to its context.
const LENT: u32 = 1 << 31;
/// The context was asked to run and has not begun a pass yet.
const SCHEDULED: u32 = 1 << 30;
/// A pass is running.
const RUNNING: u32 = 1 << 29;

/// One queue's hand-off word (see the module documentation).
#[derive(Debug)]
pub struct Gate<A: AtomicWord = AtomicU32> {
    word: A,
}

impl<A: AtomicWord> Default for Gate<A> {
    fn default() -> Self {
        Gate::new()
    }
}

impl<A: AtomicWord> Gate<A> {
    /// A gate whose queue is home.
    pub fn new() -> Self {
        Gate { word: A::new(0) }
    }

    /// Applies `f` to the word until the exchange succeeds; returns the
    /// word before.
    fn update(&self, success: Ordering, f: impl Fn(u32) -> Option<u32>) -> Result<u32, u32> {
        let mut cur = self.word.load(Ordering::Relaxed);
        loop {
            let Some(new) = f(cur) else {
                return Err(cur);
            };
            match self.word.cas_weak(cur, new, success) {
                Ok(_) => return Ok(cur),
                Err(seen) => cur = seen,
            }
        }
    }

    /// The control part lends the queue: from now on the context owns it.
    /// Everything the control part wrote before is visible to the
    /// context's passes (release here, acquire in [`Gate::begin`]). A first
    /// pass is scheduled ([`Work::RUN`], with whatever was posted while
    /// the queue was home): the caller wakes the context. `false` (nothing
    /// changed) when the queue is not home.
    pub fn lend(&self) -> bool {
        // Release: the queue handed over is visible to the first pass.
        self.update(Ordering::Release, |cur| {
            (cur & (LENT | RUNNING) == 0).then_some(cur | LENT | SCHEDULED | Work::RUN.0)
        })
        .is_ok()
    }

    /// Posts `work` for the context. See [`Post`].
    pub fn post(&self, work: Work) -> Post {
        // Release: what the poster prepared (a completion it queued) is
        // visible to the pass that takes the bit.
        let r = self.update(Ordering::Release, |cur| {
            let wake = if cur & LENT != 0 && cur & (SCHEDULED | RUNNING) == 0 {
                SCHEDULED
            } else {
                0
            };
            Some(cur | (work.0 & Work::ALL) | wake)
        });
        match r {
            Ok(before) if before & LENT == 0 => Post::Home,
            Ok(before) if before & (SCHEDULED | RUNNING) == 0 => Post::Wake,
            _ => Post::Queued,
        }
    }

    /// The context begins a pass: returns the work posted since the last
    /// one (possibly none: a context may run for reasons of its own, such
    /// as its event channel's descriptor). `None` when the queue is not
    /// lent or a pass is already running: then the caller must not touch
    /// the queue.
    pub fn begin(&self) -> Option<Work> {
        // Acquire: pairs with lend's and post's releases.
        self.update(Ordering::Acquire, |cur| {
            (cur & LENT != 0 && cur & RUNNING == 0).then_some(LENT | RUNNING)
        })
        .ok()
        .map(|before| Work(before & Work::ALL))
    }

    /// The context ends a pass. `true` when work was posted meanwhile:
    /// the context stays scheduled and must run another pass (nobody else
    /// was told to wake it); `false`: it may sleep, and the next post
    /// wakes it.
    pub fn end(&self) -> bool {
        // Release: this pass's writes are visible to the next pass, and to
        // the control part once the queue is home.
        match self.update(Ordering::Release, |cur| {
            if cur & RUNNING == 0 {
                return None;
            }
            let rest = cur & !RUNNING;
            Some(if rest & Work::ALL != 0 {
                rest | SCHEDULED
            } else {
                rest
            })
        }) {
            Ok(before) => before & Work::ALL != 0,
            Err(_) => false,
        }
    }

    /// The context gives the queue back, ending its pass: no pass begins
    /// after this; work not taken yet is dropped, and work posted from now
    /// on waits for the next lend. Everything the
    /// context did is visible to the control part once it sees
    /// [`Gate::is_home`]. `false` (nothing changed) outside a pass.
    pub fn give_back(&self) -> bool {
        // Release: pairs with is_home's acquire.
        self.update(Ordering::Release, |cur| (cur & RUNNING != 0).then_some(0))
            .is_ok()
    }

    /// Whether the queue is home: not lent and no pass running. Once
    /// `true`, the control part owns the queue.
    pub fn is_home(&self) -> bool {
        self.word.load(Ordering::Acquire) & (LENT | RUNNING) == 0
    }

    /// Whether the queue is lent and its context has nothing to do: no
    /// pass running or scheduled, no work posted. Once `true`, everything
    /// the last pass did is visible to the caller (acquire here, release in
    /// [`Gate::end`]); only a new post can change it.
    pub fn is_asleep(&self) -> bool {
        self.word.load(Ordering::Acquire) & (LENT | SCHEDULED | RUNNING | Work::ALL) == LENT
    }

    /// Whether the queue is lent.
    pub fn is_lent(&self) -> bool {
        self.word.load(Ordering::Relaxed) & LENT != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_wake_between_passes_and_work_during_a_pass_runs_again() {
        let g: Gate = Gate::new();
        assert_eq!(g.post(Work::EVENT), Post::Home, "not lent: kept");
        assert_eq!(g.begin(), None);
        assert!(g.lend());
        assert!(!g.lend(), "lent twice");
        assert_eq!(g.post(Work::IO), Post::Queued, "lend scheduled a pass");
        assert_eq!(
            g.begin(),
            Some(Work::RUN.union(Work::EVENT).union(Work::IO)),
            "the kick from before the lend too"
        );
        assert_eq!(g.begin(), None, "passes never overlap");
        assert_eq!(g.post(Work::IO), Post::Queued);
        assert!(g.end(), "work came during the pass");
        assert_eq!(g.post(Work::IO), Post::Queued, "still scheduled");
        assert_eq!(g.begin(), Some(Work::IO));
        assert!(!g.end());
        assert!(g.is_asleep(), "lent, nothing to do");
        assert_eq!(g.post(Work::EVENT), Post::Wake);
        assert!(!g.is_asleep(), "work posted");
        assert_eq!(g.post(Work::RUN), Post::Queued, "only one wake");
        assert_eq!(g.begin(), Some(Work::EVENT.union(Work::RUN)));
        assert!(!g.is_home());
        assert!(g.give_back());
        assert!(g.is_home());
        assert!(!g.is_asleep(), "home is not lent");
        assert!(!g.end(), "no pass to end");
        assert_eq!(g.begin(), None, "no pass after the give-back");
        assert!(!g.give_back());
        assert!(g.lend(), "lent again to the next connection");
        assert_eq!(g.begin(), Some(Work::RUN));
    }

    #[test]
    fn a_context_may_run_unscheduled_and_work_is_kept() {
        let g: Gate = Gate::new();
        assert!(g.lend());
        assert!(!g.is_asleep(), "the first pass is scheduled");
        assert_eq!(g.begin(), Some(Work::RUN));
        assert!(!g.is_asleep(), "a pass runs");
        assert!(!g.end());
        assert_eq!(g.begin(), Some(Work::NONE), "own reasons");
        assert_eq!(g.post(Work::RECALL), Post::Queued);
        assert!(g.end());
        let w = g.begin().unwrap();
        assert!(w.contains(Work::RECALL) && !w.contains(Work::EVENT));
        assert!(g.give_back());
    }
}
