//! Empty on purpose: the programs live in the `mesh-datapath` binary (src/main.rs). This library
//! target exists so that `control-plane` can name the crate as a build-dependency, which makes
//! cargo rebuild meshd when the eBPF sources change.
#![no_std]
