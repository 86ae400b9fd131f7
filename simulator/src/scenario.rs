//! A scenario: the city, the stretch of the day to play and how fast, the faults to
//! inject, the cards to blacklist while it plays, the fraud to plant, and how long to wait. Read from TOML (`load/scenarios/*.toml`); unknown keys
//! are errors that name the key.

use crate::fraud::{FRAUD_CARD_OFFSET, FraudConfig};
use crate::plan::CityConfig;
use serde::Deserialize;
use std::path::Path;

/// A whole scenario.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    /// What it is for (printed in the report).
    pub description: String,
    /// Seeds the plan and every device's jitter: the same seed and scenario give the same
    /// transactions.
    pub seed: u64,
    /// The city.
    pub city: CityConfig,
    /// The simulated clock.
    pub clock: ClockConfig,
    /// Injected faults.
    pub faults: FaultsConfig,
    /// Cards blacklisted while the day plays (`[hotlist]`, optional).
    pub hotlist: HotlistConfig,
    /// Fraud planted into the day and scored at its end (`[fraud]`, optional; see
    /// [`crate::fraud`]).
    pub fraud: FraudConfig,
    /// Waits.
    pub run: RunConfig,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            description: String::new(),
            seed: 1,
            city: CityConfig::default(),
            clock: ClockConfig::default(),
            faults: FaultsConfig::default(),
            hotlist: HotlistConfig::default(),
            fraud: FraudConfig::default(),
            run: RunConfig::default(),
        }
    }
}

/// Which hours of the day are played, in how much real time.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockConfig {
    /// First hour played (0–23, Asia/Shanghai).
    pub from_hour: u32,
    /// Hour the play stops (1–24).
    pub to_hour: u32,
    /// Real seconds the played hours take (the clock's acceleration follows).
    pub real_seconds: u64,
    /// The simulated date `yyyymmdd`; 0 = today in Shanghai.
    pub date: u32,
}

impl Default for ClockConfig {
    fn default() -> Self {
        Self {
            from_hour: 0,
            to_hour: 24,
            real_seconds: 60,
            date: 0,
        }
    }
}

/// Faults, each off at its default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultsConfig {
    /// Mean real seconds between random connection drops, per device; 0 = none.
    pub disconnect_mean_s: u64,
    /// Devices (per mille) that read slowly.
    pub slow_reader_per_mille: u32,
    /// How late a slow reader reads each frame.
    pub slow_read_ms: u64,
    /// Devices (per mille) that lose the network for a while and flush their backlog after.
    pub offline_per_mille: u32,
    /// Simulated hour the outage starts.
    pub offline_from_hour: u32,
    /// Simulated hours it lasts.
    pub offline_hours: u32,
    /// Device clocks are off by up to this much, either way.
    pub clock_skew_max_ms: i64,
    /// Real seconds after the day starts at which every device drops its connection at
    /// once (reconnect storms).
    pub storm_at_s: Vec<u64>,
    /// Longest random wait before a dropped device reconnects.
    pub reconnect_jitter_ms: u64,
}

impl Default for FaultsConfig {
    fn default() -> Self {
        Self {
            disconnect_mean_s: 0,
            slow_reader_per_mille: 0,
            slow_read_ms: 0,
            offline_per_mille: 0,
            offline_from_hour: 0,
            offline_hours: 0,
            clock_skew_max_ms: 0,
            storm_at_s: Vec::new(),
            reconnect_jitter_ms: 2_000,
        }
    }
}

/// Most plantings one scenario makes: each is a new hot-list version pushed to every
/// terminal, and a handful already shows propagation.
pub const HOTLIST_PLANTINGS_MAX: usize = 64;
/// Most cards one planting blacklists: one import file, one store transaction.
pub const HOTLIST_CARDS_PER_ADD_MAX: usize = 100_000;

/// `[hotlist]`: cards the run blacklists through the gateway's command line
/// (`blacklist import`) while the day plays, to measure how fast the new versions reach
/// the terminals and that the terminals then refuse those cards. Off by default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HotlistConfig {
    /// Real seconds after the day starts at which the run blacklists cards (leave time
    /// after the last one for the update to reach the devices: the run does not wait).
    pub add_at_s: Vec<u64>,
    /// Cards blacklisted each time, drawn by the seed from the cards the plan uses for
    /// purchases and sign-ins (those used later in the day first).
    pub cards_per_add: usize,
}

impl Default for HotlistConfig {
    fn default() -> Self {
        Self {
            add_at_s: Vec::new(),
            cards_per_add: 10,
        }
    }
}

/// Waits around the played hours.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Real seconds for the devices to connect before the clock starts.
    pub connect_s: u64,
    /// After the played hours, longest wait for every transaction's answer.
    pub settle_timeout_s: u64,
    /// Keep the sessions open this long after the day (idle-connection scenarios).
    pub hold_s: u64,
    /// Source addresses 127.0.0.1 … 127.0.0.N the devices connect from (one pair of
    /// addresses gives ~28,000 ephemeral ports).
    pub source_addresses: u32,
    /// After the day: clear and approve it, deliver the credits (OTA pushes, cards
    /// presented), and check that every released credit was loaded (one process only).
    pub deliver: bool,
    /// `bench`: devices in the registry it generates (0 = the shipped registry).
    pub devices: usize,
    /// `bench`: simulator processes (each holds at most ~19,000 connections).
    pub processes: u32,
    /// `bench`: gateway processes on the one PostgreSQL; simulator process i drives
    /// gateway i mod `gateways`.
    pub gateways: u32,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            connect_s: 3,
            settle_timeout_s: 120,
            hold_s: 0,
            source_addresses: 1,
            deliver: false,
            devices: 0,
            processes: 1,
            gateways: 1,
        }
    }
}

/// A scenario that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file cannot be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML, or a key is unknown or of the wrong type.
    #[error("scenario {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Where and why.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("scenario: {key} {problem}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let scenario: Self = toml::from_str(&text).map_err(|source| ScenarioError::Parse {
            path: path.display().to_string(),
            source,
        })?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |key, problem: &str| {
            Err(ScenarioError::Invalid {
                key,
                problem: problem.to_owned(),
            })
        };
        let c = &self.clock;
        if c.to_hour > 24 || c.from_hour >= c.to_hour {
            return bad("clock.from_hour/to_hour", "must satisfy 0 ≤ from < to ≤ 24");
        }
        if c.real_seconds == 0 {
            return bad("clock.real_seconds", "must be at least 1");
        }
        if self.city.hourly_weights.len() != 24 {
            return bad("city.hourly_weights", "must have 24 values");
        }
        let mix = self.city.bookstore_per_mille
            + self.city.cinema_per_mille
            + self.city.performance_per_mille
            + self.city.sign_in_per_mille;
        if mix > 1_000 {
            return bad(
                "city.*_per_mille",
                "purchase and sign-in shares exceed 1,000",
            );
        }
        let f = &self.faults;
        if f.slow_reader_per_mille > 1_000 || f.offline_per_mille > 1_000 {
            return bad("faults.*_per_mille", "must be at most 1,000");
        }
        if f.offline_from_hour + f.offline_hours > 24 {
            return bad("faults.offline_hours", "the outage must end within the day");
        }
        if !(1..=64).contains(&self.run.processes) {
            return bad("run.processes", "must be 1 to 64");
        }
        if !(1..=16).contains(&self.run.gateways) || self.run.gateways > self.run.processes {
            return bad(
                "run.gateways",
                "must be 1 to 16, and no more than run.processes",
            );
        }
        if self.run.deliver && self.run.processes != 1 {
            return bad("run.deliver", "needs run.processes = 1");
        }
        if !(1..=250).contains(&self.run.source_addresses) {
            return bad("run.source_addresses", "must be 1 to 250");
        }
        let h = &self.hotlist;
        if h.add_at_s.len() > HOTLIST_PLANTINGS_MAX {
            return bad("hotlist.add_at_s", "must list at most 64 times");
        }
        if !h.add_at_s.is_empty() && !(1..=HOTLIST_CARDS_PER_ADD_MAX).contains(&h.cards_per_add) {
            return bad("hotlist.cards_per_add", "must be 1 to 100,000");
        }
        if let Some((key, max)) = self.fraud.over_bound() {
            return bad(key, format!("must be at most {max}").as_str());
        }
        if self.fraud.plants_any() {
            // The resident reports, the cases and the honest transactions are counted by
            // one process that runs every device.
            if self.run.processes != 1 {
                return bad("fraud", "needs run.processes = 1");
            }
            // Planted cards are numbered past every city card.
            if self.city.city_cards > FRAUD_CARD_OFFSET {
                return bad(
                    "city.city_cards",
                    "must be at most 900,000,000,000 with [fraud]",
                );
            }
        }
        Ok(())
    }

    /// Simulated ms per real ms.
    pub fn speed(&self) -> u64 {
        let played_ms = u64::from(self.clock.to_hour - self.clock.from_hour) * 3_600_000;
        (played_ms / (self.clock.real_seconds * 1_000)).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_scenarios_parse_and_unknown_keys_are_named() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../load/scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path).unwrap();
                n += 1;
            }
        }
        assert!(n >= 5, "{n} scenarios in {}", dir.display());
        let err = toml::from_str::<Scenario>("[faults]\nstorms = 3\n").unwrap_err();
        assert!(err.to_string().contains("storms"), "{err}");
        let s = Scenario {
            clock: ClockConfig {
                from_hour: 5,
                to_hour: 5,
                ..ClockConfig::default()
            },
            ..Scenario::default()
        };
        assert!(s.validate().unwrap_err().to_string().contains("from_hour"));
    }

    #[test]
    fn the_hotlist_table_is_optional_and_checked() {
        let s: Scenario = toml::from_str("seed = 3\n").unwrap();
        assert!(s.hotlist.add_at_s.is_empty());
        let s: Scenario =
            toml::from_str("[hotlist]\nadd_at_s = [10, 20]\ncards_per_add = 3\n").unwrap();
        assert_eq!(s.hotlist.add_at_s, vec![10, 20]);
        assert_eq!(s.hotlist.cards_per_add, 3);
        s.validate().unwrap();
        let err = toml::from_str::<Scenario>("[hotlist]\nadd_at = [10]\n").unwrap_err();
        assert!(err.to_string().contains("add_at"), "{err}");
        let s: Scenario =
            toml::from_str("[hotlist]\nadd_at_s = [10]\ncards_per_add = 0\n").unwrap();
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("cards_per_add")
        );
    }

    #[test]
    fn the_fraud_table_is_optional_and_checked() {
        let s: Scenario = toml::from_str("seed = 3\n").unwrap();
        assert!(!s.fraud.plants_any());
        let s: Scenario =
            toml::from_str("[fraud]\ntravel_cards = 3\nspiking_merchants = 1\n").unwrap();
        assert_eq!((s.fraud.travel_cards, s.fraud.spiking_merchants), (3, 1));
        assert_eq!(s.fraud.reported_cards, 0);
        s.validate().unwrap();
        let err = toml::from_str::<Scenario>("[fraud]\ntravel = 3\n").unwrap_err();
        assert!(err.to_string().contains("travel"), "{err}");
        let s: Scenario = toml::from_str("[fraud]\ncolluding_merchants = 11\n").unwrap();
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("fraud.colluding_merchants")
        );
        let s: Scenario =
            toml::from_str("[fraud]\nreported_cards = 1\n[run]\nprocesses = 2\n").unwrap();
        assert!(s.validate().unwrap_err().to_string().contains("processes"));
    }
}
