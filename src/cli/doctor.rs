//! `standby doctor`: wiring only; the checks are in [`crate::doctor`].

use std::io::Write;

use super::CliError;
use crate::config::Config;
use crate::doctor::{self, Options};
use crate::ports::Storage;

pub(super) async fn run(config: &Config, json: bool, opts: &Options) -> Result<(), CliError> {
    let storage = Storage::open(config).await.map_err(|e| e.to_string());
    let report = doctor::run(config, storage.as_ref().map_err(String::as_str), opts).await;
    let mut out = super::output::Human::unless_json(json, std::io::stdout().lock());
    if json {
        serde_json::to_writer_pretty(&mut out, &report).map_err(std::io::Error::other)?;
        writeln!(out)?;
    } else {
        out.write_all(report.render().as_bytes())?;
    }
    match report.failures().count() {
        0 => Ok(()),
        n => Err(CliError::Unhealthy(n)),
    }
}
