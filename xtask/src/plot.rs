//! The benchmarks' SVG plots: small multiples (one panel per task, a title, a legend), written
//! as text; every name that comes from the data (task folders, methods) is escaped.
//!
//! Our own rather than `plotters`: the plots are a few lines and panels each, and text SVG keeps
//! xtask free of a drawing stack (fonts, image crates) for them.

/// The line colours of every plot, in order (Tableau 10).
pub const PALETTE: [&str; 10] = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];

/// Text made safe inside an SVG element or attribute.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Series `i`'s colour.
pub fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// An SVG document's opening: its size, the base font size, a white background and the title
/// at `(x, y)`.
pub fn open(width: f64, height: f64, font_size: u32, (x, y): (f64, f64), title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"{font_size}\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{x}\" y=\"{y}\" font-size=\"13\">{}</text>\n",
        esc(title)
    )
}

/// One legend entry: a coloured square with its top-left corner at `(x, y)` and the name beside it.
pub fn swatch((x, y): (f64, f64), colour: &str, name: &str) -> String {
    format!("<rect x=\"{x}\" y=\"{y}\" width=\"10\" height=\"10\" fill=\"{colour}\"/><text x=\"{}\" y=\"{}\">{}</text>\n", x + 14.0, y + 9.0, esc(name))
}

/// A grid of equal panels under a title, with a legend along the bottom.
pub struct Panels {
    /// A panel's width and height.
    pub pw: f64,
    pub ph: f64,
    /// The gap around panels (room for the axis labels).
    pub pad: f64,
    cols: usize,
    rows: usize,
}

impl Panels {
    /// `n` panels of `pw × ph`, at most `cols` to a row.
    pub fn new(n: usize, cols: usize, (pw, ph): (f64, f64), pad: f64) -> Self {
        let cols = cols.max(1);
        Panels { pw, ph, pad, cols, rows: n.div_ceil(cols).max(1) }
    }

    pub fn width(&self) -> f64 {
        self.pad + (self.pw + self.pad) * self.cols as f64
    }

    pub fn height(&self) -> f64 {
        40.0 + (self.ph + self.pad + 14.0) * self.rows as f64 + 30.0
    }

    /// The top-left corner of panel `i`.
    pub fn origin(&self, i: usize) -> (f64, f64) {
        (self.pad + (self.pw + self.pad) * (i % self.cols) as f64, 40.0 + (self.ph + self.pad + 14.0) * (i / self.cols) as f64)
    }

    /// The document's opening: size, white background, the title.
    pub fn open(&self, title: &str) -> String {
        open(self.width(), self.height(), 10, (self.pad, 18.0), title)
    }

    /// Panel `i`'s frame and its label.
    pub fn frame(&self, i: usize, label: &str) -> String {
        let (x0, y0) = self.origin(i);
        format!(
            "<rect x=\"{x0}\" y=\"{y0}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#bbb\"/><text x=\"{x0}\" y=\"{}\" font-size=\"11\">{}</text>\n",
            self.pw,
            self.ph,
            y0 - 4.0,
            esc(label)
        )
    }

    /// One coloured square and name per series, along the bottom; then the document's end.
    pub fn legend_and_close(&self, series: &[(&str, &str)]) -> String {
        let h = self.height();
        let mut s = String::new();
        for (j, (name, colour)) in series.iter().enumerate() {
            s += &swatch((self.pad + 110.0 * j as f64, h - 24.0), colour, name);
        }
        s + "</svg>\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_data_are_escaped() {
        assert_eq!(esc(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&#39;");
        let p = Panels::new(5, 4, (100.0, 50.0), 10.0);
        assert_eq!((p.origin(0), p.origin(4)), ((10.0, 40.0), (10.0, 40.0 + 74.0)));
        let svg = p.open("t & u") + &p.frame(1, "<task>") + &p.legend_and_close(&[("m&m", "#000")]);
        assert!(svg.contains("t &amp; u") && svg.contains("&lt;task&gt;") && svg.contains(">m&amp;m<") && svg.ends_with("</svg>\n"));
        assert!(!svg.contains("<task>"));
    }
}
