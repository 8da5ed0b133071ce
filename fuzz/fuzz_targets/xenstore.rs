//! Arbitrary front-end transport parameters: `xbb::fuzzing::fuzz_xenstore`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| xbb::fuzzing::fuzz_xenstore(data));
