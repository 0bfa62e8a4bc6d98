#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ringkv::fuzzing::inner_page(data));
