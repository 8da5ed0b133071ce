//! The NBD store beyond the conformance suite: its libnbd declarations
//! against `<libnbd.h>`, which NBD command each I/O becomes (writes of
//! zeros as write-zeroes, where the export has it), and how it fails — bad
//! URIs, a server that never answers the handshake, a request past the
//! export's end, a read-only export that neither flushes nor trims, block
//! size constraints, errors the server returns, a server killed with I/O
//! on the wire, a server that stops answering while the store closes.
//!
//! Skipped with a message where libnbd, nbdkit or the header is missing,
//! unless `XBB_REQUIRE_NBD` is set.

use std::sync::Arc;
use std::time::{Duration, Instant};

use xbb::host::{IoError, IoTag, OpenError};
use xbb_testing::cc::check_c;
use xbb_ustore::{open_nbd_store, NbdSpec, RawIoVec, StoreIo, UserStore};
use xbb_ustore::{NBD_C_CONSTANTS as C_CONSTANTS, NBD_C_PROTOTYPES as C_PROTOTYPES};

mod support;
use support::{read, unavailable, write, Collector as Done, NbdServer};

const MEDIUM: u64 = 1 << 20;

/// A page-aligned buffer (kept alive by the test while I/O runs).
struct Buf(Vec<u8>);

impl Buf {
    fn new(len: usize, fill: u8) -> Buf {
        Buf(vec![fill; len])
    }
    fn iov(&mut self) -> Vec<RawIoVec> {
        vec![RawIoVec {
            addr: self.0.as_mut_ptr() as usize,
            len: self.0.len(),
        }]
    }
}

fn run(s: &dyn UserStore, done: &Done, tag: u32, io: StoreIo) -> Result<(), IoError> {
    s.submit(IoTag(tag), io)?;
    done.wait(IoTag(tag))
}

fn open(spec: &NbdSpec, done: &Arc<Done>) -> Result<Box<dyn UserStore>, OpenError> {
    open_nbd_store(spec, done.completion())
}

/// The server `srv` (`None`: skipped), a store on its export, and the
/// store's completions.
fn open_on(srv: Option<NbdServer>) -> Option<(NbdServer, Arc<Done>, Box<dyn UserStore>)> {
    let srv = srv?;
    let done = Arc::new(Done::default());
    let s = open(&NbdSpec::new(&srv.uri), &done).unwrap();
    Some((srv, done, s))
}

/// nbdkit's memory plugin behind its log filter (and `filters`), which
/// logs every command to the server's file `log` (see [`logged`]).
fn logged_server(what: &str, filters: &[&str]) -> Option<NbdServer> {
    let extra: Vec<&str> = ["--filter=log"].iter().chain(filters).copied().collect();
    NbdServer::nbdkit_with(what, MEDIUM, &extra, |dir| {
        vec![format!("logfile={}", dir.join("log").display())]
    })
}

/// Every libnbd function and constant the store declares, compiled against
/// `<libnbd.h>`: a prototype that drifted is a type error, a wrong constant
/// a failed static assertion. A wrong declaration is compiled too and must
/// be refused, so the check cannot pass vacuously.
#[test]
fn declarations_match_libnbd_h() {
    let header = std::path::Path::new("/usr/include/libnbd.h");
    if !header.exists() {
        return unavailable("no /usr/include/libnbd.h (Debian: libnbd-dev)").unwrap_or(());
    }
    let mut c = String::from("#include <stdint.h>\n#include <stddef.h>\n#include <libnbd.h>\n");
    for (name, ty) in C_PROTOTYPES {
        let ptr = ty.replacen("(*)", &format!("(*p_{name})"), 1);
        c.push_str(&format!("{ptr} = {name};\n"));
    }
    for (name, v) in C_CONSTANTS {
        c.push_str(&format!("_Static_assert({name} == {v}, \"{name}\");\n"));
    }
    let compile = |src: &str| -> bool {
        check_c::<[&str; 0], _>([], src)
            .map_err(|e| eprintln!("{e}"))
            .is_ok()
    };
    assert!(compile(&c), "declarations differ from <libnbd.h>:\n{c}");
    let wrong = format!("{c}int (*p_wrong)(struct nbd_handle *, int) = nbd_aio_get_fd;\n");
    assert!(
        !compile(&wrong),
        "a wrong prototype was accepted: the check proves nothing"
    );
}

#[test]
fn bad_uris_and_unreachable_servers_are_refused() {
    if let Err(e) = xbb_ustore::libnbd_available() {
        return unavailable(&e).unwrap_or(());
    }
    let done = Arc::new(Done::default());
    let refused = |uri: &str| open(&NbdSpec::new(uri), &done).err();
    // Not an NBD URI at all, a NUL inside, malformed, no socket.
    assert_eq!(refused("/images/a.img"), Some(OpenError::Invalid));
    assert_eq!(refused("nbd://host\0x/e"), Some(OpenError::Invalid));
    assert_eq!(refused("nbd://[::1/e"), Some(OpenError::Invalid));
    assert_eq!(refused("nbd+unix:///e"), Some(OpenError::Invalid));
    // Nobody listens.
    let dir = std::env::temp_dir().join(format!("xbb-nbd-none-{}", std::process::id()));
    let r = refused(&format!("nbd+unix:///?socket={}/sock", dir.display()));
    assert!(
        matches!(r, Some(OpenError::NotFound | OpenError::Other(_))),
        "{r:?}"
    );
    // Sector sizes a store cannot emulate.
    let Some(srv) = NbdServer::nbdkit("badss", MEDIUM, &[], &[]) else {
        return;
    };
    for ss in [0, 256, 1000, 1 << 17] {
        let spec = NbdSpec {
            sector_size: ss,
            ..NbdSpec::new(&srv.uri)
        };
        assert_eq!(open(&spec, &done).err(), Some(OpenError::Invalid), "{ss}");
    }
    // An export that is not a whole number of 4096-byte sectors.
    let Some(odd) = NbdServer::nbdkit("odd", MEDIUM + 512, &[], &[]) else {
        return;
    };
    let spec = NbdSpec {
        sector_size: 4096,
        ..NbdSpec::new(&odd.uri)
    };
    assert_eq!(open(&spec, &done).err(), Some(OpenError::Invalid));
    let s = open(&NbdSpec::new(&odd.uri), &done).unwrap();
    assert_eq!(s.info().sectors.0, MEDIUM / 512 + 1);
    s.close();
}

#[test]
fn requests_past_the_end_of_the_export_fail_and_change_nothing() {
    let Some((_srv, done, s)) = open_on(NbdServer::nbdkit("end", MEDIUM, &[], &[])) else {
        return;
    };
    let mut a = Buf::new(4096, 0x5A);
    assert_eq!(run(&*s, &done, 1, write(MEDIUM - 4096, a.iov())), Ok(()));
    let mut big = Buf::new(8192, 0x77);
    for (tag, io) in [
        (2, write(MEDIUM - 4096, big.iov())),
        (3, read(MEDIUM - 4096, big.iov())),
        (4, read(MEDIUM, big.iov())),
        (
            5,
            StoreIo::Discard {
                offset: MEDIUM - 512,
                len: 1024,
                secure: false,
            },
        ),
        (6, write(u64::MAX - 511, big.iov())),
    ] {
        assert_eq!(run(&*s, &done, tag, io), Err(IoError::Io), "tag {tag}");
    }
    let mut r = Buf::new(4096, 0);
    assert_eq!(run(&*s, &done, 7, read(MEDIUM - 4096, r.iov())), Ok(()));
    assert!(r.0.iter().all(|&b| b == 0x5A), "the refused I/O wrote");
    s.close();
}

#[test]
fn a_read_only_export_that_neither_flushes_nor_trims() {
    // nbdkit's pattern plugin: read-only, no flush, no trim; every 8-byte
    // word holds its own offset, big-endian.
    let Some((_srv, done, s)) = open_on(NbdServer::plugin("pattern", "pattern", MEDIUM, &[], &[]))
    else {
        return;
    };
    let info = s.info();
    assert!(
        info.read_only && !info.can_flush && !info.can_discard,
        "{info:?}"
    );
    let mut b = Buf::new(4096, 0);
    assert_eq!(run(&*s, &done, 1, read(8192, b.iov())), Ok(()));
    let word = u64::from_be_bytes(b.0[8..16].try_into().unwrap());
    assert_eq!(word, 8192 + 8);
    assert_eq!(run(&*s, &done, 2, write(0, b.iov())), Err(IoError::Io));
    assert_eq!(
        run(&*s, &done, 3, StoreIo::Flush),
        Err(IoError::NotSupported)
    );
    assert_eq!(
        run(
            &*s,
            &done,
            4,
            StoreIo::Discard {
                offset: 0,
                len: 4096,
                secure: false
            }
        ),
        Err(IoError::Io)
    );
    s.close();
}

#[test]
fn block_size_constraints_shape_the_medium_and_the_commands() {
    // Minimum 4096 (the store's sectors grow to it), maximum 64 KiB (a
    // larger request is split; the filter refuses anything bigger).
    let srv = NbdServer::nbdkit(
        "blocksize",
        MEDIUM,
        &["--filter=blocksize-policy"],
        &[
            "blocksize-minimum=4096",
            "blocksize-preferred=65536",
            "blocksize-maximum=65536",
            "blocksize-error-policy=error",
        ],
    );
    let Some((_srv, done, s)) = open_on(srv) else {
        return;
    };
    let info = s.info();
    assert_eq!((info.sector_size, info.physical_sector_size), (4096, 65536));
    let mut w = Buf::new(256 << 10, 0);
    for (i, b) in w.0.iter_mut().enumerate() {
        *b = (i / 4096) as u8;
    }
    assert_eq!(run(&*s, &done, 1, write(0, w.iov())), Ok(()));
    let mut r = Buf::new(256 << 10, 0xFF);
    assert_eq!(run(&*s, &done, 2, read(0, r.iov())), Ok(()));
    assert!(r.0 == w.0);
    let mut small = Buf::new(512, 0);
    assert_eq!(run(&*s, &done, 3, read(0, small.iov())), Err(IoError::Io));
    s.close();
}

#[test]
fn a_server_killed_with_io_on_the_wire_fails_it_and_every_later_io() {
    // Reads wait 10 s in the server: one is surely in flight when it dies.
    let srv = NbdServer::nbdkit("killed", MEDIUM, &["--filter=delay"], &["rdelay=10"]);
    let Some((mut srv, done, s)) = open_on(srv) else {
        return;
    };
    let mut b = Buf::new(4096, 0);
    s.submit(IoTag(1), read(0, b.iov())).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    srv.kill();
    let r = done.wait(IoTag(1));
    assert!(matches!(r, Err(IoError::Gone | IoError::Io)), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(9), "waited for the delay");
    for tag in 2..5 {
        let r = run(&*s, &done, tag, read(0, b.iov()));
        assert_eq!(r, Err(IoError::Gone), "tag {tag}");
    }
    assert_eq!(run(&*s, &done, 9, StoreIo::Flush), Err(IoError::Gone));
    s.close();
}

#[test]
fn closing_cuts_off_a_server_that_stopped_answering() {
    let Some(srv) = NbdServer::nbdkit("stopped", MEDIUM, &[], &[]) else {
        return;
    };
    let done = Arc::new(Done::default());
    let spec = NbdSpec {
        close_grace: Duration::from_secs(1),
        ..NbdSpec::new(&srv.uri)
    };
    let s = open(&spec, &done).unwrap();
    let mut b = Buf::new(4096, 0);
    assert_eq!(run(&*s, &done, 1, read(0, b.iov())), Ok(()));
    srv.signal("STOP");
    s.submit(IoTag(2), read(0, b.iov())).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    s.close();
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "close hung on the server"
    );
    let r = done.wait(IoTag(2));
    assert!(matches!(r, Err(IoError::Gone | IoError::Io)), "{r:?}");
    srv.signal("CONT");
}

#[test]
fn scattered_buffers_bounced_or_not_land_in_order() {
    // Sixty-four I/Os at once, each of eight pieces taken from a buffer
    // back to front: more than the store's bounce chunks, so some go out
    // through a chunk and some piece by piece; and one I/O larger than a
    // chunk. Read back with another split, every byte in its place.
    let Some((_srv, done, s)) = open_on(NbdServer::nbdkit("scatter", 16 << 20, &[], &[])) else {
        return;
    };
    const N: usize = 64;
    const LEN: usize = 64 << 10;
    let piece = LEN / 8;
    let mut srcs: Vec<Buf> = (0..N).map(|_| Buf::new(LEN, 0)).collect();
    for (i, b) in srcs.iter_mut().enumerate() {
        for (j, x) in b.0.iter_mut().enumerate() {
            *x = (i * 131 + j / 512) as u8;
        }
    }
    let backwards = |b: &mut Buf, len: usize, piece: usize| -> Vec<RawIoVec> {
        let base = b.0.as_mut_ptr() as usize;
        (0..len / piece)
            .map(|k| RawIoVec {
                addr: base + k * piece,
                len: piece,
            })
            .rev()
            .collect()
    };
    for (i, b) in srcs.iter_mut().enumerate() {
        let iov = backwards(b, LEN, piece);
        s.submit(
            IoTag(i as u32),
            StoreIo::Write {
                offset: (i * LEN) as u64,
                iov,
            },
        )
        .unwrap();
    }
    for i in 0..N {
        assert_eq!(done.wait(IoTag(i as u32)), Ok(()), "write {i}");
    }
    // On the medium, piece k of the I/O holds the buffer's piece 7 - k.
    let mut dsts: Vec<Buf> = (0..N).map(|_| Buf::new(LEN, 0xEE)).collect();
    for (i, d) in dsts.iter_mut().enumerate() {
        let iov = backwards(d, LEN, piece / 2);
        s.submit(
            IoTag(1000 + i as u32),
            StoreIo::Read {
                offset: (i * LEN) as u64,
                iov,
            },
        )
        .unwrap();
    }
    for i in 0..N {
        assert_eq!(done.wait(IoTag(1000 + i as u32)), Ok(()), "read {i}");
    }
    for i in 0..N {
        // Written backwards by pieces of `piece`, read backwards by halves:
        // the medium holds, at its half-piece h, the written buffer's
        // half-piece (15 - h) ^ 1; the read put medium half-piece h at
        // buffer half-piece 15 - h.
        let half = piece / 2;
        for h in 0..16 {
            let medium = ((15 - h) ^ 1) * half;
            let got = &dsts[i].0[(15 - h) * half..(16 - h) * half];
            assert!(
                got == &srcs[i].0[medium..medium + half],
                "I/O {i} half-piece {h}"
            );
        }
    }
    // Larger than a bounce chunk: 2 MiB in 4 KiB pieces, back to front.
    let mut big = Buf::new(2 << 20, 0);
    for (j, x) in big.0.iter_mut().enumerate() {
        *x = (j / 4096) as u8 ^ 0x5A;
    }
    let iov = backwards(&mut big, 2 << 20, 4096);
    assert_eq!(
        run(
            &*s,
            &done,
            5000,
            StoreIo::Write {
                offset: 8 << 20,
                iov
            }
        ),
        Ok(())
    );
    let mut back = Buf::new(2 << 20, 0);
    assert_eq!(run(&*s, &done, 5001, read(8 << 20, back.iov())), Ok(()));
    for p in 0..512 {
        let want = &big.0[(511 - p) * 4096..(512 - p) * 4096];
        assert!(&back.0[p * 4096..(p + 1) * 4096] == want, "big piece {p}");
    }
    s.close();
}

/// The commands nbdkit's log filter recorded: (command, offset, count, the
/// rest of the line).
fn logged(log: &std::path::Path) -> Vec<(String, u64, u64, String)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let hex = |l: &str, key: &str| -> Option<u64> {
        let v = l.split(' ').find_map(|w| w.strip_prefix(key))?;
        u64::from_str_radix(v.trim_start_matches("0x"), 16).ok()
    };
    // Request lines only: replies ("...Zero id=1 return=0") have no offset.
    text.lines()
        .filter_map(|l| {
            let cmd = l.split(' ').nth(3)?.to_string();
            Some((cmd, hex(l, "offset=")?, hex(l, "count=")?, l.to_string()))
        })
        .collect()
}

#[test]
fn writes_of_zeros_become_write_zeroes() {
    let Some((srv, done, s)) = open_on(logged_server("zeroes", &[])) else {
        return;
    };
    let mut data = Buf::new(65536, 0xAB);
    assert_eq!(run(&*s, &done, 1, write(0, data.iov())), Ok(()));
    // Zeros in four pieces, out of order; and a write of zeros but one
    // byte, which must go out as data.
    let mut z = Buf::new(32768, 0);
    let base = z.0.as_mut_ptr() as usize;
    let iov = [2usize, 0, 3, 1]
        .iter()
        .map(|k| RawIoVec {
            addr: base + k * 8192,
            len: 8192,
        })
        .collect();
    assert_eq!(
        run(&*s, &done, 2, StoreIo::Write { offset: 8192, iov }),
        Ok(())
    );
    let mut almost = Buf::new(8192, 0);
    almost.0[8191] = 1;
    assert_eq!(run(&*s, &done, 3, write(49152, almost.iov())), Ok(()));
    let mut back = Buf::new(65536, 0xEE);
    assert_eq!(run(&*s, &done, 4, read(0, back.iov())), Ok(()));
    s.close();
    assert!(back.0[..8192].iter().all(|&b| b == 0xAB));
    assert!(back.0[8192..40960].iter().all(|&b| b == 0), "zeros");
    assert!(back.0[40960..49152].iter().all(|&b| b == 0xAB));
    assert!(back.0[49152..57343].iter().all(|&b| b == 0));
    assert_eq!(back.0[57343], 1);
    assert!(back.0[57344..].iter().all(|&b| b == 0xAB));
    // nbdkit's memory plugin trims, so the zeroed range may become a hole
    // (no NO_HOLE flag: the filter logs "trim=1").
    let cmds = logged(&srv.file("log"));
    let zero: Vec<_> = cmds.iter().filter(|c| c.0 == "Zero").collect();
    assert_eq!(zero.len(), 1, "{cmds:?}");
    assert_eq!((zero[0].1, zero[0].2), (8192, 32768), "{cmds:?}");
    assert!(zero[0].3.contains("trim=1"), "{cmds:?}");
    assert!(
        cmds.iter()
            .any(|c| c.0 == "Write" && c.1 == 49152 && c.2 == 8192),
        "the write with one byte set went out as a write: {cmds:?}"
    );
    assert!(
        !cmds.iter().any(|c| c.0 == "Write" && c.1 == 8192),
        "the zeros went out as data: {cmds:?}"
    );
}

#[test]
fn without_write_zeroes_zeros_are_written_as_data() {
    let Some((srv, done, s)) = open_on(logged_server("nozero", &["--filter=nozero"])) else {
        return;
    };
    let mut data = Buf::new(16384, 0x5C);
    let mut zeros = Buf::new(8192, 0);
    assert_eq!(run(&*s, &done, 1, write(0, data.iov())), Ok(()));
    assert_eq!(run(&*s, &done, 2, write(4096, zeros.iov())), Ok(()));
    let mut back = Buf::new(16384, 0xEE);
    assert_eq!(run(&*s, &done, 3, read(0, back.iov())), Ok(()));
    s.close();
    assert!(back.0[..4096].iter().all(|&b| b == 0x5C));
    assert!(back.0[4096..12288].iter().all(|&b| b == 0));
    assert!(back.0[12288..].iter().all(|&b| b == 0x5C));
    let cmds = logged(&srv.file("log"));
    assert!(!cmds.iter().any(|c| c.0 == "Zero"), "{cmds:?}");
    assert!(
        cmds.iter()
            .any(|c| c.0 == "Write" && c.1 == 4096 && c.2 == 8192),
        "{cmds:?}"
    );
}

#[test]
fn server_errors_fail_the_io_and_the_store_carries_on() {
    // While the file exists the server fails reads, trims and zeroes with
    // EIO and writes with ENOSPC (nbdkit's error filter).
    let params = |dir: &std::path::Path| {
        let f = dir.join("fail");
        let f = f.display();
        vec![
            format!("error-file={f}"),
            String::from("error=EIO"),
            String::from("error-rate=100%"),
            format!("error-pwrite-file={f}"),
            String::from("error-pwrite=ENOSPC"),
            String::from("error-pwrite-rate=100%"),
        ]
    };
    let srv = NbdServer::nbdkit_with("errors", MEDIUM, &["--filter=error"], params);
    let Some((srv, done, s)) = open_on(srv) else {
        return;
    };
    let fail = srv.file("fail");
    let mut a = Buf::new(8192, 0x42);
    let write0 = |tag, b: &mut Buf| run(&*s, &done, tag, write(0, b.iov()));
    assert_eq!(write0(1, &mut a), Ok(()));
    std::fs::write(&fail, b"").unwrap();
    let mut b = Buf::new(8192, 0x77);
    let mut zeros = Buf::new(8192, 0);
    let mut r = Buf::new(8192, 0);
    assert_eq!(write0(2, &mut b), Err(IoError::NoSpace), "write");
    assert_eq!(write0(3, &mut zeros), Err(IoError::Io), "write of zeros");
    let read0 = |tag, r: &mut Buf| run(&*s, &done, tag, read(0, r.iov()));
    assert_eq!(read0(4, &mut r), Err(IoError::Io), "read");
    let discard = StoreIo::Discard {
        offset: 0,
        len: 4096,
        secure: false,
    };
    assert_eq!(run(&*s, &done, 5, discard), Err(IoError::Io), "discard");
    // The server recovers: the connection was never lost, the data is
    // what the last successful write left.
    std::fs::remove_file(&fail).unwrap();
    assert_eq!(read0(6, &mut r), Ok(()));
    assert!(
        r.0.iter().all(|&x| x == 0x42),
        "a failed write changed data"
    );
    assert_eq!(write0(7, &mut b), Ok(()));
    assert_eq!(read0(8, &mut r), Ok(()));
    assert!(r.0.iter().all(|&x| x == 0x77));
    s.close();
}

#[test]
fn a_server_that_never_answers_the_handshake_is_given_up() {
    if let Err(e) = xbb_ustore::libnbd_available() {
        return unavailable(&e).unwrap_or(());
    }
    // A socket that takes connections into its backlog and never speaks.
    let dir = std::env::temp_dir().join(format!("xbb-nbd-mute-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("sock");
    let _ = std::fs::remove_file(&sock);
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let spec = NbdSpec {
        open_timeout: Duration::from_secs(1),
        ..NbdSpec::new(&format!("nbd+unix:///?socket={}", sock.display()))
    };
    let done = Arc::new(Done::default());
    let t = Instant::now();
    let r = open(&spec, &done).err();
    assert_eq!(r, Some(OpenError::Other(libc::ETIMEDOUT)));
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "open waited {:?}",
        t.elapsed()
    );
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn each_io_becomes_its_nbd_command() {
    let Some((srv, done, s)) = open_on(logged_server("cmds", &[])) else {
        return;
    };
    let mut w = Buf::new(8192, 0x3C);
    let mut r = Buf::new(4096, 0);
    let ios = [
        write(65536, w.iov()),
        StoreIo::Flush,
        read(65536, r.iov()),
        StoreIo::Discard {
            offset: 131072,
            len: 16384,
            secure: false,
        },
    ];
    for (tag, io) in (1..).zip(ios) {
        assert_eq!(run(&*s, &done, tag, io), Ok(()), "I/O {tag}");
    }
    s.close();
    assert!(r.0.iter().all(|&b| b == 0x3C));
    let cmds = logged(&srv.file("log"));
    let has = |cmd: &str, offset: u64, count: u64| {
        cmds.iter()
            .any(|c| c.0 == cmd && c.1 == offset && c.2 == count)
    };
    assert!(has("Write", 65536, 8192), "{cmds:?}");
    assert!(has("Read", 65536, 4096), "{cmds:?}");
    assert!(has("Trim", 131072, 16384), "{cmds:?}");
    // A flush has no offset or count in the log: its own line.
    let text = std::fs::read_to_string(srv.file("log")).unwrap();
    assert!(
        text.lines().any(|l| l.split(' ').nth(3) == Some("Flush")),
        "{text}"
    );
}
