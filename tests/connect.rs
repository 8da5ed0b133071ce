//! The XenStore side of a connection (`xbb::connect`) over an in-memory
//! XenStore with real transactions: every vetting rule for the back-end's
//! and the front-end's nodes (strict decimals, ranges, legacy and
//! multi-queue layouts, multi-page rings), the offer and the connection
//! published in one transaction each, retries on conflicts, and failures of
//! the store at every step.

use xbb::abi::{self, Abi};
use xbb::connect::*;
use xbb::host::{
    EvtchnError, GrantError, GrantRef, MediumInfo, OpenError, XenbusState, XsError, XsTxn,
};
use xbb::units::Sectors;
use xbb_testing::{XsMap, BE_PATH as BE, FE_PATH as FE};

fn fe(key: &str) -> String {
    format!("{FE}/{key}")
}
fn be(key: &str) -> String {
    format!("{BE}/{key}")
}

/// `$name(key)`: a read's refusal `ConnectError::$kind { key }`.
macro_rules! refusals {
    ($($name:ident: $kind:ident),* $(,)?) => {$(
        fn $name<T>(key: &'static str) -> Result<T, ConnectError> {
            Err(ConnectError::$kind { key })
        }
    )*};
}
refusals! {
    missing: Missing,
    empty: Empty,
    not_a_number: NotANumber,
    too_large: TooLarge,
    too_long: TooLong,
    bad_value: BadValue,
}

fn out_of_range<T>(key: &'static str, value: u64) -> Result<T, ConnectError> {
    Err(ConnectError::OutOfRange { key, value })
}
fn xs_error<T>(key: &'static str, err: XsError) -> Result<T, ConnectError> {
    Err(ConnectError::Xs { key, err })
}

// ---- parsing -----------------------------------------------------------

/// Digits with something around or inside them: not decimal numbers.
const NOT_DECIMAL: [&[u8]; 7] = [b" 1", b"1 ", b"+1", b"-1", b"0x10", b"1\n", b"1\0"];

#[test]
fn parse_strict_decimal() {
    // Digits only, leading zeros decimal (not octal), nothing around them,
    // nothing past the type's maximum.
    for (text, want) in [(&b"0"[..], 0), (b"4294967295", u32::MAX), (b"007", 7)] {
        assert_eq!(parse_u32(text), Some(want), "{text:?}");
    }
    for text in NOT_DECIMAL.into_iter().chain([&b""[..], b"4294967296"]) {
        assert_eq!(parse_u32(text), None, "{text:?}");
    }
    assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
    assert_eq!(parse_u64(b"18446744073709551616"), None);
    assert_eq!(parse_u64(b"4294967296"), Some(1 << 32));
}

#[test]
fn parse_says_which_rule_broke() {
    assert_eq!(parse_decimal(b""), Err(NumError::Empty));
    for bad in NOT_DECIMAL.into_iter().chain([&b"x"[..]]) {
        assert_eq!(parse_decimal(bad), Err(NumError::NotDecimal), "{bad:?}");
    }
    assert_eq!(parse_decimal(b"18446744073709551615"), Ok(u64::MAX));
    assert_eq!(
        parse_decimal(b"18446744073709551616"),
        Err(NumError::TooLarge)
    );
    assert_eq!(parse_decimal(&[b'9'; 40]), Err(NumError::TooLarge));
    // A non-digit anywhere is not a number, however long the digits run.
    assert_eq!(
        parse_decimal(b"99999999999999999999x"),
        Err(NumError::NotDecimal)
    );
}

#[test]
fn read_u32_rules() {
    let mut xs = XsMap::default();
    let t = XsTxn::NONE;
    let key = "event-channel";
    assert_eq!(read_u32(&mut xs, t, FE, key), Ok(None));
    for bad in [" 1", "1 ", "+1", "-1", "0x10"] {
        xs.set(&fe(key), bad.as_bytes());
        assert_eq!(read_u32(&mut xs, t, FE, key), not_a_number(key), "{bad:?}");
    }
    xs.set(&fe(key), b"");
    assert_eq!(read_u32(&mut xs, t, FE, key), empty(key));
    xs.set(&fe(key), b"4294967296");
    assert_eq!(read_u32(&mut xs, t, FE, key), out_of_range(key, 1 << 32));
    xs.set(&fe(key), b"18446744073709551616");
    assert_eq!(read_u32(&mut xs, t, FE, key), too_large(key));
    xs.set(&fe("event-channel"), b"4294967295");
    assert_eq!(
        read_u32(&mut xs, t, FE, "event-channel"),
        Ok(Some(u32::MAX))
    );
    xs.set(&fe("event-channel"), &[b'1'; 300]);
    assert_eq!(
        read_u32(&mut xs, t, FE, "event-channel"),
        too_long("event-channel")
    );
    xs.fail = Some((fe("event-channel"), XsError::Denied));
    assert_eq!(
        read_u32(&mut xs, t, FE, "event-channel"),
        xs_error("event-channel", XsError::Denied)
    );
}

#[test]
fn read_bool_rules() {
    let mut xs = XsMap::default();
    let t = XsTxn::NONE;
    assert_eq!(read_bool(&mut xs, t, BE, "online"), Ok(None));
    xs.set(&be("online"), b"1");
    assert_eq!(read_bool(&mut xs, t, BE, "online"), Ok(Some(true)));
    xs.set(&be("online"), b"0");
    assert_eq!(read_bool(&mut xs, t, BE, "online"), Ok(Some(false)));
    xs.set(&be("online"), b"2");
    assert_eq!(
        read_bool(&mut xs, t, BE, "online"),
        out_of_range("online", 2)
    );
    xs.set(&be("online"), b"yes");
    assert_eq!(read_bool(&mut xs, t, BE, "online"), not_a_number("online"));
    xs.set(&be("online"), b"");
    assert_eq!(read_bool(&mut xs, t, BE, "online"), empty("online"));
    xs.set(&be("online"), b"99999999999999999999");
    assert_eq!(read_bool(&mut xs, t, BE, "online"), too_large("online"));
}

/// Each way a number can be wrong reads differently in the `error` node.
#[test]
fn number_errors_say_what_is_wrong() {
    let msg = |v: &[u8]| {
        let mut xs = XsMap::default();
        xs.set(&fe("event-channel"), v);
        read_u32(&mut xs, XsTxn::NONE, FE, "event-channel")
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        msg(b"4294967296"),
        "event-channel: 4294967296 is out of range"
    );
    assert_eq!(msg(b"abc"), "event-channel: not a decimal number");
    assert_eq!(msg(b""), "event-channel: empty, not a number");
    assert_eq!(
        msg(b"18446744073709551616"),
        "event-channel: out of range (above 18446744073709551615)"
    );
}

#[test]
fn read_string_rules() {
    let mut xs = XsMap::default();
    let t = XsTxn::NONE;
    assert_eq!(read_string(&mut xs, t, BE, "type", 4), Ok(None));
    xs.set(&be("type"), b"phy");
    assert_eq!(
        read_string(&mut xs, t, BE, "type", 4),
        Ok(Some("phy".to_string()))
    );
    xs.set(&be("type"), b"file!");
    assert_eq!(read_string(&mut xs, t, BE, "type", 4), too_long("type"));
    xs.set(&be("type"), b"\xff");
    assert_eq!(read_string(&mut xs, t, BE, "type", 4), bad_value("type"));
    xs.set(&be("type"), b"a\0b");
    assert_eq!(read_string(&mut xs, t, BE, "type", 4), bad_value("type"));
}

// ---- back-end nodes -----------------------------------------------------

fn backend_store() -> XsMap {
    XsMap::with(&[
        (&be("frontend"), FE),
        (&be("frontend-id"), "1"),
        (&be("params"), "/dev/zvol/tank/vm1"),
        (&be("type"), "phy"),
        (&be("mode"), "w"),
    ])
}

#[test]
fn backend_nodes_defaults_and_values() {
    let mut xs = backend_store();
    let n = read_backend_nodes(&mut xs, BE).unwrap();
    assert_eq!(
        n,
        BackendNodes {
            frontend: FE.to_string(),
            frontend_id: 1,
            params: "/dev/zvol/tank/vm1".to_string(),
            kind: "phy".to_string(),
            writable: true,
            online: false,
            discard_enable: true,
            hotplug_script: false,
            direct_io_safe: false,
        }
    );
    xs.del(&be("type"));
    xs.del(&be("mode"));
    xs.set(&be("online"), b"1");
    xs.set(&be("discard-enable"), b"0");
    let n = read_backend_nodes(&mut xs, BE).unwrap();
    assert_eq!(n.kind, "");
    assert!(!n.writable);
    assert!(n.online);
    assert!(!n.discard_enable);
    xs.set(&be("mode"), b"w!");
    assert!(read_backend_nodes(&mut xs, BE).unwrap().writable);
    xs.set(&be("mode"), b"r");
    assert!(!read_backend_nodes(&mut xs, BE).unwrap().writable);
    // libxl writes direct-io-safe = 1 for the disk option of that name.
    xs.set(&be("direct-io-safe"), b"1");
    assert!(read_backend_nodes(&mut xs, BE).unwrap().direct_io_safe);
    xs.set(&be("direct-io-safe"), b"0");
    assert!(!read_backend_nodes(&mut xs, BE).unwrap().direct_io_safe);
    xs.set(&be("direct-io-safe"), b"2");
    assert_eq!(
        read_backend_nodes(&mut xs, BE),
        out_of_range("direct-io-safe", 2)
    );
}

#[test]
fn backend_params_fallback_and_missing() {
    let mut xs = backend_store();
    xs.del(&be("params"));
    xs.set(&be("physical-device-path"), b"/var/vm1.img");
    assert_eq!(
        read_backend_nodes(&mut xs, BE).unwrap().params,
        "/var/vm1.img"
    );
    xs.del(&be("physical-device-path"));
    assert_eq!(read_backend_nodes(&mut xs, BE), missing("params"));
}

#[test]
fn backend_required_nodes() {
    let mut xs = backend_store();
    xs.del(&be("frontend"));
    assert_eq!(read_backend_nodes(&mut xs, BE), missing("frontend"));
    let mut xs = backend_store();
    xs.del(&be("frontend-id"));
    assert_eq!(read_backend_nodes(&mut xs, BE), missing("frontend-id"));
    assert_eq!(xs.aborts, 1, "a failed read aborts its transaction");
}

#[test]
fn backend_frontend_id_range() {
    let mut xs = backend_store();
    xs.set(&be("frontend-id"), b"32751"); // 0x7FEF
    assert_eq!(read_backend_nodes(&mut xs, BE).unwrap().frontend_id, 0x7FEF);
    for (v, n) in [("32752", 0x7FF0u64), ("65535", 0xFFFF), ("65536", 0x10000)] {
        xs.set(&be("frontend-id"), v.as_bytes());
        assert_eq!(
            read_backend_nodes(&mut xs, BE),
            out_of_range("frontend-id", n)
        );
    }
    xs.set(&be("frontend-id"), b"-1");
    assert_eq!(read_backend_nodes(&mut xs, BE), not_a_number("frontend-id"));
}

#[test]
fn backend_bad_mode() {
    let mut xs = backend_store();
    for bad in ["", "rw", "W", "w ", "x"] {
        xs.set(&be("mode"), bad.as_bytes());
        assert_eq!(
            read_backend_nodes(&mut xs, BE),
            bad_value("mode"),
            "{bad:?}"
        );
    }
}

/// Asserts the back-end's nodes hold `want`: `key=value`, space apart.
#[track_caller]
fn assert_be(xs: &XsMap, want: &str) {
    for node in want.split_whitespace() {
        let (key, value) = node.split_once('=').unwrap();
        assert_eq!(xs.get(&be(key)), Some(value), "{key}");
    }
}

// ---- offer --------------------------------------------------------------

fn offer(max_ring_page_order: u32, max_queues: u32, persistent: bool) -> Offer {
    Offer {
        max_ring_page_order,
        max_queues,
        persistent,
    }
}

#[test]
fn offer_contents_and_state_untouched() {
    let mut xs = XsMap::with(&[(&be("state"), "1")]);
    publish_offer(&mut xs, BE, &offer(3, 4, true)).unwrap();
    assert_be(&xs, "max-ring-page-order=3 max-ring-pages=8 multi-queue-max-queues=4 feature-persistent=1 state=1");
    assert_eq!(xs.commits, 1);

    publish_offer(&mut xs, BE, &offer(0, MAX_QUEUES, false)).unwrap();
    assert_be(
        &xs,
        "max-ring-page-order=0 max-ring-pages=1 multi-queue-max-queues=16 feature-persistent=0",
    );
    assert_eq!(xs.commits, 2);
}

#[test]
fn offer_queue_count_range() {
    for q in [0, MAX_QUEUES + 1, u32::MAX] {
        let mut xs = XsMap::default();
        assert_eq!(
            publish_offer(&mut xs, BE, &offer(1, q, true)),
            out_of_range("multi-queue-max-queues", u64::from(q))
        );
        assert!(xs.is_empty(), "{q}: nothing written");
        assert_eq!(xs.transactions, 0, "{q}: checked before the transaction");
    }
    for q in [1, MAX_QUEUES] {
        let mut xs = XsMap::default();
        let offer = offer(1, q, false);
        publish_offer(&mut xs, BE, &offer).unwrap();
        let want = q.to_string();
        assert_eq!(xs.get(&be("multi-queue-max-queues")), Some(want.as_str()));
    }
}

#[test]
fn offer_new_nodes_in_the_same_transaction() {
    let mut xs = XsMap::default();
    xs.fail = Some((be("feature-persistent"), XsError::Denied));
    let offer = offer(2, 2, true);
    assert_eq!(
        publish_offer(&mut xs, BE, &offer),
        xs_error("feature-persistent", XsError::Denied)
    );
    assert!(xs.is_empty(), "aborted transaction left nothing");
    assert_eq!((xs.commits, xs.aborts), (0, 1));
}

#[test]
fn offer_order_above_maximum() {
    let mut xs = XsMap::default();
    let order = abi::MAX_RING_PAGE_ORDER + 1;
    assert_eq!(
        publish_offer(&mut xs, BE, &offer(order, 4, true)),
        out_of_range("max-ring-page-order", u64::from(order))
    );
    assert!(xs.is_empty());
}

#[test]
fn offer_retried_on_again() {
    let mut xs = XsMap::default();
    xs.again_commits = 1;
    publish_offer(&mut xs, BE, &offer(0, 4, true)).unwrap();
    assert_be(&xs, "max-ring-page-order=0 max-ring-pages=1");
    assert_eq!(xs.transactions, 2, "one conflict, one retry");
}

#[test]
fn retries_are_bounded() {
    let offer = offer(1, 4, true);
    let mut xs = XsMap::default();
    xs.again_commits = XS_TXN_RETRIES;
    publish_offer(&mut xs, BE, &offer).unwrap();
    assert_eq!(xs.transactions, XS_TXN_RETRIES + 1);

    let mut xs = XsMap::default();
    xs.again_commits = XS_TXN_RETRIES + 1;
    assert_eq!(
        publish_offer(&mut xs, BE, &offer),
        xs_error("transaction", XsError::Again)
    );
    assert!(xs.is_empty(), "nothing committed");
    assert_eq!(xs.transactions, XS_TXN_RETRIES + 1);
}

#[test]
fn offer_write_failure() {
    let mut xs = XsMap::default();
    xs.fail = Some((be("max-ring-pages"), XsError::Other(28)));
    let e = publish_offer(&mut xs, BE, &offer(2, 4, true)).unwrap_err();
    assert_eq!(
        e,
        ConnectError::Xs {
            key: "max-ring-pages",
            err: XsError::Other(28)
        }
    );
    assert_eq!(e.errno(), 28);
    assert!(xs.is_empty(), "aborted transaction left nothing");
}

// ---- front-end ----------------------------------------------------------

/// Reads the front-end's parameters allowing rings of up to 32 pages
/// (order 5) and `max_queues` queues.
fn read(xs: &mut XsMap, max_queues: u32) -> Result<FrontendParams, ConnectError> {
    read_frontend(xs, FE, 5, max_queues)
}

fn one_page_frontend() -> XsMap {
    XsMap::with(&[(&fe("ring-ref"), "8"), (&fe("event-channel"), "17")])
}

fn multi_page_frontend(order: u32) -> XsMap {
    let mut xs = XsMap::with(&[(&fe("event-channel"), "17")]);
    xs.set(&fe("ring-page-order"), order.to_string().as_bytes());
    for i in 0..(1u32 << order) {
        xs.set(
            &fe(&format!("ring-ref{i}")),
            (100 + i).to_string().as_bytes(),
        );
    }
    xs
}

#[test]
fn frontend_one_page_defaults() {
    let mut xs = one_page_frontend();
    let p = read(&mut xs, MAX_QUEUES).unwrap();
    assert_eq!(p.ring_pages, 1);
    assert_eq!(p.refs(0), &[8]);
    assert_eq!(p.queues[0].event_channel, 17);
    assert_eq!(p.abi, Abi::native());
    assert!(p.queues[0].ring_refs[1..].iter().all(|&r| r == 0));
}

#[test]
fn frontend_ring_ref0_alone_for_one_page() {
    let mut xs = XsMap::with(&[
        (&fe("ring-ref0"), "4294967295"),
        (&fe("event-channel"), "0"),
    ]);
    let p = read(&mut xs, MAX_QUEUES).unwrap();
    assert_eq!(p.refs(0), &[u32::MAX]);
    assert_eq!(p.queues[0].event_channel, 0);
    // ring-ref wins when both exist.
    xs.set(&fe("ring-ref"), b"9");
    assert_eq!(read(&mut xs, MAX_QUEUES).unwrap().refs(0), &[9]);
}

#[test]
fn frontend_ring_ref_missing() {
    let mut xs = one_page_frontend();
    xs.del(&fe("ring-ref"));
    assert_eq!(read(&mut xs, MAX_QUEUES), missing("ring-ref"));
}

#[test]
fn frontend_ring_ref_not_a_number() {
    let mut xs = one_page_frontend();
    xs.set(&fe("ring-ref"), b"0x8");
    assert_eq!(read(&mut xs, MAX_QUEUES), not_a_number("ring-ref"));
    let mut xs = multi_page_frontend(1);
    xs.set(&fe("ring-ref1"), b"4294967296");
    assert_eq!(
        read(&mut xs, MAX_QUEUES),
        out_of_range("ring-ref1", 1 << 32)
    );
}

#[test]
fn frontend_multi_page() {
    for order in 1..=abi::MAX_RING_PAGE_ORDER {
        let mut xs = multi_page_frontend(order);
        let p = read_frontend(&mut xs, FE, abi::MAX_RING_PAGE_ORDER, MAX_QUEUES).unwrap();
        assert_eq!(p.ring_pages, 1 << order);
        let want: Vec<u32> = (0..(1u32 << order)).map(|i| 100 + i).collect();
        assert_eq!(p.refs(0), &want[..]);
    }
}

#[test]
fn frontend_page_missing_of_four() {
    let mut xs = multi_page_frontend(2);
    xs.del(&fe("ring-ref2"));
    assert_eq!(read(&mut xs, MAX_QUEUES), missing("ring-ref2"));
}

#[test]
fn frontend_order_above_maximum() {
    let mut xs = multi_page_frontend(1);
    xs.set(&fe("ring-page-order"), b"6");
    assert_eq!(
        read(&mut xs, MAX_QUEUES),
        out_of_range("ring-page-order", 6)
    );
    xs.set(&fe("ring-page-order"), b"4294967295");
    assert_eq!(
        read(&mut xs, MAX_QUEUES),
        out_of_range("ring-page-order", u64::from(u32::MAX))
    );
    // The caller's own (smaller) limit applies.
    xs.set(&fe("ring-page-order"), b"1");
    assert_eq!(
        read_frontend(&mut xs, FE, 0, MAX_QUEUES),
        out_of_range("ring-page-order", 1)
    );
    // A caller limit above the ABI's is capped to it.
    let mut xs = multi_page_frontend(5);
    xs.set(&fe("ring-page-order"), b"6");
    assert_eq!(
        read_frontend(&mut xs, FE, u32::MAX, MAX_QUEUES),
        out_of_range("ring-page-order", 6)
    );
}

#[test]
fn frontend_num_ring_pages() {
    // The old scheme alone.
    let mut xs = multi_page_frontend(2);
    xs.del(&fe("ring-page-order"));
    xs.set(&fe("num-ring-pages"), b"4");
    let p = read(&mut xs, MAX_QUEUES).unwrap();
    assert_eq!(p.ring_pages, 4);
    assert_eq!(p.refs(0), &[100, 101, 102, 103]);
    // num-ring-pages 1 uses ring-ref.
    let mut xs = one_page_frontend();
    xs.set(&fe("num-ring-pages"), b"1");
    assert_eq!(read(&mut xs, MAX_QUEUES).unwrap().refs(0), &[8]);

    for (v, n) in [
        ("3", 3u64),
        ("0", 0),
        ("64", 64),
        ("4294967295", 4294967295),
    ] {
        let mut xs = multi_page_frontend(2);
        xs.del(&fe("ring-page-order"));
        xs.set(&fe("num-ring-pages"), v.as_bytes());
        assert_eq!(
            read(&mut xs, MAX_QUEUES),
            out_of_range("num-ring-pages", n),
            "{v}"
        );
    }
    // Within 1..=32 but above the caller's limit.
    let mut xs = multi_page_frontend(2);
    xs.del(&fe("ring-page-order"));
    xs.set(&fe("num-ring-pages"), b"4");
    assert_eq!(
        read_frontend(&mut xs, FE, 1, MAX_QUEUES),
        out_of_range("num-ring-pages", 4)
    );
}

#[test]
fn frontend_both_size_keys() {
    let mut xs = multi_page_frontend(2);
    xs.set(&fe("num-ring-pages"), b"4");
    assert_eq!(read(&mut xs, MAX_QUEUES).unwrap().ring_pages, 4);
    xs.set(&fe("num-ring-pages"), b"8");
    assert_eq!(read(&mut xs, MAX_QUEUES), out_of_range("num-ring-pages", 8));
}

#[test]
fn frontend_event_channel() {
    let mut xs = one_page_frontend();
    xs.del(&fe("event-channel"));
    assert_eq!(read(&mut xs, MAX_QUEUES), missing("event-channel"));
    xs.set(&fe("event-channel"), b"-1");
    assert_eq!(read(&mut xs, MAX_QUEUES), not_a_number("event-channel"));
}

#[test]
fn frontend_protocol() {
    let mut xs = one_page_frontend();
    xs.set(&fe("protocol"), abi::XEN_IO_PROTO_ABI_X86_32.as_bytes());
    let p32 = read(&mut xs, MAX_QUEUES).unwrap().abi;
    assert_eq!(Some(p32), Abi::from_protocol(b"x86_32-abi"));
    xs.set(&fe("protocol"), b"x86_64-abi");
    let p64 = read(&mut xs, MAX_QUEUES).unwrap().abi;
    assert_eq!(Some(p64), Abi::from_protocol(b"x86_64-abi"));
    assert_ne!(p32, p64);
    for bad in [&b"x86_16-abi"[..], b"", b"x86_32-abi ", b"X86_32-ABI"] {
        xs.set(&fe("protocol"), bad);
        assert_eq!(
            read(&mut xs, MAX_QUEUES),
            Err(ConnectError::UnknownProtocol),
            "{bad:?}"
        );
    }
}

#[test]
fn frontend_read_retried_on_again() {
    let mut xs = multi_page_frontend(1);
    xs.again_commits = 1;
    let p = read(&mut xs, MAX_QUEUES).unwrap();
    assert_eq!(p.refs(0), &[100, 101]);
    assert_eq!(xs.transactions, 2);
}

#[test]
fn frontend_read_error_inside_transaction() {
    let mut xs = multi_page_frontend(1);
    xs.fail = Some((fe("ring-ref1"), XsError::Denied));
    assert_eq!(
        read(&mut xs, MAX_QUEUES),
        xs_error("ring-ref1", XsError::Denied)
    );
    assert_eq!(xs.aborts, 1);
    assert_eq!(xs.commits, 0);
}

/// A front-end with `queues` queues of `1 << order` pages each in the
/// multi-queue layout: queue N's page P has reference `1000 * N + P`,
/// its event channel is `50 + N`. A one-page ring uses `ring-ref`.
fn multi_queue_frontend(queues: u32, order: u32) -> XsMap {
    let mut xs = XsMap::default();
    xs.set(&fe("multi-queue-num-queues"), queues.to_string().as_bytes());
    if order > 0 {
        xs.set(&fe("ring-page-order"), order.to_string().as_bytes());
    }
    for n in 0..queues {
        let q = format!("queue-{n}");
        xs.set(&fe(&q), b"");
        if order == 0 {
            xs.set(
                &fe(&format!("{q}/ring-ref")),
                (1000 * n).to_string().as_bytes(),
            );
        } else {
            for i in 0..(1u32 << order) {
                xs.set(
                    &fe(&format!("{q}/ring-ref{i}")),
                    (1000 * n + i).to_string().as_bytes(),
                );
            }
        }
        xs.set(
            &fe(&format!("{q}/event-channel")),
            (50 + n).to_string().as_bytes(),
        );
    }
    xs
}

fn check_multi_queue(p: &FrontendParams, queues: u32, order: u32) {
    assert_eq!(p.num_queues(), queues);
    assert_eq!(p.queues.len(), queues as usize);
    assert_eq!(p.ring_pages, 1 << order);
    for n in 0..queues {
        let want: Vec<u32> = (0..(1u32 << order)).map(|i| 1000 * n + i).collect();
        assert_eq!(p.refs(n as usize), &want[..], "queue {n}");
        assert_eq!(p.queues[n as usize].event_channel, 50 + n, "queue {n}");
        let rest = &p.queues[n as usize].ring_refs[1usize << order..];
        assert!(rest.iter().all(|&r| r == 0), "queue {n}");
    }
    assert!(p.refs(queues as usize).is_empty());
}

#[test]
fn frontend_num_queues_absent_is_one_legacy_queue() {
    let mut xs = one_page_frontend();
    let p = read(&mut xs, MAX_QUEUES).unwrap();
    assert_eq!(p.num_queues(), 1);
    assert_eq!(p.refs(0), &[8]);
    assert_eq!(p.queues[0].event_channel, 17);
    assert!(!p.persistent);
    // Even when the caller would allow none: one queue is always served.
    assert_eq!(read(&mut xs, 0).unwrap().num_queues(), 1);
}

#[test]
fn frontend_num_queues_one_uses_the_legacy_layout() {
    let mut xs = multi_page_frontend(1);
    xs.set(&fe("multi-queue-num-queues"), b"1");
    // A queue-0 directory is not what one queue uses.
    xs.set(&fe("queue-0/ring-ref0"), b"555");
    xs.set(&fe("queue-0/ring-ref1"), b"556");
    xs.set(&fe("queue-0/event-channel"), b"99");
    let p = read(&mut xs, MAX_QUEUES).unwrap();
    assert_eq!(p.num_queues(), 1);
    assert_eq!(p.refs(0), &[100, 101]);
    assert_eq!(p.queues[0].event_channel, 17);
    // ... and errors keep the top-level names.
    xs.del(&fe("event-channel"));
    assert_eq!(read(&mut xs, 1), missing("event-channel"));
}

#[test]
fn frontend_num_queues_two_and_max() {
    let mut xs = multi_queue_frontend(2, 0);
    // Top-level transport nodes are not used with several queues.
    xs.set(&fe("ring-ref"), b"7");
    xs.set(&fe("event-channel"), b"7");
    let p = read(&mut xs, 4).unwrap();
    check_multi_queue(&p, 2, 0);

    let mut xs = multi_queue_frontend(MAX_QUEUES, 0);
    let p = read(&mut xs, MAX_QUEUES).unwrap();
    check_multi_queue(&p, MAX_QUEUES, 0);
    assert_eq!(xs.commits, 1, "one transaction");

    // Exactly the caller's limit.
    let mut xs = multi_queue_frontend(3, 0);
    check_multi_queue(&read(&mut xs, 3).unwrap(), 3, 0);
}

#[test]
fn frontend_num_queues_out_of_range() {
    let key = "multi-queue-num-queues";
    // (value, caller limit, reported value)
    for (v, max, n) in [
        ("0", MAX_QUEUES, 0u64),
        ("3", 2, 3),
        ("2", 1, 2),
        ("2", 0, 2),
        ("17", MAX_QUEUES, 17),
        ("17", u32::MAX, 17),
        ("4294967295", u32::MAX, u64::from(u32::MAX)),
        ("4294967296", u32::MAX, 1 << 32),
        ("18446744073709551615", MAX_QUEUES, u64::MAX),
    ] {
        let mut xs = multi_queue_frontend(2, 0);
        xs.set(&fe(key), v.as_bytes());
        assert_eq!(
            read(&mut xs, max),
            out_of_range(key, n),
            "{v} with limit {max}"
        );
        assert_eq!(xs.aborts, 1);
    }
    for bad in ["abc", "-1", "+2", " 2", "0x2"] {
        let mut xs = multi_queue_frontend(2, 0);
        xs.set(&fe(key), bad.as_bytes());
        assert_eq!(read(&mut xs, MAX_QUEUES), not_a_number(key), "{bad:?}");
    }
    for (bad, err) in [
        ("", ConnectError::Empty { key }),
        ("18446744073709551616", ConnectError::TooLarge { key }),
    ] {
        let mut xs = multi_queue_frontend(2, 0);
        xs.set(&fe(key), bad.as_bytes());
        assert_eq!(read(&mut xs, MAX_QUEUES), Err(err), "{bad:?}");
    }
}

#[test]
fn frontend_per_queue_keys_missing() {
    // (the node removed, the key reported)
    for (gone, key) in [
        ("queue-1/ring-ref", "queue/ring-ref"),
        ("queue-2/event-channel", "queue/event-channel"),
    ] {
        let mut xs = multi_queue_frontend(3, 0);
        xs.del(&fe(gone));
        assert_eq!(read(&mut xs, 4), missing(key), "{gone}");
    }
    // A whole queue directory missing.
    let mut xs = multi_queue_frontend(2, 0);
    xs.set(&fe("multi-queue-num-queues"), b"3");
    assert_eq!(read(&mut xs, 4), missing("queue/ring-ref"));
    // One-page: ring-ref0 stands in for ring-ref, per queue too.
    let mut xs = multi_queue_frontend(2, 0);
    xs.del(&fe("queue-1/ring-ref"));
    xs.set(&fe("queue-1/ring-ref0"), b"1000");
    check_multi_queue(&read(&mut xs, 4).unwrap(), 2, 0);
    // Bad values are named after the queue node.
    xs.set(&fe("queue-1/event-channel"), b"x");
    assert_eq!(read(&mut xs, 4), not_a_number("queue/event-channel"));
    xs.set(&fe("queue-1/event-channel"), b"51");
    xs.set(&fe("queue-1/ring-ref0"), b"4294967296");
    assert_eq!(read(&mut xs, 4), out_of_range("queue/ring-ref0", 1 << 32));
}

/// Issue 13, finding 1: two queues on one ring would serve every request
/// twice. Ring references are distinct within a ring and across queues,
/// event channels across queues; anything else is refused before anything
/// is mapped, naming the node of the second occurrence.
#[test]
fn frontend_ring_refs_and_channels_are_distinct() {
    let dup = |key, value| Err(ConnectError::Duplicate { key, value });
    // Queue 1 names queue 0's one-page ring.
    let mut xs = multi_queue_frontend(2, 0);
    xs.set(&fe("queue-1/ring-ref"), b"0");
    assert_eq!(read(&mut xs, 4), dup("queue/ring-ref", 0));
    assert_eq!((xs.commits, xs.aborts), (0, 1));
    // Queue 1's pages are queue 0's (the reviewer's case), or one of them.
    let mut xs = multi_queue_frontend(3, 1);
    xs.set(&fe("queue-1/ring-ref0"), b"0");
    xs.set(&fe("queue-1/ring-ref1"), b"1");
    assert_eq!(read(&mut xs, 4), dup("queue/ring-ref0", 0));
    let mut xs = multi_queue_frontend(3, 1);
    xs.set(&fe("queue-2/ring-ref1"), b"1000");
    assert_eq!(read(&mut xs, 4), dup("queue/ring-ref1", 1000));
    // One ring naming a page twice, in either layout.
    let mut xs = multi_queue_frontend(2, 2);
    xs.set(&fe("queue-0/ring-ref3"), b"1");
    assert_eq!(read(&mut xs, 4), dup("queue/ring-ref3", 1));
    let mut xs = multi_page_frontend(2);
    xs.set(&fe("ring-ref2"), b"100");
    assert_eq!(read(&mut xs, MAX_QUEUES), dup("ring-ref2", 100));
    // Two queues on one event channel.
    let mut xs = multi_queue_frontend(4, 0);
    xs.set(&fe("queue-3/event-channel"), b"51");
    assert_eq!(read(&mut xs, 4), dup("queue/event-channel", 51));
    // The error node says what is wrong.
    assert_eq!(
        ConnectError::Duplicate {
            key: "queue/ring-ref0",
            value: 8
        }
        .to_string(),
        "queue/ring-ref0: 8 is named twice; each must be distinct"
    );
    // Distinct values whatever their order are fine, and only the pages
    // the ring has count.
    let mut xs = multi_queue_frontend(2, 1);
    xs.set(&fe("queue-0/ring-ref0"), b"1001");
    xs.set(&fe("queue-1/ring-ref1"), b"0");
    xs.set(&fe("queue-1/ring-ref5"), b"1001");
    let p = read(&mut xs, 4).unwrap();
    assert_eq!(p.refs(0), [1001, 1]);
    assert_eq!(p.refs(1), [1000, 0]);
}

#[test]
fn frontend_multi_page_per_queue() {
    for order in 1..=abi::MAX_RING_PAGE_ORDER {
        let mut xs = multi_queue_frontend(4, order);
        let p = read_frontend(&mut xs, FE, abi::MAX_RING_PAGE_ORDER, 4).unwrap();
        check_multi_queue(&p, 4, order);
    }
    let mut xs = multi_queue_frontend(2, 2);
    xs.del(&fe("queue-1/ring-ref3"));
    assert_eq!(read(&mut xs, 4), missing("queue/ring-ref3"));
    let mut xs = multi_queue_frontend(2, 2);
    xs.set(&fe("queue-0/ring-ref1"), b"0x1");
    assert_eq!(read(&mut xs, 4), not_a_number("queue/ring-ref1"));
    // The top-level order applies to every queue and is range-checked.
    let mut xs = multi_queue_frontend(2, 2);
    assert_eq!(
        read_frontend(&mut xs, FE, 1, 4),
        out_of_range("ring-page-order", 2)
    );
    let mut xs = multi_queue_frontend(2, 2);
    xs.set(&fe("protocol"), b"x86_32-abi");
    let p = read(&mut xs, 4).unwrap();
    assert_eq!(Some(p.abi), Abi::from_protocol(b"x86_32-abi"));
}

#[test]
fn frontend_read_failure_per_queue() {
    let mut xs = multi_queue_frontend(2, 1);
    xs.fail = Some((fe("queue-1/ring-ref1"), XsError::Denied));
    assert_eq!(
        read(&mut xs, 4),
        xs_error("queue/ring-ref1", XsError::Denied)
    );
    assert_eq!((xs.commits, xs.aborts), (0, 1));
    let mut xs = multi_queue_frontend(2, 0);
    xs.fail = Some((fe("queue-0/ring-ref"), XsError::TooLong));
    assert_eq!(read(&mut xs, 4), too_long("queue/ring-ref"));
}

#[test]
fn frontend_feature_persistent() {
    let key = "feature-persistent";
    for layout in [0, 2] {
        let store = || {
            if layout == 0 {
                one_page_frontend()
            } else {
                multi_queue_frontend(layout, 0)
            }
        };
        let mut xs = store();
        assert!(!read(&mut xs, 4).unwrap().persistent);
        xs.set(&fe(key), b"0");
        assert!(!read(&mut xs, 4).unwrap().persistent);
        xs.set(&fe(key), b"1");
        assert!(read(&mut xs, 4).unwrap().persistent);
        xs.set(&fe(key), b"2");
        assert_eq!(read(&mut xs, 4), out_of_range(key, 2));
        for bad in ["yes", "true", "1 ", "01x"] {
            xs.set(&fe(key), bad.as_bytes());
            assert_eq!(read(&mut xs, 4), not_a_number(key), "{bad:?}");
        }
        xs.set(&fe(key), b"");
        assert_eq!(read(&mut xs, 4), empty(key));
    }
}

#[test]
fn refs_never_panics_on_a_forged_count() {
    let q = QueueParams {
        ring_refs: [7; 32],
        event_channel: 0,
    };
    let p = FrontendParams {
        ring_pages: 1000,
        abi: Abi::native(),
        queues: vec![q, q],
        persistent: false,
    };
    assert_eq!(p.refs(0).len(), 32);
    assert_eq!(p.refs(1).len(), 32);
    assert_eq!(p.refs(2), &[] as &[GrantRef]);
    assert_eq!(p.refs(usize::MAX), &[] as &[GrantRef]);
    assert_eq!(p.num_queues(), 2);
}

// ---- connected, states, errors -----------------------------------------

fn medium(read_only: bool) -> MediumInfo {
    MediumInfo {
        sectors: Sectors(1 << 33),
        sector_size: 4096,
        physical_sector_size: 8192,
        read_only,
        can_flush: true,
        can_discard: false,
        is_device: true,
        ..MediumInfo::default()
    }
}

fn feats(flush: bool, barrier: bool) -> Features {
    Features {
        flush,
        barrier,
        ..Features::default()
    }
}

#[test]
fn connected_contents() {
    let mut xs = XsMap::with(&[(&be("state"), "2")]);
    publish_connected(&mut xs, BE, &medium(false), &feats(true, false)).unwrap();
    assert_be(&xs, "sectors=8589934592 sector-size=4096 physical-sector-size=8192 info=0 feature-flush-cache=1 feature-barrier=0 state=4");
    assert_eq!(xs.commits, 1);

    let mut xs = XsMap::default();
    publish_connected(&mut xs, BE, &medium(true), &feats(false, true)).unwrap();
    let ro = abi::VDISK_READONLY.to_string();
    assert_eq!(xs.get(&be("info")), Some(ro.as_str()));
    assert_be(&xs, "feature-flush-cache=0 feature-barrier=1");
}

#[test]
fn connected_retried_on_again_and_atomic() {
    let mut xs = XsMap::with(&[(&be("state"), "2")]);
    xs.again_commits = 1;
    publish_connected(&mut xs, BE, &medium(false), &feats(true, true)).unwrap();
    assert_be(&xs, "state=4 sectors=8589934592");
    assert_eq!(xs.transactions, 2);

    // A failing write leaves nothing half-published, state included.
    let mut xs = XsMap::with(&[(&be("state"), "2")]);
    xs.fail = Some((be("feature-barrier"), XsError::Denied));
    assert_eq!(
        publish_connected(&mut xs, BE, &medium(false), &feats(true, true)),
        xs_error("feature-barrier", XsError::Denied)
    );
    assert_eq!(xs.get(&be("state")), Some("2"));
    assert_eq!(xs.get(&be("sectors")), None);
}

#[test]
fn connected_rejects_bad_medium() {
    let mut xs = XsMap::default();
    let mut m = medium(false);
    m.sector_size = 256;
    assert_eq!(
        publish_connected(&mut xs, BE, &m, &feats(false, false)),
        out_of_range("sector-size", 256)
    );
    m.sector_size = 1536;
    assert_eq!(
        publish_connected(&mut xs, BE, &m, &feats(false, false)),
        out_of_range("sector-size", 1536)
    );
    m.sector_size = 4096;
    m.physical_sector_size = 512;
    assert_eq!(
        publish_connected(&mut xs, BE, &m, &feats(false, false)),
        out_of_range("physical-sector-size", 512)
    );
    assert!(xs.is_empty());
}

fn all_features() -> Features {
    Features {
        flush: true,
        barrier: false,
        persistent: true,
        max_indirect_segments: 256,
        discard: Some(Discard {
            granularity: 1 << 20,
            alignment: 4096,
            secure: true,
        }),
    }
}

#[test]
fn connected_features_published() {
    let mut xs = XsMap::with(&[(&be("state"), "2")]);
    publish_connected(&mut xs, BE, &medium(false), &all_features()).unwrap();
    assert_be(&xs, "feature-flush-cache=1 feature-barrier=0 feature-persistent=1 feature-max-indirect-segments=256 feature-discard=1 discard-granularity=1048576 discard-alignment=4096 discard-secure=1 state=4");
    assert_eq!(xs.commits, 1);

    let mut f = all_features();
    f.discard = Some(Discard {
        granularity: 512,
        alignment: 0,
        secure: false,
    });
    f.max_indirect_segments = u32::MAX;
    publish_connected(&mut xs, BE, &medium(false), &f).unwrap();
    assert_be(
        &xs,
        "discard-granularity=512 discard-alignment=0 discard-secure=0",
    );
    assert_eq!(
        xs.get(&be("feature-max-indirect-segments")),
        Some("4294967295")
    );
}

#[test]
fn connected_features_off_clear_a_previous_connection() {
    for not_found in [false, true] {
        // What an earlier connection left behind.
        let mut xs = XsMap::with(&[(&be("state"), "2")]);
        publish_connected(&mut xs, BE, &medium(false), &all_features()).unwrap();
        xs.set(&be("state"), b"2");
        xs.remove_absent_not_found = not_found;

        publish_connected(&mut xs, BE, &medium(false), &Features::default()).unwrap();
        assert_be(
            &xs,
            "feature-flush-cache=0 feature-barrier=0 feature-persistent=0 feature-discard=0",
        );
        for gone in [
            "feature-max-indirect-segments",
            "discard-granularity",
            "discard-alignment",
            "discard-secure",
        ] {
            assert_eq!(xs.get(&be(gone)), None, "{gone}");
        }
        assert_eq!(xs.get(&be("state")), Some("4"));

        // Again, now with nothing left to remove: absent is fine,
        // whether the store stays silent or says NotFound.
        xs.set(&be("state"), b"2");
        publish_connected(&mut xs, BE, &medium(false), &Features::default()).unwrap();
        assert_eq!(xs.get(&be("state")), Some("4"));
        assert_eq!(xs.commits, 3);
    }
}

#[test]
fn connected_removal_failure_is_atomic() {
    let mut xs = XsMap::with(&[(&be("state"), "2")]);
    publish_connected(&mut xs, BE, &medium(false), &all_features()).unwrap();
    xs.set(&be("state"), b"2");
    xs.fail = Some((be("discard-alignment"), XsError::Denied));
    let mut f = all_features();
    f.discard = None;
    f.max_indirect_segments = 0;
    assert_eq!(
        publish_connected(&mut xs, BE, &medium(false), &f),
        xs_error("discard-alignment", XsError::Denied)
    );
    // Nothing of the failed attempt reached the store.
    assert_be(
        &xs,
        "state=2 feature-max-indirect-segments=256 discard-granularity=1048576 feature-discard=1",
    );
    assert_eq!(xs.aborts, 1);
}

/// Issue 13, finding 4: the error node of a refused connection goes in the
/// transaction that enters Connected, and a failure to remove it leaves
/// the state alone.
#[test]
fn connected_removes_the_error_node_of_a_refused_connection() {
    let err_node = "error/local/domain/0/backend/vbd/1/51712/error";
    let mut xs = XsMap::with(&[(&be("state"), "5")]);
    report_fatal(&mut xs, BE, &ConnectError::Missing { key: "ring-ref" });
    assert_eq!(xs.get(err_node), Some("2 ring-ref: missing"));
    xs.fail = Some((err_node.to_string(), XsError::Denied));
    assert_eq!(
        publish_connected(&mut xs, BE, &medium(false), &feats(true, true)),
        xs_error("error", XsError::Denied)
    );
    assert_eq!(xs.get(&be("state")), Some("5"));
    xs.fail = None;
    publish_connected(&mut xs, BE, &medium(false), &feats(true, true)).unwrap();
    assert_eq!(xs.get(err_node), None);
    assert_eq!(xs.get(&be("state")), Some("4"));
}

#[test]
fn connected_rejects_zero_discard_granularity() {
    let mut xs = XsMap::default();
    let mut f = all_features();
    f.discard = Some(Discard {
        granularity: 0,
        alignment: 0,
        secure: false,
    });
    assert_eq!(
        publish_connected(&mut xs, BE, &medium(false), &f),
        out_of_range("discard-granularity", 0)
    );
    assert!(xs.is_empty());
    assert_eq!(xs.transactions, 0);
}

#[test]
fn resize_rewrites_sectors_and_state() {
    let mut xs = XsMap::with(&[(&be("state"), "4"), (&be("sectors"), "2048")]);
    publish_resize(&mut xs, BE, Sectors(1 << 40)).unwrap();
    assert_be(&xs, "sectors=1099511627776 state=4");
    assert_eq!(xs.commits, 1);

    // The state is written even where it already says Connected: the
    // write itself is the front-end's signal.
    xs.set(&be("state"), b"garbage");
    publish_resize(&mut xs, BE, Sectors(0)).unwrap();
    assert_be(&xs, "sectors=0 state=4");

    xs.again_commits = 1;
    publish_resize(&mut xs, BE, Sectors(u64::MAX)).unwrap();
    assert_eq!(xs.get(&be("sectors")), Some("18446744073709551615"));

    // All or nothing.
    xs.fail = Some((be("state"), XsError::Denied));
    assert_eq!(
        publish_resize(&mut xs, BE, Sectors(4096)),
        xs_error("state", XsError::Denied)
    );
    assert_eq!(xs.get(&be("sectors")), Some("18446744073709551615"));
}

#[test]
fn state_read_and_write() {
    let mut xs = XsMap::default();
    assert_eq!(read_state(&mut xs, FE), missing("state"));
    for s in 0..=8u32 {
        xs.set(&fe("state"), s.to_string().as_bytes());
        assert_eq!(read_state(&mut xs, FE).map(|s| s as u32), Ok(s));
    }
    xs.set(&fe("state"), b"9");
    assert_eq!(
        read_state(&mut xs, FE),
        Err(ConnectError::BadState { value: 9 })
    );
    xs.set(&fe("state"), b"4294967300");
    assert_eq!(
        read_state(&mut xs, FE),
        Err(ConnectError::BadState { value: 4294967300 })
    );
    xs.set(&fe("state"), b"abc");
    assert_eq!(read_state(&mut xs, FE), not_a_number("state"));
    write_state(&mut xs, BE, XenbusState::InitWait).unwrap();
    assert_eq!(xs.get(&be("state")), Some("2"));
    xs.fail = Some((be("state"), XsError::Denied));
    assert_eq!(
        write_state(&mut xs, BE, XenbusState::Closed),
        xs_error("state", XsError::Denied)
    );
}

#[test]
fn fatal_writes_error_node_and_closing() {
    let mut xs = XsMap::with(&[(&be("state"), "2")]);
    let err = ConnectError::OutOfRange {
        key: "ring-page-order",
        value: 9,
    };
    report_fatal(&mut xs, BE, &err);
    assert_eq!(
        xs.get("error/local/domain/0/backend/vbd/1/51712/error"),
        Some("22 ring-page-order: 9 is out of range")
    );
    assert_eq!(xs.get(&be("state")), Some("5"));

    // A relative back-end path works the same.
    let mut xs = XsMap::default();
    report_fatal(
        &mut xs,
        "backend/vbd/1/51712",
        &ConnectError::Missing { key: "ring-ref" },
    );
    assert_eq!(
        xs.get("error/backend/vbd/1/51712/error"),
        Some("2 ring-ref: missing")
    );
    assert_eq!(xs.get("backend/vbd/1/51712/state"), Some("5"));
}

#[test]
fn fatal_is_best_effort() {
    let mut xs = XsMap::default();
    xs.fail = Some((
        "error/local/domain/0/backend/vbd/1/51712/error".to_string(),
        XsError::Denied,
    ));
    report_fatal(&mut xs, BE, &ConnectError::UnknownProtocol);
    assert_eq!(xs.get(&be("state")), Some("5"), "Closing even so");

    let mut xs = XsMap::default();
    xs.fail = Some((be("state"), XsError::Other(5)));
    report_fatal(&mut xs, BE, &ConnectError::NoMemory);
    assert_eq!(
        xs.get("error/local/domain/0/backend/vbd/1/51712/error"),
        Some("12 out of memory")
    );
}

#[test]
fn errno_mapping() {
    // The errno values an `error` node carries (FreeBSD's and Linux's
    // alike), written out here rather than taken from the core.
    let (enoent, eio, enxio, e2big, enomem, ebusy, enodev, einval) = (2, 5, 6, 7, 12, 16, 19, 22);
    let cases = [
        (ConnectError::Missing { key: "k" }, enoent),
        (ConnectError::NotANumber { key: "k" }, einval),
        (ConnectError::Empty { key: "k" }, einval),
        (ConnectError::TooLarge { key: "k" }, einval),
        (ConnectError::OutOfRange { key: "k", value: 1 }, einval),
        (ConnectError::BadValue { key: "k" }, einval),
        (ConnectError::UnknownProtocol, einval),
        (ConnectError::Duplicate { key: "k", value: 1 }, einval),
        (ConnectError::BadState { value: 9 }, einval),
        (ConnectError::TooLong { key: "k" }, e2big),
        (ConnectError::Ring, eio),
        (ConnectError::Grant(GrantError::NoSpace), enomem),
        (ConnectError::Evtchn(EvtchnError::BadPort), einval),
        (ConnectError::Open(OpenError::NotFound), enoent),
        (ConnectError::Open(OpenError::Invalid), enodev),
        (ConnectError::Open(OpenError::Other(-3)), eio),
        (ConnectError::NoMemory, enomem),
        (ConnectError::StoreGone, enxio),
        (
            ConnectError::Xs {
                key: "k",
                err: XsError::Again,
            },
            ebusy,
        ),
    ];
    for (e, n) in cases {
        assert_eq!(e.errno(), n, "{e:?}");
        assert!(!e.to_string().is_empty());
    }
    assert_eq!(
        ConnectError::TooLong { key: "params" }.to_string(),
        "params: value too long"
    );
    assert_eq!(ConnectError::StoreGone.errno(), 6, "ENXIO");
    assert_eq!(
        ConnectError::StoreGone.to_string(),
        "params: the backing store went away"
    );
}
