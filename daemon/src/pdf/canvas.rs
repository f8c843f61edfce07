//! Drawing helpers over krilla shared by the labels and the certification
//! report: text in the document font (fitted or cut to a width), rules and
//! boxes, and barcodes as vector rectangles (one path per symbol, so they
//! stay sharp at any printer resolution). Units are PDF points, origin top
//! left, y down.

use krilla::Document;
use krilla::geom::{PathBuilder, Point, Rect};
use krilla::page::PageSettings;
use krilla::surface::Surface;

use super::PdfError;
use super::font::{DocFont, font};

/// Points per millimetre.
pub(crate) const MM: f32 = 72.0 / 25.4;
/// Points per inch.
pub(crate) const INCH: f32 = 72.0;

/// A new page of `width` × `height` points.
pub(crate) fn page_settings(width: f32, height: f32) -> Result<PageSettings, PdfError> {
    PageSettings::from_wh(width, height)
        .ok_or_else(|| PdfError(format!("bad page size {width}×{height}")))
}

/// Serialises the document; krilla subsets the font here.
pub(crate) fn finish(doc: Document) -> Result<Vec<u8>, PdfError> {
    doc.finish().map_err(|e| PdfError(format!("{e:?}")))
}

/// A page being drawn.
pub(crate) struct Canvas<'a, 'b> {
    pub(crate) surface: &'a mut Surface<'b>,
    font: &'static DocFont,
}

impl<'a, 'b> Canvas<'a, 'b> {
    pub(crate) fn new(surface: &'a mut Surface<'b>) -> Result<Self, PdfError> {
        Ok(Self {
            surface,
            font: font()?,
        })
    }

    pub(crate) fn width(&self, text: &str, size: f32) -> f32 {
        self.font.width(text, size)
    }

    /// Draws `text` with its baseline at `y`, starting at `x`.
    pub(crate) fn text(&mut self, x: f32, y: f32, size: f32, text: &str) {
        if text.is_empty() {
            return;
        }
        let glyphs = self.font.glyphs(text);
        self.surface.draw_glyphs(
            Point::from_xy(x, y),
            &glyphs,
            self.font.pdf.clone(),
            text,
            size,
            false,
        );
    }

    /// Draws `text` centred on `cx`.
    pub(crate) fn text_centred(&mut self, cx: f32, y: f32, size: f32, text: &str) {
        let w = self.width(text, size);
        self.text(cx - w / 2.0, y, size, text);
    }

    /// Draws `text` in at most `max_width`: smaller down to `min_size`,
    /// then cut with an ellipsis, so a long name never runs off the label.
    /// Returns the size used.
    pub(crate) fn text_fit(
        &mut self,
        x: f32,
        y: f32,
        size: f32,
        min_size: f32,
        max_width: f32,
        text: &str,
    ) -> f32 {
        let fitted = fit(self.font, text, size, min_size, max_width);
        self.text(x, y, fitted.1, &fitted.0);
        fitted.1
    }

    /// Fills from now on in this grey (0 black, 255 white).
    pub(crate) fn grey(&mut self, lightness: u8) {
        self.surface.set_fill(Some(krilla::paint::Fill {
            paint: krilla::color::luma::Color::new(lightness).into(),
            ..krilla::paint::Fill::default()
        }));
    }

    /// Fills from now on in this colour.
    pub(crate) fn colour(&mut self, (r, g, b): (u8, u8, u8)) {
        self.surface.set_fill(Some(krilla::paint::Fill {
            paint: krilla::color::rgb::Color::new(r, g, b).into(),
            ..krilla::paint::Fill::default()
        }));
    }

    /// A line through `points`, `width` points wide, in `rgb`, dashed
    /// (`dash` on, `dash` off) when `dash` is given.
    pub(crate) fn polyline(
        &mut self,
        points: &[(f32, f32)],
        width: f32,
        rgb: (u8, u8, u8),
        dash: Option<f32>,
    ) {
        let mut pb = PathBuilder::new();
        for (i, &(x, y)) in points.iter().enumerate() {
            if i == 0 {
                pb.move_to(x, y);
            } else {
                pb.line_to(x, y);
            }
        }
        let Some(path) = pb.finish() else {
            return;
        };
        let fill = self.surface.get_fill().cloned();
        self.surface.set_fill(None);
        self.surface.set_stroke(Some(krilla::paint::Stroke {
            paint: krilla::color::rgb::Color::new(rgb.0, rgb.1, rgb.2).into(),
            width,
            dash: dash.map(|d| krilla::paint::StrokeDash {
                array: vec![d, d],
                offset: 0.0,
            }),
            ..krilla::paint::Stroke::default()
        }));
        self.surface.draw_path(&path);
        self.surface.set_stroke(None);
        self.surface.set_fill(fill);
    }

    /// A filled rectangle.
    pub(crate) fn fill_rect(&mut self, x: f32, y: f32, w: f32, h: f32) {
        let mut pb = PathBuilder::new();
        if let Some(r) = Rect::from_xywh(x, y, w, h) {
            pb.push_rect(r);
        }
        if let Some(path) = pb.finish() {
            self.surface.draw_path(&path);
        }
    }

    /// A rectangle's outline, `t` points thick, drawn inside the rectangle.
    pub(crate) fn frame(&mut self, x: f32, y: f32, w: f32, h: f32, t: f32) {
        self.fill_rect(x, y, w, t);
        self.fill_rect(x, y + h - t, w, t);
        self.fill_rect(x, y, t, h);
        self.fill_rect(x + w - t, y, t, h);
    }

    /// Vertical bars: `modules` are 1 (bar) or 0 (space), each `module`
    /// points wide, starting at `x`.
    pub(crate) fn bars(&mut self, x: f32, y: f32, module: f32, height: f32, modules: &[u8]) {
        let mut pb = PathBuilder::new();
        let mut i = 0;
        while i < modules.len() {
            if modules[i] == 0 {
                i += 1;
                continue;
            }
            let start = i;
            while i < modules.len() && modules[i] != 0 {
                i += 1;
            }
            if let Some(r) = Rect::from_xywh(
                x + start as f32 * module,
                y,
                (i - start) as f32 * module,
                height,
            ) {
                pb.push_rect(r);
            }
        }
        if let Some(path) = pb.finish() {
            self.surface.draw_path(&path);
        }
    }

    /// A 2-D symbol: `dark(col, row)` for a `cols` × `rows` grid of
    /// `module`-point squares with the top left at (`x`, `y`).
    pub(crate) fn matrix(
        &mut self,
        x: f32,
        y: f32,
        module: f32,
        cols: usize,
        rows: usize,
        dark: impl Fn(usize, usize) -> bool,
    ) {
        let mut pb = PathBuilder::new();
        for row in 0..rows {
            let mut col = 0;
            while col < cols {
                if !dark(col, row) {
                    col += 1;
                    continue;
                }
                let start = col;
                while col < cols && dark(col, row) {
                    col += 1;
                }
                let rect = Rect::from_xywh(
                    x + start as f32 * module,
                    y + row as f32 * module,
                    (col - start) as f32 * module,
                    module,
                );
                if let Some(r) = rect {
                    pb.push_rect(r);
                }
            }
        }
        if let Some(path) = pb.finish() {
            self.surface.draw_path(&path);
        }
    }
}

/// The text and size that fit `max_width` (see [`Canvas::text_fit`]).
pub(crate) fn fit(
    font: &DocFont,
    text: &str,
    size: f32,
    min_size: f32,
    max_width: f32,
) -> (String, f32) {
    let mut s = size;
    while s > min_size && font.width(text, s) > max_width {
        s = (s - 0.5).max(min_size);
    }
    if font.width(text, s) <= max_width {
        return (text.to_owned(), s);
    }
    let mut cut: String = text.to_owned();
    while !cut.is_empty() && font.width(&format!("{cut}…"), s) > max_width {
        cut.pop();
    }
    (format!("{}…", cut.trim_end()), s)
}

/// Splits `text` into lines no wider than `max_width` at `size`, breaking
/// at spaces (and inside a word only when one word is too wide).
pub(crate) fn wrap(font: &DocFont, text: &str, size: f32, max_width: f32) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        let candidate = if line.is_empty() {
            word.to_owned()
        } else {
            format!("{line} {word}")
        };
        if font.width(&candidate, size) <= max_width {
            line = candidate;
            continue;
        }
        if !line.is_empty() {
            lines.push(std::mem::take(&mut line));
        }
        for c in word.chars() {
            line.push(c);
            if font.width(&line, size) > max_width && line.chars().count() > 1 {
                line.pop();
                lines.push(std::mem::take(&mut line));
                line.push(c);
            }
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_long_text_shrinks_then_is_cut_with_an_ellipsis() {
        let f = font().expect("font");
        let (t, s) = fit(f, "Short", 12.0, 8.0, 200.0);
        assert_eq!((t.as_str(), s), ("Short", 12.0));
        let long = "A very long recipient name that cannot possibly fit on one line of a label";
        let (t, s) = fit(f, long, 12.0, 8.0, 200.0);
        assert_eq!(s, 8.0);
        assert!(t.ends_with('…') && long.starts_with(t.trim_end_matches('…')));
        assert!(f.width(&t, s) <= 200.0);
    }

    proptest! {
        #[test]
        fn wrapped_lines_fit_and_keep_every_character(text in "[a-zA-Z0-9-]{1,12}( [a-zA-Z0-9-]{1,40}){0,20}", width in 20.0f32..300.0) {
            let f = font().expect("font");
            let lines = wrap(f, &text, 9.0, width);
            for l in &lines {
                prop_assert!(f.width(l, 9.0) <= width || l.chars().count() == 1, "{:?}", l);
            }
            let joined: String = lines.concat().chars().filter(|c| *c != ' ').collect();
            let original: String = text.chars().filter(|c| *c != ' ').collect();
            prop_assert_eq!(joined, original);
        }
    }
}
