//! xbb-lab: the simulated Xen host that runs the xbb back-end core.
fn main() {}
