//! Export: stored messages written out for mail clients and for handing over archives,
//! as one mbox file, a Maildir, or one `.eml` file per message.
//!
//! Streaming: messages are read from the index a page at a time and from the blob store
//! a chunk (mbox: a line) at a time, so memory does not grow with the export's size.
//! Each message is written byte for byte as stored (CRLF line ends and our `Received:`
//! header first for what our listener took; an SES object as its sender wrote it). The mbox is mboxrd: a line starting with `From ` (after any number of
//! `>`) gets one more `>`, which readers that know mboxrd take off again.
//!
//! Nothing half-written is left under the final name: the mbox is written to
//! `PATH.partial` and renamed at the end; Maildir and `.eml` files go through `tmp/` or
//! a `.partial` name the same way.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};

use crate::error::StoreError;
use crate::model::Record;
use crate::ports::Storage;
use crate::ports::{ListQuery, Pages};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One mbox file (mboxrd).
    Mbox,
    /// A Maildir (`cur/`, `new/`, `tmp/`); messages go to `new/`.
    Maildir,
    /// A directory with one `ID.eml` per message.
    Eml,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} exists already; export to a new path")]
    Exists(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub format: Format,
    pub out: PathBuf,
    pub messages: u64,
    pub bytes: u64,
}

/// Write the selected messages to `out` in `format`; `progress` is called after each.
pub async fn export(
    storage: &Storage,
    sel: &ListQuery,
    format: Format,
    out: &Path,
    progress: &(dyn Fn(&Record) + Sync),
) -> Result<ExportReport, ExportError> {
    if out.exists() && !(format != Format::Mbox && is_empty_dir(out)) {
        return Err(ExportError::Exists(out.to_path_buf()));
    }
    let mut report = ExportReport {
        format,
        out: out.to_path_buf(),
        messages: 0,
        bytes: 0,
    };
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    let mut mbox = match format {
        Format::Mbox => Some(BufWriter::new(
            tokio::fs::File::create(&partial)
                .await
                .map_err(io(&partial))?,
        )),
        Format::Maildir => {
            for sub in ["cur", "new", "tmp"] {
                let d = out.join(sub);
                tokio::fs::create_dir_all(&d).await.map_err(io(&d))?;
            }
            None
        }
        Format::Eml => {
            tokio::fs::create_dir_all(out).await.map_err(io(out))?;
            None
        }
    };
    let mut pages = Pages::new(sel.clone());
    while let Some(page) = pages.next(storage.index.as_ref()).await? {
        for rec in &page {
            report.bytes += match &mut mbox {
                Some(w) => mbox_message(storage, rec, w)
                    .await
                    .map_err(|e| e.at(&partial))?,
                None => file_message(storage, rec, format, out).await?,
            };
            report.messages += 1;
            progress(rec);
        }
    }
    if let Some(mut w) = mbox {
        w.flush().await.map_err(io(&partial))?;
        w.get_ref().sync_all().await.map_err(io(&partial))?;
        tokio::fs::rename(&partial, out).await.map_err(io(out))?;
    }
    Ok(report)
}

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_none())
}

/// An error while copying one message: reading the store or writing the output.
enum CopyError {
    Store(StoreError),
    Write(std::io::Error),
}

impl CopyError {
    fn at(self, path: &Path) -> ExportError {
        match self {
            CopyError::Store(e) => ExportError::Store(e),
            CopyError::Write(e) => io(path)(e),
        }
    }
}

/// Append one message to an mbox: the `From ` line, the quoted lines, a blank line.
async fn mbox_message(
    storage: &Storage,
    rec: &Record,
    w: &mut (impl AsyncWrite + Unpin),
) -> Result<u64, CopyError> {
    let key = rec.blob_key();
    let blob = storage.blobs.open(&key).await.map_err(CopyError::Store)?;
    let sender = if rec.mail_from.is_empty() {
        "MAILER-DAEMON"
    } else {
        rec.mail_from.as_str()
    };
    let sender: String = sender.chars().filter(|c| c.is_ascii_graphic()).collect();
    let from_line = format!(
        "From {sender} {}\n",
        rec.received_at.format("%a %b %e %H:%M:%S %Y")
    );
    w.write_all(from_line.as_bytes())
        .await
        .map_err(CopyError::Write)?;
    let mut r = BufReader::new(blob);
    let mut line = Vec::new();
    let (mut n, mut last_nl) = (0u64, true);
    loop {
        line.clear();
        let k = r
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| CopyError::Store(StoreError::blob_read(&key, e)))?;
        if k == 0 {
            break;
        }
        let quoted = line.iter().position(|&b| b != b'>');
        if quoted.is_some_and(|i| line[i..].starts_with(b"From ")) {
            w.write_all(b">").await.map_err(CopyError::Write)?;
        }
        w.write_all(&line).await.map_err(CopyError::Write)?;
        n += k as u64;
        last_nl = line.ends_with(b"\n");
    }
    let tail: &[u8] = if last_nl { b"\n" } else { b"\n\n" };
    w.write_all(tail).await.map_err(CopyError::Write)?;
    Ok(n)
}

/// One message as its own file: written under a temporary name, then renamed.
async fn file_message(
    storage: &Storage,
    rec: &Record,
    format: Format,
    out: &Path,
) -> Result<u64, ExportError> {
    let (tmp, dest) = match format {
        Format::Maildir => {
            // Maildir names: unique, starting with the delivery time.
            let name = format!("{}.{}.standby-export", rec.received_at.timestamp(), rec.id);
            (out.join("tmp").join(&name), out.join("new").join(&name))
        }
        _ => (
            out.join(format!("{}.eml.partial", rec.id)),
            out.join(format!("{}.eml", rec.id)),
        ),
    };
    let mut blob = storage.blobs.open(&rec.blob_key()).await?;
    let mut f = tokio::fs::File::create(&tmp).await.map_err(io(&tmp))?;
    let n = tokio::io::copy(&mut blob, &mut f).await.map_err(io(&tmp))?;
    f.flush().await.map_err(io(&tmp))?;
    drop(f);
    tokio::fs::rename(&tmp, &dest).await.map_err(io(&dest))?;
    Ok(n)
}
