//! Checks `man/xbb.4` against the tables of `src/stats.rs`.
//!
//! The LOADER TUNABLES section must list every `hw.xbb.*` tunable of
//! [`TUNABLES`] with its default and bounds, and nothing else; the SYSCTL
//! VARIABLES section must list every `dev.xbb.N.*` node of [`SYSCTLS`] in the
//! subsection of its kind (limits and switches, read-only or read-write,
//! counters and gauges with their per-queue `dev.xbb.N.queue.Q.*` names), and
//! nothing else. Every `hw.xbb.*` or `dev.xbb.*` name mentioned anywhere on the
//! page must exist. The page must have the sections of a driver page, and
//! `mandoc -Tlint` must be clean when mandoc is installed (required when
//! `XBB_REQUIRE_MANDOC=1`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use xbb::stats::{SysctlKind, SYSCTLS, TUNABLES, TUNABLE_PREFIX};

const PAGE: &str = "man/xbb.4";

/// Nodes the FreeBSD shim adds to every instance beside the table's
/// (`sys-glue/xbb_shim.h`: `xbb_rs_state`, `xbb_rs_last_error`); they are
/// documented under "Status (read-only)".
const SHIM_NODES: &[&str] = &["state", "last_error"];
const SHIM_SUBSECTION: &str = "Status (read-only)";

fn page_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(PAGE)
}

fn read_page() -> String {
    std::fs::read_to_string(page_path()).expect("man/xbb.4 is readable")
}

/// The subsection title a node of `kind` belongs under.
fn subsection_of(kind: SysctlKind) -> &'static str {
    match kind {
        SysctlKind::Limit => "Limits (read-only)",
        SysctlKind::Switch => "Switches (read-write)",
        SysctlKind::Counter => "Counters (read-only, per queue)",
        SysctlKind::Gauge => "Gauges (read-only, per queue)",
    }
}

/// One `.It` entry: its tag lines (the `.It` arguments of consecutive `.It`
/// lines sharing one body) and its body text, with the `.Sh`/`.Ss` it is in.
#[derive(Debug, Clone)]
struct Item {
    section: String,
    subsection: String,
    tags: Vec<String>,
    body: String,
    line: usize,
}

/// The page's `.Sh` titles in order, and its `.It` items.
fn parse(page: &str) -> (Vec<String>, Vec<Item>) {
    let mut sections = Vec::new();
    let mut items: Vec<Item> = Vec::new();
    let mut section = String::new();
    let mut subsection = String::new();
    // Whether the previous line was an `.It` line (tags accumulate).
    let mut in_tags = false;
    let mut open: Option<Item> = None;
    for (i, line) in page.lines().enumerate() {
        if line.starts_with(".\\\"") {
            continue;
        }
        let close = line.starts_with(".Sh ")
            || line.starts_with(".Ss ")
            || line.starts_with(".El")
            || (line.starts_with(".It") && !in_tags);
        if close {
            if let Some(it) = open.take() {
                items.push(it);
            }
        }
        if let Some(t) = line.strip_prefix(".Sh ") {
            section = t.trim().to_string();
            subsection.clear();
            sections.push(section.clone());
            in_tags = false;
        } else if let Some(t) = line.strip_prefix(".Ss ") {
            subsection = t.trim().to_string();
            in_tags = false;
        } else if let Some(t) = line.strip_prefix(".It") {
            let it = open.get_or_insert_with(|| Item {
                section: section.clone(),
                subsection: subsection.clone(),
                tags: Vec::new(),
                body: String::new(),
                line: i + 1,
            });
            it.tags.push(t.trim().to_string());
            in_tags = true;
        } else {
            in_tags = false;
            if let Some(it) = open.as_mut() {
                if !it.body.is_empty() {
                    it.body.push(' ');
                }
                it.body.push_str(line.trim());
            }
        }
    }
    if let Some(it) = open.take() {
        items.push(it);
    }
    (sections, items)
}

/// The variable name of a tag written `Va <name>`, if it is one.
fn va(tag: &str) -> Option<&str> {
    let rest = tag.strip_prefix("Va ")?.trim();
    (!rest.contains(' ')).then_some(rest)
}

/// Everything wrong with `page` against the tables; empty when it agrees.
fn problems(page: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (sections, items) = parse(page);
    check_sections(page, &sections, &mut out);
    check_tunables(&items, &mut out);
    check_sysctls(&items, &mut out);
    check_mentions(page, &mut out);
    out
}

/// The sections of a driver page, in order, and what they must hold.
fn check_sections(page: &str, sections: &[String], out: &mut Vec<String>) {
    // Sections of a driver page, in order.
    let wanted = [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "LOADER TUNABLES",
        "SYSCTL VARIABLES",
        "COEXISTENCE WITH XBBD",
        "EXAMPLES",
        "SEE ALSO",
        "HISTORY",
        "CAVEATS",
    ];
    let mut pos = 0;
    for w in wanted {
        match sections[pos..].iter().position(|s| s == w) {
            Some(p) => pos += p + 1,
            None => out.push(format!("section {w} missing or out of order")),
        }
    }
    let see_also = section_text(page, "SEE ALSO");
    for xr in [
        "Xr xen 4",
        "Xr xbd 4",
        "Xr xl.cfg 5",
        "Xr loader.conf 5",
        "Xr sysctl 8",
    ] {
        if !see_also.contains(xr) {
            out.push(format!("SEE ALSO lacks .{xr}"));
        }
    }
    let synopsis = section_text(page, "SYNOPSIS");
    for s in ["xbb_load=\"YES\"", "kldload xbb"] {
        if !synopsis.contains(s) {
            out.push(format!("SYNOPSIS lacks {s}"));
        }
    }
}

/// Tunables: exactly the table's, each with its default and bounds.
fn check_tunables(items: &[Item], out: &mut Vec<String>) {
    let mut tunables: BTreeMap<String, &Item> = BTreeMap::new();
    for it in items.iter().filter(|it| it.section == "LOADER TUNABLES") {
        for tag in &it.tags {
            let Some(name) = va(tag) else {
                out.push(format!(
                    "line {}: tunable tag not `Va name`: {tag}",
                    it.line
                ));
                continue;
            };
            if tunables.insert(name.to_string(), it).is_some() {
                out.push(format!("line {}: {name} listed twice", it.line));
            }
        }
    }
    for d in TUNABLES {
        let full = format!("{TUNABLE_PREFIX}{}", d.name);
        let Some(it) = tunables.remove(&full) else {
            out.push(format!("LOADER TUNABLES lacks {full}"));
            continue;
        };
        let want = format!(
            "The default is {}; values from {} to {} are accepted.",
            d.default, d.min, d.max
        );
        if !it.body.contains(&want) {
            out.push(format!(
                "line {}: {full}: expected \"{want}\" in: {}",
                it.line, it.body
            ));
        }
    }
    for (name, it) in tunables {
        out.push(format!(
            "line {}: {name} is not in TUNABLES (src/stats.rs)",
            it.line
        ));
    }
}

/// Sysctls: each node once, in its kind's subsection; per-queue ones also
/// as dev.xbb.N.queue.Q.<leaf>, in the same item.
fn check_sysctls(items: &[Item], out: &mut Vec<String>) {
    let mut nodes = sysctl_items(items, out);
    for d in SYSCTLS {
        let want_ss = subsection_of(d.kind);
        match nodes.remove(d.name) {
            None => out.push(format!("SYSCTL VARIABLES lacks dev.xbb.N.{}", d.name)),
            Some((it, _)) => {
                if it.subsection != want_ss {
                    out.push(format!(
                        "line {}: dev.xbb.N.{} ({:?}) is under \"{}\", belongs under \"{want_ss}\"",
                        it.line, d.name, d.kind, it.subsection
                    ));
                }
                if it.body.trim().is_empty() {
                    out.push(format!(
                        "line {}: dev.xbb.N.{} has no text",
                        it.line, d.name
                    ));
                }
            }
        }
        let queue_key = format!("{} (queue)", d.name);
        match (nodes.remove(&queue_key), d.per_queue()) {
            (None, true) => out.push(format!(
                "SYSCTL VARIABLES lacks the per-queue dev.xbb.N.queue.Q.{}",
                d.name
            )),
            (Some((it, _)), false) => out.push(format!(
                "line {}: dev.xbb.N.{} is not kept per queue, but \
                 dev.xbb.N.queue.Q.{} is listed",
                it.line, d.name, d.name
            )),
            (Some((it, _)), true) if it.subsection != want_ss => out.push(format!(
                "line {}: dev.xbb.N.queue.Q.{} is under \"{}\", belongs under \"{want_ss}\"",
                it.line, d.name, it.subsection
            )),
            _ => {}
        }
    }
    for name in SHIM_NODES {
        match nodes.remove(*name) {
            None => out.push(format!("SYSCTL VARIABLES lacks dev.xbb.N.{name}")),
            Some((it, _)) if it.subsection != SHIM_SUBSECTION => out.push(format!(
                "line {}: dev.xbb.N.{name} is under \"{}\", belongs under \"{SHIM_SUBSECTION}\"",
                it.line, it.subsection
            )),
            _ => {}
        }
    }
    for (key, (it, _)) in nodes {
        out.push(format!(
            "line {}: sysctl {key} is not in SYSCTLS (src/stats.rs)",
            it.line
        ));
    }
}

/// The items of SYSCTL VARIABLES by leaf (`<leaf> (queue)` for a per-queue
/// node).
fn sysctl_items<'a>(
    items: &'a [Item],
    out: &mut Vec<String>,
) -> BTreeMap<String, (&'a Item, bool)> {
    let mut nodes: BTreeMap<String, (&Item, bool)> = BTreeMap::new();
    for it in items.iter().filter(|it| it.section == "SYSCTL VARIABLES") {
        for tag in &it.tags {
            let name = va(tag).unwrap_or("");
            let (leaf, per_queue) = if let Some(l) = name.strip_prefix("dev.xbb.N.queue.Q.") {
                (l, true)
            } else if let Some(l) = name.strip_prefix("dev.xbb.N.") {
                (l, false)
            } else {
                out.push(format!(
                    "line {}: sysctl tag not `Va dev.xbb.N.<leaf>` or \
                     `Va dev.xbb.N.queue.Q.<leaf>`: {tag}",
                    it.line
                ));
                continue;
            };
            let key = format!("{leaf}{}", if per_queue { " (queue)" } else { "" });
            if nodes.insert(key, (it, per_queue)).is_some() {
                out.push(format!("line {}: {name} listed twice", it.line));
            }
        }
    }
    nodes
}

/// Any name mentioned anywhere must exist (examples, caveats, text).
fn check_mentions(page: &str, out: &mut Vec<String>) {
    for (i, line) in page.lines().enumerate() {
        for word in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_')) {
            let word = word.trim_end_matches('.');
            if let Some(rest) = word.strip_prefix(TUNABLE_PREFIX) {
                if !rest.is_empty() && !TUNABLES.iter().any(|d| d.name == rest) {
                    out.push(format!("line {}: unknown tunable {word}", i + 1));
                }
            } else if let Some(rest) = word.strip_prefix("dev.xbb.") {
                if let Some(problem) = check_sysctl_mention(rest) {
                    out.push(format!("line {}: {word}: {problem}", i + 1));
                }
            }
        }
    }
}

/// Checks `<unit>.<leaf>` or `<unit>.queue.<q>.<leaf>` (after `dev.xbb.`);
/// a bare unit (`dev.xbb.0`, `dev.xbb.N`) or queue is fine.
fn check_sysctl_mention(rest: &str) -> Option<String> {
    let parts: Vec<&str> = rest.split('.').collect();
    let is_index = |s: &str| s == "N" || s == "Q" || s.parse::<u32>().is_ok();
    if !is_index(parts[0]) {
        return Some(String::from("unit is not a number, N or Q"));
    }
    let leaf = match parts.as_slice() {
        [_] => return None,
        [_, "queue"] => return None,
        [_, "queue", q] if is_index(q) => return None,
        [_, "queue", q, leaf] if is_index(q) => {
            let d = SYSCTLS.iter().find(|d| d.name == *leaf)?;
            return (!d.per_queue()).then(|| String::from("not kept per queue"));
        }
        [_, leaf] => *leaf,
        _ => return Some(String::from("malformed")),
    };
    (!SYSCTLS.iter().any(|d| d.name == leaf) && !SHIM_NODES.contains(&leaf))
        .then(|| String::from("not in SYSCTLS"))
}

/// The raw lines of section `sh`.
fn section_text(page: &str, sh: &str) -> String {
    let head = format!(".Sh {sh}");
    let mut on = false;
    let mut s = String::new();
    for line in page.lines() {
        if line.starts_with(".Sh ") {
            on = line.trim() == head;
            continue;
        }
        if on {
            s.push_str(line);
            s.push('\n');
        }
    }
    s
}

#[test]
fn page_agrees_with_the_tables() {
    let p = problems(&read_page());
    assert!(
        p.is_empty(),
        "man/xbb.4 disagrees with src/stats.rs:\n  {}",
        p.join("\n  ")
    );
}

/// The checker itself catches each kind of disagreement.
#[test]
fn checker_catches_disagreements() {
    let page = read_page();
    let t = &TUNABLES[0];
    let s_limit = SYSCTLS
        .iter()
        .find(|d| d.kind == SysctlKind::Limit)
        .expect("a limit");
    let s_counter = SYSCTLS
        .iter()
        .find(|d| d.kind == SysctlKind::Counter)
        .expect("a counter");
    let s_switch = SYSCTLS
        .iter()
        .find(|d| d.kind == SysctlKind::Switch)
        .expect("a switch");
    let tunable_tag = format!(".It Va {TUNABLE_PREFIX}{}\n", t.name);
    let good_default = format!(
        "The default is {}; values from {} to {}",
        t.default, t.min, t.max
    );
    let bad_default = format!(
        "The default is {}; values from {} to {}",
        t.default + 1,
        t.min,
        t.max
    );
    let limit_tag = format!(".It Va dev.xbb.N.{}\n", s_limit.name);
    let counter_queue_tag = format!(".It Va dev.xbb.N.queue.Q.{}\n", s_counter.name);
    let switch_tag = format!(".It Va dev.xbb.N.{}\n", s_switch.name);
    let mutations: Vec<(&str, String)> = vec![
        ("tunable dropped", page.replacen(&tunable_tag, "", 1)),
        (
            "tunable default",
            page.replacen(&good_default, &bad_default, 1),
        ),
        (
            "unknown tunable",
            page.replacen(
                &tunable_tag,
                &format!("{tunable_tag}.It Va hw.xbb.bogus\n"),
                1,
            ),
        ),
        ("limit dropped", page.replacen(&limit_tag, "", 1)),
        (
            "per-queue name dropped",
            page.replacen(&counter_queue_tag, "", 1),
        ),
        (
            "per-queue name on a limit",
            page.replacen(
                &limit_tag,
                &format!("{limit_tag}.It Va dev.xbb.N.queue.Q.{}\n", s_limit.name),
                1,
            ),
        ),
        (
            "switch in the limits subsection",
            page.replacen(&switch_tag, "", 1).replacen(
                &limit_tag,
                &format!("{limit_tag}{switch_tag}"),
                1,
            ),
        ),
        (
            "unknown node in the text",
            page.replacen(
                ".Sh CAVEATS\n",
                ".Sh CAVEATS\nSee dev.xbb.0.bogus_node.\n",
                1,
            ),
        ),
        (
            "section missing",
            page.replacen(".Sh HISTORY\n", ".Sh HISTORY_\n", 1),
        ),
    ];
    for (what, mutated) in mutations {
        assert_ne!(mutated, page, "mutation \"{what}\" did not apply");
        let p = problems(&mutated);
        eprintln!("{what}: {p:?}");
        assert!(!p.is_empty(), "the checker missed: {what}");
    }
}

/// `mandoc -Tlint` reports nothing but cross references to manuals this
/// machine does not have (FreeBSD's; the page is for FreeBSD).
#[test]
fn mandoc_lint_is_clean() {
    let required = std::env::var("XBB_REQUIRE_MANDOC").is_ok_and(|v| v == "1");
    let out = match Command::new("mandoc")
        .args(["-Tlint", "-Wstyle"])
        .arg(page_path())
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            assert!(
                !required,
                "XBB_REQUIRE_MANDOC=1 but mandoc cannot run: {e} (apt-get install mandoc)"
            );
            eprintln!("mandoc not installed: lint of {PAGE} skipped");
            return;
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let messages: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.contains("referenced manual not found"))
        .filter(|l| !l.contains("mandoc.db"))
        .collect();
    assert!(
        messages.is_empty(),
        "mandoc -Tlint {PAGE}:\n{}",
        messages.join("\n")
    );
    // Errors and warnings set a non-zero status; style messages alone do
    // not (and the only ones left are the missing cross references).
    let status = Command::new("mandoc")
        .args(["-Tlint", "-Wwarning"])
        .arg(page_path())
        .status()
        .expect("mandoc runs");
    assert!(status.success(), "mandoc -Tlint -Wwarning {PAGE} failed");
}

/// The shim's own nodes are still the ones its header announces.
#[test]
fn shim_nodes_are_in_the_shim_header() {
    let header = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sys-glue/xbb_shim.h");
    let Ok(text) = std::fs::read_to_string(&header) else {
        eprintln!("sys-glue/xbb_shim.h absent: shim nodes not checked");
        return;
    };
    for name in SHIM_NODES {
        assert!(
            text.contains(&format!("dev.xbb.N.{name}")),
            "sys-glue/xbb_shim.h no longer mentions dev.xbb.N.{name}: update man/xbb.4 and SHIM_NODES"
        );
    }
}

/// The shim adds its own nodes beside the table's; a name in both would be
/// a duplicate leaf FreeBSD refuses ("can't re-use a leaf") on every attach.
/// Found by running xbb.ko: `num_queues` was added twice.
#[test]
fn shim_nodes_do_not_duplicate_the_table() {
    let c =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sys-glue/xbb.c"))
            .expect("sys-glue/xbb.c");
    let mut names = Vec::new();
    for (i, _) in c.match_indices("OID_AUTO, \"") {
        let rest = &c[i + "OID_AUTO, \"".len()..];
        let name = &rest[..rest.find('"').expect("closing quote")];
        names.push(name.to_string());
    }
    assert!(names.iter().any(|n| n == "state"), "parsed {names:?}");
    for n in &names {
        assert!(
            !SYSCTLS.iter().any(|d| d.name == n),
            "sys-glue/xbb.c adds {n:?}, which the table already has"
        );
        assert!(
            SHIM_NODES.contains(&n.as_str()) || n == "queue",
            "sys-glue/xbb.c adds {n:?}, not documented as a shim node"
        );
    }
}

/// Issue 13, finding 8: xbb(4) says how the offered indirect-segment count
/// is derived, and the negotiation does exactly that: at most
/// `hw.xbb.max_request_size` / 4096 (the pages of the largest I/O), and
/// none at all when that leaves 11 (`BLKIF_MAX_SEGMENTS_PER_REQUEST`) or
/// less.
#[test]
fn indirect_segment_cap_is_documented_and_holds() {
    use xbb::abi::{Abi, BLKIF_MAX_SEGMENTS_PER_REQUEST};
    use xbb::connect::{FrontendParams, QueueParams};
    use xbb::host::{MediumInfo, PAGE_SIZE};
    use xbb::negotiate::negotiate;
    use xbb::stats::{Tunable, Tunables};
    use xbb::units::Sectors;

    let plain = BLKIF_MAX_SEGMENTS_PER_REQUEST as u64;
    let page = PAGE_SIZE as u64;
    let (_, items) = parse(&read_page());
    let item = items
        .iter()
        .find(|it| {
            it.tags
                .iter()
                .any(|t| t == "Va hw.xbb.max_indirect_segments")
        })
        .expect("hw.xbb.max_indirect_segments is documented");
    let body = item.body.replace(".Va ", "").replace(".Pq ", "");
    for want in [
        format!("at most {TUNABLE_PREFIX}max_request_size / {page}."),
        format!("a value of {plain} or less"),
        String::from("turns indirect requests off"),
        format!(
            "{TUNABLE_PREFIX}max_request_size below {}.",
            (plain + 1) * page
        ),
    ] {
        assert!(body.contains(&want), "xbb(4) should say {want:?}: {body}");
    }

    let fe = FrontendParams {
        ring_pages: 1,
        abi: Abi::native(),
        queues: vec![QueueParams {
            ring_refs: [0; 32],
            event_channel: 1,
        }],
        persistent: false,
    };
    let medium = MediumInfo {
        sectors: Sectors(1 << 20),
        sector_size: 512,
        physical_sector_size: 512,
        ..MediumInfo::default()
    };
    for max_indirect in [0, 1, plain, plain + 1, 16, 100, 256, 4096] {
        for max_size in [45056, 49151, 49152, 65536, 1 << 20, 16 << 20] {
            let mut t = Tunables::default();
            t.set(Tunable::MaxIndirectSegments, max_indirect).unwrap();
            t.set(Tunable::MaxRequestSize, max_size).unwrap();
            let documented = match max_indirect.min(max_size / page) {
                n if n <= plain => 0,
                n => n,
            };
            let terms = negotiate(&t, &fe, &medium, true).unwrap();
            assert_eq!(
                u64::from(terms.features.max_indirect_segments),
                documented,
                "max_indirect_segments {max_indirect}, max_request_size {max_size}"
            );
        }
    }
}
