//! `fuzz_xenstore`: arbitrary front-end transport parameters (`io/blkif.h`,
//! "Front-end Request Transport Parameters") fed to
//! [`connect::read_frontend`].

use xbb::abi::{
    Abi, MAX_RING_PAGE_ORDER, XEN_IO_PROTO_ABI_ARM, XEN_IO_PROTO_ABI_X86_32,
    XEN_IO_PROTO_ABI_X86_64,
};
use xbb::connect::{self, FrontendParams, QueueParams, XS_TXN_RETRIES};
use xbb::keys;

use super::input::Input;
use crate::xenstore::XsMap;

const XS_FE: &str = "/local/domain/3/device/vbd/768";
const XS_KEYS: [&str; 5] = [
    keys::RING_PAGE_ORDER,
    keys::NUM_RING_PAGES,
    keys::RING_REF,
    keys::EVENT_CHANNEL,
    keys::PROTOCOL,
];

fn xs_path(key: &str) -> String {
    format!("{XS_FE}/{key}")
}

/// A strict decimal, the oracle's own reading.
/// Leading zeros are allowed (any number of them), as the core's
/// `parse_u64` allows them; only the value must fit.
fn dec(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &c| {
        n.checked_mul(10)?.checked_add(u64::from(c - b'0'))
    })
}

fn dec32(v: &[u8]) -> Option<u32> {
    u32::try_from(dec(v)?).ok()
}

/// An arbitrary node value: absent, a small number, a u32, a u64, or raw
/// bytes.
fn arbitrary_value(r: &mut Input<'_>) -> Option<Vec<u8>> {
    match r.u8() % 8 {
        0 | 1 => None,
        2 => Some(format!("{}", r.u8() % 8).into_bytes()),
        3 => Some(format!("{}", r.u32()).into_bytes()),
        4 => Some(format!("{}", r.u64()).into_bytes()),
        5 => Some(format!("0{}", r.u8()).into_bytes()),
        6 => {
            let p = [
                XEN_IO_PROTO_ABI_X86_32,
                XEN_IO_PROTO_ABI_X86_64,
                XEN_IO_PROTO_ABI_ARM,
            ];
            Some(Vec::from(p[usize::from(r.u8() % 3)].as_bytes()))
        }
        _ => {
            let n = usize::from(r.u8());
            Some(Vec::from(r.bytes(n)))
        }
    }
}

/// Feeds front-end transport parameters to [`connect::read_frontend`].
///
/// Half the inputs (by the first byte) build a well-formed directory that
/// must be accepted with exactly its values; the rest write arbitrary
/// values (absent, numbers of every width, leading zeros, protocol names,
/// raw bytes) to `ring-page-order`, `num-ring-pages`, `ring-ref`,
/// `ring-ref0..31`, `event-channel` and `protocol`, with XenStore conflicts
/// and read failures. Any accepted result must satisfy every rule.
pub fn fuzz_xenstore(data: &[u8]) {
    let mut r = Input::new(data);
    let mode = r.u8();
    let mo = r.u8();
    let max_order = if mo < 200 { u32::from(mo % 8) } else { r.u32() };
    let mut xs = XsMap::default();
    let conflicts = u32::from(r.u8() % 12);
    xs.again_commits = conflicts;
    let well_formed = mode % 2 == 0;
    let expect = if well_formed {
        xs.again_commits = conflicts.min(XS_TXN_RETRIES);
        Some(write_well_formed(&mut r, &mut xs, max_order))
    } else {
        write_arbitrary(&mut r, &mut xs);
        None
    };

    let got = connect::read_frontend(&mut xs, XS_FE, max_order, 1);
    if let Some(want) = expect {
        assert_eq!(got, Ok(want), "well-formed parameters refused");
    }
    if let Ok(p) = got {
        assert!(conflicts <= XS_TXN_RETRIES || well_formed);
        check_accepted(&p, &xs, max_order);
    }
}

/// Writes a well-formed directory; returns what it must read as.
fn write_well_formed(r: &mut Input<'_>, xs: &mut XsMap, max_order: u32) -> FrontendParams {
    let cap = max_order.min(MAX_RING_PAGE_ORDER);
    let order = u32::from(r.u8()) % (cap + 1);
    let style = r.u8() % 3;
    let mut put = |key: &str, v: &[u8]| xs.set(&xs_path(key), v);
    if order > 0 || style != 0 {
        if style != 1 {
            put(keys::RING_PAGE_ORDER, format!("{order}").as_bytes());
        }
        if style != 0 {
            put(
                keys::NUM_RING_PAGES,
                format!("{}", 1u32 << order).as_bytes(),
            );
        }
    }
    let mut refs = [0u32; 32];
    for (i, slot) in refs.iter_mut().enumerate().take(1 << order) {
        // Distinct, as a ring's pages are (the low bits are the page).
        *slot = (r.u32() & !0x1f) | i as u32;
        let key = if order == 0 && style != 2 {
            String::from(keys::RING_REF)
        } else {
            format!("ring-ref{i}")
        };
        put(&key, format!("{slot}").as_bytes());
    }
    let port = r.u32();
    put(keys::EVENT_CHANNEL, format!("{port}").as_bytes());
    let abi = match r.u8() % 4 {
        0 => Abi::native(),
        1 => {
            put(keys::PROTOCOL, XEN_IO_PROTO_ABI_X86_32.as_bytes());
            Abi::X86_32
        }
        2 => {
            put(keys::PROTOCOL, XEN_IO_PROTO_ABI_X86_64.as_bytes());
            Abi::X86_64
        }
        _ => {
            put(keys::PROTOCOL, XEN_IO_PROTO_ABI_ARM.as_bytes());
            Abi::X86_64
        }
    };
    FrontendParams {
        ring_pages: 1 << order,
        abi,
        queues: vec![QueueParams {
            ring_refs: refs,
            event_channel: port,
        }],
        persistent: false,
    }
}

/// Writes arbitrary values to every node `read_frontend` reads, and may
/// arm a read failure.
fn write_arbitrary(r: &mut Input<'_>, xs: &mut XsMap) {
    for key in XS_KEYS {
        if let Some(v) = arbitrary_value(r) {
            xs.set(&xs_path(key), &v);
        }
    }
    let count = usize::from(r.u8() % 33);
    for i in 0..count {
        if let Some(v) = arbitrary_value(r) {
            xs.set(&xs_path(&format!("ring-ref{i}")), &v);
        }
    }
    let f = r.u8();
    if f >= 200 {
        xs.fail_read = Some(u32::from(f - 199));
    }
}

/// An accepted result agrees with the oracle's own reading of the nodes.
fn check_accepted(p: &FrontendParams, xs: &XsMap, max_order: u32) {
    let cap = max_order.min(MAX_RING_PAGE_ORDER);
    assert!(p.ring_pages.is_power_of_two() && p.ring_pages <= 1 << cap);
    let order = p.ring_pages.trailing_zeros();
    let node = |k: &str| xs.get_bytes(&xs_path(k));
    match (node(keys::RING_PAGE_ORDER), node(keys::NUM_RING_PAGES)) {
        (None, None) => assert_eq!(p.ring_pages, 1),
        (o, n) => {
            if let Some(o) = o {
                assert_eq!(dec32(o), Some(order), "ring-page-order disagrees");
            }
            if let Some(n) = n {
                assert_eq!(dec32(n), Some(p.ring_pages), "num-ring-pages disagrees");
            }
        }
    }
    assert_eq!(p.refs(0).len(), p.ring_pages as usize);
    assert_eq!(p.queues.len(), 1);
    if p.ring_pages == 1 {
        let want = match node(keys::RING_REF) {
            Some(v) => dec32(v),
            None => node("ring-ref0").and_then(dec32),
        };
        assert_eq!(Some(p.queues[0].ring_refs[0]), want);
    } else {
        for (i, &g) in p.refs(0).iter().enumerate() {
            let v = node(&format!("ring-ref{i}")).expect("ring-ref node");
            assert_eq!(dec32(v), Some(g));
        }
    }
    assert!(p.queues[0].ring_refs[p.ring_pages as usize..]
        .iter()
        .all(|&g| g == 0));
    let refs = p.refs(0);
    for (i, g) in refs.iter().enumerate() {
        assert!(!refs[..i].contains(g), "a ring page named twice accepted");
    }
    assert_eq!(
        node(keys::EVENT_CHANNEL).and_then(dec32),
        Some(p.queues[0].event_channel)
    );
    let want_abi = match node(keys::PROTOCOL) {
        None => Abi::native(),
        Some(v) => Abi::from_protocol(v).expect("unknown protocol accepted"),
    };
    assert_eq!(p.abi, want_abi);
}
