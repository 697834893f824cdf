//! The observe-only underlay program (XDP, opt-in with `--observe-underlay`): classifies and
//! counts what arrives on the underlay NIC, and passes everything.

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp, XdpMode},
};
use mesh_common::{DatapathConfig, UNDERLAY_COUNTER_SLOTS, UnderlayCounter, names};

use super::{DatapathError, EBPF_OBJECT};

/// How to attach the XDP program. `Auto` prefers the driver (native) hook and falls back to the
/// generic (skb) hook, logging which one it got; on a veth it takes the generic hook, because a
/// native program there makes the veth cut every GSO packet and skip GRO (measured: 5x less
/// TCP). The chosen mode is shown by `meshctl status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpAttachMode {
    Auto,
    Driver,
    Skb,
}

impl XdpAttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            XdpAttachMode::Auto => "auto",
            XdpAttachMode::Driver => "driver",
            XdpAttachMode::Skb => "skb",
        }
    }
}

/// Counter values summed over all CPUs, indexed by [`UnderlayCounter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters([u64; UNDERLAY_COUNTER_SLOTS as usize]);

impl Counters {
    pub fn get(&self, c: UnderlayCounter) -> u64 {
        self.0[c as usize]
    }

    /// `(name, value)` for every counter, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        UnderlayCounter::ALL
            .iter()
            .map(|c| (c.name(), self.get(*c)))
    }

    /// Element-wise `self - earlier`, for "what happened since" assertions.
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut d = Counters::default();
        for i in 0..self.0.len() {
            d.0[i] = self.0[i].wrapping_sub(earlier.0[i]);
        }
        d
    }
}

/// Owns the loaded eBPF object. Dropping it detaches the program (the XDP link is owned by it).
pub struct UnderlayRx {
    ebpf: Ebpf,
    attached: Option<(String, XdpAttachMode)>,
    data_port: u16,
}

impl UnderlayRx {
    /// Loads the object into the kernel, configures the data port and verifies the program.
    /// Nothing is attached yet: [`UnderlayRx::run_frame`] works without an interface.
    pub fn load(data_port: u16) -> Result<Self, DatapathError> {
        let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(DatapathError::Load)?;
        let mut config: Array<&mut MapData, DatapathConfig> = ebpf
            .map_mut(names::DATAPATH_CONFIG_MAP)
            .ok_or(DatapathError::Missing(names::DATAPATH_CONFIG_MAP))?
            .try_into()?;
        config.set(
            0,
            DatapathConfig {
                data_port_host: data_port,
                ..Default::default()
            },
            0,
        )?;
        program_mut(&mut ebpf)?.load()?;
        Ok(UnderlayRx {
            ebpf,
            attached: None,
            data_port,
        })
    }

    /// Attaches the program to `interface` (in the caller's network namespace) and returns the
    /// mode actually used.
    /// Attaches to `interface`; `veth` says whether it is one (see [`XdpAttachMode`]).
    pub fn attach(
        &mut self,
        interface: &str,
        mode: XdpAttachMode,
        veth: bool,
    ) -> Result<XdpAttachMode, DatapathError> {
        let prog = program_mut(&mut self.ebpf)?;
        let attach = |prog: &mut Xdp, m| {
            prog.attach(interface, m)
                .map_err(|source| DatapathError::Attach {
                    interface: interface.to_owned(),
                    source,
                })
        };
        let used = match mode {
            XdpAttachMode::Driver => {
                attach(prog, XdpMode::Driver).map(|_| XdpAttachMode::Driver)?
            }
            XdpAttachMode::Skb => attach(prog, XdpMode::Skb).map(|_| XdpAttachMode::Skb)?,
            XdpAttachMode::Auto if veth => {
                attach(prog, XdpMode::Skb)?;
                XdpAttachMode::Skb
            }
            XdpAttachMode::Auto => match attach(prog, XdpMode::Driver) {
                Ok(_) => XdpAttachMode::Driver,
                Err(e) => {
                    tracing::warn!(interface, error = %e, "native XDP unavailable, using generic (skb) XDP");
                    attach(prog, XdpMode::Skb)?;
                    XdpAttachMode::Skb
                }
            },
        };
        self.attached = Some((interface.to_owned(), used));
        Ok(used)
    }

    /// The interface and mode the program is attached with, if it is.
    pub fn attachment(&self) -> Option<(&str, XdpAttachMode)> {
        self.attached.as_ref().map(|(i, m)| (i.as_str(), *m))
    }

    pub fn data_port(&self) -> u16 {
        self.data_port
    }

    /// Reads the per-CPU counters and sums them.
    pub fn counters(&self) -> Result<Counters, DatapathError> {
        let map: PerCpuArray<&MapData, u64> = self
            .ebpf
            .map(names::UNDERLAY_COUNTERS_MAP)
            .ok_or(DatapathError::Missing(names::UNDERLAY_COUNTERS_MAP))?
            .try_into()?;
        let mut out = Counters::default();
        for (i, slot) in out.0.iter_mut().enumerate() {
            *slot = map.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    /// Runs the program once on `frame` in the kernel (BPF_PROG_TEST_RUN) and returns its XDP
    /// action. Counters move as they would for a real frame.
    pub fn run_frame(&self, frame: &[u8]) -> Result<u32, DatapathError> {
        let prog: &Xdp = self
            .ebpf
            .program(names::UNDERLAY_RX_PROGRAM)
            .ok_or(DatapathError::Missing(names::UNDERLAY_RX_PROGRAM))?
            .try_into()?;
        let result = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::new()
        })?;
        Ok(result.return_value)
    }
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, DatapathError> {
    Ok(ebpf
        .program_mut(names::UNDERLAY_RX_PROGRAM)
        .ok_or(DatapathError::Missing(names::UNDERLAY_RX_PROGRAM))?
        .try_into()?)
}
