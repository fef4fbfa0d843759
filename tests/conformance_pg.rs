//! The conformance suite (tests/conformance/mod.rs) against `PgStore` on a real
//! PostgreSQL server, one schema per test. Run it with
//! `scripts/postgres.sh run -- cargo test --features postgres --test conformance_pg`.

#![allow(clippy::unwrap_used)]

#[cfg(feature = "postgres")]
mod common;
#[cfg(feature = "postgres")]
mod conformance;

#[cfg(feature = "postgres")]
mod pg {
    use super::*;
    use common::postgres::{fresh_schema, url};
    use execlog::postgres::{PgOptions, PgStore};

    pub struct Pg {
        url: String,
        schema: String,
    }

    impl conformance::Backend for Pg {
        type Store = PgStore;

        fn create() -> Option<Self> {
            let name = std::thread::current()
                .name()
                .unwrap_or("conformance")
                .to_owned();
            Some(Pg {
                url: url(&name)?,
                schema: fresh_schema(),
            })
        }

        fn open(&self) -> PgStore {
            PgStore::connect_with(&self.url, PgOptions::default().schema(&self.schema)).unwrap()
        }

        fn open_with_max_event_bytes(&self, bytes: usize) -> PgStore {
            let options = PgOptions::default()
                .schema(&self.schema)
                .max_event_bytes(bytes);
            PgStore::connect_with(&self.url, options).unwrap()
        }

        /// A crashed client leaves its acknowledged appends on the server: a new
        /// connection (while `running` stays connected, as another machine's would).
        fn open_crashed(&self, _running: &PgStore) -> PgStore {
            self.open()
        }
    }

    crate::suite!(Pg);
    crate::follow_suite!(Pg);
    crate::lifecycle_suite!(Pg);
}

#[cfg(not(feature = "postgres"))]
#[test]
#[ignore = "needs the `postgres` feature and a server: scripts/postgres.sh run -- cargo test --features postgres --test conformance_pg"]
fn postgres_conformance_suite() {}
