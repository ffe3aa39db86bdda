//! The `sigmactl` binary: parses the command line, runs it, and maps the outcome to an exit
//! code (0 success, 1 failure, 2 usage); everything else is in the library.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use sigma_ctl::config::ProcessEnv;
use sigma_ctl::error::{EXIT_FAILURE, EXIT_OK};
use sigma_ctl::output::{self, Output};

fn main() -> ExitCode {
    // Usage errors exit with clap's code 2.
    let cli = sigma_ctl::Cli::parse();
    let format = cli.global.format();
    let color = output::use_color(format);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let mut stdout = std::io::stdout().lock();
    let result = runtime.block_on(sigma_ctl::run(
        cli,
        &ProcessEnv,
        Output::new(format, color, &mut stdout),
    ));
    let result = result.and_then(|()| stdout.flush().map_err(sigma_ctl::Error::Output));
    match result {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) if e.is_broken_pipe() => ExitCode::from(EXIT_OK),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
