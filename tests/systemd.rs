//! The real binary under a simulated systemd: it says READY once frames flow,
//! sends watchdog keep-alives while they do, and STOPPING at the end.

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use support::*;

#[test]
fn notifies_ready_keepalives_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    systemd.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // Read as systemd does, while the node runs: the socket queue is short.
    let reader = std::thread::spawn(move || {
        let mut messages = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = systemd.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = message == "STOPPING=1";
            messages.push(message);
            if done {
                break;
            }
        }
        messages
    });
    let port = free_port();
    let mut hub = Proc::spawn("camnode hub", camnode().args(["hub", "--bind", &format!("tcp://127.0.0.1:{port}")]));
    let node = run_to_end(
        "camnode run",
        camnode()
            .args(["run", "--source", "synthetic:160x120", "--rate", "50", "--frames", "60"])
            .args(["--hub", &format!("tcp://127.0.0.1:{port}")])
            .env("NOTIFY_SOCKET", &socket_path)
            // A 200 ms watchdog: keep-alives at most every 100 ms, over a 1.2 s run.
            .env("WATCHDOG_USEC", "200000"),
        Duration::from_secs(60),
    );
    assert!(node.status.success(), "{}", String::from_utf8_lossy(&node.stderr));
    hub.stop(Duration::from_secs(30));
    let messages = reader.join().unwrap();
    assert_eq!(messages.last().map(String::as_str), Some("STOPPING=1"), "{messages:?}");
    assert_eq!(messages[0], "READY=1", "{messages:?}");
    let keepalives = messages.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!((5..=20).contains(&keepalives), "{keepalives} keep-alives in {messages:?}");
}
