//! The log line formats: tracing-subscriber's, with the trace and span ids
//! of the call being handled on every line written inside it.
//!
//! The ids come from the task-local [`RequestContext`], read when a line is
//! actually written: a call that logs nothing pays nothing, and no span has
//! to be enabled for the ids to be there.
//!
//! - Text: `TIMESTAMP LEVEL trace_id=… span_id=… SPANS: TARGET: FIELDS`.
//! - JSON: `{"trace_id":"…","span_id":"…", …tracing-subscriber's flattened event…}`.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::context::RequestContext;

/// Human-readable lines, with the call's ids after the level.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Text;

impl<S, N> FormatEvent<S, N> for Text
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let ansi = writer.has_ansi_escapes();
        SystemTime.format_time(&mut writer)?;
        let (color, name) = match *meta.level() {
            Level::ERROR => ("\x1b[31m", "ERROR"),
            Level::WARN => ("\x1b[33m", " WARN"),
            Level::INFO => ("\x1b[32m", " INFO"),
            Level::DEBUG => ("\x1b[34m", "DEBUG"),
            Level::TRACE => ("\x1b[35m", "TRACE"),
        };
        if ansi {
            write!(writer, " {color}{name}\x1b[0m ")?;
        } else {
            write!(writer, " {name} ")?;
        }
        if let Some((trace_id, span_id)) = RequestContext::current_ids() {
            write!(writer, "trace_id={trace_id} span_id={span_id} ")?;
        }
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                writer.write_str(span.metadata().name())?;
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(writer, "{{{fields}}}")?;
                }
                writer.write_char(':')?;
                seen = true;
            }
            if seen {
                writer.write_char(' ')?;
            }
        }
        if ansi {
            write!(writer, "\x1b[2m{}:\x1b[0m ", meta.target())?;
        } else {
            write!(writer, "{}: ", meta.target())?;
        }
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// tracing-subscriber's JSON lines, with the call's ids as the first keys.
#[derive(Debug)]
pub(crate) struct JsonLines {
    inner: Format<Json>,
}

impl JsonLines {
    pub(crate) fn new() -> Self {
        JsonLines {
            inner: tracing_subscriber::fmt::format().json().flatten_event(true).with_current_span(true),
        }
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some((trace_id, span_id)) = RequestContext::current_ids() else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut with_ids = WithIds { out: &mut writer, prefix: Some((trace_id.to_hex(), span_id.to_hex())) };
        self.inner.format_event(ctx, Writer::new(&mut with_ids), event)
    }
}

/// Writes the ids right after the opening brace of the object.
struct WithIds<'a, 'w> {
    out: &'a mut Writer<'w>,
    prefix: Option<(crate::context::Hex<32>, crate::context::Hex<16>)>,
}

impl fmt::Write for WithIds<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        match (self.prefix.take(), s.strip_prefix('{')) {
            (Some((trace_id, span_id)), Some(rest)) => {
                write!(self.out, "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",")?;
                self.out.write_str(rest)
            }
            _ => self.out.write_str(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;
    use crate::context::TraceContext;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn log_in_and_out_of_a_call() -> TraceContext {
        let trace = TraceContext::new_root();
        tracing::info!(order_id = 7, "outside");
        RequestContext::new(None)
            .with_trace(trace.clone())
            .sync_scope(|| tracing::info!(order_id = 8, "inside"));
        trace
    }

    #[test]
    fn text_lines_inside_a_call_carry_its_ids() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .with_ansi(false)
            .event_format(Text)
            .finish();
        let trace = tracing::subscriber::with_default(subscriber, log_in_and_out_of_a_call);
        let text = buffer.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(!lines[0].contains("trace_id"), "{}", lines[0]);
        assert!(
            lines[0].ends_with(" INFO trellis::telemetry::format::tests: outside order_id=7"),
            "{}",
            lines[0]
        );
        let ids = format!(" INFO trace_id={} span_id={} ", trace.trace_id(), trace.span_id());
        assert!(lines[1].contains(&ids), "{}", lines[1]);
        assert!(lines[1].ends_with("inside order_id=8"), "{}", lines[1]);
    }

    #[test]
    fn json_lines_inside_a_call_carry_its_ids() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(JsonLines::new())
            .finish();
        let trace = tracing::subscriber::with_default(subscriber, log_in_and_out_of_a_call);
        let text = buffer.text();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!((lines[0]["message"].as_str(), lines[0].get("trace_id")), (Some("outside"), None));
        assert_eq!(lines[1]["message"], "inside");
        assert_eq!(lines[1]["order_id"], 8);
        assert_eq!(lines[1]["trace_id"], trace.trace_id().to_string());
        assert_eq!(lines[1]["span_id"], trace.span_id().to_string());
    }
}
