//! The entry points of the fuzz targets in `fuzz/`, compiled only with
//! `--cfg fuzzing` (as `cargo fuzz` builds): they reach the configuration
//! pipeline's renderer and the switch's response scanner without making either
//! part of the library's public interface.

use std::collections::BTreeMap;
use std::path::Path;

/// The whole configuration pipeline on one document: template, YAML with
/// spans, schema, lowering; a refusal is rendered as a terminal, the server
/// and `--format json` render it. Neither may panic, whatever the input.
pub fn config(text: &str) {
    let inputs = crate::config::template::Inputs {
        vars: vec![("tag".to_owned(), "v1".to_owned())],
        var_files: Vec::new(),
        env: BTreeMap::from([("FUZZ_SECRET".to_owned(), "x".repeat(40))]),
    };
    if let Err(err) =
        crate::config::load_text_with(text, Path::new("deploy-code.yaml"), &inputs, true)
    {
        let _ = crate::render::diagnostic_plain(&err);
        let _ = crate::render::diagnostics_json(&err);
        let report = miette::Report::new(err);
        let mut text = String::new();
        let _ = miette::GraphicalReportHandler::new().render_report(&mut text, report.as_ref());
    }
}

/// The switch's two readers of an HTTP/1.x stream over `stream` fed in
/// pieces cut at `cuts`: the response scanner (see [`switch_responses`]) and
/// the test for a complete request head, which, looking only at what each
/// piece could have completed, finds the head's end where a look at the
/// whole buffer finds it.
pub fn switch_http(stream: &[u8], cuts: &[usize]) {
    switch_responses(stream, cuts);
    use crate::switch::traffic::head_ends;
    let mut buf = Vec::new();
    let mut at = 0;
    for cut in cuts.iter().map(|c| c % 64).chain([stream.len()]) {
        let end = (at + cut).min(stream.len());
        let from = buf.len();
        buf.extend_from_slice(&stream[at..end]);
        at = end;
        let ended = head_ends(&buf, 0);
        assert_eq!(
            head_ends(&buf, from),
            ended,
            "a head's end missed at {from}"
        );
        if ended {
            return;
        }
    }
}

/// The switch's scanner of HTTP/1.x response heads and bodies (lengths,
/// chunks, trailers) over `stream` fed in pieces cut at `cuts`: it never
/// panics, and how the stream is cut never changes the statuses it reports.
pub fn switch_responses(stream: &[u8], cuts: &[usize]) {
    use crate::switch::traffic::ResponseScanner;
    let mut whole = Vec::new();
    ResponseScanner::default().feed(stream, |code| whole.push(code));
    let mut pieces = Vec::new();
    let mut scanner = ResponseScanner::default();
    let mut at = 0;
    for cut in cuts {
        let end = (at + cut % 64).min(stream.len());
        scanner.feed(&stream[at..end], |code| pieces.push(code));
        at = end;
    }
    scanner.feed(&stream[at..], |code| pieces.push(code));
    assert_eq!(
        whole, pieces,
        "the statuses depend on where the stream was cut"
    );
}
