//! A `log` backend that writes to syslog, for a mount running in the background (no
//! terminal to print to). A few lines of libc; no crate needed.

use std::ffi::CString;

struct Syslog;

static LOGGER: Syslog = Syslog;

impl log::Log for Syslog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let priority = match record.level() {
            log::Level::Error => libc::LOG_ERR,
            log::Level::Warn => libc::LOG_WARNING,
            log::Level::Info => libc::LOG_INFO,
            log::Level::Debug | log::Level::Trace => libc::LOG_DEBUG,
        };
        let text = format!("{}", record.args()).replace('\0', " ");
        if let Ok(msg) = CString::new(text) {
            // SAFETY: both strings are NUL-terminated; "%s" keeps the message from being
            // read as a format string.
            unsafe { libc::syslog(priority, c"%s".as_ptr(), msg.as_ptr()) };
        }
    }

    fn flush(&self) {}
}

/// Sends this process's log records to syslog (facility daemon, tagged "kmsfs").
pub fn init(level: log::LevelFilter) {
    // SAFETY: the ident is a static string, as openlog requires.
    unsafe { libc::openlog(c"kmsfs".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
