//! What the service serves and how: [`Config`], set from the configuration
//! file (`--config FILE`, `/etc/xen/xbb-serve.conf` under systemd) and from
//! the command line, which overrides the file.
//!
//! The file is lines of `key = value`; `#` starts a comment, blank lines
//! are ignored, a key may appear once. Keys (the command-line option of
//! the same name sets the same thing):
//!
//! | key | value | default |
//! |---|---|---|
//! | `type` | the vbd `type` values taken, comma-separated (empty: any) | `phy,file` |
//! | `script` | take only vbds whose hotplug `script`'s file name is one of these, comma-separated (empty: no such condition) | empty |
//! | `hw.xbb.NAME` | an `hw.xbb.*` tunable (`xbb-serve --tunables`) | its default |
//! | `sector-size` | the logical sector size stores emulate: 512 or 4096 (a device or export with larger sectors imposes its own) | 512 |
//! | `copy-grants` | `yes`: copy data pages with `GNTTABOP_copy` instead of mapping them | `no` |
//! | `io` | what carries out file and device I/O: `uring` (one io_uring per store, driven by the queue threads; the worker pool when io_uring cannot be set up) or `pool` (preadv/pwritev worker threads) | `uring` |
//! | `verbose` | `yes`: log every watch, event and completion batch | `no` |
//! | `ignore-kernel-backend` | `yes`: take vbds even while xen-blkback probes every vbd | `no` |
//! | `journal-dir` | where each connected queue's in-flight journal is kept, so that the next xbb-serve takes the vbd over (a tmpfs; empty: none, a restart strands the guests' disks) | `/run/xbb-serve` |
//!
//! Every bad line is refused with its file and line number.

use xbb::stats::{Tunables, TUNABLE_PREFIX};
use xbb_ustore::IoEngine;

/// What the service serves and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The `hw.xbb.*` tunables every instance gets.
    pub tunables: Tunables,
    /// `type` values taken ("phy", "file"); empty: every type.
    pub types: Vec<String>,
    /// Hotplug script names (the file name of the `script` node) whose vbds
    /// are taken; empty: the script does not matter.
    pub scripts: Vec<String>,
    /// Serve vbds even while the kernel's xen-blkback probes every vbd.
    pub ignore_kernel_backend: bool,
    /// Log every watch, event-channel and completion batch.
    pub verbose: bool,
    /// Copy data pages with `GNTTABOP_copy` through a bounce window instead
    /// of mapping them with gntdev (see [`super::bounce`]); persistent
    /// grants are then not offered.
    pub copy_grants: bool,
    /// The logical sector size every store emulates (512 or 4096).
    pub sector_size: u32,
    /// What carries out file and device I/O ([`IoEngine::Uring`] falls
    /// back to the pool when io_uring cannot be set up).
    pub io: IoEngine,
    /// Where in-flight journals are kept (`None`: none are kept, and a
    /// restarted service cannot take its vbds back).
    pub journal_dir: Option<std::path::PathBuf>,
}

/// Where [`Config::journal_dir`] is by default: a tmpfs that outlives the
/// process, not the host.
pub const JOURNAL_DIR: &str = "/run/xbb-serve";

impl Default for Config {
    fn default() -> Config {
        Config {
            tunables: Tunables::default(),
            types: vec![String::from("phy"), String::from("file")],
            scripts: Vec::new(),
            ignore_kernel_backend: false,
            verbose: false,
            copy_grants: false,
            sector_size: 512,
            io: IoEngine::Uring,
            journal_dir: Some(std::path::PathBuf::from(JOURNAL_DIR)),
        }
    }
}

/// The keys [`Config::set`] takes, besides `hw.xbb.NAME`.
pub const KEYS: [&str; 8] = [
    "type",
    "script",
    "sector-size",
    "copy-grants",
    "io",
    "verbose",
    "ignore-kernel-backend",
    "journal-dir",
];

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn yes_no(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "yes" | "true" | "1" | "on" => Ok(true),
        "no" | "false" | "0" | "off" => Ok(false),
        _ => Err(format!("{key}: not yes or no: {v:?}")),
    }
}

impl Config {
    /// Sets `key` to `value` (see the module documentation).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let v = value.trim();
        match key {
            "type" => self.types = list(v),
            "script" => {
                let s = list(v);
                if let Some(bad) = s.iter().find(|s| s.contains('/')) {
                    return Err(format!("script: a file name, not a path: {bad:?}"));
                }
                self.scripts = s;
            }
            "sector-size" => {
                self.sector_size = match v {
                    "512" => 512,
                    "4096" => 4096,
                    _ => return Err(format!("sector-size: 512 or 4096, not {v:?}")),
                }
            }
            "copy-grants" => self.copy_grants = yes_no(key, v)?,
            "io" => {
                self.io =
                    IoEngine::from_name(v).ok_or_else(|| format!("io: uring or pool, not {v:?}"))?
            }
            "verbose" => self.verbose = yes_no(key, v)?,
            "ignore-kernel-backend" => self.ignore_kernel_backend = yes_no(key, v)?,
            "journal-dir" => {
                self.journal_dir = match v {
                    "" => None,
                    d if d.starts_with('/') => Some(std::path::PathBuf::from(d)),
                    d => return Err(format!("journal-dir: an absolute path, not {d:?}")),
                }
            }
            _ => {
                let Some(name) = key.strip_prefix(TUNABLE_PREFIX) else {
                    return Err(format!("unknown key {key:?}"));
                };
                let n: u64 =
                    parse_number(v).ok_or_else(|| format!("{key}: not a number: {v:?}"))?;
                self.tunables
                    .set_by_name(name, n)
                    .map_err(|e| format!("{key}={n}: {e:?}"))?;
            }
        }
        Ok(())
    }

    /// Applies the configuration file `text` (named `file` in errors).
    /// Nothing is applied when a line is bad.
    pub fn apply_file(&mut self, text: &str, file: &str) -> Result<(), String> {
        let mut next = self.clone();
        let mut seen: Vec<String> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.split_once('#').map_or(line, |(l, _)| l).trim();
            if line.is_empty() {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(format!("{file}:{n}: not key = value: {line:?}"));
            };
            let k = k.trim();
            if k.is_empty() {
                return Err(format!("{file}:{n}: no key before '='"));
            }
            if seen.iter().any(|s| s == k) {
                return Err(format!("{file}:{n}: {k} set twice"));
            }
            next.set(k, v).map_err(|e| format!("{file}:{n}: {e}"))?;
            seen.push(k.to_string());
        }
        *self = next;
        Ok(())
    }
}

/// A decimal or `0x` hexadecimal number.
fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xbb::stats::{Tunable, TUNABLES};

    #[test]
    fn every_key_is_read() {
        let mut c = Config::default();
        let text = "\
# the shipped kind of file
type = phy
script = block-xbb, block-xbb-nbd
hw.xbb.max_ring_page_order = 2   # a comment after a value
hw.xbb.max_queues = 0x2

sector-size = 4096
copy-grants = yes
io = pool
verbose = on
ignore-kernel-backend = true
journal-dir = /tmp/j
";
        c.apply_file(text, "x.conf").unwrap();
        assert_eq!(c.types, vec!["phy"]);
        assert_eq!(c.scripts, vec!["block-xbb", "block-xbb-nbd"]);
        assert_eq!(c.tunables.get(Tunable::MaxRingPageOrder), 2);
        assert_eq!(c.tunables.get(Tunable::MaxQueues), 2);
        assert_eq!(c.sector_size, 4096);
        assert!(c.copy_grants && c.verbose && c.ignore_kernel_backend);
        assert_eq!(c.journal_dir, Some(std::path::PathBuf::from("/tmp/j")));
        assert_eq!(c.io, IoEngine::Pool);
        // Every key the module documents is one `set` takes.
        for k in KEYS {
            let v = match k {
                "type" | "script" | "journal-dir" => "",
                "sector-size" => "512",
                "io" => "uring",
                _ => "no",
            };
            c.set(k, v).unwrap();
        }
        assert!(c.types.is_empty() && c.scripts.is_empty() && c.journal_dir.is_none());
        assert!(!c.copy_grants && !c.verbose && !c.ignore_kernel_backend);
        assert_eq!(c.io, IoEngine::Uring);
        // And every tunable, by its full name.
        for d in TUNABLES {
            c.set(
                &format!("{TUNABLE_PREFIX}{}", d.name),
                &d.default.to_string(),
            )
            .unwrap();
        }
        assert_eq!(c.tunables, Tunables::default());
    }

    #[test]
    fn bad_lines_are_refused_with_their_line_number() {
        let base = "type = phy\n\n# fine so far\n";
        for (bad, why) in [
            ("no equals sign", "not key = value"),
            ("= 3", "no key"),
            ("colour = blue", "unknown key \"colour\""),
            ("max_queues = 2", "unknown key \"max_queues\""),
            ("hw.xbb.max_queues = two", "not a number"),
            ("hw.xbb.max_queues = 99999", "hw.xbb.max_queues=99999"),
            ("hw.xbb.no_such = 1", "hw.xbb.no_such=1"),
            ("sector-size = 1024", "512 or 4096"),
            ("copy-grants = maybe", "not yes or no"),
            ("io = aio", "uring or pool"),
            ("journal-dir = run/xbb", "an absolute path"),
            (
                "script = /etc/xen/scripts/block-xbb",
                "a file name, not a path",
            ),
            ("type = file", "type set twice"),
        ] {
            let mut c = Config::default();
            let before = c.clone();
            let e = c
                .apply_file(&format!("{base}{bad}\nverbose = yes\n"), "/etc/xen/x.conf")
                .unwrap_err();
            assert!(e.starts_with("/etc/xen/x.conf:4: "), "{bad}: {e}");
            assert!(e.contains(why), "{bad}: {e}");
            assert_eq!(c, before, "{bad}: a bad file changed the configuration");
        }
    }

    #[test]
    fn the_shipped_file_parses_and_so_does_each_setting_it_comments_out() {
        const SHIPPED: &str = include_str!("../dist/xbb-serve.conf");
        let mut c = Config::default();
        c.apply_file(SHIPPED, "xbb-serve.conf").unwrap();
        assert_eq!(c.scripts, vec!["block-xbb"]);
        assert_eq!(c.types, vec!["phy", "file"]);
        let mut commented = 0;
        for line in SHIPPED.lines() {
            let Some(setting) = line.strip_prefix('#') else {
                continue;
            };
            if !setting.contains(" = ") || setting.starts_with(' ') {
                continue;
            }
            let mut c = Config::default();
            c.apply_file(setting, "xbb-serve.conf").unwrap();
            commented += 1;
        }
        assert!(commented >= 5, "{commented}");
    }

    #[test]
    fn defaults_are_the_historic_behaviour() {
        let c = Config::default();
        assert_eq!(c.types, vec!["phy", "file"]);
        assert!(c.scripts.is_empty());
        assert_eq!(c.sector_size, 512);
        assert_eq!(c.tunables, Tunables::default());
        assert_eq!(
            c.journal_dir.as_deref(),
            Some(std::path::Path::new(JOURNAL_DIR))
        );
        let mut e = Config::default();
        e.apply_file("# nothing\n\n   \n", "e").unwrap();
        assert_eq!(e, c);
    }
}
