//! `src/h1/chunked.rs`: arbitrary bytes in arbitrary splits. The verdict, the end and
//! the payload count never depend on the splits; they agree with the line-by-line
//! reference (`cohort_fuzz::chunked_model`); the payload never exceeds the bytes fed;
//! after the end or an error every later call says the same.
#![no_main]

use cohort::h1::chunked::{ChunkedError, ChunkedScanner, Scan};
use libfuzzer_sys::fuzz_target;

/// The verdict for `input` fed in `pieces` (cut at the ascending `cuts`):
/// `Ok(Some((end, payload)))`, `Ok(None)` while unfinished, or the error.
fn feed(input: &[u8], cuts: &[usize]) -> Result<Option<(usize, u64)>, ChunkedError> {
    let mut scanner = ChunkedScanner::new();
    let mut start = 0;
    let mut fed = 0u64;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        let piece = &input[start..cut];
        let result = scanner.feed(piece);
        match result {
            Ok(Scan::End(n)) => {
                assert!(
                    n <= piece.len(),
                    "End({n}) beyond a {}-byte piece",
                    piece.len()
                );
                assert!(scanner.is_done());
                let end = start + n;
                assert!(
                    scanner.data_bytes() <= end as u64,
                    "payload beyond the bytes fed"
                );
                // Done is final.
                assert_eq!(scanner.feed(b"0\r\n\r\n"), Ok(Scan::End(0)));
                assert_eq!(scanner.feed(&input[end..]), Ok(Scan::End(0)));
                return Ok(Some((end, scanner.data_bytes())));
            }
            Ok(Scan::More) => {
                assert!(!scanner.is_done());
                fed += piece.len() as u64;
                assert!(scanner.data_bytes() <= fed, "payload beyond the bytes fed");
            }
            Err(e) => {
                // Errors are final.
                assert_eq!(scanner.feed(b"0\r\n\r\n"), Err(e));
                assert_eq!(scanner.feed(b""), Err(e));
                assert!(!scanner.is_done());
                return Err(e);
            }
        }
        start = cut;
    }
    Ok(None)
}

fuzz_target!(|data: &[u8]| {
    // The first byte says how many cuts, the next two bytes each where.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 8);
    if rest.len() < 2 * n {
        return;
    }
    let (cut_bytes, input) = rest.split_at(2 * n);
    let mut cuts: Vec<usize> = cut_bytes
        .chunks(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (input.len() + 1))
        .collect();
    cuts.sort_unstable();

    let whole = feed(input, &[]);
    assert_eq!(
        feed(input, &cuts),
        whole,
        "split at {cuts:?} changed the verdict"
    );
    if input.len() <= 64 {
        let every: Vec<usize> = (1..input.len()).collect();
        assert_eq!(
            feed(input, &every),
            whole,
            "byte by byte changed the verdict"
        );
    }
    assert_eq!(
        cohort_fuzz::chunked_model::scan(input),
        whole,
        "the scanner and the reference disagree"
    );
});
