//! `[users] aliases`: which other addresses a user may read (a shared `sales@`, an old
//! name), as a CSV file with the header `address,alias`, one pair a row.
//!
//! A row that is not two addresses is skipped with a `file:line` warning, like a bad
//! passwd-file line: one typo must not take everyone's aliases away on a bad day.

use std::collections::HashMap;

use super::passwd::{Skipped, address_of};

/// Each user's aliases (addresses lower case).
pub type AliasMap = HashMap<String, Vec<String>>;

/// The aliases of each user, and the rows skipped.
///
/// # Errors
/// A message when the header is not `address,alias` (then no row can be trusted to
/// mean what the administrator thinks).
pub fn parse(
    text: &[u8],
    default_domain: Option<&str>,
) -> Result<(AliasMap, Vec<Skipped>), String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(text);
    let header = reader
        .headers()
        .map_err(|e| format!("line 1: {e}"))?
        .iter()
        .map(str::to_ascii_lowercase)
        .collect::<Vec<_>>();
    if header != ["address", "alias"] {
        return Err(format!(
            "line 1: the header must be `address,alias`, not `{}`",
            header.join(",")
        ));
    }
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    let mut skipped = Vec::new();
    for row in reader.records() {
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line() as usize);
                skipped.push(Skipped {
                    line,
                    message: e.to_string(),
                });
                continue;
            }
        };
        let line = row.position().map_or(0, |p| p.line() as usize);
        let pair = (row.len() == 2)
            .then(|| {
                let user = address_of(&row[0], default_domain)?;
                let alias = address_of(&row[1], default_domain)?;
                Some((user, alias))
            })
            .flatten();
        match pair {
            Some((user, alias)) => {
                let list = map.entry(user).or_default();
                if !list.contains(&alias) {
                    list.push(alias);
                }
            }
            None => skipped.push(Skipped {
                line,
                message: format!(
                    "`{}` is not two addresses (address,alias)",
                    row.iter().collect::<Vec<_>>().join(",")
                ),
            }),
        }
    }
    Ok((map, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_warnings() {
        let text = b"address,alias\nalice@example.test,Sales@Example.TEST\n\
                     # comment\nalice, info\nbroken\nbob@example.test,sales@example.test,x\n\
                     alice@example.test,sales@example.test\n";
        let (map, skipped) = parse(text, Some("example.test")).unwrap();
        assert_eq!(
            map["alice@example.test"],
            ["sales@example.test", "info@example.test"]
        );
        assert_eq!(map.len(), 1);
        let lines: Vec<usize> = skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, [5, 6], "{skipped:?}");
        let e = parse(b"user,alias\na@b,c@d\n", None).unwrap_err();
        assert!(e.contains("address,alias"), "{e}");
    }
}
