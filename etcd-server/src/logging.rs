//! Logs the way etcd writes them, so that the log pipelines operators built
//! for etcd keep working:
//!
//! - `--logger zap` (etcd 3.5's default): one JSON object per line with
//!   zap's production keys, then the event's fields:
//!   `{"level":"info","ts":"2026-12-03T14:44:11.123Z","caller":"etcd_core::compactor",
//!   "msg":"starting auto periodic compaction","revision":5}`;
//! - `--logger capnslog` (etcd 3.4's default): one text line per event,
//!   `2026-12-03 14:44:11.123456 I | etcd_core::compactor: starting auto
//!   periodic compaction revision=5`;
//! - `--log-outputs`: comma-separated `default` (stderr), `stderr`,
//!   `stdout` or file paths (appended to, created if missing); every line
//!   goes to each;
//! - `--log-level` (or `RUST_LOG`, for a tracing filter).

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// `--logger`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logger {
    /// JSON lines.
    Zap,
    /// etcd 3.4's text lines.
    Capnslog,
}

/// One `--log-outputs` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Stderr,
    Stdout,
    File(std::path::PathBuf),
}

/// The log settings from the flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSettings {
    pub logger: Logger,
    /// A tracing filter directive (`info`, `debug` ...).
    pub level: String,
    pub outputs: Vec<Output>,
}

impl LogSettings {
    /// Parses `--logger`, `--log-level` and `--log-outputs`.
    pub fn parse(logger: &str, level: &str, outputs: &str) -> Result<LogSettings, String> {
        let logger = match logger {
            "zap" => Logger::Zap,
            "capnslog" => Logger::Capnslog,
            other => return Err(format!("--logger={other:?}: must be 'zap' or 'capnslog'")),
        };
        let level = match level {
            "debug" => "debug",
            "info" => "info",
            "warn" => "warn",
            "error" | "dpanic" | "panic" | "fatal" => "error",
            other => {
                return Err(format!(
                    "--log-level={other:?}: must be one of debug, info, warn, error, panic, fatal"
                ))
            }
        };
        let mut outs = Vec::new();
        for o in outputs.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            outs.push(match o {
                "default" | "stderr" => Output::Stderr,
                "stdout" => Output::Stdout,
                "systemd/journal" => {
                    return Err(
                        "--log-outputs=systemd/journal is not supported; use stderr (journald \
                         captures a unit's stderr)"
                            .into(),
                    )
                }
                path => Output::File(path.into()),
            });
        }
        if outs.is_empty() {
            outs.push(Output::Stderr);
        }
        Ok(LogSettings {
            logger,
            level: level.into(),
            outputs: outs,
        })
    }

    /// Installs the global subscriber.
    pub fn init(&self) -> Result<(), String> {
        let mut sinks: Vec<Sink> = Vec::new();
        for o in &self.outputs {
            sinks.push(match o {
                Output::Stderr => Sink::Stderr,
                Output::Stdout => Sink::Stdout,
                Output::File(p) => {
                    let f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .map_err(|e| format!("--log-outputs {}: {e}", p.display()))?;
                    Sink::File(Arc::new(parking_lot::Mutex::new(f)))
                }
            });
        }
        let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&self.level));
        let writer = Sinks(Arc::new(sinks));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(writer)
            .event_format(EtcdFormat(self.logger))
            .try_init()
            .map_err(|e| format!("cannot install the logger: {e}"))
    }
}

#[derive(Clone)]
enum Sink {
    Stderr,
    Stdout,
    File(Arc<parking_lot::Mutex<std::fs::File>>),
}

/// Every output; a line is written to each in one call.
#[derive(Clone)]
struct Sinks(Arc<Vec<Sink>>);

/// Buffers one formatted event, written out to every sink when dropped.
struct Line(Arc<Vec<Sink>>, Vec<u8>);

impl std::io::Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.1.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        for s in self.0.iter() {
            // A log line that cannot be written has nowhere to be reported.
            let _ = match s {
                Sink::Stderr => std::io::stderr().write_all(&self.1),
                Sink::Stdout => std::io::stdout().write_all(&self.1),
                Sink::File(f) => f.lock().write_all(&self.1),
            };
        }
    }
}

impl<'a> MakeWriter<'a> for Sinks {
    type Writer = Line;
    fn make_writer(&'a self) -> Line {
        Line(self.0.clone(), Vec::with_capacity(256))
    }
}

/// Collects an event's message and fields.
#[derive(Default)]
struct Fields {
    msg: String,
    /// (name, JSON value).
    fields: Vec<(String, serde_json::Value)>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.msg = text;
        } else {
            self.fields
                .push((field.name().to_string(), serde_json::Value::String(text)));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_string();
        } else {
            self.fields
                .push((field.name().to_string(), value.to_string().into()));
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.push((field.name().to_string(), value.into()));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.push((field.name().to_string(), value.into()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.push((field.name().to_string(), value.into()));
    }
}

/// `2026-12-03`.
fn date(t: &time::OffsetDateTime) -> String {
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

/// `14:48:19` (UTC).
fn clock(t: &time::OffsetDateTime) -> String {
    format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())
}

/// etcd's line formats (see the module doc).
struct EtcdFormat(Logger);

impl<S, N> FormatEvent<S, N> for EtcdFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut f = Fields::default();
        event.record(&mut f);
        let meta = event.metadata();
        let now = time::OffsetDateTime::now_utc();
        match self.0 {
            Logger::Zap => {
                let level = match *meta.level() {
                    Level::ERROR => "error",
                    Level::WARN => "warn",
                    Level::INFO => "info",
                    _ => "debug",
                };
                let ts = format!("{}T{}.{:03}Z", date(&now), clock(&now), now.millisecond());
                // zap's key order: level, ts, caller, msg, then the fields.
                let s = |v: &str| serde_json::Value::from(v).to_string();
                let mut line = format!(
                    "{{\"level\":\"{level}\",\"ts\":\"{ts}\",\"caller\":{},\"msg\":{}",
                    s(meta.target()),
                    s(&f.msg)
                );
                for (k, v) in f.fields {
                    write!(line, ",{}:{v}", s(&k.replace('_', "-")))?;
                }
                writeln!(w, "{line}}}")
            }
            Logger::Capnslog => {
                let level = match *meta.level() {
                    Level::ERROR => 'E',
                    Level::WARN => 'W',
                    Level::INFO => 'I',
                    _ => 'D',
                };
                let mut line = format!(
                    "{} {}.{:06} {level} | {}: {}",
                    date(&now),
                    clock(&now),
                    now.microsecond(),
                    meta.target(),
                    f.msg
                );
                for (k, v) in f.fields {
                    match v {
                        serde_json::Value::String(s) => write!(line, " {k}={s}")?,
                        v => write!(line, " {k}={v}")?,
                    }
                }
                writeln!(w, "{line}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_etcd_log_flags() {
        let s = LogSettings::parse("zap", "info", "default").unwrap();
        assert_eq!((s.logger, s.outputs), (Logger::Zap, vec![Output::Stderr]));
        let s = LogSettings::parse("capnslog", "panic", "stdout,/var/log/etcd.log").unwrap();
        assert_eq!(s.logger, Logger::Capnslog);
        assert_eq!(s.level, "error");
        assert_eq!(
            s.outputs,
            vec![Output::Stdout, Output::File("/var/log/etcd.log".into())]
        );
        assert!(LogSettings::parse("glog", "info", "default").is_err());
        assert!(LogSettings::parse("zap", "loud", "default").is_err());
        assert!(LogSettings::parse("zap", "info", "systemd/journal").is_err());
    }
}
