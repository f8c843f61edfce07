//! Which console commands may be sent while a job streams: queries only.
//! A move or a state change (`G28`, `M104`, `$X`) would land in the middle
//! of the job's command stream and spoil the part, so it waits until the
//! job is paused or ended.

use microfactory_machines::driver::Firmware;

/// Marlin commands that only report.
const MARLIN_QUERIES: [&str; 8] = ["M105", "M114", "M115", "M119", "M27", "M31", "M503", "M78"];

/// GRBL commands that only report.
const GRBL_QUERIES: [&str; 7] = ["?", "$G", "$#", "$$", "$I", "$N", "$"];

/// Whether `command` only asks the firmware for information.
pub fn is_query(firmware: Firmware, command: &str) -> bool {
    let c = command.trim();
    match firmware {
        Firmware::Marlin => {
            let word = c
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            MARLIN_QUERIES.contains(&word.as_str())
        }
        Firmware::Grbl => GRBL_QUERIES.iter().any(|q| c.eq_ignore_ascii_case(q)),
    }
}

/// The allowed queries, for error messages.
pub fn queries(firmware: Firmware) -> String {
    match firmware {
        Firmware::Marlin => MARLIN_QUERIES.join(", "),
        Firmware::Grbl => GRBL_QUERIES.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reports_pass_during_a_job() {
        for q in ["M105", "m114", "M115 ", "M27"] {
            assert!(is_query(Firmware::Marlin, q), "{q}");
        }
        for c in ["G28", "G1 X10", "M104 S200", "M112", "M1050", "M105X"] {
            assert!(!is_query(Firmware::Marlin, c), "{c}");
        }
        for q in ["?", "$G", "$#", "$$"] {
            assert!(is_query(Firmware::Grbl, q), "{q}");
        }
        for c in ["$X", "$H", "G0 X1", "$J=G91 X1", "$RST=*", "$100=250"] {
            assert!(!is_query(Firmware::Grbl, c), "{c}");
        }
    }
}
