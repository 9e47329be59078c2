//! How dyrep's charts tell series apart (`curves.svg`, `dyrep compare --svg`): eight colours,
//! and past the eighth series the colours repeat with another point marker (circle, then
//! triangle, then cross), so up to 24 series in one chart never look alike — a reproduction
//! grid's comparison easily has more than eight runs.

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// The series colours, in order (the Tableau palette without its olive and cyan).
pub(crate) const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// The mark at each point of a series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Marker {
    Circle,
    Triangle,
    Cross,
}

/// A series' colour and marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Style {
    pub color: RGBColor,
    pub marker: Marker,
}

impl Style {
    /// The style of a chart's `i`-th series (from 0): the colours in order, the marker changing
    /// each time they wrap around.
    pub(crate) fn nth(i: usize) -> Style {
        let marker = match (i / COLORS.len()) % 3 {
            0 => Marker::Circle,
            1 => Marker::Triangle,
            _ => Marker::Cross,
        };
        Style {
            color: COLORS[i % COLORS.len()],
            marker,
        }
    }

    /// A style in `color` with circles (charts whose few series are named by colour alone).
    pub(crate) fn circles(color: RGBColor) -> Style {
        Style {
            color,
            marker: Marker::Circle,
        }
    }

    /// The legend entry at `(x, y)`: an 18-pixel line with the marker, as a filled outline
    /// (one element type for every marker), in its middle.
    pub(crate) fn legend_mark<'a, DB: DrawingBackend + 'a>(
        self,
        (x, y): (i32, i32),
    ) -> impl IntoDynElement<'a, DB, (i32, i32)> {
        let outline: Vec<(i32, i32)> = match self.marker {
            Marker::Circle => vec![
                (3, 0),
                (2, 2),
                (0, 3),
                (-2, 2),
                (-3, 0),
                (-2, -2),
                (0, -3),
                (2, -2),
            ],
            Marker::Triangle => vec![(0, -4), (4, 3), (-4, 3)],
            Marker::Cross => vec![
                (-4, -3),
                (-3, -4),
                (0, -1),
                (3, -4),
                (4, -3),
                (1, 0),
                (4, 3),
                (3, 4),
                (0, 1),
                (-3, 4),
                (-4, 3),
                (-1, 0),
            ],
        };
        EmptyElement::at((x, y))
            + PathElement::new(vec![(0, 0), (18, 0)], self.color.stroke_width(2))
            + Polygon::new(
                outline
                    .into_iter()
                    .map(|(dx, dy)| (9 + dx, dy))
                    .collect::<Vec<_>>(),
                self.color.filled(),
            )
    }
}

/// A chart over (epoch, value) on an SVG backend, as every dyrep chart is.
pub(crate) type EpochChart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draws the marker of `style` at every point of `pts`.
pub(crate) fn draw_marks(
    chart: &mut EpochChart<'_, '_>,
    pts: &[(f64, f64)],
    style: Style,
) -> Result<(), String> {
    let c = style.color;
    let at = pts.iter().copied();
    match style.marker {
        Marker::Circle => chart.draw_series(at.map(|p| Circle::new(p, 3, c.filled()))),
        Marker::Triangle => chart.draw_series(at.map(|p| TriangleMarker::new(p, 4, c.filled()))),
        Marker::Cross => chart.draw_series(at.map(|p| Cross::new(p, 3, c.stroke_width(2)))),
    }
    .map(|_| ())
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_two_of_the_first_24_series_share_a_style() {
        let styles: Vec<Style> = (0..24).map(Style::nth).collect();
        for (i, a) in styles.iter().enumerate() {
            for (j, b) in styles.iter().enumerate().skip(i + 1) {
                assert_ne!(a, b, "series {i} and {j} look alike");
            }
        }
    }

    #[test]
    fn the_first_eight_series_keep_circles_in_palette_order() {
        for (i, color) in COLORS.iter().enumerate() {
            assert_eq!(Style::nth(i), Style::circles(*color));
        }
        assert_eq!(Style::nth(8).marker, Marker::Triangle);
        assert_eq!(Style::nth(8).color, COLORS[0]);
    }
}
