//! The `convoy` binary: glue from the command line to the library crates.
//!
//! Exit codes: 0 success; 1 error; 2 bad usage; 3 a deployment that was
//! waited for (`--wait`, `watch`) did not succeed.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use convoy_cli::output::Format;

mod alloc;
mod config;
mod resident;

#[global_allocator]
static ALLOCATOR: alloc::Allocator = alloc::Allocator;

const DEFAULT_SERVER: &str = "http://127.0.0.1:7420";

#[derive(Parser)]
#[command(name = "convoy", version, about = "Release orchestrator for fleets of machines")]
struct Cli {
    /// Server URL for operator commands and agents [default: http://127.0.0.1:7420].
    #[arg(long, global = true, env = "CONVOY_SERVER")]
    server: Option<String>,
    /// API token: an operator token for commands, the enrolment token for a new agent.
    #[arg(long, global = true, env = "CONVOY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM file of certificate authorities to trust for an https:// server.
    #[arg(long, global = true, env = "CONVOY_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Output format of listings and results.
    #[arg(long, short, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the control plane (HTTP API, chunk store, scheduler).
    Server {
        /// TOML file with any of the settings below (flags and CONVOY_* win over it).
        #[arg(long, env = "CONVOY_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:7420].
        #[arg(long, env = "CONVOY_LISTEN")]
        listen: Option<SocketAddr>,
        /// Directory for the SQLite database and the chunk store [default: convoy-data].
        #[arg(long, env = "CONVOY_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// postgres://... or sqlite://...; default: SQLite in the data dir.
        #[arg(long, env = "CONVOY_DATABASE")]
        database: Option<String>,
        /// Admin token to accept (otherwise one is made and printed on first start).
        #[arg(long, env = "CONVOY_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Agent enrolment token to accept (otherwise one is made and printed on first start).
        #[arg(long, env = "CONVOY_ENROL_TOKEN", hide_env_values = true)]
        enrol_token: Option<String>,
        /// PEM certificate chain: serve HTTPS (with --tls-key).
        #[arg(long, env = "CONVOY_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert.
        #[arg(long, env = "CONVOY_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// A mirror agents may fetch content from (repeatable): another
        /// convoy server sharing this one's database (`http(s)://HOST:PORT`),
        /// or any HTTP server holding a copy of DATA_DIR/chunks
        /// (`store+http(s)://HOST/PATH`).
        #[arg(long = "mirror")]
        mirrors: Vec<String>,
        /// Also take deployment requests from this NATS server (nats://HOST:PORT).
        #[arg(long, env = "CONVOY_NATS")]
        nats: Option<String>,
        /// Subject NATS requests arrive on [default: convoy.deployments].
        #[arg(long, env = "CONVOY_NATS_SUBJECT")]
        nats_subject: Option<String>,
        /// Enrolments allowed per minute with one enrolment token (0: no limit) [default: 120].
        #[arg(long, env = "CONVOY_ENROL_RATE_TOKEN")]
        enrol_rate_token: Option<u32>,
        /// Enrolments allowed per minute from one source address (0: no limit) [default: 30].
        #[arg(long, env = "CONVOY_ENROL_RATE_ADDRESS")]
        enrol_rate_address: Option<u32>,
        /// File with the secret that seals the server's signing key in the
        /// database; servers sharing a database need the same one
        /// [default: DATA_DIR/key-secret, made on first start].
        #[arg(long, env = "CONVOY_KEY_SECRET_FILE")]
        key_secret_file: Option<PathBuf>,
        /// Deltas to a newly published release are made, in the background, from this many of
        /// the app's releases before it (besides every version the fleet runs) [default: 3].
        #[arg(long, env = "CONVOY_DELTA_FROM_LAST")]
        delta_from_last: Option<usize>,
        /// MiB of made deltas and first-install streams kept on disk; the oldest are removed
        /// first [default: 4096].
        #[arg(long, env = "CONVOY_DELTA_CACHE_MIB")]
        delta_cache_mib: Option<u64>,
        /// redis://HOST:PORT shared by servers on one database: poll-cache invalidations and
        /// wake-ups go through it [default: none; a lone server needs none].
        #[arg(long, env = "CONVOY_CACHE", hide_env_values = true)]
        cache: Option<String>,
        /// s3://BUCKET[/PREFIX]: keep chunks in an S3-compatible object store (shared by the
        /// servers of one database) instead of DATA_DIR/chunks. Credentials from
        /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the config file.
        #[arg(long, env = "CONVOY_STORE")]
        store: Option<String>,
        /// http(s)://HOST:PORT of an S3-compatible server for --store [default: AWS].
        #[arg(long, env = "CONVOY_S3_ENDPOINT")]
        s3_endpoint: Option<String>,
        /// The object store's region [default: AWS_REGION, else us-east-1].
        #[arg(long, env = "CONVOY_S3_REGION")]
        s3_region: Option<String>,
        /// Tenant devices speaking hawkBit DDI name in their URLs
        /// (/TENANT/controller/v1/ID; SWUpdate's `-t`) [default: DEFAULT].
        #[arg(long, env = "CONVOY_DDI_TENANT")]
        ddi_tenant: Option<String>,
        /// Seconds DDI devices are told to wait between polls (1-86399) [default: 60].
        #[arg(long, env = "CONVOY_DDI_POLL_SECS")]
        ddi_poll_secs: Option<u64>,
    },
    /// Run the agent on a target machine.
    Agent {
        /// TOML file with any of the settings below (flags and CONVOY_* win over it).
        #[arg(long, env = "CONVOY_CONFIG")]
        config: Option<PathBuf>,
        /// Directory holding releases/, current/ and the agent's state.
        #[arg(long, env = "CONVOY_ROOT")]
        root: Option<PathBuf>,
        /// Labels, e.g. site=sh,role=web.
        #[arg(long, env = "CONVOY_LABELS")]
        labels: Option<String>,
        /// Name to report instead of the hostname.
        #[arg(long, env = "CONVOY_NAME")]
        name: Option<String>,
        /// Download rate limit in bytes per second.
        #[arg(long, env = "CONVOY_MAX_RATE")]
        max_rate: Option<u64>,
        /// Seconds a work poll stays open [default: 25].
        #[arg(long)]
        poll_wait: Option<u64>,
        /// Memory staging may use, in bytes; release deltas above it are
        /// fetched as chunks instead (0 turns deltas off) [default: 512 MiB].
        #[arg(long, env = "CONVOY_MAX_MEMORY")]
        max_memory: Option<u64>,
        /// Also serve chunks, deltas and manifests to this site's agents
        /// (the server points agents with the same `site` label here).
        #[arg(long, requires = "listen")]
        relay: bool,
        /// Address the relay listens on, e.g. 10.1.0.5:7421.
        #[arg(long, env = "CONVOY_RELAY_LISTEN")]
        listen: Option<std::net::SocketAddr>,
        /// URL agents reach the relay at [default: http://LISTEN].
        #[arg(long, env = "CONVOY_RELAY_URL")]
        relay_url: Option<String>,
        /// Parent relay this relay fetches from instead of the server.
        #[arg(long, env = "CONVOY_RELAY_UPSTREAM")]
        upstream: Option<String>,
        /// Long-poll this relay for work instead of the server (the relay
        /// makes one poll upstream for its whole site).
        #[arg(long, env = "CONVOY_POLL_VIA")]
        poll_via: Option<String>,
        /// Releases kept on disk per app, besides the live one and its rollback target [default: 5].
        #[arg(long, env = "CONVOY_KEEP_RELEASES")]
        keep_releases: Option<usize>,
        /// Disk space preflight keeps free for the machine's own use, in
        /// bytes or with a unit (500M, 20G): a release must fit beyond it [default: 0].
        #[arg(long, env = "CONVOY_RESERVE_DISK")]
        reserve_disk: Option<String>,
        /// The TUF root to trust (a root.json from `convoy trust`, obtained out of band);
        /// default: the server's root as shown at enrolment.
        #[arg(long, env = "CONVOY_TRUST_ROOT")]
        trust_root: Option<PathBuf>,
        /// The environment this machine belongs to: it takes only that environment's deployments,
        /// and where the signed TUF targets name approvers for it, only with their signatures.
        #[arg(long, env = "CONVOY_ENVIRONMENT")]
        environment: Option<String>,
    },
    /// Pack a directory and print its root digest.
    Pack {
        dir: PathBuf,
        #[arg(long)]
        app: String,
        #[arg(long)]
        version: String,
    },
    /// Pack a directory and publish it, uploading only chunks the server lacks.
    Publish {
        dir: PathBuf,
        #[arg(long)]
        app: String,
        #[arg(long)]
        version: String,
        /// Sign the release with this key: a publisher key of the app (`convoy trust delegate`),
        /// or the targets key when the app has none. Repeat for a threshold above 1.
        #[arg(long, value_name = "KEY_FILE")]
        sign_key: Vec<PathBuf>,
        /// The commit it was built from [default: from the CI: GITHUB_SHA, CI_COMMIT_SHA].
        #[arg(long)]
        commit: Option<String>,
        /// The branch it was built from [default: GITHUB_REF_NAME, CI_COMMIT_REF_NAME].
        #[arg(long)]
        branch: Option<String>,
        /// The CI run that built it [default: the GitHub Actions run, CI_JOB_URL].
        #[arg(long)]
        ci_url: Option<String>,
        /// The source repository [default: from the CI].
        #[arg(long)]
        repository: Option<String>,
    },
    /// Deploy APP@VERSION to the targets a label selector (or --target) picks.
    Deploy {
        /// The release to deploy.
        #[arg(value_name = "APP@VERSION")]
        release: String,
        /// Labels the targets must have, e.g. site=sh,role=web.
        #[arg(long, required_unless_present_any = ["all", "targets"])]
        selector: Option<String>,
        /// A target by id or hostname (repeatable); with --selector, each must also match it.
        #[arg(long = "target", value_name = "ID|HOSTNAME")]
        targets: Vec<String>,
        /// Deploy to every enrolled target.
        #[arg(long, conflicts_with = "selector")]
        all: bool,
        /// Go-live time: RFC 3339, or +90s / +5m; default: as soon as all copies match.
        #[arg(long)]
        at: Option<String>,
        /// Targets that may fail before the deployment fails and rolls back.
        #[arg(long, default_value_t = 0)]
        max_failures: u32,
        /// Targets not staged within this time (90s, 5m, 2h) count as failed; default: wait.
        #[arg(long)]
        stage_timeout: Option<String>,
        /// How long after go-live a silent target is given before it counts as failed [default: 15m].
        #[arg(long)]
        activate_timeout: Option<String>,
        /// Watch until the deployment settles.
        #[arg(long)]
        wait: bool,
        /// Environment whose policy governs it: approvals, preflight,
        /// confirmation, windows, waves. Without one it is deployed at once.
        #[arg(long)]
        env: Option<String>,
        /// Why (a change ticket, say); approvers see it.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Requests waiting for you (to approve or confirm); --all: every open request.
    Requests {
        #[arg(long)]
        all: bool,
    },
    /// Approve a request (not your own; each approver counts once).
    Approve {
        #[arg(value_name = "REQUEST")]
        id: String,
        #[arg(long, default_value = "")]
        note: String,
        /// Sign what you approve with your key (registered with `convoy users key`):
        /// needed where the environment requires signed approvals.
        #[arg(long, value_name = "KEY_FILE")]
        sign_key: Option<PathBuf>,
    },
    /// Reject a request, saying why; it ends there.
    Reject {
        #[arg(value_name = "REQUEST")]
        id: String,
        #[arg(long)]
        note: String,
    },
    /// Confirm a request whose preflight passed: its waves are planned and staging starts.
    Confirm {
        #[arg(value_name = "REQUEST")]
        id: String,
    },
    /// Change a request (the requester or an admin): its go-live, selector or
    /// reason. Approvals given so far no longer count.
    Change {
        #[arg(value_name = "REQUEST")]
        id: String,
        /// New go-live: RFC 3339, or +90s / +5m.
        #[arg(long, conflicts_with = "asap")]
        at: Option<String>,
        /// Go live as soon as every copy matches (drops the planned time).
        #[arg(long)]
        asap: bool,
        #[arg(long)]
        selector: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Stage and go live again on a finished deployment's failed or canceled
    /// targets only (healthy ones are untouched).
    Retry {
        #[arg(value_name = "DEPLOYMENT")]
        id: String,
        /// Only this target, by id or hostname (repeatable).
        #[arg(long = "target", value_name = "ID|HOSTNAME")]
        targets: Vec<String>,
        /// Why; kept in the audit log.
        #[arg(long, default_value = "")]
        reason: String,
        /// Watch until it settles.
        #[arg(long)]
        wait: bool,
    },
    /// Pause a deployment under way: no new wave starts (staging goes on).
    Pause {
        #[arg(value_name = "DEPLOYMENT")]
        id: String,
        /// Why; kept in the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Resume a paused deployment.
    Resume {
        #[arg(value_name = "DEPLOYMENT")]
        id: String,
        /// Why; kept in the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Cancel a request, or a deployment still staging: transfers stop within seconds (the requester or an admin).
    Cancel {
        #[arg(value_name = "REQUEST")]
        id: String,
        /// Why; kept in the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Signing keys: `convoy keys generate FILE` makes an ed25519 key pair (FILE 0600, FILE.pub).
    Keys {
        #[command(subcommand)]
        action: KeysCmd,
    },
    /// The server's TUF roles: keys, thresholds, versions, expiry, and what the key arrangement gives up.
    Trust {
        /// Save the current root here (give it to agents with --trust-root).
        #[arg(long, value_name = "FILE")]
        root_out: Option<PathBuf>,
        #[command(subcommand)]
        action: Option<TrustCmd>,
    },
    /// The audit log: every state change with its actor, newest last.
    Audit {
        /// Only this deployment or request.
        #[arg(long)]
        deployment: Option<String>,
        /// Only this actor: a user name, or agent:ID, scheduler.
        #[arg(long)]
        actor: Option<String>,
        #[arg(long, default_value_t = 200)]
        limit: u32,
    },
    /// Users and their roles (admin).
    Users {
        #[command(subcommand)]
        action: UsersCmd,
    },
    /// Environments and their policy.
    Env {
        #[command(subcommand)]
        action: EnvCmd,
    },
    /// Show a deployment with one line per target.
    Status {
        #[arg(value_name = "DEPLOYMENT")]
        id: String,
        /// Also list every state change with its time, actor and note.
        #[arg(long)]
        events: bool,
        /// Every target (a page at a time), and the targets the selector
        /// matched after planning; without it a deployment of more than 50
        /// targets shows its counts and the failing targets.
        #[arg(long)]
        all: bool,
    },
    /// Follow a deployment with progress bars until it settles.
    Watch {
        #[arg(value_name = "DEPLOYMENT")]
        id: String,
    },
    /// Bring every target of a deployment back to the release it had before.
    Rollback {
        #[arg(value_name = "DEPLOYMENT")]
        id: String,
        #[arg(long)]
        wait: bool,
        /// Why; kept in the audit log.
        #[arg(long, default_value = "")]
        reason: String,
        /// Also roll back first installs (stops the app and removes its live link).
        #[arg(long)]
        uninstall: bool,
    },
    /// List enrolled targets, or remove one.
    Targets {
        /// Only targets with these labels, e.g. site=sh.
        #[arg(long, default_value = "")]
        selector: String,
        #[command(subcommand)]
        action: Option<TargetsCmd>,
    },
    /// Relays: machines an operator made the relay of a site.
    Relays {
        #[command(subcommand)]
        action: RelaysCmd,
    },
    /// Enrolment tokens: label scope, expiry, uses.
    #[command(name = "enrol-tokens")]
    EnrolTokens {
        #[command(subcommand)]
        action: EnrolTokensCmd,
    },
    /// List published releases.
    Releases,
    /// What an upgrade changes: files added, removed and changed, config
    /// files, the migrate hook.
    Changes {
        /// The new release, APP@VERSION.
        release: String,
        /// The release upgraded from.
        #[arg(long)]
        from: String,
    },
    /// List recent deployments.
    Deployments,
    /// Release plans kept as code: `convoy plan apply deploy/plan.toml`.
    Plan {
        #[command(subcommand)]
        action: PlanCmd,
    },
    /// Print a completion script: `convoy completions bash > /etc/bash_completion.d/convoy`,
    /// zsh: into a directory of $fpath as `_convoy`, fish: `~/.config/fish/completions/convoy.fish`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Run a server and three agents locally: v1 → v2 → failed v3 → v3.1 through approval and waves.
    Demo {
        /// Keep the temporary work directory.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Subcommand)]
enum PlanCmd {
    /// Make the server's requests match a plan file: create what is new,
    /// replace what changed and has not started, cancel what was removed
    /// and has not started. Applying it twice changes nothing.
    Apply {
        /// The plan (TOML): `plan = "NAME"` and [[deployment]] entries with
        /// name, release (APP@VERSION), env, selector, at (RFC 3339), reason.
        file: PathBuf,
        /// Print what would change, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum TrustCmd {
    /// Make a new root here, with offline keys: root keys and threshold, the targets key,
    /// and the server's online keys for timestamp and snapshot.
    Init {
        /// A root key's private file (repeatable); each signs the new root.
        #[arg(long = "root-key", value_name = "KEY_FILE", required = true)]
        root_keys: Vec<PathBuf>,
        #[arg(long, default_value_t = 1)]
        threshold: u32,
        /// The targets key (its .pub file is enough).
        #[arg(long, value_name = "KEY_FILE")]
        targets_key: PathBuf,
        #[arg(long, value_name = "FILE", default_value = "root.json")]
        out: PathBuf,
    },
    /// Install a root made with `trust init` (admin), re-signing the current targets with the new targets key.
    Upload {
        #[arg(value_name = "ROOT_FILE")]
        root: PathBuf,
        #[arg(long, value_name = "KEY_FILE")]
        targets_key: PathBuf,
        /// The server's key secret file (DATA_DIR/key-secret): leaving single-box mode needs proof of it.
        #[arg(long, value_name = "FILE")]
        key_secret_file: Option<PathBuf>,
    },
    /// Delegate an app's releases to its publisher keys: from then on only a threshold of them
    /// signs its releases (`convoy publish --sign-key`), never the server or the targets key.
    Delegate {
        app: String,
        /// A publisher's public key file (KEY.pub; repeatable).
        #[arg(long = "key", value_name = "KEY_FILE", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long, default_value_t = 1)]
        threshold: u32,
        /// The targets key, when kept offline; without it the server signs (single-box mode).
        #[arg(long, value_name = "KEY_FILE")]
        targets_key: Option<PathBuf>,
    },
    /// Publish an environment's approvers as a signed TUF role: the registered keys of everyone
    /// who may approve there, and its number of approvals as the threshold. Agents then switch
    /// to a release in that environment only with that many approvers' signatures.
    /// Run it again after keys, approvers or the number of approvals change.
    Approvers {
        env: String,
        /// The targets key, when kept offline; without it the server signs (single-box mode).
        #[arg(long, value_name = "KEY_FILE")]
        targets_key: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Make an ed25519 key pair: the private key in FILE (0600, never overwritten), the public key in FILE.pub.
    Generate {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum UsersCmd {
    /// Add a user; prints its API token once.
    Add {
        name: String,
        /// viewer < deployer < approver < admin.
        #[arg(long)]
        role: String,
    },
    List,
    /// Remove a user and revoke its token.
    Remove {
        name: String,
    },
    /// A user's public keys for signed approvals: list them, or register one (`--add KEY.pub`).
    Key {
        name: String,
        /// The public key file `convoy keys generate` wrote (FILE.pub).
        #[arg(long, value_name = "KEY_FILE")]
        add: Option<PathBuf>,
    },
    /// Give a user a new token; the old one stops working (`admin` is the first administrator).
    Token {
        name: String,
        #[arg(long, required = true)]
        rotate: bool,
    },
}

// parsed once per process: the size of the variants does not matter
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum EnvCmd {
    /// Create or change an environment; options not given keep their value.
    Set {
        name: String,
        /// Approvals needed before preflight.
        #[arg(long)]
        approvals: Option<u32>,
        /// Least role of an approver [default: approver].
        #[arg(long)]
        approver_role: Option<String>,
        /// Require the requester (or a deployer) to confirm after preflight.
        #[arg(long, num_args = 0..=1, default_missing_value = "true")]
        confirm: Option<bool>,
        /// How long a request waits for confirmation [default: 24h].
        #[arg(long)]
        confirm_ttl: Option<String>,
        /// Who besides the requester may confirm: users with this role or above ('' : the requester only).
        #[arg(long)]
        confirm_role: Option<String>,
        /// How long a request waits for its approvals before it expires [default: 7d].
        #[arg(long)]
        approval_ttl: Option<String>,
        /// A wave breaking its failure budget rolls back every wave that went live (all, the default), only itself (wave),
        /// or halts the deployment where it is for an operator to resume or roll back (pause).
        #[arg(long, value_parser = ["all", "wave", "pause"])]
        on_breach: Option<String>,
        /// Targets that match a rollout's selector but enrol after it was planned join its last wave (true/false).
        #[arg(long, num_args = 0..=1, default_missing_value = "true")]
        include_late: Option<bool>,
        /// Approvals must be signed with the approver's registered key (`convoy approve --sign-key`);
        /// agents check them against the environment's approver role (`convoy trust approvers`).
        #[arg(long, num_args = 0..=1, default_missing_value = "true")]
        signed_approvals: Option<bool>,
        /// Allowed go-live window, e.g. 'Sat 01:00-05:00 Asia/Shanghai' (repeatable; '' clears).
        #[arg(long = "window")]
        windows: Vec<String>,
        /// A go-live outside the windows: refuse, or move to the next window.
        #[arg(long, value_parser = ["refuse", "next"])]
        outside_window: Option<String>,
        /// Cumulative wave sizes, e.g. 1,10%,50%,100%.
        #[arg(long)]
        waves: Option<String>,
        /// Least time between a wave's success and the next wave (90s, 5m, 2h).
        #[arg(long)]
        wave_gap: Option<String>,
        /// Failures allowed per wave: a count or a percentage (5%).
        #[arg(long)]
        max_failures: Option<String>,
        /// Targets failing preflight: block the request, or skip them within the failure budget.
        #[arg(long, value_parser = ["block", "skip"])]
        preflight_failure: Option<String>,
        /// A check command every target runs in preflight (repeatable; '' clears).
        #[arg(long = "check")]
        checks: Vec<String>,
        /// How long preflight waits for targets' answers.
        #[arg(long)]
        preflight_timeout: Option<String>,
        /// URL that receives request events as JSON ('' removes it).
        #[arg(long)]
        webhook: Option<String>,
    },
    /// Show one environment, or all.
    Show { name: Option<String> },
}

#[derive(Subcommand)]
enum TargetsCmd {
    /// One target: labels, inventory, what runs, and its last deployments.
    Show {
        #[arg(value_name = "TARGET")]
        id: String,
    },
    /// Add a device that speaks hawkBit DDI (SWUpdate's suricatta,
    /// rauc-hawkbit-updater) before it first polls; prints its TargetToken
    /// once (admin; audited).
    #[command(name = "add-ddi")]
    AddDdi {
        /// The device's controllerId (SWUpdate's `-i`).
        #[arg(value_name = "CONTROLLER_ID")]
        controller_id: String,
        /// Its labels, e.g. site=sh,role=gateway.
        #[arg(long)]
        labels: Option<String>,
    },
    /// Forget a decommissioned target and revoke its credential.
    Remove {
        #[arg(value_name = "TARGET")]
        id: String,
    },
    /// Set or remove a target's labels (admin; audited). Agents never
    /// change their own labels after enrolment.
    Label {
        #[arg(value_name = "TARGET")]
        id: String,
        /// Labels to set, k=v (several allowed).
        #[arg(value_name = "K=V")]
        set: Vec<String>,
        /// Label keys to remove (repeatable).
        #[arg(long = "remove", value_name = "KEY")]
        remove: Vec<String>,
    },
}

#[derive(Subcommand)]
enum RelaysCmd {
    /// Make a target the relay of a site (admin; audited).
    Grant {
        #[arg(value_name = "TARGET")]
        id: String,
        #[arg(long)]
        site: String,
        /// URL the site's agents reach it at [default: the URL the relay reports].
        #[arg(long)]
        url: Option<String>,
    },
    List,
    /// The target stops being a relay.
    Revoke {
        #[arg(value_name = "TARGET")]
        id: String,
    },
}

#[derive(Subcommand)]
enum EnrolTokensCmd {
    /// Make an enrolment token; prints its secret once.
    Create {
        /// The labels every target enrolled with it gets, e.g. site=sh,role=web
        /// [default: none; agents then ask for their own].
        #[arg(long)]
        labels: Option<String>,
        /// Lifetime (90s, 30m, 24h, 7d).
        #[arg(long)]
        expires: Option<String>,
        /// Enrolments it allows.
        #[arg(long)]
        uses: Option<i64>,
        /// A hawkBit DDI GatewayToken instead: devices show it on every
        /// request (SWUpdate's `-g`); it registers new devices with its
        /// labels (one use each) and speaks for those its labels cover.
        #[arg(long)]
        gateway: bool,
    },
    List,
    /// No agent enrols with it any more (enrolled agents are not affected).
    Revoke {
        #[arg(value_name = "ID")]
        id: String,
    },
}

/// Logs go to stderr: `CONVOY_LOG` filters them (`info`, `convoy_server=debug`),
/// `CONVOY_LOG_FORMAT=json` writes one JSON object per line, and colour is
/// used only on a terminal and never when `NO_COLOR` is set.
fn init_tracing(default: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("CONVOY_LOG") {
        Ok(f) => tracing_subscriber::EnvFilter::try_new(&f).with_context(|| {
            format!("CONVOY_LOG={f:?} is not a log filter (e.g. info, or warn,convoy_server=debug)")
        })?,
        Err(_) => tracing_subscriber::EnvFilter::new(default),
    };
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match log_format(std::env::var("CONVOY_LOG_FORMAT").ok().as_deref())? {
        LogFormat::Json => logs.json().with_current_span(false).init(),
        LogFormat::Text => {
            use std::io::IsTerminal;
            logs.with_ansi(use_colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref())).init()
        }
    }
    Ok(())
}

#[derive(Debug, PartialEq)]
enum LogFormat {
    Text,
    Json,
}

fn log_format(v: Option<&str>) -> anyhow::Result<LogFormat> {
    match v.map(str::trim) {
        None | Some("" | "text") => Ok(LogFormat::Text),
        Some("json") => Ok(LogFormat::Json),
        Some(other) => anyhow::bail!("CONVOY_LOG_FORMAT={other:?}: use text (the default) or json"),
    }
}

/// Colour on a terminal, unless `NO_COLOR` is set to anything but empty
/// (no-color.org).
fn use_colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Long-running processes exit on a panic so their supervisor restarts them
/// from a known state.
fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        tracing::error!("panic: {info}; exiting");
        std::process::exit(101);
    }));
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let fmt = cli.output;
    let server = cli.server.clone().unwrap_or_else(|| DEFAULT_SERVER.to_owned());
    let api = || convoy_cli::client(&server, cli.token.as_deref(), cli.ca_cert.as_deref());
    match &cli.cmd {
        Cmd::Server {
            config,
            listen,
            data_dir,
            database,
            admin_token,
            enrol_token,
            tls_cert,
            tls_key,
            mirrors,
            nats,
            nats_subject,
            enrol_rate_token,
            enrol_rate_address,
            key_secret_file,
            delta_from_last,
            delta_cache_mib,
            cache,
            store,
            s3_endpoint,
            s3_region,
            ddi_tenant,
            ddi_poll_secs,
        } => {
            init_tracing("info")?;
            exit_on_panic();
            let file: config::ServerFile = config::load(config.as_deref())?;
            let secret =
                |flag: &Option<String>, file: &Option<String>| flag.clone().or(file.clone()).map(convoy_server::Secret);
            convoy_server::run(convoy_server::ServerConfig {
                listen: listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:7420".parse().expect("valid address")),
                data_dir: data_dir.clone().or(file.data_dir).unwrap_or_else(|| "convoy-data".into()),
                database: database.clone().or(file.database),
                admin_token: secret(admin_token, &file.admin_token),
                enrol_token: secret(enrol_token, &file.enrol_token),
                tls: match (tls_cert.clone().or(file.tls_cert), tls_key.clone().or(file.tls_key)) {
                    (Some(cert), Some(key)) => Some((cert, key)),
                    (None, None) => None,
                    _ => anyhow::bail!("HTTPS needs both a TLS certificate and its key"),
                },
                mirrors: if mirrors.is_empty() { file.mirrors.unwrap_or_default() } else { mirrors.clone() },
                nats: nats.clone().or(file.nats),
                nats_subject: nats_subject
                    .clone()
                    .or(file.nats_subject)
                    .unwrap_or_else(|| convoy_server::DEFAULT_NATS_SUBJECT.to_owned()),
                enrol_rate_token: enrol_rate_token
                    .or(file.enrol_rate_token)
                    .unwrap_or(convoy_server::DEFAULT_ENROL_RATE_TOKEN),
                enrol_rate_address: enrol_rate_address
                    .or(file.enrol_rate_address)
                    .unwrap_or(convoy_server::DEFAULT_ENROL_RATE_ADDRESS),
                key_secret_file: key_secret_file.clone().or(file.key_secret_file),
                delta_from_last: delta_from_last.or(file.delta_from_last).unwrap_or(convoy_server::DELTA_FROM_LAST),
                delta_cache_mib: delta_cache_mib.or(file.delta_cache_mib).unwrap_or(convoy_server::DELTA_CACHE_MIB),
                cache: cache.clone().or(file.cache),
                objects: store.clone().or(file.store).map(|url| convoy_server::objects::S3Config {
                    url,
                    endpoint: s3_endpoint.clone().or(file.s3_endpoint),
                    region: s3_region.clone().or(file.s3_region),
                    access_key_id: file.s3_access_key_id,
                    secret_access_key: file.s3_secret_access_key,
                }),
                ddi_tenant: {
                    let t = ddi_tenant
                        .clone()
                        .or(file.ddi_tenant)
                        .unwrap_or_else(|| convoy_server::ddi::DEFAULT_TENANT.into());
                    if t.is_empty()
                        || t.len() > 64
                        || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                    {
                        anyhow::bail!("the DDI tenant {t:?} must be 1-64 letters, digits, '-', '_' or '.'");
                    }
                    t
                },
                ddi_poll_secs: match ddi_poll_secs
                    .or(file.ddi_poll_secs)
                    .unwrap_or(convoy_server::ddi::DEFAULT_POLL_SECS)
                {
                    s @ 1..=86_399 => s,
                    s => anyhow::bail!("the DDI poll interval must be 1 to 86399 seconds, not {s}"),
                },
            })
            .await?;
        }
        Cmd::Agent {
            config,
            root,
            labels,
            name,
            max_rate,
            poll_wait,
            max_memory,
            relay,
            listen,
            relay_url,
            upstream,
            poll_via,
            keep_releases,
            reserve_disk,
            trust_root,
            environment,
        } => {
            init_tracing("info")?;
            exit_on_panic();
            let file: config::AgentFile = config::load(config.as_deref())?;
            let labels = match (labels, file.labels) {
                (Some(flag), _) => convoy_wire::Labels::parse(flag)?,
                (None, Some(map)) => {
                    let l = convoy_wire::Labels(map);
                    l.validate()?;
                    l
                }
                (None, None) => convoy_wire::Labels::default(),
            };
            let relay = match (*relay || file.relay.unwrap_or(false), listen.or(file.listen)) {
                (false, _) => None,
                (true, None) => anyhow::bail!("a relay needs --listen ADDR (or listen in its config file)"),
                (true, Some(listen)) => Some(convoy_agent::RelayConfig {
                    listen,
                    url: relay_url.clone().or(file.relay_url).unwrap_or_else(|| format!("http://{listen}")),
                    upstream: upstream.clone().or(file.upstream),
                }),
            };
            // start-up code is not kept mapped while the agent idles
            tokio::spawn(async {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                loop {
                    let bytes = resident::unmap_idle_code();
                    tracing::debug!(bytes, "dropped the mappings of code pages not in use");
                    tokio::time::sleep(std::time::Duration::from_secs(600)).await;
                }
            });
            convoy_agent::run(convoy_agent::AgentConfig {
                server: cli.server.clone().or(file.server).unwrap_or_else(|| DEFAULT_SERVER.to_owned()),
                token: cli.token.clone().or(file.token),
                ca_cert: cli.ca_cert.clone().or(file.ca_cert),
                root: root.clone().or(file.root).context("the agent needs --root (or root in its config file)")?,
                labels,
                name: name.clone().or(file.name),
                max_rate: max_rate.or(file.max_rate),
                poll_wait: poll_wait.or(file.poll_wait).unwrap_or(25).clamp(1, 60),
                keep_releases: keep_releases.or(file.keep_releases).unwrap_or(5).max(1),
                max_memory: max_memory.or(file.max_memory).unwrap_or(convoy_agent::DEFAULT_MAX_MEMORY),
                relay,
                poll_via: poll_via.clone().or(file.poll_via),
                reserve_disk: match reserve_disk.clone().or(file.reserve_disk) {
                    Some(s) => parse_size(&s)?,
                    None => 0,
                },
                trust_root: trust_root.clone(),
                environment: environment.clone().or(file.environment),
            })
            .await?;
        }
        Cmd::Pack { dir, app, version } => convoy_cli::pack(dir, app, version, fmt).await?,
        Cmd::Publish { dir, app, version, sign_key, commit, branch, ci_url, repository } => {
            let given = convoy_wire::Provenance {
                commit: commit.clone().unwrap_or_default(),
                branch: branch.clone().unwrap_or_default(),
                ci_url: ci_url.clone().unwrap_or_default(),
                repository: repository.clone().unwrap_or_default(),
            };
            convoy_cli::publish(&api()?, dir, app, version, sign_key, given, fmt).await?
        }
        Cmd::Deploy {
            release,
            selector,
            targets,
            all: _,
            at,
            max_failures,
            stage_timeout,
            activate_timeout,
            wait,
            env,
            reason,
        } => {
            let args = convoy_cli::DeployArgs {
                reference: release,
                selector: selector.as_deref().unwrap_or(""),
                targets,
                at: at.as_deref(),
                max_failures: *max_failures,
                stage_timeout: stage_timeout.as_deref(),
                activate_timeout: activate_timeout.as_deref(),
                wait: *wait,
                env: env.as_deref(),
                reason,
            };
            return convoy_cli::deploy(&api()?, args, fmt).await;
        }
        Cmd::Requests { all } => convoy_cli::workflow::requests(&api()?, *all, fmt).await?,
        Cmd::Approve { id, note, sign_key: None } => {
            convoy_cli::workflow::act(&api()?, id, "approve", note, fmt).await?
        }
        Cmd::Approve { id, note, sign_key: Some(key) } => {
            convoy_cli::signing::approve_signed(&api()?, id, note, key, fmt).await?
        }
        Cmd::Reject { id, note } => convoy_cli::workflow::act(&api()?, id, "reject", note, fmt).await?,
        Cmd::Confirm { id } => convoy_cli::workflow::act(&api()?, id, "confirm", "", fmt).await?,
        Cmd::Change { id, at, asap, selector, reason } => {
            convoy_cli::workflow::change(&api()?, id, at.as_deref(), *asap, selector.as_deref(), reason.as_deref(), fmt)
                .await?
        }
        Cmd::Retry { id, targets, reason, wait } => {
            return convoy_cli::retry(&api()?, id, targets, reason, *wait, fmt).await
        }
        Cmd::Pause { id, reason } => convoy_cli::workflow::act(&api()?, id, "pause", reason, fmt).await?,
        Cmd::Resume { id, reason } => convoy_cli::workflow::act(&api()?, id, "resume", reason, fmt).await?,
        Cmd::Cancel { id, reason } => convoy_cli::workflow::act(&api()?, id, "cancel", reason, fmt).await?,
        Cmd::Keys { action: KeysCmd::Generate { file } } => convoy_cli::signing::keys_generate(file, fmt)?,
        Cmd::Trust { root_out, action: None } => convoy_cli::signing::trust(&api()?, root_out.as_deref(), fmt).await?,
        Cmd::Trust { action: Some(TrustCmd::Init { root_keys, threshold, targets_key, out }), .. } => {
            convoy_cli::signing::trust_init(&api()?, root_keys, *threshold, targets_key, out, fmt).await?
        }
        Cmd::Trust { action: Some(TrustCmd::Upload { root, targets_key, key_secret_file }), .. } => {
            convoy_cli::signing::trust_upload(&api()?, root, targets_key, key_secret_file.as_deref(), fmt).await?
        }
        Cmd::Trust { action: Some(TrustCmd::Delegate { app, keys, threshold, targets_key }), .. } => {
            convoy_cli::publish::check_names(app, "1")?;
            let keys = convoy_cli::signing::public_keys(keys)?;
            let role = convoy_wire::tuf::app_role(app);
            convoy_cli::signing::trust_delegate(&api()?, &role, &keys, *threshold, targets_key.as_deref(), fmt).await?
        }
        Cmd::Trust { action: Some(TrustCmd::Approvers { env, targets_key }), .. } => {
            convoy_cli::signing::trust_approvers(&api()?, env, targets_key.as_deref(), fmt).await?
        }
        Cmd::Audit { deployment, actor, limit } => {
            convoy_cli::workflow::audit(&api()?, deployment.as_deref(), actor.as_deref(), *limit, fmt).await?
        }
        Cmd::Users { action: UsersCmd::Add { name, role } } => {
            convoy_cli::workflow::users_add(&api()?, name, role, fmt).await?
        }
        Cmd::Users { action: UsersCmd::Token { name, .. } } => {
            convoy_cli::trust::rotate_user_token(&api()?, name, fmt).await?
        }
        Cmd::Users { action: UsersCmd::Key { name, add } } => {
            convoy_cli::signing::user_key(&api()?, name, add.as_deref(), fmt).await?
        }
        Cmd::Users { action: UsersCmd::List } => convoy_cli::workflow::users_list(&api()?, fmt).await?,
        Cmd::Users { action: UsersCmd::Remove { name } } => {
            convoy_cli::workflow::users_remove(&api()?, name, fmt).await?
        }
        Cmd::Env {
            action:
                EnvCmd::Set {
                    name,
                    approvals,
                    approver_role,
                    confirm,
                    confirm_ttl,
                    confirm_role,
                    on_breach,
                    include_late,
                    signed_approvals,
                    approval_ttl,
                    windows,
                    outside_window,
                    waves,
                    wave_gap,
                    max_failures,
                    preflight_failure,
                    checks,
                    preflight_timeout,
                    webhook,
                },
        } => {
            let args = convoy_cli::workflow::EnvArgs {
                approvals: *approvals,
                approver_role: approver_role.as_deref(),
                confirm: *confirm,
                confirm_ttl: confirm_ttl.as_deref(),
                confirm_role: confirm_role.as_deref(),
                on_breach: on_breach.as_deref(),
                include_late: *include_late,
                signed_approvals: *signed_approvals,
                approval_ttl: approval_ttl.as_deref(),
                windows: (!windows.is_empty()).then(|| windows.clone()),
                outside_window: outside_window.as_deref(),
                waves: waves.as_deref(),
                wave_gap: wave_gap.as_deref(),
                max_failures: max_failures.as_deref(),
                preflight_failure: preflight_failure.as_deref(),
                checks: (!checks.is_empty()).then(|| checks.clone()),
                preflight_timeout: preflight_timeout.as_deref(),
                webhook: webhook.as_deref(),
            };
            convoy_cli::workflow::env_set(&api()?, name, &args, fmt).await?
        }
        Cmd::Env { action: EnvCmd::Show { name } } => {
            convoy_cli::workflow::env_show(&api()?, name.as_deref(), fmt).await?
        }
        Cmd::Status { id, events, all } => convoy_cli::status(&api()?, id, *events, *all, fmt).await?,
        Cmd::Watch { id } => return convoy_cli::watch_cmd(&api()?, id, fmt).await,
        Cmd::Rollback { id, wait, reason, uninstall } => {
            return convoy_cli::rollback(&api()?, id, *wait, reason, *uninstall, fmt).await
        }
        Cmd::Targets { action: Some(TargetsCmd::Show { id }), .. } => convoy_cli::target_show(&api()?, id, fmt).await?,
        Cmd::Targets { action: Some(TargetsCmd::AddDdi { controller_id, labels }), .. } => {
            convoy_cli::add_ddi(&api()?, controller_id, labels.as_deref(), fmt).await?
        }
        Cmd::Targets { action: Some(TargetsCmd::Remove { id }), .. } => {
            convoy_cli::remove_target(&api()?, id, fmt).await?
        }
        Cmd::Targets { action: Some(TargetsCmd::Label { id, set, remove }), .. } => {
            convoy_cli::trust::label(&api()?, id, set, remove, fmt).await?
        }
        Cmd::Relays { action: RelaysCmd::Grant { id, site, url } } => {
            convoy_cli::trust::relay_grant(&api()?, id, site, url.as_deref(), fmt).await?
        }
        Cmd::Relays { action: RelaysCmd::List } => convoy_cli::trust::relay_list(&api()?, fmt).await?,
        Cmd::Relays { action: RelaysCmd::Revoke { id } } => convoy_cli::trust::relay_revoke(&api()?, id, fmt).await?,
        Cmd::EnrolTokens { action: EnrolTokensCmd::Create { labels, expires, uses, gateway } } => {
            convoy_cli::trust::enrol_token_create(&api()?, labels.as_deref(), expires.as_deref(), *uses, *gateway, fmt)
                .await?
        }
        Cmd::EnrolTokens { action: EnrolTokensCmd::List } => convoy_cli::trust::enrol_token_list(&api()?, fmt).await?,
        Cmd::EnrolTokens { action: EnrolTokensCmd::Revoke { id } } => {
            convoy_cli::trust::enrol_token_revoke(&api()?, id, fmt).await?
        }
        Cmd::Targets { selector, action: None } => convoy_cli::targets(&api()?, selector, fmt).await?,
        Cmd::Releases => convoy_cli::releases(&api()?, fmt).await?,
        Cmd::Changes { release, from } => convoy_cli::changes(&api()?, release, from, fmt).await?,
        Cmd::Deployments => convoy_cli::deployments(&api()?, fmt).await?,
        Cmd::Plan { action: PlanCmd::Apply { file, dry_run } } => {
            return convoy_cli::plan::apply(&api()?, file, *dry_run, fmt).await
        }
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(*shell, &mut Cli::command(), "convoy", &mut std::io::stdout());
        }
        Cmd::Demo { keep } => {
            init_tracing("warn")?;
            return convoy_cli::demo::run(*keep).await;
        }
    }
    Ok(0)
}

/// `500M`, `20G`, `1T` or plain bytes.
fn parse_size(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        Some((i, 'T' | 't')) => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    let n: u64 = num.parse().with_context(|| format!("invalid size {s:?}: use bytes or 500M, 20G, 1T"))?;
    n.checked_mul(mult).with_context(|| format!("size {s:?} is too large"))
}

fn main() {
    let cli = Cli::parse();
    let server = cli.server.clone().unwrap_or_else(|| DEFAULT_SERVER.to_owned());
    let operator = !matches!(cli.cmd, Cmd::Server { .. } | Cmd::Agent { .. } | Cmd::Demo { .. });
    if matches!(cli.cmd, Cmd::Server { .. }) {
        alloc::use_mimalloc();
        convoy_server::tune_c_malloc();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(alloc::collect_on_park)
        .build()
        .expect("starting the tokio runtime");
    let code = match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if operator && convoy_client::unreachable(&e) {
                eprintln!(
                    "hint: no convoy server answered at {server}. Is `convoy server` running there, and is \
                     --server (or CONVOY_SERVER) its URL? It listens on {DEFAULT_SERVER} by default."
                );
            }
            1
        }
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        use std::ffi::OsStr;
        assert!(super::use_colour(true, None));
        assert!(super::use_colour(true, Some(OsStr::new(""))));
        assert!(!super::use_colour(true, Some(OsStr::new("1"))));
        assert!(!super::use_colour(false, None));
    }

    #[test]
    fn log_formats() {
        use super::{log_format, LogFormat};
        assert_eq!(log_format(None).unwrap(), LogFormat::Text);
        assert_eq!(log_format(Some("json")).unwrap(), LogFormat::Json);
        assert!(log_format(Some("yaml")).unwrap_err().to_string().contains("text (the default) or json"));
    }
}
