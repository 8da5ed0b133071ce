//! Model checks (loom) of the two protocols where the back-end's contexts
//! meet without a lock (DESIGN.md, "Concurrency"):
//!
//! 1. the hand-off of a queue between the control part and the queue's
//!    context ([`xbb::handoff::Gate`]): a kick posted while the queue is
//!    lent (or home, before its lend) is seen by a pass; the platform is
//!    asked to wake the context once per sleep; no pass begins after the
//!    queue was given back; the control part takes it back only after the
//!    last pass; a recall always completes;
//! 2. the notification protocol of `io/ring.h` as [`xbb::ring`] implements
//!    it (`req_event` / `rsp_event`, `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`,
//!    `RING_FINAL_CHECK_FOR_REQUESTS`, `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`,
//!    `RING_FINAL_CHECK_FOR_RESPONSES`): a front-end producing requests and
//!    a back-end consuming them, each sleeping when the protocol lets it,
//!    never lose a request, a response or a notification, on a ring whose
//!    indices start at 0 or wrap at 2^32 in mid-run. The rings are the
//!    core's own `FrontRing` and `BackRing` over loom's atomics
//!    ([`xbb::shmem::RingMem`]).
//!
//! A lost wake-up shows as a deadlock (every thread asleep), which loom
//! reports; a lost or stale value as a failed assertion. The platforms'
//! ways of sleeping (a taskqueue, an eventfd, a parked thread, an event
//! channel's pending bit) are modelled as a flag under a mutex with a
//! condition variable.
//!
//! Run with `make loom` (`RUSTFLAGS="--cfg loom" cargo test --release
//! --test loom`); the number of interleavings explored is printed with
//! `LOOM_LOG=info`.

#![cfg(loom)]

use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

use xbb::abi::{
    Abi, BlkifRequest, BlkifResponse, SRING_HEADER_SIZE, SRING_REQ_EVENT, SRING_REQ_PROD,
    SRING_RSP_EVENT, SRING_RSP_PROD,
};
use xbb::handoff::{AtomicWord, Gate, Post, Work};
use xbb::ring::{BackRing, FrontRing};
use xbb::shmem::RingMem;

/// loom's atomic as the gate's word.
struct LoomWord(AtomicU32);

impl AtomicWord for LoomWord {
    fn new(v: u32) -> Self {
        LoomWord(AtomicU32::new(v))
    }
    fn load(&self, order: Ordering) -> u32 {
        self.0.load(order)
    }
    fn cas_weak(&self, current: u32, new: u32, success: Ordering) -> Result<u32, u32> {
        self.0
            .compare_exchange_weak(current, new, success, Ordering::Relaxed)
    }
}

/// A pending bit under a mutex, slept on with a condition variable: a
/// platform's way to run a context (a taskqueue's enqueue, an eventfd, a
/// parked thread's token) and an event channel's pending bit.
struct Pending {
    bit: Mutex<bool>,
    cond: Condvar,
}

impl Pending {
    fn new() -> Pending {
        Pending {
            bit: Mutex::new(false),
            cond: Condvar::new(),
        }
    }

    /// Sets the bit and wakes the sleeper; whether it was set already.
    fn set(&self) -> bool {
        let mut p = self.bit.lock().unwrap();
        let was = *p;
        *p = true;
        self.cond.notify_one();
        was
    }

    /// Sleeps until the bit is set, and clears it (a set before the sleep
    /// is kept).
    fn sleep(&self) {
        let mut p = self.bit.lock().unwrap();
        while !*p {
            p = self.cond.wait(p).unwrap();
        }
        *p = false;
    }

    /// Wakes a queue's context, which must never be asked twice before it
    /// ran.
    fn wake(&self) {
        assert!(
            !self.set(),
            "the context was asked to wake twice before it ran"
        );
    }
}

/// What the queue is, in the model: something only its owner touches.
struct Queue {
    /// Passes that saw a kick.
    kicks_seen: AtomicU64,
    /// Who touched it last: 1 the context, 2 the control part. A plain
    /// (relaxed) cell: the gate's orderings must make every access see the
    /// previous owner's.
    owner_writes: AtomicU64,
}

fn post(gate: &Gate<LoomWord>, waker: &Pending, work: Work) -> Post {
    let p = gate.post(work);
    if p == Post::Wake {
        waker.wake();
    }
    p
}

/// The queue context: passes until it is recalled, then gives the queue
/// back.
fn context(gate: &Gate<LoomWord>, waker: &Pending, q: &Queue) {
    let mut recalled = false;
    loop {
        waker.sleep();
        loop {
            let Some(work) = gate.begin() else {
                panic!("a scheduled pass found the queue not lent");
            };
            // The owner's writes are ordered: relaxed loads must see the
            // last one.
            let n = q.owner_writes.load(Ordering::Relaxed);
            q.owner_writes.store(n + 1, Ordering::Relaxed);
            if work.contains(Work::EVENT) {
                q.kicks_seen.fetch_add(1, Ordering::Relaxed);
            }
            recalled |= work.contains(Work::RECALL);
            if recalled {
                assert!(gate.give_back());
                return;
            }
            if !gate.end() {
                break;
            }
        }
    }
}

/// Explores `f`'s interleavings with at most two preemptions each (the
/// bound every model here has used; it keeps each to seconds).
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(2);
    builder.check(f);
}

/// A gate whose queue is home, its context's waker, the queue.
fn parts() -> (Arc<Gate<LoomWord>>, Arc<Pending>, Arc<Queue>) {
    let q = Queue {
        kicks_seen: AtomicU64::new(0),
        owner_writes: AtomicU64::new(0),
    };
    (Arc::new(Gate::new()), Arc::new(Pending::new()), Arc::new(q))
}

/// (a) A kick races the lend, the passes and the recall.
#[test]
fn handoff_loses_no_kick_and_recall_completes() {
    model(|| {
        let (gate, waker, q) = parts();
        let ctx = {
            let (gate, waker, q) = (gate.clone(), waker.clone(), q.clone());
            thread::spawn(move || context(&gate, &waker, &q))
        };
        let kicker = {
            let (gate, waker) = (gate.clone(), waker.clone());
            thread::spawn(move || post(&gate, &waker, Work::EVENT))
        };
        // Control: lend (the queue is home: control writes it first).
        q.owner_writes.store(100, Ordering::Relaxed);
        assert!(gate.lend());
        waker.wake();
        let kick = kicker.join().unwrap();
        // Control recalls and waits for the queue to come home.
        assert_ne!(post(&gate, &waker, Work::RECALL), Post::Home);
        ctx.join().unwrap();
        assert!(gate.is_home());
        // Home: the control part sees every write of the context.
        let n = q.owner_writes.load(Ordering::Relaxed);
        assert!(n > 100, "the control part sees the context's writes");
        // No pass after the give-back, and what comes now waits.
        assert_eq!(gate.post(Work::EVENT), Post::Home);
        assert_eq!(gate.begin(), None);
        // No lost kick: posted while lent (Wake or Queued) it was seen
        // before the give-back; posted while home (before the lend) the
        // lend's first pass took it.
        let seen = q.kicks_seen.load(Ordering::Relaxed);
        match kick {
            Post::Wake | Post::Queued | Post::Home => assert_eq!(seen, 1, "{kick:?}"),
        }
    });
}

/// (a) Two posters race one pass: one wake between two passes, and work
/// that arrives during a pass is run by the same context.
#[test]
fn handoff_wakes_once_and_work_during_a_pass_runs_again() {
    model(|| {
        let (gate, waker, q) = parts();
        assert!(gate.lend());
        waker.wake();
        let ctx = {
            let (gate, waker, q) = (gate.clone(), waker.clone(), q.clone());
            thread::spawn(move || context(&gate, &waker, &q))
        };
        let posters: Vec<_> = (0..2)
            .map(|_| {
                let (gate, waker) = (gate.clone(), waker.clone());
                thread::spawn(move || post(&gate, &waker, Work::EVENT))
            })
            .collect();
        let kicks: Vec<Post> = posters.into_iter().map(|p| p.join().unwrap()).collect();
        post(&gate, &waker, Work::RECALL);
        ctx.join().unwrap();
        assert!(kicks.iter().all(|k| *k != Post::Home));
        assert!(q.kicks_seen.load(Ordering::Relaxed) >= 1);
        assert!(gate.is_home());
    });
}

// --- The ring -----------------------------------------------------------------

/// One page of ring memory over loom's atomics: the four header indices,
/// and each slot as 64-bit words (slot bytes are copied in and out whole,
/// relaxed: only the indices' orderings make them visible).
#[derive(Clone)]
struct LoomRing(Arc<Inner>);

struct Inner {
    header: [AtomicU32; 4],
    words: Vec<AtomicU64>,
}

/// A ring page: the header, then `(4096 - 64) / 8` words of slots.
const PAGE: usize = 4096;

impl LoomRing {
    fn new() -> LoomRing {
        LoomRing(Arc::new(Inner {
            header: [
                AtomicU32::new(0),
                AtomicU32::new(0),
                AtomicU32::new(0),
                AtomicU32::new(0),
            ],
            words: (0..(PAGE - SRING_HEADER_SIZE) / 8)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }))
    }

    fn index(off: usize) -> usize {
        match off {
            SRING_REQ_PROD => 0,
            SRING_REQ_EVENT => 1,
            SRING_RSP_PROD => 2,
            SRING_RSP_EVENT => 3,
            _ => panic!("not an index: {off}"),
        }
    }

    /// Applies `f` to each slot word that `off..off+len` covers (slot
    /// copies start and end on 8-byte boundaries).
    fn words(&self, off: usize, len: usize) -> &[AtomicU64] {
        assert!(off >= SRING_HEADER_SIZE && (off - SRING_HEADER_SIZE) % 8 == 0 && len % 8 == 0);
        let first = (off - SRING_HEADER_SIZE) / 8;
        &self.0.words[first..first + len / 8]
    }
}

impl RingMem for LoomRing {
    fn len(&self) -> usize {
        PAGE
    }
    fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        self.0.header[Self::index(off)].load(order)
    }
    fn store_u32(&self, off: usize, value: u32, order: Ordering) {
        self.0.header[Self::index(off)].store(value, order)
    }
    fn read(&self, off: usize, out: &mut [u8]) {
        for (w, chunk) in self.words(off, out.len()).iter().zip(out.chunks_mut(8)) {
            chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
        }
    }
    fn write(&self, off: usize, data: &[u8]) {
        if off == 0 && data.len() == SRING_HEADER_SIZE {
            // SHARED_RING_INIT's memset of the header.
            for h in &self.0.header {
                h.store(0, Ordering::Relaxed);
            }
            return;
        }
        for (w, chunk) in self.words(off, data.len()).iter().zip(data.chunks(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            w.store(u64::from_ne_bytes(b), Ordering::Relaxed);
        }
    }
    fn full_fence(&self) {
        fence(Ordering::SeqCst);
    }
}

fn request(id: u64) -> BlkifRequest {
    BlkifRequest::rw(0, id, id * 8, &[])
}

/// Requests the front-end produces, in two batches.
const REQUESTS: u64 = 2;

/// The back-end: consumes, answers, publishes, and sleeps only when
/// `RING_FINAL_CHECK_FOR_REQUESTS` says the ring is empty (the loop of
/// `Queue::consume`).
fn back_end(mut ring: BackRing<LoomRing>, to_front: &Pending, from_front: &Pending) {
    let mut served = 0;
    loop {
        loop {
            let prod = ring.snapshot_req_prod().expect("sane producer");
            while let Some(req) = ring.take_request(prod) {
                assert_eq!(req, request(served), "request copied whole and in order");
                ring.push_response(&BlkifResponse {
                    id: req.id,
                    operation: req.operation,
                    status: 0,
                });
                served += 1;
            }
            if ring.publish_responses() {
                to_front.set();
            }
            if !ring.final_check_for_requests().expect("sane producer") {
                break;
            }
        }
        if served == REQUESTS {
            return;
        }
        from_front.sleep();
    }
}

/// The front-end: produces in two batches (kicking when the back-end asked)
/// and waits for every response, sleeping only when
/// `RING_FINAL_CHECK_FOR_RESPONSES` says there is none.
fn front_end(mut ring: FrontRing<LoomRing>, to_back: &Pending, from_back: &Pending) {
    let mut next = 0;
    let mut answered = 0;
    for batch in [1, REQUESTS - 1] {
        for _ in 0..batch {
            assert!(ring.push_request(&request(next)));
            next += 1;
        }
        if ring.publish_requests() {
            to_back.set();
        }
    }
    loop {
        while let Some(rsp) = ring.take_response().expect("sane back-end") {
            assert_eq!(rsp.id, answered, "responses in order");
            answered += 1;
        }
        if answered == REQUESTS {
            return;
        }
        if !ring.final_check_for_responses() {
            from_back.sleep();
        }
    }
}

/// (b) No request, response or notification is lost either way.
#[test]
fn ring_notifications_lose_nothing() {
    ring_model(0);
}

/// (b) The same with indices that wrap at 2^32 between the two requests:
/// the front-end starts its ring at `u32::MAX` (`FrontRing::init_at`) and
/// the back ring attaches at its `rsp_prod`; every index comparison of
/// both sides is in wrapping arithmetic.
#[test]
fn ring_notifications_lose_nothing_across_the_wrap() {
    ring_model(u32::MAX);
}

fn ring_model(start: u32) {
    model(move || {
        let mem = LoomRing::new();
        let front = FrontRing::init_at(mem.clone(), Abi::X86_64, 1, start).expect("front ring");
        let back = BackRing::new(mem, Abi::X86_64, 1).expect("back ring");
        assert_eq!(back.req_cons(), start, "attached at the ring's rsp_prod");
        let to_back = Arc::new(Pending::new());
        let to_front = Arc::new(Pending::new());
        let b = {
            let (to_back, to_front) = (to_back.clone(), to_front.clone());
            thread::spawn(move || back_end(back, &to_front, &to_back))
        };
        front_end(front, &to_back, &to_front);
        b.join().unwrap();
    });
}

/// The checker itself: loom models `fence(SeqCst)` strongly enough for the
/// store-load barrier both sides of the ring rely on (`xen_mb()`): of two
/// threads that each store, fence, then load the other's variable, at
/// least one sees the other's store.
#[test]
fn the_checker_models_the_store_load_barrier() {
    loom::model(|| {
        let x = Arc::new(AtomicU32::new(0));
        let y = Arc::new(AtomicU32::new(0));
        let t = {
            let (x, y) = (x.clone(), y.clone());
            thread::spawn(move || {
                x.store(1, Ordering::Relaxed);
                fence(Ordering::SeqCst);
                y.load(Ordering::Relaxed)
            })
        };
        y.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let a = x.load(Ordering::Relaxed);
        let b = t.join().unwrap();
        assert!(a == 1 || b == 1, "both missed");
    });
}
