//! Code 128 for shipment numbers, through `barcoders`.

use barcoders::sym::code128::Code128;

use super::LabelError;

/// Longest shipment number we print as a barcode; longer would need a
/// module narrower than a 203 dpi printer's dot across 4 inches.
pub(crate) const MAX_CHARS: usize = 40;

/// Checks a shipment number is printable as Code 128 set B (printable
/// ASCII) and short enough for a 4 in label.
pub(crate) fn check(number: &str) -> Result<(), LabelError> {
    if number.is_empty() || number.len() > MAX_CHARS {
        return Err(LabelError::invalid(
            "shipment_number",
            format!(
                "a shipment number has 1 to {MAX_CHARS} characters, not {}",
                number.chars().count()
            ),
        ));
    }
    if let Some(c) = number.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(LabelError::invalid(
            "shipment_number",
            format!("a shipment number is printable ASCII for its barcode; {c:?} is not"),
        ));
    }
    Ok(())
}

/// The symbol's modules (1 bar, 0 space) from start to stop, without
/// quiet zones. All-digit numbers of even length use the denser set C.
pub(crate) fn modules(number: &str) -> Result<Vec<u8>, LabelError> {
    check(number)?;
    let digits = number.bytes().all(|b| b.is_ascii_digit());
    let prefix = if digits && number.len().is_multiple_of(2) {
        '\u{0106}'
    } else {
        '\u{0181}'
    };
    Code128::new(format!("{prefix}{number}"))
        .map(|c| c.encode())
        .map_err(|e| LabelError::Barcode(format!("Code 128 of {number:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shipment_number_becomes_start_data_check_and_stop_modules() {
        let m = modules("MF-000123").expect("encodes");
        // Start, nine characters, check character: 11 modules each; stop 13.
        assert_eq!(m.len(), 11 * 11 + 13);
        assert_eq!(&m[..11], &[1, 1, 0, 1, 0, 0, 1, 0, 0, 0, 0], "start B");
        assert_eq!(
            &m[m.len() - 13..],
            &[1, 1, 0, 0, 0, 1, 1, 1, 0, 1, 0, 1, 1],
            "stop"
        );
        let c = modules("00012345").expect("digits");
        assert_eq!(c.len(), 11 * 6 + 13, "set C packs two digits per character");
        assert_eq!(&c[..11], &[1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 0], "start C");
    }

    #[test]
    fn numbers_a_code_128_label_cannot_carry_are_refused_by_field() {
        for bad in ["", "MF-ü", "tab\there", &"9".repeat(MAX_CHARS + 1)] {
            match modules(bad) {
                Err(LabelError::Invalid { field, .. }) => assert_eq!(field, "shipment_number"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
