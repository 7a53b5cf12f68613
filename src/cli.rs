//! The command line (SPEC §9): `coremq serve`, `coremq config check`.

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
