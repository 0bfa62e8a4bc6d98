#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ringkv::fuzzing::wal_record(data));
