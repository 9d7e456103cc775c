//! The committed offsets table: rows produced by `symbolizer/offsets/generate.sh`, which builds a
//! probe program with every Go toolchain on the machine and reads the offsets back.

/// Where a table answer came from: the toolchain or module version that produced the row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableHit {
    pub offset: u64,
    pub produced_by: &'static str,
}

const TABLE: &str = include_str!("offsets_table.tsv");

/// The row for `key` (`go1.21`, or `golang.org/x/net@v0.10.0` for x/net types).
pub fn lookup(key: &str, ty: &str, field: &str) -> Option<TableHit> {
    rows().find_map(|r| {
        (r.0 == key && r.2 == ty && r.3 == field).then_some(TableHit {
            offset: r.4,
            produced_by: r.1,
        })
    })
}

/// Keys (Go releases and module versions) the table covers, for messages.
pub fn keys() -> Vec<&'static str> {
    let mut k: Vec<&str> = rows().map(|r| r.0).collect();
    k.dedup();
    k
}

fn rows() -> impl Iterator<Item = (&'static str, &'static str, &'static str, &'static str, u64)> {
    TABLE
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split('\t');
            let row = (
                f.next()?,
                f.next()?,
                f.next()?,
                f.next()?,
                f.next()?.parse().ok()?,
            );
            Some(row)
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_row_parses() {
        let data_rows = super::TABLE.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(super::rows().count(), data_rows);
    }
}
