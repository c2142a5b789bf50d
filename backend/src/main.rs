//! casey-backend: the service casey-deploy deploys to ECS Fargate behind an
//! ALB. `GET /health` for health checks, `GET /ws` for a WebSocket that says
//! hello and echoes.
//!
//! ```text
//! casey-backend              # serve on 0.0.0.0:$PORT (default 3001)
//! casey-backend healthcheck  # probe the local /health; exit 0 on 200, else 1
//! ```
//!
//! Configuration comes from the environment only, see `config.rs`.

mod aws;
mod config;
mod error;
mod healthcheck;
mod log;
mod server;
mod usage;
mod ws;

use std::process::ExitCode;

use serde_json::json;

const USAGE: &str = "usage: casey-backend [healthcheck | --version | --help]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => serve(),
        ["healthcheck"] => healthcheck::run(),
        ["--version" | "-V"] => {
            println!("casey-backend {}", server::VERSION);
            ExitCode::SUCCESS
        }
        ["--help" | "-h"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("error: unexpected arguments `{}`\n{USAGE}", args.join(" "));
            ExitCode::from(2)
        }
    }
}

fn serve() -> ExitCode {
    let result = config::Config::from_env().and_then(|config| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|source| error::Error::Serve { source })?;
        runtime.block_on(server::run(config))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log::error(&error.to_string(), json!({ "exit_code": error.code() }));
            ExitCode::from(error.code())
        }
    }
}
