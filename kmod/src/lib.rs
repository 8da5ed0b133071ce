//! The Rust half of the `xbb.ko` FreeBSD kernel module.
//!
//! A static library for the soft-float kernel target
//! (`x86_64-xbb-freebsd-kernel.json`). It links the xbb core and its FreeBSD
//! platform (`xbb_freebsd`, whose `xbb_rs_*` entry points implement the Rust
//! side of `sys-glue/xbb_shim.h`) and adds the two items only a final kernel
//! artifact may define: the global allocator, over `malloc(9)` with the
//! driver's own malloc type, and the panic handler, which ends in `panic(9)`.
//! The C shim (`sys-glue/`) calls the entry points; the Rust code reaches the
//! kernel only through the ops table the shim installs at module load, so the
//! library's only undefined symbols are the kernel's `memcpy`, `memmove`,
//! `memset`, `memcmp` and `bcmp`.

#![no_std]
#![deny(missing_docs)]

/// Every Rust allocation goes to `malloc(9)` (`M_NOWAIT`, type `M_XBB`).
#[global_allocator]
static ALLOC: xbb_freebsd::KernelAllocator = xbb_freebsd::KernelAllocator;

/// A Rust panic is a kernel bug: report it through `panic(9)`.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    xbb_freebsd::kernel_panic(info)
}
