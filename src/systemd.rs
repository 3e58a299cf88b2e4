//! Talking to systemd: readiness, watchdog keep-alives and shutdown notices.
//!
//! The unit runs camnode as `Type=notify` with `WatchdogSec=`, so systemd
//! considers the node started only once the camera delivers (READY=1) and
//! restarts it when the keep-alives (WATCHDOG=1) stop. The keep-alives are
//! sent from the frame path, never from a timer thread: a wedged camera or a
//! stuck pipeline then stops them, which is exactly the failure the watchdog
//! is there to catch. [`Notifier::keepalive`] spaces them at half the
//! watchdog interval, as sd_watchdog_enabled(3) recommends, so calling it for
//! every frame costs a clock read.
//!
//! The protocol (sd_notify(3)) is one `KEY=VALUE` datagram to the unix socket
//! named by `$NOTIFY_SOCKET`: a filesystem path, or an abstract-namespace name
//! when it starts with `@`. That is small enough to speak directly over
//! std's `UnixDatagram` instead of linking libsystemd or adding a crate. Run
//! outside systemd (no `$NOTIFY_SOCKET`), every call is a no-op.

use std::env;
use std::ffi::OsString;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A state change reported to the service manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notify {
    /// Start-up finished: the camera delivers frames and the transport is up.
    Ready,
    /// Keep-alive: frames are flowing. Resets the `WatchdogSec=` timer.
    Watchdog,
    /// Shutdown began, so systemd does not mistake the exit for a crash.
    Stopping,
}

impl Notify {
    fn message(self) -> &'static str {
        match self {
            Notify::Ready => "READY=1",
            Notify::Watchdog => "WATCHDOG=1",
            Notify::Stopping => "STOPPING=1",
        }
    }
}

/// The connection to systemd's notification socket, if there is one.
#[derive(Debug)]
pub struct Notifier {
    /// Unbound socket and the manager's address; `None` when not run by
    /// systemd with `Type=notify`.
    target: Option<(UnixDatagram, SocketAddr)>,
    /// `WatchdogSec=` of the unit, when the watchdog is armed for this process.
    watchdog: Option<Duration>,
    /// When the last keep-alive went out; `None` until the first one.
    last_keepalive: Option<Instant>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID` as set by
    /// systemd for the service's main process.
    pub fn from_env() -> Result<Notifier> {
        let var = |name: &str| env::var_os(name);
        Notifier::from_vars(
            var("NOTIFY_SOCKET"),
            var("WATCHDOG_USEC"),
            var("WATCHDOG_PID"),
            std::process::id(),
        )
    }

    /// The parsing behind [`Notifier::from_env`], with the environment and
    /// our pid passed in so tests need not mutate the process environment.
    fn from_vars(
        notify_socket: Option<OsString>,
        watchdog_usec: Option<OsString>,
        watchdog_pid: Option<OsString>,
        own_pid: u32,
    ) -> Result<Notifier> {
        let target = match notify_socket.filter(|s| !s.is_empty()) {
            None => None,
            Some(name) => {
                let addr = socket_addr(&name)?;
                let socket = UnixDatagram::unbound()
                    .context("cannot create a unix datagram socket for $NOTIFY_SOCKET")?;
                // A systemd that reads slowly must never stall capture: a
                // full socket queue drops the notification instead.
                socket.set_nonblocking(true)?;
                Some((socket, addr))
            }
        };
        let watchdog = watchdog_interval(watchdog_usec, watchdog_pid, own_pid)?;
        Ok(Notifier {
            target,
            watchdog,
            last_keepalive: None,
        })
    }

    /// True when a service manager listens, i.e. notifications go somewhere.
    /// A notifier that says nothing, for when the environment is unusable.
    pub fn disabled() -> Notifier {
        Notifier { target: None, watchdog: None, last_keepalive: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The unit's `WatchdogSec=`, if the watchdog is armed for this process.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one notification; a no-op outside systemd.
    pub fn notify(&self, state: Notify) -> Result<()> {
        let Some((socket, addr)) = &self.target else {
            return Ok(());
        };
        let message = state.message();
        // A datagram goes out whole or not at all, so the count says nothing.
        socket
            .send_to_addr(message.as_bytes(), addr)
            .with_context(|| format!("cannot send {message} to systemd over $NOTIFY_SOCKET"))?;
        Ok(())
    }

    /// Call for every frame that made it through the pipeline: sends
    /// WATCHDOG=1 when half the watchdog interval has passed since the last
    /// one (and on the first call), otherwise does nothing. `now` is passed in
    /// so the caller's frame timestamp can be reused.
    pub fn keepalive(&mut self, now: Instant) -> Result<()> {
        let Some(interval) = self.watchdog else {
            return Ok(());
        };
        let due = match self.last_keepalive {
            None => true,
            Some(last) => now.saturating_duration_since(last) >= interval / 2,
        };
        if due {
            self.notify(Notify::Watchdog)?;
            self.last_keepalive = Some(now);
        }
        Ok(())
    }
}

/// Turns `$NOTIFY_SOCKET` into an address: `@name` is Linux's abstract
/// namespace, anything else must be an absolute path.
fn socket_addr(name: &OsString) -> Result<SocketAddr> {
    let bytes = name.as_bytes();
    if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        return SocketAddr::from_abstract_name(abstract_name).with_context(|| {
            format!("NOTIFY_SOCKET={name:?} is not a valid abstract socket name")
        });
    }
    if !bytes.starts_with(b"/") {
        bail!(
            "NOTIFY_SOCKET={name:?} is neither an absolute path nor an @abstract name; \
             unset it when not running under systemd"
        );
    }
    SocketAddr::from_pathname(name)
        .with_context(|| format!("NOTIFY_SOCKET={name:?} is not a usable socket path (too long?)"))
}

/// The watchdog interval, following sd_watchdog_enabled(3): `$WATCHDOG_USEC`
/// arms it, and `$WATCHDOG_PID`, when set, must name this process (a child
/// that inherited the environment must not feed its parent's watchdog).
fn watchdog_interval(
    usec: Option<OsString>,
    pid: Option<OsString>,
    own_pid: u32,
) -> Result<Option<Duration>> {
    let Some(usec) = usec.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if let Some(pid) = pid.filter(|s| !s.is_empty()) {
        let pid: u32 = parse_env("WATCHDOG_PID", &pid)?;
        if pid != own_pid {
            return Ok(None);
        }
    }
    let usec: u64 = parse_env("WATCHDOG_USEC", &usec)?;
    if usec == 0 {
        bail!("WATCHDOG_USEC=0 is not a watchdog interval; set WatchdogSec= in the unit to a positive value or remove it");
    }
    Ok(Some(Duration::from_micros(usec)))
}

fn parse_env<T: std::str::FromStr>(name: &str, value: &OsString) -> Result<T> {
    value
        .to_str()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{name}={value:?} is not a decimal number as systemd sets it"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::path::Path;

    fn notifier(socket_path: &Path, watchdog: Option<Duration>) -> Notifier {
        let usec = watchdog.map(|w| OsString::from(w.as_micros().to_string()));
        Notifier::from_vars(Some(socket_path.as_os_str().to_owned()), usec, None, 1).unwrap()
    }

    /// A stand-in for systemd's end of the socket: a bound datagram socket
    /// in a fresh directory.
    struct Manager {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        socket: UnixDatagram,
    }

    impl Manager {
        fn new() -> Manager {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("notify");
            let socket = UnixDatagram::bind(&path).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            Manager {
                _dir: dir,
                path,
                socket,
            }
        }

        fn recv(&self) -> String {
            let mut buf = [0u8; 256];
            let n = self.socket.recv(&mut buf).unwrap();
            String::from_utf8(buf[..n].to_vec()).unwrap()
        }

        /// True when no datagram is queued: the receive would block.
        fn is_empty(&self) -> bool {
            self.socket.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 256];
            let empty = matches!(self.socket.recv(&mut buf), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
            self.socket.set_nonblocking(false).unwrap();
            empty
        }
    }

    #[test]
    fn sends_each_state_as_one_datagram() {
        let manager = Manager::new();
        let notifier = notifier(&manager.path, None);
        assert!(notifier.is_enabled());
        notifier.notify(Notify::Ready).unwrap();
        notifier.notify(Notify::Watchdog).unwrap();
        notifier.notify(Notify::Stopping).unwrap();
        assert_eq!(manager.recv(), "READY=1");
        assert_eq!(manager.recv(), "WATCHDOG=1");
        assert_eq!(manager.recv(), "STOPPING=1");
        assert!(manager.is_empty());
    }

    #[test]
    fn reaches_an_abstract_socket() {
        let name = format!(
            "camnode-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let manager = UnixDatagram::bind_addr(&addr).unwrap();
        manager
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let notifier = Notifier::from_vars(Some(format!("@{name}").into()), None, None, 1).unwrap();
        notifier.notify(Notify::Ready).unwrap();
        let mut buf = [0u8; 64];
        let n = manager.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn without_notify_socket_everything_is_a_no_op() {
        let mut notifier = Notifier::from_vars(None, Some("1000000".into()), None, 1).unwrap();
        assert!(!notifier.is_enabled());
        notifier.notify(Notify::Ready).unwrap();
        notifier.keepalive(Instant::now()).unwrap();
        // An empty variable is how a parent "unsets" it for children.
        assert!(!Notifier::from_vars(Some("".into()), None, None, 1)
            .unwrap()
            .is_enabled());
    }

    #[test]
    fn a_vanished_manager_is_an_error_naming_the_socket() {
        let manager = Manager::new();
        let notifier = notifier(&manager.path, None);
        drop(manager);
        let err = format!("{:#}", notifier.notify(Notify::Ready).unwrap_err());
        assert!(
            err.contains("READY") && err.contains("NOTIFY_SOCKET"),
            "{err}"
        );
    }

    #[test]
    fn keepalives_are_spaced_at_half_the_watchdog_interval() {
        let manager = Manager::new();
        let mut notifier = notifier(&manager.path, Some(Duration::from_secs(10)));
        assert_eq!(notifier.watchdog(), Some(Duration::from_secs(10)));
        let t0 = Instant::now();
        notifier.keepalive(t0).unwrap();
        assert_eq!(manager.recv(), "WATCHDOG=1");
        notifier
            .keepalive(t0 + Duration::from_millis(4_999))
            .unwrap();
        assert!(
            manager.is_empty(),
            "keep-alive sent before half the interval"
        );
        notifier.keepalive(t0 + Duration::from_secs(5)).unwrap();
        assert_eq!(manager.recv(), "WATCHDOG=1");
        // The next one counts from the last send, not from the start.
        notifier.keepalive(t0 + Duration::from_secs(9)).unwrap();
        assert!(manager.is_empty());
        notifier.keepalive(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(manager.recv(), "WATCHDOG=1");
    }

    #[test]
    fn keepalive_without_watchdog_sends_nothing() {
        let manager = Manager::new();
        let mut notifier = notifier(&manager.path, None);
        notifier.keepalive(Instant::now()).unwrap();
        assert!(manager.is_empty());
    }

    #[test]
    fn watchdog_follows_watchdog_pid() {
        let usec = || Some(OsString::from("30000000"));
        let mine = watchdog_interval(usec(), Some("42".into()), 42).unwrap();
        assert_eq!(mine, Some(Duration::from_secs(30)));
        assert_eq!(
            watchdog_interval(usec(), Some("41".into()), 42).unwrap(),
            None
        );
        assert_eq!(
            watchdog_interval(usec(), None, 42).unwrap(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_interval(None, Some("42".into()), 42).unwrap(),
            None
        );
    }

    #[test]
    fn malformed_variables_are_reported_by_name() {
        let err = |r: Result<Option<Duration>>| format!("{:#}", r.unwrap_err());
        assert!(
            err(watchdog_interval(Some("30s".into()), None, 1)).contains("WATCHDOG_USEC=\"30s\"")
        );
        assert!(err(watchdog_interval(Some("0".into()), None, 1)).contains("WatchdogSec="));
        assert!(
            err(watchdog_interval(Some("1".into()), Some("x".into()), 1)).contains("WATCHDOG_PID")
        );
        let relative = Notifier::from_vars(Some("run/notify".into()), None, None, 1).unwrap_err();
        assert!(format!("{relative:#}").contains("NOTIFY_SOCKET=\"run/notify\""));
    }
}
