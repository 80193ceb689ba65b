//! Several datacenters of real `roster server` processes, each server in a network namespace of its
//! own ([`crate::netns`]), every server in one WAN pool (dc1 is the primary). A WAN partition cuts
//! every link between two datacenters while each datacenter's own links stay, as a broken link
//! between two sites would. Everything started here is killed on drop, then the namespaces deleted.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::netns::Net;

pub struct DcServer {
    pub dc: String,
    pub name: String,
    pub http: String,
    rpc: String,
    gossip: String,
    wan: String,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

pub struct Datacenters {
    tmp: TempDir,
    pub servers: Vec<DcServer>,
    pub http: reqwest::Client,
    net: Net,
}

impl Datacenters {
    /// `sizes[k]` servers in datacenter `dc<k+1>`, on `net`'s addresses in order: HTTP on `port`,
    /// RPC `port + 1`, LAN gossip `port + 2`, WAN gossip `port + 3`.
    pub fn start(sizes: &[usize], port: u16, net: Net) -> Datacenters {
        let tmp = tempfile::Builder::new().prefix("roster-dcs").tempdir().expect("temp dir");
        let bin = tmp.path().join("roster");
        let src = crate::cluster::roster_bin();
        if std::fs::hard_link(&src, &bin).is_err() {
            std::fs::copy(&src, &bin).unwrap_or_else(|e| panic!("{}: {e} (build it first)", src.display()));
        }
        let mut servers = Vec::new();
        for (k, &n) in sizes.iter().enumerate() {
            for j in 0..n {
                let i = servers.len();
                let host = net.addr(i);
                servers.push(DcServer {
                    dc: format!("dc{}", k + 1),
                    name: format!("dc{}-server-{}", k + 1, j + 1),
                    http: format!("{host}:{port}"),
                    rpc: format!("{host}:{}", port + 1),
                    gossip: format!("{host}:{}", port + 2),
                    wan: format!("{host}:{}", port + 3),
                    dir: tmp.path().join(format!("s{}", i + 1)),
                    log: tmp.path().join(format!("s{}.log", i + 1)),
                    child: None,
                });
            }
        }
        let http = registry::client::http_builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(1))
            .build()
            .expect("http client");
        let mut d = Datacenters { tmp, servers, http, net };
        for i in 0..d.servers.len() {
            d.spawn(&bin, i);
        }
        d
    }

    fn spawn(&mut self, bin: &std::path::Path, i: usize) {
        let s = &self.servers[i];
        let same_dc: Vec<&DcServer> = self.servers.iter().filter(|o| o.dc == s.dc).collect();
        let join: Vec<&str> = same_dc.iter().map(|o| o.rpc.as_str()).collect();
        let seeds: Vec<&str> = same_dc.iter().filter(|o| o.name != s.name).map(|o| o.gossip.as_str()).collect();
        // Every server's WAN seeds: the first server of each other datacenter and its own dc's.
        let wan_seeds: Vec<&str> = self
            .servers
            .iter()
            .enumerate()
            .filter(|(j, o)| o.name != s.name && (*j == 0 || self.servers[j - 1].dc != o.dc))
            .map(|(_, o)| o.wan.as_str())
            .collect();
        let log = std::fs::File::create(&s.log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", self.net.namespace(i)])
            .arg(bin)
            .args(["server", "--node-name", &s.name, "--datacenter", &s.dc, "--primary-datacenter", "dc1"])
            .arg("--data-dir")
            .arg(&s.dir)
            .args(["--http-addr", &s.http, "--rpc-addr", &s.rpc, "--dns-addr", "off"])
            .args(["--gossip-addr", &s.gossip, "--gossip-seeds", &seeds.join(",")])
            .args(["--wan-addr", &s.wan, "--retry-join-wan", &wan_seeds.join(",")])
            .args(["--bootstrap-expect", &join.len().to_string(), "--retry-join", &join.join(",")])
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn roster");
        self.servers[i].child = Some(child);
    }

    /// The servers of `dc`, by index.
    pub fn in_dc(&self, dc: &str) -> Vec<usize> {
        (0..self.servers.len()).filter(|&i| self.servers[i].dc == dc).collect()
    }

    /// No server of one datacenter hears any server of another; links within each stay.
    pub fn partition_datacenters(&mut self) {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, s) in self.servers.iter().enumerate() {
            match groups.last_mut() {
                Some(g) if self.servers[g[0]].dc == s.dc => g.push(i),
                _ => groups.push(vec![i]),
            }
        }
        if let Err(e) = self.net.partition(&groups) {
            panic!("partition {groups:?}: {e}");
        }
    }

    pub fn heal(&mut self) {
        if let Err(e) = self.net.heal() {
            panic!("heal the network: {e}");
        }
    }

    /// `(status, body)` of a request to server `i`; status 0 when it did not answer.
    pub async fn call(&self, i: usize, method: reqwest::Method, path: &str, body: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.servers[i].http);
        match self.http.request(method, url).body(body.to_string()).send().await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    }

    /// Every server's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for s in &self.servers {
            let text = std::fs::read_to_string(&s.log).unwrap_or_default();
            out.push_str(&format!("----- {} ({}) -----\n{text}\n", s.name, s.dc));
        }
        out
    }

    pub fn dir(&self) -> &std::path::Path {
        self.tmp.path()
    }
}

impl Drop for Datacenters {
    fn drop(&mut self) {
        for s in &mut self.servers {
            if let Some(mut c) = s.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
