//! Test hosts in network namespaces made by the test itself (as root): a hub
//! namespace for the coordinator and registry, and one namespace per agent joined to
//! the hub by a veth pair. Links can be cut and restored to test network faults.
//! Everything is removed when the [`Lab`] is dropped.

use std::path::Path;
use std::process::Command;

/// A set of namespaces for one test.
#[derive(Debug)]
pub struct Lab {
    pub hub: String,
    prefix: String,
    hosts: Vec<Host>,
}

/// One agent host: its namespace, and the hub's address as it sees it.
#[derive(Debug, Clone)]
pub struct Host {
    pub ns: String,
    /// The hub's address on this host's link.
    pub hub_ip: String,
    link: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (apt-get install iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    /// A hub namespace; `hosts` agent namespaces each linked to it.
    pub fn new(hosts: usize) -> Lab {
        assert!(hosts < 200);
        // Short unique names (interface names are limited to 15 bytes).
        let tag = format!(
            "{:x}",
            (std::process::id() as u64) << 16 ^ u64::from(rand_u16())
        );
        let prefix = format!("hx{tag}");
        let hub = format!("{prefix}h");
        let mut lab = Lab {
            hub: hub.clone(),
            prefix: prefix.clone(),
            hosts: Vec::new(),
        };
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "set", "lo", "up"]);
        for n in 1..=hosts {
            let ns = format!("{prefix}a{n}");
            let hub_end = format!("{prefix}h{n}");
            let host_end = format!("{prefix}a{n}");
            ip(&["netns", "add", &ns]);
            lab.hosts.push(Host {
                ns: ns.clone(),
                hub_ip: format!("10.213.{n}.1"),
                link: host_end.clone(),
            });
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n", &hub, "link", "add", &hub_end, "type", "veth", "peer", "name", &host_end,
                "netns", &ns,
            ]);
            ip(&[
                "-n",
                &hub,
                "addr",
                "add",
                &format!("10.213.{n}.1/24"),
                "dev",
                &hub_end,
            ]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.213.{n}.2/24"),
                "dev",
                &host_end,
            ]);
            ip(&["-n", &hub, "link", "set", &hub_end, "up"]);
            ip(&["-n", &ns, "link", "set", &host_end, "up"]);
            // Every hub address is reachable from every host through its own link.
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "10.213.0.0/16",
                "via",
                &format!("10.213.{n}.1"),
            ]);
        }
        lab
    }

    pub fn host(&self, n: usize) -> &Host {
        &self.hosts[n - 1]
    }

    /// Cut host `n`'s link (both directions), as a pulled cable would.
    pub fn cut(&self, n: usize) {
        let h = self.host(n);
        ip(&["-n", &h.ns, "link", "set", &h.link, "down"]);
    }

    /// Restore host `n`'s link.
    pub fn restore(&self, n: usize) {
        let h = self.host(n);
        ip(&["-n", &h.ns, "link", "set", &h.link, "up"]);
        // The address route comes back with the link; the /16 route must be re-added.
        // It may still be there ("File exists"); any other failure would leave the
        // host without a route to the hub, so it is one.
        let args = [
            "-n",
            &h.ns,
            "route",
            "add",
            "10.213.0.0/16",
            "via",
            &h.hub_ip,
        ];
        let out = Command::new("ip")
            .args(args)
            .output()
            .expect("run ip (apt-get install iproute2)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || stderr.contains("File exists"),
            "ip {args:?} failed: {stderr}"
        );
    }

    /// `program args` inside namespace `ns`, as (program, args) for [`crate::Proc`].
    pub fn wrap(ns: &str, program: &Path, args: &[String]) -> (std::path::PathBuf, Vec<String>) {
        let mut all = vec![
            "netns".to_string(),
            "exec".to_string(),
            ns.to_string(),
            program.display().to_string(),
        ];
        all.extend(args.iter().cloned());
        ("ip".into(), all)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub])
            .output();
    }
}

fn rand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ (nanos >> 16)) as u16
}
