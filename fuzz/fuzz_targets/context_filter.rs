#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| context_store::fuzzing::context_filter(data));
