//! W3C Trace Context: the `traceparent` and `tracestate` headers, read and
//! written strictly by the specification (<https://www.w3.org/TR/trace-context/>).
//!
//! A [`TraceContext`] is the span a piece of work runs in: the trace it
//! belongs to, its own span id, the span it is a child of, and the flags and
//! vendor state that travel with it. The server makes one per call (a child
//! of the caller's `traceparent`, or a new trace when there is none or it is
//! malformed); a client call made inside it sends a child of it.
//!
//! Ids are random (a per-thread generator, no system call, no allocation);
//! formatting a `traceparent` writes 55 bytes into a stack buffer.

use std::fmt;

use http::{HeaderName, HeaderValue};

/// The metadata key of the W3C trace parent.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The metadata key of the W3C vendor trace state.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The `sampled` trace flag.
pub const SAMPLED: u8 = 0x01;

/// The length of a version `00` `traceparent`.
const TRACEPARENT_LEN: usize = 55;
/// At most this many `tracestate` list members (W3C: 32).
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// A 16-byte trace id, never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId([u8; 16]);

/// An 8-byte span id, never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId([u8; 8]);

impl TraceId {
    /// A new random trace id.
    pub fn random() -> TraceId {
        loop {
            let id = fastrand::u128(..);
            if id != 0 {
                return TraceId(id.to_be_bytes());
            }
        }
    }

    /// The id's bytes, as OTLP sends them.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    /// The id from its bytes; `None` for all zeros, which is invalid.
    pub fn from_bytes(bytes: [u8; 16]) -> Option<TraceId> {
        (bytes != [0; 16]).then_some(TraceId(bytes))
    }

    /// 32 lowercase hex digits, written without allocating.
    pub fn to_hex(self) -> Hex<32> {
        Hex::of(&self.0)
    }
}

impl SpanId {
    /// A new random span id.
    pub fn random() -> SpanId {
        loop {
            let id = fastrand::u64(..);
            if id != 0 {
                return SpanId(id.to_be_bytes());
            }
        }
    }

    /// The id's bytes, as OTLP sends them.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0
    }

    /// The id from its bytes; `None` for all zeros, which is invalid.
    pub fn from_bytes(bytes: [u8; 8]) -> Option<SpanId> {
        (bytes != [0; 8]).then_some(SpanId(bytes))
    }

    /// 16 lowercase hex digits, written without allocating.
    pub fn to_hex(self) -> Hex<16> {
        Hex::of(&self.0)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_hex().as_str())
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_hex().as_str())
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// Lowercase hex digits in a fixed buffer: `N` is twice the byte count.
#[derive(Clone, Copy)]
pub struct Hex<const N: usize>([u8; N]);

const DIGITS: &[u8; 16] = b"0123456789abcdef";

impl<const N: usize> Hex<N> {
    fn of(bytes: &[u8]) -> Hex<N> {
        let mut out = [0u8; N];
        for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0x0f)];
        }
        Hex(out)
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and letters were written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl<const N: usize> fmt::Display for Hex<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> fmt::Debug for Hex<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a `traceparent` was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TraceparentError {
    /// Not `version-traceid-parentid-flags` with the lengths 2-32-16-2.
    #[error("`traceparent` must be `VERSION-TRACEID-PARENTID-FLAGS` with 2, 32, 16 and 2 hex digits")]
    Shape,
    /// A field holds something other than lowercase hex digits.
    #[error("`traceparent` fields must be lowercase hex digits (0-9, a-f)")]
    NotLowercaseHex,
    /// Version `ff` is forbidden.
    #[error("`traceparent` version `ff` is invalid")]
    Version,
    /// Version `00` must be exactly 55 characters long.
    #[error("`traceparent` version 00 must be exactly 55 characters")]
    Length,
    /// The trace id is all zeros.
    #[error("`traceparent` trace id is all zeros")]
    ZeroTraceId,
    /// The parent id is all zeros.
    #[error("`traceparent` parent id is all zeros")]
    ZeroParentId,
}

/// The span a piece of work runs in: its trace, its own id, its parent,
/// the W3C flags and `tracestate`. See [`crate::context`].
#[derive(Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    flags: u8,
    state: Option<HeaderValue>,
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("trace_id", &self.trace_id)
            .field("span_id", &self.span_id)
            .field("parent", &self.parent)
            .field("flags", &self.flags)
            .field("state", &self.state)
            .finish()
    }
}

impl TraceContext {
    /// The first span of a new trace, sampled.
    pub fn new_root() -> TraceContext {
        TraceContext {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent: None,
            flags: SAMPLED,
            state: None,
        }
    }

    /// A new span in the same trace, whose parent is this one; the flags and
    /// the `tracestate` are carried over.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id,
            span_id: SpanId::random(),
            parent: Some(self.span_id),
            flags: self.flags,
            state: self.state.clone(),
        }
    }

    /// The span of a call that arrived with `traceparent` and `tracestate`
    /// (each as sent, `None` when absent): a child of the caller's span, or
    /// the root of a new trace when `traceparent` is absent or malformed.
    /// A malformed `tracestate` is dropped, as the specification asks.
    pub fn from_headers<'a>(
        traceparent: Option<&HeaderValue>,
        tracestate: impl IntoIterator<Item = &'a HeaderValue>,
    ) -> TraceContext {
        let Some(Ok(parent)) = traceparent.map(|v| TraceContext::parse_traceparent(v.as_bytes())) else {
            return TraceContext::new_root();
        };
        let mut child = parent.child();
        child.state = join_tracestate(tracestate);
        child
    }

    /// Reads a `traceparent` value: the remote span, whose [`span_id`](Self::span_id)
    /// is the caller's. Future versions (`01`..`fe`) are read by their
    /// version-00 prefix, as the specification asks.
    ///
    /// # Errors
    ///
    /// When the value breaks the specification; the error says how.
    pub fn parse_traceparent(value: &[u8]) -> Result<TraceContext, TraceparentError> {
        if value.len() < TRACEPARENT_LEN {
            return Err(TraceparentError::Shape);
        }
        let version = hex_field::<1>(&value[0..2])?;
        if version == [0xff] {
            return Err(TraceparentError::Version);
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return Err(TraceparentError::Shape);
        }
        if version == [0] && value.len() != TRACEPARENT_LEN {
            return Err(TraceparentError::Length);
        }
        // A later version may add fields, after a dash.
        if value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-' {
            return Err(TraceparentError::Shape);
        }
        let trace_id =
            TraceId::from_bytes(hex_field::<16>(&value[3..35])?).ok_or(TraceparentError::ZeroTraceId)?;
        let span_id =
            SpanId::from_bytes(hex_field::<8>(&value[36..52])?).ok_or(TraceparentError::ZeroParentId)?;
        let [flags] = hex_field::<1>(&value[53..55])?;
        Ok(TraceContext { trace_id, span_id, parent: None, flags, state: None })
    }

    /// This span as a version `00` `traceparent`, in a stack buffer.
    pub fn traceparent(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = [0u8; TRACEPARENT_LEN];
        out[0..3].copy_from_slice(b"00-");
        out[3..35].copy_from_slice(&self.trace_id.to_hex().0);
        out[35] = b'-';
        out[36..52].copy_from_slice(&self.span_id.to_hex().0);
        out[52] = b'-';
        out[53] = DIGITS[usize::from(self.flags >> 4)];
        out[54] = DIGITS[usize::from(self.flags & 0x0f)];
        out
    }

    /// This span as a `traceparent` header value.
    pub fn traceparent_header(&self) -> HeaderValue {
        // Only hex digits and dashes: always a valid header value.
        let mut value =
            HeaderValue::from_bytes(&self.traceparent()).unwrap_or_else(|_| HeaderValue::from_static(""));
        // New on every call: kept out of the HPACK tables, where it would only
        // evict the headers that repeat.
        value.set_sensitive(true);
        value
    }

    /// The trace this span belongs to.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// This span's own id.
    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// The span this one is a child of; `None` for the root of a trace.
    pub fn parent(&self) -> Option<SpanId> {
        self.parent
    }

    /// The trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the caller asked for this trace to be recorded.
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The vendor `tracestate`, passed through as received (when valid).
    pub fn tracestate(&self) -> Option<&HeaderValue> {
        self.state.as_ref()
    }

    /// This span with `tracestate` set; a malformed one is dropped.
    #[must_use]
    pub fn with_tracestate(mut self, state: &HeaderValue) -> TraceContext {
        self.state = check_tracestate(state.as_bytes()).is_ok().then(|| state.clone());
        self
    }
}

/// `N` bytes from `2N` lowercase hex digits.
fn hex_field<const N: usize>(digits: &[u8]) -> Result<[u8; N], TraceparentError> {
    if digits.len() != 2 * N {
        return Err(TraceparentError::Shape);
    }
    let mut out = [0u8; N];
    // Every digit looked up, the invalid ones (0xff) noticed once at the end.
    let mut seen = 0u8;
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (high, low) = (NIBBLES[usize::from(pair[0])], NIBBLES[usize::from(pair[1])]);
        seen |= high | low;
        *byte = (high << 4) | (low & 0x0f);
    }
    if seen > 0x0f {
        return Err(TraceparentError::NotLowercaseHex);
    }
    Ok(out)
}

/// The value of each lowercase hex digit; 0xff for every other byte.
static NIBBLES: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 16 {
        table[DIGITS[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// One `tracestate` from the header's values: a single valid value as it
/// is (no copy), several joined with commas; `None` when absent or when any
/// is malformed.
fn join_tracestate<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> Option<HeaderValue> {
    let mut values = values.into_iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return check_tracestate(first.as_bytes()).is_ok().then(|| first.clone());
    };
    let mut joined = first.as_bytes().to_vec();
    for value in std::iter::once(second).chain(values) {
        joined.push(b',');
        joined.extend_from_slice(value.as_bytes());
    }
    check_tracestate(&joined).ok()?;
    HeaderValue::from_bytes(&joined).ok()
}

/// Checks a `tracestate` value: at most 32 `key=value` members, separated
/// by commas with optional spaces or tabs, keys unique.
///
/// # Errors
///
/// A message naming the first problem.
pub fn check_tracestate(value: &[u8]) -> Result<(), String> {
    let mut keys: [&[u8]; MAX_TRACESTATE_MEMBERS] = [&[]; MAX_TRACESTATE_MEMBERS];
    let mut count = 0;
    for member in value.split(|&b| b == b',') {
        let member = member.trim_ascii_start();
        let member = trim_ows_end(member);
        if member.is_empty() {
            continue; // empty list members are allowed
        }
        let eq = member.iter().position(|&b| b == b'=').ok_or("`tracestate` member without `=`")?;
        let (key, value) = (&member[..eq], &member[eq + 1..]);
        check_key(key)?;
        check_value(value)?;
        if count == MAX_TRACESTATE_MEMBERS {
            return Err(format!("`tracestate` has more than {MAX_TRACESTATE_MEMBERS} members"));
        }
        if keys[..count].contains(&key) {
            return Err("`tracestate` names a key twice".to_owned());
        }
        keys[count] = key;
        count += 1;
    }
    Ok(())
}

fn trim_ows_end(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(0, |i| i + 1);
    &bytes[..end]
}

fn check_key(key: &[u8]) -> Result<(), String> {
    let key_char =
        |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'*' | b'/');
    let bad = || format!("`tracestate` key `{}` is malformed", String::from_utf8_lossy(key));
    match key.iter().position(|&b| b == b'@') {
        None => {
            // simple-key = lcalpha 0*255( lcalpha / DIGIT / "_" / "-"/ "*" / "/" )
            if key.is_empty()
                || key.len() > 256
                || !key[0].is_ascii_lowercase()
                || !key.iter().all(|&c| key_char(c))
            {
                return Err(bad());
            }
        }
        Some(at) => {
            // tenant-id "@" system-id
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            let tenant_ok = !tenant.is_empty()
                && tenant.len() <= 241
                && (tenant[0].is_ascii_lowercase() || tenant[0].is_ascii_digit())
                && tenant.iter().all(|&c| key_char(c));
            let system_ok = !system.is_empty()
                && system.len() <= 14
                && system[0].is_ascii_lowercase()
                && system.iter().all(|&c| key_char(c));
            if !tenant_ok || !system_ok {
                return Err(bad());
            }
        }
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), String> {
    // value = 0*255(chr) nblk-chr; chr = %x20 / nblk-chr;
    // nblk-chr = %x21-2B / %x2D-3C / %x3E-7E
    let nblk = |c: u8| matches!(c, 0x21..=0x2b | 0x2d..=0x3c | 0x3e..=0x7e);
    let ok = !value.is_empty()
        && value.len() <= 256
        && value.last().is_some_and(|&c| nblk(c))
        && value.iter().all(|&c| c == b' ' || nblk(c));
    if ok { Ok(()) } else { Err("`tracestate` value is malformed".to_owned()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_round_trips() {
        let parsed = TraceContext::parse_traceparent(GOOD.as_bytes()).unwrap();
        assert_eq!(parsed.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.span_id().to_string(), "00f067aa0ba902b7");
        assert!(parsed.sampled());
        assert_eq!(&parsed.traceparent()[..], GOOD.as_bytes());
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        let cases: &[(&str, TraceparentError)] = &[
            ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", TraceparentError::Version),
            ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", TraceparentError::ZeroTraceId),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", TraceparentError::ZeroParentId),
            ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", TraceparentError::NotLowercaseHex),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01", TraceparentError::NotLowercaseHex),
            ("0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", TraceparentError::NotLowercaseHex),
            ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", TraceparentError::Shape),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01", TraceparentError::Shape),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1", TraceparentError::Shape),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", TraceparentError::Length),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x", TraceparentError::NotLowercaseHex),
            ("00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", TraceparentError::Shape),
            ("", TraceparentError::Shape),
        ];
        for (value, expected) in cases {
            assert_eq!(TraceContext::parse_traceparent(value.as_bytes()).err(), Some(*expected), "{value:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_prefix() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-adds";
        let parsed = TraceContext::parse_traceparent(later.as_bytes()).unwrap();
        assert_eq!(parsed.span_id().to_string(), "00f067aa0ba902b7");
        let glued = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x";
        assert_eq!(TraceContext::parse_traceparent(glued.as_bytes()).err(), Some(TraceparentError::Shape));
    }

    #[test]
    fn an_inbound_call_is_a_child_or_a_new_trace() {
        let parent = HeaderValue::from_static(GOOD);
        let state = HeaderValue::from_static("congo=t61rcWkgMzE, rojo=00f067aa0ba902b7");
        let child = TraceContext::from_headers(Some(&parent), [&state]);
        assert_eq!(child.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(child.parent().map(|p| p.to_string()).as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(child.span_id(), child.parent().unwrap());
        assert_eq!(child.tracestate(), Some(&state));

        let bad = HeaderValue::from_static("00-00000000000000000000000000000000-00f067aa0ba902b7-01");
        let fresh = TraceContext::from_headers(Some(&bad), [&state]);
        assert_ne!(fresh.trace_id().to_string(), "00000000000000000000000000000000");
        assert_eq!((fresh.parent(), fresh.tracestate()), (None, None), "a new trace, without the state");
        let none = TraceContext::from_headers(None, []);
        assert_ne!(none.trace_id(), fresh.trace_id());
    }

    #[test]
    fn tracestate_is_checked_by_the_grammar() {
        for good in ["", "a=1", "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7", "t@sys=v,, x=y z", "a=1\t,b=2"] {
            assert!(check_tracestate(good.as_bytes()).is_ok(), "{good:?}");
        }
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        for bad in ["A=1", "a", "a=", "a=b=c", "a=1,a=2", "1a=x", "a@=x", "a=x ,b=\u{7f}", &many.join(",")] {
            assert!(check_tracestate(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let parent = HeaderValue::from_static(GOOD);
        let (one, two) = (HeaderValue::from_static("a=1"), HeaderValue::from_static("b=2"));
        let joined = TraceContext::from_headers(Some(&parent), [&one, &two]);
        assert_eq!(joined.tracestate().map(|v| v.as_bytes()), Some(&b"a=1,b=2"[..]));
        let dup = TraceContext::from_headers(Some(&parent), [&one, &one]);
        assert_eq!(dup.tracestate(), None);
    }

    #[test]
    fn ids_are_random_and_never_zero() {
        let a = TraceContext::new_root();
        let b = a.child();
        assert_eq!(a.trace_id(), b.trace_id());
        assert_eq!(b.parent(), Some(a.span_id()));
        assert_ne!(TraceContext::new_root().trace_id(), a.trace_id());
        assert_eq!(TraceContext::parse_traceparent(&b.traceparent()).unwrap().span_id(), b.span_id());
    }
}
