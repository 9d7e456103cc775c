//! Another host on this machine: a network namespace joined to this one by a veth pair. To
//! every address a process sees, a service in it is remote (its peer is neither loopback
//! nor its own address), yet sightline, seeing the whole kernel, observes both ends.

use crate::procs::{require, run};
use std::process::Command;

pub struct Netns {
    pub name: String,
    /// This host's end of the link.
    pub local_ip: String,
    /// The other host's address.
    pub remote_ip: String,
}

impl Netns {
    pub fn create(name: &str, subnet: u8) -> Netns {
        require("ip");
        let n = Netns {
            name: name.to_string(),
            local_ip: format!("10.{subnet}.0.1"),
            remote_ip: format!("10.{subnet}.0.2"),
        };
        // A namespace left by an interrupted run goes first (its veth goes with it).
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        let (host_if, peer_if) = (format!("{name}-h"), format!("{name}-r"));
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), name.into()],
            vec![
                "link".into(),
                "add".into(),
                host_if.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                peer_if.clone(),
            ],
            vec![
                "link".into(),
                "set".into(),
                peer_if.clone(),
                "netns".into(),
                name.into(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{}/24", n.local_ip),
                "dev".into(),
                host_if.clone(),
            ],
            vec!["link".into(), "set".into(), host_if, "up".into()],
        ];
        for s in steps {
            run(Command::new("ip").args(&s)).unwrap_or_else(|e| panic!("ip {s:?}: {e}"));
        }
        for s in [
            vec![
                "addr",
                "add",
                &format!("{}/24", n.remote_ip),
                "dev",
                &peer_if,
            ],
            vec!["link", "set", &peer_if, "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            run(Command::new("ip")
                .args(["netns", "exec", name, "ip"])
                .args(&s))
            .unwrap_or_else(|e| panic!("ip netns exec {name} ip {s:?}: {e}"));
        }
        n
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
