//! Logs go to stderr (the journal, under systemd) as text or JSON. The filter is
//! `RUST_LOG` when set, else `--log-level`; it can be replaced while the agent runs
//! (SIGHUP with a new `log-level`).

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

/// Changes the log filter of the running process.
#[derive(Debug)]
pub(crate) struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    /// RUST_LOG was set: it wins over `log-level`, now and on reload.
    rust_log: bool,
}

impl LogControl {
    /// Use `level` from now on, unless RUST_LOG is set.
    pub(crate) fn set_level(&self, level: &str) -> Result<(), String> {
        if self.rust_log {
            return Err("RUST_LOG is set, and it wins over log-level".into());
        }
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }
}

/// Install the subscriber; `format` is `text` or `json`.
pub(crate) fn init(level: &str, format: &str) -> LogControl {
    let from_env = EnvFilter::try_from_default_env().ok();
    let rust_log = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    if format == "json" {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .init();
    } else {
        registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    // No colour codes in a service's journal or a redirected log file.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .init();
    }
    LogControl { handle, rust_log }
}
