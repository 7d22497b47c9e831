//! The ledger on a real PostgreSQL server: migrations, refusal of a newer schema, a batch
//! round trip, conflicts, a lost connection (server restarted) and the single-host lock.

mod common;

use actseal::ledger::store::{Batch, EntryKind, EntryRow, LedgerLocation, PgSettings, Store};

fn settings(pg: &common::TestPg, db: &str) -> PgSettings {
    let url = pg.create_database(db).expect("database");
    PgSettings::new(&url, Some(pg.password_file().to_owned()))
}

fn entry(index: u64) -> Batch {
    Batch {
        entries: vec![EntryRow {
            log_index: index,
            kind: EntryKind::Registration,
            actor: "a".into(),
            entry: vec![index as u8; 4],
        }],
        ..Batch::default()
    }
}

#[test]
fn a_postgres_ledger_is_made_and_opens_again() {
    let Some(pg) = common::postgres() else { return };
    let location = LedgerLocation::Postgres(settings(&pg, "ledger"));
    let mut store = Store::open_at(&location).expect("open");
    assert_eq!(store.engine(), "postgres");
    assert_eq!(store.next_log_index().unwrap(), 0);
    store.commit(&entry(0)).unwrap();
    drop(store);
    let store = Store::open_at(&location).expect("open again");
    assert_eq!(store.next_log_index().unwrap(), 1);
    assert_eq!(store.entry(0).unwrap(), Some(vec![0; 4]));
}
