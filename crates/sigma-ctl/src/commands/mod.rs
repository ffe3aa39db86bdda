//! The commands: each turns its arguments into API calls and prints the answers.

mod audit;
mod contract;
mod import_v1;
mod keys;
pub mod mesh;
mod providers;
mod purposes;
mod resolve;
mod routes;
mod vps;

use serde::de::DeserializeOwned;
use sigma_types::List;
use time::OffsetDateTime;

use crate::cli::{Command, Page};
use crate::client::{Answer, Client};
use crate::config::Settings;
use crate::error::Result;
use crate::output::{Cell, Details, Output, Table};

/// What every command needs: the client, the settings it was made from, the output, and one
/// clock reading for ages.
pub struct Ctx<'w> {
    /// The API client.
    pub client: Client,
    /// The resolved settings.
    pub settings: Settings,
    /// Where results go.
    pub out: Output<'w>,
    /// Now, for ages and states (`5m ago`, `expired`).
    pub now: OffsetDateTime,
    /// The directory `-o` named (`mesh export`, `mesh bootstrap`), or `-`.
    pub dir: Option<std::path::PathBuf>,
}

/// Runs one API command.
pub async fn dispatch(ctx: &mut Ctx<'_>, command: Command) -> Result<()> {
    match command {
        Command::Vps(c) => vps::run(ctx, c).await,
        Command::Providers(c) => providers::providers(ctx, c).await,
        Command::Purposes(c) => purposes::purposes(ctx, c).await,
        Command::Keys(c) => keys::keys(ctx, c).await,
        Command::Enroll(c) => keys::enroll(ctx, c).await,
        Command::Routes(c) => routes::run(ctx, c).await,
        Command::Mesh(c) => mesh::run(ctx, c).await,
        Command::Audit(a) => audit::run(ctx, a).await,
        Command::Import(crate::cli::ImportCommand::SigmaV1 {
            database_url,
            dry_run,
        }) => import_v1::run(ctx, &database_url, dry_run).await,
        Command::Completions { shell } => crate::completions(shell, &mut ctx.out),
    }
}

impl Ctx<'_> {
    /// Fetches a list page (or every page with `--all`).
    pub async fn fetch_list(
        &self,
        segments: &[&str],
        mut query: Vec<(&str, String)>,
        page: &Page,
    ) -> Result<Answer> {
        if page.all {
            return self.client.get_all(segments, &query).await;
        }
        if let Some(l) = page.limit {
            query.push(("limit", l.to_string()));
        }
        if let Some(o) = page.offset {
            query.push(("offset", o.to_string()));
        }
        self.client.get(segments, &query).await
    }

    /// Prints one object: as sent for scripts, as a detail view for people.
    pub fn show<T: DeserializeOwned>(
        &mut self,
        a: &Answer,
        render: impl FnOnce(&T, OffsetDateTime) -> Details,
    ) -> Result<()> {
        if self.out.human() {
            let v: T = a.parse()?;
            let d = render(&v, self.now);
            self.out.details(&d)
        } else {
            self.out.value(&a.body)
        }
    }

    /// Prints a list page: as sent for scripts, as a table for people (with a note on standard
    /// error when the page is not the whole list).
    pub fn list<T: DeserializeOwned>(
        &mut self,
        a: &Answer,
        what: &str,
        page: &Page,
        headers: &[&str],
        row: impl Fn(&T, OffsetDateTime) -> Vec<Cell>,
    ) -> Result<()> {
        if !self.out.human() {
            return self.out.value(&a.body);
        }
        let l: List<T> = a.parse()?;
        self.rows(&l.items, what, headers, row)?;
        let shown = l.items.len() as i64;
        let offset = page.offset.unwrap_or(0);
        if !page.all && shown > 0 && offset + shown < l.total {
            eprintln!(
                "{shown} of {} {what} shown (from {}); use --all, or --limit and --offset",
                l.total,
                offset + 1
            );
        }
        Ok(())
    }

    /// Prints items as a table (or a note on standard error that there are none).
    pub fn rows<T>(
        &mut self,
        items: &[T],
        what: &str,
        headers: &[&str],
        row: impl Fn(&T, OffsetDateTime) -> Vec<Cell>,
    ) -> Result<()> {
        if items.is_empty() {
            eprintln!("no {what}");
            return Ok(());
        }
        let mut t = Table::new(headers);
        for i in items {
            t.row(row(i, self.now));
        }
        self.out.table(&t)
    }

    /// A line for people; nothing for scripts (which get the object instead).
    pub fn note(&mut self, s: &str) -> Result<()> {
        if self.out.human() {
            self.out.line(s)
        } else {
            Ok(())
        }
    }
}
