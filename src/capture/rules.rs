//! The nat-table plan as pure functions: from the options and the table as
//! `iptables-save -t nat` prints it, the exact list of commands to run.
//!
//! Every rule is written in the normalised form `iptables-save` prints, so a
//! rule's command arguments and its saved line are the same text: the plan can
//! tell what exists by comparing lines, and tests can compare a saved table
//! with [`chain_rules`] directly.

use std::collections::BTreeSet;
use std::fmt;

use super::options::{CaptureOptions, Family, PortRange, Subnet};

/// The chain hooked from `PREROUTING`: connections into the pod.
pub const INBOUND_CHAIN: &str = "WEFT_INBOUND";
/// The chain hooked from `OUTPUT`: connections the pod's processes open.
pub const OUTBOUND_CHAIN: &str = "WEFT_OUTBOUND";
/// `-m multiport` takes at most 15 ports per rule (a range counts as two).
pub const MULTIPORT_MAX: usize = 15;

/// Which iptables implementation the commands go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
}

impl Backend {
    /// The rule command, e.g. `ip6tables-nft`.
    pub fn program(self, family: Family) -> String {
        format!("{}-{}", family.base(), self.suffix())
    }

    /// The dump command, e.g. `iptables-legacy-save`.
    pub fn save_program(self, family: Family) -> String {
        format!("{}-{}-save", family.base(), self.suffix())
    }

    fn suffix(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }
}

/// One command line: a program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub program: String,
    pub args: Vec<String>,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.program)?;
        for a in &self.args {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

/// What the nat table holds: its chains and its rules (`-A ...` lines).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatState {
    pub chains: BTreeSet<String>,
    pub rules: Vec<String>,
}

impl NatState {
    /// Reads `iptables-save -t nat` output (other tables, comments and
    /// counters are ignored).
    pub fn parse(save: &str) -> NatState {
        let mut state = NatState::default();
        let mut in_nat = false;
        for line in save.lines().map(str::trim) {
            if let Some(table) = line.strip_prefix('*') {
                in_nat = table == "nat";
            } else if !in_nat {
                continue;
            } else if let Some(decl) = line.strip_prefix(':') {
                if let Some(name) = decl.split_whitespace().next() {
                    state.chains.insert(name.to_string());
                }
            } else if line.starts_with("-A ") {
                state.rules.push(line.to_string());
            }
        }
        state
    }

    /// The table right after a set-up of an empty one: what `--cleanup
    /// --dry-run` plans against.
    pub fn after_setup(opts: &CaptureOptions, family: Family) -> NatState {
        let mut state = NatState::default();
        state.chains.insert(INBOUND_CHAIN.to_string());
        state.chains.insert(OUTBOUND_CHAIN.to_string());
        state.rules = hook_rules().into_iter().chain(chain_rules(opts, family)).collect();
        state
    }
}

/// The two hook rules, as saved.
pub fn hook_rules() -> Vec<String> {
    vec![
        format!("-A PREROUTING -p tcp -j {INBOUND_CHAIN}"),
        format!("-A OUTPUT -p tcp -j {OUTBOUND_CHAIN}"),
    ]
}

/// The rules of both weft chains, in order, as saved.
pub fn chain_rules(opts: &CaptureOptions, family: Family) -> Vec<String> {
    let mut rules = Vec::new();
    let inbound = format!("-A {INBOUND_CHAIN}");
    // The admin port is always skipped: the kubelet probes weft itself there.
    let mut inbound_ports = vec![PortRange::single(opts.admin_port)];
    inbound_ports.extend(opts.skip_inbound_ports.iter().copied());
    rules.extend(port_returns(&inbound, &dedup(inbound_ports)));
    rules.extend(subnet_returns(&inbound, "-s", &opts.skip_subnets, family));
    rules.push(format!("{inbound} -p tcp -j REDIRECT --to-ports {}", opts.inbound_port));

    let outbound = format!("-A {OUTBOUND_CHAIN}");
    // weft's own connections must never be captured again (a loop).
    rules.push(format!("{outbound} -m owner --uid-owner {} -j RETURN", opts.proxy_uid));
    rules.push(format!("{outbound} -o lo -j RETURN"));
    rules.extend(port_returns(&outbound, &dedup(opts.skip_outbound_ports.clone())));
    rules.extend(subnet_returns(&outbound, "-d", &opts.skip_subnets, family));
    rules.push(format!(
        "{outbound} -p tcp -j REDIRECT --to-ports {}",
        opts.outbound_port
    ));
    rules
}

fn dedup(mut ports: Vec<PortRange>) -> Vec<PortRange> {
    let mut seen = BTreeSet::new();
    ports.retain(|p| seen.insert(*p));
    ports
}

/// `RETURN` rules for the ports, split so that no rule exceeds
/// [`MULTIPORT_MAX`] (a range takes two of the slots).
fn port_returns(head: &str, ports: &[PortRange]) -> Vec<String> {
    let mut rules = Vec::new();
    let mut group: Vec<String> = Vec::new();
    let mut slots = 0;
    for p in ports {
        if slots + p.slots() > MULTIPORT_MAX {
            rules.push(multiport_rule(head, &group));
            group.clear();
            slots = 0;
        }
        group.push(p.to_string());
        slots += p.slots();
    }
    if !group.is_empty() {
        rules.push(multiport_rule(head, &group));
    }
    rules
}

fn multiport_rule(head: &str, ports: &[String]) -> String {
    format!("{head} -p tcp -m multiport --dports {} -j RETURN", ports.join(","))
}

fn subnet_returns(head: &str, flag: &str, subnets: &[Subnet], family: Family) -> Vec<String> {
    subnets
        .iter()
        .filter(|s| s.family() == family)
        .map(|s| format!("{head} {flag} {s} -j RETURN"))
        .collect()
}

/// The commands that bring the table from `state` to weft's rules: weft's
/// chains created (or flushed when they exist) and refilled, then each hook
/// added unless the table already has it. Running the result on its own
/// outcome again yields the same table.
pub fn setup(opts: &CaptureOptions, family: Family, backend: Backend, state: &NatState) -> Vec<Command> {
    let program = backend.program(family);
    let mut commands = Vec::new();
    for chain in [INBOUND_CHAIN, OUTBOUND_CHAIN] {
        let op = if state.chains.contains(chain) { "-F" } else { "-N" };
        commands.push(nat_command(&program, &[op, chain]));
    }
    // Hooks last, so capture starts only once both chains are complete.
    let rules = chain_rules(opts, family)
        .into_iter()
        .chain(hook_rules().into_iter().filter(|hook| !state.rules.contains(hook)));
    for rule in rules {
        commands.push(nat_rule_command(&program, &rule));
    }
    commands
}

/// The commands that remove every trace of weft from the table in `state`:
/// each rule anywhere that jumps to a weft chain, then the chains.
pub fn cleanup(family: Family, backend: Backend, state: &NatState) -> Vec<Command> {
    let program = backend.program(family);
    let weft_chains = [INBOUND_CHAIN, OUTBOUND_CHAIN];
    let mut commands = Vec::new();
    for rule in &state.rules {
        let mut words = rule.split_whitespace().skip(1);
        let chain = words.next().unwrap_or_default();
        let target = rule.split(" -j ").nth(1).and_then(|t| t.split_whitespace().next());
        if !weft_chains.contains(&chain) && target.is_some_and(|t| weft_chains.contains(&t)) {
            let delete = format!("-D{}", &rule[2..]);
            commands.push(nat_rule_command(&program, &delete));
        }
    }
    for chain in weft_chains.into_iter().filter(|c| state.chains.contains(*c)) {
        commands.push(nat_command(&program, &["-F", chain]));
        commands.push(nat_command(&program, &["-X", chain]));
    }
    commands
}

fn nat_command(program: &str, args: &[&str]) -> Command {
    let mut all = vec!["-t".to_string(), "nat".to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    Command {
        program: program.to_string(),
        args: all,
    }
}

fn nat_rule_command(program: &str, rule: &str) -> Command {
    let words: Vec<&str> = rule.split_whitespace().collect();
    nat_command(program, &words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str]) -> CaptureOptions {
        let mut o = CaptureOptions::default();
        for pair in args.chunks(2) {
            match pair[0] {
                "in" => o.skip_inbound_ports = PortRange::parse_list(pair[1]).unwrap(),
                "out" => o.skip_outbound_ports = PortRange::parse_list(pair[1]).unwrap(),
                "subnets" => o.skip_subnets = Subnet::parse_list(pair[1]).unwrap(),
                other => panic!("{other}"),
            }
        }
        o
    }

    fn lines(commands: &[Command]) -> Vec<String> {
        commands.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn default_rules_skip_admin_exempt_proxy_uid_and_redirect() {
        assert_eq!(
            chain_rules(&CaptureOptions::default(), Family::V4),
            [
                "-A WEFT_INBOUND -p tcp -m multiport --dports 9901 -j RETURN",
                "-A WEFT_INBOUND -p tcp -j REDIRECT --to-ports 15006",
                "-A WEFT_OUTBOUND -m owner --uid-owner 10001 -j RETURN",
                "-A WEFT_OUTBOUND -o lo -j RETURN",
                "-A WEFT_OUTBOUND -p tcp -j REDIRECT --to-ports 15001",
            ]
        );
    }

    #[test]
    fn multiport_rules_hold_at_most_fifteen_slots_and_ranges_count_two() {
        let ports: Vec<String> = (1..=20).map(|p| p.to_string()).collect();
        let o = opts(&["out", &format!("{},100-200", ports.join(","))]);
        let rules = chain_rules(&o, Family::V4);
        let multi: Vec<&String> = rules
            .iter()
            .filter(|r| r.contains("multiport") && r.contains("OUTBOUND"))
            .collect();
        assert_eq!(multi.len(), 2, "{multi:?}");
        assert!(multi[0].contains("--dports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15 "));
        assert!(multi[1].contains("--dports 16,17,18,19,20,100:200 "));
        // 14 single ports fill 14 slots: a range (two slots) must start a new rule.
        let o = opts(&["out", "1,2,3,4,5,6,7,8,9,10,11,12,13,14,30-40"]);
        let rules = chain_rules(&o, Family::V4);
        assert!(rules.contains(&"-A WEFT_OUTBOUND -p tcp -m multiport --dports 30:40 -j RETURN".to_string()));
    }

    #[test]
    fn subnets_go_to_their_family_by_source_inbound_and_destination_outbound() {
        let o = opts(&["subnets", "10.1.2.3/8,fd00::1/8,192.168.0.7"]);
        let v4 = chain_rules(&o, Family::V4);
        assert!(v4.contains(&"-A WEFT_INBOUND -s 10.0.0.0/8 -j RETURN".into()));
        assert!(v4.contains(&"-A WEFT_OUTBOUND -d 192.168.0.7/32 -j RETURN".into()));
        assert!(!v4.iter().any(|r| r.contains("fd00")));
        let v6 = chain_rules(&o, Family::V6);
        assert!(v6.contains(&"-A WEFT_OUTBOUND -d fd00::/8 -j RETURN".into()));
        assert!(!v6.iter().any(|r| r.contains("10.0.0.0")));
    }

    #[test]
    fn admin_port_given_again_as_skip_port_is_listed_once() {
        let rules = chain_rules(&opts(&["in", "9901,22"]), Family::V4);
        assert_eq!(
            rules[0],
            "-A WEFT_INBOUND -p tcp -m multiport --dports 9901,22 -j RETURN"
        );
    }

    #[test]
    fn setup_on_its_own_result_flushes_and_adds_no_second_hook() {
        let o = CaptureOptions::default();
        let fresh = lines(&setup(&o, Family::V4, Backend::Nft, &NatState::default()));
        assert_eq!(fresh[0], "iptables-nft -t nat -N WEFT_INBOUND");
        assert_eq!(
            fresh.last().unwrap(),
            "iptables-nft -t nat -A OUTPUT -p tcp -j WEFT_OUTBOUND"
        );
        let again = lines(&setup(
            &o,
            Family::V4,
            Backend::Nft,
            &NatState::after_setup(&o, Family::V4),
        ));
        assert_eq!(again[0], "iptables-nft -t nat -F WEFT_INBOUND");
        assert!(!again
            .iter()
            .any(|c| c.contains("PREROUTING") || c.contains("-A OUTPUT")));
        assert_eq!(again.len(), fresh.len() - 2);
    }

    #[test]
    fn cleanup_deletes_every_jump_then_the_chains() {
        let save = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j WEFT_INBOUND\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n\
                    :WEFT_INBOUND - [0:0]\n-A PREROUTING -p tcp -j WEFT_INBOUND\n-A PREROUTING -p tcp -j WEFT_INBOUND\n\
                    -A PREROUTING -p udp -j DNAT --to-destination 1.2.3.4\n-A WEFT_INBOUND -p tcp -j REDIRECT --to-ports 1\nCOMMIT\n";
        let state = NatState::parse(save);
        assert_eq!(
            lines(&cleanup(Family::V6, Backend::Legacy, &state)),
            [
                "ip6tables-legacy -t nat -D PREROUTING -p tcp -j WEFT_INBOUND",
                "ip6tables-legacy -t nat -D PREROUTING -p tcp -j WEFT_INBOUND",
                "ip6tables-legacy -t nat -F WEFT_INBOUND",
                "ip6tables-legacy -t nat -X WEFT_INBOUND",
            ]
        );
        assert!(cleanup(Family::V4, Backend::Nft, &NatState::default()).is_empty());
    }
}
