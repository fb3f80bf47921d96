"""Runs put together: config composition, the runner, the teacher cache, cohorts, suites, plans, launchers,
speed, model artifacts."""
