"""Plan-time foundations: config validation and its schema, typed settings, errors, atomic writes, files
matched by the id they carry, and run metadata. Imports nothing else of emlab, and never torch."""
