//! What to capture: ports, the proxy's uid, and the ports and subnets that
//! bypass weft, parsed from the comma-separated forms the flags and the pod
//! annotations use. Parsing normalises (a subnet's host bits are cleared, a
//! bare address becomes `/32` or `/128`) so values print as `iptables-save`
//! prints them.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Where connections go, whom they skip: the whole input of the rule plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureOptions {
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub proxy_uid: u32,
    pub admin_port: u16,
    pub skip_inbound_ports: Vec<PortRange>,
    pub skip_outbound_ports: Vec<PortRange>,
    pub skip_subnets: Vec<Subnet>,
}

/// Defaults shared by `weft init-iptables` and `weft inject`.
pub const DEFAULT_INBOUND_PORT: u16 = 15006;
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
/// The uid of the `weft` user in the image (see the Dockerfile).
pub const DEFAULT_PROXY_UID: u32 = 10001;
pub const DEFAULT_ADMIN_PORT: u16 = 9901;

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            inbound_port: DEFAULT_INBOUND_PORT,
            outbound_port: DEFAULT_OUTBOUND_PORT,
            proxy_uid: DEFAULT_PROXY_UID,
            admin_port: DEFAULT_ADMIN_PORT,
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
            skip_subnets: Vec::new(),
        }
    }
}

/// IPv4 (`iptables`) or IPv6 (`ip6tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    pub fn base(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

/// One port or an inclusive range (`8000-8010` or `8000:8010`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn single(port: u16) -> PortRange {
        PortRange {
            first: port,
            last: port,
        }
    }

    /// Slots taken in a multiport rule: a range takes two.
    pub fn slots(self) -> usize {
        if self.first == self.last {
            1
        } else {
            2
        }
    }

    /// A comma-separated list; blanks around items and empty items are ignored.
    pub fn parse_list(text: &str) -> Result<Vec<PortRange>, String> {
        split_list(text).map(str::parse).collect()
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let port = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p != 0);
        let range = match s.split_once(['-', ':']) {
            Some((a, b)) => port(a).zip(port(b)).filter(|(a, b)| a <= b),
            None => port(s).map(|p| (p, p)),
        };
        range
            .map(|(first, last)| PortRange { first, last })
            .ok_or_else(|| format!("{s:?} is not a port (1-65535) or a range of ports (first-last)"))
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

/// An address block in CIDR notation, stored with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: IpAddr,
    pub prefix: u8,
}

impl Subnet {
    pub fn family(&self) -> Family {
        match self.network {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// A comma-separated list of CIDRs or bare addresses.
    pub fn parse_list(text: &str) -> Result<Vec<Subnet>, String> {
        split_list(text).map(str::parse).collect()
    }
}

impl FromStr for Subnet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a subnet (CIDR like 10.0.0.0/8 or fd00::/8, or an address)");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let bits: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(bits);
        if prefix > bits {
            return Err(bad());
        }
        // Shifting by the full width yields no mask bits (a /0).
        let network = match addr {
            IpAddr::V4(a) => {
                IpAddr::V4((u32::from(a) & u32::MAX.checked_shl(u32::from(32 - prefix)).unwrap_or(0)).into())
            }
            IpAddr::V6(a) => {
                IpAddr::V6((u128::from(a) & u128::MAX.checked_shl(u32::from(128 - prefix)).unwrap_or(0)).into())
            }
        };
        Ok(Subnet { network, prefix })
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn split_list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Writes a list back in its comma-separated form.
pub fn join<T: fmt::Display>(items: &[T]) -> String {
    items.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_ranges_parse_and_bad_ones_are_named() {
        let list = PortRange::parse_list(" 22, 8000-8010,9000:9001,").unwrap();
        assert_eq!(join(&list), "22,8000:8010,9000:9001");
        for bad in ["0", "70000", "http", "10-5", "1-"] {
            let err = PortRange::parse_list(bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn subnets_are_normalised_and_bad_ones_refused() {
        let list = Subnet::parse_list("10.1.2.3/8, 192.168.1.1 ,fd00::1:2/16,::1,0.0.0.0/0").unwrap();
        assert_eq!(join(&list), "10.0.0.0/8,192.168.1.1/32,fd00::/16,::1/128,0.0.0.0/0");
        for bad in ["10.0.0.0/33", "fd00::/129", "10.0.0/8", "x/8", "10.0.0.0/-1"] {
            assert!(Subnet::parse_list(bad).is_err(), "{bad}");
        }
    }
}
