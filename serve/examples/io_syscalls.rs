//! A stand-in for one xbb-serve queue thread, for counting the system
//! calls the store path costs per request (`strace -c -f`) without a Xen
//! host: the loop of `host.rs`'s `serve_queue` — the queue's [`Gate`], its
//! eventfd ([`Wakeup`]) that completions posted from other threads write
//! when the gate says so, [`poll_readable`] over it and the store's ring
//! descriptor, reap at the start of a pass, kick and reap at its end — driving a
//! file store through [`StoreHandle::submit_into`] as `store_submit` does.
//! The guest side (grant maps, event channels) is left out: it is the same
//! for both engines.
//!
//! ```text
//! io_syscalls [--io uring|pool] [--ios N] [--depth D] [--pieces P] FILE
//! ```
//!
//! Each pass submits up to `D` one-request I/Os of `P` 4 KiB pieces
//! (reads, then writes, alternating by pass) until `N` completed. FILE is
//! made (`N`-independent size, 8 MiB) and left behind. Counts only: it
//! measures no time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use xbb::handoff::{Gate, Post, Work};
use xbb::host::{IoError, IoOp, IoTag, IoVec, OpenParams};
use xbb::units::Bytes;
use xbb_serve::ffi::{poll_readable, Wakeup};
use xbb_ustore::{HostStore, IoEngine, RawIoVec, StoreOptions};

const PAGE: usize = 4096;
const MEDIUM: u64 = 8 << 20;
/// Tags are `request * SLOT_TAG + window slot`; the depth is below it.
const SLOT_TAG: usize = 1024;

struct QueueBox {
    gate: Gate,
    done: Mutex<VecDeque<(IoTag, Result<(), IoError>)>>,
    wake: Wakeup,
}

fn main() -> Result<(), String> {
    let mut io = IoEngine::Uring;
    let (mut ios, mut depth, mut pieces) = (4096u64, 32usize, 8usize);
    let mut file = None;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = || -> Result<u64, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or(format!("{a}: a number"))
        };
        match a.as_str() {
            "--io" => {
                io = IoEngine::from_name(it.next().map_or("", String::as_str))
                    .ok_or("--io: uring or pool")?
            }
            "--ios" => ios = num()?,
            "--depth" => depth = (num()? as usize).clamp(1, SLOT_TAG - 1),
            "--pieces" => pieces = num()? as usize,
            f => file = Some(f.to_string()),
        }
    }
    let file =
        file.ok_or("usage: io_syscalls [--io uring|pool] [--ios N] [--depth D] [--pieces P] FILE")?;
    std::fs::File::create(&file)
        .and_then(|f| f.set_len(MEDIUM))
        .map_err(|e| format!("{file}: {e}"))?;

    let qbox = Arc::new(QueueBox {
        gate: Gate::new(),
        done: Mutex::new(VecDeque::with_capacity(1024)),
        wake: Wakeup::new().map_err(|e| e.to_string())?,
    });
    let mut store = HostStore::new(StoreOptions {
        engine: io,
        ..StoreOptions::default()
    });
    let b = Arc::clone(&qbox);
    let params = OpenParams {
        path: &file,
        kind: "file",
        writable: true,
        direct_io_safe: false,
    };
    store
        .open(params, xbb_ustore::probe, move |tag, r| {
            b.done.lock().unwrap().push_back((tag, r));
            if b.gate.post(Work::IO) == Post::Wake {
                b.wake.wake();
            }
        })
        .map_err(|e| format!("open: {e:?}"))?;
    eprintln!("engine: {:?}", store.engine());
    let mut h = store.handle().ok_or("no store")?;
    let mut window = vec![0u8; depth * pieces * PAGE + PAGE];
    let base = window.as_mut_ptr() as usize;
    let base = base + (PAGE - base % PAGE) % PAGE;
    let span = (pieces * PAGE) as u64;
    let slots = MEDIUM / span;

    qbox.gate.lend();
    let (mut submitted, mut completed, mut in_flight) = (0u64, 0u64, 0usize);
    let mut done = VecDeque::with_capacity(1024);
    let mut ready = [false; 3];
    // The window slots not in use: a request's buffer is its slot's, and
    // its tag names the slot.
    let mut free: Vec<usize> = (0..depth).collect();
    let mut iov = vec![
        IoVec {
            window_offset: 0,
            len: 0
        };
        pieces
    ];
    while completed < ios {
        let Some(_work) = qbox.gate.begin() else {
            break;
        };
        h.reap();
        std::mem::swap(&mut *qbox.done.lock().unwrap(), &mut done);
        for (tag, r) in done.drain(..) {
            r.map_err(|e| format!("I/O failed: {e:?}"))?;
            free.push(tag.0 as usize % SLOT_TAG);
            completed += 1;
            in_flight -= 1;
        }
        if completed >= ios {
            break;
        }
        // The pass: as many requests as the depth allows.
        while in_flight < depth && submitted < ios {
            let slot = free.pop().ok_or("no free window slot")?;
            for (k, v) in iov.iter_mut().enumerate() {
                *v = IoVec {
                    window_offset: (slot * pieces + k) * PAGE,
                    len: PAGE,
                };
            }
            let offset = Bytes(submitted % slots * span);
            let op = if (submitted / depth as u64) % 2 == 0 {
                IoOp::Read { offset, iov: &iov }
            } else {
                IoOp::Write { offset, iov: &iov }
            };
            let tag = IoTag((submitted as usize * SLOT_TAG + slot) as u32);
            h.submit_into(tag, op, |pcs, _, out| {
                out.extend(pcs.iter().map(|v| RawIoVec {
                    addr: base + v.window_offset,
                    len: v.len,
                }));
                Some(())
            })
            .map_err(|e| format!("submit: {e:?}"))?;
            submitted += 1;
            in_flight += 1;
        }
        h.kick();
        h.reap();
        if qbox.gate.end() {
            continue;
        }
        let ring = h.completion_fd();
        let fds = [qbox.wake.fd(), ring.unwrap_or(-1)];
        let n = if ring.is_some() { 2 } else { 1 };
        poll_readable(&fds[..n], -1, &mut ready[..n]).map_err(|e| e.to_string())?;
        if ready[0] {
            qbox.wake.clear();
        }
    }
    drop(h);
    store.close();
    println!("{completed} requests of {pieces} pieces, depth {depth}");
    Ok(())
}
