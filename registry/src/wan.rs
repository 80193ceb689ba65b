//! Several datacenters: this server's place in the WAN pool (every datacenter's servers, Consul's
//! serf_wan, port 8302) and where a request for another datacenter goes. The pool is the same
//! gossip as the LAN's (`gossip::Membership`: failure detection, encryption with the same key,
//! coordinates), joined as `node.dc` with this server's HTTP address announced; `route` and
//! `datacenters` are pure over what it knows.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::api::Coordinate;
use crate::config::Config;
use crate::gossip::{Member, Membership, PoolView};
use crate::raft::ServerNode;

/// Where a request for a datacenter goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The HTTP addresses of its live servers, nearest first.
    Servers(Vec<String>),
    /// No server of that datacenter was ever seen in the pool.
    Unknown,
    /// Its servers are known but none is live now.
    Unreachable,
}

/// This server in the WAN pool.
pub struct Wan {
    pool: Membership,
}

/// Serf's member status numbers, as `/v1/agent/members` shows them.
pub const STATUS_ALIVE: u8 = 1;
pub const STATUS_LEFT: u8 = 3;
pub const STATUS_FAILED: u8 = 4;

impl Wan {
    pub async fn start(config: &Config, me: &ServerNode, bind: SocketAddr) -> anyhow::Result<Wan> {
        let host = me.rpc_addr.rsplit_once(':').map_or(me.rpc_addr.clone(), |(h, _)| h.to_string());
        let pool = crate::gossip::Joining {
            pool: crate::gossip::Pool::Wan,
            name: format!("{}.{}", me.name, config.datacenter),
            address: host,
            datacenter: config.datacenter.clone(),
            role: crate::gossip::Role::Server,
            bind,
            advertise: config.wan_advertise,
            seeds: config.retry_join_wan.clone(),
            // WAN links are slower and lossier than a LAN: gossip less often, judge more patiently.
            interval: Duration::from_millis(config.gossip_interval_ms * 2),
            phi_threshold: config.gossip_phi_threshold,
            key: config.gossip_key.clone(),
            keyring_file: config.data_dir.as_ref().map(|d| d.join("gossip-wan.keyring")),
        }
        .join_udp()
        .await
        .map_err(|e| anyhow::anyhow!("WAN pool: {e:#}"))?;
        pool.announce(crate::gossip::KEY_HTTP, &me.http_addr).await;
        Ok(Wan { pool })
    }

    /// Where a request for `dc` goes now.
    pub async fn route(&self, dc: &str) -> Route {
        let (view, http, distance) = self.snapshot().await;
        route(&view, &http, |m| distance(m), dc)
    }

    /// Every datacenter the pool knows, `own` first, then by estimated round trip.
    pub async fn datacenters(&self, own: &str) -> Vec<String> {
        let (view, _, distance) = self.snapshot().await;
        datacenters(&view, own, |m| distance(m))
    }

    /// The pool's members with Serf's status: live, failed, left.
    pub async fn members(&self) -> Vec<(Member, u8)> {
        let view = self.pool.view().await;
        let mut out: Vec<(Member, u8)> = Vec::new();
        out.extend(view.live.into_values().map(|m| (m, STATUS_ALIVE)));
        out.extend(view.failed.into_values().map(|m| (m, STATUS_FAILED)));
        out.extend(view.left.into_values().map(|m| (m, STATUS_LEFT)));
        out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        out
    }

    pub fn membership(&self) -> &Membership {
        &self.pool
    }

    async fn snapshot(&self) -> (PoolView, BTreeMap<String, String>, impl Fn(&str) -> f64) {
        let view = self.pool.view().await;
        let http = self.pool.announced(crate::gossip::KEY_HTTP).await;
        let coords: BTreeMap<String, Coordinate> = self.pool.member_coordinates().await;
        let mine = self.pool.coordinate();
        let distance = move |member: &str| coords.get(member).map_or(f64::INFINITY, |c| mine.distance_to(c));
        (view, http, distance)
    }
}

/// The live servers of `dc` that announced an HTTP address, nearest first (ties by name).
pub fn route(view: &PoolView, http: &BTreeMap<String, String>, distance: impl Fn(&str) -> f64, dc: &str) -> Route {
    let known = view.live.values().chain(view.failed.values()).chain(view.left.values()).any(|m| m.datacenter == dc);
    if !known {
        return Route::Unknown;
    }
    let mut servers: Vec<(f64, &str, &String)> = view
        .live
        .values()
        .filter(|m| m.datacenter == dc)
        .filter_map(|m| Some((distance(&m.name), m.name.as_str(), http.get(&m.name)?)))
        .collect();
    if servers.is_empty() {
        return Route::Unreachable;
    }
    servers.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
    Route::Servers(servers.into_iter().map(|(_, _, addr)| addr.clone()).collect())
}

/// `own` first, then every other datacenter with a member in the pool (failed ones too: Consul
/// lists a datacenter until its servers are reaped), by the median estimated round trip to its live
/// servers; those with none known go last, by name.
pub fn datacenters(view: &PoolView, own: &str, distance: impl Fn(&str) -> f64) -> Vec<String> {
    let mut by_dc: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for m in view.live.values() {
        by_dc.entry(&m.datacenter).or_default().push(distance(&m.name));
    }
    for m in view.failed.values() {
        by_dc.entry(&m.datacenter).or_default();
    }
    by_dc.remove(own);
    let median = |d: &mut Vec<f64>| {
        d.sort_by(f64::total_cmp);
        d.get(d.len() / 2).copied().unwrap_or(f64::INFINITY)
    };
    let mut others: Vec<(f64, &str)> = by_dc.into_iter().map(|(dc, mut d)| (median(&mut d), dc)).collect();
    others.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
    std::iter::once(own.to_string()).chain(others.into_iter().map(|(_, dc)| dc.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::Role;

    fn member(name: &str, dc: &str) -> Member {
        Member {
            name: name.into(),
            address: "10.0.0.1".into(),
            datacenter: dc.into(),
            role: Role::Server,
            version: "0".into(),
            gossip_addr: ([10, 0, 0, 1], 8302).into(),
        }
    }

    fn view(live: &[(&str, &str)], failed: &[(&str, &str)]) -> PoolView {
        let map = |list: &[(&str, &str)]| list.iter().map(|(n, dc)| (n.to_string(), member(n, dc))).collect();
        PoolView { live: map(live), failed: map(failed), left: BTreeMap::new() }
    }

    fn http(names: &[&str]) -> BTreeMap<String, String> {
        names.iter().map(|n| (n.to_string(), format!("{n}:8500"))).collect()
    }

    #[test]
    fn a_request_goes_to_the_nearest_live_server_of_its_datacenter() {
        let v = view(&[("a.dc1", "dc1"), ("b.dc2", "dc2"), ("c.dc2", "dc2"), ("d.dc2", "dc2")], &[("e.dc2", "dc2")]);
        let rtt = |m: &str| match m {
            "b.dc2" => 0.030,
            "c.dc2" => 0.010,
            _ => f64::INFINITY,
        };
        // d.dc2 has no coordinate yet: last. e.dc2 is failed: never. A server that has not
        // announced its HTTP address yet cannot be used.
        let h = http(&["a.dc1", "b.dc2", "c.dc2", "d.dc2", "e.dc2"]);
        assert_eq!(
            route(&v, &h, rtt, "dc2"),
            Route::Servers(vec!["c.dc2:8500".into(), "b.dc2:8500".into(), "d.dc2:8500".into()])
        );
        assert_eq!(route(&v, &http(&["a.dc1", "b.dc2"]), rtt, "dc2"), Route::Servers(vec!["b.dc2:8500".into()]));
        assert_eq!(route(&v, &h, rtt, "dc9"), Route::Unknown);
        let down = view(&[("a.dc1", "dc1")], &[("b.dc2", "dc2")]);
        assert_eq!(route(&down, &h, rtt, "dc2"), Route::Unreachable);
    }

    #[test]
    fn datacenters_are_listed_own_first_then_by_median_round_trip() {
        let v = view(
            &[("a.dc1", "dc1"), ("b.eu", "eu"), ("c.eu", "eu"), ("d.eu", "eu"), ("e.us", "us"), ("f.ap", "ap")],
            &[("g.old", "old")],
        );
        let rtt = |m: &str| match m {
            "b.eu" => 0.200,
            "c.eu" => 0.020,
            "d.eu" => 0.030,
            "e.us" => 0.025,
            _ => f64::INFINITY,
        };
        // eu's median is 0.030, us's 0.025; ap has no coordinate, old no live server: by name, last.
        assert_eq!(datacenters(&v, "dc1", rtt), ["dc1", "us", "eu", "ap", "old"]);
        assert_eq!(datacenters(&PoolView::default(), "dc1", rtt), ["dc1"]);
    }
}
