//! The benchmarks' CSV files: typed rows (`serde::Serialize`, one field per column, the header
//! from the field names) written with the `csv` crate, so a name with a comma or a quote stays
//! one field.

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
    fn rows_with_commas_quotes_and_gaps() {
        let rows = [Row { task: "a,b".into(), acc: Some(0.5), chosen: true }, Row { task: "say \"x\"".into(), acc: None, chosen: false }];
        assert_eq!(super::csv_text(&rows).unwrap(), "task,acc,chosen\n\"a,b\",0.5,true\n\"say \"\"x\"\"\",,false\n");
        let text = super::csv_text(&rows).unwrap();
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let back: Vec<Vec<String>> = r.records().map(|x| x.unwrap().iter().map(String::from).collect()).collect();
        assert_eq!(back, [vec!["a,b", "0.5", "true"], vec!["say \"x\"", "", "false"]]);
    }
}
