"""What a run is and what it leaves: identity, the record schema, records, the results store, migration, the
method catalog and the pairs. Never imports torch."""
