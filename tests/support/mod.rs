//! Shared helpers for the integration tests: run the real `camnode` binary,
//! find free ports, wait for processes with a time limit, get the Python
//! interpreter that has the real imagezmq installed, and put a
//! fault-injecting proxy between a node and its hub ([`proxy`]).
#![allow(dead_code)] // each test binary uses its own subset

pub mod images;
pub mod proxy;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

/// The `camnode` binary under test. Each command gets a spool directory of
/// its own through CAMNODE_SPOOL (a `--spool` flag wins), so no run delivers
/// what another test left behind, and none writes to /var/lib/camnode.
pub fn camnode() -> Command {
    static COMMANDS: AtomicU32 = AtomicU32::new(0);
    let n = COMMANDS.fetch_add(1, Ordering::Relaxed);
    let spool = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("spool-{}-{n}", std::process::id()));
    let mut command = Command::new(env!("CARGO_BIN_EXE_camnode"));
    command.env("CAMNODE_SPOOL", spool);
    command
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process that is killed if the test ends early.
pub struct Proc {
    pub child: Option<Child>,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, command: &mut Command) -> Proc {
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { child: Some(child), name: name.into() }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Takes the stdout pipe (the command must have had `Stdio::piped()`).
    pub fn stdout(&mut self) -> BufReader<ChildStdout> {
        BufReader::new(self.child.as_mut().unwrap().stdout.take().expect("stdout was not piped"))
    }

    /// Waits for exit, failing the test after `limit`.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("already waited");
        let (tx, rx) = mpsc::channel();
        let pid = child.id();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(limit) {
            Ok(status) => status.unwrap(),
            Err(_) => {
                // SAFETY: plain kill(2) on a pid we started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                panic!("{} did not exit within {limit:?}", self.name)
            }
        }
    }

    /// Stops a hub (or any process that exits cleanly on SIGTERM) once its
    /// peer is done, rather than after an idle time that a slow start, as
    /// under qemu, can outlast before the first message.
    pub fn stop(&mut self, limit: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(limit)
    }

    /// Sends a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on a pid we started.
        unsafe { libc::kill(self.pid() as i32, signal) };
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a command to completion within `limit`, returning its output. One
/// that does not finish is killed, and what it wrote so far goes into the
/// failure, so that a hang says where it stopped.
pub fn run_to_end(name: &str, command: &mut Command, limit: Duration) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            // SAFETY: plain kill(2) on a pid we started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let said = match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(output)) => format!(
                    "stdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
                _ => "(its output could not be read)".into(),
            };
            panic!("{name} did not finish within {limit:?}; {said}")
        }
    }
}

/// Reads lines from `reader` until one starts with `prefix`; returns it.
pub fn wait_for_line(reader: &mut impl BufRead, prefix: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("output ended before a line starting with {prefix:?}");
        }
        if line.starts_with(prefix) {
            return line.trim_end().to_string();
        }
    }
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python interpreter of the interop venv (scripts/python-env.sh makes it
/// once and caches it), with the real imagezmq, pyzmq, numpy and OpenCV.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let output = Command::new("bash")
                .arg(repo_root().join("scripts/python-env.sh"))
                .stderr(Stdio::inherit())
                .output()
                .unwrap();
            assert!(output.status.success(), "scripts/python-env.sh failed: run it by hand to see why");
            let path = String::from_utf8(output.stdout).unwrap();
            PathBuf::from(path.lines().last().expect("python-env.sh printed no path").trim())
        })
        .clone()
}

/// Forwards a child's output lines to a channel, so a test can wait for a
/// line with a time limit instead of sleeping.
pub fn line_channel(reader: impl BufRead + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits up to `limit` for a line containing `needle`.
pub fn expect_line(lines: &mpsc::Receiver<String>, needle: &str, limit: Duration) -> String {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => continue,
            Err(_) => panic!("no line containing {needle:?} within {limit:?}"),
        }
    }
}
