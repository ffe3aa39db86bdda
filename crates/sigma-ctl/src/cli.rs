//! The command line: every command, flag and argument of `sigmactl`.
//!
//! `edit` commands send a `PATCH` with only the fields given. A field that may be empty is
//! cleared (sent as `null`) with its `--clear-FIELD` flag; `--FIELD` and `--clear-FIELD`
//! exclude each other, and an `edit` without any field is a usage error.
//!
//! One file (about 1,030 lines) on purpose: it is the whole clap definition of one program, so
//! the flags every command shares, the value parsers and the `--help` texts read in one place,
//! and `the_command_line_is_consistent` checks it as one.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{ArgGroup, Args, Parser, Subcommand};
use sigma_types::mesh::MeshPhase;
use sigma_types::{
    ClusterType, IpAddress, MeshSyncStatus, PlanMode, ProxyProtocol, Role, RouteStatus, VpsStatus,
};

use crate::config::Flags;
use crate::input;
use crate::output::Format;

const AFTER_HELP: &str = "\
Configuration (flags beat environment beat config file):
  --api-url / SIGMA_API_URL / profile api_url        default http://127.0.0.1:3000
  --api-key-file / SIGMA_API_KEY / SIGMA_API_KEY_FILE / profile api_key or api_key_file
  --profile / SIGMA_PROFILE                            default \"default\"
  --config / SIGMA_CONFIG          default $XDG_CONFIG_HOME/sigma/config.toml or ~/.config/sigma/config.toml

Exit codes: 0 success, 1 failure (API, network or configuration error), 2 usage error.
Colour only on a terminal, and never with NO_COLOR set.";

/// sigmactl: the operator's client of sigma-api (fleet inventory, keys, enrollment, Envoy routes).
#[derive(Debug, Parser)]
#[command(name = "sigmactl", version, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    /// Settings that apply to every command.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags of every command.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// sigma-api's URL [env: SIGMA_API_URL] [default: the profile's api_url, else http://127.0.0.1:3000]
    #[arg(
        long,
        global = true,
        value_name = "URL",
        help_heading = "Global options"
    )]
    pub api_url: Option<String>,
    /// Profile of the config file [env: SIGMA_PROFILE] [default: default]
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        help_heading = "Global options"
    )]
    pub profile: Option<String>,
    /// Config file [env: SIGMA_CONFIG] [default: $XDG_CONFIG_HOME/sigma/config.toml]
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        help_heading = "Global options"
    )]
    pub config: Option<PathBuf>,
    /// File holding the API key (else SIGMA_API_KEY, SIGMA_API_KEY_FILE, then the profile)
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        help_heading = "Global options"
    )]
    pub api_key_file: Option<PathBuf>,
    /// Output: `table` for people, or the API's objects as `json` or `yaml`; `mesh export` and
    /// `mesh bootstrap` also take a directory to write files into (`-`: standard output)
    #[arg(
        short = 'o',
        long,
        global = true,
        value_name = "table|json|yaml|DIR",
        value_parser = output_arg,
        default_value = "table",
        help_heading = "Global options"
    )]
    pub output: OutputArg,
}

/// What `-o` names: a format, or (for the commands that write files) a directory.
///
/// One flag carries both because the command lines read `mesh bootstrap HOST -o DIR`
/// while `-o json` stays the global format flag; a clap argument of a subcommand cannot
/// reuse the global `-o`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputArg {
    /// `table`, `json` or `yaml`.
    Format(Format),
    /// Anything else: a directory (or `-`, standard output) for `mesh export`/`mesh bootstrap`.
    Path(PathBuf),
}

fn output_arg(s: &str) -> Result<OutputArg, String> {
    match s {
        "table" => Ok(OutputArg::Format(Format::Table)),
        "json" => Ok(OutputArg::Format(Format::Json)),
        "yaml" => Ok(OutputArg::Format(Format::Yaml)),
        "" => Err("expected table, json, yaml, or a directory".into()),
        other => Ok(OutputArg::Path(PathBuf::from(other))),
    }
}

impl Global {
    /// The configuration flags.
    pub fn flags(&self) -> Flags {
        Flags {
            api_url: self.api_url.clone(),
            profile: self.profile.clone(),
            config: self.config.clone(),
            api_key_file: self.api_key_file.clone(),
        }
    }

    /// The output format (`table` when `-o` names a directory: messages are for people then).
    pub fn format(&self) -> Format {
        match self.output {
            OutputArg::Format(f) => f,
            OutputArg::Path(_) => Format::Table,
        }
    }

    /// The directory (or `-`) `-o` names, if it names one.
    pub fn dir(&self) -> Option<&std::path::Path> {
        match &self.output {
            OutputArg::Path(p) => Some(p),
            OutputArg::Format(_) => None,
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// VPS of the fleet (addressed by hostname or id)
    #[command(subcommand)]
    Vps(VpsCommand),
    /// Hosting providers (addressed by name or id)
    #[command(subcommand, visible_alias = "provider")]
    Providers(ProviderCommand),
    /// Purposes of VPS and their mesh settings
    #[command(subcommand, visible_alias = "purpose")]
    Purposes(PurposeCommand),
    /// API keys (admin)
    #[command(subcommand, visible_alias = "key")]
    Keys(KeyCommand),
    /// Enrollment tokens for new VPS agents
    #[command(subcommand)]
    Enroll(EnrollCommand),
    /// Envoy routes of a VPS, in classic and mesh mode
    #[command(subcommand, visible_alias = "route")]
    Routes(RouteCommand),
    /// The Istio mesh: status, GitOps export, manual bootstrap, and a doctor for one VPS
    #[command(subcommand)]
    Mesh(MeshCommand),
    /// The audit log, newest first (admin)
    Audit(AuditArgs),
    /// Brings an inventory over from another system
    #[command(subcommand)]
    Import(ImportCommand),
    /// Prints a shell completion script
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Page of a list.
#[derive(Debug, Clone, Args)]
pub struct Page {
    /// Page size (1-1000) [default: 100]
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..=1000))]
    pub limit: Option<i64>,
    /// Items to skip
    #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
    pub offset: Option<i64>,
    /// Fetch every page
    #[arg(long, conflicts_with_all = ["limit", "offset"])]
    pub all: bool,
}

fn vps_status() -> impl TypedValueParser<Value = VpsStatus> {
    PossibleValuesParser::new(VpsStatus::ALL.map(VpsStatus::as_str))
        .try_map(|s| VpsStatus::parse(&s).ok_or("unknown status"))
}

fn plan_mode() -> impl TypedValueParser<Value = PlanMode> {
    PossibleValuesParser::new(["current", "mesh", "classic"]).try_map(|s| {
        [PlanMode::Current, PlanMode::Mesh, PlanMode::Classic]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or("unknown mode")
    })
}

fn new_vps_status() -> impl TypedValueParser<Value = VpsStatus> {
    PossibleValuesParser::new(["provisioning", "active"])
        .try_map(|s| VpsStatus::parse(&s).ok_or("unknown status"))
}

fn edit_vps_status() -> impl TypedValueParser<Value = VpsStatus> {
    PossibleValuesParser::new(["provisioning", "active", "retiring", "retired"])
        .try_map(|s| VpsStatus::parse(&s).ok_or("unknown status"))
}

fn role() -> impl TypedValueParser<Value = Role> {
    PossibleValuesParser::new(["admin", "operator", "readonly", "agent"])
        .try_map(|s| Role::parse(&s).ok_or("unknown role"))
}

fn cluster_type() -> impl TypedValueParser<Value = ClusterType> {
    PossibleValuesParser::new(["static", "strict_dns", "logical_dns"])
        .try_map(|s| ClusterType::parse(&s).ok_or("unknown cluster type"))
}

fn proxy_protocol() -> impl TypedValueParser<Value = ProxyProtocol> {
    PossibleValuesParser::new(["none", "v1", "v2"])
        .try_map(|s| ProxyProtocol::parse(&s).ok_or("unknown PROXY protocol"))
}

fn route_status() -> impl TypedValueParser<Value = RouteStatus> {
    PossibleValuesParser::new(["active", "disabled"])
        .try_map(|s| RouteStatus::parse(&s).ok_or("unknown route status"))
}

fn since(s: &str) -> Result<String, String> {
    input::time_arg(s, time::OffsetDateTime::now_utc())
}

/// `sigmactl import …`
#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// From the earlier sigma (lai3d/sigma) on PostgreSQL: providers, purposes, VPS, exchange
    /// rates and Envoy routes, through this sigma-api (validated and audited)
    #[command(name = "sigma-v1")]
    SigmaV1 {
        /// postgres://… of the earlier sigma's database (read only)
        #[arg(long, env = "SIGMA_V1_DATABASE_URL", value_name = "URL")]
        database_url: String,
        /// Report what would happen, write nothing
        #[arg(long)]
        dry_run: bool,
    },
}

/// `sigmactl vps …`
#[derive(Debug, Subcommand)]
pub enum VpsCommand {
    /// Lists VPS (deleted ones only with --status deleted)
    #[command(visible_alias = "ls")]
    List(VpsListArgs),
    /// Shows one VPS
    Show {
        /// Hostname or id
        vps: String,
    },
    /// Adds a VPS (it starts `provisioning` until its agent reports)
    Create(VpsCreateArgs),
    /// Changes a VPS: only the fields given are sent
    Edit(VpsEditArgs),
    /// Retires a VPS: `retiring` until its agent has stopped, or `retired` at once with --force
    Retire {
        /// Hostname or id
        vps: String,
        /// Mark it `retired` at once (for a VPS whose agent is gone)
        #[arg(long)]
        force: bool,
    },
    /// Issues a single-use enrollment token bound to one VPS, for reinstalling its agent,
    /// and prints the install command. Enrolling with it revokes the VPS's agent key and
    /// issues a new one; no other token can enroll a VPS whose agent key is live
    Reenroll {
        /// Hostname or id
        vps: String,
        /// Lifetime of the token (600, 30m, 12h; at most 1d) [default: 1h]
        #[arg(long, value_parser = input::duration_secs)]
        ttl: Option<i64>,
        /// sigma-api's URL as the VPS reach it, for the install command [default: the API URL in use]
        #[arg(long, value_name = "URL")]
        agent_api_url: Option<String>,
    },
    /// Restores a deleted VPS to the status it had
    Restore {
        /// Hostname (of a deleted VPS) or id
        vps: String,
    },
    /// Deletes a VPS (soft: `vps restore` brings it back)
    #[command(visible_alias = "rm")]
    Delete {
        /// Hostname or id
        vps: String,
    },
    /// VPS whose paid period ends within N days (expired ones too), soonest first
    Expiring {
        /// Days from today
        #[arg(long, default_value_t = 30)]
        days: i64,
    },
    /// Writes the inventory as CSV or JSON (the filters of `vps list` apply)
    Export {
        /// csv or json
        #[arg(long, default_value = "csv", value_parser = ["csv", "json"])]
        format: String,
        /// Write to this file instead of standard output
        #[arg(long = "file", value_name = "FILE")]
        file: Option<std::path::PathBuf>,
        /// Filters
        #[command(flatten)]
        filter: Box<VpsListArgs>,
    },
    /// Reads a CSV or JSON export back: creates VPS, or changes those of the same hostname
    Import {
        /// The file (.csv, or .json as `vps export --format json` writes it)
        file: std::path::PathBuf,
        /// Report what would happen, change nothing
        #[arg(long)]
        dry_run: bool,
        /// Import the good rows even if some fail (default: all or nothing)
        #[arg(long)]
        partial: bool,
    },
}

/// Filters of `vps list`.
#[derive(Debug, Clone, Args)]
pub struct VpsListArgs {
    /// Only this status
    #[arg(long, value_parser = vps_status())]
    pub status: Option<VpsStatus>,
    /// Only this purpose
    #[arg(long)]
    pub purpose: Option<String>,
    /// Only this country (ISO 3166-1 alpha-2)
    #[arg(long)]
    pub country: Option<String>,
    /// Only this provider (name)
    #[arg(long)]
    pub provider: Option<String>,
    /// Only VPS with this tag
    #[arg(long)]
    pub tag: Option<String>,
    /// Exactly this hostname
    #[arg(long)]
    pub hostname: Option<String>,
    /// Text search in hostname, alias, city and addresses
    #[arg(short = 'q', long = "search", value_name = "TEXT")]
    pub q: Option<String>,
    /// Only VPS paid until at most N days from today (expired ones included)
    #[arg(long, value_name = "N")]
    pub expires_within_days: Option<i64>,
    /// Only VPS priced in this currency
    #[arg(long)]
    pub currency: Option<String>,
    /// Only VPS costing at least this per billing cycle
    #[arg(long, value_name = "DECIMAL")]
    pub cost_min: Option<String>,
    /// Only VPS costing at most this per billing cycle
    #[arg(long, value_name = "DECIMAL")]
    pub cost_max: Option<String>,
    /// Page
    #[command(flatten)]
    pub page: Page,
}

/// Fields of `vps create`.
#[derive(Debug, Clone, Args)]
pub struct VpsCreateArgs {
    /// Hostname
    pub hostname: String,
    /// Purpose (must exist)
    #[arg(long)]
    pub purpose: String,
    /// Short name for people
    #[arg(long)]
    pub alias: Option<String>,
    /// Provider name (must exist)
    #[arg(long)]
    pub provider: Option<String>,
    /// Address, `IP` (labelled public) or `LABEL=IP`; repeat for several
    #[arg(long = "ip", value_name = "[LABEL=]IP", value_parser = input::ip_address)]
    pub ips: Vec<IpAddress>,
    /// Country (ISO 3166-1 alpha-2)
    #[arg(long)]
    pub country: Option<String>,
    /// City
    #[arg(long)]
    pub city: Option<String>,
    /// Initial status [default: provisioning]
    #[arg(long, value_parser = new_vps_status())]
    pub status: Option<VpsStatus>,
    /// Tag; repeat for several
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Scrape node-exporter on it [default: true]
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub monitoring: Option<bool>,
    /// node-exporter port [default: 9100]
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub node_exporter_port: Option<u16>,
    /// Keep it out of the mesh whatever its purpose says [default: false]
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub mesh_opt_out: Option<bool>,
}

/// Fields of `vps edit`; `--clear-*` sends `null` for a field that may be empty.
#[derive(Debug, Clone, Args)]
#[command(override_usage = "sigmactl vps edit <VPS> <--FIELD VALUE | --clear-FIELD>...")]
#[command(group(ArgGroup::new("change").required(true).multiple(true).args([
    "hostname", "alias", "clear_alias", "provider", "clear_provider", "ips", "clear_ips",
    "country", "clear_country", "city", "clear_city", "purpose", "status", "tags", "clear_tags",
    "monitoring", "node_exporter_port", "mesh_opt_out",
    "cost", "currency", "billing_cycle", "purchased_on", "expires_on", "auto_renew", "cpu_cores",
    "ram_mb", "disk_gb", "traffic_gb", "ssh_port", "data_center", "clear_contract",
])))]
pub struct VpsEditArgs {
    /// Hostname or id of the VPS to change
    pub vps: String,
    /// New hostname
    #[arg(long, value_name = "HOSTNAME")]
    pub hostname: Option<String>,
    /// New alias
    #[arg(long, conflicts_with = "clear_alias")]
    pub alias: Option<String>,
    /// Remove the alias
    #[arg(long)]
    pub clear_alias: bool,
    /// New provider (name)
    #[arg(long, conflicts_with = "clear_provider")]
    pub provider: Option<String>,
    /// Remove the provider
    #[arg(long)]
    pub clear_provider: bool,
    /// Replace the addresses: `IP` (labelled public) or `LABEL=IP`; repeat for several
    #[arg(long = "ip", value_name = "[LABEL=]IP", value_parser = input::ip_address, conflicts_with = "clear_ips")]
    pub ips: Vec<IpAddress>,
    /// Remove every address
    #[arg(long)]
    pub clear_ips: bool,
    /// New country
    #[arg(long, conflicts_with = "clear_country")]
    pub country: Option<String>,
    /// Remove the country
    #[arg(long)]
    pub clear_country: bool,
    /// New city
    #[arg(long, conflicts_with = "clear_city")]
    pub city: Option<String>,
    /// Remove the city
    #[arg(long)]
    pub clear_city: bool,
    /// New purpose
    #[arg(long)]
    pub purpose: Option<String>,
    /// New status (lifecycle moves only; `vps delete`/`vps restore` delete and restore)
    #[arg(long, value_parser = edit_vps_status())]
    pub status: Option<VpsStatus>,
    /// Replace the tags; repeat for several
    #[arg(long = "tag", value_name = "TAG", conflicts_with = "clear_tags")]
    pub tags: Vec<String>,
    /// Remove every tag
    #[arg(long)]
    pub clear_tags: bool,
    /// Scrape node-exporter on it
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub monitoring: Option<bool>,
    /// node-exporter port
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub node_exporter_port: Option<u16>,
    /// Keep it out of the mesh (`true`), or let it join as its purpose says (`false`)
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub mesh_opt_out: Option<bool>,
    /// Contract terms and specs
    #[command(flatten)]
    pub contract: Box<ContractEditArgs>,
}

/// Contract fields of `vps edit` (checked by sigma-api, which names a bad one).
#[derive(Debug, Clone, Default, Args)]
pub struct ContractEditArgs {
    /// Price of one billing cycle, a decimal (`4.99`)
    #[arg(long, value_name = "DECIMAL", help_heading = "Contract")]
    pub cost: Option<String>,
    /// ISO 4217 currency of the cost (EUR, USD, …)
    #[arg(long, help_heading = "Contract")]
    pub currency: Option<String>,
    /// monthly, quarterly, yearly or other
    #[arg(long, value_name = "CYCLE", help_heading = "Contract")]
    pub billing_cycle: Option<String>,
    /// Purchase date, YYYY-MM-DD
    #[arg(long, value_name = "DATE", help_heading = "Contract")]
    pub purchased_on: Option<String>,
    /// Paid until, YYYY-MM-DD
    #[arg(long, value_name = "DATE", help_heading = "Contract")]
    pub expires_on: Option<String>,
    /// Whether the provider renews it by itself
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set, help_heading = "Contract")]
    pub auto_renew: Option<bool>,
    /// CPU cores
    #[arg(long, value_name = "N", help_heading = "Contract")]
    pub cpu_cores: Option<i64>,
    /// RAM in MiB
    #[arg(long, value_name = "MIB", help_heading = "Contract")]
    pub ram_mb: Option<i64>,
    /// Disk in GB
    #[arg(long, value_name = "GB", help_heading = "Contract")]
    pub disk_gb: Option<i64>,
    /// Monthly traffic allowance in GB
    #[arg(long, value_name = "GB", help_heading = "Contract")]
    pub traffic_gb: Option<i64>,
    /// SSH port
    #[arg(long, value_name = "PORT", help_heading = "Contract")]
    pub ssh_port: Option<i64>,
    /// Data-centre name
    #[arg(long, value_name = "NAME", help_heading = "Contract")]
    pub data_center: Option<String>,
    /// Clear a contract field (cost, currency, billing-cycle, purchased-on, expires-on,
    /// auto-renew, cpu-cores, ram-mb, disk-gb, traffic-gb, ssh-port, data-center); repeat
    #[arg(long, value_name = "FIELD", help_heading = "Contract")]
    pub clear_contract: Vec<String>,
}

/// `sigmactl providers …`
#[derive(Debug, Subcommand)]
pub enum ProviderCommand {
    /// Lists providers
    #[command(visible_alias = "ls")]
    List(Page),
    /// Shows one provider
    Show {
        /// Name or id
        provider: String,
    },
    /// Adds a provider
    Create {
        /// Unique name
        name: String,
        /// Country (ISO 3166-1 alpha-2)
        #[arg(long)]
        country: Option<String>,
        /// Website (http or https URL)
        #[arg(long)]
        website: Option<String>,
        /// Free notes
        #[arg(long)]
        notes: Option<String>,
    },
    /// Changes a provider: only the fields given are sent
    Edit(ProviderEditArgs),
    /// Removes a provider no VPS uses
    #[command(visible_alias = "rm")]
    Delete {
        /// Name or id
        provider: String,
    },
}

/// Fields of `providers edit`; `--clear-*` sends `null`.
#[derive(Debug, Clone, Args)]
#[command(override_usage = "sigmactl providers edit <PROVIDER> <--FIELD VALUE | --clear-FIELD>...")]
#[command(group(ArgGroup::new("change").required(true).multiple(true).args([
    "name", "country", "clear_country", "website", "clear_website", "notes", "clear_notes",
])))]
pub struct ProviderEditArgs {
    /// Name or id of the provider to change
    pub provider: String,
    /// New name
    #[arg(long)]
    pub name: Option<String>,
    /// New country
    #[arg(long, conflicts_with = "clear_country")]
    pub country: Option<String>,
    /// Remove the country
    #[arg(long)]
    pub clear_country: bool,
    /// New website
    #[arg(long, conflicts_with = "clear_website")]
    pub website: Option<String>,
    /// Remove the website
    #[arg(long)]
    pub clear_website: bool,
    /// New notes
    #[arg(long, conflicts_with = "clear_notes")]
    pub notes: Option<String>,
    /// Remove the notes
    #[arg(long)]
    pub clear_notes: bool,
}

/// Mesh settings given on the command line.
#[derive(Debug, Clone, Args)]
pub struct MeshArgs {
    /// Mesh settings as inline JSON (an object; `{}` resets them)
    #[arg(long, value_name = "JSON", conflicts_with = "mesh_file")]
    pub mesh: Option<String>,
    /// Mesh settings from a JSON or YAML file (`-` reads standard input)
    #[arg(long, value_name = "FILE")]
    pub mesh_file: Option<String>,
}

/// `sigmactl purposes …`
#[derive(Debug, Subcommand)]
pub enum PurposeCommand {
    /// Lists purposes
    #[command(visible_alias = "ls")]
    List(Page),
    /// Shows one purpose with its mesh settings
    Show {
        /// Name
        name: String,
    },
    /// Adds a purpose
    Create {
        /// Name (a DNS label; cannot change later)
        name: String,
        /// Name shown to people [default: the name]
        #[arg(long)]
        display_name: Option<String>,
        /// Mesh settings
        #[command(flatten)]
        mesh: MeshArgs,
    },
    /// Changes a purpose's display name or mesh settings (mesh settings are replaced whole)
    #[command(
        override_usage = "sigmactl purposes edit <NAME> <--display-name NAME | --mesh JSON | --mesh-file FILE>..."
    )]
    #[command(group(ArgGroup::new("change").required(true).multiple(true).args([
        "display_name", "mesh", "mesh_file",
    ])))]
    Edit {
        /// Name
        name: String,
        /// New display name
        #[arg(long)]
        display_name: Option<String>,
        /// New mesh settings
        #[command(flatten)]
        mesh: MeshArgs,
    },
    /// Removes a purpose no VPS has
    #[command(visible_alias = "rm")]
    Delete {
        /// Name
        name: String,
    },
}

/// `sigmactl keys …`
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Issues an API key and prints it once
    Create {
        /// What it is for
        name: String,
        /// Its role
        #[arg(long, value_parser = role())]
        role: Role,
        /// For agent keys: the VPS it acts for (hostname or id)
        #[arg(long, value_name = "VPS")]
        vps: Option<String>,
        /// Lifetime (3600, 30m, 12h, 90d, 2w) [default: no expiry]
        #[arg(long, value_parser = input::duration_secs)]
        ttl: Option<i64>,
    },
    /// Lists API keys (never their secrets)
    #[command(visible_alias = "ls")]
    List(Page),
    /// Revokes an API key at once
    Revoke {
        /// Id or prefix (`sgm_1a2b3c4d`)
        key: String,
    },
}

/// `sigmactl enroll …`
#[derive(Debug, Subcommand)]
pub enum EnrollCommand {
    /// Issues an enrollment token, printing it once with the command that installs an agent
    Create(EnrollCreateArgs),
    /// Lists enrollment tokens (never their secrets)
    #[command(visible_alias = "ls")]
    List(Page),
    /// Revokes an enrollment token
    Revoke {
        /// Id or prefix (`sge_1a2b3c4d`)
        token: String,
    },
}

/// Fields of `enroll create`.
#[derive(Debug, Clone, Args)]
pub struct EnrollCreateArgs {
    /// What it is for
    #[arg(long)]
    pub name: Option<String>,
    /// Lifetime (3600, 30m, 12h, 7d) [default: 1d]
    #[arg(long, value_parser = input::duration_secs)]
    pub ttl: Option<i64>,
    /// How many VPS may enroll with it [default: 1]
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_uses: Option<i64>,
    /// Purpose of VPS that enroll with it
    #[arg(long)]
    pub purpose: Option<String>,
    /// Provider (name) of VPS that enroll with it
    #[arg(long)]
    pub provider: Option<String>,
    /// Country of VPS that enroll with it
    #[arg(long)]
    pub country: Option<String>,
    /// Tag of VPS that enroll with it; repeat for several
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// sigma-api's URL as the VPS reach it, for the install command [default: the API URL in use]
    #[arg(long, value_name = "URL")]
    pub agent_api_url: Option<String>,
    /// Contract terms and specs every VPS that enrolls with it gets (`--clear-contract` has no
    /// meaning here and is refused)
    #[command(flatten)]
    pub contract: Box<ContractEditArgs>,
}

/// `sigmactl routes …`
#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// Lists a VPS's routes (disabled ones too)
    #[command(visible_alias = "ls")]
    List {
        /// Hostname or id of the VPS
        vps: String,
    },
    /// Adds a route to a VPS
    Add(RouteAddArgs),
    /// Changes a route: `routes edit ROUTE-ID …` or `routes edit VPS NAME …`
    Edit(RouteEditArgs),
    /// Removes a route: `routes rm ROUTE-ID` or `routes rm VPS NAME`
    #[command(visible_alias = "delete")]
    Rm {
        /// A route id, or the VPS (hostname or id) when NAME follows
        target: String,
        /// The route's name on that VPS
        name: Option<String>,
    },
    /// Shows where each active route of a VPS runs in a mode, and what the mesh cannot carry
    ///
    /// `--mode mesh` before switching a relay to mesh mode (`install.sh --istio`) lists, per
    /// route, its mesh service and listen address or why it would stop forwarding; exits 1
    /// when a route would not be carried.
    Plan {
        /// Hostname or id of the VPS
        vps: String,
        /// The mode: `current` (what its agent runs now), `mesh` or `classic`
        #[arg(long, default_value = "current", value_parser = plan_mode())]
        mode: PlanMode,
    },
    /// Creates or replaces a VPS's routes by name from a file, in one step
    ///
    /// The file (JSON or YAML; `-` is standard input) is either a list of routes or an object
    /// `{"routes": [...], "prune": bool}`. Output-only fields (`id`, `vps_id`, `created_at`,
    /// `updated_at`) are ignored, so the output of `routes list -o yaml` can be applied.
    Apply {
        /// Hostname or id of the VPS
        vps: String,
        /// The routes file
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: String,
        /// Also delete the VPS's routes the file does not name
        #[arg(long)]
        prune: bool,
    },
}

/// Fields of `routes add`.
#[derive(Debug, Clone, Args)]
pub struct RouteAddArgs {
    /// Hostname or id of the VPS
    pub vps: String,
    /// Route name (unique per VPS; lower-case letters, digits, `-`, `_`, `.`)
    pub name: String,
    /// Port Envoy listens on
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub listen_port: u16,
    /// Backend IP address or DNS name outside the fleet (with --backend-port)
    #[arg(long, required_unless_present_any = ["to_vps", "to_pool"], conflicts_with_all = ["to_vps", "to_pool"])]
    pub backend_host: Option<String>,
    /// Backend port
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..), required_unless_present_any = ["to_vps", "to_pool"])]
    pub backend_port: Option<u16>,
    #[command(flatten)]
    pub target: RouteTargetArgs,
    /// How Envoy resolves the backend [default: static for an IP, strict_dns for a name]
    #[arg(long, value_parser = cluster_type())]
    pub cluster_type: Option<ClusterType>,
    /// Connect timeout in milliseconds (1-60000) [default: 5000]
    #[arg(long, value_name = "MS")]
    pub connect_timeout_ms: Option<i64>,
    /// PROXY protocol towards the backend [default: none]
    #[arg(long, value_parser = proxy_protocol())]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Whether it is served [default: active]
    #[arg(long, value_parser = route_status())]
    pub status: Option<RouteStatus>,
}

/// A route's target inside the fleet (`routes add`/`edit`).
#[derive(Debug, Clone, Args)]
pub struct RouteTargetArgs {
    /// Forward to this VPS of the fleet (hostname or id), at --target-port
    #[arg(
        long,
        value_name = "VPS",
        conflicts_with = "to_pool",
        requires = "target_port"
    )]
    pub to_vps: Option<String>,
    /// Forward to the pool of this purpose's active, healthy VPS, at --target-port
    #[arg(long, value_name = "PURPOSE", requires = "target_port")]
    pub to_pool: Option<String>,
    /// Name of the port the target's purpose serves (its mesh.ports[].name)
    #[arg(long, value_name = "PORT-NAME")]
    pub target_port: Option<String>,
    /// With --to-pool: only VPS in this country (repeatable)
    #[arg(long = "country", value_name = "CC", requires = "to_pool")]
    pub countries: Vec<String>,
}

impl RouteTargetArgs {
    /// The API's target object, when a target was given.
    pub fn input(&self) -> Option<sigma_types::RouteTargetInput> {
        if self.to_vps.is_none() && self.to_pool.is_none() {
            return None;
        }
        Some(sigma_types::RouteTargetInput {
            vps: self.to_vps.clone(),
            purpose: self.to_pool.clone(),
            port: self.target_port.clone().unwrap_or_default(),
            countries: (!self.countries.is_empty()).then(|| self.countries.clone()),
        })
    }
}

/// Fields of `routes edit`.
#[derive(Debug, Clone, Args)]
#[command(override_usage = "sigmactl routes edit <ROUTE-ID | VPS NAME> <--FIELD VALUE>...")]
#[command(group(ArgGroup::new("change").required(true).multiple(true).args([
    "rename", "listen_port", "backend_host", "backend_port", "cluster_type",
    "connect_timeout_ms", "proxy_protocol", "status", "to_vps", "to_pool",
])))]
pub struct RouteEditArgs {
    /// A route id, or the VPS (hostname or id) when NAME follows
    pub target: String,
    /// The route's name on that VPS
    pub name: Option<String>,
    /// New name
    #[arg(long, value_name = "NAME")]
    pub rename: Option<String>,
    /// New listen port
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub listen_port: Option<u16>,
    /// New backend host (without --cluster-type the type follows the host's form)
    #[arg(long)]
    pub backend_host: Option<String>,
    /// New backend port
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub backend_port: Option<u16>,
    /// A new fleet target instead of the backend or target it has
    #[command(flatten)]
    pub target_to: RouteTargetArgs,
    /// New cluster type
    #[arg(long, value_parser = cluster_type())]
    pub cluster_type: Option<ClusterType>,
    /// New connect timeout in milliseconds
    #[arg(long, value_name = "MS")]
    pub connect_timeout_ms: Option<i64>,
    /// New PROXY protocol
    #[arg(long, value_parser = proxy_protocol())]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Enable or disable it
    #[arg(long, value_parser = route_status())]
    pub status: Option<RouteStatus>,
}

/// Filters of `audit`.
#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// Only this actor (`key:sgm_1a2b3c4d`, `agent:HOSTNAME`, `enroll:…`, `system`)
    #[arg(long)]
    pub actor: Option<String>,
    /// Only this action (`vps.create`, `vps.retire`, `api_key.revoke`, …)
    #[arg(long)]
    pub action: Option<String>,
    /// Only this kind of resource (`vps`, `provider`, …)
    #[arg(long)]
    pub resource_type: Option<String>,
    /// Only this resource (id or name)
    #[arg(long)]
    pub resource_id: Option<String>,
    /// Only entries at or after this time: RFC 3339, or a duration ago (30m, 12h, 7d)
    #[arg(long, value_parser = since)]
    pub since: Option<String>,
    /// Only entries before this time: RFC 3339, or a duration ago
    #[arg(long, value_parser = since)]
    pub until: Option<String>,
    /// Page
    #[command(flatten)]
    pub page: Page,
}

fn mesh_sync() -> impl TypedValueParser<Value = MeshSyncStatus> {
    PossibleValuesParser::new(MeshSyncStatus::ALL.map(MeshSyncStatus::as_str))
        .try_map(|s| MeshSyncStatus::parse(&s).ok_or("unknown mesh sync status"))
}

/// The agent's mesh phase a `mesh status --phase` filter names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseFilter {
    /// The agent reported this phase.
    Phase(MeshPhase),
    /// The agent reported no mesh state at all (`none`).
    None,
}

fn phase_filter() -> impl TypedValueParser<Value = PhaseFilter> {
    PossibleValuesParser::new([
        "installing",
        "starting",
        "ready",
        "degraded",
        "stopped",
        "none",
    ])
    .try_map(|s| {
        Ok::<_, &str>(match s.as_str() {
            "installing" => PhaseFilter::Phase(MeshPhase::Installing),
            "starting" => PhaseFilter::Phase(MeshPhase::Starting),
            "ready" => PhaseFilter::Phase(MeshPhase::Ready),
            "degraded" => PhaseFilter::Phase(MeshPhase::Degraded),
            "stopped" => PhaseFilter::Phase(MeshPhase::Stopped),
            "none" => PhaseFilter::None,
            _ => return Err("unknown phase"),
        })
    })
}

fn http_url(s: &str) -> Result<reqwest::Url, String> {
    let u = reqwest::Url::parse(s.trim()).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(format!("{s:?} is not an http(s) URL"));
    }
    Ok(u)
}

/// `sigmactl mesh …`
#[derive(Debug, Subcommand)]
pub enum MeshCommand {
    /// The fleet's mesh state as a table, or one VPS's in detail
    ///
    /// Columns: the reconciler's sync status and WorkloadEntry (sigma-api's record), and the
    /// phase of pilot-agent and Envoy the VPS's agent last reported.
    Status(MeshStatusArgs),
    /// The Istio objects of the mesh as GitOps manifests (`GET /api/mesh/manifests`)
    ///
    /// Without -o, or with `-o -` or `-o yaml`, the multi-document YAML goes to standard
    /// output as sigma-api serves it; `-o json` prints the objects as a JSON list. `-o DIR`
    /// writes one file per object and a kustomization.yaml into DIR, and removes the files of
    /// objects that are gone (only files an earlier `mesh export` wrote).
    Export,
    /// Fetches a VPS's Istio bootstrap bundle and writes its files for a manual install
    ///
    /// `-o DIR` writes root-cert.pem, istio-token (mode 0600), mesh.yaml, cluster.env and hosts
    /// into DIR (created with mode 0700) and prints where each goes on the VPS; `-o json` or
    /// `-o yaml` prints the bundle instead. Needs an admin or operator key; sigma-api records
    /// the issue in its audit log.
    Bootstrap {
        /// Hostname or id of the VPS
        vps: String,
    },
    /// Walks one VPS's mesh chain and prints each link as ok, warning or failed, with the fix
    ///
    /// Links: VPS active; mesh enabled; WorkloadEntry applied and matching; agent
    /// heartbeating; agent in mesh mode; pilot-agent and Envoy ready; workload certificate;
    /// istio-token; WorkloadEntry health; and with --prometheus: Envoy scraped, requests to
    /// Xboard. Exit code 1 when a link failed.
    Doctor(MeshDoctorArgs),
}

/// Filters of `mesh status`.
#[derive(Debug, Clone, Args)]
pub struct MeshStatusArgs {
    /// Hostname or id of one VPS (its details instead of the fleet table)
    pub vps: Option<String>,
    /// Only this purpose
    #[arg(long, conflicts_with = "vps")]
    pub purpose: Option<String>,
    /// Only this lifecycle status
    #[arg(long, value_parser = vps_status(), conflicts_with = "vps")]
    pub status: Option<VpsStatus>,
    /// Only this mesh sync status
    #[arg(long, value_parser = mesh_sync(), conflicts_with = "vps")]
    pub sync: Option<MeshSyncStatus>,
    /// Only this agent mesh phase (`none`: the agent reported none)
    #[arg(long, value_parser = phase_filter(), conflicts_with = "vps")]
    pub phase: Option<PhaseFilter>,
}

/// Arguments of `mesh doctor`.
#[derive(Debug, Clone, Args)]
pub struct MeshDoctorArgs {
    /// Hostname or id of the VPS
    pub vps: String,
    /// Prometheus' base URL: also check that it scrapes the VPS's Envoy and sees requests
    /// from it to Xboard
    #[arg(long, value_name = "URL", value_parser = http_url)]
    pub prometheus: Option<reqwest::Url>,
    /// A heartbeat older than this is stale (3600, 90s, 5m) [default: 90s, 3 agent intervals]
    #[arg(long, value_name = "DURATION", value_parser = input::duration_secs)]
    pub stale_after: Option<i64>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn edit_needs_a_field_and_clear_excludes_set() {
        let e = Cli::try_parse_from(["sigmactl", "vps", "edit", "h"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = Cli::try_parse_from([
            "sigmactl",
            "vps",
            "edit",
            "h",
            "--alias",
            "a",
            "--clear-alias",
        ])
        .unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        let c = Cli::try_parse_from([
            "sigmactl",
            "vps",
            "edit",
            "h",
            "--clear-alias",
            "--ip",
            "private=10.0.0.1",
            "--ip",
            "203.0.113.9",
        ])
        .unwrap();
        let Command::Vps(VpsCommand::Edit(a)) = c.command else {
            panic!("wrong command")
        };
        assert!(a.clear_alias);
        assert_eq!(a.ips.len(), 2);
        assert_eq!(a.ips[0].label, "private");
    }

    #[test]
    fn enums_and_durations_are_checked_at_parse_time() {
        assert!(Cli::try_parse_from(["sigmactl", "vps", "list", "--status", "gone"]).is_err());
        assert!(
            Cli::try_parse_from([
                "sigmactl",
                "vps",
                "create",
                "h",
                "--purpose",
                "p",
                "--status",
                "retired"
            ])
            .is_err()
        );
        let c = Cli::try_parse_from([
            "sigmactl", "keys", "create", "k", "--role", "readonly", "--ttl", "2d",
        ])
        .unwrap();
        let Command::Keys(KeyCommand::Create { ttl, role, .. }) = c.command else {
            panic!("wrong command")
        };
        assert_eq!((ttl, role), (Some(172_800), Role::Readonly));
        let c = Cli::try_parse_from(["sigmactl", "-o", "json", "vps", "ls", "--all"]).unwrap();
        assert_eq!(c.global.output, OutputArg::Format(Format::Json));
        assert_eq!(c.global.format(), Format::Json);
        let c =
            Cli::try_parse_from(["sigmactl", "mesh", "bootstrap", "h", "-o", "out/dir"]).unwrap();
        assert_eq!(c.global.dir(), Some(std::path::Path::new("out/dir")));
        assert_eq!(c.global.format(), Format::Table);
        assert!(Cli::try_parse_from(["sigmactl", "-o", "", "vps", "ls"]).is_err());
    }
}
