//! The `coremq` binary: parses the command line and hands over to the library.

use clap::Parser;
use coremq::cli::admin_client;
use coremq::cli::{CertsAction, Cli, Command, ConfigAction};
use coremq::config::Config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn print_api(r: Result<serde_json::Value, admin_client::ClientError>) -> i32 {
    match r {
        Ok(serde_json::Value::Null) => 0,
        Ok(v) => {
            let text = serde_json::to_string_pretty(&v).expect("JSON prints");
            println!("{}", coremq::cli::json_terminal_safe(&text));
            0
        }
        Err(e) => {
            eprintln!("coremq: {}", coremq::cli::terminal_safe(&e.to_string()));
            1
        }
    }
}

fn acl(a: coremq::cli::AclAction) -> i32 {
    use coremq::cli::acl_tool as t;
    use coremq::cli::AclAction;
    let r = match a {
        AclAction::Validate { file } => t::validate(&file).map(|s| (s, true)),
        AclAction::Presets { name } => t::presets_cmd(name.as_deref()).map(|s| (s, true)),
        AclAction::Simulate { policy, config, identity, action, topic, qos, retain, cases } => {
            t::simulate_cmd(
                policy.as_deref(),
                config.as_deref(),
                identity.as_deref(),
                action.as_deref(),
                topic.as_deref(),
                qos,
                retain,
                cases.as_deref(),
            )
        }
        AclAction::Diff { old, new, cases, live, api } => {
            t::diff(&old, &new, cases.as_deref()).and_then(|(mut out, ok)| {
                if live {
                    let v = admin_client::acl_diff_live(&api, &new)
                        .map_err(|e| t::ToolError(e.to_string(), 1))?;
                    let removed = v["removed"].as_array().cloned().unwrap_or_default();
                    for r in &removed {
                        out.push_str(&format!(
                            "\nlive: {} would lose {}",
                            r["client_id"].as_str().unwrap_or(""),
                            r["filter"].as_str().unwrap_or("")
                        ));
                    }
                    out.push_str(&format!("\n{} live subscription(s) would be removed", removed.len()));
                }
                Ok((out, ok))
            })
        }
        AclAction::Update { api, file } => return print_api(admin_client::acl_update(&api, &file)),
    };
    match r {
        Ok((out, ok)) => {
            println!("{}", coremq::cli::terminal_safe(&out));
            if ok {
                0
            } else {
                1
            }
        }
        Err(t::ToolError(msg, code)) => {
            eprintln!("coremq: {}", coremq::cli::terminal_safe(&msg));
            code
        }
    }
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COREMQ_LOG")
                .unwrap_or_else(|_| "info,fjall=warn,lsm_tree=warn,rustls=error".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let code = match cli.command {
        Command::Serve { config, bind, data_dir } => {
            let cfg = match config {
                None => Ok(Config::embedded_default()),
                Some(p) => Config::load(&p),
            }
            .map_err(|e| e.to_string())
            .and_then(|mut c| {
                if let (Some(b), Some(l)) = (bind, c.listeners.first_mut()) {
                    if l.anonymous_org.is_some() && !b.ip().is_loopback() {
                        return Err(format!(
                            "--bind {b}: anonymous clients on a non-loopback address are refused; bind \
                             127.0.0.1, or use a config file (danger_allow_anonymous_non_loopback)"
                        ));
                    }
                    l.bind = b;
                }
                if let Some(d) = data_dir {
                    c.data_dir = d;
                }
                Ok(c)
            });
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
        Command::Certs { action: CertsAction::Dev { dir } } => {
            match coremq::cli::certs::write_dev_certs(&dir) {
                Ok(()) => {
                    println!("wrote {} into {}", coremq::cli::certs::DEV_FILES.join(", "), dir.display());
                    0
                }
                Err(e) => {
                    eprintln!("coremq: {e}");
                    1
                }
            }
        }
        Command::Config { action: ConfigAction::Check { file } } => {
            match Config::load(&file).map_err(|e| e.to_string()).and_then(|c| {
                coremq::shard::build_listeners(&c).map_err(|e| format!("{}: {e}", file.display()))?;
                coremq::store::seal::Sealer::load(&c.encryption)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
                Ok(c)
            }) {
                Ok(c) => {
                    // What only `serve` reads: the environment. Warnings, since the file may
                    // be checked on another host than the one that will run it.
                    for w in c.env_key_warnings() {
                        eprintln!("coremq: warning: {}: {w}", file.display());
                    }
                    println!(
                        "{}: ok ({} shard(s), {} listener(s), orgs: {})",
                        file.display(),
                        c.shards,
                        c.listeners.len(),
                        c.orgs.iter().map(|o| o.id.as_str()).collect::<Vec<_>>().join(", ")
                    );
                    0
                }
                Err(e) => {
                    eprintln!("coremq: {e}");
                    2
                }
            }
        }
        Command::Acl { action } => acl(action),
        Command::Data { action } => data(action),
        Command::Passwd => match admin_client::read_password() {
            Ok(p) => {
                println!("{}", coremq::auth::password::hash_password(p.as_bytes()));
                0
            }
            Err(e) => {
                eprintln!("coremq: {e}");
                2
            }
        },
        Command::Org { api, action } => print_api(admin_client::org(&api, &action)),
        Command::User { api, action } => print_api(admin_client::user(&api, &action)),
        Command::Apikey { api, action } => print_api(admin_client::apikey(&api, &action)),
        Command::Token { api, action } => print_api(admin_client::token(&api, &action)),
        Command::Session { api, action } => print_api(admin_client::session(&api, &action)),
        Command::Audit { api, kind, since, limit } => {
            print_api(admin_client::audit(&api, kind.as_deref(), since.as_deref(), limit))
        }
    };
    exit_now(code)
}

/// Flushes stdout and stderr and leaves without running atexit handlers. Every thread of ours
/// is idle by then, but the storage engine's and the hashing pool's threads still exist, and
/// mimalloc's exit-time heap collection raced with them: a SIGSEGV after "coremq stopped",
/// about one exit in 20 under load. Stores are synced and logs written before this point;
/// the kernel reclaims the rest.
#[allow(unsafe_code)]
fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` only ends the process; nothing of ours runs after it, and the buffers
    // that matter were flushed above.
    unsafe { libc::_exit(code) }
}

/// `coremq data …`: 0 on success, 1 on an error (printed with the file, line or field).
fn data(action: coremq::cli::DataAction) -> i32 {
    use coremq::cli::DataAction;
    let load = |c: &Option<std::path::PathBuf>| match c {
        None => Ok(Config::embedded_default()),
        Some(p) => Config::load(p).map_err(|e| e.to_string()),
    };
    let r = match action {
        DataAction::Keygen => {
            println!("{}", coremq::store::seal::generate_key_hex());
            return 0;
        }
        DataAction::Export { dir, config } => load(&config).and_then(|c| coremq::cli::data::export(&c, &dir)),
        DataAction::Import { dir, config } => load(&config).and_then(|c| coremq::cli::data::import(&c, &dir)),
    };
    match r {
        Ok(m) => {
            println!(
                "ok: {} control rows, {} sessions, {} queued messages, {} retained messages (format {} v{})",
                m.control_rows, m.sessions, m.queued, m.retained, m.format, m.version
            );
            0
        }
        Err(e) => {
            eprintln!("coremq: {e}");
            1
        }
    }
}
