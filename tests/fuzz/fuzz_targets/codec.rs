//! cargo-fuzz target: `cargo +nightly fuzz run --fuzz-dir tests/fuzz codec tests/fuzz/corpus/codec`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    coremq::codec::fuzz::roundtrip_check(data);
});
