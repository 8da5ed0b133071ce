//! A minimal toolstack: creates and removes `vbd` devices in XenStore the way
//! `xl block-attach` / `xl block-detach` (libxl) do, producing the back-end
//! and front-end directories that `io/blkif.h` and `io/xenbus.h` describe.

use super::xenstore::Xenstored;
use xbb::host::{DomId, XenbusState, XsError, XsTxn};
use xbb::keys;

/// What `xl` is asked to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VbdSpec {
    /// The domain running the back-end (0 for dom0).
    pub backend_dom: DomId,
    /// The guest.
    pub frontend_dom: DomId,
    /// The virtual device number (51712 = `xvda`, `(202 << 8) | (disk << 4)`).
    pub devid: u32,
    /// The back-end store: a file path or a device path (`params`).
    pub params: String,
    /// `type`: "file" or "phy".
    pub kind: String,
    /// `mode`: "w" or "r".
    pub mode: String,
    /// `online`: the device stays after its front-end closes (reconnectable).
    pub online: bool,
    /// `direct-io-safe` = 1, as libxl writes for the disk option of that
    /// name: the back-end may open an image file with `O_DIRECT`.
    pub direct_io_safe: bool,
}

impl VbdSpec {
    /// A writable, online, file-backed `vbd` served by dom0.
    pub fn new(frontend_dom: DomId, devid: u32, params: &str) -> VbdSpec {
        VbdSpec {
            backend_dom: 0,
            frontend_dom,
            devid,
            params: params.to_string(),
            kind: String::from("file"),
            mode: String::from("w"),
            online: true,
            direct_io_safe: false,
        }
    }
}

/// The XenStore directories of a created `vbd`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VbdPaths {
    /// `/local/domain/<be>/backend/vbd/<fe>/<devid>`.
    pub backend: String,
    /// `/local/domain/<fe>/device/vbd/<devid>`.
    pub frontend: String,
}

/// The Linux-style name of virtual device `devid` (`xvda`, `hdb`, `sdc1`,
/// ...), as libxl writes it to `dev`; the number itself when it is not a
/// known encoding.
pub fn vdev_name(devid: u32) -> String {
    fn disk_letters(mut disk: u32) -> String {
        // bijective base 26: 0 = a, 25 = z, 26 = aa
        let mut s = std::vec::Vec::new();
        loop {
            s.push(b'a' + (disk % 26) as u8);
            if disk < 26 {
                break;
            }
            disk = disk / 26 - 1;
        }
        s.reverse();
        String::from_utf8(s).unwrap_or_default()
    }
    fn with_part(prefix: &str, disk: u32, part: u32) -> String {
        if part == 0 {
            format!("{prefix}{}", disk_letters(disk))
        } else {
            format!("{prefix}{}{part}", disk_letters(disk))
        }
    }
    if devid & (1 << 28) != 0 {
        let disk = (devid >> 8) & 0xfffff;
        return with_part("xvd", disk, devid & 0xff);
    }
    let major = devid >> 8;
    let minor = devid & 0xff;
    match major {
        202 => with_part("xvd", minor >> 4, minor & 15),
        8 => with_part("sd", minor >> 4, minor & 15),
        3 => with_part("hd", minor >> 6, minor & 63),
        22 => with_part("hd", 2 + (minor >> 6), minor & 63),
        _ => devid.to_string(),
    }
}

/// The directories `spec` would use.
pub fn vbd_paths(spec: &VbdSpec) -> VbdPaths {
    VbdPaths {
        backend: format!(
            "/local/domain/{}/backend/vbd/{}/{}",
            spec.backend_dom, spec.frontend_dom, spec.devid
        ),
        frontend: format!(
            "/local/domain/{}/device/vbd/{}",
            spec.frontend_dom, spec.devid
        ),
    }
}

/// Runs `f` in a transaction, retrying while the commit conflicts.
fn in_transaction(
    xs: &Xenstored,
    mut f: impl FnMut(XsTxn) -> Result<(), XsError>,
) -> Result<(), XsError> {
    loop {
        let t = xs.transaction_start();
        if let Err(e) = f(t) {
            let _ = xs.transaction_end(t, false);
            return Err(e);
        }
        match xs.transaction_end(t, true) {
            Err(XsError::Again) => continue,
            r => return r,
        }
    }
}

/// Writes `/local/domain/<dom>/{name, domid}`, as domain creation does.
pub fn create_domain(xs: &Xenstored, dom: DomId, name: &str) -> Result<(), XsError> {
    let base = format!("/local/domain/{dom}");
    in_transaction(xs, |t| {
        xs.write_in(t, &format!("{base}/name"), name.as_bytes())?;
        xs.write_in(t, &format!("{base}/domid"), dom.to_string().as_bytes())
    })
}

/// Creates the `vbd` of `spec` in one transaction, as `xl block-attach`
/// does: the back-end directory (state Initialising) and the front-end
/// directory (state Initialising). Returns both paths.
pub fn create_vbd(xs: &Xenstored, spec: &VbdSpec) -> Result<VbdPaths, XsError> {
    let paths = vbd_paths(spec);
    let be = &paths.backend;
    let fe = &paths.frontend;
    let init = XenbusState::Initialising.as_str();
    let fe_id = spec.frontend_dom.to_string();
    let be_id = spec.backend_dom.to_string();
    let devid = spec.devid.to_string();
    let dev = vdev_name(spec.devid);
    let online = if spec.online { "1" } else { "0" };
    in_transaction(xs, |t| {
        let w = |node: &str, dir: &str, value: &str| {
            xs.write_in(t, &format!("{dir}/{node}"), value.as_bytes())
        };
        w(keys::FRONTEND, be, fe)?;
        w(keys::FRONTEND_ID, be, &fe_id)?;
        w(keys::PARAMS, be, &spec.params)?;
        w(keys::TYPE, be, &spec.kind)?;
        w(keys::MODE, be, &spec.mode)?;
        w(keys::ONLINE, be, online)?;
        w("removable", be, "0")?;
        w("bootable", be, "1")?;
        w("dev", be, &dev)?;
        w(keys::DEVICE_TYPE, be, "disk")?;
        w(keys::DISCARD_ENABLE, be, "1")?;
        if spec.direct_io_safe {
            w(keys::DIRECT_IO_SAFE, be, "1")?;
        }
        w(keys::PHYSICAL_DEVICE_PATH, be, &spec.params)?;
        w(keys::STATE, be, init)?;
        w(keys::BACKEND, fe, be)?;
        w(keys::BACKEND_ID, fe, &be_id)?;
        w(keys::VIRTUAL_DEVICE, fe, &devid)?;
        w(keys::DEVICE_TYPE, fe, "disk")?;
        w(keys::STATE, fe, init)
    })?;
    Ok(paths)
}

/// Asks the back-end to let go, as `xl block-detach` does: `online` = 0 and
/// the back-end's `state` = Closing.
pub fn destroy_vbd(xs: &Xenstored, paths: &VbdPaths) -> Result<(), XsError> {
    let be = &paths.backend;
    in_transaction(xs, |t| {
        xs.write_in(t, &format!("{be}/{}", keys::ONLINE), b"0")?;
        xs.write_in(
            t,
            &format!("{be}/{}", keys::STATE),
            XenbusState::Closing.as_str().as_bytes(),
        )
    })
}

/// Removes both directories of a `vbd` (after the back-end reached
/// Closed). Absent directories are not an error.
pub fn remove_vbd(xs: &Xenstored, paths: &VbdPaths) -> Result<(), XsError> {
    in_transaction(xs, |t| {
        for p in [&paths.frontend, &paths.backend] {
            match xs.remove_in(t, p) {
                Ok(()) | Err(XsError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
}
