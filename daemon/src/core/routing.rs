//! Which machine may run which job. Pure functions over the configuration,
//! the file's analysis and the job's requirements, so the reasons a job is
//! refused are the same at submission and in the scheduler.

use microfactory_machines::driver::Firmware;
use microfactory_machines::profile::MachineKind;

use crate::config::Machine;
use crate::core::model::{FileRecord, Kind};

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
    if m.config.read_only {
        return Err(format!(
            "{id}: reports over MQTT and is read-only; it runs only what its own host sends it"
        ));
    }
    if let Some(want) = req.machine_id
        && want != id
    {
        return Err(format!("{id}: the job is for machine {want}"));
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
