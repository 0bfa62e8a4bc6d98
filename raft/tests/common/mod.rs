//! A cluster of `ringkv-raft-node` child processes on loopback, for the kill test and the
//! benchmark (which includes this file by path).
#![allow(dead_code)] // each includer uses its part
#![allow(clippy::unwrap_used)] // tests and benches may unwrap

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One node: its address and directory stay the same across restarts.
pub struct NodeProc {
    pub id: u64,
    pub addr: String,
    pub dir: PathBuf,
    /// The node's last "listening on ..." line (it names the I/O backend).
    pub banner: String,
    child: Option<Child>,
}

/// A cluster of node processes, killed when dropped.
pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// `n` free ports on 127.0.0.1 (bound together, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

impl Cluster {
    /// Starts `n` nodes (ids 1..=n) of the binary `bin` with data under `root`, each with
    /// `args` added to its command line and `env` to its environment, and waits until each
    /// is listening.
    pub fn start(bin: &Path, root: &Path, n: usize, args: &[&str], env: &[(&str, &str)]) -> Cluster {
        let ports = free_ports(n);
        let nodes = (1..=n as u64)
            .zip(ports)
            .map(|(id, port)| NodeProc {
                id,
                addr: format!("127.0.0.1:{port}"),
                dir: root.join(format!("n{id}")),
                banner: String::new(),
                child: None,
            })
            .collect();
        let mut c = Cluster {
            nodes,
            bin: bin.to_path_buf(),
            args: args.iter().map(std::string::ToString::to_string).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        for i in 0..n {
            c.spawn(i);
        }
        c
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    pub fn members(&self) -> Vec<(u64, String)> {
        self.nodes.iter().map(|n| (n.id, n.addr.clone())).collect()
    }

    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Starts node `i` and waits (at most 30 s) for its "listening" line. Its stderr goes
    /// to `<dir>.log`, appended across restarts.
    pub fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "node {} is already running", node.id);
        std::fs::create_dir_all(&node.dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.with_extension("log"))
            .unwrap();
        let mut child = Command::new(&self.bin)
            .args(["--id", &node.id.to_string(), "--addr", &node.addr, "--dir"])
            .arg(&node.dir)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("listening on") {
                    let _ = tx.send(line);
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    node.banner = line;
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = child.try_wait().unwrap() {
                        panic!(
                            "node {} exited with {status} before listening; see {:?}",
                            node.id,
                            node.dir.with_extension("log")
                        );
                    }
                    assert!(Instant::now() < deadline, "node {} did not start in 30 s", node.id);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().unwrap();
                    panic!(
                        "node {} exited with {status} before listening; see {:?}",
                        node.id,
                        node.dir.with_extension("log")
                    );
                }
            }
        }
        node.child = Some(child);
    }

    /// SIGKILLs node `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        let mut child = self.nodes[i].child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut child) = n.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
