//! The `parley-bench` binary rejects invalid flags and missing binaries
//! with an error that names the value and the fix, before it starts any
//! server.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_parley-bench"))
        .args(args)
        .output()
        .expect("run parley-bench");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), stderr)
}

#[test]
fn zero_senders_is_rejected() {
    let (code, stderr) = run(&["run", "--senders", "0"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--senders 0 is invalid"), "{stderr}");
}

#[test]
fn missing_parley_binary_names_the_build_command() {
    let (code, stderr) = run(&["smoke", "--parley-bin", "/nonexistent/parley"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("/nonexistent/parley"), "{stderr}");
    assert!(
        stderr.contains("cargo build --release -p parley"),
        "{stderr}"
    );
}

#[test]
fn missing_etcd_binary_names_the_package() {
    // Any existing file passes the parley binary check, which runs first.
    let parley = env!("CARGO_BIN_EXE_parley-bench");
    let (code, stderr) = run(&[
        "run",
        "--parley-bin",
        parley,
        "--systems",
        "etcd",
        "--scenarios",
        "appends",
        "--etcd-bin",
        "/nonexistent/etcd",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--etcd-bin /nonexistent/etcd"), "{stderr}");
    assert!(stderr.contains("apt-get install etcd-server"), "{stderr}");
}
