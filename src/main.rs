#![forbid(unsafe_code)]
//! The `prewarm` binary: argument parsing, logging and exit codes. All
//! behaviour lives in the library; errors become anyhow only here.

mod cli;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(&args.log_format);
    match cli::run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
