//! Machine profiles: what a model of printer or mill is, as data files in
//! `machines/profiles/*.toml` (compiled in, so the daemon needs no files
//! beside it). A profile gives the driver its firmware, baud, buffer and
//! scripts, the estimator its limits, and routing its kind and volume.

use std::path::PathBuf;

use microfactory_protocol::kinematics::MachineLimits;
use serde::Deserialize;
use thiserror::Error;

use crate::driver::{DriverConfig, Firmware, Scripts};

/// What the machine makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineKind {
    /// FDM printer (extrudes).
    Printer,
    /// CNC mill (spindle).
    Mill,
}

/// A machine model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Human name.
    pub name: String,
    /// Printer or mill.
    pub kind: MachineKind,
    /// Host protocol.
    pub firmware: Firmware,
    /// Link rate.
    pub baud: u32,
    /// Usable volume X, Y, Z in mm.
    pub build_volume_mm: [f64; 3],
    /// Firmware serial receive buffer, bytes.
    pub rx_buffer: usize,
    /// Motion limits for the time estimate.
    #[serde(default)]
    pub limits: MachineLimits,
    /// Park, unpark and cancel scripts.
    #[serde(default)]
    pub scripts: Scripts,
    /// Marlin: firmware prints `ok` after `Resend:` (older 2.0.x).
    #[serde(default)]
    pub ok_after_resend: Option<bool>,
}

/// Why a profile could not be loaded.
#[derive(Debug, Error)]
pub enum ProfileError {
    /// No built-in profile has that id.
    #[error("unknown machine profile '{0}' (known: {known})", known = builtin_ids().join(", "))]
    Unknown(String),
    /// The TOML is invalid; the message names the key and line.
    #[error("profile {id}: {message}")]
    Invalid { id: String, message: String },
}

const BUILTIN: &[(&str, &str)] = &[
    ("prusa-mk3s", include_str!("../profiles/prusa-mk3s.toml")),
    (
        "creality-ender3",
        include_str!("../profiles/creality-ender3.toml"),
    ),
    ("grbl-3018", include_str!("../profiles/grbl-3018.toml")),
];

/// Ids of the built-in profiles (file names without `.toml`).
pub fn builtin_ids() -> Vec<&'static str> {
    BUILTIN.iter().map(|(id, _)| *id).collect()
}

impl Profile {
    /// Parses a profile's TOML text.
    pub fn parse(id: &str, text: &str) -> Result<Self, ProfileError> {
        let p: Profile = toml::from_str(text).map_err(|e| ProfileError::Invalid {
            id: id.to_string(),
            message: e.to_string(),
        })?;
        if p.baud < 300
            || p.rx_buffer < 16
            || p.build_volume_mm.iter().any(|v| v.is_nan() || *v <= 0.0)
        {
            return Err(ProfileError::Invalid {
                id: id.to_string(),
                message: "baud must be at least 300, rx_buffer at least 16 and every build volume side positive".into(),
            });
        }
        Ok(p)
    }

    /// A built-in profile by id.
    pub fn builtin(id: &str) -> Result<Self, ProfileError> {
        let (_, text) = BUILTIN
            .iter()
            .find(|(i, _)| *i == id)
            .ok_or_else(|| ProfileError::Unknown(id.to_string()))?;
        Self::parse(id, text)
    }

    /// A driver configuration for a machine of this model on `port`.
    pub fn driver_config(&self, machine_id: &str, port: impl Into<PathBuf>) -> DriverConfig {
        let mut c = DriverConfig::new(machine_id, port, self.baud, self.firmware);
        c.rx_buffer = self.rx_buffer;
        c.scripts = self.scripts.clone();
        c.ok_after_resend = self.ok_after_resend;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_profile_parses_and_every_file_is_built_in() {
        for id in builtin_ids() {
            Profile::builtin(id).unwrap_or_else(|e| panic!("{e}"));
        }
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/profiles");
        let files = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        assert_eq!(
            files,
            builtin_ids().len(),
            "a profile file is not listed in BUILTIN"
        );
    }

    #[test]
    fn unknown_keys_and_unknown_ids_are_errors_that_say_what() {
        let e = Profile::parse("x", "name = \"a\"\nkind = \"printer\"\nfirmware = \"marlin\"\nbaud = 115200\nbuild_volume_mm = [1.0, 1.0, 1.0]\nrx_buffer = 128\nspeed = 3\n")
            .expect_err("unknown key");
        assert!(e.to_string().contains("speed"), "{e}");
        let e = Profile::builtin("nope").expect_err("unknown");
        assert!(e.to_string().contains("prusa-mk3s"), "{e}");
    }
}
