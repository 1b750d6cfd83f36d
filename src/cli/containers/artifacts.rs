//! `bus containers artifacts RUN_ID [-o FILE.tar | -x DIR]`: a run's
//! artifact archive, written as it arrives (with progress on a terminal),
//! or extracted.

use super::client::Client;
use super::output::{Format, Out};
use super::Failure;
use futures::StreamExt;
use serde_json::json;
use std::io::IsTerminal;
use std::path::PathBuf;

pub async fn download(
    client: &Client,
    out: &mut Out,
    run_id: &str,
    extract: Option<PathBuf>,
) -> Result<u8, Failure> {
    if extract.is_none() && out.to_terminal {
        return Err(Failure::usage(
            "the artifacts are a tar archive: give -o FILE.tar, -x DIR, or a pipe",
        ));
    }
    if !crate::contract::run::valid_run_id(run_id) {
        return Err(Failure::usage(format!("{run_id:?} is not a run id")));
    }
    let mut resp = client
        .stream(&format!("/api/v1/containers/runs/{run_id}/artifacts"))
        .await
        .map_err(|e| e.into_failure(1))?;
    let total = resp
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let progress = (!out.quiet && std::io::stderr().is_terminal() && total.unwrap_or(0) > 1 << 20)
        .then(|| {
            let bar = indicatif::ProgressBar::new(total.unwrap_or(0));
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bytes}/{total_bytes} {bar:30} {bytes_per_sec}",
            ) {
                bar.set_style(style);
            }
            bar
        });
    let mut tar = Vec::new();
    let mut bytes = 0u64;
    // --timeout bounds each wait for the next bytes, not the whole
    // download: a large archive takes as long as it takes, a stalled one
    // ends.
    let idle = client.timeout();
    loop {
        let next = actix_rt::time::timeout(idle, resp.next())
            .await
            .map_err(|_| {
                Failure::error(format!(
                    "the download stalled: no bytes for {} (after {bytes}; see --timeout)",
                    crate::parse::format_duration(idle)
                ))
            })?;
        let Some(chunk) = next else {
            break;
        };
        let chunk = chunk.map_err(|e| Failure::error(format!("the download broke: {e}")))?;
        bytes += chunk.len() as u64;
        if let Some(bar) = &progress {
            bar.set_position(bytes);
        }
        match extract {
            Some(_) => tar.extend_from_slice(&chunk),
            None => out.raw(&chunk)?,
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    if let Some(total) = total.filter(|t| *t != bytes) {
        return Err(Failure::error(format!(
            "the download ended after {bytes} of {total} bytes"
        )));
    }
    let Some(dir) = extract else {
        return Ok(0);
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| Failure::error(format!("cannot create {}: {e}", dir.display())))?;
    // `unpack` keeps every entry inside `dir` (no absolute or `..`
    // names, no writing through links).
    tar::Archive::new(tar.as_slice())
        .unpack(&dir)
        .map_err(|e| Failure::error(format!("extracting into {}: {e}", dir.display())))?;
    let dir_text = dir.display().to_string();
    match out.format {
        Format::Json => {
            out.json(&json!({"run_id": run_id, "bytes": bytes, "extracted_to": dir_text}))?
        }
        Format::Text => out.line(&format!(
            "extracted {bytes} bytes of artifacts into {dir_text}"
        ))?,
        Format::Tsv => out.table(
            &["run_id", "bytes", "extracted_to"],
            &[vec![run_id.to_owned(), bytes.to_string(), dir_text]],
        )?,
    }
    Ok(0)
}
