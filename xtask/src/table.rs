//! The benchmarks' tables: CSV files of typed rows (`serde::Serialize`, one field per column,
//! the header from the field names) written with the `csv` crate, so a name with a comma or a
//! quote stays one field; Markdown tables through [`Markdown`], so a `|` in a name stays in its
//! cell.

/// A Markdown table under construction: the header with its alignment, then rows.
pub struct Markdown {
    text: String,
}

impl Markdown {
    /// A table with these column names: the first `left` columns left-aligned (names), the rest
    /// right-aligned (numbers).
    pub fn new<S: AsRef<str>>(columns: &[S], left: usize) -> Self {
        let mut m = Markdown { text: String::new() };
        m.row(columns);
        m.text += "|";
        for i in 0..columns.len() {
            m.text += if i < left { "---|" } else { "---:|" };
        }
        m.text += "\n";
        m
    }

    /// One row; its cells are escaped.
    pub fn row<S: AsRef<str>>(&mut self, cells: &[S]) -> &mut Self {
        self.text += &Self::line(cells);
        self
    }

    /// One row's line on its own (for a table printed row by row after its [`Markdown::new`]).
    pub fn line<S: AsRef<str>>(cells: &[S]) -> String {
        let cells: Vec<String> = cells.iter().map(|c| c.as_ref().replace('|', "\\|")).collect();
        format!("| {} |\n", cells.join(" | "))
    }

    /// The table's text, one line per row.
    pub fn finish(&self) -> String {
        self.text.clone()
    }
}

/// `rows` as CSV text with a header line.
pub fn csv_text<R: serde::Serialize>(rows: &[R]) -> anyhow::Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    Ok(String::from_utf8(w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)?)
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize)]
    struct Row {
        task: String,
        acc: Option<f64>,
        chosen: bool,
    }

    #[test]
    fn markdown_tables_align_and_escape() {
        let mut t = super::Markdown::new(&["task", "acc"], 1);
        t.row(&["a|b", "0.5"]).row(&["c", ""]);
        assert_eq!(t.finish(), "| task | acc |\n|---|---:|\n| a\\|b | 0.5 |\n| c |  |\n");
    }

    #[test]
    fn rows_with_commas_quotes_and_gaps() {
        let rows = [Row { task: "a,b".into(), acc: Some(0.5), chosen: true }, Row { task: "say \"x\"".into(), acc: None, chosen: false }];
        assert_eq!(super::csv_text(&rows).unwrap(), "task,acc,chosen\n\"a,b\",0.5,true\n\"say \"\"x\"\"\",,false\n");
        let text = super::csv_text(&rows).unwrap();
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let back: Vec<Vec<String>> = r.records().map(|x| x.unwrap().iter().map(String::from).collect()).collect();
        assert_eq!(back, [vec!["a,b", "0.5", "true"], vec!["say \"x\"", "", "false"]]);
    }
}
