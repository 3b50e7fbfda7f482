//! `chi config check FILE`: validate and print the effective values, like `nginx -t`.

use std::process::ExitCode;

use chi_discovery::config::{Config, describe};

use crate::cli::ConfigCheckArgs;
use crate::failure::Failure;

pub(crate) fn run(args: ConfigCheckArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.file).map_err(|e| {
        Failure::bad_input(e.to_string())
            .hint("the field is named as a YAML path; fix it and run `chi config check` again")
    })?;
    let values = describe(&config);
    let width = values.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in values {
        println!("{key:<width$} = {value}");
    }
    eprintln!("{}: ok", args.file.display());
    Ok(ExitCode::SUCCESS)
}
