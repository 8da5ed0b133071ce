//! The Rust wire definitions of `xbb::abi` against Xen's own C headers
//! (`xen/io/blkif.h`, `xen/io/ring.h`, `xen/io/protocols.h` from
//! `libxen-dev`).
//!
//! The test writes C source made of `_Static_assert`s whose expected values
//! come from the Rust side (`size_of`, `offset_of!`, `Abi::ring_size`, the
//! constants), and has the system C compiler check it with `-fsyntax-only`:
//! once with `-m64` (the x86_64 layout) and once with `-m32 -ffreestanding`
//! (i386 native layout = the `x86_32-abi` layout; gcc's own freestanding
//! `<stdint.h>`/`<stddef.h>` suffice, no 32-bit libc needed). A deliberately
//! wrong assertion is compiled as well and must be rejected, so the check
//! cannot pass vacuously.
//!
//! Without the headers the test prints a "skipped" line and passes, unless
//! `XBB_REQUIRE_XEN_HEADERS=1`. `XBB_XEN_INCLUDE` names another include
//! directory holding `xen/` (default `/usr/include`).

use core::fmt::Write as _;
use core::mem::{offset_of, size_of};
use std::ffi::OsString;
use std::path::PathBuf;

use xbb::abi::*;
use xbb_testing::cc::check_c;

/// Appends `_Static_assert(<expr> == <value>)` with the expression as message.
fn eq(out: &mut String, c_expr: &str, value: impl core::fmt::Display) {
    let cond = format!("({c_expr}) == ({value})");
    writeln!(
        out,
        "_Static_assert({cond}, \"{}\");",
        cond.replace('"', "'")
    )
    .unwrap();
}

/// Size and every field offset of a struct, fields named as in C.
macro_rules! check_struct {
    ($out:expr, $cty:expr, $rty:ty, [$($field:ident),* $(,)?]) => {{
        eq($out, &format!("sizeof({})", $cty), size_of::<$rty>());
        $(
            eq(
                $out,
                &format!("offsetof({}, {})", $cty, stringify!($field)),
                offset_of!($rty, $field),
            );
        )*
    }};
}

fn c_string(s: &str) -> String {
    assert!(s
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'));
    format!("\"{s}\"")
}

/// The request and response structs of one ABI, field by field; the
/// indirect request of x86_32 has trailing `extra` fields.
macro_rules! check_requests {
    ($o:expr, $req:ty, $disc:ty, $ind:ty, [$($extra:ident),*], $rsp:ty) => {{
        check_struct!(
            $o,
            "struct blkif_request",
            $req,
            [operation, nr_segments, handle, id, sector_number, seg]
        );
        check_struct!(
            $o,
            "struct blkif_request_discard",
            $disc,
            [operation, flag, handle, id, sector_number, nr_sectors]
        );
        check_struct!(
            $o,
            "struct blkif_request_indirect",
            $ind,
            [
                operation,
                indirect_op,
                nr_segments,
                id,
                sector_number,
                handle,
                indirect_grefs
                $(, $extra)*
            ]
        );
        check_struct!($o, "struct blkif_response", $rsp, [id, operation, status]);
    }};
}

/// The C source checking `abi`'s layout; the compiler flags decide which
/// layout the headers produce.
fn source(abi: Abi) -> String {
    let mut s = String::from(
        "#include <stdint.h>\n\
         #include <stddef.h>\n\
         #include <xen/xen.h>\n\
         #include <xen/io/blkif.h>\n\
         #include <xen/io/protocols.h>\n",
    );
    let o = &mut s;
    check_native(o, abi);
    check_layout(o, abi);
    check_ring(o, abi);
    check_constants(o);
    s
}

/// The layout the compiler gives the headers is the one checked.
fn check_native(o: &mut String, abi: Abi) {
    // Which layout the compiler gives the headers must be the one we check.
    let native = match abi {
        Abi::X86_32 => XEN_IO_PROTO_ABI_X86_32,
        Abi::X86_64 => XEN_IO_PROTO_ABI_X86_64,
    };
    assert_eq!(Abi::from_protocol(native.as_bytes()), Some(abi));
    eq(
        o,
        &format!(
            "__builtin_strcmp(XEN_IO_PROTO_ABI_NATIVE, {})",
            c_string(native)
        ),
        0,
    );
}

/// Every struct and field of the ABI.
fn check_layout(o: &mut String, abi: Abi) {
    // Structs and fields.
    eq(o, "sizeof(grant_ref_t)", size_of::<u32>());
    eq(o, "sizeof(blkif_sector_t)", size_of::<u64>());
    eq(o, "sizeof(blkif_vdev_t)", size_of::<u16>());
    check_struct!(
        o,
        "struct blkif_request_segment",
        BlkifRequestSegment,
        [gref, first_sect, last_sect]
    );
    eq(o, "sizeof(struct blkif_request_segment)", SEGMENT_SIZE);
    match abi {
        Abi::X86_32 => check_requests!(
            o,
            X86_32Request,
            X86_32DiscardRequest,
            X86_32IndirectRequest,
            [pad],
            X86_32Response
        ),
        Abi::X86_64 => check_requests!(
            o,
            X86_64Request,
            X86_64DiscardRequest,
            X86_64IndirectRequest,
            [],
            X86_64Response
        ),
    }
    eq(o, "sizeof(struct blkif_request)", abi.request_size());
    eq(o, "sizeof(struct blkif_response)", abi.response_size());
    eq(o, "sizeof(union blkif_sring_entry)", abi.entry_size());
    eq(
        o,
        "sizeof(((struct blkif_request *)0)->seg) / sizeof(struct blkif_request_segment)",
        BLKIF_MAX_SEGMENTS_PER_REQUEST,
    );
    eq(
        o,
        "sizeof(((struct blkif_request_indirect *)0)->indirect_grefs) / sizeof(grant_ref_t)",
        BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
    );
}

/// The shared-ring header and the ring's size for every page count.
fn check_ring(o: &mut String, abi: Abi) {
    // The shared-ring header.
    eq(o, "offsetof(struct blkif_sring, req_prod)", SRING_REQ_PROD);
    eq(
        o,
        "offsetof(struct blkif_sring, req_event)",
        SRING_REQ_EVENT,
    );
    eq(o, "offsetof(struct blkif_sring, rsp_prod)", SRING_RSP_PROD);
    eq(
        o,
        "offsetof(struct blkif_sring, rsp_event)",
        SRING_RSP_EVENT,
    );
    eq(
        o,
        "offsetof(struct blkif_sring, pvt)",
        offset_of!(SringHeader, pvt),
    );
    eq(
        o,
        "offsetof(struct blkif_sring, __pad)",
        offset_of!(SringHeader, pad),
    );
    eq(
        o,
        "offsetof(struct blkif_sring, __pad) + sizeof(((struct blkif_sring *)0)->__pad)",
        size_of::<SringHeader>(),
    );
    eq(o, "offsetof(struct blkif_sring, ring)", SRING_HEADER_SIZE);
    eq(
        o,
        "offsetof(struct blkif_sring, ring)",
        size_of::<SringHeader>(),
    );

    // Ring sizes for every valid page count.
    let mut pages = 1u32;
    while pages <= MAX_RING_PAGES {
        let n = abi.ring_size(pages).expect("valid page count");
        eq(
            o,
            &format!("__CONST_RING_SIZE(blkif, 4096 * {pages})"),
            format!("{n}u"),
        );
        pages *= 2;
    }
    eq(o, "1 << XEN_PAGE_SHIFT", xbb::host::PAGE_SIZE);
    eq(o, "(1 << XEN_PAGE_SHIFT) >> 9", SECTORS_PER_PAGE);
    eq(
        o,
        "(1 << XEN_PAGE_SHIFT) / sizeof(struct blkif_request_segment)",
        4096 / SEGMENT_SIZE,
    );
}

/// The protocol's constants and protocol names.
fn check_constants(o: &mut String) {
    // Constants.
    for (name, v) in [
        ("BLKIF_OP_READ", BLKIF_OP_READ),
        ("BLKIF_OP_WRITE", BLKIF_OP_WRITE),
        ("BLKIF_OP_WRITE_BARRIER", BLKIF_OP_WRITE_BARRIER),
        ("BLKIF_OP_FLUSH_DISKCACHE", BLKIF_OP_FLUSH_DISKCACHE),
        ("BLKIF_OP_RESERVED_1", BLKIF_OP_RESERVED_1),
        ("BLKIF_OP_DISCARD", BLKIF_OP_DISCARD),
        ("BLKIF_OP_INDIRECT", BLKIF_OP_INDIRECT),
        ("BLKIF_DISCARD_SECURE", BLKIF_DISCARD_SECURE),
    ] {
        eq(o, name, v);
    }
    eq(
        o,
        "BLKIF_MAX_SEGMENTS_PER_REQUEST",
        BLKIF_MAX_SEGMENTS_PER_REQUEST,
    );
    eq(
        o,
        "BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST",
        BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
    );
    for (name, v) in [
        ("BLKIF_RSP_OKAY", BLKIF_RSP_OKAY),
        ("BLKIF_RSP_ERROR", BLKIF_RSP_ERROR),
        ("BLKIF_RSP_EOPNOTSUPP", BLKIF_RSP_EOPNOTSUPP),
    ] {
        eq(o, name, v);
    }
    for (name, v) in [
        ("VDISK_CDROM", VDISK_CDROM),
        ("VDISK_REMOVABLE", VDISK_REMOVABLE),
        ("VDISK_READONLY", VDISK_READONLY),
    ] {
        eq(o, name, v);
    }
    // Protocol names: length (a char-array size) and contents.
    for (name, v) in [
        ("XEN_IO_PROTO_ABI_X86_32", XEN_IO_PROTO_ABI_X86_32),
        ("XEN_IO_PROTO_ABI_X86_64", XEN_IO_PROTO_ABI_X86_64),
        ("XEN_IO_PROTO_ABI_ARM", XEN_IO_PROTO_ABI_ARM),
    ] {
        eq(o, &format!("sizeof({name})"), v.len() + 1);
        eq(o, &format!("__builtin_strcmp({name}, {})", c_string(v)), 0);
    }
}

fn flags(abi: Abi) -> &'static [&'static str] {
    match abi {
        Abi::X86_64 => &["-m64"],
        Abi::X86_32 => &["-m32", "-ffreestanding"],
    }
}

/// Runs `cc -fsyntax-only` on `src` for `abi`; `Err(stderr)` when it is
/// rejected.
fn compile(include: &Option<PathBuf>, abi: Abi, src: &str) -> Result<(), String> {
    let mut args: Vec<OsString> = flags(abi).iter().map(OsString::from).collect();
    args.push("-std=gnu11".into());
    if let Some(dir) = include {
        args.push("-I".into());
        args.push(dir.into());
    }
    check_c(args, src)
}

/// The include directory to pass (`None` for the default `/usr/include`),
/// or `None` from the outer option when the headers are missing.
fn headers() -> Option<Option<PathBuf>> {
    let custom = std::env::var_os("XBB_XEN_INCLUDE").map(PathBuf::from);
    let dir = custom
        .clone()
        .unwrap_or_else(|| PathBuf::from("/usr/include"));
    let present = [
        "xen/xen.h",
        "xen/io/blkif.h",
        "xen/io/ring.h",
        "xen/io/protocols.h",
    ]
    .iter()
    .all(|h| dir.join(h).is_file());
    present.then_some(custom)
}

#[test]
fn rust_layouts_match_xen_headers() {
    let required = std::env::var("XBB_REQUIRE_XEN_HEADERS").is_ok_and(|v| v == "1");
    if !cfg!(target_arch = "x86_64") {
        assert!(!required, "the header check runs on x86_64 hosts only");
        println!("skipped: the C header check needs an x86_64 host compiler (-m64/-m32)");
        return;
    }
    let Some(include) = headers() else {
        assert!(
            !required,
            "XBB_REQUIRE_XEN_HEADERS=1 but the Xen headers (xen/io/blkif.h) are missing"
        );
        println!("skipped: Xen headers not found; install libxen-dev");
        return;
    };

    for abi in [Abi::X86_64, Abi::X86_32] {
        let src = source(abi);
        assert!(src.matches("_Static_assert").count() > 60);
        if let Err(e) = compile(&include, abi, &src) {
            panic!("{abi:?} layout disagrees with Xen's headers:\n{e}\n--- source ---\n{src}");
        }

        // The harness can fail: one wrong value must be rejected.
        let mut wrong = src.clone();
        eq(
            &mut wrong,
            "sizeof(struct blkif_request)",
            abi.request_size() + 4,
        );
        assert!(
            compile(&include, abi, &wrong).is_err(),
            "{abi:?}: a wrong _Static_assert compiled; the check proves nothing"
        );
    }
}
