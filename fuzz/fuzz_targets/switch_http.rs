//! The switch's HTTP/1.x readers on arbitrary streams cut at arbitrary
//! points: the response scanner (heads, `Content-Length` and chunked
//! bodies, trailers) and the end of a request head.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first bytes choose where the stream is cut, the rest is the stream.
    let split = data.first().map_or(0, |n| usize::from(*n % 16)).min(data.len().saturating_sub(1));
    let (cuts, stream) = data.get(1..).unwrap_or_default().split_at(split);
    let cuts: Vec<usize> = cuts.iter().map(|b| usize::from(*b)).collect();
    deploy_code::fuzzing::switch_http(stream, &cuts);
});
