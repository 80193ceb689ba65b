//! `/v1/agent/monitor`: the agent's log lines as they are written, streamed to the client until
//! it goes away, at its `loglevel` and above (`logjson`: one JSON object per line, Consul's
//! `@level`/`@message`/`@module`/`@timestamp`). A tracing layer copies each event into a
//! broadcast channel, formatting it only while someone is listening; a listener that falls behind
//! skips lines (and is told how many) rather than slowing the agent down.

use std::sync::OnceLock;

use bytes::Bytes;
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Lines a slow listener may fall behind before it skips.
const BACKLOG: usize = 1024;

#[derive(Debug, Clone)]
pub struct Line {
    pub level: Level,
    pub module: String,
    pub message: String,
    pub timestamp: String,
}

fn tap() -> &'static broadcast::Sender<Line> {
    static TAP: OnceLock<broadcast::Sender<Line>> = OnceLock::new();
    TAP.get_or_init(|| broadcast::channel(BACKLOG).0)
}

/// The layer to add to the process's subscriber.
pub fn layer() -> MonitorLayer {
    MonitorLayer
}

pub struct MonitorLayer;

struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.rest.push_str(&format!(" {}={value:?}", field.name()));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.rest.push_str(&format!(" {}={value}", field.name()));
        }
    }
}

impl<S: Subscriber> Layer<S> for MonitorLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let tap = tap();
        if tap.receiver_count() == 0 {
            return;
        }
        let mut fields = Fields { message: String::new(), rest: String::new() };
        event.record(&mut fields);
        let meta = event.metadata();
        let _ = tap.send(Line {
            level: *meta.level(),
            module: meta.target().to_string(),
            message: format!("{}{}", fields.message, fields.rest),
            timestamp: timestamp(),
        });
    }
}

fn timestamp() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Consul's level names (`err` and `error` alike) to tracing's; None for an unknown one.
pub fn parse_level(name: &str) -> Option<Level> {
    match name.to_ascii_lowercase().as_str() {
        "trace" => Some(Level::TRACE),
        "debug" => Some(Level::DEBUG),
        "info" => Some(Level::INFO),
        "warn" => Some(Level::WARN),
        "err" | "error" => Some(Level::ERROR),
        _ => None,
    }
}

/// One line as the client reads it.
pub fn render(line: &Line, json: bool) -> String {
    if json {
        let level = line.level.as_str().to_ascii_lowercase();
        let obj = serde_json::json!({
            "@level": level, "@message": line.message, "@module": line.module, "@timestamp": line.timestamp,
        });
        format!("{obj}\n")
    } else {
        format!("{} [{}] {}: {}\n", line.timestamp, line.level, line.module, line.message)
    }
}

/// The lines from now on at `level` and above, as body chunks; ends when the channel closes.
pub fn lines(level: Level, json: bool) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    let rx = tap().subscribe();
    futures::stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await {
                // tracing orders levels by verbosity: ERROR < WARN < ... < TRACE.
                Ok(line) if line.level <= level => return Some((Ok(Bytes::from(render(&line, json))), rx)),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let note = format!("[monitor] {n} log lines skipped: the client read too slowly\n");
                    return Some((Ok(Bytes::from(note)), rx));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tracing_subscriber::layer::SubscriberExt;

    #[tokio::test]
    async fn lines_at_the_asked_level_and_above_reach_a_listener() {
        let subscriber = tracing_subscriber::registry().with(layer());
        let mut stream = Box::pin(lines(Level::INFO, false));
        let mut json = Box::pin(lines(Level::WARN, true));
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!("too verbose");
            tracing::info!(node = "web-1", "member alive");
            tracing::warn!("disk almost full");
        });
        let first = String::from_utf8(stream.next().await.expect("a line").expect("ok").to_vec()).expect("utf8");
        assert!(first.contains("[INFO]") && first.contains("member alive node=web-1"), "{first}");
        let second = String::from_utf8(stream.next().await.expect("a line").expect("ok").to_vec()).expect("utf8");
        assert!(second.contains("[WARN]") && second.contains("disk almost full"), "{second}");
        let line: serde_json::Value =
            serde_json::from_slice(&json.next().await.expect("a line").expect("ok")).expect("json");
        assert_eq!((line["@level"].as_str(), line["@message"].as_str()), (Some("warn"), Some("disk almost full")));
        assert_eq!(parse_level("ERR"), Some(Level::ERROR));
        assert_eq!(parse_level("loud"), None);
    }
}
