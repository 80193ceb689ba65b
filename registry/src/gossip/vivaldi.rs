//! Vivaldi network coordinates, as Serf computes them (`serf/coordinate/client.go`): every
//! measured round trip to another member pulls this node's coordinate towards (or pushes it away
//! from) that member's, so that distances between coordinates come to estimate round trips. Pure:
//! the prober (`probe`) feeds it measurements; tests feed it a simulated network.

use std::collections::{BTreeMap, VecDeque};

use crate::api::{Coordinate, COORDINATE_DIMENSIONS};

/// Serf's defaults (`coordinate.DefaultConfig`).
const ERROR_MAX: f64 = 1.5;
const CE: f64 = 0.25;
const CC: f64 = 0.25;
const ADJUSTMENT_WINDOW: usize = 20;
const HEIGHT_MIN: f64 = 10.0e-6;
const LATENCY_FILTER: usize = 3;
const GRAVITY_RHO: f64 = 150.0;
const ZERO: f64 = 1.0e-6;
/// Round trips above this are measurement errors, not network (Serf refuses over 10 s).
const MAX_RTT: f64 = 10.0;

/// One node's Vivaldi state: its coordinate and the recent samples that smooth it.
#[derive(Debug, Clone)]
pub struct Client {
    coord: Coordinate,
    origin: Coordinate,
    adjustment_samples: [f64; ADJUSTMENT_WINDOW],
    adjustment_index: usize,
    /// The last few round trips to each peer; their median is what counts (Serf's latency filter).
    latency: BTreeMap<String, VecDeque<f64>>,
    /// A small deterministic generator for the rare random direction (two nodes at one point).
    seed: u64,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    pub fn new() -> Self {
        Client {
            coord: Coordinate::origin(),
            origin: Coordinate::origin(),
            adjustment_samples: [0.0; ADJUSTMENT_WINDOW],
            adjustment_index: 0,
            latency: BTreeMap::new(),
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }

    pub fn coordinate(&self) -> Coordinate {
        self.coord.clone()
    }

    /// Forgets a peer that left (its latency samples).
    pub fn forget(&mut self, node: &str) {
        self.latency.remove(node);
    }

    /// Takes one measured round trip (seconds) to `node`, whose coordinate is `other`. Refuses
    /// measurements that cannot be right (invalid coordinates, negative or huge round trips).
    pub fn update(&mut self, node: &str, other: &Coordinate, rtt: f64) -> Result<Coordinate, String> {
        if !other.is_valid() {
            return Err(format!("{node} sent an invalid coordinate"));
        }
        if !(0.0..=MAX_RTT).contains(&rtt) || !rtt.is_finite() {
            return Err(format!("round trip of {rtt} s to {node} is out of range"));
        }
        let rtt = self.filtered(node, rtt);
        self.update_vivaldi(other, rtt);
        self.update_adjustment(other, rtt);
        self.update_gravity();
        if !self.coord.is_valid() {
            // Serf resets a coordinate that went bad rather than spreading it.
            *self = Client { latency: std::mem::take(&mut self.latency), ..Client::new() };
            return Err("coordinate became invalid and was reset".into());
        }
        Ok(self.coordinate())
    }

    fn filtered(&mut self, node: &str, rtt: f64) -> f64 {
        let samples = self.latency.entry(node.to_string()).or_default();
        samples.push_back(rtt);
        if samples.len() > LATENCY_FILTER {
            samples.pop_front();
        }
        let mut sorted: Vec<f64> = samples.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    }

    fn update_vivaldi(&mut self, other: &Coordinate, rtt: f64) {
        let rtt = rtt.max(ZERO);
        let dist = self.coord.distance_to(other);
        let wrongness = (dist - rtt).abs() / rtt;
        let total_error = (self.coord.error + other.error).max(ZERO);
        let weight = self.coord.error / total_error;
        self.coord.error = (CE * weight * wrongness + self.coord.error * (1.0 - CE * weight)).min(ERROR_MAX);
        let force = CC * weight * (rtt - dist);
        self.coord = self.apply_force(&self.coord.clone(), force, other);
    }

    fn update_adjustment(&mut self, other: &Coordinate, rtt: f64) {
        let raw = raw_distance(&self.coord, other);
        self.adjustment_samples[self.adjustment_index] = rtt - raw;
        self.adjustment_index = (self.adjustment_index + 1) % ADJUSTMENT_WINDOW;
        self.coord.adjustment = self.adjustment_samples.iter().sum::<f64>() / (2.0 * ADJUSTMENT_WINDOW as f64);
    }

    /// A weak pull towards the origin, so the whole system does not drift away.
    fn update_gravity(&mut self) {
        let dist = self.origin.distance_to(&self.coord);
        let force = -(dist / GRAVITY_RHO).powi(2);
        let origin = self.origin.clone();
        self.coord = self.apply_force(&self.coord.clone(), force, &origin);
    }

    /// Serf's `ApplyForce`: moves `c` by `force` along the unit vector from `other` to `c`.
    fn apply_force(&mut self, c: &Coordinate, force: f64, other: &Coordinate) -> Coordinate {
        let mut out = c.clone();
        let (unit, magnitude) = self.unit_vector_at(&c.vec, &other.vec);
        for (v, u) in out.vec.iter_mut().zip(unit) {
            *v += u * force;
        }
        if magnitude > ZERO {
            out.height = ((out.height + other.height) * force / magnitude + out.height).max(HEIGHT_MIN);
        }
        out
    }

    fn unit_vector_at(&mut self, a: &[f64], b: &[f64]) -> (Vec<f64>, f64) {
        let diff: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        let magnitude = norm(&diff);
        if magnitude > ZERO {
            return (diff.iter().map(|d| d / magnitude).collect(), magnitude);
        }
        // Both at one point: push in a random direction.
        let random: Vec<f64> = (0..COORDINATE_DIMENSIONS).map(|_| self.next_random() - 0.5).collect();
        let m = norm(&random);
        if m > ZERO {
            (random.iter().map(|r| r / m).collect(), 0.0)
        } else {
            (random, 0.0)
        }
    }

    /// xorshift64*, in [0, 1).
    fn next_random(&mut self) -> f64 {
        self.seed ^= self.seed >> 12;
        self.seed ^= self.seed << 25;
        self.seed ^= self.seed >> 27;
        (self.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A member's coordinate as its tasks share it: the prober updates it, the gossip socket answers
/// pings with it, the agent API reports it.
#[derive(Debug)]
pub struct Shared {
    node: String,
    client: std::sync::Mutex<Client>,
}

impl Shared {
    pub fn new(node: &str) -> Self {
        Shared { node: node.to_string(), client: std::sync::Mutex::new(Client::new()) }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Client> {
        self.client.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn coordinate(&self) -> Coordinate {
        self.lock().coordinate()
    }

    pub fn update(&self, node: &str, other: &Coordinate, rtt: f64) -> Result<Coordinate, String> {
        self.lock().update(node, other, rtt)
    }
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn raw_distance(a: &Coordinate, b: &Coordinate) -> f64 {
    let diff: Vec<f64> = a.vec.iter().zip(&b.vec).map(|(x, y)| x - y).collect();
    norm(&diff) + a.height + b.height
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nodes on a line, 10 ms apart: after rounds of everyone measuring everyone, the coordinates'
    /// distances estimate the true round trips (Serf's own test shape, `TestPerformance_Line`).
    #[test]
    fn coordinates_converge_to_the_round_trips_of_a_line() {
        let n = 6;
        let rtt = |i: usize, j: usize| 0.010 * (i as f64 - j as f64).abs();
        let mut clients: Vec<Client> = (0..n).map(|_| Client::new()).collect();
        for (i, c) in clients.iter_mut().enumerate() {
            c.seed ^= i as u64 + 1;
        }
        for _round in 0..400 {
            for i in 0..n {
                for j in 0..n {
                    if i != j {
                        let other = clients[j].coordinate();
                        clients[i].update(&format!("n{j}"), &other, rtt(i, j)).expect("valid");
                    }
                }
            }
        }
        let mut worst: f64 = 0.0;
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    let estimate = clients[i].coordinate().distance_to(&clients[j].coordinate());
                    worst = worst.max((estimate - rtt(i, j)).abs());
                }
            }
        }
        assert!(worst < 0.003, "estimates within 3 ms of true round trips, worst {worst}");
        assert!(clients.iter().all(|c| c.coordinate().error < 0.5), "confidence grows");
    }

    #[test]
    fn the_median_of_recent_samples_counts() {
        let mut c = Client::new();
        assert_eq!(c.filtered("a", 0.010), 0.010);
        assert_eq!(c.filtered("a", 0.500), 0.500);
        assert_eq!(c.filtered("a", 0.012), 0.012, "one outlier of three is outvoted");
        assert_eq!(c.filtered("a", 0.011), 0.012);
    }

    #[test]
    fn impossible_measurements_are_refused() {
        let mut c = Client::new();
        let mut bad = Coordinate::origin();
        bad.vec.pop();
        assert!(c.update("a", &bad, 0.01).is_err());
        assert!(c.update("a", &Coordinate::origin(), -1.0).is_err());
        assert!(c.update("a", &Coordinate::origin(), f64::NAN).is_err());
        assert!(c.update("a", &Coordinate::origin(), 60.0).is_err());
        assert_eq!(c.coordinate(), Coordinate::origin(), "nothing moved");
        // Two nodes at the very same point still separate.
        let moved = c.update("a", &Coordinate::origin(), 0.02).expect("valid");
        assert!(moved.vec.iter().any(|v| *v != 0.0));
    }
}
