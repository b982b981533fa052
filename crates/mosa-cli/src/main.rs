//! `mosa`: parameter-efficient fine-tuning of vision backbones with sparse adapters.

// the doc comments of the clap arguments are `--help` text, where `<run>` is a placeholder, not HTML
#![allow(rustdoc::invalid_html_tags)]

mod backend;
mod cmd;
mod method_args;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mosa",
    version,
    about = "Parameter-efficient fine-tuning of vision backbones with sparse adapters (MoSA) and sparse-expert merging",
    after_help = "The backend is chosen at build time: --features flex (default), ndarray, wgpu or cuda."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the backend, the device, the model presets and the weights in the cache.
    Info,
    /// Run a backbone in evaluation mode on a tensor and write tokens, pre-logits and logits.
    Forward(cmd::forward::Args),
    /// Trainable parameters of a tuning method on a backbone, by group, and after merging.
    Inspect(cmd::inspect::Args),
    /// Time inference or a training step of a preset (random weights).
    #[command(subcommand)]
    Bench(cmd::bench::Command),
    /// Fetch and list pretrained weights.
    #[command(subcommand)]
    Weights(cmd::weights::Command),
    /// Fine-tune a backbone with a method on a dataset (the MoSA recipe).
    Train(Box<cmd::train::TrainArgs>),
    /// Evaluate a saved run, or one task of a merged model, on a dataset split.
    Eval(cmd::train::EvalArgs),
    /// Task experts: `expert export --run DIR [--format peft]`, `expert convert F --to peft`, `expert import PEFT_DIR`, `expert info FILE`.
    #[command(subcommand)]
    Expert(cmd::expert::Command),
    /// Merge task experts onto their base backbone (overlap-mean, mean, task arithmetic, TIES, DARE).
    Merge(cmd::merge::Args),
    /// Serve task experts on one base backbone over HTTP (KServe v2, `/predictions`, `/metrics`, a page at `/`).
    Serve(Box<cmd::serve::Args>),
    /// Datasets: `data check <dataset>` reads every list entry and image and reports counts.
    #[command(subcommand)]
    Data(cmd::data::Command),
}

/// Keeps up to 1 GiB of freed memory in glibc's heap instead of returning it to the OS at each
/// `free` (`M_TOP_PAD`). The kernels allocate and drop buffers of tens of MB per op; without it
/// the heap top is trimmed and grown again ~200 times per ViT-S forward at batch 32, and every
/// new page faults: 2.7 M minor faults and 4 s of system time in a 13 s
/// `mosa bench forward --iters 3`, against 53 k and 0.2 s with it (docs/timings.md).
fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_TOP_PAD, 1 << 30);
    }
}

fn main() -> ExitCode {
    retain_freed_memory();
    // A bug must still end in one clear line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        if msg.contains("Broken pipe") {
            // stdout was closed by the reader (`mosa info | head`): stop quietly, as SIGPIPE would.
            std::process::exit(141);
        }
        if let Some(stream) = ["stdout", "stderr"].into_iter().find(|s| msg.starts_with(&format!("failed printing to {s}"))) {
            // `> /dev/full`, a closed terminal: not a bug. Say so where it can still be said (never
            // a second panic: that would abort), and exit with EX_IOERR. Every file a command writes
            // is whole (written atomically), and an interrupted run resumes.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "error: cannot write to {stream} ({}); exiting", msg.rsplit(": ").next().unwrap_or("write error"));
            std::process::exit(EXIT_OUTPUT);
        }
        let at = info.location().map(|l| format!(" (at {}:{})", l.file(), l.line())).unwrap_or_default();
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "error: internal error: {}{at}; please report it", msg.replace('\n', " "));
    }));
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // the flags given on the command line (not defaults): `train --resume` compares them
    let given: Vec<String> = matches
        .subcommand_matches("train")
        .map(|m| m.ids().filter(|id| m.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine)).map(|id| id.to_string()).collect())
        .unwrap_or_default();
    let result = match cli.command {
        Command::Info => cmd::info::run(),
        Command::Forward(args) => cmd::forward::run(args),
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Bench(c) => cmd::bench::run(c),
        Command::Weights(c) => cmd::weights::run(c),
        Command::Data(c) => cmd::data::run(c),
        Command::Train(a) => cmd::train::train(*a, &given),
        Command::Eval(a) => cmd::train::eval(a),
        Command::Expert(c) => cmd::expert::run(c),
        Command::Merge(a) => cmd::merge::run(a),
        Command::Serve(a) => cmd::serve::run(*a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            use std::io::Write;
            // stderr itself may be unwritable (`2> /dev/full`): the exit status still says it
            let _ = writeln!(std::io::stderr(), "error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The exit status when stdout or stderr cannot be written (`> /dev/full`): EX_IOERR of sysexits.h.
const EXIT_OUTPUT: i32 = 74;

/// The error and its causes on one line, each cause once: an error whose message already
/// includes its source's text (`path: No such file or directory`) does not repeat it.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !msg.contains(&s) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&s);
        }
    }
    msg.replace('\n', " ")
}
