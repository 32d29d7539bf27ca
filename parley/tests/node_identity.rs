//! A node refuses data written under another node id or shard count,
//! because ids hash to shards by the count and votes belong to one node.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

fn free_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("bound address").to_string()
}

fn node_command(data_dir: &std::path::Path, id: u32, shards: u32, peers: &[String]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_parley"));
    command
        .arg("node")
        .arg("--id")
        .arg(id.to_string())
        .arg("--listen")
        .arg(&peers[id as usize - 1])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--shards")
        .arg(shards.to_string());
    for (index, address) in peers.iter().enumerate() {
        command
            .arg("--peer")
            .arg(format!("{}={address}", index + 1));
    }
    command.stdout(Stdio::null()).stderr(Stdio::piped());
    command
}

#[test]
fn node_rejects_data_of_other_shard_count_or_id() {
    let temp = tempfile::tempdir().expect("temporary directory");
    let data_dir = temp.path().join("node1");
    let peers: Vec<String> = (0..3).map(|_| free_address()).collect();

    let mut first = node_command(&data_dir, 1, 8, &peers)
        .spawn()
        .expect("spawn node");
    for _ in 0..100 {
        if data_dir.join("sled").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = first.kill();
    let _ = first.wait();
    assert!(
        data_dir.join("node-identity").exists(),
        "the first start records the node identity"
    );

    let other_count = node_command(&data_dir, 1, 16, &peers)
        .output()
        .expect("run node");
    let stderr = String::from_utf8_lossy(&other_count.stderr);
    assert!(
        !other_count.status.success(),
        "a changed shard count must not start: {stderr}"
    );
    assert!(
        stderr.contains("shard_count=8"),
        "the error names the recorded count: {stderr}"
    );
    assert!(
        stderr.contains("shard_count=16"),
        "the error names the requested count: {stderr}"
    );

    let other_id = node_command(&data_dir, 2, 8, &peers)
        .output()
        .expect("run node");
    let stderr = String::from_utf8_lossy(&other_id.stderr);
    assert!(
        !other_id.status.success(),
        "another node id must not start: {stderr}"
    );
    assert!(
        stderr.contains("node_id=1"),
        "the error names the recorded id: {stderr}"
    );
}

#[test]
fn node_rejects_data_of_older_log_format() {
    let temp = tempfile::tempdir().expect("temporary directory");
    let data_dir = temp.path().join("node1");
    std::fs::create_dir_all(&data_dir).expect("create data directory");
    // Data written before the log format was recorded: one command per entry.
    std::fs::write(data_dir.join("node-identity"), "node_id=1\nshard_count=8\n")
        .expect("write identity");
    let peers: Vec<String> = (0..3).map(|_| free_address()).collect();

    let output = node_command(&data_dir, 1, 8, &peers)
        .output()
        .expect("run node");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a log in an older format must not start: {stderr}"
    );
    assert!(
        stderr.contains("format 1"),
        "the error names the recorded format: {stderr}"
    );
    assert!(
        stderr.contains("empty --data-dir"),
        "the error says how to start fresh: {stderr}"
    );
}
