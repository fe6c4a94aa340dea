//! `helix-agent`: parse arguments and the configuration, set up logging, run, map
//! errors to exit codes (0 success, 1 failure, 2 bad usage, input or configuration).

mod cli;
mod commands;
mod config;
mod logging;
mod reload;

fn main() -> std::process::ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let resolved = match config::parse(argv.clone()) {
        Ok(resolved) => resolved,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let log = logging::init(&resolved.cli.log_level, &resolved.cli.log_format);
    if !matches!(resolved.cli.command, cli::Command::Run(_)) {
        restore_sigpipe();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::run(resolved, argv, log)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(commands::exit_code_for(&e))
        }
    }
}

/// `config check` and `doctor` are often piped (`| head`, `| jq`): let a closed pipe
/// end the process quietly, as it does for other Unix tools, instead of a panic in
/// `println!`. `run` keeps Rust's default (SIGPIPE ignored), so a closed log pipe is
/// an error it handles, not a silent death.
fn restore_sigpipe() {
    #[allow(unsafe_code)]
    // SAFETY: signal(2) with SIG_DFL installs no handler code; it runs before any
    // thread is started, so nothing races with it.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
