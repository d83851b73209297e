//! What systemd is told through its notify socket (`Type=notify` in the unit):
//! `READY=1` once Docker answered, the spec is loaded and the controller acts (or waits
//! as a standby), `STATUS=` lines saying what it does, `STOPPING=1` when it stops.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call does nothing; a failure to send
//! is logged and never stops the controller. The socket variable is kept in the
//! environment for the later messages; the managed HAProxy is started without it
//! (see [`crate::lb::haproxy::managed`]), so that it never speaks for the unit.

use sd_notify::NotifyState;

/// The controller is up: it drives the engine, or waits for it as a standby.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// What it does now, for `systemctl status`.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// It is shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn send(states: &[NotifyState<'_>]) {
    // Without NOTIFY_SOCKET this sends nothing and succeeds.
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %crate::report::Chain(&e), "cannot notify systemd");
    }
}
