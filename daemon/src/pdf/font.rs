//! The one document font, DejaVu Sans (`fonts/`, Bitstream Vera licence),
//! compiled in: glyph ids and advance widths from its own tables, so label
//! and report text needs no shaping engine. Latin, Greek and Cyrillic
//! addresses print as typed; a character the font lacks prints as its
//! `.notdef` box rather than vanishing.

use std::sync::LazyLock;

use krilla::text::{Font, GlyphId, KrillaGlyph};
use skrifa::instance::{LocationRef, Size};
use skrifa::metrics::GlyphMetrics;
use skrifa::{FontRef, MetadataProvider};

use super::PdfError;

static DATA: &[u8] = include_bytes!("fonts/DejaVuSans.ttf");

/// The parsed font: krilla's handle and the tables for widths.
pub(crate) struct DocFont {
    pub(crate) pdf: Font,
    charmap: skrifa::charmap::Charmap<'static>,
    metrics: GlyphMetrics<'static>,
    upem: f32,
}

static FONT: LazyLock<Result<DocFont, PdfError>> = LazyLock::new(|| {
    let bad = |what: &str| PdfError(format!("the compiled-in font {what}"));
    let font = FontRef::new(DATA).map_err(|_| bad("does not parse"))?;
    let pdf = Font::new(DATA.into(), 0).ok_or_else(|| bad("is refused by krilla"))?;
    let upem = f32::from(
        font.metrics(Size::unscaled(), LocationRef::default())
            .units_per_em,
    );
    if upem <= 0.0 {
        return Err(bad("has no units per em"));
    }
    Ok(DocFont {
        pdf,
        charmap: font.charmap(),
        metrics: font.glyph_metrics(Size::unscaled(), LocationRef::default()),
        upem,
    })
});

/// The font, parsed once per process.
pub(crate) fn font() -> Result<&'static DocFont, PdfError> {
    FONT.as_ref().map_err(Clone::clone)
}

impl DocFont {
    /// One glyph per character (no ligatures or kerning: label text is
    /// short and must read unambiguously), advances normalised to the em.
    pub(crate) fn glyphs(&self, text: &str) -> Vec<KrillaGlyph> {
        text.char_indices()
            .map(|(i, c)| {
                let gid = self.charmap.map(c).unwrap_or_default();
                let advance = self.metrics.advance_width(gid).unwrap_or(0.0) / self.upem;
                KrillaGlyph::new(
                    GlyphId::new(gid.to_u32()),
                    advance,
                    0.0,
                    0.0,
                    0.0,
                    i..i + c.len_utf8(),
                    None,
                )
            })
            .collect()
    }

    /// The width of `text` at `size` points.
    pub(crate) fn width(&self, text: &str, size: f32) -> f32 {
        text.chars()
            .map(|c| {
                let gid = self.charmap.map(c).unwrap_or_default();
                self.metrics.advance_width(gid).unwrap_or(0.0)
            })
            .sum::<f32>()
            / self.upem
            * size
    }

    /// Whether the font has a glyph for `c`.
    #[cfg(test)]
    pub(crate) fn covers(&self, c: char) -> bool {
        self.charmap.map(c).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_in_font_maps_latin_greek_and_cyrillic() {
        let f = font().expect("font");
        for c in "AZaz09ÄÖÜßéøłŒΣλЖя#&/-".chars() {
            assert!(f.covers(c), "{c}");
        }
        assert!(!f.covers('\u{4e2d}'), "no CJK in DejaVu Sans");
        let w = f.width("MMMM", 10.0);
        assert!(w > f.width("iiii", 10.0));
        assert!((f.width("AB", 12.0) - f.width("A", 12.0) - f.width("B", 12.0)).abs() < 1e-3);
        assert_eq!(f.glyphs("Zoë").len(), 3);
        assert_eq!(f.glyphs("Zoë")[2].text_range, 2..4);
    }
}
