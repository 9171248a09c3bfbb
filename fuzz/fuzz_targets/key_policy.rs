#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kmsfs_fuzz::key_policy(data));
