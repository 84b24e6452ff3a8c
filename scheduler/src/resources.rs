//! Resource vectors: cpu millicores, memory bytes and a few named scalars.
//!
//! A [`Resources`] value is `Copy` and fixed-size so the hot placement path
//! compares and subtracts vectors without allocating. Scalars occupy one of
//! [`SCALAR_SLOTS`] positions, each with a fixed meaning ([`SCALAR_NAMES`]):
//! GPUs (in thousandths), executors a host may run, and host ports. A node
//! that offers none of one (capacity 0) takes only slots that ask for none.

use std::fmt;
use std::ops::{Add, AddAssign, Sub, SubAssign};

use serde::{Deserialize, Serialize};

/// How many scalar resources there are.
pub const SCALAR_SLOTS: usize = 4;
/// GPUs, in thousandths of a GPU.
pub const GPU: usize = 0;
/// Executor processes: a host runs at most its capacity of them (the kubelet's `--max-pods`).
pub const EXECUTORS: usize = 2;
/// Host ports a slot is given (a service instance's `ports`).
pub const PORTS: usize = 3;
/// What each scalar slot measures.
pub const SCALAR_NAMES: [&str; SCALAR_SLOTS] = ["gpu", "scalar1", "executors", "ports"];

/// A vector of resource amounts. Ordered lexicographically (cpu first), for use as a key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    #[serde(default)]
    pub scalars: [u64; SCALAR_SLOTS],
}

impl Resources {
    pub const ZERO: Resources = Resources { cpu_millis: 0, memory_bytes: 0, scalars: [0; SCALAR_SLOTS] };

    pub const fn new(cpu_millis: u64, memory_bytes: u64) -> Self {
        Resources { cpu_millis, memory_bytes, scalars: [0; SCALAR_SLOTS] }
    }

    pub fn with_scalar(mut self, slot: usize, amount: u64) -> Self {
        self.scalars[slot] = amount;
        self
    }

    pub fn is_zero(&self) -> bool {
        *self == Resources::ZERO
    }

    /// True when every component of `self` is at most the one in `other`.
    #[inline]
    pub fn fits_in(&self, other: &Resources) -> bool {
        self.cpu_millis <= other.cpu_millis
            && self.memory_bytes <= other.memory_bytes
            && self.scalars.iter().zip(other.scalars.iter()).all(|(a, b)| a <= b)
    }

    /// How many copies of `shape` fit in `self` (u32::MAX for an all-zero shape).
    #[inline]
    pub fn count_fitting(&self, shape: &Resources) -> u32 {
        self.count_fitting_up_to(shape, u32::MAX)
    }

    /// [`Resources::count_fitting`], but at most `limit`: a search that wants
    /// one slot compares instead of dividing.
    #[inline]
    pub fn count_fitting_up_to(&self, shape: &Resources, limit: u32) -> u32 {
        if limit == 0 {
            return 0;
        }
        if !shape.fits_in(self) {
            return 0;
        }
        if limit == 1 {
            return 1;
        }
        let mut n = limit as u64;
        let mut dim = |have: u64, need: u64| {
            if let Some(copies) = have.checked_div(need) {
                n = n.min(copies);
            }
        };
        dim(self.cpu_millis, shape.cpu_millis);
        dim(self.memory_bytes, shape.memory_bytes);
        for (h, s) in self.scalars.iter().zip(shape.scalars.iter()) {
            if *s > 0 {
                dim(*h, *s);
            }
        }
        n.min(u32::MAX as u64) as u32
    }

    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        let mut out = Resources::new(
            self.cpu_millis.saturating_sub(other.cpu_millis),
            self.memory_bytes.saturating_sub(other.memory_bytes),
        );
        for i in 0..SCALAR_SLOTS {
            out.scalars[i] = self.scalars[i].saturating_sub(other.scalars[i]);
        }
        out
    }

    pub fn times(&self, n: u32) -> Resources {
        let n = n as u64;
        let mut out = Resources::new(self.cpu_millis * n, self.memory_bytes * n);
        for i in 0..SCALAR_SLOTS {
            out.scalars[i] = self.scalars[i] * n;
        }
        out
    }

    /// The largest fraction this vector takes of `total` over all dimensions:
    /// the "dominant share" of dominant-resource fairness.
    pub fn dominant_share(&self, total: &Resources) -> f64 {
        let frac = |a: u64, t: u64| if t == 0 { 0.0 } else { a as f64 / t as f64 };
        let mut s = frac(self.cpu_millis, total.cpu_millis).max(frac(self.memory_bytes, total.memory_bytes));
        for i in 0..SCALAR_SLOTS {
            s = s.max(frac(self.scalars[i], total.scalars[i]));
        }
        s
    }

    /// `self` scaled by a fraction (used for queue guarantees and caps).
    pub fn fraction(&self, f: f64) -> Resources {
        let scale = |v: u64| (v as f64 * f).round() as u64;
        let mut out = Resources::new(scale(self.cpu_millis), scale(self.memory_bytes));
        for i in 0..SCALAR_SLOTS {
            out.scalars[i] = scale(self.scalars[i]);
        }
        out
    }
}

impl Add for Resources {
    type Output = Resources;
    fn add(mut self, rhs: Resources) -> Resources {
        self += rhs;
        self
    }
}

impl AddAssign for Resources {
    fn add_assign(&mut self, rhs: Resources) {
        self.cpu_millis += rhs.cpu_millis;
        self.memory_bytes += rhs.memory_bytes;
        for i in 0..SCALAR_SLOTS {
            self.scalars[i] += rhs.scalars[i];
        }
    }
}

impl Sub for Resources {
    type Output = Resources;
    fn sub(mut self, rhs: Resources) -> Resources {
        self -= rhs;
        self
    }
}

impl SubAssign for Resources {
    /// Panics in debug builds on underflow: subtracting more than is held is
    /// an accounting bug, never an input error.
    fn sub_assign(&mut self, rhs: Resources) {
        self.cpu_millis -= rhs.cpu_millis;
        self.memory_bytes -= rhs.memory_bytes;
        for i in 0..SCALAR_SLOTS {
            self.scalars[i] -= rhs.scalars[i];
        }
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} cpu, {}", format_cpu(self.cpu_millis), format_bytes(self.memory_bytes))?;
        for (i, v) in self.scalars.iter().enumerate() {
            match (i, *v) {
                (_, 0) => {}
                // Every live slot is one executor: saying so would only add noise.
                (EXECUTORS, 1) => {}
                (GPU, v) => write!(f, ", {} gpu", v as f64 / 1000.0)?,
                (i, v) => write!(f, ", {v} {}", SCALAR_NAMES[i])?,
            }
        }
        Ok(())
    }
}

/// Formats millicores the way people write them: `2`, `1.5`, `250m`.
pub fn format_cpu(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        format!("{}", millis / 1000)
    } else if millis < 1000 {
        format!("{millis}m")
    } else {
        format!("{:.1}", millis as f64 / 1000.0)
    }
}

/// Formats bytes with binary units: `512 MiB`, `4 GiB`, `1.5 TiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if (v - v.round()).abs() < 0.05 {
        format!("{} {}", v.round() as u64, UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Why a resource quantity could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantityError {
    #[error("empty quantity")]
    Empty,
    #[error("`{0}` is not a cpu amount: use cores (`2`, `0.5`) or millicores (`500m`)")]
    Cpu(String),
    #[error("`{0}` is not a memory amount: use bytes or a unit (`512MiB`, `4GiB`, `1G`)")]
    Memory(String),
    #[error("`{0}` is more than any machine has")]
    TooLarge(String),
}

/// Quantities up to a million cores and an exbibyte: beyond, a typo, and
/// a rounding of the float into a saturated `u64` would hide it.
const MAX_MILLICORES: u64 = 1_000_000_000;
const MAX_BYTES: u64 = 1 << 60;

/// Parses a cpu amount in cores (`"2"`, `"0.5"`) or millicores (`"500m"`).
pub fn parse_cpu(text: &str) -> Result<u64, QuantityError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(QuantityError::Empty);
    }
    let bad = || QuantityError::Cpu(text.to_string());
    let millicores = if let Some(m) = t.strip_suffix('m') {
        let digits = m.trim();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        digits.parse::<u64>().unwrap_or(u64::MAX)
    } else {
        let cores: f64 = t.parse().map_err(|_| bad())?;
        if !cores.is_finite() || cores < 0.0 {
            return Err(bad());
        }
        (cores * 1000.0).round().min(u64::MAX as f64) as u64
    };
    if millicores > MAX_MILLICORES {
        return Err(QuantityError::TooLarge(text.to_string()));
    }
    Ok(millicores)
}

/// Parses a memory amount: plain bytes or a number with a decimal (`K`, `M`,
/// `G`, `T`, optionally followed by `B`) or binary (`Ki`, `Mi`, `Gi`, `Ti`,
/// optionally followed by `B`) unit, as Kubernetes and Slurm users write them.
pub fn parse_memory(text: &str) -> Result<u64, QuantityError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(QuantityError::Empty);
    }
    let bad = || QuantityError::Memory(text.to_string());
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim();
    let unit = unit.strip_suffix(['B', 'b']).unwrap_or(unit);
    let factor: u64 = match unit {
        "" => 1,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return Err(bad()),
    };
    if !value.is_finite() || value < 0.0 {
        return Err(bad());
    }
    let bytes = (value * factor as f64).round();
    if bytes > MAX_BYTES as f64 {
        return Err(QuantityError::TooLarge(text.to_string()));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities() {
        assert_eq!(parse_cpu("500m"), Ok(500));
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert_eq!(parse_cpu("0.25"), Ok(250));
        assert!(parse_cpu("two").is_err());
        assert!(parse_cpu("-1").is_err());
        assert!(parse_cpu("m").is_err());
        assert_eq!(parse_cpu("1e12"), Err(QuantityError::TooLarge("1e12".into())));
        assert_eq!(
            parse_cpu("99999999999999999999999m"),
            Err(QuantityError::TooLarge("99999999999999999999999m".into()))
        );
    }

    #[test]
    fn memory_quantities() {
        assert_eq!(parse_memory("1GiB"), Ok(1 << 30));
        assert_eq!(parse_memory("512Mi"), Ok(512 << 20));
        assert_eq!(parse_memory("1G"), Ok(1_000_000_000));
        assert_eq!(parse_memory("4096"), Ok(4096));
        assert_eq!(parse_memory("1.5GiB"), Ok(3 << 29));
        assert!(parse_memory("1 parsec").is_err());
        // Not clamped to u64::MAX: refused
        let huge = "99999999999999999999";
        assert_eq!(parse_memory(huge), Err(QuantityError::TooLarge(huge.into())));
        assert_eq!(parse_memory("2000000TiB"), Err(QuantityError::TooLarge("2000000TiB".into())));
    }

    #[test]
    fn fitting_and_shares() {
        let node = Resources::new(8000, 16 << 30);
        let slot = Resources::new(3000, 2 << 30);
        assert_eq!(node.count_fitting(&slot), 2);
        assert!(slot.fits_in(&node));
        assert_eq!(slot.times(2).dominant_share(&node), 0.75);
        assert_eq!(format!("{}", slot), "3 cpu, 2 GiB");
    }
}
