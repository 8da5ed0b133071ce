//! Arbitrary front-end transport parameters: `xbb_testing::fuzz::fuzz_xenstore`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| xbb_testing::fuzz::fuzz_xenstore(data));
