//! The `camnode` binary: logging, then the command line; errors are printed
//! once, here, with their context chain.

use std::io::Write;

use clap::Parser;

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    // journald stamps every line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.format(|buf, record| writeln!(buf, "{}: {}", record.level(), record.args()));
    }
    builder.init();
}

fn main() {
    let cli = camnode::cli::Cli::parse();
    init_logging(cli.verbose);
    if let Err(e) = camnode::cli::main(cli) {
        eprintln!("camnode: error: {e:#}");
        std::process::exit(1);
    }
}
