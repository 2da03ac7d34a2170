//! What a switch decides and counts, as pure functions: which group a new
//! connection goes to (smooth weighted round robin between the stable and
//! the canary group), per-backend counters (connections, failed connects,
//! HTTP responses by class, a latency histogram), and the scanner that finds
//! each HTTP/1.x response head on a forwarded stream without buffering
//! bodies.

use serde::{Deserialize, Serialize};

/// The upper bounds (milliseconds) of the latency histogram's buckets; one
/// more bucket holds everything slower.
pub(crate) const LATENCY_BOUNDS_MS: [u64; 14] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
];

/// Which group a connection goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Group {
    Stable,
    Canary,
}

/// Smooth weighted round robin between two groups: over every 100
/// consecutive picks at one weight, exactly `weight` go to the canary group,
/// spread evenly.
#[derive(Clone, Debug, Default)]
pub(crate) struct Weighted {
    stable: i64,
    canary: i64,
}

impl Weighted {
    /// The group of the next connection when the canary group gets `weight`
    /// percent.
    pub(crate) fn pick(&mut self, weight: u8) -> Group {
        let w = i64::from(weight.min(100));
        self.stable += 100 - w;
        self.canary += w;
        if self.canary > self.stable {
            self.canary -= 100;
            Group::Canary
        } else {
            self.stable -= 100;
            Group::Stable
        }
    }
}

/// What a switch counted for one backend (or a group: the sum of its
/// backends).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Connections forwarded to it.
    pub connections: u64,
    /// Connects to it that failed or were refused.
    pub failed_connects: u64,
    /// HTTP responses by class (when the port speaks HTTP).
    pub http_2xx: u64,
    pub http_3xx: u64,
    pub http_4xx: u64,
    pub http_5xx: u64,
    /// Time from a request's first byte to its response head, counted in the
    /// buckets of [`LATENCY_BOUNDS_MS`] (plus one for slower).
    #[serde(default)]
    pub latency_ms: Vec<u64>,
}

impl Counters {
    /// Counts one response head.
    pub(crate) fn response(&mut self, status: u16, latency_ms: Option<u64>) {
        match status / 100 {
            2 => self.http_2xx += 1,
            3 => self.http_3xx += 1,
            4 => self.http_4xx += 1,
            5 => self.http_5xx += 1,
            _ => return,
        }
        if let Some(ms) = latency_ms {
            if self.latency_ms.len() < LATENCY_BOUNDS_MS.len() + 1 {
                self.latency_ms.resize(LATENCY_BOUNDS_MS.len() + 1, 0);
            }
            let i = LATENCY_BOUNDS_MS
                .iter()
                .position(|b| ms <= *b)
                .unwrap_or(LATENCY_BOUNDS_MS.len());
            self.latency_ms[i] += 1;
        }
    }

    /// Adds `other` to these counters.
    pub(crate) fn add(&mut self, other: &Counters) {
        self.connections += other.connections;
        self.failed_connects += other.failed_connects;
        self.http_2xx += other.http_2xx;
        self.http_3xx += other.http_3xx;
        self.http_4xx += other.http_4xx;
        self.http_5xx += other.http_5xx;
        if self.latency_ms.len() < other.latency_ms.len() {
            self.latency_ms.resize(other.latency_ms.len(), 0);
        }
        for (a, b) in self.latency_ms.iter_mut().zip(&other.latency_ms) {
            *a += b;
        }
    }

    /// What was counted since `base` (an earlier reading of the same
    /// counters).
    pub(crate) fn since(&self, base: &Counters) -> Counters {
        Counters {
            connections: self.connections.saturating_sub(base.connections),
            failed_connects: self.failed_connects.saturating_sub(base.failed_connects),
            http_2xx: self.http_2xx.saturating_sub(base.http_2xx),
            http_3xx: self.http_3xx.saturating_sub(base.http_3xx),
            http_4xx: self.http_4xx.saturating_sub(base.http_4xx),
            http_5xx: self.http_5xx.saturating_sub(base.http_5xx),
            latency_ms: self
                .latency_ms
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(base.latency_ms.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }

    /// HTTP responses counted.
    pub(crate) fn responses(&self) -> u64 {
        self.http_2xx + self.http_3xx + self.http_4xx + self.http_5xx
    }

    /// The upper bound (ms) of the histogram bucket that holds quantile `q`
    /// of the timed responses (`u64::MAX` for the open bucket); `None`
    /// without any.
    pub(crate) fn latency_quantile_ms(&self, q: f64) -> Option<u64> {
        let total: u64 = self.latency_ms.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.latency_ms.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(LATENCY_BOUNDS_MS.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }
}

/// The longest response head (or chunk-size or trailer line) the scanner
/// reads; a longer one stops the counting of that connection.
const MAX_HEAD: usize = 16 * 1024;

/// The most header fields of a response head the scanner reads; a head
/// with more stops the counting of that connection.
const MAX_HEADERS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scan {
    /// Reading a response head.
    Head,
    /// Skipping this many body bytes.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping this many chunk bytes.
    ChunkData(u64),
    /// Skipping the CRLF after a chunk.
    ChunkEnd(u8),
    /// Reading trailer lines up to the empty one.
    Trailers,
    /// A body delimited by the end of the connection, an upgraded
    /// connection, or framing the scanner does not follow: nothing more is
    /// counted on this connection.
    Done,
}

/// Finds the response heads on the backend-to-client side of an HTTP/1.x
/// connection (keep-alive included): each status code is reported once.
/// Bodies are skipped by their framing (`Content-Length`, chunked), never
/// buffered. Responses to `HEAD` requests are not told apart (their
/// `Content-Length` is taken as a body), so counting may stop early on such
/// a connection; it never changes the bytes forwarded.
#[derive(Clone, Debug)]
pub(crate) struct ResponseScanner {
    state: Scan,
    line: Vec<u8>,
}

impl Default for ResponseScanner {
    fn default() -> Self {
        Self {
            state: Scan::Head,
            line: Vec::new(),
        }
    }
}

impl ResponseScanner {
    /// Feeds the next bytes of the stream; `status` is called with the code
    /// of every response head completed in them.
    pub(crate) fn feed(&mut self, bytes: &[u8], mut status: impl FnMut(u16)) {
        let mut rest = bytes;
        while !rest.is_empty() {
            match self.state {
                Scan::Done => return,
                Scan::Head => {
                    let old = self.line.len();
                    let from = old.saturating_sub(3);
                    self.line.extend_from_slice(rest);
                    match find(&self.line[from..], b"\r\n\r\n") {
                        Some(p) => {
                            let end = from + p + 4;
                            let used = end - old;
                            let head = std::mem::take(&mut self.line);
                            self.state = self.head(&head[..end], &mut status);
                            rest = &rest[used..];
                        }
                        None => {
                            if self.line.len() > MAX_HEAD {
                                self.done();
                            }
                            return;
                        }
                    }
                }
                Scan::Body(n) | Scan::ChunkData(n) => {
                    let take = (rest.len() as u64).min(n);
                    rest = &rest[take as usize..];
                    let left = n - take;
                    self.state = match (self.state, left) {
                        (Scan::Body(_), 0) => Scan::Head,
                        (Scan::Body(_), l) => Scan::Body(l),
                        (_, 0) => Scan::ChunkEnd(2),
                        (_, l) => Scan::ChunkData(l),
                    };
                }
                Scan::ChunkEnd(k) => {
                    let take = rest.len().min(usize::from(k));
                    rest = &rest[take..];
                    let left = k - take as u8;
                    self.state = if left == 0 {
                        Scan::ChunkSize
                    } else {
                        Scan::ChunkEnd(left)
                    };
                }
                Scan::ChunkSize | Scan::Trailers => {
                    let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
                        self.line.extend_from_slice(rest);
                        if self.line.len() > MAX_HEAD {
                            self.done();
                        }
                        return;
                    };
                    self.line.extend_from_slice(&rest[..=nl]);
                    rest = &rest[nl + 1..];
                    let line = std::mem::take(&mut self.line);
                    self.state = if self.state == Scan::Trailers {
                        if line == b"\r\n" || line == b"\n" {
                            Scan::Head
                        } else {
                            Scan::Trailers
                        }
                    } else {
                        match httparse::parse_chunk_size(&line) {
                            Ok(httparse::Status::Complete((_, 0))) => Scan::Trailers,
                            Ok(httparse::Status::Complete((_, n))) => Scan::ChunkData(n),
                            _ => Scan::Done,
                        }
                    };
                }
            }
        }
    }

    fn done(&mut self) {
        self.state = Scan::Done;
        self.line = Vec::new();
    }

    /// Reads a complete head: reports its status, says how its body is framed.
    fn head(&self, head: &[u8], status: &mut impl FnMut(u16)) -> Scan {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        if !matches!(response.parse(head), Ok(httparse::Status::Complete(_))) {
            return Scan::Done;
        }
        let Some(code) = response.code.filter(|c| (100..600).contains(c)) else {
            return Scan::Done;
        };
        if code == 101 {
            return Scan::Done;
        }
        if code < 200 {
            // An interim response: the final one follows.
            return Scan::Head;
        }
        status(code);
        if code == 204 || code == 304 {
            return Scan::Head;
        }
        let mut length = None;
        for header in response.headers.iter() {
            let value = String::from_utf8_lossy(header.value);
            if header.name.eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
            {
                return Scan::ChunkSize;
            }
            if header.name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<u64>().ok();
            }
        }
        match length {
            Some(0) => Scan::Head,
            Some(n) => Scan::Body(n),
            None => Scan::Done,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether `buf` holds the end of an HTTP/1.x request head (its empty
/// line, after CRLF or bare LF line ends), looking only where the bytes
/// read from `from` on could have completed it.
pub(crate) fn head_ends(buf: &[u8], from: usize) -> bool {
    let tail = &buf[from.saturating_sub(3).min(buf.len())..];
    tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_ends_at_its_empty_line_however_it_was_cut() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody";
        for cut in 0..head.len() {
            let mut buf = head[..cut].to_vec();
            let ended_before = head_ends(&buf, 0);
            let from = buf.len();
            buf.extend_from_slice(&head[cut..]);
            assert!(ended_before || head_ends(&buf, from), "cut at {cut}");
        }
        assert!(!head_ends(b"GET / HTTP/1.1\r\nHost: a\r\n", 0));
        assert!(head_ends(b"GET / HTTP/1.0\n\n", 0));
        assert!(!head_ends(b"GET / HTTP/1.1\r\nHost: a\r\n\r", 0));
    }

    fn shares(weight: u8, n: usize) -> usize {
        let mut w = Weighted::default();
        (0..n).filter(|_| w.pick(weight) == Group::Canary).count()
    }

    #[test]
    fn weights_are_exact_over_every_hundred() {
        for weight in [0u8, 1, 5, 10, 33, 50, 90, 99, 100] {
            assert_eq!(shares(weight, 100), usize::from(weight), "weight {weight}");
            assert_eq!(shares(weight, 1000), usize::from(weight) * 10);
        }
    }

    #[test]
    fn weights_are_spread_evenly() {
        // At weight 10, every window of 10 consecutive picks holds one canary.
        let mut w = Weighted::default();
        let picks: Vec<Group> = (0..200).map(|_| w.pick(10)).collect();
        for win in picks.windows(10) {
            let c = win.iter().filter(|g| **g == Group::Canary).count();
            assert!((1..=1).contains(&c), "{c} in a window of 10");
        }
        // Any prefix stays within one connection of the exact share.
        let mut w = Weighted::default();
        let mut canary = 0i64;
        for i in 1..=1000i64 {
            if w.pick(37) == Group::Canary {
                canary += 1;
            }
            assert!((canary * 100 - 37 * i).abs() <= 100, "after {i}: {canary}");
        }
    }

    fn statuses(chunks: &[&[u8]]) -> Vec<u16> {
        let mut s = ResponseScanner::default();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |code| out.push(code));
        }
        out
    }

    #[test]
    fn counts_each_response_of_a_keep_alive_stream() {
        let stream = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\nHTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnope\r\n3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 302 Found\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(statuses(&[stream]), vec![200, 500, 404, 302, 204]);
        // The same stream a byte at a time.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(statuses(&bytes), vec![200, 500, 404, 302, 204]);
        // And in uneven pieces.
        let pieces: Vec<&[u8]> = stream.chunks(7).collect();
        assert_eq!(statuses(&pieces), vec![200, 500, 404, 302, 204]);
    }

    #[test]
    fn a_body_that_looks_like_a_head_is_not_counted() {
        let stream = b"HTTP/1.0 200 OK\r\nContent-Length: 40\r\n\r\nHTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(statuses(&[stream]), vec![200]);
    }

    #[test]
    fn a_body_until_close_or_garbage_stops_counting() {
        let until_close = b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nHTTP/1.1 500 X\r\n\r\n";
        assert_eq!(statuses(&[until_close]), vec![200]);
        assert!(statuses(&[b"SSH-2.0-OpenSSH\r\n\r\n"]).is_empty());
        assert!(statuses(&[b"HTTP/1.1 abc\r\n\r\n"]).is_empty());
    }

    #[test]
    fn counters_give_classes_deltas_and_quantiles() {
        let mut c = Counters::default();
        for _ in 0..98 {
            c.response(200, Some(3));
        }
        c.response(503, Some(40));
        c.response(200, Some(400));
        assert_eq!((c.http_2xx, c.http_5xx, c.responses()), (99, 1, 100));
        assert_eq!(c.latency_quantile_ms(0.5), Some(5));
        assert_eq!(c.latency_quantile_ms(0.99), Some(50));
        assert_eq!(c.latency_quantile_ms(1.0), Some(500));
        let base = c.clone();
        c.response(500, Some(1));
        let d = c.since(&base);
        assert_eq!((d.http_5xx, d.responses()), (1, 1));
        assert_eq!(d.latency_quantile_ms(0.99), Some(1));
        let mut sum = base.clone();
        sum.add(&d);
        assert_eq!(sum, c);
        assert_eq!(Counters::default().latency_quantile_ms(0.99), None);
    }
}
