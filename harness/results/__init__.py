"""Results files: what one run's JSON holds (``model``: the pydantic model every writer and
reader uses, and the schema version), finding, reading and writing them (``io``), assembling
the file of a run from its suite records and provenance (``assemble``), and the generated
``docs/results-schema.md`` (``schema_doc``)."""
