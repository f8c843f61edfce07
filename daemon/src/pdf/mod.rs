//! Vector PDF with the compiled-in DejaVu Sans, shared by the labels
//! (`commerce::labels`) and the certification report
//! (`metering::report_pdf`): pure, bytes out, no store, clock or files.
//! Only this module and `labels` know krilla and skrifa; the report draws
//! through [`Flow`] and [`Canvas`] alone.

mod canvas;
pub(crate) mod font;

pub(crate) use canvas::{Canvas, INCH, MM, finish, fit, page_settings, wrap};

/// A document could not be made: a bug here (a bad page size, a font
/// krilla refuses), never the caller's input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("PDF: {0}")]
pub struct PdfError(pub String);

/// Draws a block with its top at the `f32`.
type Draw = Box<dyn Fn(&mut Canvas<'_, '_>, f32)>;

/// A block of a flowing document: its height in points and how to draw
/// it with its top at `y`.
pub(crate) struct Block {
    pub(crate) height: f32,
    pub(crate) draw: Draw,
}

impl Block {
    pub(crate) fn new(height: f32, draw: impl Fn(&mut Canvas<'_, '_>, f32) + 'static) -> Self {
        Self {
            height,
            draw: Box::new(draw),
        }
    }
}

/// Pages of one size filled top to bottom with [`Block`]s, a block that
/// does not fit going to the next page whole, and a footer line on each
/// page ("page n of m" and `footer`).
pub(crate) struct Flow {
    pub(crate) width: f32,
    pub(crate) height: f32,
    pub(crate) margin: f32,
    pub(crate) footer: String,
}

/// A4 portrait, points.
pub(crate) const A4: (f32, f32) = (210.0 * MM, 297.0 * MM);

impl Flow {
    /// The blocks cut into pages: each page's blocks with their tops.
    fn paginate(&self, blocks: &[Block]) -> Vec<Vec<(usize, f32)>> {
        let bottom = self.height - self.margin - 16.0;
        let mut pages = vec![Vec::new()];
        let mut y = self.margin;
        for (i, b) in blocks.iter().enumerate() {
            let page_has_some = pages.last().is_some_and(|p: &Vec<_>| !p.is_empty());
            if y + b.height > bottom && page_has_some {
                pages.push(Vec::new());
                y = self.margin;
            }
            if let Some(p) = pages.last_mut() {
                p.push((i, y));
            }
            y += b.height;
        }
        pages
    }

    /// The document.
    pub(crate) fn render(&self, blocks: &[Block]) -> Result<Vec<u8>, PdfError> {
        let pages = self.paginate(blocks);
        let n = pages.len();
        let mut doc = krilla::Document::new();
        for (p, page_blocks) in pages.iter().enumerate() {
            let mut page = doc.start_page_with(page_settings(self.width, self.height)?);
            let mut surface = page.surface();
            let mut c = Canvas::new(&mut surface)?;
            for &(i, y) in page_blocks {
                (blocks[i].draw)(&mut c, y);
            }
            c.text_fit(
                self.margin,
                self.height - self.margin,
                8.0,
                6.0,
                self.width - 2.0 * self.margin,
                &format!("{} · page {} of {n}", self.footer, p + 1),
            );
        }
        finish(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_that_overflow_a_page_start_the_next_one_whole() {
        let f = Flow {
            width: 100.0,
            height: 200.0,
            margin: 10.0,
            footer: String::new(),
        };
        // Room per page: 200 - 10 - 16 = 174 below a top of 10, so 164 points.
        let blocks: Vec<Block> = [100.0, 60.0, 10.0, 300.0, 5.0]
            .into_iter()
            .map(|h| Block::new(h, |_, _| {}))
            .collect();
        let pages = f.paginate(&blocks);
        assert_eq!(
            pages,
            vec![
                vec![(0, 10.0), (1, 110.0)],
                vec![(2, 10.0)],
                vec![(3, 10.0)],
                vec![(4, 10.0)],
            ]
        );
    }
}
