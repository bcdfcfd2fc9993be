use clap::Parser;
use netprof::cli::{self, Cli, Command};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lab(args) => cli::lab::run(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Agent(args) => cli::agent::run(args),
        Command::Overhead(args) => cli::overhead::run(args),
        Command::Report(args) => cli::report::run(args),
        Command::K8s(args) => cli::k8s::run(args),
    };
    if let Err(err) = result {
        // One line a user can act on: the chain of causes, outermost first.
        // A cause already quoted by the message before it is not repeated.
        let mut line = String::new();
        for cause in err.chain().map(|c| c.to_string()) {
            if !line.contains(&cause) {
                if !line.is_empty() {
                    line.push_str(": ");
                }
                line.push_str(&cause);
            }
        }
        eprintln!("netprof: error: {line}");
        std::process::exit(1);
    }
}
