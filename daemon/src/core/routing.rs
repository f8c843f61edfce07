//! Which machine may run which job. Pure functions over the configuration,
//! the file's analysis and the job's requirements, so the reasons a job is
//! refused are the same at submission and in the scheduler.

use microfactory_machines::driver::Firmware;
use microfactory_machines::profile::MachineKind;

use crate::config::Machine;
use crate::core::model::{FileRecord, Job, Kind};

/// What a job asks of a machine.
#[derive(Debug, Clone, Default)]
pub struct Requirements<'a> {
    /// A named machine.
    pub machine_id: Option<&'a str>,
    /// A kind of machine.
    pub kind: Option<Kind>,
    /// Tags the machine must have.
    pub tags: &'a [String],
    /// GRBL canned-cycle expansion was asked for.
    pub expand_canned_cycles: bool,
    /// Skip the material and nozzle match (the operator's override).
    pub any_material: bool,
}

impl<'a> Requirements<'a> {
    /// What a queued job asks: the scheduler and the forecast read it
    /// the same way.
    pub fn of(job: &'a Job) -> Self {
        Self {
            machine_id: job.machine_id.as_deref(),
            kind: job.kind,
            tags: &job.tags,
            expand_canned_cycles: job.expand_canned_cycles,
            any_material: job.any_material,
        }
    }
}

/// Nozzle diameters closer than this are the same nozzle, mm.
const NOZZLE_SLACK_MM: f64 = 0.001;

/// The values of a machine's `key:value` tags for one key.
fn tag_values<'a>(m: &'a Machine, key: &str) -> Vec<&'a str> {
    m.config
        .tags
        .iter()
        .filter_map(|t| t.split_once(':'))
        .filter(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
        .collect()
}

/// The file states a material or nozzle the machine's tags say it does
/// not have. A machine that declares no `material:` (or `nozzle:`) tag
/// has said nothing about it and is not refused for it: the rule catches
/// the PLA job on the PETG printer without making every untagged farm
/// tag each machine first.
fn material_mismatch(m: &Machine, file: &FileRecord) -> Option<String> {
    let info = file.analysis.slicer.as_ref()?;
    let id = &m.config.id;
    if let Some(want) = info.material.as_deref() {
        let have = tag_values(m, "material");
        if !have.is_empty() && !have.iter().any(|h| h.eq_ignore_ascii_case(want)) {
            return Some(format!(
                "{id}: the file is sliced for {want}, this machine has material:{} \
                 (queue with \"any material\" to override)",
                have.join(", material:")
            ));
        }
    }
    if let Some(want) = info.nozzle_diameter_mm {
        let have = tag_values(m, "nozzle");
        let same = |h: &&str| {
            h.trim()
                .parse::<f64>()
                .is_ok_and(|d| (d - want).abs() < NOZZLE_SLACK_MM)
        };
        if !have.is_empty() && !have.iter().any(same) {
            return Some(format!(
                "{id}: the file is sliced for a {want} mm nozzle, this machine has nozzle:{} \
                 (queue with \"any material\" to override)",
                have.join(", nozzle:")
            ));
        }
    }
    None
}

/// Slack for floating-point bounds against the build volume, mm.
const VOLUME_SLACK_MM: f64 = 0.01;

/// The machine kind a program needs, from what it does.
pub fn needed_kind(file: &FileRecord) -> Option<Kind> {
    match (file.analysis.uses_extrusion, file.analysis.uses_spindle) {
        (true, false) => Some(Kind::Printer),
        (false, true) => Some(Kind::Mill),
        _ => None,
    }
}

/// The API kind of a machine.
pub fn kind_of(m: &Machine) -> Kind {
    match m.kind() {
        MachineKind::Printer => Kind::Printer,
        MachineKind::Mill => Kind::Mill,
    }
}

/// `Ok` when `m` can run the job, else the reason it cannot, in words an
/// operator can act on. Ignores whether the machine is busy or online.
pub fn check(m: &Machine, file: &FileRecord, req: &Requirements<'_>) -> Result<(), String> {
    let id = &m.config.id;
    if let Some(want) = req.machine_id
        && want != id
    {
        return Err(format!("{id}: the job is for machine {want}"));
    }
    if m.config.read_only {
        return Err(format!(
            "{id}: reports over MQTT and is read-only; it runs only what its own host sends it"
        ));
    }
    let kind = kind_of(m);
    if let Some(k) = req.kind
        && k != kind
    {
        return Err(format!("{id}: the job is for a {k:?}, this is a {kind:?}").to_lowercase());
    }
    if file.analysis.uses_extrusion && file.analysis.uses_spindle {
        return Err(format!(
            "{id}: the program both extrudes and turns a spindle on; no machine does both"
        ));
    }
    if let Some(need) = needed_kind(file)
        && need != kind
    {
        return Err(format!(
            "{id}: the program {} but this machine is a {}",
            if need == Kind::Printer {
                "extrudes filament"
            } else {
                "turns a spindle on"
            },
            if kind == Kind::Printer {
                "printer"
            } else {
                "mill"
            }
        ));
    }
    if let Some(missing) = req.tags.iter().find(|t| !m.config.tags.contains(t)) {
        return Err(format!("{id}: lacks tag {missing}"));
    }
    if !req.any_material
        && let Some(why) = material_mismatch(m, file)
    {
        return Err(why);
    }
    if let Some(b) = file.analysis.travel_bounds_mm.or(file.analysis.bounds_mm) {
        let size = b.size();
        let vol = m.profile.build_volume_mm;
        if (0..3).any(|i| size[i] > vol[i] + VOLUME_SLACK_MM) {
            return Err(format!(
                "{id}: the program spans {:.1} x {:.1} x {:.1} mm, more than the {:.0} x {:.0} x {:.0} mm volume",
                size[0], size[1], size[2], vol[0], vol[1], vol[2]
            ));
        }
    }
    let report = match m.profile.firmware {
        Firmware::Marlin => &file.preflight_marlin,
        Firmware::Grbl => &file.preflight_grbl,
    };
    if report.rejected_count > 0 && !(req.expand_canned_cycles && report.expandable) {
        let first = report
            .findings
            .iter()
            .find(|f| f.kind != microfactory_protocol::preflight::FindingKind::Warning);
        let hint = if report.expandable {
            " (ask for canned-cycle expansion to run it)"
        } else {
            ""
        };
        return Err(match first {
            Some(f) => format!(
                "{id}: its firmware rejects {} line(s), first line {}: {}{hint}",
                report.rejected_count, f.line, f.reason
            ),
            None => format!(
                "{id}: its firmware rejects {} line(s){hint}",
                report.rejected_count
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printer(id: &str, tags: &[&str]) -> Machine {
        let mut m = Machine::for_tests(id, "prusa-mk3s", false);
        m.config.tags = tags.iter().map(|t| (*t).to_string()).collect();
        m
    }

    /// A sliced file that states its material and nozzle as PrusaSlicer
    /// does (the settings block at the end).
    fn sliced(material: &str, nozzle: &str) -> FileRecord {
        let text = format!(
            "; generated by PrusaSlicer 2.7.0 on 2026-01-01 at 10:00:00 UTC\nG28\nG1 Z0.2 F3000\n\
             G1 X10 Y10 E1 F1500\nG1 X20 Y10 E2\n; filament_type = {material}\n\
             ; nozzle_diameter = {nozzle}\n"
        );
        crate::core::testkit::file_record(&text)
    }

    #[test]
    fn a_file_goes_only_to_machines_whose_material_and_nozzle_tags_match_unless_overridden() {
        let pla = sliced("PLA", "0.4");
        let req = Requirements::default();
        assert_eq!(
            check(&printer("a", &["material:pla", "nozzle:0.40"]), &pla, &req),
            Ok(())
        );
        let why = check(&printer("b", &["material:PETG"]), &pla, &req).expect_err("PETG");
        assert!(
            why.contains("sliced for PLA") && why.contains("material:PETG"),
            "{why}"
        );
        let why = check(&printer("c", &["nozzle:0.6"]), &pla, &req).expect_err("0.6");
        assert!(
            why.contains("0.4 mm nozzle") && why.contains("nozzle:0.6"),
            "{why}"
        );
        // A machine that declares neither has said nothing against it.
        assert_eq!(check(&printer("d", &[]), &pla, &req), Ok(()));
        // The operator's override.
        let any = Requirements {
            any_material: true,
            ..Requirements::default()
        };
        assert_eq!(check(&printer("b", &["material:PETG"]), &pla, &any), Ok(()));
    }
}
