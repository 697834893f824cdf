//! The library behind `meshd` and `meshctl`.
//!
//! - [`datapath`]: loads mesh's eBPF object, attaches its programs, reads its counters.
//! - [`local_api`]: the Unix-socket API between meshctl and meshd.
//! - [`paths`]: where an instance keeps its files, so several meshd on one machine never collide.

pub mod datapath;
pub mod local_api;
pub mod paths;
