//! `weft inject`: adds weft to Kubernetes manifests (or, with `--uninject`,
//! takes it out), so `weft inject deploy.yaml | kubectl apply -f -` puts a
//! workload's pods behind weft with no change to the application.
//!
//! - [`input`] reads files, directories and stdin into YAML documents;
//! - [`walk`] finds the pod (template) of each workload kind and Lists' items;
//! - [`options`] merges flags with the pod's `weft.io/*` annotations;
//! - [`patch`] adds or removes weft's containers and volumes and records what
//!   it added in `weft.io/status`, which makes injection idempotent and
//!   exactly reversible;
//! - [`containers`] builds the containers and volumes themselves.
//!
//! Output goes to stdout (YAML documents, or `-o json`), one report line per
//! object to stderr. The exit code is 0 when every input was read (skipped
//! objects included) and 1 when one could not be.

pub mod containers;
pub mod input;
pub mod options;
pub mod patch;
pub mod walk;

use std::io::Write;
use std::process::ExitCode;

use clap::ValueEnum;
use serde_yaml_ng::Value;

use options::InjectOptions;
use walk::Mode;

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

/// `weft inject` flags. Every option is also a pod annotation
/// (`weft.io/<flag name>`), which wins over the flag.
#[derive(Debug, clap::Args)]
pub struct InjectArgs {
    /// Manifest files, directories (searched recursively) or - for stdin.
    #[arg(required = true, value_name = "FILE|DIR|-")]
    pub inputs: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Yaml)]
    pub output: Format,
    /// Remove weft instead of adding it.
    #[arg(long)]
    pub uninject: bool,
    /// weft's image [default: weft:latest].
    #[arg(long)]
    pub image: Option<String>,
    /// ConfigMap holding weft.yaml, mounted at /etc/weft [default: weft].
    #[arg(long)]
    pub config_map: Option<String>,
    /// weft's inbound listener port [default: 15006].
    #[arg(long)]
    pub inbound_port: Option<String>,
    /// weft's outbound listener port [default: 15001].
    #[arg(long)]
    pub outbound_port: Option<String>,
    /// weft's admin port, probed by the kubelet [default: 9901].
    #[arg(long)]
    pub admin_port: Option<String>,
    /// The uid weft runs as [default: 10001, the image's user].
    #[arg(long)]
    pub proxy_uid: Option<String>,
    /// Inbound ports that bypass weft, comma-separated.
    #[arg(long)]
    pub skip_inbound_ports: Option<String>,
    /// Outbound ports that bypass weft, comma-separated.
    #[arg(long)]
    pub skip_outbound_ports: Option<String>,
    /// Subnets that bypass weft, comma-separated CIDRs.
    #[arg(long)]
    pub skip_subnets: Option<String>,
    /// weft's CPU request [default: 100m].
    #[arg(long)]
    pub cpu_request: Option<String>,
    /// weft's memory request [default: 64Mi].
    #[arg(long)]
    pub memory_request: Option<String>,
    /// weft's zone: downward (the pod's topology.kubernetes.io/zone label), none, or a zone name [default: downward].
    #[arg(long)]
    pub zone: Option<String>,
    /// Run weft as a native sidecar (Kubernetes >= 1.29); false puts it first in containers with a postStart hook.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub native_sidecar: Option<String>,
}

impl InjectArgs {
    /// The defaults the flags set; an error names the flag.
    pub fn options(&self) -> Result<InjectOptions, String> {
        let mut opts = InjectOptions::default();
        let flags = [
            ("image", &self.image),
            ("config-map", &self.config_map),
            ("inbound-port", &self.inbound_port),
            ("outbound-port", &self.outbound_port),
            ("admin-port", &self.admin_port),
            ("proxy-uid", &self.proxy_uid),
            ("skip-inbound-ports", &self.skip_inbound_ports),
            ("skip-outbound-ports", &self.skip_outbound_ports),
            ("skip-subnets", &self.skip_subnets),
            ("cpu-request", &self.cpu_request),
            ("memory-request", &self.memory_request),
            ("zone", &self.zone),
            ("native-sidecar", &self.native_sidecar),
        ];
        for (key, value) in flags {
            if let Some(value) = value {
                opts.set(key, value).map_err(|e| format!("--{key}: {e}"))?;
            }
        }
        Ok(opts)
    }
}

/// Runs `weft inject`: 0 when every input was read, 1 when one was not,
/// 2 on a bad flag.
pub fn main(args: &InjectArgs) -> ExitCode {
    let mode = if args.uninject {
        Mode::Uninject
    } else {
        match args.options() {
            Ok(opts) => Mode::Inject(Box::new(opts)),
            Err(e) => {
                eprintln!("weft inject: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut ok = true;
    let mut first = true;
    for source in input::read_all(&args.inputs) {
        let source = match source {
            Ok(s) => s,
            Err(e) => {
                eprintln!("weft inject: {e}");
                ok = false;
                continue;
            }
        };
        for mut doc in source.documents {
            let mut report = Vec::new();
            walk::process(&mut doc, &mode, &mut report);
            for line in &report {
                eprintln!("{line}");
            }
            if let Err(e) = write_document(&mut out, &doc, args.output, first) {
                eprintln!("weft inject: {}: {e}", source.name);
                ok = false;
            }
            first = false;
        }
    }
    if let Err(e) = out.flush() {
        eprintln!("weft inject: cannot write the output: {e}");
        ok = false;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Writes one document: YAML documents separated by `---`, JSON objects one
/// after the other (a stream kubectl reads).
fn write_document(out: &mut impl Write, doc: &Value, format: Format, first: bool) -> Result<(), String> {
    let text = match format {
        Format::Yaml => serde_yaml_ng::to_string(doc).map_err(|e| e.to_string())?,
        Format::Json => serde_json::to_string_pretty(doc).map_err(|e| e.to_string())? + "\n",
    };
    if format == Format::Yaml && !first {
        out.write_all(b"---\n").map_err(|e| e.to_string())?;
    }
    out.write_all(text.as_bytes()).map_err(|e| e.to_string())
}
