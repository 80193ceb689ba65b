//! Roster's fault harness: real `roster server` processes, clients recording every operation on
//! Consul's KV API, faults (SIGKILL, SIGSTOP, restarts with the data directory kept or wiped, network
//! partitions between servers in namespaces of their own), and
//! checkers for the histories: linearizability of single-key registers (Porcupine's search),
//! lost acknowledged writes, monotonic `?stale` reads, and lock safety with lock-delay.
//! See docs/reliability.md.

pub mod checker;
pub mod cluster;
pub mod datacenters;
pub mod disk;
pub mod history;
pub mod lock;
pub mod locks;
pub mod netns;
pub mod scenario;
pub mod txn;
pub mod workload;
