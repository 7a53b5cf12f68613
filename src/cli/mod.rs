//! The command line (SPEC §9): `coremq serve`, `coremq config check`, `coremq passwd`,
//! `coremq certs dev`, and the admin API clients `coremq org|user|apikey|token|session|audit`.

pub mod acl_tool;
pub mod admin_client;
pub mod certs;
pub mod data;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// coremq: multi-tenant MQTT 3.1.1/5.0 broker.
#[derive(Debug, Parser)]
#[command(name = "coremq", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker (without --config: 127.0.0.1:1883, anonymous clients in org `local`).
    Serve {
        /// Configuration file (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address of the first listener (the embedded default's TCP one: 127.0.0.1:1883).
        #[arg(long)]
        bind: Option<std::net::SocketAddr>,
        /// Where the stores live (the embedded default: ./data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Certificate tools.
    Certs {
        /// What to generate.
        #[command(subcommand)]
        action: CertsAction,
    },
    /// Configuration tools.
    Config {
        /// What to do with the configuration.
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// ACL v2 policies: validate, simulate, presets, diff, update.
    Acl {
        /// What to do.
        #[command(subcommand)]
        action: AclAction,
    },
    /// Data tools: export and import every store (a versioned format), make encryption keys.
    Data {
        /// What to do.
        #[command(subcommand)]
        action: DataAction,
    },
    /// Read one password line from standard input (no echo on a terminal) and print its
    /// Argon2id PHC string, for `password_hash` in the config.
    Passwd,
    /// Organizations (admin API; operator key).
    Org {
        /// Where the admin API is, and the key.
        #[command(flatten)]
        api: ApiArgs,
        /// What to do.
        #[command(subcommand)]
        action: OrgAction,
    },
    /// Permanent users (admin API).
    User {
        /// Where the admin API is, and the key.
        #[command(flatten)]
        api: ApiArgs,
        /// What to do.
        #[command(subcommand)]
        action: UserAction,
    },
    /// API keys (admin API).
    Apikey {
        /// Where the admin API is, and the key.
        #[command(flatten)]
        api: ApiArgs,
        /// What to do.
        #[command(subcommand)]
        action: ApiKeyAction,
    },
    /// Temporary tokens (admin API).
    Token {
        /// Where the admin API is, and the key.
        #[command(flatten)]
        api: ApiArgs,
        /// What to do.
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Live sessions (admin API).
    Session {
        /// Where the admin API is, and the key.
        #[command(flatten)]
        api: ApiArgs,
        /// What to do.
        #[command(subcommand)]
        action: SessionAction,
    },
    /// The audit log (admin API).
    Audit {
        /// Where the admin API is, and the key.
        #[command(flatten)]
        api: ApiArgs,
        /// Only this event type (auth_failure, connect, admin, …).
        #[arg(long = "type")]
        kind: Option<String>,
        /// Only events at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// `coremq acl ...`.
#[derive(Debug, Subcommand)]
pub enum AclAction {
    /// Validate a policy file: field-level errors with their JSON path, non-zero exit.
    Validate {
        /// The policy (JSON).
        file: PathBuf,
    },
    /// One check (verdict, deciding rule, bound pattern), or every case of --cases.
    Simulate {
        /// The policy (a file, or preset:NAME); defaults to the identity's org policy in --config.
        #[arg(long)]
        policy: Option<String>,
        /// A coremq config: per-user rules of the identity's org apply, and its org's policy.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The identity (JSON file: username, client_id, agent_id, roles, claims, ...).
        #[arg(long)]
        identity: Option<PathBuf>,
        /// publish or subscribe.
        #[arg(long)]
        action: Option<String>,
        /// Topic (publish) or filter (subscribe).
        #[arg(long)]
        topic: Option<String>,
        /// QoS.
        #[arg(long, default_value_t = 0)]
        qos: u8,
        /// Retain flag (publish).
        #[arg(long)]
        retain: bool,
        /// A JSON array of cases with "expect": prints one line each, exits 1 on any mismatch.
        #[arg(long)]
        cases: Option<PathBuf>,
    },
    /// List the shipped presets, or print one.
    Presets {
        /// A preset name.
        name: Option<String>,
    },
    /// Compare two policies: rules added/removed, and which --cases change verdict.
    Diff {
        /// The current policy.
        old: PathBuf,
        /// The new policy.
        new: PathBuf,
        /// Sample checks to compare (the --cases format; "expect" is ignored).
        #[arg(long)]
        cases: Option<PathBuf>,
        /// Also ask the running broker (admin API) which live subscriptions NEW would remove.
        #[arg(long)]
        live: bool,
        /// Where the admin API is, and the key (with --live).
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Push a policy to a running broker (PUT /v2/acl).
    Update {
        /// Where the admin API is, and the key.
        #[command(flatten)]
        api: ApiArgs,
        /// The policy (JSON).
        file: PathBuf,
    },
}

/// Where the admin API is and which key to use.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Admin API base URL.
    #[arg(long, global = true, env = "COREMQ_ADMIN_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Bearer key: the operator key or an org API key.
    #[arg(long, global = true, env = "COREMQ_API_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// The org to act on (operator key only; an org key acts on its own org).
    #[arg(long, global = true)]
    pub org: Option<String>,
}

/// `coremq org ...`.
#[derive(Debug, Subcommand)]
pub enum OrgAction {
    /// Create an org; prints its id and first API key.
    Create {
        /// Org id (generated when absent).
        #[arg(long)]
        id: Option<String>,
    },
    /// List orgs.
    List,
    /// Delete an org with everything it owns.
    Delete {
        /// Org id.
        id: String,
    },
}

/// `coremq user ...`.
#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Create a user; the password is read from standard input.
    Create {
        /// User name (local part).
        name: String,
        /// Role (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Publish rule (repeatable).
        #[arg(long)]
        publish: Vec<String>,
        /// Subscribe rule (repeatable).
        #[arg(long)]
        subscribe: Vec<String>,
    },
    /// List users.
    List,
    /// Set a user's password (read from standard input); closes its live sessions.
    Passwd {
        /// User name.
        name: String,
    },
    /// Disable or enable a user.
    Disable {
        /// User name.
        name: String,
        /// Enable instead.
        #[arg(long)]
        enable: bool,
    },
    /// Delete a user; closes its live sessions.
    Delete {
        /// User name.
        name: String,
    },
}

/// `coremq apikey ...`.
#[derive(Debug, Subcommand)]
pub enum ApiKeyAction {
    /// Mint an API key (shown once).
    Create,
    /// List API key ids.
    List,
    /// Revoke an API key by id.
    Delete {
        /// Key id (`key_…`).
        id: String,
    },
}

/// `coremq token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Mint a temporary token.
    Create {
        /// Lifetime in seconds.
        #[arg(long)]
        ttl: Option<u64>,
        /// `{user_id}`.
        #[arg(long)]
        user_id: Option<String>,
        /// `{email}`.
        #[arg(long)]
        email: Option<String>,
        /// `{agent_id}`.
        #[arg(long)]
        agent_id: Option<String>,
        /// `{role}`.
        #[arg(long)]
        role: Option<String>,
        /// `{session_id}`.
        #[arg(long)]
        session_id: Option<String>,
        /// Extra claim NAME=VALUE (repeatable).
        #[arg(long = "claim")]
        claims: Vec<String>,
    },
    /// List live tokens.
    List,
    /// Revoke a token (`tok_…@org`); closes its live sessions.
    Revoke {
        /// Token user name.
        username: String,
    },
}

/// `coremq session ...`.
#[derive(Debug, Subcommand)]
pub enum SessionAction {
    /// List live connections.
    List,
    /// Disconnect a client id.
    Disconnect {
        /// Client id.
        client_id: String,
    },
}

/// `coremq config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate a configuration file; exits non-zero with the offending key on error.
    Check {
        /// The file.
        file: PathBuf,
    },
}

/// `coremq data …`.
#[derive(Debug, Subcommand)]
pub enum DataAction {
    /// Write every store under data_dir to DIR (JSON Lines, docs/durability.md). The broker
    /// must be stopped. The export is plain text: keep it private.
    Export {
        /// A new (or empty) directory.
        dir: PathBuf,
        /// Configuration file (data_dir and encryption keys); default: the embedded default.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Read an export from DIR into an empty data_dir (sessions go to their home shard for the
    /// configured shard count; values are sealed with the configured keys).
    Import {
        /// An export written by `coremq data export`.
        dir: PathBuf,
        /// Configuration file (data_dir, shards and encryption keys).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print a new random encryption key (64 hex digits) for [[encryption.key]].
    Keygen,
}

/// `coremq certs ...`.
#[derive(Debug, Subcommand)]
pub enum CertsAction {
    /// Write a development CA, a server certificate for localhost/127.0.0.1 (ECDSA P-256) and a
    /// client certificate into DIR: ca.pem, ca.key, server.pem, server.key, client.pem,
    /// client.key. For trials, not production.
    Dev {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
}

/// `text` made safe to print on a terminal, line by line: control characters (an ESC
/// sequence, a carriage return, a line break inside a value) and the invisible
/// bidirectional and format characters are written as `\u{…}`; the line breaks between
/// lines are kept. Everything the CLI prints that a client or tenant could have chosen (topics,
/// client ids, user names, audit details) goes through it.
pub fn terminal_safe(text: &str) -> String {
    escape_invisible(text, |c| format!("\\u{{{:04x}}}", c as u32))
}

/// One value a client chose (a topic, a client id), safe to print inside a line: like
/// [`terminal_safe`], line breaks included.
pub fn value_safe(v: &str) -> String {
    terminal_safe(v).replace('\n', "\\u{000a}")
}

/// Pretty JSON made safe to print: serde_json already escapes control characters; the
/// bidirectional and format characters become JSON `\uXXXX` escapes (still valid JSON).
pub fn json_terminal_safe(json: &str) -> String {
    escape_invisible(json, |c| format!("\\u{:04x}", c as u32))
}

fn escape_invisible(text: &str, esc: impl Fn(char) -> String) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        for c in line.chars() {
            let invisible = matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}' | '\u{FEFF}');
            if c.is_control() || invisible {
                out.push_str(&esc(c));
            } else {
                out.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn client_text_cannot_drive_the_terminal() {
        let t = super::terminal_safe("a\u{1b}[2Jb\rc\u{202e}d\ne\u{7}");
        assert_eq!(t, "a\\u{001b}[2Jb\\u{000d}c\\u{202e}d\ne\\u{0007}");
        assert_eq!(super::terminal_safe("plain/topic ünïcode"), "plain/topic ünïcode");
        let j = super::json_terminal_safe("{\"t\": \"a\u{202e}b\"}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&j).unwrap()["t"], "a\u{202e}b");
        assert!(!j.contains('\u{202e}'));
    }
}
