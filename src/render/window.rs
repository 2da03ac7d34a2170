//! A diagnostic whose labels sit on very long lines, shown through a window of
//! each such line.
//!
//! miette's graphical handler pads to a label's column with a formatting
//! width, and Rust refuses (panics on) a width past `u16::MAX`: a label 65,536
//! columns into a line (a flow sequence of thousands of entries written on one
//! line) would end the process instead of being reported. Before a
//! diagnostic is drawn, every line longer than [`LONG_LINE`] bytes is cut to
//! windows around the labels' ends on it, joined by `…`, and the labels are
//! moved with the text. Lines and line numbers are kept; only columns move, so
//! the JSON form (which reads the true line and column) is built from the
//! diagnostic itself, not from this view.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use miette::{
    Diagnostic, LabeledSpan, MietteError, MietteSpanContents, Severity, SourceCode, SourceSpan,
    SpanContents,
};

/// Lines up to this many bytes are shown whole.
const LONG_LINE: usize = 1024;
/// Bytes kept before a label's end on a long line.
const BEFORE: usize = 64;
/// Bytes kept after a label's end on a long line.
const AFTER: usize = 192;
const ELLIPSIS: &str = "…";
/// Lines kept around each label's lines (miette shows one by default).
const CONTEXT: usize = 3;

/// The diagnostic to draw in place of `diag`, when an end of some label of it
/// (or of a related diagnostic) lies more than [`LONG_LINE`] bytes into its
/// line.
pub(crate) fn fitted(diag: &dyn Diagnostic) -> Option<Fitted> {
    if !needs_window(diag) {
        return None;
    }
    Some(Fitted::of(diag, &mut HashMap::new()))
}

/// A source by its name (a configuration's problems point into the file as
/// written, its rendered text or a var file, each named differently).
type SourceKey = Option<String>;

fn source_key(src: &dyn SourceCode) -> SourceKey {
    src.read_span(&SourceSpan::from(0..0), 0, 0)
        .ok()
        .and_then(|c| c.name().map(str::to_owned))
}

fn needs_window(diag: &dyn Diagnostic) -> bool {
    if let Some(mut related) = diag.related()
        && related.any(needs_window)
    {
        return true;
    }
    let (Some(src), Some(mut labels)) = (diag.source_code(), diag.labels()) else {
        return false;
    };
    // The column of each end of each label, as miette reads it (without
    // copying the text).
    labels.any(|l| {
        [l.offset(), l.offset() + l.len()].into_iter().any(|p| {
            src.read_span(&SourceSpan::from(p..p), 0, 0)
                .is_ok_and(|c| c.column() > LONG_LINE)
        })
    })
}

/// A source's whole text, with its name and language: read once per
/// source, each diagnostic pointing into it cut from it.
#[derive(Debug)]
struct Whole {
    name: Option<String>,
    text: String,
    language: Option<String>,
}

fn whole(src: &dyn SourceCode) -> Option<Whole> {
    let contents = src
        .read_span(&SourceSpan::from(0..0), usize::MAX, usize::MAX)
        .ok()?;
    let text = std::str::from_utf8(contents.data()).ok()?.to_owned();
    Some(Whole {
        name: contents.name().map(str::to_owned),
        text,
        language: contents.language().map(str::to_owned),
    })
}

/// The line (without its terminator) holding byte `at`.
fn line_around(text: &[u8], at: usize) -> Range<usize> {
    let is_break = |b: &u8| matches!(b, b'\n' | b'\r');
    let start = text[..at].iter().rposition(is_break).map_or(0, |i| i + 1);
    let end = text[at..]
        .iter()
        .position(is_break)
        .map_or(text.len(), |i| at + i);
    start..end
}

/// An owned copy of a diagnostic, its long lines cut and its labels moved.
#[derive(Debug)]
pub(crate) struct Fitted {
    message: String,
    code: Option<String>,
    help: Option<String>,
    url: Option<String>,
    severity: Option<Severity>,
    source: Option<Windowed>,
    labels: Vec<LabeledSpan>,
    related: Vec<Fitted>,
}

/// The cut text of a source, under the source's name; a snippet's header
/// (`file:line:column`) gives the column in the file as written.
#[derive(Debug)]
struct Windowed {
    cut: Cut,
    name: Option<String>,
    language: Option<String>,
}

impl SourceCode for Windowed {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let contents = self
            .cut
            .text
            .read_span(span, context_lines_before, context_lines_after)?;
        // Without context lines miette reads a span only for the header's
        // position; with them, the column places the snippet's own text and
        // must stay the cut text's.
        let column = if context_lines_before == 0 && context_lines_after == 0 {
            self.cut
                .original_column(span.offset())
                .unwrap_or(contents.column())
        } else {
            contents.column()
        };
        let (data, at, line, lines) = (
            contents.data(),
            *contents.span(),
            contents.line(),
            contents.line_count(),
        );
        let mut out = match &self.name {
            Some(name) => {
                MietteSpanContents::new_named(name.clone(), data, at, line, column, lines)
            }
            None => MietteSpanContents::new(data, at, line, column, lines),
        };
        if let Some(language) = &self.language {
            out = out.with_language(language.clone());
        }
        Ok(Box::new(out))
    }
}

impl Fitted {
    fn of(diag: &dyn Diagnostic, sources: &mut HashMap<SourceKey, Option<Arc<Whole>>>) -> Self {
        let labels: Vec<LabeledSpan> = diag.labels().map(|l| l.collect()).unwrap_or_default();
        let windowed = match diag.source_code() {
            Some(src) if !labels.is_empty() => sources
                .entry(source_key(src))
                .or_insert_with(|| whole(src).map(Arc::new))
                .clone()
                .map(|w| {
                    let spans: Vec<Range<usize>> = labels
                        .iter()
                        .map(|l| l.offset()..l.offset() + l.len())
                        .collect();
                    Windowed {
                        cut: Cut::new(&w.text, &spans),
                        name: w.name.clone(),
                        language: w.language.clone(),
                    }
                }),
            _ => None,
        };
        let labels = match &windowed {
            Some(w) => labels
                .iter()
                .map(|l| {
                    let start = w.cut.map(l.offset());
                    let end = w.cut.map(l.offset() + l.len()).max(start);
                    LabeledSpan::new_with_span(
                        l.label().map(str::to_owned),
                        SourceSpan::from(start..end),
                    )
                    .with_primary(l.primary())
                })
                .collect(),
            None => labels,
        };
        Self {
            message: diag.to_string(),
            code: diag.code().map(|c| c.to_string()),
            help: diag.help().map(|h| h.to_string()),
            url: diag.url().map(|u| u.to_string()),
            severity: diag.severity(),
            source: windowed,
            labels,
            related: diag
                .related()
                .map(|r| r.map(|d| Fitted::of(d, sources)).collect())
                .unwrap_or_default(),
        }
    }
}

/// Extension on [`LabeledSpan`]: keep whether the label is the primary one.
trait WithPrimary {
    fn with_primary(self, primary: bool) -> Self;
}

impl WithPrimary for LabeledSpan {
    fn with_primary(self, primary: bool) -> Self {
        if primary {
            LabeledSpan::new_primary_with_span(self.label().map(str::to_owned), *self.inner())
        } else {
            self
        }
    }
}

impl fmt::Display for Fitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Fitted {}

impl Diagnostic for Fitted {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.code
            .as_ref()
            .map(|c| Box::new(c) as Box<dyn fmt::Display>)
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn url<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.url
            .as_ref()
            .map(|u| Box::new(u) as Box<dyn fmt::Display>)
    }

    fn severity(&self) -> Option<Severity> {
        self.severity
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.source.as_ref().map(|s| s as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() {
            None
        } else {
            Some(Box::new(self.labels.iter().cloned()))
        }
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        if self.related.is_empty() {
            None
        } else {
            Some(Box::new(self.related.iter().map(|r| r as &dyn Diagnostic)))
        }
    }
}

/// A text with its long lines cut, and where each kept piece came from.
#[derive(Debug)]
struct Cut {
    text: String,
    /// Each kept piece: its range in the original text, where it starts in
    /// `text`, and where its line starts in the original text; in order.
    pieces: Vec<Piece>,
}

#[derive(Debug)]
struct Piece {
    from: Range<usize>,
    to: usize,
    line_start: usize,
}

impl Cut {
    /// The text of a diagnostic labelling `spans`: the lines the spans touch
    /// and [`CONTEXT`] lines around them, each longer than [`LONG_LINE`]
    /// cut to windows around the spans' ends on it (its start when none is);
    /// every other line empty, so that line numbers stay the file's without
    /// a copy of the whole text per diagnostic.
    fn new(original: &str, spans: &[Range<usize>]) -> Self {
        let bytes = original.as_bytes();
        // Each line: its text, and where the next one starts (after its
        // terminator, `\n`, `\r` or `\r\n`, kept as it is).
        let mut lines: Vec<(Range<usize>, usize)> = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let line = line_around(bytes, at);
            let mut next = line.end;
            if bytes.get(next) == Some(&b'\r') {
                next += 1;
            }
            if bytes.get(next) == Some(&b'\n') {
                next += 1;
            }
            at = next.max(at + 1);
            lines.push((line, at));
        }
        let last = lines.len().saturating_sub(1);
        let line_of = |p: usize| lines.partition_point(|(_, next)| *next <= p).min(last);
        let mut shown = vec![false; lines.len()];
        for s in spans {
            let (first, end) = (line_of(s.start), line_of(s.end.max(s.start)));
            for i in first.saturating_sub(CONTEXT)..=(end + CONTEXT).min(last) {
                if let Some(x) = shown.get_mut(i) {
                    *x = true;
                }
            }
        }
        let points: Vec<usize> = spans.iter().flat_map(|s| [s.start, s.end]).collect();
        let mut text = String::new();
        let mut pieces: Vec<Piece> = Vec::new();
        let mut keep = |range: Range<usize>, line_start: usize, text: &mut String| {
            pieces.push(Piece {
                from: range.clone(),
                to: text.len(),
                line_start,
            });
            text.push_str(&original[range]);
        };
        for ((line, next), shown) in lines.iter().zip(shown) {
            let (line, next) = (line.clone(), *next);
            if !shown {
                text.push_str(&original[line.end..next]);
                continue;
            }
            if line.end - line.start <= LONG_LINE {
                keep(line.start..next, line.start, &mut text);
                continue;
            }
            let mut windows: Vec<Range<usize>> = points
                .iter()
                .filter(|p| (line.start..=line.end).contains(*p))
                .map(|&p| {
                    floor(original, p.saturating_sub(BEFORE).max(line.start))
                        ..ceil(original, (p + AFTER).min(line.end))
                })
                .collect();
            if windows.is_empty() {
                windows.push(line.start..ceil(original, line.start + LONG_LINE));
            }
            windows.sort_by_key(|w| w.start);
            let mut merged: Vec<Range<usize>> = Vec::new();
            for w in windows {
                match merged.last_mut() {
                    Some(last) if w.start <= last.end => last.end = last.end.max(w.end),
                    _ => merged.push(w),
                }
            }
            let mut shown_to = line.start;
            for w in &merged {
                if w.start > shown_to {
                    text.push_str(if shown_to == line.start { "" } else { " " });
                    text.push_str(ELLIPSIS);
                    text.push(' ');
                }
                keep(w.clone(), line.start, &mut text);
                shown_to = w.end;
            }
            if shown_to < line.end {
                text.push(' ');
                text.push_str(ELLIPSIS);
            }
            keep(line.end..next, line.start, &mut text);
        }
        Self { text, pieces }
    }

    /// Where byte `at` of the original text is in the cut text: inside the
    /// piece that holds it, or at the start of the next piece when it was cut.
    fn map(&self, at: usize) -> usize {
        let i = self.pieces.partition_point(|p| p.from.end < at);
        match self.pieces.get(i) {
            Some(p) if p.from.start <= at => p.to + (at - p.from.start),
            Some(p) => p.to,
            None => self.text.len(),
        }
    }

    /// The column (bytes from its line's start) in the original text of
    /// byte `at` of the cut text; `None` inside an inserted `…`.
    fn original_column(&self, at: usize) -> Option<usize> {
        let i = self.pieces.partition_point(|p| p.to <= at);
        let p = self.pieces.get(i.checked_sub(1)?)?;
        (at <= p.to + p.from.len()).then(|| p.from.start + (at - p.to) - p.line_start)
    }
}

fn floor(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn ceil(text: &str, mut at: usize) -> usize {
    let at_most = text.len();
    at = at.min(at_most);
    while !text.is_char_boundary(at) {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_line_keeps_a_window_around_each_point_and_moves_them() {
        let long: String = (0..5000).map(|i| format!("{i}, ")).collect();
        let text = format!("a: 1\nsteps: [{long}x]\nb: 2\n");
        let x = text.find('x').unwrap();
        let cut = Cut::new(&text, std::slice::from_ref(&(x..x + 1)));
        let at = cut.map(x);
        assert_eq!(&cut.text[at..at + 1], "x");
        let line_start = text.find("steps").unwrap();
        assert_eq!(cut.original_column(at), Some(x - line_start));
        // The line's start is far from the point: cut.
        assert!(cut.text.starts_with("a: 1\n… "), "{}", &cut.text[..20]);
        assert!(cut.text.ends_with("x]\nb: 2\n"));
        assert!(cut.text.contains(ELLIPSIS));
        assert!(cut.text.len() < 2 * LONG_LINE);
        assert_eq!(cut.text.lines().count(), text.lines().count());
    }

    #[test]
    fn lines_far_from_the_labels_are_left_empty() {
        let text: String = (0..100).map(|i| format!("line{i}: {i}\n")).collect();
        let at = text.find("line50").unwrap();
        let cut = Cut::new(&text, std::slice::from_ref(&(at..at + 6)));
        assert_eq!(cut.text.lines().count(), 100);
        let kept: Vec<&str> = cut.text.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(kept.first(), Some(&"line47: 47"));
        assert_eq!(kept.last(), Some(&"line53: 53"));
        let m = cut.map(at);
        assert_eq!(&cut.text[m..m + 6], "line50");
        assert_eq!(cut.original_column(m), Some(0));
    }

    #[test]
    fn short_lines_are_kept_whole() {
        let text = "a: 1\r\nb: [1, 2]\n";
        let cut = Cut::new(text, std::slice::from_ref(&(7..8)));
        assert_eq!(cut.text, text);
        assert_eq!(cut.map(7), 7);
    }
}
