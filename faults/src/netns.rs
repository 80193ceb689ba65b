//! Network namespaces for real partitions: each server in a namespace of its own with one veth into
//! a bridge, the bridge in a namespace of its own ("hub"), and one more veth from the hub to the root
//! namespace, where the harness's clients run: they reach every server whatever the partition.
//!
//! ```text
//!   root ns: harness, clients  10.213.X.254 ── veth ──┐
//!                                          hub ns: bridge ── veth ── s1 ns: 10.213.X.1 (roster)
//!                                                         ── veth ── s2 ns: 10.213.X.2 (roster) ...
//! ```
//!
//! A partition drops packets on input, silently, as Jepsen's `iptables -A INPUT -s <peer> -j DROP`
//! does, without iptables (not installed): `ip rule add from <peer> blackhole` in the receiving
//! server's namespace. Input route lookups go through the rules with the sender's address as source,
//! so the rule must come before the `local` table's rule, which each server namespace moves from
//! preference 0 to [`LOCAL_PREF`]. Output and the harness's traffic are untouched. Cutting a pair
//! means a rule on both sides; healing deletes the rules.
//!
//! Names carry the creating process's ID (`rf-<pid>-<k>-…`, root link `rf<pid>x<k>`) so that runs
//! side by side never collide, and leftovers of a run that died without cleaning up (SIGKILL) are
//! recognised by their dead owner and deleted, with any process still in them, before a new run.
//! The subnet 10.213.X.0/24 is the first X not on any root-namespace address.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Where the `local` table's rule goes in a server namespace: after the partition rules.
const LOCAL_PREF: u32 = 1000;
/// The partition rules' preference.
const DROP_PREF: u32 = 100;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with `args`; Err carries its stderr.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The owner PID in one of our names: `rf-<pid>-…` (namespaces) or `rf<pid>x…` (root links).
fn owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("rf-").or_else(|| name.strip_prefix("rf"))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = rest[digits.len()..].chars().next();
    if digits.is_empty() || !matches!(after, Some('-') | Some('x')) {
        return None;
    }
    digits.parse().ok()
}

/// Kills every process in namespace `ns` (SIGKILL) and deletes it.
fn delete_namespace(ns: &str) {
    if let Ok(pids) = ip(&["netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).stderr(Stdio::null()).status();
        }
    }
    let _ = ip(&["netns", "delete", ns]);
}

/// Deletes namespaces and root links left by runs whose process is gone.
pub fn clean_stale() {
    if let Ok(list) = ip(&["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if owner(ns).is_some_and(|p| !pid_alive(p)) {
                eprintln!("roster-faults: deleting namespace {ns} left by a dead run");
                delete_namespace(ns);
            }
        }
    }
    if let Ok(links) = ip(&["-o", "link", "show"]) {
        for l in links.lines() {
            // "7: rf1234x0@if3: <...>"
            let Some(name) = l.split(':').nth(1).map(|n| n.trim().split('@').next().unwrap_or("")) else { continue };
            if owner(name).is_some_and(|p| !pid_alive(p)) {
                eprintln!("roster-faults: deleting link {name} left by a dead run");
                let _ = ip(&["link", "delete", name]);
            }
        }
    }
}

/// For a test: whether network namespaces can be made here. If not, says so where CI logs show it
/// (stderr written directly is not captured by the test harness) and the test skips, or fails when
/// ROSTER_FAULTS_REQUIRE_NETNS says they are required (CI, as root).
pub fn available_or_skip(test: &str) -> bool {
    match available() {
        Ok(()) => true,
        Err(why) if std::env::var_os("ROSTER_FAULTS_REQUIRE_NETNS").is_some() => {
            panic!("{test}: network namespaces required (ROSTER_FAULTS_REQUIRE_NETNS) but unavailable: {why}")
        }
        Err(why) => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIP {test}: network namespaces unavailable: {why}; partitions NOT tested"
            );
            false
        }
    }
}

/// Why namespaces cannot be used here (not root, no `ip`, no namespace support), or Ok.
pub fn available() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| format!("/proc/self/status: {e}"))?;
    let euid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1));
    if euid != Some("0") {
        return Err(format!("not root (effective uid {})", euid.unwrap_or("?")));
    }
    ip(&["-V"]).map_err(|e| format!("no usable `ip` (iproute2): {e}"))?;
    // Unique: tests of one process check side by side.
    let probe = format!("rf-{}-{}-probe", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
    ip(&["netns", "add", &probe]).map_err(|e| format!("cannot create a network namespace: {e}"))?;
    let veth = ip(&["-n", &probe, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1"]);
    let rule = ip(&["-n", &probe, "rule", "add", "pref", "5", "from", "10.213.255.1", "blackhole"]);
    let _ = ip(&["netns", "delete", &probe]);
    veth.map_err(|e| format!("cannot create a veth pair: {e}"))?;
    rule.map_err(|e| format!("cannot add a blackhole rule: {e}"))?;
    Ok(())
}

/// The namespaces, bridge and links of one cluster; everything is deleted on drop.
pub struct Net {
    hub: String,
    root_link: String,
    subnet: u8,
    namespaces: Vec<String>,
    /// Cut directions (receiver, sender): a rule in the receiver's namespace drops the sender.
    cut: BTreeSet<(usize, usize)>,
}

impl Net {
    /// Creates `n` server namespaces on a new bridge. Deletes leftovers of dead runs first.
    pub fn create(n: usize) -> Result<Net, String> {
        clean_stale();
        let pid = std::process::id();
        let k = NEXT.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("rf-{pid}-{k}");
        let used = ip(&["-o", "-4", "addr", "show"])?;
        let subnet = (0..=255u32)
            .map(|x| ((x + pid) % 250) as u8)
            .find(|x| !used.contains(&format!(" 10.213.{x}.")))
            .ok_or("no free 10.213.X.0/24 subnet")?;
        // Built as it goes: a failure half-way deletes what exists (Drop).
        let mut net = Net {
            hub: format!("{prefix}-hub"),
            root_link: format!("rf{pid}x{k}"),
            subnet,
            namespaces: Vec::new(),
            cut: BTreeSet::new(),
        };
        let hub = net.hub.clone();
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        ip(&["link", "add", &net.root_link, "type", "veth", "peer", "name", "root", "netns", &hub])?;
        ip(&["-n", &hub, "link", "set", "root", "master", "br0", "up"])?;
        ip(&["addr", "add", &format!("{}/24", net.client_addr()), "dev", &net.root_link])?;
        ip(&["link", "set", &net.root_link, "up"])?;
        for i in 0..n {
            let ns = format!("{prefix}-s{}", i + 1);
            ip(&["netns", "add", &ns])?;
            net.namespaces.push(ns.clone());
            let port = format!("s{}", i + 1);
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", net.addr(i)), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "rule", "add", "pref", &LOCAL_PREF.to_string(), "lookup", "local"])?;
            ip(&["-n", &ns, "rule", "delete", "pref", "0"])?;
        }
        Ok(net)
    }

    /// Server `i`'s address (10.213.X.i+1).
    pub fn addr(&self, i: usize) -> String {
        format!("10.213.{}.{}", self.subnet, i + 1)
    }

    /// The root namespace's address on the bridge (the clients').
    pub fn client_addr(&self) -> String {
        format!("10.213.{}.254", self.subnet)
    }

    pub fn namespace(&self, i: usize) -> &str {
        &self.namespaces[i]
    }

    /// Server `i`'s namespace drops what `from` sends it.
    fn cut_one(&mut self, i: usize, from: usize) -> Result<(), String> {
        if self.cut.insert((i, from)) {
            let pref = DROP_PREF.to_string();
            ip(&["-n", &self.namespaces[i], "rule", "add", "pref", &pref, "from", &self.addr(from), "blackhole"])?;
        }
        Ok(())
    }

    /// `a` and `b` no longer hear each other.
    pub fn cut(&mut self, a: usize, b: usize) -> Result<(), String> {
        self.cut_one(a, b)?;
        self.cut_one(b, a)
    }

    /// No server of one group hears any server of another; within a group nothing changes.
    pub fn partition(&mut self, groups: &[Vec<usize>]) -> Result<(), String> {
        for (gi, g) in groups.iter().enumerate() {
            for h in &groups[gi + 1..] {
                for &a in g {
                    for &b in h {
                        self.cut(a, b)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Deletes every partition rule.
    pub fn heal(&mut self) -> Result<(), String> {
        let pref = DROP_PREF.to_string();
        let mut first_err = Ok(());
        for (i, from) in std::mem::take(&mut self.cut) {
            let r = ip(&[
                "-n",
                &self.namespaces[i],
                "rule",
                "delete",
                "pref",
                &pref,
                "from",
                &self.addr(from),
                "blackhole",
            ]);
            if first_err.is_ok() {
                first_err = r.map(|_| ());
            }
        }
        first_err
    }

    /// Whether any link is cut now.
    pub fn partitioned(&self) -> bool {
        !self.cut.is_empty()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            delete_namespace(ns);
        }
        // The hub's veths (and so their peers, the root link included) go with it.
        delete_namespace(&self.hub);
        let _ = ip(&["link", "delete", &self.root_link]);
    }
}

#[cfg(test)]
mod tests {
    use super::owner;

    #[test]
    fn owner_pid_is_read_from_our_names_only() {
        assert_eq!(owner("rf-1234-0-hub"), Some(1234));
        assert_eq!(owner("rf-77-3-s5"), Some(77));
        assert_eq!(owner("rf1234x0"), Some(1234));
        assert_eq!(owner("rf-probe"), None);
        assert_eq!(owner("rfoo"), None);
        assert_eq!(owner("rf12"), None);
        assert_eq!(owner("eth0"), None);
    }
}
