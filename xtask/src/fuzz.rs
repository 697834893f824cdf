//! `cargo xtask fuzz`: runs every cargo-fuzz target in fuzz/ (each decoder of bytes from the
//! network or disk) for a while and reports executions per target; fails on any crash. The
//! seed corpus lives in fuzz/corpus/<target>; what a run discovers goes to target/fuzz-corpus,
//! so the repository only changes when someone copies a useful input in.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cmd::workspace_root;

/// The targets, as named in fuzz/Cargo.toml.
pub const TARGETS: &[&str] = &[
    "data_frame",
    "sealed_frame",
    "peer_frame",
    "local_api",
    "state_files",
    "tap_frame",
];

#[derive(clap::Args)]
pub struct Args {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    seconds: u32,
    /// Only these targets (comma-separated; default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let root = workspace_root();
    let fuzz_dir = root.join("fuzz");
    for t in &args.only {
        if !TARGETS.contains(&t.as_str()) {
            bail!("no fuzz target {t:?}; the targets: {}", TARGETS.join(", "));
        }
    }
    let selected: Vec<&str> = TARGETS
        .iter()
        .copied()
        .filter(|t| args.only.is_empty() || args.only.iter().any(|o| o == t))
        .collect();
    let status = Command::new("cargo")
        .args(["+nightly", "fuzz", "build", "-O"])
        .current_dir(&fuzz_dir)
        .status()
        .context("running cargo fuzz (install it with `cargo xtask setup`)")?;
    if !status.success() {
        bail!("building the fuzz targets failed ({status})");
    }
    let mut report = Vec::new();
    for t in selected {
        let found = root.join("target/fuzz-corpus").join(t);
        std::fs::create_dir_all(&found)?;
        let seeds = fuzz_dir.join("corpus").join(t);
        println!("fuzz: {t} for {} s", args.seconds);
        let out = Command::new("cargo")
            .args(["+nightly", "fuzz", "run", "-O", t])
            .arg(&found)
            .arg(&seeds)
            .args([
                "--",
                &format!("-max_total_time={}", args.seconds),
                "-print_final_stats=1",
            ])
            .current_dir(&fuzz_dir)
            .output()
            .with_context(|| format!("running fuzz target {t}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "fuzz target {t} found a crash (the input is under fuzz/artifacts/{t}):\n{}",
                tail.join("\n")
            );
        }
        let runs = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map_or("?".to_owned(), |v| v.trim().to_owned());
        println!("fuzz: {t}: {runs} executions, no crash");
        report.push((t, runs));
    }
    println!("fuzz: summary (seconds per target: {})", args.seconds);
    for (t, runs) in report {
        println!("  {t:<14} {runs:>12} executions, 0 crashes");
    }
    Ok(())
}
