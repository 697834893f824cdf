//! The library behind `meshd` and `meshctl`.
//!
//! - [`agent`]: the control plane at run time (QUIC connections, dialling, gossip).
//! - [`auth`], [`identity`]: who a node is and who may join; [`entry_sign`]: its gossip entry
//!   signed with its key, so members speak only for themselves.
//! - [`datapath`]: loads mesh's eBPF object, attaches its programs, reads its counters.
//! - [`local_api`]: the Unix-socket API between meshctl and meshd.
//! - [`paths`]: where an instance keeps its files, so several meshd on one machine never collide.

pub mod agent;
pub mod attach;
pub mod auth;
pub mod cni;
pub mod config_file;
pub mod datapath;
pub mod docker_plugin;
pub mod entry_sign;
pub mod identity;
pub mod ipam;
pub mod local_api;
pub mod metrics;
pub mod netlink;
pub mod networks;
pub mod notify;
pub mod paths;
pub mod switch;
pub mod tap;
pub mod text;
