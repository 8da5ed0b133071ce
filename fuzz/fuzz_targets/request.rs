//! Arbitrary slot bytes decoded and validated: `xbb_testing::fuzz::fuzz_request`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| xbb_testing::fuzz::fuzz_request(data));
