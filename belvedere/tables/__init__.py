"""tables: views in RocksDB with changelogs, recovery, generations and rebuilds."""
