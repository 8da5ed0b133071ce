//! Arbitrary slot bytes decoded and validated: `xbb::fuzzing::fuzz_request`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| xbb::fuzzing::fuzz_request(data));
