//! The `coremq` binary: parses the command line and hands over to the library.

use clap::Parser;
use coremq::cli::{CertsAction, Cli, Command, ConfigAction};
use coremq::config::Config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COREMQ_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let code = match cli.command {
        Command::Serve { config } => {
            let cfg = match config {
                None => Ok(Config::embedded_default()),
                Some(p) => Config::load(&p),
            };
            match cfg {
                Err(e) => {
                    eprintln!("coremq: {e}");
                    2
                }
                Ok(cfg) => match coremq::shard::run(cfg) {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("coremq: {e}");
                        1
                    }
                },
            }
        }
        Command::Certs { action: CertsAction::Dev { dir } } => match coremq::certs::write_dev_certs(&dir) {
            Ok(()) => {
                println!("wrote {} into {}", coremq::certs::DEV_FILES.join(", "), dir.display());
                0
            }
            Err(e) => {
                eprintln!("coremq: {e}");
                1
            }
        },
        Command::Config { action: ConfigAction::Check { file } } => {
            match Config::load(&file).map_err(|e| e.to_string()).and_then(|c| {
                coremq::shard::build_listeners(&c).map(|_| c).map_err(|e| format!("{}: {e}", file.display()))
            }) {
                Ok(c) => {
                    println!(
                        "{}: ok ({} shard(s), {} listener(s), orgs: {})",
                        file.display(),
                        c.shards,
                        c.listeners.len(),
                        c.orgs.join(", ")
                    );
                    0
                }
                Err(e) => {
                    eprintln!("coremq: {e}");
                    2
                }
            }
        }
    };
    std::process::exit(code);
}
