//! JetStream end to end (`nats` feature): a cluster of three real
//! nats-server processes on loopback, an ingest hub (`--nats`) that answers
//! nodes only once JetStream has an image, and two dispatchers
//! (`--from-nats`) feeding real imagezmq workers. One server and one
//! dispatcher are killed with SIGKILL while images flow; every image
//! acknowledged to a node must still be processed by a worker.
#![cfg(feature = "nats")]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::images::*;
use support::*;

/// One nats-server of the cluster, JetStream on, storing under `dir`.
fn server(dir: &Path, name: &str, client: u16, cluster: u16, routes: &[u16]) -> Proc {
    let routes: Vec<String> = routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
    Proc::spawn(
        name,
        Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &client.to_string(), "-n", name, "-js", "--cluster_name", "camnode"])
            .arg("-sd")
            .arg(dir.join(name))
            .args(["--cluster", &format!("nats://127.0.0.1:{cluster}"), "--routes", &routes.join(",")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
}

#[test]
fn every_image_jetstream_acknowledged_is_processed_through_a_server_and_a_dispatcher_kill() {
    let dir = tempfile::tempdir().unwrap();
    let clients: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let clusters: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut servers: Vec<Proc> = (0..3)
        .map(|i| {
            let routes: Vec<u16> = (0..3).filter(|&j| j != i).map(|j| clusters[j]).collect();
            server(dir.path(), &format!("s{i}"), clients[i], clusters[i], &routes)
        })
        .collect();
    // JetStream takes streams once the cluster has elected its metadata leader.
    let logs: Vec<_> = servers.iter_mut().map(|s| line_channel(std::io::BufReader::new(s.child.as_mut().unwrap().stderr.take().unwrap()))).collect();
    wait_for_leader(&logs);
    let urls = clients.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let common = ["--nats-replicas", "3", "--nats-ack-wait", "3", "--worker-timeout", "1"];

    let workers = [worker(dir.path(), "w0", &["--delay", "0.005"]), worker(dir.path(), "w1", &["--delay", "0.005"])];
    let dispatcher = |worker: &Worker| {
        Proc::spawn(
            "dispatcher",
            camnode()
                .args(["-v", "hub", "--bind", &format!("tcp://127.0.0.1:{}", free_port()), "--from-nats", &urls, "--workers", &worker.address])
                .args(common),
        )
    };
    let mut dispatchers: Vec<Proc> = workers.iter().map(dispatcher).collect();
    let address = format!("tcp://127.0.0.1:{}", free_port());
    let mut ingest = Proc::spawn("ingest hub", camnode().args(["-v", "hub", "--bind", &address, "--nats", &urls]).args(common));

    let jpeg = scene_jpeg(320, 240);
    let senders: Vec<_> = ["north", "south"]
        .into_iter()
        .map(|node| {
            let (address, jpeg) = (address.clone(), jpeg.clone());
            std::thread::spawn(move || send_paced(&address, node, 150, &jpeg, Duration::from_millis(5)))
        })
        .collect();
    // Mid-run: a server goes, then a dispatcher (which of the two takes
    // more of the work is JetStream's choice).
    let both = [&workers[0], &workers[1]];
    wait_for_records(&both, 60);
    servers[1].signal(libc::SIGKILL);
    wait_for_records(&both, 150);
    dispatchers[1].signal(libc::SIGKILL);
    let acked: Vec<String> = senders.into_iter().flat_map(|s| s.join().unwrap()).collect();
    assert_eq!(acked.len(), 300);

    // The killed dispatcher's unacknowledged images come back after ack_wait, to the other one.
    let deadline = Instant::now() + LIMIT;
    loop {
        let done = processed(&both);
        let done: std::collections::HashSet<&String> = done.iter().collect();
        if acked.iter().all(|t| done.contains(t)) {
            break;
        }
        assert!(Instant::now() < deadline, "{} acknowledged images not processed", acked.iter().filter(|t| !done.contains(t)).count());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ingest.stop(LIMIT).success());
    assert!(dispatchers[0].stop(LIMIT).success());
}

/// Waits until a server's log says the cluster elected a JetStream metadata leader.
fn wait_for_leader(logs: &[std::sync::mpsc::Receiver<String>]) {
    let deadline = Instant::now() + LIMIT;
    loop {
        for log in logs {
            while let Ok(line) = log.try_recv() {
                if line.contains("JetStream cluster new metadata leader") || line.contains("Self is new JetStream cluster metadata leader") {
                    return;
                }
            }
        }
        assert!(Instant::now() < deadline, "the nats-server cluster elected no JetStream leader within {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
