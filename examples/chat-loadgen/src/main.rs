//! `chat-loadgen`: see the library's documentation (`cargo doc -p chat-loadgen`) or `--help`.

use std::process::ExitCode;

use chat_loadgen::{Args, Progress, run_idle, run_load, run_sweep};
use clap::Parser;
use serde::Serialize;

/// mimalloc, as in `chat-server`: the client allocates for every request and frame, and
/// shares the machine with the server it measures.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(error) = args.validate() {
        eprintln!("chat-loadgen: {error}");
        return ExitCode::from(64);
    }
    // Thousands of sockets need more descriptors than the usual soft limit of 1024.
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("chat-loadgen: could not raise the open-file limit: {error}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chat-loadgen: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let progress = Progress::new(!args.quiet);
    let outcome = runtime.block_on(async {
        if args.idle_connections.is_some() {
            let report = run_idle(&args, progress).await?;
            let clean = report.failed == 0 && report.dropped == 0;
            emit(&args, &report, &report.to_table())?;
            Ok::<_, chat_loadgen::Error>(clean)
        } else if !args.sweep_rates.is_empty() {
            let mut report = run_sweep(&args, progress).await?;
            report.client_threads = Some(args.client_threads);
            emit(&args, &report, &report.to_table())?;
            if let Some(path) = &args.plot {
                chat_loadgen::plot::draw(&report, path)?;
                progress.note(&format!("plot written to {}", path.display()));
            }
            Ok(report.is_clean())
        } else {
            let mut report = run_load(&args, progress).await?;
            report.client_threads = Some(args.client_threads);
            emit(&args, &report, &report.to_table())?;
            Ok(report.is_clean())
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        // Lost or duplicated notifications, failed sends, connections that failed or dropped.
        Ok(false) => ExitCode::from(2),
        Err(error) => {
            eprintln!("chat-loadgen: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the table (or JSON with `--json`) and writes `--json-out`.
fn emit<R: Serialize>(args: &Args, report: &R, table: &str) -> chat_loadgen::Result<()> {
    let json = serde_json::to_string_pretty(report).unwrap_or_default();
    if args.json {
        println!("{json}");
    } else {
        print!("{table}");
    }
    if let Some(path) = &args.json_out {
        std::fs::write(path, format!("{json}\n")).map_err(|source| chat_loadgen::Error::Output {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}
