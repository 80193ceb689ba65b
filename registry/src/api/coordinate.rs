//! Network coordinates (`/v1/coordinate/*`), in Serf's Vivaldi form as Consul serves them.

use serde::{Deserialize, Serialize};

/// Serf's coordinate: an 8-dimensional Euclidean position plus a height and an adjustment, all in
/// seconds, and the node's confidence in it (`Error`, 1.5 for a new node).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Coordinate {
    pub vec: Vec<f64>,
    pub error: f64,
    pub adjustment: f64,
    pub height: f64,
}

/// Serf's dimensionality.
pub const COORDINATE_DIMENSIONS: usize = 8;

impl Coordinate {
    /// Where a new node starts (Serf's `NewCoordinate`).
    pub fn origin() -> Self {
        Coordinate { vec: vec![0.0; COORDINATE_DIMENSIONS], error: 1.5, adjustment: 0.0, height: 1.0e-5 }
    }

    /// Whether every component is a finite number and the dimensionality is Serf's.
    pub fn is_valid(&self) -> bool {
        self.vec.len() == COORDINATE_DIMENSIONS
            && self.vec.iter().chain([&self.error, &self.adjustment, &self.height]).all(|v| v.is_finite())
    }

    /// Estimated round trip to `other`, in seconds (Serf's `DistanceTo`).
    pub fn distance_to(&self, other: &Coordinate) -> f64 {
        let euclid: f64 = self.vec.iter().zip(&other.vec).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt();
        let dist = euclid + self.height + other.height;
        let adjusted = dist + self.adjustment + other.adjustment;
        if adjusted > 0.0 {
            adjusted
        } else {
            dist
        }
    }
}

/// One node's coordinate, as `/v1/coordinate/nodes` lists them and `update` takes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CoordinateEntry {
    pub node: String,
    #[serde(default)]
    pub segment: String,
    pub coord: Coordinate,
}

/// `/v1/coordinate/datacenters`: the servers' WAN coordinates of each datacenter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DatacenterCoordinates {
    pub datacenter: String,
    #[serde(rename = "AreaID")]
    pub area_id: String,
    pub coordinates: Vec<CoordinateEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_follow_serf() {
        let a = Coordinate::origin();
        let mut b = Coordinate::origin();
        b.vec[0] = 0.003;
        b.vec[1] = 0.004;
        // 5 ms apart, plus both heights.
        assert!((a.distance_to(&b) - (0.005 + 2.0e-5)).abs() < 1e-12);
        assert!(a.is_valid());
        b.vec.pop();
        assert!(!b.is_valid());
    }
}
