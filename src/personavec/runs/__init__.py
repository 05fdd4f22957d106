"""Everyone's run plumbing: run directories and their readers, typed results, pre-flight checks,
statistics. The stages (pipeline, data, training) write through it; reports and the CLI read through it."""
