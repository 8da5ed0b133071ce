//! A whole vbd's life against a real instance, the contract checked after
//! every operation: `xbb_testing::fuzz::fuzz_instance_in`.

#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use xbb_testing::alloc::Counting;
use xbb_testing::fuzz::{fuzz_instance_in, InstanceMemory};

/// Counts allocations, so the body can check that the I/O path makes none.
#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Shared memory can only be leaked outside a platform: the rings' memory
/// is reused by every input.
static MEM: Mutex<Option<InstanceMemory>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut guard = MEM.lock().unwrap_or_else(|e| e.into_inner());
    let mem = guard.get_or_insert_with(|| InstanceMemory::new().expect("ring memory"));
    fuzz_instance_in(mem, data);
});
