//! `cargo xtask <task>`: a dispatcher only; each task lives in its own module.

mod bench;
mod cmd;
mod cross;
mod demo;
mod fuzz;
mod package;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "mesh project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install everything building and testing need (apt packages, rust-src, bpf-linker, bpffs).
    /// Idempotent: a second run only checks.
    Setup(setup::Args),
    /// Build, then run the unit tests and the network-namespace tests (needs root).
    Test(test::Args),
    /// Start a local mesh in network namespaces and show what it does.
    Demo(demo::Args),
    /// Measure mesh side by side with the reference systems (kernel VXLAN, boringtun).
    Bench(bench::Args),
    /// Run every fuzz target (decoders of network and disk input) for a while; fails on a
    /// crash and reports executions per target.
    Fuzz(fuzz::Args),
    /// Build the Debian package (target/package/*.deb) and check it: lintian, an install into
    /// a scratch root, the installed meshd started with the shipped configuration (needs root).
    Package(package::Args),
    /// Build static meshd and meshctl for ARM boards (aarch64, armv7, armv6 for the Raspberry
    /// Pi 1/Zero) into target/cross/<name>/, each checked under qemu-user on its oldest CPU.
    Cross(cross::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup(args) => setup::run(args),
        Task::Test(args) => test::run(args),
        Task::Demo(args) => demo::run(args),
        Task::Bench(args) => bench::run(args),
        Task::Fuzz(args) => fuzz::run(args),
        Task::Package(args) => package::run(args),
        Task::Cross(args) => cross::run(args),
    }
}
