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

use std::fmt;
use std::ops::Range;

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

/// The diagnostic to draw in place of `diag`, when some label of it (or of a
/// related diagnostic) lies on a line longer than [`LONG_LINE`] bytes.
pub(crate) fn fitted(diag: &dyn Diagnostic) -> Option<Fitted> {
    needs_window(diag).then(|| Fitted::of(diag))
}

fn needs_window(diag: &dyn Diagnostic) -> bool {
    if let Some(related) = diag.related()
        && related.into_iter().any(needs_window)
    {
        return true;
    }
    let (Some(src), Some(labels)) = (diag.source_code(), diag.labels()) else {
        return false;
    };
    let Some(text) = whole(src) else {
        return false;
    };
    let text = text.1.as_bytes();
    labels.into_iter().any(|l| {
        let (start, end) = (l.offset(), l.offset() + l.len());
        [start, end].into_iter().any(|p| {
            let line = line_around(text, p.min(text.len()));
            line.end - line.start > LONG_LINE
        })
    })
}

/// The whole text of a source, with its name and language.
fn whole(src: &dyn SourceCode) -> Option<(Option<String>, String, Option<String>)> {
    let contents = src
        .read_span(&SourceSpan::from(0..0), usize::MAX, usize::MAX)
        .ok()?;
    let text = std::str::from_utf8(contents.data()).ok()?.to_owned();
    Some((
        contents.name().map(str::to_owned),
        text,
        contents.language().map(str::to_owned),
    ))
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
    fn of(diag: &dyn Diagnostic) -> Self {
        let labels: Vec<LabeledSpan> = diag.labels().map(|l| l.collect()).unwrap_or_default();
        let (source, labels) = match diag.source_code().and_then(whole) {
            Some((name, text, language)) if !labels.is_empty() => {
                let points: Vec<usize> = labels
                    .iter()
                    .flat_map(|l| [l.offset(), l.offset() + l.len()])
                    .map(|p| p.min(text.len()))
                    .collect();
                let cut = Cut::new(&text, &points);
                let labels = labels
                    .iter()
                    .map(|l| {
                        let start = cut.map(l.offset());
                        let end = cut.map(l.offset() + l.len()).max(start);
                        LabeledSpan::new_with_span(
                            l.label().map(str::to_owned),
                            SourceSpan::from(start..end),
                        )
                        .with_primary(l.primary())
                    })
                    .collect();
                (
                    Some(Windowed {
                        cut,
                        name,
                        language,
                    }),
                    labels,
                )
            }
            _ => (None, labels),
        };
        Self {
            message: diag.to_string(),
            code: diag.code().map(|c| c.to_string()),
            help: diag.help().map(|h| h.to_string()),
            url: diag.url().map(|u| u.to_string()),
            severity: diag.severity(),
            source,
            labels,
            related: diag
                .related()
                .map(|r| r.map(Fitted::of).collect())
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
    /// Cuts every line longer than [`LONG_LINE`] to windows around the
    /// `points` on it (its start when none is).
    fn new(original: &str, points: &[usize]) -> Self {
        let bytes = original.as_bytes();
        let mut text = String::with_capacity(original.len().min(1 << 20));
        let mut pieces: Vec<Piece> = Vec::new();
        let mut keep = |range: Range<usize>, line_start: usize, text: &mut String| {
            pieces.push(Piece {
                from: range.clone(),
                to: text.len(),
                line_start,
            });
            text.push_str(&original[range]);
        };
        let mut at = 0;
        while at < bytes.len() {
            let line = line_around(bytes, at);
            // The terminator (`\n`, `\r` or `\r\n`) after the line, kept as it is.
            let mut next = line.end;
            if bytes.get(next) == Some(&b'\r') {
                next += 1;
            }
            if bytes.get(next) == Some(&b'\n') {
                next += 1;
            }
            if line.end - line.start <= LONG_LINE {
                keep(line.start..next, line.start, &mut text);
                at = next.max(at + 1);
                continue;
            }
            let mut windows: Vec<Range<usize>> = Vec::new();
            let on_line = points
                .iter()
                .copied()
                .filter(|p| (line.start..=line.end).contains(p));
            let mut any = false;
            for p in on_line {
                any = true;
                let start = floor(original, p.saturating_sub(BEFORE).max(line.start));
                let end = ceil(original, (p + AFTER).min(line.end));
                windows.push(start..end);
            }
            if !any {
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
            at = next.max(at + 1);
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
        let i = self.pieces.partition_point(|p| p.to + p.from.len() < at);
        let p = self.pieces.get(i)?;
        (p.to <= at).then(|| p.from.start + (at - p.to) - p.line_start)
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
        let cut = Cut::new(&text, &[x, x + 1]);
        let at = cut.map(x);
        assert_eq!(&cut.text[at..at + 1], "x");
        let line_start = text.find("steps").unwrap();
        assert_eq!(cut.original_column(at), Some(x - line_start));
        assert!(cut.text.starts_with("a: 1\nsteps: ["));
        assert!(cut.text.ends_with("x]\nb: 2\n"));
        assert!(cut.text.contains(ELLIPSIS));
        assert!(cut.text.len() < 2 * LONG_LINE);
        assert_eq!(cut.text.lines().count(), text.lines().count());
    }

    #[test]
    fn short_lines_are_kept_whole() {
        let text = "a: 1\r\nb: [1, 2]\n";
        let cut = Cut::new(text, &[7]);
        assert_eq!(cut.text, text);
        assert_eq!(cut.map(7), 7);
    }
}
