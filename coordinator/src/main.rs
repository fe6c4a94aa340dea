//! `helix-coordinator`: parse arguments, set up logging, run, map errors to exit codes
//! (0 success, 1 failure, 2 bad usage or input).

mod build_cmd;
mod cli;
mod cluster_cmd;
mod cluster_opts;
mod commands;
mod config;
mod table;

fn main() -> std::process::ExitCode {
    let args = match config::parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    init_tracing(&args.global.log_level, &args.global.log_format);
    if !matches!(args.command, cli::Command::Serve(_)) {
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
    match runtime.block_on(commands::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", render(&e));
            std::process::ExitCode::from(commands::exit_code_for(&e))
        }
    }
}

fn init_tracing(default: &str, format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Admin commands are often piped (`build list | head`): let a closed pipe end the
/// process quietly, as it does for other Unix tools, instead of a panic in `println!`.
/// `serve` keeps Rust's default (SIGPIPE ignored), so a closed log pipe is an error it
/// handles, not a silent death.
fn restore_sigpipe() {
    #[allow(unsafe_code)]
    // SAFETY: signal(2) with SIG_DFL installs no handler code; it runs before any
    // thread is started, so nothing races with it.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// An error and its causes on one line, without repeating a cause that the message
/// above it already quotes (most of ours do, to read well on their own).
fn render(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
