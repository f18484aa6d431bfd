//! Runs the plan of [`super::rules`] against the real tables: picks the
//! backend (nft first, legacy when nft's tools do not work), reads each
//! family's nat table with `*-save`, and runs the commands one by one,
//! printing each before it runs. The first failing command stops the run with
//! its output in the error.
//!
//! This is a one-shot command line program (an init container), not the
//! proxy: it blocks on child processes and holds no runtime.

use std::io::Write;
use std::process::Command as Process;

use super::options::{CaptureOptions, Family};
use super::rules::{self, Backend, Command, NatState};
use super::BackendChoice;

/// Prints the commands for a fresh namespace (or, with `cleanup`, for one set
/// up once) without running anything. `auto` prints the nft commands.
pub fn dry_run(
    opts: &CaptureOptions,
    choice: BackendChoice,
    cleanup: bool,
    out: &mut impl Write,
) -> Result<(), String> {
    let backend = match choice {
        BackendChoice::Legacy => Backend::Legacy,
        BackendChoice::Auto | BackendChoice::Nft => Backend::Nft,
    };
    for family in Family::ALL {
        let commands = if cleanup {
            rules::cleanup(family, backend, &NatState::after_setup(opts, family))
        } else {
            rules::setup(opts, family, backend, &NatState::default())
        };
        print_all(&commands, out)?;
    }
    Ok(())
}

/// Brings both families' nat tables to weft's rules (or removes them). IPv6
/// is skipped with a warning when its table cannot be read (no IPv6 in the
/// pod's kernel); an IPv4 failure is an error.
pub fn apply(opts: &CaptureOptions, choice: BackendChoice, cleanup: bool, out: &mut impl Write) -> Result<(), String> {
    let backend = choose_backend(choice)?;
    for family in Family::ALL {
        let state = match read_state(backend, family) {
            Ok(state) => state,
            Err(e) if family == Family::V6 => {
                eprintln!("weft init-iptables: IPv6 skipped: {e}");
                continue;
            }
            Err(e) => return Err(e),
        };
        let commands = if cleanup {
            rules::cleanup(family, backend, &state)
        } else {
            rules::setup(opts, family, backend, &state)
        };
        for command in &commands {
            print_all(std::slice::from_ref(command), out)?;
            run(command)?;
        }
    }
    Ok(())
}

/// `auto` takes nft when `iptables-nft-save` runs, else legacy when
/// `iptables-legacy-save` does; a named backend must work.
fn choose_backend(choice: BackendChoice) -> Result<Backend, String> {
    let candidates: &[Backend] = match choice {
        BackendChoice::Auto => &[Backend::Nft, Backend::Legacy],
        BackendChoice::Nft => &[Backend::Nft],
        BackendChoice::Legacy => &[Backend::Legacy],
    };
    let mut errors = Vec::new();
    for backend in candidates {
        match read_state(*backend, Family::V4) {
            Ok(_) => return Ok(*backend),
            Err(e) => errors.push(e),
        }
    }
    Err(format!("no usable iptables backend: {}", errors.join("; ")))
}

fn read_state(backend: Backend, family: Family) -> Result<NatState, String> {
    let save = Command {
        program: backend.save_program(family),
        args: vec!["-t".into(), "nat".into()],
    };
    run(&save).map(|stdout| NatState::parse(&stdout))
}

/// Runs one command; its stdout on success, else an error quoting it.
fn run(command: &Command) -> Result<String, String> {
    let output = Process::new(&command.program)
        .args(&command.args)
        .output()
        .map_err(|e| format!("`{command}`: {e}"))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(format!("`{command}` failed ({}): {}", output.status, stderr.trim()))
}

fn print_all(commands: &[Command], out: &mut impl Write) -> Result<(), String> {
    for c in commands {
        writeln!(out, "{c}").map_err(|e| format!("cannot write the command list: {e}"))?;
    }
    out.flush().map_err(|e| format!("cannot write the command list: {e}"))
}
