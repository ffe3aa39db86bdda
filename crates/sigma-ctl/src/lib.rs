//! sigmactl: the operator's command-line client of sigma-api.
//!
//! [`cli`] defines the command line, [`config`] resolves where sigma-api is and which key to
//! use (flags, environment, config file profiles), [`client`] talks to sigma-api, and
//! [`output`] prints tables for people or the API's objects as JSON/YAML for scripts. [`run`]
//! ties them together; the `sigmactl` binary only parses the command line, runs it, and turns
//! the outcome into an exit code.

pub mod cli;
pub mod client;
mod commands;
pub mod config;
pub mod doctor;
pub mod error;
pub mod input;
pub mod install;
pub mod output;

use clap::CommandFactory;

pub use cli::Cli;
pub use error::{Error, Result};

use crate::cli::{Command, MeshCommand};
use crate::config::Env;
use crate::output::Output;

/// Runs a parsed command line, printing its results to `out`.
pub async fn run(cli: Cli, env: &dyn Env, mut out: Output<'_>) -> Result<()> {
    let writes_files = matches!(
        cli.command,
        Command::Mesh(MeshCommand::Export | MeshCommand::Bootstrap { .. })
    );
    if let Some(d) = cli.global.dir()
        && !writes_files
    {
        return Err(Error::Usage(format!(
            "-o {}: expected table, json or yaml (a directory only for `mesh export` and `mesh bootstrap`)",
            d.display()
        )));
    }
    if let Command::Completions { shell } = cli.command {
        return completions(shell, &mut out);
    }
    let settings = config::resolve(&cli.global.flags(), env)?;
    let client = client::Client::new(&settings)?;
    let mut ctx = commands::Ctx {
        client,
        settings,
        out,
        now: time::OffsetDateTime::now_utc(),
        dir: cli.global.dir().map(std::path::Path::to_path_buf),
    };
    commands::dispatch(&mut ctx, cli.command).await
}

/// Prints the completion script of `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut Output<'_>) -> Result<()> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "sigmactl", &mut buf);
    out.text(&String::from_utf8_lossy(&buf))
}
