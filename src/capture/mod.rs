//! Transparent capture for a pod: `weft init-iptables` writes the nat-table
//! rules that send the pod's TCP connections through weft, so the application
//! needs no change.
//!
//! - Inbound: chain `WEFT_INBOUND`, hooked from `PREROUTING`, returns the
//!   skipped ports (the admin port always) and source subnets, then redirects
//!   every other TCP connection to the inbound port.
//! - Outbound: chain `WEFT_OUTBOUND`, hooked from `OUTPUT`, returns weft's own
//!   connections (by uid, so they are never captured twice), loopback, the
//!   skipped ports and destination subnets, then redirects to the outbound port.
//!
//! The same rules go to `ip6tables`. [`rules`] computes the exact command list
//! from the options and the current table (pure); [`exec`] reads the table,
//! runs the commands and prints each one. Re-running is safe: existing chains
//! are flushed and refilled, hooks are added only when missing. `--dry-run`
//! prints the commands for a fresh pod network namespace (for `--cleanup`, a
//! namespace set up once) and runs nothing; a real run prints what it runs.

pub mod exec;
pub mod options;
pub mod rules;

use std::process::ExitCode;

use clap::ValueEnum;

pub use options::{CaptureOptions, Family, PortRange, Subnet};
pub use rules::{Backend, Command, NatState};

/// Which iptables implementation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// nft when its `iptables-nft-save` works, else legacy.
    Auto,
    Nft,
    Legacy,
}

/// `weft init-iptables`: the flags of the init container.
#[derive(Debug, clap::Args)]
pub struct InitIptablesArgs {
    /// Port of weft's inbound listener: connections into the pod go there.
    #[arg(long, default_value_t = options::DEFAULT_INBOUND_PORT)]
    pub inbound_port: u16,
    /// Port of weft's outbound listener: connections the pod opens go there.
    #[arg(long, default_value_t = options::DEFAULT_OUTBOUND_PORT)]
    pub outbound_port: u16,
    /// The uid weft runs as; its own connections are never captured.
    #[arg(long, default_value_t = options::DEFAULT_PROXY_UID)]
    pub proxy_uid: u32,
    /// weft's admin port: inbound connections to it always bypass weft's listener.
    #[arg(long, default_value_t = options::DEFAULT_ADMIN_PORT)]
    pub admin_port: u16,
    /// Inbound ports (or ranges first-last) that bypass weft, comma-separated.
    #[arg(long)]
    pub skip_inbound_ports: Option<String>,
    /// Outbound destination ports (or ranges) that bypass weft, comma-separated.
    #[arg(long)]
    pub skip_outbound_ports: Option<String>,
    /// Subnets (CIDR, IPv4 or IPv6) that bypass weft: as source inbound, as destination outbound.
    #[arg(long)]
    pub skip_subnets: Option<String>,
    /// Print the commands for a fresh network namespace and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove weft's chains and hooks instead of writing them.
    #[arg(long)]
    pub cleanup: bool,
    /// iptables implementation.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
}

impl InitIptablesArgs {
    /// The options, with the lists parsed; an error names the flag.
    pub fn options(&self) -> Result<CaptureOptions, String> {
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        let ports =
            |flag: &str, v: &Option<String>| PortRange::parse_list(&text(v)).map_err(|e| format!("--{flag}: {e}"));
        Ok(CaptureOptions {
            inbound_port: self.inbound_port,
            outbound_port: self.outbound_port,
            proxy_uid: self.proxy_uid,
            admin_port: self.admin_port,
            skip_inbound_ports: ports("skip-inbound-ports", &self.skip_inbound_ports)?,
            skip_outbound_ports: ports("skip-outbound-ports", &self.skip_outbound_ports)?,
            skip_subnets: Subnet::parse_list(&text(&self.skip_subnets)).map_err(|e| format!("--skip-subnets: {e}"))?,
        })
    }
}

/// Runs `weft init-iptables`: exit 0 when every command succeeded (or was
/// printed), 2 on bad flags, 1 when a command failed.
pub fn main(args: &InitIptablesArgs) -> ExitCode {
    let opts = match args.options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("weft init-iptables: {e}");
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout().lock();
    let result = if args.dry_run {
        exec::dry_run(&opts, args.backend, args.cleanup, &mut out)
    } else {
        exec::apply(&opts, args.backend, args.cleanup, &mut out)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft init-iptables: {e}");
            ExitCode::FAILURE
        }
    }
}
